// Ours, after llama.cpp's search: improve a block's stored parameters on the weighted squared error
//   E = sum_i w_i (x_i - value_i)^2,   value_i = the grid point nearest to x_i
// (w = diag(H): the layer objective when the columns' cross terms are small, as in real LLM layers).
// llama.cpp picks the integer sub-block scales/mins for unrounded scales and rounds d/dmin to fp16 last;
// here, in turn until nothing improves: every sub-block's integers move within +-2 of their values, then
// d (and dmin / m) are refitted by least squares to the codes and rounded to fp16. A change is kept only
// when E drops, so the result is never worse than the start.
#pragma once

#include <vector>

#include "quantease/gguf_format.hpp"
#include "quantease/gguf_grids.hpp"
#include "quantease/types.hpp"

namespace quantease::gguf {

// x, w: f.block values and their weights (w >= 0). Returns E after the refinement.
double refine_block(const Format& f, const float* x, const float* w, BlockParams& params);

// E of the block on params, with the nearest codes.
double block_error(const Format& f, const float* x, const float* w, const BlockParams& params);

}  // namespace quantease::gguf

namespace quantease::gguf {

// Ours, after a solve (codes fixed): every block's d and dmin (Q4_1/Q5_1: d and m) moved to the minimiser of
// the exact layer objective sum_rows (w - q)^T H (w - q) over that block's two numbers, the other blocks
// held (one pass, block by block along each row, G = (W - Q) H kept up to date), then rounded to fp16 and
// kept only when the objective, recomputed with the rounded values, drops. W: rows x cols, H: cols x cols,
// codes and grids as a solver left them (blocks changed in place); weight: the dequantized W, updated.
template <class HT>
void refit_super_scales(const ConstRowMatrixRef<float>& W, const ConstRowMatrixRef<HT>& H, const RowMatrixU8& codes,
                        GgufGrids& grids, RowMatrixXf& weight);

}  // namespace quantease::gguf
