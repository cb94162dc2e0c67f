// Solvers on llama.cpp's GGUF block formats (gguf_format.hpp): every result is exactly representable in its
// type (fp16 super-scales, integer sub-block scales, codes), and `weight` is llama.cpp's dequantization.
#pragma once

#include <vector>

#include "quantease/gguf_format.hpp"
#include "quantease/gguf_grids.hpp"
#include "quantease/result.hpp"
#include "quantease/types.hpp"

namespace quantease::gguf {

struct GgufOutput {
  QuantOutput out;                  // weight, codes (stored form), g_idx (sub-block of a column), perm, damp
  std::vector<BlockParams> blocks;  // rows x (cols / block), row-major
};

// llama.cpp's quantization of every row (llama-quantize): `importance` (cols values, its --imatrix, e.g.
// diag(H)) or nullptr for the reference quantizer. W: rows x cols finite, cols a multiple of the block.
// `refine` (needs importance): every block then refined on the importance-weighted error (gguf_refine.hpp),
// codes the nearest grid points.
GgufOutput rtn(const ConstRowMatrixRef<float>& W, Type type, const float* importance, bool refine = false);

struct GptqOptions {
  bool act_order = false;  // columns by diag(H) descending; every block's grid is then fitted from W up front
  double damp = 0.01;      // relative to mean(diag H)
  int block_size = 128;    // lazy-batch block of the column loop
};

// GPTQ's column loop with the type's blocks as groups: each block's grid is llama.cpp's imatrix search
// (importance diag(H)) refined on the diag(H)-weighted error (gguf_refine.hpp), on the block's
// error-compensated values when the loop reaches it (on W's values, before the loop, with act-order); the
// codes are the nearest grid points with GPTQ's error feedback. Then every block's d/dmin is refitted on the
// exact objective with the codes fixed (refit_super_scales, gguf_refine.hpp).
template <class HT>
GgufOutput gptq(const ConstRowMatrixRef<float>& W, const ConstRowMatrixRef<HT>& H, Type type, const GptqOptions& opt);

}  // namespace quantease::gguf
