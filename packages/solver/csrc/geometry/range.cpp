// AttnRange: checked construction and the interval arithmetic on one range.
#include "geometry/range.hpp"

#include <algorithm>
#include <functional>
#include <sstream>

#include "errors.hpp"

namespace magi {

AttnRange::AttnRange(int64_t s, int64_t e) : start(s), end(e) {
  MAGI_CHECK(s <= e, "AttnRange(start=" << s << ", end=" << e
                                        << ") is inverted; a range needs start <= end.");
}

void AttnRange::set_start(int64_t s) {
  MAGI_CHECK(s <= end, "AttnRange.start = " << s << " would invert [" << start << ", " << end
                                            << "); a range needs start <= end.");
  start = s;
}

void AttnRange::set_end(int64_t e) {
  MAGI_CHECK(start <= e, "AttnRange.end = " << e << " would invert [" << start << ", " << end
                                            << "); a range needs start <= end.");
  end = e;
}

AttnRange AttnRange::truncate(int64_t lo, int64_t hi) const {
  const int64_t s = std::max(start, lo);
  const int64_t e = std::min(end, hi);
  return AttnRange(s, std::max(s, e));
}

AttnRange AttnRange::intersect(const AttnRange& o) const {
  const int64_t s = std::max(start, o.start);
  const int64_t e = std::min(end, o.end);
  return AttnRange(std::min(s, e), e);
}

int64_t AttnRange::intersect_size(const AttnRange& o) const { return intersect(o).seqlen(); }

std::vector<AttnRange> AttnRange::union_with(const AttnRange& o) const {
  if (is_empty() && o.is_empty()) return {};
  if (is_empty()) return {o};
  if (o.is_empty()) return {*this};
  if (is_overlap_with(o)) return {AttnRange(std::min(start, o.start), std::max(end, o.end))};
  if (o.start < start) return {o, *this};
  return {*this, o};
}

int64_t AttnRange::union_size(const AttnRange& o) const {
  int64_t n = 0;
  for (const auto& r : union_with(o)) n += r.seqlen();
  return n;
}

std::vector<AttnRange> AttnRange::diff_by(const AttnRange& o) const {
  std::vector<AttnRange> out;
  const AttnRange inter = intersect(o);
  if (inter.is_empty()) {
    if (!o.is_empty()) out.push_back(o);
    return out;
  }
  if (o.start < inter.start) out.emplace_back(o.start, inter.start);
  if (inter.end < o.end) out.emplace_back(inter.end, o.end);
  return out;
}

bool AttnRange::is_overlap_with(const AttnRange& o) const {
  return !(start >= o.end || end <= o.start);
}

bool AttnRange::is_subrange_of(const AttnRange& o) const {
  return start >= o.start && end <= o.end;
}

AttnRange AttnRange::offset(int64_t delta) const { return AttnRange(start + delta, end + delta); }

std::string AttnRange::repr() const {
  std::ostringstream os;
  os << "[" << start << ", " << end << ")";
  return os.str();
}

size_t AttnRange::hash() const {
  const size_t h1 = std::hash<int64_t>{}(start);
  const size_t h2 = std::hash<int64_t>{}(end);
  return h1 ^ (h2 + 0x9e3779b97f4a7c15ULL + (h1 << 6) + (h1 >> 2));
}

}  // namespace magi
