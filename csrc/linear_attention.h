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

// Forward launch mode: Auto = the occupancy rule (FwdPlan), OnePass = one block per (sequence, head) walking
// its chunks, Chunked = the chunk-parallel three-phase forward (chunk summaries, state scan, chunk outputs).
enum class FwdMode : int { Auto = 0, OnePass = 1, Chunked = 2 };

struct LinOptions {
    bool causal;
    FeatureMap feature_map;
    bool normalize;
    float scale;  // multiplies φ(q)
    float eps;
    // Device facts for the launch plan (the binding passes them; 0 = query the current device) and the mode.
    int sm_count;
    int max_smem;  // cudaDevAttrMaxSharedMemoryPerBlockOptin
    FwdMode fwd_mode;
    int chunk;  // 0: the largest chunk that fits (64, 32, 16); else that chunk size (tests use it)
    // cp.async staging of the next chunk in the SEQUENTIAL kernels (one-pass forward, one-pass backward):
    // 0 = auto (staged when the staging tiles fit and do not lower the blocks per SM), 1 = off, 2 = on where
    // the staging tiles fit (tests use 1 / 2); with 0 the environment's FLASHTS_LINEAR_PIPELINE=0 / 1 means 1 / 2
    // (to time both on a GPU). See SeqConfig in linear_attention.cu.
    int pipeline;
};

// The forward's launch plan (linear_attention_fwd_plan): the occupancy rule of kernels/occupancy.py applied to
// this kernel family. seq_blocks = N·H (one-pass grid); chunk_blocks = B·NS·H·⌈Dvp/BV⌉ (chunk-parallel grid,
// NS chunk slots per batch row: ⌈T/C⌉, or T/C + N when packed). The rule: one pass when seq_blocks ≥ 2·SMs;
// else chunked when chunk_blocks ≥ SMs and > seq_blocks; else the mode with more blocks at BV = 16. Then, in
// chunked mode, BV is halved (64 → 32 → 16) while chunk_blocks < SMs. workspace_bytes: the float32 chunk states
// the chunked mode needs ([B, NS, H, Dp·(Dvp + 1)], Dp/Dvp = D/Dv rounded up to 16); 0 in one-pass mode.
struct FwdPlan {
    FwdMode mode;
    int C;       // chunk steps (one-pass: from {64, 32, 16}; chunked: likewise, for the chunk kernels' tiles)
    int BV;      // Dv tile of the chunk kernels
    int64_t NS;  // chunk slots per batch row
    int64_t seq_blocks, chunk_blocks;
    int64_t workspace_bytes;
};

// The forward's plan for these sizes/options (see FwdPlan); cudaErrorInvalidConfiguration when no chunk fits.
cudaError_t linear_attention_fwd_plan(DType dtype, LinSizes sz, LinOptions opt, FwdPlan* plan);

// Forward: o [B,T,H,Dv] (input type); S_T [N,H,D,Dv], z_T [N,H,D] float32 (always written).
// S0 / z0: initial state, float32 [N,H,D,Dv] / [N,H,D]; nullptr = zero. workspace: device memory of at least
// plan.workspace_bytes (16-byte aligned; nullptr when that is 0), from linear_attention_fwd_plan with the same
// arguments (cudaErrorInvalidValue when too small).
cudaError_t linear_attention_fwd(DType dtype, LinInput q, LinInput k, LinInput v, LinSizes sz, LinOptions opt,
                                 const float* S0, const float* z0, void* o, float* S_T, float* z_T,
                                 void* workspace, int64_t workspace_bytes, cudaStream_t stream);

// The backward's plan (the same rule and FwdPlan fields; opt.fwd_mode selects the backward's mode too): the
// chunk-parallel backward runs its per-chunk kernels on B·NS·H blocks with one C for all of them and needs two
// chunk-state workspaces (workspace_bytes = 2·B·NS·H·Dp·(Dvp+1)·4); one pass: N·H blocks, no workspace.
cudaError_t linear_attention_bwd_plan(DType dtype, LinSizes sz, LinOptions opt, FwdPlan* plan);

// Backward. dS_T / dz_T: cotangents of the final state (nullptr = 0). Workspaces ws_inv / ws_dden: float32
// [B, T, H] each, used only when opt.normalize (may be nullptr otherwise). dS0 / dz0 (float32 [N,H,D,Dv] /
// [N,H,D]) are written when non-null. dq: [B,T,H,D] input type; dk_heads / dv_heads: see the file comment.
// workspace: at least linear_attention_bwd_plan(...).workspace_bytes, 16-byte aligned.
cudaError_t linear_attention_bwd(DType dtype, LinInput dout, LinInput q, LinInput k, LinInput v, LinInput o,
                                 LinSizes sz, LinOptions opt, const float* S0, const float* z0, const float* dS_T,
                                 const float* dz_T, float* ws_inv, float* ws_dden, void* dq, float* dk_heads,
                                 float* dv_heads, float* dS0, float* dz0, void* workspace, int64_t workspace_bytes,
                                 cudaStream_t stream);

}  // namespace linear
}  // namespace flashts
