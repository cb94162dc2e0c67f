// llama.cpp's GGUF block formats (gguf_format.hpp) as a member of the grid-set family (grid_set.hpp): one grid
// per row and sub-block -- a GroupMap of W's original columns whose groups are the type's sub-blocks -- with
// value(code) the exact float32 arithmetic of gguf_format.hpp. A block's sub-block grids are set together from
// its stored parameters (set_block): fixed before a solve, or chosen by the column loop's grid choice when it
// reaches the block (gguf_solve.cpp). The QuantEase sweep reads these grids as CodebookGrids (each sub-block's
// exact values as its levels: quantease(gguf=) in the Python layer), so GgufGrids has no Gathered view.
#pragma once

#include <cstdint>
#include <vector>

#include "quantease/gguf_format.hpp"
#include "quantease/grid_set.hpp"

namespace quantease::gguf {

struct GgufRowGrid {
  const Format* format;
  SubGrid grid;
  std::uint8_t quantize(float x) const { return static_cast<std::uint8_t>(nearest_code(*format, grid, x)); }
  std::uint8_t quantize(float x, std::uint8_t) const { return quantize(x); }
  float value(std::uint8_t code) const { return gguf::value(*format, grid, code); }
};

class GgufGrids {
 public:
  // perm: processing position -> original column (empty: the identity); groups follow original columns.
  GgufGrids(Type type, Index rows, Index cols, const VectorXi64& perm)
      : format_(&gguf::format(type)),
        rows_(rows),
        groups_(GroupMap::of_original_columns(cols, format_->sub, perm)),
        blocks_per_row_(cols / format_->block),
        blocks_(rows * blocks_per_row_),
        grids_(rows * groups_.count()) {}

  const GroupMap& groups() const { return groups_; }
  Index rows() const { return rows_; }
  const Format& format() const { return *format_; }
  Index blocks_per_row() const { return blocks_per_row_; }
  // Every block's stored parameters, rows x blocks_per_row(), row-major.
  const std::vector<BlockParams>& blocks() const { return blocks_; }
  const BlockParams& block(Index r, Index b) const { return blocks_[r * blocks_per_row_ + b]; }

  // Block b of row r from its stored parameters, and its sub-blocks' grids with them.
  void set_block(Index r, Index b, const BlockParams& params) {
    blocks_[r * blocks_per_row_ + b] = params;
    const int subs = format_->subs();
    for (int s = 0; s < subs; ++s) grids_[r * groups_.count() + b * subs + s] = sub_grid(*format_, params, s);
  }

  GgufRowGrid row(Index r, Index g) const { return GgufRowGrid{format_, grids_[r * groups_.count() + g]}; }

  void quantize_lanes(Index r, Index g, Index n, const float* v, float* q, std::uint8_t* codes) const {
    quantize_lanes_by_row(*this, r, g, n, v, q, codes);
  }

 private:
  const Format* format_;
  Index rows_;
  GroupMap groups_;
  Index blocks_per_row_;
  std::vector<BlockParams> blocks_;  // rows x blocks_per_row_, row-major
  std::vector<SubGrid> grids_;       // rows x sub-blocks, row-major
};

}  // namespace quantease::gguf
