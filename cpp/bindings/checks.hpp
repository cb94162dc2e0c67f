// Input checks shared by the binding files: every problem with user input becomes a ValueError with a
// message that names the argument, the expected shape or range, and what was given.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "quantease/parallel.hpp"
#include "quantease/types.hpp"

namespace quantease::bindings {

namespace py = pybind11;

template <class T>
using CArray = py::array_t<T, py::array::c_style>;

inline std::string shape_str(const py::array& a) {
  std::ostringstream s;
  s << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s << (i ? ", " : "") << a.shape(i);
  if (a.ndim() == 1) s << ",";
  s << ")";
  return s.str();
}

// A read-only Eigen view of a C-contiguous 2-D array: no copy.
template <class T>
ConstRowMatrixRef<T> as_matrix(const CArray<T>& a) {
  return ConstRowMatrixRef<T>(Eigen::Map<const RowMatrix<T>>(a.data(), a.shape(0), a.shape(1)));
}

// Moves an Eigen matrix into a NumPy array without copying its buffer.
template <class T>
py::array_t<T> to_numpy(RowMatrix<T>&& m) {
  auto* owned = new RowMatrix<T>(std::move(m));
  py::capsule free_when_done(owned, [](void* p) { delete static_cast<RowMatrix<T>*>(p); });
  return py::array_t<T>({owned->rows(), owned->cols()}, owned->data(), free_when_done);
}

template <class T, int Rows>
py::array_t<T> to_numpy(Eigen::Matrix<T, Rows, 1>&& v) {
  auto* owned = new Eigen::Matrix<T, Rows, 1>(std::move(v));
  py::capsule free_when_done(owned, [](void* p) { delete static_cast<Eigen::Matrix<T, Rows, 1>*>(p); });
  return py::array_t<T>({owned->size()}, owned->data(), free_when_done);
}

// W: 2-D with at least one row and column, finite. Runs the scan without the GIL.
template <class T>
void check_weight(const CArray<T>& W, const char* name = "W") {
  if (W.ndim() != 2) {
    throw py::value_error(std::string(name) + " must be a 2-D array (rows x cols), got shape " + shape_str(W));
  }
  if (W.shape(0) == 0 || W.shape(1) == 0) {
    throw py::value_error(std::string(name) + " must have at least one row and one column, got shape " + shape_str(W));
  }
  Index bad = -1;
  {
    py::gil_scoped_release release;
    const T* p = W.data();
    const Index n = W.size();
    // Chunks without an early exit vectorise; a bad chunk is then searched entry by entry. Chunks run on
    // all threads; the first bad entry is the least index found.
    constexpr Index kChunk = Index{1} << 16;
    std::vector<Index> first_bad((n + kChunk - 1) / kChunk, -1);
    parallel_chunks(n, kChunk, [&](Index c0, Index c1) {
      bool all_finite = true;
      for (Index i = c0; i < c1; ++i) all_finite &= std::isfinite(static_cast<double>(p[i]));
      if (!all_finite)
        for (Index i = c0; i < c1; ++i)
          if (!std::isfinite(static_cast<double>(p[i]))) {
            first_bad[c0 / kChunk] = i;
            break;
          }
    });
    for (const Index i : first_bad)
      if (i >= 0) {
        bad = i;
        break;
      }
  }
  if (bad >= 0) {
    std::ostringstream msg;
    msg << name << " contains NaN or Inf (first at row " << bad / W.shape(1) << ", column " << bad % W.shape(1) << ")";
    throw py::value_error(msg.str());
  }
}

// What H is for: a solver (which needs calibration data in it) or a loss (any H).
enum class HessianUse { solve, evaluate };

// H: (cols, cols), finite, symmetric to within 1e-4 of its largest entry; for a solver also with a nonzero
// diagonal entry (an all-zero diagonal makes every column dead: the "result" would be W with every column
// zeroed and loss 0, which is what an empty accumulator's H gave).
template <class T>
void check_hessian(const CArray<T>& H, Index cols, HessianUse use, const char* name = "H") {
  if (H.ndim() != 2 || H.shape(0) != cols || H.shape(1) != cols) {
    std::ostringstream msg;
    msg << name << " must be (" << cols << ", " << cols << ") to match W's " << cols << " columns, got "
        << shape_str(H);
    throw py::value_error(msg.str());
  }
  check_weight(H, name);
  double max_abs = 0.0, max_asym = 0.0;
  {
    py::gil_scoped_release release;
    const auto h = as_matrix(H);
    constexpr Index kTile = 64;  // h(j, i) walks a column: tiles keep both sides in cache
    // One task per band of kTile rows; maxima do not depend on the order they are combined in.
    std::vector<double> band_abs((cols + kTile - 1) / kTile, 0.0), band_asym(band_abs.size(), 0.0);
    parallel_chunks(cols, kTile, [&](Index i0, Index i1) {
      double m_abs = 0.0, m_asym = 0.0;
      for (Index j0 = 0; j0 <= i0; j0 += kTile) {
        for (Index i = i0; i < i1; ++i) {
          for (Index j = j0; j < std::min({j0 + kTile, i + 1, cols}); ++j) {
            m_abs = std::max(m_abs, std::fabs(static_cast<double>(h(i, j))));
            m_asym = std::max(m_asym, std::fabs(static_cast<double>(h(i, j)) - static_cast<double>(h(j, i))));
          }
        }
      }
      band_abs[i0 / kTile] = m_abs;
      band_asym[i0 / kTile] = m_asym;
    });
    max_abs = *std::max_element(band_abs.begin(), band_abs.end());
    max_asym = *std::max_element(band_asym.begin(), band_asym.end());
  }
  if (max_asym > 1e-4 * max_abs) {
    std::ostringstream msg;
    msg << name << " must be symmetric: max |H - H^T| = " << max_asym << " exceeds 1e-4 * max |H| = " << 1e-4 * max_abs;
    throw py::value_error(msg.str());
  }
  if (use == HessianUse::solve) {
    const auto h = as_matrix(H);
    bool any_diagonal = false;
    for (Index i = 0; i < cols && !any_diagonal; ++i) any_diagonal = h(i, i) != T(0);
    if (!any_diagonal) {
      throw py::value_error(std::string(name) +
                            " is zero on its whole diagonal, so no calibration input reached this layer (an empty "
                            "HessianAccumulator, n_samples == 0, gives this): add() the layer's inputs before "
                            "hessian()");
    }
  }
}

// The bit widths every solver takes: the one definition (exported as _core.MIN_BITS / MAX_BITS, which the
// Python layer, the pipeline and the exporters check against).
constexpr int kMinBits = 2;
constexpr int kMaxBits = 8;

inline std::string bits_rule() {
  return "bits must be an integer in " + std::to_string(kMinBits) + ".." + std::to_string(kMaxBits);
}

inline void check_bits(int bits) {
  if (bits < kMinBits || bits > kMaxBits) throw py::value_error(bits_rule() + ", got " + std::to_string(bits));
}

inline void check_group_size(int group_size, Index cols) {
  if (group_size == -1) return;
  if (group_size <= 0 || cols % group_size != 0) {
    std::ostringstream msg;
    msg << "group_size must be -1 or a positive divisor of cols=" << cols << ", got " << group_size;
    throw py::value_error(msg.str());
  }
}

inline void check_positive(const char* name, long value) {
  if (value <= 0)
    throw py::value_error(std::string(name) + " must be a positive integer, got " + std::to_string(value));
}

inline void check_damp(double damp) {
  if (!std::isfinite(damp) || damp < 0.0) {
    std::ostringstream msg;
    msg << "damp must be a finite number >= 0, got " << damp;
    throw py::value_error(msg.str());
  }
}

// Calls f(Eigen view of H) with H's dtype (float32 or float64, C-contiguous; the Python layer converts).
template <class F>
auto with_hessian(const py::array& H, Index cols, F&& f, HessianUse use = HessianUse::solve) {
  if (py::isinstance<CArray<double>>(H)) {
    const auto h = H.cast<CArray<double>>();
    check_hessian(h, cols, use);
    return f(as_matrix(h));
  }
  if (py::isinstance<CArray<float>>(H)) {
    const auto h = H.cast<CArray<float>>();
    check_hessian(h, cols, use);
    return f(as_matrix(h));
  }
  throw py::value_error("H must be a C-contiguous float32 or float64 array");
}

}  // namespace quantease::bindings
