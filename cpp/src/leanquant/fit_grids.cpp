// Fitting LeanQuant's grids row by row (and group by group), see fit_grids.hpp.
#include "fit_grids.hpp"

#include <algorithm>

#include "affine_fit.hpp"
#include "quantease/leanquant/kmeans.hpp"
#include "quantease/parallel.hpp"

namespace quantease::leanquant_detail {
namespace {

constexpr Index kFitChunk = 16;  // rows per grid-fitting task

// The codebook's weighted error on the sorted row (what k-means minimised), with the loop's nearest-level
// rule: level t takes the values in (mid[t-1], mid[t]].
double codebook_error(const SortedRow& row, const CodebookRowGrid& grid) {
  const Index k = grid.k;
  double err = 0.0;
  Index a = 0;
  for (Index t = 0; t < k; ++t) {
    const Index b =
        t + 1 < k ? std::upper_bound(row.x.begin() + a, row.x.end(), static_cast<double>(grid.mid[t])) - row.x.begin()
                  : row.size();
    err += row.segment_error(a, b, grid.level[t]);
    a = b;
  }
  return err;
}

}  // namespace

FittedGrids fit_grids(const ConstRowMatrixRef<float>& W, const std::vector<char>& dead,
                      const Eigen::VectorXd& importance, const GroupMap& groups, const LeanQuantOptions& opt) {
  const Index rows = W.rows(), n_groups = groups.count(), glen = groups.size();
  const int k = 1 << opt.bits;
  FittedGrids fitted;
  fitted.error.resize(rows * n_groups);
  if (opt.affine) {
    fitted.affine = AffineGrids(rows, groups, opt.bits);
    fitted.minmax_error.resize(rows * n_groups);
  } else {
    fitted.codebook = CodebookGrids(RowMatrixXf::Zero(rows * n_groups, k), groups);
    fitted.iters.resize(rows * n_groups);
  }
  parallel_chunks(rows, kFitChunk, [&](Index r0, Index r1) {
    std::vector<float> values(glen);
    std::vector<double> centroids(k);
    SortedRow sorted;
    AffineFitter fitter(opt.bits, opt.grid_steps);
    for (Index r = r0; r < r1; ++r) {
      for (Index g = 0; g < n_groups; ++g) {
        const Index c0 = g * glen, idx = r * n_groups + g;
        // (through plain pointers the copy vectorises; W's rows are contiguous)
        const float* w = W.row(r).data() + c0;
        const char* dead_here = dead.data() + c0;
        for (Index c = 0; c < glen; ++c) values[c] = dead_here[c] ? 0.0f : w[c];
        const double* s = importance.data() + c0;
        if (opt.affine) {
          const AffineFit f = fitter.fit(values.data(), s, glen);
          fitted.affine.set(r, g, f.grid);
          fitted.error[idx] = f.error;
          fitted.minmax_error[idx] = f.minmax_error;
          continue;
        }
        sorted.assign(values.data(), s, glen);
        SplitMix64 rng(opt.seed, static_cast<std::uint64_t>(idx));
        fitted.iters[idx] = weighted_kmeans(sorted, k, opt.kmeans_iters, opt.kmeans_tol, rng, centroids.data());
        const Index at = fitted.codebook.index(r, g);
        float* levels = fitted.codebook.levels_at(at);
        for (int t = 0; t < k; ++t) levels[t] = static_cast<float>(centroids[t]);
        fitted.codebook.update_midpoints(at);
        fitted.error[idx] = codebook_error(sorted, fitted.codebook.row(r, g));
      }
    }
  });
  return fitted;
}

}  // namespace quantease::leanquant_detail
