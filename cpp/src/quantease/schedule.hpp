// QuantEase's schedule: which sweeps run, the sweep log, the best on-grid iterate, the polish and the refit
// rounds (see quantease.hpp).
//
// The official code's schedule: `iters` sweeps, relaxed (unquantized, ŵ_j = β_j) in sweeps with it % 3 == 1,
// it <= 25, never the last; every other sweep quantizes. Beyond it:
//   * the best on-grid iterate is kept and returned (a quantized sweep that follows a relaxed one can end
//     above the previous quantized point); a quantized sweep right after the best one continues it (exactly
//     it cannot raise f, whatever the float32 G says);
//   * a quantized sweep that changes no entry means coordinate-wise optimality: stop (converged);
//   * tol > 0: stop when a quantized sweep lowers the objective by less than tol * f;
//   * unless stopped by tol or converged at the best iterate, quantized "polish" sweeps (S and grids fixed)
//     from the best iterate run until one changes nothing (at most `iters` more);
//   * refit > 0: up to that many rounds of "refit every grid to the current codes (refit.hpp), then quantized
//     sweeps until nothing changes"; a round whose refit gained < 1e-6 f is the last.
#pragma once

#include <functional>
#include <limits>
#include <memory>

#include "outliers.hpp"
#include "quantease/quantease.hpp"
#include "sweep.hpp"

namespace quantease::qe {

// Appends one sweep to the output's sweep log; returns its index.
int record_sweep(QuantEaseOutput& res, const SweepStats& stats, double f, bool quantized, bool polish);

// The best on-grid iterate so far (sweep -1: the start).
template <class GridSet>
struct BestIterate {
  bool found = false;
  int sweep = -1;
  double f = std::numeric_limits<double>::infinity();
  RowMatrixU8 codes;
  bool has_grids = false;  // the grids moved during the schedule: its own grids are kept
  GridSet grids;
  Outliers::Snapshot outliers;
};

template <class GridSet>
class Schedule {
 public:
  // choose_grids: run before every sweep of the schedule proper (structured outliers refit the grids to
  // the current outlier columns); grids_move: whether it moves them.
  Schedule(CoordinateSweep<GridSet>& sweep, GridSet& grids, Outliers* outliers, const Problem& problem,
           const QuantEaseOptions& opt, QuantEaseOutput& res, std::function<void()> choose_grids, bool grids_move);

  // Runs the schedule from a start with objective f0 (on the grid or not), then the polish and the refit
  // rounds; the phases' laps go to `timer`.
  void run(double f0, bool on_grid, PhaseTimer& timer);

  const BestIterate<GridSet>& best() const { return best_; }

 private:
  struct SweepEnd {
    bool converged = false, small = false;
  };
  SweepEnd scheduled_sweep(bool quantize);
  void polish();
  void refit_rounds();
  void take_best(int sweep, double f);
  void restore_best();

  CoordinateSweep<GridSet>& sweep_;
  GridSet& grids_;
  Outliers* outliers_;
  const Problem& problem_;
  const QuantEaseOptions& opt_;
  QuantEaseOutput& res_;
  std::function<void()> choose_grids_;
  BestIterate<GridSet> best_;
  bool live_outliers_;  // outliers with k > 0 (k = 0: S stays empty and the IHT step is a no-op)
  bool pair_ok_;        // the relaxed/quantized pair needs G untouched between them: no IHT, no refresh
  // the schedule's state from one sweep to the next
  bool prev_quantized_ = false;
  double prev_f_ = 0.0;
  bool skip_ok_ = false;  // rows unchanged by the last sweep are fixed points the next one may skip
  SweepKind prev_kind_ = SweepKind::quantize;
};

}  // namespace quantease::qe
