// LeanQuant's non-uniform grid fit: weighted 1-D k-means of a sorted row (see leanquant.hpp), and the random
// stream of its k-means++ seeding.
#pragma once

#include <cstdint>

#include "quantease/sorted_row.hpp"

namespace quantease {

// splitmix64 (Steele et al.): the k-means++ random stream, reproducible in NumPy (tests/reference).
struct SplitMix64 {
  std::uint64_t state;
  explicit SplitMix64(std::uint64_t seed, std::uint64_t stream);
  std::uint64_t next();
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
};

// Weighted 1-D k-means of the row into k centroids (ascending, written to c). Init: evenly spaced between min
// and max when k <= 8, else greedy k-means++ (max(8, 2 + floor(ln k)) trials per centre, sampled from `rng`).
// Lloyd: assignment by midpoints (a value on a midpoint joins the lower centroid), weighted means; empty
// clusters move to the points farthest from their centroids (scikit-learn's relocation); stops when the
// assignment repeats, when sum (c_new - c)^2 <= tol * var(x), or after max_iter updates. Returns the number of
// updates. Precondition: n >= 1, s >= 0.
int weighted_kmeans(const SortedRow& row, int k, int max_iter, double tol, SplitMix64& rng, double* c);

}  // namespace quantease
