"""One-command GPU check: build the extension, run the test suite on CUDA, benchmark every op
and the tokenization stage of an experiment-14 microbatch against eager and torch.compile of
the reference on CUDA (fp32 and bf16), check the fused stage never synchronises with the host
when max_len is given, run a short real-shape training run (base size, bf16, 20 steps) against
the same model on the reference backends, write a JSON summary.

    python benchmarks/gpu_check.py --out gpu_summary.json          # about 5 minutes on one GPU
    python benchmarks/gpu_check.py --skip-build --skip-tests        # benchmarks only

Rates: memory-bound ops report achieved bandwidth against the HBM peak (``--hbm-peak-tbs``,
default 4.8 TB/s for an H200); patch_embed reports FLOP/s of the work actually required.
``--device cpu`` runs the same script on the CPU (for checking the script itself).
"""

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def build() -> dict:
    _step("build the extension")
    start = time.time()
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "-e", ROOT]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout[-2000:], proc.stderr[-4000:])
    return {"ok": proc.returncode == 0, "seconds": round(time.time() - start, 1)}


def run_tests(timeout_s: int) -> dict:
    _step("test suite (CUDA backends included when a GPU is present)")
    start = time.time()
    report = os.path.join(ROOT, "benchmarks", "results", "gpu_tests.xml")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "pytest", "-q", f"--junitxml={report}", "tests"]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        output, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        partial = err.stdout or ""
        output, rc = partial.decode(errors="replace") if isinstance(partial, bytes) else partial, 124
    print(output[-6000:])
    summary = {"returncode": rc, "seconds": round(time.time() - start, 1)}
    if os.path.exists(report):
        suite = ET.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        for key in ("tests", "failures", "errors", "skipped"):
            summary[key] = int(suite.get(key, 0))
        summary["failed_cases"] = [
            f"{case.get('classname')}::{case.get('name')}"
            for case in suite.iter("testcase")
            if case.find("failure") is not None or case.find("error") is not None
        ][:50]
    return summary


def run_benchmarks(device: str, quick: bool, repeats: int, hbm_peak_tbs: float, compile_reference: bool) -> list[dict]:
    import torch

    from mim_fast import backends
    from mim_fast.bench.cases import all_cases
    from mim_fast.bench.timing import interleaved_medians

    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        builders = all_cases(device, quick=quick, dtype=dtype)
        for i, build_case in enumerate(builders):
            case = build_case()
            _step(f"{case.op} {case.shape} [{i + 1}/{len(builders)}]")
            providers = dict(case.providers)
            if compile_reference:
                compiled = torch.compile(case.providers["reference"])
                providers["compiled_reference"] = compiled
            try:
                medians = interleaved_medians(providers, repeats=repeats, warmup=3, device=device)
            except Exception as err:  # record and continue: one failing case must not hide the rest
                rows.append({"op": case.op, "shape": case.shape, "error": repr(err)[:500]})
                print("ERROR", repr(err)[:500])
                continue
            row = {
                "op": case.op,
                "shape": case.shape,
                "backend": backends.select_name(torch.device(device)),
                "median_ms": {k: v * 1e3 for k, v in medians.items()},
                "speedup_vs_eager": medians["reference"] / medians["mim_fast"],
            }
            if "compiled_reference" in medians:
                row["speedup_vs_compile"] = medians["compiled_reference"] / medians["mim_fast"]
            if case.bytes:
                row["achieved_tb_per_s"] = case.bytes / medians["mim_fast"] / 1e12
                row["fraction_of_hbm_peak"] = row["achieved_tb_per_s"] / hbm_peak_tbs
            if case.flops:
                row["tflops"] = case.flops / medians["mim_fast"] / 1e12
            if case.baseline:
                row[f"fraction_of_{case.baseline}"] = medians[case.baseline] / medians["mim_fast"]
            print(json.dumps(row), flush=True)
            rows.append(row)
            del case, providers
    return rows


def run_stage(device: str, repeats: int, hbm_peak_tbs: float, compile_reference: bool, batch_size: int) -> list[dict]:
    """Tokenization stage of one experiment-14 microbatch (see mim_fast/bench/stage.py), fp32 and bf16."""
    import torch

    from mim_fast.bench.stage import SHAPES, build_case
    from mim_fast.bench.timing import median_seconds

    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for shape in SHAPES:
            _step(f"stage {shape} B={batch_size} {dtype}")
            try:
                case = build_case(*shape, batch_size, device=device, dtype=dtype)
                paths = ["fused", "eager"] + (["compiled"] if compile_reference else [])
                medians = {p: median_seconds(case.paths[p], repeats=repeats, warmup=3, device=device) for p in paths}
            except Exception as err:  # record and continue
                rows.append({"stage": shape, "dtype": str(dtype), "error": repr(err)[:500]})
                print("ERROR", repr(err)[:500])
                continue
            # Minimum traffic of the fused path: every input pixel and weight read once, packed tokens written
            # (online forward, weight gradient, target forward).
            element = torch.finfo(dtype).bits // 8
            data_bytes = case.input_elements * element
            token_bytes = (2 * case.online_tokens + case.target_tokens) * 768 * element
            row = {
                "stage": {"patch": shape[0], "hw_p": shape[1], "T": shape[2], "B": batch_size},
                "dtype": str(dtype),
                "median_ms": {k: v * 1e3 for k, v in medians.items()},
                "speedup_vs_eager": medians["eager"] / medians["fused"],
                "required_tflops": case.required_flops / medians["fused"] / 1e12,
                "achieved_tb_per_s": (2 * data_bytes + case.weight_elements * element * 3 + token_bytes)
                / medians["fused"]
                / 1e12,
            }
            row["fraction_of_hbm_peak"] = row["achieved_tb_per_s"] / hbm_peak_tbs
            if "compiled" in medians:
                row["speedup_vs_compile"] = medians["compiled"] / medians["fused"]
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def check_sync_free(device: str) -> dict:
    """Fused stage with max_len given under torch.cuda.set_sync_debug_mode("error")."""
    import torch

    from mim_fast.bench.stage import build_case

    _step("no host synchronisation with max_len (set_sync_debug_mode('error'))")
    if device != "cuda":
        return {"skipped": "needs a CUDA device"}
    case = build_case(4, 6, 9, 32, device=device, max_len=6 * 6 * 9 * 9)
    case.paths["fused"]()  # warm-up: kernel compilation and cached tables may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        case.paths["fused"]()
        result = {"ok": True}
    except RuntimeError as err:
        result = {"ok": False, "error": str(err)[:1000]}
    finally:
        torch.cuda.set_sync_debug_mode("default")
    print(result)
    return result


def run_training(device: str, steps: int, size: str, batch: int) -> dict:
    """A short real-shape training run (bf16 autocast on CUDA): step time and tokens/s with the
    fused backends against the same model with every op forced to the reference backend."""
    import tempfile

    import mim_fast
    from mim_fast.training.config import apply_override, resolve
    from mim_fast.training.run import data_directory
    from mim_fast.training.trainer import Trainer

    _step(f"training: {size}, {steps} steps, batch {batch}, {device}")
    results = {}
    for backend in ("default", "reference"):
        work = tempfile.mkdtemp(prefix=f"mim_fast_train_{backend}_")
        config = resolve("single_bandset_all12_random_band_dropout_cross_random_masked_neg")
        for override in (f"model.size={size}", f"data_loader.global_batch_size={batch}",
                         f"data_loader.microbatch_size={batch}", "data_loader.num_workers=2",
                         f"data_loader.num_samples={4 * batch}", f"trainer.max_steps={steps}", "trainer.warmup_steps=5",
                         f"trainer.save_interval={10 * steps}", f"trainer.device={device}",
                         "trainer.callbacks.wandb.enabled=false"):  # fmt: skip
            apply_override(config, override)
        data = data_directory(config, work, is_smoke=False)
        context = mim_fast.use_backend("reference") if backend == "reference" else _null()
        try:
            with context:
                Trainer(config, work, data, progress=False).fit()
        except Exception as err:  # record and continue
            results[backend] = {"error": repr(err)[:500]}
            continue
        with open(os.path.join(work, "timing.jsonl")) as f:
            timing = [json.loads(line) for line in f]
        timing = timing[3:] if len(timing) > 3 else timing  # skip warm-up steps when there are enough
        with open(os.path.join(work, "metrics.jsonl")) as f:
            losses = [json.loads(line)["loss"] for line in f]
        step_times = sorted(t["step_time_s"] for t in timing)
        results[backend] = {
            "median_step_s": step_times[len(step_times) // 2] if step_times else None,
            "tokens_per_s_encoded": sum(t["tokens_per_s_encoded"] for t in timing) / max(len(timing), 1),
            "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
        }
    if results.get("default", {}).get("median_step_s") and results.get("reference", {}).get("median_step_s"):
        results["speedup_vs_reference_backends"] = results["reference"]["median_step_s"] / results["default"]["median_step_s"]
    print(json.dumps(results), flush=True)
    return results


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "gpu_summary.json"))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--full", action="store_true", help="all patch sizes 1..8 (default: 2, 4, 8)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile(reference) provider")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--test-timeout", type=int, default=240, help="seconds allowed for the test suite")
    parser.add_argument("--hbm-peak-tbs", type=float, default=4.8)
    parser.add_argument("--skip-stage", action="store_true", help="skip the tokenization-stage benchmark")
    parser.add_argument("--skip-training", action="store_true", help="skip the short training run")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--train-size", default="base")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--stage-batch", type=int, default=32, help="microbatch of the stage benchmark (default 32)")
    args = parser.parse_args(argv)

    summary = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "device_requested": args.device}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    def save():
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)

    if not args.skip_build:
        summary["build"] = build()
        save()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        summary["error"] = "no CUDA device visible to torch"
        save()
        print(summary["error"])
        return 1
    summary["gpu"] = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    summary["torch"] = torch.__version__
    try:
        import triton

        summary["triton"] = triton.__version__
    except ImportError:
        summary["triton"] = None
    from mim_fast.info import report

    summary["info"] = report()
    print(summary["info"])
    save()
    if not args.skip_tests:
        summary["tests"] = run_tests(args.test_timeout)
        save()
    summary["benchmarks"] = run_benchmarks(
        args.device, quick=not args.full, repeats=args.repeats, hbm_peak_tbs=args.hbm_peak_tbs,
        compile_reference=not args.no_compile,
    )
    save()
    summary["sync_free"] = check_sync_free(args.device)
    save()
    if not args.skip_stage:
        summary["stage"] = run_stage(
            args.device, repeats=args.repeats, hbm_peak_tbs=args.hbm_peak_tbs,
            compile_reference=not args.no_compile, batch_size=args.stage_batch,
        )
        save()
    if not args.skip_training:
        summary["training"] = run_training(args.device, args.train_steps, args.train_size, args.train_batch)
        save()
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
