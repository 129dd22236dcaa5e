#include <cuda_runtime.h>
#include "fastgan/cuda_api.h"

namespace fastgan {
namespace cuda {

const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

int device_count(int* count) {
  *count = 0;
  return static_cast<int>(cudaGetDeviceCount(count));
}

int get_device(int* device) { return static_cast<int>(cudaGetDevice(device)); }

// the toolkit's version at build time (no driver call): the runtime linked into _C, which needs a driver of
// its CUDA version or newer
int runtime_version() { return CUDART_VERSION; }

}  // namespace cuda
}  // namespace fastgan
