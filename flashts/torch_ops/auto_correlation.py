"""Auto-correlation (Autoformer, SPEC §3), ``torch`` backend: FFT correlation, top-K delays, explicit backward.

Shapes: ``q [B, L, H, E]``, ``k [B, S, H, E]``, ``v [B, S, H, D]`` (E ≠ D allowed). k and v are aligned to L
first: zero-padded when L > S, cut to their first L steps otherwise (``rfft(k, n=L)`` does both for k).

Forward
    r[b, τ] = (1/HE) Σ_{h,e} Σ_t q[b,(t+τ) mod L,h,e] · k[b,t,h,e]
            = irfft( mean_{h,e}( rfft(q) · conj(rfft(k)) ), n=L )[τ]
    The mean over (h, e) commutes with the (linear) inverse FFT, so it is taken in the frequency domain:
    H·E forward FFTs of q and of k, but ONE inverse FFT per sample (the original runs H·E of them).
    delays τ_1..τ_K: top-K of mean_b r (mode "train", shared by the batch) or of r[b] (mode "infer");
    w[b, i] = softmax_i r[b, τ_i];   o[b, t] = Σ_i w[b, i] · v[b, (t + τ_i) mod L].
    Aggregation is a Python loop over the K delays that accumulates into ``o``; no shifted copy of v is
    ever made: a circular shift by τ is two contiguous time slices,
    o[:, :L−τ] += w·v[:, τ:] and o[:, L−τ:] += w·v[:, :τ].
    "train": one loop for the whole batch (shared delays); "infer": the same loop per sample (own delays).

Backward (by hand; indices carry no gradient)
    dv[b, s]  = Σ_i w[b,i] · do[b, (s − τ_i) mod L]                        (transpose of the shift)
    dw[b, i]  = Σ_{t,h,d} do[b,t,h,d] · v[b,(t+τ_i) mod L,h,d]  (+ cotangent of the returned weights)
    dz[b, i]  = w ⊙ (dw − Σ_j w_j dw_j)                                    (softmax backward)
    dr[b, τ_i] = dz[b, i], zero elsewhere                                  ([B, L])
    From r = (1/HE) Σ_{h,e} corr(k, q):
    dq[u] = (1/HE) Σ_τ dr[τ] · k[(u−τ) mod L]  → rfft(dq) = rfft(dr) · rfft(k) / HE        (circular convolution)
    dk[t] = (1/HE) Σ_τ dr[τ] · q[(t+τ) mod L]  → rfft(dk) = conj(rfft(dr)) · rfft(q) / HE  (circular correlation)
    One rfft of dr per sample, broadcast over (h, e). dk, dv of the aligned length L map back to S steps:
    the first S steps when L > S (the padding has no input), zeros after step L when L < S.

Precision: everything in float32 (float64 for float64 inputs); o, dq, dk, dv are cast to the input dtype;
weights float32 (float64 for float64 inputs); delays int64 [B, K]. Memory O(B·H·(E+D)·L): the FFT spectra
of q and k, the aligned v (and do), o; cost O(B·H·E·L·log L + B·H·D·L·K). The delays are read to the host
once per forward and once per backward (``tolist``) to slice with them: 2·B·K slice operations per pass in
"infer" mode, 2·K in "train".
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..ops._common import new_empty, state_dtype


# --------------------------------------------------------------------------- helpers

def _align(x: Tensor, L: int, dtype: torch.dtype) -> Tensor:
    """x [B, S, ...] -> [B, L, ...] in ``dtype``: zero-padded in time if L > S, else its first L steps."""
    S = x.shape[1]
    if S >= L:
        return x[:, :L].to(dtype)
    out = x.new_zeros((x.shape[0], L) + tuple(x.shape[2:]), dtype=dtype)
    out[:, :S] = x
    return out


def _unalign(dx_aligned: Tensor, S: int, dtype: torch.dtype) -> Tensor:
    """Gradient of ``_align``: [B, L, ...] -> [B, S, ...] in ``dtype`` (new tensor)."""
    B, L = dx_aligned.shape[:2]
    if S == L:
        return dx_aligned.to(dtype)  # dx_aligned is our own new tensor
    if S < L:
        return dx_aligned[:, :S].to(dtype, copy=True).contiguous()  # the padding steps have no input
    out = new_empty((B, S) + tuple(dx_aligned.shape[2:]), dtype=dtype, device=dx_aligned.device)
    out[:, :L] = dx_aligned
    out[:, L:] = 0  # steps dropped by the alignment get no gradient
    return out


def _spectra(q: Tensor, k: Tensor, L: int, cdt: torch.dtype):
    """rfft along time of q and of k aligned to L (zero padding / truncation via ``n=L``): [B, L//2+1, H, E]."""
    qf = torch.fft.rfft(q.to(cdt), n=L, dim=1)
    kf = torch.fft.rfft(k.to(cdt), n=L, dim=1)
    return qf, kf


def _mean_correlation(qf: Tensor, kf: Tensor, L: int) -> Tensor:
    """r [B, L] = irfft(mean_{h,e} qf · conj(kf), n=L): one inverse FFT per sample."""
    H, E = qf.shape[2:]
    # an elementwise product and a sum over (h, e): the spectra come out of rfft in a [B, H, E, F] memory
    # layout, which a reshape for einsum/bmm would copy first (3.6x slower at B=4 L=96 H=4 E=32 on CPU).
    # conj_physical, not the lazy conj view: under torch.compile (aot_eager) the custom op's body ran with the
    # conjugate bit ignored, i.e. it computed Σ qf·kf (seen with torch 2.13).
    cross = (qf * kf.conj_physical()).sum(dim=(2, 3)) / (H * E)
    return torch.fft.irfft(cross, n=L, dim=-1)


def _select(r: Tensor, top_k: int, mode: str) -> tuple[Tensor, Tensor]:
    """delays [B, K] int64 (descending correlation, as ``torch.topk``) and the selected r values [B, K]."""
    B = r.shape[0]
    if mode == "train":
        delays = torch.topk(r.mean(dim=0), top_k, dim=-1).indices.unsqueeze(0).expand(B, top_k).contiguous()
    else:
        delays = torch.topk(r, top_k, dim=-1).indices.contiguous()
    return delays, torch.gather(r, 1, delays)


def _groups(delays: Tensor, mode: str) -> list[tuple[slice, list[int]]]:
    """Batch slices that share their delays: the whole batch ("train") or one sample each ("infer")."""
    if mode == "train":
        return [(slice(None), delays[0].tolist())]
    return [(slice(b, b + 1), row) for b, row in enumerate(delays.tolist())]


def _shift_accumulate(x: Tensor, weights: Tensor, shifts: list[int], out: Tensor) -> None:
    """out[b, t] = Σ_i weights[b, i] · x[b, (t + shifts[i]) mod L] for a group of samples sharing the shifts.

    The circular shift by s is two contiguous time slices, so no shifted copy of x is ever made:
    out[:, :L−s] += w·x[:, s:] and out[:, L−s:] += w·x[:, :s]. ``out`` may be uninitialised: the first
    delay writes every element.
    """
    L = x.shape[1]
    for i, s in enumerate(shifts):
        s %= L
        w = weights[:, i, None, None, None]
        head, tail = out[:, :L - s], out[:, L - s:]
        if i == 0:
            torch.mul(x[:, s:], w, out=head)
            torch.mul(x[:, :s], w, out=tail)
        else:
            head.addcmul_(x[:, s:], w)
            tail.addcmul_(x[:, :s], w)


def _aggregate(x: Tensor, weights: Tensor, groups: list[tuple[slice, list[int]]], sign: int) -> Tensor:
    """out[b, t] = Σ_i weights[b, i] · x[b, (t + sign·τ_{b,i}) mod L]  (x [B, L, H, D] -> new [B, L, H, D])."""
    out = new_empty(x.shape, dtype=x.dtype, device=x.device)
    for batch, shifts in groups:
        _shift_accumulate(x[batch], weights[batch], [sign * s for s in shifts], out[batch])
    return out


def _delay_dots(do: Tensor, v: Tensor, groups: list[tuple[slice, list[int]]], K: int) -> Tensor:
    """dw[b, i] = Σ_{t,h,d} do[b,t,h,d] · v[b,(t+τ_{b,i}) mod L,h,d]  ([B, K]; do, v [B, L, H, D]).

    One product buffer [B, L, H, D], refilled per delay from the two time slices of the shift, then summed
    with torch's cascade summation (BLAS dot / bmm accumulate long float32 sums less accurately).
    """
    B, L = do.shape[:2]
    dw = do.new_empty((B, K))
    prod = torch.empty_like(do)
    for batch, shifts in groups:
        do_g, v_g, prod_g = do[batch], v[batch], prod[batch]
        for i, s in enumerate(shifts):
            s %= L
            torch.mul(do_g[:, :L - s], v_g[:, s:], out=prod_g[:, :L - s])
            torch.mul(do_g[:, L - s:], v_g[:, :s], out=prod_g[:, L - s:])
            dw[batch, i] = prod_g.sum(dim=(1, 2, 3))
    return dw


# --------------------------------------------------------------------------- backend entry points

def auto_correlation_fwd(q: Tensor, k: Tensor, v: Tensor, top_k: int, mode: str):
    """-> (o [B, L, H, D] in q.dtype, delays [B, K] int64, weights [B, K] float32/float64)."""
    L = q.shape[1]
    cdt = state_dtype(q.dtype)
    qf, kf = _spectra(q, k, L, cdt)
    r = _mean_correlation(qf, kf, L)
    del qf, kf
    delays, r_sel = _select(r, top_k, mode)
    weights = torch.softmax(r_sel, dim=-1)

    o = _aggregate(_align(v, L, cdt).contiguous(), weights, _groups(delays, mode), +1)
    return o.to(q.dtype), delays, weights


def auto_correlation_bwd(do: Tensor, dweights: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, delays: Tensor,
                         weights: Tensor, top_k: int, mode: str):
    """-> (dq [B, L, H, E], dk [B, S, H, E], dv [B, S, H, D]), each in its input's dtype."""
    B, L, H, E = q.shape
    S = k.shape[1]
    cdt = state_dtype(q.dtype)
    do_c = do.to(cdt).contiguous()
    w = weights.to(cdt)
    groups = _groups(delays, mode)  # delays read to the host once

    # dv: the aggregation transposed — shift do back by each τ (aligned length L, then back to S steps)
    dv_al = _aggregate(do_c, w, groups, -1)
    dv = _unalign(dv_al, S, v.dtype)
    del dv_al

    # dw: <do, v shifted by τ_i>, plus the cotangent of the returned weights
    v_al = _align(v, L, cdt).contiguous()
    dw = _delay_dots(do_c, v_al, groups, delays.shape[1])
    del v_al
    if dweights is not None:
        dw = dw + dweights.to(cdt)
    # softmax backward: dz_i = w_i (dw_i − Σ_j w_j dw_j), scattered to the selected delays of r
    dz = w * (dw - (w * dw).sum(dim=-1, keepdim=True))
    dr = torch.zeros((B, L), dtype=cdt, device=q.device).scatter_add_(1, delays, dz)

    # r = (1/HE) Σ_{h,e} corr(k, q)  ⇒  dq = conv(dr, k)/HE, dk = corr(dr, q)/HE, one rfft of dr per sample
    qf, kf = _spectra(q, k, L, cdt)
    drf = torch.fft.rfft(dr, dim=-1)[:, :, None, None] / (H * E)  # [B, F, 1, 1]
    dq = torch.fft.irfft(kf * drf, n=L, dim=1)
    del kf
    dk_al = torch.fft.irfft(qf * drf.conj_physical(), n=L, dim=1)  # not the lazy conj (see above)
    del qf
    dk = _unalign(dk_al, S, k.dtype)
    return dq.to(q.dtype), dk, dv
