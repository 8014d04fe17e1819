// Slice maker: strip decomposition of one slice and merging of touching neighbours.
#include "plan/slice_maker.hpp"

#include <algorithm>

namespace magi {

namespace {

// Visible keys of row q of s are [lo(q), hi(q)). "Diagonal" edges move by one per row.
inline bool lower_is_diag(MaskType t) { return t == MaskType::kInvCausal || t == MaskType::kBiCausal; }
inline bool upper_is_diag(MaskType t) { return t == MaskType::kCausal || t == MaskType::kBiCausal; }

template <typename Sink>
int64_t for_each_band(const MaskSlice& s, int64_t a, int64_t b, Sink&& sink) {
  const bool ld = lower_is_diag(s.type), ud = upper_is_diag(s.type);
  auto lo = [&](int64_t q) { return s.ks + (q - s.qs); };      // lower diagonal
  auto hi = [&](int64_t q) { return s.ke - s.qe + q + 1; };    // upper diagonal (exclusive)
  // Rows below q_l use the diagonal as left edge (lo(q) >= a); rows from q_r on use b as right
  // edge (hi(q) >= b).
  const int64_t q_l = ld ? s.qs + (a - s.ks) : s.qe;
  const int64_t q_r = ud ? b - s.ke + s.qe : s.qs;
  int64_t cuts[4] = {s.qs, std::clamp(q_l, s.qs, s.qe), std::clamp(q_r, s.qs, s.qe), s.qe};
  std::sort(cuts + 1, cuts + 3);
  int64_t total = 0;
  for (int i = 0; i < 3; ++i) {
    int64_t u = cuts[i], v = cuts[i + 1];
    if (u >= v) continue;
    const bool left_diag = ld && u >= q_l;
    const bool right_diag = ud && u < q_r;
    MaskSlice o;
    if (!left_diag && !right_diag) {
      o = MaskSlice{u, v, a, b, MaskType::kFull};
    } else if (!left_diag && right_diag) {
      u = std::max(u, a + s.qe - s.ke);  // rows with hi(q) > a
      if (u >= v) continue;
      o = MaskSlice{u, v, a, hi(v - 1), MaskType::kCausal};
    } else if (left_diag && !right_diag) {
      v = std::min(v, b - s.ks + s.qs);  // rows with lo(q) < b
      if (u >= v) continue;
      o = MaskSlice{u, v, lo(u), b, MaskType::kInvCausal};
    } else {
      if (hi(u) <= lo(u)) continue;  // empty band (BI_CAUSAL narrower than its rows)
      o = MaskSlice{u, v, lo(u), hi(v - 1), MaskType::kBiCausal};
    }
    const int64_t area = o.area();
    if (area <= 0) continue;
    total += area;
    sink(o);
  }
  return total;
}

}  // namespace

int64_t emit_strip(const MaskSlice& s, int64_t a, int64_t b, int64_t dq, int64_t dk,
                   std::vector<MaskSlice>* out) {
  return for_each_band(s, a, b, [&](MaskSlice o) {
    o.qs += dq, o.qe += dq, o.ks += dk, o.ke += dk;
    out->push_back(o);
  });
}

int64_t strip_area(const MaskSlice& s, int64_t a, int64_t b) {
  return for_each_band(s, a, b, [](const MaskSlice&) {});
}

namespace {

// Every row of a causal-like slice sees something iff Lk >= Lq.
inline bool rows_full(const MaskSlice& s) { return s.ke - s.ks >= s.qe - s.qs; }

// The type of x ∪ y (y directly right of x, same rows) when it is one standard slice, else -1.
int merged_type(const MaskSlice& x, const MaskSlice& y) {
  const bool x_inv = x.type == MaskType::kInvCausal, x_full = x.type == MaskType::kFull;
  const bool y_cau = y.type == MaskType::kCausal, y_full = y.type == MaskType::kFull;
  if ((!x_full && !(x_inv && rows_full(x))) || (!y_full && !(y_cau && rows_full(y)))) return -1;
  if (x_full && y_full) return static_cast<int>(MaskType::kFull);
  if (x_full) return static_cast<int>(MaskType::kCausal);
  if (y_full) return static_cast<int>(MaskType::kInvCausal);
  return static_cast<int>(MaskType::kBiCausal);
}

}  // namespace

void merge_touching(std::vector<MaskSlice>* v, size_t from) {
  if (v->size() - from < 2) return;
  std::sort(v->begin() + from, v->end(), [](const MaskSlice& x, const MaskSlice& y) {
    if (x.qs != y.qs) return x.qs < y.qs;
    if (x.qe != y.qe) return x.qe < y.qe;
    return x.ks < y.ks;
  });
  size_t w = from;
  for (size_t i = from + 1; i < v->size(); ++i) {
    MaskSlice& x = (*v)[w];
    const MaskSlice& y = (*v)[i];
    if (x.qs == y.qs && x.qe == y.qe && x.ke == y.ks) {
      const int t = merged_type(x, y);
      if (t >= 0) {
        x.ke = y.ke;
        x.type = static_cast<MaskType>(t);
        continue;
      }
    }
    (*v)[++w] = y;
  }
  v->resize(w + 1);
}

}  // namespace magi
