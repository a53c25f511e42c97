"""Latte Macchiato (SPEC §7): every backend against ``flashts.reference`` and against itself.

Covers: outputs and the gradients of q, k, v, mix, latent_k and of the initial state (α, S and the window
cache k_win, v_win; the max m carries none) against the float64 reference, float64/float32 on the torch
backend and float32/float16/bfloat16 on both backends (Triton under the interpreter: a few small cases);
T in {1, 17, 63, 100}; windows left ∈ {0, 1, 5, 16, −1}; window caches partly filled (n_win < left), empty
and full; final-state cotangents; states split and resumed (outputs, states and chained gradients);
T = 1 decode steps == the parallel pass; ``cu_seqlens`` (with a zero-length sequence) == a loop over sequences;
±1e4 logits stay finite; bad input raises; torch.compile (inductor, forward + backward).
The torch backend's blocks are shrunk so that T ≥ 17 crosses block and chunk boundaries.
"""
from __future__ import annotations

import pytest
import torch

import flashts
from flashts.torch_ops import prefix_scan as torch_prefix_scan
from flashts.torch_ops import sliding_window as torch_sliding_window
from tests.helpers import backends_for, check_against_reference, device_for, rel_err

OP = "latte_macchiato_attention"
ALL_BACKENDS = backends_for(OP)  # torch, and triton under the interpreter (kept to a few small cases)


def interpreted(backend):
    """Triton on the CPU interpreter: the same cases with fewer heads / rows (CI time)."""
    return backend == "triton" and device_for(backend).type == "cpu"
F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
# the max m (state index 3) carries no gradient; final state output index 3 neither
SKIP_MAX = dict(skip_grad_inputs=("initial_state[3]",), skip_grad_outputs=("[1][3]",))
SELF_TOL = {F64: 1e-11, F32: 2e-5}


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch, request):
    if "docstring" in request.node.name:
        return  # the examples run as written, with the default blocks
    monkeypatch.setattr(torch_prefix_scan, "CHUNK", 8)
    monkeypatch.setattr(torch_prefix_scan, "TILE_ELEMENTS", 3000)
    monkeypatch.setattr(torch_sliding_window, "BLOCK_Q", 8)
    monkeypatch.setattr(torch_sliding_window, "BLOCK_K", 8)


def make_inputs(B, T, H=2, D=5, Dv=3, L=4):
    r = lambda *s: torch.randn(*s, dtype=F64)  # noqa: E731
    return r(B, T, H, D), r(B, T, H, D), r(B, T, H, Dv), r(B, T, H, L + 1), r(B, T, H, L)


def make_state(N, left, H=2, D=5, Dv=3, L=4, fill="random"):
    """A window cache with ``fill``: "random" (0..left valid keys), "full", "empty"; a finite Latte state."""
    if fill == "full":
        n = torch.full((N,), left, dtype=torch.int32)
    elif fill == "empty":
        n = torch.zeros(N, dtype=torch.int32)
    else:
        n = torch.randint(0, left + 1, (N,), dtype=torch.int32)
    kw = torch.randn(N, left, H, D, dtype=F64)
    vw = torch.randn(N, left, H, Dv, dtype=F64)
    return (kw, vw, n, 2 * torch.randn(N, H, L, dtype=F64), torch.rand(N, H, L, dtype=F64) + 0.5,
            torch.randn(N, H, L, Dv, dtype=F64))


def call(backend, *args, **kw):
    return flashts.latte_macchiato_attention(*args, backend=backend, **kw)


# ------------------------------------------------------------------------------------------ against the reference

def check_degenerate_T1(backend, dtype, ins, kw):
    """T = 1 without a state: A = Y = v whatever q, k, mix, latent_k are, so their gradients are 0 in exact
    arithmetic and a relative comparison only compares rounding noise: compare v's gradient and the output with
    the reference, and bound the others absolutely."""
    check_against_reference(OP, backend, ins, kw, dtype=dtype, skip_grad_inputs=("[0]", "[1]", "[3]", "[4]"))
    dev = device_for(backend)
    xs = [x.to(dev, dtype).requires_grad_() for x in ins]
    o = call(backend, *xs, **kw)
    g = torch.randn_like(o)
    grads = torch.autograd.grad(o, [xs[i] for i in (0, 1, 3, 4)], g)
    bound = 10 * torch.finfo(dtype).eps * g.double().norm() * ins[2].norm()
    assert all(x.double().norm() <= bound for x in grads), ([x.norm() for x in grads], bound)


@pytest.mark.parametrize("dtype,T", [(F64, 1), (F64, 17), (F64, 100), (F32, 1), (F32, 63)], ids=str)
@pytest.mark.parametrize("left", [0, 5, 16, -1])
def test_reference_torch(dtype, T, left):
    if T == 1:
        check_degenerate_T1("torch", dtype, make_inputs(2, T), dict(window=(left, 0)))
    else:
        check_against_reference(OP, "torch", make_inputs(2, T), dict(window=(left, 0)), dtype=dtype)


@pytest.mark.parametrize("dtype,T", [(F64, 1), (F64, 17), (F32, 63)], ids=str)
@pytest.mark.parametrize("left,fill", [(0, "full"), (1, "random"), (5, "random"), (16, "full"), (16, "empty")])
def test_reference_torch_state(dtype, T, left, fill):
    """Initial state (window cache + Latte state) and final state: outputs, states, all gradients."""
    torch.manual_seed(T * 100 + left)
    check_against_reference(OP, "torch", make_inputs(3, T),
                            dict(window=(left, 0), initial_state=make_state(3, left, fill=fill),
                                 output_final_state=True), dtype=dtype, **SKIP_MAX)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype,cache", [(F32, "full"), (F32, None), (F16, "random"), (BF16, "full"), (BF16, None)],
                         ids=str)
def test_reference_backends(backend, dtype, cache):
    """Each backend, each kernel dtype: T = 17, window 5, with a state (Triton: the composed path) and without
    (Triton: the fused forward kernel; the final state is still returned)."""
    kw = dict(window=(5, 0), output_final_state=True)
    B = 1 if interpreted(backend) else 2
    if cache is not None:
        kw["initial_state"] = make_state(B, 5, fill=cache)
    check_against_reference(OP, backend, make_inputs(B, 17), kw, dtype=dtype, **SKIP_MAX)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("T,left", [(1, 0), (63, 0), (100, 16), (63, -1)])
def test_reference_backends_sizes(backend, T, left):
    """Odd sizes and windows without a state (float32), incl. left = 0 (only the key itself) and unbounded."""
    if interpreted(backend) and T == 100:
        pytest.skip("interpreter time budget: T = 63 covers the same paths; runs on a GPU")
    ins = make_inputs(1, T, H=1 if interpreted(backend) else 3, D=8, Dv=7, L=3)
    if T == 1:
        check_degenerate_T1(backend, F32, ins, dict(window=(left, 0)))
    else:
        check_against_reference(OP, backend, ins, dict(window=(left, 0)), dtype=F32)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("cache", ["random", "empty", None])
def test_reference_cu_seqlens(backend, cache):
    """Packed sequences (one of length 0) with per-sequence states (a cache, an empty cache with a Latte state,
    or no state at all), against the reference."""
    if interpreted(backend) and cache == "empty":
        pytest.skip("interpreter time budget: the empty cache takes the fused path like cache=None; runs on a GPU")
    cu = torch.tensor([0, 7, 7, 20, 29], dtype=torch.int32)
    kw = dict(window=(4, 0), cu_seqlens=cu)
    if cache is not None:
        kw.update(initial_state=make_state(4, 4, fill=cache), output_final_state=True)
    check_against_reference(OP, backend, make_inputs(1, 29), kw, dtype=F32, **SKIP_MAX)


# ------------------------------------------------------------------------------------------ streaming / packing

def _chain(backend, dtype, pieces, left, grads=True):
    """Run the inputs in time pieces carrying the state; return outputs, final state and input grads."""
    torch.manual_seed(7)
    dev = device_for(backend)
    B, T = 2, sum(pieces)
    ins = [x.to(dev, dtype).requires_grad_() for x in make_inputs(B, T)]
    st0 = make_state(B, left)
    sd = F64 if dtype == F64 else F32
    st = tuple(x.to(dev, sd if x.is_floating_point() else x.dtype) for x in st0)
    st = tuple(x.requires_grad_() if x.is_floating_point() else x for x in st)
    state0 = st
    outs, t = [], 0
    for n in pieces:
        o, st = call(backend, *(x[:, t:t + n] for x in ins), window=(left, 0), initial_state=st,
                     output_final_state=True)
        outs.append(o)
        t += n
    o = torch.cat(outs, dim=1)
    if not grads:
        return o, st, None
    g = torch.randn(o.shape, dtype=F64, device=dev)
    loss = (o.double() * g).sum() + sum((s.double() * torch.randn_like(s.double())).sum()
                                        for i, s in enumerate(st) if i in (0, 1, 4, 5))
    leaves = list(ins) + [state0[i] for i in (0, 1, 4, 5)]
    return o, st, torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("left", [0, 3, 6])
def test_split_and_resume(left):
    """Pieces 5 + 1 + 11 + 3 with the state carried == one pass: outputs, final state, chained gradients."""
    whole = _chain("torch", F64, [20], left)
    split = _chain("torch", F64, [5, 1, 11, 3], left)
    assert rel_err(split[0], whole[0]) < SELF_TOL[F64]
    for i, (a, b) in enumerate(zip(split[1], whole[1])):
        assert torch.equal(a, b) if not a.is_floating_point() else rel_err(a, b) < SELF_TOL[F64], f"state[{i}]"
    for i, (a, b) in enumerate(zip(split[2], whole[2])):
        assert rel_err(a, b) < SELF_TOL[F64], f"grad {i}"


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_decode_steps(backend):
    """T = 1 steps from a state == the parallel pass (outputs and final state)."""
    n = 13 if backend == "torch" else 4
    whole = _chain(backend, F32, [n], 4, grads=False)
    steps = _chain(backend, F32, [1] * n, 4, grads=False)
    assert rel_err(steps[0], whole[0]) < SELF_TOL[F32]
    for i, (a, b) in enumerate(zip(steps[1], whole[1])):
        assert torch.equal(a, b) if not a.is_floating_point() else rel_err(a, b) < SELF_TOL[F32], f"state[{i}]"


def test_decode_from_nothing():
    """The first step without a state, then T = 1 steps: the cache fills up and then slides."""
    torch.manual_seed(3)
    q, k, v, mix, lk = make_inputs(1, 9)
    y_all = call("torch", q, k, v, mix, lk, window=(3, 0))
    y, st = call("torch", q[:, :1], k[:, :1], v[:, :1], mix[:, :1], lk[:, :1], window=(3, 0), output_final_state=True)
    ys = [y]
    assert st[2].tolist() == [1]
    for t in range(1, 9):
        y, st = call("torch", *(x[:, t:t + 1] for x in (q, k, v, mix, lk)), window=(3, 0), initial_state=st,
                     output_final_state=True)
        ys.append(y)
    assert st[2].tolist() == [3] and torch.equal(st[0][0], k[0, 6:9])
    assert rel_err(torch.cat(ys, 1), y_all) < SELF_TOL[F64]


def test_cu_seqlens_equals_loop():
    """Packed sequences == a loop over sequences (outputs, states, all gradients, torch backend)."""
    torch.manual_seed(5)
    lens = [6, 0, 13, 1]
    cu = torch.tensor([0, 6, 6, 19, 20], dtype=torch.int32)
    ins = [x.requires_grad_() for x in make_inputs(1, 20)]
    st = make_state(4, 5)
    st = tuple(x.requires_grad_() if x.is_floating_point() else x for x in st)
    o, fin = call("torch", *ins, window=(5, 0), cu_seqlens=cu, initial_state=st, output_final_state=True)
    outs, fins, t = [], [], 0
    for n, ln in enumerate(lens):
        if ln == 0:
            fins.append(tuple(s[n:n + 1] for s in st))
            continue
        o_n, f_n = call("torch", *(x[:, t:t + ln] for x in ins), window=(5, 0),
                        initial_state=tuple(s[n:n + 1] for s in st), output_final_state=True)
        outs.append(o_n)
        fins.append(f_n)
        t += ln
    o_loop = torch.cat(outs, 1)
    fin_loop = tuple(torch.cat(p, 0) for p in zip(*fins))
    # the zero-length sequence hands its state through; slots beyond n_win are unspecified (ours are zero)
    valid = (torch.arange(5).view(1, 5) >= 5 - fin[2].view(4, 1)).view(4, 5, 1, 1)
    fin = (fin[0] * valid, fin[1] * valid) + fin[2:]
    fin_loop = (fin_loop[0] * valid, fin_loop[1] * valid) + fin_loop[2:]
    assert rel_err(o, o_loop) < SELF_TOL[F64]
    for i, (a, b) in enumerate(zip(fin, fin_loop)):
        assert torch.equal(a, b.to(a.dtype)) if not a.is_floating_point() else rel_err(a, b) < SELF_TOL[F64], i
    leaves = ins + [st[i] for i in (0, 1, 4, 5)]
    g = torch.randn_like(o)
    ga = torch.autograd.grad((o * g).sum() + fin[5].sum() + fin[0].sum(), leaves)
    gb = torch.autograd.grad((o_loop * g).sum() + fin_loop[5].sum() + fin_loop[0].sum(), leaves)
    for i, (a, b) in enumerate(zip(ga, gb)):
        assert rel_err(a, b) < SELF_TOL[F64], f"grad {i}"


# ------------------------------------------------------------------------------------------ large logits

@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_huge_logits(backend):
    """mix, latent_k and the scores at ±1e4: outputs equal the reference, everything finite."""
    torch.manual_seed(11)
    B = 1 if interpreted(backend) else 2
    q, k, v, mix, lk = make_inputs(B, 17 if interpreted(backend) else 33)
    q, mix, lk = q * 1e4, mix * 1e4, lk * 1e4
    st = make_state(B, 4)
    st = st[:3] + (1e4 + torch.randn(B, 2, 4, dtype=F64),) + st[4:]
    kw = dict(window=(4, 0), initial_state=st, output_final_state=True)
    check_against_reference(OP, backend, (q, k, v, mix, lk), kw, dtype=F32, grad=False)
    dev = device_for(backend)
    ins = [x.to(dev, F32).requires_grad_() for x in (q, k, v, mix, lk)]
    st = tuple(x.to(dev, F32 if x.is_floating_point() else x.dtype) for x in st)
    o, fin = call(backend, *ins, **dict(kw, initial_state=st))
    (o.double().sum() + fin[5].double().sum()).backward()
    assert torch.isfinite(o).all() and all(torch.isfinite(x.grad).all() for x in ins)


# ------------------------------------------------------------------------------------------ errors

def _base(**over):
    q, k, v, mix, lk = (x.float() for x in make_inputs(2, 5))
    d = dict(q=q, k=k, v=v, mix=mix, latent_k=lk, window=(2, 0))
    d.update(over)
    return d


def _raises(exc, match, **over):
    d = _base(**over)
    args = [d.pop(n) for n in ("q", "k", "v", "mix", "latent_k")]
    with pytest.raises(exc, match=match):
        flashts.latte_macchiato_attention(*args, **d)


def test_errors():
    _raises(ValueError, r"window: Latte Macchiato is causal", window=(2, 1))
    _raises(ValueError, r"window: expected a pair", window=3)
    _raises(ValueError, r"mix: expected L\+1 = 5", mix=torch.randn(2, 5, 2, 4))
    _raises(ValueError, r"latent_k: expected time length 5", latent_k=torch.randn(2, 6, 2, 4))
    _raises(ValueError, r"v: expected heads 2", v=torch.randn(2, 5, 1, 3))
    _raises(ValueError, r"k: expected head dim D=5", k=torch.randn(2, 5, 2, 4))
    _raises(ValueError, r"mix: expected a 4-D tensor", mix=torch.randn(2, 5, 2))
    _raises(TypeError, r"share one floating dtype", mix=torch.randn(2, 5, 2, 5, dtype=F64))
    _raises(TypeError, r"latent_k: expected a floating dtype", latent_k=torch.ones(2, 5, 2, 4, dtype=torch.int64))
    _raises(ValueError, r"streaming .* needs a finite window", window=(-1, 0), output_final_state=True)
    st = tuple(x.float() if x.is_floating_point() else x for x in make_state(2, 2))
    _raises(ValueError, r"initial_state: expected a tuple", initial_state=st[:5])
    _raises(ValueError, r"initial_state.k_win: expected shape \[2, 2, 2, 5\]", initial_state=(st[0][:, :1],) + st[1:])
    _raises(ValueError, r"initial_state.n_win: expected values in \[0, left=2\]",
            initial_state=st[:2] + (torch.tensor([0, 3], dtype=torch.int32),) + st[3:])
    _raises(ValueError, r"initial_state.n_win: expected an integer tensor",
            initial_state=st[:2] + (torch.zeros(2),) + st[3:])
    _raises(ValueError, r"backend: expected one of", backend="nope")
    _raises(ValueError, r"cu_seqlens: packed sequences need batch size 1", cu_seqlens=torch.tensor([0, 5]))


# ------------------------------------------------------------------------------------------ torch.compile

def test_torch_compile_inductor():
    """The default inductor backend, forward + backward, with a state, in one graph; equals eager."""
    torch.manual_seed(2)
    ins = [x.float() for x in make_inputs(1, 9)]
    st = tuple(x.float() if x.is_floating_point() else x for x in make_state(1, 3))

    def f(q, k, v, mix, lk, a0, S0):
        state = st[:4] + (a0, S0)
        o, fin = flashts.latte_macchiato_attention(q * 1.0, k, v, mix, lk, window=(3, 0), initial_state=state,
                                                   output_final_state=True, backend="torch")
        return o.square().sum() + fin[5].sum()

    leaves = [t.clone().requires_grad_() for t in ins + [st[4], st[5]]]
    eager = f(*leaves)
    eager_grads = torch.autograd.grad(eager, leaves)
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    leaves2 = [t.clone().requires_grad_() for t in ins + [st[4], st[5]]]
    out = compiled(*leaves2)
    grads = torch.autograd.grad(out, leaves2)
    torch.testing.assert_close(out, eager)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------ layers

def test_layer_forward_step_and_grads():
    """LatteMacchiato: forward == token-by-token step == chunked forward with the state; params get gradients."""
    torch.manual_seed(4)
    layer = flashts.nn.LatteMacchiato(d_model=12, n_heads=3, n_latents=2, window=(3, 0), backend="torch").double()
    x = torch.randn(2, 11, 12, dtype=F64)
    y = layer(x)
    assert y.shape == (2, 11, 12)
    y1, st = layer(x[:, :6], output_final_state=True)
    ys = [y1]
    for t in range(6, 11):
        y_t, st = layer.step(x[:, t], st)
        ys.append(y_t.unsqueeze(1))
    assert rel_err(torch.cat(ys, 1), y) < SELF_TOL[F64]
    st_shapes = [tuple(s.shape) for s in st]
    assert st_shapes == [(2, 3, 3, 4), (2, 3, 3, 4), (2,), (2, 3, 2), (2, 3, 2), (2, 3, 2, 4)]
    y.square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.norm() > 0, name
    with pytest.raises(ValueError, match="window"):
        flashts.nn.LatteMacchiato(12, 3, 2, window=(3, 3))
    with pytest.raises(ValueError, match="finite window"):
        flashts.nn.LatteMacchiato(12, 3, 2, window=(-1, 0), backend="torch")(x.float(), output_final_state=True)


def test_layer_matches_functional():
    """The layer is exactly out_proj(op(projections))."""
    torch.manual_seed(6)
    layer = flashts.nn.LatteMacchiato(8, 2, 3, window=(2, 0), backend="torch").double()
    x = torch.randn(1, 7, 8, dtype=F64)
    q, k, v = (p(x).view(1, 7, 2, 4) for p in (layer.q_proj, layer.k_proj, layer.v_proj))
    mix, lk = layer.mix_proj(x).view(1, 7, 2, 4), layer.latent_proj(x).view(1, 7, 2, 3)
    o = flashts.reference.latte_macchiato_attention(q, k, v, mix, lk, window=(2, 0))
    assert rel_err(layer(x), layer.out_proj(o.reshape(1, 7, 8))) < SELF_TOL[F64]


def test_inner_attention_tslib():
    """The TSLib inner attention inside flashts.nn.AttentionLayer: the op on derived mix/latent logits."""
    torch.manual_seed(8)
    inner = flashts.nn.LatteMacchiatoInnerAttention(True, window=(4, 0), n_latents=3, d_keys=4, attention_dropout=0.0,
                                                    backend="torch").double()
    layer = flashts.nn.AttentionLayer(inner, d_model=8, n_heads=2).double()
    x = torch.randn(2, 9, 8, dtype=F64)
    y, attn = layer(x, x, x, attn_mask=None)
    assert y.shape == (2, 9, 8) and attn is None
    qs, ks, vs = (torch.randn(2, 9, 2, 4, dtype=F64) for _ in range(3))
    out, _ = inner(qs, ks, vs, None)
    ref = flashts.reference.latte_macchiato_attention(qs, ks, vs, inner.mix_proj(qs), inner.latent_proj(ks),
                                                      window=(4, 0))
    assert rel_err(out, ref) < SELF_TOL[F64]
    with pytest.raises(ValueError, match="causal"):
        flashts.nn.LatteMacchiatoInnerAttention(False, window=(4, 0), n_latents=3, d_keys=4)
    with pytest.raises(ValueError, match="self-attention"):
        inner(qs, ks[:, :5], vs[:, :5], None)


@pytest.mark.parametrize("cls", ["LatteMacchiato", "LatteMacchiatoInnerAttention"])
def test_docstring_example_runs(cls):
    import textwrap

    doc = getattr(flashts.nn, cls).__doc__
    code = textwrap.dedent(doc.split("Example::", 1)[1].split("\n", 1)[1])
    exec(compile(code, f"<{cls} example>", "exec"), {"torch": torch, "flashts": flashts})


def test_torch_compile_dynamic_one_graph_strided_inputs():
    """dynamic=True: one graph over several T (default inductor, forward + backward), with non-contiguous inputs
    (the backward's gradients must have the strides the fake promises)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()

    def f(q, k, v, mix, lk):
        return flashts.latte_macchiato_attention(q, k, v, mix, lk, window=(3, 0), backend="torch").square().sum()

    compiled = torch.compile(f, dynamic=True, fullgraph=True)
    for T in (9, 17, 30, 41):
        ins = [torch.randn(1, 2, T, n).transpose(1, 2) for n in (4, 4, 5, 3, 2)]   # [1, T, 2, n], strided
        leaves = [x.clone().requires_grad_() for x in ins]
        out = compiled(*leaves)
        grads = torch.autograd.grad(out, leaves)
        leaves_e = [x.clone().requires_grad_() for x in ins]
        ref = f(*leaves_e)
        grads_e = torch.autograd.grad(ref, leaves_e)
        torch.testing.assert_close(out, ref)
        for a, b in zip(grads, grads_e):
            torch.testing.assert_close(a, b)
    assert counters["stats"]["unique_graphs"] == 1
