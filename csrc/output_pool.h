// output_pool.h - memory for the fused tokenizer's CPU outputs, kept mapped between steps.
//
// The packed token buffers and weight gradients are fresh tensors every step. Once the C
// allocator has handed large freed blocks back to the system (glibc does for blocks above
// its mmap threshold, and trims the heap after any larger stage of a training step), every
// fresh buffer costs a page fault per 4 KiB on first touch and an unmapping when freed; on
// virtual machines that is several ms per step at small batch sizes. Buffers from
// pooled_empty go back to a pool in this library when their tensor dies and are handed out
// again (like PyTorch's CUDA caching allocator, for these outputs only). New blocks come from
// calloc, so pages nobody writes (padding rows) are never touched.
//
// Bounds: idle blocks are kept up to kPoolIdleBytes (largest dropped first); requests below
// kPoolMinBytes go straight to calloc. MIM_FAST_CPU_OUTPUT_POOL=0 disables the pool.
// Blocks are reported to the profiler as allocated from creation until they leave the pool,
// so memory profiles count idle pool memory as held.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace mim_fast {

// An uninitialised tensor whose memory returns to the pool when it dies. *is_zero tells
// whether the memory is known to be zero (a new block) or holds old data (a reused one).
at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options, bool* is_zero);

// The same, always zero-filled (only reused blocks are written).
at::Tensor pooled_zeros(at::IntArrayRef sizes, const at::TensorOptions& options);

// Bytes of idle blocks in the pool; frees them all.
int64_t output_pool_idle_bytes();
void output_pool_release();

}  // namespace mim_fast
