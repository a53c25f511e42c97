// flashts._C — torch custom ops of the decode-step kernels (csrc/decode_step.{h,cu}), registered with
// TORCH_LIBRARY under the namespace `flashts_cuda` (torch.ops.flashts_cuda.<name>): no Python in the hot path.
//
// Every op mutates its state (and writes its preallocated output `o`) in place and returns nothing. It
// allocates nothing and never synchronises with the host, so it can be captured in a CUDA graph; the one
// exception to "one kernel per step" is swa_decode_step, which advances `pos` (pos += 1) with a second
// in-place launch after the attention kernel (every block of the step must read the old pos first), and
// macchiato_decode_step, which advances n_win (n_win = min(n_win + 1, W), two tiny in-place launches) likewise.
// Shapes (one time step; the T = 1 axis squeezed; q, k, v any strides, states contiguous float32, o
// contiguous in q's dtype; a state given as float32 zeros with maxima −inf is the empty state):
//   linear_decode_step(q [B,H,D], k [B,Hk,D], v [B,Hk,Dv], S! [B,H,D,Dv], z! [B,H,D], o! [B,H,Dv],
//                      feature_map (0 elu+1, 1 relu, 2 identity), normalize, scale, eps)
//   aaren_decode_step(q [H,D] or [B,H,D], k [B,H,D], v [B,H,Dv], m! [B,H], u! [B,H], w! [B,H,Dv], o! [B,H,Dv], scale)
//   latte_decode_step(q [B,H,L], k [B,H,L], v [B,H,Dv], m! [B,H,L], alpha! [B,H,L], S! [B,H,L,Dv], o! [B,H,Dv])
//   swa_decode_step(q [B,H,D], k [B,Hk,D], v [B,Hk,Dv], k_cache! [B,W,Hk,D], v_cache! [B,W,Hk,Dv], pos! [B] int64,
//                   o! [B,H,Dv], scale): window (W-1, 0) on a ring of W slots (token n in slot n mod W).
//   macchiato_decode_step(q [B,H,D], k [B,H,D], v [B,H,Dv], mix [B,H,L+1], latent_k [B,H,L], k_win! [B,W,H,D],
//                   v_win! [B,W,H,Dv], n_win! [B] int32, m! [B,H,L], alpha! [B,H,L], S! [B,H,L,Dv], o! [B,H,Dv],
//                   scale): SPEC §7 with W = left; the window cache right-aligned, shifted left by one slot.
// The Meta implementations do nothing (the ops return nothing), so torch.compile can trace them.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "decode_step.h"

namespace {

namespace dec = flashts::decode;

dec::DType dtype_of(const at::Tensor& t, const char* fn) {
    switch (t.scalar_type()) {
        case at::kFloat: return dec::DType::F32;
        case at::kHalf: return dec::DType::F16;
        case at::kBFloat16: return dec::DType::BF16;
        default: break;
    }
    TORCH_CHECK(false, fn, ": expected float32, float16 or bfloat16, got ", t.scalar_type());
    return dec::DType::F32;
}

dec::In3 in3(const at::Tensor& t) { return dec::In3{t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)}; }

void check_in(const at::Tensor& t, const char* fn, const char* name, const at::Tensor& q, int64_t B, int64_t H,
              int64_t X) {
    TORCH_CHECK(t.is_cuda() && t.device() == q.device(), fn, ": ", name, " must be on ", q.device());
    TORCH_CHECK(t.scalar_type() == q.scalar_type(), fn, ": ", name, " must be ", q.scalar_type(), ", got ",
                t.scalar_type());
    TORCH_CHECK(t.dim() == 3 && t.size(0) == B && t.size(1) == H && t.size(2) == X, fn, ": ", name,
                " must be [", B, ", ", H, ", ", X, "], got ", t.sizes());
}

void check_buf(const at::Tensor& t, const char* fn, const char* name, const at::Tensor& q, at::ScalarType dtype,
               at::IntArrayRef shape) {
    TORCH_CHECK(t.is_cuda() && t.device() == q.device(), fn, ": ", name, " must be on ", q.device());
    TORCH_CHECK(t.scalar_type() == dtype, fn, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
    TORCH_CHECK(t.sizes() == shape, fn, ": ", name, " must have shape ", shape, ", got ", t.sizes());
    TORCH_CHECK(t.is_contiguous(), fn, ": ", name, " must be contiguous");
}

void check_err(cudaError_t err, const char* fn) {
    TORCH_CHECK(err == cudaSuccess, fn, ": CUDA error: ", cudaGetErrorString(err));
}

void linear_decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& S,
                        at::Tensor& z, at::Tensor& o, int64_t feature_map, bool normalize, double scale,
                        double eps) {
    const char* fn = "linear_decode_step";
    TORCH_CHECK(q.is_cuda() && q.dim() == 3, fn, ": q must be a CUDA tensor [B, H, D]");
    const int64_t B = q.size(0), H = q.size(1), D = q.size(2), Hk = k.dim() == 3 ? k.size(1) : 0;
    const int64_t Dv = v.dim() == 3 ? v.size(2) : 0;
    TORCH_CHECK(Hk > 0 && H % Hk == 0, fn, ": k must be [B, Hk, D] with H % Hk == 0");
    check_in(k, fn, "k", q, B, Hk, D);
    check_in(v, fn, "v", q, B, Hk, Dv);
    check_buf(S, fn, "S", q, at::kFloat, {B, H, D, Dv});
    check_buf(z, fn, "z", q, at::kFloat, {B, H, D});
    check_buf(o, fn, "o", q, q.scalar_type(), {B, H, Dv});
    const c10::cuda::CUDAGuard guard(q.device());
    check_err(dec::linear_step(dtype_of(q, fn), in3(q), in3(k), in3(v), B, H, Hk, D, Dv,
                               static_cast<int>(feature_map), normalize, static_cast<float>(scale),
                               static_cast<float>(eps), S.data_ptr<float>(), z.data_ptr<float>(),
                               S.data_ptr<float>(), z.data_ptr<float>(), o.data_ptr(),
                               c10::cuda::getCurrentCUDAStream()),
              fn);
}

void aaren_decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& m, at::Tensor& u,
                       at::Tensor& w, at::Tensor& o, double scale) {
    const char* fn = "aaren_decode_step";
    TORCH_CHECK(k.is_cuda() && k.dim() == 3, fn, ": k must be a CUDA tensor [B, H, D]");
    const int64_t B = k.size(0), H = k.size(1), D = k.size(2), Dv = v.dim() == 3 ? v.size(2) : 0;
    TORCH_CHECK(q.is_cuda() && q.device() == k.device() && q.scalar_type() == k.scalar_type(), fn,
                ": q must be on k's device with k's dtype");
    dec::In3 qi;
    if (q.dim() == 2) {
        TORCH_CHECK(q.size(0) == H && q.size(1) == D, fn, ": q must be [H, D] or [B, H, D], got ", q.sizes());
        qi = dec::In3{q.data_ptr(), 0, q.stride(0), q.stride(1)};
    } else {
        check_in(q, fn, "q", k, B, H, D);
        qi = in3(q);
    }
    check_in(v, fn, "v", k, B, H, Dv);
    check_buf(m, fn, "m", k, at::kFloat, {B, H});
    check_buf(u, fn, "u", k, at::kFloat, {B, H});
    check_buf(w, fn, "w", k, at::kFloat, {B, H, Dv});
    check_buf(o, fn, "o", k, k.scalar_type(), {B, H, Dv});
    const c10::cuda::CUDAGuard guard(k.device());
    check_err(dec::aaren_step(dtype_of(k, fn), qi, in3(k), in3(v), B, H, D, Dv, static_cast<float>(scale),
                              m.data_ptr<float>(), u.data_ptr<float>(), w.data_ptr<float>(), m.data_ptr<float>(),
                              u.data_ptr<float>(), w.data_ptr<float>(), o.data_ptr(),
                              c10::cuda::getCurrentCUDAStream()),
              fn);
}

void latte_decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& m,
                       at::Tensor& alpha, at::Tensor& S, at::Tensor& o) {
    const char* fn = "latte_decode_step";
    TORCH_CHECK(q.is_cuda() && q.dim() == 3, fn, ": q must be a CUDA tensor [B, H, L]");
    const int64_t B = q.size(0), H = q.size(1), L = q.size(2), Dv = v.dim() == 3 ? v.size(2) : 0;
    check_in(k, fn, "k", q, B, H, L);
    check_in(v, fn, "v", q, B, H, Dv);
    check_buf(m, fn, "m", q, at::kFloat, {B, H, L});
    check_buf(alpha, fn, "alpha", q, at::kFloat, {B, H, L});
    check_buf(S, fn, "S", q, at::kFloat, {B, H, L, Dv});
    check_buf(o, fn, "o", q, q.scalar_type(), {B, H, Dv});
    const c10::cuda::CUDAGuard guard(q.device());
    check_err(dec::latte_step(dtype_of(q, fn), in3(q), in3(k), in3(v), B, H, L, Dv, m.data_ptr<float>(),
                              alpha.data_ptr<float>(), S.data_ptr<float>(), m.data_ptr<float>(),
                              alpha.data_ptr<float>(), S.data_ptr<float>(), o.data_ptr(),
                              c10::cuda::getCurrentCUDAStream()),
              fn);
}

void swa_decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache,
                     at::Tensor& v_cache, at::Tensor& pos, at::Tensor& o, double scale) {
    const char* fn = "swa_decode_step";
    TORCH_CHECK(q.is_cuda() && q.dim() == 3, fn, ": q must be a CUDA tensor [B, H, D]");
    const int64_t B = q.size(0), H = q.size(1), D = q.size(2), Hk = k.dim() == 3 ? k.size(1) : 0;
    const int64_t Dv = v.dim() == 3 ? v.size(2) : 0;
    TORCH_CHECK(Hk > 0 && H % Hk == 0, fn, ": k must be [B, Hk, D] with H % Hk == 0");
    TORCH_CHECK(k_cache.dim() == 4 && k_cache.size(1) > 0, fn, ": k_cache must be [B, W, Hk, D] with W >= 1");
    const int64_t W = k_cache.size(1);
    check_in(k, fn, "k", q, B, Hk, D);
    check_in(v, fn, "v", q, B, Hk, Dv);
    check_buf(k_cache, fn, "k_cache", q, q.scalar_type(), {B, W, Hk, D});
    check_buf(v_cache, fn, "v_cache", q, q.scalar_type(), {B, W, Hk, Dv});
    check_buf(pos, fn, "pos", q, at::kLong, {B});
    check_buf(o, fn, "o", q, q.scalar_type(), {B, H, Dv});
    const c10::cuda::CUDAGuard guard(q.device());
    check_err(dec::swa_ring_step(dtype_of(q, fn), in3(q), in3(k), in3(v), B, H, Hk, D, Dv, W,
                                 static_cast<float>(scale), k_cache.data_ptr(), v_cache.data_ptr(),
                                 pos.data_ptr<int64_t>(), o.data_ptr(), c10::cuda::getCurrentCUDAStream()),
              fn);
    pos.add_(1);
}

void macchiato_decode_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mix,
                           const at::Tensor& latent_k, at::Tensor& k_win, at::Tensor& v_win, at::Tensor& n_win,
                           at::Tensor& m, at::Tensor& alpha, at::Tensor& S, at::Tensor& o, double scale) {
    const char* fn = "macchiato_decode_step";
    TORCH_CHECK(q.is_cuda() && q.dim() == 3, fn, ": q must be a CUDA tensor [B, H, D]");
    const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
    const int64_t Dv = v.dim() == 3 ? v.size(2) : 0, L = latent_k.dim() == 3 ? latent_k.size(2) : 0;
    TORCH_CHECK(L > 0, fn, ": latent_k must be [B, H, L] with L >= 1");
    TORCH_CHECK(k_win.dim() == 4, fn, ": k_win must be [B, W, H, D]");
    const int64_t W = k_win.size(1);
    check_in(k, fn, "k", q, B, H, D);
    check_in(v, fn, "v", q, B, H, Dv);
    check_in(mix, fn, "mix", q, B, H, L + 1);
    check_in(latent_k, fn, "latent_k", q, B, H, L);
    check_buf(k_win, fn, "k_win", q, at::kFloat, {B, W, H, D});
    check_buf(v_win, fn, "v_win", q, at::kFloat, {B, W, H, Dv});
    check_buf(n_win, fn, "n_win", q, at::kInt, {B});
    check_buf(m, fn, "m", q, at::kFloat, {B, H, L});
    check_buf(alpha, fn, "alpha", q, at::kFloat, {B, H, L});
    check_buf(S, fn, "S", q, at::kFloat, {B, H, L, Dv});
    check_buf(o, fn, "o", q, q.scalar_type(), {B, H, Dv});
    const c10::cuda::CUDAGuard guard(q.device());
    check_err(dec::macchiato_step(dtype_of(q, fn), in3(q), in3(k), in3(v), in3(mix), in3(latent_k), B, H, D, Dv, L,
                                  W, static_cast<float>(scale), k_win.data_ptr<float>(), v_win.data_ptr<float>(),
                                  n_win.data_ptr<int>(), m.data_ptr<float>(), alpha.data_ptr<float>(),
                                  S.data_ptr<float>(), o.data_ptr(), c10::cuda::getCurrentCUDAStream()),
              fn);
    n_win.add_(1).clamp_max_(W);
}

// Meta (fake) implementations: the ops only mutate their arguments.
void linear_decode_step_meta(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&,
                             at::Tensor&, int64_t, bool, double, double) {}
void aaren_decode_step_meta(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&,
                            at::Tensor&, at::Tensor&, double) {}
void latte_decode_step_meta(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&,
                            at::Tensor&, at::Tensor&) {}
void swa_decode_step_meta(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&,
                          at::Tensor&, at::Tensor&, double) {}
void macchiato_decode_step_meta(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&,
                                at::Tensor&, at::Tensor&, double) {}

}  // namespace

TORCH_LIBRARY(flashts_cuda, m) {
    m.def("linear_decode_step(Tensor q, Tensor k, Tensor v, Tensor(a!) S, Tensor(b!) z, Tensor(c!) o, "
          "int feature_map, bool normalize, float scale, float eps) -> ()");
    m.def("aaren_decode_step(Tensor q, Tensor k, Tensor v, Tensor(a!) m, Tensor(b!) u, Tensor(c!) w, "
          "Tensor(d!) o, float scale) -> ()");
    m.def("latte_decode_step(Tensor q, Tensor k, Tensor v, Tensor(a!) m, Tensor(b!) alpha, Tensor(c!) S, "
          "Tensor(d!) o) -> ()");
    m.def("swa_decode_step(Tensor q, Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, "
          "Tensor(c!) pos, Tensor(d!) o, float scale) -> ()");
    m.def("macchiato_decode_step(Tensor q, Tensor k, Tensor v, Tensor mix, Tensor latent_k, Tensor(a!) k_win, "
          "Tensor(b!) v_win, Tensor(c!) n_win, Tensor(d!) m, Tensor(e!) alpha, Tensor(f!) S, Tensor(g!) o, "
          "float scale) -> ()");
}

TORCH_LIBRARY_IMPL(flashts_cuda, CUDA, m) {
    m.impl("linear_decode_step", &linear_decode_step);
    m.impl("aaren_decode_step", &aaren_decode_step);
    m.impl("latte_decode_step", &latte_decode_step);
    m.impl("swa_decode_step", &swa_decode_step);
    m.impl("macchiato_decode_step", &macchiato_decode_step);
}

TORCH_LIBRARY_IMPL(flashts_cuda, Meta, m) {
    m.impl("linear_decode_step", &linear_decode_step_meta);
    m.impl("aaren_decode_step", &aaren_decode_step_meta);
    m.impl("latte_decode_step", &latte_decode_step_meta);
    m.impl("swa_decode_step", &swa_decode_step_meta);
    m.impl("macchiato_decode_step", &macchiato_decode_step_meta);
}
