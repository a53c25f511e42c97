"""The ``cuda`` backend end to end WITHOUT a GPU: public ops -> flashts/cuda_ops -> the real binding files of
``csrc/`` (``bindings.cpp``, ``*_bind.cpp``, compiled against the CPU torch) -> the real kernels of ``csrc/*.cu``
run by the CUDA emulation harness (one fiber per CUDA thread). Built by ``tests/emulation/ext_build.py`` (a few
minutes on 2 cores, cached in ``$TMPDIR/flashts-emu``); see that file for what the build stands in for (streams,
device guards and properties; ``is_cuda()`` reads ``is_cpu()``; the CUDA dispatch key is the CPU one).

The per-kernel emulation tests call the launchers directly; these go through everything a user's call goes
through except the GPU itself: argument checks, workspace sizing and allocation, strides and sizes handed to the
launchers, the launchers' plans, GQA sums, autograd, the TORCH_LIBRARY decode-step ops. Every op, forward and every
gradient against ``flashts.reference`` in float64 (NaN-poisoned outputs, conftest), on small odd shapes: both
sliding-window kernel families (FA2 for 16-bit incl. D = 256, generic for float32), linear attention in both
launch modes with states and cu_seqlens, Aaren / Latte (causal and bidirectional) with states, auto-correlation,
Latte Macchiato's composition, and the T = 1 decode steps. A spy on the extension module asserts that the calls
really reached the extension (no silent fallback to another backend).

The whole set of GPU tests (``cuda_ext``) runs the same way with ``FLASHTS_EMULATE_CUDA_EXT=1`` (opt-in, slower).
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

import flashts
from flashts import reference as ref
from helpers import check_against_reference, rel_err

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "emulation"))
import emu_build  # noqa: E402
import ext_build  # noqa: E402

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
CPU = torch.device("cpu")


class Spy:
    """The extension module, recording the names of the functions called through it."""

    def __init__(self, module):
        self._module = module
        self.calls: list[str] = []

    def __getattr__(self, name):
        attr = getattr(self._module, name)
        if not callable(attr) or name.startswith("__"):
            return attr
        calls = self.calls

        def wrapped(*args, **kwargs):
            calls.append(name)
            return attr(*args, **kwargs)
        return wrapped


@pytest.fixture(scope="module")
def ext():
    if emu_build.compiler() is None or emu_build.cuda_include() is None:
        pytest.skip("no host C++ compiler or no CUDA headers (cuda_runtime_api.h)")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the cuda_ext tests run the real extension instead")
    spy = Spy(ext_build.load())
    with ext_build.installed(spy):
        yield spy


@pytest.fixture
def spy(ext):
    ext.calls.clear()
    return ext


def _used(spy, *names):
    for n in names:
        assert n in spy.calls, f"{n} was not called through the extension (calls: {sorted(set(spy.calls))})"


# ------------------------------------------------------------------------------------------ sliding window

SWA_CASES = [
    # B, T, H, Hk, D, Dv, window, dtype, cu_seqlens
    (2, 70, 4, 2, 64, 64, (9, 3), BF16, None),          # FA2 kernels, GQA
    (1, 45, 2, 1, 24, 40, (-1, 0), F16, None),          # FA2, padded head dims
    (1, 33, 2, 2, 256, 256, (5, 5), BF16, None),        # FA2 at D = 256 (two dk/dv column halves)
    (2, 29, 2, 1, 20, 12, (4, -1), F32, None),          # generic kernels (float32: exact FMA)
    (1, 61, 2, 2, 32, 32, (6, 0), BF16, [0, 7, 7, 40, 61]),  # packed sequences (one empty)
]


@pytest.mark.parametrize("B,T,H,Hk,D,Dv,window,dtype,cu", SWA_CASES,
                         ids=[f"T{c[1]}-D{c[4]}x{c[5]}-{str(c[7])[6:]}{'-packed' if c[8] else ''}" for c in SWA_CASES])
def test_sliding_window(spy, B, T, H, Hk, D, Dv, window, dtype, cu):
    q, k, v = torch.randn(B, T, H, D), torch.randn(B, T, Hk, D), torch.randn(B, T, Hk, Dv)
    kw = dict(window=window, return_lse=True)
    if cu is not None:
        kw["cu_seqlens"] = torch.tensor(cu, dtype=torch.int32)
    check_against_reference("sliding_window_attention", "cuda", (q, k, v), kw, dtype=dtype, device=CPU)
    _used(spy, "sliding_window_attention_fwd", "sliding_window_attention_bwd")


# ------------------------------------------------------------------------------------------ linear attention

@pytest.mark.parametrize("mode", ["chunked", "one_pass"])
@pytest.mark.parametrize("causal", [True, False])
def test_linear(spy, monkeypatch, mode, causal):
    from flashts.cuda_ops import linear as impl
    monkeypatch.setattr(impl, "FWD_MODE", mode)
    B, T, H, Hk, D, Dv = 2, 75, 4, 2, 12, 20
    q, k, v = torch.randn(B, T, H, D), torch.randn(B, T, Hk, D), torch.randn(B, T, Hk, Dv)
    kw = dict(causal=causal, output_final_state=True)
    if causal:
        kw["initial_state"] = (torch.randn(B, H, D, Dv), torch.rand(B, H, D) + 0.5)
    check_against_reference("linear_attention", "cuda", (q, k, v), kw, dtype=BF16 if causal else F32, device=CPU)
    _used(spy, "linear_attention_fwd", "linear_attention_bwd")


def test_linear_packed_equals_per_sequence(spy):
    bounds = [0, 9, 9, 50, 51]
    T, H, D, Dv = bounds[-1], 2, 16, 8
    q, k, v = torch.randn(1, T, H, D), torch.randn(1, T, H, D), torch.randn(1, T, H, Dv)
    cu = torch.tensor(bounds, dtype=torch.int32)
    o, (S, z) = flashts.linear_attention(q, k, v, cu_seqlens=cu, output_final_state=True, backend="cuda")
    for n, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        o_n, (S_n, z_n) = ref.linear_attention(*(x[:, a:b].double() for x in (q, k, v)), output_final_state=True)
        if b > a:
            assert rel_err(o[:, a:b], o_n) < 1e-5
        assert rel_err(S[n], S_n[0]) < 1e-5 and rel_err(z[n], z_n[0]) < 1e-5
    _used(spy, "linear_attention_fwd")


# ------------------------------------------------------------------------------------------ Aaren / Latte

SCAN_SKIP = dict(skip_grad_inputs=("initial_state[0]",), skip_grad_outputs=("[1][0]",))


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_aaren(spy, dtype):
    B, T, H, D, Dv = 2, 70, 3, 16, 24
    q, k, v = torch.randn(B, H, D), torch.randn(B, T, H, D), torch.randn(B, T, H, Dv)
    st = (2 * torch.randn(B, H), torch.rand(B, H) + 0.5, torch.randn(B, H, Dv))
    check_against_reference("aaren_attention", "cuda", (q, k, v), dict(initial_state=st, output_final_state=True),
                            dtype=dtype, device=CPU, **SCAN_SKIP)
    _used(spy, "aaren_fwd", "aaren_bwd")


@pytest.mark.parametrize("causal", [True, False])
def test_latte(spy, causal):
    B, T, H, L, Dv = 2, 53, 2, 8, 12
    q, k, v = torch.randn(B, T, H, L), torch.randn(B, T, H, L), torch.randn(B, T, H, Dv)
    kw = dict(causal=causal)
    extra = {}
    if causal:
        kw.update(initial_state=(2 * torch.randn(B, H, L), torch.rand(B, H, L) + 0.5, torch.randn(B, H, L, Dv)),
                  output_final_state=True)
        extra = SCAN_SKIP
    check_against_reference("latte_attention", "cuda", (q, k, v), kw, dtype=F32, device=CPU, **extra)
    _used(spy, "latte_fwd", "latte_bwd")


# ------------------------------------------------------------------------------------------ auto-correlation

@pytest.mark.parametrize("mode", ["train", "infer"])
@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_auto_correlation(spy, mode, dtype):
    B, L, H, E, D = 2, 40, 2, 8, 8  # D·H = 16 channels: the 16-byte aggregate path for bfloat16
    q, k, v = torch.randn(B, L, H, E), torch.randn(B, L, H, E), torch.randn(B, L, H, D)
    check_against_reference("auto_correlation", "cuda", (q, k, v), dict(factor=1.0, mode=mode, return_delays=True),
                            dtype=dtype, device=CPU)
    _used(spy, "autocorr_cross_spectrum", "autocorr_aggregate", "autocorr_delay_grad")


# ------------------------------------------------------------------------------------------ Latte Macchiato

def test_macchiato(spy):
    g = torch.Generator().manual_seed(4)
    B, T, H, D, Dv, L, left = 2, 37, 2, 16, 16, 4, 8
    args = tuple(torch.randn(B, T, H, n, generator=g) for n in (D, D, Dv, L + 1, L))
    st = (torch.randn(B, left, H, D, generator=g), torch.randn(B, left, H, Dv, generator=g),
          torch.tensor([3, left], dtype=torch.int32), 2 * torch.randn(B, H, L, generator=g),
          torch.rand(B, H, L, generator=g) + 0.5, torch.randn(B, H, L, Dv, generator=g))
    check_against_reference("latte_macchiato_attention", "cuda", args,
                             dict(window=(left, 0), initial_state=st, output_final_state=True), dtype=BF16,
                             device=CPU, skip_grad_inputs=("initial_state[3]",), skip_grad_outputs=("[1][3]",))
    _used(spy, "sliding_window_attention_fwd", "sliding_window_attention_bwd", "latte_fwd", "latte_bwd")


# ------------------------------------------------------------------------------------------ T = 1 decode steps

def test_decode_steps_through_the_ops(spy, monkeypatch):
    """T = 1 with a state and backend="cuda": the ops run the one-kernel steps (torch.ops.flashts_cuda, registered
    by the emulated extension's TORCH_LIBRARY); equal to the reference, the caller's state untouched."""
    from flashts.cuda_ops import decode
    steps: list[str] = []
    for name in ("linear_fwd_step", "aaren_fwd_step", "latte_fwd_step"):
        def counted(*a, _f=getattr(decode, name), _n=name, **kw):
            steps.append(_n)
            return _f(*a, **kw)
        monkeypatch.setattr(decode, name, counted)
    g = torch.Generator().manual_seed(2)
    B, H, D = 3, 2, 8
    k, v = torch.randn(B, 1, H, D, generator=g), torch.randn(B, 1, H, D, generator=g)
    cases = [
        ("linear_attention", torch.randn(B, 1, H, D, generator=g),
         (torch.randn(B, H, D, D, generator=g), torch.rand(B, H, D, generator=g) + 1)),
        ("aaren_attention", torch.randn(H, D, generator=g),
         (torch.randn(B, H, generator=g), torch.rand(B, H, generator=g) + 1, torch.randn(B, H, D, generator=g))),
        ("latte_attention", torch.randn(B, 1, H, D, generator=g),
         (torch.randn(B, H, D, generator=g), torch.rand(B, H, D, generator=g) + 1,
          torch.randn(B, H, D, D, generator=g))),
    ]
    for op, q, state in cases:
        o_ref, st_ref = getattr(ref, op)(q.double(), k.double(), v.double(), initial_state=tuple(
            s.double() for s in state), output_final_state=True)
        keep = tuple(s.clone() for s in state)
        o, st = getattr(flashts, op)(q, k, v, initial_state=state, output_final_state=True, backend="cuda")
        assert rel_err(o, o_ref) < 1e-4, op
        assert all(torch.equal(a, b) for a, b in zip(state, keep)), f"{op}: the initial state was modified"
        if op == "linear_attention":
            assert all(rel_err(a, b) < 1e-4 for a, b in zip(st, st_ref))
    assert steps == ["linear_fwd_step", "aaren_fwd_step", "latte_fwd_step"], steps


def test_binding_checks_reach_the_user(spy):
    """The binding's own checks (TORCH_CHECK in csrc/sliding_window_bind.cpp) surface as RuntimeError with their
    message: an lse buffer of the wrong shape, an output of the wrong dtype."""
    q = torch.randn(1, 5, 1, 8)
    o, lse = torch.empty(1, 5, 1, 8), torch.empty(1, 1, 5)
    spy.sliding_window_attention_fwd(q, q, q, None, 5, 2, 0, 0.5, o, lse)  # well-formed: runs
    assert torch.isfinite(o).all() and torch.isfinite(lse).all()
    with pytest.raises(RuntimeError, match="lse must be a contiguous Float tensor"):
        spy.sliding_window_attention_fwd(q, q, q, None, 5, 2, 0, 0.5, o, torch.empty(1, 5, 1))
    with pytest.raises(RuntimeError):
        spy.sliding_window_attention_fwd(q, q, q, None, 5, 2, 0, 0.5, o.to(F64), lse)


def test_ring_and_macchiato_steps(spy):
    """The other two registered steps: the sliding-window ring buffer over several steps (wrapping around) and
    Latte Macchiato's T = 1 call with a state (the op's cuda backend runs macchiato_decode_step)."""
    from flashts.cuda_ops import decode
    g = torch.Generator().manual_seed(8)
    B, T, H, Hk, D, Dv, W = 2, 9, 4, 2, 16, 8, 4
    q, k, v = (torch.randn(B, T, h, d, generator=g) for h, d in ((H, D), (Hk, D), (Hk, Dv)))
    o_ref = ref.sliding_window_attention(q.double(), k.double(), v.double(), window=(W - 1, 0))
    kc, vc = torch.full((B, W, Hk, D), float("nan")), torch.full((B, W, Hk, Dv), float("nan"))
    pos = torch.zeros(B, dtype=torch.int64)
    for t in range(T):
        o = decode.swa_ring_step(q[:, t], k[:, t], v[:, t], kc, vc, pos)
        assert rel_err(o, o_ref[:, t]) < 1e-4, t
    assert pos.tolist() == [T] * B

    L, left = 3, 5
    args = tuple(torch.randn(B, 1, H, n, generator=g) for n in (D, D, Dv, L + 1, L))
    st = (torch.randn(B, left, H, D, generator=g), torch.randn(B, left, H, Dv, generator=g),
          torch.tensor([2, left], dtype=torch.int32), torch.randn(B, H, L, generator=g),
          torch.rand(B, H, L, generator=g) + 0.5, torch.randn(B, H, L, Dv, generator=g))
    for b in range(B):  # the window cache holds its n_win keys at the end
        st[0][b, :left - int(st[2][b])] = 0
        st[1][b, :left - int(st[2][b])] = 0
    y_ref, s_ref = ref.latte_macchiato_attention(*(x.double() for x in args), window=(left, 0), initial_state=tuple(
        x.double() if x.is_floating_point() else x for x in st), output_final_state=True)
    calls = len(spy.calls)
    y, s = flashts.latte_macchiato_attention(*args, window=(left, 0), initial_state=st, output_final_state=True,
                                             backend="cuda")
    assert rel_err(y, y_ref) < 1e-4
    assert torch.equal(s[2], s_ref[2]) and all(rel_err(a, b) < 1e-4 for a, b in zip(s, s_ref) if a.is_floating_point())
    assert len(spy.calls) == calls, "the T = 1 call with a state should be one decode-step op, not the kernels"
