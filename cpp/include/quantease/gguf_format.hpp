// llama.cpp's GGUF block formats as fixed-format grids: what each type stores and the exact float32 value
// of every code, computed as llama.cpp's reference dequantizer (the `gguf` package's NumPy) does.
//
// Blocks run along a row of W (the input dimension). A block holds fp16 super-scales (d, and dmin or m) and,
// for the k-quants, integer sub-block scales/mins; each sub-block is then one grid
//   value(code) = mul * level(code) + add          (two float32 roundings, never one fused multiply-add)
// with level(code) = code - offset (an exact small integer) or IQ4_NL's table entry, and
//   Q4_0 Q5_0 Q8_0 IQ4_NL : mul = d                add = -0 (x + -0 == x for every x, -0 included)
//   Q4_1 Q5_1             : mul = d                add = m
//   Q3_K Q6_K             : mul = fl(d * sc)       add = -0
//   Q2_K Q4_K Q5_K        : mul = fl(d * sc)       add = -fl(dmin * m)
// Codes are stored unsigned (code = llama.cpp's q + offset), so one uint8 code matrix serves every type.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include <Eigen/Core>

namespace quantease::gguf {

enum class Type : int { Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K };
constexpr int kTypeCount = 11;

enum class Scheme { scale, scale_min, sub_scale, sub_scale_min };

struct Format {
  const char* name;
  Type type;
  int block;   // weights per block (32, or 256 for the k-quants)
  int sub;     // weights per sub-block (one grid); == block for the 32-blocks
  int levels;  // codes 0 .. levels-1
  int offset;  // level(code) = code - offset (IQ4_NL: the table)
  Scheme scheme;
  int bytes;  // bytes per block in the file
  int subs() const { return block / sub; }
};

// IQ4_NL's 16 levels (kvalues_iq4nl), ascending.
constexpr std::int8_t kIq4nlLevels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

inline const Format& format(Type t) {
  static const Format kFormats[kTypeCount] = {
      {"Q4_0", Type::Q4_0, 32, 32, 16, 8, Scheme::scale, 18},
      {"Q4_1", Type::Q4_1, 32, 32, 16, 0, Scheme::scale_min, 20},
      {"Q5_0", Type::Q5_0, 32, 32, 32, 16, Scheme::scale, 22},
      {"Q5_1", Type::Q5_1, 32, 32, 32, 0, Scheme::scale_min, 24},
      {"Q8_0", Type::Q8_0, 32, 32, 256, 128, Scheme::scale, 34},
      {"IQ4_NL", Type::IQ4_NL, 32, 32, 16, 0, Scheme::scale, 18},
      {"Q2_K", Type::Q2_K, 256, 16, 4, 0, Scheme::sub_scale_min, 84},
      {"Q3_K", Type::Q3_K, 256, 16, 8, 4, Scheme::sub_scale, 110},
      {"Q4_K", Type::Q4_K, 256, 32, 16, 0, Scheme::sub_scale_min, 144},
      {"Q5_K", Type::Q5_K, 256, 32, 32, 0, Scheme::sub_scale_min, 176},
      {"Q6_K", Type::Q6_K, 256, 16, 64, 32, Scheme::sub_scale, 210},
  };
  return kFormats[static_cast<int>(t)];
}

// The type named `name` (exact upper-case spelling; the Python layer normalises case). False if unknown.
inline bool parse_type(const std::string& name, Type& out) {
  for (int i = 0; i < kTypeCount; ++i) {
    if (name == format(static_cast<Type>(i)).name) {
      out = static_cast<Type>(i);
      return true;
    }
  }
  return false;
}

// One block's stored parameters, in stored precision: d and dmin are fp16 values (dmin is Q4_1/Q5_1's m),
// sc/m the k-quants' integer sub-block scales and mins (Q3_K: sc in -32..31, i.e. the stored 6 bits - 32;
// Q6_K: int8; Q2_K: 4 bits; Q4_K/Q5_K: 6 bits).
struct BlockParams {
  float d = 0.0f;
  float dmin = 0.0f;
  std::int8_t sc[16] = {};
  std::uint8_t m[16] = {};
};

// The float16 value nearest to x (round half to even, as GGML_FP32_TO_FP16 and NumPy's astype(float16)).
inline float round_fp16(float x) { return static_cast<float>(Eigen::half(x)); }

// a * b rounded to float32 and kept apart from any following add: GCC contracts a*b + c into one fused
// multiply-add under -march=native unless the product is hidden behind this (empty) barrier.
inline float rounded_product(float a, float b) {
  float p = a * b;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __asm__("" : "+x"(p));
#elif defined(__GNUC__) && defined(__aarch64__)
  __asm__("" : "+w"(p));
#else
  volatile float v = p;
  p = v;
#endif
  return p;
}

// The grid of one sub-block: value(code) = mul * level(code) + add.
struct SubGrid {
  float mul = 0.0f;
  float add = -0.0f;
};

inline SubGrid sub_grid(const Format& f, const BlockParams& b, int s) {
  switch (f.scheme) {
    case Scheme::scale:
      return {b.d, -0.0f};
    case Scheme::scale_min:
      return {b.d, b.dmin};
    case Scheme::sub_scale:
      return {rounded_product(b.d, static_cast<float>(b.sc[s])), -0.0f};
    case Scheme::sub_scale_min:
      return {rounded_product(b.d, static_cast<float>(b.sc[s])), -rounded_product(b.dmin, static_cast<float>(b.m[s]))};
  }
  return {};
}

inline float level(const Format& f, int code) {
  return f.type == Type::IQ4_NL ? static_cast<float>(kIq4nlLevels[code]) : static_cast<float>(code - f.offset);
}

// The exact value llama.cpp dequantizes `code` of this sub-block to.
inline float value(const Format& f, const SubGrid& g, int code) {
  return rounded_product(g.mul, level(f, code)) + g.add;
}

// llama.cpp's nearest_int: round half to even through the 1.5 * 2^23 trick (|x| < 2^22).
inline int nearest_int(float x) {
  const float shifted = x + 12582912.0f;
  std::int32_t bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  return (bits & 0x007fffff) - 0x00400000;
}

// IQ4_NL's table index nearest to x (in units of d): the first level whose midpoint with the next one
// exceeds x (llama.cpp's best_index_int8).
inline int nearest_table_index(float x) {
  const float x2 = x + x;
  int idx = 0;
  for (int step = 8; step > 0; step >>= 1) {
    const int j = idx + step;
    idx = (x2 >= static_cast<float>(kIq4nlLevels[j - 1] + kIq4nlLevels[j])) ? j : idx;
  }
  return idx;
}

// The code of the grid point nearest to w (up to float rounding at a midpoint).
inline int nearest_code(const Format& f, const SubGrid& g, float w) {
  if (g.mul == 0.0f) return f.type == Type::IQ4_NL ? 8 : f.offset;
  if (f.type == Type::IQ4_NL) return nearest_table_index(w / g.mul);
  const float t = (w - g.add) / g.mul;
  const float hi = static_cast<float>(f.levels - 1 - f.offset), lo = static_cast<float>(-f.offset);
  return nearest_int(std::fmin(std::fmax(t, lo), hi)) + f.offset;
}

}  // namespace quantease::gguf
