"""``python -m bench.decode``: latency of one streaming step (T = 1 with a carried state) per op and backend.

The ops that stream — linear attention (causal), Aaren, Latte (causal) and Latte Macchiato (window (63, 0), a
full window cache) — are called the way a decoder calls
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

On CPU (without ``--backends``) each op gets the peers of issue 19, timed INTERLEAVED (``--rounds`` rounds; in
each round every variant runs ``--iters`` calls in turn) so that a shared machine's load drifts over all of them
alike; the table gives the median wall-clock µs per call and its ratio to the hand-written update (ratio of
medians), and the same for this thread's CPU time (``time.thread_time``: without the waits for a core):

* ``torch`` — the public function with T = 1 (its eager fast path, :mod:`flashts.ops._fast_step`);
* ``torch-general`` — the same call through the general path (full validation + custom op): the cost before;
* ``step-fn`` / ``step-fn-inplace`` — :mod:`flashts.torch_ops.step` called directly (``inplace=True``: the
  state is updated in the caller's tensors, nothing reallocated);
* ``hand`` — the update written by hand in plain PyTorch, no checks (the baseline);
* ``nn-step`` / ``nn-step-inplace`` — the ``flashts.nn`` layer's ``step(x_t, state)`` (d_model = H·D), against
  ``nn-hand`` — the same layer's projections around the hand-written update (the layer baseline).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch

import flashts
from flashts import _backend

from .runner import load_average, metadata, slug

OPS = ("linear_attention", "aaren_attention", "latte_attention", "latte_macchiato_attention")
# the ops with hand-written CPU peers (issue 19's interleaved comparison); Macchiato gets the backend rows only
CPU_PEER_OPS = ("linear_attention", "aaren_attention", "latte_attention")
WINDOW = 63  # Macchiato's local window (left), a full cache of 63 tokens


def _inputs(op: str, B: int, H: int, D: int, Dv: int, L: int, dtype, device, gen):
    """The positional inputs of one step (q, k, v; Macchiato also mix, latent_k) and a valid float32 state
    (positive normalisers, finite maxima; Macchiato: a full window cache)."""
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
    if op == "latte_macchiato_attention":
        q, k, v = rnd(B, 1, H, D), rnd(B, 1, H, D), rnd(B, 1, H, Dv)
        mix, lk = rnd(B, 1, H, L + 1), rnd(B, 1, H, L)
        k_win, v_win = rnd(B, WINDOW, H, D), rnd(B, WINDOW, H, Dv)
        n_win = torch.full((B,), WINDOW, dtype=torch.int32, device=device)
        m = rnd(B, H, L, dt=torch.float32)
        a = rnd(B, H, L, dt=torch.float32).abs() + 1.0
        S = rnd(B, H, L, Dv, dt=torch.float32)
        return (q, k, v, mix, lk), (k_win, v_win, n_win, m, a, S), dict(window=(WINDOW, 0))
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
    elif op == "latte_macchiato_attention":
        # Latte's float32 state; q, k, v, mix (L+1), latent_k (L) read, o written; the right-aligned window cache
        # (input dtype) read and written whole (every slot moves one place left)
        state = B * H * L * (2 + Dv) * 4
        io = B * H * (2 * D + 2 * Dv + 2 * L + 1) * itemsize + 2 * B * H * WINDOW * (D + Dv) * itemsize
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
# every CPU variant, in the order of the table; the ratio column divides by BASELINE[variant]
CPU_VARIANTS = ("torch", "torch-general", "step-fn", "step-fn-inplace", "hand", "nn-step", "nn-step-inplace",
                "nn-hand")
BASELINE = {v: ("nn-hand" if v.startswith("nn-") else "hand") for v in CPU_VARIANTS}


def _layer(op: str, H: int, D: int, L: int):
    """The flashts.nn layer of ``op`` with d_model = H·D (head dim D), torch backend, float32, eval mode."""
    import flashts.nn as fnn
    if op == "linear_attention":
        layer = fnn.LinearAttention(H * D, H, backend="torch")
    elif op == "aaren_attention":
        layer = fnn.Aaren(H * D, H, backend="torch")
    else:
        layer = fnn.Latte(H * D, H, n_latents=L, backend="torch")
    return layer.eval()


def nn_hand_step(op: str, layer, x_t, state):
    """A user's step around the same projections: project, the hand-written update, out_proj."""
    B, H = x_t.shape[0], layer.n_heads
    if op == "aaren_attention":
        q = layer.query
    else:
        q = layer.q_proj(x_t).view(B, 1, H, -1)
    k = layer.k_proj(x_t).view(B, 1, H, -1)
    v = layer.v_proj(x_t).view(B, 1, H, -1)
    o, new = hand_step(op, q, k, v, state)
    return layer.out_proj(o.reshape(B, -1)), new


def _cpu_variants(op: str, q, k, v, state, kw, layer, x_t):
    """name -> (fn returning (out, new_state), in_place). In-place variants get their own state copy."""
    from flashts.ops import _fast_step
    fn_op = getattr(flashts, op)

    def general(q, k, v, st):
        _fast_step.ENABLED = False
        try:
            return fn_op(q, k, v, **kw, initial_state=st, output_final_state=True, backend="torch")
        finally:
            _fast_step.ENABLED = True
    return {
        "torch": (lambda q, k, v, st: fn_op(q, k, v, **kw, initial_state=st, output_final_state=True,
                                            backend="torch"), False),
        "torch-general": (general, False),
        "step-fn": (_step_fn(op, False), False),
        "step-fn-inplace": (_step_fn(op, True), True),
        "hand": (lambda q, k, v, st: hand_step(op, q, k, v, st), False),
        "nn-step": (lambda q, k, v, st: layer.step(x_t, st), False),
        "nn-step-inplace": (lambda q, k, v, st: layer.step(x_t, st, inplace=True), True),
        "nn-hand": (lambda q, k, v, st: nn_hand_step(op, layer, x_t, st), False),
    }


def cpu_compare(op: str, q, k, v, state, kw, ref_o, ref_state, args) -> list[dict]:
    """The CPU variants of one op: checked (the op-level ones against the float64 torch step, the layer ones
    against the layer's float64 forward), then timed interleaved. Rows with median µs and the ratio to the
    baseline (``vs_base``: ratio of medians; ``vs_base_rounds``: median of the per-round ratios)."""
    layer = _layer(op, args.H, args.D, args.L)
    x_t = torch.randn(args.B, args.H * args.D, generator=torch.Generator().manual_seed(1))
    ref_layer = copy.deepcopy(layer).double()
    with torch.no_grad():
        y_ref, st_ref = ref_layer(x_t.double().unsqueeze(1), tuple(s.double() for s in state),
                                  output_final_state=True)
    variants = _cpu_variants(op, q, k, v, state, kw, layer, x_t)
    rows, calls = {}, {}
    for name, (fn, inplace) in variants.items():
        row = dict(op=op, backend=name, B=args.B, H=args.H, D=args.D, Dv=args.D,
                   L=args.L if op == "latte_attention" else None, dtype=args.dtype, eager_us=None, graph_us=None,
                   rel_err=None, error=None, baseline=BASELINE[name], vs_base=None, vs_base_rounds=None,
                   min_us=None, vs_base_min=None, cpu_us=None, vs_base_cpu=None)
        rows[name] = row
        try:
            with torch.no_grad():
                o, new = fn(q, k, v, tuple(x.clone() for x in state))
            if name.startswith("nn-"):
                err = max([_rel(o, y_ref[:, 0])] + [_rel(a, b) for a, b in zip(new, st_ref)])
            else:
                err = max([_rel(o, ref_o)] + [_rel(a, b) for a, b in zip(new, ref_state)])
            row["rel_err"] = err
            if not err <= 1e-4:
                raise RuntimeError(f"wrong output: relative error {err:.3g} > 1e-4")
            st = tuple(x.clone() for x in state) if inplace else state   # in place: values drift, cost does not
            calls[name] = (lambda fn=fn, st=st: fn(q, k, v, st))
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
    times = {name: [] for name in calls}   # wall clock, µs per call, one entry per round
    cpu = {name: [] for name in calls}     # this thread's CPU time (not counting time descheduled by other load)
    with torch.no_grad():
        for fn in calls.values():
            fn()
        for _ in range(args.rounds):
            for name, fn in calls.items():
                c, t = time.thread_time(), time.perf_counter()
                for _ in range(args.iters):
                    fn()
                times[name].append((time.perf_counter() - t) * 1e6 / args.iters)
                cpu[name].append((time.thread_time() - c) * 1e6 / args.iters)

    def median(xs):
        return sorted(xs)[len(xs) // 2]
    med = {name: median(ts) for name, ts in times.items()}
    med_cpu = {name: median(ts) for name, ts in cpu.items()}
    for name, row in rows.items():
        if name not in med:
            continue
        row["eager_us"] = med[name]
        row["cpu_us"] = med_cpu[name]
        row["min_us"] = min(times[name])
        row["us_rounds"] = times[name]
        row["cpu_us_rounds"] = cpu[name]
        base = row["baseline"]
        if base in med:
            row["vs_base"] = med[name] / med[base]
            row["vs_base_cpu"] = med_cpu[name] / med_cpu[base]
            row["vs_base_min"] = row["min_us"] / min(times[base])
            ratios = sorted(a / b for a, b in zip(times[name], times[base]))
            row["vs_base_rounds"] = ratios[len(ratios) // 2]
    return list(rows.values())


def run(args) -> dict:
    load_start = (load_average() or (None,))[0]
    device = torch.device(args.device)
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[args.dtype]
    gen = torch.Generator().manual_seed(0)
    rows = []
    ops = [o for o in OPS if o in args.ops] if args.ops else list(OPS)
    for op in ops:
        xs, state, kw = _inputs(op, args.B, args.H, args.D, args.D, args.L, dtype, device, gen)
        q, k, v = xs[:3]
        fn_op = getattr(flashts, op)
        # the float64 torch-backend step is the oracle (integer state entries, Macchiato's n_win, stay integers)
        ref_o, ref_state = fn_op(*(x.cpu().double() for x in xs), **kw, backend="torch",
                                 initial_state=tuple(s.cpu().double() if s.is_floating_point() else s.cpu()
                                                     for s in state), output_final_state=True)
        nbytes = step_bytes(op, args.B, args.H, args.D, args.D, args.L, q.element_size())
        if device.type == "cpu" and not args.backends and dtype == torch.float32 and op in CPU_PEER_OPS:
            # issue 19's comparison: every CPU variant, timed interleaved
            for row in cpu_compare(op, q, k, v, state, kw, ref_o, ref_state, args):
                row.update(bytes=nbytes, floor_us=nbytes / (args.hbm_gbps * 1e3))
                rows.append(row)
                if not args.quiet:
                    print(_line(row), file=sys.stderr)
            continue
        backends = args.backends or [b for b in ("torch", "triton", "cuda")
                                     if b in _backend.implemented(op) and _backend.available(b, device)]
        if op not in CPU_PEER_OPS:
            backends = [b for b in backends if b not in CPU_PEERS]
            if device.type == "cpu" and not args.backends:
                backends = ["torch"]   # the default CPU run: no Triton interpreter rows (slow, not a CPU path)
        for be in backends:
            row = dict(op=op, backend=be, B=args.B, H=args.H, D=args.D, Dv=args.D,
                       L=args.L if op in ("latte_attention", "latte_macchiato_attention") else None, dtype=args.dtype, bytes=nbytes,
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
                        return fn_op(*xs, **kw, initial_state=state, output_final_state=True, backend=be)
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
    meta = metadata(device, ["python", "-m", "bench.decode"] + list(args.argv))
    return dict(meta, load_average=load_start, load_average_end=meta["load_average"], hbm_gbps=args.hbm_gbps,
                rounds=args.rounds, iters=args.iters, rows=rows)


def _fmt(x):
    return "–" if x is None else (f"{x:.3g}" if x < 100 else f"{x:.0f}")


def _line(r: dict) -> str:
    vs = (f", {r['vs_base']:.2f}× {r['baseline']} (CPU time {r['vs_base_cpu']:.2f}×)" if r.get("vs_base") is not None
          else "")
    return (f"[decode] {r['op']:<17} {r['backend']:<15} eager {_fmt(r['eager_us'])} µs{vs}, graph "
            f"{_fmt(r['graph_us'])} µs, floor {_fmt(r['floor_us'])} µs, rel err {_fmt(r['rel_err'])}"
            + (f"  ({r['error']})" if r["error"] else ""))


def markdown(data: dict) -> str:
    r0 = data["rows"][0] if data["rows"] else {}
    cpu = any(r.get("baseline") for r in data["rows"])
    lines = [
        "# flashts decode step (T = 1 with a carried state)", "",
        f"device **{data['device']}**, torch {data['torch']}, triton {data['triton']}, CUDA {data['cuda']}, "
        f"commit `{(data['commit'] or '?')[:12]}`, date {data['date']}, {data.get('torch_threads')} torch "
        f"thread(s), load average {data.get('load_average')} at the start"
        + (f", {data['load_average_end']} at the end" if data.get("load_average_end") is not None else "") + ".",
        "", f"Command: `{' '.join(data['command'])}`", "",
        f"B={r0.get('B')} H={r0.get('H')} D=Dv={r0.get('D')} (Latte: L={data['rows'][-1].get('L') if data['rows'] else '?'}"
        f" latents), {r0.get('dtype')} inputs, float32 states. Time per step in µs: eager (one launch sequence per "
        f"call, Python included) and replayed from a captured CUDA graph. Floor = the step's minimum bytes at "
        f"{data['hbm_gbps']:g} GB/s. rel err = max relative error of o and the new state vs the float64 torch step"
        + (" (nn rows: of y and the new state vs the layer's float64 forward)" if cpu else "") + "."]
    if cpu:
        lines += ["", f"CPU variants timed interleaved: {data.get('rounds')} rounds × {data.get('iters')} calls each. "
                  "`wall µs` = median over rounds of the wall-clock time per call; `× base` = its ratio to the "
                  "baseline's median (`hand` for op-level rows, `nn-hand` for layer rows); `per round` = median "
                  "over rounds of the same-round ratio; `CPU µs` / `× base (CPU)` = the same with this thread's "
                  "CPU time (`time.thread_time`), which leaves out the time the thread waited for a core on a "
                  "shared machine."]
        lines += ["", "| op | variant | wall µs | × base | per round | CPU µs | × base (CPU) | rel err | note |",
                  "|---|---|---|---|---|---|---|---|---|"]
    else:
        lines += ["", "| op | backend | eager µs | graph µs | floor µs | bytes | rel err | note |",
                  "|---|---|---|---|---|---|---|---|"]

    def ratio(x):
        return "–" if x is None else f"{x:.2f}"
    for r in data["rows"]:
        if cpu:
            lines.append(f"| {r['op']} | {r['backend']} | {_fmt(r['eager_us'])} | {ratio(r.get('vs_base'))} "
                         f"({r.get('baseline')}) | {ratio(r.get('vs_base_rounds'))} | {_fmt(r.get('cpu_us'))} | "
                         f"{ratio(r.get('vs_base_cpu'))} | {_fmt(r['rel_err'])} | {r['error'] or ''} |")
        else:
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
    ap.add_argument("--iters", type=int, default=None, help="calls per timed batch (default 200 GPU, 10 CPU)")
    ap.add_argument("--rounds", type=int, default=31, help="CPU: interleaved rounds per variant (median taken)")
    ap.add_argument("--tag", default="", help="appended to the output file names (decode_<device>_<date>_<tag>)")
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
    args.iters = args.iters or (200 if cuda else 10)
    data = run(args)
    os.makedirs(args.out, exist_ok=True)
    stem = f"decode_{slug(data['device'])}_{data['date'][:10]}" + (f"_{args.tag}" if args.tag else "")
    with open(os.path.join(args.out, stem + ".json"), "w") as f:
        json.dump(data, f, indent=1)
    with open(os.path.join(args.out, stem + ".md"), "w") as f:
        f.write(markdown(data))
    print(os.path.join(args.out, stem + ".md"))
    return 0 if all(r["error"] is None or r["error"].startswith("graph capture") for r in data["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
