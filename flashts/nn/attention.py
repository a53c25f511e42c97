"""Multi-head self-attention layers, one per flashts op, ``batch_first`` layout ``x [B, T, d_model]``.

Every layer computes ``y = dropout(out_proj(op(q_proj(x), k_proj(x), v_proj(x))))``: linear projections split
into heads ``[B, T, H, ·]``, the fused op of :mod:`flashts` (called through its public function with the
layer's ``backend``), the heads merged back and projected to ``d_model``; ``dropout`` acts on that output (the
fused ops never form attention probabilities to drop). Memory and cost are those of the op: O(T), no T×T tensor.

Streaming. The causal layers take ``forward(x, state=None, output_final_state=False)`` and
``step(x_t, state) -> (y_t, new_state)`` for one token ``x_t [B, d_model]``; running ``step`` token by token
equals one parallel ``forward`` (and so does ``forward`` chunk by chunk with the state passed along):

* :class:`LinearAttention` (causal): the op's state ``(S [B,H,D,Dv], z [B,H,D])``, float32;
* :class:`Aaren`: the op's state ``(m [B,H], u [B,H], w [B,H,Dv])``, float32;
* :class:`Latte` (causal): the op's state ``(m [B,H,L], alpha [B,H,L], S [B,H,L,Dv])``, float32;
* :class:`SlidingWindowAttention` with a causal window ``(left, 0)``: a KV cache, the dict
  ``{"k": [B, C, Hk, D], "v": [B, C, Hk, Dv], "pos": int}`` — see the class docstring.

``state=None`` means the start of a sequence. Within a batch every sequence is at the same position.
:class:`AutoCorrelationAttention` has no streaming form (it correlates whole windows by FFT).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import _backend, ops
from .._validate import check_window
from ..torch_ops import step as _step
from ._util import check_backend, check_heads, check_input


class _Base(nn.Module):
    """Shared plumbing: output projection + dropout, ``step`` via ``forward`` with T = 1."""

    def _finish(self, o: torch.Tensor) -> torch.Tensor:
        B, T = o.shape[:2]
        return self._drop(self.out_proj(o.reshape(B, T, -1)))

    def _drop(self, y: torch.Tensor) -> torch.Tensor:
        """The output dropout, skipped where it is the identity (eval mode or p = 0: a step saves the call)."""
        return self.dropout(y) if self.dropout.training and self.dropout.p > 0 else y

    def _no_stream(self, why: str):
        raise ValueError(f"{type(self).__name__}: streaming (state / output_final_state / step) {why}")

    def step(self, x_t: torch.Tensor, state=None, *, inplace: bool = False):
        """One decoding step: ``x_t [B, d_model]`` -> ``(y_t [B, d_model], new_state)``; ``state=None`` starts.

        On the ``torch`` backend (CPU tensors with ``backend="auto"``) the step runs the dedicated T = 1 update of
        :mod:`flashts.torch_ops.step` directly (a few aten ops, differentiable), after an O(1) check of the
        state's shapes; otherwise (or for a state that does not fit) the op itself with T = 1.
        ``inplace=True`` writes the new state into the given state tensors (returned as the new state) instead of
        allocating it: inference only — it raises ``ValueError`` under autograd (grad mode on and a tensor that
        requires grad), since the backward would need the old state."""
        name = type(self).__name__
        check_input(name, x_t, self.d_model, rank=2)
        if inplace and state is None:
            raise ValueError(f"{name}.step: inplace=True needs a state to update (got state=None)")
        if self._direct_step(x_t, state):
            return self._torch_step(x_t, state, inplace)
        if inplace:
            if self._OP is None or not isinstance(state, (tuple, list)) or not all(
                    isinstance(t, torch.Tensor) for t in state):
                raise ValueError(f"{name}.step: inplace=True is not supported for this layer / state")
            _step.check_inplace(state, x_t, *self.parameters())
        y, new_state = self.forward(x_t.unsqueeze(1), state, output_final_state=True)
        if inplace:   # another backend: copy into the caller's buffers
            for old, new in zip(state, new_state):
                old.copy_(new)
            new_state = state
        return y.squeeze(1), new_state

    # -- the direct torch step (subclasses: _OP, _state_shapes, _torch_step) ----------------------------
    _OP = None

    def _direct_step(self, x_t: torch.Tensor, state) -> bool:
        """True when the op would run on the torch backend and ``state`` is None or has the expected shapes
        (layers without a direct step, ``_OP = None``, always go through ``forward``)."""
        if self._OP is None:
            return False
        if not (self.backend == "torch" or (self.backend == "auto" and x_t.is_cpu
                                             and _backend.default_backend() in ("auto", "torch"))):
            if _backend.resolve(self._OP, self.backend, x_t.device, x_t.dtype) != "torch":
                return False
        if state is None:
            return True
        want = self._state_shapes(x_t.shape[0])
        if not isinstance(state, (tuple, list)) or len(state) != len(want):
            return False
        dev, cd = x_t.device, _step.compute_dtype(x_t.dtype)
        return all(isinstance(t, torch.Tensor) and t.shape == w and t.dtype == cd and t.device == dev
                   for t, w in zip(state, want))


# --------------------------------------------------------------------------------------------- linear


class LinearAttention(_Base):
    """Multi-head linear attention (Katharopoulos et al. 2020) over :func:`flashts.linear_attention`.

    ``q = q_proj(x)`` ``[B,T,H,D]``, ``k, v = k_proj(x), v_proj(x)`` ``[B,T,Hk,D]`` (GQA when
    ``n_kv_heads < n_heads``), ``o_t = φ(q_t)ᵀ S_t / (φ(q_t)·z_t + eps)`` with the causal (or full) running sums of
    ``φ(k_s) v_sᵀ`` and ``φ(k_s)``; ``y = dropout(out_proj(o))``. ``D = d_model // n_heads``.

    Args:
        d_model, n_heads: model width and query heads. n_kv_heads: key/value heads (default ``n_heads``).
        causal: causal running sums (streaming available) or full (bidirectional) sums.
        feature_map: ``"elu"`` (elu+1), ``"relu"`` or ``"identity"``. normalize, eps: as in the op.
        dropout: dropout probability on the layer output. bias: biases of the projections.
        backend: passed to the op (``"auto" | "triton" | "cuda" | "torch"``).

    State (causal): the op's ``(S [B, H, D, D], z [B, H, D])``, float32 (float64 for float64 inputs).

    Example::

        layer = flashts.nn.LinearAttention(d_model=64, n_heads=4)
        x = torch.randn(2, 100, 64)
        y = layer(x)                                        # [2, 100, 64]
        y1, state = layer(x[:, :60], output_final_state=True)
        y2 = layer(x[:, 60:], state)                        # == y[:, 60:]
        y_t, state = layer.step(x[:, 60], state)            # one token: == y[:, 60]
    """

    def __init__(self, d_model: int, n_heads: int, causal: bool = True, feature_map: str = "elu",
                 n_kv_heads: int | None = None, dropout: float = 0.0, bias: bool = True, normalize: bool = True,
                 eps: float = 1e-6, backend: str = "auto"):
        super().__init__()
        self.head_dim, self.n_kv_heads = check_heads(type(self).__name__, d_model, n_heads, n_kv_heads)
        if feature_map not in ("elu", "relu", "identity"):
            raise ValueError(f"LinearAttention: feature_map: expected 'elu', 'relu' or 'identity', got {feature_map!r}")
        self.d_model, self.n_heads = d_model, n_heads
        self.causal, self.feature_map, self.normalize, self.eps = bool(causal), feature_map, bool(normalize), eps
        self.backend = check_backend(backend)
        D, H, Hk = self.head_dim, n_heads, self.n_kv_heads
        self.q_proj = nn.Linear(d_model, H * D, bias=bias)
        self.k_proj = nn.Linear(d_model, Hk * D, bias=bias)
        self.v_proj = nn.Linear(d_model, Hk * D, bias=bias)
        self.out_proj = nn.Linear(H * D, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, state=None, output_final_state: bool = False, cu_seqlens=None):
        """``x [B, T, d_model]`` -> ``y [B, T, d_model]``, or ``(y, final_state)`` with ``output_final_state``.

        ``state``: ``(S, z)`` from a previous call (causal only). ``cu_seqlens``: packed sequences (B == 1);
        states are then per sequence ``[N, ...]``.
        """
        check_input(type(self).__name__, x, self.d_model)
        if not self.causal and (state is not None or output_final_state):
            self._no_stream("needs causal=True")
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        res = ops.linear_attention(q, k, v, causal=self.causal, feature_map=self.feature_map,
                                   normalize=self.normalize, eps=self.eps, initial_state=state,
                                   output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                                   backend=self.backend)
        if output_final_state:
            o, new_state = res
            return self._finish(o), new_state
        return self._finish(res)

    _OP = "linear_attention"

    def step(self, x_t: torch.Tensor, state=None, *, inplace: bool = False):
        """One token ``x_t [B, d_model]`` -> ``(y_t [B, d_model], (S, z))``: the op with T = 1 and the state
        (``inplace``: see :meth:`_Base.step`)."""
        if not self.causal:
            self._no_stream("needs causal=True")
        return super().step(x_t, state, inplace=inplace)

    def _state_shapes(self, B: int):
        H, D = self.n_heads, self.head_dim
        return (B, H, D, D), (B, H, D)

    def _torch_step(self, x_t, state, inplace):
        B = x_t.shape[0]
        q = self.q_proj(x_t).view(B, self.n_heads, self.head_dim)
        k = self.k_proj(x_t).view(B, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x_t).view(B, self.n_kv_heads, self.head_dim)
        o, new_state = _step.linear_step(q, k, v, state, feature_map=self.feature_map, normalize=self.normalize,
                                         eps=self.eps, inplace=inplace)
        return self._drop(self.out_proj(o.reshape(B, -1))), new_state


# ------------------------------------------------------------------------------------- sliding window


class SlidingWindowAttention(_Base):
    """Multi-head sliding-window softmax attention over :func:`flashts.sliding_window_attention`.

    Query i attends keys j with ``i - left <= j <= i + right`` (FlashAttention's ``window``; -1 = unbounded):
    ``window=(w-1, 0)`` is a causal window of w keys, ``(-1, 0)`` full causal attention, ``(64, 64)`` a
    symmetric band. GQA with ``n_kv_heads``. Scale ``D**-0.5``, ``D = d_model // n_heads``.

    Args:
        d_model, n_heads: model width and query heads. window: ``(left, right)``, ints >= -1.
        n_kv_heads: key/value heads (default ``n_heads``). dropout: on the layer output. bias: of the
        projections. scale: score scale (default ``D**-0.5``). backend: passed to the op.

    Streaming (causal windows ``(left, 0)`` only) keeps a KV cache; the state is the dict::

        {"k": [B, C, Hk, D], "v": [B, C, Hk, D], "pos": int}

    ``pos`` = tokens seen so far. For ``left >= 0`` the cache is a ring buffer of ``C = left`` slots: token n
    (0-based) lives in slot ``n % left``; slots of tokens not seen yet (``pos < left``) hold zeros and are never
    read. For ``left == -1`` (unbounded) ``C = pos``: every past key/value in time order (memory grows with T).
    Keys and values are stored in the projection dtype (they are the projected k, v, not float32 copies).

    ``forward(x, state)`` runs the op on ``[cached keys, new keys]`` with placeholder queries on the cached
    positions (their outputs are dropped), so a chunk continues the sequence exactly. ``step`` decodes one
    token directly: one query against at most ``left + 1`` keys (softmax in float32; float64 for float64),
    O(left·D) per head — the op would spend O(left²) there on placeholder queries.

    Example::

        layer = flashts.nn.SlidingWindowAttention(d_model=64, n_heads=4, window=(15, 0))   # 16 keys, causal
        x = torch.randn(2, 100, 64)
        y = layer(x)                                        # [2, 100, 64]
        state = None
        for t in range(100):                                # token by token: == y[:, t]
            y_t, state = layer.step(x[:, t], state)
        bidir = flashts.nn.SlidingWindowAttention(64, 4, window=(8, 8))(x)   # symmetric band, no streaming
    """

    def __init__(self, d_model: int, n_heads: int, window, n_kv_heads: int | None = None,
                 dropout: float = 0.0, bias: bool = True, scale: float | None = None, backend: str = "auto"):
        super().__init__()
        self.head_dim, self.n_kv_heads = check_heads(type(self).__name__, d_model, n_heads, n_kv_heads)
        self.window = check_window(window)
        self.d_model, self.n_heads = d_model, n_heads
        self.scale = scale
        self.backend = check_backend(backend)
        D, H, Hk = self.head_dim, n_heads, self.n_kv_heads
        self.q_proj = nn.Linear(d_model, H * D, bias=bias)
        self.k_proj = nn.Linear(d_model, Hk * D, bias=bias)
        self.v_proj = nn.Linear(d_model, Hk * D, bias=bias)
        self.out_proj = nn.Linear(H * D, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    @property
    def causal(self) -> bool:
        return self.window[1] == 0

    def _project(self, x):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        return q, k, v

    # -- KV cache ------------------------------------------------------------------------------------
    def _check_state(self, state, B: int):
        if not isinstance(state, dict) or set(state) != {"k", "v", "pos"}:
            raise ValueError("SlidingWindowAttention: state: expected the dict {'k', 'v', 'pos'} returned by "
                             f"forward(..., output_final_state=True) or step, got {type(state).__name__}"
                             + (f" with keys {sorted(state)}" if isinstance(state, dict) else ""))
        k, v, pos = state["k"], state["v"], state["pos"]
        if isinstance(pos, torch.Tensor):
            pos = int(pos)
        if isinstance(pos, bool) or not isinstance(pos, int) or pos < 0:
            raise ValueError(f"SlidingWindowAttention: state['pos']: expected an int >= 0, got {pos!r}")
        left = self.window[0]
        C = pos if left < 0 else left
        want = (B, C, self.n_kv_heads, self.head_dim)
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != want:
                got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"SlidingWindowAttention: state['{name}']: expected shape {list(want)} "
                                 f"[B, C, Hk, D] for window={self.window} at pos={pos}, got {got}")
        return k, v, pos

    def _cache_in_time_order(self, buf: torch.Tensor, pos: int) -> torch.Tensor:
        """The cached keys (or values) oldest first: the last min(pos, left) tokens."""
        left = self.window[0]
        if left < 0:
            return buf
        if pos < left:
            return buf[:, :pos]
        return torch.roll(buf, shifts=-(pos % left), dims=1) if left > 0 else buf

    def _cache_from_time_order(self, seq: torch.Tensor, pos: int) -> torch.Tensor:
        """Ring buffer holding the last tokens of ``seq`` (time order, ending at token pos - 1)."""
        left = self.window[0]
        if left < 0:
            return seq
        if left == 0:
            return seq[:, :0]
        last = seq[:, max(seq.shape[1] - min(left, pos), 0):]
        if pos >= left:  # full ring: token pos-left (last[:, 0]) goes to slot (pos-left) % left = pos % left
            return torch.roll(last, shifts=pos % left, dims=1)
        pad = seq.new_zeros((seq.shape[0], left - pos) + tuple(seq.shape[2:]))
        return torch.cat([last, pad], dim=1)  # tokens 0..pos-1 in slots 0..pos-1

    # -- forward / step --------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, state=None, output_final_state: bool = False, cu_seqlens=None):
        """``x [B, T, d_model]`` -> ``y``, or ``(y, kv_cache)`` with ``output_final_state`` (causal windows).

        ``state``: the KV cache of the preceding tokens (causal windows only). ``cu_seqlens``: packed
        sequences (B == 1), not combinable with streaming.
        """
        check_input(type(self).__name__, x, self.d_model)
        streaming = state is not None or output_final_state
        if streaming and not self.causal:
            self._no_stream(f"needs a causal window (left, 0), got window={self.window}")
        if streaming and cu_seqlens is not None:
            self._no_stream("is not available with cu_seqlens")
        B, T, _ = x.shape
        q, k, v = self._project(x)
        n_cached, pos = 0, 0
        if state is not None:
            ck, cv, pos = self._check_state(state, B)
            ck, cv = self._cache_in_time_order(ck, pos), self._cache_in_time_order(cv, pos)
            n_cached = ck.shape[1]
            # placeholder queries on the cached positions; their outputs are dropped below
            q = torch.cat([q.new_zeros((B, n_cached) + tuple(q.shape[2:])), q], dim=1)
            k, v = torch.cat([ck.to(k.dtype), k], dim=1), torch.cat([cv.to(v.dtype), v], dim=1)
        o = ops.sliding_window_attention(q, k, v, window=self.window, scale=self.scale, cu_seqlens=cu_seqlens,
                                         backend=self.backend)
        y = self._finish(o[:, n_cached:])
        if not output_final_state:
            return y
        pos += T
        return y, {"k": self._cache_from_time_order(k, pos), "v": self._cache_from_time_order(v, pos), "pos": pos}

    def step(self, x_t: torch.Tensor, state=None, *, inplace: bool = False):
        """One token ``x_t [B, d_model]`` -> ``(y_t [B, d_model], new_cache)``; causal windows only.

        ``inplace=True`` writes the new token into the given ring buffer (``left >= 0``; the returned dict holds
        the same ``k``/``v`` tensors) instead of copying the cache: inference only (``ValueError`` under
        autograd, as the backward would need the overwritten slot)."""
        name = type(self).__name__
        if not self.causal:
            self._no_stream(f"needs a causal window (left, 0), got window={self.window}")
        check_input(name, x_t, self.d_model, rank=2)
        B = x_t.shape[0]
        H, Hk, D = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_proj(x_t).view(B, H, D)
        k = self.k_proj(x_t).view(B, Hk, D)
        v = self.v_proj(x_t).view(B, Hk, D)
        left = self.window[0]
        if state is None:
            if inplace:
                raise ValueError(f"{name}.step: inplace=True needs a state to update (got state=None)")
            C = 0 if left < 0 else left
            ck = k.new_zeros((B, C, Hk, D))
            cv = v.new_zeros((B, C, Hk, D))
            pos = 0
        else:
            ck, cv, pos = self._check_state(state, B)
        if inplace:
            _step.check_inplace((ck, cv), x_t, *self.parameters())
        n_valid = pos if left < 0 else min(pos, left)
        cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
        G = H // Hk  # GQA: query head h reads kv head h // G
        scale = self.scale if self.scale is not None else D ** -0.5
        # scores of the new query against the valid cache slots (any order: softmax is order-free) and itself
        qg = q.to(cdt).view(B, Hk, G, D) * scale
        kc, vc = ck[:, :n_valid].to(cdt), cv[:, :n_valid].to(cdt)            # [B, n, Hk, D]
        s_cache = torch.einsum("bkgd,bnkd->bkgn", qg, kc)
        s_self = (qg * k.to(cdt).unsqueeze(2)).sum(-1, keepdim=True)        # [B, Hk, G, 1]
        p = torch.softmax(torch.cat([s_cache, s_self], dim=-1), dim=-1)
        o = torch.einsum("bkgn,bnkd->bkgd", p[..., :n_valid], vc) + p[..., n_valid:] * v.to(cdt).unsqueeze(2)
        y = self.dropout(self.out_proj(o.reshape(B, H * D).to(q.dtype)))
        # update the cache with the new token
        if left < 0:
            nk, nv = torch.cat([ck, k.unsqueeze(1).to(ck.dtype)], dim=1), torch.cat([cv, v.unsqueeze(1).to(cv.dtype)], dim=1)
        elif left == 0:
            nk, nv = ck, cv
        else:
            slot = pos % left
            nk, nv = (ck, cv) if inplace else (ck.clone(), cv.clone())
            nk[:, slot] = k.to(nk.dtype)
            nv[:, slot] = v.to(nv.dtype)
        return y, {"k": nk, "v": nv, "pos": pos + 1}


# ----------------------------------------------------------------------------------- auto-correlation


class AutoCorrelationAttention(_Base):
    """Multi-head Autoformer auto-correlation over :func:`flashts.auto_correlation` (self-attention form).

    ``q, k, v = q_proj(x), k_proj(x), v_proj(x)`` ``[B,T,H,D]``; the op finds the K = int(factor·ln T) most
    correlated delays by FFT and aggregates the rolled values; ``y = dropout(out_proj(o))``. The delay
    selection follows the module's mode, as Autoformer does: ``layer.train()`` -> ``mode="train"`` (delays shared
    by the batch), ``layer.eval()`` -> ``mode="infer"`` (per sample). No streaming form.

    Example::

        layer = flashts.nn.AutoCorrelationAttention(d_model=64, n_heads=4, factor=1.0)
        x = torch.randn(2, 96, 64)
        y = layer(x)            # [2, 96, 64], mode="train"
        y = layer.eval()(x)     # mode="infer"
    """

    def __init__(self, d_model: int, n_heads: int, factor: float = 1.0, dropout: float = 0.0, bias: bool = True,
                 backend: str = "auto"):
        super().__init__()
        self.head_dim, _ = check_heads(type(self).__name__, d_model, n_heads)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) \
                or factor <= 0:
            raise ValueError(f"AutoCorrelationAttention: factor: expected a number > 0, got {factor!r}")
        self.d_model, self.n_heads, self.factor = d_model, n_heads, float(factor)
        self.backend = check_backend(backend)
        HD = n_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, HD, bias=bias)
        self.k_proj = nn.Linear(d_model, HD, bias=bias)
        self.v_proj = nn.Linear(d_model, HD, bias=bias)
        self.out_proj = nn.Linear(HD, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    @property
    def mode(self) -> str:
        return "train" if self.training else "infer"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, T, d_model]`` -> ``y [B, T, d_model]``."""
        check_input(type(self).__name__, x, self.d_model)
        B, T, _ = x.shape
        shape = (B, T, self.n_heads, self.head_dim)
        o = ops.auto_correlation(self.q_proj(x).view(shape), self.k_proj(x).view(shape), self.v_proj(x).view(shape),
                                 factor=self.factor, mode=self.mode, backend=self.backend)
        return self._finish(o)

    def step(self, x_t, state=None):
        self._no_stream("does not exist for auto-correlation (it correlates the whole window by FFT)")


# ------------------------------------------------------------------------------------------------ Aaren


class Aaren(_Base):
    """Multi-head Aaren, "Attention as an RNN" (Feng et al. 2024), over :func:`flashts.aaren_attention`.

    One learned query per head ``query`` (``nn.Parameter [H, D]``); ``k, v = k_proj(x), v_proj(x)``
    ``[B,T,H,D]``; ``o_t = Σ_{i≤t} e^{s_i} v_i / Σ_{i≤t} e^{s_i}`` with ``s_i = scale·(query·k_i)`` (causal by
    construction); ``y = dropout(out_proj(o))``. ``query`` is initialised N(0, 1/D).

    State: the op's ``(m [B,H], u [B,H], w [B,H,D])``, float32 (running max, Σe^{s−m}, Σe^{s−m}·v).

    Example::

        layer = flashts.nn.Aaren(d_model=64, n_heads=4)
        x = torch.randn(2, 100, 64)
        y = layer(x)                                        # [2, 100, 64]
        y_t, state = layer.step(x[:, 0])                    # == y[:, 0]
        y_t, state = layer.step(x[:, 1], state)             # == y[:, 1]
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True,
                 scale: float | None = None, backend: str = "auto"):
        super().__init__()
        self.head_dim, _ = check_heads(type(self).__name__, d_model, n_heads)
        self.d_model, self.n_heads, self.scale = d_model, n_heads, scale
        self.backend = check_backend(backend)
        H, D = n_heads, self.head_dim
        self.query = nn.Parameter(torch.randn(H, D) * D ** -0.5)
        self.k_proj = nn.Linear(d_model, H * D, bias=bias)
        self.v_proj = nn.Linear(d_model, H * D, bias=bias)
        self.out_proj = nn.Linear(H * D, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, state=None, output_final_state: bool = False, cu_seqlens=None):
        """``x [B, T, d_model]`` -> ``y``, or ``(y, (m, u, w))`` with ``output_final_state``."""
        check_input(type(self).__name__, x, self.d_model)
        B, T, _ = x.shape
        shape = (B, T, self.n_heads, self.head_dim)
        k, v = self.k_proj(x).view(shape), self.v_proj(x).view(shape)
        res = ops.aaren_attention(self.query.to(k.dtype), k, v, scale=self.scale, initial_state=state,
                                  output_final_state=output_final_state, cu_seqlens=cu_seqlens, backend=self.backend)
        if output_final_state:
            o, new_state = res
            return self._finish(o), new_state
        return self._finish(res)


    _OP = "aaren_attention"

    def _state_shapes(self, B: int):
        return (B, self.n_heads), (B, self.n_heads), (B, self.n_heads, self.head_dim)

    def _torch_step(self, x_t, state, inplace):
        B, H, D = x_t.shape[0], self.n_heads, self.head_dim
        k = self.k_proj(x_t).view(B, H, D)
        v = self.v_proj(x_t).view(B, H, D)
        o, new_state = _step.aaren_step(self.query.to(k.dtype), k, v, state, scale=self.scale, inplace=inplace)
        return self._drop(self.out_proj(o.reshape(B, -1))), new_state


# ------------------------------------------------------------------------------------------------ Latte


class Latte(_Base):
    """Multi-head Latte, latent attention (Dolga et al. 2024), over :func:`flashts.latte_attention`.

    Latent logits ``q, k = q_proj(x), k_proj(x)`` ``[B,T,H,L]`` (``L = n_latents``), values ``v = v_proj(x)``
    ``[B,T,H,Dv]`` with ``Dv = d_model // n_heads``; ``y_t = Σ_l softmax_l(q_t) · (Σ_{s≤t} e^{k_{s,l}} v_s) /
    (Σ_{s≤t} e^{k_{s,l}})`` (sums over all s when ``causal=False``); ``y = dropout(out_proj(o))``. Cost
    O(T·L·Dv) per head.

    State (causal): the op's ``(m [B,H,L], alpha [B,H,L], S [B,H,L,Dv])``, float32.

    Example::

        layer = flashts.nn.Latte(d_model=64, n_heads=4, n_latents=16)
        x = torch.randn(2, 100, 64)
        y = layer(x)                                        # [2, 100, 64], causal
        y1, state = layer(x[:, :50], output_final_state=True)
        y_t, state = layer.step(x[:, 50], state)            # == y[:, 50]
        bidir = flashts.nn.Latte(64, 4, n_latents=16, causal=False)(x)
    """

    def __init__(self, d_model: int, n_heads: int, n_latents: int, causal: bool = True, dropout: float = 0.0,
                 bias: bool = True, backend: str = "auto"):
        super().__init__()
        self.head_dim, _ = check_heads(type(self).__name__, d_model, n_heads)
        if isinstance(n_latents, bool) or not isinstance(n_latents, int) or n_latents < 1:
            raise ValueError(f"Latte: n_latents must be a positive int, got {n_latents!r}")
        self.d_model, self.n_heads, self.n_latents, self.causal = d_model, n_heads, n_latents, bool(causal)
        self.backend = check_backend(backend)
        H, L, D = n_heads, n_latents, self.head_dim
        self.q_proj = nn.Linear(d_model, H * L, bias=bias)
        self.k_proj = nn.Linear(d_model, H * L, bias=bias)
        self.v_proj = nn.Linear(d_model, H * D, bias=bias)
        self.out_proj = nn.Linear(H * D, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, state=None, output_final_state: bool = False, cu_seqlens=None):
        """``x [B, T, d_model]`` -> ``y``, or ``(y, (m, alpha, S))`` with ``output_final_state`` (causal)."""
        check_input(type(self).__name__, x, self.d_model)
        if not self.causal and (state is not None or output_final_state):
            self._no_stream("needs causal=True")
        B, T, _ = x.shape
        H, L = self.n_heads, self.n_latents
        q = self.q_proj(x).view(B, T, H, L)
        k = self.k_proj(x).view(B, T, H, L)
        v = self.v_proj(x).view(B, T, H, self.head_dim)
        res = ops.latte_attention(q, k, v, causal=self.causal, initial_state=state,
                                  output_final_state=output_final_state, cu_seqlens=cu_seqlens, backend=self.backend)
        if output_final_state:
            o, new_state = res
            return self._finish(o), new_state
        return self._finish(res)

    _OP = "latte_attention"

    def step(self, x_t: torch.Tensor, state=None, *, inplace: bool = False):
        """One token ``x_t [B, d_model]`` -> ``(y_t, (m, alpha, S))``: the op with T = 1 and the state
        (``inplace``: see :meth:`_Base.step`)."""
        if not self.causal:
            self._no_stream("needs causal=True")
        return super().step(x_t, state, inplace=inplace)

    def _state_shapes(self, B: int):
        H, L, D = self.n_heads, self.n_latents, self.head_dim
        return (B, H, L), (B, H, L), (B, H, L, D)

    def _torch_step(self, x_t, state, inplace):
        B, H, L = x_t.shape[0], self.n_heads, self.n_latents
        q = self.q_proj(x_t).view(B, H, L)
        k = self.k_proj(x_t).view(B, H, L)
        v = self.v_proj(x_t).view(B, H, self.head_dim)
        o, new_state = _step.latte_step(q, k, v, state, inplace=inplace)
        return self._drop(self.out_proj(o.reshape(B, -1))), new_state
