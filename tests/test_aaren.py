"""Aaren (SPEC §4): every backend against ``flashts.reference`` and against itself.

Covers: float64 / float32 (and float16 / bfloat16) outputs and gradients of q, k, v and the initial state
(u, w; the max m carries none); q as ``[H, D]`` (shared by the batch, dq summed over it) and ``[B, H, D]``;
T in {1, 2, 17, 63, 100, 257} with chunks small enough that many chunk and block boundaries are crossed (the
torch backend's ``CHUNK`` / ``TILE_ELEMENTS`` are shrunk); odd and even head dims; ``scale``; no initial
state, an empty one (m = −inf) and a finite one; final-state cotangents; logits of ±1e4; token-by-token
decoding and split/resume equal to one pass (outputs, final states and chained gradients); ``cu_seqlens``
(with zero-length sequences) equal to a loop over sequences and to the reference; fresh output tensors and
state dtypes; the T = 32768 memory acceptance run (``slow``).

Conditioning note: with logits of ±1e4 the softmax is one-hot unless several logits tie at the top, and the
gradients through a one-hot softmax are ~e^{-100} (relative errors meaningless), so the gradient check uses
integer q, k with scale 1 (q·k exact in float32) built so that many logits lie within a few units of ±1e4.
With T = 1 and no state o = v for any q, k: dq = dk = 0 exactly, so there they are checked against an absolute
bound rather than by relative error (:func:`check_degenerate_T1`).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import flashts
from flashts.torch_ops import prefix_scan as torch_prefix_scan
from tests.helpers import backends_for, check_against_reference, device_for, rel_err

OP = "aaren_attention"
BACKENDS = backends_for(OP, interpreted=False)
F64, F32 = torch.float64, torch.float32
DTYPES = [F64, F32]
TS = [1, 2, 17, 63, 100, 257]
SKIP_MAX = dict(skip_grad_inputs=("initial_state[0]",), skip_grad_outputs=("[1][0]",))
SELF_TOL = {F64: 1e-11, F32: 2e-5}   # same backend, differently split computation
DEFAULT_CHUNK, DEFAULT_TILE = torch_prefix_scan.CHUNK, torch_prefix_scan.TILE_ELEMENTS  # before the fixture


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch):
    """Chunks of 8 steps and blocks of a few chunks, so T ≥ 17 crosses chunk and block boundaries."""
    monkeypatch.setattr(torch_prefix_scan, "CHUNK", 8)
    monkeypatch.setattr(torch_prefix_scan, "TILE_ELEMENTS", 1000)


def make_inputs(B, T, H, D, Dv, q_batched, device="cpu"):
    q = torch.randn(B, H, D, dtype=F64) if q_batched else torch.randn(H, D, dtype=F64)
    k = torch.randn(B, T, H, D, dtype=F64)
    v = torch.randn(B, T, H, Dv, dtype=F64)
    return q.to(device), k.to(device), v.to(device)


def make_state(kind, N, H, Dv, device="cpu"):
    if kind is None:
        return None
    if kind == "empty":
        return (torch.full((N, H), float("-inf"), dtype=F64, device=device),
                torch.zeros(N, H, dtype=F64, device=device), torch.zeros(N, H, Dv, dtype=F64, device=device))
    return (2 * torch.randn(N, H, dtype=F64, device=device), torch.rand(N, H, dtype=F64, device=device) + 0.5,
            torch.randn(N, H, Dv, dtype=F64, device=device))


def close(x, y, dtype, what):
    assert x.shape == y.shape, f"{what}: shape {tuple(x.shape)} != {tuple(y.shape)}"
    e = rel_err(x, y)
    assert e <= SELF_TOL[dtype], f"{what}: relative difference {e:.3e}"


def call(backend, q, k, v, **kw):
    return flashts.aaren_attention(q, k, v, backend=backend, **kw)


def check_degenerate_T1(backend, dtype, q, k, v, kw):
    """T = 1 with no (or an empty) state: o = v whatever q and k are, so dq = dk = 0 exactly in exact arithmetic
    and a relative comparison with the reference only compares rounding noise. Compare everything else with
    the reference and check |dq|, |dk| against an absolute bound instead."""
    check_against_reference(OP, backend, (q, k, v), kw, dtype=dtype,
                            skip_grad_inputs=SKIP_MAX["skip_grad_inputs"] + ("[0]", "[1]"),
                            skip_grad_outputs=SKIP_MAX["skip_grad_outputs"])
    dev = device_for(backend)
    qq, kk, vv = (x.to(dev, dtype).requires_grad_() for x in (q, k, v))
    out = call(backend, qq, kk, vv, **{n: x for n, x in kw.items() if n != "initial_state"},
               **({"initial_state": tuple(x.to(dev, F64 if dtype == F64 else F32) for x in kw["initial_state"])}
                  if "initial_state" in kw else {}))
    o = out[0] if isinstance(out, tuple) else out
    g = torch.randn_like(o)
    dq, dk = torch.autograd.grad(o, (qq, kk), g)
    bound = 10 * torch.finfo(dtype).eps * g.double().norm() * v.norm() * k.norm()
    assert dq.double().norm() <= bound and dk.double().norm() <= bound, (dq.norm(), dk.norm(), bound)


# ------------------------------------------------------------------------------------------ against the reference

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("q_batched", [False, True], ids=["q[H,D]", "q[B,H,D]"])
def test_reference_with_state(backend, dtype, T, q_batched):
    """Finite initial state, final state returned: outputs, final state and all gradients."""
    B, H, D, Dv = 2, 3, 5, 7
    q, k, v = make_inputs(B, T, H, D, Dv, q_batched)
    st = make_state("finite", B, H, Dv)
    check_against_reference(OP, backend, (q, k, v), dict(initial_state=st, output_final_state=True),
                            dtype=dtype, **SKIP_MAX)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("state", [None, "empty"])
def test_reference_no_or_empty_state(backend, dtype, T, state):
    """No initial state (plain output), and an empty one (m = −inf, u = w = 0: its gradients are 0)."""
    B, H, D, Dv = 2, 2, 16, 16
    q, k, v = make_inputs(B, T, H, D, Dv, q_batched=False)
    kw = {} if state is None else dict(initial_state=make_state(state, B, H, Dv), output_final_state=True)
    if T == 1:
        check_degenerate_T1(backend, dtype, q, k, v, kw)
    else:
        check_against_reference(OP, backend, (q, k, v), kw, dtype=dtype, **SKIP_MAX)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_reference_half(backend, dtype):
    q, k, v = make_inputs(2, 40, 2, 8, 8, q_batched=True)
    check_against_reference(OP, backend, (q, k, v), dict(initial_state=make_state("finite", 2, 2, 8),
                                                         output_final_state=True), dtype=dtype, **SKIP_MAX)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [0.1, 2.5])
def test_reference_scale(backend, scale):
    q, k, v = make_inputs(1, 33, 2, 4, 3, q_batched=False)
    check_against_reference(OP, backend, (q, k, v), dict(scale=scale), dtype=F64 if backend == "torch" else torch.float32)


@pytest.mark.parametrize("chunk,tile", [(DEFAULT_CHUNK, DEFAULT_TILE), (64, 1 << 21),
                                        (8, 1 << 21), (8, 50), (5, 300), (1, 10)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_chunking(monkeypatch, chunk, tile, dtype):
    """The torch backend's chunk size and tile budget (blocks over chunks, over rows, single chunks)."""
    monkeypatch.setattr(torch_prefix_scan, "CHUNK", chunk)
    monkeypatch.setattr(torch_prefix_scan, "TILE_ELEMENTS", tile)
    q, k, v = make_inputs(2, 100, 3, 5, 7, q_batched=True)
    check_against_reference(OP, "torch", (q, k, v), dict(initial_state=make_state("finite", 2, 3, 7),
                                                         output_final_state=True), dtype=dtype, **SKIP_MAX)


# ------------------------------------------------------------------------------------------ large logits

def _tied_huge_inputs(B, T, H, Dv):
    """Integer q, k with scale 1: s = q·k = ±1e4 + (a few units), exact in float32; many near-ties at the top."""
    D = 5
    q = torch.randint(-1, 2, (H, D)).to(F64)
    q[:, 0] = 100.0
    k = torch.randint(-2, 3, (B, T, H, D)).to(F64)
    k[..., 0] = 100.0 * (2 * torch.randint(0, 2, (B, T, H)) - 1)
    v = torch.randn(B, T, H, Dv, dtype=F64)
    return q, k, v


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T", [17, 100])
@pytest.mark.parametrize("state", [None, "high"])
def test_huge_logits_tied(backend, dtype, T, state):
    """Logits ±1e4 (differences up to 2e4 inside a chunk): finite and equal to the reference, gradients too;
    with no state (a chunk may start at −1e4 and rise to +1e4) and from a state whose max sits near +1e4."""
    q, k, v = _tied_huge_inputs(2, T, 2, 6)
    kw = dict(scale=1.0)
    if state == "high":
        kw.update(initial_state=(torch.full((2, 2), 1e4 - 3, dtype=F64), torch.rand(2, 2, dtype=F64) + 0.5,
                                 torch.randn(2, 2, 6, dtype=F64)), output_final_state=True)
    check_against_reference(OP, backend, (q, k, v), kw, dtype=dtype, **SKIP_MAX)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_huge_logits_random(backend, dtype):
    """q·k of order ±1e4 with no ties: outputs (a running arg-max of v) right, all gradients finite."""
    dev = device_for(backend)
    q, k, v = make_inputs(2, 63, 2, 8, 4, q_batched=False)
    k = k * 3e3
    check_against_reference(OP, backend, (q, k, v), {}, dtype=dtype, grad=False)
    q, k, v = (x.to(dev, dtype).requires_grad_() for x in (q, k, v))
    o, (m, u, w) = call(backend, q, k, v, output_final_state=True)
    assert m.abs().max() > 1e3, "the test must produce huge logits"
    (o.double().sum() + u.double().sum() + w.double().sum()).backward()
    for name, x in (("o", o), ("u", u), ("w", w), ("dq", q.grad), ("dk", k.grad), ("dv", v.grad)):
        assert torch.isfinite(x).all(), f"{name} not finite"


# ------------------------------------------------------------------------------------------ streaming / resume

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("q_batched", [False, True], ids=["q[H,D]", "q[B,H,D]"])
def test_decode_token_by_token(backend, dtype, q_batched):
    """T = 1 steps carrying the state == one parallel pass (outputs and final state)."""
    dev = device_for(backend)
    B, T, H, D, Dv = 2, 21, 3, 5, 7
    q, k, v = (x.to(dev, dtype) for x in make_inputs(B, T, H, D, Dv, q_batched))
    o_full, st_full = call(backend, q, k, v, output_final_state=True)
    st, outs = None, []
    for t in range(T):
        o_t, st = call(backend, q, k[:, t:t + 1], v[:, t:t + 1], initial_state=st, output_final_state=True)
        outs.append(o_t)
    close(torch.cat(outs, dim=1), o_full, dtype, "token-by-token outputs")
    for name, a, b in zip("muw", st, st_full):
        close(a, b, dtype, f"final state {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("split", [1, 8, 37, 99])
def test_split_resume_with_gradients(backend, dtype, split):
    """Two calls chained through the state == one call: outputs, final state and the gradients of q, k, v and
    of the initial (u, w), with cotangents on the outputs and the final (u, w) (maxima carry none)."""
    dev = device_for(backend)
    B, T, H, D, Dv = 2, 100, 2, 5, 7
    q, k, v = make_inputs(B, T, H, D, Dv, q_batched=False)
    m0, u0, w0 = make_state("finite", B, H, Dv)
    sd = F64 if dtype == F64 else F32
    go, gu, gw = torch.randn(B, T, H, Dv, dtype=F64), torch.randn(B, H, dtype=F64), torch.randn(B, H, Dv, dtype=F64)

    def run(split_at):
        leaves = [x.to(dev, dtype).requires_grad_() for x in (q, k, v)] + \
                 [x.to(dev, sd).requires_grad_() for x in (u0, w0)]
        qq, kk, vv, uu, ww = leaves
        st = (m0.to(dev, sd), uu, ww)
        if split_at is None:
            o, (m, u, w) = call(backend, qq, kk, vv, initial_state=st, output_final_state=True)
        else:
            o1, st1 = call(backend, qq, kk[:, :split_at], vv[:, :split_at], initial_state=st, output_final_state=True)
            o2, (m, u, w) = call(backend, qq, kk[:, split_at:], vv[:, split_at:], initial_state=st1,
                                 output_final_state=True)
            o = torch.cat([o1, o2], dim=1)
        loss = (o.double() * go.to(dev)).sum() + (u.double() * gu.to(dev)).sum() + (w.double() * gw.to(dev)).sum()
        grads = torch.autograd.grad(loss, leaves)
        return (o, m, u, w), grads

    (outs1, grads1), (outs2, grads2) = run(None), run(split)
    for name, a, b in zip(["o", "m", "u", "w"], outs2, outs1):
        close(a, b, dtype, f"split output {name}")
    for name, a, b in zip(["q", "k", "v", "u0", "w0"], grads2, grads1):
        close(a, b, dtype, f"split gradient of {name}")


# ------------------------------------------------------------------------------------------ packed sequences

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("state", [None, "finite"])
def test_cu_seqlens_equals_loop(backend, dtype, state):
    """Packed (with zero-length sequences) == calling the op per sequence: outputs, final states, gradients."""
    dev = device_for(backend)
    lens = [0, 5, 17, 0, 1, 40]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=dev)
    N, T, H, D, Dv = len(lens), sum(lens), 3, 5, 7
    q, k, v = make_inputs(1, T, H, D, Dv, q_batched=False)
    st = make_state(state or "empty", N, H, Dv)
    sd = F64 if dtype == F64 else F32
    go, gu, gw = torch.randn(1, T, H, Dv, dtype=F64), torch.randn(N, H, dtype=F64), torch.randn(N, H, Dv, dtype=F64)

    def leaves():
        ls = [x.to(dev, dtype).requires_grad_() for x in (q, k, v)]
        if state is not None:
            ls += [x.to(dev, sd).requires_grad_() for x in st[1:]]
        return ls

    def loss_of(o, u, w):
        return (o.double() * go.to(dev)).sum() + (u.double() * gu.to(dev)).sum() + (w.double() * gw.to(dev)).sum()

    # packed
    L1 = leaves()
    st1 = None if state is None else (st[0].to(dev, sd), L1[3], L1[4])
    o_p, (m_p, u_p, w_p) = call(backend, *L1[:3], initial_state=st1, output_final_state=True, cu_seqlens=cu)
    g_p = torch.autograd.grad(loss_of(o_p, u_p, w_p), L1)
    # loop over sequences
    L2 = leaves()
    qq, kk, vv = L2[:3]
    outs, ms, us, ws = [], [], [], []
    for n in range(N):
        a, b = int(cu[n]), int(cu[n + 1])
        if state is None:
            m_n, u_n, w_n = (torch.full((1, H), float("-inf"), dtype=sd, device=dev),
                             torch.zeros(1, H, dtype=sd, device=dev), torch.zeros(1, H, Dv, dtype=sd, device=dev))
        else:
            m_n, u_n, w_n = st[0][n:n + 1].to(dev, sd), L2[3][n:n + 1], L2[4][n:n + 1]
        if b > a:
            o_n, (m_n, u_n, w_n) = call(backend, qq, kk[:, a:b], vv[:, a:b],
                                        initial_state=None if state is None else (m_n, u_n, w_n),
                                        output_final_state=True)
            outs.append(o_n)
        ms.append(m_n), us.append(u_n), ws.append(w_n)
    o_l, m_l, u_l, w_l = torch.cat(outs, 1), torch.cat(ms), torch.cat(us), torch.cat(ws)
    g_l = torch.autograd.grad(loss_of(o_l, u_l, w_l), L2)

    close(o_p, o_l, dtype, "packed output")
    assert torch.equal(torch.isinf(m_p), torch.isinf(m_l)), "packed final max: -inf pattern differs"
    fin = torch.isfinite(m_l)
    close(m_p[fin], m_l[fin], dtype, "packed final max")
    close(u_p, u_l, dtype, "packed final u")
    close(w_p, w_l, dtype, "packed final w")
    for name, a, b in zip(["q", "k", "v", "u0", "w0"], g_p, g_l):
        close(a, b, dtype, f"packed gradient of {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cu_seqlens_reference(backend, dtype):
    """Packed sequences against the reference. (The reference cannot take zero-length causal sequences —
    its max over an empty time axis raises — so those are covered by the loop test above.)"""
    lens = [5, 17, 1, 40, 9]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    N, T, H, D, Dv = len(lens), sum(lens), 2, 5, 7
    q, k, v = make_inputs(1, T, H, D, Dv, q_batched=True)
    check_against_reference(OP, backend, (q, k, v),
                            dict(initial_state=make_state("finite", N, H, Dv), output_final_state=True,
                                 cu_seqlens=cu), dtype=dtype, **SKIP_MAX)


# ------------------------------------------------------------------------------------------ outputs

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES + [torch.bfloat16], ids=str)
def test_output_dtypes_and_fresh_tensors(backend, dtype):
    dev = device_for(backend)
    q, k, v = (x.to(dev, dtype) for x in make_inputs(2, 9, 2, 4, 3, q_batched=False))
    sd = F64 if dtype == F64 else F32
    st = tuple(x.to(dev, sd) for x in make_state("finite", 2, 2, 3))
    o, (m, u, w) = call(backend, q, k, v, initial_state=st, output_final_state=True)
    assert o.dtype == dtype and o.shape == (2, 9, 2, 3)
    assert m.dtype == u.dtype == w.dtype == sd
    assert m.shape == u.shape == (2, 2) and w.shape == (2, 2, 3)
    for x in (o, m, u, w):
        assert all(x.untyped_storage().data_ptr() != y.untyped_storage().data_ptr() for y in (q, k, v) + st)


# ------------------------------------------------------------------------------------------ memory acceptance

MEMORY_SCRIPT = r"""
import sys, time, torch, flashts
def hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
B, T, H, D, Dv = 1, 32768, 2, 16, 16
q = torch.randn(H, D, dtype=torch.float64, requires_grad=True)
k, v = (torch.randn(B, T, H, n, dtype=torch.float64, requires_grad=True) for n in (D, Dv))
g = torch.randn(B, T, H, Dv, dtype=torch.float64)
flashts.aaren_attention(q, k[:, :70], v[:, :70], backend="torch").sum().backward()   # warm-up
q.grad = k.grad = v.grad = None
base = hwm()
t0 = time.time()
flashts.aaren_attention(q, k, v, backend="torch").backward(g)
print(hwm() - base, time.time() - t0)
"""


@pytest.mark.slow
def test_memory_acceptance_T32768():
    """float64, B=1, H=2, D=Dv=16, T=32768, forward+backward: < 1 GB extra peak RSS, well under a minute."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                                       os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    growth_mib, seconds = map(float, res.stdout.split()[-2:])
    assert growth_mib < 1024, f"peak RSS grew by {growth_mib:.0f} MiB"
    assert seconds < 60, f"forward+backward took {seconds:.1f} s"
