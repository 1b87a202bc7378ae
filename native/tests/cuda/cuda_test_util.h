// Shared by the CUDA tests: the check macros and their counters. The bf16 conversions are the
// core's (bf16_to_f32 in core.h, f32_to_bf16 in backend.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#include "core.h"

inline int g_failures = 0;
inline int g_checks = 0;

// Counts a check; on failure prints the condition and the printf-style message.
#define EXPECT(cond, ...)                                               \
    do {                                                                \
        ++g_checks;                                                     \
        if (!(cond)) {                                                  \
            ++g_failures;                                               \
            std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            std::printf(__VA_ARGS__);                                   \
            std::printf("\n");                                          \
        }                                                               \
    } while (0)

// A CUDA runtime call that must succeed (exits 1 otherwise).
#define CK(x)                                                                           \
    do {                                                                                \
        cudaError_t e_ = (x);                                                           \
        if (e_ != cudaSuccess) {                                                        \
            std::printf("CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, \
                        __LINE__, #x);                                                  \
            std::exit(1);                                                               \
        }                                                                               \
    } while (0)
