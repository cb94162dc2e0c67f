// The core's two error kinds. Bad input is caught in the bindings before the core runs; the core throws
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

// Surfaces in Python as ValueError.
class InvalidInput : public std::invalid_argument {
 public:
  explicit InvalidInput(const std::string& what) : std::invalid_argument(what) {}
};

}  // namespace quantease
