// LeanQuant's grids: one per row and group, fitted to the loss-error-weighted error before the column loop
// (private header).
#pragma once

#include <vector>

#include "quantease/grid.hpp"
#include "quantease/leanquant.hpp"

namespace quantease::leanquant_detail {

// The grid of row r, group g at index r * groups + g.
struct FittedGrids {
  std::vector<AffineGrid> affine;  // affine grids (else empty)
  RowMatrixXf codebook;            // 2^bits ascending levels per row and group (non-uniform; else empty)
  RowMatrixXf mids;                // their float32 midpoints and +inf, which no weight is above
  VectorXi32 iters;                // Lloyd iterations (non-uniform)
  Eigen::VectorXd error;           // weighted error E of each grid
  Eigen::VectorXd minmax_error;    // E of the min-max grid (affine; else empty)
};

// The grid of every row and group of W (dead columns zeroed, as the loop sees them) minimising
// sum_j s_j (w_j - grid(w_j))^2 with s = importance (cols, original order): weighted k-means codebooks, or
// the affine search's grids.
FittedGrids fit_grids(const ConstRowMatrixRef<float>& W, const std::vector<char>& dead,
                      const Eigen::VectorXd& importance, const LeanQuantOptions& opt);

}  // namespace quantease::leanquant_detail
