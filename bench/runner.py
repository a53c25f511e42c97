"""Run cases: correctness guard, timing and peak memory, one row per op × impl × mode × dtype × T.

Per case (a config at one T and dtype) the inputs are made once; then for every implementation:

1. **Guard.** The implementation's forward runs on the full case inputs (this is also its first warm-up)
   and its output is compared with an oracle on a cheap slice (batch 0, the first ≤ 2 heads; the whole
   input for auto-correlation, whose correlation mixes heads and batch): ``max_rel_err`` =
   max|out − oracle| / max|oracle|. Oracles, first that applies (recorded in the row's ``check``):
   ``reference`` — ``flashts.reference`` in float64 when its dense tensor is small (≤ 2^24 elements);
   ``torch-backend`` — the flashts torch backend in float64 (not used to check the torch backend itself);
   ``reference-prefix-<t>`` — the reference on the first t steps, compared on the outputs that only
   depend on them (causal ops and sliding windows); ``torch-backend-f64`` — the torch backend checked
   against itself in float64 (last resort); ``none`` — no oracle (the time is reported, unchecked).
   Above the tolerance (:data:`TOL`) or with non-finite values the row gets ``error`` and no time.
   Reference points that compute a different function (dense SDPA next to a linear-time op) are not
   checked (``check: "n/a"``).
2. **Memory.** Over the second call (after one warm-up): GPU: ``torch.cuda.max_memory_allocated()``
   after ``reset_peak_memory_stats()``, minus the memory allocated before the call (inputs, layout copies,
   masks, cotangent). CPU: peak RSS growth (``/proc/self/clear_refs`` resets VmHWM; glibc is told to serve every
   allocation ≥ 64 KiB by mmap and trims its heap first, so freed memory is not reused invisibly); null
   where that is not possible.
3. **Time.** GPU: ``triton.testing.do_bench(..., return_mode="median")`` (its own warm-up, L2 flush,
   grads set to None between runs). CPU: wall-clock median of ≥ ``min_reps`` runs after the warm-up
   (more until ``budget_s`` is spent, at most ``max_reps``). A second call (the memory one) slower than
   ``max_seconds`` is reported as a single run (``timing`` says so) and larger T of that series are
   skipped; so are larger T after an OOM. The warm-up's time is never reported. Every timed row also has its
   spread: ``ms_min``, ``ms_q1``, ``ms_q3``, ``ms_max`` (quartiles of the timed runs; on GPU of do_bench's).

``fwd`` runs with inputs that do not require grad; ``fwdbwd`` runs forward then
``out.backward(grad_out)`` with leaves requiring grad (a fixed random cotangent made beforehand).
Errors and OOM are caught per row (memory is freed and the run continues).
"""
from __future__ import annotations

import ctypes
import gc
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from .registry import EXTRA_INPUTS, Case, Config, Impl, is_causal, make_inputs, op_kwargs

# tolerance of max|out − oracle| / max|oracle| per dtype of the timed implementation
TOL = {"float64": 1e-6, "float32": 5e-3, "float16": 2e-2, "bfloat16": 6e-2}
# largest dense tensor (elements) the reference oracle may build
REF_BUDGET = 1 << 24
GUARD_HEADS = 2


# --------------------------------------------------------------------------------------- machine info

def cpu_name() -> str:
    name = platform.processor() or platform.machine() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return f"{name} ({cores} cores)"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return s or "device"


def load_average() -> tuple[float, int] | None:
    """(1-minute load average, CPU cores this process may use), or None where unknown."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return load, cores


def load_warning(device_type: str = "cpu") -> str | None:
    """A warning when the machine is busier than its cores (timings then come out slow and noisy), else None."""
    la = load_average()
    if la is None or la[0] <= la[1]:
        return None
    load, cores = la
    what = "CPU timings" if device_type == "cpu" else "launch-bound GPU timings"
    return (f"WARNING: load average {load:.1f} on {cores} cores (more runnable work than cores): {what} will be "
            "slower and noisier than on a quiet machine (see the min–max spread); rerun when the machine is idle "
            "before citing them")


def quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile of an already sorted, non-empty list."""
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def spread(times_ms: list[float]) -> dict:
    """median and spread (min, quartiles, max) of run times in ms."""
    t = sorted(times_ms)
    return {"ms": quantile(t, 0.5), "ms_min": t[0], "ms_q1": quantile(t, 0.25), "ms_q3": quantile(t, 0.75),
            "ms_max": t[-1]}


def case_label(case: Case) -> str:
    """The case as the progress bar shows it, with the options that tell an op's configs apart
    (auto-correlation's train/infer mode, causal or not, the window)."""
    p = case.config.p
    extra = []
    if "mode" in p:
        extra.append(str(p["mode"]))
    if "causal" in p:
        extra.append("causal" if p["causal"] else "bidir")
    if "window" in p:
        extra.append("window=" + ",".join(str(x) for x in tuple(p["window"])))
    return case.label() + (f" [{' '.join(extra)}]" if extra else "")


def git_commit() -> str | None:
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if out.returncode != 0 or not out.stdout.strip():
            return None
        commit = out.stdout.strip()
        # a copied working tree (e.g. on a lent GPU machine) can carry stale git metadata: say so
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=10)
        return commit + ("+dirty" if status.returncode == 0 and status.stdout.strip() else "")
    except Exception:
        return None


def metadata(device: torch.device, argv=None) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = None
    return {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": list(sys.argv if argv is None else argv),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average": (load_average() or (None,))[0],
    }


# ------------------------------------------------------------------------------------------ CPU memory

class RssMeter:
    """Peak RSS growth (MB) of one call on Linux, or None where it cannot be measured.

    ``measure`` switches glibc to mmap every allocation ≥ 64 KiB (so a freed block is returned to the
    kernel and a new one is counted again), trims the heap, resets VmHWM via ``/proc/self/clear_refs``
    and reads VmHWM − VmRSS(before). Afterwards glibc goes back to a 32 MiB mmap threshold (the ceiling
    of its default dynamic threshold) so timings see ordinary allocator behaviour.
    """
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3

    def __init__(self):
        self.libc = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._read("VmHWM")
            self.libc = ctypes.CDLL("libc.so.6")
            self.libc.malloc_trim.argtypes = [ctypes.c_size_t]
            self.timing_mode()
        except Exception:
            self.libc = None
        self.ok = self.libc is not None

    @staticmethod
    def _read(key: str) -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
        raise KeyError(key)

    def timing_mode(self):
        if self.libc is not None:
            self.libc.mallopt(self.M_MMAP_THRESHOLD, 32 << 20)
            self.libc.mallopt(self.M_TRIM_THRESHOLD, 64 << 20)

    def measure(self, call):
        """Run ``call()``; return (its result, peak RSS growth in MB or None)."""
        if not self.ok:
            return call(), None
        self.libc.mallopt(self.M_MMAP_THRESHOLD, 64 << 10)
        self.libc.mallopt(self.M_TRIM_THRESHOLD, 128 << 10)
        self.libc.malloc_trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            base = self._read("VmRSS")
            out = call()
            peak = self._read("VmHWM") - base
        finally:
            self.timing_mode()
        return out, max(peak, 0.0)


# -------------------------------------------------------------------------------------------- oracle

def _ref_cost(config: Config, T: int, heads: int) -> int:
    """Elements of the biggest dense tensor flashts.reference builds for batch 1, ``heads`` heads."""
    op = config.op
    if op in ("linear_attention", "sliding_window_attention", "aaren_attention", "prob_sparse_attention"):
        return heads * T * T
    if op == "latte_attention":
        return heads * config.D * T * T if config.p.get("causal", True) else heads * config.D * T
    if op == "latte_macchiato_attention":
        return heads * (config.p["latents"] + 1) * T * T
    return 0  # auto_correlation: FFTs, O(B·H·E·L)


def prefix_lag(config: Config) -> int | None:
    """r such that outputs [0, t − r) depend only on inputs [0, t); None when no prefix is self-contained."""
    if config.op == "sliding_window_attention":
        right = tuple(config.p["window"])[1]
        return None if right < 0 else right
    if config.op == "prob_sparse_attention":
        return None  # the samples and the top-u rows depend on the whole length: no prefix is self-contained
    return 0 if is_causal(config) else None


def _slice_inputs(case: Case, inputs: dict, T: int, heads: int) -> dict:
    out = {}
    for n, x in inputs.items():
        if case.op == "aaren_attention" and n == "q":
            out[n] = x[:heads]
        else:
            out[n] = x[:1, :T, :heads]
    return out


def _call_op(case: Case, inputs: dict, dtype: torch.dtype, backend: str | None):
    import flashts
    from flashts import reference
    args = [inputs[n].to(dtype) for n in ("q", "k", "v") + EXTRA_INPUTS.get(case.op, ())]
    kw = op_kwargs(case.config)
    if backend is None:
        return getattr(reference, case.op)(*args, **kw)
    return getattr(flashts, case.op)(*args, **kw, backend=backend)


@dataclass
class OracleOut:
    kind: str           # what was used (goes into the row's "check")
    out: torch.Tensor   # oracle output (float64 / float32)
    T: int              # compare impl output [:1, :T_cmp, :heads] ...
    T_cmp: int
    heads: int          # -1: the whole tensor (auto-correlation)


class Oracle:
    """Lazily computed, cached oracle outputs of one case."""

    def __init__(self, case: Case, inputs: dict):
        self.case, self.inputs = case, inputs
        self.cache: dict = {}

    def _get(self, kind: str):
        if kind not in self.cache:
            try:
                self.cache[kind] = self._compute(kind)
            except Exception as e:  # an oracle that cannot run is simply not used
                self.cache[kind] = None
                self.cache[kind + ":error"] = f"{type(e).__name__}: {e}"
        return self.cache[kind]

    def _compute(self, kind: str):
        case, c, T = self.case, self.case.config, self.case.T
        heads = min(c.H, GUARD_HEADS)
        with torch.no_grad():
            if case.op == "auto_correlation":
                numel = max(x.numel() for x in self.inputs.values())
                dt = torch.float64 if numel <= REF_BUDGET else torch.float32
                backend = None if kind == "reference" else "torch"
                out = _call_op(case, self.inputs, dt, backend)
                return OracleOut(kind if dt == torch.float64 else kind + "-f32", out, T, T, -1)
            if kind == "reference":
                if _ref_cost(c, T, heads) > REF_BUDGET:
                    return None
                out = _call_op(case, _slice_inputs(case, self.inputs, T, heads), torch.float64, None)
                return OracleOut(kind, out, T, T, heads)
            if kind in ("torch-backend", "torch-backend-f64"):
                out = _call_op(case, _slice_inputs(case, self.inputs, T, heads), torch.float64, "torch")
                return OracleOut(kind, out, T, T, heads)
            if kind == "reference-prefix":
                lag = prefix_lag(c)
                if lag is None:
                    return None
                t = T
                while t > 1 and _ref_cost(c, t, heads) > REF_BUDGET:
                    t //= 2
                if t - lag < 1:
                    return None
                out = _call_op(case, _slice_inputs(case, self.inputs, t, heads), torch.float64, None)
                return OracleOut(f"reference-prefix-{t - lag}", out[:, :t - lag], t, t - lag, heads)
        raise ValueError(kind)

    def for_impl(self, impl: Impl) -> OracleOut | None:
        kinds = ["reference"]
        if impl.name != "flashts-torch":
            kinds.append("torch-backend")
        kinds.append("reference-prefix")
        if impl.name == "flashts-torch":
            kinds.append("torch-backend-f64")
        for kind in kinds:
            o = self._get(kind)
            if o is not None:
                return o
        return None

    def errors(self) -> str:
        return "; ".join(f"{k[:-6]}: {v}" for k, v in self.cache.items() if k.endswith(":error"))


def max_rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    dt = ref.dtype if ref.dtype in (torch.float64, torch.float32) else torch.float32
    out, ref = out.to(dt), ref.to(out.device, dt)
    if not torch.isfinite(out).all():
        return float("nan")
    den = ref.abs().max().item()
    num = (out - ref).abs().max().item()
    return num / den if den > 0 else num


def guard_compare(case: Case, out_bthd: torch.Tensor, oracle: OracleOut) -> float:
    if oracle.heads < 0:
        mine = out_bthd
    else:
        mine = out_bthd[:1, :oracle.T_cmp, :oracle.heads]
    if tuple(mine.shape) != tuple(oracle.out.shape):
        raise ValueError(f"output shape {tuple(mine.shape)} does not match the oracle's {tuple(oracle.out.shape)}")
    return max_rel_err(mine, oracle.out)


# -------------------------------------------------------------------------------------------- timing

def _is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    if isinstance(e, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    s = str(e).lower()
    return "out of memory" in s or "can't allocate memory" in s or "cannot allocate memory" in s


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    first = msg[0] if msg else ""
    return f"{type(e).__name__}: {first}"[:300]


class Runner:
    """Times implementations over configs; collects rows (``self.rows``)."""

    def __init__(self, device: torch.device, *, modes=("fwd", "fwdbwd"), dtypes=("float32",),
                 max_seconds: float | None = None, budget_s: float = 1.0, min_reps: int = 3, max_reps: int = 15,
                 warmup_ms: int = 25, rep_ms: int = 100, progress: bool = True, log=None, on_case_done=None,
                 time_limit: float | None = None):
        self.device = torch.device(device)
        self.gpu = self.device.type == "cuda"
        self.modes, self.dtypes = tuple(modes), tuple(dtypes)
        self.max_seconds = max_seconds if max_seconds is not None else (20.0 if self.gpu else 10.0)
        self.budget_s, self.min_reps, self.max_reps = budget_s, min_reps, max_reps
        self.warmup_ms, self.rep_ms = warmup_ms, rep_ms
        self.progress = progress
        self._log = log
        self.on_case_done = on_case_done
        self.time_limit = time_limit
        self.rss = None if self.gpu else RssMeter()
        self.rows: list[dict] = []
        self.notes: list[str] = []
        self._last_oom = False
        self._bar = None
        self._spread: dict | None = None

    # -- logging / progress
    def log(self, msg: str):
        self.notes.append(msg)
        if self._log is not None:
            self._log(msg)
        elif self._bar is not None and hasattr(self._bar, "write"):
            self._bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr)

    def _make_bar(self, total: int):
        if not self.progress:
            return None
        try:
            from tqdm.auto import tqdm
            return tqdm(total=total, file=sys.stderr, dynamic_ncols=True, leave=True)
        except Exception:
            return _PlainBar(total)

    def _sync(self):
        if self.gpu:
            torch.cuda.synchronize(self.device)

    def _free(self, failed: bool = False):
        """Release memory after a row. Tensors die by reference counting; after a failure on GPU (or an OOM
        anywhere) ``gc.collect`` also frees what a traceback's reference cycles hold (it is slow with torch
        loaded, ~0.2 s, so not after every row)."""
        if failed and (self.gpu or self._last_oom):
            gc.collect()
        self._last_oom = False
        if self.gpu:
            torch.cuda.empty_cache()

    # -- what runs
    def plan(self, configs: list[Config], impls: list[Impl]) -> list[tuple[Case, list[Impl]]]:
        """(case, implementations) in breadth-first order: ascending T across all configs (so a run cut
        short by ``time_limit`` still covers every op), configs in their given order at equal T."""
        out = []
        for c in configs:
            use = [i for i in impls if i.supports(c)]
            for dt in self.dtypes:
                if dt == "float64":
                    use_dt = [i for i in use if i.name == "flashts-torch"]
                else:
                    use_dt = use
                for T in c.Ts:
                    out.append((Case(c, T, dt), use_dt))
        order = {c: i for i, c in enumerate(configs)}
        out.sort(key=lambda ci: (ci[0].T, order[ci[0].config], self.dtypes.index(ci[0].dtype)))
        return out

    def run(self, configs: list[Config], impls: list[Impl]) -> list[dict]:
        plan = self.plan(configs, impls)
        total = sum(len(i) for _, i in plan) * len(self.modes)
        self._bar = self._make_bar(total)
        self._skip: dict = {}  # (config, dtype, impl, mode) -> reason for larger T
        t0 = time.time()
        try:
            for k, (case, case_impls) in enumerate(plan):
                if self.time_limit is not None and time.time() - t0 > self.time_limit:
                    left = sum(len(i) for _, i in plan[k:]) * len(self.modes)
                    self.log(f"time limit ({self.time_limit:g} s) reached: {len(plan) - k} cases ({left} rows) "
                             f"not run, from {plan[k][0].label()} on")
                    break
                self._run_case(case, case_impls)
                if self.on_case_done is not None:
                    self.on_case_done(self.rows)
        finally:
            if self._bar is not None:
                self._bar.close()
            self._bar = None
        return self.rows

    # -- one case
    def _row(self, case: Case, impl: Impl, mode: str) -> dict:
        c = case.config
        counts = impl.counts(case)[mode]
        row = {"op": c.op, "impl": impl.name, "mode": mode, "dtype": case.dtype, "B": c.B, "T": case.T, "H": c.H,
               "D": c.D, "Dv": c.Dv, "params": c.params_json(), "ms": None, "peak_mb": None, "tflops": None,
               "gbps": None, "max_rel_err": None, "check": None, "flops": int(counts[0]), "bytes": int(counts[1])}
        if impl.note:
            row["note"] = impl.note
        return row

    def _advance(self, case: Case, impl: Impl, mode: str):
        if self._bar is not None:
            self._bar.update(1)

    def _run_case(self, case: Case, impls: list[Impl]):
        if self._bar is not None:
            self._bar.set_description(f"{case_label(case)} inputs")
        try:
            inputs = make_inputs(case, self.device)
        except Exception as e:
            self._last_oom = _is_oom(e)
            err = "OOM making the inputs" if self._last_oom else _short(e)
            for impl in impls:
                for mode in self.modes:
                    row = self._row(case, impl, mode)
                    row["error"] = err
                    self.rows.append(row)
                    self._advance(case, impl, mode)
            self._free(failed=True)
            return
        oracle = Oracle(case, inputs)
        for impl in impls:
            self._run_impl(case, impl, inputs, oracle)
        del inputs, oracle
        self._free()

    def _series(self, case: Case, impl: Impl, mode: str):
        return (case.config, case.dtype, impl.name, mode)

    def _run_impl(self, case: Case, impl: Impl, inputs: dict, oracle: Oracle):
        rows = {m: self._row(case, impl, m) for m in self.modes}
        pending = []
        for m in self.modes:
            reason = self._skip.get(self._series(case, impl, m))
            if reason:
                rows[m]["error"] = reason
            else:
                pending.append(m)
        if pending:
            if self._bar is not None:
                self._bar.set_description(f"{case_label(case)} {impl.name} check")
            guard_err = self._guard(case, impl, inputs, oracle, rows, pending)
            if guard_err is not None:
                self._free(failed=True)
            for m in pending:
                rows[m]["max_rel_err"] = rows[pending[0]]["max_rel_err"]
                rows[m]["check"] = rows[pending[0]]["check"]
            for m in pending:
                if self._bar is not None:
                    self._bar.set_description(f"{case_label(case)} {impl.name} {m}")
                if guard_err is not None:
                    rows[m]["error"] = guard_err
                    if guard_err.startswith("OOM"):
                        self._skip[self._series(case, impl, m)] = f"skipped: OOM at T={case.T}"
                    self._advance(case, impl, m)
                    continue
                self._measure(case, impl, inputs, m, rows[m],
                              warmed_up=(m == "fwd"))
                self._free(failed="error" in rows[m])
                self._advance(case, impl, m)
        for m in self.modes:
            self.rows.append(rows[m])
            if m not in pending:
                self._advance(case, impl, m)

    def _guard(self, case, impl, inputs, oracle, rows, pending):
        """Forward on the full inputs (the fwd warm-up) + comparison with the oracle. Returns an error or None."""
        err = None
        first = rows[pending[0]]
        try:
            prep = impl.prepare(case, inputs, requires_grad=False)
            out = prep.fn()
            self._sync()
            if isinstance(out, (tuple, list)):
                out = out[0]
            if not impl.same_function(case.config):
                first["check"] = "n/a"
            else:
                o = oracle.for_impl(impl)
                if o is None:
                    first["check"] = "none"
                    msg = oracle.errors()
                    self.log(f"note: {impl.name} on {case.label()} is unchecked (no oracle{': ' + msg if msg else ''})")
                else:
                    e = guard_compare(case, prep.to_bthd(out), o)
                    first["check"] = o.kind
                    first["max_rel_err"] = e
                    tol = TOL[case.dtype]
                    if not (e <= tol):
                        err = f"wrong output: max_rel_err={e:.3g} > {tol:g} vs {o.kind}"
            del out, prep
        except Exception as e:  # noqa: BLE001 - any failure of the implementation becomes the row's error
            self._last_oom = _is_oom(e)
            err = "OOM" if self._last_oom else _short(e)
        return err

    def _measure(self, case: Case, impl: Impl, inputs: dict, mode: str, row: dict, warmed_up: bool = False):
        series = self._series(case, impl, mode)
        err = None
        try:
            prep = impl.prepare(case, inputs, requires_grad=(mode == "fwdbwd"))
            if mode == "fwd":
                call = prep.fn
            else:
                grad = [prep.grad_out]

                def call():
                    out = prep.fn()
                    if isinstance(out, (tuple, list)):
                        out = out[0]
                    if grad[0] is None:  # made once, at the warm-up, when the impl did not provide one
                        grad[0] = torch.randn_like(out)
                    out.backward(grad[0])
            leaves = prep.leaves
            ms, peak, note, reps = self._time(call, leaves, warmed_up)
            row["ms"], row["peak_mb"], row["reps"] = ms, peak, reps
            if self._spread is not None:
                row.update(self._spread)
            if note:
                row["timing"] = note
                self._skip[series] = f"skipped: {note} at T={case.T}"
            del prep, call, leaves
        except Exception as e:  # noqa: BLE001
            err = e
        if err is not None:
            oom = self._last_oom = _is_oom(err)
            row["error"] = "OOM" if oom else _short(err)
            row["ms"] = row["peak_mb"] = None
            if oom:
                self._skip[series] = f"skipped: OOM at T={case.T}"
            err = None
        if row["ms"]:
            secs = row["ms"] * 1e-3
            row["tflops"] = row["flops"] / secs / 1e12
            row["gbps"] = row["bytes"] / secs / 1e9

    def _clear(self, leaves):
        for t in leaves:
            t.grad = None

    def _timed_call(self, call, leaves, memory: bool):
        """One synchronised call: (seconds, peak MB beyond what was allocated before, or None)."""
        self._clear(leaves)
        self._sync()
        peak = None
        if memory and self.gpu:
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        if memory and self.rss is not None:
            _, peak = self.rss.measure(call)
        else:
            call()
        self._sync()
        secs = time.perf_counter() - t0
        if memory and self.gpu:
            peak = (torch.cuda.max_memory_allocated(self.device) - base) / 2**20
        self._clear(leaves)
        return secs, peak

    def _time(self, call, leaves, warmed_up: bool):
        """(median ms, peak MB, note or None, number of timed runs or None).

        Call 1 warms up (for fwd it was the guard's call: ``warmed_up``); call 2 measures the peak memory
        and decides whether the series is too slow; then the timed runs (their spread goes to ``self._spread``).
        """
        self._spread = None
        if not warmed_up:
            self._timed_call(call, leaves, memory=False)
        # the warm-up's time is never reported: it may include compilation / autotuning / lazy init
        t_meas, peak = self._timed_call(call, leaves, memory=True)
        if t_meas > self.max_seconds:
            return t_meas * 1e3, peak, f"single run ({t_meas:.1f} s > --max-seconds {self.max_seconds:g})", 1
        if self.gpu:
            ms, reps = self._gpu_time(call, leaves)
            return ms, peak, None, reps
        times = []
        while True:
            self._clear(leaves)
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
            if len(times) >= self.max_reps or (len(times) >= self.min_reps and sum(times) >= self.budget_s):
                break
        self._clear(leaves)
        self._spread = spread([t * 1e3 for t in times])
        return statistics.median(times) * 1e3, peak, None, len(times)

    def _gpu_time(self, call, leaves) -> tuple[float, int | None]:
        try:
            from triton.testing import do_bench
        except Exception:
            do_bench = None
        if do_bench is not None:
            qs = [0.0, 0.25, 0.5, 0.75, 1.0]
            res = do_bench(call, warmup=self.warmup_ms, rep=self.rep_ms, grad_to_none=leaves or None, quantiles=qs)
            if isinstance(res, (list, tuple)) and len(res) == len(qs):
                self._spread = dict(zip(("ms_min", "ms_q1", "ms", "ms_q3", "ms_max"), map(float, res)))
                return self._spread["ms"], None
            return float(res), None
        # fallback without triton: CUDA events, median of ~rep_ms worth of runs
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        self._sync()
        est = max(start.elapsed_time(end), 1e-3)
        n = max(5, min(1000, int(self.rep_ms / est)))
        times = []
        for _ in range(n):
            self._clear(leaves)
            start.record()
            call()
            end.record()
            self._sync()
            times.append(start.elapsed_time(end))
        self._spread = spread(times)
        return statistics.median(times), len(times)


class _PlainBar:
    """Minimal stand-in for tqdm: prints ``[i/n] description`` lines."""

    def __init__(self, total: int):
        self.total, self.n, self.desc = total, 0, ""

    def set_description(self, desc: str):
        self.desc = desc

    def update(self, k: int = 1):
        self.n += k
        print(f"[{self.n}/{self.total}] {self.desc}", file=sys.stderr, flush=True)

    def write(self, msg: str, file=None):
        print(msg, file=file or sys.stderr, flush=True)

    def close(self):
        pass


def speed_summary(rows: list[dict]) -> str:
    """``N/M rows timed, S skipped, E with errors``: a deliberate skip (a larger T after an OOM or a too slow
    smaller T) is a skip, not an error."""
    ok = [r for r in rows if r.get("ms") is not None]
    skipped = [r for r in rows if r.get("ms") is None and str(r.get("error", "")).startswith("skipped")]
    errors = len(rows) - len(ok) - len(skipped)
    out = f"{len(ok)}/{len(rows)} rows timed"
    if skipped:
        out += f", {len(skipped)} skipped"
    if errors:
        out += f", {errors} with errors"
    return out


__all__ = ["Runner", "metadata", "device_name", "slug", "TOL", "max_rel_err", "RssMeter", "speed_summary",
           "load_warning", "spread", "case_label"]
