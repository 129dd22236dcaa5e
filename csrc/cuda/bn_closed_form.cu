// CUDA kernels of the BatchNorm (batch statistics) passes of the penalty's closed form; math in
// fastgan/bn_closed_form_math.h (shared with the CPU kernels). One block per channel walks the channel's
// B * S elements of a contiguous (B, C, S) tensor: a reduction pass (two for the statistics) whose sums meet
// through warp shuffles and shared memory in double, the coefficients, then the element-wise pass, all in one
// launch, with no atomics (deterministic). A layer of few channels gets 1024 threads a block instead of 256, so its
// few blocks keep more loads in flight. Untuned: written without a GPU to measure on; the DCGAN layers it serves
// have C = 64-512 channels of 4-256 positions times the batch.
#include <cuda_runtime.h>
#include <cstdint>
#include "fastgan/bn_closed_form_math.h"
#include "fastgan/common.h"
#include "fastgan/cuda_api_bn_closed_form.h"

namespace fastgan {
namespace cuda {
namespace {

using bncf::Coefs;

constexpr int kThreads = 256;      // threads a block, for layers of kFewChannels channels or more
constexpr int kMaxThreads = 1024;  // below that
constexpr int kFewChannels = 128;
constexpr int kMaxWarps = kMaxThreads / 32;

// Offset of element i (in [0, B * S)) of channel c.
struct At {
  uint32_t C, S;
  __device__ __forceinline__ int64_t operator()(uint32_t i, uint32_t c) const {
    const uint32_t b = i / S;
    return (int64_t(b) * C + c) * S + (i - b * S);
  }
};

// Sums v over the block (blockDim.x a multiple of 32, at most kMaxThreads); every thread gets the totals. Ends with
// a barrier, so sh can be reused.
template <int NS>
__device__ __forceinline__ void block_sum(double (&v)[NS], double (*sh)[NS]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
  for (int k = 0; k < NS; ++k)
    for (int off = 16; off > 0; off >>= 1) v[k] += __shfl_down_sync(0xffffffffu, v[k], off);
  if (lane == 0)
#pragma unroll
    for (int k = 0; k < NS; ++k) sh[warp][k] = v[k];
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < NS; ++k) {
      v[k] = lane < warps ? sh[lane][k] : 0.0;
      for (int off = 16; off > 0; off >>= 1) v[k] += __shfl_down_sync(0xffffffffu, v[k], off);
    }
    if (lane == 0)
#pragma unroll
      for (int k = 0; k < NS; ++k) sh[0][k] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < NS; ++k) v[k] = sh[0][k];
  __syncthreads();
}

template <typename T>
__global__ void __launch_bounds__(kMaxThreads) stats_kernel(const T* __restrict__ h, T* __restrict__ xhat,
                                                         T* __restrict__ rstd, uint32_t n, At at, double eps) {
  __shared__ double sh[kMaxWarps][1];
  const uint32_t c = blockIdx.x;
  double s[1] = {0.0};
  for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) s[0] += double(h[at(i, c)]);
  block_sum<1>(s, sh);
  const double mean = s[0] / double(n);
  double q[1] = {0.0};
  for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
    const double d = double(h[at(i, c)]) - mean;
    q[0] += d * d;
  }
  block_sum<1>(q, sh);
  double r;
  const Coefs k = bncf::stats_coefs(mean, q[0], n, eps, &r);
  if (threadIdx.x == 0) rstd[c] = T(r);
  const T cx = T(k.x);
  const bncf::Shift<T> sx = bncf::split_shift<T>(k.sx);
  for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t o = at(i, c);
    xhat[o] = cx * bncf::shifted(h[o], sx);
  }
}

template <typename T>
__global__ void __launch_bounds__(kMaxThreads) centered_kernel(const T* __restrict__ xhat, const T* __restrict__ t,
                                                            const T* __restrict__ rstd, const T* __restrict__ gamma,
                                                            T* __restrict__ out, T* __restrict__ mt, T* __restrict__ q,
                                                            uint32_t n, At at) {
  __shared__ double sh[kMaxWarps][2];
  const uint32_t c = blockIdx.x;
  double s[2] = {0.0, 0.0};
  for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t o = at(i, c);
    const T tv = t[o];
    s[0] += double(tv);
    s[1] += double(xhat[o]) * double(tv);
  }
  block_sum<2>(s, sh);
  const double scale = double(rstd[c]) * (gamma != nullptr ? double(gamma[c]) : 1.0);
  double m, qq;
  const Coefs k = bncf::centered_coefs(s[0], s[1], n, scale, &m, &qq);
  if (threadIdx.x == 0) {
    mt[c] = T(m);
    q[c] = T(qq);
  }
  const T cx = T(k.x), ct = T(k.t);
  const bncf::Shift<T> st = bncf::split_shift<T>(k.st);
  for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t o = at(i, c);
    out[o] = cx * xhat[o] + ct * bncf::shifted(t[o], st);
  }
}

template <typename T>
__global__ void __launch_bounds__(kMaxThreads) vjp_kernel(const T* __restrict__ rho, const T* __restrict__ lam,
                                                       const T* __restrict__ xhat, const T* __restrict__ t,
                                                       const T* __restrict__ rstd, const T* __restrict__ gamma,
                                                       const T* __restrict__ mt, const T* __restrict__ q,
                                                       T* __restrict__ dh, T* __restrict__ dgamma,
                                                       T* __restrict__ dbeta, uint32_t n, At at) {
  __shared__ double sh[kMaxWarps][5];
  const uint32_t c = blockIdx.x;
  double s[5] = {0.0, 0.0, 0.0, 0.0, 0.0};
  const T mtc = mt[c];
  for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t o = at(i, c);
    const T r = rho[o], l = lam[o], x = xhat[o];
    s[0] += double(r);
    s[1] += double(r) * double(x);
    s[2] += double(l);
    s[3] += double(l) * double(x);
    s[4] += double(l) * (double(t[o]) - double(mtc));
  }
  block_sum<5>(s, sh);
  const double g = gamma != nullptr ? double(gamma[c]) : 1.0;
  double dg, db;
  const Coefs k = bncf::vjp_coefs(s[0], s[1], s[2], s[3], s[4], n, double(rstd[c]), g, double(mt[c]), double(q[c]),
                                  &dg, &db);
  if (threadIdx.x == 0) {
    if (dgamma != nullptr) dgamma[c] = T(dg);
    if (dbeta != nullptr) dbeta[c] = T(db);
  }
  const T cx = T(k.x), ct = T(k.t), cr = T(k.r), cl = T(k.l);
  const bncf::Shift<T> st = bncf::split_shift<T>(k.st), sr = bncf::split_shift<T>(k.sr),
                       sl = bncf::split_shift<T>(k.sl);
  for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t o = at(i, c);
    dh[o] = cx * xhat[o] + ct * bncf::shifted(t[o], st) + cr * bncf::shifted(rho[o], sr) +
            cl * bncf::shifted(lam[o], sl);
  }
}

template <typename T>
const T* cp(std::uintptr_t p) { return reinterpret_cast<const T*>(p); }
template <typename T>
T* mp(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

// Sizes the kernels index in 32 bits: n = B * S per channel, C, S.
bool fits(int64_t B, int64_t C, int64_t S) {
  const int64_t lim = int64_t(1) << 31;
  return B >= 1 && S >= 1 && C < lim && S < lim && B * S < lim;
}

// launch(T{}, grid, threads, stream, n, at) for the dtype code: one block per channel.
template <typename Launch>
int dispatch(int dtype, int64_t B, int64_t C, int64_t S, std::uintptr_t stream, Launch launch) {
  if (C == 0) return 0;
  if (!fits(B, C, S)) return static_cast<int>(cudaErrorInvalidValue);
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  const At at{uint32_t(C), uint32_t(S)};
  const uint32_t n = uint32_t(B * S);
  const unsigned threads = C < kFewChannels ? kMaxThreads : kThreads;
  switch (dtype) {
    case kFloat32: launch(float{}, unsigned(C), threads, st, n, at); break;
    case kFloat64: launch(double{}, unsigned(C), threads, st, n, at); break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int bn_cf_stats(std::uintptr_t h, std::uintptr_t xhat, std::uintptr_t rstd, int dtype, int64_t B, int64_t C, int64_t S,
                double eps, std::uintptr_t stream) {
  return dispatch(dtype, B, C, S, stream, [&](auto tag, unsigned grid, unsigned threads, cudaStream_t st, uint32_t n, At at) {
    using T = decltype(tag);
    stats_kernel<T><<<grid, threads, 0, st>>>(cp<T>(h), mp<T>(xhat), mp<T>(rstd), n, at, eps);
  });
}

int bn_cf_centered(std::uintptr_t xhat, std::uintptr_t t, std::uintptr_t rstd, std::uintptr_t gamma, std::uintptr_t out,
                   std::uintptr_t mt, std::uintptr_t q, int dtype, int64_t B, int64_t C, int64_t S,
                   std::uintptr_t stream) {
  return dispatch(dtype, B, C, S, stream, [&](auto tag, unsigned grid, unsigned threads, cudaStream_t st, uint32_t n, At at) {
    using T = decltype(tag);
    centered_kernel<T><<<grid, threads, 0, st>>>(cp<T>(xhat), cp<T>(t), cp<T>(rstd), cp<T>(gamma), mp<T>(out),
                                                  mp<T>(mt), mp<T>(q), n, at);
  });
}

int bn_cf_vjp(std::uintptr_t rho, std::uintptr_t lam, std::uintptr_t xhat, std::uintptr_t t, std::uintptr_t rstd,
              std::uintptr_t gamma, std::uintptr_t mt, std::uintptr_t q, std::uintptr_t dh, std::uintptr_t dgamma,
              std::uintptr_t dbeta, int dtype, int64_t B, int64_t C, int64_t S, std::uintptr_t stream) {
  return dispatch(dtype, B, C, S, stream, [&](auto tag, unsigned grid, unsigned threads, cudaStream_t st, uint32_t n, At at) {
    using T = decltype(tag);
    vjp_kernel<T><<<grid, threads, 0, st>>>(cp<T>(rho), cp<T>(lam), cp<T>(xhat), cp<T>(t), cp<T>(rstd),
                                             cp<T>(gamma), cp<T>(mt), cp<T>(q), mp<T>(dh), mp<T>(dgamma),
                                             mp<T>(dbeta), n, at);
  });
}

}  // namespace cuda
}  // namespace fastgan
