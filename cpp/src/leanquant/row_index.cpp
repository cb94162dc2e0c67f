// Building the affine search's row index: the bucket table over a sorted row, or the row put into bucket
// order. See row_index.hpp.
#include "row_index.hpp"

#include <tuple>

namespace quantease::leanquant_detail {

void RowIndex::build_from_sorted(const SortedRow& row) {
  const Index n = row.size();
  x_ = row.x.data();
  s_ = row.s.data();
  prefix_ = row.prefix.data();
  n_ = n;
  mn_ = row.x.front();
  mx_ = row.x.back();
  fmin_ = static_cast<float>(mn_);
  fmax_ = static_cast<float>(mx_);
  if (!(mx_ > mn_)) return;  // constant: no search, no table
  // Built branch-free from a histogram of each value's bucket (a walk over the edges mispredicted about
  // once per bucket).
  nb_ = kBucketsPerValue * n;
  inv_width_ = static_cast<double>(nb_) / (mx_ - mn_);
  table_.assign(nb_ + 1, 0);
  for (Index p = 0; p < n; ++p) {
    const double f = (x_[p] - mn_) * inv_width_;  // value p counts for the buckets above floor(f)
    const Index b = f < static_cast<double>(nb_) ? static_cast<Index>(f) + 1 : nb_;
    ++table_[b];
  }
  for (Index b = 1; b <= nb_; ++b) table_[b] += table_[b - 1];
}

void RowIndex::find_extremes(const float* values, Index n) {
  float lo[16], hi[16];  // min and max in independent lanes (vectorised)
  for (int l = 0; l < 16; ++l) lo[l] = hi[l] = values[0];
  Index p = 0;
  for (; p + 16 <= n; p += 16)
    for (int l = 0; l < 16; ++l) {
      lo[l] = values[p + l] < lo[l] ? values[p + l] : lo[l];
      hi[l] = values[p + l] > hi[l] ? values[p + l] : hi[l];
    }
  for (; p < n; ++p) {
    lo[0] = values[p] < lo[0] ? values[p] : lo[0];
    hi[0] = values[p] > hi[0] ? values[p] : hi[0];
  }
  fmin_ = lo[0];
  fmax_ = hi[0];
  for (int l = 1; l < 16; ++l) {
    fmin_ = std::min(fmin_, lo[l]);
    fmax_ = std::max(fmax_, hi[l]);
  }
}

// The table from each value's bucket, and the values scattered into bucket order (stable). Returns the most
// values in one bucket.
std::uint32_t RowIndex::scatter_into_buckets(const float* values, const double* weights) {
  const Index n = n_, nb = nb_;
  table_.assign(nb + 1, 0);
  bin_.resize(n);
  for (Index i = 0; i < n; ++i) {
    const double f = (static_cast<double>(values[i]) - mn_) * inv_width_;
    bin_[i] = static_cast<std::uint32_t>(f < static_cast<double>(nb) ? static_cast<Index>(f) : nb - 1);
  }
  for (Index i = 0; i < n; ++i) ++table_[bin_[i]];
  std::uint32_t most = 0;
  for (Index c = 0; c < nb; ++c) most = std::max(most, table_[c]);
  // end of bucket b (running sum), eight buckets at a time: their own running sums do not wait for the
  // total so far (a single chain through all buckets waits an add per bucket)
  std::uint32_t acc = 0;
  Index b = 0;
  for (; b + 8 <= nb; b += 8) {
    std::uint32_t g[8];
    g[0] = table_[b];
    for (int l = 1; l < 8; ++l) g[l] = g[l - 1] + table_[b + l];
    for (int l = 0; l < 8; ++l) table_[b + l] = acc + g[l];
    acc += g[7];
  }
  for (; b < nb; ++b) table_[b] = acc += table_[b];
  // stable scatter from the back: table_[c] ends at the start of bucket c, the table's entry
  for (Index i = n - 1; i >= 0; --i) {
    const std::uint32_t q = --table_[bin_[i]];
    own_x_[q] = values[i];
    own_s_[q] = weights[i];
  }
  table_[nb] = static_cast<std::uint32_t>(n);
  return most;
}

// Crowded buckets (many equal or close values: the zeros of dead columns, a row already on a grid) are
// sorted, by (x, s) for a deterministic order, so that at() finds its place there by binary search instead
// of adding up each value.
void RowIndex::sort_crowded_buckets() {
  for (Index c = 0; c < nb_; ++c) {
    const Index a = table_[c], e = table_[c + 1];
    if (e - a <= kCrowded) continue;
    pairs_.resize(e - a);
    for (Index i = a; i < e; ++i) pairs_[i - a] = {own_x_[i], own_s_[i]};
    std::sort(pairs_.begin(), pairs_.end());
    for (Index i = a; i < e; ++i) std::tie(own_x_[i], own_s_[i]) = pairs_[i - a];
  }
}

void RowIndex::build_from_values(const float* values, const double* weights, Index n) {
  find_extremes(values, n);
  n_ = n;
  mn_ = fmin_;
  mx_ = fmax_;
  own_x_.resize(n);
  own_s_.resize(n);
  if (!(mx_ > mn_)) {  // constant: no search (and no table) needed
    for (Index i = 0; i < n; ++i) {
      own_x_[i] = values[i];
      own_s_[i] = weights[i];
    }
  } else {
    nb_ = kBucketsPerValue * n;
    inv_width_ = static_cast<double>(nb_) / (mx_ - mn_);
    if (scatter_into_buckets(values, weights) > kCrowded) sort_crowded_buckets();
  }
  own_prefix_.resize(n + 1);
  prefix_moments(own_x_.data(), own_s_.data(), n, own_prefix_.data());
  x_ = own_x_.data();
  s_ = own_s_.data();
  prefix_ = own_prefix_.data();
}

}  // namespace quantease::leanquant_detail
