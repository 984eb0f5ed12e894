"""The compiled extension directly: Philox bit-exactness and C++-side argument checks."""

import os

import pytest
import torch

import mim_fast
from mim_fast.reference.philox import philox_uniform

pytestmark = pytest.mark.skipif(not mim_fast.backends.status("cpp").available, reason="cpp extension not built")
OPS = torch.ops.mim_fast


@pytest.mark.parametrize("seed", [0, 42, 123456789, 2**40 + 123, 2**62 - 1, -1])
def test_philox_matches_reference_and_triton(seed):
    seed_t = torch.tensor([seed], dtype=torch.int64)
    cpp = OPS.cpu_philox_uniform(seed_t, 3000)
    ref = philox_uniform(seed_t, torch.arange(3000))
    assert torch.equal(cpp, ref)
    if os.environ.get("TRITON_INTERPRET") == "1":
        from mim_fast.kernels import philox_uniform as triton_uniform

        assert torch.equal(triton_uniform(seed_t, 3000), ref)


def test_cpp_checks_raise_value_and_type_errors():
    x = torch.randn(2, 5, 3)
    keep = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="keep"):
        OPS.cpu_band_dropout_apply(x, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="keep"):
        OPS.cpu_band_dropout_apply(x, keep.float())
    with pytest.raises(TypeError, match="x"):
        OPS.cpu_band_dropout_apply(x.int(), keep)
    with pytest.raises(ValueError, match="seed"):
        OPS.cpu_band_dropout_mask(torch.tensor([1, 2]), torch.tensor(0.5), 2, 3)
    with pytest.raises(ValueError, match="num_bands"):
        OPS.cpu_band_dropout_mask(torch.tensor([1]), torch.tensor(0.5), 2, 0)
    x5 = torch.randn(2, 4, 4, 1, 3)
    w = torch.randn(6, 12)
    with pytest.raises(ValueError, match="weight"):
        OPS.cpu_patch_embed(x5, torch.randn(6, 13), None, None, 2)
    with pytest.raises(ValueError, match="x"):
        OPS.cpu_patch_embed(torch.randn(2, 5, 4, 1, 3), w, None, None, 2)
    with pytest.raises(ValueError, match="patch_size"):
        OPS.cpu_patch_embed(x5, w, None, None, 0)
    with pytest.raises(ValueError, match="bias"):
        OPS.cpu_patch_embed(x5, w, torch.randn(5), None, 2)
    with pytest.raises(TypeError, match="weight"):
        OPS.cpu_patch_embed(x5, w.double(), None, None, 2)
    with pytest.raises(ValueError, match="x"):
        OPS.cpu_patch_embed(x5[0], w, None, None, 2)
    tokens = torch.randn(2, 4, 3)
    indices = torch.arange(5).repeat(2, 1)
    mask = torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="indices"):
        OPS.cpu_unpack_rows(tokens, indices + 1, mask, 5)
    with pytest.raises(ValueError, match="indices"):
        OPS.cpu_pack_rows(torch.randn(2, 5, 3), indices - 1, mask)
    with pytest.raises(ValueError, match="mask"):
        OPS.cpu_pack_rows(torch.randn(2, 5, 3), indices, mask[:1])
    with pytest.raises(TypeError, match="keep"):
        OPS.cpu_gather_indices(torch.ones(2, 3))


def test_opcheck_cpp_kernels_directly():
    x5 = torch.randn(2, 4, 4, 2, 3)
    w = torch.randn(5, 12)
    keep = torch.tensor([[True, False, True], [False, True, True]])
    token_keep = torch.rand(2, 6, generator=torch.Generator().manual_seed(0)) < 0.5
    indices, seqlens = OPS.cpu_gather_indices(token_keep)
    mask = torch.arange(6)[None] < seqlens[:, None]
    tokens = torch.randn(2, 6, 4)
    cases = [
        (OPS.cpu_band_dropout_mask, (torch.tensor([5]), torch.tensor(0.5), 3, 4)),
        (OPS.cpu_band_dropout_apply, (x5.reshape(2, 32, 3), keep)),
        (OPS.cpu_patch_embed, (x5, w, torch.randn(5), keep, 2)),
        (OPS.cpu_patch_embed_backward, (torch.randn(2, 2, 2, 2, 5), x5, w, keep, 2, True, True, False)),
        (OPS.cpu_gather_indices, (token_keep,)),
        (OPS.cpu_pack_rows, (tokens, indices, mask)),
        (OPS.cpu_unpack_rows, (tokens, indices, mask, 6)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))
