// Static distributed attention plan (KV-only communication, design §3): per rank, a host stage on
// local KV plus num_stages remote stages, each fetching part of the remote KV with one group_cast.
// Every rank can build every rank's plan from the replicated mask: no collectives.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dispatch/chunking.hpp"
#include "dispatch/dispatch_meta.hpp"
#include "geometry/range.hpp"
#include "plan/overlap.hpp"

namespace magi {

// Kernel arguments of one stage: slices in (host-local q, buffer-local k) coordinates.
struct CalcArgs {
  std::vector<MaskSlice> slices;  // sorted by (q.start, q.end, k.start)
  int64_t area = 0;
  std::string repr() const;
};

// group_cast arguments of one rank for one stage, in token units of the local K buffer.
struct CastArgs {
  std::vector<int64_t> input_split_sizes;         // sums to shard_seqlen
  std::vector<std::vector<int64_t>> dst_indices;  // per input split: sorted, unique, never self
  std::vector<int64_t> output_split_sizes;        // sums to the stage's num_recv_tokens
  std::vector<int64_t> src_index;                 // per output split
  std::string repr() const;
};

struct StagePlan {
  std::vector<AttnRange> remote_k_ranges;  // global, merged; the receive buffer back to back
  int64_t num_recv_tokens = 0;
  CalcArgs calc;
  CastArgs cast;
};

struct RankPlan {
  int64_t rank = 0;
  std::vector<AttnRange> host_q_ranges, host_k_ranges;  // global, merged
  std::vector<AttnRange> remote_k_ranges;               // global, merged: touched minus held
  CalcArgs host_calc;
  std::vector<StagePlan> stages;
  std::string repr() const;
};

struct DistAttnPlan {
  int64_t cp_size = 0;
  int64_t num_stages = 0;
  std::vector<std::shared_ptr<const RankPlan>> plans;  // per rank; null when not built
  const RankPlan& rank_plan(int64_t r) const;          // RangeError when not built
  std::vector<int64_t> built_ranks() const;
  std::string repr() const;
};

// Builds the plans of `ranks` (all ranks when empty). Pure and deterministic.
DistAttnPlan make_dist_attn_plan(const RangePairs& q_ranges, const RangePairs& k_ranges,
                                 const std::vector<int64_t>& mask_types, const DispatchMeta& meta,
                                 const OverlapParams& overlap, const std::vector<int64_t>& ranks);

}  // namespace magi
