"""Per-sample band dropout: registered ops, autograd and the functional API.

Randomness is counter-based: one 64-bit Philox key is drawn from the torch generator per
call (so ``torch.manual_seed`` reproduces masks), and uniform ``(b, c)`` uses counter
``b * C + c``. Every backend implements the same Philox, so one seed gives one mask on
every backend. Nothing here reads a device value on the host: no sync.
"""

import torch

from .. import backends
from . import _checks

_SEED_HIGH = 2**62


@torch.library.custom_op("mim_fast::band_dropout_mask", mutates_args=())
def _band_dropout_mask_op(seed: torch.Tensor, rate: torch.Tensor, batch_size: int, num_bands: int) -> torch.Tensor:
    return backends.select(seed.device).band_dropout_mask(seed, rate, batch_size, num_bands)


@_band_dropout_mask_op.register_fake
def _(seed, rate, batch_size, num_bands):
    return seed.new_empty((batch_size, num_bands), dtype=torch.bool)


@torch.library.custom_op("mim_fast::band_dropout_apply", mutates_args=())
def _band_dropout_apply_op(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return backends.select(x.device).band_dropout_apply(x, keep)


@_band_dropout_apply_op.register_fake
def _(x, keep):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _apply_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _apply_backward(ctx, grad):
    (keep,) = ctx.saved_tensors
    return _band_dropout_apply_op(grad, keep), None


_band_dropout_apply_op.register_autograd(_apply_backward, setup_context=_apply_setup_context)


def draw_seed(generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """One Philox key (int64 tensor [1] on ``device``) drawn from ``generator`` or the default one."""
    source = generator.device if generator is not None else device
    seed = torch.randint(0, _SEED_HIGH, (1,), generator=generator, device=source, dtype=torch.int64)
    return seed.to(device, non_blocking=True)


def _rate_tensor(rate, device: torch.device) -> torch.Tensor:
    if isinstance(rate, torch.Tensor):
        _checks.floating("rate", rate)
        if rate.numel() != 1:
            raise ValueError(f"rate: expected a single value, got a tensor of shape {list(rate.shape)}")
        # A tensor rate is not range-checked on the host (that would sync); kernels clamp it to [0, 1].
        return rate.reshape(()).to(device=device, dtype=torch.float32)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(f"rate: expected a float in [0, 1] or a one-element tensor, got {type(rate).__name__}")
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"rate: must be in [0, 1], got {rate}")
    return torch.full((), float(rate), dtype=torch.float32, device=device)


def band_dropout_mask(batch_size: int, num_bands: int, rate, *, generator=None, device=None) -> torch.Tensor:
    """Draw a per-sample band keep mask.

    Args:
        batch_size: B >= 0.
        num_bands: C >= 1.
        rate: drop probability in [0, 1] (float, or a one-element float tensor, e.g. a rate
            drawn on the GPU; a tensor rate is clamped to [0, 1] instead of checked).
        generator: torch generator the Philox key is drawn from (default generator if None).
        device: device of the mask (default: the generator's device, else CPU).

    Returns:
        ``keep``: bool tensor ``[B, C]``. ``keep[b, c]`` is True with probability ``1 - rate``,
        independently per (sample, band); a sample that would keep no band keeps exactly one,
        chosen uniformly. ``C == 1`` or ``rate == 0`` keeps everything.
    """
    _checks.integer("batch_size", batch_size, minimum=0)
    _checks.integer("num_bands", num_bands, minimum=1)
    if isinstance(batch_size, int) and batch_size * num_bands >= 2**31:
        raise ValueError(f"batch_size: batch_size * num_bands must be < 2**31, got {batch_size} * {num_bands}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    rate_t = _rate_tensor(rate, device)
    seed = draw_seed(generator, device)
    return _band_dropout_mask_op(seed, rate_t, batch_size, num_bands)


def band_dropout_apply(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Multiply each band of each sample by its keep flag (no rescaling).

    Args:
        x: channel-last float tensor ``[B, ..., C]``.
        keep: bool ``[B, C]``.

    Returns:
        ``y = x * keep`` broadcast over every middle axis, same shape as ``x``; differentiable in x.
    """
    _checks.floating("x", x)
    _checks.ndim("x", x, tuple(range(2, 9)), "a channel-last tensor [B, ..., C]")
    _checks.boolean("keep", keep)
    _checks.shape("keep", keep, (x.shape[0], x.shape[-1]), "batch size, bands of x")
    _checks.same_device(x=x, keep=keep)
    batch, bands = x.shape[0], x.shape[-1]
    middle = 1
    for size in x.shape[1:-1]:
        middle *= size
    y = _band_dropout_apply_op(x.reshape(batch, middle, bands), keep)
    return y.reshape(x.shape)


def band_dropout(x: torch.Tensor, rate, *, generator=None):
    """Per-sample band dropout of a channel-last batch.

    Args:
        x: float tensor ``[B, ..., C]`` (e.g. ``[B, H, W, T, C]``).
        rate: drop probability in [0, 1] (float or one-element tensor).
        generator: optional torch generator for the Philox key.

    Returns:
        ``(y, keep)``: ``y`` has the shape of ``x`` with dropped bands exactly zero (kept bands
        unscaled); ``keep`` is the bool mask ``[B, C]`` (see :func:`band_dropout_mask`).
    """
    _checks.floating("x", x)
    _checks.ndim("x", x, tuple(range(2, 9)), "a channel-last tensor [B, ..., C]")
    keep = band_dropout_mask(x.shape[0], x.shape[-1], rate, generator=generator, device=x.device)
    return band_dropout_apply(x, keep), keep
