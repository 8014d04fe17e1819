// Dynamic-solver grid: the mask as rectangles cut at chunk boundaries in q and k, so every grid
// cell (q chunk i, k chunk j) holds the exact cells of the mask inside chunk_i x chunk_j (design §4.4).
#pragma once

#include <cstdint>
#include <vector>

#include "dispatch/chunking.hpp"
#include "dispatch/dispatch_meta.hpp"
#include "geometry/rectangle.hpp"

namespace magi {

// With num_groups G > 1 (flattened head groups) the mask is replicated G times along the diagonal
// of an expanded space [0, G*T): position g*T + t is token t of head group g. Interval
// (g, c) = [g*T + c*cs, g*T + (c+1)*cs) is owned by the owner of chunk c; index g*num_chunks + c.
struct DynGrid {
  int64_t cp_size = 0;
  int64_t num_groups = 1;
  int64_t seqlen = 0;      // expanded total length G*T
  int64_t chunk_size = 0;  // interval length
  int64_t num_intervals = 0;
  std::vector<int32_t> owner;  // per interval
  // Non-empty cells, row-major (i ascending, then j ascending).
  std::vector<int32_t> cell_i, cell_j;
  std::vector<int64_t> cell_area;
  std::vector<int64_t> cell_rect_off;  // size num_cells + 1, into rects
  std::vector<AttnRectangle> rects;    // tight, non-empty
  int64_t total_area = 0;

  int64_t num_cells() const { return static_cast<int64_t>(cell_area.size()); }
  int64_t interval_start(int64_t i) const { return i * chunk_size; }
  int32_t group_of(int64_t i) const { return static_cast<int32_t>(i / (num_intervals / num_groups)); }
  // Merged expanded host ranges of rank r (ascending).
  std::vector<AttnRange> host_ranges(int64_t r) const;
};

DynGrid build_dyn_grid(const std::vector<MaskSlice>& slices, const DispatchMeta& meta, int64_t num_groups);

}  // namespace magi
