// Minimal CUDA-on-CPU harness for tests/test_sliding_window_cuda_emulation.py (a stand-in until the shared
// harness of tests/emulation/ covers the sliding-window kernels; then this folder goes).
//
// The .cu is compiled as host C++ with this header forced first (-include emu_core.h) and the stub headers of
// this folder in place of the CUDA ones: __global__/__device__ vanish, threadIdx/blockIdx are per-fiber globals,
// every CUDA thread of a block is a fiber (emu_core.cpp: a hand-written x86-64 stack switch; blocks run one after
// another), __syncthreads / __syncwarp are barriers over the block's / warp's fibers, __shfl_sync exchanges
// through a per-warp slot array between two warp barriers, FLASHTS_LAUNCH runs the grid, FLASHTS_DYNAMIC_SMEM
// hands out a per-block buffer filled with garbage bytes (0x5a). __half / __nv_bfloat16 round to nearest even.
// wmma (the generic kernels' block_gemm) is modelled with every lane computing the whole 16×16 tile.
#pragma once
#include <ucontext.h>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <cstdio>
#include <vector>
#include <functional>
#include <algorithm>

#define FLASHTS_HOST_EMU 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static

struct uint3 { unsigned x, y, z; };
struct dim3 { unsigned x, y, z; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };
typedef int cudaError_t;
typedef void* cudaStream_t;
enum { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97, cudaDevAttrComputeCapabilityMajor = 75 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return 0; }
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
    *v = a == cudaDevAttrComputeCapabilityMajor ? 9 : 232448; return 0; }
template <typename F> inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) { return 0; }
inline cudaError_t cudaGetLastError() { return 0; }
inline const char* cudaGetErrorString(cudaError_t) { return "emu"; }

#define CUDART_INF_F (__builtin_inff())

namespace emu {
extern thread_local uint3 tid, bid;
extern thread_local dim3 bdim, gdim;
void sync_block();
void sync_warp();
uint32_t shfl_u32(uint32_t v, int src);
void* dyn_smem();
void launch(dim3 grid, dim3 block, size_t smem, std::function<void()> body);
}
#define threadIdx (emu::tid)
#define blockIdx (emu::bid)
#define blockDim (emu::bdim)
#define gridDim (emu::gdim)
inline void __syncthreads() { emu::sync_block(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::sync_warp(); }
template <typename T> inline T __shfl_sync(unsigned, T v, int src) {
    static_assert(sizeof(T) == 4, "32-bit");
    uint32_t u; memcpy(&u, &v, 4); u = emu::shfl_u32(u, src & 31); T r; memcpy(&r, &u, 4); return r; }
template <typename T> inline T __shfl_xor_sync(unsigned m, T v, int x) { return __shfl_sync(m, v, (int)(emu::tid.x & 31) ^ x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
using std::exp2f; using std::log2f; using std::fmaxf; using std::fminf; using std::fmaf;

#define FLASHTS_DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(emu::dyn_smem())
#define FLASHTS_LAUNCH(kernel, grid, block, smem, stream, ...) emu::launch(grid, block, smem, [&] { kernel(__VA_ARGS__); })

struct __half { uint16_t x; };
struct __nv_bfloat16 { uint16_t x; };
inline float __half2float(__half h) { _Float16 f; memcpy(&f, &h.x, 2); return (float)f; }
inline __half __float2half_rn(float x) { _Float16 f = (_Float16)x; __half h; memcpy(&h.x, &f, 2); return h; }
inline float __bfloat162float(__nv_bfloat16 b) { uint32_t u = uint32_t(b.x) << 16; float f; memcpy(&f, &u, 4); return f; }
inline __nv_bfloat16 __float2bfloat16_rn(float x) {
    uint32_t u; memcpy(&u, &x, 4); __nv_bfloat16 b;
    if ((u & 0x7fffffffu) > 0x7f800000u) { b.x = uint16_t((u >> 16) | 0x40); return b; }
    u += 0x7fffu + ((u >> 16) & 1); b.x = uint16_t(u >> 16); return b; }

// wmma stub: every lane holds and computes the whole 16×16 tile (duplicate identical writes).
namespace nvcuda { namespace wmma {
struct row_major {}; struct col_major {}; struct matrix_a {}; struct matrix_b {}; struct accumulator {};
namespace precision { struct tf32 {}; }
enum layout_t { mem_row_major, mem_col_major };
template <typename Use, int M, int N, int K, typename T, typename L = void> struct fragment {
    float v[16 * 16]; static constexpr int num_elements = 0; float x[1]; };
template <typename Use, int M, int N, int K, typename T, typename L, typename E>
void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const E* p, unsigned ld) {
    const bool a = std::is_same<Use, matrix_a>::value; const int R = a ? M : K, C = a ? K : N;
    const bool row = std::is_same<L, row_major>::value;
    float (*tof)(E) = nullptr; (void)tof;
    for (int r = 0; r < R; ++r) for (int c = 0; c < C; ++c) {
        E e = row ? p[r * ld + c] : p[c * ld + r];
        if constexpr (std::is_same<E, __half>::value) f.v[r * 16 + c] = __half2float(e);
        else if constexpr (std::is_same<E, __nv_bfloat16>::value) f.v[r * 16 + c] = __bfloat162float(e);
        else f.v[r * 16 + c] = (float)e; }
}
template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p, unsigned ld, layout_t) {
    for (int r = 0; r < M; ++r) for (int c = 0; c < N; ++c) f.v[r * 16 + c] = p[r * ld + c]; }
template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ld, layout_t) {
    emu::sync_warp();
    for (int r = 0; r < M; ++r) for (int c = 0; c < N; ++c) p[r * ld + c] = f.v[r * 16 + c];
    emu::sync_warp(); }
template <int M, int N, int K>
void fill_fragment(fragment<accumulator, M, N, K, float>& f, float x) { for (auto& e : f.v) e = x; }
template <int M, int N, int K, typename T, typename LA, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
              const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
    for (int m = 0; m < M; ++m) for (int n = 0; n < N; ++n) { float s = c.v[m * 16 + n];
        for (int k = 0; k < K; ++k) s += a.v[m * 16 + k] * b.v[k * 16 + n]; d.v[m * 16 + n] = s; } }
inline float __float_to_tf32(float x) { return x; }
}}
