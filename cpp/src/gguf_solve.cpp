// RTN (llama.cpp's quantizers) and GPTQ on the GGUF block formats, through their grid set (see gguf.hpp).
#include "quantease/gguf.hpp"

#include "quantease/gguf_refine.hpp"
#include "quantease/gguf_search.hpp"
#include "quantease/gptq_loop.hpp"
#include "quantease/hessian.hpp"
#include "quantease/parallel.hpp"

namespace quantease::gguf {
namespace {

// The column loop's grid choice for a GGUF block: llama.cpp's imatrix search on the block's current values,
// refined on the importance-weighted error (gguf_refine.hpp). `group` is the block's first sub-block.
struct ChooseBlock {
  const float* importance;               // cols: diag(H)
  const std::vector<float>* row_sigma2;  // the legacy types' row statistic
  void operator()(GgufGrids& set, Index row, Index group, const float* values, Index) const {
    const Format& f = set.format();
    const Index b = group / f.subs();
    std::uint8_t scratch[256];
    BlockParams params;
    llama_quantize_block(f, values, importance + b * f.block, (*row_sigma2)[row], params, scratch);
    refine_block(f, values, importance + b * f.block, params);
    set.set_block(row, b, params);
  }
};

// The mean square of every row of W.
std::vector<float> row_mean_squares(const ConstRowMatrixRef<float>& W) {
  const Index rows = W.rows(), cols = W.cols();
  std::vector<float> sigma2(rows);
  for (Index r = 0; r < rows; ++r) {
    float sum_x2 = 0;
    for (Index c = 0; c < cols; ++c) sum_x2 += W(r, c) * W(r, c);
    sigma2[r] = sum_x2 / cols;
  }
  return sigma2;
}

}  // namespace

GgufOutput rtn(const ConstRowMatrixRef<float>& W, Type type, const float* importance, bool refine) {
  const Format& f = format(type);
  const Index rows = W.rows(), cols = W.cols(), per_row = cols / f.block;
  GgufGrids set(type, rows, cols, VectorXi64());
  QuantOutput out;
  out.g_idx = set.groups().column_groups();
  out.codes.resize(rows, cols);
  parallel_chunks(rows, 16, [&](Index r0, Index r1) {
    std::vector<BlockParams> blocks(per_row);
    for (Index r = r0; r < r1; ++r) {
      const float* w = W.row(r).data();
      std::uint8_t* codes = out.codes.row(r).data();
      llama_quantize_row(f, w, cols, importance, blocks.data(), codes);
      for (Index b = 0; b < per_row; ++b) {
        if (refine) refine_block(f, w + b * f.block, importance + b * f.block, blocks[b]);
        set.set_block(r, b, blocks[b]);
      }
      if (!refine) continue;
      for (Index c = 0; c < cols; ++c) codes[c] = set.row(r, out.g_idx[c]).quantize(w[c]);
    }
  });
  out.weight = dequantize(set, out.codes, out.g_idx);
  return GgufOutput{std::move(out), set.blocks()};
}

template <class HT>
GgufOutput gptq(const ConstRowMatrixRef<float>& W, const ConstRowMatrixRef<HT>& H, Type type, const GptqOptions& opt) {
  const Format& f = format(type);
  const Index rows = W.rows(), cols = W.cols();
  QuantOutput out;
  PhaseTimer timer(out);
  const PreparedHessian prep = prepare_hessian(H, opt.act_order, opt.damp, true);
  out.damp = prep.factor.damp;
  out.damp_attempts = prep.factor.attempts;
  timer.lap("factor");

  // llama.cpp's importance matrix is the mean of x^2 per column: diag(H) up to a factor.
  std::vector<float> importance(cols);
  for (Index c = 0; c < cols; ++c) importance[c] = static_cast<float>(H(c, c));
  const std::vector<float> row_sigma2 = row_mean_squares(W);
  GgufGrids set(type, rows, cols, prep.perm);
  const ChooseBlock choose{importance.data(), &row_sigma2};
  if (opt.act_order) {
    // Every block's grid fixed up front from W, dead columns zeroed (GPTQ's static groups).
    parallel_chunks(rows, 16, [&](Index r0, Index r1) {
      std::vector<float> x(cols);
      for (Index r = r0; r < r1; ++r) {
        for (Index c = 0; c < cols; ++c) x[c] = prep.dead[c] ? 0.0f : W(r, c);
        for (Index b = 0; b < cols / f.block; ++b) choose(set, r, b * f.subs(), x.data() + b * f.block, f.block);
      }
    });
  }
  timer.lap("grids");

  ColumnLoopOptions loop_opt;
  loop_opt.block_size = opt.block_size;
  loop_opt.group_size = opt.act_order ? -1 : f.block;  // without act-order each block's grid when reached
  RowMatrixXf group_inverse;
  if (!opt.act_order) {
    group_inverse = group_substitution_inverses(prep.factor.P, f.block);
    loop_opt.group_inverse = &group_inverse;
  }
  out.codes.resize(rows, cols);
  run_column_loop(
      W, prep, prep.factor.P, loop_opt,
      [&](Index r0, Index pr) { return GridSetQuantizer<GgufGrids, ChooseBlock>(set, r0, pr, choose); }, out.codes);
  timer.lap("column_loop");
  if (opt.act_order) out.perm = prep.perm;
  out.g_idx = set.groups().column_groups();
  out.weight = dequantize(set, out.codes, out.g_idx);
  timer.lap("dequantize");
  refit_super_scales(W, H, out.codes, set, out.weight);
  timer.lap("refit");
  return GgufOutput{std::move(out), set.blocks()};
}

template GgufOutput gptq<float>(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<float>&, Type,
                                const GptqOptions&);
template GgufOutput gptq<double>(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<double>&, Type,
                                 const GptqOptions&);

}  // namespace quantease::gguf
