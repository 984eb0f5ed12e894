// checks.h - argument validation shared by the CPU ops.
//
// Every failure raises a Python ValueError (shape / range / device) or
// TypeError (dtype) whose message starts with the argument name, so callers
// see which input was wrong instead of a crash deep inside a kernel.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace mim_fast {
namespace checks {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

inline void cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, ": expected a CPU tensor, got device ", t.device());
}

inline void floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(is_supported_float(t.scalar_type()), name,
                   ": expected dtype float32, float64, bfloat16 or float16, got ", t.scalar_type());
}

inline void dtype(const at::Tensor& t, at::ScalarType want, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == want, name, ": expected dtype ", want, ", got ", t.scalar_type());
}

inline void same_dtype(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* ref_name) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), name, ": expected dtype ", ref.scalar_type(),
                   " (same as ", ref_name, "), got ", t.scalar_type());
}

// layout: human-readable dim names, e.g. "[B, M, C]".
inline void rank(const at::Tensor& t, int64_t want, const char* name, const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == want, name, ": expected a ", want, "-d tensor ", layout, ", got shape ",
                    t.sizes());
}

// layout: the meaning of the expected dims, e.g. "(batch_size, num_bands)".
inline void shape(const at::Tensor& t, const std::vector<int64_t>& want, const char* name, const char* layout) {
  TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(want), name, ": expected shape ", at::IntArrayRef(want), " ",
                    layout, ", got ", t.sizes());
}

// A bad gather/scatter index would read or write out of bounds, so all of
// them are validated up front (serially: an exception thrown inside a
// parallel region is harder to reason about and this pass is cheap).
inline void index_range(const at::Tensor& idx, int64_t upper, const char* name) {
  const int64_t* p = idx.data_ptr<int64_t>();
  const int64_t n = idx.numel();
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= static_cast<uint64_t>(p[i]) < static_cast<uint64_t>(upper);
  if (ok) return;
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(p[i] >= 0 && p[i] < upper, name, ": values must be in [0, ", upper, "), found ", p[i],
                      " at flat position ", i);
  }
}

}  // namespace checks
}  // namespace mim_fast
