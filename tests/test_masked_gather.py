import pytest
import torch
from helpers import bits
from hypothesis import given
from hypothesis import strategies as st

import mim_fast
from mim_fast import reference


def test_reference_test_vectors(backend):
    _, device = backend
    keep = torch.tensor([[0, 1, 0], [1, 0, 1]], dtype=torch.bool, device=device)
    x = torch.arange(12, dtype=torch.float32, device=device).reshape(2, 3, 2)
    packed = mim_fast.masked_gather(x, keep)
    assert packed.indices.tolist() == [[1, 0, 2], [0, 2, 1]]
    assert packed.mask.tolist() == [[True, False], [True, True]]
    assert packed.seqlens.tolist() == [1, 2]
    assert packed.tokens.tolist() == [[[2, 3], [0, 0]], [[6, 7], [10, 11]]]

    tokens = torch.tensor([[[1, 11], [2, 22]], [[5, 55], [6, 66]]], dtype=torch.float32, device=device)
    indices = torch.tensor([[0, 1, 2], [1, 0, 2]], device=device)
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool, device=device)
    out = mim_fast.masked_scatter(tokens, indices, mask)
    assert out.tolist() == [[[1, 11], [2, 22], [0, 0]], [[0, 0], [5, 55], [0, 0]]]


@given(
    batch=st.integers(1, 4),
    tokens=st.integers(1, 40),
    width=st.integers(1, 9),
    fraction=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]),
    seed=st.integers(0, 1000),
)
def test_bit_exact_against_sort_based_reference(backend, batch, tokens, width, fraction, seed):
    _, device = backend
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, tokens, width, generator=g)
    x[x.abs() < 0.1] = -0.0
    keep = torch.rand(batch, tokens, generator=g) < fraction
    exp_tokens, exp_indices, exp_mask, exp_seqlens = reference.remove_masked_tokens(x, keep)
    packed = mim_fast.masked_gather(x.to(device), keep.to(device))
    assert torch.equal(packed.indices.cpu(), exp_indices)
    assert torch.equal(packed.mask.cpu(), exp_mask)
    assert torch.equal(packed.seqlens.cpu(), exp_seqlens)
    assert torch.equal(packed.tokens.cpu(), exp_tokens)  # padding rows: +0 here, x*0 there; equal values
    assert bool((packed.tokens.cpu()[~exp_mask] == 0).all())
    back = mim_fast.masked_scatter(packed.tokens, packed.indices, packed.mask)
    assert torch.equal(back.cpu(), x * keep[..., None])
    if exp_mask.shape[1] > 0:
        assert torch.equal(back.cpu(), reference.add_removed_tokens(exp_tokens, exp_indices, exp_mask))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_values_are_copied_bit_for_bit(backend, dtype):
    _, device = backend
    x = torch.randn(2, 7, 5).to(dtype)
    x[0, 1, 2] = float("nan")
    x[1, 3, 0] = -0.0
    keep = torch.tensor([[1, 1, 0, 1, 0, 0, 1], [0, 1, 1, 1, 0, 1, 1]], dtype=torch.bool)
    packed = mim_fast.masked_gather(x.to(device), keep.to(device))
    for b in range(2):
        assert torch.equal(bits(packed.tokens[b, : int(keep[b].sum())].cpu()), bits(x[b][keep[b]]))


@pytest.mark.parametrize("extra", [0, 3])
def test_static_max_len(backend, extra):
    _, device = backend
    x = torch.randn(3, 10, 4, device=device)
    keep = torch.rand(3, 10, generator=torch.Generator().manual_seed(2)) < 0.5
    keep = keep.to(device)
    longest = int(keep.sum(1).max())
    packed = mim_fast.masked_gather(x, keep, max_len=longest + extra)
    assert packed.tokens.shape == (3, longest + extra, 4) and packed.mask.shape == (3, longest + extra)
    dynamic = mim_fast.masked_gather(x, keep)
    assert torch.equal(packed.tokens[:, :longest], dynamic.tokens)
    assert bool((packed.tokens[:, longest:] == 0).all()) and not bool(packed.mask[:, longest:].any())


def test_max_len_longer_than_sequence(backend):
    _, device = backend
    x = torch.randn(2, 3, 4, device=device)
    keep = torch.ones(2, 3, dtype=torch.bool, device=device)
    packed = mim_fast.masked_gather(x, keep, max_len=5)
    assert torch.equal(packed.tokens[:, :3], x) and bool((packed.tokens[:, 3:] == 0).all())
    back = mim_fast.masked_scatter(packed.tokens, packed.indices, packed.mask)
    assert torch.equal(back, x)


def test_max_len_too_small_is_an_error_on_cpu():
    keep = torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="max_len"):
        mim_fast.masked_gather(torch.randn(2, 5, 3), keep, max_len=4)


def test_empty_selection_and_zero_length(backend):
    _, device = backend
    x = torch.randn(2, 6, 3, device=device)
    packed = mim_fast.masked_gather(x, torch.zeros(2, 6, dtype=torch.bool, device=device))
    assert packed.tokens.shape == (2, 0, 3) and packed.seqlens.tolist() == [0, 0]
    assert packed.indices.tolist() == [list(range(6))] * 2
    back = mim_fast.masked_scatter(packed.tokens, packed.indices, packed.mask)
    assert back.shape == (2, 6, 3) and bool((back == 0).all())


def test_gradients_are_each_others_inverse(backend):
    _, device = backend
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 5, generator=g).to(device).requires_grad_(True)
    keep = (torch.rand(3, 8, generator=g) < 0.5).to(device)
    packed = mim_fast.masked_gather(x, keep, max_len=8)
    grad_tokens = torch.randn(packed.tokens.shape, generator=g).to(device)
    packed.tokens.backward(grad_tokens)
    expected = mim_fast.masked_scatter(grad_tokens, packed.indices, packed.mask)
    assert torch.equal(x.grad, expected)

    tokens = packed.tokens.detach().requires_grad_(True)
    out = mim_fast.masked_scatter(tokens, packed.indices, packed.mask)
    grad_out = torch.randn(out.shape, generator=g).to(device)
    out.backward(grad_out)
    assert torch.equal(tokens.grad, torch.where(packed.mask[..., None], torch.gather(grad_out, 1, packed.indices[:, :8, None].expand(-1, -1, 5)), 0.0))


def test_backward_is_deterministic(backend):
    _, device = backend
    x = torch.randn(4, 50, 16, device=device, requires_grad=True)
    keep = torch.rand(4, 50, generator=torch.Generator().manual_seed(3)).to(device) < 0.5
    grads = []
    for _ in range(2):
        x.grad = None
        packed = mim_fast.masked_gather(x, keep)
        (packed.tokens * torch.arange(packed.tokens.numel(), device=device).reshape(packed.tokens.shape)).sum().backward()
        grads.append(x.grad.clone())
    assert torch.equal(grads[0], grads[1])


def test_non_contiguous_inputs(backend):
    _, device = backend
    x = torch.randn(5, 3, 4, device=device).transpose(0, 1)  # [3, 5, 4]
    keep = (torch.rand(5, 3, generator=torch.Generator().manual_seed(1)) < 0.5).t().to(device)
    packed = mim_fast.masked_gather(x, keep)
    expected = reference.remove_masked_tokens(x.cpu(), keep.cpu())
    assert torch.equal(packed.tokens.cpu(), expected[0]) and torch.equal(packed.indices.cpu(), expected[1])


def test_bad_inputs_name_the_argument(backend):
    _, device = backend
    x = torch.randn(2, 5, 3, device=device)
    keep = torch.ones(2, 5, dtype=torch.bool, device=device)
    with pytest.raises(ValueError, match="x"):
        mim_fast.masked_gather(x[0], keep)
    with pytest.raises(TypeError, match="keep"):
        mim_fast.masked_gather(x, keep.int())
    with pytest.raises(ValueError, match="keep"):
        mim_fast.masked_gather(x, keep[:, :4])
    with pytest.raises(TypeError, match="x"):
        mim_fast.masked_gather(x.long(), keep)
    with pytest.raises(ValueError, match="max_len"):
        mim_fast.masked_gather(x, keep, max_len=-1)
    packed = mim_fast.masked_gather(x, keep)
    with pytest.raises(TypeError, match="indices"):
        mim_fast.masked_scatter(packed.tokens, packed.indices.int(), packed.mask)
    with pytest.raises(ValueError, match="mask"):
        mim_fast.masked_scatter(packed.tokens, packed.indices, packed.mask[:, :2])
    with pytest.raises(ValueError, match="indices"):
        mim_fast.masked_scatter(packed.tokens, packed.indices[:1], packed.mask)
    if device == "cpu":
        bad = packed.indices.clone()
        bad[0, 0] = 5
        with pytest.raises(ValueError, match="indices"):
            mim_fast.masked_scatter(packed.tokens, bad, packed.mask)
        bad[0, 0] = -1
        with pytest.raises(ValueError, match="indices"):
            mim_fast.masked_scatter(packed.tokens, bad, packed.mask)
    with pytest.raises(ValueError, match="mask"):
        mim_fast.masked_scatter(packed.tokens, packed.indices, packed.mask.to("meta"))
