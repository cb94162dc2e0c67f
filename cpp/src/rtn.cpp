// Round-to-nearest on the shared grid (see rtn.hpp).
#include "quantease/rtn.hpp"

#include "quantease/parallel.hpp"

namespace quantease {

QuantOutput rtn(const ConstRowMatrixRef<float>& W, const RtnOptions& opt) {
  const Index rows = W.rows(), cols = W.cols();
  const Index gs = opt.group_size > 0 ? opt.group_size : cols;
  const Index groups = cols / gs;
  GridOptions grid_opt;
  grid_opt.bits = opt.bits;
  grid_opt.sym = opt.sym;
  grid_opt.mse = opt.mse;
  grid_opt.fp16_scales = opt.fp16_scales;
  const float maxq = max_code(opt.bits);

  QuantOutput out;
  out.codes.resize(rows, cols);
  out.scales.resize(rows, groups);
  out.zeros.resize(rows, groups);
  out.g_idx = group_index(cols, opt.group_size, VectorXi64(), false);
  parallel_chunks(rows, 16, [&](Index r0, Index r1) {
    for (Index r = r0; r < r1; ++r) {
      const float* w = W.row(r).data();
      for (Index g = 0; g < groups; ++g) {
        const AffineGrid grid = fit_grid(w + g * gs, gs, grid_opt);
        out.scales(r, g) = grid.scale;
        out.zeros(r, g) = grid.zero;
        for (Index c = g * gs; c < (g + 1) * gs; ++c) out.codes(r, c) = quantize_code(w[c], grid, maxq);
      }
    }
  });
  dequantize_affine(out);
  return out;
}

}  // namespace quantease
