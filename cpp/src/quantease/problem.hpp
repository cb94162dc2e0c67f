// The QuantEase layer problem in processing order: Σ (= H) and W permuted once, so that every sweep walks
// the columns in order (see quantease.hpp for the equations).
#pragma once

#include "quantease/processing_order.hpp"
#include "quantease/types.hpp"

namespace quantease::qe {

constexpr Index kRowPanel = 128;  // rows per task: fixed, so results do not depend on the thread count

class Problem {
 public:
  template <class HT>
  Problem(const ConstRowMatrixRef<float>& W, const ConstRowMatrixRef<HT>& H, bool act_order);

  Index rows() const { return weights_.rows(); }
  Index cols() const { return weights_.cols(); }
  Index panels() const { return (rows() + kRowPanel - 1) / kRowPanel; }
  const ProcessingOrder& order() const { return order_; }
  const RowMatrixXf& sigma() const { return sigma_; }      // Σ, cols x cols, float32
  const RowMatrixXf& weights() const { return weights_; }  // W, rows x cols (dead columns kept)
  // Σ_jj, and 1 for a dead column (its Σ row is zero: the step β = ŵ + G / Σ_jj then leaves it at W)
  float diag(Index j) const { return diag_[j]; }

  // tr(W Σ Wᵀ), in float64: the scale of the objective, for relative errors.
  double weight_energy() const;

 private:
  ProcessingOrder order_;
  RowMatrixXf sigma_, weights_;
  Eigen::VectorXf diag_;
};

}  // namespace quantease::qe
