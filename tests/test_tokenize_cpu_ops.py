"""The CPU extension's one-call tokenizer pieces against the tensor compositions they replace:
``cpu_token_layout`` (packed layout + work lists + interior split), ``cpu_tokenize_rows``
(per-entry embedding, chunked through scratch buffers, entries spread over the threads, weights
of folded entries folded inside) with its backward, and ``cpu_fold_weight`` / its adjoint."""

import importlib
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mim_fast
from mim_fast.ops._token_layout import cpp_work_lists, device_tables, packed_layout, work_rows
from mim_fast.ops.tokenize import _split_interior

pytestmark = pytest.mark.skipif(not mim_fast.backends.status("cpp").available, reason="cpp backend unavailable")

BASE = 8
NO_FOLD = torch.empty(0)


class _Plan:
    def __init__(self, row_class, col_class, min_rows):
        self.row_class, self.col_class, self.min_rows = row_class, col_class, min_rows


def _entries(grids, band_sets):
    """Offsets and strides of entries laid out like MultiModalPatchEmbeddings.forward_packed."""
    offsets, strides, offset = [], [], 0
    for (h, w, t), n_sets in zip(grids, band_sets):
        for k in range(n_sets):
            offsets.append(offset + k)
            strides.append(n_sets)
        offset += h * w * t * n_sets
    return offsets, strides, offset


def _expected_layout(chosen, max_len, grids, band_sets, classes, plans):
    indices, seqlens, mask, row_of = packed_layout(chosen, max_len)
    offsets, strides, _ = _entries(grids, band_sets)
    lists, e = [], 0
    for (h, w, t), n_sets in zip(grids, band_sets):
        for _ in range(n_sets):
            row_class, col_class = classes[e]
            own = chosen[:, offsets[e] : offsets[e] + h * w * t * strides[e] : strides[e]]
            work = work_rows(own, row_of, offsets[e], strides[e], (h, w, t), row_class, col_class, mask.shape[1], False)
            lists.append(_split_interior(work, plans[e]))
            e += 1
    return indices, seqlens, mask, lists


def _actual_layout(chosen, max_len, grids, band_sets, classes, plans):
    offsets, strides, _ = _entries(grids, band_sets)
    entry_grids = [grid for grid, n_sets in zip(grids, band_sets) for _ in range(n_sets)]
    row_classes, col_classes = zip(*classes)
    return cpp_work_lists(chosen, max_len, offsets, strides, entry_grids, row_classes, col_classes, plans)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    grids=st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 3)), min_size=1, max_size=3),
    band_sets=st.lists(st.integers(1, 2), min_size=3, max_size=3),
    patch=st.integers(1, 4),
    density=st.sampled_from([0.0, 0.3, 1.0]),
    min_rows=st.integers(0, 4),
    fixed_len=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_token_layout_matches_tensor_composition(batch, grids, band_sets, patch, density, min_rows, fixed_len, seed):
    band_sets = band_sets[: len(grids)]
    gen = torch.Generator().manual_seed(seed)
    _, _, n = _entries(grids, band_sets)
    chosen = torch.rand(batch, n, generator=gen) < density
    max_len = int(chosen.sum(1).max()) + 2 if fixed_len else None
    grid_classes = [device_tables(patch, BASE, h, w, torch.device("cpu"), torch.float32)[:2] for h, w, _ in grids]
    # one (row_class, col_class) per entry: a grid's classes repeat for each of its band sets
    classes = [c for c, n_sets in zip(grid_classes, band_sets) for _ in range(n_sets)]
    # split on the most frequent class pair so that both outcomes of the threshold occur
    plans = [
        _Plan(int(rc.mode().values), int(cc.mode().values), min_rows) if patch < BASE else None for rc, cc in classes
    ]
    expected = _expected_layout(chosen, max_len, grids, band_sets, classes, plans)
    actual = _actual_layout(chosen, max_len, grids, band_sets, classes, plans)
    for name, want, got in zip(("indices", "seqlens", "mask"), expected[:3], actual[:3]):
        assert torch.equal(want, got), name
    for e, ((want_main, want_inner), (got_main, got_inner)) in enumerate(zip(expected[3], actual[3])):
        assert torch.equal(want_main, got_main), f"entry {e} main rows"
        assert (want_inner is None) == (got_inner is None), f"entry {e} split decision"
        if want_inner is not None:
            assert torch.equal(want_inner, got_inner), f"entry {e} interior rows"


def test_token_layout_empty_selection_and_max_len_check():
    row_class, col_class, _ = device_tables(2, BASE, 2, 3, torch.device("cpu"), torch.float32)
    chosen = torch.zeros(2, 6, dtype=torch.bool)
    indices, seqlens, mask, works = torch.ops.mim_fast.cpu_token_layout(
        chosen, -1, [0], [1], [2, 3, 1], [row_class], [col_class], [-1, -1, 0]
    )
    assert seqlens.tolist() == [0, 0] and mask.shape == (2, 0)
    assert works[0].shape == (0, 7) and works[1].shape == (0, 7)
    assert torch.equal(indices, torch.arange(6).expand(2, 6))
    chosen[0, :4] = True
    with pytest.raises(ValueError, match="max_len: 3 is smaller than the largest number of kept tokens 4"):
        torch.ops.mim_fast.cpu_token_layout(chosen, 3, [0], [1], [2, 3, 1], [row_class], [col_class], [-1, -1, 0])


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(chosen=torch.zeros(2, 6, dtype=torch.int64)), TypeError, "chosen"),
        (dict(chosen=torch.zeros(12, dtype=torch.bool)), ValueError, "chosen"),
        (dict(strides=[1, 1]), ValueError, "strides"),
        (dict(grids=[2, 3]), ValueError, "grids"),
        (dict(grids=[3, 3, 1]), ValueError, "offsets"),
        (dict(split=[0, 0]), ValueError, "split"),
        (dict(row_classes=[torch.zeros(5, dtype=torch.int64)]), ValueError, "row_classes"),
        (dict(col_classes=[torch.zeros(3, dtype=torch.int32)]), TypeError, "col_classes"),
        (dict(offsets=[]), ValueError, "offsets"),
    ],
)
def test_token_layout_bad_input_names_the_argument(change, error, match):
    row_class, col_class, _ = device_tables(2, BASE, 2, 3, torch.device("cpu"), torch.float32)
    args = dict(
        chosen=torch.ones(2, 6, dtype=torch.bool), max_len=-1, offsets=[0], strides=[1], grids=[2, 3, 1],
        row_classes=[row_class], col_classes=[col_class], split=[-1, -1, 0],
    )  # fmt: skip
    args.update(change)
    with pytest.raises(error, match=match):
        torch.ops.mim_fast.cpu_token_layout(*args.values())


def _rows_case(batch, hw_p, patch, channels, dim, density, seed=0, time=1):
    """One entry's inputs and exact work list (all positions of a [batch, hw_p, hw_p, time] grid)."""
    gen = torch.Generator().manual_seed(seed)
    size = hw_p * patch
    x = torch.randn(batch, size, size, time, channels, generator=gen)
    weight = torch.randn(dim, BASE * BASE * channels, generator=gen) / BASE
    bias = torch.randn(dim, generator=gen)
    keep = torch.rand(batch, channels, generator=gen) < 0.7
    chosen = torch.rand(batch, hw_p * hw_p * time, generator=gen) < density
    row_class, col_class, tables = device_tables(patch, BASE, hw_p, hw_p, torch.device("cpu"), torch.float32)
    _, _, mask, row_of = packed_layout(chosen, None)
    work = work_rows(chosen, row_of, 0, 1, (hw_p, hw_p, time), row_class, col_class, mask.shape[1], False)
    return x, weight, bias, keep, work, tables, mask.numel()


def _rows_expected(x, weight, bias, keep, work, tables, patch, num_rows):
    patches = torch.ops.mim_fast.cpu_token_patches(x, keep, work, tables, patch)
    out = torch.zeros(num_rows, weight.shape[0], dtype=x.dtype)
    out[work[:, 4]] = torch.addmm(bias, patches, weight.t())
    return out, patches


@pytest.mark.parametrize(
    "batch, hw_p, patch, channels, dim, density",
    [
        (2, 3, 2, 3, 5, 0.6),  # small: one chunk
        (2, 4, 8, 64, 4096, 1.0),  # 32 rows of K = 4096, D = 4096: still one chunk (>= 128 rows per chunk)
        (10, 8, 8, 64, 4096, 1.0),  # 640 rows: several chunks forward (128) and backward (256)
        (3, 5, 3, 2, 7, 0.0),  # nothing selected
    ],
)
def test_tokenize_rows_matches_composition(batch, hw_p, patch, channels, dim, density):
    x, weight, bias, keep, work, tables, num_rows = _rows_case(batch, hw_p, patch, channels, dim, density)
    want, patches = _rows_expected(x, weight, bias, keep, work, tables, patch, num_rows)
    for save in (True, False):
        out, saved = torch.ops.mim_fast.cpu_tokenize_rows(
            [x], [weight], [bias], [keep], [work], [tables], [NO_FOLD], [patch], num_rows, save
        )
        tol = 1e-5 * (weight.shape[1] ** 0.5)
        torch.testing.assert_close(out, want, atol=tol, rtol=1e-5)
        if save:
            assert torch.equal(saved[0], patches)
        else:
            assert saved[0].numel() == 0
    grad = torch.randn(num_rows, dim)
    picked = grad[work[:, 4]]
    for saved_patches in (patches, torch.empty(0)):
        gx, gw, gb = torch.ops.mim_fast.cpu_tokenize_rows_backward(
            grad, [x], [weight], [keep], [work], [tables], [NO_FOLD], [patch], [saved_patches], [True], [True], [True]
        )
        tol = 1e-5 * (max(work.shape[0], 1) ** 0.5)
        torch.testing.assert_close(gw, picked.t() @ patches, atol=tol, rtol=1e-4)
        torch.testing.assert_close(gb, picked.sum(0), atol=tol, rtol=1e-4)
        want_gx = torch.ops.mim_fast.cpu_token_patches_backward(picked @ weight, list(x.shape), keep, work, tables, patch)
        torch.testing.assert_close(gx, want_gx, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("channels", [1, 3, 12])
@pytest.mark.parametrize("patch", [1, 2, 3])
def test_tokenize_rows_folds_the_weight_of_a_folded_entry(patch, channels):
    """folds[e] given: rows are raw windows projected by the folded weight; the weight
    gradient is unfolded (against the float64 reference fold and its adjoint)."""
    from mim_fast.reference.resize import folded_weight, unfolded_gradient

    x, weight, bias, keep, work, tables, num_rows = _rows_case(2, 6, patch, channels, 9, 0.7)
    work[:, 5:] = 0  # one class everywhere: its tables are the fold
    fold = torch.stack((tables[0, 0], tables[1, 0]))
    window = tables.shape[3]
    eye = torch.eye(window)
    identity = torch.stack((eye, eye))[:, None]
    windows = torch.ops.mim_fast.cpu_token_patches(x, keep, work, identity, patch)
    folded = folded_weight(weight.double(), fold[0], fold[1], channels)
    want = torch.zeros(num_rows, 9, dtype=torch.float64)
    want[work[:, 4]] = windows.double() @ folded.t() + bias.double()
    out, saved = torch.ops.mim_fast.cpu_tokenize_rows(
        [x], [weight], [bias], [keep], [work], [identity], [fold], [patch], num_rows, True
    )
    torch.testing.assert_close(out.double(), want, atol=1e-4, rtol=1e-4)
    assert torch.equal(saved[0], windows)
    grad = torch.randn(num_rows, 9)
    picked = grad[work[:, 4]]
    gx, gw, gb = torch.ops.mim_fast.cpu_tokenize_rows_backward(
        grad, [x], [weight], [keep], [work], [identity], [fold], [patch], [saved[0]], [True], [True], [True]
    )
    want_gw = unfolded_gradient(picked.double().t() @ windows.double(), fold[0], fold[1], channels)
    assert gw.shape == weight.shape
    torch.testing.assert_close(gw.double(), want_gw, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(gb, picked.sum(0), atol=1e-4, rtol=1e-4)
    want_gx = torch.ops.mim_fast.cpu_token_patches_backward(
        picked @ folded.float(), list(x.shape), keep, work, identity, patch
    )
    torch.testing.assert_close(gx, want_gx, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("channels", [1, 2, 12])
@pytest.mark.parametrize("patch", [1, 2, 3, 5])
def test_fold_weight_and_its_adjoint_match_the_reference(patch, channels):
    from mim_fast.reference.resize import folded_weight, interior_class, unfolded_gradient, window_tables

    _, _, tables = window_tables(patch, BASE, 6, 6)
    k = interior_class(patch, BASE, 6)
    rw, cw = tables[0, k].float(), tables[1, k].float()
    weight = torch.randn(10, BASE * BASE * channels)
    got = torch.ops.mim_fast.cpu_fold_weight(weight, rw, cw)
    torch.testing.assert_close(got.double(), folded_weight(weight.double(), rw, cw, channels), atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(got)
    back = torch.ops.mim_fast.cpu_unfold_weight(grad, rw, cw)
    torch.testing.assert_close(back.double(), unfolded_gradient(grad.double(), rw, cw, channels), atol=1e-5, rtol=1e-5)
    # adjoint: <fold(W), G> == <W, unfold(G)>
    lhs, rhs = (got.double() * grad.double()).sum(), (weight.double() * back.double()).sum()
    torch.testing.assert_close(lhs, rhs, atol=1e-3, rtol=1e-6)
    with pytest.raises(ValueError, match="weight: expected"):
        torch.ops.mim_fast.cpu_fold_weight(weight[:, :7], rw, cw)
    with pytest.raises(ValueError, match="row_w, col_w"):
        torch.ops.mim_fast.cpu_fold_weight(weight, rw, cw[:, :-1])


def test_tokenize_rows_expanded_grad_and_unused_gradients():
    """An expanded (stride 0) upstream gradient, as from ``tokens.sum()``; gradients not asked for are empty."""
    x, weight, bias, keep, work, tables, num_rows = _rows_case(2, 3, 2, 3, 5, 0.6)
    _, patches = _rows_expected(x, weight, bias, keep, work, tables, 2, num_rows)
    grad = torch.ones(()).expand(num_rows, 5)
    gx, gw, gb = torch.ops.mim_fast.cpu_tokenize_rows_backward(
        grad, [x], [weight], [keep], [work], [tables], [NO_FOLD], [2], [patches], [False], [True], [False]
    )
    torch.testing.assert_close(gw, torch.ones(work.shape[0], 5).t() @ patches)
    assert gx.numel() == 0 and gb.numel() == 0


def test_tokenize_rows_zero_fills_rows_without_work():
    x, weight, bias, keep, work, tables, num_rows = _rows_case(2, 3, 2, 3, 5, 0.5)
    out, _ = torch.ops.mim_fast.cpu_tokenize_rows([x], [weight], [bias], [keep], [work], [tables], [NO_FOLD], [2], num_rows + 4, False)
    covered = torch.zeros(num_rows + 4, dtype=torch.bool)
    covered[work[:, 4]] = True
    assert torch.equal(out[~covered], torch.zeros_like(out[~covered]))


def test_tokenize_rows_bad_input_names_the_argument():
    x, weight, bias, keep, work, tables, num_rows = _rows_case(2, 3, 2, 3, 5, 1.0)
    bad_slot = work.clone()
    bad_slot[0, 4] = num_rows
    with pytest.raises(ValueError, match="works: entry 0 row 0 has slot"):
        torch.ops.mim_fast.cpu_tokenize_rows([x], [weight], [bias], [keep], [bad_slot], [tables], [NO_FOLD], [2], num_rows, False)
    with pytest.raises(ValueError, match="weights: entry 0 has 10 input features"):
        torch.ops.mim_fast.cpu_tokenize_rows([x], [weight[:, :10]], [bias], [keep], [work], [tables], [NO_FOLD], [2], num_rows, False)
    with pytest.raises(ValueError, match="weights, keeps, works, tables, folds, patch_sizes"):
        torch.ops.mim_fast.cpu_tokenize_rows([x], [weight], [bias], [keep], [work, work], [tables], [NO_FOLD], [2], num_rows, False)
    with pytest.raises(ValueError, match="biases: entry 0 expected shape"):
        torch.ops.mim_fast.cpu_tokenize_rows([x], [weight], [bias[:3]], [keep], [work], [tables], [NO_FOLD], [2], num_rows, False)
    with pytest.raises(TypeError, match="weights"):
        torch.ops.mim_fast.cpu_tokenize_rows([x], [weight.double()], [bias], [keep], [work], [tables], [NO_FOLD], [2], num_rows, False)
    with pytest.raises(ValueError, match="grad: expected 5 columns"):
        torch.ops.mim_fast.cpu_tokenize_rows_backward(
            torch.zeros(num_rows, 4), [x], [weight], [keep], [work], [tables], [NO_FOLD], [2], [torch.empty(0)], [False], [True], [True]
        )  # fmt: skip


def test_tokenize_rows_backward_gives_zero_gradients_to_entries_without_rows():
    x, weight, bias, keep, work, tables, num_rows = _rows_case(2, 3, 2, 3, 5, 0.0)
    assert work.shape[0] == 0
    gx, gw, gb = torch.ops.mim_fast.cpu_tokenize_rows_backward(
        torch.randn(4, 5), [x], [weight], [keep], [work], [tables], [NO_FOLD], [2], [torch.empty(0)], [True], [True], [True]
    )
    assert torch.equal(gw, torch.zeros_like(weight)) and torch.equal(gb, torch.zeros_like(bias))
    assert torch.equal(gx, torch.zeros_like(x))


def test_held_bytes_counts_fold_cache_and_scratch(monkeypatch):
    fused_tokenize = importlib.import_module("mim_fast.ops.tokenize")

    fused_tokenize.release_memory()
    base = fused_tokenize.held_bytes()
    # 2 x 8 x 8 interior tokens (of 12 x 12): more than _FROZEN_FOLD_MIN_ROWS, so folded and cached
    x, weight, bias = torch.randn(2, 12, 12, 1, 3), torch.randn(6, BASE * BASE * 3), torch.randn(6)
    codes = torch.ones(2, 12, 12, 1, dtype=torch.int64)
    with torch.no_grad():  # frozen weight at p = 1: interior tokens use the cached folded weight
        mim_fast.tokenize(x, weight, bias, codes, select=1, patch_size=1)
    assert len(fused_tokenize._FOLD_CACHE) == 1
    folded = next(iter(fused_tokenize._FOLD_CACHE.values()))[2]
    scratch = int(torch.ops.mim_fast.cpu_tokenize_scratch_bytes())
    assert scratch > 0
    assert fused_tokenize.held_bytes() >= base + folded.numel() * folded.element_size() + scratch
    fused_tokenize.release_memory()
    assert len(fused_tokenize._FOLD_CACHE) == 0 and int(torch.ops.mim_fast.cpu_tokenize_scratch_bytes()) == 0
    # the cache is bounded in bytes: with a budget below one folded weight only the newest entry stays
    monkeypatch.setattr(fused_tokenize, "_FOLD_CACHE_BYTES", 1)
    with torch.no_grad():
        for other in (weight, weight.clone(), weight.clone()):
            mim_fast.tokenize(x, other, bias, codes, select=1, patch_size=1)
    assert len(fused_tokenize._FOLD_CACHE) == 1
    fused_tokenize.clear_fold_cache()


def test_output_pool_reuses_dirty_blocks_and_still_zeroes_padding():
    """Outputs >= 1 MiB come back from the pool after their tensor dies; reused memory is
    dirty, so the rows no work row names must be cleared again."""
    x, weight, bias, keep, work, tables, num_rows = _rows_case(2, 3, 2, 3, 5, 0.5)
    rows = (1 << 20) // (5 * 4) + 16  # [rows, 5] fp32 outputs of just over 1 MiB: pooled
    torch.ops.mim_fast.cpu_output_pool_release()
    out, _ = torch.ops.mim_fast.cpu_tokenize_rows([x], [weight], [bias], [keep], [work], [tables], [NO_FOLD], [2], rows, False)
    pointer = out.data_ptr()
    out.fill_(float("nan"))  # dirty the block
    del out
    assert int(torch.ops.mim_fast.cpu_output_pool_idle_bytes()) >= rows * 5 * 4
    again, _ = torch.ops.mim_fast.cpu_tokenize_rows([x], [weight], [bias], [keep], [work], [tables], [NO_FOLD], [2], rows, False)
    assert again.data_ptr() == pointer  # the same block, handed out again
    assert int(torch.ops.mim_fast.cpu_output_pool_idle_bytes()) == 0
    want, _ = _rows_expected(x, weight, bias, keep, work, tables, 2, rows)
    torch.testing.assert_close(again, want, atol=1e-5, rtol=1e-5)  # padding rows zero, no NaN left
    # zero gradients of entries without rows, from a dirty pooled block, are zero too
    empty_work = work[:0]
    big = torch.randn(512, 4096)  # [D, K] gradient of 8 MiB: pooled
    gw = torch.ops.mim_fast.cpu_tokenize_rows_backward(
        torch.zeros(rows, 512), [x], [big], [keep], [empty_work], [tables], [NO_FOLD], [2], [torch.empty(0)], [False], [True], [False]
    )[1]
    gw.fill_(float("nan"))
    pointer = gw.data_ptr()
    del gw
    gw = torch.ops.mim_fast.cpu_tokenize_rows_backward(
        torch.zeros(rows, 512), [x], [big], [keep], [empty_work], [tables], [NO_FOLD], [2], [torch.empty(0)], [False], [True], [False]
    )[1]
    assert gw.data_ptr() == pointer and torch.equal(gw, torch.zeros_like(big))
    del again, gw
    torch.ops.mim_fast.cpu_output_pool_release()
    assert int(torch.ops.mim_fast.cpu_output_pool_idle_bytes()) == 0


def test_output_pool_can_be_disabled(tmp_path):
    code = (
        "import torch, mim_fast\n"
        "b = torch.ops.mim_fast.cpu_output_pool_idle_bytes\n"
        "from mim_fast.ops.tokenize import tokenize\n"
        "x = torch.randn(4, 64, 64, 1, 3); w = torch.randn(512, 192); codes = torch.zeros(4, 8, 8, 1, dtype=torch.long)\n"
        "out = tokenize(x, w, None, codes, select=0, patch_size=8, max_len=128)\n"
        "del out\n"
        "print(int(b()))\n"
    )
    for setting, pooled in (("1", True), ("0", False)):
        env = {**os.environ, "MIM_FAST_CPU_OUTPUT_POOL": setting}
        # Run outside the source tree: the installed package (with its compiled extension) is imported.
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert (int(result.stdout.strip().splitlines()[-1]) > 0) == pooled


@pytest.mark.parametrize(
    "shapes",
    [
        [(3, 12), (3, 2), (1, 30), (1, 1), (3, 11)],  # balanced over the threads
        [(3, 30), (1, 2), (1, 1), (1, 1)],  # one entry larger than an even share: run on all threads
    ],
)
def test_entries_on_several_threads_match_one_thread(shapes):
    """Entries run concurrently on the thread pool (largest first): the same tokens and
    gradients as one thread, for a mix of entry sizes ((T, C) per entry, 16 x 16 pixels at
    p = 2), a folded entry and one that selects nothing."""
    from mim_fast.ops.tokenize import TokenEntry, tokenize_entries

    gen = torch.Generator().manual_seed(5)
    entries, offset = [], 0
    for t, c in shapes:
        x = torch.randn(4, 16, 16, t, c, generator=gen)
        weight = (torch.randn(24, BASE * BASE * c, generator=gen) / BASE).requires_grad_()
        bias = torch.randn(24, generator=gen).requires_grad_()
        keep = torch.rand(4, c, generator=gen) < 0.7 if c > 1 else None
        entries.append(TokenEntry(x, weight, bias, keep, 2, BASE, offset, 1))
        offset += 8 * 8 * t
    codes = torch.randint(0, 3, (4, offset), generator=gen)
    codes[:, -8 * 8 * shapes[-1][0] :] = 1  # the last entry selects nothing
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            packed = tokenize_entries(entries, codes, 0)
            grads = torch.autograd.grad((packed.tokens * 0.5).sum(), [p for e in entries for p in (e.weight, e.bias)])
            results.append((packed.tokens, grads))
    finally:
        torch.set_num_threads(threads)
    (one, one_grads), (two, two_grads) = results
    torch.testing.assert_close(two, one, atol=1e-5, rtol=1e-5)
    for a, b in zip(two_grads, one_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
