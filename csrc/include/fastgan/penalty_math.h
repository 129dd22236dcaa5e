// Per-sample math of the weighted gradient-norm penalty p_n = w(psi_n) * ||g_n||^2.
// The CPU kernels (csrc/cpu/penalty.cpp) and the CUDA kernels (csrc/cuda/penalty.cu) both call these,
// so the CPU tests exercise the exact formulas the GPU runs.
#pragma once
#include <cmath>
#include "fastgan/common.h"

namespace fastgan {
namespace penalty {

// Weight codes passed from Python (fastgan/ops/penalty.py WEIGHTS keeps the same table). kSigmoid (sigmoid(psi)),
// kExp (exp(psi)) and kKl (exp(psi - 1)) are the f-GAN weights of Roth et al. eq. 19 (fastgan/methods/fdiv.py: GAN
// and JS; squared Hellinger, times 2; KL, whose own form stays finite up to psi ~ 89.7 where e^-1 exp(psi) would
// overflow float32 from 88.7).
enum Weight : int { kOne = 0, kJsReal = 1, kJsFake = 2, kSigmoid = 3, kExp = 4, kKl = 5 };
constexpr int kLastWeight = kKl;

FG_HD constexpr bool is_exp_weight(int code) { return code == kExp || code == kKl; }

FG_HD constexpr bool is_logistic_weight(int code) { return code == kJsReal || code == kJsFake || code == kSigmoid; }

// sigmoid(psi) and 1 - sigmoid(psi) = sigmoid(-psi) from one e = exp(-|psi|) and r = 1 / (1 + e): no overflow, and
// no cancellation in 1 - sigmoid for large psi.
template <typename A>
struct Sigmoids {
  A s, q;  // sigmoid(psi), sigmoid(-psi)
};

template <typename A>
FG_HD Sigmoids<A> sigmoids_from(A psi, A e, A r) {
  return {psi >= A(0) ? r : e * r, psi >= A(0) ? e * r : r};
}

// w(psi) and dw/dpsi from e = exp(-|psi|) and r = 1 / (1 + e), which the caller computes (nt_losses' CUDA backward
// shares them with the loss's slope).
// kExp and kKl take their own exponential of psi (e is of -|psi|).
template <typename A>
FG_HD void weight_and_slope_recip(int code, A psi, A e, A r, A* w, A* dw) {
  if (is_exp_weight(code)) {
    *w = fg_exp(code == kKl ? psi - A(1) : psi);
    *dw = *w;
    return;
  }
  if (!is_logistic_weight(code)) {
    *w = A(1);
    *dw = A(0);
    return;
  }
  const Sigmoids<A> sq = sigmoids_from(psi, e, r);
  const A s = sq.s, q = sq.q;
  if (code == kJsReal) {
    *w = q * q;                 // (1 - s)^2
    *dw = A(-2) * s * q * q;    // -2 s (1 - s)^2
  } else if (code == kJsFake) {
    *w = s * s;
    *dw = A(2) * s * s * q;     // 2 s^2 (1 - s)
  } else {
    *w = s;
    *dw = s * q;                // s (1 - s)
  }
}

template <typename A>
FG_HD void weight_and_slope(int code, A psi, A* w, A* dw) {
  if (!is_logistic_weight(code)) {  // e and r unused
    weight_and_slope_recip(code, psi, A(0), A(1), w, dw);
    return;
  }
  const A e = fg_exp(psi >= A(0) ? -psi : psi);
  weight_and_slope_recip(code, psi, e, A(1) / (A(1) + e), w, dw);
}

// The JS weight alone, real ((1 - s)^2) or fake (s^2), from e = exp(-|psi|), per logit in nt_losses' CUDA forward:
// the values weight_and_slope gives, without its branch on the code (one select), and with 1 / (1 + e) as
// fg_recip_1_2 (the same value as the division, without its branch; the penalty's kernels, once per row, keep the
// division).
template <typename A>
FG_HD A js_weight_from(bool real, A psi, A e) {
  const A r = fg_recip_1_2(A(1) + e);
  const A t = (psi >= A(0)) == real ? e * r : r;  // real: sigmoid(-psi); fake: sigmoid(psi)
  return t * t;
}

template <typename A>
FG_HD A weight(int code, A psi) {
  A w, dw;
  weight_and_slope(code, psi, &w, &dw);
  return w;
}

// The weight code of row n in a batch whose rows before `split` take `weight` and the others `weight2`
// (js_penalty's real and fake rows in one pass; split = B for one weight).
FG_HD int row_code(int64_t n, int64_t split, int weight, int weight2) { return n < split ? weight : weight2; }

// Backward of p_n for upstream gradient go_n: dgrad = scale * g, dlogit = dw * (||g||^2 * go). w and dw last: an
// exponential weight near the top of float32's range (e^psi past 1.7e38) must not overflow as 2 w, nor a penalty
// past it (w ||g||^2, inf) as dw ||g||^2, where the upstream (a mean's 1 / B) brings the product back in range, as
// torch's autograd of the formula does.
template <typename A>
FG_HD A grad_scale(A w, A go) { return w * (A(2) * go); }

template <typename A>
// dw = 0 (weight "one", or a saturated weight) gives 0 even where ||g||^2 overflowed to inf (0 * inf = nan)
FG_HD A logit_grad(A dw, A sq_norm, A go) { return dw == A(0) ? A(0) : dw * (sq_norm * go); }

}  // namespace penalty
}  // namespace fastgan
