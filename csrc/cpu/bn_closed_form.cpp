// CPU kernels and Python bindings of the BatchNorm (batch statistics) passes of the penalty's closed form
// (fastgan/ops/bn_closed_form.py). Math: fastgan/bn_closed_form_math.h (shared with CUDA).
//
// Tensors are contiguous (B, C, S). A work unit (one thread) owns whole channels: one channel when S >= kBlock,
// else kBlock / S neighbouring channels, whose elements form one run of <= kBlock positions in every sample's
// (C, S) slab. Reductions add each sample's terms in double per position (a loop GCC vectorises), then per
// channel, as the CUDA and Triton kernels do, a term's product of two inputs formed in double too (exact for
// float32). Float32 partial sums of 8 samples left the mean of a channel 1e5 std from zero inexact enough to cost
// rstd 60-10^4 times the reference's error, and products rounded in float32, those of a cotangent 1e5 std off
// zero, twice the oracle's error in dh. The element-wise pass reads per-position coefficients, so its inner loop
// is a unit-stride FMA chain too.
#include <pybind11/pybind11.h>
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "fastgan/binding_utils.h"
#include "fastgan/bn_closed_form_math.h"
#include "fastgan/registry.h"
#ifdef FASTGAN_WITH_CUDA
#include "fastgan/cuda_api.h"
#include "fastgan/cuda_api_bn_closed_form.h"
#endif

namespace py = pybind11;
using namespace pybind11::literals;

namespace fastgan {
namespace {

using bncf::Coefs;

constexpr int64_t kBlock = 256;
constexpr int64_t kParallelWork = 1 << 15;

struct Layout {
  int64_t B, C, S;
  int64_t row() const { return C * S; }
};

int64_t channels_per_unit(int64_t S) { return S >= kBlock ? 1 : kBlock / S; }

// fn(c0, c1) for each unit of channels, in parallel when the tensor is big enough.
template <typename Fn>
void for_units(const Layout& L, Fn fn) {
  const int64_t per = channels_per_unit(L.S);
  const int64_t units = (L.C + per - 1) / per;
#pragma omp parallel for schedule(static) if (L.B * L.C * L.S > kParallelWork)
  for (int64_t u = 0; u < units; ++u) fn(u * per, std::min(L.C, (u + 1) * per));
}

// fn(p0, np) for the blocks of <= kBlock flat positions covering channels [c0, c1) of a slab.
template <typename Fn>
void for_blocks(const Layout& L, int64_t c0, int64_t c1, Fn fn) {
  for (int64_t p0 = c0 * L.S; p0 < c1 * L.S; p0 += kBlock) fn(p0, std::min(kBlock, c1 * L.S - p0));
}

// sums[(channel - c0) * NS + k] += sum over samples of term(offset, j, v)[k] for the block's positions j.
template <typename T, int NS, typename Term>
void block_sums(const Layout& L, int64_t c0, int64_t p0, int64_t np, double* sums, Term term) {
  double acc[NS][kBlock];
  for (int k = 0; k < NS; ++k)
    for (int64_t j = 0; j < np; ++j) acc[k][j] = 0.0;
  for (int64_t b = 0; b < L.B; ++b) {
    const int64_t base = b * L.row() + p0;
    for (int64_t j = 0; j < np; ++j) {
      double v[NS];
      term(base + j, j, v);
      for (int k = 0; k < NS; ++k) acc[k][j] += v[k];
    }
  }
  for (int64_t j = 0; j < np; ++j) {
    const int64_t c = (p0 + j) / L.S - c0;
    for (int k = 0; k < NS; ++k) sums[c * NS + k] += acc[k][j];
  }
}

// out = cx (X - sx) [+ ct (T - st) [+ cr (R - sr) + cl (L - sl)]] over the block, NIN inputs in the order X, T,
// R, L.
template <typename T, int NIN>
void block_apply(const Layout& L, int64_t c0, int64_t p0, int64_t np, const Coefs* co, const T* const* in, T* out) {
  T cc[4][kBlock];
  bncf::Shift<T> sh[4][kBlock];
  for (int64_t j = 0; j < np; ++j) {
    const Coefs& k = co[(p0 + j) / L.S - c0];
    const double v[4] = {k.x, k.t, k.r, k.l}, s[4] = {k.sx, k.st, k.sr, k.sl};
    for (int i = 0; i < NIN; ++i) {
      cc[i][j] = T(v[i]);
      sh[i][j] = bncf::split_shift<T>(s[i]);
    }
  }
  for (int64_t b = 0; b < L.B; ++b) {
    const int64_t base = b * L.row() + p0;
    for (int64_t j = 0; j < np; ++j) {
      T v = cc[0][j] * bncf::shifted(in[0][base + j], sh[0][j]);
      for (int i = 1; i < NIN; ++i) v += cc[i][j] * bncf::shifted(in[i][base + j], sh[i][j]);
      out[base + j] = v;
    }
  }
}

template <typename T>
void stats(const T* h, T* xhat, T* rstd, const Layout& L, double eps) {
  const int64_t n = L.B * L.S;
  for_units(L, [&](int64_t c0, int64_t c1) {
    double sum[kBlock] = {0}, csq[kBlock] = {0};
    for_blocks(L, c0, c1, [&](int64_t p0, int64_t np) {
      block_sums<T, 1>(L, c0, p0, np, sum, [&](int64_t o, int64_t, double* v) { v[0] = h[o]; });
    });
    // the centred second pass reads each position's mean from a per-block table, in two parts: centred on T(mean)
    // alone, the sum gained n (mean - T(mean))^2, the variance itself where |mean| / std passes ~5e4 in float32
    for_blocks(L, c0, c1, [&](int64_t p0, int64_t np) {
      bncf::Shift<T> mean[kBlock];
      for (int64_t j = 0; j < np; ++j) mean[j] = bncf::split_shift<T>(sum[(p0 + j) / L.S - c0] / double(n));
      block_sums<T, 1>(L, c0, p0, np, csq, [&](int64_t o, int64_t j, double* v) {
        const T d = bncf::shifted(h[o], mean[j]);
        v[0] = double(d) * double(d);
      });
    });
    Coefs co[kBlock];
    for (int64_t c = c0; c < c1; ++c) {
      double r;
      co[c - c0] = bncf::stats_coefs(sum[c - c0] / double(n), csq[c - c0], n, eps, &r);
      rstd[c] = T(r);
    }
    const T* in[1] = {h};
    for_blocks(L, c0, c1, [&](int64_t p0, int64_t np) { block_apply<T, 1>(L, c0, p0, np, co, in, xhat); });
  });
}

template <typename T>
void centered(const T* xhat, const T* t, const T* rstd, const T* gamma, T* out, T* mt, T* q, const Layout& L) {
  const int64_t n = L.B * L.S;
  for_units(L, [&](int64_t c0, int64_t c1) {
    double s[2 * kBlock] = {0};
    for_blocks(L, c0, c1, [&](int64_t p0, int64_t np) {
      block_sums<T, 2>(L, c0, p0, np, s, [&](int64_t o, int64_t, double* v) {
        v[0] = t[o];
        v[1] = double(xhat[o]) * double(t[o]);
      });
    });
    Coefs co[kBlock];
    for (int64_t c = c0; c < c1; ++c) {
      const double scale = double(rstd[c]) * (gamma != nullptr ? double(gamma[c]) : 1.0);
      double m, qq;
      co[c - c0] = bncf::centered_coefs(s[2 * (c - c0)], s[2 * (c - c0) + 1], n, scale, &m, &qq);
      mt[c] = T(m);
      q[c] = T(qq);
    }
    const T* in[2] = {xhat, t};
    for_blocks(L, c0, c1, [&](int64_t p0, int64_t np) { block_apply<T, 2>(L, c0, p0, np, co, in, out); });
  });
}

template <typename T>
void vjp(const T* rho, const T* lam, const T* xhat, const T* t, const T* rstd, const T* gamma, const T* mt,
         const T* q, T* dh, T* dgamma, T* dbeta, const Layout& L) {
  const int64_t n = L.B * L.S;
  for_units(L, [&](int64_t c0, int64_t c1) {
    double s[5 * kBlock] = {0};
    for_blocks(L, c0, c1, [&](int64_t p0, int64_t np) {
      T m[kBlock];
      for (int64_t j = 0; j < np; ++j) m[j] = mt[(p0 + j) / L.S];
      block_sums<T, 5>(L, c0, p0, np, s, [&](int64_t o, int64_t j, double* v) {
        const T r = rho[o], l = lam[o], x = xhat[o];
        v[0] = r;
        v[1] = double(r) * double(x);
        v[2] = l;
        v[3] = double(l) * double(x);
        v[4] = double(l) * (double(t[o]) - double(m[j]));
      });
    });
    Coefs co[kBlock];
    for (int64_t c = c0; c < c1; ++c) {
      const double* sc = s + 5 * (c - c0);
      const double g = gamma != nullptr ? double(gamma[c]) : 1.0;
      double dg, db;
      co[c - c0] = bncf::vjp_coefs(sc[0], sc[1], sc[2], sc[3], sc[4], n, double(rstd[c]), g, double(mt[c]),
                                   double(q[c]), &dg, &db);
      if (dgamma != nullptr) dgamma[c] = T(dg);
      if (dbeta != nullptr) dbeta[c] = T(db);
    }
    const T* in[4] = {xhat, t, rho, lam};
    for_blocks(L, c0, c1, [&](int64_t p0, int64_t np) { block_apply<T, 4>(L, c0, p0, np, co, in, dh); });
  });
}

void check(int64_t B, int64_t C, int64_t S, int dtype) {
  if (B < 1 || C < 0 || S < 1) throw std::invalid_argument("bn_closed_form: bad sizes");
  if (dtype != kFloat32 && dtype != kFloat64)
    throw std::invalid_argument("bn_closed_form: float32 or float64 only, got dtype code " + std::to_string(dtype));
}

void stats_cpu(std::uintptr_t h, std::uintptr_t xhat, std::uintptr_t rstd, int dtype, int64_t B, int64_t C,
               int64_t S, double eps) {
  check(B, C, S, dtype);
  py::gil_scoped_release nogil;
  const Layout L{B, C, S};
  if (dtype == kFloat32)
    stats<float>(cptr<float>(h), mptr<float>(xhat), mptr<float>(rstd), L, eps);
  else
    stats<double>(cptr<double>(h), mptr<double>(xhat), mptr<double>(rstd), L, eps);
}

void centered_cpu(std::uintptr_t xhat, std::uintptr_t t, std::uintptr_t rstd, std::uintptr_t gamma, std::uintptr_t out,
                  std::uintptr_t mt, std::uintptr_t q, int dtype, int64_t B, int64_t C, int64_t S) {
  check(B, C, S, dtype);
  py::gil_scoped_release nogil;
  const Layout L{B, C, S};
  if (dtype == kFloat32)
    centered<float>(cptr<float>(xhat), cptr<float>(t), cptr<float>(rstd), cptr<float>(gamma), mptr<float>(out),
                    mptr<float>(mt), mptr<float>(q), L);
  else
    centered<double>(cptr<double>(xhat), cptr<double>(t), cptr<double>(rstd), cptr<double>(gamma), mptr<double>(out),
                     mptr<double>(mt), mptr<double>(q), L);
}

void vjp_cpu(std::uintptr_t rho, std::uintptr_t lam, std::uintptr_t xhat, std::uintptr_t t, std::uintptr_t rstd,
             std::uintptr_t gamma, std::uintptr_t mt, std::uintptr_t q, std::uintptr_t dh, std::uintptr_t dgamma,
             std::uintptr_t dbeta, int dtype, int64_t B, int64_t C, int64_t S) {
  check(B, C, S, dtype);
  py::gil_scoped_release nogil;
  const Layout L{B, C, S};
  if (dtype == kFloat32)
    vjp<float>(cptr<float>(rho), cptr<float>(lam), cptr<float>(xhat), cptr<float>(t), cptr<float>(rstd),
               cptr<float>(gamma), cptr<float>(mt), cptr<float>(q), mptr<float>(dh), mptr<float>(dgamma),
               mptr<float>(dbeta), L);
  else
    vjp<double>(cptr<double>(rho), cptr<double>(lam), cptr<double>(xhat), cptr<double>(t), cptr<double>(rstd),
                cptr<double>(gamma), cptr<double>(mt), cptr<double>(q), mptr<double>(dh), mptr<double>(dgamma),
                mptr<double>(dbeta), L);
}

void bind(py::module_& m) {
  m.def("bn_cf_stats_cpu", &stats_cpu, "h"_a, "xhat"_a, "rstd"_a, "dtype"_a, "B"_a, "C"_a, "S"_a, "eps"_a);
  m.def("bn_cf_centered_cpu", &centered_cpu, "xhat"_a, "t"_a, "rstd"_a, "gamma"_a, "out"_a, "mt"_a, "q"_a, "dtype"_a,
        "B"_a, "C"_a, "S"_a);
  m.def("bn_cf_vjp_cpu", &vjp_cpu, "rho"_a, "lam"_a, "xhat"_a, "t"_a, "rstd"_a, "gamma"_a, "mt"_a, "q"_a, "dh"_a,
        "dgamma"_a, "dbeta"_a, "dtype"_a, "B"_a, "C"_a, "S"_a);
#ifdef FASTGAN_WITH_CUDA
  m.def("bn_cf_stats_cuda", [](std::uintptr_t h, std::uintptr_t xhat, std::uintptr_t rstd, int dtype, int64_t B,
                               int64_t C, int64_t S, double eps, std::uintptr_t stream) {
    check(B, C, S, dtype);
    raise_cuda(cuda::bn_cf_stats(h, xhat, rstd, dtype, B, C, S, eps, stream), "bn_cf_stats_cuda");
  });
  m.def("bn_cf_centered_cuda", [](std::uintptr_t xhat, std::uintptr_t t, std::uintptr_t rstd, std::uintptr_t gamma,
                                  std::uintptr_t out, std::uintptr_t mt, std::uintptr_t q, int dtype, int64_t B,
                                  int64_t C, int64_t S, std::uintptr_t stream) {
    check(B, C, S, dtype);
    raise_cuda(cuda::bn_cf_centered(xhat, t, rstd, gamma, out, mt, q, dtype, B, C, S, stream), "bn_cf_centered_cuda");
  });
  m.def("bn_cf_vjp_cuda", [](std::uintptr_t rho, std::uintptr_t lam, std::uintptr_t xhat, std::uintptr_t t,
                             std::uintptr_t rstd, std::uintptr_t gamma, std::uintptr_t mt, std::uintptr_t q,
                             std::uintptr_t dh, std::uintptr_t dgamma, std::uintptr_t dbeta, int dtype, int64_t B,
                             int64_t C, int64_t S, std::uintptr_t stream) {
    check(B, C, S, dtype);
    raise_cuda(cuda::bn_cf_vjp(rho, lam, xhat, t, rstd, gamma, mt, q, dh, dgamma, dbeta, dtype, B, C, S, stream),
               "bn_cf_vjp_cuda");
  });
#endif
}

}  // namespace
}  // namespace fastgan

FASTGAN_REGISTER_BINDINGS(bn_closed_form, fastgan::bind);
