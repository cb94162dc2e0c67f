// The layer Hessian H = (2/n) sum_k x_k x_k^T: streaming accumulation from activations, and its
// preparation for the GPTQ-style solvers (processing order, damped factor).
#pragma once

#include <string>
#include <vector>

#include "quantease/linalg.hpp"
#include "quantease/processing_order.hpp"
#include "quantease/types.hpp"

namespace quantease {

// Streaming H = (2/n) X^T X over batches X (n_k x cols, rows are samples). The float64 accumulator
// computes each batch's product in float64; the float32 one in float32 (faster, for very long streams
// prefer float64). Column blocks of the lower triangle are updated in parallel.
class HessianAccumulator {
 public:
  HessianAccumulator(Index cols, bool float64);
  void add(const ConstRowMatrixRef<float>& X);
  void add(const ConstRowMatrixRef<double>& X);
  Index cols() const { return cols_; }
  std::int64_t samples() const { return samples_; }
  bool is_float64() const { return float64_; }
  RowMatrixXd hessian_f64() const;  // (2/n) sum x x^T, symmetric
  RowMatrixXf hessian_f32() const;
  void reset();

 private:
  Index cols_;
  bool float64_;
  std::int64_t samples_ = 0;
  ColMatrixXd acc64_;
  Eigen::MatrixXf acc32_;
};

// What the GPTQ-style column loops need from H: the processing order (dead columns, act-order) and the
// propagation factor of the dead-fixed, permuted, damped H.
struct PreparedHessian : ProcessingOrder {
  PropagationFactor factor;
};

// Dead columns get H[i,i] = 1; act-order sorts columns by diag(H) descending (stable); the damping
// ladder (linalg.hpp) runs when `retry` is set. H: cols x cols, symmetric, finite.
template <class HT>
PreparedHessian prepare_hessian(const ConstRowMatrixRef<HT>& H, bool act_order, double damp, bool retry);

// Sum over rows of d^T H d for D (rows x cols), in float64.
template <class HT>
double quadratic_form_sum(const ConstRowMatrixRef<double>& D, const ConstRowMatrixRef<HT>& H);

}  // namespace quantease
