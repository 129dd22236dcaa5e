// Branch-free double-precision exp, log1p and logistic functions for the CPU kernels' batched loops.
// libm's exp/log1p are scalar calls, which keep a loop over samples from vectorising; these are plain
// arithmetic (polynomials, a division, integer bit tricks), so the compiler vectorises the loops that call
// them. Accuracy: at most 3 ulp of double (measured) for arguments above -708, far below the float32 results
// they feed and as accurate as the scalar double code they replace (tests compare against fastgan.reference
// in float64); below -708 see exp_nonpos. The F32 variants: below 3e-10 relative (see there).
#pragma once
#include <cstdint>
#include <cstring>

namespace fastgan {
namespace poly {

// c[0] x^(N-1) + ... + c[N-1]; N is a compile-time constant, so the loop unrolls.
template <int N>
inline double horner(double x, const double (&c)[N]) {
  double p = c[0];
  for (int k = 1; k < N; ++k) p = p * x + c[k];
  return p;
}

// Each function takes F32: true where the result is stored as float32 (kernels on float32 logits), which
// only needs ~1e-9 relative accuracy (float32's epsilon is 6e-8); the shorter polynomials then save a third
// of the arithmetic. F32 = false: full double accuracy (float64 logits).

// exp(x) for x <= 0. Below -708 the result is held at exp(-708) ~ 3e-308 rather than going subnormal:
// callers only use it as e = exp(-|psi|) in 1 + e, e * r and log1p(e), where that is an error < 1e-307. Where the
// true exp rounds to 0 in double (below -745.13) it is 0: a held e made a saturated JS weight's slope ~1e-307
// instead of 0, which times an overflowed ||g||^2 gave an infinite gradient where the weight does not move (a
// select: the loops still vectorise).
template <bool F32 = false>
inline double exp_nonpos(double x) {
  const bool underflows = x < -745.1332191019412;
  constexpr double kShift = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  constexpr double kLog2e = 1.4426950408889634;
  constexpr double kLn2Hi = 6.93147180369123816490e-01;  // fdlibm's split: n * kLn2Hi is exact
  constexpr double kLn2Lo = 1.90821492927058770002e-10;
  x = x < -708.0 ? -708.0 : x;
  const double t = x * kLog2e + kShift;
  const double n = t - kShift;
  const double r = (x - n * kLn2Hi) - n * kLn2Lo;  // |r| <= ln2 / 2
  // Taylor series of e^r to degree 12: the next term is < 2e-16 relative (degree 8: 2.7e-10 at |r| = ln2/2).
  static constexpr double kExpTaylor[] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0,
                                          1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0,
                                          1.0 / 6.0, 0.5, 1.0, 1.0};
  static constexpr double kExpTaylor8[] = {1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0,
                                           1.0 / 6.0, 0.5, 1.0, 1.0};
  const double p = F32 ? horner(r, kExpTaylor8) : horner(r, kExpTaylor);
  // 2^n from the integer left in t's low mantissa bits (no float -> int conversion, which AVX2 lacks).
  int64_t tb, sb;
  std::memcpy(&tb, &t, sizeof tb);
  const double shift = kShift;
  std::memcpy(&sb, &shift, sizeof sb);
  const uint64_t bits = (uint64_t(tb) - uint64_t(sb) + 1023u) << 52;  // unsigned: a NaN's bits must not overflow
  double scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return underflows ? 0.0 : p * scale;
}

// log(1 + e) for 0 <= e <= 1 as 2 atanh(s), s = e / (2 + e) in [0, 1/3]: no cancellation for small e.
template <bool F32 = false>
inline double log1p_unit(double e) {
  const double s = e / (2.0 + e);
  const double s2 = s * s;
  // 2 s (1 + s^2/3 + s^4/5 + ... + s^30/31): the next term is < 1e-16 relative (to s^18/19: < 2e-11)
  static constexpr double kAtanhSeries[] = {1.0 / 31, 1.0 / 29, 1.0 / 27, 1.0 / 25, 1.0 / 23, 1.0 / 21,
                                            1.0 / 19, 1.0 / 17, 1.0 / 15, 1.0 / 13, 1.0 / 11, 1.0 / 9,
                                            1.0 / 7,  1.0 / 5,  1.0 / 3,  1.0};
  static constexpr double kAtanhSeries9[] = {1.0 / 19, 1.0 / 17, 1.0 / 15, 1.0 / 13, 1.0 / 11,
                                             1.0 / 9,  1.0 / 7,  1.0 / 5,  1.0 / 3,  1.0};
  const double p = F32 ? horner(s2, kAtanhSeries9) : horner(s2, kAtanhSeries);
  return 2.0 * s * p;
}

// sigmoid(psi) and sigmoid(-psi) from one e = exp(-|psi|), as penalty_math.h's weight_and_slope.
struct Logistic {
  double e, s, q;  // e = exp(-|psi|), s = sigmoid(psi), q = sigmoid(-psi)
};

template <bool F32 = false>
inline Logistic logistic(double psi) {
  const double e = exp_nonpos<F32>(psi >= 0.0 ? -psi : psi);
  const double r = 1.0 / (1.0 + e);
  const bool pos = psi >= 0.0;
  return {e, pos ? r : e * r, pos ? e * r : r};
}

// softplus(sign * psi) for sign = +-1, with the e of logistic(psi): |sign * psi| = |psi|.
template <bool F32 = false>
inline double softplus_signed(double psi, double sign, double e) {
  const double x = sign * psi;
  return (x > 0.0 ? x : 0.0) + log1p_unit<F32>(e);
}

// The JS penalty weight of penalty_math.h (code kJsReal: (1 - s)^2, kJsFake: s^2, else 1) and its slope.
inline void js_weight(bool real, const Logistic& l, double* w, double* dw) {
  *w = real ? l.q * l.q : l.s * l.s;
  *dw = real ? -2.0 * l.s * l.q * l.q : 2.0 * l.s * l.s * l.q;
}

}  // namespace poly
}  // namespace fastgan
