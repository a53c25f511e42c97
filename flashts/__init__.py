"""flashts: fused sub-quadratic attention for time-series transformers.

Five mechanisms, one public function each (see README.md for the math)::

    linear_attention, sliding_window_attention, auto_correlation, aaren_attention, latte_attention

Each takes ``backend="auto" | "triton" | "cuda" | "torch"`` (default from ``FLASHTS_BACKEND``).
"""
from ._backend import info as backend_info
from .ops import aaren_attention, auto_correlation, latte_attention, linear_attention, sliding_window_attention
from .ops import latte_macchiato_attention, prob_sparse_attention

from . import nn  # noqa: E402  (layers call the public functions above)



def warmup(*args, **kwargs):
    """Compile and autotune the Triton kernels at the given shapes before timed work (see README, "GPU speed";
    ``flashts.kernels.autotune.warmup``). ``FLASHTS_AUTOTUNE=0`` disables tuning (default configs)."""
    from .kernels.autotune import warmup as _warmup
    return _warmup(*args, **kwargs)


__version__ = "0.1.0"
__all__ = [
    "linear_attention",
    "sliding_window_attention",
    "auto_correlation",
    "aaren_attention",
    "latte_attention",
    "prob_sparse_attention",
    "latte_macchiato_attention",
    "backend_info",
    "warmup",
    "nn",
]
