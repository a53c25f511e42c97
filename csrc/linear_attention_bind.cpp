// flashts._C — torch binding of the linear-attention kernels (csrc/linear_attention.{h,cu}).
//
// The Python backend (flashts/cuda_ops/linear.py) allocates every output (so tests can NaN-poison them) and
// passes it in; this file checks devices, dtypes, shapes and contiguity, takes the current stream and calls
// the plain launchers. Inputs q, k, v, do, o go with their strides (no copies). The forward passes the device's
// SM count and shared-memory limit (the launch plan's occupancy rule, csrc/linear_attention.h FwdPlan) and
// allocates the chunk-parallel mode's float32 workspace from the caching allocator.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <optional>
#include <string>
#include <vector>

#include "bind_registry.h"
#include "linear_attention.h"

namespace {

namespace la = flashts::linear;

la::DType kernel_dtype(const at::Tensor& t) {
    switch (t.scalar_type()) {
        case at::kFloat:
            return la::DType::F32;
        case at::kHalf:
            return la::DType::F16;
        case at::kBFloat16:
            return la::DType::BF16;
        default:
            break;
    }
    TORCH_CHECK(false, "linear_attention (cuda): expected float32, float16 or bfloat16 inputs, got ", t.scalar_type());
    return la::DType::F32;  // not reached
}

la::FeatureMap feature_map_of(const std::string& name) {
    if (name == "elu") return la::FeatureMap::Elu;
    if (name == "relu") return la::FeatureMap::Relu;
    if (name == "identity") return la::FeatureMap::Identity;
    TORCH_CHECK(false, "linear_attention (cuda): feature_map must be 'elu', 'relu' or 'identity', got '", name, "'");
    return la::FeatureMap::Identity;  // not reached
}

la::FwdMode fwd_mode_of(const std::string& name) {
    if (name == "auto") return la::FwdMode::Auto;
    if (name == "one_pass") return la::FwdMode::OnePass;
    if (name == "chunked") return la::FwdMode::Chunked;
    TORCH_CHECK(false, "linear_attention (cuda): fwd_mode must be 'auto', 'one_pass' or 'chunked', got '", name, "'");
    return la::FwdMode::Auto;  // not reached
}

la::LinInput input_of(const at::Tensor& t) {
    return la::LinInput{t.data_ptr(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

void check_input(const at::Tensor& t, const char* name, const at::Tensor& q, int64_t B, int64_t T) {
    TORCH_CHECK(t.is_cuda() && t.device() == q.device(), "linear_attention (cuda): ", name, " must be on ", q.device(),
                ", got ", t.device());
    TORCH_CHECK(t.dim() == 4 && t.size(0) == B && t.size(1) == T, "linear_attention (cuda): ", name,
                " must be [B=", B, ", T=", T, ", heads, dim], got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == q.scalar_type(), "linear_attention (cuda): ", name, " must have dtype ",
                q.scalar_type(), ", got ", t.scalar_type());
}

// A float32 contiguous tensor of the given shape on q's device (input or output), or nullptr when absent.
float* f32_ptr(const std::optional<at::Tensor>& t, const char* name, at::IntArrayRef shape, const at::Tensor& q) {
    if (!t.has_value()) return nullptr;
    const at::Tensor& x = *t;
    TORCH_CHECK(x.is_cuda() && x.device() == q.device(), "linear_attention (cuda): ", name, " must be on ",
                q.device(), ", got ", x.device());
    TORCH_CHECK(x.scalar_type() == at::kFloat, "linear_attention (cuda): ", name, " must be float32, got ",
                x.scalar_type());
    TORCH_CHECK(x.is_contiguous(), "linear_attention (cuda): ", name, " must be contiguous");
    TORCH_CHECK(x.sizes() == shape, "linear_attention (cuda): ", name, " must have shape ", shape, ", got ",
                x.sizes());
    return x.data_ptr<float>();
}

void check_output(const at::Tensor& t, const char* name, at::IntArrayRef shape, at::ScalarType dtype,
                  const at::Tensor& q) {
    TORCH_CHECK(t.is_cuda() && t.device() == q.device(), "linear_attention (cuda): ", name, " must be on ",
                q.device());
    TORCH_CHECK(t.scalar_type() == dtype, "linear_attention (cuda): ", name, " must have dtype ", dtype, ", got ",
                t.scalar_type());
    TORCH_CHECK(t.is_contiguous() && t.sizes() == shape, "linear_attention (cuda): ", name,
                " must be contiguous with shape ", shape, ", got ", t.sizes());
}

struct Common {
    la::LinSizes sz;
    la::LinOptions opt;
};

Common common(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
              const std::optional<at::Tensor>& cu_seqlens, bool causal, const std::string& feature_map,
              bool normalize, double scale, double eps) {
    TORCH_CHECK(q.is_cuda() && q.dim() == 4, "linear_attention (cuda): q must be a CUDA tensor [B, T, H, D]");
    const int64_t B = q.size(0), T = q.size(1);
    check_input(k, "k", q, B, T);
    check_input(v, "v", q, B, T);
    TORCH_CHECK(k.size(3) == q.size(3), "linear_attention (cuda): k must have head dim ", q.size(3));
    TORCH_CHECK(v.size(2) == k.size(2) && q.size(2) % k.size(2) == 0,
                "linear_attention (cuda): bad head counts q ", q.size(2), ", k ", k.size(2), ", v ", v.size(2));
    Common c{};
    c.sz.B = B;
    c.sz.T = T;
    c.sz.H = q.size(2);
    c.sz.Hk = k.size(2);
    c.sz.D = q.size(3);
    c.sz.Dv = v.size(3);
    c.sz.N = B;
    c.sz.cu_seqlens = nullptr;
    if (cu_seqlens.has_value()) {
        const at::Tensor& cu = *cu_seqlens;
        TORCH_CHECK(cu.is_cuda() && cu.device() == q.device() && cu.scalar_type() == at::kInt && cu.dim() == 1 &&
                        cu.is_contiguous() && cu.numel() >= 2 && B == 1,
                    "linear_attention (cuda): cu_seqlens must be a contiguous int32 [N+1] tensor on q's device "
                    "(and B == 1)");
        c.sz.N = cu.numel() - 1;
        c.sz.cu_seqlens = cu.data_ptr<int32_t>();
    }
    TORCH_CHECK(c.sz.D <= la::kMaxHeadDim && c.sz.Dv <= la::kMaxHeadDim, "linear_attention (cuda): head dims up to ",
                la::kMaxHeadDim, " are supported, got D=", c.sz.D, ", Dv=", c.sz.Dv);
    c.opt.causal = causal;
    c.opt.feature_map = feature_map_of(feature_map);
    c.opt.normalize = normalize;
    c.opt.scale = static_cast<float>(scale);
    c.opt.eps = static_cast<float>(eps);
    return c;
}

void linear_attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::optional<at::Tensor>& S0, const std::optional<at::Tensor>& z0,
                          const std::optional<at::Tensor>& cu_seqlens, bool causal, const std::string& feature_map,
                          bool normalize, double scale, double eps, const at::Tensor& o, const at::Tensor& S_T,
                          const at::Tensor& z_T, const std::string& fwd_mode) {
    Common c = common(q, k, v, cu_seqlens, causal, feature_map, normalize, scale, eps);
    const la::LinSizes& sz = c.sz;
    const c10::cuda::CUDAGuard guard(q.device());
    const cudaDeviceProp* props = at::cuda::getCurrentDeviceProperties();
    c.opt.sm_count = props->multiProcessorCount;
    c.opt.max_smem = static_cast<int>(props->sharedMemPerBlockOptin);
    c.opt.fwd_mode = fwd_mode_of(fwd_mode);
    la::FwdPlan plan{};
    cudaError_t perr = la::linear_attention_fwd_plan(kernel_dtype(q), sz, c.opt, &plan);
    TORCH_CHECK(perr == cudaSuccess, "linear_attention_fwd (cuda): no launch plan: ", cudaGetErrorString(perr));
    at::Tensor workspace;
    if (plan.workspace_bytes > 0) workspace = at::empty({plan.workspace_bytes}, q.options().dtype(at::kByte));
    const float* s0 = f32_ptr(S0, "initial_state S", {sz.N, sz.H, sz.D, sz.Dv}, q);
    const float* zz0 = f32_ptr(z0, "initial_state z", {sz.N, sz.H, sz.D}, q);
    check_output(o, "o", {sz.B, sz.T, sz.H, sz.Dv}, q.scalar_type(), q);
    check_output(S_T, "S_T", {sz.N, sz.H, sz.D, sz.Dv}, at::kFloat, q);
    check_output(z_T, "z_T", {sz.N, sz.H, sz.D}, at::kFloat, q);
    const cudaError_t err = la::linear_attention_fwd(
        kernel_dtype(q), input_of(q), input_of(k), input_of(v), sz, c.opt, s0, zz0, o.data_ptr(),
        S_T.data_ptr<float>(), z_T.data_ptr<float>(), plan.workspace_bytes > 0 ? workspace.data_ptr() : nullptr,
        plan.workspace_bytes, at::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, "linear_attention_fwd (cuda) failed: ", cudaGetErrorString(err));
}

void linear_attention_bwd(const at::Tensor& dout, const std::optional<at::Tensor>& dS_T,
                          const std::optional<at::Tensor>& dz_T, const at::Tensor& q, const at::Tensor& k,
                          const at::Tensor& v, const at::Tensor& o, const std::optional<at::Tensor>& S0,
                          const std::optional<at::Tensor>& z0, const std::optional<at::Tensor>& cu_seqlens,
                          bool causal, const std::string& feature_map, bool normalize, double scale, double eps,
                          const std::optional<at::Tensor>& ws_inv, const std::optional<at::Tensor>& ws_dden,
                          const at::Tensor& dq, const at::Tensor& dk_heads, const at::Tensor& dv_heads,
                          const std::optional<at::Tensor>& dS0, const std::optional<at::Tensor>& dz0,
                          const std::string& fwd_mode) {
    Common c = common(q, k, v, cu_seqlens, causal, feature_map, normalize, scale, eps);
    const la::LinSizes& sz = c.sz;
    check_input(dout, "do", q, sz.B, sz.T);
    check_input(o, "o", q, sz.B, sz.T);
    TORCH_CHECK(dout.size(2) == sz.H && dout.size(3) == sz.Dv && o.size(2) == sz.H && o.size(3) == sz.Dv,
                "linear_attention (cuda): do and o must be [B, T, H, Dv]");
    const c10::cuda::CUDAGuard guard(q.device());
    const float* s0 = f32_ptr(S0, "initial_state S", {sz.N, sz.H, sz.D, sz.Dv}, q);
    const float* zz0 = f32_ptr(z0, "initial_state z", {sz.N, sz.H, sz.D}, q);
    const float* ds_t = f32_ptr(dS_T, "dS_T", {sz.N, sz.H, sz.D, sz.Dv}, q);
    const float* dz_t = f32_ptr(dz_T, "dz_T", {sz.N, sz.H, sz.D}, q);
    float* w_inv = f32_ptr(ws_inv, "ws_inv", {sz.B, sz.T, sz.H}, q);
    float* w_dden = f32_ptr(ws_dden, "ws_dden", {sz.B, sz.T, sz.H}, q);
    TORCH_CHECK(!normalize || (w_inv != nullptr && w_dden != nullptr),
                "linear_attention_bwd (cuda): normalize=True needs the ws_inv and ws_dden workspaces");
    float* ds0 = f32_ptr(dS0, "dS0", {sz.N, sz.H, sz.D, sz.Dv}, q);
    float* dzz0 = f32_ptr(dz0, "dz0", {sz.N, sz.H, sz.D}, q);
    check_output(dq, "dq", {sz.B, sz.T, sz.H, sz.D}, q.scalar_type(), q);
    check_output(dk_heads, "dk_heads", {sz.B, sz.T, sz.H, sz.D}, at::kFloat, q);
    check_output(dv_heads, "dv_heads", {sz.B, sz.T, sz.H, sz.Dv}, at::kFloat, q);
    const cudaDeviceProp* props = at::cuda::getCurrentDeviceProperties();
    c.opt.sm_count = props->multiProcessorCount;
    c.opt.max_smem = static_cast<int>(props->sharedMemPerBlockOptin);
    c.opt.fwd_mode = fwd_mode_of(fwd_mode);
    la::FwdPlan plan{};
    cudaError_t perr = la::linear_attention_bwd_plan(kernel_dtype(q), sz, c.opt, &plan);
    TORCH_CHECK(perr == cudaSuccess, "linear_attention_bwd (cuda): no launch plan: ", cudaGetErrorString(perr));
    at::Tensor workspace;
    if (plan.workspace_bytes > 0) workspace = at::empty({plan.workspace_bytes}, q.options().dtype(at::kByte));
    const cudaError_t err = la::linear_attention_bwd(
        kernel_dtype(q), input_of(dout), input_of(q), input_of(k), input_of(v), input_of(o), sz, c.opt, s0, zz0,
        ds_t, dz_t, w_inv, w_dden, dq.data_ptr(), dk_heads.data_ptr<float>(), dv_heads.data_ptr<float>(), ds0, dzz0,
        plan.workspace_bytes > 0 ? workspace.data_ptr() : nullptr, plan.workspace_bytes,
        at::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, "linear_attention_bwd (cuda) failed: ", cudaGetErrorString(err));
}

}  // namespace

void register_linear_attention(pybind11::module_& m) {
    namespace py = pybind11;
    m.attr("linear_attention_max_head_dim") = la::kMaxHeadDim;
    m.def("linear_attention_fwd", &linear_attention_fwd,
          "linear attention forward into preallocated o [B,T,H,Dv], S_T [N,H,D,Dv], z_T [N,H,D] (float32)",
          py::arg("q"), py::arg("k"), py::arg("v"), py::arg("S0"), py::arg("z0"), py::arg("cu_seqlens"),
          py::arg("causal"), py::arg("feature_map"), py::arg("normalize"), py::arg("scale"), py::arg("eps"),
          py::arg("o"), py::arg("S_T"), py::arg("z_T"), py::arg("fwd_mode") = std::string("auto"));
    m.def("linear_attention_bwd", &linear_attention_bwd,
          "linear attention backward into preallocated dq [B,T,H,D] (input dtype), dk_heads [B,T,H,D] and "
          "dv_heads [B,T,H,Dv] (float32, per query head), dS0/dz0 (optional, float32)",
          py::arg("do"), py::arg("dS_T"), py::arg("dz_T"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("o"),
          py::arg("S0"), py::arg("z0"), py::arg("cu_seqlens"), py::arg("causal"), py::arg("feature_map"),
          py::arg("normalize"), py::arg("scale"), py::arg("eps"), py::arg("ws_inv"), py::arg("ws_dden"),
          py::arg("dq"), py::arg("dk_heads"), py::arg("dv_heads"), py::arg("dS0"), py::arg("dz0"),
          py::arg("fwd_mode") = std::string("auto"));
}
