// Dynamic-solver algorithms: assign every grid cell to a rank (design §4.4). NCQ keeps each cell
// on its q owner (KV-only behaviour); GRG is a seeded greedy over random cell orders; BinaryGreedy
// binary-searches a per-rank communication budget, picks replication edges greedily under it and
// assigns cells greedily among the ranks that then hold both the cell's q and k.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dynamic/dynamic_grid.hpp"

namespace magi {

enum class DynAlg { kNcq, kGrg, kBinaryGreedy };
DynAlg dyn_alg_from_string(const char* fn, const std::string& s);  // RangeError when unknown
const char* dyn_alg_name(DynAlg a);

// Cost = calc_cost_factor * area + comm_cost_factor * weighted tokens, where a received q token
// weighs q_token_weight (hq / hkv: q heads per kv head) and a received kv token kv_token_weight
// (2: K and V). Area is in cells of the (expanded) mask.
struct DynCostModel {
  double q_token_weight = 1.0;
  double kv_token_weight = 2.0;
  double calc_cost_factor = 1.0;
  double comm_cost_factor = 1.0;
};

struct DynSolveParams {
  DynAlg alg = DynAlg::kBinaryGreedy;
  DynCostModel cost;
  uint64_t seed = 42;
  double balance = 1.10;  // feasible: max area <= balance * average area
};

// Per-rank load of an assignment, with a chunk-granular comm estimate (tokens of the intervals a
// rank needs and does not own; the plan reports exact counts).
struct DynScore {
  std::vector<int64_t> area, comm_q, comm_kv;
  double score = 0.0;  // calc*max area + comm*(max weighted comm + sum/(10*cp))
  bool feasible = false;
};
DynScore score_assignment(const DynGrid& g, const std::vector<int32_t>& cell_rank, const DynSolveParams& p);

struct DynSolution {
  std::vector<int32_t> cell_rank;  // per grid cell
  bool feasible = false;           // max area <= balance * average
};

DynSolution solve_dynamic(const DynGrid& g, const DynSolveParams& p);

}  // namespace magi
