"""Fused tokenizer: band dropout + flexible patch embedding + masked gather in one op.

Only the selected tokens are embedded. For each one the backend builds its resized
``P x P`` patch straight from its input window (``mim_fast.reference.token_patches``:
the resized image is never materialised), one GEMM per entry embeds all of them, and the
rows land in their packed slots. An *entry* is one tensor with its own projection (one
band set of one modality); :func:`tokenize_entries` packs several entries of a sample into
one sequence, :func:`tokenize` is the single-entry functional.

Registered ops: ``mim_fast::tokenize_rows`` (forward) and ``mim_fast::tokenize_rows_backward``.
Weight and bias gradients come from the selected tokens only (from the patches the forward
kept); the input gradient is the adjoint resize.

On CPU with the compiled extension, the packed layout and every work list come from one
call (``cpu_token_layout``) and the loop over entries runs in C++ (``cpu_tokenize_rows``
and its backward, entries spread over the threads): at small batch sizes the dispatch of a
dozen small tensor ops per entry cost as much as the embedding itself. Other backends and
devices run the same steps as tensor ops.

For upsampling patch sizes interior tokens may be embedded from their raw ``w x w`` windows
with the resize folded into the weight (exact: the resize is linear; fewer flops when
``w = p + 4 < P``), chosen per entry by cost (``_fold_plan``).
"""

import collections
import functools
import weakref
from dataclasses import dataclass

import torch

from .. import backends
from ..reference.patch_embed import resize_channel_last
from ..reference.resize import folded_weight, interior_class, unfolded_gradient
from . import _checks
from ._token_layout import cpp_work_lists, device_tables, packed_layout, work_rows
from .band_dropout import band_dropout_mask
from .masked_gather import Packed
from .patch_embed import _validate as _validate_patch_embed


# Folding the interior resize into the projection saves 2 D C (P^2 - w^2) flops per interior
# token and GEMM (w = p + 4 < P when p <= 3 at P = 8). A frozen weight is folded once and
# cached, so that is free. A weight being trained is folded on every forward and its gradient
# unfolded on every backward (separable passes, csrc/fold_weight.cpp): on 2 CPU cores the pair
# costs about as much as _TRAINED_FOLD_COST GEMM multiply-adds per D * P * (P + w) * max(C, 12)
# (measured at P = 8, p = 1..3, C = 2, 12, 30: below about 12 channels the passes' fixed cost per
# output feature dominates), against a saving of 2 D C (P^2 - w^2) per row (forward and weight
# gradient). Fold only when the saving beats the fold.
_TRAINED_FOLD_COST = 40
_FOLD_MIN_CHANNELS = 12
# A cached fold holds D * w^2 * C values for as long as the weight lives: entries with fewer
# interior rows than this save too little to be worth that memory.
_FROZEN_FOLD_MIN_ROWS = 64


@dataclass
class _FoldPlan:
    """Interior tokens of an entry that may be embedded with the resize folded into the weight.

    Rows of class ``(row_class, col_class)`` are split off when there are more than
    ``min_rows`` of them (below that, folding costs more than it saves). A frozen weight is
    folded here (cached); a weight being trained is folded inside the op on every call.
    """

    row_class: int
    col_class: int
    min_rows: int
    frozen: bool
    grid_key: tuple


def _fold_plan(x, weight, table, patch) -> "_FoldPlan | None":
    """Whether interior tokens of an entry may use the folded weight (see ``_TRAINED_FOLD_COST``).

    Callers skip it for fixed-size (accelerator) work lists: the split reads the work list on
    the host.
    """
    base, window = table.shape[2], table.shape[3]
    if patch == base or window * window >= base * base:
        return None
    row_class = interior_class(patch, base, x.shape[1] // patch)
    col_class = interior_class(patch, base, x.shape[2] // patch)
    if row_class < 0 or col_class < 0:
        return None
    frozen = not (torch.is_grad_enabled() and weight.requires_grad)
    if frozen:
        # A frozen weight (e.g. a target projection) is folded once and cached: only its memory counts.
        min_rows = _FROZEN_FOLD_MIN_ROWS
    else:
        channels = x.shape[-1]
        fold_cost = _TRAINED_FOLD_COST * base * (base + window) * max(channels, _FOLD_MIN_CHANNELS)
        min_rows = fold_cost // (2 * channels * (base * base - window * window))
    key = (patch, base, x.shape[1] // patch, x.shape[2] // patch, row_class, col_class)
    return _FoldPlan(row_class, col_class, min_rows, frozen, key)


def _split_interior(work, plan):
    """``(other rows, interior rows with classes zeroed)`` of a work list, or ``(work, None)``."""
    if plan is None:
        return work, None
    inner = (work[:, 5] == plan.row_class) & (work[:, 6] == plan.col_class)
    if int(inner.sum()) <= plan.min_rows:
        return work, None
    inner_work = work[inner]
    inner_work[:, 5:] = 0
    return work[~inner], inner_work


def _entry_parts(weight, table, plan, work, inner_work):
    """One entry's ``(weight, work, tables, fold)`` parts.

    Normally one part: rows are resized patches projected by ``weight``. With interior rows
    split off, they form a part whose rows are raw ``w x w`` input windows (identity tables)
    projected by the folded weight: cached for a frozen weight, otherwise folded inside the op
    from ``weight`` and the part's ``fold`` tables ``[2, P, w]`` (an empty tensor: no fold);
    the other rows keep the resize.
    """
    no_fold = table.new_empty(0)
    if inner_work is None or inner_work.shape[0] == 0:
        return [(weight, work, table, no_fold)]
    fold = _interior_tables(plan.grid_key, table)
    identity = _identity_tables(table.shape[3], table.dtype, table.device)
    if plan.frozen:
        parts = [(_cached_fold(weight, fold, plan.grid_key), inner_work, identity, no_fold)]
    else:
        parts = [(weight, inner_work, identity, fold)]
    if work.shape[0]:
        parts.append((weight, work, table, no_fold))
    return parts


_INTERIOR_TABLES: dict = {}
_FOLD_CACHE: collections.OrderedDict = collections.OrderedDict()
_FOLD_CACHE_BYTES = 64 << 20  # folded weights kept (least recently used dropped first)


def _interior_tables(key, table):
    """``[2, P, w]``: the row and column resize weights of the interior class (cached per grid)."""
    full_key = key + (table.dtype, table.device)
    if full_key not in _INTERIOR_TABLES:
        _INTERIOR_TABLES[full_key] = torch.stack((table[0, key[4]], table[1, key[5]]))
    return _INTERIOR_TABLES[full_key]


def fold_weight(weight: torch.Tensor, fold: torch.Tensor) -> torch.Tensor:
    """``[D, P*P*C]`` -> ``[D, w*w*C]``: the resize ``fold [2, P, w]`` (row, column weights) folded in.

    ``folded[d, (a b c)] = sum_{x y} fold[0, x, a] fold[1, y, b] weight[d, (x y c)]``; not
    differentiable (the op's backward unfolds gradients with :func:`unfold_weight`).
    """
    if weight.device.type == "cpu" and backends.status("cpp").available:
        return torch.ops.mim_fast.cpu_fold_weight(weight, fold[0], fold[1])
    channels = weight.shape[1] // (fold.shape[1] * fold.shape[1])
    return folded_weight(weight, fold[0], fold[1], channels)


def unfold_weight(grad_folded: torch.Tensor, fold: torch.Tensor) -> torch.Tensor:
    """The adjoint of :func:`fold_weight`: ``[D, w*w*C]`` -> ``[D, P*P*C]``."""
    if grad_folded.device.type == "cpu" and backends.status("cpp").available:
        return torch.ops.mim_fast.cpu_unfold_weight(grad_folded, fold[0], fold[1])
    channels = grad_folded.shape[1] // (fold.shape[2] * fold.shape[2])
    return unfolded_gradient(grad_folded, fold[0], fold[1], channels)


def _cached_fold(weight, fold, key):
    """:func:`fold_weight` of a weight that is not being trained, reused while the weight is unchanged.

    An entry is valid for the same tensor object (weak reference), storage and version
    counter: in-place updates (optimizer steps, ``load_state_dict``, EMA updates done with
    tensor ops) invalidate it. Writes through ``weight.data`` bypass the version counter;
    call :func:`clear_fold_cache` after those.
    """
    full_key = (id(weight),) + key
    entry = _FOLD_CACHE.get(full_key)
    stamp = (weight.data_ptr(), weight._version)
    if entry is not None and entry[0]() is weight and entry[1] == stamp:
        _FOLD_CACHE.move_to_end(full_key)
        return entry[2]
    with torch.no_grad():
        folded = fold_weight(weight.detach(), fold)
    _FOLD_CACHE[full_key] = (weakref.ref(weight), stamp, folded)
    while len(_FOLD_CACHE) > 1 and _cache_bytes([entry[2] for entry in _FOLD_CACHE.values()]) > _FOLD_CACHE_BYTES:
        _FOLD_CACHE.popitem(last=False)
    return folded


def _cache_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def clear_fold_cache() -> None:
    """Forget every cached folded weight (see :func:`_cached_fold`)."""
    _FOLD_CACHE.clear()


def held_bytes() -> int:
    """Bytes the fused tokenizer keeps between calls.

    Cached folded weights and interior resize tables; on CPU with the extension also every
    thread's scratch (entries run on all threads at once) and the idle blocks of the output
    pool (freed outputs kept for reuse, see ``csrc/output_pool.h``).
    """
    total = _cache_bytes([entry[2] for entry in _FOLD_CACHE.values()] + list(_INTERIOR_TABLES.values()))
    if backends.status("cpp").available:
        total += int(torch.ops.mim_fast.cpu_tokenize_scratch_bytes())
        total += int(torch.ops.mim_fast.cpu_output_pool_idle_bytes())
    return total


def release_memory() -> None:
    """Free everything :func:`held_bytes` counts (it is rebuilt on the next calls).

    Not while a tokenizer call runs on another thread (its scratch would be freed under it).
    """
    clear_fold_cache()
    if backends.status("cpp").available:
        torch.ops.mim_fast.cpu_tokenize_release_scratch()
        torch.ops.mim_fast.cpu_output_pool_release()


@functools.lru_cache(maxsize=64)
def _identity_tables(window: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Tables whose "resize" returns the raw ``window x window`` input window."""
    eye = torch.eye(window, dtype=dtype, device=device)
    return torch.stack((eye, eye))[:, None]


def _scatter_rows(out, rows, slot, padded):
    """out[slot[r]] = rows[r]; rows with slot < 0 are dropped (without a host sync)."""
    if not padded:
        out.index_copy_(0, slot, rows)
        return
    valid = (slot >= 0)[:, None]
    out.index_add_(0, slot.clamp_min(0), torch.where(valid, rows, torch.zeros((), dtype=rows.dtype, device=rows.device)))


def _selected_grad(grad, slot, padded):
    picked = grad.index_select(0, slot.clamp_min(0))
    if padded:
        picked = torch.where((slot >= 0)[:, None], picked, torch.zeros((), dtype=picked.dtype, device=picked.device))
    return picked


def _present(t: torch.Tensor) -> torch.Tensor | None:
    """An optional per-entry tensor: lists of the op hold an empty tensor for "none"
    (lists with None items do not round-trip through autograd's input structure)."""
    return t if t.numel() else None


def _is_padded(device: torch.device, backend_name: str) -> bool:
    """Whether work lists are fixed-size (padding rows, slot -1) for this device and backend.

    On CPU they are exact: reading the selection on the host costs nothing there. The
    Triton backend always gets fixed-size lists, so the interpreter tests cover them.
    """
    return device.type != "cpu" or backend_name == "triton"


@torch.library.custom_op("mim_fast::tokenize_rows", mutates_args=())
def _tokenize_rows_op(
    xs: list[torch.Tensor],
    weights: list[torch.Tensor],
    biases: list[torch.Tensor],
    keeps: list[torch.Tensor],
    works: list[torch.Tensor],
    tables: list[torch.Tensor],
    folds: list[torch.Tensor],
    patch_sizes: list[int],
    num_rows: int,
    save_patches: bool,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Rows ``[num_rows, D]`` of the packed tokens, and each entry's patches when
    ``save_patches`` (kept for the weight gradient instead of being rebuilt).

    ``folds[e]``: empty, or ``[2, P, w]`` resize tables folded into ``weights[e]`` first (the
    entry's rows are then raw windows; see :func:`fold_weight`)."""
    name = backends.select_name(xs[0].device)
    backend, padded = backends.module(name), _is_padded(xs[0].device, name)
    if name == "cpp" and not padded:
        return backend.tokenize_rows(
            xs, weights, biases, keeps, works, tables, folds, patch_sizes, num_rows, save_patches
        )
    dim = weights[0].shape[0]
    # Exact work lists cover every real row, so only the padding rows need zeroing.
    out = xs[0].new_zeros((num_rows, dim)) if padded else xs[0].new_empty((num_rows, dim))
    covered = None if padded else torch.zeros(num_rows, dtype=torch.bool, device=xs[0].device)
    saved = []
    for x, weight, bias, keep, work, table, fold, patch in zip(
        xs, weights, biases, keeps, works, tables, folds, patch_sizes
    ):
        bias, keep = _present(bias), _present(keep)
        if fold.numel():
            weight = fold_weight(weight, fold)
        patches = backend.token_patches(x, keep, work, table, patch)
        if work.shape[0]:
            rows = torch.addmm(bias, patches, weight.t()) if bias is not None else patches @ weight.t()
            _scatter_rows(out, rows, work[:, 4], padded)
            if covered is not None:
                covered[work[:, 4]] = True
        saved.append(patches if save_patches else x.new_empty(0))
    if covered is not None:
        out.index_fill_(0, (~covered).nonzero().squeeze(1), 0)
    return out, saved


@_tokenize_rows_op.register_fake
def _(xs, weights, biases, keeps, works, tables, folds, patch_sizes, num_rows, save_patches):
    saved = [
        x.new_empty((w.shape[0], t.shape[2] * t.shape[2] * x.shape[-1])) if save_patches else x.new_empty(0)
        for x, w, t in zip(xs, works, tables)
    ]
    return xs[0].new_empty((num_rows, weights[0].shape[0])), saved


@torch.library.custom_op("mim_fast::tokenize_rows_backward", mutates_args=())
def _tokenize_rows_backward_op(
    grad: torch.Tensor,
    xs: list[torch.Tensor],
    weights: list[torch.Tensor],
    keeps: list[torch.Tensor],
    works: list[torch.Tensor],
    tables: list[torch.Tensor],
    folds: list[torch.Tensor],
    patch_sizes: list[int],
    saved_patches: list[torch.Tensor],
    need_x: list[bool],
    need_weight: list[bool],
    need_bias: list[bool],
) -> list[torch.Tensor]:
    """Flat list ``[grad_x per entry] + [grad_weight per entry] + [grad_bias per entry]``
    (distinct empty tensors where a gradient was not asked for)."""
    name = backends.select_name(grad.device)
    backend, padded = backends.module(name), _is_padded(grad.device, name)
    if name == "cpp" and not padded:
        return backend.tokenize_rows_backward(
            grad, xs, weights, keeps, works, tables, folds, patch_sizes, saved_patches, need_x, need_weight, need_bias
        )
    grad_xs, grad_ws, grad_bs = [], [], []
    for e, (x, weight, keep, work, table, fold, patch) in enumerate(
        zip(xs, weights, keeps, works, tables, folds, patch_sizes)
    ):
        keep = _present(keep)
        picked = _selected_grad(grad, work[:, 4], padded)
        if need_weight[e]:
            patches = saved_patches[e] if saved_patches[e].numel() else backend.token_patches(x, keep, work, table, patch)
            grad_w = picked.t() @ patches
            grad_ws.append(unfold_weight(grad_w, fold) if fold.numel() else grad_w)
        else:
            grad_ws.append(x.new_empty(0))
        grad_bs.append(picked.sum(0) if need_bias[e] else x.new_empty(0))
        if need_x[e]:
            used = fold_weight(weight, fold) if fold.numel() else weight
            grad_xs.append(backend.token_patches_backward(picked @ used, tuple(x.shape), keep, work, table, patch))
        else:
            grad_xs.append(x.new_empty(0))
    return grad_xs + grad_ws + grad_bs


@_tokenize_rows_backward_op.register_fake
def _(grad, xs, weights, keeps, works, tables, folds, patch_sizes, saved_patches, need_x, need_weight, need_bias):
    grad_xs = [torch.empty_like(x, memory_format=torch.contiguous_format) if n else x.new_empty(0) for x, n in zip(xs, need_x)]
    grad_ws = [torch.empty_like(w, memory_format=torch.contiguous_format) if n else w.new_empty(0) for w, n in zip(weights, need_weight)]
    grad_bs = [w.new_empty(w.shape[0]) if n else w.new_empty(0) for w, n in zip(weights, need_bias)]
    return grad_xs + grad_ws + grad_bs


def _setup_context(ctx, inputs, output):
    xs, weights, biases, keeps, works, tables, folds, patch_sizes, _, _ = inputs
    _, saved = output
    # The saved patches are outputs only so that backward can reuse them: without this,
    # autograd would build an all-zero [R, K] gradient for each of them every step.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*xs, *weights, *keeps, *works, *tables, *folds, *saved)
    ctx.has_bias = [_present(b) is not None for b in biases]
    ctx.patch_sizes = list(patch_sizes)


def _backward(ctx, grad, _grad_saved):
    n = len(ctx.patch_sizes)
    nothing = [None] * n
    if grad is None:  # the tokens did not reach the loss
        return nothing, nothing, nothing, nothing, nothing, nothing, nothing, None, None, None
    stored = ctx.saved_tensors
    xs, weights, keeps, works, tables, folds, saved = (list(stored[k * n : (k + 1) * n]) for k in range(7))
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    need_b = [bool(nb) and has for nb, has in zip(need_b, ctx.has_bias)]
    flat = _tokenize_rows_backward_op(
        grad, xs, weights, keeps, works, tables, folds, ctx.patch_sizes, saved, list(need_x), list(need_w), need_b
    )
    grad_xs = [g if nx else None for g, nx in zip(flat[:n], need_x)]
    grad_ws = [g if nw else None for g, nw in zip(flat[n : 2 * n], need_w)]
    grad_bs = [g if nb else None for g, nb in zip(flat[2 * n :], need_b)]
    return grad_xs, grad_ws, grad_bs, nothing, nothing, nothing, nothing, None, None, None


_tokenize_rows_op.register_autograd(_backward, setup_context=_setup_context)


@dataclass
class TokenEntry:
    """One tensor to tokenize with its own projection (one band set of one modality).

    x: ``[B, H, W, T, C]`` channel-last pixels (already restricted to the entry's bands).
    weight: ``[D, P*P*C]``, features in ``(p1 p2 c)`` order; bias ``[D]`` or None.
    keep: ``[B, C]`` bool band mask or None.
    patch_size / base_patch_size: requested p and native P.
    offset, stride: token ``n`` (row-major over ``(H//p, W//p, T)``) is position
        ``offset + n * stride`` of the sample's global token sequence.
    """

    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    keep: torch.Tensor | None
    patch_size: int
    base_patch_size: int
    offset: int = 0
    stride: int = 1


def tokenize_entries(entries: list[TokenEntry], codes: torch.Tensor, select: int, max_len: int | None = None) -> Packed:
    """Pack the tokens of several entries whose mask code equals ``select``.

    Args:
        entries: the entries; their token positions must tile ``codes``' columns.
        codes: ``[B, N]`` integer mask codes of every token of the global sequence.
        select: the code to keep.
        max_len: packed length L (None: ``max(seqlens)``, one host read).

    Returns:
        :class:`mim_fast.Packed` over the global sequence: ``tokens [B, L, D]``.
    """
    if not entries:
        raise ValueError("entries: expected at least one entry to tokenize")
    chosen = codes == select
    name = backends.select_name(codes.device)
    padded = _is_padded(codes.device, name)
    prepared = [_prepare_entry(entry) for entry in entries]
    plans = [None if padded else _fold_plan(x, e.weight, table, p) for e, (x, p, _, _, _, table) in zip(entries, prepared)]
    if name == "cpp" and not padded:
        # One call builds the layout and every work list (and the interior splits).
        _, _, grids, row_classes, col_classes, _ = zip(*prepared)
        offsets, strides = [e.offset for e in entries], [e.stride for e in entries]
        indices, seqlens, mask, lists = cpp_work_lists(
            chosen, max_len, offsets, strides, grids, row_classes, col_classes, plans
        )
    else:
        indices, seqlens, mask, row_of = packed_layout(chosen, max_len)
        lists = []
        for entry, (_, _, grid, row_class, col_class, _) in zip(entries, prepared):
            n_tokens = grid[0] * grid[1] * grid[2]
            own = chosen[:, entry.offset : entry.offset + n_tokens * entry.stride : entry.stride]
            lists.append(
                work_rows(own, row_of, entry.offset, entry.stride, grid, row_class, col_class, mask.shape[1], padded)
            )
        lists = [_split_interior(work, plan) for work, plan in zip(lists, plans)]
    batch, length = mask.shape
    xs, weights, biases, keeps, works, tables, folds, patches = [], [], [], [], [], [], [], []
    for entry, (x, p, _, _, _, table), plan, (work, inner_work) in zip(entries, prepared, plans, lists):
        for weight, part_work, part_table, fold in _entry_parts(entry.weight, table, plan, work, inner_work):
            xs.append(x)
            weights.append(weight)
            biases.append(entry.bias if entry.bias is not None else x.new_empty(0))
            keeps.append(entry.keep if entry.keep is not None else x.new_empty(0, dtype=torch.bool))
            works.append(part_work)
            tables.append(part_table)
            folds.append(fold)
            patches.append(p)
    save = torch.is_grad_enabled() and any(w.requires_grad for w in weights)
    out, _ = _tokenize_rows_op(xs, weights, biases, keeps, works, tables, folds, patches, batch * length, save)
    return Packed(out.view(batch, length, entries[0].weight.shape[0]), indices, mask, seqlens)


def _prepare_entry(entry: TokenEntry):
    """``(x [B, H, W, T, C] contiguous, p, grid (h, w, T), row_class [h], col_class [w], tables)``.

    A size that is not a multiple of p (squash case) has no periodic windows: the image is
    resized first and embedded at the base patch size.
    """
    x, p, base = entry.x, entry.patch_size, entry.base_patch_size
    if x.shape[1] % p or x.shape[2] % p:
        x = resize_channel_last(x, x.shape[1] // p * base, x.shape[2] // p * base)
        p = base
    grid = (x.shape[1] // p, x.shape[2] // p, x.shape[3])
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    row_class, col_class, table = device_tables(p, base, grid[0], grid[1], x.device, acc)
    return x.contiguous(), p, grid, row_class, col_class, table


def _validate(x, weight, bias, token_mask, select, patch_size, base_patch_size, band_dropout_rate, generator, max_len):
    """Check every argument of :func:`tokenize`; returns the base patch size P."""
    base = _validate_patch_embed(x, weight, bias, None, patch_size, base_patch_size)
    _checks.tensor("token_mask", token_mask)
    if token_mask.dtype == torch.bool or token_mask.dtype.is_floating_point or token_mask.dtype.is_complex:
        raise TypeError(f"token_mask: expected an integer tensor of mask codes, got {token_mask.dtype}")
    grid = (x.shape[0], x.shape[1] // patch_size, x.shape[2] // patch_size) + ((x.shape[3],) if x.dim() == 5 else ())
    meaning = "B, H // patch_size, W // patch_size" + (", T" if x.dim() == 5 else "") + " of x: the token grid"
    _checks.shape("token_mask", token_mask, grid, meaning)
    _checks.same_device(x=x, token_mask=token_mask)
    _checks.integer("select", select)
    if isinstance(band_dropout_rate, torch.Tensor):
        _checks.floating("band_dropout_rate", band_dropout_rate)
        if band_dropout_rate.numel() != 1:
            raise ValueError(
                f"band_dropout_rate: expected a single value, got a tensor of shape {list(band_dropout_rate.shape)}"
            )
    else:
        if isinstance(band_dropout_rate, bool) or not isinstance(band_dropout_rate, (int, float)):
            raise TypeError(
                "band_dropout_rate: expected a float in [0, 1] or a one-element tensor, "
                f"got {type(band_dropout_rate).__name__}"
            )
        if not 0.0 <= float(band_dropout_rate) <= 1.0:
            raise ValueError(f"band_dropout_rate: must be in [0, 1], got {band_dropout_rate}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    if max_len is not None:
        _checks.integer("max_len", max_len, minimum=0)
    return base


def _band_keep(x, band_dropout_rate, generator):
    """The band mask, drawn only when dropout can happen (a tensor rate always draws)."""
    if not isinstance(band_dropout_rate, torch.Tensor) and float(band_dropout_rate) == 0.0:
        return None
    return band_dropout_mask(x.shape[0], x.shape[-1], band_dropout_rate, generator=generator, device=x.device)


def tokenize(
    x,
    weight,
    bias,
    token_mask,
    *,
    select,
    patch_size,
    base_patch_size=None,
    band_dropout_rate=0.0,
    generator=None,
    max_len=None,
) -> Packed:
    """Fused band dropout -> patch embedding -> packing of the tokens with one mask code.

    Equal to ``keep = band_dropout_mask(...)``, ``patch_embed(x, weight, bias,
    patch_size=patch_size, keep=keep)``, flattening the token grid row-major and
    ``masked_gather(tokens, token_mask.flatten(1) == select)``, but only the selected
    tokens are embedded, each from its own input window (no resized image), straight into
    the packed buffer.

    Args:
        x: channel-last pixels ``[B, H, W, C]`` or ``[B, H, W, T, C]``.
        weight: ``[D, P*P*C]``, features in ``(p1 p2 c)`` order.
        bias: ``[D]`` or None.
        token_mask: integer mask codes at token resolution, ``[B, H//p, W//p]`` (4-D x) or
            ``[B, H//p, W//p, T]`` (5-D x).
        select: the code of the tokens to keep (e.g. ``MaskValue.ONLINE_ENCODER``).
        patch_size: requested patch size p (resize semantics of :func:`mim_fast.patch_embed`).
        base_patch_size: the layer's native patch size P (inferred from ``weight`` if None).
        band_dropout_rate: float in [0, 1] or a one-element tensor (drawn on the device,
            no host read). Rate 0 draws nothing; otherwise one seed of ``generator`` is
            consumed, exactly as :func:`mim_fast.band_dropout_mask`.
        generator: torch generator for the band mask.
        max_len: packed length L; None means ``max(seqlens)`` (one host read). With
            ``max_len`` the op never synchronises with the host; the caller guarantees no
            sample selects more than ``max_len`` tokens (checked on CPU).

    Returns:
        :class:`mim_fast.Packed` ``(tokens [B, L, D], indices [B, N], mask [B, L],
        seqlens [B])``, N the number of tokens; padding rows are exactly zero.
        Differentiable in x, weight and bias.
    """
    base = _validate(
        x, weight, bias, token_mask, select, patch_size, base_patch_size, band_dropout_rate, generator, max_len
    )
    keep = _band_keep(x, band_dropout_rate, generator)
    x5 = x if x.dim() == 5 else x.unsqueeze(3)
    entry = TokenEntry(x5, weight, bias, keep, patch_size, base)
    return tokenize_entries([entry], token_mask.reshape(x.shape[0], -1), int(select), max_len)
