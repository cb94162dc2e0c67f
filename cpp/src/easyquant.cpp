// EasyQuant: outlier isolation, per-channel range optimisation (Adam + safety-net search), see easyquant.hpp.
#include "quantease/easyquant.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>

#include "quantease/parallel.hpp"
#include "quantease/sorted_row.hpp"

namespace quantease {
namespace {

constexpr Index kRowPanel = 16;     // rows per task: fixed, so results do not depend on the thread count
constexpr double kAdamBeta1 = 0.9;  // torch.optim.Adam defaults
constexpr double kAdamBeta2 = 0.999;
constexpr double kAdamEps = 1e-8;
constexpr double kRhoMin = 1e-3;  // Adam keeps the range above 0.1 % of its start
constexpr double kRhoLo = 0.05;   // the search covers [0.05, rho_hi] times the start range
constexpr int kPolished = 2;      // best grid points polished by the Lloyd iteration
constexpr int kLloydMax = 64;
constexpr float kMinScale = 1e-30f;   // max|x| / 2^(b-1) below this: the channel is left at its start grid
constexpr Index kSortedPerCode = 32;  // automatic evaluation: sort when n > 32 * (2^bits - 1)

// The range optimiser of one channel. Holds the sorted normal values and their float64 prefix sums, from
// which E(s) = sum (s k - x)^2 (minus the constant sum x^2) and dE/ds come in O(2^b log n).
class ChannelSolver {
 public:
  explicit ChannelSolver(const EasyQuantOptions& opt) : opt_(opt), maxq_(max_code(opt.bits)) {
    // Adam's bias corrections 1 - beta^t, once per solver (the same pow() values for every channel).
    correction1_.resize(std::max(opt.steps, 0));
    correction2_.resize(std::max(opt.steps, 0));
    for (int t = 1; t <= opt.steps; ++t) {
      correction1_[t - 1] = 1.0 - std::pow(kAdamBeta1, t);
      correction2_[t - 1] = 1.0 - std::pow(kAdamBeta2, t);
    }
  }

  ChannelFit fit(const float* x, Index n) {
    ChannelFit fit;
    const float half = static_cast<float>(1 << (opt_.bits - 1));
    float lo = 0.0f, hi = 0.0f;
    n_ = n;
    values_ = x;
    // Sorting pays off when an evaluation over the sorted values (a search per code boundary) is much cheaper
    // than a pass over the values: many values, few codes.
    sorted_path_ =
        opt_.evaluation == EasyQuantOptions::Evaluation::sorted ||
        (opt_.evaluation == EasyQuantOptions::Evaluation::automatic && n > kSortedPerCode * static_cast<Index>(maxq_));
    if (sorted_path_ && n > 0) {
      load(x, n);
      values_ = sorted_.data();
      lo = sorted_[0];
      hi = sorted_[n - 1];
    } else {
      for (Index i = 0; i < n; ++i) {
        lo = std::min(lo, x[i]);
        hi = std::max(hi, x[i]);
      }
    }
    const float max_abs = std::max(std::fabs(lo), std::fabs(hi));
    // No normal value, all zero or all tiny: the fallback grid, no optimisation.
    const bool degenerate = n == 0 || !(max_abs / half >= kMinScale);
    // The start grid: abs-max range with the paper's clamp bounds (sym), or the min-max grid (asym; only the
    // two ends matter to fit_grid).
    AffineGrid start;
    if (opt_.sym) {
      start.zero = half - 1.0f;
      start.scale = degenerate ? 1.0f / half : max_abs / half;
    } else {
      GridOptions grid_opt;
      grid_opt.bits = opt_.bits;
      const float ends[2] = {lo, hi};
      start = fit_grid(ends, 2, grid_opt);
    }
    fit.grid = start;
    fit.start_scale = fit.adam_scale = start.scale;
    // every error is summed over the same array in the same order, so equal scales give equal errors
    fit.start_error = fit.final_error = exact_error(values_, n, start);
    if (degenerate) return fit;

    kmin_ = -static_cast<double>(start.zero);
    kmax_ = static_cast<double>(maxq_) - start.zero;
    const double s0 = start.scale;
    const double rho = adam(s0);
    const double s_search = search(s0);

    // Safety net: the best of the start, Adam's iterate and the search by the exact float32 error; ties keep
    // the earlier candidate, so the result is never worse than the start.
    fit.adam_scale = static_cast<float>(rho * s0);
    const std::array<float, 3> candidates = {start.scale, fit.adam_scale, static_cast<float>(s_search)};
    for (int i = 1; i < 3; ++i) {
      const AffineGrid g{candidates[i], start.zero};
      const double e = exact_error(values_, n, g);
      if (e < fit.final_error) {
        fit.final_error = e;
        fit.grid = g;
        fit.source = static_cast<RangeSource>(i);
      }
    }
    return fit;
  }

 private:
  struct Moments {
    double a = 0.0;  // sum k^2
    double b = 0.0;  // sum k x
  };

  // Sorts x and builds the prefix sums of the sorted values (in four chains).
  void load(const float* x, Index n) {
    sorted_.resize(n);
    prefix_.resize(n + 1);
    hint_.assign(static_cast<std::size_t>(maxq_), 0);
    sort_values(x, n, keys_, scratch_, sorted_.data());
    const float* sorted = sorted_.data();
    prefix_sums<4>(n, [sorted](Index i) { return static_cast<double>(sorted[i]); }, prefix_.data());
  }

  // The codes of scale s split the sorted values into runs: code k for x in [(k - 1/2) s, (k + 1/2) s)
  // (clamped at kmin and kmax). A boundary value goes up (rint would round it to even: a null set).
  // Each boundary is searched from where it was at the previous call (galloping): consecutive calls use
  // nearby scales, so this costs O(log distance) instead of O(log n); the result is the same either way.
  Moments moments(double s) { return sorted_path_ ? moments_sorted(s) : moments_direct(s); }

  // One pass over the values (any order): k = clamp(rint(x / s), kmin, kmax), float64 sums. The SIMD reduction
  // order is fixed by the build, not by the thread count.
  Moments moments_direct(double s) const {
    double a = 0.0, b = 0.0;
    const double inv = 1.0 / s, kmin = kmin_, kmax = kmax_;
    const float* x = values_;
    const Index n = n_;
#pragma omp simd reduction(+ : a, b)
    for (Index i = 0; i < n; ++i) {
      const double v = x[i];
      const double k = std::min(std::max(std::nearbyint(v * inv), kmin), kmax);
      a += k * k;
      b += k * v;
    }
    Moments m;
    m.a = a;
    m.b = b;
    return m;
  }

  Moments moments_sorted(double s) {
    Moments m;
    const Index n = n_;
    const float* x = sorted_.data();
    Index begin = 0;
    int j = 0;
    for (double k = kmin_; k < kmax_; k += 1.0, ++j) {
      if (begin == n) {
        hint_[j] = n;
        continue;
      }
      const Index end = gallop(x, begin, n, hint_[j], (k + 0.5) * s);
      hint_[j] = end;
      m.a += k * k * static_cast<double>(end - begin);
      m.b += k * (prefix_[end] - prefix_[begin]);
      begin = end;
    }
    if (begin < n) {
      m.a += kmax_ * kmax_ * static_cast<double>(n - begin);
      m.b += kmax_ * (prefix_[n] - prefix_[begin]);
    }
    return m;
  }

  // The first index i in [lo, hi] with x[i] >= t (hi when none), x sorted ascending, searched outward from
  // the guess h by doubling steps, then by bisection.
  static Index gallop(const float* x, Index lo, Index hi, Index h, double t) {
    h = std::clamp(h, lo, hi);
    Index a, b;  // the answer lies in [a, b]; b == hi or x[b] >= t
    Index step = 1;
    if (h < hi && static_cast<double>(x[h]) < t) {
      a = h + 1;
      b = std::min(hi, a);
      while (b < hi && static_cast<double>(x[b]) < t) {
        a = b + 1;
        b = std::min(hi, b + step);
        step *= 2;
      }
    } else {
      a = b = h;
      while (a > lo && static_cast<double>(x[a - 1]) >= t) {
        b = a - 1;
        a = b - lo > step ? b - step : lo;
        step *= 2;
      }
    }
    return std::lower_bound(x + a, x + b, t, [](float v, double bound) { return v < bound; }) - x;
  }

  // E(s) - sum x^2 = s^2 sum k^2 - 2 s sum k x.
  static double objective(double s, const Moments& m) { return s * (s * m.a - 2.0 * m.b); }

  // Adam on rho = s / s0 from 1 with the exact a.e. gradient of the mean squared error in units of s0^2:
  // grad = dE/ds / (n s0), dE/ds = 2 sum (s k - x) k = 2 (s sum k^2 - sum k x). Returns the last rho.
  double adam(double s0) {
    const double n = static_cast<double>(n_);
    double rho = 1.0, m = 0.0, v = 0.0;
    for (int t = 1; t <= opt_.steps; ++t) {
      const double s = rho * s0;
      const Moments mo = moments(s);
      const double grad = 2.0 * (s * mo.a - mo.b) / (n * s0);
      m = kAdamBeta1 * m + (1.0 - kAdamBeta1) * grad;
      v = kAdamBeta2 * v + (1.0 - kAdamBeta2) * grad * grad;
      const double m_hat = m / correction1_[t - 1];
      const double v_hat = v / correction2_[t - 1];
      rho = std::max(rho - opt_.lr * m_hat / (std::sqrt(v_hat) + kAdamEps), kRhoMin);
    }
    return rho;
  }

  // The safety-net search: E on the geometric grid rho_i = rho_hi (rho_lo / rho_hi)^(i / (points - 1)),
  // then the kPolished best points (by E, then index) each polished by Lloyd steps s <- sum(k x) / sum(k^2)
  // (the least-squares scale of the current codes) while E strictly decreases. rho_hi covers the values the
  // start grid clips (sym: the negative end at -(2^(b-1) - 1) s0). Returns the best polished s.
  double search(double s0) {
    double m_side = std::numeric_limits<double>::infinity();
    if (-kmin_ > 0) m_side = std::min(m_side, -kmin_);
    if (kmax_ > 0) m_side = std::min(m_side, kmax_);
    const int points = opt_.search_points;
    if (m_side != grid_side_) {  // the grid depends on the clamp bounds only: cache it
      grid_side_ = m_side;
      const double rho_hi = 1.0 + 1.0 / m_side;
      const double ratio = kRhoLo / rho_hi;
      grid_.resize(points);
      for (int i = 0; i < points; ++i) grid_[i] = rho_hi * std::pow(ratio, static_cast<double>(i) / (points - 1));
    }

    std::array<int, kPolished> best_i;
    std::array<double, kPolished> best_f;
    best_i.fill(-1);
    best_f.fill(std::numeric_limits<double>::infinity());
    for (int i = 0; i < points; ++i) {
      const double s = s0 * grid_[i];
      const double f = objective(s, moments(s));
      // insert into the sorted top list; strict < keeps the lower index first among equals
      for (int j = 0; j < kPolished; ++j) {
        if (f < best_f[j]) {
          for (int l = kPolished - 1; l > j; --l) {
            best_f[l] = best_f[l - 1];
            best_i[l] = best_i[l - 1];
          }
          best_f[j] = f;
          best_i[j] = i;
          break;
        }
      }
    }

    double best_s = s0, best_obj = std::numeric_limits<double>::infinity();
    for (int j = 0; j < kPolished && best_i[j] >= 0; ++j) {
      double s = s0 * grid_[best_i[j]];
      Moments mo = moments(s);
      double f = objective(s, mo);
      for (int it = 0; it < kLloydMax && mo.a > 0.0; ++it) {
        const double s_new = mo.b / mo.a;
        if (!(s_new > 0.0)) break;
        const Moments mo_new = moments(s_new);
        const double f_new = objective(s_new, mo_new);
        if (!(f_new < f)) break;
        s = s_new;
        mo = mo_new;
        f = f_new;
      }
      if (f < best_obj) {
        best_obj = f;
        best_s = s;
      }
    }
    return best_s;
  }

  // sum (dequantize(quantize_code(x)) - x)^2 with the float32 quantizer of the output (the same float ops,
  // written so that the compiler vectorises them), summed in float64 over 8 fixed lanes.
  double exact_error(const float* x, Index n, const AffineGrid& g) const {
    constexpr int kLanes = 8;
    std::array<double, kLanes> acc{};
    const float scale = g.scale, zero = g.zero, maxq = maxq_;
    auto sq_err = [&](float w) {
      const float c = std::clamp(std::nearbyint(w / scale) + zero, 0.0f, maxq);
      const double d = static_cast<double>(scale * (c - zero)) - static_cast<double>(w);
      return d * d;
    };
    Index i = 0;
    for (; i + kLanes <= n; i += kLanes)
      for (int l = 0; l < kLanes; ++l) acc[l] += sq_err(x[i + l]);
    for (int l = 0; i < n; ++i, ++l) acc[l] += sq_err(x[i]);
    double e = 0.0;
    for (const double a : acc) e += a;
    return e;
  }

  const EasyQuantOptions& opt_;
  float maxq_;
  double kmin_ = 0.0, kmax_ = 0.0;
  std::vector<std::uint32_t> keys_, scratch_;  // sort buffers
  const float* values_ = nullptr;              // the channel's values: sorted_ on the sorted path, else the caller's
  Index n_ = 0;
  bool sorted_path_ = false;
  std::vector<float> sorted_;
  std::vector<double> prefix_;
  std::vector<Index> hint_;  // per code boundary: its index at the last moments() call
  std::vector<double> correction1_, correction2_;
  double grid_side_ = -1.0;   // the clamp bound grid_ was made for
  std::vector<double> grid_;  // rho of the search points
};

// Eq. 3 flags of one row: |w - mean| >= threshold in float64 (a loop the compiler vectorises).
void flag_outliers(const float* __restrict w, Index n, double mean, double threshold, std::uint8_t* __restrict flag) {
  for (Index c = 0; c < n; ++c) flag[c] = std::fabs(static_cast<double>(w[c]) - mean) >= threshold;
}

// Codes and grid part of n values with the float32 ops of quantize_code() and dequantize() (bit for bit), in a
// loop the compiler vectorises. A flagged value (outlier) gets the zero point: its grid part is exactly 0.
void quantize_values(const float* __restrict w, const std::uint8_t* __restrict flag, Index n, const AffineGrid& g,
                     float maxq, std::uint8_t* __restrict code, float* __restrict q) {
  const float scale = g.scale, zero = g.zero;
  for (Index c = 0; c < n; ++c) {
    float cf = std::clamp(std::nearbyint(w[c] / scale) + zero, 0.0f, maxq);
    cf = flag[c] ? zero : cf;
    code[c] = static_cast<std::uint8_t>(cf);
    q[c] = scale * (cf - zero);
  }
}

// Outlier statistics (Eq. 3) into res.mean and res.stddev, two-pass in float64: per-row sums in fixed
// order, then the tensor total in row order, so the threshold does not depend on the thread count.
void outlier_statistics(const ConstRowMatrixRef<float>& W, bool row_stats, EasyQuantOutput& res) {
  const Index rows = W.rows(), cols = W.cols();
  Eigen::VectorXd row_sum(rows), row_sq(rows);
  parallel_chunks(rows, kRowPanel, [&](Index r0, Index r1) {
    for (Index r = r0; r < r1; ++r) {
      double sum = 0.0;
      for (Index c = 0; c < cols; ++c) sum += static_cast<double>(W(r, c));
      row_sum[r] = sum;
    }
  });
  double tensor_mean = 0.0;
  if (!row_stats) {
    for (Index r = 0; r < rows; ++r) tensor_mean += row_sum[r];
    tensor_mean /= static_cast<double>(rows) * static_cast<double>(cols);
  }
  parallel_chunks(rows, kRowPanel, [&](Index r0, Index r1) {
    for (Index r = r0; r < r1; ++r) {
      const double mean = row_stats ? row_sum[r] / static_cast<double>(cols) : tensor_mean;
      double sum_sq = 0.0;
      for (Index c = 0; c < cols; ++c) {
        const double d = static_cast<double>(W(r, c)) - mean;
        sum_sq += d * d;
      }
      row_sq[r] = sum_sq;
    }
  });
  if (row_stats) {
    res.mean = row_sum / static_cast<double>(cols);
    res.stddev = (row_sq / static_cast<double>(cols)).cwiseSqrt();
  } else {
    double total = 0.0;
    for (Index r = 0; r < rows; ++r) total += row_sq[r];
    res.mean = Eigen::VectorXd::Constant(1, tensor_mean);
    res.stddev =
        Eigen::VectorXd::Constant(1, std::sqrt(total / (static_cast<double>(rows) * static_cast<double>(cols))));
  }
}

// The outliers of every row (their columns, increasing) as CSR, rows in order, and added to the weight:
// grid part (exactly 0 at the outliers) + outliers, the same float32 sum as dense_weight().
void store_outliers(const ConstRowMatrixRef<float>& W, const std::vector<std::vector<std::int32_t>>& outlier_cols,
                    EasyQuantOutput& res) {
  const Index rows = W.rows();
  res.outlier_indptr.resize(rows + 1);
  res.outlier_indptr[0] = 0;
  for (Index r = 0; r < rows; ++r)
    res.outlier_indptr[r + 1] = res.outlier_indptr[r] + static_cast<std::int64_t>(outlier_cols[r].size());
  const Index nnz = res.outlier_indptr[rows];
  res.outlier_indices.resize(nnz);
  res.outlier_values.resize(nnz);
  for (Index r = 0; r < rows; ++r) {
    Index p = res.outlier_indptr[r];
    for (const std::int32_t c : outlier_cols[r]) {
      res.outlier_indices[p] = c;
      res.outlier_values[p] = W(r, c);
      ++p;
    }
  }
  for (Index r = 0; r < rows; ++r)
    for (Index p = res.outlier_indptr[r]; p < res.outlier_indptr[r + 1]; ++p)
      res.quant.weight(r, res.outlier_indices[p]) += res.outlier_values[p];
}

}  // namespace

ChannelFit fit_channel(const float* x, Index n, const EasyQuantOptions& opt) {
  ChannelSolver solver(opt);
  return solver.fit(x, n);
}

EasyQuantOutput easyquant(const ConstRowMatrixRef<float>& W, const EasyQuantOptions& opt) {
  const Index rows = W.rows(), cols = W.cols();
  const Index gs = opt.group_size > 0 ? opt.group_size : cols;
  const Index groups = cols / gs;
  const float maxq = max_code(opt.bits);
  EasyQuantOutput res;
  PhaseTimer timer(res.quant);
  outlier_statistics(W, opt.row_stats, res);
  timer.lap("outlier_stats");

  QuantOutput& out = res.quant;
  out.codes.resize(rows, cols);
  out.weight.resize(rows, cols);
  out.scales.resize(rows, groups);
  out.zeros.resize(rows, groups);
  res.start_scales.resize(rows, groups);
  res.adam_scales.resize(rows, groups);
  res.source.resize(rows, groups);
  std::vector<std::vector<std::int32_t>> outlier_cols(rows);

  parallel_chunks(rows, kRowPanel, [&](Index r0, Index r1) {
    ChannelSolver solver(opt);
    std::vector<float> normal(gs);
    std::vector<std::uint8_t> flag(cols);
    for (Index r = r0; r < r1; ++r) {
      const float* w = W.data() + r * W.outerStride();
      const Index stats = opt.row_stats ? r : 0;
      const double mean = res.mean[stats], threshold = opt.outlier_sigma * res.stddev[stats];
      // A zero std flags nothing (every |w - mean| would equal 0 * sigma); +inf sigma flags nothing either.
      if (res.stddev[stats] > 0.0 && std::isfinite(opt.outlier_sigma)) {
        flag_outliers(w, cols, mean, threshold, flag.data());
      } else {
        std::fill(flag.begin(), flag.end(), std::uint8_t{0});
      }
      for (Index c = 0; c < cols; ++c)
        if (flag[c]) outlier_cols[r].push_back(static_cast<std::int32_t>(c));
      for (Index g = 0; g < groups; ++g) {
        const Index c0 = g * gs;
        Index n_normal = 0;
        for (Index c = c0; c < c0 + gs; ++c) {  // compact the normal values (branch-free)
          normal[n_normal] = w[c];
          n_normal += !flag[c];
        }
        const ChannelFit fit = solver.fit(normal.data(), n_normal);
        out.scales(r, g) = fit.grid.scale;
        out.zeros(r, g) = fit.grid.zero;
        res.start_scales(r, g) = fit.start_scale;
        res.adam_scales(r, g) = fit.adam_scale;
        res.source(r, g) = static_cast<std::uint8_t>(fit.source);
        quantize_values(w + c0, flag.data() + c0, gs, fit.grid, maxq, &out.codes(r, c0), &out.weight(r, c0));
      }
    }
  });

  timer.lap("channels");
  out.g_idx = GroupMap::of_original_columns(cols, opt.group_size, VectorXi64()).column_groups();
  store_outliers(W, outlier_cols, res);
  timer.lap("outliers_csr");
  return res;
}

}  // namespace quantease
