// QuantEase's result in W's column order (see output.hpp).
#include "output.hpp"

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#include "quantease/hessian.hpp"

namespace quantease::qe {

template <class GridSet>
void write_result(const Problem& problem, const BestIterate<GridSet>& best, const GridSet& grids,
                  QuantEaseOutput& res) {
  QuantOutput& out = res.quant;
  out.codes.resize(problem.rows(), problem.cols());
  problem.order().scatter_rows(best.codes, 0, out.codes);
  if (problem.order().act_order) out.perm = problem.order().perm;
  const GridSet& final_grids = best.has_grids ? best.grids : grids;
  write_grids(final_grids, out);
  if constexpr (std::is_same_v<GridSet, CodebookGrids>) res.codebook = final_grids.level_matrix();
}

template <class HT>
void keep_better_init(const ConstRowMatrixRef<float>& W, const ConstRowMatrixRef<HT>& H, const QuantOutput& init,
                      const RowMatrixXf& init_codebook, QuantEaseOutput& res) {
  QuantOutput& out = res.quant;
  const RowMatrixXd ours = W.cast<double>() - out.weight.cast<double>();
  const RowMatrixXd theirs = W.cast<double>() - init.weight.cast<double>();
  const double ours_loss = quadratic_form_sum(ConstRowMatrixRef<double>(ours), H);
  if (!(ours_loss >= quadratic_form_sum(ConstRowMatrixRef<double>(theirs), H))) return;
  out.codes = init.codes;
  out.weight = init.weight;
  out.scales = init.scales;  // the refit rounds may have moved the grids (empty for LeanQuant)
  out.zeros = init.zeros;
  if (init_codebook.size() > 0) res.codebook = init_codebook;
  res.kept_init = true;
  res.best_sweep = -1;
}

void write_outliers(const Problem& problem, const Outliers::Snapshot& best, QuantEaseOutput& res) {
  const Index rows = problem.rows(), cols = problem.cols();
  const VectorXi64& perm = problem.order().perm;
  res.outlier_indptr.resize(rows + 1);
  res.outlier_indptr[0] = 0;
  std::vector<std::int32_t> indices;
  std::vector<float> values;
  std::vector<std::pair<std::int32_t, float>> row;
  for (Index r = 0; r < rows; ++r) {
    row.clear();
    for (Index j = 0; j < cols; ++j)
      if (best.support(r, j)) row.emplace_back(static_cast<std::int32_t>(perm[j]), best.values(r, j));
    std::sort(row.begin(), row.end());
    for (const auto& [c, v] : row) {
      indices.push_back(c);
      values.push_back(v);
      res.quant.weight(r, c) += v;
    }
    res.outlier_indptr[r + 1] = static_cast<std::int64_t>(indices.size());
  }
  res.outlier_indices = Eigen::Map<VectorXi32>(indices.data(), static_cast<Index>(indices.size()));
  res.outlier_values = Eigen::Map<Eigen::VectorXf>(values.data(), static_cast<Index>(values.size()));
}

template void write_result<AffineGrids>(const Problem&, const BestIterate<AffineGrids>&, const AffineGrids&,
                                        QuantEaseOutput&);
template void write_result<CodebookGrids>(const Problem&, const BestIterate<CodebookGrids>&, const CodebookGrids&,
                                          QuantEaseOutput&);
template void keep_better_init<float>(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<float>&,
                                      const QuantOutput&, const RowMatrixXf&, QuantEaseOutput&);
template void keep_better_init<double>(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<double>&,
                                       const QuantOutput&, const RowMatrixXf&, QuantEaseOutput&);

}  // namespace quantease::qe
