"""Data model: modality registry and the masked batch container."""

from .batch import MaskedBatch
from .modalities import BATCH_FIELD_ORDER, MISSING_VALUE, MODALITIES, ModalitySpec, get_modality

__all__ = ["BATCH_FIELD_ORDER", "MISSING_VALUE", "MODALITIES", "MaskedBatch", "ModalitySpec", "get_modality"]
