"""One streaming step (T = 1 with a carried state) of the stateful ops, as a handful of plain tensor ops.

These are the decoding paths: the ``torch`` backend's forward takes them when ``T == 1`` (no chunking, no
padding, no scan), and the :mod:`flashts.nn` layers' ``step`` calls them directly on the ``torch`` backend.
They are ordinary differentiable PyTorch (autograd, ``torch.compile`` and CUDA graphs see 10–20 aten ops) and
equal the parallel forms (SPEC: a step with a state is the whole sequence's next output):

* linear attention (causal): S' = S + k̃ vᵀ, z' = z + k̃, o = q̃ᵀS' / (q̃·z' + eps) (or q̃ᵀS');
* Aaren: s = scale·q·k, m' = max(m, s), u' = u e^{m−m'} + e^{s−m'}, w' = w e^{m−m'} + e^{s−m'} v, o = w'/u';
* Latte (causal): per latent l the same update with s = k_l, then o = Σ_l softmax(q)_l · S'_l / α'_l.

Every exponent is formed against the new maximum (≤ 0), an empty state (m = −∞) contributes 0, never NaN.

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


def _rescale(m0: Tensor, s: Tensor):
    """New max m' = max(m0, s) and the factors e^{m0−m'}, e^{s−m'} (0 for −∞ entries, never NaN)."""
    mn = torch.maximum(m0, s)
    mc = mn.clamp_min(torch.finfo(mn.dtype).min)
    return mn, torch.exp(m0 - mc), torch.exp(s - mc)


def _feature_map(x: Tensor, feature_map: str) -> Tensor:
    from .linear import _feature_map as fm
    return fm(x, feature_map)


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
    qt = _feature_map(q.to(cd), feature_map) * scale
    kt = _feature_map(k.to(cd), feature_map)
    vv = v.to(cd)
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
            S = torch.addcmul(S0.to(cd), kt.unsqueeze(-1), vv.unsqueeze(-2))
            z = z0.to(cd) + kt
    num = (qt.unsqueeze(-2) @ S).squeeze(-2)
    if normalize:
        num = num / ((qt * z).sum(-1, keepdim=True) + eps)
    return num.to(q.dtype), (S, z)


def aaren_step(q: Tensor, k: Tensor, v: Tensor, state: Optional[tuple], *, scale: Optional[float] = None,
               inplace: bool = False):
    """One Aaren step: ``q [H,D]`` or ``[B,H,D]``, ``k [B,H,D]``, ``v [B,H,Dv]``, state ``(m [B,H], u [B,H],
    w [B,H,Dv])`` or None -> ``(o [B,H,Dv], (m', u', w'))``."""
    if inplace:
        check_inplace(state, q, k, v)
    cd = compute_dtype(k.dtype)
    if scale is None:
        scale = k.shape[-1] ** -0.5
    s = (k.to(cd) * q.to(cd)).sum(-1) * scale                   # [B, H]
    vv = v.to(cd)
    if state is None:
        return vv.clone().to(v.dtype), (s, torch.ones_like(s), vv.clone())
    m0, u0, w0 = state
    mn, f0, fs = _rescale(m0.to(cd), s)
    if inplace:
        m = m0.copy_(mn)
        u = u0.mul_(f0).add_(fs)
        w = w0.mul_(f0.unsqueeze(-1)).addcmul_(fs.unsqueeze(-1), vv)
    else:
        m = mn
        u = u0.to(cd) * f0 + fs
        w = torch.addcmul(w0.to(cd) * f0.unsqueeze(-1), fs.unsqueeze(-1), vv)
    return (w / u.unsqueeze(-1)).to(v.dtype), (m, u, w)


def latte_step(q: Tensor, k: Tensor, v: Tensor, state: Optional[tuple], *, inplace: bool = False):
    """One causal Latte step: ``q, k [B,H,L]`` (latent logits), ``v [B,H,Dv]``, state ``(m [B,H,L],
    alpha [B,H,L], S [B,H,L,Dv])`` or None -> ``(o [B,H,Dv], (m', alpha', S'))``."""
    if inplace:
        check_inplace(state, q, k, v)
    cd = compute_dtype(q.dtype)
    kk, vv = k.to(cd), v.to(cd)
    p = torch.softmax(q.to(cd), dim=-1)
    if state is None:
        S = vv.unsqueeze(-2).expand(*kk.shape, vv.shape[-1]).clone()
        return vv.clone().to(v.dtype), (kk.clone(), torch.ones_like(kk), S)
    m0, a0, S0 = state
    mn, f0, fk = _rescale(m0.to(cd), kk)
    if inplace:
        m = m0.copy_(mn)
        a = a0.mul_(f0).add_(fk)
        S = S0.mul_(f0.unsqueeze(-1)).addcmul_(fk.unsqueeze(-1), vv.unsqueeze(-2))
    else:
        m = mn
        a = a0.to(cd) * f0 + fk
        S = torch.addcmul(S0.to(cd) * f0.unsqueeze(-1), fk.unsqueeze(-1), vv.unsqueeze(-2))
    o = ((p / a).unsqueeze(-2) @ S).squeeze(-2)
    return o.to(v.dtype), (m, a, S)
