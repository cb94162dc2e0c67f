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
// applied) or, in reference mode, the stale values the authors' code reads. A Quantizer that also provides
// quantize_batch (below) gets its per-column work done kRowBatch rows at a time, in SIMD lanes.
// GridSetQuantizer (below) is that Quantizer for any grid set of grid_set.hpp.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "quantease/gemm.hpp"
#include "quantease/grid_set.hpp"
#include "quantease/parallel.hpp"
#include "quantease/processing_order.hpp"
#include "quantease/types.hpp"

namespace quantease {

struct ColumnLoopOptions {
  Index block_size = 128;
  Index group_size = -1;           // > 0: call fit_group at the start of every group (processing order)
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
  parallel_chunks(cols, gs, [&](Index c0, Index c1) {
    // UnitUpper reads only the strict upper part: P's diagonal (U_jj) stands in for the unit diagonal.
    const Eigen::MatrixXd T =
        P.block(c0, c0, c1 - c0, c1 - c0).triangularView<Eigen::Upper>().toDenseMatrix().cast<double>();
    const Eigen::MatrixXd inv = T.triangularView<Eigen::UnitUpper>().solve(Eigen::MatrixXd::Identity(c1 - c0, c1 - c0));
    M.block(c0, 0, c1 - c0, c1 - c0) = inv.cast<float>().triangularView<Eigen::Upper>();
  });
  return M;
}

// One column of a row batch as a SIMD value (GCC/Clang vector extension: one AVX register with
// -march=native, a pair of SSE registers otherwise). Written out so that the compiler vectorizes across the
// rows, not along the columns.
using RowLanes = float __attribute__((vector_size(kRowBatch * sizeof(float))));

// Buffers of one column-loop call, kept by the caller and reused across the row panels a thread runs:
// fresh pages cost more to fault in than the loop spends on a panel's per-column work.
struct ColumnLoopWorkspace {
  RowMatrixXf A;            // pending corrections: v = Wp + A
  RowMatrixXf D;            // this block's w - q
  RowMatrixXf snapshot;     // reference mode: the block-start corrections
  RowMatrixXf start_delta;  // the group starting at the block start: its delta for every panel row
  std::vector<float> group_values, delta;
  std::vector<RowLanes> tile_w, tile_a;  // the row batch's w and a over the inner block, a column each
};

namespace detail {
// Whether the Quantizer also offers the row-batch call
//   void quantize_batch(Index row, Index j, const float* v, float* q, std::uint8_t* codes)
// for kRowBatch consecutive panel rows starting at `row` (lanes past the panel's end hold zeros and their
// outputs are ignored); it must give what quantize() gives row by row.
template <class Q, class = void>
struct has_quantize_batch : std::false_type {};
template <class Q>
struct has_quantize_batch<
    Q, std::void_t<decltype(std::declval<Q&>().quantize_batch(Index{}, Index{}, std::declval<const float*>(),
                                                              std::declval<float*>(), std::declval<std::uint8_t*>()))>>
    : std::true_type {};
}  // namespace detail

// The grid choice of a grid set whose grids are all fixed before the loop.
struct FixedGrids {
  template <class GridSet>
  void operator()(GridSet&, Index, Index, const float*, Index) const {}
};

// The Quantizer of the rows [row0, row0 + rows) of a grid set (panel row r is the set's row row0 + r).
// choose(set, row, group, values, n) sets the grid of a group when the loop reaches its start (dynamic
// groups, ColumnLoopOptions::group_size); FixedGrids when every grid is fixed up front.
template <class GridSet, class ChooseGrid = FixedGrids>
class GridSetQuantizer {
 public:
  GridSetQuantizer(GridSet& set, Index row0, Index rows, ChooseGrid choose = ChooseGrid())
      : set_(set), row0_(row0), rows_(rows), choose_(std::move(choose)) {}

  void fit_group(Index r, Index j, const float* values, Index n) {
    choose_(set_, row0_ + r, set_.groups().group(j), values, n);
  }
  std::uint8_t quantize(Index r, Index j, float w, float& q) const {
    const auto grid = set_.row(row0_ + r, set_.groups().group(j));
    const std::uint8_t code = grid.quantize(w);
    q = grid.value(code);
    return code;
  }
  void quantize_batch(Index r, Index j, const float* v, float* q, std::uint8_t* codes) const {
    set_.quantize_lanes(row0_ + r, set_.groups().group(j), rows_ - r, v, q, codes);
  }

 private:
  GridSet& set_;
  Index row0_, rows_;
  ChooseGrid choose_;
};

// Wp: panel rows x cols in processing order (not modified). P: cols x cols propagation factor.
// codes_out(row, j): the code of processing-order column j.
template <class Quantizer>
void gptq_column_loop(const RowMatrixXf& Wp, const RowMatrixXf& P, const ColumnLoopOptions& opt, Quantizer& quant,
                      RowMatrixU8& codes_out, ColumnLoopWorkspace& ws) {
  const Index rows = Wp.rows(), cols = Wp.cols();
  const Index B = std::max<Index>(1, opt.block_size);
  const Index gs = opt.group_size;
  // Reference mode reads block-start statistics (the quirk), which the inner blocks would not keep.
  const Index b = opt.stale_group_stats ? B : std::min<Index>(B, kInnerBlock);
  // Row batches: each column's quantization and its corrections inside the inner block run across
  // kRowBatch rows at once (the same arithmetic per row, in SIMD lanes) instead of row by row.
  constexpr bool kBatchable = detail::has_quantize_batch<Quantizer>::value;
  const bool batched = kBatchable && !opt.stale_group_stats;
  RowMatrixXf& A = ws.A;
  RowMatrixXf& D = ws.D;
  A.setZero(rows, cols);
  D.resize(rows, B);
  ws.group_values.resize(gs > 0 ? gs : 0);
  ws.delta.resize(gs > 0 ? gs + B : 0);
  float* group_values = ws.group_values.data();
  float* delta = ws.delta.data();
  if (batched) {
    ws.tile_w.resize(b);
    ws.tile_a.resize(b);
  }
  for (Index i1 = 0; i1 < cols; i1 += B) {
    const Index i2 = std::min(i1 + B, cols), nb = i2 - i1;
    if (opt.stale_group_stats && gs > 0) ws.snapshot = A.middleCols(i1, nb);
    const bool group_at_start = gs > 0 && !opt.stale_group_stats && opt.group_inverse && i1 % gs == 0;
    if (group_at_start) {
      // delta = a (I + N)^-1 (the substitution below, for all rows at once); a is current at the block start
      const Index glen = std::min(gs, cols - i1);
      ws.start_delta = A.middleCols(i1, glen);
      trmm_right_upper(ws.start_delta, opt.group_inverse->block(i1, 0, glen, glen));
    }
    // Fits row r's grid for the group starting at column j of the inner block [s1, s2): its values as the
    // authors' loop holds them at time t (t = j, or the block start in reference mode): columns >= t carry
    // the OBS compensation of the columns before t,
    //   v_c = w_c + delta_c,  delta_c = a_c - sum_{t<=k<c} P_kc delta_k,  a_c = sum_{k<t} d_k P_kc
    // (a forward substitution with C's diagonal block: P accumulates only each column's final value).
    // Reads A's row r current up to s2 and D's row r up to j.
    const auto fit_group_at = [&](Index r, Index j, Index s1, Index s2) {
      const float* w = Wp.row(r).data();
      const float* a = A.row(r).data();
      const float* d = D.row(r).data();
      const Index t = opt.stale_group_stats ? i1 : j;
      const Index end = std::min(j + gs, cols);
      if (group_at_start && j == i1) {
        for (Index c = j; c < end; ++c) group_values[c - j] = w[c] + ws.start_delta(r, c - j);
      } else {
        for (Index c = t; c < end; ++c) {
          float ac;
          if (c < s2) {
            ac = opt.stale_group_stats ? ws.snapshot(r, c - i1) : a[c];
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
      quant.fit_group(r, j, group_values, end - j);
    };
    // Inner blocks of `b` columns: each row's entry-by-entry updates stay inside the inner block, and one
    // small product per inner block brings the rest of the block up to date (less scalar work per entry).
    for (Index s1 = i1; s1 < i2; s1 += b) {
      const Index s2 = std::min(s1 + b, i2), sb = s2 - s1;
      const Index first_group = gs > 0 ? (s1 + gs - 1) / gs * gs : cols;  // first group start >= s1
      if constexpr (kBatchable) {
        if (batched) {
          // The batch's rows over the inner block, a column per RowLanes: lane l is panel row r0 + l.
          RowLanes* tw = ws.tile_w.data();
          RowLanes* ta = ws.tile_a.data();
          for (Index r0 = 0; r0 < rows; r0 += kRowBatch) {
            const Index nr = std::min(kRowBatch, rows - r0);
            if (nr < kRowBatch) {  // lanes past the panel's end stay zero
              for (Index c = 0; c < sb; ++c) tw[c] = ta[c] = RowLanes{};
            }
            for (Index l = 0; l < nr; ++l) {
              const float* w = Wp.row(r0 + l).data() + s1;
              const float* a = A.row(r0 + l).data() + s1;
              for (Index c = 0; c < sb; ++c) {
                tw[c][l] = w[c];
                ta[c][l] = a[c];
              }
            }
            Index next_group = first_group;
            for (Index j = s1; j < s2; ++j) {
              if (j == next_group) {
                next_group += gs;
                // The group's values read A: bring the batch's rows of it up to date first.
                for (Index c = j; c < s2; ++c)
                  for (Index l = 0; l < nr; ++l) A(r0 + l, c) = ta[c - s1][l];
                for (Index l = 0; l < nr; ++l) fit_group_at(r0 + l, j, s1, s2);
              }
              const RowLanes wj = tw[j - s1];
              const RowLanes v = wj + ta[j - s1];
              alignas(sizeof(RowLanes)) float vf[kRowBatch], qf[kRowBatch];
              std::uint8_t code[kRowBatch];
              std::memcpy(vf, &v, sizeof v);
              quant.quantize_batch(r0, j, vf, qf, code);
              RowLanes q;
              std::memcpy(&q, qf, sizeof q);
              const RowLanes dj = wj - q;
              for (Index l = 0; l < nr; ++l) {
                codes_out(r0 + l, j) = code[l];
                D(r0 + l, j - i1) = dj[l];
              }
              const float* p = P.row(j).data();
              for (Index c = j + 1; c < s2; ++c) ta[c - s1] += dj * p[c];
            }
          }
        }
      }
      if (!batched) {
        for (Index r = 0; r < rows; ++r) {
          const float* w = Wp.row(r).data();
          float* a = A.row(r).data();
          float* d = D.row(r).data();
          Index next_group = first_group;
          for (Index j = s1; j < s2; ++j) {
            if (j == next_group) {
              next_group += gs;
              fit_group_at(r, j, s1, s2);
            }
            float q;
            codes_out(r, j) = quant.quantize(r, j, w[j] + a[j], q);
            const float dj = w[j] - q;
            d[j - i1] = dj;
            const float* p = P.row(j).data();
            for (Index c = j + 1; c < s2; ++c) a[c] += dj * p[c];
          }
        }
      }
      if (s2 < i2) {
        gemm_add(A.block(0, s2, rows, i2 - s2), 1.0f, D.middleCols(s1 - i1, sb), P.block(s1, s2, sb, i2 - s2));
      }
    }
    if (i2 < cols) {
      gemm_add(A.rightCols(cols - i2), 1.0f, D.leftCols(nb), P.block(i1, i2, nb, cols - i2));
    }
  }
}

// Rows per task of run_column_loop: fixed, so results do not depend on the thread count. Every panel
// repacks the factor's blocks for its lazy updates; 128 rows halve that against 64 and keep a panel's
// corrections in cache.
constexpr Index kLoopPanelRows = 128;

// The column loop over every row of W: fixed panels of kLoopPanelRows rows on all threads, each panel's rows
// in processing order (dead columns zeroed), its quantizer from make_quantizer(r0, rows) (panel row r is W's
// row r0 + r), and its codes written back in W's column order into codes_out. Buffers are per thread and
// reused across the panels it runs.
template <class MakeQuantizer>
void run_column_loop(const ConstRowMatrixRef<float>& W, const ProcessingOrder& order, const RowMatrixXf& P,
                     const ColumnLoopOptions& opt, MakeQuantizer&& make_quantizer, RowMatrixU8& codes_out) {
  const Index rows = W.rows(), cols = W.cols();
  struct PanelBuffers {
    RowMatrixXf Wp;
    RowMatrixU8 codes;
    ColumnLoopWorkspace loop;
  };
  std::vector<PanelBuffers> buffers(max_threads());
  parallel_chunks(rows, kLoopPanelRows, [&](Index r0, Index r1) {
    const Index pr = r1 - r0;
    PanelBuffers& buf = buffers[thread_index()];
    buf.Wp.resize(pr, cols);
    order.gather_rows(W, r0, true, buf.Wp);
    auto quant = make_quantizer(r0, pr);
    buf.codes.resize(pr, cols);
    gptq_column_loop(buf.Wp, P, opt, quant, buf.codes, buf.loop);
    order.scatter_rows(buf.codes, r0, codes_out);
  });
}

}  // namespace quantease
