// flashts — decode-step kernels (T = 1 with a state), one kernel per step and op: linear attention, Aaren,
// Latte, sliding-window ring buffer, Latte Macchiato (shifted window cache + Latte state, Latte phases reused).
// The math (per thread, per phase) is csrc/decode_math.h, shared with the host-emulation tests; each kernel
// below only runs its phases with __syncthreads() in between.
//
// Tiles. One block of kThreads = 128 threads per (batch, query head). The state rows (S [D, Dv], Latte's
// S [L, Dv], the ring's V rows) are read in row groups × column groups of 4 floats (float32 state) or 16 bytes
// (ring rows in the input type): one 128-bit load (LDG.E.128) and store per item and row when the launcher
// finds the sizes divisible and the pointers 16-byte aligned (template VEC; else VEC = 1, scalar).
// The steps are memory/latency bound: no tensor cores (a [1, D] × [D, Dv] product per head).
// Grid at the decode goal shape (B = 64, H = 8): 512 blocks on 132 SMs.
#include "common.cuh"
#include "decode_math.h"
#include "decode_step.h"

namespace flashts {
namespace decode {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kDefaultSmem = 48 * 1024;

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) linear_step_kernel(LinearStep<T> a) {
    FLASHTS_DYNAMIC_SMEM(float, smem);
    const int64_t blk = blockIdx.x;
    const int tid = threadIdx.x, nt = blockDim.x;
    linear_phase0(a, blk, tid, nt, smem);
    __syncthreads();
    linear_phase1<T, VEC>(a, blk, tid, nt, smem);
    __syncthreads();
    linear_phase2<T, VEC>(a, blk, tid, nt, smem);
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) aaren_step_kernel(AarenStep<T> a) {
    FLASHTS_DYNAMIC_SMEM(float, smem);
    const int64_t blk = blockIdx.x;
    const int tid = threadIdx.x, nt = blockDim.x;
    aaren_phase0(a, blk, tid, nt, smem);
    __syncthreads();
    aaren_phase1(a, blk, tid, nt, smem);
    __syncthreads();
    aaren_phase2<T, VEC>(a, blk, tid, nt, smem);
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) latte_step_kernel(LatteStep<T> a) {
    FLASHTS_DYNAMIC_SMEM(float, smem);
    const int64_t blk = blockIdx.x;
    const int tid = threadIdx.x, nt = blockDim.x;
    latte_phase0(a, blk, tid, nt, smem);
    __syncthreads();
    latte_phase1(a, blk, tid, nt, smem);
    __syncthreads();
    latte_phase2(a, blk, tid, nt, smem);
    __syncthreads();
    latte_phase3<T, VEC>(a, blk, tid, nt, smem);
    __syncthreads();
    latte_phase4<T, VEC>(a, blk, tid, nt, smem);
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) swa_ring_step_kernel(SwaRingStep<T> a) {
    FLASHTS_DYNAMIC_SMEM(float, smem);
    const int64_t blk = blockIdx.x;
    const int tid = threadIdx.x, nt = blockDim.x;
    swa_phase0(a, blk, tid, nt, smem);
    __syncthreads();
    swa_phase1<T, VEC>(a, blk, tid, nt, smem);
    __syncthreads();
    swa_phase2(a, blk, tid, nt, smem);
    __syncthreads();
    swa_phase3(a, blk, tid, nt, smem);
    __syncthreads();
    swa_phase4<T, VEC>(a, blk, tid, nt, smem);
    __syncthreads();
    swa_phase5<T, VEC>(a, blk, tid, nt, smem);
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) macchiato_step_kernel(MacchiatoStep<T> a) {
    FLASHTS_DYNAMIC_SMEM(float, smem);
    const int64_t blk = blockIdx.x;
    const int tid = threadIdx.x, nt = blockDim.x;
    latte_phase0(a.latte, blk, tid, nt, smem);
    mac_phase0<T, VEC>(a, blk, tid, nt, smem);
    __syncthreads();
    latte_phase1(a.latte, blk, tid, nt, smem);
    mac_phase1<T, VEC>(a, blk, tid, nt, smem);
    __syncthreads();
    latte_phase2(a.latte, blk, tid, nt, smem);
    mac_phase2<T, VEC>(a, blk, tid, nt, smem);
    __syncthreads();
    latte_phase3<T, VEC>(a.latte, blk, tid, nt, smem);
    mac_phase3<T, VEC>(a, blk, tid, nt, smem);
    __syncthreads();
    mac_phase4<T, VEC>(a, blk, tid, nt, smem);
    __syncthreads();
    mac_phase5<T, VEC>(a, blk, tid, nt, smem);
}

bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename T>
Vec3<T> vec3(In3 x) {
    return Vec3<T>{static_cast<const T*>(x.data), x.sb, x.sh, x.sx};
}

// One launch of `kernel` over `blocks` blocks with `floats` floats of dynamic shared memory.
template <typename Args>
cudaError_t launch(void (*kernel)(Args), const Args& a, int64_t blocks, int64_t floats, cudaStream_t stream) {
    if (blocks == 0) return cudaSuccess;
    if (blocks > 2147483647LL) return cudaErrorInvalidValue;
    const int64_t bytes = floats * static_cast<int64_t>(sizeof(float));
    if (bytes > kDefaultSmem) {
        int dev = 0, optin = 0;
        cudaError_t err = cudaGetDevice(&dev);
        if (err != cudaSuccess) return err;
        err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
        if (err != cudaSuccess) return err;
        if (bytes > optin) return cudaErrorInvalidConfiguration;
        err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
        if (err != cudaSuccess) return err;
    }
    FLASHTS_LAUNCH(kernel, static_cast<unsigned>(blocks), kThreads, static_cast<size_t>(bytes), stream, a);
    return cudaGetLastError();
}

template <typename Fn>
cudaError_t dispatch(DType dtype, Fn&& fn) {
    switch (dtype) {
        case DType::F32: return fn(float{});
        case DType::F16: return fn(__half{});
        case DType::BF16: return fn(__nv_bfloat16{});
    }
    return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t linear_step(DType dtype, In3 q, In3 k, In3 v, int64_t B, int64_t H, int64_t Hk, int64_t D, int64_t Dv,
                        int feature_map, bool normalize, float scale, float eps, const float* S_in,
                        const float* z_in, float* S_out, float* z_out, void* o, cudaStream_t stream) {
    if (B < 0 || H <= 0 || Hk <= 0 || H % Hk != 0 || D <= 0 || Dv <= 0 || feature_map < 0 || feature_map > 2 ||
        S_out == nullptr || z_out == nullptr)
        return cudaErrorInvalidValue;
    const bool vec = Dv % 4 == 0 && aligned16(S_in) && aligned16(S_out);
    return dispatch(dtype, [&](auto tag) {
        using T = decltype(tag);
        LinearStep<T> a{vec3<T>(q), vec3<T>(k), vec3<T>(v), B, H, Hk, D, Dv, feature_map, normalize ? 1 : 0,
                        scale, eps, S_in, z_in, S_out, z_out, static_cast<T*>(o)};
        if (vec) return launch(linear_step_kernel<T, 4>, a, B * H, linear_smem_floats(D, Dv, kThreads, 4), stream);
        return launch(linear_step_kernel<T, 1>, a, B * H, linear_smem_floats(D, Dv, kThreads, 1), stream);
    });
}

cudaError_t aaren_step(DType dtype, In3 q, In3 k, In3 v, int64_t B, int64_t H, int64_t D, int64_t Dv, float scale,
                       const float* m_in, const float* u_in, const float* w_in, float* m_out, float* u_out,
                       float* w_out, void* o, cudaStream_t stream) {
    if (B < 0 || H <= 0 || D <= 0 || Dv <= 0 || !m_out || !u_out || !w_out) return cudaErrorInvalidValue;
    const bool vec = Dv % 4 == 0 && aligned16(w_in) && aligned16(w_out);
    return dispatch(dtype, [&](auto tag) {
        using T = decltype(tag);
        AarenStep<T> a{vec3<T>(q), vec3<T>(k), vec3<T>(v), B, H, D, Dv, scale, m_in, u_in, w_in,
                       m_out, u_out, w_out, static_cast<T*>(o)};
        if (vec) return launch(aaren_step_kernel<T, 4>, a, B * H, aaren_smem_floats(D, Dv), stream);
        return launch(aaren_step_kernel<T, 1>, a, B * H, aaren_smem_floats(D, Dv), stream);
    });
}

cudaError_t latte_step(DType dtype, In3 q, In3 k, In3 v, int64_t B, int64_t H, int64_t L, int64_t Dv,
                       const float* m_in, const float* a_in, const float* S_in, float* m_out, float* a_out,
                       float* S_out, void* o, cudaStream_t stream) {
    if (B < 0 || H <= 0 || L <= 0 || Dv <= 0 || !m_out || !a_out || !S_out) return cudaErrorInvalidValue;
    const bool vec = Dv % 4 == 0 && aligned16(S_in) && aligned16(S_out);
    return dispatch(dtype, [&](auto tag) {
        using T = decltype(tag);
        LatteStep<T> a{vec3<T>(q), vec3<T>(k), vec3<T>(v), B, H, L, Dv, m_in, a_in, S_in,
                       m_out, a_out, S_out, static_cast<T*>(o)};
        if (vec) return launch(latte_step_kernel<T, 4>, a, B * H, latte_smem_floats(L, Dv, kThreads, 4), stream);
        return launch(latte_step_kernel<T, 1>, a, B * H, latte_smem_floats(L, Dv, kThreads, 1), stream);
    });
}

cudaError_t swa_ring_step(DType dtype, In3 q, In3 k, In3 v, int64_t B, int64_t H, int64_t Hk, int64_t D,
                          int64_t Dv, int64_t W, float scale, void* k_cache, void* v_cache, const int64_t* pos,
                          void* o, cudaStream_t stream) {
    if (B < 0 || H <= 0 || Hk <= 0 || H % Hk != 0 || D <= 0 || Dv <= 0 || W <= 0 || !k_cache || !v_cache || !pos)
        return cudaErrorInvalidValue;
    return dispatch(dtype, [&](auto tag) {
        using T = decltype(tag);
        constexpr int kVec = 16 / static_cast<int>(sizeof(T));  // elements per 128-bit load
        const bool vec = D % kVec == 0 && Dv % kVec == 0 && aligned16(k_cache) && aligned16(v_cache);
        SwaRingStep<T> a{vec3<T>(q), vec3<T>(k), vec3<T>(v), B, H, Hk, D, Dv, W, scale,
                         static_cast<T*>(k_cache), static_cast<T*>(v_cache), pos, static_cast<T*>(o)};
        if (vec)
            return launch(swa_ring_step_kernel<T, kVec>, a, B * H, swa_smem_floats(D, Dv, W, kThreads, kVec), stream);
        return launch(swa_ring_step_kernel<T, 1>, a, B * H, swa_smem_floats(D, Dv, W, kThreads, 1), stream);
    });
}

cudaError_t macchiato_step(DType dtype, In3 q, In3 k, In3 v, In3 mix, In3 latent_k, int64_t B, int64_t H, int64_t D,
                           int64_t Dv, int64_t L, int64_t W, float scale, float* k_win, float* v_win,
                           const int* n_win, float* m, float* alpha, float* S, void* o, cudaStream_t stream) {
    if (B < 0 || H <= 0 || D <= 0 || Dv <= 0 || L <= 0 || W < 0 || !m || !alpha || !S || !o ||
        (W > 0 && (!k_win || !v_win || !n_win)))
        return cudaErrorInvalidValue;
    const bool vec = Dv % 4 == 0 && aligned16(S) && aligned16(v_win);
    return dispatch(dtype, [&](auto tag) {
        using T = decltype(tag);
        const Vec3<T> mx = vec3<T>(mix);
        MacchiatoStep<T> a{LatteStep<T>{Vec3<T>{mx.p + mx.sx, mx.sb, mx.sh, mx.sx}, vec3<T>(latent_k), vec3<T>(v),
                                        B, H, L, Dv, m, alpha, S, m, alpha, S, static_cast<T*>(o)},
                           vec3<T>(q), vec3<T>(k), mx, D, W, scale, k_win, v_win, n_win};
        if (vec)
            return launch(macchiato_step_kernel<T, 4>, a, B * H, macchiato_smem_floats(L, D, Dv, W, kThreads, 4),
                          stream);
        return launch(macchiato_step_kernel<T, 1>, a, B * H, macchiato_smem_floats(L, D, Dv, W, kThreads, 1), stream);
    });
}

}  // namespace decode
}  // namespace flashts
