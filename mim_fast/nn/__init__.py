"""Modules, drop-in for the reference's (same constructor arguments and state_dict keys)."""

from .attention import Attention, Block, DropPath, Mlp
from .encoder import Encoder, ProjectAndAggregate
from .encodings import CompositeEncodings, TokenLayout
from .latent_mim import FrozenTargetProjection, LatentMIM, ViewLoss
from .patch_embed import FlexiPatchEmbed, MultiModalPatchEmbeddings
from .predictor import Predictor
from .tokenization import TokenizationConfig, as_tokenization_config
from .tokens import TokensAndMasks

__all__ = [
    "Attention",
    "Block",
    "CompositeEncodings",
    "DropPath",
    "Encoder",
    "FlexiPatchEmbed",
    "FrozenTargetProjection",
    "LatentMIM",
    "Mlp",
    "MultiModalPatchEmbeddings",
    "Predictor",
    "ProjectAndAggregate",
    "TokenLayout",
    "TokenizationConfig",
    "TokensAndMasks",
    "ViewLoss",
    "as_tokenization_config",
]
