// Hessian accumulation, preparation for the column loops, and the layer loss (see hessian.hpp).
#include "quantease/hessian.hpp"

#include <algorithm>
#include <numeric>

#include "quantease/gemm.hpp"
#include "quantease/parallel.hpp"

namespace quantease {
namespace {
constexpr Index kColumnBlock = 128;

// acc[c0:, c0:c1] += X[:, c0:]^T X[:, c0:c1] for every column block: the lower triangle of X^T X.
template <class Acc, class X>
void add_lower_product(Acc& acc, const X& x) {
  const Index cols = x.cols();
  parallel_chunks(cols, kColumnBlock, [&](Index c0, Index c1) {
    acc.block(c0, c0, cols - c0, c1 - c0).noalias() += x.rightCols(cols - c0).transpose() * x.middleCols(c0, c1 - c0);
  });
}
}  // namespace

HessianAccumulator::HessianAccumulator(Index cols, bool float64) : cols_(cols), float64_(float64) { reset(); }

void HessianAccumulator::reset() {
  samples_ = 0;
  if (float64_) acc64_.setZero(cols_, cols_);
  else acc32_.setZero(cols_, cols_);
}

void HessianAccumulator::ensure_storage() {
  if ((float64_ ? acc64_.rows() : acc32_.rows()) != cols_) reset();
}

void HessianAccumulator::add(const ConstRowMatrixRef<float>& X) {
  ensure_storage();
  if (float64_) {
    const RowMatrixXd xd = X.cast<double>();
    add_lower_product(acc64_, xd);
  } else {
    add_lower_product(acc32_, X);
  }
  samples_ += X.rows();
}

void HessianAccumulator::add(const ConstRowMatrixRef<double>& X) {
  ensure_storage();
  if (float64_) {
    add_lower_product(acc64_, X);
  } else {
    const RowMatrixXf xf = X.cast<float>();
    add_lower_product(acc32_, xf);
  }
  samples_ += X.rows();
}

void HessianAccumulator::add_sum(const ConstRowMatrixRef<double>& S, std::int64_t samples) {
  ensure_storage();
  acc64_.triangularView<Eigen::Lower>() += S;
  samples_ += samples;
}

void HessianAccumulator::add_sum(const ConstRowMatrixRef<float>& S, std::int64_t samples) {
  ensure_storage();
  acc32_.triangularView<Eigen::Lower>() += S;
  samples_ += samples;
}

namespace {
// The accumulated lower triangle copied into the upper one, in place.
template <class M>
void mirror_lower(M& m) {
  m.template triangularView<Eigen::StrictlyUpper>() = m.transpose();
}
}  // namespace

RowMatrixXd HessianAccumulator::sum_f64() const {
  if ((float64_ ? acc64_.rows() : acc32_.rows()) != cols_) return RowMatrixXd::Zero(cols_, cols_);
  RowMatrixXd s = float64_ ? acc64_ : RowMatrixXd(acc32_.cast<double>());
  mirror_lower(s);
  return s;
}

RowMatrixXf HessianAccumulator::sum_f32() const {
  if (float64_) return sum_f64().cast<float>();
  if (acc32_.rows() != cols_) return RowMatrixXf::Zero(cols_, cols_);
  RowMatrixXf s = acc32_;
  mirror_lower(s);
  return s;
}

RowMatrixXd HessianAccumulator::release_sum_f64() {
  if (!float64_) {
    RowMatrixXd s = sum_f64();
    acc32_.resize(0, 0);
    samples_ = 0;
    return s;
  }
  ensure_storage();
  RowMatrixXd s = std::move(acc64_);
  acc64_.resize(0, 0);
  samples_ = 0;
  mirror_lower(s);
  return s;
}

RowMatrixXf HessianAccumulator::release_sum_f32() {
  if (float64_) {
    RowMatrixXf s = sum_f32();
    acc64_.resize(0, 0);
    samples_ = 0;
    return s;
  }
  ensure_storage();
  RowMatrixXf s = std::move(acc32_);
  acc32_.resize(0, 0);
  samples_ = 0;
  mirror_lower(s);
  return s;
}

// H = (2/n) S in the sum's precision: the one place a sum becomes a Hessian.
namespace {
void finish(RowMatrixXd& s, std::int64_t samples) {
  if (samples > 0) s *= 2.0 / static_cast<double>(samples);
}
void finish(RowMatrixXf& s, std::int64_t samples) {
  if (samples > 0) s *= static_cast<float>(2.0 / static_cast<double>(samples));
}
}  // namespace

RowMatrixXd HessianAccumulator::hessian_f64() const {
  RowMatrixXd h = sum_f64();
  finish(h, samples_);
  return h;
}

RowMatrixXf HessianAccumulator::hessian_f32() const {
  if (float64_) return hessian_f64().cast<float>();
  RowMatrixXf h = sum_f32();
  finish(h, samples_);
  return h;
}

RowMatrixXd HessianAccumulator::release_hessian_f64() {
  const std::int64_t samples = samples_;
  RowMatrixXd h = release_sum_f64();
  finish(h, samples);
  return h;
}

RowMatrixXf HessianAccumulator::release_hessian_f32() {
  const std::int64_t samples = samples_;
  if (float64_) {
    RowMatrixXf h = release_hessian_f64().cast<float>();
    return h;
  }
  RowMatrixXf h = release_sum_f32();
  finish(h, samples);
  return h;
}

template <class HT>
PreparedHessian prepare_hessian(const ConstRowMatrixRef<HT>& H, bool act_order, double damp, bool retry) {
  PreparedHessian prep;
  static_cast<ProcessingOrder&>(prep) = ProcessingOrder::of_hessian(H, act_order);
  const auto gather = [&](ColMatrixXd& reversed) { prep.gather_reversed_lower(H, reversed); };
  ColMatrixXd factor_storage;  // Hr, then its Cholesky factor in place
  prep.factor = propagation_factor(factor_storage, gather, damp, retry);
  return prep;
}

namespace {
constexpr Index kLossPanel = 64;   // rows of D per task
constexpr Index kLossBlock = 256;  // columns of H per step, copied to float64
}  // namespace

// d^T H d = 2 sum_{i<j} d_i H_ij d_j + sum_j H_jj d_j^2, taken over blocks of H's columns [c0, c1): each adds
// 2 sum_j d_j (D[:, :c1] U)_j + sum_j H_jj d_j^2, U = the rows < c1 of the block above the diagonal, copied
// to float64 (at most cols x 256). No float64 copy of the whole H: for a float32 H it would be the largest
// buffer of the call (8 cols^2 bytes). Panels of rows accumulate their blocks in order, then the panels are
// summed in order: the same result for any thread count.
template <class HT>
double quadratic_form_sum(const ConstRowMatrixRef<double>& D, const ConstRowMatrixRef<HT>& H) {
  const Index rows = D.rows(), cols = D.cols();
  std::vector<double> partial((rows + kLossPanel - 1) / kLossPanel, 0.0);
  RowMatrixXd upper(cols, std::min(cols, kLossBlock));
  for (Index c0 = 0; c0 < cols; c0 += kLossBlock) {
    const Index c1 = std::min(cols, c0 + kLossBlock), nb = c1 - c0;
    auto U = upper.topLeftCorner(c1, nb);
    parallel_chunks(c1, kLossPanel, [&](Index i0, Index i1) {
      for (Index i = i0; i < i1; ++i)
        for (Index j = 0; j < nb; ++j) U(i, j) = c0 + j > i ? static_cast<double>(H(i, c0 + j)) : 0.0;
    });
    Eigen::VectorXd hdiag(nb);
    for (Index j = 0; j < nb; ++j) hdiag[j] = static_cast<double>(H(c0 + j, c0 + j));
    parallel_chunks(rows, kLossPanel, [&](Index r0, Index r1) {
      const auto Dp = D.middleRows(r0, r1 - r0);
      const auto Db = Dp.middleCols(c0, nb);
      RowMatrixXd T = RowMatrixXd::Zero(r1 - r0, nb);
      gemm_add(T, 1.0, Dp.leftCols(c1), U);
      partial[r0 / kLossPanel] +=
          2.0 * (T.array() * Db.array()).sum() + (Db.array().square().rowwise() * hdiag.transpose().array()).sum();
    });
  }
  return std::accumulate(partial.begin(), partial.end(), 0.0);
}

template PreparedHessian prepare_hessian<float>(const ConstRowMatrixRef<float>&, bool, double, bool);
template PreparedHessian prepare_hessian<double>(const ConstRowMatrixRef<double>&, bool, double, bool);
template double quadratic_form_sum<float>(const ConstRowMatrixRef<double>&, const ConstRowMatrixRef<float>&);
template double quadratic_form_sum<double>(const ConstRowMatrixRef<double>&, const ConstRowMatrixRef<double>&);

}  // namespace quantease
