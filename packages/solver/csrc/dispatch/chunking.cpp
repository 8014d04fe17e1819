// Mask validation and q-chunking with per-type trimming (design §2.2).
#include "dispatch/chunking.hpp"

#include <algorithm>
#include <numeric>

#include "errors.hpp"

namespace magi {

std::vector<MaskSlice> check_mask(const char* fn, const RangePairs& q_ranges,
                                  const RangePairs& k_ranges, const std::vector<int64_t>& mask_types,
                                  int64_t total_seqlen) {
  MAGI_CHECK(total_seqlen > 0, fn << ": total_seqlen=" << total_seqlen << " must be > 0.");
  MAGI_CHECK(q_ranges.size() == k_ranges.size() && q_ranges.size() == mask_types.size(),
             fn << ": len(q_ranges)=" << q_ranges.size() << ", len(k_ranges)=" << k_ranges.size()
                << " and len(mask_types)=" << mask_types.size() << " must be equal.");
  std::vector<MaskSlice> out(q_ranges.size());
  for (size_t i = 0; i < q_ranges.size(); ++i) {
    const char* names[2] = {"q_ranges", "k_ranges"};
    const std::pair<int64_t, int64_t>* rs[2] = {&q_ranges[i], &k_ranges[i]};
    for (int w = 0; w < 2; ++w) {
      const auto& r = *rs[w];
      MAGI_CHECK(r.first <= r.second, fn << ": " << names[w] << "[" << i << "]=(" << r.first << ", "
                                         << r.second
                                         << ") is inverted; each range needs start <= end.");
      MAGI_CHECK(r.first >= 0 && r.second <= total_seqlen,
                 fn << ": " << names[w] << "[" << i << "]=(" << r.first << ", " << r.second
                    << ") is outside [0, total_seqlen=" << total_seqlen << "].");
    }
    MAGI_CHECK(mask_types[i] >= 0 && mask_types[i] <= 3,
               fn << ": mask_types[" << i << "]=" << mask_types[i]
                  << " is not a mask type; expected 0 (FULL), 1 (CAUSAL), 2 (INV_CAUSAL) or 3 "
                     "(BI_CAUSAL).");
    out[i] = MaskSlice{q_ranges[i].first, q_ranges[i].second, k_ranges[i].first,
                       k_ranges[i].second, static_cast<MaskType>(mask_types[i])};
  }
  return out;
}

namespace {

// The rows of the slice that see at least one key: [lo, hi), empty when lo >= hi.
std::pair<int64_t, int64_t> nonempty_rows(const MaskSlice& s) {
  const int64_t lq = s.qe - s.qs, lk = s.ke - s.ks;
  if (lq <= 0 || lk <= 0) return {0, 0};
  switch (s.type) {
    case MaskType::kFull: return {s.qs, s.qe};
    case MaskType::kCausal: return {std::max(s.qs, s.qe - lk), s.qe};
    case MaskType::kInvCausal: return {s.qs, std::min(s.qe, s.qs + lk)};
    case MaskType::kBiCausal: return lk >= lq ? std::make_pair(s.qs, s.qe) : std::make_pair(0L, 0L);
  }
  return {0, 0};
}

// The part of slice s in rows [a, b) (inside its non-empty rows), with the k range trimmed so the
// piece keeps the slice's diagonals: CAUSAL keeps its bottom-right anchor, INV_CAUSAL its
// top-left anchor, BI_CAUSAL both.
MaskSlice cut_rows(const MaskSlice& s, int64_t a, int64_t b) {
  MaskSlice p = s;
  p.qs = a;
  p.qe = b;
  const bool shift_start = s.type == MaskType::kInvCausal || s.type == MaskType::kBiCausal;
  const bool shift_end = s.type == MaskType::kCausal || s.type == MaskType::kBiCausal;
  if (shift_start) p.ks = s.ks + (a - s.qs);
  if (shift_end) p.ke = s.ke - (s.qe - b);
  return p;
}

}  // namespace

std::vector<std::vector<ChunkPiece>> chunk_mask(const std::vector<MaskSlice>& slices,
                                                int64_t total_seqlen, int64_t chunk_size) {
  const int64_t n = total_seqlen / chunk_size;
  std::vector<std::vector<ChunkPiece>> chunks(static_cast<size_t>(n));
  std::vector<size_t> order(slices.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) {
    const auto& a = slices[x];
    const auto& b = slices[y];
    return a.qs != b.qs ? a.qs < b.qs : a.qe < b.qe;
  });
  for (size_t sid = 0; sid < order.size(); ++sid) {
    const MaskSlice& s = slices[order[sid]];
    auto [lo, hi] = nonempty_rows(s);
    if (lo >= hi) continue;
    for (int64_t c = lo / chunk_size; c * chunk_size < hi; ++c) {
      const int64_t a = std::max(lo, c * chunk_size), b = std::min(hi, (c + 1) * chunk_size);
      ChunkPiece piece;
      piece.s = cut_rows(s, a, b);
      piece.area = piece.s.area();
      piece.sample_id = static_cast<int64_t>(sid);
      if (piece.area > 0 && piece.s.ks < piece.s.ke) chunks[static_cast<size_t>(c)].push_back(piece);
    }
  }
  return chunks;
}

}  // namespace magi
