// GPTQ: the affine grid set (per row, static or dynamic groups) around the shared column loop.
#include "quantease/gptq.hpp"

#include "quantease/gptq_loop.hpp"
#include "quantease/grid_set.hpp"
#include "quantease/hessian.hpp"
#include "quantease/parallel.hpp"

namespace quantease {
template <class HT>
QuantOutput gptq(const ConstRowMatrixRef<float>& W, const ConstRowMatrixRef<HT>& H, const GptqOptions& opt) {
  const Index rows = W.rows(), cols = W.cols();
  const Index gs = opt.group_size > 0 ? opt.group_size : -1;
  const bool dynamic_groups = gs > 0 && !opt.static_groups;
  GridOptions grid_opt;
  grid_opt.bits = opt.bits;
  grid_opt.sym = opt.sym;
  grid_opt.mse = opt.mse;
  grid_opt.reference = opt.reference;
  grid_opt.fp16_scales = opt.fp16_scales;

  QuantOutput out;
  PhaseTimer timer(out);
  const PreparedHessian prep = prepare_hessian(H, opt.act_order, opt.damp, !opt.reference);
  timer.lap("factor");

  out.damp = prep.factor.damp;
  out.damp_attempts = prep.factor.attempts;
  out.codes.resize(rows, cols);

  // Dynamic groups follow the processing order; static ones are W's own column ranges.
  const GroupMap groups = dynamic_groups ? GroupMap::in_processing_order(cols, gs, prep.perm)
                                         : GroupMap::of_original_columns(cols, gs, prep.perm);
  AffineGrids grids(rows, groups, opt.bits);
  if (gs <= 0) {
    // Per-row grids come from the original W, before dead columns are zeroed (as the reference does).
    parallel_chunks(rows, 16, [&](Index r0, Index r1) {
      for (Index r = r0; r < r1; ++r) grids.set(r, 0, fit_grid(W.row(r).data(), cols, grid_opt));
    });
  } else if (opt.static_groups) {
    // Static group grids: from the dead-zeroed, unpermuted W, fixed before the loop.
    parallel_chunks(rows, 16, [&](Index r0, Index r1) {
      std::vector<float> values(gs);
      for (Index r = r0; r < r1; ++r) {
        for (Index g = 0; g < groups.count(); ++g) {
          for (Index c = 0; c < gs; ++c) values[c] = prep.dead[g * gs + c] ? 0.0f : W(r, g * gs + c);
          grids.set(r, g, fit_grid(values.data(), gs, grid_opt));
        }
      }
    });
  }

  timer.lap("grids");
  ColumnLoopOptions loop_opt;
  loop_opt.block_size = opt.block_size;
  loop_opt.group_size = dynamic_groups ? gs : -1;
  loop_opt.stale_group_stats = opt.reference;
  RowMatrixXf group_inverse;
  if (dynamic_groups && !opt.reference) {
    group_inverse = group_substitution_inverses(prep.factor.P, gs);
    loop_opt.group_inverse = &group_inverse;
  }
  // dynamic groups: each group's grid from its values when the loop reaches it
  const auto choose = [&grid_opt](AffineGrids& set, Index r, Index g, const float* values, Index n) {
    set.set(r, g, fit_grid(values, n, grid_opt));
  };
  run_column_loop(
      W, prep, prep.factor.P, loop_opt, [&](Index r0, Index pr) { return GridSetQuantizer(grids, r0, pr, choose); },
      out.codes);

  timer.lap("column_loop");
  if (opt.act_order) out.perm = prep.perm;
  write_grids(grids, out);
  timer.lap("dequantize");
  return out;
}

template QuantOutput gptq<float>(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<float>&, const GptqOptions&);
template QuantOutput gptq<double>(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<double>&,
                                  const GptqOptions&);

}  // namespace quantease
