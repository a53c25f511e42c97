"""Sliding-window FlashAttention-2 CUDA kernels (csrc/sliding_window.cu, ``fa2_*_kernel``) run WITHOUT a GPU.

The real kernel source is compiled as host C++ (tests/emulation/sliding_window_host.cpp, built and cached by
tests/emulation/emu_build.py) against the CUDA emulation harness (one fiber per CUDA thread,
warp shuffles, ``__syncthreads``; mma.sync / ldmatrix / cp.async through the wrappers' host branches, which
model the PTX ISA fragment layouts) and called through its plain C++ launchers (``sliding_window_fwd`` /
``sliding_window_bwd``), on tiny shapes. Outputs, lse and dq/dk/dv are compared with ``flashts.reference`` in
float64 on the same (rounded) 16-bit inputs; every output buffer starts NaN-poisoned. Covers odd T spanning
several 64-row blocks, windows (l, 0), (l, r), (−1, −1), (l, −1), head dims 64, 128, 256 and padded ones (36/20,
130/250: plain loads; 40/24, 200/136: cp.async with zero-padded columns), strided inputs, GQA, cu_seqlens (against the reference's
per-sequence loop AND, bit for bit, against separate kernel calls per sequence), the lse cotangent, and that the
launcher picks the FA2 kernels (``sliding_window_fa2_head_dim``) and that a shuffled thread schedule changes no
bit. The harness also fails a launch on divergent barriers, deadlocks and misaligned cp.async, and completes a
cp.async only at its wait (shared memory holds 0xFF bytes until then).
"""
from __future__ import annotations

import ctypes
import os
import sys

import pytest
import torch

from flashts import reference as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F64 = torch.float64
DT = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
TOL = {torch.bfloat16: 1.5e-2, torch.float16: 2e-3}

sys.path.insert(0, os.path.join(ROOT, "tests", "emulation"))
import emu_build  # noqa: E402


@pytest.fixture(scope="module")
def lib():
    if emu_build.compiler() is None or emu_build.cuda_include() is None:
        pytest.skip("no host C++ compiler or no CUDA headers (cuda_fp16.h)")
    return emu_build.load({"sliding_window": os.path.join(emu_build.EMU, "sliding_window_host.cpp")})["sliding_window"]


def _ptr(t):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _i64(*xs):
    return (ctypes.c_int64 * len(xs))(*xs)


def _inputs(B, T, H, Hk, D, Dv, dtype, strided, gen):
    def mk(h, d):
        if strided:  # [B, T, h, d] views of wider rows, non-unit head stride pattern
            return torch.randn(B, T, h, d + 8, generator=gen).to(dtype)[..., :d]
        return torch.randn(B, T, h, d, generator=gen).to(dtype)
    return mk(H, D), mk(Hk, D), mk(Hk, Dv), mk(H, Dv)


def _run(lib, q, k, v, do, window, scale, cu=None, dlse=None):
    """The kernels' (o, lse, dq, dk, dv) for inputs q, k, v and cotangent do (NaN-poisoned outputs)."""
    B, T, H, D = q.shape
    Hk, Dv = k.shape[2], v.shape[3]
    dtype = q.dtype
    N = B if cu is None else cu.numel() - 1
    max_len = T if cu is None else int((cu[1:] - cu[:-1]).max())
    dims = _i64(B, T, H, Hk, D, Dv, N, max_len)
    o = torch.full((B, T, H, Dv), float("nan"), dtype=dtype)
    lse = torch.full((B, H, T), float("nan"))
    st = _i64(*[s for x in (q, k, v, do, o) for s in x.stride()])
    left, right = (ctypes.c_int64(w) for w in window)
    rc = lib.emu_swa_fwd(DT[dtype], _ptr(q), _ptr(k), _ptr(v), st, dims, _ptr(cu), left, right,
                         ctypes.c_float(scale), _ptr(o), _ptr(lse))
    assert rc == 0, f"sliding_window_fwd returned {rc}: {emu_build.last_error(lib)}"
    delta = torch.full((B, H, T), float("nan"))
    dq = torch.full(q.shape, float("nan"), dtype=dtype)
    dk = torch.full(k.shape, float("nan"), dtype=dtype)
    dv = torch.full(v.shape, float("nan"), dtype=dtype)
    rc = lib.emu_swa_bwd(DT[dtype], _ptr(do), _ptr(q), _ptr(k), _ptr(v), _ptr(o), st, dims, _ptr(cu), _ptr(lse),
                         _ptr(dlse), left, right, ctypes.c_float(scale), _ptr(delta), _ptr(dq), _ptr(dk), _ptr(dv))
    assert rc == 0, f"sliding_window_bwd returned {rc}: {emu_build.last_error(lib)}"
    return o, lse, dq, dk, dv


def _rel(a, b):
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()


CASES = [
    # B, T, H, Hk, D, Dv, window, dtype, strided
    (1, 131, 2, 1, 64, 64, (70, 0), torch.bfloat16, False),    # causal window, 3 query blocks, GQA
    (2, 97, 1, 1, 64, 64, (9, 20), torch.bfloat16, False),     # two-sided, B = 2
    (1, 130, 1, 1, 64, 64, (-1, -1), torch.bfloat16, False),   # full attention
    (1, 70, 1, 1, 128, 128, (5, -1), torch.float16, False),    # D = 128, right unbounded
    (1, 77, 1, 1, 36, 20, (3, 9), torch.bfloat16, False),      # padded head dims, plain loads (D % 8 != 0)
    (1, 69, 2, 1, 40, 24, (-1, 0), torch.float16, True),       # padded head dims via cp.async, strided inputs
    (1, 75, 2, 1, 256, 256, (20, 5), torch.bfloat16, False),   # D = 256: 32-key dq tiles, dk/dv in two column halves
    (1, 70, 1, 1, 200, 136, (-1, 0), torch.float16, True),     # padded to 256 (cp.async), D != Dv, strided
    (1, 41, 1, 1, 130, 250, (7, 7), torch.bfloat16, False),    # padded to 256 with plain loads (D % 8 != 0)
]

@pytest.mark.parametrize("B,T,H,Hk,D,Dv,window,dtype,strided", CASES,
                         ids=[f"T{c[1]}-D{c[4]}x{c[5]}-w{c[6][0]},{c[6][1]}-{str(c[7])[6:]}" for c in CASES])
def test_fa2_kernels_vs_reference(lib, B, T, H, Hk, D, Dv, window, dtype, strided):
    gen = torch.Generator().manual_seed(T * 131 + D)
    q, k, v, do = _inputs(B, T, H, Hk, D, Dv, dtype, strided, gen)
    dims = _i64(B, T, H, Hk, D, Dv, B, T)
    DP = 64 if max(D, Dv) <= 64 else (128 if max(D, Dv) <= 128 else 256)
    assert lib.emu_swa_family(DT[dtype], dims, 0) == DP and lib.emu_swa_family(DT[dtype], dims, 1) == DP
    scale = D ** -0.5 * 1.7
    dlse = torch.randn(B, H, T, generator=gen)
    o, lse, dq, dk, dv = _run(lib, q, k, v, do, window, scale, dlse=dlse)

    qd, kd, vd = (x.to(F64).requires_grad_() for x in (q, k, v))
    ro, rl = ref.sliding_window_attention(qd, kd, vd, window=window, scale=scale, return_lse=True)
    grads = torch.autograd.grad((ro * do.to(F64)).sum() + (rl * dlse.to(F64)).sum(), (qd, kd, vd))
    tol = TOL[dtype]
    for name, got, want in (("o", o, ro), ("lse", lse, rl), ("dq", dq, grads[0]), ("dk", dk, grads[1]),
                            ("dv", dv, grads[2])):
        assert not torch.isnan(got).any(), f"{name}: NaN (unwritten or invalid) entries"
        err = _rel(got, want)
        assert err < (1e-5 if name == "lse" else tol), f"{name}: relative error {err:.2e}"


def test_fa2_cu_seqlens_vs_reference_and_separate_calls(lib):
    """Packed sequences (a zero-length and a length-1 one among them): against the reference's per-sequence loop,
    and bit for bit against one kernel call per sequence (the blocks start at each sequence's start either way)."""
    dtype, window = torch.bfloat16, (8, 8)
    gen = torch.Generator().manual_seed(7)
    bounds = [0, 5, 5, 70, 71, 100]
    T, H, Hk, D = bounds[-1], 1, 1, 64
    q, k, v, do = _inputs(1, T, H, Hk, D, D, dtype, False, gen)
    cu = torch.tensor(bounds, dtype=torch.int32)
    scale = D ** -0.5
    packed = _run(lib, q, k, v, do, window, scale, cu=cu)

    qd, kd, vd = (x.to(F64).requires_grad_() for x in (q, k, v))
    ro, rl = ref.sliding_window_attention(qd, kd, vd, window=window, scale=scale, cu_seqlens=cu, return_lse=True)
    grads = torch.autograd.grad((ro * do.to(F64)).sum(), (qd, kd, vd))
    for name, got, want in zip(("o", "lse", "dq", "dk", "dv"), packed, (ro, rl) + grads):
        assert not torch.isnan(got).any(), name
        assert _rel(got, want) < (1e-5 if name == "lse" else TOL[dtype]), name

    for a, b in zip(bounds[:-1], bounds[1:]):
        if a == b:
            continue
        sl = [x[:, a:b].contiguous() for x in (q, k, v, do)]
        alone = _run(lib, *sl, window, scale)
        for name, got, want in zip(("o", "lse", "dq", "dk", "dv"), packed, alone):
            got = got[:, :, a:b] if name == "lse" else got[:, a:b]
            assert torch.equal(got, want), f"{name} of sequence [{a}, {b}) differs from a separate call"


@pytest.mark.parametrize("dtype,D,generic", [(torch.float32, 16, False), (torch.bfloat16, 16, True)],
                         ids=["f32", "bf16-FLASHTS_SWA_GENERIC"])
def test_generic_kernels_vs_reference(lib, dtype, D, generic, monkeypatch):
    """The launcher's other family (float32 inputs; or forced by FLASHTS_SWA_GENERIC=1): generic kernels,
    block_gemm products (FMA in the emulation)."""
    if generic:
        monkeypatch.setenv("FLASHTS_SWA_GENERIC", "1")
    B, T, H, Hk = 1, 41, 2, 1
    assert lib.emu_swa_family(DT[dtype], _i64(B, T, H, Hk, D, D, B, T), 1) == 0
    gen = torch.Generator().manual_seed(11)
    q, k, v, do = _inputs(B, T, H, Hk, D, D, dtype, False, gen)
    got = _run(lib, q, k, v, do, (5, 2), 0.3)
    qd, kd, vd = (x.to(F64).requires_grad_() for x in (q, k, v))
    ro, rl = ref.sliding_window_attention(qd, kd, vd, window=(5, 2), scale=0.3, return_lse=True)
    grads = torch.autograd.grad((ro * do.to(F64)).sum(), (qd, kd, vd))
    tol = 1e-5 if dtype == torch.float32 else TOL[dtype]
    for name, a, want in zip(("o", "lse", "dq", "dk", "dv"), got, (ro, rl) + grads):
        assert not torch.isnan(a).any(), name
        assert _rel(a, want) < (1e-5 if name == "lse" else tol), name


def test_fa2_forward_with_64_row_blocks(lib, monkeypatch):
    """FLASHTS_SWA_FWD_ROWS=64: the D = 64 forward with one m-tile per warp (the default takes two, 128-row
    blocks) gives the same results up to rounding."""
    gen = torch.Generator().manual_seed(5)
    q, k, v, do = _inputs(1, 83, 1, 1, 64, 64, torch.bfloat16, False, gen)
    wide = _run(lib, q, k, v, do, (20, 3), 0.15)
    monkeypatch.setenv("FLASHTS_SWA_FWD_ROWS", "64")
    narrow = _run(lib, q, k, v, do, (20, 3), 0.15)
    qd, kd, vd = (x.to(F64) for x in (q, k, v))
    ro, rl = ref.sliding_window_attention(qd, kd, vd, window=(20, 3), scale=0.15, return_lse=True)
    for got in (wide, narrow):
        assert _rel(got[0], ro) < TOL[torch.bfloat16] and _rel(got[1], rl) < 1e-5


@pytest.mark.parametrize("D", [64, 256])
def test_fa2_results_do_not_depend_on_thread_order(lib, D):
    """The same call under another fiber schedule (threads of a block in a seeded shuffled order between barriers)
    gives bit-identical results: no thread reads what another wrote without a barrier in between."""
    gen = torch.Generator().manual_seed(3)
    q, k, v, do = _inputs(1, 45, 2, 1, D, D, torch.bfloat16, False, gen)
    first = _run(lib, q, k, v, do, (6, 3), 0.2)
    lib.flashts_emu_set_schedule(5)
    try:
        again = _run(lib, q, k, v, do, (6, 3), 0.2)
    finally:
        lib.flashts_emu_set_schedule(0)
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), first, again):
        assert torch.equal(a, b), name
