"""Run the tokenization-stage benchmark (``mim-fast bench --stage``) and report ratios."""

import json
import platform
import sys
import time

import torch

from .. import __version__
from .stage import SHAPES, build_case, gemm_rate, geometric_mean, peak_memory_bytes
from .timing import interleaved_medians


def measure_case(patch, hw_p, time_steps, batch_size, *, paths, repeats, memory, rate) -> dict:
    """Median seconds of each path (timed round-robin, so machine noise hits all paths alike),
    ratios, FLOP rate, peak memory."""
    case = build_case(patch, hw_p, time_steps, batch_size)
    medians = interleaved_medians({name: case.paths[name] for name in paths}, repeats=repeats, warmup=2)
    row = {
        "shape": {"patch": patch, "hw_p": hw_p, "T": time_steps, "B": batch_size, "D": 768},
        "tokens": {"online": case.online_tokens, "target": case.target_tokens, "total": case.total_tokens},
        "median_s": medians,
        "required_gflop": case.required_flops / 1e9,
        "fused_gflops": case.required_flops / medians["fused"] / 1e9,
        "fraction_of_gemm_rate": case.required_flops / medians["fused"] / rate,
    }
    for other in paths:
        if other != "fused":
            row[f"speedup_vs_{other}"] = medians[other] / medians["fused"]
    if memory:
        peaks = {name: peak_memory_bytes(case.paths[name], case.reset[name]) for name in ("fused", "eager")}
        row["peak_memory_bytes"] = peaks
        row["peak_memory_ratio"] = peaks["fused"] / max(peaks["eager"], 1)
    return row


def run(batch_sizes=(8, 32), shapes=SHAPES, repeats=11, compiled=True, memory=True, progress=None) -> dict:
    """Every (shape, batch size) case; ``progress(i, n, label)`` is called before each."""
    paths = ["fused", "eager"] + (["compiled"] if compiled else [])
    rate = gemm_rate()
    cases = [(shape, b) for b in batch_sizes for shape in shapes]
    rows = []
    for k, (shape, b) in enumerate(cases):
        if progress:
            progress(k, len(cases), f"p={shape[0]} hw_p={shape[1]} T={shape[2]} B={b}")
        rows.append(measure_case(*shape, b, paths=paths, repeats=repeats, memory=memory, rate=rate))
    summary = {}
    for b in batch_sizes:
        mine = [r for r in rows if r["shape"]["B"] == b]
        summary[f"B={b}"] = {
            "geomean_speedup_vs_eager": geometric_mean(r["speedup_vs_eager"] for r in mine),
            "min_speedup_vs_eager": min(r["speedup_vs_eager"] for r in mine),
        }
        if compiled:
            summary[f"B={b}"]["geomean_speedup_vs_compiled"] = geometric_mean(r["speedup_vs_compiled"] for r in mine)
        if memory:
            summary[f"B={b}"]["max_peak_memory_ratio"] = max(r["peak_memory_ratio"] for r in mine)
    return {
        "mim_fast": __version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "gemm_gflops": rate / 1e9,
        "repeats": repeats,
        "rows": rows,
        "summary": summary,
    }


def format_table(result: dict) -> str:
    lines = [
        f"GEMM rate (torch.mm 4096x768x768 fp32): {result['gemm_gflops']:.0f} GFLOP/s, {result['threads']} threads",
        f"{'p':>2} {'hw':>3} {'T':>3} {'B':>3} | {'fused ms':>9} {'eager ms':>9} {'compiled':>9} | {'x eager':>7} "
        f"{'x comp':>7} | {'GFLOP/s':>7} {'of GEMM':>7} | {'mem ratio':>9}",
    ]
    for r in result["rows"]:
        s, m = r["shape"], r["median_s"]
        comp = f"{m['compiled'] * 1e3:9.1f}" if "compiled" in m else f"{'-':>9}"
        xcomp = f"{r['speedup_vs_compiled']:7.2f}" if "speedup_vs_compiled" in r else f"{'-':>7}"
        mem = f"{r['peak_memory_ratio']:9.2f}" if "peak_memory_ratio" in r else f"{'-':>9}"
        lines.append(
            f"{s['patch']:>2} {s['hw_p']:>3} {s['T']:>3} {s['B']:>3} | {m['fused'] * 1e3:9.1f} {m['eager'] * 1e3:9.1f} "
            f"{comp} | {r['speedup_vs_eager']:7.2f} {xcomp} | {r['fused_gflops']:7.0f} "
            f"{r['fraction_of_gemm_rate']:7.2f} | {mem}"
        )
    for key, value in result["summary"].items():
        lines.append(f"{key}: " + ", ".join(f"{k} {v:.2f}" for k, v in value.items()))
    return "\n".join(lines)


def main(batch_sizes, repeats, compiled, memory, json_path) -> int:
    start = time.perf_counter()

    def progress(i, n, label):
        print(f"[{i + 1}/{n}] {label} ({time.perf_counter() - start:.0f} s elapsed)", file=sys.stderr, flush=True)

    result = run(batch_sizes, repeats=repeats, compiled=compiled, memory=memory, progress=progress)
    print(format_table(result))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {json_path}", file=sys.stderr)
    return 0
