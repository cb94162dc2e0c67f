// The layer Hessian H = (2/n) sum_k x_k x_k^T: streaming accumulation from activations, and its
// preparation for the GPTQ-style solvers (processing order, damped factor).
#pragma once

#include <string>
#include <vector>

#include "quantease/linalg.hpp"
#include "quantease/processing_order.hpp"
#include "quantease/types.hpp"

namespace quantease {

// Streaming H = (2/n) X^T X over batches X (n_k x cols, rows are samples). The float64 accumulator keeps a
// float64 running sum of each batch's product, computed in the batch's precision (float32 batches at the
// float32 GEMM rate); the float32 one sums in float32 (for very long streams prefer float64). Column
// blocks of the lower triangle are updated in parallel.
//
// Partial sums: sum() is the running S = sum x x^T and add_sum(S, n) adds one, so partial sums over
// shards of the data (ranks of a distributed run, or shards of one process) can be folded in a fixed
// order: the same bits whichever process computed which shard. The release_* variants move the matrix out
// without a copy (cols^2 doubles: 970 MB for an 11008-wide layer) and leave the accumulator empty.
class HessianAccumulator {
 public:
  HessianAccumulator(Index cols, bool float64);
  void add(const ConstRowMatrixRef<float>& X);
  void add(const ConstRowMatrixRef<double>& X);
  void add_sum(const ConstRowMatrixRef<double>& S, std::int64_t samples);  // float64 accumulator
  void add_sum(const ConstRowMatrixRef<float>& S, std::int64_t samples);   // float32 accumulator
  Index cols() const { return cols_; }
  std::int64_t samples() const { return samples_; }
  bool is_float64() const { return float64_; }
  // T: double or float, whatever the accumulator keeps (a float32 figure of a float64 sum is rounded once).
  template <class T>
  RowMatrix<T> hessian() const;  // (2/n) sum x x^T, symmetric
  template <class T>
  RowMatrix<T> sum() const;  // sum x x^T, symmetric
  template <class T>
  RowMatrix<T> release_hessian();  // hessian<T>() without a copy (in its own precision); empties the accumulator
  template <class T>
  RowMatrix<T> release_sum();  // sum<T>() likewise
  void reset();

 private:
  void ensure_storage();  // after a release: zeros again
  Index cols_;
  bool float64_;
  std::int64_t samples_ = 0;
  // Only the lower triangle is accumulated; row-major so the finished matrix moves out without a copy.
  RowMatrixXd acc64_;
  RowMatrixXf acc32_;
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
