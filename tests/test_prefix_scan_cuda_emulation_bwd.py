"""The chunk-parallel causal BACKWARD of Aaren / Latte (``csrc/prefix_scan.cu``: chunk summaries, entering states,
per-chunk cotangent maps, their reverse scan, per-chunk gradients) run by the CUDA emulation harness and checked
against ``flashts.reference`` in float64: dq, dk, dv and the initial-state cotangents, float32 and bfloat16.

The kernels are the real ones (``tests/emulation/prefix_scan_host.cpp`` calls the C++ launchers ``aaren_bwd`` /
``latte_bwd``; its workspace is NaN-poisoned, the outputs are NaN-filled inside NaN canaries). Cases: T in
{1, 17, 63, 100, 150} (one chunk of one step, ragged last chunks, several chunks, more chunks than the scans
read ahead), L not a multiple of 16, odd Dv,
16-byte row loads (Dv, L multiples of 8) and strided element loads, with and without an initial state and
final-state cotangents, cu_seqlens packed (with an empty sequence) against a loop over the sequences, ±1e4
logits (the exact per-position fallback chunks), a shuffled thread schedule, and the sequential fallback for
states too wide for the chunk tiles. Also: latte_bwd with causal = False through the launcher (the chunk-parallel
bidirectional backward of the forward's chunk summaries).
"""
import ctypes

import pytest
import torch

from flashts import reference as ref
from test_cuda_emulation import (DTYPES, F64, Out, Strides, _last_error, _ptr, _rel, _strided_input,  # noqa: F401
                                 libs, schedule)


def _f32(x):
    return None if x is None else x.float().contiguous()


def _tol(dtype):
    return 2e-5 if dtype == torch.float32 else 6e-2


def _inputs(kind, B, T, H, L, Dv, dtype, g, big, shared_q=False):
    """Strided kernel inputs and their float64 copies: (q, k, v, do), Aaren's q [B, H, D] (or shared [H, D])."""
    if kind == "aaren":
        D = L
        if shared_q:
            q, q64 = _strided_input((H, D), (1, 0), dtype, g)
        else:
            q, q64 = _strided_input((B, H, D), (2, 0, 1), dtype, g)
        k, k64 = _strided_input((B, T, H, D), (0, 2, 1, 3), dtype, g, scale=1e4 if big else 1.5)
    else:
        q, q64 = _strided_input((B, T, H, L), (0, 2, 1, 3), dtype, g, scale=2.0)
        k, k64 = _strided_input((B, T, H, L), (2, 0, 1, 3), dtype, g, scale=1e4 if big else 2.0)
    v, v64 = _strided_input((B, T, H, Dv), (0, 1, 2, 3), dtype, g)
    do, do64 = _strided_input((B, T, H, Dv), (1, 0, 2, 3), dtype, g)
    return (q, k, v, do), (q64, k64, v64, do64)


def _states(kind, N, H, L, Dv, g, state, cot):
    lat = (N, H) if kind == "aaren" else (N, H, L)
    m0 = a0 = S0 = None
    if state:
        m0 = torch.randn(*lat, generator=g, dtype=F64)
        a0 = torch.rand(*lat, generator=g, dtype=F64) + 0.5
        S0 = torch.randn(*lat, Dv, generator=g, dtype=F64)
    daT = dST = None
    if cot:
        daT = torch.randn(*lat, generator=g, dtype=F64)
        dST = torch.randn(*lat, Dv, generator=g, dtype=F64)
    return (m0, a0, S0), (daT, dST)


def _reference(kind, x64, st, cot, cu_t, scale):
    """float64 gradients (dq, dk, dv[, da0, dS0]) of o·do + aT·daT + ST·dST."""
    q, k, v, do = x64
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    m0, a0, S0 = st
    st_ref, extra = None, []
    if m0 is not None:
        a0r, S0r = a0.clone().requires_grad_(), S0.clone().requires_grad_()
        st_ref, extra = (m0, a0r, S0r), [a0r, S0r]
    if kind == "aaren":
        o, (_, aT, ST) = ref.aaren_attention(qr, kr, vr, scale=scale, initial_state=st_ref, output_final_state=True,
                                             cu_seqlens=cu_t)
    else:
        o, (_, aT, ST) = ref.latte_attention(qr, kr, vr, causal=True, initial_state=st_ref, output_final_state=True,
                                             cu_seqlens=cu_t)
    loss = (o * do).sum()
    if cot[0] is not None:
        loss = loss + (aT * cot[0]).sum() + (ST * cot[1]).sum()
    return torch.autograd.grad(loss, [qr, kr, vr] + extra)


def _kernel_bwd(lib, kind, x, B, T, H, L, Dv, dtype, st, cot, cu_t, scale, shared_q=False):
    """The emulated launcher; returns (dq, dk, dv, da0, dS0) (Aaren dq summed over rows when q is shared)."""
    q, k, v, do = x
    N = B if cu_t is None else cu_t.numel() - 1
    strides = Strides()
    out = Out()
    m0, a0, S0 = (_f32(t) for t in st)
    daT, dST = (_f32(t) for t in cot)
    D = L
    sz = torch.tensor([B, T, H, 1 if kind == "aaren" else L, D, Dv, N], dtype=torch.int64)
    lat = (N, H) if kind == "aaren" else (N, H, L)
    da0, dS0 = (out(*lat), out(*lat, Dv)) if m0 is not None else (None, None)
    dv = out(B, T, H, Dv, dtype=dtype)
    assert lib.emu_scan_bwd_chunked(int(kind == "aaren"), _ptr(sz), _ptr(cu_t)) == 1
    if kind == "aaren":
        sq = torch.tensor([0, 0, *q.stride()] if q.dim() == 2 else [q.stride(0), 0, q.stride(1), q.stride(2)],
                          dtype=torch.int64)
        dq_rows, dk = out(N, H, D), out(B, T, H, D, dtype=dtype)
        rc = lib.emu_aaren_bwd(DTYPES[dtype], _ptr(do), strides(do), _ptr(q), _ptr(sq), _ptr(k), strides(k), _ptr(v),
                               strides(v), _ptr(sz), _ptr(cu_t), ctypes.c_float(scale), _ptr(m0), _ptr(a0), _ptr(S0),
                               _ptr(daT), _ptr(dST), None, None, None, _ptr(dq_rows), _ptr(dk), _ptr(dv), _ptr(da0),
                               _ptr(dS0))
        assert rc == 0, _last_error(lib)
        dq = dq_rows.sum(0) if shared_q else dq_rows
        if cu_t is not None and not shared_q:  # packed rows of one batch row share its q
            dq = dq_rows.sum(0, keepdim=True)
    else:
        dq, dk = out(B, T, H, L, dtype=dtype), out(B, T, H, L, dtype=dtype)
        rc = lib.emu_latte_bwd(DTYPES[dtype], _ptr(do), strides(do), _ptr(q), strides(q), _ptr(k), strides(k),
                               _ptr(v), strides(v), _ptr(sz), _ptr(cu_t), 1, _ptr(m0), _ptr(a0), _ptr(S0), _ptr(daT),
                               _ptr(dST), None, None, None, _ptr(dq), _ptr(dk), _ptr(dv), _ptr(da0), _ptr(dS0))
        assert rc == 0, _last_error(lib)
    out.check()
    return dq, dk, dv, da0, dS0


CASES = [  # (kind, B, T, H, L (Aaren: D), Dv, dtype, state, cot, big logits, schedule)
    ("aaren", 2, 1, 3, 5, 7, torch.float32, True, True, False, 0),
    ("aaren", 1, 17, 2, 37, 33, torch.float32, False, False, False, 1),
    ("aaren", 2, 63, 2, 16, 16, torch.bfloat16, True, True, False, 0),
    ("aaren", 1, 100, 1, 8, 9, torch.float32, True, True, True, 0),
    ("latte", 2, 17, 2, 5, 7, torch.float32, True, True, False, 0),
    ("latte", 1, 63, 2, 20, 24, torch.float32, False, True, False, 2),
    ("latte", 2, 100, 1, 19, 33, torch.bfloat16, True, False, False, 0),
    ("latte", 1, 1, 2, 3, 5, torch.bfloat16, True, True, False, 0),  # (no state: dq = 0 exactly)
    ("latte", 1, 40, 2, 9, 16, torch.float32, True, True, True, 1),
    ("latte", 1, 150, 1, 3, 5, torch.float32, True, True, False, 0),  # > 8 chunks: the scans' read-ahead ring wraps
    ("aaren", 1, 150, 1, 4, 6, torch.bfloat16, True, True, False, 0),
    # two-level state and cotangent scans (emulated 132 SMs, few chains): 4 groups of 9, 9, 9, 6 chunks (shuffled)
    ("aaren", 1, 520, 1, 4, 6, torch.float32, True, True, False, 2),
    ("latte", 1, 400, 2, 3, 5, torch.bfloat16, True, True, False, 0),  # 3 groups of 9, 9, 7 chunks
]


@pytest.mark.parametrize("kind,B,T,H,L,Dv,dtype,state,cot,big,order", CASES)
def test_scan_bwd_chunked(libs, schedule, kind, B, T, H, L, Dv, dtype, state, cot, big, order):
    lib = libs["prefix_scan"]
    schedule(lib, order)
    g = torch.Generator().manual_seed(T * 1000 + L * 10 + Dv)
    x, x64 = _inputs(kind, B, T, H, L, Dv, dtype, g, big)
    st, ct = _states(kind, B, H, L, Dv, g, state, cot)
    scale = L ** -0.5
    want = _reference(kind, x64, st, ct, None, scale)
    got = _kernel_bwd(lib, kind, x, B, T, H, L, Dv, dtype, st, ct, None, scale)
    names = ["dq", "dk", "dv", "da0", "dS0"]
    for name, a, b in zip(names, got, want):
        assert torch.isfinite(a.float()).all(), name
        assert _rel(a, b) < _tol(dtype), name
    if big:  # the exact fallback: every gradient finite and accurate although the max rises by ~1e4 in a chunk
        assert float(x64[1].abs().max()) > 1e3


@pytest.mark.parametrize("kind,dtype,shared_q,cu", [("aaren", torch.float32, True, [0, 21, 21, 38, 70]),
                                                    ("latte", torch.bfloat16, False, [0, 21, 21, 38, 70]),
                                                    ("aaren", torch.float32, False, [0, 200, 200, 390, 520])])
def test_scan_bwd_packed_matches_loop(libs, kind, dtype, shared_q, cu):
    """cu_seqlens packed (an empty sequence, chunks that straddle sequences) = the same kernels per sequence.
    The last case: two-level state and cotangent scans (4 groups of 9 chunk slots; each sequence alone: 2 groups)."""
    lib = libs["prefix_scan"]
    T, H, L, Dv = cu[-1], 2, 6, 10
    N = len(cu) - 1
    cu_t = torch.tensor(cu, dtype=torch.int32)
    g = torch.Generator().manual_seed(7)
    x, x64 = _inputs(kind, 1, T, H, L, Dv, dtype, g, False, shared_q=shared_q)
    st, ct = _states(kind, N, H, L, Dv, g, True, True)
    scale = L ** -0.5
    want = _reference(kind, x64, st, ct, cu_t, scale)
    got = _kernel_bwd(lib, kind, x, 1, T, H, L, Dv, dtype, st, ct, cu_t, scale, shared_q=shared_q)
    for name, a, b in zip(["dq", "dk", "dv", "da0", "dS0"], got, want):
        assert _rel(a, b) < _tol(dtype), name
    # the loop: each sequence alone (B = 1, no cu_seqlens)
    q, k, v, do = x
    for n in range(N):
        s, e = cu[n], cu[n + 1]
        if e == s:
            assert torch.equal(got[3][n], _f32(ct[0])[n]) and torch.equal(got[4][n], _f32(ct[1])[n]), "pass-through"
            continue
        sl = lambda t: t[:, s:e]  # noqa: E731
        xs = (q if kind == "aaren" else sl(q), sl(k), sl(v), sl(do))
        sts = tuple(t[n:n + 1] for t in st)
        cts = tuple(t[n:n + 1] for t in ct)
        one = _kernel_bwd(lib, kind, xs, 1, e - s, H, L, Dv, dtype, sts, cts, None, scale, shared_q=shared_q)
        if kind == "latte":
            for name, a, b in zip(["dq", "dk", "dv"], one[:3], got[:3]):
                assert _rel(a, b[:, s:e]) < _tol(dtype), name
        else:
            assert _rel(one[1], got[1][:, s:e]) < _tol(dtype) and _rel(one[2], got[2][:, s:e]) < _tol(dtype)
        assert _rel(one[3], got[3][n:n + 1]) < _tol(dtype) and _rel(one[4], got[4][n:n + 1]) < _tol(dtype)


def test_scan_bwd_two_level_plan(libs):
    """The two-level cases above really are two-level (emulated 132 SMs): (forward state scan groups, chunks per
    group, cotangent scan groups, chunks per group); and the goal shape Aaren B8 H8 T8192 D = Dv = 64."""
    lib = libs["prefix_scan"]
    out = torch.zeros(4, dtype=torch.int64)
    for aaren, sz, cu, want in [(1, [1, 520, 1, 1, 4, 6, 1], None, [4, 9, 4, 9]),
                                (0, [1, 400, 2, 3, 3, 5, 1], None, [3, 9, 3, 9]),
                                (1, [1, 520, 2, 1, 6, 10, 4], [0, 200, 200, 390, 520], [4, 9, 4, 9]),
                                (1, [8, 8192, 8, 1, 64, 64, 8], None, [17, 31, 5, 103]),
                                (0, [8, 8192, 8, 64, 64, 64, 8], None, [1, 512, 1, 512])]:
        cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
        assert lib.emu_scan_bwd_groups(aaren, _ptr(torch.tensor(sz, dtype=torch.int64)), _ptr(cu_t), _ptr(out)) == 0
        assert out.tolist() == want, (sz, out.tolist())


def test_scan_bwd_fallback_for_wide_states(libs):
    """A state too wide for the chunk tiles (L·Dv beyond the shared memory of one chunk block) takes the
    sequential kernels, which stay correct."""
    lib = libs["prefix_scan"]
    B, T, H, L, Dv = 1, 5, 1, 200, 200
    sz = torch.tensor([B, T, H, L, L, Dv, B], dtype=torch.int64)
    assert lib.emu_scan_bwd_chunked(0, _ptr(sz), None) == 0
    g = torch.Generator().manual_seed(3)
    x, x64 = _inputs("latte", B, T, H, L, Dv, torch.float32, g, False)
    st, ct = _states("latte", B, H, L, Dv, g, True, True)
    want = _reference("latte", x64, st, ct, None, 1.0)
    out = Out()
    strides = Strides()
    q, k, v, do = x
    dq, dk, dv = out(B, T, H, L), out(B, T, H, L), out(B, T, H, Dv)
    da0, dS0 = out(B, H, L), out(B, H, L, Dv)
    m0, a0, S0 = (_f32(t) for t in st)
    daT, dST = (_f32(t) for t in ct)
    rc = lib.emu_latte_bwd(0, _ptr(do), strides(do), _ptr(q), strides(q), _ptr(k), strides(k), _ptr(v), strides(v),
                           _ptr(sz), None, 1, _ptr(m0), _ptr(a0), _ptr(S0), _ptr(daT), _ptr(dST), None, None, None,
                           _ptr(dq), _ptr(dk), _ptr(dv), _ptr(da0), _ptr(dS0))
    assert rc == 0, _last_error(lib)
    out.check()
    for name, a, b in zip(["dq", "dk", "dv", "da0", "dS0"], [dq, dk, dv, da0, dS0], want):
        assert _rel(a, b) < 2e-5, name


@pytest.mark.parametrize("dtype,cu", [(torch.bfloat16, [0, 13, 13, 50]), (torch.float32, None)])
def test_latte_bidirectional_bwd_through_launcher(libs, dtype, cu):
    """latte_bwd with causal = False runs the chunk-parallel bidirectional backward (its workspace from
    scan_bwd_workspace): dq, dk, dv vs the float64 reference."""
    lib = libs["prefix_scan"]
    B, T, H, L, Dv = (1, cu[-1], 2, 7, 24) if cu else (2, 37, 1, 18, 9)
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    g = torch.Generator().manual_seed(11)
    (q, k, v, do), (q64, k64, v64, do64) = _inputs("latte", B, T, H, L, Dv, dtype, g, False)
    qr, kr, vr = (t.clone().requires_grad_() for t in (q64, k64, v64))
    o = ref.latte_attention(qr, kr, vr, causal=False, cu_seqlens=cu_t)
    want = torch.autograd.grad((o * do64).sum(), [qr, kr, vr])
    N = B if cu is None else len(cu) - 1
    sz = torch.tensor([B, T, H, L, L, Dv, N], dtype=torch.int64)
    assert lib.emu_latte_bidir_bwd_chunked(_ptr(sz), _ptr(cu_t)) == 1
    out, strides = Out(), Strides()
    dq, dk, dv = out(B, T, H, L, dtype=dtype), out(B, T, H, L, dtype=dtype), out(B, T, H, Dv, dtype=dtype)
    rc = lib.emu_latte_bwd(DTYPES[dtype], _ptr(do), strides(do), _ptr(q), strides(q), _ptr(k), strides(k), _ptr(v),
                           strides(v), _ptr(sz), _ptr(cu_t), 0, None, None, None, None, None, None, None, None,
                           _ptr(dq), _ptr(dk), _ptr(dv), None, None)
    assert rc == 0, _last_error(lib)
    out.check()
    for name, a, b in zip(["dq", "dk", "dv"], [dq, dk, dv], want):
        assert _rel(a, b) < _tol(dtype), name
