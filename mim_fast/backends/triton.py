"""The kernel interface on the Triton kernels (``mim_fast.kernels``), imported lazily.

Importing triton is slow and ``TRITON_INTERPRET`` is read when kernels are defined, so
the kernels module is only imported when this backend is first selected.
"""

from .. import kernels as _k


def band_dropout_mask(seed, rate, batch_size, num_bands):
    return _k.band_dropout_mask(seed, rate, batch_size, num_bands)


def band_dropout_apply(x, keep):
    return _k.band_dropout_apply(x, keep)


def patch_embed_forward(x, weight, bias, keep, patch):
    return _k.patch_embed_forward(x, weight, bias, keep, patch)


def patch_embed_backward(grad_out, x, weight, keep, patch, need_x, need_weight, need_bias):
    grad_x, grad_weight, grad_bias = _k.patch_embed_backward(
        grad_out, x, weight, keep, patch, need_x, need_weight, need_bias
    )
    # Distinct empty tensors: outputs of a registered op may not alias each other.
    return tuple(g if g is not None else x.new_empty(0) for g in (grad_x, grad_weight, grad_bias))


def gather_indices(keep):
    return _k.gather_indices(keep)


def pack_rows(x, indices, mask):
    return _k.pack_rows(x, indices, mask)


def unpack_rows(tokens, indices, mask, num_tokens):
    return _k.unpack_rows(tokens, indices, mask, num_tokens)



def token_patches(x, keep, work, tables, patch):
    return _k.token_patches(x, keep, work, tables, patch)


def token_patches_backward(grad_patches, x_shape, keep, work, tables, patch):
    return _k.token_patches_backward(grad_patches, x_shape, keep, work, tables, patch)
