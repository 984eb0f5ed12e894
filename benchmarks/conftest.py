"""pytest-benchmark configuration for the op suites.

Run:  pytest benchmarks/test_ops_cpu.py --benchmark-json benchmarks/results/ops_cpu.json
Every provider is timed with ``benchmark.pedantic`` (2 warm-up rounds, 11 timed rounds);
pytest-benchmark reports the median among its statistics.
"""

import pytest

ROUNDS = 11
WARMUP = 2


@pytest.fixture
def run_benchmark(benchmark):
    def run(fn, **extra_info):
        benchmark.extra_info.update(extra_info)
        return benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)

    return run
