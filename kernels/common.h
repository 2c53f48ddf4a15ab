// What every kernel file starts with: on the device (NVRTC defines
// __CUDACC_RTC__) the CUDA built-ins are real; on the host (the `cc` crate
// compiles the same files as C for the tests) they become loop indices
// that `NOF1D_HOST_LAUNCH` walks one thread at a time. A kernel written for
// this header uses no shared memory, no barriers and no atomics: each thread
// is independent, so running the threads in turn gives the device's results.
#pragma once

#ifdef __CUDACC_RTC__
#define NOF1D_KERNEL extern "C" __global__
#define NOF1D_DEVICE __device__ static inline
#define NOF1D_THREAD_INDEX ((long long)blockIdx.x * blockDim.x + threadIdx.x)
#else
// The host build is plain C (the `cc` crate's C compiler, the one SQLite's
// build already needs), so kernels keep to the C subset of CUDA C++.
#include <math.h>
#define NOF1D_KERNEL static
#define NOF1D_DEVICE static inline
// The host "thread" index, set by the launcher before each call.
static _Thread_local long long nof1d_host_thread = 0;
#define NOF1D_THREAD_INDEX nof1d_host_thread
// A host launcher `name_host(count, args...)` that runs `name` once per
// thread index 0..count. One macro rather than a hand-written loop per
// kernel: each launcher is the same four lines, and a kernel whose
// launcher's parameters differ from its own does not compile.
#define NOF1D_HOST_LAUNCH(name, params, args)                                  \
    void name##_host(long long count, NOF1D_UNPAREN params) {       \
        for (long long i = 0; i < count; i++) {                                \
            nof1d_host_thread = i;                                             \
            name args;                                                         \
        }                                                                      \
    }
#define NOF1D_UNPAREN(...) __VA_ARGS__
#endif
