// Arguments of the NTGAN noisy/clean batch and mu-weighted loss kernels, filled by the Python bindings
// (csrc/cpu/noise.cpp, csrc/cpu/nt_losses.cpp) and read by both the CPU and the CUDA kernels.
// Pointers are raw addresses (0 = absent); strides are in elements.
#pragma once
#include <cstdint>

namespace fastgan {

// real/fake batches (rows_out, F) from x (m, F): "double" writes [x; x + eps] (rows_out = 2m),
// "half" writes [x[:h]; x[h:] + eps] with h = m / 2 (rows_out = m). eps rows: n_noisy = m (double) or m - h.
struct NoisyForwardArgs {
  std::uintptr_t x_real = 0, x_fake = 0;      // storage dtype; at least one present
  int64_t sr_b = 0, sr_f = 0, sf_b = 0, sf_f = 0;
  std::uintptr_t eps = 0;                     // (n_noisy, F) storage dtype; 0 = Gaussian sigma * z
  int64_t se_b = 0, se_f = 0;
  std::uintptr_t sigma = 0;                   // (C,) accumulation dtype, per-channel; 0 = sigma_value
  double sigma_value = 0.0;
  int64_t C = 1;                              // channels: column f has channel f / (F / C)
  std::uintptr_t rng = 0;                     // int64 [seed, offset, ticket] (Gaussian only)
  bool advance = false;                       // read rng, write [seed, offset] to `used`, advance rng's offset
  std::uintptr_t used = 0;
  std::uintptr_t out_real = 0, out_fake = 0;  // contiguous (rows_out, F), storage dtype
  int dtype = 0;                              // storage dtype code; accumulation is float64 iff float64
  int64_t m = 0, F = 0;
  bool half = false;
};

// Gradients of NoisyForward: dx (double mode only: dx[i] = g[i] + g[m + i]; in half mode dx = g),
// deps = g_real[noisy] + g_fake[noisy], dsigma[i, c] = sum over row i, channel c of deps * z.
struct NoisyBackwardArgs {
  std::uintptr_t g_real = 0, g_fake = 0;      // (rows_out, F) storage dtype; 0 = zero
  int64_t gr_b = 0, gr_f = 0, gf_b = 0, gf_f = 0;
  std::uintptr_t dx_real = 0, dx_fake = 0;    // contiguous (m, F), storage dtype; 0 = not wanted
  std::uintptr_t deps = 0;                    // contiguous (n_noisy, F), storage dtype; 0 = not wanted
  std::uintptr_t dsigma = 0;                  // contiguous (n_noisy, C), accumulation dtype; 0 = not wanted
  std::uintptr_t rng = 0;                     // int64 [seed, offset] of the draw (for dsigma)
  int64_t C = 1;
  int dtype = 0;
  int64_t m = 0, F = 0;
  bool half = false;
};

// mu-weighted clean/noisy logistic losses, see nt_losses_math.h. Logits are in the accumulation dtype.
struct NtLossArgs {
  std::uintptr_t logits_real = 0, logits_fake = 0;
  int64_t n_real = 0, n_fake = 0, s_real = 1, s_fake = 1;
  std::uintptr_t mu = 0;                      // 0-d accumulation dtype; 0 = mu_value
  double mu_value = 0.0;
  int kind = 0, reduction = 0;
  int dtype = 0;                              // kFloat32 or kFloat64
  std::uintptr_t loss = 0;                    // forward: 0-d output
  // forward, CUDA: one block per `chunk` logits of a side; with more than one block each writes its sum to
  // partials[block] (scratch of n_blocks, accumulation dtype, from the caller) and a second pass adds them
  // in block order, so the loss is deterministic. 0 = one block for everything.
  std::uintptr_t partials = 0;
  int64_t chunk = 0;
  std::uintptr_t w_real = 0, w_fake = 0;      // forward: JS weights (n,), 0 = not wanted
  std::uintptr_t go = 0;                      // backward: 0-d upstream gradient of the loss
  std::uintptr_t gw_real = 0, gw_fake = 0;    // backward: upstream gradients of the weights, 0 = zero
  std::uintptr_t d_real = 0, d_fake = 0;      // backward: contiguous (n,) outputs, aliasing no input (the CUDA
                                              // backward reads logits and gw through the read-only path)
};

}  // namespace fastgan
