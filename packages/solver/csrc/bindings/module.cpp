// The Python module magi_solver._core: one registration call per area, nothing else.
#include "bindings/bindings.hpp"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "magi_solver C++ core: mask geometry, dispatch and distributed attention plans.";
  m.attr("__version__") = MAGI_SOLVER_VERSION;
  magi::bindings::bind_geometry(m);
  magi::bindings::bind_dispatch(m);
  magi::bindings::bind_plan(m);
  magi::bindings::bind_dynamic(m);
}
