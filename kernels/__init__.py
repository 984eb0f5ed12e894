"""Triton kernels of mim-fast (installed as ``mim_fast.kernels``).

All launchers take tensors already on one device, call ``.contiguous()`` on their
inputs and do not validate them; see each function's docstring for what it expects.
On CPU tensors they only run under ``TRITON_INTERPRET=1``.
"""

from .band_dropout import band_dropout_apply, band_dropout_mask, philox_uniform
from .masked_gather import gather_indices, pack_rows, unpack_rows
from .patch_embed import patch_embed_backward, patch_embed_forward
from .tokenize import token_patches, token_patches_backward

__all__ = [
    "band_dropout_mask",
    "band_dropout_apply",
    "philox_uniform",
    "patch_embed_forward",
    "patch_embed_backward",
    "gather_indices",
    "pack_rows",
    "unpack_rows",
    "token_patches",
    "token_patches_backward",
]
