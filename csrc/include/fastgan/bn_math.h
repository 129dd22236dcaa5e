// Per-feature and per-element math of the fused BatchNorm(+ReLU) layer and the reconstruction loss of the
// DFM denoiser (fastgan/ops/denoiser.py). The CPU kernels (csrc/cpu/denoiser.cpp) and the CUDA kernels
// (csrc/cuda/denoiser.cu) both call these, so the CPU tests exercise the formulas the GPU runs;
// kernels/denoiser.py (Triton) writes the same formulas.
//
// The layer sees y = x W^T without the Linear bias b. Both modes normalise with a per-feature shift:
//   training: shift = mean_batch(y)      (b cancels in (y + b) - mean(y + b))
//   eval:     shift = running_mean - b
// so xhat = (y - shift) * invstd in both, and the backward differs only in the batch-statistics terms.
#pragma once
#include <cmath>
#include "fastgan/common.h"

namespace fastgan {
namespace bn {

FG_HD float fg_sqrt(float x) { return sqrtf(x); }
FG_HD double fg_sqrt(double x) { return sqrt(x); }

// 1 / sqrt, not rsqrt: the approximate CUDA rsqrtf would cost the fp32 path its accuracy budget.
template <typename A>
FG_HD A inv_std(A var, A eps) { return A(1) / fg_sqrt(var + eps); }

// Per-feature statistics of a training batch: sum and centred sum of squares over B rows.
// running_* are nn.BatchNorm1d's buffers: the mean of (y + b) and the unbiased variance.
template <typename A>
FG_HD void train_stats(A sum, A centred_sq, int64_t B, A eps, A* shift, A* invstd) {
  A mean = sum / A(B);
  *shift = mean;
  *invstd = inv_std(centred_sq / A(B), eps);
}

template <typename A>
FG_HD void running_update(A mean, A centred_sq, int64_t B, A bias, A momentum, A* running_mean, A* running_var) {
  A unbiased = B > 1 ? centred_sq / A(B - 1) : A(0);
  *running_mean = (A(1) - momentum) * (*running_mean) + momentum * (mean + bias);
  *running_var = (A(1) - momentum) * (*running_var) + momentum * unbiased;
}

template <typename A>
FG_HD void eval_stats(A running_mean, A running_var, A bias, A eps, A* shift, A* invstd) {
  *shift = running_mean - bias;
  *invstd = inv_std(running_var, eps);
}

// out = relu(gamma * xhat + beta) with xhat = (y - shift) * invstd; scale = gamma * invstd.
template <typename A>
FG_HD A normalize(A y, A shift, A scale, A beta, bool relu) {
  A z = (y - shift) * scale + beta;
  return (relu && z <= A(0)) ? A(0) : z;  // NaN propagates, as in torch.relu
}

// Gradient reaching z = gamma * xhat + beta. The mask reads the stored forward output, not a recomputed z,
// so it agrees with the forward bit for bit (as torch's threshold_backward).
template <typename A>
FG_HD A relu_grad(A dout, A out, bool relu) { return (relu && out <= A(0)) ? A(0) : dout; }

// dL/dy per element, given the per-feature sums dbeta = sum dz and dgamma = sum dz * xhat.
//   training: gamma * invstd * (dz - dbeta / B - xhat * dgamma / B)   (batch statistics depend on y)
//   eval:     gamma * invstd * dz
template <typename A>
FG_HD A input_grad(A dz, A xhat, A scale, A mean_dz, A mean_dzx, bool training) {
  return training ? scale * (dz - mean_dz - xhat * mean_dzx) : scale * dz;
}

// Bias gradient: in training mode b cancels in the normalisation, so its gradient is exactly zero;
// in eval mode it is sum_n dy = gamma * invstd * dbeta.
template <typename A>
FG_HD A bias_grad(A scale, A dbeta, bool training) { return training ? A(0) : scale * dbeta; }

}  // namespace bn

namespace recon {

// Per-sample reconstruction loss l_n = sum_f (y + b - t)^2 and its backward dy = 2 go_n (y + b - t),
// db = sum_n dy, dt = -dy.
template <typename A>
FG_HD A diff(A y, A bias, A target) { return y + bias - target; }

template <typename A>
FG_HD A grad(A go, A d) { return A(2) * go * d; }

// The incoming gradient every row shares when go_div > 0 (a mean over the batch: go_div = B; a sum: 1): go[0] /
// go_div with the bits of autograd's MeanBackward (go / B) on the device the kernel runs on. torch divides by a
// number on the CPU, but on a GPU multiplies by its reciprocal, rounded first (ATen's div_true_kernel_cuda for a
// CPU-scalar divisor), which is 1 ulp off the quotient at times (float32: B = 7, 13, 37, ...): `reciprocal` for the
// CUDA kernels. go_div == 0: go holds a value per row (this returns 0).
template <typename A>
FG_HD A shared_go(const A* go, int64_t go_div, bool reciprocal) {
  if (go_div <= 0) return A(0);
  return reciprocal ? go[0] * (A(1) / A(go_div)) : go[0] / A(go_div);
}

}  // namespace recon
}  // namespace fastgan
