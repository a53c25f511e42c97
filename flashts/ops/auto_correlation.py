"""FFT auto-correlation, Autoformer (SPEC §3): public function, custom op (torch.compile) and autograd.

Backends implement, in the module registered for them::

    auto_correlation_fwd(q, k, v, top_k, mode)
        -> (o [B,L,H,D] in q.dtype, delays [B,K] int64, weights [B,K] float32 (float64 for float64 inputs))
    auto_correlation_bwd(do, dweights, q, k, v, delays, weights, top_k, mode)
        -> (dq, dk, dv)                  # dweights may be None; delays carry no gradient

``top_k`` = K = min(L, max(1, int(factor · ln L))), computed by the validation. All returned tensors are new.
"""
# no `from __future__ import annotations`: torch < 2.5's custom_op reads the annotations as objects, not strings

from typing import Any, Optional

import torch
from torch import Tensor

from .. import _backend, _validate
from ._common import cast_for_autocast, no_autocast, state_dtype

OP = "auto_correlation"
_backend.register(OP, "torch", "flashts.torch_ops.auto_correlation")
_backend.register(OP, "cuda", "flashts.cuda_ops.auto_correlation", gpu_rank=2)
_backend.register(OP, "triton", "flashts.kernels.auto_correlation", gpu_rank=1)


@torch.library.custom_op("flashts::auto_correlation_fwd", mutates_args=())
def _fwd(q: Tensor, k: Tensor, v: Tensor, top_k: int, mode: str, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    impl = _backend.module_for(OP, backend)
    with no_autocast(q.device):
        return impl.auto_correlation_fwd(q, k, v, top_k, mode)


@_fwd.register_fake
def _fwd_fake(q, k, v, top_k, mode, backend):
    B, L, H, _ = q.shape
    return (q.new_empty((B, L, H, v.shape[-1])), q.new_empty((B, top_k), dtype=torch.int64),
            q.new_empty((B, top_k), dtype=state_dtype(q.dtype)))


@torch.library.custom_op("flashts::auto_correlation_bwd", mutates_args=())
def _bwd(do: Tensor, dweights: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, delays: Tensor, weights: Tensor,
         top_k: int, mode: str, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    impl = _backend.module_for(OP, backend)
    with no_autocast(q.device):
        return impl.auto_correlation_bwd(do, dweights, q, k, v, delays, weights, top_k, mode)


@_bwd.register_fake
def _bwd_fake(do, dweights, q, k, v, *args):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup(ctx, inputs, output):
    q, k, v = inputs[:3]
    ctx.params = inputs[3:]
    ctx.save_for_backward(q, k, v, output[1], output[2])
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, do, ddelays, dweights):
    q, k, v, delays, weights = ctx.saved_tensors
    if do is None:
        B, L, H, _ = q.shape
        do = q.new_zeros((B, L, H, v.shape[-1]))
    dq, dk, dv = _bwd(do, dweights, q, k, v, delays, weights, *ctx.params)
    return (dq, dk, dv) + (None,) * 3


_fwd.register_autograd(_backward, setup_context=_setup)


def auto_correlation(q: Tensor, k: Tensor, v: Tensor, *, factor: float = 1.0, mode: str = "train",
                     return_delays: bool = False, backend: str = "auto") -> Any:
    """Autoformer's Auto-Correlation: period-based dependencies found by FFT, aggregated by time delay.

    Args:
        q: ``[B, L, H, E]``; k: ``[B, S, H, E]``; v: ``[B, S, H, D]``. If L > S, k and v are zero-padded
            in time to L, else truncated to their first L steps.
        factor: K = min(L, max(1, int(factor · ln L))) delays are kept; must be > 0.
        mode: ``"train"`` — top-K delays of the batch-mean correlation, shared by the batch;
            ``"infer"`` — top-K per sample.
        return_delays: also return ``(delays [B, K] int64, weights [B, K] float32)``.

    Returns:
        ``o [B, L, H, D]``, or ``(o, (delays, weights))`` with ``return_delays``.
    """
    a = _validate.check_auto_correlation(q, k, v, factor, mode, return_delays)
    q, k, v = cast_for_autocast(q, k, v)
    be = _backend.resolve(OP, backend, a.device, q.dtype)
    _validate.backend_dtype(OP, be, q.dtype)
    o, delays, weights = _fwd(q, k, v, a.top_k, mode, be)
    return (o, (delays, weights)) if return_delays else o
