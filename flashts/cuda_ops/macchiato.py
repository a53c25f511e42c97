"""Latte Macchiato (SPEC §7), ``cuda`` backend: the CUDA sliding-window kernels (with their lse) and the CUDA
Latte scan, joined by the gate in torch — the composition of :class:`flashts.torch_ops.macchiato.Composed`
(forward and backward, the window cache as SPEC §7 lays it out) over the modules
:mod:`flashts.cuda_ops.sliding_window` and :mod:`flashts.cuda_ops.prefix_scan`; plus, for ``T == 1`` with a
state and without ``cu_seqlens`` (a decode step; ``FLASHTS_CUDA_DECODE=0`` turns it off), the one-kernel step
``torch.ops.flashts_cuda.macchiato_decode_step`` (:func:`flashts.cuda_ops.decode.macchiato_fwd_step`).

Math (module docstring of :mod:`flashts.torch_ops.macchiato`): y_t = g_t·A_t + h_t·Y_t with A the causal
sliding-window attention (window (left, 0)), Y = Latte(mix[..., 1:], latent_k, v) and (g, h) the softmax of
(mix_0, logsumexp(mix_{1:})); the backward is the gate's chain rule feeding the two cores' backwards.

The decode step writes only o and the new state: the local output A, its lse and the latent output Y, which the
composed forward returns for the backward, are not computed (left uninitialised). So the backward of a call
that may have taken the step (T == 1, a window cache, no ``cu_seqlens``) recomputes A, lse, Y with the composed
forward first (one T = 1 pass of the two cores) — exact whichever path the forward took.

:class:`StepComposed` takes the cores and the step as arguments, so the same code runs on the CPU with the
``torch`` cores and the torch step (``tests/test_macchiato_cuda.py``) and on a GPU with the CUDA ones (``_CUDA``
below, the functions this backend registers).

Example (GPU, flashts._C built)::

    y, st = flashts.latte_macchiato_attention(q, k, v, mix, lk, window=(63, 0), output_final_state=True,
                                              backend="cuda")
    y1, st = flashts.latte_macchiato_attention(q1, k1, v1, mix1, lk1, window=(63, 0), initial_state=st,
                                               output_final_state=True, backend="cuda")   # one kernel
"""
from __future__ import annotations

from typing import Callable, Optional

from ..ops._common import new_empty, state_dtype
from ..torch_ops.macchiato import Composed
from . import decode
from . import prefix_scan as _cuda_latte
from . import sliding_window as _cuda_sw


class StepComposed(Composed):
    """:class:`~flashts.torch_ops.macchiato.Composed` over the cores ``sw`` and ``latte`` (backend modules with
    the ``*_fwd`` / ``*_bwd`` functions of their ops), with ``step`` for the forward of a decode step.

    ``step(q, k, v, mix, latent_k, k_win, v_win, n_win, m0, a0, S0, left, scale)`` -> ``(o [B,1,H,Dv], m_T, a_T,
    S_T, k_win_T, v_win_T, n_win_T)``; ``use_step(T, state_given, cu_seqlens) -> bool`` decides (at the forward)
    whether a call runs it.
    """

    def __init__(self, sw, latte, step: Optional[Callable] = None, use_step: Optional[Callable] = None):
        super().__init__(sw, latte)
        self.step, self.use_step = step, use_step

    def may_step(self, T: int, k_win, cu_seqlens) -> bool:
        """The calls whose forward may run the step (the backward then recomputes A, lse, Y)."""
        return self.step is not None and T == 1 and k_win is not None and cu_seqlens is None

    def fwd(self, q, k, v, mix, latent_k, k_win, v_win, n_win, m0, a0, S0, cu_seqlens, left: int, scale: float,
            want_state: bool):
        B, T, H, _ = q.shape
        if self.may_step(T, k_win, cu_seqlens) and self.use_step(T, True, cu_seqlens):
            o, m, a, S, kT, vT, nT = self.step(q, k, v, mix, latent_k, k_win, v_win, n_win, m0, a0, S0, left,
                                               scale)
            Dv = v.shape[-1]
            A, Y = new_empty((B, 1, H, Dv), dtype=q.dtype, device=q.device), new_empty(
                (B, 1, H, Dv), dtype=q.dtype, device=q.device)  # not computed (see the module docstring)
            lse = new_empty((B, H, 1), dtype=state_dtype(q.dtype), device=q.device)
            if not want_state:
                kT = vT = nT = None
            return o, A, lse, Y, m, a, S, kT, vT, nT
        return super().fwd(q, k, v, mix, latent_k, k_win, v_win, n_win, m0, a0, S0, cu_seqlens, left, scale,
                           want_state)

    def bwd(self, do, da_T, dS_T, dk_win_T, dv_win_T, q, k, v, mix, latent_k, A, lse, Y, k_win, v_win, n_win,
            m0, a0, S0, cu_seqlens, left: int, scale: float):
        if self.may_step(q.shape[1], k_win, cu_seqlens):  # A, lse, Y of a decode step were never computed
            _, A, lse, Y, *_ = super().fwd(q, k, v, mix, latent_k, k_win, v_win, n_win, m0, a0, S0, cu_seqlens,
                                           left, scale, False)
        return super().bwd(do, da_T, dS_T, dk_win_T, dv_win_T, q, k, v, mix, latent_k, A, lse, Y, k_win, v_win,
                           n_win, m0, a0, S0, cu_seqlens, left, scale)


_CUDA = StepComposed(_cuda_sw, _cuda_latte, step=decode.macchiato_fwd_step, use_step=decode.use_decode_step)


def latte_macchiato_attention_fwd(q, k, v, mix, latent_k, k_win, v_win, n_win, m0, a0, S0, cu_seqlens, left, scale,
                                  want_state):
    return _CUDA.fwd(q, k, v, mix, latent_k, k_win, v_win, n_win, m0, a0, S0, cu_seqlens, left, scale, want_state)


def latte_macchiato_attention_bwd(do, da_T, dS_T, dk_win_T, dv_win_T, q, k, v, mix, latent_k, A, lse, Y, k_win,
                                  v_win, n_win, m0, a0, S0, cu_seqlens, left, scale):
    return _CUDA.bwd(do, da_T, dS_T, dk_win_T, dv_win_T, q, k, v, mix, latent_k, A, lse, Y, k_win, v_win, n_win,
                     m0, a0, S0, cu_seqlens, left, scale)
