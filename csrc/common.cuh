// flashts — shared CUDA device helpers (no torch headers: every .cu compiles with nvcc alone).
//
// Online-softmax state (SPEC §4/§5 and the row softmax of sliding-window attention):
//   (m, u, w) = (max s, Σ e^{s-m}, Σ e^{s-m}·v), identity (-inf, 0, 0).
// Combine (A earlier than B): m = max(mA, mB), u = uA e^{mA-m} + uB e^{mB-m}, w likewise.
// The combine never forms e^{(-inf) - (-inf)}: an empty side contributes exactly 0.
#pragma once

#include <cuda_runtime.h>
#include <math_constants.h>

namespace flashts {

// e^{a - m}, 0 when a == -inf (also when m == -inf, i.e. both sides empty).
__device__ __forceinline__ float exp_shift(float a, float m) {
    return a == -CUDART_INF_F ? 0.f : __expf(a - m);
}

// Scalar part of the online-softmax combine: returns the new max and the factors by which the
// accumulators of A and B are scaled (A' = fa·A + fb·B).
struct SoftmaxMerge {
    float m, fa, fb;
};

__device__ __forceinline__ SoftmaxMerge softmax_merge(float ma, float mb) {
    SoftmaxMerge r;
    r.m = fmaxf(ma, mb);
    r.fa = exp_shift(ma, r.m);
    r.fb = exp_shift(mb, r.m);
    return r;
}

__host__ __device__ __forceinline__ int cdiv(int a, int b) { return (a + b - 1) / b; }

}  // namespace flashts

// Launch-error check for the plain C++ launchers: returns the CUDA error code to the binding layer.
#define FLASHTS_LAUNCH_CHECK() cudaGetLastError()
