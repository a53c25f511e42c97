"""``flashts.nn``: drop-in ``torch.nn`` layers over the flashts ops.

Multi-head self-attention layers, ``batch_first`` ``x [B, T, d_model]`` (module :mod:`flashts.nn.attention`)::

    LinearAttention, SlidingWindowAttention, AutoCorrelationAttention, Aaren, Latte
    LatteMacchiato (module :mod:`flashts.nn.macchiato`, with LatteMacchiatoInnerAttention for TSLib)

Time-Series-Library / Autoformer drop-ins (module :mod:`flashts.nn.tslib`): inner attentions with the call
``forward(queries, keys, values, attn_mask, tau=None, delta=None) -> (out, attn)`` on ``[B, L, H, E]`` tensors::

    LinearInnerAttention, SlidingWindowInnerAttention, AarenInnerAttention, LatteInnerAttention, AutoCorrelation

and the layers that hold them, with TSLib's / Autoformer's parameter names (their state dicts load as is)::

    AttentionLayer, AutoCorrelationLayer

Informer's ``ProbAttention`` (module :mod:`flashts.nn.informer`): a drop-in for the TSLib class, same seed ->
same output.

Every layer calls the public function of its op (``flashts.linear_attention`` ...) and takes ``backend=``
(default ``"auto"``), passed through to it.
"""
from .attention import Aaren, AutoCorrelationAttention, Latte, LinearAttention, SlidingWindowAttention
from .macchiato import LatteMacchiato, LatteMacchiatoInnerAttention
from .tslib import (AarenInnerAttention, AttentionLayer, AutoCorrelation, AutoCorrelationLayer, LatteInnerAttention,
                    LinearInnerAttention, SlidingWindowInnerAttention, TSLibAutoCorrelation)
from .informer import ProbAttention

__all__ = [
    "LinearAttention",
    "SlidingWindowAttention",
    "AutoCorrelationAttention",
    "Aaren",
    "Latte",
    "LinearInnerAttention",
    "SlidingWindowInnerAttention",
    "AarenInnerAttention",
    "LatteInnerAttention",
    "AutoCorrelation",
    "TSLibAutoCorrelation",
    "AttentionLayer",
    "AutoCorrelationLayer",
    "ProbAttention",
    "LatteMacchiato",
    "LatteMacchiatoInnerAttention",
]
