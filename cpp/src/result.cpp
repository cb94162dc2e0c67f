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

}  // namespace quantease
