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
* ``tau``/``delta`` (the de-stationary factors of TSLib's ``DSAttention``, used by its Non-stationary
  Transformer: scores ``q·k·tau + delta``, ``tau [B, 1]`` per sample, ``delta [B, S]`` per key) are honoured
  exactly where the op is a softmax over keys — :class:`SlidingWindowInnerAttention` and
  :class:`AarenInnerAttention` (they run on any backend: ``tau`` scales the queries, ``delta`` rides in one extra
  head-dim channel, ``[q·tau, 1]·[k, delta] = q·k·tau + delta``) — and raise ``ValueError`` when not None
  everywhere else (linear attention, Latte, auto-correlation have no such scores).

Cross-attention (queries of length L, keys of length S ≠ L): :class:`LinearInnerAttention`,
:class:`LatteInnerAttention` and :class:`AarenInnerAttention` take it in their bidirectional form
(``mask_flag=False``), :class:`AutoCorrelation` always (keys/values padded or cut to L, as Autoformer);
:class:`SlidingWindowInnerAttention` is self-attention only (L ≠ S raises ``ValueError``).

Plain import in place of ``FullAttention`` (``from flashts.nn import X as FullAttention``): every inner class
constructs from ``FullAttention(mask_flag=True, factor=5, scale=None, attention_dropout=0.1,
output_attention=False)``'s arguments alone. :class:`SlidingWindowInnerAttention` then uses
:data:`SLIDING_WINDOW_DEFAULT` (a causal window ``(w, 0)`` or a two-sided ``(w, w)``);
:class:`AarenInnerAttention` derives its query from the layer's projected queries (see its docstring).

``attention_dropout``: the fused ops never form attention probabilities, so the dropout acts on the attention
output ``out`` (in training mode). Exception: :class:`AutoCorrelation` applies no dropout at all, exactly as
Autoformer's (which defines ``self.dropout`` and never calls it), so a trained Autoformer reproduces.

``output_attention=True`` raises ``ValueError`` for the fused attentions (there is no attention matrix to
return: that is the point of them); :class:`AutoCorrelation` returns Autoformer's correlation tensor.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

from .. import ops
from .._validate import FEATURE_MAPS, check_window
from ._util import check_backend, feature_map_fn, mask_kind, pad_time

#: one-sided width ``w`` of :class:`SlidingWindowInnerAttention` when no ``window`` is given: ``(w, 0)`` with
#: ``mask_flag=True`` (w + 1 keys, causal), ``(w, w)`` otherwise. Set it before building a model to change it.
SLIDING_WINDOW_DEFAULT = 24


def _ds_factors(name: str, queries: Tensor, keys: Tensor, tau: Optional[Tensor],
                delta: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Fold DSAttention's ``scores·tau + delta`` into q and k: ``[q·tau, 1]·[k, delta] = q·k·tau + delta``.

    ``tau`` is a number or a tensor with B elements (``[B]``, ``[B, 1]``), ``delta`` a tensor ``[B, S]`` (one
    bias per key, TSLib's shape) or None. Returns (queries, keys) with the head dim E + 1 when ``delta`` is given.
    """
    B, L, H, E = queries.shape
    S = keys.shape[1]
    if tau is not None:
        t = torch.as_tensor(tau, dtype=queries.dtype, device=queries.device)
        if t.numel() == 1:
            t = t.reshape(1).expand(B)
        if t.numel() != B:
            raise ValueError(f"{name}: tau: expected a number or B={B} values ([B] or [B, 1]), got shape "
                             f"{list(t.shape)}")
        queries = queries * t.reshape(B, 1, 1, 1)
    if delta is not None:
        d = torch.as_tensor(delta, dtype=keys.dtype, device=keys.device)
        if d.dim() == 1 and d.numel() == S:
            d = d.reshape(1, S).expand(B, S)
        if d.numel() == B * S and d.dim() >= 2 and d.shape[0] == B:
            d = d.reshape(B, S)
        else:
            raise ValueError(f"{name}: delta: expected one bias per key, shape [B={B}, S={S}], got {list(d.shape)}")
        queries = torch.cat([queries, queries.new_ones(B, L, H, 1)], dim=-1)
        keys = torch.cat([keys, d.reshape(B, S, 1, 1).expand(B, S, H, 1)], dim=-1)
    return queries, keys


class _InnerAttention(nn.Module):
    """TSLib inner-attention plumbing: FullAttention's constructor arguments and the mask rules."""

    def __init__(self, mask_flag: bool = True, factor: Optional[float] = None, scale: Optional[float] = None,
                 attention_dropout: float = 0.1, output_attention: bool = False, backend: str = "auto") -> None:
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

    def _no_tau_delta(self, tau: Any, delta: Any) -> None:
        if tau is not None or delta is not None:
            raise ValueError(f"{type(self).__name__}: tau/delta (DSAttention's de-stationary factors) cannot be "
                             "applied exactly by this op (it has no softmax scores to rescale); pass tau=None and "
                             "delta=None, or use SlidingWindowInnerAttention / AarenInnerAttention, which honour them")

    def _causal(self, attn_mask: Any, L: int, S: int) -> bool:
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
    when ``normalize``); unlike ``FullAttention``'s softmax temperature it cancels out of the normalised output
    (``s·φ(q)S / (s·φ(q)·z + eps)`` differs from ``s = 1`` only through ``eps``), so with ``normalize=True`` it has
    practically no effect; it matters with ``normalize=False``. ``factor`` is accepted and unused (as in
    ``FullAttention``). ``tau``/``delta`` must be None (``ValueError`` otherwise). Dropout on ``out``.

    Example::

        from flashts.nn import AttentionLayer, LinearInnerAttention
        layer = AttentionLayer(LinearInnerAttention(mask_flag=False, attention_dropout=0.1), d_model=512, n_heads=8)
        x = torch.randn(4, 96, 512)
        y, attn = layer(x, x, x, attn_mask=None)            # y [4, 96, 512], attn None
    """

    def __init__(self, mask_flag: bool = True, factor: Optional[float] = None, scale: Optional[float] = None,
                 attention_dropout: float = 0.1, output_attention: bool = False, *, feature_map: str = "elu",
                 normalize: bool = True, eps: float = 1e-6, backend: str = "auto") -> None:
        super().__init__(mask_flag, factor, scale, attention_dropout, output_attention, backend)
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"LinearInnerAttention: feature_map: expected one of {FEATURE_MAPS}, got {feature_map!r}")
        self.feature_map, self.normalize, self.eps = feature_map, bool(normalize), eps

    def forward(self, queries: Tensor, keys: Tensor, values: Tensor, attn_mask: Any, tau: Optional[Tensor] = None,
                delta: Optional[Tensor] = None) -> tuple[Tensor, None]:
        L, S = self._shapes(queries, keys, values)
        self._no_tau_delta(tau, delta)
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
    ``window=None`` (the default, so that ``SlidingWindowInnerAttention as FullAttention`` works) takes the
    one-sided width w = :data:`SLIDING_WINDOW_DEFAULT`: ``(w, 0)`` when ``mask_flag`` else ``(w, w)``.

    ``tau``/``delta`` (TSLib's ``DSAttention``) are honoured exactly: softmax over the window of
    ``scale·(q·k·tau + delta_j)``, ``tau [B, 1]``, ``delta [B, S]``; tau scales q, delta goes in one extra
    head-dim channel, and the op runs on the chosen backend with head dim E + 1 (gradients reach tau and delta).

    Example::

        from flashts.nn import AttentionLayer, SlidingWindowInnerAttention
        enc = AttentionLayer(SlidingWindowInnerAttention(False, window=(32, 32)), d_model=512, n_heads=8)
        dec = AttentionLayer(SlidingWindowInnerAttention(True, window=(63, 0)), d_model=512, n_heads=8)
        x = torch.randn(4, 96, 512)
        y, _ = enc(x, x, x, attn_mask=None)
        y, _ = dec(x, x, x, attn_mask=None)                 # causal, 64 keys
    """

    def __init__(self, mask_flag: bool = True, factor: Optional[float] = None, scale: Optional[float] = None,
                 attention_dropout: float = 0.1, output_attention: bool = False, *,
                 window: Optional[tuple[int, int]] = None, backend: str = "auto") -> None:
        super().__init__(mask_flag, factor, scale, attention_dropout, output_attention, backend)
        if window is None:
            w = SLIDING_WINDOW_DEFAULT
            window = (w, 0) if self.mask_flag else (w, w)
        self.window = check_window(window)
        if self.mask_flag and self.window[1] != 0:
            raise ValueError(f"SlidingWindowInnerAttention: mask_flag=True (causal) needs a causal window (left, 0), "
                             f"got window={self.window}; pass mask_flag=False for a two-sided window")

    def _causal(self, attn_mask: Any, L: int, S: int) -> bool:
        if self.mask_flag and attn_mask is not None:
            mask_kind(type(self).__name__, attn_mask, L, S)  # causal or nothing masked: the window covers both
            return True
        return super()._causal(attn_mask, L, S)

    def forward(self, queries: Tensor, keys: Tensor, values: Tensor, attn_mask: Any, tau: Optional[Tensor] = None,
                delta: Optional[Tensor] = None) -> tuple[Tensor, None]:
        L, S = self._shapes(queries, keys, values)
        self._causal(attn_mask, L, S)
        self._self_only(L, S, "sliding-window attention")
        scale = self.scale
        if tau is not None or delta is not None:
            scale = queries.shape[-1] ** -0.5 if scale is None else scale
            queries, keys = _ds_factors(type(self).__name__, queries, keys, tau, delta)
        out = ops.sliding_window_attention(queries, keys, values, window=self.window, scale=scale,
                                           backend=self.backend)
        return self.dropout(out).contiguous(), None


class AarenInnerAttention(_InnerAttention):
    """Aaren with TSLib's inner-attention interface: one query per head, constant in time.

    ``out = flashts.aaren_attention(query, keys, values, scale=scale)``, where the query ``[H, E]`` or
    ``[B, H, E]`` comes from ``query=``:

    * ``"learned"`` (the default when ``n_heads`` and ``d_keys`` are given): a parameter of this module,
      ``query [n_heads, d_keys]`` (N(0, 1/d_keys) init), Aaren's form. The ``queries`` tensor then only fixes the
      output length L: its values are unused, so **the enclosing** ``AttentionLayer`` **'s** ``query_projection``
      **gets no gradient** (under DDP that needs ``find_unused_parameters=True``).
    * ``"mean"``: the mean over time of the projected ``queries`` (per sample and head), so every parameter
      of the layer trains. Bidirectional only: in a causal layer the mean would let early outputs see later
      positions, so ``mask_flag=True`` with ``"mean"`` raises.
    * ``"first"``: the projected query of the first position, causal-safe (every position sees step 0), and
      it also trains ``query_projection``.

    Without ``n_heads``/``d_keys`` (e.g. ``AarenInnerAttention as FullAttention``, built from
    ``FullAttention``'s arguments) the default is ``"mean"`` for ``mask_flag=False`` and ``"first"`` for
    ``mask_flag=True``. Causal (``mask_flag=True``) needs L == S; bidirectional (``mask_flag=False`` or an
    all-False mask) gives every position the attention over all S keys (the op's last output), for any L
    (cross-attention). ``tau``/``delta`` (``DSAttention``) are honoured exactly, as in
    :class:`SlidingWindowInnerAttention`. Dropout on ``out``.

    Example::

        from flashts.nn import AarenInnerAttention, AttentionLayer
        layer = AttentionLayer(AarenInnerAttention(True, n_heads=8, d_keys=64), d_model=512, n_heads=8)
        x = torch.randn(4, 96, 512)
        y, _ = layer(x, x, x, attn_mask=None)               # causal, learned query
        enc = AttentionLayer(AarenInnerAttention(False, query="mean"), d_model=512, n_heads=8)
        y, _ = enc(x, x, x, attn_mask=None)                 # every parameter of enc gets a gradient
    """

    QUERIES = ("learned", "mean", "first")

    def __init__(self, mask_flag: bool = True, factor: Optional[float] = None, scale: Optional[float] = None,
                 attention_dropout: float = 0.1, output_attention: bool = False, *, n_heads: Optional[int] = None,
                 d_keys: Optional[int] = None, query: Optional[str] = None, backend: str = "auto") -> None:
        super().__init__(mask_flag, factor, scale, attention_dropout, output_attention, backend)
        name = type(self).__name__
        if query is None:
            query = "learned" if (n_heads is not None or d_keys is not None) else ("first" if self.mask_flag
                                                                                  else "mean")
        if query not in self.QUERIES:
            raise ValueError(f"{name}: query: expected one of {self.QUERIES}, got {query!r}")
        if query == "mean" and self.mask_flag:
            raise ValueError(f"{name}: query='mean' with mask_flag=True would let causal outputs see later positions "
                             "(the mean runs over all of them); use query='first' or 'learned', or mask_flag=False")
        self.query_source = query
        self.query: Optional[nn.Parameter] = None
        if query == "learned":
            for n, val in (("n_heads", n_heads), ("d_keys", d_keys)):
                if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                    raise ValueError(f"{name}: {n} must be a positive int for query='learned', got {val!r}")
            assert n_heads is not None and d_keys is not None
            self.query = nn.Parameter(torch.randn(n_heads, d_keys) * d_keys ** -0.5)
        elif n_heads is not None or d_keys is not None:
            raise ValueError(f"{name}: n_heads/d_keys size the learned query; query={query!r} takes it from the "
                             "projected queries, so leave them out")

    def forward(self, queries: Tensor, keys: Tensor, values: Tensor, attn_mask: Any, tau: Optional[Tensor] = None,
                delta: Optional[Tensor] = None) -> tuple[Tensor, None]:
        L, S = self._shapes(queries, keys, values)
        if self.query is not None:
            if tuple(keys.shape[2:]) != tuple(self.query.shape):
                raise ValueError(f"AarenInnerAttention: keys: expected [B, S, H={self.query.shape[0]}, "
                                 f"E={self.query.shape[1]}] (n_heads, d_keys), got {list(keys.shape)}")
            q = self.query.to(keys.dtype)
        elif self.query_source == "mean":
            q = queries.mean(dim=1)  # [B, H, E]
        else:
            q = queries[:, 0]
        causal = self._causal(attn_mask, L, S)
        if causal:
            self._self_only(L, S, "causal Aaren")
        scale = self.scale
        if tau is not None or delta is not None:
            scale = keys.shape[-1] ** -0.5 if scale is None else scale
            B = keys.shape[0]
            q4 = (q if q.dim() == 3 else q.unsqueeze(0).expand(B, *q.shape)).unsqueeze(1)  # [B, 1, H, E]
            q4, keys = _ds_factors(type(self).__name__, q4, keys, tau, delta)
            q = q4[:, 0]
        out = ops.aaren_attention(q, keys, values, scale=scale, backend=self.backend)
        if not causal:
            last = out[:, -1:]
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
    ``tau``/``delta`` must be None (``ValueError`` otherwise). Dropout on ``out``.

    Example::

        from flashts.nn import AttentionLayer, LatteInnerAttention
        layer = AttentionLayer(LatteInnerAttention(True), d_model=512, n_heads=8, d_keys=16)   # 16 latents/head
        x = torch.randn(4, 96, 512)
        y, _ = layer(x, x, x, attn_mask=None)
    """

    _PAD_GAP = 2e4  # padded key logits sit this far below the smallest real one

    def __init__(self, mask_flag: bool = True, factor: Optional[float] = None, scale: Optional[float] = None,
                 attention_dropout: float = 0.1, output_attention: bool = False, *, backend: str = "auto") -> None:
        super().__init__(mask_flag, factor, scale, attention_dropout, output_attention, backend)

    def forward(self, queries: Tensor, keys: Tensor, values: Tensor, attn_mask: Any, tau: Optional[Tensor] = None,
                delta: Optional[Tensor] = None) -> tuple[Tensor, None]:
        L, S = self._shapes(queries, keys, values)
        self._no_tau_delta(tau, delta)
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
      ``ValueError``. ``mask_flag`` and ``scale`` are stored and unused, as in Autoformer: **auto-correlation
      is always bidirectional**, also with ``mask_flag=True`` (Autoformer's decoder passes True and gets the
      bidirectional correlation). Put in a ``FullAttention(mask_flag=True)`` slot of a Transformer decoder, it
      makes the causal self-attention non-causal: use it only where the model is Autoformer-shaped (its
      decoder predicts all horizon steps at once from a zero/mean-filled placeholder, so nothing leaks).
      No warning is raised for ``mask_flag=True`` alone, because every Autoformer decoder passes it.
    * ``attention_dropout``: stored as ``self.dropout`` and, as in Autoformer, never applied.
    * ``tau``/``delta`` must be None (``ValueError`` otherwise): the call accepts them so the module fits TSLib's
      ``AttentionLayer``, but auto-correlation has no softmax scores they could rescale.
    * ``convention="autoformer"`` (default) follows the Autoformer repository: ``irfft(..., n=L)``, L lags.
      ``convention="tslib"`` follows the Time-Series-Library's ``layers/AutoCorrelation.py``, whose ``irfft``
      has no ``n``: at odd L its correlation has L − 1 lags (and slightly different values), so its top-K
      delays and weights differ. Use it (or :class:`TSLibAutoCorrelation`) to reproduce TSLib checkpoints at
      every length. At even L both conventions are identical and run the fused op on any backend; at odd L the
      ``"tslib"`` convention runs in PyTorch (FFT correlation, top-K, K rolls of the values) on the tensors'
      device, not in the fused kernels.

    Example::

        from flashts.nn import AutoCorrelation, AutoCorrelationLayer
        layer = AutoCorrelationLayer(AutoCorrelation(False, factor=1, attention_dropout=0.1), d_model=512, n_heads=8)
        x = torch.randn(4, 96, 512)
        y, _ = layer(x, x, x, attn_mask=None)               # mode="train"
        layer.eval(); y, _ = layer(x, x, x, None)           # mode="infer"
    """

    CONVENTIONS = ("autoformer", "tslib")

    def __init__(self, mask_flag: bool = True, factor: float = 1, scale: Optional[float] = None,
                 attention_dropout: float = 0.1, output_attention: bool = False, *, convention: str = "autoformer",
                 backend: str = "auto") -> None:
        super().__init__()
        if convention not in self.CONVENTIONS:
            raise ValueError(f"{type(self).__name__}: convention: expected one of {self.CONVENTIONS}, "
                             f"got {convention!r}")
        self.convention = convention
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
    def correlation(queries: Tensor, keys: Tensor, n: Optional[int] = -1) -> Tensor:
        """Autoformer's ``corr`` permuted to ``[B, L, H, E]``: R(τ) = Σ_t q[(t+τ) mod L]·k[t] per (b, h, e).

        ``n`` is ``irfft``'s length: -1 (default) means L (Autoformer); None is TSLib's call without ``n``
        (L − 1 lags at odd L).
        """
        B, L, H, E = queries.shape
        S = keys.shape[1]
        keys = pad_time(keys, L) if L > S else keys[:, :L]
        cdt = torch.float64 if queries.dtype == torch.float64 else torch.float32
        q_fft = torch.fft.rfft(queries.to(cdt).permute(0, 2, 3, 1), dim=-1)
        k_fft = torch.fft.rfft(keys.to(cdt).permute(0, 2, 3, 1), dim=-1)
        corr = torch.fft.irfft(q_fft * torch.conj(k_fft), n=L if n == -1 else n, dim=-1)  # [B, H, E, n]
        return corr.permute(0, 3, 1, 2)

    def _tslib_odd(self, queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        """TSLib's auto-correlation at odd L (``irfft`` without ``n``: L − 1 lags), in PyTorch."""
        B, L, H, E = queries.shape
        S = values.shape[1]
        if L > S:
            keys, values = pad_time(keys, L), pad_time(values, L)
        else:
            keys, values = keys[:, :L], values[:, :L]
        cdt = torch.float64 if queries.dtype == torch.float64 else torch.float32
        # mean over heads and channels commutes with the (linear) inverse FFT: one irfft per sample
        spec = (torch.fft.rfft(queries.to(cdt), dim=1) * torch.conj(torch.fft.rfft(keys.to(cdt), dim=1))).mean((2, 3))
        r = torch.fft.irfft(spec, dim=-1)  # [B, L - 1] at odd L, as TSLib's corr averaged over heads and channels
        K = int(self.factor * math.log(L))
        if self.training:
            delays = torch.topk(r.mean(0), K, dim=-1)[1].unsqueeze(0).expand(B, K)
            scores = torch.gather(r, 1, delays)
        else:
            scores, delays = torch.topk(r, K, dim=-1)
        w = torch.softmax(scores, dim=-1)  # [B, K]
        idx = (torch.arange(L, device=values.device).unsqueeze(0).unsqueeze(-1) + delays.unsqueeze(1)) % L  # [B,L,K]
        out = values.new_zeros(values.shape, dtype=cdt)
        vals = values.to(cdt)
        for i in range(K):
            rolled = torch.gather(vals, 1, idx[:, :, i, None, None].expand(B, L, *vals.shape[2:]))
            out = out + rolled * w[:, i, None, None, None]
        return out.to(values.dtype)

    def forward(self, queries: Tensor, keys: Tensor, values: Tensor, attn_mask: Any = None,
                tau: Optional[Tensor] = None, delta: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        if attn_mask is not None:
            raise ValueError("AutoCorrelation: attn_mask must be None: auto-correlation has no masked form "
                             "(Autoformer ignores the mask; flashts does not ignore masks silently)")
        if tau is not None or delta is not None:
            raise ValueError("AutoCorrelation: tau/delta (DSAttention's de-stationary factors) cannot be applied: "
                             "auto-correlation has no softmax scores to rescale; pass tau=None and delta=None")
        L = queries.shape[1]
        tslib_odd = self.convention == "tslib" and L % 2 == 1
        if tslib_odd:
            out = self._tslib_odd(queries, keys, values)
        else:
            out = ops.auto_correlation(queries, keys, values, factor=self.factor, mode=self.mode,
                                       backend=self.backend)
        attn = None
        if self.output_attention:
            attn = self.correlation(queries, keys, None if tslib_odd else -1)
        return out.contiguous(), attn


class TSLibAutoCorrelation(AutoCorrelation):
    """:class:`AutoCorrelation` with ``convention="tslib"``: the Time-Series-Library's numbers at every length.

    The one-line swap for TSLib's Autoformer (``models/Autoformer.py``)::

        # from layers.AutoCorrelation import AutoCorrelation, AutoCorrelationLayer
        from flashts.nn import TSLibAutoCorrelation as AutoCorrelation, AutoCorrelationLayer
    """

    def __init__(self, mask_flag: bool = True, factor: float = 1, scale: Optional[float] = None,
                 attention_dropout: float = 0.1, output_attention: bool = False, *, backend: str = "auto") -> None:
        super().__init__(mask_flag, factor, scale, attention_dropout, output_attention, convention="tslib",
                         backend=backend)


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

    def __init__(self, correlation: nn.Module, d_model: int, n_heads: int, d_keys: Optional[int] = None,
                 d_values: Optional[int] = None) -> None:
        super().__init__()
        d_keys = d_keys or (d_model // n_heads)
        d_values = d_values or (d_model // n_heads)
        self.inner_correlation = correlation
        self.query_projection = nn.Linear(d_model, d_keys * n_heads)
        self.key_projection = nn.Linear(d_model, d_keys * n_heads)
        self.value_projection = nn.Linear(d_model, d_values * n_heads)
        self.out_projection = nn.Linear(d_values * n_heads, d_model)
        self.n_heads = n_heads

    def forward(self, queries: Tensor, keys: Tensor, values: Tensor, attn_mask: Any) -> tuple[Tensor, Any]:
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

    def __init__(self, attention: nn.Module, d_model: int, n_heads: int, d_keys: Optional[int] = None,
                 d_values: Optional[int] = None) -> None:
        super().__init__()
        d_keys = d_keys or (d_model // n_heads)
        d_values = d_values or (d_model // n_heads)
        self.inner_attention = attention
        self.query_projection = nn.Linear(d_model, d_keys * n_heads)
        self.key_projection = nn.Linear(d_model, d_keys * n_heads)
        self.value_projection = nn.Linear(d_model, d_values * n_heads)
        self.out_projection = nn.Linear(d_values * n_heads, d_model)
        self.n_heads = n_heads

    def forward(self, queries: Tensor, keys: Tensor, values: Tensor, attn_mask: Any, tau: Optional[Tensor] = None,
                delta: Optional[Tensor] = None) -> tuple[Tensor, Any]:
        B, L, _ = queries.shape
        _, S, _ = keys.shape
        H = self.n_heads
        queries = self.query_projection(queries).view(B, L, H, -1)
        keys = self.key_projection(keys).view(B, S, H, -1)
        values = self.value_projection(values).view(B, S, H, -1)
        out, attn = self.inner_attention(queries, keys, values, attn_mask, tau=tau, delta=delta)
        out = out.view(B, L, -1)
        return self.out_projection(out), attn
