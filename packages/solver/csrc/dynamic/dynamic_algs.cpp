// NCQ, GRG and BinaryGreedy cell assignment. All randomness comes from a splitmix64 stream seeded
// by the caller, and every parallel loop writes to its own slot, so the result is a pure function
// of the inputs (independent of the thread count).
#include "dynamic/dynamic_algs.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "errors.hpp"

namespace magi {

DynAlg dyn_alg_from_string(const char* fn, const std::string& s) {
  if (s == "ncq") return DynAlg::kNcq;
  if (s == "grg") return DynAlg::kGrg;
  if (s == "binary_greedy") return DynAlg::kBinaryGreedy;
  MAGI_CHECK(false, fn << ": alg=\"" << s << "\" is unknown; expected \"binary_greedy\", \"ncq\" or \"grg\".");
  return DynAlg::kNcq;
}

const char* dyn_alg_name(DynAlg a) {
  switch (a) {
    case DynAlg::kNcq: return "ncq";
    case DynAlg::kGrg: return "grg";
    case DynAlg::kBinaryGreedy: return "binary_greedy";
  }
  return "?";
}

namespace {

struct SplitMix {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t n) { return next() % n; }  // bias irrelevant here; deterministic
};

bool balanced(int64_t max_area, int64_t total, int64_t cp, double balance) {
  return static_cast<double>(max_area) * static_cast<double>(cp) <= balance * static_cast<double>(total) + 1e-9;
}

std::vector<int32_t> ncq(const DynGrid& g) {
  std::vector<int32_t> out(g.num_cells());
  for (int64_t c = 0; c < g.num_cells(); ++c) out[c] = g.owner[g.cell_i[c]];
  return out;
}

// ---- GRG ----

std::vector<int32_t> grg_trial(const DynGrid& g, const DynSolveParams& p, uint64_t seed) {
  const int64_t n = g.num_cells(), m = g.num_intervals, cp = g.cp_size;
  const double avg = static_cast<double>(g.total_area) / static_cast<double>(cp);
  const double cs = static_cast<double>(g.chunk_size);
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  SplitMix rng{seed};
  for (int64_t a = n - 1; a > 0; --a) std::swap(order[a], order[rng.below(static_cast<uint64_t>(a) + 1)]);
  std::vector<uint8_t> row_has(cp * m, 0), col_has(cp * m, 0);
  for (int64_t i = 0; i < m; ++i) row_has[g.owner[i] * m + i] = col_has[g.owner[i] * m + i] = 1;
  std::vector<double> load(cp, 0.0), comm(cp, 0.0);
  std::vector<int32_t> out(n, -1);
  double cur_max = 0.0;
  for (int64_t c : order) {
    const int64_t i = g.cell_i[c], j = g.cell_j[c];
    const double a = static_cast<double>(g.cell_area[c]);
    int32_t best = -1;
    // 1) a rank already holding the row and the column, if lightly loaded: no new communication.
    for (int64_t r = 0; r < cp; ++r)
      if (row_has[r * m + i] && col_has[r * m + j] && load[r] + a <= 1.05 * avg &&
          (best < 0 || load[r] < load[best]))
        best = static_cast<int32_t>(r);
    // 2) otherwise the rank with the smallest cost increase (max load, then new communication).
    if (best < 0) {
      double best_cost = std::numeric_limits<double>::infinity();
      for (int64_t r = 0; r < cp; ++r) {
        const double added = (row_has[r * m + i] ? 0.0 : cs * p.cost.q_token_weight) +
                             (col_has[r * m + j] ? 0.0 : cs * p.cost.kv_token_weight);
        const double cost = p.cost.calc_cost_factor * std::max(load[r] + a, cur_max) +
                            p.cost.comm_cost_factor * (added + comm[r] / (10.0 * cp));
        if (cost < best_cost || (cost == best_cost && load[r] < load[best])) best_cost = cost, best = static_cast<int32_t>(r);
      }
    }
    out[c] = best;
    if (!row_has[best * m + i]) row_has[best * m + i] = 1, comm[best] += cs * p.cost.q_token_weight;
    if (!col_has[best * m + j]) col_has[best * m + j] = 1, comm[best] += cs * p.cost.kv_token_weight;
    load[best] += a;
    cur_max = std::max(cur_max, load[best]);
  }
  return out;
}

DynSolution pick_best(const DynGrid& g, const DynSolveParams& p, std::vector<std::vector<int32_t>> cands) {
  // Feasible before infeasible, then the smaller score, then the earlier candidate.
  int64_t best = -1;
  bool best_feas = false;
  double best_score = 0.0;
  for (size_t k = 0; k < cands.size(); ++k) {
    if (cands[k].empty() && g.num_cells() > 0) continue;
    const DynScore s = score_assignment(g, cands[k], p);
    if (best < 0 || (s.feasible && !best_feas) || (s.feasible == best_feas && s.score < best_score))
      best = static_cast<int64_t>(k), best_feas = s.feasible, best_score = s.score;
  }
  DynSolution sol;
  sol.cell_rank = std::move(cands[best]);
  sol.feasible = best_feas;
  return sol;
}

DynSolution grg(const DynGrid& g, const DynSolveParams& p) {
  constexpr int kTrials = 8;
  std::vector<std::vector<int32_t>> cands(kTrials);
#pragma omp parallel for schedule(dynamic, 1)
  for (int t = 0; t < kTrials; ++t) cands[t] = grg_trial(g, p, p.seed * 0x100000001b3ULL + static_cast<uint64_t>(t));
  return pick_best(g, p, std::move(cands));
}

// ---- BinaryGreedy ----

struct Edge {
  double ratio;   // weight / cost
  double cost;    // weighted tokens
  int32_t node;   // interval
  int32_t src, dst;
  bool is_q;
};

struct BitRows {  // one bitset of cp bits per interval
  int64_t words = 1;
  std::vector<uint64_t> bits;
  BitRows(int64_t n, int64_t cp) : words((cp + 63) / 64), bits(static_cast<size_t>(n * ((cp + 63) / 64)), 0) {}
  void set(int64_t row, int64_t r) { bits[row * words + r / 64] |= uint64_t{1} << (r % 64); }
  const uint64_t* row(int64_t i) const { return bits.data() + i * words; }
};

class BinaryGreedy {
 public:
  BinaryGreedy(const DynGrid& g, const DynSolveParams& p) : g_(g), p_(p) {
    const int64_t m = g.num_intervals, cp = g.cp_size, n = g.num_cells();
    // Weight of replicating q interval i to rank r: the area that r could then compute without
    // further traffic (cells of row i whose k chunk r owns), plus a share of the row's area.
    std::vector<int64_t> wq(m * cp, 0), wk(m * cp, 0), row_area(m, 0), col_area(m, 0);
    for (int64_t c = 0; c < n; ++c) {
      const int64_t i = g.cell_i[c], j = g.cell_j[c], a = g.cell_area[c];
      row_area[i] += a, col_area[j] += a;
      if (g.owner[i] != g.owner[j]) wq[i * cp + g.owner[j]] += a, wk[j * cp + g.owner[i]] += a;
    }
    const double cs = static_cast<double>(g.chunk_size);
    const double qc = cs * p.cost.q_token_weight, kc = cs * p.cost.kv_token_weight;
    std::vector<std::vector<Edge>> per_node(m);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t r = 0; r < cp; ++r) {
        if (r == g.owner[i]) continue;
        if (row_area[i] > 0 && qc > 0) {
          const double w = 0.95 * (wq[i * cp + r] + row_area[i] / static_cast<double>(cp)) +
                           0.05 * static_cast<double>(g.total_area) / static_cast<double>(cp * cp);
          per_node[i].push_back(Edge{w / qc, qc, static_cast<int32_t>(i), g.owner[i], static_cast<int32_t>(r), true});
        }
        if (col_area[i] > 0 && kc > 0) {
          const double w = 0.95 * (wk[i * cp + r] + col_area[i] / static_cast<double>(cp)) +
                           0.05 * static_cast<double>(g.total_area) / static_cast<double>(cp * cp);
          per_node[i].push_back(Edge{w / kc, kc, static_cast<int32_t>(i), g.owner[i], static_cast<int32_t>(r), false});
        }
      }
    }
    for (auto& v : per_node) edges_.insert(edges_.end(), v.begin(), v.end());
    std::stable_sort(edges_.begin(), edges_.end(), [](const Edge& a, const Edge& b) { return a.ratio > b.ratio; });
    for (const auto& e : edges_) t_max_ += e.cost;
  }

  DynSolution solve() {
    const DynSolution all = evaluate(std::numeric_limits<double>::infinity());
    std::vector<std::vector<int32_t>> cands;
    cands.push_back(ncq(g_));  // KV-only is always a candidate: never worse than it under the score
    if (all.feasible) {
      cands.push_back(all.cell_rank);
      // Parallel k-ary search on the budget T: kK thresholds per round (fixed, not per thread).
      constexpr int kK = 8;
      double lo = 0.0, hi = t_max_;
      for (int round = 0; round < 6 && hi - lo > 1e-2 * hi; ++round) {
        std::vector<DynSolution> res(kK);
        std::vector<double> ts(kK);
        for (int k = 0; k < kK; ++k) ts[k] = lo + (hi - lo) * (k + 1) / (kK + 1);
#pragma omp parallel for schedule(dynamic, 1)
        for (int k = 0; k < kK; ++k) res[k] = evaluate(ts[k]);
        int first_ok = -1;
        for (int k = 0; k < kK; ++k)
          if (res[k].feasible) {
            first_ok = k;
            break;
          }
        if (first_ok < 0) {
          lo = ts[kK - 1];
          continue;
        }
        cands.push_back(std::move(res[first_ok].cell_rank));
        hi = ts[first_ok];
        lo = first_ok > 0 ? ts[first_ok - 1] : lo;
      }
    }
    return pick_best(g_, p_, std::move(cands));
  }

 private:
  // Replication edges under budget T (per-rank send + receive cost), then the greedy assignment.
  DynSolution evaluate(double T) const {
    const int64_t m = g_.num_intervals, cp = g_.cp_size;
    BitRows qm(m, cp), km(m, cp);
    for (int64_t i = 0; i < m; ++i) qm.set(i, g_.owner[i]), km.set(i, g_.owner[i]);
    std::vector<double> used(cp, 0.0);
    for (const auto& e : edges_) {
      if (used[e.src] + e.cost > T || used[e.dst] + e.cost > T) continue;
      used[e.src] += e.cost, used[e.dst] += e.cost;
      (e.is_q ? qm : km).set(e.node, e.dst);
    }
    return assign(qm, km);
  }

  DynSolution assign(const BitRows& qm, const BitRows& km) const {
    const int64_t n = g_.num_cells(), cp = g_.cp_size, W = qm.words;
    const double avg = static_cast<double>(g_.total_area) / static_cast<double>(cp);
    const double cap = p_.balance * avg;
    std::vector<int32_t> pop(n);
    for (int64_t c = 0; c < n; ++c) {
      const uint64_t *a = qm.row(g_.cell_i[c]), *b = km.row(g_.cell_j[c]);
      int cnt = 0;
      for (int64_t w = 0; w < W; ++w) cnt += __builtin_popcountll(a[w] & b[w]);
      pop[c] = cnt;
    }
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
      if (pop[x] != pop[y]) return pop[x] < pop[y];
      if (g_.cell_area[x] != g_.cell_area[y]) return g_.cell_area[x] > g_.cell_area[y];
      return x < y;
    });
    DynSolution sol;
    sol.cell_rank.assign(n, -1);
    std::vector<double> load(cp, 0.0);
    auto allowed = [&](int64_t c, int64_t r) {
      return (((qm.row(g_.cell_i[c])[r / 64] & km.row(g_.cell_j[c])[r / 64]) >> (r % 64)) & 1) != 0;
    };
    const int64_t G = g_.num_groups, gp = std::gcd(cp, G);
    for (int64_t c : order) {
      if (pop[c] == 0) return sol;  // some cell cannot be computed anywhere under this budget
      const int64_t i = g_.cell_i[c], j = g_.cell_j[c];
      const double a = static_cast<double>(g_.cell_area[c]);
      int64_t pick = -1;
      const int64_t qo = g_.owner[i], ko = g_.owner[j];
      if (qo == ko && load[qo] < avg) pick = qo;
      if (pick < 0 && G > 1) {
        const int64_t usp = (qo / gp) * gp + g_.group_of(i) % gp;  // Ulysses-style head-group spread
        if (allowed(c, usp) && load[usp] < avg) pick = usp;
      }
      if (pick < 0 && allowed(c, qo) && load[qo] < avg) pick = qo;
      if (pick < 0 && allowed(c, ko) && load[ko] < avg) pick = ko;
      if (pick < 0)
        for (int64_t r = 0; r < cp; ++r)
          if (allowed(c, r) && (pick < 0 || load[r] < load[pick])) pick = r;
      sol.cell_rank[c] = static_cast<int32_t>(pick);
      load[pick] += a;
    }
    for (int pass = 0; pass < 5; ++pass) {
      bool moved = false;
      for (int64_t c : order) {
        const int64_t cur = sol.cell_rank[c];
        if (load[cur] <= cap) continue;
        const double a = static_cast<double>(g_.cell_area[c]);
        int64_t best = -1;
        for (int64_t r = 0; r < cp; ++r)
          if (r != cur && allowed(c, r) && (best < 0 || load[r] < load[best])) best = r;
        if (best >= 0 && load[best] + a < load[cur]) {
          load[cur] -= a, load[best] += a;
          sol.cell_rank[c] = static_cast<int32_t>(best);
          moved = true;
        }
      }
      if (!moved) break;
    }
    const double mx = cp > 0 ? *std::max_element(load.begin(), load.end()) : 0.0;
    sol.feasible = mx <= cap + 1e-6 * (cap + 1.0);
    return sol;
  }

  const DynGrid& g_;
  const DynSolveParams& p_;
  std::vector<Edge> edges_;
  double t_max_ = 0.0;
};

}  // namespace

DynScore score_assignment(const DynGrid& g, const std::vector<int32_t>& cell_rank, const DynSolveParams& p) {
  const int64_t m = g.num_intervals, cp = g.cp_size;
  DynScore s;
  s.area.assign(cp, 0), s.comm_q.assign(cp, 0), s.comm_kv.assign(cp, 0);
  std::vector<uint8_t> need_q(cp * m, 0), need_k(cp * m, 0);
  for (int64_t c = 0; c < g.num_cells(); ++c) {
    const int64_t r = cell_rank[c], i = g.cell_i[c], j = g.cell_j[c];
    s.area[r] += g.cell_area[c];
    if (g.owner[i] == r && g.owner[j] == r) continue;
    if (g.owner[i] != r) need_q[r * m + i] = 1;
    if (g.owner[j] != r) need_k[r * m + j] = 1;
  }
  double max_comm = 0.0, sum_comm = 0.0;
  for (int64_t r = 0; r < cp; ++r) {
    for (int64_t i = 0; i < m; ++i) {
      if (need_q[r * m + i]) s.comm_q[r] += g.chunk_size;
      if (need_k[r * m + i]) s.comm_kv[r] += g.chunk_size;
    }
    const double w = p.cost.q_token_weight * s.comm_q[r] + p.cost.kv_token_weight * s.comm_kv[r];
    max_comm = std::max(max_comm, w);
    sum_comm += w;
  }
  const int64_t max_area = cp > 0 ? *std::max_element(s.area.begin(), s.area.end()) : 0;
  s.feasible = balanced(max_area, g.total_area, cp, p.balance);
  s.score = p.cost.calc_cost_factor * static_cast<double>(max_area) +
            p.cost.comm_cost_factor * (max_comm + sum_comm / (10.0 * static_cast<double>(cp)));
  return s;
}

DynSolution solve_dynamic(const DynGrid& g, const DynSolveParams& p) {
  switch (p.alg) {
    case DynAlg::kNcq: {
      DynSolution sol;
      sol.cell_rank = ncq(g);
      sol.feasible = score_assignment(g, sol.cell_rank, p).feasible;
      return sol;
    }
    case DynAlg::kGrg: return grg(g, p);
    case DynAlg::kBinaryGreedy: return BinaryGreedy(g, p).solve();
  }
  return {};
}

}  // namespace magi
