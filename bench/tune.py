"""``python -m bench.tune``: sweep the Triton kernels' tile/chunk knobs on one shape, check each variant, time it.

Each Triton kernel module exposes its blocking as module constants (``kernels/linear_attention.py``:
``FWD_MODE``, ``HALF_DOT_OPERANDS``, ``CHUNK_SIZE``, ``BV_MAX``, ``NUM_STAGES``; ``kernels/prefix_scan.py``: ``SCAN_MODE``, ``CHUNK``,
``BV_MAX``, ``STATE_TILE_MAX``; ``kernels/auto_correlation.py``: ``BLOCK_T``, ``BLOCK_N_MAX``, ``NUM_WARPS``;
``kernels/sliding_window_attention.py``: the per-head-dim tile tables ``_HALF_TILES`` / ``_FP32_TILES``). This
tool sets one combination at a time (and restores the module afterwards), runs the op through the public
function with ``backend="triton"``, compares the output and the gradients of q, k, v with the torch backend on the
same inputs upcast to float32, and times forward and forward+backward with ``triton.testing.do_bench`` (median).
A variant that fails to compile or launch, or gives a wrong result, is reported with its error, never a time.

    python -m bench.tune --op linear                          # the issue's shape, the default grid
    python -m bench.tune --op swa --D 128 --window 511 0      # tiles of the D = 128 sliding-window kernels
    python -m bench.tune --op latte --grid CHUNK=16,32 BV_MAX=32,64
    python -m bench.tune --op linear --list                   # print the variants and exit

``--grid NAME=v1,v2 ...`` replaces the default grid (values are Python literals; for the sliding-window tile
tables NAME is ``fwd``, ``dkdv`` or ``dq`` and a value is ``a:b:warps:stages``). The variants are the Cartesian
product of the grid. Output: ``tune_<op>_<device>_<date>.{json,md}`` in ``--out``, rows sorted by the
forward+backward time; the first row of the markdown is the current default.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import itertools
import json
import os
import sys
import time
from contextlib import contextmanager

import torch

from . import registry
from .registry import Case, Config, FlashtsImpl, make_inputs
from .runner import metadata, slug

MODULES = {
    "linear_attention": "flashts.kernels.linear_attention",
    "sliding_window_attention": "flashts.kernels.sliding_window_attention",
    "auto_correlation": "flashts.kernels.auto_correlation",
    "aaren_attention": "flashts.kernels.prefix_scan",
    "latte_attention": "flashts.kernels.prefix_scan",
}

# default grids (the current default value is always among them)
GRIDS = {
    "linear_attention": {"FWD_MODE": ["auto", "one_pass", "two_pass"], "HALF_DOT_OPERANDS": ["float32", "input"],
                         "CHUNK_SIZE": [32, 64, 128], "NUM_STAGES": [2, 3]},
    "sliding_window_attention": {"fwd": ["64:64:4:3", "128:64:4:3", "128:64:8:3", "128:128:8:2"],
                                 # dK/dV at head dim 128 (measured 2.5x slower than Flex's backward; the
                                 # default 64:16 uses 224 registers and no stack with Triton 3.6 for sm_90;
                                 # 64:32:8:2 255 regs + 16 B of stack, 128:32:8:2 255 + 24 B: offline compiles)
                                 "dkdv": ["64:64:8:3", "64:32:8:3", "64:32:8:2", "128:32:8:2", "128:64:8:2",
                                          "64:16:8:3"],
                                 "dq": ["64:64:4:3", "64:32:8:3", "128:64:8:2"]},
    "auto_correlation": {"BLOCK_T": [32, 64, 128], "BLOCK_N_MAX": [64, 128, 256], "NUM_WARPS": [4, 8]},
    "aaren_attention": {"SCAN_MODE": ["auto", "one_pass", "chunked"], "CHUNK": [16, 32, 64], "BV_MAX": [32, 64]},
    "latte_attention": {"SCAN_MODE": ["auto", "one_pass", "chunked"], "CHUNK": [16, 32, 64], "BV_MAX": [32, 64]},
}
TILE_KINDS = ("fwd", "dkdv", "dq")
# tolerance of the max relative error (output and gradients) against the float32 torch backend
TOL = {"float32": 2e-3, "bfloat16": 3e-2, "float16": 1e-2}


def _parse_value(name: str, text: str):
    if name in TILE_KINDS:
        parts = tuple(int(x) for x in text.split(":"))
        if len(parts) != 4:
            raise ValueError(f"{name}: tiles are a:b:warps:stages, got {text!r}")
        return parts
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_grid(items: list[str]) -> dict:
    grid = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--grid expects NAME=v1,v2,..., got {item!r}")
        name, values = item.split("=", 1)
        grid[name] = [_parse_value(name, v) for v in values.split(",") if v]
    return grid


def _padded_head_dim(op: str, D: int, Dv: int) -> int:
    def pad(n):
        return max(32, 1 << (max(n, 1) - 1).bit_length())
    return max(pad(D), pad(Dv))


@contextmanager
def knobs(module, settings: dict, tile_key: int | None, dtype: torch.dtype):
    """Set module constants (and sliding-window tile-table entries) for the duration of the block."""
    saved_attrs, saved_tiles = {}, {}
    table = None
    if any(k in TILE_KINDS for k in settings):
        table = module._FP32_TILES if dtype == torch.float32 else module._HALF_TILES
    try:
        for name, value in settings.items():
            if name in TILE_KINDS:
                saved_tiles[name] = table[name][tile_key]
                table[name][tile_key] = tuple(value)
            else:
                if not hasattr(module, name):
                    raise AttributeError(f"{module.__name__} has no knob {name!r}")
                saved_attrs[name] = getattr(module, name)
                setattr(module, name, value)
        if hasattr(module, "_FALLBACK"):
            module._FALLBACK.clear()
        yield
    finally:
        for name, value in saved_attrs.items():
            setattr(module, name, value)
        for name, value in saved_tiles.items():
            table[name][tile_key] = value
        if hasattr(module, "_FALLBACK"):
            module._FALLBACK.clear()


def current_defaults(module, grid: dict, tile_key: int | None, dtype: torch.dtype) -> dict:
    out = {}
    for name in grid:
        if name in TILE_KINDS:
            table = module._FP32_TILES if dtype == torch.float32 else module._HALF_TILES
            out[name] = tuple(table[name][tile_key])
        else:
            out[name] = getattr(module, name)
    return out


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    den = ref.abs().max().item()
    return (x - ref).abs().max().item() / den if den > 0 else (x - ref).abs().max().item()


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _timer(device: torch.device):
    if device.type == "cuda":
        from triton.testing import do_bench

        def t(fn, rep_ms):
            return float(do_bench(fn, warmup=max(5, rep_ms // 4), rep=rep_ms, return_mode="median"))
        return t

    def t_cpu(fn, rep_ms):     # interpreter (tests): one warm call, then one timed call
        fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return t_cpu


def run(args) -> dict:
    device = torch.device(args.device)
    op = registry.canonical_op(args.op)
    dtype_name = registry.canonical_dtype(args.dtype)
    params = {}
    if op == "linear_attention":
        params = dict(causal=not args.noncausal, feature_map="elu", normalize=True)
    elif op == "sliding_window_attention":
        params = dict(window=tuple(args.window))
    elif op == "auto_correlation":
        params = dict(factor=1.0, mode=args.mode)
    elif op == "latte_attention":
        params = dict(causal=not args.noncausal, latents=args.L)
    D = args.L if op == "latte_attention" else args.D
    config = Config.make(op, args.B, args.H, D, args.D, (args.T,), **params)
    case = Case(config, args.T, dtype_name)
    module = importlib.import_module(MODULES[op])
    grid = parse_grid(args.grid) if args.grid else GRIDS[op]
    tile_key = _padded_head_dim(op, D, args.D) if op == "sliding_window_attention" else None
    dt = case.torch_dtype
    defaults = current_defaults(module, grid, tile_key, dt)
    names = list(grid)
    variants = [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]
    variants.sort(key=lambda v: v != defaults)          # the default first
    if defaults not in variants:
        variants.insert(0, defaults)

    meta = metadata(device, ["python", "-m", "bench.tune"] + list(args.argv))
    result = dict(meta, op=op, shape=dict(B=args.B, H=args.H, T=args.T, D=D, Dv=args.D, dtype=dtype_name,
                                          params={k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}),
                  defaults={k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}, rows=[])
    if args.list:
        for v in variants:
            print(v)
        return result

    inputs = make_inputs(case, device)
    ref_inputs = {k: x.float() for k, x in inputs.items()}
    ref_case = Case(config, args.T, "float32")
    ref = FlashtsImpl("torch").prepare(ref_case, ref_inputs, requires_grad=True)
    ref_out = _first(ref.fn())
    ref_grads = torch.autograd.grad(ref_out, ref.leaves, ref.grad_out.float())
    timer = _timer(device)
    t_start = time.time()
    # the variants are set through the module knobs: the launch-time autotuner must not override them
    saved_autotune = os.environ.get("FLASHTS_AUTOTUNE")
    os.environ["FLASHTS_AUTOTUNE"] = "0"
    for i, settings in enumerate(variants):
        row = dict(settings={k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
                   default=settings == defaults, fwd_ms=None, fwdbwd_ms=None, max_rel_err=None, error=None)
        if args.time_limit and time.time() - t_start > args.time_limit:
            row["error"] = "not run: time limit"
            result["rows"].append(row)
            continue
        try:
            with knobs(module, settings, tile_key, dt):
                prep = FlashtsImpl("triton").prepare(case, inputs, requires_grad=True)
                out = _first(prep.fn())
                grads = torch.autograd.grad(out, prep.leaves, prep.grad_out)
                err = max([_rel(out, ref_out)] + [_rel(g, r) for g, r in zip(grads, ref_grads)])
                row["max_rel_err"] = err
                if not err <= TOL[dtype_name]:
                    raise RuntimeError(f"wrong result: max_rel_err={err:.3g} > {TOL[dtype_name]:g}")
                fwd = FlashtsImpl("triton").prepare(case, inputs, requires_grad=False)

                def fwdbwd():
                    o = _first(prep.fn())
                    torch.autograd.grad(o, prep.leaves, prep.grad_out)
                with torch.no_grad():
                    row["fwd_ms"] = timer(fwd.fn, args.rep_ms)
                row["fwdbwd_ms"] = timer(fwdbwd, args.rep_ms)
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        result["rows"].append(row)
        if not args.quiet:
            print(f"[tune {i + 1}/{len(variants)}] {_line(row)}", file=sys.stderr, flush=True)
    if saved_autotune is None:
        os.environ.pop("FLASHTS_AUTOTUNE", None)
    else:
        os.environ["FLASHTS_AUTOTUNE"] = saved_autotune
    result["rows"].sort(key=lambda r: (r["fwdbwd_ms"] is None, r["fwdbwd_ms"] or 0.0))
    return result


def _fmt(x, digits=3):
    return "–" if x is None else f"{x:.{digits}g}"


def _line(r: dict) -> str:
    s = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
    mark = " (default)" if r["default"] else ""
    if r["error"]:
        return f"{s}{mark}: {r['error']}"
    return f"{s}{mark}: fwd {_fmt(r['fwd_ms'])} ms, fwd+bwd {_fmt(r['fwdbwd_ms'])} ms, err {_fmt(r['max_rel_err'])}"


def markdown(data: dict) -> str:
    sh = data["shape"]
    lines = [f"# Tuning {data['op']} (Triton)", "",
             f"device **{data['device']}**, torch {data['torch']}, triton {data['triton']}, "
             f"commit `{(data['commit'] or '?')[:20]}`, date {data['date']}.", "",
             f"Command: `{' '.join(data['command'])}`", "",
             f"Shape: B={sh['B']} H={sh['H']} T={sh['T']} D={sh['D']} Dv={sh['Dv']} {sh['dtype']} {sh['params']}. "
             f"Median ms (do_bench); err = max relative error of output and dq/dk/dv vs the float32 torch backend.",
             "", "| settings | fwd ms | fwd+bwd ms | err | note |", "|---|---|---|---|---|"]
    for r in data["rows"]:
        s = ", ".join(f"{k}={v}" for k, v in r["settings"].items()) + (" **(default)**" if r["default"] else "")
        lines.append(f"| {s} | {_fmt(r['fwd_ms'])} | {_fmt(r['fwdbwd_ms'])} | {_fmt(r['max_rel_err'])} | "
                     f"{r['error'] or ''} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m bench.tune", description=__doc__.split("\n")[0])
    ap.add_argument("--op", required=True, help="linear, swa, autocorr, aaren, latte (or the full op name)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--B", type=int, default=None)
    ap.add_argument("--H", type=int, default=None)
    ap.add_argument("--T", type=int, default=8192)
    ap.add_argument("--D", type=int, default=64, help="head dim (D = Dv; E for auto-correlation)")
    ap.add_argument("--L", type=int, default=64, help="Latte latents")
    ap.add_argument("--window", type=int, nargs=2, default=(511, 0))
    ap.add_argument("--mode", default="train", help="auto-correlation mode")
    ap.add_argument("--noncausal", action="store_true")
    ap.add_argument("--grid", nargs="+", help="NAME=v1,v2 ... (replaces the default grid)")
    ap.add_argument("--rep-ms", type=int, default=100)
    ap.add_argument("--time-limit", type=float, default=0.0, help="stop starting variants after this many seconds")
    ap.add_argument("--out", default=None,
                    help="output directory (default ./flashts-results, relative to the current folder, git-ignored)")
    ap.add_argument("--results", action="store_true",
                    help="write into the repository's bench/results, where committed runs live (instead of --out)")
    ap.add_argument("--list", action="store_true", help="print the variants and exit")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.results and args.out is not None:
        ap.error("--results and --out exclude each other")
    args.out = (os.path.join(os.path.dirname(os.path.abspath(__file__)), "results") if args.results
                else (args.out or "flashts-results"))
    args.argv = argv
    op = registry.canonical_op(args.op)
    big = op in ("linear_attention", "sliding_window_attention")
    args.B = args.B or (4 if big else 32 if op == "auto_correlation" else 8)
    args.H = args.H or (16 if big else 8)
    data = run(args)
    if args.list:
        return 0
    os.makedirs(args.out, exist_ok=True)
    stem = f"tune_{registry.short_op(op)}_{slug(data['device'])}_{data['date'][:10]}"
    with open(os.path.join(args.out, stem + ".json"), "w") as f:
        json.dump(data, f, indent=1)
    with open(os.path.join(args.out, stem + ".md"), "w") as f:
        f.write(markdown(data))
    print(os.path.join(args.out, stem + ".md"))
    ok = [r for r in data["rows"] if r["fwdbwd_ms"] is not None]
    if ok and not args.quiet:
        print("best: " + _line(ok[0]))
    return 0 if any(r["default"] and r["fwdbwd_ms"] is not None for r in data["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
