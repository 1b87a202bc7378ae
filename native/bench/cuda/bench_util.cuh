// Shared by the CUDA benchmarks: the CUDA error check, event timing and the median.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                             \
    do {                                                                                  \
        cudaError_t e_ = (x);                                                             \
        if (e_ != cudaSuccess) {                                                          \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x,                \
                         cudaGetErrorString(e_));                                         \
            std::exit(1);                                                                 \
        }                                                                                 \
    } while (0)

// Runs f() n times on stream st, each between events e0 and e1: the milliseconds of each run.
template <class F>
std::vector<float> time_events(cudaStream_t st, cudaEvent_t e0, cudaEvent_t e1, int n, F&& f) {
    std::vector<float> t;
    for (int i = 0; i < n; ++i) {
        CK(cudaEventRecord(e0, st));
        f();
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        t.push_back(ms);
    }
    return t;
}

// The median (the upper middle element of an even count).
inline float median(std::vector<float> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}
