// EasyQuant (Tang et al., "EasyQuant: An Efficient Data-free Quantization Algorithm for LLMs", EMNLP 2023):
// data-free weight quantization with outlier isolation and a per-channel range optimised by Adam.
//
// For W (rows x cols) and each channel (a row, or a row's group of columns):
//   1. Outliers (Eq. 3): |W_ij - mean| >= outlier_sigma * std, mean/std (float64, population) over the whole
//      matrix (paper) or over the row (extension). They are kept in float32 (CSR); the grid holds 0 there.
//   2. Grid of the normal values: q = s * k, k = clamp(rint(x / s), kmin, kmax).
//      sym (paper): k in [-(2^(b-1) - 1), 2^(b-1)], s0 = max|x| / 2^(b-1); stored as zero = 2^(b-1) - 1,
//      code = k + zero, so q = scale * (code - zero) is dequantize() of grid.hpp.
//      asym (extension): start at the min-max grid (fit_grid) with its integer zero; only the scale moves.
//   3. Range (Eq. 2): Adam on rho = s / s0 minimising E(s) = sum_normal (s k - x)^2 with the exact a.e.
//      gradient dE/ds = 2 sum (s k - x) k (k the clamped code, no straight-through estimator).
//   4. Safety net (beyond the paper): E on a 32-point geometric grid of rho, its two best points polished by the
//      Lloyd iteration s <- sum(x k) / sum(k^2); the final scale is the best of {start, Adam, search} by the
//      exact float32 error, so it is never worse than the start.
// For long channels E is evaluated from the sorted normal values and their prefix sums: O(2^b log n) per
// evaluation instead of O(n), which makes 100 Adam steps and the search cheap next to one sort per channel.
// Channels are independent: rows are processed in fixed panels (parallel_chunks), bit-identical for any
// thread count.
#pragma once

#include <cstdint>
#include <vector>

#include "quantease/grid.hpp"
#include "quantease/result.hpp"

namespace quantease {

struct EasyQuantOptions {
  int bits = 4;
  int group_size = -1;         // -1: one range per row; else a positive divisor of cols
  bool sym = true;             // paper: symmetric k in [-(2^(b-1) - 1), 2^(b-1)]; false: asymmetric zero point
  double outlier_sigma = 3.0;  // n of Eq. 3 (> 0); +inf flags nothing
  bool row_stats = false;      // false: mean/std over the whole matrix (paper); true: per row
  int steps = 100;             // Adam steps (0: no Adam, only the search)
  double lr = 1e-2;            // Adam learning rate on rho = s / s0 (relative to the start range)
  int search_points = 32;      // geometric grid of the safety-net search (>= 2)
  // How E(s) is evaluated (the results agree up to values exactly halfway between two codes): over the sorted
  // values and their prefix sums, O(2^b log n) per evaluation after one sort, or by one pass over the values,
  // O(n). automatic sorts when n > 32 (2^b - 1). The choice is for speed and tests only.
  enum class Evaluation { automatic, sorted, direct } evaluation = Evaluation::automatic;
};

// Where a channel's final scale came from.
enum class RangeSource : std::uint8_t { start = 0, adam = 1, search = 2 };

struct EasyQuantOutput {
  QuantOutput quant;           // weight = grid part + outliers; codes == zero at the outliers
  VectorXi64 outlier_indptr;   // rows + 1 (CSR over rows)
  VectorXi32 outlier_indices;  // column of every outlier, increasing within a row
  Eigen::VectorXf outlier_values;
  RowMatrixXf start_scales;      // rows x groups: the abs-max (sym) or min-max (asym) start
  RowMatrixXf adam_scales;       // rows x groups: Adam's last iterate
  RowMatrixU8 source;            // rows x groups: RangeSource of the final scale
  Eigen::VectorXd mean, stddev;  // outlier statistics: 1 entry (tensor) or one per row
};

// W: rows x cols, finite; options validated by the caller (bits 2..8, group_size -1 or a divisor of cols,
// outlier_sigma > 0, steps >= 0, lr > 0, search_points >= 2).
EasyQuantOutput easyquant(const ConstRowMatrixRef<float>& W, const EasyQuantOptions& opt);

// One channel: the grid of the normal values x[0..n) (any order; n may be 0). Exposed for tests/benchmarks.
struct ChannelFit {
  AffineGrid grid;        // final scale and zero
  float start_scale = 1;  // scale of the start grid
  float adam_scale = 1;   // scale of Adam's last iterate
  RangeSource source = RangeSource::start;
  double start_error = 0;  // exact float32-quantizer error of the start and of the final grid (float64 sums)
  double final_error = 0;
};
ChannelFit fit_channel(const float* x, Index n, const EasyQuantOptions& opt);

}  // namespace quantease
