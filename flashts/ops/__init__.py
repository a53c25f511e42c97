"""Public ops: validate -> pick backend -> call the op's custom op (autograd + torch.compile ready)."""
from .auto_correlation import auto_correlation
from .linear import linear_attention
from .macchiato import latte_macchiato_attention
from .prefix_scan import aaren_attention, latte_attention
from .prob_sparse import prob_sparse_attention
from .sliding_window import sliding_window_attention

__all__ = ["linear_attention", "sliding_window_attention", "auto_correlation", "aaren_attention", "latte_attention",
           "prob_sparse_attention", "latte_macchiato_attention"]
