// The quantease._core extension: one registration function per API area.
#include <pybind11/pybind11.h>

#include "checks.hpp"
#include "quantease/errors.hpp"
#include "quantease/gemm.hpp"

namespace py = pybind11;

namespace quantease::bindings {
void register_core(py::module_& m);
void register_easyquant(py::module_& m);
void register_quantease(py::module_& m);
void register_leanquant(py::module_& m);
void register_gguf(py::module_& m);
}  // namespace quantease::bindings

PYBIND11_MODULE(_core, m) {
  m.doc() = "quantease C++ core (Eigen + OpenMP); use the `quantease` package, not this module.";
  m.attr("__version__") = QUANTEASE_VERSION;
  m.attr("gemm_backend") = quantease::gemm_backend();  // what the matrix products run on
  m.attr("MIN_BITS") = quantease::bindings::kMinBits;
  m.attr("MAX_BITS") = quantease::bindings::kMaxBits;
  static py::exception<quantease::NumericalError> numerical_error(m, "NumericalError", PyExc_ArithmeticError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const quantease::NumericalError& e) {
      py::set_error(numerical_error, e.what());
    }
  });
  quantease::bindings::register_core(m);
  quantease::bindings::register_easyquant(m);
  quantease::bindings::register_quantease(m);
  quantease::bindings::register_leanquant(m);
  quantease::bindings::register_gguf(m);
}
