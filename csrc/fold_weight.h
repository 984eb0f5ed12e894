// fold_weight.h - the separable resize folded into a projection weight (fold_weight.cpp),
// shared with tokenize_rows.cpp (which folds the weights being trained on every call).
#pragma once

#include <ATen/ATen.h>

namespace mim_fast {

// folded [D, w*w*C] of weight [D, P*P*C] with the row / column resize weights [P, w].
at::Tensor fold_weight(const at::Tensor& weight, const at::Tensor& row_w, const at::Tensor& col_w);

// The adjoint of fold_weight: out [D, P*P*C] (contiguous, overwritten) from grad_folded [D, w*w*C].
void unfold_weight_out(const at::Tensor& grad_folded, const at::Tensor& row_w, const at::Tensor& col_w,
                       const at::Tensor& out);

}  // namespace mim_fast
