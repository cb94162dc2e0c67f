// The core's error kind. Bad input is caught in the bindings (ValueError) before the core runs; the core throws
// NumericalError only when every documented fallback (e.g. the damping ladder) has failed.
#pragma once

#include <stdexcept>
#include <string>

namespace quantease {

// Surfaces in Python as quantease.NumericalError (an ArithmeticError).
class NumericalError : public std::runtime_error {
 public:
  explicit NumericalError(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace quantease
