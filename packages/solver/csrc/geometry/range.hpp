// AttnRange: one half-open token interval [start, end), the atom of every mask description.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace magi {

// A half-open interval [start, end) of token positions. Empty ranges (start == end) are legal;
// inverted ones (start > end) are rejected with RangeError, by the constructor and the setters.
struct AttnRange {
  int64_t start = 0;
  int64_t end = 0;

  AttnRange() = default;
  AttnRange(int64_t s, int64_t e);  // RangeError unless s <= e

  // Checked setters (the fields stay public for cheap reads; writes through them are unchecked).
  void set_start(int64_t s);
  void set_end(int64_t e);

  int64_t seqlen() const { return end - start; }
  bool is_empty() const { return start >= end; }
  bool is_valid_close() const { return start <= end; }
  bool is_valid_open() const { return start < end; }

  // Clip to [lo, hi); an inverted result collapses to the empty range [clipped start, clipped start).
  AttnRange truncate(int64_t lo = std::numeric_limits<int64_t>::min(),
                     int64_t hi = std::numeric_limits<int64_t>::max()) const;
  // Intersection; an empty result sits at min(max(starts), min(ends)).
  AttnRange intersect(const AttnRange& o) const;
  int64_t intersect_size(const AttnRange& o) const;
  // Union as one range when they overlap, else both (empty ones dropped), sorted by start.
  std::vector<AttnRange> union_with(const AttnRange& o) const;
  int64_t union_size(const AttnRange& o) const;
  // o - self: the parts of o outside self (0, 1 or 2 ranges, ascending).
  std::vector<AttnRange> diff_by(const AttnRange& o) const;
  // Strict overlap: touching ranges do not overlap.
  bool is_overlap_with(const AttnRange& o) const;
  bool is_subrange_of(const AttnRange& o) const;
  AttnRange offset(int64_t delta) const;

  std::pair<int64_t, int64_t> to_pair() const { return {start, end}; }
  std::string repr() const;  // "[s, e)"
  size_t hash() const;

  bool operator==(const AttnRange& o) const { return start == o.start && end == o.end; }
  bool operator!=(const AttnRange& o) const { return !(*this == o); }
  // Lexicographic on (start, end).
  bool operator<(const AttnRange& o) const {
    return start < o.start || (start == o.start && end < o.end);
  }
  bool operator<=(const AttnRange& o) const { return !(o < *this); }
  bool operator>(const AttnRange& o) const { return o < *this; }
  bool operator>=(const AttnRange& o) const { return !(*this < o); }
};

}  // namespace magi
