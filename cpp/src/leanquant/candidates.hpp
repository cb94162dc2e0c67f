// The candidate set of LeanQuant's affine search as sequences of scales, and the best candidate found so far
// (private header).
//
// Every candidate (lo, hi) of the paper's set gives a grid (scale h, zero z), and its weighted error depends
// on (h, z) only:
//   E(h, z) = sum_x s (x - h k(x))^2,  k(x) = clamp(rint(x / h), -z, maxq - z)   (nearest allowed lattice point).
// The candidates fall into three families, each a sequence t = 0, 1, ... of decreasing scales
// h(t) = (top - t d) / maxq with a set of zeros per t:
//   A (0)  lo < 0 < hi: t = m = i + j, top = max - min, zeros rint(-lo / h) over the i of that m;
//   B (1)  lo >= 0: xmin = 0, t = j, top = max, zero 0;
//   C (2)  hi <= 0: xmax = 0, t = i, top = -min, zero maxq.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "quantease/leanquant/affine_search.hpp"

namespace quantease::leanquant_detail {

// Consecutive scales [t1, t2) of one family and the zeros any of its candidates can take.
struct ScaleBlock {
  int fam;
  Index t1, t2;
  int zlo, zhi;
};

class CandidateSet {
 public:
  // The candidates of a row with extremes mn < mx, at `bits` with T = steps.
  void reset(double mn, double mx, int bits, Index steps) {
    maxq_ = (1 << bits) - 1;
    T_ = steps;
    mn_ = mn;
    mx_ = mx;
    R_ = mx_ - mn_;
    delta_ = R_ / T_;
    // i0: candidates i with lo < 0 are i < i0; j0: those j with hi > 0 are j < j0.
    auto count_below = [&](auto&& pred) {
      Index lo = 0, hi = T_;  // pred is true on a prefix of [0, T)
      while (lo < hi) {
        const Index mid = (lo + hi) / 2;
        if (pred(mid)) lo = mid + 1;
        else hi = mid;
      }
      return lo;
    };
    i0_ = count_below([&](Index i) { return mn_ + i * delta_ < 0.0; });
    j0_ = count_below([&](Index j) { return mx_ - j * delta_ > 0.0; });
  }

  int maxq() const { return maxq_; }
  Index steps() const { return T_; }
  double range() const { return R_; }  // max - min
  double delta() const { return delta_; }
  Index i0() const { return i0_; }
  Index j0() const { return j0_; }

  double scale(int fam, Index t) const {
    const double top = fam == 0 ? R_ : fam == 1 ? mx_ : -mn_;
    return (top - t * delta_) / maxq_;
  }
  int zero_of(double lo, double h) const {
    return static_cast<int>(std::clamp(std::nearbyint(-lo / h), 0.0, static_cast<double>(maxq_)));
  }
  // Family A at m: i runs over [ilo, ihi].
  Index ilo(Index m) const { return std::max<Index>(0, m - j0_ + 1); }
  Index ihi(Index m) const { return std::min<Index>(m, i0_ - 1); }
  // The least and largest zero of family A's candidates at step t (scale h = scale(0, t)).
  int zero_max(Index t, double h) const { return zero_of(mn_ + ilo(t) * delta_, h); }
  int zero_min(Index t, double h) const { return zero_of(mn_ + ihi(t) * delta_, h); }
  // -lo / h moves by maxq / (T - m) per step of i: below 1, every zero between zero_min and zero_max occurs.
  bool every_zero_occurs(Index t) const { return T_ - t > maxq_ + 1; }
  // Otherwise: present[z] = 1 for the zeros that occur at step t (the others left as they are).
  void mark_zeros(Index t, double h, char* present) const {
    for (Index i = ilo(t); i <= ihi(t); ++i) present[zero_of(mn_ + i * delta_, h)] = 1;
  }

  ScaleBlock block(int fam, Index t1, Index t2) const {
    ScaleBlock k{fam, t1, t2, 0, 0};
    if (fam == 0) {  // -lo / h is largest for the least i and the least h, least for the largest i and h
      k.zhi = zero_max(t1, scale(0, t2 - 1));
      k.zlo = zero_min(t2 - 1, scale(0, t1));
    } else if (fam == 2) {
      k.zlo = k.zhi = maxq_;
    }
    return k;
  }

  // Scales below the smallest normal float cannot be stored: the t < len that remain (h decreases with t).
  Index usable_len(int fam, Index len) const {
    const double min_scale = std::numeric_limits<float>::min();
    if (len > 0 && !(scale(fam, len - 1) >= min_scale)) {
      Index lo = 0, hi = len;  // first t with a too small scale
      while (lo < hi) {
        const Index mid = (lo + hi) / 2;
        if (scale(fam, mid) >= min_scale) lo = mid + 1;
        else hi = mid;
      }
      len = lo;
    }
    return len;
  }

  // The winner's scale as the paper's candidate computes it, (xmax - xmin) / maxq from lo = min + i d and
  // hi = max - j d, each rounded as NumPy does (not fused), for the first (i, j) in (i, j) order that gives
  // the winner; it differs from scale(fam, t) by round-off only, but after the cast to float32 that can be an
  // ulp, and this way the result is the brute force's where it is not a tie up to round-off.
  double paper_scale(int fam, Index t, int z) const {
    auto mul_add = [](double a, double b, double c) {
      volatile double p = b * c;  // no fused multiply-add
      return a + p;
    };
    if (fam == 1) return mul_add(mx_, -static_cast<double>(t), delta_) / maxq_;
    if (fam == 2) return (0.0 - mul_add(mn_, static_cast<double>(t), delta_)) / maxq_;
    const double h = scale(0, t);
    Index i = ilo(t);
    while (i < ihi(t) && zero_of(mn_ + i * delta_, h) != z) ++i;
    const double lo = mul_add(mn_, static_cast<double>(i), delta_);
    const double hi = mul_add(mx_, -static_cast<double>(t - i), delta_);
    return (hi - lo) / maxq_;
  }

 private:
  int maxq_ = 1;
  Index T_ = 0, i0_ = 0, j0_ = 0;
  double mn_ = 0, mx_ = 0, R_ = 0, delta_ = 0;
};

// The best candidate so far: its grid and error, where it came from, and the slack of the exclusions.
struct BestCandidate {
  GridSearchResult grid;
  int fam = 0;
  Index t = 0;
  // round-off of a prefix-sum difference: a bound must exceed the best by more to exclude a candidate
  double eps = 0.0;

  void reset(double slack) {
    grid = GridSearchResult();
    grid.error = std::numeric_limits<double>::infinity();
    eps = slack;
  }
  // Whether a lower bound rules out beating the best.
  bool excludes(double bound) const { return bound > grid.error + eps; }
  void offer(double error, double h, int z, int family, Index step) {
    if (error < grid.error) {
      grid.error = error;
      grid.scale = h;
      grid.zero = z;
      grid.found = true;
      fam = family;
      t = step;
    }
  }
};

}  // namespace quantease::leanquant_detail
