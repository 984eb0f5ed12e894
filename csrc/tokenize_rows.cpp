// tokenize_rows.cpp - the fused tokenizer's embedding of exact work lists on CPU, all entries in one call.
//
//   cpu_tokenize_rows(xs[E], weights[E] [D, K_e], biases[E], keeps[E], works[E] [R_e, 7], tables[E],
//                     folds[E], patch_sizes[E], num_rows, save_patches) -> (out [num_rows, D], saved[E])
//       per entry: W = weight, or fold_weight(weight, folds[e][0], folds[e][1]) when folds[e] is a
//                      [2, P, w] pair of resize tables (the entry's rows are then raw w x w windows)
//                  A = token_patches(x, keep, work, tables, p)           [R_e, K_e]
//                  out[work[r, 4]] = A[r] @ W^T + bias                   (rows no work row names are zero)
//       saved[e] = A when save_patches (kept for the weight gradient), else an empty tensor.
//   cpu_tokenize_rows_backward(grad [num_rows, D], xs, weights, keeps, works, tables, folds, patch_sizes, saved,
//                              need_x[E], need_weight[E], need_bias[E]) -> [grad_x[E]] + [grad_w[E]] + [grad_b[E]]
//       G = grad[work[:, 4]]; grad_w = G^T A (unfolded for a folded entry); grad_b = sum_r G[r];
//       grad_x = token_patches_backward(G @ W) (an empty tensor where a gradient was not asked for).
//
// An empty bias / keep / folds tensor means "none". Slots must be >= 0 (exact lists, no padding rows).
// Folding here is for weights being trained (folded again every call, gradient unfolded); a frozen
// weight is folded once by the caller and passed as it is.
// This is the per-entry loop of mim_fast/ops/tokenize.py moved out of Python (at small batch sizes the
// Python-side dispatch of a few small ops per entry cost as much as the work itself), with one change:
// rows go through the GEMMs in chunks whose temporaries (patches that are not saved, GEMM outputs,
// gathered gradient rows) live in per-thread scratch that persists between calls. Fresh temporaries
// are first-touch page faults on every call once the allocator has returned memory to the system
// (which it does after any larger stage of a training step); on virtual machines those faults cost as
// much as the GEMMs of a small batch. The scratch is bounded (kScratchBytes per buffer, or one chunk of
// kMinChunkRows rows) and chunking only regroups the GEMM reduction for the weight gradient.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <optional>
#include <set>
#include <tuple>
#include <vector>

#include "checks.h"
#include "entry_schedule.h"
#include "fold_weight.h"
#include "output_pool.h"
#include "tokenize.h"

namespace mim_fast {
namespace {

constexpr int64_t kScratchBytes = int64_t(2) << 20;
constexpr int64_t kMinChunkRows = 128;

// Rows per chunk so that one chunk of row_elems-wide rows fits in kScratchBytes.
int64_t chunk_rows(int64_t row_elems, int64_t elem_size) {
  return std::max<int64_t>(kMinChunkRows, kScratchBytes / std::max<int64_t>(1, row_elems * elem_size));
}

constexpr int kScratchBuffers = 3;

// Each thread's scratch buffers (entries run on several threads, see entry_schedule.h), listed
// in a registry so that their bytes can be counted and freed from any thread.
struct ScratchSet;
std::mutex& scratch_mutex() {
  static auto* mutex = new std::mutex();  // never destroyed: threads may exit after static destructors
  return *mutex;
}
std::set<ScratchSet*>& scratch_registry() {
  static auto* registry = new std::set<ScratchSet*>();
  return *registry;
}
struct ScratchSet {
  std::array<at::Tensor, kScratchBuffers> buffers;
  ScratchSet() {
    std::lock_guard<std::mutex> guard(scratch_mutex());
    scratch_registry().insert(this);
  }
  ~ScratchSet() {
    std::lock_guard<std::mutex> guard(scratch_mutex());
    scratch_registry().erase(this);
  }
};
thread_local ScratchSet thread_scratch;

// A [rows, cols] tensor over this thread's scratch buffer `which` (grown when needed, never shrunk).
// Valid until the next call with the same `which` on this thread; never returned to callers.
at::Tensor scratch(int which, int64_t rows, int64_t cols, const at::TensorOptions& options) {
  const int64_t bytes = rows * cols * static_cast<int64_t>(c10::elementSize(options.dtype().toScalarType()));
  at::Tensor& buf = thread_scratch.buffers[which];
  if (!buf.defined() || buf.numel() < bytes) buf = at::empty({std::max<int64_t>(bytes, 1)}, at::kByte);
  return at::from_blob(buf.data_ptr(), {rows, cols}, options);
}

std::optional<at::Tensor> present(const at::Tensor& t) {
  if (!t.defined() || t.numel() == 0) return std::nullopt;
  return t;
}

int64_t check_lists(at::TensorList xs, at::TensorList weights, at::TensorList keeps, at::TensorList works,
                    at::TensorList tables, at::TensorList folds, at::IntArrayRef patch_sizes) {
  const size_t E = xs.size();
  TORCH_CHECK_VALUE(E >= 1, "xs: expected at least one entry");
  TORCH_CHECK_VALUE(weights.size() == E && keeps.size() == E && works.size() == E && tables.size() == E &&
                        folds.size() == E && patch_sizes.size() == E,
                    "weights, keeps, works, tables, folds, patch_sizes: expected ", E,
                    " items each (one per entry of xs)");
  const int64_t D = weights[0].dim() == 2 ? weights[0].size(0) : -1;
  for (size_t e = 0; e < E; ++e) {
    checks::cpu(weights[e], "weights");
    checks::rank(weights[e], 2, "weights", "[D, K]");
    TORCH_CHECK_VALUE(weights[e].size(0) == D, "weights: entry ", e, " has ", weights[e].size(0),
                      " output features, expected ", D, " (as entry 0)");
    checks::same_dtype(weights[e], xs[e], "weights", "xs");
    checks::cpu(works[e], "works");
    checks::dtype(works[e], at::kLong, "works");
    if (folds[e].numel()) {
      checks::rank(folds[e], 3, "folds", "[2, P, w] (row and column resize weights)");
      TORCH_CHECK_VALUE(folds[e].size(0) == 2, "folds: entry ", e, " expected shape [2, P, w], got ", folds[e].sizes());
    }
  }
  return D;
}

// The weight entry e's rows are projected with: folded when folds[e] is given.
at::Tensor used_weight(const at::Tensor& weight, const at::Tensor& fold) {
  return fold.numel() ? fold_weight(weight, fold[0], fold[1]) : weight;
}

void check_slots(const at::Tensor& work, int64_t num_rows, size_t entry) {
  const int64_t* wp = work.data_ptr<int64_t>();
  for (int64_t r = 0; r < work.size(0); ++r) {
    const int64_t slot = wp[r * 7 + 4];
    TORCH_CHECK_VALUE(slot >= 0 && slot < num_rows, "works: entry ", entry, " row ", r, " has slot ", slot,
                      ", expected [0, ", num_rows, ")");
  }
}

std::tuple<at::Tensor, std::vector<at::Tensor>> tokenize_rows(at::TensorList xs, at::TensorList weights,
                                                              at::TensorList biases, at::TensorList keeps,
                                                              at::TensorList works, at::TensorList tables,
                                                              at::TensorList folds, at::IntArrayRef patch_sizes,
                                                              int64_t num_rows, bool save_patches) {
  const int64_t D = check_lists(xs, weights, keeps, works, tables, folds, patch_sizes);
  TORCH_CHECK_VALUE(biases.size() == xs.size(), "biases: expected ", xs.size(), " items (one per entry of xs)");
  TORCH_CHECK_VALUE(num_rows >= 0, "num_rows: expected >= 0, got ", num_rows);
  bool out_is_zero = false;
  at::Tensor out = pooled_empty({num_rows, D}, xs[0].options(), &out_is_zero);
  // Rows no work row names (padding) must be zero: new memory already is, reused memory is cleared.
  std::vector<char> covered(out_is_zero ? 0 : static_cast<size_t>(num_rows), 0);
  std::vector<at::Tensor> saved;
  saved.reserve(xs.size());
  const size_t row_bytes = static_cast<size_t>(D) * out.element_size();
  char* op = static_cast<char*>(out.data_ptr());
  const size_t E = xs.size();
  // Checks and allocations first (serial), then the entries' work on all threads.
  std::vector<at::Tensor> work_of(E), weight_t_of(E), bias_of(E);
  std::vector<double> costs(E);
  for (size_t e = 0; e < E; ++e) {
    work_of[e] = works[e].contiguous();
    check_slots(work_of[e], num_rows, e);
    const auto bias = present(biases[e]);
    if (bias.has_value()) {
      checks::cpu(*bias, "biases");
      TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == D, "biases: entry ", e, " expected shape [", D,
                        "] (D of weights), got ", bias->sizes());
      bias_of[e] = bias->contiguous();
    }
    weight_t_of[e] = used_weight(weights[e], folds[e]).t();
    const int64_t R = work_of[e].size(0), K = weight_t_of[e].size(0);
    TORCH_CHECK_VALUE(tables[e].dim() == 4 && tables[e].size(2) * tables[e].size(2) * xs[e].size(-1) == K,
                      "weights: entry ", e, " has ", K, " input features, expected P * P * C of its tables and x");
    saved.push_back(save_patches ? at::empty({R, K}, xs[e].options()) : xs[e].new_empty({0}));
    costs[e] = static_cast<double>(R) * static_cast<double>(K) * static_cast<double>(D + 64);
  }
  run_entries_balanced(costs, [&](int64_t e) {
    const at::Tensor& work = work_of[e];
    const at::Tensor& weight_t = weight_t_of[e];
    const at::Tensor& bias = bias_of[e];
    const auto keep = present(keeps[e]);
    const int64_t R = work.size(0), K = weight_t.size(0);
    // Saved patches are not scratch: then only the GEMM output goes through a chunk.
    const int64_t chunk = chunk_rows(save_patches ? D : K + D, out.element_size());
    // Float adds the bias while scattering the rows (one pass over them instead of addmm's
    // copy of the bias into every row before the GEMM); other dtypes keep addmm's single rounding.
    const bool bias_in_scatter =
        bias.defined() && out.scalar_type() == at::kFloat && bias.scalar_type() == at::kFloat;
    const float* bp = bias_in_scatter ? bias.data_ptr<float>() : nullptr;
    const int64_t* wp = work.data_ptr<int64_t>();
    for (int64_t r0 = 0; r0 < R; r0 += chunk) {
      const int64_t n = std::min(chunk, R - r0);
      const at::Tensor patches = save_patches ? saved[e].narrow(0, r0, n) : scratch(0, n, K, xs[e].options());
      token_patches_out(xs[e], keep, work.narrow(0, r0, n), tables[e], patch_sizes[e], patches);
      at::Tensor rows = scratch(1, n, D, out.options());
      if (bias.defined() && !bias_in_scatter)
        at::addmm_out(rows, bias, patches, weight_t);
      else
        at::mm_out(rows, patches, weight_t);
      const char* rp = static_cast<const char*>(rows.data_ptr());
      const int64_t* wc = wp + r0 * 7;
      for (int64_t r = 0; r < n; ++r) {
        char* dst = op + wc[r * 7 + 4] * row_bytes;
        if (bp == nullptr) {
          std::memcpy(dst, rp + r * row_bytes, row_bytes);
        } else {
          float* d = reinterpret_cast<float*>(dst);
          const float* src = reinterpret_cast<const float*>(rp + r * row_bytes);
          for (int64_t k = 0; k < D; ++k) d[k] = src[k] + bp[k];
        }
      }
    }
    if (!out_is_zero)
      for (int64_t r = 0; r < R; ++r) covered[wp[r * 7 + 4]] = 1;
  });
  if (!out_is_zero)
    for (int64_t r = 0; r < num_rows; ++r)
      if (!covered[r]) std::memset(op + r * row_bytes, 0, row_bytes);
  return {out, saved};
}

std::vector<at::Tensor> tokenize_rows_backward(const at::Tensor& grad, at::TensorList xs, at::TensorList weights,
                                               at::TensorList keeps, at::TensorList works, at::TensorList tables,
                                               at::TensorList folds, at::IntArrayRef patch_sizes,
                                               at::TensorList saved, const c10::List<bool>& need_x,
                                               const c10::List<bool>& need_weight, const c10::List<bool>& need_bias) {
  const int64_t D = check_lists(xs, weights, keeps, works, tables, folds, patch_sizes);
  const size_t E = xs.size();
  TORCH_CHECK_VALUE(saved.size() == E && need_x.size() == E && need_weight.size() == E && need_bias.size() == E,
                    "saved, need_x, need_weight, need_bias: expected ", E, " items each (one per entry of xs)");
  checks::cpu(grad, "grad");
  checks::rank(grad, 2, "grad", "[num_rows, D]");
  TORCH_CHECK_VALUE(grad.size(1) == D, "grad: expected ", D, " columns (D of weights), got shape ", grad.sizes());
  std::vector<at::Tensor> work_of(E), grad_xs(E), grad_ws(E), grad_bs(E);
  std::vector<double> costs(E);
  for (size_t e = 0; e < E; ++e) {
    work_of[e] = works[e].contiguous();
    check_slots(work_of[e], grad.size(0), e);
    const double R = static_cast<double>(work_of[e].size(0));
    costs[e] = R * static_cast<double>(weights[e].size(1)) * static_cast<double>(D) * (need_x[e] ? 2.0 : 1.0) + 1.0;
  }
  run_entries_balanced(costs, [&](int64_t e) {
    const at::Tensor& work = work_of[e];
    const auto keep = present(keeps[e]);
    const at::Tensor slots = work.select(1, 4);
    const bool folded = folds[e].numel() > 0;
    // Kw: features of the weight; K: of the rows (a folded entry's rows are raw windows).
    const int64_t R = work.size(0), Kw = weights[e].size(1);
    const int64_t K = folded ? tables[e].size(2) * tables[e].size(2) * xs[e].size(-1) : Kw;
    const bool has_saved = saved[e].numel() > 0;
    // Gradients are outputs of every step: pooled. An entry without rows still gets zero
    // gradients, as in the dense computation.
    bool unused = false;
    at::Tensor gw = need_weight[e] ? (R ? pooled_empty({D, Kw}, weights[e].options(), &unused)
                                        : pooled_zeros({D, Kw}, weights[e].options()))
                                   : xs[e].new_empty({0});
    at::Tensor gb = need_bias[e] ? (R ? at::empty({D}, weights[e].options()) : pooled_zeros({D}, weights[e].options()))
                                 : xs[e].new_empty({0});
    if ((need_weight[e] || need_bias[e]) && R > 0) {
      // A folded entry's gradient is summed in the folded layout, then unfolded into gw.
      at::Tensor gsum = need_weight[e] && folded ? at::empty({D, K}, weights[e].options()) : gw;
      const int64_t chunk = chunk_rows(has_saved ? D : K + D, grad.element_size());
      for (int64_t r0 = 0; r0 < R; r0 += chunk) {
        const int64_t n = std::min(chunk, R - r0);
        at::Tensor picked = scratch(2, n, D, grad.options());
        at::index_select_out(picked, grad, 0, slots.narrow(0, r0, n));
        if (need_weight[e]) {
          at::Tensor patches = has_saved ? saved[e].narrow(0, r0, n) : scratch(0, n, K, xs[e].options());
          if (!has_saved) token_patches_out(xs[e], keep, work.narrow(0, r0, n), tables[e], patch_sizes[e], patches);
          if (r0 == 0)
            at::mm_out(gsum, picked.t(), patches);
          else
            gsum.addmm_(picked.t(), patches);
        }
        if (need_bias[e]) {
          if (r0 == 0)
            at::sum_out(gb, picked, 0);
          else
            gb.add_(picked.sum(0));
        }
      }
      if (need_weight[e] && folded) unfold_weight_out(gsum, folds[e][0], folds[e][1], gw);
    }
    grad_ws[e] = gw;
    grad_bs[e] = gb;
    if (need_x[e]) {
      const at::Tensor picked = at::index_select(grad, 0, slots);
      grad_xs[e] = token_patches_backward(at::mm(picked, used_weight(weights[e], folds[e])), xs[e].sizes(), keep,
                                          work, tables[e], patch_sizes[e]);
    } else {
      grad_xs[e] = xs[e].new_empty({0});
    }
  });
  std::vector<at::Tensor> flat;
  flat.reserve(3 * E);
  for (auto* part : {&grad_xs, &grad_ws, &grad_bs}) flat.insert(flat.end(), part->begin(), part->end());
  return flat;
}

}  // namespace

int64_t tokenize_scratch_bytes() {
  std::lock_guard<std::mutex> guard(scratch_mutex());
  int64_t total = 0;
  for (const ScratchSet* set : scratch_registry())
    for (const at::Tensor& buf : set->buffers)
      if (buf.defined()) total += buf.numel();
  return total;
}

void tokenize_release_scratch() {
  std::lock_guard<std::mutex> guard(scratch_mutex());
  for (ScratchSet* set : scratch_registry())
    for (at::Tensor& buf : set->buffers) buf = at::Tensor();
}

TORCH_LIBRARY_IMPL(mim_fast, CPU, m) {
  m.impl("cpu_tokenize_rows", &tokenize_rows);
  m.impl("cpu_tokenize_rows_backward", &tokenize_rows_backward);
}

}  // namespace mim_fast
