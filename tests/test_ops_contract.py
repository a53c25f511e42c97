"""What every op promises at the custom-op boundary, whatever the backend (flashts/ops):

* the exact gradient of a user-given running max (Aaren m0, Latte m0), checked by gradcheck in float64;
* empty batches (B = 0) and empty sequences (T = 0) give empty results, states passed through;
* meta tensors run through the fake implementations (shapes only);
* contiguous results for strided inputs (what the fakes promise to torch.compile);
* TRITON_INTERPRET set after triton was imported: an actionable error.
"""
import os
import subprocess
import sys

import pytest
import torch

import flashts
from helpers import backends_for

F64 = torch.float64


@pytest.mark.parametrize("op", ["aaren", "latte"])
def test_running_max_gradient_gradcheck(op):
    """The state (m, u, w) stands for (u·e^m, w·e^m): the output depends on m0 and its gradient is exact."""
    B, T, H, D = 2, 3, 1, 2
    k, v = torch.randn(B, T, H, D, dtype=F64), torch.randn(B, T, H, D, dtype=F64)
    if op == "aaren":
        q = torch.randn(H, D, dtype=F64)
        lead = (B, H)
        fn = flashts.aaren_attention
    else:
        q = torch.randn(B, T, H, D, dtype=F64)
        lead = (B, H, D)
        fn = flashts.latte_attention
    # m0 large enough to be the running max for some rows and not for others
    m0 = (torch.randn(lead, dtype=F64) * 2).requires_grad_()
    u0 = (torch.rand(lead, dtype=F64) + 0.5).requires_grad_()
    w0 = torch.randn(lead + (D,), dtype=F64).requires_grad_()
    leaves = [x.clone().requires_grad_() for x in (q, k, v)] + [m0, u0, w0]

    def f(q, k, v, m0, u0, w0):
        o, (m, u, w) = fn(q, k, v, initial_state=(m0, u0, w0), output_final_state=True, backend="torch")
        # the represented final state (u·e^m, w·e^m) is smooth in the inputs; m alone is not
        return o, u * m.exp(), w * m.exp().unsqueeze(-1)

    assert torch.autograd.gradcheck(f, leaves, atol=1e-7, rtol=1e-6)
    o = f(*leaves)[0]
    (gm,) = torch.autograd.grad(o.sum(), m0)
    assert gm.abs().max() > 0  # a nonzero gradient (None or zeros would pass a smooth-in-m check vacuously)


def _call(op, B, T, backend, state):
    H, D = 2, 4
    q, k, v = (torch.randn(B, T, H, D, requires_grad=True) for _ in range(3))
    kw = {}
    N = B
    if op == "linear_attention":
        if state:
            kw = dict(initial_state=(torch.randn(N, H, D, D, requires_grad=True),
                                     torch.rand(N, H, D, requires_grad=True)), output_final_state=True)
        out = flashts.linear_attention(q, k, v, backend=backend, **kw)
    elif op == "sliding_window_attention":
        out = flashts.sliding_window_attention(q, k, v, window=(2, 0), return_lse=True, backend=backend)
    elif op == "auto_correlation":
        out = flashts.auto_correlation(q, k, v, return_delays=True, backend=backend)
    elif op == "aaren_attention":
        q = torch.randn(H, D, requires_grad=True)
        if state:
            kw = dict(initial_state=(torch.randn(N, H), torch.rand(N, H, requires_grad=True),
                                     torch.randn(N, H, D, requires_grad=True)), output_final_state=True)
        out = flashts.aaren_attention(q, k, v, backend=backend, **kw)
    else:
        if state:
            kw = dict(initial_state=(torch.randn(N, H, D), torch.rand(N, H, D, requires_grad=True),
                                     torch.randn(N, H, D, D, requires_grad=True)), output_final_state=True)
        out = flashts.latte_attention(q, k, v, backend=backend, **kw)
    return (q, k, v), kw, out


OPS = ("linear_attention", "sliding_window_attention", "auto_correlation", "aaren_attention", "latte_attention")
CASES = [(op, be) for op in OPS for be in backends_for(op)]


@pytest.mark.parametrize("op,backend", CASES)
@pytest.mark.parametrize("B,T", [(0, 5), (2, 0)], ids=["B=0", "T=0"])
def test_empty_inputs(op, backend, B, T):
    state = op in ("linear_attention", "aaren_attention", "latte_attention")
    (q, k, v), kw, out = _call(op, B, T, backend, state)
    o = out[0] if isinstance(out, tuple) else out
    assert o.shape == (B, T, 2, 4)
    loss = o.sum()
    if state:
        st = out[1]
        st0 = kw["initial_state"]
        for a, b in zip(st, st0):  # the final state is the initial one
            torch.testing.assert_close(a, b.detach())
        loss = loss + sum(x.sum() for x in st[1:])
    loss.backward()
    for x in (q, k, v):
        assert x.grad is not None and x.grad.shape == x.shape and (x.grad == 0).all()
    if state:
        for x in kw["initial_state"][1:]:
            assert (x.grad == 1).all()  # passed through from the final state's cotangent (ones)


@pytest.mark.parametrize("op", OPS)
def test_meta_tensors_use_the_fakes(op):
    with torch.device("meta"):
        (q, k, v), kw, out = _call(op, 2, 7, "auto", op != "sliding_window_attention" and op != "auto_correlation")
    o = out[0] if isinstance(out, tuple) else out
    assert o.device.type == "meta" and o.shape == (2, 7, 2, 4)


@pytest.mark.parametrize("op,backend", CASES)
def test_strided_inputs_give_contiguous_results(op, backend):
    """Inputs as strided views: every output and gradient is contiguous (what the fakes promise)."""
    H, D, B, T = 2, 4, 2, 9
    base = [torch.randn(B, H, T, D) for _ in range(3)]
    q, k, v = (x.transpose(1, 2).requires_grad_() for x in base)  # non-contiguous [B, T, H, D] leaves
    qa = torch.randn(D, H).t().requires_grad_() if op == "aaren_attention" else q
    kwargs = dict(window=(2, 1)) if op == "sliding_window_attention" else {}
    out = getattr(flashts, op)(qa, k, v, backend=backend, **kwargs)
    assert out.is_contiguous()
    grads = torch.autograd.grad((out * out.sin()).sum(), (qa, k, v))
    for g in grads:
        assert g.is_contiguous(), (op, backend, g.shape, g.stride())


def test_triton_interpret_set_too_late_is_explained():
    pytest.importorskip("triton")
    code = (
        "import os, torch\n"
        "os.environ.pop('TRITON_INTERPRET', None)\n"
        "import triton, flashts\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "q = torch.randn(1, 5, 2, 4)\n"
        "try:\n"
        "    flashts.linear_attention(q, q, q, backend='triton')\n"
        "except RuntimeError as e:\n"
        "    print('RAISED', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert "RAISED" in res.stdout and "set after `triton` was imported" in res.stdout, res.stdout + res.stderr
