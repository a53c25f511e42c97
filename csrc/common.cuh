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

// ------------------------------------------------------------------------------------------------------------
// Added for the auto-correlation and prefix-scan (Aaren / Latte) kernels.
// ------------------------------------------------------------------------------------------------------------
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace flashts {

// Element types the kernels are templated on: float, __half, __nv_bfloat16. All arithmetic is in float.
template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Butterfly reductions over the 32 lanes of a warp. Every lane must call them (full mask) and every lane
// gets the result; the order of the additions is fixed, so the result is deterministic.
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
    return x;
}

// Deterministic sum over all threads of a 1-D block (blockDim.x a multiple of 32, at most 1024).
// `scratch` holds at least 32 floats of shared memory. Every thread returns the total. Contains
// __syncthreads(): call it from every thread of the block.
__device__ __forceinline__ float block_sum(float x, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    x = warp_sum(x);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    float total = 0.f;
    if (warp == 0) {
        total = lane < n_warps ? scratch[lane] : 0.f;
        total = warp_sum(total);
        if (lane == 0) scratch[0] = total;
    }
    __syncthreads();
    total = scratch[0];
    return total;
}

__host__ __device__ __forceinline__ int64_t cdiv64(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace flashts
