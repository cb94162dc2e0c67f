// LeanQuant: loss-error-aware grids (weighted 1-D k-means, exact weighted affine search) and the GPTQ
// column loop against them.
#include "quantease/leanquant.hpp"

#include <algorithm>
#include <cmath>
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

// Index of the first position whose running sum of p exceeds u * total (the running sums in order, as
// np.cumsum); the last positive entry when round-off leaves none.
Index sample_index(const std::vector<double>& p, double total, SplitMix64& rng) {
  const double target = rng.uniform() * total;
  double acc = 0.0;
  Index last = 0;
  for (Index i = 0; i < static_cast<Index>(p.size()); ++i) {
    acc += p[i];
    if (p[i] > 0.0) last = i;
    if (acc > target) return i;
  }
  return last;
}

// Greedy weighted k-means++ (as scikit-learn's): the first centre drawn by weight, every next one the
// best of `trials` draws by s * D^2, judged by the potential sum s min(D^2, (x - c)^2).
void kmeans_plus_plus(const SortedWeighted& d, int k, SplitMix64& rng, double* c) {
  const Index n = d.size();
  std::vector<double> D(n), p(n);
  double total = 0.0;
  for (Index i = 0; i < n; ++i) total += d.s[i];
  c[0] = d.x[sample_index(d.s, total, rng)];
  double pot = 0.0;
  for (Index i = 0; i < n; ++i) {
    D[i] = (d.x[i] - c[0]) * (d.x[i] - c[0]);
    p[i] = d.s[i] * D[i];
    pot += p[i];
  }
  const int trials = 2 + static_cast<int>(std::floor(std::log(static_cast<double>(k))));
  std::vector<Index> cand(trials);
  for (int t = 1; t < k; ++t) {
    if (!(pot > 0.0)) {  // every point already sits on a centre: repeat the last one
      c[t] = c[t - 1];
      continue;
    }
    for (int r = 0; r < trials; ++r) cand[r] = sample_index(p, pot, rng);
    double best_pot = std::numeric_limits<double>::infinity();
    Index best = cand[0];
    for (int r = 0; r < trials; ++r) {
      const double v = d.x[cand[r]];
      double cp = 0.0;
      for (Index i = 0; i < n; ++i) cp += d.s[i] * std::min(D[i], (d.x[i] - v) * (d.x[i] - v));
      if (cp < best_pot) {
        best_pot = cp;
        best = cand[r];
      }
    }
    c[t] = d.x[best];
    pot = 0.0;
    for (Index i = 0; i < n; ++i) {
      D[i] = std::min(D[i], (d.x[i] - c[t]) * (d.x[i] - c[t]));
      p[i] = d.s[i] * D[i];
      pot += p[i];
    }
  }
  std::sort(c, c + k);
}

}  // namespace

void SortedWeighted::assign(const float* values, const double* weights, Index n) {
  std::vector<Index> order(n);
  std::iota(order.begin(), order.end(), Index(0));
  std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return values[a] < values[b]; });
  x.resize(n);
  s.resize(n);
  S0.assign(n + 1, 0.0);
  S1.assign(n + 1, 0.0);
  S2.assign(n + 1, 0.0);
  for (Index i = 0; i < n; ++i) {
    x[i] = values[order[i]];
    s[i] = weights[order[i]];
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

  std::vector<Index> b(k, n), prev(k, -1);
  int it = 0;
  while (it < max_iter) {
    // Assignment: cluster t holds the sorted positions [b[t-1], b[t]), values <= the midpoint go low.
    Index start = 0;
    for (int t = 0; t + 1 < k; ++t) {
      const double mid = 0.5 * (c[t] + c[t + 1]);
      start = std::upper_bound(d.x.begin() + start, d.x.end(), mid) - d.x.begin();
      b[t] = start;
    }
    if (b == prev) break;  // labels unchanged: the centroids are already these clusters' means
    double shift = 0.0;
    Index a = 0;
    for (int t = 0; t < k; ++t) {
      double w = d.S0[b[t]] - d.S0[a], sx = d.S1[b[t]] - d.S1[a];
      if (b[t] - a <= kDirectSums) {
        // Few points: sum them directly; a prefix-sum difference would lose digits to the row's total.
        w = sx = 0.0;
        for (Index i = a; i < b[t]; ++i) {
          w += d.s[i];
          sx += d.s[i] * d.x[i];
        }
      }
      if (w > 0.0) {
        // The mean of the cluster lies within it (round-off aside).
        const double nc = std::clamp(sx / w, d.x[a], d.x[b[t] - 1]);
        shift += (nc - c[t]) * (nc - c[t]);
        c[t] = nc;
      }
      a = b[t];
    }
    ++it;
    prev = b;
    if (shift <= tol * var) break;
  }
  return it;
}

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

  // Boundaries of the lattice scale * Z between points kk and kk + 1, kk in [kmin, kmax): sorted
  // positions below (kk + 0.5) * scale; and the errors of the windows zero in [zlo, zhi].
  std::vector<Index> B(2 * maxq + 2);
  std::vector<double> cell(2 * maxq + 2);
  std::vector<char> present(maxq + 1);
  auto eval_windows = [&](double scale, int zlo, int zhi, bool all) {
    const int kmin = -zhi, kmax = maxq - zlo;
    Index start = 0;
    for (int kk = kmin; kk < kmax; ++kk) {
      start = std::lower_bound(d.x.begin() + start, d.x.end(), (kk + 0.5) * scale) - d.x.begin();
      B[kk - kmin] = start;
    }
    for (int kk = kmin + 1; kk < kmax; ++kk)
      cell[kk - kmin] = d.segment_error(B[kk - 1 - kmin], B[kk - kmin], kk * scale);
    for (int z = zlo; z <= zhi; ++z) {
      if (!all && !present[z]) continue;
      const int a = -z, b = maxq - z;  // lattice points of codes 0 and maxq
      double err = d.segment_error(0, B[a - kmin], a * scale);
      for (int kk = a + 1; kk < b; ++kk) err += cell[kk - kmin];
      err += d.segment_error(B[b - 1 - kmin], n, b * scale);
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

  // lo < 0 < hi: scale = (R - m delta) / maxq with m = i + j, zero = rint(-lo / scale).
  for (Index m = 0; m < T; ++m) {
    const Index ilo = std::max<Index>(0, m - j0 + 1), ihi = std::min<Index>(m, i0 - 1);
    if (ilo > ihi) continue;
    const double scale = (R - m * delta) / maxq;
    if (!(scale >= min_scale)) continue;
    auto zero_of = [&](Index i) {
      return static_cast<int>(std::clamp(std::nearbyint(-(mn + i * delta) / scale), 0.0, double(maxq)));
    };
    const int zhi = zero_of(ilo), zlo = zero_of(ihi);
    if (T - m > maxq + 1) {
      // -lo / scale moves by maxq / (T - m) < 1 per step of i: every zero in between occurs.
      eval_windows(scale, zlo, zhi, true);
    } else {
      std::fill(present.begin(), present.end(), 0);
      for (Index i = ilo; i <= ihi; ++i) present[zero_of(i)] = 1;
      eval_windows(scale, zlo, zhi, false);
    }
  }
  // lo >= 0: xmin = 0, zero 0, scale = hi / maxq. Every such grid costs at least sum_{x<0} s x^2.
  const Index neg = std::lower_bound(d.x.begin(), d.x.end(), 0.0) - d.x.begin();
  const Index nonpos = std::upper_bound(d.x.begin(), d.x.end(), 0.0) - d.x.begin();
  if (i0 < T && d.S2[neg] < best.error) {
    for (Index j = 0; j <= T - 1 - i0; ++j) {
      const double scale = (mx - j * delta) / maxq;
      if (scale >= min_scale) eval_windows(scale, 0, 0, true);
    }
  }
  // hi <= 0: xmax = 0, zero maxq, scale = -lo / maxq; at least sum_{x>0} s x^2.
  if (j0 < T && d.S2[n] - d.S2[nonpos] < best.error) {
    for (Index i = 0; i <= T - 1 - j0; ++i) {
      const double scale = -(mn + i * delta) / maxq;
      if (scale >= min_scale) eval_windows(scale, maxq, maxq, true);
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
  const RowMatrixXf& U = prep.factor.U;

  // s_j = U_jj^(-p), scaled by the largest (= (U_jj / min U)^(-p)): k-means and the search are invariant
  // to the scale, and it keeps s in [0, 1] for any exponent.
  double umin = std::numeric_limits<double>::infinity();
  for (Index j = 0; j < cols; ++j) umin = std::min(umin, static_cast<double>(U(j, j)));
  res.importance.resize(cols);
  for (Index j = 0; j < cols; ++j) res.importance[perm[j]] = std::pow(static_cast<double>(U(j, j)) / umin, -opt.exponent);

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
      gptq_column_loop(Wp, U, loop_opt, quant, codes);
    } else {
      CodebookQuantizer quant(res.codebook, mids, r0, groups, gs, perm);
      gptq_column_loop(Wp, U, loop_opt, quant, codes);
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
    for (Index r = 0; r < rows; ++r)
      for (Index c = 0; c < cols; ++c)
        out.weight(r, c) = res.codebook(r * groups + out.g_idx[c], out.codes(r, c));
    // The codebook's weighted error on the original weights (what k-means minimised).
    parallel_chunks(rows, kFitChunk, [&](Index r0, Index r1) {
      for (Index r = r0; r < r1; ++r)
        for (Index g = 0; g < groups; ++g) {
          const Index idx = r * groups + g;
          const float* m = mids.row(idx).data();
          double err = 0.0;
          for (Index c = g * glen; c < (g + 1) * glen; ++c) {
            const float w = prep.dead[c] ? 0.0f : W(r, c);
            const Index t = std::lower_bound(m, m + (k - 1), w) - m;
            const double e = static_cast<double>(w) - res.codebook(idx, t);
            err += res.importance[c] * e * e;
          }
          res.grid_error[idx] = err;
        }
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
