// QuantEase: the recipe -- the permuted problem, the outliers, the start on its grid set, the schedule, the
// output (see quantease.hpp; the pieces live next to this file).
#include "quantease/quantease.hpp"

#include <functional>
#include <memory>

#include "outliers.hpp"
#include "output.hpp"
#include "problem.hpp"
#include "schedule.hpp"
#include "start.hpp"
#include "sweep.hpp"

namespace quantease {
namespace {

// Everything after the start, on its grid set (one instantiation per grid kind).
template <class GridSet, class HT>
void solve(const ConstRowMatrixRef<float>& W, const ConstRowMatrixRef<HT>& H, const qe::Problem& problem,
           qe::Start<GridSet>& start, qe::Outliers* outliers, const QuantEaseOptions& opt, QuantEaseOutput& res,
           PhaseTimer& timer) {
  GridSet& grids = start.grids;
  qe::CoordinateSweep<GridSet> sweep(problem, grids, outliers ? &outliers->values() : nullptr, opt.block_size);
  const bool on_grid = start.from_solver || start.round;
  if (start.from_solver) {
    sweep.iterate().codes = std::move(start.codes);
    sweep.dequantize_codes();
  } else {
    sweep.start_at_target();
    if (start.round) sweep.round_target();
  }
  if (on_grid) sweep.refresh();
  const double f0 = sweep.objective();
  res.base = problem.weight_energy();
  timer.lap("init");

  // structured outliers: the grids follow the outlier columns, refitted before every scheduled sweep
  std::function<void()> choose_grids;
  const bool grids_move = outliers && outliers->structured();
  if constexpr (std::is_same_v<GridSet, AffineGrids>) {
    if (grids_move) {
      choose_grids = [&, gopt = qe::grid_options(opt)] {
        qe::fit_masked_grids(problem.weights(), outliers->columns(), gopt, grids);
      };
    }
  }
  qe::Schedule<GridSet> schedule(sweep, grids, outliers, problem, opt, res, choose_grids, grids_move);
  schedule.run(f0, on_grid, timer);

  qe::write_result(problem, schedule.best(), grids, res);
  if (start.from_solver && schedule.best().sweep >= 0)
    qe::keep_better_init(W, H, start.solver_output, start.solver_codebook, res);
  if (outliers) qe::write_outliers(problem, schedule.best().outliers, res);
  timer.lap("output");
}

}  // namespace

template <class HT>
QuantEaseOutput quantease(const ConstRowMatrixRef<float>& W, const ConstRowMatrixRef<HT>& H,
                          const QuantEaseOptions& opt) {
  QuantEaseOutput res;
  PhaseTimer timer(res.quant);
  const qe::Problem problem(W, H, opt.act_order);
  timer.lap("prepare");

  std::unique_ptr<qe::Outliers> outliers;
  if (opt.outlier_fraction > 0.0) {
    outliers = std::make_unique<qe::Outliers>(problem, opt);
    res.lambda_max = outliers->lambda_max();
    res.eta = outliers->eta();
    res.outlier_count = outliers->k();
    timer.lap("outliers");
  }

  // The grid kind is chosen once per call: given codebooks or LeanQuant's, else affine grids.
  const auto run = [&](auto start) {
    res.quant.damp = start.solver_output.damp;
    res.quant.damp_attempts = start.solver_output.damp_attempts;
    solve(W, H, problem, start, outliers.get(), opt, res, timer);
  };
  if (opt.codebook.size() > 0 || opt.init == QuantEaseInit::leanquant) run(qe::codebook_start(W, H, problem, opt));
  else run(qe::affine_start(W, H, problem, outliers.get(), opt));
  return res;
}

template QuantEaseOutput quantease<float>(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<float>&,
                                          const QuantEaseOptions&);
template QuantEaseOutput quantease<double>(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<double>&,
                                           const QuantEaseOptions&);

}  // namespace quantease
