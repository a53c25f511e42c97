"""End-to-end forecasting with every attention of flashts: train a small time-series transformer on real data.

``python -m bench.e2e_forecast`` (or ``python bench/e2e_forecast.py``) trains the same compact forecaster once per
attention — ``full`` (PyTorch SDPA, the dense reference point), ``linear``, ``sliding``, ``autocorr`` (Autoformer),
``aaren`` and ``latte`` (the :mod:`flashts.nn` layers) — on a real series, with fixed seeds and a deterministic
data order, and reports per attention the test MSE and MAE (on the standardised scale), the training time per
epoch and the peak memory. It writes ``e2e.json``, ``e2e.md`` and ``forecast.png`` (one test window: the
forecasts of every attention against the truth) into ``--out`` (default ``./flashts-results/e2e_<cpu|cuda>``,
relative to the current folder and git-ignored; ``--results`` writes into the repository's
``bench/results/e2e_<cpu|cuda>``, where the README's cited runs live). Run it from the repository root.

Examples::

    python -m bench.e2e_forecast --preset cpu                    # all six attentions, about 2 minutes on 2 cores
    python -m bench.e2e_forecast --preset gpu --device cuda      # lookback 2048, bf16 autocast, one H100
    python -m bench.e2e_forecast --preset tiny --attn full linear --no-progress   # smoke run (seconds)
    python -m bench.e2e_forecast --preset gpu --compare-backends # torch vs triton/cuda loss curves

Data. Every series comes from the statsmodels package (``pip install statsmodels``; ``.ci/setup.sh`` installs
it), so nothing is downloaded at run time; without it the script stops and says what to install.
statsmodels bundles no series that is both long and multivariate, so:

* ``vic-elec`` (default): hourly electricity demand of Victoria, Australia, 2012-01-01 00:00 to 2012-05-29
  23:00 — 3,600 steps, 1 channel (plus calendar features: hour of day, day of week, day of month, day of
  year). It is the longest real series statsmodels ships: the file ``tsa/stl/tests/results/mstl_elec_vic.csv``
  that statsmodels keeps for its MSTL tests (in the wheels of statsmodels >= 0.14.2; 0.14.0 has no test data).
  Split 70/10/20 %: 2,520 / 360 / 720 steps.
* ``co2``: weekly atmospheric CO2 at Mauna Loa, 1958-03-29 to 2001-12-29 (``statsmodels.datasets.co2``) —
  2,284 steps, 1 channel (59 gaps, filled by linear interpolation); one of statsmodels' public data sets.
* ``macrodata``: US macroeconomic data, quarterly 1959Q1-2009Q3 (``statsmodels.datasets.macrodata``) —
  203 steps, 12 channels (real GDP, consumption, investment, ..., inflation, real interest rate): the
  multivariate one, only for short lookbacks (e.g. ``--lookback 24 --horizon 4``).

No bundled series reaches the 8,192-step lookbacks where the quadratic cost of full attention dominates: the
GPU preset uses the longest power-of-two lookback that still leaves >= 256 training windows (``--lookback
max``): 2,048 steps on vic-elec (377 training windows at horizon 96), 1,024 on co2.

Pipeline (as in the Informer/Autoformer code): a chronological 70/10/20 % train/val/test split, standardisation
with the mean and standard deviation of the training part only, sliding windows of ``lookback`` input steps and
``horizon`` target steps (validation and test windows may read their input from before their split; their
targets lie inside it), training windows in a seeded random order, validation and test windows in time order.
The reported model is the one of the epoch with the best validation MSE.

Model (:class:`Forecaster`, encoder-only, Autoformer/DLinear-style decomposition): per window, each channel is
normalised by its own mean and standard deviation over the lookback (and the forecast mapped back); a moving
average splits it into trend and seasonal parts; the trend goes to the horizon through a linear map over time;
the seasonal part is embedded (a circular 3-tap convolution over the channels + a linear embedding of the calendar
features + a sinusoidal position code), passes ``--layers`` pre-LayerNorm encoder layers ``x + attn(LN(x))``,
``x + FFN(LN(x))`` whose attention is the one chosen, and a linear head (``d_model`` -> channels per step, then
lookback -> horizon over time). The encoder attention is bidirectional where the mechanism has that form
(``full``, ``linear``, ``sliding`` with a symmetric window ``(w, w)``, ``autocorr``, ``latte``); ``aaren`` is
causal by construction (its last position still sees the whole window).

Measurements. Time per epoch: wall clock of the training steps of one epoch (synchronised on GPU), the mean over
epochs; one forward+backward of a throw-away copy of the model runs first, so Triton compilation is not in it
(it is in ``warmup_s``). Peak memory: on GPU ``torch.cuda.max_memory_allocated`` over training and evaluation
minus what was allocated before the model was built (so: parameters, optimiser state, activations, workspace);
on CPU the peak RSS growth of one steady-state training step (forward, backward, optimiser update), measured as
``python -m bench`` does (:class:`bench.runner.RssMeter`).

``--compare-backends`` trains each flashts attention with ``backend="torch"`` and with every kernel backend
available on the device (``triton``, ``cuda``), same seed, same batches, float32 (no autocast, no TF32,
deterministic cuDNN), for ``--compare-steps`` steps, and reports the largest difference between the per-step
training-loss curves (absolute, and relative to the torch loss); it exits 1 when one exceeds ``--compare-tol``.
On CPU the kernel backends exist only under ``TRITON_INTERPRET=1`` (the Triton interpreter: correct but very
slow, so use ``--preset tiny`` there); without it the comparison is torch against a second torch run, a
reproducibility check that must give identical curves. Output: ``compare_backends.json``, ``.md``, ``.png``.

Presets (every value can be overridden by its flag: ``--lookback --horizon --epochs --max-steps --d-model
--layers --batch-size`` ...): ``tiny`` (smoke test, seconds), ``cpu`` (all six attentions in about 2 minutes on 2
cores), ``gpu`` (lookback 2048, bf16 autocast, sized for all six attentions inside 3 minutes on one H100). The
default preset is ``gpu`` on a CUDA device and ``cpu`` otherwise.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if __package__ in (None, ""):  # run as `python bench/e2e_forecast.py`: make `bench` and `flashts` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flashts.nn  # noqa: E402
from flashts import _backend  # noqa: E402

from bench.runner import RssMeter, metadata  # noqa: E402

ATTENTIONS = ("full", "linear", "sliding", "autocorr", "aaren", "latte")
# the flashts op behind each attention (for the backend actually used and --compare-backends)
FLASHTS_OP = {
    "linear": "linear_attention",
    "sliding": "sliding_window_attention",
    "autocorr": "auto_correlation",
    "aaren": "aaren_attention",
    "latte": "latte_attention",
}
DATASETS = ("vic-elec", "co2", "macrodata")
SPLIT = (0.7, 0.1, 0.2)  # train / val / test fractions, chronological
MIN_TRAIN_WINDOWS = 256  # --lookback max keeps at least this many training windows
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")  # committed runs (--results)
DEFAULT_OUT = "flashts-results"  # relative to the current folder; git-ignored in the repository

PRESETS = {
    # smoke test: seconds for all six attentions on CPU
    "tiny": dict(dataset="vic-elec", lookback=48, horizon=12, d_model=32, n_heads=2, layers=1, d_ff=64,
                 batch_size=16, epochs=1, max_steps=3, eval_batches=2, latents=16, amp="none", compare_steps=3),
    # about 2 minutes for all six attentions on a 2-core CPU (one thread)
    "cpu": dict(dataset="vic-elec", lookback=96, horizon=24, d_model=64, n_heads=4, layers=2, d_ff=128,
                batch_size=32, epochs=3, max_steps=None, eval_batches=None, latents=16, amp="none", compare_steps=10),
    # long lookback on one GPU, bf16 autocast; sized for all six attentions inside 3 minutes on an H100
    "gpu": dict(dataset="vic-elec", lookback="max", horizon=96, d_model=128, n_heads=4, layers=2, d_ff=256,
                batch_size=16, epochs=8, max_steps=None, eval_batches=None, latents=32, amp="bf16",
                compare_steps=30),
}
COMMON = dict(dropout=0.1, lr=1e-3, window=None, factor=1.0, moving_avg=25, seed=0)


class DatasetUnavailable(RuntimeError):
    """The package (or the file) that holds the data set is missing: the message says what to install."""


# ------------------------------------------------------------------------------------------------- data

@dataclass
class Series:
    """A real multivariate (or univariate) series: ``values [T, C]`` at the time stamps ``stamps [T]``."""
    name: str
    description: str
    values: np.ndarray
    columns: list
    stamps: np.ndarray
    unit: str = ""


def _statsmodels_version() -> str:
    try:
        from importlib.metadata import version
        return version("statsmodels")
    except Exception:
        return "?"


def _statsmodels_dir() -> str:
    spec = importlib.util.find_spec("statsmodels")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailable(
            "the data sets of bench.e2e_forecast ship with statsmodels, which is not installed here: "
            "pip install statsmodels")
    return list(spec.submodule_search_locations)[0]


def load_vic_elec() -> Series:
    """Hourly electricity demand of Victoria (Australia), 3,600 hours from 2012-01-01, as statsmodels ships it."""
    root = _statsmodels_dir()
    path = os.path.join(root, "tsa", "stl", "tests", "results", "mstl_elec_vic.csv")
    if not os.path.isfile(path):
        raise DatasetUnavailable(
            f"statsmodels {_statsmodels_version()} ({root}) does not include tsa/stl/tests/results/mstl_elec_vic.csv "
            "(the wheels of statsmodels >= 0.14.2 do): pip install -U 'statsmodels>=0.14.2', or use another data "
            "set: --dataset co2")
    raw = np.loadtxt(path, delimiter=",", skiprows=1, dtype=str)
    stamps = raw[:, 0].astype("datetime64[h]")
    values = raw[:, 1].astype(np.float64)[:, None]
    return Series("vic-elec", "hourly electricity demand, Victoria (Australia), from statsmodels "
                  "(tsa/stl/tests/results/mstl_elec_vic.csv)", values, ["demand"], stamps)


def _import_statsmodels_datasets():
    _statsmodels_dir()  # a clear message when statsmodels is missing altogether
    try:
        import statsmodels.datasets as smd
    except ImportError as exc:
        raise DatasetUnavailable(f"statsmodels is installed but cannot be imported ({exc}): "
                                 "pip install -U statsmodels pandas scipy") from exc
    return smd


def load_co2() -> Series:
    """Weekly CO2 at Mauna Loa (ppm), 1958-2001, 2,284 steps; gaps filled by linear interpolation."""
    df = _import_statsmodels_datasets().co2.load_pandas().data
    y = df["co2"].to_numpy(dtype=np.float64)
    t = np.arange(len(y))
    ok = np.isfinite(y)
    y = np.interp(t, t[ok], y[ok])
    return Series("co2", "weekly atmospheric CO2 at Mauna Loa, statsmodels.datasets.co2", y[:, None], ["co2"],
                  df.index.to_numpy().astype("datetime64[D]"), unit="ppm")


def load_macrodata() -> Series:
    """US quarterly macroeconomic data 1959Q1-2009Q3: 203 steps, 12 channels."""
    df = _import_statsmodels_datasets().macrodata.load_pandas().data
    columns = [c for c in df.columns if c not in ("year", "quarter")]
    stamps = np.array([np.datetime64(f"{int(y)}-{3 * int(q) - 2:02d}-01")
                       for y, q in zip(df["year"], df["quarter"])], dtype="datetime64[D]")
    return Series("macrodata", "US macroeconomic data, statsmodels.datasets.macrodata",
                  df[columns].to_numpy(dtype=np.float64), columns, stamps)


LOADERS = {"vic-elec": load_vic_elec, "co2": load_co2, "macrodata": load_macrodata}


def time_features(stamps: np.ndarray) -> np.ndarray:
    """Calendar features in [-0.5, 0.5] (as TSLib's ``timeF``), chosen by the sampling step; constants dropped.

    Sub-daily: hour of day, day of week, day of month, day of year. Daily to weekly: day of week, day of month,
    day of year, month. Monthly or coarser: month of year.
    """
    s = stamps.astype("datetime64[s]")
    days = s.astype("datetime64[D]")
    months = days.astype("datetime64[M]")
    hour = (s - days).astype("timedelta64[h]").astype(np.int64)
    dow = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    dom = (days - months).astype(np.int64)  # 0-based
    doy = (days - days.astype("datetime64[Y]")).astype(np.int64)
    month = months.astype(np.int64) % 12
    feats = {"hour": hour / 23.0, "dow": dow / 6.0, "dom": dom / 30.0, "doy": doy / 365.0, "month": month / 11.0}
    step = np.median(np.diff(days.astype(np.int64))) if len(days) > 1 else 1
    sub_daily = len(s) > 1 and np.median(np.diff(s.astype(np.int64))) < 86400
    names = (["hour", "dow", "dom", "doy"] if sub_daily else
             ["dow", "dom", "doy", "month"] if step < 28 else ["month"])
    cols = [feats[n] - 0.5 for n in names if np.ptp(feats[n]) > 0]
    if not cols:
        return np.zeros((len(s), 0))
    return np.stack(cols, axis=1)


def max_lookback(n: int, horizon: int, min_windows: int = MIN_TRAIN_WINDOWS) -> int:
    """The largest power of two L with at least ``min_windows`` training windows of L + horizon steps."""
    n_train = int(SPLIT[0] * n)
    limit = n_train - horizon - min_windows + 1
    if limit < 2:
        raise ValueError(f"--lookback max: the training part ({n_train} steps) cannot hold {min_windows} windows "
                         f"at horizon {horizon}; pass --lookback explicitly")
    return 1 << int(math.floor(math.log2(limit)))


class WindowData:
    """Standardised series on the device, and the start indices of the train / val / test windows."""

    def __init__(self, series: Series, lookback: int, horizon: int, device: torch.device):
        n = len(series.values)
        n_train, n_test = int(SPLIT[0] * n), int(SPLIT[2] * n)
        n_val = n - n_train - n_test
        self.split = {"train": n_train, "val": n_val, "test": n_test}
        if horizon < 1 or lookback < 2:
            raise ValueError(f"--lookback must be >= 2 and --horizon >= 1, got {lookback} and {horizon}")
        if horizon > n_val:
            raise ValueError(f"--horizon {horizon} is longer than the validation part of {series.name} "
                             f"({n_val} steps)")
        if lookback + horizon > n_train:
            raise ValueError(f"--lookback {lookback} + --horizon {horizon} do not fit in the training part of "
                             f"{series.name} ({n_train} of {n} steps): the largest lookback is "
                             f"{n_train - horizon} (one window); --lookback max picks a power of two leaving "
                             f">= {MIN_TRAIN_WINDOWS} windows")
        self.series, self.lookback, self.horizon, self.device = series, lookback, horizon, device
        train = series.values[:n_train]
        self.mean = train.mean(axis=0)
        std = train.std(axis=0)
        self.std = np.where(std > 0, std, 1.0)
        z = (series.values - self.mean) / self.std
        self.data = torch.tensor(z, dtype=torch.float32, device=device)
        self.marks = torch.tensor(time_features(series.stamps), dtype=torch.float32, device=device)
        L, H = lookback, horizon
        self.starts = {
            "train": torch.arange(0, n_train - L - H + 1),
            "val": torch.arange(n_train, n_train + n_val - H + 1) - L,
            "test": torch.arange(n - n_test, n - H + 1) - L,
        }
        self._offsets = torch.arange(L + H, device=device)

    @property
    def n_channels(self) -> int:
        return self.data.shape[1]

    @property
    def n_marks(self) -> int:
        return self.marks.shape[1]

    def batch(self, starts: torch.Tensor):
        """Windows at ``starts``: inputs ``x [B, L, C]``, calendar features ``[B, L, F]``, targets ``y [B, H, C]``."""
        idx = starts.to(self.device)[:, None] + self._offsets
        w = self.data[idx]
        return w[:, :self.lookback], self.marks[idx[:, :self.lookback]], w[:, self.lookback:]

    def describe(self) -> dict:
        s = self.series
        return {"name": s.name, "description": s.description, "steps": int(len(s.values)),
                "channels": int(self.n_channels), "columns": list(s.columns), "time_features": int(self.n_marks),
                "first": str(s.stamps[0]), "last": str(s.stamps[-1]), "split": dict(self.split),
                "windows": {k: int(len(v)) for k, v in self.starts.items()}}


# ------------------------------------------------------------------------------------------------ model

class SDPAttention(nn.Module):
    """Dense multi-head self-attention with :func:`torch.nn.functional.scaled_dot_product_attention`.

    The same projections as the flashts layers (q/k/v/out ``nn.Linear``), so only the attention differs.
    """

    def __init__(self, d_model: int, n_heads: int, causal: bool = False):
        super().__init__()
        self.n_heads, self.causal = n_heads, causal
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d_model, d_model) for _ in range(3))
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = (p(x).view(B, T, self.n_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out_proj(o.transpose(1, 2).reshape(B, T, d))


@dataclass
class ModelConfig:
    attention: str
    n_channels: int
    n_marks: int
    lookback: int
    horizon: int
    d_model: int = 64
    n_heads: int = 4
    layers: int = 2
    d_ff: int = 128
    dropout: float = 0.1
    moving_avg: int = 25
    window: int | None = None  # sliding: one-sided width; None = lookback // 8
    factor: float = 1.0  # autocorr: K = int(factor * ln L) delays
    latents: int = 16  # latte: latents per head
    backend: str = "auto"


def make_attention(cfg: ModelConfig) -> nn.Module:
    """The self-attention module for ``cfg.attention``: a ``[B, T, d_model] -> [B, T, d_model]`` map."""
    d, h, b = cfg.d_model, cfg.n_heads, cfg.backend
    if cfg.attention == "full":
        return SDPAttention(d, h)
    if cfg.attention == "linear":
        return flashts.nn.LinearAttention(d, h, causal=False, backend=b)
    if cfg.attention == "sliding":
        w = cfg.window if cfg.window is not None else max(1, cfg.lookback // 8)
        return flashts.nn.SlidingWindowAttention(d, h, window=(w, w), backend=b)
    if cfg.attention == "autocorr":
        return flashts.nn.AutoCorrelationAttention(d, h, factor=cfg.factor, backend=b)
    if cfg.attention == "aaren":
        return flashts.nn.Aaren(d, h, backend=b)
    if cfg.attention == "latte":
        return flashts.nn.Latte(d, h, n_latents=cfg.latents, causal=False, backend=b)
    raise ValueError(f"attention: expected one of {ATTENTIONS}, got {cfg.attention!r}")


class SeriesDecomposition(nn.Module):
    """Autoformer's decomposition: trend = moving average (edges padded by repetition), seasonal = x − trend."""

    def __init__(self, kernel: int):
        super().__init__()
        self.kernel = kernel

    def forward(self, x: torch.Tensor):  # x [B, L, C]
        pad = (self.kernel - 1) // 2
        padded = torch.cat([x[:, :1].expand(-1, pad, -1), x, x[:, -1:].expand(-1, pad, -1)], dim=1)
        trend = F.avg_pool1d(padded.transpose(1, 2), self.kernel, stride=1).transpose(1, 2)
        return x - trend, trend


class EncoderLayer(nn.Module):
    """Pre-LayerNorm transformer encoder layer: ``x + drop(attn(LN(x)))``, then ``x + drop(FFN(LN(x)))``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention = make_attention(cfg)
        self.norm1, self.norm2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.ff = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Dropout(cfg.dropout),
                                nn.Linear(cfg.d_ff, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attention(self.norm1(x)))
        return x + self.drop(self.ff(self.norm2(x)))


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: d_model // 2])
    return pe


class Forecaster(nn.Module):
    """Encoder-only forecaster ``x [B, L, C]`` (+ calendar features ``[B, L, F]``) -> ``y [B, H, C]``.

    Window normalisation, trend/seasonal decomposition, linear trend head, transformer encoder on the seasonal
    part with the chosen attention, linear head over time (see the module docstring).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        kernel = min(cfg.moving_avg, cfg.lookback)
        self.decomp = SeriesDecomposition(kernel if kernel % 2 else kernel - 1)  # odd: centred average
        self.value_embedding = nn.Conv1d(cfg.n_channels, cfg.d_model, kernel_size=3, padding=1,
                                         padding_mode="circular", bias=False)
        self.time_embedding = nn.Linear(cfg.n_marks, cfg.d_model, bias=False) if cfg.n_marks else None
        self.register_buffer("positions", sinusoidal_positions(cfg.lookback, cfg.d_model), persistent=False)
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.to_channels = nn.Linear(cfg.d_model, cfg.n_channels)
        self.season_head = nn.Linear(cfg.lookback, cfg.horizon)
        self.trend_head = nn.Linear(cfg.lookback, cfg.horizon)
        with torch.no_grad():  # the trend head starts as "the mean of the window's trend"
            self.trend_head.weight.fill_(1.0 / cfg.lookback)
            self.trend_head.bias.zero_()

    def forward(self, x: torch.Tensor, marks: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True).detach()
        std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + 1e-5).detach()
        x = (x - mean) / std
        seasonal, trend = self.decomp(x)
        h = self.value_embedding(seasonal.transpose(1, 2)).transpose(1, 2) + self.positions
        if self.time_embedding is not None:
            h = h + self.time_embedding(marks)
        h = self.embed_drop(h)
        for layer in self.layers:
            h = layer(h)
        s = self.to_channels(self.norm(h))  # [B, L, C]
        y = self.season_head(s.transpose(1, 2)) + self.trend_head(trend.transpose(1, 2))  # [B, C, H]
        return y.transpose(1, 2) * std + mean


# --------------------------------------------------------------------------------------------- training

@dataclass
class RunConfig:
    lookback: int
    horizon: int
    d_model: int
    n_heads: int
    layers: int
    d_ff: int
    batch_size: int
    epochs: int
    max_steps: int | None
    eval_batches: int | None
    latents: int
    amp: str
    dropout: float
    lr: float
    window: int | None
    factor: float
    moving_avg: int
    seed: int
    backend: str = "auto"

    def model_config(self, attention: str, data: WindowData, backend: str | None = None) -> ModelConfig:
        return ModelConfig(attention, data.n_channels, data.n_marks, self.lookback, self.horizon, self.d_model,
                           self.n_heads, self.layers, self.d_ff, self.dropout, self.moving_avg, self.window,
                           self.factor, self.latents, backend or self.backend)


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, amp: str):
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def _batches(starts: torch.Tensor, batch_size: int, limit: int | None):
    out = [starts[i:i + batch_size] for i in range(0, len(starts), batch_size)]
    return out if limit is None else out[:limit]


def evaluate(model: Forecaster, data: WindowData, split: str, cfg: RunConfig) -> dict:
    """MSE and MAE over the windows of ``split`` (standardised scale), in time order."""
    model.eval()
    se = ae = count = 0.0
    with torch.no_grad(), _autocast(data.device, cfg.amp):
        for starts in _batches(data.starts[split], cfg.batch_size, cfg.eval_batches):
            x, m, y = data.batch(starts)
            err = model(x, m).float() - y
            se += float(err.square().sum())
            ae += float(err.abs().sum())
            count += err.numel()
    model.train()
    return {"mse": se / count, "mae": ae / count}


def seasonal_period(stamps: np.ndarray) -> int:
    """Steps per day for sub-daily data, steps per year otherwise (24 hourly, 52 weekly, 4 quarterly)."""
    step = float(np.median(np.diff(stamps.astype("datetime64[s]").astype(np.int64)))) if len(stamps) > 1 else 1.0
    return max(1, round((86400.0 if step < 86400 else 365.25 * 86400) / step))


def seasonal_naive(data: WindowData, split: str, cfg: RunConfig) -> dict:
    """Reference without a model: repeat the last seasonal period of the input (the last value if it is longer)."""
    period = seasonal_period(data.series.stamps)
    if period > data.lookback:
        period = 1
    reps = torch.arange(data.horizon, device=data.device) % period + (data.lookback - period)
    se = ae = count = 0.0
    for starts in _batches(data.starts[split], cfg.batch_size, cfg.eval_batches):
        x, _, y = data.batch(starts)
        err = x[:, reps] - y
        se += float(err.square().sum())
        ae += float(err.abs().sum())
        count += err.numel()
    return {"name": "seasonal naive", "period": period, "mse": se / count, "mae": ae / count}


def resolved_backend(attention: str, backend: str, device: torch.device) -> str | None:
    """The backend the flashts op of ``attention`` will run on (raises, with the op's message, if unavailable)."""
    if attention == "full":
        return None
    return _backend.resolve(FLASHTS_OP[attention], backend, device)


def train_attention(attention: str, data: WindowData, cfg: RunConfig, *, backend: str | None = None,
                    progress: bool = True, measure: bool = True, plot_start: int | None = None) -> dict:
    """Train one forecaster with ``attention``; return its metrics, timings, memory and loss curve."""
    device = data.device
    backend = backend or cfg.backend
    mcfg = cfg.model_config(attention, data, backend)
    row = {"attention": attention, "backend": resolved_backend(attention, backend, device)}
    gpu = device.type == "cuda"
    _sync(device)
    t_start = time.perf_counter()
    if gpu:
        torch.cuda.empty_cache()
        base_mem = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(cfg.seed)
    model = Forecaster(mcfg).to(device)
    row["params"] = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    order = torch.Generator().manual_seed(cfg.seed)

    def train_step(starts):
        x, m, y = data.batch(starts)
        with _autocast(device, cfg.amp):
            pred = model(x, m)
        loss = F.mse_loss(pred.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.detach()

    # warm-up on a throw-away copy (JIT compilation, allocator), without touching the training RNG stream
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if gpu else []):
        spare = copy.deepcopy(model)
        first = data.starts["train"][: cfg.batch_size]
        x, m, y = data.batch(first)
        with _autocast(device, cfg.amp):
            F.mse_loss(spare(x, m).float(), y).backward()
        spare.eval()
        with torch.no_grad(), _autocast(device, cfg.amp):
            spare(x, m)
        del spare, x, m, y
    _sync(device)
    row["warmup_s"] = time.perf_counter() - t0

    n_windows = len(data.starts["train"])
    per_epoch = max(1, n_windows // cfg.batch_size)  # drop_last: every step sees a full batch
    steps_per_epoch = per_epoch if cfg.max_steps is None else min(per_epoch, cfg.max_steps)
    total = steps_per_epoch * cfg.epochs
    bar = _progress_bar(total, f"{attention:>8}", progress)
    rss = RssMeter() if (measure and not gpu) else None
    curve, epochs, best = [], [], None
    step = 0
    for epoch in range(cfg.epochs):
        perm = data.starts["train"][torch.randperm(n_windows, generator=order)]
        _sync(device)
        t0 = time.perf_counter()
        losses = []
        for i in range(steps_per_epoch):
            starts = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            if rss is not None and step == min(1, total - 1):  # a steady-state step (after Adam's state exists)
                loss, row["peak_mb"] = rss.measure(lambda: train_step(starts))
            else:
                loss = train_step(starts)
            losses.append(loss)
            step += 1
            if bar is not None:
                bar.update(1)
                if i % 10 == 0 or i == steps_per_epoch - 1:
                    bar.set_postfix(loss=f"{float(loss):.4f}", epoch=epoch + 1)
        _sync(device)
        seconds = time.perf_counter() - t0
        losses = [float(v) for v in losses]
        curve += losses
        val = evaluate(model, data, "val", cfg)
        epochs.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_mse": val["mse"],
                       "val_mae": val["mae"], "seconds": seconds})
        better = math.isfinite(val["mse"]) and (best is None or not val["mse"] >= best[0])  # a NaN best loses
        if best is None or better:
            best = (val["mse"], {k: v.detach().clone() for k, v in model.state_dict().items()})
    if bar is not None:
        bar.close()
    model.load_state_dict(best[1])
    test = evaluate(model, data, "test", cfg)
    row.update(test_mse=test["mse"], test_mae=test["mae"], val_mse=best[0], steps=step, epochs=epochs,
               s_per_epoch=float(np.mean([e["seconds"] for e in epochs])), loss_curve=curve)
    if plot_start is not None:
        model.eval()
        with torch.no_grad(), _autocast(device, cfg.amp):
            x, m, _ = data.batch(torch.tensor([plot_start]))
            row["forecast"] = (model(x, m).float()[0].cpu().numpy() * data.std + data.mean).tolist()
    _sync(device)
    if gpu:
        row["peak_mb"] = (torch.cuda.max_memory_allocated(device) - base_mem) / 2**20
        row["peak_mb_kind"] = "cuda max_memory_allocated (training + evaluation)"
    elif measure:
        row["peak_mb_kind"] = "peak RSS growth of one training step"
        row.setdefault("peak_mb", None)
    row["total_s"] = time.perf_counter() - t_start
    return row


class _PlainBar:
    """Stand-in for tqdm when it is missing: one line per 10 %."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n, self.shown = total, desc, 0, -1

    def update(self, k: int):
        self.n += k
        tenth = 10 * self.n // max(1, self.total)
        if tenth != self.shown:
            self.shown = tenth
            print(f"{self.desc} [{self.n}/{self.total}]", file=sys.stderr)

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
        return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=True)
    except Exception:
        return _PlainBar(total, desc)


# ---------------------------------------------------------------------------------------------- reports

def _fmt(x, digits=4):
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _header(meta: dict, data: dict, cfg: dict) -> list[str]:
    return [
        f"- device: {meta['device']} ({meta['device_type']}, {meta.get('torch_threads')} torch threads); torch "
        f"{meta['torch']}, triton {meta['triton']}; commit {meta.get('commit') or '?'}; {meta['date']}",
        f"- command: `{' '.join(meta['command'])}`",
        f"- data: {data['name']} — {data['description']}; {data['steps']} steps × {data['channels']} channel(s), "
        f"{data['first']} … {data['last']}; split train/val/test = {data['split']['train']}/{data['split']['val']}/"
        f"{data['split']['test']} steps, windows {data['windows']['train']}/{data['windows']['val']}/"
        f"{data['windows']['test']}",
        f"- model: lookback {cfg['lookback']}, horizon {cfg['horizon']}, d_model {cfg['d_model']}, heads "
        f"{cfg['n_heads']}, layers {cfg['layers']}, d_ff {cfg['d_ff']}, batch {cfg['batch_size']}, epochs "
        f"{cfg['epochs']}, max steps/epoch {cfg['max_steps'] or 'all'}, amp {cfg['amp']}, seed {cfg['seed']}, backend "
        f"{cfg['backend']}",
    ]


def markdown_report(report: dict) -> str:
    lines = [f"# End-to-end forecasting ({report['preset']} preset)", ""]
    lines += _header(report["meta"], report["data"], report["config"])
    lines += ["", "Test MSE / MAE on the standardised scale (best-validation epoch); s/epoch: training steps only; "
              "peak MB: " + ("`torch.cuda.max_memory_allocated` over training and evaluation, beyond what was "
                             "allocated before the model" if report["meta"]["device_type"] == "cuda" else
                             "peak RSS growth of one training step (forward, backward, Adam)") + ".", "",
              "| attention | backend | test MSE | test MAE | s/epoch | peak MB | params | steps | warm-up s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        if r.get("error"):
            lines.append(f"| {r['attention']} | {r.get('backend') or '–'} | error: {r['error']} | | | | | | |")
            continue
        backend = r["backend"] or "sdpa"
        lines.append(f"| {r['attention']} | {backend} | {_fmt(r['test_mse'])} | {_fmt(r['test_mae'])} | "
                     f"{_fmt(r['s_per_epoch'], 2)} | {_fmt(r.get('peak_mb'), 1)} | {r['params']} | {r['steps']} | "
                     f"{_fmt(r['warmup_s'], 1)} |")
    ref = report.get("reference")
    if ref:
        what = "the last input value" if ref["period"] == 1 else f"the last {ref['period']} input steps"
        lines += ["", f"Reference without a model, same test windows: {ref['name']} (repeat {what}): "
                      f"MSE {_fmt(ref['mse'])}, MAE {_fmt(ref['mae'])}."]
    return "\n".join(lines) + "\n"


def plot_forecasts(report: dict, data: WindowData, path: str) -> bool:
    """PNG: the truth around one test window and every attention's forecast (channel 0, original units)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:  # pragma: no cover - matplotlib is a dependency of the bench tools
        print(f"[e2e] no plot: matplotlib unavailable ({exc})", file=sys.stderr)
        return False
    start, L, H = report["plot"]["start"], data.lookback, data.horizon
    series = data.series
    context = min(L, 4 * H)
    t = np.arange(-context, H)
    truth = series.values[start + L - context:start + L + H, 0]
    fig, ax = plt.subplots(figsize=(10, 4.2))
    ax.plot(t, truth, color="black", lw=1.6, label="truth")
    for r in report["results"]:
        if r.get("forecast") is not None:
            ax.plot(np.arange(H), np.asarray(r["forecast"])[:, 0], lw=1.1, label=r["attention"])
    ax.axvline(0, color="grey", ls=":", lw=1)
    unit = f" ({series.unit})" if series.unit else ""
    ax.set_xlabel(f"steps from the forecast start ({report['plot']['stamp']})")
    ax.set_ylabel(f"{series.columns[0]}{unit}")
    ax.set_title(f"{series.name}: lookback {L}, horizon {H}, one test window — {report['meta']['device']}",
                 fontsize=10)
    ax.legend(ncol=4, fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_compare(report: dict, path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # pragma: no cover
        return False
    comps = report["comparisons"]
    if not comps:
        return False
    fig, axes = plt.subplots(1, len(comps), figsize=(3.2 * len(comps), 3), squeeze=False)
    for ax, c in zip(axes[0], comps):
        for name, curve in c["curves"].items():
            ax.plot(np.arange(1, len(curve) + 1), curve, lw=1.2, label=name, ls="-" if name == "torch" else "--")
        ax.set_title(f"{c['attention']}: max rel diff {c['max_rel_diff']:.1e}", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("training loss (MSE)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------------------- main

def _split_list(values):
    out = []
    for v in values or []:
        out += [x.strip() for x in str(v).split(",") if x.strip()]
    return out


def _lookback_arg(text: str):
    if text == "max":
        return "max"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or 'max', got {text!r}") from None


def _presets(key: str) -> str:
    """``presets: tiny 48, cpu 96, gpu max`` for a flag's help (the values it takes when the flag is not given)."""
    vals = ", ".join(f"{name} {dict(COMMON, **PRESETS[name]).get(key)}" for name in sorted(PRESETS))
    return f"presets: {vals}"


def _presets_epilog() -> str:
    keys = sorted({k for v in PRESETS.values() for k in v} | set(COMMON))
    lines = ["presets (a flag given on the command line overrides the preset's value):"]
    for name in sorted(PRESETS):
        vals = dict(COMMON, **PRESETS[name])
        lines.append(f"  {name}: " + ", ".join(f"{k}={vals[k]}" for k in keys))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.e2e_forecast",
                                description="Train a small time-series transformer with each attention on real data "
                                            "(statsmodels) and report test MSE/MAE, time per epoch and peak memory.",
                                epilog=_presets_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attn", nargs="+", default=["all"], help=f"attentions: all or some of {', '.join(ATTENTIONS)}")
    p.add_argument("--backend", default="auto", choices=_backend.BACKENDS,
                   help="backend of the flashts layers (full always uses torch SDPA)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="tiny | cpu | gpu (default: gpu on CUDA, else cpu)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--dataset", choices=DATASETS, help=f"series to train on ({_presets('dataset')})")
    p.add_argument("--lookback", type=_lookback_arg,
                   help=f"input steps, or 'max' (see the module docstring) ({_presets('lookback')})")
    p.add_argument("--horizon", type=int, help=f"steps to forecast ({_presets('horizon')})")
    p.add_argument("--epochs", type=int, help=f"training epochs ({_presets('epochs')})")
    p.add_argument("--max-steps", type=int,
                   help=f"at most this many optimiser steps per epoch, 0: no cap ({_presets('max_steps')})")
    p.add_argument("--eval-batches", type=int,
                   help=f"at most this many validation / test batches, 0: all ({_presets('eval_batches')})")
    p.add_argument("--d-model", type=int, help=f"model width ({_presets('d_model')})")
    p.add_argument("--n-heads", type=int, help=f"attention heads ({_presets('n_heads')})")
    p.add_argument("--layers", type=int, help=f"encoder layers ({_presets('layers')})")
    p.add_argument("--d-ff", type=int, help=f"feed-forward width ({_presets('d_ff')})")
    p.add_argument("--batch-size", type=int, help=f"training batch size ({_presets('batch_size')})")
    p.add_argument("--latents", type=int, help=f"latte: latents per head ({_presets('latents')})")
    p.add_argument("--window", type=int, help="sliding: one-sided window width w, window=(w, w) (default lookback//8)")
    p.add_argument("--factor", type=float, help="autocorr: K = int(factor * ln L) delays (default 1)")
    p.add_argument("--dropout", type=float, help=f"dropout ({_presets('dropout')})")
    p.add_argument("--lr", type=float, help=f"Adam learning rate ({_presets('lr')})")
    p.add_argument("--amp", choices=("none", "bf16"), help=f"bf16 autocast or none ({_presets('amp')})")
    p.add_argument("--seed", type=int, help=f"seed of the weights and the batch order ({_presets('seed')})")
    p.add_argument("--out", help=f"output folder (default ./{DEFAULT_OUT}/e2e_<cpu|cuda>, relative to the current "
                                 "folder)")
    p.add_argument("--results", action="store_true",
                   help="write into the repository's bench/results/e2e_<cpu|cuda> (the committed runs the README "
                        "cites) instead of --out")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--no-plot", action="store_true", help="do not draw forecast.png / compare_backends.png")
    p.add_argument("--compare-backends", action="store_true",
                   help="train each flashts attention with the torch backend and each kernel backend available "
                        "here; report the largest loss-curve difference (instead of the main run)")
    p.add_argument("--compare-steps", type=int,
                   help=f"training steps of each --compare-backends run ({_presets('compare_steps')})")
    p.add_argument("--compare-tol", type=float, default=1e-3,
                   help="largest allowed relative loss-curve difference (default 1e-3)")
    return p


def resolve_config(args, device: torch.device, n_steps_of) -> tuple[str, str, RunConfig, int]:
    preset = args.preset or ("gpu" if device.type == "cuda" else "cpu")
    values = dict(COMMON, **PRESETS[preset])
    for key in ("dataset", "lookback", "horizon", "epochs", "max_steps", "eval_batches", "d_model", "n_heads",
                "layers", "d_ff", "batch_size", "latents", "window", "factor", "dropout", "lr", "amp", "seed",
                "compare_steps"):
        v = getattr(args, key, None)
        if v is not None:
            values[key] = v
    for key in ("max_steps", "eval_batches"):
        if values[key] is not None and values[key] <= 0:
            values[key] = None
    if values["amp"] == "bf16" and device.type == "cpu" and args.amp is None:
        values["amp"] = "none"
    if values["lookback"] == "max":
        values["lookback"] = max_lookback(n_steps_of(values["dataset"]), values["horizon"])
    for key in ("horizon", "epochs", "d_model", "n_heads", "layers", "d_ff", "batch_size", "latents"):
        if values[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {values[key]}")
    dataset, compare_steps = values.pop("dataset"), values.pop("compare_steps")
    return preset, dataset, RunConfig(backend=args.backend, **values), compare_steps


def run_main(data: WindowData, cfg: RunConfig, attentions: list, progress: bool, plot_start: int,
             on_result=None) -> list[dict]:
    """Train every attention in turn; ``on_result(results)`` after each (the report is rewritten each time)."""
    results = []
    for attention in attentions:
        try:
            row = train_attention(attention, data, cfg, progress=progress, plot_start=plot_start)
        except Exception as exc:  # one failing attention must not hide the others
            if data.device.type == "cuda":
                torch.cuda.empty_cache()
            row = {"attention": attention, "error": f"{type(exc).__name__}: {exc}"[:300]}
            print(f"[e2e] {attention}: {row['error']}", file=sys.stderr)
        results.append(row)
        if on_result is not None:
            on_result(results)
        if not row.get("error"):
            print(f"[e2e] {attention:>8} ({row['backend'] or 'sdpa'}): test MSE {row['test_mse']:.4f} "
                  f"MAE {row['test_mae']:.4f}, {row['s_per_epoch']:.2f} s/epoch, peak "
                  f"{_fmt(row.get('peak_mb'), 1)} MB", file=sys.stderr)
    return results


def run_compare(data: WindowData, cfg: RunConfig, attentions: list, steps: int, tol: float,
                progress: bool) -> list[dict]:
    """Loss curves of the torch backend and each kernel backend, same seed and batches, float32."""
    device = data.device
    cfg = copy.deepcopy(cfg)
    cfg.amp, cfg.epochs, cfg.max_steps, cfg.eval_batches = "none", 1, steps, 1
    if device.type == "cuda":  # only the attention kernels may differ between the runs
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    out = []
    for attention in attentions:
        if attention == "full":
            print("[e2e] compare-backends: 'full' (torch SDPA) has no flashts backend; skipped", file=sys.stderr)
            continue
        op = FLASHTS_OP[attention]
        kernels = [b for b in ("triton", "cuda") if b in _backend.implemented(op) and _backend.available(b, device)]
        runs = [("torch", "torch")] + ([(b, b) for b in kernels] or [("torch (repeat)", "torch")])
        curves, errors = {}, {}
        for label, backend in runs:
            try:
                row = train_attention(attention, data, cfg, backend=backend, progress=progress, measure=False)
                curves[label] = row["loss_curve"]
            except Exception as exc:
                errors[label] = f"{type(exc).__name__}: {exc}"[:300]
                print(f"[e2e] compare {attention}/{label}: {errors[label]}", file=sys.stderr)
        ref = np.asarray(curves.get("torch", []), dtype=np.float64)
        diffs = {}
        for label, curve in curves.items():
            if label == "torch" or len(ref) == 0:
                continue
            c = np.asarray(curve, dtype=np.float64)
            d = np.abs(c - ref)
            diffs[label] = {"max_abs_diff": float(d.max()), "max_rel_diff": float((d / np.abs(ref)).max()),
                            "first_step_abs_diff": float(d[0])}
        max_rel = max((v["max_rel_diff"] for v in diffs.values()), default=float("nan"))
        ok = not errors and bool(diffs) and all(v["max_rel_diff"] <= tol for v in diffs.values())
        out.append({"attention": attention, "op": op, "backends": [label for label, _ in runs], "steps": steps,
                    "curves": curves, "diffs": diffs, "errors": errors, "max_rel_diff": max_rel, "tol": tol,
                    "ok": ok, "kind": "kernel vs torch" if kernels else "torch vs torch (reproducibility)"})
        summary = ", ".join(f"{k} vs torch: max rel diff {v['max_rel_diff']:.2e}" for k, v in diffs.items())
        print(f"[e2e] compare {attention}: {summary or 'no comparison'} -> {'ok' if ok else 'FAILED'}",
              file=sys.stderr)
    return out


def compare_markdown(report: dict) -> str:
    lines = [f"# Backend comparison of the training-loss curves ({report['preset']} preset)", ""]
    lines += _header(report["meta"], report["data"], report["config"])
    lines += ["", f"Same seed and batches, float32 (no autocast); {report['steps']} training steps per run; a "
              f"comparison passes when max |loss − loss_torch| / |loss_torch| ≤ {report['tol']:g} at every step.",
              "", "| attention | compared | max abs diff | max rel diff | first-step abs diff | ok |",
              "|---|---|---|---|---|---|"]
    for c in report["comparisons"]:
        if not c["diffs"]:
            errors = "; ".join(c["errors"].values())
            lines.append(f"| {c['attention']} | {', '.join(c['backends'])} | error: {errors} | | | no |")
        for label, d in c["diffs"].items():
            lines.append(f"| {c['attention']} | {label} vs torch | {d['max_abs_diff']:.2e} | "
                         f"{d['max_rel_diff']:.2e} | {d['first_step_abs_diff']:.2e} | {'yes' if c['ok'] else 'no'} |")
    return "\n".join(lines) + "\n"


def _dump(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, default=float)
        f.write("\n")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    dev = args.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(dev)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("[e2e] --device cuda: no CUDA device here", file=sys.stderr)
        return 2
    attentions = _split_list(args.attn)
    if attentions == ["all"]:
        attentions = list(ATTENTIONS)
    bad = [a for a in attentions if a not in ATTENTIONS]
    if bad:
        print(f"[e2e] --attn: unknown {bad}; expected 'all' or some of {', '.join(ATTENTIONS)}", file=sys.stderr)
        return 2

    series_cache = {}

    def load(name):
        if name not in series_cache:
            series_cache[name] = LOADERS[name]()
        return series_cache[name]

    try:
        preset, dataset, cfg, compare_steps = resolve_config(args, device, lambda n: len(load(n).values))
        data = WindowData(load(dataset), cfg.lookback, cfg.horizon, device)
        for attention in attentions:  # an unavailable backend fails here, before any training
            if not (args.compare_backends and attention == "full"):
                resolved_backend(attention, cfg.backend, device)
    except DatasetUnavailable as exc:
        print(f"[e2e] {exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as exc:
        print(f"[e2e] {exc}", file=sys.stderr)
        return 2

    if args.results and args.out:
        print("[e2e] --results and --out exclude each other", file=sys.stderr)
        return 2
    out = args.out or os.path.join(RESULTS_DIR if args.results else DEFAULT_OUT, f"e2e_{device.type}")
    os.makedirs(out, exist_ok=True)
    meta = metadata(device, ["python", "-m", "bench.e2e_forecast"] + list(sys.argv[1:] if argv is None else argv))
    config = dict(asdict(cfg), dataset=dataset)
    progress = not args.no_progress
    print(f"[e2e] {meta['device']}: {dataset} {data.describe()['steps']} steps × {data.n_channels} ch, preset "
          f"{preset}, lookback {cfg.lookback}, horizon {cfg.horizon}, attentions {', '.join(attentions)}",
          file=sys.stderr)

    if args.compare_backends:
        comparisons = run_compare(data, cfg, attentions, compare_steps, args.compare_tol, progress)
        report = {"meta": meta, "preset": preset, "data": data.describe(), "config": config, "steps": compare_steps,
                  "tol": args.compare_tol, "comparisons": comparisons}
        _dump(report, os.path.join(out, "compare_backends.json"))
        with open(os.path.join(out, "compare_backends.md"), "w") as f:
            f.write(compare_markdown(report))
        if not args.no_plot:
            plot_compare(report, os.path.join(out, "compare_backends.png"))
        print(f"[e2e] wrote {out}/compare_backends.{{json,md,png}}", file=sys.stderr)
        return 0 if comparisons and all(c["ok"] for c in comparisons) else 1

    plot_start = int(data.starts["test"][len(data.starts["test"]) // 2])
    report = {"meta": meta, "preset": preset, "data": data.describe(), "config": config, "results": [],
              "reference": seasonal_naive(data, "test", cfg),
              "plot": {"start": plot_start, "stamp": str(data.series.stamps[plot_start + cfg.lookback])}}

    def save(results):  # after every attention, so an interrupted run keeps what it measured
        report["results"] = results
        _dump(report, os.path.join(out, "e2e.json"))
        with open(os.path.join(out, "e2e.md"), "w") as f:
            f.write(markdown_report(report))

    results = run_main(data, cfg, attentions, progress, plot_start, on_result=save)
    if not args.no_plot:
        plot_forecasts(report, data, os.path.join(out, "forecast.png"))
    print(f"[e2e] wrote {out}/e2e.{{json,md}} and forecast.png", file=sys.stderr)
    return 1 if any(r.get("error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
