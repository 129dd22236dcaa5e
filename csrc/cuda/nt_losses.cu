// CUDA kernels of the NTGAN mu-weighted clean/noisy losses. Per-sample math: fastgan/nt_losses_math.h.
// The forward is one block: the inputs are a batch of logits (hundreds to a few thousand), so one launch
// with a block reduction beats a multi-block reduction plus a second pass, and the sum is deterministic.
#include <algorithm>
#include "fastgan/cuda_api_noise.h"
#include "fastgan/cuda_types.cuh"
#include "fastgan/nt_losses_math.h"

namespace fastgan {
namespace cuda {
namespace {

template <typename A>
__device__ __forceinline__ A read_mu(const NtLossArgs& a) {
  return a.mu != 0 ? *reinterpret_cast<const A*>(a.mu) : A(a.mu_value);
}

template <typename A>
__device__ A side_forward(const A* __restrict__ logits, int64_t n, int64_t stride, int sign, A mu, int reduction,
                          int weight_code, A* __restrict__ w) {
  A s = A(0);
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    const A psi = logits[k * stride];
    if (sign != 0) s += nt::coef<A>(k, n, mu, reduction) * nt::term<A>(psi, A(sign));
    if (w != nullptr) w[k] = penalty::weight<A>(weight_code, psi);
  }
  return s;
}

template <typename A>
__global__ void __launch_bounds__(kThreads) forward_kernel(NtLossArgs a) {
  __shared__ A smem[kThreads / 32];
  const A mu = read_mu<A>(a);
  A s = side_forward<A>(reinterpret_cast<const A*>(a.logits_real), a.n_real, a.s_real, nt::real_sign(a.kind), mu,
                        a.reduction, penalty::kJsReal, reinterpret_cast<A*>(a.w_real));
  s += side_forward<A>(reinterpret_cast<const A*>(a.logits_fake), a.n_fake, a.s_fake, nt::fake_sign(a.kind), mu,
                       a.reduction, penalty::kJsFake, reinterpret_cast<A*>(a.w_fake));
  s = group_sum<A, kThreads>(s, smem);
  if (threadIdx.x == 0) *reinterpret_cast<A*>(a.loss) = s;
}

template <typename A>
__global__ void __launch_bounds__(kThreads) backward_kernel(NtLossArgs a) {
  const A mu = read_mu<A>(a);
  const A go = *reinterpret_cast<const A*>(a.go);
  const int64_t total = a.n_real + a.n_fake;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const bool real = t < a.n_real;
    const int64_t k = real ? t : t - a.n_real;
    const int64_t n = real ? a.n_real : a.n_fake;
    const A* logits = reinterpret_cast<const A*>(real ? a.logits_real : a.logits_fake);
    const A* gw = reinterpret_cast<const A*>(real ? a.gw_real : a.gw_fake);
    A* d = reinterpret_cast<A*>(real ? a.d_real : a.d_fake);
    const int sign = real ? nt::real_sign(a.kind) : nt::fake_sign(a.kind);
    const A psi = logits[k * (real ? a.s_real : a.s_fake)];
    A v = sign != 0 ? go * nt::coef<A>(k, n, mu, a.reduction) * nt::slope<A>(psi, A(sign)) : A(0);
    if (gw != nullptr) {
      A w, dw;
      penalty::weight_and_slope<A>(real ? penalty::kJsReal : penalty::kJsFake, psi, &w, &dw);
      v += gw[k] * dw;
    }
    d[k] = v;
  }
}

}  // namespace

int nt_losses_forward(const NtLossArgs& a, std::uintptr_t stream) {
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  if (a.dtype == kFloat64)
    forward_kernel<double><<<1, kThreads, 0, st>>>(a);
  else if (a.dtype == kFloat32)
    forward_kernel<float><<<1, kThreads, 0, st>>>(a);
  else
    return static_cast<int>(cudaErrorInvalidValue);
  return static_cast<int>(cudaGetLastError());
}

int nt_losses_backward(const NtLossArgs& a, std::uintptr_t stream) {
  const int64_t total = a.n_real + a.n_fake;
  if (total == 0) return 0;
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  const dim3 grid(std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, 4096)));
  if (a.dtype == kFloat64)
    backward_kernel<double><<<grid, kThreads, 0, st>>>(a);
  else if (a.dtype == kFloat32)
    backward_kernel<float><<<grid, kThreads, 0, st>>>(a);
  else
    return static_cast<int>(cudaErrorInvalidValue);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace fastgan
