// QuantEase's coordinate sweeps over G = (T − Ŵ) Σ, blocked and split into row panels (see quantease.hpp).
//
// Columns go in blocks of B (processing order). Inside a block only G[:, block] is updated, on a transposed
// copy of the block's columns (a column of the active rows is then contiguous: the steps vectorise across
// rows, and no column walks rows cols floats apart through one cache set); after the block,
// G[:, outside] −= Δ_block Σ[block, outside] — one GEMM per row panel when Δ is dense, one axpy per changed
// entry when it is sparse (after the first sweeps most quantized entries stop changing). Rows are split into
// fixed panels (parallel_chunks), so the result is bit-identical for any thread count.
// Less work than a dense sweep each, same iterates (up to float32 round-off):
//   * a relaxed sweep and the quantized sweep after it run as a pair at the cost of about one dense sweep
//     (SweepKind::relax_scratch, then requantize);
//   * a quantized sweep after a quantized sweep skips the rows the last one left unchanged: each row is an
//     independent problem and such a row is a fixed point (exactly the same result).
#pragma once

#include <cstdint>
#include <vector>

#include "problem.hpp"
#include "quantease/grid_set.hpp"

namespace quantease::qe {

// quantize / relax: the plain sweeps (G follows Ŵ). Without outliers a relaxed sweep and the quantized sweep
// after it run as a pair that costs about one dense sweep instead of two:
//   relax_scratch: the relaxed sweep on a per-panel copy of G that gets only the updates later columns need in
//     this sweep (half the flops); the real G stays (T − Q) Σ at the on-grid point Q before it;
//   requantize: the quantized sweep after it. With Δ_R = Ŵ − Q (the relaxed changes) and E the change of the
//     grid point of the columns already visited, column j needs G_j − Σ_{k≥j} Δ_R,k Σ_kj − Σ_{k<j} E_k Σ_kj:
//     one GEMM per block for the Δ_R part (half the flops in all), and G moves by E only (sparse).
enum class SweepKind { quantize, relax, relax_scratch, requantize };

struct SweepStats {
  std::int64_t changed = 0;  // entries whose value changed
  std::int64_t moves = 0;    // entries by whose change G was updated (the work of the update)
  double f = 0.0;            // the objective after the sweep (when asked for)
  double seconds = 0.0;
};

// The point the descent is at, in processing order. Whatever moves one of them outside a sweep (a grid
// refit, the outliers' step) keeps G = (T − Ŵ) Σ, T = W − S.
struct Iterate {
  RowMatrixXf w_hat;     // Ŵ, rows x cols
  RowMatrixXf gradient;  // G = (T − Ŵ) Σ
  RowMatrixU8 codes;     // the codes of Ŵ on the grid set (valid after a quantized sweep or an on-grid start)
};

// The sweeps on one grid set (a template on its kind: no branch on the kind per entry). The grid set is
// read, never written; outliers (S in processing order, null without) make the target T = W − S.
template <class GridSet>
class CoordinateSweep {
 public:
  CoordinateSweep(const Problem& problem, const GridSet& grids, const RowMatrixXf* outliers, Index block_size);

  Iterate& iterate() { return point_; }
  const Iterate& iterate() const { return point_; }

  // One sweep over all columns: the number of entries whose value changed and, when `with_f`, the objective
  // after it. `skip_unchanged` (a quantized sweep right after a quantized sweep, S and grids fixed, G not
  // rebuilt in between): rows the last sweep left unchanged are skipped (fixed points: the same result).
  SweepStats run(SweepKind kind, bool with_f, bool skip_unchanged = false);

  void start_at_target();   // Ŵ = T, G = 0 exactly (off the grid)
  void round_target();      // codes and Ŵ: the nearest grid point of T (init = rtn); G still to refresh
  void dequantize_codes();  // Ŵ from the codes on the grid set; G still to refresh
  void refresh();           // G = (T − Ŵ) Σ from scratch (one GEMM per row panel)
  double objective();       // f = Σ (T − Ŵ) ∘ G, every row's f refreshed

  double gemm_seconds() const;    // CPU seconds in the products outside the blocks, all panels
  double column_seconds() const;  // CPU seconds in the blocks' column steps

 private:
  struct BlockPanel;

  template <SweepKind K>
  SweepStats run_kind(bool with_f, bool skip_unchanged);
  template <SweepKind K>
  void sweep_panel(Index r0, Index r1, bool with_f, bool skip_unchanged, std::int64_t& changed, std::int64_t& moved);
  template <SweepKind K, bool hinted>
  void gather(BlockPanel& panel, const std::vector<Index>& act, const RowMatrixXf& g_src, Index g_row0, Index b0,
              Index nb) const;
  template <SweepKind K>
  void scatter(const BlockPanel& panel, const std::vector<Index>& act, RowMatrixXf& g_src, Index g_row0, Index b0,
               Index nb);
  template <SweepKind K, class Lanes>
  std::pair<std::int64_t, std::int64_t> step_column(BlockPanel& panel, const Lanes lanes, Index k, float dj,
                                                    double sjj);
  template <SweepKind K>
  void block_columns(BlockPanel& panel, typename GridSet::Gathered& active, const std::vector<Index>& act, Index b0,
                     Index b1, std::int64_t& count, std::int64_t& nnz);
  void apply_outside(const std::vector<Index>& act, Index r0, Index r1, Index b0, Index b1, std::int64_t nnz);
  void apply_right(RowMatrixXf& g_scratch, const std::vector<Index>& act, Index r0, Index r1, Index b0, Index b1,
                   std::int64_t nnz);
  void sparse_update(RowMatrixXf& g_target, Index row0, const std::vector<Index>& act, Index b0, Index b1, bool left);
  void residual(Index r, float* out) const;
  double row_objective(Index r) const;

  const Problem& problem_;
  const RowMatrixXf& sigma_;
  const GridSet& grids_;
  const RowMatrixXf* outliers_;
  Index rows_, cols_, block_;
  Iterate point_;
  RowMatrixXf delta_;              // rows x B: Δ of the current block
  std::vector<double> row_f_;      // per row: its f after the last sweep
  std::vector<char> row_changed_;  // per row: whether the last sweep changed it
  // CPU seconds per kind of work, one slot per row panel (summed in a fixed order)
  std::vector<double> gemm_seconds_, column_seconds_;
};

}  // namespace quantease::qe
