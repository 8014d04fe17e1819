// AttnRectangle(s): tightening, O(1) area, exact cuts and conversion back to standard slices.
#include "geometry/rectangle.hpp"

#include <algorithm>
#include <array>
#include <sstream>

#include "errors.hpp"

namespace magi {

namespace {

// Coordinates are bounded so that every sum/difference in the band arithmetic fits in int64.
constexpr int64_t kCoordLimit = int64_t{1} << 61;

void check_coord(int64_t v, const char* what, const char* fn) {
  MAGI_CHECK(v >= -kCoordLimit && v <= kCoordLimit,
             fn << ": " << what << "=" << v << " is outside the supported coordinate range [-2^61, 2^61].");
}

void check_box(const AttnRange& q, const AttnRange& k, const char* fn) {
  check_coord(q.start, "q_range.start", fn);
  check_coord(q.end, "q_range.end", fn);
  check_coord(k.start, "k_range.start", fn);
  check_coord(k.end, "k_range.end", fn);
}

size_t mix(size_t h, size_t v) { return h ^ (v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2)); }

}  // namespace

AttnRectangle::AttnRectangle(AttnRange q_, AttnRange k_, MaskType t) : q(q_), k(k_) {
  check_box(q, k, "AttnRectangle()");
  const bool upper_band = t == MaskType::kCausal || t == MaskType::kBiCausal;
  const bool lower_band = t == MaskType::kInvCausal || t == MaskType::kBiCausal;
  d_hi = upper_band ? k.end - q.end : k.end - 1 - q.start;
  d_lo = lower_band ? k.start - q.start : k.start - (q.end - 1);
  tighten();
}

AttnRectangle AttnRectangle::from_band(AttnRange q, AttnRange k, int64_t d_lo, int64_t d_hi) {
  check_box(q, k, "AttnRectangle.from_band()");
  AttnRectangle r;
  r.q = q;
  r.k = k;
  // Clamp the band to what the box can reach first, so that huge d values cannot overflow.
  r.d_lo = std::max(d_lo, k.start - (q.end - 1));
  r.d_hi = std::min(d_hi, k.end - 1 - q.start);
  r.tighten();
  return r;
}

void AttnRectangle::tighten() {
  // Shrink q, k and d to the bounds reached by some cell; iterate to a fixed point (2-3 rounds).
  for (int round = 0; round < 8; ++round) {
    if (q.is_empty() || k.is_empty() || d_lo > d_hi) {
      q = AttnRange();
      k = AttnRange();
      d_lo = 0;
      d_hi = -1;
      return;
    }
    const int64_t qs = std::max(q.start, k.start - d_hi);
    const int64_t qe = std::min(q.end, k.end - d_lo);
    const int64_t ks = std::max(k.start, q.start + d_lo);
    const int64_t ke = std::min(k.end, q.end + d_hi);
    const int64_t dl = std::max(d_lo, k.start - (q.end - 1));
    const int64_t dh = std::min(d_hi, k.end - 1 - q.start);
    if (qs == q.start && qe == q.end && ks == k.start && ke == k.end && dl == d_lo && dh == d_hi)
      return;
    q.start = qs;
    q.end = std::max(qs, qe);
    k.start = ks;
    k.end = std::max(ks, ke);
    d_lo = dl;
    d_hi = dh;
  }
  MAGI_CHECK(false, "AttnRectangle: internal error, bounds did not converge for q="
                        << q.repr() << " k=" << k.repr() << " d=[" << d_lo << ", " << d_hi << "]");
}

int64_t AttnRectangle::area() const {
  if (is_empty()) return 0;
  // Row q sees k in [max(k.start, q + d_lo), min(k.end - 1, q + d_hi)] (non-empty after tightening).
  // The lower bound switches from the box to the band at q = k.start - d_lo, the upper bound from
  // the band to the box after q = k.end - 1 - d_hi: at most 3 pieces, each an arithmetic series.
  std::array<int64_t, 4> cuts{q.start, k.start - d_lo, k.end - d_hi, q.end};
  std::sort(cuts.begin() + 1, cuts.begin() + 3);
  int64_t total = 0;
  for (int i = 0; i < 3; ++i) {
    const int64_t x = std::max(cuts[i], q.start);
    const int64_t y = std::min(cuts[i + 1], q.end);
    if (x >= y) continue;
    const bool lower_band = x >= k.start - d_lo;
    const bool upper_band = x <= k.end - 1 - d_hi;
    // count(q) = alpha * q + beta on [x, y)
    const int64_t alpha = (upper_band ? 1 : 0) - (lower_band ? 1 : 0);
    const int64_t beta = (upper_band ? d_hi : k.end - 1) - (lower_band ? d_lo : k.start) + 1;
    const int64_t n = y - x;
    // sum_{q=x}^{y-1} q = n * (x + y - 1) / 2, exact since n*(x+y-1) is even
    total += alpha * ((n * (x + y - 1)) / 2) + beta * n;
  }
  return total;
}

std::pair<AttnRectangle, AttnRectangle> AttnRectangle::cut_q(int64_t pos) const {
  if (is_empty()) return {*this, *this};
  const int64_t p = std::clamp(pos, q.start, q.end);
  return {from_band(AttnRange(q.start, p), k, d_lo, d_hi), from_band(AttnRange(p, q.end), k, d_lo, d_hi)};
}

std::pair<AttnRectangle, AttnRectangle> AttnRectangle::cut_k(int64_t pos) const {
  if (is_empty()) return {*this, *this};
  const int64_t p = std::clamp(pos, k.start, k.end);
  return {from_band(q, AttnRange(k.start, p), d_lo, d_hi), from_band(q, AttnRange(p, k.end), d_lo, d_hi)};
}

std::vector<AttnSlice> AttnRectangle::to_slices() const {
  std::vector<AttnSlice> out;
  if (is_empty()) return out;
  static constexpr std::array<MaskType, 4> kTypes{MaskType::kFull, MaskType::kCausal,
                                                 MaskType::kInvCausal, MaskType::kBiCausal};
  auto as_standard = [&](const AttnRectangle& r) -> bool {
    for (MaskType t : kTypes) {
      if (AttnRectangle(r.q, r.k, t) == r) {
        out.emplace_back(r.q, r.k, t);
        return true;
      }
    }
    return false;
  };
  if (as_standard(*this)) return out;
  // Cut q where the band meets the left edge (q_l) and leaves the right edge (q_r + 1); inside
  // each piece both k bounds are of one kind (box or band), i.e. the piece is a standard slice.
  const int64_t q_l = k.start - d_lo;
  const int64_t q_r1 = k.end - d_hi;
  std::array<int64_t, 2> cuts{std::min(q_l, q_r1), std::max(q_l, q_r1)};
  AttnRectangle rest = *this;
  std::vector<AttnRectangle> pieces;
  for (int64_t c : cuts) {
    auto [lo, hi] = rest.cut_q(c);
    if (!lo.is_empty()) pieces.push_back(lo);
    rest = hi;
  }
  if (!rest.is_empty()) pieces.push_back(rest);
  for (const auto& piece : pieces) {
    MAGI_CHECK(as_standard(piece), "AttnRectangle.to_slices(): internal error, piece "
                                       << piece.repr() << " of " << repr() << " is not standard.");
  }
  return out;
}

std::string AttnRectangle::repr() const {
  std::ostringstream os;
  os << "AttnRectangle(q=" << q.repr() << ", k=" << k.repr() << ", d=[" << d_lo << ", " << d_hi
     << "])";
  return os.str();
}

size_t AttnRectangle::hash() const {
  size_t h = mix(q.hash(), k.hash());
  h = mix(h, std::hash<int64_t>{}(d_lo));
  return mix(h, std::hash<int64_t>{}(d_hi));
}

// ---- AttnRectangles ----

AttnRectangles AttnRectangles::from_slices(const std::vector<AttnRange>& q_ranges,
                                           const std::vector<AttnRange>& k_ranges,
                                           const std::vector<MaskType>& types) {
  MAGI_CHECK(q_ranges.size() == k_ranges.size() && q_ranges.size() == types.size(),
             "AttnRectangles.from_slices(): q_ranges, k_ranges and mask types differ in length ("
                 << q_ranges.size() << ", " << k_ranges.size() << ", " << types.size() << ").");
  AttnRectangles out;
  out.rects.reserve(q_ranges.size());
  for (size_t i = 0; i < q_ranges.size(); ++i) {
    AttnRectangle r(q_ranges[i], k_ranges[i], types[i]);
    if (!r.is_empty()) out.rects.push_back(r);
  }
  return out;
}

int64_t AttnRectangles::area() const {
  int64_t a = 0;
  for (const auto& r : rects) a += r.area();
  return a;
}

std::pair<AttnRectangles, AttnRectangles> AttnRectangles::cut_q(int64_t pos) const {
  std::pair<AttnRectangles, AttnRectangles> out;
  for (const auto& r : rects) {
    auto [lo, hi] = r.cut_q(pos);
    if (!lo.is_empty()) out.first.rects.push_back(lo);
    if (!hi.is_empty()) out.second.rects.push_back(hi);
  }
  return out;
}

std::pair<AttnRectangles, AttnRectangles> AttnRectangles::cut_k(int64_t pos) const {
  std::pair<AttnRectangles, AttnRectangles> out;
  for (const auto& r : rects) {
    auto [lo, hi] = r.cut_k(pos);
    if (!lo.is_empty()) out.first.rects.push_back(lo);
    if (!hi.is_empty()) out.second.rects.push_back(hi);
  }
  return out;
}

AttnRanges AttnRectangles::get_qo_ranges_union() const {
  AttnRanges rs;
  for (const auto& r : rects)
    if (!r.is_empty()) rs.append(r.q);
  return rs.merge();
}

AttnRanges AttnRectangles::get_kv_ranges_union() const {
  AttnRanges rs;
  for (const auto& r : rects)
    if (!r.is_empty()) rs.append(r.k);
  return rs.merge();
}

std::vector<AttnSlice> AttnRectangles::to_slices() const {
  std::vector<AttnSlice> out;
  for (const auto& r : rects) {
    auto s = r.to_slices();
    out.insert(out.end(), s.begin(), s.end());
  }
  return out;
}

std::string AttnRectangles::repr() const {
  std::ostringstream os;
  os << "AttnRectangles([";
  for (size_t i = 0; i < rects.size(); ++i) os << (i ? ", " : "") << rects[i].repr();
  os << "])";
  return os.str();
}

size_t AttnRectangles::hash() const {
  size_t h = 0x2545f4914f6cdd1dULL ^ rects.size();
  for (const auto& r : rects) h = mix(h, r.hash());
  return h;
}

}  // namespace magi
