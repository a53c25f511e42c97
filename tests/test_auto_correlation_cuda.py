"""Tests of the ``cuda`` backend of auto_correlation (SPEC §3; csrc/auto_correlation.cu, flashts/cuda_ops).

Marked ``cuda_ext``: they run where a GPU and the compiled ``flashts._C`` exist and skip (with the reason)
elsewhere. tests/conftest.py sets FLASHTS_POISON=1, so every output buffer the backend allocates with
``new_empty`` starts as NaN and an element a kernel forgets to write fails the finiteness checks.

* End to end against flashts.reference (float64) through ``check_against_reference`` — outputs (o, delays,
  weights) and the gradients of q, k, v — for float32 / float16 / bfloat16, both modes, L = S, L > S, L < S,
  E ≠ D, odd sizes, K from 1 to L, cotangents on o and/or the weights, |r| ~ 1e4, non-contiguous inputs.
  Inputs come from test_auto_correlation's tie-avoiding generator and the selected delays are compared first
  (with the reference and with the torch backend) so that a near-tie is reported as such.
* Sizes that cross every kernel edge: H·D wider than one channel tile (16 threads × 16-byte vectors), K above
  one shared-memory stage of delays (64) and above one delay-dots chunk (8), several time tiles (32 rows), L = 1.
* Each launcher against plain torch (aggregate with sign ±1 and the alignment rows, delay dots, the spectrum
  kernels); the backend functions' contract; deterministic backward; a stride-0 cotangent.
"""
from __future__ import annotations

import math

import pytest
import torch

import flashts
from flashts import reference
from helpers import check_against_reference, device_for, rel_err
from test_auto_correlation import _check_delays, _inputs

pytestmark = pytest.mark.cuda_ext

OP = "auto_correlation"
BACKEND = "cuda"
DEV = device_for(BACKEND)
MODES = ["train", "infer"]
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


def _impl():
    from flashts.cuda_ops import auto_correlation as impl
    return impl


def _ext():
    from flashts.cuda_ops import extension
    return extension()


def _check(q, k, v, dtype, *, factor=1.0, mode="train", return_delays=True, **kw):
    """Delays == the float64 reference AND the torch backend's, then outputs and gradients vs the reference."""
    _check_delays(BACKEND, q, k, v, dtype, factor, mode)
    with torch.no_grad():
        args = [x.to(DEV, dtype) for x in (q, k, v)]
        _, (d_cuda, _) = flashts.auto_correlation(*args, factor=factor, mode=mode, return_delays=True, backend=BACKEND)
        _, (d_torch, _) = flashts.auto_correlation(*(x.cpu() for x in args), factor=factor, mode=mode,
                                                   return_delays=True, backend="torch")
    assert torch.equal(d_cuda.cpu(), d_torch), f"delays differ from the torch backend: {d_cuda} vs {d_torch}"
    return check_against_reference(OP, BACKEND, (q, k, v), dict(factor=factor, mode=mode, return_delays=return_delays),
                                   dtype=dtype, **kw)


# ----------------------------------------------------------------------------- against the reference

# (B, L, S, H, E, D): L = 1, 2, odd, even (Nyquist bin); L > S, L < S; E ≠ D
SHAPES = [
    (2, 1, 1, 2, 3, 4),
    (2, 2, 5, 1, 5, 7),       # L < S
    (3, 17, 17, 2, 5, 7),
    (2, 16, 16, 2, 16, 16),   # even L
    (2, 70, 40, 2, 3, 6),     # L > S: rows ≥ S of v read as 0, rows ≥ L of nothing
    (2, 33, 70, 1, 4, 5),     # L < S: dv, dk rows ≥ L are zero
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_L{}_S{}_H{}_E{}_D{}".format(*s))
def test_shapes_float32(mode, shape):
    q, k, v = _inputs(*shape, mode=mode, dtype=F32)
    _check(q, k, v, F32, mode=mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("factor,return_delays", [(0.3, True), (3.0, False), (10.0, True)])
def test_factor(mode, factor, return_delays):
    """K = 1 (factor 0.3), K = 8, K = L = 17 (factor 10); with and without the weights as an output."""
    q, k, v = _inputs(3, 17, 12, 2, 3, 5, factor=factor, mode=mode, dtype=F32)
    _check(q, k, v, F32, factor=factor, mode=mode, return_delays=return_delays)


@pytest.mark.parametrize("mode", MODES)
def test_kernel_edges(mode):
    """H·D = 2·300 = 600 > 512 (two aggregation passes per row), L·H·D = 180000 (11 row chunks of delay-dot
    partials per (b, i)), L > S. (K > 256 staged delays: test_aggregate_launcher_many_delays.)"""
    q, k, v = _inputs(2, 300, 280, 2, 3, 300, factor=3.0, mode=mode, dtype=F32, periodic=True)
    _check(q, k, v, F32, factor=3.0, mode=mode)


@pytest.mark.parametrize("mode", MODES)
def test_long_720(mode):
    """Autoformer's usual horizon, L = 720 with L > S (H = 1, E = 2, D = 3)."""
    q, k, v = _inputs(2, 720, 500, 1, 2, 3, factor=3.0, mode=mode, dtype=F32, periodic=True)
    _check(q, k, v, F32, factor=3.0, mode=mode)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_half_precision(dtype, mode):
    """float16/bfloat16 inputs: float32 inside, o and the gradients in the input dtype."""
    q, k, v = _inputs(2, 33, 20, 2, 4, 6, mode=mode, dtype=dtype)
    _check(q, k, v, dtype, mode=mode)


@pytest.mark.parametrize("mode", MODES)
def test_gradient_through_weights_only(mode):
    """Cotangent on the returned weights only: dq, dk through the softmax and the spectrum kernels; dv = 0."""
    q, k, v = _inputs(2, 17, 17, 2, 3, 4, factor=2.0, mode=mode, dtype=F32)
    errs = _check(q, k, v, F32, factor=2.0, mode=mode, skip_grad_outputs=("[0]",))
    assert "grad[0][0]" in errs and "grad[0][1]" in errs
    qq = q.to(DEV, F32).requires_grad_(True)
    _, (_, w) = flashts.auto_correlation(qq, k.to(DEV, F32), v.to(DEV, F32), factor=2.0, mode=mode,
                                         return_delays=True, backend=BACKEND)
    (g,) = torch.autograd.grad((w * torch.randn_like(w)).sum(), qq)
    assert g.abs().max() > 0


@pytest.mark.parametrize("mode", MODES)
def test_huge_correlations(mode):
    """|r| ~ 1e4 (softmax logits of ±1e4): finite one-hot weights, right o and dv; dq, dk finite."""
    B, L, H, E, D = 2, 23, 2, 4, 3
    q, k, v = _inputs(B, L, L, H, E, D, factor=3.0, mode=mode, dtype=F32)
    scale = 100.0 / (2.0 * math.sqrt(H * E / L)) ** 0.5
    q, k = (q * scale).float().double(), (k * scale).float().double()
    _check(q, k, v, F32, factor=3.0, mode=mode, skip_grad_inputs=("[0][0]", "[0][1]"))
    qq = q.to(DEV, F32).requires_grad_(True)
    kk = k.to(DEV, F32).requires_grad_(True)
    o, (_, w) = flashts.auto_correlation(qq, kk, v.to(DEV, F32), factor=3.0, mode=mode, return_delays=True,
                                         backend=BACKEND)
    assert torch.isfinite(o).all() and torch.isfinite(w).all()
    assert torch.allclose(w.max(dim=-1).values, torch.ones(B, dtype=w.dtype, device=w.device))
    dq, dk = torch.autograd.grad((o * torch.randn_like(o)).sum() + (w * torch.randn_like(w)).sum(), (qq, kk))
    assert torch.isfinite(dq).all() and torch.isfinite(dk).all()


@pytest.mark.parametrize("mode", MODES)
def test_non_contiguous_inputs(mode):
    B, L, H, E, D = 2, 19, 3, 4, 5
    q = torch.randn(B, H, L, E, dtype=torch.float64).transpose(1, 2)
    k = torch.randn(B, E, L, H, dtype=torch.float64).permute(0, 2, 3, 1)
    v = torch.randn(B, L, H, 2 * D, dtype=torch.float64)[..., ::2]
    q, k, v = (x.float().double() for x in (q, k, v))
    # check_against_reference moves (and so may compact) the inputs; call the backend on strided CUDA views too
    _check(q, k, v, F32, mode=mode)
    qd = torch.randn(B, H, L, E, device=DEV).transpose(1, 2)
    vd = torch.randn(B, L, H, 2 * D, device=DEV)[..., ::2]
    o = flashts.auto_correlation(qd, qd, vd, mode=mode, backend=BACKEND)
    o_ref = flashts.auto_correlation(qd.contiguous(), qd.contiguous(), vd.contiguous(), mode=mode, backend=BACKEND)
    assert rel_err(o, o_ref) < 1e-6


def test_stride0_cotangent_and_determinism():
    """A cotangent expanded from [1, L, 1, 1] (stride 0 over b, h, d; not constant in t, so dq, dk ≠ 0);
    two backward passes are bitwise equal (no atomics)."""
    q, k, v = (x.to(DEV, F32) for x in _inputs(2, 40, 40, 2, 3, 5, factor=2.0, mode="infer", dtype=F32))
    cot = torch.randn(1, 40, 1, 1, device=DEV)

    def grads():
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
        o = flashts.auto_correlation(*leaves, factor=2.0, mode="infer", backend=BACKEND)
        g = cot.expand_as(o)
        assert g.stride()[0] == 0
        o.backward(g)
        return [x.grad for x in leaves]

    g1, g2 = grads(), grads()
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)
    leaves = [x.double().cpu().requires_grad_(True) for x in (q, k, v)]
    o_ref = reference.auto_correlation(*leaves, factor=2.0, mode="infer")
    o_ref.backward(cot.double().cpu().expand_as(o_ref))
    for a, b in zip(g1, leaves):
        assert b.grad.abs().max() > 1e-3
        assert rel_err(a.cpu(), b.grad) < 1e-4


@pytest.mark.parametrize("mode", MODES)
def test_known_shift(mode):
    """k = q shifted by s0 ⇒ delay s0 with weight 1 and o[t] = v[t + s0 mod L] exactly (one-hot aggregation)."""
    B, L, H, E, D, s0 = 2, 31, 2, 8, 3, 5
    q = torch.randn(B, L, H, E, device=DEV)
    k = torch.roll(q, -s0, dims=1)
    v = torch.randn(B, L, H, D, device=DEV)
    o, (delays, weights) = flashts.auto_correlation(q, k, v, factor=0.1, mode=mode, return_delays=True,
                                                    backend=BACKEND)
    assert delays.tolist() == [[s0]] * B
    assert torch.equal(weights, torch.ones_like(weights))
    assert torch.equal(o, torch.roll(v, -s0, dims=1))


# ----------------------------------------------------------------------------- each launcher vs plain torch

def _shift_sum(x, delays, weights, sign, L, T_out):
    """out[b, t] = Σ_i w[b, i] x_al[b, (t + sign τ) mod L] for t < L (x aligned to L), 0 for L ≤ t < T_out."""
    B, T_in, H, D = x.shape
    x_al = torch.zeros(B, L, H, D, dtype=torch.float64)
    n = min(T_in, L)
    x_al[:, :n] = x[:, :n].double().cpu()
    out = torch.zeros(B, T_out, H, D, dtype=torch.float64)
    t = torch.arange(min(L, T_out))
    for b in range(B):
        for i in range(delays.shape[1]):
            src = (t + sign * int(delays[b, i])) % L
            out[b, : len(t)] += float(weights[b, i]) * x_al[b, src]
    return out


@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=str)
@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("T_in,L,T_out", [(13, 13, 13), (9, 13, 13), (20, 13, 13), (13, 13, 20), (13, 13, 9)])
def test_aggregate_launcher(dtype, sign, T_in, L, T_out):
    """Any int64 delays (negative, ≥ L), strided x, zero rows of the alignment, both signs."""
    B, H, D, K = 2, 3, 5, 4
    x = torch.randn(B, T_in, H, 2 * D, device=DEV).to(dtype)[..., ::2]
    delays = torch.tensor([[0, 5, -3, 40], [12, 1, 27, -14]], dtype=torch.int64, device=DEV)
    weights = torch.rand(B, K, device=DEV)
    out = torch.full((B, T_out, H, D), float("nan"), dtype=dtype, device=DEV)
    _ext().autocorr_aggregate(x, delays, weights, sign, L, out)
    ref = _shift_sum(x, delays, weights, sign, L, T_out)
    assert torch.isfinite(out).all()
    assert rel_err(out.cpu(), ref) < {F32: 1e-6, F16: 2e-3, BF16: 1e-2}[dtype]


def test_aggregate_launcher_many_delays():
    """K = 600 delays (ten shared-memory stages of 64, 75 delay-dots chunks of 8), H·D = 520 (several channel
    tiles), dv-like T_out > L, two time tiles of delay-dot partials."""
    B, T_in, L, T_out, H, D, K = 2, 40, 40, 50, 2, 260, 600
    x = torch.randn(B, T_in, H, D, device=DEV)
    delays = torch.randint(-1000, 1000, (B, K), dtype=torch.int64, device=DEV)
    weights = torch.rand(B, K, device=DEV) / K
    out = torch.full((B, T_out, H, D), float("nan"), device=DEV)
    _ext().autocorr_aggregate(x, delays, weights, -1, L, out)
    assert rel_err(out.cpu(), _shift_sum(x, delays, weights, -1, L, T_out)) < 1e-5
    dw = torch.full((B, K), float("nan"), device=DEV)
    _ext().autocorr_delay_dots(x, x, delays, dw)
    ref = torch.stack([torch.stack([(x[b].double().cpu() * x[b].double().cpu()[(torch.arange(L) + int(delays[b, i])) % L])
                                    .sum() for i in range(K)]) for b in range(B)])
    assert rel_err(dw.cpu(), ref) < 1e-5


@pytest.mark.parametrize("T_x", [9, 13, 20])
def test_delay_dots_launcher(T_x):
    B, L, H, D = 2, 13, 3, 5
    g = torch.randn(B, L, H, D, device=DEV)
    x = torch.randn(B, T_x, H, D, device=DEV).transpose(2, 3).contiguous().transpose(2, 3)  # strided
    delays = torch.tensor([[0, 5, -3], [12, 1, 27]], dtype=torch.int64, device=DEV)
    dw = torch.full((B, 3), float("nan"), device=DEV)
    _ext().autocorr_delay_dots(g, x, delays, dw)
    ref = torch.zeros(B, 3, dtype=torch.float64)
    x_al = torch.zeros(B, L, H, D, dtype=torch.float64)
    x_al[:, :min(T_x, L)] = x[:, :min(T_x, L)].double().cpu()
    for b in range(B):
        for i in range(3):
            src = (torch.arange(L) + int(delays[b, i])) % L
            ref[b, i] = (g[b].double().cpu() * x_al[b, src]).sum()
    assert rel_err(dw.cpu(), ref) < 1e-5


@pytest.mark.parametrize("with_dweights", [False, True])
def test_delay_grad_launcher(with_dweights):
    """Fused dw (+ dweights) + softmax backward + scatter into a zero dr row, vs torch."""
    B, L, T_x, H, D, K = 3, 37, 30, 2, 8, 5
    g = torch.randn(B, L, H, D, device=DEV)
    x = torch.randn(B, T_x, H, D, device=DEV)
    delays = torch.stack([torch.randperm(L)[:K] for _ in range(B)]).to(DEV)
    weights = torch.softmax(torch.randn(B, K, device=DEV), dim=-1)
    dweights = torch.randn(B, K, device=DEV) if with_dweights else None
    dw = torch.full((B, K), float("nan"), device=DEV)
    dr = torch.full((B, L), float("nan"), device=DEV)
    _ext().autocorr_delay_grad(g, x, delays, weights, dweights, dw, dr)
    x_al = torch.zeros(B, L, H, D, dtype=torch.float64)
    x_al[:, :T_x] = x.double().cpu()
    gd, dl = g.double().cpu(), delays.cpu()
    dw_ref = torch.stack([torch.stack([(gd[b] * x_al[b, (torch.arange(L) + int(dl[b, i])) % L]).sum()
                                       for i in range(K)]) for b in range(B)])
    if with_dweights:
        dw_ref = dw_ref + dweights.double().cpu()
    w = weights.double().cpu()
    dr_ref = torch.zeros(B, L, dtype=torch.float64).scatter_(1, dl, w * (dw_ref - (w * dw_ref).sum(-1, keepdim=True)))
    assert rel_err(dw.cpu(), dw_ref) < 1e-5 and rel_err(dr.cpu(), dr_ref) < 1e-5


@pytest.mark.parametrize("sliced", [False, True])
def test_spectrum_launchers(sliced):
    """Fused cross-spectrum (overwrite, then accumulate) and the in-place spectrum products, on contiguous
    (16-byte path) and strided channel axes."""
    B, Fq, C = 2, 9, 12
    wide = torch.randn(2, B, Fq, 2 * C if sliced else C, dtype=torch.complex64, device=DEV)
    qf, kf = (w[..., ::2] if sliced else w for w in wide)
    cross = torch.full((B, Fq), float("nan"), dtype=torch.complex64, device=DEV)
    _ext().autocorr_cross_spectrum(qf, kf, cross, 1.0 / C, False)
    ref = (qf.cdouble() * kf.cdouble().conj()).mean(dim=-1)
    assert rel_err(torch.view_as_real(cross).cpu(), torch.view_as_real(ref).cpu()) < 1e-6
    _ext().autocorr_cross_spectrum(qf, kf, cross, 1.0 / C, True)
    assert rel_err(torch.view_as_real(cross).cpu(), torch.view_as_real(2 * ref).cpu()) < 1e-6
    drf = torch.randn(B, Fq, dtype=torch.complex64, device=DEV)
    q0, k0 = qf.cdouble(), kf.cdouble()
    _ext().autocorr_spectrum_grad(qf, kf, drf, 0.25)
    g = (0.25 * drf.cdouble())[:, :, None]
    for got, want in ((kf, k0 * g), (qf, q0 * g.conj())):
        assert rel_err(torch.view_as_real(got).cpu(), torch.view_as_real(want).cpu()) < 1e-6


# ----------------------------------------------------------------------------- backend contract

@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("L,S", [(17, 17), (17, 9), (9, 17)])
def test_backend_functions_contract(dtype, mode, L, S):
    """fwd/bwd directly: dtypes, shapes, new tensors only, dweights=None == zeros, zero rows beyond L."""
    impl = _impl()
    B, H, E, D = 2, 2, 3, 5
    q, k = torch.randn(B, L, H, E, device=DEV).to(dtype), torch.randn(B, S, H, E, device=DEV).to(dtype)
    v = torch.randn(B, S, H, D, device=DEV).to(dtype)
    K = min(L, max(1, int(2.0 * math.log(L))))
    o, delays, weights = impl.auto_correlation_fwd(q, k, v, K, mode)
    assert o.dtype == dtype and o.shape == (B, L, H, D) and torch.isfinite(o).all()
    assert delays.dtype == torch.int64 and delays.shape == (B, K) and delays.is_contiguous()
    assert weights.dtype == F32 and weights.shape == (B, K)
    do = torch.randn(B, L, H, D, device=DEV).to(dtype)
    dq, dk, dv = impl.auto_correlation_bwd(do, None, q, k, v, delays, weights, K, mode)
    dq0, dk0, dv0 = impl.auto_correlation_bwd(do, torch.zeros_like(weights), q, k, v, delays, weights, K, mode)
    for g, x, g0 in ((dq, q, dq0), (dk, k, dk0), (dv, v, dv0)):
        assert g.dtype == x.dtype and g.shape == x.shape and torch.isfinite(g).all()
        assert torch.equal(g, g0)
    ins = {t.data_ptr() for t in (q, k, v, do)}
    assert not any(t.data_ptr() in ins for t in (o, delays, weights, dq, dk, dv))
    if S > L:
        assert torch.all(dk[:, L:] == 0) and torch.all(dv[:, L:] == 0)


def test_provided_ops():
    assert "auto_correlation" in _ext().provided_ops()
