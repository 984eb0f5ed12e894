# Masked token gather / scatter for variable-length encoders.
#
#   gather_indices(keep bool [B, N]) -> (indices int64 [B, N], seqlens int64 [B])
#       indices[b] is the stable partition of 0..N-1: kept positions in increasing
#       order, then removed ones in increasing order
#       (== torch.sort(keep.int(), 1, descending=True, stable=True).indices);
#       seqlens = keep.sum(1).
#   pack_rows(x [B, N, D], indices [B, N], mask bool [B, L]) -> tokens [B, L, D]
#       tokens[b, l] = x[b, indices[b, l]] if l < N and mask[b, l] else 0.
#   unpack_rows(tokens [B, L, D], indices [B, N], mask [B, L], N) -> out [B, N, D]
#       out = 0, then out[b, indices[b, l]] = tokens[b, l] for l < min(L, N) with
#       mask[b, l]; indices are a permutation, so plain stores never collide.
#
# pack/unpack only move data: values are copied in their own dtype (no fp32 round
# trip), so fp64 and NaN payloads survive bit-exactly.

import torch
import triton
import triton.language as tl


@triton.jit
def _gather_indices_kernel(
    keep_ptr,  # uint8 [B, N]
    idx_ptr,  # int64 [B, N]
    len_ptr,  # int64 [B]
    N,
    BLOCK_N: tl.constexpr,
):
    # One program per row; any N works by walking it in chunks with running counts.
    i_b = tl.program_id(0).to(tl.int64)
    p_keep = keep_ptr + i_b * N
    p_idx = idx_ptr + i_b * N

    # Pass 1: number of kept positions = where the removed positions start.
    n_kept = tl.full((), 0, tl.int64)
    for n0 in range(0, N, BLOCK_N):
        o_n = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        b_keep = tl.load(p_keep + o_n, mask=o_n < N, other=0) != 0
        n_kept += tl.sum(b_keep.to(tl.int64), axis=0)

    # Pass 2: destination = exclusive prefix count within the own group.
    kept_before = tl.full((), 0, tl.int64)
    for n0 in range(0, N, BLOCK_N):
        o_n = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        m_n = o_n < N
        b_keep = tl.load(p_keep + o_n, mask=m_n, other=0) != 0
        b_k = b_keep.to(tl.int64)
        b_kept_incl = tl.cumsum(b_k, axis=0)
        b_dst_kept = kept_before + b_kept_incl - 1
        # Removed positions seen so far = positions seen so far - kept seen so far.
        b_dst_removed = n_kept + (o_n - kept_before - b_kept_incl + b_k)
        b_dst = tl.where(b_keep, b_dst_kept, b_dst_removed)
        tl.store(p_idx + b_dst, o_n, mask=m_n)
        kept_before += tl.sum(b_k, axis=0)

    tl.store(len_ptr + i_b, n_kept)


@triton.jit
def _pack_rows_kernel(
    x_ptr,  # [B, N, D]
    idx_ptr,  # int64 [B, N]
    mask_ptr,  # uint8 [B, L]
    out_ptr,  # [B, L, D]
    N,
    L,
    D,
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    i_l = tl.program_id(1).to(tl.int64)
    o_l = i_l * BLOCK_L + tl.arange(0, BLOCK_L).to(tl.int64)
    m_l = o_l < L
    m_src = m_l & (o_l < N)
    b_mask = tl.load(mask_ptr + i_b * L + o_l, mask=m_l, other=0) != 0
    m_src = m_src & b_mask
    b_src = tl.load(idx_ptr + i_b * N + o_l, mask=m_src, other=0).to(tl.int64)

    p_x = x_ptr + (i_b * N + b_src)[:, None] * D
    p_out = out_ptr + (i_b * L + o_l)[:, None] * D
    for d0 in range(0, D, BLOCK_D):
        o_d = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        m_d = o_d < D
        # Rows without a source read nothing and store exact zeros.
        b_x = tl.load(p_x + o_d[None, :], mask=m_src[:, None] & m_d[None, :], other=0)
        tl.store(p_out + o_d[None, :], b_x, mask=m_l[:, None] & m_d[None, :])


@triton.jit
def _unpack_rows_kernel(
    tok_ptr,  # [B, L, D]
    idx_ptr,  # int64 [B, N]
    mask_ptr,  # uint8 [B, L]
    out_ptr,  # [B, N, D], zero-filled by the launcher
    N,
    L,
    D,
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    i_l = tl.program_id(1).to(tl.int64)
    o_l = i_l * BLOCK_L + tl.arange(0, BLOCK_L).to(tl.int64)
    m_l = (o_l < L) & (o_l < N)
    b_mask = tl.load(mask_ptr + i_b * L + o_l, mask=m_l, other=0) != 0
    m_l = m_l & b_mask
    b_dst = tl.load(idx_ptr + i_b * N + o_l, mask=m_l, other=0).to(tl.int64)

    p_tok = tok_ptr + (i_b * L + o_l)[:, None] * D
    p_out = out_ptr + (i_b * N + b_dst)[:, None] * D
    for d0 in range(0, D, BLOCK_D):
        o_d = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        m_ld = m_l[:, None] & (o_d < D)[None, :]
        b_tok = tl.load(p_tok + o_d[None, :], mask=m_ld, other=0)
        tl.store(p_out + o_d[None, :], b_tok, mask=m_ld)


def _row_blocks(device, L, D):
    # The interpreter pays per program and per loop iteration: one big tile there.
    if device.type == "cpu":
        cap_l, cap_d = 256, 256
    else:
        cap_l, cap_d = 32, 128
    BLOCK_L = max(1, min(cap_l, triton.next_power_of_2(max(int(L), 1))))
    BLOCK_D = max(16, min(cap_d, triton.next_power_of_2(max(int(D), 1))))
    return BLOCK_L, BLOCK_D


def gather_indices(keep):
    """(indices int64 [B, N], seqlens int64 [B]) for keep bool [B, N]."""
    keep = keep.contiguous()
    B, N = (int(s) for s in keep.shape)
    indices = torch.empty((B, N), dtype=torch.int64, device=keep.device)
    seqlens = torch.empty((B,), dtype=torch.int64, device=keep.device)
    if B == 0:
        return indices, seqlens
    cap = 16384 if keep.device.type == "cpu" else 1024
    BLOCK_N = max(16, min(cap, triton.next_power_of_2(max(N, 1))))
    _gather_indices_kernel[(B,)](keep.view(torch.uint8), indices, seqlens, N, BLOCK_N=BLOCK_N)
    return indices, seqlens


def pack_rows(x, indices, mask):
    """tokens [B, L, D] in x.dtype; see the header.

    Expects x [B, N, D], indices int64 [B, N] (e.g. from gather_indices), mask bool
    [B, L] with L possibly larger than N.
    """
    x = x.contiguous()
    indices = indices.contiguous()
    mask = mask.contiguous()
    B, N, D = (int(s) for s in x.shape)
    L = int(mask.shape[1])
    tokens = torch.empty((B, L, D), dtype=x.dtype, device=x.device)
    if tokens.numel() == 0:
        return tokens
    BLOCK_L, BLOCK_D = _row_blocks(x.device, L, D)
    grid = (B, triton.cdiv(L, BLOCK_L))
    _pack_rows_kernel[grid](
        x, indices, mask.view(torch.uint8), tokens, N, L, D, BLOCK_L=BLOCK_L, BLOCK_D=BLOCK_D
    )
    return tokens


def unpack_rows(tokens, indices, mask, num_tokens):
    """out [B, num_tokens, D] in tokens.dtype; see the header.

    Expects tokens [B, L, D], indices int64 [B, num_tokens] holding a permutation
    per row, mask bool [B, L].
    """
    tokens = tokens.contiguous()
    indices = indices.contiguous()
    mask = mask.contiguous()
    B, L, D = (int(s) for s in tokens.shape)
    N = int(num_tokens)
    out = torch.zeros((B, N, D), dtype=tokens.dtype, device=tokens.device)
    rows = min(L, N)
    if out.numel() == 0 or rows == 0:
        return out
    BLOCK_L, BLOCK_D = _row_blocks(tokens.device, rows, D)
    grid = (B, triton.cdiv(rows, BLOCK_L))
    _unpack_rows_kernel[grid](
        tokens, indices, mask.view(torch.uint8), out, N, L, D, BLOCK_L=BLOCK_L, BLOCK_D=BLOCK_D
    )
    return out
