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
    if CAPTURE_ALL:
        for c in configs:
            run(c)
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
