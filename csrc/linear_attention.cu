// flashts — linear attention (SPEC §1), CUDA kernels: chunkwise forward and backward.
//
// Math. q̃_t = scale·φ(q_t), k̃_t = φ(k_t) (φ = elu+1, relu or identity), per (sequence, query head h) with
// kv head h / (H / Hk) (GQA):
//   S_t = S_0 + Σ_{s∈A(t)} k̃_s v_sᵀ  [D, Dv],   z_t = z_0 + Σ_{s∈A(t)} k̃_s  [D],   A(t) = {s ≤ t} or all s
//   num_t = q̃_tᵀ S_t,  den_t = q̃_t·z_t,   o_t = num_t / (den_t + eps)  (normalize)  or  num_t.
// The final state (S_T, z_T) is written per sequence (float32).
//
// Chunking (causal). One thread block per (sequence, query head) walks its sequence in chunks of C steps
// (C ∈ {64, 32, 16}, the largest whose tiles fit in shared memory) with the float32 state (S, z) resident in
// shared memory. For chunk c (rows of Q̃, K̃, V; S, z = the state entering the chunk):
//   A   = tril(Q̃ K̃ᵀ)                       [C, C]
//   Num = Q̃ S + A V,   den = Q̃ z + rowsum(A)
//   S  += K̃ᵀ V,         z  += colsum(K̃)
// Non-causal: a first sweep accumulates the whole-sequence state, a second writes Num = Q̃ S, den = Q̃ z.
// Padding: rows past the end of the sequence and columns past D / Dv are ZERO in every tile (not φ(0), which
// is 1 for elu), so they add nothing to any product; D and Dv are padded to multiples of 16.
//
// Matrix products (common.cuh, block_gemm): every tile is float32 in shared memory.
//   * float16 / bfloat16 inputs: tensor cores in TF32 (mma.sync m16n8k8 PTX, float32 accumulation). fp16/bf16 input
//     values are exact in TF32; the float32 operands (state S, the chunk matrix A, dS, ...) are rounded to
//     TF32 (10-bit mantissa, like fp16, but with float32's exponent range, so an unbounded state never
//     overflows as it could in fp16).
//   * float32 inputs: plain FMA in float32 (TF32 would cost ~1e-3 relative accuracy, too much for float32).
//
// Backward (hand-derived; the normaliser is folded into an extra value column v' = [v | 1], S' = [S | z],
// so [num | den] = q̃ᵀS'). With inv_t = 1/(den_t + eps), the cotangent of [num | den] is
//   dO'_t = [inv_t·do_t | dden_t],   dden_t = −inv_t·(do_t·o_t)        (normalize; else [do_t | 0])
// (o is the saved output). Per chunk, with S' the state entering it and dS' the cotangent of the state
// leaving it:
//   M    = tril(dO' V'ᵀ),   M_ts = inv_t·(do_t·v_s) + dden_t             (s ≤ t)
//   dQ̃   = dO' S'ᵀ + M K̃  = inv ⊙ (dO Sᵀ) + dden zᵀ + M K̃
//   dK̃   = V' dS'ᵀ + Mᵀ Q̃ = V dSᵀ + 1 dzᵀ + Mᵀ Q̃
//   dV   = K̃ dS + Aᵀ (inv ⊙ dO)
//   dS  += Q̃ᵀ (inv ⊙ dO),   dz += Q̃ᵀ dden                  (walking the chunks from last to first)
// then dq = scale·φ'(q)·dQ̃, dk = φ'(k)·dK̃ with φ' = 1 / eˣ (elu+1, x > 0 / x ≤ 0), [x > 0] (relu), 1.
// Two kernels: bwd_dq_kernel walks forward (it needs S entering each chunk) computing den, inv, dden (stored in
// a float32 [B, T, H] workspace) and dq; bwd_dkv_kernel walks backward from (dS_T, dz_T) computing dk, dv per
// query head (float32; the caller sums GQA groups) and (dS_0, dz_0). Non-causal: S, z and dS, dz are the
// whole-sequence sums (a first sweep), M and A vanish.
//
// Every index is int64; every global access is bounds-checked against the sequence and D / Dv. The
// products and reductions have a fixed order, so results are deterministic.
#include <type_traits>

#include "linear_attention.h"
#include "common.cuh"

namespace flashts {
namespace linear {
namespace {

using mmau::block_gemm;
using mmau::kCol;
using mmau::kRow;

// The chunk products' implementation (common.cuh block_gemm): float32 inputs FMA; float16 / bfloat16 inputs
// mma.sync m16n8k8 TF32 on the float32 tiles (was wmma m16n16k8 TF32 until 2026-12-03, same precision; set
// mmau::kGemmWmma here to go back).
template <typename Tin>
constexpr int kGemmFor = std::is_same<Tin, float>::value ? mmau::kGemmFma : mmau::kGemmMma;

constexpr int kThreads = 256;  // 8 warps
constexpr int kPad = ld_pad<float>();
constexpr int kChunks[3] = {64, 32, 16};

enum Kind : int { kFwd = 0, kBwdDq = 1, kBwdDkv = 2 };

template <typename Tin>
struct View {  // a strided input [B, T, Hx, X]
    const Tin* p;
    int64_t sb, st, sh, sx;
    __device__ __forceinline__ float get(int64_t b, int64_t t, int64_t h, int64_t x) const {
        return to_float(p[b * sb + t * st + h * sh + x * sx]);
    }
};

template <typename Tin>
struct Params {
    View<Tin> q, k, v, dout, o;
    int64_t B, T, H, Hk, D, Dv, N;
    const int32_t* cu;
    int causal, fmap, normalize;
    float scale, eps;
    const float *S0, *z0, *dST, *dzT;
    Tin* out;        // forward: o [B,T,H,Dv]; backward: dq [B,T,H,D]
    float *ST, *zT;  // forward: final state
    float *ws_inv, *ws_dden;
    float *dk_h, *dv_h, *dS0, *dz0;
    int C, Dp, Dvp;  // chunk, padded head dims
};

// Shared-memory tiles of one kernel kind (float32, row-major, leading dims ldD / ldV / ldC).
struct Tiles {
    float *Q, *K, *V, *dO, *A, *M, *X1, *X2, *S, *z, *v1, *v2;
    int64_t bytes;
};

__host__ __device__ inline Tiles carve(int kind, int C, int Dp, int Dvp, unsigned char* base) {
    const int ldD = Dp + kPad, ldV = Dvp + kPad, ldC = C + kPad;
    SmemCarver sc(base);
    Tiles t;
    t.Q = sc.take<float>(int64_t(C) * ldD);
    t.K = sc.take<float>(int64_t(C) * ldD);
    t.V = sc.take<float>(int64_t(C) * ldV);
    t.dO = kind != kFwd ? sc.take<float>(int64_t(C) * ldV) : nullptr;
    t.A = sc.take<float>(int64_t(C) * ldC);
    t.M = kind != kFwd ? sc.take<float>(int64_t(C) * ldC) : nullptr;
    t.X1 = kind != kFwd ? sc.take<float>(int64_t(C) * ldD) : nullptr;    // bwd: dQ̃ / dK̃ accumulator
    t.X2 = kind != kBwdDq ? sc.take<float>(int64_t(C) * ldV) : nullptr;  // fwd: Num; bwd_dkv: dV
    t.S = sc.take<float>(int64_t(Dp) * ldV);                              // S (fwd, bwd_dq) / dS (bwd_dkv)
    t.z = sc.take<float>(Dp);                                             // z / dz
    t.v1 = sc.take<float>(C);                                             // den (fwd) / inv (bwd_dq)
    t.v2 = sc.take<float>(C);                                             // dden (bwd)
    t.bytes = sc.offset;
    return t;
}

// The rows of one block: sequence n, query head h, kv head hk; time [t0, t0 + len) of batch b.
struct RowInfo {
    int64_t n, h, hk, b, t0, len;
};

template <typename Tin>
__device__ __forceinline__ RowInfo row_info(const Params<Tin>& p) {
    RowInfo r;
    r.n = blockIdx.x / p.H;
    r.h = blockIdx.x - r.n * p.H;
    r.hk = r.h / (p.H / p.Hk);
    if (p.cu != nullptr) {
        r.b = 0;
        r.t0 = p.cu[r.n];
        r.len = static_cast<int64_t>(p.cu[r.n + 1]) - r.t0;
    } else {
        r.b = r.n;
        r.t0 = 0;
        r.len = p.T;
    }
    return r;
}

// Steps of chunk c (of C) in a sequence of len steps.
__device__ __forceinline__ int chunk_len(int64_t len, int64_t c, int C) {
    const int64_t rest = len - c * C;
    return static_cast<int>(rest < C ? rest : C);
}

__device__ __forceinline__ float phi(float x, int fmap) {
    if (fmap == static_cast<int>(FeatureMap::Elu)) return x > 0.f ? x + 1.f : __expf(fminf(x, 0.f));
    if (fmap == static_cast<int>(FeatureMap::Relu)) return fmaxf(x, 0.f);
    return x;
}

__device__ __forceinline__ float dphi(float x, int fmap) {
    if (fmap == static_cast<int>(FeatureMap::Elu)) return x > 0.f ? 1.f : __expf(fminf(x, 0.f));
    if (fmap == static_cast<int>(FeatureMap::Relu)) return x > 0.f ? 1.f : 0.f;
    return 1.f;
}

// dst[r][c] = f(src[b, t_first + r, h, c], r) for r < len, c < X; 0 elsewhere in [rows][cols].
template <typename Tin, typename F>
__device__ __forceinline__ void load_tile(float* dst, int ld, int rows, int cols, const View<Tin>& src, int64_t b,
                                          int64_t t_first, int64_t h, int len, int64_t X, F f) {
    for (int idx = threadIdx.x; idx < rows * cols; idx += blockDim.x) {
        const int r = idx / cols, c = idx - (idx / cols) * cols;
        float val = 0.f;
        if (r < len && c < X) val = f(src.get(b, t_first + r, h, c), r);
        dst[r * ld + c] = val;
    }
}

// state[d][e] = init[d][e] (or 0), vec[d] = init_vec[d] (or 0), padded with zeros.
__device__ __forceinline__ void init_state(float* S, int ldV, float* z, const float* S_init, const float* z_init,
                                           int64_t row, int64_t D, int64_t Dv, int Dp, int Dvp) {
    for (int idx = threadIdx.x; idx < Dp * Dvp; idx += blockDim.x) {
        const int d = idx / Dvp, e = idx - (idx / Dvp) * Dvp;
        S[d * ldV + e] = (S_init != nullptr && d < D && e < Dv) ? S_init[(row * D + d) * Dv + e] : 0.f;
    }
    for (int d = threadIdx.x; d < Dp; d += blockDim.x) z[d] = (z_init != nullptr && d < D) ? z_init[row * D + d] : 0.f;
}

__device__ __forceinline__ void store_state(float* S_out, float* z_out, const float* S, int ldV, const float* z,
                                            int64_t row, int64_t D, int64_t Dv) {
    if (S_out != nullptr)
        for (int64_t idx = threadIdx.x; idx < D * Dv; idx += blockDim.x) {
            const int64_t d = idx / Dv, e = idx - (idx / Dv) * Dv;
            S_out[row * D * Dv + idx] = S[d * ldV + e];
        }
    if (z_out != nullptr)
        for (int64_t d = threadIdx.x; d < D; d += blockDim.x) z_out[row * D + d] = z[d];
}

// S += K̃ᵀ V (or Q̃ᵀ dO' in the backward), z += colsum(K̃) (or Q̃ᵀ w for a row weight w, when w != nullptr).
template <int kTC>
__device__ __forceinline__ void add_outer(float* S, int ldV, float* z, const float* Kt, int ldD, const float* Vt,
                                          const float* w, int C, int Dp, int Dvp) {
    block_gemm<kTC, kCol, kRow>(S, ldV, Kt, ldD, Vt, ldV, Dp, Dvp, C, true);
    for (int d = threadIdx.x; d < Dp; d += blockDim.x) {
        float acc = 0.f;
        for (int r = 0; r < C; ++r) acc = fmaf(Kt[r * ldD + d], w != nullptr ? w[r] : 1.f, acc);
        z[d] += acc;
    }
}

// ============================================================================================== forward

// (min 1 block per SM: without it ptxas capped the registers and spilled 16-20 bytes for 16-bit inputs at
// -O3 on sm_90; tests/test_cuda_resources.py fails on any spill.)
template <typename Tin>
__global__ void __launch_bounds__(kThreads, 1) fwd_kernel(Params<Tin> p) {
    constexpr int kTC = kGemmFor<Tin>;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    const int C = p.C, Dp = p.Dp, Dvp = p.Dvp, ldD = Dp + kPad, ldV = Dvp + kPad, ldC = C + kPad;
    const Tiles sm = carve(kFwd, C, Dp, Dvp, smem_raw);
    float *Qs = sm.Q, *Ks = sm.K, *Vs = sm.V, *As = sm.A, *Num = sm.X2, *Ss = sm.S, *zs = sm.z, *dens = sm.v1;
    const RowInfo ri = row_info(p);
    const int64_t state_row = ri.n * p.H + ri.h;
    const int fmap = p.fmap;
    const float scale = p.scale;
    auto fq = [fmap, scale](float x, int) { return scale * phi(x, fmap); };
    auto fk = [fmap](float x, int) { return phi(x, fmap); };
    auto raw = [](float x, int) { return x; };

    init_state(Ss, ldV, zs, p.S0, p.z0, state_row, p.D, p.Dv, Dp, Dvp);
    __syncthreads();
    const int64_t n_chunks = cdiv64(ri.len, C);
    if (!p.causal) {  // sweep 1: the whole-sequence state
        for (int64_t c = 0; c < n_chunks; ++c) {
            const int64_t t_first = ri.t0 + c * C;
            const int len = chunk_len(ri.len, c, C);
            load_tile(Ks, ldD, C, Dp, p.k, ri.b, t_first, ri.hk, len, p.D, fk);
            load_tile(Vs, ldV, C, Dvp, p.v, ri.b, t_first, ri.hk, len, p.Dv, raw);
            __syncthreads();
            add_outer<kTC>(Ss, ldV, zs, Ks, ldD, Vs, nullptr, C, Dp, Dvp);
            __syncthreads();
        }
    }
    for (int64_t c = 0; c < n_chunks; ++c) {
        const int64_t t_first = ri.t0 + c * C;
        const int len = chunk_len(ri.len, c, C);
        load_tile(Qs, ldD, C, Dp, p.q, ri.b, t_first, ri.h, len, p.D, fq);
        if (p.causal) {
            load_tile(Ks, ldD, C, Dp, p.k, ri.b, t_first, ri.hk, len, p.D, fk);
            load_tile(Vs, ldV, C, Dvp, p.v, ri.b, t_first, ri.hk, len, p.Dv, raw);
        }
        __syncthreads();
        if (p.causal) block_gemm<kTC, kRow, kCol>(As, ldC, Qs, ldD, Ks, ldD, C, C, Dp, false);  // Q̃ K̃ᵀ
        block_gemm<kTC, kRow, kRow>(Num, ldV, Qs, ldD, Ss, ldV, C, Dvp, Dp, false);            // Q̃ S
        __syncthreads();
        if (p.causal) {
            for (int idx = threadIdx.x; idx < C * C; idx += blockDim.x) {
                const int t = idx / C, s = idx - (idx / C) * C;
                if (s > t) As[t * ldC + s] = 0.f;
            }
            __syncthreads();
            block_gemm<kTC, kRow, kRow>(Num, ldV, As, ldC, Vs, ldV, C, Dvp, C, true);  // += tril(A) V
        }
        if (p.normalize) {
            for (int t = threadIdx.x; t < C; t += blockDim.x) {
                float den = 0.f;
                for (int d = 0; d < Dp; ++d) den = fmaf(Qs[t * ldD + d], zs[d], den);
                if (p.causal)
                    for (int s = 0; s < C; ++s) den += As[t * ldC + s];
                dens[t] = den;
            }
        }
        __syncthreads();
        for (int64_t idx = threadIdx.x; idx < int64_t(len) * p.Dv; idx += blockDim.x) {
            const int t = static_cast<int>(idx / p.Dv), e = static_cast<int>(idx - (idx / p.Dv) * p.Dv);
            float val = Num[t * ldV + e];
            if (p.normalize) val = val / (dens[t] + p.eps);
            p.out[((ri.b * p.T + t_first + t) * p.H + ri.h) * p.Dv + e] = from_float<Tin>(val);
        }
        if (p.causal) add_outer<kTC>(Ss, ldV, zs, Ks, ldD, Vs, nullptr, C, Dp, Dvp);
        __syncthreads();
    }
    store_state(p.ST, p.zT, Ss, ldV, zs, state_row, p.D, p.Dv);
}

// ============================================================================================== backward

// Forward-order sweep: den, inv, dden (-> workspace) and dq.
template <typename Tin>
__global__ void __launch_bounds__(kThreads) bwd_dq_kernel(Params<Tin> p) {
    constexpr int kTC = kGemmFor<Tin>;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    const int C = p.C, Dp = p.Dp, Dvp = p.Dvp, ldD = Dp + kPad, ldV = Dvp + kPad, ldC = C + kPad;
    const Tiles sm = carve(kBwdDq, C, Dp, Dvp, smem_raw);
    float *Qs = sm.Q, *Ks = sm.K, *Vs = sm.V, *dOs = sm.dO, *As = sm.A, *Ms = sm.M, *G = sm.X1, *Ss = sm.S,
          *zs = sm.z, *invs = sm.v1, *ddens = sm.v2;
    const RowInfo ri = row_info(p);
    const int64_t state_row = ri.n * p.H + ri.h;
    const int fmap = p.fmap;
    const float scale = p.scale;
    auto fq = [fmap, scale](float x, int) { return scale * phi(x, fmap); };
    auto fk = [fmap](float x, int) { return phi(x, fmap); };
    auto raw = [](float x, int) { return x; };
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;

    init_state(Ss, ldV, zs, p.S0, p.z0, state_row, p.D, p.Dv, Dp, Dvp);
    __syncthreads();
    const int64_t n_chunks = cdiv64(ri.len, C);
    if (!p.causal) {
        for (int64_t c = 0; c < n_chunks; ++c) {
            const int64_t t_first = ri.t0 + c * C;
            const int len = chunk_len(ri.len, c, C);
            load_tile(Ks, ldD, C, Dp, p.k, ri.b, t_first, ri.hk, len, p.D, fk);
            load_tile(Vs, ldV, C, Dvp, p.v, ri.b, t_first, ri.hk, len, p.Dv, raw);
            __syncthreads();
            add_outer<kTC>(Ss, ldV, zs, Ks, ldD, Vs, nullptr, C, Dp, Dvp);
            __syncthreads();
        }
    }
    for (int64_t c = 0; c < n_chunks; ++c) {
        const int64_t t_first = ri.t0 + c * C;
        const int len = chunk_len(ri.len, c, C);
        load_tile(Qs, ldD, C, Dp, p.q, ri.b, t_first, ri.h, len, p.D, fq);
        load_tile(dOs, ldV, C, Dvp, p.dout, ri.b, t_first, ri.h, len, p.Dv, raw);
        if (p.causal) {
            load_tile(Ks, ldD, C, Dp, p.k, ri.b, t_first, ri.hk, len, p.D, fk);
            load_tile(Vs, ldV, C, Dvp, p.v, ri.b, t_first, ri.hk, len, p.Dv, raw);
        }
        __syncthreads();
        if (p.causal) {
            if (p.normalize) block_gemm<kTC, kRow, kCol>(As, ldC, Qs, ldD, Ks, ldD, C, C, Dp, false);  // Q̃ K̃ᵀ
            block_gemm<kTC, kRow, kCol>(Ms, ldC, dOs, ldV, Vs, ldV, C, C, Dvp, false);                 // dO Vᵀ
        }
        block_gemm<kTC, kRow, kCol>(G, ldD, dOs, ldV, Ss, ldV, C, Dp, Dvp, false);  // dO Sᵀ
        __syncthreads();
        // Row factors: den_t = q̃_t·z + Σ_{s≤t} A_ts, inv_t = 1/(den_t + eps), dden_t = −inv_t (do_t·o_t).
        for (int t = warp; t < C; t += n_warps) {
            float inv = 0.f, dden = 0.f;  // padded rows: nothing
            if (t < len) {
                if (p.normalize) {
                    float den = 0.f;
                    for (int d = lane; d < Dp; d += 32) den = fmaf(Qs[t * ldD + d], zs[d], den);
                    if (p.causal)
                        for (int s = lane; s <= t; s += 32) den += As[t * ldC + s];
                    den = warp_sum(den);
                    float dot = 0.f;
                    for (int64_t e = lane; e < p.Dv; e += 32)
                        dot = fmaf(p.dout.get(ri.b, t_first + t, ri.h, e), p.o.get(ri.b, t_first + t, ri.h, e), dot);
                    dot = warp_sum(dot);
                    inv = 1.f / (den + p.eps);
                    dden = -dot * inv;
                    if (lane == 0) {
                        const int64_t w = (ri.b * p.T + t_first + t) * p.H + ri.h;
                        p.ws_inv[w] = inv;
                        p.ws_dden[w] = dden;
                    }
                } else {
                    inv = 1.f;
                }
            }
            if (lane == 0) {
                invs[t] = inv;
                ddens[t] = dden;
            }
        }
        __syncthreads();
        for (int idx = threadIdx.x; idx < C * Dp; idx += blockDim.x) {
            const int t = idx / Dp, d = idx - (idx / Dp) * Dp;
            G[t * ldD + d] = invs[t] * G[t * ldD + d] + ddens[t] * zs[d];
        }
        if (p.causal)
            for (int idx = threadIdx.x; idx < C * C; idx += blockDim.x) {
                const int t = idx / C, s = idx - (idx / C) * C;
                Ms[t * ldC + s] = s <= t ? invs[t] * Ms[t * ldC + s] + ddens[t] : 0.f;
            }
        __syncthreads();
        if (p.causal) {
            block_gemm<kTC, kRow, kRow>(G, ldD, Ms, ldC, Ks, ldD, C, Dp, C, true);  // += M K̃
            __syncthreads();
        }
        for (int64_t idx = threadIdx.x; idx < int64_t(len) * p.D; idx += blockDim.x) {
            const int t = static_cast<int>(idx / p.D), d = static_cast<int>(idx - (idx / p.D) * p.D);
            const float x = p.q.get(ri.b, t_first + t, ri.h, d);
            p.out[((ri.b * p.T + t_first + t) * p.H + ri.h) * p.D + d] =
                from_float<Tin>(scale * dphi(x, fmap) * G[t * ldD + d]);
        }
        if (p.causal) add_outer<kTC>(Ss, ldV, zs, Ks, ldD, Vs, nullptr, C, Dp, Dvp);
        __syncthreads();
    }
}

// Reverse-order sweep: dk, dv (per query head, float32) and the initial-state cotangents.
template <typename Tin>
__global__ void __launch_bounds__(kThreads) bwd_dkv_kernel(Params<Tin> p) {
    constexpr int kTC = kGemmFor<Tin>;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    const int C = p.C, Dp = p.Dp, Dvp = p.Dvp, ldD = Dp + kPad, ldV = Dvp + kPad, ldC = C + kPad;
    const Tiles sm = carve(kBwdDkv, C, Dp, Dvp, smem_raw);
    float *Qs = sm.Q, *Ks = sm.K, *Vs = sm.V, *dOs = sm.dO, *As = sm.A, *Ms = sm.M, *dK = sm.X1, *dV = sm.X2,
          *dS = sm.S, *dz = sm.z, *ddens = sm.v2;
    const RowInfo ri = row_info(p);
    const int64_t state_row = ri.n * p.H + ri.h;
    const int fmap = p.fmap;
    const float scale = p.scale;
    const float* ws_inv = p.ws_inv;
    const int64_t T = p.T, H = p.H, b = ri.b, h = ri.h;
    const bool normalize = p.normalize != 0;
    auto fq = [fmap, scale](float x, int) { return scale * phi(x, fmap); };
    auto fk = [fmap](float x, int) { return phi(x, fmap); };
    auto raw = [](float x, int) { return x; };

    init_state(dS, ldV, dz, p.dST, p.dzT, state_row, p.D, p.Dv, Dp, Dvp);
    __syncthreads();
    const int64_t n_chunks = cdiv64(ri.len, C);
    // dO'_t = inv_t·do_t (rows of the chunk starting at t_first); dden_t into ddens
    auto load_dout = [&](int64_t t_first, int len) {
        auto f = [=](float x, int t) { return normalize ? x * ws_inv[(b * T + t_first + t) * H + h] : x; };
        load_tile(dOs, ldV, C, Dvp, p.dout, b, t_first, h, len, p.Dv, f);
        for (int t = threadIdx.x; t < C; t += blockDim.x)
            ddens[t] = (normalize && t < len) ? p.ws_dden[(b * T + t_first + t) * H + h] : 0.f;
    };
    if (!p.causal) {  // sweep 1: dS = dS_T + Σ_t q̃_t dO'_tᵀ over the whole sequence
        for (int64_t c = 0; c < n_chunks; ++c) {
            const int64_t t_first = ri.t0 + c * C;
            const int len = chunk_len(ri.len, c, C);
            load_tile(Qs, ldD, C, Dp, p.q, b, t_first, h, len, p.D, fq);
            load_dout(t_first, len);
            __syncthreads();
            add_outer<kTC>(dS, ldV, dz, Qs, ldD, dOs, ddens, C, Dp, Dvp);
            __syncthreads();
        }
    }
    for (int64_t c = n_chunks - 1; c >= 0; --c) {
        const int64_t t_first = ri.t0 + c * C;
        const int len = chunk_len(ri.len, c, C);
        load_tile(Ks, ldD, C, Dp, p.k, b, t_first, ri.hk, len, p.D, fk);
        load_tile(Vs, ldV, C, Dvp, p.v, b, t_first, ri.hk, len, p.Dv, raw);
        if (p.causal) {
            load_tile(Qs, ldD, C, Dp, p.q, b, t_first, h, len, p.D, fq);
            load_dout(t_first, len);
        }
        __syncthreads();
        block_gemm<kTC, kRow, kCol>(dK, ldD, Vs, ldV, dS, ldV, C, Dp, Dvp, false);  // V dSᵀ
        block_gemm<kTC, kRow, kRow>(dV, ldV, Ks, ldD, dS, ldV, C, Dvp, Dp, false);  // K̃ dS
        if (p.causal) {
            block_gemm<kTC, kRow, kCol>(As, ldC, Qs, ldD, Ks, ldD, C, C, Dp, false);    // Q̃ K̃ᵀ
            block_gemm<kTC, kRow, kCol>(Ms, ldC, dOs, ldV, Vs, ldV, C, C, Dvp, false);  // dO' Vᵀ
        }
        __syncthreads();
        for (int idx = threadIdx.x; idx < C * Dp; idx += blockDim.x) {
            const int t = idx / Dp, d = idx - (idx / Dp) * Dp;
            dK[t * ldD + d] += dz[d];  // the v' = 1 column: 1·dzᵀ
        }
        if (p.causal)
            for (int idx = threadIdx.x; idx < C * C; idx += blockDim.x) {
                const int t = idx / C, s = idx - (idx / C) * C;
                if (s > t) As[t * ldC + s] = 0.f;
                Ms[t * ldC + s] = s <= t ? Ms[t * ldC + s] + ddens[t] : 0.f;
            }
        __syncthreads();
        if (p.causal) {
            block_gemm<kTC, kCol, kRow>(dK, ldD, Ms, ldC, Qs, ldD, C, Dp, C, true);   // += Mᵀ Q̃
            block_gemm<kTC, kCol, kRow>(dV, ldV, As, ldC, dOs, ldV, C, Dvp, C, true);  // += Aᵀ dO'
            __syncthreads();
        }
        for (int64_t idx = threadIdx.x; idx < int64_t(len) * p.D; idx += blockDim.x) {
            const int t = static_cast<int>(idx / p.D), d = static_cast<int>(idx - (idx / p.D) * p.D);
            const float x = p.k.get(b, t_first + t, ri.hk, d);
            p.dk_h[((b * T + t_first + t) * H + h) * p.D + d] = dphi(x, fmap) * dK[t * ldD + d];
        }
        for (int64_t idx = threadIdx.x; idx < int64_t(len) * p.Dv; idx += blockDim.x) {
            const int t = static_cast<int>(idx / p.Dv), e = static_cast<int>(idx - (idx / p.Dv) * p.Dv);
            p.dv_h[((b * T + t_first + t) * H + h) * p.Dv + e] = dV[t * ldV + e];
        }
        if (p.causal) add_outer<kTC>(dS, ldV, dz, Qs, ldD, dOs, ddens, C, Dp, Dvp);  // dS += Q̃ᵀ dO'
        __syncthreads();
    }
    store_state(p.dS0, p.dz0, dS, ldV, dz, state_row, p.D, p.Dv);
}

// ============================================================================================== launchers

template <typename Tin>
Params<Tin> make_params(const LinSizes& sz, const LinOptions& opt) {
    Params<Tin> p{};
    p.B = sz.B;
    p.T = sz.T;
    p.H = sz.H;
    p.Hk = sz.Hk;
    p.D = sz.D;
    p.Dv = sz.Dv;
    p.N = sz.N;
    p.cu = sz.cu_seqlens;
    p.causal = opt.causal ? 1 : 0;
    p.fmap = static_cast<int>(opt.feature_map);
    p.normalize = opt.normalize ? 1 : 0;
    p.scale = opt.scale;
    p.eps = opt.eps;
    p.Dp = round_up(static_cast<int>(sz.D), 16);
    p.Dvp = round_up(static_cast<int>(sz.Dv), 16);
    return p;
}

template <typename Tin>
View<Tin> view(const LinInput& x) {
    return View<Tin>{static_cast<const Tin*>(x.data), x.stride_b, x.stride_t, x.stride_h, x.stride_x};
}

cudaError_t check_sizes(const LinSizes& sz) {
    if (sz.D < 1 || sz.Dv < 1 || sz.D > kMaxHeadDim || sz.Dv > kMaxHeadDim) return cudaErrorInvalidValue;
    if (sz.H < 1 || sz.Hk < 1 || sz.H % sz.Hk != 0 || sz.N < 0 || sz.T < 0) return cudaErrorInvalidValue;
    if (sz.N * sz.H > 0x7fffffffLL) return cudaErrorInvalidValue;
    return cudaSuccess;
}

// Picks the largest chunk whose tiles fit, sets the shared-memory limit and launches one block per (n, h).
template <typename Tin>
cudaError_t launch(int kind, void (*kernel)(Params<Tin>), Params<Tin> p, cudaStream_t stream) {
    if (p.N * p.H == 0) return cudaSuccess;
    int dev = 0, max_smem = 0;
    cudaError_t err = cudaGetDevice(&dev);
    if (err != cudaSuccess) return err;
    err = cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (err != cudaSuccess) return err;
    int64_t bytes = 0;
    p.C = 0;
    for (int C : kChunks) {
        bytes = carve(kind, C, p.Dp, p.Dvp, nullptr).bytes;
        if (bytes <= max_smem) {
            p.C = C;
            break;
        }
    }
    if (p.C == 0) return cudaErrorInvalidConfiguration;
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
    if (err != cudaSuccess) return err;
    kernel<<<static_cast<unsigned>(p.N * p.H), kThreads, static_cast<size_t>(bytes), stream>>>(p);
    return cudaGetLastError();
}

template <typename Tin>
cudaError_t fwd_typed(LinInput q, LinInput k, LinInput v, LinSizes sz, LinOptions opt, const float* S0,
                      const float* z0, void* o, float* S_T, float* z_T, cudaStream_t stream) {
    Params<Tin> p = make_params<Tin>(sz, opt);
    p.q = view<Tin>(q);
    p.k = view<Tin>(k);
    p.v = view<Tin>(v);
    p.S0 = S0;
    p.z0 = z0;
    p.out = static_cast<Tin*>(o);
    p.ST = S_T;
    p.zT = z_T;
    return launch<Tin>(kFwd, fwd_kernel<Tin>, p, stream);
}

template <typename Tin>
cudaError_t bwd_typed(LinInput dout, LinInput q, LinInput k, LinInput v, LinInput o, LinSizes sz, LinOptions opt,
                      const float* S0, const float* z0, const float* dS_T, const float* dz_T, float* ws_inv,
                      float* ws_dden, void* dq, float* dk_heads, float* dv_heads, float* dS0, float* dz0,
                      cudaStream_t stream) {
    if (opt.normalize && (ws_inv == nullptr || ws_dden == nullptr)) return cudaErrorInvalidValue;
    Params<Tin> p = make_params<Tin>(sz, opt);
    p.q = view<Tin>(q);
    p.k = view<Tin>(k);
    p.v = view<Tin>(v);
    p.dout = view<Tin>(dout);
    p.o = view<Tin>(o);
    p.S0 = S0;
    p.z0 = z0;
    p.dST = dS_T;
    p.dzT = dz_T;
    p.ws_inv = ws_inv;
    p.ws_dden = ws_dden;
    p.out = static_cast<Tin*>(dq);
    p.dk_h = dk_heads;
    p.dv_h = dv_heads;
    p.dS0 = dS0;
    p.dz0 = dz0;
    cudaError_t err = launch<Tin>(kBwdDq, bwd_dq_kernel<Tin>, p, stream);
    if (err != cudaSuccess) return err;
    return launch<Tin>(kBwdDkv, bwd_dkv_kernel<Tin>, p, stream);
}

}  // namespace

cudaError_t linear_attention_fwd(DType dtype, LinInput q, LinInput k, LinInput v, LinSizes sz, LinOptions opt,
                                 const float* S0, const float* z0, void* o, float* S_T, float* z_T,
                                 cudaStream_t stream) {
    const cudaError_t err = check_sizes(sz);
    if (err != cudaSuccess) return err;
    switch (dtype) {
        case DType::F32:
            return fwd_typed<float>(q, k, v, sz, opt, S0, z0, o, S_T, z_T, stream);
        case DType::F16:
            return fwd_typed<__half>(q, k, v, sz, opt, S0, z0, o, S_T, z_T, stream);
        case DType::BF16:
            return fwd_typed<__nv_bfloat16>(q, k, v, sz, opt, S0, z0, o, S_T, z_T, stream);
    }
    return cudaErrorInvalidValue;
}

cudaError_t linear_attention_bwd(DType dtype, LinInput dout, LinInput q, LinInput k, LinInput v, LinInput o,
                                 LinSizes sz, LinOptions opt, const float* S0, const float* z0, const float* dS_T,
                                 const float* dz_T, float* ws_inv, float* ws_dden, void* dq, float* dk_heads,
                                 float* dv_heads, float* dS0, float* dz0, cudaStream_t stream) {
    const cudaError_t err = check_sizes(sz);
    if (err != cudaSuccess) return err;
    switch (dtype) {
        case DType::F32:
            return bwd_typed<float>(dout, q, k, v, o, sz, opt, S0, z0, dS_T, dz_T, ws_inv, ws_dden, dq, dk_heads,
                                    dv_heads, dS0, dz0, stream);
        case DType::F16:
            return bwd_typed<__half>(dout, q, k, v, o, sz, opt, S0, z0, dS_T, dz_T, ws_inv, ws_dden, dq, dk_heads,
                                     dv_heads, dS0, dz0, stream);
        case DType::BF16:
            return bwd_typed<__nv_bfloat16>(dout, q, k, v, o, sz, opt, S0, z0, dS_T, dz_T, ws_inv, ws_dden, dq,
                                            dk_heads, dv_heads, dS0, dz0, stream);
    }
    return cudaErrorInvalidValue;
}

}  // namespace linear
}  // namespace flashts
