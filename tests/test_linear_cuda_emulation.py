"""The REAL kernels of csrc/linear_attention.cu run on the CPU under the CUDA emulation harness
(tests/emulation/cuda_host.h: the .cu compiled as host C++, one fiber per CUDA thread; entry points in
tests/emulation/linear_attention_host.cpp), checked against flashts.reference in float64.

Covers both forward modes (chunk-parallel three-phase, one pass) and both backward modes (chunk-parallel,
sequential), causal and not, feature maps and normalize, odd T / D / Dv (chunks of 16 forced so that several
chunks, partial last chunks and several Dv tiles occur at small T), GQA, initial / final states and their
cotangents, packed cu_seqlens (empty and length-1 sequences) against the reference and against a loop,
float32 (FMA) and bfloat16 (mma.sync TF32 through the emulated wrappers), strided (scalar-load) and contiguous
(16-byte-load) inputs. Every output and workspace starts as NaN, so an element the kernels forget to write (or
read before writing) fails. The launch plan (occupancy rule) is checked at the goal shapes.

Skips when g++ or the CUDA headers are missing (the build takes ~30 s once per session; cached by source hash).
"""
from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile

import pytest
import torch

from flashts import reference as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY = os.path.join(ROOT, "tests", "emulation", "linear_attention_host.cpp")
SOURCES = [ENTRY, os.path.join(ROOT, "csrc", "linear_attention.cu"), os.path.join(ROOT, "csrc", "linear_attention.h"),
           os.path.join(ROOT, "csrc", "common.cuh"), os.path.join(ROOT, "tests", "emulation", "cuda_host.h")]
F32, BF16, F64 = torch.float32, torch.bfloat16, torch.float64
DT = {F32: 0, BF16: 2}
FMAP = {"elu": 0, "relu": 1, "identity": 2}
MODE = {"auto": 0, "one_pass": 1, "chunked": 2}
TOL = {F32: 2e-5, BF16: 2e-2}


def _cuda_include():
    for d in ("/usr/local/cuda/include",):
        if os.path.isfile(os.path.join(d, "cuda_runtime_api.h")):
            return d
    nvcc = shutil.which("nvcc")
    if nvcc:
        d = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "include")
        if os.path.isfile(os.path.join(d, "cuda_runtime_api.h")):
            return d
    return None


@pytest.fixture(scope="module")
def lib():
    inc, gxx = _cuda_include(), shutil.which("g++")
    if inc is None or gxx is None:
        pytest.skip("g++ or the CUDA headers (cuda_runtime_api.h) not found")
    h = hashlib.sha1()
    for s in SOURCES:
        with open(s, "rb") as f:
            h.update(f.read())
    out = os.path.join(tempfile.gettempdir(), f"flashts_linear_emu_{h.hexdigest()[:16]}.so")
    with open(out + ".lock", "w") as lock:                         # pytest-xdist workers: one build
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(out):
            tmp = out + f".{os.getpid()}.tmp"
            cmd = [gxx, "-x", "c++", "-std=c++17", "-O1", "-shared", "-fPIC", "-DFLASHTS_HOST_EMU", f"-I{inc}",
                   f"-I{os.path.join(ROOT, 'csrc')}", f"-I{os.path.join(ROOT, 'tests', 'emulation')}", ENTRY,
                   "-o", tmp]
            res = subprocess.run(cmd, capture_output=True, text=True)
            assert res.returncode == 0, res.stderr[-4000:]
            os.replace(tmp, out)
    dll = ctypes.CDLL(out)
    dll.flashts_emu_last_error.restype = ctypes.c_char_p
    return dll


def _p(x):
    return ctypes.c_void_p(0 if x is None else x.data_ptr())


def _strides(x):
    return (ctypes.c_int64 * 4)(*x.stride())


def _ints(*v):
    return (ctypes.c_int * len(v))(*v)


def _sizes(B, T, H, Hk, D, Dv, N):
    return (ctypes.c_int64 * 7)(B, T, H, Hk, D, Dv, N)


def plan(lib, backward, B, T, H, Hk, D, Dv, N, packed, causal=True, mode="auto", chunk=0):
    out = (ctypes.c_int64 * 7)()
    cu = torch.zeros(N + 1, dtype=torch.int32) if packed else None   # only its presence matters for the plan
    err = lib.emu_linear_plan(0, int(backward), _sizes(B, T, H, Hk, D, Dv, N), _p(cu),
                              _ints(int(causal), 0, 1, MODE[mode], chunk, 0), out)
    assert err == 0
    return dict(zip(("mode", "C", "BV", "NS", "seq_blocks", "chunk_blocks", "workspace_bytes"), list(out)))


def _nan(shape, dtype=F32):
    return torch.full(shape, float("nan"), dtype=dtype)


def run_fwd(lib, q, k, v, S0, z0, cu, causal, fmap, normalize, scale, eps, mode, chunk, pipeline=0):
    B, T, H, D = q.shape
    Hk, Dv = k.shape[2], v.shape[-1]
    N = B if cu is None else cu.numel() - 1
    opt = _ints(int(causal), FMAP[fmap], int(normalize), MODE[mode], chunk, pipeline)
    pl = plan(lib, False, B, T, H, Hk, D, Dv, N, cu is not None, causal, mode, chunk)
    o, ST, zT = _nan((B, T, H, Dv), q.dtype), _nan((N, H, D, Dv)), _nan((N, H, D))
    ws = _nan((max(pl["workspace_bytes"] // 4, 1),))               # the workspace is never cleared: NaN
    err = lib.emu_linear_fwd(DT[q.dtype], _p(q), _strides(q), _p(k), _strides(k), _p(v), _strides(v),
                             _sizes(B, T, H, Hk, D, Dv, N), _p(cu), opt, ctypes.c_float(scale), ctypes.c_float(eps),
                             _p(S0), _p(z0), _p(o), _p(ST), _p(zT), _p(ws), ctypes.c_int64(pl["workspace_bytes"]))
    assert err == 0, lib.flashts_emu_last_error()
    return o, ST, zT, pl


def run_bwd(lib, do, dST, dzT, q, k, v, o, S0, z0, cu, causal, fmap, normalize, scale, eps, mode, chunk,
            pipeline=0):
    B, T, H, D = q.shape
    Hk, Dv = k.shape[2], v.shape[-1]
    N = B if cu is None else cu.numel() - 1
    opt = _ints(int(causal), FMAP[fmap], int(normalize), MODE[mode], chunk, pipeline)
    pl = plan(lib, True, B, T, H, Hk, D, Dv, N, cu is not None, causal, mode, chunk)
    ws = _nan((max(pl["workspace_bytes"] // 4, 1),))
    ws_inv, ws_dden = _nan((B, T, H)), _nan((B, T, H))
    dq, dk_h, dv_h = _nan((B, T, H, D), q.dtype), _nan((B, T, H, D)), _nan((B, T, H, Dv))
    dS0, dz0 = (_nan((N, H, D, Dv)), _nan((N, H, D))) if S0 is not None else (None, None)
    err = lib.emu_linear_bwd(DT[q.dtype], _p(do), _strides(do), _p(q), _strides(q), _p(k), _strides(k), _p(v),
                             _strides(v), _p(o), _strides(o), _sizes(B, T, H, Hk, D, Dv, N), _p(cu), opt,
                             ctypes.c_float(scale), ctypes.c_float(eps), _p(S0), _p(z0), _p(dST), _p(dzT),
                             _p(ws_inv), _p(ws_dden), _p(dq), _p(dk_h), _p(dv_h), _p(dS0), _p(dz0), _p(ws),
                             ctypes.c_int64(pl["workspace_bytes"]))
    assert err == 0, lib.flashts_emu_last_error()
    G = H // Hk
    dk = dk_h.view(B, T, Hk, G, D).sum(3)
    dv = dv_h.view(B, T, Hk, G, Dv).sum(3)
    return dq, dk, dv, dS0, dz0, pl


def rel(x, y):
    x, y = x.double(), y.double()
    assert torch.isfinite(x).all(), "non-finite values (an element not written?)"
    return ((x - y).norm() / y.norm().clamp_min(1e-30)).item()


def make(B, T, H, Hk, D, Dv, dtype, seed, N=None):
    g = torch.Generator().manual_seed(seed)
    N = B if N is None else N
    q, k, v = (torch.randn(B, T, h, d, generator=g, dtype=F64) for h, d in ((H, D), (Hk, D), (Hk, Dv)))
    q, k = q.abs() * 0.5, k.abs() * 0.5                            # positive features: a well-conditioned den
    S0 = torch.randn(N, H, D, Dv, generator=g, dtype=F64)
    z0 = torch.rand(N, H, D, generator=g, dtype=F64) + 1
    return [x.to(dtype) for x in (q, k, v)], (S0.float(), z0.float())


def reference(q, k, v, S0, z0, cu, causal, fmap, normalize, scale, eps, cot=None):
    leaves = [x.double().requires_grad_(True) for x in (q, k, v)]
    st = None if S0 is None else tuple(x.double().requires_grad_(True) for x in (S0, z0))
    o, (S, z) = ref.linear_attention(*leaves, causal=causal, feature_map=fmap, normalize=normalize, scale=scale,
                                     eps=eps, initial_state=st, output_final_state=True, cu_seqlens=cu)
    if cot is None:
        return o, S, z
    do, dS, dz = cot
    loss = (o * do.double()).sum() + (S * dS.double()).sum() + (z * dz.double()).sum()
    grads = torch.autograd.grad(loss, leaves + (list(st) if st else []))
    return o.detach(), grads


# ------------------------------------------------------------------------------------------------ plan

def test_plan_at_the_goal_shapes(lib):
    """The launcher's plan equals the Python port's (tests/test_linear_chunk_port.py) at the goal shapes."""
    from test_linear_chunk_port import make_plan

    for D in (64, 128):
        got = plan(lib, False, 4, 8192, 16, 16, D, D, 4, False)
        want = make_plan(4, 8192, 4, 16, D, D, False, 132, 232448)
        assert got == {**want, "mode": 2}
    assert plan(lib, False, 64, 96, 8, 8, 64, 64, 64, False)["mode"] == MODE["one_pass"]   # N·H = 512 ≥ 264
    bw = plan(lib, True, 4, 8192, 16, 16, 128, 128, 4, False)
    assert (bw["mode"], bw["C"], bw["chunk_blocks"]) == (2, 32, 4 * 256 * 16)


# ------------------------------------------------------------------------------------------------ forward

FWD_CASES = [  # (causal, fmap, normalize, B, T, H, Hk, D, Dv, chunk, with_state)
    (True, "elu", True, 2, 37, 2, 1, 19, 37, 16, True),
    (False, "elu", True, 2, 37, 2, 1, 19, 37, 16, True),
    (True, "relu", False, 1, 50, 3, 3, 8, 16, 16, False),
    (False, "identity", False, 1, 33, 2, 2, 16, 8, 16, True),
    (True, "elu", True, 1, 70, 1, 1, 5, 72, 32, True),
]


@pytest.mark.parametrize("mode", ["chunked", "one_pass"])
@pytest.mark.parametrize("case", FWD_CASES, ids=lambda c: f"{'causal' if c[0] else 'full'}-{c[1]}-T{c[4]}-D{c[7]}"
                         f"-Dv{c[8]}")
def test_forward_float32(lib, case, mode):
    causal, fmap, normalize, B, T, H, Hk, D, Dv, chunk, with_state = case
    (q, k, v), (S0, z0) = make(B, T, H, Hk, D, Dv, F32, seed=T + D)
    if not with_state:
        S0 = z0 = None
    scale = 0.7
    o, ST, zT, pl = run_fwd(lib, q, k, v, S0, z0, None, causal, fmap, normalize, scale, 1e-6, mode, chunk)
    assert pl["mode"] == MODE[mode] and pl["C"] == chunk
    o_r, S_r, z_r = reference(q, k, v, S0, z0, None, causal, fmap, normalize, scale, 1e-6)
    assert rel(o, o_r) < TOL[F32] and rel(ST, S_r) < TOL[F32] and rel(zT, z_r) < TOL[F32]


@pytest.mark.parametrize("mode", ["chunked", "one_pass"])
def test_forward_bfloat16_tensor_cores(lib, mode):
    """bf16 inputs: the chunk products go through mma_m16n8k8_tf32 (emulated: TF32 rounding of the operands);
    contiguous rows with D, Dv multiples of 8 take the 16-byte-load path."""
    (q, k, v), (S0, z0) = make(2, 45, 2, 2, 24, 40, BF16, seed=3)
    o, ST, zT, _ = run_fwd(lib, q, k, v, S0, z0, None, True, "elu", True, 1.0, 1e-6, mode, 16)
    o_r, S_r, z_r = reference(q, k, v, S0, z0, None, True, "elu", True, 1.0, 1e-6)
    assert rel(o, o_r) < TOL[BF16] and rel(ST, S_r) < 1e-3 and rel(zT, z_r) < 1e-5


def test_forward_strided_inputs_equal_contiguous(lib):
    """A strided q (scalar-load path) gives the same bits as its contiguous copy (16-byte-load path)."""
    (q, k, v), (S0, z0) = make(1, 40, 2, 2, 16, 16, F32, seed=5)
    q_strided = torch.randn(1, 40, 2, 32)[..., ::2]
    q_strided.copy_(q)
    a = run_fwd(lib, q_strided, k, v, S0, z0, None, True, "elu", True, 1.0, 1e-6, "chunked", 16)
    b = run_fwd(lib, q.contiguous(), k, v, S0, z0, None, True, "elu", True, 1.0, 1e-6, "chunked", 16)
    assert all(torch.equal(x, y) for x, y in zip(a[:3], b[:3]))


@pytest.mark.parametrize("causal", [True, False])
def test_forward_packed_sequences(lib, causal):
    lens = [0, 1, 17, 40, 16, 3]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32)
    T, N = int(cu[-1]), len(lens)
    (q, k, v), (S0, z0) = make(1, T, 2, 1, 9, 6, F32, seed=9, N=N)
    o, ST, zT, pl = run_fwd(lib, q, k, v, S0, z0, cu, causal, "elu", True, 1.0, 1e-6, "chunked", 16)
    assert pl["NS"] == T // 16 + N
    o_r, S_r, z_r = reference(q, k, v, S0, z0, cu, causal, "elu", True, 1.0, 1e-6)
    assert rel(o, o_r) < TOL[F32] and rel(ST, S_r) < TOL[F32] and rel(zT, z_r) < TOL[F32]
    for n in range(N):                                             # and the same as one call per sequence
        a, b = int(cu[n]), int(cu[n + 1])
        if b == a:
            continue
        o_n, S_n, _, _ = run_fwd(lib, q[:, a:b].contiguous(), k[:, a:b].contiguous(), v[:, a:b].contiguous(),
                                 S0[n:n + 1].contiguous(), z0[n:n + 1].contiguous(), None, causal, "elu", True, 1.0,
                                 1e-6, "chunked", 16)
        assert rel(o[:, a:b], o_n) < 1e-6 and rel(ST[n:n + 1], S_n) < 1e-6


# ------------------------------------------------------------------------------------------------ backward

BWD_CASES = [  # (causal, fmap, normalize, B, T, H, Hk, D, Dv, with_state)
    (True, "elu", True, 2, 37, 2, 1, 19, 21, True),
    (False, "elu", True, 1, 37, 2, 2, 19, 21, True),
    (True, "relu", False, 1, 40, 2, 2, 8, 16, False),
    (False, "identity", False, 1, 33, 1, 1, 16, 8, True),
]


@pytest.mark.parametrize("mode", ["chunked", "one_pass"])
@pytest.mark.parametrize("case", BWD_CASES, ids=lambda c: f"{'causal' if c[0] else 'full'}-{c[1]}-T{c[4]}")
def test_backward_float32(lib, case, mode):
    causal, fmap, normalize, B, T, H, Hk, D, Dv, with_state = case
    (q, k, v), (S0, z0) = make(B, T, H, Hk, D, Dv, F32, seed=T + Dv)
    if not with_state:
        S0 = z0 = None
    scale, eps = 0.8, 1e-6
    g = torch.Generator().manual_seed(1)
    N = B
    do = torch.randn(B, T, H, Dv, generator=g)
    dST, dzT = torch.randn(N, H, D, Dv, generator=g), torch.randn(N, H, D, generator=g)
    o, _, _, _ = run_fwd(lib, q, k, v, S0, z0, None, causal, fmap, normalize, scale, eps, mode, 16)
    dq, dk, dv, dS0, dz0, pl = run_bwd(lib, do, dST, dzT, q, k, v, o, S0, z0, None, causal, fmap, normalize, scale,
                                       eps, mode, 16)
    assert pl["mode"] == MODE[mode]
    _, grads = reference(q, k, v, S0, z0, None, causal, fmap, normalize, scale, eps, cot=(do, dST, dzT))
    for name, x, r in zip(("dq", "dk", "dv", "dS0", "dz0"), (dq, dk, dv, dS0, dz0), grads):
        assert rel(x, r) < 1e-4, name


@pytest.mark.parametrize("causal", [True, False])
def test_backward_packed_sequences(lib, causal):
    lens = [0, 1, 17, 20, 3]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32)
    T, N = int(cu[-1]), len(lens)
    (q, k, v), (S0, z0) = make(1, T, 2, 1, 9, 6, F32, seed=13, N=N)
    g = torch.Generator().manual_seed(2)
    do = torch.randn(1, T, 2, 6, generator=g)
    dST, dzT = torch.randn(N, 2, 9, 6, generator=g), torch.randn(N, 2, 9, generator=g)
    o, _, _, _ = run_fwd(lib, q, k, v, S0, z0, cu, causal, "elu", True, 1.0, 1e-6, "chunked", 16)
    got = run_bwd(lib, do, dST, dzT, q, k, v, o, S0, z0, cu, causal, "elu", True, 1.0, 1e-6, "chunked", 16)
    _, grads = reference(q, k, v, S0, z0, cu, causal, "elu", True, 1.0, 1e-6, cot=(do, dST, dzT))
    for name, x, r in zip(("dq", "dk", "dv", "dS0", "dz0"), got[:5], grads):
        assert rel(x, r) < 1e-4, name


@pytest.mark.parametrize("mode", ["chunked", "one_pass"])
def test_backward_bfloat16_tensor_cores(lib, mode):
    """bf16 inputs: every chunk product of both backward kernels through the emulated mma.sync TF32 wrapper."""
    B, T, H, Hk, D, Dv = 1, 40, 2, 1, 24, 16
    (q, k, v), (S0, z0) = make(B, T, H, Hk, D, Dv, BF16, seed=21)
    g = torch.Generator().manual_seed(3)
    do = torch.randn(B, T, H, Dv, generator=g).to(BF16)
    dST, dzT = torch.randn(B, H, D, Dv, generator=g), torch.randn(B, H, D, generator=g)
    o, _, _, _ = run_fwd(lib, q, k, v, S0, z0, None, True, "elu", True, 1.0, 1e-6, mode, 16)
    got = run_bwd(lib, do, dST, dzT, q, k, v, o, S0, z0, None, True, "elu", True, 1.0, 1e-6, mode, 16)
    _, grads = reference(q, k, v, S0, z0, None, True, "elu", True, 1.0, 1e-6, cot=(do, dST, dzT))
    for name, x, r in zip(("dq", "dk", "dv", "dS0", "dz0"), got[:5], grads):
        assert rel(x, r) < TOL[BF16], name


@pytest.mark.parametrize("T,D,Dv,chunk,mode,picked", [(1, 7, 3, 0, "auto", "one_pass"),
                                                      (20, 128, 128, 16, "chunked", "chunked"),
                                                      (0, 4, 4, 0, "chunked", "chunked"),
                                                      (65, 32, 32, 0, "auto", "chunked")])
def test_forward_edge_sizes(lib, T, D, Dv, chunk, mode, picked):
    """T = 1 and T = 0 (only the state passes through), the largest head dims, and the automatic choices (below
    one wave the rule takes the mode with more blocks at BV = 16; a tie goes to the one pass)."""
    (q, k, v), (S0, z0) = make(1, T, 2, 2, D, Dv, F32, seed=T + 1)
    o, ST, zT, pl = run_fwd(lib, q, k, v, S0, z0, None, True, "elu", True, 1.0, 1e-6, mode, chunk)
    assert pl["mode"] == MODE[picked] and pl["C"] == (chunk or 64)
    o_r, S_r, z_r = reference(q, k, v, S0, z0, None, True, "elu", True, 1.0, 1e-6)
    assert rel(ST, S_r) < TOL[F32] and rel(zT, z_r) < TOL[F32]
    if T:
        assert rel(o, o_r) < TOL[F32]


def test_thread_schedules_agree(lib):
    """The chunk-parallel forward and backward give the same bits when the emulated threads of each block run in
    reverse or shuffled order between barriers (a kernel that read another thread's result of the same phase
    would not)."""
    (q, k, v), (S0, z0) = make(1, 37, 2, 1, 19, 21, BF16, seed=31)
    g = torch.Generator().manual_seed(4)
    do = torch.randn(1, 37, 2, 21, generator=g).to(BF16)
    dST, dzT = torch.randn(1, 2, 19, 21, generator=g), torch.randn(1, 2, 19, generator=g)
    results = []
    try:
        for schedule in (0, 1, 7):
            lib.flashts_emu_set_schedule(schedule)
            o, ST, zT, _ = run_fwd(lib, q, k, v, S0, z0, None, True, "elu", True, 1.0, 1e-6, "chunked", 16)
            grads = run_bwd(lib, do, dST, dzT, q, k, v, o, S0, z0, None, True, "elu", True, 1.0, 1e-6, "chunked", 16)
            results.append([o, ST, zT, *grads[:5]])
    finally:
        lib.flashts_emu_set_schedule(0)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


# ------------------------------------------------------------------------------------ cp.async pipeline

PIPE = {"auto": 0, "off": 1, "on": 2}


def seq_config(lib, dtype, kind, D, Dv, chunk=0, pipeline="auto"):
    out = (ctypes.c_int64 * 3)()
    assert lib.emu_linear_seq_config({F32: 0, torch.float16: 1, BF16: 2}[dtype], kind, D, Dv, chunk,
                                     PIPE[pipeline], out) == 0
    return dict(zip(("C", "pipe", "bytes"), list(out)))


def test_sequential_staging_budget(lib):
    """The sequential kernels' chunk, cp.async staging and dynamic shared memory at the goal head dims on the
    (emulated) H200, as documented above SeqConfig in csrc/linear_attention.cu: staging only where it fits in
    227 KB and does not lower the blocks per SM (the emulated occupancy counts threads and shared memory)."""
    want = {  # (kind, D): (C, staged, bytes) for 16-bit inputs; kind 0 fwd_kernel, 1 bwd_dq, 2 bwd_dkv
        (0, 64): (64, 0, 105216), (0, 128): (64, 0, 221184),
        (1, 64): (64, 1, 172800), (1, 128): (32, 1, 194816),
        (2, 64): (64, 1, 190208), (2, 128): (32, 1, 211712),
    }
    for (kind, D), (C, staged, nbytes) in want.items():
        got = seq_config(lib, BF16, kind, D, D)
        assert (got["C"], got["pipe"], got["bytes"]) == (C, staged, nbytes), (kind, D, got)
        assert got["bytes"] <= 232448
        off = seq_config(lib, BF16, kind, D, D, pipeline="off")
        assert off["pipe"] == 0 and off["C"] == C
        if staged:
            assert got["bytes"] - off["bytes"] == C * D * 2 * (3 if kind == 0 else 4)
    assert seq_config(lib, BF16, 0, 64, 64, pipeline="on")["pipe"] == 1         # forced: fits, 1 block per SM
    assert seq_config(lib, BF16, 0, 128, 128, pipeline="on")["pipe"] == 0       # does not fit at C = 64
    assert seq_config(lib, BF16, 0, 32, 32)["pipe"] == 1                        # 3 blocks per SM either way
    assert seq_config(lib, F32, 2, 128, 128)["pipe"] == 0                       # float32 staging: 275 KB


# (causal, fmap, normalize, B, T, H, Hk, D, Dv, dtype, layout): "contiguous" stages q, k, v (and do) with 16-byte
# cp.async; "strided_q" has a strided q (and do) row: the fallback loads for those beside staged k, v;
# D = 19 leaves only v staged (D not a multiple of 16 / sizeof).
PIPE_CASES = [
    (True, "elu", True, 2, 37, 2, 1, 24, 40, BF16, "contiguous"),
    (False, "elu", True, 1, 37, 2, 2, 16, 8, F32, "contiguous"),
    (True, "relu", False, 1, 40, 2, 1, 16, 16, F32, "strided_q"),
    (False, "identity", True, 1, 33, 1, 1, 19, 16, BF16, "contiguous"),
]


def _strided_copy(x, g):
    y = torch.randn(*x.shape[:-1], 2 * x.shape[-1], generator=g).to(x.dtype)[..., ::2]
    y.copy_(x)
    return y


@pytest.mark.parametrize("case", PIPE_CASES, ids=lambda c: f"{'causal' if c[0] else 'full'}-{c[1]}-D{c[7]}-"
                         f"{'bf16' if c[9] is BF16 else 'f32'}-{c[10]}")
def test_pipelined_sequential_kernels(lib, case):
    """One-pass forward and backward with the cp.async staging forced on give the SAME bits as with it off (the
    staging changes only how the tiles reach shared memory), and match the float64 reference; several chunks of
    16 with a partial last one, both sweeps of the non-causal kernels."""
    causal, fmap, normalize, B, T, H, Hk, D, Dv, dtype, layout = case
    for kind in range(3):
        cfg = seq_config(lib, dtype, kind, D, Dv, chunk=16, pipeline="on")
        assert cfg["pipe"] == 1 and cfg["C"] == 16
    (q, k, v), (S0, z0) = make(B, T, H, Hk, D, Dv, dtype, seed=T + D + 7)
    g = torch.Generator().manual_seed(5)
    do = torch.randn(B, T, H, Dv, generator=g).to(dtype)
    dST, dzT = torch.randn(B, H, D, Dv, generator=g), torch.randn(B, H, D, generator=g)
    if layout == "strided_q":
        q, do = _strided_copy(q, g), _strided_copy(do, g)
    scale, eps = 0.9, 1e-6
    runs = []
    for pipeline in (PIPE["on"], PIPE["off"]):
        o, ST, zT, _ = run_fwd(lib, q, k, v, S0, z0, None, causal, fmap, normalize, scale, eps, "one_pass", 16,
                               pipeline)
        grads = run_bwd(lib, do, dST, dzT, q, k, v, o, S0, z0, None, causal, fmap, normalize, scale, eps,
                        "one_pass", 16, pipeline)
        runs.append([o, ST, zT, *grads[:5]])
    for name, a, b in zip(("o", "S_T", "z_T", "dq", "dk", "dv", "dS0", "dz0"), *runs):
        assert torch.equal(a, b), name
    o, ST, zT, dq, dk, dv, dS0, dz0 = runs[0]
    o_r, grads = reference(q, k, v, S0, z0, None, causal, fmap, normalize, scale, eps, cot=(do, dST, dzT))
    _, S_r, z_r = reference(q, k, v, S0, z0, None, causal, fmap, normalize, scale, eps)
    tol = TOL[dtype] if dtype is BF16 else 1e-4
    assert rel(o, o_r) < tol and rel(ST, S_r) < tol and rel(zT, z_r) < tol
    for name, x, r in zip(("dq", "dk", "dv", "dS0", "dz0"), (dq, dk, dv, dS0, dz0), grads):
        assert rel(x, r) < tol, name


def test_pipelined_thread_schedules_agree(lib):
    """The staged one-pass kernels give the same bits when the emulated threads run in reverse or shuffled order:
    each thread converts only the 16-byte groups it copied itself (a copy lands at its issuer's wait)."""
    (q, k, v), (S0, z0) = make(1, 37, 2, 1, 24, 16, BF16, seed=41)
    g = torch.Generator().manual_seed(6)
    do = torch.randn(1, 37, 2, 16, generator=g).to(BF16)
    dST, dzT = torch.randn(1, 2, 24, 16, generator=g), torch.randn(1, 2, 24, generator=g)
    results = []
    try:
        for schedule in (0, 1, 7):
            lib.flashts_emu_set_schedule(schedule)
            o, ST, zT, _ = run_fwd(lib, q, k, v, S0, z0, None, True, "elu", True, 1.0, 1e-6, "one_pass", 16, 2)
            grads = run_bwd(lib, do, dST, dzT, q, k, v, o, S0, z0, None, True, "elu", True, 1.0, 1e-6, "one_pass",
                            16, 2)
            results.append([o, ST, zT, *grads[:5]])
    finally:
        lib.flashts_emu_set_schedule(0)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))
