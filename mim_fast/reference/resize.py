"""Exact weights of PyTorch's antialiased bicubic resize, and their per-token windows.

This module is the math groundwork of a fused tokenizer that embeds patches at a size
``p`` different from the layer's base size ``P`` without materialising the resized image.

1-D resize as a matrix
----------------------
``F.interpolate(mode="bicubic", antialias=True, align_corners=False)`` is separable: for
every (batch, channel) plane ``X [H, W]`` it computes ``Y = R_h @ X @ R_w^T`` where
``R_h = aa_bicubic_matrix(H, H_out)`` and ``R_w = aa_bicubic_matrix(W, W_out)`` (the CPU
kernel does the width pass first, then the height pass; in exact arithmetic the order does
not matter). Row ``o`` of ``R = aa_bicubic_matrix(n_in, n_out)`` is, with ``s = n_in /
n_out`` and ``K`` the Keys cubic (a = -0.5)::

    support = 2 * max(s, 1)                   # 4 taps of the kernel, stretched when shrinking
    center  = s * (o + 0.5)
    start   = max(int(center - support + 0.5), 0)
    end     = min(int(center + support + 0.5), n_in)
    w_j     = K((j - center + 0.5) / max(s, 1))      for j in [start, end)
    R[o, j] = w_j / sum(w)                    # taps outside the image dropped, rest renormalised

Windows per token (input length a multiple of p)
-------------------------------------------------
Let one axis hold ``n`` tokens: ``n_in = n * p`` input pixels resized to ``n_out = n * P``.
Then ``s = p / P`` and output pixel ``o = i * P + q`` (token ``i``, offset ``q < P``) has
``center = i * p + s * (q + 0.5)``. Writing a tap relative to the token's first input pixel,
``j = i * p + r``, its kernel argument is ``(r - s * (q + 0.5) + 0.5) / max(s, 1)``: it does
not depend on ``i``. Moving one token along the axis moves the input by ``p`` pixels and the
output by ``P`` pixels, so the un-normalised weights are *periodic*: the same for every
token as a function of ``(q, r)``. A weight is non-zero only for ``|r + 0.5 - s(q + 0.5)| <
2 max(s, 1)``, so every tap of token ``i`` lies in the window ``r in [-m, p + m)`` with
``m = 2`` when ``p <= P`` (window ``p + 4``, starting at ``i * p - 2``) and ``m =
ceil(2 p / P)`` when ``p > P``. :func:`token_window_weights` returns, for each token, the
``[P, window]`` block of ``R`` restricted to its window (zero where the window leaves the
image).

Why borders differ: for interior tokens every tap with a non-zero kernel weight is inside
the image, so each row is divided by the full kernel sum, identical for all of them. For a
token whose window sticks out of the image, the outside taps are dropped and the row is
renormalised by a smaller sum: different weights. With ``P = 8`` and ``n >= 5`` this gives
(:func:`window_classes`, e.g. ``n = 12``):

=========  ===  ===  ===  ===  ===  ===  ===  ===
p          1    2    3    4    5    6    7    8
classes    5    3    3    3    3    3    3    1
=========  ===  ===  ===  ===  ===  ===  ===  ===

``p = 1`` (``s = 1/8``): the kernel of tokens 0, 1, n-2 and n-1 reaches outside the image
(two left border classes, the interior, two right border classes); ``2 <= p <= 7``: only
the first and the last token are affected; ``p = P``: ``s = 1`` and the kernel sampled at
integer offsets is the identity (``K(0) = 1``, ``K(+-1) = K(+-2) = 0``), so the dropped taps
all weigh zero and every token is in one class (no resize at all, as the reference does).
Downsampling (``p > P``) stretches the kernel to ``4 s`` pixels but the token also grows
to ``p = s P`` pixels, so again only the first and last token touch the border (3 classes,
e.g. for ``p = 9 ... 16`` with ``P = 8``).

Rounding: ``center = s * (o + 0.5)`` is computed in floating point. For ``P`` a power of two
``s = p / P`` is dyadic and every center is exact, so the weights are *bitwise* periodic; for
other ``P`` they are periodic up to ~1e-16, and :func:`window_classes` groups tokens with a
tolerance.

Why the squash case breaks periodicity: when ``n_in`` is not a multiple of ``p``, the image
is squashed to ``n_out = (n_in // p) * P``, so ``s = n_in / n_out != p / P``. Token ``i``
then starts at input position ``i * P * s = i * n_in / (n_in // p)``, which is not an integer
stride: the fractional phase of the centers relative to the pixel grid changes from token to
token (and so can the number of taps), hence in general every token has its own weights
(e.g. ``13 -> 32`` with ``p = 3, P = 8``). A fused kernel must then use per-token weights
(the rows of the full matrix) or fall back to the materialised resize.

Folding into the projection
---------------------------
For a token with input window ``Xw [window_r, window_c, C]`` (zero outside the image), the
resized patch is ``Y[:, :, c] = W_r @ Xw[:, :, c] @ W_c^T`` (``W_r, W_c [P, window]`` its row
and column window weights), and the embedding is ``weight @ vec(Y)``. Both are linear, so
``weight @ vec(Y) = folded @ vec(Xw)`` with ``folded[d, a, b, c] = sum_{x, y} weight[d, x, y,
c] W_r[x, a] W_c[y, b]`` (:func:`folded_weight`). One folded weight per (row class, column
class) pair replaces resize + patchify + linear.

Precision: the weights are computed in float64 exactly as torch's float64 CPU kernel does
(``R_h @ X @ R_w^T`` matches ``F.interpolate`` in float64 to ~1e-15). Torch's float32 path
computes its weights in float32: they differ from these float64 weights by up to ~6e-8 for
dyadic scales (e.g. 5 -> 8) and up to ~1e-6 for non-dyadic ones (e.g. 17 -> 40, where
``s`` and the centers are rounded to float32).

Known torch defect (seen with torch 2.13 on CPU, bilinear and bicubic): when the output
width is 1 and the height is resized, antialiased ``F.interpolate`` repeats the first output
row down the column. :func:`aa_bicubic_matrix` gives the intended result (what resizing a
width-2 copy of the column gives). The tokenizer never resizes to width 1 unless ``P = 1``.
"""

import functools
import math

import torch

_KEYS_A = -0.5


def _check_size(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: must be >= 1, got {value}")
    return value


def _keys_cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys cubic convolution kernel with a = -0.5 (evaluated in torch's Horner order)."""
    a = _KEYS_A
    x = x.abs()
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def aa_bicubic_matrix(in_size: int, out_size: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """1-D weight matrix of antialiased bicubic resizing (``align_corners=False``).

    Along one axis ``F.interpolate(..., mode="bicubic", antialias=True,
    align_corners=False)`` computes ``out = R @ in`` with ``R = aa_bicubic_matrix(in_size,
    out_size)``. The weights are computed in float64 following torch's formula and
    operation order (see the module docstring), then cast to ``dtype``.

    Args:
        in_size: input length >= 1.
        out_size: output length >= 1.
        dtype: dtype of the returned matrix.

    Returns:
        ``R [out_size, in_size]``; each row sums to 1 (up to rounding).
    """
    _check_size("in_size", in_size)
    _check_size("out_size", out_size)
    f64 = torch.float64
    scale = in_size / out_size  # Python float == C double, as in area_pixel_compute_scale
    support = 2.0 * scale if scale >= 1.0 else 2.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    centers = scale * (torch.arange(out_size, dtype=f64) + 0.5)
    # static_cast<int64_t> truncates toward zero; negative starts are clamped to 0 anyway.
    starts = torch.trunc(centers - support + 0.5).to(torch.int64).clamp_min(0)
    ends = torch.trunc(centers + support + 0.5).to(torch.int64).clamp_max(in_size)
    sizes = ends - starts
    max_taps = int(sizes.max())
    offsets = torch.arange(max_taps, dtype=torch.int64)
    taps = starts[:, None] + offsets[None, :]
    valid = offsets[None, :] < sizes[:, None]
    weights = _keys_cubic((taps.to(f64) - centers[:, None] + 0.5) * invscale)
    weights = torch.where(valid, weights, torch.zeros((), dtype=f64))
    total = torch.zeros(out_size, dtype=f64)
    for k in range(max_taps):  # sequential sum, in torch's tap order
        total = total + weights[:, k]
    weights = torch.where(total[:, None] != 0, weights / torch.where(total != 0, total, 1.0)[:, None], weights)
    matrix = torch.zeros(out_size, in_size + max_taps, dtype=f64)
    matrix.scatter_(1, taps, weights)  # invalid taps carry zero weight and land in [in_size, ...)
    return matrix[:, :in_size].to(dtype)


def window_margin(patch: int, base: int) -> int:
    """Input pixels a token's window extends on each side: 2 if ``patch <= base`` else ceil(2 patch / base)."""
    _check_size("patch", patch)
    _check_size("base", base)
    return 2 if patch <= base else math.ceil(2 * patch / base)


def token_window_weights(patch: int, base: int, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token window weights along one axis of length ``num_tokens * patch`` (no squash).

    The ``base`` resized pixels ``i * base ... (i + 1) * base - 1`` of token ``i`` are
    ``weights[i] @ x[starts[i] : starts[i] + window]`` (``x`` zero outside ``[0, n*patch)``)
    with ``window = patch + 2 m`` and ``starts[i] = i * patch - m``, ``m =
    window_margin(patch, base)`` (``m = 2``, ``window = patch + 4`` when ``patch <= base``).

    Args:
        patch: requested patch size p >= 1.
        base: base patch size P >= 1.
        num_tokens: tokens along the axis n >= 1.

    Returns:
        ``(starts [n] int64, weights [n, base, window] float64)``; weights of window
        positions outside the image are zero.
    """
    _check_size("patch", patch)
    _check_size("base", base)
    _check_size("num_tokens", num_tokens)
    in_size, out_size = num_tokens * patch, num_tokens * base
    margin = window_margin(patch, base)
    window = patch + 2 * margin
    matrix = aa_bicubic_matrix(in_size, out_size)
    padded = torch.nn.functional.pad(matrix, (margin, margin))  # column k + margin == input pixel k
    starts = torch.arange(num_tokens, dtype=torch.int64) * patch - margin
    rows = (torch.arange(num_tokens)[:, None] * base + torch.arange(base)[None, :])[:, :, None]
    cols = (starts + margin)[:, None, None] + torch.arange(window)[None, None, :]
    weights = padded[rows, cols]
    # Every non-zero weight of the matrix must lie inside its token's window.
    if bool((weights.abs().sum(dim=2).reshape(-1) - matrix.abs().sum(dim=1)).abs().max() > 1e-12):
        raise RuntimeError(f"internal: resize taps outside the token windows (patch {patch}, base {base})")
    return starts, weights


def window_classes(
    patch: int, base: int, num_tokens: int, *, atol: float = 1e-12
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group the tokens of one axis whose window weights are identical.

    Interior tokens share one class; tokens whose kernel reaches outside the image get
    their own. With ``base = 8`` and ``num_tokens = 12`` the number of classes is, for
    ``patch`` = 1, 2, 3, 4, 5, 6, 7, 8: 5, 3, 3, 3, 3, 3, 3, 1 (see the module docstring:
    ``p = 1`` has two border classes on each side, ``2 <= p <= 7`` one, ``p = P`` is the
    identity everywhere); ``patch > base`` (downsampling) gives 3. With fewer tokens the
    borders overlap: ``num_tokens = 1`` is one class, 2 gives 2, 3 gives 3 (except
    ``patch == base``: always 1).

    Args:
        patch, base, num_tokens: as in :func:`token_window_weights`.
        atol: two tokens share a class when their weights differ by at most this (for
            base a power of two the weights of a class are bitwise equal).

    Returns:
        ``(class_of_token [num_tokens] int64, class_weights [n_classes, base, window]
        float64)``; classes are numbered by first occurrence, and ``class_weights[k]`` are
        the weights of the first token of class ``k``.
    """
    _, weights = token_window_weights(patch, base, num_tokens)
    class_of_token = torch.empty(num_tokens, dtype=torch.int64)
    representatives: list[torch.Tensor] = []
    for i in range(num_tokens):
        for k, rep in enumerate(representatives):
            if float((weights[i] - rep).abs().max()) <= atol:
                class_of_token[i] = k
                break
        else:
            class_of_token[i] = len(representatives)
            representatives.append(weights[i])
    return class_of_token, torch.stack(representatives)


def folded_weight(
    weight: torch.Tensor, row_weights: torch.Tensor, col_weights: torch.Tensor, channels: int
) -> torch.Tensor:
    """Projection weight with the separable resize folded in.

    For a token with input window ``Xw [window_r, window_c, C]`` (zeros outside the
    image) and resized patch ``Y[:, :, c] = row_weights @ Xw[:, :, c] @ col_weights^T``:
    ``weight @ vec(Y) == folded @ vec(Xw)``, with ``vec`` in ``(p1 p2 c)`` order for the
    patch and ``(a b c)`` order for the window. Computed in float64, returned in
    ``weight.dtype``; differentiable in ``weight``.

    Args:
        weight: ``[D, P*P*C]``, features in ``(p1 p2 c)`` order.
        row_weights: ``[P, window_r]``.
        col_weights: ``[P, window_c]``.
        channels: C.

    Returns:
        ``folded [D, window_r * window_c * C]``.
    """
    _check_size("channels", channels)
    if weight.dim() != 2:
        raise ValueError(f"weight: expected [D, P*P*C], got a tensor of shape {list(weight.shape)}")
    if row_weights.dim() != 2 or col_weights.dim() != 2 or row_weights.shape[0] != col_weights.shape[0]:
        raise ValueError(
            f"row_weights, col_weights: expected [P, window] each with the same P, got "
            f"{list(row_weights.shape)} and {list(col_weights.shape)}"
        )
    base = row_weights.shape[0]
    if weight.shape[1] != base * base * channels:
        raise ValueError(
            f"weight: expected {base}*{base}*{channels} = {base * base * channels} features "
            f"(P from row_weights, C = channels), got {weight.shape[1]}"
        )
    return _separable_float64("dxyc,xa,yb->dabc", weight, (base, base, channels), row_weights, col_weights)


def _separable_float64(equation: str, flat: torch.Tensor, dims: tuple, row_weights, col_weights) -> torch.Tensor:
    """``einsum(equation, flat [D, prod(dims)] viewed [D, *dims], rows, cols)`` in float64,
    flattened back to ``[D, -1]`` in ``flat``'s dtype."""
    d = flat.shape[0]
    rows = row_weights.to(device=flat.device, dtype=torch.float64)
    cols = col_weights.to(device=flat.device, dtype=torch.float64)
    out = torch.einsum(equation, flat.to(torch.float64).reshape(d, *dims), rows, cols)
    return out.reshape(d, -1).to(flat.dtype)


def unfolded_gradient(
    grad_folded: torch.Tensor, row_weights: torch.Tensor, col_weights: torch.Tensor, channels: int
) -> torch.Tensor:
    """The adjoint of :func:`folded_weight`: the gradient of ``weight`` from that of ``folded``.

    ``grad_weight[d, (x y c)] = sum_{a b} row_weights[x, a] col_weights[y, b] grad_folded[d, (a b c)]``,
    computed in float64, returned in ``grad_folded.dtype``.

    Args:
        grad_folded: ``[D, window_r * window_c * C]``.
        row_weights, col_weights: ``[P, window_r]``, ``[P, window_c]``.
        channels: C.

    Returns:
        ``grad_weight [D, P*P*C]``.
    """
    _check_size("channels", channels)
    window_r, window_c = row_weights.shape[1], col_weights.shape[1]
    if grad_folded.dim() != 2 or grad_folded.shape[1] != window_r * window_c * channels:
        raise ValueError(
            f"grad_folded: expected [D, {window_r}*{window_c}*{channels}], got a tensor of shape "
            f"{list(grad_folded.shape)}"
        )
    dims = (window_r, window_c, channels)
    return _separable_float64("dabc,xa,yb->dxyc", grad_folded, dims, row_weights, col_weights)


@functools.lru_cache(maxsize=256)
def window_tables(patch: int, base: int, num_rows: int, num_cols: int):
    """Class tables of a token grid, in the layout the tokenizer's row builders read.

    Args:
        patch, base: requested and base patch sizes.
        num_rows, num_cols: tokens along the height and the width.

    Returns:
        ``(row_class [num_rows] int64, col_class [num_cols] int64,
        tables [2, n_classes, base, window] float64)``: ``tables[0, k]`` are the row
        weights of row class ``k``, ``tables[1, k]`` the column weights of column class
        ``k`` (the shorter list zero padded). Cached; treat the tensors as read-only.
    """
    row_class, row_weights = window_classes(patch, base, num_rows)
    col_class, col_weights = window_classes(patch, base, num_cols)
    n = max(row_weights.shape[0], col_weights.shape[0])
    tables = torch.zeros(2, n, base, row_weights.shape[2], dtype=torch.float64)
    tables[0, : row_weights.shape[0]] = row_weights
    tables[1, : col_weights.shape[0]] = col_weights
    return row_class, col_class, tables


@functools.lru_cache(maxsize=256)
def interior_class(patch: int, base: int, num_tokens: int) -> int:
    """Window class of the tokens unaffected by the borders (-1 if no token is).

    Interior tokens have the periodic weights of a token far from both ends of the axis.
    """
    class_of_token, class_weights = window_classes(patch, base, num_tokens)
    _, far = token_window_weights(patch, base, 9)
    periodic = far[4]
    for k in range(class_weights.shape[0]):
        if float((class_weights[k] - periodic).abs().max()) <= 1e-12:
            return k
    return -1
