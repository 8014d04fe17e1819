// pybind11 conversions of geometry types shared by every binding file (include it, never redefine).
//
// magi::MaskType <-> Python AttnMaskType (a real enum.Enum whose .value is the string). A C++
// parameter of type MaskType accepts an AttnMaskType member, its string value ("causal") or its
// int code (1); a returned MaskType becomes the AttnMaskType member. AttnRange / AttnRanges /
// AttnRectangle(s) are ordinary py::class_ types registered by bind_geometry (plain copies).
#pragma once

#include <pybind11/pybind11.h>

#include "geometry/mask_type.hpp"

namespace magi::bindings {
// Defined in bind_geometry.cpp; valid once bind_geometry has run (module.cpp calls it first).
pybind11::object mask_type_to_py(MaskType t);
// Accepts AttnMaskType / str / int; RangeError for a bad value, TypeError for another type.
MaskType mask_type_from_py(pybind11::handle h);
bool is_mask_type_like(pybind11::handle h);
}  // namespace magi::bindings

namespace pybind11::detail {
template <>
struct type_caster<magi::MaskType> {
  PYBIND11_TYPE_CASTER(magi::MaskType, const_name("AttnMaskType"));

  bool load(handle src, bool /*convert*/) {
    if (!magi::bindings::is_mask_type_like(src)) return false;
    value = magi::bindings::mask_type_from_py(src);
    return true;
  }
  static handle cast(magi::MaskType t, return_value_policy /*policy*/, handle /*parent*/) {
    return magi::bindings::mask_type_to_py(t).release();
  }
};
}  // namespace pybind11::detail
