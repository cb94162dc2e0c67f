// LeanQuant, the recipe: GPTQ's preparation, the loss-error importance of each column, one grid per row and
// group fitted to the weighted error, and the GPTQ column loop against those grids. See leanquant.hpp.
#include "quantease/leanquant.hpp"

#include <cmath>
#include <limits>

#include "fit_grids.hpp"
#include "quantease/gptq_loop.hpp"
#include "quantease/hessian.hpp"
#include "quantease/parallel.hpp"
#include "quantizers.hpp"

namespace quantease {
namespace {

constexpr Index kDequantizeChunk = 16;  // rows per task of the codebook dequantization

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
  using leanquant_detail::CodebookQuantizer;
  using leanquant_detail::StaticAffineQuantizer;
  const Index rows = W.rows(), cols = W.cols();
  const Index gs = opt.group_size > 0 ? opt.group_size : -1;
  const Index groups = gs > 0 ? cols / gs : 1;

  LeanQuantOutput res;
  QuantOutput& out = res.quant;
  PhaseTimer timer(out);
  const PreparedHessian prep = prepare_hessian(H, opt.act_order, opt.damp, true);
  timer.lap("factor");
  out.damp = prep.factor.damp;
  out.damp_attempts = prep.factor.attempts;
  const VectorXi64& perm = prep.perm;
  const RowMatrixXf& P = prep.factor.P;

  res.importance = column_importance(P, perm, opt.exponent);
  leanquant_detail::FittedGrids grids = leanquant_detail::fit_grids(W, prep.dead, res.importance, opt);
  timer.lap(opt.affine ? "grid_search" : "kmeans");

  out.codes.resize(rows, cols);
  ColumnLoopOptions loop_opt;
  loop_opt.block_size = opt.block_size;
  if (opt.affine) {
    const float maxq = max_code(opt.bits);
    run_column_loop(W, perm, opt.act_order, prep.dead, P, loop_opt,
                    [&](Index r0, Index pr) { return StaticAffineQuantizer(grids.affine, maxq, r0, pr, groups, gs, perm); },
                    out.codes);
  } else {
    run_column_loop(
        W, perm, opt.act_order, prep.dead, P, loop_opt,
        [&](Index r0, Index pr) { return CodebookQuantizer(grids.codebook, grids.mids, r0, pr, groups, gs, perm); },
        out.codes);
  }
  timer.lap("column_loop");

  if (opt.act_order) out.perm = perm;
  out.g_idx = group_index(cols, gs, perm, false);
  if (opt.affine) {
    out.scales.resize(rows, groups);
    out.zeros.resize(rows, groups);
    for (Index r = 0; r < rows; ++r)
      for (Index g = 0; g < groups; ++g) {
        out.scales(r, g) = grids.affine[r * groups + g].scale;
        out.zeros(r, g) = grids.affine[r * groups + g].zero;
      }
    dequantize_affine(out);
  } else {
    // weight = codebook[codes]
    out.weight.resize(rows, cols);
    parallel_chunks(rows, kDequantizeChunk, [&](Index r0, Index r1) {
      for (Index r = r0; r < r1; ++r)
        for (Index c = 0; c < cols; ++c) out.weight(r, c) = grids.codebook(r * groups + out.g_idx[c], out.codes(r, c));
    });
  }
  timer.lap("dequantize");
  res.codebook = std::move(grids.codebook);
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
