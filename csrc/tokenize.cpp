// tokenize.cpp - CPU row builder of the fused tokenizer: the resized P x P patch of
// every selected token, computed from its input window (no resized image).
//
//   x [B, H, W, T, C] channel-last, p = requested patch size, P = base patch size
//   work [R, 7] int64: (sample b, token row i, token col j, timestep t, slot, row class rc, col class cc);
//       slot < 0 marks a padding row (zero patch, no gradient)
//   tables [2, n_classes, P, window] float32 (float64 for float64 x): row weights tables[0, rc],
//       column weights tables[1, cc]; window = p + 2m, the window of token (i, j) starts at
//       (i*p - m, j*p - m) and is zero outside the image
//
//   cpu_token_patches(x, keep?, work, tables, p) -> A [R, P*P*C]
//       A[r, (q1*P + q2)*C + c] = keep[b, c] * sum_{u,v} RW[q1, u] x[b, i*p-m+u, j*p-m+v, t, c] CW[q2, v]
//       (p == P: A[r] is the token's own P x P block times keep; tables unused)
//   cpu_token_patches_backward(grad_A [R, P*P*C], x_shape, keep?, work, tables, p) -> grad_x [B, H, W, T, C]
//       the adjoint: grad_x[b, i*p-m+u, j*p-m+v, t, c] += keep[b, c] * sum_{q1,q2} RW[q1, u] grad_A[...] CW[q2, v]
//
// Cost per token and channel: the separable resize is P*w*w + P*P*w multiply-adds (w = window),
// against D*P*P for the projection GEMM that follows, so the row builder is a few percent of the
// GEMM for D = 768. Zero taps (most of a window row: the cubic has 4 taps when upsampling) are
// skipped. Rows are independent in the forward (parallel over rows); in the backward windows of
// one sample overlap, so the work is split by sample (rows must be grouped by sample, which the
// layout guarantees) and each thread owns whole samples: no atomics, deterministic sums.
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
#include "simd.h"
#include "token_patch_rows.h"
#include "tokenize.h"

namespace mim_fast {
namespace {

struct Rows {
  int64_t B, H, W, T, C, p, P, win, margin, n_classes, R, K;
};

Rows check_common(at::IntArrayRef x_shape, const std::optional<at::Tensor>& keep, const at::Tensor& work,
                  const at::Tensor& tables, int64_t p) {
  TORCH_CHECK_VALUE(x_shape.size() == 5, "x: expected a 5-d tensor [B, H, W, T, C], got shape ", x_shape);
  TORCH_CHECK_VALUE(p >= 1, "patch_size: expected >= 1, got ", p);
  checks::cpu(work, "work");
  checks::dtype(work, at::kLong, "work");
  checks::rank(work, 2, "work", "[R, 7]");
  TORCH_CHECK_VALUE(work.size(1) == 7, "work: expected shape [R, 7] (sample, i, j, t, slot, row class, col class), got ",
                    work.sizes());
  checks::cpu(tables, "tables");
  TORCH_CHECK_TYPE(tables.scalar_type() == at::kFloat || tables.scalar_type() == at::kDouble,
                   "tables: expected dtype float32 or float64, got ", tables.scalar_type());
  checks::rank(tables, 4, "tables", "[2, n_classes, P, window]");
  TORCH_CHECK_VALUE(tables.size(0) == 2 && tables.size(1) >= 1, "tables: expected shape [2, n_classes >= 1, P, window], got ",
                    tables.sizes());
  Rows g;
  g.B = x_shape[0];
  g.H = x_shape[1];
  g.W = x_shape[2];
  g.T = x_shape[3];
  g.C = x_shape[4];
  g.p = p;
  g.P = tables.size(2);
  g.win = tables.size(3);
  g.margin = (g.win - p) / 2;
  g.n_classes = tables.size(1);
  g.R = work.size(0);
  g.K = g.P * g.P * g.C;
  TORCH_CHECK_VALUE(g.win >= p && (g.win - p) % 2 == 0, "tables: window ", g.win,
                    " does not fit patch_size ", p, " (expected p + 2m)");
  TORCH_CHECK_VALUE(g.H % p == 0 && g.W % p == 0, "x: height and width must be multiples of patch_size ", p,
                    ", got ", g.H, " x ", g.W);
  if (keep.has_value()) {
    checks::cpu(*keep, "keep");
    checks::dtype(*keep, at::kBool, "keep");
    checks::shape(*keep, {g.B, g.C}, "keep", "(batch_size, num_bands)");
  }
  // Every index is validated before any parallel work so a bad row is an error, not a wild read.
  const at::Tensor w = work.contiguous();
  const int64_t* wp = w.data_ptr<int64_t>();
  const int64_t limits[7] = {g.B, g.H / p, g.W / p, g.T, INT64_MAX, g.n_classes, g.n_classes};
  const char* what[7] = {"sample", "token row", "token column", "timestep", "slot", "row class", "column class"};
  for (int64_t r = 0; r < g.R; ++r) {
    for (int k = 0; k < 7; ++k) {
      if (k == 4) continue;
      const int64_t v = wp[r * 7 + k];
      TORCH_CHECK_VALUE(v >= 0 && v < limits[k], "work: ", what[k], " of row ", r, " is ", v, ", expected [0, ",
                        limits[k], ")");
    }
  }
  return g;
}

// Per-ISA copies of the float row builder (the hot path); other dtypes use the template as is.
void build_float_rows_baseline(const float* x, float* out, const RowBuild<float>& g, int64_t r0, int64_t r1,
                               float* cols, float* kf) {
  build_row_range<4>(x, out, g, r0, r1, cols, kf);
}
#if defined(__GNUC__) && defined(__x86_64__)
__attribute__((target("avx2,fma"))) void build_float_rows_avx2(const float* x, float* out, const RowBuild<float>& g,
                                                               int64_t r0, int64_t r1, float* cols, float* kf) {
  build_row_range<8>(x, out, g, r0, r1, cols, kf);
}
#endif

using FloatRowBuilder = void (*)(const float*, float*, const RowBuild<float>&, int64_t, int64_t, float*, float*);

FloatRowBuilder float_row_builder() {
#if defined(__GNUC__) && defined(__x86_64__)
  if (use_avx2_fma()) return &build_float_rows_avx2;
#endif
  return &build_float_rows_baseline;
}

template <typename scalar_t, typename acc_t>
void build_rows(const scalar_t* x, const bool* keep, const int64_t* work, const acc_t* tables, scalar_t* out,
                const Rows& g) {
  // [lo, hi) of the non-zero taps of every table row: taps[(k * n_classes + cls) * P + q].
  const auto taps = nonzero_ranges(tables, 2 * g.n_classes * g.P, g.win);
  // Union of the taps of each class, and the column tables transposed to [class, v, q2].
  std::vector<std::pair<int64_t, int64_t>> spans(2 * g.n_classes);
  for (int64_t k = 0; k < 2 * g.n_classes; ++k) {
    int64_t lo = g.win, hi = 0;
    for (int64_t q = 0; q < g.P; ++q) {
      lo = std::min(lo, taps[k * g.P + q].first);
      hi = std::max(hi, taps[k * g.P + q].second);
    }
    spans[k] = {std::min(lo, hi), hi};
  }
  const acc_t* col_tab = tables + g.n_classes * g.P * g.win;
  std::vector<acc_t> col_t(static_cast<size_t>(g.n_classes * g.win * g.P));
  for (int64_t c = 0; c < g.n_classes; ++c)
    for (int64_t q = 0; q < g.P; ++q)
      for (int64_t v = 0; v < g.win; ++v) col_t[(c * g.win + v) * g.P + q] = col_tab[(c * g.P + q) * g.win + v];
  RowBuild<acc_t> rb{g.H, g.W, g.T, g.C, g.p, g.P, g.win, g.margin, g.n_classes, g.K, keep, work, tables, col_tab,
                     col_t.data(), taps.data(), taps.data() + g.n_classes * g.P, spans.data(),
                     spans.data() + g.n_classes};
  at::parallel_for(0, g.R, 1, [&](int64_t r0, int64_t r1) {
    std::vector<acc_t> cols(static_cast<size_t>(g.win * g.P * g.C));
    std::vector<acc_t> kf(static_cast<size_t>(g.P * g.C));
    if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>)
      float_row_builder()(x, out, rb, r0, r1, cols.data(), kf.data());
    else
      build_row_range<4>(x, out, rb, r0, r1, cols.data(), kf.data());
  });
}

template <typename scalar_t, typename acc_t>
void scatter_rows(const scalar_t* grad, const bool* keep, const int64_t* work, const acc_t* tables, acc_t* out,
                  const Rows& g) {
  const acc_t* row_tab = tables;
  const acc_t* col_tab = tables + g.n_classes * g.P * g.win;
  // Segments of consecutive rows with the same sample; each is handled by one thread.
  std::vector<int64_t> starts;
  for (int64_t r = 0; r < g.R; ++r)
    if (r == 0 || work[r * 7] != work[(r - 1) * 7]) starts.push_back(r);
  starts.push_back(g.R);
  std::vector<char> seen(g.B, 0);
  bool grouped = true;
  for (size_t s = 0; s + 1 < starts.size(); ++s) {
    const int64_t b = work[starts[s] * 7];
    grouped &= !seen[b];
    seen[b] = 1;
  }
  const int64_t n_seg = static_cast<int64_t>(starts.size()) - 1;
  auto run = [&](int64_t s0, int64_t s1) {
    std::vector<acc_t> tmp(g.P * g.win * g.C);
    std::vector<acc_t> kf(g.C);
    for (int64_t s = s0; s < s1; ++s) {
      for (int64_t r = starts[s]; r < starts[s + 1]; ++r) {
        const int64_t* wr = work + r * 7;
        const int64_t b = wr[0], i = wr[1], j = wr[2], t = wr[3], slot = wr[4];
        if (slot < 0) continue;
        for (int64_t c = 0; c < g.C; ++c) kf[c] = (keep == nullptr || keep[b * g.C + c]) ? acc_t(1) : acc_t(0);
        const scalar_t* gr = grad + r * g.K;
        if (g.p == g.P) {
          for (int64_t q1 = 0; q1 < g.P; ++q1)
            for (int64_t q2 = 0; q2 < g.P; ++q2) {
              acc_t* d = out + (((b * g.H + i * g.P + q1) * g.W + j * g.P + q2) * g.T + t) * g.C;
              const scalar_t* s_ = gr + (q1 * g.P + q2) * g.C;
              for (int64_t c = 0; c < g.C; ++c) d[c] += static_cast<acc_t>(s_[c]) * kf[c];
            }
          continue;
        }
        const acc_t* rw = row_tab + wr[5] * g.P * g.win;
        const acc_t* cw = col_tab + wr[6] * g.P * g.win;
        const int64_t top = i * g.p - g.margin, left = j * g.p - g.margin;
        const int64_t v0 = std::max<int64_t>(0, -left), v1 = std::min<int64_t>(g.win, g.W - left);
        // Column adjoint: tmp[q1, v, c] = sum_q2 CW[q2, v] grad[q1, q2, c] keep[c]
        std::fill(tmp.begin(), tmp.end(), acc_t(0));
        for (int64_t q1 = 0; q1 < g.P; ++q1)
          for (int64_t q2 = 0; q2 < g.P; ++q2) {
            const scalar_t* s_ = gr + (q1 * g.P + q2) * g.C;
            for (int64_t v = v0; v < v1; ++v) {
              const acc_t e = cw[q2 * g.win + v];
              if (e == acc_t(0)) continue;
              acc_t* tv = tmp.data() + (q1 * g.win + v) * g.C;
              for (int64_t c = 0; c < g.C; ++c) tv[c] += e * static_cast<acc_t>(s_[c]) * kf[c];
            }
          }
        // Row adjoint into the image.
        for (int64_t u = 0; u < g.win; ++u) {
          const int64_t row = top + u;
          if (row < 0 || row >= g.H) continue;
          for (int64_t q1 = 0; q1 < g.P; ++q1) {
            const acc_t a = rw[q1 * g.win + u];
            if (a == acc_t(0)) continue;
            const acc_t* tq = tmp.data() + q1 * g.win * g.C;
            for (int64_t v = v0; v < v1; ++v) {
              acc_t* d = out + (((b * g.H + row) * g.W + left + v) * g.T + t) * g.C;
              const acc_t* tv = tq + v * g.C;
              for (int64_t c = 0; c < g.C; ++c) d[c] += a * tv[c];
            }
          }
        }
      }
    }
  };
  if (grouped)
    at::parallel_for(0, n_seg, 1, run);
  else
    run(0, n_seg);  // rows of one sample are split up: accumulate serially
}

}  // namespace

at::Tensor token_patches(const at::Tensor& x_in, const std::optional<at::Tensor>& keep_in, const at::Tensor& work_in,
                         const at::Tensor& tables_in, int64_t p) {
  return token_patches_out(x_in, keep_in, work_in, tables_in, p, std::nullopt);
}

at::Tensor token_patches_out(const at::Tensor& x_in, const std::optional<at::Tensor>& keep_in,
                             const at::Tensor& work_in, const at::Tensor& tables_in, int64_t p,
                             const std::optional<at::Tensor>& out_in) {
  checks::cpu(x_in, "x");
  checks::floating(x_in, "x");
  checks::rank(x_in, 5, "x", "[B, H, W, T, C]");
  const Rows g = check_common(x_in.sizes(), keep_in, work_in, tables_in, p);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor work = work_in.contiguous();
  const at::ScalarType acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor tables = tables_in.to(acc_type).contiguous();
  at::Tensor keep;
  if (keep_in.has_value()) keep = keep_in->contiguous();
  const bool* kp = keep.defined() ? keep.data_ptr<bool>() : nullptr;
  at::Tensor out = out_in.has_value() ? *out_in : at::empty({g.R, g.K}, x.options());
  if (out_in.has_value()) {
    TORCH_CHECK_VALUE(out.is_contiguous() && out.sizes() == at::IntArrayRef({g.R, g.K}) &&
                          out.scalar_type() == x.scalar_type(),
                      "out: expected a contiguous [", g.R, ", ", g.K, "] tensor of dtype ", x.scalar_type());
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "cpu_token_patches", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    build_rows<scalar_t, acc_t>(x.data_ptr<scalar_t>(), kp, work.data_ptr<int64_t>(), tables.data_ptr<acc_t>(),
                                out.data_ptr<scalar_t>(), g);
  });
  return out;
}

at::Tensor token_patches_backward(const at::Tensor& grad_in, at::IntArrayRef x_shape,
                                  const std::optional<at::Tensor>& keep_in, const at::Tensor& work_in,
                                  const at::Tensor& tables_in, int64_t p) {
  checks::cpu(grad_in, "grad_patches");
  checks::floating(grad_in, "grad_patches");
  const Rows g = check_common(x_shape, keep_in, work_in, tables_in, p);
  checks::shape(grad_in, {g.R, g.K}, "grad_patches", "(rows of work, P * P * C)");
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor work = work_in.contiguous();
  const at::ScalarType acc_type = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor tables = tables_in.to(acc_type).contiguous();
  at::Tensor keep;
  if (keep_in.has_value()) keep = keep_in->contiguous();
  const bool* kp = keep.defined() ? keep.data_ptr<bool>() : nullptr;
  at::Tensor acc = at::zeros(x_shape, grad.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "cpu_token_patches_backward", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    scatter_rows<scalar_t, acc_t>(grad.data_ptr<scalar_t>(), kp, work.data_ptr<int64_t>(), tables.data_ptr<acc_t>(),
                                  acc.data_ptr<acc_t>(), g);
  });
  return acc.scalar_type() == grad.scalar_type() ? acc : acc.to(grad.scalar_type());
}

TORCH_LIBRARY_IMPL(mim_fast, CPU, m) {
  m.impl("cpu_token_patches", &token_patches);
  m.impl("cpu_token_patches_backward", &token_patches_backward);
}

}  // namespace mim_fast
