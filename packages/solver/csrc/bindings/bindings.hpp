// One registration function per area; module.cpp calls them in order (geometry first, since the
// dispatch, plan and dynamic-solver bindings refer to its types).
#pragma once

#include <pybind11/pybind11.h>

namespace magi::bindings {
void bind_geometry(pybind11::module_& m);
void bind_dispatch(pybind11::module_& m);
void bind_plan(pybind11::module_& m);
void bind_dynamic(pybind11::module_& m);
}  // namespace magi::bindings
