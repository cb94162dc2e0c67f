// The quantizers of LeanQuant's column loop (gptq_loop.hpp's Quantizer protocol): the fixed grid of the row
// and of the group holding the column's ORIGINAL column (private header).
#pragma once

#include <cstdint>
#include <vector>

#include "quantease/gptq_loop.hpp"
#include "quantease/grid.hpp"
#include "quantease/sorted_row.hpp"

namespace quantease::leanquant_detail {

// The group of processing column j's original column (0 without groups): one integer division, which the
// row batches do once per column.
inline Index column_group(const VectorXi64& perm, Index gs, Index j) { return gs > 0 ? perm[j] / gs : 0; }

// The kRowBatch lanes from panel row r of one column: codes[l] = quant(r + l, v[l], q[l]); lanes past the
// panel's `rows` are left at zero.
template <class Quant>
void quantize_lanes(Index rows, Index r, const float* v, float* q, std::uint8_t* codes, Quant quant) {
  for (Index l = 0; l < kRowBatch; ++l) {
    q[l] = 0.0f;
    codes[l] = 0;
    if (r + l < rows) codes[l] = quant(r + l, v[l], q[l]);
  }
}

// quant(w) = the nearest entry of the row's (and group's) ascending codebook; a value on a midpoint takes
// the lower entry. Midpoints in float32, as the oracle.
class CodebookQuantizer {
 public:
  CodebookQuantizer(const RowMatrixXf& cb, const RowMatrixXf& mids, Index row0, Index rows, Index groups,
                    Index gs, const VectorXi64& perm)
      : cb_(cb), mids_(mids), row0_(row0), rows_(rows), groups_(groups), gs_(gs), perm_(perm) {}
  void fit_group(Index, Index, const float*, Index) {}
  std::uint8_t quantize(Index r, Index j, float w, float& q) const {
    return quantize_at(entry(r, column_group(perm_, gs_, j)), w, q);
  }
  // The column loop's row-batch call (its corrections then run in SIMD lanes): the column's group once.
  void quantize_batch(Index r, Index j, const float* v, float* q, std::uint8_t* codes) const {
    const Index g = column_group(perm_, gs_, j);
    quantize_lanes(rows_, r, v, q, codes,
                   [&](Index rr, float w, float& qq) { return quantize_at(entry(rr, g), w, qq); });
  }

 private:
  Index entry(Index r, Index g) const { return (row0_ + r) * groups_ + g; }
  std::uint8_t quantize_at(Index idx, float w, float& q) const {
    const float* m = mids_.row(idx).data();
    // the entry = the number of midpoints below w, counted branch-free (a binary search mispredicts about
    // every other step); past 32 entries a branch-free binary search
    Index t = 0;
    if (mids_.cols() <= 32) {
      for (Index i = 0; i < mids_.cols(); ++i) t += m[i] < w;
    } else {
      t = search_sorted<false>(m, 0, mids_.cols(), w);
    }
    q = cb_(idx, t);
    return static_cast<std::uint8_t>(t);
  }

  const RowMatrixXf& cb_;
  const RowMatrixXf& mids_;
  Index row0_, rows_, groups_, gs_;
  const VectorXi64& perm_;
};

// quant(w) on the fixed affine grid of the row (and group of the original column).
class StaticAffineQuantizer {
 public:
  StaticAffineQuantizer(const std::vector<AffineGrid>& grids, float maxq, Index row0, Index rows, Index groups,
                        Index gs, const VectorXi64& perm)
      : grids_(grids), maxq_(maxq), row0_(row0), rows_(rows), groups_(groups), gs_(gs), perm_(perm) {}
  void fit_group(Index, Index, const float*, Index) {}
  std::uint8_t quantize(Index r, Index j, float w, float& q) const {
    return quantize_with(grid(r, column_group(perm_, gs_, j)), w, q);
  }
  // The row batch: the column's group once, then the lanes.
  void quantize_batch(Index r, Index j, const float* v, float* q, std::uint8_t* codes) const {
    const Index g = column_group(perm_, gs_, j);
    quantize_lanes(rows_, r, v, q, codes,
                   [&](Index rr, float w, float& qq) { return quantize_with(grid(rr, g), w, qq); });
  }

 private:
  const AffineGrid& grid(Index r, Index g) const { return grids_[(row0_ + r) * groups_ + g]; }
  std::uint8_t quantize_with(const AffineGrid& g, float w, float& q) const {
    const std::uint8_t code = quantize_code(w, g, maxq_);
    q = dequantize(code, g);
    return code;
  }

  const std::vector<AffineGrid>& grids_;
  float maxq_;
  Index row0_, rows_, groups_, gs_;
  const VectorXi64& perm_;
};

}  // namespace quantease::leanquant_detail
