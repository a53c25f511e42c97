"""The mma.sync m16n8k8 TF32 product of csrc/common.cuh (``block_gemm<kGemmMma>``, used by the linear-attention
kernels for 16-bit inputs) emulated on the CPU: the kernel's own per-lane fragment gathers/scatters (compiled
for the host with nvcc, tests/emulation/mma_emu.cu) feed a model of the instruction written here from the PTX
ISA's fragment table for ``mma.m16n8k8`` with ``.tf32`` (independently of the C++ index functions), and the
tiled loop of block_gemm (warp tiles 16×8, k-steps of 8, row- and column-major operands, accumulate or not) is
replayed in Python. The result must equal A·B (+C) exactly in float64 arithmetic of float32 inputs.
"""
import ctypes
import os
import shutil
import subprocess

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K_ROW, K_COL = 0, 1


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if nvcc is None:
        pytest.skip("nvcc not installed")
    so = str(tmp_path_factory.mktemp("mma") / "mma_emu.so")
    subprocess.run([nvcc, "-std=c++17", "-O1", "-shared", "-Xcompiler", "-fPIC", "-arch=sm_90",
                    "-I", os.path.join(ROOT, "csrc"), os.path.join(ROOT, "tests", "emulation", "mma_emu.cu"),
                    "-o", so], check=True)
    return ctypes.CDLL(so)


# PTX ISA, "Matrix Fragments for mma.m16n8k8" (.tf32): groupID = lane >> 2, threadID_in_group = lane % 4.
#   A: row = groupID for a0, a2; groupID + 8 for a1, a3.   col = threadID_in_group for a0, a1; + 4 for a2, a3.
#   B: row = threadID_in_group for b0; + 4 for b1.          col = groupID.
#   C: row = groupID for c0, c1; groupID + 8 for c2, c3.   col = threadID_in_group * 2 + (i & 1).
A_ROW_PLUS8 = {0: False, 1: True, 2: False, 3: True}
A_COL_PLUS4 = {0: False, 1: False, 2: True, 3: True}
C_ROW_PLUS8 = {0: False, 1: False, 2: True, 3: True}


def mma_model(a, b, c):
    """One warp's mma.m16n8k8: a [32,4], b [32,2], c [32,4] fragments -> d [32,4] (float64)."""
    A, B, C = np.full((16, 8), np.nan), np.full((8, 8), np.nan), np.full((16, 8), np.nan)
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for i in range(4):
            A[g + 8 * A_ROW_PLUS8[i], t + 4 * A_COL_PLUS4[i]] = a[lane, i]
            C[g + 8 * C_ROW_PLUS8[i], 2 * t + (i & 1)] = c[lane, i]
        for i in range(2):
            B[t + 4 * i, g] = b[lane, i]
    assert not (np.isnan(A).any() or np.isnan(B).any() or np.isnan(C).any()), "a fragment position is never loaded"
    D = A @ B + C
    d = np.empty((32, 4))
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for i in range(4):
            d[lane, i] = D[g + 8 * C_ROW_PLUS8[i], 2 * t + (i & 1)]
    return d


def _ptr(x):
    return ctypes.c_void_p(x.ctypes.data)


def block_gemm_mma(emu, C, A, B, la, lb, M, N, K, accumulate, n_warps=4):
    """block_gemm<kGemmMma>'s loops (warp w takes tiles w, w + n_warps, ...), fragments from the C++ helpers."""
    tiles_n = N // 8
    a = np.zeros((32, 4), np.float32)
    b = np.zeros((32, 2), np.float32)
    c = np.zeros((32, 4), np.float32)
    for warp in range(n_warps):
        for tile in range(warp, (M // 16) * tiles_n, n_warps):
            m0, n0 = (tile // tiles_n) * 16, (tile % tiles_n) * 8
            acc = np.zeros((32, 4))
            if accumulate:
                emu.emu_gather(la, lb, _ptr(A), A.shape[1], _ptr(B), B.shape[1], _ptr(C), C.shape[1], m0, n0, 0,
                               _ptr(a), _ptr(b), _ptr(c))
                acc = c.astype(np.float64)
            for k0 in range(0, K, 8):
                emu.emu_gather(la, lb, _ptr(A), A.shape[1], _ptr(B), B.shape[1], None, 0, m0, n0, k0,
                               _ptr(a), _ptr(b), _ptr(c))
                acc = mma_model(a.astype(np.float64), b.astype(np.float64), acc)
            out = np.ascontiguousarray(acc.astype(np.float32))
            emu.emu_scatter_c(_ptr(out), _ptr(C), C.shape[1], m0, n0)


@pytest.mark.parametrize("la,lb", [(K_ROW, K_ROW), (K_ROW, K_COL), (K_COL, K_ROW)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_block_gemm_mma_layouts(emu, la, lb, accumulate):
    rng = np.random.default_rng(la * 4 + lb * 2 + accumulate)
    M, N, K, pad = 32, 24, 16, 4  # two row tiles, three column tiles, two k-steps; padded leading dims
    Am = rng.integers(-8, 8, (M, K)).astype(np.float32)  # small integers: every product is exact in float32
    Bm = rng.integers(-8, 8, (K, N)).astype(np.float32)
    A = np.zeros((M, K + pad) if la == K_ROW else (K, M + pad), np.float32)
    B = np.zeros((K, N + pad) if lb == K_ROW else (N, K + pad), np.float32)
    if la == K_ROW:
        A[:, :K] = Am
    else:
        A[:, :M] = Am.T
    if lb == K_ROW:
        B[:, :N] = Bm
    else:
        B[:, :K] = Bm.T
    C0 = rng.integers(-8, 8, (M, N + pad)).astype(np.float32)
    C = C0.copy()
    block_gemm_mma(emu, C, A, B, la, lb, M, N, K, accumulate)
    want = Am.astype(np.float64) @ Bm + (C0[:, :N] if accumulate else 0)
    np.testing.assert_array_equal(C[:, :N], want)
    np.testing.assert_array_equal(C[:, N:], C0[:, N:])  # the padding columns are never written
