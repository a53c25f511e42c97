// flashts — linear attention (SPEC §1): plain C++ launchers of the CUDA kernels in linear_attention.cu.
//
// No torch headers here: the binding (csrc/linear_attention_bind.cpp) checks the tensors and passes raw
// pointers, sizes, element strides and the caller's stream. The launchers return the CUDA error of their
// launches (cudaSuccess when all went well; cudaErrorInvalidValue for an unsupported head dim — D or Dv
// above kMaxHeadDim — or a grid too large; cudaErrorInvalidConfiguration when even the smallest chunk does
// not fit the device's shared memory).
//
// Layouts. Inputs q, k, v, do, o: [B, T, H(k), X] with any element strides (LinInput). States, state
// cotangents and workspaces: contiguous float32. Outputs o and dq: contiguous [B, T, H, X] in the input type.
// dk_heads / dv_heads: contiguous float32 [B, T, H, D] / [B, T, H, Dv], the gradient of k / v seen by EACH
// QUERY head (the caller sums the H / Hk query heads of a group and casts: GQA). cu_seqlens: nullptr or
// contiguous int32 [N + 1] (then B == 1); without it N == B.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace flashts {
namespace linear {

// Largest supported D and Dv (the float32 state [D, Dv] of a head lives in shared memory).
constexpr int kMaxHeadDim = 128;

// Element type of q, k, v, do, o, dq.
enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };

// φ: 0 = elu(x)+1, 1 = relu(x), 2 = identity.
enum class FeatureMap : int { Elu = 0, Relu = 1, Identity = 2 };

// A strided input [B, T, Hx, X] (element strides).
struct LinInput {
    const void* data;
    int64_t stride_b, stride_t, stride_h, stride_x;
};

struct LinSizes {
    int64_t B, T, H, Hk, D, Dv;
    int64_t N;                  // number of sequences: B, or cu_seqlens.numel() - 1
    const int32_t* cu_seqlens;  // nullptr or [N + 1]
};

struct LinOptions {
    bool causal;
    FeatureMap feature_map;
    bool normalize;
    float scale;  // multiplies φ(q)
    float eps;
};

// Forward: o [B,T,H,Dv] (input type); S_T [N,H,D,Dv], z_T [N,H,D] float32 (always written).
// S0 / z0: initial state, float32 [N,H,D,Dv] / [N,H,D]; nullptr = zero.
cudaError_t linear_attention_fwd(DType dtype, LinInput q, LinInput k, LinInput v, LinSizes sz, LinOptions opt,
                                 const float* S0, const float* z0, void* o, float* S_T, float* z_T,
                                 cudaStream_t stream);

// Backward. dS_T / dz_T: cotangents of the final state (nullptr = 0). Workspaces ws_inv / ws_dden: float32
// [B, T, H] each, used only when opt.normalize (may be nullptr otherwise). dS0 / dz0 (float32 [N,H,D,Dv] /
// [N,H,D]) are written when non-null. dq: [B,T,H,D] input type; dk_heads / dv_heads: see the file comment.
cudaError_t linear_attention_bwd(DType dtype, LinInput dout, LinInput q, LinInput k, LinInput v, LinInput o,
                                 LinSizes sz, LinOptions opt, const float* S0, const float* z0, const float* dS_T,
                                 const float* dz_T, float* ws_inv, float* ws_dden, void* dq, float* dk_heads,
                                 float* dv_heads, float* dS0, float* dz0, cudaStream_t stream);

}  // namespace linear
}  // namespace flashts
