// Dynamic attention plan (QO comm, design §4.3): every mask cell is assigned to some rank (not
// necessarily its q owner); each rank's bucket splits into a host part (q and k local) and a
// remote part computed on two receive buffers (remote Q, remote KV) filled by one group_cast each.
// Every rank computes the same plan from the replicated inputs: no collectives.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dispatch/chunking.hpp"
#include "dispatch/dispatch_meta.hpp"
#include "dynamic/dynamic_algs.hpp"
#include "dynamic/dynamic_grid.hpp"
#include "plan/dist_attn_plan.hpp"

namespace magi {

// group_cast arguments of one rank, in tokens of its local buffer (expanded when head groups are
// flattened). Unlike the static plan, dst_indices may contain the rank itself: locally held rows
// that a remote slice needs are copied into the remote buffer too (the anchor's calc_local_range),
// so the remote calc runs in one coordinate system.
// The transpose of a DynCastArgs: group_reduce arguments sending every received row back to its
// source (out/lse "lse" reduce and dq reduce for Q; dk/dv reduce for KV).
struct DynReduceArgs {
  std::vector<int64_t> input_split_sizes;          // the cast's output splits
  std::vector<int64_t> dst_index;                  // the cast's src_index
  std::vector<int64_t> output_split_sizes;         // the cast's input splits
  std::vector<std::vector<int64_t>> src_indices;   // the cast's dst_indices
  std::string repr() const;
};

struct DynCastArgs {
  std::vector<int64_t> input_split_sizes;         // sums to the local buffer length
  std::vector<std::vector<int64_t>> dst_indices;  // per input split: sorted, unique (self allowed)
  std::vector<int64_t> output_split_sizes;        // sums to the receive buffer length
  std::vector<int64_t> src_index;                 // per output split (self allowed)
  DynReduceArgs transpose() const;
  std::string repr() const;
};

struct DynRankPlan {
  int64_t rank = 0;
  std::vector<AttnRange> host_ranges;  // global (expanded), merged: the local buffer back to back
  CalcArgs host_calc;                  // q, k local to the host buffer
  CalcArgs remote_calc;                // q local to the remote-Q buffer, k to the remote-KV buffer
  std::vector<AttnRange> remote_q_ranges, remote_kv_ranges;  // global, merged: the buffers
  int64_t num_remote_q_tokens = 0, num_remote_kv_tokens = 0;
  DynCastArgs q_cast, kv_cast;
  std::string repr() const;
};

struct DynPlanParams {
  DynAlg alg = DynAlg::kBinaryGreedy;
  int64_t num_heads_q = 1, num_heads_kv = 1;
  bool flatten_head_groups = false;
  double calc_cost_factor = 1.0, comm_cost_factor = 1.0;
  int64_t seed = 42;
};

struct DynamicPlan {
  int64_t cp_size = 0;
  int64_t num_head_groups = 1;  // num_heads_kv when flattened, else 1
  int64_t total_seqlen = 0;     // expanded: num_head_groups * dispatch total_seqlen
  DynPlanParams params;
  bool feasible = false;
  double cost = 0.0;
  std::vector<int64_t> per_rank_area, per_rank_comm_q, per_rank_comm_kv;  // comm: tokens from others
  std::shared_ptr<const DynGrid> grid;
  std::vector<int32_t> cell_rank;
  std::vector<std::shared_ptr<const DynRankPlan>> plans;  // null when not built

  const DynRankPlan& rank_plan(int64_t r) const;  // RangeError when not built
  std::vector<AttnSlice> bucket(int64_t r) const;  // exact cells of rank r, global coordinates
  std::vector<int64_t> built_ranks() const;
  std::string repr() const;
};

DynamicPlan make_dynamic_plan(const RangePairs& q_ranges, const RangePairs& k_ranges,
                              const std::vector<int64_t>& mask_types, const DispatchMeta& meta,
                              const DynPlanParams& params, const std::vector<int64_t>& ranks);

}  // namespace magi
