"""What the benchmark runs: shape configurations, inputs, FLOP/byte counts, flashts implementations.

A :class:`Config` is one op with fixed batch/head/dim sizes and op options (``params``) plus the sweep
of sequence lengths ``Ts``; a :class:`Case` is a config at one T and one dtype. Three sets of configs:

* ``gpu_configs()`` — the issue's goals: linear attention B=4, H=16, D=Dv ∈ {64, 128}, causal;
  sliding window B·H = 64 (B=4, H=16), D ∈ {64, 128}, windows (511, 0) and (256, 256); auto-correlation
  B=32, H=8, E=D=64, L ∈ {96, 336, 720, 1440, 8192}, modes train and infer; Aaren B=8, H=8, D=64;
  Latte B=8, H=8, L=64 latents, Dv=64, causal and bidirectional. T sweeps 1k … 64k.
* ``cpu_configs()`` — small B/H, float32, T ∈ {256, 1024, 4096} (auto-correlation L ∈ {96 … 1440}):
  the whole default CPU run takes a few minutes on 2 cores.
* ``quick_configs()`` — a tiny smoke configuration (seconds).

FLOPs and bytes (:func:`flops_bytes`). Per case and mode the *minimal* work of the op, so achieved
TFLOP/s and GB/s can be compared with the hardware floor:

* FLOPs count a multiply-add as 2; elementwise operations (exp, max, divide, feature map) count 1 each
  where they are per-token and are otherwise ignored. Backward counts are those of the standard
  hand-written backward (recomputation inside a kernel is the kernel's choice and is not counted).
* Bytes: every input read once and the output written once for ``fwd``; ``fwdbwd`` adds the backward's
  minimum: inputs and dO read once, input gradients written once (so fwdbwd = 3·inputs + 2·output
  bytes). Small statistics (lse, states, delays) are ignored.

The per-op formulas are documented in the ``_flops_<op>`` functions below.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

OPS = ("linear_attention", "sliding_window_attention", "auto_correlation", "aaren_attention", "latte_attention",
       "prob_sparse_attention")
OPS += ("latte_macchiato_attention",)
# inputs an op takes after q, k, v (positional, in this order; made by make_inputs)
EXTRA_INPUTS = {"latte_macchiato_attention": ("mix", "latent_k")}
OP_ALIASES = {
    "linear": "linear_attention", "la": "linear_attention",
    "sliding_window": "sliding_window_attention", "swa": "sliding_window_attention", "window": "sliding_window_attention",
    "autocorr": "auto_correlation", "auto_correlation": "auto_correlation", "ac": "auto_correlation",
    "aaren": "aaren_attention", "latte": "latte_attention",
    "prob_sparse": "prob_sparse_attention", "probsparse": "prob_sparse_attention", "informer": "prob_sparse_attention",
    "macchiato": "latte_macchiato_attention", "latte_macchiato": "latte_macchiato_attention",
}
MODES = ("fwd", "fwdbwd")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "fp16": "float16", "half": "float16", "f16": "float16",
                 "bf16": "bfloat16", "fp64": "float64", "f64": "float64", "double": "float64"}

GPU_TS = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
CPU_TS = (256, 1024, 4096)
AUTOCORR_GPU_LS = (96, 336, 720, 1440, 8192)
AUTOCORR_CPU_LS = (96, 336, 720, 1440)
PROB_SPARSE_GPU_LS = (96, 336, 720, 1440, 2880, 8192)  # Informer's horizons, and a long one
PROB_SPARSE_CPU_LS = (96, 336, 720, 1440)


def canonical_op(name: str) -> str:
    n = name.strip().lower()
    if n in OPS:
        return n
    if n in OP_ALIASES:
        return OP_ALIASES[n]
    raise ValueError(f"unknown op {name!r}; expected one of {OPS} or an alias {sorted(OP_ALIASES)}")


def canonical_dtype(name: str) -> str:
    n = name.strip().lower().replace("torch.", "")
    n = DTYPE_ALIASES.get(n, n)
    if n not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    return n


def _freeze(params: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items()))


@dataclass(frozen=True)
class Config:
    """One op at fixed B/H/D/Dv and options, swept over ``Ts``.

    ``D`` is the q/k last dimension (E for auto-correlation, the number of latents L for Latte),
    ``Dv`` that of v. ``params`` holds the op options as sorted (key, value) pairs (hashable).
    """
    op: str
    B: int
    H: int
    D: int
    Dv: int
    params: tuple = ()
    Ts: tuple = ()

    @staticmethod
    def make(op: str, B: int, H: int, D: int, Dv: int, Ts, **params) -> "Config":
        return Config(op, B, H, D, Dv, _freeze(params), tuple(Ts))

    @property
    def p(self) -> dict:
        """Options as a plain dict (tuples kept: ``window`` is ``(left, right)``)."""
        return dict(self.params)

    def params_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.params}

    def label(self) -> str:
        parts = [f"{k}={tuple(v) if isinstance(v, tuple) else v}" for k, v in self.params]
        dims = f"B={self.B} H={self.H} D={self.D} Dv={self.Dv}"
        return ", ".join(parts + [dims]) if parts else dims


@dataclass(frozen=True)
class Case:
    config: Config
    T: int
    dtype: str  # key of DTYPES

    @property
    def op(self) -> str:
        return self.config.op

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def label(self) -> str:
        return f"{short_op(self.op)} T={self.T} {self.dtype}"


def short_op(op: str) -> str:
    return {"linear_attention": "linear", "sliding_window_attention": "swa", "auto_correlation": "autocorr",
            "aaren_attention": "aaren", "latte_attention": "latte", "prob_sparse_attention": "probsparse",
            "latte_macchiato_attention": "macchiato"}[op]


# ----------------------------------------------------------------------------------------- configurations

def gpu_configs() -> list[Config]:
    out = []
    for D in (64, 128):
        out.append(Config.make("linear_attention", 4, 16, D, D, GPU_TS, causal=True, feature_map="elu", normalize=True))
    for D in (64, 128):
        for window in ((511, 0), (256, 256)):
            out.append(Config.make("sliding_window_attention", 4, 16, D, D, GPU_TS, window=window))
    for mode in ("train", "infer"):
        out.append(Config.make("auto_correlation", 32, 8, 64, 64, AUTOCORR_GPU_LS, factor=1.0, mode=mode))
    out.append(Config.make("aaren_attention", 8, 8, 64, 64, GPU_TS))
    for causal in (True, False):
        out.append(Config.make("latte_attention", 8, 8, 64, 64, GPU_TS, causal=causal, latents=64))
    for causal in (False, True):  # Informer's shape: d_model 512, 8 heads, c = 5
        out.append(Config.make("prob_sparse_attention", 32, 8, 64, 64, PROB_SPARSE_GPU_LS, factor=5, causal=causal))
    # Latte Macchiato at the sliding-window goal shape and window (compare with swa-only / swa+latte rows)
    out.append(Config.make("latte_macchiato_attention", 4, 16, 64, 64, GPU_TS, window=(511, 0), latents=16))
    return out


def cpu_configs() -> list[Config]:
    return [
        Config.make("linear_attention", 1, 4, 64, 64, CPU_TS, causal=True, feature_map="elu", normalize=True),
        Config.make("sliding_window_attention", 1, 4, 64, 64, CPU_TS, window=(127, 0)),
        Config.make("sliding_window_attention", 1, 4, 64, 64, CPU_TS, window=(64, 64)),
        # the shape of issue 5's goal (B=32, H=8, E=D=64), whose CPU clause is "faster than the original at every L"
        Config.make("auto_correlation", 32, 8, 64, 64, AUTOCORR_CPU_LS, factor=1.0, mode="train"),
        Config.make("auto_correlation", 32, 8, 64, 64, AUTOCORR_CPU_LS, factor=1.0, mode="infer"),
        Config.make("aaren_attention", 1, 4, 64, 64, CPU_TS),
        Config.make("latte_attention", 1, 4, 16, 64, CPU_TS, causal=True, latents=16),
        Config.make("latte_attention", 1, 4, 16, 64, CPU_TS, causal=False, latents=16),
        Config.make("prob_sparse_attention", 2, 8, 64, 64, PROB_SPARSE_CPU_LS, factor=5, causal=False),
        Config.make("prob_sparse_attention", 2, 8, 64, 64, PROB_SPARSE_CPU_LS, factor=5, causal=True),
        Config.make("latte_macchiato_attention", 1, 4, 64, 64, CPU_TS, window=(127, 0), latents=16),
    ]


def quick_configs() -> list[Config]:
    Ts = (64, 128)
    return [
        Config.make("linear_attention", 1, 2, 16, 16, Ts, causal=True, feature_map="elu", normalize=True),
        Config.make("sliding_window_attention", 1, 2, 16, 16, Ts, window=(15, 0)),
        Config.make("auto_correlation", 2, 2, 8, 8, (48, 96), factor=1.0, mode="train"),
        Config.make("aaren_attention", 1, 2, 16, 16, Ts),
        Config.make("latte_attention", 1, 2, 8, 16, Ts, causal=True, latents=8),
        Config.make("prob_sparse_attention", 1, 2, 16, 16, Ts, factor=5, causal=True),
        Config.make("latte_macchiato_attention", 1, 2, 16, 16, Ts, window=(15, 0), latents=4),
    ]


def default_configs(device: str, quick: bool = False) -> list[Config]:
    if quick:
        return quick_configs()
    return gpu_configs() if device == "cuda" else cpu_configs()


def select(configs: list[Config], ops=None, Ts=None) -> list[Config]:
    """Keep the configs of ``ops`` (all when None) and replace their T sweep by ``Ts`` when given."""
    keep = [c for c in configs if ops is None or c.op in ops]
    if Ts:
        keep = [replace(c, Ts=tuple(Ts)) for c in keep]
    return keep


# ------------------------------------------------------------------------------------------------ inputs

def make_inputs(case: Case, device: torch.device, seed: int = 0) -> dict:
    """Random inputs in the flashts layout, already in the case's dtype: ``{"q", "k", "v"}``.

    q/k/v ``[B, T, H, D|Dv]``; Aaren's q is one learned query per head ``[H, D]``; Latte's q/k are latent
    logits ``[B, T, H, L]``.
    """
    c = case.config
    B, T, H, D, Dv = c.B, case.T, c.H, c.D, c.Dv
    g = torch.Generator(device=device).manual_seed(seed)
    dt = case.torch_dtype

    def rnd(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=torch.float32).to(dt)

    if case.op == "aaren_attention":
        return {"q": rnd(H, D), "k": rnd(B, T, H, D), "v": rnd(B, T, H, Dv)}
    if case.op == "latte_macchiato_attention":  # + mixing logits [.., L+1] and latent key logits [.., L]
        L = c.p["latents"]
        return {"q": rnd(B, T, H, D), "k": rnd(B, T, H, D), "v": rnd(B, T, H, Dv), "mix": rnd(B, T, H, L + 1),
                "latent_k": rnd(B, T, H, L)}
    return {"q": rnd(B, T, H, D), "k": rnd(B, T, H, D), "v": rnd(B, T, H, Dv)}


def op_kwargs(config: Config) -> dict:
    """Keyword arguments of the public flashts function for this config (without ``backend``)."""
    p = config.p
    if config.op == "linear_attention":
        return {"causal": p.get("causal", True), "feature_map": p.get("feature_map", "elu"),
                "normalize": p.get("normalize", True)}
    if config.op == "sliding_window_attention":
        return {"window": tuple(p["window"])}
    if config.op == "auto_correlation":
        return {"factor": p.get("factor", 1.0), "mode": p.get("mode", "train")}
    if config.op == "latte_attention":
        return {"causal": p.get("causal", True)}
    if config.op == "prob_sparse_attention":
        # a fresh generator per call of op_kwargs: the guard's first call and the oracle draw the same samples
        return {"factor": p.get("factor", 5), "causal": p.get("causal", False),
                "generator": torch.Generator().manual_seed(0)}
    if config.op == "latte_macchiato_attention":
        return {"window": tuple(p["window"])}
    return {}


def is_causal(config: Config) -> bool:
    """Whether output t depends only on inputs ≤ t (used for the dense reference point and prefix checks)."""
    p = config.p
    if config.op in ("linear_attention", "latte_attention"):
        return bool(p.get("causal", True))
    if config.op == "sliding_window_attention":
        return tuple(p["window"])[1] == 0
    if config.op in ("aaren_attention", "latte_macchiato_attention"):
        return True
    if config.op == "prob_sparse_attention":
        return bool(p.get("causal", False))
    return False


# ------------------------------------------------------------------------------------- FLOPs and bytes

def _elt(dtype: str) -> int:
    return torch.empty((), dtype=DTYPES[dtype]).element_size()


def window_pairs(T: int, left: int, right: int) -> int:
    """Number of allowed (query i, key j) pairs: Σ_i |[max(0, i − left), min(T − 1, i + right)]|."""
    left = T if left < 0 else min(left, T)
    right = T if right < 0 else min(right, T)
    # Σ_i (min(T-1, i+right) - max(0, i-left) + 1) = T + Σ_i min(right, T-1-i) + Σ_i min(left, i)
    def side(w):  # Σ_{i=0}^{T-1} min(w, i)
        w = min(w, T - 1)
        return w * (w + 1) // 2 + w * (T - 1 - w)
    return T + side(right) + side(left)


def _attn_pairs_flops(BH: int, pairs: int, D: int, Dv: int) -> tuple[int, int]:
    """Softmax attention over ``pairs`` (i, j) per head: fwd S = QKᵀ (2D) and PV (2Dv) per pair;
    bwd (FlashAttention-2): recompute S (2D), dV (2Dv), dP = dO Vᵀ (2Dv), dQ (2D), dK (2D) per pair."""
    return BH * pairs * (2 * D + 2 * Dv), BH * pairs * (6 * D + 4 * Dv)


def _flops_linear_attention(c: Config, T: int) -> tuple[int, int]:
    """Recurrent form per (b, h, t): S += φ(k)vᵀ (2·D·Dv), o = q̃ᵀS (2·D·Dv), z += φ(k) (D), q̃·z (2D),
    divide (Dv), feature maps (2D) → fwd 4·D·Dv + 5D + Dv. Backward: dS reverse scan (2·D·Dv), dq (2·D·Dv),
    dk (2·D·Dv), dv (2·D·Dv) plus the normaliser terms (≈ 6D + 2Dv) → 8·D·Dv + 6D + 2Dv.
    (A chunked kernel adds an intra-chunk C×C product; that is its choice, not the op's floor.)"""
    D, Dv, n = c.D, c.Dv, c.B * c.H * T
    return n * (4 * D * Dv + 5 * D + Dv), n * (8 * D * Dv + 6 * D + 2 * Dv)


def _flops_sliding_window_attention(c: Config, T: int) -> tuple[int, int]:
    """Softmax attention over the exact number of allowed pairs (:func:`window_pairs`)."""
    left, right = c.p["window"]
    return _attn_pairs_flops(c.B * c.H, window_pairs(T, left, right), c.D, c.Dv)


def _rfft_flops(L: int) -> float:
    """A real FFT of length L: ≈ 2.5·L·log2(L) (half the 5·N·log2 N of a complex one)."""
    return 2.5 * L * math.log2(max(L, 2))


def _flops_auto_correlation(c: Config, T: int) -> tuple[int, int]:
    """Per (b, h, e) channel: rfft(q), rfft(k), irfft(product) (3 transforms) + complex product (6 per
    bin) + the mean over (h, e) (1 per element); aggregation: K weighted shifted adds per output element
    (2·K). Backward: dq, dk each one rfft (recomputed spectra) + one irfft + a complex product (4
    transforms), dv scatter (2·K per element), dweights (2·K per element)."""
    L, K = T, min(T, max(1, int(c.p.get("factor", 1.0) * math.log(T))))
    ch = c.B * c.H * c.D
    out_el = c.B * T * c.H * c.Dv
    fwd = ch * (3 * _rfft_flops(L) + 6 * (L // 2 + 1) + L) + 2 * K * out_el
    bwd = ch * (4 * _rfft_flops(L) + 12 * (L // 2 + 1)) + 4 * K * out_el
    return int(fwd), int(bwd)


def _flops_aaren_attention(c: Config, T: int) -> tuple[int, int]:
    """Per (b, h, t): s = q·k (2D), max/exp/rescale (≈6), w = w·α + e^{s−m}·v (3Dv), o = w/u (Dv)
    → fwd 2D + 4Dv + 6; backward ≈ twice that (dk, dv and the reverse scan of the normalised weights)."""
    D, Dv, n = c.D, c.Dv, c.B * c.H * T
    return n * (2 * D + 4 * Dv + 6), n * (4 * D + 8 * Dv + 12)


def _flops_latte_attention(c: Config, T: int) -> tuple[int, int]:
    """Per (b, h, t) with L latents: softmax of q over l (≈4L); per latent exp/max/rescale (≈4), the
    per-latent running mean S = S·α + e^{k−m}v (3Dv, causal) or the one-pass weighted sum (2Dv, not
    causal), and y = Σ_l p(l|t)·S_l/α_l (2Dv) → fwd L·(5Dv + 8) causal, L·(4Dv + 8) bidirectional;
    backward ≈ twice the forward."""
    L, Dv, n = c.D, c.Dv, c.B * c.H * T
    per = L * ((5 if c.p.get("causal", True) else 4) * Dv + 8)
    return n * per, 2 * n * per


def prob_sparse_counts(L: int, factor: int) -> tuple[int, int]:
    """(U, u) of SPEC §6 (U = 0 makes u = 0)."""
    U = min(L, factor * math.ceil(math.log(L)))
    u = min(L, factor * math.ceil(math.log(L)))
    return U, (u if U > 0 else 0)


def _flops_prob_sparse_attention(c: Config, T: int) -> tuple[int, int]:
    """Per (b, h): sampled scores T·U·2D (+2 per sample for max and sum); softmax attention of the u active
    rows over T keys (T/2 on average when causal: rows are drawn from all positions) at the FlashAttention
    per-pair counts; the lazy rows' mean / running sum T·Dv. Backward: the active pairs' FlashAttention-2
    counts plus T·Dv for the lazy rows' dV (the sampling has no gradient)."""
    U, u = prob_sparse_counts(T, int(c.p.get("factor", 5)))
    pairs = u * T // 2 if c.p.get("causal", False) else u * T
    att_f, att_b = _attn_pairs_flops(c.B * c.H, pairs, c.D, c.Dv)
    n = c.B * c.H * T
    return n * U * (2 * c.D + 2) + att_f + n * c.Dv, att_b + n * c.Dv


def _flops_latte_macchiato_attention(c: Config, T: int) -> tuple[int, int]:
    """The causal sliding window over its allowed pairs (:func:`_attn_pairs_flops`) plus causal Latte with
    L latents (:func:`_flops_latte_attention`) plus the mix (≈ 4Dv + 2(L+1) per token; backward twice)."""
    left = tuple(c.p["window"])[0]
    L = c.p["latents"]
    w_f, w_b = _attn_pairs_flops(c.B * c.H, window_pairs(T, left, 0), c.D, c.Dv)
    n = c.B * c.H * T
    lat = L * (5 * c.Dv + 8)
    mix = 4 * c.Dv + 2 * (L + 1)
    return w_f + n * (lat + mix), w_b + 2 * n * (lat + mix)


_FLOPS = {
    "linear_attention": _flops_linear_attention,
    "sliding_window_attention": _flops_sliding_window_attention,
    "auto_correlation": _flops_auto_correlation,
    "aaren_attention": _flops_aaren_attention,
    "latte_attention": _flops_latte_attention,
    "prob_sparse_attention": _flops_prob_sparse_attention,
    "latte_macchiato_attention": _flops_latte_macchiato_attention,
}


def _io_bytes(case: Case) -> tuple[int, int]:
    """(bytes of all inputs, bytes of the output) in the case's dtype."""
    c, T, e = case.config, case.T, _elt(case.dtype)
    if case.op == "aaren_attention":
        inp = c.H * c.D + c.B * T * c.H * (c.D + c.Dv)
    elif case.op == "latte_macchiato_attention":
        inp = c.B * T * c.H * (2 * c.D + c.Dv + 2 * c.p["latents"] + 1)
    else:
        inp = c.B * T * c.H * (2 * c.D + c.Dv)
    return inp * e, c.B * T * c.H * c.Dv * e


def flops_bytes(case: Case) -> dict:
    """``{"fwd": (flops, bytes), "fwdbwd": (flops, bytes)}``: the minimal work of the case (see module doc)."""
    f_fwd, f_bwd = _FLOPS[case.op](case.config, case.T)
    inp, out = _io_bytes(case)
    return {"fwd": (f_fwd, inp + out), "fwdbwd": (f_fwd + f_bwd, 3 * inp + 2 * out)}


def dense_attention_flops_bytes(case: Case, causal: bool, D: int, Dv: int) -> dict:
    """Counts for dense softmax attention at the case's B, H, T (the SDPA reference point):
    T² pairs (T(T+1)/2 causal) per head; bytes: q, k, v, o in the case's dtype."""
    c, T = case.config, case.T
    pairs = T * (T + 1) // 2 if causal else T * T
    f_fwd, f_bwd = _attn_pairs_flops(c.B * c.H, pairs, D, Dv)
    e = _elt(case.dtype)
    inp, out = c.B * T * c.H * (2 * D + Dv) * e, c.B * T * c.H * Dv * e
    return {"fwd": (f_fwd, inp + out), "fwdbwd": (f_fwd + f_bwd, 3 * inp + 2 * out)}


# ------------------------------------------------------------------------------------- implementations

def _identity(x):
    return x


@dataclass
class Prepared:
    """An implementation bound to one case's inputs (everything built outside the timing).

    ``fn()`` runs the forward and returns the output in the implementation's own layout; ``to_bthd``
    turns that output into the flashts layout ``[B, T, H, Dv]`` for the correctness guard; ``leaves``
    are the tensors that require grad (fwdbwd); ``grad_out`` the cotangent used for backward.
    """
    fn: object
    to_bthd: object = _identity
    leaves: list = field(default_factory=list)
    grad_out: object = None


class Impl:
    """Base class of an implementation (a flashts backend or a baseline).

    * ``name``: the string in the rows and on the command line.
    * ``kind``: ``"flashts"`` or ``"baseline"``; ``gpu_kernel``: a flashts GPU backend (triton/cuda).
    * ``supports(config)``: can compute this config (op and options).
    * ``available(device)``: ``(ok, reason)`` — importable and usable on this device.
    * ``same_function(config)``: computes exactly the op (then the correctness guard applies); False for
      reference points such as dense SDPA next to a linear-time op.
    * ``counts(case)``: FLOPs/bytes of what it computes; the case's own counts by default.
    * ``prepare(case, inputs, requires_grad)`` → :class:`Prepared`.
    """
    name = "?"
    kind = "baseline"
    gpu_kernel = False
    explicit_only = False  # only run when named in --impls
    note = None

    def supports(self, config: Config) -> bool:
        return True

    def available(self, device: torch.device) -> tuple[bool, str]:
        return True, ""

    def same_function(self, config: Config) -> bool:
        return True

    def counts(self, case: Case) -> dict:
        return flops_bytes(case)

    def prepare(self, case: Case, inputs: dict, requires_grad: bool) -> Prepared:
        raise NotImplementedError


def leaf(x: torch.Tensor, requires_grad: bool) -> torch.Tensor:
    """A leaf sharing ``x``'s storage (no copy), requiring grad or not."""
    return x.detach().requires_grad_(requires_grad)


class FlashtsImpl(Impl):
    """A flashts backend through the public function: ``flashts.<op>(q, k, v, **options, backend=...)``."""
    kind = "flashts"

    def __init__(self, backend: str):
        self.backend = backend
        self.name = f"flashts-{backend}"
        self.gpu_kernel = backend in ("triton", "cuda")

    def supports(self, config: Config) -> bool:
        from flashts import _backend
        return self.backend in _backend.implemented(config.op)

    def available(self, device: torch.device) -> tuple[bool, str]:
        from flashts import _backend
        if not _backend.available(self.backend, device):
            return False, f"backend {self.backend!r} not available on {device.type}"
        if device.type == "cpu" and self.gpu_kernel:
            # triton on CPU only runs under TRITON_INTERPRET=1: far too slow to be timed by default
            self.explicit_only = True
        return True, ""

    def prepare(self, case: Case, inputs: dict, requires_grad: bool) -> Prepared:
        import flashts
        fn = getattr(flashts, case.op)
        kw = op_kwargs(case.config)
        q, k, v = (leaf(inputs[n], requires_grad) for n in ("q", "k", "v"))
        extra = [leaf(inputs[n], requires_grad) for n in EXTRA_INPUTS.get(case.op, ())]
        backend = self.backend
        return Prepared(fn=lambda: fn(q, k, v, *extra, **kw, backend=backend),
                        leaves=[q, k, v] + extra if requires_grad else [],
                        grad_out=_grad_like(case, case.config.Dv, inputs["v"]) if requires_grad else None)


def _grad_like(case: Case, Dv: int, ref: torch.Tensor, heads_first: bool = False) -> torch.Tensor:
    c = case.config
    shape = (c.B, c.H, case.T, Dv) if heads_first else (c.B, case.T, c.H, Dv)
    g = torch.Generator(device=ref.device).manual_seed(1)
    return torch.randn(*shape, generator=g, device=ref.device, dtype=torch.float32).to(ref.dtype)


def flashts_impls() -> list[Impl]:
    return [FlashtsImpl(b) for b in ("torch", "triton", "cuda")]


def all_impls() -> list[Impl]:
    from . import baselines
    return flashts_impls() + baselines.baseline_impls()


IMPL_ALIASES = {"torch": "flashts-torch", "triton": "flashts-triton", "cuda": "flashts-cuda",
                "flex_attention": "flex", "flexattention": "flex", "sdpa-window-mask": "sdpa-mask",
                "sdpa_mask": "sdpa-mask", "autoformer-original": "autoformer", "flash-linear-attention": "fla"}


def canonical_impl(name: str) -> str:
    n = name.strip().lower()
    return IMPL_ALIASES.get(n, n)
