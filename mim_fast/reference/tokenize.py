"""Pure-PyTorch reference of the fused tokenizer: band dropout -> flexible patch embedding
-> selection of the tokens with one mask code -> packing.

:func:`tokenize` states the semantics as a composition of the existing references.
:func:`tokenize_windowed` computes the same result without materialising the resized
image: every selected token reads only its zero-padded input window and multiplies it by
the projection weight with the resize folded in (:mod:`mim_fast.reference.resize`), one
folded weight per (row class, column class) pair. It is the math the fast backends use.

Import this module explicitly (``from mim_fast.reference.tokenize import tokenize``); it
depends on the public ops (``mim_fast.band_dropout_mask``, ``mim_fast.Packed``).
"""

import torch
import torch.nn.functional as F

from ..ops.masked_gather import Packed
from ..ops.tokenize import _band_keep, _validate
from .masked_gather import gather_indices, pack_rows
from .patch_embed import patch_embed
from .resize import folded_weight, window_classes, window_margin


def _pack_layout(token_mask, select, max_len):
    """(indices [B, N], seqlens [B], mask [B, L]) of the selected tokens (reads seqlens on the host)."""
    chosen = token_mask.reshape(token_mask.shape[0], -1) == select
    indices, seqlens = gather_indices(chosen)
    longest = int(seqlens.max()) if seqlens.numel() else 0
    if max_len is None:
        max_len = longest
    elif longest > max_len:
        raise ValueError(f"max_len: {max_len} is smaller than the largest number of selected tokens {longest}")
    mask = torch.arange(max_len, device=token_mask.device)[None, :] < seqlens[:, None]
    return indices, seqlens, mask


def tokenize(
    x,
    weight,
    bias,
    token_mask,
    *,
    select,
    patch_size,
    base_patch_size=None,
    band_dropout_rate=0.0,
    generator=None,
    max_len=None,
) -> Packed:
    """Reference tokenizer: band dropout, patch embedding, then pack the selected tokens.

    Args:
        x: channel-last pixels ``[B, H, W, C]`` or ``[B, H, W, T, C]``.
        weight: ``[D, P*P*C]``, features in ``(p1 p2 c)`` order.
        bias: ``[D]`` or None.
        token_mask: integer mask codes at token resolution, ``[B, H//p, W//p]`` (4-D x) or
            ``[B, H//p, W//p, T]`` (5-D x).
        select: the code of the tokens to keep (e.g. ``MaskValue.ONLINE_ENCODER``).
        patch_size: requested patch size p; the image is resized as in ``patch_embed``.
        base_patch_size: the layer's native patch size P (inferred from ``weight`` if None).
        band_dropout_rate: float in [0, 1] or one-element tensor. When > 0 (or a tensor),
            ``keep = mim_fast.band_dropout_mask(B, C, rate, generator=generator,
            device=x.device)`` is drawn (consuming one seed of ``generator``) and dropped
            bands are zeroed; a rate of 0 draws nothing.
        generator: torch generator for the band mask (default generator if None).
        max_len: packed length L; None means ``max(seqlens)``. Raises ValueError if some
            sample selects more than ``max_len`` tokens (this reads seqlens on the host).

    Returns:
        :class:`mim_fast.Packed` ``(tokens [B, L, D], indices [B, N], mask [B, L],
        seqlens [B])`` as :func:`mim_fast.masked_gather` of the embedded tokens flattened
        row-major over ``(h', w'(, t))`` with ``keep = token_mask.flatten(1) == select``;
        padding rows are exactly zero.
    """
    base = _validate(
        x, weight, bias, token_mask, select, patch_size, base_patch_size, band_dropout_rate, generator, max_len
    )
    keep = _band_keep(x, band_dropout_rate, generator)
    embedded = patch_embed(x, weight, bias, patch_size=patch_size, base_patch_size=base, keep=keep)
    flat = embedded.reshape(x.shape[0], -1, weight.shape[0])
    indices, seqlens, mask = _pack_layout(token_mask, select, max_len)
    return Packed(pack_rows(flat, indices, mask), indices, mask, seqlens)


def tokenize_windowed(
    x,
    weight,
    bias,
    token_mask,
    *,
    select,
    patch_size,
    base_patch_size=None,
    band_dropout_rate=0.0,
    generator=None,
    max_len=None,
) -> Packed:
    """Same arguments and result as :func:`tokenize`, without materialising the resized image.

    Only the selected tokens are computed. Token ``(i, j, t)`` of sample ``b`` gathers its
    input window ``x[b, i*p - m : i*p - m + w, j*p - m : j*p - m + w, t, :]`` (zero outside
    the image, ``w = p + 2m``, ``m = window_margin(p, P)``), applies the band mask and
    multiplies by ``folded_weight(weight, row_class_weights, col_class_weights, C)`` of
    its row and column window classes, plus the bias. Valid when H and W are multiples of
    ``patch_size``; otherwise (the squash case, where windows are not periodic) this falls
    back to :func:`tokenize`. Differentiable in x, weight and bias.

    Note: the folded weight is exactly zero at window taps the resize ignores, so the
    result equals :func:`tokenize` for finite inputs; a non-finite pixel next to a token
    can leak into it here (``0 * inf``) but not in the reference.
    """
    base = _validate(
        x, weight, bias, token_mask, select, patch_size, base_patch_size, band_dropout_rate, generator, max_len
    )
    p = patch_size
    if x.shape[1] % p or x.shape[2] % p:
        return tokenize(
            x,
            weight,
            bias,
            token_mask,
            select=select,
            patch_size=p,
            base_patch_size=base,
            band_dropout_rate=band_dropout_rate,
            generator=generator,
            max_len=max_len,
        )
    keep = _band_keep(x, band_dropout_rate, generator)
    x5 = x if x.dim() == 5 else x.unsqueeze(3)
    batch, height, width, time, channels = x5.shape
    rows_n, cols_n = height // p, width // p
    d = weight.shape[0]
    indices, seqlens, mask = _pack_layout(token_mask, select, max_len)

    # Selected tokens in packed order: (sample, packed row) -> token position -> (i, j, t).
    sample, slot = mask.nonzero(as_tuple=True)
    position = indices[sample, slot]
    t = position % time
    j = (position // time) % cols_n
    i = position // (time * cols_n)

    margin = window_margin(p, base)
    window = p + 2 * margin
    padded = F.pad(x5, (0, 0, 0, 0, margin, margin, margin, margin))  # zeros around H and W
    span = torch.arange(window, device=x.device)
    rows = i[:, None] * p + span[None, :]  # padded coordinates: start i*p - m + m
    cols = j[:, None] * p + span[None, :]
    windows = padded[sample[:, None, None], rows[:, :, None], cols[:, None, :], t[:, None, None]]  # [K, w, w, C]
    if keep is not None:
        windows = windows * keep[sample][:, None, None, :].to(windows.dtype)
    vectors = windows.reshape(windows.shape[0], window * window * channels)

    row_class, row_weights = window_classes(p, base, rows_n)
    col_class, col_weights = window_classes(p, base, cols_n)
    token_row_class = row_class.to(x.device)[i]
    token_col_class = col_class.to(x.device)[j]
    out = vectors.new_zeros(vectors.shape[0], d)
    for rc in range(row_weights.shape[0]):
        for cc in range(col_weights.shape[0]):
            members = ((token_row_class == rc) & (token_col_class == cc)).nonzero(as_tuple=True)[0]
            if members.numel() == 0:
                continue
            folded = folded_weight(weight, row_weights[rc], col_weights[cc], channels)
            out = out.index_put((members,), vectors[members] @ folded.t())
    if bias is not None:
        out = out + bias

    tokens = x.new_zeros(batch, mask.shape[1], d).index_put((sample, slot), out)
    return Packed(tokens, indices, mask, seqlens)
