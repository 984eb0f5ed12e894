"""Run the op benchmark cases and report speedups against the reference path."""

import json
import platform
import sys
import time

import torch

from .. import __version__, backends
from .cases import Case, all_cases
from .timing import interleaved_medians


def measure(case: Case, repeats: int, device) -> dict:
    """Time every provider of a case round-robin; return times, speedup and rates."""
    medians = interleaved_medians(case.providers, repeats=repeats, warmup=2, device=device)
    row = {
        "op": case.op,
        "shape": case.shape,
        "backend": backends.select_name(torch.device(device)),
        "median_s": medians,
        "speedup_vs_reference": medians["reference"] / medians["mim_fast"],
    }
    if case.flops:
        row["gflops"] = case.flops / medians["mim_fast"] / 1e9
    if case.bytes:
        row["gb_per_s"] = case.bytes / medians["mim_fast"] / 1e9
    if case.baseline:
        row[f"fraction_of_{case.baseline}"] = medians[case.baseline] / medians["mim_fast"]
    return row


def run(device: str = "cpu", quick: bool = False, repeats: int = 11, progress=None) -> dict:
    """Run all cases; ``progress(i, n, op)`` is called before each one."""
    builders = all_cases(device, quick=quick)
    rows = []
    for i, build in enumerate(builders):
        case = build()
        if progress:
            progress(i, len(builders), f"{case.op} {case.shape}")
        rows.append(measure(case, repeats, device))
        del case
    return {
        "mim_fast": __version__,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "date": time.strftime("%Y-%m-%d"),
        "results": rows,
    }


def format_table(summary: dict) -> str:
    lines = [
        f"mim-fast {summary['mim_fast']} | torch {summary['torch']} | {summary['device']} | "
        f"{summary['threads']} threads | median of {summary['repeats']}",
        f"{'op':<20} {'shape':<36} {'backend':<9} {'mim_fast':>10} {'reference':>10} {'speedup':>8}  rate",
    ]
    for row in summary["results"]:
        med = row["median_s"]
        rate = []
        if "gflops" in row:
            rate.append(f"{row['gflops']:.0f} GFLOP/s")
        if "gb_per_s" in row:
            rate.append(f"{row['gb_per_s']:.1f} GB/s")
        for key, value in row.items():
            if key.startswith("fraction_of_"):
                rate.append(f"{value:.2f}x of {key[len('fraction_of_'):]}")
        lines.append(
            f"{row['op']:<20} {row['shape']:<36} {row['backend']:<9} {med['mim_fast'] * 1e3:>8.2f}ms "
            f"{med['reference'] * 1e3:>8.2f}ms {row['speedup_vs_reference']:>7.2f}x  {', '.join(rate)}"
        )
    return "\n".join(lines)


def main(device: str = "cpu", quick: bool = False, repeats: int = 11, json_path: str | None = None) -> int:
    def progress(i, n, what):
        print(f"[{i + 1}/{n}] {what}", file=sys.stderr, flush=True)

    summary = run(device, quick=quick, repeats=repeats, progress=progress)
    print(format_table(summary))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(summary, f, indent=2)
        print(f"wrote {json_path}")
    return 0
