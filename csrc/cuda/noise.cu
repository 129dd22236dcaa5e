// CUDA kernels of the NTGAN noisy/clean batch. Noise: fastgan/philox.h (the same stream as the CPU kernels).
// Forward: one thread per Philox counter (4 noise elements), writing the clean and noisy rows of both
// batches, so eps is drawn once for real and fake. The (seed, offset) is read from a device tensor and,
// when advancing, the last block to finish moves the offset on (a ticket counter in the state), so the
// kernel can be captured in a CUDA graph and every replay draws new noise.
// Backward: a group of TPR threads per (noisy row, channel) plane, reducing deps * z for dsigma.
#include <algorithm>
#include "fastgan/cuda_api_noise.h"
#include "fastgan/cuda_types.cuh"
#include "fastgan/philox.h"

namespace fastgan {
namespace cuda {
namespace {

struct Layout {
  int64_t n_clean, n_noisy, src0, dst0;
};

__host__ __device__ inline Layout layout(int64_t m, bool half) {
  if (half) return {m / 2, m - m / 2, m / 2, m / 2};
  return {m, m, 0, m};
}

template <typename T, typename A>
__device__ __forceinline__ void write_side(const T* __restrict__ x, int64_t sb, int64_t sf, T* __restrict__ out,
                                           const Layout& L, int64_t F, int64_t i, int64_t f, A eps, bool copy_clean) {
  const T v = x[(L.src0 + i) * sb + f * sf];
  out[(L.dst0 + i) * F + f] = FromAcc<T>::cvt(to_acc<A>(v) + eps);
  if (copy_clean) out[i * F + f] = v;
}

// Four consecutive elements as one aligned vector access (16 bytes for float, 8 for half/bf16).
template <typename T>
struct alignas(4 * sizeof(T)) Quad {
  T v[4];
};

template <typename T>
__device__ __forceinline__ Quad<T> load4(const T* p) { return *reinterpret_cast<const Quad<T>*>(p); }

template <typename T>
__device__ __forceinline__ void store4(T* p, const Quad<T>& q) { *reinterpret_cast<Quad<T>*>(p) = q; }

template <typename T, typename A>
__device__ __forceinline__ void write_side4(const T* __restrict__ x, int64_t sb, T* __restrict__ out, const Layout& L,
                                            int64_t F, int64_t i, int64_t f, const A* eps, bool copy_clean) {
  const Quad<T> v = load4(x + (L.src0 + i) * sb + f);
  Quad<T> y;
#pragma unroll
  for (int k = 0; k < 4; ++k) y.v[k] = FromAcc<T>::cvt(to_acc<A>(v.v[k]) + eps[k]);
  store4(out + (L.dst0 + i) * F + f, y);
  if (copy_clean) store4(out + i * F + f, v);
}

// VEC (the host checked: F % 4 == 0, unit feature strides, rows and pointers aligned to four elements): a
// counter's four elements lie in one row and move as one vector per tensor, so a warp's accesses are 512
// contiguous bytes; the generic path's four scalar accesses per thread at a 16-byte stride cost four times
// the store transactions. Same elements, same noise: only the memory access differs.
template <typename T, typename A, bool GAUSS, bool VEC>
__global__ void __launch_bounds__(kThreads) forward_kernel(NoisyForwardArgs a) {
  const T* xr = reinterpret_cast<const T*>(a.x_real);
  const T* xf = reinterpret_cast<const T*>(a.x_fake);
  const T* eps = reinterpret_cast<const T*>(a.eps);
  const A* sig = reinterpret_cast<const A*>(a.sigma);
  T* outr = reinterpret_cast<T*>(a.out_real);
  T* outf = reinterpret_cast<T*>(a.out_fake);
  long long* rng = reinterpret_cast<long long*>(a.rng);
  const int64_t F = a.F, C = a.C, inner = F / C;
  const Layout L = layout(a.m, a.half);
  const int64_t N = L.n_noisy * F, G = philox::counters_for(N);

  __shared__ unsigned long long s_seed, s_off;
  uint64_t seed = 0, off = 0;
  if constexpr (GAUSS) {
    if (threadIdx.x == 0) {
      s_seed = static_cast<unsigned long long>(rng[0]);
      s_off = static_cast<unsigned long long>(rng[1]);
      if (a.advance && blockIdx.x == 0) {
        long long* used = reinterpret_cast<long long*>(a.used);
        used[0] = static_cast<long long>(s_seed);
        used[1] = static_cast<long long>(s_off);
      }
    }
    __syncthreads();
    seed = s_seed;
    off = s_off;
  }

  const A sigma_value = A(a.sigma_value);
  const bool copy_clean = !a.half;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t g = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; g < G; g += stride) {
    philox::Normals z{};
    if constexpr (GAUSS) z = philox::normals4(seed, off + uint64_t(g));
    if constexpr (VEC) {
      const int64_t e = g * philox::kPerCounter, i = e / F, f = e - i * F;
      A ev[4];
      if constexpr (GAUSS) {
#pragma unroll
        for (int k = 0; k < 4; ++k) ev[k] = (sig != nullptr ? sig[C == 1 ? 0 : (f + k) / inner] : sigma_value) * A(z.v[k]);
      } else {
        const Quad<T> q = load4(eps + i * a.se_b + f);
#pragma unroll
        for (int k = 0; k < 4; ++k) ev[k] = to_acc<A>(q.v[k]);
      }
      if (xr != nullptr) write_side4<T, A>(xr, a.sr_b, outr, L, F, i, f, ev, copy_clean);
      if (xf != nullptr) write_side4<T, A>(xf, a.sf_b, outf, L, F, i, f, ev, copy_clean);
      continue;
    }
    int64_t e = g * philox::kPerCounter;
    int64_t i = e / F, f = e - i * F;
#pragma unroll
    for (int k = 0; k < philox::kPerCounter; ++k, ++e) {
      if (e >= N) break;
      A ev;
      if constexpr (GAUSS) {
        const A s = sig != nullptr ? sig[C == 1 ? 0 : f / inner] : sigma_value;
        ev = s * A(z.v[k]);
      } else {
        ev = to_acc<A>(eps[i * a.se_b + f * a.se_f]);
      }
      if (xr != nullptr) write_side<T, A>(xr, a.sr_b, a.sr_f, outr, L, F, i, f, ev, copy_clean);
      if (xf != nullptr) write_side<T, A>(xf, a.sf_b, a.sf_f, outf, L, F, i, f, ev, copy_clean);
      if (++f == F) {
        f = 0;
        ++i;
      }
    }
  }
  if (a.half) {
    const int64_t n = L.n_clean * F;
    for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += stride) {
      const int64_t i = e / F, f = e - i * F;
      if (xr != nullptr) outr[e] = xr[i * a.sr_b + f * a.sr_f];
      if (xf != nullptr) outf[e] = xf[i * a.sf_b + f * a.sf_f];
    }
  }
  if constexpr (GAUSS) {
    if (a.advance && threadIdx.x == 0) {
      // This thread read the state before; the fence orders that read before the ticket, so the last
      // ticket proves every block has read the state and it may move on.
      __threadfence();
      unsigned long long* ticket = reinterpret_cast<unsigned long long*>(rng + 2);
      if (atomicAdd(ticket, 1ull) == gridDim.x - 1) {
        // the acquire half of the handshake (Triton's atomic_add is acq_rel): without it the memory model
        // lets the writes below be seen before the other blocks' reads that their tickets released
        __threadfence();
        rng[1] = static_cast<long long>(off + uint64_t(G));
        *ticket = 0ull;
        __threadfence();
      }
    }
  }
}

// VEC (the host checked: F and the plane width are multiples of 4, unit feature strides, rows and pointers
// aligned to four elements): a lane moves four consecutive elements per tensor as one vector, which is also
// exactly one Philox counter, so dsigma sums the same products in the same order as the scalar path.
template <typename T, typename A, int TPR, bool DSIG, bool VEC>
__global__ void __launch_bounds__(kThreads) backward_kernel(NoisyBackwardArgs a) {
  constexpr int RPB = kThreads / TPR;
  __shared__ A smem[kThreads / 32];
  const T* gr = reinterpret_cast<const T*>(a.g_real);
  const T* gf = reinterpret_cast<const T*>(a.g_fake);
  T* dxr = reinterpret_cast<T*>(a.dx_real);
  T* dxf = reinterpret_cast<T*>(a.dx_fake);
  T* deps = reinterpret_cast<T*>(a.deps);
  A* dsig = reinterpret_cast<A*>(a.dsigma);
  const int64_t F = a.F, C = a.C, inner = F / C;
  const Layout L = layout(a.m, a.half);
  const int64_t planes = L.n_noisy * C;
  uint64_t seed = 0, off = 0;
  if constexpr (DSIG) {
    const long long* rng = reinterpret_cast<const long long*>(a.rng);
    seed = static_cast<uint64_t>(rng[0]);
    off = static_cast<uint64_t>(rng[1]);
  }
  const int lane = threadIdx.x % TPR;
  const int sub = threadIdx.x / TPR;

  auto element = [&](int64_t i, int64_t f) -> A {
    A vr = A(0), vf = A(0);
    if (gr != nullptr) vr = to_acc<A>(gr[(L.dst0 + i) * a.gr_b + f * a.gr_f]);
    if (gf != nullptr) vf = to_acc<A>(gf[(L.dst0 + i) * a.gf_b + f * a.gf_f]);
    const A ge = vr + vf;
    if (deps != nullptr) deps[i * F + f] = FromAcc<T>::cvt(ge);
    if (!a.half) {
      if (dxr != nullptr) dxr[i * F + f] = FromAcc<T>::cvt(to_acc<A>(gr[i * a.gr_b + f * a.gr_f]) + vr);
      if (dxf != nullptr) dxf[i * F + f] = FromAcc<T>::cvt(to_acc<A>(gf[i * a.gf_b + f * a.gf_f]) + vf);
    }
    return ge;
  };

  // element()'s work on elements f..f+3 of noisy row i, their deps values into ge
  auto quad = [&](int64_t i, int64_t f, A* ge) {
    A vr[4] = {A(0), A(0), A(0), A(0)}, vf[4] = {A(0), A(0), A(0), A(0)};
    if (gr != nullptr) {
      const Quad<T> q = load4(gr + (L.dst0 + i) * a.gr_b + f);
#pragma unroll
      for (int k = 0; k < 4; ++k) vr[k] = to_acc<A>(q.v[k]);
    }
    if (gf != nullptr) {
      const Quad<T> q = load4(gf + (L.dst0 + i) * a.gf_b + f);
#pragma unroll
      for (int k = 0; k < 4; ++k) vf[k] = to_acc<A>(q.v[k]);
    }
    Quad<T> o;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      ge[k] = vr[k] + vf[k];
      o.v[k] = FromAcc<T>::cvt(ge[k]);
    }
    if (deps != nullptr) store4(deps + i * F + f, o);
    if (!a.half) {
      if (dxr != nullptr) {
        const Quad<T> q = load4(gr + i * a.gr_b + f);
#pragma unroll
        for (int k = 0; k < 4; ++k) o.v[k] = FromAcc<T>::cvt(to_acc<A>(q.v[k]) + vr[k]);
        store4(dxr + i * F + f, o);
      }
      if (dxf != nullptr) {
        const Quad<T> q = load4(gf + i * a.gf_b + f);
#pragma unroll
        for (int k = 0; k < 4; ++k) o.v[k] = FromAcc<T>::cvt(to_acc<A>(q.v[k]) + vf[k]);
        store4(dxf + i * F + f, o);
      }
    }
  };

  for (int64_t p0 = int64_t(blockIdx.x) * RPB; p0 < planes; p0 += int64_t(gridDim.x) * RPB) {
    const int64_t p = p0 + sub;
    A acc = A(0);
    if (p < planes) {
      const int64_t i = p / C, c = p - i * C;
      const int64_t start = i * F + c * inner, end = start + inner;
      if constexpr (VEC) {
        for (int64_t g = start / 4 + lane; g < end / 4; g += TPR) {
          A ge[4];
          quad(i, g * 4 - i * F, ge);
          if constexpr (DSIG) {
            const philox::Normals z = philox::normals4(seed, off + uint64_t(g));
#pragma unroll
            for (int k = 0; k < 4; ++k) acc += ge[k] * A(z.v[k]);
          }
        }
      } else if constexpr (DSIG) {
        // Threads walk the Philox counters overlapping the plane; a counter at a plane edge is also
        // drawn by the neighbouring plane, each using its own elements.
        const int64_t g_first = start / philox::kPerCounter, g_last = (end - 1) / philox::kPerCounter;
        for (int64_t g = g_first + lane; g <= g_last; g += TPR) {
          const philox::Normals z = philox::normals4(seed, off + uint64_t(g));
#pragma unroll
          for (int k = 0; k < philox::kPerCounter; ++k) {
            const int64_t e = g * philox::kPerCounter + k;
            if (e < start || e >= end) continue;
            acc += element(i, e - i * F) * A(z.v[k]);
          }
        }
      } else {
        for (int64_t e = start + lane; e < end; e += TPR) element(i, e - i * F);
      }
    }
    if constexpr (DSIG) {
      acc = group_sum<A, TPR>(acc, smem);
      if (p < planes && lane == 0) dsig[p] = acc;
    }
  }
}

int64_t blocks_for(int64_t work) {
  return std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, 8192));
}

// Whether forward_kernel's VEC path applies: every tensor it reads or writes in four-element vectors.
// An absent tensor (p == 0), or rows of unit feature stride whose every start is aligned to four elements.
bool quad_rows(std::uintptr_t p, int64_t sb, int64_t sf, std::uintptr_t elem) {
  return p == 0 || (sf == 1 && sb % 4 == 0 && p % (4 * elem) == 0);
}

bool vec_ok(const NoisyForwardArgs& a, std::uintptr_t elem) {
  return a.F % 4 == 0 && quad_rows(a.x_real, a.sr_b, a.sr_f, elem) && quad_rows(a.x_fake, a.sf_b, a.sf_f, elem) &&
         quad_rows(a.eps, a.se_b, a.se_f, elem) && quad_rows(a.out_real, a.F, 1, elem) &&
         quad_rows(a.out_fake, a.F, 1, elem);
}

template <typename T, typename A, bool GAUSS>
void launch_forward_gauss(const NoisyForwardArgs& a, const dim3& grid, cudaStream_t st) {
  if (vec_ok(a, sizeof(T)))
    forward_kernel<T, A, GAUSS, true><<<grid, kThreads, 0, st>>>(a);
  else
    forward_kernel<T, A, GAUSS, false><<<grid, kThreads, 0, st>>>(a);
}

template <typename T, typename A>
void launch_forward(const NoisyForwardArgs& a, cudaStream_t st) {
  const Layout L = layout(a.m, a.half);
  // a thread per Philox counter (four elements); double batches copy the clean rows beside the noisy ones, half
  // batches in a loop of their own, an element a thread
  const int64_t work = std::max<int64_t>(philox::counters_for(L.n_noisy * a.F), a.half ? L.n_clean * a.F : 0);
  const dim3 grid(blocks_for(work));
  if (a.eps != 0)
    launch_forward_gauss<T, A, false>(a, grid, st);
  else
    launch_forward_gauss<T, A, true>(a, grid, st);
}

int pick_tpr(int64_t inner) {
  if (inner <= 8) return 1;
  if (inner <= 128) return 8;
  if (inner <= 4096) return 32;
  return kThreads;
}

// Whether backward_kernel's VEC path applies.
bool vec_ok(const NoisyBackwardArgs& a, std::uintptr_t elem) {
  return a.F % 4 == 0 && (a.F / a.C) % 4 == 0 && quad_rows(a.g_real, a.gr_b, a.gr_f, elem) &&
         quad_rows(a.g_fake, a.gf_b, a.gf_f, elem) && quad_rows(a.dx_real, a.F, 1, elem) &&
         quad_rows(a.dx_fake, a.F, 1, elem) && quad_rows(a.deps, a.F, 1, elem);
}

template <typename T, typename A, int TPR, bool DSIG>
void launch_backward_dsig(const NoisyBackwardArgs& a, const dim3& grid, cudaStream_t st) {
  if (vec_ok(a, sizeof(T)))
    backward_kernel<T, A, TPR, DSIG, true><<<grid, kThreads, 0, st>>>(a);
  else
    backward_kernel<T, A, TPR, DSIG, false><<<grid, kThreads, 0, st>>>(a);
}

template <typename T, typename A, int TPR>
void launch_backward_tpr(const NoisyBackwardArgs& a, cudaStream_t st) {
  const Layout L = layout(a.m, a.half);
  const int64_t planes = L.n_noisy * a.C;
  const int64_t rpb = kThreads / TPR;
  const dim3 grid(std::max<int64_t>(1, std::min<int64_t>((planes + rpb - 1) / rpb, int64_t(1) << 20)));
  if (a.dsigma != 0)
    launch_backward_dsig<T, A, TPR, true>(a, grid, st);
  else
    launch_backward_dsig<T, A, TPR, false>(a, grid, st);
}

template <typename T, typename A>
void launch_backward(const NoisyBackwardArgs& a, cudaStream_t st) {
  switch (pick_tpr(a.F / a.C)) {
    case 1: return launch_backward_tpr<T, A, 1>(a, st);
    case 8: return launch_backward_tpr<T, A, 8>(a, st);
    case 32: return launch_backward_tpr<T, A, 32>(a, st);
    default: return launch_backward_tpr<T, A, kThreads>(a, st);
  }
}

}  // namespace

int noisy_forward(const NoisyForwardArgs& a, std::uintptr_t stream) {
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  switch (a.dtype) {
    case kFloat32: launch_forward<float, float>(a, st); break;
    case kFloat64: launch_forward<double, double>(a, st); break;
    case kFloat16: launch_forward<__half, float>(a, st); break;
    case kBFloat16: launch_forward<__nv_bfloat16, float>(a, st); break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}

int noisy_backward(const NoisyBackwardArgs& a, std::uintptr_t stream) {
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  switch (a.dtype) {
    case kFloat32: launch_backward<float, float>(a, st); break;
    case kFloat64: launch_backward<double, double>(a, st); break;
    case kFloat16: launch_backward<__half, float>(a, st); break;
    case kBFloat16: launch_backward<__nv_bfloat16, float>(a, st); break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cuda
}  // namespace fastgan
