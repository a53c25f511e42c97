"""Linear attention (SPEC §1), ``cuda`` backend: the chunkwise kernels of ``csrc/linear_attention.cu``.

Math. q̃_t = scale·φ(q_t), k̃_t = φ(k_t);  S_t = S_0 + Σ_{s∈A(t)} k̃_s v_sᵀ,  z_t = z_0 + Σ_{s∈A(t)} k̃_s;
o_t = q̃_tᵀ S_t / (q̃_t·z_t + eps) (normalize) or q̃_tᵀ S_t;  A(t) = {s ≤ t} (causal) or all s.

Forward, two modes picked per call by the occupancy rule of kernels/occupancy.py (csrc/linear_attention.h
FwdPlan, with the device's SM count; ``FWD_MODE`` forces one):
* chunk-parallel (whenever N·H < 2·SMs, e.g. every goal shape): phase 1 writes every chunk's summary K̃_cᵀ V_c
  and colsum K̃_c (B·NS·H·⌈Dv/BV⌉ blocks), phase 2 scans them along the chunks in float32 (with the initial
  state; the final state out), phase 3 writes every chunk's outputs O_c = Q̃_c S_c + tril(Q̃_c K̃_cᵀ) V_c in
  parallel; a float32 workspace [B, NS, H, Dp·(Dvp+1)] holds the chunk states.
* one pass: one thread block per (sequence, query head) walks time
in chunks of C ∈ {64, 32, 16} steps (the largest that fits in shared memory) with the float32 state [D, Dv]
(and z [D]) resident in shared memory:  O_c = Q̃_c S + tril(Q̃_c K̃_cᵀ) V_c,  S += K̃_cᵀ V_c. The chunk products
run on tensor cores in TF32 (wmma, float32 accumulation) for float16/bfloat16 inputs — whose values are exact
in TF32, while the float32 state is never rounded to a 16-bit type that could overflow — and as plain float32
FMA for float32 inputs. Non-causal: a first sweep sums the whole state, a second applies it.

Backward: a forward-order kernel recomputes den, stores inv = 1/(den+eps) and dden = −inv·(do·o) per position
(two float32 [B, T, H] workspaces) and writes dq; a reverse-order kernel carries the state cotangent
(dS, dz) from (dS_T, dz_T) to (dS_0, dz_0) and writes dk, dv for each QUERY head in float32; this module sums
the H/Hk query heads of each GQA group and casts (torch glue). In the chunk-parallel mode (same rule) both
kernels run one block per chunk: the chunk states come from the forward's summaries + scan, the state cotangent
leaving each chunk from a reverse scan of the chunk summaries Q̃ᵀ dO' (two float32 workspaces of the forward's
size).

Supported: float32/float16/bfloat16 inputs with any strides, D ≤ 128 and Dv ≤ 128 (``MAX_HEAD_DIM``; larger
head dims raise RuntimeError so callers can use backend="triton" or "torch"), every option of the op, GQA,
cu_seqlens, initial/final states (float32).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..ops._common import new_empty
from . import decode, extension

_F32 = torch.float32
# Largest D and Dv the kernels take (csrc/linear_attention.h, kMaxHeadDim).
MAX_HEAD_DIM = 128
# Forward and backward launch mode: "auto" (the occupancy rule of csrc/linear_attention.h FwdPlan: one pass only when N·H
# fills 2 blocks per SM, else the chunk-parallel three-phase forward), or a fixed "one_pass" / "chunked"
# (tests set it to cover both).
FWD_MODE = "auto"


def _check_dims(D: int, Dv: int) -> None:
    if D > MAX_HEAD_DIM or Dv > MAX_HEAD_DIM:
        raise RuntimeError(
            f"linear_attention: backend 'cuda' supports head dims up to {MAX_HEAD_DIM} (got D={D}, Dv={Dv}); "
            "use backend='triton' or backend='torch'")


def _f32(x: Optional[Tensor]) -> Optional[Tensor]:
    """A state (or state cotangent) as a contiguous float32 tensor; None stays None."""
    return None if x is None else x.to(_F32).contiguous()


def _cu(cu_seqlens: Optional[Tensor]) -> Optional[Tensor]:
    return None if cu_seqlens is None else cu_seqlens.to(torch.int32).contiguous()


def _group_sum(x_heads: Tensor, kv_heads: int, dtype: torch.dtype) -> Tensor:
    """``[B, T, H, F]`` float32 per query head -> new ``[B, T, kv_heads, F]`` in ``dtype`` (GQA group sums)."""
    B, T, H, Fd = x_heads.shape
    if H == kv_heads:
        return x_heads if dtype == x_heads.dtype else x_heads.to(dtype)
    summed = x_heads.view(B, T, kv_heads, H // kv_heads, Fd).sum(3)
    return summed if dtype == summed.dtype else summed.to(dtype)


def linear_attention_fwd(q: Tensor, k: Tensor, v: Tensor, S0: Optional[Tensor], z0: Optional[Tensor],
                         cu_seqlens: Optional[Tensor], causal: bool, feature_map: str, normalize: bool,
                         scale: float, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """-> (o [B, T, H, Dv] in q.dtype, S_T [N, H, D, Dv], z_T [N, H, D]) (float32 states)."""
    B, T, H, D = q.shape
    Dv = v.shape[-1]
    if decode.use_decode_step(T, S0 is not None, cu_seqlens, causal):  # one decode-step kernel (decode.py)
        return decode.linear_fwd_step(q, k, v, S0, z0, feature_map, normalize, scale, eps)
    _check_dims(D, Dv)
    ext = extension()
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    dev = q.device
    o = new_empty((B, T, H, Dv), dtype=q.dtype, device=dev)
    S_T = new_empty((N, H, D, Dv), dtype=_F32, device=dev)
    z_T = new_empty((N, H, D), dtype=_F32, device=dev)
    ext.linear_attention_fwd(q, k, v, _f32(S0), _f32(z0), _cu(cu_seqlens), bool(causal), feature_map,
                             bool(normalize), float(scale), float(eps), o, S_T, z_T, FWD_MODE)
    return o, S_T, z_T


def linear_attention_bwd(do: Tensor, dS_T: Optional[Tensor], dz_T: Optional[Tensor], q: Tensor, k: Tensor,
                         v: Tensor, o: Tensor, S0: Optional[Tensor], z0: Optional[Tensor],
                         cu_seqlens: Optional[Tensor], causal: bool, feature_map: str, normalize: bool,
                         scale: float, eps: float):
    """-> (dq, dk, dv, dS0, dz0); dS0/dz0 are None when S0 is None."""
    B, T, H, D = q.shape
    Hk, Dv = k.shape[2], v.shape[-1]
    _check_dims(D, Dv)
    ext = extension()
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    dev = q.device
    if do.dtype != q.dtype:
        do = do.to(q.dtype)
    if o.dtype != q.dtype:
        o = o.to(q.dtype)
    ws_inv = new_empty((B, T, H), dtype=_F32, device=dev) if normalize else None
    ws_dden = new_empty((B, T, H), dtype=_F32, device=dev) if normalize else None
    dq = new_empty((B, T, H, D), dtype=q.dtype, device=dev)
    dk_heads = new_empty((B, T, H, D), dtype=_F32, device=dev)
    dv_heads = new_empty((B, T, H, Dv), dtype=_F32, device=dev)
    dS0 = new_empty((N, H, D, Dv), dtype=_F32, device=dev) if S0 is not None else None
    dz0 = new_empty((N, H, D), dtype=_F32, device=dev) if S0 is not None else None
    ext.linear_attention_bwd(do, _f32(dS_T), _f32(dz_T), q, k, v, o, _f32(S0), _f32(z0), _cu(cu_seqlens),
                             bool(causal), feature_map, bool(normalize), float(scale), float(eps), ws_inv, ws_dden,
                             dq, dk_heads, dv_heads, dS0, dz0, FWD_MODE)
    dk = _group_sum(dk_heads, Hk, k.dtype)
    dv = _group_sum(dv_heads, Hk, v.dtype)
    if S0 is None:
        return dq, dk, dv, None, None
    if dS0.dtype != S0.dtype:
        dS0 = dS0.to(S0.dtype)
    if z0 is not None and dz0.dtype != z0.dtype:
        dz0 = dz0.to(z0.dtype)
    return dq, dk, dv, dS0, dz0
