// Helpers for the pybind11 binding files in csrc/cpu/: pointers arrive from Python as integers, and CUDA
// entry points return a cudaError_t code that becomes a Python RuntimeError with CUDA's message.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#ifdef FASTGAN_WITH_CUDA
#include "fastgan/cuda_api.h"
#endif

namespace fastgan {

template <typename T>
inline const T* cptr(std::uintptr_t p) { return reinterpret_cast<const T*>(p); }
template <typename T>
inline T* mptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

#ifdef FASTGAN_WITH_CUDA
inline void raise_cuda(int err, const char* what) {
  if (err != 0) throw std::runtime_error(std::string(what) + ": " + cuda::error_string(err));
}
#endif

}  // namespace fastgan
