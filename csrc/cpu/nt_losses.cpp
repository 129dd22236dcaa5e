// CPU kernels and Python bindings of the NTGAN mu-weighted clean/noisy losses (fastgan/ops/nt_losses.py).
// Per-sample math: fastgan/nt_losses_math.h (shared with csrc/cuda/nt_losses.cu).
#include <pybind11/pybind11.h>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "fastgan/noise_args.h"
#include "fastgan/nt_losses_math.h"
#include "fastgan/binding_utils.h"
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

// Sums in double: the batch of logits is small, and the result is then at least as accurate as the
// float32 reference it is tested against.
template <typename A>
double side_forward(const A* logits, int64_t n, int64_t stride, int sign, A mu, int reduction, int weight_code,
                    A* w) {
  double s = 0.0;
  for (int64_t k = 0; k < n; ++k) {
    const double psi = double(logits[k * stride]);
    if (sign != 0) s += double(nt::coef<A>(k, n, mu, reduction)) * nt::term<double>(psi, double(sign));
    if (w != nullptr) w[k] = A(penalty::weight<double>(weight_code, psi));
  }
  return s;
}

template <typename A>
void side_backward(const A* logits, int64_t n, int64_t stride, int sign, A mu, int reduction, int weight_code,
                   A go, const A* gw, A* d) {
  for (int64_t k = 0; k < n; ++k) {
    const double psi = double(logits[k * stride]);
    double v = sign != 0 ? double(go) * double(nt::coef<A>(k, n, mu, reduction)) * nt::slope<double>(psi, double(sign)) : 0.0;
    if (gw != nullptr) {
      double w, dw;
      penalty::weight_and_slope<double>(weight_code, psi, &w, &dw);
      v += double(gw[k]) * dw;
    }
    d[k] = A(v);
  }
}

template <typename A>
void forward(const NtLossArgs& a) {
  const A mu = read_mu<A>(a);
  double s = side_forward<A>(reinterpret_cast<const A*>(a.logits_real), a.n_real, a.s_real, nt::real_sign(a.kind),
                             mu, a.reduction, penalty::kJsReal, reinterpret_cast<A*>(a.w_real));
  s += side_forward<A>(reinterpret_cast<const A*>(a.logits_fake), a.n_fake, a.s_fake, nt::fake_sign(a.kind), mu,
                       a.reduction, penalty::kJsFake, reinterpret_cast<A*>(a.w_fake));
  *reinterpret_cast<A*>(a.loss) = A(s);
}

template <typename A>
void backward(const NtLossArgs& a) {
  const A mu = read_mu<A>(a);
  const A go = *reinterpret_cast<const A*>(a.go);
  side_backward<A>(reinterpret_cast<const A*>(a.logits_real), a.n_real, a.s_real, nt::real_sign(a.kind), mu,
                   a.reduction, penalty::kJsReal, go, reinterpret_cast<const A*>(a.gw_real),
                   reinterpret_cast<A*>(a.d_real));
  side_backward<A>(reinterpret_cast<const A*>(a.logits_fake), a.n_fake, a.s_fake, nt::fake_sign(a.kind), mu,
                   a.reduction, penalty::kJsFake, go, reinterpret_cast<const A*>(a.gw_fake),
                   reinterpret_cast<A*>(a.d_fake));
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
