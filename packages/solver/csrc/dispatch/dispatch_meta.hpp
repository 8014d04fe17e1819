// DispatchMeta: which q/k chunks each rank holds after load-balanced dispatch (design §2.4).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dispatch/chunking.hpp"
#include "dispatch/dispatch_solver.hpp"
#include "geometry/range.hpp"

namespace magi {

struct DispatchMeta {
  int64_t total_seqlen = 0;   // padded
  int64_t chunk_size = 0;     // == total_seqlen when cp_size == 1 (one chunk)
  int64_t num_chunks = 0;
  int64_t cp_size = 0;
  int64_t shard_seqlen = 0;   // total_seqlen / cp_size
  int64_t max_valid_ids = 0;  // max q.end over slices with non-empty q and k
  std::vector<int64_t> chunk_areas;
  std::vector<std::vector<int64_t>> partitions;  // per rank, ascending, num_chunks / cp_size each
  // Derived from the fields above by finalize().
  std::vector<int64_t> perm_idxs, unperm_idxs, chunk_owner;
  std::vector<std::vector<AttnRange>> host_ranges_per_rank;  // merged global token ranges

  // Recomputes the derived fields and checks the partitions (RangeError when inconsistent).
  void finalize();
  // Global positions of rank's local tokens, clamped to max_valid_ids - 1 (and to >= 0).
  std::vector<int64_t> position_ids(int64_t rank) const;
  std::string repr() const;
  bool operator==(const DispatchMeta& o) const;
};

// Chunk the (already padded) mask, weigh each chunk by its visible area and partition the chunks.
// total_seqlen must be a multiple of chunk_size and num_chunks a multiple of cp_size.
DispatchMeta make_dispatch_meta(const RangePairs& q_ranges, const RangePairs& k_ranges,
                                const std::vector<int64_t>& mask_types, int64_t total_seqlen,
                                int64_t chunk_size, int64_t cp_size, const DispatchParams& params);

// Shared by the dispatch and plan entry points: chunk geometry checks with `fn` in messages.
void check_chunking(const char* fn, int64_t total_seqlen, int64_t chunk_size, int64_t cp_size);

}  // namespace magi
