"""Each op on CPU: mim_fast (cpp backend) vs the eager reference vs torch.compile of the reference.

Shapes are the study's (B = 32, Sentinel-2 with 12 bands, D = 768, patch sizes 1..8, 2000
tokens). Hardware ceilings are timed as providers too: ``matmul`` (the same-size GEMM as
patch_embed at p = 8) and ``copy`` (a plain copy of band dropout's input).
"""

import pytest
import torch

from mim_fast.bench import cases

CASE_BUILDERS = {
    "band_dropout_mask": cases.band_dropout_mask_case,
    "band_dropout_apply": cases.band_dropout_apply_case,
    **{f"patch_embed_p{p}": (lambda p=p: cases.patch_embed_case(p)) for p in range(1, 9)},
    **{f"patch_embed_fwd_bwd_p{p}": (lambda p=p: cases.patch_embed_train_case(p)) for p in (4, 8)},
    "masked_gather": cases.masked_gather_case,
    "masked_scatter": cases.masked_scatter_case,
}
PROVIDERS = ["mim_fast", "reference", "compiled_reference", "matmul", "copy"]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case_name", list(CASE_BUILDERS))
def test_op(run_benchmark, case_name, provider):
    case = CASE_BUILDERS[case_name]()
    if provider == "compiled_reference":
        fn = torch.compile(case.providers["reference"])
    elif provider in case.providers:
        fn = case.providers[provider]
    else:
        pytest.skip(f"{case_name} has no {provider} provider")
    run_benchmark(fn, op=case.op, shape=case.shape, provider=provider, flops=case.flops, bytes=case.bytes)
