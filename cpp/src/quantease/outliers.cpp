// QuantEase's outlier part: S, its support and the iterative hard-thresholding step (see outliers.hpp).
#include "outliers.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>

#include "quantease/parallel.hpp"

namespace quantease {

double power_iteration_lambda_max(const RowMatrixXf& A, int max_iters, double rel_tol) {
  const Index n = A.rows();
  if (n == 0) return 0.0;
  Eigen::VectorXd v = Eigen::VectorXd::Constant(n, 1.0 / std::sqrt(static_cast<double>(n)));
  Eigen::VectorXd w(n);
  double lambda = 0.0;
  for (int it = 0; it < max_iters; ++it) {
    parallel_chunks(n, 256, [&](Index i0, Index i1) {
      for (Index i = i0; i < i1; ++i) w[i] = A.row(i).cast<double>().dot(v);
    });
    const double rq = v.dot(w);  // Rayleigh quotient (v has unit norm)
    const double nw = w.norm();
    if (!(nw > 0.0)) return std::max(rq, 0.0);
    v = w / nw;
    const bool done = it > 0 && std::fabs(rq - lambda) <= rel_tol * std::fabs(rq);
    lambda = rq;
    if (done) break;
  }
  return lambda;
}

namespace qe {

Outliers::Outliers(const Problem& problem, const QuantEaseOptions& opt)
    : problem_(problem), structured_(opt.outlier_structure == OutlierStructure::structured) {
  const Index rows = problem.rows(), cols = problem.cols();
  lambda_max_ = power_iteration_lambda_max(problem.sigma());
  eta_ = lambda_max_ > 0.0 ? opt.outlier_step / (2.0 * lambda_max_) : 0.0;
  k_ = structured_ ? std::llround(opt.outlier_fraction * static_cast<double>(cols))
                   : std::llround(opt.outlier_fraction * static_cast<double>(rows) * static_cast<double>(cols));
  k_ = std::max<std::int64_t>(0, std::min<std::int64_t>(k_, structured_ ? cols : rows * cols));
  columns_.assign(cols, 0);
  values_.setZero(rows, cols);
  support_.setZero(rows, cols);
  RowMatrixXf candidate = problem.weights();
  select(candidate, false, nullptr);
}

bool Outliers::step(RowMatrixXf& G) {
  const Index rows = problem_.rows(), cols = problem_.cols();
  const float eta = static_cast<float>(eta_);
  RowMatrixXf candidate(rows, cols);
  parallel_chunks(rows, kRowPanel, [&](Index r0, Index r1) {
    for (Index r = r0; r < r1; ++r)
      for (Index c = 0; c < cols; ++c) candidate(r, c) = values_(r, c) + eta * G(r, c);
  });
  return select(candidate, true, &G);
}

// S_new = candidate on the selected support, 0 elsewhere; candidate is overwritten with ΔS = S_new − S_old
// and, with update_gradient, applied to G (T = W − S moves by −ΔS).
bool Outliers::select(RowMatrixXf& candidate, bool update_gradient, RowMatrixXf* G) {
  if (structured_) select_columns(candidate);
  else select_entries(candidate);
  if (!update_gradient) return true;
  // G −= ΔS Σ, one axpy per changed entry
  const Index rows = problem_.rows(), cols = problem_.cols();
  const RowMatrixXf& sigma = problem_.sigma();
  std::vector<char> any(problem_.panels(), 0);
  parallel_chunks(rows, kRowPanel, [&](Index r0, Index r1) {
    for (Index r = r0; r < r1; ++r) {
      float* g = G->row(r).data();
      for (Index c = 0; c < cols; ++c) {
        const float d = candidate(r, c);
        if (d == 0.0f) continue;
        any[r0 / kRowPanel] = 1;
        const float* sigma_row = sigma.row(c).data();
        for (Index m = 0; m < cols; ++m) g[m] -= d * sigma_row[m];
      }
    }
  });
  return std::any_of(any.begin(), any.end(), [](char a) { return a != 0; });
}

// The k columns of largest norm (ties to the lower column).
void Outliers::select_columns(RowMatrixXf& candidate) {
  const Index rows = problem_.rows(), cols = problem_.cols();
  // column norms: fixed-order float64 sums
  std::vector<double> norm(cols, 0.0);
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < cols; ++c) norm[c] += static_cast<double>(candidate(r, c)) * candidate(r, c);
  std::vector<Index> order(cols);
  std::iota(order.begin(), order.end(), Index{0});
  std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return norm[a] > norm[b]; });
  std::fill(columns_.begin(), columns_.end(), 0);
  for (std::int64_t i = 0; i < k_; ++i) columns_[order[i]] = 1;
  parallel_chunks(rows, kRowPanel, [&](Index r0, Index r1) {
    for (Index r = r0; r < r1; ++r)
      for (Index c = 0; c < cols; ++c) {
        const float v = columns_[c] ? candidate(r, c) : 0.0f;
        candidate(r, c) = v - values_(r, c);
        values_(r, c) = v;
        support_(r, c) = columns_[c];
      }
  });
}

// The k entries of largest magnitude (ties: the first in row-major order).
void Outliers::select_entries(RowMatrixXf& candidate) {
  const std::int64_t n = static_cast<std::int64_t>(problem_.rows()) * problem_.cols();
  float threshold = std::numeric_limits<float>::infinity();
  std::int64_t ties = 0;  // entries equal to the threshold that still fit (flat order)
  if (k_ > 0) {
    std::vector<float> magnitude(n);
    const float* cd = candidate.data();
    for (std::int64_t i = 0; i < n; ++i) magnitude[i] = std::fabs(cd[i]);
    std::nth_element(magnitude.begin(), magnitude.begin() + (k_ - 1), magnitude.end(), std::greater<float>());
    threshold = magnitude[k_ - 1];
    std::int64_t above = 0;
    for (std::int64_t i = 0; i < n; ++i) above += std::fabs(cd[i]) > threshold;
    ties = k_ - above;
  }
  float* cd = candidate.data();
  float* sd = values_.data();
  std::uint8_t* md = support_.data();
  for (std::int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(cd[i]);
    bool keep = k_ > 0 && a > threshold;
    if (k_ > 0 && !keep && a == threshold && ties > 0) {
      keep = true;
      --ties;
    }
    const float v = keep ? cd[i] : 0.0f;
    cd[i] = v - sd[i];
    sd[i] = v;
    md[i] = keep;
  }
}

}  // namespace qe
}  // namespace quantease
