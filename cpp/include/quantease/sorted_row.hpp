// A row of values sorted once, with the prefix sums every 1-D grid fit reads (LeanQuant's weighted k-means
// and affine search, EasyQuant's range search): the sums over the values below any threshold in O(log n).
//
// Sorting: LSD radix on order-preserving keys of the float32 values (-0 counts as +0, as in a comparison).
// 64-bit keys (value key << 32 | position, ties keep positions) when weights travel with the values,
// 32-bit keys when only the values matter.
// Prefix moments: M[i] = (sum s, sum s x, sum s x^2) over the first i values, in double, so that a range's
// sums and its error sum s (x - c)^2 cost O(1).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "quantease/types.hpp"

namespace quantease {

// The order-preserving uint32 of a float32 (-0 and +0 get the same key), and the float back.
inline std::uint32_t order_key(float value) {
  const float v = value + 0.0f;
  std::uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

inline float from_order_key(std::uint32_t key) {
  const std::uint32_t u = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Sorts keys ascending by their value key (a uint64's upper half; the position below it follows along),
// stably. `scratch` is reused across calls.
void sort_by_value_key(std::vector<std::uint32_t>& keys, std::vector<std::uint32_t>& scratch);
void sort_by_value_key(std::vector<std::uint64_t>& keys, std::vector<std::uint64_t>& scratch);

// values[0..n) ascending into sorted[0..n) (-0 comes out as +0); keys and scratch are reused buffers.
void sort_values(const float* values, Index n, std::vector<std::uint32_t>& keys, std::vector<std::uint32_t>& scratch,
                 float* sorted);

// out[i] = the sum of term(j) over j < i, for i in [0, n]. The additions run in `Chains` independent running
// sums over consecutive blocks of [0, n) (one chain waits an add latency per term), each block then shifted
// by the total before it: the round-off depends on Chains and n, never on anything else.
template <int Chains, class Sum, class Term>
void prefix_sums(Index n, Term term, Sum* out) {
  const Index block = (n + Chains - 1) / Chains;
  Sum run[Chains] = {};
  out[0] = Sum{};
  for (Index i = 0; i < block; ++i)
    for (int c = 0; c < Chains; ++c) {
      const Index j = c * block + i;
      if (j < n) out[j + 1] = run[c] += term(j);
    }
  for (int c = 1; c < Chains; ++c) {
    const Sum offset = out[std::min(n, c * block)];
    for (Index j = c * block; j < std::min(n, (c + 1) * block); ++j) out[j + 1] += offset;
  }
}

// Weighted moments of a set of values: sums of s, s x and s x^2.
struct Moments {
  double s0 = 0.0, s1 = 0.0, s2 = 0.0;
  Moments& operator+=(const Moments& o) {
    s0 += o.s0;
    s1 += o.s1;
    s2 += o.s2;
    return *this;
  }
};

// The moments of (x[i], s[i]) for i < j, for every j in [0, n] (one running sum: the order of a plain loop).
inline void prefix_moments(const double* x, const double* s, Index n, Moments* out) {
  prefix_sums<1>(n, [x, s](Index i) { return Moments{s[i], s[i] * x[i], s[i] * x[i] * x[i]}; }, out);
}

// sum s (x - c)^2 over the values between two prefix moments (lo taken before hi)
inline double segment_error(const Moments& lo, const Moments& hi, double c) {
  return (hi.s2 - lo.s2) - 2.0 * c * (hi.s1 - lo.s1) + c * c * (hi.s0 - lo.s0);
}

// One row (or group) sorted by value (ties by position), with its weights and prefix moments.
class SortedRow {
 public:
  std::vector<double> x, s;     // values ascending, their weights
  std::vector<Moments> prefix;  // n + 1: prefix[i] over the first i sorted values

  void assign(const float* values, const double* weights, Index n);
  Index size() const { return static_cast<Index>(x.size()); }
  // sum over sorted positions [a, b) of s (x - c)^2
  double segment_error(Index a, Index b, double c) const { return quantease::segment_error(prefix[a], prefix[b], c); }

 private:
  std::vector<std::uint64_t> keys_, scratch_;  // (value key << 32 | position), reused across rows
};

// Branch-free binary searches on a sorted x[lo, hi): the first position with x >= v (Upper = false) or
// x > v (Upper = true). Searches that land anywhere would mispredict a branch every other step.
template <bool Upper, class T>
Index search_sorted(const T* x, Index lo, Index hi, T v) {
  const T* base = x + lo;
  Index len = hi - lo;
  if (len <= 0) return lo;
  while (len > 1) {
    const Index half = len / 2;
    // (an index multiply: GCC turns a ternary of pointers into a branch here)
    base += half * static_cast<Index>(Upper ? base[half - 1] <= v : base[half - 1] < v);
    len -= half;
  }
  return (base - x) + (Upper ? *base <= v : *base < v);
}

// search_sorted for R <= kMaxSearchLanes independent queries in lockstep: their steps interleave, so the
// load latency of one chain hides behind the others.
constexpr int kMaxSearchLanes = 64;

template <bool Upper, class T>
void search_sorted_lanes(const T* x, const Index* lo, const Index* hi, const T* v, Index* out, int R) {
  const T* base[kMaxSearchLanes];
  Index len[kMaxSearchLanes];
  Index longest = 0;
  for (int r = 0; r < R; ++r) {
    base[r] = x + lo[r];
    len[r] = std::max<Index>(hi[r] - lo[r], 0);
    longest = std::max(longest, len[r]);
  }
  while (longest > 1) {
    longest = 0;
    for (int r = 0; r < R; ++r) {
      const Index half = len[r] / 2;  // 0 once a query is down to one position: its steps are no-ops
      // an empty query (len 0) may start at x[n]: it must not read there
      const T probe = len[r] > 0 ? base[r][std::max<Index>(half - 1, 0)] : v[r];
      base[r] += half * static_cast<Index>(Upper ? probe <= v[r] : probe < v[r]);
      len[r] -= half;
      longest = std::max(longest, len[r]);
    }
  }
  for (int r = 0; r < R; ++r)
    out[r] = len[r] == 0 ? lo[r] : (base[r] - x) + (Upper ? *base[r] <= v[r] : *base[r] < v[r]);
}

}  // namespace quantease
