// csrc/prefix_scan.cu (Aaren / Latte forward and backward kernels) compiled as host C++ and run by the CUDA
// emulation harness (cuda_host.h: one fiber per CUDA thread). Called through ctypes by
// tests/test_cuda_emulation.py and tests/test_prefix_scan_cuda_emulation_fwd.py. Strides: 4 element strides
// [b, t, h, x] per tensor; sizes: B, T, H, L, D, Dv, N. Every function returns the cudaError_t of the launcher
// (0 = success). emu_aaren_fwd / emu_latte_fwd: the Auto plan of the emulated H200 (132 SMs), the workspace
// allocated here; the _ex variants take the mode (0 auto, 1 one pass, 2 chunked), the SM count and the caller's
// workspace (emu_scan_fwd_plan gives its size).
#include "cuda_host.h"

#include <cstdlib>

#include "prefix_scan.cu"

#include <limits>
#include <vector>

#define EMU_API extern "C" __attribute__((visibility("default")))

using namespace flashts::scan;

namespace {
ScanTensor st(const void* p, const int64_t* s) { return ScanTensor{p, s[0], s[1], s[2], s[3]}; }
ScanSizes sizes(const int64_t* z, const int32_t* cu) { return ScanSizes{z[0], z[1], z[2], z[3], z[4], z[5], z[6], cu}; }
// The backward's workspace (scan_bwd_workspace floats), NaN-poisoned: a kernel that reads a workspace element before
// writing it spreads NaN into the gradients. (The callers' ws_M/ws_c/ws_r arguments are no longer used.)
std::vector<float> bwd_workspace(bool aaren, const int64_t* z, const int32_t* cu, bool causal, int* rc) {
    int64_t n = 0;
    *rc = scan_bwd_workspace(aaren, sizes(z, cu), causal, &n);
    return std::vector<float>(static_cast<size_t>(n > 0 ? n : 1), std::numeric_limits<float>::quiet_NaN());
}
ScanOptions options(int mode, int sms) { return ScanOptions{sms, 0, static_cast<ScanMode>(mode)}; }
// A workspace for the Auto plan, NaN-poisoned (an element read before it is written spreads NaN into the
// outputs); freed when the call returns.
struct AutoWs {
    void* p = nullptr;
    int64_t bytes = 0;
    AutoWs(bool aaren, const ScanSizes& sz, bool causal) {
        ScanPlan plan{};
        if (scan_fwd_plan(aaren, sz, causal, options(0, 0), &plan) == cudaSuccess && plan.workspace_bytes > 0) {
            bytes = plan.workspace_bytes;
            const size_t n = static_cast<size_t>((bytes + 63) / 64 * 16);
            float* f = static_cast<float*>(aligned_alloc(64, n * sizeof(float)));
            for (size_t i = 0; i < n; ++i) f[i] = __builtin_nanf("");
            p = f;
        }
    }
    ~AutoWs() { free(p); }
};
}  // namespace

EMU_API int emu_aaren_fwd(int dtype, const void* q, const int64_t* sq, const void* k, const int64_t* sk,
                          const void* v, const int64_t* sv, const int64_t* sz, const int32_t* cu, float scale,
                          const float* m0, const float* u0, const float* w0, void* o, float* mT, float* uT,
                          float* wT) {
    const AutoWs ws(true, sizes(sz, cu), true);
    return aaren_fwd(static_cast<DType>(dtype), st(q, sq), st(k, sk), st(v, sv), sizes(sz, cu), scale, m0, u0, w0, o,
                     mT, uT, wT, options(0, 0), ws.p, ws.bytes, nullptr);
}

EMU_API int emu_latte_fwd(int dtype, const void* q, const int64_t* sq, const void* k, const int64_t* sk,
                          const void* v, const int64_t* sv, const int64_t* sz, const int32_t* cu, int causal,
                          const float* m0, const float* a0, const float* S0, void* o, float* mT, float* aT,
                          float* ST) {
    const AutoWs ws(false, sizes(sz, cu), causal != 0);
    return latte_fwd(static_cast<DType>(dtype), st(q, sq), st(k, sk), st(v, sv), sizes(sz, cu), causal != 0, m0, a0,
                     S0, o, mT, aT, ST, options(0, 0), ws.p, ws.bytes, nullptr);
}

// out[10]: mode, C, BV, NS, seq_blocks, chunk_blocks, scan_blocks, workspace_bytes, scan_groups, scan_group_chunks
EMU_API int emu_scan_fwd_plan(int aaren, const int64_t* sz, const int32_t* cu, int causal, int mode, int sms,
                              int64_t* out) {
    ScanPlan p{};
    const cudaError_t err = scan_fwd_plan(aaren != 0, sizes(sz, cu), causal != 0, options(mode, sms), &p);
    const int64_t vals[10] = {static_cast<int64_t>(p.mode), p.C, p.BV, p.NS, p.seq_blocks, p.chunk_blocks,
                              p.scan_blocks, p.workspace_bytes, p.scan_groups, p.scan_group_chunks};
    for (int i = 0; i < 10; ++i) out[i] = vals[i];
    return err;
}

EMU_API int emu_aaren_fwd_ex(int dtype, const void* q, const int64_t* sq, const void* k, const int64_t* sk,
                             const void* v, const int64_t* sv, const int64_t* sz, const int32_t* cu, float scale,
                             const float* m0, const float* u0, const float* w0, void* o, float* mT, float* uT,
                             float* wT, int mode, int sms, void* ws, int64_t ws_bytes) {
    return aaren_fwd(static_cast<DType>(dtype), st(q, sq), st(k, sk), st(v, sv), sizes(sz, cu), scale, m0, u0, w0, o,
                     mT, uT, wT, options(mode, sms), ws, ws_bytes, nullptr);
}

EMU_API int emu_latte_fwd_ex(int dtype, const void* q, const int64_t* sq, const void* k, const int64_t* sk,
                             const void* v, const int64_t* sv, const int64_t* sz, const int32_t* cu, int causal,
                             const float* m0, const float* a0, const float* S0, void* o, float* mT, float* aT,
                             float* ST, int mode, int sms, void* ws, int64_t ws_bytes) {
    return latte_fwd(static_cast<DType>(dtype), st(q, sq), st(k, sk), st(v, sv), sizes(sz, cu), causal != 0, m0, a0,
                     S0, o, mT, aT, ST, options(mode, sms), ws, ws_bytes, nullptr);
}

// Latte bidirectional backward, chunk-parallel; out_bytes: the workspace size (call with ws == nullptr to get it).
EMU_API int emu_latte_bidir_bwd(int dtype, const void* dout, const int64_t* sd, const void* q, const int64_t* sq,
                                const void* k, const int64_t* sk, const void* v, const int64_t* sv, const int64_t* sz,
                                const int32_t* cu, int sms, void* dq, void* dk, void* dv, void* ws, int64_t ws_bytes,
                                int64_t* out_bytes) {
    ScanPlan plan{};
    const cudaError_t err = latte_bidir_bwd_plan(sizes(sz, cu), options(2, sms), &plan);
    *out_bytes = plan.workspace_bytes;
    if (err != cudaSuccess || ws == nullptr) return err;
    return latte_bidir_bwd(static_cast<DType>(dtype), st(dout, sd), st(q, sq), st(k, sk), st(v, sv), sizes(sz, cu),
                           options(2, sms), dq, dk, dv, ws, ws_bytes, nullptr);
}

EMU_API int emu_aaren_bwd(int dtype, const void* dout, const int64_t* sd, const void* q, const int64_t* sq,
                          const void* k, const int64_t* sk, const void* v, const int64_t* sv, const int64_t* sz,
                          const int32_t* cu, float scale, const float* m0, const float* u0, const float* w0,
                          const float* duT, const float* dwT, float* ws_M, float* ws_c, float* ws_r, float* dq_rows,
                          void* dk, void* dv, float* du0, float* dw0) {
    (void)ws_M, (void)ws_c, (void)ws_r;
    int rc = 0;
    std::vector<float> ws = bwd_workspace(true, sz, cu, true, &rc);
    if (rc != 0) return rc;
    return aaren_bwd(static_cast<DType>(dtype), st(dout, sd), st(q, sq), st(k, sk), st(v, sv), sizes(sz, cu), scale,
                     m0, u0, w0, duT, dwT, ws.data(), static_cast<int64_t>(ws.size()), dq_rows, dk, dv, du0, dw0,
                     nullptr);
}

EMU_API int emu_latte_bwd(int dtype, const void* dout, const int64_t* sd, const void* q, const int64_t* sq,
                          const void* k, const int64_t* sk, const void* v, const int64_t* sv, const int64_t* sz,
                          const int32_t* cu, int causal, const float* m0, const float* a0, const float* S0,
                          const float* daT, const float* dST, float* ws_M, float* ws_c, float* ws_r, void* dq,
                          void* dk, void* dv, float* da0, float* dS0) {
    (void)ws_M, (void)ws_c, (void)ws_r;
    int rc = 0;
    std::vector<float> ws = bwd_workspace(false, sz, cu, causal != 0, &rc);
    if (rc != 0) return rc;
    return latte_bwd(static_cast<DType>(dtype), st(dout, sd), st(q, sq), st(k, sk), st(v, sv), sizes(sz, cu),
                     causal != 0, m0, a0, S0, daT, dST, ws.data(), static_cast<int64_t>(ws.size()), dq, dk, dv, da0,
                     dS0, nullptr);
}

// 1 when the causal backward at these sizes runs the chunk-parallel kernels, 0 when the sequential fallback.
EMU_API int emu_scan_bwd_chunked(int aaren, const int64_t* sz, const int32_t* cu) {
    ScanSizes s = sizes(sz, cu);
    if (aaren) s.L = 1;
    BwdPlan plan{};
    return plan_backward(aaren != 0, s, &plan) == cudaSuccess && plan.chunked ? 1 : 0;
}

// 1 when latte_bwd with causal = false runs the chunk-parallel bidirectional backward at these sizes.
EMU_API int emu_latte_bidir_bwd_chunked(const int64_t* sz, const int32_t* cu) {
    ScanSizes s = sizes(sz, cu);
    s.D = s.L;
    ScanPlan plan{};
    return plan_bidir_backward(s, ScanOptions{0, 0, ScanMode::Auto}, &plan) == cudaSuccess ? 1 : 0;
}

// The causal backward's two-level scans at these sizes: out[4] = the forward state scan's groups and chunks per
// group, the cotangent scan's groups and chunks per group (1 group: one level).
EMU_API int emu_scan_bwd_groups(int aaren, const int64_t* sz, const int32_t* cu, int64_t* out) {
    ScanSizes s = sizes(sz, cu);
    if (aaren) s.L = 1; else s.D = s.L;
    BwdPlan plan{};
    const cudaError_t err = plan_backward(aaren != 0, s, &plan);
    const int64_t vals[4] = {plan.fwd.scan_groups, plan.fwd.scan_group_chunks, plan.cot_groups, plan.cot_group_chunks};
    for (int i = 0; i < 4; ++i) out[i] = vals[i];
    return err;
}
