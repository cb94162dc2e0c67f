// LeanQuant, the recipe: GPTQ's preparation, the loss-error importance of each column, one grid per row and
// group fitted to the weighted error, and the GPTQ column loop against those grids. See leanquant.hpp.
#include "quantease/leanquant.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "fit_grids.hpp"
#include "quantease/gptq_loop.hpp"
#include "quantease/hessian.hpp"

namespace quantease {
namespace {

// s_j = U_jj^(-p) in original column order (P's diagonal is U_jj in processing order, linalg.hpp), scaled by
// the largest (= (U_jj / min U)^(-p)): k-means and the search are invariant to the scale, and it keeps s in
// [0, 1] for any exponent.
Eigen::VectorXd column_importance(const RowMatrixXf& P, const VectorXi64& perm, double exponent) {
  const Index cols = P.rows();
  double umin = std::numeric_limits<double>::infinity();
  for (Index j = 0; j < cols; ++j) umin = std::min(umin, static_cast<double>(P(j, j)));
  Eigen::VectorXd importance(cols);
  for (Index j = 0; j < cols; ++j) importance[perm[j]] = std::pow(static_cast<double>(P(j, j)) / umin, -exponent);
  return importance;
}

}  // namespace

template <class HT>
LeanQuantOutput leanquant(const ConstRowMatrixRef<float>& W, const ConstRowMatrixRef<HT>& H,
                          const LeanQuantOptions& opt) {
  LeanQuantOutput res;
  QuantOutput& out = res.quant;
  PhaseTimer timer(out);
  const PreparedHessian prep = prepare_hessian(H, opt.act_order, opt.damp, true);
  timer.lap("factor");
  out.damp = prep.factor.damp;
  out.damp_attempts = prep.factor.attempts;

  res.importance = column_importance(prep.factor.P, prep.perm, opt.exponent);
  const GroupMap groups = GroupMap::of_original_columns(W.cols(), opt.group_size, prep.perm);
  leanquant_detail::FittedGrids grids = leanquant_detail::fit_grids(W, prep.dead, res.importance, groups, opt);
  timer.lap(opt.affine ? "grid_search" : "kmeans");

  out.codes.resize(W.rows(), W.cols());
  ColumnLoopOptions loop_opt;
  loop_opt.block_size = opt.block_size;
  auto column_loop = [&](auto& grid_set) {
    run_column_loop(
        W, prep, prep.factor.P, loop_opt, [&](Index r0, Index rows) { return GridSetQuantizer(grid_set, r0, rows); },
        out.codes);
  };
  if (opt.affine) column_loop(grids.affine);
  else column_loop(grids.codebook);
  timer.lap("column_loop");

  if (opt.act_order) out.perm = prep.perm;
  if (opt.affine) {
    write_grids(grids.affine, out);
  } else {
    write_grids(grids.codebook, out);
    res.codebook = grids.codebook.level_matrix();
  }
  timer.lap("dequantize");
  res.iters = std::move(grids.iters);
  res.grid_error = std::move(grids.error);
  res.minmax_error = std::move(grids.minmax_error);
  return res;
}

template LeanQuantOutput leanquant<float>(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<float>&,
                                          const LeanQuantOptions&);
template LeanQuantOutput leanquant<double>(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<double>&,
                                           const LeanQuantOptions&);

}  // namespace quantease
