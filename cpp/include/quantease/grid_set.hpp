// The grid sets: every representable value of a quantized layer, one grid per row and group, and the one
// interface through which the column loop (gptq_loop.hpp), the QuantEase sweep, RTN and the output read them.
//
// A grid set holds the grid of every (row, group) and a GroupMap saying which group holds each column. Its
// members differ only in how a code becomes a value:
//   AffineGrids     value = scale * (code - zero)      (scale, integer zero per row and group: grid.hpp)
//   CodebookGrids   value = level[code]                (2^bits ascending levels per row and group)
//   GgufGrids       value = mul * level(code) + add    (llama.cpp's block formats, gguf_grids.hpp: mul and add
//                                                       from the block's stored fp16 / integer scales; groups
//                                                       are the type's sub-blocks of W's ORIGINAL columns)
// A grid is fixed up front or chosen by the column loop's grid choice when the loop reaches its group
// (gptq_loop.hpp's GridSetQuantizer).
//
// Every member provides, with r a row of W and g a group:
//   const GroupMap& groups() const;  Index rows() const;
//   Row row(Index r, Index g) const;   one grid: quantize(x) -> code of the nearest value,
//                                      quantize(x, hint) -> the same code, found faster when it is `hint`
//                                      (the entry's previous code), value(code) -> the value;
//   void quantize_lanes(Index r, Index g, Index n, const float* v, float* q, std::uint8_t* codes) const;
//                                      the kRowBatch rows from r (n of them real; the other lanes' outputs are
//                                      ignored) at once: what row(r + l, g) gives, written so that it vectorises;
//   Gathered, static constexpr bool hinted: the grids of any list of rows for one group side by side (the
//                                      QuantEase sweep's view; affine and codebook grids, which the sweep runs
//                                      on): load(set, rows, g), then lanes() ->
//                                      quantize(i, x, hint), value(i, code) for the i-th row of the list;
//                                      `hinted`: whether quantize reads the hint (the sweep then keeps codes).
// Members must be bit-exact: row(), quantize_lanes() and Gathered give the same codes and values, and
// dequantize() (below) rebuilds exactly the values the solvers worked with.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "quantease/grid.hpp"
#include "quantease/parallel.hpp"
#include "quantease/types.hpp"

namespace quantease {

constexpr Index kRowBatch = 8;  // rows whose per-column work runs together, one SIMD lane each

// Which group holds each column. Groups are either consecutive positions of the processing order (GPTQ's
// dynamic groups, QuantEase's affine groups: group j / gs) or ranges of W's original columns whatever the
// processing order (static groups, LeanQuant, codebooks, GGUF blocks: group perm[j] / gs). Without groups
// the whole row is one group (gs = cols).
class GroupMap {
 public:
  GroupMap() = default;
  // One group per row.
  static GroupMap whole_rows(Index cols) { return GroupMap(cols, cols, false, VectorXi64()); }
  // group_size <= 0: one group per row. perm: processing position -> original column (empty: the identity).
  static GroupMap in_processing_order(Index cols, Index group_size, const VectorXi64& perm) {
    return GroupMap(cols, group_size > 0 ? group_size : cols, false, perm);
  }
  static GroupMap of_original_columns(Index cols, Index group_size, const VectorXi64& perm) {
    return GroupMap(cols, group_size > 0 ? group_size : cols, true, perm);
  }

  Index cols() const { return static_cast<Index>(group_.size()); }
  Index size() const { return size_; }  // columns per group (cols without groups)
  Index count() const { return count_; }

  // The group of processing-order column j (a table: the loops ask once per column, and a division costs
  // more than the lookup).
  Index group(Index j) const { return group_[j]; }

  // g_idx: the group of every ORIGINAL column.
  const VectorXi32& column_groups() const { return column_group_; }

 private:
  GroupMap(Index cols, Index size, bool original, const VectorXi64& perm)
      : size_(size), count_(cols > 0 ? cols / size : 0), group_(cols), column_group_(cols) {
    const bool permuted = perm.size() == cols;
    for (Index c = 0; c < cols; ++c) column_group_[c] = static_cast<std::int32_t>(c / size);
    if (permuted && !original)
      for (Index j = 0; j < cols; ++j) column_group_[perm[j]] = static_cast<std::int32_t>(j / size);
    for (Index j = 0; j < cols; ++j) group_[j] = column_group_[permuted ? perm[j] : j];
  }

  Index size_ = 1, count_ = 0;
  std::vector<std::int32_t> group_;  // per processing position
  VectorXi32 column_group_;          // per original column
};

// quantize_lanes of a member whose grids do not vectorise across rows: row() of each real lane in turn (the
// lanes from n on give code 0 and value 0).
template <class GridSet>
void quantize_lanes_by_row(const GridSet& set, Index r, Index g, Index n, const float* v, float* q,
                           std::uint8_t* codes) {
  for (Index l = 0; l < kRowBatch; ++l) {
    q[l] = 0.0f;
    codes[l] = 0;
    if (l < n) {
      const auto grid = set.row(r + l, g);
      codes[l] = grid.quantize(v[l]);
      q[l] = grid.value(codes[l]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Affine grids: scale and integer zero per row and group (grid.hpp's AffineGrid). Stored group-major, rows
// padded to a multiple of kRowBatch with a unit grid, so that a row batch's grids are two contiguous loads.

struct AffineRowGrid {
  AffineGrid grid;
  float maxq;
  std::uint8_t quantize(float x) const { return quantize_code(x, grid, maxq); }
  std::uint8_t quantize(float x, std::uint8_t) const { return quantize_code(x, grid, maxq); }
  float value(std::uint8_t code) const { return dequantize(code, grid); }
};

class AffineGrids {
 public:
  AffineGrids() = default;
  AffineGrids(Index rows, const GroupMap& groups, int bits) : rows_(rows), maxq_(max_code(bits)), groups_(groups) {
    const Index padded = (rows + kRowBatch - 1) / kRowBatch * kRowBatch;
    scale_.setOnes(groups.count(), padded);
    zero_.setZero(groups.count(), padded);
  }

  const GroupMap& groups() const { return groups_; }
  Index rows() const { return rows_; }
  float maxq() const { return maxq_; }

  AffineGrid grid(Index r, Index g) const { return AffineGrid{scale_(g, r), zero_(g, r)}; }
  void set(Index r, Index g, const AffineGrid& grid) {
    scale_(g, r) = grid.scale;
    zero_(g, r) = grid.zero;
  }
  AffineRowGrid row(Index r, Index g) const { return AffineRowGrid{grid(r, g), maxq_}; }
  // Every grid from scales and zeros stored rows x groups (QuantOutput's layout).
  void assign(const RowMatrixXf& scales, const RowMatrixXf& zeros) {
    scale_.leftCols(rows_) = scales.transpose();
    zero_.leftCols(rows_) = zeros.transpose();
  }

  void quantize_lanes(Index r, Index g, Index, const float* v, float* q, std::uint8_t* codes) const {
    const float* s = scale_.row(g).data() + r;
    const float* z = zero_.row(g).data() + r;
    alignas(32) float c[kRowBatch];
    for (Index l = 0; l < kRowBatch; ++l) {
      c[l] = std::clamp(std::nearbyint(v[l] / s[l]) + z[l], 0.0f, maxq_);
      q[l] = s[l] * (c[l] - z[l]);
    }
    for (Index l = 0; l < kRowBatch; ++l) codes[l] = static_cast<std::uint8_t>(c[l]);
  }

  struct Gathered {
    static constexpr bool hinted = false;
    std::vector<float> scale, zero;
    float maxq = 15.0f;
    struct Lanes {
      const float* scale;
      const float* zero;
      float maxq;
      std::uint8_t quantize(Index i, float x, std::uint8_t) const {
        return quantize_code(x, AffineGrid{scale[i], zero[i]}, maxq);
      }
      float value(Index i, std::uint8_t code) const { return dequantize(code, AffineGrid{scale[i], zero[i]}); }
    };
    void load(const AffineGrids& set, const std::vector<Index>& rows, Index g) {
      scale.resize(rows.size());
      zero.resize(rows.size());
      maxq = set.maxq_;
      const float* s = set.scale_.row(g).data();
      const float* z = set.zero_.row(g).data();
      for (std::size_t i = 0; i < rows.size(); ++i) {
        scale[i] = s[rows[i]];
        zero[i] = z[rows[i]];
      }
    }
    Lanes lanes() const { return Lanes{scale.data(), zero.data(), maxq}; }
  };

  // rows x groups, as QuantOutput stores them
  RowMatrixXf scales() const { return scale_.leftCols(rows_).transpose(); }
  RowMatrixXf zeros() const { return zero_.leftCols(rows_).transpose(); }

 private:
  Index rows_ = 0;
  float maxq_ = 15.0f;
  GroupMap groups_;
  RowMatrixXf scale_, zero_;  // groups x padded rows
};

// ---------------------------------------------------------------------------------------------------------
// Codebook grids: 2^bits ascending levels per row and group (row r, group g at r * groups + g, LeanQuant's
// layout), each with its float32 midpoints (t_i + t_{i+1}) / 2 and +inf after the last: the nearest level of
// x is the number of midpoints below x, so a value on a midpoint takes the lower level.

// The index of the nearest level: the number of the k midpoints (the last +inf) below x. Up to 32 levels
// counted branch-free (a binary search mispredicts about every other step), beyond by a branch-free binary
// search (an index multiply: GCC turns a ternary of pointers into a branch).
inline Index nearest_level(const float* mid, Index k, float x) {
  if (k <= 32) {
    Index t = 0;
    for (Index i = 0; i < k; ++i) t += mid[i] < x;
    return t;
  }
  const float* base = mid;
  Index len = k;
  while (len > 1) {
    const Index half = len / 2;
    base += half * static_cast<Index>(base[half - 1] < x);
    len -= half;
  }
  return (base - mid) + (*base < x);
}

struct CodebookRowGrid {
  const float* level;
  const float* mid;
  Index k;  // levels
  std::uint8_t quantize(float x) const { return static_cast<std::uint8_t>(nearest_level(mid, k, x)); }
  // Most entries keep their level from one sweep to the next: test the hint's interval (mid[t-1], mid[t]]
  // first (two independent loads).
  std::uint8_t quantize(float x, std::uint8_t hint) const {
    const Index t = hint;
    if ((t == 0 || mid[t - 1] < x) && x <= mid[t]) return hint;
    return quantize(x);
  }
  float value(std::uint8_t code) const { return level[code]; }
};

class CodebookGrids {
 public:
  CodebookGrids() = default;
  // levels: (rows * groups) x 2^bits, ascending per row.
  CodebookGrids(RowMatrixXf levels, const GroupMap& groups)
      : rows_(groups.count() > 0 ? levels.rows() / groups.count() : 0), groups_(groups), level_(std::move(levels)) {
    mid_.resize(level_.rows(), level_.cols());
    for (Index i = 0; i < level_.rows(); ++i) update_midpoints(i);
  }

  const GroupMap& groups() const { return groups_; }
  Index rows() const { return rows_; }
  Index levels() const { return level_.cols(); }
  const RowMatrixXf& level_matrix() const { return level_; }
  Index index(Index r, Index g) const { return r * groups_.count() + g; }

  CodebookRowGrid row(Index r, Index g) const {
    const Index i = index(r, g);
    return CodebookRowGrid{level_.row(i).data(), mid_.row(i).data(), level_.cols()};
  }
  // The levels of (row, group) at `i = index(r, g)`, to be changed in place; update_midpoints(i) after.
  float* levels_at(Index i) { return level_.row(i).data(); }
  void update_midpoints(Index i) {
    const Index k = level_.cols();
    for (Index t = 0; t + 1 < k; ++t) mid_(i, t) = 0.5f * (level_(i, t) + level_(i, t + 1));
    mid_(i, k - 1) = std::numeric_limits<float>::infinity();
  }

  void quantize_lanes(Index r, Index g, Index n, const float* v, float* q, std::uint8_t* codes) const {
    quantize_lanes_by_row(*this, r, g, n, v, q, codes);
  }

  struct Gathered {
    static constexpr bool hinted = true;
    std::vector<const float*> level, mid;
    Index k = 0;
    struct Lanes {
      const float* const* level;
      const float* const* mid;
      Index k;
      std::uint8_t quantize(Index i, float x, std::uint8_t hint) const {
        return CodebookRowGrid{level[i], mid[i], k}.quantize(x, hint);
      }
      float value(Index i, std::uint8_t code) const { return level[i][code]; }
    };
    // (a reload is one pair of pointers per row: with act-order and groups of original columns the group
    // may change at every column)
    void load(const CodebookGrids& set, const std::vector<Index>& rows, Index g) {
      level.resize(rows.size());
      mid.resize(rows.size());
      k = set.level_.cols();
      for (std::size_t i = 0; i < rows.size(); ++i) {
        const Index at = set.index(rows[i], g);
        level[i] = set.level_.row(at).data();
        mid[i] = set.mid_.row(at).data();
      }
    }
    Lanes lanes() const { return Lanes{level.data(), mid.data(), k}; }
  };

 private:
  Index rows_ = 0;
  GroupMap groups_;
  RowMatrixXf level_, mid_;  // (rows * groups) x 2^bits each
};

// ---------------------------------------------------------------------------------------------------------
// The one dequantize: codes (rows x cols, W's column order) on a grid set, column c in group g_idx[c]
// (groups().column_groups()), to the weights the solver worked with, bit for bit.
template <class GridSet>
RowMatrixXf dequantize(const GridSet& set, const RowMatrixU8& codes, const VectorXi32& g_idx) {
  const Index rows = codes.rows(), cols = codes.cols();
  RowMatrixXf weight(rows, cols);
  parallel_chunks(rows, 16, [&](Index r0, Index r1) {
    for (Index r = r0; r < r1; ++r)
      for (Index c = 0; c < cols; ++c) weight(r, c) = set.row(r, g_idx[c]).value(codes(r, c));
  });
  return weight;
}

}  // namespace quantease
