// flashts — Aaren (SPEC §4) and Latte (SPEC §5): plain C++ launchers of the prefix-scan CUDA kernels.
//
// No torch headers here: the binding (csrc/bindings.cpp) checks the tensors and passes raw pointers, sizes,
// element strides and the caller's stream. Launchers return the CUDA error of their launches (cudaSuccess when
// all went well; cudaErrorInvalidConfiguration when L·Dv is too large for the state to fit in shared memory).
//
// Layouts. Inputs q, k, v, do: any strides (ScanTensor). States and state gradients: contiguous float32
// [N, H, L] / [N, H, L, Dv] (Aaren: L = 1). Outputs o, dq, dk, dv: contiguous [B, T, H, X] in the input type.
// cu_seqlens: nullptr or contiguous int32 [N + 1] (then B == 1); without it N == B.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace flashts {
namespace scan {

// Element type of q, k, v, do, o, dq, dk, dv.
enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };

// A strided input [B, T, H, X] (Aaren's q [B, H, D]: stride_t unused, stride_b == 0 when q is [H, D]).
struct ScanTensor {
    const void* data;
    int64_t stride_b, stride_t, stride_h, stride_x;
};

struct ScanSizes {
    int64_t B, T, H;
    int64_t L;   // latents (Latte), 1 for Aaren
    int64_t D;   // Aaren: head dim of q and k; Latte: unused (= L)
    int64_t Dv;  // value dim
    int64_t N;   // number of sequences: B, or cu_seqlens.numel() - 1
    const int32_t* cu_seqlens;  // nullptr or [N + 1]
};

// Forward launch mode: Auto = the occupancy rule (ScanPlan), OnePass = one block per (sequence, head) walking
// its whole sequence (forward_kernel), Chunked = the chunk-parallel forward (chunk summaries, a light scan of
// the states, every chunk's outputs in parallel; bidirectional Latte: the summaries' whole-sequence total, then
// y = p·mean per chunk).
enum class ScanMode : int { Auto = 0, OnePass = 1, Chunked = 2 };

struct ScanOptions {
    int sm_count;   // SMs of the device (0 = query the current device)
    int max_smem;   // cudaDevAttrMaxSharedMemoryPerBlockOptin (0 = query the current device)
    ScanMode mode;  // Auto: the rule below
};

// The forward's launch plan (scan_fwd_plan): the occupancy rule of kernels/occupancy.py applied to these kernels.
// seq_blocks = N·H (the one pass); chunk_blocks = B·NS·H·⌈Dv/BV⌉ (each chunk kernel; NS chunk slots of 16 steps
// per batch row: ⌈T/16⌉, or ⌊T/16⌋ + N when packed); scan_blocks: the state scan's blocks (128 threads, one per
// 4 state columns of one latent of one (sequence, head)). Rule: one pass when seq_blocks ≥ 2·SMs;
// else chunked when chunk_blocks ≥ SMs and > seq_blocks; else the mode with more blocks at BV = 16. Chunked:
// BV (from min(64, Dv rounded up to 16)) is halved while chunk_blocks < SMs (down to 16) or the tiles do not
// fit the shared memory. workspace_bytes: the float32 chunk states the chunked mode needs (0 in one-pass mode).
struct ScanPlan {
    ScanMode mode;
    int C;       // chunk steps (16)
    int BV;      // Dv tile of the chunk kernels
    int64_t NS;  // chunk slots per batch row
    int64_t seq_blocks, chunk_blocks, scan_blocks;
    int64_t workspace_bytes;
    // The state scan's chunk groups (two-level scan when N·H·L·⌈Dv/4⌉ chains give fewer than SMs blocks of 128
    // threads): each sequence's chunks are cut into groups of scan_group_chunks; 1 = the one-level scan.
    int scan_groups;
    int64_t scan_group_chunks;
};

// The forward's plan (aaren = true: Aaren, sz.L ignored; false: Latte, sz.D ignored). cudaErrorInvalidValue
// for bad sizes.
cudaError_t scan_fwd_plan(bool aaren, ScanSizes sz, bool causal, ScanOptions opt, ScanPlan* plan);

// Forward. Aaren: a_t = scale·(q·k_t), p = 1. Latte: a = k (latent logits), p = softmax_l(q_t).
// m0/a0/S0: the initial state (all three nullptr = the empty state (−inf, 0, 0)).
// causal (Latte only; Aaren is always causal): o_t = Σ_l p_{t,l} · num_{t,l} / den_{t,l} over s ≤ t, and
// the final state is written to mT/aT/ST. Not causal: the means run over the whole sequence; mT/aT/ST
// may be nullptr (nothing is written there).
// opt / workspace: the plan (scan_fwd_plan with the same sizes and options) and device memory of at least
// plan.workspace_bytes (16-byte aligned; may be nullptr when that is 0; cudaErrorInvalidValue when too small).
cudaError_t aaren_fwd(DType dtype, ScanTensor q, ScanTensor k, ScanTensor v, ScanSizes sz, float scale,
                      const float* m0, const float* u0, const float* w0, void* o, float* mT, float* uT, float* wT,
                      ScanOptions opt, void* workspace, int64_t workspace_bytes, cudaStream_t stream);
cudaError_t latte_fwd(DType dtype, ScanTensor q, ScanTensor k, ScanTensor v, ScanSizes sz, bool causal,
                      const float* m0, const float* a0, const float* S0, void* o, float* mT, float* aT, float* ST,
                      ScanOptions opt, void* workspace, int64_t workspace_bytes, cudaStream_t stream);

// Latte bidirectional backward, chunk-parallel (the forward's chunk summaries and whole-sequence state, then
// per chunk Gm_c = pᵀdy and dq, the sum of Gm over the chunks, per chunk dv and dk; tensor cores for 16-bit
// inputs): dq, dk [B, T, H, L], dv [B, T, H, Dv] contiguous in the input type. workspace: at least
// latte_bidir_bwd_plan(...).workspace_bytes (16-byte aligned). latte_bwd with causal = false runs it (its workspace
// from scan_bwd_workspace) when its tiles fit, else the sequential bidir_bwd_kernel.
cudaError_t latte_bidir_bwd_plan(ScanSizes sz, ScanOptions opt, ScanPlan* plan);
cudaError_t latte_bidir_bwd(DType dtype, ScanTensor dout, ScanTensor q, ScanTensor k, ScanTensor v, ScanSizes sz,
                            ScanOptions opt, void* dq, void* dk, void* dv, void* workspace, int64_t workspace_bytes,
                            cudaStream_t stream);

// Backward (the maxima carry no gradient). dout = do; daT/dST: final-state cotangents (nullptr = 0).
// Bidirectional (Latte, causal = false): latte_bidir_bwd's kernels when they fit, else the sequential kernel.
// Causal: the chunk-parallel backward (chunk summaries → entering states → per-chunk cotangent maps → their reverse
// scan → per-chunk gradients; see prefix_scan.cu) whenever its chunk tiles fit in shared memory, else the
// sequential recompute/reverse kernels (the fallback for very wide states). Either way `workspace` holds at least
// scan_bwd_workspace(...) floats (float32 device memory, 16-byte aligned; cudaErrorInvalidValue when smaller).
// Initial-state gradients da0/dS0 are written when non-null (then m0 must be given or nullptr for the
// empty state). Aaren: dq_rows float32 [N, H, D] holds Σ_t of each (sequence, head) — the caller sums it
// over the sequences when q is shared.
cudaError_t scan_bwd_workspace(bool aaren, ScanSizes sz, bool causal, int64_t* floats);
cudaError_t aaren_bwd(DType dtype, ScanTensor dout, ScanTensor q, ScanTensor k, ScanTensor v, ScanSizes sz,
                      float scale, const float* m0, const float* u0, const float* w0, const float* duT,
                      const float* dwT, float* workspace, int64_t workspace_floats, float* dq_rows, void* dk,
                      void* dv, float* du0, float* dw0, cudaStream_t stream);
cudaError_t latte_bwd(DType dtype, ScanTensor dout, ScanTensor q, ScanTensor k, ScanTensor v, ScanSizes sz,
                      bool causal, const float* m0, const float* a0, const float* S0, const float* daT,
                      const float* dST, float* workspace, int64_t workspace_floats, void* dq, void* dk, void* dv,
                      float* da0, float* dS0, cudaStream_t stream);

}  // namespace scan
}  // namespace flashts
