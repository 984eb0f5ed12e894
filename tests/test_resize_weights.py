import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from mim_fast import reference
from mim_fast.reference.resize import (
    aa_bicubic_matrix,
    folded_weight,
    token_window_weights,
    window_classes,
    window_margin,
)

# (H_in, H_out, W_in, W_out): upsampling by 8, 4, 8/3, 2, 8/5, 4/3, 8/7, identity,
# non-integer squash factors and downsampling.
RESIZE_CASES = [
    (1, 8, 2, 16),  # x8
    (2, 8, 3, 12),  # x4
    (3, 8, 6, 16),  # x8/3
    (4, 8, 7, 14),  # x2
    (5, 8, 10, 16),  # x8/5
    (6, 8, 12, 16),  # x4/3
    (7, 8, 14, 16),  # x8/7
    (8, 8, 5, 5),  # identity
    (13, 32, 17, 40),  # squash: 13 pixels, p = 3 -> 4 tokens of 8
    (11, 24, 9, 16),  # squash
    (32, 13, 40, 17),  # downsampling, non-integer
    (16, 8, 24, 8),  # downsampling by 2 and 3
    (20, 7, 9, 3),
    (9, 1, 1, 1),
]


def _interpolate(x, size):
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)


@pytest.mark.parametrize("h_in, h_out, w_in, w_out", RESIZE_CASES)
def test_matrix_matches_interpolate_float64(h_in, h_out, w_in, w_out):
    g = torch.Generator().manual_seed(h_in * 100 + w_out)
    x = torch.randn(2, 3, h_in, w_in, generator=g, dtype=torch.float64)
    expected = _interpolate(x, (h_out, w_out))
    r_h, r_w = aa_bicubic_matrix(h_in, h_out), aa_bicubic_matrix(w_in, w_out)
    got = r_h @ x @ r_w.T
    assert r_h.shape == (h_out, h_in) and r_h.dtype == torch.float64
    assert (got - expected).abs().max().item() <= 1e-12


@given(n_in=st.integers(1, 48), n_out=st.integers(1, 48))
def test_matrix_matches_interpolate_one_axis(n_in, n_out):
    # Width 2 -> 2 (identity), not 1 -> 1: see test_torch_output_width_one_defect.
    x = torch.randn(1, 1, n_in, 2, generator=torch.Generator().manual_seed(n_in * 64 + n_out), dtype=torch.float64)
    expected = _interpolate(x, (n_out, 2))[0, 0]
    matrix = aa_bicubic_matrix(n_in, n_out)
    assert (matrix @ x[0, 0] - expected).abs().max().item() <= 1e-12
    torch.testing.assert_close(matrix.sum(dim=1), torch.ones(n_out, dtype=torch.float64), rtol=0, atol=1e-14)


@pytest.mark.parametrize(
    "n_in, n_out, bound", [(5, 8, 1e-7), (3, 8, 1e-7), (13, 32, 1e-7), (17, 40, 2e-6), (40, 17, 2e-6)]
)
def test_float32_path_differs_only_by_float32_weight_rounding(n_in, n_out, bound):
    """Torch's float32 kernel computes its weights in float32 (documented in the module)."""
    eye = torch.eye(n_in, dtype=torch.float32)[None, None]
    weights32 = _interpolate(eye, (n_out, n_in))[0, 0].double()  # column k: response to pixel k
    assert (weights32 - aa_bicubic_matrix(n_in, n_out)).abs().max().item() <= bound


def test_torch_output_width_one_defect():
    """Torch's CPU antialiased kernel repeats the first output row when the output width is 1
    and the height is resized (seen with torch 2.13, bilinear and bicubic). The matrix gives
    the intended result, which equals resizing a width-2 copy of the column."""
    x = torch.randn(1, 1, 5, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    intended = aa_bicubic_matrix(5, 9) @ x[0, 0, :, 0]
    torch.testing.assert_close(_interpolate(x.expand(1, 1, 5, 2), (9, 2))[0, 0, :, 0], intended, rtol=0, atol=1e-12)
    observed = _interpolate(x, (9, 1))[0, 0, :, 0]
    if not torch.allclose(observed, intended, rtol=0, atol=1e-12):  # the defect: a constant column
        assert torch.allclose(observed, observed[:1].expand(9), rtol=0, atol=0)


def test_identity_and_dtype():
    assert torch.equal(aa_bicubic_matrix(7, 7), torch.eye(7, dtype=torch.float64))
    assert aa_bicubic_matrix(3, 8, dtype=torch.float32).dtype == torch.float32


def test_matrix_argument_errors():
    with pytest.raises(ValueError, match="in_size"):
        aa_bicubic_matrix(0, 4)
    with pytest.raises(TypeError, match="out_size"):
        aa_bicubic_matrix(4, 2.0)


def _assemble(starts, weights, in_size):
    """Scatter per-token window weights back into a [n * base, in_size] matrix."""
    n, base, window = weights.shape
    matrix = torch.zeros(n * base, in_size + 2 * window, dtype=torch.float64)
    for i in range(n):
        col = int(starts[i]) + window
        matrix[i * base : (i + 1) * base, col : col + window] = weights[i]
    outside = torch.cat([matrix[:, :window], matrix[:, window + in_size :]], dim=1)
    return matrix[:, window : window + in_size], outside


@pytest.mark.parametrize("patch, base", [(p, 8) for p in range(1, 9)] + [(12, 8), (16, 8), (3, 7), (5, 6)])
@pytest.mark.parametrize("tokens", [1, 2, 5])
def test_window_weights_reproduce_matrix_rows(patch, base, tokens):
    starts, weights = token_window_weights(patch, base, tokens)
    margin = window_margin(patch, base)
    assert weights.shape == (tokens, base, patch + 2 * margin)
    assert starts.tolist() == [i * patch - margin for i in range(tokens)]
    if patch <= base:
        assert weights.shape[2] == patch + 4 and starts[0] == -2
    rebuilt, outside = _assemble(starts, weights, tokens * patch)
    assert torch.equal(rebuilt, aa_bicubic_matrix(tokens * patch, tokens * base))
    assert not outside.any()  # weights of window positions outside the image are zero


@pytest.mark.parametrize("patch, classes", list(zip(range(1, 9), [5, 3, 3, 3, 3, 3, 3, 1])))
def test_window_classes_base8(patch, classes):
    class_of_token, class_weights = window_classes(patch, 8, 12)
    _, weights = token_window_weights(patch, 8, 12)
    assert class_weights.shape[0] == classes
    assert int(class_of_token.max()) + 1 == classes
    for i in range(12):  # base 8: scales are dyadic, so classes are bitwise equal
        assert torch.equal(weights[i], class_weights[class_of_token[i]])
    interior = class_of_token[2:-2]
    assert (interior == interior[0]).all()
    if classes > 1:
        assert class_of_token[0] != interior[0] and class_of_token[-1] != interior[0]


def test_window_classes_non_dyadic_base_groups_with_tolerance():
    class_of_token, class_weights = window_classes(3, 7, 10)
    _, weights = token_window_weights(3, 7, 10)
    assert class_weights.shape[0] == 3
    assert (weights - class_weights[class_of_token]).abs().max().item() <= 1e-12
    exact, _ = window_classes(3, 7, 10, atol=0.0)
    assert int(exact.max()) + 1 >= 3


def test_squash_breaks_periodicity():
    """13 pixels at p = 3 -> 4 tokens of 8: interior tokens are not shifts of each other."""
    matrix = aa_bicubic_matrix(13, 32)
    block1, block2 = matrix[8:16], matrix[16:24]
    shifts_equal = [
        torch.allclose(block2[:, s:], block1[:, : 13 - s], atol=1e-12) and not block2[:, :s].any() for s in range(13)
    ]
    assert not any(shifts_equal)
    periodic = aa_bicubic_matrix(12, 32)  # 12 pixels: a multiple of p
    assert torch.allclose(periodic[16:24, 3:], periodic[8:16, :9], atol=1e-15)


def test_folded_weight_identity():
    g = torch.Generator().manual_seed(0)
    d, base, c, win_r, win_c = 5, 4, 3, 7, 9
    weight = torch.randn(d, base * base * c, generator=g, dtype=torch.float64)
    rows = torch.randn(base, win_r, generator=g, dtype=torch.float64)
    cols = torch.randn(base, win_c, generator=g, dtype=torch.float64)
    xw = torch.randn(win_r, win_c, c, generator=g, dtype=torch.float64)
    resized = torch.einsum("pa,abc,qb->pqc", rows, xw, cols)
    folded = folded_weight(weight, rows, cols, c)
    assert folded.shape == (d, win_r * win_c * c)
    torch.testing.assert_close(folded @ xw.reshape(-1), weight @ resized.reshape(-1), rtol=1e-12, atol=1e-12)
    assert folded_weight(weight.float(), rows, cols, c).dtype == torch.float32


def test_folded_weight_errors():
    weight = torch.zeros(2, 4 * 4 * 3, dtype=torch.float64)
    rows = torch.zeros(4, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="weight"):
        folded_weight(weight, rows, rows, 2)
    with pytest.raises(ValueError, match="row_weights"):
        folded_weight(weight, rows, torch.zeros(3, 8, dtype=torch.float64), 3)


@pytest.mark.parametrize("patch", list(range(1, 9)))
@pytest.mark.parametrize("channels, time", [(1, 1), (3, 2)])
def test_folded_weight_reproduces_patch_embed(patch, channels, time):
    g = torch.Generator().manual_seed(patch * 10 + channels)
    base, d, rows_n, cols_n = 8, 4, 2, 3
    x = torch.randn(1, rows_n * patch, cols_n * patch, time, channels, generator=g, dtype=torch.float64)
    weight = torch.randn(d, base * base * channels, generator=g, dtype=torch.float64) / (base * base * channels) ** 0.5
    expected = reference.patch_embed(x, weight, None, patch_size=patch, base_patch_size=base)[0]

    row_starts, row_weights = token_window_weights(patch, base, rows_n)
    col_starts, col_weights = token_window_weights(patch, base, cols_n)
    margin = window_margin(patch, base)
    window = patch + 2 * margin
    padded = F.pad(x[0], (0, 0, 0, 0, margin, margin, margin, margin))
    got = torch.empty_like(expected)
    for i in range(rows_n):
        for j in range(cols_n):
            r0, c0 = int(row_starts[i]) + margin, int(col_starts[j]) + margin
            xw = padded[r0 : r0 + window, c0 : c0 + window]  # [window, window, T, C]
            folded = folded_weight(weight, row_weights[i], col_weights[j], channels)
            got[i, j] = xw.permute(2, 0, 1, 3).reshape(time, -1) @ folded.T
    assert (got - expected).abs().max().item() <= 1e-12
