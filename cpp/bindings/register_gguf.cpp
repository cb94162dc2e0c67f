// Bindings of the GGUF block-format solvers (quantease.gguf and the solvers' gguf= option).
#include "checks.hpp"
#include "output.hpp"
#include "quantease/gguf.hpp"

namespace quantease::bindings {
namespace {

// The type's name and W's row length were checked by the Python layer (quantease.gguf), which names
// llama.cpp's fallback type; these checks only keep the core's preconditions.
gguf::Type checked_type(const std::string& name, Index cols) {
  gguf::Type type;
  if (!gguf::parse_type(name, type)) throw py::value_error("gguf: unknown type " + name);
  if (cols % gguf::format(type).block != 0) {
    throw py::value_error("gguf=" + name + " needs W's columns to be a multiple of its block of " +
                          std::to_string(gguf::format(type).block) + ", got " + std::to_string(cols));
  }
  return type;
}

// The result dict of output.hpp plus the blocks' stored parameters: d and dmin (rows x blocks, float32
// holding fp16 values), scales and mins (rows x blocks x sub-blocks).
py::dict gguf_output_to_dict(gguf::GgufOutput&& res, gguf::Type type) {
  const gguf::Format& f = gguf::format(type);
  const Index rows = res.out.codes.rows(), per_row = res.out.codes.cols() / f.block, subs = f.subs();
  RowMatrixXf d(rows, per_row), dmin(rows, per_row);
  py::array_t<std::int8_t> scales({rows, per_row, static_cast<Index>(subs)});
  py::array_t<std::uint8_t> mins({rows, per_row, static_cast<Index>(subs)});
  auto sc = scales.mutable_unchecked<3>();
  auto mn = mins.mutable_unchecked<3>();
  for (Index r = 0; r < rows; ++r) {
    for (Index b = 0; b < per_row; ++b) {
      const gguf::BlockParams& p = res.blocks[r * per_row + b];
      d(r, b) = p.d;
      dmin(r, b) = p.dmin;
      for (Index s = 0; s < subs; ++s) {
        sc(r, b, s) = p.sc[s];
        mn(r, b, s) = p.m[s];
      }
    }
  }
  py::dict out = output_to_dict(std::move(res.out));
  out["d"] = to_numpy(std::move(d));
  out["dmin"] = to_numpy(std::move(dmin));
  out["block_scales"] = scales;
  out["block_mins"] = mins;
  return out;
}

const float* optional_importance(const py::object& importance, Index cols, CArray<float>& holder) {
  if (importance.is_none()) return nullptr;
  holder = importance.cast<CArray<float>>();
  if (holder.ndim() != 1 || holder.shape(0) != cols) {
    throw py::value_error("imatrix must be a 1-D array of " + std::to_string(cols) +
                          " values (one per column of W), got shape " + shape_str(holder));
  }
  for (Index c = 0; c < cols; ++c) {
    const float v = holder.data()[c];
    if (!std::isfinite(v) || v < 0) throw py::value_error("imatrix must be finite and >= 0");
  }
  return holder.data();
}

}  // namespace

void register_gguf(py::module_& m) {
  m.def(
      "gguf_rtn",
      [](const CArray<float>& W, const std::string& type, const py::object& imatrix, bool refine) {
        check_weight(W);
        const gguf::Type t = checked_type(type, W.shape(1));
        CArray<float> holder;
        const float* importance = optional_importance(imatrix, W.shape(1), holder);
        if (refine && !importance) throw py::value_error("refine needs an imatrix (the weights of the error)");
        gguf::GgufOutput res;
        {
          py::gil_scoped_release release;
          res = gguf::rtn(as_matrix(W), t, importance, refine);
        }
        return gguf_output_to_dict(std::move(res), t);
      },
      py::arg("W").noconvert(), py::kw_only(), py::arg("type"), py::arg("imatrix") = py::none(),
      py::arg("refine") = false);

  m.def(
      "gguf_gptq",
      [](const CArray<float>& W, const py::array& H, const std::string& type, bool act_order, double damp,
         int block_size) {
        check_weight(W);
        const gguf::Type t = checked_type(type, W.shape(1));
        check_positive("block_size", block_size);
        check_damp(damp);
        gguf::GptqOptions opt{act_order, damp, block_size};
        gguf::GgufOutput res = with_hessian(H, W.shape(1), [&](const auto& h) {
          py::gil_scoped_release release;
          return gguf::gptq(as_matrix(W), h, t, opt);
        });
        return gguf_output_to_dict(std::move(res), t);
      },
      py::arg("W").noconvert(), py::arg("H"), py::kw_only(), py::arg("type"), py::arg("act_order"), py::arg("damp"),
      py::arg("block_size"));
}

}  // namespace quantease::bindings
