// flashts._C — the only translation unit that includes torch. It checks tensors, takes the caller's stream and
// calls the plain C++ launchers declared by the kernel headers (csrc/<op>.h), which take pointers, sizes,
// strides and a cudaStream_t. Kernel issues add their launchers here.
//
// Ops whose glue lives in their own csrc/<op>_bind.cpp register through the hooks of csrc/bind_registry.h
// (linear attention, sliding-window attention); auto-correlation, Aaren and Latte are bound in this file.
//
// Conventions of the functions below: outputs are allocated by the Python backend (flashts.cuda_ops, with
// flashts.ops._common.new_empty so the tests can poison them) and passed in; the kernels write every element.
// Inputs may have any strides unless stated; states are contiguous float32.
#include <torch/extension.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "auto_correlation.h"
#include "bind_registry.h"
#include "prefix_scan.h"

namespace {

// Which ops this build provides for backend="cuda" (read by flashts._backend).
std::vector<std::string> provided_ops() {
    return {"linear_attention", "sliding_window_attention", "auto_correlation", "aaren_attention", "latte_attention"};
}

using OptTensor = std::optional<torch::Tensor>;

void check_cuda(const torch::Tensor& t, const char* fn, const char* name, const torch::Tensor& ref) {
    TORCH_CHECK(t.is_cuda(), fn, ": ", name, " must be a CUDA tensor");
    TORCH_CHECK(t.device() == ref.device(), fn, ": ", name, " is on ", t.device(), ", expected ", ref.device());
}

void check_out(const torch::Tensor& t, const char* fn, const char* name, const torch::Tensor& ref,
               at::ScalarType dtype, at::IntArrayRef shape) {
    check_cuda(t, fn, name, ref);
    TORCH_CHECK(t.scalar_type() == dtype, fn, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
    TORCH_CHECK(t.sizes() == shape, fn, ": ", name, " must have shape ", shape, ", got ", t.sizes());
    TORCH_CHECK(t.is_contiguous(), fn, ": ", name, " must be contiguous");
}

void check_state(const OptTensor& t, const char* fn, const char* name, const torch::Tensor& ref,
                 at::IntArrayRef shape) {
    if (t.has_value()) check_out(*t, fn, name, ref, at::kFloat, shape);
}

const float* opt_ptr(const OptTensor& t) { return t.has_value() ? t->data_ptr<float>() : nullptr; }
float* opt_mut_ptr(OptTensor& t) { return t.has_value() ? t->data_ptr<float>() : nullptr; }

void check_err(cudaError_t err, const char* fn) {
    TORCH_CHECK(err != cudaErrorInvalidConfiguration, fn,
                ": the per-row state (L x Dv floats) does not fit in shared memory; use backend='triton' or 'torch'");
    TORCH_CHECK(err == cudaSuccess, fn, ": CUDA error: ", cudaGetErrorString(err));
}

// ----------------------------------------------------------------------------------------- auto-correlation

flashts::autocorr::DType ac_dtype(const torch::Tensor& t, const char* fn) {
    switch (t.scalar_type()) {
        case at::kFloat: return flashts::autocorr::DType::F32;
        case at::kHalf: return flashts::autocorr::DType::F16;
        case at::kBFloat16: return flashts::autocorr::DType::BF16;
        default: TORCH_CHECK(false, fn, ": expected float32, float16 or bfloat16, got ", t.scalar_type());
    }
    return flashts::autocorr::DType::F32;
}

const float2* c2(const torch::Tensor& t) { return reinterpret_cast<const float2*>(t.data_ptr()); }
float2* c2_mut(torch::Tensor& t) { return reinterpret_cast<float2*>(t.data_ptr()); }

// A [B, F, Cb] complex64 spectrum (any strides, in complex elements) as the launchers take it.
flashts::autocorr::Spectrum ac_spectrum(torch::Tensor& t) {
    return {reinterpret_cast<float2*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2)};
}

void check_spectra(const torch::Tensor& qf, const torch::Tensor& kf, const char* fn) {
    TORCH_CHECK(qf.dim() == 3, fn, ": qf must be [B, F, C]");
    check_cuda(qf, fn, "qf", qf);
    check_cuda(kf, fn, "kf", qf);
    TORCH_CHECK(qf.scalar_type() == at::kComplexFloat && kf.scalar_type() == at::kComplexFloat, fn,
                ": qf and kf must be complex64");
    TORCH_CHECK(kf.sizes() == qf.sizes(), fn, ": kf must have the shape of qf ", qf.sizes(), ", got ", kf.sizes());
}

// cross[b, f] (+)= inv_c · Σ_c qf · conj(kf) over one block of channels; qf, kf complex64 [B, F, Cb] (any
// strides); cross contiguous complex64 [B, F]; `accumulate` adds to cross instead of overwriting it.
void autocorr_cross_spectrum(torch::Tensor qf, torch::Tensor kf, torch::Tensor cross, double inv_c, bool accumulate) {
    const char* fn = "autocorr_cross_spectrum";
    check_spectra(qf, kf, fn);
    check_out(cross, fn, "cross", qf, at::kComplexFloat, {qf.size(0), qf.size(1)});
    const at::cuda::OptionalCUDAGuard guard(qf.device());
    check_err(flashts::autocorr::cross_spectrum(ac_spectrum(qf), ac_spectrum(kf), c2_mut(cross), qf.size(0),
                                                qf.size(1), qf.size(2), static_cast<float>(inv_c), accumulate,
                                                at::cuda::getCurrentCUDAStream()),
              fn);
}

// out[b, t] = Σ_i w[b, i] x[b, (t + sign τ[b, i]) mod L] (rows of x ≥ T_in read as 0, rows t ≥ L of out are 0).
void autocorr_aggregate(torch::Tensor x, torch::Tensor delays, torch::Tensor weights, int64_t sign, int64_t L,
                        torch::Tensor out) {
    const char* fn = "autocorr_aggregate";
    TORCH_CHECK(x.dim() == 4, fn, ": x must be [B, T, H, D]");
    TORCH_CHECK(sign == 1 || sign == -1, fn, ": sign must be +1 or -1");
    TORCH_CHECK(L > 0, fn, ": L must be positive");
    check_cuda(x, fn, "x", x);
    const int64_t B = x.size(0), H = x.size(2), D = x.size(3);
    TORCH_CHECK(delays.dim() == 2 && delays.size(0) == B, fn, ": delays must be [B, K]");
    const int64_t K = delays.size(1);
    check_out(delays, fn, "delays", x, at::kLong, {B, K});
    check_out(weights, fn, "weights", x, at::kFloat, {B, K});
    TORCH_CHECK(out.dim() == 4, fn, ": out must be [B, T_out, H, D]");
    check_out(out, fn, "out", x, x.scalar_type(), {B, out.size(1), H, D});
    const at::cuda::OptionalCUDAGuard guard(x.device());
    check_err(flashts::autocorr::aggregate(ac_dtype(x, fn), x.data_ptr(), x.stride(0), x.stride(1), x.stride(2),
                                           x.stride(3), B, x.size(1), H, D, delays.data_ptr<int64_t>(),
                                           weights.data_ptr<float>(), K, static_cast<int>(sign), L, out.data_ptr(),
                                           out.size(1), at::cuda::getCurrentCUDAStream()),
              fn);
}

// dw[b, i] = Σ_{t<L,h,d} g[b, t, h, d] · x[b, (t + τ[b, i]) mod L, h, d]  (x rows ≥ T_x read as 0).
void autocorr_delay_dots(torch::Tensor g, torch::Tensor x, torch::Tensor delays, torch::Tensor dw) {
    const char* fn = "autocorr_delay_dots";
    TORCH_CHECK(g.dim() == 4 && x.dim() == 4, fn, ": g and x must be [B, T, H, D]");
    check_cuda(g, fn, "g", g);
    check_cuda(x, fn, "x", g);
    TORCH_CHECK(x.scalar_type() == g.scalar_type(), fn, ": g and x must share a dtype");
    const int64_t B = g.size(0), L = g.size(1), H = g.size(2), D = g.size(3);
    TORCH_CHECK(x.size(0) == B && x.size(2) == H && x.size(3) == D, fn, ": x must be [B, T_x, H, D] like g");
    TORCH_CHECK(delays.dim() == 2 && delays.size(0) == B, fn, ": delays must be [B, K]");
    const int64_t K = delays.size(1);
    check_out(delays, fn, "delays", g, at::kLong, {B, K});
    check_out(dw, fn, "dw", g, at::kFloat, {B, K});
    const at::cuda::OptionalCUDAGuard guard(g.device());
    auto partials = torch::empty({flashts::autocorr::partials_size(B, K, L)}, g.options().dtype(at::kFloat));
    check_err(flashts::autocorr::delay_dots(ac_dtype(g, fn), g.data_ptr(), g.stride(0), g.stride(1), g.stride(2),
                                            g.stride(3), x.data_ptr(), x.stride(0), x.stride(1), x.stride(2),
                                            x.stride(3), x.size(1), B, L, H, D, delays.data_ptr<int64_t>(), K,
                                            partials.data_ptr<float>(), dw.data_ptr<float>(),
                                            at::cuda::getCurrentDeviceProperties()->multiProcessorCount,
                                            at::cuda::getCurrentCUDAStream()),
              fn);
}

// The backward's delay gradient, fused: dw[b, i] = <g, x shifted by τ_i> (+ dweights), and the softmax backward
// scattered to the selected delays: dr[b, τ_i] = w_i (dw_i − Σ_j w_j dw_j), 0 elsewhere. weights, dweights
// (optional), dw: float [B, K]; dr: float [B, L] (L = g's time length); all contiguous.
void autocorr_delay_grad(torch::Tensor g, torch::Tensor x, torch::Tensor delays, torch::Tensor weights,
                         OptTensor dweights, torch::Tensor dw, torch::Tensor dr) {
    const char* fn = "autocorr_delay_grad";
    TORCH_CHECK(g.dim() == 4 && x.dim() == 4, fn, ": g and x must be [B, T, H, D]");
    check_cuda(g, fn, "g", g);
    check_cuda(x, fn, "x", g);
    TORCH_CHECK(x.scalar_type() == g.scalar_type(), fn, ": g and x must share a dtype");
    const int64_t B = g.size(0), L = g.size(1), H = g.size(2), D = g.size(3);
    TORCH_CHECK(x.size(0) == B && x.size(2) == H && x.size(3) == D, fn, ": x must be [B, T_x, H, D] like g");
    TORCH_CHECK(delays.dim() == 2 && delays.size(0) == B, fn, ": delays must be [B, K]");
    const int64_t K = delays.size(1);
    check_out(delays, fn, "delays", g, at::kLong, {B, K});
    check_out(weights, fn, "weights", g, at::kFloat, {B, K});
    check_state(dweights, fn, "dweights", g, {B, K});
    check_out(dw, fn, "dw", g, at::kFloat, {B, K});
    check_out(dr, fn, "dr", g, at::kFloat, {B, L});
    const at::cuda::OptionalCUDAGuard guard(g.device());
    auto partials = torch::empty({flashts::autocorr::partials_size(B, K, L)}, g.options().dtype(at::kFloat));
    check_err(flashts::autocorr::delay_grad(ac_dtype(g, fn), g.data_ptr(), g.stride(0), g.stride(1), g.stride(2),
                                            g.stride(3), x.data_ptr(), x.stride(0), x.stride(1), x.stride(2),
                                            x.stride(3), x.size(1), B, L, H, D, delays.data_ptr<int64_t>(),
                                            weights.data_ptr<float>(), opt_ptr(dweights), K,
                                            partials.data_ptr<float>(), dw.data_ptr<float>(), dr.data_ptr<float>(),
                                            at::cuda::getCurrentDeviceProperties()->multiProcessorCount,
                                            at::cuda::getCurrentCUDAStream()),
              fn);
}

// In place, one block of channels: kf ← kf · scale·drf (spectrum of dq), qf ← qf · conj(scale·drf) (spectrum of
// dk); qf, kf complex64 [B, F, Cb] (any strides); drf contiguous complex64 [B, F].
void autocorr_spectrum_grad(torch::Tensor qf, torch::Tensor kf, torch::Tensor drf, double scale) {
    const char* fn = "autocorr_spectrum_grad";
    check_spectra(qf, kf, fn);
    check_out(drf, fn, "drf", qf, at::kComplexFloat, {qf.size(0), qf.size(1)});
    const at::cuda::OptionalCUDAGuard guard(qf.device());
    check_err(flashts::autocorr::spectrum_grad(ac_spectrum(qf), ac_spectrum(kf), c2(drf), static_cast<float>(scale),
                                               qf.size(0), qf.size(1), qf.size(2), at::cuda::getCurrentCUDAStream()),
              fn);
}

// ----------------------------------------------------------------------------------------- Aaren / Latte

flashts::scan::DType scan_dtype(const torch::Tensor& t, const char* fn) {
    switch (t.scalar_type()) {
        case at::kFloat: return flashts::scan::DType::F32;
        case at::kHalf: return flashts::scan::DType::F16;
        case at::kBFloat16: return flashts::scan::DType::BF16;
        default: TORCH_CHECK(false, fn, ": expected float32, float16 or bfloat16, got ", t.scalar_type());
    }
    return flashts::scan::DType::F32;
}

flashts::scan::ScanTensor st4(const torch::Tensor& t) {
    return {t.data_ptr(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// Aaren's q: [H, D] (shared by the batch: batch stride 0) or [B, H, D].
flashts::scan::ScanTensor st_query(const torch::Tensor& q) {
    if (q.dim() == 2) return {q.data_ptr(), 0, 0, q.stride(0), q.stride(1)};
    return {q.data_ptr(), q.stride(0), 0, q.stride(1), q.stride(2)};
}

// Checks cu_seqlens (int32 contiguous [N+1] on the device, B == 1) and returns N.
int64_t check_cu(const OptTensor& cu, int64_t B, const char* fn, const torch::Tensor& ref) {
    if (!cu.has_value()) return B;
    TORCH_CHECK(B == 1, fn, ": cu_seqlens needs B == 1");
    check_cuda(*cu, fn, "cu_seqlens", ref);
    TORCH_CHECK(cu->scalar_type() == at::kInt && cu->dim() == 1 && cu->numel() >= 2 && cu->is_contiguous(), fn,
                ": cu_seqlens must be a contiguous int32 [N + 1]");
    return cu->numel() - 1;
}

const int32_t* cu_ptr(const OptTensor& cu) { return cu.has_value() ? cu->data_ptr<int32_t>() : nullptr; }

void check_same_input(const torch::Tensor& t, const char* fn, const char* name, const torch::Tensor& ref) {
    check_cuda(t, fn, name, ref);
    TORCH_CHECK(t.scalar_type() == ref.scalar_type(), fn, ": ", name, " must have dtype ", ref.scalar_type());
}

// The forward's launch options (this device's SMs and shared memory, the Auto rule) and the workspace its plan
// needs (the chunk-parallel mode's float32 chunk states), from the caching allocator (undefined when none).
struct ScanFwdWs {
    flashts::scan::ScanOptions opt;
    torch::Tensor ws;
    int64_t bytes;
    void* ptr() const { return bytes > 0 ? ws.data_ptr() : nullptr; }
};

ScanFwdWs scan_fwd_workspace(bool aaren, const flashts::scan::ScanSizes& sz, bool causal, const torch::Tensor& ref,
                             const char* fn) {
    const cudaDeviceProp* props = at::cuda::getCurrentDeviceProperties();
    ScanFwdWs w{{props->multiProcessorCount, static_cast<int>(props->sharedMemPerBlockOptin),
                 flashts::scan::ScanMode::Auto},
                {},
                0};
    flashts::scan::ScanPlan plan{};
    check_err(flashts::scan::scan_fwd_plan(aaren, sz, causal, w.opt, &plan), fn);
    w.bytes = plan.workspace_bytes;
    if (w.bytes > 0) w.ws = torch::empty({w.bytes}, ref.options().dtype(at::kByte));
    return w;
}

void aaren_fwd(torch::Tensor q, torch::Tensor k, torch::Tensor v, OptTensor m0, OptTensor u0, OptTensor w0,
               OptTensor cu_seqlens, double scale, torch::Tensor o, torch::Tensor mT, torch::Tensor uT,
               torch::Tensor wT) {
    const char* fn = "aaren_fwd";
    TORCH_CHECK(k.dim() == 4 && v.dim() == 4 && (q.dim() == 2 || q.dim() == 3), fn, ": bad ranks");
    check_cuda(k, fn, "k", k);
    check_same_input(q, fn, "q", k);
    check_same_input(v, fn, "v", k);
    const int64_t B = k.size(0), T = k.size(1), H = k.size(2), D = k.size(3), Dv = v.size(3);
    TORCH_CHECK(q.size(-2) == H && q.size(-1) == D && (q.dim() == 2 || q.size(0) == B), fn, ": q must be [(B,) H, D]");
    TORCH_CHECK(v.size(0) == B && v.size(1) == T && v.size(2) == H, fn, ": v must be [B, T, H, Dv]");
    const int64_t N = check_cu(cu_seqlens, B, fn, k);
    TORCH_CHECK(m0.has_value() == u0.has_value() && m0.has_value() == w0.has_value(), fn, ": give all of m0, u0, w0");
    check_state(m0, fn, "m0", k, {N, H});
    check_state(u0, fn, "u0", k, {N, H});
    check_state(w0, fn, "w0", k, {N, H, Dv});
    check_out(o, fn, "o", k, k.scalar_type(), {B, T, H, Dv});
    check_out(mT, fn, "mT", k, at::kFloat, {N, H});
    check_out(uT, fn, "uT", k, at::kFloat, {N, H});
    check_out(wT, fn, "wT", k, at::kFloat, {N, H, Dv});
    const at::cuda::OptionalCUDAGuard guard(k.device());
    const flashts::scan::ScanSizes sz{B, T, H, 1, D, Dv, N, cu_ptr(cu_seqlens)};
    const ScanFwdWs w = scan_fwd_workspace(true, sz, true, k, fn);
    check_err(flashts::scan::aaren_fwd(scan_dtype(k, fn), st_query(q), st4(k), st4(v), sz, static_cast<float>(scale),
                                       opt_ptr(m0), opt_ptr(u0), opt_ptr(w0), o.data_ptr(), mT.data_ptr<float>(),
                                       uT.data_ptr<float>(), wT.data_ptr<float>(), w.opt, w.ptr(), w.bytes,
                                       at::cuda::getCurrentCUDAStream()),
              fn);
}

void aaren_bwd(torch::Tensor dout, OptTensor duT, OptTensor dwT, torch::Tensor q, torch::Tensor k, torch::Tensor v,
               OptTensor m0, OptTensor u0, OptTensor w0, OptTensor cu_seqlens, double scale, torch::Tensor dq_rows,
               torch::Tensor dk, torch::Tensor dv, OptTensor du0, OptTensor dw0) {
    const char* fn = "aaren_bwd";
    TORCH_CHECK(k.dim() == 4 && v.dim() == 4 && dout.dim() == 4 && (q.dim() == 2 || q.dim() == 3), fn, ": bad ranks");
    check_cuda(k, fn, "k", k);
    check_same_input(q, fn, "q", k);
    check_same_input(v, fn, "v", k);
    check_same_input(dout, fn, "do", k);
    const int64_t B = k.size(0), T = k.size(1), H = k.size(2), D = k.size(3), Dv = v.size(3);
    TORCH_CHECK(q.size(-2) == H && q.size(-1) == D && (q.dim() == 2 || q.size(0) == B), fn, ": q must be [(B,) H, D]");
    TORCH_CHECK(v.size(0) == B && v.size(1) == T && v.size(2) == H, fn, ": v must be [B, T, H, Dv]");
    TORCH_CHECK(dout.sizes() == v.sizes(), fn, ": do must be [B, T, H, Dv]");
    const int64_t N = check_cu(cu_seqlens, B, fn, k);
    TORCH_CHECK(m0.has_value() == u0.has_value() && m0.has_value() == w0.has_value(), fn, ": give all of m0, u0, w0");
    check_state(m0, fn, "m0", k, {N, H});
    check_state(u0, fn, "u0", k, {N, H});
    check_state(w0, fn, "w0", k, {N, H, Dv});
    check_state(duT, fn, "duT", k, {N, H});
    check_state(dwT, fn, "dwT", k, {N, H, Dv});
    check_out(dq_rows, fn, "dq_rows", k, at::kFloat, {N, H, D});
    check_out(dk, fn, "dk", k, k.scalar_type(), {B, T, H, D});
    check_out(dv, fn, "dv", k, k.scalar_type(), {B, T, H, Dv});
    TORCH_CHECK(du0.has_value() == dw0.has_value(), fn, ": give both du0 and dw0 or neither");
    check_state(du0, fn, "du0", k, {N, H});
    check_state(dw0, fn, "dw0", k, {N, H, Dv});
    const at::cuda::OptionalCUDAGuard guard(k.device());
    const flashts::scan::ScanSizes sz{B, T, H, 1, D, Dv, N, cu_ptr(cu_seqlens)};
    int64_t ws_floats = 0;  // chunk states and cotangent maps (or the sequential fallback's per-position arrays)
    check_err(flashts::scan::scan_bwd_workspace(true, sz, true, &ws_floats), fn);
    auto ws = torch::empty({std::max<int64_t>(ws_floats, 1)}, k.options().dtype(at::kFloat));
    check_err(flashts::scan::aaren_bwd(scan_dtype(k, fn), st4(dout), st_query(q), st4(k), st4(v), sz,
                                       static_cast<float>(scale), opt_ptr(m0), opt_ptr(u0), opt_ptr(w0), opt_ptr(duT),
                                       opt_ptr(dwT), ws.data_ptr<float>(), ws_floats, dq_rows.data_ptr<float>(),
                                       dk.data_ptr(), dv.data_ptr(), opt_mut_ptr(du0), opt_mut_ptr(dw0),
                                       at::cuda::getCurrentCUDAStream()),
              fn);
}

void check_latte_inputs(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const char* fn) {
    TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, fn, ": q, k, v must be 4-D");
    check_cuda(q, fn, "q", q);
    check_same_input(k, fn, "k", q);
    check_same_input(v, fn, "v", q);
    TORCH_CHECK(k.sizes() == q.sizes(), fn, ": k must be [B, T, H, L] like q");
    TORCH_CHECK(v.size(0) == q.size(0) && v.size(1) == q.size(1) && v.size(2) == q.size(2), fn,
                ": v must be [B, T, H, Dv]");
}

void latte_fwd(torch::Tensor q, torch::Tensor k, torch::Tensor v, OptTensor m0, OptTensor a0, OptTensor S0,
               OptTensor cu_seqlens, bool causal, torch::Tensor o, OptTensor mT, OptTensor aT, OptTensor ST) {
    const char* fn = "latte_fwd";
    check_latte_inputs(q, k, v, fn);
    const int64_t B = q.size(0), T = q.size(1), H = q.size(2), L = q.size(3), Dv = v.size(3);
    const int64_t N = check_cu(cu_seqlens, B, fn, q);
    TORCH_CHECK(m0.has_value() == a0.has_value() && m0.has_value() == S0.has_value(), fn, ": give all of m0, a0, S0");
    TORCH_CHECK(causal || !m0.has_value(), fn, ": states exist only for causal=True");
    TORCH_CHECK(!causal || (mT.has_value() && aT.has_value() && ST.has_value()), fn, ": causal needs mT, aT, ST");
    check_state(m0, fn, "m0", q, {N, H, L});
    check_state(a0, fn, "a0", q, {N, H, L});
    check_state(S0, fn, "S0", q, {N, H, L, Dv});
    check_state(mT, fn, "mT", q, {N, H, L});
    check_state(aT, fn, "aT", q, {N, H, L});
    check_state(ST, fn, "ST", q, {N, H, L, Dv});
    check_out(o, fn, "o", q, q.scalar_type(), {B, T, H, Dv});
    const at::cuda::OptionalCUDAGuard guard(q.device());
    const flashts::scan::ScanSizes sz{B, T, H, L, L, Dv, N, cu_ptr(cu_seqlens)};
    const ScanFwdWs w = scan_fwd_workspace(false, sz, causal, q, fn);
    check_err(flashts::scan::latte_fwd(scan_dtype(q, fn), st4(q), st4(k), st4(v), sz, causal, opt_ptr(m0),
                                       opt_ptr(a0), opt_ptr(S0), o.data_ptr(), opt_mut_ptr(mT), opt_mut_ptr(aT),
                                       opt_mut_ptr(ST), w.opt, w.ptr(), w.bytes, at::cuda::getCurrentCUDAStream()),
              fn);
}

void latte_bwd(torch::Tensor dout, OptTensor daT, OptTensor dST, torch::Tensor q, torch::Tensor k, torch::Tensor v,
               OptTensor m0, OptTensor a0, OptTensor S0, OptTensor cu_seqlens, bool causal, torch::Tensor dq,
               torch::Tensor dk, torch::Tensor dv, OptTensor da0, OptTensor dS0) {
    const char* fn = "latte_bwd";
    check_latte_inputs(q, k, v, fn);
    check_same_input(dout, fn, "do", q);
    const int64_t B = q.size(0), T = q.size(1), H = q.size(2), L = q.size(3), Dv = v.size(3);
    TORCH_CHECK(dout.dim() == 4 && dout.sizes() == v.sizes(), fn, ": do must be [B, T, H, Dv]");
    const int64_t N = check_cu(cu_seqlens, B, fn, q);
    TORCH_CHECK(m0.has_value() == a0.has_value() && m0.has_value() == S0.has_value(), fn, ": give all of m0, a0, S0");
    TORCH_CHECK(causal || !(m0.has_value() || daT.has_value() || dST.has_value() || da0.has_value()), fn,
                ": states exist only for causal=True");
    check_state(m0, fn, "m0", q, {N, H, L});
    check_state(a0, fn, "a0", q, {N, H, L});
    check_state(S0, fn, "S0", q, {N, H, L, Dv});
    check_state(daT, fn, "daT", q, {N, H, L});
    check_state(dST, fn, "dST", q, {N, H, L, Dv});
    check_out(dq, fn, "dq", q, q.scalar_type(), {B, T, H, L});
    check_out(dk, fn, "dk", q, q.scalar_type(), {B, T, H, L});
    check_out(dv, fn, "dv", q, q.scalar_type(), {B, T, H, Dv});
    TORCH_CHECK(da0.has_value() == dS0.has_value(), fn, ": give both da0 and dS0 or neither");
    check_state(da0, fn, "da0", q, {N, H, L});
    check_state(dS0, fn, "dS0", q, {N, H, L, Dv});
    const at::cuda::OptionalCUDAGuard guard(q.device());
    const flashts::scan::ScanSizes sz{B, T, H, L, L, Dv, N, cu_ptr(cu_seqlens)};
    int64_t ws_floats = 0;  // causal: chunk states and cotangent maps (or the sequential fallback's arrays)
    check_err(flashts::scan::scan_bwd_workspace(false, sz, causal, &ws_floats), fn);
    torch::Tensor ws;
    if (ws_floats > 0) ws = torch::empty({ws_floats}, q.options().dtype(at::kFloat));
    check_err(flashts::scan::latte_bwd(scan_dtype(q, fn), st4(dout), st4(q), st4(k), st4(v), sz, causal, opt_ptr(m0),
                                       opt_ptr(a0), opt_ptr(S0), opt_ptr(daT), opt_ptr(dST),
                                       ws_floats > 0 ? ws.data_ptr<float>() : nullptr, ws_floats, dq.data_ptr(),
                                       dk.data_ptr(), dv.data_ptr(), opt_mut_ptr(da0), opt_mut_ptr(dS0),
                                       at::cuda::getCurrentCUDAStream()),
              fn);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.doc() = "flashts CUDA kernels";
    m.def("provided_ops", &provided_ops, "names of the ops this build implements for backend='cuda'");
    // linear attention (SPEC §1) and sliding-window attention (SPEC §2): csrc/<op>_bind.cpp
    register_linear_attention(m);
    register_sliding_window(m);
    // auto-correlation (SPEC §3)
    m.def("autocorr_cross_spectrum", &autocorr_cross_spectrum, "cross[b,f] (+)= inv_c sum_c qf conj(kf)",
          py::arg("qf"), py::arg("kf"), py::arg("cross"), py::arg("inv_c"), py::arg("accumulate"));
    m.def("autocorr_aggregate", &autocorr_aggregate, "time-delay aggregation (sign=+1) or its transpose (-1)",
          py::arg("x"), py::arg("delays"), py::arg("weights"), py::arg("sign"), py::arg("L"), py::arg("out"));
    m.def("autocorr_delay_dots", &autocorr_delay_dots, "dw[b,i] = <g, x shifted by delay i> (deterministic)",
          py::arg("g"), py::arg("x"), py::arg("delays"), py::arg("dw"));
    m.def("autocorr_delay_grad", &autocorr_delay_grad, "dw and the softmax backward scattered to the delays (dr)",
          py::arg("g"), py::arg("x"), py::arg("delays"), py::arg("weights"), py::arg("dweights"), py::arg("dw"),
          py::arg("dr"));
    m.def("autocorr_spectrum_grad", &autocorr_spectrum_grad, "in place: kf *= s*drf, qf *= conj(s*drf)",
          py::arg("qf"), py::arg("kf"), py::arg("drf"), py::arg("scale"));
    // Aaren (SPEC §4) and Latte (SPEC §5)
    m.def("aaren_fwd", &aaren_fwd, "Aaren forward", py::arg("q"), py::arg("k"), py::arg("v"), py::arg("m0"),
          py::arg("u0"), py::arg("w0"), py::arg("cu_seqlens"), py::arg("scale"), py::arg("o"), py::arg("mT"),
          py::arg("uT"), py::arg("wT"));
    m.def("aaren_bwd", &aaren_bwd, "Aaren backward", py::arg("do"), py::arg("duT"), py::arg("dwT"), py::arg("q"),
          py::arg("k"), py::arg("v"), py::arg("m0"), py::arg("u0"), py::arg("w0"), py::arg("cu_seqlens"),
          py::arg("scale"), py::arg("dq_rows"), py::arg("dk"), py::arg("dv"), py::arg("du0"), py::arg("dw0"));
    m.def("latte_fwd", &latte_fwd, "Latte forward", py::arg("q"), py::arg("k"), py::arg("v"), py::arg("m0"),
          py::arg("a0"), py::arg("S0"), py::arg("cu_seqlens"), py::arg("causal"), py::arg("o"), py::arg("mT"),
          py::arg("aT"), py::arg("ST"));
    m.def("latte_bwd", &latte_bwd, "Latte backward", py::arg("do"), py::arg("daT"), py::arg("dST"), py::arg("q"),
          py::arg("k"), py::arg("v"), py::arg("m0"), py::arg("a0"), py::arg("S0"), py::arg("cu_seqlens"),
          py::arg("causal"), py::arg("dq"), py::arg("dk"), py::arg("dv"), py::arg("da0"), py::arg("dS0"));
}
