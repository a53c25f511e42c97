"""Plain definitions of every op, straight from the SPEC (dense matrices and loops; obviously right).

Used only by the tests as the oracle: same signatures as the public functions minus ``backend``,
differentiable through ordinary autograd. Memory is O(T²) where the definition is; keep T small.
"""
from .auto_correlation import auto_correlation
from .linear import linear_attention
from .macchiato import latte_macchiato_attention
from .prefix_scan import aaren_attention, latte_attention
from .prob_sparse import prob_sparse_attention
from .sliding_window import sliding_window_attention

__all__ = ["linear_attention", "sliding_window_attention", "auto_correlation", "aaren_attention", "latte_attention",
           "prob_sparse_attention", "latte_macchiato_attention"]
