// The driver of LeanQuant's affine search (private header): a row index, the candidate set, the branch and
// bound and the sweep, and which family each takes.
#pragma once

#include "branch_and_bound.hpp"
#include "candidates.hpp"
#include "row_index.hpp"
#include "sweep_search.hpp"

namespace quantease::leanquant_detail {

// The least-E grid of one row (or group) at a time; its buffers are reused across rows.
class AffineSearch {
 public:
  AffineSearch() : bnb_(index_, candidates_, best_), sweep_(index_, candidates_, bnb_, best_) {}
  AffineSearch(const AffineSearch&) = delete;
  AffineSearch& operator=(const AffineSearch&) = delete;

  // weighted_grid_search() of a sorted row.
  GridSearchResult search_sorted(const SortedRow& row, int bits, int steps) {
    index_.build_from_sorted(row);
    return search(bits, steps);
  }
  // The same of values in any order (no full sort: the index keeps them in bucket order).
  GridSearchResult search_values(const float* values, const double* weights, Index n, int bits, int steps) {
    index_.build_from_values(values, weights, n);
    return search(bits, steps);
  }
  // search_values()'s row's extremes
  float row_min() const { return index_.min_value(); }
  float row_max() const { return index_.max_value(); }

 private:
  GridSearchResult search(int bits, int steps);

  RowIndex index_;
  CandidateSet candidates_;
  BestCandidate best_;
  BranchAndBound bnb_;
  SweepSearch sweep_;
};

}  // namespace quantease::leanquant_detail
