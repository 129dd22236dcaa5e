// CPU kernels and Python bindings of the fused DFM denoiser layers (fastgan/ops/denoiser.py):
// BatchNorm(+ReLU) after a GEMM with the Linear bias folded in, its backward, the reconstruction loss
// and the Gaussian corruption. The GEMMs stay on torch. Math: fastgan/bn_math.h (shared with CUDA).
//
// All 2-D tensors are contiguous (B, N) row-major. Per-feature work is split into column chunks, one
// per thread, each walking every row: no synchronisation and unit-stride inner loops.
#include <pybind11/pybind11.h>
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "fastgan/bn_math.h"
#include "fastgan/binding_utils.h"
#include "fastgan/cpu_clones.h"
#include "fastgan/registry.h"
#ifdef FASTGAN_WITH_CUDA
#include "fastgan/cuda_api.h"
#include "fastgan/cuda_api_denoiser.h"
#endif

namespace py = pybind11;
using namespace pybind11::literals;

namespace fastgan {
namespace {

// Two threads pay off from ~8K elements (measured on 2 cores: a 64x128 BatchNorm forward 7.1 us vs 8.2 us
// serial; 64x512 12.6 vs 19.4); below that the fork/join costs what it saves.
constexpr int64_t kParallelWork = 1 << 12;
constexpr int64_t kChunk = 64;

int64_t n_chunks(int64_t N) { return (N + kChunk - 1) / kChunk; }

// Reductions (batch statistics, gradient sums, the loss) accumulate in double whatever the storage dtype,
// so the fp32 path is at least as accurate as torch's float reductions it is tested against; the
// element-wise passes run in the storage dtype (a double round trip per element costs ~7x on SSE2).
// Column sums add kRowBlock rows in T, then flush into double: the inner loops stay vectorised
// (per-element conversions to double stop GCC's vectoriser), and the T partial sums are only 8 long.
constexpr int64_t kRowBlock = 8;

// The chunk loops below are inlined into per-precision functions built twice (FG_CPU_CLONES: AVX2 and baseline,
// picked at load time). Both run the same operations in the same order: the loops vectorise across columns, GCC
// does not reassociate floating-point sums without -ffast-math, and the AVX2 target brings no FMA contraction.
// 8 floats a vector instead of 4: the 64x512 float32 BatchNorm forward 17.7 -> 12.7 us, backward 21.5 -> 13.3 us
// (one thread, this project's 2-core AMD EPYC).
#define FG_INLINE __attribute__((always_inline)) inline

// Instantiates BODY<float> and BODY<double> (each `void(const ARGS<T>&, int64_t item)`) in functions built as
// those clones, and overloads NAME(const ARGS<T>&, int64_t) calling them: target_clones does not apply to
// templates, so each precision gets a plain function.
#define FG_CLONED(NAME, ARGS, BODY)                                                         \
  FG_CPU_CLONES void NAME##_f32(const ARGS<float>& a, int64_t i) { BODY<float>(a, i); }   \
  FG_CPU_CLONES void NAME##_f64(const ARGS<double>& a, int64_t i) { BODY<double>(a, i); } \
  inline void NAME(const ARGS<float>& a, int64_t i) { NAME##_f32(a, i); }                 \
  inline void NAME(const ARGS<double>& a, int64_t i) { NAME##_f64(a, i); }

// fn(a, i) for every i < items, on the OpenMP threads when `parallel`.
template <typename A>
void for_items(const A& a, int64_t items, bool parallel, void (*fn)(const A&, int64_t)) {
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t i = 0; i < items; ++i) fn(a, i);
}

// acc[j] += sum over rows n of term(n, j) for the nf columns of a chunk.
template <typename T, typename Term>
FG_INLINE void column_sums(int64_t B, int64_t nf, double* acc, Term term) {
  for (int64_t n0 = 0; n0 < B; n0 += kRowBlock) {
    T part[kChunk] = {0};
    const int64_t n1 = std::min(B, n0 + kRowBlock);
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t j = 0; j < nf; ++j) part[j] += term(n, j);
    for (int64_t j = 0; j < nf; ++j) acc[j] += double(part[j]);
  }
}

template <typename T, typename Term>
FG_INLINE void column_sums2(int64_t B, int64_t nf, double* acc1, double* acc2, Term term) {
  for (int64_t n0 = 0; n0 < B; n0 += kRowBlock) {
    T p1[kChunk] = {0}, p2[kChunk] = {0};
    const int64_t n1 = std::min(B, n0 + kRowBlock);
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t j = 0; j < nf; ++j) {
        T a, b;
        term(n, j, &a, &b);
        p1[j] += a;
        p2[j] += b;
      }
    for (int64_t j = 0; j < nf; ++j) {
      acc1[j] += double(p1[j]);
      acc2[j] += double(p2[j]);
    }
  }
}

// out = relu?((y - shift) * scale + beta) over one column chunk, in T.
template <typename T, bool RELU>
FG_INLINE void normalize_chunk(const T* y, T* out, int64_t B, int64_t N, int64_t nf, const T* sh, const T* sc,
                               const T* be) {
  for (int64_t n = 0; n < B; ++n) {
    const T* row = y + n * N;
    T* orow = out + n * N;
    for (int64_t j = 0; j < nf; ++j) orow[j] = bn::normalize<T>(row[j], sh[j], sc[j], be[j], RELU);
  }
}

template <typename T>
struct BnForward {
  const T *y, *bias, *gamma, *beta, *rm_in, *rv_in;
  T *out, *shift, *invstd, *rm_out, *rv_out;
  int64_t B, N;
  bool training, track;
  double momentum, eps;
  bool relu;
};

// Column chunk c of the forward.
template <typename T>
FG_INLINE void bn_forward_chunk(const BnForward<T>& a, int64_t c) {
  const T *y = a.y, *bias = a.bias, *gamma = a.gamma, *beta = a.beta, *rm_in = a.rm_in, *rv_in = a.rv_in;
  T *out = a.out, *shift = a.shift, *invstd = a.invstd, *rm_out = a.rm_out, *rv_out = a.rv_out;
  const int64_t B = a.B, N = a.N;
  const bool training = a.training, track = a.track, relu = a.relu;
  const double momentum = a.momentum, eps = a.eps;
  const int64_t f0 = c * kChunk, nf = std::min(kChunk, N - f0);
  T sh[kChunk], sc[kChunk], be[kChunk];
  if (training) {
    // Two passes (mean, then centred squares), each element added in double and centred on the double mean, as
    // the CUDA kernels do: 8-row T partial sums and squares centred on the T-rounded mean gained B (mean error)^2,
    // invstd 4x (a feature's mean 1e4 std from 0) to 2e4x (1e6) torch's float32 error.
    double sum[kChunk] = {0}, sq[kChunk] = {0}, mean[kChunk];
    const T* yc = y + f0;
    for (int64_t n = 0; n < B; ++n)
      for (int64_t j = 0; j < nf; ++j) sum[j] += double(yc[n * N + j]);
    for (int64_t j = 0; j < nf; ++j) mean[j] = sum[j] / double(B);
    for (int64_t n = 0; n < B; ++n)
      for (int64_t j = 0; j < nf; ++j) {
        const double d = double(yc[n * N + j]) - mean[j];
        sq[j] += d * d;
      }
    for (int64_t j = 0; j < nf; ++j) {
      const int64_t f = f0 + j;
      double s, is;
      bn::train_stats<double>(sum[j], sq[j], B, eps, &s, &is);
      shift[f] = sh[j] = T(s);
      invstd[f] = T(is);
      sc[j] = T(double(gamma[f]) * is);
      if (track) {
        double rm = double(rm_in[f]), rv = double(rv_in[f]);
        bn::running_update<double>(s, sq[j], B, bias ? double(bias[f]) : 0.0, momentum, &rm, &rv);
        rm_out[f] = T(rm);
        rv_out[f] = T(rv);
      }
    }
  } else {
    for (int64_t j = 0; j < nf; ++j) {
      const int64_t f = f0 + j;
      double s, is;
      bn::eval_stats<double>(double(rm_in[f]), double(rv_in[f]), bias ? double(bias[f]) : 0.0, eps, &s, &is);
      shift[f] = sh[j] = T(s);
      invstd[f] = T(is);
      sc[j] = T(double(gamma[f]) * is);
    }
  }
  for (int64_t j = 0; j < nf; ++j) be[j] = beta[f0 + j];
  if (relu)
    normalize_chunk<T, true>(y + f0, out + f0, B, N, nf, sh, sc, be);
  else
    normalize_chunk<T, false>(y + f0, out + f0, B, N, nf, sh, sc, be);
}

FG_CLONED(bn_forward_cloned, BnForward, bn_forward_chunk)

template <typename T>
void bn_forward(const BnForward<T>& a) {
  for_items(a, n_chunks(a.N), a.B * a.N > kParallelWork, bn_forward_cloned);
}

template <typename T, bool RELU>
FG_INLINE void bn_backward_chunk(const T* dout, const T* out, const T* y, const T* gamma, const T* shift,
                                 const T* invstd, T* dy, T* dgamma, T* dbeta, T* dbias, int64_t B, int64_t N,
                                 int64_t nf, bool training) {
  T sh[kChunk], is[kChunk], sc[kChunk], m1[kChunk], m2[kChunk];
  double s1[kChunk] = {0}, s2[kChunk] = {0};
  for (int64_t j = 0; j < nf; ++j) {
    sh[j] = shift[j];
    is[j] = invstd[j];
    sc[j] = gamma[j] * is[j];
  }
  column_sums2<T>(B, nf, s1, s2, [&](int64_t n, int64_t j, T* a, T* b) {
    const int64_t i = n * N + j;
    const T d = dout[i], o = RELU ? out[i] : T(1), v = y[i];  // unconditional loads keep the loop branch-free
    const T dz = bn::relu_grad<T>(d, o, RELU);
    *a = dz;
    *b = dz * ((v - sh[j]) * is[j]);
  });
  for (int64_t j = 0; j < nf; ++j) {
    dbeta[j] = T(s1[j]);
    dgamma[j] = T(s2[j]);
    dbias[j] = T(bn::bias_grad<double>(double(sc[j]), s1[j], training));
    m1[j] = T(s1[j] / double(B));
    m2[j] = T(s2[j] / double(B));
  }
  for (int64_t n = 0; n < B; ++n) {
    const int64_t o = n * N;
    for (int64_t j = 0; j < nf; ++j) {
      const T d = dout[o + j], ov = RELU ? out[o + j] : T(1), v = y[o + j];
      dy[o + j] = bn::input_grad<T>(bn::relu_grad<T>(d, ov, RELU), (v - sh[j]) * is[j], sc[j], m1[j], m2[j],
                                    training);
    }
  }
}

template <typename T>
struct BnBackward {
  const T *dout, *out, *y, *gamma, *shift, *invstd;
  T *dy, *dgamma, *dbeta, *dbias;
  int64_t B, N;
  bool training, relu;
};

template <typename T>
FG_INLINE void bn_backward_at(const BnBackward<T>& a, int64_t c) {
  const int64_t f0 = c * kChunk, nf = std::min(kChunk, a.N - f0);
  if (a.relu)
    bn_backward_chunk<T, true>(a.dout + f0, a.out + f0, a.y + f0, a.gamma + f0, a.shift + f0, a.invstd + f0,
                               a.dy + f0, a.dgamma + f0, a.dbeta + f0, a.dbias + f0, a.B, a.N, nf, a.training);
  else
    bn_backward_chunk<T, false>(a.dout + f0, nullptr, a.y + f0, a.gamma + f0, a.shift + f0, a.invstd + f0,
                                a.dy + f0, a.dgamma + f0, a.dbeta + f0, a.dbias + f0, a.B, a.N, nf, a.training);
}

FG_CLONED(bn_backward_cloned, BnBackward, bn_backward_at)

template <typename T>
void bn_backward(const BnBackward<T>& a) {
  for_items(a, n_chunks(a.N), a.B * a.N > kParallelWork, bn_backward_cloned);
}

template <typename T>
struct ReconForward {
  const T *y, *bias, *t;
  T* out;
  int64_t N;
};

// Row n of the reconstruction loss: kChunk lanes of T partial sums, each over at most kRowBlock elements, flushed
// into double.
template <typename T>
FG_INLINE void recon_row(const ReconForward<T>& a, int64_t n) {
  const int64_t N = a.N;
  const T* yr = a.y + n * N;
  const T* tr = a.t + n * N;
  const T* bias = a.bias;
  double s = 0.0;
  for (int64_t f0 = 0; f0 < N; f0 += kChunk * kRowBlock) {
    T part[kChunk] = {0};
    const int64_t f_end = std::min(N, f0 + kChunk * kRowBlock);
    for (int64_t f1 = f0; f1 < f_end; f1 += kChunk) {
      const int64_t nf = std::min(kChunk, f_end - f1);
      for (int64_t j = 0; j < nf; ++j) {
        T d = recon::diff<T>(yr[f1 + j], bias ? bias[f1 + j] : T(0), tr[f1 + j]);
        part[j] += d * d;
      }
    }
    for (int64_t j = 0; j < kChunk; ++j) s += double(part[j]);
  }
  a.out[n] = T(s);
}

FG_CLONED(recon_row_cloned, ReconForward, recon_row)

template <typename T>
void recon_forward(const T* y, const T* bias, const T* t, T* out, int64_t B, int64_t N) {
  for_items(ReconForward<T>{y, bias, t, out, N}, B, B * N > kParallelWork, recon_row_cloned);
}

template <typename T>
struct ReconBackward {
  const T *go, *y, *bias, *t;
  T *dy, *dbias;
  int64_t B, N, go_div;
};

template <typename T>
FG_INLINE void recon_backward_at(const ReconBackward<T>& a, int64_t c) {
  const T *go = a.go, *y = a.y, *t = a.t;
  T* dy = a.dy;
  const int64_t N = a.N, f0 = c * kChunk, nf = std::min(kChunk, N - f0), go_div = a.go_div;
  const T g_all = recon::shared_go<T>(go, go_div, /*reciprocal=*/false);
  T b[kChunk];
  double db[kChunk] = {0};
  for (int64_t j = 0; j < nf; ++j) b[j] = a.bias ? a.bias[f0 + j] : T(0);
  column_sums<T>(a.B, nf, db, [&](int64_t n, int64_t j) {
    const int64_t i = n * N + f0 + j;
    T v = recon::grad<T>(go_div ? g_all : go[n], recon::diff<T>(y[i], b[j], t[i]));
    dy[i] = v;
    return v;
  });
  if (a.dbias != nullptr)
    for (int64_t j = 0; j < nf; ++j) a.dbias[f0 + j] = T(db[j]);
}

FG_CLONED(recon_backward_cloned, ReconBackward, recon_backward_at)

template <typename T>
void recon_backward(const T* go, const T* y, const T* bias, const T* t, T* dy, T* dbias, int64_t B, int64_t N,
                    int64_t go_div) {
  for_items(ReconBackward<T>{go, y, bias, t, dy, dbias, B, N, go_div}, n_chunks(N), B * N > kParallelWork,
            recon_backward_cloned);
}

constexpr int64_t kCorruptBlock = 1 << 12;

template <typename T>
struct Corrupt {
  const T *h, *noise;
  T* out;
  T sigma;
  int64_t numel;
};

// out[i] = h[i] + sigma * noise[i] over block b.
template <typename T>
FG_INLINE void corrupt_block(const Corrupt<T>& a, int64_t b) {
  const T *h = a.h, *noise = a.noise;  // locals: a store through out could otherwise alias a.sigma
  T* out = a.out;
  const T sigma = a.sigma;
  const int64_t hi = std::min(a.numel, (b + 1) * kCorruptBlock);
  for (int64_t i = b * kCorruptBlock; i < hi; ++i) out[i] = h[i] + sigma * noise[i];
}

FG_CLONED(corrupt_cloned, Corrupt, corrupt_block)

template <typename T>
void corrupt(const T* h, const T* noise, T* out, double sigma, int64_t numel) {
  for_items(Corrupt<T>{h, noise, out, T(sigma), numel}, (numel + kCorruptBlock - 1) / kCorruptBlock,
            numel > 4 * kParallelWork, corrupt_cloned);
}

void check(int64_t B, int64_t N, int dtype) {
  if (B < 0 || N < 0) throw std::invalid_argument("denoiser: negative size");
  if (dtype != kFloat32 && dtype != kFloat64)
    throw std::invalid_argument("denoiser: the CPU kernels take float32 or float64, got dtype code " +
                                std::to_string(dtype));
}

void check_go_div(int64_t go_div) {
  if (go_div < 0) throw std::invalid_argument("recon_loss_backward: go_div must be >= 0, got " + std::to_string(go_div));
}

template <typename T>
void bn_forward_t(std::uintptr_t y, std::uintptr_t bias, std::uintptr_t gamma, std::uintptr_t beta, std::uintptr_t rm,
                  std::uintptr_t rv, std::uintptr_t out, std::uintptr_t shift, std::uintptr_t invstd,
                  std::uintptr_t rm_out, std::uintptr_t rv_out, int64_t B, int64_t N, bool training, bool track,
                  double momentum, double eps, bool relu) {
  bn_forward<T>({cptr<T>(y), cptr<T>(bias), cptr<T>(gamma), cptr<T>(beta), cptr<T>(rm), cptr<T>(rv), mptr<T>(out),
                 mptr<T>(shift), mptr<T>(invstd), mptr<T>(rm_out), mptr<T>(rv_out), B, N, training, track, momentum,
                 eps, relu});
}

void bn_relu_forward_cpu(std::uintptr_t y, std::uintptr_t bias, std::uintptr_t gamma, std::uintptr_t beta,
                         std::uintptr_t rm, std::uintptr_t rv, std::uintptr_t out, std::uintptr_t shift,
                         std::uintptr_t invstd, std::uintptr_t rm_out, std::uintptr_t rv_out, std::uintptr_t count,
                         int dtype, int64_t B, int64_t N, bool training, bool track, double momentum, double eps,
                         bool relu) {
  check(B, N, dtype);
  if (training && B < 1) throw std::invalid_argument("bn_relu: training mode needs a non-empty batch");
  // no features: given running stats are empty (null data pointers) and there is nothing to compute, as on CUDA
  // (which refuses a count there: it has no launch to count in)
  if (N == 0) {
    if (count != 0) throw std::invalid_argument("bn_relu: a batch count needs features (N > 0)");
    return;
  }
  if (count != 0) ++*reinterpret_cast<int64_t*>(count);  // the layer's num_batches_tracked
  if ((!training || track) && (rm == 0 || rv == 0)) throw std::invalid_argument("bn_relu: running stats missing");
  py::gil_scoped_release nogil;
  if (dtype == kFloat32)
    bn_forward_t<float>(y, bias, gamma, beta, rm, rv, out, shift, invstd, rm_out, rv_out, B, N, training, track,
                        momentum, eps, relu);
  else
    bn_forward_t<double>(y, bias, gamma, beta, rm, rv, out, shift, invstd, rm_out, rv_out, B, N, training, track,
                         momentum, eps, relu);
}

void bn_relu_backward_cpu(std::uintptr_t dout, std::uintptr_t out, std::uintptr_t y, std::uintptr_t gamma,
                          std::uintptr_t shift, std::uintptr_t invstd, std::uintptr_t dy, std::uintptr_t dgamma,
                          std::uintptr_t dbeta, std::uintptr_t dbias, int dtype, int64_t B, int64_t N, bool training,
                          bool relu) {
  check(B, N, dtype);
  // an empty batch or no features: no output to read (its data pointer is null), and nothing to mask
  if (relu && out == 0 && B > 0 && N > 0) throw std::invalid_argument("bn_relu_backward: relu needs the forward output");
  py::gil_scoped_release nogil;
  if (dtype == kFloat32)
    bn_backward<float>({cptr<float>(dout), cptr<float>(out), cptr<float>(y), cptr<float>(gamma), cptr<float>(shift),
                        cptr<float>(invstd), mptr<float>(dy), mptr<float>(dgamma), mptr<float>(dbeta),
                        mptr<float>(dbias), B, N, training, relu});
  else
    bn_backward<double>({cptr<double>(dout), cptr<double>(out), cptr<double>(y), cptr<double>(gamma),
                         cptr<double>(shift), cptr<double>(invstd), mptr<double>(dy), mptr<double>(dgamma),
                         mptr<double>(dbeta), mptr<double>(dbias), B, N, training, relu});
}

void recon_loss_forward_cpu(std::uintptr_t y, std::uintptr_t bias, std::uintptr_t t, std::uintptr_t out, int dtype,
                            int64_t B, int64_t N) {
  check(B, N, dtype);
  py::gil_scoped_release nogil;
  if (dtype == kFloat32)
    recon_forward<float>(cptr<float>(y), cptr<float>(bias), cptr<float>(t), mptr<float>(out), B, N);
  else
    recon_forward<double>(cptr<double>(y), cptr<double>(bias), cptr<double>(t), mptr<double>(out), B, N);
}

void recon_loss_backward_cpu(std::uintptr_t go, std::uintptr_t y, std::uintptr_t bias, std::uintptr_t t,
                             std::uintptr_t dy, std::uintptr_t dbias, int dtype, int64_t B, int64_t N,
                             int64_t go_div) {
  check(B, N, dtype);
  check_go_div(go_div);
  py::gil_scoped_release nogil;
  if (dtype == kFloat32)
    recon_backward<float>(cptr<float>(go), cptr<float>(y), cptr<float>(bias), cptr<float>(t), mptr<float>(dy),
                          mptr<float>(dbias), B, N, go_div);
  else
    recon_backward<double>(cptr<double>(go), cptr<double>(y), cptr<double>(bias), cptr<double>(t), mptr<double>(dy),
                           mptr<double>(dbias), B, N, go_div);
}

void corrupt_cpu(std::uintptr_t h, std::uintptr_t noise, std::uintptr_t out, double sigma, int dtype, int64_t numel) {
  check(numel, 0, dtype);
  py::gil_scoped_release nogil;
  if (dtype == kFloat32)
    corrupt<float>(cptr<float>(h), cptr<float>(noise), mptr<float>(out), sigma, numel);
  else
    corrupt<double>(cptr<double>(h), cptr<double>(noise), mptr<double>(out), sigma, numel);
}

void bind(py::module_& m) {
  m.def("bn_relu_forward_cpu", &bn_relu_forward_cpu, "y"_a, "bias"_a, "gamma"_a, "beta"_a, "running_mean"_a,
        "running_var"_a, "out"_a, "shift"_a, "invstd"_a, "running_mean_out"_a, "running_var_out"_a, "count"_a,
        "dtype"_a, "B"_a, "N"_a, "training"_a, "track"_a, "momentum"_a, "eps"_a, "relu"_a);
  m.def("bn_relu_backward_cpu", &bn_relu_backward_cpu, "dout"_a, "out"_a, "y"_a, "gamma"_a, "shift"_a, "invstd"_a,
        "dy"_a, "dgamma"_a, "dbeta"_a, "dbias"_a, "dtype"_a, "B"_a, "N"_a, "training"_a, "relu"_a);
  m.def("recon_loss_forward_cpu", &recon_loss_forward_cpu, "y"_a, "bias"_a, "target"_a, "out"_a, "dtype"_a, "B"_a,
        "N"_a);
  m.def("recon_loss_backward_cpu", &recon_loss_backward_cpu, "go"_a, "y"_a, "bias"_a, "target"_a, "dy"_a, "dbias"_a,
        "dtype"_a, "B"_a, "N"_a, "go_div"_a);
  m.def("corrupt_cpu", &corrupt_cpu, "h"_a, "noise"_a, "out"_a, "sigma"_a, "dtype"_a, "numel"_a);
#ifdef FASTGAN_WITH_CUDA
  m.def("bn_relu_forward_cuda",
        [](std::uintptr_t y, std::uintptr_t bias, std::uintptr_t gamma, std::uintptr_t beta, std::uintptr_t rm,
           std::uintptr_t rv, std::uintptr_t out, std::uintptr_t shift, std::uintptr_t invstd, std::uintptr_t rm_out,
           std::uintptr_t rv_out, std::uintptr_t count, int dtype, int64_t B, int64_t N, bool training, bool track,
           double momentum, double eps, bool relu, std::uintptr_t stream) {
          check(B, N, dtype);
          if (N == 0 && count != 0) throw std::invalid_argument("bn_relu: a batch count needs features (N > 0)");
          raise_cuda(cuda::bn_relu_forward(y, bias, gamma, beta, rm, rv, out, shift, invstd, rm_out, rv_out, count,
                                           dtype, B, N, training, track, momentum, eps, relu, stream),
                     "bn_relu_forward_cuda");
        });
  m.def("bn_relu_backward_cuda",
        [](std::uintptr_t dout, std::uintptr_t out, std::uintptr_t y, std::uintptr_t gamma, std::uintptr_t shift,
           std::uintptr_t invstd, std::uintptr_t dy, std::uintptr_t dgamma, std::uintptr_t dbeta, std::uintptr_t dbias,
           int dtype, int64_t B, int64_t N, bool training, bool relu, std::uintptr_t stream) {
          check(B, N, dtype);
          raise_cuda(cuda::bn_relu_backward(dout, out, y, gamma, shift, invstd, dy, dgamma, dbeta, dbias, dtype, B, N,
                                            training, relu, stream),
                     "bn_relu_backward_cuda");
        });
  m.def("recon_loss_forward_cuda",
        [](std::uintptr_t y, std::uintptr_t bias, std::uintptr_t t, std::uintptr_t out, int dtype, int64_t B, int64_t N,
           std::uintptr_t stream) {
          check(B, N, dtype);
          raise_cuda(cuda::recon_loss_forward(y, bias, t, out, dtype, B, N, stream), "recon_loss_forward_cuda");
        });
  m.def("recon_loss_backward_cuda",
        [](std::uintptr_t go, std::uintptr_t y, std::uintptr_t bias, std::uintptr_t t, std::uintptr_t dy,
           std::uintptr_t dbias, int dtype, int64_t B, int64_t N, int64_t go_div, std::uintptr_t stream) {
          check(B, N, dtype);
          check_go_div(go_div);
          raise_cuda(cuda::recon_loss_backward(go, y, bias, t, dy, dbias, dtype, B, N, go_div, stream),
                     "recon_loss_backward_cuda");
        });
  m.def("corrupt_cuda",
        [](std::uintptr_t h, std::uintptr_t noise, std::uintptr_t out, double sigma, int dtype, int64_t numel,
           std::uintptr_t stream) {
          check(numel, 0, dtype);
          raise_cuda(cuda::corrupt(h, noise, out, sigma, dtype, numel, stream), "corrupt_cuda");
        });
#endif
}

}  // namespace
}  // namespace fastgan

FASTGAN_REGISTER_BINDINGS(denoiser, fastgan::bind);
