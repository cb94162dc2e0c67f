// Refinement of a GGUF block's stored parameters on the weighted error (see gguf_refine.hpp).
#include "quantease/gguf_refine.hpp"

#include <algorithm>
#include <cmath>

#include "quantease/gemm.hpp"
#include "quantease/parallel.hpp"

namespace quantease::gguf {
namespace {

constexpr int kIntegerReach = 2;       // sub-block integers tried: current +- this
constexpr int kRounds = 3;             // at most this many passes over integers and super-scales
constexpr Index kRefitPanelRows = 64;  // rows per task of the exact refit

double sub_error(const Format& f, const float* x, const float* w, const SubGrid& g) {
  double e = 0;
  for (int i = 0; i < f.sub; ++i) {
    const double diff = static_cast<double>(x[i]) - value(f, g, nearest_code(f, g, x[i]));
    e += w[i] * diff * diff;
  }
  return e;
}

// The range of a sub-block scale and min of each k-quant type.
void integer_ranges(const Format& f, int& sc_lo, int& sc_hi, int& m_hi) {
  switch (f.type) {
    case Type::Q2_K:
      sc_lo = 0, sc_hi = 15, m_hi = 15;
      break;
    case Type::Q3_K:
      sc_lo = -32, sc_hi = 31, m_hi = 0;
      break;
    case Type::Q6_K:
      sc_lo = -128, sc_hi = 127, m_hi = 0;
      break;
    default:
      sc_lo = 0, sc_hi = 63, m_hi = 63;
      break;  // Q4_K, Q5_K
  }
}

// Every sub-block's (sc, m) within reach of its current pair, d and dmin fixed: the pair of least error.
bool improve_integers(const Format& f, const float* x, const float* w, BlockParams& p) {
  int sc_lo, sc_hi, m_hi;
  integer_ranges(f, sc_lo, sc_hi, m_hi);
  const bool has_min = f.scheme == Scheme::sub_scale_min;
  bool changed = false;
  for (int s = 0; s < f.subs(); ++s) {
    const float* xs = x + s * f.sub;
    const float* ws = w + s * f.sub;
    double best = sub_error(f, xs, ws, sub_grid(f, p, s));
    const int sc0 = p.sc[s], m0 = p.m[s];
    int best_sc = sc0, best_m = m0;
    for (int sc = std::max(sc_lo, sc0 - kIntegerReach); sc <= std::min(sc_hi, sc0 + kIntegerReach); ++sc) {
      const int m_from = has_min ? std::max(0, m0 - kIntegerReach) : m0;
      const int m_to = has_min ? std::min(m_hi, m0 + kIntegerReach) : m0;
      for (int m = m_from; m <= m_to; ++m) {
        p.sc[s] = static_cast<std::int8_t>(sc);
        p.m[s] = static_cast<std::uint8_t>(m);
        const double e = sub_error(f, xs, ws, sub_grid(f, p, s));
        if (e < best) {
          best = e;
          best_sc = sc;
          best_m = m;
        }
      }
    }
    p.sc[s] = static_cast<std::int8_t>(best_sc);
    p.m[s] = static_cast<std::uint8_t>(best_m);
    changed |= best_sc != sc0 || best_m != m0;
  }
  return changed;
}

// d (and dmin, or Q4_1/Q5_1's m) by weighted least squares to the current nearest codes, in fp16.
//   value_i = d a_i + e b_i:  a_i = level (times sc), b_i = 1 (m) or -min (dmin), or absent.
BlockParams refit_super_scales(const Format& f, const float* x, const float* w, const BlockParams& p) {
  const bool two = f.scheme == Scheme::scale_min || f.scheme == Scheme::sub_scale_min;
  double saa = 0, sab = 0, sbb = 0, sxa = 0, sxb = 0;
  for (int s = 0; s < f.subs(); ++s) {
    const SubGrid g = sub_grid(f, p, s);
    const double sc = f.block == 32 ? 1.0 : p.sc[s];
    const double b = f.scheme == Scheme::scale_min ? 1.0 : -static_cast<double>(p.m[s]);
    for (int i = s * f.sub; i < (s + 1) * f.sub; ++i) {
      const double a = sc * level(f, nearest_code(f, g, x[i]));
      saa += w[i] * a * a;
      sab += w[i] * a * b;
      sbb += w[i] * b * b;
      sxa += w[i] * x[i] * a;
      sxb += w[i] * x[i] * b;
    }
  }
  BlockParams q = p;
  const double det = saa * sbb - sab * sab;
  if (two && det > 1e-12 * saa * sbb && det > 0) {
    q.d = round_fp16(static_cast<float>((sxa * sbb - sxb * sab) / det));
    q.dmin = round_fp16(static_cast<float>((saa * sxb - sab * sxa) / det));
  } else if (saa > 0) {
    // One unknown (or a singular pair): d alone, the offset term e b kept (e = m or dmin).
    const double rest = two ? sxa - static_cast<double>(p.dmin) * sab : sxa;
    q.d = round_fp16(static_cast<float>(rest / saa));
  }
  return q;
}

}  // namespace

double block_error(const Format& f, const float* x, const float* w, const BlockParams& params) {
  double e = 0;
  for (int s = 0; s < f.subs(); ++s) e += sub_error(f, x + s * f.sub, w + s * f.sub, sub_grid(f, params, s));
  return e;
}

double refine_block(const Format& f, const float* x, const float* w, BlockParams& params) {
  double best = block_error(f, x, w, params);
  for (int round = 0; round < kRounds; ++round) {
    bool improved = false;
    if (f.block == 256 && improve_integers(f, x, w, params)) {
      best = block_error(f, x, w, params);
      improved = true;
    }
    const BlockParams refit = refit_super_scales(f, x, w, params);
    const double e = block_error(f, x, w, refit);
    if (e < best) {
      best = e;
      params = refit;
      improved = true;
    }
    if (!improved) break;
  }
  return best;
}

}  // namespace quantease::gguf

namespace quantease::gguf {

template <class HT>
void refit_super_scales(const ConstRowMatrixRef<float>& W, const ConstRowMatrixRef<HT>& H, const RowMatrixU8& codes,
                        GgufGrids& grids, RowMatrixXf& weight) {
  const Format& f = grids.format();
  const Index rows = W.rows(), cols = W.cols(), per_row = cols / f.block, n = f.block;
  const bool two = f.scheme == Scheme::scale_min || f.scheme == Scheme::sub_scale_min;
  const RowMatrixXf Hf = H.template cast<float>();
  // Panels of rows: G = (W - Q) H by one product per panel, and after each block one product brings the
  // panel's G up to date with the block's accepted changes (H is read once per panel and block, not per row).
  parallel_chunks(rows, kRefitPanelRows, [&](Index r0, Index r1) {
    const Index pr = r1 - r0;
    RowMatrixXf E = W.middleRows(r0, pr) - weight.middleRows(r0, pr);
    RowMatrixXf G = RowMatrixXf::Zero(pr, cols), change(pr, n);
    gemm_add(G, 1.0f, E, Hf);
    Eigen::VectorXd a(n), b(n), Ha(n), Hb(n), dq(n), g(n);
    std::vector<float> fresh(n);
    for (Index blk = 0; blk < per_row; ++blk) {
      const Index c0 = blk * n;
      const Eigen::MatrixXd Hbb = Hf.block(c0, c0, n, n).cast<double>();
      change.setZero();
      bool any = false;
      for (Index r = 0; r < pr; ++r) {
        const BlockParams& p = grids.block(r0 + r, blk);
        // value = d a + e b over the block: a = sc * level, b = -min (k-quants) or 1 (Q4_1/Q5_1)
        for (int s = 0; s < f.subs(); ++s) {
          for (Index i = s * f.sub; i < (s + 1) * f.sub; ++i) {
            a[i] = (f.block == 32 ? 1.0 : p.sc[s]) * level(f, codes(r0 + r, c0 + i));
            b[i] = f.scheme == Scheme::scale_min ? 1.0 : -static_cast<double>(p.m[s]);
          }
        }
        g = G.row(r).segment(c0, n).transpose().cast<double>();
        Ha.noalias() = Hbb * a;
        const double aa = a.dot(Ha), ga = a.dot(g);
        double step_d = 0, step_e = 0;
        if (two) {
          Hb.noalias() = Hbb * b;
          const double ab = a.dot(Hb), bb = b.dot(Hb), gb = b.dot(g);
          const double det = aa * bb - ab * ab;
          if (!(det > 1e-12 * aa * bb) || !(det > 0)) continue;
          step_d = (ga * bb - gb * ab) / det;
          step_e = (aa * gb - ab * ga) / det;
        } else {
          if (!(aa > 0)) continue;
          step_d = ga / aa;
        }
        BlockParams q = p;
        q.d = round_fp16(static_cast<float>(p.d + step_d));
        if (two) q.dmin = round_fp16(static_cast<float>(p.dmin + step_e));
        if ((q.d == p.d && q.dmin == p.dmin) || !std::isfinite(q.d) || !std::isfinite(q.dmin)) continue;
        for (int s = 0; s < f.subs(); ++s) {
          const SubGrid grid = sub_grid(f, q, s);
          for (Index i = s * f.sub; i < (s + 1) * f.sub; ++i) {
            fresh[i] = value(f, grid, codes(r0 + r, c0 + i));
            dq[i] = static_cast<double>(fresh[i]) - weight(r0 + r, c0 + i);
          }
        }
        // the objective's change when the block's values move by dq: -2 dq^T g + dq^T H dq
        if (!(-2.0 * dq.dot(g) + dq.dot(Hbb * dq) < 0)) continue;
        grids.set_block(r0 + r, blk, q);
        for (Index i = 0; i < n; ++i) {
          change(r, i) = static_cast<float>(dq[i]);
          weight(r0 + r, c0 + i) = fresh[i];
        }
        any = true;
      }
      // W - Q moved by -change over the block: G -= change H[block, :]
      if (any) gemm_add(G, -1.0f, change, Hf.middleRows(c0, n));
    }
  });
}

template void refit_super_scales<float>(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<float>&,
                                        const RowMatrixU8&, GgufGrids&, RowMatrixXf&);
template void refit_super_scales<double>(const ConstRowMatrixRef<float>&, const ConstRowMatrixRef<double>&,
                                         const RowMatrixU8&, GgufGrids&, RowMatrixXf&);

}  // namespace quantease::gguf
