// flashts._C — torch binding of the sliding-window attention kernels (csrc/sliding_window.{h,cu}).
//
// The Python backend (flashts/cuda_ops/sliding_window.py) allocates every output (so tests can NaN-poison
// them) and passes it in; this file checks devices, dtypes, shapes and contiguity, takes the current stream
// and calls the plain launchers. Inputs q, k, v, do, o go with their strides (no copies).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <optional>

#include "bind_registry.h"
#include "sliding_window.h"

namespace {

namespace sw = flashts::swa;

sw::DType kernel_dtype(const at::Tensor& t) {
    switch (t.scalar_type()) {
        case at::kFloat:
            return sw::DType::F32;
        case at::kHalf:
            return sw::DType::F16;
        case at::kBFloat16:
            return sw::DType::BF16;
        default:
            break;
    }
    TORCH_CHECK(false, "sliding_window_attention (cuda): expected float32, float16 or bfloat16 inputs, got ",
                t.scalar_type());
    return sw::DType::F32;  // not reached
}

sw::SwaInput input_of(const at::Tensor& t) {
    return sw::SwaInput{t.data_ptr(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

void check_input(const at::Tensor& t, const char* name, const at::Tensor& q, int64_t heads, int64_t dim) {
    TORCH_CHECK(t.is_cuda() && t.device() == q.device(), "sliding_window_attention (cuda): ", name, " must be on ",
                q.device(), ", got ", t.device());
    TORCH_CHECK(t.scalar_type() == q.scalar_type(), "sliding_window_attention (cuda): ", name, " must have dtype ",
                q.scalar_type(), ", got ", t.scalar_type());
    TORCH_CHECK(t.dim() == 4 && t.size(0) == q.size(0) && t.size(1) == q.size(1) && t.size(2) == heads &&
                    t.size(3) == dim,
                "sliding_window_attention (cuda): ", name, " must be [", q.size(0), ", ", q.size(1), ", ", heads,
                ", ", dim, "], got ", t.sizes());
}

// float32 contiguous tensor of the given shape on q's device, or nullptr when absent.
const float* f32_ptr(const std::optional<at::Tensor>& t, const char* name, at::IntArrayRef shape,
                     const at::Tensor& q) {
    if (!t.has_value()) return nullptr;
    const at::Tensor& x = *t;
    TORCH_CHECK(x.is_cuda() && x.device() == q.device() && x.scalar_type() == at::kFloat && x.is_contiguous() &&
                    x.sizes() == shape,
                "sliding_window_attention (cuda): ", name, " must be a contiguous float32 tensor ", shape, " on ",
                q.device(), ", got ", x.scalar_type(), " ", x.sizes(), " on ", x.device());
    return x.data_ptr<float>();
}

void check_output(const at::Tensor& t, const char* name, at::IntArrayRef shape, at::ScalarType dtype,
                  const at::Tensor& q) {
    TORCH_CHECK(t.is_cuda() && t.device() == q.device() && t.scalar_type() == dtype && t.is_contiguous() &&
                    t.sizes() == shape,
                "sliding_window_attention (cuda): ", name, " must be a contiguous ", dtype, " tensor ", shape,
                " on ", q.device(), ", got ", t.scalar_type(), " ", t.sizes(), " on ", t.device());
}

sw::SwaSizes sizes_of(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const std::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen) {
    TORCH_CHECK(q.is_cuda() && q.dim() == 4, "sliding_window_attention (cuda): q must be a CUDA tensor [B, T, H, D]");
    TORCH_CHECK(k.dim() == 4 && v.dim() == 4, "sliding_window_attention (cuda): k and v must be 4-D");
    check_input(k, "k", q, k.size(2), q.size(3));
    check_input(v, "v", q, k.size(2), v.size(3));
    TORCH_CHECK(q.size(2) % k.size(2) == 0, "sliding_window_attention (cuda): H=", q.size(2),
                " must be a multiple of Hk=", k.size(2));
    sw::SwaSizes sz{};
    sz.B = q.size(0);
    sz.T = q.size(1);
    sz.H = q.size(2);
    sz.Hk = k.size(2);
    sz.D = q.size(3);
    sz.Dv = v.size(3);
    sz.N = sz.B;
    sz.cu_seqlens = nullptr;
    sz.max_seqlen = sz.T;
    if (cu_seqlens.has_value()) {
        const at::Tensor& cu = *cu_seqlens;
        TORCH_CHECK(cu.is_cuda() && cu.device() == q.device() && cu.scalar_type() == at::kInt && cu.dim() == 1 &&
                        cu.is_contiguous() && cu.numel() >= 2 && sz.B == 1,
                    "sliding_window_attention (cuda): cu_seqlens must be a contiguous int32 [N+1] tensor on q's "
                    "device (and B == 1)");
        sz.N = cu.numel() - 1;
        sz.cu_seqlens = cu.data_ptr<int32_t>();
        sz.max_seqlen = max_seqlen;
    }
    TORCH_CHECK(sz.D <= sw::kMaxHeadDim && sz.Dv <= sw::kMaxHeadDim, "sliding_window_attention (cuda): head dims up to ",
                sw::kMaxHeadDim, " are supported, got D=", sz.D, ", Dv=", sz.Dv);
    return sz;
}

void sliding_window_attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const std::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen, int64_t left,
                                  int64_t right, double scale, const at::Tensor& o, const at::Tensor& lse) {
    const sw::SwaSizes sz = sizes_of(q, k, v, cu_seqlens, max_seqlen);
    TORCH_CHECK(left >= -1 && right >= -1, "sliding_window_attention (cuda): window sides must be >= -1");
    const c10::cuda::CUDAGuard guard(q.device());
    check_output(o, "o", {sz.B, sz.T, sz.H, sz.Dv}, q.scalar_type(), q);
    check_output(lse, "lse", {sz.B, sz.H, sz.T}, at::kFloat, q);
    const cudaError_t err =
        sw::sliding_window_fwd(kernel_dtype(q), input_of(q), input_of(k), input_of(v), sz, left, right,
                               static_cast<float>(scale), o.data_ptr(), lse.data_ptr<float>(),
                               at::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, "sliding_window_attention_fwd (cuda) failed: ", cudaGetErrorString(err));
}

void sliding_window_attention_bwd(const at::Tensor& dout, const std::optional<at::Tensor>& dlse, const at::Tensor& q,
                                  const at::Tensor& k, const at::Tensor& v, const at::Tensor& o,
                                  const at::Tensor& lse, const std::optional<at::Tensor>& cu_seqlens,
                                  int64_t max_seqlen, int64_t left, int64_t right, double scale,
                                  const at::Tensor& delta, const at::Tensor& dq, const at::Tensor& dk,
                                  const at::Tensor& dv) {
    const sw::SwaSizes sz = sizes_of(q, k, v, cu_seqlens, max_seqlen);
    TORCH_CHECK(left >= -1 && right >= -1, "sliding_window_attention (cuda): window sides must be >= -1");
    check_input(dout, "do", q, sz.H, sz.Dv);
    check_input(o, "o", q, sz.H, sz.Dv);
    const c10::cuda::CUDAGuard guard(q.device());
    const float* lse_p = f32_ptr(lse, "lse", {sz.B, sz.H, sz.T}, q);
    const float* dlse_p = f32_ptr(dlse, "dlse", {sz.B, sz.H, sz.T}, q);
    check_output(delta, "delta", {sz.B, sz.H, sz.T}, at::kFloat, q);
    check_output(dq, "dq", {sz.B, sz.T, sz.H, sz.D}, q.scalar_type(), q);
    check_output(dk, "dk", {sz.B, sz.T, sz.Hk, sz.D}, q.scalar_type(), q);
    check_output(dv, "dv", {sz.B, sz.T, sz.Hk, sz.Dv}, q.scalar_type(), q);
    const cudaError_t err = sw::sliding_window_bwd(
        kernel_dtype(q), input_of(dout), input_of(q), input_of(k), input_of(v), input_of(o), lse_p, dlse_p, sz, left,
        right, static_cast<float>(scale), delta.data_ptr<float>(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
        at::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, "sliding_window_attention_bwd (cuda) failed: ", cudaGetErrorString(err));
}

}  // namespace

void register_sliding_window(pybind11::module_& m) {
    namespace py = pybind11;
    m.attr("sliding_window_max_head_dim") = sw::kMaxHeadDim;
    m.def("sliding_window_attention_fwd", &sliding_window_attention_fwd,
          "sliding-window attention forward into preallocated o [B,T,H,Dv] and lse [B,H,T] (float32)", py::arg("q"),
          py::arg("k"), py::arg("v"), py::arg("cu_seqlens"), py::arg("max_seqlen"), py::arg("left"), py::arg("right"),
          py::arg("scale"), py::arg("o"), py::arg("lse"));
    m.def("sliding_window_attention_bwd", &sliding_window_attention_bwd,
          "sliding-window attention backward into preallocated dq, dk, dv (input dtype); delta [B,H,T] float32 "
          "workspace",
          py::arg("do"), py::arg("dlse"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("o"), py::arg("lse"),
          py::arg("cu_seqlens"), py::arg("max_seqlen"), py::arg("left"), py::arg("right"), py::arg("scale"),
          py::arg("delta"), py::arg("dq"), py::arg("dk"), py::arg("dv"));
}
