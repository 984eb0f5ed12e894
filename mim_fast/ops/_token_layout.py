"""Where every selected token goes: packed layout and per-entry work lists.

All of it is integer tensor arithmetic on the tokens' device. The only host read is the
packed length ``L = max(seqlens)`` when the caller does not give ``max_len``; with
``max_len`` nothing here synchronises (on CPU, where a sync is free, work lists are
trimmed to the selected tokens instead of being padded to a fixed size).
:func:`cpp_work_lists` is the CPU extension's one-call equivalent of :func:`packed_layout`
plus every entry's :func:`work_rows`.
"""

import functools

import torch

from ..reference.resize import window_tables
from .masked_gather import _gather_indices_op


def packed_layout(chosen: torch.Tensor, max_len: int | None):
    """Packing of the selected positions of ``chosen [B, N]`` (bool).

    Returns:
        ``(indices [B, N], seqlens [B], mask [B, L], row_of [B, N])``: the
        :func:`mim_fast.masked_gather` layout plus ``row_of``, the row of each selected
        position in the flattened ``[B * L, D]`` token buffer (-1 where not selected).
    """
    indices, seqlens = _gather_indices_op(chosen, -1 if max_len is None else max_len)
    if max_len is None:
        max_len = int(seqlens.max()) if seqlens.numel() else 0
    mask = torch.arange(max_len, device=chosen.device)[None, :] < seqlens[:, None]
    rank = chosen.to(torch.int64).cumsum(1) - 1
    base = torch.arange(chosen.shape[0], device=chosen.device)[:, None] * max_len
    row_of = torch.where(chosen, base + rank, torch.full_like(rank, -1))
    return indices, seqlens, mask, row_of


@functools.lru_cache(maxsize=512)
def device_tables(patch: int, base: int, num_rows: int, num_cols: int, device: torch.device, dtype: torch.dtype):
    """:func:`mim_fast.reference.resize.window_tables` on ``device`` (tables in ``dtype``), cached."""
    row_class, col_class, tables = window_tables(patch, base, num_rows, num_cols)
    return row_class.to(device), col_class.to(device), tables.to(device=device, dtype=dtype)


def work_rows(
    chosen: torch.Tensor,
    row_of: torch.Tensor,
    offset: int,
    stride: int,
    grid: tuple[int, int, int],
    row_class: torch.Tensor,
    col_class: torch.Tensor,
    max_len: int,
    fixed_size: bool,
) -> torch.Tensor:
    """Work list ``[R, 7]`` (sample, i, j, t, slot, row class, col class) of one entry.

    Args:
        chosen: ``[B, h * w * T]`` bool, the entry's selected tokens (flattened ``(i, j, t)``).
        row_of: ``[B, N]`` rows of the packed buffer (:func:`packed_layout`).
        offset, stride: token ``n`` of the entry is global position ``offset + n * stride``.
        grid: ``(h, w, T)`` token grid of the entry.
        row_class, col_class: window class of every token row / column.
        max_len: packed length L.
        fixed_size: build ``B * min(N_e, L)`` rows, selected tokens first per sample and
            padding rows (slot -1) after, without reading anything on the host; otherwise
            exactly the selected tokens, grouped by sample.
    """
    batch, n_tokens = chosen.shape
    device = chosen.device
    if fixed_size:
        order, _ = _gather_indices_op(chosen, -1)
        position = order[:, : min(n_tokens, max_len)]
        sample = torch.arange(batch, device=device)[:, None].expand_as(position).reshape(-1)
        position = position.reshape(-1)
    else:
        sample, position = chosen.nonzero(as_tuple=True)
    slot = row_of[sample, offset + position * stride]  # -1 for tokens that were not selected
    _, width, time = grid
    t = position % time
    j = (position // time) % width
    i = position // (time * width)
    return torch.stack((sample, i, j, t, slot, row_class[i], col_class[j]), dim=1)


def cpp_work_lists(chosen: torch.Tensor, max_len: int | None, offsets, strides, grids, row_classes, col_classes, plans):
    """:func:`packed_layout` and every entry's :func:`work_rows` in one call of the CPU extension.

    Args:
        chosen: ``[B, N]`` bool selection over the global sequence (CPU).
        max_len: packed length (None: the longest sample).
        offsets, strides: per entry, token ``n`` is global position ``offset + n * stride``.
        grids: per entry the token grid ``(h, w, T)``.
        row_classes, col_classes: per entry the window class of every token row / column.
        plans: per entry the interior split to make (an object with ``row_class``,
            ``col_class`` and ``min_rows``) or None.

    Returns:
        ``(indices [B, N], seqlens [B], mask [B, L], lists)`` with ``lists[e] = (work,
        interior work or None)``: the exact work rows of entry ``e``, with the interior rows
        moved to the second list (classes zeroed) when the plan's threshold is passed.
    """
    split = []
    for plan in plans:
        split += [-1, -1, 0] if plan is None else [plan.row_class, plan.col_class, plan.min_rows]
    indices, seqlens, mask, works = torch.ops.mim_fast.cpu_token_layout(
        chosen, -1 if max_len is None else max_len, list(offsets), list(strides),
        [size for grid in grids for size in grid], list(row_classes), list(col_classes), split,
    )  # fmt: skip
    lists = [(works[2 * e], works[2 * e + 1] if works[2 * e + 1].shape[0] else None) for e in range(len(plans))]
    return indices, seqlens, mask, lists
