// entry_schedule.h - run the fused tokenizer's per-entry work on all threads at once.
//
// At small batch sizes an entry's GEMMs are small (a few hundred rows; K down to 64 for
// single-band maps) and scale poorly over threads, and every entry has serial steps (checks,
// table setup). Instead of one entry at a time on all threads, entries are spread over the
// threads and each runs single-threaded (nested parallel regions, including the BLAS called
// through ATen, run inline). An entry too large to balance keeps all threads.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

namespace mim_fast {

// Calls fn(e) once for every entry e < costs.size(). An entry costing more than an even share
// of the total (total / threads) cannot be balanced: those run first, one at a time on all
// threads; the others run concurrently, single-threaded, largest first onto the least loaded
// thread.
template <typename Fn>
void run_entries_balanced(const std::vector<double>& costs, const Fn& fn) {
  const int64_t E = static_cast<int64_t>(costs.size());
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), E);
  if (threads <= 1 || at::in_parallel_region()) {
    for (int64_t e = 0; e < E; ++e) fn(e);
    return;
  }
  const double share = std::accumulate(costs.begin(), costs.end(), 0.0) / static_cast<double>(threads);
  std::vector<int64_t> order;
  for (int64_t e = 0; e < E; ++e) {
    if (costs[e] > share)
      fn(e);
    else
      order.push_back(e);
  }
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return costs[a] > costs[b]; });
  std::vector<std::vector<int64_t>> bins(threads);
  std::vector<double> load(threads, 0.0);
  for (const int64_t e : order) {
    const int64_t t = std::min_element(load.begin(), load.end()) - load.begin();
    bins[t].push_back(e);
    load[t] += costs[e];
  }
  // The workers run the ATen calls as the calling thread would (dispatch keys, grad mode).
  const at::ThreadLocalState state;
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    at::ThreadLocalStateGuard guard(state);
    for (int64_t t = t0; t < t1; ++t)
      for (const int64_t e : bins[t]) fn(e);
  });
}

}  // namespace mim_fast
