"""mim_fast.tokenize on every backend against the reference composition
(band dropout -> patch_embed -> flatten -> masked_gather)."""

import importlib

import pytest
import torch
from helpers import gemm_tolerance, is_interpreted
from hypothesis import given
from hypothesis import strategies as st

import mim_fast
from mim_fast.reference.tokenize import tokenize as reference_tokenize

BASE = 8


def _inputs(batch, rows, cols, time, channels, dim, patch, dtype=torch.float64, seed=0, extra=0):
    """x with a (rows x cols) token grid at patch size `patch` (+ `extra` pixels: squash case)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, rows * patch + extra, cols * patch + extra) + ((time,) if time else ()) + (channels,)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    weight = torch.randn(dim, BASE * BASE * channels, generator=gen, dtype=dtype) / BASE
    bias = torch.randn(dim, generator=gen, dtype=dtype)
    grid = (batch, (rows * patch + extra) // patch, (cols * patch + extra) // patch) + ((time,) if time else ())
    codes = torch.randint(0, 4, grid, generator=gen)
    return x, weight, bias, codes


def _both(x, weight, bias, codes, *, select=2, patch, rate=0.0, max_len=None, seed=7):
    """(fused, reference) Packed results from the same band-dropout seed."""
    fused = mim_fast.tokenize(
        x, weight, bias, codes, select=select, patch_size=patch, band_dropout_rate=rate,
        generator=torch.Generator().manual_seed(seed), max_len=max_len,
    )  # fmt: skip
    ref = reference_tokenize(
        x, weight, bias, codes, select=select, patch_size=patch, band_dropout_rate=rate,
        generator=torch.Generator().manual_seed(seed), max_len=max_len,
    )  # fmt: skip
    return fused, ref


def _assert_layout_equal(fused, ref):
    assert torch.equal(fused.indices, ref.indices)
    assert torch.equal(fused.mask, ref.mask)
    assert torch.equal(fused.seqlens, ref.seqlens)
    assert fused.tokens.shape == ref.tokens.shape
    assert torch.all(fused.tokens[~fused.mask] == 0), "padding rows must be exactly zero"


@pytest.mark.parametrize("patch", range(1, 9))
def test_tokenize_matches_reference_every_patch_size(backend, patch):
    name, device = backend
    tiny = is_interpreted(name, device)
    batch, rows, cols, time, channels = (1, 2, 2, 1, 2) if tiny else (2, 3, 2, 2, 3)
    x, weight, bias, codes = _inputs(batch, rows, cols, time, channels, 5, patch)
    x, weight, bias, codes = (t.to(device) for t in (x, weight, bias, codes))
    x.requires_grad_()
    weight.requires_grad_()
    bias.requires_grad_()
    fused, ref = _both(x, weight, bias, codes, patch=patch, rate=0.5)
    _assert_layout_equal(fused, ref)
    tol = gemm_tolerance(torch.float64, BASE * BASE * channels) * 4
    torch.testing.assert_close(fused.tokens, ref.tokens, atol=tol, rtol=0)

    probe = torch.randn_like(ref.tokens)
    got = torch.autograd.grad((fused.tokens * probe).sum(), (x, weight, bias))
    want = torch.autograd.grad((ref.tokens * probe).sum(), (x, weight, bias))
    for g, w, what in zip(got, want, ("x", "weight", "bias")):
        torch.testing.assert_close(g, w, atol=tol * 10, rtol=1e-9, msg=lambda m: f"grad {what}: {m}")


@pytest.mark.parametrize("time", [0, 1, 3], ids=["4d", "T1", "T3"])
@pytest.mark.parametrize("select", [0, 2])
def test_tokenize_time_layouts(backend, time, select):
    name, device = backend
    if is_interpreted(name, device) and time == 3:
        pytest.skip("interpreter: one time layout is enough")
    x, weight, bias, codes = (t.to(device) for t in _inputs(2, 2, 3, time, 2, 4, 4, seed=time))
    fused, ref = _both(x, weight, bias, codes, select=select, patch=4)
    _assert_layout_equal(fused, ref)
    torch.testing.assert_close(fused.tokens, ref.tokens, atol=1e-12, rtol=0)


def test_tokenize_float32_and_bfloat16_cpp():
    if not mim_fast.backends.status("cpp").available:
        pytest.skip("cpp backend unavailable")
    for dtype in (torch.float32, torch.bfloat16):
        x, weight, bias, codes = _inputs(2, 3, 3, 2, 4, 16, 3, dtype=dtype)
        with mim_fast.use_backend("cpp"):
            fused = mim_fast.tokenize(x, weight, bias, codes, select=0, patch_size=3)
        ref = reference_tokenize(x.double(), weight.double(), bias.double(), codes, select=0, patch_size=3)
        assert fused.tokens.dtype == dtype
        # bf16: the patch itself is rounded to bf16 before the GEMM (as the reference's resized image is).
        tol = gemm_tolerance(dtype, BASE * BASE * 4) * (40 if dtype == torch.bfloat16 else 4)
        torch.testing.assert_close(fused.tokens.double(), ref.tokens, atol=tol * ref.tokens.abs().max(), rtol=0)


def test_tokenize_squash_case_matches_reference(backend):
    """H not a multiple of p: the image is squashed to (H // p) * P rows, as the reference does."""
    name, device = backend
    if is_interpreted(name, device):
        pytest.skip("same kernels as the p == P case after the resize")
    x, weight, bias, codes = (t.to(device) for t in _inputs(2, 2, 3, 2, 2, 4, 3, extra=2))
    fused, ref = _both(x, weight, bias, codes, patch=3, select=0)
    _assert_layout_equal(fused, ref)
    torch.testing.assert_close(fused.tokens, ref.tokens, atol=1e-12, rtol=0)


def test_tokenize_max_len_pads_with_zero_rows(backend):
    name, device = backend
    x, weight, bias, codes = (t.to(device) for t in _inputs(2, 2, 2, 1, 2, 4, 2))
    longest = int((codes == 2).flatten(1).sum(1).max())
    fused, ref = _both(x, weight, bias, codes, patch=2, max_len=longest + 3)
    assert fused.tokens.shape[1] == longest + 3
    _assert_layout_equal(fused, ref)
    torch.testing.assert_close(fused.tokens, ref.tokens, atol=1e-12, rtol=0)


def test_tokenize_max_len_too_small_is_an_error():
    x, weight, bias, codes = _inputs(2, 2, 2, 1, 2, 4, 2)
    codes.fill_(0)
    with pytest.raises(ValueError, match="max_len"):
        mim_fast.tokenize(x, weight, bias, codes, select=0, patch_size=2, max_len=2)


def test_tokenize_nothing_selected(backend):
    name, device = backend
    x, weight, bias, codes = (t.to(device) for t in _inputs(2, 2, 2, 1, 2, 4, 3))
    codes.fill_(1)
    weight.requires_grad_()
    fused = mim_fast.tokenize(x, weight, bias, codes, select=0, patch_size=3)
    assert fused.tokens.shape == (2, 0, 4)
    assert fused.seqlens.tolist() == [0, 0]
    (grad,) = torch.autograd.grad(fused.tokens.sum(), weight, allow_unused=True, materialize_grads=True)
    assert torch.all(grad == 0)


def test_tokenize_all_selected_equals_patch_embed():
    x, weight, bias, codes = _inputs(2, 3, 2, 2, 3, 6, 5)
    codes.fill_(0)
    fused = mim_fast.tokenize(x, weight, bias, codes, select=0, patch_size=5)
    dense = mim_fast.patch_embed(x, weight, bias, patch_size=5)
    torch.testing.assert_close(fused.tokens, dense.reshape(2, -1, 6), atol=1e-12, rtol=0)


def test_tokenize_rate_one_keeps_exactly_one_band_per_sample():
    x, weight, bias, codes = _inputs(3, 2, 2, 1, 4, 5, 8)
    codes.fill_(0)
    fused, ref = _both(x, weight, bias, codes, select=0, patch=8, rate=1.0)
    torch.testing.assert_close(fused.tokens, ref.tokens, atol=1e-12, rtol=0)
    keep = mim_fast.band_dropout_mask(3, 4, 1.0, generator=torch.Generator().manual_seed(7))
    assert keep.sum(1).tolist() == [1, 1, 1]


@given(
    batch=st.integers(1, 3),
    rows=st.integers(1, 4),
    cols=st.integers(1, 4),
    time=st.integers(0, 3),
    channels=st.integers(1, 4),
    patch=st.integers(1, 9),
    select=st.integers(0, 3),
    rate=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_tokenize_property_cpp_matches_reference(batch, rows, cols, time, channels, patch, select, rate):
    if not mim_fast.backends.status("cpp").available:
        pytest.skip("cpp backend unavailable")
    x, weight, bias, codes = _inputs(batch, rows, cols, time, channels, 3, patch, seed=rows * 7 + cols)
    with mim_fast.use_backend("cpp"):
        fused, ref = _both(x, weight, bias, codes, select=select, patch=patch, rate=rate)
    _assert_layout_equal(fused, ref)
    torch.testing.assert_close(fused.tokens, ref.tokens, atol=1e-11, rtol=0)


def test_tokenize_rows_opcheck():
    """The registered op passes torch.library.opcheck (schema, fake, autograd registration)."""
    from mim_fast.ops._token_layout import device_tables, packed_layout, work_rows
    from mim_fast.ops.tokenize import _tokenize_rows_op

    x, weight, bias, codes = _inputs(2, 2, 3, 2, 2, 4, 3)
    chosen = codes.reshape(2, -1) == 2
    _, _, mask, row_of = packed_layout(chosen, None)
    row_class, col_class, tables = device_tables(3, BASE, 2, 3, x.device, torch.float64)
    work = work_rows(chosen, row_of, 0, 1, (2, 3, 2), row_class, col_class, mask.shape[1], False)
    no_keep = torch.zeros(0, dtype=torch.bool)
    no_fold = tables.new_empty(0)
    x, weight = x.requires_grad_(), weight.requires_grad_()
    args = ([x], [weight], [bias], [no_keep], [work], [tables], [no_fold], [3], mask.numel(), True)
    torch.library.opcheck(_tokenize_rows_op, args)
    # A folded entry: rows are raw windows (identity tables), the weight is folded inside the op.
    fold = torch.stack((tables[0, 0], tables[1, 0]))
    eye = torch.eye(tables.shape[3], dtype=tables.dtype)
    identity = torch.stack((eye, eye))[:, None]
    raw_work = work.clone()
    raw_work[:, 5:] = 0
    args = ([x], [weight], [bias], [no_keep], [raw_work], [identity], [fold], [3], mask.numel(), True)
    torch.library.opcheck(_tokenize_rows_op, args)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(codes=torch.zeros(2, 3, 3, 1, dtype=torch.float32)), TypeError, "token_mask"),
        (dict(codes=torch.zeros(2, 3, 2, 1, dtype=torch.int64)), ValueError, "token_mask"),
        (dict(select=1.5), TypeError, "select"),
        (dict(rate=1.5), ValueError, "band_dropout_rate"),
        (dict(rate="0.3"), TypeError, "band_dropout_rate"),
        (dict(max_len=-1), ValueError, "max_len"),
        (dict(weight=torch.zeros(4, 10, dtype=torch.float64)), ValueError, "weight"),
        (dict(generator=3), TypeError, "generator"),
    ],
)
def test_tokenize_bad_input_names_the_argument(change, error, match):
    x, weight, bias, codes = _inputs(2, 3, 3, 1, 2, 4, 2)
    kwargs = dict(codes=codes, select=0, rate=0.0, max_len=None, weight=weight, generator=None)
    kwargs.update(change)
    with pytest.raises(error, match=match):
        mim_fast.tokenize(
            x, kwargs["weight"], bias, kwargs["codes"], select=kwargs["select"], patch_size=2,
            band_dropout_rate=kwargs["rate"], max_len=kwargs["max_len"], generator=kwargs["generator"],
        )  # fmt: skip


def test_cpp_token_patches_rejects_bad_work_rows():
    if not mim_fast.backends.status("cpp").available:
        pytest.skip("cpp backend unavailable")
    x = torch.randn(1, 4, 4, 1, 2)
    tables = torch.zeros(2, 1, BASE, 6)
    bad = torch.tensor([[0, 5, 0, 0, 0, 0, 0]])
    with pytest.raises(ValueError, match="work: token row"):
        torch.ops.mim_fast.cpu_token_patches(x, None, bad, tables, 2)
    with pytest.raises(ValueError, match="work"):
        torch.ops.mim_fast.cpu_token_patches(x, None, bad[:, :5], tables, 2)
    with pytest.raises(TypeError, match="tables"):
        torch.ops.mim_fast.cpu_token_patches(x, None, bad, tables.long(), 2)


def _spy_on_folds(monkeypatch, fused_tokenize):
    """Record the ``folds`` list of every call of the registered row op."""
    calls = []
    real_op = fused_tokenize._tokenize_rows_op

    def spy(xs, weights, biases, keeps, works, tables, folds, *rest):
        calls.append([f.numel() > 0 for f in folds])
        return real_op(xs, weights, biases, keeps, works, tables, folds, *rest)

    monkeypatch.setattr(fused_tokenize, "_tokenize_rows_op", spy)
    return calls


@pytest.mark.parametrize("backend_name", ["cpp", "reference"])
@pytest.mark.parametrize("patch", [1, 2, 3])
def test_folded_interior_tokens_match_reference(monkeypatch, patch, backend_name):
    """Force the folded-weight path for interior tokens (normally chosen only when it pays):
    folded inside the op for a weight being trained (gradient unfolded), cached when frozen."""
    fused_tokenize = importlib.import_module("mim_fast.ops.tokenize")
    if not mim_fast.backends.status("cpp").available:
        pytest.skip("cpp backend unavailable")
    monkeypatch.setattr(fused_tokenize, "_TRAINED_FOLD_COST", 0)
    monkeypatch.setattr(fused_tokenize, "_FROZEN_FOLD_MIN_ROWS", 0)
    calls = _spy_on_folds(monkeypatch, fused_tokenize)
    x, weight, bias, codes = _inputs(2, 8, 7, 2, 3, 5, patch)
    x.requires_grad_()
    weight.requires_grad_()
    bias.requires_grad_()
    with mim_fast.use_backend(backend_name):
        fused, ref = _both(x, weight, bias, codes, patch=patch, rate=0.5)
    assert calls and any(calls[-1]), "the weight was not folded inside the op"
    _assert_layout_equal(fused, ref)
    torch.testing.assert_close(fused.tokens, ref.tokens, atol=1e-11, rtol=0)
    probe = torch.randn_like(ref.tokens)
    got = torch.autograd.grad((fused.tokens * probe).sum(), (x, weight, bias))
    want = torch.autograd.grad((ref.tokens * probe).sum(), (x, weight, bias))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-9)
    fused_tokenize.clear_fold_cache()
    with torch.no_grad(), mim_fast.use_backend(backend_name):
        frozen, ref = _both(x, weight, bias, codes, patch=patch, rate=0.5)
    assert not any(calls[-1]), "a frozen weight is folded once outside the op (cached)"
    assert len(fused_tokenize._FOLD_CACHE) == 1
    torch.testing.assert_close(frozen.tokens, ref.tokens, atol=1e-11, rtol=0)


def test_frozen_weight_fold_cache_follows_in_place_updates():
    """Frozen weights fold once; an in-place update must invalidate the cached fold."""
    if not mim_fast.backends.status("cpp").available:
        pytest.skip("cpp backend unavailable")
    x, weight, bias, codes = _inputs(2, 12, 12, 1, 2, 4, 1)
    codes.fill_(2)
    with torch.no_grad(), mim_fast.use_backend("cpp"):
        first = mim_fast.tokenize(x, weight, bias, codes, select=2, patch_size=1)
        torch.testing.assert_close(first.tokens, reference_tokenize(x, weight, bias, codes, select=2, patch_size=1).tokens, atol=1e-11, rtol=0)
        weight.mul_(2.0)
        second = mim_fast.tokenize(x, weight, bias, codes, select=2, patch_size=1)
    want = reference_tokenize(x, weight, bias, codes, select=2, patch_size=1)
    torch.testing.assert_close(second.tokens, want.tokens, atol=1e-11, rtol=0)
