// Errors of the magi_solver core. Bad input throws magi::RangeError (bound to a Python ValueError
// subclass); nothing in the core may abort the process.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace magi {

class RangeError : public std::invalid_argument {
 public:
  explicit RangeError(const std::string& what) : std::invalid_argument(what) {}
};

// MAGI_CHECK(cond, a << b << ...): throw RangeError with the streamed message when cond is false.
#define MAGI_CHECK(cond, msg_stream)                      \
  do {                                                    \
    if (!(cond)) {                                        \
      std::ostringstream magi_check_os_;                  \
      magi_check_os_ << msg_stream;                       \
      throw ::magi::RangeError(magi_check_os_.str());     \
    }                                                     \
  } while (0)

}  // namespace magi
