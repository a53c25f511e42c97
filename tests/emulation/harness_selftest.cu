// Self-test kernels of the CUDA emulation harness (tests/test_cuda_emulation.py). Compiled twice:
//   * as host C++ (g++ -x c++ -DFLASHTS_HOST_EMU -include cuda_host.h): the tests launch them through the
//     extern "C" functions at the bottom and compare with models written in Python;
//   * with nvcc for sm_90 (-cubin): the SASS of the mma probes must hold HMMA, the ldmatrix probe LDSM and the
//     tiled GEMM LDGSTS (cp.async), i.e. the device branches of csrc/common.cuh's wrappers are the instructions
//     they claim.
// The tiled GEMM (gemm_bf16_kernel) doubles as an example of a kernel written against the emulation contract.
#include "common.cuh"

using namespace flashts;

// ------------------------------------------------------------------------------------------ mma probes
// One warp; lane l passes the fragment registers a[l][0..3], b[l][0..1], c[l][0..3] straight to the wrapper and
// stores d[l][0..3]: the test builds the fragments from matrices with its own copy of the PTX ISA tables.
// kind: 0 = m16n8k16 bf16, 1 = m16n8k16 f16, 2 = m16n8k8 tf32 (a, b are float bit patterns).
template <int kKind>
__global__ void mma_probe_kernel(const uint32_t* __restrict__ a, const uint32_t* __restrict__ b,
                                 const float* __restrict__ c, float* __restrict__ d, int reps) {
    const int lane = threadIdx.x;
    uint32_t ra[4], rb[2];
    float acc[4];
    for (int i = 0; i < 4; ++i) ra[i] = a[lane * 4 + i];
    for (int i = 0; i < 2; ++i) rb[i] = b[lane * 2 + i];
    for (int i = 0; i < 4; ++i) acc[i] = c[lane * 4 + i];
    for (int r = 0; r < reps; ++r) {  // reps > 1: accumulate A·B again (d = C + reps·A·B)
        if constexpr (kKind == 0) {
            mma_m16n8k16_bf16(acc, ra, rb);
        } else if constexpr (kKind == 1) {
            mma_m16n8k16_f16(acc, ra, rb);
        } else {
            float fa[4], fb[2];
            for (int i = 0; i < 4; ++i) fa[i] = __uint_as_float(ra[i]);
            for (int i = 0; i < 2; ++i) fb[i] = __uint_as_float(rb[i]);
            mma_m16n8k8_tf32(acc, fa, fb);
        }
    }
    for (int i = 0; i < 4; ++i) d[lane * 4 + i] = acc[i];
}

// ------------------------------------------------------------------------------------ ldmatrix probe
// One warp. Global A [16][16], B [16][16] (k × n), Bt [8][16] (n × k), bf16 row-major, are copied to padded
// shared tiles; the lanes load with the recipes of common.cuh's ldmatrix comment:
//   ra  [32][4] = ldmatrix_x4(A)          — the m16n8k16 A fragment
//   rb  [32][4] = ldmatrix_x4_trans(B)    — the B fragments of the n-tiles 0..7 (r0, r1) and 8..15 (r2, r3)
//   rb2 [32][2] = ldmatrix_x2_trans(B)    — the B fragment of n-tile 0
//   rbt [32][2] = ldmatrix_x2(Bt)         — the same fragment from the [n][k] layout
constexpr int kLdTile = 24;  // padded row pitch (elements; 48 bytes keeps rows 16-byte aligned)

__global__ void ldmatrix_probe_kernel(const __nv_bfloat16* __restrict__ A, const __nv_bfloat16* __restrict__ B,
                                      const __nv_bfloat16* __restrict__ Bt, uint32_t* __restrict__ ra,
                                      uint32_t* __restrict__ rb, uint32_t* __restrict__ rb2,
                                      uint32_t* __restrict__ rbt) {
    __shared__ __align__(16) __nv_bfloat16 sa[16 * kLdTile], sb[16 * kLdTile], sbt[8 * kLdTile];
    const int l = threadIdx.x;
    for (int i = l; i < 16 * 16; i += 32) {
        sa[(i / 16) * kLdTile + i % 16] = A[i];
        sb[(i / 16) * kLdTile + i % 16] = B[i];
    }
    for (int i = l; i < 8 * 16; i += 32) sbt[(i / 16) * kLdTile + i % 16] = Bt[i];
    __syncwarp();
    uint32_t r4[4], r2[2];
    ldmatrix_x4(r4, sa + (l % 16) * kLdTile + (l / 16) * 8);
    for (int i = 0; i < 4; ++i) ra[l * 4 + i] = r4[i];
    ldmatrix_x4_trans(r4, sb + (l % 16) * kLdTile + (l / 16) * 8);
    for (int i = 0; i < 4; ++i) rb[l * 4 + i] = r4[i];
    ldmatrix_x2_trans(r2, sb + (l % 16) * kLdTile);
    for (int i = 0; i < 2; ++i) rb2[l * 2 + i] = r2[i];
    ldmatrix_x2(r2, sbt + (l % 8) * kLdTile + ((l / 8) % 2) * 8);
    for (int i = 0; i < 2; ++i) rbt[l * 2 + i] = r2[i];
}

// ------------------------------------------------------------------------------------ tiled GEMM example
// C[M][N] (float32) = A[M][K] · Bᵀ where A is row-major [M][K] and B is [N][K] (both bf16, K-contiguous rows,
// 16-byte aligned, K a multiple of 16, M a multiple of 16, N a multiple of 8). One block of kWarps warps computes
// the whole C; the K dimension is walked in tiles of 16 with a two-stage cp.async pipeline (tile k+1 is loading
// while tile k is multiplied). Warp w owns the 16×8 output tiles w, w + kWarps, ...
constexpr int kGemmWarps = 2;
constexpr int kKT = 16;  // k-tile
constexpr int kLdS = kKT + 8;  // smem row pitch (elements): 48 bytes, keeps 16-byte alignment

__global__ void __launch_bounds__(kGemmWarps * 32)
    gemm_bf16_kernel(const __nv_bfloat16* __restrict__ A, const __nv_bfloat16* __restrict__ B, float* __restrict__ C,
                     int M, int N, int K) {
    FLASHTS_DYNAMIC_SMEM(__nv_bfloat16, smem);  // [2 stages][(M + N) rows][kLdS]
    const int tid = threadIdx.x, nthreads = blockDim.x, warp = tid >> 5, lane = lane_id();
    const int rows = M + N, stage_elems = rows * kLdS, chunks = rows * (kKT / 8);  // 16-byte chunks per stage
    const int tiles_n = N / 8, tiles = (M / 16) * tiles_n, n_k = K / kKT;
    auto load_stage = [&](int stage, int kt) {
        for (int i = tid; i < chunks; i += nthreads) {
            const int r = i / (kKT / 8), c8 = (i % (kKT / 8)) * 8;
            const __nv_bfloat16* src = r < M ? A + static_cast<int64_t>(r) * K : B + static_cast<int64_t>(r - M) * K;
            cp_async_16(smem + stage * stage_elems + r * kLdS + c8, src + kt * kKT + c8, true);
        }
        cp_async_commit();
    };
    float acc[8][4];  // up to 8 output tiles per warp
    for (int t = 0; t < 8; ++t)
        for (int i = 0; i < 4; ++i) acc[t][i] = 0.f;
    load_stage(0, 0);
    for (int kt = 0; kt < n_k; ++kt) {
        if (kt + 1 < n_k) {
            load_stage((kt + 1) & 1, kt + 1);
            cp_async_wait<1>();  // tile kt landed (kt + 1 may still be in flight)
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const __nv_bfloat16* sa = smem + (kt & 1) * stage_elems;
        const __nv_bfloat16* sb = sa + M * kLdS;
        int slot = 0;
        for (int tile = warp; tile < tiles; tile += kGemmWarps, ++slot) {
            const int m0 = (tile / tiles_n) * 16, n0 = (tile % tiles_n) * 8;
            uint32_t ra[4], rb[2];
            for (int r = 0; r < 4; ++r)
                ra[r] = pack2(sa[(m0 + MmaM16n8k16::a_row(lane, 2 * r)) * kLdS + MmaM16n8k16::a_col(lane, 2 * r)],
                              sa[(m0 + MmaM16n8k16::a_row(lane, 2 * r + 1)) * kLdS +
                                 MmaM16n8k16::a_col(lane, 2 * r + 1)]);
            for (int r = 0; r < 2; ++r)
                rb[r] = pack2(sb[(n0 + MmaM16n8k16::b_col(lane, 2 * r)) * kLdS + MmaM16n8k16::b_row(lane, 2 * r)],
                              sb[(n0 + MmaM16n8k16::b_col(lane, 2 * r + 1)) * kLdS +
                                 MmaM16n8k16::b_row(lane, 2 * r + 1)]);
            mma_m16n8k16_bf16(acc[slot], ra, rb);
        }
        __syncthreads();  // the stage is overwritten by the load two tiles later
    }
    int slot = 0;
    for (int tile = warp; tile < tiles; tile += kGemmWarps, ++slot) {
        const int m0 = (tile / tiles_n) * 16, n0 = (tile % tiles_n) * 8;
        for (int i = 0; i < 4; ++i)
            C[(m0 + MmaM16n8k16::c_row(lane, i)) * N + n0 + MmaM16n8k16::c_col(lane, i)] = acc[slot][i];
    }
}

// ------------------------------------------------------------------------------------ warp functions
// 64 threads (two warps); out[tid][0..9] for a fixed list of operations on v = in[tid].
__global__ void warp_ops_kernel(const int* __restrict__ in, int* __restrict__ out) {
    const int tid = threadIdx.x, lane = tid & 31;
    const int v = in[tid];
    int* o = out + tid * 10;
    o[0] = __shfl_xor_sync(0xffffffffu, v, 5);
    o[1] = __shfl_up_sync(0xffffffffu, v, 3, 8);
    o[2] = __shfl_down_sync(0xffffffffu, v, 2, 16);
    o[3] = __shfl_sync(0xffffffffu, v, 7 - (lane & 7), 8);
    o[4] = static_cast<int>(__ballot_sync(0xffffffffu, v & 1));
    o[5] = __syncthreads_count(v & 1);
    o[6] = __any_sync(0xffffffffu, v == 3);
    o[7] = __all_sync(0xffffffffu, v >= 0);
    o[8] = static_cast<int>(__reduce_add_sync(0xffffffffu, static_cast<unsigned>(v)));
    float f = static_cast<float>(v);
    f = warp_sum(f);
    o[9] = static_cast<int>(f);
    if (lane < 16) o[0] += __shfl_xor_sync(0x0000ffffu, v, 1);  // a sub-warp collective
}

// ------------------------------------------------------------------------------------ faulty kernels
// Every one of these must make the launch fail (emulation) with a message naming the fault.
__global__ void divergent_barrier_kernel(float* y) {
    if (threadIdx.x < 32) {
        __syncthreads();
    } else {
        __syncthreads();  // another barrier: undefined on the GPU
    }
    y[threadIdx.x] = 1.f;
}

__global__ void exited_barrier_kernel(float* y) {
    if (threadIdx.x >= 40) return;
    __syncthreads();
    y[threadIdx.x] = 1.f;
}

__global__ void exited_lane_shuffle_kernel(float* y) {
    if (threadIdx.x == 3) return;
    y[threadIdx.x] = warp_sum(1.f);  // full mask, lane 3 is gone
}

__global__ void misaligned_cp_async_kernel(const float* x, float* y) {
    __shared__ __align__(16) float s[8];
    cp_async_16(s, x + 1, true);
    cp_async_wait_all();
    y[threadIdx.x] = s[0];
}

// Reads the cp.async destination before and after the wait: before[i] must be the poison (NaN), after[i] = x[i].
__global__ void cp_async_visibility_kernel(const float* x, float* before, float* after) {
    __shared__ __align__(16) float s[4];
    if (threadIdx.x == 0) {
        cp_async_16(s, x, true);
        cp_async_commit();
        for (int i = 0; i < 4; ++i) before[i] = s[i];
        cp_async_wait<0>();
        for (int i = 0; i < 4; ++i) after[i] = s[i];
    }
}

// A race: thread i writes s[i] and reads s[i + 1] without a barrier between. Its result depends on the order in
// which the threads run, so the emulation's schedules (forward / reverse) give different outputs (dynamic shared
// memory, 65 floats: poisoned with NaN before the block runs).
__global__ void racy_kernel(float* y) {
    FLASHTS_DYNAMIC_SMEM(float, s);
    s[threadIdx.x] = static_cast<float>(threadIdx.x);
    if (threadIdx.x == 0) s[64] = -1.f;
    y[threadIdx.x] = s[threadIdx.x + 1];
}

// ------------------------------------------------------------------------------------ launchers
#define SELFTEST_API extern "C" __attribute__((visibility("default")))

SELFTEST_API int st_mma_probe(int kind, const uint32_t* a, const uint32_t* b, const float* c, float* d, int reps) {
    if (kind == 0) FLASHTS_LAUNCH(mma_probe_kernel<0>, 1, 32, 0, nullptr, a, b, c, d, reps);
    else if (kind == 1) FLASHTS_LAUNCH(mma_probe_kernel<1>, 1, 32, 0, nullptr, a, b, c, d, reps);
    else FLASHTS_LAUNCH(mma_probe_kernel<2>, 1, 32, 0, nullptr, a, b, c, d, reps);
    return static_cast<int>(cudaGetLastError());
}

SELFTEST_API int st_ldmatrix(const __nv_bfloat16* A, const __nv_bfloat16* B, const __nv_bfloat16* Bt, uint32_t* ra,
                             uint32_t* rb, uint32_t* rb2, uint32_t* rbt) {
    FLASHTS_LAUNCH(ldmatrix_probe_kernel, 1, 32, 0, nullptr, A, B, Bt, ra, rb, rb2, rbt);
    return static_cast<int>(cudaGetLastError());
}

SELFTEST_API int st_gemm_bf16(const __nv_bfloat16* A, const __nv_bfloat16* B, float* C, int M, int N, int K) {
    if (M % 16 || N % 8 || K % kKT || (M / 16) * (N / 8) > 8 * kGemmWarps) return static_cast<int>(cudaErrorInvalidValue);
    const size_t bytes = 2 * static_cast<size_t>(M + N) * kLdS * sizeof(__nv_bfloat16);
    FLASHTS_LAUNCH(gemm_bf16_kernel, 1, kGemmWarps * 32, bytes, nullptr, A, B, C, M, N, K);
    return static_cast<int>(cudaGetLastError());
}

SELFTEST_API int st_warp_ops(const int* in, int* out) {
    FLASHTS_LAUNCH(warp_ops_kernel, 1, 64, 0, nullptr, in, out);
    return static_cast<int>(cudaGetLastError());
}

SELFTEST_API int st_faulty(int which, const float* x, float* y) {
    switch (which) {
        case 0: FLASHTS_LAUNCH(divergent_barrier_kernel, 2, 64, 0, nullptr, y); break;
        case 1: FLASHTS_LAUNCH(exited_barrier_kernel, 1, 64, 0, nullptr, y); break;
        case 2: FLASHTS_LAUNCH(exited_lane_shuffle_kernel, 1, 32, 0, nullptr, y); break;
        case 3: FLASHTS_LAUNCH(misaligned_cp_async_kernel, 1, 32, 0, nullptr, x, y); break;
        case 4: FLASHTS_LAUNCH(racy_kernel, 1, 64, 65 * sizeof(float), nullptr, y); break;
        case 5: FLASHTS_LAUNCH(racy_kernel, 1, 2048, 65 * sizeof(float), nullptr, y); break;  // too many threads
        case 6: FLASHTS_LAUNCH(gemm_bf16_kernel, 1, 64, 64 * 1024, nullptr, nullptr, nullptr, nullptr, 0, 0, 0);
            break;  // 64 KB of dynamic smem without cudaFuncSetAttribute
        default: return -1;
    }
    return static_cast<int>(cudaGetLastError());
}

SELFTEST_API int st_cp_async_visibility(const float* x, float* before, float* after) {
    FLASHTS_LAUNCH(cp_async_visibility_kernel, 1, 32, 0, nullptr, x, before, after);
    return static_cast<int>(cudaGetLastError());
}
