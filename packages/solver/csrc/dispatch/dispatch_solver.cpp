// Dispatch algorithms (design §2.3). All return equal-count partitions sorted ascending; every
// tie is broken by index so the result is a pure function of the input.
#include "dispatch/dispatch_solver.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <queue>
#include <utility>

#include "errors.hpp"
#include "geometry/ranges.hpp"

namespace magi {

DispatchAlg dispatch_alg_from_string(const char* fn, const std::string& name) {
  if (name == "min_heap") return DispatchAlg::kMinHeap;
  if (name == "sequential") return DispatchAlg::kSequential;
  if (name == "random_select") return DispatchAlg::kRandomSelect;
  if (name == "topp_heap") return DispatchAlg::kToppHeap;
  if (name == "sorted_sequential_select") return DispatchAlg::kSortedSequentialSelect;
  if (name == "backtracking_pruning") return DispatchAlg::kBacktrackingPruning;
  MAGI_CHECK(false, fn << ": alg='" << name
                       << "' is not a dispatch algorithm; expected one of 'min_heap', 'sequential', "
                          "'random_select', 'topp_heap', 'sorted_sequential_select', "
                          "'backtracking_pruning'.");
  return DispatchAlg::kMinHeap;
}

const char* dispatch_alg_name(DispatchAlg alg) {
  switch (alg) {
    case DispatchAlg::kMinHeap: return "min_heap";
    case DispatchAlg::kSequential: return "sequential";
    case DispatchAlg::kRandomSelect: return "random_select";
    case DispatchAlg::kToppHeap: return "topp_heap";
    case DispatchAlg::kSortedSequentialSelect: return "sorted_sequential_select";
    case DispatchAlg::kBacktrackingPruning: return "backtracking_pruning";
  }
  return "?";
}

namespace {

using Partition = std::vector<std::vector<int64_t>>;
// (bucket sum, bucket index): std::greater makes the least loaded, then lowest index, the top.
using BucketHeap = std::priority_queue<std::pair<int64_t, int64_t>,
                                       std::vector<std::pair<int64_t, int64_t>>, std::greater<>>;

// splitmix64: a tiny portable generator, so a seed gives the same shuffle on every platform.
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
};

void sort_buckets(Partition& p) {
  for (auto& b : p) std::sort(b.begin(), b.end());
}

// Jobs by workload descending; equal workloads in descending index order (a stable ascending
// sort, reversed).
std::vector<int64_t> jobs_descending(const std::vector<int64_t>& w) {
  std::vector<int64_t> order(w.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return w[a] < w[b]; });
  std::reverse(order.begin(), order.end());
  return order;
}

Partition min_heap(const std::vector<int64_t>& w, int64_t k) {
  const int64_t cap = static_cast<int64_t>(w.size()) / k;
  Partition p(k);
  BucketHeap heap;
  for (int64_t b = 0; b < k; ++b) heap.push({0, b});
  for (int64_t j : jobs_descending(w)) {
    auto [sum, b] = heap.top();  // never full: full buckets are not pushed back
    heap.pop();
    p[b].push_back(j);
    if (static_cast<int64_t>(p[b].size()) < cap) heap.push({sum + w[j], b});
  }
  return p;
}

Partition sequential(int64_t n, int64_t k) {
  Partition p(k);
  for (int64_t j = 0; j < n; ++j) p[j / (n / k)].push_back(j);
  return p;
}

Partition random_select(int64_t n, int64_t k, uint64_t seed) {
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  SplitMix64 rng{seed};
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(rng.next() % static_cast<uint64_t>(i + 1));
    std::swap(order[i], order[j]);
  }
  Partition p(k);
  for (int64_t i = 0; i < n; ++i) p[i / (n / k)].push_back(order[i]);
  return p;
}

int64_t union_len(const std::vector<AttnRange>& a) {
  int64_t s = 0;
  for (const auto& r : a) s += r.end - r.start;
  return s;
}

// |a ∩ b| for two merged (sorted, disjoint) range lists.
int64_t intersect_len(const std::vector<AttnRange>& a, const std::vector<AttnRange>& b) {
  int64_t s = 0;
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    const int64_t lo = std::max(a[i].start, b[j].start), hi = std::min(a[i].end, b[j].end);
    if (lo < hi) s += hi - lo;
    (a[i].end < b[j].end) ? ++i : ++j;
  }
  return s;
}

std::vector<AttnRange> merge_union(const std::vector<AttnRange>& a, const std::vector<AttnRange>& b) {
  std::vector<AttnRange> all(a);
  all.insert(all.end(), b.begin(), b.end());
  return merge_nonempty(std::move(all));
}

// MinHeap over the m = max(1, ceil(k * top_p)) least-loaded non-full buckets, picking the one
// whose accumulated k ranges have the largest IoU with the job's (ties: the least loaded).
Partition topp_heap(const std::vector<int64_t>& w, int64_t k, double top_p, const JobInfo* info) {
  const bool has_aff = info && info->k_ranges.size() == w.size();
  const int64_t cap = static_cast<int64_t>(w.size()) / k;
  const int64_t m = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(k * top_p - 1e-12)));
  Partition p(k);
  std::vector<std::vector<AttnRange>> bucket_k(k);
  BucketHeap heap;
  for (int64_t b = 0; b < k; ++b) heap.push({0, b});
  for (int64_t j : jobs_descending(w)) {
    std::vector<std::pair<int64_t, int64_t>> cand;
    while (!heap.empty() && static_cast<int64_t>(cand.size()) < m) {
      cand.push_back(heap.top());
      heap.pop();
    }
    size_t pick = 0;
    if (has_aff && cand.size() > 1) {
      const auto& jk = info->k_ranges[j];
      const int64_t jlen = union_len(jk);
      double best = -1.0;
      for (size_t c = 0; c < cand.size(); ++c) {
        const auto& bk = bucket_k[cand[c].second];
        const int64_t inter = intersect_len(jk, bk);
        const int64_t uni = jlen + union_len(bk) - inter;
        const double iou = uni > 0 ? static_cast<double>(inter) / static_cast<double>(uni) : 0.0;
        if (iou > best) best = iou, pick = c;
      }
    }
    for (size_t c = 0; c < cand.size(); ++c) {
      auto [sum, b] = cand[c];
      if (c == pick) {
        p[b].push_back(j);
        if (has_aff) bucket_k[b] = merge_union(bucket_k[b], info->k_ranges[j]);
        sum += w[j];
      }
      if (static_cast<int64_t>(p[b].size()) < cap) heap.push({sum, b});
    }
  }
  return p;
}

// Samples by decreasing total workload; each sample's jobs (ascending) go to the least-loaded
// non-full bucket, at most ceil(ratio * #jobs of the sample) per pop, so a sample stays as
// contiguous as the capacity allows. Jobs without a sample (or with no workload) come last.
Partition sorted_sequential_select(const std::vector<int64_t>& w, int64_t k, double ratio,
                                   const JobInfo* info) {
  const int64_t n = static_cast<int64_t>(w.size()), cap = n / k;
  std::vector<int64_t> sid(n);
  for (int64_t j = 0; j < n; ++j) {
    const bool has = info && info->sample_ids.size() == w.size();
    sid[j] = w[j] > 0 ? (has ? info->sample_ids[j] : j) : -1;
  }
  std::vector<int64_t> ids;
  for (int64_t s : sid)
    if (s >= 0) ids.push_back(s);
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  std::vector<std::vector<int64_t>> jobs_of(ids.size());
  std::vector<int64_t> area_of(ids.size(), 0);
  std::vector<int64_t> leftovers;
  for (int64_t j = 0; j < n; ++j) {
    if (sid[j] < 0) {
      leftovers.push_back(j);
      continue;
    }
    const size_t s = std::lower_bound(ids.begin(), ids.end(), sid[j]) - ids.begin();
    jobs_of[s].push_back(j);
    area_of[s] += w[j];
  }
  std::vector<size_t> order(ids.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return area_of[a] > area_of[b]; });
  Partition p(k);
  BucketHeap heap;
  for (int64_t b = 0; b < k; ++b) heap.push({0, b});
  auto hand_out = [&](const std::vector<int64_t>& jobs, int64_t step) {
    size_t i = 0;
    while (i < jobs.size()) {
      auto [sum, b] = heap.top();
      heap.pop();
      const int64_t room = cap - static_cast<int64_t>(p[b].size());
      const int64_t take = std::min<int64_t>({room, step, static_cast<int64_t>(jobs.size() - i)});
      for (int64_t t = 0; t < take; ++t, ++i) {
        p[b].push_back(jobs[i]);
        sum += w[jobs[i]];
      }
      if (static_cast<int64_t>(p[b].size()) < cap) heap.push({sum, b});
    }
  };
  for (size_t s : order) {
    const int64_t cnt = static_cast<int64_t>(jobs_of[s].size());
    hand_out(jobs_of[s], std::max<int64_t>(1, static_cast<int64_t>(std::ceil(ratio * cnt - 1e-12))));
  }
  hand_out(leftovers, 1);
  return p;
}

// Exact minimax with equal counts: depth-first over jobs (largest first), bucket symmetry broken
// by skipping buckets in the same (sum, count) state, bounded by the incumbent (MinHeap's answer
// to start) and by the slack the non-full buckets have left.
Partition backtracking_pruning(const std::vector<int64_t>& w, int64_t k) {
  const int64_t n = static_cast<int64_t>(w.size()), cap = n / k;
  Partition best_p = min_heap(w, k);
  int64_t best = 0;
  for (const auto& b : best_p) {
    int64_t s = 0;
    for (int64_t j : b) s += w[j];
    best = std::max(best, s);
  }
  const std::vector<int64_t> order = jobs_descending(w);
  int64_t total = 0;
  for (int64_t x : w) total += x;
  const int64_t lower = std::max(order.empty() ? 0 : w[order[0]], (total + k - 1) / k);
  if (best <= lower) return best_p;
  std::vector<int64_t> sum(k, 0), cnt(k, 0), assign(n, -1);
  std::vector<int64_t> suffix(n + 1, 0);
  for (int64_t i = n - 1; i >= 0; --i) suffix[i] = suffix[i + 1] + w[order[i]];
  std::function<void(int64_t)> dfs = [&](int64_t i) {
    if (best <= lower) return;
    if (i == n) {
      best = *std::max_element(sum.begin(), sum.end());
      best_p.assign(k, {});
      for (int64_t t = 0; t < n; ++t) best_p[assign[t]].push_back(order[t]);
      return;
    }
    int64_t slack = 0;
    for (int64_t b = 0; b < k; ++b)
      if (cnt[b] < cap) slack += best - 1 - sum[b];
    if (slack < suffix[i]) return;
    const int64_t wi = w[order[i]];
    for (int64_t b = 0; b < k; ++b) {
      if (cnt[b] == cap || sum[b] + wi >= best) continue;
      bool seen = false;
      for (int64_t c = 0; c < b && !seen; ++c) seen = cnt[c] == cnt[b] && sum[c] == sum[b];
      if (seen) continue;
      sum[b] += wi, ++cnt[b], assign[i] = b;
      dfs(i + 1);
      sum[b] -= wi, --cnt[b];
      if (best <= lower) return;
    }
  };
  dfs(0);
  return best_p;
}

}  // namespace

std::vector<std::vector<int64_t>> solve_dispatch(const char* fn, const std::vector<int64_t>& workloads,
                                                 int64_t cp_size, const DispatchParams& params,
                                                 const JobInfo* info) {
  const int64_t n = static_cast<int64_t>(workloads.size());
  MAGI_CHECK(cp_size >= 1, fn << ": cp_size=" << cp_size << " must be >= 1.");
  MAGI_CHECK(n > 0 && n % cp_size == 0,
             fn << ": the number of jobs (chunks)=" << n << " must be a positive multiple of cp_size="
                << cp_size << " so every rank gets the same count.");
  for (int64_t j = 0; j < n; ++j)
    MAGI_CHECK(workloads[j] >= 0, fn << ": workloads[" << j << "]=" << workloads[j] << " is negative.");
  MAGI_CHECK(params.top_p >= 0.0 && params.top_p <= 1.0,
             fn << ": top_p=" << params.top_p << " must be in [0, 1].");
  MAGI_CHECK(params.allocation_ratio > 0.0 && params.allocation_ratio <= 1.0,
             fn << ": allocation_ratio=" << params.allocation_ratio << " must be in (0, 1].");
  if (params.alg == DispatchAlg::kBacktrackingPruning)
    MAGI_CHECK(n <= kMaxBacktrackingJobs,
               fn << ": alg='backtracking_pruning' is exponential and takes at most "
                  << kMaxBacktrackingJobs << " jobs, got " << n << "; use 'min_heap' instead.");
  Partition p;
  switch (params.alg) {
    case DispatchAlg::kMinHeap: p = min_heap(workloads, cp_size); break;
    case DispatchAlg::kSequential: p = sequential(n, cp_size); break;
    case DispatchAlg::kRandomSelect: p = random_select(n, cp_size, params.seed); break;
    case DispatchAlg::kToppHeap: p = topp_heap(workloads, cp_size, params.top_p, info); break;
    case DispatchAlg::kSortedSequentialSelect:
      p = sorted_sequential_select(workloads, cp_size, params.allocation_ratio, info);
      break;
    case DispatchAlg::kBacktrackingPruning: p = backtracking_pruning(workloads, cp_size); break;
  }
  sort_buckets(p);
  return p;
}

}  // namespace magi
