"""Ragged token batches: the real rows of a packed ``[B, L, D]`` batch as one flat ``[T, D]``.

Packed batches keep each sample's real tokens first (``mask [B, L]`` is a prefix per
row). Transformer blocks spend most of their time in per-token linears, which on the
padded layout also run on the padding rows (a quarter of the rows at some of the study's
shapes). On CPU, where reading the lengths costs nothing, the encoder and decoder run
their blocks on the flat real rows instead; attention then works on groups of samples of
equal lengths, each attending over exactly its real keys with no mask.

Accelerators keep the padded layout (static shapes, no host synchronisation).
"""

from collections import defaultdict
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionGroup:
    """Samples with ``queries`` query rows and ``keys`` key rows; their rows are the
    slices ``[q_start, q_start + count * queries)`` / ``[k_start, k_start + count * keys)`` of
    the group-ordered query / key rows."""

    count: int
    queries: int
    keys: int
    q_start: int
    k_start: int


@dataclass(frozen=True)
class GroupedRows:
    """How to reorder flat query / key rows so that equal-length samples are adjacent.

    ``q_order`` / ``k_order`` (None when already in order) give the flat rows in group
    order; ``q_restore`` maps back (None when already in order).
    """

    groups: tuple[AttentionGroup, ...]
    q_order: torch.Tensor | None
    k_order: torch.Tensor | None
    q_restore: torch.Tensor | None


class Ragged:
    """The real rows of a batch whose ``mask [B, L]`` is True on a prefix of each row.

    Attributes:
        lengths: real rows per sample (host list).
        positions: ``[T]`` flat positions ``b * L + l`` of the real rows, sample-major.
        sample: ``[T]`` the sample of each real row.
    """

    def __init__(self, mask: torch.Tensor, lengths: list[int]):
        self.shape = tuple(mask.shape)
        self.lengths = lengths
        self.positions = mask.flatten().nonzero().squeeze(1)
        counts = torch.tensor(lengths, dtype=torch.long, device=mask.device)
        self.sample = torch.repeat_interleave(torch.arange(len(lengths), device=mask.device), counts)
        self.offsets = [0]
        for n in lengths:
            self.offsets.append(self.offsets[-1] + n)
        self._self_grouped: GroupedRows | None = None  # self-attention (kept apart: no reference cycle)
        self._grouped: dict[int, tuple["Ragged", GroupedRows]] = {}

    @staticmethod
    def of(mask: torch.Tensor) -> "Ragged | None":
        """A Ragged view of ``mask`` when the flat path applies (CPU, not tracing, real rows
        a prefix of each sample), else None."""
        if mask.device.type != "cpu" or torch.compiler.is_compiling() or mask.dim() != 2:
            return None
        lengths = mask.sum(1)
        if not torch.equal(mask, torch.arange(mask.shape[1]) < lengths[:, None]):
            return None
        return Ragged(mask, lengths.tolist())

    @property
    def batch_size(self) -> int:
        return self.shape[0]

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, ...]`` -> its real rows ``[T, ...]``."""
        return x.reshape(-1, *x.shape[2:]).index_select(0, self.positions)

    def unpack(self, flat: torch.Tensor) -> torch.Tensor:
        """``[T, ...]`` -> ``[B, L, ...]`` with exactly-zero padding rows."""
        b, n = self.shape
        out = flat.new_zeros((b * n, *flat.shape[1:]))
        return out.index_copy(0, self.positions, flat).view(b, n, *flat.shape[1:])

    def grouped_with(self, keys: "Ragged") -> GroupedRows:
        """Samples grouped by (query length, key length), this Ragged holding the queries."""
        if keys is self and self._self_grouped is not None:
            return self._self_grouped
        cached = self._grouped.get(id(keys))
        if cached is not None and cached[0] is keys:
            return cached[1]
        by_shape = defaultdict(list)
        for b, (nq, nk) in enumerate(zip(self.lengths, keys.lengths)):
            if nq:
                by_shape[(nq, nk)].append(b)
        groups, q_rows, k_rows, q_start, k_start = [], [], [], 0, 0
        for (nq, nk), samples in sorted(by_shape.items()):
            groups.append(AttentionGroup(len(samples), nq, nk, q_start, k_start))
            q_start += len(samples) * nq
            k_start += len(samples) * nk
            q_rows += [torch.arange(self.offsets[b], self.offsets[b] + nq) for b in samples]
            k_rows += [torch.arange(keys.offsets[b], keys.offsets[b] + nk) for b in samples]
        empty = torch.zeros(0, dtype=torch.long)
        q_order = torch.cat(q_rows) if q_rows else empty
        k_order = torch.cat(k_rows) if k_rows else empty
        q_identity = torch.equal(q_order, torch.arange(self.offsets[-1]))
        k_identity = torch.equal(k_order, torch.arange(keys.offsets[-1]))
        restore = None
        if not q_identity:
            restore = torch.empty_like(q_order)
            restore[q_order] = torch.arange(q_order.numel())
        grouped = GroupedRows(tuple(groups), None if q_identity else q_order, None if k_identity else k_order, restore)
        if keys is self:
            self._self_grouped = grouped
        else:
            self._grouped[id(keys)] = (keys, grouped)
        return grouped
