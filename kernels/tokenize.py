# Row builder of the fused tokenizer: the resized P x P patch of each selected token,
# computed from its input window, so the resized image is never materialised.
#
#   token_patches(x [B, H, W, T, C], keep [B, C] | None, work [R, 7] int64, tables, p)
#       -> A [R, P*P*C] in x's dtype
#   token_patches_backward(grad_A [R, P*P*C], x_shape, keep, work, tables, p)
#       -> grad_x [B, H, W, T, C]
#
# work[r] = (sample b, token row i, token col j, timestep t, slot, row class rc, col class cc);
# slot < 0 marks a padding row (zero patch, no gradient). Fixed-size work lists keep the
# launch free of host synchronisation: padding rows cost one cheap program each.
# tables [2, n_classes, P, window] (float32 or float64, the accumulation dtype):
# RW = tables[0, rc], CW = tables[1, cc]; window = p + 2m; token (i, j) reads the window
# starting at (i*p - m, j*p - m), zero outside the image.
#
# The math (separable antialiased-bicubic resize restricted to one token):
#     A[r, q1, q2, c] = keep[b, c] * sum_v CW[q2, v] * (sum_u RW[q1, u] * x[b, i*p-m+u, j*p-m+v, t, c])
# The inner sum (the row pass) is a [window, BLOCK_C] tile per q1, kept in registers; the
# column pass reduces it against one CW row per q2. Cost per token and channel is
# P*w*w + P*P*w multiply-adds (w = window <= P + 4 for p <= P): for p = 1..8 at P = 8 that
# is 200..1664 against the 2*D*P*P = 98304 of the projection GEMM at D = 768, so the rows
# cost a few percent of the GEMM that follows.
# The alternative, folding the resize into the projection (weight' [D, w*w*C], the GEMM then
# reads the raw window), has fewer GEMM flops only when w*w < P*P (p <= 3 at P = 8), needs
# one folded weight per window class, and costs a fold of the weight per call. The caller
# chooses per entry by cost (mim_fast/ops/tokenize.py): interior tokens of a frozen weight
# (folded once, cached) use it with identity tables here, which return the raw window.
# For p == P the patch is the token's own block (the tables are not read).
#
# The backward is the adjoint: the column pass transposed into a [window, BLOCK_C] tile,
# then the row pass transposed with atomic adds into a float32 (float64) image, because
# windows of neighbouring tokens overlap.

import torch
import triton
import triton.language as tl


@triton.jit
def _work_row(work_ptr, i_r, o_c, m_c):
    """Fields of work row ``i_r``; ``valid`` / ``m_cv`` are per-channel vectors (False on a padding row)."""
    p_work = work_ptr + i_r * 7
    b = tl.load(p_work)
    i = tl.load(p_work + 1)
    j = tl.load(p_work + 2)
    t = tl.load(p_work + 3)
    # A vector load of the slot (same address in every lane) keeps every mask a tensor.
    valid = tl.load(p_work + 4 + o_c * 0) >= 0
    rc = tl.load(p_work + 5)
    cc = tl.load(p_work + 6)
    return b, i, j, t, valid, m_c & valid, rc, cc


@triton.jit
def _token_patches_kernel(
    x_ptr,  # [B, H, W, T, C]
    keep_ptr,  # uint8 [B, C] (unused without HAS_KEEP)
    work_ptr,  # int64 [R, 7]
    tab_ptr,  # [2, n_classes, P, WIN]
    out_ptr,  # [R, P*P*C]
    H,
    W,
    T,
    C,
    p,
    margin,
    n_classes,
    P: tl.constexpr,
    WIN: tl.constexpr,
    WIN_PAD: tl.constexpr,
    BLOCK_C: tl.constexpr,
    SAME: tl.constexpr,
    HAS_KEEP: tl.constexpr,
):
    i_r = tl.program_id(0).to(tl.int64)
    o_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    m_c = o_c < C
    b, i, j, t, valid, m_cv, rc, cc = _work_row(work_ptr, i_r, o_c, m_c)
    K = P * P * C
    p_out = out_ptr + i_r * K
    acc_t = tab_ptr.dtype.element_ty
    if HAS_KEEP:
        b_keep = tl.load(keep_ptr + b * C + o_c, mask=m_c, other=0) != 0
    if SAME:
        for q1 in tl.static_range(P):
            for q2 in tl.static_range(P):
                src = x_ptr + (((b * H + i * P + q1) * W + j * P + q2) * T + t) * C + o_c
                b_x = tl.load(src, mask=m_cv, other=0)
                if HAS_KEEP:
                    b_x = b_x * b_keep.to(b_x.dtype)
                b_x = tl.where(valid, b_x, 0)
                tl.store(p_out + (q1 * P + q2) * C + o_c, b_x, mask=m_c)
    else:
        top = i * p - margin
        left = j * p - margin
        o_v = tl.arange(0, WIN_PAD).to(tl.int64)
        col = left + o_v
        m_v = (o_v < WIN) & (col >= 0) & (col < W)
        p_rw = tab_ptr + (rc * P) * WIN
        p_cw = tab_ptr + ((n_classes + cc) * P) * WIN
        for q1 in tl.static_range(P):
            b_rows = tl.zeros((WIN_PAD, BLOCK_C), dtype=acc_t)
            for u in tl.static_range(WIN):
                a = tl.load(p_rw + q1 * WIN + u)
                row = top + u + o_v * 0
                m_row = m_v & (row >= 0) & (row < H)
                src = x_ptr + (((b * H + row[:, None]) * W + col[:, None]) * T + t) * C + o_c[None, :]
                b_x = tl.load(src, mask=m_row[:, None] & m_cv[None, :], other=0)
                b_rows += a * b_x.to(acc_t)
            for q2 in tl.static_range(P):
                b_cw = tl.load(p_cw + q2 * WIN + o_v, mask=o_v < WIN, other=0)
                b_val = tl.sum(b_cw[:, None] * b_rows, axis=0)
                if HAS_KEEP:
                    b_val = b_val * b_keep.to(acc_t)
                b_val = tl.where(valid, b_val, 0)
                tl.store(p_out + (q1 * P + q2) * C + o_c, b_val.to(out_ptr.dtype.element_ty), mask=m_c)


@triton.jit
def _token_patches_backward_kernel(
    grad_ptr,  # [R, P*P*C]
    keep_ptr,  # uint8 [B, C] (unused without HAS_KEEP)
    work_ptr,  # int64 [R, 7]
    tab_ptr,  # [2, n_classes, P, WIN]
    dx_ptr,  # accumulation dtype [B, H, W, T, C], zero-initialised
    H,
    W,
    T,
    C,
    p,
    margin,
    n_classes,
    P: tl.constexpr,
    WIN: tl.constexpr,
    WIN_PAD: tl.constexpr,
    BLOCK_C: tl.constexpr,
    SAME: tl.constexpr,
    HAS_KEEP: tl.constexpr,
):
    i_r = tl.program_id(0).to(tl.int64)
    o_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    m_c = o_c < C
    b, i, j, t, valid, m_cv, rc, cc = _work_row(work_ptr, i_r, o_c, m_c)
    K = P * P * C
    p_grad = grad_ptr + i_r * K
    acc_t = tab_ptr.dtype.element_ty
    b_scale = tl.full((BLOCK_C,), 1, acc_t)
    if HAS_KEEP:
        b_scale = (tl.load(keep_ptr + b * C + o_c, mask=m_c, other=0) != 0).to(acc_t)
    if SAME:
        for q1 in tl.static_range(P):
            for q2 in tl.static_range(P):
                b_g = tl.load(p_grad + (q1 * P + q2) * C + o_c, mask=m_cv, other=0).to(acc_t) * b_scale
                dst = dx_ptr + (((b * H + i * P + q1) * W + j * P + q2) * T + t) * C + o_c
                tl.atomic_add(dst, b_g, mask=m_cv)
    else:
        top = i * p - margin
        left = j * p - margin
        o_v = tl.arange(0, WIN_PAD).to(tl.int64)
        col = left + o_v
        m_v = (o_v < WIN) & (col >= 0) & (col < W)
        p_rw = tab_ptr + (rc * P) * WIN
        p_cw = tab_ptr + ((n_classes + cc) * P) * WIN
        for q1 in tl.static_range(P):
            b_cols = tl.zeros((WIN_PAD, BLOCK_C), dtype=acc_t)
            for q2 in tl.static_range(P):
                b_cw = tl.load(p_cw + q2 * WIN + o_v, mask=o_v < WIN, other=0)
                b_g = tl.load(p_grad + (q1 * P + q2) * C + o_c, mask=m_cv, other=0).to(acc_t) * b_scale
                b_cols += b_cw[:, None] * b_g[None, :]
            for u in tl.static_range(WIN):
                a = tl.load(p_rw + q1 * WIN + u)
                row = top + u + o_v * 0
                m_row = m_v & (row >= 0) & (row < H)
                dst = dx_ptr + (((b * H + row[:, None]) * W + col[:, None]) * T + t) * C + o_c[None, :]
                tl.atomic_add(dst, a * b_cols, mask=m_row[:, None] & m_cv[None, :])


def _launch_args(x_shape, work, tables, patch):
    _, H, W, T, C = x_shape
    base, window = tables.shape[2], tables.shape[3]
    block_c = min(triton.next_power_of_2(max(C, 1)), 32)
    meta = dict(
        P=base,
        WIN=window,
        WIN_PAD=triton.next_power_of_2(window),
        BLOCK_C=block_c,
        SAME=patch == base,
    )
    grid = (work.shape[0], triton.cdiv(C, block_c))
    args = (H, W, T, C, patch, (window - patch) // 2, tables.shape[1])
    return grid, args, meta


def token_patches(x, keep, work, tables, patch):
    """Resized patches [R, P*P*C] of the tokens in ``work`` (see the file header)."""
    x = x.contiguous()
    work = work.contiguous()
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    tables = tables.to(device=x.device, dtype=acc).contiguous()
    base = tables.shape[2]
    out = torch.empty((work.shape[0], base * base * x.shape[-1]), dtype=x.dtype, device=x.device)
    if work.shape[0] == 0 or x.shape[-1] == 0:
        return out
    grid, args, meta = _launch_args(x.shape, work, tables, patch)
    keep_arg = keep.contiguous().view(torch.uint8) if keep is not None else x
    _token_patches_kernel[grid](x, keep_arg, work, tables, out, *args, HAS_KEEP=keep is not None, **meta)
    return out


def token_patches_backward(grad_patches, x_shape, keep, work, tables, patch):
    """grad_x [B, H, W, T, C] of :func:`token_patches` (the adjoint resize)."""
    grad_patches = grad_patches.contiguous()
    work = work.contiguous()
    acc = torch.float64 if grad_patches.dtype == torch.float64 else torch.float32
    tables = tables.to(device=grad_patches.device, dtype=acc).contiguous()
    dx = torch.zeros(tuple(x_shape), dtype=acc, device=grad_patches.device)
    if work.shape[0] and x_shape[-1]:
        grid, args, meta = _launch_args(x_shape, work, tables, patch)
        keep_arg = keep.contiguous().view(torch.uint8) if keep is not None else grad_patches
        _token_patches_backward_kernel[grid](
            grad_patches, keep_arg, work, tables, dx, *args, HAS_KEEP=keep is not None, **meta
        )
    return dx.to(grad_patches.dtype)
