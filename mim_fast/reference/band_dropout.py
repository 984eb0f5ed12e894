"""Pure-PyTorch reference of per-sample band dropout (the semantics every backend matches).

A band mask ``keep [B, C]`` is drawn once per (sample, band) and shared over every other
axis of the input. Each band is kept with probability ``1 - rate``; a sample that would
keep no band keeps exactly one, the band with the largest uniform draw. Given that every
draw fell below ``rate``, that argmax is uniform over the bands, so the forced band is a
uniform choice and each band is kept with probability ``(1 - r) + r**C / C``.
Dropped bands are multiplied by zero; kept bands are not rescaled.
"""

import torch

from .philox import philox_uniform


def band_dropout_mask(seed: torch.Tensor, rate: torch.Tensor, batch_size: int, num_bands: int) -> torch.Tensor:
    """Keep mask from a Philox seed.

    Args:
        seed: int64 tensor with one element (the Philox key).
        rate: floating tensor with one element; clamped to [0, 1].
        batch_size: B >= 0.
        num_bands: C >= 1.

    Returns:
        bool tensor [B, C] on ``seed.device``; uniform ``(b, c)`` uses counter ``b * C + c``.
    """
    device = seed.device
    offsets = torch.arange(batch_size * num_bands, device=device, dtype=torch.int64)
    uniform = philox_uniform(seed, offsets).reshape(batch_size, num_bands)
    threshold = rate.reshape(()).to(torch.float32).clamp(0.0, 1.0)
    keep = uniform >= threshold
    forced = torch.nn.functional.one_hot(uniform.argmax(dim=1), num_bands).bool()
    nothing_kept = ~keep.any(dim=1, keepdim=True)
    return keep | (forced & nothing_kept)


def band_dropout_apply(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``x [B, M, C] * keep [B, C]`` broadcast over M, as a real multiply (NaN * 0 stays NaN)."""
    return x * keep[:, None, :].to(x.dtype)
