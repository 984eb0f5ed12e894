"""Per-token resized patches from input windows: the row builder of the fused tokenizer.

The fused tokenizer never resizes the whole image. For every selected token it computes
the token's ``P x P`` patch of the resized image straight from its input window, then one
GEMM with the projection weight embeds all of them (:mod:`mim_fast.ops.tokenize`).

Work rows
---------
A *work list* ``work [R, 7]`` (int64) names one token per row::

    work[r] = (sample b, token row i, token column j, timestep t, slot, row class, column class)

``slot < 0`` marks a padding row (fixed-size work lists on GPUs have them): its patch is
exactly zero and it receives no gradient. The classes index ``tables``.

Window tables
-------------
``tables [2, n_classes, P, window]`` (float32, or float64 for float64 inputs):
``tables[0, k]`` are the row weights of row class ``k`` and ``tables[1, k]`` the column
weights of column class ``k`` (:func:`mim_fast.reference.resize.window_classes`, zero
padded to a common number of classes). Token ``(i, j)`` reads the input window starting at
``(i * p - m, j * p - m)`` of ``window = p + 2 m`` pixels per side (zero outside the
image, ``m = (window - p) // 2``), and its patch is, per channel ``c``::

    patch[q1, q2, c] = sum_{u, v} tables[0, rc, q1, u] * x[b, i p - m + u, j p - m + v, t, c]
                                  * tables[1, cc, q2, v] * keep[b, c]

flattened in ``(q1 q2 c)`` order. When ``p == P`` no resize happens and the patch is the
token's own ``P x P`` block (the tables are not read).
"""

import torch
import torch.nn.functional as F


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype the resize weights and sums use for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _unpack(work: torch.Tensor):
    sample, i, j, t, slot, row_class, col_class = work.unbind(1)
    return sample, i, j, t, slot, row_class, col_class


def _window_index(i, j, patch, base, window, margin):
    """Row and column coordinates [R, n] of each token's block (p == P) or padded window."""
    if patch == base:
        span = torch.arange(base, device=i.device)
        return i[:, None] * base + span, j[:, None] * base + span
    span = torch.arange(window, device=i.device)
    # In a copy of x padded by `margin` on each side, the window starts at i * p.
    return i[:, None] * patch + span, j[:, None] * patch + span


def token_patches(x, keep, work, tables, patch):
    """Resized patches of the tokens named by ``work``.

    Args:
        x: ``[B, H, W, T, C]`` channel-last pixels (H and W multiples of ``patch``).
        keep: ``[B, C]`` bool band mask, or None.
        work: ``[R, 7]`` int64 work rows (module docstring).
        tables: ``[2, n_classes, P, window]`` window weights.
        patch: the requested patch size p.

    Returns:
        ``[R, P * P * C]`` in x's dtype, features in ``(q1 q2 c)`` order; padding rows zero.
    """
    base, window = tables.shape[2], tables.shape[3]
    channels = x.shape[-1]
    margin = (window - patch) // 2
    sample, i, j, t, slot, row_class, col_class = _unpack(work)
    rows, cols = _window_index(i, j, patch, base, window, margin)
    source = x if patch == base else F.pad(x, (0, 0, 0, 0, margin, margin, margin, margin))
    pixels = source[sample[:, None, None], rows[:, :, None], cols[:, None, :], t[:, None, None]]  # [R, n, n, C]
    if keep is not None:
        pixels = pixels * keep[sample][:, None, None, :].to(pixels.dtype)
    if patch != base:
        acc = tables.dtype
        pixels = torch.einsum(
            "rpu,ruvc,rqv->rpqc", tables[0][row_class], pixels.to(acc), tables[1][col_class]
        ).to(x.dtype)
    valid = (slot >= 0)[:, None, None, None]
    pixels = torch.where(valid, pixels, torch.zeros((), dtype=pixels.dtype, device=pixels.device))
    return pixels.reshape(work.shape[0], base * base * channels)


def token_patches_backward(grad_patches, x_shape, keep, work, tables, patch):
    """Gradient of :func:`token_patches` with respect to x (the adjoint resize).

    Args:
        grad_patches: ``[R, P * P * C]``.
        x_shape: ``(B, H, W, T, C)`` of x.
        keep, work, tables, patch: as in :func:`token_patches`.

    Returns:
        ``grad_x [B, H, W, T, C]`` in grad_patches' dtype (summed in the accumulation dtype;
        overlapping windows add up).
    """
    base, window = tables.shape[2], tables.shape[3]
    batch, height, width, time, channels = x_shape
    margin = (window - patch) // 2
    sample, i, j, t, slot, row_class, col_class = _unpack(work)
    acc = accumulation_dtype(grad_patches.dtype)
    grad = grad_patches.to(acc).reshape(-1, base, base, channels)
    grad = grad * (slot >= 0).to(acc)[:, None, None, None]
    if keep is not None:
        grad = grad * keep[sample][:, None, None, :].to(acc)
    rows, cols = _window_index(i, j, patch, base, window, margin)
    pad = 0 if patch == base else margin
    out = grad.new_zeros(batch, height + 2 * pad, width + 2 * pad, time, channels)
    if patch != base:
        grad = torch.einsum("rpu,rpqc,rqv->ruvc", tables[0][row_class].to(acc), grad, tables[1][col_class].to(acc))
    out.index_put_(
        (sample[:, None, None], rows[:, :, None], cols[:, None, :], t[:, None, None]), grad, accumulate=True
    )
    return out[:, pad : pad + height, pad : pad + width].to(grad_patches.dtype).contiguous()
