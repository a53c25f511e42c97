"""Aaren (SPEC §4) and Latte (SPEC §5), ``cuda`` backend: the prefix-scan kernels of ``csrc/prefix_scan.cu``.

One core for both ops, per row (sequence, head), with logits a ``[T, L]``, mixing weights p ``[T, L]``, values
v ``[T, Dv]`` and the state (m, α, S) per latent::

    M_t = max(M_{t−1}, a_t),  den_t = den_{t−1} e^{M_{t−1}−M_t} + e^{a_t−M_t},  num_t = num_{t−1} e^{M_{t−1}−M_t} + e^{a_t−M_t} v_t
    y_t = Σ_l p_{t,l} num_{t,l} / den_{t,l}                      (Aaren: L = 1, a = scale·q·k, p = 1;
                                                                  Latte: a = k, p = softmax_l(q_t))

Forward (csrc/prefix_scan.cu "chunk-parallel forward", csrc/scan_chunk.cuh): chunks of 16 steps — chunk summaries
in parallel, a light scan of the states, every chunk's outputs in parallel (tensor-core tile products for 16-bit
inputs), or one block per (sequence, head, Dv tile) over its chunks when N·H fills the GPU (the occupancy rule);
the binding allocates the chunk-state workspace. Backward blocking (see the header of csrc/prefix_scan.cu): one
thread block per (sequence, head) walks time in tiles of
up to 32 steps with the state in shared memory; inside a tile the per-latent maxima/normalisers are a
sequential loop per latent, the (latent, value-column) recurrences run on (warp, lane) pairs and the sum over
latents is a fixed-order reduction of per-warp partials (deterministic).

Backward: a recompute sweep stores per position and latent the forward max M, c = p/den and r = −c·(dy·mean)
(3·T·L floats of workspace, allocated by the binding; the per-position means, T·L·Dv, are never stored), then
a reverse sweep (decay factors e^{M_t − M_{t+1}} ≤ 1) produces dv, dlogits and the initial-state gradients,
with the final-state cotangents entering at the last step. Aaren: dk = scale·da·q, dq = scale·Σ_t da_t k_t
per (sequence, head), summed here over the batch / sequences when q is shared (``[H, D]``) or packed.
Latte: dq = p ⊙ (dp − Σ_l p dp) in the recompute sweep. Bidirectional Latte: the per-latent softmax over the
whole row (state sweep) then the output / the two reductions of its backward, in one kernel each.

Inputs float32/float16/bfloat16 (any strides), float32 accumulation; outputs in the input dtype; states and
state gradients float32. ``cu_seqlens``: one block per (sequence, head) over its own time range.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..ops._common import new_empty
from . import decode, extension

_F32 = torch.float32


def _f32(x: Optional[Tensor]) -> Optional[Tensor]:
    """A state (or state cotangent) as a contiguous float32 tensor; None stays None."""
    return None if x is None else x.to(_F32).contiguous()


def _cu(cu_seqlens: Optional[Tensor]) -> Optional[Tensor]:
    return None if cu_seqlens is None else cu_seqlens.to(torch.int32).contiguous()


def _n_seq(B: int, cu_seqlens: Optional[Tensor]) -> int:
    return B if cu_seqlens is None else cu_seqlens.shape[0] - 1


# ----------------------------------------------------------------------------------------------- Aaren

def aaren_attention_fwd(q, k, v, m0, u0, w0, cu_seqlens, scale):
    """-> (o [B, T, H, Dv] in k.dtype, m_T [N, H], u_T [N, H], w_T [N, H, Dv]) (float32 states)."""
    C = extension()
    B, T, H, _ = k.shape
    if decode.use_decode_step(T, m0 is not None, cu_seqlens):  # one decode-step kernel (decode.py)
        return decode.aaren_fwd_step(q, k, v, m0, u0, w0, scale)
    Dv = v.shape[-1]
    N = _n_seq(B, cu_seqlens)
    dev = k.device
    o = new_empty((B, T, H, Dv), dtype=k.dtype, device=dev)
    mT = new_empty((N, H), dtype=_F32, device=dev)
    uT = new_empty((N, H), dtype=_F32, device=dev)
    wT = new_empty((N, H, Dv), dtype=_F32, device=dev)
    C.aaren_fwd(q, k, v, _f32(m0), _f32(u0), _f32(w0), _cu(cu_seqlens), float(scale), o, mT, uT, wT)
    return o, mT, uT, wT


def aaren_attention_bwd(do, du_T, dw_T, q, k, v, o, m0, u0, w0, cu_seqlens, scale):
    """-> (dq (shape of q), dk, dv, du0, dw0); du0/dw0 are None without an initial state."""
    C = extension()
    B, T, H, D = k.shape
    Dv = v.shape[-1]
    N = _n_seq(B, cu_seqlens)
    dev = k.device
    if do.dtype != k.dtype:
        do = do.to(k.dtype)
    dq_rows = new_empty((N, H, D), dtype=_F32, device=dev)
    dk = new_empty(k.shape, dtype=k.dtype, device=dev)
    dv = new_empty(v.shape, dtype=v.dtype, device=dev)
    du0 = dw0 = None
    if m0 is not None:
        du0 = new_empty((N, H), dtype=_F32, device=dev)
        dw0 = new_empty((N, H, Dv), dtype=_F32, device=dev)
    C.aaren_bwd(do, _f32(du_T), _f32(dw_T), q, k, v, _f32(m0), _f32(u0), _f32(w0), _cu(cu_seqlens), float(scale),
                dq_rows, dk, dv, du0, dw0)
    # dq of each (sequence, head); a shared q [H, D] sums over all rows, a packed q [1, H, D] over the sequences
    if q.dim() == 2:
        dq = dq_rows.sum(dim=0)
    elif cu_seqlens is not None:
        dq = dq_rows.sum(dim=0, keepdim=True)
    else:
        dq = dq_rows
    if du0 is not None:
        du0, dw0 = du0.to(u0.dtype), dw0.to(w0.dtype)
    return dq.to(q.dtype), dk, dv, du0, dw0


# ----------------------------------------------------------------------------------------------- Latte

def latte_attention_fwd(q, k, v, m0, a0, S0, cu_seqlens, causal):
    """-> (o [B, T, H, Dv], m_T [N, H, L], a_T [N, H, L], S_T [N, H, L, Dv]); states None when not causal."""
    C = extension()
    B, T, H, L = q.shape
    if decode.use_decode_step(T, m0 is not None, cu_seqlens, causal):  # one decode-step kernel (decode.py)
        return decode.latte_fwd_step(q, k, v, m0, a0, S0)
    Dv = v.shape[-1]
    N = _n_seq(B, cu_seqlens)
    dev = q.device
    o = new_empty((B, T, H, Dv), dtype=q.dtype, device=dev)
    mT = aT = ST = None
    if causal:
        mT = new_empty((N, H, L), dtype=_F32, device=dev)
        aT = new_empty((N, H, L), dtype=_F32, device=dev)
        ST = new_empty((N, H, L, Dv), dtype=_F32, device=dev)
    C.latte_fwd(q, k, v, _f32(m0), _f32(a0), _f32(S0), _cu(cu_seqlens), bool(causal), o, mT, aT, ST)
    return o, mT, aT, ST


def latte_attention_bwd(do, da_T, dS_T, q, k, v, o, m0, a0, S0, cu_seqlens, causal):
    """-> (dq, dk, dv, da0, dS0); da0/dS0 are None without an initial state."""
    C = extension()
    B, T, H, L = q.shape
    Dv = v.shape[-1]
    N = _n_seq(B, cu_seqlens)
    dev = q.device
    if do.dtype != q.dtype:
        do = do.to(q.dtype)
    dq = new_empty(q.shape, dtype=q.dtype, device=dev)
    dk = new_empty(k.shape, dtype=k.dtype, device=dev)
    dv = new_empty(v.shape, dtype=v.dtype, device=dev)
    da0 = dS0 = None
    if causal and m0 is not None:
        da0 = new_empty((N, H, L), dtype=_F32, device=dev)
        dS0 = new_empty((N, H, L, Dv), dtype=_F32, device=dev)
    if not causal:
        da_T = dS_T = None
    C.latte_bwd(do, _f32(da_T), _f32(dS_T), q, k, v, _f32(m0), _f32(a0), _f32(S0), _cu(cu_seqlens), bool(causal),
                dq, dk, dv, da0, dS0)
    if da0 is not None:
        da0, dS0 = da0.to(a0.dtype), dS0.to(S0.dtype)
    return dq, dk, dv, da0, dS0
