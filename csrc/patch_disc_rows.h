// patch_disc_rows.h - the per-sample row passes of the patch discrimination kernel
// (patch_disc.cpp): gather + normalise the selected rows, the masked / shifted score rows,
// the softmax or log-sum-exp, and the normalisation's backward.
//
// Scalar templates serve float64; float uses 8-wide GCC vector code, compiled for the
// baseline ISA and for AVX2 + FMA (chosen at run time). Included by patch_disc.cpp only
// (everything here has internal linkage).
#pragma once

#include <ATen/ATen.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "simd.h"

namespace mim_fast {
namespace {

constexpr double kNormEps = 1e-12;  // F.normalize's default eps

// The scalar templates below are the float64 path (tests, gradcheck); float runs the
// 8-wide vector versions further down, so these stay plain loops.
template <typename scalar_t>
MIM_FAST_INLINE scalar_t row_dot(const scalar_t* x, const scalar_t* y, int64_t n) {
  scalar_t total = 0;
  for (int64_t j = 0; j < n; ++j) total += x[j] * y[j];
  return total;
}

template <typename scalar_t>
MIM_FAST_INLINE scalar_t row_max(const scalar_t* x, int64_t n) {
  scalar_t m = -std::numeric_limits<scalar_t>::infinity();
  for (int64_t j = 0; j < n; ++j) m = m < x[j] ? x[j] : m;
  return m;
}

// Copies sample b's kept rows of x [B, N, D] into out [c, D], normalised; inv_norm[i] = 1 / max(|x_i|, eps).
template <typename scalar_t>
MIM_FAST_INLINE void gather_normalized(const scalar_t* x, int64_t N, int64_t D, int64_t b, const int64_t* rows, int64_t c,
                       scalar_t* out, scalar_t* inv_norm) {
  // The kept rows are scattered through x: prefetch a few rows ahead, since the input
  // usually comes cold from memory and the hardware prefetcher does not follow the gaps.
  constexpr int64_t kAhead = 12;
  const int64_t line = 64 / static_cast<int64_t>(sizeof(scalar_t));
  for (int64_t i = 0; i < c; ++i) {
    if (i + kAhead < c) {
      const scalar_t* next = x + (b * N + rows[i + kAhead]) * D;
      for (int64_t d = 0; d < D; d += line) __builtin_prefetch(next + d);
    }
    const scalar_t* src = x + (b * N + rows[i]) * D;
    const scalar_t inv = scalar_t(1) / std::max(std::sqrt(row_dot(src, src, D)), scalar_t(kNormEps));
    inv_norm[i] = inv;
    scalar_t* dst = out + i * D;
    for (int64_t d = 0; d < D; ++d) dst[d] = src[d] * inv;
  }
}

// Adds the normalisation's backward of dy [c, D] (w.r.t. y = x * inv_norm) into the kept rows of grad [B, N, D].
template <typename scalar_t>
MIM_FAST_INLINE void scatter_normalize_backward(const scalar_t* y, const scalar_t* dy, const scalar_t* inv_norm, int64_t c, int64_t D,
                                int64_t N, int64_t b, const int64_t* rows, scalar_t* grad) {
  const scalar_t eps_inv = scalar_t(1.0 / kNormEps);
  for (int64_t i = 0; i < c; ++i) {
    const scalar_t* yi = y + i * D;
    const scalar_t* gi = dy + i * D;
    scalar_t* out = grad + (b * N + rows[i]) * D;
    if (inv_norm[i] >= eps_inv) {  // |x| <= eps: y = x / eps, a linear map
      for (int64_t d = 0; d < D; ++d) out[d] = gi[d] * eps_inv;
      continue;
    }
    const scalar_t dot = row_dot(yi, gi, D);
    for (int64_t d = 0; d < D; ++d) out[d] = (gi[d] - yi[d] * dot) * inv_norm[i];
  }
}

// First pass over one sample's c x c block: out = scores / tau, removed negatives
// (same_ij > thr, j != i; same == nullptr when nothing is removed) at -inf, each row
// shifted by its max. Returns sum_i (max_i - positive_i), or sets *skip and stops when
// some row has no column with same_ij <= thr (the sample does not contribute).
template <typename scalar_t>
MIM_FAST_INLINE scalar_t shift_rows(scalar_t* out, const scalar_t* scores, const scalar_t* same, int64_t c,
                                    int64_t ld, scalar_t tau, scalar_t thr, bool* skip) {
  const scalar_t inf = std::numeric_limits<scalar_t>::infinity();
  scalar_t total = 0;
  for (int64_t i = 0; i < c; ++i) {
    scalar_t* row = out + i * c;
    const scalar_t* score_row = scores + i * ld;
    for (int64_t j = 0; j < c; ++j) row[j] = score_row[j] / tau;
    const scalar_t positive = row[i];
    if (same != nullptr) {
      const scalar_t* sim_row = same + i * ld;
      int32_t negatives = 0;
      for (int64_t j = 0; j < c; ++j) {
        const bool removed = sim_row[j] > thr;
        negatives += removed ? 0 : 1;
        row[j] = removed ? -inf : row[j];
      }
      if (negatives == 0) {
        *skip = true;
        return 0;
      }
      row[i] = positive;
    }
    const scalar_t m = row_max(row, c);
    for (int64_t j = 0; j < c; ++j) row[j] -= m;
    total += m - positive;
  }
  return total;
}

// exp(x) for x <= 0 (a row shifted by its max), 0 below float's normal range (and for
// -inf). Branch-free so that it vectorises: x = n ln2 + r with |r| <= ln2 / 2 (ln2 split
// in two parts for an exact reduction), exp(r) by the degree-6 minimax polynomial of the
// Cephes expf (about 1 ulp), then 2^n built in the exponent bits.
MIM_FAST_INLINE float exp_nonpositive(float x) {
  const float lowest = -87.33654f;  // exp(lowest) ~ FLT_MIN
  const float xc = x >= lowest ? x : lowest;  // NaN -> lowest here (no undefined int conversion) ...
  const float fn = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = (xc - fn * 0.693359375f) - fn * -2.12194440e-4f;
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  const float e_r = poly * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(fn) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < lowest ? 0.0f : (x == x ? e_r * scale : x);  // ... and it stays NaN in the result
}

MIM_FAST_INLINE double exp_nonpositive(double x) { return std::exp(x); }

// Second pass: exp of the shifted rows, each divided by its sum (the softmax). Returns
// sum_i log(sum_i).
template <typename scalar_t>
MIM_FAST_INLINE scalar_t softmax_rows(scalar_t* out, int64_t c) {
  scalar_t total = 0;
  for (int64_t i = 0; i < c; ++i) {
    scalar_t* row = out + i * c;
    scalar_t sum = 0;
    for (int64_t j = 0; j < c; ++j) {
      row[j] = exp_nonpositive(row[j]);
      sum += row[j];
    }
    const scalar_t inv_sum = scalar_t(1) / sum;
    for (int64_t k = 0; k < c; ++k) row[k] *= inv_sum;
    total += std::log(sum);
  }
  return total;
}

// Second pass without the softmax (nothing saved for a backward): returns
// sum_i log(sum_j exp(row_ij)) and writes nothing.
template <typename scalar_t>
MIM_FAST_INLINE scalar_t log_sum_exp_rows(const scalar_t* rows, int64_t c) {
  scalar_t total = 0;
  for (int64_t i = 0; i < c; ++i) {
    const scalar_t* row = rows + i * c;
    scalar_t sum = 0;
    for (int64_t j = 0; j < c; ++j) sum += exp_nonpositive(row[j]);
    total += std::log(sum);
  }
  return total;
}

// Float versions of the passes on 8-wide GCC vectors: the compiler does not vectorise the
// scalar templates' exp and select loops well. Vector + scalar broadcasts the scalar;
// comparisons give lane masks usable in ?:. Tails (c % 8) reuse the scalar code.
MIM_FAST_INLINE float hsum8(f32x8 v) {
  float lanes[8];
  std::memcpy(lanes, &v, sizeof(v));
  return ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
}
MIM_FAST_INLINE float hmax8(f32x8 v) {
  float lanes[8];
  std::memcpy(lanes, &v, sizeof(v));
  float m = lanes[0];
  for (int l = 1; l < 8; ++l) m = m < lanes[l] ? lanes[l] : m;
  return m;
}
MIM_FAST_INLINE f32x8 vmax8(f32x8 a, f32x8 b) { return a < b ? b : a; }

// exp_nonpositive on 8 lanes (same steps).
MIM_FAST_INLINE f32x8 exp8(f32x8 x) {
  const f32x8 lowest = splat8(-87.33654f);
  const f32x8 xc = x >= lowest ? x : lowest;
  const f32x8 fn = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const f32x8 r = (xc - fn * 0.693359375f) - fn * -2.12194440e-4f;
  f32x8 poly = splat8(1.9875691500e-4f);
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  const f32x8 e_r = poly * r * r + r + 1.0f;
  const i32x8 bits = (__builtin_convertvector(fn, i32x8) + 127) << 23;
  f32x8 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < lowest ? f32x8{} : (x == x ? e_r * scale : x);
}

MIM_FAST_INLINE float dot_f32(const float* x, const float* y, int64_t n) {
  f32x8 a0 = {}, a1 = {};
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    a0 += load8(x + j) * load8(y + j);
    a1 += load8(x + j + 8) * load8(y + j + 8);
  }
  for (; j + 8 <= n; j += 8) a0 += load8(x + j) * load8(y + j);
  float total = hsum8(a0 + a1);
  for (; j < n; ++j) total += x[j] * y[j];
  return total;
}

MIM_FAST_INLINE void gather_f32(const float* x, int64_t N, int64_t D, int64_t b, const int64_t* rows, int64_t c,
                                float* out, float* inv_norm) {
  constexpr int64_t kAhead = 16;  // rows are scattered: prefetch a few ahead
  for (int64_t i = 0; i < c; ++i) {
    if (i + kAhead < c) {
      const float* next = x + (b * N + rows[i + kAhead]) * D;
      for (int64_t d = 0; d < D; d += 16) __builtin_prefetch(next + d);
    }
    const float* src = x + (b * N + rows[i]) * D;
    const float inv = 1.0f / std::max(std::sqrt(dot_f32(src, src, D)), float(kNormEps));
    inv_norm[i] = inv;
    float* dst = out + i * D;
    int64_t d = 0;
    for (; d + 8 <= D; d += 8) store8(dst + d, load8(src + d) * inv);
    for (; d < D; ++d) dst[d] = src[d] * inv;
  }
}

MIM_FAST_INLINE void scatter_f32(const float* y, const float* dy, const float* inv_norm, int64_t c, int64_t D,
                                 int64_t N, int64_t b, const int64_t* rows, float* grad) {
  const float eps_inv = float(1.0 / kNormEps);
  for (int64_t i = 0; i < c; ++i) {
    const float* yi = y + i * D;
    const float* gi = dy + i * D;
    float* out = grad + (b * N + rows[i]) * D;
    const float scale = inv_norm[i] >= eps_inv ? eps_inv : inv_norm[i];
    const float dot = inv_norm[i] >= eps_inv ? 0.0f : dot_f32(yi, gi, D);
    int64_t d = 0;
    for (; d + 8 <= D; d += 8) store8(out + d, (load8(gi + d) - load8(yi + d) * dot) * scale);
    for (; d < D; ++d) out[d] = (gi[d] - yi[d] * dot) * scale;
  }
}

MIM_FAST_INLINE float shift_f32(float* out, const float* scores, const float* same, int64_t c, int64_t ld, float tau,
                                float thr, bool* skip) {
  const float inf = std::numeric_limits<float>::infinity();
  const f32x8 neg_inf = splat8(-inf);
  float total = 0;
  for (int64_t i = 0; i < c; ++i) {
    float* row = out + i * c;
    const float* score_row = scores + i * ld;
    const float positive = score_row[i] / tau;
    f32x8 vmax = neg_inf;
    float m = -inf;
    int64_t j = 0;
    if (same != nullptr) {
      const float* sim_row = same + i * ld;
      i32x8 removed_lanes = {};
      int32_t removed = 0;
      for (; j + 8 <= c; j += 8) {
        const i32x8 drop = load8(sim_row + j) > thr;  // lanes: -1 where removed
        const f32x8 v = drop ? neg_inf : load8(score_row + j) / tau;
        removed_lanes += drop;
        store8(row + j, v);
        vmax = vmax8(vmax, v);
      }
      for (; j < c; ++j) {
        const bool drop = sim_row[j] > thr;
        removed += drop ? 1 : 0;
        row[j] = drop ? -inf : score_row[j] / tau;
        m = m < row[j] ? row[j] : m;
      }
      for (int l = 0; l < 8; ++l) removed -= removed_lanes[l];
      if (removed == c) {  // no column left with same_ij <= thr
        *skip = true;
        return 0;
      }
      row[i] = positive;
    } else {
      for (; j + 8 <= c; j += 8) {
        const f32x8 v = load8(score_row + j) / tau;
        store8(row + j, v);
        vmax = vmax8(vmax, v);
      }
      for (; j < c; ++j) {
        row[j] = score_row[j] / tau;
        m = m < row[j] ? row[j] : m;
      }
    }
    m = std::max(std::max(m, hmax8(vmax)), positive);
    j = 0;
    for (; j + 8 <= c; j += 8) store8(row + j, load8(row + j) - m);
    for (; j < c; ++j) row[j] -= m;
    total += m - positive;
  }
  return total;
}

MIM_FAST_INLINE float softmax_f32(float* out, int64_t c) {
  float total = 0;
  for (int64_t i = 0; i < c; ++i) {
    float* row = out + i * c;
    f32x8 acc = {};
    int64_t j = 0;
    for (; j + 8 <= c; j += 8) {
      const f32x8 e = exp8(load8(row + j));
      store8(row + j, e);
      acc += e;
    }
    float sum = hsum8(acc);
    for (; j < c; ++j) {
      row[j] = exp_nonpositive(row[j]);
      sum += row[j];
    }
    const float inv_sum = 1.0f / sum;
    j = 0;
    for (; j + 8 <= c; j += 8) store8(row + j, load8(row + j) * inv_sum);
    for (; j < c; ++j) row[j] *= inv_sum;
    total += std::log(sum);
  }
  return total;
}

MIM_FAST_INLINE float log_sum_exp_f32(const float* rows, int64_t c) {
  float total = 0;
  for (int64_t i = 0; i < c; ++i) {
    const float* row = rows + i * c;
    f32x8 a0 = {}, a1 = {};
    int64_t j = 0;
    for (; j + 16 <= c; j += 16) {
      a0 += exp8(load8(row + j));
      a1 += exp8(load8(row + j + 8));
    }
    for (; j + 8 <= c; j += 8) a0 += exp8(load8(row + j));
    float sum = hsum8(a0 + a1);
    for (; j < c; ++j) sum += exp_nonpositive(row[j]);
    total += std::log(sum);
  }
  return total;
}

// The per-sample passes (scalar templates: the double path; float: see below).
template <typename scalar_t>
struct RowKernels {
  void (*gather)(const scalar_t*, int64_t, int64_t, int64_t, const int64_t*, int64_t, scalar_t*, scalar_t*) =
      &gather_normalized<scalar_t>;
  void (*scatter)(const scalar_t*, const scalar_t*, const scalar_t*, int64_t, int64_t, int64_t, int64_t,
                  const int64_t*, scalar_t*) = &scatter_normalize_backward<scalar_t>;
  scalar_t (*shift)(scalar_t*, const scalar_t*, const scalar_t*, int64_t, int64_t, scalar_t, scalar_t, bool*) =
      &shift_rows<scalar_t>;
  scalar_t (*softmax)(scalar_t*, int64_t) = &softmax_rows<scalar_t>;
  scalar_t (*log_sum_exp)(const scalar_t*, int64_t) = &log_sum_exp_rows<scalar_t>;
};

template <typename scalar_t>
RowKernels<scalar_t> row_kernels() {
  return {};
}

// Float: the vector passes, compiled for the baseline ISA and, picked at run time when the
// CPU has them, for AVX2 + FMA.
#define MIM_FAST_FLOAT_PASSES(SUFFIX, ATTR)                                                                   \
  ATTR void gather_##SUFFIX(const float* x, int64_t N, int64_t D, int64_t b, const int64_t* rows, int64_t c, \
                            float* out, float* inv_norm) {                                                    \
    gather_f32(x, N, D, b, rows, c, out, inv_norm);                                                           \
  }                                                                                                           \
  ATTR void scatter_##SUFFIX(const float* y, const float* dy, const float* inv_norm, int64_t c, int64_t D,   \
                             int64_t N, int64_t b, const int64_t* rows, float* grad) {                        \
    scatter_f32(y, dy, inv_norm, c, D, N, b, rows, grad);                                                     \
  }                                                                                                           \
  ATTR float shift_##SUFFIX(float* out, const float* scores, const float* same, int64_t c, int64_t ld,       \
                            float tau, float thr, bool* skip) {                                               \
    return shift_f32(out, scores, same, c, ld, tau, thr, skip);                                               \
  }                                                                                                           \
  ATTR float softmax_##SUFFIX(float* out, int64_t c) { return softmax_f32(out, c); }                         \
  ATTR float log_sum_exp_##SUFFIX(const float* rows, int64_t c) { return log_sum_exp_f32(rows, c); }

#define MIM_FAST_SET_FLOAT_PASSES(k, SUFFIX) \
  k.gather = &gather_##SUFFIX;                \
  k.scatter = &scatter_##SUFFIX;              \
  k.shift = &shift_##SUFFIX;                  \
  k.softmax = &softmax_##SUFFIX;              \
  k.log_sum_exp = &log_sum_exp_##SUFFIX;

MIM_FAST_FLOAT_PASSES(baseline, )
#if defined(__GNUC__) && defined(__x86_64__)
MIM_FAST_FLOAT_PASSES(avx2, __attribute__((target("avx2,fma"))))
#endif

template <>
RowKernels<float> row_kernels<float>() {
  RowKernels<float> k;
  MIM_FAST_SET_FLOAT_PASSES(k, baseline)
#if defined(__GNUC__) && defined(__x86_64__)
  if (use_avx2_fma()) {
    MIM_FAST_SET_FLOAT_PASSES(k, avx2)
  }
#endif
  return k;
}

// C [m, n] = A [m, k] B [n, k]^T, all row-major with leading dimensions lda / ldb / ldc.
//
// Goes straight to the BLAS behind ATen (its Fortran sgemm_, looked up at run time) when
// that is present and gives a correct answer on a small check: these GEMMs are ~100 x 128
// x 100, small enough that ATen's per-call tensor bookkeeping (views, checks, dispatch) is
// a measurable share. Falls back to at::mm_out otherwise, and for double.
// MIM_FAST_CPU_BASELINE=1 forces the fallback (the tests cover both).
using FortranSgemm = void (*)(const char*, const char*, const int64_t*, const int64_t*, const int64_t*, const float*,
                              const float*, const int64_t*, const float*, const int64_t*, const float*, float*,
                              const int64_t*);

// Integer arguments are passed as pointers to int64: an LP64 BLAS reads the low 32 bits
// (little-endian: the same value), an ILP64 one the whole word.
inline void call_sgemm(FortranSgemm fn, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                       int64_t ldb, float* c, int64_t ldc) {
  // Row-major C = A B^T is column-major C^T = B A^T.
  const float one = 1.0f, zero = 0.0f;
  fn("T", "N", &n, &m, &k, &one, b, &ldb, a, &lda, &zero, c, &ldc);
}

inline FortranSgemm direct_sgemm() {
  static const FortranSgemm fn = []() -> FortranSgemm {
    if (force_baseline_isa()) return nullptr;
    auto found = reinterpret_cast<FortranSgemm>(dlsym(RTLD_DEFAULT, "sgemm_"));
    if (found == nullptr) return nullptr;
    // A [3, 2] x B [2, 2]^T, row-major, padded leading dimensions.
    const float a[3 * 3] = {1, 2, -1, 3, 4, -1, 5, 6, -1};
    const float b[2 * 3] = {1, 0, -1, 1, 1, -1};
    float c[3 * 4] = {};
    call_sgemm(found, 3, 2, 2, a, 3, b, 3, c, 4);
    const float want[3 * 4] = {1, 3, 0, 0, 3, 7, 0, 0, 5, 11, 0, 0};
    for (int i = 0; i < 12; ++i)
      if (c[i] != want[i]) return nullptr;
    return found;
  }();
  return fn;
}

// Rows [a_row, a_row + m) of a_buf [*, k] times rows [b_row, b_row + n) of b_buf [*, k],
// transposed, into the flat c_buf as an [m, ld_c] row-major block.
template <typename scalar_t>
void gemm_abt(const at::Tensor& a_buf, const at::Tensor& b_buf, at::Tensor& c_buf, int64_t a_row, int64_t m,
              int64_t b_row, int64_t n, int64_t ld_c) {
  at::Tensor c = c_buf.narrow(0, 0, m * ld_c).view({m, ld_c}).narrow(1, 0, n);
  at::mm_out(c, a_buf.narrow(0, a_row, m), b_buf.narrow(0, b_row, n).t());
}

template <>
inline void gemm_abt<float>(const at::Tensor& a_buf, const at::Tensor& b_buf, at::Tensor& c_buf, int64_t a_row,
                            int64_t m, int64_t b_row, int64_t n, int64_t ld_c) {
  const int64_t k = a_buf.size(1);
  if (FortranSgemm fn = direct_sgemm()) {
    call_sgemm(fn, m, n, k, a_buf.data_ptr<float>() + a_row * k, k, b_buf.data_ptr<float>() + b_row * k, k,
               c_buf.data_ptr<float>(), ld_c);
    return;
  }
  at::Tensor c = c_buf.narrow(0, 0, m * ld_c).view({m, ld_c}).narrow(1, 0, n);
  at::mm_out(c, a_buf.narrow(0, a_row, m), b_buf.narrow(0, b_row, n).t());
}

}  // namespace
}  // namespace mim_fast
