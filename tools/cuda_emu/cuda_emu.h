// A CUDA execution model on the CPU, for testing fastgan's CUDA C++ kernels where no GPU is lent.
//
// tools/cuda_emu/build.py compiles csrc/cuda/*.cu as C++ with this header force-included and every
// `kernel<<<grid, block, smem, stream>>>(args)` rewritten to
// `::emu::Launch(grid, block, smem, stream).run(site, function, [&] { kernel(args); })`. A launch runs the
// blocks one after another; the threads of a block are fibers (cuda_emu.cpp) that switch at barriers, so
// __syncthreads is a real barrier (one that some live thread never reaches, as in divergent code, fails the
// launch), warp shuffles exchange values between the 32 threads of a warp, and __shared__ variables are
// shared by the threads of the block (function-local statics: blocks never overlap). Device pointers are
// host pointers.
//
// What it checks: the kernels' indexing, launch geometry, grid-stride loops, reductions through shared memory
// and shuffles, vectorised paths, barriers, atomics; races between the threads of a block, when a kernel runs in
// both thread orders (emu_set_schedule) with its __shared__ variables poisoned at each block's start
// (shared_region). What it cannot: timing, occupancy, memory coalescing, the hardware's floating-point
// contraction (FMA) and fast-math choices, races between blocks (they never run at once), and code that relies on
// warp-lockstep execution without a shuffle or barrier where neither thread order breaks it.
#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>

#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Function-local statics are shared by every thread of the running block; blocks run one at a time.
#define __shared__ static

namespace emu {

struct Block;

struct ThreadCtx {
  uint3 tid, bid;
  dim3 bdim, gdim;
  Block* block;
  int linear;  // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
};

extern thread_local ThreadCtx ctx;

void syncthreads();
// Exchanges `bytes` bytes of this thread's value with the warp; reads lane `src`'s value into out
// (its own when src is outside the warp's live lanes).
void warp_exchange(const void* value, void* out, std::size_t bytes, int src);
void launch_blocks(dim3 grid, dim3 block, std::size_t smem, const std::function<void()>& body);

void record_launch(const char* site, const char* function);
// Every `__shared__` declaration is followed by a call of this (build.py): the first thread of a block to reach it
// fills the variable with 0xFF bytes (NaN as a float, -1 as an integer), so a read before any thread of this
// block wrote it sees garbage, not what the previous block or launch left in the static.
void shared_region(void* p, std::size_t bytes);

// `kernel<<<cfg>>>(args)` becomes `::emu::Launch(cfg).run(site, __PRETTY_FUNCTION__, [&] { kernel(args); })`;
// the launch is counted under its source line and the launching function's signature (template arguments).
struct Launch {
  Launch(dim3 grid_, dim3 block_, std::size_t smem_ = 0, cudaStream_t = nullptr) : grid(grid_), block(block_), smem(smem_) {}
  template <typename Body>
  void run(const char* site, const char* function, Body&& body) const {
    record_launch(site, function);
    launch_blocks(grid, block, smem, std::function<void()>(std::forward<Body>(body)));
  }
  dim3 grid, block;
  std::size_t smem;
};

inline int lane() { return ctx.linear % 32; }

}  // namespace emu

#define threadIdx (::emu::ctx.tid)
#define blockIdx (::emu::ctx.bid)
#define blockDim (::emu::ctx.bdim)
#define gridDim (::emu::ctx.gdim)

inline void __syncthreads() { ::emu::syncthreads(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = 32) {
  const int lane = ::emu::lane();
  const int base = lane & ~(width - 1);
  const int src = base + ((lane - base) ^ lane_mask);
  T out;
  ::emu::warp_exchange(&v, &out, sizeof(T), src < base + width ? src : lane);
  return out;
}

template <typename T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  const int lane = ::emu::lane();
  const int base = lane & ~(width - 1);
  const int src = lane + int(delta);
  T out;
  ::emu::warp_exchange(&v, &out, sizeof(T), src < base + width ? src : lane);
  return out;
}

inline unsigned __umulhi(unsigned a, unsigned b) {
  return unsigned((static_cast<unsigned long long>(a) * b) >> 32);
}

template <typename T, typename U>
inline T atomicAdd(T* address, U value) {
  static_assert(std::is_integral_v<T> || std::is_floating_point_v<T>, "atomicAdd: unsupported type");
  return std::atomic_ref<T>(*address).fetch_add(T(value));
}
