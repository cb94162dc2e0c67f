// Rebuilding weights from codes, and the group index of every column (see result.hpp).
#include "quantease/result.hpp"

#include "quantease/grid.hpp"
#include "quantease/parallel.hpp"

namespace quantease {

void dequantize_affine(QuantOutput& out) {
  const Index rows = out.codes.rows(), cols = out.codes.cols();
  out.weight.resize(rows, cols);
  parallel_chunks(rows, 16, [&](Index r0, Index r1) {
    for (Index r = r0; r < r1; ++r) {
      for (Index c = 0; c < cols; ++c) {
        const Index g = out.g_idx[c];
        out.weight(r, c) = dequantize(out.codes(r, c), AffineGrid{out.scales(r, g), out.zeros(r, g)});
      }
    }
  });
}

VectorXi32 group_index(Index cols, Index group_size, const VectorXi64& perm, bool by_processing_order) {
  VectorXi32 g = VectorXi32::Zero(cols);
  if (group_size <= 0) return g;
  if (by_processing_order && perm.size() == cols) {
    for (Index j = 0; j < cols; ++j) g[perm[j]] = static_cast<std::int32_t>(j / group_size);
  } else {
    for (Index c = 0; c < cols; ++c) g[c] = static_cast<std::int32_t>(c / group_size);
  }
  return g;
}

}  // namespace quantease
