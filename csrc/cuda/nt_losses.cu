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

// The forward's rounds. The H200 measured the forward at 0.44-0.46 of a device copy's bandwidth while each thread
// kept 4 scalar loads (16 bytes) in flight: at 6 blocks of 256 threads an SM then had at most 24 KB in flight, under
// the ~30 KB that Little's law asks of an H200 (4.8 TB/s at ~800 ns, over 132 SMs), and less while the threads
// computed. Its loop then spent 88 instructions a logit (SASS, sm_90, D loss with JS weights, once one exponential
// served the term and the weight; more when measured). In a round each thread now loads kPacks packs of V = 16 /
// sizeof(A) consecutive logits (64 bytes; one 16-byte load per pack where the side is contiguous and aligned) before
// computing on them, and its loop spends 56 (40 since nt::log1p_unit; not timed on a GPU yet). The side's two coefficients are divided once
// (nt::half_coefs), not per logit, and a logit's loss term and weight share one exponential (the values nt::coef,
// nt::term and penalty::weight give apart, bit for bit). A thread adds its terms in index order; which logits a
// thread owns does not depend on VEC, so the scalar variant (strided or unaligned logits) gives the same sums bit
// for bit.
constexpr int kPacks = 4;
// Blocks an SM must hold (the forward's and the backward's), as many as ptxas allows on sm_75, 80 and 90 without
// spilling and, in float's packed forward, with a round's 4 loads issued together (tests/test_cuda_compile.py):
// float's packed variants 3 (<= 85 registers; at 4, 64 registers, ptxas issued 2 loads, then 2 more after the first
// pack's math), 48 KB in flight an SM; the others 2 (double's packed forward spilled at 3).
template <typename A, bool VEC>
constexpr int forward_blocks_per_sm() { return VEC && sizeof(A) == 4 ? 3 : 2; }

// The term is added to s in place (a select returning it, 0 outside the loss, once kept nvcc from fusing the
// multiply into the sum); returns the JS weight. IN_LOSS and WEIGHTS are the side's, fixed per call: as template
// arguments they cost no test per logit.
template <typename A, bool IN_LOSS, bool WEIGHTS>
__device__ __forceinline__ A add_term(A& s, A psi, A coef, A sign, int weight_code) {
  const A e = fg_exp(psi < A(0) ? psi : -psi);  // exp(-|psi|), as softplus and the weight each compute it
  if (IN_LOSS) s += coef * nt::softplus_from<A>(sign * psi, e);
  return WEIGHTS ? penalty::js_weight_from<A>(weight_code == penalty::kJsReal, psi, e) : A(0);
}

// How many of the pack's logits [i0, i0 + V) lie in the clean half [0, n_clean) (a 32-bit test per logit, not a
// 64-bit one).
template <typename A>
__device__ __forceinline__ int clean_in_pack(int64_t n_clean, int64_t i0) {
  const int64_t r = n_clean - i0;
  return r <= 0 ? 0 : (r >= Pack<A>::N ? Pack<A>::N : int(r));
}

// A pack's 16-byte store. NVVM turned 3 of a round's 4 pack copies (float4 stores too) into 4 scalar stores each,
// not knowing w + i0 aligned: PTX's vector store says so.
__device__ __forceinline__ void store_pack(float* p, const Pack<float>& v) {
#if defined(__CUDA_ARCH__)
  asm volatile("st.global.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(__cvta_generic_to_global(p)), "f"(v.v[0]),
               "f"(v.v[1]), "f"(v.v[2]), "f"(v.v[3])
               : "memory");
#else
  *reinterpret_cast<Pack<float>*>(p) = v;
#endif
}
__device__ __forceinline__ void store_pack(double* p, const Pack<double>& v) {
#if defined(__CUDA_ARCH__)
  asm volatile("st.global.v2.f64 [%0], {%1, %2};" ::"l"(__cvta_generic_to_global(p)), "d"(v.v[0]), "d"(v.v[1])
               : "memory");
#else
  *reinterpret_cast<Pack<double>*>(p) = v;
#endif
}

// A pack's 16-byte load through the read-only (non-coherent) path, for the backward: there nvcc lost that its
// pointers are global (generic LD.E.128) where the forward's loads were global ones. Read-only is the backward's
// contract: logits and gw are not written while it runs, d (fresh from the caller) aliases neither (noise_args.h).
__device__ __forceinline__ Pack<float> load_pack(const float* p) {
  Pack<float> v;
#if defined(__CUDA_ARCH__)
  asm("ld.global.nc.v4.f32 {%0, %1, %2, %3}, [%4];"
      : "=f"(v.v[0]), "=f"(v.v[1]), "=f"(v.v[2]), "=f"(v.v[3])
      : "l"(__cvta_generic_to_global(p)));
#else
  v = *reinterpret_cast<const Pack<float>*>(p);
#endif
  return v;
}
__device__ __forceinline__ Pack<double> load_pack(const double* p) {
  Pack<double> v;
#if defined(__CUDA_ARCH__)
  asm("ld.global.nc.v2.f64 {%0, %1}, [%2];" : "=d"(v.v[0]), "=d"(v.v[1]) : "l"(__cvta_generic_to_global(p)));
#else
  v = *reinterpret_cast<const Pack<double>*>(p);
#endif
  return v;
}

// One round of packs of a thread: kPacks packs of V consecutive logits, pack p at base + p * span, all loaded before
// any is computed on.
template <typename A, bool VEC, bool IN_LOSS, bool WEIGHTS>
__device__ __forceinline__ void full_round(A& s, const A* __restrict__ logits, int64_t base, int64_t span,
                                           int64_t stride, A sign, const nt::HalfCoefs<A>& c, int weight_code,
                                           A* __restrict__ w) {
  using P = Pack<A>;
  constexpr int V = P::N;
  A psi[kPacks][V];
#pragma unroll
  for (int p = 0; p < kPacks; ++p) {
    const int64_t i0 = base + p * span;
    if (VEC) {
      const P pk = *reinterpret_cast<const P*>(logits + i0);
#pragma unroll
      for (int j = 0; j < V; ++j) psi[p][j] = pk.v[j];
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) psi[p][j] = logits[(i0 + j) * stride];
    }
  }
#pragma unroll
  for (int p = 0; p < kPacks; ++p) {
    const int64_t i0 = base + p * span;
    const int clean = clean_in_pack<A>(c.n_clean, i0);
    P wp;
#pragma unroll
    for (int j = 0; j < V; ++j)
      wp.v[j] = add_term<A, IN_LOSS, WEIGHTS>(s, psi[p][j], j < clean ? c.clean : c.noisy, sign, weight_code);
    if (!WEIGHTS) continue;
    if (VEC) {
      store_pack(w + i0, wp);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) w[i0 + j] = wp.v[j];
    }
  }
}

// The side's (or chunk's) last round, where packs may reach past k1: only logits below k1 are read, summed and
// weighted, a pack at a time (16 masked logits live at once spilled registers).
template <typename A, bool IN_LOSS, bool WEIGHTS>
__device__ __forceinline__ void last_round(A& s, const A* __restrict__ logits, int64_t base, int64_t span,
                                           int64_t k1, int64_t stride, A sign, const nt::HalfCoefs<A>& c,
                                           int weight_code, A* __restrict__ w) {
  constexpr int V = Pack<A>::N;
#pragma unroll 1
  for (int p = 0; p < kPacks; ++p) {
    const int64_t i0 = base + p * span;
    A psi[V];
#pragma unroll
    for (int j = 0; j < V; ++j) psi[j] = i0 + j < k1 ? logits[(i0 + j) * stride] : A(0);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      if (i0 + j >= k1) break;
      const A wt = add_term<A, IN_LOSS, WEIGHTS>(s, psi[j], i0 + j < c.n_clean ? c.clean : c.noisy, sign, weight_code);
      if (WEIGHTS) w[i0 + j] = wt;
    }
  }
}

// VEC: stride 1, logits and w 16-byte aligned, k0 a multiple of V (launch_forward checks). The full rounds, then
// the last one; a thread's logits are summed in index order either way.
template <typename A, bool VEC, bool IN_LOSS, bool WEIGHTS>
__device__ A side_loop(const A* __restrict__ logits, int64_t k0, int64_t k1, int64_t stride, A sign,
                       const nt::HalfCoefs<A>& c, int weight_code, A* __restrict__ w) {
  constexpr int V = Pack<A>::N;
  const int64_t span = int64_t(blockDim.x) * V;  // logits of one round's pack p: V consecutive ones per thread
  const int64_t round = kPacks * span;
  const int64_t full_end = k0 + (k1 - k0) / round * round;
  A s = A(0);
  int64_t base = k0 + int64_t(threadIdx.x) * V;
  for (; base < full_end; base += round)
    full_round<A, VEC, IN_LOSS, WEIGHTS>(s, logits, base, span, stride, sign, c, weight_code, w);
  if (base < k1) last_round<A, IN_LOSS, WEIGHTS>(s, logits, base, span, k1, stride, sign, c, weight_code, w);
  return s;
}

// Loss terms of logits [k0, k1) of one side of n, and its JS weights when w != nullptr. A side outside the loss
// (G's real logits) without weights is not read: its sum is 0.
template <typename A, bool VEC>
__device__ A side_forward(const A* __restrict__ logits, int64_t k0, int64_t k1, int64_t n, int64_t stride, int sign,
                          A mu, int reduction, int weight_code, A* __restrict__ w) {
  const nt::HalfCoefs<A> c = nt::half_coefs<A>(n, mu, reduction);
  if (sign == 0)
    return w == nullptr ? A(0) : side_loop<A, VEC, false, true>(logits, k0, k1, stride, A(0), c, weight_code, w);
  return w == nullptr ? side_loop<A, VEC, true, false>(logits, k0, k1, stride, A(sign), c, weight_code, w)
                      : side_loop<A, VEC, true, true>(logits, k0, k1, stride, A(sign), c, weight_code, w);
}

template <typename A, bool VEC>
__global__ void __launch_bounds__(kThreads, (forward_blocks_per_sm<A, VEC>())) forward_kernel(NtLossArgs a) {
  __shared__ A smem[kThreads / 32];
  const A mu = read_mu<A>(a);
  const A* lr = reinterpret_cast<const A*>(a.logits_real);
  const A* lf = reinterpret_cast<const A*>(a.logits_fake);
  A* wr = reinterpret_cast<A*>(a.w_real);
  A* wf = reinterpret_cast<A*>(a.w_fake);
  // One block: both sides whole. More: blocks [0, real_blocks) cover a chunk of the real logits each, the rest
  // the fake ones. One call site in a loop, not one per side: each inlined copy cost registers.
  int first = 0, last = 1;
  int64_t k0 = 0;
  if (a.partials != 0) {
    const int64_t real_blocks = (a.n_real + a.chunk - 1) / a.chunk;
    first = last = int64_t(blockIdx.x) < real_blocks ? 0 : 1;
    k0 = (first == 0 ? int64_t(blockIdx.x) : int64_t(blockIdx.x) - real_blocks) * a.chunk;
  }
  A s = A(0);
  for (int side = first; side <= last; ++side) {
    const bool real = side == 0;
    const int64_t n = real ? a.n_real : a.n_fake;
    const int64_t k1 = a.partials == 0 ? n : (k0 + a.chunk < n ? k0 + a.chunk : n);
    s += side_forward<A, VEC>(real ? lr : lf, k0, k1, n, real ? a.s_real : a.s_fake,
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

// Backward: d = go * coef * sign * sigmoid(sign * psi) + gw * w'(psi), element by element, in the forward's rounds
// (a block a round of a side: real rounds first; each thread kPacks packs of V logits, the packs of logits and of
// gw loaded before any is computed on). Where each element took its own exponential and division for the slope and
// two more for w' (one scalar of logits and one of gw in flight a thread), one of each serves both (as in the
// forward) and VEC reads and writes 16-byte packs.
template <typename A, bool IN_LOSS, bool WEIGHTS>
__device__ __forceinline__ A logit_grad(A psi, A gw, A coef_go, A sign, int weight_code) {
  const A e = fg_exp(psi < A(0) ? psi : -psi);
  const A r = fg_recip_1_2(A(1) + e);
  A v = A(0);
  if (IN_LOSS) {
    const penalty::Sigmoids<A> sq = penalty::sigmoids_from(psi, e, r);
    v = coef_go * (sign > A(0) ? sq.s : -sq.q);  // sign * sigmoid(sign * psi)
  }
  if (WEIGHTS) {
    A w, dw;
    penalty::weight_and_slope_recip<A>(weight_code, psi, e, r, &w, &dw);
    v += gw * dw;
  }
  return v;
}

// Logits a backward block covers: a round of kThreads threads' kPacks packs (launch_backward's blocks).
template <typename A>
__host__ __device__ constexpr int64_t backward_round_logits() { return int64_t(kPacks) * Pack<A>::N * kThreads; }

template <typename A, bool VEC, bool IN_LOSS, bool WEIGHTS>
__device__ __forceinline__ void backward_round(const A* __restrict__ logits, const A* __restrict__ gw,
                                               A* __restrict__ d, int64_t k0, int64_t n, int64_t stride, A sign,
                                               A go_clean, A go_noisy, int64_t n_clean, int weight_code) {
  using P = Pack<A>;
  constexpr int V = P::N;
  const int64_t span = backward_round_logits<A>() / kPacks;  // pack p of the round: V logits a thread
  const int64_t base = k0 + int64_t(threadIdx.x) * V;
  const bool full = k0 + kPacks * span <= n;  // the whole round inside the side: no element needs a test
  A psi[kPacks][V], g[kPacks][V];
#pragma unroll
  for (int p = 0; p < kPacks; ++p) {
    const int64_t i0 = base + p * span;
    if (VEC && full) {
      const P pk = load_pack(logits + i0);
      P gk;
      if (WEIGHTS) gk = load_pack(gw + i0);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        psi[p][j] = pk.v[j];
        g[p][j] = WEIGHTS ? gk.v[j] : A(0);
      }
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const bool in = full || i0 + j < n;
        psi[p][j] = in ? logits[(i0 + j) * stride] : A(0);
        g[p][j] = WEIGHTS && in ? gw[i0 + j] : A(0);
      }
    }
  }
#pragma unroll
  for (int p = 0; p < kPacks; ++p) {
    const int64_t i0 = base + p * span;
    const int clean = clean_in_pack<A>(n_clean, i0);
    P out;
#pragma unroll
    for (int j = 0; j < V; ++j)
      out.v[j] = logit_grad<A, IN_LOSS, WEIGHTS>(psi[p][j], g[p][j], j < clean ? go_clean : go_noisy, sign, weight_code);
    if (VEC && full) {
      store_pack(d + i0, out);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j)
        if (full || i0 + j < n) d[i0 + j] = out.v[j];
    }
  }
}

template <typename A, bool VEC>
__global__ void __launch_bounds__(kThreads, (forward_blocks_per_sm<A, VEC>())) backward_kernel(NtLossArgs a) {
  constexpr int64_t R = backward_round_logits<A>();
  const int64_t real_blocks = (a.n_real + R - 1) / R;
  const bool real = int64_t(blockIdx.x) < real_blocks;
  const int64_t k0 = (real ? int64_t(blockIdx.x) : int64_t(blockIdx.x) - real_blocks) * R;
  const int64_t n = real ? a.n_real : a.n_fake;
  const A mu = read_mu<A>(a);
  const A go = *reinterpret_cast<const A*>(a.go);
  // the side's coefficients divided once, not per logit (as in the forward); go * coef as the plain loop's
  // go * coef * slope rounds it first
  const nt::HalfCoefs<A> c = nt::half_coefs<A>(n, mu, a.reduction);
  const A go_clean = go * c.clean, go_noisy = go * c.noisy;
  const A* logits = reinterpret_cast<const A*>(real ? a.logits_real : a.logits_fake);
  const A* gw = reinterpret_cast<const A*>(real ? a.gw_real : a.gw_fake);
  A* d = reinterpret_cast<A*>(real ? a.d_real : a.d_fake);
  const int sign = real ? nt::real_sign(a.kind) : nt::fake_sign(a.kind);
  const int64_t stride = real ? a.s_real : a.s_fake;
  const int code = real ? penalty::kJsReal : penalty::kJsFake;
  if (sign == 0 && gw == nullptr) {  // G's real logits: a zero gradient
    for (int64_t k = k0 + threadIdx.x; k < n && k < k0 + R; k += blockDim.x) d[k] = A(0);
  } else if (sign == 0)
    backward_round<A, VEC, false, true>(logits, gw, d, k0, n, stride, A(0), go_clean, go_noisy, c.n_clean, code);
  else if (gw == nullptr)
    backward_round<A, VEC, true, false>(logits, gw, d, k0, n, stride, A(sign), go_clean, go_noisy, c.n_clean, code);
  else
    backward_round<A, VEC, true, true>(logits, gw, d, k0, n, stride, A(sign), go_clean, go_noisy, c.n_clean, code);
}

int64_t forward_blocks(const NtLossArgs& a) {
  if (a.partials == 0) return 1;
  return (a.n_real + a.chunk - 1) / a.chunk + (a.n_fake + a.chunk - 1) / a.chunk;
}

// Whether both sides' logits are contiguous and 16-byte aligned: a side of n <= 1 logits has no stride to speak
// of; a null pointer (an empty side, no weights) is aligned.
bool logits_packable(const NtLossArgs& a) {
  return (a.n_real <= 1 || a.s_real == 1) && (a.n_fake <= 1 || a.s_fake == 1) && aligned16(a.logits_real) &&
         aligned16(a.logits_fake);
}

// The forward's packs: logits, and the weights it writes; the chunks start on a pack.
template <typename A>
bool can_vectorize(const NtLossArgs& a) {
  const bool chunks = a.partials == 0 || a.chunk % Pack<A>::N == 0;
  return logits_packable(a) && chunks && aligned16(a.w_real) && aligned16(a.w_fake);
}

template <typename A>
int launch_forward(const NtLossArgs& a, cudaStream_t st) {
  const int64_t blocks = forward_blocks(a);
  if (blocks < 1 || blocks > int64_t(0x7fffffff)) return static_cast<int>(cudaErrorInvalidValue);
  if (can_vectorize<A>(a))
    forward_kernel<A, true><<<dim3(unsigned(blocks)), kThreads, 0, st>>>(a);
  else
    forward_kernel<A, false><<<dim3(unsigned(blocks)), kThreads, 0, st>>>(a);
  if (a.partials != 0)
    sum_partials_kernel<A><<<1, kThreads, 0, st>>>(reinterpret_cast<const A*>(a.partials), blocks,
                                                   reinterpret_cast<A*>(a.loss));
  return static_cast<int>(cudaGetLastError());
}

// The backward's packs: logits, their gw (contiguous, or none) and d.
bool can_vectorize_backward(const NtLossArgs& a) {
  return logits_packable(a) && aligned16(a.gw_real) && aligned16(a.gw_fake) && aligned16(a.d_real) &&
         aligned16(a.d_fake);
}

template <typename A>
int launch_backward(const NtLossArgs& a, cudaStream_t st) {
  constexpr int64_t R = backward_round_logits<A>();
  const int64_t blocks = (a.n_real + R - 1) / R + (a.n_fake + R - 1) / R;
  if (blocks > int64_t(0x7fffffff)) return static_cast<int>(cudaErrorInvalidValue);
  if (can_vectorize_backward(a))
    backward_kernel<A, true><<<dim3(unsigned(blocks)), kThreads, 0, st>>>(a);
  else
    backward_kernel<A, false><<<dim3(unsigned(blocks)), kThreads, 0, st>>>(a);
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
  if (a.n_real + a.n_fake == 0) return 0;
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  if (a.dtype == kFloat64) return launch_backward<double>(a, st);
  if (a.dtype == kFloat32) return launch_backward<float>(a, st);
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace cuda
}  // namespace fastgan
