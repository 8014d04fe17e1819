// Python bindings of the dispatch area (filled in by its owner).
#include "bindings/bindings.hpp"

namespace magi::bindings {
void bind_dispatch(pybind11::module_& m) { (void)m; }
}  // namespace magi::bindings
