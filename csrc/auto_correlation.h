// flashts — auto-correlation (Autoformer, SPEC §3): plain C++ launchers of the CUDA kernels.
//
// No torch headers here: the binding (csrc/bindings.cpp) checks the tensors and passes raw pointers, sizes,
// strides (in elements) and the caller's stream. Every launcher returns the CUDA error of its launches
// (cudaSuccess when all went well). Complex numbers are float2 (re, im), the layout of torch.complex64.
#pragma once

#include <cuda_runtime_api.h>
#include <vector_types.h>

#include <cstdint>

namespace flashts {
namespace autocorr {

// Element type of q, k, v, do and of the outputs o, dv.
enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };

// cross[b, f] = (1/C) Σ_c qf[b, f, c] · conj(kf[b, f, c])      (C = H·E channels)
// qf, kf: contiguous [B, F, C] complex; cross: contiguous [B, F] complex. Deterministic (fixed-order
// reduction, one block per (b, f)).
cudaError_t spectrum_mean(const float2* qf, const float2* kf, float2* cross, int64_t B, int64_t F, int64_t C,
                          cudaStream_t stream);

// Time-delay aggregation (and its transpose):
//   out[b, t, h, d] = Σ_i w[b, i] · x[b, (t + sign·τ[b, i]) mod L, h, d]   for t < min(T_out, L)
//   (x rows ≥ T_in read as 0: the zero padding of the alignment), out[b, t] = 0 for L ≤ t < T_out.
// x: [B, T_in, H, D] with element strides sx_*; out: contiguous [B, T_out, H, D] (same element type);
// delays: contiguous int64 [B, K] (any integers; reduced mod L); weights: contiguous float [B, K].
// sign = +1 (forward, x = v) or -1 (dv, x = do). Each output element is written exactly once.
cudaError_t aggregate(DType dtype, const void* x, int64_t sx_b, int64_t sx_t, int64_t sx_h, int64_t sx_d,
                      int64_t B, int64_t T_in, int64_t H, int64_t D, const int64_t* delays, const float* weights,
                      int64_t K, int sign, int64_t L, void* out, int64_t T_out, cudaStream_t stream);

// dw[b, i] = Σ_{t < L, h, d} g[b, t, h, d] · x[b, (t + τ[b, i]) mod L, h, d]   (x rows ≥ T_x read as 0)
// g: [B, L, H, D] (strides sg_*), x: [B, T_x, H, D] (strides sx_*), same element type; dw: contiguous float
// [B, K]. Deterministic: per (b, i) a fixed set of row-chunk partial sums (first kernel) summed in a fixed
// order (second kernel). `partials` is scratch of at least partials_size(B, K, L, H, D) floats.
int64_t partials_size(int64_t B, int64_t K, int64_t L, int64_t H, int64_t D);
cudaError_t delay_dots(DType dtype, const void* g, int64_t sg_b, int64_t sg_t, int64_t sg_h, int64_t sg_d,
                       const void* x, int64_t sx_b, int64_t sx_t, int64_t sx_h, int64_t sx_d, int64_t T_x,
                       int64_t B, int64_t L, int64_t H, int64_t D, const int64_t* delays, int64_t K, float* partials,
                       float* dw, cudaStream_t stream);

// Spectrum products of the backward, g[b, f] = scale · drf[b, f]:
//   dqf[b, f, c] = kf[b, f, c] · g[b, f],     dkf[b, f, c] = qf[b, f, c] · conj(g[b, f])
// qf, kf, dqf, dkf: contiguous [B, F, C] complex; drf: contiguous [B, F] complex.
cudaError_t spectrum_grad(const float2* qf, const float2* kf, const float2* drf, float scale, float2* dqf,
                          float2* dkf, int64_t B, int64_t F, int64_t C, cudaStream_t stream);

}  // namespace autocorr
}  // namespace flashts
