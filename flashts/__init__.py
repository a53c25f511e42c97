"""flashts: fused sub-quadratic attention for time-series transformers.

Seven mechanisms, one public function each (see README.md for the math)::

    linear_attention, sliding_window_attention, auto_correlation, aaren_attention, latte_attention,
    prob_sparse_attention, latte_macchiato_attention

Each takes ``backend="auto" | "triton" | "cuda" | "torch"`` (default from ``FLASHTS_BACKEND``).
"""
from typing import Any, Optional, Sequence, Union

import torch

from ._backend import info as backend_info
from .ops import aaren_attention, auto_correlation, latte_attention, linear_attention, sliding_window_attention
from .ops import latte_macchiato_attention, prob_sparse_attention

from . import nn  # noqa: E402  (layers call the public functions above)



def warmup(ops: Sequence[str] = ("linear_attention", "sliding_window_attention", "auto_correlation",
                                 "aaren_attention", "latte_attention"),
           B: int = 4, H: int = 8, T: Union[int, Sequence[int]] = 1024, D: int = 64, *, L: int = 64,
           window: tuple[int, int] = (511, 0), dtype: Optional[torch.dtype] = None,
           device: Union[str, torch.device, None] = None, backward: bool = True,
           backend: str = "triton") -> dict[Any, Any]:
    """Compile and autotune the Triton kernels at the given shapes before timed work (see README, "GPU speed";
    ``flashts.kernels.autotune.warmup``). ``FLASHTS_AUTOTUNE=0`` disables tuning (default configs)."""
    from .kernels.autotune import warmup as _warmup
    return _warmup(ops, B, H, T, D, L=L, window=window, dtype=dtype, device=device, backward=backward,
                   backend=backend)


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
