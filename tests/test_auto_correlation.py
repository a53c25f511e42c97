"""Tests of auto_correlation (SPEC §3): every backend against flashts.reference, plus the Autoformer baseline.

Near-ties in top-K: float32 FFT rounding (relative ~1e-7 of the correlation scale) could reorder two nearly
equal correlations relative to the float64 reference. ``_inputs`` therefore draws inputs (deterministically,
from the per-test seed) whose float64 decision margin — the smallest gap between consecutive sorted
correlations among the top K+1 — is at least ``MARGIN`` times the spread of r; and ``_check`` first compares
the selected delays with the reference and fails with an explicit message if they differ.
"""
from __future__ import annotations

import importlib.util
import math
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

import flashts
from flashts import _backend, reference
from flashts.torch_ops import auto_correlation as torch_impl
from helpers import backends_for, check_against_reference, device_for, rel_err

OP = "auto_correlation"
BACKENDS = backends_for(OP, interpreted=False)
DTYPES = [torch.float64, torch.float32]
MODES = ["train", "infer"]
MARGIN = 1e-4  # min gap between consecutive top-(K+1) correlations, relative to std(r)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cases(dtypes, *, heavy=False):
    """(backend, dtype) pairs: float64 only on the torch backend (the GPU backends take fp32/fp16/bf16).
    ``heavy``: leave out backends that run under the Triton interpreter (too slow there; the triton backend's
    own file tests the same features at smaller sizes); they run on a GPU."""
    out = [(b, d) for b in BACKENDS for d in dtypes if b == "torch" or d != torch.float64]
    if heavy and _backend.triton_interpreter():
        out = [(b, d) for b, d in out if b not in ("triton",)]
    return out


def _exact_dtype(backend):
    """dtype for the tests with hand-made inputs: float64 on torch, float32 on the GPU backends."""
    return torch.float64 if backend == "torch" else torch.float32


def _load_baseline():
    spec = importlib.util.spec_from_file_location("autoformer_original", ROOT / "bench" / "autoformer_original.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.autoformer_auto_correlation


# ----------------------------------------------------------------------------- input construction

def _mean_corr64(q, k):
    """r [B, L] of SPEC §3 steps 1-3 in float64 (the reference's own correlation)."""
    L = q.shape[1]
    qf = torch.fft.rfft(q.double(), n=L, dim=1)
    kf = torch.fft.rfft(k.double(), n=L, dim=1)
    return torch.fft.irfft((qf * kf.conj()).mean(dim=(2, 3)), n=L, dim=1)


def _selection_margin(q, k, top_k, mode):
    """Smallest gap between consecutive sorted correlations among the top K+1, relative to std(r)."""
    r = _mean_corr64(q, k)
    L = r.shape[1]
    if L == 1:
        return math.inf
    rows = r.mean(dim=0, keepdim=True) if mode == "train" else r
    s = torch.sort(rows, dim=-1, descending=True).values
    n = min(top_k + 1, L)
    gaps = s[:, : n - 1] - s[:, 1:n]
    scale = r.std().item() if r.numel() > 1 else 1.0
    return gaps.min().item() / max(scale, 1e-30)


def _inputs(B, L, S, H, E, D, *, factor=1.0, mode="train", dtype=torch.float64, periodic=False):
    """Random q, k, v (float64, rounded to ``dtype`` first) whose top-K selection is robust to rounding."""
    top_k = min(L, max(1, int(factor * math.log(L))))
    for _ in range(50):
        q = torch.randn(B, L, H, E, dtype=torch.float64)
        k = torch.randn(B, S, H, E, dtype=torch.float64)
        v = torch.randn(B, S, H, D, dtype=torch.float64)
        if periodic:  # a shared period makes well separated correlation peaks
            period = max(2, L // 7)
            tq = torch.arange(L, dtype=torch.float64)
            tk = torch.arange(S, dtype=torch.float64)
            q = q + torch.sin(2 * math.pi * tq / period)[None, :, None, None]
            k = k + torch.sin(2 * math.pi * tk / period)[None, :, None, None]
        # scale q, k so that r has std ~ 2 whatever L, H, E (as after a model's projections); the softmax
        # is sensitive to ABSOLUTE errors of r, and float32 FFT errors grow with |r|
        c = (2.0 * math.sqrt(H * E / L)) ** 0.5
        q, k = q * c, k * c
        q, k, v = (x.to(dtype).double() for x in (q, k, v))
        if _selection_margin(q, k, top_k, mode) >= MARGIN:
            return q, k, v
    raise AssertionError(f"could not draw inputs with a top-{top_k} margin >= {MARGIN} (L={L}, mode={mode})")


def _check_delays(backend, q, k, v, dtype, factor, mode):
    """Delays of the backend run in ``dtype`` == delays of the float64 reference on the same rounded inputs."""
    dev = device_for(backend)
    with torch.no_grad():
        _, (d_mine, _) = flashts.auto_correlation(q.to(dev, dtype), k.to(dev, dtype), v.to(dev, dtype), factor=factor,
                                                   mode=mode, return_delays=True, backend=backend)
        _, (d_ref, _) = reference.auto_correlation(q, k, v, factor=factor, mode=mode, return_delays=True)
    assert torch.equal(d_mine.cpu(), d_ref), (
        f"selected delays differ from the float64 reference ({backend}, {dtype}, mode={mode}, factor={factor}): "
        f"{d_mine.tolist()} vs {d_ref.tolist()} — near-tie in the correlations or a real bug")


def _check(backend, q, k, v, dtype, *, factor=1.0, mode="train", return_delays=False, **kw):
    _check_delays(backend, q, k, v, dtype, factor, mode)
    return check_against_reference(OP, backend, (q, k, v),
                                   dict(factor=factor, mode=mode, return_delays=return_delays), dtype=dtype, **kw)


# ----------------------------------------------------------------------------- against the reference

# (B, L, S, H, E, D): odd L (1, 2, 17, 97), L > S, L < S, E != D
SHAPES = [
    (2, 1, 1, 2, 3, 4),
    (2, 2, 2, 1, 5, 7),
    (3, 17, 17, 2, 5, 7),
    (2, 97, 97, 2, 4, 3),
    (2, 17, 9, 2, 5, 7),      # L > S: k, v zero-padded
    (2, 97, 40, 1, 3, 6),
    (2, 9, 17, 2, 5, 7),      # L < S: k, v truncated
    (2, 17, 40, 3, 2, 16),
    (1, 2, 5, 1, 1, 1),
    (2, 16, 16, 2, 16, 16),   # even L: Nyquist bin
]


@pytest.mark.parametrize("backend,dtype", _cases(DTYPES), ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_L{}_S{}_H{}_E{}_D{}".format(*s))
def test_shapes(backend, dtype, mode, shape):
    q, k, v = _inputs(*shape, mode=mode, dtype=dtype)
    _check(backend, q, k, v, dtype, mode=mode, return_delays=True)


FACTORS = [0.5, 1.0, 3.0, 10.0]  # 10 · ln 17 ≈ 28 > 17: K == L


@pytest.mark.parametrize("backend,dtype", _cases(DTYPES), ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("return_delays", [False, True])
def test_factor(backend, dtype, mode, factor, return_delays):
    B, L, S, H, E, D = 3, 17, 12, 2, 3, 5
    q, k, v = _inputs(B, L, S, H, E, D, factor=factor, mode=mode, dtype=dtype)
    if return_delays:
        dev = device_for(backend)
        _, (delays, weights) = flashts.auto_correlation(q.to(dev, dtype), k.to(dev, dtype), v.to(dev, dtype),
                                                        factor=factor, mode=mode, return_delays=True, backend=backend)
        K = min(L, max(1, int(factor * math.log(L))))
        assert delays.shape == (B, K) and delays.dtype == torch.int64 and weights.shape == (B, K)
        if factor == 10.0:
            assert K == L and sorted(delays[0].tolist()) == list(range(L))
    _check(backend, q, k, v, dtype, factor=factor, mode=mode, return_delays=return_delays)


@pytest.mark.parametrize("backend,dtype", _cases(DTYPES, heavy=True), ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_all_delays_long(backend, dtype, mode):
    """K == L at L = 97 (factor 100): every delay, ordered by correlation; periodic inputs."""
    q, k, v = _inputs(2, 97, 97, 1, 2, 3, factor=100.0, mode=mode, dtype=dtype, periodic=True)
    _check(backend, q, k, v, dtype, factor=100.0, mode=mode, return_delays=True)


@pytest.mark.parametrize("backend,dtype", _cases(DTYPES, heavy=True), ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_long_720(backend, dtype, mode):
    """Autoformer's usual horizon, L = 720 (kept cheap: H=1, E=2, D=3), with L > S."""
    q, k, v = _inputs(2, 720, 500, 1, 2, 3, factor=3.0, mode=mode, dtype=dtype, periodic=True)
    _check(backend, q, k, v, dtype, factor=3.0, mode=mode, return_delays=True)


@pytest.mark.parametrize("backend,dtype", _cases(DTYPES), ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_gradient_through_weights_only(backend, dtype, mode):
    """Cotangent on the returned weights only (o unused): the gradient reaches q and k through the softmax."""
    q, k, v = _inputs(2, 17, 17, 2, 3, 4, factor=2.0, mode=mode, dtype=dtype)
    errs = _check(backend, q, k, v, dtype, factor=2.0, mode=mode, return_delays=True,
                  skip_grad_outputs=("[0]",))
    assert "grad[0][0]" in errs and "grad[0][1]" in errs  # dq, dk compared (dv is zero)

    # and the loss really depends on q through the weights (the check above is not vacuous)
    dev = device_for(backend)
    qq = q.to(dev, dtype).clone().requires_grad_(True)
    _, (_, w) = flashts.auto_correlation(qq, k.to(dev, dtype), v.to(dev, dtype), factor=2.0, mode=mode,
                                         return_delays=True, backend=backend)
    (g,) = torch.autograd.grad((w * torch.randn_like(w)).sum(), qq)
    assert g.abs().max() > 0


@pytest.mark.parametrize("backend,dtype", _cases([torch.float16, torch.bfloat16]), ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_half_precision(backend, dtype, mode):
    """float16/bfloat16 inputs: float32 inside, output in the input dtype."""
    q, k, v = _inputs(2, 33, 20, 2, 4, 6, mode=mode, dtype=dtype)
    _check(backend, q, k, v, dtype, mode=mode, return_delays=True)


@pytest.mark.parametrize("backend,dtype", _cases(DTYPES), ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_huge_correlations(backend, dtype, mode):
    """|r| ~ 1e4 (softmax logits of ±1e4): finite, one-hot weights, right output and dv; dq, dk finite."""
    B, L, H, E, D = 2, 23, 2, 4, 3
    q, k, v = _inputs(B, L, L, H, E, D, factor=3.0, mode=mode, dtype=dtype)
    scale = 100.0 / (2.0 * math.sqrt(H * E / L)) ** 0.5  # undo _inputs' scaling, then ×100: r std ~ 1e4
    q, k = (q * scale).to(dtype).double(), (k * scale).to(dtype).double()
    r = _mean_corr64(q, k)
    assert r.abs().max() > 5e3
    # compare o and dv (dq, dk are ~exp(-1e4) relative to the other terms: compared in float64 only)
    skip = () if dtype == torch.float64 else ("[0][0]", "[0][1]")
    _check(backend, q, k, v, dtype, factor=3.0, mode=mode, return_delays=True, skip_grad_inputs=skip)
    dev = device_for(backend)
    qq = q.to(dev, dtype).clone().requires_grad_(True)
    kk = k.to(dev, dtype).clone().requires_grad_(True)
    o, (_, w) = flashts.auto_correlation(qq, kk, v.to(dev, dtype), factor=3.0, mode=mode, return_delays=True,
                                         backend=backend)
    assert torch.isfinite(o).all() and torch.isfinite(w).all()
    assert torch.allclose(w.max(dim=-1).values, torch.ones(B, dtype=w.dtype, device=w.device))
    dq, dk = torch.autograd.grad((o * torch.randn_like(o)).sum() + (w * torch.randn_like(w)).sum(), (qq, kk))
    assert torch.isfinite(dq).all() and torch.isfinite(dk).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_non_contiguous_inputs(backend, mode):
    B, L, H, E, D = 2, 19, 3, 4, 5
    dt = _exact_dtype(backend)
    q = torch.randn(B, H, L, E, dtype=torch.float64).to(dt).double().transpose(1, 2)
    k = torch.randn(B, E, L, H, dtype=torch.float64).to(dt).double().permute(0, 2, 3, 1)
    v = torch.randn(B, L, H, 2 * D, dtype=torch.float64).to(dt).double()[..., ::2]
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    _check(backend, q, k, v, dt, mode=mode, return_delays=True)


# ----------------------------------------------------------------------------- semantics and contract

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_known_shift(backend, mode):
    """k = q shifted by s0 in time ⇒ the strongest delay is τ = s0 and, with K = 1, o[t] = v[t + s0 mod L]."""
    B, L, H, E, D, s0 = 2, 31, 2, 8, 3, 5
    dev, dt = device_for(backend), _exact_dtype(backend)
    q = torch.randn(B, L, H, E, dtype=dt, device=dev)
    k = torch.roll(q, -s0, dims=1)  # k[t] = q[t + s0]  ⇒  R(τ) = Σ_t q[t+τ]·q[t+s0] peaks at τ = s0
    v = torch.randn(B, L, H, D, dtype=dt, device=dev)
    o, (delays, weights) = flashts.auto_correlation(q, k, v, factor=0.1, mode=mode, return_delays=True,
                                                    backend=backend)
    assert delays.tolist() == [[s0]] * B
    assert torch.equal(weights, torch.ones_like(weights))
    torch.testing.assert_close(o, torch.roll(v, -s0, dims=1), rtol=1e-12, atol=1e-12)  # w = 1 exactly


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_shares_infer_does_not(backend):
    """train: one delay set for the batch; infer: each sample its own top-K."""
    B, L, H, E, D = 2, 40, 1, 4, 2
    dev, dt = device_for(backend), _exact_dtype(backend)
    q = torch.randn(B, L, H, E, dtype=torch.float64).to(dt).double()
    k = torch.stack([torch.roll(q[0], 3, dims=0), torch.roll(q[1], 11, dims=0)])  # peaks at −3 and −11 (mod L)
    v = torch.randn(B, L, H, D, dtype=torch.float64).to(dt).double()
    q, k, v = (x.to(dev, dt) for x in (q, k, v)) if backend != "torch" else (q, k, v)
    _, (d_train, _) = flashts.auto_correlation(q, k, v, factor=0.3, mode="train", return_delays=True, backend=backend)
    _, (d_infer, _) = flashts.auto_correlation(q, k, v, factor=0.3, mode="infer", return_delays=True, backend=backend)
    assert d_infer[:, 0].tolist() == [L - 3, L - 11]
    assert d_train[0].tolist() == d_train[1].tolist()
    ref_train = reference.auto_correlation(q.cpu().double(), k.cpu().double(), v.cpu().double(), factor=0.3,
                                           mode="train", return_delays=True)[1][0]
    assert torch.equal(d_train.cpu(), ref_train)


@pytest.mark.parametrize("dtype", DTYPES + [torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("L,S", [(17, 17), (17, 9), (9, 17)])
def test_backend_functions_contract(dtype, mode, L, S):
    """torch backend fwd/bwd directly: dtypes, shapes, new tensors only, dweights=None == zeros."""
    B, H, E, D = 2, 2, 3, 5
    q = torch.randn(B, L, H, E).to(dtype)
    k = torch.randn(B, S, H, E).to(dtype)
    v = torch.randn(B, S, H, D).to(dtype)
    K = min(L, max(1, int(2.0 * math.log(L))))
    o, delays, weights = torch_impl.auto_correlation_fwd(q, k, v, K, mode)
    wdt = torch.float64 if dtype == torch.float64 else torch.float32
    assert o.dtype == dtype and o.shape == (B, L, H, D)
    assert delays.dtype == torch.int64 and delays.shape == (B, K) and delays.is_contiguous()
    assert weights.dtype == wdt and weights.shape == (B, K)
    do = torch.randn(B, L, H, D).to(dtype)
    dq, dk, dv = torch_impl.auto_correlation_bwd(do, None, q, k, v, delays, weights, K, mode)
    dq0, dk0, dv0 = torch_impl.auto_correlation_bwd(do, torch.zeros_like(weights), q, k, v, delays, weights, K, mode)
    for g, x, g0 in ((dq, q, dq0), (dk, k, dk0), (dv, v, dv0)):
        assert g.dtype == x.dtype and g.shape == x.shape
        assert torch.equal(g, g0)
    ins = {t.data_ptr() for t in (q, k, v, do)}
    assert not any(t.data_ptr() in ins for t in (o, delays, weights, dq, dk, dv))
    if S > L:  # steps beyond L are dropped by the alignment: zero gradient
        assert torch.all(dk[:, L:] == 0) and torch.all(dv[:, L:] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_validation(backend):
    q = torch.randn(1, 8, 2, 3)
    k = torch.randn(1, 8, 2, 3)
    v = torch.randn(1, 8, 2, 4)
    for factor in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="factor"):
            flashts.auto_correlation(q, k, v, factor=factor, backend=backend)
    with pytest.raises(ValueError, match="mode"):
        flashts.auto_correlation(q, k, v, mode="eval", backend=backend)
    with pytest.raises(ValueError, match="channels"):
        flashts.auto_correlation(q, k[..., :2], v, backend=backend)
    with pytest.raises(ValueError, match="time lengths"):
        flashts.auto_correlation(q, k, v[:, :5], backend=backend)
    with pytest.raises(TypeError):
        flashts.auto_correlation(q.long(), k, v, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fullgraph", [False, True])
def test_torch_compile(backend, fullgraph):
    """The custom op traces under torch.compile (aot_eager: no C++ toolchain needed); fullgraph = no graph break."""
    dt = _exact_dtype(backend)
    q, k, v = (torch.randn(2, 17, 2, 3, dtype=dt, device=device_for(backend), requires_grad=True) for _ in range(3))

    def f(q, k, v):
        o, (delays, weights) = flashts.auto_correlation(q, k, v, factor=2.0, mode="infer", return_delays=True,
                                                        backend=backend)
        return o, delays, weights

    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=fullgraph)
    o, delays, weights = compiled(q, k, v)
    o_ref, delays_ref, weights_ref = f(q, k, v)
    tol = 1e-12 if dt == torch.float64 else 1e-6
    torch.testing.assert_close(o, o_ref, rtol=tol, atol=tol)
    assert torch.equal(delays, delays_ref)
    cot_o, cot_w = torch.randn_like(o), torch.randn_like(weights)
    g = torch.autograd.grad((o * cot_o).sum() + (weights * cot_w).sum(), (q, k, v))
    g_ref = torch.autograd.grad((o_ref * cot_o).sum() + (weights_ref * cot_w).sum(), (q, k, v))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- the Autoformer baseline

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(2, 17, 17, 2, 3, 5), (2, 17, 9, 2, 3, 5), (2, 9, 17, 3, 4, 2),
                                   (3, 24, 24, 1, 2, 2), (1, 1, 3, 1, 1, 1)],
                         ids=lambda s: "B{}_L{}_S{}_H{}_E{}_D{}".format(*s))
@pytest.mark.parametrize("factor", [1.0, 3.0])
def test_baseline_matches_reference(mode, shape, factor):
    """bench/autoformer_original.py (roll / gather loops of the original) == flashts.reference, outputs and grads."""
    baseline = _load_baseline()
    q, k, v = _inputs(*shape, factor=factor, mode=mode)
    leaves_b = [x.clone().requires_grad_(True) for x in (q, k, v)]
    leaves_r = [x.clone().requires_grad_(True) for x in (q, k, v)]
    o_b = baseline(*leaves_b, factor=factor, mode=mode)
    o_r = reference.auto_correlation(*leaves_r, factor=factor, mode=mode)
    assert o_b.shape == o_r.shape and o_b.dtype == o_r.dtype
    assert rel_err(o_b, o_r) < 1e-12
    cot = torch.randn_like(o_r)
    g_b = torch.autograd.grad((o_b * cot).sum(), leaves_b)
    g_r = torch.autograd.grad((o_r * cot).sum(), leaves_r)
    for name, a, b in zip("qkv", g_b, g_r):
        assert rel_err(a, b) < 1e-12, f"grad {name}: {rel_err(a, b):.2e}"
    if min(shape[1], max(1, int(factor * math.log(shape[1])))) > 1:
        assert g_b[0].abs().max() > 0  # gradient reaches q through the weights (K > 1)


# ----------------------------------------------------------------------------- memory (acceptance)

_MEMORY_SCRIPT = textwrap.dedent("""
    import sys, time, torch, flashts
    def hwm_kb():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1])
    torch.manual_seed(0)
    B, T, H, E, D = 1, 32768, 2, 16, 16
    mode = sys.argv[1]
    q, k, v = (torch.randn(B, T, H, d, dtype=torch.float64, requires_grad=True) for d in (E, E, D))
    flashts.auto_correlation(q[:, :64], k[:, :64], v[:, :64], mode=mode, backend="torch").sum().backward()  # warm-up
    q.grad = k.grad = v.grad = None
    before = hwm_kb()
    t0 = time.perf_counter()
    o = flashts.auto_correlation(q, k, v, mode=mode, backend="torch")
    o.backward(torch.randn_like(o))
    seconds = time.perf_counter() - t0
    print(mode, (hwm_kb() - before) / 1024, seconds)
""")


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_memory_long_sequence(mode):
    """Acceptance: float64, B=1, H=2, E=D=16, T=32768, forward+backward: < 1 GB extra peak RSS over the
    inputs (fresh process per mode, after a small warm-up call) and well under a minute."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, mode], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    got_mode, extra_mb, seconds = out.stdout.split()[-3:]
    assert got_mode == mode, out.stdout
    assert float(extra_mb) < 1024, f"{mode}: peak RSS grew by {float(extra_mb):.0f} MB"
    assert float(seconds) < 60, f"{mode}: forward+backward took {float(seconds):.1f} s"
