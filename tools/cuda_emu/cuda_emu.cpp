// The emulator's runtime: launches, barriers, warp exchanges, and the few CUDA runtime calls fastgan makes.
// See cuda_emu.h for the execution model.
//
// The CUDA threads of a block are fibers (ucontext) on the launching thread, run round-robin: a fiber runs
// until it reaches a barrier (__syncthreads, or a warp shuffle's exchange) or returns, then the next one runs.
// A barrier opens when every live thread of its block (or warp) has arrived; a thread that returns stops
// counting. When no fiber can run and some still wait, no barrier can ever open (a barrier in divergent code,
// or part of a warp at a shuffle while the rest waits at __syncthreads): the launch fails at once, saying so.
// Scheduling is deterministic and a thread runs as far ahead as the barriers let it, so a missing
// __syncthreads makes a thread read shared memory before the others wrote it, in every run. Threads (and blocks)
// run in index order, or in reverse order (emu_set_schedule("reverse")): a race between two threads of a block
// (one writes what the other reads with no barrier between) reads the fresh value in one order and the stale one
// in the other, so running a kernel under both orders exposes it whichever thread writes.
#include "cuda_emu.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <ucontext.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace emu {

thread_local ThreadCtx ctx;
std::atomic<bool> reverse_schedule{false};

namespace {

constexpr std::size_t kStack = 128 * 1024;

enum class State { Ready, AtBlockBarrier, AtWarpBarrier, Done };

struct Gate {  // one barrier: its live threads and how many of them wait at it
  int live = 0, arrived = 0;
};

struct Fiber {
  ucontext_t uc;
  ThreadCtx tctx;
  State state = State::Ready;
};

}  // namespace

struct Block {
  unsigned long serial = 0;  // counts every block run in this process
  std::vector<Fiber> fibers;
  Gate block_gate;
  std::vector<Gate> warp_gates;
  std::vector<std::array<std::array<unsigned char, 16>, 32>> slots;  // a warp's shuffle values
  const std::function<void()>* body = nullptr;
  ucontext_t scheduler;
  int current = -1;
  std::string failure;

  // Opens `gate` if every live thread waits there: its waiters (fibers first..first+count-1 in state `at`)
  // may run again.
  void maybe_open(Gate& gate, State at, int first, int count) {
    if (gate.arrived == 0 || gate.arrived < gate.live) return;
    gate.arrived = 0;
    for (int i = first; i < first + count; ++i)
      if (fibers[i].state == at) fibers[i].state = State::Ready;
  }
  int warp_first(int w) const { return w * 32; }
  int warp_count(int w) const { return std::min<int>(32, int(fibers.size()) - w * 32); }

  void wait_at(Gate& gate, State at, int first, int count) {
    Fiber& f = fibers[current];
    f.state = at;
    ++gate.arrived;
    maybe_open(gate, at, first, count);
    swapcontext(&f.uc, &scheduler);  // back here once the gate has opened
  }

  void finish(int i) {
    Fiber& f = fibers[i];
    f.state = State::Done;
    const int w = i / 32;
    --block_gate.live;
    --warp_gates[w].live;
    maybe_open(block_gate, State::AtBlockBarrier, 0, int(fibers.size()));
    maybe_open(warp_gates[w], State::AtWarpBarrier, warp_first(w), warp_count(w));
  }
};

namespace {

thread_local Block* running = nullptr;

void fiber_entry() {
  Block& b = *running;
  try {
    (*b.body)();
  } catch (const std::exception& e) {
    if (b.failure.empty()) b.failure = e.what();
  }
  b.finish(b.current);
  // returning resumes uc_link: the scheduler
}

// Fiber stacks, reused by every launch on this thread.
std::vector<std::unique_ptr<char[]>>& stacks(std::size_t n) {
  static thread_local std::vector<std::unique_ptr<char[]>> pool;
  while (pool.size() < n) pool.push_back(std::make_unique_for_overwrite<char[]>(kStack));
  return pool;
}

std::string describe_deadlock(const Block& b) {
  int at_block = 0, at_warp = 0;
  for (const Fiber& f : b.fibers) {
    at_block += f.state == State::AtBlockBarrier;
    at_warp += f.state == State::AtWarpBarrier;
  }
  return "a barrier never opens: " + std::to_string(at_block) + " threads wait at __syncthreads and " +
         std::to_string(at_warp) + " at a warp shuffle, of " + std::to_string(b.block_gate.live) +
         " live (a barrier in divergent code?)";
}

// Runs one block to completion, its threads in index order or reversed; returns an error message, empty on success.
std::string run_block(dim3 grid, dim3 block, uint3 bid, const std::function<void()>& body, bool reverse) {
  const int n = int(block.x * block.y * block.z);
  static unsigned long blocks_run = 0;  // under launch_blocks' lock
  Block b;
  b.serial = ++blocks_run;
  b.body = &body;
  b.fibers.resize(n);
  b.block_gate.live = n;
  const int warps = (n + 31) / 32;
  b.warp_gates.resize(warps);
  b.slots.resize(warps);
  for (int w = 0; w < warps; ++w) b.warp_gates[w].live = b.warp_count(w);
  auto& stk = stacks(n);
  for (int t = 0; t < n; ++t) {
    Fiber& f = b.fibers[t];
    f.tctx.tid = uint3{unsigned(t % block.x), unsigned((t / block.x) % block.y), unsigned(t / (block.x * block.y))};
    f.tctx.bid = bid;
    f.tctx.bdim = block;
    f.tctx.gdim = grid;
    f.tctx.block = &b;
    f.tctx.linear = t;
    getcontext(&f.uc);
    f.uc.uc_stack.ss_sp = stk[t].get();
    f.uc.uc_stack.ss_size = kStack;
    f.uc.uc_link = &b.scheduler;
    makecontext(&f.uc, fiber_entry, 0);
  }
  Block* outer = running;
  const ThreadCtx outer_ctx = ctx;
  running = &b;
  int done = 0;
  std::string error;
  while (done < n) {
    bool ran = false;
    for (int i = 0; i < n; ++i) {
      const int t = reverse ? n - 1 - i : i;
      if (b.fibers[t].state != State::Ready) continue;
      ran = true;
      b.current = t;
      ctx = b.fibers[t].tctx;
      swapcontext(&b.scheduler, &b.fibers[t].uc);
      if (b.fibers[t].state == State::Done) ++done;
      if (!b.failure.empty()) break;
    }
    if (!b.failure.empty()) {
      error = b.failure + " (thread " + std::to_string(b.current) + ")";
      break;
    }
    if (!ran) {
      error = describe_deadlock(b);
      break;
    }
  }
  running = outer;
  ctx = outer_ctx;
  return error;  // on failure the unfinished fibers are abandoned (their stacks hold only kernel locals)
}

std::mutex error_mu;
cudaError_t last_error = cudaSuccess;
std::string last_message;

void set_error(cudaError_t code, const std::string& message) {
  std::lock_guard<std::mutex> lock(error_mu);
  if (last_error == cudaSuccess) {
    last_error = code;
    last_message = message;
  }
}

std::mutex launches_mu;
std::map<std::pair<std::string, std::string>, long> launches;

}  // namespace

void syncthreads() {
  Block& b = *ctx.block;
  b.wait_at(b.block_gate, State::AtBlockBarrier, 0, int(b.fibers.size()));
}

void warp_exchange(const void* value, void* out, std::size_t bytes, int src) {
  if (bytes > 16) throw std::runtime_error("warp shuffle of more than 16 bytes");
  Block& b = *ctx.block;
  const int w = ctx.linear / 32, lane = ctx.linear % 32;
  auto& slots = b.slots[w];
  std::memcpy(slots[lane].data(), value, bytes);
  b.wait_at(b.warp_gates[w], State::AtWarpBarrier, b.warp_first(w), b.warp_count(w));
  std::memcpy(out, slots[src < b.warp_count(w) ? src : lane].data(), bytes);
  // nobody overwrites a slot before every lane has read: a second meeting
  b.wait_at(b.warp_gates[w], State::AtWarpBarrier, b.warp_first(w), b.warp_count(w));
}

void shared_region(void* p, std::size_t bytes) {
  static std::map<void*, unsigned long> poisoned_in;  // a variable -> the block that last poisoned it
  unsigned long& last = poisoned_in[p];
  if (last != ctx.block->serial) {
    std::memset(p, 0xFF, bytes);
    last = ctx.block->serial;
  }
}

void record_launch(const char* site, const char* function) {
  std::lock_guard<std::mutex> lock(launches_mu);
  ++launches[{site, function}];
}

void launch_blocks(dim3 grid, dim3 block, std::size_t smem, const std::function<void()>& body) {
  const long nthreads = long(block.x) * block.y * block.z;
  if (nthreads < 1 || nthreads > 1024 || grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.y > 65535 ||
      grid.z > 65535) {
    set_error(cudaErrorInvalidConfiguration, "emulated launch: invalid grid or block (" + std::to_string(grid.x) +
                                                 "x" + std::to_string(grid.y) + "x" + std::to_string(grid.z) +
                                                 " blocks of " + std::to_string(nthreads) + " threads)");
    return;
  }
  if (smem != 0) {
    set_error(cudaErrorInvalidValue, "emulated launch: dynamic shared memory is not emulated");
    return;
  }
  // kernels' __shared__ variables are statics: one block at a time in the whole process
  static std::mutex launch_mu;
  std::lock_guard<std::mutex> lock(launch_mu);
  const bool reverse = reverse_schedule.load();
  for (unsigned kz = 0; kz < grid.z; ++kz)
    for (unsigned ky = 0; ky < grid.y; ++ky)
      for (unsigned kx = 0; kx < grid.x; ++kx) {
        const unsigned bx = reverse ? grid.x - 1 - kx : kx, by = reverse ? grid.y - 1 - ky : ky,
                       bz = reverse ? grid.z - 1 - kz : kz;
        const std::string error = run_block(grid, block, uint3{bx, by, bz}, body, reverse);
        if (!error.empty()) {
          set_error(cudaErrorLaunchFailure, "emulated launch failed in block (" + std::to_string(bx) + ", " +
                                                std::to_string(by) + ", " + std::to_string(bz) + "): " + error);
          return;
        }
      }
}

const char* message_for(cudaError_t code) {
  std::lock_guard<std::mutex> lock(error_mu);
  static thread_local std::string text;
  text = "emulated CUDA error " + std::to_string(int(code)) + (last_message.empty() ? "" : ": " + last_message);
  return text.c_str();
}

std::map<std::pair<std::string, std::string>, long> launch_counts() {
  std::lock_guard<std::mutex> lock(launches_mu);
  return launches;
}

void reset_launch_counts() {
  std::lock_guard<std::mutex> lock(launches_mu);
  launches.clear();
}

}  // namespace emu

extern "C" {

cudaError_t cudaGetLastError(void) {
  std::lock_guard<std::mutex> lock(emu::error_mu);
  cudaError_t e = emu::last_error;
  emu::last_error = cudaSuccess;
  return e;
}

const char* cudaGetErrorString(cudaError_t code) { return emu::message_for(code); }

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

}  // extern "C"

#include "fastgan/registry.h"

namespace {
void register_emulator(pybind11::module_& m) {
  m.attr("cuda_emulated") = true;
#if defined(__SANITIZE_ADDRESS__)
  m.attr("emu_sanitizer") = "address";
#else
  m.attr("emu_sanitizer") = pybind11::none();
#endif
  m.def("emu_launches", &emu::launch_counts,
        "{(\"file.cu:line\", launching function's signature): launches} since the last emu_reset_launches()");
  m.def("emu_reset_launches", &emu::reset_launch_counts);
  m.def(
      "emu_set_schedule",
      [](const std::string& order) {
        if (order != "forward" && order != "reverse")
          throw pybind11::value_error("schedule must be 'forward' or 'reverse', got '" + order + "'");
        emu::reverse_schedule = order == "reverse";
      },
      "run threads and blocks in index order ('forward', the default) or in reverse order ('reverse')");
}
}  // namespace

FASTGAN_REGISTER_BINDINGS(cuda_emulator, register_emulator);
