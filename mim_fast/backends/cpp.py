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


def tokenize_rows(xs, weights, biases, keeps, works, tables, folds, patch_sizes, num_rows, save_patches):
    out, saved = _ops.cpu_tokenize_rows(
        xs, weights, biases, keeps, works, tables, folds, patch_sizes, num_rows, save_patches
    )
    return out, list(saved)


def tokenize_rows_backward(
    grad, xs, weights, keeps, works, tables, folds, patch_sizes, saved, need_x, need_weight, need_bias
):
    return list(
        _ops.cpu_tokenize_rows_backward(
            grad, xs, weights, keeps, works, tables, folds, patch_sizes, saved, need_x, need_weight, need_bias
        )
    )



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

    @torch.library.register_fake("mim_fast::cpu_token_layout")
    def _(chosen, max_len, offsets, strides, grids, row_classes, col_classes, split):
        ctx = torch.library.get_ctx()
        batch, n = chosen.shape
        length = max_len if max_len >= 0 else ctx.new_dynamic_size()
        works = [chosen.new_empty((ctx.new_dynamic_size(), 7), dtype=torch.int64) for _ in range(2 * len(offsets))]
        long = dict(dtype=torch.int64)
        return chosen.new_empty((batch, n), **long), chosen.new_empty((batch,), **long), chosen.new_empty((batch, length)), works

    @torch.library.register_fake("mim_fast::cpu_fold_weight")
    def _(weight, row_w, col_w):
        channels = weight.shape[1] // (row_w.shape[0] * row_w.shape[0])
        return weight.new_empty((weight.shape[0], row_w.shape[1] * row_w.shape[1] * channels))

    @torch.library.register_fake("mim_fast::cpu_unfold_weight")
    def _(grad_folded, row_w, col_w):
        channels = grad_folded.shape[1] // (row_w.shape[1] * row_w.shape[1])
        return grad_folded.new_empty((grad_folded.shape[0], row_w.shape[0] * row_w.shape[0] * channels))

    @torch.library.register_fake("mim_fast::cpu_tokenize_rows")
    def _(xs, weights, biases, keeps, works, tables, folds, patch_sizes, num_rows, save_patches):
        saved = [
            x.new_empty((w.shape[0], t.shape[2] * t.shape[2] * x.shape[-1])) if save_patches else x.new_empty(0)
            for x, w, t in zip(xs, works, tables)
        ]
        return xs[0].new_empty((num_rows, weights[0].shape[0])), saved

    @torch.library.register_fake("mim_fast::cpu_tokenize_rows_backward")
    def _(grad, xs, weights, keeps, works, tables, folds, patch_sizes, saved, need_x, need_weight, need_bias):
        grad_xs = [torch.empty_like(x, memory_format=torch.contiguous_format) if n else x.new_empty(0) for x, n in zip(xs, need_x)]
        grad_ws = [torch.empty_like(w, memory_format=torch.contiguous_format) if n else w.new_empty(0) for w, n in zip(weights, need_weight)]
        grad_bs = [w.new_empty(w.shape[0]) if n else w.new_empty(0) for w, n in zip(weights, need_bias)]
        return grad_xs + grad_ws + grad_bs


_register_fakes()
