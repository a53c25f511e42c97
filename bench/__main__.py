"""``python -m bench``: time every flashts backend and the peer baselines, write JSON + markdown + plots.

Examples::

    python -m bench                                   # default sweep for this device (GPU if present)
    python -m bench --quick --device cpu              # tiny smoke run (seconds)
    python -m bench --ops swa linear --T 4096 16384 --modes fwd --dtypes bf16 fp16
    python -m bench --ops autocorr --merge            # add/replace rows in today's results file
    python -m bench.report bench/results/<file>.json  # re-render tables and plots

Output: ``<out>/<device-slug>_<YYYY-MM-DD>[_<tag>].json`` (rewritten after every case, so an interrupted
run keeps what it measured), ``<same stem>.md`` and ``<stem>_<op>_{time,memory}.png``; ``<out>`` is
``./flashts-results`` (relative to the current folder, git-ignored) unless ``--out DIR`` or ``--results``
(the repository's ``bench/results``, for runs meant to be committed) says otherwise. At the end a summary
table (median ms with its min–max spread, ratio against the best baseline) goes to stdout, and a warning to
stderr when the machine was loaded. Run it from the repository root (``bench`` is not installed with flashts).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import torch

from . import registry
from .report import summary_table, write_report
from .runner import Runner, load_warning, metadata, slug, speed_summary

DEFAULT_OUT = "flashts-results"  # relative to the current folder; git-ignored in the repository
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")  # committed runs (--results)


def _split(values):
    """Accept both ``--ops a b`` and ``--ops a,b``."""
    if values is None:
        return None
    out = []
    for v in values:
        out += [x for x in str(v).split(",") if x.strip()]
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", nargs="+", help="ops to run (names or aliases: linear swa autocorr aaren latte)")
    ap.add_argument("--impls", nargs="+", help="implementations: flashts-torch flashts-triton flashts-cuda "
                    "(or torch triton cuda) sdpa sdpa-mask flex fla autoformer loop; default: all available")
    ap.add_argument("--modes", nargs="+", default=None, help="fwd fwdbwd (default both)")
    ap.add_argument("--dtypes", nargs="+", default=None, help="default: bfloat16 on GPU, float32 on CPU")
    ap.add_argument("--T", nargs="+", type=int, default=None, help="sequence lengths, replacing every config's sweep")
    ap.add_argument("--quick", action="store_true",
                    help="tiny smoke configuration (seconds): small B/H/D and T, 2-5 timed runs of at least "
                         "0.05 s per row on CPU, do_bench rep 30 ms on GPU, file tag 'quick'")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--out", default=None,
                    help=f"output directory (default ./{DEFAULT_OUT}, relative to the current folder)")
    ap.add_argument("--results", action="store_true",
                    help=f"write into the repository's bench/results ({RESULTS_DIR}), where committed runs live "
                         "(instead of --out)")
    ap.add_argument("--tag", default=None, help="suffix of the file stem (default 'quick' with --quick)")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    ap.add_argument("--no-summary", action="store_true", help="do not print the summary table at the end")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of an existing results file of the same name that this run does not redo")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="a call (after the warm-up) slower than this is reported as one run and larger T of "
                         "that series are skipped (default 20 on GPU, 10 on CPU)")
    ap.add_argument("--budget", type=float, default=None,
                    help="CPU: keep timing a row until this many seconds are spent (at least 3, at most 15 runs; "
                         "default 0.5, 0.05 with --quick)")
    ap.add_argument("--rep-ms", type=int, default=None,
                    help="GPU: do_bench repetition time per row in ms (default 100; 30 with --quick)")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="stop starting new cases after this many seconds, then write the results and report "
                         "(cases run in ascending T across all ops, so every op gets its small T first)")
    ap.add_argument("--list", action="store_true", help="print the plan (cases × implementations) and exit")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.results and args.out is not None:
        ap.error("--results and --out exclude each other")
    args.out = RESULTS_DIR if args.results else (args.out or DEFAULT_OUT)
    return args


def _row_key(r: dict) -> tuple:
    return (r["op"], r["impl"], r["mode"], r["dtype"], r["B"], r["T"], r["H"], r["D"], r["Dv"],
            json.dumps(r.get("params", {}), sort_keys=True))


def select_impls(requested, device: torch.device, ops, log) -> list:
    impls = registry.all_impls()
    names = {i.name for i in impls}
    wanted = None
    if requested:
        wanted = [registry.canonical_impl(n) for n in requested]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise SystemExit(f"unknown implementation(s) {unknown}; known: {sorted(names)}")
    out = []
    for impl in impls:
        if wanted is not None and impl.name not in wanted:
            continue
        if not any(impl.supports(registry.Config(op, 1, 1, 1, 1, _default_params(op))) for op in ops):
            continue
        ok, why = impl.available(device)
        if not ok:
            log(f"skipping {impl.name}: {why}")
            continue
        if impl.explicit_only and wanted is None:
            log(f"skipping {impl.name} on {device.type} (name it in --impls to run it)")
            continue
        out.append(impl)
    return out


def _default_params(op: str) -> tuple:
    """Options under which an impl's support is probed when choosing implementations."""
    return {
        "linear_attention": registry._freeze({"causal": True, "feature_map": "elu", "normalize": True}),
        "sliding_window_attention": registry._freeze({"window": (1, 0)}),
        "auto_correlation": registry._freeze({"factor": 1.0, "mode": "train"}),
        "latte_attention": registry._freeze({"causal": True}),
    }.get(op, ())


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.time()
    notes: list[str] = []

    def log(msg):
        notes.append(msg)
        print(msg, file=sys.stderr, flush=True)

    dev_name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(dev_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    ops = [registry.canonical_op(o) for o in _split(args.ops)] if args.ops else list(registry.OPS)
    modes = _split(args.modes) or list(registry.MODES)
    for m in modes:
        if m not in registry.MODES:
            raise SystemExit(f"--modes: expected fwd/fwdbwd, got {m!r}")
    busy = load_warning(device.type)
    if busy:
        log(busy)
    dtypes = [registry.canonical_dtype(d) for d in (_split(args.dtypes) or
                                                    (["bfloat16"] if device.type == "cuda" else ["float32"]))]
    if device.type == "cpu" and any(d in ("float16", "bfloat16") for d in dtypes):
        log("note: half-precision timings on CPU are not representative")
    configs = registry.select(registry.default_configs(device.type, args.quick), ops, args.T)
    impls = select_impls(_split(args.impls), device, ops, log)

    budget = args.budget if args.budget is not None else (0.05 if args.quick else 0.5)
    runner = Runner(device, modes=modes, dtypes=dtypes, max_seconds=args.max_seconds, budget_s=budget,
                    min_reps=2 if args.quick else 3, max_reps=5 if args.quick else 15,
                    warmup_ms=10 if args.quick else 25,
                    rep_ms=args.rep_ms if args.rep_ms is not None else (30 if args.quick else 100),
                    progress=not args.no_progress, time_limit=args.time_limit)
    plan = runner.plan(configs, impls)
    if args.list:
        for case, case_impls in plan:
            print(f"{case.op:26s} {case.config.label():60s} T={case.T:<6d} {case.dtype:9s} "
                  f"{' '.join(i.name for i in case_impls)}")
        print(f"{len(plan)} cases, {sum(len(i) for _, i in plan) * len(modes)} rows")
        return 0

    meta = metadata(device, argv=["python", "-m", "bench"] + list(sys.argv[1:] if argv is None else argv))
    tag = args.tag if args.tag is not None else ("quick" if args.quick else None)
    stem = f"{slug(meta['device'])}_{meta['date'][:10]}" + (f"_{slug(tag)}" if tag else "")
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, stem + ".json")
    old_rows = []
    if args.merge and os.path.exists(json_path):
        with open(json_path) as f:
            old_rows = json.load(f).get("rows", [])

    def payload(rows, finished):
        keys = {_row_key(r) for r in rows}
        merged = [r for r in old_rows if _row_key(r) not in keys] + list(rows)
        return dict(meta, notes=notes + runner.notes, finished=finished,
                    elapsed_s=round(time.time() - t_start, 1), rows=merged)

    def save(rows, finished=False):
        tmp = json_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(payload(rows, finished), f, indent=1)
        os.replace(tmp, json_path)

    runner.on_case_done = save
    interrupted = False

    def on_term(signum, frame):  # `timeout` sends SIGTERM: finish like Ctrl-C, writing what was measured
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        runner.run(configs, impls)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: writing the rows measured so far")
    finally:
        signal.signal(signal.SIGTERM, previous)
    save(runner.rows, finished=not interrupted)
    with open(json_path) as f:
        data = json.load(f)
    paths = [json_path] + write_report(data, args.out, stem, plots=not args.no_plots,
                                       log=lambda m: print(m, file=sys.stderr))
    if not args.no_summary:
        print(f"\nSummary ({meta['device']}, {', '.join(dtypes)}; median ms [min–max] of the timed runs):")
        print(summary_table(data["rows"]))
        print()
    busy_end = load_warning(device.type)
    if busy_end:
        print(busy_end.replace("will be", "were likely"), file=sys.stderr)
    print(f"{speed_summary(runner.rows)} in {time.time() - t_start:.0f} s", file=sys.stderr)
    for p in paths:
        print(p)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
