"""Helpers shared by the test modules (imported as ``helpers``; tests/ is on sys.path)."""

import os
import subprocess
import sys

import torch


def is_interpreted(name: str, device: str) -> bool:
    """Triton on CPU runs in the (slow) interpreter: keep those shapes tiny."""
    return name == "triton" and device == "cpu"


def bits(t: torch.Tensor) -> torch.Tensor:
    """Reinterpret a float tensor as same-width integers, for bit-exact comparison (NaN, -0)."""
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def gemm_tolerance(dtype: torch.dtype, reduction: int) -> float:
    """Absolute tolerance for a dot product of ``reduction`` O(1) terms against an fp64 result.

    Rounding error of a length-k sum grows like sqrt(k) * eps for random inputs; 8x that
    (plus the output rounding) covers blocked/parallel summation orders.
    """
    eps = {torch.float64: 2.2e-16, torch.float32: 1.2e-7, torch.float16: 9.8e-4, torch.bfloat16: 7.8e-3}[dtype]
    return 8.0 * eps * max(reduction, 1) ** 0.5 + 2 * eps


def assert_baseline_isa_script_ok(script: str, cwd) -> None:
    """Run ``script`` in a fresh process with ``MIM_FAST_CPU_BASELINE=1`` (the kernels compiled
    for the baseline ISA, and ATen instead of a direct BLAS call) and assert it prints ``ok``.

    It runs in ``cwd``, outside the source tree, so the installed package (with its compiled
    extension) is imported; tests/ is put on its path.
    """
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    code = f"import sys; sys.path.insert(0, {tests_dir!r}); " + script
    env = dict(os.environ, MIM_FAST_CPU_BASELINE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
