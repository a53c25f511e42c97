"""Aaren (SPEC §4) and Latte (SPEC §5), ``triton`` backend (kernels/prefix_scan.py) against the reference.

Runs under the Triton interpreter on CPU (tests/conftest.py sets TRITON_INTERPRET=1 when there is no GPU) and
on CUDA tensors where a GPU is present. Shapes are small (the interpreter is slow); chunks are CHUNK = 16
steps, so T = 17..100 crosses up to 7 chunk boundaries.

Covers, for both ops: float32 outputs and gradients of q, k, v and the initial state (α/u, S/w; the max m
carries none), float16 / bfloat16; T in {1, 2, 17, 63, 100}; odd and power-of-two head / latent / value dims
(D = 5, 16, 60; L = 4, 5, 16, 20; Dv = 7, 16, 40) including several Dv tiles (BV_MAX shrunk: the Dv-tile
partials of da, dp, dα0 are summed); both intra-chunk paths (the matrix-form fast path, and the exact
step-by-step walk, forced with RISE_LIMIT = −1 and taken by itself for logits of ±1e4); Aaren q as ``[H, D]``
and ``[B, H, D]``; no / empty / finite initial state and final-state cotangents; token-by-token decoding (the
T = 1 decode kernel) and split/resume equal to one pass, with chained gradients; ``cu_seqlens`` with
zero-length sequences equal to a loop over sequences and to the reference; Latte bidirectional; inputs with
non-unit strides; fresh outputs and state dtypes.
"""
from __future__ import annotations

import pytest
import torch

import flashts
from flashts import _backend
from tests.helpers import check_against_reference, device_for, rel_err

pytestmark = pytest.mark.skipif(
    not _backend.available("triton", device_for("triton")),
    reason="triton backend unavailable here (needs the triton package, and CUDA or TRITON_INTERPRET=1)")

ks = pytest.importorskip("flashts.kernels.prefix_scan", reason="triton is not installed")

BE = "triton"
F64, F32 = torch.float64, torch.float32
SKIP_MAX = dict(skip_grad_inputs=("initial_state[0]",), skip_grad_outputs=("[1][0]",))
SELF_TOL = 2e-5      # float32, same backend, differently split computation
DEV = device_for(BE)


@pytest.fixture(autouse=True, params=["one_pass", "chunked"])
def _chunk16(request, monkeypatch):
    """Every test runs with both ways of crossing chunks (SCAN_MODE), at chunks of 16."""
    monkeypatch.setattr(ks, "CHUNK", 16)
    monkeypatch.setattr(ks, "SCAN_MODE", request.param)
    return request.param


def close(x, y, what, tol=SELF_TOL):
    assert x.shape == y.shape, f"{what}: shape {tuple(x.shape)} != {tuple(y.shape)}"
    assert torch.isfinite(x).all(), f"{what}: non-finite values"
    e = rel_err(x, y)
    assert e <= tol, f"{what}: relative difference {e:.3e}"


def aaren_inputs(B, T, H, D, Dv, q_batched):
    q = torch.randn(B, H, D, dtype=F64) if q_batched else torch.randn(H, D, dtype=F64)
    return q, torch.randn(B, T, H, D, dtype=F64), torch.randn(B, T, H, Dv, dtype=F64)


def latte_inputs(B, T, H, L, Dv):
    return tuple(torch.randn(B, T, H, n, dtype=F64) for n in (L, L, Dv))


def make_state(kind, lead, Dv):
    """(m, α, S) with m/α of shape ``lead`` ([N, H] Aaren, [N, H, L] Latte) and S of ``lead + (Dv,)``."""
    if kind == "empty":
        return (torch.full(lead, float("-inf"), dtype=F64), torch.zeros(lead, dtype=F64),
                torch.zeros(lead + (Dv,), dtype=F64))
    return 2 * torch.randn(lead, dtype=F64), torch.rand(lead, dtype=F64) + 0.5, torch.randn(lead + (Dv,), dtype=F64)


def check_degenerate_T1(op, q, k, v, kw):
    """T = 1 without a (non-empty) state: o = v for any q, k, so dq = dk = 0 exactly in exact arithmetic; compare
    the rest with the reference and bound |dq|, |dk| absolutely (a relative error would compare rounding noise)."""
    check_against_reference(op, BE, (q, k, v), kw, dtype=F32,
                            skip_grad_inputs=SKIP_MAX["skip_grad_inputs"] + ("[0]", "[1]"),
                            skip_grad_outputs=SKIP_MAX["skip_grad_outputs"])
    qq, kk, vv = (x.to(DEV, F32).requires_grad_() for x in (q, k, v))
    kw = dict(kw)
    if "initial_state" in kw:
        kw["initial_state"] = tuple(x.to(DEV, F32) for x in kw["initial_state"])
    out = getattr(flashts, op)(qq, kk, vv, backend=BE, **kw)
    o = out[0] if isinstance(out, tuple) else out
    g = torch.randn_like(o)
    dq, dk = torch.autograd.grad(o, (qq, kk), g)
    bound = 10 * torch.finfo(F32).eps * g.double().norm() * v.norm() * max(1.0, k.norm().item())
    assert dq.double().norm() <= bound and dk.double().norm() <= bound, (dq.norm(), dk.norm(), bound)


# ============================================================================================== Aaren

AAREN = "aaren_attention"


@pytest.mark.parametrize("T,q_batched", [(1, False), (2, True), (17, False), (63, True), (100, False)])
def test_aaren_reference_with_state(T, q_batched):
    """Finite initial state, final state returned (with cotangents): outputs, final state, all gradients."""
    B, H, D, Dv = 2, 2, 5, 7
    q, k, v = aaren_inputs(B, T, H, D, Dv, q_batched)
    check_against_reference(AAREN, BE, (q, k, v), dict(initial_state=make_state("finite", (B, H), Dv),
                                                        output_final_state=True), dtype=F32, **SKIP_MAX)


@pytest.mark.parametrize("T", [1, 17, 63])
@pytest.mark.parametrize("state", [None, "empty"])
def test_aaren_reference_no_or_empty_state(T, state):
    B, H, D, Dv = 1, 2, 16, 16
    q, k, v = aaren_inputs(B, T, H, D, Dv, q_batched=False)
    kw = {} if state is None else dict(initial_state=make_state("empty", (B, H), Dv), output_final_state=True)
    if T == 1:
        check_degenerate_T1(AAREN, q, k, v, kw)
    else:
        check_against_reference(AAREN, BE, (q, k, v), kw, dtype=F32, **SKIP_MAX)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_aaren_reference_half(dtype):
    q, k, v = aaren_inputs(2, 40, 2, 8, 8, q_batched=True)
    check_against_reference(AAREN, BE, (q, k, v), dict(initial_state=make_state("finite", (2, 2), 8),
                                                        output_final_state=True), dtype=dtype, **SKIP_MAX)


@pytest.mark.parametrize("D,Dv,bv_max", [(60, 40, 16), (16, 64, 64), (3, 5, 64)])
def test_aaren_head_dims_and_dv_tiles(monkeypatch, D, Dv, bv_max):
    """D not a power of two (60, 3), several Dv tiles (40 with tiles of 16: partials summed), exactly one tile."""
    monkeypatch.setattr(ks, "BV_MAX", bv_max)
    q, k, v = aaren_inputs(1, 37, 2, D, Dv, q_batched=False)
    check_against_reference(AAREN, BE, (q, k, v), dict(scale=0.3, initial_state=make_state("finite", (1, 2), Dv),
                                                        output_final_state=True), dtype=F32, **SKIP_MAX)


def test_aaren_exact_path(monkeypatch):
    """RISE_LIMIT = −1: every chunk takes the step-by-step walk (forward and backward)."""
    monkeypatch.setattr(ks, "RISE_LIMIT", -1.0)
    q, k, v = aaren_inputs(2, 33, 1, 5, 7, q_batched=True)
    check_against_reference(AAREN, BE, (q, k, v), dict(initial_state=make_state("finite", (2, 1), 7),
                                                        output_final_state=True), dtype=F32, **SKIP_MAX)


def test_aaren_mixed_fast_and_exact_chunks():
    """Chunks alternating between the matrix form and the exact walk inside one sequence (scale 1, q = e_0, so
    s_t = k_t[0]), initial max ≈ −100: chunk 0 starts at −80, chunk 2 jumps to +60 at step 5 (exact walks), the
    other chunks are ordinary (matrix form)."""
    B, T, H, D, Dv = 1, 70, 2, 4, 7
    q = torch.zeros(H, D, dtype=F64)
    q[:, 0] = 1.0
    k = torch.randn(B, T, H, D, dtype=F64)
    k[:, 0, :, 0] = -80.0
    k[:, 37, 0, 0] = 60.0
    v = torch.randn(B, T, H, Dv, dtype=F64)
    m0, u0, w0 = make_state("finite", (B, H), Dv)
    check_against_reference(AAREN, BE, (q, k, v), dict(scale=1.0, initial_state=(m0 - 100.0, u0, w0),
                                                        output_final_state=True), dtype=F32, **SKIP_MAX)


@pytest.mark.parametrize("state", [None, "high"])
def test_aaren_huge_logits_tied(state):
    """Logits ±1e4 + a few units (integer q, k, scale 1: exact in float32; many near-ties at the top), rising
    from −1e4 to +1e4 inside chunks: finite and equal to the reference, gradients too."""
    B, T, H, D, Dv = 1, 40, 2, 5, 6
    q = torch.randint(-1, 2, (H, D)).to(F64)
    q[:, 0] = 100.0
    k = torch.randint(-2, 3, (B, T, H, D)).to(F64)
    k[..., 0] = 100.0 * (2 * torch.randint(0, 2, (B, T, H)) - 1)
    v = torch.randn(B, T, H, Dv, dtype=F64)
    kw = dict(scale=1.0)
    if state == "high":
        kw.update(initial_state=(torch.full((B, H), 1e4 - 3, dtype=F64), torch.rand(B, H, dtype=F64) + 0.5,
                                 torch.randn(B, H, Dv, dtype=F64)), output_final_state=True)
    check_against_reference(AAREN, BE, (q, k, v), kw, dtype=F32, **SKIP_MAX)


def test_aaren_huge_logits_random():
    """q·k of order ±1e4 without ties: outputs right, outputs / states / gradients finite."""
    q, k, v = aaren_inputs(1, 20, 2, 8, 4, q_batched=False)
    k = k * 3e3
    check_against_reference(AAREN, BE, (q, k, v), {}, dtype=F32, grad=False)
    q, k, v = (x.to(DEV, F32).requires_grad_() for x in (q, k, v))
    o, (m, u, w) = flashts.aaren_attention(q, k, v, output_final_state=True, backend=BE)
    assert m.abs().max() > 1e3, "the test must produce huge logits"
    (o.double().sum() + u.double().sum() + w.double().sum()).backward()
    for name, x in (("o", o), ("u", u), ("w", w), ("dq", q.grad), ("dk", k.grad), ("dv", v.grad)):
        assert torch.isfinite(x).all(), f"{name} not finite"


@pytest.mark.parametrize("q_batched", [False, True], ids=["q[H,D]", "q[B,H,D]"])
def test_aaren_decode_token_by_token(q_batched):
    """T = 1 steps (the decode kernel) carrying the state == one pass: outputs and final state."""
    B, T, H, D, Dv = 2, 12, 2, 5, 7
    q, k, v = (x.to(DEV, F32) for x in aaren_inputs(B, T, H, D, Dv, q_batched))
    o_full, st_full = flashts.aaren_attention(q, k, v, output_final_state=True, backend=BE)
    st, outs = None, []
    for t in range(T):
        o_t, st = flashts.aaren_attention(q, k[:, t:t + 1], v[:, t:t + 1], initial_state=st, output_final_state=True,
                                          backend=BE)
        outs.append(o_t)
    close(torch.cat(outs, dim=1), o_full, "token-by-token outputs")
    for name, a, b in zip("muw", st, st_full):
        close(a, b, f"final state {name}")


@pytest.mark.parametrize("split", [1, 37])
def test_aaren_split_resume_with_gradients(split):
    """Two calls chained through the state == one call: outputs, final state, gradients of q, k, v, u0, w0."""
    B, T, H, D, Dv = 1, 60, 2, 5, 7
    q, k, v = aaren_inputs(B, T, H, D, Dv, q_batched=False)
    m0, u0, w0 = make_state("finite", (B, H), Dv)
    go, gu, gw = torch.randn(B, T, H, Dv, dtype=F64), torch.randn(B, H, dtype=F64), torch.randn(B, H, Dv, dtype=F64)

    def run(split_at):
        leaves = [x.to(DEV, F32).requires_grad_() for x in (q, k, v, u0, w0)]
        qq, kk, vv, uu, ww = leaves
        st = (m0.to(DEV, F32), uu, ww)
        if split_at is None:
            o, (m, u, w) = flashts.aaren_attention(qq, kk, vv, initial_state=st, output_final_state=True, backend=BE)
        else:
            o1, st1 = flashts.aaren_attention(qq, kk[:, :split_at], vv[:, :split_at], initial_state=st,
                                              output_final_state=True, backend=BE)
            o2, (m, u, w) = flashts.aaren_attention(qq, kk[:, split_at:], vv[:, split_at:], initial_state=st1,
                                                    output_final_state=True, backend=BE)
            o = torch.cat([o1, o2], dim=1)
        loss = (o.double() * go.to(DEV)).sum() + (u.double() * gu.to(DEV)).sum() + (w.double() * gw.to(DEV)).sum()
        return (o, m, u, w), torch.autograd.grad(loss, leaves)

    (outs1, grads1), (outs2, grads2) = run(None), run(split)
    for name, a, b in zip(["o", "m", "u", "w"], outs2, outs1):
        close(a, b, f"split output {name}")
    for name, a, b in zip(["q", "k", "v", "u0", "w0"], grads2, grads1):
        close(a, b, f"split gradient of {name}")


LENS = [0, 5, 17, 0, 1, 20]


def _cu(lens):
    return torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=DEV)


def _packed_vs_loop(op, fn_call, lead_of, make_qkv, state, Dv):
    """Shared body of the cu_seqlens == loop tests (causal ops with a state): outputs, final states, gradients."""
    cu = _cu(LENS)
    N, T = len(LENS), sum(LENS)
    q, k, v = make_qkv(T)
    lead = lead_of(N)
    st = make_state(state or "empty", lead, Dv)
    go, ga, gS = torch.randn(1, T, *v.shape[2:-1], Dv, dtype=F64), torch.randn(lead, dtype=F64), \
        torch.randn(lead + (Dv,), dtype=F64)

    def leaves():
        ls = [x.to(DEV, F32).requires_grad_() for x in (q, k, v)]
        if state is not None:
            ls += [x.to(DEV, F32).requires_grad_() for x in st[1:]]
        return ls

    def loss_of(o, a, S):
        return (o.double() * go.to(DEV)).sum() + (a.double() * ga.to(DEV)).sum() + (S.double() * gS.to(DEV)).sum()

    L1 = leaves()
    st1 = None if state is None else (st[0].to(DEV, F32), L1[3], L1[4])
    o_p, (m_p, a_p, S_p) = fn_call(*L1[:3], initial_state=st1, output_final_state=True, cu_seqlens=cu)
    g_p = torch.autograd.grad(loss_of(o_p, a_p, S_p), L1)

    L2 = leaves()
    outs, ms, als, Ss = [], [], [], []
    for n in range(N):
        t0, t1 = int(cu[n]), int(cu[n + 1])
        if state is None:
            s_n = tuple(x[n:n + 1].to(DEV, F32) for x in make_state("empty", lead, Dv))
        else:
            s_n = (st[0][n:n + 1].to(DEV, F32), L2[3][n:n + 1], L2[4][n:n + 1])
        if t1 > t0:
            qn = L2[0] if op == AAREN else L2[0][:, t0:t1]
            o_n, s_n = fn_call(qn, L2[1][:, t0:t1], L2[2][:, t0:t1], initial_state=None if state is None else s_n,
                               output_final_state=True)
            outs.append(o_n)
        ms.append(s_n[0]), als.append(s_n[1]), Ss.append(s_n[2])
    o_l, m_l, a_l, S_l = torch.cat(outs, 1), torch.cat(ms), torch.cat(als), torch.cat(Ss)
    g_l = torch.autograd.grad(loss_of(o_l, a_l, S_l), L2)

    close(o_p, o_l, "packed output")
    assert torch.equal(torch.isinf(m_p), torch.isinf(m_l)), "packed final max: -inf pattern differs"
    fin = torch.isfinite(m_l)
    close(m_p[fin], m_l[fin], "packed final max")
    close(a_p, a_l, "packed final alpha")
    close(S_p, S_l, "packed final S")
    for name, a, b in zip(["q", "k", "v", "alpha0", "S0"], g_p, g_l):
        close(a, b, f"packed gradient of {name}")


@pytest.mark.parametrize("state", [None, "finite"])
def test_aaren_cu_seqlens_equals_loop(state):
    H, D, Dv = 2, 5, 7
    _packed_vs_loop(AAREN, lambda *a, **kw: flashts.aaren_attention(*a, **kw, backend=BE), lambda N: (N, H),
                    lambda T: aaren_inputs(1, T, H, D, Dv, q_batched=False), state, Dv)


def test_aaren_cu_seqlens_reference():
    lens = [5, 17, 1, 20]
    cu = _cu(lens).cpu()
    N, T, H, D, Dv = len(lens), sum(lens), 2, 5, 7
    q, k, v = aaren_inputs(1, T, H, D, Dv, q_batched=True)
    check_against_reference(AAREN, BE, (q, k, v), dict(initial_state=make_state("finite", (N, H), Dv),
                                                        output_final_state=True, cu_seqlens=cu), dtype=F32, **SKIP_MAX)


def test_aaren_strided_inputs_and_fresh_outputs():
    """k, v with non-unit time/head strides and a non-contiguous last dim; outputs are new tensors."""
    B, T, H, D, Dv = 2, 20, 2, 5, 7
    q = torch.randn(B, H, D, device=DEV)
    k = torch.randn(B, H, T, D, device=DEV).transpose(1, 2)                   # [B, T, H, D], time stride D
    v = torch.randn(B, T, Dv, H, device=DEV).transpose(2, 3)                  # last dim stride H (copied)
    st = tuple(x.to(DEV, F32) for x in make_state("finite", (B, H), Dv))
    o, (m, u, w) = flashts.aaren_attention(q, k, v, initial_state=st, output_final_state=True, backend=BE)
    o_ref, (m_r, u_r, w_r) = flashts.aaren_attention(q, k.contiguous(), v.contiguous(), initial_state=st,
                                                     output_final_state=True, backend=BE)
    close(o, o_ref, "strided output", 1e-6)
    close(w, w_r, "strided state", 1e-6)
    assert o.dtype == F32 and m.dtype == u.dtype == w.dtype == F32
    assert m.shape == u.shape == (B, H) and w.shape == (B, H, Dv)
    for x in (o, m, u, w):
        assert all(x.untyped_storage().data_ptr() != y.untyped_storage().data_ptr() for y in (q, k, v) + st)


# ============================================================================================== Latte

LATTE = "latte_attention"


@pytest.mark.parametrize("T,L,Dv", [(1, 4, 7), (2, 5, 7), (17, 4, 7), (63, 16, 16), (100, 20, 7)])
def test_latte_reference_causal_with_state(T, L, Dv):
    B, H = 2, 2
    q, k, v = latte_inputs(B, T, H, L, Dv)
    check_against_reference(LATTE, BE, (q, k, v), dict(initial_state=make_state("finite", (B, H, L), Dv),
                                                        output_final_state=True), dtype=F32, **SKIP_MAX)


@pytest.mark.parametrize("T", [1, 17, 63])
@pytest.mark.parametrize("state", [None, "empty"])
def test_latte_reference_causal_no_or_empty_state(T, state):
    B, H, L, Dv = 1, 2, 16, 16
    q, k, v = latte_inputs(B, T, H, L, Dv)
    kw = {} if state is None else dict(initial_state=make_state("empty", (B, H, L), Dv), output_final_state=True)
    if T == 1:
        check_degenerate_T1(LATTE, q, k, v, kw)
    else:
        check_against_reference(LATTE, BE, (q, k, v), kw, dtype=F32, **SKIP_MAX)


@pytest.mark.parametrize("T,L,Dv", [(1, 5, 7), (2, 4, 7), (17, 5, 7), (100, 16, 16)])
def test_latte_reference_bidirectional(T, L, Dv):
    q, k, v = latte_inputs(2, T, 2, L, Dv)
    if T == 1:
        check_degenerate_T1(LATTE, q, k, v, dict(causal=False))
    else:
        check_against_reference(LATTE, BE, (q, k, v), dict(causal=False), dtype=F32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("causal", [True, False])
def test_latte_reference_half(dtype, causal):
    q, k, v = latte_inputs(2, 40, 2, 4, 8)
    kw = dict(initial_state=make_state("finite", (2, 2, 4), 8), output_final_state=True) if causal \
        else dict(causal=False)
    check_against_reference(LATTE, BE, (q, k, v), kw, dtype=dtype, **SKIP_MAX)


@pytest.mark.parametrize("causal", [True, False])
def test_latte_dv_tiles(monkeypatch, causal):
    """Dv = 40 in tiles of 16 (three programs per row: dk, dp, dα0 partials summed; dα_T enters once)."""
    monkeypatch.setattr(ks, "BV_MAX", 16)
    B, T, H, L, Dv = 1, 37, 2, 5, 40
    q, k, v = latte_inputs(B, T, H, L, Dv)
    kw = dict(initial_state=make_state("finite", (B, H, L), Dv), output_final_state=True) if causal \
        else dict(causal=False)
    check_against_reference(LATTE, BE, (q, k, v), kw, dtype=F32, **SKIP_MAX)


def test_latte_exact_path(monkeypatch):
    """RISE_LIMIT = −1: every chunk takes the step-by-step walk (forward and backward)."""
    monkeypatch.setattr(ks, "RISE_LIMIT", -1.0)
    q, k, v = latte_inputs(1, 33, 1, 5, 7)
    check_against_reference(LATTE, BE, (q, k, v), dict(initial_state=make_state("finite", (1, 1, 5), 7),
                                                        output_final_state=True), dtype=F32, **SKIP_MAX)


def test_latte_mixed_fast_and_exact_chunks():
    """One sequence whose chunks alternate between the two intra-chunk paths (the state passes between them):
    with chunks of 16 and an initial max of ≈ −100, chunk 0 starts at −80 (its max rises by ~80: exact walk),
    chunk 2 jumps to +60 at step 5 (exact walk), chunks 1, 3, 4 are ordinary (matrix form)."""
    B, T, H, L, Dv = 1, 70, 2, 5, 7
    q, k, v = latte_inputs(B, T, H, L, Dv)
    k[:, 0] = -80.0
    k[:, 37, :, :2] = 60.0
    m0, a0, S0 = make_state("finite", (B, H, L), Dv)
    check_against_reference(LATTE, BE, (q, k, v), dict(initial_state=(m0 - 100.0, a0, S0), output_final_state=True),
                            dtype=F32, **SKIP_MAX)


@pytest.mark.parametrize("mode", ["causal", "causal_high_state", "bidirectional"])
def test_latte_huge_logits_tied(mode):
    """k = ±1e4 + N(0, 1) (rises of 2e4 inside chunks: the exact walk), finite and equal to the reference,
    gradients too; causal from no state and from a state near +1e4, and bidirectional."""
    B, T, H, L, Dv = 1, 40, 2, 4, 6
    q, k, v = latte_inputs(B, T, H, L, Dv)
    k = 1e4 * (2 * torch.randint(0, 2, k.shape, dtype=F64) - 1) + k
    if mode == "causal":
        kw = {}
    elif mode == "causal_high_state":
        kw = dict(initial_state=(1e4 + torch.randn(B, H, L, dtype=F64), torch.rand(B, H, L, dtype=F64) + 0.5,
                                 torch.randn(B, H, L, Dv, dtype=F64)), output_final_state=True)
    else:
        kw = dict(causal=False)
    check_against_reference(LATTE, BE, (q, k, v), kw, dtype=F32, **SKIP_MAX)


@pytest.mark.parametrize("causal", [True, False])
def test_latte_huge_logits_random(causal):
    """q, k = 1e4·N(0, 1) (one-hot softmaxes): outputs right, all gradients finite."""
    q, k, v = latte_inputs(1, 20, 2, 4, 5)
    q, k = q * 1e4, k * 1e4
    check_against_reference(LATTE, BE, (q, k, v), dict(causal=causal), dtype=F32, grad=False)
    q, k, v = (x.to(DEV, F32).requires_grad_() for x in (q, k, v))
    flashts.latte_attention(q, k, v, causal=causal, backend=BE).double().sum().backward()
    for name, x in (("dq", q.grad), ("dk", k.grad), ("dv", v.grad)):
        assert torch.isfinite(x).all(), f"{name} not finite"


def test_latte_decode_token_by_token():
    """T = 1 steps (the decode kernel) carrying the state == one pass: outputs and final state."""
    B, T, H, L, Dv = 2, 12, 2, 5, 7
    q, k, v = (x.to(DEV, F32) for x in latte_inputs(B, T, H, L, Dv))
    o_full, st_full = flashts.latte_attention(q, k, v, output_final_state=True, backend=BE)
    st, outs = None, []
    for t in range(T):
        o_t, st = flashts.latte_attention(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], initial_state=st,
                                          output_final_state=True, backend=BE)
        outs.append(o_t)
    close(torch.cat(outs, dim=1), o_full, "token-by-token outputs")
    for name, a, b in zip(["m", "alpha", "S"], st, st_full):
        close(a, b, f"final state {name}")


@pytest.mark.parametrize("split", [1, 37])
def test_latte_split_resume_with_gradients(split):
    B, T, H, L, Dv = 1, 60, 2, 3, 5
    q, k, v = latte_inputs(B, T, H, L, Dv)
    m0, a0, S0 = make_state("finite", (B, H, L), Dv)
    go, ga, gS = (torch.randn(B, T, H, Dv, dtype=F64), torch.randn(B, H, L, dtype=F64),
                  torch.randn(B, H, L, Dv, dtype=F64))

    def run(split_at):
        leaves = [x.to(DEV, F32).requires_grad_() for x in (q, k, v, a0, S0)]
        qq, kk, vv, aa, SS = leaves
        st = (m0.to(DEV, F32), aa, SS)
        if split_at is None:
            o, (m, a, S) = flashts.latte_attention(qq, kk, vv, initial_state=st, output_final_state=True, backend=BE)
        else:
            o1, st1 = flashts.latte_attention(qq[:, :split_at], kk[:, :split_at], vv[:, :split_at], initial_state=st,
                                              output_final_state=True, backend=BE)
            o2, (m, a, S) = flashts.latte_attention(qq[:, split_at:], kk[:, split_at:], vv[:, split_at:],
                                                    initial_state=st1, output_final_state=True, backend=BE)
            o = torch.cat([o1, o2], dim=1)
        loss = (o.double() * go.to(DEV)).sum() + (a.double() * ga.to(DEV)).sum() + (S.double() * gS.to(DEV)).sum()
        return (o, m, a, S), torch.autograd.grad(loss, leaves)

    (outs1, grads1), (outs2, grads2) = run(None), run(split)
    for name, a, b in zip(["o", "m", "alpha", "S"], outs2, outs1):
        close(a, b, f"split output {name}")
    for name, a, b in zip(["q", "k", "v", "alpha0", "S0"], grads2, grads1):
        close(a, b, f"split gradient of {name}")


@pytest.mark.parametrize("state", [None, "finite"])
def test_latte_cu_seqlens_causal_equals_loop(state):
    H, L, Dv = 2, 4, 7
    _packed_vs_loop(LATTE, lambda *a, **kw: flashts.latte_attention(*a, **kw, backend=BE), lambda N: (N, H, L),
                    lambda T: latte_inputs(1, T, H, L, Dv), state, Dv)


def test_latte_cu_seqlens_bidirectional_equals_loop():
    cu = _cu(LENS)
    T, H, L, Dv = sum(LENS), 2, 5, 3
    q, k, v = latte_inputs(1, T, H, L, Dv)
    go = torch.randn(1, T, H, Dv, dtype=F64, device=DEV)
    L1 = [x.to(DEV, F32).requires_grad_() for x in (q, k, v)]
    o_p = flashts.latte_attention(*L1, causal=False, cu_seqlens=cu, backend=BE)
    g_p = torch.autograd.grad((o_p.double() * go).sum(), L1)
    L2 = [x.to(DEV, F32).requires_grad_() for x in (q, k, v)]
    o_l = torch.cat([flashts.latte_attention(*(x[:, int(cu[n]):int(cu[n + 1])] for x in L2), causal=False,
                                             backend=BE)
                     for n in range(len(LENS)) if cu[n + 1] > cu[n]], dim=1)
    g_l = torch.autograd.grad((o_l.double() * go).sum(), L2)
    close(o_p, o_l, "packed output")
    for name, a, b in zip("qkv", g_p, g_l):
        close(a, b, f"packed gradient of {name}")


@pytest.mark.parametrize("causal", [True, False])
def test_latte_cu_seqlens_reference(causal):
    lens = [5, 17, 1, 20] if causal else LENS
    cu = _cu(lens).cpu()
    N, T, H, L, Dv = len(lens), sum(lens), 2, 4, 7
    q, k, v = latte_inputs(1, T, H, L, Dv)
    kw = dict(initial_state=make_state("finite", (N, H, L), Dv), output_final_state=True) if causal else {}
    check_against_reference(LATTE, BE, (q, k, v), dict(kw, causal=causal, cu_seqlens=cu), dtype=F32, **SKIP_MAX)


def test_latte_strided_inputs_and_fresh_outputs():
    B, T, H, L, Dv = 2, 20, 2, 4, 3
    q = torch.randn(B, H, T, L, device=DEV).transpose(1, 2)
    k = torch.randn(B, T, L, H, device=DEV).transpose(2, 3)                  # last dim stride H (copied)
    v = torch.randn(B, T, H, 2 * Dv, device=DEV)[..., :Dv]                  # time/head strides of a wider tensor
    st = tuple(x.to(DEV, F32) for x in make_state("finite", (B, H, L), Dv))
    o, (m, a, S) = flashts.latte_attention(q, k, v, initial_state=st, output_final_state=True, backend=BE)
    o_ref, (m_r, a_r, S_r) = flashts.latte_attention(q.contiguous(), k.contiguous(), v.contiguous(),
                                                     initial_state=st, output_final_state=True, backend=BE)
    close(o, o_ref, "strided output", 1e-6)
    close(S, S_r, "strided state", 1e-6)
    ob = flashts.latte_attention(q, k, v, causal=False, backend=BE)
    close(ob, flashts.latte_attention(q.contiguous(), k.contiguous(), v.contiguous(), causal=False, backend=BE),
          "strided bidirectional output", 1e-6)
    assert o.dtype == ob.dtype == F32 and m.dtype == a.dtype == S.dtype == F32
    assert m.shape == a.shape == (B, H, L) and S.shape == (B, H, L, Dv)
    for x in (o, m, a, S, ob):
        assert all(x.untyped_storage().data_ptr() != y.untyped_storage().data_ptr() for y in (q, k, v) + st)


@pytest.mark.skipif(DEV.type == "cuda", reason="AAREN_LATENT_BLOCK=1 is not used on GPUs (Triton 3.6 miscompiles "
                    "it on sm_90); the default block of 16 is what every other Aaren test here runs")
@pytest.mark.parametrize("T", [17, 63])
def test_aaren_latent_block_1_layout(monkeypatch, T):
    """The unpadded layout (one latent, broadcast sums instead of tl.dot) stays exact where it compiles right."""
    monkeypatch.setattr(ks, "AAREN_LATENT_BLOCK", 1)
    q, k, v = aaren_inputs(2, T, 2, 5, 7, q_batched=True)
    check_against_reference(AAREN, BE, (q, k, v), dict(initial_state=make_state("finite", (2, 2), 7),
                                                        output_final_state=True), dtype=F32, **SKIP_MAX)


def test_aaren_gpu_launch_warns_once_until_verified(monkeypatch):
    """The Aaren Triton kernels' fix has not run on a GPU: a GPU launch says so, once per process."""
    from flashts.kernels import prefix_scan as kernels
    monkeypatch.setattr(kernels, "_AAREN_GPU_WARNED", [])
    with pytest.warns(RuntimeWarning, match="not been run on a GPU"):
        kernels._warn_unverified_aaren(torch.device("cuda"))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels._warn_unverified_aaren(torch.device("cuda"))  # second time: silent
        kernels._warn_unverified_aaren(torch.device("cpu"))   # the interpreter: silent


def test_latte_small_device_splits_the_scans(monkeypatch):
    """On a device of 8 SMs (the rule's view), the chunked backward's cotangent scan splits the chunk kernels'
    Dv tiles into sub-tiles (SUB = 2 here: tiles of 32 columns, scan programs of 16), with the dα part done by
    the first sub-tile only; every gradient, the state's included, still matches the reference."""
    from flashts.kernels import occupancy
    monkeypatch.setattr(occupancy, "INTERPRETER_SMS", 8)
    q, k, v = latte_inputs(1, 40, 2, 5, 40)
    check_against_reference(LATTE, BE, (q, k, v), dict(initial_state=make_state("finite", (1, 2, 5), 40),
                                                        output_final_state=True), dtype=F32, **SKIP_MAX)
