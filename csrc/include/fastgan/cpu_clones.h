// Function multi-versioning for the CPU kernels' hot loops: GCC builds an AVX2 clone and a baseline one and
// picks at load time, so one wheel runs everywhere and uses 256-bit vectors where the CPU has them.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FG_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FG_CPU_CLONES
#endif
