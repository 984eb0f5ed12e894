import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mim_fast
from mim_fast import MaskValue, reference
from mim_fast.reference.tokenize import tokenize, tokenize_windowed

BASE = 8


def _inputs(patch, rows=2, cols=3, time=1, bands=3, width=6, batch=2, seed=0, four_dim=False, extra=0):
    g = torch.Generator().manual_seed(seed)
    size = (batch, rows * patch + extra, cols * patch + extra) + (() if four_dim else (time,)) + (bands,)
    x = torch.randn(size, generator=g, dtype=torch.float64)
    weight = torch.randn(width, BASE * BASE * bands, generator=g, dtype=torch.float64) / (BASE * BASE * bands) ** 0.5
    bias = torch.randn(width, generator=g, dtype=torch.float64)
    grid = (batch, rows, cols) + (() if four_dim else (time,))
    codes = torch.randint(0, 4, grid, generator=g)
    return x, weight, bias, codes


def _run(fn, x, weight, bias, codes, patch, *, rate=0.0, seed=7, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    return fn(
        x, weight, bias, codes, patch_size=patch, base_patch_size=BASE, band_dropout_rate=rate, generator=generator,
        **kwargs,
    )


def _assert_same(got, expected, atol=1e-10):
    assert got.tokens.shape == expected.tokens.shape
    if got.tokens.numel():
        assert (got.tokens - expected.tokens).abs().max().item() <= atol
    assert torch.equal(got.indices, expected.indices)
    assert torch.equal(got.mask, expected.mask)
    assert torch.equal(got.seqlens, expected.seqlens)
    assert not got.tokens[~got.mask].any()  # padding rows exactly zero


@pytest.mark.parametrize("rate", [0.0, 0.5])
@pytest.mark.parametrize("with_max_len", [False, True])
def test_tokenize_is_the_reference_composition(rate, with_max_len):
    x, weight, bias, codes = _inputs(4, time=2, seed=1)
    n = codes[0].numel()
    max_len = n + 3 if with_max_len else None
    packed = _run(tokenize, x, weight, bias, codes, 4, rate=rate, select=MaskValue.DECODER, max_len=max_len)

    generator = torch.Generator().manual_seed(7)
    keep = mim_fast.band_dropout_mask(2, 3, rate, generator=generator) if rate > 0 else None
    embedded = reference.patch_embed(x, weight, bias, patch_size=4, base_patch_size=BASE, keep=keep)
    flat = embedded.reshape(2, n, -1)
    chosen = codes.flatten(1) == int(MaskValue.DECODER)
    tokens, indices, mask, seqlens = reference.remove_masked_tokens(flat, chosen)
    assert torch.equal(packed.indices, indices) and torch.equal(packed.seqlens, seqlens)
    length = tokens.shape[1]
    assert torch.equal(packed.tokens[:, :length], tokens) and torch.equal(packed.mask[:, :length], mask)
    if with_max_len:
        assert packed.tokens.shape[1] == max_len
        assert not packed.tokens[:, length:].any() and not packed.mask[:, length:].any()
        gathered = mim_fast.masked_gather(flat, chosen, max_len=max_len)
        _assert_same(packed, gathered, atol=0.0)
    if rate > 0:  # the band mask was really applied
        undropped = _run(tokenize, x, weight, bias, codes, 4, select=2, max_len=max_len)
        assert not torch.equal(packed.tokens, undropped.tokens)


@pytest.mark.parametrize("patch", list(range(1, 9)))
@pytest.mark.parametrize("time", [1, 3])
def test_windowed_equals_tokenize(patch, time):
    x, weight, bias, codes = _inputs(patch, time=time, seed=patch)
    n = codes[0].numel()
    for rate in (0.0, 0.5):
        for max_len in (None, n + 1):
            got = _run(tokenize_windowed, x, weight, bias, codes, patch, rate=rate, select=1, max_len=max_len)
            expected = _run(tokenize, x, weight, bias, codes, patch, rate=rate, select=1, max_len=max_len)
            _assert_same(got, expected)


@pytest.mark.parametrize("patch", [1, 3, 8])
@pytest.mark.parametrize("selection", ["none", "all", "random"])
@pytest.mark.parametrize("with_max_len", [False, True])
def test_windowed_selections(patch, selection, with_max_len):
    x, weight, bias, codes = _inputs(patch, rows=5, cols=2, time=2, seed=11)
    if selection == "none":
        codes = torch.full_like(codes, 3)
    elif selection == "all":
        codes = torch.zeros_like(codes)
    n = codes[0].numel()
    max_len = n if with_max_len else None
    got = _run(tokenize_windowed, x, weight, bias, codes, patch, rate=0.3, select=0, max_len=max_len)
    expected = _run(tokenize, x, weight, bias, codes, patch, rate=0.3, select=0, max_len=max_len)
    _assert_same(got, expected)
    longest = {"none": 0, "all": n, "random": int(expected.seqlens.max())}[selection]
    assert got.tokens.shape == (2, n if with_max_len else longest, 6)


@pytest.mark.parametrize("patch", [2, 5, 8])
def test_windowed_four_dim_input(patch):
    x, weight, bias, codes = _inputs(patch, rows=3, cols=2, four_dim=True, seed=3)
    got = _run(tokenize_windowed, x, weight, bias, codes, patch, rate=0.5, select=2)
    expected = _run(tokenize, x, weight, bias, codes, patch, rate=0.5, select=2)
    _assert_same(got, expected)
    five = _run(tokenize, x.unsqueeze(3), weight, bias, codes.unsqueeze(3), patch, rate=0.5, select=2)
    _assert_same(expected, five, atol=0.0)


def test_windowed_squash_falls_back_and_other_options():
    x, weight, bias, codes = _inputs(3, rows=2, cols=3, time=2, seed=5, extra=2)  # 8 x 11 pixels at p = 3
    got = _run(tokenize_windowed, x, weight, bias, codes, 3, rate=0.5, select=1)
    _assert_same(got, _run(tokenize, x, weight, bias, codes, 3, rate=0.5, select=1), atol=0.0)
    # no bias, int32 codes, a tensor rate (always draws), base inferred from the weight
    x, weight, _, codes = _inputs(6, time=2, seed=6)
    kwargs = dict(select=1, patch_size=6, band_dropout_rate=torch.tensor(0.4, dtype=torch.float64))
    got = tokenize_windowed(x, weight, None, codes.int(), generator=torch.Generator().manual_seed(1), **kwargs)
    expected = tokenize(x, weight, None, codes.int(), generator=torch.Generator().manual_seed(1), **kwargs)
    _assert_same(got, expected)


def test_windowed_float32():
    x, weight, bias, codes = _inputs(5, time=2, seed=9)
    got = _run(tokenize_windowed, x.float(), weight.float(), bias.float(), codes, 5, rate=0.5, select=1, max_len=14)
    expected = _run(tokenize, x, weight, bias, codes, 5, rate=0.5, select=1, max_len=14)
    assert got.tokens.dtype == torch.float32
    _assert_same(got, expected, atol=1e-5)


@pytest.mark.parametrize("patch", [3, 8])
def test_windowed_gradients_match(patch):
    x, weight, bias, codes = _inputs(patch, time=2, seed=4)
    grads = []
    for fn in (tokenize, tokenize_windowed):
        leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
        packed = _run(fn, *leaves, codes, patch, rate=0.5, select=1, max_len=20)
        cotangent = torch.randn(packed.tokens.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        grads.append(torch.autograd.grad((packed.tokens * cotangent).sum(), leaves))
    for got, expected in zip(grads[1], grads[0]):
        assert (got - expected).abs().max().item() <= 1e-10


@given(
    patch=st.integers(1, 8),
    rows=st.integers(1, 3),
    cols=st.integers(1, 3),
    time=st.integers(1, 2),
    bands=st.integers(1, 3),
    rate=st.sampled_from([0.0, 0.6]),
    seed=st.integers(0, 1000),
)
def test_windowed_equals_tokenize_random_shapes(patch, rows, cols, time, bands, rate, seed):
    x, weight, bias, codes = _inputs(patch, rows=rows, cols=cols, time=time, bands=bands, width=3, seed=seed)
    got = _run(tokenize_windowed, x, weight, bias, codes, patch, rate=rate, select=seed % 4)
    _assert_same(got, _run(tokenize, x, weight, bias, codes, patch, rate=rate, select=seed % 4))


@pytest.mark.parametrize("fn", [tokenize, tokenize_windowed], ids=["tokenize", "windowed"])
def test_errors_name_the_argument(fn):
    x, weight, bias, codes = _inputs(4, time=2)
    ok = dict(select=1, patch_size=4, base_patch_size=BASE)

    def check(exc, name, *args, **kwargs):
        call_args = args or (x, weight, bias, codes)
        with pytest.raises(exc, match=name):
            fn(*call_args, **{**ok, **kwargs})

    check(ValueError, "token_mask", x, weight, bias, codes[:, :1])
    check(ValueError, "token_mask", x, weight, bias, codes[..., 0])
    check(TypeError, "token_mask", x, weight, bias, codes.float())
    check(TypeError, "token_mask", x, weight, bias, codes == 1)
    check(TypeError, "token_mask", x, weight, bias, codes.tolist())
    check(ValueError, "token_mask", x, weight, bias, codes.to("meta"))
    check(TypeError, "select", select=1.0)
    check(TypeError, "select", select=True)
    check(ValueError, "max_len", max_len=-1)
    check(ValueError, "max_len", x, weight, bias, torch.ones_like(codes), max_len=codes[0].numel() - 1)
    check(TypeError, "max_len", max_len=2.0)
    check(ValueError, "band_dropout_rate", band_dropout_rate=1.5)
    check(TypeError, "band_dropout_rate", band_dropout_rate="0.5")
    check(ValueError, "band_dropout_rate", band_dropout_rate=torch.zeros(2, dtype=torch.float64))
    check(TypeError, "generator", band_dropout_rate=0.5, generator=7)
    check(TypeError, "x", x.long(), weight, bias, codes)
    check(ValueError, "x", x[0, 0], weight, bias, codes)
    check(ValueError, "weight", x, weight[:, :-1], bias, codes)
    check(ValueError, "bias", x, weight, bias[:-1], codes)
    check(ValueError, "patch_size", patch_size=0)
