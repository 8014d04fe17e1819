// Exceptions must not leave an OpenMP region (that would terminate the process): each loop body
// runs through OmpGuard::run, which keeps the first exception, and rethrow() raises it afterwards.
#pragma once

#include <exception>
#include <mutex>

namespace magi {

class OmpGuard {
 public:
  template <typename F>
  void run(F&& f) {
    try {
      f();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!err_) err_ = std::current_exception();
    }
  }
  void rethrow() const {
    if (err_) std::rethrow_exception(err_);
  }

 private:
  std::mutex mu_;
  std::exception_ptr err_;
};

}  // namespace magi
