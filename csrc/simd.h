// simd.h - 8-wide float vectors (GCC vector extensions) and the inlining macro shared by the
// CPU kernels that are compiled once per instruction set (baseline, AVX2 + FMA; chosen at run time).
//
// Vector + scalar broadcasts the scalar; comparisons give lane masks usable in ?:. On the
// baseline ISA a vector is two SSE registers, with AVX2 one.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace mim_fast {

// Inlined into each instruction set's copy of a kernel, so the copy gets its own vector code.
#define MIM_FAST_INLINE __attribute__((always_inline)) inline

typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));

MIM_FAST_INLINE f32x8 load8(const float* p) {
  f32x8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
MIM_FAST_INLINE void store8(float* p, f32x8 v) { std::memcpy(p, &v, sizeof(v)); }
MIM_FAST_INLINE f32x8 splat8(float x) { return f32x8{} + x; }

// Float vectors of a chosen width: 8 lanes for AVX2 copies, 4 (one SSE / NEON register) for
// baseline copies, where wider GCC vectors are split through memory.
template <int kLanes>
struct FloatVec {
  typedef float type __attribute__((vector_size(4 * kLanes)));
  static MIM_FAST_INLINE type load(const float* p) {
    type v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static MIM_FAST_INLINE void store(float* p, type v) { std::memcpy(p, &v, sizeof(v)); }
};

// Whether to keep the baseline copies (MIM_FAST_CPU_BASELINE=1: lets the tests cover them on
// machines that would pick AVX2).
inline bool force_baseline_isa() {
  const char* env = std::getenv("MIM_FAST_CPU_BASELINE");
  return env != nullptr && env[0] == '1' && env[1] == '\0';
}

// Whether the AVX2 + FMA copies may run on this CPU.
inline bool use_avx2_fma() {
#if defined(__GNUC__) && defined(__x86_64__)
  static const bool yes = !force_baseline_isa() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
#else
  return false;
#endif
}

}  // namespace mim_fast
