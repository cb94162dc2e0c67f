// Where QuantEase starts: the grid set and, for an on-grid start, the codes (see quantease.hpp).
//   init = w:   affine grids from W (min-max, MSE, or clipped/masked for outliers) or the given codebooks;
//               Ŵ = T, off the grid;
//   init = rtn: the same grids, Ŵ = the nearest grid point of T;
//   init = gptq / leanquant: that solver's grids and codes (the target stays the ORIGINAL W), and its own
//               output, which the result is never worse than.
//   given codebooks with start codes: those codes, treated as init = gptq's (quantease(gguf=, init="gptq")).
#pragma once

#include "outliers.hpp"
#include "problem.hpp"
#include "quantease/grid_set.hpp"
#include "quantease/quantease.hpp"

namespace quantease::qe {

template <class GridSet>
struct Start {
  GridSet grids;
  RowMatrixU8 codes;            // processing order: the init solver's codes; empty otherwise
  bool round = false;           // init = rtn
  bool from_solver = false;     // init = gptq / leanquant
  QuantOutput solver_output;    // that solver's output
  RowMatrixXf solver_codebook;  // init = leanquant: its codebooks
};

// The affine grids' options from QuantEase's.
GridOptions grid_options(const QuantEaseOptions& opt);

// Per row and group: the grid of W's values (plain), or of the values clipped at the quantiles
// n = round(len * fraction / 2) (unstructured outliers).
void fit_fixed_grids(const RowMatrixXf& W, const GridOptions& gopt, double fraction, AffineGrids& grids);
// Structured outliers: the grid of W's values outside the outlier columns, every row and group.
void fit_masked_grids(const RowMatrixXf& W, const std::vector<char>& outlier_columns, const GridOptions& gopt,
                      AffineGrids& grids);

// Affine grids in processing-order groups (as GPTQ's): init w, rtn or gptq.
template <class HT>
Start<AffineGrids> affine_start(const ConstRowMatrixRef<float>& W, const ConstRowMatrixRef<HT>& H,
                                const Problem& problem, const Outliers* outliers, const QuantEaseOptions& opt);

// Codebooks in groups of W's own columns (LeanQuant's): the given ones (init w or rtn) or LeanQuant's.
template <class HT>
Start<CodebookGrids> codebook_start(const ConstRowMatrixRef<float>& W, const ConstRowMatrixRef<HT>& H,
                                    const Problem& problem, const QuantEaseOptions& opt);

}  // namespace quantease::qe
