"""Pure-PyTorch references: the semantics every backend is tested against.

The ``reference`` backend runs these functions directly, on any device.
"""

from .band_dropout import band_dropout_apply, band_dropout_mask
from .masked_gather import add_removed_tokens, gather_indices, pack_rows, remove_masked_tokens, unpack_rows
from .patch_embed import patch_embed, patch_embed_backward, patch_embed_forward, patchify, resize_channel_last, unpatchify
from .philox import philox_uniform

__all__ = [
    "add_removed_tokens",
    "band_dropout_apply",
    "band_dropout_mask",
    "gather_indices",
    "pack_rows",
    "patch_embed",
    "patch_embed_backward",
    "patch_embed_forward",
    "patchify",
    "philox_uniform",
    "remove_masked_tokens",
    "resize_channel_last",
    "unpack_rows",
    "unpatchify",
]
