// The sweep of the affine search for short groups, see sweep_search.hpp.
#include "sweep_search.hpp"

#include <algorithm>
#include <limits>

namespace quantease::leanquant_detail {

// (B_z, C_z) at t = 0 from each value's lattice point there.
void SweepSearch::start_sums(double h0) {
  const Index n = index_.size();
  const double* x = index_.x();
  const double* s = index_.s();
  const int nz = maxq_ + 1;
  B_.assign(nz, 0.0);
  C_.assign(nz, 0.0);
  k0_.resize(n);
  for (Index p = 0; p < n; ++p) {
    const double xp = x[p], w = s[p];
    int k = 0;
    if (xp > 0.0) {
      while (k < maxq_ && xp >= (k + 0.5) * h0) ++k;
      for (int z = 0; z < nz; ++z) {
        const double c = std::min(k, maxq_ - z);
        B_[z] += w * xp * c;
        C_[z] += w * c * c;
      }
    } else if (xp < 0.0) {
      while (k > -maxq_ && xp < (k - 0.5) * h0) --k;
      for (int z = 0; z < nz; ++z) {
        const double c = std::max(k, -z);
        B_[z] += w * xp * c;
        C_[z] += w * c * c;
      }
    }
    k0_[p] = k;
  }
}

// Whether the bound of the scales [t, len) excludes every zero still live.
bool SweepSearch::excluded_from(Index t, Index len, double best) {
  bnb_.bound(cand_.block(0, t, len), tail_lb_.data());
  for (int z = 0; z <= maxq_; ++z)
    if (live_[z] && !(tail_lb_[z] > best + best_.eps)) return false;
  return true;
}

// The sweep's end: the first checkpoint from which the bound of all remaining scales excludes every zero
// (bounds of nested blocks only grow: bisection), len if none.
Index SweepSearch::sweep_end(Index len, double best) {
  Index lo = 0, hi = (len - 1) / kCheck;  // checkpoints c * kCheck, c in (lo, hi]
  if (hi > 0 && excluded_from(hi * kCheck, len, best)) {
    while (hi - lo > 1) {
      const Index mid = (lo + hi) / 2;
      if (excluded_from(mid * kCheck, len, best)) hi = mid;
      else lo = mid;
    }
    return hi * kCheck;
  }
  return len;
}

// The code changes of the scales [1, end), bucketed by scale.
void SweepSearch::bucket_events(Index end) {
  const Index n = index_.size();
  const double* x = index_.x();
  const double* s = index_.s();
  head_.assign(end, -1);
  events_.resize(n * maxq_);  // at most maxq crossings per value
  n_events_ = 0;
  const double* inv_half = inv_half_.data() + maxq_;
  for (Index p = 0; p < n; ++p) {
    const double xp = x[p], w = s[p];
    if (!(w > 0.0) || xp == 0.0) continue;  // no error either way / always on lattice point 0
    if (xp > 0.0) {
      for (int b = k0_[p]; b < maxq_; ++b) {  // crossing boundary b + 1/2: k = b -> b + 1
        const Index t = crossing(xp * inv_half[b], end);
        if (t >= end) break;
        push_event(t, w * xp, w * (2.0 * b + 1.0), 0, maxq_ - b - 1);
      }
    } else {
      for (int b = k0_[p] - 1; b >= -maxq_; --b) {  // crossing boundary b + 1/2 downwards: k = b + 1 -> b
        const Index t = crossing(xp * inv_half[b], end);
        if (t >= end) break;
        push_event(t, -w * xp, w * (1.0 - 2.0 * (b + 1)), -b, maxq_);
      }
    }
  }
}

// Steps 1 .. end - 1: the events of each step applied to the sums, then E of the step's zeros.
void SweepSearch::sweep(Index end, Winner& win) {
  const int nz = maxq_ + 1;
  const double sum_sx2 = index_.all().s2;
  // the zeros of each step t as the branch and bound computes them (the same candidate set), in one pass
  // that vectorises (two divisions per step)
  zlo_.resize(end);
  zhi_.resize(end);
  for (Index t = 1; t < end; ++t) {
    const double h = cand_.scale(0, t);
    zhi_[t] = cand_.zero_max(t, h);
    zlo_[t] = cand_.zero_min(t, h);
  }
  ez_.resize(nz);
  double* ez = ez_.data();
  for (Index t = 1; t < end; ++t) {
    for (Index e = head_[t]; e >= 0; e = events_[e].next) {
      const Event& ev = events_[e];
      for (int z = ev.z1; z <= ev.z2; ++z) {
        B_[z] += ev.dB;
        C_[z] += ev.dC;
      }
    }
    if (t % kCheck == 0) {  // zeros the remaining scales cannot improve on go for good
      bnb_.bound(cand_.block(0, t, end), tail_lb_.data());
      bool any = false;
      for (int z = 0; z < nz; ++z) {
        if (tail_lb_[z] > win.error + best_.eps) {
          live_[z] = 0;
          dead_[z] = std::numeric_limits<double>::infinity();
        }
        any = any || live_[z];
      }
      if (!any) break;
    }
    const double h = cand_.scale(0, t);
    const int zhi = zhi_[t], zlo = zlo_[t];
    // E of every zero and whether one of the step's beats the best (rarely): a fixed loop over all zeros
    // vectorises, one over [zlo, zhi] does not
    int hit = 0;
    for (int z = 0; z < nz; ++z) {
      ez[z] = sum_sx2 + h * (h * C_[z] - 2.0 * B_[z]) + dead_[z];
      hit |= (z >= zlo) & (z <= zhi) & (ez[z] < win.error);
    }
    if (!hit) continue;
    const bool all = cand_.every_zero_occurs(t);
    if (!all) {
      std::fill(present_.begin(), present_.end(), 0);
      cand_.mark_zeros(t, cand_.scale(0, t), present_.data());
    }
    for (int z = zlo; z <= zhi; ++z) {
      if (ez[z] < win.error && (all || present_[z])) {
        win.error = ez[z];
        win.t = t;
        win.z = z;
      }
    }
  }
}

// E of (scale(0, t), z) point by point (a point on a boundary: either code, the same error).
double SweepSearch::exact_error(Index t, int z) const {
  const Index n = index_.size();
  const double* x = index_.x();
  const double* s = index_.s();
  const double h = cand_.scale(0, t);
  double err = 0.0;
  for (Index p = 0; p < n; ++p) {
    const double k = std::floor(x[p] / h + 0.5);
    const double c = std::clamp(k, static_cast<double>(-z), static_cast<double>(maxq_ - z));
    err += s[p] * (x[p] - h * c) * (x[p] - h * c);
  }
  return err;
}

bool SweepSearch::run(Index len) {
  if (len == 0) return true;
  maxq_ = cand_.maxq();
  const int nz = maxq_ + 1;
  const double sum_sx2 = index_.all().s2;
  inv_delta_ = 1.0 / cand_.delta();
  inv_half_.resize(2 * maxq_ + 1);
  for (int b = -maxq_; b <= maxq_; ++b) inv_half_[b + maxq_] = 1.0 / (b + 0.5);
  const double h0 = cand_.scale(0, 0);
  start_sums(h0);
  // The incumbent of t = 0 (the min-max range), then the sweep's end.
  Winner win{best_.grid.error, -1, 0};
  const int zlo = cand_.zero_min(0, h0), zhi = cand_.zero_max(0, h0);
  for (int z = zlo; z <= zhi; ++z) {
    const double err = sum_sx2 + h0 * (h0 * C_[z] - 2.0 * B_[z]);
    if (err < win.error) win = Winner{err, 0, z};
  }
  tail_lb_.resize(nz);
  live_.assign(nz, 1);
  dead_.assign(nz, 0.0);  // +inf for the zeros dropped
  present_.resize(nz);
  const Index end = sweep_end(len, win.error);
  bucket_events(end);
  sweep(end, win);
  if (win.t < 0) return true;
  // Within round-off of 0 the sum cannot tell candidates apart: the branch and bound decides instead.
  if (!(win.error > 1e-9 * sum_sx2)) return false;
  // the winner's E point by point (the sweep's sum may have lost digits to cancellation)
  best_.offer(exact_error(win.t, win.z), cand_.scale(0, win.t), win.z, 0, win.t);
  return true;
}

}  // namespace quantease::leanquant_detail
