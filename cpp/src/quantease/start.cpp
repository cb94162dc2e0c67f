// QuantEase's starting grids and points (see start.hpp).
#include "start.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "quantease/gptq.hpp"
#include "quantease/leanquant.hpp"
#include "quantease/parallel.hpp"

namespace quantease::qe {

GridOptions grid_options(const QuantEaseOptions& opt) {
  GridOptions gopt;
  gopt.bits = opt.bits;
  gopt.sym = opt.sym;
  gopt.mse = opt.mse;
  return gopt;
}

void fit_fixed_grids(const RowMatrixXf& W, const GridOptions& gopt, double fraction, AffineGrids& grids) {
  const Index rows = W.rows(), gs = grids.groups().size(), groups = grids.groups().count();
  parallel_chunks(rows, kRowPanel, [&](Index r0, Index r1) {
    std::vector<float> buf(gs);
    for (Index r = r0; r < r1; ++r) {
      for (Index g = 0; g < groups; ++g) {
        const float* x = W.row(r).data() + g * gs;
        if (fraction <= 0.0) {
          grids.set(r, g, fit_grid(x, gs, gopt));
          continue;
        }
        Index n = static_cast<Index>(std::llround(static_cast<double>(gs) * fraction / 2.0));
        n = std::min<Index>(n, (gs - 1) / 2);
        std::copy(x, x + gs, buf.begin());
        std::nth_element(buf.begin(), buf.begin() + n, buf.end());
        const float lo = buf[n];
        std::nth_element(buf.begin(), buf.begin() + (gs - 1 - n), buf.end());
        const float range[2] = {lo, buf[gs - 1 - n]};
        grids.set(r, g, fit_grid(range, 2, gopt));
      }
    }
  });
}

void fit_masked_grids(const RowMatrixXf& W, const std::vector<char>& outlier_columns, const GridOptions& gopt,
                      AffineGrids& grids) {
  const Index rows = W.rows(), gs = grids.groups().size(), groups = grids.groups().count();
  parallel_chunks(rows, kRowPanel, [&](Index r0, Index r1) {
    std::vector<float> buf(gs);
    for (Index r = r0; r < r1; ++r) {
      for (Index g = 0; g < groups; ++g) {
        Index n = 0;
        for (Index c = g * gs; c < (g + 1) * gs; ++c)
          if (!outlier_columns[c]) buf[n++] = W(r, c);
        grids.set(r, g, fit_grid(buf.data(), n, gopt));  // n == 0: the all-zero guard
      }
    }
  });
}

template <class HT>
Start<AffineGrids> affine_start(const ConstRowMatrixRef<float>& W, const ConstRowMatrixRef<HT>& H,
                                const Problem& problem, const Outliers* outliers, const QuantEaseOptions& opt) {
  const ProcessingOrder& order = problem.order();
  Start<AffineGrids> start;
  start.grids =
      AffineGrids(problem.rows(), GroupMap::in_processing_order(problem.cols(), opt.group_size, order.perm), opt.bits);
  const GridOptions gopt = grid_options(opt);
  if (opt.init == QuantEaseInit::gptq) {
    GptqOptions g;
    g.bits = opt.bits;
    g.group_size = opt.group_size;
    g.sym = opt.sym;
    g.mse = opt.mse;
    g.act_order = opt.act_order;
    g.damp = opt.gptq_damp;
    g.block_size = opt.block_size;
    start.solver_output = gptq(W, H, g);
    start.from_solver = true;
    start.grids.assign(start.solver_output.scales, start.solver_output.zeros);
    start.codes = order.gather(ConstRowMatrixRef<std::uint8_t>(start.solver_output.codes));
    return start;
  }
  if (outliers && outliers->structured()) fit_masked_grids(problem.weights(), outliers->columns(), gopt, start.grids);
  else fit_fixed_grids(problem.weights(), gopt, outliers ? opt.outlier_fraction : 0.0, start.grids);
  start.round = opt.init == QuantEaseInit::rtn;
  return start;
}

template <class HT>
Start<CodebookGrids> codebook_start(const ConstRowMatrixRef<float>& W, const ConstRowMatrixRef<HT>& H,
                                    const Problem& problem, const QuantEaseOptions& opt) {
  const ProcessingOrder& order = problem.order();
  const GroupMap groups = GroupMap::of_original_columns(problem.cols(), opt.group_size, order.perm);
  Start<CodebookGrids> start;
  if (opt.init != QuantEaseInit::leanquant) {
    start.grids = CodebookGrids(opt.codebook, groups);
    start.round = opt.init == QuantEaseInit::rtn;
    if (opt.start_codes.size() > 0) {  // given codes: the sweeps start there and the result is never worse
      start.codes = order.gather(ConstRowMatrixRef<std::uint8_t>(opt.start_codes));
      start.from_solver = true;
      start.solver_output.codes = opt.start_codes;
      start.solver_output.weight = dequantize(start.grids, opt.start_codes, groups.column_groups());
    }
    return start;
  }
  LeanQuantOptions lq = opt.leanquant;
  lq.bits = opt.bits;
  lq.affine = false;
  lq.group_size = opt.group_size;
  lq.act_order = opt.act_order;
  lq.block_size = opt.block_size;
  LeanQuantOutput lq_out = leanquant(W, H, lq);
  start.grids = CodebookGrids(lq_out.codebook, groups);
  start.codes = order.gather(ConstRowMatrixRef<std::uint8_t>(lq_out.quant.codes));
  start.from_solver = true;
  start.solver_output = std::move(lq_out.quant);
  start.solver_codebook = std::move(lq_out.codebook);
  return start;
}

template Start<AffineGrids> affine_start<float>(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<float>&,
                                                const Problem&, const Outliers*, const QuantEaseOptions&);
template Start<AffineGrids> affine_start<double>(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<double>&,
                                                 const Problem&, const Outliers*, const QuantEaseOptions&);
template Start<CodebookGrids> codebook_start<float>(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<float>&,
                                                    const Problem&, const QuantEaseOptions&);
template Start<CodebookGrids> codebook_start<double>(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<double>&,
                                                     const Problem&, const QuantEaseOptions&);

}  // namespace quantease::qe
