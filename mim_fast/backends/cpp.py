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


def token_patches(x, keep, work, tables, patch):
    return _ops.cpu_token_patches(x, keep, work, tables, patch)


def token_patches_backward(grad_patches, x_shape, keep, work, tables, patch):
    return _ops.cpu_token_patches_backward(grad_patches, list(x_shape), keep, work, tables, patch)


def _register_fakes() -> None:
    """Shape-only (fake) kernels so the C++ ops also trace under FakeTensor and opcheck."""

    @torch.library.register_fake("mim_fast::cpu_band_dropout_mask")
    def _(seed, rate, batch_size, num_bands):
        return seed.new_empty((batch_size, num_bands), dtype=torch.bool)

    @torch.library.register_fake("mim_fast::cpu_band_dropout_apply")
    def _(x, keep):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake("mim_fast::cpu_patch_embed")
    def _(x, weight, bias, keep, patch_size):
        b, h, w, t, _ = x.shape
        return x.new_empty((b, h // patch_size, w // patch_size, t, weight.shape[0]))

    @torch.library.register_fake("mim_fast::cpu_patch_embed_backward")
    def _(grad_out, x, weight, keep, patch_size, need_x, need_weight, need_bias):
        return (
            torch.empty_like(x, memory_format=torch.contiguous_format) if need_x else x.new_empty(0),
            x.new_empty(weight.shape) if need_weight else x.new_empty(0),
            x.new_empty(weight.shape[0]) if need_bias else x.new_empty(0),
        )

    @torch.library.register_fake("mim_fast::cpu_gather_indices")
    def _(keep):
        return keep.new_empty(keep.shape, dtype=torch.int64), keep.new_empty(keep.shape[:1], dtype=torch.int64)

    @torch.library.register_fake("mim_fast::cpu_pack_rows")
    def _(x, indices, mask):
        return x.new_empty((x.shape[0], mask.shape[1], x.shape[2]))

    @torch.library.register_fake("mim_fast::cpu_unpack_rows")
    def _(tokens, indices, mask, num_tokens):
        return tokens.new_empty((tokens.shape[0], num_tokens, tokens.shape[2]))

    @torch.library.register_fake("mim_fast::cpu_token_patches")
    def _(x, keep, work, tables, patch_size):
        return x.new_empty((work.shape[0], tables.shape[2] * tables.shape[2] * x.shape[-1]))

    @torch.library.register_fake("mim_fast::cpu_token_patches_backward")
    def _(grad_patches, x_shape, keep, work, tables, patch_size):
        return grad_patches.new_empty(x_shape)


_register_fakes()
