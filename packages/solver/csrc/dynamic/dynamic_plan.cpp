// make_dynamic_plan: solve the cell assignment, then derive each rank's host/remote split, the
// receive buffers, the group_cast arguments of Q and KV and the kernel arguments.
#include "dynamic/dynamic_plan.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "dynamic/omp_guard.hpp"
#include "errors.hpp"
#include "plan/slice_maker.hpp"

namespace magi {

namespace {

using Ranges = std::vector<AttnRange>;

void append_merged(Ranges* out, int64_t s, int64_t e) {
  if (!out->empty() && out->back().end >= s)
    out->back().end = std::max(out->back().end, e);
  else
    out->push_back(AttnRange{s, e});
}

Ranges merge_ranges(Ranges rs) {
  std::sort(rs.begin(), rs.end());
  Ranges out;
  for (const auto& r : rs)
    if (r.start < r.end) append_merged(&out, r.start, r.end);
  return out;
}

// Calls f(start, end, owner) for the pieces of r cut at interval boundaries.
template <typename F>
void for_each_owned_piece(const DynGrid& g, const AttnRange& r, F&& f) {
  for (int64_t x = r.start; x < r.end;) {
    const int64_t c = x / g.chunk_size, e = std::min(r.end, (c + 1) * g.chunk_size);
    f(x, e, g.owner[c]);
    x = e;
  }
}

int64_t foreign_tokens(const DynGrid& g, const Ranges& rs, int64_t r) {
  int64_t n = 0;
  for (const auto& x : rs)
    for_each_owned_piece(g, x, [&](int64_t s, int64_t e, int32_t o) { n += o == r ? 0 : e - s; });
  return n;
}

int64_t total_len(const Ranges& rs) {
  int64_t n = 0;
  for (const auto& r : rs) n += r.seqlen();
  return n;
}

// group_cast arguments of every rank for the buffers need[d] (merged global ranges per rank).
std::vector<DynCastArgs> build_casts(const DynGrid& g, const std::vector<Ranges>& host,
                                     const std::vector<Ranges>& need) {
  const int64_t cp = g.cp_size;
  struct Ev {
    int64_t pos;
    int32_t d, delta;
  };
  std::vector<std::vector<Ev>> events(cp);
  for (int64_t d = 0; d < cp; ++d)
    for (const auto& r : need[d])
      for_each_owned_piece(g, r, [&](int64_t s, int64_t e, int32_t o) {
        events[o].push_back(Ev{s, static_cast<int32_t>(d), +1});
        events[o].push_back(Ev{e, static_cast<int32_t>(d), -1});
      });
  struct Seg {
    int64_t start, end;
    std::vector<int64_t> dst;
  };
  std::vector<std::vector<Seg>> segs(cp);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t s = 0; s < cp; ++s) {
    auto& ev = events[s];
    std::sort(ev.begin(), ev.end(), [](const Ev& a, const Ev& b) { return a.pos < b.pos; });
    std::vector<int32_t> cnt(cp, 0);
    size_t p = 0;
    for (const auto& h : host[s]) {
      for (int64_t cur = h.start; cur < h.end;) {
        while (p < ev.size() && ev[p].pos <= cur) cnt[ev[p].d] += ev[p].delta, ++p;
        const int64_t nxt = p < ev.size() ? std::min(h.end, ev[p].pos) : h.end;
        std::vector<int64_t> dst;
        for (int64_t d = 0; d < cp; ++d)
          if (cnt[d] > 0) dst.push_back(d);
        auto& out = segs[s];
        if (!out.empty() && out.back().end == cur && out.back().dst == dst)
          out.back().end = nxt;
        else
          out.push_back(Seg{cur, nxt, std::move(dst)});
        cur = nxt;
      }
    }
  }
  std::vector<DynCastArgs> args(cp);
  std::vector<std::vector<std::pair<int64_t, std::pair<int64_t, int64_t>>>> recv(cp);  // start, (len, src)
  for (int64_t s = 0; s < cp; ++s)
    for (const auto& sg : segs[s]) {
      args[s].input_split_sizes.push_back(sg.end - sg.start);
      args[s].dst_indices.push_back(sg.dst);
      for (int64_t d : sg.dst) recv[d].push_back({sg.start, {sg.end - sg.start, s}});
    }
  for (int64_t d = 0; d < cp; ++d) {
    std::sort(recv[d].begin(), recv[d].end());
    for (const auto& x : recv[d]) {
      args[d].output_split_sizes.push_back(x.second.first);
      args[d].src_index.push_back(x.second.second);
    }
    int64_t got = 0;
    for (int64_t v : args[d].output_split_sizes) got += v;
    MAGI_CHECK(got == total_len(need[d]), "make_dynamic_plan(): internal error, rank " << d << " receives " << got
                                                                                      << " tokens, expected "
                                                                                      << total_len(need[d]) << ".");
  }
  return args;
}

void add_slices(const AttnRectangle& rect, const RangeLocalizer& lq, const RangeLocalizer& lk, CalcArgs* out) {
  for (const auto& [q, k, t] : rect.to_slices()) {
    const AttnRange a = lq.to_local(q), b = lk.to_local(k);
    out->slices.push_back(MaskSlice{a.start, a.end, b.start, b.end, t});
    out->area += slice_area(q, k, t);
  }
}

void check_params(const char* fn, const DynPlanParams& p) {
  MAGI_CHECK(p.num_heads_q >= 1 && p.num_heads_kv >= 1,
             fn << ": num_heads_q=" << p.num_heads_q << " and num_heads_kv=" << p.num_heads_kv << " must be >= 1.");
  MAGI_CHECK(p.num_heads_q % p.num_heads_kv == 0, fn << ": num_heads_q=" << p.num_heads_q
                                                     << " must be a multiple of num_heads_kv=" << p.num_heads_kv
                                                     << " (GQA groups).");
  MAGI_CHECK(std::isfinite(p.calc_cost_factor) && p.calc_cost_factor >= 0.0,
             fn << ": calc_cost_factor=" << p.calc_cost_factor << " must be finite and >= 0.");
  MAGI_CHECK(std::isfinite(p.comm_cost_factor) && p.comm_cost_factor >= 0.0,
             fn << ": comm_cost_factor=" << p.comm_cost_factor << " must be finite and >= 0.");
  MAGI_CHECK(p.seed >= 0, fn << ": seed=" << p.seed << " must be >= 0.");
}

}  // namespace

std::string DynCastArgs::repr() const {
  int64_t in = 0, out = 0;
  for (auto v : input_split_sizes) in += v;
  for (auto v : output_split_sizes) out += v;
  std::ostringstream os;
  os << "DynCastArgs(num_input_splits=" << input_split_sizes.size() << ", input_tokens=" << in
     << ", num_output_splits=" << output_split_sizes.size() << ", output_tokens=" << out << ")";
  return os.str();
}

DynReduceArgs DynCastArgs::transpose() const {
  DynReduceArgs r;
  r.input_split_sizes = output_split_sizes;
  r.dst_index = src_index;
  r.output_split_sizes = input_split_sizes;
  r.src_indices = dst_indices;
  return r;
}

std::string DynReduceArgs::repr() const {
  std::ostringstream os;
  os << "DynReduceArgs(num_input_splits=" << input_split_sizes.size()
     << ", num_output_splits=" << output_split_sizes.size() << ")";
  return os.str();
}

std::string DynRankPlan::repr() const {
  std::ostringstream os;
  os << "DynamicRankPlan(rank=" << rank << ", host_slices=" << host_calc.slices.size()
     << ", host_area=" << host_calc.area << ", remote_slices=" << remote_calc.slices.size()
     << ", remote_area=" << remote_calc.area << ", num_remote_q_tokens=" << num_remote_q_tokens
     << ", num_remote_kv_tokens=" << num_remote_kv_tokens << ")";
  return os.str();
}

const DynRankPlan& DynamicPlan::rank_plan(int64_t r) const {
  MAGI_CHECK(r >= 0 && r < cp_size, "DynamicPlan.rank_plan(): rank=" << r << " is outside [0, cp_size=" << cp_size << ").");
  MAGI_CHECK(plans[r] != nullptr, "DynamicPlan.rank_plan(): rank " << r
                                      << " was not built; pass it in ranks= (or ranks=None for all).");
  return *plans[r];
}

std::vector<AttnSlice> DynamicPlan::bucket(int64_t r) const {
  MAGI_CHECK(r >= 0 && r < cp_size, "DynamicPlan.buckets(): rank=" << r << " is outside [0, cp_size=" << cp_size << ").");
  std::vector<AttnSlice> out;
  for (int64_t c = 0; c < grid->num_cells(); ++c) {
    if (cell_rank[c] != r) continue;
    for (int64_t t = grid->cell_rect_off[c]; t < grid->cell_rect_off[c + 1]; ++t) {
      auto s = grid->rects[t].to_slices();
      out.insert(out.end(), s.begin(), s.end());
    }
  }
  return out;
}

std::vector<int64_t> DynamicPlan::built_ranks() const {
  std::vector<int64_t> out;
  for (int64_t r = 0; r < cp_size; ++r)
    if (plans[r]) out.push_back(r);
  return out;
}

std::string DynamicPlan::repr() const {
  std::ostringstream os;
  int64_t mx = 0, comm = 0;
  for (int64_t r = 0; r < cp_size; ++r) mx = std::max(mx, per_rank_area[r]), comm += per_rank_comm_q[r] + per_rank_comm_kv[r];
  os << "DynamicPlan(cp_size=" << cp_size << ", alg=" << dyn_alg_name(params.alg) << ", feasible="
     << (feasible ? "True" : "False") << ", max_area=" << mx << ", total_comm=" << comm
     << ", num_head_groups=" << num_head_groups << ")";
  return os.str();
}

DynamicPlan make_dynamic_plan(const RangePairs& q_ranges, const RangePairs& k_ranges,
                              const std::vector<int64_t>& mask_types, const DispatchMeta& meta,
                              const DynPlanParams& params, const std::vector<int64_t>& ranks) {
  const char* fn = "make_dynamic_plan()";
  check_params(fn, params);
  MAGI_CHECK(meta.cp_size >= 1 && static_cast<int64_t>(meta.chunk_owner.size()) == meta.num_chunks &&
                 meta.num_chunks * meta.chunk_size == meta.total_seqlen,
             fn << ": dispatch_meta is inconsistent (build it with make_dispatch_meta).");
  const int64_t cp = meta.cp_size;
  for (int64_t r : ranks)
    MAGI_CHECK(r >= 0 && r < cp, fn << ": ranks contains " << r << ", outside [0, cp_size=" << cp << ").");
  const auto slices = check_mask(fn, q_ranges, k_ranges, mask_types, meta.total_seqlen);
  const int64_t G = params.flatten_head_groups ? params.num_heads_kv : 1;

  DynamicPlan plan;
  plan.cp_size = cp;
  plan.num_head_groups = G;
  plan.total_seqlen = meta.total_seqlen * G;
  plan.params = params;
  auto grid = std::make_shared<DynGrid>(build_dyn_grid(slices, meta, G));
  const DynGrid& g = *grid;

  DynSolveParams sp;
  sp.alg = params.alg;
  sp.seed = static_cast<uint64_t>(params.seed);
  sp.cost.q_token_weight = static_cast<double>(params.num_heads_q) / static_cast<double>(params.num_heads_kv);
  sp.cost.kv_token_weight = 2.0;
  sp.cost.calc_cost_factor = params.calc_cost_factor;
  sp.cost.comm_cost_factor = params.comm_cost_factor;
  DynSolution sol = solve_dynamic(g, sp);
  plan.cell_rank = std::move(sol.cell_rank);

  // Per rank: its cells, the remote buffers (tight: union of the remote rectangles' ranges).
  std::vector<std::vector<int64_t>> cells(cp);
  for (int64_t c = 0; c < g.num_cells(); ++c) cells[plan.cell_rank[c]].push_back(c);
  std::vector<Ranges> host(cp), need_q(cp), need_kv(cp);
  plan.per_rank_area.assign(cp, 0), plan.per_rank_comm_q.assign(cp, 0), plan.per_rank_comm_kv.assign(cp, 0);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t r = 0; r < cp; ++r) {
    host[r] = g.host_ranges(r);
    Ranges q, k;
    for (int64_t c : cells[r]) {
      plan.per_rank_area[r] += g.cell_area[c];
      if (g.owner[g.cell_i[c]] == r && g.owner[g.cell_j[c]] == r) continue;
      for (int64_t t = g.cell_rect_off[c]; t < g.cell_rect_off[c + 1]; ++t)
        q.push_back(g.rects[t].q), k.push_back(g.rects[t].k);
    }
    need_q[r] = merge_ranges(std::move(q));
    need_kv[r] = merge_ranges(std::move(k));
    plan.per_rank_comm_q[r] = foreign_tokens(g, need_q[r], r);
    plan.per_rank_comm_kv[r] = foreign_tokens(g, need_kv[r], r);
  }
  const int64_t max_area = cp > 0 ? *std::max_element(plan.per_rank_area.begin(), plan.per_rank_area.end()) : 0;
  plan.feasible = static_cast<double>(max_area) * cp <= sp.balance * static_cast<double>(g.total_area) + 1e-9;
  double max_w = 0.0, sum_w = 0.0;
  for (int64_t r = 0; r < cp; ++r) {
    const double w = sp.cost.q_token_weight * plan.per_rank_comm_q[r] + sp.cost.kv_token_weight * plan.per_rank_comm_kv[r];
    max_w = std::max(max_w, w), sum_w += w;
  }
  plan.cost = sp.cost.calc_cost_factor * max_area + sp.cost.comm_cost_factor * (max_w + sum_w / (10.0 * cp));

  auto q_casts = build_casts(g, host, need_q);
  auto kv_casts = build_casts(g, host, need_kv);

  std::vector<int64_t> todo = ranks;
  if (todo.empty())
    for (int64_t r = 0; r < cp; ++r) todo.push_back(r);
  std::sort(todo.begin(), todo.end());
  todo.erase(std::unique(todo.begin(), todo.end()), todo.end());
  plan.plans.assign(cp, nullptr);
  std::vector<std::shared_ptr<DynRankPlan>> built(todo.size());
  OmpGuard guard;
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t t = 0; t < todo.size(); ++t) guard.run([&] {
    const int64_t r = todo[t];
    auto rp = std::make_shared<DynRankPlan>();
    rp->rank = r;
    rp->host_ranges = host[r];
    rp->remote_q_ranges = need_q[r];
    rp->remote_kv_ranges = need_kv[r];
    rp->num_remote_q_tokens = total_len(need_q[r]);
    rp->num_remote_kv_tokens = total_len(need_kv[r]);
    rp->q_cast = std::move(q_casts[r]);
    rp->kv_cast = std::move(kv_casts[r]);
    const RangeLocalizer lh{AttnRanges{host[r]}, true}, lq{AttnRanges{need_q[r]}, true},
        lk{AttnRanges{need_kv[r]}, true};
    for (int64_t c : cells[r]) {
      const bool is_host = g.owner[g.cell_i[c]] == r && g.owner[g.cell_j[c]] == r;
      for (int64_t i = g.cell_rect_off[c]; i < g.cell_rect_off[c + 1]; ++i) {
        if (is_host)
          add_slices(g.rects[i], lh, lh, &rp->host_calc);
        else
          add_slices(g.rects[i], lq, lk, &rp->remote_calc);
      }
    }
    merge_touching(&rp->host_calc.slices, 0);
    merge_touching(&rp->remote_calc.slices, 0);
    built[t] = rp;
  });
  guard.rethrow();
  for (size_t t = 0; t < todo.size(); ++t) plan.plans[todo[t]] = built[t];
  plan.grid = std::move(grid);
  return plan;
}

}  // namespace magi
