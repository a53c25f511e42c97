"""Tests of the ``triton`` backend of auto_correlation (SPEC §3, kernels/auto_correlation.py).

Runs under the Triton interpreter on CPU (tests/conftest.py sets TRITON_INTERPRET=1 and FLASHTS_POISON=1, so
every buffer a kernel allocates starts as NaN), on CUDA tensors when a GPU is present.

* End to end against flashts.reference (float64) through ``check_against_reference``: outputs (o, delays,
  weights) and the gradients of q, k, v, for float32 / float16 / bfloat16, both modes, L = S, L > S, L < S,
  E ≠ D, odd sizes, K from 1 to L, cotangents on o and/or the weights, |r| ~ 1e4, non-contiguous inputs.
  Inputs come from test_auto_correlation's tie-avoiding generator and the selected delays are compared first
  (with the reference and with the torch backend) so a near-tie is reported as such.
* Each kernel launcher against a plain torch computation, with sizes that cross every tile edge (several time
  tiles with a ragged last one, (h, d) wider than one tile, more channels / frequencies than one tile).
* The backend functions' contract: dtypes, shapes, new tensors, dweights=None == zeros, zero dk/dv rows beyond
  L, deterministic backward, stride-0 cotangents.
"""
from __future__ import annotations

import math

import pytest
import torch

import flashts
from flashts import _backend, reference
from helpers import check_against_reference, device_for, rel_err
from test_auto_correlation import _inputs

pytestmark = pytest.mark.skipif(not _backend.available("triton", device_for("triton")),
                                reason="triton backend unavailable (no triton, or no GPU and no TRITON_INTERPRET)")

OP = "auto_correlation"
BACKEND = "triton"
DEV = device_for(BACKEND)
MODES = ["train", "infer"]
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16

if _backend.available("triton", DEV):
    from flashts.kernels import auto_correlation as tk
else:  # pragma: no cover
    tk = None


def _check(q, k, v, dtype, *, factor=1.0, mode="train", return_delays=True, **kw):
    """Delays == the float64 reference's AND the torch backend's (a near-tie is reported as such), then outputs
    and gradients against the reference."""
    with torch.no_grad():
        args = [x.to(DEV, dtype) for x in (q, k, v)]
        kwargs = dict(factor=factor, mode=mode, return_delays=True)
        _, (d_triton, _) = flashts.auto_correlation(*args, **kwargs, backend=BACKEND)
        _, (d_torch, _) = flashts.auto_correlation(*(x.cpu() for x in args), **kwargs, backend="torch")
        _, (d_ref, _) = reference.auto_correlation(q, k, v, **kwargs)
    assert torch.equal(d_triton.cpu(), d_ref), (
        f"delays differ from the float64 reference ({dtype}, mode={mode}, factor={factor}): "
        f"{d_triton.tolist()} vs {d_ref.tolist()} — near-tie in the correlations or a real bug")
    assert torch.equal(d_triton.cpu(), d_torch), f"delays differ from the torch backend: {d_triton} vs {d_torch}"
    return check_against_reference(OP, BACKEND, (q, k, v), dict(factor=factor, mode=mode, return_delays=return_delays),
                                   dtype=dtype, **kw)


# ----------------------------------------------------------------------------- against the reference

# (B, L, S, H, E, D): L = 1, 2, odd, even (Nyquist bin), > BLOCK_T = 32 with a ragged tile; L > S, L < S; E ≠ D
SHAPES = [
    (2, 1, 1, 2, 3, 4),
    (2, 2, 5, 1, 5, 7),       # L < S
    (3, 17, 17, 2, 5, 7),
    (2, 16, 16, 2, 16, 16),   # even L
    (2, 70, 40, 2, 3, 6),     # L > S, 3 time tiles
    (2, 33, 70, 1, 4, 5),     # L < S, dv rows ≥ L are zero
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
    B, L, S, H, E, D = 3, 17, 12, 2, 3, 5
    q, k, v = _inputs(B, L, S, H, E, D, factor=factor, mode=mode, dtype=F32)
    _check(q, k, v, F32, factor=factor, mode=mode, return_delays=return_delays)


@pytest.mark.parametrize("mode", MODES)
def test_all_delays(mode):
    """K == L = 45 (factor 100): every delay, two time tiles; periodic inputs."""
    q, k, v = _inputs(2, 45, 45, 1, 2, 3, factor=100.0, mode=mode, dtype=F32, periodic=True)
    _check(q, k, v, F32, factor=100.0, mode=mode)


def test_long_720():
    """Autoformer's usual horizon L = 720 with L > S, 23 time tiles (kept cheap: B = H = 1, E = 2, D = 3, K = 9)."""
    q, k, v = _inputs(1, 720, 500, 1, 2, 3, factor=1.5, mode="infer", dtype=F32, periodic=True)
    _check(q, k, v, F32, factor=1.5, mode="infer")


@pytest.mark.parametrize("mode", MODES)
def test_gradient_through_weights_only(mode):
    """Cotangent on the weights only: dq, dk through softmax → dr → the FFTs; dv must be exactly zero."""
    q, k, v = _inputs(2, 17, 17, 2, 3, 4, factor=2.0, mode=mode, dtype=F32)
    errs = _check(q, k, v, F32, factor=2.0, mode=mode, skip_grad_outputs=("[0]",))
    assert "grad[0][0]" in errs and "grad[0][1]" in errs
    qq, kk, vv = (x.to(DEV, F32).requires_grad_(True) for x in (q, k, v))
    _, (_, w) = flashts.auto_correlation(qq, kk, vv, factor=2.0, mode=mode, return_delays=True, backend=BACKEND)
    dq, dv = torch.autograd.grad((w * torch.randn_like(w)).sum(), (qq, vv))
    assert dq.abs().max() > 0 and torch.equal(dv, torch.zeros_like(dv))


@pytest.mark.parametrize("dtype", [F16, BF16], ids=str)
@pytest.mark.parametrize("mode", MODES)
def test_half_precision(dtype, mode):
    """float16/bfloat16 in and out, float32 FFTs and accumulation inside; L > S."""
    q, k, v = _inputs(2, 33, 20, 2, 4, 6, mode=mode, dtype=dtype)
    _check(q, k, v, dtype, mode=mode)


@pytest.mark.parametrize("mode", MODES)
def test_huge_correlations(mode):
    """|r| ~ 1e4: one-hot weights, finite everything; o, dv against the reference (dq, dk are ~exp(-1e4)
    relative to their rounding noise, so only finiteness is checked for them)."""
    B, L, H, E, D = 2, 23, 2, 4, 3
    q, k, v = _inputs(B, L, L, H, E, D, factor=3.0, mode=mode, dtype=F32)
    scale = 100.0 / (2.0 * math.sqrt(H * E / L)) ** 0.5
    q, k = (q * scale).float().double(), (k * scale).float().double()
    _check(q, k, v, F32, factor=3.0, mode=mode, skip_grad_inputs=("[0][0]", "[0][1]"))
    qq, kk = (x.to(DEV, F32).requires_grad_(True) for x in (q, k))
    o, (_, w) = flashts.auto_correlation(qq, kk, v.to(DEV, F32), factor=3.0, mode=mode, return_delays=True,
                                         backend=BACKEND)
    assert torch.isfinite(o).all() and torch.allclose(w.max(dim=-1).values, torch.ones(B, device=DEV))
    dq, dk = torch.autograd.grad((o * torch.randn_like(o)).sum() + (w * torch.randn_like(w)).sum(), (qq, kk))
    assert torch.isfinite(dq).all() and torch.isfinite(dk).all()


@pytest.mark.parametrize("mode,v_layout", [("train", "sliced"), ("infer", "transposed")])
def test_non_contiguous_inputs(mode, v_layout):
    """q transposed and k permuted (torch.fft reads any strides); v either a strided slice of a wider tensor
    whose other half is NaN (read in place through its strides) or transposed (heads/time: (h, d) cannot be
    flattened into a view, the launcher copies it). The float32 layouts are built here (a dtype cast would
    make a sliced tensor contiguous); outputs and gradients against the reference on the same values."""
    B, L, H, E, D = 2, 19, 3, 4, 5
    q64, k64, v64 = _inputs(B, L, L, H, E, D, mode=mode, dtype=F32)
    q_base = q64.transpose(1, 2).contiguous().to(DEV, F32).requires_grad_(True)  # [B, H, L, E]
    k_base = k64.permute(0, 3, 1, 2).contiguous().to(DEV, F32).requires_grad_(True)  # [B, E, L, H]
    if v_layout == "sliced":
        v_base = torch.stack([v64, torch.full_like(v64, float("nan"))], -1).flatten(-2).to(DEV, F32)
        v_base.requires_grad_(True)
        v = v_base[..., ::2]
        assert tk._channels(v).data_ptr() == v.data_ptr()  # really read in place, next to the NaNs
    else:
        v_base = v64.transpose(1, 2).contiguous().to(DEV, F32).requires_grad_(True)  # [B, H, L, D]
        v = v_base.transpose(1, 2)
    q, k = q_base.transpose(1, 2), k_base.permute(0, 2, 3, 1)
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    o, (delays, w) = flashts.auto_correlation(q, k, v, mode=mode, return_delays=True, backend=BACKEND)
    ref = [x.clone().requires_grad_(True) for x in (q64, k64, v64)]
    o_ref, (delays_ref, w_ref) = reference.auto_correlation(*ref, mode=mode, return_delays=True)
    assert torch.equal(delays.cpu(), delays_ref)
    assert rel_err(o.cpu(), o_ref) < 1e-5 and rel_err(w.cpu(), w_ref) < 1e-5
    cot_o, cot_w = torch.randn_like(o_ref), torch.randn_like(w_ref)
    grads = torch.autograd.grad((o.double().cpu() * cot_o).sum() + (w.double().cpu() * cot_w).sum(), (q, k, v))
    grads_ref = torch.autograd.grad((o_ref * cot_o).sum() + (w_ref * cot_w).sum(), ref)
    for name, g, g_ref in zip("qkv", grads, grads_ref):
        assert rel_err(g.cpu(), g_ref) < 1e-4, name


def test_known_shift():
    """k = q shifted by s0 ⇒ delay s0 with weight 1 and o = v rolled by s0 (float32, K = 1)."""
    B, L, H, E, D, s0 = 2, 31, 2, 8, 3, 5
    q = torch.randn(B, L, H, E, device=DEV)
    k = torch.roll(q, -s0, dims=1)
    v = torch.randn(B, L, H, D, device=DEV)
    for mode in MODES:
        o, (delays, weights) = flashts.auto_correlation(q, k, v, factor=0.1, mode=mode, return_delays=True,
                                                        backend=BACKEND)
        assert delays.tolist() == [[s0]] * B
        assert torch.equal(weights, torch.ones_like(weights))
        assert torch.equal(o, torch.roll(v, -s0, dims=1))


def test_train_shares_infer_does_not():
    B, L, H, E, D = 2, 40, 1, 4, 2
    q = torch.randn(B, L, H, E, device=DEV)
    k = torch.stack([torch.roll(q[0], 3, dims=0), torch.roll(q[1], 11, dims=0)])
    v = torch.randn(B, L, H, D, device=DEV)
    _, (d_train, _) = flashts.auto_correlation(q, k, v, factor=0.3, mode="train", return_delays=True, backend=BACKEND)
    _, (d_infer, _) = flashts.auto_correlation(q, k, v, factor=0.3, mode="infer", return_delays=True, backend=BACKEND)
    assert d_infer[:, 0].tolist() == [L - 3, L - 11]
    assert d_train[0].tolist() == d_train[1].tolist()


def test_float64_rejected():
    x = torch.randn(1, 8, 1, 2, dtype=torch.float64, device=DEV)
    with pytest.raises(TypeError, match="float64"):
        flashts.auto_correlation(x, x, x, backend=BACKEND)


# ----------------------------------------------------------------------------- kernels against torch

def _roll_sum(x, weights, delays, L, out_rows, sign):
    """Σ_i w[b,i] · x_aligned[b, (t + sign·τ_{b,i}) mod L] for t < L (x_aligned: x padded/cut to L), 0 after."""
    B, rows = x.shape[:2]
    xa = x.new_zeros((B, L) + x.shape[2:])
    xa[:, :min(rows, L)] = x[:, :L]
    t = torch.arange(L, device=x.device)
    out = x.new_zeros((B, out_rows) + x.shape[2:])
    for b in range(B):
        for i in range(delays.shape[1]):
            out[b, :L] += weights[b, i] * xa[b, (t + sign * delays[b, i]) % L]
    return out


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("rows,L,out_rows", [(70, 70, 70), (40, 70, 70), (70, 33, 70)])
def test_aggregate_kernel(sign, rows, L, out_rows):
    """Several time tiles (ragged), (h, d) = 5·29 = 145 > 128 (two column tiles), per-sample delays."""
    B, H, D, K = 2, 5, 29, 4
    x = torch.randn(B, rows, H, D, device=DEV)
    w = torch.softmax(torch.randn(B, K, device=DEV), -1)
    delays = torch.stack([torch.randperm(L, device=DEV)[:K] for _ in range(B)])
    got = tk._aggregate(x, w, delays, L, out_rows, sign, F32)
    want = _roll_sum(x.double(), w.double(), delays, L, out_rows, sign)
    assert got.shape == want.shape and rel_err(got, want) < 1e-6


@pytest.mark.parametrize("chunks", [1, 3])
def test_delay_dots_kernel(monkeypatch, chunks):
    """Partial sums per (delay, time tile); the K = 5 delays in one chunk (interpreter default) or cut into
    chunks of 2, 2, 1 (what a GPU with few programs per sample does)."""
    monkeypatch.setattr(tk, "_delay_chunks", lambda K, programs, device: chunks)
    B, L, S, H, D, K = 2, 70, 50, 5, 29, 5
    do = torch.randn(B, L, H, D, device=DEV)
    v = torch.randn(B, S, H, D, device=DEV)
    delays = torch.stack([torch.randperm(L, device=DEV)[:K] for _ in range(B)])
    got = tk._delay_dots(do, v, delays, L)
    va = torch.zeros(B, L, H, D, dtype=torch.float64, device=DEV)
    va[:, :S] = v.double()
    t = torch.arange(L, device=DEV)
    want = torch.stack([torch.stack([(do[b].double() * va[b, (t + delays[b, i]) % L]).sum() for i in range(K)])
                        for b in range(B)])
    assert got.dtype == F32 and rel_err(got, want) < 1e-6


def test_spectrum_kernels():
    """C = 3·50 = 150 channels (three tiles), F = 41 frequencies (three tiles): cross spectrum and its adjoint."""
    B, L, H, E = 2, 80, 3, 50
    qf = torch.randn(B, L // 2 + 1, H * E, dtype=torch.complex64, device=DEV)
    kf = torch.randn(B, L // 2 + 1, H * E, dtype=torch.complex64, device=DEV)
    x = tk._cross_spectrum_block(qf, kf, 1.0 / (H * E))
    want = (qf.to(torch.complex128) * kf.to(torch.complex128).conj()).mean(-1)
    assert rel_err(x, torch.view_as_real(want)) < 1e-6
    drf = torch.randn(B, L // 2 + 1, dtype=torch.complex64, device=DEV)
    q2, k2 = qf.clone(), kf.clone()
    tk._spectrum_grads_(q2, k2, drf, 1.0 / (H * E))
    d = drf.to(torch.complex128)[:, :, None] / (H * E)
    assert rel_err(torch.view_as_real(k2), torch.view_as_real(kf.to(torch.complex128) * d)) < 1e-6
    assert rel_err(torch.view_as_real(q2), torch.view_as_real(qf.to(torch.complex128) * d.conj())) < 1e-6


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("L,S", [(40, 40), (40, 23), (23, 40)])
def test_fft_channel_blocks(monkeypatch, mode, L, S):
    """Spectra formed a few channels at a time (blocks of 3 of the H·E = 2·5 = 10 channels: 3, 3, 3, 1) give the
    same outputs and gradients as the definition — the forward's cross-spectrum sum over blocks and the
    backward's per-block dq/dk columns (every column written: outputs start as NaN)."""
    B = 2
    monkeypatch.setattr(tk, "FFT_BLOCK_ELEMENTS", B * L * 3)
    assert tk._channel_blocks(B, L, 10) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    q, k, v = _inputs(B, L, S, 2, 5, 4, mode=mode, dtype=F32)
    _check(q, k, v, F32, mode=mode)


# ----------------------------------------------------------------------------- backend contract

@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("L,S", [(17, 17), (17, 9), (9, 17)])
def test_backend_functions_contract(dtype, mode, L, S):
    """fwd/bwd directly: dtypes, shapes, new tensors only, dweights=None == zeros, zero rows beyond L, and the
    same delays/weights/gradients as the torch backend."""
    from flashts.torch_ops import auto_correlation as torch_impl
    B, H, E, D = 2, 2, 3, 5
    q = torch.randn(B, L, H, E, device=DEV).to(dtype)
    k = torch.randn(B, S, H, E, device=DEV).to(dtype)
    v = torch.randn(B, S, H, D, device=DEV).to(dtype)
    K = min(L, max(1, int(2.0 * math.log(L))))
    o, delays, weights = tk.auto_correlation_fwd(q, k, v, K, mode)
    assert o.dtype == dtype and o.shape == (B, L, H, D)
    assert delays.dtype == torch.int64 and delays.shape == (B, K) and delays.is_contiguous()
    assert weights.dtype == F32 and weights.shape == (B, K)
    do = torch.randn(B, L, H, D, device=DEV).to(dtype)
    dq, dk, dv = tk.auto_correlation_bwd(do, None, q, k, v, delays, weights, K, mode)
    dq0, dk0, dv0 = tk.auto_correlation_bwd(do, torch.zeros_like(weights), q, k, v, delays, weights, K, mode)
    for g, x, g0 in ((dq, q, dq0), (dk, k, dk0), (dv, v, dv0)):
        assert g.dtype == x.dtype and g.shape == x.shape
        assert torch.equal(g, g0)  # also: the backward is deterministic
    ins = {t.data_ptr() for t in (q, k, v, do)}
    assert not any(t.data_ptr() in ins for t in (o, delays, weights, dq, dk, dv))
    if S > L:
        assert torch.all(dk[:, L:] == 0) and torch.all(dv[:, L:] == 0)
    # the torch backend on the same inputs: same delays (random inputs: a near-tie is astronomically unlikely
    # at this size in float32 … but it is possible, so the message says so)
    o_t, delays_t, weights_t = torch_impl.auto_correlation_fwd(q.cpu(), k.cpu(), v.cpu(), K, mode)
    assert torch.equal(delays.cpu(), delays_t), "delays differ from the torch backend (near-tie?)"
    assert rel_err(weights.cpu(), weights_t) < 1e-5
    tol = 1e-5 if dtype == F32 else 2e-2
    assert rel_err(o.cpu(), o_t) < tol
    g_t = torch_impl.auto_correlation_bwd(do.cpu(), None, q.cpu(), k.cpu(), v.cpu(), delays_t, weights_t, K, mode)
    for name, a, b in zip("qkv", (dq, dk, dv), g_t):
        assert rel_err(a.cpu(), b) < tol, name


def test_broadcast_cotangent():
    """A cotangent with stride 0 over batch and heads (expanded, as autograd may pass it) is read through its
    strides: same gradients as the torch backend given the materialised cotangent."""
    from flashts.torch_ops import auto_correlation as torch_impl
    B, L, S, H, E, D = 2, 21, 15, 3, 3, 4
    q, k, v = (x.to(DEV, F32) for x in _inputs(B, L, S, H, E, D, mode="infer", dtype=F32))
    K = min(L, max(1, int(2.0 * math.log(L))))
    _, delays, weights = tk.auto_correlation_fwd(q, k, v, K, "infer")
    do = torch.randn(1, L, 1, D, device=DEV).expand(B, L, H, D)
    assert do.stride(0) == 0 and do.stride(2) == 0
    got = tk.auto_correlation_bwd(do, None, q, k, v, delays, weights, K, "infer")
    want = torch_impl.auto_correlation_bwd(do.cpu().contiguous(), None, q.cpu(), k.cpu(), v.cpu(), delays.cpu(),
                                           weights.cpu(), K, "infer")
    for name, a, b in zip("qkv", got, want):
        assert rel_err(a.cpu(), b) < 1e-5, name
