"""Every argument check of the public API, written once.

Each ``check_<op>`` runs before any backend is chosen or any kernel launched,
raises ``ValueError`` (shapes, ranks, sizes, values, devices) or ``TypeError``
(non-tensors, non-floating dtypes) with a message naming the argument, what was
expected and what came, and returns the derived sizes the op needs.
"""
from __future__ import annotations

import math
import numbers

import torch

FEATURE_MAPS = ("elu", "relu", "identity")
AUTOCORR_MODES = ("train", "infer")
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class Checked:
    """The sizes and normalised options a check derived (a plain object so torch.compile can trace it)."""

    def __init__(self, **fields):
        for name, value in fields.items():
            setattr(self, name, value)


def _compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - torch < 2.3
        return False


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def tensor(name: str, x, ranks: tuple[int, ...], dims: str) -> torch.Tensor:
    """``x`` must be a floating tensor of one of ``ranks`` (``dims`` names the layout)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor {dims}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating dtype (float32, float16, bfloat16, float64), got {x.dtype}")
    if x.dim() not in ranks:
        want = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(f"{name}: expected a {want} tensor {dims}, got shape {_shape(x)}")
    return x


def same(what: str, names: tuple[str, ...], values: tuple[int, ...]) -> None:
    # pairwise ``!=`` rather than a set: hashing symbolic sizes under torch.compile(dynamic=True) would
    # specialise every shape (one graph per T); comparisons become symbolic guards (s0 == s1) instead
    first = values[0]
    if any(v != first for v in values[1:]):
        got = ", ".join(f"{n}={v}" for n, v in zip(names, values))
        raise ValueError(f"{what} must match: got {got}")


def positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name}: expected at least 1, got {value}")


def devices(**tensors) -> torch.device:
    present = {n: t for n, t in tensors.items() if t is not None}
    devs = {n: t.device for n, t in present.items()}
    first = next(iter(devs.values()))
    if any(d != first for d in devs.values()):
        got = ", ".join(f"{n} on {d}" for n, d in devs.items())
        raise ValueError(f"all tensors must be on one device: got {got}")
    return first


def dtypes(**tensors) -> torch.dtype:
    dts = {n: t.dtype for n, t in tensors.items()}
    first = next(iter(dts.values()))
    if any(d != first for d in dts.values()):
        got = ", ".join(f"{n}={d}" for n, d in dts.items())
        raise TypeError(f"q, k, v must share one floating dtype: got {got}")
    return first


def flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected True or False, got {value!r}")
    return value


def real(name: str, value, *, allow_none=False, positive_only=False, nonneg=False):
    if value is None and allow_none:
        return None
    symbolic = isinstance(value, (torch.SymFloat, torch.SymInt))
    if isinstance(value, bool) or not (symbolic or isinstance(value, numbers.Real)):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if _compiling() or symbolic:
        # torch.compile(dynamic=True) may trace a float as a symbol: math.isfinite/float() cannot take it, but
        # comparisons can (they become guards, so one graph serves every value of T)
        if value != value or value == math.inf or value == -math.inf:
            raise ValueError(f"{name}: expected a finite number, got {value!r}")
    else:
        if not math.isfinite(float(value)):
            raise ValueError(f"{name}: expected a finite number, got {value!r}")
        value = float(value)
    if positive_only and value <= 0:
        raise ValueError(f"{name}: expected a number > 0, got {value!r}")
    if nonneg and value < 0:
        raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
    return value


def choice(name: str, value, options: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name}: expected one of {options}, got {value!r}")
    return value


def cu_seqlens(cu, B: int, T: int, device: torch.device) -> int:
    """Validate packed-sequence offsets; return the number of sequences N (or B when ``cu`` is None)."""
    if cu is None:
        return B
    if not isinstance(cu, torch.Tensor):
        raise ValueError(f"cu_seqlens: expected an int32 tensor [N+1], got {type(cu).__name__}")
    if cu.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cu_seqlens: expected dtype int32 (or int64), got {cu.dtype}")
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(f"cu_seqlens: expected a 1-D tensor [N+1] with N >= 1, got shape {_shape(cu)}")
    if cu.device != device:
        raise ValueError(f"cu_seqlens: expected it on {device} like q, got {cu.device}")
    if B != 1:
        raise ValueError(f"cu_seqlens: packed sequences need batch size 1, got B={B}")
    if not _compiling() and cu.device.type != "meta":
        # reading values syncs the device; under torch.compile the custom ops check them when they run
        # (flashts.ops._common.packed_offsets), and on a GPU they launch on a sanitised copy either way
        cu_seqlens_values(cu.tolist(), T)
    return cu.numel() - 1


def cu_seqlens_values(vals: list, T: int) -> None:
    """The value checks of packed offsets (``vals`` = ``cu_seqlens.tolist()``), shared by eager and compiled calls."""
    if vals[0] != 0:
        raise ValueError(f"cu_seqlens: expected cu_seqlens[0] == 0, got {vals[0]}")
    if any(b < a for a, b in zip(vals, vals[1:])):
        raise ValueError(f"cu_seqlens: expected non-decreasing offsets, got {vals}")
    if vals[-1] != T:
        raise ValueError(f"cu_seqlens: expected cu_seqlens[-1] == T == {T}, got {vals[-1]}")


def state(name: str, state, n_parts: int, shapes: tuple[tuple[int, ...], ...], labels: tuple[str, ...],
          device: torch.device) -> tuple[torch.Tensor, ...]:
    """An ``initial_state`` tuple: ``n_parts`` floating tensors of the given shapes on ``device``."""
    if not isinstance(state, (tuple, list)) or len(state) != n_parts:
        want = "(" + ", ".join(labels) + ")"
        raise ValueError(f"{name}: expected a tuple {want}, got {type(state).__name__}"
                         + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else ""))
    out = []
    for part, shape, label in zip(state, shapes, labels):
        pname = f"{name}.{label.split(' ')[0]}"
        tensor(pname, part, (part.dim(),) if isinstance(part, torch.Tensor) else (len(shape),), label)
        if tuple(part.shape) != tuple(shape):
            raise ValueError(f"{pname}: expected shape {list(shape)} ({label}), got {_shape(part)}")
        if part.device != device:
            raise ValueError(f"{pname}: expected it on {device} like q, got {part.device}")
        out.append(part)
    return tuple(out)


def backend_dtype(op: str, backend: str, dtype: torch.dtype) -> None:
    """GPU backends take float32/float16/bfloat16; float64 only on the torch backend."""
    if backend != "torch" and dtype not in KERNEL_DTYPES:
        raise TypeError(f"{op}: backend {backend!r} takes float32, float16 or bfloat16 inputs, got {dtype}; "
                        "use backend='torch' for float64")


# --------------------------------------------------------------------------- ops

def check_linear(q, k, v, causal, feature_map, normalize, scale, eps, initial_state, output_final_state, cu):
    tensor("q", q, (4,), "[B, T, H, D]")
    tensor("k", k, (4,), "[B, T, Hk, D]")
    tensor("v", v, (4,), "[B, T, Hk, Dv]")
    dev = devices(q=q, k=k, v=v)
    dtypes(q=q, k=k, v=v)
    B, T, H, D = q.shape
    Hk, Dv = k.shape[2], v.shape[3]
    same("batch sizes of q, k, v", ("q", "k", "v"), (B, k.shape[0], v.shape[0]))
    same("time lengths of q, k, v", ("q", "k", "v"), (T, k.shape[1], v.shape[1]))
    same("head dims of q and k", ("q", "k"), (D, k.shape[3]))
    same("kv heads of k and v", ("k", "v"), (Hk, v.shape[2]))
    for n, s in (("H", H), ("D", D), ("Dv", Dv), ("Hk", Hk)):
        positive(n, s)
    if H % Hk:
        raise ValueError(f"k, v: query heads H={H} must be a multiple of kv heads Hk={Hk}")
    flag("causal", causal)
    choice("feature_map", feature_map, FEATURE_MAPS)
    flag("normalize", normalize)
    scale = real("scale", scale, allow_none=True)
    if scale is None:
        scale = 1.0 if normalize else D ** -0.5
    eps = real("eps", eps, nonneg=True)
    flag("output_final_state", output_final_state)
    N = cu_seqlens(cu, B, T, dev)
    if initial_state is not None:
        if not causal:
            raise ValueError("initial_state: only supported with causal=True")
        initial_state = state("initial_state", initial_state, 2, ((N, H, D, Dv), (N, H, D)),
                              ("S [N, H, D, Dv]", "z [N, H, D]"), dev)
    return Checked(B=B, T=T, H=H, Hk=Hk, D=D, Dv=Dv, N=N, scale=scale, eps=eps,
                           initial_state=initial_state, device=dev)


def check_window(window) -> tuple[int, int]:
    if (not isinstance(window, (tuple, list)) or len(window) != 2
            or any(isinstance(w, bool) or not isinstance(w, numbers.Integral) for w in window)):
        raise ValueError(f"window: expected a pair of ints (left, right), each >= -1, got {window!r}")
    left, right = int(window[0]), int(window[1])
    if left < -1 or right < -1:
        raise ValueError(f"window: expected (left, right) with each >= -1 (-1 = unbounded), got {window!r}")
    return left, right


def check_sliding_window(q, k, v, window, scale, cu, return_lse):
    tensor("q", q, (4,), "[B, T, H, D]")
    tensor("k", k, (4,), "[B, T, Hk, D]")
    tensor("v", v, (4,), "[B, T, Hk, Dv]")
    dev = devices(q=q, k=k, v=v)
    dtypes(q=q, k=k, v=v)
    B, T, H, D = q.shape
    Hk, Dv = k.shape[2], v.shape[3]
    same("batch sizes of q, k, v", ("q", "k", "v"), (B, k.shape[0], v.shape[0]))
    same("time lengths of q, k, v (self-attention)", ("q", "k", "v"), (T, k.shape[1], v.shape[1]))
    same("head dims of q and k", ("q", "k"), (D, k.shape[3]))
    same("kv heads of k and v", ("k", "v"), (Hk, v.shape[2]))
    for n, s in (("H", H), ("D", D), ("Dv", Dv), ("Hk", Hk)):
        positive(n, s)
    if H % Hk:
        raise ValueError(f"k, v: query heads H={H} must be a multiple of kv heads Hk={Hk}")
    left, right = check_window(window)
    scale = real("scale", scale, allow_none=True)
    if scale is None:
        scale = D ** -0.5
    flag("return_lse", return_lse)
    N = cu_seqlens(cu, B, T, dev)
    return Checked(B=B, T=T, H=H, Hk=Hk, D=D, Dv=Dv, N=N, left=left, right=right, scale=scale, device=dev)


def autocorr_topk(L: int, factor: float) -> int:
    """K = min(L, max(1, int(factor * ln L))) delays (SPEC §3 step 4); 0 for L = 0."""
    if L == 0:
        return 0
    return min(L, max(1, int(factor * math.log(L))))


def check_auto_correlation(q, k, v, factor, mode, return_delays):
    tensor("q", q, (4,), "[B, L, H, E]")
    tensor("k", k, (4,), "[B, S, H, E]")
    tensor("v", v, (4,), "[B, S, H, D]")
    dev = devices(q=q, k=k, v=v)
    dtypes(q=q, k=k, v=v)
    B, L, H, E = q.shape
    S, D = k.shape[1], v.shape[3]
    same("batch sizes of q, k, v", ("q", "k", "v"), (B, k.shape[0], v.shape[0]))
    same("heads of q, k, v", ("q", "k", "v"), (H, k.shape[2], v.shape[2]))
    same("channels of q and k", ("q", "k"), (E, k.shape[3]))
    same("time lengths of k and v", ("k", "v"), (S, v.shape[1]))
    for n, s in (("H", H), ("E", E), ("D", D)):
        positive(n, s)
    if L != 0:  # L = 0 (and B = 0) give empty results; keys are needed for a non-empty query
        positive("S", S)
    factor = real("factor", factor, positive_only=True)
    choice("mode", mode, AUTOCORR_MODES)
    flag("return_delays", return_delays)
    # K is derived from L and factor where the op runs (flashts.ops.auto_correlation): int(factor·ln L) of a
    # symbolic L would specialise the graph to every L under torch.compile(dynamic=True)
    return Checked(B=B, L=L, S=S, H=H, E=E, D=D, factor=factor, device=dev)


def check_aaren(q, k, v, scale, initial_state, output_final_state, cu):
    tensor("q", q, (2, 3), "[H, D] or [B, H, D]")
    tensor("k", k, (4,), "[B, T, H, D]")
    tensor("v", v, (4,), "[B, T, H, Dv]")
    dev = devices(q=q, k=k, v=v)
    dtypes(q=q, k=k, v=v)
    B, T, H, D = k.shape
    Dv = v.shape[3]
    same("batch sizes of k and v", ("k", "v"), (B, v.shape[0]))
    same("time lengths of k and v", ("k", "v"), (T, v.shape[1]))
    same("heads of k and v", ("k", "v"), (H, v.shape[2]))
    qH, qD = q.shape[-2], q.shape[-1]
    same("heads of q and k", ("q", "k"), (qH, H))
    same("head dims of q and k", ("q", "k"), (qD, D))
    if q.dim() == 3:
        same("batch sizes of q and k", ("q", "k"), (q.shape[0], B))
    for n, s in (("H", H), ("D", D), ("Dv", Dv)):
        positive(n, s)
    scale = real("scale", scale, allow_none=True)
    if scale is None:
        scale = D ** -0.5
    flag("output_final_state", output_final_state)
    N = cu_seqlens(cu, B, T, dev)
    if initial_state is not None:
        initial_state = state("initial_state", initial_state, 3, ((N, H), (N, H), (N, H, Dv)),
                              ("m [N, H]", "u [N, H]", "w [N, H, Dv]"), dev)
    return Checked(B=B, T=T, H=H, D=D, Dv=Dv, N=N, scale=scale, initial_state=initial_state, device=dev)


def check_latte(q, k, v, causal, initial_state, output_final_state, cu):
    tensor("q", q, (4,), "[B, T, H, L]")
    tensor("k", k, (4,), "[B, T, H, L]")
    tensor("v", v, (4,), "[B, T, H, Dv]")
    dev = devices(q=q, k=k, v=v)
    dtypes(q=q, k=k, v=v)
    B, T, H, L = q.shape
    Dv = v.shape[3]
    same("batch sizes of q, k, v", ("q", "k", "v"), (B, k.shape[0], v.shape[0]))
    same("time lengths of q, k, v", ("q", "k", "v"), (T, k.shape[1], v.shape[1]))
    same("heads of q, k, v", ("q", "k", "v"), (H, k.shape[2], v.shape[2]))
    same("latents of q and k", ("q", "k"), (L, k.shape[3]))
    for n, s in (("H", H), ("L", L), ("Dv", Dv)):
        positive(n, s)
    flag("causal", causal)
    flag("output_final_state", output_final_state)
    N = cu_seqlens(cu, B, T, dev)
    if not causal and (initial_state is not None or output_final_state):
        raise ValueError("initial_state / output_final_state: states exist only for causal=True")
    if initial_state is not None:
        initial_state = state("initial_state", initial_state, 3, ((N, H, L), (N, H, L), (N, H, L, Dv)),
                              ("m [N, H, L]", "alpha [N, H, L]", "S [N, H, L, Dv]"), dev)
    return Checked(B=B, T=T, H=H, L=L, Dv=Dv, N=N, initial_state=initial_state, device=dev)


# ⌊e^c⌋ for c = 0, 1, ...: ⌈ln n⌉ <= c  <=>  n <= e^c  <=>  n <= ⌊e^c⌋ for an integer n
_FLOOR_EXP = tuple(math.floor(math.exp(c)) for c in range(44))


def ceil_ln(n: int) -> int:
    """⌈ln n⌉ for an integer n >= 1, by comparisons with ⌊e^c⌋ instead of ``math.log``: under
    ``torch.compile(dynamic=True)`` a symbolic n is then guarded only on its bucket (e^(c-1), e^c], so one graph
    serves every length with the same ⌈ln n⌉ (``math.log`` would specialise every length)."""
    c = 0
    while n > _FLOOR_EXP[c]:
        c += 1
    return c


def prob_sparse_sizes(L_Q: int, L_K: int, factor: int, concrete: bool = False) -> tuple[int, int]:
    """(U, u) of SPEC §6: U = min(L_K, factor·⌈ln L_K⌉) sampled keys, u = min(L_Q, factor·⌈ln L_Q⌉) active
    queries; U == 0 (L_K == 1) makes every query inactive (u = 0), which gives the same output and gradients."""
    if concrete:  # math.log specialises symbolic lengths (torch.randint needs concrete sizes to draw the samples)
        U = min(L_K, factor * math.ceil(math.log(L_K)))
        u = min(L_Q, factor * math.ceil(math.log(L_Q)))
    else:
        U = min(L_K, factor * ceil_ln(L_K))
        u = min(L_Q, factor * ceil_ln(L_Q))
    return U, (u if U > 0 else 0)


def check_prob_sparse(q, k, v, factor, causal, scale, sample_index, generator, return_index):
    tensor("q", q, (4,), "[B, L_Q, H, D]")
    tensor("k", k, (4,), "[B, L_K, Hk, D]")
    tensor("v", v, (4,), "[B, L_K, Hk, Dv]")
    dev = devices(q=q, k=k, v=v)
    dtypes(q=q, k=k, v=v)
    B, L_Q, H, D = q.shape
    L_K, Hk, Dv = k.shape[1], k.shape[2], v.shape[3]
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"batch sizes of q, k, v must match: got q={B}, k={k.shape[0]}, v={v.shape[0]}")
    if v.shape[1] != L_K:
        raise ValueError(f"time lengths of k and v must match: got k={L_K}, v={v.shape[1]}")
    if k.shape[3] != D:
        raise ValueError(f"head dims of q and k must match: got q={D}, k={k.shape[3]}")
    if v.shape[2] != Hk:
        raise ValueError(f"kv heads of k and v must match: got k={Hk}, v={v.shape[2]}")
    for n, s in (("B", B), ("L_Q", L_Q), ("L_K", L_K), ("H", H), ("D", D), ("Dv", Dv), ("Hk", Hk)):
        positive(n, s)
    if H % Hk:
        raise ValueError(f"k, v: query heads H={H} must be a multiple of kv heads Hk={Hk}")
    if isinstance(factor, bool) or not isinstance(factor, numbers.Integral) or factor < 1:
        raise ValueError(f"factor: expected an int >= 1, got {factor!r}")
    factor = int(factor)
    flag("causal", causal)
    if causal and L_Q != L_K:
        raise ValueError(f"causal=True needs queries and keys of one length (self-attention), got L_Q={L_Q}, "
                         f"L_K={L_K}")
    scale = real("scale", scale, allow_none=True)
    if scale is None:
        scale = D ** -0.5
    flag("return_index", return_index)
    U, u = prob_sparse_sizes(L_Q, L_K, factor, concrete=sample_index is None)
    if sample_index is not None:
        if generator is not None:
            raise ValueError("generator: only used to draw sample_index; pass sample_index or generator, not both")
        if not isinstance(sample_index, torch.Tensor) or sample_index.dtype != torch.int64:
            got = sample_index.dtype if isinstance(sample_index, torch.Tensor) else type(sample_index).__name__
            raise ValueError(f"sample_index: expected an int64 tensor [L_Q, U] = [{L_Q}, {U}], got {got}")
        if sample_index.dim() != 2 or sample_index.shape[0] != L_Q or sample_index.shape[1] != U:
            raise ValueError(f"sample_index: expected shape [L_Q, U] = [{L_Q}, {U}] (U = min(L_K, factor·⌈ln L_K⌉)), "
                             f"got {_shape(sample_index)}")
        if sample_index.device != dev and sample_index.device.type != "cpu":
            raise ValueError(f"sample_index: expected it on the CPU or on {dev} like q, got {sample_index.device}")
        if not _compiling() and sample_index.numel() > 0:
            lo, hi = int(sample_index.min()), int(sample_index.max())
            if lo < 0 or hi >= L_K:
                raise ValueError(f"sample_index: expected key indices in [0, L_K={L_K}), got values in [{lo}, {hi}]")
    elif generator is not None:
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            got = generator.device if isinstance(generator, torch.Generator) else type(generator).__name__
            raise ValueError(f"generator: expected a CPU torch.Generator (the samples are drawn on the CPU, as "
                             f"Informer does), got {got}")
    return Checked(B=B, L_Q=L_Q, L_K=L_K, H=H, Hk=Hk, D=D, Dv=Dv, U=U, u=u, factor=factor, scale=scale, device=dev)


def check_macchiato(q, k, v, mix, latent_k, window, scale, initial_state, output_final_state, cu):
    """Latte Macchiato (SPEC §7). Sizes are compared with ``!=`` one pair at a time (no set of sizes, no
    ``math.isfinite`` on sizes), so the check also traces under ``torch.compile(dynamic=True)``."""
    tensor("q", q, (4,), "[B, T, H, D]")
    tensor("k", k, (4,), "[B, T, H, D]")
    tensor("v", v, (4,), "[B, T, H, Dv]")
    tensor("mix", mix, (4,), "[B, T, H, L+1]")
    tensor("latent_k", latent_k, (4,), "[B, T, H, L]")
    dev = devices(q=q, k=k, v=v, mix=mix, latent_k=latent_k)
    dtypes(q=q, k=k, v=v, mix=mix, latent_k=latent_k)
    B, T, H, D = q.shape
    Dv, L = v.shape[3], latent_k.shape[3]
    for name, x in (("k", k), ("v", v), ("mix", mix), ("latent_k", latent_k)):
        for axis, what, want in ((0, "batch size", B), (1, "time length", T), (2, "heads", H)):
            if x.shape[axis] != want:
                raise ValueError(f"{name}: expected {what} {want} like q [B, T, H, D] = {_shape(q)}, "
                                 f"got shape {_shape(x)}")
    if k.shape[3] != D:
        raise ValueError(f"k: expected head dim D={D} like q, got shape {_shape(k)}")
    if mix.shape[3] != L + 1:
        raise ValueError(f"mix: expected L+1 = {L + 1} mixing logits (latent_k has L={L}), got shape {_shape(mix)}")
    for n, s in (("T", T), ("H", H), ("D", D), ("Dv", Dv), ("L", L)):
        positive(n, s)
    left, right = check_window(window)
    if right != 0:
        raise ValueError(f"window: Latte Macchiato is causal, expected (left, 0) with left >= -1, got {window!r}")
    scale = real("scale", scale, allow_none=True)
    if scale is None:
        scale = D ** -0.5
    flag("output_final_state", output_final_state)
    N = cu_seqlens(cu, B, T, dev)
    if left < 0 and (initial_state is not None or output_final_state):
        raise ValueError("window: streaming (initial_state / output_final_state) needs a finite window (left >= 0): "
                         f"the window cache holds the last `left` keys, got window={window!r}")
    if initial_state is not None:
        W = left
        labels = ("k_win [N, left, H, D]", "v_win [N, left, H, Dv]", "n_win [N] int32", "m [N, H, L]",
                  "alpha [N, H, L]", "S [N, H, L, Dv]")
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 6:
            raise ValueError("initial_state: expected a tuple (" + ", ".join(labels) + "), got "
                             + type(initial_state).__name__
                             + (f" of length {len(initial_state)}" if isinstance(initial_state, (tuple, list)) else ""))
        n_win = initial_state[2]
        if (not isinstance(n_win, torch.Tensor) or n_win.is_floating_point() or n_win.dim() != 1
                or n_win.shape[0] != N):
            raise ValueError(f"initial_state.n_win: expected an integer tensor [N={N}] (cached keys per sequence), "
                             f"got {n_win!r}")
        if n_win.device != dev:
            raise ValueError(f"initial_state.n_win: expected it on {dev} like q, got {n_win.device}")
        if not _compiling():
            lo, hi = int(n_win.min()), int(n_win.max())
            if lo < 0 or hi > W:
                raise ValueError(f"initial_state.n_win: expected values in [0, left={W}], got min {lo}, max {hi}")
        rest = state("initial_state", tuple(initial_state[i] for i in (0, 1, 3, 4, 5)), 5,
                     ((N, W, H, D), (N, W, H, Dv), (N, H, L), (N, H, L), (N, H, L, Dv)),
                     tuple(labels[i] for i in (0, 1, 3, 4, 5)), dev)
        initial_state = (rest[0], rest[1], n_win, rest[2], rest[3], rest[4])
    return Checked(B=B, T=T, H=H, D=D, Dv=Dv, L=L, N=N, left=left, scale=scale, initial_state=initial_state,
                   device=dev)
