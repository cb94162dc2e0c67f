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
// Every 1-D fit works on the row sorted once, with prefix sums of s, s w and s w^2, so one Lloyd
// iteration costs O(k log n) and one affine (scale, zero) O(1) after O(2^bits) per distinct scale
// (leanquant()'s affine fit needs no full sort: it keeps the row in the order of a fine bucket table, whose
// prefix sums at a bucket's start plus that bucket's few values give the sums below any threshold).
#pragma once

#include <cstdint>
#include <vector>

#include "quantease/grid.hpp"
#include "quantease/result.hpp"

namespace quantease {

struct LeanQuantOptions {
  int bits = 4;
  bool affine = false;       // false: codebooks by weighted k-means; true: affine grids by weighted search
  double exponent = 4.0;     // p in s_j = U_jj^(-p)
  double damp = 0.1;         // relative to mean(diag H), with the damping ladder
  bool act_order = true;
  int group_size = -1;       // -1 or a divisor of cols: one grid per row and group of original columns
  int block_size = 128;
  std::uint64_t seed = 0;    // k-means++ (2^bits > 8); row r, group g draws from stream r * groups + g
  int kmeans_iters = 100;    // Lloyd iterations at most
  double kmeans_tol = 1e-6;  // stop when sum (c_new - c)^2 <= tol * var(values)
  int grid_steps = 2048;     // T of the affine search
};

struct LeanQuantOutput {
  QuantOutput quant;            // codes/weight/g_idx/perm; scales/zeros only for affine
  RowMatrixXf codebook;         // (rows * groups) x 2^bits, ascending per row (non-uniform; else empty)
  VectorXi32 iters;             // (rows * groups) Lloyd iterations (non-uniform; else empty)
  Eigen::VectorXd importance;   // cols, original column order: s_j / max s (processing order's U_jj)
  Eigen::VectorXd grid_error;   // (rows * groups) weighted error E of the grid used
  Eigen::VectorXd minmax_error; // (rows * groups) E of the min-max grid (affine; else empty)
};

// One row (or group) sorted by value (ties by position), with its weights and prefix sums
// S0[i] = sum_{t<i} s_t, S1[i] = sum s_t x_t, S2[i] = sum s_t x_t^2 (double).
struct SortedWeighted {
  std::vector<double> x, s, S0, S1, S2;
  void assign(const float* values, const double* weights, Index n);
  Index size() const { return static_cast<Index>(x.size()); }
  // sum over sorted positions [a, b) of s (x - v)^2
  double segment_error(Index a, Index b, double v) const {
    return (S2[b] - S2[a]) - 2.0 * v * (S1[b] - S1[a]) + v * v * (S0[b] - S0[a]);
  }

 private:
  std::vector<std::uint64_t> keys_, tmp_keys_;  // sort scratch (value key << 32 | position), reused across rows
};

// splitmix64 (Steele et al.): the k-means++ random stream, reproducible in NumPy (tests/reference).
struct SplitMix64 {
  std::uint64_t state;
  explicit SplitMix64(std::uint64_t seed, std::uint64_t stream);
  std::uint64_t next();
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
};

// Weighted 1-D k-means of d into k centroids (ascending, written to c). Init: evenly spaced between min
// and max when k <= 8, else greedy k-means++ (max(8, 2 + floor(ln k)) trials per centre, sampled from `rng`).
// Lloyd: assignment by midpoints (a value on a midpoint joins the lower centroid), weighted means; empty
// clusters move to the points farthest from their centroids (scikit-learn's relocation); stops when the assignment repeats, when sum (c_new - c)^2 <=
// tol * var(x), or after max_iter updates. Returns the number of updates. Precondition: n >= 1, s >= 0.
int weighted_kmeans(const SortedWeighted& d, int k, int max_iter, double tol, SplitMix64& rng, double* c);

struct GridSearchResult {
  double scale = 1.0;
  int zero = 0;
  double error = 0.0;   // E of (scale, zero) in double
  bool found = false;   // false when the values are constant (no candidate with min < max)
};

// The least-E affine grid among the candidates (lo, hi) = (min + i d, max - j d), i, j >= 0, i + j < T,
// each turned into a grid as everywhere in quantease: xmin = min(lo, 0), xmax = max(hi, 0),
// scale = (xmax - xmin) / maxq, zero = rint(-xmin / scale). Exact over the whole candidate set (up to the
// round-off of double prefix sums): the error of a grid depends on (scale, zero) only, the candidates are
// three sequences of scales (lo < 0 < hi: the scale depends on m = i + j only; lo >= 0: zero 0; hi <= 0:
// zero maxq), and a branch and bound over blocks of consecutive scales, with a lower bound per zero point
// that costs O(2^bits) on the sorted row, evaluates only the (scale, zero) pairs it cannot exclude -- on
// LLM-like rows a few dozen bounds and evaluations instead of the paper's O(T^2 n). Groups of at most 256
// values at 4 bits and more instead sweep the scales of lo < 0 < hi in order with the sums of E per zero
// updated by the values' code changes (at most 2^bits per value), bounded ahead only every 128 scales.
GridSearchResult weighted_grid_search(const SortedWeighted& d, int bits, int steps);

// E of a float32 affine grid, evaluated point by point as the column loop would quantize.
double weighted_grid_error(const float* x, const double* s, Index n, const AffineGrid& g, float maxq);

// W: rows x cols, H: cols x cols symmetric (validated by the caller). GPTQ preparation (dead columns,
// act-order, damping ladder, U), s_j = U_jj^(-p), one grid per row/group from the original W, then the GPTQ
// column loop with quant(w) = nearest codebook entry or the affine grid. Throws NumericalError when H
// cannot be factored.
template <class HT>
LeanQuantOutput leanquant(const ConstRowMatrixRef<float>& W, const ConstRowMatrixRef<HT>& H,
                          const LeanQuantOptions& opt);

}  // namespace quantease
