// LeanQuant (Zhang & Shrivastava, ICLR 2025): GPTQ with a loss-error-aware grid.
//
// The GPTQ column loop pays (w_j - q_j)^2 / U_jj^2 for column j's rounding error (U = upper Cholesky factor
// of H^-1, processing order). LeanQuant therefore fits each row's grid to the weighted error
//   E(grid) = sum_j s_j (w_j - grid(w_j))^2,   s_j = U_jj^(-p)                      (paper, Eq. 6-7)
// before the loop, on the original weights, and then runs the usual GPTQ loop against that grid:
//   * non-uniform: a 2^bits-entry codebook per row (or row and group) by weighted 1-D k-means (Lloyd);
//   * affine: a (scale, zero) grid per row (or row and group) minimising E over the paper's T x T set of
//     shrunk ranges (min + i d, max - j d), d = (max - min) / T, i + j < T -- searched exactly, see
//     weighted_grid_search.
// Every 1-D fit works on the row sorted once, with prefix sums of s, s w and s w^2 (sorted_row.hpp), so one
// Lloyd iteration costs O(k log n) and one affine (scale, zero) O(1) after O(2^bits) per distinct scale
// (leanquant()'s affine fit needs no full sort: it keeps the row in the order of a fine bucket table, whose
// prefix sums at a bucket's start plus that bucket's few values give the sums below any threshold).
// The fits alone: leanquant/kmeans.hpp, leanquant/affine_search.hpp; their pieces live in cpp/src/leanquant/.
#pragma once

#include <cstdint>

#include "quantease/grid.hpp"
#include "quantease/result.hpp"

namespace quantease {

struct LeanQuantOptions {
  int bits = 4;
  bool affine = false;    // false: codebooks by weighted k-means; true: affine grids by weighted search
  double exponent = 4.0;  // p in s_j = U_jj^(-p)
  double damp = 0.1;      // relative to mean(diag H), with the damping ladder
  bool act_order = true;
  int group_size = -1;  // -1 or a divisor of cols: one grid per row and group of original columns
  int block_size = 128;
  std::uint64_t seed = 0;    // k-means++ (2^bits > 8); row r, group g draws from stream r * groups + g
  int kmeans_iters = 100;    // Lloyd iterations at most
  double kmeans_tol = 1e-6;  // stop when sum (c_new - c)^2 <= tol * var(values)
  int grid_steps = 2048;     // T of the affine search
};

struct LeanQuantOutput {
  QuantOutput quant;             // codes/weight/g_idx/perm; scales/zeros only for affine
  RowMatrixXf codebook;          // (rows * groups) x 2^bits, ascending per row (non-uniform; else empty)
  VectorXi32 iters;              // (rows * groups) Lloyd iterations (non-uniform; else empty)
  Eigen::VectorXd importance;    // cols, original column order: s_j / max s (processing order's U_jj)
  Eigen::VectorXd grid_error;    // (rows * groups) weighted error E of the grid used
  Eigen::VectorXd minmax_error;  // (rows * groups) E of the min-max grid (affine; else empty)
};

// W: rows x cols, H: cols x cols symmetric (validated by the caller). GPTQ preparation (dead columns,
// act-order, damping ladder, U), s_j = U_jj^(-p), one grid per row/group from the original W, then the GPTQ
// column loop with quant(w) = nearest codebook entry or the affine grid. Throws NumericalError when H
// cannot be factored.
template <class HT>
LeanQuantOutput leanquant(const ConstRowMatrixRef<float>& W, const ConstRowMatrixRef<HT>& H,
                          const LeanQuantOptions& opt);

}  // namespace quantease
