// AttnRanges: an ordered list of AttnRange with the set algebra the dispatch and plan solvers use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "geometry/range.hpp"

namespace magi {

// An ordered list of ranges. The order is meaningful (it is a list, not a set); the set-like
// operations (merge, find_hole_ranges, ...) document when they sort. Operations returning
// AttnRanges never modify *this.
class AttnRanges {
 public:
  std::vector<AttnRange> ranges;

  AttnRanges() = default;
  explicit AttnRanges(std::vector<AttnRange> rs) : ranges(std::move(rs)) {}

  // ---- construction and conversion ----
  static AttnRanges from_pairs(const std::vector<std::pair<int64_t, int64_t>>& pairs);
  // cu_seqlens must start at 0, increase strictly and end at seqlen (RangeError otherwise).
  static AttnRanges from_cu_seqlens(const std::vector<int64_t>& cu_seqlens, int64_t seqlen);
  std::vector<std::pair<int64_t, int64_t>> to_pairs() const;
  std::vector<int64_t> to_cu_seqlens(int64_t seqlen) const;  // RangeError unless is_cu_seqlens

  // ---- sequence protocol (indices are Python-style: negative counts from the back) ----
  size_t size() const { return ranges.size(); }
  bool empty() const { return ranges.empty(); }
  const AttnRange& at(int64_t idx) const;
  AttnRange& at(int64_t idx);
  void append(const AttnRange& r) { ranges.push_back(r); }
  void insert(int64_t idx, const AttnRange& r);  // Python list.insert semantics (clamped index)
  void extend(const AttnRanges& other);
  AttnRange pop(int64_t idx = -1);

  // ---- operations returning a new list ----
  AttnRanges sort() const;   // stable, by start
  AttnRanges merge() const;  // sort, then join overlapping or touching ranges
  // Round starts down and ends up to multiples of alignment (> 0), then merge.
  AttnRanges merge_with_split_alignment(int64_t alignment) const;
  AttnRanges clear_empty() const;
  // self - other (as token sets), merged. The flags skip re-merging inputs already merged.
  AttnRanges find_hole_ranges(const AttnRanges& other, bool is_self_merged = false,
                              bool is_other_merged = false) const;
  // self ∩ other (as token sets), merged.
  AttnRanges find_overlap_ranges(const AttnRanges& other, bool is_self_merged = false,
                                 bool is_other_merged = false) const;
  // Position of r inside the buffer that stores merge() of self back to back, ascending.
  // RangeError unless r lies inside one merged range.
  AttnRange make_range_local(const AttnRange& r, bool is_self_merged = false) const;
  AttnRanges make_ranges_local(const AttnRanges& other, bool is_self_merged = false) const;
  // Cut a non-overlapping list (in its own order) into consecutive groups of chunk_size tokens
  // (the last may be shorter); a range may be split across groups. chunk_size > 0.
  std::vector<AttnRanges> chunk(int64_t chunk_size) const;
  // Clip every range to [s, e) and drop the empty results; order kept.
  AttnRanges truncate(int64_t s = std::numeric_limits<int64_t>::min(),
                      int64_t e = std::numeric_limits<int64_t>::max()) const;

  // ---- predicates ----
  bool is_sorted() const;       // starts non-decreasing
  bool is_merged() const;       // sorted and prev.end < next.start
  bool is_non_overlap() const;  // no token covered twice
  bool is_cu_seqlens(int64_t seqlen) const;
  bool is_valid() const;        // every range has start <= end
  bool is_empty() const { return ranges.empty(); }

  // ---- sizes ----
  int64_t total_seqlen() const;  // sum of lengths (overlaps counted twice)
  int64_t max_seqlen() const;    // 0 when empty
  int64_t start() const;         // min start; RangeError when empty
  int64_t end() const;           // max end; RangeError when empty
  std::vector<int64_t> points() const;  // sorted distinct endpoints
  // Sum over tokens of (coverage - 1) for covered tokens: total_seqlen() - union_size().
  int64_t intersect_size() const;
  int64_t intersect_size_with(const AttnRanges& other) const;  // |set(self) ∩ set(other)|
  int64_t union_size() const;                                  // |set(self)|
  int64_t union_size_with(const AttnRanges& other) const;      // |set(self) ∪ set(other)|

  std::string repr() const;  // "[[0, 5), [7, 9)]"
  size_t hash() const;
  bool operator==(const AttnRanges& o) const { return ranges == o.ranges; }
  bool operator!=(const AttnRanges& o) const { return ranges != o.ranges; }
};

// Sort, drop empty ranges, then join overlapping or touching ones. Unlike AttnRanges::merge the
// empty ranges vanish; shared by the dispatch and plan solvers, which work on raw range lists.
std::vector<AttnRange> merge_nonempty(std::vector<AttnRange> rs);

// Global -> local position map for one merged range set, built once and queried many times
// (O(log n) per query). Local coordinates index the buffer holding the merged ranges back to back.
class RangeLocalizer {
 public:
  explicit RangeLocalizer(const AttnRanges& ranges, bool is_merged = false);
  AttnRange to_local(const AttnRange& r) const;  // RangeError unless r is inside one range
  const AttnRanges& merged() const { return merged_; }
  int64_t total_seqlen() const { return prefix_.empty() ? 0 : prefix_.back(); }

 private:
  AttnRanges merged_;
  std::vector<int64_t> prefix_;  // prefix_[i] = local start of merged_[i]; size n + 1
};

}  // namespace magi
