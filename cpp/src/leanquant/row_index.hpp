// The row index of LeanQuant's affine search (private header): the row in bucket order with its prefix
// moments, and a table of fine buckets over [min, max] that answers "the sums over the values below v" (at()).
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "quantease/sorted_row.hpp"

namespace quantease::leanquant_detail {

// The table has kBucketsPerValue buckets per value over [min, max]: table[b] = the number of values in the
// buckets below b, so bucket b holds the row positions [table[b], table[b + 1]). The row need not be sorted
// within buckets: at() adds a bucket's few values one by one (crowded buckets, more than kCrowded values,
// are kept sorted and binary-searched instead).
class RowIndex {
 public:
  // buckets per value: few values per bucket even in the dense middle of an LLM-like row, for at() to add
  // one by one (8 beat 2, 4 and 32 on 4096-value rows)
  static constexpr Index kBucketsPerValue = 8;
  static constexpr Index kCrowded = 16;  // buckets of more values are kept sorted

  // The index of a sorted row: its values and prefix moments as they are, and the table over them.
  void build_from_sorted(const SortedRow& row);
  // The index of values in any order: the row put into bucket order -- the table's buckets in increasing
  // order of value, each bucket's values in position order, crowded buckets sorted by (x, s) -- with the
  // prefix moments of that order. Counting, one stable scatter and one pass of sums: O(n + buckets) on rows
  // without crowded buckets, no full sort.
  void build_from_values(const float* values, const double* weights, Index n);

  Index size() const { return n_; }
  const double* x() const { return x_; }
  const double* s() const { return s_; }
  double min() const { return mn_; }
  double max() const { return mx_; }
  // build_from_values()'s extremes, as float32
  float min_value() const { return fmin_; }
  float max_value() const { return fmax_; }
  const Moments& none() const { return none_; }       // the sums below -inf
  const Moments& all() const { return prefix_[n_]; }  // below +inf

  // Sums over the values below v (at or below v with Inclusive). The table is exact for the bucket of v:
  // the bucket function fl(fl(x - min) / w) is monotone in x and computed from the same min and 1 / w as
  // the table, so every value of a lower bucket is < v and every value of a higher one > v; the prefix sums
  // at the bucket's start plus its own values below v give the sums exactly over {x < v}, up to the round-off
  // of the sums. Only for rows with max > min.
  template <bool Inclusive = false>
  Moments at(double v) const {
    const double f = (v - mn_) * inv_width_;
    const Index b = f > 0.0 ? (f < static_cast<double>(nb_ - 1) ? static_cast<Index>(f) : nb_ - 1) : 0;
    Index p = table_[b];
    const Index e = table_[b + 1];
    if (e - p > kCrowded) {  // a sorted bucket (build_from_values(), or a sorted row)
      const double* q = Inclusive ? std::upper_bound(x_ + p, x_ + e, v) : std::lower_bound(x_ + p, x_ + e, v);
      return prefix_[q - x_];
    }
    Moments c = prefix_[p];
    for (; p < e; ++p) {
      const double x = x_[p];
      const double w = (Inclusive ? x <= v : x < v) ? s_[p] : 0.0;
      c.s0 += w;
      c.s1 += w * x;
      c.s2 += w * x * x;
    }
    return c;
  }

 private:
  void find_extremes(const float* values, Index n);
  std::uint32_t scatter_into_buckets(const float* values, const double* weights);
  void sort_crowded_buckets();

  const double* x_ = nullptr;  // the row in bucket order, and its weights
  const double* s_ = nullptr;
  const Moments* prefix_ = nullptr;  // n + 1 prefix moments of that order
  Index n_ = 0, nb_ = 0;             // values, buckets
  double mn_ = 0, mx_ = 0, inv_width_ = 0;
  float fmin_ = 0, fmax_ = 0;
  Moments none_;
  std::vector<std::uint32_t> table_;  // nb_ + 1 entries (n < 2^32)
  // build_from_values()'s own row: values and weights in bucket order, their prefix moments, each value's
  // bucket, and a crowded bucket's (x, s) while it is sorted
  std::vector<double> own_x_, own_s_;
  std::vector<Moments> own_prefix_;
  std::vector<std::uint32_t> bin_;
  std::vector<std::pair<double, double>> pairs_;
};

}  // namespace quantease::leanquant_detail
