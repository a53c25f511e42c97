"""Fuzz of packed offsets (``cu_seqlens``): no input, eager or compiled, reads or writes outside its buffers.

* Random valid and invalid offsets through the public functions, eager and ``torch.compile``d, on both CPU
  backends (torch; Triton under the interpreter): valid ones equal the per-sequence (unpacked) results,
  invalid ones raise the same ``ValueError`` eagerly and compiled (the custom ops check the values when they
  run, since the validation under compile cannot read them).
* On a GPU the custom ops hand the kernels a sanitised copy (``flashts.ops._common.sanitise_offsets``) while an
  asynchronous assert reports the bad values. That path is run here on the Triton kernels under the
  interpreter with random invalid offsets, with a guard: every input is a view into a larger NaN-filled
  buffer (an out-of-bounds read turns an output non-finite), and every buffer the kernels allocate sits
  between sentinel-filled margins that must be untouched afterwards (an out-of-bounds write changes them).
"""
import random

import pytest
import torch

import flashts
from flashts.ops import _common
from helpers import backends_for

H, D = 2, 4
OPS = ("linear_attention", "sliding_window_attention", "aaren_attention", "latte_attention")
PAD = 64            # margin elements on each side of a guarded buffer
SENTINEL = 1234.5


def call(op, q, k, v, cu, backend):
    if op == "linear_attention":
        return flashts.linear_attention(q, k, v, cu_seqlens=cu, backend=backend)
    if op == "sliding_window_attention":
        return flashts.sliding_window_attention(q, k, v, window=(2, 1), cu_seqlens=cu, backend=backend)
    if op == "aaren_attention":
        return flashts.aaren_attention(q[0, 0], k, v, cu_seqlens=cu, backend=backend)
    return flashts.latte_attention(q, k, v, cu_seqlens=cu, backend=backend)


def valid_offsets(rng, T):
    n = rng.randint(1, 4)
    cuts = sorted(rng.randint(0, T) for _ in range(n - 1))  # empty sequences allowed
    return [0] + cuts + [T]


def invalid_offsets(rng, T):
    cu = valid_offsets(rng, T)
    kind = rng.choice(("first", "last", "order", "negative", "huge"))
    if kind == "first":
        cu[0] = rng.randint(1, T)
    elif kind == "last":
        cu[-1] = T + rng.randint(1, 5) if rng.random() < 0.5 else rng.randint(0, T - 1)
    elif kind == "order":
        cu.insert(1, T - 1)
        cu.insert(2, 1)
    elif kind == "negative":
        cu.insert(1, -rng.randint(1, 3))
    else:
        cu.insert(rng.randint(1, len(cu) - 1), 2**30)
    return cu


def unpacked(op, q, k, v, cu, backend):
    """The packed result computed one sequence at a time (empty sequences contribute nothing)."""
    qs = (lambda a, b: q) if op == "aaren_attention" else (lambda a, b: q[:, a:b])  # Aaren's query is q[0, 0]
    outs = [call(op, qs(a, b), k[:, a:b], v[:, a:b], None, backend) for a, b in zip(cu, cu[1:]) if b > a]
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("backend", backends_for("linear_attention"))
def test_random_offsets_eager_and_compiled(backend):
    rng = random.Random(13)
    T = 11
    compiled = {op: torch.compile(lambda q, k, v, cu, op=op: call(op, q, k, v, cu, backend), dynamic=True,
                                  fullgraph=True) for op in OPS}
    torch._dynamo.reset()
    for trial in range(4):
        q, k, v = (torch.randn(1, T, H, D) for _ in range(3))
        good = valid_offsets(rng, T)
        bad = invalid_offsets(rng, T)
        for op in OPS:
            cu = torch.tensor(good, dtype=torch.int32)
            want = unpacked(op, q, k, v, good, backend)
            torch.testing.assert_close(call(op, q, k, v, cu, backend), want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(compiled[op](q, k, v, cu), want, rtol=1e-5, atol=1e-5)
            cu = torch.tensor(bad, dtype=torch.int32)
            with pytest.raises(ValueError, match="cu_seqlens") as eager:
                call(op, q, k, v, cu, backend)
            with pytest.raises(ValueError, match="cu_seqlens") as comp:
                compiled[op](q, k, v, cu)
            assert str(comp.value) == str(eager.value), (op, bad)


def test_sanitised_offsets_are_a_valid_packing():
    rng = random.Random(7)
    for _ in range(200):
        T = rng.randint(0, 20)
        cu = [rng.randint(-5, T + 5) for _ in range(rng.randint(2, 6))]
        c = _common.sanitise_offsets(torch.tensor(cu, dtype=torch.int32), T).tolist()
        assert c[0] == 0 and c[-1] == T and all(a <= b for a, b in zip(c, c[1:])), (cu, c)
        assert len(c) == len(cu)
        good = valid_offsets(rng, max(T, 1))
        assert _common.sanitise_offsets(torch.tensor(good), max(T, 1)).tolist() == good


# ------------------------------------------------------------------------- out-of-bounds guard (Triton)

def guarded(shape, *, dtype, device, fill):
    """A tensor of ``shape`` inside a buffer with ``PAD`` margin elements on each side, filled with ``fill``."""
    n = 1
    for s in shape:
        n *= s
    buf = torch.full((n + 2 * PAD,), fill, dtype=dtype, device=device)
    return buf, buf[PAD:PAD + n].view(shape)


@pytest.mark.skipif("triton" not in backends_for("linear_attention"), reason="Triton interpreter not available")
@pytest.mark.parametrize("op", OPS)
def test_triton_kernels_stay_in_bounds_on_any_offsets(op, monkeypatch):
    from flashts import _backend

    impl = _backend.module_for(op, "triton")
    margins = []

    def new_empty(shape, *, dtype, device):
        fill = SENTINEL if dtype.is_floating_point else -7
        buf, out = guarded(tuple(shape), dtype=dtype, device=device, fill=fill)
        out.fill_(float("nan") if dtype.is_floating_point else -1)
        margins.append((buf, fill))
        return out

    monkeypatch.setattr(impl, "new_empty", new_empty)
    rng = random.Random(hash(op) % 1000)
    T = 13
    for _ in range(3):
        cu_bad = invalid_offsets(rng, T)
        cu = _common.sanitise_offsets(torch.tensor(cu_bad, dtype=torch.int32), T)
        N = cu.numel() - 1
        qk_last = D
        q, k, v = (guarded((1, T, H, qk_last), dtype=torch.float32, device="cpu", fill=float("nan"))[1]
                   for _ in range(3))
        for t in (q, k, v):
            t.copy_(torch.randn_like(t))
        do = guarded((1, T, H, D), dtype=torch.float32, device="cpu", fill=float("nan"))[1].copy_(
            torch.randn(1, T, H, D))
        margins.clear()
        if op == "linear_attention":
            o, S, z = impl.linear_attention_fwd(q, k, v, None, None, cu, True, "elu", True, 1.0, 1e-6)
            grads = impl.linear_attention_bwd(do, None, None, q, k, v, o, None, None, cu, True, "elu", True, 1.0,
                                              1e-6)
            outs = (o, S, z) + tuple(grads[:3])
        elif op == "sliding_window_attention":
            o, lse = impl.sliding_window_attention_fwd(q, k, v, cu, 2, 1, D ** -0.5)
            grads = impl.sliding_window_attention_bwd(do, None, q, k, v, o, lse, cu, 2, 1, D ** -0.5)
            outs = (o, lse) + tuple(grads)
        elif op == "aaren_attention":
            qa = q[0, 0]
            o, m, u, w = impl.aaren_attention_fwd(qa, k, v, None, None, None, cu, D ** -0.5)
            grads = impl.aaren_attention_bwd(do, None, None, qa, k, v, o, None, None, None, cu, D ** -0.5)
            outs = (o, u, w) + tuple(grads[:3])
        else:
            o, m, a, S = impl.latte_attention_fwd(q, k, v, None, None, None, cu, True)
            grads = impl.latte_attention_bwd(do, None, None, q, k, v, o, None, None, None, cu, True)
            outs = (o, a, S) + tuple(grads[:3])
        for x in outs:
            assert torch.isfinite(x).all(), (op, cu_bad, cu.tolist())  # no NaN margin read, no row unwritten
        assert margins, "the guard saw no allocation"
        for buf, fill in margins:
            assert (buf[:PAD] == fill).all() and (buf[-PAD:] == fill).all(), (op, cu_bad, "write out of bounds")
        assert N >= 1
