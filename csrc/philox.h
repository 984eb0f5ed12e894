// philox.h - Philox4x32-10 counter-based RNG, bit-exact with Triton's tl.rand.
//
//   philox_c0(seed, offset) -> uint32   first output word for counter (offset, 0, 0, 0)
//   uniform_from_bits(u32)  -> float    Triton's uint -> [0, 1) conversion
//   philox_uniform(seed, offset) -> float
//
// The CPU band-dropout mask must reproduce the GPU (Triton) mask exactly for a
// given seed, so every step below mirrors triton/language/random.py with
// 32-bit offsets (offset_hi == 0). Do not build this with -ffast-math: the
// int -> float conversion and the single float multiply must not be altered.
#pragma once

#include <cstdint>
#include <cstring>

namespace mim_fast {
namespace philox {

constexpr uint32_t kRoundA = 0xD2511F53u;
constexpr uint32_t kRoundB = 0xCD9E8D57u;
constexpr uint32_t kKeyA = 0x9E3779B9u;
constexpr uint32_t kKeyB = 0xBB67AE85u;
// Triton's literal 4.6566127342e-10, rounded to float32 exactly like the
// float32 constant Triton multiplies by.
constexpr float kUniformScale = 4.6566127342e-10f;

inline uint32_t umulhi(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

inline uint32_t philox_c0(int64_t seed, uint32_t offset) {
  const uint64_t useed = static_cast<uint64_t>(seed);
  uint32_t k0 = static_cast<uint32_t>(useed & 0xffffffffu);
  uint32_t k1 = static_cast<uint32_t>(useed >> 32);
  uint32_t c0 = offset, c1 = 0, c2 = 0, c3 = 0;
  for (int r = 0; r < 10; ++r) {
    const uint32_t p0 = c0, p2 = c2;
    c0 = umulhi(kRoundB, p2) ^ c1 ^ k0;
    c2 = umulhi(kRoundA, p0) ^ c3 ^ k1;
    c1 = kRoundB * p2;
    c3 = kRoundA * p0;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  return c0;
}

inline float uniform_from_bits(uint32_t bits) {
  int32_t x;
  std::memcpy(&x, &bits, sizeof(x));
  // ~x == -x - 1: folds the negative half onto [0, 2^31) without overflow.
  if (x < 0) x = ~x;
  const float xf = static_cast<float>(x);
  return xf * kUniformScale;
}

inline float philox_uniform(int64_t seed, uint32_t offset) {
  return uniform_from_bits(philox_c0(seed, offset));
}

}  // namespace philox
}  // namespace mim_fast
