// csrc/sliding_window.cu (generic and FlashAttention-2 sliding-window kernels) compiled as host C++ and run by the
// CUDA emulation harness (cuda_host.h: one fiber per CUDA thread). Called through ctypes by
// tests/test_sliding_window_cuda_emulation.py. st: 4 element strides [b, t, h, x] each of q, k, v, do, o (20
// numbers); dims: B, T, H, Hk, D, Dv, N, max_seqlen. The launchers return their cudaError_t (0 = success).
#include "cuda_host.h"

#include "sliding_window.cu"

#define EMU_API extern "C" __attribute__((visibility("default")))

using namespace flashts::swa;

namespace {
SwaSizes sizes(const int64_t* d, const int32_t* cu) { return SwaSizes{d[0], d[1], d[2], d[3], d[4], d[5], d[6], cu, d[7]}; }
SwaInput input(const void* p, const int64_t* s) { return SwaInput{p, s[0], s[1], s[2], s[3]}; }
}  // namespace

EMU_API int emu_swa_fwd(int dtype, const void* q, const void* k, const void* v, const int64_t* st,
                        const int64_t* dims, const int32_t* cu, int64_t left, int64_t right, float scale, void* o,
                        float* lse) {
    return sliding_window_fwd(DType(dtype), input(q, st), input(k, st + 4), input(v, st + 8), sizes(dims, cu), left,
                              right, scale, o, lse, nullptr);
}

EMU_API int emu_swa_bwd(int dtype, const void* dout, const void* q, const void* k, const void* v, const void* o,
                        const int64_t* st, const int64_t* dims, const int32_t* cu, const float* lse,
                        const float* dlse, int64_t left, int64_t right, float scale, float* delta, void* dq,
                        void* dk, void* dv) {
    return sliding_window_bwd(DType(dtype), input(dout, st + 12), input(q, st), input(k, st + 4), input(v, st + 8),
                              input(o, st + 16), lse, dlse, sizes(dims, cu), left, right, scale, delta, dq, dk, dv,
                              nullptr);
}

// Padded head dim of the FlashAttention-2 kernels the launcher would take (64 / 128), 0 = generic kernels.
EMU_API int emu_swa_family(int dtype, const int64_t* dims, int backward) {
    return sliding_window_fa2_head_dim(DType(dtype), sizes(dims, nullptr), backward);
}
