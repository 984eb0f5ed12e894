// token_layout.cpp - packed layout and per-entry work lists of the fused tokenizer, in one call.
//
//   cpu_token_layout(chosen bool [B, N], max_len, offsets[E], strides[E], grids[3E] = (h, w, T) per entry,
//                    row_classes[E] int64 [h], col_classes[E] int64 [w], split[3E] = (rc, cc, min_rows))
//       -> (indices int64 [B, N], seqlens int64 [B], mask bool [B, L], works: 2 per entry)
//
//   indices / seqlens: the masked_gather layout (selected positions ascending, then the others);
//   L = max_len, or max(seqlens) when max_len < 0 (max_len smaller than a sample's count is an error).
//   Entry e owns global positions offsets[e] + n * strides[e] for its tokens n, flattened row-major
//   over (i, j, t). Its selected tokens become work rows (sample, i, j, t, slot, row class, col class),
//   slot = b * L + rank of the position among the sample's selected ones, grouped by sample, token order.
//   works[2e] holds them, works[2e + 1] is empty, unless split[3e] >= 0 and more than split[3e + 2] rows
//   have (row class, col class) == (split[3e], split[3e + 1]): those rows then move to works[2e + 1]
//   with their classes set to 0 (the caller embeds them with a folded weight and identity tables).
//
// The same result as the tensor composition in mim_fast/ops/_token_layout.py (tested for equality);
// one call instead of a dozen small tensor ops per entry, which dominate at small batch sizes.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "checks.h"

namespace mim_fast {
namespace {

struct EntryGrid {
  int64_t offset, stride, h, w, t, split_rc, split_cc, min_rows;
  const int64_t* row_class;
  const int64_t* col_class;
};

std::vector<EntryGrid> check_entries(int64_t N, at::IntArrayRef offsets, at::IntArrayRef strides, at::IntArrayRef grids,
                                     at::TensorList row_classes, at::TensorList col_classes, at::IntArrayRef split) {
  const int64_t E = static_cast<int64_t>(offsets.size());
  TORCH_CHECK_VALUE(E >= 1, "offsets: expected at least one entry");
  TORCH_CHECK_VALUE(static_cast<int64_t>(strides.size()) == E, "strides: expected ", E, " values (one per entry), got ",
                    strides.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(grids.size()) == 3 * E, "grids: expected ", 3 * E,
                    " values ((h, w, T) per entry), got ", grids.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(split.size()) == 3 * E, "split: expected ", 3 * E,
                    " values ((row class, col class, min rows) per entry), got ", split.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(row_classes.size()) == E && static_cast<int64_t>(col_classes.size()) == E,
                    "row_classes, col_classes: expected ", E, " tensors each (one per entry)");
  std::vector<EntryGrid> out(E);
  for (int64_t e = 0; e < E; ++e) {
    EntryGrid& g = out[e];
    g.offset = offsets[e];
    g.stride = strides[e];
    g.h = grids[3 * e];
    g.w = grids[3 * e + 1];
    g.t = grids[3 * e + 2];
    g.split_rc = split[3 * e];
    g.split_cc = split[3 * e + 1];
    g.min_rows = split[3 * e + 2];
    TORCH_CHECK_VALUE(g.h >= 0 && g.w >= 0 && g.t >= 0, "grids: entry ", e, " has a negative size");
    TORCH_CHECK_VALUE(g.stride >= 1 && g.offset >= 0, "offsets, strides: entry ", e, " has offset ", g.offset,
                      " and stride ", g.stride, ", expected offset >= 0 and stride >= 1");
    const int64_t n = g.h * g.w * g.t;
    TORCH_CHECK_VALUE(n == 0 || g.offset + (n - 1) * g.stride < N, "offsets: entry ", e, " reaches position ",
                      g.offset + (n - 1) * g.stride, " beyond the ", N, " columns of chosen");
    const at::Tensor& rc = row_classes[e];
    const at::Tensor& cc = col_classes[e];
    checks::cpu(rc, "row_classes");
    checks::cpu(cc, "col_classes");
    checks::dtype(rc, at::kLong, "row_classes");
    checks::dtype(cc, at::kLong, "col_classes");
    TORCH_CHECK_VALUE(rc.dim() == 1 && rc.size(0) == g.h && rc.is_contiguous(), "row_classes: entry ", e,
                      " expected a contiguous [", g.h, "] tensor, got shape ", rc.sizes());
    TORCH_CHECK_VALUE(cc.dim() == 1 && cc.size(0) == g.w && cc.is_contiguous(), "col_classes: entry ", e,
                      " expected a contiguous [", g.w, "] tensor, got shape ", cc.sizes());
    g.row_class = rc.data_ptr<int64_t>();
    g.col_class = cc.data_ptr<int64_t>();
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> token_layout(
    const at::Tensor& chosen_in, int64_t max_len, at::IntArrayRef offsets, at::IntArrayRef strides,
    at::IntArrayRef grids, at::TensorList row_classes, at::TensorList col_classes, at::IntArrayRef split) {
  checks::cpu(chosen_in, "chosen");
  checks::dtype(chosen_in, at::kBool, "chosen");
  checks::rank(chosen_in, 2, "chosen", "[B, N]");
  const at::Tensor chosen = chosen_in.contiguous();
  const int64_t B = chosen.size(0), N = chosen.size(1);
  const auto entries = check_entries(N, offsets, strides, grids, row_classes, col_classes, split);
  const auto long_opts = at::TensorOptions().dtype(at::kLong);
  const bool* cp = chosen.data_ptr<bool>();

  // Layout: rank of every selected position within its sample, and the gather order.
  at::Tensor indices = at::empty({B, N}, long_opts);
  at::Tensor seqlens = at::empty({B}, long_opts);
  std::vector<int64_t> rank(static_cast<size_t>(B * N), -1);
  int64_t* ip = indices.data_ptr<int64_t>();
  int64_t* sp = seqlens.data_ptr<int64_t>();
  int64_t longest = 0;
  for (int64_t b = 0; b < B; ++b) {
    const bool* c = cp + b * N;
    int64_t kept = 0;
    for (int64_t n = 0; n < N; ++n) kept += c[n] ? 1 : 0;
    int64_t pk = 0, pd = kept;
    for (int64_t n = 0; n < N; ++n) {
      if (c[n]) {
        rank[b * N + n] = pk;
        ip[b * N + pk++] = n;
      } else {
        ip[b * N + pd++] = n;
      }
    }
    sp[b] = kept;
    longest = std::max(longest, kept);
  }
  if (max_len >= 0) {
    TORCH_CHECK_VALUE(longest <= max_len, "max_len: ", max_len, " is smaller than the largest number of kept tokens ",
                      longest);
  }
  const int64_t L = max_len >= 0 ? max_len : longest;
  at::Tensor mask = at::empty({B, L}, at::TensorOptions().dtype(at::kBool));
  bool* mp = mask.data_ptr<bool>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t l = 0; l < L; ++l) mp[b * L + l] = l < sp[b];

  std::vector<at::Tensor> works;
  works.reserve(2 * entries.size());
  for (const EntryGrid& g : entries) {
    const int64_t n_tokens = g.h * g.w * g.t;
    int64_t total = 0, inner = 0;
    const bool can_split = g.split_rc >= 0 && g.split_cc >= 0;
    auto is_inner = [&](int64_t n) {
      const int64_t i = n / (g.w * g.t), j = (n / g.t) % g.w;
      return g.row_class[i] == g.split_rc && g.col_class[j] == g.split_cc;
    };
    for (int64_t b = 0; b < B; ++b)
      for (int64_t n = 0; n < n_tokens; ++n)
        if (cp[b * N + g.offset + n * g.stride]) {
          ++total;
          if (can_split && is_inner(n)) ++inner;
        }
    const bool split_rows = can_split && inner > g.min_rows;
    if (!split_rows) inner = 0;
    at::Tensor main_rows = at::empty({total - inner, 7}, long_opts);
    at::Tensor inner_rows = at::empty({inner, 7}, long_opts);
    int64_t* mw = main_rows.data_ptr<int64_t>();
    int64_t* iw = inner_rows.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t n = 0; n < n_tokens; ++n) {
        const int64_t pos = g.offset + n * g.stride;
        if (!cp[b * N + pos]) continue;
        const int64_t i = n / (g.w * g.t), j = (n / g.t) % g.w, t = n % g.t;
        const int64_t rc = g.row_class[i], cc = g.col_class[j];
        const bool to_inner = split_rows && rc == g.split_rc && cc == g.split_cc;
        int64_t* row = to_inner ? iw : mw;
        row[0] = b;
        row[1] = i;
        row[2] = j;
        row[3] = t;
        row[4] = b * L + rank[b * N + pos];
        row[5] = to_inner ? 0 : rc;
        row[6] = to_inner ? 0 : cc;
        if (to_inner)
          iw += 7;
        else
          mw += 7;
      }
    }
    works.push_back(main_rows);
    works.push_back(inner_rows);
  }
  return {indices, seqlens, mask, works};
}

}  // namespace

TORCH_LIBRARY_IMPL(mim_fast, CPU, m) { m.impl("cpu_token_layout", &token_layout); }

}  // namespace mim_fast
