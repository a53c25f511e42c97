"""Sliding-window attention (SPEC §2), ``cuda`` backend: the FlashAttention-2-style kernels of
``csrc/sliding_window.cu``.

Math. s_ij = scale·q_i·k_j over the allowed keys i − left ≤ j ≤ i + right of i's sequence (−1 = unbounded):
lse_i = log Σ_j exp(s_ij), o_i = Σ_j exp(s_ij − lse_i) v_j.

Two kernel families (csrc/sliding_window.cu). float16/bfloat16 inputs (D, Dv ≤ 256) on sm_80+ run the
FlashAttention-2 kernels: 64-row query (or key) blocks of 4 warps (128 query rows in the D ≤ 64 forward), tile
products on tensor cores with ``mma.sync.m16n8k16`` (float32 accumulation), scores / probabilities / accumulators
in registers, ldmatrix fragments, K/V (backward: Q/dO) tiles double-buffered with 16-byte ``cp.async``, head dims
padded to 64, 128 or 256 with zeros (at 256: 32-key tiles in dq, dk/dv in two column halves per key tile).
Everything else (float32 inputs — exact FMA products, as the Triton kernels' "ieee" float32 path — and devices
before sm_80) runs the generic kernels described next; ``FLASHTS_SWA_GENERIC=1`` forces them (for comparisons).

Generic kernels (see the header of csrc/sliding_window.cu): query and key blocks of BT ∈ {64, 32, 16} rows (the
largest that fits in shared memory). Forward: one thread block per (query block, head, sequence) visits only
the key blocks intersecting the window, with an online softmax (running max / sum per row, masked scores never
exponentiated) and writes o and lse. Backward: δ_i = do_i·o_i − dlse_i (a small kernel), then dq per query
block (recomputing P = exp(s − lse) and dS = P ⊙ (dP − δ)) and dk, dv per key block and KV head, looping over
the G query heads of its group and the query blocks that can see it — no atomics, deterministic. QKᵀ, PV and the
backward products run on tensor cores (wmma, float32 accumulation) for float16/bfloat16 inputs, as float32 FMA
for float32 inputs.

Supported: float32/float16/bfloat16 inputs with any strides, D ≤ 256 and Dv ≤ 256 (``MAX_HEAD_DIM``; larger
head dims raise RuntimeError so callers can use backend="triton" or "torch"), any window, GQA, cu_seqlens.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..ops._common import new_empty
from . import extension

_F32 = torch.float32
# Largest D and Dv the kernels take (csrc/sliding_window.h, kMaxHeadDim).
MAX_HEAD_DIM = 256


def _check_dims(D: int, Dv: int) -> None:
    if D > MAX_HEAD_DIM or Dv > MAX_HEAD_DIM:
        raise RuntimeError(
            f"sliding_window_attention: backend 'cuda' supports head dims up to {MAX_HEAD_DIM} (got D={D}, "
            f"Dv={Dv}); use backend='triton' or backend='torch'")


def _packing(cu_seqlens: Optional[Tensor], T: int) -> tuple[Optional[Tensor], int]:
    """(int32 contiguous cu_seqlens or None, longest sequence) — the latter sizes the kernel grid."""
    if cu_seqlens is None:
        return None, T
    cu = cu_seqlens.to(torch.int32).contiguous()
    max_len = int((cu[1:] - cu[:-1]).max().item()) if cu.numel() > 1 else 0
    return cu, max_len


def _side(x: int, T: int) -> int:
    """A window side as the kernels take it: −1 (unbounded), else clamped to T (larger is the same)."""
    return -1 if x < 0 else min(int(x), T)


def sliding_window_attention_fwd(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Optional[Tensor], left: int,
                                 right: int, scale: float) -> tuple[Tensor, Tensor]:
    """-> (o [B, T, H, Dv] in q.dtype, lse [B, H, T] float32)."""
    B, T, H, D = q.shape
    Dv = v.shape[-1]
    _check_dims(D, Dv)
    ext = extension()
    cu, max_len = _packing(cu_seqlens, T)
    o = new_empty((B, T, H, Dv), dtype=q.dtype, device=q.device)
    lse = new_empty((B, H, T), dtype=_F32, device=q.device)
    ext.sliding_window_attention_fwd(q, k, v, cu, max_len, _side(left, T), _side(right, T), float(scale), o, lse)
    return o, lse


def sliding_window_attention_bwd(do: Tensor, dlse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, o: Tensor,
                                 lse: Tensor, cu_seqlens: Optional[Tensor], left: int, right: int,
                                 scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """-> (dq, dk, dv) in the dtypes and shapes of q, k, v."""
    B, T, H, D = q.shape
    Dv = v.shape[-1]
    _check_dims(D, Dv)
    ext = extension()
    cu, max_len = _packing(cu_seqlens, T)
    dev = q.device
    if do.dtype != q.dtype:
        do = do.to(q.dtype)
    if o.dtype != q.dtype:
        o = o.to(q.dtype)
    lse = lse.to(_F32).contiguous()
    dlse = None if dlse is None else dlse.to(_F32).contiguous()
    delta = new_empty((B, H, T), dtype=_F32, device=dev)
    dq = new_empty(q.shape, dtype=q.dtype, device=dev)
    dk = new_empty(k.shape, dtype=k.dtype, device=dev)
    dv = new_empty(v.shape, dtype=v.dtype, device=dev)
    ext.sliding_window_attention_bwd(do, dlse, q, k, v, o, lse, cu, max_len, _side(left, T), _side(right, T),
                                     float(scale), delta, dq, dk, dv)
    return dq, dk, dv
