// MaskType: code and name conversions, and the closed-form visible-cell count of one slice.
#include "geometry/mask_type.hpp"

#include "errors.hpp"

namespace magi {

MaskType mask_type_from_int(int64_t code) {
  MAGI_CHECK(code >= 0 && code <= 3,
             "mask_type_from_int(): code=" << code
                                           << " is not a mask type; expected 0 (FULL), 1 (CAUSAL), "
                                              "2 (INV_CAUSAL) or 3 (BI_CAUSAL).");
  return static_cast<MaskType>(code);
}

MaskType mask_type_from_string(const std::string& name) {
  if (name == "full") return MaskType::kFull;
  if (name == "causal") return MaskType::kCausal;
  if (name == "inv_causal") return MaskType::kInvCausal;
  if (name == "bi_causal") return MaskType::kBiCausal;
  MAGI_CHECK(false, "mask_type_from_string(): '" << name
                                                 << "' is not a mask type; expected one of 'full', "
                                                    "'causal', 'inv_causal', 'bi_causal'.");
  return MaskType::kFull;  // unreachable
}

const char* mask_type_to_string(MaskType t) {
  switch (t) {
    case MaskType::kFull: return "full";
    case MaskType::kCausal: return "causal";
    case MaskType::kInvCausal: return "inv_causal";
    case MaskType::kBiCausal: return "bi_causal";
  }
  return "?";
}

const char* mask_type_name(MaskType t) {
  switch (t) {
    case MaskType::kFull: return "FULL";
    case MaskType::kCausal: return "CAUSAL";
    case MaskType::kInvCausal: return "INVCAUSAL";
    case MaskType::kBiCausal: return "BICAUSAL";
  }
  return "?";
}

int64_t slice_area(const AttnRange& q, const AttnRange& k, MaskType t) {
  const int64_t lq = q.seqlen();
  const int64_t lk = k.seqlen();
  if (lq <= 0 || lk <= 0) return 0;
  constexpr int64_t kMaxLen = int64_t{1} << 31;  // keeps lq * lk inside int64
  MAGI_CHECK(lq <= kMaxLen && lk <= kMaxLen, "slice_area(): q_range " << q.repr() << " x k_range "
                                                 << k.repr() << " is longer than 2^31 tokens.");
  switch (t) {
    case MaskType::kFull:
      return lq * lk;
    case MaskType::kCausal:
    case MaskType::kInvCausal:
      // Trapezoid when every row sees something (lk >= lq), else a triangle of lk rows.
      return lk >= lq ? (2 * lk - lq + 1) * lq / 2 : (lk + 1) * lk / 2;
    case MaskType::kBiCausal:
      return lk >= lq ? (lk - lq + 1) * lq : 0;
  }
  return 0;
}

}  // namespace magi
