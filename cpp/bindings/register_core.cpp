// Bindings of the foundation: RTN, GPTQ, the layer loss and the Hessian accumulator.
#include "checks.hpp"
#include "output.hpp"
#include "quantease/gptq.hpp"
#include "quantease/hessian.hpp"
#include "quantease/rtn.hpp"

namespace quantease::bindings {
namespace {
// The accumulator's Hessian (hessian=true) or sum, in the precision it keeps, copied or handed over.
template <class T>
py::object finished_matrix(HessianAccumulator& self, bool release, bool hessian) {
  RowMatrix<T> m;
  {
    py::gil_scoped_release unlocked;
    if (hessian) m = release ? self.release_hessian<T>() : self.hessian<T>();
    else m = release ? self.release_sum<T>() : self.sum<T>();
  }
  return to_numpy(std::move(m));
}
}  // namespace

void register_core(py::module_& m) {
  m.def(
      "rtn",
      [](const CArray<float>& W, int bits, int group_size, bool sym, bool mse, bool fp16_scales) {
        check_weight(W);
        check_bits(bits);
        check_group_size(group_size, W.shape(1));
        RtnOptions opt{bits, group_size, sym, mse, fp16_scales};
        QuantOutput out;
        {
          py::gil_scoped_release release;
          out = rtn(as_matrix(W), opt);
        }
        return output_to_dict(std::move(out));
      },
      py::arg("W").noconvert(), py::kw_only(), py::arg("bits"), py::arg("group_size"), py::arg("sym"), py::arg("mse"),
      py::arg("fp16_scales"));

  m.def(
      "gptq",
      [](const CArray<float>& W, const py::array& H, int bits, int group_size, bool sym, bool act_order,
         bool static_groups, double damp, int block_size, bool mse, bool reference, bool fp16_scales) {
        check_weight(W);
        check_bits(bits);
        check_group_size(group_size, W.shape(1));
        check_positive("block_size", block_size);
        check_damp(damp);
        GptqOptions opt{bits, group_size, sym, act_order, static_groups, damp, block_size, mse, reference, fp16_scales};
        QuantOutput out = with_hessian(H, W.shape(1), [&](const auto& h) {
          py::gil_scoped_release release;
          return gptq(as_matrix(W), h, opt);
        });
        return output_to_dict(std::move(out));
      },
      py::arg("W").noconvert(), py::arg("H"), py::kw_only(), py::arg("bits"), py::arg("group_size"), py::arg("sym"),
      py::arg("act_order"), py::arg("static_groups"), py::arg("damp"), py::arg("block_size"), py::arg("mse"),
      py::arg("reference"), py::arg("fp16_scales"));

  m.def(
      "quadratic_form_sum",
      [](const CArray<double>& D, const py::array& H) {
        check_weight(D, "W - W_hat");
        return with_hessian(
            H, D.shape(1),
            [&](const auto& h) {
              py::gil_scoped_release release;
              return quadratic_form_sum(as_matrix(D), h);
            },
            HessianUse::evaluate);
      },
      py::arg("D").noconvert(), py::arg("H"),
      "sum over rows of d^T H d in float64 (D = W - W_hat, rows x cols; H cols x cols).");

  py::class_<HessianAccumulator>(m, "HessianAccumulator")
      .def(py::init([](Index cols, bool float64) {
             check_positive("cols", static_cast<long>(cols));
             return HessianAccumulator(cols, float64);
           }),
           py::arg("cols"), py::arg("float64") = true)
      .def(
          "add",
          [](HessianAccumulator& self, const py::array& X) {
            auto add_checked = [&](const auto& x) {
              check_weight(x, "X");
              if (x.shape(1) != self.cols()) {
                throw py::value_error("X must be (n, " + std::to_string(self.cols()) + ") to match the accumulator's " +
                                      std::to_string(self.cols()) + " columns, got " + shape_str(x));
              }
              py::gil_scoped_release release;
              self.add(as_matrix(x));
            };
            if (py::isinstance<CArray<double>>(X)) add_checked(X.cast<CArray<double>>());
            else if (py::isinstance<CArray<float>>(X)) add_checked(X.cast<CArray<float>>());
            else throw py::value_error("X must be a C-contiguous float32 or float64 array");
          },
          py::arg("X").noconvert())
      .def(
          "add_sum",
          [](HessianAccumulator& self, const py::array& S, std::int64_t n_samples) {
            const std::string want = self.is_float64() ? "float64" : "float32";
            const auto add_checked = [&](const auto& s) {
              if (s.ndim() != 2 || s.shape(0) != self.cols() || s.shape(1) != self.cols()) {
                throw py::value_error("S must be (" + std::to_string(self.cols()) + ", " + std::to_string(self.cols()) +
                                      ") to match the accumulator's columns, got " + shape_str(s));
              }
              py::gil_scoped_release release;
              self.add_sum(as_matrix(s), n_samples);
            };
            if (n_samples < 0) throw py::value_error("n_samples must be >= 0, got " + std::to_string(n_samples));
            if (self.is_float64() && py::isinstance<CArray<double>>(S)) add_checked(S.cast<CArray<double>>());
            else if (!self.is_float64() && py::isinstance<CArray<float>>(S)) add_checked(S.cast<CArray<float>>());
            else throw py::value_error("S must be a C-contiguous " + want + " array (the accumulator's dtype)");
          },
          py::arg("S").noconvert(), py::arg("n_samples"))
      .def(
          "hessian",
          [](HessianAccumulator& self, bool release) -> py::object {
            if (self.is_float64()) return finished_matrix<double>(self, release, true);
            return finished_matrix<float>(self, release, true);
          },
          py::arg("release") = false)
      .def(
          "sum",
          [](HessianAccumulator& self, bool release) -> py::object {
            if (self.is_float64()) return finished_matrix<double>(self, release, false);
            return finished_matrix<float>(self, release, false);
          },
          py::arg("release") = false)
      .def("reset", &HessianAccumulator::reset)
      .def_property_readonly("cols", &HessianAccumulator::cols)
      .def_property_readonly("n_samples", &HessianAccumulator::samples)
      .def_property_readonly("float64", &HessianAccumulator::is_float64);
}

}  // namespace quantease::bindings
