// csrc/prefix_scan.cu (Aaren / Latte forward and backward kernels) compiled as host C++ and run by the CUDA
// emulation harness (cuda_host.h: one fiber per CUDA thread). Called through ctypes by
// tests/test_cuda_emulation.py. Strides: 4 element strides [b, t, h, x] per tensor; sizes: B, T, H, L, D, Dv, N.
// Every function returns the cudaError_t of the launcher (0 = success).
#include "cuda_host.h"

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
}  // namespace

EMU_API int emu_aaren_fwd(int dtype, const void* q, const int64_t* sq, const void* k, const int64_t* sk,
                          const void* v, const int64_t* sv, const int64_t* sz, const int32_t* cu, float scale,
                          const float* m0, const float* u0, const float* w0, void* o, float* mT, float* uT,
                          float* wT) {
    return aaren_fwd(static_cast<DType>(dtype), st(q, sq), st(k, sk), st(v, sv), sizes(sz, cu), scale, m0, u0, w0, o,
                     mT, uT, wT, nullptr);
}

EMU_API int emu_latte_fwd(int dtype, const void* q, const int64_t* sq, const void* k, const int64_t* sk,
                          const void* v, const int64_t* sv, const int64_t* sz, const int32_t* cu, int causal,
                          const float* m0, const float* a0, const float* S0, void* o, float* mT, float* aT,
                          float* ST) {
    return latte_fwd(static_cast<DType>(dtype), st(q, sq), st(k, sk), st(v, sv), sizes(sz, cu), causal != 0, m0, a0,
                     S0, o, mT, aT, ST, nullptr);
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
    bool ok = false;
    return chunk_path_ok(s, aaren != 0, &ok) == cudaSuccess && ok ? 1 : 0;
}
