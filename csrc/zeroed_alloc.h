// zeroed_alloc.h - tensors whose memory comes zeroed from calloc.
//
// Packed token buffers are mostly written row by row, but their padding rows (14-53 % of the
// rows at the study's shapes) and the gradients of projections that saw no token must be zero.
// at::zeros writes every byte, touching every page. calloc hands out fresh pages that are
// already zero (glibc skips the clearing for memory it just obtained from the system), so pages
// nobody writes are never faulted in; for reused heap memory it clears them like at::zeros.
// Allocations are reported to the profiler like the default CPU allocator's, so memory
// profiles still count them.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/Allocator.h>

#include <cstdint>
#include <cstdlib>
#include <new>

namespace mim_fast {

inline at::Tensor zeroed_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  constexpr size_t kAlign = 64;  // the default CPU allocator's alignment
  int64_t numel = 1;
  for (const int64_t s : sizes) {
    TORCH_CHECK_VALUE(s >= 0, "zeroed_empty: negative size ", s);
    numel *= s;
  }
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(options.dtype().toScalarType()) + kAlign;
  void* base = std::calloc(bytes, 1);
  if (base == nullptr) throw std::bad_alloc();
  const auto address = reinterpret_cast<std::uintptr_t>(base);
  void* data = reinterpret_cast<void*>((address + kAlign - 1) / kAlign * kAlign);
  const c10::Device device(c10::DeviceType::CPU);
  c10::reportMemoryUsageToProfiler(base, static_cast<int64_t>(bytes), 0, 0, device);
  return at::from_blob(
      data, sizes,
      [base, bytes, device](void*) {
        c10::reportMemoryUsageToProfiler(base, -static_cast<int64_t>(bytes), 0, 0, device);
        std::free(base);
      },
      options.device(device));
}

}  // namespace mim_fast
