// AttnRanges: list operations, set algebra on merged lists, and the global -> local position map.
#include "geometry/ranges.hpp"

#include <algorithm>
#include <sstream>

#include "errors.hpp"

namespace magi {

namespace {

// Python-style index normalisation with a bounds check naming the call.
size_t normalize_index(int64_t idx, size_t n, const char* what) {
  const int64_t sn = static_cast<int64_t>(n);
  const int64_t i = idx < 0 ? idx + sn : idx;
  MAGI_CHECK(i >= 0 && i < sn, "AttnRanges." << what << "(): index " << idx
                                             << " is out of range for " << n << " ranges.");
  return static_cast<size_t>(i);
}

std::string pairs_repr(const AttnRanges& rs) { return rs.repr(); }

}  // namespace

// ---- construction and conversion ----

AttnRanges AttnRanges::from_pairs(const std::vector<std::pair<int64_t, int64_t>>& pairs) {
  AttnRanges out;
  out.ranges.reserve(pairs.size());
  for (size_t i = 0; i < pairs.size(); ++i) {
    MAGI_CHECK(pairs[i].first <= pairs[i].second,
               "AttnRanges.from_pairs(): ranges[" << i << "]=(" << pairs[i].first << ", "
                                                  << pairs[i].second
                                                  << ") is inverted; each range needs start <= end.");
    out.ranges.emplace_back(pairs[i].first, pairs[i].second);
  }
  return out;
}

AttnRanges AttnRanges::from_cu_seqlens(const std::vector<int64_t>& cu, int64_t seqlen) {
  MAGI_CHECK(!cu.empty(), "AttnRanges.from_cu_seqlens(): cu_seqlens is empty; expected [0, ..., "
                              << seqlen << "].");
  MAGI_CHECK(cu.front() == 0,
             "AttnRanges.from_cu_seqlens(): cu_seqlens[0]=" << cu.front() << "; expected 0.");
  MAGI_CHECK(cu.back() == seqlen, "AttnRanges.from_cu_seqlens(): cu_seqlens[-1]="
                                      << cu.back() << " differs from seq_len=" << seqlen << ".");
  AttnRanges out;
  out.ranges.reserve(cu.size() - 1);
  for (size_t i = 1; i < cu.size(); ++i) {
    MAGI_CHECK(cu[i - 1] < cu[i], "AttnRanges.from_cu_seqlens(): cu_seqlens must increase strictly, got cu_seqlens["
                                      << i - 1 << "]=" << cu[i - 1] << " >= cu_seqlens[" << i
                                      << "]=" << cu[i] << ".");
    out.ranges.emplace_back(cu[i - 1], cu[i]);
  }
  return out;
}

std::vector<std::pair<int64_t, int64_t>> AttnRanges::to_pairs() const {
  std::vector<std::pair<int64_t, int64_t>> out;
  out.reserve(ranges.size());
  for (const auto& r : ranges) out.emplace_back(r.start, r.end);
  return out;
}

std::vector<int64_t> AttnRanges::to_cu_seqlens(int64_t seqlen) const {
  MAGI_CHECK(is_cu_seqlens(seqlen), "AttnRanges.to_cu_seqlens(): " << repr()
                                        << " is not a cu_seqlens partition of [0, " << seqlen
                                        << "); it needs contiguous non-empty ranges from 0 to "
                                        << seqlen << ".");
  std::vector<int64_t> out{0};
  for (const auto& r : ranges) out.push_back(r.end);
  return out;
}

// ---- sequence protocol ----

const AttnRange& AttnRanges::at(int64_t idx) const {
  return ranges[normalize_index(idx, ranges.size(), "__getitem__")];
}

AttnRange& AttnRanges::at(int64_t idx) {
  return ranges[normalize_index(idx, ranges.size(), "__getitem__")];
}

void AttnRanges::insert(int64_t idx, const AttnRange& r) {
  const int64_t n = static_cast<int64_t>(ranges.size());
  int64_t i = idx < 0 ? idx + n : idx;
  i = std::clamp<int64_t>(i, 0, n);
  ranges.insert(ranges.begin() + i, r);
}

void AttnRanges::extend(const AttnRanges& other) {
  const std::vector<AttnRange> copy = other.ranges;  // safe when other is *this
  ranges.insert(ranges.end(), copy.begin(), copy.end());
}

AttnRange AttnRanges::pop(int64_t idx) {
  MAGI_CHECK(!ranges.empty(), "AttnRanges.pop(): pop from an empty AttnRanges.");
  const size_t i = normalize_index(idx, ranges.size(), "pop");
  AttnRange r = ranges[i];
  ranges.erase(ranges.begin() + static_cast<std::ptrdiff_t>(i));
  return r;
}

// ---- operations returning a new list ----

AttnRanges AttnRanges::sort() const {
  AttnRanges out(ranges);
  std::stable_sort(out.ranges.begin(), out.ranges.end(),
                   [](const AttnRange& a, const AttnRange& b) { return a.start < b.start; });
  return out;
}

AttnRanges AttnRanges::merge() const {
  const AttnRanges sorted = sort();
  AttnRanges out;
  for (const auto& r : sorted.ranges) {
    if (out.ranges.empty() || r.start > out.ranges.back().end) {
      out.ranges.push_back(r);
    } else if (r.end > out.ranges.back().end) {
      out.ranges.back().end = r.end;
    }
  }
  return out;
}

std::vector<AttnRange> merge_nonempty(std::vector<AttnRange> rs) {
  std::sort(rs.begin(), rs.end());
  std::vector<AttnRange> out;
  for (const auto& r : rs) {
    if (r.start >= r.end) continue;
    if (!out.empty() && r.start <= out.back().end)
      out.back().end = std::max(out.back().end, r.end);
    else
      out.push_back(r);
  }
  return out;
}

AttnRanges AttnRanges::merge_with_split_alignment(int64_t a) const {
  MAGI_CHECK(a > 0, "AttnRanges.merge_with_split_alignment(): split_alignment=" << a
                                                                               << "; expected > 0.");
  auto floor_div = [](int64_t x, int64_t y) { return x / y - ((x % y != 0) && ((x < 0) != (y < 0))); };
  AttnRanges aligned;
  aligned.ranges.reserve(ranges.size());
  for (const auto& r : ranges) {
    const int64_t s = floor_div(r.start, a) * a;
    const int64_t e = -floor_div(-r.end, a) * a;
    aligned.ranges.emplace_back(s, e);
  }
  return aligned.merge();
}

AttnRanges AttnRanges::clear_empty() const {
  AttnRanges out;
  for (const auto& r : ranges)
    if (!r.is_empty()) out.ranges.push_back(r);
  return out;
}

AttnRanges AttnRanges::find_hole_ranges(const AttnRanges& other, bool is_self_merged,
                                        bool is_other_merged) const {
  const AttnRanges a = is_self_merged ? *this : merge();
  const AttnRanges b = is_other_merged ? other : other.merge();
  AttnRanges out;
  size_t j = 0;
  for (const auto& r : a.ranges) {
    int64_t cur = r.start;
    while (j < b.ranges.size() && b.ranges[j].end <= cur) ++j;
    size_t jj = j;
    while (cur < r.end && jj < b.ranges.size() && b.ranges[jj].start < r.end) {
      const AttnRange& h = b.ranges[jj];
      if (h.start > cur) out.ranges.emplace_back(cur, h.start);
      cur = std::max(cur, h.end);
      ++jj;
    }
    if (cur < r.end) out.ranges.emplace_back(cur, r.end);
  }
  return out.merge();
}

AttnRanges AttnRanges::find_overlap_ranges(const AttnRanges& other, bool is_self_merged,
                                           bool is_other_merged) const {
  const AttnRanges a = is_self_merged ? *this : merge();
  const AttnRanges b = is_other_merged ? other : other.merge();
  AttnRanges out;
  size_t i = 0, j = 0;
  while (i < a.ranges.size() && j < b.ranges.size()) {
    const int64_t s = std::max(a.ranges[i].start, b.ranges[j].start);
    const int64_t e = std::min(a.ranges[i].end, b.ranges[j].end);
    if (s < e) out.ranges.emplace_back(s, e);
    if (a.ranges[i].end < b.ranges[j].end) ++i; else ++j;
  }
  return out.merge();
}

AttnRange AttnRanges::make_range_local(const AttnRange& r, bool is_self_merged) const {
  return RangeLocalizer(*this, is_self_merged).to_local(r);
}

AttnRanges AttnRanges::make_ranges_local(const AttnRanges& other, bool is_self_merged) const {
  const RangeLocalizer loc(*this, is_self_merged);
  AttnRanges out;
  out.ranges.reserve(other.ranges.size());
  for (const auto& r : other.ranges) out.ranges.push_back(loc.to_local(r));
  return out;
}

std::vector<AttnRanges> AttnRanges::chunk(int64_t chunk_size) const {
  MAGI_CHECK(chunk_size > 0, "AttnRanges.chunk(): chunk_size=" << chunk_size << "; expected > 0.");
  MAGI_CHECK(is_non_overlap(), "AttnRanges.chunk(): the ranges " << repr()
                                   << " overlap; chunk needs non-overlapping ranges.");
  std::vector<AttnRanges> out;
  AttnRanges cur;
  int64_t room = chunk_size;
  for (const auto& r : ranges) {
    int64_t s = r.start;
    while (s < r.end) {
      const int64_t take = std::min(room, r.end - s);
      cur.ranges.emplace_back(s, s + take);
      s += take;
      room -= take;
      if (room == 0) {
        out.push_back(std::move(cur));
        cur = AttnRanges();
        room = chunk_size;
      }
    }
  }
  if (!cur.ranges.empty()) out.push_back(std::move(cur));
  return out;
}

AttnRanges AttnRanges::truncate(int64_t s, int64_t e) const {
  AttnRanges out;
  for (const auto& r : ranges) {
    const AttnRange t = r.truncate(s, e);
    if (!t.is_empty()) out.ranges.push_back(t);
  }
  return out;
}

// ---- predicates ----

bool AttnRanges::is_sorted() const {
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i - 1].start > ranges[i].start) return false;
  return true;
}

bool AttnRanges::is_merged() const {
  if (!is_sorted()) return false;
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i - 1].end >= ranges[i].start) return false;
  return true;
}

bool AttnRanges::is_non_overlap() const { return total_seqlen() == union_size(); }

bool AttnRanges::is_cu_seqlens(int64_t seqlen) const {
  if (ranges.empty()) return seqlen == 0;
  if (ranges.front().start != 0 || ranges.back().end != seqlen) return false;
  for (size_t i = 0; i < ranges.size(); ++i) {
    if (ranges[i].is_empty()) return false;
    if (i > 0 && ranges[i - 1].end != ranges[i].start) return false;
  }
  return true;
}

bool AttnRanges::is_valid() const {
  for (const auto& r : ranges)
    if (!r.is_valid_close()) return false;
  return true;
}

// ---- sizes ----

int64_t AttnRanges::total_seqlen() const {
  int64_t n = 0;
  for (const auto& r : ranges) n += r.seqlen();
  return n;
}

int64_t AttnRanges::max_seqlen() const {
  int64_t m = 0;
  for (const auto& r : ranges) m = std::max(m, r.seqlen());
  return m;
}

int64_t AttnRanges::start() const {
  MAGI_CHECK(!ranges.empty(), "AttnRanges.start: the ranges are empty, there is no start.");
  int64_t s = ranges.front().start;
  for (const auto& r : ranges) s = std::min(s, r.start);
  return s;
}

int64_t AttnRanges::end() const {
  MAGI_CHECK(!ranges.empty(), "AttnRanges.end: the ranges are empty, there is no end.");
  int64_t e = ranges.front().end;
  for (const auto& r : ranges) e = std::max(e, r.end);
  return e;
}

std::vector<int64_t> AttnRanges::points() const {
  std::vector<int64_t> p;
  p.reserve(ranges.size() * 2);
  for (const auto& r : ranges) {
    p.push_back(r.start);
    p.push_back(r.end);
  }
  std::sort(p.begin(), p.end());
  p.erase(std::unique(p.begin(), p.end()), p.end());
  return p;
}

int64_t AttnRanges::intersect_size() const { return total_seqlen() - union_size(); }

int64_t AttnRanges::intersect_size_with(const AttnRanges& other) const {
  return find_overlap_ranges(other).total_seqlen();
}

int64_t AttnRanges::union_size() const { return merge().total_seqlen(); }

int64_t AttnRanges::union_size_with(const AttnRanges& other) const {
  AttnRanges all(ranges);
  all.extend(other);
  return all.union_size();
}

std::string AttnRanges::repr() const {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < ranges.size(); ++i) os << (i ? ", " : "") << ranges[i].repr();
  os << "]";
  return os.str();
}

size_t AttnRanges::hash() const {
  size_t h = 0x51ed270b27fd1a4bULL ^ ranges.size();
  for (const auto& r : ranges) h ^= r.hash() + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
  return h;
}

// ---- RangeLocalizer ----

RangeLocalizer::RangeLocalizer(const AttnRanges& ranges, bool is_merged)
    : merged_(is_merged ? ranges : ranges.merge()) {
  prefix_.reserve(merged_.size() + 1);
  prefix_.push_back(0);
  for (const auto& r : merged_.ranges) prefix_.push_back(prefix_.back() + r.seqlen());
}

AttnRange RangeLocalizer::to_local(const AttnRange& r) const {
  const auto& rs = merged_.ranges;
  // Last merged range whose start <= r.start.
  auto it = std::upper_bound(rs.begin(), rs.end(), r.start,
                             [](int64_t v, const AttnRange& m) { return v < m.start; });
  bool ok = it != rs.begin();
  size_t idx = 0;
  if (ok) {
    idx = static_cast<size_t>(it - rs.begin()) - 1;
    ok = r.is_subrange_of(rs[idx]);
  }
  MAGI_CHECK(ok, "AttnRanges.make_range_local(): the range " << r.repr()
                     << " is not inside any range of the merged ranges " << pairs_repr(merged_)
                     << "; each range to localise must lie inside one of them.");
  const int64_t s = prefix_[idx] + (r.start - rs[idx].start);
  return AttnRange(s, s + r.seqlen());
}

}  // namespace magi
