// CUDA kernels of the weighted gradient-norm penalty. Per-sample math: fastgan/penalty_math.h (shared with CPU).
// A group of TPR threads owns one row of grad (B, F); TPR grows with F so small rows (the mixtures, F = 3)
// do not idle a warp and large rows (images) spread over the whole block.
#include <algorithm>
#include "fastgan/cuda_api.h"
#include "fastgan/cuda_types.cuh"
#include "fastgan/penalty_math.h"

namespace fastgan {
namespace cuda {
namespace {

// Partial sum of squares of one row over the columns owned by `lane`; with WRITE (the backward pass) it also
// writes dgrad = scale * g for those columns, so g is read once.
template <typename T, typename A, int TPR, bool VEC, bool WRITE>
__device__ __forceinline__ A row_pass(const T* __restrict__ row, int64_t F, int64_t sf, int lane, T* __restrict__ drow,
                                      A scale) {
  A s = A(0);
  if constexpr (VEC) {
    using P = Pack<T>;
    const P* prow = reinterpret_cast<const P*>(row);
    P* pd = reinterpret_cast<P*>(drow);
    const int64_t npack = F / P::N;
    for (int64_t i = lane; i < npack; i += TPR) {
      P p = prow[i];
      P q;
#pragma unroll
      for (int k = 0; k < P::N; ++k) {
        A v = to_acc<A>(p.v[k]);
        s += v * v;
        if constexpr (WRITE) q.v[k] = FromAcc<T>::cvt(scale * v);
      }
      if constexpr (WRITE) pd[i] = q;
    }
  } else {
    for (int64_t f = lane; f < F; f += TPR) {
      A v = to_acc<A>(row[f * sf]);
      s += v * v;
      if constexpr (WRITE) drow[f] = FromAcc<T>::cvt(scale * v);
    }
  }
  return s;
}

template <typename T, typename A, int TPR, bool VEC>
__global__ void __launch_bounds__(kThreads) forward_kernel(const T* __restrict__ g, const A* __restrict__ logits,
                                                           A* __restrict__ out, int64_t B, int64_t F, int64_t sb,
                                                           int64_t sf, int64_t sl, int weight) {
  constexpr int RPB = kThreads / TPR;
  __shared__ A smem[kThreads / 32];
  const int lane = threadIdx.x % TPR;
  const int sub = threadIdx.x / TPR;
  for (int64_t row0 = int64_t(blockIdx.x) * RPB; row0 < B; row0 += int64_t(gridDim.x) * RPB) {
    const int64_t n = row0 + sub;
    A s = n < B ? row_pass<T, A, TPR, VEC, false>(g + n * sb, F, sf, lane, static_cast<T*>(nullptr), A(0)) : A(0);
    s = group_sum<A, TPR>(s, smem);
    if (n < B && lane == 0) out[n] = penalty::weight<A>(weight, logits[n * sl]) * s;
  }
}

// The backward for upstream go (per row), or with TERMS the closed forms' terms: upstream go_scale for every row,
// per = w ||g||^2 written, rows from `split` on weighted by code `weight2`. TERMS is a template flag and the
// arguments stay separate __restrict__ pointers, so the backward's own variants compile as they did before the
// terms existed (a struct of plain pointers cost the float TPR=256 vector variant 40 registers instead of 32).
template <typename T, typename A, int TPR, bool VEC, bool TERMS>
__global__ void __launch_bounds__(kThreads) backward_kernel(const A* __restrict__ go, A go_scale, const T* __restrict__ g,
                                                            const A* __restrict__ logits, T* __restrict__ dgrad,
                                                            A* __restrict__ dlogits, A* __restrict__ per, int64_t B,
                                                            int64_t F, int64_t sb, int64_t sf, int64_t sl, int weight,
                                                            int weight2, int64_t split) {
  constexpr int RPB = kThreads / TPR;
  __shared__ A smem[kThreads / 32];
  const int lane = threadIdx.x % TPR;
  const int sub = threadIdx.x / TPR;
  for (int64_t row0 = int64_t(blockIdx.x) * RPB; row0 < B; row0 += int64_t(gridDim.x) * RPB) {
    const int64_t n = row0 + sub;
    A w = A(0), dw = A(0), gon = A(0), s = A(0);
    if (n < B) {
      const int code = TERMS ? penalty::row_code(n, split, weight, weight2) : weight;
      penalty::weight_and_slope<A>(code, logits[n * sl], &w, &dw);
      gon = TERMS ? go_scale : go[n];
      s = row_pass<T, A, TPR, VEC, true>(g + n * sb, F, sf, lane, dgrad + n * F, penalty::grad_scale(w, gon));
    }
    s = group_sum<A, TPR>(s, smem);
    if (n < B && lane == 0) {
      dlogits[n] = penalty::logit_grad(dw, s, gon);
      if constexpr (TERMS) per[n] = w * s;
    }
  }
}

// backward_kernel's arguments as the entry points take them (pointers as integers), before the dtype is known
struct BackwardArgs {
  std::uintptr_t go;
  double go_scale;
  std::uintptr_t g, logits, dgrad, dlogits, per;
  int64_t B, F, sb, sf, sl, split;
  int weight, weight2;
};

int pick_tpr(int64_t F) {
  if (F <= 4) return 1;
  if (F <= 64) return 8;
  if (F <= 2048) return 32;
  return kThreads;
}

int64_t grid_for(int64_t B, int tpr) {
  const int64_t rpb = kThreads / tpr;
  return std::max<int64_t>(1, std::min<int64_t>((B + rpb - 1) / rpb, int64_t(1) << 20));
}

template <typename T, typename A>
bool can_vectorize(std::uintptr_t g, int64_t F, int64_t sb, int64_t sf) {
  constexpr int N = Pack<T>::N;
  return sf == 1 && F % N == 0 && sb % N == 0 && aligned16(g);
}

template <typename T, typename A, int TPR>
void launch_forward(std::uintptr_t g, std::uintptr_t l, std::uintptr_t o, int64_t B, int64_t F, int64_t sb, int64_t sf,
                    int64_t sl, int w, cudaStream_t st) {
  dim3 grid(grid_for(B, TPR));
  if (can_vectorize<T, A>(g, F, sb, sf))
    forward_kernel<T, A, TPR, true><<<grid, kThreads, 0, st>>>(reinterpret_cast<const T*>(g), reinterpret_cast<const A*>(l),
                                                               reinterpret_cast<A*>(o), B, F, sb, sf, sl, w);
  else
    forward_kernel<T, A, TPR, false><<<grid, kThreads, 0, st>>>(reinterpret_cast<const T*>(g), reinterpret_cast<const A*>(l),
                                                                reinterpret_cast<A*>(o), B, F, sb, sf, sl, w);
}

template <typename T, typename A, int TPR, bool TERMS>
void launch_backward(const BackwardArgs& r, cudaStream_t st) {
  dim3 grid(grid_for(r.B, TPR));
  const A* go = reinterpret_cast<const A*>(r.go);
  const T* g = reinterpret_cast<const T*>(r.g);
  const A* l = reinterpret_cast<const A*>(r.logits);
  T* dg = reinterpret_cast<T*>(r.dgrad);
  A* dl = reinterpret_cast<A*>(r.dlogits);
  A* per = reinterpret_cast<A*>(r.per);
  // dgrad is contiguous (row stride F), so its alignment follows from F and the allocation.
  if (can_vectorize<T, A>(r.g, r.F, r.sb, r.sf) && aligned16(r.dgrad))
    backward_kernel<T, A, TPR, true, TERMS><<<grid, kThreads, 0, st>>>(go, A(r.go_scale), g, l, dg, dl, per, r.B, r.F,
                                                                     r.sb, r.sf, r.sl, r.weight, r.weight2, r.split);
  else
    backward_kernel<T, A, TPR, false, TERMS><<<grid, kThreads, 0, st>>>(go, A(r.go_scale), g, l, dg, dl, per, r.B, r.F,
                                                                      r.sb, r.sf, r.sl, r.weight, r.weight2, r.split);
}

template <typename T, typename A>
void forward_tpr(std::uintptr_t g, std::uintptr_t l, std::uintptr_t o, int64_t B, int64_t F, int64_t sb, int64_t sf,
                 int64_t sl, int w, cudaStream_t st) {
  switch (pick_tpr(F)) {
    case 1: return launch_forward<T, A, 1>(g, l, o, B, F, sb, sf, sl, w, st);
    case 8: return launch_forward<T, A, 8>(g, l, o, B, F, sb, sf, sl, w, st);
    case 32: return launch_forward<T, A, 32>(g, l, o, B, F, sb, sf, sl, w, st);
    default: return launch_forward<T, A, kThreads>(g, l, o, B, F, sb, sf, sl, w, st);
  }
}

template <typename T, typename A, bool TERMS>
void backward_tpr_as(const BackwardArgs& r, cudaStream_t st) {
  switch (pick_tpr(r.F)) {
    case 1: return launch_backward<T, A, 1, TERMS>(r, st);
    case 8: return launch_backward<T, A, 8, TERMS>(r, st);
    case 32: return launch_backward<T, A, 32, TERMS>(r, st);
    default: return launch_backward<T, A, kThreads, TERMS>(r, st);
  }
}

// per not null: the closed forms' terms (see backward_kernel's TERMS)
template <typename T, typename A>
void backward_tpr(const BackwardArgs& r, cudaStream_t st) {
  if (r.per) return backward_tpr_as<T, A, true>(r, st);
  backward_tpr_as<T, A, false>(r, st);
}

int backward_any(const BackwardArgs& r, int dtype, std::uintptr_t stream) {
  if (r.B == 0) return 0;
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32: backward_tpr<float, float>(r, st); break;
    case kFloat64: backward_tpr<double, double>(r, st); break;
    case kFloat16: backward_tpr<__half, float>(r, st); break;
    case kBFloat16: backward_tpr<__nv_bfloat16, float>(r, st); break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int penalty_forward(std::uintptr_t grad, int dtype, std::uintptr_t logits, std::uintptr_t out, int64_t B, int64_t F,
                    int64_t sb, int64_t sf, int64_t sl, int weight, std::uintptr_t stream) {
  if (B == 0) return 0;
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32: forward_tpr<float, float>(grad, logits, out, B, F, sb, sf, sl, weight, st); break;
    case kFloat64: forward_tpr<double, double>(grad, logits, out, B, F, sb, sf, sl, weight, st); break;
    case kFloat16: forward_tpr<__half, float>(grad, logits, out, B, F, sb, sf, sl, weight, st); break;
    case kBFloat16: forward_tpr<__nv_bfloat16, float>(grad, logits, out, B, F, sb, sf, sl, weight, st); break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}

int penalty_backward(std::uintptr_t go, std::uintptr_t grad, int dtype, std::uintptr_t logits, std::uintptr_t dgrad,
                     std::uintptr_t dlogits, int64_t B, int64_t F, int64_t sb, int64_t sf, int64_t sl, int weight,
                     std::uintptr_t stream) {
  return backward_any({go, 0.0, grad, logits, dgrad, dlogits, 0, B, F, sb, sf, sl, B, weight, weight}, dtype, stream);
}

int penalty_terms(std::uintptr_t grad, int dtype, std::uintptr_t logits, std::uintptr_t per, std::uintptr_t dgrad,
                  std::uintptr_t dlogits, int64_t B, int64_t F, int64_t sb, int64_t sf, int64_t sl, int weight,
                  int weight2, int64_t split, double scale, std::uintptr_t stream) {
  return backward_any({0, scale, grad, logits, dgrad, dlogits, per, B, F, sb, sf, sl, split, weight, weight2}, dtype,
                      stream);
}

}  // namespace cuda
}  // namespace fastgan
