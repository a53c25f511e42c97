"""The REAL auto-correlation kernels of ``csrc/auto_correlation.cu`` on the CPU (CUDA emulation harness), end to end
through the ``cuda`` backend's glue (``flashts/cuda_ops/auto_correlation.py``: its torch FFTs, top-K and softmax
run here, the kernels through ``tests/emulation/auto_correlation_host.cpp``), against ``flashts.reference`` in
float64: o, delays, weights, dq, dk, dv with a cotangent on the weights too.

Covers: train/infer, L = S, L > S, L < S, E ≠ D, odd L (17, 63, 100), strided and contiguous v (the scalar and the
16-byte vector paths of the aggregation and delay dots), float32/bfloat16/float16, several FFT channel blocks
(the accumulating cross-spectrum, odd block widths: the scalar spectrum path), the delay-chunk rule of the delay
dots at several SM counts (1 delay per block up to 8, K > 8). Outputs are NaN-poisoned (FLASHTS_POISON=1 from
conftest, and ``Out`` buffers with NaN canaries for the launcher tests), so an element a kernel forgets or an
out-of-bounds write fails.
"""
from __future__ import annotations

import ctypes
import math
import os
import sys

import pytest
import torch

from flashts import reference as ref
from test_auto_correlation import _inputs

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "emulation"))
import emu_build  # noqa: E402

F64 = torch.float64
DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
PAD = 64  # NaN canary elements on each side of a launcher-test output


@pytest.fixture(scope="module")
def lib():
    if emu_build.compiler() is None:
        pytest.skip("no g++")
    try:
        lib = emu_build.load({"auto_correlation": os.path.join(emu_build.EMU, "auto_correlation_host.cpp")})
    except RuntimeError as exc:
        pytest.fail(str(exc))
    lib = lib["auto_correlation"]
    lib.emu_autocorr_partials_size.restype = ctypes.c_int64
    return lib


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr())


def _i64s(seq):
    return torch.tensor(list(seq), dtype=torch.int64)


class EmulatedExtension:
    """The autocorr_* functions of flashts._C (csrc/bindings.cpp), same arguments and checks, on the emulated
    kernels. ``sms`` stands for the device's SM count the binding passes to the delay dots."""

    def __init__(self, lib, sms=132):
        self.lib, self.sms = lib, sms
        self.keep = []

    def _check(self, rc):
        assert rc == 0, emu_build.last_error(self.lib)

    def _strides(self, t):
        s = _i64s(t.stride())
        self.keep.append(s)
        return _ptr(s)

    def autocorr_cross_spectrum(self, qf, kf, cross, inv_c, accumulate):
        B, F, C = qf.shape
        assert qf.dtype == kf.dtype == cross.dtype == torch.complex64 and kf.shape == qf.shape
        assert cross.shape == (B, F) and cross.is_contiguous()
        self._check(self.lib.emu_autocorr_cross_spectrum(_ptr(qf), self._strides(qf), _ptr(kf), self._strides(kf),
                                                         _ptr(cross), *map(ctypes.c_int64, (B, F, C)),
                                                         ctypes.c_float(inv_c), int(accumulate)))

    def autocorr_spectrum_grad(self, qf, kf, drf, scale):
        B, F, C = qf.shape
        assert drf.shape == (B, F) and drf.is_contiguous() and drf.dtype == torch.complex64
        self._check(self.lib.emu_autocorr_spectrum_grad(_ptr(qf), self._strides(qf), _ptr(kf), self._strides(kf),
                                                        _ptr(drf), ctypes.c_float(scale),
                                                        *map(ctypes.c_int64, (B, F, C))))

    def autocorr_aggregate(self, x, delays, weights, sign, L, out):
        B, T_in, H, D = x.shape
        assert delays.dtype == torch.int64 and delays.is_contiguous() and weights.dtype == torch.float32
        assert weights.is_contiguous() and out.is_contiguous() and out.dtype == x.dtype
        assert out.shape[0] == B and out.shape[2:] == (H, D)
        i64 = ctypes.c_int64
        self._check(self.lib.emu_autocorr_aggregate(DTYPES[x.dtype], _ptr(x), self._strides(x), i64(B), i64(T_in),
                                                    i64(H), i64(D), _ptr(delays), _ptr(weights),
                                                    i64(delays.shape[1]), int(sign), i64(L), _ptr(out),
                                                    i64(out.shape[1])))

    def autocorr_delay_dots(self, g, x, delays, dw):
        B, L, H, D = g.shape
        K = delays.shape[1]
        assert x.dtype == g.dtype and dw.is_contiguous() and dw.shape == (B, K)
        i64 = ctypes.c_int64
        partials = torch.full((self.lib.emu_autocorr_partials_size(i64(B), i64(K), i64(L)),), float("nan"))
        self._check(self.lib.emu_autocorr_delay_dots(DTYPES[g.dtype], _ptr(g), self._strides(g), _ptr(x),
                                                     self._strides(x), i64(x.shape[1]), i64(B), i64(L), i64(H),
                                                     i64(D), _ptr(delays), i64(K), _ptr(partials), _ptr(dw),
                                                     int(self.sms)))

    def autocorr_delay_grad(self, g, x, delays, weights, dweights, dw, dr):
        B, L, H, D = g.shape
        K = delays.shape[1]
        assert x.dtype == g.dtype and delays.is_contiguous() and weights.is_contiguous() and weights.dtype == torch.float32
        assert dweights is None or (dweights.is_contiguous() and dweights.dtype == torch.float32)
        assert dw.is_contiguous() and dw.shape == (B, K) and dr.is_contiguous() and dr.shape == (B, L)
        i64 = ctypes.c_int64
        partials = torch.full((self.lib.emu_autocorr_partials_size(i64(B), i64(K), i64(L)),), float("nan"))
        self._check(self.lib.emu_autocorr_delay_grad(DTYPES[g.dtype], _ptr(g), self._strides(g), _ptr(x),
                                                     self._strides(x), i64(x.shape[1]), i64(B), i64(L), i64(H),
                                                     i64(D), _ptr(delays), _ptr(weights),
                                                     None if dweights is None else _ptr(dweights), i64(K),
                                                     _ptr(partials), _ptr(dw), _ptr(dr), int(self.sms)))


def _rel(got, want):
    got, want = got.detach().to(F64), want.detach().to(F64)
    assert not torch.isnan(got).any(), "NaN in an output (an element was never written)"
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


def _layout(x, dtype, kind):
    """x (float64) rounded to dtype, laid out as: "c" contiguous, "t" time-major permuted, "d" (h, d) transposed
    (no unit-stride channel axis), "s" a sliced view (every other element of a wider last dim)."""
    x = x.to(dtype)
    if kind == "c":
        return x.contiguous()
    if kind == "t":
        return x.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
    if kind == "d":
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    wide = torch.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=dtype)
    wide[..., ::2] = x
    return wide[..., ::2]


# (B, L, S, H, E, D, factor, mode, dtype, layout of q/k, layout of v and do, FFT block elements, SMs)
CASES = [
    (2, 17, 17, 2, 3, 5, 1.0, "train", torch.float32, "t", "d", 1 << 24, 132),   # odd L, E ≠ D, scalar paths
    (2, 63, 40, 2, 4, 8, 1.5, "infer", torch.bfloat16, "c", "c", 2 * 63 * 3, 1),  # L > S, vec paths, 3-wide blocks
    (1, 100, 120, 1, 5, 8, 2.5, "train", torch.float32, "s", "c", 100 * 2, 1),    # L < S, K = 11 > 8 (two chunks)
    (2, 24, 17, 2, 4, 4, 2.0, "infer", torch.float16, "c", "s", 2 * 24 * 4, 132),  # L > S, even L, strided v
]


@pytest.mark.parametrize("B,L,S,H,E,D,factor,mode,dtype,lay_qk,lay_v,fft_block,sms", CASES)
def test_auto_correlation_end_to_end(lib, monkeypatch, B, L, S, H, E, D, factor, mode, dtype, lay_qk, lay_v,
                                     fft_block, sms):
    """cuda_ops.auto_correlation fwd + bwd (emulated kernels, torch FFTs on the CPU) vs the float64 reference;
    each case under another thread schedule of the harness (thread 0 first, reversed, shuffled)."""
    from flashts.cuda_ops import auto_correlation as cuda_ac
    from flashts.reference.auto_correlation import top_k_delays
    monkeypatch.setattr(cuda_ac, "extension", lambda: EmulatedExtension(lib, sms))
    monkeypatch.setattr(cuda_ac, "FFT_BLOCK_ELEMENTS", fft_block)
    lib.flashts_emu_set_schedule(CASES.index((B, L, S, H, E, D, factor, mode, dtype, lay_qk, lay_v, fft_block, sms)))
    try:
        _end_to_end(B, L, S, H, E, D, factor, mode, dtype, lay_qk, lay_v, cuda_ac, top_k_delays)
    finally:
        lib.flashts_emu_set_schedule(0)


def _end_to_end(B, L, S, H, E, D, factor, mode, dtype, lay_qk, lay_v, cuda_ac, top_k_delays):
    torch.manual_seed(1000 * L + S + D)
    q64, k64, v64 = _inputs(B, L, S, H, E, D, factor=factor, mode=mode, dtype=dtype)
    do64 = torch.randn(B, L, H, D, dtype=F64).to(dtype).to(F64)
    q, k = _layout(q64, dtype, lay_qk), _layout(k64, dtype, lay_qk)
    v, do = _layout(v64, dtype, lay_v), _layout(do64, dtype, lay_v)
    top_k = top_k_delays(L, factor)
    dweights = torch.randn(B, top_k, dtype=F64)

    qr, kr, vr = (x.clone().requires_grad_() for x in (q64, k64, v64))
    o_ref, (delays_ref, w_ref) = ref.auto_correlation(qr, kr, vr, factor=factor, mode=mode, return_delays=True)
    loss = (o_ref * do64).sum() + (w_ref * dweights).sum()
    dq_ref, dk_ref, dv_ref = torch.autograd.grad(loss, [qr, kr, vr])

    o, delays, weights = cuda_ac.auto_correlation_fwd(q, k, v, top_k, mode)
    assert torch.equal(delays, delays_ref), "different delays selected"
    assert o.dtype == dtype and o.shape == (B, L, H, D) and weights.dtype == torch.float32
    tol = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}[dtype]
    assert _rel(weights, w_ref) < tol and _rel(o, o_ref) < tol
    dq, dk, dv = cuda_ac.auto_correlation_bwd(do, dweights.float(), q, k, v, delays, weights, top_k, mode)
    for name, got, want, x in (("dq", dq, dq_ref, q), ("dk", dk, dk_ref, k), ("dv", dv, dv_ref, v)):
        assert got.dtype == x.dtype and got.shape == x.shape, name
        assert _rel(got, want) < 4 * tol, name
    if S > L:
        assert torch.all(dk[:, L:] == 0) and torch.all(dv[:, L:] == 0)


# ----------------------------------------------------------------------------- launchers vs plain torch

def _out(shape, dtype):
    n = math.prod(shape)
    buf = torch.full((n + 2 * PAD,), float("nan"), dtype=dtype)
    if buf.is_complex():
        torch.view_as_real(buf).fill_(float("nan"))
    return buf, buf[PAD:PAD + n].view(*shape)


def _canaries_intact(buf):
    if buf.is_complex():
        buf = torch.view_as_real(buf)
    return torch.isnan(buf[:PAD].float()).all() and torch.isnan(buf[-PAD:].float()).all()


def _shift_sum(x, delays, weights, sign, L, T_out):
    """out[b, t] = Σ_i w[b,i] x_al[b, (t + sign τ_i) mod L] for t < L (x_al: x aligned to L rows), 0 beyond."""
    B, T_in = x.shape[:2]
    x_al = torch.zeros((B, L) + tuple(x.shape[2:]), dtype=F64)
    x_al[:, :min(T_in, L)] = x[:, :min(T_in, L)].to(F64)
    out = torch.zeros((B, T_out) + tuple(x.shape[2:]), dtype=F64)
    t = torch.arange(min(L, T_out))
    for b in range(B):
        for i in range(delays.shape[1]):
            out[b, :len(t)] += float(weights[b, i]) * x_al[b, (t + sign * int(delays[b, i])) % L]
    return out


@pytest.mark.parametrize("dtype,layout", [(torch.float32, "c"), (torch.bfloat16, "c"), (torch.float16, "d")])
@pytest.mark.parametrize("sign,T_in,L,T_out", [(1, 13, 13, 13), (1, 9, 45, 45), (-1, 45, 45, 50), (-1, 50, 45, 41)])
def test_aggregate_launcher(lib, dtype, layout, sign, T_in, L, T_out):
    """Any int64 delays (negative, ≥ L), rows of the alignment, both signs, two time tiles, two channel tiles."""
    B, H, D = 2, 3, 48 if layout == "c" else 5
    x = _layout(torch.randn(B, T_in, H, D, dtype=F64), dtype, layout)
    delays = torch.tensor([[0, 5, -3, 4 * L + 1, -100], [12, 1, 27, -14, L]], dtype=torch.int64)
    weights = torch.rand(B, delays.shape[1])
    buf, out = _out((B, T_out, H, D), dtype)
    EmulatedExtension(lib).autocorr_aggregate(x, delays, weights, sign, L, out)
    assert _canaries_intact(buf), "a kernel wrote outside its output"
    assert _rel(out, _shift_sum(x, delays, weights, sign, L, T_out)) < {torch.float32: 1e-6, torch.float16: 2e-3,
                                                                       torch.bfloat16: 1e-2}[dtype]


@pytest.mark.parametrize("dtype,layout,T_x,sms", [(torch.float32, "c", 45, 1), (torch.bfloat16, "c", 30, 132),
                                                  (torch.float32, "d", 60, 4)])
def test_delay_dots_launcher(lib, dtype, layout, T_x, sms):
    """K = 11 delays (chunks of 8 + 3 at sms=1, of 1 at sms=132), x shorter / longer than L, H·D = 144: several
    channel steps per row, the last one partial; deterministic."""
    B, L, H, D = 2, 45, 3, 48
    g = _layout(torch.randn(B, L, H, D, dtype=F64), dtype, layout)
    x = _layout(torch.randn(B, T_x, H, D, dtype=F64), dtype, layout)
    delays = torch.randint(-200, 200, (B, 11), dtype=torch.int64)
    ext = EmulatedExtension(lib, sms)
    buf, dw = _out((B, 11), torch.float32)
    ext.autocorr_delay_dots(g, x, delays, dw)
    assert _canaries_intact(buf)
    x_al = torch.zeros(B, L, H, D, dtype=F64)
    x_al[:, :min(T_x, L)] = x[:, :min(T_x, L)].to(F64)
    want = torch.stack([torch.stack([(g[b].to(F64) * x_al[b, (torch.arange(L) + int(delays[b, i])) % L]).sum()
                                     for i in range(11)]) for b in range(B)])
    assert _rel(dw, want) < 1e-5
    dw2 = torch.empty_like(dw)
    ext.autocorr_delay_dots(g, x, delays, dw2)
    assert torch.equal(dw, dw2), "not deterministic"


@pytest.mark.parametrize("C,sliced", [(6, False), (5, False), (6, True)])
def test_spectrum_launchers(lib, C, sliced):
    """Fused cross-spectrum (overwrite, then accumulate) and the in-place spectrum products; the vector path
    (C even, unit stride) and the scalar one (C odd, or a strided channel axis)."""
    B, F = 2, 11
    wide = torch.randn(2, B, F, 2 * C if sliced else C, dtype=torch.complex64)
    wc = wide.clone()
    qf, kf = (w[..., ::2] if sliced else w for w in wc)
    ext = EmulatedExtension(lib)
    buf, cross = _out((B, F), torch.complex64)
    ext.autocorr_cross_spectrum(qf, kf, cross, 0.25, False)
    want = 0.25 * (qf.to(torch.complex128) * kf.to(torch.complex128).conj()).sum(-1)
    assert _rel(torch.view_as_real(cross), torch.view_as_real(want)) < 1e-6
    ext.autocorr_cross_spectrum(qf, kf, cross, 0.5, True)
    assert _canaries_intact(buf)
    assert _rel(torch.view_as_real(cross), torch.view_as_real(3 * want)) < 1e-6
    drf = torch.randn(B, F, dtype=torch.complex64)
    q0, k0 = qf.to(torch.complex128), kf.to(torch.complex128)
    ext.autocorr_spectrum_grad(qf, kf, drf, 0.25)
    gr = (0.25 * drf.to(torch.complex128))[:, :, None]
    assert _rel(torch.view_as_real(kf), torch.view_as_real(k0 * gr)) < 1e-6
    assert _rel(torch.view_as_real(qf), torch.view_as_real(q0 * gr.conj())) < 1e-6
    if sliced:  # the elements between the channels are untouched
        assert torch.equal(wc[..., 1::2], wide[..., 1::2])


@pytest.mark.parametrize("with_dweights", [False, True])
def test_delay_grad_launcher(lib, with_dweights):
    """Fused dw + softmax backward + scatter: dw (with the weights' cotangent) and the whole dr row (zeros except
    at the delays, given as any int64 — reduced mod L), vs the torch formulas; deterministic."""
    B, L, T_x, H, D, K = 3, 37, 30, 2, 8, 5
    g = torch.randn(B, L, H, D, dtype=torch.bfloat16)
    x = torch.randn(B, T_x, H, D, dtype=torch.bfloat16)
    base = torch.stack([torch.randperm(L)[:K] for _ in range(B)])
    delays = (base + L * torch.randint(-3, 3, (B, K))).contiguous()  # distinct mod L
    weights = torch.softmax(torch.randn(B, K), dim=-1)
    dweights = torch.randn(B, K) if with_dweights else None
    ext = EmulatedExtension(lib, 1)
    buf_w, dw = _out((B, K), torch.float32)
    buf_r, dr = _out((B, L), torch.float32)
    ext.autocorr_delay_grad(g, x, delays, weights, dweights, dw, dr)
    assert _canaries_intact(buf_w) and _canaries_intact(buf_r)
    x_al = torch.zeros(B, L, H, D, dtype=F64)
    x_al[:, :T_x] = x.to(F64)
    dw_ref = torch.stack([torch.stack([(g[b].to(F64) * x_al[b, (torch.arange(L) + int(delays[b, i])) % L]).sum()
                                       for i in range(K)]) for b in range(B)])
    if with_dweights:
        dw_ref = dw_ref + dweights.to(F64)
    w = weights.to(F64)
    dz = w * (dw_ref - (w * dw_ref).sum(-1, keepdim=True))
    dr_ref = torch.zeros(B, L, dtype=F64).scatter_(1, base, dz)
    assert _rel(dw, dw_ref) < 1e-5 and _rel(dr, dr_ref) < 1e-5
    assert torch.count_nonzero(dr) == B * K
    dw2, dr2 = torch.empty_like(dw), torch.empty_like(dr)
    ext.autocorr_delay_grad(g, x, delays, weights, dweights, dw2, dr2)
    assert torch.equal(dw, dw2) and torch.equal(dr, dr2), "not deterministic"
