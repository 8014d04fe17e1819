// Conversion shared by the dispatch, plan and dynamic-solver bindings: a range list as Python
// [(start, end), ...] (one helper, so every area exposes ranges the same way).
#pragma once

#include <pybind11/pybind11.h>

#include <vector>

#include "geometry/range.hpp"

namespace magi::bindings {

inline pybind11::list ranges_to_list(const std::vector<AttnRange>& rs) {
  pybind11::list out;
  for (const auto& r : rs) out.append(pybind11::make_tuple(r.start, r.end));
  return out;
}

}  // namespace magi::bindings
