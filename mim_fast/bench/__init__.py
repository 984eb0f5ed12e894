"""Benchmark cases and timing shared by ``mim-fast bench`` and the pytest-benchmark suites."""
