// LeanQuant's grids: one per row and group, fitted to the loss-error-weighted error before the column loop
// (private header).
#pragma once

#include <vector>

#include "quantease/grid_set.hpp"
#include "quantease/leanquant.hpp"

namespace quantease::leanquant_detail {

struct FittedGrids {
  AffineGrids affine;      // affine grids (else empty)
  CodebookGrids codebook;  // 2^bits ascending levels per row and group (non-uniform; else empty)
  // per row and group, at r * groups + g:
  VectorXi32 iters;              // Lloyd iterations (non-uniform)
  Eigen::VectorXd error;         // weighted error E of the grid
  Eigen::VectorXd minmax_error;  // E of the min-max grid (affine; else empty)
};

// The grid of every row of W and group of `groups` (groups of original columns; dead columns zeroed, as the
// loop sees them) minimising sum_j s_j (w_j - grid(w_j))^2 with s = importance (cols, original order):
// weighted k-means codebooks, or the affine search's grids.
FittedGrids fit_grids(const ConstRowMatrixRef<float>& W, const std::vector<char>& dead,
                      const Eigen::VectorXd& importance, const GroupMap& groups, const LeanQuantOptions& opt);

}  // namespace quantease::leanquant_detail
