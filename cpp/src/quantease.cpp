// QuantEase: blocked coordinate descent on G = (T − Ŵ) Σ, the schedule, and the outlier-aware variant
// (see quantease.hpp for the equations).
#include "quantease/quantease.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>

#include "quantease/gemm.hpp"
#include "quantease/gptq.hpp"
#include "quantease/hessian.hpp"
#include "quantease/leanquant.hpp"
#include "quantease/parallel.hpp"

namespace quantease {
namespace {

constexpr Index kRowPanel = 128;  // rows per task: fixed, so results do not depend on the thread count
// A block's Δ with fewer non-zeros than (panel rows x block cols) / kSparseRatio is applied entry by entry
// (sparse_update: axpys with rows of Σ, four entries per pass over G, column tiles in L2) instead of by a
// GEMM. Measured on 4096^2 (the quantized sweep after a relaxed one, ~10 % non-zeros on average, denser in
// some blocks), 2 threads: ratio 1 (GEMMs only for a fully dense Δ) 3.3 s, 3: 3.7 s, 8: 5.2 s, GEMMs
// always: 5.8 s. 2 keeps the GEMMs for nearly dense blocks.
constexpr Index kSparseRatio = 2;

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

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

class Solver {
 public:
  Solver(const QuantEaseOptions& opt, Index rows, Index cols)
      : opt_(opt), rows_(rows), cols_(cols), B_(std::max<Index>(1, opt.block_size)),
        maxq_(max_code(opt.bits)), n_panels_((rows + kRowPanel - 1) / kRowPanel) {}

  const QuantEaseOptions& opt_;
  Index rows_, cols_, B_;
  float maxq_;
  Index n_panels_;

  RowMatrixXf Sig;        // Σ in processing order (cols x cols)
  Eigen::VectorXf diag;   // Σ_jj, dead columns 1
  RowMatrixXf Wp;         // W in processing order
  RowMatrixXf S;          // outliers in processing order (outlier variant only)
  RowMatrixU8 Smask;      // 1 on the support of S (its k entries, or k whole columns)
  RowMatrixXf What;       // Ŵ
  RowMatrixXf G;          // (T − Ŵ) Σ
  RowMatrixU8 codes;      // codes of Ŵ (valid after a quantized sweep)
  RowMatrixXf D;          // rows x B: Δ of the current block
  AffineGrids grids;
  CodebookGrids books;    // codebook_mode: the grids instead of `grids`
  bool codebook_mode = false;
  bool outlier_mode = false;

  // f(the grids in use): one branch per call (or per sweep), the sweeps are instantiated per grid kind.
  template <class F>
  decltype(auto) with_grids(F&& f) const {
    return codebook_mode ? f(books) : f(grids);
  }

  // CPU seconds spent per kind of work, one slot per row panel (summed in a fixed order).
  std::vector<double> gemm_sec, col_sec;

  float target(Index r, Index c) const { return outlier_mode ? Wp(r, c) - S(r, c) : Wp(r, c); }

  // Per row: f of the row after the last sweep, and whether the last sweep changed the row.
  std::vector<double> frow;
  std::vector<char> row_changed;

  // The panel's active rows on one block of columns, transposed: row k holds column b0 + k of every active
  // row side by side (leading dimension ld), so that the column loop reads and writes contiguously and
  // vectorises across rows. (In place, a column of the row-major Ŵ and G is one entry per row cols floats
  // apart: with cols a power of two all of a column's entries fall into one cache set, and every access
  // missed L1 and L2.) ld is an odd multiple of 8 floats for the same reason.
  struct BlockPanel {
    Index na = 0, ld = 0;
    RowMatrixXf W, G, D;  // B x ld: Ŵ, G (or the relaxed sweep's scratch G) and Δ of the block
    RowMatrixU8 C;        // codes (on the way in, requantize and hinted grids: the codes before the sweep)
    std::vector<std::int32_t> changed;  // per active row: entries changed in this sweep
    std::vector<double> df;             // per active row: change of f in a relaxed (scratch) sweep
    std::vector<std::int32_t> nz;       // the active rows with a non-zero Δ in the current column

    BlockPanel(Index B, Index n_active) : na(n_active), ld((n_active + 15) / 16 * 16 + 8) {
      W.resize(B, ld);
      G.resize(B, ld);
      D.resize(B, ld);
      C.setZero(B, ld);  // defined hints for grids that ignore them
      changed.assign(na, 0);
      df.assign(na, 0.0);
      nz.resize(na);
    }
  };

  // One sweep over all columns: returns the number of entries whose value changed and, when `with_f`,
  // the objective after it. A row panel is a self-contained problem (rows share only Σ), so each task runs
  // the whole sweep over its panel: one parallel region per sweep.
  //
  // `skip_unchanged` (a quantized sweep right after a quantized sweep, S and grids fixed, G not rebuilt in
  // between): rows the last sweep left unchanged are skipped. Rows are independent problems and such a row
  // is a fixed point (same Ŵ, same G, so the same β and codes), so skipping it gives exactly the same result.
  SweepStats sweep(SweepKind kind, bool with_f, bool skip_unchanged = false) {
    // the quantized sweeps on the grids in use (one branch per sweep, not per entry); the relaxed ones never
    // read the grids
    switch (kind) {
      case SweepKind::quantize:
        return with_grids([&](const auto& gr) {
          return sweep_kind<SweepKind::quantize>(gr, with_f, skip_unchanged);
        });
      case SweepKind::requantize:
        return with_grids([&](const auto& gr) {
          return sweep_kind<SweepKind::requantize>(gr, with_f, skip_unchanged);
        });
      case SweepKind::relax: return sweep_kind<SweepKind::relax>(grids, with_f, skip_unchanged);
      case SweepKind::relax_scratch: return sweep_kind<SweepKind::relax_scratch>(grids, with_f, skip_unchanged);
    }
    return {};
  }

  template <SweepKind K, class GridSet>
  SweepStats sweep_kind(const GridSet& gr, bool with_f, bool skip_unchanged) {
    const auto t_start = Clock::now();
    std::vector<std::int64_t> changed(n_panels_, 0), moved(n_panels_, 0);
    std::vector<double> fpart(n_panels_, 0.0);
    parallel_chunks(rows_, kRowPanel, [&](Index r0, Index r1) {
      const Index p = r0 / kRowPanel;
      const Index pr = r1 - r0;
      std::vector<Index> act;
      act.reserve(pr);
      for (Index r = r0; r < r1; ++r)
        if (!skip_unchanged || row_changed[r]) act.push_back(r);
      // rows left out keep Δ = 0 in the GEMM of apply_outside
      if (static_cast<Index>(act.size()) < pr) D.middleRows(r0, pr).setZero();
      // relax_scratch: G of the panel copied (the real G stays at the on-grid point the next sweep needs);
      // requantize: Δ_R = Ŵ − quant point before the relaxed sweep
      RowMatrixXf scratch;
      RowMatrixXf U;
      if constexpr (K == SweepKind::relax_scratch) {
        scratch = G.middleRows(r0, pr);
      } else if constexpr (K == SweepKind::requantize) {
        scratch.resize(pr, cols_);
        for (Index r = r0; r < r1; ++r) residual(gr, r, scratch.row(r - r0).data());
      }
      RowMatrixXf& Gsrc = K == SweepKind::relax_scratch ? scratch : G;
      const Index g_row0 = K == SweepKind::relax_scratch ? r0 : 0;
      BlockPanel t(B_, static_cast<Index>(act.size()));
      typename GridSet::Gathered active;  // the active rows' grids for one group (quantized sweeps)
      for (Index b0 = 0; b0 < cols_ && !act.empty(); b0 += B_) {
        const Index b1 = std::min(b0 + B_, cols_), nb = b1 - b0;
        auto t0 = Clock::now();
        if constexpr (K == SweepKind::requantize) {
          // The block's columns see the relaxed changes of the columns from their own on: subtract
          // U = Δ_R[:, b0:] Σ[b0:, block] (k >= j on the diagonal block), added back after the block.
          U.noalias() = scratch.middleCols(b0, nb) * Sig.block(b0, b0, nb, nb).triangularView<Eigen::Lower>();
          if (b1 < cols_) gemm_add(U, 1.0f, scratch.middleCols(b1, cols_ - b1), Sig.block(b1, b0, cols_ - b1, nb));
          G.block(r0, b0, pr, nb) -= U;
          const auto t1 = Clock::now();
          gemm_sec[p] += std::chrono::duration<double>(t1 - t0).count();
          t0 = t1;
        }
        gather<K, GridSet::Gathered::hinted>(t, act, Gsrc, g_row0, b0, nb);
        std::int64_t count = 0, nnz = 0;
        block_columns<K>(t, gr, active, act, b0, b1, count, nnz);
        scatter<K>(t, act, Gsrc, g_row0, b0, nb);
        const auto t1 = Clock::now();
        if constexpr (K == SweepKind::requantize) G.block(r0, b0, pr, nb) += U;
        if constexpr (K == SweepKind::relax_scratch) apply_right(scratch, act, r0, r1, b0, b1, nnz);
        else apply_outside(act, r0, r1, b0, b1, nnz);
        col_sec[p] += std::chrono::duration<double>(t1 - t0).count();
        gemm_sec[p] += seconds_since(t1);
        changed[p] += count;
        moved[p] += nnz;
      }
      for (Index r = r0; r < r1; ++r) row_changed[r] = 0;
      for (std::size_t i = 0; i < act.size(); ++i) row_changed[act[i]] = t.changed[i] > 0;
      if constexpr (K == SweepKind::relax_scratch) {
        for (std::size_t i = 0; i < act.size(); ++i) frow[act[i]] += t.df[i];
      } else {
        if (with_f)
          for (const Index r : act) frow[r] = row_objective(r);
      }
      double acc = 0.0;
      for (Index r = r0; r < r1; ++r) acc += frow[r];
      fpart[p] = acc;
    });
    return {std::accumulate(changed.begin(), changed.end(), std::int64_t{0}),
            std::accumulate(moved.begin(), moved.end(), std::int64_t{0}),
            std::accumulate(fpart.begin(), fpart.end(), 0.0), seconds_since(t_start)};
  }

  // The block's columns of the active rows into t (transposed): Ŵ, G (row r of Gsrc is row r + g_row0 of
  // Ŵ) and the codes: requantize, those of the on-grid point before the relaxed sweep; `hinted` grids, the
  // previous codes as the quantized sweep's hints.
  template <SweepKind K, bool hinted>
  void gather(BlockPanel& t, const std::vector<Index>& act, const RowMatrixXf& Gsrc, Index g_row0, Index b0,
              Index nb) const {
    for (Index i = 0; i < t.na; ++i) {
      const Index r = act[i];
      const float* w = What.row(r).data() + b0;
      const float* g = Gsrc.row(r - g_row0).data() + b0;
      for (Index k = 0; k < nb; ++k) {
        t.W(k, i) = w[k];
        t.G(k, i) = g[k];
      }
      if constexpr (K == SweepKind::requantize || (K == SweepKind::quantize && hinted)) {
        const std::uint8_t* c = codes.row(r).data() + b0;
        for (Index k = 0; k < nb; ++k) t.C(k, i) = c[k];
      }
    }
  }

  // t back into Ŵ, G, the codes (quantized sweeps) and D.
  template <SweepKind K>
  void scatter(const BlockPanel& t, const std::vector<Index>& act, RowMatrixXf& Gsrc, Index g_row0, Index b0,
               Index nb) {
    constexpr bool quantize = K == SweepKind::quantize || K == SweepKind::requantize;
    for (Index i = 0; i < t.na; ++i) {
      const Index r = act[i];
      float* w = What.row(r).data() + b0;
      float* g = Gsrc.row(r - g_row0).data() + b0;
      float* d = D.row(r).data();
      for (Index k = 0; k < nb; ++k) {
        w[k] = t.W(k, i);
        g[k] = t.G(k, i);
        d[k] = t.D(k, i);
      }
      if constexpr (quantize) {
        std::uint8_t* c = codes.row(r).data() + b0;
        for (Index k = 0; k < nb; ++k) c[k] = t.C(k, i);
      }
    }
  }

  // Column k of the block for the active rows of t: β = ŵ + G / Σ_jj (the best value of each entry with all
  // others fixed), the new value (quant(β), or β relaxed), Δ into t.D. Returns (entries changed, non-zero Δ).
  // `q`: the active rows' grids for the column's group (a grid set's Gathered::Lanes; unused when relaxed).
  template <SweepKind K, class Lanes>
  std::pair<std::int64_t, std::int64_t> step_column(BlockPanel& t, const Lanes q, Index k, float dj, double sjj) {
    constexpr bool quantize = K == SweepKind::quantize || K == SweepKind::requantize;
    float* __restrict w = t.W.row(k).data();
    const float* __restrict g = t.G.row(k).data();
    float* __restrict d = t.D.row(k).data();
    std::uint8_t* __restrict c = t.C.row(k).data();
    std::int32_t* __restrict ch = t.changed.data();
    double* __restrict df = t.df.data();
    std::int64_t n_changed = 0, n_moved = 0;
    for (Index i = 0; i < t.na; ++i) {
      const float beta = w[i] + g[i] / dj;
      float v = beta;
      float step;  // what G moves by (times Σ_j)
      if constexpr (quantize) {
        // c[i] on the way in: the previous code (the hint of codebook grids; requantize: the point before)
        const std::uint8_t code = q.quantize(i, beta, c[i]);
        v = q.value(i, code);
        // requantize: G is kept at the pre-relaxed point, so it moves by the change of the grid point
        if constexpr (K == SweepKind::requantize) step = v - q.value(i, c[i]);
        else step = v - w[i];
        c[i] = code;
      } else {
        step = v - w[i];
        // f changes by δ² Σ_jj − 2 δ G_j (exact for a one-entry move)
        if constexpr (K == SweepKind::relax_scratch)
          df[i] += static_cast<double>(step) * step * sjj - 2.0 * static_cast<double>(step) * g[i];
      }
      const std::int32_t changed = v != w[i];
      n_changed += changed;
      ch[i] += changed;
      w[i] = v;
      d[i] = step;
      n_moved += step != 0.0f;
    }
    return {n_changed, n_moved};
  }

  // The coordinate steps of columns b0..b1 for the active rows of t: β_j = ŵ_j + G_j / Σ_jj, the new value
  // (quant(β_j), or β_j relaxed), Δ_j and the update of the block's columns from j on (G −= Δ_j Σ_{j,k}); the
  // block's earlier columns and the rest of the row get the block's Δ after it (apply_outside/apply_right).
  // Each element of G gets the steps of the columns in increasing order, whichever form the update takes.
  template <SweepKind K, class GridSet>
  void block_columns(BlockPanel& t, const GridSet& gr, typename GridSet::Gathered& active,
                     const std::vector<Index>& act, Index b0, Index b1, std::int64_t& count, std::int64_t& nnz) {
    constexpr bool quantize = K == SweepKind::quantize || K == SweepKind::requantize;
    const Index na = t.na, ld = t.ld;
    Index loaded = -1;  // the group whose grids are in `active`
    for (Index j = b0; j < b1; ++j) {
      const Index k = j - b0;
      const float* s = Sig.row(j).data() + b0;  // s[m] = Σ(j, b0 + m)
      const float dj = diag[j];
      const double sjj = Sig(j, j);
      if constexpr (quantize) {
        const Index grp = gr.groups().group(j);
        if (grp != loaded) {
          active.load(gr, act, grp);
          loaded = grp;
        }
      }
      const auto [n_changed, n_moved] = step_column<K>(t, active.lanes(), k, dj, sjj);
      count += n_changed;
      nnz += n_moved;
      if (n_moved == 0) continue;
      // only the block's columns from j on need it now (j itself included: G stays exact); few non-zeros:
      // entry by entry, else a dense axpy over the active rows per column (a zero Δ leaves G unchanged)
      float* G0 = t.G.data();
      const float* d = t.D.row(k).data();
      if (n_moved * 8 <= na) {
        std::int32_t* nz = t.nz.data();
        Index m = 0;
        for (Index i = 0; i < na; ++i)
          if (d[i] != 0.0f) nz[m++] = static_cast<std::int32_t>(i);
        for (Index kk = k; kk < b1 - b0; ++kk) {
          const float sv = s[kk];
          float* gk = G0 + kk * ld;
          for (Index e = 0; e < m; ++e) gk[nz[e]] -= d[nz[e]] * sv;
        }
      } else {
        for (Index kk = k; kk < b1 - b0; ++kk) {
          const float sv = s[kk];
          float* __restrict gk = G0 + kk * ld;
          for (Index i = 0; i < na; ++i) gk[i] -= d[i] * sv;
        }
      }
    }
  }

  // G[:, outside the block] −= Δ_block Σ[block, outside] for the panel's rows, and the block's own columns get
  // what the in-block loop left out: column k the changes of the block's later columns j > k (a strictly
  // lower triangular product). Skipped when Δ is zero, entry by entry when it is sparse, GEMMs otherwise.
  void apply_outside(const std::vector<Index>& act, Index r0, Index r1, Index b0, Index b1, std::int64_t nnz) {
    if (nnz == 0) return;
    const Index pr = r1 - r0, nb = b1 - b0, right = cols_ - b1;
    if (nnz * kSparseRatio < pr * nb) {
      sparse_update(G, 0, act, b0, b1, true);
      return;
    }
    const auto Dp = D.block(r0, 0, pr, nb);
    if (b0 > 0) gemm_add(G.block(r0, 0, pr, b0), -1.0f, Dp, Sig.block(b0, 0, nb, b0));
    G.block(r0, b0, pr, nb).noalias() -= Dp * Sig.block(b0, b0, nb, nb).triangularView<Eigen::StrictlyLower>();
    if (right > 0) gemm_add(G.block(r0, b1, pr, right), -1.0f, Dp, Sig.block(b0, b1, nb, right));
  }

  // The relaxed sweep on a scratch copy Gs of the panel's G (row r0 at row 0): only the columns right of the
  // block still need the block's changes in this sweep (the copy is dropped after it).
  void apply_right(RowMatrixXf& Gs, const std::vector<Index>& act, Index r0, Index r1, Index b0, Index b1,
                   std::int64_t nnz) {
    const Index pr = r1 - r0, nb = b1 - b0, right = cols_ - b1;
    if (nnz == 0 || right == 0) return;
    if (nnz * kSparseRatio < pr * nb) {
      sparse_update(Gs, r0, act, b0, b1, false);
      return;
    }
    gemm_add(Gs.rightCols(right), -1.0f, D.block(r0, 0, pr, nb), Sig.block(b0, b1, nb, right));
  }

  // Entry by entry: for each non-zero D(r, k) of the block, Gm(r − row0, c) −= D(r, k) Σ(b0 + k, c) over the
  // columns c right of the block and, with `left`, those before column b0 + k. Each element gets the entries
  // in increasing k; outside the block four entries at a time (one pass over g per four), and over column
  // tiles so that the block's rows of Σ in one tile stay in cache while every row of the panel uses them
  // (1024 columns: 15-25 % faster than 512 in a stand-alone test at 1.5 % and 13 % non-zeros, 4096 columns).
  void sparse_update(RowMatrixXf& Gm, Index row0, const std::vector<Index>& act, Index b0, Index b1, bool left) {
    constexpr Index kTile = 1024;
    const Index nb = b1 - b0;
    // the block's non-zeros per row, gathered once
    std::vector<Index> start(act.size() + 1, 0);
    std::vector<Index> ks;
    std::vector<float> ds;
    std::vector<const float*> rows;
    for (std::size_t i = 0; i < act.size(); ++i) {
      const float* d = D.row(act[i]).data();
      for (Index k = 0; k < nb; ++k)
        if (d[k] != 0.0f) {
          ks.push_back(k);
          ds.push_back(d[k]);
          rows.push_back(Sig.row(b0 + k).data());
        }
      start[i + 1] = static_cast<Index>(ks.size());
    }
    if (left) {
      // the block's own columns before each entry's column (the strictly lower triangle)
      for (std::size_t i = 0; i < act.size(); ++i) {
        float* g = Gm.row(act[i] - row0).data();
        for (Index e = start[i]; e < start[i + 1]; ++e) {
          const float delta = ds[e];
          const float* sr = rows[e];
          for (Index c = b0; c < b0 + ks[e]; ++c) g[c] -= delta * sr[c];
        }
      }
    }
    auto tiles = [&](Index c0, Index c1) {
      for (Index t0 = c0; t0 < c1; t0 += kTile) {
        const Index t1 = std::min(t0 + kTile, c1);
        for (std::size_t i = 0; i < act.size(); ++i)
          subtract_entries(Gm.row(act[i] - row0).data(), rows.data() + start[i], ds.data() + start[i],
                           start[i + 1] - start[i], t0, t1);
      }
    };
    if (left) tiles(0, b0);
    tiles(b1, cols_);
  }

  // g[c] −= Σ_i d[i] s[i][c] for c in [c0, c1), the entries subtracted in order i = 0, 1, ..., up to four per
  // pass over g (after the first sweeps most rows have only one to three entries in a block)
  static void subtract_entries(float* __restrict g, const float* const* s, const float* d, Index m, Index c0,
                               Index c1) {
    Index i = 0;
    for (; i + 4 <= m; i += 4) {
      const float d0 = d[i], d1 = d[i + 1], d2 = d[i + 2], d3 = d[i + 3];
      const float* __restrict s0 = s[i];
      const float* __restrict s1 = s[i + 1];
      const float* __restrict s2 = s[i + 2];
      const float* __restrict s3 = s[i + 3];
      for (Index c = c0; c < c1; ++c) g[c] = g[c] - d0 * s0[c] - d1 * s1[c] - d2 * s2[c] - d3 * s3[c];
    }
    // the last one to three entries in one pass too
    if (m - i == 3) {
      const float d0 = d[i], d1 = d[i + 1], d2 = d[i + 2];
      const float* __restrict s0 = s[i];
      const float* __restrict s1 = s[i + 1];
      const float* __restrict s2 = s[i + 2];
      for (Index c = c0; c < c1; ++c) g[c] = g[c] - d0 * s0[c] - d1 * s1[c] - d2 * s2[c];
    } else if (m - i == 2) {
      const float d0 = d[i], d1 = d[i + 1];
      const float* __restrict s0 = s[i];
      const float* __restrict s1 = s[i + 1];
      for (Index c = c0; c < c1; ++c) g[c] = g[c] - d0 * s0[c] - d1 * s1[c];
    } else if (m - i == 1) {
      const float d0 = d[i];
      const float* __restrict s0 = s[i];
      for (Index c = c0; c < c1; ++c) g[c] -= d0 * s0[c];
    }
  }

  // out = Ŵ − the grid points of the codes, row r (processing order): one grid per run of columns in one group.
  template <class GridSet>
  void residual(const GridSet& gr, Index r, float* out) const {
    const float* w = What.row(r).data();
    const std::uint8_t* code = codes.row(r).data();
    const GroupMap& groups = gr.groups();
    for (Index j0 = 0; j0 < cols_;) {
      const Index g = groups.group(j0);
      Index j1 = j0 + 1;
      while (j1 < cols_ && groups.group(j1) == g) ++j1;
      const auto grid = gr.row(r, g);
      for (Index j = j0; j < j1; ++j) out[j] = w[j] - grid.value(code[j]);
      j0 = j1;
    }
  }

  // Σ_c (T − Ŵ)_{rc} G_{rc} of row r, in float64.
  double row_objective(Index r) const {
    const float* g = G.row(r).data();
    const float* w = What.row(r).data();
    const float* t = Wp.row(r).data();
    const float* o = outlier_mode ? S.row(r).data() : nullptr;
    double row = 0.0;
    for (Index c = 0; c < cols_; ++c) row += static_cast<double>((o ? t[c] - o[c] : t[c]) - w[c]) * g[c];
    return row;
  }

  // G = (T − Ŵ) Σ from scratch (one GEMM per row panel).
  void refresh() {
    parallel_chunks(rows_, kRowPanel, [&](Index r0, Index r1) {
      const auto t0 = Clock::now();
      const Index pr = r1 - r0;
      RowMatrixXf R = Wp.middleRows(r0, pr) - What.middleRows(r0, pr);
      if (outlier_mode) R -= S.middleRows(r0, pr);
      G.middleRows(r0, pr).setZero();
      gemm_add(G.middleRows(r0, pr), 1.0f, R, Sig);
      gemm_sec[r0 / kRowPanel] += seconds_since(t0);
    });
  }

  // f = Σ (T − Ŵ) ∘ G (every row's frow refreshed), float64 sums per panel added in a fixed order.
  double objective() {
    std::vector<double> part(n_panels_, 0.0);
    parallel_chunks(rows_, kRowPanel, [&](Index r0, Index r1) {
      double acc = 0.0;
      for (Index r = r0; r < r1; ++r) acc += frow[r] = row_objective(r);
      part[r0 / kRowPanel] = acc;
    });
    return std::accumulate(part.begin(), part.end(), 0.0);
  }

  // Grid refit (ours; the paper fixes the grids from W): for every row and group, with its codes fixed, the
  // scale — and, asymmetric, an integer zero within ±2 of the current one, kept in [0, maxq] — that minimises
  // f exactly. With e = codes − zero on the group's columns C and Ŵ_C = s e, moving to (s', z' = z + dz)
  // is Δ = (s' − s) e − s' dz 1 and changes f by −2 Δ·G_C + Δᵀ Σ_CC Δ: a 1-D quadratic in s' per dz,
  // solved in closed form. A candidate is taken only when its exact change (for the float32 scale it will
  // store) is negative; the groups of a row go one after the other, each with the G its predecessors left.
  // Needs valid codes (after a quantized sweep). Returns the total decrease of f (float64, ≥ 0).
  double refit_grids() {
    const Index gs = grids.groups().size(), groups = grids.groups().count();
    const int dz_max = opt_.sym ? 0 : 2;
    std::vector<double> gain(n_panels_, 0.0);
    parallel_chunks(rows_, kRowPanel, [&](Index r0, Index r1) {
      const Index pr = r1 - r0;
      RowMatrixXf E(pr, gs), U(pr, gs), Dl(pr, gs);
      Eigen::VectorXd v(gs);
      double part = 0.0;
      for (Index g = 0; g < groups; ++g) {
        const Index c0 = g * gs;
        const auto Sgg = Sig.block(c0, c0, gs, gs);
        for (Index c = 0; c < gs; ++c) v[c] = Sgg.row(c).cast<double>().sum();  // Σ_CC 1 (Σ symmetric)
        const double k = v.sum();                                                  // 1ᵀ Σ_CC 1
        for (Index i = 0; i < pr; ++i)
          for (Index c = 0; c < gs; ++c) E(i, c) = static_cast<float>(codes(r0 + i, c0 + c)) - grids.grid(r0 + i, g).zero;
        U.noalias() = E * Sgg;  // rows of U: (Σ_CC e)ᵀ
        bool any = false;
        for (Index i = 0; i < pr; ++i) {
          const Index r = r0 + i;
          double eu = 0.0, ev = 0.0, ge = 0.0, g1 = 0.0;
          for (Index c = 0; c < gs; ++c) {
            const double e = E(i, c), gv = G(r, c0 + c);
            eu += e * U(i, c);
            ev += e * v[c];
            ge += e * gv;
            g1 += gv;
          }
          const float s0 = grids.grid(r, g).scale, z0 = grids.grid(r, g).zero;
          double best = 0.0;
          float best_s = s0, best_z = z0;
          for (int dz = -dz_max; dz <= dz_max; ++dz) {
            const float z = z0 + static_cast<float>(dz);
            if (z < 0.0f || z > maxq_) continue;
            const double a = eu - 2.0 * dz * ev + static_cast<double>(dz) * dz * k;  // e'ᵀ Σ e'
            if (!(a > 0.0)) continue;
            const float sn = static_cast<float>((ge - dz * g1 + s0 * (eu - dz * ev)) / a);
            if (!(sn > 0.0f) || !std::isfinite(sn)) continue;
            const double ds = static_cast<double>(sn) - s0, t = static_cast<double>(sn) * dz;
            const double dg = ds * ge - t * g1;
            const double dsd = ds * ds * eu - 2.0 * ds * t * ev + t * t * k;
            const double change = -2.0 * dg + dsd;
            if (change < best) {
              best = change;
              best_s = sn;
              best_z = z;
            }
          }
          if (best < 0.0) {
            grids.set(r, g, AffineGrid{best_s, best_z});
            for (Index c = 0; c < gs; ++c) {
              const float nv = dequantize(codes(r, c0 + c), AffineGrid{best_s, best_z});
              Dl(i, c) = nv - What(r, c0 + c);
              What(r, c0 + c) = nv;
            }
            part -= best;
            any = true;
          } else {
            Dl.row(i).setZero();
          }
        }
        // G = (T − Ŵ) Σ: Ŵ moved by Δ on the group's columns
        if (any) gemm_add(G.middleRows(r0, pr), -1.0f, Dl, Sig.middleRows(c0, gs));
      }
      gain[r0 / kRowPanel] = part;
    });
    return std::accumulate(gain.begin(), gain.end(), 0.0);
  }

  // Codebook refit (ours, codebook grids): for every row and group, with its codes fixed, the levels that
  // minimise f exactly. With A the group's one-hot code matrix (columns C of the group) and Ŵ_C = A c, moving
  // the levels by Δ changes f by −2 Δᵀ b + Δᵀ M Δ, b = Aᵀ G_C (G summed per level), M = Aᵀ Σ_CC A (Σ summed
  // per pair of levels): Δ = M⁻¹ b over the levels in use (LDLT; the others stay). Taken only when the exact
  // change for the float32 levels it will store is negative; the levels are then re-sorted (codes renumbered).
  // The groups of a row go one after the other, each with the G its predecessors left.
  // Needs valid codes (after a quantized sweep). Returns the total decrease of f (float64, ≥ 0).
  double refit_codebooks() {
    const Index k = books.levels(), groups = books.groups().count();
    // processing positions of every group's columns (static groups of original columns)
    std::vector<std::vector<Index>> members(groups);
    for (Index j = 0; j < cols_; ++j) members[books.groups().group(j)].push_back(j);
    std::vector<double> gain(n_panels_, 0.0);
    parallel_chunks(rows_, kRowPanel, [&](Index r0, Index r1) {
      const Index pr = r1 - r0;
      Eigen::MatrixXd M(k, k);
      Eigen::VectorXd b(k), dq(k);
      std::vector<Index> used, order(k), renum(k), start(k + 1), fill(k), bucket(cols_);
      std::vector<float> nl(k);
      RowMatrixXf Dl, SigC;
      double part = 0.0;
      for (Index g = 0; g < groups; ++g) {
        const std::vector<Index>& C = members[g];
        const Index nc = static_cast<Index>(C.size());
        Dl.setZero(pr, nc);
        bool any = false;
        for (Index r = r0; r < r1; ++r) {
          M.setZero();
          b.setZero();
          // the group's columns bucketed by code (counting sort), so that each M(a, t) row is a sum of
          // gathers over one bucket (no scatter into accumulators)
          std::fill(start.begin(), start.end(), Index{0});
          for (const Index j : C) ++start[codes(r, j) + 1];
          for (Index t = 0; t < k; ++t) start[t + 1] += start[t];
          std::copy(start.begin(), start.end() - 1, fill.begin());
          for (const Index j : C) bucket[fill[codes(r, j)]++] = j;
          for (const Index i : C) {
            const Index a = codes(r, i);
            b[a] += G(r, i);
            const float* si = Sig.row(i).data();
            for (Index t = 0; t < k; ++t) {
              double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
              Index e = start[t];
              for (; e + 4 <= start[t + 1]; e += 4) {
                s0 += si[bucket[e]];
                s1 += si[bucket[e + 1]];
                s2 += si[bucket[e + 2]];
                s3 += si[bucket[e + 3]];
              }
              for (; e < start[t + 1]; ++e) s0 += si[bucket[e]];
              M(a, t) += (s0 + s1) + (s2 + s3);
            }
          }
          used.clear();
          for (Index t = 0; t < k; ++t)
            if (M(t, t) > 0.0) used.push_back(t);
          const Index n = static_cast<Index>(used.size());
          if (n == 0) continue;
          Eigen::MatrixXd Mu(n, n);
          Eigen::VectorXd bu(n);
          for (Index x = 0; x < n; ++x) {
            bu[x] = b[used[x]];
            for (Index y = 0; y < n; ++y) Mu(x, y) = M(used[x], used[y]);
          }
          const Eigen::VectorXd d = Mu.ldlt().solve(bu);
          if (!d.allFinite()) continue;
          // the float32 levels that would be stored, and their exact change of f
          float* lv = books.levels_at(books.index(r, g));
          dq.setZero();
          for (Index t = 0; t < k; ++t) nl[t] = lv[t];
          for (Index x = 0; x < n; ++x) {
            nl[used[x]] = static_cast<float>(lv[used[x]] + d[x]);
            dq[used[x]] = static_cast<double>(nl[used[x]]) - lv[used[x]];
          }
          const double change = -2.0 * dq.dot(b) + dq.dot(M * dq);
          if (!(change < 0.0) || !std::isfinite(change)) continue;
          part -= change;
          any = true;
          // Ŵ moves by dq[code] on the group's columns (G after the panel's group, below)
          for (Index c = 0; c < nc; ++c) {
            const Index j = C[c];
            Dl(r - r0, c) = nl[codes(r, j)] - What(r, j);
            What(r, j) = nl[codes(r, j)];
          }
          // ascending levels again: sort (stable), renumber the codes, new midpoints
          std::iota(order.begin(), order.end(), Index{0});
          std::stable_sort(order.begin(), order.end(), [&](Index x, Index y) { return nl[x] < nl[y]; });
          for (Index t = 0; t < k; ++t) {
            lv[t] = nl[order[t]];
            renum[order[t]] = t;
          }
          for (const Index j : C) codes(r, j) = static_cast<std::uint8_t>(renum[codes(r, j)]);
          books.update_midpoints(books.index(r, g));
        }
        // G = (T − Ŵ) Σ: Ŵ moved by Dl on the group's columns
        if (any) {
          SigC.resize(nc, cols_);
          for (Index c = 0; c < nc; ++c) SigC.row(c) = Sig.row(C[c]);
          gemm_add(G.middleRows(r0, pr), -1.0f, Dl, SigC);
        }
      }
      gain[r0 / kRowPanel] = part;
    });
    return std::accumulate(gain.begin(), gain.end(), 0.0);
  }

  // Ŵ from codes on the current grids.
  void dequantize_all() {
    with_grids([&](const auto& gr) {
      parallel_chunks(rows_, kRowPanel, [&](Index r0, Index r1) {
        for (Index r = r0; r < r1; ++r)
          for (Index j = 0; j < cols_; ++j) What(r, j) = gr.row(r, gr.groups().group(j)).value(codes(r, j));
      });
    });
  }

  // Ŵ = quant(T) on the current grids (init = rtn).
  void round_target() {
    with_grids([&](const auto& gr) {
      parallel_chunks(rows_, kRowPanel, [&](Index r0, Index r1) {
        for (Index r = r0; r < r1; ++r)
          for (Index j = 0; j < cols_; ++j) {
            const auto grid = gr.row(r, gr.groups().group(j));
            codes(r, j) = grid.quantize(target(r, j));
            What(r, j) = grid.value(codes(r, j));
          }
      });
    });
  }
};

// Per row and group: min-max grid of the values of Wp in the group (plain), or of the values clipped at the
// quantiles n = round(len * fraction / 2) (unstructured outliers).
void fit_fixed_grids(const RowMatrixXf& Wp, const GridOptions& gopt, double fraction, AffineGrids& grids) {
  const Index rows = Wp.rows(), gs = grids.groups().size(), groups = grids.groups().count();
  parallel_chunks(rows, kRowPanel, [&](Index r0, Index r1) {
    std::vector<float> buf(gs);
    for (Index r = r0; r < r1; ++r) {
      for (Index g = 0; g < groups; ++g) {
        const float* x = Wp.row(r).data() + g * gs;
        if (fraction <= 0.0) {
          grids.set(r, g, fit_grid(x, gs, gopt));
          continue;
        }
        Index n = static_cast<Index>(std::llround(static_cast<double>(gs) * fraction / 2.0));
        n = std::min<Index>(n, (gs - 1) / 2);
        std::copy(x, x + gs, buf.begin());
        std::nth_element(buf.begin(), buf.begin() + n, buf.end());
        const float lo = buf[n];
        std::nth_element(buf.begin(), buf.begin() + (gs - 1 - n), buf.end());
        const float range[2] = {lo, buf[gs - 1 - n]};
        grids.set(r, g, fit_grid(range, 2, gopt));
      }
    }
  });
}

// Structured outliers: min-max of the original W over the non-outlier columns of every row and group.
void fit_masked_grids(const RowMatrixXf& Wp, const std::vector<char>& outlier_col, const GridOptions& gopt,
                      AffineGrids& grids) {
  const Index rows = Wp.rows(), gs = grids.groups().size(), groups = grids.groups().count();
  parallel_chunks(rows, kRowPanel, [&](Index r0, Index r1) {
    std::vector<float> buf(gs);
    for (Index r = r0; r < r1; ++r) {
      for (Index g = 0; g < groups; ++g) {
        Index n = 0;
        for (Index c = g * gs; c < (g + 1) * gs; ++c)
          if (!outlier_col[c]) buf[n++] = Wp(r, c);
        grids.set(r, g, fit_grid(buf.data(), n, gopt));  // n == 0: the all-zero guard
      }
    }
  });
}

// The outlier part: S (dense, processing order) with its support, the IHT step and G's update.
class Outliers {
 public:
  Outliers(Solver& s, const QuantEaseOptions& opt, double eta)
      : s_(s), structured_(opt.outlier_structure == OutlierStructure::structured), eta_(static_cast<float>(eta)) {
    const Index rows = s.rows_, cols = s.cols_;
    k_ = structured_ ? std::llround(opt.outlier_fraction * static_cast<double>(cols))
                     : std::llround(opt.outlier_fraction * static_cast<double>(rows) * static_cast<double>(cols));
    k_ = std::max<std::int64_t>(0, std::min<std::int64_t>(k_, structured_ ? cols : rows * cols));
    outlier_col.assign(cols, 0);
  }

  std::int64_t k() const { return k_; }
  bool structured() const { return structured_; }
  std::vector<char> outlier_col;  // structured: the current outlier columns

  // S = the k largest |W| entries (or the k columns of largest norm) of W, exactly W's values there.
  // G is left alone (the caller sets Ŵ = W − S, so that G = (T − Ŵ) Σ = 0).
  void init() {
    s_.S.setZero(s_.rows_, s_.cols_);
    s_.Smask.setZero(s_.rows_, s_.cols_);
    RowMatrixXf cand = s_.Wp;
    select(cand, false);
  }

  // S ← top_k(S + η G); G −= (S_new − S_old) Σ. Returns whether S changed.
  bool step() {
    const Index rows = s_.rows_, cols = s_.cols_;
    RowMatrixXf cand(rows, cols);
    parallel_chunks(rows, kRowPanel, [&](Index r0, Index r1) {
      for (Index r = r0; r < r1; ++r)
        for (Index c = 0; c < cols; ++c) cand(r, c) = s_.S(r, c) + eta_ * s_.G(r, c);
    });
    return select(cand, true);
  }

 private:
  // S_new = cand on the selected support, 0 elsewhere; cand is overwritten with ΔS = S_new − S_old and
  // applied to G (T = W − S moves by −ΔS).
  bool select(RowMatrixXf& cand, bool update_G) {
    const Index rows = s_.rows_, cols = s_.cols_;
    RowMatrixXf& S = s_.S;
    if (structured_) {
      // column norms: fixed-order float64 sums
      std::vector<double> norm(cols, 0.0);
      for (Index r = 0; r < rows; ++r)
        for (Index c = 0; c < cols; ++c) norm[c] += static_cast<double>(cand(r, c)) * cand(r, c);
      std::vector<Index> order(cols);
      std::iota(order.begin(), order.end(), Index{0});
      std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return norm[a] > norm[b]; });
      std::fill(outlier_col.begin(), outlier_col.end(), 0);
      for (std::int64_t i = 0; i < k_; ++i) outlier_col[order[i]] = 1;
      parallel_chunks(rows, kRowPanel, [&](Index r0, Index r1) {
        for (Index r = r0; r < r1; ++r)
          for (Index c = 0; c < cols; ++c) {
            const float v = outlier_col[c] ? cand(r, c) : 0.0f;
            cand(r, c) = v - S(r, c);
            S(r, c) = v;
            s_.Smask(r, c) = outlier_col[c];
          }
      });
    } else {
      const std::int64_t n = static_cast<std::int64_t>(rows) * cols;
      float thr = std::numeric_limits<float>::infinity();
      std::int64_t ties = 0;  // entries equal to the threshold that still fit (flat order)
      if (k_ > 0) {
        std::vector<float> mags(n);
        const float* cd = cand.data();
        for (std::int64_t i = 0; i < n; ++i) mags[i] = std::fabs(cd[i]);
        std::nth_element(mags.begin(), mags.begin() + (k_ - 1), mags.end(), std::greater<float>());
        thr = mags[k_ - 1];
        std::int64_t above = 0;
        for (std::int64_t i = 0; i < n; ++i) above += std::fabs(cd[i]) > thr;
        ties = k_ - above;
      }
      float* cd = cand.data();
      float* sd = S.data();
      std::uint8_t* md = s_.Smask.data();
      for (std::int64_t i = 0; i < n; ++i) {
        const float a = std::fabs(cd[i]);
        bool keep = k_ > 0 && a > thr;
        if (k_ > 0 && !keep && a == thr && ties > 0) {
          keep = true;
          --ties;
        }
        const float v = keep ? cd[i] : 0.0f;
        cd[i] = v - sd[i];
        sd[i] = v;
        md[i] = keep;
      }
    }
    // G −= ΔS Σ (T = W − S moved by −ΔS), one axpy per changed entry
    if (!update_G) return true;
    std::vector<char> any(s_.n_panels_, 0);
    parallel_chunks(rows, kRowPanel, [&](Index r0, Index r1) {
      for (Index r = r0; r < r1; ++r) {
        float* g = s_.G.row(r).data();
        for (Index c = 0; c < cols; ++c) {
          const float d = cand(r, c);
          if (d == 0.0f) continue;
          any[r0 / kRowPanel] = 1;
          const float* sg = s_.Sig.row(c).data();
          for (Index m = 0; m < cols; ++m) g[m] -= d * sg[m];
        }
      }
    });
    return std::any_of(any.begin(), any.end(), [](char a) { return a != 0; });
  }

  Solver& s_;
  bool structured_;
  float eta_;
  std::int64_t k_ = 0;
};

}  // namespace

double power_iteration_lambda_max(const RowMatrixXf& A, int max_iters, double rel_tol) {
  const Index n = A.rows();
  if (n == 0) return 0.0;
  Eigen::VectorXd v = Eigen::VectorXd::Constant(n, 1.0 / std::sqrt(static_cast<double>(n)));
  Eigen::VectorXd w(n);
  double lambda = 0.0;
  for (int it = 0; it < max_iters; ++it) {
    parallel_chunks(n, 256, [&](Index i0, Index i1) {
      for (Index i = i0; i < i1; ++i) w[i] = A.row(i).cast<double>().dot(v);
    });
    const double rq = v.dot(w);  // Rayleigh quotient (v has unit norm)
    const double nw = w.norm();
    if (!(nw > 0.0)) return std::max(rq, 0.0);
    v = w / nw;
    const bool done = it > 0 && std::fabs(rq - lambda) <= rel_tol * std::fabs(rq);
    lambda = rq;
    if (done) break;
  }
  return lambda;
}

template <class HT>
QuantEaseOutput quantease(const ConstRowMatrixRef<float>& W, const ConstRowMatrixRef<HT>& H,
                          const QuantEaseOptions& opt) {
  const Index rows = W.rows(), cols = W.cols();
  QuantEaseOutput res;
  QuantOutput& out = res.quant;
  PhaseTimer timer(out);

  // --- Σ and W in processing order (act-order: diag descending; dead columns divide by 1)
  const ProcessingOrder order = ProcessingOrder::of_hessian(H, opt.act_order);
  const VectorXi64& perm = order.perm;
  Solver s(opt, rows, cols);
  s.outlier_mode = opt.outlier_fraction > 0.0;
  s.Sig = order.gather_symmetric(H);
  s.diag.resize(cols);
  for (Index j = 0; j < cols; ++j) s.diag[j] = order.dead[perm[j]] ? 1.0f : s.Sig(j, j);
  s.Wp = order.gather(W);
  s.gemm_sec.assign(s.n_panels_, 0.0);
  s.col_sec.assign(s.n_panels_, 0.0);
  s.codes.setZero(rows, cols);  // also the first sweep's hints (CodebookRowGrid::quantize)
  s.D.resize(rows, std::min<Index>(s.B_, cols));
  s.G.resize(rows, cols);
  s.frow.assign(rows, 0.0);
  s.row_changed.assign(rows, 1);
  // affine groups follow the processing order (as GPTQ's); codebook groups are W's own columns (LeanQuant's)
  s.grids = AffineGrids(rows, GroupMap::in_processing_order(cols, opt.group_size, perm), opt.bits);
  const GroupMap codebook_groups = GroupMap::of_original_columns(cols, opt.group_size, perm);
  s.codebook_mode = opt.codebook.size() > 0 || opt.init == QuantEaseInit::leanquant;
  GridOptions gopt;
  gopt.bits = opt.bits;
  gopt.sym = opt.sym;
  gopt.mse = opt.mse;
  timer.lap("prepare");

  // --- outliers: η from λ_max(Σ), S from the largest entries/columns of W
  std::unique_ptr<Outliers> outl;
  if (s.outlier_mode) {
    res.lambda_max = power_iteration_lambda_max(s.Sig);
    res.eta = res.lambda_max > 0.0 ? opt.outlier_step / (2.0 * res.lambda_max) : 0.0;
    outl = std::make_unique<Outliers>(s, opt, res.eta);
    res.outlier_count = outl->k();
    outl->init();
    timer.lap("outliers");
  }

  // --- grid and starting point
  bool on_grid = false;
  double f0 = 0.0;
  QuantOutput gptq_out;
  LeanQuantOutput lq_out;
  const bool structured = outl && outl->structured();
  if (opt.init == QuantEaseInit::leanquant) {
    // LeanQuant's codes on its codebooks: an on-grid start (the target stays the original W)
    LeanQuantOptions lq = opt.leanquant;
    lq.bits = opt.bits;
    lq.affine = false;
    lq.group_size = opt.group_size;
    lq.act_order = opt.act_order;
    lq.block_size = opt.block_size;
    lq_out = leanquant(W, H, lq);
    out.damp = lq_out.quant.damp;
    out.damp_attempts = lq_out.quant.damp_attempts;
    s.books = CodebookGrids(lq_out.codebook, codebook_groups);
    s.codes = order.gather(ConstRowMatrixRef<std::uint8_t>(lq_out.quant.codes));
    s.What.resize(rows, cols);
    s.dequantize_all();
    on_grid = true;
  } else if (opt.init == QuantEaseInit::gptq) {
    GptqOptions g;
    g.bits = opt.bits;
    g.group_size = opt.group_size;
    g.sym = opt.sym;
    g.mse = opt.mse;
    g.act_order = opt.act_order;
    g.damp = opt.gptq_damp;
    g.block_size = opt.block_size;
    gptq_out = gptq(W, H, g);
    out.damp = gptq_out.damp;
    out.damp_attempts = gptq_out.damp_attempts;
    s.grids.assign(gptq_out.scales, gptq_out.zeros);
    s.codes = order.gather(ConstRowMatrixRef<std::uint8_t>(gptq_out.codes));
    s.What.resize(rows, cols);
    s.dequantize_all();
    on_grid = true;
  } else {
    if (s.codebook_mode) s.books = CodebookGrids(opt.codebook, codebook_groups);
    else if (structured) fit_masked_grids(s.Wp, outl->outlier_col, gopt, s.grids);
    else fit_fixed_grids(s.Wp, gopt, s.outlier_mode ? opt.outlier_fraction : 0.0, s.grids);
    if (!s.outlier_mode) s.What = s.Wp;
    else s.What = s.Wp - s.S;
    if (opt.init == QuantEaseInit::rtn) {
      s.round_target();
      on_grid = true;
    }
  }
  if (on_grid) s.refresh();
  else s.G.setZero();  // Ŵ = T: G = 0 exactly
  f0 = s.objective();
  {
    // tr(W Σ Wᵀ), for relative errors: w Σ wᵀ = Σ_j Σ_jj w_j² + 2 w (Σ strictly upper) wᵀ. Per row panel and
    // block of columns: the diagonal block's strictly upper triangle (a small triangular product) and one GEMM
    // with the columns right of the block (on the BLAS, half a dense product in all), each dotted with W;
    // float64 sums in a fixed order.
    constexpr Index kBaseBlock = 256;
    std::vector<double> part(s.n_panels_, 0.0);
    const Eigen::VectorXd sdiag = s.Sig.diagonal().cast<double>();
    parallel_chunks(rows, kRowPanel, [&](Index r0, Index r1) {
      const Index pr = r1 - r0;
      const auto Wr = s.Wp.middleRows(r0, pr);
      RowMatrixXf C(pr, cols);
      double upper = 0.0;
      for (Index b0 = 0; b0 < cols; b0 += kBaseBlock) {
        const Index b1 = std::min(b0 + kBaseBlock, cols), nb = b1 - b0, right = cols - b1;
        // C[:, 0:cols-b0] = W[:, block] Σ[block, b0:] with the block's lower triangle (and diagonal) left out
        C.leftCols(nb).noalias() =
            Wr.middleCols(b0, nb) * s.Sig.block(b0, b0, nb, nb).triangularView<Eigen::StrictlyUpper>();
        if (right > 0) {
          C.middleCols(nb, right).setZero();
          gemm_add(C.middleCols(nb, right), 1.0f, Wr.middleCols(b0, nb), s.Sig.block(b0, b1, nb, right));
        }
        upper += (C.leftCols(cols - b0).cast<double>().array() * Wr.rightCols(cols - b0).cast<double>().array()).sum();
      }
      const Eigen::ArrayXXd Wd = Wr.cast<double>().array();
      part[r0 / kRowPanel] = 2.0 * upper + (Wd.square().rowwise() * sdiag.transpose().array()).sum();
    });
    res.base = std::accumulate(part.begin(), part.end(), 0.0);
  }
  timer.lap("init");

  // --- best on-grid iterate
  double best_f = on_grid ? f0 : std::numeric_limits<double>::infinity();
  RowMatrixU8 best_codes;
  AffineGrids best_grids;
  RowMatrixXf best_S;
  RowMatrixU8 best_mask;
  int best_sweep = -1;
  bool have_best = on_grid;
  auto snapshot = [&](int sweep, double f) {
    best_f = f;
    best_sweep = sweep;
    best_codes = s.codes;
    if (structured) best_grids = s.grids;
    if (s.outlier_mode) {
      best_S = s.S;
      best_mask = s.Smask;
    }
    have_best = true;
  };
  if (on_grid) snapshot(-1, f0);

  const auto sweeps_t0 = Clock::now();
  bool prev_quantized = on_grid;
  double prev_f = f0;
  // k = 0 outliers: S stays empty and the IHT step is a no-op, so run exactly the plain sweeps.
  const bool live_outliers = outl && outl->k() > 0;
  // The relaxed/quantized pair (SweepKind) needs G untouched between the two sweeps: no IHT, no refresh.
  const bool pair_ok = !live_outliers && opt.refresh_every == 0;
  // Unchanged rows can be skipped in a quantized sweep after a quantized sweep (plain QuantEase, G not
  // rebuilt since): they are fixed points.
  bool skip_ok = false;
  SweepKind prev_kind = SweepKind::quantize;
  auto run_sweep = [&](bool quantize, bool iht, bool polish) {
    if (structured) fit_masked_grids(s.Wp, outl->outlier_col, gopt, s.grids);
    iht = iht && live_outliers;
    const bool with_f = !iht && !(opt.refresh_every > 0 && (res.sweeps + 1) % opt.refresh_every == 0);
    const SweepKind kind = !quantize ? (pair_ok ? SweepKind::relax_scratch : SweepKind::relax)
                           : prev_kind == SweepKind::relax_scratch ? SweepKind::requantize : SweepKind::quantize;
    const SweepStats st = s.sweep(kind, with_f, kind == SweepKind::quantize && skip_ok);
    const std::int64_t changed = st.changed;
    res.moves.push_back(st.moves);
    res.sweep_times.push_back(st.seconds);
    prev_kind = kind;
    skip_ok = quantize && !live_outliers && with_f;
    bool s_changed = false;
    if (iht) {
      const auto t0 = Clock::now();
      s_changed = outl->step();
      res.iht_seconds += seconds_since(t0);
    }
    const int it = res.sweeps++;
    if (opt.refresh_every > 0 && res.sweeps % opt.refresh_every == 0) {
      s.refresh();
      ++res.refreshes;
    }
    const double f = with_f ? st.f : s.objective();
    res.loss_history.push_back(f);
    res.quantized.push_back(quantize ? 1 : 0);
    res.changes.push_back(changed);
    res.polish.push_back(polish ? 1 : 0);
    // A quantized sweep from the best on-grid point can only lower f (exactly; the float32 G may say a
    // last-digit otherwise): it continues the best. Structured outliers refit the grid, which breaks that.
    const bool continuation = quantize && prev_quantized && best_sweep == it - 1 && !structured;
    if (quantize && (continuation || f < best_f)) snapshot(it, f);
    const bool converged = quantize && changed == 0 && !s_changed;
    const bool small = opt.tol > 0.0 && quantize && prev_quantized && (prev_f - f) < opt.tol * prev_f;
    prev_quantized = quantize;
    prev_f = f;
    return std::make_pair(converged, small);
  };

  for (int it = 0; it < opt.iters; ++it) {
    const bool relaxed = opt.relaxed && it % 3 == 1 && it <= 25 && it != opt.iters - 1;
    const auto [converged, small] = run_sweep(!relaxed, true, false);
    if (converged) {
      res.converged = true;
      break;
    }
    if (small) {
      res.stopped_by_tol = true;
      break;
    }
  }
  timer.lap("sweeps");

  // --- polish: quantized sweeps (S and the grids fixed) from the best iterate until one changes nothing
  const bool at_best = best_sweep == res.sweeps - 1;
  if (opt.polish && !res.stopped_by_tol && have_best && !(res.converged && at_best)) {
    res.converged = false;
    if (!at_best) {
      s.codes = best_codes;
      if (structured) s.grids = best_grids;
      if (s.outlier_mode) {
        s.S = best_S;
        s.Smask = best_mask;
      }
      s.dequantize_all();
      s.refresh();
      ++res.refreshes;
      skip_ok = false;
    }
    for (int p = 0; p < opt.iters; ++p) {
      const SweepStats st = s.sweep(SweepKind::quantize, true, skip_ok);
      const std::int64_t changed = st.changed;
      const double f = st.f;
      res.moves.push_back(st.moves);
      res.sweep_times.push_back(st.seconds);
      skip_ok = !live_outliers;
      const int it = res.sweeps++;
      res.loss_history.push_back(f);
      res.quantized.push_back(1);
      res.changes.push_back(changed);
      res.polish.push_back(1);
      snapshot(it, f);  // monotone from the best: each polish sweep continues it
      if (changed == 0) {
        res.converged = true;
        break;
      }
    }
    timer.lap("polish");
  }

  // --- grid refit rounds (ours, opt.refit > 0): from the best iterate, refit every grid to the current codes,
  // then quantized sweeps until one changes nothing; both steps only lower f, so the result stays
  // coordinate-wise optimal and the objective monotone. The round after which a refit gained < 1e-6 f is the last.
  if (opt.refit > 0 && !s.outlier_mode && have_best) {
    if (best_sweep != res.sweeps - 1) {
      s.codes = best_codes;
      s.dequantize_all();
      s.refresh();
      ++res.refreshes;
    }
    double f = best_f;
    for (int round = 0; round < opt.refit; ++round) {
      const double gain = s.codebook_mode ? s.refit_codebooks() : s.refit_grids();
      res.refit_gains.push_back(gain);
      if (!(gain > 0.0)) break;
      ++res.refits;
      const bool last = !(gain > 1e-6 * f) || round == opt.refit - 1;
      res.converged = false;
      for (int p = 0; p < opt.iters; ++p) {
        // The refit moved grids: the first sweep after it must visit every row.
        const SweepStats st = s.sweep(SweepKind::quantize, true, p > 0);
        const std::int64_t changed = st.changed;
        const double fs = st.f;
        res.moves.push_back(st.moves);
        res.sweep_times.push_back(st.seconds);
        const int it = res.sweeps++;
        res.loss_history.push_back(fs);
        res.quantized.push_back(1);
        res.changes.push_back(changed);
        res.polish.push_back(1);
        snapshot(it, fs);
        f = fs;
        if (changed == 0) {
          res.converged = true;
          break;
        }
      }
      if (last) break;
    }
    timer.lap("refit");
  }
  res.sweep_seconds = seconds_since(sweeps_t0);
  res.best_sweep = best_sweep;
  res.gemm_seconds = std::accumulate(s.gemm_sec.begin(), s.gemm_sec.end(), 0.0);
  res.column_seconds = std::accumulate(s.col_sec.begin(), s.col_sec.end(), 0.0);

  // --- output in the original column order
  out.codes.resize(rows, cols);
  order.scatter_rows(best_codes, 0, out.codes);
  if (opt.act_order) out.perm = perm;
  if (s.codebook_mode) {
    write_grids(s.books, out);
    res.codebook = s.books.level_matrix();
  } else {
    write_grids(structured ? best_grids : s.grids, out);
  }

  // init = gptq / leanquant: never worse than the init, decided in float64 (the float32 G's objective is
  // accurate to about 1e-5 relative only, when H's entries span orders of magnitude)
  const QuantOutput* init_out = opt.init == QuantEaseInit::gptq        ? &gptq_out
                                : opt.init == QuantEaseInit::leanquant ? &lq_out.quant
                                                                       : nullptr;
  if (init_out && best_sweep >= 0) {
    const RowMatrixXd Dq = W.cast<double>() - out.weight.cast<double>();
    const RowMatrixXd Dg = W.cast<double>() - init_out->weight.cast<double>();
    if (quadratic_form_sum(ConstRowMatrixRef<double>(Dq), H) >= quadratic_form_sum(ConstRowMatrixRef<double>(Dg), H)) {
      out.codes = init_out->codes;
      out.weight = init_out->weight;
      out.scales = init_out->scales;  // the refit rounds may have moved the grids (empty for LeanQuant)
      out.zeros = init_out->zeros;
      if (opt.init == QuantEaseInit::leanquant) res.codebook = lq_out.codebook;
      res.kept_init = true;
      res.best_sweep = -1;
    }
  }

  if (s.outlier_mode) {
    // S (best iterate) in the original column order, CSR over rows; weight = grid part + S
    res.outlier_indptr.resize(rows + 1);
    res.outlier_indptr[0] = 0;
    std::vector<std::int32_t> idx;
    std::vector<float> val;
    std::vector<std::pair<std::int32_t, float>> row;
    for (Index r = 0; r < rows; ++r) {
      row.clear();
      for (Index j = 0; j < cols; ++j)
        if (best_mask(r, j)) row.emplace_back(static_cast<std::int32_t>(perm[j]), best_S(r, j));
      std::sort(row.begin(), row.end());
      for (const auto& [c, v] : row) {
        idx.push_back(c);
        val.push_back(v);
        out.weight(r, c) += v;
      }
      res.outlier_indptr[r + 1] = static_cast<std::int64_t>(idx.size());
    }
    res.outlier_indices = Eigen::Map<VectorXi32>(idx.data(), static_cast<Index>(idx.size()));
    res.outlier_values = Eigen::Map<Eigen::VectorXf>(val.data(), static_cast<Index>(val.size()));
  }
  timer.lap("output");
  return res;
}

template QuantEaseOutput quantease<float>(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<float>&,
                                          const QuantEaseOptions&);
template QuantEaseOutput quantease<double>(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<double>&,
                                           const QuantEaseOptions&);

}  // namespace quantease
