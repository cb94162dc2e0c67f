// llama.cpp's own block quantizers (ggml-quants.c), rewritten: how llama-quantize chooses each block's
// stored parameters and codes, with an importance matrix (`--imatrix`: per-column weights such as mean x^2,
// i.e. diag(H) up to a factor) or without one (the reference quantizers; for the legacy types these are
// the `gguf` package's NumPy quantizers, reproduced byte for byte).
//
// The arithmetic follows llama.cpp's float32 expressions in the same order; this file's translation unit is
// compiled without floating-point contraction (CMakeLists.txt), so every product is rounded as written.
#pragma once

#include <cstdint>

#include "quantease/gguf_format.hpp"
#include "quantease/types.hpp"

namespace quantease::gguf {

// One block of f.block values x: its parameters and the codes llama.cpp stores. `importance` (f.block
// values) selects the imatrix search, nullptr the reference quantizer. `row_sigma2` is sum(x^2)/n over the
// whole row, which the legacy types' imatrix search weighs with (the k-quants use their own block's).
void llama_quantize_block(const Format& f, const float* x, const float* importance, float row_sigma2,
                          BlockParams& params, std::uint8_t* codes);

// A whole row (n a multiple of f.block): blocks[n / f.block], codes[n].
void llama_quantize_row(const Format& f, const float* x, Index n, const float* importance, BlockParams* blocks,
                        std::uint8_t* codes);

}  // namespace quantease::gguf
