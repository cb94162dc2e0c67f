// Round-to-nearest: every weight to the nearest point of its row's (or row-and-group's) grid.
#pragma once

#include "quantease/grid.hpp"
#include "quantease/result.hpp"

namespace quantease {

struct RtnOptions {
  int bits = 4;
  int group_size = -1;  // -1: one grid per row; else a positive divisor of cols
  bool sym = false;
  bool mse = false;
  bool fp16_scales = false;  // scales rounded to float16 before the codes (see grid.hpp)
};

// W: rows x cols, finite. Returns codes, scales/zeros (rows x groups), g_idx and the dequantized weight.
QuantOutput rtn(const ConstRowMatrixRef<float>& W, const RtnOptions& opt);

}  // namespace quantease
