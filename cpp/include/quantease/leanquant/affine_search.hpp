// LeanQuant's affine grid fit: the exact search for the least weighted error among the paper's T x T ranges
// (see leanquant.hpp), and the point-by-point error of a float32 affine grid.
#pragma once

#include "quantease/grid.hpp"
#include "quantease/sorted_row.hpp"

namespace quantease {

struct GridSearchResult {
  double scale = 1.0;
  int zero = 0;
  double error = 0.0;  // E of (scale, zero) in double
  bool found = false;  // false when the values are constant (no candidate with min < max)
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
GridSearchResult weighted_grid_search(const SortedRow& row, int bits, int steps);

// E of a float32 affine grid, evaluated point by point as the column loop would quantize.
double weighted_grid_error(const float* x, const double* s, Index n, const AffineGrid& g, float maxq);

}  // namespace quantease
