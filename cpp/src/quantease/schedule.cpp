// QuantEase's schedule (see schedule.hpp).
#include "schedule.hpp"

#include <chrono>
#include <utility>

#include "refit.hpp"

namespace quantease::qe {
namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
}  // namespace

int record_sweep(QuantEaseOutput& res, const SweepStats& stats, double f, bool quantized, bool polish) {
  res.moves.push_back(stats.moves);
  res.sweep_times.push_back(stats.seconds);
  res.changes.push_back(stats.changed);
  res.loss_history.push_back(f);
  res.quantized.push_back(quantized ? 1 : 0);
  res.polish.push_back(polish ? 1 : 0);
  return res.sweeps++;
}

template <class GridSet>
Schedule<GridSet>::Schedule(CoordinateSweep<GridSet>& sweep, GridSet& grids, Outliers* outliers, const Problem& problem,
                            const QuantEaseOptions& opt, QuantEaseOutput& res, std::function<void()> choose_grids,
                            bool grids_move)
    : sweep_(sweep),
      grids_(grids),
      outliers_(outliers),
      problem_(problem),
      opt_(opt),
      res_(res),
      choose_grids_(std::move(choose_grids)),
      live_outliers_(outliers && outliers->k() > 0),
      pair_ok_(!live_outliers_ && opt.refresh_every == 0) {
  best_.has_grids = grids_move;
}

template <class GridSet>
void Schedule<GridSet>::take_best(int sweep, double f) {
  best_.f = f;
  best_.sweep = sweep;
  best_.codes = sweep_.iterate().codes;
  if (best_.has_grids) best_.grids = grids_;
  if (outliers_) best_.outliers = outliers_->snapshot();
  best_.found = true;
}

// Back to the best iterate: its codes (grids and outliers when they moved), Ŵ and G rebuilt.
template <class GridSet>
void Schedule<GridSet>::restore_best() {
  sweep_.iterate().codes = best_.codes;
  if (best_.has_grids) grids_ = best_.grids;
  if (outliers_) outliers_->restore(best_.outliers);
  sweep_.dequantize_codes();
  sweep_.refresh();
  ++res_.refreshes;
}

template <class GridSet>
void Schedule<GridSet>::run(double f0, bool on_grid, PhaseTimer& timer) {
  if (on_grid) take_best(-1, f0);
  const auto t0 = Clock::now();
  prev_quantized_ = on_grid;
  prev_f_ = f0;
  for (int it = 0; it < opt_.iters; ++it) {
    const bool relaxed = opt_.relaxed && it % 3 == 1 && it <= 25 && it != opt_.iters - 1;
    const SweepEnd end = scheduled_sweep(!relaxed);
    if (end.converged) {
      res_.converged = true;
      break;
    }
    if (end.small) {
      res_.stopped_by_tol = true;
      break;
    }
  }
  // Every objective was NaN or inf (f overflows when |W|^2 * H passes the float range): the last sweep, always
  // a quantized one, stands for the best so that the codes returned are an iterate's.
  if (!best_.found && res_.sweeps > 0 && prev_quantized_) take_best(res_.sweeps - 1, prev_f_);
  timer.lap("sweeps");
  const bool at_best = best_.sweep == res_.sweeps - 1;
  if (opt_.polish && !res_.stopped_by_tol && best_.found && !(res_.converged && at_best)) {
    polish();
    timer.lap("polish");
  }
  if (opt_.refit > 0 && !outliers_ && best_.found) {
    refit_rounds();
    timer.lap("refit");
  }
  res_.sweep_seconds = seconds_since(t0);
  res_.best_sweep = best_.sweep;
  res_.gemm_seconds = sweep_.gemm_seconds();
  res_.column_seconds = sweep_.column_seconds();
}

// One sweep of the schedule proper, with the outliers' IHT step after it.
template <class GridSet>
typename Schedule<GridSet>::SweepEnd Schedule<GridSet>::scheduled_sweep(bool quantize) {
  if (choose_grids_) choose_grids_();
  const bool iht = live_outliers_;
  const bool refresh = opt_.refresh_every > 0 && (res_.sweeps + 1) % opt_.refresh_every == 0;
  const bool with_f = !iht && !refresh;
  const SweepKind kind = !quantize ? (pair_ok_ ? SweepKind::relax_scratch : SweepKind::relax)
                         : prev_kind_ == SweepKind::relax_scratch ? SweepKind::requantize
                                                                  : SweepKind::quantize;
  const SweepStats stats = sweep_.run(kind, with_f, kind == SweepKind::quantize && skip_ok_);
  prev_kind_ = kind;
  skip_ok_ = quantize && !live_outliers_ && with_f;
  bool outliers_changed = false;
  if (iht) {
    const auto t0 = Clock::now();
    outliers_changed = outliers_->step(sweep_.iterate().gradient);
    res_.iht_seconds += seconds_since(t0);
  }
  if (refresh) {
    sweep_.refresh();
    ++res_.refreshes;
  }
  const double f = with_f ? stats.f : sweep_.objective();
  const int it = record_sweep(res_, stats, f, quantize, false);
  // A quantized sweep from the best on-grid point can only lower f (exactly; the float32 G may say a
  // last-digit otherwise): it continues the best. Grids refitted per sweep break that.
  const bool continuation = quantize && prev_quantized_ && best_.sweep == it - 1 && !best_.has_grids;
  if (quantize && (continuation || f < best_.f)) take_best(it, f);
  SweepEnd end;
  end.converged = quantize && stats.changed == 0 && !outliers_changed;
  end.small = opt_.tol > 0.0 && quantize && prev_quantized_ && (prev_f_ - f) < opt_.tol * prev_f_;
  prev_quantized_ = quantize;
  prev_f_ = f;
  return end;
}

// Quantized sweeps (S and the grids fixed) from the best iterate until one changes nothing: each can only
// lower f, so the output is coordinate-wise optimal.
template <class GridSet>
void Schedule<GridSet>::polish() {
  res_.converged = false;
  if (best_.sweep != res_.sweeps - 1) {
    restore_best();
    skip_ok_ = false;
  }
  for (int p = 0; p < opt_.iters; ++p) {
    const SweepStats stats = sweep_.run(SweepKind::quantize, true, skip_ok_);
    skip_ok_ = !live_outliers_;
    take_best(record_sweep(res_, stats, stats.f, true, true), stats.f);  // each continues the best
    if (stats.changed == 0) {
      res_.converged = true;
      break;
    }
  }
}

// From the best iterate: refit every grid to the current codes, then quantized sweeps until one changes
// nothing; both steps only lower f, so the result stays coordinate-wise optimal and the objective monotone.
template <class GridSet>
void Schedule<GridSet>::refit_rounds() {
  if (best_.sweep != res_.sweeps - 1) restore_best();
  double f = best_.f;
  for (int round = 0; round < opt_.refit; ++round) {
    const double gain = refit(grids_, sweep_.iterate(), problem_, opt_.sym);
    res_.refit_gains.push_back(gain);
    if (!(gain > 0.0)) break;
    ++res_.refits;
    const bool last = !(gain > 1e-6 * f) || round == opt_.refit - 1;
    res_.converged = false;
    for (int p = 0; p < opt_.iters; ++p) {
      // The refit moved grids: the first sweep after it must visit every row.
      const SweepStats stats = sweep_.run(SweepKind::quantize, true, p > 0);
      take_best(record_sweep(res_, stats, stats.f, true, true), stats.f);
      f = stats.f;
      if (stats.changed == 0) {
        res_.converged = true;
        break;
      }
    }
    if (last) break;
  }
}

template class Schedule<AffineGrids>;
template class Schedule<CodebookGrids>;

}  // namespace quantease::qe
