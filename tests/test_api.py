"""The public API contract shared by all ops: input validation, backend choice, autocast, torch.compile."""
import pytest
import torch

import flashts
from flashts import _backend

F32 = torch.float32


def r(*shape, dtype=F32):
    return torch.randn(*shape, dtype=dtype)


def qkv(B=2, T=5, H=2, D=4, Dv=3, Hk=None):
    Hk = H if Hk is None else Hk
    return r(B, T, H, D), r(B, T, Hk, D), r(B, T, Hk, Dv)


# One valid call per op; each bad-input case below changes one thing.
def call(op, **over):
    q, k, v = qkv()
    base = {
        "linear_attention": dict(q=q, k=k, v=v),
        "sliding_window_attention": dict(q=q, k=k, v=v, window=(2, 0)),
        "auto_correlation": dict(q=q, k=k, v=v),
        "aaren_attention": dict(q=r(2, 4), k=k, v=v),
        "latte_attention": dict(q=r(2, 5, 2, 4), k=r(2, 5, 2, 4), v=v),
    }[op]
    base.update(over)
    args = [base.pop("q"), base.pop("k"), base.pop("v")]
    return getattr(flashts, op)(*args, **base)


OPS = ["linear_attention", "sliding_window_attention", "auto_correlation", "aaren_attention", "latte_attention"]


def raises(exc, match, op, **over):
    with pytest.raises(exc, match=match):
        call(op, **over)


@pytest.mark.parametrize("op", OPS)
def test_valid_call_runs(op):
    out = call(op)
    assert out.shape[-1] == 3 and torch.isfinite(out).all()


@pytest.mark.parametrize("op", OPS)
def test_non_tensor_and_int_dtypes(op):
    raises(TypeError, "v: expected a torch.Tensor", op, v=[1.0, 2.0])
    raises(TypeError, "v: expected a floating dtype", op, v=torch.ones(2, 5, 2, 3, dtype=torch.int64))
    raises(TypeError, "share one floating dtype", op, v=r(2, 5, 2, 3, dtype=torch.float64))


@pytest.mark.parametrize("op", OPS)
def test_rank_and_size_mismatch(op):
    raises(ValueError, r"v: expected a 4-D tensor", op, v=r(2, 5, 3))
    raises(ValueError, "batch sizes", op, v=r(3, 5, 2, 3))
    if op != "auto_correlation":  # auto-correlation aligns k/v to q's length; only k vs v must match
        raises(ValueError, "time lengths", op, v=r(2, 6, 2, 3))
    else:
        raises(ValueError, "time lengths of k and v", op, v=r(2, 6, 2, 3))


@pytest.mark.parametrize("op", OPS)
def test_unknown_backend(op):
    raises(ValueError, "backend: expected one of", op, backend="cudnn")


@pytest.mark.parametrize("op", OPS)
def test_cuda_backend_unavailable_is_actionable(op):
    with pytest.raises(RuntimeError, match="cuda"):
        call(op, backend="cuda")


def test_env_backend(monkeypatch):
    monkeypatch.setenv("FLASHTS_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="FLASHTS_BACKEND"):
        call("linear_attention")
    monkeypatch.setenv("FLASHTS_BACKEND", "torch")
    assert _backend.resolve("linear_attention", "auto", torch.device("cpu")) == "torch"
    call("linear_attention")


def test_auto_on_cpu_is_torch():
    assert _backend.resolve("latte_attention", "auto", torch.device("cpu")) == "torch"


def test_devices_must_match():
    if not torch.cuda.is_available():
        meta_v = torch.empty(2, 5, 2, 3, device="meta")
        with pytest.raises(ValueError, match="one device"):
            call("linear_attention", v=meta_v)
    else:
        with pytest.raises(ValueError, match="one device"):
            call("linear_attention", v=r(2, 5, 2, 3).cuda())


# ------------------------------------------------------------------------------------------ per op

def test_linear_bad_inputs():
    op = "linear_attention"
    raises(ValueError, "head dims of q and k", op, k=r(2, 5, 2, 3))
    raises(ValueError, "multiple of kv heads", op, q=r(2, 5, 3, 4))
    raises(ValueError, "feature_map: expected one of", op, feature_map="softmax")
    raises(ValueError, "causal: expected True or False", op, causal=1)
    raises(ValueError, "scale: expected a finite number", op, scale=float("nan"))
    raises(ValueError, "eps: expected a number >= 0", op, eps=-1.0)
    S, z = torch.zeros(2, 2, 4, 3), torch.zeros(2, 2, 4)
    raises(ValueError, "only supported with causal=True", op, causal=False, initial_state=(S, z))
    raises(ValueError, r"initial_state.S: expected shape \[2, 2, 4, 3\]", op, initial_state=(torch.zeros(2, 2, 3, 3), z))
    raises(ValueError, "initial_state: expected a tuple", op, initial_state=S)
    raises(TypeError, "initial_state.z: expected a floating dtype", op, initial_state=(S, z.long()))


def test_cu_seqlens_checks():
    op = "linear_attention"
    q, k, v = qkv(B=1, T=6)
    good = torch.tensor([0, 2, 6], dtype=torch.int32)
    flashts.linear_attention(q, k, v, cu_seqlens=good)
    for bad, msg in [
        (torch.tensor([1, 2, 6], dtype=torch.int32), r"cu_seqlens\[0\] == 0"),
        (torch.tensor([0, 4, 2, 6], dtype=torch.int32), "non-decreasing"),
        (torch.tensor([0, 2, 5], dtype=torch.int32), r"cu_seqlens\[-1\] == T == 6"),
        (torch.tensor([0, 2.0, 6]), "dtype int32"),
        (torch.tensor([[0, 6]], dtype=torch.int32), "1-D tensor"),
        ([0, 2, 6], "expected an int32 tensor"),
    ]:
        with pytest.raises(ValueError, match=msg):
            flashts.linear_attention(q, k, v, cu_seqlens=bad)
    q2, k2, v2 = qkv(B=2, T=6)
    with pytest.raises(ValueError, match="batch size 1"):
        flashts.linear_attention(q2, k2, v2, cu_seqlens=good)
    S = torch.zeros(1, 2, 4, 3)
    with pytest.raises(ValueError, match=r"initial_state.S: expected shape \[2, 2, 4, 3\]"):
        flashts.linear_attention(q, k, v, cu_seqlens=good, initial_state=(S, torch.zeros(1, 2, 4)))
    bad = torch.tensor([0, 4, 2, 6], dtype=torch.int32)
    for other, over in [("sliding_window_attention", {}), ("aaren_attention", dict(q=r(2, 4))),
                        ("latte_attention", dict(q=r(1, 6, 2, 4), k=r(1, 6, 2, 4)))]:
        kw = dict(q=q, k=k, v=v, cu_seqlens=bad)
        kw.update(over)
        with pytest.raises(ValueError, match="non-decreasing"):
            call(other, **kw)


def test_sliding_window_bad_inputs():
    op = "sliding_window_attention"
    for w in [(2,), (1, 2, 3), (-2, 0), (0, -5), (1.5, 0), (True, 0), "full", None]:
        raises(ValueError, "window", op, window=w)
    raises(ValueError, "return_lse", op, return_lse="yes")
    raises(ValueError, "multiple of kv heads", op, k=r(2, 5, 3, 4), v=r(2, 5, 3, 3))


def test_auto_correlation_bad_inputs():
    op = "auto_correlation"
    for f in [0, -1.0, float("inf"), "1"]:
        raises(ValueError, "factor", op, factor=f)
    raises(ValueError, "mode: expected one of", op, mode="eval")
    raises(ValueError, "heads of q, k, v", op, k=r(2, 5, 3, 4), v=r(2, 5, 3, 3))
    raises(ValueError, "channels of q and k", op, k=r(2, 5, 2, 5))
    raises(ValueError, "return_delays", op, return_delays=None)


def test_aaren_bad_inputs():
    op = "aaren_attention"
    raises(ValueError, r"q: expected a 2-D or 3-D tensor", op, q=r(4))
    raises(ValueError, "heads of q and k", op, q=r(3, 4))
    raises(ValueError, "head dims of q and k", op, q=r(2, 5))
    raises(ValueError, "batch sizes of q and k", op, q=r(3, 2, 4))
    m, u, w = torch.zeros(2, 2), torch.ones(2, 2), torch.zeros(2, 2, 3)
    raises(ValueError, r"initial_state.w: expected shape \[2, 2, 3\]", op, initial_state=(m, u, torch.zeros(2, 3)))
    raises(ValueError, "initial_state: expected a tuple", op, initial_state=(m, u))


def test_latte_bad_inputs():
    op = "latte_attention"
    raises(ValueError, "latents of q and k", op, k=r(2, 5, 2, 3))
    raises(ValueError, "states exist only for causal=True", op, causal=False, output_final_state=True)
    st = (torch.zeros(2, 2, 4), torch.ones(2, 2, 4), torch.zeros(2, 2, 4, 3))
    raises(ValueError, "states exist only for causal=True", op, causal=False, initial_state=st)
    raises(ValueError, r"initial_state.alpha: expected shape \[2, 2, 4\]", op,
           initial_state=(st[0], torch.ones(2, 4), st[2]))


# ------------------------------------------------------------------------------ autocast / compile

@pytest.mark.parametrize("op", OPS)
def test_autocast_cpu_bf16(op):
    seed = torch.seed()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = call(op)
    assert out.dtype == torch.bfloat16
    torch.manual_seed(seed)  # same inputs again, without autocast
    ref = call(op).float()
    assert (out.float() - ref).norm() <= 0.05 * ref.norm() + 1e-6


@pytest.mark.parametrize("op", OPS)
def test_torch_compile_fullgraph(op):
    """The op traces into one graph (custom op + fake implementation), forward and backward."""
    q, k, v = qkv()
    if op == "aaren_attention":
        q = r(2, 4)
    if op == "latte_attention":
        q, k = r(2, 5, 2, 4), r(2, 5, 2, 4)
    extra = {"sliding_window_attention": {"window": (2, 0)}}.get(op, {})
    fn = getattr(flashts, op)

    def f(q, k, v):
        return fn(q * 1.0, k, v, **extra).square().sum()

    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    eager = f(*leaves)
    eager_grads = torch.autograd.grad(eager, leaves)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    leaves2 = [t.clone().requires_grad_() for t in (q, k, v)]
    out = compiled(*leaves2)
    grads = torch.autograd.grad(out, leaves2)
    torch.testing.assert_close(out, eager)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b)


def test_backend_info():
    info = flashts.backend_info()
    assert info["ops"]["linear_attention"] and "torch" in info["ops"]["linear_attention"]


def test_custom_op_modules_keep_annotation_objects():
    """torch 2.4 (the oldest supported) builds a custom op's schema from its annotations as objects: a module
    that defines custom ops must not turn them into strings with ``from __future__ import annotations``
    (flashts failed to import on torch 2.4 that way)."""
    import pathlib
    root = pathlib.Path(flashts.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if "torch.library.custom_op" in (text := p.read_text())
                 and "\nfrom __future__ import annotations" in "\n" + text]
    assert not offenders
    assert any("torch.library.custom_op" in p.read_text() for p in root.rglob("*.py"))  # the scan sees the ops
