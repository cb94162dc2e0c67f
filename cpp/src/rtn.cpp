// Round-to-nearest on the shared grid (see rtn.hpp).
#include "quantease/rtn.hpp"

#include "quantease/parallel.hpp"

namespace quantease {

QuantOutput rtn(const ConstRowMatrixRef<float>& W, const RtnOptions& opt) {
  const Index rows = W.rows(), cols = W.cols();
  GridOptions grid_opt;
  grid_opt.bits = opt.bits;
  grid_opt.sym = opt.sym;
  grid_opt.mse = opt.mse;
  grid_opt.fp16_scales = opt.fp16_scales;
  AffineGrids grids(rows, GroupMap::of_original_columns(cols, opt.group_size, VectorXi64()), opt.bits);
  const Index gs = grids.groups().size();

  QuantOutput out;
  PhaseTimer timer(out);
  out.codes.resize(rows, cols);
  parallel_chunks(rows, 16, [&](Index r0, Index r1) {
    for (Index r = r0; r < r1; ++r) {
      const float* w = W.row(r).data();
      for (Index g = 0; g < grids.groups().count(); ++g) {
        grids.set(r, g, fit_grid(w + g * gs, gs, grid_opt));
        const AffineRowGrid grid = grids.row(r, g);
        for (Index c = g * gs; c < (g + 1) * gs; ++c) out.codes(r, c) = grid.quantize(w[c]);
      }
    }
  });
  timer.lap("grid_and_codes");
  write_grids(grids, out);
  timer.lap("dequantize");
  return out;
}

}  // namespace quantease
