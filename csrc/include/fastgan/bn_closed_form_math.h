// Per-channel math of the BatchNorm (batch statistics) layers in the penalty's closed form
// (fastgan/ops/mlp_penalty_bn.py, kernels in fastgan/ops/bn_closed_form.py). The CPU kernels
// (csrc/cpu/bn_closed_form.cpp) and the CUDA kernels (csrc/cuda/bn_closed_form.cu) both call these, so the
// CPU tests exercise the formulas the GPU runs; kernels/bn_closed_form.py (Triton) writes the same formulas.
//
// Tensors are (B, C, S) contiguous (S: the product of the spatial dims, 1 for BatchNorm1d on (B, C)); every
// sum runs over the n = B * S elements of a channel and accumulates in double, products of two inputs formed there. Each op is one reduction pass
// (two for the statistics) and one element-wise pass  out = cx * (X - sx) + ct * (T - st) + cr * (R - sr) + cl * (L - sl)
// with per-channel coefficients computed here from the sums. The shifts sx, st, sr, sl (a channel's mean) are
// subtracted before scaling: rstd * h - rstd * mean would cancel two terms of size |mean| / std in the storage dtype.
#pragma once
#include <cmath>
#include "fastgan/common.h"

namespace fastgan {
namespace bncf {

// A per-channel shift s (a mean) in the storage type T as two parts, hi = T(s) and lo = T(s - hi) (0 for s = ±inf):
// (x - hi) - lo is x - s to about one rounding of the difference (x - hi is exact for x within a factor 2 of hi),
// where x - T(s) errs by up to half an ulp of s, times rstd in xhat: at a mean 100 std from 0, several times the
// error of torch's float32 (tests/ops/test_bn_closed_form.py, float32 on float64 truths of the float32 inputs).
template <typename T>
struct Shift {
  T hi, lo;
};

template <typename T>
FG_HD Shift<T> split_shift(double s) {
  const T hi = T(s);
  const double lo = s - double(hi);
  return Shift<T>{hi, T(lo == lo ? lo : 0.0)};  // an infinite mean: inf - inf, whose NaN would replace x - inf
}

template <typename T>
FG_HD T shifted(T x, Shift<T> s) {
  return (x - s.hi) - s.lo;
}

// Coefficients of the element-wise pass; unused inputs keep 0.
struct Coefs {
  double x, t, r, l;
  double sx = 0.0, st = 0.0, sr = 0.0, sl = 0.0;
};

// Batch statistics: xhat = (h - mean) * rstd, rstd = 1 / sqrt(var + eps), var the biased variance from the
// centred second pass. 1 / sqrt, not rsqrt: CUDA's approximate rsqrt would cost the float32 path its accuracy.
FG_HD Coefs stats_coefs(double mean, double centred_sq, int64_t n, double eps, double* rstd) {
  *rstd = 1.0 / sqrt(centred_sq / double(n) + eps);
  return Coefs{*rstd, 0.0, 0.0, 0.0, mean, 0.0};
}

// BatchNorm's derivative along t (and its backward map, which is symmetric): with scale = gamma * rstd,
//   out = scale * (t - mean(t) - xhat * mean(xhat * t));   also returns mt = mean(t), q = mean(xhat * t).
FG_HD Coefs centered_coefs(double s_t, double s_xt, int64_t n, double scale, double* mt, double* q) {
  *mt = s_t / double(n);
  *q = s_xt / double(n);
  return Coefs{-scale * *q, scale, 0.0, 0.0, 0.0, *mt};
}

// Adjoints of BatchNorm's input h and gamma for cotangents rho (of y = gamma xhat + beta) and lam (of the output
// tangent gamma dxhat(t)), from the sums over the channel of rho, rho xhat, lam, lam xhat and lam (t - mt) (g = gamma,
// or 1 without an affine weight; mt, q from the tangent's centered pass; means: sums / n; t - mt, not t: sum(lam t)
// - mt sum(lam) would cancel terms of size |mt| / std(t)). With p = g mean(lam xhat), c = g mean(lam (t - mt)),
// r2 = rstd^2:
//   d h = rstd g (rho - mean(rho)) + a xhat - r2 q g (lam - mean(lam)) - r2 p (t - mt),
//     a = -rstd g mean(rho xhat) - r2 (c - 3 p q),
// with rho and lam centred before scaling, as t: the constant rstd g mean(rho) - r2 q g mean(lam) of the element
// pass cancelled terms of size rstd g |mean(rho)| in the storage dtype (dh up to 12x the oracle's error for a rho of mean
// 1e5 std, as when BatchNorm sits under the output Linear and rho ~ a W_out is nearly the same for every sample),
//   d gamma = sum(rho xhat) + rstd (sum(lam (t - mt)) - q sum(lam xhat))   (= sum(rho xhat + lam dxhat)),
//   d beta = sum(rho).
// (Derived in fastgan/ops/mlp_penalty_bn.py; tests/ops/test_bn_closed_form.py checks the reference, the same d h
// grouped by its terms, against autograd through BatchNorm, and these kernels against the reference.)
FG_HD Coefs vjp_coefs(double s_r, double s_rx, double s_l, double s_lx, double s_ltc, int64_t n, double rstd, double g,
                      double mt, double q, double* d_gamma, double* d_beta) {
  const double inv = 1.0 / double(n);
  const double r2 = rstd * rstd;
  const double p = g * s_lx * inv;
  const double c = g * s_ltc * inv;
  *d_gamma = s_rx + rstd * (s_ltc - q * s_lx);
  *d_beta = s_r;
  Coefs k;
  k.r = rstd * g;
  k.x = -rstd * g * s_rx * inv - r2 * (c - 3.0 * p * q);
  k.l = -r2 * q * g;
  k.t = -r2 * p;  // on t - mt
  k.st = mt;
  k.sr = s_r * inv;
  k.sl = s_l * inv;
  return k;
}

}  // namespace bncf
}  // namespace fastgan
