// The one sort of rows of values (LSD radix on order-preserving keys) and SortedRow, see sorted_row.hpp.
#include "quantease/sorted_row.hpp"

namespace quantease {
namespace {

// LSD radix sort on the value key (bits from `base` up) in digits of the given widths, low first: one pass
// over the keys for all histograms, and a digit that is the same everywhere skips its pass. Stable.
template <class Key, int Digits>
void radix_sort(std::vector<Key>& keys, std::vector<Key>& scratch, int base, const int (&width)[Digits]) {
  const Index n = static_cast<Index>(keys.size());  // < 2^32 (positions fit a uint64's low half)
  if (n == 0) return;
  scratch.resize(n);
  int shift[Digits];
  std::uint32_t count[Digits][1 << 11];
  for (int p = 0, at = base; p < Digits; at += width[p], ++p) {
    shift[p] = at;
    std::fill(count[p], count[p] + (1 << width[p]), 0u);
  }
  for (Index i = 0; i < n; ++i)
    for (int p = 0; p < Digits; ++p) ++count[p][(keys[i] >> shift[p]) & ((1u << width[p]) - 1)];
  for (int p = 0; p < Digits; ++p) {
    const Key mask = (1u << width[p]) - 1;
    if (count[p][(keys[0] >> shift[p]) & mask] == static_cast<std::uint32_t>(n)) continue;
    std::uint32_t offset = 0;
    for (int c = 0; c < (1 << width[p]); ++c) {
      const std::uint32_t k = count[p][c];
      count[p][c] = offset;
      offset += k;
    }
    for (Index i = 0; i < n; ++i) scratch[count[p][(keys[i] >> shift[p]) & mask]++] = keys[i];
    keys.swap(scratch);
  }
}

// Three digits of 11/11/10 bits, or four of 8 bits for short rows (smaller histograms to clear and scan).
template <class Key>
void sort_keys(std::vector<Key>& keys, std::vector<Key>& scratch) {
  constexpr int base = sizeof(Key) == 8 ? 32 : 0;
  if (keys.size() > 512) {
    static constexpr int kWide[3] = {11, 11, 10};
    radix_sort(keys, scratch, base, kWide);
  } else {
    static constexpr int kNarrow[4] = {8, 8, 8, 8};
    radix_sort(keys, scratch, base, kNarrow);
  }
}

}  // namespace

void sort_by_value_key(std::vector<std::uint32_t>& keys, std::vector<std::uint32_t>& scratch) {
  sort_keys(keys, scratch);
}

void sort_by_value_key(std::vector<std::uint64_t>& keys, std::vector<std::uint64_t>& scratch) {
  sort_keys(keys, scratch);
}

void sort_values(const float* values, Index n, std::vector<std::uint32_t>& keys, std::vector<std::uint32_t>& scratch,
                 float* sorted) {
  keys.resize(n);
  for (Index i = 0; i < n; ++i) keys[i] = order_key(values[i]);
  sort_by_value_key(keys, scratch);
  for (Index i = 0; i < n; ++i) sorted[i] = from_order_key(keys[i]);
}

void SortedRow::assign(const float* values, const double* weights, Index n) {
  keys_.resize(n);
  for (Index i = 0; i < n; ++i)
    keys_[i] = (static_cast<std::uint64_t>(order_key(values[i])) << 32) | static_cast<std::uint64_t>(i);
  sort_by_value_key(keys_, scratch_);
  x.resize(n);
  s.resize(n);
  prefix.resize(n + 1);
  // the gather into sorted order rides along the running sums (which wait on an add latency per value)
  prefix_sums<1>(
      n,
      [&](Index i) {
        const Index j = static_cast<Index>(keys_[i] & 0xFFFFFFFFu);
        const double xi = values[j], si = weights[j];
        x[i] = xi;
        s[i] = si;
        return Moments{si, si * xi, si * xi * xi};
      },
      prefix.data());
}

}  // namespace quantease
