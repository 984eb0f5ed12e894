"""Flexible linear patch embedding: registered ops, autograd and the functional API.

The registered op embeds at the layer's native patch size P (``H`` and ``W`` multiples of
P). For another requested patch size the result equals resizing the image as the
reference does (antialiased bicubic to ``(H // p * P, W // p * P)``) and embedding that,
but the functional computes every token's resized patch from its own input window with
the fused tokenizer's kernels (``mim_fast.ops.tokenize``): the resized image is never
built. Only when H or W is not a multiple of p (the image is then squashed, token windows
are not periodic) is the image resized first.
"""

import torch

from .. import backends
from ..reference.patch_embed import resize_channel_last
from . import _checks


@torch.library.custom_op("mim_fast::patch_embed", mutates_args=())
def _patch_embed_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, keep: torch.Tensor | None, patch_size: int
) -> torch.Tensor:
    return backends.select(x.device).patch_embed_forward(x, weight, bias, keep, patch_size)


@_patch_embed_op.register_fake
def _(x, weight, bias, keep, patch_size):
    b, h, w, t, _ = x.shape
    return x.new_empty((b, h // patch_size, w // patch_size, t, weight.shape[0]))


@torch.library.custom_op("mim_fast::patch_embed_backward", mutates_args=())
def _patch_embed_backward_op(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    keep: torch.Tensor | None,
    patch_size: int,
    need_x: bool,
    need_weight: bool,
    need_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return backends.select(x.device).patch_embed_backward(
        grad_out, x, weight, keep, patch_size, need_x, need_weight, need_bias
    )


@_patch_embed_backward_op.register_fake
def _(grad_out, x, weight, keep, patch_size, need_x, need_weight, need_bias):
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format) if need_x else x.new_empty(0),
        torch.empty_like(weight, memory_format=torch.contiguous_format) if need_weight else x.new_empty(0),
        x.new_empty(weight.shape[0]) if need_bias else x.new_empty(0),
    )


def _setup_context(ctx, inputs, output):
    x, weight, bias, keep, patch_size = inputs
    ctx.save_for_backward(x, weight, keep)
    ctx.patch_size = patch_size
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out):
    x, weight, keep = ctx.saved_tensors
    need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
    grad_x, grad_weight, grad_bias = _patch_embed_backward_op(
        grad_out, x, weight, keep, ctx.patch_size, need_x, need_weight, need_bias and ctx.has_bias
    )
    return (
        grad_x if need_x else None,
        grad_weight if need_weight else None,
        grad_bias if need_bias and ctx.has_bias else None,
        None,
        None,
    )


_patch_embed_op.register_autograd(_backward, setup_context=_setup_context)


def infer_base_patch_size(weight: torch.Tensor, num_bands: int) -> int:
    """P such that ``weight.shape[1] == P * P * num_bands`` (ValueError if none exists)."""
    features = weight.shape[1]
    base = int(round((features / max(num_bands, 1)) ** 0.5))
    if base < 1 or base * base * num_bands != features:
        raise ValueError(
            f"weight: expected shape [D, P*P*C] with C = {num_bands} bands of x, got {list(weight.shape)} "
            f"({features} features is not P*P*{num_bands} for any integer P)"
        )
    return base


def _validate(x, weight, bias, keep, patch_size, base_patch_size) -> int:
    _checks.floating("x", x)
    _checks.ndim("x", x, (4, 5), "[B, H, W, C] or [B, H, W, T, C] (channel-last)")
    _checks.floating("weight", weight)
    _checks.ndim("weight", weight, (2,), "[D, P*P*C]")
    _checks.integer("patch_size", patch_size, minimum=1)
    channels = x.shape[-1]
    if base_patch_size is None:
        base = infer_base_patch_size(weight, channels)
    else:
        base = _checks.integer("base_patch_size", base_patch_size, minimum=1)
        _checks.shape("weight", weight, (weight.shape[0], base * base * channels), "D, base_patch_size**2 * bands of x")
    if bias is not None:
        _checks.floating("bias", bias)
        _checks.shape("bias", bias, (weight.shape[0],), "D = weight.shape[0]")
    if keep is not None:
        _checks.boolean("keep", keep)
        _checks.shape("keep", keep, (x.shape[0], channels), "batch size, bands of x")
    _checks.same_device(x=x, weight=weight, bias=bias, keep=keep)
    _checks.same_dtype(x=x, weight=weight, bias=bias)
    height, width = x.shape[1], x.shape[2]
    if patch_size == base:
        if height % base or width % base:
            raise ValueError(
                f"x: height and width must be multiples of patch_size {base} when no resize happens, "
                f"got {height} x {width}"
            )
    elif height < patch_size or width < patch_size:
        raise ValueError(f"x: image {height} x {width} is smaller than patch_size {patch_size}")
    return base


def patch_embed(x, weight, bias=None, *, patch_size: int, base_patch_size: int | None = None, keep=None):
    """Embed non-overlapping patches with a linear layer, at any patch size.

    Args:
        x: channel-last pixels ``[B, H, W, C]`` or ``[B, H, W, T, C]``.
        weight: ``[D, P*P*C]``, features in ``(p1 p2 c)`` order (the reference's linear layout).
        bias: ``[D]`` or None.
        patch_size: requested patch size p >= 1. If ``p != P`` the image is resized with
            antialiased bicubic interpolation to ``(H // p * P, W // p * P)`` first.
        base_patch_size: the layer's native patch size P (inferred from ``weight`` if None).
        keep: optional bool band mask ``[B, C]`` (dropped bands contribute zero).

    Returns:
        ``[B, H // p, W // p, D]`` or ``[B, H // p, W // p, T, D]``; differentiable in x,
        weight and bias.
    """
    base = _validate(x, weight, bias, keep, patch_size, base_patch_size)
    has_time = x.dim() == 5
    x5 = x if has_time else x.unsqueeze(3)
    if patch_size != base:
        if x5.shape[1] % patch_size or x5.shape[2] % patch_size or torch.compiler.is_compiling():
            # Squash case (token windows are not periodic), or tracing (the window-class tables
            # are built on the host): resize the image first.
            x5 = resize_channel_last(x5, x5.shape[1] // patch_size * base, x5.shape[2] // patch_size * base)
        else:
            out = _embed_every_token(x5, weight, bias, keep, patch_size, base)
            return out if has_time else out.squeeze(3)
    out = _patch_embed_op(x5, weight, bias, keep, base)
    return out if has_time else out.squeeze(3)


def _embed_every_token(x5, weight, bias, keep, patch_size, base):
    """``[B, H//p, W//p, T, D]`` via the fused tokenizer with every token selected: each
    token's resized patch is built from its input window, the resized image never exists."""
    from .tokenize import TokenEntry, tokenize_entries

    batch, height, width, time, _ = x5.shape
    grid = (height // patch_size, width // patch_size, time)
    codes = torch.zeros((batch, grid[0] * grid[1] * time), dtype=torch.int64, device=x5.device)
    entry = TokenEntry(x5, weight, bias, keep, patch_size, base)
    packed = tokenize_entries([entry], codes, 0, max_len=codes.shape[1])
    return packed.tokens.reshape(batch, *grid, weight.shape[0])
