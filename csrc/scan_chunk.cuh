// flashts — the chunk math of the chunk-parallel prefix scans of Aaren (SPEC §4) and Latte (SPEC §5), written
// once for the forward and the backward kernels of csrc/prefix_scan.cu (the algorithm of kernels/prefix_scan.py,
// SCAN_MODE "chunked").
//
// Math. Per row (sequence, head): logits a [T, L], mixing weights p [T, L], values v [T, Dv], state per latent l
// (m, α, S) = (running max, Σ e^{a−m}, Σ e^{a−m} v). Aaren: L = 1, a_t = scale·(q·k_t), p = 1. Latte: a = k,
// p = softmax_l(q_t). Time is cut into chunks of kChunk = 16 steps. For one chunk (rows s, t < len; ragged rows
// and padded latents are masked BEFORE any exp: a = −∞, p = 0, v = 0):
//   summary   c_max_l = max_s a_{s,l},  E_c = e^{a − c_max} ≤ 1,  (c_max, Σ_s E_c, E_cᵀ v)        (chunk_summary)
//   combine   (m, α, S) ⊕ (m', α', S') = (M, α e^{m−M} + α' e^{m'−M}, S e^{m−M} + S' e^{m'−M}), M = max(m, m')
//   outputs from the state (m_in, α_in, S_in) entering the chunk, r = max(m_in, c_max) (the max leaving it):
//     fast path (the running max rises by ≤ kRiseLimit inside the chunk for every latent):
//       E = e^{a − r},  f_in = e^{m_in − r},  den_t = α_in f_in + Σ_{s≤t} E_s  (in units of e^r),  F = p / den
//       y = tril(F Eᵀ) v + (F ⊙ f_in) S_in                                  (three tile products)
//     exact fallback (a larger rise, e.g. logits ±1e4): the chunk walked step by step with a per-step max,
//       M_t = max(M_{t−1}, a_t), Ff_t = e^{M_{t−1}−M_t}, Ef_t = e^{a_t−M_t}, den_t = den_{t−1} Ff_t + Ef_t,
//       S_t = S_{t−1} Ff_t + Ef_t v_t, y_t = Σ_l (p_t/den_t) S_t: every exponent ≤ 0 whatever the logits.
//   With F ≤ e^kRiseLimit·p and den ≥ e^−kRiseLimit·den_true, the fast path's products have positive factors
//   only (relative rounding); the fallback is taken per block (uniform), never per thread.
// exp_diff(x, m) = e^{x−m} for m ≥ x is 0 for x = −∞ (also when m = −∞): never NaN.
//
// Chunk slots (packed sequences, cu_seqlens): batch row b has NS slots of kChunk steps. Without cu_seqlens slot
// c is steps [cC, cC + C) of sequence n = b and NS = ⌈T/C⌉. Packed (B = 1): sequence n owns the slots from
// base_n = ⌊cu[n]/C⌋ + n on (base_{n+1} − base_n ≥ ⌈len_n/C⌉: disjoint), NS = ⌊T/C⌋ + N; the owner of a slot is
// the largest n with base_n ≤ slot (binary search); slots past a sequence's last chunk are idle (len ≤ 0).
//
// Tiles (float32 shared memory, row-major, leading dims padded by kPad = 4 floats against bank conflicts):
//   A, P, E, F [C][ldL] (ldL = Lp + 4, Lp = L rounded up to 16; Aaren: Lp = 16, its latent padded like Latte's),
//   V, Y [C][ldV] (ldV = BV + 4; BV = the Dv tile, a multiple of 16), S [Lp][ldV], Pm [C][ldC] (ldC = C + 4),
//   Aaren: K [C][ldK] (ldK = Dkp + 4, Dkp = D rounded up to 16) and q [Dkp]; per-latent vectors [Lp].
// Products: common.cuh block_gemm on these float tiles — kGemmMma (mma.sync m16n8k8 TF32, tensor cores) for
// float16 / bfloat16 inputs (as Triton's "tf32" for 16-bit inputs), kGemmFma for float32 inputs (exact float32).
// All shapes are multiples of 16 (M) and 8 (N, K). Every function documented "block-wide" must be called by
// every thread of the (1-D) block; those with "(barriers)" contain __syncthreads().
#pragma once

#include "common.cuh"
#include "prefix_scan.h"

namespace flashts {
namespace scan {
namespace chunk {

constexpr int kChunk = 16;           // time steps per chunk (the M of every [C, *] tile product)
constexpr float kRiseLimit = 40.f;   // largest rise of the running max inside a chunk for the fast path
constexpr int kPad = ld_pad<float>();
constexpr int kThreads = 128;        // threads of the chunk kernels (4 warps)

// e^{x − m} for m ≥ x; 0 when x == −∞ (also when m == −∞). Never NaN.
__device__ __forceinline__ float exp_diff(float x, float m) { return exp_shift(x, m); }

// The combine (A earlier, B later) of N value columns: (m, u, w[N]) ← (m, u, w) ⊕ (mb, ub, wb).
template <int N>
__device__ __forceinline__ void combine(float& m, float& u, float* w, float mb, float ub, const float* wb) {
    const SoftmaxMerge f = softmax_merge(m, mb);
    m = f.m;
    u = u * f.fa + ub * f.fb;
#pragma unroll
    for (int j = 0; j < N; ++j) w[j] = w[j] * f.fa + wb[j] * f.fb;
}

// ------------------------------------------------------------------------------------------- inputs

// A strided input [B, T, H, X] (element strides). vec: every row is 16-byte aligned with a unit x stride and
// X a multiple of 16/sizeof(T) (then rows are read with 16-byte loads, LDG.E.128). Aaren's q [B, H, D]: the
// t stride is unused (0), the b stride 0 when q is shared [H, D].
template <typename T>
struct View {
    const T* p;
    int64_t sb, st, sh, sx;
    int vec;
    __device__ __forceinline__ float get(int64_t b, int64_t t, int64_t h, int64_t x) const {
        return to_float(p[b * sb + t * st + h * sh + x * sx]);
    }
};

template <typename T>
inline View<T> make_view(const ScanTensor& x, int64_t X) {
    constexpr int64_t kVE = 16 / static_cast<int64_t>(sizeof(T));
    const bool vec = x.data != nullptr && x.stride_x == 1 && X % kVE == 0 &&
                     reinterpret_cast<uintptr_t>(x.data) % 16 == 0 && x.stride_b % kVE == 0 &&
                     x.stride_t % kVE == 0 && x.stride_h % kVE == 0;
    return View<T>{static_cast<const T*>(x.data), x.stride_b, x.stride_t, x.stride_h, x.stride_x, vec ? 1 : 0};
}

// Block-wide: dst[r][c] = src[b, t0 + r, h, x0 + c] for r < len, c < X (X: valid columns from x0 on), 0 elsewhere
// in [rows][cols]. With src.vec each thread moves 16 bytes per step (cols and x0 multiples of 16/sizeof(T)).
template <typename T>
__device__ __forceinline__ void load_tile(float* dst, int ld, int rows, int cols, const View<T>& src, int64_t b,
                                          int64_t t0, int64_t h, int64_t x0, int len, int64_t X) {
    if (src.vec) {
        constexpr int kVE = 16 / static_cast<int>(sizeof(T));
        const int groups = cols / kVE;
        for (int idx = threadIdx.x; idx < rows * groups; idx += blockDim.x) {
            const int r = idx / groups, c0 = (idx - r * groups) * kVE;
            float vals[kVE];
            if (r < len && c0 < X) {  // X is a multiple of kVE: the group is inside the row
                const uint4 raw =
                    *reinterpret_cast<const uint4*>(src.p + b * src.sb + (t0 + r) * src.st + h * src.sh + x0 + c0);
                const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
                for (int j = 0; j < kVE; ++j) vals[j] = to_float(e[j]);
            } else {
#pragma unroll
                for (int j = 0; j < kVE; ++j) vals[j] = 0.f;
            }
#pragma unroll
            for (int j = 0; j < kVE; ++j) dst[r * ld + c0 + j] = vals[j];
        }
        return;
    }
    for (int idx = threadIdx.x; idx < rows * cols; idx += blockDim.x) {
        const int r = idx / cols, c = idx - (idx / cols) * cols;
        dst[r * ld + c] = (r < len && c < X) ? src.get(b, t0 + r, h, x0 + c) : 0.f;
    }
}

// Block-wide: dst[r · row_stride + c] = value(r, c) for r < rows, c < cols (an output tile of a contiguous
// [B, T, H, X] tensor: row_stride = H·X elements). 16-byte stores (STG.E.128, 16/sizeof(T) elements per thread and
// step) when dst and the row stride are 16-byte aligned and cols is a multiple of 16/sizeof(T); else element by
// element. value(r, c) -> float (read from shared memory; called once per element).
template <typename T, typename F>
__device__ __forceinline__ void store_rows(T* dst, int64_t row_stride, int rows, int cols, F value) {
    constexpr int kVE = 16 / static_cast<int>(sizeof(T));
    const bool vec = cols % kVE == 0 && reinterpret_cast<uintptr_t>(dst) % 16 == 0 &&
                     (row_stride * static_cast<int64_t>(sizeof(T))) % 16 == 0;
    if (vec) {
        const int groups = cols / kVE;
        for (int idx = threadIdx.x; idx < rows * groups; idx += blockDim.x) {
            const int r = idx / groups, c0 = (idx - r * groups) * kVE;
            uint4 pk;
            T* e = reinterpret_cast<T*>(&pk);
#pragma unroll
            for (int j = 0; j < kVE; ++j) e[j] = from_float<T>(value(r, c0 + j));
#if defined(__CUDA_ARCH__)
            __stwb(reinterpret_cast<uint4*>(dst + r * row_stride + c0), pk);  // (a plain copy may be split in 4)
#else
            *reinterpret_cast<uint4*>(dst + r * row_stride + c0) = pk;
#endif
        }
        return;
    }
    for (int idx = threadIdx.x; idx < rows * cols; idx += blockDim.x) {
        const int r = idx / cols, c = idx - r * cols;
        dst[r * row_stride + c] = from_float<T>(value(r, c));
    }
}

// ------------------------------------------------------------------------------------------- sequences, slots

__host__ __device__ __forceinline__ int64_t num_slots(int64_t T, int64_t N, bool packed) {
    return packed ? T / kChunk + N : cdiv64(T, kChunk);
}

// Sequence n: batch row b, steps [bos, eos) of it, first chunk slot base.
struct Seq {
    int64_t b, bos, eos, base;
};

__device__ __forceinline__ Seq sequence(const int32_t* cu, int64_t n, int64_t T) {
    Seq s;
    if (cu != nullptr) {
        s.b = 0;
        s.bos = cu[n];
        s.eos = cu[n + 1];
        s.base = s.bos / kChunk + n;
    } else {
        s.b = n;
        s.bos = 0;
        s.eos = T;
        s.base = 0;
    }
    return s;
}

// Chunk slot `slot` of batch row b: its sequence n (with bos/eos/base), first step t0 and steps len (≤ 0: idle).
struct Slot {
    Seq seq;
    int64_t n, t0, index;  // index: the chunk's number within its sequence
    int len;
};

__device__ __forceinline__ Slot slot_of(const int32_t* cu, int64_t N, int64_t T, int64_t b, int64_t slot) {
    Slot s;
    int64_t n = b;
    if (cu != nullptr) {
        int64_t lo = 0, hi = N;  // largest n with ⌊cu[n]/C⌋ + n ≤ slot (base_0 = 0 ≤ slot)
        while (hi - lo > 1) {
            const int64_t mid = (lo + hi) / 2;
            if (cu[mid] / kChunk + mid <= slot) lo = mid; else hi = mid;
        }
        n = lo;
    }
    s.n = n;
    s.seq = sequence(cu, n, T);
    s.index = slot - s.seq.base;
    s.t0 = s.seq.bos + s.index * kChunk;
    const int64_t rest = s.seq.eos - s.t0;
    s.len = s.index < 0 || rest <= 0 ? 0 : static_cast<int>(rest < kChunk ? rest : kChunk);
    return s;
}

// ------------------------------------------------------------------------------------------- tile geometry

// Latents padded to Lp (multiple of 16), Dv tile BV (multiple of 16), Aaren's head dim padded to Dkp.
struct Geom {
    int L, Lp, BV, Dkp;
    __host__ __device__ int ldL() const { return Lp + kPad; }
    __host__ __device__ int ldV() const { return BV + kPad; }
    __host__ __device__ int ldK() const { return Dkp + kPad; }
    __host__ __device__ static constexpr int ldC() { return kChunk + kPad; }
};

__host__ __device__ inline Geom make_geom(bool aaren, int64_t L, int64_t D, int BV) {
    Geom g;
    g.L = aaren ? 1 : static_cast<int>(L);
    g.Lp = aaren ? 16 : round_up(static_cast<int>(L), 16);
    g.BV = BV;
    g.Dkp = aaren ? round_up(static_cast<int>(D), 16) : 0;
    return g;
}

// Shared-memory tiles of the chunk kernels (nullptr where a kernel does not use one); `bytes` is the total.
// out = false: the summary kernel (A, E, V, S as the Eᵀv tile, K/q for Aaren, cmax/csum);
// out = true: the output kernel (everything; S = the entering state, m/u its scalars).
// one_pass (with out): also W [Lp][ldV], the chunk's Eᵀv while S holds the running state.
struct Tiles {
    float *A, *P, *E, *F, *V, *Y, *S, *Pm, *K, *q, *m, *u, *r, *f, *cmax, *csum, *W;
    int64_t bytes;
};

__host__ __device__ inline Tiles carve(const Geom& g, bool out, unsigned char* base, bool one_pass = false) {
    SmemCarver sc(base);
    Tiles t{};
    const int C = kChunk;
    t.A = sc.take<float>(int64_t(C) * g.ldL());
    t.E = sc.take<float>(int64_t(C) * g.ldL());
    t.V = sc.take<float>(int64_t(C) * g.ldV());
    t.S = sc.take<float>(int64_t(g.Lp) * g.ldV());
    if (g.Dkp > 0) {
        t.K = sc.take<float>(int64_t(C) * g.ldK());
        t.q = sc.take<float>(g.Dkp);
    }
    t.cmax = sc.take<float>(g.Lp);
    t.csum = sc.take<float>(g.Lp);
    if (out) {
        t.P = sc.take<float>(int64_t(C) * g.ldL());
        t.F = sc.take<float>(int64_t(C) * g.ldL());
        t.Y = sc.take<float>(int64_t(C) * g.ldV());
        t.Pm = sc.take<float>(int64_t(C) * Geom::ldC());
        t.m = sc.take<float>(g.Lp);
        t.u = sc.take<float>(g.Lp);
        t.r = sc.take<float>(g.Lp);
        t.f = sc.take<float>(g.Lp);
        if (one_pass) t.W = sc.take<float>(int64_t(g.Lp) * g.ldV());
    }
    t.bytes = sc.offset;
    return t;
}

// ------------------------------------------------------------------------------------------- chunk inputs

// Block-wide (barriers): the logit tile A [C][Lp] (−∞ at rows ≥ len and latents ≥ L), if P != nullptr the
// mixing-weight tile P (0 there), and the value tile V [C][BV] (columns [e0, e0 + BV) of v, 0 past Dv or len)
// of the chunk at steps [t0, t0 + len) of batch row b, head h. Aaren: a = scale·(q·k_t) from the k tile (K, q
// scratch tiles), p = 1; Latte: a = k, p = softmax_l(q_t). Ends with __syncthreads() (the tiles are readable).
// mix_only (Latte): only P (A and V are neither loaded nor written).
template <bool kAaren, typename T>
__device__ void load_chunk(const Tiles& s, const Geom& g, const View<T>& q, const View<T>& k, const View<T>& v,
                           int64_t b, int64_t h, int64_t t0, int len, int64_t D, int64_t Dv, int e0, float scale,
                           float* P, bool mix_only = false) {
    const int C = kChunk, ldL = g.ldL(), Lp = g.Lp, L = g.L;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    if (!mix_only) load_tile(s.V, g.ldV(), C, g.BV, v, b, t0, h, e0, len, Dv - e0);
    if (kAaren) {
        load_tile(s.K, g.ldK(), C, g.Dkp, k, b, t0, h, 0, len, D);
        for (int j = threadIdx.x; j < g.Dkp; j += blockDim.x) s.q[j] = j < D ? q.get(b, 0, h, j) : 0.f;
    } else {
        if (!mix_only) load_tile(s.A, ldL, C, Lp, k, b, t0, h, 0, len, L);
        if (P != nullptr) load_tile(P, ldL, C, Lp, q, b, t0, h, 0, len, L);
    }
    __syncthreads();
    for (int t = warp; t < C; t += n_warps) {  // one warp per row (uniform within the warp)
        if (kAaren) {
            float acc = 0.f;
            for (int j = lane; j < g.Dkp; j += 32) acc = fmaf(s.K[t * g.ldK() + j], s.q[j], acc);
            acc = warp_sum(acc);
            for (int l = lane; l < Lp; l += 32) {
                const bool valid = t < len && l == 0;
                s.A[t * ldL + l] = valid ? scale * acc : -CUDART_INF_F;
                if (P != nullptr) P[t * ldL + l] = valid ? 1.f : 0.f;
            }
        } else {
            if (!mix_only)
                for (int l = lane; l < Lp; l += 32)
                    if (t >= len || l >= L) s.A[t * ldL + l] = -CUDART_INF_F;
            if (P != nullptr) {  // p = softmax over the valid latents (every exponent ≤ 0)
                float mx = -CUDART_INF_F;
                for (int l = lane; l < L; l += 32) mx = fmaxf(mx, P[t * ldL + l]);
                mx = warp_max(mx);
                float sum = 0.f;
                for (int l = lane; l < L; l += 32) sum += __expf(P[t * ldL + l] - mx);
                sum = warp_sum(sum);
                const float inv = 1.f / sum;
                __syncwarp();  // every lane has read its row entries before they are overwritten
                for (int l = lane; l < Lp; l += 32)
                    P[t * ldL + l] = (t < len && l < L) ? __expf(P[t * ldL + l] - mx) * inv : 0.f;
            }
        }
    }
    __syncthreads();
}

// ------------------------------------------------------------------------------------------- chunk summary

// Block-wide, no barrier: per latent l (one thread each) cmax[l] = max_s A[s][l], E[s][l] = e^{A − cmax} and
// csum[l] = Σ_s E[s][l] (masked entries add 0; an all-masked latent: cmax = −∞, E = 0, csum = 0).
__device__ __forceinline__ void summary_scalars(const Tiles& s, const Geom& g) {
    const int ldL = g.ldL();
    for (int l = threadIdx.x; l < g.Lp; l += blockDim.x) {
        float mx = -CUDART_INF_F;
        for (int t = 0; t < kChunk; ++t) mx = fmaxf(mx, s.A[t * ldL + l]);
        float sum = 0.f;
        for (int t = 0; t < kChunk; ++t) {
            const float e = exp_diff(s.A[t * ldL + l], mx);
            s.E[t * ldL + l] = e;
            sum += e;
        }
        s.cmax[l] = mx;
        s.csum[l] = sum;
    }
}

// Block-wide (barriers): the chunk summary (cmax, csum, E_cᵀ V [Lp][BV] into W, by default the S tile). Ends
// readable.
template <int kImpl>
__device__ __forceinline__ void chunk_summary(const Tiles& s, const Geom& g, float* W = nullptr) {
    summary_scalars(s, g);
    __syncthreads();
    mmau::block_gemm<kImpl, mmau::kCol, mmau::kRow>(W ? W : s.S, g.ldV(), s.E, g.ldL(), s.V, g.ldV(), g.Lp, g.BV,
                                                     kChunk, false);
    __syncthreads();
}

// Block-wide (barriers): the running state (m, u [Lp], S [Lp][BV]) ← (m, u, S) ⊕ (cmax, csum, W) — the combine
// with a chunk summary (one-pass kernels). Uses r / f as the per-latent factors. Ends readable.
__device__ __forceinline__ void combine_summary(const Tiles& s, const Geom& g) {
    for (int l = threadIdx.x; l < g.Lp; l += blockDim.x) {
        const SoftmaxMerge f = softmax_merge(s.m[l], s.cmax[l]);
        s.m[l] = f.m;
        s.u[l] = s.u[l] * f.fa + s.csum[l] * f.fb;
        s.r[l] = f.fa;
        s.f[l] = f.fb;
    }
    __syncthreads();
    const int ldV = g.ldV();
    for (int idx = threadIdx.x; idx < g.Lp * g.BV; idx += blockDim.x) {
        const int l = idx / g.BV, d = idx - (idx / g.BV) * g.BV;
        s.S[l * ldV + d] = s.S[l * ldV + d] * s.r[l] + s.W[l * ldV + d] * s.f[l];
    }
    __syncthreads();
}

// ------------------------------------------------------------------------------------------- chunk outputs

// Block-wide (barriers): the fast path's factors of a chunk entered with the state (m, u [Lp], S) in the tiles:
// r = max(m, cmax), f = e^{m − r}, E = e^{A − r}, F = P / den with den_t = u f + Σ_{s≤t} E_s (F overwrites
// nothing else). Returns whether the fast path may be used (the running max rises by ≤ kRiseLimit inside the
// chunk for every valid latent) — the same value in every thread.
__device__ __forceinline__ bool prepare_fast(const Tiles& s, const Geom& g) {
    const int ldL = g.ldL();
    int too_steep = 0;
    for (int l = threadIdx.x; l < g.Lp; l += blockDim.x) {
        const float m_in = s.m[l];
        float mx = -CUDART_INF_F;
        for (int t = 0; t < kChunk; ++t) mx = fmaxf(mx, s.A[t * ldL + l]);
        const float r = fmaxf(m_in, mx);
        const float start = fmaxf(m_in, s.A[l]);  // the running max after the chunk's first step
        if (l < g.L && r != -CUDART_INF_F && r - start > kRiseLimit) too_steep = 1;
        const float f = exp_diff(m_in, r);
        float den = s.u[l] * f;
        for (int t = 0; t < kChunk; ++t) {
            const float e = exp_diff(s.A[t * ldL + l], r);
            den += e;
            s.E[t * ldL + l] = e;
            s.F[t * ldL + l] = s.P[t * ldL + l] / (den > 0.f ? den : 1.f);
        }
        s.r[l] = r;
        s.f[l] = f;
    }
    return __syncthreads_or(too_steep) == 0;
}

// Block-wide (barriers): the exact fallback's per-step factors (one thread per latent, sequential in t):
// E[t][l] = e^{a_t − M_t}, F[t][l] = e^{M_{t−1} − M_t}, P[t][l] ← p_t / den_t (P is overwritten). Ends readable.
__device__ __forceinline__ void prepare_exact(const Tiles& s, const Geom& g) {
    const int ldL = g.ldL();
    for (int l = threadIdx.x; l < g.Lp; l += blockDim.x) {
        float m = s.m[l], u = s.u[l];
        for (int t = 0; t < kChunk; ++t) {
            const float a = s.A[t * ldL + l], M = fmaxf(m, a);
            const float ff = exp_diff(m, M), e = exp_diff(a, M);
            u = u * ff + e;
            m = M;
            s.E[t * ldL + l] = e;
            s.F[t * ldL + l] = ff;
            s.P[t * ldL + l] = s.P[t * ldL + l] / (u > 0.f ? u : 1.f);
        }
    }
    __syncthreads();
}

// Block-wide (barriers): Y [C][BV] = the outputs of the chunk from the tiles A, P, V and the entering state
// (m, u, S) — the fast path (tile products) or the exact step-by-step fallback. Ends with Y readable.
template <int kImpl>
__device__ void chunk_output(const Tiles& s, const Geom& g) {
    const int C = kChunk, ldL = g.ldL(), ldV = g.ldV(), ldC = Geom::ldC();
    if (prepare_fast(s, g)) {
        mmau::block_gemm<kImpl, mmau::kRow, mmau::kCol>(s.Pm, ldC, s.F, ldL, s.E, ldL, C, C, g.Lp, false);  // F Eᵀ
        __syncthreads();
        for (int idx = threadIdx.x; idx < C * C; idx += blockDim.x) {  // tril (s ≤ t)
            const int t = idx / C, c = idx - (idx / C) * C;
            if (c > t) s.Pm[t * ldC + c] = 0.f;
        }
        for (int idx = threadIdx.x; idx < C * g.Lp; idx += blockDim.x) {  // F ⊙ f_in
            const int t = idx / g.Lp, l = idx - (idx / g.Lp) * g.Lp;
            s.F[t * ldL + l] *= s.f[l];
        }
        __syncthreads();
        mmau::block_gemm<kImpl, mmau::kRow, mmau::kRow>(s.Y, ldV, s.Pm, ldC, s.V, ldV, C, g.BV, C, false);
        __syncthreads();
        mmau::block_gemm<kImpl, mmau::kRow, mmau::kRow>(s.Y, ldV, s.F, ldL, s.S, ldV, C, g.BV, g.Lp, true);
        __syncthreads();
        return;
    }
    prepare_exact(s, g);
    for (int d = threadIdx.x; d < g.BV; d += blockDim.x) {  // one thread per value column, latents in order
        for (int t = 0; t < C; ++t) s.Y[t * ldV + d] = 0.f;
        for (int l = 0; l < g.L; ++l) {
            float w = s.S[l * ldV + d];
            for (int t = 0; t < C; ++t) {
                w = w * s.F[t * ldL + l] + s.E[t * ldL + l] * s.V[t * ldV + d];
                s.Y[t * ldV + d] += s.P[t * ldL + l] * w;
            }
        }
    }
    __syncthreads();
}

}  // namespace chunk
}  // namespace scan
}  // namespace flashts
