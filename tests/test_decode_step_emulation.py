"""Decode-step kernels (csrc/decode_step.cu) checked WITHOUT a GPU: the kernels' own per-thread phase functions
(csrc/decode_math.h) are compiled for the host (tests/emulation/decode_emu.cpp, g++), run for every (block,
thread) phase by phase, and compared with ``flashts.reference`` in float64 over several consecutive steps.

Every case runs the threads (and, for the ring buffer, the blocks) of each phase forwards and in reverse, with
several block sizes and both the 128-bit (vec=4) and the scalar path, on odd sizes with strided inputs.
"""
import ctypes
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from flashts import reference as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F64 = torch.float64


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    so = str(tmp_path_factory.mktemp("emu") / "decode_emu.so")
    subprocess.run([cxx, "-std=c++17", "-O1", "-shared", "-fPIC", "-I", os.path.join(ROOT, "csrc"),
                    os.path.join(ROOT, "tests", "emulation", "decode_emu.cpp"), "-o", so], check=True)
    return ctypes.CDLL(so)


def _p(a):
    return None if a is None else ctypes.c_void_p(a.ctypes.data)


def _strided(x: torch.Tensor):
    """float32 numpy view of x [B, H, X] with non-contiguous strides; returns (array, strides pointer, keep)."""
    B, H, X = x.shape
    buf = np.zeros((B, H, 2 * X + 1), dtype=np.float32)
    view = buf[:, :, 1::2][:, :, :X]
    view[...] = x.numpy().astype(np.float32)
    strides = np.array([s // 4 for s in view.strides], dtype=np.int64)
    base = buf.ctypes.data + (view.ctypes.data - buf.ctypes.data)
    return ctypes.c_void_p(base), _p(strides), (buf, strides)


def _i64(*xs):
    return [ctypes.c_int64(int(x)) for x in xs]


def _rel(a, b):
    a, b = torch.as_tensor(np.asarray(a), dtype=F64), b.to(F64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


CONFIGS = [(128, 4, 0), (32, 4, 1), (64, 1, 1), (96, 1, 0)]  # (threads, vec, reverse)


@pytest.mark.parametrize("nt,vec,rev", CONFIGS)
@pytest.mark.parametrize("fmap,normalize", [("elu", True), ("relu", True), ("identity", False)])
def test_linear_step(emu, nt, vec, rev, fmap, normalize):
    g = torch.Generator().manual_seed(nt * 7 + vec + rev)
    B, T, H, Hk, D = 2, 4, 6, 3, 5
    Dv = 8 if vec == 4 else 7
    q, k, v = (torch.randn(B, T, h, d, generator=g, dtype=F64) for h, d in ((H, D), (Hk, D), (Hk, Dv)))
    if fmap == "relu":  # keep the normaliser away from 0
        q, k = q.abs() + 0.1, k.abs() + 0.1
    S0 = torch.randn(B, H, D, Dv, generator=g, dtype=F64)
    z0 = torch.rand(B, H, D, generator=g, dtype=F64) + 1.0
    scale = 0.7
    o_ref, (S_ref, z_ref) = ref.linear_attention(q, k, v, feature_map=fmap, normalize=normalize, scale=scale,
                                                 initial_state=(S0, z0), output_final_state=True)
    S = S0.numpy().astype(np.float32).copy()
    z = z0.numpy().astype(np.float32).copy()
    fm = {"elu": 0, "relu": 1, "identity": 2}[fmap]
    for t in range(T):
        qp, qs, _kq = _strided(q[:, t])
        kp, ks, _kk = _strided(k[:, t])
        vp, vs, _kv = _strided(v[:, t])
        o = np.full((B, H, Dv), np.nan, dtype=np.float32)
        rc = emu.emu_linear_step(qp, qs, kp, ks, vp, vs, *_i64(B, H, Hk, D, Dv), fm, int(normalize),
                                 ctypes.c_float(scale), ctypes.c_float(1e-6), _p(S), _p(z), _p(S), _p(z), _p(o),
                                 nt, vec, rev)
        assert rc == 0
        assert _rel(o, o_ref[:, t]) < 1e-5, t
    assert _rel(S, S_ref) < 1e-5 and _rel(z, z_ref) < 1e-5


@pytest.mark.parametrize("nt,vec,rev", CONFIGS)
@pytest.mark.parametrize("shared_q", [True, False])
def test_aaren_step(emu, nt, vec, rev, shared_q):
    g = torch.Generator().manual_seed(100 + nt + vec + rev + shared_q)
    B, T, H, D = 3, 5, 2, 7
    Dv = 12 if vec == 4 else 9
    q = torch.randn(H, D, generator=g, dtype=F64) if shared_q else torch.randn(B, H, D, generator=g, dtype=F64)
    k = 2 * torch.randn(B, T, H, D, generator=g, dtype=F64)
    v = torch.randn(B, T, H, Dv, generator=g, dtype=F64)
    scale = 0.9
    o_ref, (m_ref, u_ref, w_ref) = ref.aaren_attention(q, k, v, scale=scale, output_final_state=True)
    m = np.zeros((B, H), np.float32)
    u = np.zeros((B, H), np.float32)
    w = np.zeros((B, H, Dv), np.float32)
    qb = q if not shared_q else q.unsqueeze(0)
    qarr = np.ascontiguousarray(qb.numpy().astype(np.float32))
    qs = np.array([0 if shared_q else H * D, D, 1], dtype=np.int64)
    for t in range(T):
        kp, ks, _kk = _strided(k[:, t])
        vp, vs, _kv = _strided(v[:, t])
        o = np.full((B, H, Dv), np.nan, dtype=np.float32)
        first = t == 0  # the empty state as null pointers
        rc = emu.emu_aaren_step(_p(qarr), _p(qs), kp, ks, vp, vs, *_i64(B, H, D, Dv), ctypes.c_float(scale),
                                None if first else _p(m), None if first else _p(u), None if first else _p(w),
                                _p(m), _p(u), _p(w), _p(o), nt, vec, rev)
        assert rc == 0
        assert _rel(o, o_ref[:, t]) < 1e-5, t
    # the state is (m, u, w) up to the choice of m: compare u·e^m and w·e^m
    c = torch.exp(torch.from_numpy(m).to(F64) - m_ref)
    assert _rel(torch.from_numpy(u).to(F64) * c, u_ref) < 1e-5
    assert _rel(torch.from_numpy(w).to(F64) * c.unsqueeze(-1), w_ref) < 1e-5


@pytest.mark.parametrize("nt,vec,rev", CONFIGS)
def test_latte_step(emu, nt, vec, rev):
    g = torch.Generator().manual_seed(200 + nt + vec + rev)
    B, T, H, L = 2, 5, 3, 11
    Dv = 8 if vec == 4 else 5
    q = torch.randn(B, T, H, L, generator=g, dtype=F64)
    k = 3 * torch.randn(B, T, H, L, generator=g, dtype=F64)
    v = torch.randn(B, T, H, Dv, generator=g, dtype=F64)
    m0 = torch.randn(B, H, L, generator=g, dtype=F64)
    a0 = torch.rand(B, H, L, generator=g, dtype=F64) + 0.5
    S0 = torch.randn(B, H, L, Dv, generator=g, dtype=F64)
    o_ref, (m_ref, a_ref, S_ref) = ref.latte_attention(q, k, v, initial_state=(m0, a0, S0), output_final_state=True)
    m, a, S = (x.numpy().astype(np.float32).copy() for x in (m0, a0, S0))
    for t in range(T):
        qp, qs, _kq = _strided(q[:, t])
        kp, ks, _kk = _strided(k[:, t])
        vp, vs, _kv = _strided(v[:, t])
        o = np.full((B, H, Dv), np.nan, dtype=np.float32)
        rc = emu.emu_latte_step(qp, qs, kp, ks, vp, vs, *_i64(B, H, L, Dv), _p(m), _p(a), _p(S), _p(m), _p(a),
                                _p(S), _p(o), nt, vec, rev)
        assert rc == 0
        assert _rel(o, o_ref[:, t]) < 1e-5, t
    c = torch.exp(torch.from_numpy(m).to(F64) - m_ref)
    assert _rel(torch.from_numpy(a).to(F64) * c, a_ref) < 1e-5
    assert _rel(torch.from_numpy(S).to(F64) * c.unsqueeze(-1), S_ref) < 1e-5


@pytest.mark.parametrize("nt,vec,rev", CONFIGS)
@pytest.mark.parametrize("left", [0, 3, 6])
def test_swa_ring_step(emu, nt, vec, rev, left):
    g = torch.Generator().manual_seed(300 + nt + vec + rev + left)
    B, T, H, Hk = 2, 9, 4, 2
    D, Dv = (8, 12) if vec == 4 else (5, 7)
    W = left + 1
    q = torch.randn(B, T, H, D, generator=g, dtype=F64)
    k = torch.randn(B, T, Hk, D, generator=g, dtype=F64)
    v = torch.randn(B, T, Hk, Dv, generator=g, dtype=F64)
    scale = D ** -0.5
    o_ref = ref.sliding_window_attention(q, k, v, window=(left, 0), scale=scale)
    kc = np.full((B, W, Hk, D), np.nan, np.float32)  # unfilled slots must never be read
    vc = np.full((B, W, Hk, Dv), np.nan, np.float32)
    pos = np.zeros(B, np.int64)
    for t in range(T):
        qp, qs, _kq = _strided(q[:, t])
        kp, ks, _kk = _strided(k[:, t])
        vp, vs, _kv = _strided(v[:, t])
        o = np.full((B, H, Dv), np.nan, dtype=np.float32)
        rc = emu.emu_swa_ring_step(qp, qs, kp, ks, vp, vs, *_i64(B, H, Hk, D, Dv, W), ctypes.c_float(scale),
                                   _p(kc), _p(vc), _p(pos), _p(o), nt, vec, rev)
        assert rc == 0
        assert _rel(o, o_ref[:, t]) < 1e-5, t
        pos += 1  # the op advances pos after the kernel
        slot = t % W  # token t sits in slot t mod W
        assert np.array_equal(kc[:, slot], k[:, t].numpy().astype(np.float32))
