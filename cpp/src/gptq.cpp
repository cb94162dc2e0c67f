// GPTQ: grids, dead columns, act-order, static/dynamic groups around the shared column loop.
#include "quantease/gptq.hpp"

#include "quantease/gptq_loop.hpp"
#include "quantease/hessian.hpp"
#include "quantease/parallel.hpp"

namespace quantease {
namespace {


// The affine quantizer of one row panel: a row grid, static group grids, or grids refitted at every
// dynamic group start (recorded into the output scales/zeros at the group's processing position).
class AffineQuantizer {
 public:
  AffineQuantizer(const GridOptions& grid_opt, Index row0, Index rows, const std::vector<AffineGrid>& row_grids,
                  const std::vector<AffineGrid>& static_grids, Index groups, const VectorXi64& perm,
                  Index group_size, QuantOutput& out)
      : opt_(grid_opt), maxq_(max_code(grid_opt.bits)), row0_(row0), rows_(rows),
        static_grids_(static_grids), groups_(groups), perm_(perm), gs_(group_size), out_(out) {
    // The current grid of every panel row (lanes past the panel's end: a harmless unit grid).
    const Index padded = (rows + kRowBatch - 1) / kRowBatch * kRowBatch;
    scale_.assign(padded, 1.0f);
    zero_.assign(padded, 0.0f);
    if (!row_grids.empty()) {
      for (Index r = 0; r < rows; ++r) set(r, row_grids[row0 + r]);
    }
  }

  void fit_group(Index r, Index j, const float* values, Index n) {
    const AffineGrid g = fit_grid(values, n, opt_);
    set(r, g);
    out_.scales(row0_ + r, j / gs_) = g.scale;
    out_.zeros(row0_ + r, j / gs_) = g.zero;
  }

  std::uint8_t quantize(Index r, Index j, float w, float& q) {
    const AffineGrid g = static_grids_.empty() ? AffineGrid{scale_[r], zero_[r]} : static_grid(r, j);
    const std::uint8_t code = quantize_code(w, g, maxq_);
    q = dequantize(code, g);
    return code;
  }

  // quantize() for kRowBatch rows from r: the same arithmetic, written so that it vectorizes.
  void quantize_batch(Index r, Index j, const float* v, float* q, std::uint8_t* codes) {
    alignas(32) float s[kRowBatch], z[kRowBatch], c[kRowBatch];
    for (Index l = 0; l < kRowBatch; ++l) {
      const bool stat = !static_grids_.empty() && r + l < rows_;
      s[l] = stat ? static_grid(r + l, j).scale : scale_[r + l];
      z[l] = stat ? static_grid(r + l, j).zero : zero_[r + l];
    }
    for (Index l = 0; l < kRowBatch; ++l) {
      c[l] = std::clamp(std::nearbyint(v[l] / s[l]) + z[l], 0.0f, maxq_);
      q[l] = s[l] * (c[l] - z[l]);
    }
    for (Index l = 0; l < kRowBatch; ++l) codes[l] = static_cast<std::uint8_t>(c[l]);
  }

 private:
  void set(Index r, const AffineGrid& g) {
    scale_[r] = g.scale;
    zero_[r] = g.zero;
  }
  const AffineGrid& static_grid(Index r, Index j) const {
    return static_grids_[(row0_ + r) * groups_ + perm_[j] / gs_];
  }

  GridOptions opt_;
  float maxq_;
  Index row0_, rows_;
  const std::vector<AffineGrid>& static_grids_;
  Index groups_;
  const VectorXi64& perm_;
  Index gs_;
  QuantOutput& out_;
  std::vector<float> scale_, zero_;
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
  run_column_loop(W, perm, opt.act_order, prep.dead, prep.factor.P, loop_opt,
                  [&](Index r0, Index pr) {
                    return AffineQuantizer(grid_opt, r0, pr, row_grids, static_grids, groups, perm, gs, out);
                  },
                  out.codes);

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
