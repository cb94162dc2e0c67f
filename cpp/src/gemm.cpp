// Matrix products on OpenBLAS or Eigen (see gemm.hpp).
#include "quantease/gemm.hpp"

#include <cmath>
#include <mutex>
#include <string>

#ifdef QUANTEASE_OPENBLAS
#include <cblas.h>
#include <lapacke.h>
#endif

namespace quantease {

#ifdef QUANTEASE_OPENBLAS
namespace {
// One OpenBLAS thread per call: the parallelism is ours (fixed row chunks). OpenBLAS's thread count is a
// process-wide setting of the wheel's private copy: read from OPENBLAS_NUM_THREADS or OMP_NUM_THREADS when the
// library loads, and changed by anything that sets every BLAS pool of the process (threadpoolctl restores its
// own earlier value when its context ends). Threaded OpenBLAS sums differently -- a 128 x 128 dpotrf differs
// from the single-threaded one in a quarter of its entries, an sgemm with k = 1000 in most -- so every call
// checks the setting (one load) instead of setting it once, and results stay the same for any thread count.
void single_threaded() {
  if (scipy_openblas_get_num_threads() == 1) return;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  if (scipy_openblas_get_num_threads() != 1) scipy_openblas_set_num_threads(1);
}

// The single- and double-precision routines under one name.
template <class T>
struct Blas;
template <>
struct Blas<float> {
  static constexpr auto gemm = scipy_cblas_sgemm;
  static constexpr auto trmm = scipy_cblas_strmm;
};
template <>
struct Blas<double> {
  static constexpr auto gemm = scipy_cblas_dgemm;
  static constexpr auto trmm = scipy_cblas_dtrmm;
};

// C += alpha A B, row-major.
template <class T>
void gemm_add_blas(RowBlock<T> C, T alpha, const ConstRowBlock<T>& A, const ConstRowBlock<T>& B) {
  if (C.rows() == 0 || C.cols() == 0 || A.cols() == 0) return;
  single_threaded();
  Blas<T>::gemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<blasint>(C.rows()),
                static_cast<blasint>(C.cols()), static_cast<blasint>(A.cols()), alpha, A.data(),
                static_cast<blasint>(A.outerStride()), B.data(), static_cast<blasint>(B.outerStride()), T(1), C.data(),
                static_cast<blasint>(C.outerStride()));
}

// B = B triu(U), row-major.
template <class T>
void trmm_right_upper_blas(RowBlock<T> B, const ConstRowBlock<T>& U) {
  if (B.rows() == 0 || B.cols() == 0) return;
  single_threaded();
  Blas<T>::trmm(CblasRowMajor, CblasRight, CblasUpper, CblasNoTrans, CblasNonUnit, static_cast<blasint>(B.rows()),
                static_cast<blasint>(B.cols()), T(1), U.data(), static_cast<blasint>(U.outerStride()), B.data(),
                static_cast<blasint>(B.outerStride()));
}
}  // namespace

void gemm_add(RowBlock<float> C, float alpha, const ConstRowBlock<float>& A, const ConstRowBlock<float>& B) {
  gemm_add_blas(C, alpha, A, B);
}

void gemm_add(RowBlock<double> C, double alpha, const ConstRowBlock<double>& A, const ConstRowBlock<double>& B) {
  gemm_add_blas(C, alpha, A, B);
}

void gemm_atb(RowBlock<float> C, const ConstRowBlock<float>& A, const ConstRowBlock<float>& B) {
  if (C.rows() == 0 || C.cols() == 0) return;
  if (A.rows() == 0) {
    C.setZero();
    return;
  }
  single_threaded();
  scipy_cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<blasint>(C.rows()),
                    static_cast<blasint>(C.cols()), static_cast<blasint>(A.rows()), 1.0f, A.data(),
                    static_cast<blasint>(A.outerStride()), B.data(), static_cast<blasint>(B.outerStride()), 0.0f,
                    C.data(), static_cast<blasint>(C.outerStride()));
}

void gemm_sub_abt(ColBlockXd C, const ConstColBlockXd& A, const ConstColBlockXd& B) {
  if (C.rows() == 0 || C.cols() == 0 || A.cols() == 0) return;
  single_threaded();
  scipy_cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(C.rows()),
                    static_cast<blasint>(C.cols()), static_cast<blasint>(A.cols()), -1.0, A.data(),
                    static_cast<blasint>(A.outerStride()), B.data(), static_cast<blasint>(B.outerStride()), 1.0,
                    C.data(), static_cast<blasint>(C.outerStride()));
}

void trsm_right_lower_transpose(ColBlockXd B, const ConstColBlockXd& L) {
  if (B.rows() == 0 || B.cols() == 0) return;
  single_threaded();
  scipy_cblas_dtrsm(CblasColMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, static_cast<blasint>(B.rows()),
                    static_cast<blasint>(B.cols()), 1.0, L.data(), static_cast<blasint>(L.outerStride()), B.data(),
                    static_cast<blasint>(B.outerStride()));
}

void trmm_right_upper(RowBlock<float> B, const ConstRowBlock<float>& U) { trmm_right_upper_blas(B, U); }

void trmm_right_upper(RowBlock<double> B, const ConstRowBlock<double>& U) { trmm_right_upper_blas(B, U); }

Index cholesky_block_lower(ColBlockXd A) {
  if (A.rows() == 0) return -1;
  single_threaded();
  const lapack_int info = scipy_LAPACKE_dpotrf_work(LAPACK_COL_MAJOR, 'L', static_cast<lapack_int>(A.rows()), A.data(),
                                                    static_cast<lapack_int>(A.outerStride()));
  return info > 0 ? static_cast<Index>(info) - 1 : -1;  // info: the order of the failing minor
}

const char* gemm_backend() {
  static const std::string name = scipy_openblas_get_config();  // "OpenBLAS <version> <build options>"
  return name.c_str();
}

#else

namespace {
template <class T>
void gemm_add_eigen(RowBlock<T> C, T alpha, const ConstRowBlock<T>& A, const ConstRowBlock<T>& B) {
  C.noalias() += alpha * A * B;
}

template <class T>
void trmm_right_upper_eigen(RowBlock<T> B, const ConstRowBlock<T>& U) {
  B = B * U.template triangularView<Eigen::Upper>();
}
}  // namespace

void gemm_add(RowBlock<float> C, float alpha, const ConstRowBlock<float>& A, const ConstRowBlock<float>& B) {
  gemm_add_eigen(C, alpha, A, B);
}

void gemm_add(RowBlock<double> C, double alpha, const ConstRowBlock<double>& A, const ConstRowBlock<double>& B) {
  gemm_add_eigen(C, alpha, A, B);
}

void gemm_atb(RowBlock<float> C, const ConstRowBlock<float>& A, const ConstRowBlock<float>& B) {
  C.noalias() = A.transpose() * B;
}

void gemm_sub_abt(ColBlockXd C, const ConstColBlockXd& A, const ConstColBlockXd& B) {
  C.noalias() -= A * B.transpose();
}

void trsm_right_lower_transpose(ColBlockXd B, const ConstColBlockXd& L) {
  L.triangularView<Eigen::Lower>().transpose().solveInPlace<Eigen::OnTheRight>(B);
}

Index cholesky_block_lower(ColBlockXd A) {
  const Index n = A.rows();
  for (Index j = 0; j < n; ++j) {
    double d = A(j, j);
    for (Index p = 0; p < j; ++p) d -= A(j, p) * A(j, p);
    if (!(d > 0.0) || !std::isfinite(d)) return j;
    d = std::sqrt(d);
    A(j, j) = d;
    for (Index i = j + 1; i < n; ++i) {
      double s = A(i, j);
      for (Index p = 0; p < j; ++p) s -= A(i, p) * A(j, p);
      A(i, j) = s / d;
    }
  }
  return -1;
}

void trmm_right_upper(RowBlock<float> B, const ConstRowBlock<float>& U) { trmm_right_upper_eigen(B, U); }

void trmm_right_upper(RowBlock<double> B, const ConstRowBlock<double>& U) { trmm_right_upper_eigen(B, U); }

const char* gemm_backend() {
  static const std::string name = "Eigen " + std::to_string(EIGEN_WORLD_VERSION) + "." +
                                  std::to_string(EIGEN_MAJOR_VERSION) + "." + std::to_string(EIGEN_MINOR_VERSION);
  return name.c_str();
}

#endif

}  // namespace quantease
