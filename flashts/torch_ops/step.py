"""One streaming step (T = 1 with a carried state) of the stateful ops, as a handful of plain tensor ops.

These are the decoding paths: the ``torch`` backend's forward takes them when ``T == 1`` (no chunking, no
padding, no scan), and the :mod:`flashts.nn` layers' ``step`` calls them directly on the ``torch`` backend.
They are ordinary differentiable PyTorch (autograd, ``torch.compile`` and CUDA graphs see 10–20 aten ops) and
equal the parallel forms (SPEC: a step with a state is the whole sequence's next output):

* linear attention (causal): S' = S + k̃ vᵀ, z' = z + k̃, o = q̃ᵀS' / (q̃·z' + eps) (or q̃ᵀS');
* Aaren: s = scale·q·k, m' = max(m, s), u' = u e^{m−m'} + e^{s−m'}, w' = w e^{m−m'} + e^{s−m'} v, o = w'/u';
* Latte (causal): per latent l the same update with s = k_l, then o = Σ_l softmax(q)_l · S'_l / α'_l.

Every exponent is formed against the new maximum (≤ 0), an empty state (m = −∞) contributes 0, never NaN.
The new maximum is detached (a non-differentiable output, as in the custom ops): gradients are taken with it held
fixed, which is exactly the ops' contract — the state (m, u, w) stands for (u·e^m, w·e^m), and a user-given m0
gets dm0 = u0·du0 + Σ w0·dw0 through e^{m0−m'}. The public functions run these steps directly for an eager T = 1
call on the CPU (:mod:`flashts.ops._fast_step`), so their gradients must equal the custom ops'.

Layouts: one token per row, heads first: q, k, v ``[B, H, ·]`` (Aaren's q may be ``[H, D]``; linear
attention's k, v may have Hk heads, GQA). States as the ops define them. Computation in float32 (float64 for
float64 inputs); the output in the input dtype, the states in the compute dtype.

``inplace=True`` writes the new state into the given state tensors and returns them (no allocation of the
state): for inference only. It refuses (``ValueError``) when autograd would need the old state, i.e. when grad
mode is on and any input or state tensor requires grad — an in-place update would corrupt the backward.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

_NEG_INF = float("-inf")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_inplace(state, *inputs) -> None:
    if state is None:
        raise ValueError("inplace=True needs a state to update (got state=None)")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (*state, *inputs) if t is not None):
        raise ValueError("inplace=True would overwrite a state that autograd needs: run the step under "
                         "torch.no_grad() / torch.inference_mode(), or use inplace=False")


def _cast(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x.to(dtype)`` without the call when it is already there (a no-op ``.to`` still costs a dispatch)."""
    return x if x.dtype == dtype else x.to(dtype)


_FLOOR = {torch.float32: torch.finfo(torch.float32).min, torch.float64: torch.finfo(torch.float64).min}


def _rescale(m0: Tensor, s: Tensor):
    """New max m' = max(m0, s) (detached) and the factors e^{m0−m'}, e^{s−m'} (0 for −∞ entries, never NaN)."""
    mn = torch.maximum(m0, s)
    if mn.requires_grad:
        mn = mn.detach()
    mc = mn.clamp_min(_FLOOR[mn.dtype])
    return mn, torch.exp(m0 - mc), torch.exp(s - mc)


_FM: list = []


def _feature_map(x: Tensor, feature_map: str) -> Tensor:
    if not _FM:   # imported on first use (flashts.torch_ops.linear imports this module)
        from .linear import _feature_map as fm
        _FM.append(fm)
    return _FM[0](x, feature_map)


def linear_step(q: Tensor, k: Tensor, v: Tensor, state: Optional[tuple], *, feature_map: str = "elu",
                normalize: bool = True, scale: Optional[float] = None, eps: float = 1e-6, inplace: bool = False):
    """One causal linear-attention step: ``q [B,H,D]``, ``k [B,Hk,D]``, ``v [B,Hk,Dv]``, state ``(S [B,H,D,Dv],
    z [B,H,D])`` or None -> ``(o [B,H,Dv], (S', z'))``.

    Example::

        o, state = linear_step(q_t, k_t, v_t, None)        # first token
        o, state = linear_step(q_t, k_t, v_t, state)       # next tokens
    """
    if inplace:
        check_inplace(state, q, k, v)
    B, H, D = q.shape
    Hk = k.shape[1]
    cd = compute_dtype(q.dtype)
    if scale is None:
        scale = 1.0 if normalize else D ** -0.5
    qt = _feature_map(_cast(q, cd), feature_map)
    if scale != 1.0:
        qt = qt * scale
    kt = _feature_map(_cast(k, cd), feature_map)
    vv = _cast(v, cd)
    if Hk != H:
        kt = kt.repeat_interleave(H // Hk, dim=1)
        vv = vv.repeat_interleave(H // Hk, dim=1)
    if state is None:
        S = kt.unsqueeze(-1) * vv.unsqueeze(-2)
        z = kt.clone()
    else:
        S0, z0 = state
        if inplace:
            S = S0.addcmul_(kt.unsqueeze(-1), vv.unsqueeze(-2))
            z = z0.add_(kt)
        else:
            S = torch.addcmul(_cast(S0, cd), kt.unsqueeze(-1), vv.unsqueeze(-2))
            z = _cast(z0, cd) + kt
    num = (qt.unsqueeze(-2) @ S).squeeze(-2)
    if normalize:
        num = num / ((qt * z).sum(-1, keepdim=True) + eps)
    return _cast(num, q.dtype), (S, z)


def aaren_step(q: Tensor, k: Tensor, v: Tensor, state: Optional[tuple], *, scale: Optional[float] = None,
               inplace: bool = False):
    """One Aaren step: ``q [H,D]`` or ``[B,H,D]``, ``k [B,H,D]``, ``v [B,H,Dv]``, state ``(m [B,H], u [B,H],
    w [B,H,Dv])`` or None -> ``(o [B,H,Dv], (m', u', w'))``."""
    if inplace:
        check_inplace(state, q, k, v)
    cd = compute_dtype(k.dtype)
    if scale is None:
        scale = k.shape[-1] ** -0.5
    s = torch.linalg.vecdot(_cast(k, cd), _cast(q, cd)) * scale   # [B, H]
    vv = _cast(v, cd)
    if state is None:   # u' = e^{s−m'} = 1, w' = e^{s−m'}·v with m' = s held fixed (their gradients in s)
        m = s.detach()
        e = torch.exp(s - m)
        w = e.unsqueeze(-1) * vv
        return _cast(w / e.unsqueeze(-1), v.dtype), (m, e, w)
    m0, u0, w0 = state
    mn, f0, fs = _rescale(_cast(m0, cd), s)
    if inplace:
        m = m0.copy_(mn)
        u = u0.mul_(f0).add_(fs)
        w = w0.mul_(f0.unsqueeze(-1)).addcmul_(fs.unsqueeze(-1), vv)
    else:
        m = mn
        u = torch.addcmul(fs, _cast(u0, cd), f0)
        w = torch.addcmul(_cast(w0, cd) * f0.unsqueeze(-1), fs.unsqueeze(-1), vv)
    return _cast(w / u.unsqueeze(-1), v.dtype), (m, u, w)


def latte_step(q: Tensor, k: Tensor, v: Tensor, state: Optional[tuple], *, inplace: bool = False):
    """One causal Latte step: ``q, k [B,H,L]`` (latent logits), ``v [B,H,Dv]``, state ``(m [B,H,L],
    alpha [B,H,L], S [B,H,L,Dv])`` or None -> ``(o [B,H,Dv], (m', alpha', S'))``."""
    if inplace:
        check_inplace(state, q, k, v)
    cd = compute_dtype(q.dtype)
    kk, vv = _cast(k, cd), _cast(v, cd)
    p = torch.softmax(_cast(q, cd), dim=-1)
    if state is None:   # α' = e^{k−m'} = 1, S' = e^{k−m'}·v with m' = k held fixed (their gradients in k)
        m = kk.detach().clone()
        e = torch.exp(kk - m)
        S = e.unsqueeze(-1) * vv.unsqueeze(-2)
        o = ((p / e).unsqueeze(-2) @ S).squeeze(-2)       # = Σ_l p_l·v = v, with q and k in the graph
        return _cast(o, v.dtype), (m, e, S)
    m0, a0, S0 = state
    mn, f0, fk = _rescale(_cast(m0, cd), kk)
    if inplace:
        m = m0.copy_(mn)
        a = a0.mul_(f0).add_(fk)
        S = S0.mul_(f0.unsqueeze(-1)).addcmul_(fk.unsqueeze(-1), vv.unsqueeze(-2))
    else:
        m = mn
        a = torch.addcmul(fk, _cast(a0, cd), f0)
        S = torch.addcmul(_cast(S0, cd) * f0.unsqueeze(-1), fk.unsqueeze(-1), vv.unsqueeze(-2))
    o = ((p / a).unsqueeze(-2) @ S).squeeze(-2)
    return _cast(o, v.dtype), (m, a, S)


def macchiato_step(q: Tensor, k: Tensor, v: Tensor, mix: Tensor, latent_k: Tensor, state: tuple, *, left: int,
                   scale: Optional[float] = None):
    """One Latte Macchiato step with a state (SPEC §7): ``q, k [B,H,D]``, ``v [B,H,Dv]``, ``mix [B,H,L+1]``,
    ``latent_k [B,H,L]``, state ``(k_win [B,W,H,D], v_win [B,W,H,Dv], n_win [B] int, m [B,H,L], alpha [B,H,L],
    S [B,H,L,Dv])`` with W = ``left`` >= 0 and n_win in [0, W] -> ``(o [B,H,Dv], new state)`` (same layout,
    n_win int32, caches in the compute dtype).

    Local part: softmax attention of q over the n_win valid (right-aligned) cached keys and k itself; latent
    part: :func:`latte_step` with Latte's q = mix[..., 1:] (its running max held fixed and, as in the op, given
    no gradient); mixed by :func:`flashts.torch_ops.macchiato.mix_forward`. The new cache drops the oldest slot
    and appends (k, v) on the right.
    """
    from .macchiato import mix_forward
    cd = compute_dtype(q.dtype)
    k_win, v_win, n_win, m0, a0, S0 = state
    W = k_win.shape[1]
    if scale is None:
        scale = q.shape[-1] ** -0.5
    qq, kk, vv = _cast(q, cd) * scale, _cast(k, cd), _cast(v, cd)
    kc, vc = _cast(k_win, cd), _cast(v_win, cd)
    s_cache = torch.einsum("bhd,bwhd->bhw", qq, kc)                           # [B, H, W]
    empty = torch.arange(W, device=q.device) < (W - n_win).unsqueeze(-1)      # [B, W]: slots not holding a key
    s_cache = s_cache.masked_fill(empty.unsqueeze(1), _NEG_INF)
    s_self = torch.linalg.vecdot(qq, kk).unsqueeze(-1)                         # [B, H, 1]
    p = torch.softmax(torch.cat([s_cache, s_self], dim=-1), dim=-1)           # the self score is finite
    A = torch.einsum("bhw,bwhe->bhe", p[..., :W], vc) + p[..., W:] * vv
    Y, (m, a, S) = latte_step(mix[..., 1:], latent_k, v, (m0.detach(), a0, S0))
    o = mix_forward(mix, A, Y, q.dtype)
    n_new = (n_win + 1).clamp_max(W).to(torch.int32)
    if W == 0:
        return o, (kc.clone(), vc.clone(), n_new, m, a, S)
    # shift left by one slot, append the new key on the right; slots without a key are zero (as the op writes)
    stale = (torch.arange(W, device=q.device) < (W - n_new).unsqueeze(-1))[:, :, None, None]   # [B, W, 1, 1]
    k_new = torch.cat([kc[:, 1:], kk.unsqueeze(1)], dim=1).masked_fill(stale, 0.0)
    v_new = torch.cat([vc[:, 1:], vv.unsqueeze(1)], dim=1).masked_fill(stale, 0.0)
    return o, (k_new, v_new, n_new, m, a, S)
