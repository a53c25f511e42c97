"""Peer implementations the flashts backends are timed against.

Each baseline takes the flashts-layout inputs of a case and builds, OUTSIDE the timing, whatever it needs
(its own layout, masks, block masks, compiled functions); the timed callable is only its forward call.

* ``sdpa`` — ``torch.nn.functional.scaled_dot_product_attention``, dense softmax attention at the case's
  B, T, H, D as a reference point for every op (causal when the op is causal: linear causal, Aaren, causal
  Latte, sliding windows with right = 0; full otherwise). It computes a *different function* (except for
  a sliding window that covers the whole sequence), so it is not checked and its FLOP count is that of
  dense attention. Layout ``[B, H, T, D]`` (transposed copies made outside the timing). For Aaren the
  keys double as queries (one query per position, as dense attention would have); for Latte q/k are the
  latent logits (head dim L).
* ``sdpa-mask`` — SDPA with a dense boolean ``[T, T]`` sliding-window mask (built once): the same function
  as ``sliding_window_attention``, O(T²) time and memory.
* ``flex`` — FlexAttention (``torch.nn.attention.flex_attention``) under ``torch.compile`` with a
  sliding-window ``BlockMask`` built once by ``create_block_mask`` outside the timing. On CPU: forward only
  (FlexAttention has no CPU backward) and only when named in ``--impls`` (compiling takes tens of seconds).
* ``fla-torch`` — flash-linear-attention's pure-PyTorch chunk form of causal linear attention, re-implemented
  (:func:`fla_chunk_linear_torch`; 64-step chunks, cumsum of chunk states, autograd backward). CPU and GPU.
* ``textbook`` — the textbook parallel Aaren (:func:`aaren_textbook`): logcumsumexp of the logits plus a cumsum
  of e^{s−max}·v (underflows for logit spreads beyond ~80 in float32, as that form does).
* ``fla`` — flash-linear-attention's ``fla.ops.linear_attn.chunk_linear_attn`` (GPU only, when importable).
  Matched to flashts' linear attention: the feature map (elu+1 / relu / identity) is applied to q and k
  inside the timed call, as fla's ``LinearAttention`` layer does before its kernel; ``scale=1.0`` when
  normalising (flashts' default) else D**-0.5; layout ``[B, T, H, D]`` (``head_first=False`` where the
  argument exists); causal only. fla >= 0.5 (no ``head_first``) normalises in its own code
  (``normalize=True``, eps 1e-10) and is run that way; older versions run with ``normalize=False`` and the normaliser
  o_t / (q̃_t·Σ_{s≤t} φ(k_s) + 1e-6) is computed by the harness in float32 inside the timed call: fla's own
  ``normalize_output`` is plain PyTorch too, but in several releases it takes ``cumsum(-2)``, which is the
  head axis in its ``[B, T, H, D]`` layout (wrong), and it accumulates in the input dtype (bf16 over 64k
  steps is inaccurate), so the guard would reject it.
* ``autoformer`` — the original Autoformer ``AutoCorrelation`` code, ``bench/autoformer_original.py``'s
  ``autoformer_auto_correlation(q, k, v, factor, mode)`` (``[B, L, H, E]``), imported lazily; skipped with
  a note when that module is missing. bfloat16/float16 inputs are cast to float32 inside the timed call (as
  autocast does for the FFTs under AMP; torch.fft has no bfloat16 kernels).

* ``loop`` — Aaren and causal Latte as the token-by-token recurrence a user writes in plain PyTorch (the RNN
  form of the Aaren paper): for t = 0 … T−1 the online-softmax state (m, α, S) per latent is updated with
  a_t and v_t, and y_t = Σ_l p_{t,l} S_l / α_l (Aaren: a_t = scale·q·k_t, one latent, p = 1; Latte:
  a = k, p = softmax_l(q_t)). Float32 state, maxima detached, differentiable by autograd (which keeps every
  step's state: O(T·L·Dv) memory). One Python iteration and ~10 kernel launches per step.

The flashts ``torch`` backend itself is listed by :mod:`bench.registry` (``flashts-torch``) and serves as
the baseline the GPU kernels must beat.
* ``swa+latte`` / ``swa-only`` (Latte Macchiato only) — the op's two parts as separate flashts ops plus a
  PyTorch mix (the same function), and the sliding window alone (a different function: the floor).
"""
from __future__ import annotations

import functools
import importlib
import inspect

import torch
import torch.nn.functional as F

from .registry import Config, Impl, Prepared, _grad_like, dense_attention_flops_bytes, is_causal, leaf, op_kwargs


def _to_bhtd(x: torch.Tensor, requires_grad: bool) -> torch.Tensor:
    """``[B, T, H, D]`` → contiguous ``[B, H, T, D]`` leaf (a copy made outside the timing)."""
    return x.transpose(1, 2).contiguous().requires_grad_(requires_grad)


def _from_bhtd(o: torch.Tensor) -> torch.Tensor:
    return o.transpose(1, 2)


def _window_covers_all(config: Config) -> str | None:
    """'causal' / 'full' when a sliding window is plain dense attention at every T, else None."""
    if config.op != "sliding_window_attention":
        return None
    left, right = config.p["window"]
    if left == -1 and right == 0:
        return "causal"
    if left == -1 and right == -1:
        return "full"
    return None


class SDPA(Impl):
    name = "sdpa"
    note = "dense attention reference point (different function)"

    def same_function(self, config: Config) -> bool:
        return _window_covers_all(config) is not None

    def _dims(self, config: Config) -> tuple[int, int]:
        return config.D, config.Dv

    def counts(self, case):
        D, Dv = self._dims(case.config)
        return dense_attention_flops_bytes(case, is_causal(case.config), D, Dv)

    def prepare(self, case, inputs, requires_grad):
        c = case.config
        q = inputs["k"] if case.op == "aaren_attention" else inputs["q"]
        qh, kh, vh = (_to_bhtd(x, requires_grad) for x in (q, inputs["k"], inputs["v"]))
        causal = is_causal(c)
        return Prepared(
            fn=lambda: F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal),
            to_bthd=_from_bhtd, leaves=[qh, kh, vh] if requires_grad else [],
            grad_out=_grad_like(case, c.Dv, vh, heads_first=True) if requires_grad else None)


def window_mask(T: int, left: int, right: int, device) -> torch.Tensor:
    """Boolean ``[T, T]``, True where query i may attend key j: i − left ≤ j ≤ i + right (−1 unbounded)."""
    i = torch.arange(T, device=device).unsqueeze(1)
    j = torch.arange(T, device=device).unsqueeze(0)
    allowed = torch.ones(T, T, dtype=torch.bool, device=device)
    if left >= 0:
        allowed &= j >= i - left
    if right >= 0:
        allowed &= j <= i + right
    return allowed


class SDPAMask(Impl):
    name = "sdpa-mask"
    note = "SDPA with a dense boolean window mask"

    def supports(self, config):
        return config.op == "sliding_window_attention"

    def prepare(self, case, inputs, requires_grad):
        c = case.config
        left, right = c.p["window"]
        qh, kh, vh = (_to_bhtd(inputs[n], requires_grad) for n in ("q", "k", "v"))
        mask = window_mask(case.T, left, right, qh.device)
        return Prepared(
            fn=lambda: F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask),
            to_bthd=_from_bhtd, leaves=[qh, kh, vh] if requires_grad else [],
            grad_out=_grad_like(case, c.Dv, vh, heads_first=True) if requires_grad else None)


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention
    import torch._dynamo as dynamo
    # torch.compile's default (automatic dynamic shapes: after a second T the sequence length becomes
    # symbolic, so a sweep compiles ~2 graphs per window/head dim/mode instead of one per T); raise the
    # recompile limit so a long sweep never falls back to eager (which materialises the scores)
    for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                 "accumulated_recompile_limit"):
        if hasattr(dynamo.config, knob):
            setattr(dynamo.config, knob, max(getattr(dynamo.config, knob), 512))
    return torch.compile(flex_attention)


class Flex(Impl):
    name = "flex"
    note = "FlexAttention (torch.compile) with a sliding-window block mask"

    def supports(self, config):
        return config.op == "sliding_window_attention"

    def available(self, device):
        if device.type not in ("cuda", "cpu"):
            return False, f"FlexAttention is benchmarked on GPU and CPU only (got {device.type})"
        # on CPU only when named in --impls: compiling it takes tens of seconds (the quick run and CI skip it)
        self.explicit_only = device.type == "cpu"
        try:
            importlib.import_module("torch.nn.attention.flex_attention")
        except Exception as e:  # pragma: no cover - old torch
            return False, f"torch.nn.attention.flex_attention not importable: {e}"
        return True, ""

    def prepare(self, case, inputs, requires_grad):
        from torch.nn.attention.flex_attention import create_block_mask
        c = case.config
        if requires_grad and inputs["q"].device.type == "cpu":
            raise NotImplementedError("FlexAttention has no CPU backward (forward only on CPU)")
        left, right = c.p["window"]
        T = case.T

        def mask_mod(b, h, q_idx, kv_idx):
            ok = q_idx >= 0  # all-True tensor of the right shape
            if left >= 0:
                ok = ok & (q_idx - kv_idx <= left)
            if right >= 0:
                ok = ok & (kv_idx - q_idx <= right)
            return ok

        qh, kh, vh = (_to_bhtd(inputs[n], requires_grad) for n in ("q", "k", "v"))
        extra = {"_compile": True} if "_compile" in inspect.signature(create_block_mask).parameters else {}
        # built once, outside the timing; _compile avoids materialising T×T index grids at large T
        block_mask = create_block_mask(mask_mod, None, None, T, T, device=qh.device, **extra)
        flex = _compiled_flex()
        return Prepared(
            fn=lambda: flex(qh, kh, vh, block_mask=block_mask),
            to_bthd=_from_bhtd, leaves=[qh, kh, vh] if requires_grad else [],
            grad_out=_grad_like(case, c.Dv, vh, heads_first=True) if requires_grad else None)


_FEATURE = {"elu": lambda x: F.elu(x) + 1, "relu": F.relu, "identity": lambda x: x}


class FLA(Impl):
    name = "fla"
    note = "flash-linear-attention chunk_linear_attn"

    def supports(self, config):
        return config.op == "linear_attention" and bool(config.p.get("causal", True))

    def available(self, device):
        if device.type != "cuda":
            return False, "flash-linear-attention is GPU only"
        try:
            importlib.import_module("fla.ops.linear_attn")
        except Exception as e:
            return False, f"flash-linear-attention not importable ({type(e).__name__}: {e}); pip install flash-linear-attention"
        return True, ""

    def prepare(self, case, inputs, requires_grad):
        from fla.ops.linear_attn import chunk_linear_attn
        kw = op_kwargs(case.config)
        phi = _FEATURE[kw["feature_map"]]
        normalize = kw["normalize"]
        scale = 1.0 if normalize else case.config.D ** -0.5
        extra = {}
        params = inspect.signature(chunk_linear_attn).parameters
        if "head_first" in params:
            extra["head_first"] = False
        # fla >= 0.5 normalises itself (chunk cumsum of φ(k), its own backward): run it the way its users do
        fla_normalizes = "normalize" in params and "head_first" not in params
        q, k, v = (leaf(inputs[n], requires_grad) for n in ("q", "k", "v"))
        eps = 1e-6

        def fn():
            fq, fk = phi(q), phi(k)
            if fla_normalizes:
                return chunk_linear_attn(fq, fk, v, scale=scale, normalize=normalize)[0]
            o = chunk_linear_attn(fq, fk, v, scale=scale, normalize=False, **extra)[0]
            if not normalize:
                return o
            # o_t / (q̃_t · Σ_{s≤t} φ(k_s) + eps), the normaliser in float32 (see the module doc)
            z = torch.cumsum(fk.float(), dim=1)
            den = (fq.float() * z).sum(-1, keepdim=True) * scale + eps
            return (o.float() / den).to(o.dtype)

        return Prepared(fn=fn, leaves=[q, k, v] if requires_grad else [],
                        grad_out=_grad_like(case, case.config.Dv, v) if requires_grad else None)


class Autoformer(Impl):
    name = "autoformer"
    note = "original Autoformer AutoCorrelation code"

    def supports(self, config):
        return config.op == "auto_correlation"

    def available(self, device):
        try:
            mod = importlib.import_module("bench.autoformer_original")
            getattr(mod, "autoformer_auto_correlation")
        except Exception as e:
            return False, f"bench/autoformer_original.py missing or broken ({type(e).__name__}: {e})"
        return True, ""

    def prepare(self, case, inputs, requires_grad):
        from bench.autoformer_original import autoformer_auto_correlation
        kw = op_kwargs(case.config)
        q, k, v = (leaf(inputs[n], requires_grad) for n in ("q", "k", "v"))

        def fn():
            if q.dtype in (torch.float16, torch.bfloat16):
                # torch.fft has no bfloat16 kernels (and half only for powers of two): under AMP, autocast
                # runs the FFTs in float32, so the original code sees float32 here too (casts timed)
                out = autoformer_auto_correlation(q.float(), k.float(), v.float(), factor=kw["factor"],
                                                  mode=kw["mode"])
                return out.to(q.dtype)
            return autoformer_auto_correlation(q, k, v, factor=kw["factor"], mode=kw["mode"])

        return Prepared(
            fn=fn,
            leaves=[q, k, v] if requires_grad else [],
            grad_out=_grad_like(case, case.config.Dv, v) if requires_grad else None)


def prefix_softmax_loop(a: torch.Tensor, p: torch.Tensor | None, v: torch.Tensor) -> torch.Tensor:
    """y [B, T, H, Dv] by the sequential recurrence in a's dtype (float32 from the baseline; float64 in the tests);
    a, p [B, T, H, L] (p None: L = 1, p = 1)."""
    B, T, H, L = a.shape
    vf = v.to(a.dtype)
    m = a.new_full((B, H, L), float("-inf"))
    alpha = a.new_zeros((B, H, L))
    S = a.new_zeros((B, H, L, v.shape[-1]))
    outs = []
    for t in range(T):
        a_t = a[:, t]
        m_new = torch.maximum(m, a_t).detach()
        keep, new = torch.exp(m - m_new), torch.exp(a_t - m_new)  # e^{-inf} = 0 at t = 0
        alpha = alpha * keep + new
        S = S * keep.unsqueeze(-1) + new.unsqueeze(-1) * vf[:, t].unsqueeze(-2)
        mean = S / alpha.unsqueeze(-1)  # [B, H, L, Dv]
        outs.append(mean[:, :, 0] if p is None else (p[:, t].unsqueeze(-1) * mean).sum(-2))
        m = m_new
    return torch.stack(outs, dim=1)


class Loop(Impl):
    name = "loop"
    note = "sequential token-by-token recurrence in plain PyTorch"

    def supports(self, config):
        return config.op == "aaren_attention" or (config.op == "latte_attention" and is_causal(config))

    def prepare(self, case, inputs, requires_grad):
        q, k, v = (leaf(inputs[n], requires_grad) for n in ("q", "k", "v"))
        aaren = case.op == "aaren_attention"
        scale = case.config.D ** -0.5

        def fn():
            if aaren:
                a = scale * torch.einsum("hd,bthd->bth", q.float(), k.float()).unsqueeze(-1)
                y = prefix_softmax_loop(a, None, v)
            else:
                y = prefix_softmax_loop(k.float(), torch.softmax(q.float(), dim=-1), v)
            return y.to(v.dtype)

        return Prepared(fn=fn, leaves=[q, k, v] if requires_grad else [],
                        grad_out=_grad_like(case, case.config.Dv, v) if requires_grad else None)


class Informer(Impl):
    """The original ProbSparse algorithm (``bench/informer_original.py``: the [B, H, L_Q, L_K, E] expansion, the
    sampled-key gather, the dense ProbMask). It draws its samples with ``torch.randint`` from the global CPU
    generator, as the original does: the timed call reseeds that generator (seed 0, a few µs) so that its
    samples are the ones flashts draws from ``op_kwargs``' generator, and the correctness guard applies."""
    name = "informer"
    note = "original Informer ProbAttention algorithm"

    def supports(self, config):
        return config.op == "prob_sparse_attention"

    def prepare(self, case, inputs, requires_grad):
        from bench.informer_original import informer_prob_attention
        kw = op_kwargs(case.config)
        q, k, v = (leaf(inputs[n], requires_grad) for n in ("q", "k", "v"))

        def fn():
            torch.default_generator.manual_seed(0)
            return informer_prob_attention(q, k, v, factor=kw["factor"], causal=kw["causal"])

        return Prepared(fn=fn, leaves=[q, k, v] if requires_grad else [],
                        grad_out=_grad_like(case, case.config.Dv, v) if requires_grad else None)


class ProbSparseWindowPeer(Impl):
    """flashts' sliding-window attention with the work budget of ProbSparse: U + u keys per query (the pairs
    ProbSparse scores per query on average), window (U + u − 1, 0) when causal, else ((U + u) // 2) each side.
    A different function (a reference point, not checked)."""
    name = "swa-peer"
    note = "flashts sliding window, same keys per query as ProbSparse (different function)"

    def supports(self, config):
        return config.op == "prob_sparse_attention"

    def same_function(self, config):
        return False

    def _window(self, case):
        from .registry import prob_sparse_counts
        U, u = prob_sparse_counts(case.T, int(case.config.p.get("factor", 5)))
        w = max(U + u, 1)
        return (w - 1, 0) if is_causal(case.config) else (w // 2, w // 2)

    def counts(self, case):
        from .registry import _attn_pairs_flops, window_pairs
        c = case.config
        left, right = self._window(case)
        f_fwd, f_bwd = _attn_pairs_flops(c.B * c.H, window_pairs(case.T, left, right), c.D, c.Dv)
        base = dense_attention_flops_bytes(case, False, c.D, c.Dv)
        return {"fwd": (f_fwd, base["fwd"][1]), "fwdbwd": (f_fwd + f_bwd, base["fwdbwd"][1])}

    def prepare(self, case, inputs, requires_grad):
        import flashts
        q, k, v = (leaf(inputs[n], requires_grad) for n in ("q", "k", "v"))
        window = self._window(case)
        backend = "auto"
        return Prepared(fn=lambda: flashts.sliding_window_attention(q, k, v, window=window, backend=backend),
                        leaves=[q, k, v] if requires_grad else [],
                        grad_out=_grad_like(case, case.config.Dv, v) if requires_grad else None)


class MacchiatoParts(Impl):
    """Latte Macchiato as its two parts run separately through the public flashts ops (backend "auto":
    Triton on a GPU, torch on the CPU) plus the mix in plain PyTorch: ``sliding_window_attention`` (window
    (left, 0)), ``latte_attention(mix[..., 1:], latent_k, v)`` and y = p(0|t)·A + (1 − p(0|t))·Y — the same
    function as the fused op (checked), what a user would write without it."""
    name = "swa+latte"
    note = "sliding window + Latte as two separate ops + a PyTorch mix"

    def supports(self, config):
        return config.op == "latte_macchiato_attention"

    def prepare(self, case, inputs, requires_grad):
        import flashts
        window = tuple(case.config.p["window"])
        q, k, v, mix, lk = (leaf(inputs[n], requires_grad) for n in ("q", "k", "v", "mix", "latent_k"))

        def fn():
            a = flashts.sliding_window_attention(q, k, v, window=window)
            y = flashts.latte_attention(mix[..., 1:], lk, v)
            p = torch.softmax(mix.float(), dim=-1)
            g = p[..., :1]
            return (g * a.float() + p[..., 1:].sum(-1, keepdim=True) * y.float()).to(v.dtype)

        return Prepared(fn=fn, leaves=[q, k, v, mix, lk] if requires_grad else [],
                        grad_out=_grad_like(case, case.config.Dv, v) if requires_grad else None)


class SlidingWindowOnly(Impl):
    """The local part alone: ``flashts.sliding_window_attention`` with Macchiato's window (backend "auto"). A
    different function (no latent part): the floor the fused op is measured against (issue 16's goal: the fused
    Macchiato within 1.3× of the sliding window alone)."""
    name = "swa-only"
    note = "sliding-window attention alone at the same window (different function)"

    def supports(self, config):
        return config.op == "latte_macchiato_attention"

    def same_function(self, config):
        return False

    def counts(self, case):
        from .registry import _attn_pairs_flops, window_pairs
        c, T = case.config, case.T
        f, b = _attn_pairs_flops(c.B * c.H, window_pairs(T, tuple(c.p["window"])[0], 0), c.D, c.Dv)
        e = torch.empty((), dtype=case.torch_dtype).element_size()
        inp, out = c.B * T * c.H * (2 * c.D + c.Dv) * e, c.B * T * c.H * c.Dv * e
        return {"fwd": (f, inp + out), "fwdbwd": (f + b, 3 * inp + 2 * out)}

    def prepare(self, case, inputs, requires_grad):
        import flashts
        window = tuple(case.config.p["window"])
        q, k, v = (leaf(inputs[n], requires_grad) for n in ("q", "k", "v"))
        return Prepared(fn=lambda: flashts.sliding_window_attention(q, k, v, window=window),
                        leaves=[q, k, v] if requires_grad else [],
                        grad_out=_grad_like(case, case.config.Dv, v) if requires_grad else None)


# ------------------------------------------------------------------------------ CPU peers in plain PyTorch
# What a CPU user already has, written the way its users write it (our own code, no third-party copies).


def fla_chunk_linear_torch(q, k, v, *, feature_map="elu", normalize=True, scale=None, eps=1e-6, chunk=64):
    """flash-linear-attention's pure-PyTorch chunk form of causal linear attention (its ``naive`` reference
    algorithm, re-implemented): chunks of 64 steps, the chunk states K_cᵀV_c as one batched matmul, an exclusive
    cumulative sum of them over the chunks, o = Q S_before + tril(Q Kᵀ) V; the normaliser from a cumsum of φ(k).
    ``[B, T, H, D]`` in and out; computed in the input dtype (float32 on CPU)."""
    phi = _FEATURE[feature_map]
    B, T, H, D = q.shape
    if scale is None:
        scale = 1.0 if normalize else D ** -0.5
    fq, fk = phi(q) * scale, phi(k)
    n = -(-T // chunk)
    pad = n * chunk - T

    def heads(x):   # [B, T, H, X] -> [B, H, n, C, X]
        x = x.transpose(1, 2)
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        return x.reshape(B, H, n, chunk, x.shape[-1])

    Q, K, V = heads(fq), heads(fk), heads(v)
    kv = K.transpose(-1, -2) @ V
    kv = torch.cat([torch.zeros_like(kv[:, :, :1]), kv.cumsum(2)[:, :, :-1]], dim=2)
    mask = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).triu(1)
    o = Q @ kv + (Q @ K.transpose(-1, -2)).masked_fill(mask, 0) @ V
    o = o.reshape(B, H, n * chunk, -1)[:, :, :T].transpose(1, 2)
    if normalize:
        z = fk.cumsum(1)
        o = o / ((fq * z).sum(-1, keepdim=True) + eps)
    return o


class FLATorch(Impl):
    name = "fla-torch"
    note = "flash-linear-attention's pure-PyTorch chunk form (re-implemented; fla is not a dependency)"

    def supports(self, config):
        return config.op == "linear_attention" and bool(config.p.get("causal", True))

    def prepare(self, case, inputs, requires_grad):
        kw = op_kwargs(case.config)
        q, k, v = (leaf(inputs[n], requires_grad) for n in ("q", "k", "v"))

        def fn():
            return fla_chunk_linear_torch(q, k, v, feature_map=kw["feature_map"], normalize=kw["normalize"])
        return Prepared(fn=fn, leaves=[q, k, v] if requires_grad else [],
                        grad_out=_grad_like(case, case.config.Dv, v) if requires_grad else None)


def aaren_textbook(q, k, v, scale=None):
    """The textbook parallel Aaren: s_t = scale·q·k_t, o_t = Σ_{i≤t} e^{s_i} v_i / Σ_{i≤t} e^{s_i} computed as
    cumsum(e^{s−M} v) · e^{M − logcumsumexp(s)} with M the max over the sequence (autograd backward)."""
    scale = k.shape[-1] ** -0.5 if scale is None else scale
    s = scale * (torch.einsum("hd,bthd->bth", q, k) if q.dim() == 2 else torch.einsum("bhd,bthd->bth", q, k))
    M = s.amax(dim=1, keepdim=True).detach()
    lse = torch.logcumsumexp(s, dim=1)
    num = torch.cumsum(torch.exp(s - M).unsqueeze(-1) * v, dim=1)
    return num * torch.exp(M - lse).unsqueeze(-1)


class AarenTextbook(Impl):
    name = "textbook"
    note = "parallel Aaren: logcumsumexp + cumsum of e^{s-max}·v (plain PyTorch, autograd)"

    def supports(self, config):
        return config.op == "aaren_attention"

    def prepare(self, case, inputs, requires_grad):
        q, k, v = (leaf(inputs[n], requires_grad) for n in ("q", "k", "v"))
        return Prepared(fn=lambda: aaren_textbook(q, k, v), leaves=[q, k, v] if requires_grad else [],
                        grad_out=_grad_like(case, case.config.Dv, v) if requires_grad else None)


def baseline_impls() -> list[Impl]:
    return [SDPA(), SDPAMask(), Flex(), FLA(), Autoformer(), Loop(), Informer(), ProbSparseWindowPeer(), MacchiatoParts(),
            SlidingWindowOnly(), FLATorch(), AarenTextbook()]
