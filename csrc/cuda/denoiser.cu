// CUDA kernels of the fused DFM denoiser layers; math in fastgan/bn_math.h (shared with the CPU kernels).
// Per-feature kernels use a (32 features) x (16 row lanes) block: loads along a row are coalesced, each
// thread strides over rows, and the 16 partial sums meet in shared memory. Reductions accumulate in double
// (as the CPU kernels do; these kernels are memory-bound, so the FP64 adds cost nothing measurable on
// data-centre GPUs), element-wise math runs in the storage dtype. The GEMMs stay on cuBLAS
// (torch); these kernels are the epilogue (bias, statistics, normalise, ReLU, running stats) and its
// backward, the loss and the corruption.
#include <cuda_runtime.h>
#include <algorithm>
#include "fastgan/bn_math.h"
#include "fastgan/common.h"
#include "fastgan/cuda_api_denoiser.h"

namespace fastgan {
namespace cuda {
namespace {

constexpr int TX = 32;
constexpr int TY = 16;

template <typename T>
__device__ __forceinline__ T load_or(const T* p, int64_t i, T other) { return p != nullptr ? p[i] : other; }

// Sum over the TY row lanes of column tx; valid in thread (tx, 0). Ends with a barrier, so red can be reused.
template <typename T>
__device__ __forceinline__ T column_sum(T v, T (*red)[TX + 1]) {
  red[threadIdx.y][threadIdx.x] = v;
  __syncthreads();
  T tot = T(0);
  if (threadIdx.y == 0) {
#pragma unroll
    for (int k = 0; k < TY; ++k) tot += red[k][threadIdx.x];
  }
  __syncthreads();
  return tot;
}

template <typename T>
__global__ void __launch_bounds__(TX * TY) bn_forward_kernel(
    const T* __restrict__ y, const T* __restrict__ bias, const T* __restrict__ gamma, const T* __restrict__ beta,
    const T* rm, const T* rv, T* __restrict__ out, T* __restrict__ shift, T* __restrict__ invstd, T* rm_out, T* rv_out,
    int64_t* __restrict__ count, int64_t B, int64_t N, bool training, bool track, double momentum, double eps,
    bool relu) {
  __shared__ double red[TY][TX + 1];
  __shared__ double s_mean[TX];
  __shared__ T s_shift[TX], s_scale[TX], s_beta[TX];
  const int tx = threadIdx.x, ty = threadIdx.y;
  // the layer's num_batches_tracked, counted here rather than by a launch of its own (one thread of the grid)
  if (count != nullptr && blockIdx.x == 0 && tx == 0 && ty == 0) *count += 1;
  const int64_t f = int64_t(blockIdx.x) * TX + tx;
  const bool ok = f < N;
  if (training) {
    double s = 0.0;
    if (ok)
      for (int64_t r = ty; r < B; r += TY) s += double(y[r * N + f]);
    const double sum = column_sum(s, red);
    if (ty == 0) s_mean[tx] = sum / double(B);
    __syncthreads();
    const double mean = s_mean[tx];
    double q = 0.0;
    if (ok)
      for (int64_t r = ty; r < B; r += TY) {
        double d = double(y[r * N + f]) - mean;
        q += d * d;
      }
    const double sq = column_sum(q, red);
    if (ty == 0 && ok) {
      double sh, is;
      bn::train_stats<double>(sum, sq, B, eps, &sh, &is);
      shift[f] = s_shift[tx] = T(sh);
      invstd[f] = T(is);
      s_scale[tx] = T(double(gamma[f]) * is);
      s_beta[tx] = beta[f];
      if (track) {
        double m = double(rm[f]), v = double(rv[f]);
        bn::running_update<double>(sh, sq, B, double(load_or(bias, f, T(0))), momentum, &m, &v);
        rm_out[f] = T(m);
        rv_out[f] = T(v);
      }
    }
  } else if (ty == 0 && ok) {
    double sh, is;
    bn::eval_stats<double>(double(rm[f]), double(rv[f]), double(load_or(bias, f, T(0))), eps, &sh, &is);
    shift[f] = s_shift[tx] = T(sh);
    invstd[f] = T(is);
    s_scale[tx] = T(double(gamma[f]) * is);
    s_beta[tx] = beta[f];
  }
  __syncthreads();
  if (!ok) return;
  const T sh = s_shift[tx], sc = s_scale[tx], be = s_beta[tx];
  for (int64_t r = ty; r < B; r += TY) out[r * N + f] = bn::normalize<T>(y[r * N + f], sh, sc, be, relu);
}

template <typename T>
__global__ void __launch_bounds__(TX * TY) bn_backward_kernel(
    const T* __restrict__ dout, const T* __restrict__ out, const T* __restrict__ y, const T* __restrict__ gamma,
    const T* __restrict__ shift, const T* __restrict__ invstd, T* __restrict__ dy, T* __restrict__ dgamma,
    T* __restrict__ dbeta, T* __restrict__ dbias, int64_t B, int64_t N, bool training, bool relu) {
  __shared__ double red[TY][TX + 1];
  __shared__ T s_m1[TX], s_m2[TX];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t f = int64_t(blockIdx.x) * TX + tx;
  const bool ok = f < N;
  const T sh = ok ? shift[f] : T(0), is = ok ? invstd[f] : T(0);
  const T sc = ok ? gamma[f] * is : T(0);
  double a = 0.0, b = 0.0;
  if (ok)
    for (int64_t r = ty; r < B; r += TY) {
      const int64_t i = r * N + f;
      T dz = bn::relu_grad<T>(dout[i], relu ? out[i] : T(1), relu);
      a += double(dz);
      b += double(dz * ((y[i] - sh) * is));
    }
  const double s1 = column_sum(a, red);
  const double s2 = column_sum(b, red);
  if (ty == 0 && ok) {
    dbeta[f] = T(s1);
    dgamma[f] = T(s2);
    dbias[f] = T(bn::bias_grad<double>(double(sc), s1, training));
    s_m1[tx] = T(s1 / double(B));
    s_m2[tx] = T(s2 / double(B));
  }
  __syncthreads();
  if (!ok) return;
  const T m1 = s_m1[tx], m2 = s_m2[tx];
  for (int64_t r = ty; r < B; r += TY) {
    const int64_t i = r * N + f;
    T dz = bn::relu_grad<T>(dout[i], relu ? out[i] : T(1), relu);
    dy[i] = bn::input_grad<T>(dz, (y[i] - sh) * is, sc, m1, m2, training);
  }
}

// One warp per row.
template <typename T>
__global__ void __launch_bounds__(256) recon_forward_kernel(const T* __restrict__ y, const T* __restrict__ bias,
                                                            const T* __restrict__ t, T* __restrict__ out, int64_t B,
                                                            int64_t N) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (n >= B) return;  // whole warps exit together: the shuffles below stay full-warp
  double s = 0.0;
  for (int64_t f = lane; f < N; f += 32) {
    T d = recon::diff<T>(y[n * N + f], load_or(bias, f, T(0)), t[n * N + f]);
    s += double(d * d);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (lane == 0) out[n] = T(s);
}

template <typename T>
__global__ void __launch_bounds__(TX * TY) recon_backward_kernel(const T* __restrict__ go, const T* __restrict__ y,
                                                                 const T* __restrict__ bias, const T* __restrict__ t,
                                                                 T* __restrict__ dy, T* __restrict__ dbias, int64_t B,
                                                                 int64_t N, int64_t go_div) {
  __shared__ double red[TY][TX + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t f = int64_t(blockIdx.x) * TX + tx;
  const bool ok = f < N;
  const T b = ok ? load_or(bias, f, T(0)) : T(0);
  const T g_all = recon::shared_go<T>(go, go_div, /*reciprocal=*/true);
  double acc = 0.0;
  if (ok)
    for (int64_t r = ty; r < B; r += TY) {
      const int64_t i = r * N + f;
      T v = recon::grad<T>(go_div ? g_all : go[r], recon::diff<T>(y[i], b, t[i]));
      dy[i] = v;
      acc += double(v);
    }
  if (dbias == nullptr) return;  // uniform across the block: no thread is left at the barrier
  const double db = column_sum(acc, red);
  if (ty == 0 && ok) dbias[f] = T(db);
}

template <typename T>
__global__ void corrupt_kernel(const T* __restrict__ h, const T* __restrict__ noise, T* __restrict__ out, T sigma,
                               int64_t numel) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = h[i] + sigma * noise[i];
}

template <typename T>
const T* cp(std::uintptr_t p) { return reinterpret_cast<const T*>(p); }
template <typename T>
T* mp(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

unsigned column_blocks(int64_t N) { return unsigned((N + TX - 1) / TX); }

template <typename T>
void launch_bn_forward(std::uintptr_t y, std::uintptr_t bias, std::uintptr_t gamma, std::uintptr_t beta,
                       std::uintptr_t rm, std::uintptr_t rv, std::uintptr_t out, std::uintptr_t shift,
                       std::uintptr_t invstd, std::uintptr_t rm_out, std::uintptr_t rv_out, std::uintptr_t count,
                       int64_t B, int64_t N, bool training, bool track, double momentum, double eps, bool relu,
                       cudaStream_t st) {
  bn_forward_kernel<T><<<column_blocks(N), dim3(TX, TY), 0, st>>>(
      cp<T>(y), cp<T>(bias), cp<T>(gamma), cp<T>(beta), cp<T>(rm), cp<T>(rv), mp<T>(out), mp<T>(shift),
      mp<T>(invstd), mp<T>(rm_out), mp<T>(rv_out), mp<int64_t>(count), B, N, training, track, momentum, eps, relu);
}

template <typename T>
void launch_bn_backward(std::uintptr_t dout, std::uintptr_t out, std::uintptr_t y, std::uintptr_t gamma,
                        std::uintptr_t shift, std::uintptr_t invstd, std::uintptr_t dy, std::uintptr_t dgamma,
                        std::uintptr_t dbeta, std::uintptr_t dbias, int64_t B, int64_t N, bool training, bool relu,
                        cudaStream_t st) {
  bn_backward_kernel<T><<<column_blocks(N), dim3(TX, TY), 0, st>>>(
      cp<T>(dout), cp<T>(out), cp<T>(y), cp<T>(gamma), cp<T>(shift), cp<T>(invstd), mp<T>(dy), mp<T>(dgamma),
      mp<T>(dbeta), mp<T>(dbias), B, N, training, relu);
}

}  // namespace

int bn_relu_forward(std::uintptr_t y, std::uintptr_t bias, std::uintptr_t gamma, std::uintptr_t beta,
                    std::uintptr_t rm, std::uintptr_t rv, std::uintptr_t out, std::uintptr_t shift,
                    std::uintptr_t invstd, std::uintptr_t rm_out, std::uintptr_t rv_out, std::uintptr_t count,
                    int dtype, int64_t B, int64_t N, bool training, bool track, double momentum, double eps,
                    bool relu, std::uintptr_t stream) {
  if (N == 0) return count == 0 ? 0 : static_cast<int>(cudaErrorInvalidValue);  // no launch to count in
  if ((!training || track) && (rm == 0 || rv == 0)) return static_cast<int>(cudaErrorInvalidValue);
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32:
      launch_bn_forward<float>(y, bias, gamma, beta, rm, rv, out, shift, invstd, rm_out, rv_out, count, B, N,
                               training, track, momentum, eps, relu, st);
      break;
    case kFloat64:
      launch_bn_forward<double>(y, bias, gamma, beta, rm, rv, out, shift, invstd, rm_out, rv_out, count, B, N,
                                training, track, momentum, eps, relu, st);
      break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}

int bn_relu_backward(std::uintptr_t dout, std::uintptr_t out, std::uintptr_t y, std::uintptr_t gamma,
                     std::uintptr_t shift, std::uintptr_t invstd, std::uintptr_t dy, std::uintptr_t dgamma,
                     std::uintptr_t dbeta, std::uintptr_t dbias, int dtype, int64_t B, int64_t N, bool training,
                     bool relu, std::uintptr_t stream) {
  if (N == 0) return 0;
  // an empty batch has no output to read (a null data pointer) and nothing to mask; the column sums are zero
  if (relu && out == 0 && B > 0) return static_cast<int>(cudaErrorInvalidValue);
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32:
      launch_bn_backward<float>(dout, out, y, gamma, shift, invstd, dy, dgamma, dbeta, dbias, B, N, training, relu, st);
      break;
    case kFloat64:
      launch_bn_backward<double>(dout, out, y, gamma, shift, invstd, dy, dgamma, dbeta, dbias, B, N, training, relu,
                                 st);
      break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}

int recon_loss_forward(std::uintptr_t y, std::uintptr_t bias, std::uintptr_t target, std::uintptr_t out, int dtype,
                       int64_t B, int64_t N, std::uintptr_t stream) {
  if (B == 0) return 0;
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  const unsigned grid = unsigned((B + 7) / 8);
  switch (dtype) {
    case kFloat32:
      recon_forward_kernel<float><<<grid, 256, 0, st>>>(cp<float>(y), cp<float>(bias), cp<float>(target),
                                                        mp<float>(out), B, N);
      break;
    case kFloat64:
      recon_forward_kernel<double><<<grid, 256, 0, st>>>(cp<double>(y), cp<double>(bias), cp<double>(target),
                                                         mp<double>(out), B, N);
      break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}

int recon_loss_backward(std::uintptr_t go, std::uintptr_t y, std::uintptr_t bias, std::uintptr_t target,
                        std::uintptr_t dy, std::uintptr_t dbias, int dtype, int64_t B, int64_t N, int64_t go_div,
                        std::uintptr_t stream) {
  if (N == 0) return 0;
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32:
      recon_backward_kernel<float><<<column_blocks(N), dim3(TX, TY), 0, st>>>(
          cp<float>(go), cp<float>(y), cp<float>(bias), cp<float>(target), mp<float>(dy), mp<float>(dbias), B, N,
          go_div);
      break;
    case kFloat64:
      recon_backward_kernel<double><<<column_blocks(N), dim3(TX, TY), 0, st>>>(
          cp<double>(go), cp<double>(y), cp<double>(bias), cp<double>(target), mp<double>(dy), mp<double>(dbias), B,
          N, go_div);
      break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}

int corrupt(std::uintptr_t h, std::uintptr_t noise, std::uintptr_t out, double sigma, int dtype, int64_t numel,
            std::uintptr_t stream) {
  if (numel == 0) return 0;
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  const unsigned grid = unsigned(std::min<int64_t>((numel + 255) / 256, 4096));
  switch (dtype) {
    case kFloat32:
      corrupt_kernel<float><<<grid, 256, 0, st>>>(cp<float>(h), cp<float>(noise), mp<float>(out), float(sigma), numel);
      break;
    case kFloat64:
      corrupt_kernel<double><<<grid, 256, 0, st>>>(cp<double>(h), cp<double>(noise), mp<double>(out), sigma, numel);
      break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace fastgan
