"""Losses built from the reference's config dicts: ``build({"type": ..., **kwargs})``."""

from .infonce import InfoNCE
from .patch_discrimination import ModalityPatchDiscrimination

_BUILDERS = {
    "modality_patch_discrimination_masked_negatives": lambda **kw: ModalityPatchDiscrimination(masked_negatives=True, **kw),
    "modality_patch_discrimination_masked_negatives_vec": lambda **kw: ModalityPatchDiscrimination(masked_negatives=True, **kw),
    "modality_patch_discrimination_vec": lambda **kw: ModalityPatchDiscrimination(masked_negatives=False, **kw),
    "modality_patch_discrimination": lambda **kw: ModalityPatchDiscrimination(masked_negatives=False, **kw),
    "InfoNCE": InfoNCE,
}


def build(config: dict):
    """A loss from a config dict ``{"type": name, **kwargs}`` (the reference's keys).

    Types: ``modality_patch_discrimination_masked_negatives`` (and ``..._vec``),
    ``modality_patch_discrimination_vec`` (and the loop name ``modality_patch_discrimination``),
    ``InfoNCE``.
    """
    if not isinstance(config, dict) or "type" not in config:
        raise ValueError(f"config: expected a dict with a 'type' key, got {config!r}")
    kwargs = {k: v for k, v in config.items() if k != "type"}
    kind = config["type"]
    if kind not in _BUILDERS:
        raise ValueError(f"config: unknown loss type {kind!r}; known: {', '.join(_BUILDERS)}")
    try:
        return _BUILDERS[kind](**kwargs)
    except TypeError as err:
        raise ValueError(f"config: bad arguments for loss {kind!r}: {err}") from None


__all__ = ["InfoNCE", "ModalityPatchDiscrimination", "build"]
