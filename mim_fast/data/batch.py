"""A masked batch with the reference's field names and layouts.

Modules of this package read batches only through attributes (``.modalities``,
``.<modality>``, ``.<modality>_mask``, ``.timestamps``), so the reference's own
``MaskedOlmoEarthSample`` works everywhere a :class:`MaskedBatch` does.
"""

import torch

from .modalities import BATCH_FIELD_ORDER
from ..mask_value import MaskValue

_FIELDS = ("timestamps",) + tuple(f for m in BATCH_FIELD_ORDER for f in (m, f"{m}_mask"))


class MaskedBatch:
    """Data and pixel-level masks of a batch.

    Fields (all optional): ``timestamps [B, T, 3]`` (day, month 0..11, year) and, per
    modality, ``<modality>`` (``[B, H, W, T, C]`` space-time, ``[B, H, W, 1, C]``
    space-only, ``[B, T, C]`` time-only, ``[B, C]`` static) and ``<modality>_mask`` (same
    leading dims, last dim = number of band sets, integer :class:`mim_fast.MaskValue` codes).
    Absent fields read as None.
    """

    def __init__(self, **fields):
        unknown = sorted(set(fields) - set(_FIELDS))
        if unknown:
            raise ValueError(f"MaskedBatch: unknown fields {unknown}; known fields are {list(_FIELDS)}")
        self._fields = {k: v for k, v in fields.items() if v is not None}

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if name in _FIELDS:
            return self._fields.get(name)
        raise AttributeError(f"MaskedBatch has no field {name!r}")

    @property
    def modalities(self) -> list[str]:
        """Present modalities (no masks, no timestamps) in field order."""
        return [m for m in BATCH_FIELD_ORDER if m in self._fields]

    @property
    def batch_size(self) -> int:
        first = self._fields.get("timestamps")
        if first is None:
            first = next(iter(self._fields.values()))
        return first.shape[0]

    def as_dict(self) -> dict[str, torch.Tensor]:
        """Present fields by name, in field order."""
        return {k: self._fields[k] for k in _FIELDS if k in self._fields}

    def replace(self, **fields) -> "MaskedBatch":
        """A copy with some fields replaced (None removes one)."""
        return MaskedBatch(**{**self._fields, **fields})

    def unmask(self) -> "MaskedBatch":
        """Every mask code becomes ONLINE_ENCODER except MISSING (what a target encoder sees)."""
        missing = int(MaskValue.MISSING)
        return self.replace(
            **{k: v * (v == missing) for k, v in self._fields.items() if k.endswith("_mask")}
        )

    def pin_memory(self) -> "MaskedBatch":
        """A copy in pinned host memory (called by ``DataLoader(pin_memory=True)``)."""
        return MaskedBatch(**{k: v.pin_memory() for k, v in self._fields.items()})

    def to(self, device, non_blocking: bool = False) -> "MaskedBatch":
        """All fields moved to ``device``."""
        return MaskedBatch(**{k: v.to(device, non_blocking=non_blocking) for k, v in self._fields.items()})

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={list(v.shape)}" for k, v in self.as_dict().items())
        return f"MaskedBatch({parts})"
