// MaskType: the four slice mask types, their int codes and the exact visible-cell count of a slice.
#pragma once

#include <cstdint>
#include <string>

#include "geometry/range.hpp"

namespace magi {

// Int codes are the kernels' attn_type_map values: FULL 0, CAUSAL 1, INV_CAUSAL 2, BI_CAUSAL 3.
// With Lq, Lk the slice lengths and (i, j) the local cell, the cell is visible iff
//   FULL: always; CAUSAL: j <= i + Lk - Lq (bottom-right aligned);
//   INV_CAUSAL: j >= i (top-left aligned); BI_CAUSAL: both.
enum class MaskType : int32_t { kFull = 0, kCausal = 1, kInvCausal = 2, kBiCausal = 3 };

MaskType mask_type_from_int(int64_t code);                // RangeError outside 0..3
inline int64_t mask_type_to_int(MaskType t) { return static_cast<int64_t>(t); }
MaskType mask_type_from_string(const std::string& name);  // "full", "causal", "inv_causal", "bi_causal"
const char* mask_type_to_string(MaskType t);
const char* mask_type_name(MaskType t);  // enum member name: "FULL", "CAUSAL", "INVCAUSAL", "BICAUSAL"

// Exact number of visible cells of the slice (q, k, t), O(1).
int64_t slice_area(const AttnRange& q, const AttnRange& k, MaskType t);

}  // namespace magi
