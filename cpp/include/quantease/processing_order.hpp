// The order in which the Hessian-based solvers visit W's columns, and the one place that moves data between
// it and W's own column order.
//
// Dead columns (diag(H) == 0 exactly: the input never fires) carry no information; the solvers zero them.
// With act-order, columns are processed by diag(H) descending (dead ones counted as 1, stable sort), as the
// GPTQ reference does; otherwise in W's order. Position j of the processing order holds column perm[j].
#pragma once

#include <vector>

#include "quantease/parallel.hpp"
#include "quantease/types.hpp"

namespace quantease {

struct ProcessingOrder {
  std::vector<char> dead;  // per original column: diag(H) == 0 exactly
  VectorXi64 perm;         // processing position -> original column (the identity without act-order)
  bool act_order = false;  // whether perm may differ from the identity

  // Dead columns and order from H's diagonal (cols x cols).
  template <class HT>
  static ProcessingOrder of_hessian(const ConstRowMatrixRef<HT>& H, bool act_order);

  Index size() const { return perm.size(); }

  // W's rows [r0, r0 + out.rows()) in processing order into out (out.cols() == W.cols()); dead columns are
  // zeroed when `zero_dead`.
  void gather_rows(const ConstRowMatrixRef<float>& W, Index r0, bool zero_dead, RowMatrixXf& out) const {
    const Index rows = out.rows(), cols = out.cols();
    if (!act_order) {
      out = W.middleRows(r0, rows);
      if (zero_dead)
        for (Index j = 0; j < cols; ++j)
          if (dead[j]) out.col(j).setZero();
      return;
    }
    for (Index r = 0; r < rows; ++r)
      for (Index j = 0; j < cols; ++j) out(r, j) = zero_dead && dead[perm[j]] ? 0.0f : W(r0 + r, perm[j]);
  }

  // The rows of `in` (processing order) into rows [r0, r0 + in.rows()) of out, in W's column order.
  template <class T>
  void scatter_rows(const RowMatrix<T>& in, Index r0, RowMatrix<T>& out) const {
    const Index rows = in.rows(), cols = in.cols();
    if (!act_order) {
      out.middleRows(r0, rows) = in;
      return;
    }
    for (Index r = 0; r < rows; ++r)
      for (Index j = 0; j < cols; ++j) out(r0 + r, perm[j]) = in(r, j);
  }

  // The whole of M (rows x cols, W's column order) in processing order (dead columns kept).
  template <class T>
  RowMatrix<T> gather(const ConstRowMatrixRef<T>& M) const {
    RowMatrix<T> out(M.rows(), M.cols());
    parallel_chunks(M.rows(), 128, [&](Index r0, Index r1) {
      for (Index r = r0; r < r1; ++r)
        for (Index j = 0; j < M.cols(); ++j) out(r, j) = M(r, perm[j]);
    });
    return out;
  }

  // H in processing order in float32: out(a, b) = H(perm[a], perm[b]).
  template <class HT>
  RowMatrixXf gather_symmetric(const ConstRowMatrixRef<HT>& H) const;

  // H in REVERSED processing order in float64, dead columns' diagonal set to 1: out(a, b) =
  // H(perm[n-1-a], perm[n-1-b]), what the propagation factor factors (linalg.hpp). Only the lower triangle
  // (a >= b) is written -- the factorization reads nothing else -- so the upper one's pages are never faulted
  // in.
  template <class HT>
  void gather_reversed_lower(const ConstRowMatrixRef<HT>& H, ColMatrixXd& out) const;
};

}  // namespace quantease
