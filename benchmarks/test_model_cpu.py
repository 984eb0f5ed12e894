"""Masked-negatives loss and LatentMIM training step on CPU (pytest-benchmark variant of
``mim-fast bench --model``).

* loss: ``mim_fast.losses`` (fused kernel on CPU) against the per-sample loop formulation at
  B = 32, nine modalities, ~100 decoder tokens per modality and sample, D = 128, forward and
  forward + backward;
* nano training step (one masked view: forward, backward, loss), B = 8, at the study's five
  (patch, crop, T) shapes: mim_fast's fast path, its dense path and, when the reference
  package is importable, the reference's own model with the same weights.

Run:  pytest benchmarks/test_model_cpu.py --benchmark-json PATH
"""

import pytest

from mim_fast.bench.model import loss_case, step_case
from mim_fast.bench.stage import SHAPES


@pytest.mark.parametrize("path", ["mim_fast", "loop"])
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward_backward"])
def test_loss(run_benchmark, backward, path):
    case = loss_case(backward=backward)
    run_benchmark(case.paths[path], case=case.name, path=path, value=case.values[path])


@pytest.mark.parametrize("path", ["mim_fast", "dense", "reference_package"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"p{p}-hw{hw}-T{t}" for p, hw, t in SHAPES])
def test_nano_step(run_benchmark, shape, path):
    case = step_case("nano", *shape)
    if path not in case.paths:
        pytest.skip("the reference package (olmoearth-pretrain) is not importable")
    run_benchmark(case.paths[path], case=case.name, path=path, value=case.values[path])
