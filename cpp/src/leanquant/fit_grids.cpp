// Fitting LeanQuant's grids row by row (and group by group), see fit_grids.hpp.
#include "fit_grids.hpp"

#include <algorithm>
#include <limits>

#include "affine_fit.hpp"
#include "quantease/leanquant/kmeans.hpp"
#include "quantease/parallel.hpp"

namespace quantease::leanquant_detail {
namespace {

constexpr Index kFitChunk = 16;  // rows per grid-fitting task

// The codebook's weighted error on the sorted row (what k-means minimised), with the loop's nearest-entry
// rule: entry t takes the values in (mids[t-1], mids[t]].
double codebook_error(const SortedRow& row, const float* levels, const float* mids, int k) {
  double err = 0.0;
  Index a = 0;
  for (int t = 0; t < k; ++t) {
    const Index b = t + 1 < k ? std::upper_bound(row.x.begin() + a, row.x.end(), static_cast<double>(mids[t])) -
                                    row.x.begin()
                              : row.size();
    err += row.segment_error(a, b, levels[t]);
    a = b;
  }
  return err;
}

}  // namespace

FittedGrids fit_grids(const ConstRowMatrixRef<float>& W, const std::vector<char>& dead,
                      const Eigen::VectorXd& importance, const LeanQuantOptions& opt) {
  const Index rows = W.rows(), cols = W.cols();
  const Index groups = opt.group_size > 0 ? cols / opt.group_size : 1;
  const Index glen = opt.group_size > 0 ? opt.group_size : cols;
  const int k = 1 << opt.bits;
  FittedGrids fitted;
  fitted.error.resize(rows * groups);
  if (opt.affine) {
    fitted.affine.resize(rows * groups);
    fitted.minmax_error.resize(rows * groups);
  } else {
    fitted.codebook.resize(rows * groups, k);
    fitted.mids.resize(rows * groups, k);
    fitted.iters.resize(rows * groups);
  }
  parallel_chunks(rows, kFitChunk, [&](Index r0, Index r1) {
    std::vector<float> values(glen);
    std::vector<double> centroids(k);
    SortedRow sorted;
    AffineFitter fitter(opt.bits, opt.grid_steps);
    for (Index r = r0; r < r1; ++r) {
      for (Index g = 0; g < groups; ++g) {
        const Index c0 = g * glen, idx = r * groups + g;
        // (through plain pointers the copy vectorises; W's rows are contiguous)
        const float* w = W.row(r).data() + c0;
        const char* dead_here = dead.data() + c0;
        for (Index c = 0; c < glen; ++c) values[c] = dead_here[c] ? 0.0f : w[c];
        const double* s = importance.data() + c0;
        if (opt.affine) {
          const AffineFit f = fitter.fit(values.data(), s, glen);
          fitted.affine[idx] = f.grid;
          fitted.error[idx] = f.error;
          fitted.minmax_error[idx] = f.minmax_error;
          continue;
        }
        sorted.assign(values.data(), s, glen);
        SplitMix64 rng(opt.seed, static_cast<std::uint64_t>(idx));
        fitted.iters[idx] = weighted_kmeans(sorted, k, opt.kmeans_iters, opt.kmeans_tol, rng, centroids.data());
        float* levels = fitted.codebook.row(idx).data();
        float* mids = fitted.mids.row(idx).data();
        for (int t = 0; t < k; ++t) levels[t] = static_cast<float>(centroids[t]);
        for (int t = 0; t + 1 < k; ++t) mids[t] = 0.5f * (levels[t] + levels[t + 1]);
        mids[k - 1] = std::numeric_limits<float>::infinity();
        fitted.error[idx] = codebook_error(sorted, levels, mids, k);
      }
    }
  });
  return fitted;
}

}  // namespace quantease::leanquant_detail
