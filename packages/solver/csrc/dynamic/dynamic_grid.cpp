// Grid construction: rectangles are bucketed by q chunk, then cut row by row and column by column
// (rows in parallel; the result is assembled in row order, so it does not depend on threads).
#include "dynamic/dynamic_grid.hpp"

#include <algorithm>
#include <utility>

#include "dynamic/omp_guard.hpp"
#include "errors.hpp"

namespace magi {

std::vector<AttnRange> DynGrid::host_ranges(int64_t r) const {
  std::vector<AttnRange> out;
  for (int64_t i = 0; i < num_intervals; ++i) {
    if (owner[i] != r) continue;
    const int64_t s = interval_start(i), e = s + chunk_size;
    if (!out.empty() && out.back().end == s)
      out.back().end = e;
    else
      out.push_back(AttnRange{s, e});
  }
  return out;
}

DynGrid build_dyn_grid(const std::vector<MaskSlice>& slices, const DispatchMeta& meta, int64_t num_groups) {
  DynGrid g;
  const int64_t T = meta.total_seqlen, nc = meta.num_chunks;
  g.cp_size = meta.cp_size;
  g.num_groups = num_groups;
  g.seqlen = T * num_groups;
  g.chunk_size = meta.chunk_size;
  g.num_intervals = nc * num_groups;
  g.owner.resize(g.num_intervals);
  for (int64_t i = 0; i < g.num_intervals; ++i) g.owner[i] = static_cast<int32_t>(meta.chunk_owner[i % nc]);

  std::vector<AttnRectangle> base;
  base.reserve(slices.size() * num_groups);
  for (int64_t grp = 0; grp < num_groups; ++grp) {
    const int64_t off = grp * T;
    for (const auto& s : slices) {
      AttnRectangle r(AttnRange{s.qs + off, s.qe + off}, AttnRange{s.ks + off, s.ke + off}, s.type);
      if (!r.is_empty()) base.push_back(r);
    }
  }
  // CSR of (row -> rectangles touching it), rectangles in input order.
  const int64_t m = g.num_intervals, cs = g.chunk_size;
  std::vector<int64_t> row_off(m + 1, 0);
  for (const auto& r : base)
    for (int64_t i = r.q.start / cs; i <= (r.q.end - 1) / cs; ++i) ++row_off[i + 1];
  for (int64_t i = 0; i < m; ++i) row_off[i + 1] += row_off[i];
  std::vector<int64_t> row_items(row_off[m]), fill(row_off.begin(), row_off.end() - 1);
  for (size_t idx = 0; idx < base.size(); ++idx) {
    const auto& r = base[idx];
    for (int64_t i = r.q.start / cs; i <= (r.q.end - 1) / cs; ++i) row_items[fill[i]++] = static_cast<int64_t>(idx);
  }

  std::vector<std::vector<std::pair<int32_t, AttnRectangle>>> rows(m);
  OmpGuard guard;
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t i = 0; i < m; ++i) guard.run([&] {
    auto& out = rows[i];
    const int64_t lo = i * cs, hi = lo + cs;
    for (int64_t t = row_off[i]; t < row_off[i + 1]; ++t) {
      AttnRectangle piece = base[row_items[t]];
      if (piece.q.start < lo) piece = piece.cut_q(lo).second;
      if (piece.q.end > hi) piece = piece.cut_q(hi).first;
      while (!piece.is_empty()) {
        const int64_t j = piece.k.start / cs, cut = (j + 1) * cs;
        if (piece.k.end <= cut) {
          out.emplace_back(static_cast<int32_t>(j), piece);
          break;
        }
        auto [left, right] = piece.cut_k(cut);
        if (!left.is_empty()) out.emplace_back(static_cast<int32_t>(j), left);
        piece = right;
      }
    }
    std::stable_sort(out.begin(), out.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
  });
  guard.rethrow();
  g.cell_rect_off.push_back(0);
  for (int64_t i = 0; i < m; ++i) {
    const auto& row = rows[i];
    for (size_t a = 0; a < row.size();) {
      size_t b = a;
      int64_t area = 0;
      while (b < row.size() && row[b].first == row[a].first) {
        area += row[b].second.area();
        g.rects.push_back(row[b].second);
        ++b;
      }
      g.cell_i.push_back(static_cast<int32_t>(i));
      g.cell_j.push_back(row[a].first);
      g.cell_area.push_back(area);
      g.cell_rect_off.push_back(static_cast<int64_t>(g.rects.size()));
      g.total_area += area;
      a = b;
    }
    std::vector<std::pair<int32_t, AttnRectangle>>().swap(rows[i]);
  }
  return g;
}

}  // namespace magi
