"""``python -m bench.decode``: latency of one streaming step (T = 1 with a carried state) per op and backend.

The ops that stream — linear attention (causal), Aaren and Latte (causal) — are called the way a decoder calls
them token by token::

    o, state = op(q_t, k_t, v_t, initial_state=state, output_final_state=True, backend=...)

and timed per call, eagerly and (on CUDA) as a captured CUDA graph replayed many times: the issue's goal for the
prefix-scan ops is a step under 20 µs at B = 64 (CUDA-graph friendly). Each row also gets

* the minimum bytes of one step (state read + written in float32, q/k/v read and o written once) and the time
  they take at the device's copy bandwidth (``--hbm-gbps``, default 3000 for an H100) — the floor;
* a correctness check of the step's output and new state against the torch backend in float64 (relative error).

Output: ``decode_<device>_<date>.json`` and ``.md`` in ``--out`` (default ``./flashts-results``; ``--results`` writes into ``bench/results``).

    python -m bench.decode                          # CUDA when available: B=64, H=8, D=Dv=64, L=64 latents
    python -m bench.decode --device cpu --B 4       # CPU (eager only)

On CPU each op also gets the peers of issue 19: ``hand`` (the update written by hand in plain PyTorch, no checks),
``step-fn`` / ``step-fn-inplace`` (:mod:`flashts.torch_ops.step` called directly, as the ``flashts.nn`` layers'
``step`` does), next to ``torch`` (the public function with T = 1: validation + custom op + the same step).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

import flashts
from flashts import _backend

from .runner import metadata, slug

OPS = ("linear_attention", "aaren_attention", "latte_attention")


def _inputs(op: str, B: int, H: int, D: int, Dv: int, L: int, dtype, device, gen):
    """q, k, v of one step and a valid float32 state (positive normalisers, finite maxima)."""
    def rnd(*shape, dt=dtype):
        return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dt)
    if op == "linear_attention":
        q, k, v = rnd(B, 1, H, D), rnd(B, 1, H, D), rnd(B, 1, H, Dv)
        S = rnd(B, H, D, Dv, dt=torch.float32).abs()
        z = rnd(B, H, D, dt=torch.float32).abs() + 1.0
        return (q, k, v), (S, z), {}
    if op == "aaren_attention":
        q, k, v = rnd(B, H, D), rnd(B, 1, H, D), rnd(B, 1, H, Dv)
        m = rnd(B, H, dt=torch.float32)
        u = rnd(B, H, dt=torch.float32).abs() + 1.0
        w = rnd(B, H, Dv, dt=torch.float32)
        return (q, k, v), (m, u, w), {}
    q, k, v = rnd(B, 1, H, L), rnd(B, 1, H, L), rnd(B, 1, H, Dv)
    m = rnd(B, H, L, dt=torch.float32)
    a = rnd(B, H, L, dt=torch.float32).abs() + 1.0
    S = rnd(B, H, L, Dv, dt=torch.float32)
    return (q, k, v), (m, a, S), dict(causal=True)


def step_bytes(op: str, B: int, H: int, D: int, Dv: int, L: int, itemsize: int) -> int:
    """Fewest bytes one step moves: the float32 state read and written, q/k/v read, o written."""
    if op == "linear_attention":
        state = B * H * (D * Dv + D) * 4
        io = B * H * (2 * D + 2 * Dv) * itemsize
    elif op == "aaren_attention":
        state = B * H * (2 + Dv) * 4
        io = B * H * (2 * D + 2 * Dv) * itemsize
    else:
        state = B * H * L * (2 + Dv) * 4
        io = B * H * (2 * L + 2 * Dv) * itemsize
    return 2 * state + io


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    den = ref.double().norm().item()
    num = (x.double().cpu() - ref.double().cpu()).norm().item()
    return num / den if den > 0 else num


def _time_eager(fn, device, iters: int) -> float:
    """Median over 5 batches of ``iters`` calls, in µs per call."""
    fn()
    meds = []
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize()
            t0 = torch.cuda.Event(enable_timing=True)
            t1 = torch.cuda.Event(enable_timing=True)
            t0.record()
            for _ in range(iters):
                fn()
            t1.record()
            torch.cuda.synchronize()
            meds.append(t0.elapsed_time(t1) * 1e3 / iters)
        else:
            t = time.perf_counter()
            for _ in range(iters):
                fn()
            meds.append((time.perf_counter() - t) * 1e6 / iters)
    meds.sort()
    return meds[len(meds) // 2]


def _time_graph(fn, iters: int) -> float:
    """Capture one call into a CUDA graph, replay ``iters`` times per batch; median µs per replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):          # warm-up on the side stream (compilation, allocator)
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return _time_eager(graph.replay, torch.device("cuda"), iters)


# ---------------------------------------------------------------------------------------- CPU step peers

def hand_step(op: str, q, k, v, state):
    """The step as a user writes it by hand (the baseline of issue 19): plain tensor ops on ``[B, 1, H, ·]``
    inputs and the float32 state, no checks. Returns ``(o [B, 1, H, Dv], new_state)``."""
    q, k, v = q.float(), k.float(), v.float()
    if op == "linear_attention":
        S, z = state
        fq, fk = torch.nn.functional.elu(q[:, 0]) + 1, torch.nn.functional.elu(k[:, 0]) + 1
        S = S + fk.unsqueeze(-1) * v[:, 0].unsqueeze(-2)
        z = z + fk
        o = torch.einsum("bhd,bhde->bhe", fq, S) / ((fq * z).sum(-1, keepdim=True) + 1e-6)
        return o.unsqueeze(1), (S, z)
    m, u, w = state
    if op == "aaren_attention":
        s = (q * k[:, 0]).sum(-1) * q.shape[-1] ** -0.5
        vv = v[:, 0]
    else:
        s = k[:, 0]
        vv = v[:, 0].unsqueeze(-2)
    m_new = torch.maximum(m, s)
    keep, new = torch.exp(m - m_new), torch.exp(s - m_new)
    u = u * keep + new
    w = w * keep.unsqueeze(-1) + new.unsqueeze(-1) * vv
    if op == "aaren_attention":
        o = w / u.unsqueeze(-1)
    else:
        o = torch.einsum("bhl,bhld->bhd", torch.softmax(q[:, 0], -1) / u, w)
    return o.unsqueeze(1), (m_new, u, w)


def _step_fn(op: str, inplace: bool):
    """flashts.torch_ops.step's function for ``op`` on ``[B, 1, H, ·]`` inputs (the direct T = 1 path)."""
    from flashts.torch_ops import step as st

    def fn(q, k, v, state):
        if op == "linear_attention":
            o, s = st.linear_step(q[:, 0], k[:, 0], v[:, 0], state, inplace=inplace)
        elif op == "aaren_attention":
            o, s = st.aaren_step(q, k[:, 0], v[:, 0], state, inplace=inplace)
        else:
            o, s = st.latte_step(q[:, 0], k[:, 0], v[:, 0], state, inplace=inplace)
        return o.unsqueeze(1), s
    return fn


CPU_PEERS = {"hand": lambda op: (lambda q, k, v, st: hand_step(op, q, k, v, st)),
             "step-fn": lambda op: _step_fn(op, False), "step-fn-inplace": lambda op: _step_fn(op, True)}


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[args.dtype]
    gen = torch.Generator().manual_seed(0)
    rows = []
    ops = [o for o in OPS if o in args.ops] if args.ops else list(OPS)
    for op in ops:
        (q, k, v), state, kw = _inputs(op, args.B, args.H, args.D, args.D, args.L, dtype, device, gen)
        fn_op = getattr(flashts, op)
        # the float64 torch-backend step is the oracle
        ref_o, ref_state = fn_op(*(x.cpu().double() for x in (q, k, v)), **kw, backend="torch",
                                 initial_state=tuple(s.cpu().double() for s in state), output_final_state=True)
        backends = args.backends or [b for b in ("torch", "triton", "cuda")
                                     if b in _backend.implemented(op) and _backend.available(b, device)]
        if device.type == "cpu" and not args.backends:
            backends = backends + list(CPU_PEERS)   # the hand-written step and the direct step functions
        nbytes = step_bytes(op, args.B, args.H, args.D, args.D, args.L, q.element_size())
        for be in backends:
            row = dict(op=op, backend=be, B=args.B, H=args.H, D=args.D, Dv=args.D,
                       L=args.L if op == "latte_attention" else None, dtype=args.dtype, bytes=nbytes,
                       floor_us=nbytes / (args.hbm_gbps * 1e3), eager_us=None, graph_us=None, rel_err=None,
                       error=None)
            try:
                if be in CPU_PEERS:
                    peer = CPU_PEERS[be](op)
                    # in place: the state buffers are updated every call (values drift, the cost does not)
                    st0 = tuple(x.clone() for x in state)

                    def step():
                        return peer(q, k, v, st0 if be.endswith("inplace") else state)
                    o, new_state = peer(q, k, v, tuple(x.clone() for x in state))
                else:
                    def step():
                        return fn_op(q, k, v, **kw, initial_state=state, output_final_state=True, backend=be)
                    o, new_state = step()
                err = max([_rel(o, ref_o)] + [_rel(a, b) for a, b in zip(new_state, ref_state)])
                row["rel_err"] = err
                tol = 2e-2 if dtype != torch.float32 else 1e-4
                if not err <= tol:
                    raise RuntimeError(f"wrong output: relative error {err:.3g} > {tol:g} vs the float64 torch step")
                row["eager_us"] = _time_eager(step, device, args.iters)
                if device.type == "cuda" and not args.no_graph:
                    try:
                        row["graph_us"] = _time_graph(step, args.iters)
                    except Exception as e:  # capture refused (a host sync inside the op, ...)
                        row["error"] = f"graph capture: {type(e).__name__}: {str(e)[:160]}"
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            rows.append(row)
            if not args.quiet:
                print(_line(row), file=sys.stderr)
    return dict(metadata(device, ["python", "-m", "bench.decode"] + list(args.argv)), hbm_gbps=args.hbm_gbps,
                rows=rows)


def _fmt(x):
    return "–" if x is None else (f"{x:.3g}" if x < 100 else f"{x:.0f}")


def _line(r: dict) -> str:
    return (f"[decode] {r['op']:<17} {r['backend']:<6} eager {_fmt(r['eager_us'])} µs, graph {_fmt(r['graph_us'])} µs,"
            f" floor {_fmt(r['floor_us'])} µs, rel err {_fmt(r['rel_err'])}" + (f"  ({r['error']})" if r["error"] else ""))


def markdown(data: dict) -> str:
    r0 = data["rows"][0] if data["rows"] else {}
    lines = [
        "# flashts decode step (T = 1 with a carried state)", "",
        f"device **{data['device']}**, torch {data['torch']}, triton {data['triton']}, CUDA {data['cuda']}, "
        f"commit `{(data['commit'] or '?')[:12]}`, date {data['date']}.", "",
        f"Command: `{' '.join(data['command'])}`", "",
        f"B={r0.get('B')} H={r0.get('H')} D=Dv={r0.get('D')} (Latte: L={data['rows'][-1].get('L') if data['rows'] else '?'}"
        f" latents), {r0.get('dtype')} inputs, float32 states. Time per step in µs: eager (one launch sequence per "
        f"call, Python included) and replayed from a captured CUDA graph. Floor = the step's minimum bytes at "
        f"{data['hbm_gbps']:g} GB/s. rel err = max relative error of o and the new state vs the float64 torch step.",
        "", "| op | backend | eager µs | graph µs | floor µs | bytes | rel err | note |", "|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['op']} | {r['backend']} | {_fmt(r['eager_us'])} | {_fmt(r['graph_us'])} | "
                     f"{_fmt(r['floor_us'])} | {r['bytes']} | {_fmt(r['rel_err'])} | {r['error'] or ''} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--ops", nargs="+", choices=OPS)
    ap.add_argument("--backends", nargs="+", choices=("torch", "triton", "cuda") + tuple(CPU_PEERS))
    ap.add_argument("--B", type=int, default=64)
    ap.add_argument("--H", type=int, default=8)
    ap.add_argument("--D", type=int, default=64, help="head dim (D = Dv)")
    ap.add_argument("--L", type=int, default=64, help="Latte latents")
    ap.add_argument("--dtype", default=None, help="bfloat16 (GPU default) / float32 (CPU default) / float16")
    ap.add_argument("--iters", type=int, default=None, help="calls per timed batch (default 200 GPU, 20 CPU)")
    ap.add_argument("--hbm-gbps", type=float, default=3000.0, help="copy bandwidth for the floor (H100 ≈ 3000)")
    ap.add_argument("--no-graph", action="store_true")
    ap.add_argument("--out", default=None,
                    help="output directory (default ./flashts-results, relative to the current folder, git-ignored)")
    ap.add_argument("--results", action="store_true",
                    help="write into the repository's bench/results, where committed runs live (instead of --out)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.results and args.out is not None:
        ap.error("--results and --out exclude each other")
    args.out = (os.path.join(os.path.dirname(os.path.abspath(__file__)), "results") if args.results
                else (args.out or "flashts-results"))
    args.argv = argv
    cuda = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.iters = args.iters or (200 if cuda else 20)
    data = run(args)
    os.makedirs(args.out, exist_ok=True)
    stem = f"decode_{slug(data['device'])}_{data['date'][:10]}"
    with open(os.path.join(args.out, stem + ".json"), "w") as f:
        json.dump(data, f, indent=1)
    with open(os.path.join(args.out, stem + ".md"), "w") as f:
        f.write(markdown(data))
    print(os.path.join(args.out, stem + ".md"))
    return 0 if all(r["error"] is None or r["error"].startswith("graph capture") for r in data["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
