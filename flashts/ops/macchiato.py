"""Latte Macchiato (SPEC §7): public function, custom op (torch.compile) and autograd.

Backends implement, in the module registered for them::

    latte_macchiato_attention_fwd(q, k, v, mix, latent_k, k_win, v_win, n_win, m0, a0, S0, cu_seqlens, left,
                                  scale, want_state)
        -> (o [B,T,H,Dv] in q.dtype, A [B,T,H,Dv], lse [B,H,T], Y [B,T,H,Dv],     # A, lse, Y: for the backward
            m_T [N,H,L], a_T [N,H,L], S_T [N,H,L,Dv], k_win_T, v_win_T, n_win_T)  # window cache None unless want_state
    latte_macchiato_attention_bwd(do, da_T, dS_T, dk_win_T, dv_win_T, q, k, v, mix, latent_k, A, lse, Y,
                                  k_win, v_win, n_win, m0, a0, S0, cu_seqlens, left, scale)
        -> (dq, dk, dv, dmix, dlatent_k, dk_win, dv_win, da0, dS0)   # cache/state grads None without a state

State layout (``initial_state`` / the final state), per sequence n of N (N = B, or the number of packed
sequences with ``cu_seqlens``), W = left::

    k_win [N, W, H, D]   float32  the last n_win keys in time order, right-aligned (slots W-n_win .. W-1)
    v_win [N, W, H, Dv]  float32  the matching values (the other slots are zero and never read)
    n_win [N]            int32    how many cached keys are valid, 0 <= n_win <= W
    m     [N, H, L]      float32  Latte's running max per latent (no gradient)
    alpha [N, H, L]      float32  Σ e^{latent_k − m}
    S     [N, H, L, Dv]  float32  Σ e^{latent_k − m} v

The cache is kept in time order rather than as a rotating ring (an index per sequence): the step is
functional (it returns a new state) either way, and time order keeps the state self-describing. Maxima carry
no gradient; alpha, S, k_win and v_win do.
"""
# no `from __future__ import annotations`: torch < 2.5's custom_op reads the annotations as objects, not strings

from typing import Any, Optional

import torch
from torch import Tensor

from .. import _backend, _validate
from . import _fast_step
from ._common import cast_for_autocast, contiguous, no_autocast, opt, packed_offsets, state_dtype, unopt

OP = "latte_macchiato_attention"
_backend.register(OP, "torch", "flashts.torch_ops.macchiato")
_backend.register(OP, "triton", "flashts.ops._macchiato_triton", gpu_rank=1)
_backend.register(OP, "cuda", "flashts.cuda_ops.macchiato", gpu_rank=2)


@torch.library.custom_op("flashts::latte_macchiato_attention_fwd", mutates_args=())
def _fwd(q: Tensor, k: Tensor, v: Tensor, mix: Tensor, latent_k: Tensor, k_win: Optional[Tensor],
         v_win: Optional[Tensor], n_win: Optional[Tensor], m0: Optional[Tensor], a0: Optional[Tensor],
         S0: Optional[Tensor], cu_seqlens: Optional[Tensor], left: int, scale: float, want_state: bool,
         backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    impl = _backend.module_for(OP, backend)
    cu_seqlens = packed_offsets(cu_seqlens, q.shape[1])
    with no_autocast(q.device):
        out = impl.latte_macchiato_attention_fwd(q, k, v, mix, latent_k, k_win, v_win, n_win, m0, a0, S0,
                                                 cu_seqlens, left, scale, want_state)
    return contiguous(*(opt(t, q) for t in out))  # the strides the fakes promise


@_fwd.register_fake
def _fwd_fake(q, k, v, mix, latent_k, k_win, v_win, n_win, m0, a0, S0, cu_seqlens, left, scale, want_state,
              backend):
    B, T, H, D = q.shape
    Dv, L = v.shape[-1], latent_k.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    W = max(left, 0)
    sd = state_dtype(q.dtype)
    o = q.new_empty((B, T, H, Dv))
    A, Y = q.new_empty((B, T, H, Dv)), q.new_empty((B, T, H, Dv))
    lse = q.new_empty((B, H, T), dtype=sd)
    m, a, S = (q.new_empty((N, H, L), dtype=sd), q.new_empty((N, H, L), dtype=sd),
               q.new_empty((N, H, L, Dv), dtype=sd))
    if not want_state:
        e = q.new_empty((0,))
        return o, A, lse, Y, m, a, S, e, q.new_empty((0,)), q.new_empty((0,))
    return (o, A, lse, Y, m, a, S, q.new_empty((N, W, H, D), dtype=sd), q.new_empty((N, W, H, Dv), dtype=sd),
            q.new_empty((N,), dtype=torch.int32))


@torch.library.custom_op("flashts::latte_macchiato_attention_bwd", mutates_args=())
def _bwd(do: Tensor, da: Optional[Tensor], dS: Optional[Tensor], dkw: Optional[Tensor], dvw: Optional[Tensor],
         q: Tensor, k: Tensor, v: Tensor, mix: Tensor, latent_k: Tensor, A: Tensor, lse: Tensor, Y: Tensor,
         k_win: Optional[Tensor], v_win: Optional[Tensor], n_win: Optional[Tensor], m0: Optional[Tensor],
         a0: Optional[Tensor], S0: Optional[Tensor], cu_seqlens: Optional[Tensor], left: int, scale: float,
         backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    impl = _backend.module_for(OP, backend)
    cu_seqlens = packed_offsets(cu_seqlens, q.shape[1])
    with no_autocast(q.device):
        out = impl.latte_macchiato_attention_bwd(do, da, dS, dkw, dvw, q, k, v, mix, latent_k, A, lse, Y,
                                                 k_win, v_win, n_win, m0, a0, S0, cu_seqlens, left, scale)
    return contiguous(*(opt(t, q) for t in out))  # the strides the fakes promise


@_bwd.register_fake
def _bwd_fake(do, da, dS, dkw, dvw, q, k, v, mix, latent_k, A, lse, Y, k_win, v_win, n_win, m0, a0, S0, *args):
    like = lambda t: t.new_empty(t.shape) if t is not None else q.new_empty((0,))  # noqa: E731  (contiguous)
    return (like(q), like(k), like(v), like(mix), like(latent_k), like(k_win), like(v_win), like(a0), like(S0))


def _setup(ctx, inputs, output):
    ctx.params = inputs[12:]  # left, scale, want_state, backend
    ctx.save_for_backward(*inputs[:12], output[1], output[2], output[3])
    ctx.mark_non_differentiable(output[1], output[2], output[3], output[4], output[9])


def _backward(ctx, do, dA, dlse, dY, dm, da, dS, dkw, dvw, dn):
    q, k, v, mix, latent_k, k_win, v_win, n_win, m0, a0, S0, cu_seqlens, A, lse, Y = ctx.saved_tensors
    left, scale, _, backend = ctx.params
    if do is None:
        do = torch.zeros_like(A)
    da, dS, dkw, dvw = unopt(da), unopt(dS), unopt(dkw), unopt(dvw)
    dq, dk, dv, dmix, dlk, dk_win, dv_win, da0, dS0 = _bwd(
        do, da, dS, dkw, dvw, q, k, v, mix, latent_k, A, lse, Y, k_win, v_win, n_win, m0, a0, S0, cu_seqlens,
        left, scale, backend)
    return (dq, dk, dv, dmix, dlk, unopt(dk_win), unopt(dv_win), None, None, unopt(da0), unopt(dS0), None,
            None, None, None, None)


_fwd.register_autograd(_backward, setup_context=_setup)


def latte_macchiato_attention(q: Tensor, k: Tensor, v: Tensor, mix: Tensor, latent_k: Tensor, *,
                              window: tuple[int, int], scale: Optional[float] = None,
                              initial_state: Optional[tuple[Tensor, ...]] = None, output_final_state: bool = False,
                              cu_seqlens: Optional[Tensor] = None, backend: str = "auto") -> Any:
    """Latte Macchiato: a per-token mixture of causal sliding-window attention and Latte's latent attention.

    y_t = p(0|t)·A_t + Σ_{l=1..L} p(l|t)·G_{t,l}, with p(·|t) = softmax(mix_t) over L+1 entries, A the causal
    sliding-window attention of q over k, v with ``window = (left, 0)``, and G_{t,l} = Σ_{s≤t} e^{latent_k_{s,l}}
    v_s / Σ_{s≤t} e^{latent_k_{s,l}} (Latte's causal per-latent mean). Cost O(T·(left+1)·D + T·L·Dv).

    Args:
        q, k: ``[B, T, H, D]``; v: ``[B, T, H, Dv]``; mix: ``[B, T, H, L+1]`` mixing logits (entry 0 = local);
            latent_k: ``[B, T, H, L]`` latent key logits.
        window: ``(left, 0)``: query t sees keys t-left .. t (``left = -1``: all earlier keys, no streaming).
        scale: score scale of the local part, default ``D**-0.5``.
        initial_state: ``(k_win [N,left,H,D], v_win [N,left,H,Dv], n_win [N] int32, m [N,H,L], alpha [N,H,L],
            S [N,H,L,Dv])``, see :mod:`flashts.ops.macchiato` for the layout.
        output_final_state: also return the final state (same layout).
        cu_seqlens: int32 ``[N+1]`` offsets packing N sequences into ``B == 1`` (states per sequence).

    Returns:
        ``y [B, T, H, Dv]``, or ``(y, state)`` with ``output_final_state``.

    Example::

        >>> B, T, H, D, L = 2, 100, 4, 16, 8
        >>> q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
        >>> mix, lk = torch.randn(B, T, H, L + 1), torch.randn(B, T, H, L)
        >>> y, st = flashts.latte_macchiato_attention(q, k, v, mix, lk, window=(31, 0), output_final_state=True)
        >>> y1, st = flashts.latte_macchiato_attention(q[:, :1], k[:, :1], v[:, :1], mix[:, :1], lk[:, :1],
        ...                                            window=(31, 0), initial_state=st, output_final_state=True)
    """
    if not torch.compiler.is_compiling():   # T = 1 with a state on CPU, eager: the step in O(1) Python
        fast = _fast_step.macchiato(q, k, v, mix, latent_k, window, scale, initial_state, output_final_state,
                                    cu_seqlens, backend)
        if fast is not None:
            return fast
    a = _validate.check_macchiato(q, k, v, mix, latent_k, window, scale, initial_state, output_final_state,
                                  cu_seqlens)
    q, k, v, mix, latent_k = cast_for_autocast(q, k, v, mix, latent_k)
    be = _backend.resolve(OP, backend, a.device, q.dtype)
    _validate.backend_dtype(OP, be, q.dtype)
    kw, vw, nw, m0, a0, S0 = a.initial_state if a.initial_state is not None else (None,) * 6
    o, _, _, _, m, al, S, kT, vT, nT = _fwd(q, k, v, mix, latent_k, kw, vw, nw, m0, a0, S0, cu_seqlens, a.left,
                                            a.scale, output_final_state, be)
    return (o, (kT, vT, nT, m, al, S)) if output_final_state else o
