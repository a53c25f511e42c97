"""The eager T = 1 fast path of the public functions (flashts/ops/_fast_step.py, issue 19).

* it is taken (the general validation is never called) and equals the reference in float64: outputs, new
  state and every gradient, odd sizes, GQA, every feature map, q shared or per batch, with and without a state;
  Latte Macchiato with a partly filled, full and empty (left = 0) window cache;
* it equals the general path (custom op) exactly, including the gradient of a user-given running max;
* every bad input still raises the general path's error: same class, same message;
* torch.compile keeps one graph for the T = 1 step over batch sizes (dynamic=True), forward and backward,
  equal to eager.
"""
import pytest
import torch
from torch._dynamo.utils import counters

import flashts
from flashts import _validate
from flashts.ops import _fast_step
from helpers import check_against_reference, rel_err

F64 = torch.float64
SKIP_MAX = dict(skip_grad_inputs=("initial_state[0]",), skip_grad_outputs=("[1][0]",))


@pytest.fixture
def fast_only(monkeypatch):
    """Fail if any public call under test reaches the general validation (i.e. the fast path was not taken)."""
    def boom(*a, **k):
        raise AssertionError("the general path ran: the T = 1 fast path was not taken")
    for name in ("check_linear", "check_aaren", "check_latte", "check_macchiato"):
        monkeypatch.setattr(_validate, name, boom)


def _linear_case(B, H, Hk, D, Dv, state):
    args = (torch.randn(B, 1, H, D), torch.randn(B, 1, Hk, D), torch.randn(B, 1, Hk, Dv))
    kw = {}
    if state:
        kw = dict(initial_state=(torch.randn(B, H, D, Dv), torch.rand(B, H, D) + 0.5), output_final_state=True)
    return args, kw


def _aaren_case(B, H, D, Dv, state, q_batched):
    q = torch.randn(B, H, D) if q_batched else torch.randn(H, D)
    args = (q, torch.randn(B, 1, H, D), torch.randn(B, 1, H, Dv))
    kw = {}
    if state:
        kw = dict(initial_state=(2 * torch.randn(B, H), torch.rand(B, H) + 0.5, torch.randn(B, H, Dv)),
                  output_final_state=True)
    return args, kw


def _latte_case(B, H, L, Dv, state):
    args = (torch.randn(B, 1, H, L), torch.randn(B, 1, H, L), torch.randn(B, 1, H, Dv))
    kw = {}
    if state:
        kw = dict(initial_state=(2 * torch.randn(B, H, L), torch.rand(B, H, L) + 0.5, torch.randn(B, H, L, Dv)),
                  output_final_state=True)
    return args, kw


@pytest.mark.parametrize("feature_map", ["elu", "relu", "identity"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("Hk", [3, 1], ids=["MHA", "GQA"])
def test_linear_fast_equals_reference(fast_only, feature_map, normalize, Hk):
    args, kw = _linear_case(2, 3, Hk, 5, 7, state=True)
    kw.update(feature_map=feature_map, normalize=normalize)
    check_against_reference("linear_attention", "torch", args, kw, dtype=F64)


@pytest.mark.parametrize("q_batched", [False, True], ids=["q[H,D]", "q[B,H,D]"])
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=str)
def test_aaren_fast_equals_reference(fast_only, q_batched, dtype):
    args, kw = _aaren_case(3, 2, 5, 7, True, q_batched)
    check_against_reference("aaren_attention", "torch", args, dict(kw, scale=0.7), dtype=dtype, **SKIP_MAX)


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=str)
def test_latte_fast_equals_reference(fast_only, dtype):
    args, kw = _latte_case(2, 3, 5, 7, True)
    check_against_reference("latte_attention", "torch", args, kw, dtype=dtype, **SKIP_MAX)


def test_no_state_fast_equals_reference(fast_only):
    """The first token (no state): outputs and final states; gradients where they are not rounding noise."""
    args, kw = _linear_case(2, 3, 3, 5, 7, state=False)
    # normalize=False: normalised, o = v·(q̃·k̃)/(q̃·k̃ + eps) ≈ v and dq = O(eps) (rounding noise again)
    check_against_reference("linear_attention", "torch", args, dict(output_final_state=True, normalize=False),
                            dtype=F64)
    args, _ = _aaren_case(2, 3, 5, 7, False, False)
    # o = v exactly at the first step: dq = dk = 0 (a relative comparison of rounding noise: skipped)
    check_against_reference("aaren_attention", "torch", args, dict(output_final_state=True), dtype=F64,
                            skip_grad_inputs=("[0]", "[1]"), skip_grad_outputs=("[1][0]",))
    args, _ = _latte_case(2, 3, 5, 7, False)
    check_against_reference("latte_attention", "torch", args, dict(output_final_state=True), dtype=F64,
                            skip_grad_inputs=("[0]", "[1]"), skip_grad_outputs=("[1][0]",))


def _run(op, args, kw, fast):
    """Output, final state and the gradients of every input and state part (the running max included, with
    the represented state u·e^m, w·e^m in the loss), on the fast or the general path."""
    leaves = [a.double().requires_grad_() for a in args]
    st = tuple(s.double().requires_grad_() for s in kw["initial_state"])
    old = _fast_step.ENABLED
    _fast_step.ENABLED = fast
    try:
        o, new = getattr(flashts, op)(*leaves, **dict(kw, initial_state=st), backend="torch")
    finally:
        _fast_step.ENABLED = old
    if op == "linear_attention":
        loss = (o * o.sin()).sum() + new[0].sin().sum() + (new[1] ** 2).sum()
    else:
        e = new[0].exp()
        loss = (o * o.sin()).sum() + (new[1] * e).sum() + (new[2].sin() * e.unsqueeze(-1)).sum()
    grads = torch.autograd.grad(loss, leaves + list(st), allow_unused=True)
    return [o, *new, *grads]


@pytest.mark.parametrize("op", ["linear_attention", "aaren_attention", "latte_attention"])
def test_fast_equals_general_path(op):
    """Same values as the custom op (float64), m0's gradient dm0 = u0·du0 + Σ w0·dw0 included."""
    if op == "linear_attention":
        args, kw = _linear_case(2, 4, 2, 3, 5, True)
    elif op == "aaren_attention":
        args, kw = _aaren_case(2, 3, 5, 7, True, False)
    else:
        args, kw = _latte_case(2, 3, 5, 7, True)
    fast, slow = _run(op, args, kw, True), _run(op, args, kw, False)
    for i, (a, b) in enumerate(zip(fast, slow)):
        assert (a is None) == (b is None), i
        if a is not None:
            assert rel_err(a, b) <= 1e-12, (op, i, rel_err(a, b))
    if op != "linear_attention":
        gm = fast[4 + 3]   # the running max's gradient: nonzero, so the check above is not vacuous
        assert gm.abs().max() > 0


def test_inplace_state_survives_fast_path():
    """The fast path returns new state tensors (the caller's state is not written) and is not an alias."""
    args, kw = _aaren_case(2, 3, 4, 4, True, False)
    before = [s.clone() for s in kw["initial_state"]]
    o, new = flashts.aaren_attention(*args, **kw)
    for s, b, n in zip(kw["initial_state"], before, new):
        assert torch.equal(s, b)
        assert n.data_ptr() != s.data_ptr()
    assert o.shape == (2, 1, 3, 4) and o.is_contiguous()


def _macchiato_case(B, H, D, Dv, L, W, n_win, garbage=False):
    """T = 1 inputs and a state whose cache holds n_win[b] keys (right-aligned; the other slots zero, or
    garbage: they must never be read)."""
    args = (torch.randn(B, 1, H, D), torch.randn(B, 1, H, D), torch.randn(B, 1, H, Dv), torch.randn(B, 1, H, L + 1),
            torch.randn(B, 1, H, L))
    kw, vw = torch.randn(B, W, H, D), torch.randn(B, W, H, Dv)
    for b, n in enumerate(n_win):
        kw[b, :W - n] = 100.0 if garbage else 0.0
        vw[b, :W - n] = -50.0 if garbage else 0.0
    st = (kw, vw, torch.tensor(n_win, dtype=torch.int32), 2 * torch.randn(B, H, L), torch.rand(B, H, L) + 0.5,
          torch.randn(B, H, L, Dv))
    return args, st


MACCHIATO_CASES = {"partial": (4, [0, 2, 4]), "full": (3, [3, 3, 3]), "no window": (0, [0, 0, 0])}


@pytest.mark.parametrize("case", sorted(MACCHIATO_CASES))
def test_macchiato_fast_equals_reference(fast_only, case):
    W, n_win = MACCHIATO_CASES[case]
    args, st = _macchiato_case(3, 2, 5, 7, 3, W, n_win)
    check_against_reference("latte_macchiato_attention", "torch", args,
                            dict(window=(W, 0), initial_state=st, output_final_state=True), dtype=F64,
                            skip_grad_inputs=("initial_state[3]",), skip_grad_outputs=("[1][3]",))


@pytest.mark.parametrize("garbage", [False, True], ids=["zero slots", "garbage slots"])
def test_macchiato_fast_equals_general_path(garbage):
    """Outputs, the whole new state (stale cache slots zero) and every gradient equal the custom op's."""
    W = 4
    args, st = _macchiato_case(3, 2, 5, 7, 3, W, [1, 0, 4], garbage)

    def run(fast):
        leaves = [a.double().requires_grad_() for a in args]
        sl = [s.double().requires_grad_() if s.is_floating_point() else s for s in st]
        old = _fast_step.ENABLED
        _fast_step.ENABLED = fast
        try:
            o, new = flashts.latte_macchiato_attention(*leaves, window=(W, 0), initial_state=tuple(sl),
                                                       output_final_state=True, backend="torch")
        finally:
            _fast_step.ENABLED = old
        e = new[3].exp()
        loss = ((o * o.sin()).sum() + new[0].sin().sum() + (new[1] ** 2).sum() + (new[4] * e).sum()
                + (new[5].sin() * e.unsqueeze(-1)).sum())
        grads = torch.autograd.grad(loss, leaves + [s for s in sl if s.requires_grad], allow_unused=True)
        return [o, *new, *grads]
    fast, slow = run(True), run(False)
    for i, (a, b) in enumerate(zip(fast, slow)):
        assert (a is None) == (b is None), i
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape, i
            assert rel_err(a, b) <= 1e-12 if b.is_floating_point() else torch.equal(a, b), (i, rel_err(a, b))


# ------------------------------------------------------------------------------------------- bad inputs

def _bad_cases():
    x = lambda *s: torch.randn(*s)  # noqa: E731
    lin = flashts.linear_attention
    aar = flashts.aaren_attention
    lat = flashts.latte_attention
    S, z = x(2, 3, 4, 5), x(2, 3, 4)
    ast = (x(2, 3), x(2, 3), x(2, 3, 5))
    lst = (x(2, 3, 4), x(2, 3, 4), x(2, 3, 4, 5))
    q, k, v = x(2, 1, 3, 4), x(2, 1, 3, 4), x(2, 1, 3, 5)

    def mst(W=3, n=(0, 2)):   # Macchiato state, window left = 3, L = 3
        n_win = torch.tensor(n, dtype=torch.float32 if isinstance(n[0], float) else torch.int32)
        return (x(2, W, 3, 4), x(2, W, 3, 5), n_win, x(2, 3, 3), x(2, 3, 3), x(2, 3, 3, 5))

    def mac(st, window=(3, 0), mix=None, scale=None):
        return flashts.latte_macchiato_attention(q, k, v, x(2, 1, 3, 4) if mix is None else mix, x(2, 1, 3, 3),
                                                 window=window, scale=scale, initial_state=st,
                                                 output_final_state=True)
    return {
        "lin state shape": lambda: lin(q, k, v, initial_state=(x(2, 3, 4, 4), z), output_final_state=True),
        "lin state len": lambda: lin(q, k, v, initial_state=(S,), output_final_state=True),
        "lin state int": lambda: lin(q, k, v, initial_state=(S, z.long()), output_final_state=True),
        "lin state list of non-tensor": lambda: lin(q, k, v, initial_state=(S, 1.0)),
        "lin state meta": lambda: lin(q, k, v, initial_state=(S, z.to("meta"))),
        "lin dtype": lambda: lin(q.double(), k, v, initial_state=(S, z)),
        "lin int q": lambda: lin(q.long(), k, v, initial_state=(S, z)),
        "lin not a tensor": lambda: lin(q.tolist(), k, v, initial_state=(S, z)),
        "lin rank": lambda: lin(q[:, 0], k, v, initial_state=(S, z)),
        "lin T mismatch": lambda: lin(q, x(2, 2, 3, 4), v, initial_state=(S, z)),
        "lin B mismatch": lambda: lin(q, k, x(1, 1, 3, 5), initial_state=(S, z)),
        "lin kv heads": lambda: lin(q, k, x(2, 1, 2, 5), initial_state=(S, z)),
        "lin GQA": lambda: lin(q, x(2, 1, 2, 4), x(2, 1, 2, 5), initial_state=(S, z)),
        "lin head dim": lambda: lin(q, x(2, 1, 3, 3), v, initial_state=(S, z)),
        "lin feature map": lambda: lin(q, k, v, feature_map="gelu", initial_state=(S, z)),
        "lin feature map type": lambda: lin(q, k, v, feature_map=None, initial_state=(S, z)),
        "lin eps": lambda: lin(q, k, v, eps=float("inf"), initial_state=(S, z)),
        "lin eps neg": lambda: lin(q, k, v, eps=-1.0, initial_state=(S, z)),
        "lin scale nan": lambda: lin(q, k, v, scale=float("nan"), initial_state=(S, z)),
        "lin scale str": lambda: lin(q, k, v, scale="1", initial_state=(S, z)),
        "lin normalize": lambda: lin(q, k, v, normalize=1, initial_state=(S, z)),
        "lin causal": lambda: lin(q, k, v, causal=False, initial_state=(S, z)),
        "lin causal type": lambda: lin(q, k, v, causal=1, initial_state=(S, z)),
        "lin output_final_state": lambda: lin(q, k, v, initial_state=(S, z), output_final_state=1),
        "lin backend": lambda: lin(q, k, v, initial_state=(S, z), backend="tpu"),
        "lin cu_seqlens": lambda: lin(q[:1], k[:1], v[:1], initial_state=(S[:1], z[:1]),
                                      cu_seqlens=torch.tensor([0, 2], dtype=torch.int32)),
        "aar state shape": lambda: aar(x(3, 4), k, v, initial_state=(x(2, 3), x(2, 3), x(2, 3, 4))),
        "aar state type": lambda: aar(x(3, 4), k, v, initial_state=[ast[0], ast[1]]),
        "aar state dict": lambda: aar(x(3, 4), k, v, initial_state={"m": ast[0]}),
        "aar q heads": lambda: aar(x(2, 4), k, v, initial_state=ast),
        "aar q batch": lambda: aar(x(1, 3, 4), k, v, initial_state=ast),
        "aar q rank": lambda: aar(x(3), k, v, initial_state=ast),
        "aar v heads": lambda: aar(x(3, 4), k, x(2, 1, 2, 5), initial_state=ast),
        "aar v T": lambda: aar(x(3, 4), k, x(2, 2, 3, 5), initial_state=ast),
        "aar scale inf": lambda: aar(x(3, 4), k, v, scale=float("inf"), initial_state=ast),
        "aar scale bool": lambda: aar(x(3, 4), k, v, scale=True, initial_state=ast),
        "aar dtype": lambda: aar(x(3, 4).double(), k, v, initial_state=ast),
        "aar half state int": lambda: aar(x(3, 4), k, v, initial_state=(ast[0], ast[1].int(), ast[2])),
        "aar output_final_state": lambda: aar(x(3, 4), k, v, initial_state=ast, output_final_state="yes"),
        "aar backend": lambda: aar(x(3, 4), k, v, initial_state=ast, backend=3),
        "aar H0": lambda: aar(x(0, 4), x(2, 1, 0, 4), x(2, 1, 0, 5)),
        "lat state shape": lambda: lat(q, k, v, initial_state=(x(2, 3, 4), x(2, 3, 4), x(2, 3, 4, 4))),
        "lat causal": lambda: lat(q, k, v, causal=False, initial_state=lst),
        "lat causal int": lambda: lat(q, k, v, causal=0, initial_state=lst),
        "lat latents": lambda: lat(q, x(2, 1, 3, 3), v, initial_state=lst),
        "lat heads": lambda: lat(q, k, x(2, 1, 2, 5), initial_state=lst),
        "lat dtype": lambda: lat(q, k, v.half(), initial_state=lst),
        "lat output_final_state": lambda: lat(q, k, v, initial_state=lst, output_final_state=None),
        "lat backend": lambda: lat(q, k, v, initial_state=lst, backend="fast"),
        "mac n_win range": lambda: mac(mst(n=[0, 4])),
        "mac n_win negative": lambda: mac(mst(n=[-1, 0])),
        "mac n_win float": lambda: mac(mst(n=[0.0, 1.0])),
        "mac n_win shape": lambda: mac(mst(n=[0, 1, 2])),
        "mac cache shape": lambda: mac(mst(W=2)),
        "mac window right": lambda: mac(mst(), window=(3, 1)),
        "mac window neg": lambda: mac(mst(), window=(-1, 0)),
        "mac window type": lambda: mac(mst(), window=3),
        "mac window bool": lambda: mac(mst(), window=(True, 0)),
        "mac mix size": lambda: mac(mst(), mix=x(2, 1, 3, 3)),
        "mac state len": lambda: mac(mst()[:5]),
        "mac scale": lambda: mac(mst(), scale=float("inf")),
        "mac dtype": lambda: mac(mst(), mix=x(2, 1, 3, 4).double()),
    }


BAD = _bad_cases()


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inputs_raise_the_general_error(case, monkeypatch):
    call = BAD[case]
    with pytest.raises(Exception) as fast:
        call()
    assert not isinstance(fast.value, AssertionError)
    monkeypatch.setattr(_fast_step, "ENABLED", False)
    with pytest.raises(Exception) as general:
        call()
    assert type(fast.value) is type(general.value) and str(fast.value) == str(general.value)
    assert type(fast.value) in (ValueError, TypeError, RuntimeError), repr(fast.value)


def test_backend_env_and_autocast_take_the_general_path(monkeypatch):
    """FLASHTS_BACKEND naming another backend, or CPU autocast: the general path decides (and casts)."""
    args, kw = _aaren_case(2, 3, 4, 4, True, False)
    calls = []
    real = _validate.check_aaren
    monkeypatch.setattr(_validate, "check_aaren", lambda *a: calls.append(1) or real(*a))
    flashts.aaren_attention(*args, **kw)
    assert calls == []
    monkeypatch.setenv("FLASHTS_BACKEND", "bogus")
    with pytest.raises(ValueError, match="FLASHTS_BACKEND"):
        flashts.aaren_attention(*args, **kw)
    monkeypatch.delenv("FLASHTS_BACKEND")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o, _ = flashts.aaren_attention(*args, **kw)
    assert calls == [1, 1] and o.dtype == torch.bfloat16


# -------------------------------------------------------------------------------------------- compile

def test_compiled_step_one_graph():
    """The T = 1 steps of the three ops under torch.compile(dynamic=True, fullgraph=True): one graph over batch
    sizes, forward and backward equal to eager (aot_eager: the inductor path of the ops is
    tests/test_compile.py's). Sizes differ from every batch size (no duck-sizing coincidence)."""
    def step(lq, lk, lv, S0, z0, aq, ak, av, am, au, aw, tq, tk, tv, tm, ta, tS):
        o1, (S, z) = flashts.linear_attention(lq, lk, lv, initial_state=(S0, z0), output_final_state=True,
                                              backend="torch")
        o2, (m, u, w) = flashts.aaren_attention(aq, ak, av, initial_state=(am, au, aw), output_final_state=True,
                                                backend="torch")
        o3, (lm, la, lS) = flashts.latte_attention(tq, tk, tv, initial_state=(tm, ta, tS), output_final_state=True)
        loss = sum((o * o.sin()).sum() for o in (o1, o2, o3)) + S.sin().sum() + z.sum() + la.sum()
        return loss + (u * m.exp()).sum() + (w * m.exp().unsqueeze(-1)).sum() + (lS.sin() * lm.exp()[..., None]).sum()

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(step, dynamic=True, fullgraph=True, backend="aot_eager")
    for B in (6, 7, 9):
        (lq, lk, lv), lkw = _linear_case(B, 4, 2, 3, 5, True)
        (aq, ak, av), akw = _aaren_case(B, 3, 4, 5, True, True)
        (tq, tk, tv), tkw = _latte_case(B, 3, 4, 5, True)
        inputs = [t.requires_grad_() for t in (lq, lk, lv, *lkw["initial_state"], aq, ak, av, *akw["initial_state"],
                                                tq, tk, tv, *tkw["initial_state"])]
        want = step(*inputs)
        want_g = torch.autograd.grad(want, inputs)
        got = compiled(*inputs)
        got_g = torch.autograd.grad(got, inputs)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
        for i, (a, b) in enumerate(zip(got_g, want_g)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4, msg=f"grad of input {i}, B={B}")
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


# ------------------------------------------------------------------------------------------ bench.decode

def test_decode_bench_cpu_variants(tmp_path):
    """python -m bench.decode on CPU: every variant of issue 19 (public function fast and general, step
    functions, in place, hand-written, nn layers) checked and timed, with its ratio to the baseline."""
    import json
    import os

    from bench import decode

    rc = decode.main(["--device", "cpu", "--B", "3", "--H", "2", "--D", "6", "--L", "5", "--iters", "1",
                      "--rounds", "3", "--out", str(tmp_path), "--tag", "t", "--quiet"])
    assert rc == 0
    files = sorted(os.listdir(tmp_path))
    assert files == [f for f in files if f.startswith("decode_") and "_t." in f] and len(files) == 2
    data = json.load(open(tmp_path / files[0]))
    got = {(r["op"], r["backend"]) for r in data["rows"]}
    assert got == ({(op, v) for op in decode.CPU_PEER_OPS for v in decode.CPU_VARIANTS}
                   | {(op, "torch") for op in decode.OPS if op not in decode.CPU_PEER_OPS})
    for r in data["rows"]:
        assert r["error"] is None and r["rel_err"] < 1e-4, r
        if r["op"] not in decode.CPU_PEER_OPS:   # Macchiato: a plain backend row (no hand-written peer)
            assert r["eager_us"] > 0, r
            continue
        assert r["eager_us"] > 0 and r["vs_base"] > 0 and len(r["us_rounds"]) == 3, r
        assert r["cpu_us"] > 0 and r["vs_base_cpu"] > 0 and len(r["cpu_us_rounds"]) == 3, r
    md = (tmp_path / files[1]).read_text()
    assert "| aaren_attention | torch |" in md and "(nn-hand)" in md and "load average" in md
