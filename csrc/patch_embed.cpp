// patch_embed.cpp - CPU patch embedding for channel-last multispectral images.
//
//   x [B, H, W, T, C] (channel-last), P = patch_size, h = H / P, w = W / P, K = P * P * C
//   keep: optional bool [B, C] band mask, applied as x[b, ..., c] * keep[b, c]
//
//   cpu_patchify(x, keep, P) -> X [B*h*w*T, K]
//       rows ordered (b, i, j, t); X[row, (p1*P + p2)*C + c] = x[b, i*P+p1, j*P+p2, t, c] * keep[b, c]
//   cpu_patch_embed(x, weight [D, K], bias [D]?, keep?, P) -> out [B, h, w, T, D]
//       out = X @ weight^T + bias
//   cpu_patch_embed_backward(grad_out [B, h, w, T, D], x, weight, keep?, P, need_x, need_weight, need_bias)
//       -> (grad_x [B, H, W, T, C], grad_weight [D, K], grad_bias [D]); G = grad_out as [B*h*w*T, D]
//       grad_weight = G^T @ X, grad_bias = G.sum(0), grad_x = unpatchify(G @ weight) * keep.
//       Gradients that are not requested come back as empty (numel 0) tensors of x's dtype.
//
// The GEMMs go to at::mm / at::addmm (MKL); only the layout shuffles are
// hand-written, as parallel loops over contiguous runs so they stay a small
// fraction of the GEMM time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

#include "checks.h"

namespace mim_fast {
namespace {

struct Geom {
  int64_t B, H, W, T, C, P, h, w, K, rows;
};

Geom check_x(const at::Tensor& x, int64_t P) {
  checks::cpu(x, "x");
  checks::floating(x, "x");
  checks::rank(x, 5, "x", "[B, H, W, T, C]");
  TORCH_CHECK_VALUE(P >= 1, "patch_size: expected >= 1, got ", P);
  Geom g;
  g.B = x.size(0);
  g.H = x.size(1);
  g.W = x.size(2);
  g.T = x.size(3);
  g.C = x.size(4);
  g.P = P;
  TORCH_CHECK_VALUE(g.H % P == 0 && g.W % P == 0, "x: height and width must be divisible by patch_size=", P,
                    ", got shape ", x.sizes(), " [B, H, W, T, C]");
  g.h = g.H / P;
  g.w = g.W / P;
  g.K = P * P * g.C;
  g.rows = g.B * g.h * g.w * g.T;
  return g;
}

void check_keep(const std::optional<at::Tensor>& keep, const Geom& g) {
  if (!keep.has_value()) return;
  checks::cpu(*keep, "keep");
  checks::dtype(*keep, at::kBool, "keep");
  checks::shape(*keep, {g.B, g.C}, "keep", "(batch_size, num_bands)");
}

void check_weight(const at::Tensor& weight, const at::Tensor& x, const Geom& g) {
  checks::cpu(weight, "weight");
  checks::same_dtype(weight, x, "weight", "x");
  checks::rank(weight, 2, "weight", "[D, patch_size * patch_size * C]");
  checks::shape(weight, {weight.size(0), g.K}, "weight", "(embed_dim, patch_size * patch_size * C)");
}

template <typename scalar_t>
inline void mul_span(scalar_t* __restrict dst, const scalar_t* __restrict src, const scalar_t* __restrict f,
                     int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i] * f[i];
}

// Moves data between the image layout x[B, H, W, T, C] and the patch-row
// layout X[B*h*w*T, K], multiplying by keep on the way (a real multiply, so
// NaN/-0 behave as in `x * keep`). kToRows: x -> X (patchify); otherwise
// X -> x (unpatchify, used for grad_x). Each element is touched exactly once,
// so the unpatchify needs no zero-init and no atomics.
template <typename scalar_t, bool kToRows>
void shuffle(scalar_t* img, scalar_t* rows, const bool* keep, const Geom& g) {
  const int64_t PC = g.P * g.C;
  const int64_t group = g.T * g.K;  // elements per (b, i, j) patch, all t
  const int64_t n_groups = g.B * g.h * g.w;
  if (n_groups == 0 || group == 0) return;
  const int64_t grain = std::max<int64_t>(1, 16384 / group);
  at::parallel_for(0, n_groups, grain, [&](int64_t g0, int64_t g1) {
    std::vector<scalar_t> kf(keep ? PC : 0);  // keep[b, :] tiled P times, matching a p2-run of P*C
    int64_t kf_for = -1;
    auto move = [&](scalar_t* img_p, scalar_t* row_p, int64_t n) {
      if constexpr (kToRows) {
        if (keep)
          mul_span(row_p, img_p, kf.data(), n);
        else
          std::memcpy(row_p, img_p, n * sizeof(scalar_t));
      } else {
        if (keep)
          mul_span(img_p, row_p, kf.data(), n);
        else
          std::memcpy(img_p, row_p, n * sizeof(scalar_t));
      }
    };
    for (int64_t gi = g0; gi < g1; ++gi) {
      const int64_t b = gi / (g.h * g.w);
      const int64_t ij = gi % (g.h * g.w);
      const int64_t i = ij / g.w, j = ij % g.w;
      if (keep && b != kf_for) {
        for (int64_t q = 0; q < PC; ++q) kf[q] = static_cast<scalar_t>(keep[b * g.C + q % g.C] ? 1 : 0);
        kf_for = b;
      }
      scalar_t* grp = rows + gi * group;
      for (int64_t p1 = 0; p1 < g.P; ++p1) {
        // x[b, i*P + p1, j*P, 0, 0]
        scalar_t* img_row = img + (((b * g.H + i * g.P + p1) * g.W + j * g.P) * g.T) * g.C;
        if (g.T == 1) {
          // With T == 1 the P pixels of a patch row are one contiguous P*C run
          // on both sides.
          move(img_row, grp + p1 * PC, PC);
        } else {
          for (int64_t p2 = 0; p2 < g.P; ++p2)
            for (int64_t t = 0; t < g.T; ++t)
              move(img_row + (p2 * g.T + t) * g.C, grp + t * g.K + (p1 * g.P + p2) * g.C, g.C);
        }
      }
    }
  });
}

// x must be contiguous and already validated.
at::Tensor patchify_impl(const at::Tensor& x, const std::optional<at::Tensor>& keep_in, const Geom& g) {
  at::Tensor out = at::empty({g.rows, g.K}, x.options());
  at::Tensor keep;
  if (keep_in.has_value()) keep = keep_in->contiguous();
  const bool* kp = keep.defined() ? keep.data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "cpu_patchify", [&] {
    shuffle<scalar_t, true>(x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), kp, g);
  });
  return out;
}

at::Tensor patchify(const at::Tensor& x_in, const std::optional<at::Tensor>& keep, int64_t patch_size) {
  const Geom g = check_x(x_in, patch_size);
  check_keep(keep, g);
  return patchify_impl(x_in.contiguous(), keep, g);
}

at::Tensor patch_embed(const at::Tensor& x_in, const at::Tensor& weight_in, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& keep, int64_t patch_size) {
  const Geom g = check_x(x_in, patch_size);
  check_weight(weight_in, x_in, g);
  const int64_t D = weight_in.size(0);
  if (bias.has_value()) {
    checks::cpu(*bias, "bias");
    checks::same_dtype(*bias, x_in, "bias", "x");
    checks::shape(*bias, {D}, "bias", "(embed_dim,)");
  }
  check_keep(keep, g);

  const at::Tensor xp = patchify_impl(x_in.contiguous(), keep, g);
  // weight^T as a transposed view: MKL takes the transpose flag, no copy.
  const at::Tensor wt = weight_in.contiguous().t();
  at::Tensor out = bias.has_value() ? at::addmm(bias->contiguous(), xp, wt) : at::mm(xp, wt);
  return out.view({g.B, g.h, g.w, g.T, D});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_embed_backward(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& weight_in,
    const std::optional<at::Tensor>& keep, int64_t patch_size, bool need_x, bool need_weight, bool need_bias) {
  const Geom g = check_x(x_in, patch_size);
  check_weight(weight_in, x_in, g);
  const int64_t D = weight_in.size(0);
  checks::cpu(grad_out_in, "grad_out");
  checks::same_dtype(grad_out_in, x_in, "grad_out", "x");
  checks::shape(grad_out_in, {g.B, g.h, g.w, g.T, D}, "grad_out", "(B, H/patch_size, W/patch_size, T, embed_dim)");
  check_keep(keep, g);

  // Distinct empty tensors: the outputs of a registered op may not alias each other.
  at::Tensor grad_x = at::empty({0}, x_in.options());
  at::Tensor grad_w = at::empty({0}, x_in.options());
  at::Tensor grad_b = at::empty({0}, x_in.options());
  if (!(need_x || need_weight || need_bias)) return {grad_x, grad_w, grad_b};

  // grad_out may be stride-0 (e.g. from .sum().backward()); materialize once.
  const at::Tensor G = grad_out_in.contiguous().view({g.rows, D});
  if (need_bias) grad_b = G.sum(0);
  if (need_weight) grad_w = at::mm(G.t(), patchify_impl(x_in.contiguous(), keep, g));
  if (need_x) {
    const at::Tensor gp = at::mm(G, weight_in.contiguous());  // [rows, K]
    grad_x = at::empty({g.B, g.H, g.W, g.T, g.C}, x_in.options());
    at::Tensor keep_c;
    if (keep.has_value()) keep_c = keep->contiguous();
    const bool* kp = keep_c.defined() ? keep_c.data_ptr<bool>() : nullptr;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x_in.scalar_type(), "cpu_unpatchify", [&] {
      shuffle<scalar_t, false>(grad_x.data_ptr<scalar_t>(), gp.data_ptr<scalar_t>(), kp, g);
    });
  }
  return {grad_x, grad_w, grad_b};
}

}  // namespace
}  // namespace mim_fast

TORCH_LIBRARY_IMPL(mim_fast, CPU, m) {
  m.impl("cpu_patchify", &mim_fast::patchify);
  m.impl("cpu_patch_embed", &mim_fast::patch_embed);
  m.impl("cpu_patch_embed_backward", &mim_fast::patch_embed_backward);
}
