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
//
// Two kernel families. The kernels above are the generic ones (any head dim ≤ 256, float32 exactly). For
// float16/bfloat16 (any head dim ≤ 256) on sm_80+ the launchers run the FlashAttention-2 kernels instead
// (fa2_fwd_kernel, fa2_dq_kernel, fa2_dkdv_kernel, section "FA2 kernels" below: mma.sync m16n8k16 with scores
// and accumulators in registers, ldmatrix fragments, cp.async double-buffered K/V (Q/dO) tiles, 64- or 128-row blocks);
// sliding_window_fa2_head_dim() says which family a call takes, FLASHTS_SWA_GENERIC=1 forces the generic one.
#include <cstdlib>
#include <cstring>
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
    int vec;  // FA2 kernels: 16-byte cp.async tile loads allowed (see fa_load_tile)
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
    FLASHTS_DYNAMIC_SMEM(unsigned char, smem_raw);
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
    FLASHTS_DYNAMIC_SMEM(unsigned char, smem_raw);
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
    FLASHTS_DYNAMIC_SMEM(unsigned char, smem_raw);
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

// ============================================================================================== FA2 kernels
//
// FlashAttention-2 kernels for float16 / bfloat16 inputs with both head dims padded to DP ∈ {64, 128, 256}
// (fa2_fwd_kernel, fa2_dq_kernel, fa2_dkdv_kernel; the launchers use them whenever that holds, the generic
// kernels above otherwise: float32 inputs, devices before sm_80). 128 threads = 4 warps; a warp owns 16·MT rows
// of its block (MT m-tiles; MT = 1 except in the D = 64 forward).
//
// Tile products: mma.sync.m16n8k16 (row.col, float32 accumulation) through mma16816() below. Each warp keeps the
// scores, probabilities and accumulators of its m-tiles in registers, in the mma fragment layouts (PTX ISA
// "Matrix Fragments for mma.m16n8k16", lane = 4·g + t):
//   A 16×16 (4 regs of 2 elements): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..2t+1], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B 16×8  (2 regs):               b0 = B[2t..2t+1][g],  b1 = B[2t+8..2t+9][g]
//   C 16×8  (4 floats):             c0,c1 = C[g][2t, 2t+1],  c2,c3 = C[g+8][2t, 2t+1]
// (low 16 bits = the lower index). Shared tiles are row-major [rows][DP + 8] (the 16-byte pad puts the 8 row
// addresses of an ldmatrix on different banks). Fragments come from ldmatrix.x4 (common.cuh): A operands and
// B operands whose k index runs along a tile row (Q·Kᵀ, dO·Vᵀ, K·Qᵀ, V·dOᵀ: k = head dim) without .trans, B
// operands whose k runs down the rows (P·V, dS·K, Pᵀ·dO, dSᵀ·Q: k = key or query) with .trans; one x4 load
// gives the B fragments of two adjacent 8-column tiles. The C fragments of two adjacent 8-column tiles are the A
// fragment of the next product (scores → probabilities → P·V without a trip through shared memory).
//
// Forward (one block per (64·MT query rows, head, sequence), MT = fa_fwd_mt: 2 at DP = 64, 1 at 128 / 256; 64-key
// blocks from lo to hi as in fwd_kernel, K/V double-buffered with 16-byte cp.async): per warp and 16-row m-tile
// S = Q Kᵀ (16×64), online softmax in base 2 per row (running max m, lane-partial running sum l, rescale factor
// 2^(m_old − m_new); a row with no allowed key yet shifts by 0), acc += P V (16×DP). Blocks the window edges or
// the sequence end cut through are masked (−inf before the exp2); interior blocks skip the mask. Output
// o = acc / l, lse = (m + log2 l)·ln 2.
// dq (per 64 query rows; key tiles of BN = 64, 32 at DP = 256): S = Q Kᵀ, P = 2^(S·scale·log2e − lse·log2e),
// dP = dO Vᵀ, dS = P (dP − δ), dq += dS K; dq·scale at the end.
// dk/dv (per 64 keys and KV head; loops over the G query heads of the group and the query tiles of BQ rows that
// see the block, Q/dO/lse/δ double-buffered): scores held transposed, Sᵀ = K Qᵀ, Pᵀ, dPᵀ = V dOᵀ,
// dSᵀ = Pᵀ (dPᵀ − δ), dv += Pᵀ dO, dk += dSᵀ Q; dk·scale at the end. BQ = 64 (DP = 64) or 32 (DP = 128 / 256,
// to stay within the registers: dk and dv accumulators are 2·DP/2 floats per lane). At DP = 256 two blocks share
// a key tile, each with half of the dk/dv columns (fa_dkdv_splits: 128 accumulator floats per lane instead of
// 256); both compute the full Sᵀ and dPᵀ.
//
// cp.async needs 16-byte aligned rows: every input with unit last stride, other strides multiples of 8 elements,
// 16-byte aligned base and D, Dv multiples of 8 (Params::vec, checked by the launcher); otherwise the tiles are
// filled with plain element loads (same kernels, same results).

// c += a·b for one warp: common.cuh's mma.sync m16n8k16 wrapper for the element type (float32 accumulation).
template <typename T>
__device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    if constexpr (std::is_same<T, __nv_bfloat16>::value) {
        mma_m16n8k16_bf16(c, a, b);
    } else {
        mma_m16n8k16_f16(c, a, b);
    }
}

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kFaRows = 64;  // query rows (fwd, dq) or keys (dk/dv) per block; 16 per warp

// Two floats rounded to T, packed as one fragment register (lo in bits 0..15).
template <typename T>
__device__ __forceinline__ uint32_t pack_floats(float lo, float hi) {
#if defined(__CUDA_ARCH__)
    if constexpr (std::is_same<T, __nv_bfloat16>::value) {
        const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<const uint32_t*>(&v);
    } else {
        const __half2 v = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<const uint32_t*>(&v);
    }
#else
    return pack2(from_float<T>(lo), from_float<T>(hi));
#endif
}

// ldmatrix.x4 (common.cuh's wrappers): four 8×8 matrices of 16-bit elements; lane l gives the address of row
// l % 8 of matrix l / 8 (16-byte aligned) and gets register i of matrix i: without .trans the elements
// (row l / 4, columns 2·(l % 4), +1), with .trans the elements (rows 2·(l % 4), +1, column l / 4).
template <bool kTrans, typename T>
__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const T* row) {
    if constexpr (kTrans) {
        ldmatrix_x4_trans(r, row);
    } else {
        ldmatrix_x4(r, row);
    }
}

// A fragment (16×16 at rows r0.., columns k0..) of a row-major shared tile: matrices (rows +0/+8, columns +0/+8)
// in the order a0..a3.
template <typename T>
__device__ __forceinline__ void frag_a(uint32_t a[4], const T* tile, int ld, int r0, int k0, int lane) {
    ldsm_x4<false>(a, tile + (r0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + k0 + (lane >> 4) * 8);
}
// B fragments of two 8-column tiles n0, n0 + 8 (b[0..1] and b[2..3]), 16 deep from k0, with
// B[k][n] = tile[n][k] (k along a row: Kᵀ, Vᵀ, Qᵀ, dOᵀ).
template <typename T>
__device__ __forceinline__ void frag_b_t2(uint32_t b[4], const T* tile, int ld, int n0, int k0, int lane) {
    ldsm_x4<false>(b, tile + (n0 + (lane & 7) + (lane >> 4) * 8) * ld + k0 + ((lane >> 3) & 1) * 8);
}
// The same with B[k][n] = tile[k][n] (k down the rows: V, K, Q, dO), by the transposing load.
template <typename T>
__device__ __forceinline__ void frag_b_n2(uint32_t b[4], const T* tile, int ld, int n0, int k0, int lane) {
    ldsm_x4<true>(b, tile + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0 + (lane >> 4) * 8);
}
// A fragment (16 rows × 16 k) from the C fragments of the 8-column tiles 2·kk and 2·kk + 1.
template <typename T>
__device__ __forceinline__ void frag_a_from_c(uint32_t a[4], const float c0[4], const float c1[4]) {
    a[0] = pack_floats<T>(c0[0], c0[1]);
    a[1] = pack_floats<T>(c0[2], c0[3]);
    a[2] = pack_floats<T>(c1[0], c1[1]);
    a[3] = pack_floats<T>(c1[2], c1[3]);
}

// Rows [first, first + rows_valid) of src (batch b, head h), columns [0, X), into the shared tile
// dst[ROWS][DP + 8] (columns [0, DP)); zeros elsewhere. vec: 16-byte cp.async (caller commits / waits);
// otherwise plain loads and stores.
template <typename Tin, int ROWS, int DP>
__device__ __forceinline__ void fa_load_tile(Tin* dst, const View<Tin>& src, int64_t b, int64_t first, int64_t h,
                                             int rows_valid, int64_t X, bool vec) {
    constexpr int LD = DP + 8, CH = DP / 8;
    if (vec) {
        for (int idx = threadIdx.x; idx < ROWS * CH; idx += kThreads) {
            const int r = idx / CH, c = (idx - (idx / CH) * CH) * 8;
            const bool ok = r < rows_valid && c < X;
            const Tin* gp = ok ? src.p + b * src.sb + (first + r) * src.st + h * src.sh + c : src.p;
            cp_async_16(dst + r * LD + c, gp, ok);
        }
    } else {
        for (int idx = threadIdx.x; idx < ROWS * DP; idx += kThreads) {
            const int r = idx / DP, c = idx - (idx / DP) * DP;
            dst[r * LD + c] = (r < rows_valid && c < X) ? src.get(b, first + r, h, c) : from_float<Tin>(0.f);
        }
    }
}

__device__ __forceinline__ bool in_window(int64_t i, int64_t j, int64_t left, int64_t right) {
    return (left < 0 || j >= i - left) && (right < 0 || j <= i + right);
}

// δ_i = do_i·o_i − dlse_i with 16-byte loads (16-bit inputs whose rows allow them, Dv ≤ 256): P lanes per row
// (P = 8 for Dv ≤ 64, 16 for Dv ≤ 128, 32 for Dv ≤ 256), lane c of a row reads the 8-element chunks c, c + P, ... of do and o; the
// P partial sums are combined by shuffles. A warp covers 32 / P rows per step, in a warp-uniform loop (every
// lane reaches every shuffle).
template <typename Tin, int P>
__global__ void __launch_bounds__(kThreads) fa_delta_kernel(Params<Tin> p) {
    constexpr int kRowsPerWarp = 32 / P;
    const int lane = threadIdx.x & 31, sub = lane & (P - 1);
    const int64_t rows = p.B * p.T * p.H, n_chunks = p.Dv / 8;
    const int64_t warp_global = int64_t(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5);
    const int64_t warps_total = int64_t(gridDim.x) * (kThreads / 32);
    for (int64_t base = warp_global * kRowsPerWarp; base < rows; base += warps_total * kRowsPerWarp) {
        const int64_t row = base + lane / P;
        const int64_t h = row % p.H, t = (row / p.H) % p.T, b = row / p.H / p.T;
        float dot = 0.f;
        if (row < rows) {
            const Tin* dop = p.dout.p + b * p.dout.sb + t * p.dout.st + h * p.dout.sh;
            const Tin* op = p.o.p + b * p.o.sb + t * p.o.st + h * p.o.sh;
            for (int64_t c = sub; c < n_chunks; c += P) {
                const uint4 x = *reinterpret_cast<const uint4*>(dop + 8 * c);
                const uint4 y = *reinterpret_cast<const uint4*>(op + 8 * c);
                Tin xe[8], ye[8];
                memcpy(xe, &x, 16);
                memcpy(ye, &y, 16);
#pragma unroll
                for (int e = 0; e < 8; ++e) dot = fmaf(to_float(xe[e]), to_float(ye[e]), dot);
            }
        }
#pragma unroll
        for (int off = P / 2; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
        if (row < rows && sub == 0) {
            const int64_t w = (b * p.H + h) * p.T + t;
            p.delta[w] = dot - (p.dlse != nullptr ? p.dlse[w] : 0.f);
        }
    }
}

// 16-row m-tiles per warp in the forward: 2 at DP = 64 (128-row blocks: each K/V fragment feeds two products, half
// the shared-memory reads per row), 1 at DP = 128 (the registers: acc alone is 64 floats per lane per m-tile).
template <int DP>
__host__ __device__ constexpr int fa_fwd_mt() {
    return DP == 64 ? 2 : 1;
}

template <int DP>
__host__ __device__ constexpr int fa_dkdv_bq() {
    return DP == 64 ? 64 : 32;
}

// Keys per K/V tile in the dq kernel: 64, or 32 at DP = 256 (dq alone is 128 floats per lane there; the S and dP
// fragments of a 32-key tile take 32 more instead of 64).
template <int DP>
__host__ __device__ constexpr int fa_dq_bn() {
    return DP == 256 ? 32 : 64;
}

// Column splits of the dk/dv kernel: 2 at DP = 256 — the dk and dv accumulators of all 256 columns would be 256
// floats per lane, so each block of a key tile keeps one half of the columns (128 floats per lane) and the two
// blocks of a tile both recompute Sᵀ and dPᵀ (1.5× the tensor-core work of one block, twice the blocks).
template <int DP>
__host__ __device__ constexpr int fa_dkdv_splits() {
    return DP == 256 ? 2 : 1;
}

// Dynamic shared memory of each FA2 kernel (bytes); mt: m-tiles per warp of the forward.
template <typename Tin, int DP>
int64_t fa_smem_bytes(int kind, int mt = fa_fwd_mt<DP>()) {
    const int64_t tile = int64_t(kFaRows) * (DP + 8) * int64_t(sizeof(Tin));
    if (kind == kFwd) return (mt + 4) * tile;  // Q (64·mt rows), K×2, V×2
    if (kind == kDq) return 2 * tile + 4 * int64_t(fa_dq_bn<DP>()) * (DP + 8) * int64_t(sizeof(Tin));  // Q, dO, K×2, V×2
    const int64_t qt = int64_t(fa_dkdv_bq<DP>()) * (DP + 8) * int64_t(sizeof(Tin));
    return 2 * tile + 4 * qt + 4 * fa_dkdv_bq<DP>() * int64_t(sizeof(float));  // K, V, (Q, dO)×2, (lse, δ)×2
}

// Forward. MT: 16-row m-tiles per warp (block of 64·MT query rows; each K/V fragment loaded once feeds MT products).
template <typename Tin, int DP, int MT>
__global__ void __launch_bounds__(kThreads) fa2_fwd_kernel(Params<Tin> p) {
    constexpr int LD = DP + 8, BM = kFaRows * MT, BN = 64, NT = BN / 8, KS = DP / 16, OT = DP / 8;
    FLASHTS_DYNAMIC_SMEM(unsigned char, fa_smem);
    Tin* sQ = reinterpret_cast<Tin*>(fa_smem);
    Tin* sK = sQ + BM * LD;       // two buffers
    Tin* sV = sK + 2 * BN * LD;   // two buffers

    const int64_t blk = blockIdx.x, qb = blk % p.n_blocks, h = (blk / p.n_blocks) % p.H;
    const int64_t n = blk / p.n_blocks / p.H, hk = h / (p.H / p.Hk);
    const Seq sq = seq_of(p, n);
    const int64_t i0 = sq.start + qb * BM;
    if (i0 >= sq.end) return;
    const int nq = static_cast<int>(min64(BM, sq.end - i0));
    const int64_t left = p.left, right = p.right;
    const bool vec = p.vec != 0;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int wrow = warp * 16 * MT;  // first row of this warp; m-tile m: rows wrow + 16m + g and + 8
    const float c = p.scale * kLog2e;

    const int64_t lo = left < 0 ? sq.start : max64(sq.start, i0 - left);
    const int64_t hi = right < 0 ? sq.end : min64(sq.end, i0 + nq - 1 + right + 1);
    const int nkb = static_cast<int>(cdiv64(hi - lo, BN));

    fa_load_tile<Tin, BM, DP>(sQ, p.q, sq.b, i0, h, nq, p.D, vec);
    cp_async_commit();
    if (nkb > 0) {
        const int nk = static_cast<int>(min64(BN, hi - lo));
        fa_load_tile<Tin, BN, DP>(sK, p.k, sq.b, lo, hk, nk, p.D, vec);
        fa_load_tile<Tin, BN, DP>(sV, p.v, sq.b, lo, hk, nk, p.Dv, vec);
    }
    cp_async_commit();

    float acc[MT][OT][4];
    float m_run[MT][2], l_run[MT][2];  // per m-tile: rows g and g + 8
#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
        for (int o = 0; o < OT; ++o) acc[m][o][0] = acc[m][o][1] = acc[m][o][2] = acc[m][o][3] = 0.f;
        m_run[m][0] = m_run[m][1] = -CUDART_INF_F;
        l_run[m][0] = l_run[m][1] = 0.f;
    }

    for (int kb = 0; kb < nkb; ++kb) {
        const int64_t j0 = lo + int64_t(kb) * BN;
        if (kb + 1 < nkb) {  // prefetch the next key block into the other buffer
            const int64_t j1 = j0 + BN;
            const int nk1 = static_cast<int>(min64(BN, hi - j1));
            const int buf = (kb + 1) & 1;
            fa_load_tile<Tin, BN, DP>(sK + buf * BN * LD, p.k, sq.b, j1, hk, nk1, p.D, vec);
            fa_load_tile<Tin, BN, DP>(sV + buf * BN * LD, p.v, sq.b, j1, hk, nk1, p.Dv, vec);
        }
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const Tin* K = sK + (kb & 1) * BN * LD;
        const Tin* V = sV + (kb & 1) * BN * LD;

        float s[MT][NT][4];
#pragma unroll
        for (int m = 0; m < MT; ++m)
#pragma unroll
            for (int j = 0; j < NT; ++j) s[m][j][0] = s[m][j][1] = s[m][j][2] = s[m][j][3] = 0.f;
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
            uint32_t a[MT][4];
#pragma unroll
            for (int m = 0; m < MT; ++m) frag_a(a[m], sQ, LD, wrow + 16 * m, ks * 16, lane);
#pragma unroll
            for (int j = 0; j < NT; j += 2) {
                uint32_t b[4];
                frag_b_t2(b, K, LD, j * 8, ks * 16, lane);
#pragma unroll
                for (int m = 0; m < MT; ++m) {
                    mma16816<Tin>(s[m][j], a[m], b);
                    mma16816<Tin>(s[m][j + 1], a[m], b + 2);
                }
            }
        }
        // masked block: the window edges or the end of the key range cut through it
        const bool masked = j0 + BN > hi || (left >= 0 && j0 < i0 + nq - 1 - left) || (right >= 0 && j0 + BN - 1 > i0 + right);
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            const int64_t ia = i0 + wrow + 16 * m + g, ib = ia + 8;
            float mx_a = -CUDART_INF_F, mx_b = -CUDART_INF_F;
#pragma unroll
            for (int j = 0; j < NT; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    float x = s[m][j][e] * c;
                    if (masked) {
                        const int64_t col = j0 + j * 8 + 2 * t + (e & 1);
                        if (!(col < hi && in_window(e < 2 ? ia : ib, col, left, right))) x = -CUDART_INF_F;
                    }
                    s[m][j][e] = x;
                }
                mx_a = fmaxf(mx_a, fmaxf(s[m][j][0], s[m][j][1]));
                mx_b = fmaxf(mx_b, fmaxf(s[m][j][2], s[m][j][3]));
            }
            mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
            mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
            mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
            mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
            const float mn_a = fmaxf(m_run[m][0], mx_a), mn_b = fmaxf(m_run[m][1], mx_b);
            const float sh_a = mn_a == -CUDART_INF_F ? 0.f : mn_a, sh_b = mn_b == -CUDART_INF_F ? 0.f : mn_b;
            const float al_a = exp2f(m_run[m][0] - sh_a), al_b = exp2f(m_run[m][1] - sh_b);  // 0 while nothing seen
            m_run[m][0] = mn_a;
            m_run[m][1] = mn_b;
            float sum_a = 0.f, sum_b = 0.f;
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                s[m][j][0] = exp2f(s[m][j][0] - sh_a);
                s[m][j][1] = exp2f(s[m][j][1] - sh_a);
                s[m][j][2] = exp2f(s[m][j][2] - sh_b);
                s[m][j][3] = exp2f(s[m][j][3] - sh_b);
                sum_a += s[m][j][0] + s[m][j][1];
                sum_b += s[m][j][2] + s[m][j][3];
            }
            l_run[m][0] = l_run[m][0] * al_a + sum_a;
            l_run[m][1] = l_run[m][1] * al_b + sum_b;
#pragma unroll
            for (int o = 0; o < OT; ++o) {
                acc[m][o][0] *= al_a;
                acc[m][o][1] *= al_a;
                acc[m][o][2] *= al_b;
                acc[m][o][3] *= al_b;
            }
        }
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {  // acc += P V
            uint32_t a[MT][4];
#pragma unroll
            for (int m = 0; m < MT; ++m) frag_a_from_c<Tin>(a[m], s[m][2 * kk], s[m][2 * kk + 1]);
#pragma unroll
            for (int o = 0; o < OT; o += 2) {
                uint32_t b[4];
                frag_b_n2(b, V, LD, o * 8, kk * 16, lane);
#pragma unroll
                for (int m = 0; m < MT; ++m) {
                    mma16816<Tin>(acc[m][o], a[m], b);
                    mma16816<Tin>(acc[m][o + 1], a[m], b + 2);
                }
            }
        }
        __syncthreads();  // every warp is done with this buffer before the next prefetch refills it
    }
    cp_async_wait<0>();

    const int64_t Dv = p.Dv;
#pragma unroll
    for (int m = 0; m < MT; ++m) {
        float l_a = l_run[m][0], l_b = l_run[m][1];
        l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
        l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
        l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
        l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
        const float inv_a = l_a > 0.f ? 1.f / l_a : 0.f, inv_b = l_b > 0.f ? 1.f / l_b : 0.f;
        const int r0 = wrow + 16 * m + g;
#pragma unroll
        for (int o = 0; o < OT; ++o) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = r0 + (e >> 1) * 8;
                const int64_t col = o * 8 + 2 * t + (e & 1);
                if (r < nq && col < Dv)
                    p.out[((sq.b * p.T + i0 + r) * p.H + h) * Dv + col] =
                        from_float<Tin>(acc[m][o][e] * (e < 2 ? inv_a : inv_b));
            }
        }
        if (t == 0) {
            if (r0 < nq) p.lse[(sq.b * p.H + h) * p.T + i0 + r0] = (m_run[m][0] + log2f(l_a)) * kLn2;
            if (r0 + 8 < nq) p.lse[(sq.b * p.H + h) * p.T + i0 + r0 + 8] = (m_run[m][1] + log2f(l_b)) * kLn2;
        }
    }
}

template <typename Tin, int DP>
__global__ void __launch_bounds__(kThreads) fa2_dq_kernel(Params<Tin> p) {
    constexpr int LD = DP + 8, BN = fa_dq_bn<DP>(), NT = BN / 8, KS = DP / 16, OT = DP / 8;
    FLASHTS_DYNAMIC_SMEM(unsigned char, fa_smem);
    Tin* sQ = reinterpret_cast<Tin*>(fa_smem);
    Tin* sdO = sQ + kFaRows * LD;
    Tin* sK = sdO + kFaRows * LD;  // two buffers
    Tin* sV = sK + 2 * BN * LD;    // two buffers

    const int64_t blk = blockIdx.x, qb = blk % p.n_blocks, h = (blk / p.n_blocks) % p.H;
    const int64_t n = blk / p.n_blocks / p.H, hk = h / (p.H / p.Hk);
    const Seq sq = seq_of(p, n);
    const int64_t i0 = sq.start + qb * kFaRows;
    if (i0 >= sq.end) return;
    const int nq = static_cast<int>(min64(kFaRows, sq.end - i0));
    const int64_t left = p.left, right = p.right;
    const bool vec = p.vec != 0;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int r0 = warp * 16 + g;
    const int64_t ia = i0 + r0, ib = ia + 8;
    const float c = p.scale * kLog2e;
    const int64_t wrow = (sq.b * p.H + h) * p.T;
    const float lse_a = r0 < nq ? p.lse_in[wrow + ia] * kLog2e : 0.f;
    const float lse_b = r0 + 8 < nq ? p.lse_in[wrow + ib] * kLog2e : 0.f;
    const float dl_a = r0 < nq ? p.delta[wrow + ia] : 0.f;
    const float dl_b = r0 + 8 < nq ? p.delta[wrow + ib] : 0.f;

    const int64_t lo = left < 0 ? sq.start : max64(sq.start, i0 - left);
    const int64_t hi = right < 0 ? sq.end : min64(sq.end, i0 + nq - 1 + right + 1);
    const int nkb = static_cast<int>(cdiv64(hi - lo, BN));

    fa_load_tile<Tin, kFaRows, DP>(sQ, p.q, sq.b, i0, h, nq, p.D, vec);
    fa_load_tile<Tin, kFaRows, DP>(sdO, p.dout, sq.b, i0, h, nq, p.Dv, vec);
    cp_async_commit();
    if (nkb > 0) {
        const int nk = static_cast<int>(min64(BN, hi - lo));
        fa_load_tile<Tin, BN, DP>(sK, p.k, sq.b, lo, hk, nk, p.D, vec);
        fa_load_tile<Tin, BN, DP>(sV, p.v, sq.b, lo, hk, nk, p.Dv, vec);
    }
    cp_async_commit();

    float dq[OT][4];
#pragma unroll
    for (int o = 0; o < OT; ++o) dq[o][0] = dq[o][1] = dq[o][2] = dq[o][3] = 0.f;

    for (int kb = 0; kb < nkb; ++kb) {
        const int64_t j0 = lo + int64_t(kb) * BN;
        if (kb + 1 < nkb) {
            const int64_t j1 = j0 + BN;
            const int nk1 = static_cast<int>(min64(BN, hi - j1));
            const int buf = (kb + 1) & 1;
            fa_load_tile<Tin, BN, DP>(sK + buf * BN * LD, p.k, sq.b, j1, hk, nk1, p.D, vec);
            fa_load_tile<Tin, BN, DP>(sV + buf * BN * LD, p.v, sq.b, j1, hk, nk1, p.Dv, vec);
        }
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const Tin* K = sK + (kb & 1) * BN * LD;
        const Tin* V = sV + (kb & 1) * BN * LD;

        float s[NT][4], dp[NT][4];
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.f;
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
            uint32_t a[4], ad[4];
            frag_a(a, sQ, LD, warp * 16, ks * 16, lane);
            frag_a(ad, sdO, LD, warp * 16, ks * 16, lane);
#pragma unroll
            for (int j = 0; j < NT; j += 2) {
                uint32_t b[4];
                frag_b_t2(b, K, LD, j * 8, ks * 16, lane);
                mma16816<Tin>(s[j], a, b);  // Q Kᵀ
                mma16816<Tin>(s[j + 1], a, b + 2);
                frag_b_t2(b, V, LD, j * 8, ks * 16, lane);
                mma16816<Tin>(dp[j], ad, b);  // dO Vᵀ
                mma16816<Tin>(dp[j + 1], ad, b + 2);
            }
        }
        const bool masked = j0 + BN > hi || (left >= 0 && j0 < i0 + nq - 1 - left) || (right >= 0 && j0 + BN - 1 > i0 + right);
#pragma unroll
        for (int j = 0; j < NT; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float pr = exp2f(s[j][e] * c - (e < 2 ? lse_a : lse_b));
                if (masked) {
                    const int64_t col = j0 + j * 8 + 2 * t + (e & 1);
                    if (!(col < hi && in_window(e < 2 ? ia : ib, col, left, right))) pr = 0.f;
                }
                s[j][e] = pr * (dp[j][e] - (e < 2 ? dl_a : dl_b));  // dS
            }
        }
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {  // dq += dS K
            uint32_t a[4];
            frag_a_from_c<Tin>(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
            for (int o = 0; o < OT; o += 2) {
                uint32_t b[4];
                frag_b_n2(b, K, LD, o * 8, kk * 16, lane);
                mma16816<Tin>(dq[o], a, b);
                mma16816<Tin>(dq[o + 1], a, b + 2);
            }
        }
        __syncthreads();
    }
    cp_async_wait<0>();

    const int64_t D = p.D;
#pragma unroll
    for (int o = 0; o < OT; ++o) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int r = r0 + (e >> 1) * 8;
            const int64_t col = o * 8 + 2 * t + (e & 1);
            if (r < nq && col < D)
                p.dq[((sq.b * p.T + i0 + r) * p.H + h) * D + col] = from_float<Tin>(p.scale * dq[o][e]);
        }
    }
}

template <typename Tin, int DP>
__global__ void __launch_bounds__(kThreads) fa2_dkdv_kernel(Params<Tin> p) {
    constexpr int LD = DP + 8, BQ = fa_dkdv_bq<DP>(), NT = BQ / 8, KS = DP / 16;
    constexpr int SPLITS = fa_dkdv_splits<DP>(), OT = DP / 8 / SPLITS;  // OT: 8-column output tiles of this block
    FLASHTS_DYNAMIC_SMEM(unsigned char, fa_smem);
    Tin* sK = reinterpret_cast<Tin*>(fa_smem);
    Tin* sV = sK + kFaRows * LD;
    Tin* sQ = sV + kFaRows * LD;  // two buffers
    Tin* sdO = sQ + 2 * BQ * LD;  // two buffers
    float* sL = reinterpret_cast<float*>(sdO + 2 * BQ * LD);  // lse·log2e, two buffers
    float* sD = sL + 2 * BQ;                                  // δ, two buffers

    // block = (column split, key tile, KV head, sequence), the split fastest
    const int64_t blk = blockIdx.x / SPLITS, kb = blk % p.n_blocks, hk = (blk / p.n_blocks) % p.Hk;
    const int64_t n = blk / p.n_blocks / p.Hk, G = p.H / p.Hk;
    const int col0 = static_cast<int>(blockIdx.x % SPLITS) * (DP / SPLITS);  // first output column of this block
    const Seq sq = seq_of(p, n);
    const int64_t j0 = sq.start + kb * kFaRows;
    if (j0 >= sq.end) return;
    const int nk = static_cast<int>(min64(kFaRows, sq.end - j0));
    const int64_t left = p.left, right = p.right;
    const bool vec = p.vec != 0;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int r0 = warp * 16 + g;  // this lane's keys r0 and r0 + 8 of the block
    const int64_t ja = j0 + r0, jb = ja + 8;
    const int64_t kend = j0 + nk;
    const float c = p.scale * kLog2e;

    // queries that may attend one of the keys [j0, j0 + nk): i ∈ [j − right, j + left]
    const int64_t qlo = right < 0 ? sq.start : max64(sq.start, j0 - right);
    const int64_t qhi = left < 0 ? sq.end : min64(sq.end, j0 + nk - 1 + left + 1);
    const int nqb = static_cast<int>(cdiv64(qhi - qlo, BQ));
    const int64_t n_it = int64_t(nqb) * G;

    fa_load_tile<Tin, kFaRows, DP>(sK, p.k, sq.b, j0, hk, nk, p.D, vec);
    fa_load_tile<Tin, kFaRows, DP>(sV, p.v, sq.b, j0, hk, nk, p.Dv, vec);
    cp_async_commit();

    // query tile `it` (head hk·G + it / nqb, rows from qlo + (it % nqb)·BQ) into buffer `buf`
    auto load_q = [&](int64_t it, int buf) {
        const int64_t h = hk * G + it / nqb, i0 = qlo + (it % nqb) * BQ;
        const int nv = static_cast<int>(min64(BQ, qhi - i0));
        fa_load_tile<Tin, BQ, DP>(sQ + buf * BQ * LD, p.q, sq.b, i0, h, nv, p.D, vec);
        fa_load_tile<Tin, BQ, DP>(sdO + buf * BQ * LD, p.dout, sq.b, i0, h, nv, p.Dv, vec);
        const int64_t w = (sq.b * p.H + h) * p.T + i0;
        for (int r = threadIdx.x; r < BQ; r += kThreads) {
            sL[buf * BQ + r] = r < nv ? p.lse_in[w + r] * kLog2e : 0.f;
            sD[buf * BQ + r] = r < nv ? p.delta[w + r] : 0.f;
        }
    };
    if (n_it > 0) load_q(0, 0);
    cp_async_commit();

    float dk[OT][4], dv[OT][4];
#pragma unroll
    for (int o = 0; o < OT; ++o)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk[o][e] = dv[o][e] = 0.f;

    for (int64_t it = 0; it < n_it; ++it) {
        const int64_t i0 = qlo + (it % nqb) * BQ;
        if (it + 1 < n_it) load_q(it + 1, static_cast<int>((it + 1) & 1));
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const int buf = static_cast<int>(it & 1);
        const Tin* Q = sQ + buf * BQ * LD;
        const Tin* dO = sdO + buf * BQ * LD;
        const float* L = sL + buf * BQ;
        const float* Dl = sD + buf * BQ;

        float s[NT][4], dp[NT][4];
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.f;
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
            uint32_t a[4], av[4];
            frag_a(a, sK, LD, warp * 16, ks * 16, lane);
            frag_a(av, sV, LD, warp * 16, ks * 16, lane);
#pragma unroll
            for (int j = 0; j < NT; j += 2) {
                uint32_t b[4];
                frag_b_t2(b, Q, LD, j * 8, ks * 16, lane);
                mma16816<Tin>(s[j], a, b);  // K Qᵀ
                mma16816<Tin>(s[j + 1], a, b + 2);
                frag_b_t2(b, dO, LD, j * 8, ks * 16, lane);
                mma16816<Tin>(dp[j], av, b);  // V dOᵀ
                mma16816<Tin>(dp[j + 1], av, b + 2);
            }
        }
        const bool masked = i0 + BQ > qhi || kend < j0 + kFaRows ||
                            (left >= 0 && j0 < i0 + BQ - 1 - left) || (right >= 0 && j0 + kFaRows - 1 > i0 + right);
#pragma unroll
        for (int j = 0; j < NT; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int q = j * 8 + 2 * t + (e & 1);
                float pr = exp2f(s[j][e] * c - L[q]);
                if (masked) {
                    const int64_t i = i0 + q, key = e < 2 ? ja : jb;
                    if (!(i < qhi && key < kend && in_window(i, key, left, right))) pr = 0.f;
                }
                s[j][e] = pr;                       // Pᵀ
                dp[j][e] = pr * (dp[j][e] - Dl[q]);  // dSᵀ
            }
        }
#pragma unroll
        for (int kk = 0; kk < BQ / 16; ++kk) {
            uint32_t ap[4], as[4];
            frag_a_from_c<Tin>(ap, s[2 * kk], s[2 * kk + 1]);
            frag_a_from_c<Tin>(as, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
            for (int o = 0; o < OT; o += 2) {
                uint32_t b[4];
                frag_b_n2(b, dO, LD, col0 + o * 8, kk * 16, lane);
                mma16816<Tin>(dv[o], ap, b);  // dv += Pᵀ dO
                mma16816<Tin>(dv[o + 1], ap, b + 2);
                frag_b_n2(b, Q, LD, col0 + o * 8, kk * 16, lane);
                mma16816<Tin>(dk[o], as, b);  // dk += dSᵀ Q
                mma16816<Tin>(dk[o + 1], as, b + 2);
            }
        }
        __syncthreads();
    }
    cp_async_wait<0>();

    const int64_t D = p.D, Dv = p.Dv;
#pragma unroll
    for (int o = 0; o < OT; ++o) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int r = r0 + (e >> 1) * 8;
            const int64_t col = col0 + o * 8 + 2 * t + (e & 1);
            if (r < nk) {
                const int64_t row = (sq.b * p.T + j0 + r) * p.Hk + hk;
                if (col < D) p.dk[row * D + col] = from_float<Tin>(p.scale * dk[o][e]);
                if (col < Dv) p.dv[row * Dv + col] = from_float<Tin>(dv[o][e]);
            }
        }
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
    FLASHTS_LAUNCH(kernel, dim3(static_cast<unsigned>(grid)), dim3(kThreads), static_cast<size_t>(bytes), stream, p);
    return cudaGetLastError();
}

// ---------------------------------------------------------------------------------------- FA2 launchers

// Can 16-byte cp.async load every row of x? (unit last stride, 8-element-multiple strides, aligned base)
bool rows_16b(const SwaInput& x) {
    return x.stride_x == 1 && x.stride_b % 8 == 0 && x.stride_t % 8 == 0 && x.stride_h % 8 == 0 &&
           reinterpret_cast<uintptr_t>(x.data) % 16 == 0;
}

// Padded head dim of the FA2 kernels (64, 128 or 256), or 0 when they do not apply: float32 inputs, a device
// older than sm_80, not enough shared memory, or FLASHTS_SWA_GENERIC=1 in the environment (the generic kernels
// above; for comparisons).
template <typename Tin>
int fa_head_dim(const SwaSizes& sz, int kind) {
    if (std::is_same<Tin, float>::value) return 0;
    const char* env = std::getenv("FLASHTS_SWA_GENERIC");
    if (env != nullptr && env[0] == '1') return 0;
    const int64_t d = sz.D > sz.Dv ? sz.D : sz.Dv;
    const int DP = d <= 64 ? 64 : (d <= 128 ? 128 : (d <= 256 ? 256 : 0));
    if (DP == 0) return 0;
    int dev = 0, major = 0, max_smem = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess || major < 8) return 0;
    if (cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) return 0;
    const int64_t need = DP == 64    ? fa_smem_bytes<Tin, 64>(kind)
                         : DP == 128 ? fa_smem_bytes<Tin, 128>(kind)
                                     : fa_smem_bytes<Tin, 256>(kind);
    return need <= max_smem ? DP : 0;
}

// n_seq · heads · ⌈max_len / rows⌉ blocks of 128 threads (rows: 64, or 64·MT for the forward), times the column
// splits of the dk/dv kernel (2 at DP = 256).
template <typename Tin, int DP>
cudaError_t fa_launch(int kind, void (*kernel)(Params<Tin>), Params<Tin> p, int64_t heads, int64_t max_len,
                      cudaStream_t stream, int mt = 1) {
    const int64_t bytes = fa_smem_bytes<Tin, DP>(kind, mt);
    p.n_blocks = cdiv64(max_len, kFaRows * mt);
    const int64_t grid = p.N * heads * p.n_blocks * (kind == kDkDv ? fa_dkdv_splits<DP>() : 1);
    if (grid == 0) return cudaSuccess;
    if (grid > 0x7fffffffLL) return cudaErrorInvalidValue;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
    if (err != cudaSuccess) return err;
    FLASHTS_LAUNCH(kernel, dim3(static_cast<unsigned>(grid)), dim3(kThreads), static_cast<size_t>(bytes), stream, p);
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
    if constexpr (!std::is_same<Tin, float>::value) {
        p.vec = rows_16b(q) && rows_16b(k) && rows_16b(v) && sz.D % 8 == 0 && sz.Dv % 8 == 0;
        const int DP = fa_head_dim<Tin>(sz, kFwd);
        // FLASHTS_SWA_FWD_ROWS=64: 64-row forward blocks at DP = 64 too (one m-tile per warp; for timing both)
        const char* rows_env = std::getenv("FLASHTS_SWA_FWD_ROWS");
        if (DP == 64 && rows_env != nullptr && std::strcmp(rows_env, "64") == 0)
            return fa_launch<Tin, 64>(kFwd, fa2_fwd_kernel<Tin, 64, 1>, p, p.H, grid_len(sz), stream, 1);
        if (DP == 64)
            return fa_launch<Tin, 64>(kFwd, fa2_fwd_kernel<Tin, 64, fa_fwd_mt<64>()>, p, p.H, grid_len(sz), stream,
                                      fa_fwd_mt<64>());
        if (DP == 128)
            return fa_launch<Tin, 128>(kFwd, fa2_fwd_kernel<Tin, 128, fa_fwd_mt<128>()>, p, p.H, grid_len(sz),
                                       stream, fa_fwd_mt<128>());
        if (DP == 256)
            return fa_launch<Tin, 256>(kFwd, fa2_fwd_kernel<Tin, 256, fa_fwd_mt<256>()>, p, p.H, grid_len(sz),
                                       stream, fa_fwd_mt<256>());
    }
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
    bool delta_done = false;
    if constexpr (!std::is_same<Tin, float>::value) {
        if (rows > 0 && rows_16b(dout) && rows_16b(o) && sz.Dv % 8 == 0 && sz.Dv <= 256) {
            const int64_t rows_per_block = (kThreads / 32) * (sz.Dv <= 64 ? 4 : (sz.Dv <= 128 ? 2 : 1));
            const int64_t blocks = cdiv64(rows, rows_per_block);
            const dim3 grid(static_cast<unsigned>(blocks < 65535 * 16 ? blocks : 65535 * 16));
            if (sz.Dv <= 64) {
                auto kernel = fa_delta_kernel<Tin, 8>;
                FLASHTS_LAUNCH(kernel, grid, dim3(kThreads), 0, stream, p);
            } else if (sz.Dv <= 128) {
                auto kernel = fa_delta_kernel<Tin, 16>;
                FLASHTS_LAUNCH(kernel, grid, dim3(kThreads), 0, stream, p);
            } else {
                auto kernel = fa_delta_kernel<Tin, 32>;
                FLASHTS_LAUNCH(kernel, grid, dim3(kThreads), 0, stream, p);
            }
            cudaError_t err = cudaGetLastError();
            if (err != cudaSuccess) return err;
            delta_done = true;
        }
    }
    if (rows > 0 && !delta_done) {
        const int64_t warps_per_block = kThreads / 32;
        const int64_t blocks = cdiv64(rows, warps_per_block);
        FLASHTS_LAUNCH(delta_kernel<Tin>, dim3(static_cast<unsigned>(blocks < 65535 * 16 ? blocks : 65535 * 16)), dim3(kThreads), 0,
                       stream, p);
        cudaError_t err = cudaGetLastError();
        if (err != cudaSuccess) return err;
    }
    if constexpr (!std::is_same<Tin, float>::value) {
        p.vec = rows_16b(q) && rows_16b(k) && rows_16b(v) && rows_16b(dout) && sz.D % 8 == 0 && sz.Dv % 8 == 0;
        const int DP = fa_head_dim<Tin>(sz, kDq) != 0 ? fa_head_dim<Tin>(sz, kDkDv) : 0;
        auto fa_bwd = [&](auto dp_tag) -> cudaError_t {
            constexpr int kDP = decltype(dp_tag)::value;
            cudaError_t err = fa_launch<Tin, kDP>(kDq, fa2_dq_kernel<Tin, kDP>, p, p.H, grid_len(sz), stream);
            if (err != cudaSuccess) return err;
            return fa_launch<Tin, kDP>(kDkDv, fa2_dkdv_kernel<Tin, kDP>, p, p.Hk, grid_len(sz), stream);
        };
        if (DP == 64) return fa_bwd(std::integral_constant<int, 64>{});
        if (DP == 128) return fa_bwd(std::integral_constant<int, 128>{});
        if (DP == 256) return fa_bwd(std::integral_constant<int, 256>{});
    }
    cudaError_t err = launch<Tin>(kDq, dq_kernel<Tin>, p, p.H, grid_len(sz), stream);
    if (err != cudaSuccess) return err;
    return launch<Tin>(kDkDv, dkdv_kernel<Tin>, p, p.Hk, grid_len(sz), stream);
}

}  // namespace

int sliding_window_fa2_head_dim(DType dtype, SwaSizes sz, int backward) {
    if (check_sizes(sz) != cudaSuccess) return 0;
    auto both = [&](auto tag) {
        using T = decltype(tag);
        if (!backward) return fa_head_dim<T>(sz, kFwd);
        return fa_head_dim<T>(sz, kDq) != 0 ? fa_head_dim<T>(sz, kDkDv) : 0;
    };
    switch (dtype) {
        case DType::F16:
            return both(__half{});
        case DType::BF16:
            return both(__nv_bfloat16{});
        default:
            return 0;
    }
}

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
