// flashts — auto-correlation (Autoformer, SPEC §3): plain C++ launchers of the CUDA kernels.
//
// No torch headers here: the binding (csrc/bindings.cpp) checks the tensors and passes raw pointers, sizes,
// strides (in elements: complex elements for the spectra) and the caller's stream. Every launcher returns the
// CUDA error of its launches (cudaSuccess when all went well). Complex numbers are float2 (re, im), the layout of
// torch.complex64. Nothing here synchronises with the host: the delays stay on the device.
#pragma once

#include <cuda_runtime_api.h>
#include <vector_types.h>

#include <cstdint>

namespace flashts {
namespace autocorr {

// Element type of q, k, v, do and of the outputs o, dv.
enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };

// A [B, F, C] complex64 spectrum (one block of channels) with element strides.
struct Spectrum {
    float2* p;
    int64_t sb, sf, sc;
};

// Fused cross-spectrum mean of one block of C channels (products and the channel reduction in one pass):
//   cross[b, f] (+)= inv_c · Σ_c qf[b, f, c] · conj(kf[b, f, c])
// `=` when accumulate is false, `+=` when true (the caller sums its channel blocks in a fixed order).
// cross: contiguous [B, F]. One warp per (b, f): deterministic (fixed-order butterfly).
cudaError_t cross_spectrum(Spectrum qf, Spectrum kf, float2* cross, int64_t B, int64_t F, int64_t C, float inv_c,
                           bool accumulate, cudaStream_t stream);

// Spectrum products of the backward, IN PLACE in the (recomputed, private) spectra of one channel block:
//   kf[b, f, c] ← kf · g[b, f]  (spectrum of dq),   qf[b, f, c] ← qf · conj(g[b, f])  (spectrum of dk),
//   g = scale · drf[b, f];  drf: contiguous [B, F].
cudaError_t spectrum_grad(Spectrum qf, Spectrum kf, const float2* drf, float scale, int64_t B, int64_t F, int64_t C,
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
// [B, K]. Deterministic: one float partial per (b, i, time tile) (first kernel) summed in a fixed order (second
// kernel). `partials` is scratch of at least partials_size(B, K, L) floats. `sms`: the device's SM count, which
// sets how many delays one block handles (enough blocks for ≈ 4 per SM); ≤ 0 = query the current device.
int64_t partials_size(int64_t B, int64_t K, int64_t L);
cudaError_t delay_dots(DType dtype, const void* g, int64_t sg_b, int64_t sg_t, int64_t sg_h, int64_t sg_d,
                       const void* x, int64_t sx_b, int64_t sx_t, int64_t sx_h, int64_t sx_d, int64_t T_x,
                       int64_t B, int64_t L, int64_t H, int64_t D, const int64_t* delays, int64_t K, float* partials,
                       float* dw, int sms, cudaStream_t stream);

// The backward's delay gradient, fused: the partials of delay_dots, then one block per b computes
//   dw[b, i] = Σ_j partials (+ dweights[b, i] when dweights is not null: the cotangent of the returned weights),
//   dr[b, t] = w[b, i] · (dw[b, i] − Σ_j w[b, j] dw[b, j]) at t = τ[b, i] mod L, 0 elsewhere (t < L),
// i.e. the softmax backward scattered to the selected delays. weights, dweights, dw: contiguous float [B, K];
// dr: contiguous float [B, L]. The delays of a row must be distinct (top-K indices).
cudaError_t delay_grad(DType dtype, const void* g, int64_t sg_b, int64_t sg_t, int64_t sg_h, int64_t sg_d,
                       const void* x, int64_t sx_b, int64_t sx_t, int64_t sx_h, int64_t sx_d, int64_t T_x,
                       int64_t B, int64_t L, int64_t H, int64_t D, const int64_t* delays, const float* weights,
                       const float* dweights, int64_t K, float* partials, float* dw, float* dr, int sms,
                       cudaStream_t stream);

}  // namespace autocorr
}  // namespace flashts
