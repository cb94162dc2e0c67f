// Greedy weighted k-means++ on a sorted row: every candidate judged from the prefix moments on the
// neighbourhood it would take over, draws by blocked running sums.
#include "kmeans_plus_plus.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "lane_sum.hpp"

namespace quantease::leanquant_detail {
namespace {

// Sums of p over blocks of positions and running sums over the blocks, so that a draw by p costs a binary
// search over the blocks and a scan of one block, and a change of p in a range re-sums only the blocks it
// touches (in independent lanes: a single running sum waits one add latency per position). Blocks of 16
// positions on short rows (groups), 32 on long ones.
struct BlockedSums {
  std::vector<double> p, block, upto;  // block[k]: sum of p over block k; upto[k]: over blocks 0..k
  double total = 0.0;
  Index bs = 32;
  void reset(Index n) {
    bs = n <= 1024 ? 16 : 32;
    p.assign(n, 0.0);
    block.assign((n + bs - 1) / bs, 0.0);
    upto.assign(block.size(), 0.0);
  }
  void resum(Index a, Index b) {  // blocks holding positions [a, b)
    if (a >= b) return;
    const Index n = static_cast<Index>(p.size()), nb = static_cast<Index>(block.size());
    for (Index k = a / bs; k <= (b - 1) / bs; ++k) {
      const double* pk = p.data() + k * bs;
      block[k] = lane_sum(std::min<Index>(bs, n - k * bs), [pk](Index i) { return pk[i]; });
    }
    double acc = a / bs > 0 ? upto[a / bs - 1] : 0.0;
    for (Index k = a / bs; k < nb; ++k) upto[k] = acc += block[k];
    total = upto[nb - 1];
  }
  // The first position whose running sum exceeds u * total (the last positive one if round-off leaves none).
  Index sample(SplitMix64& rng) const {
    const double target = rng.uniform() * total;
    const Index n = static_cast<Index>(p.size()), nb = static_cast<Index>(upto.size());
    const Index k = search_sorted<true>(upto.data(), 0, nb, target);
    if (k < nb) {
      double acc = k > 0 ? upto[k - 1] : 0.0;
      Index pos = -1;
      for (Index i = k * bs; i < std::min<Index>((k + 1) * bs, n); ++i) {
        acc += p[i];
        if (p[i] > 0.0) pos = i;
        if (acc > target) return i;
      }
      if (pos >= 0) return pos;
    }
    for (Index i = n - 1; i > 0; --i)
      if (p[i] > 0.0) return i;
    return 0;
  }
};

// scikit-learn draws 2 + floor(ln k) candidates (4 at k = 16); on LLM-like rows with the loss-error weights
// 8 candidates end Lloyd about 6 % lower (k = 16: objective / sklearn's 1.028 -> 0.963 over 32 rows) for a
// seeding that costs O(trials n) per row either way.
constexpr int kMinTrials = 8;

// The seeding of one row: the first centre drawn by weight s, every next one the best of the trials drawn by
// s D^2 (D: distance to the nearest centre), judged by the potential sum s min(D^2, (x - v)^2). On sorted
// data a candidate v only changes the points between the midpoints to its neighbouring centres, so a
// candidate costs O(log n) from the prefix moments instead of O(n). One per thread: its buffers are reused
// across rows and groups.
class Seeder {
 public:
  void run(const SortedRow& row, int k, SplitMix64& rng, double* c);

 private:
  // A candidate v = x[q], its neighbouring centres cL < v <= cR (either may be missing) and the sorted
  // positions [a, b) whose nearest centre would become v: strictly between the midpoints to cL and cR.
  struct Around {
    Index gap;  // centres gap - 1 and gap
    bool has_l, has_r;
    double cl, cr;
    Index a, b;
  };
  void around(const Index* q, int R, Around* out) const;
  double gain_of(double v, const Around& r) const;
  Index split_of(Index g) const;
  void add_centre(double v);

  const SortedRow* row_ = nullptr;
  const double* x_ = nullptr;
  Index n_ = 0;
  std::vector<double> D_;
  BlockedSums ps_;
  std::vector<double> centres_;       // ascending
  std::vector<Index> first_, after_;  // per centre: positions of the first x >= it, first x > it
  std::vector<Index> split_;          // per gap g (centres g-1, g): first position nearer centre g
};

// around() of R candidates at once (the searches in lockstep). Every midpoint lies in [cL, cR], so the
// searches need only the positions from cL's first to past cR's last, and the one to cL's side only those up
// to q, the one to cR's side only those after it (the other side only where round-off put the midpoint on v
// itself).
void Seeder::around(const Index* q, int R, Around* out) const {
  const double* x = x_;
  const Index n = n_;
  const Index nc = static_cast<Index>(centres_.size());
  Index lo[kMaxSearchLanes], hi[kMaxSearchLanes], slo[kMaxSearchLanes], shi[kMaxSearchLanes], res[kMaxSearchLanes];
  double v[kMaxSearchLanes], mid[kMaxSearchLanes];
  for (int r = 0; r < R; ++r) {
    v[r] = x[q[r]];
    lo[r] = 0;
    hi[r] = nc;
  }
  search_sorted_lanes<false>(centres_.data(), lo, hi, v, res, R);
  for (int r = 0; r < R; ++r) {
    Around& o = out[r];
    o.gap = res[r];
    o.has_l = o.gap > 0;
    o.has_r = o.gap < nc;
    o.cl = o.has_l ? centres_[o.gap - 1] : 0.0;
    o.cr = o.has_r ? centres_[o.gap] : 0.0;
    lo[r] = o.has_l ? first_[o.gap - 1] : 0;
    hi[r] = o.has_r ? after_[o.gap] : n;
    // cL's side: [lo, q] (nothing to search without cL: a = 0)
    slo[r] = o.has_l ? lo[r] : 0;
    shi[r] = o.has_l ? q[r] + 1 : 0;
    mid[r] = 0.5 * (o.cl + v[r]);
  }
  search_sorted_lanes<true>(x, slo, shi, mid, res, R);
  for (int r = 0; r < R; ++r) {
    Around& o = out[r];
    o.a = res[r];
    if (o.has_l && o.a == q[r] + 1) o.a = search_sorted<true>(x, q[r] + 1, hi[r], mid[r]);
    // cR's side: [q, hi) (without cR: b = n)
    slo[r] = o.has_r ? q[r] : n;
    shi[r] = o.has_r ? hi[r] : n;
    mid[r] = 0.5 * (v[r] + o.cr);
  }
  search_sorted_lanes<false>(x, slo, shi, mid, res, R);
  for (int r = 0; r < R; ++r) {
    Around& o = out[r];
    o.b = res[r];
    if (o.has_r && o.b == q[r]) o.b = search_sorted<false>(x, lo[r], q[r], mid[r]);
    o.b = std::max(o.a, o.b);
  }
}

// The potential removed by adding v, from the prefix sums in O(log n): the points of v's range are
// nearest cL up to the midpoint of cL and cR, nearest cR after it, and each moves from (x - c)^2 to
// (x - v)^2, a change of s (v - c)(2x - c - v) whose sum over positions [p, e) is
// (v - c) (2 (S1[e] - S1[p]) - (c + v) (S0[e] - S0[p])) -- the S2 terms cancel.
double Seeder::gain_of(double v, const Around& r) const {
  const Moments* M = row_->prefix.data();
  // split of [a, b) between cL and cR (a point on their midpoint: either, the same distance)
  const Index m = !r.has_l ? r.a : !r.has_r ? r.b : std::clamp<Index>(split_[r.gap], r.a, r.b);
  auto part = [&](Index p, Index e, double cen) {
    return e > p ? (v - cen) * (2.0 * (M[e].s1 - M[p].s1) - (cen + v) * (M[e].s0 - M[p].s0)) : 0.0;
  };
  return part(r.a, m, r.cl) + part(m, r.b, r.cr);
}

Index Seeder::split_of(Index g) const {  // gap g, 0 < g < centres
  return search_sorted<true>(x_, first_[g - 1], after_[g], 0.5 * (centres_[g - 1] + centres_[g]));
}

void Seeder::add_centre(double v) {
  const Index at = search_sorted<true>(centres_.data(), 0, static_cast<Index>(centres_.size()), v);
  centres_.insert(centres_.begin() + at, v);
  first_.insert(first_.begin() + at, search_sorted<false>(x_, 0, n_, v));
  after_.insert(after_.begin() + at, search_sorted<true>(x_, 0, n_, v));
  split_.insert(split_.begin() + at, 0);  // gap `at` became gaps `at` and `at + 1`
  const Index nc = static_cast<Index>(centres_.size());
  if (at > 0) split_[at] = split_of(at);
  if (at + 1 < nc) split_[at + 1] = split_of(at + 1);
}

void Seeder::run(const SortedRow& row, int k, SplitMix64& rng, double* c) {
  row_ = &row;
  x_ = row.x.data();
  n_ = row.size();
  const double* x = x_;
  const Index n = n_;
  D_.resize(n);
  ps_.reset(n);
  std::copy(row.s.begin(), row.s.end(), ps_.p.begin());
  ps_.resum(0, n);
  centres_.assign(1, x[ps_.sample(rng)]);
  first_.assign(1, search_sorted<false>(x, 0, n, centres_[0]));
  after_.assign(1, search_sorted<true>(x, 0, n, centres_[0]));
  split_.assign(2, 0);
  for (Index i = 0; i < n; ++i) {
    D_[i] = (x[i] - centres_[0]) * (x[i] - centres_[0]);
    ps_.p[i] = row.s[i] * D_[i];
  }
  ps_.resum(0, n);
  const int trials = std::min(kMaxSearchLanes,
                              std::max(kMinTrials, 2 + static_cast<int>(std::floor(std::log(static_cast<double>(k))))));
  Index cand[kMaxSearchLanes];
  Around where[kMaxSearchLanes];
  for (int t = 1; t < k; ++t) {
    if (!(ps_.total > 0.0)) {  // every point already sits on a centre: repeat the largest
      add_centre(centres_.back());
      continue;
    }
    for (int r = 0; r < trials; ++r) cand[r] = ps_.sample(rng);
    around(cand, trials, where);
    double best_gain = -1.0;
    int best_r = 0;
    for (int r = 0; r < trials; ++r) {
      const double gain = gain_of(x[cand[r]], where[r]);
      if (gain > best_gain) {
        best_gain = gain;
        best_r = r;
      }
    }
    const double v = x[cand[best_r]];
    const Around r = where[best_r];
    for (Index i = r.a; i < r.b; ++i) {
      D_[i] = std::min(D_[i], (x[i] - v) * (x[i] - v));
      ps_.p[i] = row.s[i] * D_[i];
    }
    ps_.resum(r.a, r.b);
    add_centre(v);
  }
  std::copy(centres_.begin(), centres_.end(), c);
}

}  // namespace

void kmeans_plus_plus(const SortedRow& row, int k, SplitMix64& rng, double* c) {
  thread_local Seeder seeder;  // buffers reused across rows and groups of this thread
  seeder.run(row, k, rng, c);
}

}  // namespace quantease::leanquant_detail
