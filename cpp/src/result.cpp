// A solver's grid output from its codes and grid set (see result.hpp).
#include "quantease/result.hpp"

namespace quantease {

void write_grids(const AffineGrids& grids, QuantOutput& out) {
  out.g_idx = grids.groups().column_groups();
  out.scales = grids.scales();
  out.zeros = grids.zeros();
  out.weight = dequantize(grids, out.codes, out.g_idx);
}

void write_grids(const CodebookGrids& grids, QuantOutput& out) {
  out.g_idx = grids.groups().column_groups();
  out.weight = dequantize(grids, out.codes, out.g_idx);
}

void dequantize_affine(QuantOutput& out) {
  const Index rows = out.codes.rows(), cols = out.codes.cols(), groups = out.scales.cols();
  // (bits only matter to quantize; the values need scale and zero alone)
  AffineGrids grids(rows, GroupMap::in_processing_order(cols, cols / groups, VectorXi64()), 8);
  grids.assign(out.scales, out.zeros);
  out.weight = dequantize(grids, out.codes, out.g_idx);
}

VectorXi32 group_index(Index cols, Index group_size, const VectorXi64& perm, bool by_processing_order) {
  const GroupMap groups = by_processing_order ? GroupMap::in_processing_order(cols, group_size, perm)
                                              : GroupMap::of_original_columns(cols, group_size, VectorXi64());
  return groups.column_groups();
}

}  // namespace quantease
