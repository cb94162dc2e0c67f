// Ours, after llama.cpp's search: improve a block's stored parameters on the weighted squared error
//   E = sum_i w_i (x_i - value_i)^2,   value_i = the grid point nearest to x_i
// (w = diag(H): the layer objective when the columns' cross terms are small, as in real LLM layers).
// llama.cpp picks the integer sub-block scales/mins for unrounded scales and rounds d/dmin to fp16 last;
// here, in turn until nothing improves: every sub-block's integers move within +-2 of their values, then
// d (and dmin / m) are refitted by least squares to the codes and rounded to fp16. A change is kept only
// when E drops, so the result is never worse than the start.
#pragma once

#include "quantease/gguf_format.hpp"

namespace quantease::gguf {

// x, w: f.block values and their weights (w >= 0). Returns E after the refinement.
double refine_block(const Format& f, const float* x, const float* w, BlockParams& params);

// E of the block on params, with the nearest codes.
double block_error(const Format& f, const float* x, const float* w, const BlockParams& params);

}  // namespace quantease::gguf
