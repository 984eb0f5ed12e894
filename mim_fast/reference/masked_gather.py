"""Pure-PyTorch reference of masked token gather (pack) and scatter (unpack).

Packing moves the kept tokens of each sample to the front, in their original order; the
removed tokens follow, also in order. ``indices [B, N]`` is that stable permutation (a
stable descending sort of the keep mask), ``seqlens [B]`` counts kept tokens and the
packed tokens ``[B, L, D]`` hold ``x[b, indices[b, l]]`` where ``mask[b, l]`` and exact
zeros elsewhere. Unpacking places packed row ``l`` back at ``indices[b, l]`` and leaves
every other position exactly zero.
"""

import torch


def gather_indices(keep: torch.Tensor):
    """``keep [B, N]`` bool -> (indices int64 [B, N], seqlens int64 [B])."""
    indices = torch.sort(keep.to(torch.uint8), dim=1, descending=True, stable=True).indices
    return indices, keep.sum(dim=1)


def pack_rows(x: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x [B, N, D]`` -> ``[B, L, D]`` with row l = ``x[b, indices[b, l]]`` where ``mask[b, l]``, else 0."""
    b, n, d = x.shape
    length = mask.shape[1]
    used = min(length, n)
    # Advanced indexing copies bits verbatim; torch.gather/scatter change bf16 NaN payloads.
    batch = torch.arange(b, device=x.device)[:, None]
    rows = x[batch, indices[:, :used]]
    rows = torch.where(mask[:, :used, None], rows, torch.zeros((), dtype=x.dtype, device=x.device))
    if length > used:
        rows = torch.cat([rows, x.new_zeros(b, length - used, d)], dim=1)
    return rows


def unpack_rows(tokens: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """``tokens [B, L, D]`` -> ``[B, N, D]``: row l goes to ``indices[b, l]`` where ``mask[b, l]``; zeros elsewhere."""
    b, length, d = tokens.shape
    used = min(length, num_tokens)
    src = torch.where(mask[:, :used, None], tokens[:, :used], torch.zeros((), dtype=tokens.dtype, device=tokens.device))
    out = tokens.new_zeros(b, num_tokens, d)
    out[torch.arange(b, device=tokens.device)[:, None], indices[:, :used]] = src
    return out


def remove_masked_tokens(x: torch.Tensor, keep: torch.Tensor):
    """The sort-based formulation used by the reference encoder (syncs on ``max(seqlens)``).

    Returns (tokens [B, L, D], indices [B, N], mask [B, L], seqlens [B]) with L = max(seqlens).
    """
    sorted_keep, indices = torch.sort(keep.to(torch.uint8), dim=1, descending=True, stable=True)
    sorted_keep = sorted_keep.bool()
    tokens = torch.gather(x, 1, indices[:, :, None].expand_as(x)) * sorted_keep[:, :, None]
    seqlens = sorted_keep.sum(dim=1)
    length = int(seqlens.max()) if seqlens.numel() else 0
    return tokens[:, :length], indices, sorted_keep[:, :length], seqlens


def add_removed_tokens(tokens: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`remove_masked_tokens` in the reference's boolean-indexing form."""
    b, length, d = tokens.shape
    n = indices.shape[1]
    full_mask = torch.cat([mask, mask.new_zeros(b, n - length)], dim=1)
    out = tokens.new_zeros(b, n, d)
    out[full_mask] = tokens[mask]
    return out.scatter(1, indices[:, :, None].expand(b, n, d), out)
