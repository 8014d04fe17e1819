// AttnRectangle: a slice in global coordinates as a box q x k cut by a diagonal band on d = k - q.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "geometry/mask_type.hpp"
#include "geometry/range.hpp"
#include "geometry/ranges.hpp"

namespace magi {

using AttnSlice = std::tuple<AttnRange, AttnRange, MaskType>;

// The cells (q, k) with q in [q.start, q.end), k in [k.start, k.end) and d_lo <= k - q <= d_hi.
// Every mask type is such a set, and so is any q- or k-cut of one; that is why the dynamic solver
// cuts rectangles rather than slices. The bounds are always kept tightest (each bound is reached
// by some cell); an empty rectangle has empty q and k and d_lo > d_hi.
class AttnRectangle {
 public:
  AttnRange q, k;
  int64_t d_lo = 0, d_hi = -1;

  AttnRectangle() = default;
  AttnRectangle(AttnRange q, AttnRange k, MaskType t);  // the cells of slice (q, k, t)
  // Box and closed band given directly (shrunk to the tightest bounds).
  static AttnRectangle from_band(AttnRange q, AttnRange k, int64_t d_lo, int64_t d_hi);

  bool is_empty() const { return q.is_empty(); }
  int64_t area() const;  // exact cell count, O(1)
  // Split into (rows < pos, rows >= pos) / (columns < pos, columns >= pos); exact partitions.
  std::pair<AttnRectangle, AttnRectangle> cut_q(int64_t pos) const;
  std::pair<AttnRectangle, AttnRectangle> cut_k(int64_t pos) const;
  // The same cells as at most 3 standard slices (none when empty), ascending in q.
  std::vector<AttnSlice> to_slices() const;

  std::string repr() const;
  size_t hash() const;
  bool operator==(const AttnRectangle& o) const {
    return q == o.q && k == o.k && d_lo == o.d_lo && d_hi == o.d_hi;
  }
  bool operator!=(const AttnRectangle& o) const { return !(*this == o); }

 private:
  void tighten();
};

// A list of rectangles (cell-disjoint by convention), with batch cuts and unions.
class AttnRectangles {
 public:
  std::vector<AttnRectangle> rects;

  AttnRectangles() = default;
  explicit AttnRectangles(std::vector<AttnRectangle> rs) : rects(std::move(rs)) {}
  // One rectangle per slice; empty slices (incl. BI_CAUSAL with Lq > Lk) are dropped.
  // RangeError when the three lists differ in length.
  static AttnRectangles from_slices(const std::vector<AttnRange>& q_ranges,
                                    const std::vector<AttnRange>& k_ranges,
                                    const std::vector<MaskType>& types);

  size_t size() const { return rects.size(); }
  bool empty() const { return rects.empty(); }
  void append(const AttnRectangle& r) { rects.push_back(r); }
  int64_t area() const;
  // Cut every rectangle; the sides keep only non-empty parts.
  std::pair<AttnRectangles, AttnRectangles> cut_q(int64_t pos) const;
  std::pair<AttnRectangles, AttnRectangles> cut_k(int64_t pos) const;
  AttnRanges get_qo_ranges_union() const;  // merged q ranges
  AttnRanges get_kv_ranges_union() const;  // merged k ranges
  std::vector<AttnSlice> to_slices() const;

  std::string repr() const;
  size_t hash() const;
  bool operator==(const AttnRectangles& o) const { return rects == o.rects; }
  bool operator!=(const AttnRectangles& o) const { return rects != o.rects; }
};

}  // namespace magi
