"""One-command GPU check: build the extension, run the test suite on CUDA, benchmark every op
against eager and torch.compile of the reference on CUDA (fp32 and bf16), write a JSON summary.

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
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
