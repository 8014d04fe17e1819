// Multi-stage overlap solver: group a rank's remote KV chunks into stages so each stage's fetch
// hides behind the previous stage's compute (design §3.5).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace magi {

enum class OverlapMode { kStatic, kDynamic };
enum class OverlapAlg { kUniform, kGreedy };

struct OverlapParams {
  bool enable = true;
  OverlapMode mode = OverlapMode::kStatic;
  int64_t degree = 1;              // remote stages (static mode)
  int64_t dynamic_max_degree = 8;  // dynamic mode searches 1..dynamic_max_degree (0: max_num_chunks)
  int64_t min_chunk_size = 512;
  int64_t max_num_chunks = 64;
  OverlapAlg alg = OverlapAlg::kUniform;
  double calc_cost_factor = 1.0;  // cost per unit of attention area
  double comm_cost_factor = 1.0;  // cost per fetched token
  bool random_costs = false;      // uniform: shuffle the remote chunk order (seeded)
  int64_t random_seed = 0;

  // The parameters actually used: enable=false means static, one stage, one chunk.
  OverlapParams effective() const;
  std::string repr() const;
  bool operator==(const OverlapParams& o) const;
};

OverlapMode overlap_mode_from_string(const char* fn, const std::string& s);
OverlapAlg overlap_alg_from_string(const char* fn, const std::string& s);
const char* overlap_mode_name(OverlapMode m);
const char* overlap_alg_name(OverlapAlg a);
void check_overlap(const char* fn, const OverlapParams& p);  // RangeError on bad values

// Overlap chunk size for `remote_tokens` remote KV tokens (> 0): min_chunk_size, or larger so
// that at most max_num_chunks chunks result.
int64_t overlap_chunk_size(int64_t remote_tokens, const OverlapParams& p);

// Per remote chunk c: comm[c] tokens and calc[c] attention area. host_calc is the host area.
struct StageCosts {
  double host_calc = 0.0;
  std::vector<double> comm, calc;  // already multiplied by the cost factors
};

// overall = max(comm(S0), host) + sum_{s>=1} max(comm(S_s), calc(S_{s-1})) + calc(S_last).
double overlap_cost(const StageCosts& c, const std::vector<std::vector<int64_t>>& stages);

// Chunk ids per stage (exactly `degree` stages, some maybe empty) with the configured algorithm.
// `rank` only salts the random_costs shuffle.
std::vector<std::vector<int64_t>> assign_stages(const StageCosts& c, int64_t degree,
                                                const OverlapParams& p, int64_t rank);

// Static mode: `degree`. Dynamic mode: the degree in 1..min(dynamic_max_degree, N + 1) with the
// smallest (round(cost), degree); dynamic_max_degree 0 stands for max_num_chunks.
int64_t choose_degree(const StageCosts& c, const OverlapParams& p, int64_t rank);

}  // namespace magi
