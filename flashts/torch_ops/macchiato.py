"""Latte Macchiato (SPEC §7), torch backend: the sliding-window core + the causal Latte core + a mixing step.

Math. With p(·|t) = softmax(mix_t) over the L+1 entries, the local part A_t (causal sliding-window
attention, window (left, 0)) and the latent means G_{t,l} (Latte's causal per-latent softmax means),

    y_t = p(0|t)·A_t + Σ_{l≥1} p(l|t)·G_{t,l}.

Because p(l|t) for l ≥ 1 is (1 − p(0|t))·softmax_l(mix_{t,1:}), the latent sum is exactly
h_t·Y_t with Y = latte_attention(mix[..., 1:], latent_k, v) (Latte's own q is the softmax over latents) and
h_t = 1 − p(0|t). So one pass of each existing core plus a per-row gate gives y_t = g_t·A_t + h_t·Y_t with

    g_t = e^{mix_{t,0} − lse_t},  h_t = e^{lse(mix_{t,1:}) − lse_t},  lse_t = logsumexp(mix_t)

(h from log-sum-exps, not 1 − g, so it stays accurate when g → 1). Memory: the cores' O(T) plus A, lse, Y
(``[B,T,H,Dv]`` twice and ``[B,H,T]``), which are kept for the backward.

Backward (the gate's chain rule; the cores' backwards do the rest). With a_t = dy_t·A_t, b_t = dy_t·Y_t
(z = (mix_0, lse(mix_{1:})), (g, h) = softmax(z), so ∂y/∂z_0 = g h (A − Y) = −∂y/∂z_1):
    dA = g·dy,  dY = h·dy,  dmix_0 = g h (a − b),  dmix_{1:} = −g h (a − b)·softmax(mix_{1:}) + (Latte's dq of dY).
dq, dk, dv come from the sliding-window backward of dA (dv plus Latte's dv of dY); dlatent_k, dα0, dS0 from
Latte's backward of dY with the final-state cotangents.

Streaming (window cache). The state is ``(k_win [N,W,H,D], v_win [N,W,H,Dv], n_win [N] int32, m, alpha, S)``
with W = left: the last n_win keys/values of the sequence so far, in time order, right-aligned (slots
W − n_win … W − 1; the others are zero and never read). With a state, the local part runs on an "extended"
packed problem: sequence n is [its n_win cached keys, its new keys] (B == 1, ``cu_seqlens`` of the extended
lengths), with zero queries at the cached positions (their outputs are dropped). Every key/value of the
extended problem and of the final cache is a row gathered from one "pool" = [cache rows N·W, token rows B·T,
a zero row]; the backward scatters gradients back through the same indices (index_add), so the cache's
k_win/v_win get gradients too and the final cache's cotangents reach k, v and the initial cache.

The cores are passed in (``Composed(sw, latte, fused_fwd=None)``): this module's functions use the torch cores;
the Triton backend (``flashts/ops/_macchiato_triton.py``) composes its own and passes the fused forward kernel of
``kernels/macchiato.py``, used for every call without a window cache (the composition then only does the
backward and the streaming calls).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..ops._common import state_dtype
from . import prefix_scan as _torch_latte
from . import sliding_window as _torch_sw


# ------------------------------------------------------------------------------------------------ gate

def mix_forward(mix: Tensor, A: Tensor, Y: Tensor, out_dtype: torch.dtype) -> Tensor:
    """y = g·A + h·Y with (g, h) the softmax of (mix_0, logsumexp(mix_{1:})). Computed in float32 (float64)."""
    cd = state_dtype(mix.dtype)
    z = mix.to(cd)
    lse_all = torch.logsumexp(z, dim=-1)
    g = torch.exp(z[..., 0] - lse_all).unsqueeze(-1)
    h = torch.exp(torch.logsumexp(z[..., 1:], dim=-1) - lse_all).unsqueeze(-1)
    return (g * A.to(cd) + h * Y.to(cd)).to(out_dtype)


def mix_backward(do: Tensor, mix: Tensor, A: Tensor, Y: Tensor):
    """-> (dA, dY, dmix of the gate alone) in the compute dtype (see the module docstring)."""
    cd = state_dtype(mix.dtype)
    z = mix.to(cd)
    dy = do.to(cd)
    lse_all = torch.logsumexp(z, dim=-1)
    g = torch.exp(z[..., 0] - lse_all)
    h = torch.exp(torch.logsumexp(z[..., 1:], dim=-1) - lse_all)
    a = (dy * A.to(cd)).sum(-1)
    b = (dy * Y.to(cd)).sum(-1)
    dz0 = g * h * (a - b)  # = g(a − c) with c = g a + h b and g + h = 1: exactly 0 when A = Y (e.g. T = 1)
    dmix = torch.cat([dz0.unsqueeze(-1), -dz0.unsqueeze(-1) * torch.softmax(z[..., 1:], dim=-1)], dim=-1)
    return g.unsqueeze(-1) * dy, h.unsqueeze(-1) * dy, dmix


# ------------------------------------------------------------------------------------------ window cache

class _Plan:
    """Index maps of the extended problem (see the module docstring). Host-side: reads n_win and cu_seqlens."""

    def __init__(self, B: int, T: int, N: int, W: int, cu_seqlens: Optional[Tensor], n_win: Optional[Tensor],
                 device: torch.device):
        if cu_seqlens is None:
            bounds = [(b * T, (b + 1) * T) for b in range(B)]
        else:
            cu = [int(x) for x in cu_seqlens.tolist()]
            bounds = list(zip(cu[:-1], cu[1:]))
        cached = [0] * N if n_win is None else [int(x) for x in n_win.tolist()]
        tok0 = N * W  # pool row of token 0
        self.zero_row = N * W + B * T
        ext_src, tok_pos, fin_src, n_fin, cu_ext = [], [0] * (B * T), [], [], [0]
        for n, ((t0, t1), c) in enumerate(zip(bounds, cached)):
            src = list(range(n * W + W - c, n * W + W)) + list(range(tok0 + t0, tok0 + t1))
            for r in range(t0, t1):
                tok_pos[r] = len(ext_src) + c + (r - t0)
            ext_src += src
            cu_ext.append(len(ext_src))
            keep = min(len(src), W)
            fin_src += [self.zero_row] * (W - keep) + src[len(src) - keep:]
            n_fin.append(keep)
        self.E = len(ext_src)
        as_long = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)  # noqa: E731
        self.ext_src, self.tok_pos, self.fin_src = as_long(ext_src), as_long(tok_pos), as_long(fin_src)
        self.cu_ext = torch.tensor(cu_ext, dtype=torch.int32, device=device)
        self.n_fin = torch.tensor(n_fin, dtype=torch.int32, device=device)


def _pool(win: Optional[Tensor], x: Tensor, N: int, W: int) -> Tensor:
    """[cache rows N·W, token rows B·T, one zero row] in x's dtype, ``[N·W + B·T + 1, H, F]``."""
    B, T, H, F = x.shape
    cache = x.new_zeros(N * W, H, F) if win is None else win.reshape(N * W, H, F).to(x.dtype)
    return torch.cat([cache, x.reshape(B * T, H, F), x.new_zeros(1, H, F)], dim=0)


def _unpool(d_pool: Tensor, x: Tensor, win: Optional[Tensor], N: int, W: int):
    """Split a pool gradient into (dx in x's shape/dtype, dwin in win's dtype or None)."""
    B, T, H, F = x.shape
    dx = d_pool[N * W:N * W + B * T].reshape(B, T, H, F).to(x.dtype, copy=True)  # copies: outputs of a
    dwin = None if win is None else d_pool[:N * W].reshape(N, W, H, F).to(win.dtype, copy=True)  # custom op
    return dx, dwin


class Composed:
    """Latte Macchiato from a sliding-window backend module ``sw`` and a Latte backend module ``latte``
    (each with the ``*_fwd`` / ``*_bwd`` functions of its op's contract)."""

    def __init__(self, sw, latte, fused_fwd=None):
        self.sw, self.latte, self.fused_fwd = sw, latte, fused_fwd

    def fwd(self, q, k, v, mix, latent_k, k_win, v_win, n_win, m0, a0, S0, cu_seqlens, left: int, scale: float,
            want_state: bool):
        """-> (o, A, lse, Y, m_T, a_T, S_T, k_win_T, v_win_T, n_win_T); the window cache outputs are None
        unless ``want_state``. A, lse, Y: the local output, its log-sum-exp and the latent output (kept for
        the backward)."""
        B, T, H, D = q.shape
        N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
        W = max(left, 0)
        plan = None
        if k_win is not None and (k_win.shape[1] == 0 or not bool(n_win.any())):
            k_win = v_win = None  # an empty cache: the plain problem (the backward's extended one is the same)
        if k_win is None and self.fused_fwd is not None:  # one kernel for both parts and the mix
            o, A, Y, lse, m, a, S = self.fused_fwd(q, k, v, mix, latent_k, m0, a0, S0, cu_seqlens, left, scale)
        elif k_win is None:
            A, lse = self.sw.sliding_window_attention_fwd(q, k, v, cu_seqlens, left, 0, scale)
        else:
            plan = _Plan(B, T, N, W, cu_seqlens, n_win, q.device)
            q_ext = q.new_zeros(plan.E, H, D)
            q_ext[plan.tok_pos] = q.reshape(B * T, H, D)
            k_ext = _pool(k_win, k, N, W)[plan.ext_src]
            v_ext = _pool(v_win, v, N, W)[plan.ext_src]
            A_ext, lse_ext = self.sw.sliding_window_attention_fwd(q_ext[None], k_ext[None], v_ext[None], plan.cu_ext,
                                                                  left, 0, scale)
            A = A_ext[0, plan.tok_pos].reshape(B, T, H, v.shape[-1])
            lse = lse_ext[0][:, plan.tok_pos].reshape(H, B, T).permute(1, 0, 2).contiguous()
        if k_win is not None or self.fused_fwd is None:
            Y, m, a, S = self.latte.latte_attention_fwd(mix[..., 1:].contiguous(), latent_k, v, m0, a0, S0,
                                                        cu_seqlens, True)
            o = mix_forward(mix, A, Y, q.dtype)
        kT = vT = nT = None
        if want_state:
            if plan is None:
                plan = _Plan(B, T, N, W, cu_seqlens, None, q.device)
            sd = state_dtype(q.dtype)
            kT = _pool(k_win, k, N, W)[plan.fin_src].reshape(N, W, H, D).to(sd)
            vT = _pool(v_win, v, N, W)[plan.fin_src].reshape(N, W, H, v.shape[-1]).to(sd)
            nT = plan.n_fin
        return o, A, lse, Y, m, a, S, kT, vT, nT

    def bwd(self, do, da_T, dS_T, dk_win_T, dv_win_T, q, k, v, mix, latent_k, A, lse, Y, k_win, v_win, n_win,
            m0, a0, S0, cu_seqlens, left: int, scale: float):
        """-> (dq, dk, dv, dmix, dlatent_k, dk_win, dv_win, da0, dS0); cache/state gradients None without an
        initial state. The cotangents da_T, dS_T, dk_win_T, dv_win_T may be None."""
        B, T, H, D = q.shape
        N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
        W = max(left, 0)
        Dv = v.shape[-1]
        dA, dY, dmix = mix_backward(do, mix, A, Y)
        dA, dY = dA.to(q.dtype), dY.to(q.dtype)
        cd = dmix.dtype
        plan = None
        if k_win is None and dk_win_T is None and dv_win_T is None:
            dq, dk, dv_local = self.sw.sliding_window_attention_bwd(dA, None, q, k, v, A, lse, cu_seqlens, left, 0,
                                                                   scale)
            dk, dv_local = dk.to(cd), dv_local.to(cd)
            dk_win = dv_win = None
        else:
            plan = _Plan(B, T, N, W, cu_seqlens, n_win, q.device)
            rows = N * W + B * T + 1
            dk_pool = torch.zeros(rows, H, D, dtype=cd, device=q.device)
            dv_pool = torch.zeros(rows, H, Dv, dtype=cd, device=q.device)
            if k_win is None:  # no cache: the local part is the plain problem
                dq, dk_t, dv_t = self.sw.sliding_window_attention_bwd(dA, None, q, k, v, A, lse, cu_seqlens, left,
                                                                     0, scale)
                dk_pool[N * W:N * W + B * T] += dk_t.reshape(B * T, H, D).to(cd)
                dv_pool[N * W:N * W + B * T] += dv_t.reshape(B * T, H, Dv).to(cd)
            else:
                q_ext = q.new_zeros(plan.E, H, D)
                q_ext[plan.tok_pos] = q.reshape(B * T, H, D)
                k_ext = _pool(k_win, k, N, W)[plan.ext_src]
                v_ext = _pool(v_win, v, N, W)[plan.ext_src]
                # cached positions: zero query, zero output and cotangent, lse 0 -> their dS is exactly 0
                A_ext = A.new_zeros(plan.E, H, Dv)
                A_ext[plan.tok_pos] = A.reshape(B * T, H, Dv)
                dA_ext = dA.new_zeros(plan.E, H, Dv)
                dA_ext[plan.tok_pos] = dA.reshape(B * T, H, Dv)
                lse_ext = lse.new_zeros(H, plan.E)
                lse_ext[:, plan.tok_pos] = lse.permute(1, 0, 2).reshape(H, B * T)
                dq_e, dk_e, dv_e = self.sw.sliding_window_attention_bwd(
                    dA_ext[None], None, q_ext[None], k_ext[None], v_ext[None], A_ext[None], lse_ext[None],
                    plan.cu_ext, left, 0, scale)
                dq = dq_e[0, plan.tok_pos].reshape(B, T, H, D)
                dk_pool.index_add_(0, plan.ext_src, dk_e[0].to(cd))
                dv_pool.index_add_(0, plan.ext_src, dv_e[0].to(cd))
            if dk_win_T is not None:
                dk_pool.index_add_(0, plan.fin_src, dk_win_T.reshape(N * W, H, D).to(cd))
            if dv_win_T is not None:
                dv_pool.index_add_(0, plan.fin_src, dv_win_T.reshape(N * W, H, Dv).to(cd))
            dk, dk_win = _unpool(dk_pool, k.to(cd), k_win, N, W)
            dv_local, dv_win = _unpool(dv_pool, v.to(cd), v_win, N, W)
        dmix1, dlk, dv_latent, da0, dS0 = self.latte.latte_attention_bwd(
            dY, da_T, dS_T, mix[..., 1:].contiguous(), latent_k, v, Y, m0, a0, S0, cu_seqlens, True)
        dmix[..., 1:] += dmix1.to(cd)
        dv = dv_local + dv_latent.to(cd)
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dmix.to(mix.dtype), dlk, dk_win, dv_win, da0, dS0)


_TORCH = Composed(_torch_sw, _torch_latte)


def latte_macchiato_attention_fwd(q, k, v, mix, latent_k, k_win, v_win, n_win, m0, a0, S0, cu_seqlens, left, scale,
                                  want_state):
    return _TORCH.fwd(q, k, v, mix, latent_k, k_win, v_win, n_win, m0, a0, S0, cu_seqlens, left, scale, want_state)


def latte_macchiato_attention_bwd(do, da_T, dS_T, dk_win_T, dv_win_T, q, k, v, mix, latent_k, A, lse, Y, k_win,
                                  v_win, n_win, m0, a0, S0, cu_seqlens, left, scale):
    return _TORCH.bwd(do, da_T, dS_T, dk_win_T, dv_win_T, q, k, v, mix, latent_k, A, lse, Y, k_win, v_win, n_win,
                      m0, a0, S0, cu_seqlens, left, scale)
