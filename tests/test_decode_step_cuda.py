"""Decode-step kernels on the GPU (csrc/decode_step.cu through torch.ops.flashts_cuda.*_decode_step and
flashts/cuda_ops/decode.py). Marked ``cuda_ext``: they skip without a GPU and the compiled flashts._C. The same
kernels' math is checked on the CPU by tests/test_decode_step_emulation.py (host emulation).

Covers: several consecutive steps against flashts.reference (float64) in float32 and bfloat16; the 128-bit
(head dims multiple of 4 / 8) and scalar (odd head dims) paths; GQA; strided inputs; the empty state; the ring
buffer wrapping around; replay under a captured CUDA graph equal to eager; the op layer's T = 1 path with
backend="cuda" (equal to the reference, initial state left untouched).
"""
from __future__ import annotations

import pytest
import torch

import flashts
from flashts import reference as ref
from helpers import device_for, rel_err

cuda_ext = pytest.mark.cuda_ext
DEV = device_for("cuda")  # the GPU; the CPU under FLASHTS_EMULATE_CUDA_EXT=1 (tests/conftest.py)
F32, BF16, F64 = torch.float32, torch.bfloat16, torch.float64
TOL = {F32: 1e-4, BF16: 2e-2}


def _dec():
    from flashts.cuda_ops import decode
    return decode


def _strided(x, dtype):
    """x [B, H, X] on the GPU with a non-contiguous last dim (every other element of a wider buffer)."""
    B, H, X = x.shape
    buf = torch.zeros(B, H, 2 * X, device=DEV, dtype=dtype)
    buf[..., ::2] = x.to(DEV, dtype)
    return buf[..., ::2]


@cuda_ext
@pytest.mark.parametrize("dtype", [F32, BF16])
@pytest.mark.parametrize("D,Dv,Hk", [(64, 64, 8), (33, 17, 2)])
def test_linear_steps(dtype, D, Dv, Hk):
    B, T, H = 3, 6, 8
    q, k, v = torch.randn(B, T, H, D), torch.randn(B, T, Hk, D), torch.randn(B, T, Hk, Dv)
    q64, k64, v64 = (x.to(dtype).to(F64) for x in (q, k, v))
    o_ref, (S_ref, z_ref) = ref.linear_attention(q64, k64, v64, output_final_state=True)
    S = torch.zeros(B, H, D, Dv, device=DEV)
    z = torch.zeros(B, H, D, device=DEV)
    for t in range(T):
        o = _dec().linear_step(_strided(q[:, t], dtype), k[:, t].to(DEV, dtype), v[:, t].to(DEV, dtype), S, z)
        assert rel_err(o.cpu(), o_ref[:, t]) < TOL[dtype], t
    assert rel_err(S.cpu(), S_ref) < 1e-4 and rel_err(z.cpu(), z_ref) < 1e-4


@cuda_ext
@pytest.mark.parametrize("dtype", [F32, BF16])
@pytest.mark.parametrize("Dv,shared_q", [(64, True), (17, False)])
def test_aaren_steps(dtype, Dv, shared_q):
    B, T, H, D = 3, 6, 4, 64
    q = torch.randn(H, D) if shared_q else torch.randn(B, H, D)
    k, v = torch.randn(B, T, H, D), torch.randn(B, T, H, Dv)
    q64, k64, v64 = (x.to(dtype).to(F64) for x in (q, k, v))
    o_ref, (m_ref, u_ref, w_ref) = ref.aaren_attention(q64, k64, v64, output_final_state=True)
    m = torch.full((B, H), float("-inf"), device=DEV)
    u = torch.zeros(B, H, device=DEV)
    w = torch.zeros(B, H, Dv, device=DEV)
    for t in range(T):
        o = _dec().aaren_step(q.to(DEV, dtype), _strided(k[:, t], dtype), v[:, t].to(DEV, dtype), m, u, w)
        assert rel_err(o.cpu(), o_ref[:, t]) < TOL[dtype], t
    c = torch.exp(m.cpu().double() - m_ref)
    assert rel_err(u.cpu() * c, u_ref) < 1e-4 and rel_err(w.cpu() * c.unsqueeze(-1), w_ref) < 1e-4


@cuda_ext
@pytest.mark.parametrize("dtype", [F32, BF16])
@pytest.mark.parametrize("L,Dv", [(64, 64), (7, 13)])
def test_latte_steps(dtype, L, Dv):
    B, T, H = 2, 6, 4
    q, k, v = torch.randn(B, T, H, L), 2 * torch.randn(B, T, H, L), torch.randn(B, T, H, Dv)
    q64, k64, v64 = (x.to(dtype).to(F64) for x in (q, k, v))
    o_ref, _ = ref.latte_attention(q64, k64, v64, output_final_state=True)
    m = torch.full((B, H, L), float("-inf"), device=DEV)
    a = torch.zeros(B, H, L, device=DEV)
    S = torch.zeros(B, H, L, Dv, device=DEV)
    for t in range(T):
        o = _dec().latte_step(_strided(q[:, t], dtype), k[:, t].to(DEV, dtype), v[:, t].to(DEV, dtype), m, a, S)
        assert rel_err(o.cpu(), o_ref[:, t]) < TOL[dtype], t


@cuda_ext
@pytest.mark.parametrize("dtype", [F32, BF16])
@pytest.mark.parametrize("W,D,Dv", [(4, 64, 64), (1, 64, 64), (5, 33, 17)])
def test_swa_ring_steps(dtype, W, D, Dv):
    B, T, H, Hk = 2, 11, 8, 2
    q, k, v = torch.randn(B, T, H, D), torch.randn(B, T, Hk, D), torch.randn(B, T, Hk, Dv)
    q64, k64, v64 = (x.to(dtype).to(F64) for x in (q, k, v))
    o_ref = ref.sliding_window_attention(q64, k64, v64, window=(W - 1, 0))
    kc = torch.full((B, W, Hk, D), float("nan"), device=DEV, dtype=dtype)  # unfilled slots are never read
    vc = torch.full((B, W, Hk, Dv), float("nan"), device=DEV, dtype=dtype)
    pos = torch.zeros(B, dtype=torch.int64, device=DEV)
    for t in range(T):
        o = _dec().swa_ring_step(q[:, t].to(DEV, dtype), _strided(k[:, t], dtype), v[:, t].to(DEV, dtype), kc, vc,
                                 pos)
        assert rel_err(o.cpu(), o_ref[:, t]) < TOL[dtype], t
    assert pos.tolist() == [T] * B


@cuda_ext
@pytest.mark.parametrize("dtype", [F32, BF16])
@pytest.mark.parametrize("left,D,Dv,L", [(4, 64, 64, 16), (3, 33, 17, 5), (0, 8, 8, 4)])
def test_macchiato_steps(dtype, left, D, Dv, L):
    B, T, H = 3, 7, 4
    q, k, v = torch.randn(B, T, H, D), torch.randn(B, T, H, D), torch.randn(B, T, H, Dv)
    mix, lk = 2 * torch.randn(B, T, H, L + 1), 2 * torch.randn(B, T, H, L)
    xs64 = [x.to(dtype).to(F64) for x in (q, k, v, mix, lk)]
    W = left
    n0 = torch.tensor([0, min(2, W), W], dtype=torch.int32)   # empty, partly filled, full windows
    kw0, vw0 = torch.randn(B, W, H, D), torch.randn(B, W, H, Dv)
    for b in range(B):
        kw0[b, :W - int(n0[b])] = 0
        vw0[b, :W - int(n0[b])] = 0
    m0, a0, S0 = torch.randn(B, H, L), torch.rand(B, H, L) + 0.5, torch.randn(B, H, L, Dv)
    init = (kw0, vw0, n0, m0, a0, S0)
    o_ref, st_ref = ref.latte_macchiato_attention(*xs64, window=(left, 0), initial_state=tuple(
        x.to(F64) if x.is_floating_point() else x for x in init), output_final_state=True)
    st = [x.to(DEV).contiguous() for x in init]
    for t in range(T):
        o = _dec().macchiato_step(_strided(q[:, t], dtype), *(x[:, t].to(DEV, dtype) for x in (k, v, mix, lk)),
                                  *st)
        assert rel_err(o.cpu(), o_ref[:, t]) < TOL[dtype], t
    assert torch.equal(st[2].cpu(), st_ref[2])
    if W:
        assert rel_err(st[0].cpu(), st_ref[0]) < 1e-5 and rel_err(st[1].cpu(), st_ref[1]) < 1e-5


@cuda_ext
@pytest.mark.gpu  # CUDA graphs: also skipped under the emulated extension (FLASHTS_EMULATE_CUDA_EXT=1)
def test_cuda_graph_replay_equals_eager():
    dec = _dec()
    B, H, D, W = 4, 8, 64, 5
    S = torch.zeros(B, H, D, D, device=DEV)
    z = torch.zeros(B, H, D, device=DEV)
    kc = torch.zeros(B, W, H, D, device=DEV)
    vc = torch.zeros(B, W, H, D, device=DEV)
    pos = torch.zeros(B, dtype=torch.int64, device=DEV)
    q, k, v = (torch.randn(B, H, D, device=DEV) for _ in range(3))
    o_lin = torch.empty(B, H, D, device=DEV)
    o_swa = torch.empty(B, H, D, device=DEV)
    S_e, z_e, kc_e, vc_e, pos_e = S.clone(), z.clone(), kc.clone(), vc.clone(), pos.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up (loads the extension, sets attributes) outside the capture
        dec.linear_step(q, k, v, S.clone(), z.clone(), out=o_lin)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        dec.linear_step(q, k, v, S, z, out=o_lin)
        dec.swa_ring_step(q, k, v, kc, vc, pos, out=o_swa)
    for _ in range(7):
        g.replay()
        e_lin = dec.linear_step(q, k, v, S_e, z_e)
        e_swa = dec.swa_ring_step(q, k, v, kc_e, vc_e, pos_e)
        torch.cuda.synchronize()
        assert torch.equal(o_lin, e_lin) and torch.equal(o_swa, e_swa)
    assert torch.equal(S, S_e) and torch.equal(pos, pos_e) and pos.tolist() == [7] * B


@cuda_ext
@pytest.mark.parametrize("op", ["linear", "aaren", "latte"])
def test_op_layer_T1_uses_the_step(op):
    B, H, D = 2, 4, 32
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(B, 1, H, D, generator=g), torch.randn(B, 1, H, D, generator=g)
    if op == "linear":
        q = torch.randn(B, 1, H, D, generator=g)
        state = (torch.randn(B, H, D, D, generator=g), torch.rand(B, H, D, generator=g) + 1)
        fn, rfn = flashts.linear_attention, ref.linear_attention
    elif op == "aaren":
        q = torch.randn(H, D, generator=g)
        state = (torch.randn(B, H, generator=g), torch.rand(B, H, generator=g) + 1, torch.randn(B, H, D, generator=g))
        fn, rfn = flashts.aaren_attention, ref.aaren_attention
    else:
        q = torch.randn(B, 1, H, D, generator=g)
        state = (torch.randn(B, H, D, generator=g), torch.rand(B, H, D, generator=g) + 1,
                 torch.randn(B, H, D, D, generator=g))
        fn, rfn = flashts.latte_attention, ref.latte_attention
    o_ref, st_ref = rfn(q.double(), k.double(), v.double(), initial_state=tuple(s.double() for s in state),
                        output_final_state=True)
    st_dev = tuple(s.to(DEV) for s in state)
    keep = tuple(s.clone() for s in st_dev)
    o, st = fn(q.to(DEV), k.to(DEV), v.to(DEV), initial_state=st_dev, output_final_state=True, backend="cuda")
    assert rel_err(o.cpu(), o_ref) < 1e-4
    assert all(torch.equal(a, b) for a, b in zip(st_dev, keep)), "the initial state was modified"
    if op == "linear":
        assert all(rel_err(a.cpu(), b) < 1e-4 for a, b in zip(st, st_ref))
