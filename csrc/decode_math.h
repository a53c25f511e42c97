// flashts — decode steps (T = 1 with a state) of the causal ops: the per-thread math of the kernels in
// csrc/decode_step.cu, written once as __host__ __device__ code.
//
// This header compiles with nvcc (the kernels) AND with a plain C++ compiler (the host-emulation harness of
// tests/test_decode_step_emulation.py, which runs every phase below for every (block, thread) with host loops
// and checks the result against flashts.reference). No torch headers, no CUDA headers outside __CUDACC__.
//
// Execution model. One thread block per (batch b, query head h) (grid B·H, blockDim NT, NT a multiple of 32).
// A step is a fixed sequence of PHASES; the kernel runs phase k on every thread, then __syncthreads(), then
// phase k+1. A phase only reads shared memory written by earlier phases, so running phase k for all threads
// in any order (the emulator: in order tid = 0..NT-1) gives the kernel's result. Every reduction has a fixed
// order (deterministic). Shared memory is `float smem[...]`, sized by the *_smem_floats functions (the same
// code sizes the launch and the emulator's buffer).
//
// Matrix phases (state rows × value columns) use "row groups × column groups": a value row of Dv floats is
// ncg = ⌈Dv/VEC⌉ column groups of VEC consecutive columns; item (rg, cg) (nrg = max(1, NT/ncg) row groups)
// handles rows rg, rg+nrg, ... of column group cg and leaves its partial sum in red[rg][·]; the last phase
// sums red over rg in order. VEC = 4 (float32 state: one 128-bit load/store per item and row) when the
// launcher finds Dv % 4 == 0 and 16-byte aligned state pointers, else 1.
//
// The state may be updated in place (S_out == S_in, ...): every state element is read and written by the
// same thread in the same phase.
//
// The four steps (φ, scale, eps, states as in SPEC §1, §2, §4, §5):
//   linear  (§1):  k̃ = φ(k), q̃ = scale·φ(q);  S ← S + k̃ vᵀ,  z ← z + k̃;  o = q̃ᵀS / (q̃·z + eps)  (or q̃ᵀS)
//   aaren   (§4):  s = scale·q·k;  m' = max(m, s);  u ← u e^{m−m'} + e^{s−m'};  w ← w e^{m−m'} + e^{s−m'} v;  o = w/u
//   latte   (§5):  per latent l: m'_l = max(m_l, k_l), α_l ← α_l e^{m_l−m'_l} + e^{k_l−m'_l},
//                  S_l ← S_l e^{m_l−m'_l} + e^{k_l−m'_l} v;   y = Σ_l softmax_l(q)_l · S_l / α_l
//   swa ring (§2, causal window (left, 0)): a ring of W = left + 1 slots per (b, kv head); token n lives in slot
//                  n mod W. With p = pos[b] (tokens seen before this one): the new k, v go to slot p mod W, and
//                  o = softmax_j(scale·q·k_j) v_j over the n = min(p+1, W) filled slots (the new token included).
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define FLASHTS_HD __host__ __device__ __forceinline__
#define FLASHTS_UNROLL _Pragma("unroll")
#else
#define FLASHTS_HD inline
#define FLASHTS_UNROLL
#endif

namespace flashts {
namespace decode {

// ------------------------------------------------------------------------------------------------ scalars

template <typename T>
struct Conv;  // element type <-> float
template <>
struct Conv<float> {
    static FLASHTS_HD float f(float x) { return x; }
    static FLASHTS_HD float to(float x) { return x; }
};
#if defined(__CUDACC__) || defined(FLASHTS_HOST_EMU)  // (the emulation: tests/emulation/cuda_host.h)
template <>
struct Conv<__half> {
    static FLASHTS_HD float f(__half x) { return __half2float(x); }
    static FLASHTS_HD __half to(float x) { return __float2half_rn(x); }
};
template <>
struct Conv<__nv_bfloat16> {
    static FLASHTS_HD float f(__nv_bfloat16 x) { return __bfloat162float(x); }
    static FLASHTS_HD __nv_bfloat16 to(float x) { return __float2bfloat16_rn(x); }
};
#endif

FLASHTS_HD float fexp(float x) {
#ifdef __CUDA_ARCH__
    return __expf(x);
#else
    return std::exp(x);
#endif
}

FLASHTS_HD float neg_inf() { return -INFINITY; }

// e^{a − m}; exactly 0 when a == −inf (an empty state: m = −inf, u = 0, w = 0).
FLASHTS_HD float exp_shift(float a, float m) { return a == -INFINITY ? 0.f : fexp(a - m); }

FLASHTS_HD float fmaxf_(float a, float b) { return a > b ? a : b; }

// φ: 0 = elu(x)+1, 1 = relu(x), 2 = identity (the codes of linear_attention.h's FeatureMap).
FLASHTS_HD float phi(float x, int fmap) {
    if (fmap == 0) return x > 0.f ? x + 1.f : fexp(x);
    if (fmap == 1) return x > 0.f ? x : 0.f;
    return x;
}

// ------------------------------------------------------------------------------------------------ vectors

// out[0..N) = p[0..N) as float. On the device, N·sizeof(T) == 16 is one 128-bit load (p 16-byte aligned).
template <typename T, int N>
FLASHTS_HD void load_n(const T* p, float* out) {
#ifdef __CUDA_ARCH__
    if constexpr (N * sizeof(T) == 16) {
        const uint4 raw = *reinterpret_cast<const uint4*>(p);
        const T* e = reinterpret_cast<const T*>(&raw);
FLASHTS_UNROLL
        for (int i = 0; i < N; ++i) out[i] = Conv<T>::f(e[i]);
    } else
#endif
    {
FLASHTS_UNROLL
        for (int i = 0; i < N; ++i) out[i] = Conv<T>::f(p[i]);
    }
}

// p[0..N) = in[0..N) (float32). On the device, N == 4 is one 128-bit store (p 16-byte aligned).
template <int N>
FLASHTS_HD void store_n(float* p, const float* in) {
#ifdef __CUDA_ARCH__
    if constexpr (N == 4) {
        *reinterpret_cast<float4*>(p) = make_float4(in[0], in[1], in[2], in[3]);
    } else
#endif
    {
FLASHTS_UNROLL
        for (int i = 0; i < N; ++i) p[i] = in[i];
    }
}

// Row groups for a matrix phase over ncg column groups with nt threads.
FLASHTS_HD int row_groups(int ncg, int nt) { return nt / ncg > 1 ? nt / ncg : 1; }
FLASHTS_HD int col_groups(int64_t cols, int vec) { return static_cast<int>((cols + vec - 1) / vec); }

// A strided [B, Hx, X] input (one time step); element strides.
template <typename T>
struct Vec3 {
    const T* p;
    int64_t sb, sh, sx;
    FLASHTS_HD float get(int64_t b, int64_t h, int64_t x) const { return Conv<T>::f(p[b * sb + h * sh + x * sx]); }
};

// ======================================================================================== linear attention

template <typename T>
struct LinearStep {
    Vec3<T> q, k, v;             // [B, H, D], [B, Hk, D], [B, Hk, Dv]
    int64_t B, H, Hk, D, Dv;
    int fmap, normalize;
    float scale, eps;
    const float *S_in, *z_in;    // [B, H, D, Dv], [B, H, D] float32 (may equal S_out / z_out)
    float *S_out, *z_out;
    T* o;                        // [B, H, Dv] contiguous
};

// smem: kf[D] | qf[D] | dd[D] | vs[Dv] | red[nrg][Dv]
FLASHTS_HD int64_t linear_smem_floats(int64_t D, int64_t Dv, int nt, int vec) {
    return 3 * D + Dv + int64_t(row_groups(col_groups(Dv, vec), nt)) * Dv;
}

// Phase 0 (threads over d and e): φ(k), q̃, z ← z + φ(k), the terms q̃_d z_d of den, v into shared memory.
template <typename T>
FLASHTS_HD void linear_phase0(const LinearStep<T>& a, int64_t blk, int tid, int nt, float* smem) {
    const int64_t b = blk / a.H, h = blk - b * a.H, hk = h / (a.H / a.Hk), row = blk;
    float *kf = smem, *qf = kf + a.D, *dd = qf + a.D, *vs = dd + a.D;
    for (int64_t d = tid; d < a.D; d += nt) {
        const float kd = phi(a.k.get(b, hk, d), a.fmap), qd = a.scale * phi(a.q.get(b, h, d), a.fmap);
        const float zd = (a.z_in ? a.z_in[row * a.D + d] : 0.f) + kd;
        if (a.z_out) a.z_out[row * a.D + d] = zd;
        kf[d] = kd;
        qf[d] = qd;
        dd[d] = qd * zd;
    }
    for (int64_t e = tid; e < a.Dv; e += nt) vs[e] = a.v.get(b, hk, e);
}

// Phase 1 (row × column groups over S [D, Dv]): S ← S + k̃ vᵀ (written back), partial q̃ᵀS per row group.
template <typename T, int VEC>
FLASHTS_HD void linear_phase1(const LinearStep<T>& a, int64_t blk, int tid, int nt, float* smem) {
    const int64_t row = blk;
    const float *kf = smem, *qf = kf + a.D, *vs = qf + 2 * a.D;
    float* red = smem + 3 * a.D + a.Dv;
    const int ncg = col_groups(a.Dv, VEC), nrg = row_groups(ncg, nt);
    const float* S_in = a.S_in ? a.S_in + row * a.D * a.Dv : nullptr;
    float* S_out = a.S_out + row * a.D * a.Dv;
    for (int item = tid; item < nrg * ncg; item += nt) {
        const int rg = item / ncg, cg = item - (item / ncg) * ncg;
        const int64_t e0 = int64_t(cg) * VEC;
        float acc[VEC], s[VEC];
        for (int i = 0; i < VEC; ++i) acc[i] = 0.f;
        for (int64_t d = rg; d < a.D; d += nrg) {
            if (VEC > 1) {
                if (S_in) load_n<float, VEC>(S_in + d * a.Dv + e0, s);
                else for (int i = 0; i < VEC; ++i) s[i] = 0.f;
                for (int i = 0; i < VEC; ++i) {
                    s[i] += kf[d] * vs[e0 + i];
                    acc[i] += qf[d] * s[i];
                }
                store_n<VEC>(S_out + d * a.Dv + e0, s);
            } else if (e0 < a.Dv) {
                const float sv = (S_in ? S_in[d * a.Dv + e0] : 0.f) + kf[d] * vs[e0];
                S_out[d * a.Dv + e0] = sv;
                acc[0] += qf[d] * sv;
            }
        }
        for (int i = 0; i < VEC; ++i)
            if (e0 + i < a.Dv) red[rg * a.Dv + e0 + i] = acc[i];
    }
}

// Phase 2 (threads over e): o = Σ_rg red / (Σ_d q̃_d z_d + eps).
template <typename T, int VEC>
FLASHTS_HD void linear_phase2(const LinearStep<T>& a, int64_t blk, int tid, int nt, float* smem) {
    const float* dd = smem + 2 * a.D;
    const float* red = smem + 3 * a.D + a.Dv;
    const int nrg = row_groups(col_groups(a.Dv, VEC), nt);
    float den = 0.f;
    if (a.normalize)
        for (int64_t d = 0; d < a.D; ++d) den += dd[d];
    for (int64_t e = tid; e < a.Dv; e += nt) {
        float num = 0.f;
        for (int rg = 0; rg < nrg; ++rg) num += red[rg * a.Dv + e];
        a.o[blk * a.Dv + e] = Conv<T>::to(a.normalize ? num / (den + a.eps) : num);
    }
}

// ================================================================================================== Aaren

template <typename T>
struct AarenStep {
    Vec3<T> q, k, v;              // q [B or 1, H, D] (sb = 0 when shared), k [B, H, D], v [B, H, Dv]
    int64_t B, H, D, Dv;
    float scale;
    const float *m_in, *u_in, *w_in;  // [B, H], [B, H], [B, H, Dv] (may equal the outputs)
    float *m_out, *u_out, *w_out;
    T* o;                         // [B, H, Dv] contiguous
};

// smem: pd[D] | vs[Dv] | sc[4] (fa, fb, u')
FLASHTS_HD int64_t aaren_smem_floats(int64_t D, int64_t Dv) { return D + Dv + 4; }

template <typename T>
FLASHTS_HD void aaren_phase0(const AarenStep<T>& a, int64_t blk, int tid, int nt, float* smem) {
    const int64_t b = blk / a.H, h = blk - b * a.H;
    float *pd = smem, *vs = pd + a.D;
    for (int64_t d = tid; d < a.D; d += nt) pd[d] = a.q.get(b, h, d) * a.k.get(b, h, d);
    for (int64_t e = tid; e < a.Dv; e += nt) vs[e] = a.v.get(b, h, e);
}

// Phase 1 (thread 0): s, the new max and the two factors; writes m, u.
template <typename T>
FLASHTS_HD void aaren_phase1(const AarenStep<T>& a, int64_t blk, int tid, int nt, float* smem) {
    (void)nt;
    if (tid != 0) return;
    const float* pd = smem;
    float* sc = smem + a.D + a.Dv;
    float dot = 0.f;
    for (int64_t d = 0; d < a.D; ++d) dot += pd[d];
    const float s = a.scale * dot;
    const float m = a.m_in ? a.m_in[blk] : neg_inf(), u = a.u_in ? a.u_in[blk] : 0.f;
    const float mn = fmaxf_(m, s), fa = exp_shift(m, mn), fb = exp_shift(s, mn);
    const float un = u * fa + fb;
    sc[0] = fa;
    sc[1] = fb;
    sc[2] = un;
    a.m_out[blk] = mn;
    a.u_out[blk] = un;
}

// Phase 2 (column groups): w ← w·fa + fb·v (written back), o = w / u.
template <typename T, int VEC>
FLASHTS_HD void aaren_phase2(const AarenStep<T>& a, int64_t blk, int tid, int nt, float* smem) {
    const float* vs = smem + a.D;
    const float* sc = vs + a.Dv;
    const float fa = sc[0], fb = sc[1], inv = 1.f / sc[2];
    const float* w_in = a.w_in ? a.w_in + blk * a.Dv : nullptr;
    float* w_out = a.w_out + blk * a.Dv;
    const int ncg = col_groups(a.Dv, VEC);
    for (int cg = tid; cg < ncg; cg += nt) {
        const int64_t e0 = int64_t(cg) * VEC;
        float w[VEC];
        if (VEC > 1) {
            if (w_in) load_n<float, VEC>(w_in + e0, w);
            else for (int i = 0; i < VEC; ++i) w[i] = 0.f;
            for (int i = 0; i < VEC; ++i) w[i] = w[i] * fa + fb * vs[e0 + i];
            store_n<VEC>(w_out + e0, w);
            for (int i = 0; i < VEC; ++i) a.o[blk * a.Dv + e0 + i] = Conv<T>::to(w[i] * inv);
        } else {
            const float wv = (w_in ? w_in[e0] : 0.f) * fa + fb * vs[e0];
            w_out[e0] = wv;
            a.o[blk * a.Dv + e0] = Conv<T>::to(wv * inv);
        }
    }
}

// ================================================================================================== Latte

template <typename T>
struct LatteStep {
    Vec3<T> q, k, v;              // q, k [B, H, L] latent logits, v [B, H, Dv]
    int64_t B, H, L, Dv;
    const float *m_in, *a_in, *S_in;  // [B, H, L], [B, H, L], [B, H, L, Dv] (may equal the outputs)
    float *m_out, *a_out, *S_out;
    T* o;                         // [B, H, Dv] contiguous
};

// smem: FA[L] | FB[L] | AL[L] | Q[L] | E[L] | C[L] | vs[Dv] | sc[2] | red[nrg][Dv]
FLASHTS_HD int64_t latte_smem_floats(int64_t L, int64_t Dv, int nt, int vec) {
    return 6 * L + Dv + 2 + int64_t(row_groups(col_groups(Dv, vec), nt)) * Dv;
}

// Phase 0 (threads over l and e): per-latent max, factors and α; writes m, α; q and v into shared memory.
template <typename T>
FLASHTS_HD void latte_phase0(const LatteStep<T>& a, int64_t blk, int tid, int nt, float* smem) {
    const int64_t b = blk / a.H, h = blk - b * a.H, L = a.L;
    float *FA = smem, *FB = FA + L, *AL = FB + L, *Q = AL + L, *vs = Q + 3 * L;
    for (int64_t l = tid; l < L; l += nt) {
        const float kl = a.k.get(b, h, l);
        const float m = a.m_in ? a.m_in[blk * L + l] : neg_inf(), al = a.a_in ? a.a_in[blk * L + l] : 0.f;
        const float mn = fmaxf_(m, kl), fa = exp_shift(m, mn), fb = exp_shift(kl, mn);
        const float aln = al * fa + fb;
        a.m_out[blk * L + l] = mn;
        a.a_out[blk * L + l] = aln;
        FA[l] = fa;
        FB[l] = fb;
        AL[l] = aln;
        Q[l] = a.q.get(b, h, l);
    }
    for (int64_t e = tid; e < a.Dv; e += nt) vs[e] = a.v.get(b, h, e);
}

// Phase 1 (thread 0): max_l q_l.
template <typename T>
FLASHTS_HD void latte_phase1(const LatteStep<T>& a, int64_t, int tid, int, float* smem) {
    if (tid != 0) return;
    const float* Q = smem + 3 * a.L;
    float* sc = smem + 6 * a.L + a.Dv;
    float mx = neg_inf();
    for (int64_t l = 0; l < a.L; ++l) mx = fmaxf_(mx, Q[l]);
    sc[0] = mx;
}

// Phase 2 (threads over l): E_l = e^{q_l − max q}, C_l = E_l / α_l.
template <typename T>
FLASHTS_HD void latte_phase2(const LatteStep<T>& a, int64_t, int tid, int nt, float* smem) {
    const int64_t L = a.L;
    const float *AL = smem + 2 * L, *Q = smem + 3 * L, *sc = smem + 6 * L + a.Dv;
    float *E = smem + 4 * L, *C = smem + 5 * L;
    for (int64_t l = tid; l < L; l += nt) {
        E[l] = fexp(Q[l] - sc[0]);
        C[l] = E[l] / AL[l];
    }
}

// Phase 3 (row × column groups over S [L, Dv]): S_l ← S_l·FA_l + FB_l·v (written back), partial Σ_l C_l S_l.
template <typename T, int VEC>
FLASHTS_HD void latte_phase3(const LatteStep<T>& a, int64_t blk, int tid, int nt, float* smem) {
    const int64_t L = a.L;
    const float *FA = smem, *FB = smem + L, *C = smem + 5 * L, *vs = smem + 6 * L;
    float* red = smem + 6 * L + a.Dv + 2;
    const int ncg = col_groups(a.Dv, VEC), nrg = row_groups(ncg, nt);
    const float* S_in = a.S_in ? a.S_in + blk * L * a.Dv : nullptr;
    float* S_out = a.S_out + blk * L * a.Dv;
    for (int item = tid; item < nrg * ncg; item += nt) {
        const int rg = item / ncg, cg = item - (item / ncg) * ncg;
        const int64_t e0 = int64_t(cg) * VEC;
        float acc[VEC], s[VEC];
        for (int i = 0; i < VEC; ++i) acc[i] = 0.f;
        for (int64_t l = rg; l < L; l += nrg) {
            if (VEC > 1) {
                if (S_in) load_n<float, VEC>(S_in + l * a.Dv + e0, s);
                else for (int i = 0; i < VEC; ++i) s[i] = 0.f;
                for (int i = 0; i < VEC; ++i) {
                    s[i] = s[i] * FA[l] + FB[l] * vs[e0 + i];
                    acc[i] += C[l] * s[i];
                }
                store_n<VEC>(S_out + l * a.Dv + e0, s);
            } else if (e0 < a.Dv) {
                const float sv = (S_in ? S_in[l * a.Dv + e0] : 0.f) * FA[l] + FB[l] * vs[e0];
                S_out[l * a.Dv + e0] = sv;
                acc[0] += C[l] * sv;
            }
        }
        for (int i = 0; i < VEC; ++i)
            if (e0 + i < a.Dv) red[rg * a.Dv + e0 + i] = acc[i];
    }
}

// Phase 4 (threads over e): y = Σ_rg red / Σ_l E_l.
template <typename T, int VEC>
FLASHTS_HD void latte_phase4(const LatteStep<T>& a, int64_t blk, int tid, int nt, float* smem) {
    const int64_t L = a.L;
    const float* E = smem + 4 * L;
    const float* red = smem + 6 * L + a.Dv + 2;
    const int nrg = row_groups(col_groups(a.Dv, VEC), nt);
    float Z = 0.f;
    for (int64_t l = 0; l < L; ++l) Z += E[l];
    const float inv = 1.f / Z;
    for (int64_t e = tid; e < a.Dv; e += nt) {
        float y = 0.f;
        for (int rg = 0; rg < nrg; ++rg) y += red[rg * a.Dv + e];
        a.o[blk * a.Dv + e] = Conv<T>::to(y * inv);
    }
}

// ===================================================================================== sliding-window ring

template <typename T>
struct SwaRingStep {
    Vec3<T> q, k, v;              // q [B, H, D], k [B, Hk, D], v [B, Hk, Dv]: the new token
    int64_t B, H, Hk, D, Dv, W;   // W = left + 1 ring slots
    float scale;
    T *k_cache, *v_cache;         // [B, W, Hk, D], [B, W, Hk, Dv] contiguous, input type (updated in place)
    const int64_t* pos;           // [B]: tokens seen before this one (read only; the caller advances it)
    T* o;                         // [B, H, Dv] contiguous
};

// smem: qs[D] | sc[W] | pmax[nt] | psum[nt] | mx[1] | red[nrg][Dv]
FLASHTS_HD int64_t swa_smem_floats(int64_t D, int64_t Dv, int64_t W, int nt, int vec) {
    return D + W + 2 * int64_t(nt) + 1 + int64_t(row_groups(col_groups(Dv, vec), nt)) * Dv;
}

// Key/value row of slot j for (b, hk): the new token for the current slot, else the cache.
template <typename T>
FLASHTS_HD bool swa_is_new(const SwaRingStep<T>& a, int64_t b, int64_t j) { return j == a.pos[b] % a.W; }

FLASHTS_HD int64_t swa_filled(int64_t pos, int64_t W) { return pos + 1 < W ? pos + 1 : W; }

// Phase 0 (threads over d): q·scale.
template <typename T>
FLASHTS_HD void swa_phase0(const SwaRingStep<T>& a, int64_t blk, int tid, int nt, float* smem) {
    const int64_t b = blk / a.H, h = blk - b * a.H;
    for (int64_t d = tid; d < a.D; d += nt) smem[d] = a.scale * a.q.get(b, h, d);
}

// Phase 1 (threads over filled slots): scores and per-thread maxima. VECK: elements per 128-bit load of a k row.
template <typename T, int VECK>
FLASHTS_HD void swa_phase1(const SwaRingStep<T>& a, int64_t blk, int tid, int nt, float* smem) {
    const int64_t b = blk / a.H, h = blk - b * a.H, hk = h / (a.H / a.Hk);
    const float* qs = smem;
    float *sc = smem + a.D, *pmax = sc + a.W;
    const int64_t n = swa_filled(a.pos[b], a.W);
    float mx = neg_inf();
    for (int64_t j = tid; j < n; j += nt) {
        float dot = 0.f;
        if (swa_is_new(a, b, j)) {
            for (int64_t d = 0; d < a.D; ++d) dot += qs[d] * a.k.get(b, hk, d);
        } else {
            const T* row = a.k_cache + ((b * a.W + j) * a.Hk + hk) * a.D;
            int64_t d = 0;
            if (VECK > 1) {
                float kv[VECK];
                for (; d + VECK <= a.D; d += VECK) {
                    load_n<T, VECK>(row + d, kv);
                    for (int i = 0; i < VECK; ++i) dot += qs[d + i] * kv[i];
                }
            }
            for (; d < a.D; ++d) dot += qs[d] * Conv<T>::f(row[d]);
        }
        sc[j] = dot;
        mx = fmaxf_(mx, dot);
    }
    pmax[tid] = mx;
}

// Phase 2 (thread 0): the row maximum.
template <typename T>
FLASHTS_HD void swa_phase2(const SwaRingStep<T>& a, int64_t, int tid, int nt, float* smem) {
    if (tid != 0) return;
    const float* pmax = smem + a.D + a.W;
    float mx = neg_inf();
    for (int t = 0; t < nt; ++t) mx = fmaxf_(mx, pmax[t]);
    smem[a.D + a.W + 2 * nt] = mx;
}

// Phase 3 (threads over filled slots): p_j = e^{s_j − max} (in place of s) and per-thread sums.
template <typename T>
FLASHTS_HD void swa_phase3(const SwaRingStep<T>& a, int64_t blk, int tid, int nt, float* smem) {
    const int64_t b = blk / a.H;
    float *sc = smem + a.D, *psum = sc + a.W + nt;
    const float mx = smem[a.D + a.W + 2 * nt];
    const int64_t n = swa_filled(a.pos[b], a.W);
    float sum = 0.f;
    for (int64_t j = tid; j < n; j += nt) {
        sc[j] = fexp(sc[j] - mx);
        sum += sc[j];
    }
    psum[tid] = sum;
}

// Phase 4 (row × column groups over the V rows): partial Σ_j p_j v_j. VECV: elements per 128-bit load of a v row.
template <typename T, int VECV>
FLASHTS_HD void swa_phase4(const SwaRingStep<T>& a, int64_t blk, int tid, int nt, float* smem) {
    const int64_t b = blk / a.H, h = blk - b * a.H, hk = h / (a.H / a.Hk);
    const float* sc = smem + a.D;
    float* red = smem + a.D + a.W + 2 * nt + 1;
    const int64_t n = swa_filled(a.pos[b], a.W), cur = a.pos[b] % a.W;
    const int ncg = col_groups(a.Dv, VECV), nrg = row_groups(ncg, nt);
    for (int item = tid; item < nrg * ncg; item += nt) {
        const int rg = item / ncg, cg = item - (item / ncg) * ncg;
        const int64_t e0 = int64_t(cg) * VECV;
        float acc[VECV], vv[VECV];
        for (int i = 0; i < VECV; ++i) acc[i] = 0.f;
        for (int64_t j = rg; j < n; j += nrg) {
            if (j == cur) {
                for (int i = 0; i < VECV; ++i) vv[i] = e0 + i < a.Dv ? a.v.get(b, hk, e0 + i) : 0.f;
            } else {
                const T* row = a.v_cache + ((b * a.W + j) * a.Hk + hk) * a.Dv;
                if (VECV > 1) load_n<T, VECV>(row + e0, vv);
                else vv[0] = Conv<T>::f(row[e0]);
            }
            for (int i = 0; i < VECV; ++i) acc[i] += sc[j] * vv[i];
        }
        for (int i = 0; i < VECV; ++i)
            if (e0 + i < a.Dv) red[rg * a.Dv + e0 + i] = acc[i];
    }
}

// Phase 5 (threads over e): o = Σ_rg red / Σ psum; the first query head of each kv group writes the new k, v
// into slot pos mod W (no block reads that slot from the cache in this step).
template <typename T, int VECV>
FLASHTS_HD void swa_phase5(const SwaRingStep<T>& a, int64_t blk, int tid, int nt, float* smem) {
    const int64_t b = blk / a.H, h = blk - b * a.H, G = a.H / a.Hk, hk = h / G;
    const float* psum = smem + a.D + a.W + nt;
    const float* red = smem + a.D + a.W + 2 * nt + 1;
    const int nrg = row_groups(col_groups(a.Dv, VECV), nt);
    float l = 0.f;
    for (int t = 0; t < nt; ++t) l += psum[t];
    const float inv = 1.f / l;
    for (int64_t e = tid; e < a.Dv; e += nt) {
        float num = 0.f;
        for (int rg = 0; rg < nrg; ++rg) num += red[rg * a.Dv + e];
        a.o[blk * a.Dv + e] = Conv<T>::to(num * inv);
    }
    if (h % G == 0) {
        const int64_t slot = a.pos[b] % a.W;
        T* krow = a.k_cache + ((b * a.W + slot) * a.Hk + hk) * a.D;
        T* vrow = a.v_cache + ((b * a.W + slot) * a.Hk + hk) * a.Dv;
        for (int64_t d = tid; d < a.D; d += nt) krow[d] = a.k.p[b * a.k.sb + hk * a.k.sh + d * a.k.sx];
        for (int64_t e = tid; e < a.Dv; e += nt) vrow[e] = a.v.p[b * a.v.sb + hk * a.v.sh + e * a.v.sx];
    }
}


// ======================================================================================== Latte Macchiato

// Macchiato (SPEC §7) decode step: o = g·A + h·Y with (g, h) = softmax(mix_0, logsumexp(mix_{1:})),
// A = softmax attention of scale·q over the n = n_win[b] valid (right-aligned: slots W−n .. W−1) cached keys
// and the new key itself, Y = the Latte step with Latte's q = mix_{1:} (reusing latte_phase0..3 on the front
// of shared memory). After the reads the block shifts its head's window left by one slot, appends (k, v) in
// slot W−1 and zeroes the slots left without a key (W − min(n+1, W) of them), as flashts.torch_ops.step does;
// n_win itself is read only (the caller advances it). Window caches: contiguous float32 [B, W, H, X].
template <typename T>
struct MacchiatoStep {
    LatteStep<T> latte;           // q = mix[..., 1:], k = latent_k, v; its `o` [B, H, Dv] is the step's output
    Vec3<T> q, k, mix;            // q, k [B, H, D], mix [B, H, L+1]
    int64_t D, W;                 // W = left >= 0 cache slots
    float scale;
    float *k_win, *v_win;         // [B, W, H, D], [B, W, H, Dv] (updated in place)
    const int* n_win;             // [B] int32 valid cached keys (read only)
};

FLASHTS_HD int64_t mac_base(int64_t L, int64_t Dv, int nt, int vec) { return latte_smem_floats(L, Dv, nt, vec); }

// smem: latte[...] | qs[D] | sc[W+1] | pmax[nt] | psum[nt] | gate[3] (max, g, h) | red[nrg][Dv]
FLASHTS_HD int64_t macchiato_smem_floats(int64_t L, int64_t D, int64_t Dv, int64_t W, int nt, int vec) {
    return mac_base(L, Dv, nt, vec) + D + W + 1 + 2 * int64_t(nt) + 3 +
           int64_t(row_groups(col_groups(Dv, vec), nt)) * Dv;
}

template <typename T>
struct MacSmem {  // the window part's shared-memory slices
    float *qs, *sc, *pmax, *psum, *gate, *red;
    FLASHTS_HD MacSmem(const MacchiatoStep<T>& a, int nt, int vec, float* smem) {
        qs = smem + mac_base(a.latte.L, a.latte.Dv, nt, vec);
        sc = qs + a.D;
        pmax = sc + a.W + 1;
        psum = pmax + nt;
        gate = psum + nt;
        red = gate + 3;
    }
};

template <typename T>
FLASHTS_HD int64_t mac_valid(const MacchiatoStep<T>& a, int64_t b) {
    const int64_t n = a.n_win[b];
    return n < 0 ? 0 : (n > a.W ? a.W : n);
}

// Phase 0 (threads over d; thread 0 also the gate): qs = scale·q; (g, h) from mix.
template <typename T, int VEC>
FLASHTS_HD void mac_phase0(const MacchiatoStep<T>& a, int64_t blk, int tid, int nt, float* smem) {
    const int64_t b = blk / a.latte.H, h = blk - b * a.latte.H, L = a.latte.L;
    MacSmem<T> s(a, nt, VEC, smem);
    for (int64_t d = tid; d < a.D; d += nt) s.qs[d] = a.scale * a.q.get(b, h, d);
    if (tid == 0) {
        float mx = a.mix.get(b, h, 0);
        for (int64_t l = 1; l <= L; ++l) mx = fmaxf_(mx, a.mix.get(b, h, l));
        const float e0 = fexp(a.mix.get(b, h, 0) - mx);
        float e1 = 0.f;
        for (int64_t l = 1; l <= L; ++l) e1 += fexp(a.mix.get(b, h, l) - mx);
        s.gate[1] = e0 / (e0 + e1);
        s.gate[2] = e1 / (e0 + e1);
    }
}

// Phase 1 (threads over the valid slots j in [W−n, W], slot W = the new key): scores, per-thread maxima.
template <typename T, int VEC>
FLASHTS_HD void mac_phase1(const MacchiatoStep<T>& a, int64_t blk, int tid, int nt, float* smem) {
    const int64_t b = blk / a.latte.H, h = blk - b * a.latte.H, H = a.latte.H;
    MacSmem<T> s(a, nt, VEC, smem);
    float mx = neg_inf();
    for (int64_t j = a.W - mac_valid(a, b) + tid; j <= a.W; j += nt) {
        float dot = 0.f;
        if (j == a.W) {
            for (int64_t d = 0; d < a.D; ++d) dot += s.qs[d] * a.k.get(b, h, d);
        } else {
            const float* row = a.k_win + ((b * a.W + j) * H + h) * a.D;
            for (int64_t d = 0; d < a.D; ++d) dot += s.qs[d] * row[d];
        }
        s.sc[j] = dot;
        mx = fmaxf_(mx, dot);
    }
    s.pmax[tid] = mx;
}

// Phase 2 (thread 0): the score maximum.
template <typename T, int VEC>
FLASHTS_HD void mac_phase2(const MacchiatoStep<T>& a, int64_t, int tid, int nt, float* smem) {
    if (tid != 0) return;
    MacSmem<T> s(a, nt, VEC, smem);
    float mx = neg_inf();
    for (int t = 0; t < nt; ++t) mx = fmaxf_(mx, s.pmax[t]);
    s.gate[0] = mx;
}

// Phase 3 (threads over the valid slots): p_j = e^{s_j − max} (in place of s), per-thread sums.
template <typename T, int VEC>
FLASHTS_HD void mac_phase3(const MacchiatoStep<T>& a, int64_t blk, int tid, int nt, float* smem) {
    const int64_t b = blk / a.latte.H;
    MacSmem<T> s(a, nt, VEC, smem);
    float sum = 0.f;
    for (int64_t j = a.W - mac_valid(a, b) + tid; j <= a.W; j += nt) {
        s.sc[j] = fexp(s.sc[j] - s.gate[0]);
        sum += s.sc[j];
    }
    s.psum[tid] = sum;
}

// Phase 4 (row × column groups over the valid V rows): partial Σ_j p_j v_j.
template <typename T, int VEC>
FLASHTS_HD void mac_phase4(const MacchiatoStep<T>& a, int64_t blk, int tid, int nt, float* smem) {
    const int64_t b = blk / a.latte.H, h = blk - b * a.latte.H, H = a.latte.H, Dv = a.latte.Dv;
    MacSmem<T> s(a, nt, VEC, smem);
    const float* vs = smem + 6 * a.latte.L;  // the new v (latte_phase0)
    const int64_t j0 = a.W - mac_valid(a, b);
    const int ncg = col_groups(Dv, VEC), nrg = row_groups(ncg, nt);
    for (int item = tid; item < nrg * ncg; item += nt) {
        const int rg = item / ncg, cg = item - (item / ncg) * ncg;
        const int64_t e0 = int64_t(cg) * VEC;
        float acc[VEC], vv[VEC];
        for (int i = 0; i < VEC; ++i) acc[i] = 0.f;
        for (int64_t j = j0 + rg; j <= a.W; j += nrg) {
            if (j == a.W) {
                for (int i = 0; i < VEC; ++i) vv[i] = e0 + i < Dv ? vs[e0 + i] : 0.f;
            } else {
                const float* row = a.v_win + ((b * a.W + j) * H + h) * Dv;
                if (VEC > 1) load_n<float, VEC>(row + e0, vv);
                else vv[0] = row[e0];
            }
            for (int i = 0; i < VEC; ++i) acc[i] += s.sc[j] * vv[i];
        }
        for (int i = 0; i < VEC; ++i)
            if (e0 + i < Dv) s.red[rg * Dv + e0 + i] = acc[i];
    }
}

// Phase 5 (threads over columns): o = g·A + h·Y (A = Σ_rg red / Σ psum, Y = Latte's Σ_rg red / Σ_l E_l), then
// the window shift: each thread moves its own columns through the slots in increasing order (race free).
template <typename T, int VEC>
FLASHTS_HD void mac_phase5(const MacchiatoStep<T>& a, int64_t blk, int tid, int nt, float* smem) {
    const int64_t b = blk / a.latte.H, h = blk - b * a.latte.H, H = a.latte.H, L = a.latte.L, Dv = a.latte.Dv;
    MacSmem<T> s(a, nt, VEC, smem);
    const float* E = smem + 4 * L;
    const float* lred = smem + 6 * L + Dv + 2;
    const float* vs = smem + 6 * L;
    const int nrg = row_groups(col_groups(Dv, VEC), nt);
    float Z = 0.f, l = 0.f;
    for (int64_t i = 0; i < L; ++i) Z += E[i];
    for (int t = 0; t < nt; ++t) l += s.psum[t];
    const float g = s.gate[1] / l, hh = s.gate[2] / Z;
    for (int64_t e = tid; e < Dv; e += nt) {
        float num = 0.f, y = 0.f;
        for (int rg = 0; rg < nrg; ++rg) {
            num += s.red[rg * Dv + e];
            y += lred[rg * Dv + e];
        }
        a.latte.o[blk * Dv + e] = Conv<T>::to(g * num + hh * y);
    }
    if (a.W == 0) return;
    const int64_t n = mac_valid(a, b), n_new = n + 1 < a.W ? n + 1 : a.W, keep = a.W - n_new;
    for (int64_t d = tid; d < a.D; d += nt) {
        float* col = a.k_win + (b * a.W * H + h) * a.D + d;
        for (int64_t j = 0; j + 1 < a.W; ++j) col[j * H * a.D] = j < keep ? 0.f : col[(j + 1) * H * a.D];
        col[(a.W - 1) * H * a.D] = a.k.get(b, h, d);
    }
    for (int64_t e = tid; e < Dv; e += nt) {
        float* col = a.v_win + (b * a.W * H + h) * Dv + e;
        for (int64_t j = 0; j + 1 < a.W; ++j) col[j * H * Dv] = j < keep ? 0.f : col[(j + 1) * H * Dv];
        col[(a.W - 1) * H * Dv] = vs[e];
    }
}

}  // namespace decode
}  // namespace flashts
