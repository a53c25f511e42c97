"""Results JSON → markdown tables and PNG plots.

``python -m bench.report RESULTS.json [--no-plots]`` regenerates ``<stem>.md`` and the plots next to the
JSON; :func:`write_report` is what ``python -m bench`` calls.

Markdown: one section per op, one table per (op options + shapes, dtype): rows = T, columns =
implementation × mode with ``median ms · peak MB`` per cell (``OOM``, ``WRONG`` — failed the correctness
guard —, ``err``, or ``–`` for a skipped larger T), then for each flashts implementation and mode the
speed-up ``best baseline ms / flashts ms`` (> 1: flashts faster) with the name of that best baseline.
Baselines of an implementation: every other implementation in the table except the flashts GPU kernels
(``flashts-triton``/``flashts-cuda``), so the GPU kernels are also compared with the flashts torch backend,
and the dense SDPA reference point counts as a baseline.

Plots (matplotlib, Agg): ``<stem>_<op>_time.png`` and ``<stem>_<op>_memory.png``, log-log against T, one
subplot per table, one line per implementation × mode: one colour per implementation; fwd solid with filled
circles, fwdbwd dashed with hollow squares (told apart without colour too); the time plots shade the min–max
spread of each timed row.

:func:`summary_table` is the plain-text table ``python -m bench`` prints at the end: one line per op × shape ×
T × implementation with fwd and fwdbwd medians, their min–max spread, and the ratio against the best baseline.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import OrderedDict

IMPL_ORDER = ["flashts-torch", "flashts-triton", "flashts-cuda", "fla", "flex", "sdpa-mask", "sdpa", "autoformer", "loop"]
MODE_ORDER = ["fwd", "fwdbwd"]
OP_ORDER = ["linear_attention", "sliding_window_attention", "auto_correlation", "aaren_attention", "latte_attention"]


def _impl_key(name: str):
    return (IMPL_ORDER.index(name) if name in IMPL_ORDER else len(IMPL_ORDER), name)


def _params_label(params: dict) -> str:
    return ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v}" for k, v in sorted(params.items()))


def group_rows(rows: list[dict]) -> "OrderedDict[str, OrderedDict[tuple, list[dict]]]":
    """op → (params, B, H, D, Dv, dtype) → rows, in a stable order."""
    ops: OrderedDict = OrderedDict()
    order = {op: i for i, op in enumerate(OP_ORDER)}
    for r in sorted(rows, key=lambda r: (order.get(r["op"], 99), r["op"])):
        key = (json.dumps(r.get("params", {}), sort_keys=True), r["B"], r["H"], r["D"], r["Dv"], r["dtype"])
        ops.setdefault(r["op"], OrderedDict()).setdefault(key, []).append(r)
    return ops


def group_title(key: tuple) -> str:
    params, B, H, D, Dv, dtype = key
    p = _params_label(json.loads(params))
    dims = f"B={B} H={H} D={D} Dv={Dv}"
    return f"{p + ', ' if p else ''}{dims} — {dtype}"


def _fmt_num(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "?"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _fmt_T(T: int) -> str:
    return f"{T // 1024}k" if T >= 1024 and T % 1024 == 0 else str(T)


def _cell(r: dict | None) -> str:
    if r is None:
        return ""
    if r.get("ms") is None:
        err = r.get("error") or "err"
        if err.startswith("OOM"):
            return "OOM"
        if err.startswith("skipped"):
            return "–"
        if err.startswith("wrong output"):
            return "WRONG"
        return "err"
    mem = r.get("peak_mb")
    mem_s = f" · {_fmt_num(mem)} MB" if mem is not None else ""
    single = "¹" if r.get("timing") else ""
    return f"{_fmt_num(r['ms'])} ms{single}{mem_s}"


def baselines_for(impl: str, impls: list[str]) -> list[str]:
    """Implementations an impl's speed-up is measured against (see module doc)."""
    return [i for i in impls if i != impl and i not in ("flashts-triton", "flashts-cuda")
            and (impl != "flashts-torch" or not i.startswith("flashts-"))]


def markdown_table(rows: list[dict]) -> tuple[str, list[str]]:
    """One table for one group's rows; returns (table, error notes)."""
    impls = sorted({r["impl"] for r in rows}, key=_impl_key)
    modes = [m for m in MODE_ORDER if any(r["mode"] == m for r in rows)]
    Ts = sorted({r["T"] for r in rows})
    by = {(r["impl"], r["mode"], r["T"]): r for r in rows}
    cols = [(i, m) for i in impls for m in modes if any((i, m, T) in by for T in Ts)]
    flash = [i for i in impls if i.startswith("flashts-")]
    speed_cols = [(i, m) for i in flash for m in modes if baselines_for(i, impls)]
    head = ["T"] + [f"{i} {m}" for i, m in cols] + [f"{i} {m} speed-up" for i, m in speed_cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for T in Ts:
        cells = [str(T)] + [_cell(by.get((i, m, T))) for i, m in cols]
        for i, m in speed_cols:
            mine = by.get((i, m, T))
            best = None
            for b in baselines_for(i, impls):
                rb = by.get((b, m, T))
                if rb is not None and rb.get("ms") is not None and (best is None or rb["ms"] < best[1]):
                    best = (b, rb["ms"])
            if mine is None or mine.get("ms") is None or best is None:
                cells.append("")
            else:
                cells.append(f"{best[1] / mine['ms']:.2f}× vs {best[0]}")
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    seen = set()
    for r in sorted(rows, key=lambda r: (r["T"], _impl_key(r["impl"]), r["mode"])):
        err = r.get("error")
        if err and not err.startswith("skipped") and (r["impl"], r["mode"], err) not in seen:
            seen.add((r["impl"], r["mode"], err))
            notes.append(f"T={r['T']} {r['impl']} {r['mode']}: {err}")
    return "\n".join(lines), notes


def _ms_spread(r: dict | None) -> str:
    if r is None:
        return ""
    if r.get("ms") is None:
        return _cell(r)
    s = _fmt_num(r["ms"])
    if r.get("ms_min") is not None and r.get("ms_max") is not None:
        s += f" [{_fmt_num(r['ms_min'])}–{_fmt_num(r['ms_max'])}]"
    elif r.get("timing"):
        s += " (1 run)"
    return s


def summary_table(rows: list[dict]) -> str:
    """Plain-text summary: op, shape, T, impl, fwd / fwdbwd median ms [min–max], ratio vs the best baseline."""
    head = ["op", "shape", "dtype", "T", "impl", "fwd ms [min–max]", "fwdbwd ms [min–max]", "vs best baseline (fwd; fwdbwd)"]
    lines = []
    for op, groups in group_rows(rows).items():
        for key, grows in groups.items():
            params, B, H, D, Dv, dtype = key
            p = _params_label(json.loads(params))
            shape = (p + " " if p else "") + f"B={B} H={H} D={D} Dv={Dv}"
            impls = sorted({r["impl"] for r in grows}, key=_impl_key)
            by = {(r["impl"], r["mode"], r["T"]): r for r in grows}
            for T in sorted({r["T"] for r in grows}):
                for impl in impls:
                    if not any((impl, m, T) in by for m in MODE_ORDER):
                        continue
                    ratios = []
                    for m in MODE_ORDER:
                        mine, best = by.get((impl, m, T)), None
                        if impl.startswith("flashts-"):
                            for b in baselines_for(impl, impls):
                                rb = by.get((b, m, T))
                                if rb is not None and rb.get("ms") and (best is None or rb["ms"] < best[1]):
                                    best = (b, rb["ms"])
                        if mine is not None and mine.get("ms") and best is not None:
                            ratios.append(f"{best[1] / mine['ms']:.2f}× vs {best[0]}")
                        else:
                            ratios.append("–")
                    ratio = "; ".join(ratios) if impl.startswith("flashts-") else ""
                    lines.append([op.replace("_attention", ""), shape, dtype, str(T), impl,
                                  _ms_spread(by.get((impl, "fwd", T))), _ms_spread(by.get((impl, "fwdbwd", T))),
                                  ratio])
    if not lines:
        return "(no rows)"
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(l) for l in lines])


def markdown(data: dict) -> str:
    rows = data.get("rows", [])
    meta = [f"device **{data.get('device')}**", f"torch {data.get('torch')}"]
    if data.get("triton"):
        meta.append(f"triton {data['triton']}")
    if data.get("cuda"):
        meta.append(f"CUDA {data['cuda']}")
    if data.get("load_average") is not None:
        meta.append(f"load average {data['load_average']:.1f} at the start")
    meta.append(f"commit `{(data.get('commit') or 'unknown')[:12]}`")
    meta.append(f"date {data.get('date')}")
    out = ["# flashts benchmark", "", ", ".join(meta) + ".", ""]
    if data.get("command"):
        out += ["Command: `" + " ".join(data["command"]) + "`", ""]
    out += [
        "Cells: median time in ms · peak memory in MB beyond the inputs (GPU: `max_memory_allocated`; "
        "CPU: peak RSS growth). `OOM` out of memory, `WRONG` failed the correctness guard (no time reported), "
        "`err` failed (see the notes), `–` skipped after an OOM or a too slow smaller T, ¹ a single run. "
        "Speed-up = best baseline time / flashts time (> 1: flashts faster), naming that baseline.",
        "",
    ]
    for op, groups in group_rows(rows).items():
        out += [f"## {op}", ""]
        for key, grows in groups.items():
            table, notes = markdown_table(grows)
            out += [f"### {group_title(key)}", "", table, ""]
            if notes:
                out += ["Notes:", ""] + [f"- {n}" for n in notes[:20]]
                if len(notes) > 20:
                    out.append(f"- … and {len(notes) - 20} more (see the JSON)")
                out.append("")
    if data.get("notes"):
        out += ["## Run notes", ""] + [f"- {n}" for n in data["notes"]] + [""]
    return "\n".join(out)


def write_plots(data: dict, out_dir: str, stem: str, log=print) -> list[str]:
    """Write ``<stem>_<op>_time.png`` / ``_memory.png``; returns the paths (empty without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker  # noqa: F401
    except Exception as e:
        log(f"plots skipped: matplotlib not importable ({type(e).__name__}: {e}); pip install matplotlib")
        return []
    paths = []
    for op, groups in group_rows(data.get("rows", [])).items():
        for metric, ylabel, suffix in (("ms", "median time (ms)", "time"), ("peak_mb", "peak memory (MB)", "memory")):
            n = len(groups)
            ncols = min(2, n)
            nrows = math.ceil(n / ncols)
            fig, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols, 4.5 * nrows), squeeze=False,
                                     layout="constrained")
            impls = sorted({r["impl"] for g in groups.values() for r in g}, key=_impl_key)
            colors = {i: plt.get_cmap("tab10")(k % 10) for k, i in enumerate(impls)}
            for ax, (key, grows) in zip(axes.flat, groups.items()):
                drawn = False
                for impl in impls:
                    for mode in MODE_ORDER:
                        pts = sorted((r["T"], r[metric]) for r in grows
                                     if r["impl"] == impl and r["mode"] == mode and r.get(metric) is not None
                                     and r[metric] > 0)
                        if not pts:
                            continue
                        xs, ys = zip(*pts)
                        fwd = mode == "fwd"
                        ax.plot(xs, ys, marker="o" if fwd else "s", markersize=4 if fwd else 5,
                                markerfacecolor=colors[impl] if fwd else "none", markeredgecolor=colors[impl],
                                color=colors[impl], linestyle="-" if fwd else "--",
                                linewidth=1.5 if fwd else 1.0, label=f"{impl} {mode}")
                        if metric == "ms":
                            lo = [(r["T"], r["ms_min"], r["ms_max"]) for r in grows if r["impl"] == impl
                                  and r["mode"] == mode and r.get("ms_min") and r.get("ms_max")]
                            if len(lo) > 1:
                                lo.sort()
                                ax.fill_between([t for t, _, _ in lo], [a for _, a, _ in lo], [b for _, _, b in lo],
                                                color=colors[impl], alpha=0.12 if fwd else 0.06, linewidth=0)
                        drawn = True
                if drawn:
                    ax.set_xscale("log", base=2)
                    ax.set_yscale("log")
                    Ts = sorted({r["T"] for r in grows})
                    ax.set_xticks(Ts, [_fmt_T(T) for T in Ts])
                    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
                    ax.legend(fontsize=7, title="fwd: ●, solid   fwdbwd: □, dashed", title_fontsize=7)
                else:
                    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
                ax.set_title(group_title(key), fontsize=8)
                ax.set_xlabel("T")
                ax.set_ylabel(ylabel)
                ax.grid(True, which="both", alpha=0.3)
            for ax in list(axes.flat)[n:]:
                ax.axis("off")
            fig.suptitle(f"{op} — {data.get('device')}", fontsize=10)
            path = os.path.join(out_dir, f"{stem}_{op}_{suffix}.png")
            fig.savefig(path, dpi=100)
            plt.close(fig)
            paths.append(path)
    return paths


def write_report(data: dict, out_dir: str, stem: str, plots: bool = True, log=print) -> list[str]:
    """Write ``<stem>.md`` and (unless ``plots=False``) the PNG plots; returns the written paths."""
    md_path = os.path.join(out_dir, f"{stem}.md")
    with open(md_path, "w") as f:
        f.write(markdown(data))
    paths = [md_path]
    if plots:
        paths += write_plots(data, out_dir, stem, log=log)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.report", description="results JSON → markdown + plots")
    ap.add_argument("json", help="results file written by python -m bench")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    with open(args.json) as f:
        data = json.load(f)
    out_dir = os.path.dirname(os.path.abspath(args.json))
    stem = os.path.splitext(os.path.basename(args.json))[0]
    for p in write_report(data, out_dir, stem, plots=not args.no_plots, log=lambda m: print(m, file=sys.stderr)):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
