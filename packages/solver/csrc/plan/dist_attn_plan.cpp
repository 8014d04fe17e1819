// make_dist_attn_plan: host/remote ranges, overlap chunks and stages for every rank (phase 1), then
// the requested ranks' calc and cast arguments (phase 2). The transfer table is derived locally:
// a stage buffer of rank j is cut at chunk boundaries and each piece is owned by exactly one rank.
#include "plan/dist_attn_plan.hpp"

#include <algorithm>
#include <exception>
#include <mutex>
#include <sstream>

#include "errors.hpp"
#include "geometry/ranges.hpp"
#include "plan/slice_maker.hpp"

namespace magi {

namespace {

using Ranges = std::vector<AttnRange>;

inline AttnRange mk(int64_t s, int64_t e) {
  AttnRange r;
  r.start = s, r.end = e;
  return r;
}

// a \ b for merged lists.
Ranges subtract(const Ranges& a, const Ranges& b) {
  Ranges out;
  size_t j = 0;
  for (const auto& r : a) {
    int64_t cur = r.start;
    while (j < b.size() && b[j].end <= cur) ++j;
    size_t t = j;
    while (t < b.size() && b[t].start < r.end) {
      if (b[t].start > cur) out.push_back(mk(cur, b[t].start));
      cur = std::max(cur, b[t].end);
      ++t;
    }
    if (cur < r.end) out.push_back(mk(cur, r.end));
  }
  return out;
}

int64_t total_len(const Ranges& rs) {
  int64_t s = 0;
  for (const auto& r : rs) s += r.end - r.start;
  return s;
}

// Global -> local map of a merged list stored back to back.
struct Localizer {
  const Ranges* rs = nullptr;
  std::vector<int64_t> prefix;
  explicit Localizer(const Ranges& r) : rs(&r), prefix(r.size() + 1, 0) {
    for (size_t i = 0; i < r.size(); ++i) prefix[i + 1] = prefix[i] + r[i].end - r[i].start;
  }
  // Index of the first range ending after x.
  size_t first_after(int64_t x) const {
    return std::upper_bound(rs->begin(), rs->end(), x,
                            [](int64_t v, const AttnRange& r) { return v < r.end; }) -
           rs->begin();
  }
  // Local position of global x, which must lie in range i.
  int64_t local(size_t i, int64_t x) const { return prefix[i] + x - (*rs)[i].start; }
};

// Calls f(range index, a, b) for each non-empty [a, b) = [lo, hi) ∩ range, ascending.
template <typename F>
void for_each_overlap(const Localizer& loc, int64_t lo, int64_t hi, F&& f) {
  const Ranges& rs = *loc.rs;
  for (size_t i = loc.first_after(lo); i < rs.size() && rs[i].start < hi; ++i) {
    const int64_t a = std::max(lo, rs[i].start), b = std::min(hi, rs[i].end);
    if (a < b) f(i, a, b);
  }
}

// Everything phase 2 needs to know about one rank (computed for all ranks).
struct RankGeom {
  std::vector<MaskSlice> pieces;          // this rank's chunk pieces, global coordinates
  Ranges remote;                          // merged
  std::vector<std::vector<int64_t>> stage_chunks;  // overlap chunk ids per stage
  std::vector<Ranges> chunk_ranges;       // global ranges of each overlap chunk
  std::vector<Ranges> stage_ranges;       // merged, per stage (filled after num_stages is known)
  StageCosts costs;
};

// Cuts a merged list into consecutive groups of `chunk` tokens (a range may straddle two groups).
std::vector<Ranges> chunk_ranges(const Ranges& rs, int64_t chunk) {
  std::vector<Ranges> out;
  int64_t room = 0;
  for (const auto& r : rs) {
    int64_t s = r.start;
    while (s < r.end) {
      if (room == 0) out.emplace_back(), room = chunk;
      const int64_t e = std::min(r.end, s + room);
      out.back().push_back(mk(s, e));
      room -= e - s;
      s = e;
    }
  }
  return out;
}

// Host-local (q) offset of a piece: its q range lies inside one host chunk.
int64_t q_shift(const Localizer& host, const MaskSlice& p) {
  const size_t i = host.first_after(p.qs);
  return host.local(i, p.qs) - p.qs;
}

// The cells of `pieces` whose keys lie in `cols` (merged), as slices with host-local q and k local
// to the buffer holding `cols` back to back.
CalcArgs make_calc(const std::vector<MaskSlice>& pieces, const Localizer& host, const Ranges& cols) {
  CalcArgs out;
  const Localizer kl(cols);
  for (const auto& p : pieces) {
    const int64_t dq = q_shift(host, p);
    const size_t from = out.slices.size();
    auto strips = [&](int64_t lo, int64_t hi) {
      for_each_overlap(kl, lo, hi, [&](size_t i, int64_t a, int64_t b) {
        out.area += emit_strip(p, a, b, dq, kl.local(i, a) - a, &out.slices);
      });
    };
    // Columns [z0, z1) are seen by every row of the piece. The held ranges lying wholly inside
    // them sit back to back locally (the gaps vanish), so together they become one FULL slice
    // however many there are; only the ranges where the diagonals run are cut one by one. (With
    // fewer than two such ranges the plain per-range path gives the same slices.)
    const bool ld = p.type == MaskType::kInvCausal || p.type == MaskType::kBiCausal;
    const bool ud = p.type == MaskType::kCausal || p.type == MaskType::kBiCausal;
    const int64_t z0 = ld ? p.ks + (p.qe - 1 - p.qs) : p.ks;
    const int64_t z1 = ud ? p.ke - p.qe + p.qs + 1 : p.ke;
    size_t i0 = 0, j = 0;
    if (z0 < z1) {
      i0 = kl.first_after(z0);
      if (i0 < cols.size() && cols[i0].start < z0) ++i0;
      j = kl.first_after(z1);  // ranges [i0, j) lie inside [z0, z1)
    }
    if (z0 < z1 && j >= i0 + 2) {
      strips(p.ks, cols[i0].start);
      out.slices.push_back(MaskSlice{p.qs + dq, p.qe + dq, kl.prefix[i0], kl.prefix[j], MaskType::kFull});
      out.area += (p.qe - p.qs) * (kl.prefix[j] - kl.prefix[i0]);
      strips(cols[j - 1].end, p.ke);
    } else {
      strips(p.ks, p.ke);
    }
    merge_touching(&out.slices, from);
  }
  std::sort(out.slices.begin(), out.slices.end(), [](const MaskSlice& x, const MaskSlice& y) {
    if (x.qs != y.qs) return x.qs < y.qs;
    if (x.qe != y.qe) return x.qe < y.qe;
    return x.ks < y.ks;
  });
  return out;
}

// A piece of a receive buffer owned by one sender.
struct Transfer {
  int64_t start, end, peer;
};

// Below this many chunk pieces in the whole mask a plan takes a few milliseconds and threads cost
// more than they save (measured on a loaded 2-core machine), so ranks run serially.
constexpr size_t kMinPiecesForThreads = 50000;

// Runs f(rank) for each rank in `todo` (OpenMP when `threads`), rethrowing the first exception.
template <typename F>
void parallel_over(const std::vector<int64_t>& todo, bool threads, F&& f) {
  std::exception_ptr err;
  std::mutex mu;
  const int64_t n = static_cast<int64_t>(todo.size());
  (void)threads;
#pragma omp parallel for schedule(dynamic, 1) if (threads && n > 1)
  for (int64_t i = 0; i < n; ++i) {
    try {
      f(todo[i]);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!err) err = std::current_exception();
    }
  }
  if (err) std::rethrow_exception(err);
}

}  // namespace

DistAttnPlan make_dist_attn_plan(const RangePairs& q_ranges, const RangePairs& k_ranges,
                                 const std::vector<int64_t>& mask_types, const DispatchMeta& meta,
                                 const OverlapParams& overlap_in, const std::vector<int64_t>& ranks) {
  const char* fn = "make_dist_attn_plan()";
  check_overlap(fn, overlap_in);
  const OverlapParams ov = overlap_in.effective();
  const auto slices = check_mask(fn, q_ranges, k_ranges, mask_types, meta.total_seqlen);
  const int64_t cp = meta.cp_size;
  std::vector<int64_t> todo;
  for (int64_t r : ranks) {
    MAGI_CHECK(r >= 0 && r < cp, fn << ": ranks contains " << r << ", outside [0, cp_size=" << cp << ").");
    todo.push_back(r);
  }
  if (ranks.empty())
    for (int64_t r = 0; r < cp; ++r) todo.push_back(r);
  std::sort(todo.begin(), todo.end());
  todo.erase(std::unique(todo.begin(), todo.end()), todo.end());
  std::vector<int64_t> all(cp);
  for (int64_t r = 0; r < cp; ++r) all[r] = r;

  const auto chunks = chunk_mask(slices, meta.total_seqlen, meta.chunk_size);
  size_t num_pieces = 0;
  for (const auto& c : chunks) num_pieces += c.size();
  const bool threads = num_pieces >= kMinPiecesForThreads;
  DistAttnPlan plan;
  plan.cp_size = cp;
  plan.plans.assign(cp, nullptr);

  if (cp == 1) {  // one rank holds everything: no remote stages, host calc = the whole mask
    auto rp = std::make_shared<RankPlan>();
    rp->host_q_ranges = rp->host_k_ranges = meta.host_ranges_per_rank[0];
    std::vector<MaskSlice> pieces;
    for (const auto& c : chunks)
      for (const auto& p : c) pieces.push_back(p.s);
    const Localizer host(rp->host_k_ranges);
    rp->host_calc = make_calc(pieces, host, rp->host_k_ranges);
    plan.plans[0] = rp;
    return plan;
  }

  // ---- phase 1: every rank's remote ranges, overlap chunks and stages ----
  const bool need_costs = ov.alg == OverlapAlg::kGreedy || ov.mode == OverlapMode::kDynamic;
  std::vector<RankGeom> geo(cp);
  std::vector<int64_t> degree(cp, ov.degree);
  parallel_over(all, threads, [&](int64_t r) {
    RankGeom& g = geo[r];
    const Ranges& host_r = meta.host_ranges_per_rank[r];
    Ranges touched;
    for (int64_t c : meta.partitions[r])
      for (const auto& p : chunks[c]) {
        g.pieces.push_back(p.s);
        touched.push_back(mk(p.s.ks, p.s.ke));
      }
    g.remote = subtract(merge_nonempty(std::move(touched)), host_r);
    const int64_t rtok = total_len(g.remote);
    if (rtok > 0) g.chunk_ranges = chunk_ranges(g.remote, overlap_chunk_size(rtok, ov));
    const size_t nc = g.chunk_ranges.size();
    g.costs.comm.assign(nc, 0.0);
    g.costs.calc.assign(nc, 0.0);
    for (size_t c = 0; c < nc; ++c) g.costs.comm[c] = ov.comm_cost_factor * total_len(g.chunk_ranges[c]);
    if (need_costs) {
      // Area per overlap chunk and on host columns: one sweep over the column atoms.
      Ranges atoms;
      std::vector<int64_t> atom_chunk;
      for (size_t c = 0; c < nc; ++c)
        for (const auto& a : g.chunk_ranges[c]) atoms.push_back(a), atom_chunk.push_back(static_cast<int64_t>(c));
      const Localizer al(atoms), hl(host_r);
      double host_area = 0;
      for (const auto& p : g.pieces) {
        for_each_overlap(hl, p.ks, p.ke, [&](size_t, int64_t a, int64_t b) { host_area += strip_area(p, a, b); });
        for_each_overlap(al, p.ks, p.ke, [&](size_t i, int64_t a, int64_t b) {
          g.costs.calc[atom_chunk[i]] += static_cast<double>(strip_area(p, a, b));
        });
      }
      g.costs.host_calc = ov.calc_cost_factor * host_area;
      for (auto& x : g.costs.calc) x *= ov.calc_cost_factor;
    }
    degree[r] = choose_degree(g.costs, ov, r);
  });
  plan.num_stages = *std::max_element(degree.begin(), degree.end());
  const int64_t ns = plan.num_stages;
  parallel_over(all, threads, [&](int64_t r) {
    RankGeom& g = geo[r];
    g.stage_chunks = assign_stages(g.costs, degree[r], ov, r);
    g.stage_chunks.resize(ns);  // dynamic mode: pad with empty stages
    g.stage_ranges.assign(ns, {});
    for (int64_t s = 0; s < ns; ++s) {
      Ranges rs;
      for (int64_t c : g.stage_chunks[s]) rs.insert(rs.end(), g.chunk_ranges[c].begin(), g.chunk_ranges[c].end());
      g.stage_ranges[s] = merge_nonempty(std::move(rs));
    }
  });

  // ---- transfer table: recv[s][j] (buffer order) and send[s][i] (by sender) ----
  std::vector<std::vector<std::vector<Transfer>>> recv(ns, std::vector<std::vector<Transfer>>(cp));
  std::vector<std::vector<std::vector<Transfer>>> send(ns, std::vector<std::vector<Transfer>>(cp));
  const int64_t C = meta.chunk_size;
  for (int64_t s = 0; s < ns; ++s)
    for (int64_t j = 0; j < cp; ++j)
      for (const auto& rg : geo[j].stage_ranges[s])
        for (int64_t a = rg.start; a < rg.end;) {
          const int64_t b = std::min(rg.end, (a / C + 1) * C);
          const int64_t owner = meta.chunk_owner[a / C];
          auto& rv = recv[s][j];
          if (!rv.empty() && rv.back().peer == owner && rv.back().end == a)
            rv.back().end = b;
          else
            rv.push_back({a, b, owner});
          send[s][owner].push_back({a, b, j});
          a = b;
        }

  // ---- phase 2: calc and cast arguments of the requested ranks ----
  parallel_over(todo, threads, [&](int64_t r) {
    const RankGeom& g = geo[r];
    auto rp = std::make_shared<RankPlan>();
    rp->rank = r;
    rp->host_q_ranges = rp->host_k_ranges = meta.host_ranges_per_rank[r];
    rp->remote_k_ranges = g.remote;
    const Localizer host(rp->host_k_ranges);
    rp->host_calc = make_calc(g.pieces, host, rp->host_k_ranges);
    rp->stages.resize(ns);
    for (int64_t s = 0; s < ns; ++s) {
      StagePlan& st = rp->stages[s];
      st.remote_k_ranges = g.stage_ranges[s];
      st.num_recv_tokens = total_len(st.remote_k_ranges);
      st.calc = make_calc(g.pieces, host, st.remote_k_ranges);
      for (const auto& t : recv[s][r]) {
        st.cast.output_split_sizes.push_back(t.end - t.start);
        st.cast.src_index.push_back(t.peer);
      }
      // Sender side: host-local intervals tagged with their destination, swept into atomic splits.
      std::vector<std::pair<int64_t, int64_t>> events;  // (local pos, +(dst+1) opens / -(dst+1) closes)
      for (const auto& t : send[s][r]) {
        const size_t i = host.first_after(t.start);
        const int64_t a = host.local(i, t.start);
        events.push_back({a, t.peer + 1});
        events.push_back({a + (t.end - t.start), -(t.peer + 1)});
      }
      std::sort(events.begin(), events.end());
      std::vector<int> active(cp, 0);
      int64_t pos = 0;
      auto emit = [&](int64_t upto) {
        if (upto <= pos) return;
        std::vector<int64_t> dst;
        for (int64_t d = 0; d < cp; ++d)
          if (active[d] > 0) dst.push_back(d);
        auto& c = st.cast;
        if (!c.dst_indices.empty() && c.dst_indices.back() == dst)
          c.input_split_sizes.back() += upto - pos;
        else
          c.input_split_sizes.push_back(upto - pos), c.dst_indices.push_back(std::move(dst));
        pos = upto;
      };
      for (const auto& [p, tag] : events) {
        emit(p);
        if (tag > 0)
          ++active[tag - 1];
        else
          --active[-tag - 1];
      }
      emit(meta.shard_seqlen);
    }
    plan.plans[r] = rp;
  });
  return plan;
}

const RankPlan& DistAttnPlan::rank_plan(int64_t r) const {
  MAGI_CHECK(r >= 0 && r < cp_size && plans[r],
             "DistAttnPlan.rank_plan(): rank=" << r << " was not built (cp_size=" << cp_size
                                               << "); pass it in `ranks` or use ranks=None.");
  return *plans[r];
}

std::vector<int64_t> DistAttnPlan::built_ranks() const {
  std::vector<int64_t> out;
  for (int64_t r = 0; r < cp_size; ++r)
    if (plans[r]) out.push_back(r);
  return out;
}

std::string CalcArgs::repr() const {
  std::ostringstream os;
  os << "CalcArgs(num_slices=" << slices.size() << ", area=" << area << ")";
  return os.str();
}

std::string CastArgs::repr() const {
  int64_t in = 0, out = 0, sent = 0;
  for (size_t i = 0; i < input_split_sizes.size(); ++i) {
    in += input_split_sizes[i];
    sent += input_split_sizes[i] * static_cast<int64_t>(dst_indices[i].size());
  }
  for (int64_t x : output_split_sizes) out += x;
  std::ostringstream os;
  os << "CastArgs(input_splits=" << input_split_sizes.size() << ", input_tokens=" << in
     << ", sent_tokens=" << sent << ", output_splits=" << output_split_sizes.size()
     << ", recv_tokens=" << out << ")";
  return os.str();
}

std::string RankPlan::repr() const {
  std::ostringstream os;
  os << "RankPlan(rank=" << rank << ", host_tokens=" << total_len(host_k_ranges)
     << ", remote_tokens=" << total_len(remote_k_ranges) << ", host_area=" << host_calc.area
     << ", stages=[";
  for (size_t s = 0; s < stages.size(); ++s)
    os << (s ? ", " : "") << "(recv=" << stages[s].num_recv_tokens << ", area=" << stages[s].calc.area << ")";
  os << "])";
  return os.str();
}

std::string DistAttnPlan::repr() const {
  std::ostringstream os;
  os << "DistAttnPlan(cp_size=" << cp_size << ", num_stages=" << num_stages
     << ", built_ranks=" << built_ranks().size() << "/" << cp_size << ")";
  return os.str();
}

}  // namespace magi
