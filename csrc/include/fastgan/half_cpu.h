// IEEE binary16 and bfloat16 <-> float on the host, bit-exact with round-to-nearest-even,
// so the CPU kernels accept the same storage dtypes as the CUDA ones.
#pragma once
#include <cstdint>
#include <cstring>

namespace fastgan {

struct half_t { uint16_t bits; };
struct bf16_t { uint16_t bits; };

inline float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float to_float(bf16_t h) { return bits_to_float(uint32_t(h.bits) << 16); }

inline bf16_t bf16_from_float(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{uint16_t((u >> 16) | 0x40u)};  // quiet NaN
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return bf16_t{uint16_t((u + rounding) >> 16)};
}

inline float to_float(half_t h) {
  uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1fu;
  uint32_t man = h.bits & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);
    // subnormal: value = man * 2^-24
    float v = float(man) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
}

inline half_t half_from_float(float f) {
  uint32_t u = float_to_bits(f);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return half_t{uint16_t(sign | 0x7e00u)};
  if (a >= 0x477ff000u) return half_t{uint16_t(sign | 0x7c00u)};  // rounds to >= 65520: inf
  if (a < 0x38800000u) {
    // result is subnormal or zero: add 0.5 (as float) so the FPU's RNE does the rounding at 2^-24
    float v = bits_to_float(a) + 0.5f;
    return half_t{uint16_t(sign | uint16_t(float_to_bits(v) - 0x3f000000u))};
  }
  uint32_t mant_odd = (a >> 13) & 1u;
  a += 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) and round to nearest even
  return half_t{uint16_t(sign | uint16_t(a >> 13))};
}

template <typename T> struct Storage;
template <> struct Storage<float> {
  static double load(float v) { return v; }
  static float store(double v) { return float(v); }
};
template <> struct Storage<double> {
  static double load(double v) { return v; }
  static double store(double v) { return v; }
};
template <> struct Storage<half_t> {
  static double load(half_t v) { return to_float(v); }
  static half_t store(double v) { return half_from_float(float(v)); }
};
template <> struct Storage<bf16_t> {
  static double load(bf16_t v) { return to_float(v); }
  static bf16_t store(double v) { return bf16_from_float(float(v)); }
};

}  // namespace fastgan
