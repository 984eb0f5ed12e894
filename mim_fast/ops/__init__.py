"""Functional ops. Each is built from ``torch.library`` ops (namespace ``mim_fast``) with
fake and autograd registrations, so it works under ``torch.compile(fullgraph=True)``,
FSDP2 and ``torch.library.opcheck``; the backend is chosen per call (see ``mim_fast.backends``).
"""

from .band_dropout import band_dropout, band_dropout_apply, band_dropout_mask
from .masked_gather import Packed, masked_gather, masked_scatter
from .patch_embed import patch_embed
from .tokenize import TokenEntry, tokenize, tokenize_entries

__all__ = [
    "Packed",
    "band_dropout",
    "band_dropout_apply",
    "band_dropout_mask",
    "masked_gather",
    "masked_scatter",
    "patch_embed",
    "TokenEntry",
    "tokenize",
    "tokenize_entries",
]
