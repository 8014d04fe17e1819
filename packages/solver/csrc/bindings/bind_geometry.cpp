// Python bindings of the geometry area (filled in by its owner).
#include "bindings/bindings.hpp"

namespace magi::bindings {
void bind_geometry(pybind11::module_& m) { (void)m; }
}  // namespace magi::bindings
