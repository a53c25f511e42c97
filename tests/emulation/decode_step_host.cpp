// csrc/decode_step.cu (the decode-step kernels, one launch per step) compiled as host C++ and run by the CUDA
// emulation harness (cuda_host.h). Called through ctypes by tests/test_cuda_emulation.py. Each input is one time
// step [B, Hx, X] with 3 element strides. Every function returns the launcher's cudaError_t (0 = success).
#include "cuda_host.h"

#include "decode_step.cu"

#define EMU_API extern "C" __attribute__((visibility("default")))

using namespace flashts::decode;

namespace {
In3 in3(const void* p, const int64_t* s) { return In3{p, s[0], s[1], s[2]}; }
}  // namespace

EMU_API int emu_linear_step(int dtype, const void* q, const int64_t* sq, const void* k, const int64_t* sk,
                            const void* v, const int64_t* sv, int64_t B, int64_t H, int64_t Hk, int64_t D,
                            int64_t Dv, int fmap, int normalize, float scale, float eps, const float* S_in,
                            const float* z_in, float* S_out, float* z_out, void* o) {
    return linear_step(static_cast<DType>(dtype), in3(q, sq), in3(k, sk), in3(v, sv), B, H, Hk, D, Dv, fmap,
                       normalize != 0, scale, eps, S_in, z_in, S_out, z_out, o, nullptr);
}

EMU_API int emu_aaren_step(int dtype, const void* q, const int64_t* sq, const void* k, const int64_t* sk,
                           const void* v, const int64_t* sv, int64_t B, int64_t H, int64_t D, int64_t Dv, float scale,
                           const float* m_in, const float* u_in, const float* w_in, float* m_out, float* u_out,
                           float* w_out, void* o) {
    return aaren_step(static_cast<DType>(dtype), in3(q, sq), in3(k, sk), in3(v, sv), B, H, D, Dv, scale, m_in, u_in,
                      w_in, m_out, u_out, w_out, o, nullptr);
}

EMU_API int emu_latte_step(int dtype, const void* q, const int64_t* sq, const void* k, const int64_t* sk,
                           const void* v, const int64_t* sv, int64_t B, int64_t H, int64_t L, int64_t Dv,
                           const float* m_in, const float* a_in, const float* S_in, float* m_out, float* a_out,
                           float* S_out, void* o) {
    return latte_step(static_cast<DType>(dtype), in3(q, sq), in3(k, sk), in3(v, sv), B, H, L, Dv, m_in, a_in, S_in,
                      m_out, a_out, S_out, o, nullptr);
}

EMU_API int emu_swa_ring_step(int dtype, const void* q, const int64_t* sq, const void* k, const int64_t* sk,
                              const void* v, const int64_t* sv, int64_t B, int64_t H, int64_t Hk, int64_t D,
                              int64_t Dv, int64_t W, float scale, void* k_cache, void* v_cache, const int64_t* pos,
                              void* o) {
    return swa_ring_step(static_cast<DType>(dtype), in3(q, sq), in3(k, sk), in3(v, sv), B, H, Hk, D, Dv, W, scale,
                         k_cache, v_cache, pos, o, nullptr);
}

EMU_API int emu_macchiato_step(int dtype, const void* q, const int64_t* sq, const void* k, const int64_t* sk,
                               const void* v, const int64_t* sv, const void* mix, const int64_t* smix,
                               const void* lk, const int64_t* slk, int64_t B, int64_t H, int64_t D, int64_t Dv,
                               int64_t L, int64_t W, float scale, float* k_win, float* v_win, const int* n_win,
                               float* m, float* alpha, float* S, void* o) {
    return macchiato_step(static_cast<DType>(dtype), in3(q, sq), in3(k, sk), in3(v, sv), in3(mix, smix),
                          in3(lk, slk), B, H, D, Dv, L, W, scale, k_win, v_win, n_win, m, alpha, S, o, nullptr);
}
