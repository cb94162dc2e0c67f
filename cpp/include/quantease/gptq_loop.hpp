// The GPTQ column loop (Frantar et al. 2023, Alg. 1) over a panel of rows, generic in the grid.
//
// Columns are processed in blocks of B in processing order. Column j of every row is quantized from
//   v_j = w_j + sum_{k<j} d_k P_kj,   d_k = w_k - q_k  (w the original weights; P from linalg.hpp)
// -- the authors' OBS updates, accumulated in A. Inside an inner block of kInnerBlock columns the corrections
// are applied column by column; after it one small product brings the rest of the block up to date, and after
// each block the rest of the row gets the lazy batch update A[:, end:] += D P[block, end:] (one matrix
// product). Rows are independent, so a panel is a self-contained problem: the caller runs panels on
// separate threads.
//
// A Quantizer provides
//   void fit_group(Index row, Index j, const float* values, Index n)  // dynamic groups: at j % gs == 0
//   std::uint8_t quantize(Index row, Index j, float w, float& q)      // code and grid value of w
// where `row` is the panel row and `values` are the group's current values v (with every pending update
// applied) or, in reference mode, the stale values the authors' code reads.
#pragma once

#include <vector>

#include "quantease/gemm.hpp"
#include "quantease/types.hpp"

namespace quantease {

struct ColumnLoopOptions {
  Index block_size = 128;
  Index group_size = -1;       // > 0: call fit_group at the start of every group (processing order)
  bool stale_group_stats = false;  // reference quirk: group stats from the block-start values
  // Optional (cols x group_size): rows [g gs, (g+1) gs) hold M_g = (I + N_g)^-1, N_g the strict upper part of
  // P's diagonal block of group g (group_substitution_inverses). A group that starts where a block starts then
  // gets its values for the whole panel from one triangular product instead of a substitution per row.
  const RowMatrixXf* group_inverse = nullptr;
};

constexpr Index kInnerBlock = 32;  // columns per inner block of the column loop

// M_g = (I + strict_upper(P[g gs:(g+1) gs, same]))^-1 for every group, stacked (cols x gs); float64 inside.
inline RowMatrixXf group_substitution_inverses(const RowMatrixXf& P, Index gs) {
  const Index cols = P.rows();
  RowMatrixXf M(cols, gs);
  for (Index c0 = 0; c0 < cols; c0 += gs) {
    // UnitUpper reads only the strict upper part: P's diagonal (U_jj) stands in for the unit diagonal.
    const Eigen::MatrixXd T = P.block(c0, c0, gs, gs).cast<double>();
    const Eigen::MatrixXd inv = T.triangularView<Eigen::UnitUpper>().solve(Eigen::MatrixXd::Identity(gs, gs));
    M.middleRows(c0, gs) = inv.cast<float>().triangularView<Eigen::Upper>();
  }
  return M;
}

// Wp: panel rows x cols in processing order (not modified). P: cols x cols propagation factor.
// codes_out(row, j): the code of processing-order column j.
template <class Quantizer>
void gptq_column_loop(const RowMatrixXf& Wp, const RowMatrixXf& P, const ColumnLoopOptions& opt,
                      Quantizer& quant, RowMatrixU8& codes_out) {
  const Index rows = Wp.rows(), cols = Wp.cols();
  const Index B = std::max<Index>(1, opt.block_size);
  const Index gs = opt.group_size;
  // Reference mode reads block-start statistics (the quirk), which the inner blocks would not keep.
  const Index b = opt.stale_group_stats ? B : std::min<Index>(B, kInnerBlock);
  RowMatrixXf A = RowMatrixXf::Zero(rows, cols);  // pending corrections: v = Wp + A
  RowMatrixXf D(rows, B);                          // this block's w - q
  RowMatrixXf snapshot;
  std::vector<float> group_values(gs > 0 ? gs : 0);
  std::vector<float> delta(gs > 0 ? gs + B : 0);
  RowMatrixXf start_delta;  // the group starting at the block start: its delta for every panel row
  for (Index i1 = 0; i1 < cols; i1 += B) {
    const Index i2 = std::min(i1 + B, cols), nb = i2 - i1;
    if (opt.stale_group_stats && gs > 0) snapshot = A.middleCols(i1, nb);
    const bool group_at_start = gs > 0 && !opt.stale_group_stats && opt.group_inverse && i1 % gs == 0;
    if (group_at_start) {
      // delta = a (I + N)^-1 (the substitution below, for all rows at once); a is current at the block start
      const Index glen = std::min(gs, cols - i1);
      start_delta.noalias() = A.middleCols(i1, glen) *
                              opt.group_inverse->block(i1, 0, glen, glen).template triangularView<Eigen::Upper>();
    }
    // Inner blocks of `b` columns: each row's entry-by-entry updates stay inside the inner block, and one
    // small product per inner block brings the rest of the block up to date (less scalar work per entry).
    for (Index s1 = i1; s1 < i2; s1 += b) {
      const Index s2 = std::min(s1 + b, i2);
      for (Index r = 0; r < rows; ++r) {
        const float* w = Wp.row(r).data();
        float* a = A.row(r).data();
        float* d = D.row(r).data();
        Index next_group = gs > 0 ? (s1 + gs - 1) / gs * gs : cols;  // first group start >= s1
        for (Index j = s1; j < s2; ++j) {
          if (j == next_group) {
            next_group += gs;
            // The group's values as the authors' loop holds them at time t (t = j, or the block start in
            // reference mode): columns >= t carry the OBS compensation of the columns before t,
            //   v_c = w_c + delta_c,  delta_c = a_c - sum_{t<=k<c} P_kc delta_k,  a_c = sum_{k<t} d_k P_kc
            // (a forward substitution with C's diagonal block: P accumulates only each column's final value).
            const Index t = opt.stale_group_stats ? i1 : j;
            const Index end = std::min(j + gs, cols);
            if (group_at_start && j == i1) {
              for (Index c = j; c < end; ++c) group_values[c - j] = w[c] + start_delta(r, c - j);
            } else {
              for (Index c = t; c < end; ++c) {
                float ac;
                if (c < s2) {
                  ac = opt.stale_group_stats ? snapshot(r, c - i1) : a[c];
                } else {
                  ac = a[c];
                  // Updates still pending for c (from the inner block, or the whole block beyond it): add now.
                  for (Index k = c < i2 ? s1 : i1; k < t; ++k) ac += d[k - i1] * P(k, c);
                }
                delta[c - t] = ac;
              }
              for (Index k = t; k < end; ++k) {
                const float dk = delta[k - t];
                const float* p = P.row(k).data();
                for (Index c = k + 1; c < end; ++c) delta[c - t] -= p[c] * dk;
              }
              for (Index c = j; c < end; ++c) group_values[c - j] = w[c] + delta[c - t];
            }
            quant.fit_group(r, j, group_values.data(), end - j);
          }
          float q;
          codes_out(r, j) = quant.quantize(r, j, w[j] + a[j], q);
          const float dj = w[j] - q;
          d[j - i1] = dj;
          const float* p = P.row(j).data();
          for (Index c = j + 1; c < s2; ++c) a[c] += dj * p[c];
        }
      }
      if (s2 < i2) {
        gemm_add(A.block(0, s2, rows, i2 - s2), 1.0f, D.middleCols(s1 - i1, s2 - s1),
                 P.block(s1, s2, s2 - s1, i2 - s2));
      }
    }
    if (i2 < cols) {
      gemm_add(A.rightCols(cols - i2), 1.0f, D.leftCols(nb), P.block(i1, i2, nb, cols - i2));
    }
  }
}

}  // namespace quantease
