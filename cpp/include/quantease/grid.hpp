// The uniform (affine) quantization grid shared by every solver, as in the GPTQ reference quant.py.
//
// For a set of values x (a row, or a row's group of columns):
//   maxq = 2^bits - 1; xmin = min(min x, 0); xmax = max(max x, 0)            (the range contains 0)
//   symmetric: xmax = max(|xmin|, xmax), xmin = -xmax, zero = (maxq + 1) / 2
//   asymmetric: zero = rint(-xmin / scale)
//   all-zero: xmin, xmax = -1, +1;   scale = (xmax - xmin) / maxq
//   code = clamp(rint(w / scale) + zero, 0, maxq);   q = scale * (code - zero)
// rint is round-half-to-even. With fp16_scales the scale is rounded to float16 (clamped to its finite,
// non-zero range) before zero and codes are computed. The optional MSE search shrinks the range to [p xmin, p xmax] for
// p = 1, 0.99, ..., 0.21 and keeps the p with the least sum |q - w|^2.4.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "quantease/types.hpp"

namespace quantease {

struct GridOptions {
  int bits = 4;
  bool sym = false;
  bool mse = false;
  // Reference quirk: a symmetric row with no negative value keeps xmin = 0 (so it clips near max/2).
  bool reference = false;
  // Round every scale to the nearest float16 before the zero point and the codes are computed, so a
  // checkpoint that stores fp16 scales dequantizes to exactly the solver's weights.
  bool fp16_scales = false;
  float norm = 2.4f;        // MSE search: error norm
  int grid = 100;           // MSE search: shrink step is 1/grid
  float max_shrink = 0.8f;  // MSE search: int(max_shrink * grid) candidate ranges
};

struct AffineGrid {
  float scale = 1.0f;
  float zero = 0.0f;  // integer-valued
};

inline float max_code(int bits) { return static_cast<float>((1 << bits) - 1); }

inline std::uint8_t quantize_code(float w, const AffineGrid& g, float maxq) {
  const float c = std::nearbyint(w / g.scale) + g.zero;
  return static_cast<std::uint8_t>(std::clamp(c, 0.0f, maxq));
}

inline float dequantize(std::uint8_t code, const AffineGrid& g) {
  return g.scale * (static_cast<float>(code) - g.zero);
}

// Fits the grid of n values (stride 1). Precondition: values finite, n > 0.
AffineGrid fit_grid(const float* x, Index n, const GridOptions& opt);

}  // namespace quantease
