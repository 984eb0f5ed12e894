import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mim_fast
from mim_fast import reference
from mim_fast.reference.philox import philox_uniform

from helpers import bits, is_interpreted


def _mask(batch, bands, rate, seed=0, device="cpu"):
    g = torch.Generator(device=device).manual_seed(seed)
    return mim_fast.band_dropout_mask(batch, bands, rate, generator=g, device=device)


@pytest.mark.parametrize("seed", [0, 1, 12345])
@pytest.mark.parametrize("rate", [0.0, 0.3, 0.9, 1.0])
def test_same_seed_gives_identical_mask_on_every_backend(backend, seed, rate):
    name, device = backend
    got = _mask(37, 13, rate, seed, device)
    with mim_fast.use_backend("reference"):
        expected = _mask(37, 13, rate, seed, device)
    assert got.dtype == torch.bool and got.shape == (37, 13)
    assert torch.equal(got.cpu(), expected.cpu())


def test_mask_is_reproducible_with_manual_seed(backend):
    _, device = backend
    torch.manual_seed(7)
    a = mim_fast.band_dropout_mask(16, 12, 0.5, device=device)
    torch.manual_seed(7)
    b = mim_fast.band_dropout_mask(16, 12, 0.5, device=device)
    c = mim_fast.band_dropout_mask(16, 12, 0.5, device=device)
    assert torch.equal(a, b)
    assert not torch.equal(b, c)


def test_mask_matches_philox_definition():
    seed = torch.tensor([987654321], dtype=torch.int64)
    keep = reference.band_dropout_mask(seed, torch.tensor(0.4), 5, 7)
    uniform = philox_uniform(seed, torch.arange(35)).reshape(5, 7)
    plain = uniform >= 0.4
    rescued = ~plain.any(1)
    assert torch.equal(keep[~rescued], plain[~rescued])
    for b in torch.nonzero(rescued).flatten().tolist():
        assert keep[b].sum() == 1 and keep[b, uniform[b].argmax()]


@given(
    batch=st.integers(0, 9),
    bands=st.integers(1, 17),
    rate=st.sampled_from([0.0, 1e-6, 0.25, 0.5, 0.999, 1.0]),
    seed=st.integers(0, 2**40),
)
def test_mask_invariants(backend, batch, bands, rate, seed):
    _, device = backend
    keep = _mask(batch, bands, rate, seed, device).cpu()
    assert keep.shape == (batch, bands)
    if batch:
        assert bool(keep.any(1).all()), "every sample keeps at least one band"
    if rate == 0.0 or bands == 1:
        assert bool(keep.all())
    if rate == 1.0:
        assert torch.equal(keep.sum(1), torch.ones(batch, dtype=torch.int64))


def _binomial_bound(n, p, z=5.0):
    return z * math.sqrt(n * p * (1 - p)) + 1


@pytest.mark.parametrize("rate,bands", [(0.3, 12), (0.7, 3), (0.9, 2), (0.5, 1)])
def test_per_band_keep_probability(rate, bands):
    n = 40000
    keep = _mask(n, bands, rate, seed=3)
    expected = (1 - rate) + rate**bands / bands
    counts = keep.sum(0)
    for count in counts.tolist():
        assert abs(count - n * expected) <= _binomial_bound(n, expected), (count, n * expected)


def test_forced_band_is_uniform_at_rate_one():
    n, bands = 24000, 6
    keep = _mask(n, bands, 1.0, seed=11)
    counts = keep.sum(0).double()
    expected = n / bands
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 30.0, f"chi-square {chi2} for 5 degrees of freedom"  # p ~ 1.5e-5


def test_bands_are_independent_within_a_sample():
    n = 40000
    keep = _mask(n, 2, 0.5, seed=5).double()
    both = float((keep[:, 0] * keep[:, 1]).mean())
    # P(both kept) = 0.25 exactly; the all-dropped rescue only adds single bands.
    assert abs(both - 0.25) < 5 * math.sqrt(0.25 * 0.75 / n)


def test_tensor_rate_is_clamped_and_accepted(backend):
    _, device = backend
    g = torch.Generator(device=device).manual_seed(1)
    keep = mim_fast.band_dropout_mask(8, 5, torch.tensor(-0.5, device=device), generator=g, device=device)
    assert bool(keep.all())
    keep = mim_fast.band_dropout_mask(8, 5, torch.tensor([7.0], device=device), generator=g, device=device)
    assert torch.equal(keep.sum(1).cpu(), torch.ones(8, dtype=torch.int64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_apply_is_bit_exact(backend, dtype):
    name, device = backend
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, 2, 7, generator=g).to(dtype)
    x[0, 0, 0, 0, :] = float("nan")
    x[1, 0, 0, 0, :] = float("inf")
    x = x.to(device)
    keep = _mask(3, 7, 0.5, 2, device)
    y = mim_fast.band_dropout_apply(x, keep)
    expected = x * keep[:, None, None, None, :]
    assert y.dtype == dtype and y.shape == x.shape
    if dtype == torch.bfloat16 and is_interpreted(name, device):
        # The interpreter's fp32->bf16 cast does not keep NaN payload bits; values must still match.
        torch.testing.assert_close(y, expected, rtol=0, atol=0, equal_nan=True)
    else:
        assert torch.equal(bits(y), bits(expected))


def test_band_dropout_shares_mask_over_other_axes_and_does_not_rescale(backend):
    _, device = backend
    x = torch.rand(4, 3, 5, 2, 6, device=device) + 1.0
    torch.manual_seed(0)
    y, keep = mim_fast.band_dropout(x, 0.5)
    kept = y != 0
    assert torch.equal(kept, keep[:, None, None, None, :].expand_as(x))
    assert torch.equal(y[kept], x[kept])


@given(shape=st.lists(st.integers(1, 4), min_size=0, max_size=3), bands=st.integers(1, 6), batch=st.integers(1, 3))
def test_band_dropout_any_rank(backend, shape, bands, batch):
    _, device = backend
    x = torch.randn(batch, *shape, bands, device=device)
    g = torch.Generator(device=device).manual_seed(4)
    y, keep = mim_fast.band_dropout(x, 0.5, generator=g)
    view = keep.reshape(batch, *([1] * len(shape)), bands)
    assert torch.equal(y, x * view)


def test_apply_non_contiguous_input_and_gradient(backend):
    name, device = backend
    base = torch.randn(4, 6, 3, 5, device=device)
    x = base.transpose(1, 2).requires_grad_(True)  # [4, 3, 6, 5] non-contiguous
    keep = _mask(4, 5, 0.5, 9, device)
    y = mim_fast.band_dropout_apply(x, keep)
    assert torch.equal(y, x.detach() * keep[:, None, None, :])
    y.sum().backward()  # the incoming gradient is stride-0
    assert torch.equal(x.grad, keep[:, None, None, :].expand_as(x).to(x.dtype))


def test_empty_batch(backend):
    _, device = backend
    x = torch.randn(0, 4, 4, 3, device=device)
    y, keep = mim_fast.band_dropout(x, 0.5)
    assert y.shape == x.shape and keep.shape == (0, 3)


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_rate_out_of_range_is_rejected(rate):
    with pytest.raises(ValueError, match="rate"):
        mim_fast.band_dropout(torch.randn(2, 4, 3), rate)


def test_bad_inputs_name_the_argument():
    x = torch.randn(2, 4, 3)
    with pytest.raises(TypeError, match="x"):
        mim_fast.band_dropout(x.long(), 0.5)
    with pytest.raises(ValueError, match="x"):
        mim_fast.band_dropout(torch.randn(5), 0.5)
    with pytest.raises(TypeError, match="rate"):
        mim_fast.band_dropout(x, "0.5")
    with pytest.raises(ValueError, match="keep"):
        mim_fast.band_dropout_apply(x, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="keep"):
        mim_fast.band_dropout_apply(x, torch.ones(2, 3))
    with pytest.raises(ValueError, match="keep"):
        mim_fast.band_dropout_apply(x, torch.ones(2, 3, dtype=torch.bool, device="meta"))
    with pytest.raises(ValueError, match="num_bands"):
        mim_fast.band_dropout_mask(2, 0, 0.5)
    with pytest.raises(ValueError, match="batch_size"):
        mim_fast.band_dropout_mask(-1, 3, 0.5)
    with pytest.raises(TypeError, match="generator"):
        mim_fast.band_dropout_mask(2, 3, 0.5, generator=3)
