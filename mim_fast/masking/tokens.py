"""Token-grid helpers shared by the masking strategies.

Masks live at pixel level (``[B, H, W, T, n_sets]`` for spatial modalities, ``[B, T, n_sets]``
time-only, ``[B, n_sets]`` static) and are constant over each ``q x q`` pixel block of a token
(``q = patch_size * image_tile_size_factor``), except for pixel-exact MISSING values where a
strategy keeps them.
"""

import math

import torch

from ..data.modalities import MISSING_VALUE, get_modality
from ..mask_value import MaskValue


def block_size(modality: str, patch_size: int) -> int:
    return patch_size * get_modality(modality).image_tile_size_factor


def missing_pixels(data: torch.Tensor, band_sets: list[list[int]]) -> torch.Tensor:
    """``[..., n_sets]`` bool: a band set is missing where any of its channels equals MISSING_VALUE."""
    missing = data == MISSING_VALUE
    return torch.stack([missing[..., idx].any(-1) for idx in band_sets], dim=-1)


def to_tokens(mask: torch.Tensor, modality: str, patch_size: int) -> torch.Tensor:
    """Pixel-level mask -> token level (top-left pixel of every block); non-spatial unchanged."""
    if not get_modality(modality).is_spatial:
        return mask
    q = block_size(modality, patch_size)
    return mask[:, ::q, ::q]


def to_pixels(tokens: torch.Tensor, modality: str, patch_size: int) -> torch.Tensor:
    """Token-level mask -> pixel level (every pixel of a block takes the token's value)."""
    if not get_modality(modality).is_spatial:
        return tokens
    q = block_size(modality, patch_size)
    return tokens.repeat_interleave(q, dim=1).repeat_interleave(q, dim=2)


def role_counts(n: int, encode_ratio: float, decode_ratio: float) -> tuple[int, int, int]:
    """(encoder, decoder, target-only) counts of ``n`` tokens: ``int`` floors, the rest target-only."""
    n_enc, n_dec = int(n * encode_ratio), int(n * decode_ratio)
    return n_enc, n_dec, n - n_enc - n_dec


def shuffled_roles(rows: int, n: int, encode_ratio: float, decode_ratio: float, generator) -> torch.Tensor:
    """``[rows, n]`` int64: each row an independent random arrangement of the role template
    (``n_enc`` ONLINE_ENCODER, ``n_dec`` DECODER, the rest TARGET_ENCODER_ONLY)."""
    n_enc, n_dec, _ = role_counts(n, encode_ratio, decode_ratio)
    template = torch.full((n,), int(MaskValue.TARGET_ENCODER_ONLY), dtype=torch.int64)
    template[:n_enc] = int(MaskValue.ONLINE_ENCODER)
    template[n_enc : n_enc + n_dec] = int(MaskValue.DECODER)
    if n == 0:
        return template.expand(rows, 0).clone()
    order = torch.rand(rows, n, generator=generator).argsort(dim=1)
    return template[order]


def random_fill(tokens: torch.Tensor, encode_ratio: float, decode_ratio: float, generator) -> torch.Tensor:
    """Re-draw the roles of the present (non-MISSING) tokens of one sample's token mask.

    ``n`` present tokens get ``int(n * enc)`` encoder and ``int(n * dec)`` decoder roles, the
    rest target-only, at random; a single present token is always encoded (the reference's
    rule, whatever the ratios). MISSING tokens stay MISSING.
    """
    flat = tokens.reshape(-1).clone()
    present = (flat != MaskValue.MISSING).nonzero().squeeze(1)
    n = present.numel()
    if n == 1:
        flat[present] = int(MaskValue.ONLINE_ENCODER)
    elif n > 1:
        flat[present] = shuffled_roles(1, n, encode_ratio, decode_ratio, generator)[0]
    return flat.view_as(tokens)


def ceil_count(n: int, ratio: float) -> int:
    return math.ceil(n * ratio)
