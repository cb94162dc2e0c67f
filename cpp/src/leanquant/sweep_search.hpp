// The sweep of LeanQuant's affine search for short groups (private header): family A's scales in order.
//
// A value's lattice point r(x) = k where (k - 1/2) h <= x < (k + 1/2) h (the boundaries of the exact E) only
// moves outwards as h shrinks, and its code under zero z is clamp(r, -z, maxq - z), so over the whole sweep
// a value changes code at most maxq + 1 times. With B_z = sum s x code_z, C_z = sum s code_z^2,
//   E(h, z) = sum s x^2 - 2 h B_z + h^2 C_z,
// and a value crossing from k to k + 1 (x > 0) adds (s x, s (2k + 1)) to (B_z, C_z) for the zeros
// z <= maxq - k - 1 whose window still holds k + 1 (x < 0 symmetrically, for z >= 1 - k). The events are
// bucketed by the first t at which they hold (exact: the boundary test at that t's scale), so a group costs
// O(n (maxq + 1) + len (maxq + 1)) with no bound and no search of positions -- on 128-value groups several
// times less than the branch and bound, whose every bound seeks ~3 maxq positions. The zeros no remaining
// scale can improve on are dropped every kCheck steps by the branch and bound's bound of the scales left.
// The sum can cancel (E << sum s x^2), so the winner's E is recomputed point by point.
#pragma once

#include <cmath>
#include <vector>

#include "branch_and_bound.hpp"

namespace quantease::leanquant_detail {

class SweepSearch {
 public:
  // Rows of at most kMaxValues values take the sweep for family A at 4 bits and more (measured faster than
  // the branch and bound there; slower at 2 bits, about even at 3, slower from 512 values on).
  static constexpr Index kMaxValues = 256;
  static bool suits(int maxq, Index n) { return maxq >= 15 && n <= kMaxValues; }

  SweepSearch(const RowIndex& index, const CandidateSet& candidates, BranchAndBound& bnb, BestCandidate& best)
      : index_(index), cand_(candidates), bnb_(bnb), best_(best) {}

  // Family A's scales t < len, offered to the best. False when the sums cannot tell the candidates apart
  // (the least E within round-off of 0): the branch and bound must decide instead.
  bool run(Index len);

 private:
  static constexpr Index kCheck = 128;  // steps between the bounds of the remaining scales

  // The best of the sweep: its sums' E (not exact), step and zero (t < 0: none beat the incumbent).
  struct Winner {
    double error;
    Index t;
    int z;
  };
  struct Event {
    double dB, dC;
    int z1, z2;  // zeros whose code changes
    Index next;  // next event of the same t (-1: none)
  };

  void start_sums(double h0);
  bool excluded_from(Index t, Index len, double best);
  Index sweep_end(Index len, double best);
  void bucket_events(Index end);
  void sweep(Index end, Winner& win);
  double exact_error(Index t, int z) const;

  // The first t >= 1 at which the scale h_t = (R - t delta) / maxq is at most v (len if none): a value
  // crosses the boundary (b + 1/2) h there, v = x / (b + 1/2) (its lattice point at t = 0 is known). Round-off
  // can put the crossing a step early or late only where the value lies within round-off of the boundary,
  // where both codes cost the same.
  Index crossing(double v, Index len) const {
    const double t = std::ceil((cand_.range() - maxq_ * v) * inv_delta_);
    return t <= 1.0 ? 1 : t >= static_cast<double>(len) ? len : static_cast<Index>(t);
  }
  void push_event(Index t, double dB, double dC, int z1, int z2) {
    events_[n_events_] = Event{dB, dC, z1, z2, head_[t]};
    head_[t] = n_events_++;
  }

  const RowIndex& index_;
  const CandidateSet& cand_;
  BranchAndBound& bnb_;
  BestCandidate& best_;
  int maxq_ = 1;
  double inv_delta_ = 0;
  std::vector<Event> events_;
  Index n_events_ = 0;
  std::vector<Index> head_;       // first event of each t
  std::vector<double> B_, C_;     // per zero, at the current t of the sweep
  std::vector<double> inv_half_;  // 1 / (b + 1/2) per boundary b (index b + maxq)
  std::vector<int> k0_;           // each value's lattice point at t = 0
  std::vector<double> tail_lb_;   // per zero, bound of the scales the sweep has not reached
  std::vector<int> zlo_, zhi_;    // per step of the sweep, its least and largest zero
  std::vector<double> ez_;        // per zero, E at the sweep's step
  std::vector<char> live_;        // zeros the sweep still evaluates
  std::vector<double> dead_;      // 0 for those, +inf for the others
  std::vector<char> present_;     // per zero: occurs at the step (where not every zero does)
};

}  // namespace quantease::leanquant_detail
