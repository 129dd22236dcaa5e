// CPU kernels and Python bindings of the NTGAN mu-weighted clean/noisy losses (fastgan/ops/nt_losses.py).
// Per-sample math: fastgan/nt_losses_math.h (shared with csrc/cuda/nt_losses.cu) for the coefficients, and
// its double-precision, branch-free form in fastgan/poly_math.h, so the loops over samples vectorise.
#include <pybind11/pybind11.h>
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "fastgan/binding_utils.h"
#include "fastgan/cpu_clones.h"
#include "fastgan/noise_args.h"
#include "fastgan/nt_losses_math.h"
#include "fastgan/poly_math.h"
#include "fastgan/registry.h"
#ifdef FASTGAN_WITH_CUDA
#include "fastgan/cuda_api.h"
#include "fastgan/cuda_api_noise.h"
#endif

namespace py = pybind11;

namespace fastgan {
namespace {

template <typename A>
A read_mu(const NtLossArgs& a) {
  return a.mu != 0 ? *reinterpret_cast<const A*>(a.mu) : A(a.mu_value);
}

// Samples per partial sum. Fixed, not per thread, so the loss is the same for any number of threads: the
// partial sums are added in chunk order. Everything is computed in double, whatever the storage dtype.
constexpr int64_t kChunk = 512;
// Below this many samples, starting threads costs more than it saves.
constexpr int64_t kParallelSamples = 1 << 14;

// One side (real or fake logits) with its sign (0: not in the loss), its JS weight and the two values
// of nt::coef, precomputed so the loops below are branch-free.
struct Side {
  const void* logits;
  int64_t n, stride;
  double sign;  // 0 (and zero coefficients) when the side is not in the loss
  bool real;    // JS weight (1 - s)^2 for real logits, s^2 for fake
  int64_t n_clean;
  double c_clean, c_noisy;
};

template <typename A>
Side side_of(std::uintptr_t logits, int64_t n, int64_t stride, int sign, bool real, A mu, int reduction) {
  const nt::HalfCoefs<A> c = nt::half_coefs<A>(n, mu, reduction);
  const bool in_loss = sign != 0;
  return {reinterpret_cast<const void*>(logits), n, stride, double(sign), real, c.n_clean,
          in_loss && c.n_clean > 0 ? double(c.clean) : 0.0, in_loss && n > c.n_clean ? double(c.noisy) : 0.0};
}

// Loss terms coef * softplus(sign * psi) of a chunk into v, and (WEIGHTS) its JS weights into w. The side's
// fields are locals and its switches template arguments: GCC does not vectorise a loop that selects on a
// loop-invariant runtime bool, nor one whose stores could alias the fields it reads. F32: float32 logits, so
// float32 results: the shorter polynomials of poly_math.h.
template <bool F32, bool REAL, bool WEIGHTS>
__attribute__((always_inline)) inline void chunk_forward_impl(const Side& s, int64_t k0, int64_t cnt,
                                                              const double* __restrict psi, double* __restrict v,
                                                              double* __restrict w) {
  const double sign = s.sign, c_clean = s.c_clean, c_noisy = s.c_noisy;
  const int64_t clean_end = s.n_clean - k0;
  for (int64_t i = 0; i < cnt; ++i) {
    const poly::Logistic l = poly::logistic<F32>(psi[i]);
    const double c = i < clean_end ? c_clean : c_noisy;
    v[i] = c * poly::softplus_signed<F32>(psi[i], sign, l.e);  // c = 0 when the side is not in the loss
    if (WEIGHTS) {
      double dw;
      poly::js_weight(REAL, l, &w[i], &dw);
    }
  }
}

// always_inline: each clone below must get its own (AVX2 or baseline) copy of the loops, not call a shared one.
template <bool F32>
__attribute__((always_inline)) inline void chunk_forward_any(const Side& s, int64_t k0, int64_t cnt,
                                                             const double* psi, double* v, double* w) {
  if (w == nullptr)
    chunk_forward_impl<F32, false, false>(s, k0, cnt, psi, v, w);
  else if (s.real)
    chunk_forward_impl<F32, true, true>(s, k0, cnt, psi, v, w);
  else
    chunk_forward_impl<F32, false, true>(s, k0, cnt, psi, v, w);
}

// w: nullptr when the caller wants no JS weights. One clone set per precision (target_clones and templates
// do not mix).
FG_CPU_CLONES void chunk_forward_f32(const Side& s, int64_t k0, int64_t cnt, const double* psi, double* v,
                                     double* w) {
  chunk_forward_any<true>(s, k0, cnt, psi, v, w);
}

FG_CPU_CLONES void chunk_forward_f64(const Side& s, int64_t k0, int64_t cnt, const double* psi, double* v,
                                     double* w) {
  chunk_forward_any<false>(s, k0, cnt, psi, v, w);
}

// d = go * coef * sign * sigmoid(sign * psi) + gw * w'(psi) of a chunk (WEIGHTS false: no weight gradient).
template <bool F32, bool REAL, bool POSITIVE, bool WEIGHTS>
__attribute__((always_inline)) inline void chunk_backward_impl(const Side& s, int64_t k0, int64_t cnt,
                                                               const double* __restrict psi, double go,
                                                               const double* __restrict gw, double* __restrict d) {
  const double c_clean = s.c_clean * go * s.sign, c_noisy = s.c_noisy * go * s.sign;
  const int64_t clean_end = s.n_clean - k0;
  for (int64_t i = 0; i < cnt; ++i) {
    const poly::Logistic l = poly::logistic<F32>(psi[i]);
    const double c = i < clean_end ? c_clean : c_noisy;
    const double sig = POSITIVE ? l.s : l.q;  // sigmoid(sign * psi)
    if (WEIGHTS) {
      double w, dw;
      poly::js_weight(REAL, l, &w, &dw);
      d[i] = c * sig + gw[i] * dw;
    } else {
      d[i] = c * sig;
    }
  }
}

template <bool F32>
__attribute__((always_inline)) inline void chunk_backward_any(const Side& s, int64_t k0, int64_t cnt,
                                                              const double* psi, double go, const double* gw,
                                                              double* d) {
  const bool pos = s.sign > 0.0;
  if (gw == nullptr) {
    if (pos)
      chunk_backward_impl<F32, false, true, false>(s, k0, cnt, psi, go, gw, d);
    else
      chunk_backward_impl<F32, false, false, false>(s, k0, cnt, psi, go, gw, d);
  } else if (s.real && pos) {
    chunk_backward_impl<F32, true, true, true>(s, k0, cnt, psi, go, gw, d);
  } else if (s.real) {
    chunk_backward_impl<F32, true, false, true>(s, k0, cnt, psi, go, gw, d);
  } else if (pos) {
    chunk_backward_impl<F32, false, true, true>(s, k0, cnt, psi, go, gw, d);
  } else {
    chunk_backward_impl<F32, false, false, true>(s, k0, cnt, psi, go, gw, d);
  }
}

// gw: nullptr when no weight gradient flows back.
FG_CPU_CLONES void chunk_backward_f32(const Side& s, int64_t k0, int64_t cnt, const double* psi, double go,
                                      const double* gw, double* d) {
  chunk_backward_any<true>(s, k0, cnt, psi, go, gw, d);
}

FG_CPU_CLONES void chunk_backward_f64(const Side& s, int64_t k0, int64_t cnt, const double* psi, double go,
                                      const double* gw, double* d) {
  chunk_backward_any<false>(s, k0, cnt, psi, go, gw, d);
}

// Four independent lanes: vectorises without reassociating, and the order of additions is fixed.
double lane_sum(const double* v, int64_t cnt) {
  double lanes[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t i = 0;
  for (; i + 4 <= cnt; i += 4)
    for (int j = 0; j < 4; ++j) lanes[j] += v[i + j];
  for (; i < cnt; ++i) lanes[i % 4] += v[i];
  return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
}

int64_t chunks_of(int64_t n) { return (n + kChunk - 1) / kChunk; }

// Runs body(side, k0, cnt, chunk index) over the chunks of both sides, in parallel when worth it.
template <typename Body>
void for_each_chunk(const Side& r, const Side& f, Body&& body) {
  const int64_t cr = chunks_of(r.n), total = cr + chunks_of(f.n);
#pragma omp parallel for schedule(static) if (r.n + f.n > kParallelSamples)
  for (int64_t c = 0; c < total; ++c) {
    const Side& s = c < cr ? r : f;
    const int64_t k0 = (c < cr ? c : c - cr) * kChunk;
    body(s, k0, std::min(kChunk, s.n - k0), c);
  }
}

template <typename A>
void forward(const NtLossArgs& a) {
  const A mu = read_mu<A>(a);
  const Side r = side_of<A>(a.logits_real, a.n_real, a.s_real, nt::real_sign(a.kind), true, mu, a.reduction);
  const Side f = side_of<A>(a.logits_fake, a.n_fake, a.s_fake, nt::fake_sign(a.kind), false, mu, a.reduction);
  std::vector<double> partial(size_t(chunks_of(r.n) + chunks_of(f.n)));
  A* wr = reinterpret_cast<A*>(a.w_real);
  A* wf = reinterpret_cast<A*>(a.w_fake);
  for_each_chunk(r, f, [&](const Side& s, int64_t k0, int64_t cnt, int64_t c) {
    double psi[kChunk], v[kChunk], w[kChunk];
    load_as_double(static_cast<const A*>(s.logits), k0, cnt, s.stride, psi);
    A* out = s.real ? wr : wf;
    double* wbuf = out != nullptr ? w : nullptr;
    if (std::is_same<A, float>::value)
      chunk_forward_f32(s, k0, cnt, psi, v, wbuf);
    else
      chunk_forward_f64(s, k0, cnt, psi, v, wbuf);
    partial[size_t(c)] = lane_sum(v, cnt);
    if (out != nullptr)
      for (int64_t i = 0; i < cnt; ++i) out[k0 + i] = A(w[i]);
  });
  double total = 0.0;
  for (double p : partial) total += p;
  *reinterpret_cast<A*>(a.loss) = A(total);
}

template <typename A>
void backward(const NtLossArgs& a) {
  const A mu = read_mu<A>(a);
  const double go = double(*reinterpret_cast<const A*>(a.go));
  const Side r = side_of<A>(a.logits_real, a.n_real, a.s_real, nt::real_sign(a.kind), true, mu, a.reduction);
  const Side f = side_of<A>(a.logits_fake, a.n_fake, a.s_fake, nt::fake_sign(a.kind), false, mu, a.reduction);
  for_each_chunk(r, f, [&](const Side& s, int64_t k0, int64_t cnt, int64_t) {
    double psi[kChunk], gw[kChunk], d[kChunk];
    load_as_double(static_cast<const A*>(s.logits), k0, cnt, s.stride, psi);
    const A* g = reinterpret_cast<const A*>(s.real ? a.gw_real : a.gw_fake);
    if (g != nullptr)
      for (int64_t i = 0; i < cnt; ++i) gw[i] = double(g[k0 + i]);
    const double* gwbuf = g != nullptr ? gw : nullptr;
    if (std::is_same<A, float>::value)
      chunk_backward_f32(s, k0, cnt, psi, go, gwbuf, d);
    else
      chunk_backward_f64(s, k0, cnt, psi, go, gwbuf, d);
    A* out = reinterpret_cast<A*>(s.real ? a.d_real : a.d_fake);
    for (int64_t i = 0; i < cnt; ++i) out[k0 + i] = A(d[i]);
  });
}

NtLossArgs args_from(py::dict d, bool backward_pass) {
  NtLossArgs a;
  a.logits_real = d["logits_real"].cast<std::uintptr_t>();
  a.logits_fake = d["logits_fake"].cast<std::uintptr_t>();
  a.n_real = d["n_real"].cast<int64_t>();
  a.n_fake = d["n_fake"].cast<int64_t>();
  a.s_real = d["s_real"].cast<int64_t>();
  a.s_fake = d["s_fake"].cast<int64_t>();
  a.mu = d["mu"].cast<std::uintptr_t>();
  a.mu_value = d["mu_value"].cast<double>();
  a.kind = d["kind"].cast<int>();
  a.reduction = d["reduction"].cast<int>();
  a.dtype = d["dtype"].cast<int>();
  if (a.n_real < 0 || a.n_fake < 0) throw std::invalid_argument("nt_losses: negative size");
  if (a.kind != nt::kDiscriminator && a.kind != nt::kGenerator) throw std::invalid_argument("nt_losses: unknown kind");
  if (a.reduction != nt::kMean && a.reduction != nt::kSum) throw std::invalid_argument("nt_losses: unknown reduction");
  if (a.dtype != kFloat32 && a.dtype != kFloat64) throw std::invalid_argument("nt_losses: logits must be float32 or float64");
  if (backward_pass) {
    a.go = d["go"].cast<std::uintptr_t>();
    a.gw_real = d["gw_real"].cast<std::uintptr_t>();
    a.gw_fake = d["gw_fake"].cast<std::uintptr_t>();
    a.d_real = d["d_real"].cast<std::uintptr_t>();
    a.d_fake = d["d_fake"].cast<std::uintptr_t>();
    if (a.go == 0) throw std::invalid_argument("nt_losses_backward: missing go");
  } else {
    a.loss = d["loss"].cast<std::uintptr_t>();
    a.partials = d["partials"].cast<std::uintptr_t>();
    a.chunk = d["chunk"].cast<int64_t>();
    if (a.partials != 0 && a.chunk <= 0) throw std::invalid_argument("nt_losses: partials need a positive chunk");
    a.w_real = d["w_real"].cast<std::uintptr_t>();
    a.w_fake = d["w_fake"].cast<std::uintptr_t>();
    if (a.loss == 0) throw std::invalid_argument("nt_losses: missing loss output");
  }
  return a;
}

void bind(py::module_& m) {
  m.def("nt_losses_forward_cpu", [](py::dict d) {
    const NtLossArgs a = args_from(d, false);
    py::gil_scoped_release nogil;
    if (a.dtype == kFloat64) forward<double>(a); else forward<float>(a);
  });
  m.def("nt_losses_backward_cpu", [](py::dict d) {
    const NtLossArgs a = args_from(d, true);
    py::gil_scoped_release nogil;
    if (a.dtype == kFloat64) backward<double>(a); else backward<float>(a);
  });
#ifdef FASTGAN_WITH_CUDA
  m.def("nt_losses_forward_cuda", [](py::dict d, std::uintptr_t stream) {
    raise_cuda(cuda::nt_losses_forward(args_from(d, false), stream), "nt_losses_forward_cuda");
  });
  m.def("nt_losses_backward_cuda", [](py::dict d, std::uintptr_t stream) {
    raise_cuda(cuda::nt_losses_backward(args_from(d, true), stream), "nt_losses_backward_cuda");
  });
#endif
}

}  // namespace
}  // namespace fastgan

FASTGAN_REGISTER_BINDINGS(nt_losses, fastgan::bind);
