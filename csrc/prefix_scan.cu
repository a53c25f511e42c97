// flashts — Aaren (SPEC §4) and Latte (SPEC §5): one sequential-in-time prefix-scan core, CUDA kernels.
//
// Math (per row = (sequence, head); logits a [T, L], mixing weights p [T, L], values v [T, Dv], initial state
// (m0, α0, S0) per latent l):
//   M_{t,l}   = max(m0_l, max_{s≤t} a_{s,l})                                  (running max, no gradient)
//   den_{t,l} = α0_l e^{m0_l − M_t} + Σ_{s≤t} e^{a_{s,l} − M_t}
//   num_{t,l} = S0_l e^{m0_l − M_t} + Σ_{s≤t} e^{a_{s,l} − M_t} v_s
//   y_t       = Σ_l p_{t,l} · num_{t,l} / den_{t,l};     final state (M_{T−1}, den_{T−1}, num_{T−1})
// Aaren: L = 1, a_t = scale·(q·k_t), p = 1.  Latte: a = k, p = softmax_l(q_t).
// As a recurrence (the online-softmax combine of common.cuh with one new element):
//   M_t = max(M_{t−1}, a_t),  F_t = e^{M_{t−1} − M_t},  E_t = e^{a_t − M_t}  (both ≤ 1; exp_shift maps −inf to 0)
//   den_t = den_{t−1} F_t + E_t,   num_t = num_{t−1} F_t + E_t v_t.
//
// The forward (causal and bidirectional) is chunk-parallel on tensor cores: see "chunk-parallel forward" below
// and csrc/scan_chunk.cuh; forward_kernel (described next) remains only for the bidirectional one pass.
//
// Blocking. One thread block per row, blockDim = (32, G): warp w owns the latents l ≡ w (mod G), lane j owns the
// value columns d ≡ j (mod 32). The block walks time in tiles of C steps; per tile, separated by __syncthreads():
//   1. load: logits (Aaren: a warp-reduced dot q·k_t per step), p (Latte: a warp softmax over l per step), v, dy
//      into shared memory as float;
//   2. per latent (one thread per l, sequential over the C steps): M, den and the factors F, E, c = p/den;
//   3. per (l, d) (warp w, lane j): the num recurrence num = num·F + E·v for the tile; the contribution
//      c·num to y_t is accumulated in the warp's own slab Y[w][t][d] (no two threads write one element);
//   4. y_t = Σ_w Y[w][t] in a fixed order, written once.
// The running state (m, α, S[L][Dv]) lives in shared memory for the whole sequence. All reductions have a fixed
// order (warp butterflies, ordered slab sums): results are deterministic.
//
// Backward (maxima fixed; c = p/den, z_{t,l} = dy_t·num_{t,l}/den_{t,l} = dp_{t,l}, h = c·dy, r = −c·z):
//   G_t = h_t + e^{M_t − M_{t+1}} G_{t+1},   R_t = r_t + e^{M_t − M_{t+1}} R_{t+1}     (reverse scan, factors ≤ 1)
//   with G_T = dS_T, R_T = dα_T entering at the last step (e^{M_{T−1} − m_T} = 1), then
//   dv_s = Σ_l e^{a_{s,l} − M_{s,l}} G_{s,l},   da_{s,l} = e^{a_{s,l} − M_{s,l}} (G_{s,l}·v_s + R_{s,l}),
//   dS0 = e^{m0 − M_0} G_0,   dα0 = e^{m0 − M_0} R_0   (a zero-length sequence passes dS_T, dα_T through).
// The causal backward runs chunk-parallel (the section "Causal backward, chunk-parallel" below: chunk summaries,
// entering states, per-chunk cotangent maps, their reverse scan, per-chunk gradients on tensor cores). The two
// sequential kernels here remain only as its fallback when a chunk's tiles do not fit in shared memory (very wide
// L·Dv states; plan_backward): recompute_kernel repeats the forward sweep and stores, per position and latent, M, c and r
// (O(T·L) floats of workspace — num itself, O(T·L·Dv), is never stored), and for Latte dq = p ⊙ (z − Σ_l p z);
// reverse_kernel walks the tiles from the last to the first with the state (G[L][Dv], R[L]) in shared memory.
// Aaren: dk_t = scale·da_t q, dq = scale·Σ_t da_t k_t (per row; summed over rows by the caller when q is shared).
//
// Latte bidirectional (causal = false): the forward kernel runs a state-only sweep over the whole row (the
// per-latent softmax totals (max, Z, S)) and then an output sweep with the state frozen (F = 1, E = 0, c = p/Z).
// bidir_bwd_kernel: the same state sweep, then Gm_l = Σ_t p_{t,l} dy_t with dp_{t,l} = dy_t·mean_l (→ dq), then
// dv_s = Σ_l π_{s,l} Gm_l and dk_{s,l} = π_{s,l} (v_s·Gm_l − mean_l·Gm_l), π = e^{k − max}/Z.
//
// cu_seqlens: the row of block (n, h) is [cu[n], cu[n+1]) of batch 0. Every index is int64 and bounds-checked.
#include <type_traits>

#include "common.cuh"
#include "prefix_scan.h"
#include "scan_chunk.cuh"

namespace flashts {
namespace scan {
namespace {

constexpr int MAX_WARPS = 8;  // G ≤ 8 warps (256 threads) per block
constexpr int64_t DEFAULT_SMEM = 48 * 1024;

enum class Kind { Aaren, Latte };

// Everything a kernel needs, passed by value. Pointers that a kernel does not use are nullptr.
template <typename Elem>
struct Args {
    const Elem *q, *k, *v, *dout;
    int64_t sq_b, sq_t, sq_h, sq_x, sk_b, sk_t, sk_h, sk_x, sv_b, sv_t, sv_h, sv_x, sd_b, sd_t, sd_h, sd_x;
    int64_t B, T, H, L, D, Dv, N;
    const int32_t* cu_seqlens;
    float scale;
    const float *m0, *a0, *S0, *daT, *dST;
    Elem* o;
    float *mT, *aT, *ST;
    float *ws_M, *ws_c, *ws_r;
    Elem *dq, *dk, *dv;
    float *dq_rows, *da0, *dS0;
    int C, G;  // time tile, warps
};

// Carves consecutive float arrays out of dynamic shared memory; with base == nullptr it only counts, so the
// host computes the size with the very same code as the kernel uses to lay the arrays out.
struct Carve {
    float* base;
    int64_t used;
    __host__ __device__ float* take(int64_t n) {
        float* p = base ? base + used : nullptr;
        used += n;
        return p;
    }
};

// Shared-memory layouts (sizes in floats). S: [L][Dv] state; per (t, l) tiles [C][L]; per (t, d) tiles [C][Dv];
// Y/DVP: [G][C][Dv] per-warp partial sums.
struct FwdSmem {
    float *S, *m, *al, *A, *P, *F, *V, *Y;
    __host__ __device__ FwdSmem(Carve& c, int64_t C, int64_t G, int64_t L, int64_t Dv) {
        S = c.take(L * Dv); m = c.take(L); al = c.take(L);
        A = c.take(C * L); P = c.take(C * L); F = c.take(C * L);
        V = c.take(C * Dv); Y = c.take(G * C * Dv);
    }
};

struct RecomputeSmem {
    float *S, *m, *al, *A, *P, *F, *ID, *Z, *MT, *V, *DY;
    __host__ __device__ RecomputeSmem(Carve& c, int64_t C, int64_t L, int64_t Dv) {
        S = c.take(L * Dv); m = c.take(L); al = c.take(L);
        A = c.take(C * L); P = c.take(C * L); F = c.take(C * L); ID = c.take(C * L); Z = c.take(C * L);
        MT = c.take(C * L);
        V = c.take(C * Dv); DY = c.take(C * Dv);
    }
};

struct ReverseSmem {
    float *Gs, *R, *Mn, *A, *DEC, *CC, *RT, *DA, *V, *DY, *DVP, *DQ;
    __host__ __device__ ReverseSmem(Carve& c, int64_t C, int64_t G, int64_t L, int64_t Dv, int64_t Dq) {
        Gs = c.take(L * Dv); R = c.take(L); Mn = c.take(L);
        A = c.take(C * L); DEC = c.take(C * L); CC = c.take(C * L); RT = c.take(C * L); DA = c.take(C * L);
        V = c.take(C * Dv); DY = c.take(C * Dv); DVP = c.take(G * C * Dv);
        DQ = c.take(Dq);
    }
};

struct BidirBwdSmem {
    FwdSmem f;  // the state sweep; Y doubles as the dv partial slabs
    float *GA, *MG, *DY, *DP;
    __host__ __device__ BidirBwdSmem(Carve& c, int64_t C, int64_t G, int64_t L, int64_t Dv) : f(c, C, G, L, Dv) {
        GA = c.take(L * Dv); MG = c.take(L); DY = c.take(C * Dv); DP = c.take(C * L);
    }
};

// ------------------------------------------------------------------------------------------- device helpers

struct Row {
    int64_t row, n, h, b, t_begin, t_end;
};

template <typename T>
__device__ __forceinline__ Row row_of(const Args<T>& a) {
    Row r;
    r.row = blockIdx.x;  // n·H + h
    r.n = r.row / a.H;
    r.h = r.row % a.H;
    if (a.cu_seqlens) {
        r.b = 0;
        r.t_begin = a.cu_seqlens[r.n];
        r.t_end = a.cu_seqlens[r.n + 1];
    } else {
        r.b = r.n;
        r.t_begin = 0;
        r.t_end = a.T;
    }
    if (r.t_begin < 0) r.t_begin = 0;  // defensive: the binding validated the offsets
    if (r.t_end > a.T) r.t_end = a.T;
    if (r.t_end < r.t_begin) r.t_end = r.t_begin;
    return r;
}

__device__ __forceinline__ int tid() { return threadIdx.y * 32 + threadIdx.x; }
__device__ __forceinline__ int nthreads() { return blockDim.y * 32; }

// Flat index of a contiguous [B, T, H, X] tensor.
__device__ __forceinline__ int64_t flat(int64_t b, int64_t t, int64_t h, int64_t x, int64_t T, int64_t H,
                                        int64_t X) {
    return ((b * T + t) * H + h) * X + x;
}

// Step 1 of a tile: logits A[t][l], mixing weights P[t][l], values V[t][d], cotangents DY[t][d] (each only if
// its pointer is non-null) for the positions t0 .. t0+nt−1 of row r.
template <Kind KIND, typename T>
__device__ void load_tile(const Args<T>& a, const Row& r, int64_t t0, int nt, float* A, float* P, float* V,
                          float* DY) {
    const int lane = threadIdx.x, warp = threadIdx.y, G = blockDim.y;
    const int64_t L = a.L;
    if (A || P) {
        for (int t = warp; t < nt; t += G) {  // one warp per time step (uniform within the warp)
            const int64_t pos = t0 + t;
            if (KIND == Kind::Aaren) {
                if (A) {
                    const T* qr = a.q + r.b * a.sq_b + r.h * a.sq_h;
                    const T* kr = a.k + r.b * a.sk_b + pos * a.sk_t + r.h * a.sk_h;
                    float acc = 0.f;
                    for (int64_t j = lane; j < a.D; j += 32) acc += to_float(qr[j * a.sq_x]) * to_float(kr[j * a.sk_x]);
                    acc = warp_sum(acc);
                    if (lane == 0) A[t] = a.scale * acc;
                }
                if (P && lane == 0) P[t] = 1.f;
            } else {
                if (A) {
                    const T* kr = a.k + r.b * a.sk_b + pos * a.sk_t + r.h * a.sk_h;
                    for (int64_t l = lane; l < L; l += 32) A[t * L + l] = to_float(kr[l * a.sk_x]);
                }
                if (P) {  // p = softmax_l(q_t): max, then Σ e^{q − max} (every exponent ≤ 0)
                    const T* qr = a.q + r.b * a.sq_b + pos * a.sq_t + r.h * a.sq_h;
                    float mx = -CUDART_INF_F;
                    for (int64_t l = lane; l < L; l += 32) mx = fmaxf(mx, to_float(qr[l * a.sq_x]));
                    mx = warp_max(mx);
                    float sum = 0.f;
                    for (int64_t l = lane; l < L; l += 32) {
                        const float e = __expf(to_float(qr[l * a.sq_x]) - mx);
                        P[t * L + l] = e;
                        sum += e;
                    }
                    sum = warp_sum(sum);
                    const float inv = 1.f / sum;
                    for (int64_t l = lane; l < L; l += 32) P[t * L + l] *= inv;  // own entries only
                }
            }
        }
    }
    const int64_t Dv = a.Dv;
    if (V) {
        for (int64_t i = tid(); i < nt * Dv; i += nthreads()) {
            const int64_t t = i / Dv, d = i % Dv;
            V[i] = to_float(a.v[r.b * a.sv_b + (t0 + t) * a.sv_t + r.h * a.sv_h + d * a.sv_x]);
        }
    }
    if (DY) {
        for (int64_t i = tid(); i < nt * Dv; i += nthreads()) {
            const int64_t t = i / Dv, d = i % Dv;
            DY[i] = to_float(a.dout[r.b * a.sd_b + (t0 + t) * a.sd_t + r.h * a.sd_h + d * a.sd_x]);
        }
    }
}

// Loads the initial state of row r into shared memory (the empty state (−inf, 0, 0) when m0 is null).
template <typename T>
__device__ void load_state(const Args<T>& a, const Row& r, float* S, float* m, float* al) {
    const int64_t L = a.L, LD = a.L * a.Dv;
    for (int64_t i = tid(); i < LD; i += nthreads()) S[i] = a.m0 ? a.S0[r.row * LD + i] : 0.f;
    for (int64_t l = tid(); l < L; l += nthreads()) {
        m[l] = a.m0 ? a.m0[r.row * L + l] : -CUDART_INF_F;
        al[l] = a.m0 ? a.a0[r.row * L + l] : 0.f;
    }
}

enum class Sweep { Causal, StateOnly, Frozen };

// One forward sweep over row r (all threads of the block call it).
//   Causal:    state update + output y (written to a.o);
//   StateOnly: state update only (no p, no output);
//   Frozen:    output y with the state held fixed (bidirectional Latte: F = 1, E = 0, c = p/α).
template <Kind KIND, typename T>
__device__ void forward_sweep(const Args<T>& a, const Row& r, const FwdSmem& s, Sweep mode) {
    const int lane = threadIdx.x, warp = threadIdx.y, G = blockDim.y, C = a.C;
    const int64_t L = a.L, Dv = a.Dv;
    const bool out = mode != Sweep::StateOnly;
    for (int64_t t0 = r.t_begin; t0 < r.t_end; t0 += C) {
        const int nt = static_cast<int>(r.t_end - t0 < C ? r.t_end - t0 : C);
        __syncthreads();  // the previous tile (and the state initialisation) is complete
        load_tile<KIND>(a, r, t0, nt, mode == Sweep::Frozen ? nullptr : s.A, out ? s.P : nullptr, s.V, nullptr);
        __syncthreads();
        // 2. per latent: running max, normaliser, factors F, E (into A) and c = p/den (into P)
        for (int64_t l = tid(); l < L; l += nthreads()) {
            float mm = s.m[l], aa = s.al[l];
            for (int t = 0; t < nt; ++t) {
                const int64_t i = t * L + l;
                if (mode == Sweep::Frozen) {
                    s.F[i] = 1.f;
                    s.A[i] = 0.f;
                    s.P[i] = s.P[i] / aa;
                } else {
                    const float x = s.A[i], Mn = fmaxf(mm, x);
                    const float f = exp_shift(mm, Mn), e = exp_shift(x, Mn);
                    aa = aa * f + e;
                    mm = Mn;
                    s.F[i] = f;
                    s.A[i] = e;
                    if (out) s.P[i] = s.P[i] / aa;
                }
            }
            s.m[l] = mm;
            s.al[l] = aa;
        }
        __syncthreads();
        // 3. per (l, d): num = num·F + E·v; y partials in the warp's own slab
        float* Yw = s.Y + static_cast<int64_t>(warp) * C * Dv;
        if (out)
            for (int64_t d = lane; d < Dv; d += 32)
                for (int t = 0; t < nt; ++t) Yw[t * Dv + d] = 0.f;
        for (int64_t l = warp; l < L; l += G) {
            for (int64_t d = lane; d < Dv; d += 32) {
                float num = s.S[l * Dv + d];
                for (int t = 0; t < nt; ++t) {
                    const int64_t i = t * L + l;
                    num = num * s.F[i] + s.A[i] * s.V[t * Dv + d];
                    if (out) Yw[t * Dv + d] += s.P[i] * num;
                }
                s.S[l * Dv + d] = num;
            }
        }
        __syncthreads();
        // 4. y_t = Σ_w Y[w][t] (fixed order), written once
        if (out) {
            for (int64_t i = tid(); i < nt * Dv; i += nthreads()) {
                const int64_t t = i / Dv, d = i % Dv;
                float y = 0.f;
                for (int w = 0; w < G; ++w) y += s.Y[(static_cast<int64_t>(w) * C + t) * Dv + d];
                a.o[flat(r.b, t0 + t, r.h, d, a.T, a.H, Dv)] = from_float<T>(y);
            }
        }
    }
    __syncthreads();
}

// ------------------------------------------------------------------------------------------- kernels

template <Kind KIND, typename T>
__global__ void forward_kernel(Args<T> a, bool causal) {
    FLASHTS_DYNAMIC_SMEM(float, smem);
    Carve c{smem, 0};
    const FwdSmem s(c, a.C, a.G, a.L, a.Dv);
    const Row r = row_of(a);
    if (r.row >= a.N * a.H) return;  // uniform over the block
    load_state(a, r, s.S, s.m, s.al);
    if (causal) {
        forward_sweep<KIND>(a, r, s, Sweep::Causal);
    } else {
        // bidirectional: the whole row's per-latent softmax totals, then the output with them held fixed
        forward_sweep<KIND>(a, r, s, Sweep::StateOnly);
        forward_sweep<KIND>(a, r, s, Sweep::Frozen);
    }
    if (causal && a.mT) {  // final state (== the initial state for a zero-length sequence)
        const int64_t L = a.L, LD = a.L * a.Dv;
        for (int64_t i = tid(); i < LD; i += nthreads()) a.ST[r.row * LD + i] = s.S[i];
        for (int64_t l = tid(); l < L; l += nthreads()) {
            a.mT[r.row * L + l] = s.m[l];
            a.aT[r.row * L + l] = s.al[l];
        }
    }
}

// ================================================================ chunk-parallel forward ("chunked") and one pass
//
// The algorithm of kernels/prefix_scan.py SCAN_MODE "chunked", three kernels (math: csrc/scan_chunk.cuh):
//   1. chunk_sum_kernel   per (batch row b, chunk slot, head h, Dv tile), every chunk in parallel: the chunk
//      summary (c_max, Σ E_c, E_cᵀ v) into the workspace (Eᵀv on tensor cores for 16-bit inputs);
//   2. state_scan_kernel  per (sequence n, head h, 4 consecutive state columns of one latent): walks the chunks
//      of n in order with the combine (float32) and writes the state ENTERING every chunk (in place of its
//      summary) and the final state (the initial state for an empty sequence);
//   3. chunk_out_kernel   per (b, slot, h, Dv tile), every chunk in parallel: y from the entering state
//      (fast path: y = tril(F Eᵀ) v + (F ⊙ f_in) S_in, three tile products; exact step-by-step fallback when
//      the running max rises by more than kRiseLimit inside the chunk).
// Workspace (float32, from the caller; layout ws_layout): per chunk cell ((b·NS + slot)·H + h) and latent l:
// cmax, csum (summaries), m, u (entering state) [B·NS·H·L] each, and w [B·NS·H·L][Wd] (Wd = Dv rounded up to
// 4; the summary Eᵀv, then the entering S, in place). 128 threads per block; chunk kernels: blockIdx.x =
// ((b·NS + slot)·H + h)·nBV + Dv tile. The one pass — onepass_kernel below (the same chunk functions, one block
// per (sequence, head, Dv tile), no workspace), or forward_kernel above for bidirectional Latte — is the choice
// when N·H·⌈Dv/BV⌉ ≥ 2·SMs (plan_forward: enough blocks to fill the GPU without the state round trip through
// memory).
// Latte bidirectional (causal = false) uses the same summaries: state_scan_kernel (a.bidir) writes only the
// whole-sequence state (m, α, S) to each sequence's first slot, then bidir_out_kernel computes y = p · (S/α)
// per chunk (one [C, Lp] × [Lp, BV] tile product).

namespace ck = chunk;

template <typename Elem>
constexpr int kGemmFor = std::is_same<Elem, float>::value ? mmau::kGemmFma : mmau::kGemmMma;

// Offsets (floats) of the workspace arrays; every array starts at a multiple of 4 floats (16 bytes).
// Two-level state scan (group_rows = N·H·L·G > 0, G > 1 groups): lm, lu [cells·L] (the state entering each chunk
// relative to its group's start: pass 1 writes them, pass 3 reads them) and gm, gu [group_rows], gw [group_rows][Wd]
// (each group's total; gw then holds the state entering the group), gem, geu [group_rows] (m, α entering the group).
struct WsLayout {
    int64_t cm, cs, m, u, w, lm, lu, gm, gu, gem, geu, gw, floats;
};

__host__ __device__ inline WsLayout ws_layout(int64_t B, int64_t NS, int64_t H, int64_t L, int64_t Wd,
                                              int64_t group_rows = 0) {
    const int64_t cells = B * NS * H * L, vec = (cells + 3) / 4 * 4, end = 4 * vec + cells * Wd;
    if (group_rows <= 0) return WsLayout{0, vec, 2 * vec, 3 * vec, 4 * vec, 0, 0, 0, 0, 0, 0, 0, end};
    const int64_t gvec = (group_rows + 3) / 4 * 4, g0 = end + 2 * vec;
    return WsLayout{0,       vec,          2 * vec,      3 * vec,      4 * vec,      end, end + vec,
                    g0,      g0 + gvec,    g0 + 2 * gvec, g0 + 3 * gvec, g0 + 4 * gvec,
                    g0 + 4 * gvec + group_rows * Wd};
}

template <typename Elem>
struct FwdArgs {
    ck::View<Elem> q, k, v;
    Elem* o;
    int64_t B, T, H, L, D, Dv, N, NS, Wd;
    const int32_t* cu;
    float scale;
    ck::Geom g;
    int nBV;
    int bidir;  // Latte bidirectional: state_scan_kernel writes the whole-sequence totals (see there)
    int64_t stage_off;  // onepass_kernel: byte offset of its cp.async staging buffers (0: plain loads)
    int plain_sum;  // state_scan_kernel: a plain sum of ws_w along the chunks (no maxima; bidirectional backward)
    float *ws_cm, *ws_cs, *ws_m, *ws_u, *ws_w;
    // two-level state scan (G > 1): G groups of CPG chunks per sequence; workspace arrays as in ws_layout
    int G;
    int64_t CPG;
    float *ws_lm, *ws_lu, *ws_gm, *ws_gu, *ws_gem, *ws_geu, *ws_gw;
    const float *m0, *u0, *w0;
    float *mT, *uT, *wT;
    // bidirectional backward: dout, gradients, the per-chunk Gm = Pᵀ dy workspace [cells][L][Wd]
    ck::View<Elem> dout;
    Elem *dq, *dk, *dv;
    float* ws_g;
};

struct ChunkBlock {
    int64_t b, slot, h, cell;
    int tile;
};

template <typename Elem>
__device__ __forceinline__ ChunkBlock chunk_block(const FwdArgs<Elem>& a) {
    ChunkBlock cb;
    int64_t idx = blockIdx.x;
    cb.tile = static_cast<int>(idx % a.nBV);
    cb.cell = idx / a.nBV;  // (b·NS + slot)·H + h
    cb.h = cb.cell % a.H;
    cb.slot = (cb.cell / a.H) % a.NS;
    cb.b = cb.cell / a.H / a.NS;
    return cb;
}

// Step 1: the summary of one chunk (columns [e0, e0 + BV) of Eᵀv; cmax / csum by Dv tile 0).
template <bool kAaren, typename Elem>
__global__ void __launch_bounds__(ck::kThreads) chunk_sum_kernel(FwdArgs<Elem> a) {
    FLASHTS_DYNAMIC_SMEM(unsigned char, smem_raw);
    const ck::Geom g = a.g;
    const ck::Tiles s = ck::carve(g, false, smem_raw);
    const ChunkBlock cb = chunk_block(a);
    const ck::Slot sl = ck::slot_of(a.cu, a.N, a.T, cb.b, cb.slot);
    if (sl.len <= 0) return;  // idle slot (uniform over the block)
    const int e0 = cb.tile * g.BV;
    ck::load_chunk<kAaren>(s, g, a.q, a.k, a.v, cb.b, cb.h, sl.t0, sl.len, a.D, a.Dv, e0, a.scale, nullptr);
    ck::chunk_summary<kGemmFor<Elem>>(s, g);
    const int64_t L = a.L, row0 = cb.cell * L;
    if (cb.tile == 0)
        for (int64_t l = threadIdx.x; l < L; l += blockDim.x) {
            a.ws_cm[row0 + l] = s.cmax[l];
            a.ws_cs[row0 + l] = s.csum[l];
        }
    const int groups = g.BV / 4, ldV = g.ldV();
    for (int64_t idx = threadIdx.x; idx < L * groups; idx += blockDim.x) {
        const int64_t l = idx / groups;
        const int c = static_cast<int>(idx - l * groups) * 4;
        if (e0 + c >= a.Wd) continue;
        const float* src = s.S + l * ldV + c;
        *reinterpret_cast<float4*>(a.ws_w + (row0 + l) * a.Wd + e0 + c) = make_float4(src[0], src[1], src[2], src[3]);
    }
}

// Step 2: the sequential scan of the summaries of one (sequence, head): thread → (latent l, columns d0..d0+3).
// The summaries are read kScanAhead chunks ahead of the combine (a ring of registers, static indices), so that
// kScanAhead loads are in flight: the scan is a chain of NS dependent steps per thread and would otherwise pay
// one memory round trip per chunk. Causal: the state entering chunk c replaces its summary; a.bidir: only the
// whole-sequence total is written, to the sequence's first slot (the bidirectional forward's means).
// Two-level (a.G > 1 groups of a.CPG chunks per sequence; the combine is associative): this kernel is pass 1,
// thread → (row, group, l, d0), each group scanned from the empty state: the state entering each chunk relative to
// its group (m, α into ws_lm / ws_lu, S in place of the summary) and the group's total (ws_gm, ws_gu, ws_gw);
// group_scan_kernel (pass 2) combines the totals in order (the initial state first) into the state entering each
// group and writes the final / whole-sequence state; group_apply_kernel (pass 3, causal) combines each group's
// entering state with its chunks' relative states.
constexpr int kScanAhead = 8;

// The end of a scan of one (sequence, head, latent, 4 columns) with its total state (m, u, w): the bidirectional
// whole-sequence state in the sequence's first slot, the final state.
template <typename Elem>
__device__ __forceinline__ void scan_finish(const FwdArgs<Elem>& a, int64_t first, int64_t srow, int64_t d0,
                                            int64_t n_chunks, float m, float u, const float* w) {
    if (a.bidir && n_chunks > 0) {
        if (d0 == 0 && !a.plain_sum) {
            a.ws_m[first] = m;
            a.ws_u[first] = u;
        }
        *reinterpret_cast<float4*>(a.ws_w + first * a.Wd + d0) = make_float4(w[0], w[1], w[2], w[3]);
    }
    if (a.mT) {
        if (d0 == 0) {
            a.mT[srow] = m;
            a.uT[srow] = u;
        }
#pragma unroll
        for (int j = 0; j < 4; ++j)
            if (d0 + j < a.Dv) a.wT[srow * a.Dv + d0 + j] = w[j];
    }
}

template <typename Elem>
__global__ void __launch_bounds__(ck::kThreads) state_scan_kernel(FwdArgs<Elem> a) {
    const int64_t per_group = a.L * (a.Wd / 4), per_row = per_group * a.G;
    const int64_t gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t row = gid / per_row;  // n·H + h
    if (row >= a.N * a.H) return;
    const int64_t grp = (gid - row * per_row) / per_group, i = gid - row * per_row - grp * per_group;
    const int64_t l = i / (a.Wd / 4), d0 = (i - l * (a.Wd / 4)) * 4;
    const int64_t n = row / a.H, h = row - n * a.H, L = a.L, Dv = a.Dv;
    const bool grouped = a.G > 1;
    const ck::Seq sq = ck::sequence(a.cu, n, a.T);
    const int64_t srow = row * L + l;  // state rows [N, H, L]
    const bool init = a.m0 && !grouped;  // groups start from the empty state (the initial state enters in pass 2)
    float m = init ? a.m0[srow] : -CUDART_INF_F, u = init ? a.u0[srow] : 0.f, w[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) w[j] = (init && d0 + j < Dv) ? a.w0[srow * Dv + d0 + j] : 0.f;
    const int64_t seq_chunks = cdiv64(sq.eos - sq.bos, ck::kChunk), c_begin = grouped ? grp * a.CPG : 0;
    const int64_t c_end = grouped ? (c_begin + a.CPG < seq_chunks ? c_begin + a.CPG : seq_chunks) : seq_chunks;
    const int64_t n_chunks = c_end > c_begin ? c_end - c_begin : 0;
    const int64_t step = a.H * L;  // next slot, same head and latent
    const int64_t first = ((sq.b * a.NS + sq.base + c_begin) * a.H + h) * L + l;
    const bool entering = !a.bidir;
    // running pointers: the chunk being combined (cur) and the one being fetched (ahead), same head and latent
    const float *cm_ahead = a.ws_cm + first, *cs_ahead = a.ws_cs + first;
    const float* w_ahead = a.ws_w + first * a.Wd + d0;
    float *m_cur = (grouped ? a.ws_lm : a.ws_m) + first, *u_cur = (grouped ? a.ws_lu : a.ws_u) + first;
    float* w_cur = a.ws_w + first * a.Wd + d0;
    const int64_t wstep = step * a.Wd;
    float ring_m[kScanAhead], ring_u[kScanAhead];
    float4 ring_w[kScanAhead];
#pragma unroll
    for (int j = 0; j < kScanAhead; ++j) {
        if (j < n_chunks) {
            ring_m[j] = *cm_ahead;
            ring_u[j] = *cs_ahead;
            ring_w[j] = *reinterpret_cast<const float4*>(w_ahead);
            cm_ahead += step;
            cs_ahead += step;
            w_ahead += wstep;
        }
    }
    for (int64_t c0 = 0; c0 < n_chunks; c0 += kScanAhead) {
#pragma unroll
        for (int j = 0; j < kScanAhead; ++j) {
            if (c0 + j < n_chunks) {
                const float cm = ring_m[j], cs = ring_u[j], xs[4] = {ring_w[j].x, ring_w[j].y, ring_w[j].z,
                                                                     ring_w[j].w};
                if (c0 + j + kScanAhead < n_chunks) {  // refill this ring slot (issued before the stores below)
                    ring_m[j] = *cm_ahead;
                    ring_u[j] = *cs_ahead;
                    ring_w[j] = *reinterpret_cast<const float4*>(w_ahead);
                    cm_ahead += step;
                    cs_ahead += step;
                    w_ahead += wstep;
                }
                if (entering) {
                    if (d0 == 0) {
                        *m_cur = m;
                        *u_cur = u;
                    }
                    *reinterpret_cast<float4*>(w_cur) = make_float4(w[0], w[1], w[2], w[3]);
                }
                m_cur += step;
                u_cur += step;
                w_cur += wstep;
                if (a.plain_sum) {
#pragma unroll
                    for (int jj = 0; jj < 4; ++jj) w[jj] += xs[jj];
                } else {
                    ck::combine<4>(m, u, w, cm, cs, xs);
                }
            }
        }
    }
    if (grouped) {  // pass 1: the group's total
        const int64_t gidx = (row * a.G + grp) * L + l;
        if (d0 == 0) {
            a.ws_gm[gidx] = m;
            a.ws_gu[gidx] = u;
        }
        *reinterpret_cast<float4*>(a.ws_gw + gidx * a.Wd + d0) = make_float4(w[0], w[1], w[2], w[3]);
    } else {
        scan_finish(a, first, srow, d0, n_chunks, m, u, w);
    }
}

// Two-level scan, pass 2: thread → (row, l, d0); the group totals of the sequence combined in order from the
// initial state: the state entering each group (m, α into ws_gem / ws_geu, S over the total in ws_gw), then the
// final / whole-sequence state (scan_finish). G is small (≤ SMs·128 / chains): a short chain per thread.
template <typename Elem>
__global__ void __launch_bounds__(ck::kThreads) group_scan_kernel(FwdArgs<Elem> a) {
    const int64_t per_row = a.L * (a.Wd / 4);
    const int64_t gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t row = gid / per_row;
    if (row >= a.N * a.H) return;
    const int64_t i = gid - row * per_row, l = i / (a.Wd / 4), d0 = (i - l * (a.Wd / 4)) * 4;
    const int64_t n = row / a.H, h = row - n * a.H, L = a.L, Dv = a.Dv;
    const ck::Seq sq = ck::sequence(a.cu, n, a.T);
    const int64_t srow = row * L + l;
    float m = a.m0 ? a.m0[srow] : -CUDART_INF_F, u = a.m0 ? a.u0[srow] : 0.f, w[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) w[j] = (a.m0 && d0 + j < Dv) ? a.w0[srow * Dv + d0 + j] : 0.f;
    const int64_t n_chunks = cdiv64(sq.eos - sq.bos, ck::kChunk), groups = cdiv64(n_chunks, a.CPG);
    for (int64_t grp = 0; grp < groups; ++grp) {
        const int64_t gidx = (row * a.G + grp) * L + l;
        const float gm = a.ws_gm[gidx], gu = a.ws_gu[gidx];
        float* gw = a.ws_gw + gidx * a.Wd + d0;
        const float4 t = *reinterpret_cast<const float4*>(gw);
        const float xs[4] = {t.x, t.y, t.z, t.w};
        if (d0 == 0) {
            a.ws_gem[gidx] = m;
            a.ws_geu[gidx] = u;
        }
        *reinterpret_cast<float4*>(gw) = make_float4(w[0], w[1], w[2], w[3]);
        if (a.plain_sum) {
#pragma unroll
            for (int j = 0; j < 4; ++j) w[j] += xs[j];
        } else {
            ck::combine<4>(m, u, w, gm, gu, xs);
        }
    }
    scan_finish(a, ((sq.b * a.NS + sq.base) * a.H + h) * L + l, srow, d0, n_chunks, m, u, w);
}

// Two-level scan, pass 3 (causal): thread → (row, group, l, d0) as in pass 1; the state entering each chunk of the
// group = (the state entering the group) ⊕ (the chunk's state relative to the group), into ws_m, ws_u, ws_w.
template <typename Elem>
__global__ void __launch_bounds__(ck::kThreads) group_apply_kernel(FwdArgs<Elem> a) {
    const int64_t per_group = a.L * (a.Wd / 4), per_row = per_group * a.G;
    const int64_t gid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t row = gid / per_row;
    if (row >= a.N * a.H) return;
    const int64_t grp = (gid - row * per_row) / per_group, i = gid - row * per_row - grp * per_group;
    const int64_t l = i / (a.Wd / 4), d0 = (i - l * (a.Wd / 4)) * 4;
    const int64_t n = row / a.H, h = row - n * a.H, L = a.L;
    const ck::Seq sq = ck::sequence(a.cu, n, a.T);
    const int64_t seq_chunks = cdiv64(sq.eos - sq.bos, ck::kChunk), c_begin = grp * a.CPG;
    const int64_t c_end = c_begin + a.CPG < seq_chunks ? c_begin + a.CPG : seq_chunks;
    if (c_end <= c_begin) return;
    const int64_t gidx = (row * a.G + grp) * L + l;
    const float em = a.ws_gem[gidx], eu = a.ws_geu[gidx];
    const float4 ew = *reinterpret_cast<const float4*>(a.ws_gw + gidx * a.Wd + d0);
    const int64_t step = a.H * L;
    int64_t cell = ((sq.b * a.NS + sq.base + c_begin) * a.H + h) * L + l;
    for (int64_t c = c_begin; c < c_end; ++c, cell += step) {
        float m = em, u = eu, w[4] = {ew.x, ew.y, ew.z, ew.w};
        float* wp = a.ws_w + cell * a.Wd + d0;
        const float4 lw = *reinterpret_cast<const float4*>(wp);
        const float xs[4] = {lw.x, lw.y, lw.z, lw.w};
        ck::combine<4>(m, u, w, a.ws_lm[cell], a.ws_lu[cell], xs);
        if (d0 == 0) {
            a.ws_m[cell] = m;
            a.ws_u[cell] = u;
        }
        *reinterpret_cast<float4*>(wp) = make_float4(w[0], w[1], w[2], w[3]);
    }
}

// Step 3: the outputs of one chunk (columns [e0, e0 + BV)) from the state entering it.
template <bool kAaren, typename Elem>
__global__ void __launch_bounds__(ck::kThreads) chunk_out_kernel(FwdArgs<Elem> a) {
    FLASHTS_DYNAMIC_SMEM(unsigned char, smem_raw);
    const ck::Geom g = a.g;
    const ck::Tiles s = ck::carve(g, true, smem_raw);
    const ChunkBlock cb = chunk_block(a);
    const ck::Slot sl = ck::slot_of(a.cu, a.N, a.T, cb.b, cb.slot);
    if (sl.len <= 0) return;  // idle slot (uniform over the block)
    const int e0 = cb.tile * g.BV, ldV = g.ldV();
    const int64_t L = a.L, row0 = cb.cell * L;
    // the entering state (padded latents: the empty state); made visible by load_chunk's barriers
    for (int l = threadIdx.x; l < g.Lp; l += blockDim.x) {
        s.m[l] = l < L ? a.ws_m[row0 + l] : -CUDART_INF_F;
        s.u[l] = l < L ? a.ws_u[row0 + l] : 0.f;
    }
    const int groups = g.BV / 4;
    for (int idx = threadIdx.x; idx < g.Lp * groups; idx += blockDim.x) {
        const int l = idx / groups, c = (idx - l * groups) * 4;
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (l < L && e0 + c < a.Wd) x = *reinterpret_cast<const float4*>(a.ws_w + (row0 + l) * a.Wd + e0 + c);
        float* d = s.S + l * ldV + c;
        d[0] = x.x;
        d[1] = x.y;
        d[2] = x.z;
        d[3] = x.w;
    }
    ck::load_chunk<kAaren>(s, g, a.q, a.k, a.v, cb.b, cb.h, sl.t0, sl.len, a.D, a.Dv, e0, a.scale, s.P);
    ck::chunk_output<kGemmFor<Elem>>(s, g);
    const int cols = static_cast<int>(a.Dv - e0 < g.BV ? a.Dv - e0 : g.BV);
    const float* Y = s.Y;
    ck::store_rows(a.o + ((cb.b * a.T + sl.t0) * a.H + cb.h) * a.Dv + e0, a.H * a.Dv, sl.len, cols,
                   [=](int t, int d) { return Y[t * ldV + d]; });
}

// onepass_kernel's staging: elements of one chunk's raw rows (k [C][kw], v [C][BV], Latte q [C][kw]; kw = Dkp
// (Aaren) or Lp (Latte), multiples of 16 elements so that every row starts 16-byte aligned).
__host__ __device__ inline int64_t onepass_stage_elems(bool aaren, const ck::Geom& g) {
    const int64_t kw = aaren ? g.Dkp : g.Lp;
    return int64_t(ck::kChunk) * (kw + g.BV + (aaren ? 0 : kw));
}

// Block-wide: cp.async of rows [t0, t0 + len) × columns [x0, x0 + X) of src (src.vec: 16-byte aligned rows, X a
// multiple of 16/sizeof(T)) into dst [kChunk][width] (16-byte aligned); the rest of dst zero-filled.
template <typename T>
__device__ __forceinline__ void stage_rows(T* dst, int width, const ck::View<T>& src, int64_t b, int64_t t0,
                                           int64_t h, int64_t x0, int len, int64_t X) {
    constexpr int kVE = 16 / static_cast<int>(sizeof(T));
    const int groups = width / kVE;
    for (int idx = threadIdx.x; idx < ck::kChunk * groups; idx += blockDim.x) {
        const int r = idx / groups, c0 = (idx - r * groups) * kVE;
        const bool pred = r < len && c0 < X;
        const T* from = pred ? src.p + b * src.sb + (t0 + r) * src.st + h * src.sh + x0 + c0 : src.p;
        cp_async_16(dst + r * width + c0, from, pred);
    }
}

// One pass (causal; ScanMode::OnePass): one block per (sequence, head, Dv tile) walks the chunks of its sequence
// with the state (m, α, S [Lp][BV]) in shared memory — per chunk the same chunk_output as chunk_out_kernel, then
// the chunk summary (Eᵀv into W) combined into the state. No workspace; writes y and the final state.
// blockIdx.x = (n·H + h)·nBV + Dv tile.
template <bool kAaren, typename Elem>
__global__ void __launch_bounds__(ck::kThreads) onepass_kernel(FwdArgs<Elem> a) {
    FLASHTS_DYNAMIC_SMEM(unsigned char, smem_raw);
    constexpr int kImpl = kGemmFor<Elem>;
    const ck::Geom g = a.g;
    const ck::Tiles s = ck::carve(g, true, smem_raw, true);
    const int tile = static_cast<int>(blockIdx.x % a.nBV);
    const int64_t row = blockIdx.x / a.nBV, n = row / a.H, h = row - n * a.H, L = a.L, Dv = a.Dv;
    const ck::Seq sq = ck::sequence(a.cu, n, a.T);
    const int e0 = tile * g.BV, ldV = g.ldV();
    const int64_t cols = Dv - e0 < g.BV ? Dv - e0 : g.BV;
    for (int l = threadIdx.x; l < g.Lp; l += blockDim.x) {
        s.m[l] = (a.m0 && l < L) ? a.m0[row * L + l] : -CUDART_INF_F;
        s.u[l] = (a.m0 && l < L) ? a.u0[row * L + l] : 0.f;
    }
    for (int idx = threadIdx.x; idx < g.Lp * g.BV; idx += blockDim.x) {
        const int l = idx / g.BV, d = idx - (idx / g.BV) * g.BV;
        s.S[l * ldV + d] = (a.m0 && l < L && d < cols) ? a.w0[(row * L + l) * Dv + e0 + d] : 0.f;
    }
    // cp.async double buffering (a.stage_off > 0: every k/v(/q) row 16-byte aligned): the raw rows of chunk c + 1
    // are copied into one staging buffer while chunk c is computed from the other (onepass_stage_elems).
    Elem* const stage = a.stage_off > 0 ? reinterpret_cast<Elem*>(smem_raw + a.stage_off) : nullptr;
    const int kw = kAaren ? g.Dkp : g.Lp;  // staged k (and Latte q) row width, elements
    const int64_t per_buf = onepass_stage_elems(kAaren, g);
    auto issue = [&](int64_t tc, int buf) {  // chunk at step tc of the sequence into staging buffer buf
        const int lenc = static_cast<int>(sq.eos - tc < ck::kChunk ? sq.eos - tc : ck::kChunk);
        Elem* base = stage + buf * per_buf;
        stage_rows(base, kw, a.k, sq.b, tc, h, 0, lenc, kAaren ? a.D : L);
        stage_rows(base + ck::kChunk * kw, g.BV, a.v, sq.b, tc, h, e0, lenc, Dv - e0);
        if (!kAaren) stage_rows(base + ck::kChunk * (kw + g.BV), kw, a.q, sq.b, tc, h, 0, lenc, L);
    };
    if (stage != nullptr && sq.bos < sq.eos) {
        issue(sq.bos, 0);
        cp_async_commit();
    }
    int buf = 0;
    for (int64_t t0 = sq.bos; t0 < sq.eos; t0 += ck::kChunk, buf ^= 1) {
        const int len = static_cast<int>(sq.eos - t0 < ck::kChunk ? sq.eos - t0 : ck::kChunk);
        if (stage != nullptr) {
            if (t0 + ck::kChunk < sq.eos) issue(t0 + ck::kChunk, buf ^ 1);
            cp_async_commit();  // (an empty group after the last chunk)
            cp_async_wait<1>();  // chunk t0's copies (this thread's) are done
            __syncthreads();     // ... and every thread's
            const Elem* base = stage + buf * per_buf;
            // staged views: rows at stride kw / BV, batch and head strides 0 (t0 = 0 below); v shifted by e0
            const ck::View<Elem> ks{base, 0, kw, 0, 1, 1}, vs{base + ck::kChunk * kw - e0, 0, g.BV, 0, 1, 1},
                qs = kAaren ? a.q : ck::View<Elem>{base + ck::kChunk * (kw + g.BV), 0, kw, 0, 1, 1};
            ck::load_chunk<kAaren>(s, g, qs, ks, vs, sq.b, h, 0, len, a.D, Dv, e0, a.scale, s.P);
        } else {
            ck::load_chunk<kAaren>(s, g, a.q, a.k, a.v, sq.b, h, t0, len, a.D, Dv, e0, a.scale, s.P);
        }
        ck::chunk_output<kImpl>(s, g);
        const float* Y = s.Y;
        ck::store_rows(a.o + ((sq.b * a.T + t0) * a.H + h) * Dv + e0, a.H * Dv, len, static_cast<int>(cols),
                       [=](int t, int d) { return Y[t * ldV + d]; });
        ck::chunk_summary<kImpl>(s, g, s.W);
        ck::combine_summary(s, g);
    }
    __syncthreads();  // (a zero-length sequence: the initial state loads above)
    if (a.mT) {
        if (tile == 0)
            for (int64_t l = threadIdx.x; l < L; l += blockDim.x) {
                a.mT[row * L + l] = s.m[l];
                a.uT[row * L + l] = s.u[l];
            }
        for (int64_t idx = threadIdx.x; idx < L * cols; idx += blockDim.x) {
            const int64_t l = idx / cols, d = idx - l * cols;
            a.wT[(row * L + l) * Dv + e0 + d] = s.S[l * ldV + d];
        }
    }
}

// Latte bidirectional, step 3: y = p · mean for one chunk (columns [e0, e0 + BV)), mean_l = S_l / α_l of the
// whole sequence (its first slot, written by state_scan_kernel with a.bidir); a [C, Lp] × [Lp, BV] tile product.
template <typename Elem>
__global__ void __launch_bounds__(ck::kThreads) bidir_out_kernel(FwdArgs<Elem> a) {
    FLASHTS_DYNAMIC_SMEM(unsigned char, smem_raw);
    const ck::Geom g = a.g;
    const ck::Tiles s = ck::carve(g, true, smem_raw);
    const ChunkBlock cb = chunk_block(a);
    const ck::Slot sl = ck::slot_of(a.cu, a.N, a.T, cb.b, cb.slot);
    if (sl.len <= 0) return;  // idle slot (uniform over the block)
    const int e0 = cb.tile * g.BV, ldV = g.ldV();
    const int64_t L = a.L, row0 = ((sl.seq.b * a.NS + sl.seq.base) * a.H + cb.h) * L;
    const int groups = g.BV / 4;
    for (int idx = threadIdx.x; idx < g.Lp * groups; idx += blockDim.x) {
        const int l = idx / groups, c = (idx - l * groups) * 4;
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        float inv = 0.f;
        if (l < L && e0 + c < a.Wd) {
            x = *reinterpret_cast<const float4*>(a.ws_w + (row0 + l) * a.Wd + e0 + c);
            const float u = a.ws_u[row0 + l];
            inv = u > 0.f ? 1.f / u : 0.f;  // u ≥ 1 for a non-empty sequence
        }
        float* d = s.S + l * ldV + c;
        d[0] = x.x * inv;
        d[1] = x.y * inv;
        d[2] = x.z * inv;
        d[3] = x.w * inv;
    }
    ck::load_chunk<false>(s, g, a.q, a.k, a.v, cb.b, cb.h, sl.t0, sl.len, a.D, a.Dv, e0, a.scale, s.P, true);
    mmau::block_gemm<kGemmFor<Elem>, mmau::kRow, mmau::kRow>(s.Y, ldV, s.P, g.ldL(), s.S, ldV, ck::kChunk, g.BV,
                                                             g.Lp, false);
    __syncthreads();
    const int cols = static_cast<int>(a.Dv - e0 < g.BV ? a.Dv - e0 : g.BV);
    const float* Y = s.Y;
    ck::store_rows(a.o + ((cb.b * a.T + sl.t0) * a.H + cb.h) * a.Dv + e0, a.H * a.Dv, sl.len, cols,
                   [=](int t, int d) { return Y[t * ldV + d]; });
}

// ---------------------------------------------------------------- Latte bidirectional backward, chunk-parallel
//
// With the whole-sequence state (m, α, S) per latent (the forward's chunk_sum_kernel + state_scan_kernel with
// a.bidir), mean_l = S_l/α_l, π_{s,l} = e^{k_{s,l} − m_l}/α_l, Gm_l = Σ_t p_{t,l} dy_t [L, Dv]:
//   dp_{t,l} = dy_t·mean_l,  dq = p ⊙ (dp − Σ_l p dp),  dv_s = Σ_l π_{s,l} Gm_l,
//   dk_{s,l} = π_{s,l} (v_s·Gm_l − mean_l·Gm_l).
// bidir_dq_kernel (per chunk, all Dv tiles in a loop): Gm_c = P_cᵀ dY_c → ws_g, dP = dY meanᵀ → dq;
// state_scan_kernel (a.plain_sum): Gm = Σ_c Gm_c into the sequence's first slot of ws_g;
// bidir_dkv_kernel (per chunk, all Dv tiles): dv = π Gm, V Gmᵀ and mean·Gm → dk. Tile products on tensor cores
// (16-bit inputs) as in the forward. blockIdx.x = (b·NS + slot)·H + h (a.nBV = 1 for these launches).

// Loads mean = S/α (into dst) of the first slot row0 (columns [e0, e0 + BV)); padded rows/columns 0.
template <typename Elem>
__device__ __forceinline__ void load_mean(const FwdArgs<Elem>& a, int64_t row0, int e0, float* dst, int ldV) {
    const ck::Geom& g = a.g;
    const int groups = g.BV / 4;
    for (int idx = threadIdx.x; idx < g.Lp * groups; idx += blockDim.x) {
        const int l = idx / groups, c = (idx - l * groups) * 4;
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        float inv = 0.f;
        if (l < a.L && e0 + c < a.Wd) {
            x = *reinterpret_cast<const float4*>(a.ws_w + (row0 + l) * a.Wd + e0 + c);
            const float u = a.ws_u[row0 + l];
            inv = u > 0.f ? 1.f / u : 0.f;
        }
        float* d = dst + l * ldV + c;
        d[0] = x.x * inv;
        d[1] = x.y * inv;
        d[2] = x.z * inv;
        d[3] = x.w * inv;
    }
}

// Copies a [Lp][BV] tile of a [cells][L][Wd] workspace row block (columns [e0, e0 + BV)) into dst (or back).
__device__ __forceinline__ void tile_io(float* ws, int64_t row0, int64_t L, int64_t Wd, int e0, float* tile, int ldV,
                                       const ck::Geom& g, bool store) {
    const int groups = g.BV / 4;
    for (int idx = threadIdx.x; idx < g.Lp * groups; idx += blockDim.x) {
        const int l = idx / groups, c = (idx - l * groups) * 4;
        float* t = tile + l * ldV + c;
        if (store) {
            if (l < L && e0 + c < Wd)
                *reinterpret_cast<float4*>(ws + (row0 + l) * Wd + e0 + c) = make_float4(t[0], t[1], t[2], t[3]);
        } else {
            float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
            if (l < L && e0 + c < Wd) x = *reinterpret_cast<const float4*>(ws + (row0 + l) * Wd + e0 + c);
            t[0] = x.x;
            t[1] = x.y;
            t[2] = x.z;
            t[3] = x.w;
        }
    }
}

template <typename Elem>
__global__ void __launch_bounds__(ck::kThreads) bidir_dq_kernel(FwdArgs<Elem> a) {
    FLASHTS_DYNAMIC_SMEM(unsigned char, smem_raw);
    constexpr int kImpl = kGemmFor<Elem>;
    const ck::Geom g = a.g;
    const ck::Tiles s = ck::carve(g, true, smem_raw, true);
    const ChunkBlock cb = chunk_block(a);
    const ck::Slot sl = ck::slot_of(a.cu, a.N, a.T, cb.b, cb.slot);
    if (sl.len <= 0) return;  // idle slot (uniform over the block)
    const int ldV = g.ldV(), ldL = g.ldL(), C = ck::kChunk;
    const int64_t L = a.L, row0 = ((sl.seq.b * a.NS + sl.seq.base) * a.H + cb.h) * L, crow = cb.cell * L;
    ck::load_chunk<false>(s, g, a.q, a.k, a.v, cb.b, cb.h, sl.t0, sl.len, a.D, a.Dv, 0, a.scale, s.P, true);
    for (int e0 = 0; e0 < a.Dv; e0 += g.BV) {
        ck::load_tile(s.V, ldV, C, g.BV, a.dout, cb.b, sl.t0, cb.h, e0, sl.len, a.Dv - e0);  // dY
        load_mean(a, row0, e0, s.S, ldV);
        __syncthreads();
        mmau::block_gemm<kImpl, mmau::kCol, mmau::kRow>(s.W, ldV, s.P, ldL, s.V, ldV, g.Lp, g.BV, C, false);  // Pᵀ dY
        mmau::block_gemm<kImpl, mmau::kRow, mmau::kCol>(s.F, ldL, s.V, ldV, s.S, ldV, C, g.Lp, g.BV, e0 > 0);  // dY meanᵀ
        __syncthreads();
        tile_io(a.ws_g, crow, L, a.Wd, e0, s.W, ldV, g, true);
        __syncthreads();  // (W, V, S are reused by the next tile)
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    for (int t = warp; t < sl.len; t += n_warps) {  // dq = p ⊙ (dp − Σ_l p dp), dp shifted by dp_0 first
        const float z0 = s.F[t * ldL];
        float pz = 0.f;
        for (int l = lane; l < L; l += 32) pz += s.P[t * ldL + l] * (s.F[t * ldL + l] - z0);
        pz = warp_sum(pz);
        for (int l = lane; l < L; l += 32)  // dq into F in place (every lane read z0 before the sum)
            s.F[t * ldL + l] = s.P[t * ldL + l] * ((s.F[t * ldL + l] - z0) - pz);
    }
    __syncthreads();
    const float* Fq = s.F;
    ck::store_rows(a.dq + ((cb.b * a.T + sl.t0) * a.H + cb.h) * L, a.H * L, sl.len, static_cast<int>(L),
                   [=](int t, int l) { return Fq[t * ldL + l]; });
}

template <typename Elem>
__global__ void __launch_bounds__(ck::kThreads) bidir_dkv_kernel(FwdArgs<Elem> a) {
    FLASHTS_DYNAMIC_SMEM(unsigned char, smem_raw);
    constexpr int kImpl = kGemmFor<Elem>;
    const ck::Geom g = a.g;
    const ck::Tiles s = ck::carve(g, true, smem_raw, true);
    const ChunkBlock cb = chunk_block(a);
    const ck::Slot sl = ck::slot_of(a.cu, a.N, a.T, cb.b, cb.slot);
    if (sl.len <= 0) return;  // idle slot (uniform over the block)
    const int ldV = g.ldV(), ldL = g.ldL(), C = ck::kChunk;
    const int64_t L = a.L, row0 = ((sl.seq.b * a.NS + sl.seq.base) * a.H + cb.h) * L;
    for (int l = threadIdx.x; l < g.Lp; l += blockDim.x) {
        s.m[l] = l < L ? a.ws_m[row0 + l] : 0.f;
        const float u = l < L ? a.ws_u[row0 + l] : 0.f;
        s.u[l] = u > 0.f ? 1.f / u : 0.f;
        s.r[l] = 0.f;  // mean_l·Gm_l
    }
    ck::load_tile(s.A, ldL, C, g.Lp, a.k, cb.b, sl.t0, cb.h, 0, sl.len, L);
    __syncthreads();
    for (int idx = threadIdx.x; idx < C * g.Lp; idx += blockDim.x) {  // π = e^{k − m}/α (0 when masked)
        const int t = idx / g.Lp, l = idx - t * g.Lp;
        s.E[t * ldL + l] = (t < sl.len && l < L) ? ck::exp_diff(s.A[t * ldL + l], s.m[l]) * s.u[l] : 0.f;
    }
    for (int e0 = 0; e0 < a.Dv; e0 += g.BV) {
        ck::load_tile(s.V, ldV, C, g.BV, a.v, cb.b, sl.t0, cb.h, e0, sl.len, a.Dv - e0);
        tile_io(a.ws_g, row0, L, a.Wd, e0, s.S, ldV, g, false);  // Gm (whole sequence)
        load_mean(a, row0, e0, s.W, ldV);
        __syncthreads();
        mmau::block_gemm<kImpl, mmau::kRow, mmau::kRow>(s.Y, ldV, s.E, ldL, s.S, ldV, C, g.BV, g.Lp, false);  // π Gm
        mmau::block_gemm<kImpl, mmau::kRow, mmau::kCol>(s.F, ldL, s.V, ldV, s.S, ldV, C, g.Lp, g.BV, e0 > 0);  // V Gmᵀ
        for (int l = threadIdx.x; l < g.Lp; l += blockDim.x) {
            float acc = 0.f;
            for (int d = 0; d < g.BV; ++d) acc = fmaf(s.W[l * ldV + d], s.S[l * ldV + d], acc);
            s.r[l] += acc;
        }
        __syncthreads();
        const int cols = static_cast<int>(a.Dv - e0 < g.BV ? a.Dv - e0 : g.BV);
        const float* Y = s.Y;
        ck::store_rows(a.dv + ((cb.b * a.T + sl.t0) * a.H + cb.h) * a.Dv + e0, a.H * a.Dv, sl.len, cols,
                       [=](int t, int d) { return Y[t * ldV + d]; });
        __syncthreads();
    }
    const float *E = s.E, *F = s.F, *r = s.r;
    ck::store_rows(a.dk + ((cb.b * a.T + sl.t0) * a.H + cb.h) * L, a.H * L, sl.len, static_cast<int>(L),
                   [=](int t, int l) { return E[t * ldL + l] * (F[t * ldL + l] - r[l]); });
}

// Backward, sweep 1: the forward recurrence again, storing per (position, latent) M, c = p/den and
// r = −c·z with z = dy·num/den; Latte also writes dq = p ⊙ (z − Σ_l p z).
template <Kind KIND, typename T>
__global__ void recompute_kernel(Args<T> a) {
    FLASHTS_DYNAMIC_SMEM(float, smem);
    Carve c{smem, 0};
    const RecomputeSmem s(c, a.C, a.L, a.Dv);
    const Row r = row_of(a);
    if (r.row >= a.N * a.H) return;
    const int lane = threadIdx.x, warp = threadIdx.y, G = blockDim.y, C = a.C;
    const int64_t L = a.L, Dv = a.Dv;
    load_state(a, r, s.S, s.m, s.al);
    for (int64_t t0 = r.t_begin; t0 < r.t_end; t0 += C) {
        const int nt = static_cast<int>(r.t_end - t0 < C ? r.t_end - t0 : C);
        __syncthreads();
        load_tile<KIND>(a, r, t0, nt, s.A, s.P, s.V, s.DY);
        __syncthreads();
        for (int64_t l = tid(); l < L; l += nthreads()) {
            float mm = s.m[l], aa = s.al[l];
            for (int t = 0; t < nt; ++t) {
                const int64_t i = t * L + l;
                const float x = s.A[i], Mn = fmaxf(mm, x);
                const float f = exp_shift(mm, Mn), e = exp_shift(x, Mn);
                aa = aa * f + e;
                mm = Mn;
                s.F[i] = f;
                s.A[i] = e;
                s.ID[i] = 1.f / aa;
                s.MT[i] = Mn;
            }
            s.m[l] = mm;
            s.al[l] = aa;
        }
        __syncthreads();
        // z_{t,l} = (dy_t · num_{t,l}) / den_{t,l}: the num recurrence per (l, d), a warp sum over d per step
        for (int64_t l = warp; l < L; l += G) {
            for (int t = 0; t < nt; ++t) {
                const int64_t i = t * L + l;
                const float f = s.F[i], e = s.A[i];
                float part = 0.f;
                for (int64_t d = lane; d < Dv; d += 32) {
                    const float num = s.S[l * Dv + d] * f + e * s.V[t * Dv + d];
                    s.S[l * Dv + d] = num;
                    part += s.DY[t * Dv + d] * num;
                }
                part = warp_sum(part);
                if (lane == 0) s.Z[i] = part * s.ID[i];
            }
        }
        __syncthreads();
        for (int64_t i = tid(); i < nt * L; i += nthreads()) {
            const int64_t t = i / L, l = i % L;
            const int64_t g = flat(r.b, t0 + t, r.h, l, a.T, a.H, L);
            const float cc = s.P[i] * s.ID[i];
            a.ws_M[g] = s.MT[i];
            a.ws_c[g] = cc;
            a.ws_r[g] = -cc * s.Z[i];
        }
        if (KIND == Kind::Latte) {
            // dq = p ⊙ (dp − Σ_l p dp), dp = z; dp is first shifted by dp_0 (exact: Σ_l p = 1) so that a part
            // common to all latents cancels instead of leaving rounding noise
            for (int t = tid(); t < nt; t += nthreads()) {
                const float z0 = s.Z[t * L];
                float pz = 0.f;
                for (int64_t l = 0; l < L; ++l) pz += s.P[t * L + l] * (s.Z[t * L + l] - z0);
                for (int64_t l = 0; l < L; ++l) {
                    const float p = s.P[t * L + l];
                    a.dq[flat(r.b, t0 + t, r.h, l, a.T, a.H, L)] = from_float<T>(p * ((s.Z[t * L + l] - z0) - pz));
                }
            }
        }
    }
}

// Backward, sweep 2: the reverse scan (tiles from the last to the first, steps from the last to the first).
template <Kind KIND, typename T>
__global__ void reverse_kernel(Args<T> a) {
    FLASHTS_DYNAMIC_SMEM(float, smem);
    Carve c{smem, 0};
    const ReverseSmem s(c, a.C, a.G, a.L, a.Dv, KIND == Kind::Aaren ? a.D : 0);
    const Row r = row_of(a);
    if (r.row >= a.N * a.H) return;
    const int lane = threadIdx.x, warp = threadIdx.y, G = blockDim.y, C = a.C;
    const int64_t L = a.L, Dv = a.Dv, LD = a.L * a.Dv;
    const int64_t len = r.t_end - r.t_begin;
    // G_T = dS_T, R_T = dα_T, referred to m_T = M_{T−1}
    for (int64_t i = tid(); i < LD; i += nthreads()) s.Gs[i] = a.dST ? a.dST[r.row * LD + i] : 0.f;
    for (int64_t l = tid(); l < L; l += nthreads()) {
        s.R[l] = a.daT ? a.daT[r.row * L + l] : 0.f;
        s.Mn[l] = len > 0 ? a.ws_M[flat(r.b, r.t_end - 1, r.h, l, a.T, a.H, L)] : 0.f;
    }
    if (KIND == Kind::Aaren)
        for (int64_t j = tid(); j < a.D; j += nthreads()) s.DQ[j] = 0.f;
    const int64_t n_tiles = cdiv64(len, C);
    for (int64_t tile = n_tiles - 1; tile >= 0; --tile) {
        const int64_t t0 = r.t_begin + tile * C;
        const int nt = static_cast<int>(r.t_end - t0 < C ? r.t_end - t0 : C);
        __syncthreads();
        load_tile<KIND>(a, r, t0, nt, s.A, nullptr, s.V, s.DY);
        __syncthreads();
        // per latent, backwards in time: decay e^{M_t − M_{t+1}}, e^{a_t − M_t}, c_t and R_t
        for (int64_t l = tid(); l < L; l += nthreads()) {
            float Mnext = s.Mn[l], Rc = s.R[l];
            for (int t = nt - 1; t >= 0; --t) {
                const int64_t i = t * L + l;
                const int64_t g = flat(r.b, t0 + t, r.h, l, a.T, a.H, L);
                const float M = a.ws_M[g];
                const float dec = exp_shift(M, Mnext);
                Rc = a.ws_r[g] + dec * Rc;
                s.DEC[i] = dec;
                s.A[i] = exp_shift(s.A[i], M);
                s.CC[i] = a.ws_c[g];
                s.RT[i] = Rc;
                Mnext = M;
            }
            s.Mn[l] = Mnext;
            s.R[l] = Rc;
        }
        __syncthreads();
        // per (l, d): G = c·dy + dec·G; dv partials; da = e^{a − M} (G·v + R) via a warp sum over d
        float* DVw = s.DVP + static_cast<int64_t>(warp) * C * Dv;
        for (int64_t d = lane; d < Dv; d += 32)
            for (int t = 0; t < nt; ++t) DVw[t * Dv + d] = 0.f;
        for (int64_t l = warp; l < L; l += G) {
            for (int t = nt - 1; t >= 0; --t) {
                const int64_t i = t * L + l;
                const float cc = s.CC[i], dec = s.DEC[i], ea = s.A[i];
                float part = 0.f;
                for (int64_t d = lane; d < Dv; d += 32) {
                    const float gv = cc * s.DY[t * Dv + d] + dec * s.Gs[l * Dv + d];
                    s.Gs[l * Dv + d] = gv;
                    DVw[t * Dv + d] += ea * gv;
                    part += gv * s.V[t * Dv + d];
                }
                part = warp_sum(part);
                if (lane == 0) s.DA[i] = ea * (part + s.RT[i]);
            }
        }
        __syncthreads();
        for (int64_t i = tid(); i < nt * Dv; i += nthreads()) {
            const int64_t t = i / Dv, d = i % Dv;
            float acc = 0.f;
            for (int w = 0; w < G; ++w) acc += s.DVP[(static_cast<int64_t>(w) * C + t) * Dv + d];
            a.dv[flat(r.b, t0 + t, r.h, d, a.T, a.H, Dv)] = from_float<T>(acc);
        }
        if (KIND == Kind::Latte) {
            for (int64_t i = tid(); i < nt * L; i += nthreads()) {
                const int64_t t = i / L, l = i % L;
                a.dk[flat(r.b, t0 + t, r.h, l, a.T, a.H, L)] = from_float<T>(s.DA[i]);
            }
        } else {
            // a_t = scale·(q·k_t): dk_t = scale·da_t·q, dq += scale·Σ_t da_t k_t (thread per j, t ascending)
            const T* qr = a.q + r.b * a.sq_b + r.h * a.sq_h;
            for (int64_t i = tid(); i < nt * a.D; i += nthreads()) {
                const int64_t t = i / a.D, j = i % a.D;
                a.dk[flat(r.b, t0 + t, r.h, j, a.T, a.H, a.D)] = from_float<T>(a.scale * s.DA[t] * to_float(qr[j * a.sq_x]));
            }
            for (int64_t j = tid(); j < a.D; j += nthreads()) {
                float acc = 0.f;
                for (int t = 0; t < nt; ++t)
                    acc += s.DA[t] * to_float(a.k[r.b * a.sk_b + (t0 + t) * a.sk_t + r.h * a.sk_h + j * a.sk_x]);
                s.DQ[j] += a.scale * acc;
            }
        }
    }
    __syncthreads();
    if (a.da0) {  // initial-state gradients: e^{m0 − M_0} (G_0, R_0); pass-through for a zero-length row
        for (int64_t i = tid(); i < LD; i += nthreads()) {
            const int64_t l = i / Dv;
            const float m0 = a.m0 ? a.m0[r.row * L + l] : -CUDART_INF_F;
            const float f = len > 0 ? exp_shift(m0, s.Mn[l]) : 1.f;
            a.dS0[r.row * LD + i] = f * s.Gs[i];
        }
        for (int64_t l = tid(); l < L; l += nthreads()) {
            const float m0 = a.m0 ? a.m0[r.row * L + l] : -CUDART_INF_F;
            const float f = len > 0 ? exp_shift(m0, s.Mn[l]) : 1.f;
            a.da0[r.row * L + l] = f * s.R[l];
        }
    }
    if (KIND == Kind::Aaren)
        for (int64_t j = tid(); j < a.D; j += nthreads()) a.dq_rows[r.row * a.D + j] = s.DQ[j];
}

// Latte bidirectional backward: state sweep (max, Z, S) → mean; Gm = Σ_t p dy and dq; then dv, dk.
template <typename T>
__global__ void bidir_bwd_kernel(Args<T> a) {
    FLASHTS_DYNAMIC_SMEM(float, smem);
    Carve c{smem, 0};
    const BidirBwdSmem s(c, a.C, a.G, a.L, a.Dv);
    const Row r = row_of(a);
    if (r.row >= a.N * a.H) return;
    const int lane = threadIdx.x, warp = threadIdx.y, G = blockDim.y, C = a.C;
    const int64_t L = a.L, Dv = a.Dv, LD = a.L * a.Dv;
    load_state(a, r, s.f.S, s.f.m, s.f.al);  // a.m0 is null: the empty state
    forward_sweep<Kind::Latte>(a, r, s.f, Sweep::StateOnly);  // ends with __syncthreads()
    float* MEAN = s.f.S;
    for (int64_t i = tid(); i < LD; i += nthreads()) {
        const float al = s.f.al[i / Dv];
        MEAN[i] = al > 0.f ? MEAN[i] / al : 0.f;  // al ≥ 1 for a non-empty row
        s.GA[i] = 0.f;
    }
    // sweep 2: Gm_l = Σ_t p_{t,l} dy_t; dp_{t,l} = dy_t·mean_l → dq
    for (int64_t t0 = r.t_begin; t0 < r.t_end; t0 += C) {
        const int nt = static_cast<int>(r.t_end - t0 < C ? r.t_end - t0 : C);
        __syncthreads();
        load_tile<Kind::Latte>(a, r, t0, nt, nullptr, s.f.P, nullptr, s.DY);
        __syncthreads();
        for (int64_t l = warp; l < L; l += G) {
            for (int t = 0; t < nt; ++t) {
                const float p = s.f.P[t * L + l];
                float part = 0.f;
                for (int64_t d = lane; d < Dv; d += 32) {
                    const float dy = s.DY[t * Dv + d];
                    s.GA[l * Dv + d] += p * dy;
                    part += dy * MEAN[l * Dv + d];
                }
                part = warp_sum(part);
                if (lane == 0) s.DP[t * L + l] = part;
            }
        }
        __syncthreads();
        for (int t = tid(); t < nt; t += nthreads()) {
            const float z0 = s.DP[t * L];
            float pz = 0.f;
            for (int64_t l = 0; l < L; ++l) pz += s.f.P[t * L + l] * (s.DP[t * L + l] - z0);
            for (int64_t l = 0; l < L; ++l) {
                const float p = s.f.P[t * L + l];
                a.dq[flat(r.b, t0 + t, r.h, l, a.T, a.H, L)] = from_float<T>(p * ((s.DP[t * L + l] - z0) - pz));
            }
        }
    }
    __syncthreads();
    // mean_l · Gm_l
    for (int64_t l = warp; l < L; l += G) {
        float part = 0.f;
        for (int64_t d = lane; d < Dv; d += 32) part += MEAN[l * Dv + d] * s.GA[l * Dv + d];
        part = warp_sum(part);
        if (lane == 0) s.MG[l] = part;
    }
    // sweep 3: π = e^{k − max}/Z; dv_s = Σ_l π Gm_l; dk = π (v_s·Gm_l − mean_l·Gm_l)
    for (int64_t t0 = r.t_begin; t0 < r.t_end; t0 += C) {
        const int nt = static_cast<int>(r.t_end - t0 < C ? r.t_end - t0 : C);
        __syncthreads();
        load_tile<Kind::Latte>(a, r, t0, nt, s.f.A, nullptr, s.f.V, nullptr);
        __syncthreads();
        float* DVw = s.f.Y + static_cast<int64_t>(warp) * C * Dv;
        for (int64_t d = lane; d < Dv; d += 32)
            for (int t = 0; t < nt; ++t) DVw[t * Dv + d] = 0.f;
        for (int64_t l = warp; l < L; l += G) {
            const float mx = s.f.m[l], inv_z = 1.f / s.f.al[l];
            for (int t = 0; t < nt; ++t) {
                const float pi = exp_shift(s.f.A[t * L + l], mx) * inv_z;
                float part = 0.f;
                for (int64_t d = lane; d < Dv; d += 32) {
                    const float gm = s.GA[l * Dv + d];
                    DVw[t * Dv + d] += pi * gm;
                    part += s.f.V[t * Dv + d] * gm;
                }
                part = warp_sum(part);
                if (lane == 0) s.DP[t * L + l] = pi * (part - s.MG[l]);
            }
        }
        __syncthreads();
        for (int64_t i = tid(); i < nt * Dv; i += nthreads()) {
            const int64_t t = i / Dv, d = i % Dv;
            float acc = 0.f;
            for (int w = 0; w < G; ++w) acc += s.f.Y[(static_cast<int64_t>(w) * C + t) * Dv + d];
            a.dv[flat(r.b, t0 + t, r.h, d, a.T, a.H, Dv)] = from_float<T>(acc);
        }
        for (int64_t i = tid(); i < nt * L; i += nthreads()) {
            const int64_t t = i / L, l = i % L;
            a.dk[flat(r.b, t0 + t, r.h, l, a.T, a.H, L)] = from_float<T>(s.DP[i]);
        }
    }
}

// ------------------------------------------------------------------------------------------- host side

template <typename T>
struct TypeTag {
    using type = T;
};

template <typename Fn>
cudaError_t dispatch(DType dtype, Fn&& fn) {
    switch (dtype) {
        case DType::F32: return fn(TypeTag<float>{});
        case DType::F16: return fn(TypeTag<__half>{});
        case DType::BF16: return fn(TypeTag<__nv_bfloat16>{});
    }
    return cudaErrorInvalidValue;
}

template <typename T>
Args<T> make_args(ScanTensor q, ScanTensor k, ScanTensor v, ScanTensor dout, const ScanSizes& sz, float scale) {
    Args<T> a{};
    a.q = static_cast<const T*>(q.data);
    a.sq_b = q.stride_b; a.sq_t = q.stride_t; a.sq_h = q.stride_h; a.sq_x = q.stride_x;
    a.k = static_cast<const T*>(k.data);
    a.sk_b = k.stride_b; a.sk_t = k.stride_t; a.sk_h = k.stride_h; a.sk_x = k.stride_x;
    a.v = static_cast<const T*>(v.data);
    a.sv_b = v.stride_b; a.sv_t = v.stride_t; a.sv_h = v.stride_h; a.sv_x = v.stride_x;
    a.dout = static_cast<const T*>(dout.data);
    a.sd_b = dout.stride_b; a.sd_t = dout.stride_t; a.sd_h = dout.stride_h; a.sd_x = dout.stride_x;
    a.B = sz.B; a.T = sz.T; a.H = sz.H; a.L = sz.L; a.D = sz.D; a.Dv = sz.Dv; a.N = sz.N;
    a.cu_seqlens = sz.cu_seqlens;
    a.scale = scale;
    return a;
}

bool sizes_ok(const ScanSizes& sz) {
    if (sz.B < 0 || sz.T < 0 || sz.H <= 0 || sz.L <= 0 || sz.D <= 0 || sz.Dv <= 0 || sz.N < 0) return false;
    if (sz.cu_seqlens && sz.B != 1) return false;
    if (!sz.cu_seqlens && sz.N != sz.B) return false;
    return sz.N * sz.H <= 2147483647LL;
}

// Picks the time tile C and the number of warps G (≤ L) so that the kernel's shared memory fits: first within
// the default 48 KB, otherwise within the device's opt-in maximum (then the attribute is raised for `kernel`).
// smem_of(C, G) returns the bytes. Returns cudaErrorInvalidConfiguration when not even C = G = 1 fits.
template <typename Kernel, typename SmemOf>
cudaError_t configure(Kernel kernel, int64_t L, SmemOf smem_of, int& C_out, int& G_out, int64_t& bytes_out) {
    int dev = 0, optin = 0;
    cudaError_t err = cudaGetDevice(&dev);
    if (err != cudaSuccess) return err;
    err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (err != cudaSuccess) return err;
    const int g_max = static_cast<int>(L < MAX_WARPS ? L : MAX_WARPS);
    const int64_t budgets[2] = {DEFAULT_SMEM, optin > DEFAULT_SMEM ? static_cast<int64_t>(optin) : DEFAULT_SMEM};
    for (int64_t budget : budgets) {
        for (int C = 32; C >= 1; C /= 2) {
            for (int G = g_max; G >= 1; G /= 2) {
                const int64_t bytes = smem_of(C, G);
                if (bytes <= budget) {
                    C_out = C;
                    G_out = G;
                    bytes_out = bytes;
                    if (bytes > DEFAULT_SMEM) {
                        err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   static_cast<int>(bytes));
                        if (err != cudaSuccess) return err;
                    }
                    return cudaSuccess;
                }
            }
        }
    }
    return cudaErrorInvalidConfiguration;
}

template <Kind KIND, typename T>
cudaError_t launch_forward(Args<T> a, bool causal, cudaStream_t stream) {
    if (a.N * a.H == 0) return cudaSuccess;
    auto kernel = forward_kernel<KIND, T>;
    int64_t bytes = 0;
    cudaError_t err = configure(kernel, a.L, [&](int C, int G) {
        Carve c{nullptr, 0};
        FwdSmem s(c, C, G, a.L, a.Dv);
        return c.used * static_cast<int64_t>(sizeof(float));
    }, a.C, a.G, bytes);
    if (err != cudaSuccess) return err;
    FLASHTS_LAUNCH(kernel, static_cast<unsigned>(a.N * a.H), dim3(32, a.G), static_cast<size_t>(bytes), stream, a, causal);
    return FLASHTS_LAUNCH_CHECK();
}

constexpr int kMaxBV = 64;  // the chunk kernels' widest Dv tile
constexpr int64_t kMinGroupChunks = kScanAhead;  // two-level scans: the fewest chunks per group

// The groups of a two-level scan of `chains` independent chains over NS chunk slots: G = 1 (one level, cpg = NS)
// when ⌈chains / 128⌉ blocks fill the SMs; else G = ⌈SMs·128 / chains⌉ groups (at most NS / kMinGroupChunks) of
// cpg = ⌈NS / G⌉ chunks, G then recomputed as ⌈NS / cpg⌉ (no empty trailing group).
inline void scan_groups(int64_t chains, int64_t NS, int sms, int64_t* G, int64_t* cpg) {
    *G = 1;
    *cpg = NS;
    if (chains <= 0 || cdiv64(chains, ck::kThreads) >= sms) return;
    const int64_t most = NS / kMinGroupChunks, want = cdiv64(int64_t(sms) * ck::kThreads, chains);
    const int64_t g = want < most ? want : most;
    if (g <= 1) return;
    *cpg = cdiv64(NS, g);
    *G = cdiv64(NS, *cpg);
}

// Shared memory of the chunk kernels (chunked mode: the larger of the summary and output kernels) and of
// onepass_kernel, at Dv tile bv.
int64_t chunk_smem(bool aaren, const ScanSizes& sz, int bv) {
    const ck::Geom g = ck::make_geom(aaren, sz.L, sz.D, bv);
    const int64_t a = ck::carve(g, true, nullptr).bytes, b = ck::carve(g, false, nullptr).bytes;
    return a > b ? a : b;
}
int64_t onepass_smem(bool aaren, const ScanSizes& sz, int bv) {
    return ck::carve(ck::make_geom(aaren, sz.L, sz.D, bv), true, nullptr, true).bytes;
}

// The occupancy rule (see ScanPlan in prefix_scan.h). sz: Aaren with L = 1, Latte with D = L.
cudaError_t plan_forward(bool aaren, const ScanSizes& sz, bool causal, const ScanOptions& opt, ScanPlan* plan) {
    int sms = 0, max_smem = 0;
    cudaError_t err = device_facts(opt, &sms, &max_smem);
    if (err != cudaSuccess) return err;
    const bool packed = sz.cu_seqlens != nullptr;
    const int Dvp = round_up(static_cast<int>(sz.Dv), 16);
    const int64_t NS = ck::num_slots(sz.T, sz.N, packed), Wd = (sz.Dv + 3) / 4 * 4;
    int bv0 = Dvp < kMaxBV ? Dvp : kMaxBV;
    while (bv0 > 16 && chunk_smem(aaren, sz, bv0) > max_smem) bv0 = round_up(bv0 / 2, 16);
    const bool chunk_ok = (causal || !aaren) && chunk_smem(aaren, sz, bv0) <= max_smem;
    // one pass: onepass_kernel (causal, N·H·⌈Dv/BV⌉ blocks) or, bidirectional, forward_kernel (N·H blocks)
    auto chunk_blocks = [&](int bv) { return sz.B * NS * sz.H * cdiv64(Dvp, bv); };
    auto seq_blocks = [&](int bv) { return sz.N * sz.H * (causal ? cdiv64(Dvp, bv) : 1); };
    ScanMode mode = opt.mode;
    if (mode == ScanMode::Auto) {
        if (!chunk_ok || seq_blocks(bv0) >= 2 * int64_t(sms)) mode = ScanMode::OnePass;
        else if (chunk_blocks(bv0) >= sms && chunk_blocks(bv0) > seq_blocks(bv0)) mode = ScanMode::Chunked;
        else mode = seq_blocks(16) >= chunk_blocks(16) ? ScanMode::OnePass : ScanMode::Chunked;
    }
    if (mode == ScanMode::Chunked && !chunk_ok) return cudaErrorInvalidConfiguration;
    int bv = bv0;
    if (mode == ScanMode::Chunked) {
        while (chunk_blocks(bv) < sms && bv > 16) bv = round_up(bv / 2, 16);
    } else {
        while (bv > 16 && (seq_blocks(bv) < sms || onepass_smem(aaren, sz, bv) > max_smem)) bv = round_up(bv / 2, 16);
    }
    plan->mode = mode;
    plan->C = ck::kChunk;
    plan->BV = bv;
    plan->NS = mode == ScanMode::Chunked ? NS : 0;
    plan->seq_blocks = seq_blocks(bv);
    plan->chunk_blocks = mode == ScanMode::Chunked ? chunk_blocks(bv) : 0;
    // the state scan: one level when its chains fill the SMs, else G groups (two-level; see state_scan_kernel)
    const int64_t chains = sz.N * sz.H * sz.L * (Wd / 4);
    int64_t G = 1, cpg = NS;
    if (mode == ScanMode::Chunked) scan_groups(chains, NS, sms, &G, &cpg);
    plan->scan_groups = mode == ScanMode::Chunked ? static_cast<int>(G) : 0;
    plan->scan_group_chunks = mode == ScanMode::Chunked ? cpg : 0;
    plan->scan_blocks = mode == ScanMode::Chunked ? cdiv64(chains * G, ck::kThreads) : 0;
    plan->workspace_bytes =
        mode == ScanMode::Chunked
            ? ws_layout(sz.B, NS, sz.H, sz.L, Wd, G > 1 ? sz.N * sz.H * sz.L * G : 0).floats * int64_t(sizeof(float))
            : 0;
    return cudaSuccess;
}

// The kernels' arguments for the plan (workspace pointers set by launch_chunked).
template <bool kAaren, typename Elem>
FwdArgs<Elem> chunk_args(const Args<Elem>& a0, bool causal, const ScanPlan& plan) {
    FwdArgs<Elem> a{};
    const ScanTensor q{a0.q, a0.sq_b, a0.sq_t, a0.sq_h, a0.sq_x}, k{a0.k, a0.sk_b, a0.sk_t, a0.sk_h, a0.sk_x},
        v{a0.v, a0.sv_b, a0.sv_t, a0.sv_h, a0.sv_x};
    a.q = ck::make_view<Elem>(q, kAaren ? a0.D : a0.L);
    a.k = ck::make_view<Elem>(k, kAaren ? a0.D : a0.L);
    a.v = ck::make_view<Elem>(v, a0.Dv);
    if (kAaren) a.q.vec = 0;  // q [B, H, D]: read once per block, element by element
    a.o = a0.o;
    a.B = a0.B; a.T = a0.T; a.H = a0.H; a.L = a0.L; a.D = a0.D; a.Dv = a0.Dv; a.N = a0.N;
    a.NS = plan.NS;
    a.Wd = (a0.Dv + 3) / 4 * 4;
    a.cu = a0.cu_seqlens;
    a.scale = a0.scale;
    a.g = ck::make_geom(kAaren, a0.L, a0.D, plan.BV);
    a.nBV = static_cast<int>(cdiv64(a0.Dv, plan.BV));
    a.m0 = a0.m0; a.u0 = a0.a0; a.w0 = a0.S0;
    a.mT = a0.mT; a.uT = a0.aT; a.wT = a0.ST;
    a.bidir = causal ? 0 : 1;
    a.G = plan.scan_groups > 1 ? plan.scan_groups : 1;
    a.CPG = plan.scan_group_chunks;
    return a;
}

// The workspace arrays of the plan (ws_layout) in a's pointers.
template <typename Elem>
void bind_workspace(FwdArgs<Elem>& a, float* ws) {
    const WsLayout ly = ws_layout(a.B, a.NS, a.H, a.L, a.Wd, a.G > 1 ? a.N * a.H * a.L * a.G : 0);
    a.ws_cm = ws + ly.cm; a.ws_cs = ws + ly.cs; a.ws_m = ws + ly.m; a.ws_u = ws + ly.u; a.ws_w = ws + ly.w;
    if (a.G > 1) {
        a.ws_lm = ws + ly.lm; a.ws_lu = ws + ly.lu; a.ws_gm = ws + ly.gm; a.ws_gu = ws + ly.gu;
        a.ws_gem = ws + ly.gem; a.ws_geu = ws + ly.geu; a.ws_gw = ws + ly.gw;
    }
}

// The state scan of the plan: state_scan_kernel, and when two-level (a.G > 1) group_scan_kernel and (causal)
// group_apply_kernel.
template <typename Elem>
cudaError_t launch_state_scan(const FwdArgs<Elem>& a, const ScanPlan& plan, cudaStream_t stream) {
    if (plan.scan_blocks <= 0) return cudaSuccess;
    auto scan_kernel = state_scan_kernel<Elem>;
    FLASHTS_LAUNCH(scan_kernel, static_cast<unsigned>(plan.scan_blocks), ck::kThreads, 0, stream, a);
    cudaError_t err = FLASHTS_LAUNCH_CHECK();
    if (err != cudaSuccess || a.G <= 1) return err;
    auto group_kernel = group_scan_kernel<Elem>;
    const int64_t chains = a.N * a.H * a.L * (a.Wd / 4);
    FLASHTS_LAUNCH(group_kernel, static_cast<unsigned>(cdiv64(chains, ck::kThreads)), ck::kThreads, 0, stream, a);
    if ((err = FLASHTS_LAUNCH_CHECK()) != cudaSuccess || a.bidir) return err;
    auto apply_kernel = group_apply_kernel<Elem>;
    FLASHTS_LAUNCH(apply_kernel, static_cast<unsigned>(plan.scan_blocks), ck::kThreads, 0, stream, a);
    return FLASHTS_LAUNCH_CHECK();
}

// The chunk-parallel forward: three launches on `stream` (see the section comment above chunk_sum_kernel).
template <bool kAaren, typename Elem>
cudaError_t launch_chunked(const Args<Elem>& a0, bool causal, const ScanPlan& plan, void* workspace,
                           int64_t workspace_bytes, cudaStream_t stream) {
    if (workspace_bytes < plan.workspace_bytes || (plan.workspace_bytes > 0 && workspace == nullptr) ||
        reinterpret_cast<uintptr_t>(workspace) % 16 != 0)
        return cudaErrorInvalidValue;
    FwdArgs<Elem> a = chunk_args<kAaren>(a0, causal, plan);
    bind_workspace(a, static_cast<float*>(workspace));
    const int64_t blocks = a.B * a.NS * a.H * a.nBV;
    if (blocks > 0x7fffffffLL || plan.scan_blocks > 0x7fffffffLL) return cudaErrorInvalidValue;
    auto sum_kernel = chunk_sum_kernel<kAaren, Elem>;
    auto out_kernel = causal ? chunk_out_kernel<kAaren, Elem> : bidir_out_kernel<Elem>;
    const int64_t bytes_sum = ck::carve(a.g, false, nullptr).bytes, bytes_out = ck::carve(a.g, true, nullptr).bytes;
    cudaError_t err = cudaFuncSetAttribute(sum_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(bytes_sum));
    if (err == cudaSuccess)
        err = cudaFuncSetAttribute(out_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   static_cast<int>(bytes_out));
    if (err != cudaSuccess) return err;
    if (blocks > 0) {
        FLASHTS_LAUNCH(sum_kernel, static_cast<unsigned>(blocks), ck::kThreads, static_cast<size_t>(bytes_sum),
                       stream, a);
        if ((err = cudaGetLastError()) != cudaSuccess) return err;
    }
    if ((err = launch_state_scan(a, plan, stream)) != cudaSuccess) return err;
    if (blocks > 0) {
        FLASHTS_LAUNCH(out_kernel, static_cast<unsigned>(blocks), ck::kThreads, static_cast<size_t>(bytes_out),
                       stream, a);
        err = cudaGetLastError();
    }
    return err;
}

// The causal one pass (onepass_kernel): N·H·⌈Dv/BV⌉ blocks.
template <bool kAaren, typename Elem>
cudaError_t launch_onepass(const Args<Elem>& a0, const ScanPlan& plan, cudaStream_t stream) {
    FwdArgs<Elem> a = chunk_args<kAaren>(a0, true, plan);
    const int64_t blocks = a.N * a.H * a.nBV;
    if (blocks == 0) return cudaSuccess;
    if (blocks > 0x7fffffffLL) return cudaErrorInvalidValue;
    auto kernel = onepass_kernel<kAaren, Elem>;
    int64_t bytes = ck::carve(a.g, true, nullptr, true).bytes;
    // cp.async staging when every staged row is 16-byte aligned and the two buffers fit the shared memory
    int sms = 0, max_smem = 0;
    if (device_facts(ScanOptions{0, 0, ScanMode::Auto}, &sms, &max_smem) != cudaSuccess) return cudaErrorUnknown;
    const int64_t off = (bytes + 127) / 128 * 128,
                  staged = off + 2 * onepass_stage_elems(kAaren, a.g) * int64_t(sizeof(Elem));
    if (a.k.vec && a.v.vec && (kAaren || a.q.vec) && staged <= max_smem) {
        a.stage_off = off;
        bytes = staged;
    }
    cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
    if (err != cudaSuccess) return err;
    FLASHTS_LAUNCH(kernel, static_cast<unsigned>(blocks), ck::kThreads, static_cast<size_t>(bytes), stream, a);
    return cudaGetLastError();
}

// Latte bidirectional backward, chunk-parallel: the forward's chunked plan (mode forced) plus the Gm workspace.
cudaError_t plan_bidir_backward(const ScanSizes& sz, ScanOptions opt, ScanPlan* plan) {
    opt.mode = ScanMode::Chunked;
    const cudaError_t err = plan_forward(false, sz, false, opt, plan);
    if (err != cudaSuccess) return err;
    plan->workspace_bytes += sz.B * plan->NS * sz.H * sz.L * ((sz.Dv + 3) / 4 * 4) * int64_t(sizeof(float));
    return cudaSuccess;
}

// Five launches: chunk_sum_kernel, state_scan_kernel (whole-sequence state), bidir_dq_kernel, state_scan_kernel
// (plain sum of Gm), bidir_dkv_kernel.
template <typename Elem>
cudaError_t launch_bidir_backward(const Args<Elem>& a0, const ScanPlan& plan, void* workspace,
                                  int64_t workspace_bytes, cudaStream_t stream) {
    if (workspace_bytes < plan.workspace_bytes || (plan.workspace_bytes > 0 && workspace == nullptr) ||
        reinterpret_cast<uintptr_t>(workspace) % 16 != 0)
        return cudaErrorInvalidValue;
    FwdArgs<Elem> a = chunk_args<false>(a0, false, plan);
    float* ws = static_cast<float*>(workspace);
    bind_workspace(a, ws);
    a.ws_g = ws + ws_layout(a.B, a.NS, a.H, a.L, a.Wd, a.G > 1 ? a.N * a.H * a.L * a.G : 0).floats;
    const ScanTensor dout{a0.dout, a0.sd_b, a0.sd_t, a0.sd_h, a0.sd_x};
    a.dout = ck::make_view<Elem>(dout, a0.Dv);
    a.dq = a0.dq; a.dk = a0.dk; a.dv = a0.dv;
    a.mT = a.uT = a.wT = nullptr;
    const int64_t blocks = a.B * a.NS * a.H * a.nBV, rows = a.B * a.NS * a.H;
    if (blocks > 0x7fffffffLL || plan.scan_blocks > 0x7fffffffLL) return cudaErrorInvalidValue;
    auto sum_kernel = chunk_sum_kernel<false, Elem>;
    auto dq_kernel = bidir_dq_kernel<Elem>;
    auto dkv_kernel = bidir_dkv_kernel<Elem>;
    const int64_t bytes_sum = ck::carve(a.g, false, nullptr).bytes, bytes = ck::carve(a.g, true, nullptr, true).bytes;
    cudaError_t err = cudaFuncSetAttribute(sum_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(bytes_sum));
    if (err == cudaSuccess)
        err = cudaFuncSetAttribute(dq_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
    if (err == cudaSuccess)
        err = cudaFuncSetAttribute(dkv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
    if (err != cudaSuccess || rows == 0) return err;
    FwdArgs<Elem> per_chunk = a;  // one block per chunk, all Dv tiles in a loop
    per_chunk.nBV = 1;
    FwdArgs<Elem> gsum = a;  // the plain sum of Gm along the chunks
    gsum.plain_sum = 1;
    gsum.ws_w = a.ws_g;
    FLASHTS_LAUNCH(sum_kernel, static_cast<unsigned>(blocks), ck::kThreads, static_cast<size_t>(bytes_sum), stream, a);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    if ((err = launch_state_scan(a, plan, stream)) != cudaSuccess) return err;
    FLASHTS_LAUNCH(dq_kernel, static_cast<unsigned>(rows), ck::kThreads, static_cast<size_t>(bytes), stream, per_chunk);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    if ((err = launch_state_scan(gsum, plan, stream)) != cudaSuccess) return err;
    FLASHTS_LAUNCH(dkv_kernel, static_cast<unsigned>(rows), ck::kThreads, static_cast<size_t>(bytes), stream,
                   per_chunk);
    return cudaGetLastError();
}

// The forward: the plan's mode (chunked: launch_chunked; one pass: onepass_kernel, or forward_kernel when not causal).
template <Kind KIND, typename T>
cudaError_t run_forward(Args<T> a, bool causal, const ScanOptions& opt, void* workspace, int64_t workspace_bytes,
                        cudaStream_t stream) {
    const ScanSizes sz{a.B, a.T, a.H, a.L, a.D, a.Dv, a.N, a.cu_seqlens};
    ScanPlan plan{};
    cudaError_t err = plan_forward(KIND == Kind::Aaren, sz, causal, opt, &plan);
    if (err != cudaSuccess) return err;
    if (plan.mode == ScanMode::Chunked)
        return launch_chunked<KIND == Kind::Aaren, T>(a, causal, plan, workspace, workspace_bytes, stream);
    int sms = 0, max_smem = 0;
    if ((err = device_facts(opt, &sms, &max_smem)) != cudaSuccess) return err;
    const bool fits = onepass_smem(KIND == Kind::Aaren, sz, plan.BV) <= max_smem;
    if (causal && fits) return launch_onepass<KIND == Kind::Aaren, T>(a, plan, stream);
    return launch_forward<KIND>(a, causal, stream);  // bidirectional, or a state too large for onepass_kernel
}

template <Kind KIND, typename T>
cudaError_t launch_backward(Args<T> a, bool causal, cudaStream_t stream) {
    if (a.N * a.H == 0) return cudaSuccess;
    const unsigned grid = static_cast<unsigned>(a.N * a.H);
    int64_t bytes = 0;
    cudaError_t err;
    if (!causal) {
        if (KIND != Kind::Latte) return cudaErrorInvalidValue;
        auto kernel = bidir_bwd_kernel<T>;
        err = configure(kernel, a.L, [&](int C, int G) {
            Carve c{nullptr, 0};
            BidirBwdSmem s(c, C, G, a.L, a.Dv);
            return c.used * static_cast<int64_t>(sizeof(float));
        }, a.C, a.G, bytes);
        if (err != cudaSuccess) return err;
        FLASHTS_LAUNCH(kernel, grid, dim3(32, a.G), static_cast<size_t>(bytes), stream, a);
        return FLASHTS_LAUNCH_CHECK();
    }
    {
        auto kernel = recompute_kernel<KIND, T>;
        err = configure(kernel, a.L, [&](int C, int G) {
            Carve c{nullptr, 0};
            RecomputeSmem s(c, C, a.L, a.Dv);
            (void)G;
            return c.used * static_cast<int64_t>(sizeof(float));
        }, a.C, a.G, bytes);
        if (err != cudaSuccess) return err;
        FLASHTS_LAUNCH(kernel, grid, dim3(32, a.G), static_cast<size_t>(bytes), stream, a);
        err = FLASHTS_LAUNCH_CHECK();
        if (err != cudaSuccess) return err;
    }
    {
        auto kernel = reverse_kernel<KIND, T>;
        const int64_t Dq = KIND == Kind::Aaren ? a.D : 0;
        err = configure(kernel, a.L, [&](int C, int G) {
            Carve c{nullptr, 0};
            ReverseSmem s(c, C, G, a.L, a.Dv, Dq);
            return c.used * static_cast<int64_t>(sizeof(float));
        }, a.C, a.G, bytes);
        if (err != cudaSuccess) return err;
        FLASHTS_LAUNCH(kernel, grid, dim3(32, a.G), static_cast<size_t>(bytes), stream, a);
        return FLASHTS_LAUNCH_CHECK();
    }
}


// =============================================================================================================
// Causal backward, chunk-parallel (the Triton "chunked" backward of kernels/prefix_scan.py in CUDA C++).
//
// Chunks of ck::kChunk = 16 steps and their slots as in the forward (csrc/scan_chunk.cuh: ck::slot_of); a chunk
// "cell" is (b·NS + slot)·H + h, the workspace rows as in ws_layout. Launches (every chunk of every head in
// parallel except the two light element-wise scans):
//   1. chunk_sum_kernel + state_scan_kernel (the forward's, Dv tile of plan_forward in "chunked" mode): the state
//      (m_in, α_in, S_in) ENTERING every chunk, in the forward's workspace layout (ws_m, ws_u, ws_w).
//   2. chunk_bwd_kernel<kCot>   grid B·NS·H: each chunk's affine cotangent map, entering = f ⊙ leaving + (G, g),
//                               f = e^{m_in − r} (r = max(m_in, c_max), the max leaving the chunk).
//   3. cot_scan_kernel          one thread per (sequence, head, l, d): reverse scan of the maps from (dS_T, dα_T)
//                               → the cotangent LEAVING every chunk (written over (G, g)) and (dS0, dα0).
//   4. chunk_bwd_kernel<kGrads> grid B·NS·H: dv, da, dp of every chunk, then dk / dq (Latte: dk = da,
//                               dq = p ⊙ (dp − Σ_l p dp); Aaren: dk = scale·da q and the chunk's dq partial
//                               scale·Σ_t da_t k_t), then (Aaren) dq_sum_kernel: the partials summed over the
//                               chunks of each sequence in chunk order (deterministic, no atomics).
// One chunk block covers all L latents and all Dv columns (so da, dp, dq, dk are complete per chunk: no Dv-tile
// partials and no separate finish kernel).
//
// Chunk math (units of e^r per latent; E = e^{a−r}, den^r_t = Σ_{s≤t} E_s + α_in f, F = p/den^r, H = f/den^r,
// vd[t,s] = dy_t·v_s (s ≤ t), T = the lower triangle of ones):
//   z   = dp = (vd E) / den^r + (dy S_inᵀ) ⊙ H                       [C, L]
//   P   = tril(F Eᵀ)                                                   [C, C]
//   X   = E ⊙ (vdᵀ F − Tᵀ (F ⊙ z))   (= Σ_{t≥s} F_t E_s (vd[t,s] − z_t))
//   dv  = Pᵀ dy + E dS,   da = X + E ⊙ (v dSᵀ + dα)                      (dS, dα: the cotangent leaving)
//   G   = (p ⊙ H)ᵀ dy,     g = −Σ_t (p ⊙ H) ⊙ z                          (entering cotangent for zero leaving)
// The products are block_gemm calls on float32 shared-memory tiles (kGemmFor: mma.sync m16n8k8 TF32 (HMMA) for
// 16-bit inputs like Triton's "tf32" dots, exact FMA for float32 inputs).
// Exact fallback: when the running max rises by more than ck::kRiseLimit (40) inside a chunk for some latent
// (±1e4 logits) the block uses the per-position running max M_t instead of r: F_t E_s → c_t e^{a_s − M_t}
// (c = p/den_t, den_t referenced to M_t), H → e^{m_in − M_t}/den_t; P, z and X are then FMA loops with every
// exponent ≤ 0 (exact and finite whatever the logits); the rest of the chunk is shared with the fast path.
// Tiles: ck::Geom with BV = Dvp (Dv rounded up to 16); inputs through ck::load_chunk / ck::load_tile (16-byte
// row loads, LDG.E.128, when the rows allow).
// =============================================================================================================

enum ChunkMode : int { kCot = 1, kGrads = 2 };

template <typename Elem>
struct BwdArgs {
    ck::View<Elem> q, k, v, dout;
    int64_t B, T, H, L, D, Dv, N, NS, Wd;
    const int32_t* cu;
    float scale;
    ck::Geom g;  // BV = Dvp: one block covers every value column
    const float *m_ch, *u_ch, *w_ch;  // entering states (forward workspace: [cells·L], w row stride Wd)
    float *f_ch, *du_ch, *dw_ch;      // cotangent maps, then the cotangents leaving ([cells·L], dw row stride Wd)
    float* dq_part;                   // Aaren: [cells, D]
    int G;                            // two-level cotangent scan: G groups of CPG chunks (1: one level)
    int64_t CPG;
    float *g_f, *g_du, *g_dw;         // the group maps ([N·H·G·L], g_dw [N·H·G·L][Dv])
    Elem *dq, *dk, *dv;               // Latte dq; Aaren's dq goes through dq_part
};

// Shared-memory tiles of chunk_bwd_kernel (the host sizes the launch with the same code).
struct BwdSmem {
    float *A, *PM, *E, *F, *Hh, *ID, *Z, *X;  // [C][ldL]
    float *V, *DY, *OUT;                       // [C][ldV]
    float *S1, *S2;                            // [Lp][ldV]: entering S; leaving dS (kGrads) / G (kCot)
    float *VD, *PP, *TRI;                      // [C][ldC]
    float *m_in, *u_in, *r, *fin, *du, *cmax;  // [Lp]
    float *K, *Q;                              // Aaren: k tile [C][ldK], q [Dkp]
    int64_t bytes;
    __host__ __device__ BwdSmem(const ck::Geom& g, unsigned char* base) {
        SmemCarver sc(base);
        const int64_t C = ck::kChunk, cl = C * g.ldL(), cv = C * g.ldV(), cc = C * ck::Geom::ldC();
        A = sc.take<float>(cl); PM = sc.take<float>(cl); E = sc.take<float>(cl); F = sc.take<float>(cl);
        Hh = sc.take<float>(cl); ID = sc.take<float>(cl); Z = sc.take<float>(cl); X = sc.take<float>(cl);
        V = sc.take<float>(cv); DY = sc.take<float>(cv); OUT = sc.take<float>(cv);
        S1 = sc.take<float>(int64_t(g.Lp) * g.ldV()); S2 = sc.take<float>(int64_t(g.Lp) * g.ldV());
        VD = sc.take<float>(cc); PP = sc.take<float>(cc); TRI = sc.take<float>(cc);
        m_in = sc.take<float>(g.Lp); u_in = sc.take<float>(g.Lp); r = sc.take<float>(g.Lp);
        fin = sc.take<float>(g.Lp); du = sc.take<float>(g.Lp); cmax = sc.take<float>(g.Lp);
        K = Q = nullptr;
        if (g.Dkp > 0) {
            K = sc.take<float>(C * g.ldK());
            Q = sc.take<float>(g.Dkp);
        }
        bytes = sc.offset;
    }
};

// One chunk of the backward (kCot / kGrads above). Every thread of the block runs every phase (barriers between).
// (min 1 block per SM: without it ptxas spilled 4-12 bytes in some instances on sm_90.)
template <bool kAaren, typename Elem, int MODE>
__global__ void __launch_bounds__(ck::kThreads, 1) chunk_bwd_kernel(BwdArgs<Elem> a) {
    constexpr int kTC = kGemmFor<Elem>;
    constexpr int kC = ck::kChunk;
    using mmau::block_gemm;
    using mmau::kCol;
    using mmau::kRow;
    FLASHTS_DYNAMIC_SMEM(unsigned char, smem_raw);
    const ck::Geom g = a.g;
    const BwdSmem sm(g, smem_raw);
    const int64_t cell = blockIdx.x, h = cell % a.H, slot = (cell / a.H) % a.NS, b = cell / a.H / a.NS;
    const ck::Slot sl = ck::slot_of(a.cu, a.N, a.T, b, slot);
    if (sl.len <= 0) return;  // idle slot (uniform over the block)
    const int tid_ = threadIdx.x, nth = blockDim.x, lane = tid_ & 31, warp = tid_ >> 5, nwarps = nth >> 5;
    const int Lp = g.Lp, Dvp = g.BV, ldL = g.ldL(), ldV = g.ldV(), ldC = ck::Geom::ldC();
    const int64_t L = a.L, Dv = a.Dv, len = sl.len, t0 = sl.t0, srow = cell;

    // ---- tiles: logits A, mixing weights PM, values V (ck::load_chunk), cotangents DY
    ck::load_tile(sm.DY, ldV, kC, Dvp, a.dout, b, t0, h, 0, sl.len, Dv);
    ck::Tiles tl{};
    tl.A = sm.A; tl.V = sm.V; tl.K = sm.K; tl.q = sm.Q;
    ck::load_chunk<kAaren>(tl, g, a.q, a.k, a.v, b, h, t0, sl.len, a.D, Dv, 0, a.scale, sm.PM);

    // ---- per latent: chunk max, entering state, r, f; the entering S (and the leaving cotangent dS)
    for (int l = tid_; l < Lp; l += nth) {
        float cm = -CUDART_INF_F;
        for (int t = 0; t < kC; ++t) cm = fmaxf(cm, sm.A[t * ldL + l]);
        sm.cmax[l] = cm;
        const float m_in = l < L ? a.m_ch[srow * L + l] : -CUDART_INF_F;
        sm.m_in[l] = m_in;
        sm.u_in[l] = l < L ? a.u_ch[srow * L + l] : 0.f;
        const float r = fmaxf(m_in, cm);
        sm.r[l] = r;
        sm.fin[l] = ck::exp_diff(m_in, r);
        sm.du[l] = (MODE == kGrads && l < L) ? a.du_ch[srow * L + l] : 0.f;
    }
    const int groups = Dvp / 4;  // 16-byte loads of the state rows (row stride Wd, a multiple of 4; 0 past Dv)
    for (int i = tid_; i < Lp * groups; i += nth) {
        const int l = i / groups, c = (i - l * groups) * 4;
        const bool in = l < L && c < a.Wd;
        const float4 x = in ? *reinterpret_cast<const float4*>(a.w_ch + (srow * L + l) * a.Wd + c)
                            : make_float4(0.f, 0.f, 0.f, 0.f);
        float* d1 = sm.S1 + l * ldV + c;
        d1[0] = x.x; d1[1] = x.y; d1[2] = x.z; d1[3] = x.w;
        if (MODE == kGrads) {
            const float4 y = in ? *reinterpret_cast<const float4*>(a.dw_ch + (srow * L + l) * a.Wd + c)
                                : make_float4(0.f, 0.f, 0.f, 0.f);
            float* d2 = sm.S2 + l * ldV + c;
            d2[0] = y.x; d2[1] = y.y; d2[2] = y.z; d2[3] = y.w;
        }
    }
    for (int i = tid_; i < kC * kC; i += nth) {
        const int t = i / kC, s = i - t * kC;
        sm.TRI[t * ldC + s] = t >= s ? -1.f : 0.f;
    }
    __syncthreads();
    bool rise = false;  // the fast-path test: the running max rises by ≤ kRiseLimit inside the chunk
    for (int l = tid_; l < L; l += nth) rise |= sm.r[l] - fmaxf(sm.m_in[l], sm.A[l]) > ck::kRiseLimit;
    for (int i = tid_; i < kC * Lp; i += nth) {
        const int t = i / Lp, l = i - t * Lp;
        sm.E[t * ldL + l] = ck::exp_diff(sm.A[t * ldL + l], sm.r[l]);  // e^{a_s − r} ≤ 1
    }
    const bool exact = __syncthreads_or(rise);

    block_gemm<kTC, kRow, kCol>(sm.VD, ldC, sm.DY, ldV, sm.V, ldV, kC, kC, Dvp, false);   // dy vᵀ
    block_gemm<kTC, kRow, kCol>(sm.Z, ldL, sm.DY, ldV, sm.S1, ldV, kC, Lp, Dvp, false);  // dy S_inᵀ
    __syncthreads();
    for (int i = tid_; i < kC * kC; i += nth) {
        const int t = i / kC, s = i - t * kC;
        if (s > t) sm.VD[t * ldC + s] = 0.f;
    }
    // per latent (serial over the C steps): den, F = p/den, H = f/den (fast: den^r, ID = 1/den^r; exact: den_t at
    // the per-position max M_t, ID = M_t, X = 1/den_t)
    for (int l = tid_; l < Lp; l += nth) {
        const float m_in = sm.m_in[l], fin = sm.fin[l];
        if (!exact) {
            float den = sm.u_in[l] * fin;
            for (int t = 0; t < kC; ++t) {
                den += sm.E[t * ldL + l];
                const float inv = den > 0.f ? 1.f / den : 1.f;
                sm.ID[t * ldL + l] = inv;
                sm.F[t * ldL + l] = sm.PM[t * ldL + l] * inv;
                sm.Hh[t * ldL + l] = fin * inv;
            }
        } else {
            float M = m_in, den = sm.u_in[l];
            for (int t = 0; t < kC; ++t) {
                const float at = sm.A[t * ldL + l];
                const float Mn = fmaxf(M, at);
                den = den * ck::exp_diff(M, Mn) + ck::exp_diff(at, Mn);
                M = Mn;
                const float inv = den > 0.f ? 1.f / den : 1.f;
                sm.ID[t * ldL + l] = M;
                sm.X[t * ldL + l] = inv;
                sm.F[t * ldL + l] = sm.PM[t * ldL + l] * inv;
                sm.Hh[t * ldL + l] = ck::exp_diff(m_in, M) * inv;
            }
        }
    }
    __syncthreads();
    // z = dp
    if (!exact) {
        block_gemm<kTC, kRow, kRow>(sm.X, ldL, sm.VD, ldC, sm.E, ldL, kC, Lp, kC, false);  // vd E
        __syncthreads();
        for (int i = tid_; i < kC * Lp; i += nth) {
            const int t = i / Lp, l = i - t * Lp, o = t * ldL + l;
            sm.Z[o] = sm.X[o] * sm.ID[o] + sm.Z[o] * sm.Hh[o];
        }
    } else {
        for (int i = tid_; i < kC * Lp; i += nth) {
            const int t = i / Lp, l = i - t * Lp, o = t * ldL + l;
            const float Mt = sm.ID[o];
            float acc = 0.f;
            for (int s = 0; s <= t; ++s) acc += sm.VD[t * ldC + s] * ck::exp_diff(sm.A[s * ldL + l], Mt);
            sm.Z[o] = acc * sm.X[o] + sm.Z[o] * sm.Hh[o];
        }
    }
    __syncthreads();
    // Ff = p ⊙ H (in Hh); fast path: F ⊙ z (in ID), P = tril(F Eᵀ), X = E ⊙ (vdᵀF − Tᵀ(F⊙z))
    for (int i = tid_; i < kC * Lp; i += nth) {
        const int t = i / Lp, l = i - t * Lp, o = t * ldL + l;
        sm.Hh[o] *= sm.PM[o];
        if (!exact) sm.ID[o] = sm.F[o] * sm.Z[o];
    }
    if (!exact) {
        if (MODE == kGrads) {
            block_gemm<kTC, kRow, kCol>(sm.PP, ldC, sm.F, ldL, sm.E, ldL, kC, kC, Lp, false);  // F Eᵀ
            block_gemm<kTC, kCol, kRow>(sm.X, ldL, sm.VD, ldC, sm.F, ldL, kC, Lp, kC, false);  // vdᵀ F
        }
        __syncthreads();
        if (MODE == kGrads) {
            block_gemm<kTC, kCol, kRow>(sm.X, ldL, sm.TRI, ldC, sm.ID, ldL, kC, Lp, kC, true);  // − Tᵀ (F⊙z)
            __syncthreads();
            for (int i = tid_; i < kC * Lp; i += nth) {
                const int s = i / Lp, l = i - s * Lp, o = s * ldL + l;
                sm.X[o] *= sm.E[o];
            }
            for (int i = tid_; i < kC * kC; i += nth) {
                const int t = i / kC, s = i - t * kC;
                if (s > t) sm.PP[t * ldC + s] = 0.f;
            }
        }
    } else if (MODE == kGrads) {  // every exponent ≤ 0: F_t E_s → c_t e^{a_s − M_t}
        __syncthreads();
        for (int i = tid_; i < kC * kC; i += nth) {
            const int t = i / kC, s = i - t * kC;
            float acc = 0.f;
            if (s <= t)
                for (int l = 0; l < Lp; ++l)
                    acc += sm.F[t * ldL + l] * ck::exp_diff(sm.A[s * ldL + l], sm.ID[t * ldL + l]);
            sm.PP[t * ldC + s] = acc;
        }
        for (int i = tid_; i < kC * Lp; i += nth) {
            const int s = i / Lp, l = i - s * Lp;
            const float as = sm.A[s * ldL + l];
            float acc = 0.f;
            for (int t = s; t < kC; ++t)
                acc += sm.F[t * ldL + l] * ck::exp_diff(as, sm.ID[t * ldL + l]) *
                       (sm.VD[t * ldC + s] - sm.Z[t * ldL + l]);
            sm.X[s * ldL + l] = acc;
        }
    }
    __syncthreads();

    if (MODE == kCot) {  // G = Ffᵀ dy, g = −Σ_t Ff z, f
        block_gemm<kTC, kCol, kRow>(sm.S2, ldV, sm.Hh, ldL, sm.DY, ldV, Lp, Dvp, kC, false);
        for (int l = tid_; l < L; l += nth) {
            float gsum = 0.f;
            for (int t = 0; t < kC; ++t) gsum -= sm.Hh[t * ldL + l] * sm.Z[t * ldL + l];
            a.du_ch[srow * L + l] = gsum;
            a.f_ch[srow * L + l] = sm.fin[l];
        }
        __syncthreads();
        for (int i = tid_; i < L * (a.Wd / 4); i += nth) {  // G rows (stride Wd; columns past Dv hold 0)
            const int l = i / (a.Wd / 4), c = (i - l * (a.Wd / 4)) * 4;
            const float* src = sm.S2 + l * ldV + c;
            *reinterpret_cast<float4*>(a.dw_ch + (srow * L + l) * a.Wd + c) = make_float4(src[0], src[1], src[2], src[3]);
        }
        return;
    }

    // ---- kGrads: dv = Pᵀ dy + E dS;  da = X + E ⊙ (v dSᵀ + dα)
    block_gemm<kTC, kCol, kRow>(sm.OUT, ldV, sm.PP, ldC, sm.DY, ldV, kC, Dvp, kC, false);
    block_gemm<kTC, kRow, kCol>(sm.Hh, ldL, sm.V, ldV, sm.S2, ldV, kC, Lp, Dvp, false);  // v dSᵀ (Hh is free)
    __syncthreads();
    block_gemm<kTC, kRow, kRow>(sm.OUT, ldV, sm.E, ldL, sm.S2, ldV, kC, Dvp, Lp, true);
    for (int i = tid_; i < kC * Lp; i += nth) {
        const int s = i / Lp, l = i - s * Lp, o = s * ldL + l;
        sm.X[o] += sm.E[o] * (sm.Hh[o] + sm.du[l]);
    }
    __syncthreads();
    Elem* dv_out = a.dv + ((b * a.T + t0) * a.H + h) * Dv;
    const float *OUT = sm.OUT, *X = sm.X;
    ck::store_rows(dv_out, a.H * Dv, len, static_cast<int>(Dv), [=](int t, int d) { return OUT[t * ldV + d]; });
    if (!kAaren) {  // dk = da; dq = p ⊙ (dp − Σ_l p dp), dp shifted by dp_{·,0} first
        Elem* dk_out = a.dk + ((b * a.T + t0) * a.H + h) * L;
        Elem* dq_out = a.dq + ((b * a.T + t0) * a.H + h) * L;
        ck::store_rows(dk_out, a.H * L, len, static_cast<int>(L), [=](int t, int l) { return X[t * ldL + l]; });
        for (int t = warp; t < len; t += nwarps) {  // dq into Z in place (row t: every lane read z0 before the sum)
            float* zr = sm.Z + t * ldL;
            const float* pr = sm.PM + t * ldL;
            const float z0 = zr[0];
            float s = 0.f;
            for (int l = lane; l < L; l += 32) s += pr[l] * (zr[l] - z0);
            s = warp_sum(s);
            for (int l = lane; l < L; l += 32) zr[l] = pr[l] * ((zr[l] - z0) - s);
        }
        __syncthreads();
        const float* Zq = sm.Z;
        ck::store_rows(dq_out, a.H * L, len, static_cast<int>(L), [=](int t, int l) { return Zq[t * ldL + l]; });
    } else {  // dk_t = scale·da_t q; the chunk's dq partial scale·Σ_t da_t k_t (t in order; k from the K tile)
        Elem* dk_out = a.dk + ((b * a.T + t0) * a.H + h) * a.D;
        const float* Qv = sm.Q;
        const float sc = a.scale;
        ck::store_rows(dk_out, a.H * a.D, len, static_cast<int>(a.D),
                       [=](int t, int j) { return sc * X[t * ldL] * Qv[j]; });
        for (int64_t j = tid_; j < a.D; j += nth) {
            float acc = 0.f;
            for (int t = 0; t < len; ++t) acc += sm.X[t * ldL] * sm.K[t * g.ldK() + j];
            a.dq_part[srow * a.D + j] = a.scale * acc;
        }
    }
}

// One thread per (n, h, l, d): the reverse scan of the chunk maps from (dS_T, dα_T); writes the cotangent leaving
// every chunk over (G, g) (dα by the d = 0 thread: it alone reads and writes du_ch) and (dS0, dα0) when asked.
// A zero-length sequence passes (dS_T, dα_T) through. The maps are read kScanAhead chunks ahead of the combine
// (a register ring with static indices, like state_scan_kernel): the chain of NS dependent steps per thread
// would otherwise pay one memory round trip per chunk. (A chunk's row is read before it is overwritten: the
// ring runs ahead towards earlier chunks, the stores trail behind.)
// Two-level (a.G > 1 groups of a.CPG chunks; the maps x ↦ f x + G compose associatively): this kernel is pass 1,
// thread → (n, h, group, l, d), each group scanned from a zero cotangent leaving it: the cotangent leaving each
// chunk relative to the group (over (G, g)) and the group's map (Π f, the offsets) into g_f / g_du / g_dw;
// cot_group_scan_kernel (pass 2) applies the group maps in reverse order from (dS_T, dα_T) (the cotangent leaving
// each group, over the offsets; dS0, dα0); cot_group_apply_kernel (pass 3) adds (Π of the later f) · (the group's
// leaving cotangent) to each chunk's relative one.
template <typename Elem>
__global__ void cot_scan_kernel(BwdArgs<Elem> a, const float* duT, const float* dwT, float* du0, float* dw0) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t L = a.L, Dv = a.Dv, Wd = a.Wd, G = a.G;
    if (i >= a.N * a.H * G * L * Dv) return;
    const int64_t d = i % Dv, l = (i / Dv) % L, grp = (i / (L * Dv)) % G, nh = i / (G * L * Dv), n = nh / a.H,
                  h = nh % a.H;
    const bool grouped = G > 1;
    const ck::Seq sq = ck::sequence(a.cu, n, a.T);
    const int64_t seq_chunks = cdiv64(sq.eos - sq.bos, ck::kChunk), c_begin = grouped ? grp * a.CPG : 0;
    const int64_t c_end = grouped ? (c_begin + a.CPG < seq_chunks ? c_begin + a.CPG : seq_chunks) : seq_chunks;
    const int64_t n_chunks = c_end > c_begin ? c_end - c_begin : 0;
    const int64_t step = a.H * L;  // the previous chunk slot, same head and latent
    const bool lead = d == 0;
    const int64_t chain = nh * L * Dv + l * Dv + d;  // [N, H, L, Dv]
    float dw = (dwT && !grouped) ? dwT[chain] : 0.f, du = (duT && !grouped) ? duT[nh * L + l] : 0.f, fprod = 1.f;
    int64_t ahead = ((sq.b * a.NS + sq.base + c_begin + n_chunks - 1) * a.H + h) * L + l, cur = ahead;
    float ring_f[kScanAhead], ring_G[kScanAhead], ring_g[kScanAhead];
#pragma unroll
    for (int j = 0; j < kScanAhead; ++j) {
        if (j < n_chunks) {
            ring_f[j] = a.f_ch[ahead];
            ring_G[j] = a.dw_ch[ahead * Wd + d];
            ring_g[j] = lead ? a.du_ch[ahead] : 0.f;
            ahead -= step;
        }
    }
    for (int64_t c0 = 0; c0 < n_chunks; c0 += kScanAhead) {
#pragma unroll
        for (int j = 0; j < kScanAhead; ++j) {
            if (c0 + j < n_chunks) {
                const float f = ring_f[j], Gc = ring_G[j], gu = ring_g[j];
                if (c0 + j + kScanAhead < n_chunks) {  // refill this ring slot (an earlier chunk)
                    ring_f[j] = a.f_ch[ahead];
                    ring_G[j] = a.dw_ch[ahead * Wd + d];
                    ring_g[j] = lead ? a.du_ch[ahead] : 0.f;
                    ahead -= step;
                }
                a.dw_ch[cur * Wd + d] = dw;  // the cotangent leaving chunk `cur`
                if (lead) a.du_ch[cur] = du;
                dw = f * dw + Gc;
                du = f * du + gu;
                fprod *= f;
                cur -= step;
            }
        }
    }
    if (grouped) {  // pass 1: the group's map x ↦ fprod · x + (du, dw)
        const int64_t gidx = (nh * G + grp) * L + l;
        a.g_dw[gidx * Dv + d] = dw;
        if (lead) {
            a.g_f[gidx] = fprod;
            a.g_du[gidx] = du;
        }
        return;
    }
    if (dw0) dw0[chain] = dw;
    if (du0 && lead) du0[nh * L + l] = du;
}

// Two-level cotangent scan, pass 2: thread → (n, h, l, d); the group maps applied in reverse group order from
// (dS_T, dα_T): the cotangent leaving each group over its offsets (g_dw; g_du by the d = 0 thread), then (dS0, dα0).
template <typename Elem>
__global__ void cot_group_scan_kernel(BwdArgs<Elem> a, const float* duT, const float* dwT, float* du0, float* dw0) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t L = a.L, Dv = a.Dv, G = a.G;
    if (i >= a.N * a.H * L * Dv) return;
    const int64_t d = i % Dv, l = (i / Dv) % L, nh = i / (L * Dv), n = nh / a.H;
    const ck::Seq sq = ck::sequence(a.cu, n, a.T);
    const int64_t groups = cdiv64(cdiv64(sq.eos - sq.bos, ck::kChunk), a.CPG);
    const bool lead = d == 0;
    float dw = dwT ? dwT[i] : 0.f, du = duT ? duT[nh * L + l] : 0.f;
    for (int64_t grp = groups - 1; grp >= 0; --grp) {
        const int64_t gidx = (nh * G + grp) * L + l;
        const float f = a.g_f[gidx], off = a.g_dw[gidx * Dv + d];
        a.g_dw[gidx * Dv + d] = dw;  // the cotangent leaving group grp
        if (lead) {
            const float offu = a.g_du[gidx];
            a.g_du[gidx] = du;
            du = f * du + offu;
        }
        dw = f * dw + off;
    }
    if (dw0) dw0[i] = dw;
    if (du0 && lead) du0[nh * L + l] = du;
}

// Two-level cotangent scan, pass 3: thread → (n, h, group, l, d) as in pass 1; the cotangent leaving chunk c of the
// group = its relative one + (Π of f over the later chunks of the group) · (the cotangent leaving the group).
template <typename Elem>
__global__ void cot_group_apply_kernel(BwdArgs<Elem> a) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t L = a.L, Dv = a.Dv, Wd = a.Wd, G = a.G;
    if (i >= a.N * a.H * G * L * Dv) return;
    const int64_t d = i % Dv, l = (i / Dv) % L, grp = (i / (L * Dv)) % G, nh = i / (G * L * Dv), n = nh / a.H,
                  h = nh % a.H;
    const ck::Seq sq = ck::sequence(a.cu, n, a.T);
    const int64_t seq_chunks = cdiv64(sq.eos - sq.bos, ck::kChunk), c_begin = grp * a.CPG;
    const int64_t c_end = c_begin + a.CPG < seq_chunks ? c_begin + a.CPG : seq_chunks;
    if (c_end <= c_begin) return;
    const bool lead = d == 0;
    const int64_t gidx = (nh * G + grp) * L + l, step = a.H * L;
    const float dw = a.g_dw[gidx * Dv + d], du = lead ? a.g_du[gidx] : 0.f;
    float fprod = 1.f;
    int64_t cur = ((sq.b * a.NS + sq.base + c_end - 1) * a.H + h) * L + l;
    for (int64_t c = c_end - 1; c >= c_begin; --c, cur -= step) {
        a.dw_ch[cur * Wd + d] += fprod * dw;
        if (lead) a.du_ch[cur] += fprod * du;
        fprod *= a.f_ch[cur];
    }
}

// Aaren: dq_rows[n, h, :] = the dq partials of the chunks of sequence n summed in chunk order.
template <typename Elem>
__global__ void dq_sum_kernel(BwdArgs<Elem> a, float* dq_rows) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= a.N * a.H * a.D) return;
    const int64_t j = i % a.D, nh = i / a.D, n = nh / a.H, h = nh % a.H;
    const ck::Seq sq = ck::sequence(a.cu, n, a.T);
    const int64_t n_chunks = cdiv64(sq.eos - sq.bos, ck::kChunk);
    float acc = 0.f;
    for (int64_t c = 0; c < n_chunks; ++c) acc += a.dq_part[((sq.b * a.NS + sq.base + c) * a.H + h) * a.D + j];
    dq_rows[i] = acc;
}

// ----- host side of the chunked backward

// The backward's plan: the forward's chunked plan (entering states; its workspace first), the chunk tiles of
// chunk_bwd_kernel and the backward's own workspace (f, g/dα, G/dS per chunk cell; Aaren's dq partials).
struct BwdPlan {
    bool chunked;       // false: the sequential fallback (tiles too large for the shared memory)
    ScanPlan fwd;       // the forward's plan in "chunked" mode
    ck::Geom g;         // BV = Dvp
    int64_t smem_bytes, cells, fwd_floats, ws_floats;
    int64_t cot_groups, cot_group_chunks;  // the cotangent scan's groups (scan_groups: 1 = one level)
};

inline cudaError_t plan_backward(bool aaren, const ScanSizes& sz, BwdPlan* p) {
    int sms = 0, max_smem = 0;
    cudaError_t err = device_facts(ScanOptions{0, 0, ScanMode::Auto}, &sms, &max_smem);
    if (err != cudaSuccess) return err;
    *p = BwdPlan{};
    p->g = ck::make_geom(aaren, sz.L, sz.D, round_up(static_cast<int>(sz.Dv), 16));
    p->smem_bytes = BwdSmem(p->g, nullptr).bytes;
    err = plan_forward(aaren, sz, true, ScanOptions{sms, max_smem, ScanMode::Chunked}, &p->fwd);
    if (err == cudaErrorInvalidConfiguration || (err == cudaSuccess && p->smem_bytes > max_smem)) {
        p->chunked = false;
        p->ws_floats = 3 * sz.B * sz.T * sz.H * sz.L;  // ws_M, ws_c, ws_r of the sequential kernels
        return cudaSuccess;
    }
    if (err != cudaSuccess) return err;
    auto r4 = [](int64_t n) { return (n + 3) / 4 * 4; };
    p->chunked = true;
    p->cells = sz.B * p->fwd.NS * sz.H;
    p->fwd_floats = r4(p->fwd.workspace_bytes / int64_t(sizeof(float)));
    p->ws_floats = p->fwd_floats + 2 * r4(p->cells * sz.L) + p->cells * sz.L * r4(sz.Dv) +
                   (aaren ? r4(p->cells * sz.D) : 0);
    scan_groups(sz.N * sz.H * sz.L * sz.Dv, p->fwd.NS, sms, &p->cot_groups, &p->cot_group_chunks);
    if (p->cot_groups > 1) {
        const int64_t rows = sz.N * sz.H * p->cot_groups * sz.L;
        p->ws_floats += 2 * r4(rows) + rows * sz.Dv;
    }
    return cudaSuccess;
}

// Threads per block of an element-wise scan over n chains: 256, halved (down to 32) while the grid has fewer
// blocks than SMs (the occupancy rule of kernels/occupancy.py for the light sequential scans).
inline int scan_threads(int64_t n, int sms) {
    int t = 256;
    while (t > 32 && (n + t - 1) / t < sms) t /= 2;
    return t;
}

template <bool kAaren, typename Elem>
cudaError_t launch_chunked_backward(const BwdPlan& plan, ScanTensor dout, ScanTensor q, ScanTensor k, ScanTensor v,
                                    const ScanSizes& sz, float scale, const float* m0, const float* u0,
                                    const float* w0, const float* duT, const float* dwT, float* ws,
                                    int64_t ws_floats, Elem* dq, float* dq_rows, Elem* dk, Elem* dv, float* du0,
                                    float* dw0, cudaStream_t stream) {
    if (ws_floats < plan.ws_floats || (plan.ws_floats > 0 && ws == nullptr) ||
        reinterpret_cast<uintptr_t>(ws) % 16 != 0)
        return cudaErrorInvalidValue;
    int sms = 0, max_smem = 0;
    cudaError_t err = device_facts(ScanOptions{0, 0, ScanMode::Auto}, &sms, &max_smem);
    if (err != cudaSuccess) return err;
    const ScanPlan& fp = plan.fwd;
    // 1. the states entering every chunk: the forward's chunk_sum_kernel + state_scan_kernel
    Args<Elem> a0 = make_args<Elem>(q, k, v, dout, sz, scale);
    a0.m0 = m0; a0.a0 = u0; a0.S0 = w0;  // (no final state: mT/aT/ST stay nullptr)
    FwdArgs<Elem> fa = chunk_args<kAaren>(a0, true, fp);
    bind_workspace(fa, ws);
    const int64_t sum_blocks = fa.B * fa.NS * fa.H * fa.nBV;
    if (sum_blocks > 0x7fffffffLL || plan.cells > 0x7fffffffLL) return cudaErrorInvalidValue;
    {
        auto sum_kernel = chunk_sum_kernel<kAaren, Elem>;
        const int64_t bytes_sum = ck::carve(fa.g, false, nullptr).bytes;
        err = cudaFuncSetAttribute(sum_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes_sum));
        if (err != cudaSuccess) return err;
        if (sum_blocks > 0) {
            FLASHTS_LAUNCH(sum_kernel, static_cast<unsigned>(sum_blocks), ck::kThreads, static_cast<size_t>(bytes_sum),
                           stream, fa);
            if ((err = FLASHTS_LAUNCH_CHECK()) != cudaSuccess) return err;
        }
        if ((err = launch_state_scan(fa, fp, stream)) != cudaSuccess) return err;
    }
    // 2.-4. the cotangent maps, their reverse scan, the gradients
    BwdArgs<Elem> a{};
    a.q = fa.q; a.k = fa.k; a.v = fa.v;
    a.dout = ck::make_view<Elem>(dout, sz.Dv);
    a.B = sz.B; a.T = sz.T; a.H = sz.H; a.L = sz.L; a.D = sz.D; a.Dv = sz.Dv; a.N = sz.N; a.NS = fp.NS; a.Wd = fa.Wd;
    a.cu = sz.cu_seqlens;
    a.scale = scale;
    a.g = plan.g;
    a.m_ch = fa.ws_m; a.u_ch = fa.ws_u; a.w_ch = fa.ws_w;
    auto r4 = [](int64_t n) { return (n + 3) / 4 * 4; };
    float* p = ws + plan.fwd_floats;
    a.f_ch = p; p += r4(plan.cells * sz.L);
    a.du_ch = p; p += r4(plan.cells * sz.L);
    a.dw_ch = p; p += plan.cells * sz.L * a.Wd;
    a.dq_part = kAaren ? p : nullptr;
    if (kAaren) p += r4(plan.cells * sz.D);
    a.G = static_cast<int>(plan.cot_groups);
    a.CPG = plan.cot_group_chunks;
    if (a.G > 1) {
        const int64_t rows = sz.N * sz.H * a.G * sz.L;
        a.g_f = p; p += r4(rows);
        a.g_du = p; p += r4(rows);
        a.g_dw = p;
    }
    a.dq = dq; a.dk = dk; a.dv = dv;
    const size_t smem = static_cast<size_t>(plan.smem_bytes);
    auto k_cot = chunk_bwd_kernel<kAaren, Elem, kCot>;
    auto k_grads = chunk_bwd_kernel<kAaren, Elem, kGrads>;
    err = cudaFuncSetAttribute(k_cot, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err == cudaSuccess)
        err = cudaFuncSetAttribute(k_grads, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
    const int64_t chains = sz.N * sz.H * sz.L * sz.Dv;
    const int st = scan_threads(chains, sms);
    if (plan.cells > 0) {
        FLASHTS_LAUNCH(k_cot, static_cast<unsigned>(plan.cells), ck::kThreads, smem, stream, a);
        if ((err = FLASHTS_LAUNCH_CHECK()) != cudaSuccess) return err;
    }
    if (chains > 0 && a.G <= 1) {
        auto kern = cot_scan_kernel<Elem>;
        FLASHTS_LAUNCH(kern, static_cast<unsigned>(cdiv64(chains, st)), st, 0, stream, a, duT, dwT, du0, dw0);
        if ((err = FLASHTS_LAUNCH_CHECK()) != cudaSuccess) return err;
    } else if (chains > 0) {  // two-level: groups, their maps in reverse order, the groups' leaving cotangents applied
        const int64_t grouped = chains * a.G;
        const int gt = scan_threads(grouped, sms);
        auto k1 = cot_scan_kernel<Elem>;
        auto k2 = cot_group_scan_kernel<Elem>;
        auto k3 = cot_group_apply_kernel<Elem>;
        FLASHTS_LAUNCH(k1, static_cast<unsigned>(cdiv64(grouped, gt)), gt, 0, stream, a, nullptr, nullptr, nullptr,
                       nullptr);
        if ((err = FLASHTS_LAUNCH_CHECK()) != cudaSuccess) return err;
        FLASHTS_LAUNCH(k2, static_cast<unsigned>(cdiv64(chains, st)), st, 0, stream, a, duT, dwT, du0, dw0);
        if ((err = FLASHTS_LAUNCH_CHECK()) != cudaSuccess) return err;
        FLASHTS_LAUNCH(k3, static_cast<unsigned>(cdiv64(grouped, gt)), gt, 0, stream, a);
        if ((err = FLASHTS_LAUNCH_CHECK()) != cudaSuccess) return err;
    }
    if (plan.cells > 0) {
        FLASHTS_LAUNCH(k_grads, static_cast<unsigned>(plan.cells), ck::kThreads, smem, stream, a);
        if ((err = FLASHTS_LAUNCH_CHECK()) != cudaSuccess) return err;
    }
    if (kAaren && sz.N * sz.H * sz.D > 0) {
        const int64_t n = sz.N * sz.H * sz.D;
        const int t = scan_threads(n, sms);
        auto kern = dq_sum_kernel<Elem>;
        FLASHTS_LAUNCH(kern, static_cast<unsigned>(cdiv64(n, t)), t, 0, stream, a, dq_rows);
        if ((err = FLASHTS_LAUNCH_CHECK()) != cudaSuccess) return err;
    }
    return cudaSuccess;
}

// Workspace (floats) of the causal backward at these sizes: the chunked path's, or the sequential fallback's.
inline cudaError_t bwd_workspace(const ScanSizes& sz, bool aaren, int64_t* floats) {
    BwdPlan plan;
    const cudaError_t err = plan_backward(aaren, sz, &plan);
    if (err == cudaSuccess) *floats = plan.ws_floats;
    return err;
}

}  // namespace

// ------------------------------------------------------------------------------------------- launchers

cudaError_t scan_fwd_plan(bool aaren, ScanSizes sz, bool causal, ScanOptions opt, ScanPlan* plan) {
    if (aaren) sz.L = 1; else sz.D = sz.L;
    if (!sizes_ok(sz) || plan == nullptr || (aaren && !causal)) return cudaErrorInvalidValue;
    return plan_forward(aaren, sz, causal, opt, plan);
}

cudaError_t latte_bidir_bwd_plan(ScanSizes sz, ScanOptions opt, ScanPlan* plan) {
    sz.D = sz.L;
    if (!sizes_ok(sz) || plan == nullptr) return cudaErrorInvalidValue;
    return plan_bidir_backward(sz, opt, plan);
}

cudaError_t latte_bidir_bwd(DType dtype, ScanTensor dout, ScanTensor q, ScanTensor k, ScanTensor v, ScanSizes sz,
                            ScanOptions opt, void* dq, void* dk, void* dv, void* workspace, int64_t workspace_bytes,
                            cudaStream_t stream) {
    sz.D = sz.L;
    if (!sizes_ok(sz) || !dq || !dk || !dv) return cudaErrorInvalidValue;
    ScanPlan plan{};
    const cudaError_t err = plan_bidir_backward(sz, opt, &plan);
    if (err != cudaSuccess) return err;
    return dispatch(dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        Args<T> a = make_args<T>(q, k, v, dout, sz, 1.f);
        a.dq = static_cast<T*>(dq);
        a.dk = static_cast<T*>(dk);
        a.dv = static_cast<T*>(dv);
        return launch_bidir_backward<T>(a, plan, workspace, workspace_bytes, stream);
    });
}

cudaError_t aaren_fwd(DType dtype, ScanTensor q, ScanTensor k, ScanTensor v, ScanSizes sz, float scale,
                      const float* m0, const float* u0, const float* w0, void* o, float* mT, float* uT, float* wT,
                      ScanOptions opt, void* workspace, int64_t workspace_bytes, cudaStream_t stream) {
    sz.L = 1;
    if (!sizes_ok(sz) || (m0 && (!u0 || !w0))) return cudaErrorInvalidValue;
    return dispatch(dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        Args<T> a = make_args<T>(q, k, v, ScanTensor{nullptr, 0, 0, 0, 0}, sz, scale);
        a.m0 = m0; a.a0 = u0; a.S0 = w0;
        a.o = static_cast<T*>(o);
        a.mT = mT; a.aT = uT; a.ST = wT;
        return run_forward<Kind::Aaren>(a, true, opt, workspace, workspace_bytes, stream);
    });
}

cudaError_t latte_fwd(DType dtype, ScanTensor q, ScanTensor k, ScanTensor v, ScanSizes sz, bool causal,
                      const float* m0, const float* a0, const float* S0, void* o, float* mT, float* aT, float* ST,
                      ScanOptions opt, void* workspace, int64_t workspace_bytes, cudaStream_t stream) {
    sz.D = sz.L;
    if (!sizes_ok(sz) || (m0 && (!a0 || !S0)) || (!causal && m0)) return cudaErrorInvalidValue;
    return dispatch(dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        Args<T> a = make_args<T>(q, k, v, ScanTensor{nullptr, 0, 0, 0, 0}, sz, 1.f);
        a.m0 = m0; a.a0 = a0; a.S0 = S0;
        a.o = static_cast<T*>(o);
        if (causal) {
            a.mT = mT; a.aT = aT; a.ST = ST;
        }
        return run_forward<Kind::Latte>(a, causal, opt, workspace, workspace_bytes, stream);
    });
}

cudaError_t scan_bwd_workspace(bool aaren, ScanSizes sz, bool causal, int64_t* floats) {
    if (aaren) sz.L = 1; else sz.D = sz.L;
    if (!floats || !sizes_ok(sz)) return cudaErrorInvalidValue;
    *floats = 0;
    if (!causal && !aaren) {  // Latte bidirectional: the chunk-parallel backward's, or none (sequential fallback)
        ScanPlan plan{};
        const cudaError_t err = plan_bidir_backward(sz, ScanOptions{0, 0, ScanMode::Auto}, &plan);
        if (err == cudaSuccess) *floats = (plan.workspace_bytes + 3) / 4;
        return err == cudaErrorInvalidConfiguration ? cudaSuccess : err;
    }
    return bwd_workspace(sz, aaren, floats);
}

cudaError_t aaren_bwd(DType dtype, ScanTensor dout, ScanTensor q, ScanTensor k, ScanTensor v, ScanSizes sz,
                      float scale, const float* m0, const float* u0, const float* w0, const float* duT,
                      const float* dwT, float* workspace, int64_t workspace_floats, float* dq_rows, void* dk,
                      void* dv, float* du0, float* dw0, cudaStream_t stream) {
    sz.L = 1;
    if (!sizes_ok(sz) || (m0 && (!u0 || !w0)) || !dq_rows || (du0 && !dw0)) return cudaErrorInvalidValue;
    BwdPlan plan;
    const cudaError_t err = plan_backward(true, sz, &plan);
    if (err != cudaSuccess) return err;
    return dispatch(dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        if (plan.chunked)  // the chunk-parallel backward
            return launch_chunked_backward<true, T>(plan, dout, q, k, v, sz, scale, m0, u0, w0, duT, dwT, workspace,
                                                    workspace_floats, nullptr, dq_rows, static_cast<T*>(dk),
                                                    static_cast<T*>(dv), du0, dw0, stream);
        const int64_t n = sz.B * sz.T * sz.H;  // fallback: the sequential kernels (ws_M, ws_c, ws_r)
        if (workspace_floats < 3 * n || (n > 0 && !workspace)) return cudaErrorInvalidValue;
        Args<T> a = make_args<T>(q, k, v, dout, sz, scale);
        a.m0 = m0; a.a0 = u0; a.S0 = w0;
        a.daT = duT; a.dST = dwT;
        a.ws_M = workspace; a.ws_c = workspace + n; a.ws_r = workspace + 2 * n;
        a.dq_rows = dq_rows;
        a.dk = static_cast<T*>(dk);
        a.dv = static_cast<T*>(dv);
        a.da0 = du0; a.dS0 = dw0;
        return launch_backward<Kind::Aaren>(a, true, stream);
    });
}

cudaError_t latte_bwd(DType dtype, ScanTensor dout, ScanTensor q, ScanTensor k, ScanTensor v, ScanSizes sz,
                      bool causal, const float* m0, const float* a0, const float* S0, const float* daT,
                      const float* dST, float* workspace, int64_t workspace_floats, void* dq, void* dk, void* dv,
                      float* da0, float* dS0, cudaStream_t stream) {
    sz.D = sz.L;
    if (!sizes_ok(sz) || (m0 && (!a0 || !S0)) || (da0 && !dS0)) return cudaErrorInvalidValue;
    if (!causal && (m0 || daT || dST || da0)) return cudaErrorInvalidValue;
    BwdPlan plan{};
    ScanPlan bidir{};  // bidirectional: the chunk-parallel backward when it fits (bidir_ok), else bidir_bwd_kernel
    bool bidir_ok = false;
    if (causal) {
        const cudaError_t err = plan_backward(false, sz, &plan);
        if (err != cudaSuccess) return err;
    } else {
        const cudaError_t err = plan_bidir_backward(sz, ScanOptions{0, 0, ScanMode::Auto}, &bidir);
        if (err != cudaSuccess && err != cudaErrorInvalidConfiguration) return err;
        bidir_ok = err == cudaSuccess;
    }
    return dispatch(dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        if (bidir_ok) {
            Args<T> a = make_args<T>(q, k, v, dout, sz, 1.f);
            a.dq = static_cast<T*>(dq);
            a.dk = static_cast<T*>(dk);
            a.dv = static_cast<T*>(dv);
            return launch_bidir_backward<T>(a, bidir, workspace, workspace_floats * int64_t(sizeof(float)), stream);
        }
        if (plan.chunked)  // the chunk-parallel backward
            return launch_chunked_backward<false, T>(plan, dout, q, k, v, sz, 1.f, m0, a0, S0, daT, dST, workspace,
                                                     workspace_floats, static_cast<T*>(dq), nullptr,
                                                     static_cast<T*>(dk), static_cast<T*>(dv), da0, dS0, stream);
        const int64_t n = sz.B * sz.T * sz.H * sz.L;  // bidirectional, or the sequential fallback (ws_M, ws_c, ws_r)
        if (causal && (workspace_floats < 3 * n || (n > 0 && !workspace))) return cudaErrorInvalidValue;
        Args<T> a = make_args<T>(q, k, v, dout, sz, 1.f);
        a.m0 = m0; a.a0 = a0; a.S0 = S0;
        a.daT = daT; a.dST = dST;
        if (causal) {
            a.ws_M = workspace; a.ws_c = workspace + n; a.ws_r = workspace + 2 * n;
        }
        a.dq = static_cast<T*>(dq);
        a.dk = static_cast<T*>(dk);
        a.dv = static_cast<T*>(dv);
        a.da0 = da0; a.dS0 = dS0;
        return launch_backward<Kind::Latte>(a, causal, stream);
    });
}

}  // namespace scan
}  // namespace flashts
