"""The chunk-parallel causal FORWARD of Aaren and Latte (csrc/prefix_scan.cu: chunk_sum_kernel, state_scan_kernel,
chunk_out_kernel; the chunk math of csrc/scan_chunk.cuh) run on the CPU under the CUDA emulation harness
(tests/emulation/cuda_host.h: the .cu compiled as host C++, one fiber per CUDA thread; entry points in
tests/emulation/prefix_scan_host.cpp), checked against flashts.reference in float64.

Covers: the chunked mode forced (and the one pass for comparison), T in {1, 17, 63, 100} (partial last chunks,
one-step sequences), L not a multiple of 16 (padded latents) and Aaren's single latent, odd Dv and several Dv
tiles (BV = 16 when the emulated 132 SMs are not filled; BV up to 64 with 1 SM), initial state given or not,
the final state, packed cu_seqlens (an empty sequence included) against the reference and against a loop over
the sequences, logits of ±1e4 (the exact per-step fallback) and steep ramps (the fast path near RISE_LIMIT),
float32 (FMA) and bfloat16 (mma.sync TF32 through the emulated wrappers), strided (scalar-load) and contiguous
(16-byte-load) inputs, a shuffled fiber schedule. Outputs and the workspace start as NaN inside NaN canaries,
so an element the kernels forget to write (or read before writing), or a write outside, fails. The launch plan
(occupancy rule) is checked at the goal shapes. Also: the one-pass mode (onepass_kernel), the bidirectional Latte
forward on the chunk summaries and the chunk-parallel bidirectional backward (latte_bidir_bwd) against the
reference's autograd.
"""
from __future__ import annotations

import ctypes
import math
import os
import sys

import pytest
import torch

from flashts import reference as ref

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "emulation"))
import emu_build  # noqa: E402

F32, BF16, F64 = torch.float32, torch.bfloat16, torch.float64
DT = {F32: 0, BF16: 2}
TOL = {F32: 2e-5, BF16: 3e-2}
AUTO, ONE_PASS, CHUNKED = 0, 1, 2
PAD = 64  # NaN canary elements on each side of every output / workspace


@pytest.fixture(scope="module")
def lib():
    if emu_build.compiler() is None:
        pytest.skip("no g++")
    try:  # the same library (and cache entry) as tests/test_cuda_emulation.py
        return emu_build.load({"prefix_scan": os.path.join(emu_build.EMU, "prefix_scan_host.cpp")})["prefix_scan"]
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def schedule(lib):
    """schedule(n): the fiber order of every block for this test (0 in order, 1 reversed, ≥ 2 a seeded shuffle)."""
    yield lib.flashts_emu_set_schedule
    lib.flashts_emu_set_schedule(0)


def _p(x):
    return None if x is None else ctypes.c_void_p(x.data_ptr())


class Mem:
    """Keeps the ctypes arguments alive; NaN-filled buffers inside NaN canaries (``check``: nothing written
    outside)."""

    def __init__(self):
        self.keep, self.bufs = [], []

    def i64(self, vals):
        t = torch.tensor(list(vals), dtype=torch.int64)
        self.keep.append(t)
        return _p(t)

    def out(self, *shape, dtype=F32):
        n = math.prod(shape)
        buf = torch.full((n + 2 * PAD,), float("nan"), dtype=dtype)
        self.bufs.append((buf, n))
        return buf[PAD:PAD + n].view(*shape)

    def check(self):
        for buf, n in self.bufs:
            assert torch.isnan(buf[:PAD].float()).all() and torch.isnan(buf[PAD + n:].float()).all(), \
                "a kernel wrote outside an output or the workspace"


def _input(shape, perm, dtype, gen, scale=1.0):
    """Random `shape` tensor stored in the dimension order `perm` (non-contiguous unless perm is the identity),
    rounded to dtype; (kernel input, float64 copy)."""
    x = (torch.randn(*[shape[i] for i in perm], generator=gen, dtype=F64) * scale).to(dtype)
    x = x.permute(*[perm.index(i) for i in range(len(shape))])
    return x, x.to(F64)


def _rel(got, want):
    got, want = got.to(F64), want.to(F64)
    assert not torch.isnan(got).any(), "NaN in a kernel output (an element was never written)"
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


def _rescale(m, m_ref):
    """e^{m − m_ref}: refers a state (m, u, w) to the reference's maxima (1 for an empty state)."""
    m = m.to(F64)
    empty = torch.isinf(m_ref)
    assert torch.equal(torch.isinf(m), empty)
    return torch.where(empty, torch.ones_like(m), torch.exp(m - m_ref))


def _plan(lib, aaren, sz, cu=None, causal=True, mode=AUTO, sms=0):
    mem, out = Mem(), torch.zeros(10, dtype=torch.int64)
    rc = lib.emu_scan_fwd_plan(int(aaren), mem.i64(sz), _p(cu), int(causal), mode, sms, _p(out))
    assert rc == 0, rc
    return dict(zip(["mode", "C", "BV", "NS", "seq_blocks", "chunk_blocks", "scan_blocks", "workspace_bytes",
                     "scan_groups", "scan_group_chunks"], out.tolist()))


def _forward(lib, aaren, dtype, q, k, v, state, cu, mode, sms, scale=1.0, causal=True):
    """Runs the kernel forward: -> (o, mT, uT, wT) (Aaren: states [N, H] / [N, H, Dv]; not causal: only o)."""
    B, T, H = k.shape[:3]
    Dv = v.shape[-1]
    X = k.shape[-1]
    N = B if cu is None else len(cu) - 1
    L = 1 if aaren else X
    sz = [B, T, H, L, X, Dv, N]
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    plan = _plan(lib, aaren, sz, cu_t, causal=causal, mode=mode, sms=sms)
    assert plan["mode"] == mode or mode == AUTO
    mem = Mem()
    ws = mem.out(max(1, plan["workspace_bytes"] // 4)) if plan["workspace_bytes"] else None
    o = mem.out(B, T, H, Dv, dtype=dtype)
    sshape = (N, H) if aaren else (N, H, L)
    mT, uT, wT = (mem.out(*sshape), mem.out(*sshape), mem.out(*sshape, Dv)) if causal else (None, None, None)
    m0, u0, w0 = (None, None, None) if state is None else (x.float().contiguous() for x in state)
    if aaren:
        qs = [0, 0, *q.stride()] if q.dim() == 2 else [q.stride(0), 0, q.stride(1), q.stride(2)]
        rc = lib.emu_aaren_fwd_ex(DT[dtype], _p(q), mem.i64(qs), _p(k), mem.i64(k.stride()), _p(v),
                                  mem.i64(v.stride()), mem.i64(sz), _p(cu_t), ctypes.c_float(scale), _p(m0), _p(u0),
                                  _p(w0), _p(o), _p(mT), _p(uT), _p(wT), mode, sms, _p(ws),
                                  ctypes.c_int64(plan["workspace_bytes"]))
    else:
        rc = lib.emu_latte_fwd_ex(DT[dtype], _p(q), mem.i64(q.stride()), _p(k), mem.i64(k.stride()), _p(v),
                                  mem.i64(v.stride()), mem.i64(sz), _p(cu_t), int(causal), _p(m0), _p(u0), _p(w0), _p(o),
                                  _p(mT), _p(uT), _p(wT), mode, sms, _p(ws), ctypes.c_int64(plan["workspace_bytes"]))
    assert rc == 0, emu_build.last_error(lib)
    mem.check()
    return o, mT, uT, wT


def _check(got, want, dtype):
    o, mT, uT, wT = got
    o_ref, (mT_ref, uT_ref, wT_ref) = want
    tol = TOL[dtype]
    assert _rel(o, o_ref) < tol, "o"
    c = _rescale(mT, mT_ref)
    assert _rel(uT.to(F64) * c, uT_ref) < 2e-5 * (1 if dtype == F32 else 100), "final u"
    assert _rel(wT.to(F64) * c.unsqueeze(-1), wT_ref) < 2e-5 * (1 if dtype == F32 else 100), "final w"


def _state(g, N, H, L, Dv, aaren):
    sh = (N, H) if aaren else (N, H, L)
    return (torch.randn(*sh, generator=g, dtype=F64), torch.rand(*sh, generator=g, dtype=F64) + 0.5,
            torch.randn(*sh, Dv, generator=g, dtype=F64))


AAREN = [  # (B, T, H, D, Dv, dtype, state, shared_q, cu, order, sms)
    (2, 17, 2, 8, 5, F32, True, False, None, 0, 0),
    (1, 100, 1, 16, 33, BF16, False, True, None, 1, 0),     # 7 chunks, 3 Dv tiles of 16, 16-byte k/v loads
    (2, 1, 3, 5, 7, F32, True, False, None, 0, 0),          # T = 1
    (1, 63, 2, 7, 9, BF16, True, False, [0, 17, 17, 63], 2, 0),   # packed, an empty sequence, shuffled
    (1, 40, 1, 16, 40, F32, False, False, None, 0, 1),      # 1 SM: BV 48 (one tile), contiguous float4 loads
    (1, 300, 1, 3, 4, F32, True, False, None, 0, 0),        # 19 chunks: the state scan's prefetch ring wraps
    (1, 33, 1, 64, 130, BF16, True, False, None, 0, 1),     # goal head dim; 1 SM: 3 Dv tiles of 64
    (1, 520, 2, 8, 12, BF16, True, False, None, 2, 0),      # two-level state scan: 4 groups (9, 9, 9, 6 chunks)
    (1, 700, 1, 5, 7, F32, True, False, [0, 250, 251, 251, 700], 0, 0),  # two-level, packed: 5 groups of 10
]


@pytest.mark.parametrize("B,T,H,D,Dv,dtype,state,shared_q,cu,order,sms", AAREN)
def test_aaren_chunked_forward(lib, schedule, B, T, H, D, Dv, dtype, state, shared_q, cu, order, sms):
    schedule(order)
    g = torch.Generator().manual_seed(1000 + T * 7 + D)
    N = B if cu is None else len(cu) - 1
    q, q64 = _input((H, D) if shared_q else (B, H, D), (1, 0) if shared_q else (0, 1, 2), dtype, g)
    k, k64 = _input((B, T, H, D), (0, 2, 1, 3) if order else (0, 1, 2, 3), dtype, g, scale=1.5)
    v, v64 = _input((B, T, H, Dv), (0, 1, 2, 3), dtype, g)
    st = _state(g, N, H, 1, Dv, True) if state else None
    scale = D ** -0.5
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    want = ref.aaren_attention(q64, k64, v64, scale=scale, initial_state=st, output_final_state=True,
                               cu_seqlens=cu_t)
    got = _forward(lib, True, dtype, q, k, v, st, cu, CHUNKED, sms, scale)
    _check(got, want, dtype)


LATTE = [  # (B, T, H, L, Dv, dtype, state, cu, order, sms)
    (2, 17, 2, 5, 7, F32, True, None, 0, 0),
    (1, 63, 2, 20, 9, BF16, False, None, 1, 0),
    (1, 100, 1, 20, 16, F32, True, None, 0, 0),             # L = 20 float32: 16-byte q/k/v loads
    (1, 1, 2, 5, 3, F32, True, None, 0, 0),                 # T = 1
    (1, 63, 1, 24, 8, BF16, True, [0, 5, 40, 40, 63], 3, 0),  # packed (16-byte loads), shuffled
    (1, 33, 1, 5, 37, BF16, True, None, 0, 1),              # 1 SM: one Dv tile of 48
    (1, 300, 1, 3, 4, F32, True, [0, 140, 141, 300], 0, 0),  # 9 and 10 chunks per sequence (> the ring)
    (1, 20, 1, 40, 66, F32, True, None, 0, 1),              # Lp = 48; 1 SM: Dv tiles of 64 and 2
    (1, 600, 1, 4, 6, F32, True, [0, 250, 251, 600], 3, 0),  # two-level state scan, packed: 5 groups of 8
    (2, 400, 1, 5, 9, BF16, False, None, 0, 0),             # two-level: 3 groups (9, 9, 7 chunks)
]


@pytest.mark.parametrize("B,T,H,L,Dv,dtype,state,cu,order,sms", LATTE)
def test_latte_chunked_forward(lib, schedule, B, T, H, L, Dv, dtype, state, cu, order, sms):
    schedule(order)
    g = torch.Generator().manual_seed(2000 + T * 7 + L)
    N = B if cu is None else len(cu) - 1
    perm = (0, 2, 1, 3) if L % 4 else (0, 1, 2, 3)
    q, q64 = _input((B, T, H, L), perm, dtype, g, scale=2.0)
    k, k64 = _input((B, T, H, L), perm, dtype, g, scale=2.0)
    v, v64 = _input((B, T, H, Dv), (0, 1, 2, 3) if Dv % 8 == 0 else (2, 0, 1, 3), dtype, g)
    st = _state(g, N, H, L, Dv, False) if state else None
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    want = ref.latte_attention(q64, k64, v64, causal=True, initial_state=st, output_final_state=True,
                               cu_seqlens=cu_t)
    got = _forward(lib, False, dtype, q, k, v, st, cu, CHUNKED, sms)
    _check(got, want, dtype)


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_extreme_logits_fallback_and_ramp(lib, dtype):
    """Logits of ±1e4 (every chunk takes the exact per-step walk) and steep ramps (rise 30 per chunk: the fast
    path with factors up to e^30; rise 60: the fallback), with an initial state: finite and correct."""
    g = torch.Generator().manual_seed(77)
    B, T, H, L, Dv = 1, 37, 2, 5, 7
    sign = torch.randint(0, 2, (B, T, H, L), generator=g).to(F64) * 2 - 1
    ramp = (torch.arange(T, dtype=F64) * torch.tensor([2.0, 4.0])[:, None]).T[None, :, :, None]  # [1, T, H, 1]
    for logits in (1e4 * sign * torch.rand(B, T, H, L, generator=g, dtype=F64), ramp.expand(B, T, H, L).clone()):
        q, q64 = _input((B, T, H, L), (0, 1, 2, 3), dtype, g)
        k = logits.to(dtype)
        v, v64 = _input((B, T, H, Dv), (0, 1, 2, 3), dtype, g)
        st = _state(g, B, H, L, Dv, False)
        want = ref.latte_attention(q64, k.to(F64), v64, causal=True, initial_state=st, output_final_state=True)
        got = _forward(lib, False, dtype, q, k, v, st, None, CHUNKED, 0)
        assert torch.isfinite(got[0].float()).all()
        _check(got, want, dtype)
    # Aaren: q·k of ±1e4 (q = ±1, k = multiples of 1000: the float32 dot products are exact, so the maxima
    # agree with the reference's exactly)
    qa = (torch.randint(0, 2, (B, H, 4), generator=g) * 2 - 1).to(dtype)
    ka = (1000 * torch.randint(-10, 11, (B, T, H, 4), generator=g)).to(dtype)
    va, va64 = _input((B, T, H, Dv), (0, 1, 2, 3), dtype, g)
    want = ref.aaren_attention(qa.to(F64), ka.to(F64), va64, scale=1.0, output_final_state=True)
    got = _forward(lib, True, dtype, qa, ka, va, None, None, CHUNKED, 0, 1.0)
    assert torch.isfinite(got[0].float()).all()
    _check(got, want, dtype)


BIDIR = [  # (B, T, H, L, Dv, dtype, cu, order)
    (2, 17, 2, 5, 7, F32, None, 1),
    (1, 100, 1, 20, 33, BF16, None, 0),                     # 3 Dv tiles, scalar loads
    (1, 63, 2, 24, 8, BF16, [0, 1, 30, 30, 63], 2),         # packed (16-byte loads), shuffled
    (1, 600, 1, 5, 7, F32, [0, 250, 251, 600], 0),          # two-level state scan (whole-sequence totals)
]


@pytest.mark.parametrize("B,T,H,L,Dv,dtype,cu,order", BIDIR)
def test_latte_bidirectional_chunked_forward(lib, schedule, B, T, H, L, Dv, dtype, cu, order):
    schedule(order)
    g = torch.Generator().manual_seed(3000 + T + L)
    q, q64 = _input((B, T, H, L), (0, 1, 2, 3), dtype, g, scale=2.0)
    k, k64 = _input((B, T, H, L), (0, 1, 2, 3), dtype, g, scale=3.0)
    v, v64 = _input((B, T, H, Dv), (0, 1, 2, 3), dtype, g)
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    want = ref.latte_attention(q64, k64, v64, causal=False, cu_seqlens=cu_t)
    o = _forward(lib, False, dtype, q, k, v, None, cu, CHUNKED, 0, causal=False)[0]
    assert _rel(o, want) < TOL[dtype]
    one = _forward(lib, False, dtype, q, k, v, None, cu, ONE_PASS, 0, causal=False)[0]
    assert _rel(o, one.to(F64)) < TOL[dtype]


ONE_PASS_CASES = [  # (aaren, B, T, H, X, Dv, dtype, state, cu, sms, extreme)
    (True, 1, 63, 2, 7, 9, BF16, True, [0, 17, 17, 63], 0, False),   # packed, an empty sequence
    (False, 2, 37, 1, 20, 33, F32, True, None, 0, False),            # 3 Dv tiles of 16
    (False, 1, 40, 2, 5, 7, BF16, True, None, 1, True),              # ±1e4 logits: the exact fallback
    (True, 2, 1, 2, 5, 7, F32, False, None, 1, False),               # T = 1
    # contiguous 16-byte rows: cp.async double buffering of the raw k/v(/q) rows (onepass_kernel staging)
    (True, 2, 50, 2, 16, 48, F32, True, None, 0, False),             # 4 chunks, 3 Dv tiles of 16 (e0 > 0)
    (False, 1, 70, 2, 24, 16, BF16, True, [0, 17, 17, 70], 0, False),  # packed, an empty sequence
    (False, 1, 40, 1, 8, 8, BF16, True, None, 1, True),              # ±1e4 logits: the exact fallback
]


@pytest.mark.parametrize("aaren,B,T,H,X,Dv,dtype,state,cu,sms,extreme", ONE_PASS_CASES)
def test_one_pass_forward(lib, aaren, B, T, H, X, Dv, dtype, state, cu, sms, extreme):
    """ScanMode::OnePass (onepass_kernel: the same chunk functions, the state in shared memory) vs the reference."""
    g = torch.Generator().manual_seed(4000 + T + X)
    N = B if cu is None else len(cu) - 1
    q, q64 = _input((B, H, X) if aaren else (B, T, H, X), (0, 1, 2) if aaren else (0, 2, 1, 3), dtype, g)
    k, k64 = _input((B, T, H, X), (0, 1, 2, 3), dtype, g, scale=1e4 if extreme else 2.0)
    v, v64 = _input((B, T, H, Dv), (0, 1, 2, 3), dtype, g)
    st = _state(g, N, H, X, Dv, aaren) if state else None
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    if aaren:
        want = ref.aaren_attention(q64, k64, v64, scale=0.5, initial_state=st, output_final_state=True,
                                   cu_seqlens=cu_t)
    else:
        want = ref.latte_attention(q64, k64, v64, causal=True, initial_state=st, output_final_state=True,
                                   cu_seqlens=cu_t)
    _check(_forward(lib, aaren, dtype, q, k, v, st, cu, ONE_PASS, sms, 0.5), want, dtype)


def test_packed_matches_loop_and_one_pass(lib):
    """Packed sequences give what each sequence gives alone, and the chunked mode what the one pass gives."""
    g = torch.Generator().manual_seed(5)
    cu = [0, 16, 19, 19, 51]
    H, L, Dv = 2, 6, 5
    q, _ = _input((1, 51, H, L), (0, 1, 2, 3), F32, g)
    k, _ = _input((1, 51, H, L), (0, 1, 2, 3), F32, g, scale=2.0)
    v, _ = _input((1, 51, H, Dv), (0, 1, 2, 3), F32, g)
    st = _state(g, len(cu) - 1, H, L, Dv, False)
    packed = _forward(lib, False, F32, q, k, v, st, cu, CHUNKED, 0)
    one = _forward(lib, False, F32, q, k, v, st, cu, ONE_PASS, 0)
    for a, b in zip(packed, one):
        assert _rel(a, b.to(F64)) < 2e-5
    for n in range(len(cu) - 1):
        a, b = cu[n], cu[n + 1]
        if a == b:  # an empty sequence: the final state is the initial state
            assert torch.equal(packed[2][n], st[1][n].float()) and torch.equal(packed[3][n], st[2][n].float())
            continue
        sub = [x[:, a:b].contiguous() for x in (q, k, v)]
        alone = _forward(lib, False, F32, *sub, tuple(x[n:n + 1] for x in st), None, CHUNKED, 0)
        assert _rel(packed[0][:, a:b], alone[0].to(F64)) < 2e-5
        for i in (1, 2, 3):
            assert _rel(packed[i][n:n + 1], alone[i].to(F64)) < 2e-5


def test_plan_goal_shapes(lib):
    """The occupancy rule at the goal shapes (132 SMs): chunk-parallel with 32768 blocks per chunk kernel at
    B·H = 64, T = 8192 (causal and bidirectional Latte); the one pass when N·H ≥ 2·SMs (B512 H8 T96)."""
    latte = _plan(lib, False, [8, 8192, 8, 64, 64, 64, 8], sms=132)
    assert (latte["mode"], latte["BV"], latte["NS"], latte["chunk_blocks"]) == (CHUNKED, 64, 512, 32768)
    assert latte["scan_blocks"] == 8 * 8 * 64 * 16 // 128
    assert latte["workspace_bytes"] == 4 * (4 * 8 * 512 * 8 * 64 + 8 * 512 * 8 * 64 * 64)
    aaren = _plan(lib, True, [8, 8192, 8, 1, 64, 64, 8], sms=132)
    assert (aaren["mode"], aaren["BV"], aaren["chunk_blocks"]) == (CHUNKED, 64, 32768)
    # Aaren's state scan: 1024 chains (8 blocks) cannot fill 132 SMs: two-level, 17 groups of 31 chunks → 136 blocks
    assert (aaren["scan_groups"], aaren["scan_group_chunks"], aaren["scan_blocks"]) == (17, 31, 136)
    assert (latte["scan_groups"], latte["scan_group_chunks"]) == (1, 512)  # Latte's 65536 chains fill the GPU
    small = _plan(lib, True, [512, 96, 8, 1, 16, 16, 512], sms=132)
    assert (small["mode"], small["BV"], small["seq_blocks"], small["workspace_bytes"]) == (ONE_PASS, 16, 4096, 0)
    wide = _plan(lib, False, [64, 96, 4, 16, 16, 128, 64], sms=132)  # N·H = 256: split Dv to 2 tiles of 64
    assert (wide["mode"], wide["BV"], wide["seq_blocks"]) == (ONE_PASS, 64, 512)
    tiny = _plan(lib, False, [1, 40, 2, 5, 5, 33, 1], sms=132)  # 3 slots × 2 heads: Dv split to 16
    assert (tiny["mode"], tiny["BV"], tiny["chunk_blocks"]) == (CHUNKED, 16, 3 * 2 * 3)
    # the two-level cases of the tests above really are two-level (groups of ≥ 8 chunks, no empty trailing group)
    for aaren, sz, cu, causal, groups in [(True, [1, 520, 2, 1, 8, 12, 1], None, True, (4, 9)),
                                          (True, [1, 700, 1, 1, 5, 7, 4], [0, 250, 251, 251, 700], True, (5, 10)),
                                          (False, [1, 600, 1, 4, 4, 6, 3], [0, 250, 251, 600], True, (5, 8)),
                                          (False, [2, 400, 1, 5, 5, 9, 2], None, True, (3, 9)),
                                          (False, [1, 600, 1, 5, 5, 7, 3], [0, 250, 251, 600], False, (5, 8)),
                                          (False, [1, 520, 1, 3, 3, 8, 2], [0, 200, 520], False, (4, 9))]:
        cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
        p = _plan(lib, aaren, sz, cu_t, causal=causal, mode=CHUNKED, sms=0)
        assert (p["scan_groups"], p["scan_group_chunks"]) == groups, (sz, p)
    assert _plan(lib, True, [1, 520, 2, 1, 8, 12, 1], mode=CHUNKED, sms=1)["scan_groups"] == 1  # 1 SM: one level
    bidir = _plan(lib, False, [8, 8192, 8, 64, 64, 64, 8], causal=False, sms=132)
    assert (bidir["mode"], bidir["chunk_blocks"]) == (CHUNKED, 32768)


BIDIR_BWD = [  # (B, T, H, L, Dv, dtype, cu, sms)
    (2, 17, 2, 5, 7, F32, None, 0),
    (1, 63, 2, 20, 33, BF16, None, 0),                      # Dv tiles of 16 looped inside the blocks
    (1, 63, 1, 24, 8, BF16, [0, 1, 30, 30, 63], 1),          # packed (16-byte loads), an empty sequence
    (2, 2, 1, 3, 70, F32, None, 1),                         # T = 2 (at T = 1 dq is exactly 0); tiles of 64 and 6
    (1, 520, 1, 3, 8, F32, [0, 200, 520], 0),               # two-level scans (whole-sequence state and Σ Gm)
]


@pytest.mark.parametrize("B,T,H,L,Dv,dtype,cu,sms", BIDIR_BWD)
def test_latte_bidirectional_backward(lib, B, T, H, L, Dv, dtype, cu, sms):
    """latte_bidir_bwd (chunk-parallel bidirectional backward) vs the float64 reference's autograd."""
    g = torch.Generator().manual_seed(5000 + T + L + Dv)
    q, q64 = _input((B, T, H, L), (0, 1, 2, 3), dtype, g, scale=2.0)
    k, k64 = _input((B, T, H, L), (0, 2, 1, 3), dtype, g, scale=3.0)
    v, v64 = _input((B, T, H, Dv), (0, 1, 2, 3), dtype, g)
    do, do64 = _input((B, T, H, Dv), (0, 1, 2, 3), dtype, g)
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    qr, kr, vr = (x.clone().requires_grad_() for x in (q64, k64, v64))
    o_ref = ref.latte_attention(qr, kr, vr, causal=False, cu_seqlens=cu_t)
    want = torch.autograd.grad((o_ref * do64).sum(), [qr, kr, vr])
    N = B if cu is None else len(cu) - 1
    mem = Mem()
    sz = mem.i64([B, T, H, L, L, Dv, N])
    nbytes = torch.zeros(1, dtype=torch.int64)
    args = [DT[dtype], _p(do), mem.i64(do.stride()), _p(q), mem.i64(q.stride()), _p(k), mem.i64(k.stride()), _p(v),
            mem.i64(v.stride()), sz, _p(cu_t), sms]
    assert lib.emu_latte_bidir_bwd(*args, None, None, None, None, ctypes.c_int64(0), _p(nbytes)) == 0
    ws = mem.out(int(nbytes) // 4)
    dq, dk, dv = mem.out(B, T, H, L, dtype=dtype), mem.out(B, T, H, L, dtype=dtype), mem.out(B, T, H, Dv, dtype=dtype)
    rc = lib.emu_latte_bidir_bwd(*args, _p(dq), _p(dk), _p(dv), _p(ws), ctypes.c_int64(int(nbytes)), _p(nbytes))
    assert rc == 0, emu_build.last_error(lib)
    mem.check()
    tol = TOL[dtype] if dtype == F32 else 6e-2
    for name, a, b in zip(["dq", "dk", "dv"], [dq, dk, dv], want):
        assert _rel(a, b) < tol, name


@pytest.mark.parametrize("aaren", [True, False])
def test_zero_length_passes_the_state_through(lib, aaren):
    """T = 0 in every mode: nothing to compute, the final state is the initial state (bit for bit)."""
    g = torch.Generator().manual_seed(9)
    B, H, X, Dv = 2, 3, 5, 7
    q = torch.randn(B, H, X, generator=g) if aaren else torch.randn(B, 0, H, X, generator=g)
    k, v = torch.randn(B, 0, H, X, generator=g), torch.randn(B, 0, H, Dv, generator=g)
    st = _state(g, B, H, X, Dv, aaren)
    for mode in (AUTO, ONE_PASS, CHUNKED):
        _, mT, uT, wT = _forward(lib, aaren, F32, q, k, v, st, None, mode, 0)
        assert torch.equal(mT, st[0].float()) and torch.equal(uT, st[1].float()) and torch.equal(wT, st[2].float())
