// The numeric types of the core, and when copies happen.
//
// Weights are row-major (rows = output features, cols = input features), as NumPy hands them over:
// a C-contiguous float32 array maps onto `ConstRowMatrixRef<float>` with no copy. Every solver keeps its own
// working copy of W (it updates it); inputs are never written.
#pragma once

#include <Eigen/Dense>
#include <cstdint>
#include <vector>

namespace quantease {

using Index = Eigen::Index;

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowMatrixXf = RowMatrix<float>;
using RowMatrixXd = RowMatrix<double>;
using RowMatrixU8 = RowMatrix<std::uint8_t>;
using ColMatrixXd = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
using VectorXi32 = Eigen::Matrix<std::int32_t, Eigen::Dynamic, 1>;
using VectorXi64 = Eigen::Matrix<std::int64_t, Eigen::Dynamic, 1>;

template <class T>
using ConstRowMatrixRef = Eigen::Ref<const RowMatrix<T>>;

}  // namespace quantease
