// csrc/linear_attention.cu (linear attention: one-pass and chunk-parallel forward, one-pass and chunk-parallel
// backward) compiled as host C++ and run by the CUDA emulation harness (cuda_host.h: one fiber per CUDA thread).
// Called through ctypes by tests/test_linear_cuda_emulation.py. Strides: 4 element strides [b, t, h, x] per
// input; sz: B, T, H, Hk, D, Dv, N; opt: causal, feature_map, normalize, mode (0 auto, 1 one pass, 2 chunked),
// chunk (0 = largest that fits), pipeline (cp.async staging of the sequential kernels: 0 auto, 1 off, 2 on).
// Every function returns the cudaError_t of the launcher (0 = success).
#include "cuda_host.h"

#include "linear_attention.cu"

#define EMU_API extern "C" __attribute__((visibility("default")))

using namespace flashts::linear;

namespace {
LinInput in(const void* p, const int64_t* s) { return LinInput{p, s[0], s[1], s[2], s[3]}; }
LinSizes sizes(const int64_t* z, const int32_t* cu) { return LinSizes{z[0], z[1], z[2], z[3], z[4], z[5], z[6], cu}; }
LinOptions options(const int* o, float scale, float eps) {
    LinOptions opt{};
    opt.causal = o[0] != 0;
    opt.feature_map = static_cast<FeatureMap>(o[1]);
    opt.normalize = o[2] != 0;
    opt.scale = scale;
    opt.eps = eps;
    opt.fwd_mode = static_cast<FwdMode>(o[3]);
    opt.chunk = o[4];
    opt.pipeline = o[5];
    return opt;  // sm_count / max_smem 0: the emulated H200's (132 SMs, 227 KB)
}
void plan_out(const FwdPlan& p, int64_t* out) {
    out[0] = static_cast<int64_t>(p.mode);
    out[1] = p.C;
    out[2] = p.BV;
    out[3] = p.NS;
    out[4] = p.seq_blocks;
    out[5] = p.chunk_blocks;
    out[6] = p.workspace_bytes;
}
}  // namespace

// out[7]: mode, C, BV, NS, seq_blocks, chunk_blocks, workspace_bytes
EMU_API int emu_linear_plan(int dtype, int backward, const int64_t* sz, const int32_t* cu, const int* o,
                            int64_t* out) {
    FwdPlan p{};
    const LinOptions opt = options(o, 1.f, 0.f);
    const cudaError_t err = backward ? linear_attention_bwd_plan(static_cast<DType>(dtype), sizes(sz, cu), opt, &p)
                                     : linear_attention_fwd_plan(static_cast<DType>(dtype), sizes(sz, cu), opt, &p);
    plan_out(p, out);
    return err;
}

EMU_API int emu_linear_fwd(int dtype, const void* q, const int64_t* sq, const void* k, const int64_t* sk,
                           const void* v, const int64_t* sv, const int64_t* sz, const int32_t* cu, const int* o,
                           float scale, float eps, const float* S0, const float* z0, void* out, float* ST,
                           float* zT, void* ws, int64_t ws_bytes) {
    return linear_attention_fwd(static_cast<DType>(dtype), in(q, sq), in(k, sk), in(v, sv), sizes(sz, cu),
                                options(o, scale, eps), S0, z0, out, ST, zT, ws, ws_bytes, nullptr);
}

EMU_API int emu_linear_bwd(int dtype, const void* dout, const int64_t* sd, const void* q, const int64_t* sq,
                           const void* k, const int64_t* sk, const void* v, const int64_t* sv, const void* o_saved,
                           const int64_t* so, const int64_t* sz, const int32_t* cu, const int* o, float scale,
                           float eps, const float* S0, const float* z0, const float* dST, const float* dzT,
                           float* ws_inv, float* ws_dden, void* dq, float* dk_h, float* dv_h, float* dS0, float* dz0,
                           void* ws, int64_t ws_bytes) {
    return linear_attention_bwd(static_cast<DType>(dtype), in(dout, sd), in(q, sq), in(k, sk), in(v, sv),
                                in(o_saved, so), sizes(sz, cu), options(o, scale, eps), S0, z0, dST, dzT, ws_inv,
                                ws_dden, dq, dk_h, dv_h, dS0, dz0, ws, ws_bytes, nullptr);
}

namespace {
template <typename Tin>
int seq_config_typed(int kind, int Dp, int Dvp, int chunk, int pipeline, int64_t* out) {
    void (*kernels[3])(Params<Tin>) = {fwd_kernel<Tin>, bwd_dq_kernel<Tin>, bwd_dkv_kernel<Tin>};
    SeqConfig cfg{};
    const cudaError_t err = seq_config<Tin>(kind, kernels[kind], Dp, Dvp, flashts_emu::kDeviceSmemOptin, chunk,
                                            pipeline, true, &cfg);
    out[0] = cfg.C;
    out[1] = cfg.pipe;
    out[2] = cfg.bytes;
    return err;
}
}  // namespace

// The sequential kernels' launch configuration (seq_config: chunk, cp.async staging, dynamic shared memory) on
// the emulated H200. kind: 0 fwd_kernel, 1 bwd_dq_kernel, 2 bwd_dkv_kernel; D, Dv: head dims. out[3]: C, pipe,
// bytes.
EMU_API int emu_linear_seq_config(int dtype, int kind, int64_t D, int64_t Dv, int chunk, int pipeline,
                                  int64_t* out) {
    const int Dp = flashts::round_up(static_cast<int>(D), 16), Dvp = flashts::round_up(static_cast<int>(Dv), 16);
    switch (static_cast<DType>(dtype)) {
        case DType::F32: return seq_config_typed<float>(kind, Dp, Dvp, chunk, pipeline, out);
        case DType::F16: return seq_config_typed<__half>(kind, Dp, Dvp, chunk, pipeline, out);
        case DType::BF16: return seq_config_typed<__nv_bfloat16>(kind, Dp, Dvp, chunk, pipeline, out);
    }
    return cudaErrorInvalidValue;
}
