// flashts — the one shared CUDA helper header (no torch headers: every .cu compiles with nvcc alone).
//
// Contents (namespace flashts unless noted):
//   * element conversions to_float / from_float for float, __half, __nv_bfloat16 (all arithmetic is float32);
//   * warp_sum / warp_max / block_sum (deterministic butterfly reductions), cdiv / cdiv64 / round_up;
//   * the online-softmax combine (exp_shift, softmax_merge);
//   * SmemCarver (128-byte aligned pieces of dynamic shared memory, same code on host and device) and ld_pad;
//   * flashts::mmau::block_gemm — block-level matrix products on shared-memory tiles (wmma tensor cores or FMA);
//   * launch / dynamic shared memory macros and the ONLY wrappers of inline PTX (mma.sync, cp.async), each with a
//     device branch and a host branch for the CPU emulation harness (tests/emulation/cuda_host.h).
//
// Writing a kernel that also runs in the CPU emulation (tests/test_cuda_emulation.py compiles the .cu with g++
// -DFLASHTS_HOST_EMU and tests/emulation/cuda_host.h first; every CUDA thread is a fiber):
//   * launch with FLASHTS_LAUNCH(kernel, grid, block, smem_bytes, stream, args...) instead of <<<...>>> (a template
//     kernel: take its address into a variable first, `auto kernel = my_kernel<T, 4>;`, the macro splits at commas);
//   * declare dynamic shared memory with FLASHTS_DYNAMIC_SMEM(type, name); (128-byte aligned); static __shared__
//     arrays work as they are;
//   * tensor cores and async copies only through mma_m16n8k8_tf32 / mma_m16n8k16_bf16 / mma_m16n8k16_f16,
//     ldmatrix_x4 / _x4_trans / _x2 / _x2_trans and cp_async_16 / cp_async_commit / cp_async_wait<N> below (no
//     other inline asm); warp shuffles, ballots,
//     __syncwarp, __syncthreads and atomics are emulated as they are.
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
#ifdef FLASHTS_HOST_EMU
#ifndef FLASHTS_CUDA_HOST_H
#error "FLASHTS_HOST_EMU: include tests/emulation/cuda_host.h before csrc/common.cuh"
#endif
#else
#include <cuda_runtime.h>
#include <mma.h>
#endif
#include <math_constants.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 800)
#define FLASHTS_MMAU_TENSOR_CORES 0
#else
#define FLASHTS_MMAU_TENSOR_CORES 1
#endif

// Launch-error check for the plain C++ launchers: returns the CUDA error code to the binding layer.
#define FLASHTS_LAUNCH_CHECK() cudaGetLastError()

// kernel<<<grid, block, smem_bytes, stream>>>(args...) — or, in the CPU emulation, the whole grid run now on
// fibers (errors through cudaGetLastError() as on the GPU).
#ifdef FLASHTS_HOST_EMU
#define FLASHTS_LAUNCH(kernel, grid, block, smem_bytes, stream, ...)                                        \
    ::flashts_emu::launch(#kernel, __FILE__, __LINE__, kernel, dim3(grid), dim3(block),                   \
                          static_cast<size_t>(smem_bytes), stream, ##__VA_ARGS__)
#define FLASHTS_DYNAMIC_SMEM(type, name) type* const name = reinterpret_cast<type*>(::flashts_emu::dynamic_smem())
#else
#define FLASHTS_LAUNCH(kernel, grid, block, smem_bytes, stream, ...) \
    kernel<<<grid, block, smem_bytes, stream>>>(__VA_ARGS__)
#define FLASHTS_DYNAMIC_SMEM(type, name) extern __shared__ __align__(128) type name[]
#endif

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

// ============================================================ PTX wrappers (device: inline PTX; host: emulation)
//
// Lane of the calling thread in its warp (linear thread index mod 32).
__device__ __forceinline__ int lane_id() {
#if defined(__CUDA_ARCH__)
    int lane;
    asm("mov.u32 %0, %%laneid;" : "=r"(lane));
    return lane;
#elif defined(FLASHTS_HOST_EMU)
    return ::flashts_emu::self().lane;
#else
    return 0;
#endif
}

// Two 16-bit values in one 32-bit register, `lo` (the lower k or n index of a fragment pair) in bits 0..15 —
// the packing of the A/B operands of mma_m16n8k16_{bf16,f16}.
__host__ __device__ __forceinline__ uint32_t pack2_bits(unsigned short lo, unsigned short hi) {
    return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}
__host__ __device__ __forceinline__ uint32_t pack2(__nv_bfloat16 lo, __nv_bfloat16 hi) {
    return pack2_bits(static_cast<__nv_bfloat16_raw>(lo).x, static_cast<__nv_bfloat16_raw>(hi).x);
}
__host__ __device__ __forceinline__ uint32_t pack2(__half lo, __half hi) {
    return pack2_bits(static_cast<__half_raw>(lo).x, static_cast<__half_raw>(hi).x);
}

// Fragment layouts of mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 (PTX ISA, "Matrix
// Fragments for mma.m16n8k16 with floating point type"), lane = 4·g + t (g = lane / 4, t = lane % 4). Element e of
// a lane's fragment lives in register e / 2, half e % 2 (half 0 = bits 0..15):
//   A 16×16 (row-major, 4 registers, e = 0..7): row g + 8·((e >> 1) & 1), col 2t + (e & 1) + 8·(e >> 2)
//   B 16×8  (k × n, 2 registers, e = 0..3):     row 2t + (e & 1) + 8·(e >> 1), col g
//   C/D 16×8 float (4 registers, i = 0..3):     row g + 8·(i >> 1),            col 2t + (i & 1)
// These functions are the only place the layouts are written (kernels and the host branch use them;
// tests/test_cuda_emulation.py checks them against its own copy of the ISA table).
struct MmaM16n8k16 {
    static constexpr int kM = 16, kN = 8, kK = 16;
    __host__ __device__ static int a_row(int lane, int e) { return (lane >> 2) + 8 * ((e >> 1) & 1); }
    __host__ __device__ static int a_col(int lane, int e) { return 2 * (lane & 3) + (e & 1) + 8 * (e >> 2); }
    __host__ __device__ static int b_row(int lane, int e) { return 2 * (lane & 3) + (e & 1) + 8 * (e >> 1); }
    __host__ __device__ static int b_col(int lane, int) { return lane >> 2; }
    __host__ __device__ static int c_row(int lane, int i) { return (lane >> 2) + 8 * (i >> 1); }
    __host__ __device__ static int c_col(int lane, int i) { return 2 * (lane & 3) + (i & 1); }
};

// m16n8k8 with .tf32 (same C/D layout; A 16×8: row g + 8·(i & 1), col t + 4·(i >> 1); B 8×8: row t + 4·i, col g).
struct MmaM16n8k8 {
    static constexpr int kM = 16, kN = 8, kK = 8;
    __host__ __device__ static int a_row(int lane, int i) { return (lane >> 2) + 8 * (i & 1); }
    __host__ __device__ static int a_col(int lane, int i) { return (lane & 3) + 4 * (i >> 1); }
    __host__ __device__ static int b_row(int lane, int i) { return (lane & 3) + 4 * i; }
    __host__ __device__ static int b_col(int lane, int) { return lane >> 2; }
    __host__ __device__ static int c_row(int lane, int i) { return (lane >> 2) + 8 * (i >> 1); }
    __host__ __device__ static int c_col(int lane, int i) { return 2 * (lane & 3) + (i & 1); }
};

// float → TF32 as cvt.rna.tf32.f32 (round to nearest, ties away from zero, 10 mantissa bits): the bits of the
// operand register of mma_m16n8k8_tf32 (the low 13 bits are ignored by the instruction).
__device__ __forceinline__ uint32_t tf32_bits(float x) {
#if defined(__CUDA_ARCH__)
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
#else
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;  // finite: round the magnitude
    return u;
#endif
}

#if defined(FLASHTS_HOST_EMU)
namespace emu_detail {
// One warp-wide m16n8kK product on the host: every lane scatters its A/B fragment elements into the warp's
// scratch (A [16][K], B [K][8] as float), __syncwarp, every lane computes its 4 accumulators (k in increasing
// order, float32 fma), __syncwarp (the scratch is free again). All 32 lanes must call it, as mma.sync.aligned.
template <typename Layout, typename GetA, typename GetB>
__device__ __forceinline__ void mma_host(float c[4], int n_a, int n_b, GetA get_a, GetB get_b) {
    constexpr int K = Layout::kK;
    float* A = static_cast<float*>(::flashts_emu::warp_scratch());
    float* B = A + 16 * K;
    const int lane = lane_id();
    for (int e = 0; e < n_a; ++e) A[Layout::a_row(lane, e) * K + Layout::a_col(lane, e)] = get_a(e);
    for (int e = 0; e < n_b; ++e) B[Layout::b_row(lane, e) * 8 + Layout::b_col(lane, e)] = get_b(e);
    __syncwarp();
    float d[4];
    for (int i = 0; i < 4; ++i) {
        const int r = Layout::c_row(lane, i), n = Layout::c_col(lane, i);
        float acc = c[i];
        for (int k = 0; k < K; ++k) acc = fmaf(A[r * K + k], B[k * 8 + n], acc);
        d[i] = acc;
    }
    __syncwarp();
    for (int i = 0; i < 4; ++i) c[i] = d[i];
}
template <typename T>
__device__ __forceinline__ float half_of(uint32_t reg, int h) {
    const unsigned short bits = static_cast<unsigned short>(h ? reg >> 16 : reg & 0xffffu);
    if constexpr (std::is_same<T, __half>::value) {
        __half_raw r;
        r.x = bits;
        return __half2float(__half(r));
    } else {
        __nv_bfloat16_raw r;
        r.x = bits;
        return __bfloat162float(__nv_bfloat16(r));
    }
}
}  // namespace emu_detail
#endif

// c[4] += A·B for one warp, m16n8k8, TF32 inputs (a, b are float; rounded to TF32 here), float32 accumulators.
// Fragments as MmaM16n8k8. Every lane of the warp calls it. SASS: HMMA.1684.F32.TF32.
__device__ __forceinline__ void mma_m16n8k8_tf32(float c[4], const float a[4], const float b[2]) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(tf32_bits(a[0])), "r"(tf32_bits(a[1])), "r"(tf32_bits(a[2])), "r"(tf32_bits(a[3])),
          "r"(tf32_bits(b[0])), "r"(tf32_bits(b[1])));
#elif defined(FLASHTS_HOST_EMU)
    emu_detail::mma_host<MmaM16n8k8>(
        c, 4, 2, [&](int e) { return __uint_as_float(tf32_bits(a[e]) & 0xffffe000u); },
        [&](int e) { return __uint_as_float(tf32_bits(b[e]) & 0xffffe000u); });
#else
    (void)c, (void)a, (void)b;
#endif
}

// c[4] += A·B for one warp, m16n8k16, bf16 inputs packed two per register (pack2), float32 accumulators.
// Fragments as MmaM16n8k16. Every lane of the warp calls it. SASS: HMMA.16816.F32.BF16.
__device__ __forceinline__ void mma_m16n8k16_bf16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif defined(FLASHTS_HOST_EMU)
    emu_detail::mma_host<MmaM16n8k16>(
        c, 8, 4, [&](int e) { return emu_detail::half_of<__nv_bfloat16>(a[e >> 1], e & 1); },
        [&](int e) { return emu_detail::half_of<__nv_bfloat16>(b[e >> 1], e & 1); });
#else
    (void)c, (void)a, (void)b;
#endif
}

// c[4] += A·B for one warp, m16n8k16, f16 inputs packed two per register (pack2), float32 accumulators.
// Fragments as MmaM16n8k16. Every lane of the warp calls it. SASS: HMMA.16816.F32.
__device__ __forceinline__ void mma_m16n8k16_f16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif defined(FLASHTS_HOST_EMU)
    emu_detail::mma_host<MmaM16n8k16>(
        c, 8, 4, [&](int e) { return emu_detail::half_of<__half>(a[e >> 1], e & 1); },
        [&](int e) { return emu_detail::half_of<__half>(b[e >> 1], e & 1); });
#else
    (void)c, (void)a, (void)b;
#endif
}

// ldmatrix (sm_75+): 8×8 matrices of 16-bit elements from shared memory, one row of 16 bytes per address. Lane l
// passes `row` = the address of row l % 8 of matrix l / 8 (.x4: lanes 0..31, four matrices; .x2: lanes 0..15 are
// used, two matrices; every address 16-byte aligned). Register i of lane l receives matrix i's elements
// (row l / 4, cols 2·(l % 4), 2·(l % 4) + 1), the lower column in bits 0..15 — with .trans, (rows 2·(l % 4),
// 2·(l % 4) + 1, col l / 4), i.e. the transposed matrix. For m16n8k16: A (row-major [16][ld] tile at `a`) is
// ldmatrix_x4(r, a + (l % 16)·ld + (l / 16)·8); B stored [k][n] row-major is ldmatrix_x2_trans(r, b + (l % 16)·ld);
// B stored [n][k] is ldmatrix_x2(r, b + (l % 8)·ld + ((l / 8) % 2)·8). Every lane of the warp calls it.
#if defined(FLASHTS_HOST_EMU)
namespace emu_detail {
template <int kMatrices, bool kTrans>
__device__ __forceinline__ void ldmatrix_host(uint32_t* r, const void* row) {
    const void** rows = static_cast<const void**>(::flashts_emu::warp_scratch());
    const int lane = lane_id();
    if (reinterpret_cast<uintptr_t>(row) % 16 != 0 && lane < 8 * kMatrices)
        ::flashts_emu::fail_in_fiber("ldmatrix: a row address is not 16-byte aligned");
    rows[lane] = row;
    __syncwarp();
    for (int i = 0; i < kMatrices; ++i) {
        unsigned short h[2];
        for (int j = 0; j < 2; ++j) {
            const int rr = kTrans ? 2 * (lane & 3) + j : lane >> 2, cc = kTrans ? lane >> 2 : 2 * (lane & 3) + j;
            h[j] = static_cast<const unsigned short*>(rows[8 * i + rr])[cc];
        }
        r[i] = pack2_bits(h[0], h[1]);
    }
    __syncwarp();
}
}  // namespace emu_detail
#endif

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 750)
    const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
#elif defined(FLASHTS_HOST_EMU)
    emu_detail::ldmatrix_host<4, false>(r, row);
#else
    (void)r, (void)row;
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* row) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 750)
    const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
#elif defined(FLASHTS_HOST_EMU)
    emu_detail::ldmatrix_host<4, true>(r, row);
#else
    (void)r, (void)row;
#endif
}

__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void* row) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 750)
    const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(s));
#elif defined(FLASHTS_HOST_EMU)
    emu_detail::ldmatrix_host<2, false>(r, row);
#else
    (void)r, (void)row;
#endif
}

__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void* row) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 750)
    const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(s));
#elif defined(FLASHTS_HOST_EMU)
    emu_detail::ldmatrix_host<2, true>(r, row);
#else
    (void)r, (void)row;
#endif
}

// cp.async.cg of 16 bytes global → shared (both 16-byte aligned); pred == false writes 16 zero bytes and reads
// nothing (gmem may then be any pointer). Completion: cp_async_commit() closes a group, cp_async_wait<N>() waits
// until at most the N most recent groups are in flight (then __syncthreads() before other threads read).
// sm_80+ (older archs: a plain synchronous copy). The emulation completes a copy only at the wait (its
// destination holds 0xFF bytes until then) and checks the alignment.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool pred) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
    const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(pred ? 16 : 0)
                 : "memory");
#elif defined(__CUDA_ARCH__)
    *static_cast<uint4*>(smem) = pred ? *static_cast<const uint4*>(gmem) : make_uint4(0u, 0u, 0u, 0u);
#elif defined(FLASHTS_HOST_EMU)
    flashts_emu_cp_async_16(smem, gmem, pred);
#else
    (void)smem, (void)gmem, (void)pred;
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif defined(FLASHTS_HOST_EMU)
    ::flashts_emu::cp_async_commit();
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
    static_assert(N >= 0 && N <= 7, "cp_async_wait<N>: N in [0, 7]");
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#elif defined(FLASHTS_HOST_EMU)
    ::flashts_emu::cp_async_wait(N);
#endif
}

// Every copy issued by this thread so far (committed or not).
__device__ __forceinline__ void cp_async_wait_all() {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#elif defined(FLASHTS_HOST_EMU)
    ::flashts_emu::cp_async_wait(-1);
#endif
}

// ================================================================== launcher helpers (host)

// The device facts a launch plan needs: the options' SM count and per-block shared-memory limit
// (cudaDevAttrMaxSharedMemoryPerBlockOptin), or the current device's where the options have 0.
// Options: any struct with int sm_count, max_smem (LinOptions, ScanOptions).
template <typename Options>
cudaError_t device_facts(const Options& opt, int* sms, int* max_smem) {
    *sms = opt.sm_count;
    *max_smem = opt.max_smem;
    if (*sms > 0 && *max_smem > 0) return cudaSuccess;
    int dev = 0;
    cudaError_t err = cudaGetDevice(&dev);
    if (err != cudaSuccess) return err;
    if (*max_smem <= 0) err = cudaDeviceGetAttribute(max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (err == cudaSuccess && *sms <= 0) err = cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev);
    return err;
}

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
#if defined(FLASHTS_HOST_EMU)
    using type = float;  // (no wmma in the emulation: block_gemm uses its FMA path)
#else
    using type = nvcuda::wmma::precision::tf32;
#endif
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

// c += a·b for one warp (every lane calls it with its fragments): flashts::mma_m16n8k8_tf32.
__device__ __forceinline__ void mma_tf32_m16n8k8(float c[4], const float a[4], const float b[2]) {
    mma_m16n8k8_tf32(c, a, b);
}

// Which implementation block_gemm uses: plain FMA, wmma (m16n16k16 / TF32 m16n16k8), or mma.sync m16n8k8 TF32
// (float tiles only; M a multiple of 16, N and K multiples of 8; each warp owns whole 16×8 tiles of C).
// kGemmMma3xTf32: the same mma.sync product on float tiles with every operand split as x = hi + lo (hi = TF32(x),
// lo = TF32(x − hi)) and c += lo_a·hi_b + hi_a·lo_b + hi_a·hi_b (three HMMA per k-step, the lo·lo term dropped):
// ~2⁻²¹ relative error per product, near float32 — what Triton calls input_precision="tf32x3".
enum GemmImpl : int { kGemmFma = 0, kGemmWmma = 1, kGemmMma = 2, kGemmMma3xTf32 = 3 };

// x = hi + lo with hi, lo exactly representable in TF32 (hi has the low 13 mantissa bits cleared).
__device__ __forceinline__ void split_tf32(float x, float& hi, float& lo) {
    hi = __uint_as_float(tf32_bits(x) & 0xffffe000u);
    lo = x - hi;
}

// kImpl: a GemmImpl (callers may pass a bool: true = wmma, false = FMA); see the file comment for the rules.
template <int kImpl, int LA, int LB, typename T>
__device__ __forceinline__ void block_gemm(float* C, int ldc, const T* A, int lda, const T* B, int ldb, int M, int N,
                                           int K, bool accumulate) {
#if FLASHTS_MMAU_TENSOR_CORES
    if constexpr ((kImpl == kGemmMma || kImpl == kGemmMma3xTf32) && std::is_same<T, float>::value) {
#if defined(__CUDA_ARCH__) || defined(FLASHTS_HOST_EMU)
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
                if constexpr (kImpl == kGemmMma3xTf32) {
                    float a_lo[4], b_lo[2];
#pragma unroll
                    for (int i = 0; i < 4; ++i) split_tf32(a[i], a[i], a_lo[i]);
#pragma unroll
                    for (int i = 0; i < 2; ++i) split_tf32(b[i], b[i], b_lo[i]);
                    mma_tf32_m16n8k8(c, a_lo, b);  // small terms first
                    mma_tf32_m16n8k8(c, a, b_lo);
                }
                mma_tf32_m16n8k8(c, a, b);
            }
            mma_scatter_c(c, C, ldc, m0, n0, lane);
        }
#endif
        return;
    } else if constexpr (kImpl != kGemmFma) {
#if defined(FLASHTS_HOST_EMU)
        // no wmma on the host: the FMA product below (float32; the GPU rounds the operands to TF32 / 16 bits)
        gemm_fma<LA, LB>(C, ldc, A, lda, B, ldb, M, N, K, accumulate);
        return;
#else
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
#endif
    }
#endif
    gemm_fma<LA, LB>(C, ldc, A, lda, B, ldb, M, N, K, accumulate);
}

}  // namespace mmau

}  // namespace flashts
