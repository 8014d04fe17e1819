// Python bindings of the plan area (filled in by its owner).
#include "bindings/bindings.hpp"

namespace magi::bindings {
void bind_plan(pybind11::module_& m) { (void)m; }
}  // namespace magi::bindings
