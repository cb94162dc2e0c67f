// Weighted 1-D k-means (Lloyd) on a sorted row: assignments by binary searches for the midpoints, cluster
// sums from the prefix moments. See leanquant/kmeans.hpp.
#include "quantease/leanquant/kmeans.hpp"

#include <algorithm>
#include <vector>

#include "kmeans_plus_plus.hpp"
#include "lane_sum.hpp"

namespace quantease {
namespace {

using leanquant_detail::lane_sum;

constexpr Index kDirectSums = 16;  // clusters this small are summed directly

std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Lloyd's scratch, one per call: cluster t holds the sorted positions [ends[t-1], ends[t]).
struct Clusters {
  std::vector<Index> ends, previous, start, moved, count;
  std::vector<double> weight, weighted_sum;  // sum s, sum s x per cluster
  std::vector<char> empty;
  struct Far {
    double dist;
    Index pos;
    int cluster;
  };
  std::vector<Far> far;
  explicit Clusters(int k, Index n)
      : ends(k, n), previous(k, -1), start(k), moved(k), count(k), weight(k), weighted_sum(k), empty(k) {}
};

// Empty clusters take the points farthest from their centroids (as scikit-learn relocates them), which
// leave their own clusters; ties go to the lower position. Returns the number of empty clusters.
int relocate_empty(const SortedRow& row, int k, const double* c, Clusters& clusters) {
  std::fill(clusters.moved.begin(), clusters.moved.end(), -1);
  int n_empty = 0;
  for (int t = 0; t < k; ++t) {
    clusters.empty[t] = !(clusters.weight[t] > 0.0);
    n_empty += clusters.empty[t];
  }
  if (n_empty == 0) return 0;
  clusters.far.clear();
  for (int t = 0; t < k; ++t)
    for (Index i = clusters.start[t]; i < clusters.ends[t]; ++i)
      clusters.far.push_back({(row.x[i] - c[t]) * (row.x[i] - c[t]), i, t});
  const auto farther = [](const Clusters::Far& p, const Clusters::Far& q) {
    return p.dist > q.dist || (p.dist == q.dist && p.pos < q.pos);
  };
  const Index take = std::min<Index>(n_empty, static_cast<Index>(clusters.far.size()));
  std::partial_sort(clusters.far.begin(), clusters.far.begin() + take, clusters.far.end(), farther);
  Index next = 0;
  for (int t = 0; t < k && next < take; ++t) {
    if (!clusters.empty[t]) continue;
    const Clusters::Far& f = clusters.far[next++];
    clusters.weight[f.cluster] -= row.s[f.pos];
    clusters.weighted_sum[f.cluster] -= row.s[f.pos] * row.x[f.pos];
    if (--clusters.count[f.cluster] == 0)
      clusters.weight[f.cluster] = 0.0;  // gave all its points away: keeps its centroid
    clusters.moved[t] = f.pos;
  }
  return n_empty;
}

}  // namespace

SplitMix64::SplitMix64(std::uint64_t seed, std::uint64_t stream) : state(mix64(seed ^ mix64(stream + 1))) {}

std::uint64_t SplitMix64::next() {
  state += 0x9E3779B97F4A7C15ULL;
  return mix64(state);
}

int weighted_kmeans(const SortedRow& row, int k, int max_iter, double tol, SplitMix64& rng, double* c) {
  const Index n = row.size();
  const double lo = row.x.front(), hi = row.x.back();
  if (k <= 8) {
    // np.linspace(lo, hi, k)
    const double step = (hi - lo) / (k - 1);
    for (int t = 0; t < k; ++t) c[t] = t * step + lo;
    c[k - 1] = hi;
  } else {
    leanquant_detail::kmeans_plus_plus(row, k, rng, c);
  }
  const double* x = row.x.data();
  const Moments* M = row.prefix.data();
  const double mean = lane_sum(n, [x](Index i) { return x[i]; }) / n;
  const double var = lane_sum(n, [x, mean](Index i) { return (x[i] - mean) * (x[i] - mean); }) / n;

  Clusters clusters(k, n);
  int updates = 0;
  while (updates < max_iter) {
    // Assignment: values <= the midpoint go low.
    Index at = 0;
    for (int t = 0; t + 1 < k; ++t) {
      const double mid = 0.5 * (c[t] + c[t + 1]);
      at = search_sorted<true>(x, at, n, mid);
      clusters.ends[t] = at;
    }
    // Equal centroids: the first of the run takes all their points (argmin's first index), the rest are empty.
    for (int t = k - 2; t >= 0; --t)
      if (c[t] == c[t + 1]) clusters.ends[t] = clusters.ends[t + 1];
    if (clusters.ends == clusters.previous) break;  // labels unchanged: the centroids are already these clusters' means
    Index a = 0;
    for (int t = 0; t < k; ++t) {
      const Index b = clusters.ends[t];
      clusters.start[t] = a;
      clusters.count[t] = b - a;
      clusters.weight[t] = M[b].s0 - M[a].s0;
      clusters.weighted_sum[t] = M[b].s1 - M[a].s1;
      if (b - a <= kDirectSums) {
        // Few points: sum them directly; a prefix-sum difference would lose digits to the row's total.
        clusters.weight[t] = clusters.weighted_sum[t] = 0.0;
        for (Index i = a; i < b; ++i) {
          clusters.weight[t] += row.s[i];
          clusters.weighted_sum[t] += row.s[i] * row.x[i];
        }
      }
      a = b;
    }
    const int n_empty = relocate_empty(row, k, c, clusters);
    double shift = 0.0;
    for (int t = 0; t < k; ++t) {
      double centroid = c[t];
      if (clusters.moved[t] >= 0) centroid = row.x[clusters.moved[t]];
      // The mean of the cluster lies within it (round-off aside).
      else if (clusters.weight[t] > 0.0)
        centroid = std::clamp(clusters.weighted_sum[t] / clusters.weight[t], row.x[clusters.start[t]],
                              row.x[clusters.ends[t] - 1]);
      shift += (centroid - c[t]) * (centroid - c[t]);
      c[t] = centroid;
    }
    if (n_empty > 0) std::sort(c, c + k);
    ++updates;
    clusters.previous = clusters.ends;
    if (shift <= tol * var) break;
  }
  return updates;
}

}  // namespace quantease
