"""Auto-correlation (Autoformer, SPEC §3), ``cuda`` backend: cuFFT via torch + the kernels of
``csrc/auto_correlation.cu``. The steps, blocking and passes mirror the Triton path (kernels/auto_correlation.py).

Shapes: ``q [B, L, H, E]``, ``k [B, S, H, E]``, ``v [B, S, H, D]`` (E ≠ D allowed); float32/float16/bfloat16
inputs, float32 inside. Alignment: ``rfft(k, n=L)`` zero-pads / truncates k; the kernels read v (and write dv)
with the alignment built in (rows ≥ S of the aligned v are 0, rows ≥ L of dv are 0), so no aligned copy of v
is made.

Forward (C = H·E channels, F = L//2 + 1 frequencies)
    for each block of channels (at most FFT_BLOCK_ELEMENTS // (B·L) of them, so the spectra never exist whole):
        Q̂, K̂ = rfft(q[..., block], n=L), rfft(k[..., block], n=L)     torch / cuFFT, float32, [B, F, Cb] complex
        cross[b, f] (+)= (1/C) Σ_{c in block} Q̂ · conj(K̂)              ``autocorr_cross_spectrum`` (fused
                                                                       products + channel sum, spectra read once)
    r = irfft(cross, n=L)                                              one inverse FFT per sample (torch)
    delays: top-K of mean_b r ("train", rows equal) or of r[b] ("infer"); w = softmax(r[b, τ]) (torch, [B, K]).
    o[b, t] = Σ_i w[b, i] · v[b, (t + τ_i) mod L]                      ``autocorr_aggregate`` (sign +1): tiles of
                                                                       32 rows × channels, the K delays looped
                                                                       inside, o written once, no rolled copies.
Backward (indices carry no gradient)
    dv[b, s] = Σ_i w[b, i] · do[b, (s − τ_i) mod L]                    ``autocorr_aggregate`` with sign −1 (S rows)
    dw[b, i] = Σ_{t,h,d} do[b, t] · v[b, (t + τ_i) mod L]              ``autocorr_delay_grad``: per-tile partials,
               (+ the cotangent of the returned weights)               then one block per b sums them in a fixed
    dz = w ⊙ (dw − Σ_j w_j dw_j); dr[b, τ_i] = dz[b, i], 0 elsewhere     order, does the softmax backward and
                                                                       writes the dr row (delays of a row distinct)
    ĝ = rfft(dr) / C; per channel block: recompute Q̂, K̂, then in place K̂ ← K̂ · ĝ (dQ̂), Q̂ ← Q̂ · conj(ĝ) (dK̂)
    (``autocorr_spectrum_grad``), dq, dk = irfft of these written into the block's columns; dk cut / padded
    back to S steps.

Memory O(B·H·(E+D)·L) (o, dq, dk, dv) + O(min(B·L·H·E, FFT_BLOCK_ELEMENTS)) for the spectra; cost
O(B·H·E·L log L + B·H·D·L·K). No host synchronisation: the delays stay on the device.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..ops._common import new_empty
from . import extension

# Largest B·L·channels (float32 elements) of one FFT block: the same constant as kernels/auto_correlation.py.
FFT_BLOCK_ELEMENTS = 1 << 24


def _channels(x: Tensor) -> Tensor:
    """[B, T, H, E] -> [B, T, H·E] (a view when the strides allow it, else a copy)."""
    return x.flatten(2)


def _channel_blocks(B: int, L: int, C: int) -> list[tuple[int, int]]:
    """[c0, c1) ranges of at most FFT_BLOCK_ELEMENTS // (B·L) channels (at least one) covering C."""
    width = max(1, min(C, FFT_BLOCK_ELEMENTS // max(1, B * L)))
    return [(c0, min(C, c0 + width)) for c0 in range(0, C, width)]


def _spectrum(xc: Tensor, L: int) -> Tensor:
    """rfft along time of xc [B, T, channels] aligned to L (``n=L`` zero-pads or truncates): [B, F, channels]
    complex64 (float32 transforms whatever the input dtype)."""
    return torch.fft.rfft(xc.to(torch.float32), n=L, dim=1)


def _cross_spectrum(q: Tensor, k: Tensor, L: int) -> Tensor:
    """cross [B, F] complex64 = mean over the H·E channels of q̂ · conj(k̂), a channel block at a time."""
    ext = extension()
    B, C = q.shape[0], q.shape[2] * q.shape[3]
    qc, kc = _channels(q), _channels(k)
    cross = new_empty((B, L // 2 + 1), dtype=torch.complex64, device=q.device)
    for n, (c0, c1) in enumerate(_channel_blocks(B, L, C)):
        qf, kf = _spectrum(qc[:, :, c0:c1], L), _spectrum(kc[:, :, c0:c1], L)
        ext.autocorr_cross_spectrum(qf, kf, cross, 1.0 / C, n > 0)
        del qf, kf
    return cross


def _select(r: Tensor, top_k: int, mode: str) -> tuple[Tensor, Tensor]:
    """delays [B, K] int64 (descending correlation, as ``torch.topk``) and the selected r values [B, K]."""
    B = r.shape[0]
    if mode == "train":
        delays = torch.topk(r.mean(dim=0), top_k, dim=-1).indices.unsqueeze(0).expand(B, top_k).contiguous()
    else:
        delays = torch.topk(r, top_k, dim=-1).indices.contiguous()
    return delays, torch.gather(r, 1, delays)


def _unalign(dx: Tensor, S: int, dtype: torch.dtype) -> Tensor:
    """Gradient of the alignment: [B, L, ...] (our own tensor) -> new [B, S, ...] in ``dtype``."""
    B, L = dx.shape[:2]
    if S == L:
        return dx.to(dtype)
    if S < L:
        return dx[:, :S].to(dtype, copy=True).contiguous()  # padding steps have no input
    out = new_empty((B, S) + tuple(dx.shape[2:]), dtype=dtype, device=dx.device)
    out[:, :L] = dx
    out[:, L:] = 0  # steps dropped by the truncation get no gradient
    return out


def auto_correlation_fwd(q: Tensor, k: Tensor, v: Tensor, top_k: int, mode: str):
    """-> (o [B, L, H, D] in q.dtype, delays [B, K] int64, weights [B, K] float32)."""
    ext = extension()
    B, L, H, _ = q.shape
    r = torch.fft.irfft(_cross_spectrum(q, k, L), n=L, dim=-1)  # [B, L] float32
    delays, r_sel = _select(r, top_k, mode)
    weights = torch.softmax(r_sel, dim=-1).contiguous()
    o = new_empty((B, L, H, v.shape[-1]), dtype=q.dtype, device=v.device)
    x = v if v.dtype == q.dtype else v.to(q.dtype)
    ext.autocorr_aggregate(x, delays, weights, 1, L, o)
    return o, delays, weights


def auto_correlation_bwd(do: Tensor, dweights: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, delays: Tensor,
                         weights: Tensor, top_k: int, mode: str):
    """-> (dq [B, L, H, E], dk [B, S, H, E], dv [B, S, H, D]), each in its input's dtype."""
    ext = extension()
    B, L, H, E = q.shape
    S = k.shape[1]
    if do.dtype != v.dtype:
        do = do.to(v.dtype)
    delays = delays.to(torch.int64).contiguous()
    w = weights.to(torch.float32).contiguous()

    # dv: the aggregation transposed (shift do back by each τ); rows ≥ L of dv (when S > L) are written as 0
    dv = new_empty(v.shape, dtype=v.dtype, device=v.device)
    ext.autocorr_aggregate(do, delays, w, -1, L, dv)

    # dw[b, i] = <do, v shifted by τ_i> + the cotangent of the returned weights; the softmax backward scattered to
    # the selected delays of r (distinct in a row): dr[b, τ_i] = w_i (dw_i − Σ_j w_j dw_j), 0 elsewhere — one
    # fused launch after the partial sums (the Triton path does this part in torch)
    dw = new_empty((B, delays.shape[1]), dtype=torch.float32, device=q.device)
    dr = new_empty((B, L), dtype=torch.float32, device=q.device)
    dwt = None if dweights is None else dweights.to(torch.float32).contiguous()
    ext.autocorr_delay_grad(do, v, delays, w, dwt, dw, dr)

    # r = (1/C) Σ_{h,e} corr(k, q): rfft(dq) = k̂·d̂r/C, rfft(dk) = q̂·conj(d̂r)/C, one rfft of dr per sample;
    # a block of channels at a time: recompute its spectra, form both products in place, transform back
    C = H * E
    drf = torch.fft.rfft(dr, dim=-1).contiguous()  # [B, F]
    qc, kc = _channels(q), _channels(k)
    dq = new_empty((B, L, H, E), dtype=q.dtype, device=q.device)
    dk_al = new_empty((B, L, H, E), dtype=k.dtype, device=q.device)
    dq_c, dk_c = dq.view(B, L, C), dk_al.view(B, L, C)
    for c0, c1 in _channel_blocks(B, L, C):
        qf, kf = _spectrum(qc[:, :, c0:c1], L), _spectrum(kc[:, :, c0:c1], L)
        ext.autocorr_spectrum_grad(qf, kf, drf, 1.0 / C)
        dq_c[:, :, c0:c1] = torch.fft.irfft(kf, n=L, dim=1)
        dk_c[:, :, c0:c1] = torch.fft.irfft(qf, n=L, dim=1)
        del qf, kf
    return dq, _unalign(dk_al, S, k.dtype), dv
