// tokenize.h - the fused tokenizer's row builder (tokenize.cpp), shared with tokenize_rows.cpp.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

namespace mim_fast {

// A [R, P*P*C]: the resized P x P patch of every work row (see tokenize.cpp for the layout).
at::Tensor token_patches(const at::Tensor& x, const std::optional<at::Tensor>& keep, const at::Tensor& work,
                         const at::Tensor& tables, int64_t patch_size);

// The same, written into out (a contiguous [R, P*P*C] tensor of x's dtype) when given.
at::Tensor token_patches_out(const at::Tensor& x, const std::optional<at::Tensor>& keep, const at::Tensor& work,
                             const at::Tensor& tables, int64_t patch_size, const std::optional<at::Tensor>& out);

// grad_x [B, H, W, T, C]: the adjoint of token_patches.
at::Tensor token_patches_backward(const at::Tensor& grad_patches, at::IntArrayRef x_shape,
                                  const std::optional<at::Tensor>& keep, const at::Tensor& work,
                                  const at::Tensor& tables, int64_t patch_size);

// Bytes of scratch all threads hold for cpu_tokenize_rows (kept between calls).
int64_t tokenize_scratch_bytes();

// Frees every thread's scratch (it is allocated again on the next call); not while a
// tokenizer call runs on another thread.
void tokenize_release_scratch();

}  // namespace mim_fast
