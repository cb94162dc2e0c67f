// QuantEase's coordinate sweeps (see sweep.hpp).
#include "sweep.hpp"

#include <algorithm>
#include <chrono>
#include <numeric>
#include <utility>

#include "quantease/gemm.hpp"
#include "quantease/parallel.hpp"

namespace quantease::qe {
namespace {

// A block's Δ with fewer non-zeros than (panel rows x block cols) / kSparseRatio is applied entry by entry
// (sparse_update) instead of by GEMMs: entry-wise axpys win until Δ is nearly dense (measured against
// ratios 1, 3, 8 and GEMMs always on the quantized sweeps of a 4096^2 layer).
constexpr Index kSparseRatio = 2;

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

constexpr bool is_quantized(SweepKind kind) { return kind == SweepKind::quantize || kind == SweepKind::requantize; }

// g[c] −= Σ_i d[i] s[i][c] for c in [c0, c1), the entries subtracted in order i = 0, 1, ..., up to four per
// pass over g (after the first sweeps most rows have only one to three entries in a block)
void subtract_entries(float* __restrict g, const float* const* s, const float* d, Index m, Index c0, Index c1) {
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

}  // namespace

// The panel's active rows on one block of columns, transposed: row k holds column b0 + k of every active
// row side by side (leading dimension ld), so that the column loop reads and writes contiguously and
// vectorises across rows. (In place, a column of the row-major Ŵ and G is one entry per row cols floats
// apart: with cols a power of two all of a column's entries fall into one cache set.) ld is an odd multiple
// of 8 floats for the same reason.
template <class GridSet>
struct CoordinateSweep<GridSet>::BlockPanel {
  Index na = 0, ld = 0;
  RowMatrixXf W, G, D;                // B x ld: Ŵ, G (or the relaxed sweep's scratch G) and Δ of the block
  RowMatrixU8 C;                      // codes (on the way in, requantize and hinted grids: the codes before the sweep)
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

template <class GridSet>
CoordinateSweep<GridSet>::CoordinateSweep(const Problem& problem, const GridSet& grids, const RowMatrixXf* outliers,
                                          Index block_size)
    : problem_(problem),
      sigma_(problem.sigma()),
      grids_(grids),
      outliers_(outliers),
      rows_(problem.rows()),
      cols_(problem.cols()),
      block_(std::max<Index>(1, block_size)) {
  point_.codes.setZero(rows_, cols_);  // also the first sweep's hints (CodebookRowGrid::quantize)
  point_.gradient.resize(rows_, cols_);
  point_.w_hat.resize(rows_, cols_);
  delta_.resize(rows_, std::min<Index>(block_, cols_));
  row_f_.assign(rows_, 0.0);
  row_changed_.assign(rows_, 1);
  gemm_seconds_.assign(problem.panels(), 0.0);
  column_seconds_.assign(problem.panels(), 0.0);
}

template <class GridSet>
SweepStats CoordinateSweep<GridSet>::run(SweepKind kind, bool with_f, bool skip_unchanged) {
  switch (kind) {
    case SweepKind::quantize:
      return run_kind<SweepKind::quantize>(with_f, skip_unchanged);
    case SweepKind::requantize:
      return run_kind<SweepKind::requantize>(with_f, skip_unchanged);
    case SweepKind::relax:
      return run_kind<SweepKind::relax>(with_f, skip_unchanged);
    case SweepKind::relax_scratch:
      return run_kind<SweepKind::relax_scratch>(with_f, skip_unchanged);
  }
  return {};
}

// A row panel is a self-contained problem (rows share only Σ), so each task runs the whole sweep over its
// panel: one parallel region per sweep.
template <class GridSet>
template <SweepKind K>
SweepStats CoordinateSweep<GridSet>::run_kind(bool with_f, bool skip_unchanged) {
  const auto t_start = Clock::now();
  const Index panels = problem_.panels();
  std::vector<std::int64_t> changed(panels, 0), moved(panels, 0);
  std::vector<double> f_part(panels, 0.0);
  parallel_chunks(rows_, kRowPanel, [&](Index r0, Index r1) {
    const Index p = r0 / kRowPanel;
    sweep_panel<K>(r0, r1, with_f, skip_unchanged, changed[p], moved[p]);
    double acc = 0.0;
    for (Index r = r0; r < r1; ++r) acc += row_f_[r];
    f_part[p] = acc;
  });
  return {std::accumulate(changed.begin(), changed.end(), std::int64_t{0}),
          std::accumulate(moved.begin(), moved.end(), std::int64_t{0}),
          std::accumulate(f_part.begin(), f_part.end(), 0.0), seconds_since(t_start)};
}

template <class GridSet>
template <SweepKind K>
void CoordinateSweep<GridSet>::sweep_panel(Index r0, Index r1, bool with_f, bool skip_unchanged, std::int64_t& changed,
                                           std::int64_t& moved) {
  const Index p = r0 / kRowPanel;
  const Index pr = r1 - r0;
  RowMatrixXf& G = point_.gradient;
  std::vector<Index> act;  // the panel's rows this sweep visits
  act.reserve(pr);
  for (Index r = r0; r < r1; ++r)
    if (!skip_unchanged || row_changed_[r]) act.push_back(r);
  // rows left out keep Δ = 0 in the GEMM of apply_outside
  if (static_cast<Index>(act.size()) < pr) delta_.middleRows(r0, pr).setZero();
  // relax_scratch: G of the panel copied (the real G stays at the on-grid point the next sweep needs);
  // requantize: Δ_R = Ŵ − quant point before the relaxed sweep
  RowMatrixXf scratch;
  RowMatrixXf relaxed_part;  // requantize: Δ_R[:, b0:] Σ[b0:, block]
  if constexpr (K == SweepKind::relax_scratch) {
    scratch = G.middleRows(r0, pr);
  } else if constexpr (K == SweepKind::requantize) {
    scratch.resize(pr, cols_);
    for (Index r = r0; r < r1; ++r) residual(r, scratch.row(r - r0).data());
  }
  RowMatrixXf& g_src = K == SweepKind::relax_scratch ? scratch : G;
  const Index g_row0 = K == SweepKind::relax_scratch ? r0 : 0;
  BlockPanel panel(block_, static_cast<Index>(act.size()));
  typename GridSet::Gathered active;  // the active rows' grids for one group (quantized sweeps)
  for (Index b0 = 0; b0 < cols_ && !act.empty(); b0 += block_) {
    const Index b1 = std::min(b0 + block_, cols_), nb = b1 - b0;
    auto t0 = Clock::now();
    if constexpr (K == SweepKind::requantize) {
      // The block's columns see the relaxed changes of the columns from their own on: subtract them
      // (k >= j on the diagonal block), added back after the block.
      relaxed_part.noalias() =
          scratch.middleCols(b0, nb) * sigma_.block(b0, b0, nb, nb).template triangularView<Eigen::Lower>();
      if (b1 < cols_)
        gemm_add(relaxed_part, 1.0f, scratch.middleCols(b1, cols_ - b1), sigma_.block(b1, b0, cols_ - b1, nb));
      G.block(r0, b0, pr, nb) -= relaxed_part;
      const auto t1 = Clock::now();
      gemm_seconds_[p] += std::chrono::duration<double>(t1 - t0).count();
      t0 = t1;
    }
    gather<K, GridSet::Gathered::hinted>(panel, act, g_src, g_row0, b0, nb);
    std::int64_t count = 0, nnz = 0;
    block_columns<K>(panel, active, act, b0, b1, count, nnz);
    scatter<K>(panel, act, g_src, g_row0, b0, nb);
    const auto t1 = Clock::now();
    if constexpr (K == SweepKind::requantize) G.block(r0, b0, pr, nb) += relaxed_part;
    if constexpr (K == SweepKind::relax_scratch) apply_right(scratch, act, r0, r1, b0, b1, nnz);
    else apply_outside(act, r0, r1, b0, b1, nnz);
    column_seconds_[p] += std::chrono::duration<double>(t1 - t0).count();
    gemm_seconds_[p] += seconds_since(t1);
    changed += count;
    moved += nnz;
  }
  for (Index r = r0; r < r1; ++r) row_changed_[r] = 0;
  for (std::size_t i = 0; i < act.size(); ++i) row_changed_[act[i]] = panel.changed[i] > 0;
  if constexpr (K == SweepKind::relax_scratch) {
    for (std::size_t i = 0; i < act.size(); ++i) row_f_[act[i]] += panel.df[i];
  } else {
    if (with_f)
      for (const Index r : act) row_f_[r] = row_objective(r);
  }
}

// The block's columns of the active rows into the panel (transposed): Ŵ, G (row r of g_src is row
// r + g_row0 of Ŵ) and the codes: requantize, those of the on-grid point before the relaxed sweep; `hinted`
// grids, the previous codes as the quantized sweep's hints.
template <class GridSet>
template <SweepKind K, bool hinted>
void CoordinateSweep<GridSet>::gather(BlockPanel& panel, const std::vector<Index>& act, const RowMatrixXf& g_src,
                                      Index g_row0, Index b0, Index nb) const {
  for (Index i = 0; i < panel.na; ++i) {
    const Index r = act[i];
    const float* w = point_.w_hat.row(r).data() + b0;
    const float* g = g_src.row(r - g_row0).data() + b0;
    for (Index k = 0; k < nb; ++k) {
      panel.W(k, i) = w[k];
      panel.G(k, i) = g[k];
    }
    if constexpr (K == SweepKind::requantize || (K == SweepKind::quantize && hinted)) {
      const std::uint8_t* c = point_.codes.row(r).data() + b0;
      for (Index k = 0; k < nb; ++k) panel.C(k, i) = c[k];
    }
  }
}

// The panel back into Ŵ, G, the codes (quantized sweeps) and Δ.
template <class GridSet>
template <SweepKind K>
void CoordinateSweep<GridSet>::scatter(const BlockPanel& panel, const std::vector<Index>& act, RowMatrixXf& g_src,
                                       Index g_row0, Index b0, Index nb) {
  for (Index i = 0; i < panel.na; ++i) {
    const Index r = act[i];
    float* w = point_.w_hat.row(r).data() + b0;
    float* g = g_src.row(r - g_row0).data() + b0;
    float* d = delta_.row(r).data();
    for (Index k = 0; k < nb; ++k) {
      w[k] = panel.W(k, i);
      g[k] = panel.G(k, i);
      d[k] = panel.D(k, i);
    }
    if constexpr (is_quantized(K)) {
      std::uint8_t* c = point_.codes.row(r).data() + b0;
      for (Index k = 0; k < nb; ++k) c[k] = panel.C(k, i);
    }
  }
}

// Column k of the block for the panel's active rows: β = ŵ + G / Σ_jj (the best value of each entry with all
// others fixed), the new value (quant(β), or β relaxed), Δ into panel.D. Returns (entries changed, non-zero
// Δ). `lanes`: the active rows' grids for the column's group (a grid set's Gathered::Lanes; unused when
// relaxed).
template <class GridSet>
template <SweepKind K, class Lanes>
std::pair<std::int64_t, std::int64_t> CoordinateSweep<GridSet>::step_column(BlockPanel& panel, const Lanes lanes,
                                                                            Index k, float dj, double sjj) {
  float* __restrict w = panel.W.row(k).data();
  const float* __restrict g = panel.G.row(k).data();
  float* __restrict d = panel.D.row(k).data();
  std::uint8_t* __restrict c = panel.C.row(k).data();
  std::int32_t* __restrict ch = panel.changed.data();
  double* __restrict df = panel.df.data();
  std::int64_t n_changed = 0, n_moved = 0;
  for (Index i = 0; i < panel.na; ++i) {
    const float beta = w[i] + g[i] / dj;
    float v = beta;
    float step;  // what G moves by (times Σ_j)
    if constexpr (is_quantized(K)) {
      // c[i] on the way in: the previous code (the hint of codebook grids; requantize: the point before)
      const std::uint8_t code = lanes.quantize(i, beta, c[i]);
      v = lanes.value(i, code);
      // requantize: G is kept at the pre-relaxed point, so it moves by the change of the grid point
      if constexpr (K == SweepKind::requantize) step = v - lanes.value(i, c[i]);
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

// The coordinate steps of columns b0..b1 for the panel's active rows: β_j = ŵ_j + G_j / Σ_jj, the new value
// (quant(β_j), or β_j relaxed), Δ_j and the update of the block's columns from j on (G −= Δ_j Σ_{j,k}); the
// block's earlier columns and the rest of the row get the block's Δ after it (apply_outside/apply_right).
// Each element of G gets the steps of the columns in increasing order, whichever form the update takes.
template <class GridSet>
template <SweepKind K>
void CoordinateSweep<GridSet>::block_columns(BlockPanel& panel, typename GridSet::Gathered& active,
                                             const std::vector<Index>& act, Index b0, Index b1, std::int64_t& count,
                                             std::int64_t& nnz) {
  const Index na = panel.na, ld = panel.ld;
  Index loaded = -1;  // the group whose grids are in `active`
  for (Index j = b0; j < b1; ++j) {
    const Index k = j - b0;
    const float* sigma_row = sigma_.row(j).data() + b0;  // sigma_row[m] = Σ(j, b0 + m)
    const float dj = problem_.diag(j);
    const double sjj = sigma_(j, j);
    if constexpr (is_quantized(K)) {
      const Index group = grids_.groups().group(j);
      if (group != loaded) {
        active.load(grids_, act, group);
        loaded = group;
      }
    }
    const auto [n_changed, n_moved] = step_column<K>(panel, active.lanes(), k, dj, sjj);
    count += n_changed;
    nnz += n_moved;
    if (n_moved == 0) continue;
    // only the block's columns from j on need it now (j itself included: G stays exact); few non-zeros:
    // entry by entry, else a dense axpy over the active rows per column (a zero Δ leaves G unchanged)
    float* G0 = panel.G.data();
    const float* d = panel.D.row(k).data();
    if (n_moved * 8 <= na) {
      std::int32_t* nz = panel.nz.data();
      Index m = 0;
      for (Index i = 0; i < na; ++i)
        if (d[i] != 0.0f) nz[m++] = static_cast<std::int32_t>(i);
      for (Index kk = k; kk < b1 - b0; ++kk) {
        const float sv = sigma_row[kk];
        float* gk = G0 + kk * ld;
        for (Index e = 0; e < m; ++e) gk[nz[e]] -= d[nz[e]] * sv;
      }
    } else {
      for (Index kk = k; kk < b1 - b0; ++kk) {
        const float sv = sigma_row[kk];
        float* __restrict gk = G0 + kk * ld;
        for (Index i = 0; i < na; ++i) gk[i] -= d[i] * sv;
      }
    }
  }
}

// G[:, outside the block] −= Δ_block Σ[block, outside] for the panel's rows, and the block's own columns get
// what the in-block loop left out: column k the changes of the block's later columns j > k (a strictly
// lower triangular product). Skipped when Δ is zero, entry by entry when it is sparse, GEMMs otherwise.
template <class GridSet>
void CoordinateSweep<GridSet>::apply_outside(const std::vector<Index>& act, Index r0, Index r1, Index b0, Index b1,
                                             std::int64_t nnz) {
  if (nnz == 0) return;
  RowMatrixXf& G = point_.gradient;
  const Index pr = r1 - r0, nb = b1 - b0, right = cols_ - b1;
  if (nnz * kSparseRatio < pr * nb) {
    sparse_update(G, 0, act, b0, b1, true);
    return;
  }
  const auto Dp = delta_.block(r0, 0, pr, nb);
  if (b0 > 0) gemm_add(G.block(r0, 0, pr, b0), -1.0f, Dp, sigma_.block(b0, 0, nb, b0));
  G.block(r0, b0, pr, nb).noalias() -=
      Dp * sigma_.block(b0, b0, nb, nb).template triangularView<Eigen::StrictlyLower>();
  if (right > 0) gemm_add(G.block(r0, b1, pr, right), -1.0f, Dp, sigma_.block(b0, b1, nb, right));
}

// The relaxed sweep on a scratch copy of the panel's G (row r0 at row 0): only the columns right of the
// block still need the block's changes in this sweep (the copy is dropped after it).
template <class GridSet>
void CoordinateSweep<GridSet>::apply_right(RowMatrixXf& g_scratch, const std::vector<Index>& act, Index r0, Index r1,
                                           Index b0, Index b1, std::int64_t nnz) {
  const Index pr = r1 - r0, nb = b1 - b0, right = cols_ - b1;
  if (nnz == 0 || right == 0) return;
  if (nnz * kSparseRatio < pr * nb) {
    sparse_update(g_scratch, r0, act, b0, b1, false);
    return;
  }
  gemm_add(g_scratch.rightCols(right), -1.0f, delta_.block(r0, 0, pr, nb), sigma_.block(b0, b1, nb, right));
}

// Entry by entry: for each non-zero Δ(r, k) of the block, g_target(r − row0, c) −= Δ(r, k) Σ(b0 + k, c) over
// the columns c right of the block and, with `left`, those before column b0 + k. Each element gets the
// entries in increasing k; outside the block four entries at a time (one pass over g per four), and over
// column tiles so that the block's rows of Σ in one tile stay in cache while every row of the panel uses them.
template <class GridSet>
void CoordinateSweep<GridSet>::sparse_update(RowMatrixXf& g_target, Index row0, const std::vector<Index>& act, Index b0,
                                             Index b1, bool left) {
  constexpr Index kTile = 1024;
  const Index nb = b1 - b0;
  // the block's non-zeros per row, gathered once: column in the block, Δ, and Σ's row
  std::vector<Index> start(act.size() + 1, 0);
  std::vector<Index> ks;
  std::vector<float> ds;
  std::vector<const float*> sigma_rows;
  for (std::size_t i = 0; i < act.size(); ++i) {
    const float* d = delta_.row(act[i]).data();
    for (Index k = 0; k < nb; ++k)
      if (d[k] != 0.0f) {
        ks.push_back(k);
        ds.push_back(d[k]);
        sigma_rows.push_back(sigma_.row(b0 + k).data());
      }
    start[i + 1] = static_cast<Index>(ks.size());
  }
  if (left) {
    // the block's own columns before each entry's column (the strictly lower triangle)
    for (std::size_t i = 0; i < act.size(); ++i) {
      float* g = g_target.row(act[i] - row0).data();
      for (Index e = start[i]; e < start[i + 1]; ++e) {
        const float delta = ds[e];
        const float* sr = sigma_rows[e];
        for (Index c = b0; c < b0 + ks[e]; ++c) g[c] -= delta * sr[c];
      }
    }
  }
  auto tiles = [&](Index c0, Index c1) {
    for (Index t0 = c0; t0 < c1; t0 += kTile) {
      const Index t1 = std::min(t0 + kTile, c1);
      for (std::size_t i = 0; i < act.size(); ++i)
        subtract_entries(g_target.row(act[i] - row0).data(), sigma_rows.data() + start[i], ds.data() + start[i],
                         start[i + 1] - start[i], t0, t1);
    }
  };
  if (left) tiles(0, b0);
  tiles(b1, cols_);
}

// out = Ŵ − the grid points of the codes, row r: one grid per run of columns in one group.
template <class GridSet>
void CoordinateSweep<GridSet>::residual(Index r, float* out) const {
  const float* w = point_.w_hat.row(r).data();
  const std::uint8_t* code = point_.codes.row(r).data();
  const GroupMap& groups = grids_.groups();
  for (Index j0 = 0; j0 < cols_;) {
    const Index group = groups.group(j0);
    Index j1 = j0 + 1;
    while (j1 < cols_ && groups.group(j1) == group) ++j1;
    const auto grid = grids_.row(r, group);
    for (Index j = j0; j < j1; ++j) out[j] = w[j] - grid.value(code[j]);
    j0 = j1;
  }
}

// Σ_c (T − Ŵ)_{rc} G_{rc} of row r, in float64.
template <class GridSet>
double CoordinateSweep<GridSet>::row_objective(Index r) const {
  const float* g = point_.gradient.row(r).data();
  const float* w = point_.w_hat.row(r).data();
  const float* t = problem_.weights().row(r).data();
  const float* o = outliers_ ? outliers_->row(r).data() : nullptr;
  double row = 0.0;
  for (Index c = 0; c < cols_; ++c) row += static_cast<double>((o ? t[c] - o[c] : t[c]) - w[c]) * g[c];
  return row;
}

template <class GridSet>
void CoordinateSweep<GridSet>::start_at_target() {
  if (outliers_) point_.w_hat = problem_.weights() - *outliers_;
  else point_.w_hat = problem_.weights();
  point_.gradient.setZero();
}

template <class GridSet>
void CoordinateSweep<GridSet>::round_target() {
  const RowMatrixXf& W = problem_.weights();
  parallel_chunks(rows_, kRowPanel, [&](Index r0, Index r1) {
    for (Index r = r0; r < r1; ++r)
      for (Index j = 0; j < cols_; ++j) {
        const auto grid = grids_.row(r, grids_.groups().group(j));
        const float target = outliers_ ? W(r, j) - (*outliers_)(r, j) : W(r, j);
        point_.codes(r, j) = grid.quantize(target);
        point_.w_hat(r, j) = grid.value(point_.codes(r, j));
      }
  });
}

template <class GridSet>
void CoordinateSweep<GridSet>::dequantize_codes() {
  parallel_chunks(rows_, kRowPanel, [&](Index r0, Index r1) {
    for (Index r = r0; r < r1; ++r)
      for (Index j = 0; j < cols_; ++j)
        point_.w_hat(r, j) = grids_.row(r, grids_.groups().group(j)).value(point_.codes(r, j));
  });
}

template <class GridSet>
void CoordinateSweep<GridSet>::refresh() {
  parallel_chunks(rows_, kRowPanel, [&](Index r0, Index r1) {
    const auto t0 = Clock::now();
    const Index pr = r1 - r0;
    RowMatrixXf R = problem_.weights().middleRows(r0, pr) - point_.w_hat.middleRows(r0, pr);
    if (outliers_) R -= outliers_->middleRows(r0, pr);
    point_.gradient.middleRows(r0, pr).setZero();
    gemm_add(point_.gradient.middleRows(r0, pr), 1.0f, R, sigma_);
    gemm_seconds_[r0 / kRowPanel] += seconds_since(t0);
  });
}

// float64 sums per panel added in a fixed order
template <class GridSet>
double CoordinateSweep<GridSet>::objective() {
  std::vector<double> part(problem_.panels(), 0.0);
  parallel_chunks(rows_, kRowPanel, [&](Index r0, Index r1) {
    double acc = 0.0;
    for (Index r = r0; r < r1; ++r) acc += row_f_[r] = row_objective(r);
    part[r0 / kRowPanel] = acc;
  });
  return std::accumulate(part.begin(), part.end(), 0.0);
}

template <class GridSet>
double CoordinateSweep<GridSet>::gemm_seconds() const {
  return std::accumulate(gemm_seconds_.begin(), gemm_seconds_.end(), 0.0);
}

template <class GridSet>
double CoordinateSweep<GridSet>::column_seconds() const {
  return std::accumulate(column_seconds_.begin(), column_seconds_.end(), 0.0);
}

template class CoordinateSweep<AffineGrids>;
template class CoordinateSweep<CodebookGrids>;

}  // namespace quantease::qe
