// Dispatch solver: assign n jobs (chunk workloads) to k buckets (ranks), exactly n/k jobs per
// bucket, keeping the largest bucket sum small (design §2.3).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "geometry/range.hpp"

namespace magi {

enum class DispatchAlg {
  kMinHeap,                 // "min_heap": largest job first onto the least-loaded non-full bucket
  kSequential,              // "sequential": contiguous blocks of n/k jobs
  kRandomSelect,            // "random_select": seeded shuffle, then contiguous blocks
  kToppHeap,                // "topp_heap": min-heap over the top_p least-loaded, k-range affinity
  kSortedSequentialSelect,  // "sorted_sequential_select": whole samples onto the least loaded
  kBacktrackingPruning,     // "backtracking_pruning": exact branch and bound (small n only)
};

DispatchAlg dispatch_alg_from_string(const char* fn, const std::string& name);
const char* dispatch_alg_name(DispatchAlg alg);

struct DispatchParams {
  DispatchAlg alg = DispatchAlg::kMinHeap;
  double top_p = 0.0;             // topp_heap: fraction of buckets considered per job, in [0, 1]
  uint64_t seed = 0;              // random_select
  double allocation_ratio = 1.0;  // sorted_sequential_select: share of a sample per heap pop, (0, 1]
};

// Optional per-job side information. k_ranges (merged, per job) feeds the IoU affinity of
// topp_heap; sample_ids (-1 = none) groups jobs for sorted_sequential_select. Either may be empty.
struct JobInfo {
  std::vector<std::vector<AttnRange>> k_ranges;
  std::vector<int64_t> sample_ids;
};

// Largest n for backtracking_pruning (exponential).
constexpr int64_t kMaxBacktrackingJobs = 32;

// Returns k partitions of the job indices, each sorted ascending with exactly n/k entries.
// RangeError on bad input (k < 1, n % k != 0, negative workloads, bad parameters).
std::vector<std::vector<int64_t>> solve_dispatch(const char* fn, const std::vector<int64_t>& workloads,
                                                 int64_t cp_size, const DispatchParams& params,
                                                 const JobInfo* info = nullptr);

}  // namespace magi
