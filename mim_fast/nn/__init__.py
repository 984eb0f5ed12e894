"""Modules, drop-in for the reference's (same constructor arguments and state_dict keys)."""

from .patch_embed import FlexiPatchEmbed, MultiModalPatchEmbeddings
from .tokenization import TokenizationConfig, as_tokenization_config

__all__ = ["FlexiPatchEmbed", "MultiModalPatchEmbeddings", "TokenizationConfig", "as_tokenization_config"]
