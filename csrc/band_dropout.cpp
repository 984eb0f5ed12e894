// band_dropout.cpp - CPU kernels for per-sample spectral band dropout.
//
//   cpu_band_dropout_mask(seed int64 (1 elem), rate float ([] or [1]), B, C) -> keep bool [B, C]
//       u[b, c]    = philox_uniform(seed, offset = b * C + c)      (== Triton tl.rand)
//       keep[b, c] = u[b, c] >= clamp(rate, 0, 1)                  (compared in float32)
//       a row with no kept band keeps its argmax_c u[b, c] (first index on ties),
//       so every sample keeps at least one band.
//   cpu_philox_uniform(seed int64 (1 elem), n) -> float32 [n]: u for offsets 0..n-1 (test hook)
//   cpu_band_dropout_apply(x [B, M, C], keep bool [B, C]) -> y [B, M, C]
//       y = x * keep[:, None, :] as a real multiply by 1 or 0 in x's dtype, so NaN * 0 = NaN
//       and -x * 0 = -0 exactly like torch's `x * keep`.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "checks.h"
#include "philox.h"

namespace mim_fast {
namespace {

int64_t read_seed(const at::Tensor& seed) {
  checks::cpu(seed, "seed");
  checks::dtype(seed, at::kLong, "seed");
  TORCH_CHECK_VALUE(seed.numel() == 1, "seed: expected exactly 1 element, got shape ", seed.sizes());
  return seed.item<int64_t>();
}

at::Tensor band_dropout_mask(const at::Tensor& seed, const at::Tensor& rate, int64_t batch_size,
                             int64_t num_bands) {
  const int64_t s = read_seed(seed);
  checks::cpu(rate, "rate");
  checks::floating(rate, "rate");
  TORCH_CHECK_VALUE(rate.numel() == 1 && rate.dim() <= 1, "rate: expected 1 element (shape [] or [1]), got shape ",
                    rate.sizes());
  TORCH_CHECK_VALUE(batch_size >= 0, "batch_size: expected >= 0, got ", batch_size);
  TORCH_CHECK_VALUE(num_bands >= 1, "num_bands: expected >= 1, got ", num_bands);
  // Offsets are 32-bit Philox counters (and int32 in the Triton kernel).
  TORCH_CHECK_VALUE(batch_size <= ((int64_t{1} << 31) - 1) / num_bands,
                    "batch_size: batch_size * num_bands must be < 2^31, got ", batch_size, " * ", num_bands);

  // Clamp in float32 after the conversion, like the GPU path; NaN stays NaN
  // (std::max/std::min return their first argument when comparing with NaN),
  // which drops every band and falls back to the argmax band.
  float r = rate.to(at::kFloat).item<float>();
  r = std::min(std::max(r, 0.0f), 1.0f);

  const int64_t B = batch_size, C = num_bands;
  at::Tensor keep = at::empty({B, C}, at::TensorOptions().dtype(at::kBool));
  bool* out = keep.data_ptr<bool>();
  const int64_t grain = std::max<int64_t>(1, 4096 / C);
  at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      bool* row = out + b * C;
      const uint32_t base = static_cast<uint32_t>(b * C);
      bool any = false;
      float best = -1.0f;
      int64_t best_c = 0;
      for (int64_t c = 0; c < C; ++c) {
        const float u = philox::philox_uniform(s, base + static_cast<uint32_t>(c));
        const bool k = u >= r;
        row[c] = k;
        any |= k;
        if (u > best) {  // strict: first index wins ties
          best = u;
          best_c = c;
        }
      }
      if (!any) row[best_c] = true;
    }
  });
  return keep;
}

at::Tensor philox_uniform_op(const at::Tensor& seed, int64_t n) {
  const int64_t s = read_seed(seed);
  TORCH_CHECK_VALUE(n >= 0 && n <= (int64_t{1} << 31), "n: expected 0 <= n <= 2^31, got ", n);
  at::Tensor out = at::empty({n}, at::TensorOptions().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  at::parallel_for(0, n, 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) o[i] = philox::philox_uniform(s, static_cast<uint32_t>(i));
  });
  return out;
}

template <typename scalar_t>
inline void mul_span(scalar_t* __restrict dst, const scalar_t* __restrict src, const scalar_t* __restrict f,
                     int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i] * f[i];
}

at::Tensor band_dropout_apply(const at::Tensor& x_in, const at::Tensor& keep_in) {
  checks::cpu(x_in, "x");
  checks::floating(x_in, "x");
  checks::rank(x_in, 3, "x", "[B, M, C]");
  checks::cpu(keep_in, "keep");
  checks::dtype(keep_in, at::kBool, "keep");
  const int64_t B = x_in.size(0), M = x_in.size(1), C = x_in.size(2);
  checks::shape(keep_in, {B, C}, "keep", "(batch_size, num_bands) of x [B, M, C]");

  const at::Tensor x = x_in.contiguous();
  const at::Tensor keep = keep_in.contiguous();
  at::Tensor y = at::empty({B, M, C}, x.options());
  if (y.numel() == 0) return y;

  const int64_t per_sample = M * C;
  // The keep pattern repeats every C elements; tiling it over kPeriodRows rows
  // gives a factor buffer long enough that the multiply loop vectorizes
  // without a per-element modulo.
  constexpr int64_t kPeriodRows = 16;
  const int64_t period = kPeriodRows * C;
  // Chunks are whole periods so each one starts at phase 0 of the buffer.
  const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 15) / period) * period;
  const int64_t chunks_per_sample = (per_sample + chunk - 1) / chunk;
  const bool* kp = keep.data_ptr<bool>();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "cpu_band_dropout_apply", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, B * chunks_per_sample, 1, [&](int64_t t0, int64_t t1) {
      std::vector<scalar_t> factors(period);
      int64_t factors_for = -1;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / chunks_per_sample;
        const int64_t start = (t % chunks_per_sample) * chunk;
        const int64_t len = std::min(chunk, per_sample - start);
        if (b != factors_for) {
          for (int64_t i = 0; i < period; ++i) factors[i] = static_cast<scalar_t>(kp[b * C + i % C] ? 1 : 0);
          factors_for = b;
        }
        const scalar_t* src = xp + b * per_sample + start;
        scalar_t* dst = yp + b * per_sample + start;
        int64_t off = 0;
        for (; off + period <= len; off += period) mul_span(dst + off, src + off, factors.data(), period);
        mul_span(dst + off, src + off, factors.data(), len - off);
      }
    });
  });
  return y;
}

}  // namespace
}  // namespace mim_fast

TORCH_LIBRARY_IMPL(mim_fast, CPU, m) {
  m.impl("cpu_band_dropout_mask", &mim_fast::band_dropout_mask);
  m.impl("cpu_philox_uniform", &mim_fast::philox_uniform_op);
  m.impl("cpu_band_dropout_apply", &mim_fast::band_dropout_apply);
}
