# Band (spectral channel) dropout.
#
#   band_dropout_mask(seed, rate, B, C) -> keep bool [B, C]
#       r = clamp(rate, 0, 1) in fp32, u[b, c] = tl.rand(seed, int32(b * C + c)),
#       keep = u >= r; a row that would keep nothing keeps its argmax_c u[b, c]
#       (first index on ties), so every sample keeps at least one band.
#   philox_uniform(seed, n) -> fp32 [n] = tl.rand(seed, arange(n))
#   band_dropout_apply(x [B, M, C], keep [B, C]) -> y = x * keep[:, None, :]
#       as a real multiply by 1.0 / 0.0, so NaN * 0 stays NaN like the reference.
#
# seed is a one-element int64 tensor and rate a one-element float tensor, both on
# the device: reading them in the kernel avoids a host sync per step.

import torch
import triton
import triton.language as tl


@triton.jit
def _band_dropout_mask_kernel(
    seed_ptr,
    rate_ptr,
    keep_ptr,  # uint8 view of the bool output [B, C]
    B,
    C,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # Several rows per program; a whole row fits in one block (C is a band count).
    i_b = tl.program_id(0).to(tl.int64)
    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    o_c = tl.arange(0, BLOCK_C).to(tl.int64)
    m_b = o_b < B
    m_c = o_c < C
    m_bc = m_b[:, None] & m_c[None, :]

    b_seed = tl.load(seed_ptr).to(tl.int64)
    b_rate = tl.load(rate_ptr).to(tl.float32)
    b_rate = tl.minimum(tl.maximum(b_rate, 0.0), 1.0)

    o_flat = o_b[:, None] * C + o_c[None, :]
    # The counter is the int32 flat index on every backend (wraps past 2^31).
    b_u = tl.rand(b_seed, o_flat.to(tl.int32))
    b_keep = (b_u >= b_rate) & m_bc

    # Fallback: padding columns get -1 so they never hold the row maximum (u >= 0).
    b_u = tl.where(m_bc, b_u, -1.0)
    b_max = tl.max(b_u, axis=1)
    b_first = tl.min(tl.where(b_u == b_max[:, None], o_c[None, :], BLOCK_C), axis=1)
    b_count = tl.sum(b_keep.to(tl.int32), axis=1)
    b_rescue = (b_count == 0)[:, None] & (o_c[None, :] == b_first[:, None])
    b_keep = b_keep | b_rescue

    tl.store(keep_ptr + o_flat, b_keep.to(tl.uint8), mask=m_bc)


@triton.jit
def _philox_uniform_kernel(seed_ptr, out_ptr, N, BLOCK: tl.constexpr):
    i_n = tl.program_id(0).to(tl.int64)
    o_n = i_n * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    m_n = o_n < N
    b_seed = tl.load(seed_ptr).to(tl.int64)
    b_u = tl.rand(b_seed, o_n.to(tl.int32))
    tl.store(out_ptr + o_n, b_u, mask=m_n)


@triton.jit
def _band_dropout_apply_kernel(
    x_ptr,
    keep_ptr,  # uint8 view of keep [B, C]
    y_ptr,
    MC,  # M * C: elements per sample
    C,
    BLOCK: tl.constexpr,
):
    # Axis 0 holds the (possibly huge) chunk count: it has the 2^31 grid limit,
    # axis 1 (batch) only 65535.
    i_n = tl.program_id(0).to(tl.int64)
    i_b = tl.program_id(1).to(tl.int64)
    o_n = i_n * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    m_n = o_n < MC
    o_c = o_n % C

    b_x = tl.load(x_ptr + i_b * MC + o_n, mask=m_n, other=0.0)
    # fp64 stays fp64 (an fp32 round trip would change values); everything else
    # goes to fp32 because the interpreter gets bf16 arithmetic wrong.
    if tl.constexpr(b_x.dtype != tl.float64):
        b_x = b_x.to(tl.float32)
    b_k = tl.load(keep_ptr + i_b * C + o_c, mask=m_n, other=0).to(b_x.dtype)
    b_y = b_x * b_k
    tl.store(y_ptr + i_b * MC + o_n, b_y.to(y_ptr.dtype.element_ty), mask=m_n)


def _on_interpreter(device):
    # Triton only runs on CPU tensors through the interpreter, where a program
    # costs milliseconds: use big blocks there so small inputs take few programs.
    return device.type == "cpu"


def band_dropout_mask(seed, rate, batch_size, num_bands):
    """keep bool [batch_size, num_bands]; see the header for the semantics.

    Expects: seed a one-element int64 tensor, rate a one-element floating tensor,
    both on the device the mask should live on.
    """
    seed = seed.contiguous()
    rate = rate.contiguous()
    B, C = int(batch_size), int(num_bands)
    keep = torch.empty((B, C), dtype=torch.bool, device=seed.device)
    if B == 0 or C == 0:
        return keep
    BLOCK_C = max(triton.next_power_of_2(C), 2)
    budget = 16384 if _on_interpreter(seed.device) else 1024
    BLOCK_B = max(1, min(triton.next_power_of_2(B), budget // BLOCK_C))
    grid = (triton.cdiv(B, BLOCK_B),)
    _band_dropout_mask_kernel[grid](
        seed, rate, keep.view(torch.uint8), B, C, BLOCK_B=BLOCK_B, BLOCK_C=BLOCK_C
    )
    return keep


def philox_uniform(seed, n):
    """fp32 [n] = tl.rand(seed, arange(n)); seed a one-element int64 tensor."""
    seed = seed.contiguous()
    n = int(n)
    out = torch.empty((n,), dtype=torch.float32, device=seed.device)
    if n == 0:
        return out
    BLOCK = 65536 if _on_interpreter(seed.device) else 1024
    BLOCK = min(BLOCK, max(triton.next_power_of_2(n), 16))
    _philox_uniform_kernel[(triton.cdiv(n, BLOCK),)](seed, out, n, BLOCK=BLOCK)
    return out


def band_dropout_apply(x, keep):
    """y = x * keep[:, None, :] for x [B, M, C] (floating) and keep bool [B, C]."""
    x = x.contiguous()
    keep = keep.contiguous()
    B, M, C = x.shape
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    MC = M * C
    if y.numel() == 0:
        return y
    BLOCK = 65536 if _on_interpreter(x.device) else 1024
    BLOCK = min(BLOCK, max(triton.next_power_of_2(MC), 16))
    grid = (triton.cdiv(MC, BLOCK), B)
    _band_dropout_apply_kernel[grid](x, keep.view(torch.uint8), y, MC, C, BLOCK=BLOCK)
    return y
