"""Masked token gather (pack) and scatter (unpack): registered ops, autograd, functional API.

Packing keeps each sample's selected tokens, in order, at the front of a ``[B, L, D]``
buffer; padding rows are exactly zero. The backward of pack is unpack with the same
indices and vice versa: indices are unique, so both are plain stores (deterministic,
no atomics).
"""

from typing import NamedTuple

import torch

from .. import backends
from . import _checks


class Packed(NamedTuple):
    """Packed tokens of a batch.

    tokens:  ``[B, L, D]`` selected tokens first, in original order; padding rows exactly 0.
    indices: ``[B, N]`` int64 stable permutation (selected positions, then the others).
    mask:    ``[B, L]`` bool, True on real (non-padding) rows.
    seqlens: ``[B]`` int64 number of selected tokens per sample.
    """

    tokens: torch.Tensor
    indices: torch.Tensor
    mask: torch.Tensor
    seqlens: torch.Tensor


@torch.library.custom_op("mim_fast::gather_indices", mutates_args=())
def _gather_indices_op(keep: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    indices, seqlens = backends.select(keep.device).gather_indices(keep)
    if max_len >= 0 and keep.device.type == "cpu" and seqlens.numel() and int(seqlens.max()) > max_len:
        # Only checked where it is free: on an accelerator this would be a host sync.
        raise ValueError(f"max_len: {max_len} is smaller than the largest number of kept tokens {int(seqlens.max())}")
    return indices, seqlens


@_gather_indices_op.register_fake
def _(keep, max_len):
    return keep.new_empty(keep.shape, dtype=torch.int64), keep.new_empty(keep.shape[:1], dtype=torch.int64)


@torch.library.custom_op("mim_fast::pack_rows", mutates_args=())
def _pack_rows_op(x: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return backends.select(x.device).pack_rows(x, indices, mask)


@_pack_rows_op.register_fake
def _(x, indices, mask):
    return x.new_empty((x.shape[0], mask.shape[1], x.shape[2]))


@torch.library.custom_op("mim_fast::unpack_rows", mutates_args=())
def _unpack_rows_op(tokens: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor, num_tokens: int) -> torch.Tensor:
    name = backends.select_name(tokens.device)
    if name != "cpp" and tokens.device.type == "cpu" and indices.numel():
        # The C++ kernel checks this itself; elsewhere on CPU it is free to check here.
        if bool(((indices < 0) | (indices >= num_tokens)).any()):
            raise ValueError(f"indices: values must be in [0, {num_tokens}), got min {int(indices.min())}, max {int(indices.max())}")
    return backends.module(name).unpack_rows(tokens, indices, mask, num_tokens)


@_unpack_rows_op.register_fake
def _(tokens, indices, mask, num_tokens):
    return tokens.new_empty((tokens.shape[0], num_tokens, tokens.shape[2]))


def _pack_setup_context(ctx, inputs, output):
    x, indices, mask = inputs
    ctx.save_for_backward(indices, mask)
    ctx.num_tokens = x.shape[1]


def _pack_backward(ctx, grad):
    indices, mask = ctx.saved_tensors
    return _unpack_rows_op(grad, indices, mask, ctx.num_tokens), None, None


def _unpack_setup_context(ctx, inputs, output):
    _, indices, mask, _ = inputs
    ctx.save_for_backward(indices, mask)


def _unpack_backward(ctx, grad):
    indices, mask = ctx.saved_tensors
    return _pack_rows_op(grad, indices, mask), None, None, None


_pack_rows_op.register_autograd(_pack_backward, setup_context=_pack_setup_context)
_unpack_rows_op.register_autograd(_unpack_backward, setup_context=_unpack_setup_context)


def masked_gather(x: torch.Tensor, keep: torch.Tensor, *, max_len: int | None = None) -> Packed:
    """Pack the kept tokens of each sample to the front (the reference ``remove_masked_tokens``).

    Args:
        x: ``[B, N, D]`` float tokens.
        keep: ``[B, N]`` bool, True for tokens to keep.
        max_len: static packed length L. If given, no host synchronisation happens and the
            caller guarantees every sample keeps at most ``max_len`` tokens (checked on CPU
            only). If None, ``L = max(seqlens)``, which reads a device value on the host.

    Returns:
        :class:`Packed` ``(tokens [B, L, D], indices [B, N], mask [B, L], seqlens [B])``.
    """
    _checks.floating("x", x)
    _checks.ndim("x", x, (3,), "tokens [B, N, D]")
    _checks.boolean("keep", keep)
    _checks.shape("keep", keep, tuple(x.shape[:2]), "B, N of x")
    _checks.same_device(x=x, keep=keep)
    if max_len is not None:
        _checks.integer("max_len", max_len, minimum=0)
    indices, seqlens = _gather_indices_op(keep, -1 if max_len is None else max_len)
    if max_len is None:
        max_len = int(seqlens.max()) if seqlens.numel() else 0
    mask = torch.arange(max_len, device=x.device)[None, :] < seqlens[:, None]
    return Packed(_pack_rows_op(x, indices, mask), indices, mask, seqlens)


def masked_scatter(tokens: torch.Tensor, indices: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Put packed tokens back in place (the reference ``add_removed_tokens``).

    Args:
        tokens: ``[B, L, D]`` packed tokens.
        indices: ``[B, N]`` int64 permutation from :func:`masked_gather` (values in [0, N)).
        mask: ``[B, L]`` bool, True on rows to place.

    Returns:
        ``[B, N, D]``: row ``l`` of sample ``b`` at position ``indices[b, l]`` where
        ``mask[b, l]``; every other position exactly zero. Differentiable in ``tokens``.
    """
    _checks.floating("tokens", tokens)
    _checks.ndim("tokens", tokens, (3,), "packed tokens [B, L, D]")
    _checks.int64("indices", indices)
    _checks.ndim("indices", indices, (2,), "[B, N]")
    _checks.boolean("mask", mask)
    _checks.shape("mask", mask, tuple(tokens.shape[:2]), "B, L of tokens")
    if indices.shape[0] != tokens.shape[0]:
        raise ValueError(f"indices: expected batch size {tokens.shape[0]} (like tokens), got {indices.shape[0]}")
    _checks.same_device(tokens=tokens, indices=indices, mask=mask)
    return _unpack_rows_op(tokens, indices, mask, indices.shape[1])
