// LeanQuant: loss-error-aware grids (weighted 1-D k-means, exact weighted affine search) and the GPTQ
// column loop against them.
#include "quantease/leanquant.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <tuple>

#include "quantease/gptq_loop.hpp"
#include "quantease/hessian.hpp"
#include "quantease/parallel.hpp"

namespace quantease {
namespace {

constexpr Index kFitChunk = 16;   // rows per grid-fitting task
constexpr Index kDirectSums = 16; // k-means clusters this small are summed directly

std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// sum of term(i) over i < n in 8 independent running sums (a single one waits an add latency per term,
// and keeps the compiler from vectorising a floating-point sum)
template <class Term>
double lane_sum(Index n, Term term) {
  double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  Index i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) lane[l] += term(i + l);
  for (; i < n; ++i) lane[i % 8] += term(i);
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

// Branch-free binary searches on x[lo, hi): the first position with x >= v (lower) or x > v (upper). The
// k-means++ searches land anywhere, so a branch would mispredict every other step.
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

// search_sorted for R independent queries in lockstep: their steps interleave, so the load latency of one
// chain hides behind the others (R <= kMaxLanes).
constexpr int kMaxLanes = 64;

template <bool Upper, class T>
void search_sorted_lanes(const T* x, const Index* lo, const Index* hi, const T* v, Index* out, int R) {
  const T* base[kMaxLanes];
  Index len[kMaxLanes];
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
      const T probe = base[r][std::max<Index>(half - 1, 0)];
      base[r] += half * static_cast<Index>(Upper ? probe <= v[r] : probe < v[r]);
      len[r] -= half;
      longest = std::max(longest, len[r]);
    }
  }
  for (int r = 0; r < R; ++r)
    out[r] = len[r] == 0 ? lo[r] : (base[r] - x) + (Upper ? *base[r] <= v[r] : *base[r] < v[r]);
}

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

// Greedy weighted k-means++ (as scikit-learn's): the first centre drawn by weight s, every next one the
// best of max(8, 2 + floor(ln k)) draws by s D^2 (D: distance to the nearest centre), judged by the potential
// sum s min(D^2, (x - v)^2). On sorted data a candidate v only changes the points between the midpoints
// to its neighbouring centres, so a candidate costs O(n / k) instead of O(n).
// scikit-learn draws 2 + floor(ln k) candidates (4 at k = 16); on LLM-like rows with the loss-error weights
// 8 candidates end Lloyd about 6 % lower (k = 16: objective / sklearn's 1.028 -> 0.963 over 32 rows) for a
// seeding that costs O(trials n) per row either way.
constexpr int kMinTrials = 8;

void kmeans_plus_plus(const SortedWeighted& d, int k, SplitMix64& rng, double* c) {
  const Index n = d.size();
  const double* x = d.x.data();
  // scratch reused across rows and groups of this thread (one call per group: no allocation each time),
  // reached through references (each use of a thread_local itself is a TLS look-up in a shared library)
  struct Scratch {
    std::vector<double> D;
    BlockedSums ps;
    std::vector<double> centres;      // ascending
    std::vector<Index> first, after;  // per centre: positions of the first x >= it, first x > it
    std::vector<Index> split;         // per gap g (centres g-1, g): first position nearer centre g
  };
  thread_local Scratch scratch;
  auto& D = scratch.D;
  auto& ps = scratch.ps;
  auto& centres = scratch.centres;
  auto& first = scratch.first;
  auto& after = scratch.after;
  auto& split = scratch.split;
  D.resize(n);
  ps.reset(n);
  std::copy(d.s.begin(), d.s.end(), ps.p.begin());
  ps.resum(0, n);
  centres.assign(1, x[ps.sample(rng)]);
  first.assign(1, search_sorted<false>(x, 0, n, centres[0]));
  after.assign(1, search_sorted<true>(x, 0, n, centres[0]));
  split.assign(2, 0);
  for (Index i = 0; i < n; ++i) {
    D[i] = (x[i] - centres[0]) * (x[i] - centres[0]);
    ps.p[i] = d.s[i] * D[i];
  }
  ps.resum(0, n);
  // The candidate v = x[q], its neighbouring centres cL < v <= cR (either may be missing) and the sorted
  // positions [a, b) whose nearest centre would become v: strictly between the midpoints to cL and cR.
  // Every midpoint lies in [cL, cR], so the searches need only the positions from cL's first to past cR's
  // last, and the one to cL's side only those up to q, the one to cR's side only those after it (the other
  // side only where round-off put the midpoint on v itself).
  struct Around {
    Index gap;  // centres gap - 1 and gap
    bool has_l, has_r;
    double cl, cr;
    Index a, b;
  };
  // around() of R candidates at once (the searches in lockstep)
  auto around = [&](const Index* q, int R, Around* out) {
    const Index nc = static_cast<Index>(centres.size());
    Index lo[kMaxLanes], hi[kMaxLanes], slo[kMaxLanes], shi[kMaxLanes], res[kMaxLanes];
    double v[kMaxLanes], mid[kMaxLanes];
    for (int r = 0; r < R; ++r) {
      v[r] = x[q[r]];
      lo[r] = 0;
      hi[r] = nc;
    }
    search_sorted_lanes<false>(centres.data(), lo, hi, v, res, R);
    for (int r = 0; r < R; ++r) {
      Around& o = out[r];
      o.gap = res[r];
      o.has_l = o.gap > 0;
      o.has_r = o.gap < nc;
      o.cl = o.has_l ? centres[o.gap - 1] : 0.0;
      o.cr = o.has_r ? centres[o.gap] : 0.0;
      lo[r] = o.has_l ? first[o.gap - 1] : 0;
      hi[r] = o.has_r ? after[o.gap] : n;
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
  };
  // The potential removed by adding v, from the prefix sums in O(log n): the points of v's range are
  // nearest cL up to the midpoint of cL and cR, nearest cR after it, and each moves from (x - c)^2 to
  // (x - v)^2, a change of s (v - c)(2x - c - v) whose sum over positions [p, e) is
  // (v - c) (2 (S1[e] - S1[p]) - (c + v) (S0[e] - S0[p])) -- the S2 terms cancel.
  auto gain_of = [&](double v, const Around& r) {
    // split of [a, b) between cL and cR (a point on their midpoint: either, the same distance)
    const Index m = !r.has_l ? r.a : !r.has_r ? r.b : std::clamp<Index>(split[r.gap], r.a, r.b);
    auto part = [&](Index p, Index e, double cen) {
      return e > p ? (v - cen) * (2.0 * (d.S1[e] - d.S1[p]) - (cen + v) * (d.S0[e] - d.S0[p])) : 0.0;
    };
    return part(r.a, m, r.cl) + part(m, r.b, r.cr);
  };
  auto split_of = [&](Index g) {  // gap g, 0 < g < centres
    return search_sorted<true>(x, first[g - 1], after[g], 0.5 * (centres[g - 1] + centres[g]));
  };
  auto add_centre = [&](double v) {
    const Index at = search_sorted<true>(centres.data(), 0, static_cast<Index>(centres.size()), v);
    centres.insert(centres.begin() + at, v);
    first.insert(first.begin() + at, search_sorted<false>(x, 0, n, v));
    after.insert(after.begin() + at, search_sorted<true>(x, 0, n, v));
    split.insert(split.begin() + at, 0);  // gap `at` became gaps `at` and `at + 1`
    const Index nc = static_cast<Index>(centres.size());
    if (at > 0) split[at] = split_of(at);
    if (at + 1 < nc) split[at + 1] = split_of(at + 1);
  };
  const int trials =
      std::min(kMaxLanes, std::max(kMinTrials, 2 + static_cast<int>(std::floor(std::log(static_cast<double>(k))))));
  Index cand[kMaxLanes];
  Around where[kMaxLanes];
  for (int t = 1; t < k; ++t) {
    if (!(ps.total > 0.0)) {  // every point already sits on a centre: repeat the largest
      add_centre(centres.back());
      continue;
    }
    for (int r = 0; r < trials; ++r) cand[r] = ps.sample(rng);
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
      D[i] = std::min(D[i], (x[i] - v) * (x[i] - v));
      ps.p[i] = d.s[i] * D[i];
    }
    ps.resum(r.a, r.b);
    add_centre(v);
  }
  std::copy(centres.begin(), centres.end(), c);
}

}  // namespace

namespace {

// LSD radix sort of 64-bit keys on their upper 32 bits, digits of the given widths (low first), one pass
// over the data for all histograms; a digit that is the same everywhere skips its pass. Stable.
template <int P>
void radix_sort_upper(std::vector<std::uint64_t>& keys, std::vector<std::uint64_t>& tmp, const int (&width)[P]) {
  const Index n = static_cast<Index>(keys.size());  // < 2^32 (positions fit the low half)
  tmp.resize(n);
  int shift[P];
  std::uint32_t count[P][1 << 11];
  for (int p = 0, at = 32; p < P; at += width[p], ++p) {
    shift[p] = at;
    std::fill(count[p], count[p] + (1 << width[p]), 0u);
  }
  for (Index i = 0; i < n; ++i)
    for (int p = 0; p < P; ++p) ++count[p][(keys[i] >> shift[p]) & ((1u << width[p]) - 1)];
  for (int p = 0; p < P; ++p) {
    const std::uint64_t mask = (1u << width[p]) - 1;
    if (count[p][(keys[0] >> shift[p]) & mask] == static_cast<std::uint32_t>(n)) continue;
    std::uint32_t offset = 0;
    for (int c = 0; c < (1 << width[p]); ++c) {
      const std::uint32_t k = count[p][c];
      count[p][c] = offset;
      offset += k;
    }
    for (Index i = 0; i < n; ++i) tmp[count[p][(keys[i] >> shift[p]) & mask]++] = keys[i];
    keys.swap(tmp);
  }
}

}  // namespace

void SortedWeighted::assign(const float* values, const double* weights, Index n) {
  // Sort by (value, position): the floats' order-preserving bit patterns (-0 counts as +0, as in a
  // comparison) above the position, radix-sorted on the pattern (stable, so ties keep positions): three
  // digits of 11/11/10 bits, or four of 8 bits for short rows (smaller histograms).
  keys_.resize(n);
  for (Index i = 0; i < n; ++i) {
    std::uint32_t u;
    const float v = values[i] + 0.0f;
    std::memcpy(&u, &v, sizeof u);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    keys_[i] = (static_cast<std::uint64_t>(u) << 32) | static_cast<std::uint64_t>(i);
  }
  if (n > 512) {
    static constexpr int kWide[3] = {11, 11, 10};
    radix_sort_upper(keys_, tmp_keys_, kWide);
  } else {
    static constexpr int kNarrow[4] = {8, 8, 8, 8};
    radix_sort_upper(keys_, tmp_keys_, kNarrow);
  }
  x.resize(n);
  s.resize(n);
  S0.resize(n + 1);
  S1.resize(n + 1);
  S2.resize(n + 1);
  // running sums in registers (through the arrays, each step would wait for the store of the last)
  double a0 = 0.0, a1 = 0.0, a2 = 0.0;
  S0[0] = S1[0] = S2[0] = 0.0;
  for (Index i = 0; i < n; ++i) {
    const Index j = static_cast<Index>(keys_[i] & 0xFFFFFFFFu);
    const double xi = values[j], si = weights[j];
    x[i] = xi;
    s[i] = si;
    S0[i + 1] = a0 += si;
    S1[i + 1] = a1 += si * xi;
    S2[i + 1] = a2 += si * xi * xi;
  }
}

SplitMix64::SplitMix64(std::uint64_t seed, std::uint64_t stream) : state(mix64(seed ^ mix64(stream + 1))) {}

std::uint64_t SplitMix64::next() {
  state += 0x9E3779B97F4A7C15ULL;
  return mix64(state);
}

int weighted_kmeans(const SortedWeighted& d, int k, int max_iter, double tol, SplitMix64& rng, double* c) {
  const Index n = d.size();
  const double lo = d.x.front(), hi = d.x.back();
  if (k <= 8) {
    // np.linspace(lo, hi, k)
    const double step = (hi - lo) / (k - 1);
    for (int t = 0; t < k; ++t) c[t] = t * step + lo;
    c[k - 1] = hi;
  } else {
    kmeans_plus_plus(d, k, rng, c);
  }
  const double* x = d.x.data();
  const double mean = lane_sum(n, [x](Index i) { return x[i]; }) / n;
  const double var = lane_sum(n, [x, mean](Index i) { return (x[i] - mean) * (x[i] - mean); }) / n;

  std::vector<Index> b(k, n), prev(k, -1), lo_pos(k), moved(k), count(k);
  std::vector<double> w(k), sx(k);
  std::vector<char> empty(k);
  struct Far {
    double dist;
    Index pos;
    int cluster;
  };
  std::vector<Far> far;
  int it = 0;
  while (it < max_iter) {
    // Assignment: cluster t holds the sorted positions [b[t-1], b[t]), values <= the midpoint go low.
    Index start = 0;
    for (int t = 0; t + 1 < k; ++t) {
      const double mid = 0.5 * (c[t] + c[t + 1]);
      start = search_sorted<true>(x, start, n, mid);
      b[t] = start;
    }
    // Equal centroids: the first of the run takes all their points (argmin's first index), the rest are empty.
    for (int t = k - 2; t >= 0; --t)
      if (c[t] == c[t + 1]) b[t] = b[t + 1];
    if (b == prev) break;  // labels unchanged: the centroids are already these clusters' means
    Index a = 0;
    for (int t = 0; t < k; ++t) {
      lo_pos[t] = a;
      count[t] = b[t] - a;
      w[t] = d.S0[b[t]] - d.S0[a];
      sx[t] = d.S1[b[t]] - d.S1[a];
      if (b[t] - a <= kDirectSums) {
        // Few points: sum them directly; a prefix-sum difference would lose digits to the row's total.
        w[t] = sx[t] = 0.0;
        for (Index i = a; i < b[t]; ++i) {
          w[t] += d.s[i];
          sx[t] += d.s[i] * d.x[i];
        }
      }
      a = b[t];
    }
    // Empty clusters take the points farthest from their centroids (as scikit-learn relocates them),
    // which leave their own clusters; ties go to the lower position.
    std::fill(moved.begin(), moved.end(), -1);
    int n_empty = 0;
    for (int t = 0; t < k; ++t) {
      empty[t] = !(w[t] > 0.0);
      n_empty += empty[t];
    }
    if (n_empty > 0) {
      far.clear();
      for (int t = 0; t < k; ++t)
        for (Index i = lo_pos[t]; i < b[t]; ++i) far.push_back({(d.x[i] - c[t]) * (d.x[i] - c[t]), i, t});
      const auto farther = [](const Far& p, const Far& q) { return p.dist > q.dist || (p.dist == q.dist && p.pos < q.pos); };
      const Index take = std::min<Index>(n_empty, static_cast<Index>(far.size()));
      std::partial_sort(far.begin(), far.begin() + take, far.end(), farther);
      Index next = 0;
      for (int t = 0; t < k && next < take; ++t) {
        if (!empty[t]) continue;
        const Far& f = far[next++];
        w[f.cluster] -= d.s[f.pos];
        sx[f.cluster] -= d.s[f.pos] * d.x[f.pos];
        if (--count[f.cluster] == 0) w[f.cluster] = 0.0;  // gave all its points away: keeps its centroid
        moved[t] = f.pos;
      }
    }
    double shift = 0.0;
    for (int t = 0; t < k; ++t) {
      double nc = c[t];
      if (moved[t] >= 0) nc = d.x[moved[t]];
      // The mean of the cluster lies within it (round-off aside).
      else if (w[t] > 0.0) nc = std::clamp(sx[t] / w[t], d.x[lo_pos[t]], d.x[b[t] - 1]);
      shift += (nc - c[t]) * (nc - c[t]);
      c[t] = nc;
    }
    if (n_empty > 0) std::sort(c, c + k);
    ++it;
    prev = b;
    if (shift <= tol * var) break;
  }
  return it;
}

namespace {

// The affine search as branch and bound. Every candidate (lo, hi) of the paper's set gives a grid
// (scale h, zero z), and its weighted error depends on (h, z) only:
//   E(h, z) = sum_x s (x - h k(x))^2,  k(x) = clamp(rint(x / h), -z, maxq - z)   (nearest allowed lattice point).
// The candidates fall into three families, each a sequence t = 0, 1, ... of decreasing scales
// h(t) = (top - t d) / maxq with a set of zeros per t:
//   A  lo < 0 < hi: t = m = i + j, top = max - min, zeros rint(-lo / h) over the i of that m;
//   B  lo >= 0: xmin = 0, t = j, top = max, zero 0;
//   C  hi <= 0: xmax = 0, t = i, top = -min, zero maxq.
// For a block of consecutive t (scales in [h1, h2]) and a zero z, no candidate can beat
//   LB(z) = sum_x s dist(x, U_z)^2,  U_z = union over k in [-z, maxq - z] of the interval between k h1 and k h2,
// since each of its grid points lies in U_z. LB costs O(maxq) prefix-sum differences, like one E: the sums
// below a threshold come from a bucket table over [min, max] (at(): the row in bucket order, 8 buckets per
// value, exact for the query's bucket, plus that bucket's few values). Each family is cut into
// blocks of kTop scales, bounded, and visited in increasing order of their least bound; a block whose bound
// (for every zero) exceeds the best error found so far is dropped, otherwise it is split into kSplit
// sub-blocks bounded the same way (a child keeps its parent's bound where that is larger), down to blocks
// of at most kSplit scales, whose (t, z) are evaluated exactly where z survived. Family B (C) is skipped as
// a whole when sum_{x<0} s x^2 (sum_{x>0} s x^2), which all its grids pay, exceeds the best of family A.
// Dropping needs LB > best + eps, eps = 1e-11 max(x^2) sum s covering the round-off of the prefix-sum
// differences, so the result is the least E over the whole candidate set (up to that round-off; equal to
// the brute force in tests/test_leanquant.py). Best first, the incumbent is good early and most blocks go
// at the first or second level: on 4096-value LLM-like rows about 50 bounds and 10-20 E per row at 4 bits
// instead of the T x 2^bits windows of a sweep.
// Short groups (<= kSweepMaxN values) at 4 bits and more take family A by an exact sweep instead
// (sweep_family_a): there a bound, ~3 maxq threshold sums, costs as much as the few events by which the
// sums behind every E(h_t, z) change from one t to the next, and about 60 bounds per group (128 values,
// 4 bits) cost 1.6x the sweep.
class AffineSearch {
 public:
  // The least-E grid of d (weighted_grid_search), building the bucket table of at() first.
  GridSearchResult run(const SortedWeighted& d, int bits, int steps) {
    const Index n = d.size();
    const double mn = d.x.front(), mx = d.x.back();
    if (mx > mn) {
      // bucket_[b] = number of values in the buckets below b (see at()), w = R / nb. Built branch-free from
      // a histogram of each value's bucket (a walk over the edges mispredicted about once per bucket).
      const Index nb = kBucketsPerValue * n;
      const double inv_w = static_cast<double>(nb) / (mx - mn);
      bucket_.assign(nb + 1, 0);
      for (Index p = 0; p < n; ++p) {
        const double f = (d.x[p] - mn) * inv_w;  // value p counts for the buckets above floor(f)
        const Index b = f < static_cast<double>(nb) ? static_cast<Index>(f) + 1 : nb;
        ++bucket_[b];
      }
      for (Index b = 1; b <= nb; ++b) bucket_[b] += bucket_[b - 1];
    }
    pre_.resize(n + 1);
    for (Index i = 0; i <= n; ++i) pre_[i] = Cum{d.S0[i], d.S1[i], d.S2[i]};
    return search(d, mn, mx, bits, steps);
  }

  // Puts a row (or group) into bucket order -- the buckets of at()'s table, in increasing order of
  // value, each bucket's values in position order -- with the prefix sums of that order, and searches it.
  // No sort within the buckets: the table is exact for the bucket of any query (see at()), whose own few
  // values at() adds one by one; only crowded buckets are sorted. Counting, one stable scatter and one pass
  // of sums, O(n + nb) on rows without crowded buckets.
  GridSearchResult sort_and_run(const float* values, const double* weights, Index n, int bits, int steps) {
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
    const double mn = fmin_, mx = fmax_;
    SortedWeighted& d = sorted_;
    d.x.resize(n);
    d.s.resize(n);
    if (!(mx > mn)) {  // constant: no search (and no table) needed
      for (Index i = 0; i < n; ++i) {
        d.x[i] = values[i];
        d.s[i] = weights[i];
      }
    } else {
      // the table of run(): bucket_[c] = number of values in the buckets below c
      const Index nb = kBucketsPerValue * n;
      const double inv_w = static_cast<double>(nb) / (mx - mn);
      bucket_.assign(nb + 1, 0);
      bin_.resize(n);
      for (Index i = 0; i < n; ++i) {
        const double f = (static_cast<double>(values[i]) - mn) * inv_w;
        bin_[i] = static_cast<std::uint32_t>(f < static_cast<double>(nb) ? static_cast<Index>(f) : nb - 1);
      }
      for (Index i = 0; i < n; ++i) ++bucket_[bin_[i]];
      std::uint32_t most = 0;
      for (Index c = 0; c < nb; ++c) most = std::max(most, bucket_[c]);
      // end of bucket b (running sum), eight buckets at a time: their own running sums do not wait for the
      // total so far (one chain through all nb buckets took 40 % of this function)
      std::uint32_t acc = 0;
      Index b = 0;
      for (; b + 8 <= nb; b += 8) {
        std::uint32_t g[8];
        g[0] = bucket_[b];
        for (int l = 1; l < 8; ++l) g[l] = g[l - 1] + bucket_[b + l];
        for (int l = 0; l < 8; ++l) bucket_[b + l] = acc + g[l];
        acc += g[7];
      }
      for (; b < nb; ++b) bucket_[b] = acc += bucket_[b];
      // stable scatter from the back: bucket_[c] ends at the start of bucket c, the table's entry
      for (Index i = n - 1; i >= 0; --i) {
        const std::uint32_t q = --bucket_[bin_[i]];
        d.x[q] = values[i];
        d.s[q] = weights[i];
      }
      bucket_[nb] = static_cast<std::uint32_t>(n);
      if (most > kCrowded) {
        // Crowded buckets (many equal or close values: the zeros of dead columns, a row already on a grid)
        // are sorted, by (x, s) for a deterministic order, so that at() finds its place there by binary
        // search instead of adding up each value.
        for (Index c = 0; c < nb; ++c) {
          const Index a = bucket_[c], e = bucket_[c + 1];
          if (e - a <= kCrowded) continue;
          pairs_.resize(e - a);
          for (Index i = a; i < e; ++i) pairs_[i - a] = {d.x[i], d.s[i]};
          std::sort(pairs_.begin(), pairs_.end());
          for (Index i = a; i < e; ++i) std::tie(d.x[i], d.s[i]) = pairs_[i - a];
        }
      }
    }
    // the prefix sums, interleaved (at() reads all three of one position)
    pre_.resize(n + 1);
    double a0 = 0.0, a1 = 0.0, a2 = 0.0;
    pre_[0] = Cum{0.0, 0.0, 0.0};
    for (Index i = 0; i < n; ++i) {
      const double xi = d.x[i], si = d.s[i];
      pre_[i + 1] = Cum{a0 += si, a1 += si * xi, a2 += si * xi * xi};
    }
    return search(d, mn, mx, bits, steps);
  }
  // sort_and_run()'s row's extremes
  float row_min() const { return fmin_; }
  float row_max() const { return fmax_; }

 private:
  // The search proper, on d and the bucket table built for it.
  // d: the values in bucket order (sorted, or bucketed by sort_and_run()), min mn and max mx; pre_ its
  // prefix sums and bucket_ its table.
  GridSearchResult search(const SortedWeighted& d, double mn, double mx, int bits, int steps) {
    d_ = &d;
    x_ = d.x.data();
    s_ = d.s.data();
    n_ = d.size();
    all_ = pre_[n_];
    maxq_ = (1 << bits) - 1;
    T_ = steps;
    off_ = maxq_;
    mn_ = mn;
    mx_ = mx;
    R_ = mx_ - mn_;
    best_ = GridSearchResult();
    best_.error = std::numeric_limits<double>::infinity();
    if (!(R_ > 0.0)) return best_;
    delta_ = R_ / T_;
    // round-off of a prefix-sum difference: a few ulps of sum s max(x^2, v^2), v <= 2 max |x|
    eps_ = 1e-11 * std::max(mn_ * mn_, mx_ * mx_) * std::max(all_.s0, 0.0);
    const Index L = 2 * maxq_ + 1;
    PL_.resize(L);
    PR_.resize(L);
    PM_.resize(L);
    P_.resize(L);
    cum_.resize(L);
    lo_.resize(L);
    hi_.resize(L);
    below_.resize(L);
    above_.resize(L);
    open_.resize(L + 2);
    need_.assign(maxq_ + 1, 0);
    present_.assign(maxq_ + 1, 0);
    nb_ = kBucketsPerValue * n_;  // the table's size (run(), sort_and_run())
    inv_w_ = nb_ / R_;
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
    // A: some i < i0 and j < j0 with i + j = m exist for m <= i0 + j0 - 2. B (zero 0) leaves every x < 0 at
    // 0, C (zero maxq) every x > 0: whole families go when that alone exceeds the best of A.
    if (i0_ > 0 && j0_ > 0) {
      const Index len = std::min<Index>(T_, i0_ + j0_ - 1);
      // the sweep where it measured faster (short groups, 4 bits and more), the branch and bound elsewhere
      if (!(maxq_ >= 15 && n_ <= kSweepMaxN && sweep_family_a(usable_len(0, len)))) search_family(0, len);
    }
    const double neg = at(0.0).s2, pos = all_.s2 - at<true>(0.0).s2;  // sum s x^2 over x < 0, over x > 0
    if (i0_ < T_ && !(neg > best_.error + eps_)) search_family(1, T_ - i0_);  // j = 0 .. T - 1 - i0
    if (j0_ < T_ && !(pos > best_.error + eps_)) search_family(2, T_ - j0_);
    if (best_.found) best_.scale = paper_scale(best_fam_, best_t_, best_.zero);
    return best_;
  }

  struct Block {
    int fam;
    Index t1, t2;  // [t1, t2)
    int zlo, zhi;  // zeros any candidate of the block can take
  };
  static constexpr Index kTop = 256, kSplit = 4;  // by instruction counts on LLM-like rows (2..4 bits)
  // buckets per value of at()'s table (and of the bucket order): few values per bucket even in the dense
  // middle of an LLM-like row, for at() to add one by one (measured on 4096-value rows: 8 per value 15 %
  // faster than 4 or 2, 32 slower; no difference on 128-value groups)
  static constexpr Index kBucketsPerValue = 8;
  static constexpr Index kCrowded = 16;  // buckets of more values are kept sorted

  double scale(int fam, Index t) const {
    const double top = fam == 0 ? R_ : fam == 1 ? mx_ : -mn_;
    return (top - t * delta_) / maxq_;
  }
  int zero_of(double lo, double h) const {
    return static_cast<int>(std::clamp(std::nearbyint(-lo / h), 0.0, static_cast<double>(maxq_)));
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

  // Family A at m: i runs over [ilo, ihi].
  Index ilo(Index m) const { return std::max<Index>(0, m - j0_ + 1); }
  Index ihi(Index m) const { return std::min<Index>(m, i0_ - 1); }

  Block make_block(int fam, Index t1, Index t2) const {
    Block k{fam, t1, t2, 0, 0};
    if (fam == 0) {  // -lo / h is largest for the least i and the least h, least for the largest i and h
      k.zhi = zero_of(mn_ + ilo(t1) * delta_, scale(0, t2 - 1));
      k.zlo = zero_of(mn_ + ihi(t2 - 1) * delta_, scale(0, t1));
    } else if (fam == 2) {
      k.zlo = k.zhi = maxq_;
    }
    return k;
  }

  // Scratch of one level of the block tree (reused across rows).
  struct Level {
    std::vector<Block> blocks;
    std::vector<double> lb;  // blocks x (maxq + 1)
    std::vector<std::pair<double, Index>> order;
  };
  Level& level(std::size_t depth) {
    if (levels_.size() <= depth) levels_.resize(depth + 1);
    return levels_[depth];
  }

  // Bounds the blocks of `lv` (children of a block with bounds parent_lb, or nullptr), then explores them
  // in increasing order of their least bound while that can still beat the best.
  void explore_level(std::size_t depth, const double* parent_lb) {
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
      if (cur.order[o].first > best_.error + eps_) break;
      const Index c = cur.order[o].second;
      const Block k = cur.blocks[c];
      const double* lb = cur.lb.data() + c * nz;
      if (k.t2 - k.t1 <= kSplit) {
        evaluate_block(k, lb);
        continue;
      }
      // children need only the zeros whose bound here can still beat the best (fewer lattice points)
      int zlo = maxq_ + 1, zhi = -1;
      for (int z = 0; z <= maxq_; ++z)
        if (!(lb[z] > best_.error + eps_)) {
          zlo = std::min(zlo, z);
          zhi = std::max(zhi, z);
        }
      if (zhi < 0) continue;
      Level& kids = level(depth + 1);
      Level& again = levels_[depth];
      kids.blocks.clear();
      const Index step = (k.t2 - k.t1 + kSplit - 1) / kSplit;
      for (Index t = k.t1; t < k.t2; t += step) {
        Block kid = make_block(k.fam, t, std::min(k.t2, t + step));
        kid.zlo = std::max(kid.zlo, zlo);
        kid.zhi = std::min(kid.zhi, zhi);
        if (kid.zlo <= kid.zhi) kids.blocks.push_back(kid);
      }
      explore_level(depth + 1, again.lb.data() + c * nz);
    }
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

  void search_family(int fam, Index len) {
    len = usable_len(fam, len);
    if (len == 0) return;
    Level& top = level(0);
    top.blocks.clear();
    for (Index t = 0; t < len; t += kTop) top.blocks.push_back(make_block(fam, t, std::min(len, t + kTop)));
    explore_level(0, nullptr);
  }

  // Family A on short rows (groups): every scale t of [0, len) in order, every zero it can take, exactly.
  // A value's lattice point r(x) = k where (k - 1/2) h <= x < (k + 1/2) h (the boundaries of evaluate()) only
  // moves outwards as h shrinks, and its code under zero z is clamp(r, -z, maxq - z), so over the whole
  // sweep a value changes code at most maxq + 1 times. With B_z = sum s x code_z, C_z = sum s code_z^2,
  //   E(h, z) = sum s x^2 - 2 h B_z + h^2 C_z,
  // and a value crossing from k to k + 1 (x > 0) adds (s x, s (2k + 1)) to (B_z, C_z) for the zeros
  // z <= maxq - k - 1 whose window still holds k + 1 (x < 0 symmetrically, for z >= 1 - k). The events are
  // bucketed by the first t at which they hold (exact: the boundary test of evaluate() at that t's scale),
  // so a group costs O(n (maxq + 1) + len (maxq + 1)) with no bound and no search of positions -- on
  // 128-value groups several times less than the branch and bound, whose every bound seeks ~3 maxq
  // positions. The sum can cancel (E << sum s x^2), so the winner's E is recomputed point by point.
  bool sweep_family_a(Index len) {
    if (len == 0) return true;
    const int nz = maxq_ + 1;
    const double* s = d_->s.data();
    const double A = all_.s2;
    inv_delta_ = 1.0 / delta_;
    inv_half_.resize(2 * maxq_ + 1);
    for (int b = -maxq_; b <= maxq_; ++b) inv_half_[b + off_] = 1.0 / (b + 0.5);
    // (B_z, C_z) at t = 0 from each value's lattice point there
    B_.assign(nz, 0.0);
    C_.assign(nz, 0.0);
    k0_.resize(n_);
    const double h0 = scale(0, 0);
    for (Index p = 0; p < n_; ++p) {
      const double x = x_[p], w = s[p];
      int k = 0;
      if (x > 0.0) {
        while (k < maxq_ && x >= (k + 0.5) * h0) ++k;
        for (int z = 0; z < nz; ++z) {
          const double c = std::min(k, maxq_ - z);
          B_[z] += w * x * c;
          C_[z] += w * c * c;
        }
      } else if (x < 0.0) {
        while (k > -maxq_ && x < (k - 0.5) * h0) --k;
        for (int z = 0; z < nz; ++z) {
          const double c = std::max(k, -z);
          B_[z] += w * x * c;
          C_[z] += w * c * c;
        }
      }
      k0_[p] = k;
    }
    // The incumbent of t = 0 (the min-max range), then the sweep's end: the first checkpoint from which
    // the bound of all remaining scales excludes every zero (bounds of nested blocks only grow: bisection).
    double best = best_.error;
    Index best_t = -1;
    int best_z = 0;
    {
      const int zhi = zero_of(mn_ + ilo(0) * delta_, h0), zlo = zero_of(mn_ + ihi(0) * delta_, h0);
      for (int z = zlo; z <= zhi; ++z) {
        const double err = A + h0 * (h0 * C_[z] - 2.0 * B_[z]);
        if (err < best) {
          best = err;
          best_t = 0;
          best_z = z;
        }
      }
    }
    tail_lb_.resize(nz);
    live_.assign(nz, 1);
    dead_.assign(nz, 0.0);  // +inf for the zeros dropped
    auto excluded_from = [&](Index t) {  // every zero of the scales [t, len) excluded
      bound(make_block(0, t, len), tail_lb_.data());
      for (int z = 0; z < nz; ++z)
        if (live_[z] && !(tail_lb_[z] > best + eps_)) return false;
      return true;
    };
    Index end = len;
    {
      Index lo = 0, hi = (len - 1) / kSweepCheck;  // checkpoints c * kSweepCheck, c in (lo, hi]
      if (hi > 0 && excluded_from(hi * kSweepCheck)) {
        while (hi - lo > 1) {
          const Index mid = (lo + hi) / 2;
          if (excluded_from(mid * kSweepCheck)) hi = mid;
          else lo = mid;
        }
        end = hi * kSweepCheck;
      }
    }
    // events of the scales [1, end), bucketed by scale
    head_.assign(end, -1);
    ev_.resize(n_ * maxq_);  // at most maxq crossings per value
    nev_ = 0;
    for (Index p = 0; p < n_; ++p) {
      const double x = x_[p], w = s[p];
      if (!(w > 0.0) || x == 0.0) continue;  // no error either way / always on lattice point 0
      if (x > 0.0) {
        for (int b = k0_[p]; b < maxq_; ++b) {  // crossing boundary b + 1/2: k = b -> b + 1
          const Index t = crossing(x * inv_half_[b + off_], end);
          if (t >= end) break;
          push_event(t, w * x, w * (2.0 * b + 1.0), 0, maxq_ - b - 1);
        }
      } else {
        for (int b = k0_[p] - 1; b >= -maxq_; --b) {  // crossing boundary b + 1/2 downwards: k = b + 1 -> b
          const Index t = crossing(x * inv_half_[b + off_], end);
          if (t >= end) break;
          push_event(t, -w * x, w * (1.0 - 2.0 * (b + 1)), -b, maxq_);
        }
      }
    }
    // the zeros of each step t as evaluate_block() computes them (the same candidate set), in one pass that
    // vectorises (two divisions per step: a tenth of the sweep, step by step)
    zlo_.resize(end);
    zhi_.resize(end);
    for (Index t = 1; t < end; ++t) {
      const double h = scale(0, t);
      zhi_[t] = zero_of(mn_ + ilo(t) * delta_, h);
      zlo_[t] = zero_of(mn_ + ihi(t) * delta_, h);
    }
    ez_.resize(nz);
    double* ez = ez_.data();
    for (Index t = 1; t < end; ++t) {
      for (Index e = head_[t]; e >= 0; e = ev_[e].next) {
        const Event& ev = ev_[e];
        for (int z = ev.z1; z <= ev.z2; ++z) {
          B_[z] += ev.dB;
          C_[z] += ev.dC;
        }
      }
      if (t % kSweepCheck == 0) {  // zeros the remaining scales cannot improve on go for good
        bound(make_block(0, t, end), tail_lb_.data());
        bool any = false;
        for (int z = 0; z < nz; ++z) {
          if (tail_lb_[z] > best + eps_) {
            live_[z] = 0;
            dead_[z] = std::numeric_limits<double>::infinity();
          }
          any = any || live_[z];
        }
        if (!any) break;
      }
      const double h = scale(0, t);
      const int zhi = zhi_[t], zlo = zlo_[t];
      // E of every zero and whether one of the step's beats the best (rarely): a fixed loop that vectorises
      // (a std::min over [zlo, zhi] did not, a third of the sweep)
      int hit = 0;
      for (int z = 0; z < nz; ++z) {
        ez[z] = A + h * (h * C_[z] - 2.0 * B_[z]) + dead_[z];
        hit |= (z >= zlo) & (z <= zhi) & (ez[z] < best);
      }
      if (!hit) continue;
      // -lo / h moves by maxq / (T - m) per step of i: below 1, every zero in between occurs
      const bool all = T_ - t > maxq_ + 1;
      if (!all) {
        std::fill(present_.begin(), present_.end(), 0);
        for (Index i = ilo(t); i <= ihi(t); ++i) present_[zero_of(mn_ + i * delta_, scale(0, t))] = 1;
      }
      for (int z = zlo; z <= zhi; ++z) {
        if (ez[z] < best && (all || present_[z])) {
          best = ez[z];
          best_t = t;
          best_z = z;
        }
      }
    }
    if (best_t < 0) return true;
    // Within round-off of 0 the sum cannot tell candidates apart: the branch and bound decides instead.
    if (!(best > 1e-9 * A)) return false;
    // the winner's E point by point (the sweep's sum may have lost digits to cancellation)
    const double h = scale(0, best_t);
    double err = 0.0;
    for (Index p = 0; p < n_; ++p) {
      const double k = std::floor(x_[p] / h + 0.5);  // (a point on a boundary: either code, same error)
      const double c = std::clamp(k, static_cast<double>(-best_z), static_cast<double>(maxq_ - best_z));
      err += s[p] * (x_[p] - h * c) * (x_[p] - h * c);
    }
    if (err < best_.error) {
      best_.error = err;
      best_.scale = h;
      best_.zero = best_z;
      best_.found = true;
      best_fam_ = 0;
      best_t_ = best_t;
    }
    return true;
  }
  // The first t >= 1 at which the scale h_t = (R - t delta) / maxq is at most v (len if none): a value
  // crosses the boundary (b + 1/2) h there, v = x / (b + 1/2) (its lattice point at t = 0 is known). Round-off
  // can put the crossing a step early or late only where the value lies within round-off of the boundary,
  // where both codes cost the same.
  Index crossing(double v, Index len) const {
    const double t = std::ceil((R_ - maxq_ * v) * inv_delta_);
    return t <= 1.0 ? 1 : t >= static_cast<double>(len) ? len : static_cast<Index>(t);
  }
  void push_event(Index t, double dB, double dC, int z1, int z2) {
    ev_[nev_] = Event{dB, dC, z1, z2, head_[t]};
    head_[t] = nev_++;
  }

  // Sums over the values below v (at or below v with Inclusive). The table is exact for the bucket of v:
  // the bucket function fl(fl(x - min) / w) is monotone in x and computed from the same min and 1 / w as
  // the table, so every value of a lower bucket is < v and every value of a higher one > v; the prefix sums
  // at the bucket's start plus its own values below v (few: kBucketsPerValue buckets per value) give the sums exactly
  // over {x < v}, up to the round-off of the sums.
  struct Cum {
    double s0, s1, s2;  // sum s, s x, s x^2
  };
  template <bool Inclusive = false>
  Cum at(double v) const {
    const double f = (v - mn_) * inv_w_;
    const Index b = f > 0.0 ? (f < static_cast<double>(nb_ - 1) ? static_cast<Index>(f) : nb_ - 1) : 0;
    Index p = bucket_[b];
    const Index e = bucket_[b + 1];
    if (e - p > kCrowded) {  // a sorted bucket (sort_and_run(), or run()'s sorted row)
      const double* q = Inclusive ? std::upper_bound(x_ + p, x_ + e, v) : std::lower_bound(x_ + p, x_ + e, v);
      return pre_[q - x_];
    }
    Cum c = pre_[p];
    for (; p < e; ++p) {
      const double x = x_[p];
      const double w = (Inclusive ? x <= v : x < v) ? s_[p] : 0.0;
      c.s0 += w;
      c.s1 += w * x;
      c.s2 += w * x * x;
    }
    return c;
  }
  // sum over the values in [u, v) (thresholds u <= v) of s (x - c)^2
  static double seg(const Cum& u, const Cum& v, double c) {
    return (v.s2 - u.s2) - 2.0 * c * (v.s1 - u.s1) + c * c * (v.s0 - u.s0);
  }

  // LB(z) of block k for z in [k.zlo, k.zhi] into lb[z] (+inf elsewhere).
  void bound(const Block& k, double* lb) {
    std::fill(lb, lb + maxq_ + 1, std::numeric_limits<double>::infinity());
    const double h1 = scale(k.fam, k.t2 - 1), h2 = scale(k.fam, k.t1);
    const int kmin = -k.zhi, kmax = maxq_ - k.zlo;  // lattice points in use
    // Lattice point kk covers [lo_kk, hi_kk]; the gap to kk + 1 is open when lo_kk+1 > hi_kk, and its points
    // below the gap's midpoint are charged to kk, the others to kk + 1. Closed gaps (wide blocks, far
    // lattice points) charge nothing and need no positions. PL/PR/PM: sorted positions of lo, hi, midpoint.
    const int ahi = -k.zlo, blo = maxq_ - k.zhi;  // window ends a = -z <= ahi, b = maxq - z >= blo
    double* lo = lo_.data() + off_;
    double* hi = hi_.data() + off_;
    char* open = open_.data() + off_ + 1;  // (kk from kmin - 1)
    for (int kk = kmin; kk <= kmax; ++kk) {
      lo[kk] = kk >= 0 ? kk * h1 : kk * h2;
      hi[kk] = kk >= 0 ? kk * h2 : kk * h1;
    }
    open[kmin - 1] = open[kmax] = 0;
    for (int kk = kmin; kk < kmax; ++kk) open[kk] = lo[kk + 1] > hi[kk];
    Cum* PL = PL_.data() + off_;
    Cum* PR = PR_.data() + off_;
    Cum* PM = PM_.data() + off_;
    for (int kk = kmin; kk <= kmax; ++kk) {
      if (open[kk - 1] || kk <= ahi) PL[kk] = at(lo[kk]);
      if (open[kk] || kk >= blo) PR[kk] = at(hi[kk]);
      if (open[kk]) PM[kk] = at(0.5 * (hi[kk] + lo[kk + 1]));
    }
    // below[kk]: points between the previous midpoint and lo_kk; above[kk]: between hi_kk and the next
    double* below = below_.data() + off_;
    double* above = above_.data() + off_;
    for (int kk = kmin; kk <= kmax; ++kk) {
      below[kk] = open[kk - 1] ? seg(PM[kk - 1], PL[kk], lo[kk]) : 0.0;
      above[kk] = open[kk] ? seg(PR[kk], PM[kk], hi[kk]) : 0.0;
    }
    double acc = 0.0;
    cum_[kmin + off_] = 0.0;
    for (int kk = kmin + 1; kk < kmax; ++kk) {
      acc += below[kk] + above[kk];
      cum_[kk + off_] = acc;
    }
    for (int z = k.zlo; z <= k.zhi; ++z) {
      const int a = -z, b = maxq_ - z;
      lb[z] = seg(none_, PL[a], lo[a]) + above[a] + (cum_[b - 1 + off_] - cum_[a + off_]) + below[b] +
              seg(PR[b], all_, hi[b]);
    }
  }

  // E(h, z) exactly for the z with need_[z] in [zlo, zhi]; keeps the least.
  void evaluate(double h, int zlo, int zhi) {
    const int kmin = -zhi, kmax = maxq_ - zlo;  // boundaries kk (between lattice points kk, kk + 1) in [kmin, kmax)
    for (int kk = kmin; kk < kmax; ++kk) P_[kk + off_] = at((kk + 0.5) * h);
    double acc = 0.0;
    cum_[kmin + off_] = 0.0;
    for (int kk = kmin + 1; kk < kmax; ++kk) {
      acc += seg(P_[kk - 1 + off_], P_[kk + off_], kk * h);
      cum_[kk + off_] = acc;
    }
    for (int z = zlo; z <= zhi; ++z) {
      if (!need_[z]) continue;
      const int a = -z, b = maxq_ - z;  // lattice points of codes 0 and maxq
      const double err = seg(none_, P_[a + off_], a * h) + (cum_[b - 1 + off_] - cum_[a + off_]) +
                         seg(P_[b - 1 + off_], all_, b * h);
      if (err < best_.error) {
        best_.error = err;
        best_.scale = h;
        best_.zero = z;
        best_.found = true;
        best_fam_ = fam_;
        best_t_ = t_;
      }
    }
  }

  // The candidates of a leaf block: every (t, z) that t can take and whose z survived the block's bound.
  void evaluate_block(const Block& k, const double* lb) {
    for (Index t = k.t1; t < k.t2; ++t) {
      const double h = scale(k.fam, t);
      int zlo = k.zlo, zhi = k.zhi;
      bool all = true;
      if (k.fam == 0) {
        zhi = zero_of(mn_ + ilo(t) * delta_, h);
        zlo = zero_of(mn_ + ihi(t) * delta_, h);
        // -lo / h moves by maxq / (T - m) per step of i: below 1, every zero in between occurs
        all = T_ - t > maxq_ + 1;
        if (!all) {
          std::fill(present_.begin(), present_.end(), 0);
          for (Index i = ilo(t); i <= ihi(t); ++i) present_[zero_of(mn_ + i * delta_, h)] = 1;
        }
      }
      int nlo = maxq_ + 1, nhi = -1;
      for (int z = zlo; z <= zhi; ++z) {
        need_[z] = (all || present_[z]) && !(lb[z] > best_.error + eps_);
        if (need_[z]) {
          nlo = std::min(nlo, z);
          nhi = std::max(nhi, z);
        }
      }
      fam_ = k.fam;
      t_ = t;
      if (nhi >= 0) evaluate(h, nlo, nhi);
    }
  }

  const SortedWeighted* d_ = nullptr;
  const double* x_ = nullptr;
  Index n_ = 0, T_ = 0, nb_ = 0;
  int maxq_ = 1, off_ = 1;  // off_: lattice point kk -> index kk + off_
  double mn_ = 0, mx_ = 0, R_ = 0, delta_ = 0, eps_ = 0, inv_w_ = 0;
  Index i0_ = 0, j0_ = 0;
  int fam_ = 0, best_fam_ = 0;  // family and position of the candidate evaluated, of the best
  Index t_ = 0, best_t_ = 0;
  std::vector<Cum> P_, PL_, PR_, PM_;  // sums below thresholds (index kk + off_)
  Cum none_{0, 0, 0}, all_{0, 0, 0};    // below -inf, below +inf
  const double* s_ = nullptr;
  float fmin_ = 0, fmax_ = 0;
  std::vector<std::uint32_t> bucket_;  // at()'s table: nb_ + 1 entries (n < 2^32)
  std::vector<double> cum_, lo_, hi_, below_, above_;  // per lattice point (index kk + off_)
  std::vector<char> open_;  // gap kk to kk + 1 open (index kk + off_ + 1)
  std::vector<char> need_, present_;
  struct Event {
    double dB, dC;
    int z1, z2;  // zeros whose code changes
    Index next;  // next event of the same t (-1: none)
  };
  std::vector<Event> ev_;
  std::vector<Index> head_;     // first event of each t
  std::vector<double> B_, C_;   // per zero, at the current t of the sweep
  std::vector<double> inv_half_;  // 1 / (b + 1/2) per boundary b (index b + off_)
  std::vector<int> k0_;           // each value's lattice point at t = 0
  double inv_delta_ = 0;
  std::vector<double> tail_lb_; // per zero, bound of the scales the sweep has not reached
  std::vector<int> zlo_, zhi_;  // per step of the sweep, its least and largest zero
  std::vector<double> ez_;      // per zero, E at the sweep's step
  std::vector<char> live_;      // zeros the sweep still evaluates
  std::vector<double> dead_;    // 0 for those, +inf for the others
  Index nev_ = 0;
  static constexpr Index kSweepCheck = 128;  // steps between the sweep's bounds of the remaining scales
  // rows of at most this many values use the sweep for family A at 4 bits and more (measured: faster than
  // the branch and bound there; slower at 2 bits, about even at 3, slower from 512 values on)
  static constexpr Index kSweepMaxN = 256;
  std::vector<Level> levels_;
  GridSearchResult best_;
  SortedWeighted sorted_;                    // sort_and_run()'s row in bucket order (x and s only)
  std::vector<Cum> pre_;                     // prefix sums of s, s x, s x^2 in that order (n + 1)
  std::vector<std::uint32_t> bin_;           // each value's bucket
  std::vector<std::pair<double, double>> pairs_;  // a crowded bucket's (x, s) while sorted
};

}  // namespace

GridSearchResult weighted_grid_search(const SortedWeighted& d, int bits, int steps) {
  thread_local AffineSearch search;  // scratch reused across rows
  return search.run(d, bits, steps);
}

double weighted_grid_error(const float* x, const double* s, Index n, const AffineGrid& g, float maxq) {
  // quantize_code() and dequantize() with the code kept as a float (clamped, integer-valued: the same value
  // as through uint8), so that the loop vectorises with the true division; 8 running sums.
  const float scale = g.scale, zero = g.zero;
  return lane_sum(n, [&](Index i) {
    const float c = std::clamp(std::nearbyint(x[i] / scale) + zero, 0.0f, maxq);
    const double e = static_cast<double>(x[i]) - static_cast<double>(scale * (c - zero));
    return s[i] * e * e;
  });
}

namespace {

// The affine grid of one row (or group) as leanquant() keeps it: the min-max grid, replaced by the search's
// grid where that has the smaller E point by point. One per fitting task (its scratch reused across rows).
struct AffineFit {
  AffineGrid grid;
  double error = 0.0, minmax_error = 0.0;
};

class AffineFitter {
 public:
  AffineFitter(int bits, int steps) : bits_(bits), steps_(steps), maxq_(max_code(bits)) { opt_.bits = bits; }
  AffineFit fit(const float* values, const double* s, Index n) {
    const GridSearchResult found = search_.sort_and_run(values, s, n, bits_, steps_);
    // fit_grid() of the row from its extremes alone (it reads only min(0, min x) and max(0, max x))
    const float ends[2] = {search_.row_min(), search_.row_max()};
    AffineFit f;
    f.grid = fit_grid(ends, 2, opt_);
    f.error = f.minmax_error = weighted_grid_error(values, s, n, f.grid, maxq_);
    if (found.found && static_cast<float>(found.scale) >= std::numeric_limits<float>::min()) {
      const AffineGrid cand{static_cast<float>(found.scale), static_cast<float>(found.zero)};
      const double cand_err = weighted_grid_error(values, s, n, cand, maxq_);
      if (cand_err < f.error) {
        f.grid = cand;
        f.error = cand_err;
      }
    }
    return f;
  }

 private:
  int bits_, steps_;
  float maxq_;
  GridOptions opt_;
  AffineSearch search_;
};

// The group of processing column j's original column (0 without groups): one integer division, which the
// row batches do once per column.
inline Index column_group(const VectorXi64& perm, Index gs, Index j) { return gs > 0 ? perm[j] / gs : 0; }

// The kRowBatch lanes from panel row r of one column: codes[l] = quant(r + l, v[l], q[l]); lanes past the
// panel's `rows` are left at zero.
template <class Quant>
void quantize_lanes(Index rows, Index r, const float* v, float* q, std::uint8_t* codes, Quant quant) {
  for (Index l = 0; l < kRowBatch; ++l) {
    q[l] = 0.0f;
    codes[l] = 0;
    if (r + l < rows) codes[l] = quant(r + l, v[l], q[l]);
  }
}

// quant(w) = the nearest entry of the row's (and group's) ascending codebook; a value on a midpoint takes
// the lower entry. Midpoints in float32, as the oracle.
class CodebookQuantizer {
 public:
  CodebookQuantizer(const RowMatrixXf& cb, const RowMatrixXf& mids, Index row0, Index rows, Index groups,
                    Index gs, const VectorXi64& perm)
      : cb_(cb), mids_(mids), row0_(row0), rows_(rows), groups_(groups), gs_(gs), perm_(perm) {}
  void fit_group(Index, Index, const float*, Index) {}
  std::uint8_t quantize(Index r, Index j, float w, float& q) const {
    return quantize_at(entry(r, column_group(perm_, gs_, j)), w, q);
  }
  // The column loop's row-batch call (its corrections then run in SIMD lanes): the column's group once.
  void quantize_batch(Index r, Index j, const float* v, float* q, std::uint8_t* codes) const {
    const Index g = column_group(perm_, gs_, j);
    quantize_lanes(rows_, r, v, q, codes,
                   [&](Index rr, float w, float& qq) { return quantize_at(entry(rr, g), w, qq); });
  }

 private:
  Index entry(Index r, Index g) const { return (row0_ + r) * groups_ + g; }
  std::uint8_t quantize_at(Index idx, float w, float& q) const {
    const float* m = mids_.row(idx).data();
    // the entry = the number of midpoints below w, counted branch-free (a binary search mispredicts about
    // every other step); past 32 entries a branch-free binary search
    Index t = 0;
    if (mids_.cols() <= 32) {
      for (Index i = 0; i < mids_.cols(); ++i) t += m[i] < w;
    } else {
      t = search_sorted<false>(m, 0, mids_.cols(), w);
    }
    q = cb_(idx, t);
    return static_cast<std::uint8_t>(t);
  }

  const RowMatrixXf& cb_;
  const RowMatrixXf& mids_;
  Index row0_, rows_, groups_, gs_;
  const VectorXi64& perm_;
};

// quant(w) on the fixed affine grid of the row (and group of the original column).
class StaticAffineQuantizer {
 public:
  StaticAffineQuantizer(const std::vector<AffineGrid>& grids, float maxq, Index row0, Index rows, Index groups,
                        Index gs, const VectorXi64& perm)
      : grids_(grids), maxq_(maxq), row0_(row0), rows_(rows), groups_(groups), gs_(gs), perm_(perm) {}
  void fit_group(Index, Index, const float*, Index) {}
  std::uint8_t quantize(Index r, Index j, float w, float& q) const {
    return quantize_with(grid(r, column_group(perm_, gs_, j)), w, q);
  }
  // The row batch: the column's group once, then the lanes.
  void quantize_batch(Index r, Index j, const float* v, float* q, std::uint8_t* codes) const {
    const Index g = column_group(perm_, gs_, j);
    quantize_lanes(rows_, r, v, q, codes,
                   [&](Index rr, float w, float& qq) { return quantize_with(grid(rr, g), w, qq); });
  }

 private:
  const AffineGrid& grid(Index r, Index g) const { return grids_[(row0_ + r) * groups_ + g]; }
  std::uint8_t quantize_with(const AffineGrid& g, float w, float& q) const {
    const std::uint8_t code = quantize_code(w, g, maxq_);
    q = dequantize(code, g);
    return code;
  }

  const std::vector<AffineGrid>& grids_;
  float maxq_;
  Index row0_, rows_, groups_, gs_;
  const VectorXi64& perm_;
};

}  // namespace

template <class HT>
LeanQuantOutput leanquant(const ConstRowMatrixRef<float>& W, const ConstRowMatrixRef<HT>& H,
                          const LeanQuantOptions& opt) {
  const Index rows = W.rows(), cols = W.cols();
  const Index gs = opt.group_size > 0 ? opt.group_size : -1;
  const Index groups = gs > 0 ? cols / gs : 1;
  const Index glen = gs > 0 ? gs : cols;
  const int k = 1 << opt.bits;
  const float maxq = max_code(opt.bits);

  LeanQuantOutput res;
  QuantOutput& out = res.quant;
  PhaseTimer timer(out);
  const PreparedHessian prep = prepare_hessian(H, opt.act_order, opt.damp, true);
  timer.lap("factor");
  out.damp = prep.factor.damp;
  out.damp_attempts = prep.factor.attempts;
  const VectorXi64& perm = prep.perm;
  const RowMatrixXf& P = prep.factor.P;  // its diagonal is U_jj (linalg.hpp)

  // s_j = U_jj^(-p), scaled by the largest (= (U_jj / min U)^(-p)): k-means and the search are invariant
  // to the scale, and it keeps s in [0, 1] for any exponent.
  double umin = std::numeric_limits<double>::infinity();
  for (Index j = 0; j < cols; ++j) umin = std::min(umin, static_cast<double>(P(j, j)));
  res.importance.resize(cols);
  for (Index j = 0; j < cols; ++j) res.importance[perm[j]] = std::pow(static_cast<double>(P(j, j)) / umin, -opt.exponent);

  // One grid per row and group, from the original W (dead columns zeroed, as the loop sees them).
  res.grid_error.resize(rows * groups);
  std::vector<AffineGrid> grids;
  RowMatrixXf mids;
  if (opt.affine) {
    grids.resize(rows * groups);
    res.minmax_error.resize(rows * groups);
  } else {
    res.codebook.resize(rows * groups, k);
    res.iters.resize(rows * groups);
    mids.resize(rows * groups, k);  // k - 1 midpoints and +inf, which no weight is above
  }
  parallel_chunks(rows, kFitChunk, [&](Index r0, Index r1) {
    std::vector<float> values(glen);
    std::vector<double> centroids(k);
    SortedWeighted sorted;
    AffineFitter fitter(opt.bits, opt.grid_steps);
    for (Index r = r0; r < r1; ++r) {
      for (Index g = 0; g < groups; ++g) {
        const Index c0 = g * glen, idx = r * groups + g;
        // (through plain pointers the copy vectorises; W's rows are contiguous)
        const float* w = W.row(r).data() + c0;
        const char* dead = prep.dead.data() + c0;
        for (Index c = 0; c < glen; ++c) values[c] = dead[c] ? 0.0f : w[c];
        const double* s = res.importance.data() + c0;
        if (opt.affine) {
          const AffineFit f = fitter.fit(values.data(), s, glen);
          grids[idx] = f.grid;
          res.grid_error[idx] = f.error;
          res.minmax_error[idx] = f.minmax_error;
        } else {
          sorted.assign(values.data(), s, glen);
          SplitMix64 rng(opt.seed, static_cast<std::uint64_t>(idx));
          res.iters[idx] = weighted_kmeans(sorted, k, opt.kmeans_iters, opt.kmeans_tol, rng, centroids.data());
          for (int t = 0; t < k; ++t) res.codebook(idx, t) = static_cast<float>(centroids[t]);
          for (int t = 0; t + 1 < k; ++t)
            mids(idx, t) = 0.5f * (res.codebook(idx, t) + res.codebook(idx, t + 1));
          mids(idx, k - 1) = std::numeric_limits<float>::infinity();
          // The codebook's weighted error on these weights (what k-means minimised), with the loop's
          // nearest-entry rule: entry t takes the values in (mids[t-1], mids[t]].
          double err = 0.0;
          Index a = 0;
          for (int t = 0; t < k; ++t) {
            const Index b = t + 1 < k ? std::upper_bound(sorted.x.begin() + a, sorted.x.end(),
                                                         static_cast<double>(mids(idx, t))) - sorted.x.begin()
                                      : glen;
            err += sorted.segment_error(a, b, res.codebook(idx, t));
            a = b;
          }
          res.grid_error[idx] = err;
        }
      }
    }
  });
  timer.lap(opt.affine ? "grid_search" : "kmeans");

  out.codes.resize(rows, cols);
  ColumnLoopOptions loop_opt;
  loop_opt.block_size = opt.block_size;
  if (opt.affine) {
    run_column_loop(W, perm, opt.act_order, prep.dead, P, loop_opt,
                    [&](Index r0, Index pr) { return StaticAffineQuantizer(grids, maxq, r0, pr, groups, gs, perm); },
                    out.codes);
  } else {
    run_column_loop(W, perm, opt.act_order, prep.dead, P, loop_opt,
                    [&](Index r0, Index pr) { return CodebookQuantizer(res.codebook, mids, r0, pr, groups, gs, perm); },
                    out.codes);
  }
  timer.lap("column_loop");

  if (opt.act_order) out.perm = perm;
  out.g_idx = group_index(cols, gs, perm, false);
  if (opt.affine) {
    out.scales.resize(rows, groups);
    out.zeros.resize(rows, groups);
    for (Index r = 0; r < rows; ++r)
      for (Index g = 0; g < groups; ++g) {
        out.scales(r, g) = grids[r * groups + g].scale;
        out.zeros(r, g) = grids[r * groups + g].zero;
      }
    dequantize_affine(out);
  } else {
    out.weight.resize(rows, cols);
    // weight = codebook[codes]
    parallel_chunks(rows, kFitChunk, [&](Index r0, Index r1) {
      for (Index r = r0; r < r1; ++r)
        for (Index c = 0; c < cols; ++c) out.weight(r, c) = res.codebook(r * groups + out.g_idx[c], out.codes(r, c));
    });
  }
  timer.lap("dequantize");
  return res;
}

template LeanQuantOutput leanquant<float>(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<float>&,
                                          const LeanQuantOptions&);
template LeanQuantOutput leanquant<double>(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<double>&,
                                           const LeanQuantOptions&);

}  // namespace quantease
