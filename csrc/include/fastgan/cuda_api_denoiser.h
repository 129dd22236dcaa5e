// Host-side entry points of the CUDA kernels of the fused DFM denoiser (csrc/cuda/denoiser.cu).
// Raw device pointers (0 for an absent optional tensor), sizes, dtype code (float32 or float64 only) and a
// cudaStream_t passed as an integer; the return value is a cudaError_t code. All 2-D tensors are
// contiguous (B, N) row-major; per-feature vectors have N contiguous elements. Math: bn_math.h.
#pragma once
#include <cstdint>

namespace fastgan {
namespace cuda {

// out = relu(gamma * (y - shift) * invstd + beta); writes shift and invstd (N,). training: batch statistics,
// and when `track` the updated running stats into rm_out / rv_out (which may alias rm / rv). eval: running
// stats. `bias` is the preceding Linear's bias (may be 0).
// count: an int64 the launch adds 1 to (the layer's num_batches_tracked), or 0; refused with N == 0 (no launch).
int bn_relu_forward(std::uintptr_t y, std::uintptr_t bias, std::uintptr_t gamma, std::uintptr_t beta,
                    std::uintptr_t rm, std::uintptr_t rv, std::uintptr_t out, std::uintptr_t shift,
                    std::uintptr_t invstd, std::uintptr_t rm_out, std::uintptr_t rv_out, std::uintptr_t count,
                    int dtype, int64_t B, int64_t N, bool training, bool track, double momentum, double eps,
                    bool relu, std::uintptr_t stream);

// dy (B, N), dgamma, dbeta, dbias (N,) from dout and the forward's out (read only when relu), y, shift, invstd.
int bn_relu_backward(std::uintptr_t dout, std::uintptr_t out, std::uintptr_t y, std::uintptr_t gamma,
                     std::uintptr_t shift, std::uintptr_t invstd, std::uintptr_t dy, std::uintptr_t dgamma,
                     std::uintptr_t dbeta, std::uintptr_t dbias, int dtype, int64_t B, int64_t N, bool training,
                     bool relu, std::uintptr_t stream);

// out (B,) = sum_f (y + bias - target)^2; bias may be 0.
int recon_loss_forward(std::uintptr_t y, std::uintptr_t bias, std::uintptr_t target, std::uintptr_t out, int dtype,
                       int64_t B, int64_t N, std::uintptr_t stream);

// dy = 2 go_n (y + bias - target); dbias = sum_n dy (skipped when dbias is 0). go_n = go[n] when go_div is 0,
// else go[0] / go_div for every n (the backward of the loss's mean, go_div = B, or sum, 1: recon::shared_go).
int recon_loss_backward(std::uintptr_t go, std::uintptr_t y, std::uintptr_t bias, std::uintptr_t target,
                        std::uintptr_t dy, std::uintptr_t dbias, int dtype, int64_t B, int64_t N, int64_t go_div,
                        std::uintptr_t stream);

// out = h + sigma * noise over numel contiguous elements.
int corrupt(std::uintptr_t h, std::uintptr_t noise, std::uintptr_t out, double sigma, int dtype, int64_t numel,
            std::uintptr_t stream);

}  // namespace cuda
}  // namespace fastgan
