// llama.cpp's block quantizers, reference and importance-weighted (see gguf_search.hpp).
#include "quantease/gguf_search.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

namespace quantease::gguf {
namespace {

constexpr float kGroupMaxEps = 1e-15f;  // llama.cpp's GROUP_MAX_EPS: a group this small is all zero
constexpr int kMaxBlock = 256;

// Symmetric search (make_qx_quants, rmse_type 1): L[i] = l + nmax with l in [-nmax, nmax - 1] and the
// least-squares scale for the weights w (x^2 when w is null), over 19 trial inverse scales.
float symmetric_search(int n, int nmax, const float* x, std::int8_t* L, const float* w) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    std::fill(L, L + n, 0);
    return 0.0f;
  }
  const auto weight = [&](int i) { return w ? w[i] : x[i] * x[i]; };
  float iscale = -nmax / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = nearest_int(iscale * x[i]);
    l = std::max(-nmax, std::min(nmax - 1, l));
    L[i] = static_cast<std::int8_t>(l + nmax);
    const float wi = weight(i);
    sumlx += wi * x[i] * l;
    suml2 += wi * l * l;
  }
  float scale = suml2 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(nmax + 0.1f * is) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      int l = nearest_int(iscale * x[i]);
      l = std::max(-nmax, std::min(nmax - 1, l));
      const float wi = weight(i);
      sumlx += wi * x[i] * l;
      suml2 += wi * l * l;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) {
        const int l = nearest_int(iscale * x[i]);
        L[i] = static_cast<std::int8_t>(nmax + std::max(-nmax, std::min(nmax - 1, l)));
      }
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// Q3_K's reference search (make_q3_quants with rmse): weights x^2, coordinate-wise improvement of the codes.
float q3_reference_search(int n, int nmax, const float* x, std::int8_t* L) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    std::fill(L, L + n, 0);
    return 0.0f;
  }
  const float iscale = -nmax / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = nearest_int(iscale * x[i]);
    l = std::max(-nmax, std::min(nmax - 1, l));
    L[i] = static_cast<std::int8_t>(l);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  for (int itry = 0; itry < 5; ++itry) {
    int n_changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i];
      float slx = sumlx - w * x[i] * L[i];
      if (slx > 0) {
        float sl2 = suml2 - w * L[i] * L[i];
        int new_l = nearest_int(x[i] * sl2 / slx);
        new_l = std::max(-nmax, std::min(nmax - 1, new_l));
        if (new_l != L[i]) {
          slx += w * x[i] * new_l;
          sl2 += w * new_l * new_l;
          if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = static_cast<std::int8_t>(new_l);
            sumlx = slx;
            suml2 = sl2;
            ++n_changed;
          }
        }
      }
    }
    if (!n_changed) break;
  }
  for (int i = 0; i < n; ++i) L[i] = static_cast<std::int8_t>(L[i] + nmax);
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// Asymmetric search (make_qkx2_quants / make_qkx3_quants): codes 0..nmax, value = scale * l - the_min
// (the_min >= 0), least squares (weights w) over nstep + 1 trial inverse scales. `clamp_trial` is qkx3's
// guarded trial rounding.
float asymmetric_search(int n, int nmax, const float* x, const float* w, std::uint8_t* L, float& the_min, float rmin,
                        float rdelta, int nstep, bool use_mad, bool qkx3) {
  float min = x[0], max = x[0];
  float sum_w = w[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (min > 0) min = 0;
  if (qkx3 ? max <= min : max == min) {
    std::fill(L, L + n, 0);
    the_min = -min;
    return 0.0f;
  }
  float iscale = nmax / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = nearest_int(iscale * (x[i] - min));
    L[i] = static_cast<std::uint8_t>(std::max(0, std::min(nmax, l)));
    float diff = scale * L[i] + min - x[i];
    diff = use_mad ? std::fabs(diff) : diff * diff;
    best_error += w[i] * diff;
  }
  std::uint8_t Laux[kMaxBlock];
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * is + nmax) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      int l;
      if (qkx3) {
        const float v = iscale * (x[i] - min);
        l = v > 0 ? nearest_int(std::min(v, static_cast<float>(nmax))) : 0;
      } else {
        l = std::max(0, std::min(nmax, nearest_int(iscale * (x[i] - min))));
      }
      Laux[i] = static_cast<std::uint8_t>(l);
      sum_l += w[i] * l;
      sum_l2 += w[i] * l * l;
      sum_xl += w[i] * l * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * Laux[i] + this_min - x[i];
        diff = use_mad ? std::fabs(diff) : diff * diff;
        cur_error += w[i] * diff;
      }
      if (cur_error < best_error) {
        std::copy(Laux, Laux + n, L);
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  the_min = -min;
  return scale;
}

// The integer sub-block scales of a super-block (make_qp_quants): L[i] in 0..nmax with x ~ scale * L,
// weighted by w; returns the scale.
float positive_scale_search(int n, int nmax, const float* x, std::uint8_t* L, const float* w) {
  float max = 0;
  for (int i = 0; i < n; ++i) max = std::max(max, x[i]);
  if (max < kGroupMaxEps) {
    std::fill(L, L + n, 0);
    return 0.0f;
  }
  float iscale = nmax / max;
  for (int i = 0; i < n; ++i) L[i] = static_cast<std::uint8_t>(nearest_int(iscale * x[i]));
  const float scale = 1 / iscale;
  float best_mse = 0;
  for (int i = 0; i < n; ++i) {
    const float diff = x[i] - scale * L[i];
    best_mse += w[i] * diff * diff;
  }
  for (int is = -4; is <= 4; ++is) {
    if (is == 0) continue;
    const float iscale_is = (0.1f * is + nmax) / max;
    const float scale_is = 1 / iscale_is;
    float mse = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::min(nmax, nearest_int(iscale_is * x[i]));
      const float diff = x[i] - scale_is * l;
      mse += w[i] * diff * diff;
    }
    if (mse < best_mse) {
      best_mse = mse;
      iscale = iscale_is;
    }
  }
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::min(nmax, nearest_int(iscale * x[i]));
    L[i] = static_cast<std::uint8_t>(l);
    sumlx += w[i] * x[i] * l;
    suml2 += w[i] * l * l;
  }
  for (int itry = 0; itry < 5; ++itry) {
    int n_changed = 0;
    for (int i = 0; i < n; ++i) {
      float slx = sumlx - w[i] * x[i] * L[i];
      float sl2 = suml2 - w[i] * L[i] * L[i];
      if (slx > 0 && sl2 > 0) {
        const int new_l = std::min(nmax, nearest_int(x[i] * sl2 / slx));
        if (new_l != L[i]) {
          slx += w[i] * x[i] * new_l;
          sl2 += w[i] * new_l * new_l;
          if (slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = static_cast<std::uint8_t>(new_l);
            sumlx = slx;
            suml2 = sl2;
            ++n_changed;
          }
        }
      }
    }
    if (!n_changed) break;
  }
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// ---- the legacy 32-blocks ----

// The value of largest magnitude, the first one on ties (all zero: x[0], as NumPy's argmax picks).
float signed_absmax(const float* x, int n) {
  float amax = std::fabs(x[0]), max = x[0];
  for (int i = 1; i < n; ++i) {
    if (amax < std::fabs(x[i])) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  }
  return max;
}

// Q4_0 / Q5_0 reference: d = max / -(levels/2), codes trunc(x / d + levels/2 + 0.5) (computed with the
// unrounded d), d stored in fp16.
void symmetric_reference(const Format& f, const float* x, BlockParams& p, std::uint8_t* codes) {
  const float half = static_cast<float>(f.levels / 2);
  const float d = signed_absmax(x, f.block) / -half;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  p.d = round_fp16(d);
  const float bias = half + 0.5f;
  for (int i = 0; i < f.block; ++i) {
    const int q = static_cast<int>(std::trunc(rounded_product(x[i], id) + bias));
    codes[i] = static_cast<std::uint8_t>(std::clamp(q, 0, f.levels - 1));
  }
}

// Q4_1 / Q5_1 reference: d = (max - min) / (levels - 1), m = min.
void minmax_reference(const Format& f, const float* x, BlockParams& p, std::uint8_t* codes) {
  float min = FLT_MAX, max = -FLT_MAX;
  for (int i = 0; i < f.block; ++i) {
    min = std::min(min, x[i]);
    max = std::max(max, x[i]);
  }
  const float d = (max - min) / static_cast<float>(f.levels - 1);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  p.d = round_fp16(d);
  p.dmin = round_fp16(min);
  for (int i = 0; i < f.block; ++i) {
    const int q = static_cast<int>(std::trunc(rounded_product(x[i] - min, id) + 0.5f));
    codes[i] = static_cast<std::uint8_t>(std::clamp(q, 0, f.levels - 1));
  }
}

// Q8_0 (llama.cpp has no imatrix search for it): d = amax / 127, codes round-half-away(x / d).
void q8_reference(const float* x, BlockParams& p, std::uint8_t* codes) {
  float amax = 0;
  for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  p.d = round_fp16(d);
  for (int i = 0; i < 32; ++i) codes[i] = static_cast<std::uint8_t>(static_cast<int>(std::round(x[i] * id)) + 128);
}

// llama.cpp's imatrix weights of a block: importance * sqrt(sigma2 + x^2).
void importance_weights(const float* x, const float* importance, float sigma2, int n, float* w) {
  for (int i = 0; i < n; ++i) w[i] = importance[i] * std::sqrt(sigma2 + x[i] * x[i]);
}

// IQ4_NL (quantize_iq4_nl, one 32-block): the table scale by a least-squares search over 15 trial inverse
// scales, weights importance * sqrt(sigma2 + x^2) (x^2 without importance); codes with the unrounded scale.
void iq4nl_block(const float* x, const float* importance, BlockParams& p, std::uint8_t* codes) {
  constexpr int n = 32, ntry = 7;
  float sigma2 = 0;
  for (int j = 0; j < n; ++j) sigma2 += x[j] * x[j];
  sigma2 *= 2.f / n;
  float w[n];
  if (importance) importance_weights(x, importance, sigma2, n, w);
  else
    for (int j = 0; j < n; ++j) w[j] = x[j] * x[j];
  float amax = 0, max = 0;
  for (int j = 0; j < n; ++j) {
    const float ax = std::fabs(x[j]);
    if (ax > amax) {
      amax = ax;
      max = x[j];
    }
  }
  const float v0 = static_cast<float>(kIq4nlLevels[0]);
  float scale = 0;
  if (amax >= kGroupMaxEps) {
    float d = -max / v0;
    float id = 1 / d;
    float sumqx = 0, sumq2 = 0;
    for (int j = 0; j < n; ++j) {
      const float q = kIq4nlLevels[nearest_table_index(id * x[j])];
      sumqx += w[j] * q * x[j];
      sumq2 += w[j] * q * q;
    }
    d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
    float best = d * sumqx;
    for (int itry = -ntry; itry <= ntry; ++itry) {
      id = (itry + v0) / max;
      sumqx = sumq2 = 0;
      for (int j = 0; j < n; ++j) {
        const float q = kIq4nlLevels[nearest_table_index(id * x[j])];
        sumqx += w[j] * q * x[j];
        sumq2 += w[j] * q * q;
      }
      if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
        d = sumqx / sumq2;
        best = d * sumqx;
      }
    }
    scale = d;
  }
  p.d = round_fp16(scale);
  const float id = scale ? 1 / scale : 0;
  for (int j = 0; j < n; ++j) codes[j] = static_cast<std::uint8_t>(nearest_table_index(id * x[j]));
}

void legacy_block(const Format& f, const float* x, const float* importance, float row_sigma2, BlockParams& p,
                  std::uint8_t* codes) {
  if (f.type == Type::Q8_0) return q8_reference(x, p, codes);
  if (f.type == Type::IQ4_NL) return iq4nl_block(x, importance, p, codes);
  if (!importance) {
    if (f.scheme == Scheme::scale) symmetric_reference(f, x, p, codes);
    else minmax_reference(f, x, p, codes);
    return;
  }
  float w[32];
  importance_weights(x, importance, row_sigma2, 32, w);
  if (f.scheme == Scheme::scale) {
    std::int8_t L[32];
    p.d = round_fp16(symmetric_search(32, f.levels / 2, x, L, w));
    for (int i = 0; i < 32; ++i) codes[i] = static_cast<std::uint8_t>(L[i]);
  } else {
    float the_min;
    const float d = asymmetric_search(32, f.levels - 1, x, w, codes, the_min, -0.9f, 0.05f, 36, false, true);
    p.d = round_fp16(d);
    p.dmin = round_fp16(-the_min);
  }
}

// ---- the k-quants' super-blocks of 256 ----

// The final codes of a k-quant block from its stored parameters (llama.cpp's requantization): nearest_int
// of (x + dmin*m) / (d*sc), or of x / (d*sc) for the symmetric ones; a sub-block whose d*sc is 0 keeps the
// codes of the search.
void requantize(const Format& f, const float* x, const BlockParams& p, std::uint8_t* codes) {
  for (int s = 0; s < f.subs(); ++s) {
    const SubGrid g = sub_grid(f, p, s);
    if (!g.mul) continue;
    const float dm = -g.add;
    for (int i = s * f.sub; i < (s + 1) * f.sub; ++i) {
      const int l = f.scheme == Scheme::sub_scale_min ? nearest_int((x[i] + dm) / g.mul) : nearest_int(x[i] / g.mul);
      codes[i] = static_cast<std::uint8_t>(std::clamp(l, -f.offset, f.levels - 1 - f.offset) + f.offset);
    }
  }
}

// Q2_K / Q4_K / Q5_K: scale and min per sub-block, then their integer codes against d and dmin.
void k_scale_min_block(const Format& f, const float* x, const float* importance, BlockParams& p, std::uint8_t* codes) {
  const int subs = f.subs(), n = f.sub, nmax = f.levels - 1;
  const int sc_max = f.type == Type::Q2_K ? 15 : 63;
  float scales[16], mins[16], sw[16], w[32];
  float sum_x2 = 0;
  for (int l = 0; l < 256; ++l) sum_x2 += x[l] * x[l];
  // Q2_K's imatrix search weighs with the block's mean square, Q4_K/Q5_K with twice it.
  const float sigma2 = f.type == Type::Q2_K ? sum_x2 / 256 : 2 * sum_x2 / 256;
  for (int s = 0; s < subs; ++s) {
    const float* xs = x + s * n;
    if (importance) {
      importance_weights(xs, importance + s * n, sigma2, n, w);
      sw[s] = 0;
      // Q2_K sums its 16 weights over QK_K/16 = 16 terms: the same count as its sub-block.
      for (int l = 0; l < n; ++l) sw[s] += w[l];
      scales[s] = asymmetric_search(n, nmax, xs, w, codes + s * n, mins[s], -0.9f, 0.05f, 36, false, true);
    } else if (f.type == Type::Q2_K) {
      for (int l = 0; l < n; ++l) w[l] = std::fabs(xs[l]);
      scales[s] = asymmetric_search(n, nmax, xs, w, codes + s * n, mins[s], -0.5f, 0.1f, 15, true, false);
    } else {
      float sx2 = 0;
      for (int l = 0; l < n; ++l) sx2 += xs[l] * xs[l];
      const float av_x = std::sqrt(sx2 / n);
      for (int l = 0; l < n; ++l) w[l] = av_x + std::fabs(xs[l]);
      const bool q4 = f.type == Type::Q4_K;
      scales[s] = asymmetric_search(n, nmax, xs, w, codes + s * n, mins[s], q4 ? -1.f : -0.5f, 0.1f, q4 ? 20 : 15,
                                    false, false);
    }
  }
  if (importance) {
    std::uint8_t Ls[16], Lm[16];
    const float d = positive_scale_search(subs, sc_max, scales, Ls, sw);
    const float dmin = positive_scale_search(subs, sc_max, mins, Lm, sw);
    for (int s = 0; s < subs; ++s) {
      p.sc[s] = static_cast<std::int8_t>(std::min<int>(sc_max, Ls[s]));
      p.m[s] = static_cast<std::uint8_t>(std::min<int>(sc_max, Lm[s]));
    }
    p.d = round_fp16(d);
    p.dmin = round_fp16(dmin);
  } else {
    float max_scale = 0, max_min = 0;
    for (int s = 0; s < subs; ++s) {
      max_scale = std::max(max_scale, scales[s]);
      max_min = std::max(max_min, mins[s]);
    }
    const float q = static_cast<float>(sc_max);
    const float inv_scale = max_scale > 0 ? q / max_scale : 0.f;
    const float inv_min = max_min > 0 ? q / max_min : 0.f;
    for (int s = 0; s < subs; ++s) {
      p.sc[s] = static_cast<std::int8_t>(std::min(sc_max, nearest_int(inv_scale * scales[s])));
      p.m[s] = static_cast<std::uint8_t>(std::min(sc_max, nearest_int(inv_min * mins[s])));
    }
    p.d = round_fp16(max_scale / q);
    p.dmin = round_fp16(max_min / q);
  }
  requantize(f, x, p, codes);
}

// Q3_K / Q6_K: a signed scale per sub-block of 16, then integer sub-scales against d.
void k_scale_block(const Format& f, const float* x, const float* importance, BlockParams& p, std::uint8_t* codes) {
  const bool q3 = f.type == Type::Q3_K;
  const int nmax = f.levels / 2;  // 4 or 32
  float scales[16];
  std::int8_t L[256];
  if (q3 && importance) {
    float sum_x2 = 0;
    for (int j = 0; j < 256; ++j) sum_x2 += x[j] * x[j];
    const float sigma2 = 2 * sum_x2 / 256;
    float w[16], sw[16];
    for (int s = 0; s < 16; ++s) {
      importance_weights(x + 16 * s, importance + 16 * s, sigma2, 16, w);
      float sumw = 0;
      for (int l = 0; l < 16; ++l) sumw += w[l];
      sw[s] = sumw;
      scales[s] = symmetric_search(16, nmax, x + 16 * s, L + 16 * s, w);
    }
    std::int8_t Ls[16];
    const float d = symmetric_search(16, 32, scales, Ls, sw);
    for (int s = 0; s < 16; ++s) p.sc[s] = static_cast<std::int8_t>(Ls[s] - 32);
    p.d = round_fp16(d);
  } else {
    float max_scale = 0, amax = 0;
    for (int s = 0; s < 16; ++s) {
      if (q3) scales[s] = q3_reference_search(16, nmax, x + 16 * s, L + 16 * s);
      else scales[s] = symmetric_search(16, nmax, x + 16 * s, L + 16 * s, importance ? importance + 16 * s : nullptr);
      if (std::fabs(scales[s]) > amax) {
        amax = std::fabs(scales[s]);
        max_scale = scales[s];
      }
    }
    if (q3) {
      if (max_scale) {
        const float iscale = -32.f / max_scale;
        for (int s = 0; s < 16; ++s)
          p.sc[s] = static_cast<std::int8_t>(std::clamp(nearest_int(iscale * scales[s]), -32, 31));
        p.d = round_fp16(1 / iscale);
      } else {
        p.d = 0.0f;
      }
    } else {
      if (amax < kGroupMaxEps) {  // an all-zero block: everything stored as 0
        p = BlockParams{};
        std::fill(codes, codes + 256, 0);
        return;
      }
      const float iscale = -128.f / max_scale;
      p.d = round_fp16(1 / iscale);
      for (int s = 0; s < 16; ++s) p.sc[s] = static_cast<std::int8_t>(std::min(127, nearest_int(iscale * scales[s])));
    }
  }
  for (int i = 0; i < 256; ++i) codes[i] = static_cast<std::uint8_t>(L[i]);
  requantize(f, x, p, codes);
}

}  // namespace

void llama_quantize_block(const Format& f, const float* x, const float* importance, float row_sigma2,
                          BlockParams& params, std::uint8_t* codes) {
  params = BlockParams{};
  if (f.block == 32) return legacy_block(f, x, importance, row_sigma2, params, codes);
  if (f.scheme == Scheme::sub_scale_min) return k_scale_min_block(f, x, importance, params, codes);
  k_scale_block(f, x, importance, params, codes);
}

void llama_quantize_row(const Format& f, const float* x, Index n, const float* importance, BlockParams* blocks,
                        std::uint8_t* codes) {
  float sum_x2 = 0;
  for (Index j = 0; j < n; ++j) sum_x2 += x[j] * x[j];
  const float row_sigma2 = sum_x2 / n;
  for (Index b = 0; b < n / f.block; ++b) {
    const Index c0 = b * f.block;
    llama_quantize_block(f, x + c0, importance ? importance + c0 : nullptr, row_sigma2, blocks[b], codes + c0);
  }
}

}  // namespace quantease::gguf
