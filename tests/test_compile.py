"""torch.compile as users run it: the default (inductor) backend, with and without ``dynamic=True``.

One compiled function calls all five ops (with states, delays and lse, so every output and every gradient
path is in the graph) and is run over 8 values of T, forward and backward, on every backend available on
CPU (torch; Triton under the interpreter). It must give one graph for every T with ``dynamic=True`` (two
without: the first call specialises, the second marks T dynamic) and equal the eager results. Compiled and
eager calls reject the same bad inputs.

Inductor compiles are slow on a small CPU machine: shapes are tiny and each configuration compiles once.
"""
import pytest
import torch
from torch._dynamo.utils import counters

import flashts
from helpers import backends_for

B, H, D = 1, 2, 4
TS = (5, 6, 7, 9, 11, 13, 16, 21)     # 8 values of T (>= 2: dynamo specialises sizes 0 and 1)
# Triton runs under the CPU interpreter here (slow): the default-dynamic case, which needs two compiles
# anyway, runs over 3 values of T there (static graph, then the dynamic one, then a reuse)
TS_SHORT = (5, 6, 9)


def all_ops(q, k, v, qa, S0, z0, m0, u0, w0, lm0, la0, lS0, backend):
    o1, (S, z) = flashts.linear_attention(q, k, v, initial_state=(S0, z0), output_final_state=True,
                                          backend=backend)
    o2, lse = flashts.sliding_window_attention(q, k, v, window=(3, 1), return_lse=True, backend=backend)
    o3, (_, weights) = flashts.auto_correlation(q, k, v, factor=1.0, return_delays=True, backend=backend)
    o4, (m, u, w) = flashts.aaren_attention(qa, k, v, initial_state=(m0, u0, w0), output_final_state=True,
                                            backend=backend)
    o5, (lm, la, lS) = flashts.latte_attention(q, k, v, initial_state=(lm0, la0, lS0), output_final_state=True,
                                               backend=backend)
    # one scalar over every output (non-linear, so no output's gradient is uniform)
    loss = sum((o * o.sin()).sum() for o in (o1, o2, o3, o4, o5))
    loss = loss + S.sum() + z.sum() + lse.sin().sum() + weights.sum() + (u * m.exp()).sum() + (w * m.exp().unsqueeze(-1)).sum()
    return loss + (la * lm.exp()).sum() + (lS * lm.exp().unsqueeze(-1)).sum()


def make_inputs(T):
    q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
    qa = torch.randn(H, D)
    S0, z0 = torch.randn(B, H, D, D), torch.rand(B, H, D)
    m0, u0, w0 = torch.randn(B, H), torch.rand(B, H) + 0.5, torch.randn(B, H, D)
    lm0, la0, lS0 = torch.randn(B, H, D), torch.rand(B, H, D) + 0.5, torch.randn(B, H, D, D)
    return [t.requires_grad_() for t in (q, k, v, qa, S0, z0, m0, u0, w0, lm0, la0, lS0)]


def loss_and_grads(fn, inputs, backend):
    for t in inputs:
        t.grad = None
    loss = fn(*inputs, backend)
    loss.backward()
    return loss.detach(), [t.grad.clone() for t in inputs]


@pytest.mark.parametrize("dynamic", [True, None], ids=["dynamic", "default"])
@pytest.mark.parametrize("backend", backends_for("linear_attention"))
def test_compile_every_op_one_graph(backend, dynamic):
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(all_ops, dynamic=dynamic, fullgraph=True)
    interpreted = backend == "triton" and not torch.cuda.is_available()
    for T in (TS_SHORT if interpreted and not dynamic else TS):
        inputs = make_inputs(T)
        want, want_grads = loss_and_grads(all_ops, inputs, backend)
        got, got_grads = loss_and_grads(compiled, inputs, backend)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4, msg=f"loss T={T}")
        for i, (g, w) in enumerate(zip(got_grads, want_grads)):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-4, msg=f"grad of input {i} at T={T}")
    graphs = counters["stats"]["unique_graphs"]
    # dynamic=True: one graph for every T; default: the first call specialises, the second marks T dynamic
    assert graphs == (1 if dynamic else 2), dict(counters["stats"])


# ------------------------------------------------------------------------------------------- bad inputs

def _bad_cases():
    x = lambda T=9: torch.randn(1, T, 2, 4)  # noqa: E731
    cu = lambda *vals: torch.tensor(vals, dtype=torch.int32)  # noqa: E731
    return {
        "T mismatch": (lambda: flashts.linear_attention(x(9), x(8), x(9), backend="torch"), "time lengths"),
        "eps inf": (lambda: flashts.linear_attention(x(), x(), x(), eps=float("inf"), backend="torch"), "eps"),
        "window": (lambda: flashts.sliding_window_attention(x(), x(), x(), window=(-2, 0), backend="torch"),
                   "window"),
        "factor": (lambda: flashts.auto_correlation(x(), x(), x(), factor=0.0, backend="torch"), "factor"),
        "cu first": (lambda: flashts.linear_attention(x(), x(), x(), cu_seqlens=cu(2, 5, 9), backend="torch"),
                     "cu_seqlens"),
        "cu last": (lambda: flashts.sliding_window_attention(x(), x(), x(), window=(2, 0), cu_seqlens=cu(0, 5, 12),
                                                             backend="torch"), "cu_seqlens"),
        "cu order": (lambda: flashts.aaren_attention(torch.randn(2, 4), x(), x(), cu_seqlens=cu(0, 6, 3, 9),
                                                     backend="torch"), "cu_seqlens"),
        "state shape": (lambda: flashts.latte_attention(x(), x(), x(), initial_state=(torch.zeros(2, 2, 4),) * 2
                                                        + (torch.zeros(2, 2, 4, 4),), backend="torch"),
                        "initial_state"),
    }


BAD = _bad_cases()


@pytest.mark.parametrize("case", sorted(BAD))
def test_compiled_and_eager_reject_the_same_inputs(case):
    call, needle = BAD[case]
    with pytest.raises(ValueError, match=needle) as eager:
        call()
    torch._dynamo.reset()
    # fullgraph=False: dynamo re-raises the ValueError itself; fullgraph=True reports it inside its own error
    with pytest.raises(ValueError) as compiled:
        torch.compile(call, backend="aot_eager")()
    assert str(compiled.value) == str(eager.value)
    with pytest.raises(Exception, match="cu_seqlens|" + needle) as full:
        torch.compile(call, backend="aot_eager", fullgraph=True)()
    assert str(eager.value) in str(full.value) or str(eager.value) in repr(full.value.__cause__), str(full.value)


# ------------------------------------------------------------------------------- decode under reduce-overhead

def test_decode_step_reduce_overhead():
    """A streaming decode step (T = 1 with a state) of every causal flashts.nn layer under
    ``torch.compile(mode="reduce-overhead")``: on CPU, CUDA graphs are skipped and the inductor graph runs;
    it must run and equal eager, step after step (the state fed back). On a GPU the same call is captured
    into a CUDA graph (not run here: no GPU on CI)."""
    torch.manual_seed(0)
    d, heads = 8, 2
    nn = flashts.nn
    # fixed-size states (SlidingWindowAttention's KV cache grows until the window is full: a shape per step)
    layers = torch.nn.ModuleList([nn.LinearAttention(d, heads, backend="torch"),
                                  nn.Aaren(d, heads, backend="torch"), nn.Latte(d, heads, n_latents=3, backend="torch")])

    def step(x_t, states):
        outs, new = [], []
        for layer, st in zip(layers, states):
            y, st = layer.step(x_t, st)
            outs.append(y)
            new.append(st)
        return torch.stack(outs), new

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(step, mode="reduce-overhead")
    B = 2
    x = torch.randn(5, B, d)
    with torch.no_grad():
        st_e = [None] * len(layers)
        y_e, st_e = step(x[0], st_e)  # the first step creates the states (a different graph: not compiled)
        st_c = st_e
        for t in range(1, x.shape[0]):
            y_e, st_e = step(x[t], st_e)
            y_c, st_c = compiled(x[t], st_c)
            torch.testing.assert_close(y_c, y_e, rtol=1e-5, atol=1e-5, msg=f"step {t}")
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


@pytest.mark.parametrize("layer", ["LinearAttention", "AutoCorrelationAttention"])
def test_nn_layers_dynamic_one_graph(layer):
    """Layers holding float options (eps, factor) as attributes: one graph for every T under dynamic=True
    (aot_eager: the inductor path of the ops is covered above)."""
    torch._dynamo.reset()
    counters.clear()
    m = getattr(flashts.nn, layer)(8, 2, backend="torch")
    cm = torch.compile(m, dynamic=True, fullgraph=True, backend="aot_eager")
    for T in (5, 7, 9, 12):
        x = torch.randn(2, T, 8, requires_grad=True)
        y = cm(x)
        (g,) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(y, m(x))
        torch.testing.assert_close(g, torch.autograd.grad(m(x).sum(), x)[0])
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
