// Mask validation and chunking: cut a global mask along q into equal chunks and trim every
// piece so it keeps the original slice's geometry (design §2.2). The chunk areas are what the
// dispatch solver balances; the per-chunk pieces are what the plan solver places.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "geometry/mask_type.hpp"
#include "geometry/range.hpp"

namespace magi {

using RangePairs = std::vector<std::pair<int64_t, int64_t>>;

// One slice in global coordinates: cell (q, k) of [qs, qe) x [ks, ke) is visible per `type`.
struct MaskSlice {
  int64_t qs = 0, qe = 0, ks = 0, ke = 0;
  MaskType type = MaskType::kFull;
  int64_t area() const { return slice_area(AttnRange{qs, qe}, AttnRange{ks, ke}, type); }
};

// A piece of one slice inside one q chunk. Every row of a piece sees at least one key, and every
// key of [ks, ke) is seen by some row, so the piece's k range is exactly the keys it touches.
struct ChunkPiece {
  MaskSlice s;
  int64_t area = 0;
  int64_t sample_id = 0;  // index of the source slice after sorting by (q.start, q.end)
};

// Checks a mask (lengths, bounds, orientation, type codes) and returns it as slices. `fn` names
// the public function in messages. Every range must lie in [0, total_seqlen].
std::vector<MaskSlice> check_mask(const char* fn, const RangePairs& q_ranges,
                                  const RangePairs& k_ranges, const std::vector<int64_t>& mask_types,
                                  int64_t total_seqlen);

// Cuts the slices (any order) into num_chunks = total_seqlen / chunk_size q chunks; pieces with no
// visible cell are dropped. Pieces inside a chunk follow the (q.start, q.end)-sorted slice order.
std::vector<std::vector<ChunkPiece>> chunk_mask(const std::vector<MaskSlice>& slices,
                                                int64_t total_seqlen, int64_t chunk_size);

}  // namespace magi
