// Host emulation of the decode-step kernels (csrc/decode_step.cu): the SAME phase functions
// (csrc/decode_math.h), run for every block and every thread with host loops, phase by phase (the loop over
// threads finishes before the next phase starts, which is what __syncthreads() guarantees on the GPU).
// Built by tests/test_decode_step_emulation.py with the host C++ compiler and called through ctypes (float32).
//
// nt: threads per block (the kernels use 128; the tests also try others); vec: 1 or 4 (the VEC template
// argument the launcher picks); reverse != 0 runs the threads of each phase in reverse order (a phase that
// read another thread's result of the same phase would give a different answer).
#include <cstdint>
#include <vector>

#include "decode_math.h"

using namespace flashts::decode;

namespace {

template <typename Fn>
void each_thread(int nt, int reverse, Fn&& fn) {
    for (int i = 0; i < nt; ++i) fn(reverse ? nt - 1 - i : i);
}

Vec3<float> v3(const float* p, const int64_t* s) { return Vec3<float>{p, s[0], s[1], s[2]}; }

}  // namespace

extern "C" {

int emu_linear_step(const float* q, const int64_t* sq, const float* k, const int64_t* sk, const float* v,
                    const int64_t* sv, int64_t B, int64_t H, int64_t Hk, int64_t D, int64_t Dv, int fmap,
                    int normalize, float scale, float eps, const float* S_in, const float* z_in, float* S_out,
                    float* z_out, float* o, int nt, int vec, int reverse) {
    LinearStep<float> a{v3(q, sq), v3(k, sk), v3(v, sv), B, H, Hk, D, Dv, fmap, normalize, scale, eps,
                        S_in, z_in, S_out, z_out, o};
    if (vec == 4 && Dv % 4 != 0) return 1;
    std::vector<float> smem(linear_smem_floats(D, Dv, nt, vec));
    for (int64_t blk = 0; blk < B * H; ++blk) {
        float* s = smem.data();
        each_thread(nt, reverse, [&](int t) { linear_phase0(a, blk, t, nt, s); });
        if (vec == 4) {
            each_thread(nt, reverse, [&](int t) { linear_phase1<float, 4>(a, blk, t, nt, s); });
            each_thread(nt, reverse, [&](int t) { linear_phase2<float, 4>(a, blk, t, nt, s); });
        } else {
            each_thread(nt, reverse, [&](int t) { linear_phase1<float, 1>(a, blk, t, nt, s); });
            each_thread(nt, reverse, [&](int t) { linear_phase2<float, 1>(a, blk, t, nt, s); });
        }
    }
    return 0;
}

int emu_aaren_step(const float* q, const int64_t* sq, const float* k, const int64_t* sk, const float* v,
                   const int64_t* sv, int64_t B, int64_t H, int64_t D, int64_t Dv, float scale, const float* m_in,
                   const float* u_in, const float* w_in, float* m_out, float* u_out, float* w_out, float* o, int nt,
                   int vec, int reverse) {
    AarenStep<float> a{v3(q, sq), v3(k, sk), v3(v, sv), B, H, D, Dv, scale, m_in, u_in, w_in,
                       m_out, u_out, w_out, o};
    if (vec == 4 && Dv % 4 != 0) return 1;
    std::vector<float> smem(aaren_smem_floats(D, Dv));
    for (int64_t blk = 0; blk < B * H; ++blk) {
        float* s = smem.data();
        each_thread(nt, reverse, [&](int t) { aaren_phase0(a, blk, t, nt, s); });
        each_thread(nt, reverse, [&](int t) { aaren_phase1(a, blk, t, nt, s); });
        if (vec == 4) each_thread(nt, reverse, [&](int t) { aaren_phase2<float, 4>(a, blk, t, nt, s); });
        else each_thread(nt, reverse, [&](int t) { aaren_phase2<float, 1>(a, blk, t, nt, s); });
    }
    return 0;
}

int emu_latte_step(const float* q, const int64_t* sq, const float* k, const int64_t* sk, const float* v,
                   const int64_t* sv, int64_t B, int64_t H, int64_t L, int64_t Dv, const float* m_in,
                   const float* a_in, const float* S_in, float* m_out, float* a_out, float* S_out, float* o, int nt,
                   int vec, int reverse) {
    LatteStep<float> a{v3(q, sq), v3(k, sk), v3(v, sv), B, H, L, Dv, m_in, a_in, S_in, m_out, a_out, S_out, o};
    if (vec == 4 && Dv % 4 != 0) return 1;
    std::vector<float> smem(latte_smem_floats(L, Dv, nt, vec));
    for (int64_t blk = 0; blk < B * H; ++blk) {
        float* s = smem.data();
        each_thread(nt, reverse, [&](int t) { latte_phase0(a, blk, t, nt, s); });
        each_thread(nt, reverse, [&](int t) { latte_phase1(a, blk, t, nt, s); });
        each_thread(nt, reverse, [&](int t) { latte_phase2(a, blk, t, nt, s); });
        if (vec == 4) {
            each_thread(nt, reverse, [&](int t) { latte_phase3<float, 4>(a, blk, t, nt, s); });
            each_thread(nt, reverse, [&](int t) { latte_phase4<float, 4>(a, blk, t, nt, s); });
        } else {
            each_thread(nt, reverse, [&](int t) { latte_phase3<float, 1>(a, blk, t, nt, s); });
            each_thread(nt, reverse, [&](int t) { latte_phase4<float, 1>(a, blk, t, nt, s); });
        }
    }
    return 0;
}

int emu_swa_ring_step(const float* q, const int64_t* sq, const float* k, const int64_t* sk, const float* v,
                      const int64_t* sv, int64_t B, int64_t H, int64_t Hk, int64_t D, int64_t Dv, int64_t W,
                      float scale, float* k_cache, float* v_cache, const int64_t* pos, float* o, int nt, int vec,
                      int reverse) {
    SwaRingStep<float> a{v3(q, sq), v3(k, sk), v3(v, sv), B, H, Hk, D, Dv, W, scale, k_cache, v_cache, pos, o};
    if (vec == 4 && (D % 4 != 0 || Dv % 4 != 0)) return 1;
    std::vector<float> smem(swa_smem_floats(D, Dv, W, nt, vec));
    // Blocks in reverse order too, when asked: the writer block of a kv group must not disturb the others.
    for (int64_t i = 0; i < B * H; ++i) {
        const int64_t blk = reverse ? B * H - 1 - i : i;
        float* s = smem.data();
        each_thread(nt, reverse, [&](int t) { swa_phase0(a, blk, t, nt, s); });
        if (vec == 4) {
            each_thread(nt, reverse, [&](int t) { swa_phase1<float, 4>(a, blk, t, nt, s); });
        } else {
            each_thread(nt, reverse, [&](int t) { swa_phase1<float, 1>(a, blk, t, nt, s); });
        }
        each_thread(nt, reverse, [&](int t) { swa_phase2(a, blk, t, nt, s); });
        each_thread(nt, reverse, [&](int t) { swa_phase3(a, blk, t, nt, s); });
        if (vec == 4) {
            each_thread(nt, reverse, [&](int t) { swa_phase4<float, 4>(a, blk, t, nt, s); });
            each_thread(nt, reverse, [&](int t) { swa_phase5<float, 4>(a, blk, t, nt, s); });
        } else {
            each_thread(nt, reverse, [&](int t) { swa_phase4<float, 1>(a, blk, t, nt, s); });
            each_thread(nt, reverse, [&](int t) { swa_phase5<float, 1>(a, blk, t, nt, s); });
        }
    }
    return 0;
}

}  // extern "C"
