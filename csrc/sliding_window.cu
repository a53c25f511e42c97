// flashts — sliding-window attention (SPEC §2), CUDA kernels in the style of FlashAttention-2.
//
// Math. For query i and key j of one sequence, s_ij = scale·q_i·k_j, allowed iff (left < 0 or j ≥ i − left)
// and (right < 0 or j ≤ i + right); query head h reads kv head h / (H / Hk) (GQA). Then
//   lse_i = log Σ_{j allowed} exp(s_ij),   P_ij = exp(s_ij − lse_i),   o_i = Σ_j P_ij v_j.
// Every query sees at least itself, so no row is empty.
//
// Tiles. Query and key blocks of BT rows (BT ∈ {64, 32, 16}, the largest whose tiles fit in shared memory),
// head dims padded to multiples of 16 with zeros. Q, K, V, dO tiles and the probabilities P / dS handed to a
// product are stored in the INPUT type; scores, dP and all accumulators are float32.
// Products (common.cuh, block_gemm): float16 / bfloat16 → tensor cores (wmma m16n16k16, float32
// accumulation) for QKᵀ, PV, dO Vᵀ, dS K, Pᵀ dO, dSᵀ Q; float32 → plain FMA in float32 (exact float32, no TF32).
//
// Forward (fwd_kernel, one block per (query block, query head, sequence)): only the keys
// [max(start, i0 − left), min(end, i1 − 1 + right + 1)) of the block's rows [i0, i1) are visited, BT at a time.
// Online softmax per row (one warp per row): m' = max(m, max_j s_ij) over allowed j, p_ij = exp(s_ij − m')
// (disallowed → exactly 0, never exponentiated), l = l·exp(m − m') + Σ_j p_ij, acc = acc·exp(m − m') + P V.
// While a row has seen no allowed key (m = −inf) the shift is 0 and the rescale factor 0, so exp(−inf + inf)
// never occurs. At the end o = acc / l, lse = m + log l.
//
// Backward (FlashAttention-2, recompute from lse):
//   delta_kernel:  δ_i = do_i·o_i − dlse_i                 (dlse = cotangent of lse, 0 when absent)
//   P_ij = exp(s_ij − lse_i) (allowed), dP_ij = do_i·v_j, dS_ij = P_ij (dP_ij − δ_i)
//   dq_kernel   (per query block, like the forward):  dq_i = scale Σ_j dS_ij k_j
//   dkdv_kernel (per key block and KV head, looping over the G query heads of the group and over the query
//                blocks [max(start, j0 − right), min(end, j1 − 1 + left + 1))):
//                dv_j = Σ_i P_ij do_i,   dk_j = scale Σ_i dS_ij q_i
// (∂o_i/∂s_ij = P_ij (v_j − o_i), ∂lse_i/∂s_ij = P_ij, Σ_j P_ij dP_ij = do_i·o_i.) The GQA sum over the
// group happens inside dkdv_kernel, so dk/dv are written once, in the input type; no atomics anywhere,
// results are deterministic.
//
// cu_seqlens: a block's rows and keys are clipped to its sequence [cu[n], cu[n+1]) of batch 0. Every index is
// int64; every global access is bounds-checked.
#include <type_traits>

#include "common.cuh"
#include "sliding_window.h"

namespace flashts {
namespace swa {
namespace {

using mmau::block_gemm;
using mmau::kCol;
using mmau::kRow;

constexpr int kThreads = 128;  // 4 warps
constexpr int kTiles[3] = {64, 32, 16};
constexpr int kPadF = ld_pad<float>();

enum Kind : int { kFwd = 0, kDq = 1, kDkDv = 2 };

template <typename Tin>
struct View {  // a strided input [B, T, Hx, X]
    const Tin* p;
    int64_t sb, st, sh, sx;
    __device__ __forceinline__ Tin get(int64_t b, int64_t t, int64_t h, int64_t x) const {
        return p[b * sb + t * st + h * sh + x * sx];
    }
};

template <typename Tin>
struct Params {
    View<Tin> q, k, v, dout, o;
    int64_t B, T, H, Hk, D, Dv, N;
    const int32_t* cu;
    int64_t left, right, n_blocks;  // n_blocks: query (or key) blocks per sequence in the grid (set by launch)
    float scale;
    Tin *out, *dq, *dk, *dv;
    float *lse, *delta;
    const float *lse_in, *dlse;
    int BT, Dp, Dvp;
};

// Shared-memory pieces of one kernel kind. *t: input type, row-major; *f: float32, row-major.
template <typename Tin>
struct Tiles {
    Tin *Q, *K, *V, *dO, *P, *dS;
    float *S, *dP, *acc1, *acc2, *vec1, *vec2;
    int64_t bytes;
};

template <typename Tin>
__host__ __device__ inline Tiles<Tin> carve(int kind, int BT, int Dp, int Dvp, unsigned char* base) {
    constexpr int pt = ld_pad<Tin>();
    const int ldDt = Dp + pt, ldVt = Dvp + pt, ldBt = BT + pt;
    const int ldDf = Dp + kPadF, ldVf = Dvp + kPadF, ldBf = BT + kPadF;
    SmemCarver sc(base);
    Tiles<Tin> t{};
    t.Q = sc.take<Tin>(int64_t(BT) * ldDt);
    t.K = sc.take<Tin>(int64_t(BT) * ldDt);
    t.V = sc.take<Tin>(int64_t(BT) * ldVt);
    t.dO = kind != kFwd ? sc.take<Tin>(int64_t(BT) * ldVt) : nullptr;
    t.S = sc.take<float>(int64_t(BT) * ldBf);
    t.dP = kind != kFwd ? sc.take<float>(int64_t(BT) * ldBf) : nullptr;
    t.P = kind != kDq ? sc.take<Tin>(int64_t(BT) * ldBt) : nullptr;
    t.dS = kind != kFwd ? sc.take<Tin>(int64_t(BT) * ldBt) : nullptr;
    if (kind == kFwd) {
        t.acc1 = sc.take<float>(int64_t(BT) * ldVf);  // acc = Σ p v
    } else if (kind == kDq) {
        t.acc1 = sc.take<float>(int64_t(BT) * ldDf);  // dq
    } else {
        t.acc1 = sc.take<float>(int64_t(BT) * ldDf);  // dk
        t.acc2 = sc.take<float>(int64_t(BT) * ldVf);  // dv
    }
    t.vec1 = sc.take<float>(BT);  // fwd: running max m; bwd: lse
    t.vec2 = sc.take<float>(BT);  // fwd: running sum l; bwd: δ
    t.bytes = sc.offset;
    return t;
}

struct Seq {
    int64_t b, start, end;  // rows [start, end) of batch b
};

template <typename Tin>
__device__ __forceinline__ Seq seq_of(const Params<Tin>& p, int64_t n) {
    if (p.cu != nullptr) return Seq{0, p.cu[n], p.cu[n + 1]};
    return Seq{n, 0, p.T};
}

__device__ __forceinline__ bool allowed(int64_t i, int64_t j, int64_t left, int64_t right) {
    return (left < 0 || j >= i - left) && (right < 0 || j <= i + right);
}

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// dst[r][c] = src[b, first + r, h, c] for r < rows_valid, c < X; 0 elsewhere in [rows][cols].
template <typename Tin>
__device__ __forceinline__ void load_tile(Tin* dst, int ld, int rows, int cols, const View<Tin>& src, int64_t b,
                                          int64_t first, int64_t h, int rows_valid, int64_t X) {
    for (int idx = threadIdx.x; idx < rows * cols; idx += blockDim.x) {
        const int r = idx / cols, c = idx - (idx / cols) * cols;
        dst[r * ld + c] = (r < rows_valid && c < X) ? src.get(b, first + r, h, c) : from_float<Tin>(0.f);
    }
}

__device__ __forceinline__ void zero(float* dst, int ld, int rows, int cols) {
    for (int idx = threadIdx.x; idx < rows * cols; idx += blockDim.x) {
        const int r = idx / cols, c = idx - (idx / cols) * cols;
        dst[r * ld + c] = 0.f;
    }
}

// ============================================================================================== forward

template <typename Tin>
__global__ void __launch_bounds__(kThreads) fwd_kernel(Params<Tin> p) {
    constexpr bool kTC = !std::is_same<Tin, float>::value;
    constexpr int pt = ld_pad<Tin>();
    extern __shared__ __align__(128) unsigned char smem_raw[];
    const int BT = p.BT, Dp = p.Dp, Dvp = p.Dvp;
    const int ldDt = Dp + pt, ldVt = Dvp + pt, ldBt = BT + pt, ldBf = BT + kPadF, ldVf = Dvp + kPadF;
    const Tiles<Tin> sm = carve<Tin>(kFwd, BT, Dp, Dvp, smem_raw);
    float *acc = sm.acc1, *m_run = sm.vec1, *l_run = sm.vec2;

    const int64_t blk = blockIdx.x, qb = blk % p.n_blocks, h = (blk / p.n_blocks) % p.H;
    const int64_t n = blk / p.n_blocks / p.H, hk = h / (p.H / p.Hk);
    const Seq sq = seq_of(p, n);
    const int64_t i0 = sq.start + qb * BT;
    if (i0 >= sq.end) return;  // whole block past its sequence (uniform: before any barrier)
    const int nq = static_cast<int>(min64(BT, sq.end - i0));
    const int64_t left = p.left, right = p.right;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;

    load_tile(sm.Q, ldDt, BT, Dp, p.q, sq.b, i0, h, nq, p.D);
    zero(acc, ldVf, BT, Dvp);
    for (int r = threadIdx.x; r < BT; r += blockDim.x) {
        m_run[r] = -CUDART_INF_F;
        l_run[r] = 0.f;
    }
    const int64_t lo = left < 0 ? sq.start : max64(sq.start, i0 - left);
    const int64_t hi = right < 0 ? sq.end : min64(sq.end, i0 + nq - 1 + right + 1);
    __syncthreads();
    for (int64_t j0 = lo; j0 < hi; j0 += BT) {
        const int nk = static_cast<int>(min64(BT, hi - j0));
        load_tile(sm.K, ldDt, BT, Dp, p.k, sq.b, j0, hk, nk, p.D);
        load_tile(sm.V, ldVt, BT, Dvp, p.v, sq.b, j0, hk, nk, p.Dv);
        __syncthreads();
        block_gemm<kTC, kRow, kCol>(sm.S, ldBf, sm.Q, ldDt, sm.K, ldDt, BT, BT, Dp, false);  // Q Kᵀ
        __syncthreads();
        for (int r = warp; r < BT; r += n_warps) {  // online softmax, one warp per row
            const int64_t i = i0 + r;
            float mx = -CUDART_INF_F;
            for (int c = lane; c < BT; c += 32)
                if (r < nq && c < nk && allowed(i, j0 + c, left, right)) mx = fmaxf(mx, p.scale * sm.S[r * ldBf + c]);
            mx = warp_max(mx);
            const float m_old = m_run[r];
            const float m_new = fmaxf(m_old, mx);
            const float shift = m_new == -CUDART_INF_F ? 0.f : m_new;  // no allowed key yet: exp(−inf − 0) = 0
            float sum = 0.f;
            for (int c = lane; c < BT; c += 32) {
                float pv = 0.f;
                if (r < nq && c < nk && allowed(i, j0 + c, left, right)) pv = __expf(p.scale * sm.S[r * ldBf + c] - shift);
                sm.P[r * ldBt + c] = from_float<Tin>(pv);
                sum += pv;
            }
            sum = warp_sum(sum);
            const float alpha = m_old == -CUDART_INF_F ? 0.f : __expf(m_old - shift);
            for (int e = lane; e < Dvp; e += 32) acc[r * ldVf + e] *= alpha;
            __syncwarp();
            if (lane == 0) {
                m_run[r] = m_new;
                l_run[r] = l_run[r] * alpha + sum;
            }
        }
        __syncthreads();
        block_gemm<kTC, kRow, kRow>(acc, ldVf, sm.P, ldBt, sm.V, ldVt, BT, Dvp, BT, true);  // += P V
        __syncthreads();
    }
    for (int64_t idx = threadIdx.x; idx < int64_t(nq) * p.Dv; idx += blockDim.x) {
        const int r = static_cast<int>(idx / p.Dv), e = static_cast<int>(idx - (idx / p.Dv) * p.Dv);
        p.out[((sq.b * p.T + i0 + r) * p.H + h) * p.Dv + e] = from_float<Tin>(acc[r * ldVf + e] / l_run[r]);
    }
    for (int r = threadIdx.x; r < nq; r += blockDim.x)
        p.lse[(sq.b * p.H + h) * p.T + i0 + r] = m_run[r] + __logf(l_run[r]);
}

// ============================================================================================== backward

// δ_i = do_i·o_i − dlse_i, one warp per (b, t, h).
template <typename Tin>
__global__ void __launch_bounds__(kThreads) delta_kernel(Params<Tin> p) {
    const int lane = threadIdx.x & 31;
    const int64_t warps_total = int64_t(gridDim.x) * (blockDim.x >> 5);
    const int64_t rows = p.B * p.T * p.H;
    for (int64_t row = int64_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); row < rows; row += warps_total) {
        const int64_t h = row % p.H, t = (row / p.H) % p.T, b = row / p.H / p.T;
        float dot = 0.f;
        for (int64_t e = lane; e < p.Dv; e += 32)
            dot = fmaf(to_float(p.dout.get(b, t, h, e)), to_float(p.o.get(b, t, h, e)), dot);
        dot = warp_sum(dot);
        if (lane == 0) {
            const int64_t w = (b * p.H + h) * p.T + t;
            p.delta[w] = dot - (p.dlse != nullptr ? p.dlse[w] : 0.f);
        }
    }
}

// P and dS of one (query block, key block) pair from S = Q Kᵀ and dP = dO Vᵀ (both in shared memory):
// P_rc = exp(scale·S_rc − lse_r), dS_rc = P_rc (dP_rc − δ_r) for allowed pairs, 0 otherwise.
template <typename Tin>
__device__ __forceinline__ void probs_and_dscores(const Tiles<Tin>& sm, int BT, int ldBf, int ldBt, int64_t i0,
                                                  int nq, int64_t j0, int nk, int64_t left, int64_t right,
                                                  float scale) {
    for (int idx = threadIdx.x; idx < BT * BT; idx += blockDim.x) {
        const int r = idx / BT, c = idx - (idx / BT) * BT;
        float pv = 0.f, ds = 0.f;
        if (r < nq && c < nk && allowed(i0 + r, j0 + c, left, right)) {
            pv = __expf(scale * sm.S[r * ldBf + c] - sm.vec1[r]);
            ds = pv * (sm.dP[r * ldBf + c] - sm.vec2[r]);
        }
        if (sm.P != nullptr) sm.P[r * ldBt + c] = from_float<Tin>(pv);
        sm.dS[r * ldBt + c] = from_float<Tin>(ds);
    }
}

// lse and δ of the query rows [i0, i0 + nq) of head h (0 for padded rows).
template <typename Tin>
__device__ __forceinline__ void load_row_stats(const Tiles<Tin>& sm, const Params<Tin>& p, int BT, int64_t b,
                                               int64_t h, int64_t i0, int nq) {
    for (int r = threadIdx.x; r < BT; r += blockDim.x) {
        const int64_t w = (b * p.H + h) * p.T + i0 + r;
        sm.vec1[r] = r < nq ? p.lse_in[w] : 0.f;
        sm.vec2[r] = r < nq ? p.delta[w] : 0.f;
    }
}

template <typename Tin>
__global__ void __launch_bounds__(kThreads) dq_kernel(Params<Tin> p) {
    constexpr bool kTC = !std::is_same<Tin, float>::value;
    constexpr int pt = ld_pad<Tin>();
    extern __shared__ __align__(128) unsigned char smem_raw[];
    const int BT = p.BT, Dp = p.Dp, Dvp = p.Dvp;
    const int ldDt = Dp + pt, ldVt = Dvp + pt, ldBt = BT + pt, ldBf = BT + kPadF, ldDf = Dp + kPadF;
    const Tiles<Tin> sm = carve<Tin>(kDq, BT, Dp, Dvp, smem_raw);
    float* dq_acc = sm.acc1;

    const int64_t blk = blockIdx.x, qb = blk % p.n_blocks, h = (blk / p.n_blocks) % p.H;
    const int64_t n = blk / p.n_blocks / p.H, hk = h / (p.H / p.Hk);
    const Seq sq = seq_of(p, n);
    const int64_t i0 = sq.start + qb * BT;
    if (i0 >= sq.end) return;
    const int nq = static_cast<int>(min64(BT, sq.end - i0));
    const int64_t left = p.left, right = p.right;

    load_tile(sm.Q, ldDt, BT, Dp, p.q, sq.b, i0, h, nq, p.D);
    load_tile(sm.dO, ldVt, BT, Dvp, p.dout, sq.b, i0, h, nq, p.Dv);
    load_row_stats(sm, p, BT, sq.b, h, i0, nq);
    zero(dq_acc, ldDf, BT, Dp);
    const int64_t lo = left < 0 ? sq.start : max64(sq.start, i0 - left);
    const int64_t hi = right < 0 ? sq.end : min64(sq.end, i0 + nq - 1 + right + 1);
    __syncthreads();
    for (int64_t j0 = lo; j0 < hi; j0 += BT) {
        const int nk = static_cast<int>(min64(BT, hi - j0));
        load_tile(sm.K, ldDt, BT, Dp, p.k, sq.b, j0, hk, nk, p.D);
        load_tile(sm.V, ldVt, BT, Dvp, p.v, sq.b, j0, hk, nk, p.Dv);
        __syncthreads();
        block_gemm<kTC, kRow, kCol>(sm.S, ldBf, sm.Q, ldDt, sm.K, ldDt, BT, BT, Dp, false);    // Q Kᵀ
        block_gemm<kTC, kRow, kCol>(sm.dP, ldBf, sm.dO, ldVt, sm.V, ldVt, BT, BT, Dvp, false);  // dO Vᵀ
        __syncthreads();
        probs_and_dscores(sm, BT, ldBf, ldBt, i0, nq, j0, nk, left, right, p.scale);
        __syncthreads();
        block_gemm<kTC, kRow, kRow>(dq_acc, ldDf, sm.dS, ldBt, sm.K, ldDt, BT, Dp, BT, true);  // += dS K
        __syncthreads();
    }
    for (int64_t idx = threadIdx.x; idx < int64_t(nq) * p.D; idx += blockDim.x) {
        const int r = static_cast<int>(idx / p.D), d = static_cast<int>(idx - (idx / p.D) * p.D);
        p.dq[((sq.b * p.T + i0 + r) * p.H + h) * p.D + d] = from_float<Tin>(p.scale * dq_acc[r * ldDf + d]);
    }
}

// (min 1 block per SM: without it ptxas capped the registers and spilled 16-20 bytes for 16-bit inputs at
// -O3 on sm_90; tests/test_cuda_resources.py fails on any spill.)
template <typename Tin>
__global__ void __launch_bounds__(kThreads, 1) dkdv_kernel(Params<Tin> p) {
    constexpr bool kTC = !std::is_same<Tin, float>::value;
    constexpr int pt = ld_pad<Tin>();
    extern __shared__ __align__(128) unsigned char smem_raw[];
    const int BT = p.BT, Dp = p.Dp, Dvp = p.Dvp;
    const int ldDt = Dp + pt, ldVt = Dvp + pt, ldBt = BT + pt, ldBf = BT + kPadF, ldDf = Dp + kPadF,
              ldVf = Dvp + kPadF;
    const Tiles<Tin> sm = carve<Tin>(kDkDv, BT, Dp, Dvp, smem_raw);
    float *dk_acc = sm.acc1, *dv_acc = sm.acc2;

    const int64_t blk = blockIdx.x, kb = blk % p.n_blocks, hk = (blk / p.n_blocks) % p.Hk;
    const int64_t n = blk / p.n_blocks / p.Hk, G = p.H / p.Hk;
    const Seq sq = seq_of(p, n);
    const int64_t j0 = sq.start + kb * BT;
    if (j0 >= sq.end) return;
    const int nk = static_cast<int>(min64(BT, sq.end - j0));
    const int64_t left = p.left, right = p.right;

    load_tile(sm.K, ldDt, BT, Dp, p.k, sq.b, j0, hk, nk, p.D);
    load_tile(sm.V, ldVt, BT, Dvp, p.v, sq.b, j0, hk, nk, p.Dv);
    zero(dk_acc, ldDf, BT, Dp);
    zero(dv_acc, ldVf, BT, Dvp);
    // queries that may attend one of the keys [j0, j0 + nk): i ∈ [j − right, j + left]
    const int64_t qlo = right < 0 ? sq.start : max64(sq.start, j0 - right);
    const int64_t qhi = left < 0 ? sq.end : min64(sq.end, j0 + nk - 1 + left + 1);
    __syncthreads();
    for (int64_t g = 0; g < G; ++g) {
        const int64_t h = hk * G + g;
        for (int64_t i0 = qlo; i0 < qhi; i0 += BT) {
            const int nq = static_cast<int>(min64(BT, qhi - i0));
            load_tile(sm.Q, ldDt, BT, Dp, p.q, sq.b, i0, h, nq, p.D);
            load_tile(sm.dO, ldVt, BT, Dvp, p.dout, sq.b, i0, h, nq, p.Dv);
            load_row_stats(sm, p, BT, sq.b, h, i0, nq);
            __syncthreads();
            block_gemm<kTC, kRow, kCol>(sm.S, ldBf, sm.Q, ldDt, sm.K, ldDt, BT, BT, Dp, false);    // Q Kᵀ
            block_gemm<kTC, kRow, kCol>(sm.dP, ldBf, sm.dO, ldVt, sm.V, ldVt, BT, BT, Dvp, false);  // dO Vᵀ
            __syncthreads();
            probs_and_dscores(sm, BT, ldBf, ldBt, i0, nq, j0, nk, left, right, p.scale);
            __syncthreads();
            block_gemm<kTC, kCol, kRow>(dv_acc, ldVf, sm.P, ldBt, sm.dO, ldVt, BT, Dvp, BT, true);  // += Pᵀ dO
            block_gemm<kTC, kCol, kRow>(dk_acc, ldDf, sm.dS, ldBt, sm.Q, ldDt, BT, Dp, BT, true);   // += dSᵀ Q
            __syncthreads();
        }
    }
    for (int64_t idx = threadIdx.x; idx < int64_t(nk) * p.D; idx += blockDim.x) {
        const int r = static_cast<int>(idx / p.D), d = static_cast<int>(idx - (idx / p.D) * p.D);
        p.dk[((sq.b * p.T + j0 + r) * p.Hk + hk) * p.D + d] = from_float<Tin>(p.scale * dk_acc[r * ldDf + d]);
    }
    for (int64_t idx = threadIdx.x; idx < int64_t(nk) * p.Dv; idx += blockDim.x) {
        const int r = static_cast<int>(idx / p.Dv), e = static_cast<int>(idx - (idx / p.Dv) * p.Dv);
        p.dv[((sq.b * p.T + j0 + r) * p.Hk + hk) * p.Dv + e] = from_float<Tin>(dv_acc[r * ldVf + e]);
    }
}

// ============================================================================================== launchers

template <typename Tin>
View<Tin> view(const SwaInput& x) {
    return View<Tin>{static_cast<const Tin*>(x.data), x.stride_b, x.stride_t, x.stride_h, x.stride_x};
}

template <typename Tin>
Params<Tin> make_params(const SwaSizes& sz, int64_t left, int64_t right, float scale) {
    Params<Tin> p{};
    p.B = sz.B;
    p.T = sz.T;
    p.H = sz.H;
    p.Hk = sz.Hk;
    p.D = sz.D;
    p.Dv = sz.Dv;
    p.N = sz.N;
    p.cu = sz.cu_seqlens;
    // a side longer than any sequence is the same as unbounded; clamping keeps i ± left far from overflow
    p.left = left < 0 ? -1 : (left > sz.T ? sz.T : left);
    p.right = right < 0 ? -1 : (right > sz.T ? sz.T : right);
    p.scale = scale;
    p.Dp = round_up(static_cast<int>(sz.D), 16);
    p.Dvp = round_up(static_cast<int>(sz.Dv), 16);
    return p;
}

cudaError_t check_sizes(const SwaSizes& sz) {
    if (sz.D < 1 || sz.Dv < 1 || sz.D > kMaxHeadDim || sz.Dv > kMaxHeadDim) return cudaErrorInvalidValue;
    if (sz.H < 1 || sz.Hk < 1 || sz.H % sz.Hk != 0 || sz.N < 0 || sz.T < 0 || sz.max_seqlen < 0)
        return cudaErrorInvalidValue;
    return cudaSuccess;
}

// Rows per sequence the grid must cover: the longest sequence (T without cu_seqlens, or when the given
// maximum is out of range — covering too much only adds blocks that exit at once).
int64_t grid_len(const SwaSizes& sz) {
    if (sz.cu_seqlens != nullptr && sz.max_seqlen > 0 && sz.max_seqlen <= sz.T) return sz.max_seqlen;
    return sz.T;
}

// Picks the largest tile size that fits, sets the shared-memory limit and launches
// n_seq · heads · ceil(max_len / BT) blocks.
template <typename Tin>
cudaError_t launch(int kind, void (*kernel)(Params<Tin>), Params<Tin> p, int64_t heads, int64_t max_len,
                   cudaStream_t stream) {
    int dev = 0, max_smem = 0;
    cudaError_t err = cudaGetDevice(&dev);
    if (err != cudaSuccess) return err;
    err = cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (err != cudaSuccess) return err;
    int64_t bytes = 0;
    p.BT = 0;
    for (int BT : kTiles) {
        bytes = carve<Tin>(kind, BT, p.Dp, p.Dvp, nullptr).bytes;
        if (bytes <= max_smem) {
            p.BT = BT;
            break;
        }
    }
    if (p.BT == 0) return cudaErrorInvalidConfiguration;
    p.n_blocks = cdiv64(max_len, p.BT);
    const int64_t grid = p.N * heads * p.n_blocks;
    if (grid == 0) return cudaSuccess;
    if (grid > 0x7fffffffLL) return cudaErrorInvalidValue;
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
    if (err != cudaSuccess) return err;
    kernel<<<static_cast<unsigned>(grid), kThreads, static_cast<size_t>(bytes), stream>>>(p);
    return cudaGetLastError();
}

template <typename Tin>
cudaError_t fwd_typed(SwaInput q, SwaInput k, SwaInput v, SwaSizes sz, int64_t left, int64_t right, float scale,
                      void* o, float* lse, cudaStream_t stream) {
    Params<Tin> p = make_params<Tin>(sz, left, right, scale);
    p.q = view<Tin>(q);
    p.k = view<Tin>(k);
    p.v = view<Tin>(v);
    p.out = static_cast<Tin*>(o);
    p.lse = lse;
    return launch<Tin>(kFwd, fwd_kernel<Tin>, p, p.H, grid_len(sz), stream);
}

template <typename Tin>
cudaError_t bwd_typed(SwaInput dout, SwaInput q, SwaInput k, SwaInput v, SwaInput o, const float* lse,
                      const float* dlse, SwaSizes sz, int64_t left, int64_t right, float scale, float* delta,
                      void* dq, void* dk, void* dv, cudaStream_t stream) {
    Params<Tin> p = make_params<Tin>(sz, left, right, scale);
    p.q = view<Tin>(q);
    p.k = view<Tin>(k);
    p.v = view<Tin>(v);
    p.dout = view<Tin>(dout);
    p.o = view<Tin>(o);
    p.lse_in = lse;
    p.dlse = dlse;
    p.delta = delta;
    p.dq = static_cast<Tin*>(dq);
    p.dk = static_cast<Tin*>(dk);
    p.dv = static_cast<Tin*>(dv);
    const int64_t rows = sz.B * sz.T * sz.H;
    if (rows > 0) {
        const int64_t warps_per_block = kThreads / 32;
        const int64_t blocks = cdiv64(rows, warps_per_block);
        delta_kernel<Tin><<<static_cast<unsigned>(blocks < 65535 * 16 ? blocks : 65535 * 16), kThreads, 0, stream>>>(p);
        cudaError_t err = cudaGetLastError();
        if (err != cudaSuccess) return err;
    }
    cudaError_t err = launch<Tin>(kDq, dq_kernel<Tin>, p, p.H, grid_len(sz), stream);
    if (err != cudaSuccess) return err;
    return launch<Tin>(kDkDv, dkdv_kernel<Tin>, p, p.Hk, grid_len(sz), stream);
}

}  // namespace

cudaError_t sliding_window_fwd(DType dtype, SwaInput q, SwaInput k, SwaInput v, SwaSizes sz, int64_t left,
                               int64_t right, float scale, void* o, float* lse, cudaStream_t stream) {
    const cudaError_t err = check_sizes(sz);
    if (err != cudaSuccess) return err;
    switch (dtype) {
        case DType::F32:
            return fwd_typed<float>(q, k, v, sz, left, right, scale, o, lse, stream);
        case DType::F16:
            return fwd_typed<__half>(q, k, v, sz, left, right, scale, o, lse, stream);
        case DType::BF16:
            return fwd_typed<__nv_bfloat16>(q, k, v, sz, left, right, scale, o, lse, stream);
    }
    return cudaErrorInvalidValue;
}

cudaError_t sliding_window_bwd(DType dtype, SwaInput dout, SwaInput q, SwaInput k, SwaInput v, SwaInput o,
                               const float* lse, const float* dlse, SwaSizes sz, int64_t left, int64_t right,
                               float scale, float* delta, void* dq, void* dk, void* dv, cudaStream_t stream) {
    const cudaError_t err = check_sizes(sz);
    if (err != cudaSuccess) return err;
    switch (dtype) {
        case DType::F32:
            return bwd_typed<float>(dout, q, k, v, o, lse, dlse, sz, left, right, scale, delta, dq, dk, dv, stream);
        case DType::F16:
            return bwd_typed<__half>(dout, q, k, v, o, lse, dlse, sz, left, right, scale, delta, dq, dk, dv, stream);
        case DType::BF16:
            return bwd_typed<__nv_bfloat16>(dout, q, k, v, o, lse, dlse, sz, left, right, scale, delta, dq, dk, dv,
                                            stream);
    }
    return cudaErrorInvalidValue;
}

}  // namespace swa
}  // namespace flashts
