"""Philox4x32-10 in plain PyTorch integer arithmetic, bit-exact with Triton's ``tl.rand``.

Every backend draws band-dropout uniforms from this generator so that one seed gives
the same mask on every backend:

    key     k0 = seed & 0xffffffff, k1 = (seed >> 32) & 0xffffffff
    counter c0 = offset (< 2**32), c1 = c2 = c3 = 0
    10 rounds of the Random123 Philox4x32 bijection, output word c0
    uniform = float32(x) * float32(4.6566127342e-10), x = int32(c0), negated bitwise if < 0

All arithmetic is on int64 tensors holding uint32 values; products of two uint32 values
overflow int64, so the high word of a product is assembled from 16-bit halves.
"""

import torch

_MASK32 = 0xFFFFFFFF
_MUL_A = 0xCD9E8D57
_MUL_B = 0xD2511F53
_KEY_STEP_0 = 0x9E3779B9
_KEY_STEP_1 = 0xBB67AE85
_UNIFORM_SCALE = 4.6566127342e-10


def _mul_hi_lo(a: torch.Tensor, constant: int):
    """(high 32 bits, low 32 bits) of ``a * constant`` for uint32 values held in int64."""
    c_hi, c_lo = constant >> 16, constant & 0xFFFF
    a_hi, a_lo = a >> 16, a & 0xFFFF
    lo_lo = a_lo * c_lo
    mid_1 = a_hi * c_lo
    mid_2 = a_lo * c_hi
    carry = (lo_lo >> 16) + (mid_1 & 0xFFFF) + (mid_2 & 0xFFFF)
    high = a_hi * c_hi + (mid_1 >> 16) + (mid_2 >> 16) + (carry >> 16)
    low = ((carry & 0xFFFF) << 16) | (lo_lo & 0xFFFF)
    return high & _MASK32, low


def philox_uint32(seed: int | torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """First output word of Philox4x32-10 for each counter value.

    Args:
        seed: 64-bit key (Python int or a one-element int64 tensor).
        offsets: int64 tensor of counters in [0, 2**32), any shape.

    Returns:
        int64 tensor of the same shape holding uint32 values.
    """
    device = offsets.device
    if isinstance(seed, torch.Tensor):
        seed_t = seed.reshape(()).to(device=device, dtype=torch.int64)
    else:
        seed_t = torch.tensor(int(seed) & 0xFFFFFFFFFFFFFFFF, dtype=torch.uint64).view(torch.int64)
        seed_t = seed_t.to(device)
    k0 = seed_t & _MASK32
    k1 = (seed_t >> 32) & _MASK32
    c0 = offsets.to(torch.int64) & _MASK32
    c1 = torch.zeros_like(c0)
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(10):
        hi_b, lo_b = _mul_hi_lo(c0, _MUL_B)
        hi_a, lo_a = _mul_hi_lo(c2, _MUL_A)
        c0, c1, c2, c3 = hi_a ^ c1 ^ k0, lo_a, hi_b ^ c3 ^ k1, lo_b
        k0 = (k0 + _KEY_STEP_0) & _MASK32
        k1 = (k1 + _KEY_STEP_1) & _MASK32
    return c0


def philox_uniform(seed: int | torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Uniform float32 in [0, 1) per counter, exactly as ``tl.rand(seed, offsets)``."""
    word = philox_uint32(seed, offsets)
    as_int32 = torch.where(word >= 2**31, word - 2**32, word)
    non_negative = torch.where(as_int32 < 0, -as_int32 - 1, as_int32)
    scale = torch.tensor(_UNIFORM_SCALE, dtype=torch.float32, device=offsets.device)
    return non_negative.to(torch.float32) * scale
