// CPU kernels and Python bindings of the weighted gradient-norm penalty (fastgan/ops/penalty.py).
#include <pybind11/pybind11.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "fastgan/cpu_clones.h"
#include "fastgan/half_cpu.h"
#include "fastgan/penalty_math.h"
#include "fastgan/poly_math.h"
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
// flushed into the double sum every 256 elements, so the error stays far below torch's own. A float square
// overflows from |g| ~ 1.8e19: a block whose lanes are not finite is summed again in double (else the result
// would depend on F and the layout: the strided path is finite there).
// Rows shorter than 256 and a row's last F % 256 take the lanes over their whole groups of 16 too (summed one
// element at a time in double, a dependent chain, rows of 16-255 floats made the op 1.2-2.3x torch's time at
// B = 4096 until 2026-12-08); only the last F % 16 are summed in double.
inline double row_sq_norm(const float* row, int64_t F) {
  constexpr int kLanes = 16;
  constexpr int64_t kFlush = 256;
  double s = 0.0;
  int64_t f = 0;
  while (F - f >= kLanes) {
    const int64_t len = F - f >= kFlush ? kFlush : (F - f) / kLanes * kLanes;
    float acc[kLanes] = {};
    for (int64_t i = 0; i < len; i += kLanes)
      for (int k = 0; k < kLanes; ++k) acc[k] += row[f + i + k] * row[f + i + k];
    double block = 0.0;
    for (int k = 0; k < kLanes; ++k) block += acc[k];
    if (!std::isfinite(block)) block = row_sq_norm(row + f, len, 1);
    s += block;
    f += len;
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

// Rows per block: the weights of a block are computed in one vectorised loop (poly_math.h) rather than
// one scalar exp per row, which dominated short rows (the 3-D mixture's F = 3). Long rows keep one row per
// block, so threads still split a small batch of images.
constexpr int64_t kRows = 256;

inline int64_t rows_per_block(int64_t F) { return F <= 64 ? kRows : 1; }

template <int CODE>
__attribute__((always_inline)) inline void weights_impl(const double* __restrict psi, int64_t cnt,
                                                        double* __restrict w, double* __restrict dw) {
  for (int64_t i = 0; i < cnt; ++i) {
    if constexpr (CODE == penalty::kOne) {
      w[i] = 1.0;
      dw[i] = 0.0;
    } else if constexpr (CODE == penalty::kSigmoid) {
      const poly::Logistic l = poly::logistic(psi[i]);
      w[i] = l.s;
      dw[i] = l.s * l.q;
    } else if constexpr (penalty::is_exp_weight(CODE)) {
      penalty::weight_and_slope(CODE, psi[i], &w[i], &dw[i]);  // poly's exp covers x <= 0 only
    } else {
      poly::js_weight(CODE == penalty::kJsReal, poly::logistic(psi[i]), &w[i], &dw[i]);
    }
  }
}

// w(psi) and w'(psi) of penalty_math.h in double, for a block of logits.
FG_CPU_CLONES void block_weights(int code, const double* psi, int64_t cnt, double* w, double* dw) {
  if (code == penalty::kJsReal)
    weights_impl<penalty::kJsReal>(psi, cnt, w, dw);
  else if (code == penalty::kJsFake)
    weights_impl<penalty::kJsFake>(psi, cnt, w, dw);
  else if (code == penalty::kSigmoid)
    weights_impl<penalty::kSigmoid>(psi, cnt, w, dw);
  else if (code == penalty::kExp)
    weights_impl<penalty::kExp>(psi, cnt, w, dw);
  else if (code == penalty::kKl)
    weights_impl<penalty::kKl>(psi, cnt, w, dw);
  else
    weights_impl<penalty::kOne>(psi, cnt, w, dw);
  if (!penalty::is_logistic_weight(code)) return;
  // poly's exp(-|psi|) is held at exp(-708) below -708 (poly_math.h), which made a far logit's sigmoid (its weight
  // or slope) ~3e-308 where the true value is subnormal (by 1e8 in a float64 penalty with ||g||^2 ~ 1e300): those
  // rows again with penalty_math.h's scalar exp (a float32 result rounds either to 0)
  for (int64_t i = 0; i < cnt; ++i)
    if (psi[i] < -708.0 || psi[i] > 708.0) penalty::weight_and_slope(code, psi[i], &w[i], &dw[i]);
}

// Squared norms of a block of rows. Short contiguous float rows get loops with the row length known at
// compile time, which the compiler vectorises across rows; others take the per-row loop.
template <int FC>
__attribute__((always_inline)) inline void short_sq_norms_impl(const float* __restrict g, int64_t cnt,
                                                               double* __restrict s) {
  for (int64_t i = 0; i < cnt; ++i) {
    double acc = 0.0;
    for (int f = 0; f < FC; ++f) acc += double(g[i * FC + f]) * double(g[i * FC + f]);
    s[i] = acc;
  }
}

FG_CPU_CLONES void short_sq_norms(const float* g, int64_t cnt, int64_t F, double* s) {
  switch (F) {
    case 1: return short_sq_norms_impl<1>(g, cnt, s);
    case 2: return short_sq_norms_impl<2>(g, cnt, s);
    case 3: return short_sq_norms_impl<3>(g, cnt, s);
    default: return short_sq_norms_impl<4>(g, cnt, s);
  }
}

template <int FC>
__attribute__((always_inline)) inline void short_scale_rows_impl(const float* __restrict g, int64_t cnt,
                                                                 const float* __restrict scale, float* __restrict d) {
  for (int64_t i = 0; i < cnt; ++i)
    for (int f = 0; f < FC; ++f) d[i * FC + f] = scale[i] * g[i * FC + f];
}

// d[i, :] = scale[i] * g[i, :] for short contiguous float rows.
FG_CPU_CLONES void short_scale_rows(const float* g, int64_t cnt, int64_t F, const float* scale, float* d) {
  switch (F) {
    case 1: return short_scale_rows_impl<1>(g, cnt, scale, d);
    case 2: return short_scale_rows_impl<2>(g, cnt, scale, d);
    case 3: return short_scale_rows_impl<3>(g, cnt, scale, d);
    default: return short_scale_rows_impl<4>(g, cnt, scale, d);
  }
}

template <typename T>
bool short_rows(int64_t F, int64_t sb, int64_t sf) {
  return std::is_same_v<T, float> && F >= 1 && F <= 4 && sf == 1 && sb == F;
}

template <typename T>
void block_sq_norms(const T* g, int64_t n0, int64_t cnt, int64_t F, int64_t sb, int64_t sf, double* s) {
  if constexpr (std::is_same_v<T, float>) {
    if (short_rows<T>(F, sb, sf)) return short_sq_norms(g + n0 * F, cnt, F, s);
  }
  for (int64_t i = 0; i < cnt; ++i) s[i] = any_row_sq_norm(g + (n0 + i) * sb, F, sf);
}

template <typename T, typename A>
void forward_cpu(const T* g, const A* logits, A* out, int64_t B, int64_t F, int64_t sb, int64_t sf,
                 int64_t sl, int weight) {
  const int64_t rows = rows_per_block(F), blocks = (B + rows - 1) / rows;
#pragma omp parallel for schedule(static) if (parallel_worth_it(B, F))
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t n0 = b * rows, cnt = std::min(rows, B - n0);
    double psi[kRows], w[kRows], dw[kRows], sq[kRows];
    load_as_double(logits, n0, cnt, sl, psi);
    block_weights(weight, psi, cnt, w, dw);
    block_sq_norms(g, n0, cnt, F, sb, sf, sq);
    for (int64_t i = 0; i < cnt; ++i) out[n0 + i] = A(w[i] * sq[i]);
  }
}

// The backward for upstream go (per row), or with go null the closed forms' terms for a constant upstream
// go_scale, also writing per = w ||g||^2 when per is not null; rows from `split` on take weight code `weight2`.
template <typename T, typename A>
void backward_cpu(const A* go, double go_scale, const T* g, const A* logits, T* dgrad, A* dlogits, A* per, int64_t B,
                  int64_t F, int64_t sb, int64_t sf, int64_t sl, int weight, int weight2, int64_t split) {
  const int64_t rows = rows_per_block(F), blocks = (B + rows - 1) / rows;
#pragma omp parallel for schedule(static) if (parallel_worth_it(B, F))
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t n0 = b * rows, cnt = std::min(rows, B - n0);
    double psi[kRows], w[kRows], dw[kRows];
    load_as_double(logits, n0, cnt, sl, psi);
    // rows [n0, split) take weight, the rest weight2
    const int64_t head = std::clamp<int64_t>(split - n0, 0, cnt);
    block_weights(weight, psi, head, w, dw);
    block_weights(weight2, psi + head, cnt - head, w + head, dw + head);
    if constexpr (std::is_same_v<T, float>) {
      if (short_rows<T>(F, sb, sf)) {
        double sq[kRows];
        float scale[kRows];
        block_sq_norms(g, n0, cnt, F, sb, sf, sq);
        for (int64_t i = 0; i < cnt; ++i) {
          const double gon = go ? double(go[n0 + i]) : go_scale;
          scale[i] = float(A(penalty::grad_scale(w[i], gon)));
          dlogits[n0 + i] = A(penalty::logit_grad(dw[i], sq[i], gon));
          if (per) per[n0 + i] = A(w[i] * sq[i]);
        }
        short_scale_rows(g + n0 * F, cnt, F, scale, dgrad + n0 * F);
        continue;
      }
    }
    for (int64_t i = 0; i < cnt; ++i) {
      const int64_t n = n0 + i;
      const double gon = go ? double(go[n]) : go_scale;
      const A scale = A(penalty::grad_scale(w[i], gon));
      const T* row = g + n * sb;
      T* drow = dgrad + n * F;
      auto finish = [&](double s) {  // s = ||g_n||^2
        dlogits[n] = A(penalty::logit_grad(dw[i], s, gon));
        if (per) per[n] = A(w[i] * s);
      };
      if constexpr (std::is_same_v<T, float>) {
        if (sf == 1) {
          for (int64_t f = 0; f < F; ++f) drow[f] = scale * row[f];
          finish(row_sq_norm(row, F));
          continue;
        }
      }
      double s = 0.0;
      for (int64_t f = 0; f < F; ++f) {
        double v = Storage<T>::load(row[f * sf]);
        s += v * v;
        drow[f] = Storage<T>::store(double(scale) * v);
      }
      finish(s);
    }
  }
}

void check_sizes(int64_t B, int64_t F, int weight, int weight2 = penalty::kOne, int64_t split = 0) {
  if (B < 0 || F < 0) throw std::invalid_argument("penalty: negative size");
  for (int code : {weight, weight2})
    if (code < penalty::kOne || code > penalty::kLastWeight)
      throw std::invalid_argument("penalty: unknown weight code");
  if (split < 0 || split > B) throw std::invalid_argument("penalty: split outside [0, B]");
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

void backward_any_cpu(std::uintptr_t go, double go_scale, std::uintptr_t grad, int dtype, std::uintptr_t logits,
                      std::uintptr_t dgrad, std::uintptr_t dlogits, std::uintptr_t per, int64_t B, int64_t F,
                      int64_t sb, int64_t sf, int64_t sl, int weight, int weight2, int64_t split) {
  check_sizes(B, F, weight, weight2, split);
  py::gil_scoped_release nogil;
  switch (dtype) {
    case kFloat32: return backward_cpu(cptr<float>(go), go_scale, cptr<float>(grad), cptr<float>(logits), mptr<float>(dgrad), mptr<float>(dlogits), mptr<float>(per), B, F, sb, sf, sl, weight, weight2, split);
    case kFloat64: return backward_cpu(cptr<double>(go), go_scale, cptr<double>(grad), cptr<double>(logits), mptr<double>(dgrad), mptr<double>(dlogits), mptr<double>(per), B, F, sb, sf, sl, weight, weight2, split);
    case kFloat16: return backward_cpu(cptr<float>(go), go_scale, cptr<half_t>(grad), cptr<float>(logits), mptr<half_t>(dgrad), mptr<float>(dlogits), mptr<float>(per), B, F, sb, sf, sl, weight, weight2, split);
    case kBFloat16: return backward_cpu(cptr<float>(go), go_scale, cptr<bf16_t>(grad), cptr<float>(logits), mptr<bf16_t>(dgrad), mptr<float>(dlogits), mptr<float>(per), B, F, sb, sf, sl, weight, weight2, split);
  }
  throw std::invalid_argument("penalty: unsupported dtype code " + std::to_string(dtype));
}

void penalty_backward_cpu(std::uintptr_t go, std::uintptr_t grad, int dtype, std::uintptr_t logits,
                          std::uintptr_t dgrad, std::uintptr_t dlogits, int64_t B, int64_t F, int64_t sb, int64_t sf,
                          int64_t sl, int weight) {
  backward_any_cpu(go, 0.0, grad, dtype, logits, dgrad, dlogits, 0, B, F, sb, sf, sl, weight, weight, B);
}

void penalty_terms_cpu(std::uintptr_t grad, int dtype, std::uintptr_t logits, std::uintptr_t per,
                       std::uintptr_t dgrad, std::uintptr_t dlogits, int64_t B, int64_t F, int64_t sb, int64_t sf,
                       int64_t sl, int weight, int weight2, int64_t split, double scale) {
  backward_any_cpu(0, scale, grad, dtype, logits, dgrad, dlogits, per, B, F, sb, sf, sl, weight, weight2, split);
}

void bind(py::module_& m) {
  m.def("penalty_forward_cpu", &penalty_forward_cpu, "grad"_a, "dtype"_a, "logits"_a, "out"_a, "B"_a, "F"_a,
        "sb"_a, "sf"_a, "sl"_a, "weight"_a);
  m.def("penalty_backward_cpu", &penalty_backward_cpu, "go"_a, "grad"_a, "dtype"_a, "logits"_a, "dgrad"_a,
        "dlogits"_a, "B"_a, "F"_a, "sb"_a, "sf"_a, "sl"_a, "weight"_a);
  m.def("penalty_terms_cpu", &penalty_terms_cpu, "grad"_a, "dtype"_a, "logits"_a, "per"_a, "dgrad"_a, "dlogits"_a,
        "B"_a, "F"_a, "sb"_a, "sf"_a, "sl"_a, "weight"_a, "weight2"_a, "split"_a, "scale"_a);
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
  m.def("penalty_terms_cuda",
        [](std::uintptr_t grad, int dtype, std::uintptr_t logits, std::uintptr_t per, std::uintptr_t dgrad,
           std::uintptr_t dlogits, int64_t B, int64_t F, int64_t sb, int64_t sf, int64_t sl, int weight, int weight2,
           int64_t split, double scale, std::uintptr_t stream) {
          check_sizes(B, F, weight, weight2, split);
          raise_cuda(cuda::penalty_terms(grad, dtype, logits, per, dgrad, dlogits, B, F, sb, sf, sl, weight, weight2,
                                         split, scale, stream),
                     "penalty_terms_cuda");
        });
#endif
}

}  // namespace
}  // namespace fastgan

FASTGAN_REGISTER_BINDINGS(penalty, fastgan::bind);
