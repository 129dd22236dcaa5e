// Host-side entry points of the CUDA kernels (compiled by nvcc into the fastgan_cuda static library).
// They take raw device pointers, sizes, strides and a cudaStream_t passed as an integer, and return
// a cudaError_t code so the Python side can raise with the CUDA message.
#pragma once
#include <cstdint>

namespace fastgan {
namespace cuda {

const char* error_string(int code);
int device_count(int* count);
int get_device(int* device);
int runtime_version();

// Weighted gradient-norm penalty, see penalty_math.h. grad: (B, F) with strides (sb, sf) in elements;
// logits: (B,) with stride sl; out/sq: accumulation dtype (float64 iff grad is float64, else float32).
int penalty_forward(std::uintptr_t grad, int grad_dtype, std::uintptr_t logits, std::uintptr_t out,
                    int64_t B, int64_t F, int64_t sb, int64_t sf, int64_t sl, int weight,
                    std::uintptr_t stream);
// dgrad is written contiguous (B, F) in the grad dtype; go (B,) and dlogits (B,) in the accumulation dtype.
int penalty_backward(std::uintptr_t go, std::uintptr_t grad, int grad_dtype, std::uintptr_t logits,
                     std::uintptr_t dgrad, std::uintptr_t dlogits, int64_t B, int64_t F, int64_t sb,
                     int64_t sf, int64_t sl, int weight, std::uintptr_t stream);
// The closed-form penalties' per-sample terms in one pass: per = w ||g||^2, u = scale w' ||g||^2 (dlogits) and
// v = 2 scale w g (dgrad, contiguous), with rows [0, split) weighted by `weight` and [split, B) by `weight2`.
int penalty_terms(std::uintptr_t grad, int grad_dtype, std::uintptr_t logits, std::uintptr_t per,
                  std::uintptr_t dgrad, std::uintptr_t dlogits, int64_t B, int64_t F, int64_t sb, int64_t sf,
                  int64_t sl, int weight, int weight2, int64_t split, double scale, std::uintptr_t stream);

}  // namespace cuda
}  // namespace fastgan
