// flashts — sliding-window attention (SPEC §2): plain C++ launchers of the CUDA kernels in sliding_window.cu.
//
// No torch headers here: the binding (csrc/sliding_window_bind.cpp) checks the tensors and passes raw
// pointers, sizes, element strides and the caller's stream. The launchers return the CUDA error of their
// launches (cudaSuccess when all went well; cudaErrorInvalidValue for an unsupported head dim — D or Dv
// above kMaxHeadDim — or a grid too large; cudaErrorInvalidConfiguration when even the smallest tiles do
// not fit the device's shared memory).
//
// Layouts. Inputs q, k, v, do, o: [B, T, H(k), X] with any element strides (SwaInput). Outputs o, dq
// ([B,T,H,X]) and dk, dv ([B,T,Hk,X]): contiguous, input type. lse, dlse, delta: contiguous float32 [B, H, T].
// cu_seqlens: nullptr or contiguous int32 [N + 1] (then B == 1); without it N == B.
// Window: query i attends key j iff (left < 0 or j ≥ i − left) and (right < 0 or j ≤ i + right), both in the
// same sequence; −1 = unbounded.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace flashts {
namespace swa {

// Largest supported D and Dv.
constexpr int kMaxHeadDim = 256;

// Element type of q, k, v, do, o, dq, dk, dv.
enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };

// A strided input [B, T, Hx, X] (element strides).
struct SwaInput {
    const void* data;
    int64_t stride_b, stride_t, stride_h, stride_x;
};

struct SwaSizes {
    int64_t B, T, H, Hk, D, Dv;
    int64_t N;                  // number of sequences: B, or cu_seqlens.numel() - 1
    const int32_t* cu_seqlens;  // nullptr or [N + 1]
    int64_t max_seqlen;         // longest sequence (T without cu_seqlens); sizes the grid
};

// Forward: o [B,T,H,Dv] (input type) and lse [B,H,T] float32 = log Σ_{j allowed} exp(scale·q_i·k_j).
cudaError_t sliding_window_fwd(DType dtype, SwaInput q, SwaInput k, SwaInput v, SwaSizes sz, int64_t left,
                               int64_t right, float scale, void* o, float* lse, cudaStream_t stream);

// Backward. dlse: cotangent of lse (nullptr = 0). delta: float32 [B,H,T] workspace (Δ_i − dlse_i,
// Δ_i = do_i·o_i). Writes dq [B,T,H,D], dk [B,T,Hk,D], dv [B,T,Hk,Dv] (input type).
cudaError_t sliding_window_bwd(DType dtype, SwaInput dout, SwaInput q, SwaInput k, SwaInput v, SwaInput o,
                               const float* lse, const float* dlse, SwaSizes sz, int64_t left, int64_t right,
                               float scale, float* delta, void* dq, void* dk, void* dv, cudaStream_t stream);

// Which kernels a call with these sizes runs on the current device: the padded head dim (64, 128 or 256) of the
// FlashAttention-2 kernels (mma.sync tensor cores, cp.async; float16/bfloat16, sm_80+), or 0 for
// the generic kernels (float32, older devices, or FLASHTS_SWA_GENERIC=1 in the environment).
// backward: 1 for the backward pass (its kernels need more shared memory), 0 for the forward.
int sliding_window_fa2_head_dim(DType dtype, SwaSizes sz, int backward);

}  // namespace swa
}  // namespace flashts
