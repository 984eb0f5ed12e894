// tap_sums.h - weighted sums of a few strided rows, the inner kernel of the separable resize
// (token_patch_rows.h) and of folding it into a weight (fold_weight.cpp).
//
//   dst[k] = sum_{u in [lo, hi)} w[u] * src[u * stride + k]   (times scale[k] when given), k < n
//
// The n sums are held in registers over all taps (kLanes-wide float vectors, simd.h), so each
// output is written once instead of once per tap. Always inlined: each instruction set's copy
// of a caller gets its own vector code.
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "simd.h"

namespace mim_fast {

// One block of N sums (kLanes-wide vectors when N is a multiple of kLanes and all types are float).
template <int N, int kLanes, bool kScale, typename out_t, typename in_t, typename acc_t>
MIM_FAST_INLINE void tap_block(out_t* __restrict dst, const in_t* __restrict src, int64_t stride,
                               const acc_t* __restrict w, int64_t lo, int64_t hi, const acc_t* __restrict scale) {
  constexpr bool kVector = N % kLanes == 0 && std::is_same_v<out_t, float> && std::is_same_v<in_t, float> &&
                           std::is_same_v<acc_t, float>;
  if constexpr (kVector) {
    using Vec = FloatVec<kLanes>;
    constexpr int V = N / kLanes;
    typename Vec::type a[V];
    for (int k = 0; k < V; ++k) a[k] = typename Vec::type{};
    for (int64_t u = lo; u < hi; ++u) {
      const float wu = w[u];
      const float* s = src + u * stride;
      for (int k = 0; k < V; ++k) a[k] += Vec::load(s + kLanes * k) * wu;
    }
    for (int k = 0; k < V; ++k)
      Vec::store(dst + kLanes * k, kScale ? a[k] * Vec::load(scale + kLanes * k) : a[k]);
  } else {
    acc_t a[N];
    for (int k = 0; k < N; ++k) a[k] = acc_t(0);
    for (int64_t u = lo; u < hi; ++u) {
      const acc_t wu = w[u];
      const in_t* s = src + u * stride;
      for (int k = 0; k < N; ++k) a[k] += wu * static_cast<acc_t>(s[k]);
    }
    for (int k = 0; k < N; ++k) dst[k] = static_cast<out_t>(kScale ? a[k] * scale[k] : a[k]);
  }
}

// tap_block over a run of n values, in blocks of 4 * kLanes (as many sums as fit in registers
// with the loads), kLanes, 4 and 1.
template <int kLanes, bool kScale, typename out_t, typename in_t, typename acc_t>
MIM_FAST_INLINE void tap_run(out_t* dst, const in_t* src, int64_t stride, const acc_t* w, int64_t lo, int64_t hi,
                             const acc_t* scale, int64_t n) {
  constexpr int kBlock = 4 * kLanes;
  int64_t k = 0;
  for (; k + kBlock <= n; k += kBlock)
    tap_block<kBlock, kLanes, kScale>(dst + k, src + k, stride, w, lo, hi, scale + (kScale ? k : 0));
  for (; k + kLanes <= n; k += kLanes)
    tap_block<kLanes, kLanes, kScale>(dst + k, src + k, stride, w, lo, hi, scale + (kScale ? k : 0));
  for (; k + 4 <= n; k += 4) tap_block<4, kLanes, kScale>(dst + k, src + k, stride, w, lo, hi, scale + (kScale ? k : 0));
  for (; k < n; ++k) tap_block<1, kLanes, kScale>(dst + k, src + k, stride, w, lo, hi, scale + (kScale ? k : 0));
}

// Non-zero range [lo, hi) of every row of a [n, m] table (the taps tap_run visits).
template <typename acc_t>
std::vector<std::pair<int64_t, int64_t>> nonzero_ranges(const acc_t* table, int64_t n, int64_t m) {
  std::vector<std::pair<int64_t, int64_t>> out(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) {
    int64_t lo = 0, hi = m;
    while (lo < hi && table[r * m + lo] == acc_t(0)) ++lo;
    while (hi > lo && table[r * m + hi - 1] == acc_t(0)) --hi;
    out[r] = {lo, hi};
  }
  return out;
}

// Transposed [m, n] copy of a [n, m] table: the taps of each output as one contiguous row.
template <typename acc_t>
std::vector<acc_t> transposed(const acc_t* table, int64_t n, int64_t m) {
  std::vector<acc_t> out(static_cast<size_t>(n * m));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < m; ++c) out[c * n + r] = table[r * m + c];
  return out;
}

}  // namespace mim_fast
