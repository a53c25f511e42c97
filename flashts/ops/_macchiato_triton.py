"""Latte Macchiato on the Triton backend, composed: the Triton sliding-window kernels (with lse) and the Triton
Latte scan kernels, joined by the torch gate of :mod:`flashts.torch_ops.macchiato` (same composition and window
cache handling as the torch backend; only the two cores differ). See the README's Latte Macchiato section for
why this is not yet the fused one-pass kernel the issue asks for."""
from ..kernels import prefix_scan as _latte
from ..kernels import sliding_window_attention as _sw
from ..torch_ops.macchiato import Composed

_TRITON = Composed(_sw, _latte)
latte_macchiato_attention_fwd = _TRITON.fwd
latte_macchiato_attention_bwd = _TRITON.bwd
