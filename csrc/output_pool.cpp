// output_pool.cpp - see output_pool.h.
#include "output_pool.h"

#include <ATen/ATen.h>
#include <c10/core/Allocator.h>

#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <new>

namespace mim_fast {
namespace {

constexpr size_t kAlign = 64;  // the default CPU allocator's alignment
constexpr size_t kPoolMinBytes = size_t(1) << 20;
constexpr size_t kPoolIdleBytes = size_t(256) << 20;

struct Block {
  void* base;
  size_t capacity;  // usable bytes from the aligned data pointer
  void* data() const {
    const auto address = reinterpret_cast<std::uintptr_t>(base);
    return reinterpret_cast<void*>((address + kAlign - 1) / kAlign * kAlign);
  }
};

const c10::Device kCpu(c10::DeviceType::CPU);

Block new_block(size_t bytes) {
  void* base = std::calloc(bytes + kAlign, 1);
  if (base == nullptr) throw std::bad_alloc();
  c10::reportMemoryUsageToProfiler(base, static_cast<int64_t>(bytes + kAlign), 0, 0, kCpu);
  return {base, bytes};
}

void free_block(const Block& block) {
  c10::reportMemoryUsageToProfiler(block.base, -static_cast<int64_t>(block.capacity + kAlign), 0, 0, kCpu);
  std::free(block.base);
}

bool pool_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("MIM_FAST_CPU_OUTPUT_POOL");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return enabled;
}

class Pool {
 public:
  // A block of at least `bytes`; reused only when it is at most twice that size.
  bool take(size_t bytes, Block* out) {
    std::lock_guard<std::mutex> guard(mutex_);
    auto it = idle_.lower_bound(bytes);
    if (it == idle_.end() || it->first > 2 * bytes) return false;
    *out = it->second;
    idle_bytes_ -= it->first;
    idle_.erase(it);
    return true;
  }

  void give_back(const Block& block) {
    std::lock_guard<std::mutex> guard(mutex_);
    idle_.emplace(block.capacity, block);
    idle_bytes_ += block.capacity;
    while (idle_bytes_ > kPoolIdleBytes && !idle_.empty()) {
      auto largest = std::prev(idle_.end());
      idle_bytes_ -= largest->first;
      free_block(largest->second);
      idle_.erase(largest);
    }
  }

  size_t idle_bytes() {
    std::lock_guard<std::mutex> guard(mutex_);
    return idle_bytes_;
  }

  void release() {
    std::lock_guard<std::mutex> guard(mutex_);
    for (auto& entry : idle_) free_block(entry.second);
    idle_.clear();
    idle_bytes_ = 0;
  }

 private:
  std::mutex mutex_;
  std::multimap<size_t, Block> idle_;
  size_t idle_bytes_ = 0;
};

// Never destroyed: tensors may die after static destructors have run.
Pool& pool() {
  static Pool* instance = new Pool();
  return *instance;
}

}  // namespace

at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options, bool* is_zero) {
  int64_t numel = 1;
  for (const int64_t s : sizes) {
    TORCH_CHECK_VALUE(s >= 0, "pooled_empty: negative size ", s);
    numel *= s;
  }
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(options.dtype().toScalarType());
  const bool pooled = pool_enabled() && bytes >= kPoolMinBytes;
  Block block;
  *is_zero = !(pooled && pool().take(bytes, &block));
  if (*is_zero) block = new_block(bytes);
  return at::from_blob(
      block.data(), sizes,
      [block, pooled](void*) {
        if (pooled)
          pool().give_back(block);
        else
          free_block(block);
      },
      options.device(kCpu));
}

at::Tensor pooled_zeros(at::IntArrayRef sizes, const at::TensorOptions& options) {
  bool is_zero = false;
  at::Tensor t = pooled_empty(sizes, options, &is_zero);
  if (!is_zero) t.zero_();
  return t;
}

int64_t output_pool_idle_bytes() { return static_cast<int64_t>(pool().idle_bytes()); }

void output_pool_release() { pool().release(); }

}  // namespace mim_fast
