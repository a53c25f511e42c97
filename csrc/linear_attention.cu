// flashts — linear attention (SPEC §1), CUDA kernels: chunkwise forward and backward.
//
// Math. q̃_t = scale·φ(q_t), k̃_t = φ(k_t) (φ = elu+1, relu or identity), per (sequence, query head h) with
// kv head h / (H / Hk) (GQA):
//   S_t = S_0 + Σ_{s∈A(t)} k̃_s v_sᵀ  [D, Dv],   z_t = z_0 + Σ_{s∈A(t)} k̃_s  [D],   A(t) = {s ≤ t} or all s
//   num_t = q̃_tᵀ S_t,  den_t = q̃_t·z_t,   o_t = num_t / (den_t + eps)  (normalize)  or  num_t.
// The final state (S_T, z_T) is written per sequence (float32).
//
// Forward modes (FwdPlan in linear_attention.h; the occupancy rule of kernels/occupancy.py with the SM count the
// binding passes): the CHUNK-PARALLEL forward (three kernels, see "chunk-parallel forward" below: chunk
// summaries, a float32 scan of the chunk states, every chunk's outputs in parallel; B·NS·H·⌈Dv/BV⌉ blocks) unless
// N·H ≥ 2·SMs, when the ONE-PASS fwd_kernel (N·H blocks, no state round trip through memory) fills the GPU alone.
// The backward is the two sequential kernels below (N·H blocks each; not yet chunk-parallel).
//
// Chunking of the one-pass and backward kernels (causal). One thread block per (sequence, query head) walks its sequence in chunks of C steps
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
#include <cstdlib>
#include <type_traits>

#include "linear_attention.h"
#include "common.cuh"


namespace flashts {
namespace linear {
namespace {

using mmau::block_gemm;
using mmau::kCol;
using mmau::kRow;

// The chunk products' implementation (common.cuh block_gemm), all on mma.sync m16n8k8 TF32 over the float32
// tiles: float16 / bfloat16 inputs one TF32 product (10 mantissa bits ≥ the inputs'; was wmma m16n16k8 TF32
// until 2026-12-03, same precision); float32 inputs three (3xTF32: operands split hi + lo, ~2⁻²¹ relative error,
// as the Triton kernels' input_precision="tf32x3"; exact FMA until 2026-12-03 — set mmau::kGemmFma here for it).
template <typename Tin>
constexpr int kGemmFor = std::is_same<Tin, float>::value ? mmau::kGemmMma3xTf32 : mmau::kGemmMma;

constexpr int kThreads = 256;  // 8 warps
constexpr int kPad = ld_pad<float>();
constexpr int kChunks[3] = {64, 32, 16};

enum Kind : int { kFwd = 0, kBwdDq = 1, kBwdDkv = 2 };

template <typename Tin>
struct View {  // a strided input [B, T, Hx, X]
    const Tin* p;
    int64_t sb, st, sh, sx;
    int vec;  // 1: rows are contiguous, 16-byte aligned, X a multiple of 16 / sizeof(Tin) (16-byte loads)
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
    // chunk-parallel forward: workspace [B, NS, H, Ep] float32 (Ep = Dp·(Dvp + 1): S [Dp][Dvp] then z [Dp]),
    // NS chunk slots per batch row, Dv tile BV (nBV tiles over Dvp)
    float* ws;
    int64_t NS, Ep;
    int BV, nBV;
    // chunk-parallel backward: par = 1 runs bwd_dq / bwd_dkv on ONE chunk per block (the state entering it from
    // ws, the state cotangent leaving it from ws2 [B, NS, H, Ep]); dstate = 1 makes chunk_state_kernel write the
    // chunk cotangent summaries Q̃ᵀ dO', Q̃ᵀ dden into ws2 instead of K̃ᵀ V, colsum K̃ into ws.
    int par, dstate;
    float* ws2;
    // the sequential kernels' cp.async pipeline (see "cp.async pipeline" below): 1 = the staging tiles are carved
    // and every input whose rows allow 16-byte copies (View::vec) is staged one chunk ahead
    int pipe;
};

// Shared-memory tiles of one kernel kind (float32, row-major, leading dims ldD / ldV / ldC), and with stage_elem
// = sizeof(Tin) > 0 the cp.async staging tiles of the sequential kernels (raw input rows of the NEXT chunk,
// [C][Dp] for q, k and [C][Dvp] for v, do, row stride Dp / Dvp elements: a multiple of 32 bytes).
struct Tiles {
    float *Q, *K, *V, *dO, *A, *M, *X1, *X2, *S, *z, *v1, *v2;
    unsigned char *sQ, *sK, *sV, *sdO;  // staging (nullptr without)
    int64_t bytes;
};

__host__ __device__ inline Tiles carve(int kind, int C, int Dp, int Dvp, unsigned char* base, int stage_elem = 0) {
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
    const int64_t sD = int64_t(C) * Dp * stage_elem, sV = int64_t(C) * Dvp * stage_elem;
    t.sQ = stage_elem > 0 ? sc.take<unsigned char>(sD) : nullptr;
    t.sK = stage_elem > 0 ? sc.take<unsigned char>(sD) : nullptr;
    t.sV = stage_elem > 0 ? sc.take<unsigned char>(sV) : nullptr;
    t.sdO = stage_elem > 0 && kind != kFwd ? sc.take<unsigned char>(sV) : nullptr;
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

// One 16-byte group (16 / sizeof(Tin) elements of row r from column c0) into the float32 tile: f(x, r) of each
// element when the group lies inside the data (inside), zeros otherwise.
template <typename Tin, typename F>
__device__ __forceinline__ void put_group(float* dst, int ld, int r, int c0, const uint4& raw, bool inside, F f) {
    constexpr int kVE = 16 / static_cast<int>(sizeof(Tin));
    float vals[kVE];
    const Tin* e = reinterpret_cast<const Tin*>(&raw);
#pragma unroll
    for (int j = 0; j < kVE; ++j) vals[j] = inside ? f(to_float(e[j]), r) : 0.f;
#pragma unroll
    for (int j = 0; j < kVE; ++j) dst[r * ld + c0 + j] = vals[j];
}

// dst[r][c] = f(src[b, t_first + r, h, c], r) for r < len, c < X; 0 elsewhere in [rows][cols].
// With src.vec (checked on the host) each thread moves 16 bytes (16 / sizeof(Tin) elements of one row) per
// step: one LDG.E.128; cols must then be a multiple of 16 / sizeof(Tin) (the padded dims are multiples of 16).
template <typename Tin, typename F>
__device__ __forceinline__ void load_tile(float* dst, int ld, int rows, int cols, const View<Tin>& src, int64_t b,
                                          int64_t t_first, int64_t h, int len, int64_t X, F f) {
    if (src.vec) {
        constexpr int kVE = 16 / static_cast<int>(sizeof(Tin));
        const int groups = cols / kVE;
        for (int idx = threadIdx.x; idx < rows * groups; idx += blockDim.x) {
            const int r = idx / groups, c0 = (idx - (idx / groups) * groups) * kVE;
            const bool inside = r < len && c0 < X;  // X is a multiple of kVE: the whole group is inside the row
            uint4 raw = make_uint4(0u, 0u, 0u, 0u);
            if (inside)
                raw = *reinterpret_cast<const uint4*>(src.p + b * src.sb + (t_first + r) * src.st + h * src.sh + c0);
            put_group<Tin>(dst, ld, r, c0, raw, inside, f);
        }
        return;
    }
    for (int idx = threadIdx.x; idx < rows * cols; idx += blockDim.x) {
        const int r = idx / cols, c = idx - (idx / cols) * cols;
        float val = 0.f;
        if (r < len && c < X) val = f(src.get(b, t_first + r, h, c), r);
        dst[r * ld + c] = val;
    }
}

// ---------------------------------------------------------------------------------------- cp.async pipeline
// The sequential kernels (fwd_kernel; bwd_dq_kernel / bwd_dkv_kernel when not p.par) walk their chunks one after
// the other; with p.pipe the raw input rows of the NEXT chunk are copied into staging tiles (carve: sQ, sK, sV,
// sdO, [C][cols] of Tin) by 16-byte cp.async (LDGSTS; predicated: a group past the sequence end or past X is
// zero-filled without reading) while the current chunk is computed:
//     stage(first chunk)
//     per chunk (of either sweep): cp_async_wait<0>; land every tile (staging -> float32 tile, φ / scale
//               applied; zeros outside); __syncthreads; stage(next chunk); compute on the float32 tiles; __syncthreads
// The float32 tiles and the staging tiles are the two buffers (the staging is free again once every thread has
// landed it: the barrier before the next stage()). stage_tile and land_tile walk the 16-byte groups with the
// SAME thread mapping, so each thread converts only the groups it copied itself: cp_async_wait<0> (its own
// copies) suffices before land_tile, no barrier. An input whose rows do not allow 16-byte copies (View::vec = 0:
// strided rows, X not a multiple of 16 / sizeof(Tin), unaligned) is not staged: land_tile loads it from global
// memory (load_tile, scalar path) at the top of the chunk; without p.pipe every tile is loaded so (the
// pre-pipeline code path). Staging costs shared memory (seq_config decides; budget per kernel there). The
// single-chunk kernels (chunk_state_kernel,
// chunk_out_kernel, the p.par backward) load one set of tiles and then compute: a copy could overlap nothing,
// so they keep load_tile's 16-byte loads (LDG.E.128).

// Issues the cp.async copies of rows [t_first, t_first + len) of src (head h, columns [0, X)) into the staging
// tile st [rows][cols] (nothing when st is nullptr or src does not allow 16-byte copies). Caller commits.
template <typename Tin>
__device__ __forceinline__ void stage_tile(unsigned char* st_raw, int rows, int cols, const View<Tin>& src,
                                           int64_t b, int64_t t_first, int64_t h, int len, int64_t X) {
    if (st_raw == nullptr || !src.vec) return;
    constexpr int kVE = 16 / static_cast<int>(sizeof(Tin));
    Tin* st = reinterpret_cast<Tin*>(st_raw);
    const int groups = cols / kVE;
#pragma unroll 1
    for (int idx = threadIdx.x; idx < rows * groups; idx += blockDim.x) {
        const int r = idx / groups, c0 = (idx - (idx / groups) * groups) * kVE;
        const bool inside = r < len && c0 < X;
        const Tin* gp = inside ? src.p + b * src.sb + (t_first + r) * src.st + h * src.sh + c0 : src.p;
        cp_async_16(st + r * cols + c0, gp, inside);
    }
}

// The float32 tile of the step from its staging tile (after cp_async_wait; same arguments as the stage_tile
// call that filled it), or, for an input that is not staged, load_tile from global memory.
template <typename Tin, typename F>
__device__ __forceinline__ void land_tile(float* dst, int ld, int rows, int cols, const unsigned char* st_raw,
                                          const View<Tin>& src, int64_t b, int64_t t_first, int64_t h, int len,
                                          int64_t X, F f) {
    if (st_raw == nullptr || !src.vec) {
        load_tile(dst, ld, rows, cols, src, b, t_first, h, len, X, f);
        return;
    }
    constexpr int kVE = 16 / static_cast<int>(sizeof(Tin));
    const Tin* st = reinterpret_cast<const Tin*>(st_raw);
    const int groups = cols / kVE;
#pragma unroll 1
    for (int idx = threadIdx.x; idx < rows * groups; idx += blockDim.x) {  // stage_tile's mapping
        const int r = idx / groups, c0 = (idx - (idx / groups) * groups) * kVE;
        const uint4 raw = *reinterpret_cast<const uint4*>(st + r * cols + c0);
        put_group<Tin>(dst, ld, r, c0, raw, r < len && c0 < X, f);
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
    FLASHTS_DYNAMIC_SMEM(unsigned char, smem_raw);
    const int C = p.C, Dp = p.Dp, Dvp = p.Dvp, ldD = Dp + kPad, ldV = Dvp + kPad, ldC = C + kPad;
    const Tiles sm = carve(kFwd, C, Dp, Dvp, smem_raw, p.pipe ? int(sizeof(Tin)) : 0);
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
    const bool pipe = p.pipe != 0;
    // The cp.async pipeline (above): stage(sweep1, c) copies the inputs of chunk c of the non-causal sweep 1
    // (K, V) or of the main loop (Q; and K, V when causal).
    const int64_t n1 = p.causal ? 0 : n_chunks;  // chunks of sweep 1
    auto stage = [&](bool sweep1, int64_t c) {
        if (!pipe) return;
        const int64_t t_first = ri.t0 + c * C;
        const int len = chunk_len(ri.len, c, C);
        if (!sweep1) stage_tile(sm.sQ, C, Dp, p.q, ri.b, t_first, ri.h, len, p.D);
        if (sweep1 || p.causal) {
            stage_tile(sm.sK, C, Dp, p.k, ri.b, t_first, ri.hk, len, p.D);
            stage_tile(sm.sV, C, Dvp, p.v, ri.b, t_first, ri.hk, len, p.Dv);
        }
        cp_async_commit();
    };
    if (n_chunks > 0) stage(n1 > 0, 0);
    for (int64_t c = 0; c < n1; ++c) {  // non-causal sweep 1: the whole-sequence state
        const int64_t t_first = ri.t0 + c * C;
        const int len = chunk_len(ri.len, c, C);
        if (pipe) cp_async_wait<0>();
        land_tile(Ks, ldD, C, Dp, sm.sK, p.k, ri.b, t_first, ri.hk, len, p.D, fk);
        land_tile(Vs, ldV, C, Dvp, sm.sV, p.v, ri.b, t_first, ri.hk, len, p.Dv, raw);
        __syncthreads();
        stage(c + 1 < n1, c + 1 < n1 ? c + 1 : 0);
        add_outer<kTC>(Ss, ldV, zs, Ks, ldD, Vs, nullptr, C, Dp, Dvp);
        __syncthreads();
    }
    for (int64_t c = 0; c < n_chunks; ++c) {
        const int64_t t_first = ri.t0 + c * C;
        const int len = chunk_len(ri.len, c, C);
        if (pipe) cp_async_wait<0>();
        land_tile(Qs, ldD, C, Dp, sm.sQ, p.q, ri.b, t_first, ri.h, len, p.D, fq);
        if (p.causal) {
            land_tile(Ks, ldD, C, Dp, sm.sK, p.k, ri.b, t_first, ri.hk, len, p.D, fk);
            land_tile(Vs, ldV, C, Dvp, sm.sV, p.v, ri.b, t_first, ri.hk, len, p.Dv, raw);
        }
        __syncthreads();
        if (c + 1 < n_chunks) stage(false, c + 1);
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

// ================================================================== chunk-parallel forward (three phases)
//
// The one-pass fwd_kernel above has N·H blocks; at the goal shapes (B·H = 64) that leaves most of 132 SMs idle.
// The chunk-parallel forward (the algorithm of kernels/linear_attention.py) splits the same math in three:
//   phase 1 chunk_state_kernel  per (batch row b, chunk slot, query head h, Dv tile):
//             ΔS_c = K̃_cᵀ V_c [Dp, BV] (tensor cores), Δz_c = colsum K̃_c [Dp] (tile 0)   -> workspace
//   phase 2 state_scan_kernel   per (sequence n, head h, 1024 state elements): walks the chunks of n in order,
//             float32: causal: ws[c] <- S_0 + Σ_{c'<c} ΔS_c' (exclusive scan, in place), S_T = S_0 + Σ_c ΔS_c;
//             non-causal: ws[first chunk of n] <- S_T = S_0 + Σ_c ΔS_c (the whole-sequence state)
//   phase 3 chunk_out_kernel    per (b, slot, h, Dv tile), S = the state entering the chunk (causal) or the
//             whole-sequence state (non-causal):
//             causal:     Num = Q̃ S + tril(Q̃ K̃ᵀ) V,  den = Q̃ z + rowsum tril(Q̃ K̃ᵀ)
//             non-causal: Num = Q̃ S,                 den = Q̃ z;       o = Num / (den + eps) or Num
// Chunk slots: batch row b has NS slots of C steps. Without cu_seqlens slot c is steps [cC, cC + C) of sequence
// n = b. Packed (B = 1): sequence n owns the slots from base_n = ⌊cu[n] / C⌋ + n on (base_{n+1} - base_n ≥
// ⌈len_n / C⌉, so slots never overlap; NS = ⌊T / C⌋ + N); a slot's sequence is the largest n with base_n ≤ slot
// (binary search); slots past a sequence's last chunk are idle blocks. GQA: phase 1 runs per QUERY head (the
// summaries of a kv head are recomputed by each head of its group; their k/v rows come from L2), so each query
// head's scan adds its own S_0 in place. Workspace layout: ws[((b·NS + slot)·H + h)·Ep + i], Ep = Dp·(Dvp + 1):
// i = d·Dvp + e for S (padded entries are exact zeros), Dp·Dvp + d for z. Rows past the end of a sequence and
// padded columns are zero in every tile, as in the one-pass kernel.
// Tiles (float32 shared memory, leading dims padded by kPad): phase 1 K̃ [C, Dp], V [C, BV], ΔS [Dp, BV];
// phase 3 Q̃, K̃ [C, Dp], V [C, BV], A [C, C], S [Dp, BV], Num [C, BV], z [Dp], den [C]. 256 threads.

// The chunk of slot `slot` of batch row b: sequence n, first step t_first, steps len (≤ 0: an idle slot) and
// the slot of the sequence's first chunk.
struct SlotInfo {
    int64_t n, t_first, len, base;
};

template <typename Tin>
__device__ __forceinline__ SlotInfo slot_info(const Params<Tin>& p, int64_t b, int64_t slot) {
    SlotInfo si;
    const int64_t C = p.C;
    if (p.cu != nullptr) {
        int64_t lo = 0, hi = p.N;  // largest n with ⌊cu[n]/C⌋ + n ≤ slot (cu[0] = 0 gives base_0 = 0 ≤ slot)
        while (hi - lo > 1) {
            const int64_t mid = (lo + hi) / 2;
            if (p.cu[mid] / C + mid <= slot) lo = mid; else hi = mid;
        }
        const int64_t bos = p.cu[lo], eos = p.cu[lo + 1];
        si.n = lo;
        si.base = bos / C + lo;
        si.t_first = bos + (slot - si.base) * C;
        si.len = slot < si.base ? 0 : (eos - si.t_first < C ? eos - si.t_first : C);
    } else {
        si.n = b;
        si.base = 0;
        si.t_first = slot * C;
        si.len = p.T - si.t_first < C ? p.T - si.t_first : C;
    }
    return si;
}

struct ChunkTiles {
    float *Q, *K, *V, *A, *S, *Num, *z, *den;
    int64_t bytes;
};

// kind 0: phase 1 (K, V, S = ΔS); kind 1: phase 3 (all).
__host__ __device__ inline ChunkTiles carve_chunk(int kind, int C, int Dp, int BV, unsigned char* base) {
    const int ldD = Dp + kPad, ldB = BV + kPad, ldC = C + kPad;
    SmemCarver sc(base);
    ChunkTiles t{};
    t.Q = kind == 1 ? sc.take<float>(int64_t(C) * ldD) : nullptr;
    t.K = sc.take<float>(int64_t(C) * ldD);
    t.V = sc.take<float>(int64_t(C) * ldB);
    t.A = kind == 1 ? sc.take<float>(int64_t(C) * ldC) : nullptr;
    t.S = sc.take<float>(int64_t(Dp) * ldB);
    t.Num = kind == 1 ? sc.take<float>(int64_t(C) * ldB) : nullptr;
    t.z = kind == 1 ? sc.take<float>(Dp) : nullptr;
    t.den = kind == 1 ? sc.take<float>(C) : nullptr;
    t.bytes = sc.offset;
    return t;
}

// blockIdx.x -> (b, slot, h, Dv tile) with the tile fastest, then the head (neighbouring blocks share k/v rows).
struct ChunkBlock {
    int64_t b, slot, h;
    int tile;
};

template <typename Tin>
__device__ __forceinline__ ChunkBlock chunk_block(const Params<Tin>& p) {
    ChunkBlock cb;
    int64_t idx = blockIdx.x;
    cb.tile = static_cast<int>(idx % p.nBV);
    idx /= p.nBV;
    cb.h = idx % p.H;
    idx /= p.H;
    cb.slot = idx % p.NS;
    cb.b = idx / p.NS;
    return cb;
}

// Phase 1: ΔS = K̃ᵀ V for columns [e0, e0 + BV) and (tile 0) Δz = colsum K̃, into the workspace slot.
// Backward (p.dstate): ΔdS = Q̃ᵀ dO' (dO'_t = inv_t·do_t, or do_t) and Δdz = Q̃ᵀ dden into ws2, the same tiles
// with (K̃, V, 1) replaced by (Q̃ of head h, dO' of head h, dden) — inv, dden from the bwd_dq_kernel workspaces.
template <typename Tin>
__global__ void __launch_bounds__(kThreads) chunk_state_kernel(Params<Tin> p) {
    constexpr int kTC = kGemmFor<Tin>;
    FLASHTS_DYNAMIC_SMEM(unsigned char, smem_raw);
    const int C = p.C, Dp = p.Dp, Dvp = p.Dvp, BV = p.BV, ldD = Dp + kPad, ldB = BV + kPad;
    const ChunkTiles sm = carve_chunk(0, C, Dp, BV, smem_raw);
    const ChunkBlock cb = chunk_block(p);
    const SlotInfo si = slot_info(p, cb.b, cb.slot);
    if (si.len <= 0) return;  // idle slot (uniform over the block)
    const int len = static_cast<int>(si.len);
    const int64_t hk = cb.h / (p.H / p.Hk);
    const int e0 = cb.tile * BV;
    const int fmap = p.fmap;
    const float scale = p.scale;
    auto fk = [fmap](float x, int) { return phi(x, fmap); };
    auto fq = [fmap, scale](float x, int) { return scale * phi(x, fmap); };
    auto raw = [](float x, int) { return x; };
    const bool dstate = p.dstate != 0, normalize = p.normalize != 0;
    const int64_t wrow = (cb.b * p.T + si.t_first) * p.H + cb.h;  // ws_inv / ws_dden of the chunk's first row
    const float *ws_inv = p.ws_inv, *ws_dden = p.ws_dden;
    const int64_t H = p.H;
    View<Tin> vt = dstate ? p.dout : p.v;  // columns from e0 on (e0 is a multiple of 16: 16-byte loads stay aligned)
    vt.p += e0 * vt.sx;
    if (dstate) {
        auto fdo = [=](float x, int r) { return normalize ? x * ws_inv[wrow + r * H] : x; };
        load_tile(sm.K, ldD, C, Dp, p.q, cb.b, si.t_first, cb.h, len, p.D, fq);
        load_tile(sm.V, ldB, C, BV, vt, cb.b, si.t_first, cb.h, len, p.Dv - e0, fdo);
    } else {
        load_tile(sm.K, ldD, C, Dp, p.k, cb.b, si.t_first, hk, len, p.D, fk);
        load_tile(sm.V, ldB, C, BV, vt, cb.b, si.t_first, hk, len, p.Dv - e0, raw);
    }
    __syncthreads();
    block_gemm<kTC, kCol, kRow>(sm.S, ldB, sm.K, ldD, sm.V, ldB, Dp, BV, C, false);  // K̃ᵀ V  (Q̃ᵀ dO')
    float* dst = (dstate ? p.ws2 : p.ws) + ((cb.b * p.NS + cb.slot) * p.H + cb.h) * p.Ep;
    if (cb.tile == 0)
        for (int d = threadIdx.x; d < Dp; d += blockDim.x) {
            float acc = 0.f;
            if (!dstate)
                for (int r = 0; r < len; ++r) acc += sm.K[r * ldD + d];
            else if (normalize)
                for (int r = 0; r < len; ++r) acc = fmaf(sm.K[r * ldD + d], ws_dden[wrow + r * H], acc);
            dst[int64_t(Dp) * Dvp + d] = acc;
        }
    __syncthreads();
    const int groups = BV / 4;  // float4 stores of the [Dp, BV] tile (columns below Dvp)
    for (int idx = threadIdx.x; idx < Dp * groups; idx += blockDim.x) {
        const int d = idx / groups, c = (idx - (idx / groups) * groups) * 4;
        if (e0 + c >= Dvp) continue;
        const float* s = sm.S + d * ldB + c;
        *reinterpret_cast<float4*>(dst + int64_t(d) * Dvp + e0 + c) = make_float4(s[0], s[1], s[2], s[3]);
    }
}

// Phase 2: the float32 scan of the chunk states of one (sequence, head), 4 consecutive state entries (one
// float4: 16-byte loads and stores) per thread; see the section comment.
// Scan arguments: the workspace scanned in place, the initial value (nullptr = 0) and the total's destination
// (nullptr = none). reverse: walk the chunks from last to first (the backward's state cotangents: the value
// stored for chunk c is the cotangent of the state LEAVING it, dS_T + Σ_{c' > c} ΔdS_c').
struct ScanArgs {
    float* ws;
    const float *S_init, *z_init;
    float *S_fin, *z_fin;
    int reverse;
};

template <typename Tin>
__global__ void __launch_bounds__(kThreads) state_scan_kernel(Params<Tin> p, int64_t blocks_per_row, ScanArgs a) {
    const int64_t row = blockIdx.x / blocks_per_row;  // n·H + h
    const int64_t i0 = ((blockIdx.x - row * blocks_per_row) * blockDim.x + threadIdx.x) * 4;
    if (i0 >= p.Ep) return;
    const int64_t n = row / p.H, h = row - (row / p.H) * p.H;
    const int Dp = p.Dp, Dvp = p.Dvp;
    const int64_t D = p.D, Dv = p.Dv, SE = int64_t(Dp) * Dvp;
    int64_t b, base, len;
    if (p.cu != nullptr) {
        b = 0;
        len = static_cast<int64_t>(p.cu[n + 1]) - p.cu[n];
        base = p.cu[n] / p.C + n;
    } else {
        b = n;
        len = p.T;
        base = 0;
    }
    // entry i of the padded state -> its index in the exact [D, Dv] / [D] layouts (-1: padding)
    auto exact = [&](int64_t i, bool& is_z) -> int64_t {
        is_z = i >= SE;
        if (is_z) {
            const int64_t d = i - SE;
            return d < D ? row * D + d : -1;
        }
        const int64_t d = i / Dvp, e = i - (i / Dvp) * Dvp;
        return (d < D && e < Dv) ? (row * D + d) * Dv + e : -1;
    };
    float run[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        bool is_z;
        const int64_t x = exact(i0 + j, is_z);
        const float* init = is_z ? a.z_init : a.S_init;
        run[j] = (x >= 0 && init != nullptr) ? init[x] : 0.f;
    }
    const int64_t n_chunks = cdiv64(len, p.C);
    float* col = a.ws + ((b * p.NS + base) * p.H + h) * p.Ep + i0;
    const int64_t step = p.H * p.Ep;  // next slot, same head
    for (int64_t i = 0; i < n_chunks; ++i) {
        const int64_t c = a.reverse ? n_chunks - 1 - i : i;
        float4* cell = reinterpret_cast<float4*>(col + c * step);
        const float4 x = *cell;
        if (p.causal) *cell = make_float4(run[0], run[1], run[2], run[3]);  // state entering chunk c
        run[0] += x.x;
        run[1] += x.y;
        run[2] += x.z;
        run[3] += x.w;
    }
    if (!p.causal && n_chunks > 0) *reinterpret_cast<float4*>(col) = make_float4(run[0], run[1], run[2], run[3]);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        bool is_z;
        const int64_t x = exact(i0 + j, is_z);
        float* fin = is_z ? a.z_fin : a.S_fin;
        if (x >= 0 && fin != nullptr) fin[x] = run[j];
    }
}

// Phase 3: the outputs of one chunk, columns [e0, e0 + BV).
template <typename Tin>
__global__ void __launch_bounds__(kThreads) chunk_out_kernel(Params<Tin> p) {
    constexpr int kTC = kGemmFor<Tin>;
    FLASHTS_DYNAMIC_SMEM(unsigned char, smem_raw);
    const int C = p.C, Dp = p.Dp, Dvp = p.Dvp, BV = p.BV, ldD = Dp + kPad, ldB = BV + kPad, ldC = C + kPad;
    const ChunkTiles sm = carve_chunk(1, C, Dp, BV, smem_raw);
    const ChunkBlock cb = chunk_block(p);
    const SlotInfo si = slot_info(p, cb.b, cb.slot);
    if (si.len <= 0) return;  // idle slot (uniform over the block)
    const int len = static_cast<int>(si.len);
    const int64_t hk = cb.h / (p.H / p.Hk);
    const int e0 = cb.tile * BV;
    const bool causal = p.causal != 0;
    const int fmap = p.fmap;
    const float scale = p.scale;
    auto fq = [fmap, scale](float x, int) { return scale * phi(x, fmap); };
    auto fk = [fmap](float x, int) { return phi(x, fmap); };
    auto raw = [](float x, int) { return x; };
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;

    load_tile(sm.Q, ldD, C, Dp, p.q, cb.b, si.t_first, cb.h, len, p.D, fq);
    if (causal) {
        View<Tin> vt = p.v;
        vt.p += e0 * vt.sx;
        load_tile(sm.K, ldD, C, Dp, p.k, cb.b, si.t_first, hk, len, p.D, fk);
        load_tile(sm.V, ldB, C, BV, vt, cb.b, si.t_first, hk, len, p.Dv - e0, raw);
    }
    // the state: entering this chunk (causal) or the whole sequence's (non-causal: the sequence's first slot)
    const float* src = p.ws + ((cb.b * p.NS + (causal ? cb.slot : si.base)) * p.H + cb.h) * p.Ep;
    const int groups = BV / 4;
    for (int idx = threadIdx.x; idx < Dp * groups; idx += blockDim.x) {
        const int d = idx / groups, c = (idx - (idx / groups) * groups) * 4;
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (e0 + c < Dvp) x = *reinterpret_cast<const float4*>(src + int64_t(d) * Dvp + e0 + c);
        float* s = sm.S + d * ldB + c;
        s[0] = x.x;
        s[1] = x.y;
        s[2] = x.z;
        s[3] = x.w;
    }
    for (int d = threadIdx.x; d < Dp; d += blockDim.x) sm.z[d] = src[int64_t(Dp) * Dvp + d];
    __syncthreads();
    block_gemm<kTC, kRow, kRow>(sm.Num, ldB, sm.Q, ldD, sm.S, ldB, C, BV, Dp, false);  // Q̃ S
    if (causal) block_gemm<kTC, kRow, kCol>(sm.A, ldC, sm.Q, ldD, sm.K, ldD, C, C, Dp, false);  // Q̃ K̃ᵀ
    __syncthreads();
    if (causal) {
        for (int idx = threadIdx.x; idx < C * C; idx += blockDim.x) {
            const int t = idx / C, s = idx - (idx / C) * C;
            if (s > t) sm.A[t * ldC + s] = 0.f;
        }
        __syncthreads();
        block_gemm<kTC, kRow, kRow>(sm.Num, ldB, sm.A, ldC, sm.V, ldB, C, BV, C, true);  // += tril(A) V
    }
    if (p.normalize)  // den_t = q̃_t·z + Σ_{s≤t} A_ts: one warp per row (A is read-only now)
        for (int t = warp; t < C; t += n_warps) {
            float den = 0.f;
            for (int d = lane; d < Dp; d += 32) den = fmaf(sm.Q[t * ldD + d], sm.z[d], den);
            if (causal)
                for (int s = lane; s <= t; s += 32) den += sm.A[t * ldC + s];
            den = warp_sum(den);
            if (lane == 0) sm.den[t] = den;
        }
    __syncthreads();
    const int64_t cols = (p.Dv - e0) < BV ? (p.Dv - e0) : BV;
    for (int64_t idx = threadIdx.x; idx < int64_t(len) * cols; idx += blockDim.x) {
        const int t = static_cast<int>(idx / cols), e = static_cast<int>(idx - (idx / cols) * cols);
        float val = sm.Num[t * ldB + e];
        if (p.normalize) val = val / (sm.den[t] + p.eps);
        p.out[((cb.b * p.T + si.t_first + t) * p.H + cb.h) * p.Dv + e0 + e] = from_float<Tin>(val);
    }
}

// Chunk-parallel backward (p.par): block -> its one chunk. Fills ri like row_info (the whole sequence), the
// chunk index c within the sequence and the workspace slot holding its state (causal: the chunk's own slot;
// non-causal: the sequence's first slot, which holds the whole-sequence sum). false: an idle slot.
template <typename Tin>
__device__ __forceinline__ bool par_chunk(const Params<Tin>& p, RowInfo& r, int64_t& c, int64_t& cell) {
    const ChunkBlock cb = chunk_block(p);
    const SlotInfo si = slot_info(p, cb.b, cb.slot);
    r.n = si.n;
    r.h = cb.h;
    r.hk = cb.h / (p.H / p.Hk);
    r.b = cb.b;
    r.t0 = p.cu != nullptr ? static_cast<int64_t>(p.cu[si.n]) : 0;
    r.len = p.cu != nullptr ? static_cast<int64_t>(p.cu[si.n + 1]) - r.t0 : p.T;
    c = (si.t_first - r.t0) / p.C;
    cell = ((cb.b * p.NS + (p.causal ? cb.slot : si.base)) * p.H + cb.h) * p.Ep;
    return si.len > 0;
}

// state[d][e] = ws cell (padded layout [Dp][Dvp] then z [Dp]).
__device__ __forceinline__ void init_state_ws(float* S, int ldV, float* z, const float* cell, int Dp, int Dvp) {
    for (int idx = threadIdx.x; idx < Dp * Dvp; idx += blockDim.x) {
        const int d = idx / Dvp, e = idx - (idx / Dvp) * Dvp;
        S[d * ldV + e] = cell[idx];
    }
    for (int d = threadIdx.x; d < Dp; d += blockDim.x) z[d] = cell[int64_t(Dp) * Dvp + d];
}

// ============================================================================================== backward

// Forward-order sweep: den, inv, dden (-> workspace) and dq. (min 1 block per SM: with the cp.async pipeline
// ptxas spilled 8-64 bytes at its default cap of 128 registers; it takes 180-208 now. Shared memory allows one
// block per SM anyway at D >= 64 — 140 KB and more, the chunk-parallel backward included.)
template <typename Tin>
__global__ void __launch_bounds__(kThreads, 1) bwd_dq_kernel(Params<Tin> p) {
    constexpr int kTC = kGemmFor<Tin>;
    FLASHTS_DYNAMIC_SMEM(unsigned char, smem_raw);
    const int C = p.C, Dp = p.Dp, Dvp = p.Dvp, ldD = Dp + kPad, ldV = Dvp + kPad, ldC = C + kPad;
    const Tiles sm = carve(kBwdDq, C, Dp, Dvp, smem_raw, p.pipe ? int(sizeof(Tin)) : 0);
    float *Qs = sm.Q, *Ks = sm.K, *Vs = sm.V, *dOs = sm.dO, *As = sm.A, *Ms = sm.M, *G = sm.X1, *Ss = sm.S,
          *zs = sm.z, *invs = sm.v1, *ddens = sm.v2;
    RowInfo ri;
    int64_t c_par = 0, cell = 0;
    if (p.par) {
        if (!par_chunk(p, ri, c_par, cell)) return;  // uniform over the block
        init_state_ws(Ss, ldV, zs, p.ws + cell, Dp, Dvp);
    } else {
        ri = row_info(p);
        init_state(Ss, ldV, zs, p.S0, p.z0, ri.n * p.H + ri.h, p.D, p.Dv, Dp, Dvp);
    }
    const int fmap = p.fmap;
    const float scale = p.scale;
    auto fq = [fmap, scale](float x, int) { return scale * phi(x, fmap); };
    auto fk = [fmap](float x, int) { return phi(x, fmap); };
    auto raw = [](float x, int) { return x; };
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;

    __syncthreads();
    const int64_t n_chunks = cdiv64(ri.len, C);
    const int64_t c_lo = p.par ? c_par : 0, c_hi = p.par ? c_par + 1 : n_chunks;
    const bool pipe = p.pipe != 0;  // never with p.par (one chunk: nothing to overlap)
    // The cp.async pipeline: stage(sweep1, c) copies the inputs of chunk c of the non-causal sweep 1 (K, V) or
    // of the main loop (Q, dO; and K, V when causal).
    const int64_t n1 = (!p.causal && !p.par) ? n_chunks : 0;  // chunks of sweep 1
    auto stage = [&](bool sweep1, int64_t c) {
        if (!pipe) return;
        const int64_t t_first = ri.t0 + c * C;
        const int len = chunk_len(ri.len, c, C);
        if (!sweep1) {
            stage_tile(sm.sQ, C, Dp, p.q, ri.b, t_first, ri.h, len, p.D);
            stage_tile(sm.sdO, C, Dvp, p.dout, ri.b, t_first, ri.h, len, p.Dv);
        }
        if (sweep1 || p.causal) {
            stage_tile(sm.sK, C, Dp, p.k, ri.b, t_first, ri.hk, len, p.D);
            stage_tile(sm.sV, C, Dvp, p.v, ri.b, t_first, ri.hk, len, p.Dv);
        }
        cp_async_commit();
    };
    if (c_lo < c_hi) stage(n1 > 0, n1 > 0 ? 0 : c_lo);
    for (int64_t c = 0; c < n1; ++c) {  // non-causal sweep 1: the whole-sequence state (then c_lo = 0)
        const int64_t t_first = ri.t0 + c * C;
        const int len = chunk_len(ri.len, c, C);
        if (pipe) cp_async_wait<0>();
        land_tile(Ks, ldD, C, Dp, sm.sK, p.k, ri.b, t_first, ri.hk, len, p.D, fk);
        land_tile(Vs, ldV, C, Dvp, sm.sV, p.v, ri.b, t_first, ri.hk, len, p.Dv, raw);
        __syncthreads();
        stage(c + 1 < n1, c + 1 < n1 ? c + 1 : 0);
        add_outer<kTC>(Ss, ldV, zs, Ks, ldD, Vs, nullptr, C, Dp, Dvp);
        __syncthreads();
    }
    for (int64_t c = c_lo; c < c_hi; ++c) {
        const int64_t t_first = ri.t0 + c * C;
        const int len = chunk_len(ri.len, c, C);
        if (pipe) cp_async_wait<0>();
        land_tile(Qs, ldD, C, Dp, sm.sQ, p.q, ri.b, t_first, ri.h, len, p.D, fq);
        land_tile(dOs, ldV, C, Dvp, sm.sdO, p.dout, ri.b, t_first, ri.h, len, p.Dv, raw);
        if (p.causal) {
            land_tile(Ks, ldD, C, Dp, sm.sK, p.k, ri.b, t_first, ri.hk, len, p.D, fk);
            land_tile(Vs, ldV, C, Dvp, sm.sV, p.v, ri.b, t_first, ri.hk, len, p.Dv, raw);
        }
        __syncthreads();
        if (c + 1 < c_hi) stage(false, c + 1);
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
        if (p.causal && !p.par) add_outer<kTC>(Ss, ldV, zs, Ks, ldD, Vs, nullptr, C, Dp, Dvp);
        __syncthreads();
    }
}

// Reverse-order sweep: dk, dv (per query head, float32) and the initial-state cotangents. (2 blocks per SM: the
// 128-register cap; without the hint ptxas capped the float32 instance at 80 registers and spilled.)
template <typename Tin>
__global__ void __launch_bounds__(kThreads, 2) bwd_dkv_kernel(Params<Tin> p) {
    constexpr int kTC = kGemmFor<Tin>;
    FLASHTS_DYNAMIC_SMEM(unsigned char, smem_raw);
    const int C = p.C, Dp = p.Dp, Dvp = p.Dvp, ldD = Dp + kPad, ldV = Dvp + kPad, ldC = C + kPad;
    const Tiles sm = carve(kBwdDkv, C, Dp, Dvp, smem_raw, p.pipe ? int(sizeof(Tin)) : 0);
    float *Qs = sm.Q, *Ks = sm.K, *Vs = sm.V, *dOs = sm.dO, *As = sm.A, *Ms = sm.M, *dK = sm.X1, *dV = sm.X2,
          *dS = sm.S, *dz = sm.z, *ddens = sm.v2;
    RowInfo ri;
    int64_t c_par = 0, cell = 0;
    if (p.par) {
        if (!par_chunk(p, ri, c_par, cell)) return;  // uniform over the block
        init_state_ws(dS, ldV, dz, p.ws2 + cell, Dp, Dvp);  // the cotangent of the state leaving the chunk
    } else {
        ri = row_info(p);
        init_state(dS, ldV, dz, p.dST, p.dzT, ri.n * p.H + ri.h, p.D, p.Dv, Dp, Dvp);
    }
    const int64_t state_row = ri.n * p.H + ri.h;
    const int fmap = p.fmap;
    const float scale = p.scale;
    const float* ws_inv = p.ws_inv;
    const int64_t T = p.T, H = p.H, b = ri.b, h = ri.h;
    const bool normalize = p.normalize != 0;
    auto fq = [fmap, scale](float x, int) { return scale * phi(x, fmap); };
    auto fk = [fmap](float x, int) { return phi(x, fmap); };
    auto raw = [](float x, int) { return x; };

    __syncthreads();
    const int64_t n_chunks = cdiv64(ri.len, C);
    const int64_t c_lo = p.par ? c_par : 0, c_hi = p.par ? c_par + 1 : n_chunks;
    // dO'_t = inv_t·do_t (rows of the chunk starting at t_first; from the staging tile when staged); dden_t into
    // ddens
    auto load_dout = [&](int64_t t_first, int len) {
        auto f = [=](float x, int t) { return normalize ? x * ws_inv[(b * T + t_first + t) * H + h] : x; };
        land_tile(dOs, ldV, C, Dvp, sm.sdO, p.dout, b, t_first, h, len, p.Dv, f);
        for (int t = threadIdx.x; t < C; t += blockDim.x)
            ddens[t] = (normalize && t < len) ? p.ws_dden[(b * T + t_first + t) * H + h] : 0.f;
    };
    const bool pipe = p.pipe != 0;  // never with p.par (one chunk: nothing to overlap)
    // The cp.async pipeline: stage(sweep1, c) copies the inputs of chunk c of the non-causal sweep 1 (Q, dO) or
    // of the main (reverse) loop (K, V; and Q, dO when causal).
    const int64_t n1 = (!p.causal && !p.par) ? n_chunks : 0;  // chunks of sweep 1
    auto stage = [&](bool sweep1, int64_t c) {
        if (!pipe) return;
        const int64_t t_first = ri.t0 + c * C;
        const int len = chunk_len(ri.len, c, C);
        if (sweep1 || p.causal) {
            stage_tile(sm.sQ, C, Dp, p.q, b, t_first, h, len, p.D);
            stage_tile(sm.sdO, C, Dvp, p.dout, b, t_first, h, len, p.Dv);
        }
        if (!sweep1) {
            stage_tile(sm.sK, C, Dp, p.k, b, t_first, ri.hk, len, p.D);
            stage_tile(sm.sV, C, Dvp, p.v, b, t_first, ri.hk, len, p.Dv);
        }
        cp_async_commit();
    };
    if (c_lo < c_hi) stage(n1 > 0, n1 > 0 ? 0 : c_hi - 1);
    for (int64_t c = 0; c < n1; ++c) {  // non-causal sweep 1: dS = dS_T + Σ_t q̃_t dO'_tᵀ over the whole sequence
        const int64_t t_first = ri.t0 + c * C;
        const int len = chunk_len(ri.len, c, C);
        if (pipe) cp_async_wait<0>();
        land_tile(Qs, ldD, C, Dp, sm.sQ, p.q, b, t_first, h, len, p.D, fq);
        load_dout(t_first, len);
        __syncthreads();
        stage(c + 1 < n1, c + 1 < n1 ? c + 1 : c_hi - 1);
        add_outer<kTC>(dS, ldV, dz, Qs, ldD, dOs, ddens, C, Dp, Dvp);
        __syncthreads();
    }
    for (int64_t c = c_hi - 1; c >= c_lo; --c) {
        const int64_t t_first = ri.t0 + c * C;
        const int len = chunk_len(ri.len, c, C);
        if (pipe) cp_async_wait<0>();
        land_tile(Ks, ldD, C, Dp, sm.sK, p.k, b, t_first, ri.hk, len, p.D, fk);
        land_tile(Vs, ldV, C, Dvp, sm.sV, p.v, b, t_first, ri.hk, len, p.Dv, raw);
        if (p.causal) {
            land_tile(Qs, ldD, C, Dp, sm.sQ, p.q, b, t_first, h, len, p.D, fq);
            load_dout(t_first, len);
        }
        __syncthreads();
        if (c - 1 >= c_lo) stage(false, c - 1);
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
        if (p.causal && !p.par) add_outer<kTC>(dS, ldV, dz, Qs, ldD, dOs, ddens, C, Dp, Dvp);  // dS += Q̃ᵀ dO'
        __syncthreads();
    }
    if (!p.par) store_state(p.dS0, p.dz0, dS, ldV, dz, state_row, p.D, p.Dv);
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

// X: the row length (D or Dv). vec = 1 when every row is contiguous and 16-byte aligned and X is a multiple of
// 16 / sizeof(Tin) (then load_tile moves 16 bytes per thread and step).
template <typename Tin>
View<Tin> view(const LinInput& x, int64_t X) {
    constexpr int64_t kVE = 16 / static_cast<int64_t>(sizeof(Tin));
    const bool vec = x.stride_x == 1 && X % kVE == 0 && reinterpret_cast<uintptr_t>(x.data) % 16 == 0 &&
                     x.stride_b % kVE == 0 && x.stride_t % kVE == 0 && x.stride_h % kVE == 0;
    return View<Tin>{static_cast<const Tin*>(x.data), x.stride_b, x.stride_t, x.stride_h, x.stride_x, vec ? 1 : 0};
}

cudaError_t check_sizes(const LinSizes& sz) {
    if (sz.D < 1 || sz.Dv < 1 || sz.D > kMaxHeadDim || sz.Dv > kMaxHeadDim) return cudaErrorInvalidValue;
    if (sz.H < 1 || sz.Hk < 1 || sz.H % sz.Hk != 0 || sz.N < 0 || sz.T < 0) return cudaErrorInvalidValue;
    if (sz.N * sz.H > 0x7fffffffLL) return cudaErrorInvalidValue;
    return cudaSuccess;
}

// The launch configuration of a sequential kernel (fwd_kernel, or bwd_dq_kernel / bwd_dkv_kernel in one pass):
// the largest chunk C whose float32 tiles fit max_smem, and whether the cp.async staging tiles of the next chunk
// are added (pipe; LinOptions::pipeline: 1 off, 2 on where they fit, 0 auto). Auto stages when some input allows
// 16-byte copies (any_vec), the staged tiles fit, and the resident blocks per SM (registers and shared memory:
// cudaOccupancyMaxActiveBlocksPerMultiprocessor) do not drop: a second resident block hides the loads as well
// as the prefetch does, so the staging must not cost one. Dynamic shared memory at the goal head dims, 16-bit
// inputs, sm_90 (227 KB per block, 228 KB per SM; carve, bytes with the staging in brackets):
//   fwd_kernel     D = Dv = 64:  C 64, 105,216 (129,792: 1 block/SM instead of 2 -> auto: not staged)
//                  D = Dv = 128: C 64, 221,184 (270,336 > 227 KB -> not staged)
//   bwd_dq_kernel  D = Dv = 64:  C 64, 140,032 (172,800, 1 block/SM either way -> staged)
//                  D = Dv = 128: C 32, 162,048 (194,816 -> staged)
//   bwd_dkv_kernel D = Dv = 64:  C 64, 157,440 (190,208 -> staged)
//                  D = Dv = 128: C 32, 178,944 (211,712 -> staged)
// (tests/test_linear_cuda_emulation.py test_sequential_staging_budget checks these numbers.)
struct SeqConfig {
    int C, pipe;
    int64_t bytes;
};

template <typename Tin>
cudaError_t seq_config(int kind, void (*kernel)(Params<Tin>), int Dp, int Dvp, int max_smem, int force_chunk,
                       int pipeline, bool any_vec, SeqConfig* cfg) {
    cfg->C = 0;
    cfg->pipe = 0;
    cfg->bytes = 0;
    for (int C : kChunks) {
        if (force_chunk > 0 && C != force_chunk) continue;
        cfg->bytes = carve(kind, C, Dp, Dvp, nullptr).bytes;
        if (cfg->bytes <= max_smem) {
            cfg->C = C;
            break;
        }
    }
    if (cfg->C == 0) return cudaErrorInvalidConfiguration;
    const int64_t staged = carve(kind, cfg->C, Dp, Dvp, nullptr, int(sizeof(Tin))).bytes;
    if (pipeline == 1 || staged > max_smem || (pipeline == 0 && !any_vec)) return cudaSuccess;
    if (pipeline == 0) {
        // (the occupancy query counts 0 blocks above the kernel's dynamic shared-memory limit: raise it first)
        int plain_blocks = 0, staged_blocks = 0;
        cudaError_t err =
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(staged));
        if (err == cudaSuccess)
            err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&plain_blocks, kernel, kThreads,
                                                                static_cast<size_t>(cfg->bytes));
        if (err == cudaSuccess)
            err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&staged_blocks, kernel, kThreads,
                                                                static_cast<size_t>(staged));
        if (err != cudaSuccess) return err;
        if (staged_blocks < plain_blocks) return cudaSuccess;
    }
    cfg->pipe = 1;
    cfg->bytes = staged;
    return cudaSuccess;
}

// LinOptions::pipeline, or for 0 (auto) FLASHTS_LINEAR_PIPELINE=0 / =1 from the environment (off / on where it
// fits: to time both on a GPU).
int pipeline_of(const LinOptions& opt) {
    if (opt.pipeline != 0) return opt.pipeline;
    const char* env = std::getenv("FLASHTS_LINEAR_PIPELINE");
    if (env != nullptr && env[0] == '0') return 1;
    if (env != nullptr && env[0] == '1') return 2;
    return 0;
}

// Launches a sequential kernel (seq_config's chunk and staging), one block per (n, h).
template <typename Tin>
cudaError_t launch(int kind, void (*kernel)(Params<Tin>), Params<Tin> p, int max_smem, int force_chunk,
                   int pipeline, cudaStream_t stream) {
    if (p.N * p.H == 0) return cudaSuccess;
    const bool any_vec = p.q.vec || p.k.vec || p.v.vec || (kind != kFwd && p.dout.vec);
    SeqConfig cfg{};
    cudaError_t err = seq_config<Tin>(kind, kernel, p.Dp, p.Dvp, max_smem, force_chunk, pipeline, any_vec, &cfg);
    if (err != cudaSuccess) return err;
    p.C = cfg.C;
    p.pipe = cfg.pipe;
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(cfg.bytes));
    if (err != cudaSuccess) return err;
    FLASHTS_LAUNCH(kernel, static_cast<unsigned>(p.N * p.H), kThreads, static_cast<size_t>(cfg.bytes), stream, p);
    return cudaGetLastError();
}

constexpr int kMaxBV = 64;  // the chunk kernels' widest Dv tile

// The occupancy rule (kernels/occupancy.py `choose`, applied to these kernels); see FwdPlan in the header.
// backward: the plan of linear_attention_bwd — one C for every kernel of the chunk-parallel backward (its
// bwd_dq / bwd_dkv tiles and the summaries' tiles must fit), main grid B·NS·H (no Dv tiles), two workspaces.
cudaError_t make_plan(const LinSizes& sz, const LinOptions& opt, FwdPlan* plan, bool backward = false) {
    int sms = 0, max_smem = 0;
    cudaError_t err = device_facts(opt, &sms, &max_smem);
    if (err != cudaSuccess) return err;
    const int Dp = round_up(static_cast<int>(sz.D), 16), Dvp = round_up(static_cast<int>(sz.Dv), 16);
    int c_one = 0, c_chunk = 0;
    const int bv0 = Dvp < kMaxBV ? Dvp : kMaxBV;
    for (int C : kChunks) {
        if (opt.chunk > 0 && C != opt.chunk) continue;  // a forced chunk size (tests)
        const bool bwd_fits = carve(kBwdDq, C, Dp, Dvp, nullptr).bytes <= max_smem &&
                              carve(kBwdDkv, C, Dp, Dvp, nullptr).bytes <= max_smem;
        const bool one_fits = backward ? bwd_fits : carve(kFwd, C, Dp, Dvp, nullptr).bytes <= max_smem;
        const bool chunk_fits = carve_chunk(0, C, Dp, bv0, nullptr).bytes <= max_smem &&
                                (backward ? bwd_fits : carve_chunk(1, C, Dp, bv0, nullptr).bytes <= max_smem);
        if (c_one == 0 && one_fits) c_one = C;
        if (c_chunk == 0 && chunk_fits) c_chunk = C;
    }
    const int64_t seq = sz.N * sz.H;
    auto slots = [&](int C) -> int64_t {
        if (C == 0) return 0;
        return sz.cu_seqlens != nullptr ? sz.T / C + sz.N : cdiv64(sz.T, C);
    };
    const int64_t NS = slots(c_chunk);
    auto chunk_blocks = [&](int bv) { return sz.B * NS * sz.H * cdiv64(Dvp, bv); };
    auto main_blocks = [&](int bv) { return backward ? sz.B * NS * sz.H : chunk_blocks(bv); };
    FwdMode mode = opt.fwd_mode;
    if (mode == FwdMode::Auto) {
        if (c_chunk == 0 || seq >= 2 * int64_t(sms)) mode = FwdMode::OnePass;
        else if (main_blocks(bv0) >= sms && main_blocks(bv0) > seq) mode = FwdMode::Chunked;
        else mode = seq >= main_blocks(16) ? FwdMode::OnePass : FwdMode::Chunked;
        if (c_one == 0) mode = FwdMode::Chunked;
    }
    int bv = bv0;
    if (mode == FwdMode::Chunked)
        while (chunk_blocks(bv) < sms && bv > 16) bv = round_up(bv / 2, 16);
    plan->mode = mode;
    plan->C = mode == FwdMode::OnePass ? c_one : c_chunk;
    plan->BV = bv;
    plan->NS = mode == FwdMode::Chunked ? NS : 0;
    plan->seq_blocks = seq;
    plan->chunk_blocks = main_blocks(bv);
    plan->workspace_bytes =
        mode == FwdMode::Chunked ? (backward ? 2 : 1) * sz.B * NS * sz.H * int64_t(Dp) * (Dvp + 1) * 4 : 0;
    return plan->C == 0 ? cudaErrorInvalidConfiguration : cudaSuccess;
}

// The chunk-parallel forward: three launches on `stream` (see the section comment above chunk_state_kernel).
template <typename Tin>
cudaError_t launch_chunked(Params<Tin> p, const FwdPlan& plan, void* workspace, int64_t workspace_bytes,
                           cudaStream_t stream) {
    if (workspace_bytes < plan.workspace_bytes || (plan.workspace_bytes > 0 && workspace == nullptr) ||
        reinterpret_cast<uintptr_t>(workspace) % 16 != 0)
        return cudaErrorInvalidValue;
    p.C = plan.C;
    p.BV = plan.BV;
    p.nBV = static_cast<int>(cdiv64(p.Dvp, plan.BV));
    p.NS = plan.NS;
    p.Ep = int64_t(p.Dp) * (p.Dvp + 1);
    p.ws = static_cast<float*>(workspace);
    const int64_t blocks = p.B * p.NS * p.H * p.nBV;
    const int64_t scan_per_row = cdiv64(p.Ep / 4, kThreads);
    if (blocks > 0x7fffffffLL || p.N * p.H * scan_per_row > 0x7fffffffLL) return cudaErrorInvalidValue;
    const int64_t bytes1 = carve_chunk(0, p.C, p.Dp, p.BV, nullptr).bytes;
    const int64_t bytes3 = carve_chunk(1, p.C, p.Dp, p.BV, nullptr).bytes;
    cudaError_t err = cudaFuncSetAttribute(chunk_state_kernel<Tin>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(bytes1));
    if (err == cudaSuccess)
        err = cudaFuncSetAttribute(chunk_out_kernel<Tin>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   static_cast<int>(bytes3));
    if (err != cudaSuccess) return err;
    if (blocks > 0) {
        FLASHTS_LAUNCH(chunk_state_kernel<Tin>, static_cast<unsigned>(blocks), kThreads, static_cast<size_t>(bytes1),
                       stream, p);
        err = cudaGetLastError();
        if (err != cudaSuccess) return err;
    }
    if (p.N * p.H > 0) {
        const ScanArgs a{p.ws, p.S0, p.z0, p.ST, p.zT, 0};
        FLASHTS_LAUNCH(state_scan_kernel<Tin>, static_cast<unsigned>(p.N * p.H * scan_per_row), kThreads, 0, stream,
                       p, scan_per_row, a);
        err = cudaGetLastError();
        if (err != cudaSuccess) return err;
    }
    if (blocks > 0) {
        FLASHTS_LAUNCH(chunk_out_kernel<Tin>, static_cast<unsigned>(blocks), kThreads, static_cast<size_t>(bytes3),
                       stream, p);
        err = cudaGetLastError();
    }
    return err;
}

template <typename Tin>
cudaError_t fwd_typed(LinInput q, LinInput k, LinInput v, LinSizes sz, LinOptions opt, const float* S0,
                      const float* z0, void* o, float* S_T, float* z_T, void* workspace, int64_t workspace_bytes,
                      cudaStream_t stream) {
    Params<Tin> p = make_params<Tin>(sz, opt);
    p.q = view<Tin>(q, sz.D);
    p.k = view<Tin>(k, sz.D);
    p.v = view<Tin>(v, sz.Dv);
    p.S0 = S0;
    p.z0 = z0;
    p.out = static_cast<Tin*>(o);
    p.ST = S_T;
    p.zT = z_T;
    FwdPlan plan{};
    cudaError_t err = make_plan(sz, opt, &plan);
    if (err != cudaSuccess) return err;
    if (plan.mode == FwdMode::Chunked) return launch_chunked<Tin>(p, plan, workspace, workspace_bytes, stream);
    int sms = 0, max_smem = 0;
    err = device_facts(opt, &sms, &max_smem);
    if (err != cudaSuccess) return err;
    return launch<Tin>(kFwd, fwd_kernel<Tin>, p, max_smem, opt.chunk, pipeline_of(opt), stream);
}

// The chunk-parallel backward (B·NS·H blocks per main kernel), six launches on `stream`:
//   1. chunk_state_kernel: K̃ᵀ V, colsum K̃ per chunk -> ws;   2. state_scan_kernel: the state entering each chunk
//   (non-causal: the whole-sequence state) in ws;   3. bwd_dq_kernel (par): den, inv, dden (-> ws_inv, ws_dden)
//   and dq per chunk;   4. chunk_state_kernel (dstate): Q̃ᵀ dO', Q̃ᵀ dden per chunk -> ws2;   5. state_scan_kernel
//   (reverse, from dS_T): the cotangent of the state leaving each chunk (non-causal: the whole sum) in ws2 and
//   dS_0 = dS_T + Σ;   6. bwd_dkv_kernel (par): dk, dv per chunk.
template <typename Tin>
cudaError_t launch_chunked_bwd(Params<Tin> p, const FwdPlan& plan, void* workspace, int64_t workspace_bytes,
                               cudaStream_t stream) {
    if (workspace_bytes < plan.workspace_bytes || (plan.workspace_bytes > 0 && workspace == nullptr) ||
        reinterpret_cast<uintptr_t>(workspace) % 16 != 0)
        return cudaErrorInvalidValue;
    p.C = plan.C;
    p.BV = plan.BV;
    p.nBV = static_cast<int>(cdiv64(p.Dvp, plan.BV));
    p.NS = plan.NS;
    p.Ep = int64_t(p.Dp) * (p.Dvp + 1);
    p.ws = static_cast<float*>(workspace);
    p.ws2 = p.ws + p.B * p.NS * p.H * p.Ep;
    const int64_t rows = p.B * p.NS * p.H, sum_blocks = rows * p.nBV;
    const int64_t scan_per_row = cdiv64(p.Ep / 4, kThreads);
    if (sum_blocks > 0x7fffffffLL || p.N * p.H * scan_per_row > 0x7fffffffLL) return cudaErrorInvalidValue;
    const int64_t bytes_sum = carve_chunk(0, p.C, p.Dp, p.BV, nullptr).bytes;
    const int64_t bytes_dq = carve(kBwdDq, p.C, p.Dp, p.Dvp, nullptr).bytes;
    const int64_t bytes_dkv = carve(kBwdDkv, p.C, p.Dp, p.Dvp, nullptr).bytes;
    cudaError_t err = cudaFuncSetAttribute(chunk_state_kernel<Tin>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(bytes_sum));
    if (err == cudaSuccess)
        err = cudaFuncSetAttribute(bwd_dq_kernel<Tin>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   static_cast<int>(bytes_dq));
    if (err == cudaSuccess)
        err = cudaFuncSetAttribute(bwd_dkv_kernel<Tin>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   static_cast<int>(bytes_dkv));
    if (err != cudaSuccess) return err;
    Params<Tin> pp = p;  // the per-chunk kernels: one block per (b, slot, h)
    pp.par = 1;
    pp.nBV = 1;
    Params<Tin> pd = p;  // the cotangent summaries
    pd.dstate = 1;
    const unsigned scan_blocks = static_cast<unsigned>(p.N * p.H * scan_per_row);
    if (sum_blocks > 0) {
        FLASHTS_LAUNCH(chunk_state_kernel<Tin>, static_cast<unsigned>(sum_blocks), kThreads,
                       static_cast<size_t>(bytes_sum), stream, p);
        if ((err = cudaGetLastError()) != cudaSuccess) return err;
    }
    if (scan_blocks > 0) {
        const ScanArgs a{p.ws, p.S0, p.z0, nullptr, nullptr, 0};
        FLASHTS_LAUNCH(state_scan_kernel<Tin>, scan_blocks, kThreads, 0, stream, p, scan_per_row, a);
        if ((err = cudaGetLastError()) != cudaSuccess) return err;
    }
    if (rows > 0) {
        FLASHTS_LAUNCH(bwd_dq_kernel<Tin>, static_cast<unsigned>(rows), kThreads, static_cast<size_t>(bytes_dq),
                       stream, pp);
        if ((err = cudaGetLastError()) != cudaSuccess) return err;
        FLASHTS_LAUNCH(chunk_state_kernel<Tin>, static_cast<unsigned>(sum_blocks), kThreads,
                       static_cast<size_t>(bytes_sum), stream, pd);
        if ((err = cudaGetLastError()) != cudaSuccess) return err;
    }
    if (scan_blocks > 0) {
        const ScanArgs a{p.ws2, p.dST, p.dzT, p.dS0, p.dz0, 1};
        FLASHTS_LAUNCH(state_scan_kernel<Tin>, scan_blocks, kThreads, 0, stream, p, scan_per_row, a);
        if ((err = cudaGetLastError()) != cudaSuccess) return err;
    }
    if (rows > 0) {
        FLASHTS_LAUNCH(bwd_dkv_kernel<Tin>, static_cast<unsigned>(rows), kThreads, static_cast<size_t>(bytes_dkv),
                       stream, pp);
        err = cudaGetLastError();
    }
    return err;
}

template <typename Tin>
cudaError_t bwd_typed(LinInput dout, LinInput q, LinInput k, LinInput v, LinInput o, LinSizes sz, LinOptions opt,
                      const float* S0, const float* z0, const float* dS_T, const float* dz_T, float* ws_inv,
                      float* ws_dden, void* dq, float* dk_heads, float* dv_heads, float* dS0, float* dz0,
                      void* workspace, int64_t workspace_bytes, cudaStream_t stream) {
    if (opt.normalize && (ws_inv == nullptr || ws_dden == nullptr)) return cudaErrorInvalidValue;
    Params<Tin> p = make_params<Tin>(sz, opt);
    p.q = view<Tin>(q, sz.D);
    p.k = view<Tin>(k, sz.D);
    p.v = view<Tin>(v, sz.Dv);
    p.dout = view<Tin>(dout, sz.Dv);
    p.o = view<Tin>(o, sz.Dv);
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
    FwdPlan plan{};
    cudaError_t err = make_plan(sz, opt, &plan, true);
    if (err != cudaSuccess) return err;
    if (plan.mode == FwdMode::Chunked) return launch_chunked_bwd<Tin>(p, plan, workspace, workspace_bytes, stream);
    int sms = 0, max_smem = 0;
    err = device_facts(opt, &sms, &max_smem);
    if (err != cudaSuccess) return err;
    err = launch<Tin>(kBwdDq, bwd_dq_kernel<Tin>, p, max_smem, opt.chunk, pipeline_of(opt), stream);
    if (err != cudaSuccess) return err;
    return launch<Tin>(kBwdDkv, bwd_dkv_kernel<Tin>, p, max_smem, opt.chunk, pipeline_of(opt), stream);
}

}  // namespace

cudaError_t linear_attention_fwd_plan(DType, LinSizes sz, LinOptions opt, FwdPlan* plan) {
    const cudaError_t err = check_sizes(sz);
    if (err != cudaSuccess) return err;
    return make_plan(sz, opt, plan);
}

cudaError_t linear_attention_bwd_plan(DType, LinSizes sz, LinOptions opt, FwdPlan* plan) {
    const cudaError_t err = check_sizes(sz);
    if (err != cudaSuccess) return err;
    return make_plan(sz, opt, plan, true);
}

cudaError_t linear_attention_fwd(DType dtype, LinInput q, LinInput k, LinInput v, LinSizes sz, LinOptions opt,
                                 const float* S0, const float* z0, void* o, float* S_T, float* z_T,
                                 void* workspace, int64_t workspace_bytes, cudaStream_t stream) {
    const cudaError_t err = check_sizes(sz);
    if (err != cudaSuccess) return err;
    switch (dtype) {
        case DType::F32:
            return fwd_typed<float>(q, k, v, sz, opt, S0, z0, o, S_T, z_T, workspace, workspace_bytes, stream);
        case DType::F16:
            return fwd_typed<__half>(q, k, v, sz, opt, S0, z0, o, S_T, z_T, workspace, workspace_bytes, stream);
        case DType::BF16:
            return fwd_typed<__nv_bfloat16>(q, k, v, sz, opt, S0, z0, o, S_T, z_T, workspace, workspace_bytes,
                                            stream);
    }
    return cudaErrorInvalidValue;
}

cudaError_t linear_attention_bwd(DType dtype, LinInput dout, LinInput q, LinInput k, LinInput v, LinInput o,
                                 LinSizes sz, LinOptions opt, const float* S0, const float* z0, const float* dS_T,
                                 const float* dz_T, float* ws_inv, float* ws_dden, void* dq, float* dk_heads,
                                 float* dv_heads, float* dS0, float* dz0, void* workspace,
                                 int64_t workspace_bytes, cudaStream_t stream) {
    const cudaError_t err = check_sizes(sz);
    if (err != cudaSuccess) return err;
    switch (dtype) {
        case DType::F32:
            return bwd_typed<float>(dout, q, k, v, o, sz, opt, S0, z0, dS_T, dz_T, ws_inv, ws_dden, dq, dk_heads,
                                    dv_heads, dS0, dz0, workspace, workspace_bytes, stream);
        case DType::F16:
            return bwd_typed<__half>(dout, q, k, v, o, sz, opt, S0, z0, dS_T, dz_T, ws_inv, ws_dden, dq, dk_heads,
                                     dv_heads, dS0, dz0, workspace, workspace_bytes, stream);
        case DType::BF16:
            return bwd_typed<__nv_bfloat16>(dout, q, k, v, o, sz, opt, S0, z0, dS_T, dz_T, ws_inv, ws_dden, dq,
                                            dk_heads, dv_heads, dS0, dz0, workspace, workspace_bytes, stream);
    }
    return cudaErrorInvalidValue;
}

}  // namespace linear
}  // namespace flashts
