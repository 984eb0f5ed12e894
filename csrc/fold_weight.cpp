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
// Both run as two one-axis passes per output feature d (independent: parallel over d), in the
// order that puts the longer contiguous run innermost: along x the runs are whole (y c) rows of
// P * C values, along y runs of C. Only the non-zero taps of the resize rows are visited (4 per
// output when upsampling), so a fold costs about 4 D C P (P + w) multiply-adds, a few percent of
// one GEMM over a few hundred tokens; accumulation is in float (double for double weights).
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

// Non-zero range [lo, hi) of every row of a [n, m] table.
template <typename acc_t>
std::vector<std::pair<int64_t, int64_t>> nonzero_ranges(const acc_t* table, int64_t n, int64_t m) {
  std::vector<std::pair<int64_t, int64_t>> out(n);
  for (int64_t r = 0; r < n; ++r) {
    int64_t lo = 0, hi = m;
    while (lo < hi && table[r * m + lo] == acc_t(0)) ++lo;
    while (hi > lo && table[r * m + hi - 1] == acc_t(0)) --hi;
    out[r] = {lo, hi};
  }
  return out;
}

// dst[k] += a * src[k], k < n.
template <typename acc_t, typename src_t>
inline void axpy(acc_t* __restrict dst, const src_t* __restrict src, acc_t a, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] += a * static_cast<acc_t>(src[k]);
}

template <typename scalar_t, typename acc_t>
void fold_rows(const scalar_t* weight, const acc_t* rw, const acc_t* cw, scalar_t* out, const FoldShape& s) {
  const int64_t P = s.P, w = s.w, C = s.C, PC = P * C, wC = w * C;
  const auto rtaps = nonzero_ranges(rw, P, w);
  const auto ctaps = nonzero_ranges(cw, P, w);
  at::parallel_for(0, s.D, 16, [&](int64_t d0, int64_t d1) {
    std::vector<acc_t> half(static_cast<size_t>(w * PC));  // [a][(y c)]: rows folded
    std::vector<acc_t> full(static_cast<size_t>(w * wC));  // [a][(b c)]
    for (int64_t d = d0; d < d1; ++d) {
      const scalar_t* wd = weight + d * P * PC;
      std::fill(half.begin(), half.end(), acc_t(0));
      for (int64_t x = 0; x < P; ++x)
        for (int64_t a = rtaps[x].first; a < rtaps[x].second; ++a) axpy(half.data() + a * PC, wd + x * PC, rw[x * w + a], PC);
      std::fill(full.begin(), full.end(), acc_t(0));
      for (int64_t a = 0; a < w; ++a)
        for (int64_t y = 0; y < P; ++y)
          for (int64_t b = ctaps[y].first; b < ctaps[y].second; ++b)
            axpy(full.data() + a * wC + b * C, half.data() + a * PC + y * C, cw[y * w + b], C);
      scalar_t* od = out + d * w * wC;
      for (int64_t k = 0; k < w * wC; ++k) od[k] = static_cast<scalar_t>(full[k]);
    }
  });
}

template <typename scalar_t, typename acc_t>
void unfold_rows(const scalar_t* grad, const acc_t* rw, const acc_t* cw, scalar_t* out, const FoldShape& s) {
  const int64_t P = s.P, w = s.w, C = s.C, PC = P * C, wC = w * C;
  const auto rtaps = nonzero_ranges(rw, P, w);
  const auto ctaps = nonzero_ranges(cw, P, w);
  at::parallel_for(0, s.D, 16, [&](int64_t d0, int64_t d1) {
    std::vector<acc_t> half(static_cast<size_t>(w * PC));  // [a][(y c)]: columns unfolded
    std::vector<acc_t> full(static_cast<size_t>(P * PC));  // [x][(y c)]
    for (int64_t d = d0; d < d1; ++d) {
      const scalar_t* gd = grad + d * w * wC;
      std::fill(half.begin(), half.end(), acc_t(0));
      for (int64_t a = 0; a < w; ++a)
        for (int64_t y = 0; y < P; ++y)
          for (int64_t b = ctaps[y].first; b < ctaps[y].second; ++b)
            axpy(half.data() + a * PC + y * C, gd + a * wC + b * C, cw[y * w + b], C);
      std::fill(full.begin(), full.end(), acc_t(0));
      for (int64_t x = 0; x < P; ++x)
        for (int64_t a = rtaps[x].first; a < rtaps[x].second; ++a)
          axpy(full.data() + x * PC, half.data() + a * PC, rw[x * w + a], PC);
      scalar_t* od = out + d * P * PC;
      for (int64_t k = 0; k < P * PC; ++k) od[k] = static_cast<scalar_t>(full[k]);
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
    if constexpr (kFold)
      fold_rows<scalar_t, acc_t>(t.data_ptr<scalar_t>(), rw.data_ptr<acc_t>(), cw.data_ptr<acc_t>(),
                                 out.data_ptr<scalar_t>(), s);
    else
      unfold_rows<scalar_t, acc_t>(t.data_ptr<scalar_t>(), rw.data_ptr<acc_t>(), cw.data_ptr<acc_t>(),
                                   out.data_ptr<scalar_t>(), s);
  });
  return out;
}

at::Tensor fold_weight_op(const at::Tensor& weight, const at::Tensor& row_w, const at::Tensor& col_w) {
  return fold_or_unfold<true>(weight, row_w, col_w, std::nullopt);
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
  m.impl("cpu_fold_weight", &fold_weight_op);
  m.impl("cpu_unfold_weight", &unfold_weight_op);
}

}  // namespace mim_fast
