// Host-side entry points of the CUDA kernels of the penalty closed form's BatchNorm passes
// (csrc/cuda/bn_closed_form.cu). Raw device pointers (0 for an absent gamma / dgamma / dbeta), sizes of the
// contiguous (B, C, S) tensors, dtype code (float32 or float64) and a cudaStream_t passed as an integer; the
// return value is a cudaError_t code. Per-channel vectors have C contiguous elements. Math: bn_closed_form_math.h.
#pragma once
#include <cstdint>

namespace fastgan {
namespace cuda {

// xhat = (h - mean) * rstd and rstd (C,), batch statistics over B * S elements per channel.
int bn_cf_stats(std::uintptr_t h, std::uintptr_t xhat, std::uintptr_t rstd, int dtype, int64_t B, int64_t C, int64_t S,
                double eps, std::uintptr_t stream);

// out = gamma rstd (t - mean t - xhat mean(xhat t)); mt = mean t, q = mean(xhat t) (C,).
int bn_cf_centered(std::uintptr_t xhat, std::uintptr_t t, std::uintptr_t rstd, std::uintptr_t gamma, std::uintptr_t out,
                   std::uintptr_t mt, std::uintptr_t q, int dtype, int64_t B, int64_t C, int64_t S,
                   std::uintptr_t stream);

// dh (B, C, S), dgamma and dbeta (C,) of BatchNorm for cotangents rho and lam (bncf::vjp_coefs).
int bn_cf_vjp(std::uintptr_t rho, std::uintptr_t lam, std::uintptr_t xhat, std::uintptr_t t, std::uintptr_t rstd,
              std::uintptr_t gamma, std::uintptr_t mt, std::uintptr_t q, std::uintptr_t dh, std::uintptr_t dgamma,
              std::uintptr_t dbeta, int dtype, int64_t B, int64_t C, int64_t S, std::uintptr_t stream);

}  // namespace cuda
}  // namespace fastgan
