"""Occupancy rule of the Triton kernels: which launch mode fills the GPU at a given shape.

Two ops have a sequential-in-time kernel whose grid is only (sequences × heads × Dv tiles):

* Aaren / Latte (causal, ``kernels/prefix_scan.py``): SCAN_MODE "one_pass" runs one program per
  (sequence, head, Dv tile) that scans all chunks; "chunked" runs every chunk in parallel
  (B·H·⌈T/C⌉·⌈Dv/BV⌉ programs) around a light sequential scan of the chunk summaries.
* Linear attention (causal forward, ``kernels/linear_attention.py``): FWD_MODE "one_pass" (N·H·⌈Dv/BV⌉
  programs) or "two_pass" (a light sequential state pass, then B·H·⌈T/C⌉ output programs). Its backward always
  has two light sequential passes (chunk states, state cotangents; N·H·⌈Dv/BV⌉ programs) around the
  chunk-parallel gradient kernel.

The rule (one function, :func:`choose`, used by both launchers when their mode constant is "auto"):

1. Mode (:func:`choose`). "one_pass" when the sequential grid (default Dv tile) has at least
   ``ONE_PASS_PROGRAMS_PER_SM`` (2) programs per SM (every SM holds ≥ 2 resident scans, enough to cover the
   load latency of a memory-bound scan, and no chunk state goes through memory), otherwise the chunk-parallel
   mode when its grid fills the SMs and is larger; otherwise (no grid fills the SMs — a tiny call — or the
   chunk-parallel grid is no larger), the mode with more programs once Dv is split to 16-column tiles.
2. Dv split. While the chosen mode's grid has fewer programs than the GPU has SMs and BV > 16, halve BV (more,
   narrower Dv tiles). Linear attention also splits the Dv tile of its light sequential state passes
   (forward two-pass and backward) with :func:`split_dv` until they have ≥ SMs programs: their Dv tiles cost
   only re-reads of q/k rows (no per-tile partials). Linear attention's rule runs at the one pass's default
   tile (its launch config set, ``_tune_set`` in kernels/linear_attention.py); every sequential launch, whatever
   its (default or autotuned) config's tile, is split by :func:`split_dv` the same way.

So at every shape the programs of the chosen mode's main grid are ≥ the SM count whenever
B·H·⌈T/C⌉·⌈Dv/16⌉ ≥ SMs (the most parallelism the kernels can expose); below that the whole call is a few
chunks of work for the entire GPU and the rule picks the mode with the most programs.

The SM count is ``torch.cuda.get_device_properties(device).multi_processor_count`` on a GPU and
``INTERPRETER_SMS`` (132, an H100/H200) under the Triton interpreter and on CPU, so that the tests exercise
the choice a GPU would make. ``ONE_PASS_PROGRAMS_PER_SM`` is a prediction (no GPU measured it yet): the one pass
is latency-bound per program and the chunked mode pays a [NS, L, Dv] float32 state round trip;
``python -m bench.tune`` times both modes on a GPU.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import triton

# SMs assumed when no GPU compiles the kernels (interpreter, CPU; H100 SXM and H200 both have 132).
INTERPRETER_SMS = 132
# The one-pass (sequential) modes need this many programs per SM to be chosen.
ONE_PASS_PROGRAMS_PER_SM = 2
# Narrowest Dv tile the Dv split goes down to (tl.dot needs ≥ 16).
MIN_BV = 16


@functools.lru_cache(maxsize=None)
def _cuda_sms(index: int) -> int:
    import torch
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


def sm_count(device) -> int:
    """Streaming multiprocessors of ``device`` (a CUDA device), or INTERPRETER_SMS under the interpreter/CPU."""
    from flashts.ops import _common
    if getattr(device, "type", None) == "cuda" and _common.compiles_for_gpu(device):
        import torch
        return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())
    return INTERPRETER_SMS


class Launch(NamedTuple):
    """The rule's choice: ``mode`` ("one_pass" or "chunked"), ``BV`` (the Dv tile), and the programs of the
    sequential grid, of the chunk-parallel grid and of the chosen mode's main grid."""
    mode: str
    BV: int
    seq_programs: int
    chunk_programs: int
    programs: int


def split_dv(rows: int, Dv: int, bv: int, sms: int, *, min_bv: int = MIN_BV) -> int:
    """The Dv tile for a sequential grid of ``rows`` × ⌈Dv/BV⌉ programs: ``bv`` (clamped to Dv), halved while
    the grid has fewer programs than ``sms`` and the tile is wider than ``min_bv``."""
    bv = max(min_bv, min(bv, triton.next_power_of_2(max(Dv, 1))))
    while rows * triton.cdiv(Dv, bv) < sms and bv > min_bv:
        bv //= 2
    return bv


def choose(rows: int, chunk_rows: int, Dv: int, bv: int, sms: int, *, chunk_dv_tiles: bool = True,
           min_bv: int = MIN_BV, mode: str = "auto") -> Launch:
    """Apply the occupancy rule.

    ``rows``: sequences × heads (N·H), the sequential grid without its Dv tiles; ``chunk_rows``: the
    chunk-parallel grid without its Dv tiles (B·H·NS: every chunk slot of every head); ``chunk_dv_tiles``:
    whether the chunk-parallel grid also has one program per Dv tile (prefix scan) or loops over them (linear);
    ``bv``: the default Dv tile; ``mode``: "auto" (apply the rule) or a fixed "one_pass" / "chunked".
    The mode is chosen at the default tile; the tile is then halved (down to ``min_bv``) only while the chosen
    grid still has fewer programs than SMs (the Dv split costs re-reads and, for the prefix scan, per-tile
    gradient partials, so it is the last resort).

    >>> choose(rows=8 * 8, chunk_rows=8 * 8 * 512, Dv=64, bv=32, sms=132)      # Latte B8 H8 T8192 L64
    Launch(mode='chunked', BV=32, seq_programs=128, chunk_programs=65536, programs=65536)
    >>> choose(rows=4096, chunk_rows=4096 * 6, Dv=64, bv=64, sms=132).mode     # B·H = 4096, T = 96
    'one_pass'
    >>> choose(rows=2, chunk_rows=2 * 6, Dv=64, bv=64, sms=132).BV             # tiny: split Dv
    16
    """
    bv = max(min_bv, min(bv, triton.next_power_of_2(max(Dv, 1))))

    def grids(bv):
        nv = triton.cdiv(Dv, bv)
        return rows * nv, chunk_rows * (nv if chunk_dv_tiles else 1)

    seq, par = grids(bv)
    if mode == "auto":
        if seq >= ONE_PASS_PROGRAMS_PER_SM * sms:
            mode = "one_pass"
        elif par >= sms and par > seq:
            mode = "chunked"
        else:  # no grid fills even one wave: the mode with the most programs once Dv is split to min_bv
            seq_min, par_min = grids(min_bv)
            mode = "one_pass" if seq_min >= par_min else "chunked"
    elif mode not in ("one_pass", "chunked"):
        raise ValueError(f"mode must be 'auto', 'one_pass' or 'chunked', got {mode!r}")
    splits = mode == "one_pass" or chunk_dv_tiles   # (linear's chunk grid loops over its Dv tiles)
    while splits and (seq if mode == "one_pass" else par) < sms and bv > min_bv:
        bv //= 2
        seq, par = grids(bv)
    return Launch(mode, bv, seq, par, seq if mode == "one_pass" else par)


def waves(programs: int, sms: int = INTERPRETER_SMS) -> float:
    """Programs per SM (one resident program per SM assumed: a lower bound of the GPU's fill)."""
    return programs / sms


# --------------------------------------------------------------------------- programs per kernel (README table)

def _meta(*shape):
    import torch
    return torch.empty(shape, device="meta", dtype=torch.bfloat16)


def launches(op: str, B: int, H: int, T: int, D: int, Dv: int | None = None, *, L: int = 64,
             window: tuple = (511, 0), sms: int = INTERPRETER_SMS) -> dict:
    """Programs of every Triton launch of one forward+backward of ``op`` (causal, bf16, GPU tiles) at a shape,
    from the launchers' own configuration classes (nothing is run): {kernel: programs}. ``sms`` only matters
    through the rule (INTERPRETER_SMS = 132 here)."""
    Dv = D if Dv is None else Dv
    if op == "linear_attention":
        from flashts.kernels import linear_attention as la
        cfg = la._Config(_meta(B, T, H, D), _meta(B, T, H, D), _meta(B, T, H, Dv), None, "elu")

        def seq(kind):  # a sequential grid at its default config's (split) Dv tile
            return cfg.N * H * triton.cdiv(Dv, cfg.bv(cfg.tune_set(kind)[0], True))
        out = {}
        if cfg.fwd_mode == "two_pass":
            out["_chunk_state_kernel (fwd)"] = seq("chunk_state")
            out["_causal_out_kernel"] = cfg.NS * B * H
        else:
            out["_fwd_causal_kernel"] = seq("fwd_causal")
        grads = "_grads_kernel ×3" if cfg.tune_set("grads")[0].split else "_grads_kernel"
        out.update({"_chunk_state_kernel (bwd)": seq("chunk_state"), "_norm_kernel": cfg.NS * B * H,
                    "_dstate_kernel": seq("dstate"), grads: cfg.NS * B * H})
        return out
    if op in ("latte_attention", "aaren_attention"):
        from flashts.kernels import prefix_scan as ps
        aaren = op == "aaren_attention"
        k = _meta(B, T, H, D if aaren else L)
        cfg = ps._Config(k, _meta(B, T, H, Dv), 1 if aaren else L, D if aaren else L, None, aaren=aaren)
        seq, par = cfg.N * H * cfg.NV, B * H * cfg.NS * cfg.NV
        if cfg.chunked:
            scan = cfg.N * H * triton.cdiv(Dv, split_dv(cfg.N * H, Dv, cfg.BV, sms))
            out = {"_chunk_sum_kernel ×2": par, "_state_scan_kernel ×2": scan, "_chunk_out_kernel": par,
                   "_chunk_cot_kernel": par, "_chunk_grads_kernel": par,
                   # the reverse scan splits the chunk kernels' Dv tiles further (kernels/prefix_scan.py)
                   "_cot_scan_kernel": seq * (cfg.BV // split_dv(seq, cfg.BV, cfg.BV, sms))}
        else:
            out = {"_scan_fwd_kernel ×2": seq, "_scan_bwd_kernel": seq}
        out["_finish_kernel"] = triton.cdiv(T, cfg.C) * B * H
        return out
    if op == "sliding_window_attention":
        from flashts.kernels import sliding_window_attention as sw
        import torch
        span = window[0] + window[1] + 1 if min(window) >= 0 else None
        bd = sw._pad(D)
        out = {}
        for kind, name in (("fwd", "_fwd_kernel"), ("dkdv", "_bwd_dkdv_kernel"), ("dq", "_bwd_dq_kernel")):
            t = sw._gpu_config(kind, bd, sw._pad(Dv), torch.bfloat16, span)
            out[name] = triton.cdiv(T, t.a) * B * H
        return out
    if op == "auto_correlation":
        from flashts.kernels import auto_correlation as ac
        n = H * D
        bn = ac._pow2_tile(n, 16, ac.BLOCK_N_MAX)
        agg = triton.cdiv(T, ac.BLOCK_T) * triton.cdiv(n, bn) * B
        n_tiles = triton.cdiv(T, ac.BLOCK_T)
        chunks = max(1, min(10, triton.cdiv(4 * sms, B * n_tiles)))   # _delay_chunks with K ≈ log L
        return {"_cross_spectrum_kernel": triton.cdiv(T // 2 + 1, ac.BLOCK_F) * B, "_aggregate_kernel ×2": agg,
                "_delay_dots_kernel": chunks * n_tiles * B,
                "_spectrum_grad_kernel": triton.cdiv(T // 2 + 1, ac.BLOCK_F) * triton.cdiv(n, ac._pow2_tile(
                    n, 16, ac.BLOCK_C_MAX)) * B}
    raise ValueError(f"unknown op {op!r}")


if __name__ == "__main__":  # python -m flashts.kernels.occupancy: the programs per kernel at the goal shapes
    GOALS = [("linear_attention", dict(B=4, H=16, T=8192, D=64)), ("linear_attention", dict(B=4, H=16, T=8192, D=128)),
             ("sliding_window_attention", dict(B=4, H=16, T=8192, D=64)),
             ("sliding_window_attention", dict(B=4, H=16, T=8192, D=128, window=(256, 256))),
             ("latte_attention", dict(B=8, H=8, T=8192, D=64)), ("aaren_attention", dict(B=8, H=8, T=8192, D=64)),
             ("auto_correlation", dict(B=32, H=8, T=720, D=64)), ("auto_correlation", dict(B=32, H=8, T=8192, D=64)),
             ("linear_attention", dict(B=512, H=8, T=96, D=16)), ("latte_attention", dict(B=512, H=8, T=96, D=16)),
             ("aaren_attention", dict(B=512, H=8, T=96, D=16))]
    for op, kw in GOALS:
        progs = launches(op, **kw)
        print(op, kw, {k: f"{v} ({v / INTERPRETER_SMS:.2g} w)" for k, v in progs.items()})
