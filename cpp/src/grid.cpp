// Grid fitting (min-max and the MSE shrink search) for the affine grid in grid.hpp.
#include "quantease/grid.hpp"

#include <limits>

#include <Eigen/Core>

namespace quantease {
namespace {

// The float16 value nearest to a positive scale (ties to even, Eigen::half), kept within float16's
// positive finite range so that a stored scale is never 0 or inf.
float round_to_fp16(float scale) {
  constexpr float kMinSubnormal = 5.9604645e-08f;  // 2^-24
  constexpr float kMax = 65504.0f;
  const float r = static_cast<float>(Eigen::half(std::min(scale, kMax)));
  return std::max(r, kMinSubnormal);
}

// The grid of the range [xmin, xmax] (xmin <= 0 <= xmax), with the all-zero guard.
AffineGrid grid_from_range(float xmin, float xmax, float maxq, bool sym, bool fp16_scales) {
  if (xmin == 0.0f && xmax == 0.0f) {
    xmin = -1.0f;
    xmax = 1.0f;
  }
  AffineGrid g;
  g.scale = (xmax - xmin) / maxq;
  if (!(g.scale >= std::numeric_limits<float>::min())) {
    // A range so small that the scale underflows would give w / 0: use the all-zero guard instead.
    g.scale = 2.0f / maxq;
    xmin = -1.0f;
  }
  if (fp16_scales) g.scale = round_to_fp16(g.scale);
  g.zero = sym ? (maxq + 1.0f) / 2.0f : std::nearbyint(-xmin / g.scale);
  return g;
}

double shrink_error(const float* x, Index n, const AffineGrid& g, float maxq, float norm) {
  double err = 0.0;
  for (Index i = 0; i < n; ++i) {
    const float d = std::fabs(dequantize(quantize_code(x[i], g, maxq), g) - x[i]);
    err += std::pow(d, norm);
  }
  return err;
}

}  // namespace

AffineGrid fit_grid(const float* x, Index n, const GridOptions& opt) {
  const float maxq = max_code(opt.bits);
  float xmin = 0.0f, xmax = 0.0f;
  for (Index i = 0; i < n; ++i) {
    xmin = std::min(xmin, x[i]);
    xmax = std::max(xmax, x[i]);
  }
  if (opt.sym) {
    xmax = std::max(-xmin, xmax);
    if (xmin < 0.0f || !opt.reference) xmin = -xmax;
  }
  AffineGrid best = grid_from_range(xmin, xmax, maxq, opt.sym, opt.fp16_scales);
  if (!opt.mse) return best;

  double best_err = std::numeric_limits<double>::infinity();
  const int steps = static_cast<int>(opt.max_shrink * opt.grid);
  for (int i = 0; i < steps; ++i) {
    // The reference computes p in double and applies it to float32 tensors.
    const float p = static_cast<float>(1.0 - static_cast<double>(i) / opt.grid);
    AffineGrid g = grid_from_range(p * xmin, p * xmax, maxq, opt.sym, opt.fp16_scales);
    const double err = shrink_error(x, n, g, maxq, opt.norm);
    if (err < best_err) {
      best_err = err;
      best = g;
    }
  }
  return best;
}

}  // namespace quantease
