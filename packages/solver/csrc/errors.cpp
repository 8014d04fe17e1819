// Anchors the core library so it always has at least one translation unit.
#include "errors.hpp"

namespace magi {
const char* solver_core_name() { return "magi_solver_core"; }
}  // namespace magi
