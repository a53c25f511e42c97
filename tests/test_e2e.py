"""Smoke tests of the end-to-end forecasting script ``python -m bench.e2e_forecast`` (tiny preset, CPU).

Trains the forecaster with every attention for a few steps on the real vic-elec series (bundled with
statsmodels, which CI installs: these tests must not skip) and checks that the JSON, markdown and PNG are
written and every metric is finite; also the multivariate data set, ``--compare-backends`` and the errors.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bench import e2e_forecast as e2e

TINY = ["--preset", "tiny", "--device", "cpu", "--no-progress"]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_tiny_preset_every_attention(tmp_path):
    rc = e2e.main(TINY + ["--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "e2e.json").read_text())
    assert report["preset"] == "tiny" and report["data"]["name"] == "vic-elec"
    assert report["data"]["steps"] == 3600 and report["data"]["channels"] == 1
    assert report["meta"]["device_type"] == "cpu"
    rows = {r["attention"]: r for r in report["results"]}
    assert list(rows) == list(e2e.ATTENTIONS)
    for name, r in rows.items():
        assert not r.get("error"), r.get("error")
        for key in ("test_mse", "test_mae", "val_mse", "s_per_epoch", "warmup_s", "total_s"):
            assert _finite(r[key]) and r[key] >= 0, (name, key, r[key])
        assert r["peak_mb"] is None or _finite(r["peak_mb"])
        assert r["steps"] == 3 and len(r["loss_curve"]) == 3 and all(map(_finite, r["loss_curve"]))
        assert r["params"] > 0
        assert np.isfinite(np.asarray(r["forecast"])).all()
        assert np.asarray(r["forecast"]).shape == (report["config"]["horizon"], 1)
        assert r["backend"] == (None if name == "full" else "torch")  # "auto" on CPU tensors
    assert _finite(report["reference"]["mse"])
    md = (tmp_path / "e2e.md").read_text()
    assert "| attention | backend | test MSE |" in md
    for name in e2e.ATTENTIONS:
        assert f"| {name} |" in md
    png = (tmp_path / "forecast.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_same_seed_same_run(tmp_path):
    """Fixed seeds and data order: two runs give the same loss curve and metrics."""
    args = TINY + ["--attn", "latte", "--no-plot"]
    assert e2e.main(args + ["--out", str(tmp_path / "a")]) == 0
    assert e2e.main(args + ["--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "e2e.json").read_text())["results"][0] for d in "ab")
    assert a["loss_curve"] == b["loss_curve"] and a["test_mse"] == b["test_mse"]


def test_multivariate_dataset(tmp_path):
    rc = e2e.main(TINY + ["--dataset", "macrodata", "--lookback", "16", "--horizon", "4", "--attn", "full,autocorr",
                          "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "e2e.json").read_text())
    assert report["data"]["channels"] == 12 and report["data"]["steps"] == 203
    for r in report["results"]:
        assert _finite(r["test_mse"]) and np.asarray(r["forecast"]).shape == (4, 12)
    assert (tmp_path / "forecast.png").exists()


def test_compare_backends(tmp_path):
    """torch vs the Triton interpreter on CPU under the test set-up (TRITON_INTERPRET=1), else torch vs torch."""
    rc = e2e.main(TINY + ["--attn", "full", "linear", "--compare-backends", "--compare-steps", "2",
                          "--out", str(tmp_path)])
    report = json.loads((tmp_path / "compare_backends.json").read_text())
    (comp,) = report["comparisons"]  # 'full' has no flashts backend: skipped
    assert comp["attention"] == "linear" and comp["backends"][0] == "torch"
    assert all(len(c) == 2 for c in comp["curves"].values())
    assert comp["ok"] and rc == 0, comp
    assert "| linear |" in (tmp_path / "compare_backends.md").read_text()
    assert (tmp_path / "compare_backends.png").exists()


def test_model_shapes_and_lookback_max():
    data = e2e.WindowData(e2e.load_vic_elec(), 64, 8, torch.device("cpu"))
    assert data.split == {"train": 2520, "val": 360, "test": 720}
    x, m, y = data.batch(data.starts["test"][:3])
    assert x.shape == (3, 64, 1) and m.shape == (3, 64, 4) and y.shape == (3, 8, 1)
    # val/test targets lie inside their split; the first test target is the first test step
    assert int(data.starts["test"][0]) + 64 == 2520 + 360
    assert int(data.starts["test"][-1]) + 64 + 8 == 3600
    # standardised with the training part only
    assert abs(float(data.data[:2520].mean())) < 1e-4 and abs(float(data.data[:2520].std()) - 1) < 1e-3
    for attention in e2e.ATTENTIONS:
        cfg = e2e.ModelConfig(attention, 1, 4, 64, 8, d_model=32, n_heads=2, layers=1, d_ff=32, backend="torch")
        out = e2e.Forecaster(cfg)(x, m)
        assert out.shape == (3, 8, 1) and torch.isfinite(out).all()
    assert e2e.max_lookback(3600, 96) == 2048 and e2e.max_lookback(2284, 96) == 1024


def test_clear_errors(tmp_path, capsys, monkeypatch):
    assert e2e.main(TINY + ["--lookback", "5000", "--out", str(tmp_path)]) == 2
    assert "do not fit in the training part" in capsys.readouterr().err
    assert e2e.main(TINY + ["--attn", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown" in capsys.readouterr().err
    # the package that ships the data is missing: say what to install
    monkeypatch.setattr(e2e.importlib.util, "find_spec", lambda name, *a: None)
    assert e2e.main(TINY + ["--out", str(tmp_path)]) == 2
    assert "pip install statsmodels" in capsys.readouterr().err
