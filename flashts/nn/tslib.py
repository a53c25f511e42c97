"""Drop-ins for the Time-Series-Library (TSLib) and Autoformer attention interfaces.

Inner attentions take the TSLib call ``forward(queries, keys, values, attn_mask, tau=None, delta=None) ->
(out, attn)`` with ``queries [B, L, H, E]``, ``keys [B, S, H, E]``, ``values [B, S, H, D]`` and return
``out [B, L, H, D]``, so they replace ``FullAttention`` inside TSLib's ``AttentionLayer`` (or Autoformer's
``AutoCorrelation`` inside ``AutoCorrelationLayer``) unchanged. Their constructors keep ``FullAttention``'s
positional order ``(mask_flag, factor, scale, attention_dropout, output_attention)``; the op's own options are
keyword-only. Each calls the public function of :mod:`flashts` for its op, with the given ``backend``.

Masks (TSLib semantics: ``mask_flag=True`` with ``attn_mask=None`` means causal, as ``FullAttention`` builds a
``TriangularCausalMask``):

* ``mask_flag=True``: ``attn_mask`` may be None or the causal triangle (a ``TriangularCausalMask``, or a bool
  tensor ``[..., L, L]`` with True above the diagonal) -> causal; a bool mask with nothing masked -> no mask
  (where the op has a bidirectional form). Any other mask raises ``ValueError``.
* ``mask_flag=False``: bidirectional; ``attn_mask`` must be None (``FullAttention`` would ignore it; flashts
  refuses to ignore a mask silently) — else ``ValueError``.
* ``tau``/``delta`` (the de-stationary factors of the Non-stationary Transformer) are accepted and unused, as
  ``FullAttention`` leaves them unused.

``attention_dropout``: the fused ops never form attention probabilities, so the dropout acts on the attention
output ``out`` (in training mode). Exception: :class:`AutoCorrelation` applies no dropout at all, exactly as
Autoformer's (which defines ``self.dropout`` and never calls it), so a trained Autoformer reproduces.

``output_attention=True`` raises ``ValueError`` for the fused attentions (there is no attention matrix to
return: that is the point of them); :class:`AutoCorrelation` returns Autoformer's correlation tensor.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import ops
from .._validate import FEATURE_MAPS, check_window
from ._util import check_backend, feature_map_fn, mask_kind, pad_time


class _InnerAttention(nn.Module):
    """TSLib inner-attention plumbing: FullAttention's constructor arguments and the mask rules."""

    def __init__(self, mask_flag=True, factor=None, scale=None, attention_dropout=0.1, output_attention=False,
                 backend="auto"):
        super().__init__()
        name = type(self).__name__
        if output_attention:
            raise ValueError(f"{name}: output_attention=True is not supported: the fused op never forms the "
                             "attention matrix (that is what makes it O(T)); pass output_attention=False")
        self.mask_flag = bool(mask_flag)
        self.factor = factor  # FullAttention's argument (ProbAttention's sampling factor): unused, as there
        self.scale = scale
        self.output_attention = False
        self.dropout = nn.Dropout(attention_dropout)
        self.backend = check_backend(backend)

    def _causal(self, attn_mask, L: int, S: int) -> bool:
        """True for causal attention, False for bidirectional (see the module docstring)."""
        name = type(self).__name__
        if not self.mask_flag:
            if attn_mask is not None:
                raise ValueError(f"{name}: attn_mask was given with mask_flag=False; TSLib's FullAttention would "
                                 "ignore it and flashts does not ignore masks silently: pass attn_mask=None, or "
                                 "mask_flag=True to apply a causal mask")
            return False
        return attn_mask is None or mask_kind(name, attn_mask, L, S) == "causal"

    def _shapes(self, queries, keys, values):
        for n, t in (("queries", queries), ("keys", keys), ("values", values)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4:
                got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{type(self).__name__}: {n}: expected a 4-D tensor [B, L|S, H, E|D], got {got}")
        return queries.shape[1], keys.shape[1]

    def _self_only(self, L: int, S: int, what: str):
        if L != S:
            raise ValueError(f"{type(self).__name__}: {what} needs queries and keys of one length (self-attention), "
                             f"got L={L}, S={S}")


class LinearInnerAttention(_InnerAttention):
    """Linear attention with TSLib's inner-attention interface (replaces ``FullAttention``).

    ``out = flashts.linear_attention(queries, keys, values, causal=..., feature_map=...)``: q ↔ ``queries``,
    k ↔ ``keys``, v ↔ ``values``. Causal (``mask_flag=True``, no mask or a ``TriangularCausalMask``) needs L == S;
    bidirectional (``mask_flag=False``, or an all-False mask) also serves cross-attention with L != S: φ is
    applied here, the shorter side padded with φ = 0 (which adds nothing to the sums), and the op run with
    ``feature_map="identity"`` — the same result as attending the S keys. ``scale`` multiplies φ(q) (default 1
    when ``normalize``). ``factor`` is accepted and unused (as in ``FullAttention``). Dropout on ``out``.

    Example::

        from flashts.nn import AttentionLayer, LinearInnerAttention
        layer = AttentionLayer(LinearInnerAttention(mask_flag=False, attention_dropout=0.1), d_model=512, n_heads=8)
        x = torch.randn(4, 96, 512)
        y, attn = layer(x, x, x, attn_mask=None)            # y [4, 96, 512], attn None
    """

    def __init__(self, mask_flag=True, factor=None, scale=None, attention_dropout=0.1, output_attention=False, *,
                 feature_map="elu", normalize=True, eps=1e-6, backend="auto"):
        super().__init__(mask_flag, factor, scale, attention_dropout, output_attention, backend)
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"LinearInnerAttention: feature_map: expected one of {FEATURE_MAPS}, got {feature_map!r}")
        self.feature_map, self.normalize, self.eps = feature_map, bool(normalize), eps

    def forward(self, queries, keys, values, attn_mask, tau=None, delta=None):
        L, S = self._shapes(queries, keys, values)
        causal = self._causal(attn_mask, L, S)
        kw = dict(normalize=self.normalize, scale=self.scale, eps=self.eps, backend=self.backend)
        if L == S:
            out = ops.linear_attention(queries, keys, values, causal=causal, feature_map=self.feature_map, **kw)
        else:
            if causal:
                self._self_only(L, S, "causal linear attention")
            T = max(L, S)
            q = pad_time(feature_map_fn(queries, self.feature_map), T)
            k = pad_time(feature_map_fn(keys, self.feature_map), T)  # φ(k) = 0 on padding: no contribution
            out = ops.linear_attention(q, k, pad_time(values, T), causal=False, feature_map="identity", **kw)[:, :L]
        return self.dropout(out).contiguous(), None


class SlidingWindowInnerAttention(_InnerAttention):
    """Sliding-window softmax attention with TSLib's inner-attention interface (replaces ``FullAttention``).

    ``out = flashts.sliding_window_attention(queries, keys, values, window=window, scale=scale)``: exactly
    ``FullAttention`` with a band mask (query i sees keys i−left..i+right; -1 = unbounded), scale default
    ``E**-0.5`` like ``FullAttention``. Self-attention only (L == S). ``mask_flag=True`` (causal) needs a causal
    window ``(left, 0)``: the causal triangle or an all-False ``attn_mask`` are then honoured exactly (the window
    is applied on top); ``mask_flag=False`` uses the window as given (e.g. ``(32, 32)``). Dropout on ``out``.

    Example::

        from flashts.nn import AttentionLayer, SlidingWindowInnerAttention
        enc = AttentionLayer(SlidingWindowInnerAttention(False, window=(32, 32)), d_model=512, n_heads=8)
        dec = AttentionLayer(SlidingWindowInnerAttention(True, window=(63, 0)), d_model=512, n_heads=8)
        x = torch.randn(4, 96, 512)
        y, _ = enc(x, x, x, attn_mask=None)
        y, _ = dec(x, x, x, attn_mask=None)                 # causal, 64 keys
    """

    def __init__(self, mask_flag=True, factor=None, scale=None, attention_dropout=0.1, output_attention=False, *,
                 window, backend="auto"):
        super().__init__(mask_flag, factor, scale, attention_dropout, output_attention, backend)
        self.window = check_window(window)
        if self.mask_flag and self.window[1] != 0:
            raise ValueError(f"SlidingWindowInnerAttention: mask_flag=True (causal) needs a causal window (left, 0), "
                             f"got window={self.window}; pass mask_flag=False for a two-sided window")

    def _causal(self, attn_mask, L, S):
        if self.mask_flag and attn_mask is not None:
            mask_kind(type(self).__name__, attn_mask, L, S)  # causal or nothing masked: the window covers both
            return True
        return super()._causal(attn_mask, L, S)

    def forward(self, queries, keys, values, attn_mask, tau=None, delta=None):
        L, S = self._shapes(queries, keys, values)
        self._causal(attn_mask, L, S)
        self._self_only(L, S, "sliding-window attention")
        out = ops.sliding_window_attention(queries, keys, values, window=self.window, scale=self.scale,
                                           backend=self.backend)
        return self.dropout(out).contiguous(), None


class AarenInnerAttention(_InnerAttention):
    """Aaren with TSLib's inner-attention interface: one learned query per head, keys/values from the layer.

    Aaren's query is constant in time, so it is a parameter of this module, ``query [n_heads, d_keys]``
    (N(0, 1/d_keys) init): ``out = flashts.aaren_attention(query, keys, values, scale=scale)``. The ``queries``
    tensor only fixes the output length L; its values are not used, so the enclosing ``AttentionLayer``'s
    ``query_projection`` gets no gradient (use ``find_unused_parameters=True`` under DDP). Causal
    (``mask_flag=True``) needs L == S; bidirectional (``mask_flag=False`` or an all-False mask) gives every
    position the attention over all S keys (the op's last output), for any L. Dropout on ``out``.

    Example::

        from flashts.nn import AarenInnerAttention, AttentionLayer
        layer = AttentionLayer(AarenInnerAttention(True, n_heads=8, d_keys=64), d_model=512, n_heads=8)
        x = torch.randn(4, 96, 512)
        y, _ = layer(x, x, x, attn_mask=None)               # causal
    """

    def __init__(self, mask_flag=True, factor=None, scale=None, attention_dropout=0.1, output_attention=False, *,
                 n_heads, d_keys, backend="auto"):
        super().__init__(mask_flag, factor, scale, attention_dropout, output_attention, backend)
        for name, val in (("n_heads", n_heads), ("d_keys", d_keys)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"AarenInnerAttention: {name} must be a positive int, got {val!r}")
        self.query = nn.Parameter(torch.randn(n_heads, d_keys) * d_keys ** -0.5)

    def forward(self, queries, keys, values, attn_mask, tau=None, delta=None):
        L, S = self._shapes(queries, keys, values)
        if tuple(keys.shape[2:]) != tuple(self.query.shape):
            raise ValueError(f"AarenInnerAttention: keys: expected [B, S, H={self.query.shape[0]}, "
                             f"E={self.query.shape[1]}] (n_heads, d_keys), got {list(keys.shape)}")
        causal = self._causal(attn_mask, L, S)
        q = self.query.to(keys.dtype)
        if causal:
            self._self_only(L, S, "causal Aaren")
            out = ops.aaren_attention(q, keys, values, scale=self.scale, backend=self.backend)
        else:
            last = ops.aaren_attention(q, keys, values, scale=self.scale, backend=self.backend)[:, -1:]
            out = last.expand(last.shape[0], L, *last.shape[2:])
        return self.dropout(out).contiguous(), None


class LatteInnerAttention(_InnerAttention):
    """Latte with TSLib's inner-attention interface: ``queries``/``keys`` are the latent logits.

    q ↔ ``queries`` ``[B, L, H, E]`` and k ↔ ``keys`` ``[B, S, H, E]`` are read as latent logits with
    E latents per head (the layer's projections produce them: ``d_keys`` = number of latents), v ↔ ``values``:
    ``out = flashts.latte_attention(queries·scale, keys·scale, values, causal=...)``; ``scale`` (default None =
    1) is a temperature on both logits. Causal (``mask_flag=True``) needs L == S; bidirectional
    (``mask_flag=False`` or an all-False mask) also serves cross-attention with L != S: the shorter side is
    padded, padded keys with logits 2·10⁴ below the smallest real one (their weight e^{k−max} is exactly 0).
    Dropout on ``out``.

    Example::

        from flashts.nn import AttentionLayer, LatteInnerAttention
        layer = AttentionLayer(LatteInnerAttention(True), d_model=512, n_heads=8, d_keys=16)   # 16 latents/head
        x = torch.randn(4, 96, 512)
        y, _ = layer(x, x, x, attn_mask=None)
    """

    _PAD_GAP = 2e4  # padded key logits sit this far below the smallest real one

    def __init__(self, mask_flag=True, factor=None, scale=None, attention_dropout=0.1, output_attention=False, *,
                 backend="auto"):
        super().__init__(mask_flag, factor, scale, attention_dropout, output_attention, backend)

    def forward(self, queries, keys, values, attn_mask, tau=None, delta=None):
        L, S = self._shapes(queries, keys, values)
        causal = self._causal(attn_mask, L, S)
        q, k = queries, keys
        if self.scale is not None:
            q, k = q * self.scale, k * self.scale
        if L == S:
            out = ops.latte_attention(q, k, values, causal=causal, backend=self.backend)
        else:
            if causal:
                self._self_only(L, S, "causal Latte")
            T = max(L, S)
            finfo = torch.finfo(k.dtype)
            pad = (k.detach().amin().double() - self._PAD_GAP).clamp(min=finfo.min)
            out = ops.latte_attention(pad_time(q, T), pad_time(k, T, pad), pad_time(values, T), causal=False,
                                      backend=self.backend)[:, :L]
        return self.dropout(out).contiguous(), None


class AutoCorrelation(nn.Module):
    """Autoformer's ``AutoCorrelation`` (Wu et al. 2021) over :func:`flashts.auto_correlation`: a drop-in.

    Same constructor and call as Autoformer's (``forward(queries, keys, values, attn_mask)``, tensors
    ``[B, L, H, E]`` / ``[B, S, H, E]`` / ``[B, S, H, D]``, returns ``(out [B, L, H, D], attn)``), and the same
    function: ``mode="train"`` while ``self.training`` (top-K delays shared by the batch), ``"infer"`` after
    ``.eval()`` (per sample), K = int(factor·ln L). No parameters, so state dicts are unaffected.

    * ``output_attention=True``: ``attn`` is Autoformer's correlation ``corr.permute(0, 3, 1, 2)``, the
      per-(h, e) correlation ``[B, L, H, E]`` over the delay τ, computed here by FFT in float32 (only in that
      case; with ``irfft(n=L)``, so odd L give L delays where the original's ``irfft`` gives L−1). Else None.
    * ``attn_mask`` must be None (auto-correlation has no masked form; Autoformer ignores it) — else
      ``ValueError``. ``mask_flag`` and ``scale`` are stored and unused, as in Autoformer.
    * ``attention_dropout``: stored as ``self.dropout`` and, as in Autoformer, never applied.
    * ``tau``/``delta`` are accepted (and unused) so the module also fits TSLib's ``AttentionLayer``.

    Example::

        from flashts.nn import AutoCorrelation, AutoCorrelationLayer
        layer = AutoCorrelationLayer(AutoCorrelation(False, factor=1, attention_dropout=0.1), d_model=512, n_heads=8)
        x = torch.randn(4, 96, 512)
        y, _ = layer(x, x, x, attn_mask=None)               # mode="train"
        layer.eval(); y, _ = layer(x, x, x, None)           # mode="infer"
    """

    def __init__(self, mask_flag=True, factor=1, scale=None, attention_dropout=0.1, output_attention=False, *,
                 backend="auto"):
        super().__init__()
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) \
                or factor <= 0:
            raise ValueError(f"AutoCorrelation: factor: expected a number > 0, got {factor!r}")
        self.factor = factor
        self.scale = scale
        self.mask_flag = mask_flag
        self.output_attention = output_attention
        self.dropout = nn.Dropout(attention_dropout)
        self.backend = check_backend(backend)

    @property
    def mode(self) -> str:
        return "train" if self.training else "infer"

    @staticmethod
    def correlation(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Autoformer's ``corr`` permuted to ``[B, L, H, E]``: R(τ) = Σ_t q[(t+τ) mod L]·k[t] per (b, h, e)."""
        B, L, H, E = queries.shape
        S = keys.shape[1]
        keys = pad_time(keys, L) if L > S else keys[:, :L]
        cdt = torch.float64 if queries.dtype == torch.float64 else torch.float32
        q_fft = torch.fft.rfft(queries.to(cdt).permute(0, 2, 3, 1), dim=-1)
        k_fft = torch.fft.rfft(keys.to(cdt).permute(0, 2, 3, 1), dim=-1)
        corr = torch.fft.irfft(q_fft * torch.conj(k_fft), n=L, dim=-1)  # [B, H, E, L]
        return corr.permute(0, 3, 1, 2)

    def forward(self, queries, keys, values, attn_mask=None, tau=None, delta=None):
        if attn_mask is not None:
            raise ValueError("AutoCorrelation: attn_mask must be None: auto-correlation has no masked form "
                             "(Autoformer ignores the mask; flashts does not ignore masks silently)")
        out = ops.auto_correlation(queries, keys, values, factor=self.factor, mode=self.mode, backend=self.backend)
        attn = self.correlation(queries, keys) if self.output_attention else None
        return out.contiguous(), attn


class AutoCorrelationLayer(nn.Module):
    """Autoformer's ``AutoCorrelationLayer``, unchanged: projections, heads, the inner correlation, output.

    Parameter names and shapes are Autoformer's — ``query_projection``/``key_projection``
    ``nn.Linear(d_model, d_keys·n_heads)``, ``value_projection`` ``nn.Linear(d_model, d_values·n_heads)``,
    ``out_projection`` ``nn.Linear(d_values·n_heads, d_model)``, ``inner_correlation`` — so a state dict of the
    original layer loads with ``strict=True``. ``d_keys = d_values = d_model // n_heads`` by default.
    ``forward(queries, keys, values, attn_mask)`` with ``[B, L, d_model]`` / ``[B, S, d_model]`` inputs returns
    ``(out [B, L, d_model], attn)``. Works with any inner class of this module (or the originals).

    Example::

        from flashts.nn import AutoCorrelation, AutoCorrelationLayer
        layer = AutoCorrelationLayer(AutoCorrelation(False, 1, attention_dropout=0.05), d_model=512, n_heads=8)
        # layer.load_state_dict(autoformer_layer.state_dict())    # an original Autoformer layer's weights load as is
        x = torch.randn(4, 96, 512)
        y, attn = layer(x, x, x, None)
    """

    def __init__(self, correlation, d_model, n_heads, d_keys=None, d_values=None):
        super().__init__()
        d_keys = d_keys or (d_model // n_heads)
        d_values = d_values or (d_model // n_heads)
        self.inner_correlation = correlation
        self.query_projection = nn.Linear(d_model, d_keys * n_heads)
        self.key_projection = nn.Linear(d_model, d_keys * n_heads)
        self.value_projection = nn.Linear(d_model, d_values * n_heads)
        self.out_projection = nn.Linear(d_values * n_heads, d_model)
        self.n_heads = n_heads

    def forward(self, queries, keys, values, attn_mask):
        B, L, _ = queries.shape
        _, S, _ = keys.shape
        H = self.n_heads
        queries = self.query_projection(queries).view(B, L, H, -1)
        keys = self.key_projection(keys).view(B, S, H, -1)
        values = self.value_projection(values).view(B, S, H, -1)
        out, attn = self.inner_correlation(queries, keys, values, attn_mask)
        out = out.view(B, L, -1)
        return self.out_projection(out), attn


class AttentionLayer(nn.Module):
    """TSLib's ``AttentionLayer``, unchanged: projections, heads, the inner attention, output projection.

    Parameter names and shapes are TSLib's (``inner_attention``, ``query_projection``, ``key_projection``,
    ``value_projection``, ``out_projection``), so its state dicts load with ``strict=True``.
    ``forward(queries, keys, values, attn_mask, tau=None, delta=None)`` -> ``(out [B, L, d_model], attn)``.

    Example::

        from flashts.nn import AttentionLayer, LinearInnerAttention
        layer = AttentionLayer(LinearInnerAttention(mask_flag=True), d_model=512, n_heads=8)
        x = torch.randn(4, 96, 512)
        y, _ = layer(x, x, x, attn_mask=None)               # causal linear attention
    """

    def __init__(self, attention, d_model, n_heads, d_keys=None, d_values=None):
        super().__init__()
        d_keys = d_keys or (d_model // n_heads)
        d_values = d_values or (d_model // n_heads)
        self.inner_attention = attention
        self.query_projection = nn.Linear(d_model, d_keys * n_heads)
        self.key_projection = nn.Linear(d_model, d_keys * n_heads)
        self.value_projection = nn.Linear(d_model, d_values * n_heads)
        self.out_projection = nn.Linear(d_values * n_heads, d_model)
        self.n_heads = n_heads

    def forward(self, queries, keys, values, attn_mask, tau=None, delta=None):
        B, L, _ = queries.shape
        _, S, _ = keys.shape
        H = self.n_heads
        queries = self.query_projection(queries).view(B, L, H, -1)
        keys = self.key_projection(keys).view(B, S, H, -1)
        values = self.value_projection(values).view(B, S, H, -1)
        out, attn = self.inner_attention(queries, keys, values, attn_mask, tau=tau, delta=delta)
        out = out.view(B, L, -1)
        return self.out_projection(out), attn
