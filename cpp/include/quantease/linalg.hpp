// Dense symmetric linear algebra for the Hessian-based solvers: a blocked, OpenMP-parallel Cholesky in
// float64 that reports the failing minor, and the damped inverse factor with its retry ladder.
#pragma once

#include <string>
#include <vector>

#include "quantease/types.hpp"

namespace quantease {

// In-place lower Cholesky factor of the symmetric matrix A (only the lower triangle is read; the strict
// upper triangle is left unspecified). Returns -1 on success, else the 0-based index k such that the
// leading (k+1) x (k+1) minor is not positive definite.
Index cholesky_lower_inplace(ColMatrixXd& A);

struct InverseFactor {
  RowMatrixXf U;       // upper triangular, H_damped^{-1} = U^T U (float32 for the column loops)
  double damp = 0.0;   // relative damping that succeeded
  int attempts = 0;    // factorizations tried
};

// The damping ladder tried by `inverse_upper_factor` when `retry` is set: damp, then x10 each step up
// to 100 (starting at 1e-4 when damp is 0).
std::vector<double> damping_ladder(double damp, bool retry);

// U = upper Cholesky factor of (H + d mean(diag H) I)^{-1}, for the first d of the ladder that factors.
// Takes H_reversed = J H J (J the order-reversing permutation; cols x cols, symmetric, float64), because
// U = J inv(chol(J H J)) J: one Cholesky and one triangular inverse (n^3 / 3 flops each).
// Throws NumericalError naming the failing minor when no damping works.
InverseFactor inverse_upper_factor(const ColMatrixXd& H_reversed, double damp, bool retry);

}  // namespace quantease
