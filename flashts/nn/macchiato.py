"""Latte Macchiato layers over :func:`flashts.latte_macchiato_attention` (SPEC §7).

* :class:`LatteMacchiato` — multi-head self-attention ``x [B, T, d_model]`` with projections for q, k, v, the
  mixing logits and the latent keys; ``forward(x, state=None, output_final_state=False)`` and ``step``.
* :class:`LatteMacchiatoInnerAttention` — the Time-Series-Library inner-attention call
  ``forward(queries, keys, values, attn_mask, tau=None, delta=None) -> (out, None)``, for TSLib's
  ``AttentionLayer`` (or :class:`flashts.nn.AttentionLayer`).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import ops
from .._validate import check_window
from ._util import check_backend, check_heads, check_input
from .attention import _Base
from .tslib import _InnerAttention


def _check_latents(cls: str, n_latents) -> int:
    if isinstance(n_latents, bool) or not isinstance(n_latents, int) or n_latents < 1:
        raise ValueError(f"{cls}: n_latents must be a positive int, got {n_latents!r}")
    return n_latents


def _causal_window(cls: str, window) -> tuple[int, int]:
    left, right = check_window(window)
    if right != 0:
        raise ValueError(f"{cls}: window: expected a causal window (left, 0), got {window!r}")
    return left, right


class LatteMacchiato(_Base):
    """Multi-head Latte Macchiato: local softmax attention and global latent attention, mixed per token.

    Projections of ``x``: ``q, k, v`` ``[B,T,H,Dh]`` (``Dh = d_model // n_heads``), mixing logits
    ``mix [B,T,H,L+1]`` and latent key logits ``latent_k [B,T,H,L]`` (``L = n_latents``); then
    ``o = flashts.latte_macchiato_attention(q, k, v, mix, latent_k, window=window)`` and
    ``y = dropout(out_proj(o))``. Token t mixes, with weights softmax(mix_t), the causal sliding-window attention
    over keys t−left..t and the L causal latent means (Latte). Cost O(T·(left+1)·Dh + T·L·Dh) per head.

    ``window``: ``(left, 0)`` (left >= 0 for streaming; ``(-1, 0)`` = full causal attention, no streaming).

    State: the op's ``(k_win [B,left,H,Dh], v_win [B,left,H,Dh], n_win [B] int32, m [B,H,L], alpha [B,H,L],
    S [B,H,L,Dh])`` — the cache of the last ``left`` keys/values plus Latte's running state (layout in
    :mod:`flashts.ops.macchiato`). ``step`` costs O(left·Dh + L·Dh) per head and token, whatever the position.

    Example::

        layer = flashts.nn.LatteMacchiato(d_model=64, n_heads=4, n_latents=8, window=(15, 0))
        x = torch.randn(2, 100, 64)
        y = layer(x)                                        # [2, 100, 64]
        y1, state = layer(x[:, :50], output_final_state=True)
        y_t, state = layer.step(x[:, 50], state)            # == y[:, 50]
    """

    def __init__(self, d_model: int, n_heads: int, n_latents: int, window, dropout: float = 0.0, bias: bool = True,
                 backend: str = "auto"):
        super().__init__()
        name = type(self).__name__
        self.head_dim, _ = check_heads(name, d_model, n_heads)
        self.n_latents = _check_latents(name, n_latents)
        self.window = _causal_window(name, window)
        self.d_model, self.n_heads = d_model, n_heads
        self.backend = check_backend(backend)
        H, L, D = n_heads, n_latents, self.head_dim
        self.q_proj = nn.Linear(d_model, H * D, bias=bias)
        self.k_proj = nn.Linear(d_model, H * D, bias=bias)
        self.v_proj = nn.Linear(d_model, H * D, bias=bias)
        self.mix_proj = nn.Linear(d_model, H * (L + 1), bias=bias)
        self.latent_proj = nn.Linear(d_model, H * L, bias=bias)
        self.out_proj = nn.Linear(H * D, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, state=None, output_final_state: bool = False, cu_seqlens=None):
        """``x [B, T, d_model]`` -> ``y``, or ``(y, state)`` with ``output_final_state``."""
        check_input(type(self).__name__, x, self.d_model)
        if self.window[0] < 0 and (state is not None or output_final_state):
            self._no_stream("needs a finite window (left >= 0)")
        B, T, _ = x.shape
        H, L, D = self.n_heads, self.n_latents, self.head_dim
        q = self.q_proj(x).view(B, T, H, D)
        k = self.k_proj(x).view(B, T, H, D)
        v = self.v_proj(x).view(B, T, H, D)
        mix = self.mix_proj(x).view(B, T, H, L + 1)
        lk = self.latent_proj(x).view(B, T, H, L)
        res = ops.latte_macchiato_attention(q, k, v, mix, lk, window=self.window, initial_state=state,
                                            output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                                            backend=self.backend)
        if output_final_state:
            o, new_state = res
            return self._finish(o), new_state
        return self._finish(res)


class LatteMacchiatoInnerAttention(_InnerAttention):
    """Latte Macchiato with TSLib's inner-attention interface (replaces ``FullAttention`` in ``AttentionLayer``).

    TSLib's layer hands over only the projected ``queries``/``keys`` ``[B, L, H, E]`` and ``values``
    ``[B, L, H, D]``, so this module derives the two extra inputs itself, with two small linear maps shared
    by the heads (its only parameters): mixing logits ``mix = mix_proj(queries)`` ``[B,L,H,n_latents+1]`` (a
    token's mixture is a function of its query, as in Latte where p(l|t) comes from q_t) and latent key logits
    ``latent_k = latent_proj(keys)`` ``[B,L,H,n_latents]`` (Latte's k comes from the keys). Then
    ``out = flashts.latte_macchiato_attention(queries, keys, values, mix, latent_k, window=window, scale=scale)``
    (scale default ``E**-0.5`` like ``FullAttention``). Causal self-attention only: ``mask_flag=True`` with
    ``attn_mask`` None or the causal triangle; ``mask_flag=False`` raises (the op has no bidirectional form).
    ``d_keys`` (E) is needed up front to size the maps. Dropout on ``out``.

    Example::

        from flashts.nn import AttentionLayer, LatteMacchiatoInnerAttention
        inner = LatteMacchiatoInnerAttention(True, window=(31, 0), n_latents=8, d_keys=64)
        layer = AttentionLayer(inner, d_model=512, n_heads=8)          # d_keys = 512 // 8 = 64
        x = torch.randn(4, 96, 512)
        y, _ = layer(x, x, x, attn_mask=None)
    """

    def __init__(self, mask_flag=True, factor=None, scale=None, attention_dropout=0.1, output_attention=False, *,
                 window, n_latents, d_keys, backend="auto"):
        super().__init__(mask_flag, factor, scale, attention_dropout, output_attention, backend)
        name = type(self).__name__
        if not self.mask_flag:
            raise ValueError(f"{name}: Latte Macchiato is causal: pass mask_flag=True")
        self.window = _causal_window(name, window)
        self.n_latents = _check_latents(name, n_latents)
        if isinstance(d_keys, bool) or not isinstance(d_keys, int) or d_keys < 1:
            raise ValueError(f"{name}: d_keys must be a positive int (E of queries/keys), got {d_keys!r}")
        self.d_keys = d_keys
        self.mix_proj = nn.Linear(d_keys, n_latents + 1)
        self.latent_proj = nn.Linear(d_keys, n_latents)

    def forward(self, queries, keys, values, attn_mask, tau=None, delta=None):
        L, S = self._shapes(queries, keys, values)
        if not self._causal(attn_mask, L, S):
            raise ValueError(f"{type(self).__name__}: attn_mask masks nothing, but Latte Macchiato is causal only: "
                             "pass attn_mask=None or the causal triangle")
        self._self_only(L, S, "Latte Macchiato")
        if queries.shape[-1] != self.d_keys or keys.shape[-1] != self.d_keys:
            raise ValueError(f"{type(self).__name__}: queries/keys: expected E = d_keys = {self.d_keys}, got "
                             f"{queries.shape[-1]} and {keys.shape[-1]}")
        mix = self.mix_proj(queries)
        lk = self.latent_proj(keys)
        out = ops.latte_macchiato_attention(queries, keys, values, mix, lk, window=self.window, scale=self.scale,
                                            backend=self.backend)
        return self.dropout(out).contiguous(), None
