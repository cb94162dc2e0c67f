// GPTQ: grids, dead columns, act-order, static/dynamic groups around the shared column loop.
#include "quantease/gptq.hpp"

#include "quantease/gptq_loop.hpp"
#include "quantease/hessian.hpp"
#include "quantease/parallel.hpp"

namespace quantease {
namespace {

constexpr Index kRowPanel = 64;  // rows per task: fixed, so results do not depend on the thread count

// The affine quantizer of one row panel: a row grid, static group grids, or grids refitted at every
// dynamic group start (recorded into the output scales/zeros at the group's processing position).
class AffineQuantizer {
 public:
  AffineQuantizer(const GridOptions& grid_opt, Index row0, const std::vector<AffineGrid>& row_grids,
                  const std::vector<AffineGrid>& static_grids, Index groups, const VectorXi64& perm,
                  Index group_size, QuantOutput& out)
      : opt_(grid_opt), maxq_(max_code(grid_opt.bits)), row0_(row0), row_grids_(row_grids),
        static_grids_(static_grids), groups_(groups), perm_(perm), gs_(group_size), out_(out) {}

  void fit_group(Index r, Index j, const float* values, Index n) {
    current_[r] = fit_grid(values, n, opt_);
    out_.scales(row0_ + r, j / gs_) = current_[r].scale;
    out_.zeros(row0_ + r, j / gs_) = current_[r].zero;
  }

  std::uint8_t quantize(Index r, Index j, float w, float& q) {
    const AffineGrid& g = grid_for(r, j);
    const std::uint8_t code = quantize_code(w, g, maxq_);
    q = dequantize(code, g);
    return code;
  }

  void resize(Index rows) { current_.resize(rows); }

 private:
  const AffineGrid& grid_for(Index r, Index j) const {
    if (!static_grids_.empty()) return static_grids_[(row0_ + r) * groups_ + perm_[j] / gs_];
    if (gs_ > 0) return current_[r];
    return row_grids_[row0_ + r];
  }

  GridOptions opt_;
  float maxq_;
  Index row0_;
  const std::vector<AffineGrid>& row_grids_;
  const std::vector<AffineGrid>& static_grids_;
  Index groups_;
  const VectorXi64& perm_;
  Index gs_;
  QuantOutput& out_;
  std::vector<AffineGrid> current_;
};

}  // namespace

template <class HT>
QuantOutput gptq(const ConstRowMatrixRef<float>& W, const ConstRowMatrixRef<HT>& H, const GptqOptions& opt) {
  const Index rows = W.rows(), cols = W.cols();
  const Index gs = opt.group_size > 0 ? opt.group_size : -1;
  const Index groups = gs > 0 ? cols / gs : 1;
  const bool dynamic_groups = gs > 0 && !opt.static_groups;
  GridOptions grid_opt;
  grid_opt.bits = opt.bits;
  grid_opt.sym = opt.sym;
  grid_opt.mse = opt.mse;
  grid_opt.reference = opt.reference;
  grid_opt.fp16_scales = opt.fp16_scales;

  QuantOutput out;
  PhaseTimer timer(out);
  const PreparedHessian prep = prepare_hessian(H, opt.act_order, opt.damp, !opt.reference);
  timer.lap("factor");

  out.damp = prep.factor.damp;
  out.damp_attempts = prep.factor.attempts;
  out.codes.resize(rows, cols);
  out.scales.resize(rows, groups);
  out.zeros.resize(rows, groups);

  // Per-row grids come from the original W, before dead columns are zeroed (as the reference does).
  std::vector<AffineGrid> row_grids;
  if (gs <= 0) {
    row_grids.resize(rows);
    fit_row_grids(W, grid_opt, row_grids.data());
    for (Index r = 0; r < rows; ++r) {
      out.scales(r, 0) = row_grids[r].scale;
      out.zeros(r, 0) = row_grids[r].zero;
    }
  }
  // Static group grids: from the dead-zeroed, unpermuted W, fixed before the loop.
  std::vector<AffineGrid> static_grids;
  if (gs > 0 && opt.static_groups) {
    static_grids.resize(rows * groups);
    parallel_chunks(rows, 16, [&](Index r0, Index r1) {
      std::vector<float> values(gs);
      for (Index r = r0; r < r1; ++r) {
        for (Index g = 0; g < groups; ++g) {
          for (Index c = 0; c < gs; ++c) values[c] = prep.dead[g * gs + c] ? 0.0f : W(r, g * gs + c);
          static_grids[r * groups + g] = fit_grid(values.data(), gs, grid_opt);
          out.scales(r, g) = static_grids[r * groups + g].scale;
          out.zeros(r, g) = static_grids[r * groups + g].zero;
        }
      }
    });
  }

  timer.lap("grids");
  ColumnLoopOptions loop_opt;
  loop_opt.block_size = opt.block_size;
  loop_opt.group_size = dynamic_groups ? gs : -1;
  loop_opt.stale_group_stats = opt.reference;
  RowMatrixXf group_inverse;
  if (dynamic_groups && !opt.reference) {
    group_inverse = group_substitution_inverses(prep.factor.P, gs);
    loop_opt.group_inverse = &group_inverse;
  }
  const VectorXi64& perm = prep.perm;
  parallel_chunks(rows, kRowPanel, [&](Index r0, Index r1) {
    const Index pr = r1 - r0;
    RowMatrixXf Wp(pr, cols);
    for (Index r = 0; r < pr; ++r)
      for (Index j = 0; j < cols; ++j) Wp(r, j) = prep.dead[perm[j]] ? 0.0f : W(r0 + r, perm[j]);
    AffineQuantizer quant(grid_opt, r0, row_grids, static_grids, groups, perm, gs, out);
    quant.resize(pr);
    RowMatrixU8 codes(pr, cols);
    gptq_column_loop(Wp, prep.factor.P, loop_opt, quant, codes);
    for (Index r = 0; r < pr; ++r)
      for (Index j = 0; j < cols; ++j) out.codes(r0 + r, perm[j]) = codes(r, j);
  });

  timer.lap("column_loop");
  if (opt.act_order) out.perm = perm;
  out.g_idx = group_index(cols, gs, perm, dynamic_groups && opt.act_order);
  dequantize_affine(out);
  timer.lap("dequantize");
  return out;
}

template QuantOutput gptq<float>(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<float>&, const GptqOptions&);
template QuantOutput gptq<double>(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<double>&, const GptqOptions&);

}  // namespace quantease
