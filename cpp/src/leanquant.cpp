// LeanQuant: loss-error-aware grids (weighted 1-D k-means, exact weighted affine search) and the GPTQ
// column loop against them.
#include "quantease/leanquant.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "quantease/gptq_loop.hpp"
#include "quantease/hessian.hpp"
#include "quantease/parallel.hpp"

namespace quantease {
namespace {

constexpr Index kRowPanel = 64;   // rows per column-loop task (fixed: thread-count independent)
constexpr Index kFitChunk = 16;   // rows per grid-fitting task
constexpr Index kDirectSums = 16; // k-means clusters this small are summed directly

std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Running sums of p over blocks of kBlock positions, so that a draw by p costs O(n / kBlock + kBlock) and a
// change of p in a range re-sums only the blocks it touches.
constexpr Index kBlock = 64;

struct BlockedSums {
  std::vector<double> p, block;
  double total = 0.0;
  void reset(Index n) {
    p.assign(n, 0.0);
    block.assign((n + kBlock - 1) / kBlock, 0.0);
  }
  void resum(Index a, Index b) {  // blocks holding positions [a, b)
    if (a >= b) return;
    for (Index k = a / kBlock; k <= (b - 1) / kBlock; ++k) {
      double acc = 0.0;
      const Index end = std::min<Index>((k + 1) * kBlock, static_cast<Index>(p.size()));
      for (Index i = k * kBlock; i < end; ++i) acc += p[i];
      block[k] = acc;
    }
    total = 0.0;
    for (double v : block) total += v;
  }
  // The first position whose running sum exceeds u * total (the last positive one if round-off leaves none).
  Index sample(SplitMix64& rng) const {
    const double target = rng.uniform() * total;
    double acc = 0.0;
    Index last = -1;
    for (Index k = 0; k < static_cast<Index>(block.size()); ++k) {
      if (block[k] > 0.0) last = k;
      if (acc + block[k] > target) {
        const Index end = std::min<Index>((k + 1) * kBlock, static_cast<Index>(p.size()));
        Index pos = -1;
        for (Index i = k * kBlock; i < end; ++i) {
          acc += p[i];
          if (p[i] > 0.0) pos = i;
          if (acc > target) return i;
        }
        return pos;
      }
      acc += block[k];
    }
    Index pos = 0;
    if (last >= 0)
      for (Index i = last * kBlock; i < std::min<Index>((last + 1) * kBlock, static_cast<Index>(p.size())); ++i)
        if (p[i] > 0.0) pos = i;
    return pos;
  }
};

// Greedy weighted k-means++ (as scikit-learn's): the first centre drawn by weight s, every next one the
// best of 2 + floor(ln k) draws by s D^2 (D: distance to the nearest centre), judged by the potential
// sum s min(D^2, (x - v)^2). On sorted data a candidate v only changes the points between the midpoints
// to its neighbouring centres, so a candidate costs O(n / k) instead of O(n).
void kmeans_plus_plus(const SortedWeighted& d, int k, SplitMix64& rng, double* c) {
  const Index n = d.size();
  std::vector<double> D(n);
  BlockedSums ps;
  ps.reset(n);
  ps.p = d.s;
  ps.resum(0, n);
  std::vector<double> centres{d.x[ps.sample(rng)]};  // ascending
  for (Index i = 0; i < n; ++i) {
    D[i] = (d.x[i] - centres[0]) * (d.x[i] - centres[0]);
    ps.p[i] = d.s[i] * D[i];
  }
  ps.resum(0, n);
  // The sorted positions whose nearest centre would become v: strictly between the midpoints to v's
  // neighbouring centres.
  auto range_of = [&](double v) {
    const auto right = std::lower_bound(centres.begin(), centres.end(), v);
    Index a = 0, b = n;
    if (right != centres.begin())
      a = std::upper_bound(d.x.begin(), d.x.end(), 0.5 * (*(right - 1) + v)) - d.x.begin();
    if (right != centres.end()) b = std::lower_bound(d.x.begin(), d.x.end(), 0.5 * (v + *right)) - d.x.begin();
    return std::make_pair(a, std::max(a, b));
  };
  const int trials = 2 + static_cast<int>(std::floor(std::log(static_cast<double>(k))));
  std::vector<Index> cand(trials);
  for (int t = 1; t < k; ++t) {
    if (!(ps.total > 0.0)) {  // every point already sits on a centre: repeat the largest
      centres.push_back(centres.back());
      continue;
    }
    for (int r = 0; r < trials; ++r) cand[r] = ps.sample(rng);
    double best_gain = -1.0;
    Index best = cand[0];
    for (int r = 0; r < trials; ++r) {
      const double v = d.x[cand[r]];
      const auto [a, b] = range_of(v);
      double gain = 0.0;  // potential removed by adding v
      for (Index i = a; i < b; ++i) gain += d.s[i] * std::max(0.0, D[i] - (d.x[i] - v) * (d.x[i] - v));
      if (gain > best_gain) {
        best_gain = gain;
        best = cand[r];
      }
    }
    const double v = d.x[best];
    const auto [a, b] = range_of(v);
    for (Index i = a; i < b; ++i) {
      D[i] = std::min(D[i], (d.x[i] - v) * (d.x[i] - v));
      ps.p[i] = d.s[i] * D[i];
    }
    ps.resum(a, b);
    centres.insert(std::upper_bound(centres.begin(), centres.end(), v), v);
  }
  std::copy(centres.begin(), centres.end(), c);
}

}  // namespace

void SortedWeighted::assign(const float* values, const double* weights, Index n) {
  // Sort by (value, position): an LSD radix sort (4 stable passes of 8 bits) of the floats'
  // order-preserving bit patterns (-0 counts as +0, as in a comparison); stable, so ties keep positions.
  keys_.resize(n);
  order_.resize(n);
  tmp_keys_.resize(n);
  tmp_order_.resize(n);
  for (Index i = 0; i < n; ++i) {
    std::uint32_t u;
    const float v = values[i] + 0.0f;
    std::memcpy(&u, &v, sizeof u);
    keys_[i] = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    order_[i] = static_cast<std::uint32_t>(i);
  }
  for (int shift = 0; shift < 32; shift += 8) {
    Index count[257] = {0};
    for (Index i = 0; i < n; ++i) ++count[((keys_[i] >> shift) & 0xFFu) + 1];
    if (count[((keys_[0] >> shift) & 0xFFu) + 1] == n) continue;  // one bucket: the pass changes nothing
    for (int b = 0; b < 256; ++b) count[b + 1] += count[b];
    for (Index i = 0; i < n; ++i) {
      const Index dst = count[(keys_[i] >> shift) & 0xFFu]++;
      tmp_keys_[dst] = keys_[i];
      tmp_order_[dst] = order_[i];
    }
    keys_.swap(tmp_keys_);
    order_.swap(tmp_order_);
  }
  x.resize(n);
  s.resize(n);
  S0.assign(n + 1, 0.0);
  S1.assign(n + 1, 0.0);
  S2.assign(n + 1, 0.0);
  for (Index i = 0; i < n; ++i) {
    const Index j = order_[i];
    x[i] = values[j];
    s[i] = weights[j];
    S0[i + 1] = S0[i] + s[i];
    S1[i + 1] = S1[i] + s[i] * x[i];
    S2[i + 1] = S2[i] + s[i] * x[i] * x[i];
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
  double mean = 0.0;
  for (Index i = 0; i < n; ++i) mean += d.x[i];
  mean /= n;
  double var = 0.0;
  for (Index i = 0; i < n; ++i) var += (d.x[i] - mean) * (d.x[i] - mean);
  var /= n;

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
      start = std::upper_bound(d.x.begin() + start, d.x.end(), mid) - d.x.begin();
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

// A lower bound of min over A of f(A) = sum_{x < A} s (A - x)^2 + sum_{x > A + w} s (x - A - w)^2 (the
// clamping error of an interval of width w): f is convex, bisection on the sign of f' brackets the
// minimiser in [a, b], and f(c) - |f'(c)| (b - a) <= min f by convexity.
double clamp_lower_bound(const SortedWeighted& d, double w) {
  const Index n = d.size();
  auto eval = [&](double A, double& slope) {
    const Index lo = std::lower_bound(d.x.begin(), d.x.end(), A) - d.x.begin();
    const Index hi = std::upper_bound(d.x.begin(), d.x.end(), A + w) - d.x.begin();
    const double B = A + w;
    const double f = d.segment_error(0, lo, A) + d.segment_error(hi, n, B);
    slope = 2.0 * (A * d.S0[lo] - d.S1[lo]) - 2.0 * ((d.S1[n] - d.S1[hi]) - B * (d.S0[n] - d.S0[hi]));
    return f;
  };
  double a = d.x.front(), b = d.x.back() - w;
  if (!(b > a)) return 0.0;
  double slope;
  for (int it = 0; it < 40 && b - a > 0.0; ++it) {
    const double c = 0.5 * (a + b);
    if (c <= a || c >= b) break;
    eval(c, slope);
    if (slope > 0.0) b = c;
    else a = c;
  }
  const double c = 0.5 * (a + b);
  const double f = eval(c, slope);
  // 1e-9 relative slack for the round-off of the prefix-sum differences
  return std::max(0.0, f - std::fabs(slope) * (b - a) - 1e-9 * std::fabs(f));
}

}  // namespace

GridSearchResult weighted_grid_search(const SortedWeighted& d, int bits, int steps) {
  GridSearchResult best;
  best.error = std::numeric_limits<double>::infinity();
  const Index n = d.size();
  const double mn = d.x.front(), mx = d.x.back(), R = mx - mn;
  if (!(R > 0.0)) return best;
  const int maxq = (1 << bits) - 1;
  const Index T = steps;
  const double delta = R / T;
  const double min_scale = std::numeric_limits<float>::min();

  // For a scale h, the lattice h * Z: P[kk] = sorted positions below the boundary (kk + 0.5) h between
  // lattice points kk and kk + 1 (kk in [-maxq, maxq - 1]); cum[kk] = running sum of the cell errors
  // sum s (x - kk h)^2 over the cells between those boundaries. The window of zero z (codes 0..maxq on
  // lattice points -z..maxq-z) then costs O(1): two clamped tails plus a difference of cum. The boundary
  // positions are walked from the previous scale's (the scales mostly shrink steadily, so each moves over
  // O(n) points in all), not searched.
  const int off = maxq;                 // kk -> kk + off
  std::vector<Index> P(2 * maxq + 1, 0);
  std::vector<double> cum(2 * maxq + 1, 0.0);
  std::vector<char> present(maxq + 1);
  std::vector<char> placed(2 * maxq + 1, 0);
  // mask: the windows to evaluate (nullptr: all of [zlo, zhi]); werr[z]: their errors (when given).
  auto eval_windows = [&](double scale, int zlo, int zhi, const std::vector<char>* mask, double* werr) {
    const int kmin = -zhi, kmax = maxq - zlo;  // lattice points in use; boundaries kk in [kmin, kmax)
    for (int kk = kmin; kk < kmax; ++kk) {
      const double bnd = (kk + 0.5) * scale;
      if (!placed[kk + off]) {  // first use: search, then walk
        P[kk + off] = std::lower_bound(d.x.begin(), d.x.end(), bnd) - d.x.begin();
        placed[kk + off] = 1;
      }
      Index q = P[kk + off];
      while (q > 0 && d.x[q - 1] >= bnd) --q;
      while (q < n && d.x[q] < bnd) ++q;
      P[kk + off] = q;
    }
    // cells strictly inside: lattice points kk in (kmin, kmax), between boundaries kk - 1 and kk
    double acc = 0.0;
    cum[kmin + off] = 0.0;
    for (int kk = kmin + 1; kk < kmax; ++kk) {
      acc += d.segment_error(P[kk - 1 + off], P[kk + off], kk * scale);
      cum[kk + off] = acc;
    }
    for (int z = zlo; z <= zhi; ++z) {
      if (mask && !(*mask)[z]) continue;
      const int a = -z, b = maxq - z;  // lattice points of codes 0 and maxq
      const double err = d.segment_error(0, P[a + off], a * scale) + (cum[b - 1 + off] - cum[a + off]) +
                         d.segment_error(P[b - 1 + off], n, b * scale);
      if (werr) werr[z] = err;
      if (err < best.error) {
        best.error = err;
        best.scale = scale;
        best.zero = z;
        best.found = true;
      }
    }
  };

  // i0: candidates i with lo < 0 are i < i0; j0: those j with hi > 0 are j < j0.
  auto count_below = [&](auto&& pred) {
    Index lo = 0, hi = T;  // pred is true on a prefix of [0, T)
    while (lo < hi) {
      const Index mid = (lo + hi) / 2;
      if (pred(mid)) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
  const Index i0 = count_below([&](Index i) { return mn + i * delta < 0.0; });
  const Index j0 = count_below([&](Index j) { return mx - j * delta > 0.0; });

  // lo < 0 < hi: scale = (R - m delta) / maxq with m = i + j, zero = rint(-lo / scale). Two exact prunings:
  // * every grid of that m spans a width R - m delta, so its error is at least the clamping error of the
  //   best placed interval of that width -- a bound that grows with m: once it reaches the best, stop;
  // * for a fixed zero z the error E(h) is continuous in the scale h with |dE/dh| <= 2 K sum s |x - q|
  //   <= 2 K sqrt(S0 E) (K = max(z, maxq - z) bounds the lattice index), so sqrt(E) moves by at most
  //   K sqrt(S0) delta / maxq per step of m: a window whose sqrt(E) exceeds sqrt(best) by g cannot win
  //   for the next g / (K sqrt(S0) delta / maxq) steps, and is not evaluated there.
  std::vector<Index> next_m(maxq + 1, 0);
  std::vector<char> need(maxq + 1);
  std::vector<double> werr(maxq + 1);
  const double unit = delta * std::sqrt(std::max(d.S0[n], 0.0)) / maxq;
  const Index n_neg = std::lower_bound(d.x.begin(), d.x.end(), 0.0) - d.x.begin();
  const double S0_all = d.S0[n], S2_all = d.S2[n];
  const double SA_all = (d.S1[n] - d.S1[n_neg]) - d.S1[n_neg];  // sum s |x|
  for (Index m = 0; m < T; ++m) {
    if (m % 128 == 0 && m > 0 && clamp_lower_bound(d, R - m * delta) >= best.error) break;
    const Index ilo = std::max<Index>(0, m - j0 + 1), ihi = std::min<Index>(m, i0 - 1);
    if (ilo > ihi) continue;
    const double scale = (R - m * delta) / maxq;
    if (!(scale >= min_scale)) continue;
    auto zero_of = [&](Index i) {
      return static_cast<int>(std::clamp(std::nearbyint(-(mn + i * delta) / scale), 0.0, double(maxq)));
    };
    const int zhi = zero_of(ilo), zlo = zero_of(ihi);
    // -lo / scale moves by maxq / (T - m) per step of i: below 1, every zero in between occurs
    const bool all = T - m > maxq + 1;
    if (!all) {
      std::fill(present.begin(), present.end(), 0);
      for (Index i = ilo; i <= ihi; ++i) present[zero_of(i)] = 1;
    }
    int nlo = maxq + 1, nhi = -1;
    for (int z = zlo; z <= zhi; ++z) {
      need[z] = (all || present[z]) && next_m[z] <= m;
      if (need[z]) {
        nlo = std::min(nlo, z);
        nhi = std::max(nhi, z);
      }
    }
    if (nhi < 0) continue;
    eval_windows(scale, nlo, nhi, &need, werr.data());
    for (int z = nlo; z <= nhi; ++z) {
      if (!need[z]) continue;
      const double K = std::max(z, maxq - z);
      const double gap = std::sqrt(werr[z]) - std::sqrt(best.error);
      if (!(gap > 0.0 && unit > 0.0)) {
        next_m[z] = m + 1;
        continue;
      }
      // Lipschitz constant per step of m at scale h: min(K, sqrt(sum s k^2) / sqrt(S0)) * unit with
      // |k| <= |x| / h + 1/2, i.e. sum s k^2 <= S2 / h^2 + SA / h + S0 / 4; it grows as h shrinks, so the
      // constant at the far end of a stretch bounds the whole stretch.
      auto lipschitz = [&](Index mm) {
        const double h = (R - static_cast<double>(std::min<Index>(mm, T - 1)) * delta) / maxq;
        const double kk2 = (S2_all / (h * h) + SA_all / h + 0.25 * S0_all) / S0_all;
        return std::min(K, std::sqrt(kk2)) * unit;
      };
      double steps_clear = std::min(gap / lipschitz(m), static_cast<double>(T));
      steps_clear = std::min(steps_clear, gap / lipschitz(m + static_cast<Index>(std::ceil(steps_clear))));
      steps_clear *= 1.0 - 1e-9;
      next_m[z] = m + std::max<Index>(1, static_cast<Index>(std::ceil(steps_clear)));
    }
  }
  // lo >= 0: xmin = 0, zero 0, scale = hi / maxq. Every such grid costs at least sum_{x<0} s x^2.
  const Index neg = std::lower_bound(d.x.begin(), d.x.end(), 0.0) - d.x.begin();
  const Index nonpos = std::upper_bound(d.x.begin(), d.x.end(), 0.0) - d.x.begin();
  if (i0 < T && d.S2[neg] < best.error) {
    for (Index j = 0; j <= T - 1 - i0; ++j) {
      const double scale = (mx - j * delta) / maxq;
      if (scale >= min_scale) eval_windows(scale, 0, 0, nullptr, nullptr);
    }
  }
  // hi <= 0: xmax = 0, zero maxq, scale = -lo / maxq; at least sum_{x>0} s x^2.
  if (j0 < T && d.S2[n] - d.S2[nonpos] < best.error) {
    for (Index i = 0; i <= T - 1 - j0; ++i) {
      const double scale = -(mn + i * delta) / maxq;
      if (scale >= min_scale) eval_windows(scale, maxq, maxq, nullptr, nullptr);
    }
  }
  return best;
}

double weighted_grid_error(const float* x, const double* s, Index n, const AffineGrid& g, float maxq) {
  double err = 0.0;
  for (Index i = 0; i < n; ++i) {
    const double e = static_cast<double>(x[i]) - dequantize(quantize_code(x[i], g, maxq), g);
    err += s[i] * e * e;
  }
  return err;
}

namespace {

// quant(w) = the nearest entry of the row's (and group's) ascending codebook; a value on a midpoint takes
// the lower entry. Midpoints in float32, as the oracle.
class CodebookQuantizer {
 public:
  CodebookQuantizer(const RowMatrixXf& cb, const RowMatrixXf& mids, Index row0, Index groups, Index gs,
                    const VectorXi64& perm)
      : cb_(cb), mids_(mids), row0_(row0), groups_(groups), gs_(gs), perm_(perm) {}
  void fit_group(Index, Index, const float*, Index) {}
  std::uint8_t quantize(Index r, Index j, float w, float& q) const {
    const Index idx = (row0_ + r) * groups_ + (gs_ > 0 ? perm_[j] / gs_ : 0);
    const float* m = mids_.row(idx).data();
    const Index t = std::lower_bound(m, m + mids_.cols(), w) - m;
    q = cb_(idx, t);
    return static_cast<std::uint8_t>(t);
  }

 private:
  const RowMatrixXf& cb_;
  const RowMatrixXf& mids_;
  Index row0_, groups_, gs_;
  const VectorXi64& perm_;
};

// quant(w) on the fixed affine grid of the row (and group of the original column).
class StaticAffineQuantizer {
 public:
  StaticAffineQuantizer(const std::vector<AffineGrid>& grids, float maxq, Index row0, Index groups, Index gs,
                        const VectorXi64& perm)
      : grids_(grids), maxq_(maxq), row0_(row0), groups_(groups), gs_(gs), perm_(perm) {}
  void fit_group(Index, Index, const float*, Index) {}
  std::uint8_t quantize(Index r, Index j, float w, float& q) const {
    const AffineGrid& g = grids_[(row0_ + r) * groups_ + (gs_ > 0 ? perm_[j] / gs_ : 0)];
    const std::uint8_t code = quantize_code(w, g, maxq_);
    q = dequantize(code, g);
    return code;
  }

 private:
  const std::vector<AffineGrid>& grids_;
  float maxq_;
  Index row0_, groups_, gs_;
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
    mids.resize(rows * groups, k - 1);
  }
  GridOptions minmax_opt;
  minmax_opt.bits = opt.bits;
  parallel_chunks(rows, kFitChunk, [&](Index r0, Index r1) {
    std::vector<float> values(glen);
    std::vector<double> centroids(k);
    SortedWeighted sorted;
    for (Index r = r0; r < r1; ++r) {
      for (Index g = 0; g < groups; ++g) {
        const Index c0 = g * glen, idx = r * groups + g;
        for (Index c = 0; c < glen; ++c) values[c] = prep.dead[c0 + c] ? 0.0f : W(r, c0 + c);
        const double* s = res.importance.data() + c0;
        sorted.assign(values.data(), s, glen);
        if (opt.affine) {
          const AffineGrid minmax = fit_grid(values.data(), glen, minmax_opt);
          const double minmax_err = weighted_grid_error(values.data(), s, glen, minmax, maxq);
          const GridSearchResult found = weighted_grid_search(sorted, opt.bits, opt.grid_steps);
          AffineGrid grid = minmax;
          double err = minmax_err;
          if (found.found && static_cast<float>(found.scale) >= std::numeric_limits<float>::min()) {
            const AffineGrid cand{static_cast<float>(found.scale), static_cast<float>(found.zero)};
            const double cand_err = weighted_grid_error(values.data(), s, glen, cand, maxq);
            if (cand_err < err) {
              grid = cand;
              err = cand_err;
            }
          }
          grids[idx] = grid;
          res.grid_error[idx] = err;
          res.minmax_error[idx] = minmax_err;
        } else {
          SplitMix64 rng(opt.seed, static_cast<std::uint64_t>(idx));
          res.iters[idx] = weighted_kmeans(sorted, k, opt.kmeans_iters, opt.kmeans_tol, rng, centroids.data());
          for (int t = 0; t < k; ++t) res.codebook(idx, t) = static_cast<float>(centroids[t]);
          for (int t = 0; t + 1 < k; ++t)
            mids(idx, t) = 0.5f * (res.codebook(idx, t) + res.codebook(idx, t + 1));
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
  parallel_chunks(rows, kRowPanel, [&](Index r0, Index r1) {
    const Index pr = r1 - r0;
    RowMatrixXf Wp(pr, cols);
    for (Index r = 0; r < pr; ++r)
      for (Index j = 0; j < cols; ++j) Wp(r, j) = prep.dead[perm[j]] ? 0.0f : W(r0 + r, perm[j]);
    RowMatrixU8 codes(pr, cols);
    if (opt.affine) {
      StaticAffineQuantizer quant(grids, maxq, r0, groups, gs, perm);
      gptq_column_loop(Wp, P, loop_opt, quant, codes);
    } else {
      CodebookQuantizer quant(res.codebook, mids, r0, groups, gs, perm);
      gptq_column_loop(Wp, P, loop_opt, quant, codes);
    }
    for (Index r = 0; r < pr; ++r)
      for (Index j = 0; j < cols; ++j) out.codes(r0 + r, perm[j]) = codes(r, j);
  });
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
