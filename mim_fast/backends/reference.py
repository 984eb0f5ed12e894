"""The kernel interface implemented in pure PyTorch (any device).

Every backend module exposes these functions with identical semantics; the registered
ops in ``mim_fast.ops`` validate inputs and then call the selected backend:

    band_dropout_mask(seed [1] int64, rate [] float, batch_size, num_bands) -> keep [B, C] bool
    band_dropout_apply(x [B, M, C], keep [B, C]) -> [B, M, C]
    patch_embed_forward(x [B, H, W, T, C], weight [D, P*P*C], bias [D] | None, keep [B, C] | None, P)
        -> [B, H/P, W/P, T, D]
    patch_embed_backward(grad_out, x, weight, keep, P, need_x, need_weight, need_bias)
        -> (grad_x, grad_weight, grad_bias), empty tensors for gradients not asked for
    gather_indices(keep [B, N] bool) -> (indices [B, N] int64, seqlens [B] int64)
    pack_rows(x [B, N, D], indices [B, N], mask [B, L]) -> [B, L, D]
    unpack_rows(tokens [B, L, D], indices [B, N], mask [B, L], N) -> [B, N, D]
    token_patches(x [B, H, W, T, C], keep [B, C] | None, work [R, 7], tables [2, n, P, w], p)
        -> [R, P*P*C]  (resized patch of each work row; see mim_fast.reference.token_patches)
    token_patches_backward(grad [R, P*P*C], x_shape, keep, work, tables, p) -> grad_x [B, H, W, T, C]
"""

from ..reference import (  # noqa: F401
    band_dropout_apply,
    band_dropout_mask,
    gather_indices,
    pack_rows,
    patch_embed_backward,
    patch_embed_forward,
    unpack_rows,
)
from ..reference.token_patches import token_patches, token_patches_backward  # noqa: F401
