// Overlap solver: uniform and greedy stage assignment under the pipeline cost model.
#include "plan/overlap.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include "errors.hpp"

namespace magi {

OverlapParams OverlapParams::effective() const {
  OverlapParams p = *this;
  if (!p.enable) {
    p.mode = OverlapMode::kStatic;
    p.degree = 1;
    p.max_num_chunks = 1;
  }
  return p;
}

OverlapMode overlap_mode_from_string(const char* fn, const std::string& s) {
  if (s == "static") return OverlapMode::kStatic;
  if (s == "dynamic") return OverlapMode::kDynamic;
  MAGI_CHECK(false, fn << ": mode='" << s << "' is not an overlap mode; expected 'static' or 'dynamic'.");
  return OverlapMode::kStatic;
}

OverlapAlg overlap_alg_from_string(const char* fn, const std::string& s) {
  if (s == "uniform") return OverlapAlg::kUniform;
  if (s == "greedy") return OverlapAlg::kGreedy;
  MAGI_CHECK(false, fn << ": alg='" << s << "' is not an overlap algorithm; expected 'uniform' or 'greedy'.");
  return OverlapAlg::kUniform;
}

const char* overlap_mode_name(OverlapMode m) { return m == OverlapMode::kStatic ? "static" : "dynamic"; }
const char* overlap_alg_name(OverlapAlg a) { return a == OverlapAlg::kUniform ? "uniform" : "greedy"; }

void check_overlap(const char* fn, const OverlapParams& p) {
  MAGI_CHECK(p.min_chunk_size > 0, fn << ": min_chunk_size=" << p.min_chunk_size << " must be > 0.");
  MAGI_CHECK(p.max_num_chunks > 0, fn << ": max_num_chunks=" << p.max_num_chunks << " must be > 0.");
  MAGI_CHECK(std::isfinite(p.calc_cost_factor) && p.calc_cost_factor > 0,
             fn << ": calc_cost_factor=" << p.calc_cost_factor << " must be finite and > 0.");
  MAGI_CHECK(std::isfinite(p.comm_cost_factor) && p.comm_cost_factor > 0,
             fn << ": comm_cost_factor=" << p.comm_cost_factor << " must be finite and > 0.");
  if (!p.enable) return;
  if (p.mode == OverlapMode::kStatic) {
    MAGI_CHECK(p.degree >= 1 && p.degree <= p.max_num_chunks,
               fn << ": degree=" << p.degree << " must be in [1, max_num_chunks=" << p.max_num_chunks
                  << "] in static mode.");
  } else {
    MAGI_CHECK(p.dynamic_max_degree >= 0,
               fn << ": dynamic_max_degree=" << p.dynamic_max_degree
                  << " must be >= 1 (or 0: no limit but max_num_chunks).");
  }
}

std::string OverlapParams::repr() const {
  std::ostringstream os;
  os << "OverlapParams(enable=" << (enable ? "True" : "False") << ", mode='" << overlap_mode_name(mode)
     << "', degree=" << degree << ", dynamic_max_degree=" << dynamic_max_degree
     << ", min_chunk_size=" << min_chunk_size << ", max_num_chunks=" << max_num_chunks << ", alg='"
     << overlap_alg_name(alg) << "', calc_cost_factor=" << calc_cost_factor
     << ", comm_cost_factor=" << comm_cost_factor << ", random_costs=" << (random_costs ? "True" : "False")
     << ", random_seed=" << random_seed << ")";
  return os.str();
}

bool OverlapParams::operator==(const OverlapParams& o) const {
  return enable == o.enable && mode == o.mode && degree == o.degree &&
         dynamic_max_degree == o.dynamic_max_degree && min_chunk_size == o.min_chunk_size &&
         max_num_chunks == o.max_num_chunks && alg == o.alg && calc_cost_factor == o.calc_cost_factor &&
         comm_cost_factor == o.comm_cost_factor && random_costs == o.random_costs &&
         random_seed == o.random_seed;
}

int64_t overlap_chunk_size(int64_t remote_tokens, const OverlapParams& p) {
  int64_t chunk = p.min_chunk_size;
  if ((remote_tokens + chunk - 1) / chunk > p.max_num_chunks)
    chunk = (remote_tokens + p.max_num_chunks - 1) / p.max_num_chunks;
  return chunk;
}

double overlap_cost(const StageCosts& c, const std::vector<std::vector<int64_t>>& stages) {
  auto comm = [&](const std::vector<int64_t>& s) {
    double x = 0;
    for (int64_t i : s) x += c.comm[i];
    return x;
  };
  auto calc = [&](const std::vector<int64_t>& s) {
    double x = 0;
    for (int64_t i : s) x += c.calc[i];
    return x;
  };
  if (stages.empty()) return c.host_calc;
  double total = std::max(comm(stages[0]), c.host_calc);
  for (size_t s = 1; s < stages.size(); ++s) total += std::max(comm(stages[s]), calc(stages[s - 1]));
  return total + calc(stages.back());
}

namespace {

// Uniform: the index list [host, chunk 0 .. chunk N-1] (chunk order shuffled under random_costs)
// is cut into `degree` contiguous groups whose sizes differ by at most one, larger groups first;
// stage s is group s without the host index, so stage 0 carries one chunk less.
std::vector<std::vector<int64_t>> uniform(const StageCosts& c, int64_t degree, const OverlapParams& p,
                                          int64_t rank) {
  const int64_t n = static_cast<int64_t>(c.comm.size());
  std::vector<int64_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  if (p.random_costs) {
    uint64_t st = static_cast<uint64_t>(p.random_seed) * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(rank);
    for (int64_t i = n - 1; i > 0; --i) {
      st = st * 6364136223846793005ULL + 1442695040888963407ULL;
      std::swap(idx[i], idx[(st >> 33) % static_cast<uint64_t>(i + 1)]);
    }
  }
  std::vector<std::vector<int64_t>> stages(degree);
  const int64_t items = n + 1, base = items / degree, extra = items % degree;
  int64_t pos = 0;  // position in [host, idx...]
  for (int64_t s = 0; s < degree; ++s) {
    const int64_t len = base + (s < extra ? 1 : 0);
    for (int64_t t = 0; t < len; ++t, ++pos)
      if (pos > 0) stages[s].push_back(idx[pos - 1]);
  }
  return stages;
}

// Prefix sums of comm and calc over the chunks in their natural order.
struct Prefix {
  std::vector<double> comm, calc;
  explicit Prefix(const StageCosts& c) : comm(c.comm.size() + 1, 0.0), calc(c.calc.size() + 1, 0.0) {
    for (size_t i = 0; i < c.comm.size(); ++i) comm[i + 1] = comm[i] + c.comm[i], calc[i + 1] = calc[i] + c.calc[i];
  }
};

// Cost of stages s..d-1 when chunks [i, N) are cut uniformly among them (sizes differ by at most
// one, larger first) and stage s's fetch hides behind `budget`:
// sum_t max(comm_t, budget_t) + calc_last, with budget_{t+1} = calc_t.
double uniform_tail_cost(const Prefix& p, int64_t n, int64_t i, int64_t stages_left, double budget) {
  const int64_t items = n - i, base = items / stages_left, extra = items % stages_left;
  double total = 0, calc = 0;
  for (int64_t t = 0; t < stages_left; ++t) {
    const int64_t j = i + base + (t < extra ? 1 : 0);
    total += std::max(p.comm[j] - p.comm[i], budget);
    calc = p.calc[j] - p.calc[i];
    budget = calc;
    i = j;
  }
  return total + calc;
}

// Greedy (a rollout of the uniform split): the chunks keep their natural order, so each stage is
// a contiguous run and its receive buffer stays contiguous. Stages are fixed one at a time: for
// stage s, every possible run length t is tried, scored by the cost already committed, plus
// max(comm of the run, budget_s) (budget_0 = host compute, budget_s = compute of stage s-1), plus
// the exact cost of cutting the remaining chunks uniformly over the remaining stages; the cheapest
// t is kept (ties: the longer run, which fetches earlier) and the next budget becomes the run's
// compute. This trades each stage's fetch against the previous stage's compute: a large host
// compute pulls many chunks into stage 0, while dominant communication keeps the last stage (whose
// compute hides nothing) short. Because the uniform split's own choice is among the candidates at
// every step, the result never costs more than the uniform split; it is still compared with it
// (cost model, ties: greedy) as a safeguard. O(degree^2 * N) per call.
std::vector<std::vector<int64_t>> greedy(const StageCosts& c, int64_t degree, const OverlapParams& p,
                                         int64_t rank) {
  const int64_t n = static_cast<int64_t>(c.comm.size());
  const Prefix pre(c);
  std::vector<std::vector<int64_t>> stages(degree);
  double committed = 0, budget = c.host_calc;
  int64_t i = 0;
  for (int64_t s = 0; s + 1 < degree; ++s) {
    int64_t best_t = 0;
    double best = 0;
    for (int64_t t = 0; i + t <= n; ++t) {
      const double head = std::max(pre.comm[i + t] - pre.comm[i], budget);
      const double cost = committed + head +
                          uniform_tail_cost(pre, n, i + t, degree - s - 1, pre.calc[i + t] - pre.calc[i]);
      if (t == 0 || cost <= best) best = cost, best_t = t;
    }
    committed += std::max(pre.comm[i + best_t] - pre.comm[i], budget);
    budget = pre.calc[i + best_t] - pre.calc[i];
    for (int64_t t = 0; t < best_t; ++t) stages[s].push_back(i + t);
    i += best_t;
  }
  for (; i < n; ++i) stages[degree - 1].push_back(i);
  auto uni = uniform(c, degree, p, rank);
  return overlap_cost(c, stages) <= overlap_cost(c, uni) ? stages : uni;
}

}  // namespace

std::vector<std::vector<int64_t>> assign_stages(const StageCosts& c, int64_t degree,
                                                const OverlapParams& p, int64_t rank) {
  return p.alg == OverlapAlg::kGreedy ? greedy(c, degree, p, rank) : uniform(c, degree, p, rank);
}

int64_t choose_degree(const StageCosts& c, const OverlapParams& p, int64_t rank) {
  if (p.mode == OverlapMode::kStatic) return p.degree;
  // Beyond N + 1 stages (N remote chunks) the extra stages are empty, so the search stops there.
  const int64_t limit = p.dynamic_max_degree > 0 ? p.dynamic_max_degree : p.max_num_chunks;
  const int64_t top = std::min<int64_t>(limit, static_cast<int64_t>(c.comm.size()) + 1);
  int64_t best_deg = 1;
  double best = 0;
  for (int64_t d = 1; d <= top; ++d) {
    const double cost = std::round(overlap_cost(c, assign_stages(c, d, p, rank)));
    if (d == 1 || cost < best) best = cost, best_deg = d;
  }
  return best_deg;
}

}  // namespace magi
