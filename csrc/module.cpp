#include <pybind11/pybind11.h>
#include <string>
#include "fastgan/registry.h"

#ifdef FASTGAN_WITH_CUDA
#include "fastgan/cuda_api.h"
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastgan native kernels: CPU C++ always, CUDA when built with nvcc";
#ifdef FASTGAN_WITH_CUDA
  m.attr("cuda_compiled") = true;
  m.attr("cuda_archs") = FASTGAN_CUDA_ARCHS;
  // "13.0": the CUDA runtime linked statically into _C, which needs a driver supporting that version
  m.attr("cuda_runtime") = std::to_string(fastgan::cuda::runtime_version() / 1000) + "." +
                           std::to_string(fastgan::cuda::runtime_version() % 1000 / 10);
  // Called only on request (fastgan.info, backend checks), never at import: importing must not touch CUDA.
  // (count, error message or "", cudaError_t code)
  m.def("cuda_device_count", []() {
    int n = 0;
    int err = fastgan::cuda::device_count(&n);
    return py::make_tuple(n, err == 0 ? std::string() : std::string(fastgan::cuda::error_string(err)), err);
  });
#else
  m.attr("cuda_compiled") = false;
  m.attr("cuda_archs") = "";
  m.attr("cuda_runtime") = "";
#endif
  // for `fastgan info`: which of the FG_CPU_CLONES (cpu_clones.h) the loader picks on this machine
  m.def("cpu_clones", []() -> std::string {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") ? "avx2" : "default";
#else
    return "none (one build)";
#endif
  });
#ifdef FASTGAN_WITH_OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
  for (auto reg : fastgan::registrars()) reg(m);
}
