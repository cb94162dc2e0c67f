// The permuted QuantEase problem (see problem.hpp).
#include "problem.hpp"

#include <numeric>
#include <vector>

#include "quantease/gemm.hpp"
#include "quantease/parallel.hpp"

namespace quantease::qe {

template <class HT>
Problem::Problem(const ConstRowMatrixRef<float>& W, const ConstRowMatrixRef<HT>& H, bool act_order)
    : order_(ProcessingOrder::of_hessian(H, act_order)) {
  sigma_ = order_.gather_symmetric(H);
  weights_ = order_.gather(W);
  const Index cols = W.cols();
  diag_.resize(cols);
  for (Index j = 0; j < cols; ++j) diag_[j] = order_.dead[order_.perm[j]] ? 1.0f : sigma_(j, j);
}

double Problem::weight_energy() const {
  // w Σ wᵀ = Σ_j Σ_jj w_j² + 2 w (Σ strictly upper) wᵀ. Per row panel and block of columns: the diagonal
  // block's strictly upper triangle (a small triangular product) and one GEMM with the columns right of the
  // block (on the BLAS, half a dense product in all), each dotted with W; float64 sums in a fixed order.
  constexpr Index kBlock = 256;
  const Index rows = this->rows(), cols = this->cols();
  std::vector<double> part(panels(), 0.0);
  const Eigen::VectorXd sigma_diag = sigma_.diagonal().cast<double>();
  parallel_chunks(rows, kRowPanel, [&](Index r0, Index r1) {
    const Index pr = r1 - r0;
    const auto Wr = weights_.middleRows(r0, pr);
    RowMatrixXf C(pr, cols);
    double upper = 0.0;
    for (Index b0 = 0; b0 < cols; b0 += kBlock) {
      const Index b1 = std::min(b0 + kBlock, cols), nb = b1 - b0, right = cols - b1;
      // C[:, 0:cols-b0] = W[:, block] Σ[block, b0:] with the block's lower triangle (and diagonal) left out
      C.leftCols(nb).noalias() =
          Wr.middleCols(b0, nb) * sigma_.block(b0, b0, nb, nb).triangularView<Eigen::StrictlyUpper>();
      if (right > 0) {
        C.middleCols(nb, right).setZero();
        gemm_add(C.middleCols(nb, right), 1.0f, Wr.middleCols(b0, nb), sigma_.block(b0, b1, nb, right));
      }
      upper += (C.leftCols(cols - b0).cast<double>().array() * Wr.rightCols(cols - b0).cast<double>().array()).sum();
    }
    const Eigen::ArrayXXd Wd = Wr.cast<double>().array();
    part[r0 / kRowPanel] = 2.0 * upper + (Wd.square().rowwise() * sigma_diag.transpose().array()).sum();
  });
  return std::accumulate(part.begin(), part.end(), 0.0);
}

template Problem::Problem(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<float>&, bool);
template Problem::Problem(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<double>&, bool);

}  // namespace quantease::qe
