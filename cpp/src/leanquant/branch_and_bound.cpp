// The branch and bound of the affine search, see branch_and_bound.hpp.
#include "branch_and_bound.hpp"

#include <algorithm>
#include <limits>

namespace quantease::leanquant_detail {

void BranchAndBound::prepare() {
  maxq_ = cand_.maxq();
  off_ = maxq_;
  const Index L = 2 * maxq_ + 1;
  sums_lo_.resize(L);
  sums_hi_.resize(L);
  sums_mid_.resize(L);
  sums_boundary_.resize(L);
  cum_.resize(L);
  lo_.resize(L);
  hi_.resize(L);
  below_.resize(L);
  above_.resize(L);
  open_.resize(L + 2);
  need_.assign(maxq_ + 1, 0);
  present_.assign(maxq_ + 1, 0);
}

void BranchAndBound::search_family(int fam, Index len) {
  len = cand_.usable_len(fam, len);
  if (len == 0) return;
  Level& top = level(0);
  top.blocks.clear();
  for (Index t = 0; t < len; t += kTop) top.blocks.push_back(cand_.block(fam, t, std::min(len, t + kTop)));
  explore_level(0, nullptr);
}

// Bounds the blocks of level `depth` (children of a block with bounds parent_lb, or nullptr), then explores
// them in increasing order of their least bound while that can still beat the best.
void BranchAndBound::explore_level(std::size_t depth, const double* parent_lb) {
  Level& lv = levels_[depth];
  const Index nz = maxq_ + 1;
  lv.lb.resize(lv.blocks.size() * nz);
  lv.order.clear();
  for (Index c = 0; c < static_cast<Index>(lv.blocks.size()); ++c) {
    double* lb = lv.lb.data() + c * nz;
    bound(lv.blocks[c], lb);
    double least = std::numeric_limits<double>::infinity();
    for (int z = 0; z < nz; ++z) {
      if (parent_lb) lb[z] = std::max(lb[z], parent_lb[z]);  // a parent's bound holds for its children
      least = std::min(least, lb[z]);
    }
    lv.order.emplace_back(least, c);
  }
  std::sort(lv.order.begin(), lv.order.end());
  for (std::size_t o = 0; o < levels_[depth].order.size(); ++o) {
    Level& cur = levels_[depth];  // (levels_ may grow below)
    if (best_.excludes(cur.order[o].first)) break;
    const Index c = cur.order[o].second;
    const ScaleBlock block = cur.blocks[c];
    const double* lb = cur.lb.data() + c * nz;
    if (block.t2 - block.t1 <= kSplit) {
      evaluate_block(block, lb);
      continue;
    }
    // children need only the zeros whose bound here can still beat the best (fewer lattice points)
    int zlo = maxq_ + 1, zhi = -1;
    for (int z = 0; z <= maxq_; ++z)
      if (!best_.excludes(lb[z])) {
        zlo = std::min(zlo, z);
        zhi = std::max(zhi, z);
      }
    if (zhi < 0) continue;
    Level& kids = level(depth + 1);
    Level& again = levels_[depth];
    kids.blocks.clear();
    const Index step = (block.t2 - block.t1 + kSplit - 1) / kSplit;
    for (Index t = block.t1; t < block.t2; t += step) {
      ScaleBlock kid = cand_.block(block.fam, t, std::min(block.t2, t + step));
      kid.zlo = std::max(kid.zlo, zlo);
      kid.zhi = std::min(kid.zhi, zhi);
      if (kid.zlo <= kid.zhi) kids.blocks.push_back(kid);
    }
    explore_level(depth + 1, again.lb.data() + c * nz);
  }
}

void BranchAndBound::bound(const ScaleBlock& block, double* lb) {
  std::fill(lb, lb + maxq_ + 1, std::numeric_limits<double>::infinity());
  const double h1 = cand_.scale(block.fam, block.t2 - 1), h2 = cand_.scale(block.fam, block.t1);
  const int kmin = -block.zhi, kmax = maxq_ - block.zlo;  // lattice points in use
  // Lattice point kk covers [lo_kk, hi_kk]; the gap to kk + 1 is open when lo_kk+1 > hi_kk, and its points
  // below the gap's midpoint are charged to kk, the others to kk + 1. Closed gaps (wide blocks, far
  // lattice points) charge nothing and need no positions. PL/PR/PM: the sums below lo, hi, midpoint.
  const int ahi = -block.zlo, blo = maxq_ - block.zhi;  // window ends a = -z <= ahi, b = maxq - z >= blo
  double* lo = lo_.data() + off_;
  double* hi = hi_.data() + off_;
  char* open = open_.data() + off_ + 1;  // (kk from kmin - 1)
  for (int kk = kmin; kk <= kmax; ++kk) {
    lo[kk] = kk >= 0 ? kk * h1 : kk * h2;
    hi[kk] = kk >= 0 ? kk * h2 : kk * h1;
  }
  open[kmin - 1] = open[kmax] = 0;
  for (int kk = kmin; kk < kmax; ++kk) open[kk] = lo[kk + 1] > hi[kk];
  Moments* PL = sums_lo_.data() + off_;
  Moments* PR = sums_hi_.data() + off_;
  Moments* PM = sums_mid_.data() + off_;
  for (int kk = kmin; kk <= kmax; ++kk) {
    if (open[kk - 1] || kk <= ahi) PL[kk] = index_.at(lo[kk]);
    if (open[kk] || kk >= blo) PR[kk] = index_.at(hi[kk]);
    if (open[kk]) PM[kk] = index_.at(0.5 * (hi[kk] + lo[kk + 1]));
  }
  // below[kk]: points between the previous midpoint and lo_kk; above[kk]: between hi_kk and the next
  double* below = below_.data() + off_;
  double* above = above_.data() + off_;
  for (int kk = kmin; kk <= kmax; ++kk) {
    below[kk] = open[kk - 1] ? segment_error(PM[kk - 1], PL[kk], lo[kk]) : 0.0;
    above[kk] = open[kk] ? segment_error(PR[kk], PM[kk], hi[kk]) : 0.0;
  }
  double acc = 0.0;
  cum_[kmin + off_] = 0.0;
  for (int kk = kmin + 1; kk < kmax; ++kk) {
    acc += below[kk] + above[kk];
    cum_[kk + off_] = acc;
  }
  const Moments& none = index_.none();
  const Moments& all = index_.all();
  for (int z = block.zlo; z <= block.zhi; ++z) {
    const int first = -z, last = maxq_ - z;  // lattice points of codes 0 and maxq
    lb[z] = segment_error(none, PL[first], lo[first]) + above[first] + (cum_[last - 1 + off_] - cum_[first + off_]) +
            below[last] + segment_error(PR[last], all, hi[last]);
  }
}

// E(h, z) exactly for the z with need_[z] in [zlo, zhi], offered to the best.
void BranchAndBound::evaluate(double h, int zlo, int zhi) {
  const int kmin = -zhi, kmax = maxq_ - zlo;  // boundaries kk (between lattice points kk, kk + 1) in [kmin, kmax)
  for (int kk = kmin; kk < kmax; ++kk) sums_boundary_[kk + off_] = index_.at((kk + 0.5) * h);
  double acc = 0.0;
  cum_[kmin + off_] = 0.0;
  for (int kk = kmin + 1; kk < kmax; ++kk) {
    acc += segment_error(sums_boundary_[kk - 1 + off_], sums_boundary_[kk + off_], kk * h);
    cum_[kk + off_] = acc;
  }
  const Moments& none = index_.none();
  const Moments& all = index_.all();
  for (int z = zlo; z <= zhi; ++z) {
    if (!need_[z]) continue;
    const int first = -z, last = maxq_ - z;  // lattice points of codes 0 and maxq
    const double err = segment_error(none, sums_boundary_[first + off_], first * h) +
                       (cum_[last - 1 + off_] - cum_[first + off_]) +
                       segment_error(sums_boundary_[last - 1 + off_], all, last * h);
    best_.offer(err, h, z, fam_, t_);
  }
}

// The candidates of a leaf block: every (t, z) that t can take and whose z survived the block's bound.
void BranchAndBound::evaluate_block(const ScaleBlock& block, const double* lb) {
  for (Index t = block.t1; t < block.t2; ++t) {
    const double h = cand_.scale(block.fam, t);
    int zlo = block.zlo, zhi = block.zhi;
    bool all = true;
    if (block.fam == 0) {
      zhi = cand_.zero_max(t, h);
      zlo = cand_.zero_min(t, h);
      all = cand_.every_zero_occurs(t);
      if (!all) {
        std::fill(present_.begin(), present_.end(), 0);
        cand_.mark_zeros(t, h, present_.data());
      }
    }
    int nlo = maxq_ + 1, nhi = -1;
    for (int z = zlo; z <= zhi; ++z) {
      need_[z] = (all || present_[z]) && !best_.excludes(lb[z]);
      if (need_[z]) {
        nlo = std::min(nlo, z);
        nhi = std::max(nhi, z);
      }
    }
    fam_ = block.fam;
    t_ = t;
    if (nhi >= 0) evaluate(h, nlo, nhi);
  }
}

}  // namespace quantease::leanquant_detail
