"""The torch backend's CPU-specific paths (issue 19): the work-efficient chunk-state scan, the dedicated T = 1
streaming step (through the ops and directly), its opt-in in-place state update, and the nn layers' step.

Every case compares against ``flashts.reference`` in float64 (outputs and gradients) or against the parallel
form of the same op, on fresh random inputs, including ±1e4 logits for the running-max updates.
"""
from __future__ import annotations

import pytest
import torch

import flashts
from flashts.torch_ops import prefix_scan as ps
from flashts.torch_ops import step as st

from helpers import check_against_reference, rel_err


# ------------------------------------------------------------------------------------------- chunk-state scan

def _sequential_scan(m, u, w):
    om, ou, ow = [m[:, 0]], [u[:, 0]], [w[:, 0]]
    for i in range(1, m.shape[1]):
        a = ps._combine(om[-1], ou[-1], ow[-1], m[:, i], u[:, i], w[:, i])
        om.append(a[0]), ou.append(a[1]), ow.append(a[2])
    return torch.stack(om, 1), torch.stack(ou, 1), torch.stack(ow, 1)


@pytest.mark.parametrize("n", [1, 7, 25, 101, 700])
def test_scan_states_matches_sequential(n):
    """The blocked two-level scan (one and two levels of recursion at n = 101, 700) == the plain loop, with
    ±1e4 maxima and an empty (−∞) first state: same values, never NaN."""
    G, L, Dv = 3, 4, 5
    m = torch.randn(G, n, L, dtype=torch.float64) * 1e4
    m[:, 0] = float("-inf")
    m[1, : n // 2] = float("-inf")           # a row whose first half is empty
    u = torch.rand(G, n, L, dtype=torch.float64) + 0.1
    u[:, 0] = 0
    w = torch.randn(G, n, L, Dv, dtype=torch.float64)
    w[:, 0] = 0
    u[1, : n // 2] = 0
    w[1, : n // 2] = 0
    got = ps._scan_states(m, u, w)
    ref = _sequential_scan(m, u, w)
    assert torch.equal(got[0], ref[0])
    for g, r in zip(got[1:], ref[1:]):
        assert not torch.isnan(g).any()
        assert rel_err(g, r) <= 1e-13


# ------------------------------------------------------------------------------------------- T = 1 via the ops

def _states(op, B, H, D, Dv, L, big):
    if op == "linear_attention":
        return (torch.randn(B, H, D, Dv, dtype=torch.float64), torch.rand(B, H, D, dtype=torch.float64) + 0.5)
    shape = (B, H) if op == "aaren_attention" else (B, H, L)
    m = torch.randn(*shape, dtype=torch.float64) * (1e4 if big else 1.0)
    return m, torch.rand(*shape, dtype=torch.float64) + 0.5, torch.randn(*shape, Dv, dtype=torch.float64)


CASES = [
    ("linear_attention", dict(feature_map="elu")),
    ("linear_attention", dict(feature_map="relu", normalize=False)),
    ("linear_attention", dict(feature_map="identity", gqa=True)),
    ("aaren_attention", dict(q_batched=False)),
    ("aaren_attention", dict(q_batched=True)),
    ("latte_attention", dict()),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("op,opts,state", [c + (s,) for c in CASES for s in ("none", "given", "big")
                                           if not (c[0] == "linear_attention" and s == "big")],  # no logits there
                         ids=lambda x: x if isinstance(x, str) else "-".join(map(str, x.values())))
def test_step_through_op_matches_reference(op, opts, state, dtype):
    """T = 1 (the dedicated step inside the torch backend) == the reference: output, final state, and every
    gradient (q, k, v and the state's sums; the max carries none)."""
    opts = dict(opts)
    B, H, D, Dv, L = 3, 4, 6, 5, 7
    big = state == "big"
    kw = {}
    if op == "linear_attention":
        Hk = 2 if opts.pop("gqa", False) else H
        args = (torch.randn(B, 1, H, D), torch.randn(B, 1, Hk, D), torch.randn(B, 1, Hk, Dv))
        kw.update(opts)
        skip_in, skip_out = (), ()
    elif op == "aaren_attention":
        q = torch.randn(B, H, D) if opts["q_batched"] else torch.randn(H, D)
        k = torch.randn(B, 1, H, D) * (1e4 if big else 1.0)
        args = (q, k, torch.randn(B, 1, H, Dv))
        skip_in, skip_out = ("initial_state[0]",), ("[1][0]",)
    else:
        args = (torch.randn(B, 1, H, L) * (1e4 if big else 1.0), torch.randn(B, 1, H, L) * (1e4 if big else 1.0),
                torch.randn(B, 1, H, Dv))
        skip_in, skip_out = ("initial_state[0]",), ("[1][0]",)
    if state != "none":
        kw["initial_state"] = _states(op, B, H, D, Dv, L, big)
    else:
        skip_in = ()
    kw["output_final_state"] = True
    if state == "none" and kw.get("normalize", True):
        skip_in = ("[0]",)   # o_1 = v_1 (up to eps): dq is 0 up to rounding, its relative error is noise
    check_against_reference(op, "torch", args, kw, dtype=dtype, skip_grad_inputs=skip_in,
                            skip_grad_outputs=skip_out)


# ------------------------------------------------------------------------------------------- the step functions

def _step_inputs(op, B, H, D, Dv, L):
    if op == "linear":
        return torch.randn(B, H, D), torch.randn(B, H // 2, D), torch.randn(B, H // 2, Dv)
    if op == "aaren":
        return torch.randn(H, D), torch.randn(B, H, D) * 30, torch.randn(B, H, Dv)
    return torch.randn(B, H, L) * 30, torch.randn(B, H, L) * 30, torch.randn(B, H, Dv)


STEP = {"linear": st.linear_step, "aaren": st.aaren_step, "latte": st.latte_step}
OP = {"linear": flashts.linear_attention, "aaren": flashts.aaren_attention, "latte": flashts.latte_attention}


@pytest.mark.parametrize("op", ["linear", "aaren", "latte"])
def test_step_functions_chain_equals_parallel_and_inplace(op):
    """Chained step functions (out of place and in place, float64) == the parallel op over the sequence; the in-place
    variant returns the caller's state tensors, updated."""
    B, H, D, Dv, L, T = 2, 4, 5, 3, 6, 13
    seq = [_step_inputs(op, B, H, D, Dv, L) for _ in range(T)]
    seq = [tuple(x.double() for x in s) for s in seq]
    if op == "aaren":
        q = seq[0][0]
        full = OP[op](q, torch.stack([s[1] for s in seq], 1), torch.stack([s[2] for s in seq], 1),
                      output_final_state=True, backend="torch")
    else:
        full = OP[op](*(torch.stack([s[i] for s in seq], 1) for i in range(3)), output_final_state=True,
                      backend="torch")
    state = state_ip = None
    outs, outs_ip = [], []
    for t, (a, b, c) in enumerate(seq):
        if op == "aaren":
            a = seq[0][0]
        o, state = STEP[op](a, b, c, state)
        outs.append(o)
        if state_ip is None:
            o2, state_ip = STEP[op](a, b, c, None)
        else:
            before = [x.data_ptr() for x in state_ip]
            o2, new = STEP[op](a, b, c, state_ip, inplace=True)
            assert [x.data_ptr() for x in new] == before and all(x is y for x, y in zip(new, state_ip))
        outs_ip.append(o2)
    assert rel_err(torch.stack(outs, 1), full[0]) <= 1e-12
    assert rel_err(torch.stack(outs_ip, 1), full[0]) <= 1e-12
    for a, b, c in zip(state, state_ip, full[1]):
        assert rel_err(a, c) <= 1e-12 and rel_err(b, c) <= 1e-12


@pytest.mark.parametrize("op", ["linear", "aaren", "latte"])
def test_step_inplace_refuses_under_autograd(op):
    B, H, D, Dv, L = 2, 4, 5, 3, 6
    a, b, c = _step_inputs(op, B, H, D, Dv, L)
    _, state = STEP[op](a, b, c, None)
    k = b.clone().requires_grad_()
    with pytest.raises(ValueError, match="inplace"):
        STEP[op](a, k, c, state, inplace=True)
    with pytest.raises(ValueError, match="state"):
        STEP[op](a, b, c, None, inplace=True)
    with torch.no_grad():
        STEP[op](a, k, c, state, inplace=True)


# ------------------------------------------------------------------------------------------- nn layers

LAYERS = [
    lambda: flashts.nn.LinearAttention(24, 4, n_kv_heads=2),
    lambda: flashts.nn.Aaren(24, 4),
    lambda: flashts.nn.Latte(24, 4, n_latents=5),
    lambda: flashts.nn.SlidingWindowAttention(24, 4, window=(3, 0), n_kv_heads=2),
]


@pytest.mark.parametrize("make", LAYERS, ids=["linear", "aaren", "latte", "window"])
def test_layer_step_inplace_equals_forward(make):
    """layer.step token by token (out of place with gradients, and in place under no_grad) == layer.forward."""
    torch.manual_seed(0)
    layer = make().double()
    x = torch.randn(2, 9, 24, dtype=torch.float64)
    y = layer(x)
    state, outs = None, []
    for t in range(x.shape[1]):
        y_t, state = layer.step(x[:, t], state)
        outs.append(y_t)
    assert rel_err(torch.stack(outs, 1), y) <= 1e-12
    outs[-1].sum().backward()          # the direct step is differentiable
    assert all(p.grad is not None for p in layer.parameters() if p.requires_grad)
    with torch.no_grad():
        y_t, state = layer.step(x[:, 0])
        outs = [y_t]
        for t in range(1, x.shape[1]):
            y_t, new = layer.step(x[:, t], state, inplace=True)
            ks = ("k", "v") if isinstance(state, dict) else range(len(state))
            assert all(new[i] is state[i] for i in ks)
            state = new
            outs.append(y_t)
    assert rel_err(torch.stack(outs, 1), y.detach()) <= 1e-12
    with pytest.raises(ValueError, match="inplace"):
        layer.step(x[:, 0], state, inplace=True)          # grad mode on, parameters require grad


# ------------------------------------------------------------------------------------------- both causal paths

@pytest.mark.parametrize("path", ["fast-small-chunks", "small-blocks", "exact-tiles"])
@pytest.mark.parametrize("op", ["aaren_attention", "latte_attention"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_causal_paths_match_reference(monkeypatch, path, op, dtype):
    """The factorised fast path with tiny chunks (many chunks: the blocked scan forward and the linear suffix scan
    backward both recurse) and the exact running-max tile path forced on ordinary inputs: outputs, final state and
    gradients including the initial state's, against the reference."""
    if path == "fast-small-chunks":
        monkeypatch.setattr(ps, "FAST_CHUNK", 3)
    elif path == "small-blocks":   # Aaren: blocks of 3 chunks of 5 steps (T = 203: a last block of 1.6 chunks)
        monkeypatch.setattr(ps, "FAST_CHUNK", 5)
        monkeypatch.setattr(ps, "AAREN_CHUNK", 5)
        monkeypatch.setattr(ps, "AAREN_BLOCK_ELEMENTS", 2 * 3 * 6 * 5 * 3)
        monkeypatch.setattr(ps, "LATTE_BLOCK_CHUNKS", 3)   # Latte: segments of 15 steps
    else:
        monkeypatch.setattr(ps, "FAST", False)
        monkeypatch.setattr(ps, "CHUNK", 4)
    B, T, H, D, Dv, L = 2, 203, 3, 5, 6, 4
    if op == "aaren_attention":
        args = (torch.randn(H, D), torch.randn(B, T, H, D) * 2, torch.randn(B, T, H, Dv))
    else:
        args = (torch.randn(B, T, H, L), torch.randn(B, T, H, L) * 2, torch.randn(B, T, H, Dv))
    kw = dict(initial_state=_states(op, B, H, D, Dv, L, False), output_final_state=True)
    check_against_reference(op, "torch", args, kw, dtype=dtype, skip_grad_inputs=("initial_state[0]",),
                            skip_grad_outputs=("[1][0]",))


def test_fast_path_declines_wide_spreads(monkeypatch):
    """A chunk whose logits spread beyond FAST_SPREAD goes to the exact path (and still matches the reference)."""
    B, T, H, L, Dv = 1, 150, 2, 3, 4
    k = torch.randn(B, T, H, L, dtype=torch.float64)
    k[:, 70] += 500.0
    a = k[0].transpose(0, 1).reshape(H, T, L)
    z = torch.zeros(H, L, dtype=torch.float64)
    assert ps._Fast.make(a, torch.ones_like(a), torch.randn(H, T, Dv, dtype=torch.float64), z - float("inf"), z,
                         torch.zeros(H, L, Dv, dtype=torch.float64)) is None
    check_against_reference("latte_attention", "torch", (torch.randn(B, T, H, L), k, torch.randn(B, T, H, Dv)),
                            {}, dtype=torch.float64)


# ------------------------------------------------------------------------------------------- sliding-window band

@pytest.mark.parametrize("window,bq", [((13, 0), 8), ((5, 9), 4), ((0, 0), 16), ((60, 3), 8)])
def test_sliding_window_band_forward(monkeypatch, window, bq):
    """The one-matmul band forward (narrow window, query blocks of bq rows, one key block each; groups of a few
    blocks per matmul) on odd T with GQA, windows wider than the sequence and with no right part: outputs and
    gradients against the reference, and the band really taken."""
    from flashts.torch_ops import sliding_window as sw
    monkeypatch.setattr(sw, "NARROW_BLOCK_Q", bq)
    monkeypatch.setattr(sw, "BAND_GROUP_ELEMENTS", 2 * 2 * bq * 2 * (bq + sum(window)) * 3)   # 3 blocks a group
    calls = []
    band = sw._band_forward
    monkeypatch.setattr(sw, "_band_forward", lambda *a: calls.append(1) or band(*a))
    B, T, H, Hk, D, Dv = 2, 53, 4, 2, 8, 6
    args = (torch.randn(B, T, H, D), torch.randn(B, T, Hk, D), torch.randn(B, T, Hk, Dv))
    check_against_reference("sliding_window_attention", "torch", args, dict(window=window), dtype=torch.float64)
    assert calls


@pytest.mark.parametrize("T", [17, 100])
def test_aaren_blocked_strided_inputs_and_cotangent(T):
    """The blocked Aaren path with non-contiguous k, v and a non-contiguous output cotangent (heads-first tensors
    transposed, as TSLib layers pass them): equal to the reference in float64, outputs and gradients."""
    from flashts import reference as ref
    B, H, D, Dv = 2, 3, 5, 7
    F64 = torch.float64
    q = torch.randn(H, D, dtype=F64, requires_grad=True)
    k = torch.randn(B, H, T, D, dtype=F64).transpose(1, 2).requires_grad_()
    v = torch.randn(B, H, T, Dv, dtype=F64).transpose(1, 2).requires_grad_()
    do = torch.randn(B, H, T, Dv, dtype=F64).transpose(1, 2)
    out = flashts.aaren_attention(q, k, v, backend="torch")
    want = ref.aaren_attention(q, k, v)
    assert rel_err(out, want) < 1e-12
    got = torch.autograd.grad(out, (q, k, v), do)
    exp = torch.autograd.grad(want, (q, k, v), do)
    for a, b in zip(got, exp):
        assert rel_err(a, b) < 1e-12
