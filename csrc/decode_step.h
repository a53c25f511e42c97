// flashts — decode steps (T = 1 with a state) of the causal ops: plain C++ launchers of the kernels in
// csrc/decode_step.cu (math and phases: csrc/decode_math.h). No torch headers; the binding
// (csrc/decode_step_bind.cpp) checks tensors and passes pointers, sizes, element strides and the stream.
//
// CUDA-graph safety: a launcher allocates nothing and never synchronises; it launches exactly one kernel
// (grid B·H, 128 threads, dynamic shared memory from the *_smem_floats functions; it raises the per-kernel
// shared-memory limit only when a step needs more than 48 KB). Inputs q, k, v: one time step, [B, Hx, X] with
// any element strides. States: contiguous float32, updated in place when *_out == *_in (every element is read
// and written by one thread). Output o: contiguous [B, H, Dv] in the input type. A null *_in state means the
// empty state (zeros; maxima −inf). Returns cudaErrorInvalidValue for bad sizes, cudaErrorInvalidConfiguration
// when the shared memory does not fit.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace flashts {
namespace decode {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };

struct In3 {  // one time step of an input, [B, Hx, X], element strides
    const void* data;
    int64_t sb, sh, sx;
};

// Linear attention (SPEC §1). S [B,H,D,Dv], z [B,H,D]; feature_map 0 = elu+1, 1 = relu, 2 = identity.
cudaError_t linear_step(DType dtype, In3 q, In3 k, In3 v, int64_t B, int64_t H, int64_t Hk, int64_t D, int64_t Dv,
                        int feature_map, bool normalize, float scale, float eps, const float* S_in,
                        const float* z_in, float* S_out, float* z_out, void* o, cudaStream_t stream);

// Aaren (SPEC §4). q [B or 1, H, D] (sb = 0 for a shared query); m, u [B,H], w [B,H,Dv].
cudaError_t aaren_step(DType dtype, In3 q, In3 k, In3 v, int64_t B, int64_t H, int64_t D, int64_t Dv, float scale,
                       const float* m_in, const float* u_in, const float* w_in, float* m_out, float* u_out,
                       float* w_out, void* o, cudaStream_t stream);

// Latte, causal (SPEC §5). q, k [B,H,L]; m, alpha [B,H,L], S [B,H,L,Dv].
cudaError_t latte_step(DType dtype, In3 q, In3 k, In3 v, int64_t B, int64_t H, int64_t L, int64_t Dv,
                       const float* m_in, const float* a_in, const float* S_in, float* m_out, float* a_out,
                       float* S_out, void* o, cudaStream_t stream);

// Sliding window (left, 0) (SPEC §2) on a ring of W = left + 1 slots: k_cache [B,W,Hk,D], v_cache [B,W,Hk,Dv]
// (contiguous, input type), pos [B] int64 = tokens seen before this step (read only: the caller advances it).
cudaError_t swa_ring_step(DType dtype, In3 q, In3 k, In3 v, int64_t B, int64_t H, int64_t Hk, int64_t D,
                          int64_t Dv, int64_t W, float scale, void* k_cache, void* v_cache, const int64_t* pos,
                          void* o, cudaStream_t stream);

// Latte Macchiato (SPEC §7). q, k [B,H,D], v [B,H,Dv], mix [B,H,L+1], latent_k [B,H,L]; window caches
// k_win [B,W,H,D], v_win [B,W,H,Dv] float32 (W = left >= 0; right-aligned, shifted left by one slot in place),
// n_win [B] int32 (read only: the caller advances it to min(n_win + 1, W)); m, alpha [B,H,L], S [B,H,L,Dv]
// float32 (in place). Null caches / n_win only when W == 0.
cudaError_t macchiato_step(DType dtype, In3 q, In3 k, In3 v, In3 mix, In3 latent_k, int64_t B, int64_t H, int64_t D,
                           int64_t Dv, int64_t L, int64_t W, float scale, float* k_win, float* v_win,
                           const int* n_win, float* m, float* alpha, float* S, void* o, cudaStream_t stream);

}  // namespace decode
}  // namespace flashts
