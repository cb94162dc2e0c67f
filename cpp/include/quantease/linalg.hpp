// Dense symmetric linear algebra for the Hessian-based solvers: a blocked, OpenMP-parallel Cholesky in
// float64 that reports the failing minor, and GPTQ's damped propagation factor with its retry ladder.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "quantease/types.hpp"

namespace quantease {

// In-place lower Cholesky factor of the symmetric matrix A (only the lower triangle is read; the strict
// upper triangle is left unspecified). Returns -1 on success, else the 0-based index k such that the
// leading (k+1) x (k+1) minor is not positive definite.
Index cholesky_lower_inplace(ColMatrixXd& A);

// GPTQ's error propagation, written with the Cholesky factor of H instead of its inverse. With the damped
// H (processing order) = C C^T, C upper triangular (the Cholesky factor taken in reverse column order),
// the authors' loop (err_j = (w_j - q_j) / U_jj, w_c -= err_j U_jc, U = chol(H^-1) upper = C^-1) gives
// W - Q = E U, so E = (W - Q) C and the value column j is quantized from is
//   w_j + sum_{k<j} (w_k - q_k) C_kj / C_jj        (w: the ORIGINAL weights, q: the codes' values)
// -- the same numbers without the triangular inverse, which costs as much as the Cholesky itself.
struct PropagationFactor {
  RowMatrixXf P;      // P(k, j) = C_kj / C_jj for k < j; P(j, j) = U_jj = 1 / C_jj; unset below the diagonal
  double damp = 0.0;  // relative damping that succeeded
  int attempts = 0;   // factorizations tried
};

// The damping ladder tried by `propagation_factor` when `retry` is set: damp, then x10 each step up
// to 100 (starting at 1e-4 when damp is 0).
std::vector<double> damping_ladder(double damp, bool retry);

// P of (H + d mean(diag H) I), for the first d of the ladder that factors. `fill(L)` writes H_reversed =
// J H J into L (J the order-reversing permutation; cols x cols, float64; the lower triangle with the diagonal
// is all that is read), because C = J chol(J H J) J:
// one Cholesky (n^3 / 3 flops), in place in L, refilled only when a damping fails. L ends as the factor.
// Throws NumericalError naming the failing minor when no damping works.
PropagationFactor propagation_factor(ColMatrixXd& L, const std::function<void(ColMatrixXd&)>& fill, double damp,
                                     bool retry);

}  // namespace quantease
