// GPTQ (Frantar, Ashkboos, Hoefler, Alistarh, ICLR 2023) on the shared affine grid.
#pragma once

#include "quantease/grid.hpp"
#include "quantease/result.hpp"

namespace quantease {

struct GptqOptions {
  int bits = 4;
  int group_size = -1;  // -1 or a positive divisor of cols
  bool sym = false;
  bool act_order = false;      // process columns by diag(H) descending
  bool static_groups = false;  // group grids fixed up front from W
  double damp = 0.01;          // relative to mean(diag H)
  int block_size = 128;        // lazy-batch block
  bool mse = false;            // MSE range search for every grid
  // Reproduce the authors' code: symmetric clipping quirk, stale group statistics, no damping retry.
  bool reference = false;
  bool fp16_scales = false;  // scales rounded to float16 before the codes (see grid.hpp)
};

// W: rows x cols; H: cols x cols symmetric (both finite, validated by the caller).
// Minimises sum_rows (w - q)^T H (w - q) column by column with the OBS error feedback (gptq_loop.hpp).
// Throws NumericalError when H cannot be factored (after the damping ladder unless `reference`).
template <class HT>
QuantOutput gptq(const ConstRowMatrixRef<float>& W, const ConstRowMatrixRef<HT>& H, const GptqOptions& opt);

}  // namespace quantease
