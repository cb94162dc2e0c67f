// k-means++ seeding of LeanQuant's weighted k-means (private header).
#pragma once

#include "quantease/leanquant/kmeans.hpp"

namespace quantease::leanquant_detail {

// Greedy weighted k-means++ (as scikit-learn's) of the sorted row: k ascending centres into c.
void kmeans_plus_plus(const SortedRow& row, int k, SplitMix64& rng, double* c);

}  // namespace quantease::leanquant_detail
