// Host-side entry points of the NTGAN CUDA kernels (csrc/cuda/noise.cu, csrc/cuda/nt_losses.cu), in the
// style of cuda_api.h: raw device pointers in the argument structs, the stream as an integer, and a
// cudaError_t code returned.
#pragma once
#include <cstdint>
#include "fastgan/noise_args.h"

namespace fastgan {
namespace cuda {

int noisy_forward(const NoisyForwardArgs& args, std::uintptr_t stream);
int noisy_backward(const NoisyBackwardArgs& args, std::uintptr_t stream);
int nt_losses_forward(const NtLossArgs& args, std::uintptr_t stream);
int nt_losses_backward(const NtLossArgs& args, std::uintptr_t stream);

}  // namespace cuda
}  // namespace fastgan
