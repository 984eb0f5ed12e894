import pytest
import torch
import torch.nn.functional as F
from helpers import gemm_tolerance, is_interpreted
from hypothesis import given
from hypothesis import strategies as st

import mim_fast
from mim_fast import reference


def _inputs(batch, size, time, bands, base, width, dtype=torch.float32, device="cpu", seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, size, size, time, bands, generator=g, dtype=torch.float64)
    weight = torch.randn(width, base * base * bands, generator=g, dtype=torch.float64) / (base * base * bands) ** 0.5
    b = torch.randn(width, generator=g, dtype=torch.float64) if bias else None
    keep = torch.rand(batch, bands, generator=g) < 0.6
    keep[:, 0] = True
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return (x, weight, b, keep), (cast(x), cast(weight), cast(b), keep.to(device))


def _check_close(got, expected64, dtype, reduction):
    tol = gemm_tolerance(dtype, reduction)
    err = (got.double().cpu() - expected64).abs().max().item() if got.numel() else 0.0
    scale = max(expected64.abs().max().item(), 1.0) if expected64.numel() else 1.0
    assert err <= tol * scale, f"max abs error {err:.3e} > {tol * scale:.3e}"


@pytest.mark.parametrize("time", [1, 3])
@pytest.mark.parametrize("use_keep", [False, True])
def test_native_patch_size_matches_fp64_reference(backend, time, use_keep):
    name, device = backend
    base = 4
    exact, (x, w, b, keep) = _inputs(2, 8, time, 5, base, 24, device=device)
    keep_arg = keep if use_keep else None
    out = mim_fast.patch_embed(x, w, b, patch_size=base, keep=keep_arg)
    expected = reference.patch_embed(exact[0], exact[1], exact[2], patch_size=base, keep=exact[3] if use_keep else None)
    assert out.shape == (2, 2, 2, time, 24) and out.dtype == torch.float32
    _check_close(out, expected, torch.float32, base * base * 5)


@pytest.mark.parametrize("patch", list(range(1, 9)))
def test_every_patch_size_matches_reference_resize(backend, patch):
    name, device = backend
    tokens = 2 if not is_interpreted(name, device) else 1
    size = tokens * patch + (1 if 2 < patch < 8 else 0)  # also sizes that are not a multiple of p (squash)
    exact, (x, w, b, keep) = _inputs(2, size, 2, 3, 8, 16, device=device, seed=patch)
    out = mim_fast.patch_embed(x, w, b, patch_size=patch, base_patch_size=8, keep=keep)
    expected = reference.patch_embed(exact[0], exact[1], exact[2], patch_size=patch, base_patch_size=8, keep=exact[3])
    assert out.shape == (2, size // patch, size // patch, 2, 16)
    _check_close(out, expected, torch.float32, 8 * 8 * 3)


def test_reference_resize_is_torch_antialiased_bicubic():
    x = torch.rand(1, 6, 6, 1, 2, dtype=torch.float64)
    resized = reference.resize_channel_last(x, 16, 16)
    planes = F.interpolate(x[:, :, :, 0].permute(0, 3, 1, 2), size=(16, 16), mode="bicubic", antialias=True)
    assert torch.equal(resized[:, :, :, 0], planes.permute(0, 2, 3, 1))


def test_four_dim_input(backend):
    _, device = backend
    exact, (x, w, b, _) = _inputs(2, 8, 1, 3, 4, 8, device=device)
    out = mim_fast.patch_embed(x[:, :, :, 0], w, b, patch_size=4)
    expected = reference.patch_embed(exact[0][:, :, :, 0], exact[1], exact[2], patch_size=4)
    assert out.shape == (2, 2, 2, 8)
    _check_close(out, expected, torch.float32, 48)


def test_linear_layout_equals_conv2d():
    """The (p1 p2 c) feature order is the Conv2d weight permuted (0, 2, 3, 1)."""
    conv = torch.nn.Conv2d(3, 7, kernel_size=4, stride=4, dtype=torch.float64)
    x = torch.randn(2, 8, 12, 3, dtype=torch.float64)
    weight = conv.weight.permute(0, 2, 3, 1).reshape(7, -1)
    out = mim_fast.patch_embed(x, weight, conv.bias, patch_size=4)
    expected = conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_within_dtype_tolerance(backend, dtype):
    name, device = backend
    exact, (x, w, b, keep) = _inputs(2, 8, 2, 4, 4, 16, dtype=dtype, device=device)
    out = mim_fast.patch_embed(x, w, b, patch_size=4, keep=keep)
    assert out.dtype == dtype
    # Inputs are rounded to the dtype first, so compare against fp64 math on the rounded values.
    rounded = [t.double().cpu() for t in (x, w, b)]
    expected = reference.patch_embed(rounded[0], rounded[1], rounded[2], patch_size=4, keep=exact[3])
    _check_close(out, expected, dtype, 4 * 4 * 4)


@pytest.mark.parametrize("patch", [2, 4])
@pytest.mark.parametrize("use_keep", [False, True])
def test_gradients_match_reference_autograd(backend, patch, use_keep):
    name, device = backend
    exact, (x, w, b, keep) = _inputs(2, 8, 2, 3, 4, 12, device=device, seed=5)
    keep_arg = keep if use_keep else None
    x, w, b = (t.clone().requires_grad_(True) for t in (x, w, b))
    out = mim_fast.patch_embed(x, w, b, patch_size=patch, keep=keep_arg)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out.backward(grad.to(device=device, dtype=out.dtype))
    ex, ew, eb = (t.clone().requires_grad_(True) for t in exact[:3])
    expected = reference.patch_embed(ex, ew, eb, patch_size=patch, keep=exact[3] if use_keep else None)
    expected.backward(grad)
    _check_close(x.grad, ex.grad, torch.float32, 12 * 4)
    _check_close(w.grad, ew.grad, torch.float32, out[..., 0].numel())
    _check_close(b.grad, eb.grad, torch.float32, out[..., 0].numel())
    if use_keep:
        dropped = ~keep.cpu()
        assert bool((x.grad.cpu().permute(0, 4, 1, 2, 3)[dropped] == 0).all())


def test_gradcheck_fp64(backend):
    name, device = backend
    if is_interpreted(name, device):
        pytest.skip("fp64 gradcheck needs fp64 GEMMs; the Triton kernels accumulate in fp32")
    _, (x, w, b, keep) = _inputs(1, 4, 2, 2, 2, 3, dtype=torch.float64, device=device)
    args = [t.clone().requires_grad_(True) for t in (x, w, b)]
    assert torch.autograd.gradcheck(lambda x, w, b: mim_fast.patch_embed(x, w, b, patch_size=2, keep=keep), args)


def test_only_requested_gradients_are_computed(backend):
    _, device = backend
    _, (x, w, b, _) = _inputs(1, 4, 1, 2, 2, 3, device=device)
    w.requires_grad_(True)
    mim_fast.patch_embed(x, w, None, patch_size=2).sum().backward()
    assert w.grad is not None and x.grad is None


@given(
    batch=st.integers(1, 2),
    rows=st.integers(1, 3),
    cols=st.integers(1, 3),
    time=st.integers(1, 2),
    bands=st.integers(1, 4),
    base=st.integers(1, 3),
    width=st.integers(1, 5),
    bias=st.booleans(),
)
def test_odd_shapes(backend, batch, rows, cols, time, bands, base, width, bias):
    _, device = backend
    g = torch.Generator().manual_seed(batch * 100 + rows * 10 + cols)
    x = torch.randn(batch, rows * base, cols * base, time, bands, generator=g, dtype=torch.float64)
    w = torch.randn(width, base * base * bands, generator=g, dtype=torch.float64)
    b = torch.randn(width, generator=g, dtype=torch.float64) if bias else None
    keep = torch.rand(batch, bands, generator=g) < 0.5
    out = mim_fast.patch_embed(x.float().to(device), w.float().to(device), None if b is None else b.float().to(device),
                               patch_size=base, keep=keep.to(device))
    expected = reference.patch_embed(x, w, b, patch_size=base, keep=keep)
    assert out.shape == (batch, rows, cols, time, width)
    _check_close(out, expected, torch.float32, base * base * bands)


def test_non_contiguous_inputs(backend):
    _, device = backend
    exact, (x, w, b, keep) = _inputs(2, 8, 2, 3, 4, 6, device=device)
    x_nc = x.transpose(1, 2).contiguous().transpose(1, 2)
    w_nc = w.t().contiguous().t()
    out = mim_fast.patch_embed(x_nc, w_nc, b, patch_size=4, keep=keep)
    expected = reference.patch_embed(exact[0], exact[1], exact[2], patch_size=4, keep=exact[3])
    _check_close(out, expected, torch.float32, 48)


def test_bad_inputs_name_the_argument():
    x = torch.randn(2, 8, 8, 3)
    w = torch.randn(5, 4 * 4 * 3)
    with pytest.raises(ValueError, match="x"):
        mim_fast.patch_embed(torch.randn(8, 8, 3), w, patch_size=4)
    with pytest.raises(ValueError, match="weight"):
        mim_fast.patch_embed(torch.randn(2, 8, 8, 5), w, patch_size=4)
    with pytest.raises(ValueError, match="weight"):
        mim_fast.patch_embed(x, w, patch_size=4, base_patch_size=2)
    with pytest.raises(TypeError, match="x"):
        mim_fast.patch_embed(x.int(), w, patch_size=4)
    with pytest.raises(TypeError, match="weight"):
        mim_fast.patch_embed(x, w.double(), patch_size=4)
    with pytest.raises(ValueError, match="patch_size"):
        mim_fast.patch_embed(x, w, patch_size=0)
    with pytest.raises(TypeError, match="patch_size"):
        mim_fast.patch_embed(x, w, patch_size=2.5)
    with pytest.raises(ValueError, match="keep"):
        mim_fast.patch_embed(x, w, patch_size=4, keep=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="bias"):
        mim_fast.patch_embed(x, w, torch.zeros(4), patch_size=4)
    with pytest.raises(ValueError, match="x"):
        mim_fast.patch_embed(torch.randn(2, 6, 8, 3), w, patch_size=4)
    with pytest.raises(ValueError, match="x"):
        mim_fast.patch_embed(torch.randn(2, 2, 8, 3), w, patch_size=3)
    with pytest.raises(ValueError, match="weight"):
        mim_fast.patch_embed(x, w.to("meta"), patch_size=4)
