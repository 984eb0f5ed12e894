// patch_disc.cpp - fused CPU kernel of the per-modality patch discrimination loss.
//
//   cpu_patch_disc(pred [B, N, D], target [B, N, D], keep bool [B, N], tau, threshold,
//                  mask_negatives, save_probs) -> (mean [], per_sample [B], contributes [B], probs)
//
// For sample b with its c_b kept rows (in position order), p_i = pred / |pred|,
// t_j = target / |target| (F.normalize, eps 1e-12) and s_ij = (p_i . t_j) / tau:
//
//   per_sample[b] = (2 tau / c_b) * sum_i (logsumexp_{j allowed} s_ij - s_ii)
//
// With mask_negatives and c_b > 1, column j is removed from row i's denominator when
// t_i . t_j > threshold (j != i: the positive always stays); if some row has no column
// with t_i . t_j <= threshold, the sample is skipped. contributes[b] is 1 for samples
// with c_b > 0 that are not skipped (per_sample is 0 for the others); mean is the
// modality's term, sum_b per_sample[b] / max(1, sum_b contributes[b]). With save_probs,
// probs [sum_b c_b^2] holds the row softmax of each contributing sample's c_b x c_b score
// block (zeros for skipped samples): exactly what the backward needs, so no score is
// recomputed. Without it (no gradient wanted) probs is empty and nothing is written.
//
//   cpu_patch_disc_backward(grad [B], pred, target, keep, probs, contributes, need_pred,
//                           need_target) -> (grad_pred [B, N, D], grad_target)  (empty when not needed)
//
//   dL/ds_ij = grad_b (2 tau / c_b) (probs_ij - [i == j]); dp_i = sum_j dL/ds_ij t_j / tau,
//   dt_j = sum_i dL/ds_ij p_i / tau (tau cancels), then through the normalisation:
//   dx = (dy - y (y . dy)) / |x| (dy / eps when |x| <= eps).
//
// Work is split over samples: every sample's blocks are exactly c_b x c_b (no padding
// to the longest sample), and the per-block GEMMs call the BLAS behind ATen directly
// (gemm_abt in patch_disc_rows.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "checks.h"
#include "patch_disc_rows.h"

namespace mim_fast {
namespace {

struct Layout {
  std::vector<int64_t> rows;        // kept positions, sample by sample
  std::vector<int64_t> row_offset;  // [B + 1] into rows
  std::vector<int64_t> prob_offset; // [B + 1] into probs (c_b^2 per sample)
  int64_t max_rows = 0;
};

Layout layout_of(const at::Tensor& keep) {
  const int64_t B = keep.size(0), N = keep.size(1);
  const bool* k = keep.data_ptr<bool>();
  Layout lay;
  lay.row_offset.assign(B + 1, 0);
  lay.prob_offset.assign(B + 1, 0);
  for (int64_t b = 0; b < B; ++b) {
    int64_t c = 0;
    for (int64_t n = 0; n < N; ++n) {
      if (k[b * N + n]) {
        lay.rows.push_back(n);
        ++c;
      }
    }
    lay.row_offset[b + 1] = lay.row_offset[b] + c;
    lay.prob_offset[b + 1] = lay.prob_offset[b] + c * c;
    lay.max_rows = std::max(lay.max_rows, c);
  }
  return lay;
}

constexpr int64_t kGemmPad = 8;

int64_t round_up(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

void check_inputs(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& keep) {
  checks::cpu(pred, "pred");
  checks::rank(pred, 3, "pred", "[B, N, D]");
  TORCH_CHECK_TYPE(pred.scalar_type() == at::kFloat || pred.scalar_type() == at::kDouble,
                   "pred: expected dtype float32 or float64, got ", pred.scalar_type());
  checks::cpu(target, "target");
  checks::same_dtype(target, pred, "target", "pred");
  checks::shape(target, pred.sizes().vec(), "target", "(same as pred [B, N, D])");
  checks::cpu(keep, "keep");
  checks::dtype(keep, at::kBool, "keep");
  checks::shape(keep, {pred.size(0), pred.size(1)}, "keep", "(B, N) of pred [B, N, D]");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> patch_disc(const at::Tensor& pred_in,
                                                                      const at::Tensor& target_in,
                                                                      const at::Tensor& keep_in, double tau,
                                                                      double threshold, bool mask_negatives,
                                                                      bool save_probs) {
  check_inputs(pred_in, target_in, keep_in);
  TORCH_CHECK_VALUE(tau > 0, "tau: expected a positive temperature, got ", tau);
  const at::Tensor pred = pred_in.contiguous(), target = target_in.contiguous(), keep = keep_in.contiguous();
  const int64_t B = pred.size(0), N = pred.size(1), D = pred.size(2);
  const Layout lay = layout_of(keep);
  at::Tensor per_sample = at::zeros({B}, pred.options());
  at::Tensor contributes = at::zeros({B}, pred.options());
  // Every block is written (softmax, or zeros for a skipped sample), so no zero fill.
  at::Tensor probs = at::empty({save_probs ? lay.prob_offset[B] : 0}, pred.options());
  if (lay.max_rows == 0) return {at::zeros({}, pred.options()), per_sample, contributes, probs};

  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "cpu_patch_disc", [&] {
    const scalar_t* pp = pred.data_ptr<scalar_t>();
    const scalar_t* tp = target.data_ptr<scalar_t>();
    scalar_t* loss_p = per_sample.data_ptr<scalar_t>();
    scalar_t* contrib_p = contributes.data_ptr<scalar_t>();
    scalar_t* probs_p = probs.data_ptr<scalar_t>();
    const scalar_t tau_s = static_cast<scalar_t>(tau), thr = static_cast<scalar_t>(threshold);
    TORCH_CHECK_VALUE(tau_s > 0, "tau: ", tau, " is not a positive number in ", pred.scalar_type());
    const RowKernels<scalar_t> kern = row_kernels<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      // One GEMM per sample: [p; t] [c (or 2c), D] x t^T gives the scores and, for masked
      // negatives, the target similarities (the two products share their right operand).
      // The t block and the columns are padded to a multiple of 8 rows (BLAS kernels are
      // markedly faster on such sizes); padding rows hold stale values whose output
      // entries are never read. The similarities are symmetric: only the first h target
      // rows go through that GEMM; the last c - h rows get their first h columns mirrored
      // and the rest from a second, small GEMM (1/8 fewer flops for the masked modalities).
      const int64_t C = round_up(lay.max_rows, kGemmPad);
      at::Tensor stacked = at::zeros({2 * C, D}, pred.options());
      at::Tensor gram_buf = at::empty({2 * C * C}, pred.options());
      at::Tensor lower_buf = mask_negatives ? at::empty({C * C}, pred.options()) : at::Tensor();
      at::Tensor scratch = save_probs ? at::Tensor() : at::empty({C * C}, pred.options());
      std::vector<scalar_t> inv(C);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t c = lay.row_offset[b + 1] - lay.row_offset[b];
        if (c == 0) continue;
        const int64_t* rows = lay.rows.data() + lay.row_offset[b];
        const bool masked = mask_negatives && c > 1;
        // h: a multiple of 8 (so h + round_up(c - h, 8) == ld) and at least half of c.
        const int64_t ld = round_up(c, kGemmPad), h = masked ? std::min(c, round_up((c + 1) / 2, kGemmPad)) : 0;
        scalar_t* p_rows = stacked.data_ptr<scalar_t>();
        kern.gather(pp, N, D, b, rows, c, p_rows, inv.data());
        kern.gather(tp, N, D, b, rows, c, p_rows + ld * D, inv.data());
        const int64_t m = masked ? ld + h : c;
        gemm_abt<scalar_t>(stacked, stacked, gram_buf, 0, m, ld, ld, ld);
        scalar_t* sim = gram_buf.data_ptr<scalar_t>() + ld * ld;  // row i at sim + i * ld
        if (masked && h < c) {
          const int64_t rest = c - h, lb = ld - h;
          gemm_abt<scalar_t>(stacked, stacked, lower_buf, ld + h, rest, ld + h, lb, lb);
          const scalar_t* low = lower_buf.data_ptr<scalar_t>();
          for (int64_t i = h; i < c; ++i) {
            scalar_t* row = sim + i * ld;
            for (int64_t j = 0; j < h; ++j) row[j] = sim[j * ld + i];
            std::memcpy(row + h, low + (i - h) * lb, static_cast<size_t>(rest) * sizeof(scalar_t));
          }
        }
        const scalar_t* scores = gram_buf.data_ptr<scalar_t>();
        const scalar_t* same = sim;
        scalar_t* out = save_probs ? probs_p + lay.prob_offset[b] : scratch.data_ptr<scalar_t>();
        // Row softmax of scores / tau with removed negatives at -inf; the shift by the row
        // max is finite because the diagonal always stays.
        bool skip = false;
        scalar_t total = kern.shift(out, scores, masked ? same : nullptr, c, ld, tau_s, thr, &skip);
        if (skip) {  // probs must stay zero (no gradient)
          std::fill(out, out + c * c, scalar_t(0));
          continue;
        }
        total += save_probs ? kern.softmax(out, c) : kern.log_sum_exp(out, c);
        loss_p[b] = total * (2 * tau_s) / static_cast<scalar_t>(c);
        contrib_p[b] = 1;
      }
    });
  });
  // The modality's mean over contributing samples (B values: serial, in sample order).
  at::Tensor mean = at::empty({}, pred.options());
  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "cpu_patch_disc_mean", [&] {
    const scalar_t* loss_p = per_sample.data_ptr<scalar_t>();
    const scalar_t* contrib_p = contributes.data_ptr<scalar_t>();
    scalar_t total = 0, count = 0;
    for (int64_t b = 0; b < B; ++b) {
      total += loss_p[b];
      count += contrib_p[b];
    }
    mean.fill_(total / std::max(count, scalar_t(1)));
  });
  return {mean, per_sample, contributes, probs};
}

std::tuple<at::Tensor, at::Tensor> patch_disc_backward(const at::Tensor& grad_in, const at::Tensor& pred_in,
                                                       const at::Tensor& target_in, const at::Tensor& keep_in,
                                                       const at::Tensor& probs_in, const at::Tensor& contributes_in,
                                                       bool need_pred, bool need_target) {
  check_inputs(pred_in, target_in, keep_in);
  const int64_t B = pred_in.size(0), N = pred_in.size(1), D = pred_in.size(2);
  checks::cpu(grad_in, "grad");
  checks::same_dtype(grad_in, pred_in, "grad", "pred");
  checks::shape(grad_in, {B}, "grad", "(B,) per-sample loss gradient");
  checks::cpu(contributes_in, "contributes");
  checks::same_dtype(contributes_in, pred_in, "contributes", "pred");
  checks::shape(contributes_in, {B}, "contributes", "(B,)");
  const at::Tensor pred = pred_in.contiguous(), target = target_in.contiguous(), keep = keep_in.contiguous();
  const at::Tensor grad = grad_in.contiguous(), contributes = contributes_in.contiguous();
  const Layout lay = layout_of(keep);
  checks::cpu(probs_in, "probs");
  checks::same_dtype(probs_in, pred_in, "probs", "pred");
  checks::shape(probs_in, {lay.prob_offset[B]}, "probs", "(sum of squared kept counts,) from the forward");
  const at::Tensor probs = probs_in.contiguous();
  at::Tensor grad_pred = need_pred ? at::zeros_like(pred) : at::empty({0}, pred.options());
  at::Tensor grad_target = need_target ? at::zeros_like(target) : at::empty({0}, pred.options());
  if (lay.max_rows == 0 || (!need_pred && !need_target)) return {grad_pred, grad_target};

  AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "cpu_patch_disc_backward", [&] {
    const scalar_t* pp = pred.data_ptr<scalar_t>();
    const scalar_t* tp = target.data_ptr<scalar_t>();
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    const scalar_t* cp = contributes.data_ptr<scalar_t>();
    const RowKernels<scalar_t> kern = row_kernels<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      const int64_t C = lay.max_rows;
      at::Tensor p_buf = at::empty({C, D}, pred.options()), t_buf = at::empty({C, D}, pred.options());
      at::Tensor dp_buf = at::empty({C, D}, pred.options()), dt_buf = at::empty({C, D}, pred.options());
      at::Tensor ds_buf = at::empty({C * C}, pred.options());
      std::vector<scalar_t> inv_p(C), inv_t(C);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t c = lay.row_offset[b + 1] - lay.row_offset[b];
        if (c == 0 || cp[b] == 0) continue;
        const int64_t* rows = lay.rows.data() + lay.row_offset[b];
        kern.gather(pp, N, D, b, rows, c, p_buf.data_ptr<scalar_t>(), inv_p.data());
        kern.gather(tp, N, D, b, rows, c, t_buf.data_ptr<scalar_t>(), inv_t.data());
        // d loss / d(p_i . t_j) = grad_b (2 / c) (probs_ij - [i == j]): the 1/tau of the
        // scores cancels the tau of the loss scale.
        const scalar_t coef = gp[b] * scalar_t(2) / static_cast<scalar_t>(c);
        at::Tensor ds = ds_buf.narrow(0, 0, c * c).view({c, c});
        scalar_t* d = ds_buf.data_ptr<scalar_t>();
        const scalar_t* pr = probs.data_ptr<scalar_t>() + lay.prob_offset[b];
        for (int64_t k = 0; k < c * c; ++k) d[k] = pr[k] * coef;
        for (int64_t i = 0; i < c; ++i) d[i * c + i] -= coef;
        const at::Tensor p = p_buf.narrow(0, 0, c), t = t_buf.narrow(0, 0, c);
        if (need_pred) {
          at::Tensor dp = dp_buf.narrow(0, 0, c);
          at::mm_out(dp, ds, t);
          kern.scatter(p_buf.data_ptr<scalar_t>(), dp_buf.data_ptr<scalar_t>(), inv_p.data(), c, D, N,
                                     b, rows, grad_pred.data_ptr<scalar_t>());
        }
        if (need_target) {
          at::Tensor dt = dt_buf.narrow(0, 0, c);
          at::mm_out(dt, ds.t(), p);
          kern.scatter(t_buf.data_ptr<scalar_t>(), dt_buf.data_ptr<scalar_t>(), inv_t.data(), c, D, N,
                                     b, rows, grad_target.data_ptr<scalar_t>());
        }
      }
    });
  });
  return {grad_pred, grad_target};
}

}  // namespace
}  // namespace mim_fast

TORCH_LIBRARY_IMPL(mim_fast, CPU, m) {
  m.impl("cpu_patch_disc", &mim_fast::patch_disc);
  m.impl("cpu_patch_disc_backward", &mim_fast::patch_disc_backward);
}
