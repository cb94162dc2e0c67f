// Binding of LeanQuant: validates every argument (ValueError), releases the GIL, calls the core. Also the
// two 1-D grid fitters alone (weighted k-means, weighted affine search), for the tests and benchmarks.
#include <cmath>
#include <sstream>
#include <string>

#include "checks.hpp"
#include "output.hpp"
#include "quantease/leanquant.hpp"
#include "quantease/leanquant/affine_search.hpp"
#include "quantease/leanquant/kmeans.hpp"
#include "quantease/parallel.hpp"

namespace quantease::bindings {
namespace {

void check_exponent(double exponent) {
  if (!std::isfinite(exponent) || exponent < 0.0) {
    std::ostringstream msg;
    msg << "exponent must be a finite number >= 0, got " << exponent;
    throw py::value_error(msg.str());
  }
}

// values: rows x n float32 (finite); s: n float64 weights (finite, >= 0).
void check_values_weights(const CArray<float>& X, const CArray<double>& s) {
  check_weight(X, "values");
  if (s.ndim() != 1 || s.shape(0) != X.shape(1)) {
    throw py::value_error("weights must be (" + std::to_string(X.shape(1)) + ",) to match values' " +
                          std::to_string(X.shape(1)) + " columns, got " + shape_str(s));
  }
  for (py::ssize_t i = 0; i < s.shape(0); ++i)
    if (!std::isfinite(s.data()[i]) || s.data()[i] < 0.0) throw py::value_error("weights must be finite and >= 0");
}

}  // namespace

void register_leanquant(py::module_& m) {
  m.def(
      "leanquant",
      [](const CArray<float>& W, const py::array& H, int bits, const std::string& grid, double exponent, double damp,
         bool act_order, int group_size, int block_size, std::uint64_t seed, int kmeans_iters, int grid_steps) {
        check_weight(W);
        check_bits(bits);
        if (grid != "nonuniform" && grid != "affine") {
          throw py::value_error("grid must be one of 'nonuniform', 'affine', got '" + grid + "'");
        }
        check_exponent(exponent);
        check_damp(damp);
        check_group_size(group_size, W.shape(1));
        check_positive("block_size", block_size);
        check_positive("kmeans_iters", kmeans_iters);
        check_positive("grid_steps", grid_steps);
        LeanQuantOptions opt;
        opt.bits = bits;
        opt.affine = grid == "affine";
        opt.exponent = exponent;
        opt.damp = damp;
        opt.act_order = act_order;
        opt.group_size = group_size;
        opt.block_size = block_size;
        opt.seed = seed;
        opt.kmeans_iters = kmeans_iters;
        opt.grid_steps = grid_steps;
        LeanQuantOutput res = with_hessian(H, W.shape(1), [&](const auto& h) {
          py::gil_scoped_release release;
          return leanquant(as_matrix(W), h, opt);
        });
        py::dict d = output_to_dict(std::move(res.quant));
        if (res.codebook.size() > 0) {
          d["codebook"] = to_numpy(std::move(res.codebook));
          d["kmeans_iters"] = to_numpy(std::move(res.iters));
        } else {
          d["codebook"] = py::none();
          d["kmeans_iters"] = py::none();
        }
        d["importance"] = to_numpy(std::move(res.importance));
        d["grid_error"] = to_numpy(std::move(res.grid_error));
        if (res.minmax_error.size() > 0) d["minmax_error"] = to_numpy(std::move(res.minmax_error));
        else d["minmax_error"] = py::none();
        return d;
      },
      py::arg("W").noconvert(), py::arg("H"), py::kw_only(), py::arg("bits"), py::arg("grid"), py::arg("exponent"),
      py::arg("damp"), py::arg("act_order"), py::arg("group_size"), py::arg("block_size"), py::arg("seed"),
      py::arg("kmeans_iters"), py::arg("grid_steps"),
      "LeanQuant: GPTQ against per-row grids fitted to the loss-error-weighted error. Returns a dict of NumPy "
      "arrays (the Python layer builds the QuantResult).");

  m.def(
      "weighted_kmeans",
      [](const CArray<float>& X, const CArray<double>& s, int k, int max_iter, double tol, std::uint64_t seed) {
        check_values_weights(X, s);
        if (k < 2 || k > 256) throw py::value_error("k must be an integer in 2..256, got " + std::to_string(k));
        check_positive("max_iter", max_iter);
        RowMatrixXd C(X.shape(0), k);
        VectorXi32 iters(X.shape(0));
        {
          py::gil_scoped_release release;
          const auto x = as_matrix(X);
          parallel_chunks(x.rows(), 16, [&](Index r0, Index r1) {
            SortedRow d;
            for (Index r = r0; r < r1; ++r) {
              d.assign(x.row(r).data(), s.data(), x.cols());
              SplitMix64 rng(seed, static_cast<std::uint64_t>(r));
              iters[r] = weighted_kmeans(d, k, max_iter, tol, rng, C.row(r).data());
            }
          });
        }
        return py::make_tuple(to_numpy(std::move(C)), to_numpy(std::move(iters)));
      },
      py::arg("values").noconvert(), py::arg("weights").noconvert(), py::kw_only(), py::arg("k"),
      py::arg("max_iter") = 100, py::arg("tol") = 1e-6, py::arg("seed") = 0,
      "Weighted 1-D k-means of every row of values (rows x n float32) with weights (n float64): "
      "(centroids rows x k float64 ascending, iterations rows int32). Row r draws k-means++ from stream r.");

  m.def(
      "weighted_grid_search",
      [](const CArray<float>& X, const CArray<double>& s, int bits, int steps) {
        check_values_weights(X, s);
        check_bits(bits);
        check_positive("steps", steps);
        const Index rows = X.shape(0);
        Eigen::VectorXd scale(rows), error(rows);
        VectorXi32 zero(rows);
        {
          py::gil_scoped_release release;
          const auto x = as_matrix(X);
          parallel_chunks(rows, 16, [&](Index r0, Index r1) {
            SortedRow d;
            for (Index r = r0; r < r1; ++r) {
              d.assign(x.row(r).data(), s.data(), x.cols());
              const GridSearchResult g = weighted_grid_search(d, bits, steps);
              scale[r] = g.found ? g.scale : std::nan("");
              zero[r] = g.zero;
              error[r] = g.found ? g.error : std::nan("");
            }
          });
        }
        py::dict d;
        d["scale"] = to_numpy(std::move(scale));
        d["zero"] = to_numpy(std::move(zero));
        d["error"] = to_numpy(std::move(error));
        return d;
      },
      py::arg("values").noconvert(), py::arg("weights").noconvert(), py::kw_only(), py::arg("bits"), py::arg("steps"),
      "The least weighted-error affine grid of every row among the (min + i d, max - j d) ranges, i + j < steps: "
      "dict(scale float64, zero int32, error float64) per row (NaN for a constant row).");
}

}  // namespace quantease::bindings
