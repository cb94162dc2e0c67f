// QuantEase's result in W's column order: the best iterate's codes and grids, the init solver's own result
// when the descent did not improve on it, and the outliers (see quantease.hpp).
#pragma once

#include "outliers.hpp"
#include "problem.hpp"
#include "quantease/quantease.hpp"
#include "schedule.hpp"

namespace quantease::qe {

// Codes, perm, g_idx, scales/zeros or codebook and the weight of the best iterate (on its own grids when
// they moved during the schedule, else on `grids`).
template <class GridSet>
void write_result(const Problem& problem, const BestIterate<GridSet>& best, const GridSet& grids, QuantEaseOutput& res);

// init = gptq / leanquant: that solver's own result replaces ours unless ours is lower, decided in float64
// (the float32 G's objective is accurate to about 1e-5 relative only, when H's entries span orders of
// magnitude).
template <class HT>
void keep_better_init(const ConstRowMatrixRef<float>& W, const ConstRowMatrixRef<HT>& H, const QuantOutput& init,
                      const RowMatrixXf& init_codebook, QuantEaseOutput& res);

// S of the best iterate in W's column order (CSR over rows), added to the weight.
void write_outliers(const Problem& problem, const Outliers::Snapshot& best, QuantEaseOutput& res);

}  // namespace quantease::qe
