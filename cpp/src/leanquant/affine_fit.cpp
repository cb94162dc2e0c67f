// The affine grid LeanQuant keeps per row (or group), and weighted_grid_error(). See affine_fit.hpp.
#include "affine_fit.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "lane_sum.hpp"

namespace quantease {

double weighted_grid_error(const float* x, const double* s, Index n, const AffineGrid& g, float maxq) {
  // quantize_code() and dequantize() with the code kept as a float (clamped, integer-valued: the same value
  // as through uint8), so that the loop vectorises with the true division; 8 running sums.
  const float scale = g.scale, zero = g.zero;
  return leanquant_detail::lane_sum(n, [&](Index i) {
    const float c = std::clamp(std::nearbyint(x[i] / scale) + zero, 0.0f, maxq);
    const double e = static_cast<double>(x[i]) - static_cast<double>(scale * (c - zero));
    return s[i] * e * e;
  });
}

namespace leanquant_detail {

AffineFitter::AffineFitter(int bits, int steps) : bits_(bits), steps_(steps), maxq_(max_code(bits)) {
  minmax_.bits = bits;
}

AffineFit AffineFitter::fit(const float* values, const double* s, Index n) {
  const GridSearchResult found = search_.search_values(values, s, n, bits_, steps_);
  // fit_grid() of the row from its extremes alone (it reads only min(0, min x) and max(0, max x))
  const float ends[2] = {search_.row_min(), search_.row_max()};
  AffineFit f;
  f.grid = fit_grid(ends, 2, minmax_);
  f.error = f.minmax_error = weighted_grid_error(values, s, n, f.grid, maxq_);
  if (found.found && static_cast<float>(found.scale) >= std::numeric_limits<float>::min()) {
    const AffineGrid cand{static_cast<float>(found.scale), static_cast<float>(found.zero)};
    const double cand_err = weighted_grid_error(values, s, n, cand, maxq_);
    if (cand_err < f.error) {
      f.grid = cand;
      f.error = cand_err;
    }
  }
  return f;
}

}  // namespace leanquant_detail
}  // namespace quantease
