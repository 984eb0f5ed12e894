"""Pure-PyTorch reference of the flexible linear patch embedding.

Input pixels are channel-last ``[B, H, W, T, C]``. For a requested patch size ``p`` and
the layer's base patch size ``P``:

* ``p == P``: cut ``P x P`` patches, flatten each in ``(p1 p2 c)`` order (row within the
  patch, column within the patch, band fastest) and apply ``weight [D, P*P*C]`` and bias.
* ``p != P``: first resize the image to ``(H // p * P, W // p * P)`` with antialiased
  bicubic interpolation (``F.interpolate(mode="bicubic", antialias=True,
  align_corners=False)``, Keys cubic a = -0.5, taps outside the image dropped and the
  remaining weights renormalised), then proceed as above. When H is not a multiple of p
  the whole image is squashed, not cropped.

An optional band mask ``keep [B, C]`` zeroes dropped bands before the embedding.
"""

import torch
import torch.nn.functional as F


def resize_channel_last(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Antialiased bicubic resize of ``x [B, H, W, T, C]`` to ``[B, height, width, T, C]``.

    PyTorch has no CPU kernel of this resize for bfloat16/float16: on CPU those are resized
    in float32 and rounded back (on CUDA they run natively, as in the reference).
    """
    b, h, w, t, c = x.shape
    planes = x.permute(0, 3, 4, 1, 2).reshape(b * t, c, h, w)
    upcast = x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16)
    if upcast:
        planes = planes.float()
    resized = F.interpolate(planes, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    if upcast:
        resized = resized.to(x.dtype)
    return resized.reshape(b, t, c, height, width).permute(0, 3, 4, 1, 2)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``x [B, H, W, T, C]`` -> ``[B, H/P, W/P, T, P*P*C]`` with features in (p1 p2 c) order."""
    b, h, w, t, c = x.shape
    tiles = x.reshape(b, h // patch, patch, w // patch, patch, t, c)
    return tiles.permute(0, 1, 3, 5, 2, 4, 6).reshape(b, h // patch, w // patch, t, patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, h, w, T, P*P*C]`` -> ``[B, h*P, w*P, T, C]``."""
    b, h, w, t, _ = patches.shape
    tiles = patches.reshape(b, h, w, t, patch, patch, channels)
    return tiles.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, h * patch, w * patch, t, channels)


def _band_mask(keep: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if keep is None else keep[:, None, None, None, :].to(dtype)


def patch_embed_forward(x, weight, bias, keep, patch: int) -> torch.Tensor:
    """Native-size embedding: ``x [B, H, W, T, C]`` (H, W multiples of P) -> ``[B, H/P, W/P, T, D]``."""
    if keep is not None:
        x = x * _band_mask(keep, x.dtype)
    return F.linear(patchify(x, patch), weight, bias)


def patch_embed_backward(grad_out, x, weight, keep, patch: int, need_x: bool, need_weight: bool, need_bias: bool):
    """Gradients of :func:`patch_embed_forward`; a gradient not asked for is an empty tensor.

    Shapes: grad_out [B, h, w, T, D] -> (grad_x [B, H, W, T, C], grad_weight [D, P*P*C], grad_bias [D]).
    """
    d = weight.shape[0]
    grad_rows = grad_out.reshape(-1, d)
    # Distinct empty tensors: outputs of a registered op may not alias each other.
    grad_x, grad_weight, grad_bias = x.new_empty(0), x.new_empty(0), x.new_empty(0)
    if need_weight:
        masked = x if keep is None else x * _band_mask(keep, x.dtype)
        grad_weight = grad_rows.t() @ patchify(masked, patch).reshape(grad_rows.shape[0], -1)
    if need_bias:
        grad_bias = grad_rows.sum(0)
    if need_x:
        grad_patches = (grad_rows @ weight).reshape(*grad_out.shape[:-1], weight.shape[1])
        grad_x = unpatchify(grad_patches, patch, x.shape[-1])
        if keep is not None:
            grad_x = grad_x * _band_mask(keep, x.dtype)
    return grad_x, grad_weight, grad_bias


def patch_embed(x, weight, bias=None, *, patch_size: int, base_patch_size: int | None = None, keep=None):
    """Reference flexible patch embedding (composition of resize + patchify + linear).

    Args:
        x: ``[B, H, W, C]`` or ``[B, H, W, T, C]``.
        weight: ``[D, P*P*C]``; ``P`` is ``base_patch_size`` or inferred from the weight.
        bias: ``[D]`` or None.
        patch_size: requested patch size p >= 1.
        base_patch_size: the layer's native patch size P.
        keep: optional bool band mask ``[B, C]``.

    Returns:
        ``[B, H//p, W//p, D]`` or ``[B, H//p, W//p, T, D]``.
    """
    has_time = x.dim() == 5
    x5 = x if has_time else x.unsqueeze(3)
    channels = x5.shape[-1]
    base = base_patch_size or int(round((weight.shape[1] // channels) ** 0.5))
    if keep is not None:
        x5 = x5 * _band_mask(keep, x5.dtype)
    if patch_size != base:
        h, w = x5.shape[1], x5.shape[2]
        x5 = resize_channel_last(x5, h // patch_size * base, w // patch_size * base)
    out = F.linear(patchify(x5, base), weight, bias)
    return out if has_time else out.squeeze(3)
