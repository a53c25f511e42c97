"""Tests of the ``cuda`` backend of Aaren (SPEC §4) and Latte (SPEC §5) (csrc/prefix_scan.cu, flashts/cuda_ops).

Marked ``cuda_ext``: they run where a GPU and the compiled ``flashts._C`` exist and skip (with the reason)
elsewhere. tests/conftest.py sets FLASHTS_POISON=1, so every output buffer the backend allocates with
``new_empty`` starts as NaN and an element a kernel forgets to write fails the finiteness checks.

Covered, against ``flashts.reference`` in float64 through ``check_against_reference`` (outputs, final states
and the gradients of q, k, v and of the initial (α, S); the maxima carry none):
* float32 at T in {1, 2, 17, 63, 100, 257} (the kernels tile time by 32: one, several, ragged tiles), float16 /
  bfloat16; no initial state, an empty one (m = −inf) and a finite one; final-state cotangents;
* Aaren: q ``[H, D]`` (dq summed over the batch) and ``[B, H, D]``, ``scale``, D / Dv from 1 to 70 (more
  columns than the 32 lanes of a warp); Latte: causal and bidirectional, L from 1 to 40 (more latents than the
  8 warps and the 32 lanes), a state L·Dv larger than 48 KB of shared memory (the opt-in configuration);
* logits of ±1e4 (tied and random); token-by-token decoding and split/resume == one pass (outputs, states and
  chained gradients); ``cu_seqlens`` with zero-length sequences == a loop over sequences and == the reference;
  non-contiguous inputs and a stride-0 cotangent; deterministic (bitwise repeatable) backward; dtypes and
  fresh output tensors.
T = 1 with no (or an empty) state gives o = v whatever q and k are, so dq = dk = 0 exactly in exact arithmetic:
there they are bounded absolutely instead of compared relatively (as in tests/test_aaren.py).
"""
from __future__ import annotations

import pytest
import torch

import flashts
from helpers import check_against_reference, device_for, rel_err

pytestmark = pytest.mark.cuda_ext

BACKEND = "cuda"
DEV = device_for(BACKEND)
F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
TS = [1, 2, 17, 63, 100, 257]
SKIP_MAX = dict(skip_grad_inputs=("initial_state[0]",), skip_grad_outputs=("[1][0]",))
SELF_TOL = {F32: 2e-5, F16: 2e-3, BF16: 2e-2}   # same backend, differently split computation
OPS = ["aaren_attention", "latte_attention"]
# (op, causal): Aaren is causal only
OP_MODES = [("aaren_attention", True), ("latte_attention", True), ("latte_attention", False)]
OP_MODE_IDS = ["aaren", "latte-causal", "latte-bidirectional"]


# ------------------------------------------------------------------------------------------ inputs

def inputs(op, B, T, H, X, Dv, *, q_batched=True):
    """float64 CPU (q, k, v); X = D (Aaren) or L (Latte)."""
    if op == "aaren_attention":
        q = torch.randn(B, H, X, dtype=F64) if q_batched else torch.randn(H, X, dtype=F64)
        return q, torch.randn(B, T, H, X, dtype=F64), torch.randn(B, T, H, Dv, dtype=F64)
    return tuple(torch.randn(B, T, H, n, dtype=F64) for n in (X, X, Dv))


def state(op, kind, N, H, X, Dv):
    """Initial state (float64 CPU) of ``kind`` None / "empty" / "finite" ("high": max near +1e4)."""
    lat = () if op == "aaren_attention" else (X,)
    if kind is None:
        return None
    if kind == "empty":
        return (torch.full((N, H) + lat, float("-inf"), dtype=F64), torch.zeros((N, H) + lat, dtype=F64),
                torch.zeros((N, H) + lat + (Dv,), dtype=F64))
    m = 2 * torch.randn((N, H) + lat, dtype=F64) + (1e4 - 3 if kind == "high" else 0.0)
    return m, torch.rand((N, H) + lat, dtype=F64) + 0.5, torch.randn((N, H) + lat + (Dv,), dtype=F64)


def call(op, q, k, v, **kw):
    return getattr(flashts, op)(q, k, v, backend=BACKEND, **kw)


def close(x, y, dtype, what):
    assert x.shape == y.shape, f"{what}: shape {tuple(x.shape)} != {tuple(y.shape)}"
    assert torch.isfinite(x).all() == torch.isfinite(y).all(), f"{what}: finiteness differs"
    e = rel_err(x, y)
    assert e <= SELF_TOL[dtype], f"{what}: relative difference {e:.3e}"


def check(op, args, kw, dtype=F32, **extra):
    return check_against_reference(op, BACKEND, args, kw, dtype=dtype, **{**SKIP_MAX, **extra})


def check_degenerate_T1(op, dtype, q, k, v, kw):
    """T = 1, no or an empty state: everything but dq, dk against the reference; |dq|, |dk| ≤ a rounding bound."""
    check(op, (q, k, v), kw, dtype, skip_grad_inputs=SKIP_MAX["skip_grad_inputs"] + ("[0]", "[1]"))
    qq, kk, vv = (x.to(DEV, dtype).requires_grad_() for x in (q, k, v))
    st = kw.get("initial_state")
    kw2 = {n: x for n, x in kw.items() if n != "initial_state"}
    if st is not None:
        kw2["initial_state"] = tuple(x.to(DEV, F32) for x in st)
    out = call(op, qq, kk, vv, **kw2)
    o = out[0] if isinstance(out, tuple) else out
    g = torch.randn_like(o)
    dq, dk = torch.autograd.grad(o, (qq, kk), g)
    bound = 10 * torch.finfo(dtype).eps * g.double().norm() * v.norm() * (1 + k.norm())
    assert dq.double().norm() <= bound and dk.double().norm() <= bound, (dq.norm(), dk.norm(), bound)


# ------------------------------------------------------------------------------------------ Aaren vs reference

@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("q_batched", [False, True], ids=["q[H,D]", "q[B,H,D]"])
@pytest.mark.parametrize("st", [None, "empty", "finite"])
def test_aaren_reference(T, q_batched, st):
    B, H, D, Dv = 2, 3, 5, 7
    q, k, v = inputs("aaren_attention", B, T, H, D, Dv, q_batched=q_batched)
    kw = {} if st is None else dict(initial_state=state("aaren_attention", st, B, H, D, Dv), output_final_state=True)
    if T == 1 and st != "finite":
        check_degenerate_T1("aaren_attention", F32, q, k, v, kw)
    else:
        check("aaren_attention", (q, k, v), kw)


@pytest.mark.parametrize("D,Dv", [(1, 1), (16, 16), (40, 70)])
def test_aaren_head_dims(D, Dv):
    """D, Dv above the 32 lanes of a warp (several columns per lane), and 1."""
    q, k, v = inputs("aaren_attention", 2, 100, 2, D, Dv)
    check("aaren_attention", (q, k, v), dict(initial_state=state("aaren_attention", "finite", 2, 2, D, Dv),
                                             output_final_state=True))


@pytest.mark.parametrize("dtype", [F16, BF16], ids=str)
def test_aaren_half(dtype):
    q, k, v = inputs("aaren_attention", 2, 40, 2, 8, 8)
    check("aaren_attention", (q, k, v), dict(initial_state=state("aaren_attention", "finite", 2, 2, 8, 8),
                                             output_final_state=True), dtype)


@pytest.mark.parametrize("scale", [0.1, 2.5])
def test_aaren_scale(scale):
    q, k, v = inputs("aaren_attention", 1, 33, 2, 4, 3, q_batched=False)
    check("aaren_attention", (q, k, v), dict(scale=scale))


def _aaren_tied_huge(B, T, H, Dv):
    """Integer q, k with scale 1: q·k = ±1e4 + a few units, exact in float32; many near-ties at the top."""
    D = 5
    q = torch.randint(-1, 2, (H, D)).to(F64)
    q[:, 0] = 100.0
    k = torch.randint(-2, 3, (B, T, H, D)).to(F64)
    k[..., 0] = 100.0 * (2 * torch.randint(0, 2, (B, T, H)) - 1)
    return q, k, torch.randn(B, T, H, Dv, dtype=F64)


@pytest.mark.parametrize("T", [17, 100])
@pytest.mark.parametrize("st", [None, "high"])
def test_aaren_huge_logits_tied(T, st):
    q, k, v = _aaren_tied_huge(2, T, 2, 6)
    kw = dict(scale=1.0)
    if st is not None:
        kw.update(initial_state=state("aaren_attention", "high", 2, 2, 5, 6), output_final_state=True)
    check("aaren_attention", (q, k, v), kw)


# ------------------------------------------------------------------------------------------ Latte vs reference

@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("st", [None, "empty", "finite"])
def test_latte_causal_reference(T, st):
    B, H, L, Dv = 2, 3, 5, 7
    q, k, v = inputs("latte_attention", B, T, H, L, Dv)
    kw = {} if st is None else dict(initial_state=state("latte_attention", st, B, H, L, Dv), output_final_state=True)
    if T == 1 and st != "finite":
        check_degenerate_T1("latte_attention", F32, q, k, v, kw)
    else:
        check("latte_attention", (q, k, v), kw)


@pytest.mark.parametrize("T", TS)
def test_latte_bidirectional_reference(T):
    q, k, v = inputs("latte_attention", 2, T, 3, 5, 7)
    if T == 1:
        check_degenerate_T1("latte_attention", F32, q, k, v, dict(causal=False))
    else:
        check("latte_attention", (q, k, v), dict(causal=False))


@pytest.mark.parametrize("L,Dv", [(1, 1), (16, 16), (40, 40), (9, 70)])
@pytest.mark.parametrize("causal", [True, False])
def test_latte_sizes(L, Dv, causal):
    """L above the 8 warps (several latents per warp) and the 32 lanes (softmax over l), Dv above 32."""
    q, k, v = inputs("latte_attention", 1, 70, 2, L, Dv)
    kw = dict(causal=causal)
    if causal:
        kw.update(initial_state=state("latte_attention", "finite", 1, 2, L, Dv), output_final_state=True)
    check("latte_attention", (q, k, v), kw)


@pytest.mark.parametrize("causal", [True, False])
def test_latte_large_state_shared_memory(causal):
    """L·Dv = 64·200 floats = 51 KB of state: more than the default 48 KB of shared memory (opt-in path)."""
    q, k, v = inputs("latte_attention", 1, 40, 1, 64, 200)
    kw = dict(causal=causal)
    if causal:
        kw.update(initial_state=state("latte_attention", "finite", 1, 1, 64, 200), output_final_state=True)
    check("latte_attention", (q, k, v), kw)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=str)
@pytest.mark.parametrize("causal", [True, False])
def test_latte_half(dtype, causal):
    q, k, v = inputs("latte_attention", 2, 40, 2, 6, 8)
    kw = dict(causal=causal)
    if causal:
        kw.update(initial_state=state("latte_attention", "finite", 2, 2, 6, 8), output_final_state=True)
    check("latte_attention", (q, k, v), kw, dtype)


@pytest.mark.parametrize("mode", ["causal", "causal_high_state", "bidirectional"])
def test_latte_huge_logits_tied(mode):
    B, T, H, L, Dv = 2, 100, 2, 4, 6
    q, k, v = inputs("latte_attention", B, T, H, L, Dv)
    k = 1e4 * (2 * torch.randint(0, 2, k.shape, dtype=F64) - 1) + k
    kw = {"causal": dict(), "bidirectional": dict(causal=False),
          "causal_high_state": dict(initial_state=state("latte_attention", "high", B, H, L, Dv),
                                    output_final_state=True)}[mode]
    check("latte_attention", (q, k, v), kw)


@pytest.mark.parametrize("op,causal", OP_MODES, ids=OP_MODE_IDS)
def test_huge_logits_random(op, causal):
    """Logits ~1e4·N(0,1) (one-hot softmaxes; Latte's q too): outputs right, every gradient finite."""
    q, k, v = inputs(op, 2, 63, 2, 4, 5)
    q, k = (q * 1e4, k * 1e4) if op == "latte_attention" else (q, k * 3e3)
    kw = {} if op == "aaren_attention" else dict(causal=causal)
    check_against_reference(op, BACKEND, (q, k, v), kw, dtype=F32, grad=False)
    qq, kk, vv = (x.to(DEV, F32).requires_grad_() for x in (q, k, v))
    o = call(op, qq, kk, vv, **kw)
    o.double().sum().backward()
    for name, x in (("o", o), ("dq", qq.grad), ("dk", kk.grad), ("dv", vv.grad)):
        assert torch.isfinite(x).all(), f"{name} not finite"


# ------------------------------------------------------------------------------------------ streaming / resume

def _x_of(op):
    return 5 if op == "aaren_attention" else 4


@pytest.mark.parametrize("op", OPS)
def test_decode_token_by_token(op):
    """T = 1 steps carrying the state == one pass (outputs and final state)."""
    B, T, H, Dv = 2, 21, 3, 7
    q, k, v = (x.to(DEV, F32) for x in inputs(op, B, T, H, _x_of(op), Dv))
    o_full, st_full = call(op, q, k, v, output_final_state=True)
    st, outs = None, []
    for t in range(T):
        qt = q if op == "aaren_attention" else q[:, t:t + 1]
        o_t, st = call(op, qt, k[:, t:t + 1], v[:, t:t + 1], initial_state=st, output_final_state=True)
        outs.append(o_t)
    close(torch.cat(outs, dim=1), o_full, F32, "token-by-token outputs")
    for name, a, b in zip(["m", "alpha", "S"], st, st_full):
        close(a, b, F32, f"final state {name}")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("split", [1, 37, 99])
def test_split_resume_with_gradients(op, split):
    """Two calls chained through the state == one call: outputs, final state, and the gradients of q, k, v and of
    the initial (α, S), with cotangents on the outputs and on the final (α, S)."""
    B, T, H, Dv = 2, 100, 2, 7
    X = _x_of(op)
    q, k, v = inputs(op, B, T, H, X, Dv, q_batched=False)
    m0, a0, S0 = state(op, "finite", B, H, X, Dv)
    go = torch.randn(B, T, H, Dv, dtype=F64)
    ga, gS = torch.randn(a0.shape, dtype=F64), torch.randn(S0.shape, dtype=F64)

    def run(split_at):
        leaves = [x.to(DEV, F32).requires_grad_() for x in (q, k, v, a0, S0)]
        qq, kk, vv, aa, SS = leaves
        st = (m0.to(DEV, F32), aa, SS)
        if split_at is None:
            o, (m, a, S) = call(op, qq, kk, vv, initial_state=st, output_final_state=True)
        else:
            q1, q2 = (qq, qq) if op == "aaren_attention" else (qq[:, :split_at], qq[:, split_at:])
            o1, st1 = call(op, q1, kk[:, :split_at], vv[:, :split_at], initial_state=st, output_final_state=True)
            o2, (m, a, S) = call(op, q2, kk[:, split_at:], vv[:, split_at:], initial_state=st1,
                                 output_final_state=True)
            o = torch.cat([o1, o2], dim=1)
        loss = (o.double() * go.to(DEV)).sum() + (a.double() * ga.to(DEV)).sum() + (S.double() * gS.to(DEV)).sum()
        return (o, m, a, S), torch.autograd.grad(loss, leaves)

    (outs1, grads1), (outs2, grads2) = run(None), run(split)
    for name, x, y in zip(["o", "m", "alpha", "S"], outs2, outs1):
        close(x, y, F32, f"split output {name}")
    for name, x, y in zip(["q", "k", "v", "alpha0", "S0"], grads2, grads1):
        close(x, y, F32, f"split gradient of {name}")


# ------------------------------------------------------------------------------------------ packed sequences

LENS = [0, 5, 17, 0, 1, 40]


def _cu(lens):
    return torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=DEV)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("st", [None, "finite"])
def test_cu_seqlens_causal_equals_loop(op, st):
    """Packed (with zero-length sequences) == the op per sequence: outputs, final states, gradients."""
    cu = _cu(LENS)
    N, T, H, Dv = len(LENS), sum(LENS), 3, 7
    X = _x_of(op)
    q, k, v = inputs(op, 1, T, H, X, Dv, q_batched=False)
    s0 = state(op, st or "empty", N, H, X, Dv)
    go = torch.randn(1, T, H, Dv, dtype=F64)
    ga, gS = torch.randn(s0[1].shape, dtype=F64), torch.randn(s0[2].shape, dtype=F64)

    def leaves():
        ls = [x.to(DEV, F32).requires_grad_() for x in (q, k, v)]
        if st is not None:
            ls += [x.to(DEV, F32).requires_grad_() for x in s0[1:]]
        return ls

    def loss_of(o, a, S):
        return (o.double() * go.to(DEV)).sum() + (a.double() * ga.to(DEV)).sum() + (S.double() * gS.to(DEV)).sum()

    L1 = leaves()
    st1 = None if st is None else (s0[0].to(DEV, F32), L1[3], L1[4])
    o_p, (m_p, a_p, S_p) = call(op, *L1[:3], initial_state=st1, output_final_state=True, cu_seqlens=cu)
    g_p = torch.autograd.grad(loss_of(o_p, a_p, S_p), L1)

    L2 = leaves()
    qq, kk, vv = L2[:3]
    outs, ms, as_, Ss = [], [], [], []
    for n in range(N):
        lo, hi = int(cu[n]), int(cu[n + 1])
        if st is None:
            m_n, a_n, S_n = (x[n:n + 1].to(DEV, F32) for x in s0)
        else:
            m_n, a_n, S_n = s0[0][n:n + 1].to(DEV, F32), L2[3][n:n + 1], L2[4][n:n + 1]
        if hi > lo:
            qn = qq if op == "aaren_attention" else qq[:, lo:hi]
            o_n, (m_n, a_n, S_n) = call(op, qn, kk[:, lo:hi], vv[:, lo:hi],
                                        initial_state=None if st is None else (m_n, a_n, S_n),
                                        output_final_state=True)
            outs.append(o_n)
        ms.append(m_n), as_.append(a_n), Ss.append(S_n)
    o_l, m_l, a_l, S_l = torch.cat(outs, 1), torch.cat(ms), torch.cat(as_), torch.cat(Ss)
    g_l = torch.autograd.grad(loss_of(o_l, a_l, S_l), L2)

    close(o_p, o_l, F32, "packed output")
    assert torch.equal(torch.isinf(m_p), torch.isinf(m_l)), "packed final max: -inf pattern differs"
    fin = torch.isfinite(m_l)
    close(m_p[fin], m_l[fin], F32, "packed final max")
    close(a_p, a_l, F32, "packed final alpha")
    close(S_p, S_l, F32, "packed final S")
    for name, x, y in zip(["q", "k", "v", "alpha0", "S0"], g_p, g_l):
        close(x, y, F32, f"packed gradient of {name}")


def test_latte_cu_seqlens_bidirectional_equals_loop():
    cu = _cu(LENS)
    T, H, L, Dv = sum(LENS), 2, 4, 6
    q, k, v = (x.to(DEV, F32) for x in inputs("latte_attention", 1, T, H, L, Dv))
    go = torch.randn(1, T, H, Dv, device=DEV)
    L1 = [x.clone().requires_grad_() for x in (q, k, v)]
    o_p = call("latte_attention", *L1, causal=False, cu_seqlens=cu)
    g_p = torch.autograd.grad((o_p * go).sum(), L1)
    L2 = [x.clone().requires_grad_() for x in (q, k, v)]
    outs = []
    for n in range(len(LENS)):
        lo, hi = int(cu[n]), int(cu[n + 1])
        if hi > lo:
            outs.append(call("latte_attention", *(x[:, lo:hi] for x in L2), causal=False))
    o_l = torch.cat(outs, 1)
    g_l = torch.autograd.grad((o_l * go).sum(), L2)
    close(o_p, o_l, F32, "packed bidirectional output")
    for name, x, y in zip("qkv", g_p, g_l):
        close(x, y, F32, f"packed bidirectional gradient of {name}")


@pytest.mark.parametrize("op,causal", OP_MODES, ids=OP_MODE_IDS)
def test_cu_seqlens_reference(op, causal):
    """Packed sequences against the reference (which cannot take zero-length causal sequences)."""
    lens = [5, 17, 1, 40, 9]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    N, T, H, Dv = len(lens), sum(lens), 2, 7
    X = _x_of(op)
    q, k, v = inputs(op, 1, T, H, X, Dv, q_batched=True)
    kw = dict(cu_seqlens=cu)
    if causal:
        kw.update(initial_state=state(op, "finite", N, H, X, Dv), output_final_state=True)
    if op == "latte_attention":
        kw["causal"] = causal
    check(op, (q, k, v), kw)


# ------------------------------------------------------------------------------------------ layout, contract

@pytest.mark.parametrize("op,causal", OP_MODES, ids=OP_MODE_IDS)
def test_non_contiguous_and_stride0_cotangent(op, causal):
    """Strided q, k, v views (kernels read with strides) and o.sum()'s expanded cotangent == contiguous copies;
    two backward passes are bitwise equal (fixed-order reductions)."""
    B, T, H, X, Dv = 2, 45, 3, 6, 5
    kw = {} if op == "aaren_attention" else dict(causal=causal)
    if op == "aaren_attention":
        q = torch.randn(H, 2 * X, device=DEV)[:, ::2]
    else:
        q = torch.randn(B, H, T, X, device=DEV).transpose(1, 2)
    k = torch.randn(B, T, X, H, device=DEV).transpose(2, 3)
    v = torch.randn(B, T, H, 2 * Dv, device=DEV)[..., ::2]
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())

    def run(tensors):
        leaves = [x.detach().requires_grad_() for x in tensors]
        o = call(op, *leaves, **kw)
        o.sum().backward()
        return [o.detach()] + [x.grad for x in leaves]

    strided, again = run((q, k, v)), run((q, k, v))
    dense = run(tuple(x.contiguous() for x in (q, k, v)))
    for name, a, b, c in zip(["o", "dq", "dk", "dv"], strided, again, dense):
        assert torch.equal(a, b), f"{name}: backward not deterministic"
        close(a, c, F32, f"{name}: strided vs contiguous")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_output_dtypes_and_fresh_tensors(op, dtype):
    X = _x_of(op)
    q, k, v = (x.to(DEV, dtype) for x in inputs(op, 2, 9, 2, X, 3, q_batched=False))
    st = tuple(x.to(DEV, F32) for x in state(op, "finite", 2, 2, X, 3))
    o, (m, a, S) = call(op, q, k, v, initial_state=st, output_final_state=True)
    assert o.dtype == dtype and o.shape == (2, 9, 2, 3)
    assert m.dtype == a.dtype == S.dtype == F32
    for x in (o, m, a, S):
        assert all(x.untyped_storage().data_ptr() != y.untyped_storage().data_ptr() for y in (q, k, v) + st)


def test_provided_ops():
    from flashts.cuda_ops import extension
    assert {"aaren_attention", "latte_attention"} <= set(extension().provided_ops())
