// flashts — auto-correlation (Autoformer, SPEC §3): CUDA kernels. The FFTs (cuFFT), top-K and the softmax over the
// K selected delays are torch in flashts/cuda_ops/auto_correlation.py, which mirrors the Triton path
// (kernels/auto_correlation.py) step by step: the spectra are formed one block of channels at a time and consumed
// at once, and no rolled copy of v or of do is ever made.
//
// Forward (C = H·E channels, F = L//2 + 1 frequencies, a channel block of Cb channels at a time)
//   cross_spectrum_kernel  cross[b, f] (+)= (1/C) Σ_{c in block} Q̂[b,f,c] · conj(K̂[b,f,c])   (then r = irfft(cross))
//                          products and channel reduction fused: the spectra are read once. One warp per (b, f)
//                          row, lanes over channels with 16-byte loads (two complex numbers) when the channel
//                          stride is 1; fixed-order butterfly (deterministic). Block: 8 warps = 8 rows.
//   aggregate_kernel       o[b, t, n] = Σ_i w[b,i] · v[b, (t + τ_i) mod L, n],  n = (h, d) flattened
//                          a block owns a (32 time rows × 16·VEC channels) tile of o and loops over the K delays
//                          inside (shifts and weights staged in shared memory), float32 accumulators in registers
//                          (4 rows × VEC per thread), o written once. VEC = 16 / sizeof(T) (16-byte loads and
//                          stores: LDG.E.128 / STG.E.128) when (h, d) flatten to one contiguous channel axis and the
//                          rows are 16-byte aligned; VEC = 1 (strided gather) otherwise.
// Backward
//   aggregate_kernel       dv[b, s] = Σ_i w[b,i] · do[b, (s − τ_i) mod L]   (the same kernel, sign = −1; rows
//                          s ≥ L of dv — the steps cut off by the alignment — are written as 0)
//   delay_dots_partial_kernel  partials[b, i, j] = Σ_{t in time tile j, n} do[b,t,n] · v[b,(t+τ_i) mod L,n]:
//                          a block owns (time tile j of 32 rows, a chunk of ≤ 8 delays, b); every do vector is
//                          loaded once and dotted with the shifted v vectors of all the delays of the chunk
//                          (≤ 8 float32 accumulators per thread), 16-byte loads as above. The delays are cut into
//                          just enough chunks for ≈ 4 blocks per SM (the Triton rule).
//   delay_dots_final_kernel    dw[b, i] = Σ_j partials[b, i, j] in a fixed order (deterministic, no atomics).
//   delay_grad_kernel      (instead of the final kernel, for the backward) one block per b: dw as above (+ the
//                          cotangent of the returned weights), the softmax backward dz = w ⊙ (dw − Σ_j w_j dw_j) and
//                          the scatter dr[b, τ_i] = dz[b, i] into a zero row — the torch glue of the Triton path
//                          (≈ 7 small launches) in one kernel.
//   spectrum_grad_kernel   IN PLACE: K̂ ← K̂ · ĝ (spectrum of dq), Q̂ ← Q̂ · conj(ĝ) (spectrum of dk),
//                          ĝ[b, f] = rfft(dr)[b, f] / C; warp per (b, f) row as the cross-spectrum kernel.
// All offsets are int64; every access is bounds-checked; accumulation is float32.
#include "auto_correlation.h"
#include "common.cuh"

#include <cstring>
#include <type_traits>

namespace flashts {
namespace autocorr {
namespace {

constexpr int THREADS = 128;                               // aggregate, delay dots: threads per block
constexpr int COL_THREADS = 16;                            // threads along the channels of a row
constexpr int ROW_THREADS = THREADS / COL_THREADS;         // 8 thread rows
constexpr int TILE_ROWS = 32;                              // time rows per block
constexpr int ROWS_PER_THREAD = TILE_ROWS / ROW_THREADS;   // 4 rows per thread (rows ty, ty + 8, ...)
constexpr int AGG_STAGE = 64;                              // aggregate: delays staged in shared memory at a time
constexpr int DOT_KMAX = 8;                                // delay dots: most delays per block (accumulators)
constexpr int SPEC_WARPS = 8;                              // spectrum kernels: rows (b, f) per block
constexpr int FINAL_WARPS = 4;                             // delay_dots_final: (b, i) per block
constexpr int64_t MAX_GRID = 2147483647;                   // gridDim.x limit
constexpr int64_t MAX_GRID_Y = 65535;

template <typename T>
struct TypeTag {
    using type = T;
};

// Calls fn(TypeTag<T>{}) for the element type named by dtype.
template <typename Fn>
cudaError_t dispatch(DType dtype, Fn&& fn) {
    switch (dtype) {
        case DType::F32: return fn(TypeTag<float>{});
        case DType::F16: return fn(TypeTag<__half>{});
        case DType::BF16: return fn(TypeTag<__nv_bfloat16>{});
    }
    return cudaErrorInvalidValue;
}

// τ mod L in [0, L) for any int64 τ.
__device__ __forceinline__ int64_t delay_mod(int64_t tau, int64_t L) {
    const int64_t r = tau % L;
    return r < 0 ? r + L : r;
}

// Two 16-bit values packed in a 32-bit word (low half first) as floats.
__device__ __forceinline__ float2 unpack2(uint32_t u, __nv_bfloat16) {
    return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
}
__device__ __forceinline__ float2 unpack2(uint32_t u, __half) {
    __half2 h;
    memcpy(&h, &u, 4);
    return __half22float2(h);
}

// VEC consecutive elements as float: one 16-byte load when VEC = 16 / sizeof(T), a scalar load when VEC = 1.
template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* p, float (&v)[VEC]) {
    if constexpr (VEC == 1) {
        v[0] = to_float(*p);
    } else if constexpr (std::is_same<T, float>::value) {
        static_assert(VEC == 4, "a vector is 16 bytes");
        const float4 f = *reinterpret_cast<const float4*>(p);
        v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
    } else {
        static_assert(VEC == 8, "a vector is 16 bytes");
        const uint4 raw = *reinterpret_cast<const uint4*>(p);
        const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const float2 f = unpack2(w[j], T{});
            v[2 * j] = f.x, v[2 * j + 1] = f.y;
        }
    }
}

// One 16-byte global store (STG.E.128). Written as PTX: nvcc split the plain uint4 / float4 assignment of the
// aggregation into four 32-bit stores.
__device__ __forceinline__ void store16(void* p, const uint32_t (&w)[4]) {
#if defined(__CUDA_ARCH__)
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3])
                 : "memory");
#else
    *static_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
#endif
}

template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* p, const float (&v)[VEC]) {
    if constexpr (VEC == 1) {
        *p = from_float<T>(v[0]);
    } else {
        uint32_t w[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            if constexpr (std::is_same<T, float>::value)
                w[j] = __float_as_uint(v[j]);
            else
                w[j] = pack2(from_float<T>(v[2 * j]), from_float<T>(v[2 * j + 1]));
        }
        store16(p, w);
    }
}

// Offset of flattened channel n = h·D + d. On the vector path (h, d) flatten to one unit-stride axis: offset n.
template <int VEC>
__device__ __forceinline__ int64_t channel_offset(int64_t n, int64_t D, int64_t s_h, int64_t s_d) {
    if constexpr (VEC > 1) return n;
    return (n / D) * s_h + (n % D) * s_d;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Whether [B, T, H, D] rows with these strides can be read as 16-byte vectors of `vec` elements along the
// flattened (h, d) axis.
bool rows_vectorizable(const void* p, int64_t s_b, int64_t s_t, int64_t s_h, int64_t s_d, int64_t B, int64_t T,
                       int64_t H, int64_t D, int vec) {
    return aligned16(p) && (D == 1 || s_d == 1) && (H == 1 || s_h == D) && (H * D) % vec == 0 &&
           (T == 1 || s_t % vec == 0) && (B == 1 || s_b % vec == 0);
}

// ------------------------------------------------------------------------------------------- spectra

// cross[b, f] (+)= inv_c · Σ_c qf[b, f, c] · conj(kf[b, f, c]); one warp per row (b, f).
template <bool VEC2>
__global__ void __launch_bounds__(SPEC_WARPS * 32)
    cross_spectrum_kernel(Spectrum qf, Spectrum kf, float2* __restrict__ cross, int64_t F, int64_t C, int64_t BF,
                          float inv_c, bool accumulate) {
    const int64_t row = static_cast<int64_t>(blockIdx.x) * SPEC_WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= BF) return;  // uniform over the warp
    const int64_t b = row / F, f = row % F;
    const float2* q = qf.p + b * qf.sb + f * qf.sf;
    const float2* k = kf.p + b * kf.sb + f * kf.sf;
    float re = 0.f, im = 0.f;
    if constexpr (VEC2) {  // unit channel stride, C even, 16-byte aligned rows: two complex numbers per load
        for (int64_t c = 2 * lane; c < C; c += 64) {
            const float4 a = *reinterpret_cast<const float4*>(q + c);
            const float4 g = *reinterpret_cast<const float4*>(k + c);
            re += a.x * g.x + a.y * g.y + a.z * g.z + a.w * g.w;  // a · conj(g)
            im += a.y * g.x - a.x * g.y + a.w * g.z - a.z * g.w;
        }
    } else {
        for (int64_t c = lane; c < C; c += 32) {
            const float2 a = q[c * qf.sc], g = k[c * kf.sc];
            re += a.x * g.x + a.y * g.y;
            im += a.y * g.x - a.x * g.y;
        }
    }
    re = warp_sum(re) * inv_c;
    im = warp_sum(im) * inv_c;
    if (lane == 0) {
        if (accumulate) {
            const float2 prev = cross[row];
            re = prev.x + re;
            im = prev.y + im;
        }
        cross[row] = make_float2(re, im);
    }
}

// In place: kf ← kf · g, qf ← qf · conj(g), g = scale · drf[b, f]; one warp per row (b, f).
template <bool VEC2>
__global__ void __launch_bounds__(SPEC_WARPS * 32)
    spectrum_grad_kernel(Spectrum qf, Spectrum kf, const float2* __restrict__ drf, float scale, int64_t F, int64_t C,
                         int64_t BF) {
    const int64_t row = static_cast<int64_t>(blockIdx.x) * SPEC_WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (row >= BF) return;
    const int64_t b = row / F, f = row % F;
    float2* q = qf.p + b * qf.sb + f * qf.sf;
    float2* k = kf.p + b * kf.sb + f * kf.sf;
    const float2 d = drf[row];
    const float gr = d.x * scale, gi = d.y * scale;
    if constexpr (VEC2) {
        for (int64_t c = 2 * lane; c < C; c += 64) {
            float4* kp = reinterpret_cast<float4*>(k + c);
            float4* qp = reinterpret_cast<float4*>(q + c);
            const float4 a = *kp, e = *qp;
            *kp = make_float4(a.x * gr - a.y * gi, a.x * gi + a.y * gr, a.z * gr - a.w * gi, a.z * gi + a.w * gr);
            *qp = make_float4(e.x * gr + e.y * gi, e.y * gr - e.x * gi, e.z * gr + e.w * gi, e.w * gr - e.z * gi);
        }
    } else {
        for (int64_t c = lane; c < C; c += 32) {
            float2* kp = k + c * kf.sc;
            float2* qp = q + c * qf.sc;
            const float2 a = *kp, e = *qp;
            *kp = make_float2(a.x * gr - a.y * gi, a.x * gi + a.y * gr);  // K̂ · ĝ
            *qp = make_float2(e.x * gr + e.y * gi, e.y * gr - e.x * gi);  // Q̂ · conj(ĝ)
        }
    }
}

// ------------------------------------------------------------------------------------------- aggregation

template <typename T>
struct AggArgs {
    const T* x;
    int64_t sx_b, sx_t, sx_h, sx_d, T_in, H, D;
    const int64_t* delays;
    const float* weights;
    int64_t K, L, T_out, n_tiles;
    int sign;
    T* out;
};

// out[b, t, n] = Σ_i w[b,i] · x[b, (t + sign·τ_i) mod L, n]; block = (time tile, b) × channel tile.
template <typename T, int VEC>
__global__ void __launch_bounds__(THREADS, 4) aggregate_kernel(AggArgs<T> a) {
    __shared__ int64_t shift_s[AGG_STAGE];
    __shared__ float w_s[AGG_STAGE];
    const int64_t tile = blockIdx.x % a.n_tiles, b = blockIdx.x / a.n_tiles;
    const int tx = threadIdx.x % COL_THREADS, ty = threadIdx.x / COL_THREADS;
    const int64_t N = a.H * a.D;
    const int64_t n = (static_cast<int64_t>(blockIdx.y) * COL_THREADS + tx) * VEC;
    const bool col_ok = n < N;  // VEC divides N on the vector path: a vector is all in or all out
    const T* xb = a.x + b * a.sx_b + (col_ok ? channel_offset<VEC>(n, a.D, a.sx_h, a.sx_d) : 0);
    const int64_t t_first = tile * TILE_ROWS + ty;
    const int64_t t_live = a.T_out < a.L ? a.T_out : a.L;  // rows ≥ L (dv when S > L) stay 0
    const int64_t* db = a.delays + b * a.K;
    const float* wb = a.weights + b * a.K;
    float acc[ROWS_PER_THREAD][VEC];
#pragma unroll
    for (int r = 0; r < ROWS_PER_THREAD; ++r)
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc[r][j] = 0.f;
    for (int64_t k0 = 0; k0 < a.K; k0 += AGG_STAGE) {
        const int n_k = static_cast<int>(a.K - k0 < AGG_STAGE ? a.K - k0 : AGG_STAGE);
        __syncthreads();  // the previous stage is no longer read
        for (int i = threadIdx.x; i < n_k; i += THREADS) {
            const int64_t tau = delay_mod(db[k0 + i], a.L);
            shift_s[i] = (a.sign > 0 || tau == 0) ? tau : a.L - tau;  // (t + shift) mod L
            w_s[i] = wb[k0 + i];
        }
        __syncthreads();
        if (!col_ok) continue;
        for (int i = 0; i < n_k; ++i) {
            const int64_t shift = shift_s[i];
            const float w = w_s[i];
#pragma unroll
            for (int r = 0; r < ROWS_PER_THREAD; ++r) {
                const int64_t t = t_first + r * ROW_THREADS;
                int64_t s = t + shift;
                if (s >= a.L) s -= a.L;
                if (t < t_live && s < a.T_in) {  // rows ≥ T_in: the zero padding of the alignment
                    float xv[VEC];
                    load_vec<T, VEC>(xb + s * a.sx_t, xv);
#pragma unroll
                    for (int j = 0; j < VEC; ++j) acc[r][j] = fmaf(w, xv[j], acc[r][j]);
                }
            }
        }
    }
    if (!col_ok) return;
    T* ob = a.out + b * a.T_out * N + n;
#pragma unroll
    for (int r = 0; r < ROWS_PER_THREAD; ++r) {
        const int64_t t = t_first + r * ROW_THREADS;
        if (t < a.T_out) store_vec<T, VEC>(ob + t * N, acc[r]);
    }
}

// ------------------------------------------------------------------------------------------- delay dots

template <typename T>
struct DotArgs {
    const T* g;
    int64_t sg_b, sg_t, sg_h, sg_d;
    const T* x;
    int64_t sx_b, sx_t, sx_h, sx_d, T_x, L, H, D;
    const int64_t* delays;
    int64_t K, n_tiles, k_chunks, k_per_block;
    float* partials;
};

// partials[(b·K + i)·n_tiles + j] = Σ_{t in tile j, n} g[b, t, n] · x[b, (t + τ_i) mod L, n] for the delays i of
// one chunk. Block id = (b·n_tiles + j)·k_chunks + chunk: the blocks of one time tile run side by side (the g
// tile and the shifted x rows are shared in L2).
template <typename T, int VEC>
__global__ void __launch_bounds__(THREADS, 4) delay_dots_partial_kernel(DotArgs<T> a) {
    __shared__ int64_t shift_s[DOT_KMAX];
    __shared__ float red_s[THREADS / 32][DOT_KMAX];
    const int64_t chunk = blockIdx.x % a.k_chunks, bt = blockIdx.x / a.k_chunks;
    const int64_t tile = bt % a.n_tiles, b = bt / a.n_tiles;
    const int64_t i0 = chunk * a.k_per_block;
    const int n_k = static_cast<int>(a.K - i0 < a.k_per_block ? a.K - i0 : a.k_per_block);
    if (static_cast<int>(threadIdx.x) < n_k) shift_s[threadIdx.x] = delay_mod(a.delays[b * a.K + i0 + threadIdx.x], a.L);
    __syncthreads();
    const int tx = threadIdx.x % COL_THREADS, ty = threadIdx.x / COL_THREADS;
    const int64_t N = a.H * a.D;
    const T* gb = a.g + b * a.sg_b;
    const T* xb = a.x + b * a.sx_b;
    float acc[DOT_KMAX];
#pragma unroll
    for (int i = 0; i < DOT_KMAX; ++i) acc[i] = 0.f;
#pragma unroll 1
    for (int r = 0; r < ROWS_PER_THREAD; ++r) {
        const int64_t t = tile * TILE_ROWS + ty + r * ROW_THREADS;
        if (t >= a.L) break;
        const T* g_row = gb + t * a.sg_t;
        for (int64_t n = static_cast<int64_t>(tx) * VEC; n < N; n += COL_THREADS * VEC) {
            float gv[VEC];
            load_vec<T, VEC>(g_row + channel_offset<VEC>(n, a.D, a.sg_h, a.sg_d), gv);
            const int64_t x_off = channel_offset<VEC>(n, a.D, a.sx_h, a.sx_d);
#pragma unroll
            for (int i = 0; i < DOT_KMAX; ++i) {
                if (i < n_k) {
                    int64_t s = t + shift_s[i];
                    if (s >= a.L) s -= a.L;
                    if (s < a.T_x) {  // rows ≥ T_x: the zero padding of the alignment
                        float xv[VEC];
                        load_vec<T, VEC>(xb + s * a.sx_t + x_off, xv);
#pragma unroll
                        for (int j = 0; j < VEC; ++j) acc[i] = fmaf(gv[j], xv[j], acc[i]);
                    }
                }
            }
        }
    }
    // per delay: butterfly within each warp, then the 4 warps in a fixed order
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int i = 0; i < DOT_KMAX; ++i) {
        const float s = warp_sum(acc[i]);
        if (lane == 0) red_s[warp][i] = s;
    }
    __syncthreads();
    if (static_cast<int>(threadIdx.x) < n_k) {
        float s = 0.f;
#pragma unroll
        for (int w = 0; w < THREADS / 32; ++w) s += red_s[w][threadIdx.x];
        a.partials[(b * a.K + i0 + threadIdx.x) * a.n_tiles + tile] = s;
    }
}

// One warp per (b, i): dw[b, i] = Σ_j partials[(b·K + i)·n_tiles + j], in a fixed order.
__global__ void __launch_bounds__(FINAL_WARPS * 32)
    delay_dots_final_kernel(const float* __restrict__ partials, int64_t n_tiles, int64_t BK, float* __restrict__ dw) {
    const int64_t bi = static_cast<int64_t>(blockIdx.x) * FINAL_WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (bi >= BK) return;  // uniform over the warp
    float acc = 0.f;
    for (int64_t j = lane; j < n_tiles; j += 32) acc += partials[bi * n_tiles + j];
    acc = warp_sum(acc);
    if (lane == 0) dw[bi] = acc;
}

// One block per b: dw[b, i] = Σ_j partials[(b·K + i)·n_tiles + j] (+ dweights[b, i]), then
//   dr[b, t] = w[b, i] · (dw[b, i] − Σ_j w[b, j] dw[b, j])  at t = τ_i mod L,  0 at every other t < L.
// The delays of a row are distinct (top-K indices), so the scatter has no collisions. Fixed-order sums.
__global__ void __launch_bounds__(FINAL_WARPS * 32)
    delay_grad_kernel(const float* __restrict__ partials, int64_t n_tiles, const int64_t* __restrict__ delays,
                      const float* __restrict__ weights, const float* __restrict__ dweights, int64_t K, int64_t L,
                      float* __restrict__ dw, float* __restrict__ dr) {
    __shared__ float scratch[32];
    const int64_t b = blockIdx.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int64_t i = warp; i < K; i += FINAL_WARPS) {  // a warp per delay
        const float* p = partials + (b * K + i) * n_tiles;
        float acc = 0.f;
        for (int64_t j = lane; j < n_tiles; j += 32) acc += p[j];
        acc = warp_sum(acc);
        if (lane == 0) dw[b * K + i] = acc + (dweights != nullptr ? dweights[b * K + i] : 0.f);
    }
    float* dr_b = dr + b * L;
    for (int64_t t = threadIdx.x; t < L; t += blockDim.x) dr_b[t] = 0.f;
    __syncthreads();  // dw of the block written and visible; the zero row written before the scatter
    float wdw = 0.f;
    for (int64_t i = threadIdx.x; i < K; i += blockDim.x) wdw += weights[b * K + i] * dw[b * K + i];
    const float total = block_sum(wdw, scratch);
    for (int64_t i = threadIdx.x; i < K; i += blockDim.x)
        dr_b[delay_mod(delays[b * K + i], L)] = weights[b * K + i] * (dw[b * K + i] - total);
}

struct DotPlan {
    int64_t n_tiles, k_chunks, k_per_block;
};

// Time tiles of TILE_ROWS rows; the K delays cut into just enough chunks (of ≤ DOT_KMAX) for ≈ 4 blocks per SM.
DotPlan dot_plan(int64_t B, int64_t K, int64_t L, int sms) {
    DotPlan p;
    p.n_tiles = cdiv64(L, TILE_ROWS);
    const int64_t target = 4 * static_cast<int64_t>(sms > 0 ? sms : 1);
    const int64_t base = B * p.n_tiles;
    int64_t chunks = cdiv64(target, base > 0 ? base : 1);
    if (chunks < 1) chunks = 1;
    if (chunks > K) chunks = K;
    p.k_per_block = cdiv64(K, chunks);
    if (p.k_per_block > DOT_KMAX) p.k_per_block = DOT_KMAX;
    p.k_chunks = cdiv64(K, p.k_per_block);
    return p;
}

int device_sms() {
    int dev = 0, sms = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0)
        return 132;
    return sms;
}

}  // namespace

// ------------------------------------------------------------------------------------------- launchers

namespace {
bool spectrum_vec2(const Spectrum& s, int64_t B, int64_t F, int64_t C) {
    return aligned16(s.p) && s.sc == 1 && C % 2 == 0 && (F == 1 || s.sf % 2 == 0) && (B == 1 || s.sb % 2 == 0);
}
}  // namespace

cudaError_t cross_spectrum(Spectrum qf, Spectrum kf, float2* cross, int64_t B, int64_t F, int64_t C, float inv_c,
                           bool accumulate, cudaStream_t stream) {
    const int64_t BF = B * F;
    if (BF == 0) return cudaSuccess;
    if (C <= 0 || cdiv64(BF, SPEC_WARPS) > MAX_GRID) return cudaErrorInvalidValue;
    const unsigned grid = static_cast<unsigned>(cdiv64(BF, SPEC_WARPS));
    if (spectrum_vec2(qf, B, F, C) && spectrum_vec2(kf, B, F, C))
        FLASHTS_LAUNCH(cross_spectrum_kernel<true>, grid, SPEC_WARPS * 32, 0, stream, qf, kf, cross, F, C, BF, inv_c,
                       accumulate);
    else
        FLASHTS_LAUNCH(cross_spectrum_kernel<false>, grid, SPEC_WARPS * 32, 0, stream, qf, kf, cross, F, C, BF, inv_c,
                       accumulate);
    return FLASHTS_LAUNCH_CHECK();
}

cudaError_t spectrum_grad(Spectrum qf, Spectrum kf, const float2* drf, float scale, int64_t B, int64_t F, int64_t C,
                          cudaStream_t stream) {
    const int64_t BF = B * F;
    if (BF == 0 || C == 0) return cudaSuccess;
    if (C < 0 || cdiv64(BF, SPEC_WARPS) > MAX_GRID) return cudaErrorInvalidValue;
    const unsigned grid = static_cast<unsigned>(cdiv64(BF, SPEC_WARPS));
    if (spectrum_vec2(qf, B, F, C) && spectrum_vec2(kf, B, F, C))
        FLASHTS_LAUNCH(spectrum_grad_kernel<true>, grid, SPEC_WARPS * 32, 0, stream, qf, kf, drf, scale, F, C, BF);
    else
        FLASHTS_LAUNCH(spectrum_grad_kernel<false>, grid, SPEC_WARPS * 32, 0, stream, qf, kf, drf, scale, F, C, BF);
    return FLASHTS_LAUNCH_CHECK();
}

cudaError_t aggregate(DType dtype, const void* x, int64_t sx_b, int64_t sx_t, int64_t sx_h, int64_t sx_d,
                      int64_t B, int64_t T_in, int64_t H, int64_t D, const int64_t* delays, const float* weights,
                      int64_t K, int sign, int64_t L, void* out, int64_t T_out, cudaStream_t stream) {
    const int64_t N = H * D;
    if (B * T_out == 0 || N == 0) return cudaSuccess;
    if (L <= 0 || K <= 0 || (sign != 1 && sign != -1)) return cudaErrorInvalidValue;
    const int64_t n_tiles = cdiv64(T_out, TILE_ROWS);
    if (B * n_tiles > MAX_GRID) return cudaErrorInvalidValue;
    return dispatch(dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        constexpr int V = 16 / static_cast<int>(sizeof(T));
        AggArgs<T> a{static_cast<const T*>(x), sx_b, sx_t, sx_h, sx_d, T_in, H, D, delays, weights, K, L, T_out,
                     n_tiles, sign, static_cast<T*>(out)};
        const bool vec = rows_vectorizable(x, sx_b, sx_t, sx_h, sx_d, B, T_in, H, D, V) && aligned16(out) && N % V == 0;
        const int64_t col_tiles = cdiv64(N, int64_t{COL_THREADS} * (vec ? V : 1));
        if (col_tiles > MAX_GRID_Y) return cudaErrorInvalidValue;
        const dim3 grid(static_cast<unsigned>(B * n_tiles), static_cast<unsigned>(col_tiles));
        if (vec)
            FLASHTS_LAUNCH((aggregate_kernel<T, V>), grid, THREADS, 0, stream, a);
        else
            FLASHTS_LAUNCH((aggregate_kernel<T, 1>), grid, THREADS, 0, stream, a);
        return FLASHTS_LAUNCH_CHECK();
    });
}

int64_t partials_size(int64_t B, int64_t K, int64_t L) {
    if (B * K == 0 || L <= 0) return 1;
    return B * K * cdiv64(L, TILE_ROWS);
}

namespace {
// The partial-sum kernel of delay_dots / delay_grad; returns the plan it used.
cudaError_t delay_partials(DType dtype, const void* g, int64_t sg_b, int64_t sg_t, int64_t sg_h, int64_t sg_d,
                           const void* x, int64_t sx_b, int64_t sx_t, int64_t sx_h, int64_t sx_d, int64_t T_x,
                           int64_t B, int64_t L, int64_t H, int64_t D, const int64_t* delays, int64_t K,
                           float* partials, int sms, cudaStream_t stream, DotPlan& plan) {
    if (L <= 0 || H * D <= 0) return cudaErrorInvalidValue;
    plan = dot_plan(B, K, L, sms > 0 ? sms : device_sms());
    const int64_t n_blocks = B * plan.n_tiles * plan.k_chunks;
    if (n_blocks > MAX_GRID || cdiv64(B * K, FINAL_WARPS) > MAX_GRID) return cudaErrorInvalidValue;
    return dispatch(dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        constexpr int V = 16 / static_cast<int>(sizeof(T));
        DotArgs<T> a{static_cast<const T*>(g), sg_b, sg_t, sg_h, sg_d, static_cast<const T*>(x), sx_b, sx_t, sx_h,
                     sx_d, T_x, L, H, D, delays, K, plan.n_tiles, plan.k_chunks, plan.k_per_block, partials};
        const bool vec = rows_vectorizable(g, sg_b, sg_t, sg_h, sg_d, B, L, H, D, V) &&
                         rows_vectorizable(x, sx_b, sx_t, sx_h, sx_d, B, T_x, H, D, V);
        if (vec)
            FLASHTS_LAUNCH((delay_dots_partial_kernel<T, V>), static_cast<unsigned>(n_blocks), THREADS, 0, stream, a);
        else
            FLASHTS_LAUNCH((delay_dots_partial_kernel<T, 1>), static_cast<unsigned>(n_blocks), THREADS, 0, stream, a);
        return FLASHTS_LAUNCH_CHECK();
    });
}
}  // namespace

cudaError_t delay_dots(DType dtype, const void* g, int64_t sg_b, int64_t sg_t, int64_t sg_h, int64_t sg_d,
                       const void* x, int64_t sx_b, int64_t sx_t, int64_t sx_h, int64_t sx_d, int64_t T_x,
                       int64_t B, int64_t L, int64_t H, int64_t D, const int64_t* delays, int64_t K, float* partials,
                       float* dw, int sms, cudaStream_t stream) {
    const int64_t BK = B * K;
    if (BK == 0) return cudaSuccess;
    DotPlan plan;
    const cudaError_t err = delay_partials(dtype, g, sg_b, sg_t, sg_h, sg_d, x, sx_b, sx_t, sx_h, sx_d, T_x, B, L, H,
                                           D, delays, K, partials, sms, stream, plan);
    if (err != cudaSuccess) return err;
    FLASHTS_LAUNCH(delay_dots_final_kernel, static_cast<unsigned>(cdiv64(BK, FINAL_WARPS)), FINAL_WARPS * 32, 0,
                   stream, partials, plan.n_tiles, BK, dw);
    return FLASHTS_LAUNCH_CHECK();
}

cudaError_t delay_grad(DType dtype, const void* g, int64_t sg_b, int64_t sg_t, int64_t sg_h, int64_t sg_d,
                       const void* x, int64_t sx_b, int64_t sx_t, int64_t sx_h, int64_t sx_d, int64_t T_x,
                       int64_t B, int64_t L, int64_t H, int64_t D, const int64_t* delays, const float* weights,
                       const float* dweights, int64_t K, float* partials, float* dw, float* dr, int sms,
                       cudaStream_t stream) {
    if (B == 0 || L == 0) return cudaSuccess;
    if (K <= 0 || B > MAX_GRID) return cudaErrorInvalidValue;
    DotPlan plan;
    const cudaError_t err = delay_partials(dtype, g, sg_b, sg_t, sg_h, sg_d, x, sx_b, sx_t, sx_h, sx_d, T_x, B, L, H,
                                           D, delays, K, partials, sms, stream, plan);
    if (err != cudaSuccess) return err;
    FLASHTS_LAUNCH(delay_grad_kernel, static_cast<unsigned>(B), FINAL_WARPS * 32, 0, stream, partials, plan.n_tiles,
                   delays, weights, dweights, K, L, dw, dr);
    return FLASHTS_LAUNCH_CHECK();
}

}  // namespace autocorr
}  // namespace flashts
