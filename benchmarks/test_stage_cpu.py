"""Tokenization stage of one experiment-14 microbatch on CPU: fused vs eager reference vs torch.compile.

One stage = online path (band dropout U(0, 0.3), patch embedding of all nine modalities,
ONLINE_ENCODER tokens packed, forward + backward) + frozen target path (DECODER tokens).
Shapes: the study's (patch, crop hw_p, T) sampling table at B = 8 and 32, D = 768.
Peak memory and the FLOP rate of the work actually required go into ``extra_info``.

Run:  pytest benchmarks/test_stage_cpu.py --benchmark-json benchmarks/results/stage_cpu_pytest_benchmark.json
"""

import pytest

from mim_fast.bench.stage import SHAPES, build_case, peak_memory_bytes

PATHS = ["fused", "eager", "compiled"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("batch_size", [8, 32])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"p{p}-hw{hw}-T{t}" for p, hw, t in SHAPES])
def test_stage(run_benchmark, shape, batch_size, path):
    case = build_case(*shape, batch_size)
    fn = case.paths[path]
    info = dict(
        shape=dict(patch=shape[0], hw_p=shape[1], T=shape[2], B=batch_size, D=768),
        path=path,
        required_flops=case.required_flops,
        tokens=dict(online=case.online_tokens, target=case.target_tokens, total=case.total_tokens),
    )
    if path != "compiled":
        info["peak_memory_bytes"] = peak_memory_bytes(fn, case.reset[path])
    run_benchmark(fn, **info)
