// flashts — the one shared CUDA helper header (no torch headers: every .cu compiles with nvcc alone).
//
// Contents (namespace flashts unless noted):
//   * element conversions to_float / from_float for float, __half, __nv_bfloat16 (all arithmetic is float32);
//   * warp_sum / warp_max / block_sum (deterministic butterfly reductions), cdiv / cdiv64 / round_up;
//   * the online-softmax combine (exp_shift, softmax_merge);
//   * SmemCarver (128-byte aligned pieces of dynamic shared memory, same code on host and device) and ld_pad;
//   * flashts::mmau::block_gemm — block-level matrix products on shared-memory tiles (wmma tensor cores or FMA).
//
// Online-softmax state (SPEC §4/§5 and the row softmax of sliding-window attention):
//   (m, u, w) = (max s, Σ e^{s-m}, Σ e^{s-m}·v), identity (-inf, 0, 0).
// Combine (A earlier than B): m = max(mA, mB), u = uA e^{mA-m} + uB e^{mB-m}, w likewise.
// The combine never forms e^{(-inf) - (-inf)}: an empty side contributes exactly 0.
//
// block_gemm computes C (+)= op(A)·op(B) for tiles that live in shared memory:
//   C  float, row-major [M][ldc];
//   A  element (m, k) at A[m·lda + k] (kRow) or A[k·lda + m] (kCol, i.e. A is stored transposed);
//   B  element (k, n) at B[k·ldb + n] (kRow) or B[n·ldb + k] (kCol).
// Three implementations, picked at compile time (template argument kImpl, a GemmImpl):
//   * tensor cores (wmma, float accumulation; SASS HMMA) — operands __half / __nv_bfloat16 (m16n16k16) or float
//     rounded to TF32 (m16n16k8). Needs M, N multiples of 16 and K a multiple of 16, every ld a multiple of 8
//     (16-bit types) or 4 (float), and 32-byte aligned tile bases: callers pad dims to multiples of 16 and
//     carve shared memory at 128-byte offsets. Each warp owns whole 16×16 tiles of C (no two warps write
//     one element). Compiled only for sm_80+; older archs fall back to FMA.
//   * mma.sync m16n8k8 TF32 (hand-written PTX, fragment layouts documented at MmaTf32; SASS HMMA.1684.F32.TF32)
//     on float tiles: M a multiple of 16, N and K multiples of 8; each warp owns whole 16×8 tiles of C.
//   * plain FMA in float (any M, N, K), one output element per thread at a time, k in increasing order.
// Every thread of the block must call block_gemm (it has no barrier inside; callers put __syncthreads()
// between the phase that writes A/B and the product, and between the product and any reader of C).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 800)
#define FLASHTS_MMAU_TENSOR_CORES 0
#else
#define FLASHTS_MMAU_TENSOR_CORES 1
#endif

// Launch-error check for the plain C++ launchers: returns the CUDA error code to the binding layer.
#define FLASHTS_LAUNCH_CHECK() cudaGetLastError()

namespace flashts {

// e^{a - m}, 0 when a == -inf (also when m == -inf, i.e. both sides empty).
__device__ __forceinline__ float exp_shift(float a, float m) {
    return a == -CUDART_INF_F ? 0.f : __expf(a - m);
}

// Scalar part of the online-softmax combine: returns the new max and the factors by which the
// accumulators of A and B are scaled (A' = fa·A + fb·B).
struct SoftmaxMerge {
    float m, fa, fb;
};

__device__ __forceinline__ SoftmaxMerge softmax_merge(float ma, float mb) {
    SoftmaxMerge r;
    r.m = fmaxf(ma, mb);
    r.fa = exp_shift(ma, r.m);
    r.fb = exp_shift(mb, r.m);
    return r;
}

__host__ __device__ __forceinline__ int cdiv(int a, int b) { return (a + b - 1) / b; }


// Element types the kernels are templated on: float, __half, __nv_bfloat16. All arithmetic is in float.
template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Butterfly reductions over the 32 lanes of a warp. Every lane must call them (full mask) and every lane
// gets the result; the order of the additions is fixed, so the result is deterministic.
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
    return x;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
    return x;
}

// Deterministic sum over all threads of a 1-D block (blockDim.x a multiple of 32, at most 1024).
// `scratch` holds at least 32 floats of shared memory. Every thread returns the total. Contains
// __syncthreads(): call it from every thread of the block.
__device__ __forceinline__ float block_sum(float x, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    x = warp_sum(x);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    float total = 0.f;
    if (warp == 0) {
        total = lane < n_warps ? scratch[lane] : 0.f;
        total = warp_sum(total);
        if (lane == 0) scratch[0] = total;
    }
    __syncthreads();
    total = scratch[0];
    return total;
}

__host__ __device__ __forceinline__ int64_t cdiv64(int64_t a, int64_t b) { return (a + b - 1) / b; }

__host__ __device__ __forceinline__ int round_up(int x, int m) { return (x + m - 1) / m * m; }

// Leading-dimension padding (elements) of a shared tile of element type T: keeps the wmma rules
// (multiple of 8 for 16-bit types, of 4 for float) and shifts consecutive rows across banks.
template <typename T>
__host__ __device__ constexpr int ld_pad() {
    return sizeof(T) == 2 ? 8 : 4;
}

// Carves a dynamic shared-memory block into 128-byte aligned pieces; the same code runs on the host (to
// size the launch) and on the device (to get the pointers), so the two always agree.
struct SmemCarver {
    unsigned char* base;  // nullptr on the host
    int64_t offset;
    __host__ __device__ explicit SmemCarver(unsigned char* b) : base(b), offset(0) {}
    template <typename T>
    __host__ __device__ T* take(int64_t count) {
        T* p = base ? reinterpret_cast<T*>(base + offset) : nullptr;
        offset += (count * static_cast<int64_t>(sizeof(T)) + 127) / 128 * 128;
        return p;
    }
};

// ================================================================== block-level products on shared memory

namespace mmau {

enum Major : int { kRow = 0, kCol = 1 };

// ------------------------------------------------------------------------------------------ the product

template <typename T>
struct WmmaOperand;  // wmma operand type and k-step for a shared-memory element type
template <>
struct WmmaOperand<__half> {
    using type = __half;
    static constexpr int kK = 16;
};
template <>
struct WmmaOperand<__nv_bfloat16> {
    using type = __nv_bfloat16;
    static constexpr int kK = 16;
};
template <>
struct WmmaOperand<float> {
    using type = nvcuda::wmma::precision::tf32;
    static constexpr int kK = 8;
};

template <int LA, int LB, typename T>
__device__ __forceinline__ void gemm_fma(float* C, int ldc, const T* A, int lda, const T* B, int ldb, int M, int N,
                                         int K, bool accumulate) {
    for (int idx = threadIdx.x; idx < M * N; idx += blockDim.x) {
        const int m = idx / N, n = idx - (idx / N) * N;
        float acc = accumulate ? C[m * ldc + n] : 0.f;
        for (int k = 0; k < K; ++k) {
            const float a = to_float(LA == kRow ? A[m * lda + k] : A[k * lda + m]);
            const float b = to_float(LB == kRow ? B[k * ldb + n] : B[n * ldb + k]);
            acc = fmaf(a, b, acc);
        }
        C[m * ldc + n] = acc;
    }
}

// ------------------------------------------------------------------- mma.sync m16n8k8 TF32 (hand-written PTX)
//
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32: D[16×8] = A[16×8]·B[8×8] + C, one warp. Fragment layouts
// (PTX ISA, "Matrix Fragments for mma.m16n8k8" with .tf32), for lane = 4·g + t (g = lane / 4, t = lane % 4):
//   A (row-major 16×8, 4 registers): a_i = A[g + 8·(i & 1)][t + 4·(i >> 1)]      i = 0..3
//   B (column-major 8×8, 2 registers): b_i = B[t + 4·i][g]                        i = 0..1
//   C/D (16×8 float, 4 registers):   c_i = C[g + 8·(i >> 1)][2t + (i & 1)]         i = 0..3
// The index functions below are the ONLY place these layouts are written; the device product and the host
// emulation test (tests/test_mma_layout_emulation.py, which models the instruction from the ISA table
// independently) both use them.
struct MmaTf32 {
    static constexpr int kM = 16, kN = 8, kK = 8;
    __host__ __device__ static int a_row(int lane, int i) { return (lane >> 2) + 8 * (i & 1); }
    __host__ __device__ static int a_col(int lane, int i) { return (lane & 3) + 4 * (i >> 1); }
    __host__ __device__ static int b_row(int lane, int i) { return (lane & 3) + 4 * i; }
    __host__ __device__ static int b_col(int lane, int) { return lane >> 2; }
    __host__ __device__ static int c_row(int lane, int i) { return (lane >> 2) + 8 * (i >> 1); }
    __host__ __device__ static int c_col(int lane, int i) { return 2 * (lane & 3) + (i & 1); }
};

// The per-lane gathers / scatters of one 16×8 output tile at (m0, n0) and k-step k0, from float tiles laid out
// as block_gemm's operands (LA / LB). Host and device (the emulation test runs them for all 32 lanes).
template <int LA>
__host__ __device__ __forceinline__ void mma_gather_a(float a[4], const float* A, int lda, int m0, int k0, int lane) {
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + MmaTf32::a_row(lane, i), k = k0 + MmaTf32::a_col(lane, i);
        a[i] = LA == kRow ? A[m * lda + k] : A[k * lda + m];
    }
}
template <int LB>
__host__ __device__ __forceinline__ void mma_gather_b(float b[2], const float* B, int ldb, int k0, int n0, int lane) {
    for (int i = 0; i < 2; ++i) {
        const int k = k0 + MmaTf32::b_row(lane, i), n = n0 + MmaTf32::b_col(lane, i);
        b[i] = LB == kRow ? B[k * ldb + n] : B[n * ldb + k];
    }
}
__host__ __device__ __forceinline__ void mma_gather_c(float c[4], const float* C, int ldc, int m0, int n0, int lane) {
    for (int i = 0; i < 4; ++i) c[i] = C[(m0 + MmaTf32::c_row(lane, i)) * ldc + n0 + MmaTf32::c_col(lane, i)];
}
__host__ __device__ __forceinline__ void mma_scatter_c(const float c[4], float* C, int ldc, int m0, int n0, int lane) {
    for (int i = 0; i < 4; ++i) C[(m0 + MmaTf32::c_row(lane, i)) * ldc + n0 + MmaTf32::c_col(lane, i)] = c[i];
}

#if defined(__CUDA_ARCH__) && FLASHTS_MMAU_TENSOR_CORES
__device__ __forceinline__ uint32_t to_tf32(float x) {
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

// c += a·b for one warp (every lane calls it with its fragments).
__device__ __forceinline__ void mma_tf32_m16n8k8(float c[4], const float a[4], const float b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(to_tf32(a[0])), "r"(to_tf32(a[1])), "r"(to_tf32(a[2])), "r"(to_tf32(a[3])), "r"(to_tf32(b[0])),
          "r"(to_tf32(b[1])));
}
#endif

// Which implementation block_gemm uses: plain FMA, wmma (m16n16k16 / TF32 m16n16k8), or mma.sync m16n8k8 TF32
// (float tiles only; M a multiple of 16, N and K multiples of 8; each warp owns whole 16×8 tiles of C).
enum GemmImpl : int { kGemmFma = 0, kGemmWmma = 1, kGemmMma = 2 };

// kImpl: a GemmImpl (callers may pass a bool: true = wmma, false = FMA); see the file comment for the rules.
template <int kImpl, int LA, int LB, typename T>
__device__ __forceinline__ void block_gemm(float* C, int ldc, const T* A, int lda, const T* B, int ldb, int M, int N,
                                           int K, bool accumulate) {
#if FLASHTS_MMAU_TENSOR_CORES
    if constexpr (kImpl == kGemmMma && std::is_same<T, float>::value) {
#if defined(__CUDA_ARCH__)
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, n_warps = blockDim.x >> 5;
        const int tiles_n = N / 8, tiles = (M / 16) * tiles_n;
        for (int tile = warp; tile < tiles; tile += n_warps) {
            const int m0 = (tile / tiles_n) * 16, n0 = (tile % tiles_n) * 8;
            float c[4] = {0.f, 0.f, 0.f, 0.f};
            if (accumulate) mma_gather_c(c, C, ldc, m0, n0, lane);
            for (int k0 = 0; k0 < K; k0 += 8) {
                float a[4], b[2];
                mma_gather_a<LA>(a, A, lda, m0, k0, lane);
                mma_gather_b<LB>(b, B, ldb, k0, n0, lane);
                mma_tf32_m16n8k8(c, a, b);
            }
            mma_scatter_c(c, C, ldc, m0, n0, lane);
        }
#endif
        return;
    } else if constexpr (kImpl != kGemmFma) {
        namespace wmma = nvcuda::wmma;
        using Op = typename WmmaOperand<T>::type;
        constexpr int KS = WmmaOperand<T>::kK;
        using LayA = typename std::conditional<LA == kRow, wmma::row_major, wmma::col_major>::type;
        using LayB = typename std::conditional<LB == kRow, wmma::row_major, wmma::col_major>::type;
        const int warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
        const int tiles_n = N / 16, tiles = (M / 16) * tiles_n;
        for (int tile = warp; tile < tiles; tile += n_warps) {
            const int m0 = (tile / tiles_n) * 16, n0 = (tile % tiles_n) * 16;
            float* c = C + m0 * ldc + n0;
            wmma::fragment<wmma::accumulator, 16, 16, KS, float> acc;
            if (accumulate) {
                wmma::load_matrix_sync(acc, c, ldc, wmma::mem_row_major);
            } else {
                wmma::fill_fragment(acc, 0.f);
            }
            for (int k0 = 0; k0 < K; k0 += KS) {
                wmma::fragment<wmma::matrix_a, 16, 16, KS, Op, LayA> fa;
                wmma::fragment<wmma::matrix_b, 16, 16, KS, Op, LayB> fb;
                const T* a = LA == kRow ? A + m0 * lda + k0 : A + k0 * lda + m0;
                const T* b = LB == kRow ? B + k0 * ldb + n0 : B + n0 * ldb + k0;
                wmma::load_matrix_sync(fa, a, lda);
                wmma::load_matrix_sync(fb, b, ldb);
                if constexpr (std::is_same<T, float>::value) {
#pragma unroll
                    for (int i = 0; i < fa.num_elements; ++i) fa.x[i] = wmma::__float_to_tf32(fa.x[i]);
#pragma unroll
                    for (int i = 0; i < fb.num_elements; ++i) fb.x[i] = wmma::__float_to_tf32(fb.x[i]);
                }
                wmma::mma_sync(acc, fa, fb, acc);
            }
            wmma::store_matrix_sync(c, acc, ldc, wmma::mem_row_major);
        }
        return;
    }
#endif
    gemm_fma<LA, LB>(C, ldc, A, lda, B, ldb, M, N, K, accumulate);
}

}  // namespace mmau

}  // namespace flashts
