"""``mim-fast bench --model``: the loss and training-step benchmarks, printed and saved."""

import json
import sys
import time

import torch

from .. import __version__
from .model import loss_case, step_case
from .stage import SHAPES
from .timing import interleaved_medians


def run(repeats: int = 7, sizes=("nano", "tiny"), shapes=SHAPES) -> dict:
    """Each case's paths are timed round-robin (median of ``repeats`` after warm-up)."""
    cases = [loss_case, lambda: loss_case(backward=True)]
    cases += [lambda s=s, sh=sh: step_case(s, *sh) for s in sizes for sh in shapes]
    rows = []
    for k, build in enumerate(cases):
        case = build()
        print(f"[{k + 1}/{len(cases)}] {case.name}", file=sys.stderr, flush=True)
        medians = interleaved_medians(case.paths, repeats=repeats, warmup=2)
        row = {"case": case.name, "median_s": medians, "values": case.values}
        for other in medians:
            if other != "mim_fast":
                row[f"speedup_vs_{other}"] = medians[other] / medians["mim_fast"]
        rows.append(row)
    return {"mim_fast": __version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "repeats": repeats, "rows": rows}  # fmt: skip


def main(repeats: int, json_path: str | None, sizes=("nano", "tiny")) -> int:
    start = time.perf_counter()
    result = run(repeats, sizes)
    for row in result["rows"]:
        times = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in row["median_s"].items())
        ratios = ", ".join(f"{k[len('speedup_vs_'):]} {v:.2f}x" for k, v in row.items() if k.startswith("speedup_vs_"))
        values = ", ".join(f"{k} {v:.6f}" for k, v in row["values"].items())
        print(f"{row['case']}: {times} | mim_fast faster than: {ratios} | values: {values}")
    print(f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
    return 0
