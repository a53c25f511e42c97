// csrc/auto_correlation.cu (the auto-correlation kernels; the FFTs stay in torch) compiled as host C++ and run by
// the CUDA emulation harness (cuda_host.h). tests/test_auto_correlation_cuda_emulation.py calls these through
// ctypes in place of the binding's autocorr_* functions (csrc/bindings.cpp), with the same arguments. Each returns
// the launcher's cudaError_t (0 = success). Strides are arrays of element strides: [b, t, h, d] for x / g, [b, f, c]
// (complex elements) for the spectra.
#include "cuda_host.h"

#include "auto_correlation.cu"

#define EMU_API extern "C" __attribute__((visibility("default")))

using namespace flashts::autocorr;

EMU_API int emu_autocorr_cross_spectrum(float2* qf, const int64_t* sq, float2* kf, const int64_t* sk, float2* cross,
                                        int64_t B, int64_t F, int64_t C, float inv_c, int accumulate) {
    return cross_spectrum({qf, sq[0], sq[1], sq[2]}, {kf, sk[0], sk[1], sk[2]}, cross, B, F, C, inv_c,
                          accumulate != 0, nullptr);
}

EMU_API int emu_autocorr_spectrum_grad(float2* qf, const int64_t* sq, float2* kf, const int64_t* sk,
                                       const float2* drf, float scale, int64_t B, int64_t F, int64_t C) {
    return spectrum_grad({qf, sq[0], sq[1], sq[2]}, {kf, sk[0], sk[1], sk[2]}, drf, scale, B, F, C, nullptr);
}

EMU_API int emu_autocorr_aggregate(int dtype, const void* x, const int64_t* sx, int64_t B, int64_t T_in, int64_t H,
                                   int64_t D, const int64_t* delays, const float* weights, int64_t K, int sign,
                                   int64_t L, void* out, int64_t T_out) {
    return aggregate(static_cast<DType>(dtype), x, sx[0], sx[1], sx[2], sx[3], B, T_in, H, D, delays, weights, K, sign,
                     L, out, T_out, nullptr);
}

EMU_API int64_t emu_autocorr_partials_size(int64_t B, int64_t K, int64_t L) { return partials_size(B, K, L); }

EMU_API int emu_autocorr_delay_dots(int dtype, const void* g, const int64_t* sg, const void* x, const int64_t* sx,
                                    int64_t T_x, int64_t B, int64_t L, int64_t H, int64_t D, const int64_t* delays,
                                    int64_t K, float* partials, float* dw, int sms) {
    return delay_dots(static_cast<DType>(dtype), g, sg[0], sg[1], sg[2], sg[3], x, sx[0], sx[1], sx[2], sx[3], T_x, B,
                      L, H, D, delays, K, partials, dw, sms, nullptr);
}

EMU_API int emu_autocorr_delay_grad(int dtype, const void* g, const int64_t* sg, const void* x, const int64_t* sx,
                                    int64_t T_x, int64_t B, int64_t L, int64_t H, int64_t D, const int64_t* delays,
                                    const float* weights, const float* dweights, int64_t K, float* partials,
                                    float* dw, float* dr, int sms) {
    return delay_grad(static_cast<DType>(dtype), g, sg[0], sg[1], sg[2], sg[3], x, sx[0], sx[1], sx[2], sx[3], T_x, B,
                      L, H, D, delays, weights, dweights, K, partials, dw, dr, sms, nullptr);
}
