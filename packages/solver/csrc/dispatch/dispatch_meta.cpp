// make_dispatch_meta: validation, chunk areas, the partition solve and the derived layout.
#include "dispatch/dispatch_meta.hpp"

#include <algorithm>
#include <sstream>

#include "errors.hpp"

namespace magi {

void check_chunking(const char* fn, int64_t total_seqlen, int64_t chunk_size, int64_t cp_size) {
  MAGI_CHECK(cp_size >= 1, fn << ": cp_size=" << cp_size << " must be >= 1.");
  MAGI_CHECK(total_seqlen > 0, fn << ": total_seqlen=" << total_seqlen << " must be > 0.");
  MAGI_CHECK(chunk_size > 0, fn << ": chunk_size=" << chunk_size << " must be > 0.");
  MAGI_CHECK(total_seqlen % chunk_size == 0,
             fn << ": chunk_size=" << chunk_size << " does not divide total_seqlen=" << total_seqlen
                << "; pad the mask to a multiple of chunk_size * cp_size first.");
  MAGI_CHECK((total_seqlen / chunk_size) % cp_size == 0,
             fn << ": num_chunks=" << total_seqlen / chunk_size << " (total_seqlen=" << total_seqlen
                << " / chunk_size=" << chunk_size << ") is not a multiple of cp_size=" << cp_size
                << "; pad the mask to a multiple of chunk_size * cp_size first.");
}

void DispatchMeta::finalize() {
  const char* fn = "DispatchMeta";
  MAGI_CHECK(cp_size >= 1 && num_chunks >= 1 && chunk_size >= 1 &&
                 num_chunks * chunk_size == total_seqlen && num_chunks % cp_size == 0,
             fn << ": inconsistent sizes total_seqlen=" << total_seqlen << ", chunk_size=" << chunk_size
                << ", num_chunks=" << num_chunks << ", cp_size=" << cp_size << ".");
  MAGI_CHECK(static_cast<int64_t>(partitions.size()) == cp_size,
             fn << ": len(partitions)=" << partitions.size() << " != cp_size=" << cp_size << ".");
  MAGI_CHECK(static_cast<int64_t>(chunk_areas.size()) == num_chunks,
             fn << ": len(chunk_areas)=" << chunk_areas.size() << " != num_chunks=" << num_chunks << ".");
  shard_seqlen = total_seqlen / cp_size;
  chunk_owner.assign(num_chunks, -1);
  perm_idxs.clear();
  for (int64_t r = 0; r < cp_size; ++r) {
    const auto& p = partitions[r];
    MAGI_CHECK(static_cast<int64_t>(p.size()) == num_chunks / cp_size,
               fn << ": partitions[" << r << "] has " << p.size() << " chunks, expected "
                  << num_chunks / cp_size << ".");
    for (size_t i = 0; i < p.size(); ++i) {
      MAGI_CHECK(p[i] >= 0 && p[i] < num_chunks && chunk_owner[p[i]] < 0 && (i == 0 || p[i - 1] < p[i]),
                 fn << ": partitions[" << r << "] must be ascending, unique chunk ids in [0, "
                    << num_chunks << "); got id " << p[i] << ".");
      chunk_owner[p[i]] = r;
      perm_idxs.push_back(p[i]);
    }
  }
  unperm_idxs.assign(num_chunks, 0);
  for (int64_t i = 0; i < num_chunks; ++i) unperm_idxs[perm_idxs[i]] = i;
  host_ranges_per_rank.assign(cp_size, {});
  for (int64_t r = 0; r < cp_size; ++r) {
    auto& h = host_ranges_per_rank[r];
    for (int64_t c : partitions[r]) {
      if (!h.empty() && h.back().end == c * chunk_size)
        h.back().end += chunk_size;
      else
        h.push_back(AttnRange(c * chunk_size, (c + 1) * chunk_size));
    }
  }
}

std::vector<int64_t> DispatchMeta::position_ids(int64_t rank) const {
  MAGI_CHECK(rank >= 0 && rank < cp_size,
             "DispatchMeta.position_ids(): rank=" << rank << " is outside [0, cp_size=" << cp_size << ").");
  std::vector<int64_t> out;
  out.reserve(shard_seqlen);
  const int64_t hi = std::max<int64_t>(max_valid_ids - 1, 0);
  for (int64_t c : partitions[rank])
    for (int64_t t = c * chunk_size; t < (c + 1) * chunk_size; ++t) out.push_back(std::min(t, hi));
  return out;
}

std::string DispatchMeta::repr() const {
  std::ostringstream os;
  os << "DispatchMeta(total_seqlen=" << total_seqlen << ", chunk_size=" << chunk_size
     << ", num_chunks=" << num_chunks << ", cp_size=" << cp_size << ", shard_seqlen=" << shard_seqlen
     << ", max_valid_ids=" << max_valid_ids << ", rank_areas=[";
  for (int64_t r = 0; r < cp_size; ++r) {
    int64_t s = 0;
    for (int64_t c : partitions[r]) s += chunk_areas[c];
    if (r) os << ", ";
    if (r == 8 && cp_size > 10) {
      os << "...";
      break;
    }
    os << s;
  }
  os << "])";
  return os.str();
}

bool DispatchMeta::operator==(const DispatchMeta& o) const {
  return total_seqlen == o.total_seqlen && chunk_size == o.chunk_size && num_chunks == o.num_chunks &&
         cp_size == o.cp_size && max_valid_ids == o.max_valid_ids && chunk_areas == o.chunk_areas &&
         partitions == o.partitions;
}

DispatchMeta make_dispatch_meta(const RangePairs& q_ranges, const RangePairs& k_ranges,
                                const std::vector<int64_t>& mask_types, int64_t total_seqlen,
                                int64_t chunk_size, int64_t cp_size, const DispatchParams& params) {
  const char* fn = "make_dispatch_meta()";
  check_chunking(fn, total_seqlen, chunk_size, cp_size);
  const auto slices = check_mask(fn, q_ranges, k_ranges, mask_types, total_seqlen);
  DispatchMeta m;
  m.total_seqlen = total_seqlen;
  m.cp_size = cp_size;
  // cp_size == 1: one chunk holding the whole sequence (nothing to balance).
  m.chunk_size = cp_size == 1 ? total_seqlen : chunk_size;
  m.num_chunks = total_seqlen / m.chunk_size;
  for (const auto& s : slices)
    if (s.qs < s.qe && s.ks < s.ke) m.max_valid_ids = std::max(m.max_valid_ids, s.qe);
  const auto chunks = chunk_mask(slices, total_seqlen, m.chunk_size);
  m.chunk_areas.assign(m.num_chunks, 0);
  JobInfo info;
  const bool need_k = params.alg == DispatchAlg::kToppHeap;
  const bool need_sid = params.alg == DispatchAlg::kSortedSequentialSelect;
  if (need_k) info.k_ranges.resize(m.num_chunks);
  if (need_sid) info.sample_ids.assign(m.num_chunks, -1);
  for (int64_t c = 0; c < m.num_chunks; ++c) {
    int64_t best_area = -1;
    std::vector<AttnRange> ks;
    for (const auto& p : chunks[c]) {
      m.chunk_areas[c] += p.area;
      if (need_k) ks.push_back(AttnRange(p.s.ks, p.s.ke));
      // A chunk's sample is the one contributing the most area (ties: the first).
      if (need_sid && p.area > best_area) best_area = p.area, info.sample_ids[c] = p.sample_id;
    }
    if (need_k) {
      std::sort(ks.begin(), ks.end());
      for (const auto& r : ks) {
        if (!info.k_ranges[c].empty() && r.start <= info.k_ranges[c].back().end)
          info.k_ranges[c].back().end = std::max(info.k_ranges[c].back().end, r.end);
        else
          info.k_ranges[c].push_back(r);
      }
    }
  }
  m.partitions = solve_dispatch(fn, m.chunk_areas, cp_size, params, &info);
  m.finalize();
  return m;
}

}  // namespace magi
