// CPU kernels and Python bindings of the weighted gradient-norm penalty (fastgan/ops/penalty.py).
#include <pybind11/pybind11.h>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "fastgan/half_cpu.h"
#include "fastgan/penalty_math.h"
#include "fastgan/binding_utils.h"
#include "fastgan/registry.h"
#ifdef FASTGAN_WITH_CUDA
#include "fastgan/cuda_api.h"
#endif

namespace py = pybind11;
using namespace pybind11::literals;

namespace fastgan {
namespace {

// Rows are independent; parallelise over them only when there is enough work to pay for the threads
// (a row costs about 16 elements' worth of work beyond its features: the weight's exp, the store).
constexpr int64_t kParallelWork = 1 << 17;

inline bool parallel_worth_it(int64_t B, int64_t F) { return B * (F + 16) > kParallelWork; }

// Sums in double whatever the storage dtype: the CPU path is then at least as accurate as torch's
// pairwise float32 reduction it is tested against.
template <typename T>
double row_sq_norm(const T* row, int64_t F, int64_t sf) {
  double s = 0.0;
  for (int64_t f = 0; f < F; ++f) {
    double v = Storage<T>::load(row[f * sf]);
    s += v * v;
  }
  return s;
}

// Contiguous float rows: 16 independent float lanes (the compiler vectorises them without reassociating),
// flushed into the double sum every 256 elements, so the error stays far below torch's own.
inline double row_sq_norm(const float* row, int64_t F) {
  constexpr int kLanes = 16;
  constexpr int64_t kFlush = 256;
  double s = 0.0;
  int64_t f = 0;
  for (; f + kFlush <= F; f += kFlush) {
    float acc[kLanes] = {};
    for (int64_t i = 0; i < kFlush; i += kLanes)
      for (int k = 0; k < kLanes; ++k) acc[k] += row[f + i + k] * row[f + i + k];
    for (int k = 0; k < kLanes; ++k) s += acc[k];
  }
  for (; f < F; ++f) s += double(row[f]) * double(row[f]);
  return s;
}

template <typename T>
double any_row_sq_norm(const T* row, int64_t F, int64_t sf) {
  if constexpr (std::is_same_v<T, float>) {
    if (sf == 1) return row_sq_norm(row, F);
  }
  return row_sq_norm(row, F, sf);
}

template <typename T, typename A>
void forward_cpu(const T* g, const A* logits, A* out, int64_t B, int64_t F, int64_t sb, int64_t sf,
                 int64_t sl, int weight) {
#pragma omp parallel for schedule(static) if (parallel_worth_it(B, F))
  for (int64_t n = 0; n < B; ++n) {
    double s = any_row_sq_norm(g + n * sb, F, sf);
    A w = penalty::weight<A>(weight, logits[n * sl]);
    out[n] = A(double(w) * s);
  }
}

template <typename T, typename A>
void backward_cpu(const A* go, const T* g, const A* logits, T* dgrad, A* dlogits, int64_t B, int64_t F,
                  int64_t sb, int64_t sf, int64_t sl, int weight) {
#pragma omp parallel for schedule(static) if (parallel_worth_it(B, F))
  for (int64_t n = 0; n < B; ++n) {
    A w, dw;
    penalty::weight_and_slope<A>(weight, logits[n * sl], &w, &dw);
    A gon = go[n];
    A scale = penalty::grad_scale(w, gon);
    const T* row = g + n * sb;
    T* drow = dgrad + n * F;
    if constexpr (std::is_same_v<T, float>) {
      if (sf == 1) {
        for (int64_t f = 0; f < F; ++f) drow[f] = scale * row[f];
        dlogits[n] = A(double(dw) * row_sq_norm(row, F) * double(gon));
        continue;
      }
    }
    double s = 0.0;
    for (int64_t f = 0; f < F; ++f) {
      double v = Storage<T>::load(row[f * sf]);
      s += v * v;
      drow[f] = Storage<T>::store(double(scale) * v);
    }
    dlogits[n] = A(double(dw) * s * double(gon));
  }
}

void check_sizes(int64_t B, int64_t F, int weight) {
  if (B < 0 || F < 0) throw std::invalid_argument("penalty: negative size");
  if (weight < penalty::kOne || weight > penalty::kJsFake) throw std::invalid_argument("penalty: unknown weight code");
}

void penalty_forward_cpu(std::uintptr_t grad, int dtype, std::uintptr_t logits, std::uintptr_t out, int64_t B,
                         int64_t F, int64_t sb, int64_t sf, int64_t sl, int weight) {
  check_sizes(B, F, weight);
  py::gil_scoped_release nogil;
  switch (dtype) {
    case kFloat32: return forward_cpu(cptr<float>(grad), cptr<float>(logits), mptr<float>(out), B, F, sb, sf, sl, weight);
    case kFloat64: return forward_cpu(cptr<double>(grad), cptr<double>(logits), mptr<double>(out), B, F, sb, sf, sl, weight);
    case kFloat16: return forward_cpu(cptr<half_t>(grad), cptr<float>(logits), mptr<float>(out), B, F, sb, sf, sl, weight);
    case kBFloat16: return forward_cpu(cptr<bf16_t>(grad), cptr<float>(logits), mptr<float>(out), B, F, sb, sf, sl, weight);
  }
  throw std::invalid_argument("penalty: unsupported dtype code " + std::to_string(dtype));
}

void penalty_backward_cpu(std::uintptr_t go, std::uintptr_t grad, int dtype, std::uintptr_t logits,
                          std::uintptr_t dgrad, std::uintptr_t dlogits, int64_t B, int64_t F, int64_t sb, int64_t sf,
                          int64_t sl, int weight) {
  check_sizes(B, F, weight);
  py::gil_scoped_release nogil;
  switch (dtype) {
    case kFloat32: return backward_cpu(cptr<float>(go), cptr<float>(grad), cptr<float>(logits), mptr<float>(dgrad), mptr<float>(dlogits), B, F, sb, sf, sl, weight);
    case kFloat64: return backward_cpu(cptr<double>(go), cptr<double>(grad), cptr<double>(logits), mptr<double>(dgrad), mptr<double>(dlogits), B, F, sb, sf, sl, weight);
    case kFloat16: return backward_cpu(cptr<float>(go), cptr<half_t>(grad), cptr<float>(logits), mptr<half_t>(dgrad), mptr<float>(dlogits), B, F, sb, sf, sl, weight);
    case kBFloat16: return backward_cpu(cptr<float>(go), cptr<bf16_t>(grad), cptr<float>(logits), mptr<bf16_t>(dgrad), mptr<float>(dlogits), B, F, sb, sf, sl, weight);
  }
  throw std::invalid_argument("penalty: unsupported dtype code " + std::to_string(dtype));
}

void bind(py::module_& m) {
  m.def("penalty_forward_cpu", &penalty_forward_cpu, "grad"_a, "dtype"_a, "logits"_a, "out"_a, "B"_a, "F"_a,
        "sb"_a, "sf"_a, "sl"_a, "weight"_a);
  m.def("penalty_backward_cpu", &penalty_backward_cpu, "go"_a, "grad"_a, "dtype"_a, "logits"_a, "dgrad"_a,
        "dlogits"_a, "B"_a, "F"_a, "sb"_a, "sf"_a, "sl"_a, "weight"_a);
#ifdef FASTGAN_WITH_CUDA
  m.def("penalty_forward_cuda",
        [](std::uintptr_t grad, int dtype, std::uintptr_t logits, std::uintptr_t out, int64_t B, int64_t F,
           int64_t sb, int64_t sf, int64_t sl, int weight, std::uintptr_t stream) {
          check_sizes(B, F, weight);
          raise_cuda(cuda::penalty_forward(grad, dtype, logits, out, B, F, sb, sf, sl, weight, stream),
                     "penalty_forward_cuda");
        });
  m.def("penalty_backward_cuda",
        [](std::uintptr_t go, std::uintptr_t grad, int dtype, std::uintptr_t logits, std::uintptr_t dgrad,
           std::uintptr_t dlogits, int64_t B, int64_t F, int64_t sb, int64_t sf, int64_t sl, int weight,
           std::uintptr_t stream) {
          check_sizes(B, F, weight);
          raise_cuda(cuda::penalty_backward(go, grad, dtype, logits, dgrad, dlogits, B, F, sb, sf, sl, weight, stream),
                     "penalty_backward_cuda");
        });
#endif
}

}  // namespace
}  // namespace fastgan

FASTGAN_REGISTER_BINDINGS(penalty, fastgan::bind);
