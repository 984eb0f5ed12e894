"""mim-fast: fused band dropout, flexible patch embedding and masked token gather for
LatentMIM pretraining on multi-spectral satellite imagery.

Quick tour::

    import mim_fast
    y, keep = mim_fast.band_dropout(x, rate=0.3)                 # x [B, H, W, T, C]
    tokens = mim_fast.patch_embed(y, w, b, patch_size=4, keep=keep)
    packed = mim_fast.masked_gather(tokens.flatten(1, -2), token_keep, max_len=L)
    mim_fast.backends.available()                                 # which backends run, and why not
"""

from ._extension import load_status as _load_extension

if _load_extension()[0]:  # registers the C++ ops before the Python op fragments are defined
    from .backends import cpp as _cpp  # noqa: F401  (fake kernels for the C++ ops)

from . import backends  # noqa: E402
from .backends import use_backend  # noqa: E402
from .mask_value import MaskValue  # noqa: E402
from .ops import (  # noqa: E402
    Packed,
    band_dropout,
    band_dropout_apply,
    band_dropout_mask,
    masked_gather,
    masked_scatter,
    patch_embed,
    tokenize,
)

__version__ = "0.1.0"

__all__ = [
    "MaskValue",
    "Packed",
    "backends",
    "band_dropout",
    "band_dropout_apply",
    "band_dropout_mask",
    "masked_gather",
    "masked_scatter",
    "patch_embed",
    "tokenize",
    "use_backend",
]
