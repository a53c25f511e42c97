"""Latte (SPEC §5): every backend against ``flashts.reference`` and against itself.

Covers: causal and bidirectional; float64 / float32 (and float16 / bfloat16) outputs and gradients of q, k, v
and the initial state (α, S; the max m carries none); T in {1, 2, 17, 63, 100, 257} with chunks small enough
that many chunk and block boundaries are crossed (the torch backend's ``CHUNK`` / ``TILE_ELEMENTS`` are
shrunk); odd and even latent / value dims; no initial state, an empty one (m = −inf) and a finite one;
final-state cotangents; latent logits k of ±1e4; token-by-token decoding and split/resume equal to one pass
(outputs, final states and chained gradients); ``cu_seqlens`` (with zero-length sequences) equal to a loop over
sequences and to the reference; fresh output tensors and state dtypes; the T = 32768 memory acceptance run
(``slow``).

Conditioning note: with k of ±1e4 the per-latent softmax over time is one-hot unless several k tie at the top,
and the gradients through a one-hot softmax are ~e^{-100} (relative errors meaningless), so the gradient check
uses k = ±1e4 + N(0, 1) (many near-ties at +1e4); independent k·1e4 is checked on outputs and finiteness.
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

OP = "latte_attention"
BACKENDS = backends_for(OP, interpreted=False)
F64, F32 = torch.float64, torch.float32
DTYPES = [F64, F32]
TS = [1, 2, 17, 63, 100, 257]
SKIP_MAX = dict(skip_grad_inputs=("initial_state[0]",), skip_grad_outputs=("[1][0]",))
SELF_TOL = {F64: 1e-11, F32: 2e-5}   # same backend, differently split computation
DEFAULT_CHUNK, DEFAULT_TILE = torch_prefix_scan.CHUNK, torch_prefix_scan.TILE_ELEMENTS  # before the fixture


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch):
    """Chunks of 8 steps and tiles of a few thousand elements, so T ≥ 17 crosses chunk and block boundaries."""
    monkeypatch.setattr(torch_prefix_scan, "CHUNK", 8)
    monkeypatch.setattr(torch_prefix_scan, "TILE_ELEMENTS", 3000)


def make_inputs(B, T, H, L, Dv, device="cpu"):
    return tuple(torch.randn(B, T, H, n, dtype=F64, device=device) for n in (L, L, Dv))


def make_state(kind, N, H, L, Dv, device="cpu"):
    if kind is None:
        return None
    if kind == "empty":
        return (torch.full((N, H, L), float("-inf"), dtype=F64, device=device),
                torch.zeros(N, H, L, dtype=F64, device=device), torch.zeros(N, H, L, Dv, dtype=F64, device=device))
    return (2 * torch.randn(N, H, L, dtype=F64, device=device), torch.rand(N, H, L, dtype=F64, device=device) + 0.5,
            torch.randn(N, H, L, Dv, dtype=F64, device=device))


def close(x, y, dtype, what):
    assert x.shape == y.shape, f"{what}: shape {tuple(x.shape)} != {tuple(y.shape)}"
    e = rel_err(x, y)
    assert e <= SELF_TOL[dtype], f"{what}: relative difference {e:.3e}"


def call(backend, q, k, v, **kw):
    return flashts.latte_attention(q, k, v, backend=backend, **kw)


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
    bound = 10 * torch.finfo(dtype).eps * g.double().norm() * v.norm()
    assert dq.double().norm() <= bound and dk.double().norm() <= bound, (dq.norm(), dk.norm(), bound)


# ------------------------------------------------------------------------------------------ against the reference

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T", TS)
def test_reference_causal_with_state(backend, dtype, T):
    """Finite initial state, final state returned: outputs, final state and all gradients."""
    B, H, L, Dv = 2, 3, 4, 7
    q, k, v = make_inputs(B, T, H, L, Dv)
    check_against_reference(OP, backend, (q, k, v),
                            dict(initial_state=make_state("finite", B, H, L, Dv), output_final_state=True),
                            dtype=dtype, **SKIP_MAX)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("state", [None, "empty"])
def test_reference_causal_no_or_empty_state(backend, dtype, T, state):
    """No initial state (plain output), and an empty one (m = −inf, α = S = 0: its gradients are 0)."""
    B, H, L, Dv = 1, 2, 16, 16
    q, k, v = make_inputs(B, T, H, L, Dv)
    kw = {} if state is None else dict(initial_state=make_state(state, B, H, L, Dv), output_final_state=True)
    if T == 1:
        check_degenerate_T1(backend, dtype, q, k, v, kw)
    else:
        check_against_reference(OP, backend, (q, k, v), kw, dtype=dtype, **SKIP_MAX)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T", TS)
def test_reference_bidirectional(backend, dtype, T):
    q, k, v = make_inputs(2, T, 3, 5, 7)
    if T == 1:
        check_degenerate_T1(backend, dtype, q, k, v, dict(causal=False))
    else:
        check_against_reference(OP, backend, (q, k, v), dict(causal=False), dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("causal", [True, False])
def test_reference_half(backend, dtype, causal):
    q, k, v = make_inputs(2, 40, 2, 4, 8)
    kw = dict(initial_state=make_state("finite", 2, 2, 4, 8), output_final_state=True) if causal else dict(causal=False)
    check_against_reference(OP, backend, (q, k, v), kw, dtype=dtype, **SKIP_MAX)


@pytest.mark.parametrize("chunk,tile", [(DEFAULT_CHUNK, DEFAULT_TILE), (64, 1 << 21),
                                        (8, 1 << 21), (8, 100), (5, 300), (1, 10)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_torch_chunking(monkeypatch, chunk, tile, dtype):
    """The torch backend's chunk size and tile budget (blocks over chunks, over rows, single chunks)."""
    monkeypatch.setattr(torch_prefix_scan, "CHUNK", chunk)
    monkeypatch.setattr(torch_prefix_scan, "TILE_ELEMENTS", tile)
    q, k, v = make_inputs(2, 100, 3, 4, 5)
    check_against_reference(OP, "torch", (q, k, v), dict(initial_state=make_state("finite", 2, 3, 4, 5),
                                                         output_final_state=True), dtype=dtype, **SKIP_MAX)


# ------------------------------------------------------------------------------------------ large logits

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", ["causal", "causal_high_state", "bidirectional"])
def test_huge_logits_tied(backend, dtype, mode):
    """k = ±1e4 + N(0,1) (differences up to 2e4 inside a chunk): finite and equal to the reference, gradients
    too; causal with no state (a chunk may start at −1e4 and rise to +1e4) and from a state whose max sits
    near +1e4, and bidirectional."""
    B, T, H, L, Dv = 2, 100, 2, 4, 6
    q, k, v = make_inputs(B, T, H, L, Dv)
    k = 1e4 * (2 * torch.randint(0, 2, k.shape, dtype=F64) - 1) + k
    if mode == "causal":
        kw = {}
    elif mode == "causal_high_state":
        st = (1e4 + torch.randn(B, H, L, dtype=F64), torch.rand(B, H, L, dtype=F64) + 0.5,
              torch.randn(B, H, L, Dv, dtype=F64))
        kw = dict(initial_state=st, output_final_state=True)
    else:
        kw = dict(causal=False)
    check_against_reference(OP, backend, (q, k, v), kw, dtype=dtype, **SKIP_MAX)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [True, False])
def test_huge_logits_random(backend, dtype, causal):
    """k = 1e4·N(0,1) (one-hot softmaxes), q = 1e4·N(0,1) too: outputs right, all gradients finite."""
    dev = device_for(backend)
    q, k, v = make_inputs(2, 63, 2, 4, 5)
    q, k = q * 1e4, k * 1e4
    check_against_reference(OP, backend, (q, k, v), dict(causal=causal), dtype=dtype, grad=False)
    q, k, v = (x.to(dev, dtype).requires_grad_() for x in (q, k, v))
    o = call(backend, q, k, v, causal=causal)
    o.double().sum().backward()
    for name, x in (("o", o), ("dq", q.grad), ("dk", k.grad), ("dv", v.grad)):
        assert torch.isfinite(x).all(), f"{name} not finite"


# ------------------------------------------------------------------------------------------ streaming / resume

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_decode_token_by_token(backend, dtype):
    """T = 1 steps carrying the state == one parallel pass (outputs and final state)."""
    dev = device_for(backend)
    B, T, H, L, Dv = 2, 21, 3, 4, 7
    q, k, v = (x.to(dev, dtype) for x in make_inputs(B, T, H, L, Dv))
    o_full, st_full = call(backend, q, k, v, output_final_state=True)
    st, outs = None, []
    for t in range(T):
        o_t, st = call(backend, q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], initial_state=st,
                       output_final_state=True)
        outs.append(o_t)
    close(torch.cat(outs, dim=1), o_full, dtype, "token-by-token outputs")
    for name, a, b in zip(["m", "alpha", "S"], st, st_full):
        close(a, b, dtype, f"final state {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("split", [1, 8, 37, 99])
def test_split_resume_with_gradients(backend, dtype, split):
    """Two calls chained through the state == one call: outputs, final state and the gradients of q, k, v and
    of the initial (α, S), with cotangents on the outputs and the final (α, S) (maxima carry none)."""
    dev = device_for(backend)
    B, T, H, L, Dv = 2, 100, 2, 3, 5
    q, k, v = make_inputs(B, T, H, L, Dv)
    m0, a0, S0 = make_state("finite", B, H, L, Dv)
    sd = F64 if dtype == F64 else F32
    go, ga, gS = (torch.randn(B, T, H, Dv, dtype=F64), torch.randn(B, H, L, dtype=F64),
                  torch.randn(B, H, L, Dv, dtype=F64))

    def run(split_at):
        leaves = [x.to(dev, dtype).requires_grad_() for x in (q, k, v)] + \
                 [x.to(dev, sd).requires_grad_() for x in (a0, S0)]
        qq, kk, vv, aa, SS = leaves
        st = (m0.to(dev, sd), aa, SS)
        if split_at is None:
            o, (m, a, S) = call(backend, qq, kk, vv, initial_state=st, output_final_state=True)
        else:
            o1, st1 = call(backend, qq[:, :split_at], kk[:, :split_at], vv[:, :split_at], initial_state=st,
                           output_final_state=True)
            o2, (m, a, S) = call(backend, qq[:, split_at:], kk[:, split_at:], vv[:, split_at:], initial_state=st1,
                                 output_final_state=True)
            o = torch.cat([o1, o2], dim=1)
        loss = (o.double() * go.to(dev)).sum() + (a.double() * ga.to(dev)).sum() + (S.double() * gS.to(dev)).sum()
        return (o, m, a, S), torch.autograd.grad(loss, leaves)

    (outs1, grads1), (outs2, grads2) = run(None), run(split)
    for name, a, b in zip(["o", "m", "alpha", "S"], outs2, outs1):
        close(a, b, dtype, f"split output {name}")
    for name, a, b in zip(["q", "k", "v", "alpha0", "S0"], grads2, grads1):
        close(a, b, dtype, f"split gradient of {name}")


# ------------------------------------------------------------------------------------------ packed sequences

LENS = [0, 5, 17, 0, 1, 40]


def _cu(lens, device):
    return torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=device)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("state", [None, "finite"])
def test_cu_seqlens_causal_equals_loop(backend, dtype, state):
    """Causal, packed (with zero-length sequences) == calling the op per sequence: outputs, final states and
    gradients (a zero-length sequence's final state is its initial state)."""
    dev = device_for(backend)
    cu = _cu(LENS, dev)
    N, T, H, L, Dv = len(LENS), sum(LENS), 3, 4, 7
    q, k, v = make_inputs(1, T, H, L, Dv)
    st = make_state(state or "empty", N, H, L, Dv)
    sd = F64 if dtype == F64 else F32
    go, ga, gS = (torch.randn(1, T, H, Dv, dtype=F64), torch.randn(N, H, L, dtype=F64),
                  torch.randn(N, H, L, Dv, dtype=F64))

    def leaves():
        ls = [x.to(dev, dtype).requires_grad_() for x in (q, k, v)]
        if state is not None:
            ls += [x.to(dev, sd).requires_grad_() for x in st[1:]]
        return ls

    def loss_of(o, a, S):
        return (o.double() * go.to(dev)).sum() + (a.double() * ga.to(dev)).sum() + (S.double() * gS.to(dev)).sum()

    L1 = leaves()
    st1 = None if state is None else (st[0].to(dev, sd), L1[3], L1[4])
    o_p, (m_p, a_p, S_p) = call(backend, *L1[:3], initial_state=st1, output_final_state=True, cu_seqlens=cu)
    g_p = torch.autograd.grad(loss_of(o_p, a_p, S_p), L1)

    L2 = leaves()
    qq, kk, vv = L2[:3]
    outs, ms, als, Ss = [], [], [], []
    for n in range(N):
        a, b = int(cu[n]), int(cu[n + 1])
        if state is None:
            m_n, a_n, S_n = (torch.full((1, H, L), float("-inf"), dtype=sd, device=dev),
                             torch.zeros(1, H, L, dtype=sd, device=dev), torch.zeros(1, H, L, Dv, dtype=sd, device=dev))
        else:
            m_n, a_n, S_n = st[0][n:n + 1].to(dev, sd), L2[3][n:n + 1], L2[4][n:n + 1]
        if b > a:
            o_n, (m_n, a_n, S_n) = call(backend, qq[:, a:b], kk[:, a:b], vv[:, a:b],
                                        initial_state=None if state is None else (m_n, a_n, S_n),
                                        output_final_state=True)
            outs.append(o_n)
        ms.append(m_n), als.append(a_n), Ss.append(S_n)
    o_l, m_l, a_l, S_l = torch.cat(outs, 1), torch.cat(ms), torch.cat(als), torch.cat(Ss)
    g_l = torch.autograd.grad(loss_of(o_l, a_l, S_l), L2)

    close(o_p, o_l, dtype, "packed output")
    assert torch.equal(torch.isinf(m_p), torch.isinf(m_l)), "packed final max: -inf pattern differs"
    fin = torch.isfinite(m_l)
    close(m_p[fin], m_l[fin], dtype, "packed final max")
    close(a_p, a_l, dtype, "packed final alpha")
    close(S_p, S_l, dtype, "packed final S")
    for name, a, b in zip(["q", "k", "v", "alpha0", "S0"], g_p, g_l):
        close(a, b, dtype, f"packed gradient of {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cu_seqlens_bidirectional_equals_loop(backend, dtype):
    dev = device_for(backend)
    cu = _cu(LENS, dev)
    T, H, L, Dv = sum(LENS), 2, 5, 3
    q, k, v = make_inputs(1, T, H, L, Dv)
    go = torch.randn(1, T, H, Dv, dtype=F64, device=dev)
    L1 = [x.to(dev, dtype).requires_grad_() for x in (q, k, v)]
    o_p = call(backend, *L1, causal=False, cu_seqlens=cu)
    g_p = torch.autograd.grad((o_p.double() * go).sum(), L1)
    L2 = [x.to(dev, dtype).requires_grad_() for x in (q, k, v)]
    o_l = torch.cat([call(backend, *(x[:, int(cu[n]):int(cu[n + 1])] for x in L2), causal=False)
                     for n in range(len(LENS)) if cu[n + 1] > cu[n]], dim=1)
    g_l = torch.autograd.grad((o_l.double() * go).sum(), L2)
    close(o_p, o_l, dtype, "packed output")
    for name, a, b in zip("qkv", g_p, g_l):
        close(a, b, dtype, f"packed gradient of {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [True, False])
def test_cu_seqlens_reference(backend, dtype, causal):
    """Packed sequences against the reference. (The reference cannot take zero-length causal sequences —
    its max over an empty time axis raises — so for causal those are covered by the loop test above.)"""
    lens = [5, 17, 1, 40, 9] if causal else LENS
    cu = _cu(lens, "cpu")
    N, T, H, L, Dv = len(lens), sum(lens), 2, 4, 7
    q, k, v = make_inputs(1, T, H, L, Dv)
    kw = dict(initial_state=make_state("finite", N, H, L, Dv), output_final_state=True) if causal else {}
    check_against_reference(OP, backend, (q, k, v), dict(kw, causal=causal, cu_seqlens=cu), dtype=dtype, **SKIP_MAX)


# ------------------------------------------------------------------------------------------ outputs

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES + [torch.bfloat16], ids=str)
def test_output_dtypes_and_fresh_tensors(backend, dtype):
    dev = device_for(backend)
    q, k, v = (x.to(dev, dtype) for x in make_inputs(2, 9, 2, 4, 3))
    sd = F64 if dtype == F64 else F32
    st = tuple(x.to(dev, sd) for x in make_state("finite", 2, 2, 4, 3))
    o, (m, a, S) = call(backend, q, k, v, initial_state=st, output_final_state=True)
    assert o.dtype == dtype and o.shape == (2, 9, 2, 3)
    assert m.dtype == a.dtype == S.dtype == sd
    assert m.shape == a.shape == (2, 2, 4) and S.shape == (2, 2, 4, 3)
    ob = call(backend, q, k, v, causal=False)
    assert isinstance(ob, torch.Tensor) and ob.dtype == dtype and ob.shape == (2, 9, 2, 3)
    for x in (o, m, a, S, ob):
        assert all(x.untyped_storage().data_ptr() != y.untyped_storage().data_ptr() for y in (q, k, v) + st)


# ------------------------------------------------------------------------------------------ memory acceptance

MEMORY_SCRIPT = r"""
import sys, time, torch, flashts
def hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
causal = sys.argv[1] == "1"
B, T, H, L, Dv = 1, 32768, 2, 16, 16
q, k, v = (torch.randn(B, T, H, n, dtype=torch.float64, requires_grad=True) for n in (L, L, Dv))
g = torch.randn(B, T, H, Dv, dtype=torch.float64)
flashts.latte_attention(q[:, :70], k[:, :70], v[:, :70], causal=causal, backend="torch").sum().backward()  # warm-up
q.grad = k.grad = v.grad = None
base = hwm()
t0 = time.time()
flashts.latte_attention(q, k, v, causal=causal, backend="torch").backward(g)
print(hwm() - base, time.time() - t0)
"""


@pytest.mark.slow
@pytest.mark.parametrize("causal", [True, False])
def test_memory_acceptance_T32768(causal):
    """float64, B=1, H=2, L=Dv=16, T=32768, forward+backward: < 1 GB extra peak RSS, well under a minute."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                                       os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, "1" if causal else "0"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    growth_mib, seconds = map(float, res.stdout.split()[-2:])
    assert growth_mib < 1024, f"peak RSS grew by {growth_mib:.0f} MiB"
    assert seconds < 60, f"forward+backward took {seconds:.1f} s"
