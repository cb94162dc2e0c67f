// Binding of EasyQuant: validates every argument (ValueError), releases the GIL, calls the core.
#include <cmath>
#include <sstream>
#include <string>

#include "checks.hpp"
#include "output.hpp"
#include "quantease/easyquant.hpp"

namespace quantease::bindings {

void register_easyquant(py::module_& m) {
  m.def(
      "easyquant",
      [](const CArray<float>& W, int bits, int group_size, bool sym, double outlier_sigma,
         const std::string& outlier_stats, int steps, double lr, int search_points, const std::string& evaluation) {
        check_weight(W);
        check_bits(bits);
        check_group_size(group_size, W.shape(1));
        if (!(outlier_sigma > 0.0)) {
          std::ostringstream msg;
          msg << "outlier_sigma must be a number > 0 (inf: no outliers), got " << outlier_sigma;
          throw py::value_error(msg.str());
        }
        if (outlier_stats != "tensor" && outlier_stats != "row") {
          throw py::value_error("outlier_stats must be one of 'tensor', 'row', got '" + outlier_stats + "'");
        }
        if (steps < 0) throw py::value_error("steps must be an integer >= 0, got " + std::to_string(steps));
        if (!std::isfinite(lr) || lr <= 0.0) {
          std::ostringstream msg;
          msg << "lr must be a finite number > 0, got " << lr;
          throw py::value_error(msg.str());
        }
        if (search_points < 2) {
          throw py::value_error("search_points must be an integer >= 2, got " + std::to_string(search_points));
        }
        if (evaluation != "auto" && evaluation != "sorted" && evaluation != "direct") {
          throw py::value_error("evaluation must be one of 'auto', 'sorted', 'direct', got '" + evaluation + "'");
        }
        EasyQuantOptions opt;
        opt.bits = bits;
        opt.group_size = group_size;
        opt.sym = sym;
        opt.outlier_sigma = outlier_sigma;
        opt.row_stats = outlier_stats == "row";
        opt.steps = steps;
        opt.lr = lr;
        opt.search_points = search_points;
        opt.evaluation = evaluation == "sorted"   ? EasyQuantOptions::Evaluation::sorted
                         : evaluation == "direct" ? EasyQuantOptions::Evaluation::direct
                                                  : EasyQuantOptions::Evaluation::automatic;
        EasyQuantOutput res;
        {
          py::gil_scoped_release release;
          res = easyquant(as_matrix(W), opt);
        }
        py::dict d = output_to_dict(std::move(res.quant));
        d["outlier_indptr"] = to_numpy(std::move(res.outlier_indptr));
        d["outlier_indices"] = to_numpy(std::move(res.outlier_indices));
        d["outlier_values"] = to_numpy(std::move(res.outlier_values));
        d["start_scales"] = to_numpy(std::move(res.start_scales));
        d["adam_scales"] = to_numpy(std::move(res.adam_scales));
        d["source"] = to_numpy(std::move(res.source));
        d["outlier_mean"] = to_numpy(std::move(res.mean));
        d["outlier_std"] = to_numpy(std::move(res.stddev));
        return d;
      },
      py::arg("W").noconvert(), py::kw_only(), py::arg("bits"), py::arg("group_size"), py::arg("sym"),
      py::arg("outlier_sigma"), py::arg("outlier_stats"), py::arg("steps"), py::arg("lr"),
      py::arg("search_points") = 32, py::arg("evaluation") = "auto",
      "EasyQuant (data-free): outliers by |W - mean| >= sigma std, per-channel range by Adam + a safety-net "
      "search. Returns a dict of NumPy arrays (the Python layer builds the QuantResult).");
}

}  // namespace quantease::bindings
