// The matrix products the solvers spend their time in, on OpenBLAS when the build found it.
//
// The build links the OpenBLAS of the `scipy-openblas32` wheel (a build and run dependency, so pip fetches
// it) when it is installed, and defines QUANTEASE_OPENBLAS: its single-threaded kernels run 1.3-1.6x faster
// than Eigen's on this project's shapes. Without it Eigen's own products are used. Either way each call is
// single-threaded (OpenBLAS is put back to one thread on every call, see gemm.cpp) -- the callers split rows
// over OpenMP in fixed chunks -- so results stay bit-identical for any thread count.
#pragma once

#include "quantease/types.hpp"

namespace quantease {

template <class T>
using RowBlock = Eigen::Ref<RowMatrix<T>, 0, Eigen::OuterStride<>>;
template <class T>
using ConstRowBlock = Eigen::Ref<const RowMatrix<T>, 0, Eigen::OuterStride<>>;
using ColBlockXd = Eigen::Ref<ColMatrixXd, 0, Eigen::OuterStride<>>;
using ConstColBlockXd = Eigen::Ref<const ColMatrixXd, 0, Eigen::OuterStride<>>;

// C += alpha A B (row-major blocks; A: m x k, B: k x n, C: m x n).
void gemm_add(RowBlock<float> C, float alpha, const ConstRowBlock<float>& A, const ConstRowBlock<float>& B);
void gemm_add(RowBlock<double> C, double alpha, const ConstRowBlock<double>& A, const ConstRowBlock<double>& B);

// C = A^T B (row-major blocks; A: k x m, B: k x n, C: m x n), overwritten.
void gemm_atb(RowBlock<float> C, const ConstRowBlock<float>& A, const ConstRowBlock<float>& B);

// C -= A B^T (column-major blocks; A: m x k, B: n x k, C: m x n).
void gemm_sub_abt(ColBlockXd C, const ConstColBlockXd& A, const ConstColBlockXd& B);

// B = B L^-T (column-major; L: n x n, only its lower triangle with the diagonal is read; B: m x n).
void trsm_right_lower_transpose(ColBlockXd B, const ConstColBlockXd& L);

// In-place lower Cholesky factor of the (small) diagonal block A (its lower triangle is read and written).
// Returns -1, or the 0-based index k whose leading (k+1) x (k+1) minor is not positive definite.
Index cholesky_block_lower(ColBlockXd A);

// B = B triu(U) (row-major; U: n x n, only its upper triangle with the diagonal is read; B: m x n).
void trmm_right_upper(RowBlock<double> B, const ConstRowBlock<double>& U);
void trmm_right_upper(RowBlock<float> B, const ConstRowBlock<float>& U);

// "OpenBLAS <version>" or "Eigen <version>": what the products above run on.
const char* gemm_backend();

}  // namespace quantease
