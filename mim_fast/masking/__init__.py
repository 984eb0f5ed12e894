"""Masking strategies built from the reference's config dicts.

``build({"type": "modality_cross_random", "encode_ratio": 0.5, ...}, tokenization=None)``
returns a strategy whose ``apply_mask(batch, patch_size, generator=None)`` gives a
:class:`mim_fast.data.MaskedBatch`. ``tokenization`` is ``{modality: [[band names], ...]}``
(or a tokenization config object); without it the default band sets are used.
"""

from .strategies import (
    MaskingStrategy,
    ModalityCrossRandomMasking,
    RandomMasking,
    RandomTimeWithDecodeMasking,
    RandomWithDecodeMasking,
)

STRATEGIES = {
    "random": RandomMasking,
    "modality_cross_random": ModalityCrossRandomMasking,
    "random_with_decode": RandomWithDecodeMasking,
    "random_time_with_decode": RandomTimeWithDecodeMasking,
}


def build(strategy_config: dict, tokenization=None) -> MaskingStrategy:
    """A masking strategy from ``{"type": name, **kwargs}`` (the reference's keys)."""
    if not isinstance(strategy_config, dict) or "type" not in strategy_config:
        raise ValueError(f"strategy_config: expected a dict with a 'type' key, got {strategy_config!r}")
    kind = strategy_config["type"]
    if kind not in STRATEGIES:
        raise ValueError(f"strategy_config: unknown masking type {kind!r}; known: {', '.join(STRATEGIES)}")
    kwargs = {k: v for k, v in strategy_config.items() if k != "type"}
    try:
        return STRATEGIES[kind](tokenization=tokenization, **kwargs)
    except TypeError as err:
        raise ValueError(f"strategy_config: bad arguments for {kind!r}: {err}") from None


__all__ = [
    "MaskingStrategy",
    "ModalityCrossRandomMasking",
    "RandomMasking",
    "RandomTimeWithDecodeMasking",
    "RandomWithDecodeMasking",
    "STRATEGIES",
    "build",
]
