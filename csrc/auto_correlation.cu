// flashts — auto-correlation (Autoformer, SPEC §3): CUDA kernels. The FFTs, top-K and the softmax over the K
// selected delays are torch (cuFFT, [B, K] tensors) in flashts/cuda_ops/auto_correlation.py; these kernels do
// the rest without materialising any rolled copy of v or of do.
//
// Forward
//   spectrum_mean_kernel   cross[b, f] = (1/HE) Σ_{h,e} Q̂[b,f,h,e] · conj(K̂[b,f,h,e])  (then r = irfft(cross))
//                          one block per (b, f), a fixed-order block reduction over the H·E channels.
//   aggregate_kernel       o[b, t, h, d] = Σ_i w[b,i] · v[b, (t + τ_i) mod L, h, d]
//                          one block per output row (b, t); the K source rows (t + τ_i) mod L and weights are
//                          staged in shared memory in chunks of AGG_KCHUNK delays; each thread owns up to
//                          AGG_VEC (h, d) columns of the row and accumulates over the delays in float, so every
//                          v row is read once per delay (from L2/L1) and o is written once.
// Backward
//   aggregate_kernel       dv[b, s] = Σ_i w[b,i] · do[b, (s − τ_i) mod L]   (the same kernel, sign = −1; rows
//                          s ≥ L of dv — the steps cut off by the alignment — are written as 0)
//   delay_dots_*_kernel    dw[b, i] = Σ_{t,h,d} do[b,t,h,d] · v[b,(t+τ_i) mod L,h,d]: one block per
//                          (b, i, chunk of time rows) writes a partial sum, a second kernel adds the partials of
//                          each (b, i) in a fixed order — deterministic, no atomics.
//   spectrum_grad_kernel   dQ̂ = K̂ · ĝ, dK̂ = Q̂ · conj(ĝ) with ĝ[b, f] = rfft(dr)[b, f] / (H·E), elementwise
//                          (dq, dk = irfft of these in torch).
// All index arithmetic is int64; every access is bounds-checked; accumulation is float32.
#include "auto_correlation.h"
#include "common.cuh"

namespace flashts {
namespace autocorr {
namespace {

constexpr int SPEC_THREADS = 128;    // spectrum_mean: threads per (b, f)
constexpr int AGG_MAX_THREADS = 128; // aggregate: threads per output row (fewer when H·D is small)
constexpr int AGG_VEC = 4;           // aggregate: (h, d) columns per thread per pass over the delays
constexpr int AGG_KCHUNK = 256;      // aggregate: delays staged in shared memory at a time
constexpr int DOT_THREADS = 128;     // delay_dots partials: threads per (b, i, chunk)
constexpr int64_t DOT_CHUNK_ELEMS = 16384;  // delay_dots: target elements (rows · H · D) per chunk
constexpr int64_t MAX_GRID = 2147483647;    // gridDim.x limit

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

// r ∈ [0, L) with r ≡ t + sign·tau (mod L), for any int64 tau.
__device__ __forceinline__ int64_t shifted_row(int64_t t, int64_t tau, int sign, int64_t L) {
    int64_t s = (t + sign * (tau % L)) % L;  // t + sign·(tau mod L) ∈ (−L, 2L)
    return s < 0 ? s + L : s;
}

// ------------------------------------------------------------------------------------------- spectrum mean

__global__ void spectrum_mean_kernel(const float2* __restrict__ qf, const float2* __restrict__ kf,
                                     float2* __restrict__ cross, int64_t BF, int64_t C) {
    __shared__ float scratch[32];
    const int64_t row = blockIdx.x;  // b·F + f
    if (row >= BF) return;            // uniform over the block
    const float2* qr = qf + row * C;
    const float2* kr = kf + row * C;
    float re = 0.f, im = 0.f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        const float2 a = qr[c], b = kr[c];
        re += a.x * b.x + a.y * b.y;  // a · conj(b)
        im += a.y * b.x - a.x * b.y;
    }
    re = block_sum(re, scratch);
    im = block_sum(im, scratch);
    if (threadIdx.x == 0) cross[row] = make_float2(re / static_cast<float>(C), im / static_cast<float>(C));
}

// ------------------------------------------------------------------------------------------- aggregation

template <typename T>
__global__ void aggregate_kernel(const T* __restrict__ x, int64_t sx_b, int64_t sx_t, int64_t sx_h, int64_t sx_d,
                                 int64_t T_in, int64_t H, int64_t D, const int64_t* __restrict__ delays,
                                 const float* __restrict__ weights, int64_t K, int sign, int64_t L,
                                 T* __restrict__ out, int64_t T_out, int64_t n_rows) {
    __shared__ int64_t src_row[AGG_KCHUNK];
    __shared__ float src_w[AGG_KCHUNK];
    const int64_t row = blockIdx.x;  // b·T_out + t
    if (row >= n_rows) return;        // uniform over the block
    const int64_t b = row / T_out, t = row % T_out;
    const int64_t HD = H * D;
    T* orow = out + row * HD;
    if (t >= L) {  // only in dv when S > L: steps dropped by the alignment get no gradient
        for (int64_t hd = threadIdx.x; hd < HD; hd += blockDim.x) orow[hd] = from_float<T>(0.f);
        return;
    }
    const T* xb = x + b * sx_b;
    const int64_t* db = delays + b * K;
    const float* wb = weights + b * K;
    const int64_t cols_per_pass = static_cast<int64_t>(blockDim.x) * AGG_VEC;
    for (int64_t hd0 = 0; hd0 < HD; hd0 += cols_per_pass) {
        float acc[AGG_VEC];
        int64_t off[AGG_VEC];
        bool ok[AGG_VEC];
#pragma unroll
        for (int j = 0; j < AGG_VEC; ++j) {
            const int64_t hd = hd0 + j * static_cast<int64_t>(blockDim.x) + threadIdx.x;
            ok[j] = hd < HD;
            off[j] = ok[j] ? (hd / D) * sx_h + (hd % D) * sx_d : 0;
            acc[j] = 0.f;
        }
        for (int64_t k0 = 0; k0 < K; k0 += AGG_KCHUNK) {
            const int n = static_cast<int>(K - k0 < AGG_KCHUNK ? K - k0 : AGG_KCHUNK);
            __syncthreads();  // the previous chunk is no longer read
            for (int i = threadIdx.x; i < n; i += blockDim.x) {
                src_row[i] = shifted_row(t, db[k0 + i], sign, L);
                src_w[i] = wb[k0 + i];
            }
            __syncthreads();
            for (int i = 0; i < n; ++i) {
                const int64_t s = src_row[i];
                if (s >= T_in) continue;  // zero padding of the alignment (L > S)
                const float w = src_w[i];
                const T* xs = xb + s * sx_t;
#pragma unroll
                for (int j = 0; j < AGG_VEC; ++j)
                    if (ok[j]) acc[j] += w * to_float(xs[off[j]]);
            }
        }
#pragma unroll
        for (int j = 0; j < AGG_VEC; ++j)
            if (ok[j]) orow[hd0 + j * static_cast<int64_t>(blockDim.x) + threadIdx.x] = from_float<T>(acc[j]);
    }
}

// ------------------------------------------------------------------------------------------- delay dots

struct DotChunks {
    int64_t n_chunks, rows_per_chunk;
};

DotChunks dot_chunks(int64_t B, int64_t K, int64_t L, int64_t H, int64_t D) {
    const int64_t HD = H * D;
    int64_t n = cdiv64(L * HD, DOT_CHUNK_ELEMS);
    if (n < 1) n = 1;
    if (n > L) n = L;
    const int64_t max_n = MAX_GRID / (B * K > 0 ? B * K : 1);
    if (n > max_n) n = max_n > 0 ? max_n : 1;
    const int64_t rows = cdiv64(L, n);
    return {cdiv64(L, rows), rows};
}

template <typename T>
__global__ void delay_dots_partial_kernel(const T* __restrict__ g, int64_t sg_b, int64_t sg_t, int64_t sg_h,
                                          int64_t sg_d, const T* __restrict__ x, int64_t sx_b, int64_t sx_t,
                                          int64_t sx_h, int64_t sx_d, int64_t T_x, int64_t L, int64_t H, int64_t D,
                                          const int64_t* __restrict__ delays, int64_t K, int64_t n_chunks,
                                          int64_t rows_per_chunk, int64_t n_blocks, float* __restrict__ partials) {
    __shared__ float scratch[32];
    const int64_t blk = blockIdx.x;  // (b·K + i)·n_chunks + chunk
    if (blk >= n_blocks) return;      // uniform over the block
    const int64_t chunk = blk % n_chunks, bi = blk / n_chunks, b = bi / K;
    const int64_t tau = shifted_row(0, delays[bi], 1, L);
    const int64_t t_begin = chunk * rows_per_chunk;
    const int64_t t_end = t_begin + rows_per_chunk < L ? t_begin + rows_per_chunk : L;
    const int64_t HD = H * D;
    const T* gb = g + b * sg_b;
    const T* xb = x + b * sx_b;
    float acc = 0.f;
    for (int64_t t = t_begin; t < t_end; ++t) {
        int64_t s = t + tau;
        if (s >= L) s -= L;
        if (s >= T_x) continue;  // zero padding of the alignment
        for (int64_t hd = threadIdx.x; hd < HD; hd += blockDim.x) {
            const int64_t h = hd / D, d = hd % D;
            acc += to_float(gb[t * sg_t + h * sg_h + d * sg_d]) * to_float(xb[s * sx_t + h * sx_h + d * sx_d]);
        }
    }
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) partials[blk] = acc;
}

// One warp per (b, i): dw[b, i] = Σ_chunk partials[(b·K + i)·n_chunks + chunk], in a fixed order.
__global__ void delay_dots_final_kernel(const float* __restrict__ partials, int64_t n_chunks, int64_t BK,
                                        float* __restrict__ dw) {
    const int64_t bi = blockIdx.x;
    if (bi >= BK) return;
    float acc = 0.f;
    for (int64_t c = threadIdx.x; c < n_chunks; c += 32) acc += partials[bi * n_chunks + c];
    acc = warp_sum(acc);
    if (threadIdx.x == 0) dw[bi] = acc;
}

// ------------------------------------------------------------------------------------------- spectrum grad

__global__ void spectrum_grad_kernel(const float2* __restrict__ qf, const float2* __restrict__ kf,
                                     const float2* __restrict__ drf, float scale, float2* __restrict__ dqf,
                                     float2* __restrict__ dkf, int64_t n, int64_t C) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += stride) {
        const float2 gr = drf[idx / C];
        const float2 g = make_float2(gr.x * scale, gr.y * scale);
        const float2 kv = kf[idx], qv = qf[idx];
        dqf[idx] = make_float2(kv.x * g.x - kv.y * g.y, kv.x * g.y + kv.y * g.x);  // K̂ · ĝ
        dkf[idx] = make_float2(qv.x * g.x + qv.y * g.y, qv.y * g.x - qv.x * g.y);  // Q̂ · conj(ĝ)
    }
}

int grid_for(int64_t n, int threads) {
    int64_t blocks = cdiv64(n, threads);
    if (blocks > (int64_t{1} << 20)) blocks = int64_t{1} << 20;  // grid-stride loops cover the rest
    return static_cast<int>(blocks < 1 ? 1 : blocks);
}

}  // namespace

// ------------------------------------------------------------------------------------------- launchers

cudaError_t spectrum_mean(const float2* qf, const float2* kf, float2* cross, int64_t B, int64_t F, int64_t C,
                          cudaStream_t stream) {
    const int64_t BF = B * F;
    if (BF == 0) return cudaSuccess;
    if (C <= 0 || BF > MAX_GRID) return cudaErrorInvalidValue;
    FLASHTS_LAUNCH(spectrum_mean_kernel, static_cast<unsigned>(BF), SPEC_THREADS, 0, stream, qf, kf, cross, BF, C);
    return FLASHTS_LAUNCH_CHECK();
}

cudaError_t aggregate(DType dtype, const void* x, int64_t sx_b, int64_t sx_t, int64_t sx_h, int64_t sx_d,
                      int64_t B, int64_t T_in, int64_t H, int64_t D, const int64_t* delays, const float* weights,
                      int64_t K, int sign, int64_t L, void* out, int64_t T_out, cudaStream_t stream) {
    const int64_t n_rows = B * T_out;
    if (n_rows == 0 || H * D == 0) return cudaSuccess;
    if (L <= 0 || K <= 0 || n_rows > MAX_GRID || (sign != 1 && sign != -1)) return cudaErrorInvalidValue;
    int64_t threads = cdiv64(H * D, 32) * 32;
    if (threads > AGG_MAX_THREADS) threads = AGG_MAX_THREADS;
    return dispatch(dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        FLASHTS_LAUNCH(aggregate_kernel<T>, static_cast<unsigned>(n_rows), static_cast<unsigned>(threads), 0, stream,
                       static_cast<const T*>(x), sx_b, sx_t, sx_h, sx_d, T_in, H, D, delays, weights, K, sign, L,
                       static_cast<T*>(out), T_out, n_rows);
        return FLASHTS_LAUNCH_CHECK();
    });
}

int64_t partials_size(int64_t B, int64_t K, int64_t L, int64_t H, int64_t D) {
    if (B * K == 0 || L <= 0) return 1;
    return B * K * dot_chunks(B, K, L, H, D).n_chunks;
}

cudaError_t delay_dots(DType dtype, const void* g, int64_t sg_b, int64_t sg_t, int64_t sg_h, int64_t sg_d,
                       const void* x, int64_t sx_b, int64_t sx_t, int64_t sx_h, int64_t sx_d, int64_t T_x,
                       int64_t B, int64_t L, int64_t H, int64_t D, const int64_t* delays, int64_t K, float* partials,
                       float* dw, cudaStream_t stream) {
    const int64_t BK = B * K;
    if (BK == 0) return cudaSuccess;
    if (L <= 0 || H * D <= 0 || BK > MAX_GRID) return cudaErrorInvalidValue;
    const DotChunks ch = dot_chunks(B, K, L, H, D);
    const int64_t n_blocks = BK * ch.n_chunks;
    if (n_blocks > MAX_GRID) return cudaErrorInvalidValue;
    cudaError_t err = dispatch(dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        FLASHTS_LAUNCH(delay_dots_partial_kernel<T>, static_cast<unsigned>(n_blocks), DOT_THREADS, 0, stream,
                       static_cast<const T*>(g), sg_b, sg_t, sg_h, sg_d, static_cast<const T*>(x), sx_b, sx_t, sx_h,
                       sx_d, T_x, L, H, D, delays, K, ch.n_chunks, ch.rows_per_chunk, n_blocks, partials);
        return FLASHTS_LAUNCH_CHECK();
    });
    if (err != cudaSuccess) return err;
    FLASHTS_LAUNCH(delay_dots_final_kernel, static_cast<unsigned>(BK), 32, 0, stream, partials, ch.n_chunks, BK, dw);
    return FLASHTS_LAUNCH_CHECK();
}

cudaError_t spectrum_grad(const float2* qf, const float2* kf, const float2* drf, float scale, float2* dqf,
                          float2* dkf, int64_t B, int64_t F, int64_t C, cudaStream_t stream) {
    const int64_t n = B * F * C;
    if (n == 0) return cudaSuccess;
    constexpr int threads = 256;
    FLASHTS_LAUNCH(spectrum_grad_kernel, grid_for(n, threads), threads, 0, stream, qf, kf, drf, scale, dqf, dkf, n, C);
    return FLASHTS_LAUNCH_CHECK();
}

}  // namespace autocorr
}  // namespace flashts
