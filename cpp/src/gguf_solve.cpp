// RTN (llama.cpp's quantizers) and GPTQ on the GGUF block formats (see gguf.hpp).
#include "quantease/gguf.hpp"

#include "quantease/gguf_refine.hpp"
#include "quantease/gguf_search.hpp"
#include "quantease/gptq_loop.hpp"
#include "quantease/hessian.hpp"
#include "quantease/parallel.hpp"

namespace quantease::gguf {
namespace {

VectorXi32 sub_block_index(const Format& f, Index cols) {
  VectorXi32 g(cols);
  for (Index c = 0; c < cols; ++c) g[c] = static_cast<std::int32_t>(c / f.sub);
  return g;
}

// The GPTQ quantizer of one row panel on a GGUF type. Every row's sub-block grids live in `grids` (rows x
// cols / sub, original column order): fixed before the loop (act-order), or filled block by block as the
// loop reaches each block (fit_group, processing order == original order).
class BlockQuantizer {
 public:
  BlockQuantizer(const Format& f, Index row0, const float* importance, const std::vector<float>& row_sigma2,
                 const VectorXi64& perm, bool permuted, std::vector<BlockParams>& blocks,
                 std::vector<SubGrid>& grids, Index cols)
      : f_(f), row0_(row0), importance_(importance), row_sigma2_(row_sigma2), perm_(perm), permuted_(permuted),
        blocks_(blocks), grids_(grids), blocks_per_row_(cols / f.block), subs_per_row_(cols / f.sub) {}

  void fit_group(Index r, Index j, const float* values, Index n) {
    const Index row = row0_ + r, b = j / f_.block;
    BlockParams& p = blocks_[row * blocks_per_row_ + b];
    std::uint8_t scratch[256];
    llama_quantize_block(f_, values, importance_ + j, row_sigma2_[row], p, scratch);
    refine_block(f_, values, importance_ + j, p);
    for (int s = 0; s < f_.subs(); ++s) grids_[row * subs_per_row_ + b * f_.subs() + s] = sub_grid(f_, p, s);
  }

  std::uint8_t quantize(Index r, Index j, float w, float& q) {
    const Index c = permuted_ ? perm_[j] : j;
    const SubGrid& g = grids_[(row0_ + r) * subs_per_row_ + c / f_.sub];
    const int code = nearest_code(f_, g, w);
    q = value(f_, g, code);
    return static_cast<std::uint8_t>(code);
  }

 private:
  const Format& f_;
  Index row0_;
  const float* importance_;
  const std::vector<float>& row_sigma2_;
  const VectorXi64& perm_;
  bool permuted_;
  std::vector<BlockParams>& blocks_;
  std::vector<SubGrid>& grids_;
  Index blocks_per_row_, subs_per_row_;
};

}  // namespace

void dequantize(const Format& f, const std::vector<BlockParams>& blocks, const RowMatrixU8& codes,
                RowMatrixXf& weight) {
  const Index rows = codes.rows(), cols = codes.cols(), per_row = cols / f.block;
  weight.resize(rows, cols);
  parallel_chunks(rows, 16, [&](Index r0, Index r1) {
    for (Index r = r0; r < r1; ++r) {
      for (Index b = 0; b < per_row; ++b) {
        const BlockParams& p = blocks[r * per_row + b];
        for (int s = 0; s < f.subs(); ++s) {
          const SubGrid g = sub_grid(f, p, s);
          const Index c0 = b * f.block + s * f.sub;
          for (Index c = c0; c < c0 + f.sub; ++c) weight(r, c) = value(f, g, codes(r, c));
        }
      }
    }
  });
}

GgufOutput rtn(const ConstRowMatrixRef<float>& W, Type type, const float* importance, bool refine) {
  const Format& f = format(type);
  const Index rows = W.rows(), cols = W.cols();
  GgufOutput res;
  res.blocks.resize(rows * (cols / f.block));
  res.out.codes.resize(rows, cols);
  parallel_chunks(rows, 16, [&](Index r0, Index r1) {
    for (Index r = r0; r < r1; ++r) {
      const float* w = W.row(r).data();
      BlockParams* blocks = &res.blocks[r * (cols / f.block)];
      std::uint8_t* codes = res.out.codes.row(r).data();
      llama_quantize_row(f, w, cols, importance, blocks, codes);
      if (!refine) continue;
      for (Index b = 0; b < cols / f.block; ++b) {
        const Index c0 = b * f.block;
        refine_block(f, w + c0, importance + c0, blocks[b]);
        for (int s = 0; s < f.subs(); ++s) {
          const SubGrid g = sub_grid(f, blocks[b], s);
          for (Index c = c0 + s * f.sub; c < c0 + (s + 1) * f.sub; ++c) codes[c] = nearest_code(f, g, w[c]);
        }
      }
    }
  });
  res.out.g_idx = sub_block_index(f, cols);
  dequantize(f, res.blocks, res.out.codes, res.out.weight);
  return res;
}

template <class HT>
GgufOutput gptq(const ConstRowMatrixRef<float>& W, const ConstRowMatrixRef<HT>& H, Type type,
                const GptqOptions& opt) {
  const Format& f = format(type);
  const Index rows = W.rows(), cols = W.cols();
  GgufOutput res;
  QuantOutput& out = res.out;
  PhaseTimer timer(out);
  const PreparedHessian prep = prepare_hessian(H, opt.act_order, opt.damp, true);
  out.damp = prep.factor.damp;
  out.damp_attempts = prep.factor.attempts;
  timer.lap("factor");

  // llama.cpp's importance matrix is the mean of x^2 per column: diag(H) up to a factor.
  std::vector<float> importance(cols);
  for (Index c = 0; c < cols; ++c) importance[c] = static_cast<float>(H(c, c));
  std::vector<float> row_sigma2(rows);
  for (Index r = 0; r < rows; ++r) {
    float sum_x2 = 0;
    for (Index c = 0; c < cols; ++c) sum_x2 += W(r, c) * W(r, c);
    row_sigma2[r] = sum_x2 / cols;
  }
  res.blocks.resize(rows * (cols / f.block));
  std::vector<SubGrid> grids(rows * (cols / f.sub));
  if (opt.act_order) {
    // Grids fixed up front from W, dead columns zeroed (GPTQ's static groups).
    parallel_chunks(rows, 16, [&](Index r0, Index r1) {
      std::vector<float> x(cols);
      std::vector<std::uint8_t> scratch(cols);
      for (Index r = r0; r < r1; ++r) {
        for (Index c = 0; c < cols; ++c) x[c] = prep.dead[c] ? 0.0f : W(r, c);
        BlockParams* p = &res.blocks[r * (cols / f.block)];
        for (Index b = 0; b < cols / f.block; ++b) {
          llama_quantize_block(f, x.data() + b * f.block, importance.data() + b * f.block, row_sigma2[r], p[b],
                               scratch.data());
          refine_block(f, x.data() + b * f.block, importance.data() + b * f.block, p[b]);
          for (int s = 0; s < f.subs(); ++s) grids[r * (cols / f.sub) + b * f.subs() + s] = sub_grid(f, p[b], s);
        }
      }
    });
  }
  timer.lap("grids");

  ColumnLoopOptions loop_opt;
  loop_opt.block_size = opt.block_size;
  loop_opt.group_size = opt.act_order ? -1 : f.block;
  RowMatrixXf group_inverse;
  if (!opt.act_order) {
    group_inverse = group_substitution_inverses(prep.factor.P, f.block);
    loop_opt.group_inverse = &group_inverse;
  }
  out.codes.resize(rows, cols);
  run_column_loop(W, prep.perm, opt.act_order, prep.dead, prep.factor.P, loop_opt,
                  [&](Index r0, Index) {
                    return BlockQuantizer(f, r0, importance.data(), row_sigma2, prep.perm, opt.act_order, res.blocks,
                                          grids, cols);
                  },
                  out.codes);
  timer.lap("column_loop");
  if (opt.act_order) out.perm = prep.perm;
  out.g_idx = sub_block_index(f, cols);
  dequantize(f, res.blocks, out.codes, out.weight);
  timer.lap("dequantize");
  refit_super_scales(f, W, H, out.codes, res.blocks, out.weight);
  timer.lap("refit");
  return res;
}

template GgufOutput gptq<float>(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<float>&, Type,
                                const GptqOptions&);
template GgufOutput gptq<double>(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<double>&, Type,
                                 const GptqOptions&);

}  // namespace quantease::gguf
