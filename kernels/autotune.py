"""Tuning on the user's GPU: each tuned launch has a small, deliberately chosen set of configurations (the first
is the default, the one the offline sm_90 compiles chose); the first call of a shape bucket times every config
of the set and keeps the fastest for the rest of the process.

* Key: the kernel, its constexpr shape (padded head dims, dtype, window kind) and the bucket of the sequence
  length (next power of two of T), so one timing covers every T of a bucket.
* Cost of a first call per bucket: every config is compiled (≈ 1–3 s each with a cold Triton cache; the
  compiled kernels are cached on disk in ``~/.triton/cache``, so later processes only pay the timing) and
  timed with ``triton.testing.do_bench`` (``REP_MS`` of runs each, tens of ms). The chosen configs live in
  memory (``CACHE``) only: a new process times again (from the disk-cached binaries).
* ``FLASHTS_AUTOTUNE=0`` switches tuning off: the default config of every set, no timing.
* Never tuned: under the Triton interpreter (tests, CPU), during CUDA-graph capture (the default config is
  launched), and when :data:`CAPTURE_ALL` is set (``tests/triton_compile.py``: every config of the set is
  launched once into its recorder, so CI compiles all of them for sm_90).
* ``flashts.warmup(...)`` runs the ops once at the shapes you give, so tuning happens before the timed or
  latency-critical part of a program.

Why an in-launcher tuner and not ``triton.autotune``. The tuned quantities are not only ``num_warps`` /
``num_stages`` of one kernel: block sizes change the GRID and the WORKSPACES that the Python launcher
computes and allocates before the launch — ProbSparse's active-row block sets how many active programs there
are (``n_act``), auto-correlation's time tile sets the shape of the per-tile partial sums that the launcher
sums afterwards, the sliding-window tiles set ⌈T/BLOCK⌉ — and several launches write the same output through
a fallback path (smaller tiles after an out-of-resources error). ``triton.autotune`` tunes a kernel with a
grid given as a function of its meta-parameters and nothing else: the allocations, the fallback and the
interpreter pinning would have to be rebuilt inside ``pre_hook``/``prune_configs_by`` callbacks per kernel.
Here the launcher passes ``run(config)``, a closure that allocates what the config needs and launches, so
one 60-line function serves every kernel, the default is simply ``configs[0]`` (no timing with
FLASHTS_AUTOTUNE=0, under the interpreter, under CUDA-graph capture) and ``tests/triton_compile.py`` can
record every config (:data:`CAPTURE_ALL`). Costs of the choice: the timing repeats the whole closure
(allocation included, as a real call would), and ``run`` must be safe to repeat — launches that update a
buffer in place (the light state scans of the prefix scan, auto-correlation's in-place spectrum products)
are therefore not tuned.

Config sets (each with the reasoning beside it): ``kernels/sliding_window_attention.py`` (``_HALF_TUNE``),
``kernels/prefix_scan.py`` (``_TUNE``), ``kernels/prob_sparse.py`` (``_tune_sets``), ``kernels/macchiato.py``
(``_tune_set``), ``kernels/auto_correlation.py`` (``_TUNE``). Every config of every set is compiled for sm_90
in CI (``tests/test_triton_compile.py``: the defaults in every scenario, each other config in one
representative scenario per kernel, input dtype and head dims) and run once under the interpreter on a tiny
shape against ``flashts.reference`` (``tests/test_autotune_configs.py``, through :data:`FORCE_INDEX`).
"""
from __future__ import annotations

import os
from typing import Callable, Hashable, Sequence

import triton

ENV = "FLASHTS_AUTOTUNE"
REP_MS = 25
# (key) -> chosen config, filled on first use per process
CACHE: dict = {}
# set by tests/triton_compile.py: launch every config of a set (into the launch recorder), no timing
CAPTURE_ALL = False
# tests only (the interpreter): launch the FORCE_INDEX-th config among the configs of a set with distinct BLOCK
# SIZES (warps and stages do not change what the interpreter computes; the default counts as 0), configs[0]
# when the set has fewer; each forced launch is appended to FORCED as (name, index, config), and FORCE_SEEN
# keeps the largest number of distinct block sizes met
FORCE_INDEX: int | None = None
FORCED: list = []
FORCE_SEEN = 0
# while CAPTURE_ALL runs one config (read by tests/triton_compile.py): (key, index in its set, config)
CURRENT: tuple | None = None


class Config:
    """One configuration of a tuned launch: block sizes (any keyword, read as attributes) and the launch
    options ``num_warps`` / ``num_stages``. Hashable; ``options`` is the dict of launch options.

    >>> c = Config(BLOCK_N=64, num_warps=4, num_stages=2)
    >>> c.BLOCK_N, c.options
    (64, {'num_warps': 4, 'num_stages': 2})
    """
    __slots__ = ("blocks", "num_warps", "num_stages")

    def __init__(self, num_warps: int = 4, num_stages: int = 3, **blocks: int):
        object.__setattr__(self, "blocks", tuple(sorted(blocks.items())))
        object.__setattr__(self, "num_warps", int(num_warps))
        object.__setattr__(self, "num_stages", int(num_stages))

    def __getattr__(self, name):
        for k, v in object.__getattribute__(self, "blocks"):
            if k == name:
                return v
        raise AttributeError(name)

    def __setattr__(self, name, value):
        raise AttributeError("Config is immutable")

    @property
    def options(self) -> dict:
        return {"num_warps": self.num_warps, "num_stages": self.num_stages}

    def _key(self):
        return (self.blocks, self.num_warps, self.num_stages)

    def __eq__(self, other):
        return isinstance(other, Config) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return "Config(" + ", ".join([f"{k}={v}" for k, v in self.blocks]
                                     + [f"num_warps={self.num_warps}", f"num_stages={self.num_stages}"]) + ")"


def distinct(configs) -> list:
    """``configs`` without repeats (first occurrence kept: the default stays first)."""
    out = []
    for c in configs:
        if c not in out:
            out.append(c)
    return out


def sets_active(device) -> bool:
    """Whether launchers build their GPU config sets: on a GPU (also inside ``tests/triton_compile.py``'s
    recorder) or when a test forces a config index (:data:`FORCE_INDEX`, run under the interpreter)."""
    from flashts.ops import _common
    return FORCE_INDEX is not None or _common.compiles_for_gpu(device)


def bucket(n: int) -> int:
    """The shape bucket of a size: the next power of two (≥ 1)."""
    return triton.next_power_of_2(max(1, int(n)))


def enabled(device) -> bool:
    """Whether launches on ``device`` are tuned (a GPU, FLASHTS_AUTOTUNE not 0, no CUDA-graph capture)."""
    from flashts.ops import _common
    if getattr(device, "type", None) != "cuda" or not _common.compiles_for_gpu(device):
        return False
    if os.environ.get(ENV, "1").strip().lower() in ("0", "", "false", "off"):
        return False
    import torch
    return not torch.cuda.is_current_stream_capturing()


def launch(key: Hashable, configs: Sequence, run: Callable, device) -> object:
    """Launch ``run(config)`` with the tuned config of ``key`` (``configs[0]`` when tuning is off); returns the
    config used. ``run`` must be safe to repeat (every launch rewrites the same outputs)."""
    global CURRENT, FORCE_SEEN
    if FORCE_INDEX is not None:
        variants = [configs[0]]
        for c in configs[1:]:
            if all(getattr(c, "blocks", c) != getattr(v, "blocks", v) for v in variants):
                variants.append(c)
        FORCE_SEEN = max(FORCE_SEEN, len(variants))
        index = FORCE_INDEX if FORCE_INDEX < len(variants) else 0
        if index:
            FORCED.append((key[0] if isinstance(key, tuple) else key, index, variants[index]))
        run(variants[index])
        return variants[index]
    if CAPTURE_ALL:
        for i, c in enumerate(configs):
            CURRENT = (key, i, c)
            try:
                run(c)
            finally:
                CURRENT = None
        return configs[0]
    if key in CACHE:
        run(CACHE[key])
        return CACHE[key]
    if len(configs) == 1 or not enabled(device):
        run(configs[0])
        return configs[0]
    from triton.testing import do_bench
    best, best_ms = None, float("inf")
    for c in configs:
        try:
            ms = do_bench(lambda c=c: run(c), warmup=5, rep=REP_MS, return_mode="median")
        except Exception:  # a config this GPU cannot launch (shared memory, registers): not a candidate
            continue
        if ms < best_ms:
            best, best_ms = c, ms
    CACHE[key] = best if best is not None else configs[0]
    run(CACHE[key])
    return CACHE[key]


def warmup(ops: Sequence[str] = ("linear_attention", "sliding_window_attention", "auto_correlation",
                                 "aaren_attention", "latte_attention"),
           B: int = 4, H: int = 8, T: int | Sequence[int] = 1024, D: int = 64, *, L: int = 64,
           window: tuple = (511, 0), dtype=None, device=None, backward: bool = True,
           backend: str = "triton") -> dict:
    """Run each op once (forward and, with ``backward``, backward) at every ``T`` so that its Triton kernels are
    compiled and autotuned before the part of a program that is timed or latency-critical. Returns the tuned
    configs chosen so far (``{key: config}``; empty with FLASHTS_AUTOTUNE=0 or without a GPU).

    >>> import flashts
    >>> _ = flashts.warmup(["linear_attention"], B=1, H=1, T=32, D=8, device="cpu", backend="torch")
    """
    import torch

    import flashts
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype if dtype is not None else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    for t in ([T] if isinstance(T, int) else list(T)):
        def rnd(*shape):
            return torch.randn(*shape, device=device, dtype=dtype).requires_grad_(backward)
        for op in ops:
            if op == "aaren_attention":
                args = (rnd(H, D), rnd(B, t, H, D), rnd(B, t, H, D))
            elif op == "latte_attention":
                args = (rnd(B, t, H, L), rnd(B, t, H, L), rnd(B, t, H, D))
            else:
                args = (rnd(B, t, H, D), rnd(B, t, H, D), rnd(B, t, H, D))
            kwargs = {"window": window} if op == "sliding_window_attention" else {}
            out = getattr(flashts, op)(*args, backend=backend, **kwargs)
            out = out[0] if isinstance(out, tuple) else out
            if backward:
                torch.autograd.grad(out.float().sum(), [a for a in args if a.requires_grad], allow_unused=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return dict(CACHE)
