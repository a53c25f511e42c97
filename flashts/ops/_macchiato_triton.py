"""Latte Macchiato on the Triton backend.

Forward: the fused one-pass kernel of ``kernels/macchiato.py`` (window softmax + Latte chunk output + mix) for
every call without a window cache; calls with a cache (``initial_state``: decode steps, chunked prefill) run
the composed form — the Triton sliding-window kernel on the extended problem (cache + new keys) and the Triton
Latte scan, joined by the gate of :mod:`flashts.torch_ops.macchiato`. Backward: always composed (the
sliding-window and Latte backward kernels + the gate's gradient; ``kernels/macchiato.py`` explains why).
"""
from ..kernels import prefix_scan as _latte
from ..kernels import sliding_window_attention as _sw
from ..kernels.macchiato import latte_macchiato_fused_fwd
from ..torch_ops.macchiato import Composed

_TRITON = Composed(_sw, _latte, fused_fwd=latte_macchiato_fused_fwd)
latte_macchiato_attention_fwd = _TRITON.fwd
latte_macchiato_attention_bwd = _TRITON.bwd
