// Grid refit (ours; the paper fixes the grids from W): with the codes fixed, move every row's (group's) grid
// to where it lowers the objective exactly, keeping G = (T − Ŵ) Σ. Needs valid codes (after a quantized
// sweep). Each returns the total decrease of f (float64, >= 0).
#pragma once

#include "problem.hpp"
#include "quantease/grid_set.hpp"
#include "sweep.hpp"

namespace quantease::qe {

// Affine grids: per row and group the scale -- and, asymmetric (`sym` false), an integer zero within ±2 of
// the current one, kept in [0, maxq] -- that minimises f.
double refit(AffineGrids& grids, Iterate& point, const Problem& problem, bool sym);

// Codebook grids: per row and group the levels in use, at their exact optimum; the levels are then sorted
// again (codes renumbered).
double refit(CodebookGrids& grids, Iterate& point, const Problem& problem, bool sym);

}  // namespace quantease::qe
