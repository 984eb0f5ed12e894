# Patch embedding as implicit GEMMs: the patch matrix is never materialized.
#
#   x [B, H, W, T, C] channel-last, P = patch_size (H % P == 0, W % P == 0),
#   h = H / P, w = W / P, M = B * h * w * T tokens, K = P * P * C features.
#   A [M, K]: A[m, k] = x[b, i*P + p1, j*P + p2, t, c] * keep[b, c]
#       with m = ((b*h + i)*w + j)*T + t and k = (p1*P + p2)*C + c.
#   forward:  out [B, h, w, T, D] = A @ weight^T + bias        (weight [D, K])
#   backward: grad_weight [D, K] = G^T @ A                      (G = grad_out as [M, D])
#             grad_bias [D]      = G.sum(0)
#             grad_x[b, i*P+p1, j*P+p2, t, c] = (G @ weight)[m, k] * keep[b, c]
#
# A is gathered from x by pointer arithmetic on load (and grad_x scattered on
# store); because the patches tile the image exactly, each pixel of grad_x is
# written exactly once, so plain stores are enough. All products accumulate in
# fp32 (fp64 inputs are therefore computed at fp32 precision).

import torch
import triton
import triton.language as tl


@triton.jit
def _patch_row_offsets(o_m, T, C, P, NH, NW, H, W):
    # Token m -> offset of x[b, i*P, j*P, t, 0], plus b for the keep lookup.
    o_t = o_m % T
    o_r = o_m // T
    o_j = o_r % NW
    o_r = o_r // NW
    o_i = o_r % NH
    o_b = o_r // NH
    o_row = ((o_b * H + o_i * P) * W + o_j * P) * (T * C) + o_t * C
    return o_row, o_b


@triton.jit
def _patch_col_offsets(o_k, T, C, P, W):
    # Feature k -> offset of x[0, p1, p2, 0, c] relative to the patch corner, plus c.
    o_c = o_k % C
    o_q = o_k // C
    o_p2 = o_q % P
    o_p1 = o_q // P
    o_col = (o_p1 * W + o_p2) * (T * C) + o_c
    return o_col, o_c


@triton.jit
def _load_patches(x_ptr, keep_ptr, o_row, o_b, m_m, o_k, K, T, C, P, W, HAS_KEEP: tl.constexpr):
    # One [BLOCK_M, BLOCK_K] tile of A, already multiplied by keep, in fp32.
    o_col, o_c = _patch_col_offsets(o_k, T, C, P, W)
    m_mk = m_m[:, None] & (o_k < K)[None, :]
    b_a = tl.load(x_ptr + o_row[:, None] + o_col[None, :], mask=m_mk, other=0.0).to(tl.float32)
    if HAS_KEEP:
        # A real multiply (not a select) so NaN * 0 stays NaN like the reference.
        b_keep = tl.load(keep_ptr + o_b[:, None] * C + o_c[None, :], mask=m_mk, other=0)
        b_a = b_a * b_keep.to(tl.float32)
    return b_a


@triton.jit
def _patch_embed_fwd_kernel(
    x_ptr,
    w_ptr,  # [D, K]
    bias_ptr,  # [D] (unused without HAS_BIAS)
    keep_ptr,  # uint8 [B, C] (unused without HAS_KEEP)
    out_ptr,  # [M, D]
    M,
    D,
    K,
    T,
    C,
    P,
    NH,
    NW,
    H,
    W,
    HAS_BIAS: tl.constexpr,
    HAS_KEEP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    i_m = tl.program_id(0).to(tl.int64)
    i_d = tl.program_id(1).to(tl.int64)
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    m_m = o_m < M
    m_d = o_d < D
    o_row, o_b = _patch_row_offsets(o_m, T, C, P, NH, NW, H, W)

    b_acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        b_a = _load_patches(x_ptr, keep_ptr, o_row, o_b, m_m, o_k, K, T, C, P, W, HAS_KEEP)
        # B operand = weight^T: element (k, d) lives at weight[d, k].
        p_w = w_ptr + o_d[None, :] * K + o_k[:, None]
        b_w = tl.load(p_w, mask=(o_k < K)[:, None] & m_d[None, :], other=0.0).to(tl.float32)
        b_acc += tl.dot(b_a, b_w, input_precision=INPUT_PRECISION)

    if HAS_BIAS:
        b_bias = tl.load(bias_ptr + o_d, mask=m_d, other=0.0).to(tl.float32)
        b_acc += b_bias[None, :]
    p_out = out_ptr + o_m[:, None] * D + o_d[None, :]
    tl.store(p_out, b_acc.to(out_ptr.dtype.element_ty), mask=m_m[:, None] & m_d[None, :])


@triton.jit
def _patch_embed_bwd_weight_kernel(
    g_ptr,  # [M, D]
    x_ptr,
    keep_ptr,
    dw_ptr,  # [D, K]
    M,
    D,
    K,
    T,
    C,
    P,
    NH,
    NW,
    H,
    W,
    HAS_KEEP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    i_d = tl.program_id(0).to(tl.int64)
    i_k = tl.program_id(1).to(tl.int64)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    o_k = i_k * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
    m_d = o_d < D
    m_k = o_k < K

    b_acc = tl.zeros((BLOCK_D, BLOCK_K), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        o_m = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        m_m = o_m < M
        # G^T tile: element (d, m) lives at G[m, d].
        p_g = g_ptr + o_m[None, :] * D + o_d[:, None]
        b_g = tl.load(p_g, mask=m_d[:, None] & m_m[None, :], other=0.0).to(tl.float32)
        o_row, o_b = _patch_row_offsets(o_m, T, C, P, NH, NW, H, W)
        b_a = _load_patches(x_ptr, keep_ptr, o_row, o_b, m_m, o_k, K, T, C, P, W, HAS_KEEP)
        b_acc += tl.dot(b_g, b_a, input_precision=INPUT_PRECISION)

    p_dw = dw_ptr + o_d[:, None] * K + o_k[None, :]
    tl.store(p_dw, b_acc.to(dw_ptr.dtype.element_ty), mask=m_d[:, None] & m_k[None, :])


@triton.jit
def _patch_embed_bwd_input_kernel(
    g_ptr,  # [M, D]
    w_ptr,  # [D, K]
    keep_ptr,
    dx_ptr,  # [B, H, W, T, C]
    M,
    D,
    K,
    T,
    C,
    P,
    NH,
    NW,
    H,
    W,
    HAS_KEEP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    i_m = tl.program_id(0).to(tl.int64)
    i_k = tl.program_id(1).to(tl.int64)
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    o_k = i_k * BLOCK_K + tl.arange(0, BLOCK_K).to(tl.int64)
    m_m = o_m < M
    m_k = o_k < K

    b_acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        o_d = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        m_d = o_d < D
        b_g = tl.load(g_ptr + o_m[:, None] * D + o_d[None, :], mask=m_m[:, None] & m_d[None, :], other=0.0)
        b_w = tl.load(w_ptr + o_d[:, None] * K + o_k[None, :], mask=m_d[:, None] & m_k[None, :], other=0.0)
        b_acc += tl.dot(b_g.to(tl.float32), b_w.to(tl.float32), input_precision=INPUT_PRECISION)

    # Epilogue scatters the [token, feature] tile straight back into image positions.
    o_row, o_b = _patch_row_offsets(o_m, T, C, P, NH, NW, H, W)
    o_col, o_c = _patch_col_offsets(o_k, T, C, P, W)
    m_mk = m_m[:, None] & m_k[None, :]
    if HAS_KEEP:
        b_keep = tl.load(keep_ptr + o_b[:, None] * C + o_c[None, :], mask=m_mk, other=0)
        b_acc = b_acc * b_keep.to(tl.float32)
    tl.store(dx_ptr + o_row[:, None] + o_col[None, :], b_acc.to(dx_ptr.dtype.element_ty), mask=m_mk)


def _input_precision(device):
    # The interpreter (CPU tensors) only implements exact fp32 products.
    if device.type == "cpu":
        return "ieee"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _block(n, cap):
    # tl.dot needs every tile dimension >= 16; small problems get one small tile.
    return max(16, min(cap, triton.next_power_of_2(max(int(n), 1))))


def _caps(device):
    # The interpreter pays milliseconds per program and per loop iteration but
    # little per element: big tiles there, ordinary tensor-core tiles on GPU.
    if device.type == "cpu":
        return 128, 128, 128
    return 64, 64, 32


def _geometry(x_shape, patch_size):
    B, H, W, T, C = (int(s) for s in x_shape)
    P = int(patch_size)
    return B, H, W, T, C, P, H // P, W // P


def _keep_arg(keep, fallback):
    if keep is None:
        return fallback, False
    return keep.contiguous().view(torch.uint8), True


def patch_embed_forward(x, weight, bias, keep, patch_size):
    """out [B, H/P, W/P, T, D] in x.dtype; see the header for the semantics.

    Expects x [B, H, W, T, C] with H, W divisible by patch_size, weight [D, P*P*C],
    bias [D] or None, keep bool [B, C] or None, all on one device.
    """
    x = x.contiguous()
    weight = weight.contiguous()
    B, H, W, T, C, P, NH, NW = _geometry(x.shape, patch_size)
    D, K = int(weight.shape[0]), int(weight.shape[1])
    M = B * NH * NW * T
    out = torch.empty((B, NH, NW, T, D), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    if K == 0:
        return out.copy_(bias.expand_as(out)) if bias is not None else out.zero_()
    has_bias = bias is not None
    bias_arg = bias.contiguous() if has_bias else weight
    keep_arg, has_keep = _keep_arg(keep, x)
    cap_m, cap_d, cap_k = _caps(x.device)
    BLOCK_M, BLOCK_D, BLOCK_K = _block(M, cap_m), _block(D, cap_d), _block(K, cap_k)
    grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(D, BLOCK_D))
    _patch_embed_fwd_kernel[grid](
        x, weight, bias_arg, keep_arg, out,
        M, D, K, T, C, P, NH, NW, H, W,
        HAS_BIAS=has_bias,
        HAS_KEEP=has_keep,
        BLOCK_M=BLOCK_M,
        BLOCK_D=BLOCK_D,
        BLOCK_K=BLOCK_K,
        INPUT_PRECISION=_input_precision(x.device),
        num_warps=4,
    )
    return out


def patch_embed_backward(grad_out, x, weight, keep, patch_size, need_x, need_weight, need_bias):
    """(grad_x or None, grad_weight or None, grad_bias or None).

    Expects grad_out [B, H/P, W/P, T, D] and the forward's x, weight, keep and
    patch_size. grad_x has x.dtype; grad_weight and grad_bias have weight.dtype
    (bias is assumed to share the weight's dtype).
    """
    grad_out = grad_out.contiguous()
    x = x.contiguous()
    weight = weight.contiguous()
    B, H, W, T, C, P, NH, NW = _geometry(x.shape, patch_size)
    D, K = int(weight.shape[0]), int(weight.shape[1])
    M = B * NH * NW * T
    g = grad_out.reshape(M, D)
    keep_arg, has_keep = _keep_arg(keep, x)
    cap_m, cap_d, cap_k = _caps(x.device)
    BLOCK_M, BLOCK_D, BLOCK_K = _block(M, cap_m), _block(D, cap_d), _block(K, cap_k)
    precision = _input_precision(x.device)
    geometry = (M, D, K, T, C, P, NH, NW, H, W)

    grad_x = grad_weight = grad_bias = None
    if need_x:
        grad_x = torch.empty((B, H, W, T, C), dtype=x.dtype, device=x.device)
        if grad_x.numel() > 0:
            if D == 0:
                grad_x.zero_()
            else:
                grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(K, BLOCK_K))
                _patch_embed_bwd_input_kernel[grid](
                    g, weight, keep_arg, grad_x, *geometry,
                    HAS_KEEP=has_keep,
                    BLOCK_M=BLOCK_M,
                    BLOCK_D=BLOCK_D,
                    BLOCK_K=BLOCK_K,
                    INPUT_PRECISION=precision,
                    num_warps=4,
                )
    if need_weight:
        grad_weight = torch.empty((D, K), dtype=weight.dtype, device=weight.device)
        if grad_weight.numel() > 0:
            if M == 0:
                grad_weight.zero_()
            else:
                grid = (triton.cdiv(D, BLOCK_D), triton.cdiv(K, BLOCK_K))
                _patch_embed_bwd_weight_kernel[grid](
                    g, x, keep_arg, grad_weight, *geometry,
                    HAS_KEEP=has_keep,
                    BLOCK_M=BLOCK_M,
                    BLOCK_D=BLOCK_D,
                    BLOCK_K=BLOCK_K,
                    INPUT_PRECISION=precision,
                    num_warps=4,
                )
    if need_bias:
        # Sum half-precision gradients in fp32 (fp64 stays fp64), round once.
        acc_dtype = torch.promote_types(g.dtype, torch.float32)
        grad_bias = g.sum(0, dtype=acc_dtype).to(weight.dtype)
    return grad_x, grad_weight, grad_bias
