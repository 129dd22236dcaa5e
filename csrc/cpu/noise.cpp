// CPU kernels and Python bindings of the NTGAN noisy/clean batch (fastgan/ops/noise.py), plus the raw
// Philox stream for the exactness tests. Noise math: fastgan/philox.h (shared with csrc/cuda/noise.cu).
#include <pybind11/pybind11.h>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "fastgan/half_cpu.h"
#include "fastgan/noise_args.h"
#include "fastgan/philox.h"
#include "fastgan/binding_utils.h"
#include "fastgan/registry.h"
#ifdef FASTGAN_WITH_CUDA
#include "fastgan/cuda_api.h"
#include "fastgan/cuda_api_noise.h"
#endif

namespace py = pybind11;
using namespace pybind11::literals;

namespace fastgan {
namespace {

constexpr int64_t kParallelWork = 1 << 15;

struct Layout {
  int64_t n_clean, n_noisy, src0, dst0;
};

Layout layout(int64_t m, bool half) {
  if (half) return {m / 2, m - m / 2, m / 2, m / 2};
  return {m, m, 0, m};
}

template <typename T, typename A>
void forward_side(const T* x, int64_t sb, int64_t sf, T* out, const Layout& L, int64_t F, int64_t i, int64_t f,
                  A eps, bool copy_clean) {
  const T v = x[(L.src0 + i) * sb + f * sf];
  out[(L.dst0 + i) * F + f] = Storage<T>::store(double(A(Storage<T>::load(v)) + eps));
  if (copy_clean) out[i * F + f] = v;
}

template <typename T, typename A>
void noisy_forward(const NoisyForwardArgs& a) {
  const T* xr = cptr<T>(a.x_real);
  const T* xf = cptr<T>(a.x_fake);
  const T* eps = cptr<T>(a.eps);
  const A* sig = cptr<A>(a.sigma);
  T* outr = mptr<T>(a.out_real);
  T* outf = mptr<T>(a.out_fake);
  const int64_t F = a.F, C = a.C, inner = F / C;
  const Layout L = layout(a.m, a.half);
  const int64_t N = L.n_noisy * F, G = philox::counters_for(N);
  int64_t* rng = mptr<int64_t>(a.rng);
  uint64_t seed = 0, off = 0;
  if (eps == nullptr) {
    seed = uint64_t(rng[0]);
    off = uint64_t(rng[1]);
    if (a.advance) {
      int64_t* used = mptr<int64_t>(a.used);
      used[0] = rng[0];
      used[1] = rng[1];
    }
  }
  const A sigma_value = A(a.sigma_value);
  const bool copy_clean = !a.half;
#pragma omp parallel for schedule(static) if (N > kParallelWork)
  for (int64_t g = 0; g < G; ++g) {
    philox::Normals z{};
    if (eps == nullptr) z = philox::normals4(seed, off + uint64_t(g));
    int64_t e = g * philox::kPerCounter;
    int64_t i = e / F, f = e - i * F;
    for (int k = 0; k < philox::kPerCounter && e < N; ++k, ++e) {
      A ev;
      if (eps != nullptr) {
        ev = A(Storage<T>::load(eps[i * a.se_b + f * a.se_f]));
      } else {
        const A s = sig != nullptr ? sig[C == 1 ? 0 : f / inner] : sigma_value;
        ev = s * A(z.v[k]);
      }
      if (xr != nullptr) forward_side<T, A>(xr, a.sr_b, a.sr_f, outr, L, F, i, f, ev, copy_clean);
      if (xf != nullptr) forward_side<T, A>(xf, a.sf_b, a.sf_f, outf, L, F, i, f, ev, copy_clean);
      if (++f == F) {
        f = 0;
        ++i;
      }
    }
  }
  if (a.half) {
#pragma omp parallel for schedule(static) if (L.n_clean * F > kParallelWork)
    for (int64_t i = 0; i < L.n_clean; ++i) {
      for (int64_t f = 0; f < F; ++f) {
        if (xr != nullptr) outr[i * F + f] = xr[i * a.sr_b + f * a.sr_f];
        if (xf != nullptr) outf[i * F + f] = xf[i * a.sf_b + f * a.sf_f];
      }
    }
  }
  if (eps == nullptr && a.advance) rng[1] = int64_t(off + uint64_t(G));
}

template <typename T, typename A>
void noisy_backward(const NoisyBackwardArgs& a) {
  const T* gr = cptr<T>(a.g_real);
  const T* gf = cptr<T>(a.g_fake);
  T* dxr = mptr<T>(a.dx_real);
  T* dxf = mptr<T>(a.dx_fake);
  T* deps = mptr<T>(a.deps);
  A* dsig = mptr<A>(a.dsigma);
  const int64_t F = a.F, C = a.C, inner = F / C;
  const Layout L = layout(a.m, a.half);
  uint64_t seed = 0, off = 0;
  if (dsig != nullptr) {
    const int64_t* rng = cptr<int64_t>(a.rng);
    seed = uint64_t(rng[0]);
    off = uint64_t(rng[1]);
  }
  const int64_t planes = L.n_noisy * C;
#pragma omp parallel for schedule(static) if (L.n_noisy * F > kParallelWork)
  for (int64_t p = 0; p < planes; ++p) {
    const int64_t i = p / C, c = p - i * C;
    const int64_t start = i * F + c * inner;
    double acc = 0.0;
    philox::Normals z{};
    int64_t group = -1;
    for (int64_t e = start; e < start + inner; ++e) {
      const int64_t f = e - i * F;
      A vr = A(0), vf = A(0);
      if (gr != nullptr) vr = A(Storage<T>::load(gr[(L.dst0 + i) * a.gr_b + f * a.gr_f]));
      if (gf != nullptr) vf = A(Storage<T>::load(gf[(L.dst0 + i) * a.gf_b + f * a.gf_f]));
      const A ge = vr + vf;
      if (deps != nullptr) deps[i * F + f] = Storage<T>::store(double(ge));
      if (dsig != nullptr) {
        const int64_t gnow = e / philox::kPerCounter;
        if (gnow != group) {
          z = philox::normals4(seed, off + uint64_t(gnow));
          group = gnow;
        }
        acc += double(ge) * double(z.v[e % philox::kPerCounter]);
      }
      if (!a.half) {
        // clean row i and noisy row m + i both came from x[i]
        if (dxr != nullptr) dxr[i * F + f] = Storage<T>::store(double(A(Storage<T>::load(gr[i * a.gr_b + f * a.gr_f])) + vr));
        if (dxf != nullptr) dxf[i * F + f] = Storage<T>::store(double(A(Storage<T>::load(gf[i * a.gf_b + f * a.gf_f])) + vf));
      }
    }
    if (dsig != nullptr) dsig[p] = A(acc);
  }
}

template <template <typename, typename> class Fn, typename Args>
void dispatch(int dtype, const Args& a, const char* what) {
  switch (dtype) {
    case kFloat32: return Fn<float, float>::run(a);
    case kFloat64: return Fn<double, double>::run(a);
    case kFloat16: return Fn<half_t, float>::run(a);
    case kBFloat16: return Fn<bf16_t, float>::run(a);
  }
  throw std::invalid_argument(std::string(what) + ": unsupported dtype code " + std::to_string(dtype));
}

template <typename T, typename A>
struct Forward { static void run(const NoisyForwardArgs& a) { noisy_forward<T, A>(a); } };
template <typename T, typename A>
struct Backward { static void run(const NoisyBackwardArgs& a) { noisy_backward<T, A>(a); } };

void check_forward(const NoisyForwardArgs& a) {
  if (a.m <= 0 || a.F <= 0 || a.C <= 0 || a.F % a.C != 0) throw std::invalid_argument("noisy_forward: bad sizes");
  if (a.x_real == 0 && a.x_fake == 0) throw std::invalid_argument("noisy_forward: no input batch");
  if (a.eps == 0 && a.rng == 0) throw std::invalid_argument("noisy_forward: Gaussian noise needs a state");
  if (a.advance && a.used == 0) throw std::invalid_argument("noisy_forward: advance needs a `used` buffer");
}

void check_backward(const NoisyBackwardArgs& a) {
  if (a.m <= 0 || a.F <= 0 || a.C <= 0 || a.F % a.C != 0) throw std::invalid_argument("noisy_backward: bad sizes");
  if (a.dsigma != 0 && a.rng == 0) throw std::invalid_argument("noisy_backward: dsigma needs the draw's state");
  if ((a.dx_real != 0 && a.g_real == 0) || (a.dx_fake != 0 && a.g_fake == 0))
    throw std::invalid_argument("noisy_backward: dx needs its upstream gradient");
}

NoisyForwardArgs forward_args(py::dict d) {
  NoisyForwardArgs a;
  a.x_real = d["x_real"].cast<std::uintptr_t>();
  a.x_fake = d["x_fake"].cast<std::uintptr_t>();
  a.sr_b = d["sr_b"].cast<int64_t>();
  a.sr_f = d["sr_f"].cast<int64_t>();
  a.sf_b = d["sf_b"].cast<int64_t>();
  a.sf_f = d["sf_f"].cast<int64_t>();
  a.eps = d["eps"].cast<std::uintptr_t>();
  a.se_b = d["se_b"].cast<int64_t>();
  a.se_f = d["se_f"].cast<int64_t>();
  a.sigma = d["sigma"].cast<std::uintptr_t>();
  a.sigma_value = d["sigma_value"].cast<double>();
  a.C = d["C"].cast<int64_t>();
  a.rng = d["rng"].cast<std::uintptr_t>();
  a.advance = d["advance"].cast<bool>();
  a.used = d["used"].cast<std::uintptr_t>();
  a.out_real = d["out_real"].cast<std::uintptr_t>();
  a.out_fake = d["out_fake"].cast<std::uintptr_t>();
  a.dtype = d["dtype"].cast<int>();
  a.m = d["m"].cast<int64_t>();
  a.F = d["F"].cast<int64_t>();
  a.half = d["half"].cast<bool>();
  check_forward(a);
  return a;
}

NoisyBackwardArgs backward_args(py::dict d) {
  NoisyBackwardArgs a;
  a.g_real = d["g_real"].cast<std::uintptr_t>();
  a.g_fake = d["g_fake"].cast<std::uintptr_t>();
  a.gr_b = d["gr_b"].cast<int64_t>();
  a.gr_f = d["gr_f"].cast<int64_t>();
  a.gf_b = d["gf_b"].cast<int64_t>();
  a.gf_f = d["gf_f"].cast<int64_t>();
  a.dx_real = d["dx_real"].cast<std::uintptr_t>();
  a.dx_fake = d["dx_fake"].cast<std::uintptr_t>();
  a.deps = d["deps"].cast<std::uintptr_t>();
  a.dsigma = d["dsigma"].cast<std::uintptr_t>();
  a.rng = d["rng"].cast<std::uintptr_t>();
  a.C = d["C"].cast<int64_t>();
  a.dtype = d["dtype"].cast<int>();
  a.m = d["m"].cast<int64_t>();
  a.F = d["F"].cast<int64_t>();
  a.half = d["half"].cast<bool>();
  check_backward(a);
  return a;
}

// Raw stream access for the tests: n counters' words (int64 buffer (n, 4)) and the first n normals (float32).
void philox_words_cpu(uint64_t seed, uint64_t offset, int64_t n, std::uintptr_t out) {
  int64_t* o = mptr<int64_t>(out);
  for (int64_t g = 0; g < n; ++g) {
    const philox::Words w = philox::block(seed, offset + uint64_t(g));
    for (int k = 0; k < 4; ++k) o[g * 4 + k] = int64_t(w.v[k]);
  }
}

void philox_normal_cpu(uint64_t seed, uint64_t offset, int64_t n, std::uintptr_t out) {
  float* o = mptr<float>(out);
  for (int64_t g = 0; g * 4 < n; ++g) {
    const philox::Normals z = philox::normals4(seed, offset + uint64_t(g));
    for (int k = 0; k < 4 && g * 4 + k < n; ++k) o[g * 4 + k] = z.v[k];
  }
}

void bind(py::module_& m) {
  m.def("noisy_forward_cpu", [](py::dict d) {
    const NoisyForwardArgs a = forward_args(d);
    py::gil_scoped_release nogil;
    dispatch<Forward>(a.dtype, a, "noisy_forward_cpu");
  });
  m.def("noisy_backward_cpu", [](py::dict d) {
    const NoisyBackwardArgs a = backward_args(d);
    py::gil_scoped_release nogil;
    dispatch<Backward>(a.dtype, a, "noisy_backward_cpu");
  });
  m.def("philox_words_cpu", &philox_words_cpu, "seed"_a, "offset"_a, "n"_a, "out"_a);
  m.def("philox_normal_cpu", &philox_normal_cpu, "seed"_a, "offset"_a, "n"_a, "out"_a);
#ifdef FASTGAN_WITH_CUDA
  m.def("noisy_forward_cuda", [](py::dict d, std::uintptr_t stream) {
    const NoisyForwardArgs a = forward_args(d);
    raise_cuda(cuda::noisy_forward(a, stream), "noisy_forward_cuda");
  });
  m.def("noisy_backward_cuda", [](py::dict d, std::uintptr_t stream) {
    const NoisyBackwardArgs a = backward_args(d);
    raise_cuda(cuda::noisy_backward(a, stream), "noisy_backward_cuda");
  });
#endif
}

}  // namespace
}  // namespace fastgan

FASTGAN_REGISTER_BINDINGS(noise, fastgan::bind);
