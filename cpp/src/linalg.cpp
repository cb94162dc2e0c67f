// Blocked Cholesky and GPTQ's damped propagation factor (see linalg.hpp).
#include "quantease/linalg.hpp"

#include <cmath>
#include <functional>
#include <sstream>

#include "quantease/errors.hpp"
#include "quantease/gemm.hpp"
#include "quantease/parallel.hpp"

namespace quantease {
namespace {

constexpr Index kPanel = 128;  // Cholesky panel and parallel block width

}  // namespace

Index cholesky_lower_inplace(ColMatrixXd& A) {
  const Index n = A.rows();
  for (Index k = 0; k < n; k += kPanel) {
    const Index kb = std::min(kPanel, n - k);
    const Index failed = cholesky_block_lower(A.block(k, k, kb, kb));
    if (failed >= 0) return k + failed;
    const Index rest = n - k - kb;
    if (rest == 0) break;
    // Panel below the diagonal block: A21 <- A21 L11^{-T}, rows independent.
    parallel_chunks(rest, kPanel, [&](Index r0, Index r1) {
      trsm_right_lower_transpose(A.block(k + kb + r0, k, r1 - r0, kb), A.block(k, k, kb, kb));
    });
    // Trailing update of the lower triangle: A22 -= A21 A21^T, one column block per task.
    const auto A21 = A.block(k + kb, k, rest, kb);
    parallel_chunks(rest, kPanel, [&](Index c0, Index c1) {
      gemm_sub_abt(A.block(k + kb + c0, k + kb + c0, rest - c0, c1 - c0), A21.bottomRows(rest - c0),
                   A21.middleRows(c0, c1 - c0));
    });
  }
  return -1;
}

std::vector<double> damping_ladder(double damp, bool retry) {
  std::vector<double> ladder{damp};
  if (!retry) return ladder;
  double d = damp > 0.0 ? damp * 10.0 : 1e-4;
  for (; d <= 100.0 * (1.0 + 1e-12); d *= 10.0) ladder.push_back(d);
  return ladder;
}

PropagationFactor propagation_factor(ColMatrixXd& L, const std::function<void(ColMatrixXd&)>& fill, double damp,
                                     bool retry) {
  fill(L);
  const Index n = L.rows();
  const double mean_diag = L.diagonal().mean();
  if (!(mean_diag > 0.0)) {
    std::ostringstream msg;
    msg << "the Hessian's mean diagonal is " << mean_diag
        << " (must be > 0): H must be positive semi-definite, e.g. (2/n) X X^T of the layer inputs";
    throw NumericalError(msg.str());
  }
  Index failed = -1;
  PropagationFactor out;
  for (const double d : damping_ladder(damp, retry)) {
    ++out.attempts;
    if (out.attempts > 1) fill(L);  // the failed attempt overwrote the lower triangle
    L.diagonal().array() += d * mean_diag;
    failed = cholesky_lower_inplace(L);
    if (failed < 0) {
      out.damp = d;
      break;
    }
  }
  if (failed >= 0) {
    const auto ladder = damping_ladder(damp, retry);
    std::ostringstream msg;
    msg << "Cholesky factorization of the damped Hessian failed: the leading minor of order " << failed + 1
        << " of the reversed H (its trailing " << failed + 1 << " x " << failed + 1
        << " block in processing order) is not positive definite, with relative damping " << ladder.back();
    if (retry) msg << " after trying " << ladder.size() << " dampings from " << ladder.front();
    msg << ". Check that H is (2/n) X X^T of finite inputs, collect more calibration samples, or raise damp.";
    throw NumericalError(msg.str());
  }
  // P(k, j) = L(n-1-k, n-1-j) / L(n-1-j, n-1-j): a block of P's rows reads contiguous runs of L's columns.
  // Each task writes the upper part of its rows: one pass over P, first touched by its writer. Nothing reads
  // below the diagonal, so those pages are never faulted in.
  out.P.resize(n, n);
  parallel_chunks(n, kPanel, [&](Index k0, Index k1) {
    for (Index j = k0; j < n; ++j) {
      const Index c = n - 1 - j;
      const double* lcol = L.col(c).data();
      const double inv = 1.0 / lcol[c];
      for (Index k = k0; k < std::min(k1, j); ++k) out.P(k, j) = static_cast<float>(lcol[n - 1 - k] * inv);
      if (j < k1) out.P(j, j) = static_cast<float>(inv);
    }
  });
  return out;
}

}  // namespace quantease
