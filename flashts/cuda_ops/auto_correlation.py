"""Auto-correlation (Autoformer, SPEC §3), ``cuda`` backend: cuFFT via torch + the kernels of
``csrc/auto_correlation.cu``.

Shapes: ``q [B, L, H, E]``, ``k [B, S, H, E]``, ``v [B, S, H, D]`` (E ≠ D allowed); float32/float16/bfloat16
inputs, float32 inside. Alignment: ``rfft(k, n=L)`` zero-pads / truncates k; the kernels read v (and write dv)
with the alignment built in (rows ≥ S of the aligned v are 0, rows ≥ L of dv are 0), so no aligned copy of v
is made.

Forward
    Q̂ = rfft(q, n=L), K̂ = rfft(k, n=L) along time (torch / cuFFT), [B, F, H, E] complex64, F = L//2 + 1.
    cross[b, f] = (1/HE) Σ_{h,e} Q̂ · conj(K̂)                  kernel ``autocorr_spectrum_mean`` ([B, F])
    r = irfft(cross, n=L)                                      one inverse FFT per sample (torch)
    delays: top-K of mean_b r ("train", rows equal) or of r[b] ("infer"); w = softmax(r[b, τ]) (torch, [B, K]).
    o[b, t] = Σ_i w[b, i] · v[b, (t + τ_i) mod L]              kernel ``autocorr_aggregate`` (sign +1): v read
                                                               once per delay, o written once, no rolled copies.
Backward (indices carry no gradient)
    dv[b, s] = Σ_i w[b, i] · do[b, (s − τ_i) mod L]            ``autocorr_aggregate`` with sign −1 (S rows)
    dw[b, i] = Σ_{t,h,d} do[b, t] · v[b, (t + τ_i) mod L]      ``autocorr_delay_dots`` (block partials + a
                                                               fixed-order second pass: deterministic)
               (+ the cotangent of the returned weights)
    dz = w ⊙ (dw − Σ_j w_j dw_j); dr[b, τ_i] = dz[b, i]          softmax backward, scatter (torch; delays of a
                                                               row are distinct, so the scatter is exact)
    ĝ = rfft(dr) / HE;  dQ̂ = K̂ · ĝ,  dK̂ = Q̂ · conj(ĝ)         one rfft per sample (torch) and the kernel
                                                               ``autocorr_spectrum_grad`` (elementwise)
    dq = irfft(dQ̂, n=L), dk = irfft(dK̂, n=L) cut / padded back to S steps (torch).
    Q̂, K̂ are recomputed in the backward (the contract saves q, k, v only).

Memory O(B·H·(E+D)·L) (the spectra and the outputs); cost O(B·H·E·L log L + B·H·D·L·K).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..ops._common import new_empty
from . import extension


def _spectra(q: Tensor, k: Tensor, L: int) -> tuple[Tensor, Tensor]:
    """rfft along time of q and of k aligned to L (``n=L`` pads / truncates), contiguous complex64 [B, F, H, E]."""
    qf = torch.fft.rfft(q.float(), n=L, dim=1).contiguous()
    kf = torch.fft.rfft(k.float(), n=L, dim=1).contiguous()
    return qf, kf


def _select(r: Tensor, top_k: int, mode: str) -> tuple[Tensor, Tensor]:
    """delays [B, K] int64 (descending correlation, as ``torch.topk``) and the selected r values [B, K]."""
    B = r.shape[0]
    if mode == "train":
        delays = torch.topk(r.mean(dim=0), top_k, dim=-1).indices.unsqueeze(0).expand(B, top_k).contiguous()
    else:
        delays = torch.topk(r, top_k, dim=-1).indices.contiguous()
    return delays, torch.gather(r, 1, delays)


def auto_correlation_fwd(q: Tensor, k: Tensor, v: Tensor, top_k: int, mode: str):
    """-> (o [B, L, H, D] in q.dtype, delays [B, K] int64, weights [B, K] float32)."""
    C = extension()
    B, L, H, _ = q.shape
    qf, kf = _spectra(q, k, L)
    cross = new_empty(qf.shape[:2], dtype=torch.complex64, device=q.device)
    C.autocorr_spectrum_mean(qf, kf, cross)
    del qf, kf
    r = torch.fft.irfft(cross, n=L, dim=-1)  # [B, L] float32
    delays, r_sel = _select(r, top_k, mode)
    weights = torch.softmax(r_sel, dim=-1).contiguous()
    o = new_empty((B, L, H, v.shape[-1]), dtype=v.dtype, device=v.device)
    C.autocorr_aggregate(v, delays, weights, 1, L, o)
    return o, delays, weights


def auto_correlation_bwd(do: Tensor, dweights: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, delays: Tensor,
                         weights: Tensor, top_k: int, mode: str):
    """-> (dq [B, L, H, E], dk [B, S, H, E], dv [B, S, H, D]), each in its input's dtype."""
    C = extension()
    B, L, H, E = q.shape
    S = k.shape[1]
    if do.dtype != v.dtype:
        do = do.to(v.dtype)
    delays = delays.to(torch.int64).contiguous()
    w = weights.float().contiguous()

    # dv: the aggregation transposed (shift do back by each τ); rows ≥ L of dv (when S > L) are written as 0
    dv = new_empty(v.shape, dtype=v.dtype, device=v.device)
    C.autocorr_aggregate(do, delays, w, -1, L, dv)

    # dw[b, i] = <do, v shifted by τ_i>, plus the cotangent of the returned weights
    dw = new_empty((B, delays.shape[1]), dtype=torch.float32, device=q.device)
    C.autocorr_delay_dots(do, v, delays, dw)
    if dweights is not None:
        dw = dw + dweights.float()
    # softmax backward, scattered to the selected delays of r (the delays of one row are distinct)
    dz = w * (dw - (w * dw).sum(dim=-1, keepdim=True))
    dr = torch.zeros((B, L), dtype=torch.float32, device=q.device).scatter_(1, delays, dz)

    # r = (1/HE) Σ_{h,e} corr(k, q): dq = irfft(K̂ · ĝ), dk = irfft(Q̂ · conj(ĝ)), ĝ = rfft(dr)/HE
    drf = torch.fft.rfft(dr, dim=-1).contiguous()  # [B, F]
    qf, kf = _spectra(q, k, L)
    dqf = new_empty(qf.shape, dtype=torch.complex64, device=q.device)
    dkf = new_empty(qf.shape, dtype=torch.complex64, device=q.device)
    C.autocorr_spectrum_grad(qf, kf, drf, 1.0 / (H * E), dqf, dkf)
    del qf, kf
    dq = torch.fft.irfft(dqf, n=L, dim=1)
    del dqf
    dk_al = torch.fft.irfft(dkf, n=L, dim=1)  # [B, L, H, E]
    del dkf
    if S <= L:
        dk = dk_al[:, :S].to(k.dtype, copy=True).contiguous()  # the padding steps have no input
    else:
        dk = new_empty(k.shape, dtype=k.dtype, device=k.device)
        dk[:, :L] = dk_al
        dk[:, L:] = 0  # steps dropped by the alignment get no gradient
    return dq.to(q.dtype), dk, dv
