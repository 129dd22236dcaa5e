// Per-sample math of the NTGAN mu-weighted clean/noisy losses (fastgan/reference/nt_losses.py), shared by
// csrc/cpu/nt_losses.cpp and csrc/cuda/nt_losses.cu. A batch of N logits is clean in [0, N/2), noisy after.
#pragma once
#include <cmath>
#include "fastgan/common.h"
#include "fastgan/penalty_math.h"

namespace fastgan {
namespace nt {

// Same tables as fastgan/ops/nt_losses.py.
enum Kind : int { kDiscriminator = 0, kGenerator = 1 };
enum Reduction : int { kMean = 0, kSum = 1 };

// log(1 + e) for e = exp(-|x|) in [0, 1]. float: 2 atanh(s), s = e / (2 + e) in [0, 1/3] (no cancellation for a
// small e), as t = 2s = e / (1 + e/2), 1 / (1 + e/2) rounded as IEEE division rounds it (fg_recip_1_2), and
// t (1 + t^2/12 + t^4/80 + ...) to t^14 / (15 * 4^7), whose next term is below 2e-9 relative: the forward's loop
// went from 56 to 40 instructions a logit (sm_90; log1pf was ~27 of them) in a kernel whose arithmetic, not its
// traffic, bounds it. At most 3.2 ulp from float64's log1p over [0, 1] (log1pf: 1); the fp32 tests' 2x rule holds
// (tests/ops/test_nt_losses.py, on the emulator). double: libm's log1p.
FG_HD float log1p_unit(float e) {
  const float t = e * fg_recip_1_2(fmaf(0.5f, e, 1.0f));
  const float t2 = t * t;
  float p = 1.0f / 245760.0f;  // 1 / ((2k + 1) 4^k), k = 7 .. 0
  p = fmaf(p, t2, 1.0f / 53248.0f);
  p = fmaf(p, t2, 1.0f / 11264.0f);
  p = fmaf(p, t2, 1.0f / 2304.0f);
  p = fmaf(p, t2, 1.0f / 448.0f);
  p = fmaf(p, t2, 1.0f / 80.0f);
  p = fmaf(p, t2, 1.0f / 12.0f);
  p = fmaf(p, t2, 1.0f);
  return t * p;
}
FG_HD double log1p_unit(double e) { return log1p(e); }

// softplus(x) = ln(1 + e^x) = -ln sigmoid(-x), without overflow; softplus_from takes e = exp(-|x|) from a caller
// that needs the same exponential (the JS weight of the same logit).
template <typename A>
FG_HD A softplus_from(A x, A e) {
  return (x > A(0) ? x : A(0)) + log1p_unit(e);
}

template <typename A>
FG_HD A softplus(A x) {
  const A ax = x < A(0) ? -x : x;
  return softplus_from(x, fg_exp(-ax));
}

// Loss term of one logit: softplus(sign * psi), sign = -1 for "labelled real" (-ln D),
// +1 for "labelled fake" (-ln(1 - D)); its slope is sign * sigmoid(sign * psi).
template <typename A>
FG_HD A term(A psi, A sign) { return softplus(sign * psi); }

// Sign of the real and fake parts: D pushes real up and fake down; G pushes fake up.
FG_HD int real_sign(int kind) { return kind == kDiscriminator ? -1 : 0; }
FG_HD int fake_sign(int kind) { return kind == kDiscriminator ? 1 : -1; }

// Weight of sample n of N: mu on the clean half, 1 - mu on the noisy half, divided by the part's size
// for a mean. Parts are never empty where a sample lies, so no division by zero.
template <typename A>
FG_HD A coef(int64_t n, int64_t N, A mu, int reduction) {
  const int64_t n_clean = N / 2;
  if (n < n_clean) return reduction == kMean ? mu / A(n_clean) : mu;
  return reduction == kMean ? (A(1) - mu) / A(N - n_clean) : A(1) - mu;
}

// coef's two values, for the clean half [0, n_clean) and the noisy half [n_clean, N) of a side of N logits (an
// empty half's value is never used), divided once per side rather than per logit.
template <typename A>
struct HalfCoefs {
  A clean, noisy;
  int64_t n_clean;
};

template <typename A>
FG_HD HalfCoefs<A> half_coefs(int64_t N, A mu, int reduction) {
  return HalfCoefs<A>{coef<A>(0, N, mu, reduction), coef<A>(N / 2, N, mu, reduction), N / 2};
}

}  // namespace nt
}  // namespace fastgan
