"""Compile every Triton kernel variant that flashts launches for a GPU target, on a machine without a GPU.

The interpreter (``TRITON_INTERPRET=1``, how CI runs the Triton kernels) executes the kernels as Python: it never
lowers them, so code that the interpreter accepts can still fail to compile for a GPU (a layout the backend
cannot convert, a crash in a lowering pass, an op on a wrong type) or compile into a kernel that spills
registers. Triton's compiler itself runs without a GPU (``triton.compile`` for ``GPUTarget("cuda", 90, 32)``,
then ptxas, which ships with Triton), so this module does it in two steps:

1. :func:`capture` (in a process running the interpreter, e.g. under pytest): calls the public ops with the
   ``triton`` backend over a set of scenarios (every op, forward and backward, float32 and bfloat16, options,
   states, packed sequences, decode, the alternative kernel modes), with ``flashts.ops._common.
   compiles_for_gpu`` patched to True so the launchers choose their GPU tiles and constexprs, and with the
   interpreter's launch replaced by a recorder: kernels are not executed (their outputs stay uninitialised),
   each launch becomes a spec — kernel, argument types, constexpr values, num_warps, num_stages.
2. ``python tests/triton_compile.py SPECS.json [--arch 90] [--jobs N]`` (a process WITHOUT the interpreter):
   compiles each distinct spec with ``triton.compile`` for the target and reads registers, stack (spills) and
   shared memory with ``cuobjdump -res-usage``; prints one JSON line per spec and exits 1 if any failed.

Autotuned launches (``kernels/autotune.py``) are recorded with their default config; with
``FLASHTS_COMPILE_ALL_CONFIGS=1`` (or ``capture(all_configs=True)``) every config of their sets is recorded too,
each spec tagged with the index of its config in the set (``"tune"``). :func:`representatives` keeps what CI
compiles: every default-config spec, and each non-default config in ONE scenario per (kernel, input dtypes,
config, padded head dims :data:`HEAD_DIMS`) — the scenario flags (states, packing, modes) do not multiply the
non-default configs.

Spills: :data:`SPILL_ALLOWANCE` is the most stack bytes per thread (register spills) each kernel may have on
sm_90 with CI's Triton; ``tests/test_triton_compile.py`` fails when a compiled variant exceeds it, and checks
that the README's table ("Spill allowance") states the same numbers.

``tests/test_triton_compile.py`` runs both; the two steps also work by hand, e.g. with another Triton version
first on ``PYTHONPATH`` for step 2 (the H100 machine has Triton 3.6, CI has 3.9).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings

LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")
# constexprs holding padded head / value / latent dims: a non-default autotune config is compiled once per
# (kernel, input dtype, config, these values) (see representatives()); among a group's scenarios the one with
# the widest value tile TILE_DIM (the prefix scan's Dv tile, chosen by the occupancy rule) is kept: the most
# registers
HEAD_DIMS = ("BD", "BDV", "BLOCK_D", "BLOCK_DV", "BK", "BL")
TILE_DIM = "BV"
# Most stack bytes per thread (register spills) allowed on sm_90 with Triton 3.9, per "module.kernel"
# (absent: 0). The README's "Spill allowance" table states the same numbers (checked by the test).
SPILL_ALLOWANCE = {
    "auto_correlation._delay_dots_kernel": 8,
    "linear_attention._causal_out_kernel": 176,
    "linear_attention._fwd_causal_kernel": 112,
    "linear_attention._grads_kernel": 592,
    "prob_sparse._ps_bwd_rows_kernel": 8,
    "prob_sparse._ps_fwd_kernel": 8,
    "sliding_window_attention._bwd_dkdv_kernel": 8,
    "sliding_window_attention._bwd_dq_kernel": 192,
    "sliding_window_attention._fwd_kernel": 432,
}
_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64", "int32": "i32",
           "int64": "i64", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "u1"}


# --------------------------------------------------------------------------------------------- step 1: capture

def _is_constexpr(param: inspect.Parameter) -> bool:
    ann = param.annotation
    return ann is not inspect.Parameter.empty and "constexpr" in (ann if isinstance(ann, str) else repr(ann))


def _spec(fn, args, kwargs) -> dict:
    """One launch of the Python kernel function ``fn`` as a JSON-able spec."""
    import torch
    params = inspect.signature(fn).parameters
    names = list(params)
    values = dict(zip(names, args))
    options = {}
    for key, value in kwargs.items():
        if key in LAUNCH_OPTIONS:
            options[key] = value
        else:
            values[key] = value
    for name, param in params.items():
        if name not in values and param.default is not inspect.Parameter.empty:
            values[name] = param.default
    signature, constexprs, aligned = {}, {}, []
    for name in names:
        value = values[name]
        if _is_constexpr(params[name]) or value is None:
            if hasattr(value, "value"):  # tl.constexpr wrapper
                value = value.value
            constexprs[name] = value
            signature[name] = "constexpr"
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + _DTYPES[str(value.dtype).split(".")[-1]]
            aligned.append(name)  # real launches see 16-byte aligned allocations
        elif isinstance(value, bool):
            signature[name] = "u1"
        elif isinstance(value, int):
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0 and value != 0:
                aligned.append(name)  # what the launcher's specialisation would mark divisible by 16
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: argument {name} of unsupported type {type(value).__name__}")
    return {"module": fn.__module__, "kernel": fn.__name__, "signature": signature, "constexprs": constexprs,
            "aligned": aligned, "options": options}


@contextlib.contextmanager
def recording(specs: list, all_configs: bool | None = None):
    """Inside: Triton launches are recorded into ``specs`` instead of run, and launchers pick GPU configurations."""
    from triton.runtime import interpreter

    from flashts.ops import _common
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        raise RuntimeError("capture() needs TRITON_INTERPRET=1 set before triton is imported")
    original_run, original_gpu = interpreter.InterpretedFunction.run, _common.compiles_for_gpu

    from flashts.kernels import autotune

    def run(self, *args, grid, warmup, **kwargs):
        if not warmup:
            spec = _spec(self.fn, args, kwargs)
            if autotune.CURRENT is not None:
                spec["tune"] = autotune.CURRENT[1]
                c = autotune.CURRENT[2]
                spec["tune_config"] = repr(sorted(vars(c).items())) if hasattr(c, "__dict__") else repr(c)
            specs.append(spec)

    original_all = autotune.CAPTURE_ALL
    interpreter.InterpretedFunction.run = run
    _common.compiles_for_gpu = lambda device: True
    # every config of the autotune sets (FLASHTS_COMPILE_ALL_CONFIGS=1), else the defaults only
    autotune.CAPTURE_ALL = globals()["all_configs"]() if all_configs is None else all_configs
    try:
        yield specs
    finally:
        interpreter.InterpretedFunction.run = original_run
        _common.compiles_for_gpu = original_gpu
        autotune.CAPTURE_ALL = original_all


def all_configs() -> bool:
    """Whether captures include every config of the autotune sets (env FLASHTS_COMPILE_ALL_CONFIGS=1)."""
    return os.environ.get("FLASHTS_COMPILE_ALL_CONFIGS", "0") not in ("", "0")


def _scenarios():
    """(label, knobs, thunk) triples; each thunk calls ops forward and backward with the triton backend."""
    import torch

    import flashts

    def rnd(*shape, dtype):
        return torch.randn(*shape, dtype=torch.float32).to(dtype).requires_grad_()

    def backward(out):
        outs = [t for t in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(t, torch.Tensor)]
        leaves = [t for t in outs if t.requires_grad]
        torch.autograd.backward(leaves, [torch.ones_like(t) for t in leaves])

    def flat(out):
        items = []
        for t in out if isinstance(out, (tuple, list)) else (out,):
            items.extend(flat(t) if isinstance(t, (tuple, list)) else [t])
        return items

    def fb(fn):
        def thunk():
            backward(flat(fn()))
        return thunk

    cu = torch.tensor([0, 37, 37, 150], dtype=torch.int32)
    out = []
    for dt in (torch.bfloat16, torch.float32):
        n = str(dt).split(".")[-1]
        for D in (64, 128, 60):
            def linear(D=D, dt=dt, causal=True, state=False, cu_seqlens=None, T=150, feature_map="elu",
                       normalize=True, B=2, H=4, Hk=4):
                q, k, v = rnd(B, T, H, D, dtype=dt), rnd(B, T, Hk, D, dtype=dt), rnd(B, T, Hk, D, dtype=dt)
                N = B if cu_seqlens is None else cu_seqlens.numel() - 1
                st = (rnd(N, H, D, D, dtype=torch.float32), rnd(N, H, D, dtype=torch.float32)) if state else None
                return flashts.linear_attention(q, k, v, causal=causal, feature_map=feature_map, normalize=normalize,
                                                initial_state=st, output_final_state=True, cu_seqlens=cu_seqlens,
                                                backend="triton")
            out.append((f"linear causal {n} D={D}", {}, fb(linear)))
            # the one pass at a GPU-filling B·H (1 SM assumed: no Dv split, wide Dv tiles)
            out.append((f"linear causal one-pass {n} D={D}", {"flashts.kernels.linear_attention.FWD_MODE": "one_pass",
                                                             "flashts.kernels.occupancy.INTERPRETER_SMS": 1},
                        fb(linear)))
            out.append((f"linear non-causal {n} D={D}", {}, fb(lambda linear=linear: linear(causal=False))))
            for window in ((127, 0), (64, 64), (-1, -1), (-1, 0)):
                def swa(D=D, dt=dt, window=window, cu_seqlens=None, B=2, H=4, Hk=4, T=300):
                    q, k, v = rnd(B, T, H, D, dtype=dt), rnd(B, T, Hk, D, dtype=dt), rnd(B, T, Hk, D, dtype=dt)
                    return flashts.sliding_window_attention(q, k, v, window=window, cu_seqlens=cu_seqlens,
                                                            return_lse=True, backend="triton")
                out.append((f"swa {window} {n} D={D}", {}, fb(swa)))
        linear_cases = {
            "relu, no normalizer, state": dict(feature_map="relu", normalize=False, state=True),
            "identity, GQA": dict(feature_map="identity", H=4, Hk=2),
            "packed, state": dict(cu_seqlens=cu, state=True, B=1),
            "decode": dict(T=1, state=True),
        }
        for label, kw in linear_cases.items():
            def linear_case(kw=kw, dt=dt):
                B, H, Hk, T, D = kw.get("B", 2), kw.get("H", 4), kw.get("Hk", 4), kw.get("T", 150), 64
                q, k, v = rnd(B, T, H, D, dtype=dt), rnd(B, T, Hk, D, dtype=dt), rnd(B, T, Hk, D, dtype=dt)
                cs = kw.get("cu_seqlens")
                N = B if cs is None else cs.numel() - 1
                st = (rnd(N, H, D, D, dtype=torch.float32), rnd(N, H, D, dtype=torch.float32)) if kw.get("state") \
                    else None
                return flashts.linear_attention(q, k, v, feature_map=kw.get("feature_map", "elu"),
                                                normalize=kw.get("normalize", True), initial_state=st,
                                                output_final_state=True, cu_seqlens=cs, backend="triton")
            out.append((f"linear {label} {n}", {}, fb(linear_case)))
        for D in (64, 128):  # (the goal shapes run two passes at both head dims)
            out.append((f"linear two-pass forward {n} D={D}", {"flashts.kernels.linear_attention.FWD_MODE": "two_pass"},
                        fb(lambda dt=dt, D=D: flashts.linear_attention(
                            rnd(2, 150, 4, D, dtype=dt), rnd(2, 150, 4, D, dtype=dt), rnd(2, 150, 4, D, dtype=dt),
                            backend="triton"))))
        if dt != torch.float32:
            for D in (64, 128):
                out.append((f"linear input-dtype operands {n} D={D}",
                            {"flashts.kernels.linear_attention.HALF_DOT_OPERANDS": "input"},
                            fb(lambda dt=dt, D=D: flashts.linear_attention(
                                rnd(2, 150, 4, D, dtype=dt), rnd(2, 150, 4, D, dtype=dt), rnd(2, 150, 4, D, dtype=dt),
                                backend="triton"))))
        out.append((f"swa packed GQA {n}", {}, fb(lambda dt=dt: flashts.sliding_window_attention(
            rnd(1, 150, 4, 64, dtype=dt), rnd(1, 150, 2, 64, dtype=dt), rnd(1, 150, 2, 64, dtype=dt), window=(31, 0),
            cu_seqlens=cu, backend="triton"))))
        for mode in ("train", "infer"):
            for L, S in ((96, 96), (97, 60)):
                out.append((f"autocorr {mode} L={L} S={S} {n}", {}, fb(lambda dt=dt, mode=mode, L=L, S=S:
                            flashts.auto_correlation(rnd(2, L, 4, 64, dtype=dt), rnd(2, S, 4, 64, dtype=dt),
                                                     rnd(2, S, 4, 48, dtype=dt), mode=mode, backend="triton"))))
        for scan_mode in ("one_pass", "chunked"):
            knobs = {"flashts.kernels.prefix_scan.SCAN_MODE": scan_mode}
            for qshape in ((4, 64), (2, 4, 64)):
                def aaren(dt=dt, qshape=qshape, state=False, cu_seqlens=None, T=150, B=2):
                    q, k, v = rnd(*qshape, dtype=dt), rnd(B, T, 4, 64, dtype=dt), rnd(B, T, 4, 64, dtype=dt)
                    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
                    st = (torch.randn(N, 4), torch.rand(N, 4) + 0.5, torch.randn(N, 4, 64)) if state else None
                    return flashts.aaren_attention(q, k, v, initial_state=st, output_final_state=True,
                                                   cu_seqlens=cu_seqlens, backend="triton")
                out.append((f"aaren {scan_mode} q{list(qshape)} {n}", knobs, fb(aaren)))
            out.append((f"aaren {scan_mode} packed, state {n}", knobs,
                        fb(lambda dt=dt: flashts.aaren_attention(
                            rnd(4, 64, dtype=dt), rnd(1, 150, 4, 64, dtype=dt), rnd(1, 150, 4, 64, dtype=dt),
                            initial_state=(torch.randn(3, 4), torch.rand(3, 4) + 0.5, torch.randn(3, 4, 64)),
                            output_final_state=True, cu_seqlens=cu, backend="triton"))))
            for L in (64, 5):
                def latte(dt=dt, L=L, causal=True, state=False, cu_seqlens=None, T=150, B=2):
                    q, k, v = rnd(B, T, 4, L, dtype=dt), rnd(B, T, 4, L, dtype=dt), rnd(B, T, 4, 64, dtype=dt)
                    N = B if cu_seqlens is None else cu_seqlens.numel() - 1
                    st = (torch.randn(N, 4, L), torch.rand(N, 4, L) + 0.5, torch.randn(N, 4, L, 64)) if state else None
                    return flashts.latte_attention(q, k, v, causal=causal, initial_state=st,
                                                   output_final_state=causal, cu_seqlens=cu_seqlens, backend="triton")
                out.append((f"latte causal {scan_mode} L={L} {n}", knobs, fb(latte)))
                out.append((f"latte causal {scan_mode} L={L} state packed {n}", knobs,
                            fb(lambda latte=latte: latte(state=True, cu_seqlens=cu, B=1))))
            out.append((f"latte bidirectional {n}", {}, fb(lambda dt=dt: flashts.latte_attention(
                rnd(2, 150, 4, 64, dtype=dt), rnd(2, 150, 4, 64, dtype=dt), rnd(2, 150, 4, 64, dtype=dt), causal=False,
                backend="triton"))))
        for causal, L_K in ((True, 300), (False, 300), (False, 97)):  # ProbSparse (Informer)
            for D in (64, 128):
                out.append((f"prob_sparse causal={causal} L_K={L_K} {n} D={D}", {}, fb(
                    lambda dt=dt, causal=causal, L_K=L_K, D=D: flashts.prob_sparse_attention(
                        rnd(2, 300, 4, D, dtype=dt), rnd(2, L_K, 2, D, dtype=dt), rnd(2, L_K, 2, D, dtype=dt),
                        causal=causal, backend="triton"))))
        for left in (31, -1):  # Latte Macchiato (fused forward; its backward is the window and Latte kernels')
            out.append((f"macchiato left={left} {n}", {}, fb(lambda dt=dt, left=left: flashts.latte_macchiato_attention(
                rnd(2, 150, 4, 64, dtype=dt), rnd(2, 150, 4, 64, dtype=dt), rnd(2, 150, 4, 64, dtype=dt),
                rnd(2, 150, 4, 17, dtype=dt), rnd(2, 150, 4, 16, dtype=dt), window=(left, 0), backend="triton"))))
        out.append((f"aaren decode {n}", {}, fb(lambda dt=dt: flashts.aaren_attention(
            rnd(4, 64, dtype=dt), rnd(2, 1, 4, 64, dtype=dt), rnd(2, 1, 4, 64, dtype=dt),
            initial_state=(torch.randn(2, 4), torch.rand(2, 4) + 0.5, torch.randn(2, 4, 64)), output_final_state=True,
            backend="triton"))))
        out.append((f"latte decode {n}", {}, fb(lambda dt=dt: flashts.latte_attention(
            rnd(2, 1, 4, 64, dtype=dt), rnd(2, 1, 4, 64, dtype=dt), rnd(2, 1, 4, 64, dtype=dt),
            initial_state=(torch.randn(2, 4, 64), torch.rand(2, 4, 64) + 0.5, torch.randn(2, 4, 64, 64)),
            output_final_state=True, backend="triton"))))
    return out


def capture(verbose: bool = False, only: str | None = None, all_configs: bool | None = None) -> list[dict]:
    """Distinct GPU launch specs of every scenario (see the module doc); ``only``: a regular expression that
    the scenario labels must match (e.g. ``"linear causal bfloat16 D=128"``); ``all_configs``: record every
    config of the autotune sets (default: env FLASHTS_COMPILE_ALL_CONFIGS)."""
    from bench.tune import knobs as set_knobs  # the knob setter of the tuning tool (restores on exit)
    specs: list = []
    errors = []
    with recording(specs, all_configs), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. the unverified-on-GPU warning of the Aaren kernels
        for label, knobs, thunk in _scenarios():
            if only is not None and not re.search(only, label):
                continue
            with contextlib.ExitStack() as stack:
                for path, value in knobs.items():
                    module, name = path.rsplit(".", 1)
                    stack.enter_context(set_knobs(importlib.import_module(module), {name: value}, None, None))
                before = len(specs)
                try:
                    thunk()
                except Exception as e:  # a launcher that fails on the host side is a failure too
                    errors.append(f"{label}: {type(e).__name__}: {e}")
                if verbose:
                    print(f"[capture] {label}: {len(specs) - before} launches", file=sys.stderr)
    if errors:
        raise RuntimeError("capture failed:\n" + "\n".join(errors))
    unique, seen = [], {}
    for s in specs:
        key = json.dumps({k: v for k, v in s.items() if k not in ("tune", "tune_config")}, sort_keys=True)
        if key not in seen:
            seen[key] = s
            unique.append(s)
        elif not s.get("tune"):  # a launch that is also a default somewhere stays a default
            seen[key]["tune"] = 0
    return unique


def _group(spec: dict) -> str:
    """What a non-default config is compiled once per: kernel, input dtype (its first pointer argument's),
    the config and the padded head dims."""
    dtype = next((t for t in spec["signature"].values() if t.startswith("*")), "")
    return json.dumps([spec["module"], spec["kernel"], dtype, spec.get("tune_config", spec["options"]),
                       {k: v for k, v in spec["constexprs"].items() if k in HEAD_DIMS}], sort_keys=True)


def representatives(specs: list[dict]) -> list[dict]:
    """The specs CI compiles (see the module doc): every spec of a default config (``tune`` absent or 0),
    then one spec of each group of non-default ones (:func:`_group`), the one with the widest TILE_DIM."""
    out = [s for s in specs if not s.get("tune")]
    best: dict = {}
    for s in specs:
        if s.get("tune"):
            g = _group(s)
            if g not in best or s["constexprs"].get(TILE_DIM, 0) > best[g]["constexprs"].get(TILE_DIM, 0):
                best[g] = s
    return out + list(best.values())


def spill_excess(results: list[dict]) -> list[str]:
    """Compiled variants whose stack bytes exceed SPILL_ALLOWANCE (as readable lines)."""
    out = []
    for r in results:
        name = f"{r.get('module', '?').rsplit('.', 1)[-1]}.{r['kernel']}"
        if r.get("stack", 0) > SPILL_ALLOWANCE.get(name, 0):
            out.append(f"{name} {r['options']} {r.get('constexprs', {})}: {r['stack']} B > allowed "
                       f"{SPILL_ALLOWANCE.get(name, 0)} B")
    return out


# --------------------------------------------------------------------------------------------- step 2: compile

def _resources(cubin: bytes) -> dict:
    from triton.backends.nvidia import compiler as nv  # noqa: F401  (ships cuobjdump next to ptxas)
    tool = os.path.join(os.path.dirname(nv.__file__), "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        text = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(path)
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)", text)
    return {"registers": int(m.group(1)), "stack": int(m.group(2)), "shared": int(m.group(3))} if m else {}


def compile_spec(spec: dict, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    kernel = getattr(importlib.import_module(spec["module"]), spec["kernel"])
    names = list(spec["signature"])
    constexprs = {(names.index(n),): v for n, v in spec["constexprs"].items()}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in spec["aligned"]}
    src = ASTSource(fn=kernel, signature=spec["signature"], constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(spec["options"]))
    out = {"module": spec["module"], "kernel": spec["kernel"], "options": spec["options"],
           "constexprs": spec["constexprs"], "signature": spec["signature"], "tune": spec.get("tune", 0)}
    out.update(_resources(compiled.asm["cubin"]))
    out["metadata_shared"] = compiled.metadata.shared
    return out


def _compile_one(job):
    spec, arch = job
    try:
        return compile_spec(spec, arch)
    except Exception as e:
        return {"module": spec["module"], "kernel": spec["kernel"], "options": spec["options"],
                "constexprs": spec["constexprs"], "tune": spec.get("tune", 0),
                "error": f"{type(e).__name__}: {str(e)[-2000:]}"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("specs", help="JSON list written by capture()")
    ap.add_argument("--arch", type=int, default=90, help="compute capability ×10 (90: H100, 80: A100)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET for the compile step", file=sys.stderr)
        return 2
    with open(args.specs) as f:
        specs = json.load(f)
    jobs = [(s, args.arch) for s in specs]
    results = []
    with contextlib.ExitStack() as stack:
        if args.jobs > 1:
            import multiprocessing as mp
            pool = stack.enter_context(mp.get_context("spawn").Pool(args.jobs))
            stream = pool.imap(_compile_one, jobs, chunksize=1)
        else:
            stream = map(_compile_one, jobs)
        for r in stream:  # printed as they come (a run cut short keeps what it compiled)
            results.append(r)
            print(json.dumps(r, sort_keys=True), flush=True)
    failed = sum("error" in r for r in results)
    import triton
    print(f"# triton {triton.__version__}, sm_{args.arch}: {len(results)} kernel variants, {failed} failed, "
          f"{sum(1 for r in results if r.get('stack'))} with spills", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
