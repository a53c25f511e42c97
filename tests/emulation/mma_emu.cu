// Host side of csrc/common.cuh's mma.sync helpers, for tests/test_mma_layout_emulation.py: the per-lane
// gathers / scatters that block_gemm<kGemmMma> runs on the GPU, called here for all 32 lanes of one warp
// (built with nvcc as a host shared library; no kernel is launched).
#include "common.cuh"

using namespace flashts::mmau;

extern "C" {

// a_out [32][4], b_out [32][2], c_out [32][4]: the fragments of every lane for the tile (m0, n0), k-step k0.
void emu_gather(int la, int lb, const float* A, int lda, const float* B, int ldb, const float* C, int ldc, int m0,
                int n0, int k0, float* a_out, float* b_out, float* c_out) {
    for (int lane = 0; lane < 32; ++lane) {
        if (la == kRow) mma_gather_a<kRow>(a_out + 4 * lane, A, lda, m0, k0, lane);
        else mma_gather_a<kCol>(a_out + 4 * lane, A, lda, m0, k0, lane);
        if (lb == kRow) mma_gather_b<kRow>(b_out + 2 * lane, B, ldb, k0, n0, lane);
        else mma_gather_b<kCol>(b_out + 2 * lane, B, ldb, k0, n0, lane);
        if (C) mma_gather_c(c_out + 4 * lane, C, ldc, m0, n0, lane);
    }
}

void emu_scatter_c(const float* c_in, float* C, int ldc, int m0, int n0) {
    for (int lane = 0; lane < 32; ++lane) mma_scatter_c(c_in + 4 * lane, C, ldc, m0, n0, lane);
}

}  // extern "C"
