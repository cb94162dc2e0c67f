// The processing order of the Hessian-based solvers (see processing_order.hpp).
#include "quantease/processing_order.hpp"

#include <algorithm>
#include <numeric>

namespace quantease {
namespace {
constexpr Index kGatherChunk = 128;  // rows (or columns of H) per task
}  // namespace

template <class HT>
ProcessingOrder ProcessingOrder::of_hessian(const ConstRowMatrixRef<HT>& H, bool act_order) {
  const Index n = H.rows();
  ProcessingOrder order;
  order.act_order = act_order;
  order.dead.assign(n, 0);
  for (Index i = 0; i < n; ++i) order.dead[i] = H(i, i) == HT(0);
  order.perm.resize(n);
  std::iota(order.perm.data(), order.perm.data() + n, std::int64_t{0});
  if (act_order) {
    // dead columns count as 1 (the value they get in the damped H)
    std::vector<double> key(n);
    for (Index i = 0; i < n; ++i) key[i] = order.dead[i] ? 1.0 : static_cast<double>(H(i, i));
    std::stable_sort(order.perm.data(), order.perm.data() + n,
                     [&](std::int64_t a, std::int64_t b) { return key[a] > key[b]; });
  }
  return order;
}

template <class HT>
RowMatrixXf ProcessingOrder::gather_symmetric(const ConstRowMatrixRef<HT>& H) const {
  const Index n = H.rows();
  RowMatrixXf out(n, n);
  parallel_chunks(n, kGatherChunk, [&](Index a0, Index a1) {
    for (Index a = a0; a < a1; ++a) {
      const HT* h = H.row(perm[a]).data();
      float* o = out.row(a).data();
      for (Index b = 0; b < n; ++b) o[b] = static_cast<float>(h[perm[b]]);
    }
  });
  return out;
}

template <class HT>
void ProcessingOrder::gather_reversed_lower(const ConstRowMatrixRef<HT>& H, ColMatrixXd& out) const {
  const Index n = H.rows();
  out.resize(n, n);
  // (column b of the reversed H is a row of H, H being symmetric)
  parallel_chunks(n, kGatherChunk, [&](Index c0, Index c1) {
    for (Index b = c0; b < c1; ++b) {
      const Index pb = perm[n - 1 - b];
      const HT* hrow = H.row(pb).data();
      double* col = out.col(b).data();
      col[b] = dead[pb] ? 1.0 : static_cast<double>(hrow[pb]);
      for (Index a = b + 1; a < n; ++a) col[a] = static_cast<double>(hrow[perm[n - 1 - a]]);
    }
  });
}

template ProcessingOrder ProcessingOrder::of_hessian<float>(const ConstRowMatrixRef<float>&, bool);
template ProcessingOrder ProcessingOrder::of_hessian<double>(const ConstRowMatrixRef<double>&, bool);
template RowMatrixXf ProcessingOrder::gather_symmetric<float>(const ConstRowMatrixRef<float>&) const;
template RowMatrixXf ProcessingOrder::gather_symmetric<double>(const ConstRowMatrixRef<double>&) const;
template void ProcessingOrder::gather_reversed_lower<float>(const ConstRowMatrixRef<float>&, ColMatrixXd&) const;
template void ProcessingOrder::gather_reversed_lower<double>(const ConstRowMatrixRef<double>&, ColMatrixXd&) const;

}  // namespace quantease
