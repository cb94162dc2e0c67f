// Hessian accumulation, preparation for the column loops, and the layer loss (see hessian.hpp).
#include "quantease/hessian.hpp"

#include <algorithm>
#include <numeric>
#include <type_traits>

#include "quantease/gemm.hpp"
#include "quantease/parallel.hpp"

namespace quantease {
namespace {
constexpr Index kColumnBlock = 128;

// acc[c0:, c0:c1] += X[:, c0:]^T X[:, c0:c1] for every column block: the lower triangle of X^T X (float64
// rows into the float64 sum).
template <class Acc, class X>
void add_lower_product(Acc& acc, const X& x) {
  const Index cols = x.cols();
  parallel_chunks(cols, kColumnBlock, [&](Index c0, Index c1) {
    acc.block(c0, c0, cols - c0, c1 - c0).noalias() += x.rightCols(cols - c0).transpose() * x.middleCols(c0, c1 - c0);
  });
}

// The same lower triangle for float32 rows: each block's product at the float32 GEMM rate (one
// single-threaded sgemm per fixed block: the same bits for any thread count), then added to the running sum
// in its precision. With a float64 sum each batch's product carries float32 round-off over its own rows
// only, and the sum over batches -- where a long stream loses digits -- is float64.
template <class Acc>
void add_lower_product_f32(Acc& acc, const ConstRowMatrixRef<float>& x) {
  using Sum = typename Acc::Scalar;
  const Index cols = x.cols();
  parallel_chunks(cols, kColumnBlock, [&](Index c0, Index c1) {
    const Index m = cols - c0, w = c1 - c0;
    RowMatrixXf product(m, w);
    gemm_atb(product, x.rightCols(m), x.middleCols(c0, w));
    acc.block(c0, c0, m, w) += product.template cast<Sum>();
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
    add_lower_product_f32(acc64_, X);
  } else {
    add_lower_product_f32(acc32_, X);
  }
  samples_ += X.rows();
}

void HessianAccumulator::add(const ConstRowMatrixRef<double>& X) {
  ensure_storage();
  if (float64_) {
    add_lower_product(acc64_, X);
  } else {
    const RowMatrixXf xf = X.cast<float>();
    add_lower_product_f32(acc32_, xf);
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

// The running sum handed over: moved out (no copy) when it is kept in T, converted otherwise; either way
// the accumulator's storage is left empty.
template <class T, class Kept>
RowMatrix<T> take(RowMatrix<Kept>& kept) {
  RowMatrix<T> out;
  if constexpr (std::is_same_v<T, Kept>) out = std::move(kept);
  else out = kept.template cast<T>();
  kept.resize(0, 0);
  return out;
}

// H = (2/n) S in the sum's precision: the one place a sum becomes a Hessian.
template <class T>
void finish(RowMatrix<T>& s, std::int64_t samples) {
  if (samples > 0) s *= static_cast<T>(2.0 / static_cast<double>(samples));
}
}  // namespace

template <class T>
RowMatrix<T> HessianAccumulator::sum() const {
  if ((float64_ ? acc64_.rows() : acc32_.rows()) != cols_) return RowMatrix<T>::Zero(cols_, cols_);
  RowMatrix<T> s = float64_ ? RowMatrix<T>(acc64_.cast<T>()) : RowMatrix<T>(acc32_.cast<T>());
  mirror_lower(s);
  return s;
}

template <class T>
RowMatrix<T> HessianAccumulator::release_sum() {
  ensure_storage();
  RowMatrix<T> s = float64_ ? take<T>(acc64_) : take<T>(acc32_);
  samples_ = 0;
  mirror_lower(s);
  return s;
}

// A float32 Hessian of a float64 sum is scaled in float64, then rounded once.
template <class T>
RowMatrix<T> HessianAccumulator::hessian() const {
  if constexpr (!std::is_same_v<T, double>) {
    if (float64_) return hessian<double>().template cast<T>();
  }
  RowMatrix<T> h = sum<T>();
  finish(h, samples_);
  return h;
}

template <class T>
RowMatrix<T> HessianAccumulator::release_hessian() {
  if constexpr (!std::is_same_v<T, double>) {
    if (float64_) return release_hessian<double>().template cast<T>();
  }
  const std::int64_t samples = samples_;
  RowMatrix<T> h = release_sum<T>();
  finish(h, samples);
  return h;
}

template RowMatrixXd HessianAccumulator::sum<double>() const;
template RowMatrixXf HessianAccumulator::sum<float>() const;
template RowMatrixXd HessianAccumulator::release_sum<double>();
template RowMatrixXf HessianAccumulator::release_sum<float>();
template RowMatrixXd HessianAccumulator::hessian<double>() const;
template RowMatrixXf HessianAccumulator::hessian<float>() const;
template RowMatrixXd HessianAccumulator::release_hessian<double>();
template RowMatrixXf HessianAccumulator::release_hessian<float>();

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
