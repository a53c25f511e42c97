"""Linear attention (SPEC §1): every backend against ``flashts.reference`` and against itself.

Covers: causal / non-causal × feature maps × normalize × scale × eps; GQA; initial and final states (gradients
of the initial state, cotangents on the final state, partial cotangents); split/resume and token-by-token
decoding equal to one pass; ``cu_seqlens`` (with a zero-length sequence) equal to a loop over sequences;
inputs scaled by 1e4; odd head dims and T in {1, 2, 17, 63, 100, 257}; the chunk/block boundaries of the torch
backend (through small chunk sizes); fresh output tensors; the T = 32768 memory acceptance run.

Conditioning notes (why some inputs are chosen as they are):
* identity feature map + normalize: with signed q, k the denominator q̃·z crosses 0 and the output is
  arbitrarily ill-conditioned, so there those tests feed |q|, |k| (what a caller's own positive map gives).
* non-causal, normalize, T = 1: o = v·den/(den+eps) hardly depends on q (dq ∝ eps, the difference of two
  O(1) terms), so a relative comparison of dq needs eps of order 1 there.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import flashts
from flashts.torch_ops import linear as torch_linear
from helpers import backends_for, check_against_reference, device_for, rel_err

OP = "linear_attention"
BACKENDS = backends_for(OP, interpreted=False)
F64, F32 = torch.float64, torch.float32
DTYPES = [F64, F32]
# self-consistency tolerances (same backend, different chunking of the same computation)
SELF_TOL = {F64: 1e-11, F32: 2e-5}

# torch backend chunking: (CHUNK_SIZE, BLOCK_ELEMENTS). The default; 1 chunk of 4 per block (many block
# boundaries); chunks of 5 with a few per block (chunk boundaries inside and across blocks, partial chunks).
CHUNKINGS = {"default": (torch_linear.CHUNK_SIZE, torch_linear.BLOCK_ELEMENTS), "c4b1": (4, 1), "c5b3": (5, 12000)}


def set_chunking(monkeypatch, name):
    chunk, block = CHUNKINGS[name]
    monkeypatch.setattr(torch_linear, "CHUNK_SIZE", chunk)
    monkeypatch.setattr(torch_linear, "BLOCK_ELEMENTS", block)


@pytest.fixture(params=list(CHUNKINGS))
def chunking(request, monkeypatch):
    set_chunking(monkeypatch, request.param)
    return request.param


# (causal, chunking): the non-causal path has no chunks, one chunking suffices there
CAUSAL_CHUNKINGS = [(True, name) for name in CHUNKINGS] + [(False, "default")]


def inputs(B, T, H, D, Dv, Hk=None, *, positive=False, scale=1.0):
    Hk = H if Hk is None else Hk
    q, k, v = torch.randn(B, T, H, D), torch.randn(B, T, Hk, D), torch.randn(B, T, Hk, Dv)
    if positive:
        q, k = q.abs(), k.abs()
    return q * scale, k * scale, v


def state(N, H, D, Dv):
    """A random initial state; z > 0 as a sum of positive features would be."""
    return torch.randn(N, H, D, Dv), torch.rand(N, H, D) + 0.5


def state_dt(dtype):
    return F64 if dtype == F64 else F32


def leaf(x, dtype, device):
    return x.detach().to(device=device, dtype=dtype).clone().requires_grad_(True)


def grads_of(outputs, cotangents, leaves):
    loss = sum((o.double() * g).sum() for o, g in zip(outputs, cotangents))
    return torch.autograd.grad(loss, leaves, allow_unused=True)


def assert_close(x, ref, dtype, what):
    assert x.shape == ref.shape, f"{what}: shape {tuple(x.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(x).all(), f"{what}: non-finite values"
    e = rel_err(x, ref)
    assert e <= SELF_TOL[dtype], f"{what}: relative error {e:.3e} > {SELF_TOL[dtype]:.0e}"


# --------------------------------------------------------------------------- options against the reference


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("feature_map", ["elu", "relu", "identity"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("scale", [None, 0.7])
def test_options(backend, dtype, causal, feature_map, normalize, scale):
    """Every option combination, GQA H=4/Hk=2, odd dims, final state (and initial state when causal)."""
    B, T, H, Hk, D, Dv = 2, 19, 4, 2, 5, 7
    q, k, v = inputs(B, T, H, D, Dv, Hk, positive=feature_map == "identity" and normalize)
    kw = dict(causal=causal, feature_map=feature_map, normalize=normalize, scale=scale, output_final_state=True)
    if causal:
        kw["initial_state"] = state(B, H, D, Dv)
    check_against_reference(OP, backend, (q, k, v), kw, dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("eps", [0.0, 1e-6, 0.5])
def test_eps(backend, dtype, causal, eps):
    q, k, v = inputs(2, 23, 2, 6, 3)
    check_against_reference(OP, backend, (q, k, v), dict(causal=causal, eps=eps), dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_eps_changes_the_result(backend):
    """eps really enters the denominator (a backend ignoring it would pass test_eps only with eps=0)."""
    dev = device_for(backend)
    q, k, v = (x.to(dev) for x in inputs(1, 9, 2, 4, 3))
    a = flashts.linear_attention(q, k, v, eps=0.0, backend=backend)
    b = flashts.linear_attention(q, k, v, eps=10.0, backend=backend)
    assert rel_err(a, b) > 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal,chunking,D,Dv", [(c, ch, 5, 7) for c, ch in CAUSAL_CHUNKINGS]
                         + [(True, "default", 16, 16), (False, "default", 16, 16)])
@pytest.mark.parametrize("T", [1, 2, 17, 63, 100, 257])
def test_lengths(backend, dtype, causal, chunking, D, Dv, T, monkeypatch):
    set_chunking(monkeypatch, chunking)
    q, k, v = inputs(2, T, 2, D, Dv)
    kw = dict(causal=causal, output_final_state=True)
    if causal:
        kw["initial_state"] = state(2, 2, D, Dv)
    elif T == 1:
        kw["eps"] = 0.5  # see the module docstring
    check_against_reference(OP, backend, (q, k, v), kw, dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [True, False])
def test_half_precision(backend, dtype, causal):
    q, k, v = inputs(1, 40, 2, 8, 8)
    kw = dict(causal=causal, output_final_state=True)
    if causal:
        kw["initial_state"] = state(1, 2, 8, 8)
    check_against_reference(OP, backend, (q, k, v), kw, dtype=dtype)


# --------------------------------------------------------------------------- GQA


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("Hk", [4, 2, 1])
def test_gqa(backend, dtype, causal, Hk):
    B, T, H, D, Dv = 2, 33, 4, 5, 6
    q, k, v = inputs(B, T, H, D, Dv, Hk)
    kw = dict(causal=causal, output_final_state=True)
    if causal:
        kw["initial_state"] = state(B, H, D, Dv)
    check_against_reference(OP, backend, (q, k, v), kw, dtype=dtype)

    # equal to the same call with k, v repeated per query head; dk, dv are the group sums
    dev = device_for(backend)
    G = H // Hk
    ql, kl, vl = (leaf(x, dtype, dev) for x in (q, k, v))
    ql2, kr, vr = (leaf(x, dtype, dev) for x in (q, k.repeat_interleave(G, 2), v.repeat_interleave(G, 2)))
    st = tuple(s.to(dev, state_dt(dtype)) for s in kw["initial_state"]) if causal else None
    kw2 = dict(kw, initial_state=st)
    o1, (S1, z1) = flashts.linear_attention(ql, kl, vl, **kw2, backend=backend)
    o2, (S2, z2) = flashts.linear_attention(ql2, kr, vr, **kw2, backend=backend)
    for a, b, n in ((o1, o2, "o"), (S1, S2, "S_T"), (z1, z2, "z_T")):
        assert_close(a, b, dtype, n)
    cot = [torch.randn(x.shape, dtype=F64, device=dev) for x in (o1, S1, z1)]
    g1 = grads_of((o1, S1, z1), cot, (ql, kl, vl))
    g2 = grads_of((o2, S2, z2), cot, (ql2, kr, vr))
    assert_close(g1[0], g2[0], dtype, "dq")
    assert_close(g1[1], g2[1].unflatten(2, (Hk, G)).sum(3), dtype, "dk")
    assert_close(g1[2], g2[2].unflatten(2, (Hk, G)).sum(3), dtype, "dv")


# --------------------------------------------------------------------------- states


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cotangents", ["all", "no_o", "no_S", "no_z", "only_o"])
def test_state_cotangents(backend, dtype, cotangents):
    """Gradients of the initial state, with cotangents on any subset of (o, S_T, z_T)."""
    skip = {"all": (), "no_o": ("[0]",), "no_S": ("[1][0]",), "no_z": ("[1][1]",),
            "only_o": ("[1][0]", "[1][1]")}[cotangents]
    B, T, H, Hk, D, Dv = 2, 21, 4, 2, 5, 3
    q, k, v = inputs(B, T, H, D, Dv, Hk)
    kw = dict(initial_state=state(B, H, D, Dv), output_final_state=True)
    check_against_reference(OP, backend, (q, k, v), kw, dtype=dtype, skip_grad_outputs=skip)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalize", [True, False])
def test_state_only_is_returned_on_request(backend, normalize):
    dev = device_for(backend)
    q, k, v = (x.to(dev) for x in inputs(1, 8, 2, 4, 3))
    o = flashts.linear_attention(q, k, v, normalize=normalize, backend=backend)
    assert isinstance(o, torch.Tensor) and o.shape == (1, 8, 2, 3) and o.dtype == q.dtype
    o2, (S, z) = flashts.linear_attention(q, k, v, normalize=normalize, output_final_state=True, backend=backend)
    assert torch.equal(o, o2)
    assert S.shape == (1, 2, 4, 3) and z.shape == (1, 2, 4) and S.dtype == z.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("splits", [(7, 30), (1, 2, 40)], ids=lambda s: "-".join(map(str, s)))
def test_split_resume(backend, dtype, normalize, splits, chunking):
    """Running the pieces [0:a], [a:b], ... with the state carried equals one pass, outputs and gradients."""
    B, T, H, Hk, D, Dv = 2, 45, 4, 2, 5, 7
    dev = device_for(backend)
    q, k, v = inputs(B, T, H, D, Dv, Hk)
    S0, z0 = state(B, H, D, Dv)
    leaves1 = [leaf(x, dtype, dev) for x in (q, k, v)] + [leaf(x, state_dt(dtype), dev) for x in (S0, z0)]
    leaves2 = [leaf(x, dtype, dev) for x in (q, k, v)] + [leaf(x, state_dt(dtype), dev) for x in (S0, z0)]
    kw = dict(normalize=normalize, output_final_state=True, backend=backend)
    ql, kl, vl, Sl, zl = leaves1
    o1, (S1, z1) = flashts.linear_attention(ql, kl, vl, initial_state=(Sl, zl), **kw)
    ql, kl, vl, Sl, zl = leaves2
    st, outs = (Sl, zl), []
    bounds = (0,) + splits + (T,)
    for a, b in zip(bounds[:-1], bounds[1:]):
        o, st = flashts.linear_attention(ql[:, a:b], kl[:, a:b], vl[:, a:b], initial_state=st, **kw)
        outs.append(o)
    o2, (S2, z2) = torch.cat(outs, 1), st
    for a, b, n in ((o2, o1, "o"), (S2, S1, "S_T"), (z2, z1, "z_T")):
        assert_close(a, b, dtype, n)
    cot = [torch.randn(x.shape, dtype=F64, device=dev) for x in (o1, S1, z1)]
    for g2, g1, n in zip(grads_of((o2, S2, z2), cot, leaves2), grads_of((o1, S1, z1), cot, leaves1),
                         ("dq", "dk", "dv", "dS0", "dz0")):
        assert_close(g2, g1, dtype, n)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("feature_map", ["elu", "relu"])
def test_decode_token_by_token(backend, dtype, feature_map):
    """T == 1 decoding steps from a state reproduce the one-pass outputs, final state and gradients."""
    B, T, H, Hk, D, Dv = 2, 11, 4, 1, 5, 7
    dev = device_for(backend)
    q, k, v = inputs(B, T, H, D, Dv, Hk)
    S0, z0 = state(B, H, D, Dv)
    kw = dict(feature_map=feature_map, output_final_state=True, backend=backend)
    leaves1 = [leaf(x, dtype, dev) for x in (q, k, v)] + [leaf(x, state_dt(dtype), dev) for x in (S0, z0)]
    leaves2 = [leaf(x, dtype, dev) for x in (q, k, v)] + [leaf(x, state_dt(dtype), dev) for x in (S0, z0)]
    o1, (S1, z1) = flashts.linear_attention(*leaves1[:3], initial_state=tuple(leaves1[3:]), **kw)
    st, outs = tuple(leaves2[3:]), []
    for t in range(T):
        o, st = flashts.linear_attention(*(x[:, t:t + 1] for x in leaves2[:3]), initial_state=st, **kw)
        outs.append(o)
    o2, (S2, z2) = torch.cat(outs, 1), st
    for a, b, n in ((o2, o1, "o"), (S2, S1, "S_T"), (z2, z1, "z_T")):
        assert_close(a, b, dtype, n)
    cot = [torch.randn(x.shape, dtype=F64, device=dev) for x in (o1, S1, z1)]
    for g2, g1, n in zip(grads_of((o2, S2, z2), cot, leaves2), grads_of((o1, S1, z1), cot, leaves1),
                         ("dq", "dk", "dv", "dS0", "dz0")):
        assert_close(g2, g1, dtype, n)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncausal_final_state_is_the_sum(backend):
    dev = device_for(backend)
    dt = F64 if backend == "torch" else F32  # float64 exists only on the torch backend
    q, k, v = (x.to(dev, dt) for x in inputs(2, 13, 2, 4, 3))
    _, (S, z) = flashts.linear_attention(q, k, v, causal=False, output_final_state=True, backend=backend)
    phi_k = torch.nn.functional.elu(k.double()) + 1
    assert_close(S, torch.einsum("bthd,bthe->bhde", phi_k, v.double()), dt, "S_T")
    assert_close(z, phi_k.sum(1), dt, "z_T")


# --------------------------------------------------------------------------- packed sequences

CU = [0, 5, 5, 22, 23, 40]  # includes a zero-length sequence and a length-1 one


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal,with_state,chunking", [(True, True, "default"), (True, True, "c4b1"),
                                                         (True, True, "c5b3"), (True, False, "c5b3"),
                                                         (False, False, "default")])
def test_cu_seqlens_reference(backend, dtype, causal, with_state, chunking, monkeypatch):
    set_chunking(monkeypatch, chunking)
    H, Hk, D, Dv = 4, 2, 5, 7
    N, T = len(CU) - 1, CU[-1]
    q, k, v = inputs(1, T, H, D, Dv, Hk)
    kw = dict(causal=causal, output_final_state=True,
              cu_seqlens=torch.tensor(CU, dtype=torch.int32, device=device_for(backend)))
    if with_state:
        kw["initial_state"] = state(N, H, D, Dv)
    check_against_reference(OP, backend, (q, k, v), kw, dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
def test_cu_seqlens_equals_loop(backend, dtype, causal):
    """Packed call == calling the op once per sequence (outputs, final states, all gradients)."""
    H, Hk, D, Dv = 4, 2, 5, 7
    N, T = len(CU) - 1, CU[-1]
    dev = device_for(backend)
    q, k, v = inputs(1, T, H, D, Dv, Hk)
    S0, z0 = state(N, H, D, Dv)

    def make_leaves():
        states = [leaf(x, state_dt(dtype), dev) for x in (S0, z0)] if causal else []
        return [leaf(x, dtype, dev) for x in (q, k, v)] + states

    leaves1, leaves2 = make_leaves(), make_leaves()
    kw = dict(causal=causal, output_final_state=True, backend=backend)
    cu = torch.tensor(CU, dtype=torch.int32, device=dev)
    o1, (S1, z1) = flashts.linear_attention(*leaves1[:3], initial_state=tuple(leaves1[3:]) or None,
                                            cu_seqlens=cu, **kw)
    outs, Ss, zs = [], [], []
    for n, (a, b) in enumerate(zip(CU[:-1], CU[1:])):
        st = (leaves2[3][n:n + 1], leaves2[4][n:n + 1]) if causal else None
        if a == b:  # an empty sequence leaves its state as it was
            S_n = st[0] if causal else torch.zeros(1, H, D, Dv, dtype=state_dt(dtype), device=dev)
            z_n = st[1] if causal else torch.zeros(1, H, D, dtype=state_dt(dtype), device=dev)
        else:
            o, (S_n, z_n) = flashts.linear_attention(*(x[:, a:b] for x in leaves2[:3]), initial_state=st, **kw)
            outs.append(o)
        Ss.append(S_n)
        zs.append(z_n)
    o2, S2, z2 = torch.cat(outs, 1), torch.cat(Ss), torch.cat(zs)
    for a, b, n in ((o1, o2, "o"), (S1, S2, "S_T"), (z1, z2, "z_T")):
        assert_close(a, b, dtype, n)
    empty = CU.index(5)  # sequence 1 is empty: its final state is exactly its initial state (or zero)
    assert torch.equal(S1[empty], leaves1[3][empty] if causal else torch.zeros_like(S1[empty]))
    cot = [torch.randn(x.shape, dtype=F64, device=dev) for x in (o1, S1, z1)]
    g1 = grads_of((o1, S1, z1), cot, leaves1)
    g2 = grads_of((o2, S2, z2), cot, leaves2)
    for a, b, n in zip(g1, g2, ("dq", "dk", "dv", "dS0", "dz0")):
        assert_close(a, b, dtype, n)
    if causal:  # the empty sequence passes the final-state cotangent straight to its initial state
        assert_close(g1[3][empty], cot[1][empty].to(g1[3].dtype), dtype, "dS0 of the empty sequence")


# --------------------------------------------------------------------------- large inputs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("feature_map", ["elu", "relu"])
@pytest.mark.parametrize("normalize", [True, False])
def test_large_inputs(backend, dtype, causal, feature_map, normalize):
    """q, k ~ ±1e4: elu+1 is e^(-1e4) = 0 or x + 1 ~ 1e4 (no exp of a huge positive, not even masked out),
    finite and equal to the reference (check_against_reference asserts finiteness of outputs and gradients)."""
    B, T, H, D, Dv = 1, 37, 2, 5, 4
    q, k, v = inputs(B, T, H, D, Dv, scale=1e4)
    kw = dict(causal=causal, feature_map=feature_map, normalize=normalize, output_final_state=True)
    if causal:
        kw["initial_state"] = (torch.randn(B, H, D, Dv) * 1e4, torch.rand(B, H, D) * 1e4)
    check_against_reference(OP, backend, (q, k, v), kw, dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_inputs_forward_finite_float32(backend):
    dev = device_for(backend)
    q, k, v = (x.to(dev) for x in inputs(2, 300, 2, 16, 16, scale=1e4))
    q.requires_grad_(True)
    o, (S, z) = flashts.linear_attention(q, k, v, output_final_state=True, backend=backend)
    o.sum().backward()
    for x in (o, S, z, q.grad):
        assert torch.isfinite(x).all()
    # with normalisation the output is a convex combination of v rows (plus eps): bounded by max |v|
    assert o.abs().max() <= v.abs().max() * (1 + 1e-4)


# --------------------------------------------------------------------------- backend contract (torch)


def test_backend_returns_new_tensors():
    """Outputs and gradients never alias inputs, also where the math is an identity (empty sequence,
    identity feature map, H = Hk = 1)."""
    T, D, Dv = 3, 4, 4
    q, k, v = torch.randn(1, T, 1, D), torch.randn(1, T, 1, D), torch.randn(1, T, 1, Dv)
    S0, z0 = torch.randn(2, 1, D, Dv), torch.rand(2, 1, D)
    cu = torch.tensor([0, 0, T], dtype=torch.int32)
    o, S, z = torch_linear.linear_attention_fwd(q, k, v, S0, z0, cu, True, "identity", False, 1.0, 0.0)
    dS_T, dz_T = torch.randn_like(S0), torch.randn_like(z0)
    grads = torch_linear.linear_attention_bwd(torch.randn_like(o), dS_T, dz_T, q, k, v, o, S0, z0, cu, True,
                                              "identity", False, 1.0, 0.0)
    ins = [q, k, v, S0, z0, dS_T, dz_T, o]
    for out in (o, S, z) + tuple(grads):
        assert out is not None
        for x in ins:
            if out is not x:
                assert out.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    assert torch.equal(S[0], S0[0]) and torch.equal(grads[3][0], dS_T[0])
    assert [g.dtype for g in grads] == [q.dtype, k.dtype, v.dtype, S0.dtype, z0.dtype]


def test_backend_grad_dtypes_follow_inputs():
    """float16 inputs with float32 states: gradients in float16 (q, k, v) and float32 (states)."""
    q, k, v = (x.half() for x in inputs(1, 9, 2, 4, 3))
    S0, z0 = state(1, 2, 4, 3)
    o, S, z = torch_linear.linear_attention_fwd(q, k, v, S0, z0, None, True, "elu", True, 1.0, 1e-6)
    assert o.dtype == torch.float16 and S.dtype == z.dtype == torch.float32
    g = torch_linear.linear_attention_bwd(torch.randn_like(o), None, None, q, k, v, o, S0, z0, None, True, "elu",
                                          True, 1.0, 1e-6)
    assert [x.dtype for x in g] == [torch.float16] * 3 + [torch.float32] * 2
    assert [x.shape for x in g] == [q.shape, k.shape, v.shape, S0.shape, z0.shape]


MEMORY_SCRIPT = textwrap.dedent("""
    import ctypes, time, torch, flashts
    def hwm_mib():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    B, T, H, D, Dv = 1, 32768, 2, 16, 16
    q, k, v = (torch.randn(B, T, H, n, dtype=torch.float64, requires_grad=True) for n in (D, D, Dv))
    g = torch.randn(B, T, H, Dv, dtype=torch.float64)
    for causal in (True, False):
        w = flashts.linear_attention(q[:, :70], k[:, :70], v[:, :70], causal=causal, backend="torch")
        w.sum().backward()  # warm-up (thread pools, allocator), not measured
        q.grad = k.grad = v.grad = w = None
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so the previous run does not count
        with open("/proc/self/clear_refs", "w") as f:  # reset the peak-RSS mark to the current RSS
            f.write("5")
        base, t0 = hwm_mib(), time.perf_counter()
        o = flashts.linear_attention(q, k, v, causal=causal, backend="torch")
        (o * g).sum().backward()
        print(causal, hwm_mib() - base, time.perf_counter() - t0)
        q.grad = k.grad = v.grad = o = None
""")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc to read peak RSS")
def test_memory_acceptance_T32768():
    """float64, B=1, H=2, D=Dv=16, T=32768, forward+backward, causal and not: < 1 GiB extra peak RSS
    (VmHWM, reset before each run, in a fresh interpreter) and well under a minute."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                       os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split("\n")
    runs = [line.split() for line in lines if line.startswith(("True", "False"))]
    assert len(runs) == 2, res.stdout
    for causal, growth_mib, seconds in runs:
        assert float(growth_mib) < 1024, f"causal={causal}: peak RSS grew by {float(growth_mib):.0f} MiB"
        assert float(seconds) < 30, f"causal={causal}: took {float(seconds):.1f} s"


def test_chunkings_exercise_block_boundaries(monkeypatch):
    """The small chunkings used above really cut T = 100 into several blocks of several chunks (and the
    default into one block), so chunk and block boundaries are both tested."""
    B, H, L, D, E = 2, 2, 100, 5, 8
    set_chunking(monkeypatch, "c5b3")
    C, block = torch_linear._chunking(B, H, L, D, E)
    assert C == 5 and C < block < L
    set_chunking(monkeypatch, "c4b1")
    assert torch_linear._chunking(B, H, L, D, E) == (4, 4)
    set_chunking(monkeypatch, "default")
    assert torch_linear._chunking(B, H, L, D, E) == (64, 128)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_inputs(backend):
    """Non-contiguous q, k, v (transposed storage, a strided slice) give the contiguous result and grads."""
    dev = device_for(backend)
    B, T, H, D, Dv = 2, 30, 2, 5, 3
    bases = [torch.randn(B, H, T, D, device=dev), torch.randn(B, T, H, 2 * D, device=dev),
             torch.randn(T, B, H, Dv, device=dev)]
    strided = lambda q, k, v: (q.transpose(1, 2), k[..., ::2], v.transpose(0, 1))  # noqa: E731
    leaves1 = [x.clone().requires_grad_(True) for x in bases]
    leaves2 = [x.clone().requires_grad_(True) for x in bases]
    views = strided(*leaves1)
    assert not any(x.is_contiguous() for x in views)
    o1 = flashts.linear_attention(*views, backend=backend)
    o2 = flashts.linear_attention(*(x.contiguous() for x in strided(*leaves2)), backend=backend)
    assert_close(o1, o2, F32, "o")
    g = torch.randn(o1.shape, dtype=F64, device=dev)
    for a, b, n in zip(grads_of([o1], [g], leaves1), grads_of([o2], [g], leaves2), ("dq", "dk", "dv")):
        assert_close(a, b, F32, n)
