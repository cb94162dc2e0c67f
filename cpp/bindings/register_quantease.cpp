// Binding of QuantEase: validates every argument (ValueError), releases the GIL, calls the core.
#include <pybind11/stl.h>

#include <cmath>
#include <sstream>
#include <string>

#include "checks.hpp"
#include "output.hpp"
#include "quantease/quantease.hpp"

namespace quantease::bindings {

namespace {

// The codebook grids of quantease(): None, or float32 (rows, 2^bits) without groups / (rows, groups, 2^bits)
// with, finite, ascending along the last axis; returned as (rows * groups) x 2^bits.
RowMatrixXf codebook_levels(const py::object& codebook, Index rows, Index cols, int bits, int group_size) {
  RowMatrixXf levels;
  if (codebook.is_none()) return levels;
  if (!py::isinstance<CArray<float>>(codebook)) {
    throw py::value_error("codebook must be a C-contiguous float32 array (the Python layer converts)");
  }
  const auto cb = codebook.cast<CArray<float>>();
  const Index k = Index{1} << bits;
  const Index groups = group_size > 0 ? cols / group_size : 1;
  std::ostringstream want;
  if (group_size > 0) want << "(" << rows << ", " << groups << ", " << k << ") (rows x groups x 2^bits)";
  else want << "(" << rows << ", " << k << ") (rows x 2^bits)";
  const py::ssize_t nd = group_size > 0 ? 3 : 2;
  const bool lead_ok = cb.ndim() == nd && cb.shape(0) == rows && (nd == 2 || cb.shape(1) == groups);
  if (!lead_ok) {
    throw py::value_error("codebook must be " + want.str() + " for W of shape (" + std::to_string(rows) + ", " +
                          std::to_string(cols) + ") and group_size=" + std::to_string(group_size) + ", got " +
                          shape_str(cb));
  }
  if (cb.shape(nd - 1) != k) {
    std::ostringstream msg;
    msg << "codebook must have 2^bits = " << k << " levels per row" << (group_size > 0 ? " and group" : "")
        << " for bits=" << bits << ", got " << cb.shape(nd - 1);
    throw py::value_error(msg.str());
  }
  levels.resize(rows * groups, k);
  const float* p = cb.data();
  for (Index i = 0; i < rows * groups; ++i)
    for (Index t = 0; t < k; ++t) {
      const float v = p[i * k + t];
      if (!std::isfinite(v)) {
        std::ostringstream msg;
        msg << "codebook contains NaN or Inf (first at row " << i / groups;
        if (group_size > 0) msg << ", group " << i % groups;
        msg << ", level " << t << ")";
        throw py::value_error(msg.str());
      }
      if (t > 0 && v < levels(i, t - 1)) {
        std::ostringstream msg;
        msg << "codebook must be ascending along its last axis (not at row " << i / groups;
        if (group_size > 0) msg << ", group " << i % groups;
        msg << ", level " << t << ")";
        throw py::value_error(msg.str());
      }
      levels(i, t) = v;
    }
  return levels;
}

// start_codes of quantease(): uint8 rows x cols, each below 2^bits.
RowMatrixU8 codes_matrix(const py::object& codes, Index rows, Index cols, int bits) {
  if (!py::isinstance<CArray<std::uint8_t>>(codes)) {
    throw py::value_error("start_codes must be a C-contiguous uint8 array (the Python layer converts)");
  }
  const auto c = codes.cast<CArray<std::uint8_t>>();
  if (c.ndim() != 2 || c.shape(0) != rows || c.shape(1) != cols) {
    throw py::value_error("start_codes must have W's shape (" + std::to_string(rows) + ", " + std::to_string(cols) +
                          "), got " + shape_str(c));
  }
  RowMatrixU8 out = as_matrix(c);
  if (out.size() > 0 && out.maxCoeff() >= (1 << bits)) {
    throw py::value_error("start_codes must be below 2^bits = " + std::to_string(1 << bits) + ", found " +
                          std::to_string(static_cast<int>(out.maxCoeff())));
  }
  return out;
}

}  // namespace

void register_quantease(py::module_& m) {
  m.def(
      "quantease",
      [](const CArray<float>& W, const py::array& H, int bits, int group_size, bool sym, bool act_order, int iters,
         const std::string& init, bool relaxed, double tol, double outliers, const std::string& outlier_structure,
         double outlier_step, int block_size, bool polish, int refresh_every, bool mse, int refit,
         const py::object& codebook, const py::object& start_codes) {
        check_weight(W);
        check_bits(bits);
        check_group_size(group_size, W.shape(1));
        check_positive("iters", iters);
        check_positive("block_size", block_size);
        if (init != "w" && init != "rtn" && init != "gptq" && init != "leanquant") {
          throw py::value_error("init must be one of 'w', 'rtn', 'gptq', 'leanquant', got '" + init + "'");
        }
        if (!std::isfinite(tol) || tol < 0.0) {
          std::ostringstream msg;
          msg << "tol must be a finite number >= 0, got " << tol;
          throw py::value_error(msg.str());
        }
        if (!(outliers >= 0.0 && outliers < 1.0)) {
          std::ostringstream msg;
          msg << "outliers must be a fraction in [0, 1), got " << outliers;
          throw py::value_error(msg.str());
        }
        if (outlier_structure != "unstructured" && outlier_structure != "structured") {
          throw py::value_error("outlier_structure must be one of 'unstructured', 'structured', got '" +
                                outlier_structure + "'");
        }
        if (!std::isfinite(outlier_step) || outlier_step <= 0.0) {
          std::ostringstream msg;
          msg << "outlier_step must be a finite number > 0, got " << outlier_step;
          throw py::value_error(msg.str());
        }
        if (init == "gptq" && outliers > 0.0) {
          throw py::value_error("init='gptq' cannot be combined with outliers > 0 (GPTQ's grid ignores the outliers)");
        }
        if (refit < 0) {
          throw py::value_error("refit must be an integer >= 0, got " + std::to_string(refit));
        }
        if (refresh_every < 0) {
          throw py::value_error("refresh_every must be an integer >= 0, got " + std::to_string(refresh_every));
        }
        // codebook grids: given, or LeanQuant's (init = leanquant); the affine-only options are errors
        if (!codebook.is_none() || init == "leanquant") {
          const std::string src = codebook.is_none() ? "init='leanquant'" : "a codebook";
          if (!codebook.is_none() && (init == "gptq" || init == "leanquant")) {
            throw py::value_error("init='" + init +
                                  "' cannot be combined with a codebook (init='gptq' uses GPTQ's "
                                  "affine grid, init='leanquant' LeanQuant's own codebooks)");
          }
          auto refuse = [&](const std::string& what, const char* why) {
            throw py::value_error(what + " cannot be combined with " + src + " (" + why + ")");
          };
          if (sym) refuse("sym=True", "codebooks are not symmetric affine grids");
          if (mse) refuse("mse=True", "the MSE range search fits affine grids");
          if (outliers > 0.0) refuse("outliers > 0", "the outlier variant's grids are affine");
        }
        QuantEaseOptions opt;
        opt.bits = bits;
        opt.group_size = group_size;
        opt.sym = sym;
        opt.act_order = act_order;
        opt.iters = iters;
        opt.init = init == "rtn"         ? QuantEaseInit::rtn
                   : init == "gptq"      ? QuantEaseInit::gptq
                   : init == "leanquant" ? QuantEaseInit::leanquant
                                         : QuantEaseInit::w;
        opt.relaxed = relaxed;
        opt.tol = tol;
        opt.outlier_fraction = outliers;
        opt.outlier_structure =
            outlier_structure == "structured" ? OutlierStructure::structured : OutlierStructure::unstructured;
        opt.outlier_step = outlier_step;
        opt.block_size = block_size;
        opt.polish = polish;
        opt.refresh_every = refresh_every;
        opt.mse = mse;
        opt.refit = refit;
        opt.codebook = codebook_levels(codebook, W.shape(0), W.shape(1), bits, group_size);
        if (!start_codes.is_none()) {
          if (codebook.is_none() || init != "w") {
            throw py::value_error("start_codes needs a codebook and init='w' (they index the codebook's levels)");
          }
          opt.start_codes = codes_matrix(start_codes, W.shape(0), W.shape(1), bits);
        }
        QuantEaseOutput res = with_hessian(H, W.shape(1), [&](const auto& h) {
          py::gil_scoped_release release;
          return quantease(as_matrix(W), h, opt);
        });
        py::dict d = output_to_dict(std::move(res.quant));
        d["loss_history"] = py::cast(res.loss_history);
        py::list quantized, polished;
        for (char q : res.quantized) quantized.append(py::bool_(q != 0));
        for (char q : res.polish) polished.append(py::bool_(q != 0));
        d["quantized"] = quantized;
        d["polish"] = polished;
        d["changes"] = py::cast(res.changes);
        d["moves"] = py::cast(res.moves);
        d["sweep_times"] = py::cast(res.sweep_times);
        d["sweeps"] = res.sweeps;
        d["converged"] = res.converged;
        d["stopped_by_tol"] = res.stopped_by_tol;
        d["best_sweep"] = res.best_sweep;
        d["kept_init"] = res.kept_init;
        if (res.codebook.size() > 0) d["codebook"] = to_numpy(std::move(res.codebook));
        else d["codebook"] = py::none();
        d["base"] = res.base;
        d["refreshes"] = res.refreshes;
        d["refits"] = res.refits;
        d["refit_gains"] = py::cast(res.refit_gains);
        d["lambda_max"] = res.lambda_max;
        d["eta"] = res.eta;
        d["outlier_count"] = res.outlier_count;
        d["sweep_seconds"] = res.sweep_seconds;
        d["gemm_cpu_seconds"] = res.gemm_seconds;
        d["column_cpu_seconds"] = res.column_seconds;
        d["iht_seconds"] = res.iht_seconds;
        if (outliers > 0.0) {
          d["outlier_indptr"] = to_numpy(std::move(res.outlier_indptr));
          d["outlier_indices"] = to_numpy(std::move(res.outlier_indices));
          d["outlier_values"] = to_numpy(std::move(res.outlier_values));
        }
        return d;
      },
      py::arg("W").noconvert(), py::arg("H"), py::kw_only(), py::arg("bits"), py::arg("group_size"), py::arg("sym"),
      py::arg("act_order"), py::arg("iters"), py::arg("init"), py::arg("relaxed"), py::arg("tol"), py::arg("outliers"),
      py::arg("outlier_structure"), py::arg("outlier_step"), py::arg("block_size"), py::arg("polish") = true,
      py::arg("refresh_every") = 0, py::arg("mse") = false, py::arg("refit") = 0, py::arg("codebook") = py::none(),
      py::arg("start_codes") = py::none(),
      "QuantEase coordinate descent (optionally outlier-aware; affine or codebook grids). Returns a dict of "
      "NumPy arrays and run statistics (the Python layer builds the QuantResult).");
}

}  // namespace quantease::bindings
