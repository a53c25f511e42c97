"""What `python -m bench` and `python -m bench.e2e_forecast` leave behind and print: run with their defaults (tiny
flags) in a fresh clone, they write only into the git-ignored ./flashts-results/ (`git status --porcelain` stays
empty); the summary table with the spread, skip counting, the load warning, the progress labels."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from bench import registry, report, runner

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _git(cwd, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True, timeout=120).stdout


@pytest.fixture
def clone(tmp_path):
    """A fresh repository holding this working tree's files (tracked and new, not ignored), committed."""
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    files = _git(ROOT, "ls-files", "-co", "--exclude-standard", "-z").split("\0")
    dst = tmp_path / "flashts-clone"
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    _git(dst, "init", "-q")
    _git(dst, "add", "-A")
    _git(dst, "commit", "-q", "-m", "snapshot")
    return dst


def test_default_commands_leave_a_clean_clone(clone):
    """`python -m bench` and `python -m bench.e2e_forecast` with their default outputs (tiny sizes), run in one
    interpreter started in the clone (what `-m` runs is each module's main(); one torch import instead of two)."""
    pytest.importorskip("statsmodels", reason="the e2e forecast needs statsmodels (pip install statsmodels)")
    code = (
        "import sys\n"
        "from bench.__main__ import main as bench\n"
        "from bench.e2e_forecast import main as e2e\n"
        "rc = bench(['--quick', '--device', 'cpu', '--T', '32', '--ops', 'linear', '--impls', 'torch', '--no-progress'])\n"
        "rc = rc or e2e(['--preset', 'tiny', '--attn', 'linear', '--device', 'cpu', '--no-progress'])\n"
        "sys.exit(rc)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FLASHTS_POISON", "PYTHONPATH")}
    env["OMP_NUM_THREADS"] = "1"
    p = subprocess.run([sys.executable, "-c", code], cwd=clone, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "Summary" in p.stdout and "flashts-torch" in p.stdout
    assert _git(clone, "status", "--porcelain", "--untracked-files=all") == ""
    out = clone / "flashts-results"
    assert any(f.suffix == ".json" for f in out.iterdir()), list(out.iterdir())
    assert {"e2e.json", "e2e.md", "forecast.png"} <= {f.name for f in (out / "e2e_cpu").iterdir()}


def test_results_flag_targets_the_repository_folder():
    from bench import __main__ as bench_main, e2e_forecast
    args = bench_main.parse_args(["--results"])
    assert args.out == bench_main.RESULTS_DIR and args.out.endswith(os.path.join("bench", "results"))
    assert bench_main.parse_args([]).out == "flashts-results"
    with pytest.raises(SystemExit):
        bench_main.parse_args(["--results", "--out", "x"])
    e2e_args = e2e_forecast.build_parser().parse_args(["--results"])
    assert e2e_args.results and e2e_args.out is None


def test_every_flag_has_help_and_presets_are_shown():
    from bench import __main__ as bench_main, e2e_forecast
    import argparse
    parser = e2e_forecast.build_parser()
    for action in parser._actions:
        assert action.help, action.option_strings
    text = parser.format_help()
    for name in e2e_forecast.PRESETS:
        assert f"  {name}: " in text
    assert "presets: cpu 96, gpu max, tiny 48" in " ".join(text.split())
    captured = []
    orig = argparse.ArgumentParser.parse_args
    try:  # the bench parser is built inside parse_args: capture it
        argparse.ArgumentParser.parse_args = lambda self, a=None, n=None: captured.append(self) or orig(self, a, n)
        bench_main.parse_args([])
    finally:
        argparse.ArgumentParser.parse_args = orig
    for action in captured[0]._actions:
        assert action.help, action.option_strings


def _row(impl, mode, T, ms, **kw):
    return dict(op="linear_attention", impl=impl, mode=mode, dtype="float32", B=1, T=T, H=2, D=8, Dv=8,
                params={"causal": True}, ms=ms, **kw)


def test_summary_table_spread_and_ratio():
    rows = [_row("flashts-torch", "fwd", 64, 2.0, ms_min=1.5, ms_max=3.0),
            _row("flashts-torch", "fwdbwd", 64, 8.0, ms_min=7.0, ms_max=9.5),
            _row("sdpa", "fwd", 64, 4.0, ms_min=3.9, ms_max=4.4),
            _row("sdpa", "fwdbwd", 64, 4.0, ms_min=3.0, ms_max=5.0),
            _row("flashts-torch", "fwd", 128, None, error="skipped: OOM at T=64")]
    text = report.summary_table(rows)
    line = next(l for l in text.splitlines() if "flashts-torch" in l and " 64 " in l)
    assert "2.00 [1.50–3.00]" in line and "8.00 [7.00–9.50]" in line
    assert "2.00× vs sdpa; 0.50× vs sdpa" in line
    assert runner.speed_summary(rows + [_row("sdpa", "fwd", 128, None, error="RuntimeError: x")]) == \
        "4/6 rows timed, 1 skipped, 1 with errors"


def test_spread_quartiles():
    s = runner.spread([4.0, 1.0, 3.0, 2.0, 5.0])
    assert s == {"ms": 3.0, "ms_min": 1.0, "ms_q1": 2.0, "ms_q3": 4.0, "ms_max": 5.0}


def test_load_warning(monkeypatch):
    monkeypatch.setattr(runner, "load_average", lambda: (12.5, 2))
    msg = runner.load_warning("cpu")
    assert msg and "12.5" in msg and "2 cores" in msg
    monkeypatch.setattr(runner, "load_average", lambda: (0.3, 2))
    assert runner.load_warning("cpu") is None


def test_progress_labels_tell_autocorr_modes_apart():
    cfgs = [c for c in registry.default_configs("cpu", True) if c.op == "auto_correlation"]
    train = registry.Config("auto_correlation", 1, 1, 4, 4, registry._freeze({"factor": 1.0, "mode": "train"}), (8,))
    infer = registry.Config("auto_correlation", 1, 1, 4, 4, registry._freeze({"factor": 1.0, "mode": "infer"}), (8,))
    a = runner.case_label(registry.Case(train, 8, "float32"))
    b = runner.case_label(registry.Case(infer, 8, "float32"))
    assert a != b and "train" in a and "infer" in b
    assert cfgs  # the quick sweep has auto-correlation rows at all


def test_gpu_timing_keeps_do_bench_quantiles(monkeypatch):
    """The GPU path asks do_bench for min/quartiles/max (no GPU here: do_bench is replaced, the call checked)."""
    triton_testing = pytest.importorskip("triton.testing")
    seen = {}

    def fake_do_bench(fn, warmup=25, rep=100, grad_to_none=None, quantiles=None, return_mode="mean"):
        seen["quantiles"] = quantiles
        return [1.0, 2.0, 3.0, 4.0, 5.0]

    monkeypatch.setattr(triton_testing, "do_bench", fake_do_bench)
    import torch
    r = runner.Runner(torch.device("cpu"))
    ms, reps = r._gpu_time(lambda: None, [])
    assert seen["quantiles"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert ms == 3.0 and r._spread == {"ms_min": 1.0, "ms_q1": 2.0, "ms": 3.0, "ms_q3": 4.0, "ms_max": 5.0}
