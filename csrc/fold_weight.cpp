// fold_weight.cpp - the separable resize folded into a projection weight, and its adjoint.
//
//   cpu_fold_weight(weight [D, P*P*C], row_w [P, w], col_w [P, w]) -> folded [D, w*w*C]
//       folded[d, (a b c)] = sum_{x, y} row_w[x, a] col_w[y, b] weight[d, (x y c)]
//   cpu_unfold_weight(grad_folded [D, w*w*C], row_w, col_w) -> grad_weight [D, P*P*C]
//       grad_weight[d, (x y c)] = sum_{a, b} row_w[x, a] col_w[y, b] grad_folded[d, (a b c)]
//
// A token whose resized patch is Y = row_w Xw col_w^T (per channel, Xw its w x w input window)
// has weight @ vec(Y) == folded @ vec(Xw): the fused tokenizer embeds interior tokens of
// upsampled patch sizes (w = p + 4 < P) from their raw windows with the folded weight, which
// saves 2 D C (P^2 - w^2) flops per token and GEMM.
//
// Both run as two one-axis passes per output feature d (independent: parallel over d): along x
// over whole (y c) rows of P * C values, along y over runs of C, each as register-blocked
// weighted sums of the non-zero taps (tap_sums.h; float compiled per ISA, AVX2 + FMA chosen at
// run time). A fold costs about 5 D C P (P + w) multiply-adds; accumulation is in float
// (double for double weights).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "checks.h"
#include "fold_weight.h"
#include "simd.h"
#include "tap_sums.h"

namespace mim_fast {
namespace {

struct FoldShape {
  int64_t D, P, w, C;
};

FoldShape check_fold(const at::Tensor& t, bool folded, const at::Tensor& row_w,
                     const at::Tensor& col_w, const char* name, const char* layout) {
  checks::cpu(t, name);
  checks::floating(t, name);
  checks::rank(t, 2, name, layout);
  for (const auto* table : {&row_w, &col_w}) {
    const char* what = table == &row_w ? "row_w" : "col_w";
    checks::cpu(*table, what);
    checks::floating(*table, what);
    checks::rank(*table, 2, what, "[P, w]");
  }
  TORCH_CHECK_VALUE(row_w.sizes() == col_w.sizes(), "row_w, col_w: expected the same shape [P, w], got ",
                    row_w.sizes(), " and ", col_w.sizes());
  FoldShape s{t.size(0), row_w.size(0), row_w.size(1), 0};
  const int64_t per_channel = folded ? s.w * s.w : s.P * s.P;
  TORCH_CHECK_VALUE(per_channel > 0 && t.size(1) % per_channel == 0, name, ": expected ", layout, " with ",
                    per_channel, " features per channel (from the tables' shape ", row_w.sizes(), "), got shape ",
                    t.sizes());
  s.C = t.size(1) / per_channel;
  return s;
}

// Tables of one fold, in the orientation each pass reads them.
template <typename acc_t>
struct FoldTables {
  const acc_t* rw;   // [P, w]
  const acc_t* cw;   // [P, w]
  const acc_t* rwt;  // [w, P]
  const acc_t* cwt;  // [w, P]
  const std::pair<int64_t, int64_t>* r_taps;   // [P]: non-zero range of rw rows
  const std::pair<int64_t, int64_t>* c_taps;   // [P]
  const std::pair<int64_t, int64_t>* rt_taps;  // [w]: of rwt rows
  const std::pair<int64_t, int64_t>* ct_taps;  // [w]
};

// Rows [d0, d1) of the fold; half: w * P * C scratch.
template <int kLanes, typename scalar_t, typename acc_t>
MIM_FAST_INLINE void fold_range(const scalar_t* weight, scalar_t* out, const FoldShape& s, const FoldTables<acc_t>& t,
                                int64_t d0, int64_t d1, acc_t* half) {
  const int64_t P = s.P, w = s.w, C = s.C, PC = P * C, wC = w * C;
  for (int64_t d = d0; d < d1; ++d) {
    const scalar_t* wd = weight + d * P * PC;
    scalar_t* od = out + d * w * wC;
    // half[a, (y c)] = sum_x rw[x, a] weight[d, (x y c)]
    for (int64_t a = 0; a < w; ++a)
      tap_run<kLanes, false>(half + a * PC, wd, PC, t.rwt + a * P, t.rt_taps[a].first, t.rt_taps[a].second,
                             static_cast<const acc_t*>(nullptr), PC);
    // out[d, (a b c)] = sum_y cw[y, b] half[a, (y c)]
    for (int64_t a = 0; a < w; ++a)
      for (int64_t b = 0; b < w; ++b)
        tap_run<kLanes, false>(od + a * wC + b * C, half + a * PC, C, t.cwt + b * P, t.ct_taps[b].first,
                               t.ct_taps[b].second, static_cast<const acc_t*>(nullptr), C);
  }
}

// Rows [d0, d1) of the adjoint; half: w * P * C scratch.
template <int kLanes, typename scalar_t, typename acc_t>
MIM_FAST_INLINE void unfold_range(const scalar_t* grad, scalar_t* out, const FoldShape& s, const FoldTables<acc_t>& t,
                                  int64_t d0, int64_t d1, acc_t* half) {
  const int64_t P = s.P, w = s.w, C = s.C, PC = P * C, wC = w * C;
  for (int64_t d = d0; d < d1; ++d) {
    const scalar_t* gd = grad + d * w * wC;
    scalar_t* od = out + d * P * PC;
    // half[a, (y c)] = sum_b cw[y, b] grad[d, (a b c)]
    for (int64_t a = 0; a < w; ++a)
      for (int64_t y = 0; y < P; ++y)
        tap_run<kLanes, false>(half + a * PC + y * C, gd + a * wC, C, t.cw + y * w, t.c_taps[y].first,
                               t.c_taps[y].second, static_cast<const acc_t*>(nullptr), C);
    // out[d, (x y c)] = sum_a rw[x, a] half[a, (y c)]
    for (int64_t x = 0; x < P; ++x)
      tap_run<kLanes, false>(od + x * PC, half, PC, t.rw + x * w, t.r_taps[x].first, t.r_taps[x].second,
                             static_cast<const acc_t*>(nullptr), PC);
  }
}

// Per-ISA copies of the float passes (the hot path); other dtypes use the templates as they are.
#define MIM_FAST_FOLD_PASSES(SUFFIX, ATTR, LANES)                                                              \
  ATTR void fold_f32_##SUFFIX(const float* wt, float* out, const FoldShape& s, const FoldTables<float>& t,      \
                              int64_t d0, int64_t d1, float* half) {                                            \
    fold_range<LANES>(wt, out, s, t, d0, d1, half);                                                             \
  }                                                                                                             \
  ATTR void unfold_f32_##SUFFIX(const float* g, float* out, const FoldShape& s, const FoldTables<float>& t,     \
                                int64_t d0, int64_t d1, float* half) {                                          \
    unfold_range<LANES>(g, out, s, t, d0, d1, half);                                                            \
  }

MIM_FAST_FOLD_PASSES(baseline, , 4)
#if defined(__GNUC__) && defined(__x86_64__)
MIM_FAST_FOLD_PASSES(avx2, __attribute__((target("avx2,fma"))), 8)
#endif

template <bool kFold, typename scalar_t, typename acc_t>
void run_fold(const scalar_t* in, const acc_t* rw, const acc_t* cw, scalar_t* out, const FoldShape& s) {
  const auto rwt = transposed(rw, s.P, s.w);
  const auto cwt = transposed(cw, s.P, s.w);
  const auto r_taps = nonzero_ranges(rw, s.P, s.w), c_taps = nonzero_ranges(cw, s.P, s.w);
  const auto rt_taps = nonzero_ranges(rwt.data(), s.w, s.P), ct_taps = nonzero_ranges(cwt.data(), s.w, s.P);
  const FoldTables<acc_t> t{rw, cw, rwt.data(), cwt.data(), r_taps.data(), c_taps.data(), rt_taps.data(),
                            ct_taps.data()};
  at::parallel_for(0, s.D, 16, [&](int64_t d0, int64_t d1) {
    std::vector<acc_t> half(static_cast<size_t>(s.w * s.P * s.C));
    if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
#if defined(__GNUC__) && defined(__x86_64__)
      if (use_avx2_fma()) {
        (kFold ? fold_f32_avx2 : unfold_f32_avx2)(in, out, s, t, d0, d1, half.data());
        return;
      }
#endif
      (kFold ? fold_f32_baseline : unfold_f32_baseline)(in, out, s, t, d0, d1, half.data());
    } else if constexpr (kFold) {
      fold_range<4>(in, out, s, t, d0, d1, half.data());
    } else {
      unfold_range<4>(in, out, s, t, d0, d1, half.data());
    }
  });
}

template <bool kFold>
at::Tensor fold_or_unfold(const at::Tensor& t_in, const at::Tensor& row_w_in, const at::Tensor& col_w_in,
                          const std::optional<at::Tensor>& out_in) {
  const FoldShape s = kFold ? check_fold(t_in, false, row_w_in, col_w_in, "weight", "[D, P * P * C]")
                            : check_fold(t_in, true, row_w_in, col_w_in, "grad_folded", "[D, w * w * C]");
  const at::Tensor t = t_in.contiguous();
  const at::ScalarType acc_type = t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor rw = row_w_in.to(acc_type).contiguous();
  const at::Tensor cw = col_w_in.to(acc_type).contiguous();
  const int64_t features = (kFold ? s.w * s.w : s.P * s.P) * s.C;
  at::Tensor out = out_in.has_value() ? *out_in : at::empty({s.D, features}, t.options());
  TORCH_CHECK_VALUE(out.is_contiguous() && out.sizes() == at::IntArrayRef({s.D, features}) &&
                        out.scalar_type() == t.scalar_type(),
                    "out: expected a contiguous [", s.D, ", ", features, "] tensor of dtype ", t.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, t.scalar_type(), "cpu_fold_weight", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    run_fold<kFold, scalar_t, acc_t>(t.data_ptr<scalar_t>(), rw.data_ptr<acc_t>(), cw.data_ptr<acc_t>(),
                                     out.data_ptr<scalar_t>(), s);
  });
  return out;
}

at::Tensor unfold_weight_op(const at::Tensor& grad_folded, const at::Tensor& row_w, const at::Tensor& col_w) {
  return fold_or_unfold<false>(grad_folded, row_w, col_w, std::nullopt);
}

}  // namespace

at::Tensor fold_weight(const at::Tensor& weight, const at::Tensor& row_w, const at::Tensor& col_w) {
  return fold_or_unfold<true>(weight, row_w, col_w, std::nullopt);
}

void unfold_weight_out(const at::Tensor& grad_folded, const at::Tensor& row_w, const at::Tensor& col_w,
                       const at::Tensor& out) {
  fold_or_unfold<false>(grad_folded, row_w, col_w, out);
}

TORCH_LIBRARY_IMPL(mim_fast, CPU, m) {
  m.impl("cpu_fold_weight", &fold_weight);
  m.impl("cpu_unfold_weight", &unfold_weight_op);
}

}  // namespace mim_fast
