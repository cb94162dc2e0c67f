// LeanQuant's affine grid of one row (or group) as the column loop uses it (private header).
#pragma once

#include "affine_search.hpp"

namespace quantease::leanquant_detail {

struct AffineFit {
  AffineGrid grid;
  double error = 0.0, minmax_error = 0.0;  // weighted errors of `grid` and of the min-max grid
};

// The min-max grid, replaced by the search's grid where that has the smaller E point by point (in float32,
// as the loop quantizes). One per fitting task: its search's buffers are reused across rows.
class AffineFitter {
 public:
  AffineFitter(int bits, int steps);
  AffineFit fit(const float* values, const double* s, Index n);

 private:
  int bits_, steps_;
  float maxq_;
  GridOptions minmax_;
  AffineSearch search_;
};

}  // namespace quantease::leanquant_detail
