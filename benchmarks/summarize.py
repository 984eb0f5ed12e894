"""Turn a pytest-benchmark JSON file into a markdown table (and optionally a bar chart).

    python benchmarks/summarize.py benchmarks/results/ops_cpu_pytest_benchmark.json
    python benchmarks/summarize.py RESULTS.json --plot speedups.png   # needs matplotlib

Per case: the median time of every provider and the speedup of mim_fast over the eager
reference and over torch.compile of the reference.
"""

import argparse
import json
from collections import defaultdict


def load(path: str) -> dict[str, dict[str, float]]:
    """{case: {provider: median seconds}} from a pytest-benchmark JSON file."""
    with open(path) as f:
        data = json.load(f)
    table: dict[str, dict[str, float]] = defaultdict(dict)
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        table[f"{info['op']} {info['shape']}"][info["provider"]] = bench["stats"]["median"]
    return table


def markdown(table: dict[str, dict[str, float]]) -> str:
    providers = ["mim_fast", "reference", "compiled_reference", "matmul", "copy"]
    head = "| case | " + " | ".join(f"{p} (ms)" for p in providers) + " | vs eager | vs compile |"
    lines = [head, "|" + "---|" * (len(providers) + 3)]
    for case, times in table.items():
        cells = [f"{times[p] * 1e3:.2f}" if p in times else "" for p in providers]
        eager = times["reference"] / times["mim_fast"]
        compiled = times["compiled_reference"] / times["mim_fast"] if "compiled_reference" in times else float("nan")
        lines.append(f"| {case} | " + " | ".join(cells) + f" | {eager:.2f}x | {compiled:.2f}x |")
    return "\n".join(lines)


def plot(table: dict[str, dict[str, float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(table)
    eager = [table[c]["reference"] / table[c]["mim_fast"] for c in cases]
    compiled = [table[c].get("compiled_reference", float("nan")) / table[c]["mim_fast"] for c in cases]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(cases) + 1.5))
    ys = range(len(cases))
    ax.barh([y + 0.2 for y in ys], eager, height=0.4, label="vs eager reference")
    ax.barh([y - 0.2 for y in ys], compiled, height=0.4, label="vs torch.compile(reference)")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(list(ys), cases, fontsize=8)
    ax.set_xlabel("speedup of mim_fast (higher is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="pytest-benchmark JSON file")
    parser.add_argument("--plot", metavar="PNG", help="also draw the speedups as a bar chart")
    args = parser.parse_args()
    table = load(args.results)
    print(markdown(table))
    if args.plot:
        plot(table, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
