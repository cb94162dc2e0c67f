// The GPTQ column loop (Frantar et al. 2023, Alg. 1) over a panel of rows, generic in the grid.
//
// Columns are processed in blocks of B in processing order. For column j of every row:
//   q = quant(w_j);  err = (w_j - q) / U_jj;  w_{j+1..block end} -= err * U_{j, j+1..block end}
// and after each block the rest of the row gets the lazy batch update W[:, end:] -= Err U[block, end:]
// (one matrix product). Rows are independent, so a panel is a self-contained problem: the caller runs
// panels on separate threads.
//
// A Quantizer provides
//   void fit_group(Index row, Index j, const float* values, Index n)  // dynamic groups: at j % gs == 0
//   std::uint8_t quantize(Index row, Index j, float w, float& q)      // code and grid value of w
// where `row` is the panel row and `values` are the group's current weights (with every pending update
// applied) or, in reference mode, the stale values the authors' code reads.
#pragma once

#include <vector>

#include "quantease/types.hpp"

namespace quantease {

struct ColumnLoopOptions {
  Index block_size = 128;
  Index group_size = -1;       // > 0: call fit_group at the start of every group (processing order)
  bool stale_group_stats = false;  // reference quirk: group stats from the block-start values
};

// Wp: panel rows x cols in processing order, updated in place. U: cols x cols upper inverse factor.
// codes_out(row, j): the code of processing-order column j.
template <class Quantizer>
void gptq_column_loop(RowMatrixXf& Wp, const RowMatrixXf& U, const ColumnLoopOptions& opt, Quantizer& quant,
                      RowMatrixU8& codes_out) {
  const Index rows = Wp.rows(), cols = Wp.cols();
  const Index B = std::max<Index>(1, opt.block_size);
  const Index gs = opt.group_size;
  RowMatrixXf Err(rows, B);
  RowMatrixXf snapshot;
  std::vector<float> group_values(gs > 0 ? gs : 0);
  for (Index i1 = 0; i1 < cols; i1 += B) {
    const Index i2 = std::min(i1 + B, cols), nb = i2 - i1;
    if (opt.stale_group_stats && gs > 0) snapshot = Wp.middleCols(i1, nb);
    for (Index r = 0; r < rows; ++r) {
      float* w = Wp.row(r).data();
      float* e = Err.row(r).data();
      for (Index j = i1; j < i2; ++j) {
        if (gs > 0 && j % gs == 0) {
          const Index end = std::min(j + gs, cols);
          for (Index c = j; c < end; ++c) {
            float v;
            if (c < i2) {
              v = opt.stale_group_stats ? snapshot(r, c - i1) : w[c];
            } else {
              v = w[c];
              // Beyond this block the lazy update is still pending: apply this row's share now.
              if (!opt.stale_group_stats)
                for (Index k = i1; k < j; ++k) v -= e[k - i1] * U(k, c);
            }
            group_values[c - j] = v;
          }
          quant.fit_group(r, j, group_values.data(), end - j);
        }
        const float wj = w[j];
        float q;
        codes_out(r, j) = quant.quantize(r, j, wj, q);
        const float err = (wj - q) / U(j, j);
        e[j - i1] = err;
        const float* u = U.row(j).data();
        for (Index c = j + 1; c < i2; ++c) w[c] -= err * u[c];
      }
    }
    if (i2 < cols) {
      Wp.rightCols(cols - i2).noalias() -= Err.leftCols(nb) * U.block(i1, i2, nb, cols - i2);
    }
  }
}

}  // namespace quantease
