// Device-side storage <-> accumulation conversions and group reductions shared by the CUDA kernels.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cstdint>

namespace fastgan {
namespace cuda {

template <typename A> __device__ __forceinline__ A to_acc(float v) { return A(v); }
template <typename A> __device__ __forceinline__ A to_acc(double v) { return A(v); }
template <typename A> __device__ __forceinline__ A to_acc(__half v) { return A(__half2float(v)); }
template <typename A> __device__ __forceinline__ A to_acc(__nv_bfloat16 v) { return A(__bfloat162float(v)); }

template <typename T> struct FromAcc;
template <> struct FromAcc<float> { template <typename A> __device__ static float cvt(A v) { return float(v); } };
template <> struct FromAcc<double> { template <typename A> __device__ static double cvt(A v) { return double(v); } };
template <> struct FromAcc<__half> { template <typename A> __device__ static __half cvt(A v) { return __float2half_rn(float(v)); } };
template <> struct FromAcc<__nv_bfloat16> { template <typename A> __device__ static __nv_bfloat16 cvt(A v) { return __float2bfloat16_rn(float(v)); } };

// 16-byte packs: one vector load/store per pack when rows are contiguous and aligned.
template <typename T>
struct alignas(16) Pack {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};

constexpr int kThreads = 256;

// Sum over groups of TPR consecutive threads; every thread of the block must call it (TPR == kThreads
// synchronises the block). The result is valid in every thread of the group.
template <typename A, int TPR>
__device__ __forceinline__ A group_sum(A v, A* smem) {
  if constexpr (TPR == 1) {
    return v;
  } else if constexpr (TPR <= 32) {
#pragma unroll
    for (int o = TPR / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
  } else {
    static_assert(TPR == kThreads, "group_sum: TPR must be <= 32 or the whole block");
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) smem[warp] = v;
    __syncthreads();
    A t = lane < kThreads / 32 ? smem[lane] : A(0);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    __syncthreads();  // smem is reused by the next row
    return t;
  }
}

inline bool aligned16(std::uintptr_t p) { return (p & 15u) == 0; }

}  // namespace cuda
}  // namespace fastgan
