"""Decode steps (T = 1 with a state) of the causal ops, ``cuda`` backend: one kernel per step
(``csrc/decode_step.cu``, math in ``csrc/decode_math.h``), called through the C++ custom ops
``torch.ops.flashts_cuda.{linear,aaren,latte,swa,macchiato}_decode_step`` registered by ``flashts._C`` (TORCH_LIBRARY; no
Python in the op itself).

The functions here are thin conveniences over those ops: each updates the float32 state IN PLACE and writes
the output into ``out`` (allocated here when not given). For CUDA-graph capture, preallocate ``out`` and the
state once and call the op (or these functions with ``out=``) inside the captured region: the ops allocate
nothing and never synchronise with the host. Only :func:`swa_ring_step` launches twice (the attention kernel,
then ``pos += 1`` in place) and :func:`macchiato_step` three times (the kernel, then ``n_win`` advanced in place).

The op layer reaches the first three and :func:`macchiato_step` for ``backend="cuda"`` when ``T == 1`` with an
initial state and without ``cu_seqlens`` (see :func:`use_decode_step`; ``FLASHTS_CUDA_DECODE=0`` turns that off).
``backend="auto"`` does not pick the CUDA backend for them: no GPU measurement exists yet (``python -m bench.decode``
is the one to run).

Example (on a GPU, with flashts._C built)::

    import torch, flashts.cuda_ops.decode as dec
    B, H, D = 64, 8, 64
    S = torch.zeros(B, H, D, D, device="cuda"); z = torch.zeros(B, H, D, device="cuda")
    out = torch.empty(B, H, D, device="cuda", dtype=torch.bfloat16)
    q, k, v = (torch.randn(B, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    dec.linear_step(q, k, v, S, z, out=out)          # S, z advanced by one token; out = o_t
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

from ..ops._common import new_empty
from . import extension

_F32 = torch.float32
_FMAP = {"elu": 0, "relu": 1, "identity": 2}


def _ops():
    extension()  # loading flashts._C registers torch.ops.flashts_cuda
    return torch.ops.flashts_cuda


def use_decode_step(T: int, state_given: bool, cu_seqlens: Optional[Tensor], causal: bool = True) -> bool:
    """Whether the ``cuda`` backend's forward runs the decode-step kernel instead of the chunked one."""
    return (T == 1 and state_given and cu_seqlens is None and causal
            and os.environ.get("FLASHTS_CUDA_DECODE", "1") != "0")


def _out(out: Optional[Tensor], shape, like: Tensor) -> Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device) if out is None else out


def linear_step(q: Tensor, k: Tensor, v: Tensor, S: Tensor, z: Tensor, *, feature_map: str = "elu",
                normalize: bool = True, scale: Optional[float] = None, eps: float = 1e-6,
                out: Optional[Tensor] = None) -> Tensor:
    """One linear-attention token: ``q [B,H,D]``, ``k [B,Hk,D]``, ``v [B,Hk,Dv]``; ``S [B,H,D,Dv]``, ``z [B,H,D]``
    float32 contiguous, updated in place. Returns ``o [B,H,Dv]`` (``out`` when given)."""
    B, H, D = q.shape
    if scale is None:
        scale = 1.0 if normalize else D ** -0.5
    o = _out(out, (B, H, v.shape[-1]), q)
    _ops().linear_decode_step(q, k, v, S, z, o, _FMAP[feature_map], bool(normalize), float(scale), float(eps))
    return o


def aaren_step(q: Tensor, k: Tensor, v: Tensor, m: Tensor, u: Tensor, w: Tensor, *, scale: Optional[float] = None,
               out: Optional[Tensor] = None) -> Tensor:
    """One Aaren token: ``q [H,D]`` or ``[B,H,D]``, ``k [B,H,D]``, ``v [B,H,Dv]``; state ``m, u [B,H]``,
    ``w [B,H,Dv]`` float32, updated in place (the empty state is m = −inf, u = 0, w = 0)."""
    B, H, D = k.shape
    o = _out(out, (B, H, v.shape[-1]), k)
    _ops().aaren_decode_step(q, k, v, m, u, w, o, float(D ** -0.5 if scale is None else scale))
    return o


def latte_step(q: Tensor, k: Tensor, v: Tensor, m: Tensor, alpha: Tensor, S: Tensor, *,
               out: Optional[Tensor] = None) -> Tensor:
    """One causal Latte token: ``q, k [B,H,L]``, ``v [B,H,Dv]``; state ``m, alpha [B,H,L]``, ``S [B,H,L,Dv]``
    float32, updated in place (the empty state is m = −inf, alpha = 0, S = 0)."""
    B, H, _ = q.shape
    o = _out(out, (B, H, v.shape[-1]), q)
    _ops().latte_decode_step(q, k, v, m, alpha, S, o)
    return o


def swa_ring_step(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, pos: Tensor, *,
                  scale: Optional[float] = None, out: Optional[Tensor] = None) -> Tensor:
    """One token of causal sliding-window attention, window ``(W-1, 0)``, on a ring buffer of W slots.

    ``q [B,H,D]``, ``k [B,Hk,D]``, ``v [B,Hk,Dv]``; ``k_cache [B,W,Hk,D]``, ``v_cache [B,W,Hk,Dv]`` (contiguous,
    q's dtype; token n lives in slot n mod W), ``pos [B]`` int64 = tokens seen so far. The new k, v are written
    to slot ``pos mod W``, the output attends to the ``min(pos+1, W)`` filled slots, then ``pos += 1``.
    (This layout differs from ``flashts.nn.SlidingWindowAttention``'s cache of ``left`` slots + the new token.)
    """
    B, H, D = q.shape
    o = _out(out, (B, H, v.shape[-1]), q)
    _ops().swa_decode_step(q, k, v, k_cache, v_cache, pos, o, float(D ** -0.5 if scale is None else scale))
    return o



def macchiato_step(q: Tensor, k: Tensor, v: Tensor, mix: Tensor, latent_k: Tensor, k_win: Tensor, v_win: Tensor,
                   n_win: Tensor, m: Tensor, alpha: Tensor, S: Tensor, *, scale: Optional[float] = None,
                   out: Optional[Tensor] = None) -> Tensor:
    """One Latte Macchiato token (SPEC §7) with the op's state, updated in place: ``q, k [B,H,D]``, ``v [B,H,Dv]``,
    ``mix [B,H,L+1]``, ``latent_k [B,H,L]``; ``k_win [B,W,H,D]``, ``v_win [B,W,H,Dv]`` float32 (W = ``left``; the
    last ``n_win`` keys right-aligned), ``n_win [B]`` int32, ``m, alpha [B,H,L]``, ``S [B,H,L,Dv]`` float32.
    The window is shifted left by one slot with (k, v) appended and ``n_win = min(n_win + 1, W)``, exactly as
    :func:`flashts.torch_ops.step.macchiato_step` returns it. Returns ``o [B,H,Dv]`` (``out`` when given).

    Example (GPU)::

        st = [t.cuda().contiguous() for t in state]          # (k_win, v_win, n_win, m, alpha, S) of the op
        o = dec.macchiato_step(q_t, k_t, v_t, mix_t, lk_t, *st)
    """
    B, H, D = q.shape
    o = _out(out, (B, H, v.shape[-1]), q)
    _ops().macchiato_decode_step(q, k, v, mix, latent_k, k_win, v_win, n_win, m, alpha, S, o,
                                 float(D ** -0.5 if scale is None else scale))
    return o


# ----------------------------------------------------------------------------- the op layer's T = 1 path

def _state_copy(x: Optional[Tensor], shape, fill: float, device) -> Tensor:
    """A new contiguous float32 state buffer holding x (or `fill` when x is None): the functional ops never
    modify the caller's initial state."""
    buf = torch.empty(shape, dtype=_F32, device=device)
    return buf.fill_(fill) if x is None else buf.copy_(x)


def linear_fwd_step(q, k, v, S0, z0, feature_map, normalize, scale, eps):
    """``linear_attention_fwd`` for T == 1 with a state: -> (o [B,1,H,Dv], S_T, z_T)."""
    B, _, H, D = q.shape
    Dv = v.shape[-1]
    S = _state_copy(S0, (B, H, D, Dv), 0.0, q.device)
    z = _state_copy(z0, (B, H, D), 0.0, q.device)
    o = new_empty((B, 1, H, Dv), dtype=q.dtype, device=q.device)
    linear_step(q[:, 0], k[:, 0], v[:, 0], S, z, feature_map=feature_map, normalize=normalize, scale=scale, eps=eps,
                out=o[:, 0])
    return o, S, z


def aaren_fwd_step(q, k, v, m0, u0, w0, scale):
    """``aaren_attention_fwd`` for T == 1 with a state: -> (o [B,1,H,Dv], m_T, u_T, w_T)."""
    B, _, H, _ = k.shape
    Dv = v.shape[-1]
    m = _state_copy(m0, (B, H), float("-inf"), k.device)
    u = _state_copy(u0, (B, H), 0.0, k.device)
    w = _state_copy(w0, (B, H, Dv), 0.0, k.device)
    o = new_empty((B, 1, H, Dv), dtype=k.dtype, device=k.device)
    aaren_step(q, k[:, 0], v[:, 0], m, u, w, scale=scale, out=o[:, 0])
    return o, m, u, w


def latte_fwd_step(q, k, v, m0, a0, S0):
    """``latte_attention_fwd`` (causal) for T == 1 with a state: -> (o [B,1,H,Dv], m_T, a_T, S_T)."""
    B, _, H, L = q.shape
    Dv = v.shape[-1]
    m = _state_copy(m0, (B, H, L), float("-inf"), q.device)
    a = _state_copy(a0, (B, H, L), 0.0, q.device)
    S = _state_copy(S0, (B, H, L, Dv), 0.0, q.device)
    o = new_empty((B, 1, H, Dv), dtype=q.dtype, device=q.device)
    latte_step(q[:, 0], k[:, 0], v[:, 0], m, a, S, out=o[:, 0])
    return o, m, a, S


def macchiato_fwd_step(q, k, v, mix, latent_k, k_win, v_win, n_win, m0, a0, S0, left, scale):
    """``latte_macchiato_attention_fwd`` for T == 1 with a state (all six parts given, W = ``left`` >= 0):
    -> (o [B,1,H,Dv], m_T, a_T, S_T, k_win_T, v_win_T, n_win_T) — float32 state copies advanced by the one
    kernel (the caller's state is not modified), n_win_T int32."""
    B, _, H, D = q.shape
    Dv, L = v.shape[-1], latent_k.shape[-1]
    kw = _state_copy(k_win, (B, left, H, D), 0.0, q.device)
    vw = _state_copy(v_win, (B, left, H, Dv), 0.0, q.device)
    nw = n_win.to(device=q.device, dtype=torch.int32, copy=True).contiguous()
    m = _state_copy(m0, (B, H, L), float("-inf"), q.device)
    a = _state_copy(a0, (B, H, L), 0.0, q.device)
    S = _state_copy(S0, (B, H, L, Dv), 0.0, q.device)
    o = new_empty((B, 1, H, Dv), dtype=q.dtype, device=q.device)
    macchiato_step(q[:, 0], k[:, 0], v[:, 0], mix[:, 0], latent_k[:, 0], kw, vw, nw, m, a, S, scale=scale,
                   out=o[:, 0])
    return o, m, a, S, kw, vw, nw
