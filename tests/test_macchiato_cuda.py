"""Latte Macchiato, ``cuda`` backend (flashts/cuda_ops/macchiato.py: the composition of the CUDA sliding-window
and Latte cores with the gate, and the one-kernel decode step for T = 1 with a state).

Without a GPU: the SAME composition code (``StepComposed``) runs with the ``torch`` cores and the torch step
(flashts.torch_ops.step.macchiato_step in the decode-step interface) as the op's backend on the CPU, through the
public function, its custom op and autograd, against the float64 reference: outputs, final states (window cache,
n_win, α, S) and every gradient (q, k, v, mix, latent_k, k_win, v_win, α0, S0; the max m carries none), odd
sizes, T = 1 decode steps (step taken, and the backward recomputing the local / latent outputs the step never
writes: those buffers are NaN under the tests) beside multi-token calls with a cache, packed sequences, W = 0.

On a GPU with flashts._C (``cuda_ext``, skipped here): the real backend against the reference (float32,
bfloat16), the decode step equal to the composed T = 1 forward (FLASHTS_CUDA_DECODE=0), and a prefill + steps
stream equal to one pass.
"""
from __future__ import annotations

import sys
import types

import pytest
import torch

import flashts
from flashts import _backend
from flashts.ops import _fast_step
from flashts.torch_ops import prefix_scan as torch_latte
from flashts.torch_ops import sliding_window as torch_sw
from flashts.torch_ops import step as torch_step
from helpers import check_against_reference, device_for, rel_err

OP = "latte_macchiato_attention"
F64, F32, BF16 = torch.float64, torch.float32, torch.bfloat16
SKIP_MAX = dict(skip_grad_inputs=("initial_state[3]",), skip_grad_outputs=("[1][3]",))
cuda_ext = pytest.mark.cuda_ext


def make_inputs(B, T, H, D, Dv, L, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=F64)  # noqa: E731
    return r(B, T, H, D), r(B, T, H, D), r(B, T, H, Dv), r(B, T, H, L + 1), r(B, T, H, L)


def make_state(N, W, H, D, Dv, L, seed, n=None):
    """A window cache with n valid keys per sequence (default: random in 0..W) and a finite Latte state."""
    g = torch.Generator().manual_seed(seed + 1000)
    n_win = torch.randint(0, W + 1, (N,), generator=g, dtype=torch.int32) if n is None else torch.tensor(
        n, dtype=torch.int32)
    return (torch.randn(N, W, H, D, generator=g, dtype=F64), torch.randn(N, W, H, Dv, generator=g, dtype=F64),
            n_win, 2 * torch.randn(N, H, L, generator=g, dtype=F64), torch.rand(N, H, L, generator=g, dtype=F64) + 0.5,
            torch.randn(N, H, L, Dv, generator=g, dtype=F64))


# ------------------------------------------------------------------------------- the composition on the CPU

def torch_decode_step(q, k, v, mix, latent_k, k_win, v_win, n_win, m0, a0, S0, left, scale):
    """flashts.torch_ops.step.macchiato_step in the interface of flashts.cuda_ops.decode.macchiato_fwd_step."""
    o, (kw, vw, nw, m, a, S) = torch_step.macchiato_step(q[:, 0], k[:, 0], v[:, 0], mix[:, 0], latent_k[:, 0],
                                                         (k_win, v_win, n_win, m0, a0, S0), left=left, scale=scale)
    return o.unsqueeze(1), m, a, S, kw, vw, nw


@pytest.fixture
def composed(monkeypatch):
    """The op's ``torch`` backend replaced by StepComposed(torch cores, torch step) (the CUDA backend's code);
    returns the list of T values the step ran for. The CPU fast step is off, so calls take the custom op."""
    from flashts.cuda_ops.macchiato import StepComposed

    stepped = []

    def step(*args):
        stepped.append(args[0].shape[1])
        return torch_decode_step(*args)

    impl = StepComposed(torch_sw, torch_latte, step=step, use_step=lambda T, given, cu: True)
    mod = types.ModuleType("flashts_test_macchiato_cuda_composed")
    mod.latte_macchiato_attention_fwd, mod.latte_macchiato_attention_bwd = impl.fwd, impl.bwd
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(_backend._IMPLS[OP], "torch", mod.__name__)
    monkeypatch.setattr(_fast_step, "ENABLED", False)
    return stepped


# (B, T, H, D, Dv, L, left, cache fill (None: no state, "rand", "full", "empty"), dtype, steps?)
CPU_CASES = [
    (3, 1, 2, 5, 3, 4, 5, "rand", F64, True),     # decode step: q, k of odd dims, mixed cache fills
    (2, 1, 3, 7, 9, 2, 4, "full", F32, True),
    (2, 1, 1, 3, 5, 3, 0, "empty", F64, True),    # W = 0: the step only mixes the new token and Latte
    (2, 1, 2, 4, 3, 2, 3, "empty", F64, True),
    (2, 13, 2, 5, 3, 4, 5, "rand", F64, False),   # a multi-token call with a cache: composed
    (2, 11, 2, 5, 7, 3, 4, None, F32, False),     # no state
]


@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: f"B{c[0]}-T{c[1]}-W{c[6]}-{c[7]}-{str(c[8])[6:]}")
def test_composition_against_reference(composed, case):
    B, T, H, D, Dv, L, left, fill, dtype, steps = case
    args = make_inputs(B, T, H, D, Dv, L, seed=T + D + left)
    kw = dict(window=(left, 0), output_final_state=fill is not None)
    if fill is not None:
        n = {"full": [left] * B, "empty": [0] * B, "rand": None}[fill]
        kw["initial_state"] = make_state(B, left, H, D, Dv, L, seed=B + Dv, n=n)
    check_against_reference(OP, "torch", args, kw, dtype=dtype, **(SKIP_MAX if fill is not None else {}))
    assert composed == ([1] if steps else [])  # one forward through the backend (the backward recomputes)


def test_composition_packed_and_no_final_state(composed):
    """cu_seqlens (T = 1 packed: one token, a zero-length sequence) never takes the step; without
    output_final_state the step still advances the Latte state internally but returns only y."""
    args = make_inputs(1, 1, 2, 5, 3, 4, seed=3)
    cu = torch.tensor([0, 0, 1], dtype=torch.int32)
    st = make_state(2, 3, 2, 5, 3, 4, seed=4)
    check_against_reference(OP, "torch", args, dict(window=(3, 0), initial_state=st, output_final_state=True,
                                                    cu_seqlens=cu), dtype=F64, **SKIP_MAX)
    assert composed == []
    args = make_inputs(2, 1, 2, 5, 3, 4, seed=5)
    check_against_reference(OP, "torch", args, dict(window=(3, 0), initial_state=make_state(2, 3, 2, 5, 3, 4, 6)),
                            dtype=F64, skip_grad_inputs=("initial_state[3]",))
    assert composed == [1]


def test_step_and_composed_forward_agree(composed):
    """The step path and the composed path of the same StepComposed give the same outputs, states and gradients
    (the backward of a step call recomputes A, lse, Y; NaN-poisoned buffers would show if it did not)."""
    from flashts.cuda_ops.macchiato import StepComposed

    args = make_inputs(3, 1, 2, 6, 5, 3, seed=8)
    st = make_state(3, 4, 2, 6, 5, 3, seed=9)
    g = torch.randn(3, 1, 2, 5, dtype=F64)
    cot = torch.randn(3, 2, 3, dtype=F64), torch.randn(3, 2, 3, 5, dtype=F64)  # of α_T, S_T
    results = []
    for use in (True, False):
        impl = StepComposed(torch_sw, torch_latte, step=torch_decode_step, use_step=lambda *a, _u=use: _u)
        out = impl.fwd(*args, *st, None, 4, 0.37, True)
        o, A, lse, Y = out[:4]
        assert bool(torch.isnan(A).all()) == use  # the step writes no A (NaN-poisoned), the composed path does
        grads = impl.bwd(g, *cot, None, None, *args, A, lse, Y, *st, None, 4, 0.37)
        assert all(x is not None for x in grads)
        results.append([o, *out[4:], *grads])
    for i, (a, b) in enumerate(zip(*results)):
        assert a.dtype == b.dtype and a.shape == b.shape, i
        if a.is_floating_point():
            assert rel_err(a, b) < 1e-12, i
        else:
            assert torch.equal(a, b), i


# ------------------------------------------------------------------------------------------------ no GPU

def test_cuda_backend_is_registered_below_triton():
    assert "cuda" in _backend.implemented(OP)
    ranks = _backend._GPU_RANK[OP]
    assert ranks["cuda"] > ranks["triton"]  # "auto" prefers Triton (no GPU measurement of this backend yet)
    import flashts.cuda_ops.macchiato as impl  # imports without the extension

    assert impl._CUDA.step is not None and impl._CUDA.sw.__name__.endswith("cuda_ops.sliding_window")


# ------------------------------------------------------------------------------------------------ GPU

@cuda_ext
@pytest.mark.parametrize("dtype", [F32, BF16])
@pytest.mark.parametrize("T,left,fill", [(100, 16, None), (37, 8, "rand"), (1, 8, "rand"), (1, 5, "full"),
                                         (1, 0, "empty")])
def test_cuda_against_reference(dtype, T, left, fill):
    args = make_inputs(2, T, 3, 24, 16, 5, seed=T + left)
    kw = dict(window=(left, 0), output_final_state=fill is not None)
    if fill is not None:
        kw["initial_state"] = make_state(2, left, 3, 24, 16, 5, seed=left,
                                         n={"full": [left] * 2, "empty": [0] * 2, "rand": None}[fill])
    check_against_reference(OP, "cuda", args, kw, dtype=dtype, **(SKIP_MAX if fill is not None else {}))


@cuda_ext
def test_cuda_decode_step_equals_composed(monkeypatch):
    dev = device_for("cuda")
    args = [x.to(dev, BF16) for x in make_inputs(4, 1, 2, 32, 16, 6, seed=11)]
    st = [x.to(dev, F32) if x.is_floating_point() else x.to(dev) for x in make_state(4, 12, 2, 32, 16, 6, 12)]
    st[0], st[1] = st[0].to(BF16).float(), st[1].to(BF16).float()  # the composed path rounds the cache to bf16
    outs = []
    for flag in ("1", "0"):
        monkeypatch.setenv("FLASHTS_CUDA_DECODE", flag)
        outs.append(flashts.latte_macchiato_attention(*args, window=(12, 0), initial_state=st,
                                                      output_final_state=True, backend="cuda"))
    (y1, s1), (y0, s0) = outs
    assert rel_err(y1, y0) < 1e-2
    for a, b in zip(s1, s0):
        assert torch.equal(a, b) if not a.is_floating_point() else rel_err(a, b) < 1e-5


@cuda_ext
def test_cuda_stream_equals_one_pass():
    dev = device_for("cuda")
    q, k, v, mix, lk = (x.to(dev, F32) for x in make_inputs(2, 40, 2, 16, 16, 4, seed=13))
    y, st_full = flashts.latte_macchiato_attention(q, k, v, mix, lk, window=(7, 0), output_final_state=True,
                                                   backend="cuda")
    y0, st = flashts.latte_macchiato_attention(q[:, :30], k[:, :30], v[:, :30], mix[:, :30], lk[:, :30],
                                               window=(7, 0), output_final_state=True, backend="cuda")
    ys = [y0]
    for t in range(30, 40):
        yt, st = flashts.latte_macchiato_attention(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], mix[:, t:t + 1],
                                                   lk[:, t:t + 1], window=(7, 0), initial_state=st,
                                                   output_final_state=True, backend="cuda")
        ys.append(yt)
    assert rel_err(torch.cat(ys, 1), y) < 1e-4
    for a, b in zip(st, st_full):
        assert torch.equal(a, b) if not a.is_floating_point() else rel_err(a, b) < 1e-4
