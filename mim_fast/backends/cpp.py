"""The kernel interface on the compiled CPU extension (``torch.ops.mim_fast.cpu_*``)."""

import torch

_ops = torch.ops.mim_fast


def band_dropout_mask(seed, rate, batch_size, num_bands):
    return _ops.cpu_band_dropout_mask(seed, rate, batch_size, num_bands)


def band_dropout_apply(x, keep):
    return _ops.cpu_band_dropout_apply(x, keep)


def patch_embed_forward(x, weight, bias, keep, patch):
    return _ops.cpu_patch_embed(x, weight, bias, keep, patch)


def patch_embed_backward(grad_out, x, weight, keep, patch, need_x, need_weight, need_bias):
    return tuple(_ops.cpu_patch_embed_backward(grad_out, x, weight, keep, patch, need_x, need_weight, need_bias))


def gather_indices(keep):
    return tuple(_ops.cpu_gather_indices(keep))


def pack_rows(x, indices, mask):
    return _ops.cpu_pack_rows(x, indices, mask)


def unpack_rows(tokens, indices, mask, num_tokens):
    return _ops.cpu_unpack_rows(tokens, indices, mask, num_tokens)
