// The affine search's driver and weighted_grid_search(), see affine_search.hpp and
// quantease/leanquant/affine_search.hpp.
#include "affine_search.hpp"

#include <algorithm>

namespace quantease {
namespace leanquant_detail {

// Family A (lo < 0 < hi) first, by the sweep where it suits the row, else by the branch and bound. B (zero
// 0) leaves every x < 0 at 0 and C (zero maxq) every x > 0: each family goes as a whole when that alone
// exceeds the best of A.
GridSearchResult AffineSearch::search(int bits, int steps) {
  const double mn = index_.min(), mx = index_.max();
  const double range = mx - mn;
  best_.reset(0.0);
  if (!(range > 0.0)) return best_.grid;
  candidates_.reset(mn, mx, bits, steps);
  // round-off of a prefix-sum difference: a few ulps of sum s max(x^2, v^2), v <= 2 max |x|
  best_.eps = 1e-11 * std::max(mn * mn, mx * mx) * std::max(index_.all().s0, 0.0);
  bnb_.prepare();
  const Index T = candidates_.steps(), i0 = candidates_.i0(), j0 = candidates_.j0();
  // A: some i < i0 and j < j0 with i + j = m exist for m <= i0 + j0 - 2.
  if (i0 > 0 && j0 > 0) {
    const Index len = std::min<Index>(T, i0 + j0 - 1);
    if (!(SweepSearch::suits(candidates_.maxq(), index_.size()) && sweep_.run(candidates_.usable_len(0, len))))
      bnb_.search_family(0, len);
  }
  const double neg = index_.at(0.0).s2, pos = index_.all().s2 - index_.at<true>(0.0).s2;  // x < 0, x > 0
  if (i0 < T && !best_.excludes(neg)) bnb_.search_family(1, T - i0);                      // j = 0 .. T - 1 - i0
  if (j0 < T && !best_.excludes(pos)) bnb_.search_family(2, T - j0);
  if (best_.grid.found) best_.grid.scale = candidates_.paper_scale(best_.fam, best_.t, best_.grid.zero);
  return best_.grid;
}

}  // namespace leanquant_detail

GridSearchResult weighted_grid_search(const SortedRow& row, int bits, int steps) {
  thread_local leanquant_detail::AffineSearch search;  // buffers reused across rows
  return search.search_sorted(row, bits, steps);
}

}  // namespace quantease
