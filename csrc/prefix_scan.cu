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
// L·Dv states; chunk_path_ok): recompute_kernel repeats the forward sweep and stores, per position and latent, M, c and r
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
#include "common.cuh"
#include "prefix_scan.h"

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
// Time is cut into chunks of kC = 16 steps; chunk "slots" as in the Triton kernels: without cu_seqlens batch row
// b owns slots [b·NS, b·NS + ⌈T/C⌉) with NS = ⌈T/C⌉; with cu_seqlens (B = 1) sequence n owns the slots from
// cu[n]/C + n on (disjoint, NS = T/C + N in all; the slot of a block is found by a binary search over cu).
// A per-slot row is  srow = (b·NS + slot)·H + h  (workspace arrays [B·NS·H, L(, Dv)] float32).
//
// Five launches (every chunk of every head in parallel except the two light element-wise scans):
//   1. chunk_bwd_kernel<kSum>   grid B·NS·H: chunk summary (c_max, Σ_s e^{a−c_max}, Σ_s e^{a−c_max} v_s).
//   2. state_scan_bwd_kernel    grid ⌈N·H·L·Dv / threads⌉: one thread per (row, l, d) combines the summaries in
//                               order (online-softmax combine) → the state (m_in, α_in, S_in) ENTERING every chunk.
//   3. chunk_bwd_kernel<kCot>   grid B·NS·H: each chunk's affine cotangent map, entering = f ⊙ leaving + (G, g),
//                               f = e^{m_in − r} (r = max(m_in, c_max), the max leaving the chunk).
//   4. cot_scan_kernel          grid like 2: reverse scan of the maps from (dS_T, dα_T) → the cotangent LEAVING
//                               every chunk (written over (G, g)) and (dS0, dα0).
//   5. chunk_bwd_kernel<kGrads> grid B·NS·H: dv, da, dp of every chunk, then dk / dq (Latte: dk = da,
//                               dq = p ⊙ (dp − Σ_l p dp); Aaren: dk = scale·da q and the chunk's dq partial
//                               scale·Σ_t da_t k_t), plus (Aaren) dq_sum_kernel: the partials summed over the
//                               slots of each sequence in slot order (deterministic, no atomics).
//
// Chunk math (one block per (slot, head), all L latents and Dv columns; units of e^r per latent, E = e^{a−r},
// den^r_t = Σ_{s≤t} E_s + α_in f, F = p/den^r, H = f/den^r, vd[t,s] = dy_t·v_s (s ≤ t), T = tril ones):
//   z   = dp = (vd E) / den^r + (dy S_inᵀ) ⊙ H                       [C, L]
//   P   = tril(F Eᵀ)                                                   [C, C]
//   X   = E ⊙ (vdᵀ F − Tᵀ (F ⊙ z))   (= Σ_{t≥s} F_t E_s (vd[t,s] − z_t))
//   dv  = Pᵀ dy + E dS,   da = X + E ⊙ (v dSᵀ + dα)                      (dS, dα: the cotangent leaving)
//   G   = (p ⊙ H)ᵀ dy,     g = −Σ_t (p ⊙ H) ⊙ z                          (entering cotangent for zero leaving)
// The products are block_gemm calls on float32 shared-memory tiles: mma.sync m16n8k8 TF32 (HMMA) for 16-bit
// inputs (like Triton's "tf32" dots), exact FMA for float32 inputs.
// Exact fallback: when the running max rises by more than kRiseLimit (40) inside a chunk for some latent (±1e4
// logits) the block uses the per-position running max M_t instead of r: F_t E_s → c_t e^{a_s − M_t} (c = p/den_t,
// den_t referenced to M_t), H → e^{m_in − M_t}/den_t; P, z and X are then formed by FMA loops with every exponent
// ≤ 0 (exact and finite whatever the logits), the rest of the chunk is shared.
// Tiles: C = 16 rows; latents padded to Lp = ⌈L/16⌉·16 (padded latents: a = −∞, p = 0, they add 0), values to
// Dvp = ⌈Dv/16⌉·16. Row loads of v, do, k (and Latte q) move 16 bytes per thread (LDG.E.128) when the rows allow.
// =============================================================================================================

constexpr int kC = 16;                // chunk steps
constexpr int kBwdThreads = 128;      // 4 warps per chunk block
constexpr float kRiseLimit = 40.f;    // largest rise of the running max inside a chunk for the matrix form

enum ChunkMode : int { kSum = 0, kCot = 1, kGrads = 2 };

// The chunk products' implementation (common.cuh block_gemm): float32 inputs FMA; 16-bit inputs mma.sync TF32.
template <typename T>
constexpr int kScanGemm = std::is_same<T, float>::value ? mmau::kGemmFma : mmau::kGemmMma;

// A strided [B, T, H, X] input; vec: 16-byte row loads allowed (checked on the host).
template <typename T>
struct RowView {
    const T* p;
    int64_t sb, st, sh, sx;
    int vec;
};

template <typename Elem>
struct ChunkArgs {
    RowView<Elem> q, k, v, dout;  // Aaren q: [B(or shared), H, D] with st unused
    int64_t B, T, H, L, D, Dv, N, NS;
    const int32_t* cu;
    float scale;
    int Lp, Dvp;
    // workspace (float32, [R, L] / [R, L, Dv], R = B·NS·H)
    float *m_s, *u_s, *m_ch, *u_ch, *w_ch, *f_ch, *du_ch, *dw_ch, *dq_part;
    Elem *dq, *dk, *dv;  // outputs (Latte dq; Aaren dq goes to dq_part)
};

// Shared-memory tiles of chunk_bwd_kernel (floats; the host sizes the launch with the same code).
struct ChunkSmem {
    float *A, *PM, *E, *F, *Hh, *ID, *Z, *X;  // [C][ldL]
    float *V, *DY, *OUT;                       // [C][ldV]
    float *S1, *S2;                            // [Lp][ldV]: entering S (kSum: Eᵀv); leaving dS (kGrads) / G (kCot)
    float *VD, *PP, *TRI;                      // [C][ldC]
    float *m_in, *u_in, *r, *fin, *du, *cmax;  // [Lp]
    float *Q;                                  // [D] Aaren's q
    int ldL, ldV, ldC;
    __host__ __device__ ChunkSmem(SmemCarver& sc, int Lp, int Dvp, int64_t Dq) {
        ldL = Lp + 4;
        ldV = Dvp + 4;
        ldC = kC + 4;
        A = sc.take<float>(kC * ldL); PM = sc.take<float>(kC * ldL); E = sc.take<float>(kC * ldL);
        F = sc.take<float>(kC * ldL); Hh = sc.take<float>(kC * ldL); ID = sc.take<float>(kC * ldL);
        Z = sc.take<float>(kC * ldL); X = sc.take<float>(kC * ldL);
        V = sc.take<float>(kC * ldV); DY = sc.take<float>(kC * ldV); OUT = sc.take<float>(kC * ldV);
        S1 = sc.take<float>(static_cast<int64_t>(Lp) * ldV); S2 = sc.take<float>(static_cast<int64_t>(Lp) * ldV);
        VD = sc.take<float>(kC * ldC); PP = sc.take<float>(kC * ldC); TRI = sc.take<float>(kC * ldC);
        m_in = sc.take<float>(Lp); u_in = sc.take<float>(Lp); r = sc.take<float>(Lp);
        fin = sc.take<float>(Lp); du = sc.take<float>(Lp); cmax = sc.take<float>(Lp);
        Q = sc.take<float>(Dq > 0 ? Dq : 1);
    }
};

// Slot → (batch row b, sequence n, first step t0, steps len ≤ C; len ≤ 0: the slot is past its sequence's end).
struct SlotInfo {
    int64_t b, n, t0, len, srow, h;
};

template <typename T>
__device__ __forceinline__ SlotInfo slot_info(const ChunkArgs<T>& a, int64_t blk) {
    SlotInfo s;
    s.srow = blk;
    s.h = blk % a.H;
    const int64_t bs = blk / a.H, slot = bs % a.NS;
    s.b = bs / a.NS;
    if (a.cu == nullptr) {
        s.n = s.b;
        s.t0 = slot * kC;
        s.len = a.T - s.t0;
    } else {  // the last sequence n whose first slot cu[n]/C + n is ≤ slot
        int64_t lo = 0, hi = a.N - 1;
        while (lo < hi) {
            const int64_t mid = (lo + hi + 1) / 2;
            if (static_cast<int64_t>(a.cu[mid]) / kC + mid <= slot) lo = mid; else hi = mid - 1;
        }
        s.n = lo;
        const int64_t first = static_cast<int64_t>(a.cu[lo]) / kC + lo;
        s.t0 = a.cu[lo] + (slot - first) * kC;
        s.len = a.cu[lo + 1] - s.t0;
    }
    if (s.len > kC) s.len = kC;
    return s;
}

// dst[r][c] = src[b, t0 + r, h, c] for r < len, c < X; `fill` elsewhere in [kC][cols]. With src.vec each thread
// moves 16 bytes (one LDG.E.128) of one row; X is then a multiple of 16 / sizeof(T) (checked on the host).
template <typename T>
__device__ __forceinline__ void load_rows(float* dst, int ld, int cols, const RowView<T>& src, int64_t b, int64_t t0,
                                          int64_t h, int64_t len, int64_t X, float fill) {
    if (src.vec) {
        constexpr int kVE = 16 / static_cast<int>(sizeof(T));
        const int groups = cols / kVE;  // cols is a multiple of 16
        for (int idx = threadIdx.x; idx < kC * groups; idx += blockDim.x) {
            const int r = idx / groups, c0 = (idx - r * groups) * kVE;
            if (r < len && c0 < X) {
                const uint4 raw = *reinterpret_cast<const uint4*>(src.p + b * src.sb + (t0 + r) * src.st + h * src.sh + c0);
                const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
                for (int j = 0; j < kVE; ++j) dst[r * ld + c0 + j] = to_float(e[j]);
            } else {
#pragma unroll
                for (int j = 0; j < kVE; ++j) dst[r * ld + c0 + j] = fill;
            }
        }
        return;
    }
    for (int idx = threadIdx.x; idx < kC * cols; idx += blockDim.x) {
        const int r = idx / cols, c = idx - r * cols;
        dst[r * ld + c] = (r < len && c < X) ? to_float(src.p[b * src.sb + (t0 + r) * src.st + h * src.sh + c * src.sx])
                                             : fill;
    }
}

// One chunk of the backward (modes above). Every thread of the block runs every phase (barriers between them).
template <Kind KIND, typename T, int MODE>
__global__ void __launch_bounds__(kBwdThreads, 1) chunk_bwd_kernel(ChunkArgs<T> a) {
    constexpr int kTC = kScanGemm<T>;
    using mmau::block_gemm;
    using mmau::kCol;
    using mmau::kRow;
    FLASHTS_DYNAMIC_SMEM(unsigned char, smem_raw);
    SmemCarver sc(smem_raw);
    const ChunkSmem sm(sc, a.Lp, a.Dvp, KIND == Kind::Aaren ? a.D : 0);
    const SlotInfo si = slot_info(a, blockIdx.x);
    if (si.len <= 0) return;  // uniform over the block: a slot past its sequence's end
    const int tid_ = threadIdx.x, nth = blockDim.x, lane = tid_ & 31, warp = tid_ >> 5, nwarps = nth >> 5;
    const int Lp = a.Lp, Dvp = a.Dvp, ldL = sm.ldL, ldV = sm.ldV, ldC = sm.ldC;
    const int64_t L = a.L, Dv = a.Dv, len = si.len, b = si.b, h = si.h, t0 = si.t0;
    const int64_t srow = si.srow;

    // ---- logits A, mixing weights PM, values V (and cotangents DY)
    if (KIND == Kind::Aaren) {
        const T* qr = a.q.p + b * a.q.sb + h * a.q.sh;
        for (int64_t j = tid_; j < a.D; j += nth) sm.Q[j] = to_float(qr[j * a.q.sx]);
        for (int i = tid_; i < kC * Lp; i += nth) {
            sm.A[(i / Lp) * ldL + i % Lp] = -CUDART_INF_F;
            sm.PM[(i / Lp) * ldL + i % Lp] = 0.f;
        }
        __syncthreads();
        for (int t = warp; t < len; t += nwarps) {  // a_t = scale·(q·k_t): one warp per step
            const T* kr = a.k.p + b * a.k.sb + (t0 + t) * a.k.st + h * a.k.sh;
            float acc = 0.f;
            for (int64_t j = lane; j < a.D; j += 32) acc += sm.Q[j] * to_float(kr[j * a.k.sx]);
            acc = warp_sum(acc);
            if (lane == 0) {
                sm.A[t * ldL] = a.scale * acc;
                sm.PM[t * ldL] = 1.f;
            }
        }
    } else {
        load_rows(sm.A, ldL, Lp, a.k, b, t0, h, len, L, -CUDART_INF_F);
        if (MODE != kSum) load_rows(sm.PM, ldL, Lp, a.q, b, t0, h, len, L, -CUDART_INF_F);
        __syncthreads();
        if (MODE != kSum)
            for (int t = warp; t < kC; t += nwarps) {  // p = softmax_l(q_t) in place (0 on padded rows/latents)
                float* row = sm.PM + t * ldL;
                float mx = -CUDART_INF_F;
                for (int l = lane; l < Lp; l += 32) mx = fmaxf(mx, row[l]);
                mx = warp_max(mx);
                float sum = 0.f;
                for (int l = lane; l < Lp; l += 32) sum += exp_shift(row[l], mx);
                sum = warp_sum(sum);
                const float inv = sum > 0.f ? 1.f / sum : 0.f;
                for (int l = lane; l < Lp; l += 32) row[l] = exp_shift(row[l], mx) * inv;
            }
    }
    load_rows(sm.V, ldV, Dvp, a.v, b, t0, h, len, Dv, 0.f);
    if (MODE != kSum) load_rows(sm.DY, ldV, Dvp, a.dout, b, t0, h, len, Dv, 0.f);
    __syncthreads();

    // ---- per latent: chunk max; entering state; r, f
    for (int l = tid_; l < Lp; l += nth) {
        float cm = -CUDART_INF_F;
        for (int t = 0; t < kC; ++t) cm = fmaxf(cm, sm.A[t * ldL + l]);
        sm.cmax[l] = cm;
        if (MODE != kSum) {
            const float m_in = l < L ? a.m_ch[srow * L + l] : -CUDART_INF_F;
            sm.m_in[l] = m_in;
            sm.u_in[l] = l < L ? a.u_ch[srow * L + l] : 0.f;
            const float r = fmaxf(m_in, cm);
            sm.r[l] = r;
            sm.fin[l] = exp_shift(m_in, r);
            sm.du[l] = (MODE == kGrads && l < L) ? a.du_ch[srow * L + l] : 0.f;
        }
    }
    __syncthreads();

    if (MODE == kSum) {  // E_c = e^{a − c_max}; (c_max, Σ E_c, E_cᵀ v)
        for (int i = tid_; i < kC * Lp; i += nth) {
            const int t = i / Lp, l = i - t * Lp;
            sm.E[t * ldL + l] = exp_shift(sm.A[t * ldL + l], sm.cmax[l]);
        }
        __syncthreads();
        block_gemm<kTC, kCol, kRow>(sm.S1, ldV, sm.E, ldL, sm.V, ldV, Lp, Dvp, kC, false);
        for (int l = tid_; l < L; l += nth) {
            float s = 0.f;
            for (int t = 0; t < kC; ++t) s += sm.E[t * ldL + l];
            a.m_s[srow * L + l] = sm.cmax[l];
            a.u_s[srow * L + l] = s;
        }
        __syncthreads();
        for (int64_t i = tid_; i < L * Dv; i += nth) a.w_ch[srow * L * Dv + i] = sm.S1[(i / Dv) * ldV + i % Dv];
        return;
    }

    // ---- entering S (and the leaving cotangent dS), the fast-path test
    for (int i = tid_; i < Lp * Dvp; i += nth) {
        const int l = i / Dvp, d = i - l * Dvp;
        const bool in = l < L && d < Dv;
        sm.S1[l * ldV + d] = in ? a.w_ch[(srow * L + l) * Dv + d] : 0.f;
        if (MODE == kGrads) sm.S2[l * ldV + d] = in ? a.dw_ch[(srow * L + l) * Dv + d] : 0.f;
    }
    bool rise = false;
    for (int l = tid_; l < L; l += nth) rise |= sm.r[l] - fmaxf(sm.m_in[l], sm.A[l]) > kRiseLimit;
    for (int i = tid_; i < kC * Lp; i += nth) {
        const int t = i / Lp, l = i - t * Lp;
        sm.E[t * ldL + l] = exp_shift(sm.A[t * ldL + l], sm.r[l]);  // e^{a_s − r} ≤ 1
    }
    for (int i = tid_; i < kC * kC; i += nth) {
        const int t = i / kC, s = i - t * kC;
        sm.TRI[t * ldC + s] = t >= s ? -1.f : 0.f;
    }
    const bool exact = __syncthreads_or(rise);

    block_gemm<kTC, kRow, kCol>(sm.VD, ldC, sm.DY, ldV, sm.V, ldV, kC, kC, Dvp, false);   // dy vᵀ
    block_gemm<kTC, kRow, kCol>(sm.Z, ldL, sm.DY, ldV, sm.S1, ldV, kC, Lp, Dvp, false);  // dy S_inᵀ
    __syncthreads();
    for (int i = tid_; i < kC * kC; i += nth) {
        const int t = i / kC, s = i - t * kC;
        if (s > t) sm.VD[t * ldC + s] = 0.f;
    }
    // per latent (serial over the C steps): den, F = p/den, H = f/den (fast: den^r; exact: den_t at M_t, and
    // ID = M_t, X = 1/den_t)
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
                den = den * exp_shift(M, Mn) + exp_shift(at, Mn);
                M = Mn;
                const float inv = den > 0.f ? 1.f / den : 1.f;
                sm.ID[t * ldL + l] = M;
                sm.X[t * ldL + l] = inv;
                sm.F[t * ldL + l] = sm.PM[t * ldL + l] * inv;
                sm.Hh[t * ldL + l] = exp_shift(m_in, M) * inv;
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
            for (int s = 0; s <= t; ++s) acc += sm.VD[t * ldC + s] * exp_shift(sm.A[s * ldL + l], Mt);
            sm.Z[o] = acc * sm.X[o] + sm.Z[o] * sm.Hh[o];
        }
    }
    __syncthreads();
    // Ff = p ⊙ H (in Hh); fast path: F ⊙ z (in ID); P; X = E ⊙ (vdᵀF − Tᵀ(F⊙z))
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
                    acc += sm.F[t * ldL + l] * exp_shift(sm.A[s * ldL + l], sm.ID[t * ldL + l]);
            sm.PP[t * ldC + s] = acc;
        }
        for (int i = tid_; i < kC * Lp; i += nth) {
            const int s = i / Lp, l = i - s * Lp;
            const float as = sm.A[s * ldL + l];
            float acc = 0.f;
            for (int t = s; t < kC; ++t)
                acc += sm.F[t * ldL + l] * exp_shift(as, sm.ID[t * ldL + l]) * (sm.VD[t * ldC + s] - sm.Z[t * ldL + l]);
            sm.X[s * ldL + l] = acc;
        }
    }
    __syncthreads();

    if (MODE == kCot) {  // G = Ffᵀ dy, g = −Σ_t Ff z, f
        block_gemm<kTC, kCol, kRow>(sm.S2, ldV, sm.Hh, ldL, sm.DY, ldV, Lp, Dvp, kC, false);
        for (int l = tid_; l < L; l += nth) {
            float g = 0.f;
            for (int t = 0; t < kC; ++t) g -= sm.Hh[t * ldL + l] * sm.Z[t * ldL + l];
            a.du_ch[srow * L + l] = g;
            a.f_ch[srow * L + l] = sm.fin[l];
        }
        __syncthreads();
        for (int64_t i = tid_; i < L * Dv; i += nth) a.dw_ch[srow * L * Dv + i] = sm.S2[(i / Dv) * ldV + i % Dv];
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
    T* dv_out = a.dv + ((b * a.T + t0) * a.H + h) * Dv;
    for (int64_t i = tid_; i < len * Dv; i += nth) {
        const int64_t t = i / Dv, d = i - t * Dv;
        dv_out[t * a.H * Dv + d] = from_float<T>(sm.OUT[t * ldV + d]);
    }
    if (KIND == Kind::Latte) {  // dk = da; dq = p ⊙ (dp − Σ_l p dp), dp shifted by dp_{·,0} first
        T* dk_out = a.dk + ((b * a.T + t0) * a.H + h) * L;
        T* dq_out = a.dq + ((b * a.T + t0) * a.H + h) * L;
        for (int64_t i = tid_; i < len * L; i += nth) {
            const int64_t t = i / L, l = i - t * L;
            dk_out[t * a.H * L + l] = from_float<T>(sm.X[t * ldL + l]);
        }
        for (int t = warp; t < len; t += nwarps) {
            const float* zr = sm.Z + t * ldL;
            const float* pr = sm.PM + t * ldL;
            const float z0 = zr[0];
            float s = 0.f;
            for (int l = lane; l < L; l += 32) s += pr[l] * (zr[l] - z0);
            s = warp_sum(s);
            for (int l = lane; l < L; l += 32) dq_out[t * a.H * L + l] = from_float<T>(pr[l] * ((zr[l] - z0) - s));
        }
    } else {  // dk_t = scale·da_t q; the chunk's dq partial scale·Σ_t da_t k_t (t in order)
        T* dk_out = a.dk + ((b * a.T + t0) * a.H + h) * a.D;
        for (int64_t i = tid_; i < len * a.D; i += nth) {
            const int64_t t = i / a.D, j = i - t * a.D;
            dk_out[t * a.H * a.D + j] = from_float<T>(a.scale * sm.X[t * ldL] * sm.Q[j]);
        }
        for (int64_t j = tid_; j < a.D; j += nth) {
            float acc = 0.f;
            for (int t = 0; t < len; ++t)
                acc += sm.X[t * ldL] * to_float(a.k.p[b * a.k.sb + (t0 + t) * a.k.st + h * a.k.sh + j * a.k.sx]);
            a.dq_part[srow * a.D + j] = a.scale * acc;
        }
    }
}

// The sequence n of a (n·H + h) row: its batch row, first slot, number of chunks.
template <typename T>
__device__ __forceinline__ void seq_slots(const ChunkArgs<T>& a, int64_t n, int64_t& b, int64_t& first,
                                          int64_t& n_chunks) {
    if (a.cu == nullptr) {
        b = n;
        first = 0;
        n_chunks = (a.T + kC - 1) / kC;
    } else {
        b = 0;
        first = static_cast<int64_t>(a.cu[n]) / kC + n;
        n_chunks = (static_cast<int64_t>(a.cu[n + 1]) - a.cu[n] + kC - 1) / kC;
    }
}

// Step 2: one thread per (n, h, l, d): the summaries combined in chunk order into the state entering each chunk
// (m_ch/u_ch by the d = 0 thread; w_ch in place: the thread reads its element's summary before writing it).
template <typename T>
__global__ void state_scan_bwd_kernel(ChunkArgs<T> a, const float* m0, const float* u0, const float* w0) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t L = a.L, Dv = a.Dv;
    if (i >= a.N * a.H * L * Dv) return;
    const int64_t d = i % Dv, l = (i / Dv) % L, nh = i / (L * Dv), n = nh / a.H, h = nh % a.H;
    int64_t b, first, n_chunks;
    seq_slots(a, n, b, first, n_chunks);
    float m = m0 ? m0[nh * L + l] : -CUDART_INF_F, u = m0 ? u0[nh * L + l] : 0.f, w = m0 ? w0[i] : 0.f;
    for (int64_t c = 0; c < n_chunks; ++c) {
        const int64_t srow = (b * a.NS + first + c) * a.H + h;
        const float cm = a.m_s[srow * L + l], cu = a.u_s[srow * L + l];
        float* cell = a.w_ch + (srow * L + l) * Dv + d;
        const float cw = *cell;
        *cell = w;
        if (d == 0) {
            a.m_ch[srow * L + l] = m;
            a.u_ch[srow * L + l] = u;
        }
        const SoftmaxMerge mg = softmax_merge(m, cm);
        m = mg.m;
        u = u * mg.fa + cu * mg.fb;
        w = w * mg.fa + cw * mg.fb;
    }
}

// Step 4: one thread per (n, h, l, d): the reverse scan of the chunk maps from (dS_T, dα_T); writes the cotangent
// leaving every chunk over (G, g) (dα by the d = 0 thread) and (dS0, dα0) when asked. A zero-length sequence
// passes (dS_T, dα_T) through.
template <typename T>
__global__ void cot_scan_kernel(ChunkArgs<T> a, const float* duT, const float* dwT, float* du0, float* dw0) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t L = a.L, Dv = a.Dv;
    if (i >= a.N * a.H * L * Dv) return;
    const int64_t d = i % Dv, l = (i / Dv) % L, nh = i / (L * Dv), n = nh / a.H, h = nh % a.H;
    int64_t b, first, n_chunks;
    seq_slots(a, n, b, first, n_chunks);
    float dw = dwT ? dwT[i] : 0.f, du = duT ? duT[nh * L + l] : 0.f;
    for (int64_t c = n_chunks - 1; c >= 0; --c) {
        const int64_t srow = (b * a.NS + first + c) * a.H + h;
        const float f = a.f_ch[srow * L + l];
        float* cell = a.dw_ch + (srow * L + l) * Dv + d;
        const float G = *cell;
        *cell = dw;
        dw = f * dw + G;
        if (d == 0) {
            const float g = a.du_ch[srow * L + l];
            a.du_ch[srow * L + l] = du;
            du = f * du + g;
        }
    }
    if (dw0) dw0[i] = dw;
    if (du0 && d == 0) du0[nh * L + l] = du;
}

// Aaren: dq_rows[n, h, :] = Σ over the chunk slots of sequence n (in slot order) of the dq partials.
template <typename T>
__global__ void dq_sum_kernel(ChunkArgs<T> a, float* dq_rows) {
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= a.N * a.H * a.D) return;
    const int64_t j = i % a.D, nh = i / a.D, n = nh / a.H, h = nh % a.H;
    int64_t b, first, n_chunks;
    seq_slots(a, n, b, first, n_chunks);
    float acc = 0.f;
    for (int64_t c = 0; c < n_chunks; ++c) acc += a.dq_part[((b * a.NS + first + c) * a.H + h) * a.D + j];
    dq_rows[i] = acc;
}

// ----- host side of the chunked backward

// Chunk slots per batch row, the padded dims and the workspace (floats) of the chunked backward.
struct ChunkPlan {
    int64_t NS, R;  // slots per batch row; workspace rows B·NS·H
    int Lp, Dvp;
    int64_t smem_bytes, ws_floats;
};

inline ChunkPlan chunk_plan(const ScanSizes& sz, bool aaren) {
    ChunkPlan p;
    p.NS = sz.cu_seqlens ? sz.T / kC + sz.N : (sz.T + kC - 1) / kC;
    p.R = sz.B * p.NS * sz.H;
    p.Lp = static_cast<int>((sz.L + 15) / 16 * 16);
    p.Dvp = static_cast<int>((sz.Dv + 15) / 16 * 16);
    SmemCarver sc(nullptr);
    ChunkSmem s(sc, p.Lp, p.Dvp, aaren ? sz.D : 0);
    p.smem_bytes = sc.offset;
    auto r4 = [](int64_t n) { return (n + 3) / 4 * 4; };
    const int64_t rl = r4(p.R * sz.L), rld = r4(p.R * sz.L * sz.Dv);
    p.ws_floats = 6 * rl + 2 * rld + (aaren ? r4(p.R * sz.D) : 0);
    return p;
}

// Whether the chunked backward runs at these sizes: its tiles fit in the device's shared memory (else the
// sequential kernels above run: the documented fallback for very wide states).
inline cudaError_t chunk_path_ok(const ScanSizes& sz, bool aaren, bool* ok) {
    int dev = 0, optin = 0;
    cudaError_t err = cudaGetDevice(&dev);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (err != cudaSuccess) return err;
    *ok = chunk_plan(sz, aaren).smem_bytes <= optin;
    return cudaSuccess;
}

template <typename T>
RowView<T> row_view(const ScanTensor& x, int64_t X) {
    constexpr int64_t kVE = 16 / static_cast<int64_t>(sizeof(T));
    const bool vec = x.data != nullptr && x.stride_x == 1 && X % kVE == 0 &&
                     reinterpret_cast<uintptr_t>(x.data) % 16 == 0 && x.stride_b % kVE == 0 &&
                     x.stride_t % kVE == 0 && x.stride_h % kVE == 0;
    return RowView<T>{static_cast<const T*>(x.data), x.stride_b, x.stride_t, x.stride_h, x.stride_x, vec ? 1 : 0};
}

// Threads per block of an element-wise scan over `n` chains: 256, halved (down to 32) while the grid has fewer
// blocks than SMs (the occupancy rule of kernels/occupancy.py for the light sequential scans).
inline int scan_threads(int64_t n, int sms) {
    int t = 256;
    while (t > 32 && (n + t - 1) / t < sms) t /= 2;
    return t;
}

template <Kind KIND, typename T>
cudaError_t launch_chunked_backward(ScanTensor dout, ScanTensor q, ScanTensor k, ScanTensor v, const ScanSizes& sz,
                                    float scale, const float* m0, const float* u0, const float* w0, const float* duT,
                                    const float* dwT, float* ws, int64_t ws_floats, T* dq, float* dq_rows, T* dk,
                                    T* dv, float* du0, float* dw0, cudaStream_t stream) {
    const bool aaren = KIND == Kind::Aaren;
    const ChunkPlan plan = chunk_plan(sz, aaren);
    if (ws_floats < plan.ws_floats || (plan.ws_floats > 0 && ws == nullptr)) return cudaErrorInvalidValue;
    ChunkArgs<T> a{};
    a.q = row_view<T>(q, aaren ? 0 : sz.L);
    if (aaren) a.q.vec = 0;
    a.k = row_view<T>(k, aaren ? 0 : sz.L);
    if (aaren) a.k.vec = 0;
    a.v = row_view<T>(v, sz.Dv);
    a.dout = row_view<T>(dout, sz.Dv);
    a.B = sz.B; a.T = sz.T; a.H = sz.H; a.L = sz.L; a.D = sz.D; a.Dv = sz.Dv; a.N = sz.N; a.NS = plan.NS;
    a.cu = sz.cu_seqlens;
    a.scale = scale;
    a.Lp = plan.Lp;
    a.Dvp = plan.Dvp;
    auto r4 = [](int64_t n) { return (n + 3) / 4 * 4; };
    const int64_t rl = r4(plan.R * sz.L), rld = r4(plan.R * sz.L * sz.Dv);
    float* p = ws;
    a.m_s = p; p += rl; a.u_s = p; p += rl; a.m_ch = p; p += rl; a.u_ch = p; p += rl; a.f_ch = p; p += rl;
    a.du_ch = p; p += rl; a.w_ch = p; p += rld; a.dw_ch = p; p += rld;
    a.dq_part = aaren ? p : nullptr;
    a.dq = dq; a.dk = dk; a.dv = dv;

    int dev = 0, sms = 0;
    cudaError_t err = cudaGetDevice(&dev);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    if (err != cudaSuccess) return err;
    const int64_t blocks = plan.R;
    const size_t smem = static_cast<size_t>(plan.smem_bytes);
    auto k_sum = chunk_bwd_kernel<KIND, T, kSum>;
    auto k_cot = chunk_bwd_kernel<KIND, T, kCot>;
    auto k_grads = chunk_bwd_kernel<KIND, T, kGrads>;
    if (plan.smem_bytes > DEFAULT_SMEM) {
        for (auto kern : {k_sum, k_cot, k_grads}) {
            err = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
            if (err != cudaSuccess) return err;
        }
    }
    const int64_t chains = sz.N * sz.H * sz.L * sz.Dv;
    const int st = scan_threads(chains, sms);
    const unsigned scan_blocks = static_cast<unsigned>((chains + st - 1) / st);
    if (blocks > 0) {
        FLASHTS_LAUNCH(k_sum, static_cast<unsigned>(blocks), kBwdThreads, smem, stream, a);
        if ((err = FLASHTS_LAUNCH_CHECK()) != cudaSuccess) return err;
    }
    if (chains > 0) {
        auto kern = state_scan_bwd_kernel<T>;
        FLASHTS_LAUNCH(kern, scan_blocks, st, 0, stream, a, m0, u0, w0);
        if ((err = FLASHTS_LAUNCH_CHECK()) != cudaSuccess) return err;
    }
    if (blocks > 0) {
        FLASHTS_LAUNCH(k_cot, static_cast<unsigned>(blocks), kBwdThreads, smem, stream, a);
        if ((err = FLASHTS_LAUNCH_CHECK()) != cudaSuccess) return err;
    }
    if (chains > 0) {
        auto kern = cot_scan_kernel<T>;
        FLASHTS_LAUNCH(kern, scan_blocks, st, 0, stream, a, duT, dwT, du0, dw0);
        if ((err = FLASHTS_LAUNCH_CHECK()) != cudaSuccess) return err;
    }
    if (blocks > 0) {
        FLASHTS_LAUNCH(k_grads, static_cast<unsigned>(blocks), kBwdThreads, smem, stream, a);
        if ((err = FLASHTS_LAUNCH_CHECK()) != cudaSuccess) return err;
    }
    if (aaren && sz.N * sz.H * sz.D > 0) {
        const int64_t n = sz.N * sz.H * sz.D;
        const int t = scan_threads(n, sms);
        auto kern = dq_sum_kernel<T>;
        FLASHTS_LAUNCH(kern, static_cast<unsigned>((n + t - 1) / t), t, 0, stream, a, dq_rows);
        if ((err = FLASHTS_LAUNCH_CHECK()) != cudaSuccess) return err;
    }
    return cudaSuccess;
}

// Workspace (floats) of the causal backward at these sizes: the chunked path's, or the sequential fallback's
// 3·B·T·H·L (ws_M, ws_c, ws_r).
inline cudaError_t bwd_workspace(const ScanSizes& sz, bool aaren, int64_t* floats) {
    bool ok = false;
    const cudaError_t err = chunk_path_ok(sz, aaren, &ok);
    if (err != cudaSuccess) return err;
    *floats = ok ? chunk_plan(sz, aaren).ws_floats : 3 * sz.B * sz.T * sz.H * sz.L;
    return cudaSuccess;
}

}  // namespace

// ------------------------------------------------------------------------------------------- launchers

cudaError_t aaren_fwd(DType dtype, ScanTensor q, ScanTensor k, ScanTensor v, ScanSizes sz, float scale,
                      const float* m0, const float* u0, const float* w0, void* o, float* mT, float* uT, float* wT,
                      cudaStream_t stream) {
    sz.L = 1;
    if (!sizes_ok(sz) || (m0 && (!u0 || !w0))) return cudaErrorInvalidValue;
    return dispatch(dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        Args<T> a = make_args<T>(q, k, v, ScanTensor{nullptr, 0, 0, 0, 0}, sz, scale);
        a.m0 = m0; a.a0 = u0; a.S0 = w0;
        a.o = static_cast<T*>(o);
        a.mT = mT; a.aT = uT; a.ST = wT;
        return launch_forward<Kind::Aaren>(a, true, stream);
    });
}

cudaError_t latte_fwd(DType dtype, ScanTensor q, ScanTensor k, ScanTensor v, ScanSizes sz, bool causal,
                      const float* m0, const float* a0, const float* S0, void* o, float* mT, float* aT, float* ST,
                      cudaStream_t stream) {
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
        return launch_forward<Kind::Latte>(a, causal, stream);
    });
}

cudaError_t scan_bwd_workspace(bool aaren, ScanSizes sz, bool causal, int64_t* floats) {
    if (aaren) sz.L = 1; else sz.D = sz.L;
    if (!floats || !sizes_ok(sz)) return cudaErrorInvalidValue;
    *floats = 0;
    if (!causal && !aaren) return cudaSuccess;
    return bwd_workspace(sz, aaren, floats);
}

cudaError_t aaren_bwd(DType dtype, ScanTensor dout, ScanTensor q, ScanTensor k, ScanTensor v, ScanSizes sz,
                      float scale, const float* m0, const float* u0, const float* w0, const float* duT,
                      const float* dwT, float* workspace, int64_t workspace_floats, float* dq_rows, void* dk,
                      void* dv, float* du0, float* dw0, cudaStream_t stream) {
    sz.L = 1;
    if (!sizes_ok(sz) || (m0 && (!u0 || !w0)) || !dq_rows || (du0 && !dw0)) return cudaErrorInvalidValue;
    bool chunked = false;
    cudaError_t err = chunk_path_ok(sz, true, &chunked);
    if (err != cudaSuccess) return err;
    return dispatch(dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        if (chunked)  // the chunk-parallel backward
            return launch_chunked_backward<Kind::Aaren, T>(dout, q, k, v, sz, scale, m0, u0, w0, duT, dwT, workspace,
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
    bool chunked = false;
    if (causal) {
        const cudaError_t err = chunk_path_ok(sz, false, &chunked);
        if (err != cudaSuccess) return err;
    }
    return dispatch(dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        if (chunked)  // the chunk-parallel backward
            return launch_chunked_backward<Kind::Latte, T>(dout, q, k, v, sz, 1.f, m0, a0, S0, daT, dST, workspace,
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
