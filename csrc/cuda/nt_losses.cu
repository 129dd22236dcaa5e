// CUDA kernels of the NTGAN mu-weighted clean/noisy losses. Per-sample math: fastgan/nt_losses_math.h.
// Forward: a batch of logits (hundreds to thousands) is one block, reduced in one launch. Larger inputs run
// one block per chunk of a side, each writing its partial sum to a scratch buffer the caller allocates, and a
// one-block second pass adds the partials in block order: deterministic, and no atomics or memset, so it is
// safe to capture in a CUDA graph.
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

// Loss terms of logits [k0, k1) of one side (n logits), and its JS weights when w != nullptr. The forward looks
// bound by its arithmetic (an estimate of its instructions per logit; an H200 measured 0.44-0.46 of a device copy's
// bandwidth, unmeasured since the change below): the side's two coefficients are divided once (nt::half_coefs),
// not per logit, and a logit's loss term and weight share one exponential (the values nt::coef, nt::term and
// penalty::weight give apart, bit for bit). Each thread loads kUnroll logits before computing on any and adds its
// terms in index order, so the sums are those of the plain loop.
constexpr int kUnroll = 4;

// Adds the term to s in place: returned through a select (0 for a side outside the loss), it kept nvcc from fusing
// the multiply into the sum (a separate mul and add, rounding twice, where the plain loop had one fma).
template <typename A>
__device__ __forceinline__ void add_term(A& s, A psi, int64_t k, const nt::HalfCoefs<A>& c, int sign,
                                         int weight_code, A* __restrict__ w) {
  const A e = fg_exp(psi < A(0) ? psi : -psi);  // exp(-|psi|), as softplus and the weight each compute it
  if (w != nullptr) w[k] = penalty::weight_from<A>(weight_code, psi, e);
  if (sign != 0) s += (k < c.n_clean ? c.clean : c.noisy) * nt::softplus_from<A>(A(sign) * psi, e);
}

template <typename A>
__device__ A side_forward(const A* __restrict__ logits, int64_t k0, int64_t k1, int64_t n, int64_t stride, int sign,
                          A mu, int reduction, int weight_code, A* __restrict__ w) {
  const nt::HalfCoefs<A> c = nt::half_coefs<A>(n, mu, reduction);
  A s = A(0);
  const int64_t step = blockDim.x;
  int64_t k = k0 + threadIdx.x;
  for (; k + (kUnroll - 1) * step < k1; k += kUnroll * step) {
    A psi[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) psi[u] = logits[(k + u * step) * stride];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) add_term<A>(s, psi[u], k + u * step, c, sign, weight_code, w);
  }
  for (; k < k1; k += step) add_term<A>(s, logits[k * stride], k, c, sign, weight_code, w);
  return s;
}

template <typename A>
__global__ void __launch_bounds__(kThreads) forward_kernel(NtLossArgs a) {
  __shared__ A smem[kThreads / 32];
  const A mu = read_mu<A>(a);
  const A* lr = reinterpret_cast<const A*>(a.logits_real);
  const A* lf = reinterpret_cast<const A*>(a.logits_fake);
  A* wr = reinterpret_cast<A*>(a.w_real);
  A* wf = reinterpret_cast<A*>(a.w_fake);
  A s;
  if (a.partials == 0) {
    s = side_forward<A>(lr, 0, a.n_real, a.n_real, a.s_real, nt::real_sign(a.kind), mu, a.reduction,
                        penalty::kJsReal, wr);
    s += side_forward<A>(lf, 0, a.n_fake, a.n_fake, a.s_fake, nt::fake_sign(a.kind), mu, a.reduction,
                         penalty::kJsFake, wf);
  } else {
    // blocks [0, real_blocks) cover the real logits, the rest the fake ones
    const int64_t real_blocks = (a.n_real + a.chunk - 1) / a.chunk;
    const bool real = int64_t(blockIdx.x) < real_blocks;
    const int64_t k0 = (real ? int64_t(blockIdx.x) : int64_t(blockIdx.x) - real_blocks) * a.chunk;
    const int64_t n = real ? a.n_real : a.n_fake;
    s = side_forward<A>(real ? lr : lf, k0, k0 + a.chunk < n ? k0 + a.chunk : n, n, real ? a.s_real : a.s_fake,
                        real ? nt::real_sign(a.kind) : nt::fake_sign(a.kind), mu, a.reduction,
                        real ? penalty::kJsReal : penalty::kJsFake, real ? wr : wf);
  }
  s = group_sum<A, kThreads>(s, smem);
  if (threadIdx.x == 0) {
    if (a.partials != 0)
      reinterpret_cast<A*>(a.partials)[blockIdx.x] = s;
    else
      *reinterpret_cast<A*>(a.loss) = s;
  }
}

// Second pass: the partial sums in a fixed order (each thread a fixed stride, then group_sum's fixed tree).
template <typename A>
__global__ void __launch_bounds__(kThreads) sum_partials_kernel(const A* __restrict__ partials, int64_t n,
                                                                A* __restrict__ loss) {
  __shared__ A smem[kThreads / 32];
  A s = A(0);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += partials[i];
  s = group_sum<A, kThreads>(s, smem);
  if (threadIdx.x == 0) *loss = s;
}

template <typename A>
__global__ void __launch_bounds__(kThreads) backward_kernel(NtLossArgs a) {
  const A mu = read_mu<A>(a);
  const A go = *reinterpret_cast<const A*>(a.go);
  const int64_t total = a.n_real + a.n_fake;
  // each side's coefficients divided once, not per logit (as in the forward)
  const nt::HalfCoefs<A> c_real = nt::half_coefs<A>(a.n_real, mu, a.reduction);
  const nt::HalfCoefs<A> c_fake = nt::half_coefs<A>(a.n_fake, mu, a.reduction);
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const bool real = t < a.n_real;
    const int64_t k = real ? t : t - a.n_real;
    const nt::HalfCoefs<A>& c = real ? c_real : c_fake;
    const A* logits = reinterpret_cast<const A*>(real ? a.logits_real : a.logits_fake);
    const A* gw = reinterpret_cast<const A*>(real ? a.gw_real : a.gw_fake);
    A* d = reinterpret_cast<A*>(real ? a.d_real : a.d_fake);
    const int sign = real ? nt::real_sign(a.kind) : nt::fake_sign(a.kind);
    const A psi = logits[k * (real ? a.s_real : a.s_fake)];
    A v = sign != 0 ? go * (k < c.n_clean ? c.clean : c.noisy) * nt::slope<A>(psi, A(sign)) : A(0);
    if (gw != nullptr) {
      A w, dw;
      penalty::weight_and_slope<A>(real ? penalty::kJsReal : penalty::kJsFake, psi, &w, &dw);
      v += gw[k] * dw;
    }
    d[k] = v;
  }
}

int64_t forward_blocks(const NtLossArgs& a) {
  if (a.partials == 0) return 1;
  return (a.n_real + a.chunk - 1) / a.chunk + (a.n_fake + a.chunk - 1) / a.chunk;
}

template <typename A>
int launch_forward(const NtLossArgs& a, cudaStream_t st) {
  const int64_t blocks = forward_blocks(a);
  if (blocks < 1 || blocks > int64_t(0x7fffffff)) return static_cast<int>(cudaErrorInvalidValue);
  forward_kernel<A><<<dim3(unsigned(blocks)), kThreads, 0, st>>>(a);
  if (a.partials != 0)
    sum_partials_kernel<A><<<1, kThreads, 0, st>>>(reinterpret_cast<const A*>(a.partials), blocks,
                                                   reinterpret_cast<A*>(a.loss));
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int nt_losses_forward(const NtLossArgs& a, std::uintptr_t stream) {
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  if (a.partials != 0 && a.chunk <= 0) return static_cast<int>(cudaErrorInvalidValue);
  if (a.dtype == kFloat64) return launch_forward<double>(a, st);
  if (a.dtype == kFloat32) return launch_forward<float>(a, st);
  return static_cast<int>(cudaErrorInvalidValue);
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
