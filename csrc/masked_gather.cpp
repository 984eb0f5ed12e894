// masked_gather.cpp - CPU kernels that compact kept tokens and scatter them back.
//
//   cpu_gather_indices(keep bool [B, N]) -> (indices int64 [B, N], seqlens int64 [B])
//       indices[b] = stable partition of 0..N-1: kept positions ascending, then dropped
//       positions ascending (== torch.sort(keep.int(), 1, descending=True, stable=True).indices);
//       seqlens[b] = number of kept positions.
//   cpu_pack_rows(x [B, N, D], indices int64 [B, N], mask bool [B, L]) -> out [B, L, D]
//       out[b, l] = x[b, indices[b, l]] if l < N and mask[b, l] else 0
//   cpu_unpack_rows(tokens [B, L, D], indices int64 [B, N], mask bool [B, L], num_tokens = N)
//       -> out [B, N, D], zeros except out[b, indices[b, l]] = tokens[b, l] for l < min(L, N)
//          with mask[b, l] (a later l wins if an index repeats, as with serial stores).
//
// Rows are moved as raw bytes: the ops are pure data movement, and reading only
// the rows that are used is what makes them faster than gather + multiply.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>

#include "checks.h"

namespace mim_fast {
namespace {

std::tuple<at::Tensor, at::Tensor> gather_indices(const at::Tensor& keep_in) {
  checks::cpu(keep_in, "keep");
  checks::dtype(keep_in, at::kBool, "keep");
  checks::rank(keep_in, 2, "keep", "[B, N]");
  const at::Tensor keep = keep_in.contiguous();
  const int64_t B = keep.size(0), N = keep.size(1);
  at::Tensor indices = at::empty({B, N}, at::TensorOptions().dtype(at::kLong));
  at::Tensor seqlens = at::empty({B}, at::TensorOptions().dtype(at::kLong));
  const bool* kp = keep.data_ptr<bool>();
  int64_t* ip = indices.data_ptr<int64_t>();
  int64_t* sp = seqlens.data_ptr<int64_t>();
  at::parallel_for(0, B, std::max<int64_t>(1, 8192 / std::max<int64_t>(N, 1)), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const bool* k = kp + b * N;
      int64_t* out = ip + b * N;
      int64_t kept = 0;
      for (int64_t n = 0; n < N; ++n) kept += k[n] ? 1 : 0;
      int64_t pk = 0, pd = kept;
      for (int64_t n = 0; n < N; ++n) {
        if (k[n])
          out[pk++] = n;
        else
          out[pd++] = n;
      }
      sp[b] = kept;
    }
  });
  return {indices, seqlens};
}

at::Tensor pack_rows(const at::Tensor& x_in, const at::Tensor& indices_in, const at::Tensor& mask_in) {
  checks::cpu(x_in, "x");
  checks::floating(x_in, "x");
  checks::rank(x_in, 3, "x", "[B, N, D]");
  const int64_t B = x_in.size(0), N = x_in.size(1), D = x_in.size(2);
  checks::cpu(indices_in, "indices");
  checks::dtype(indices_in, at::kLong, "indices");
  checks::shape(indices_in, {B, N}, "indices", "(B, N) of x [B, N, D]");
  checks::cpu(mask_in, "mask");
  checks::dtype(mask_in, at::kBool, "mask");
  checks::rank(mask_in, 2, "mask", "[B, L]");
  TORCH_CHECK_VALUE(mask_in.size(0) == B, "mask: expected batch size ", B, " (from x [B, N, D]), got shape ",
                    mask_in.sizes());
  const int64_t L = mask_in.size(1);

  const at::Tensor x = x_in.contiguous();
  const at::Tensor indices = indices_in.contiguous();
  const at::Tensor mask = mask_in.contiguous();
  checks::index_range(indices, N, "indices");

  at::Tensor out = at::empty({B, L, D}, x.options());
  if (out.numel() == 0) return out;
  const size_t row_bytes = static_cast<size_t>(D) * x.element_size();
  const char* xp = static_cast<const char*>(x.data_ptr());
  char* op = static_cast<char*>(out.data_ptr());
  const int64_t* ip = indices.data_ptr<int64_t>();
  const bool* mp = mask.data_ptr<bool>();
  const int64_t grain = std::max<int64_t>(1, 16384 / static_cast<int64_t>(row_bytes));
  at::parallel_for(0, B * L, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / L, l = r % L;
      char* dst = op + r * row_bytes;
      if (l < N && mp[r]) {
        std::memcpy(dst, xp + (b * N + ip[b * N + l]) * row_bytes, row_bytes);
      } else {
        std::memset(dst, 0, row_bytes);  // all-zero bytes are +0.0 in every float dtype
      }
    }
  });
  return out;
}

at::Tensor unpack_rows(const at::Tensor& tokens_in, const at::Tensor& indices_in, const at::Tensor& mask_in,
                       int64_t num_tokens) {
  checks::cpu(tokens_in, "tokens");
  checks::floating(tokens_in, "tokens");
  checks::rank(tokens_in, 3, "tokens", "[B, L, D]");
  const int64_t B = tokens_in.size(0), L = tokens_in.size(1), D = tokens_in.size(2);
  TORCH_CHECK_VALUE(num_tokens >= 0, "num_tokens: expected >= 0, got ", num_tokens);
  const int64_t N = num_tokens;
  checks::cpu(indices_in, "indices");
  checks::dtype(indices_in, at::kLong, "indices");
  checks::shape(indices_in, {B, N}, "indices", "(B, num_tokens)");
  checks::cpu(mask_in, "mask");
  checks::dtype(mask_in, at::kBool, "mask");
  checks::shape(mask_in, {B, L}, "mask", "(B, L) of tokens [B, L, D]");

  const at::Tensor tokens = tokens_in.contiguous();
  const at::Tensor indices = indices_in.contiguous();
  const at::Tensor mask = mask_in.contiguous();
  checks::index_range(indices, N, "indices");

  at::Tensor out = at::empty({B, N, D}, tokens.options());
  if (out.numel() == 0) return out;

  // Invert the scatter first (source row per output row, -1 = none) so the
  // output is written in one pass with no separate zero fill, and duplicate
  // indices resolve deterministically to the last l, like serial stores.
  at::Tensor src_of = at::empty({B, N}, at::TensorOptions().dtype(at::kLong));
  int64_t* sp = src_of.data_ptr<int64_t>();
  const int64_t* ip = indices.data_ptr<int64_t>();
  const bool* mp = mask.data_ptr<bool>();
  const int64_t Lu = std::min(L, N);
  at::parallel_for(0, B, std::max<int64_t>(1, 8192 / std::max<int64_t>(N, 1)), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t* s = sp + b * N;
      std::fill(s, s + N, int64_t{-1});
      for (int64_t l = 0; l < Lu; ++l)
        if (mp[b * L + l]) s[ip[b * N + l]] = l;
    }
  });

  const size_t row_bytes = static_cast<size_t>(D) * tokens.element_size();
  const char* tp = static_cast<const char*>(tokens.data_ptr());
  char* op = static_cast<char*>(out.data_ptr());
  const int64_t grain = std::max<int64_t>(1, 16384 / static_cast<int64_t>(row_bytes));
  at::parallel_for(0, B * N, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / N;
      char* dst = op + r * row_bytes;
      const int64_t l = sp[r];
      if (l >= 0)
        std::memcpy(dst, tp + (b * L + l) * row_bytes, row_bytes);
      else
        std::memset(dst, 0, row_bytes);
    }
  });
  return out;
}

}  // namespace
}  // namespace mim_fast

TORCH_LIBRARY_IMPL(mim_fast, CPU, m) {
  m.impl("cpu_gather_indices", &mim_fast::gather_indices);
  m.impl("cpu_pack_rows", &mim_fast::pack_rows);
  m.impl("cpu_unpack_rows", &mim_fast::unpack_rows);
}
