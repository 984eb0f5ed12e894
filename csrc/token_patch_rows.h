// token_patch_rows.h - the per-row kernels of the fused tokenizer's CPU row builder (tokenize.cpp).
//
// One call builds the patches of a range of work rows (layout and math: tokenize.cpp). The
// helpers are always inlined, so that each instruction set's copy of build_row_range (baseline,
// and AVX2 + FMA for float, chosen at run time in tokenize.cpp) gets its own vector code (simd.h).
//
// Where the time goes and how it is kept low:
//   * The separable resize is a column pass (cols[u, (q2 c)] for each window row u) and a row pass
//     over contiguous (q2 c) runs. Sums are accumulated in fixed-size register blocks with the taps
//     innermost (a block of 32 sums stays in registers over all taps of a row instead of being read
//     and written once per tap), and only the non-zero taps of each table row are visited.
//   * Few channels (C < 4: Sentinel-1, single-band maps) make the column pass of C-wide runs
//     scalar; for those it runs transposed, P outputs at once per input pixel and channel.
//   * The band mask is tiled over a row once per sample, not recomputed per element.
//   * p == P is a copy; with T == 1 each patch row is one contiguous run of P * C values.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "simd.h"
#include "tap_sums.h"

namespace mim_fast {
namespace {

template <typename acc_t>
struct RowBuild {
  // Geometry of the entry.
  int64_t H, W, T, C, p, P, win, margin, n_classes, K;
  const bool* keep;        // [B, C] or nullptr
  const int64_t* work;     // [R, 7]
  const acc_t* row_tab;    // [n_classes, P, win]
  const acc_t* col_tab;    // [n_classes, P, win]
  const acc_t* col_tab_t;  // [n_classes, win, P]: col_tab transposed (the transposed column pass)
  const std::pair<int64_t, int64_t>* row_taps;  // [n_classes * P]: non-zero tap range of each row
  const std::pair<int64_t, int64_t>* col_taps;  // [n_classes * P]
  const std::pair<int64_t, int64_t>* row_span;  // [n_classes]: union of the row taps of a class
  const std::pair<int64_t, int64_t>* col_span;  // [n_classes]
};

// cols[q2 * C + c] = sum_v CW[q2, v] * src[v * pixel_stride + c] for one window row, C >= 4.
template <int kLanes, typename scalar_t, typename acc_t>
MIM_FAST_INLINE void column_pass_wide(acc_t* cols, const scalar_t* src, int64_t pixel_stride,
                                      const RowBuild<acc_t>& g, int64_t cc, int64_t v_min, int64_t v_max) {
  const acc_t* cw = g.col_tab + cc * g.P * g.win;
  const auto* taps = g.col_taps + cc * g.P;
  for (int64_t q2 = 0; q2 < g.P; ++q2)
    tap_run<kLanes, false>(cols + q2 * g.C, src, pixel_stride, cw + q2 * g.win, std::max(taps[q2].first, v_min),
                           std::min(taps[q2].second, v_max), static_cast<const acc_t*>(nullptr), g.C);
}

// The same for C < 4: for each input pixel v and channel c, all P outputs at once
// (cols[:, c] += CW[:, v] * src[v, c]); taps outside a row's range have zero weight.
template <int kLanes, typename scalar_t, typename acc_t>
MIM_FAST_INLINE void column_pass_narrow(acc_t* cols, const scalar_t* src, int64_t pixel_stride,
                                        const RowBuild<acc_t>& g, int64_t cc, int64_t v_min, int64_t v_max) {
  const acc_t* cwt = g.col_tab_t + cc * g.win * g.P;
  const int64_t v_lo = std::max(g.col_span[cc].first, v_min), v_hi = std::min(g.col_span[cc].second, v_max);
  for (int64_t c = 0; c < g.C; ++c) {
    if constexpr (std::is_same_v<acc_t, float>) {
      if (g.P == 8) {
        using Vec = FloatVec<kLanes>;
        typename Vec::type a[8 / kLanes] = {};
        for (int64_t v = v_lo; v < v_hi; ++v) {
          const float s = static_cast<float>(src[v * pixel_stride + c]);
          for (int k = 0; k < 8 / kLanes; ++k) a[k] += Vec::load(cwt + v * 8 + k * kLanes) * s;
        }
        float lanes[8];
        for (int k = 0; k < 8 / kLanes; ++k) Vec::store(lanes + k * kLanes, a[k]);
        for (int64_t q = 0; q < 8; ++q) cols[q * g.C + c] = lanes[q];
        continue;
      }
    }
    acc_t a[64];
    for (int64_t q = 0; q < g.P; ++q) a[q] = acc_t(0);
    for (int64_t v = v_lo; v < v_hi; ++v) {
      const acc_t s = static_cast<acc_t>(src[v * pixel_stride + c]);
      const acc_t* e = cwt + v * g.P;
      for (int64_t q = 0; q < g.P; ++q) a[q] += e[q] * s;
    }
    for (int64_t q = 0; q < g.P; ++q) cols[q * g.C + c] = a[q];
  }
}

// The band mask of sample b tiled over a (q2 c) run: kf[q2 * C + c] = keep[b, c].
template <typename acc_t>
MIM_FAST_INLINE void tile_keep(acc_t* kf, const RowBuild<acc_t>& g, int64_t b) {
  for (int64_t c = 0; c < g.C; ++c) kf[c] = (g.keep == nullptr || g.keep[b * g.C + c]) ? acc_t(1) : acc_t(0);
  for (int64_t q2 = 1; q2 < g.P; ++q2) std::memcpy(kf + q2 * g.C, kf, static_cast<size_t>(g.C) * sizeof(acc_t));
}

// p == P: the token's own P x P block times the band mask.
template <typename scalar_t, typename acc_t>
MIM_FAST_INLINE void copy_row(scalar_t* dst, const scalar_t* x, const int64_t* wr, const acc_t* kf,
                              const RowBuild<acc_t>& g) {
  const int64_t b = wr[0], i = wr[1], j = wr[2], t = wr[3];
  const int64_t PC = g.P * g.C, pixel_stride = g.T * g.C;
  for (int64_t q1 = 0; q1 < g.P; ++q1) {
    const scalar_t* src = x + (((b * g.H + i * g.P + q1) * g.W + j * g.P) * g.T + t) * g.C;
    scalar_t* d = dst + q1 * PC;
    if (g.T == 1 && g.keep == nullptr) {
      std::memcpy(d, src, static_cast<size_t>(PC) * sizeof(scalar_t));
    } else if (g.T == 1) {
      for (int64_t k = 0; k < PC; ++k) d[k] = static_cast<scalar_t>(static_cast<acc_t>(src[k]) * kf[k]);
    } else {
      for (int64_t q2 = 0; q2 < g.P; ++q2)
        for (int64_t c = 0; c < g.C; ++c)
          d[q2 * g.C + c] = static_cast<scalar_t>(static_cast<acc_t>(src[q2 * pixel_stride + c]) * kf[c]);
    }
  }
}

// p != P: column pass over the window rows the row taps reach, then the row pass.
template <int kLanes, typename scalar_t, typename acc_t>
MIM_FAST_INLINE void resize_row(scalar_t* dst, const scalar_t* x, const int64_t* wr, acc_t* cols, const acc_t* kf,
                                const RowBuild<acc_t>& g) {
  const int64_t b = wr[0], i = wr[1], j = wr[2], t = wr[3], rc = wr[5], cc = wr[6];
  const int64_t PC = g.P * g.C, pixel_stride = g.T * g.C;
  const int64_t top = i * g.p - g.margin, left = j * g.p - g.margin;
  // Window pixels outside the image are zero. Resize tables give them zero weight already;
  // clipping here also keeps tables that do not (identity tables of raw windows) inside it.
  const int64_t v_min = std::max<int64_t>(0, -left), v_max = std::min(g.win, g.W - left);
  const int64_t u_min = std::max<int64_t>(0, -top), u_max = std::min(g.win, g.H - top);
  const int64_t u_lo = std::max(g.row_span[rc].first, u_min), u_hi = std::min(g.row_span[rc].second, u_max);
  for (int64_t u = u_lo; u < u_hi; ++u) {
    const scalar_t* src = x + (((b * g.H + top + u) * g.W + left) * g.T + t) * g.C;
    acc_t* cu = cols + u * PC;
    if (g.C >= 4 || g.P > 64)
      column_pass_wide<kLanes>(cu, src, pixel_stride, g, cc, v_min, v_max);
    else
      column_pass_narrow<kLanes>(cu, src, pixel_stride, g, cc, v_min, v_max);
  }
  const acc_t* rw = g.row_tab + rc * g.P * g.win;
  const auto* taps = g.row_taps + rc * g.P;
  for (int64_t q1 = 0; q1 < g.P; ++q1)
    tap_run<kLanes, true>(dst + q1 * PC, cols, PC, rw + q1 * g.win, std::max(taps[q1].first, u_lo),
                          std::min(taps[q1].second, u_hi), kf, PC);
}

// Patches of work rows [r0, r1) into out [R, K]; cols [win * P * C] and kf [P * C] are scratch.
// kLanes: float vector width of this copy (4 baseline, 8 AVX2).
template <int kLanes, typename scalar_t, typename acc_t>
MIM_FAST_INLINE void build_row_range(const scalar_t* x, scalar_t* out, const RowBuild<acc_t>& g, int64_t r0,
                                     int64_t r1, acc_t* cols, acc_t* kf) {
  int64_t tiled_for = -1;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t* wr = g.work + r * 7;
    scalar_t* dst = out + r * g.K;
    if (wr[4] < 0) {
      std::fill(dst, dst + g.K, scalar_t(0));
      continue;
    }
    if (wr[0] != tiled_for) {
      tile_keep(kf, g, wr[0]);
      tiled_for = wr[0];
    }
    if (g.p == g.P)
      copy_row(dst, x, wr, kf, g);
    else
      resize_row<kLanes>(dst, x, wr, cols, kf, g);
  }
}

}  // namespace
}  // namespace mim_fast
