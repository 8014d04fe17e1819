// Slice maker: the cells of one slice that fall in a column strip, as at most three standard
// slices, translated into local coordinates (the "simpler rule" of design §3.3).
#pragma once

#include <cstdint>
#include <vector>

#include "dispatch/chunking.hpp"

namespace magi {

// Appends the cells of `s` with k in [a, b) (ks <= a < b <= ke) as <= 3 standard slices whose
// rows all see at least one key, shifted by (dq, dk): local = global + shift. Row bands are cut
// where the strip's left edge switches from the column a to the slice's lower diagonal and where
// its right edge switches from the upper diagonal to the column b; each band has constant edge
// kinds (column/column FULL, column/diagonal CAUSAL, diagonal/column INV_CAUSAL, diagonal/diagonal
// BI_CAUSAL). Returns the number of cells appended.
int64_t emit_strip(const MaskSlice& s, int64_t a, int64_t b, int64_t dq, int64_t dk,
                   std::vector<MaskSlice>* out);

// Number of cells of `s` with k in [a, b), without building slices.
int64_t strip_area(const MaskSlice& s, int64_t a, int64_t b);

// Merges, among (*v)[from..], slices with the same q range whose k ranges touch, when the union is
// again one standard slice: FULL+FULL, FULL+CAUSAL, INV_CAUSAL+FULL, INV_CAUSAL+CAUSAL (every row
// of the causal sides non-empty). Keeps the cell set; reorders (*v)[from..] by (q, k).
void merge_touching(std::vector<MaskSlice>* v, size_t from);

}  // namespace magi
