"""Smoke tests of the benchmark harness (``python -m bench``): a tiny CPU run end to end into a tmp dir
(JSON schema, markdown tables, plots), the correctness guard, OOM handling, FLOP counts and the report."""
from __future__ import annotations

import json
import os

import pytest
import torch

from bench import registry, report
from bench.__main__ import main as bench_main
from bench.registry import Config, Impl, Prepared
from bench.runner import Runner

ROW_KEYS = {"op", "impl", "mode", "dtype", "B", "T", "H", "D", "Dv", "params", "ms", "peak_mb", "tflops", "gbps",
            "max_rel_err", "check", "flops", "bytes"}
META_KEYS = {"device", "torch", "triton", "cuda", "commit", "date", "command", "rows"}


def test_quick_cpu_run_end_to_end(tmp_path):
    rc = bench_main(["--quick", "--device", "cpu", "--T", "64", "--out", str(tmp_path), "--no-progress",
                     "--tag", "smoke"])
    assert rc == 0
    files = sorted(os.listdir(tmp_path))
    jsons = [f for f in files if f.endswith(".json")]
    assert len(jsons) == 1, files
    stem = jsons[0][:-5]
    assert stem.endswith("_smoke") and stem.count("_") >= 2  # <device-slug>_<YYYY-MM-DD>_<tag>
    with open(tmp_path / jsons[0]) as f:
        data = json.load(f)
    assert META_KEYS <= data.keys()
    assert data["date"][:10] in stem and data["device"]
    rows = data["rows"]
    assert {r["op"] for r in rows} == set(registry.OPS)
    assert {r["mode"] for r in rows} == {"fwd", "fwdbwd"}
    for r in rows:
        assert ROW_KEYS <= r.keys(), r
        assert r["T"] == 64 and isinstance(r["params"], dict)
        assert r["flops"] > 0 and r["bytes"] > 0
        if r["ms"] is None:
            assert r.get("error"), r
        else:
            assert r["ms"] > 0 and r["tflops"] > 0 and r["gbps"] > 0
    # every op has its torch backend row, and it is checked against the float64 reference
    torch_rows = [r for r in rows if r["impl"] == "flashts-torch"]
    assert {r["op"] for r in torch_rows} == set(registry.OPS)
    for r in torch_rows:
        assert r["check"] == "reference" and r["max_rel_err"] is not None, r
    # baselines present on CPU: dense SDPA (reference point, not checked) and the window-mask SDPA (checked)
    sdpa = [r for r in rows if r["impl"] == "sdpa"]
    assert sdpa and all(r["check"] == "n/a" for r in sdpa)
    mask = [r for r in rows if r["impl"] == "sdpa-mask"]
    assert mask and all(r["check"] == "reference" and r["max_rel_err"] < 1e-3 for r in mask)
    # the sequential-loop baseline of the prefix scans computes the op itself (checked), Aaren and causal Latte
    loop = [r for r in rows if r["impl"] == "loop"]
    assert {r["op"] for r in loop} == {"aaren_attention", "latte_attention"}
    assert all(r["check"] == "reference" and r["ms"] is not None and r["max_rel_err"] < 1e-4 for r in loop), loop

    md = (tmp_path / f"{stem}.md").read_text()
    for op in registry.OPS:
        assert f"## {op}" in md
    assert "| T |" in md and "speed-up" in md
    pytest.importorskip("matplotlib")
    for op in registry.OPS:
        for kind in ("time", "memory"):
            png = tmp_path / f"{stem}_{op}_{kind}.png"
            assert png.exists() and png.stat().st_size > 1000, png


class _Wrong(Impl):
    """An implementation of linear attention that returns a visibly wrong output."""
    name = "wrong"

    def supports(self, config):
        return config.op == "linear_attention"

    def prepare(self, case, inputs, requires_grad):
        import flashts
        q, k, v = (registry.leaf(inputs[n], requires_grad) for n in ("q", "k", "v"))
        return Prepared(fn=lambda: flashts.linear_attention(q, k, v, backend="torch") * 1.1,
                        leaves=[q, k, v] if requires_grad else [])


class _OOM(Impl):
    """Runs out of memory from T = 32 on (a reference point: its output is not checked)."""
    name = "oom"

    def same_function(self, config):
        return False

    def supports(self, config):
        return config.op == "linear_attention"

    def prepare(self, case, inputs, requires_grad):
        def fn():
            if case.T >= 32:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 TiB")
            return inputs["v"].clone()
        return Prepared(fn=fn)


@pytest.mark.parametrize("op", ["aaren_attention", "latte_attention"])
def test_loop_baseline_matches_reference_with_large_logits(op):
    """The loop baseline against the float64 definition, forward and gradients, with logits of ±1e3 in the mix."""
    import flashts.reference as ref
    from bench.baselines import prefix_softmax_loop
    torch.manual_seed(0)
    B, T, H, D, L, Dv = 2, 37, 3, 5, 4, 6
    v = torch.randn(B, T, H, Dv, dtype=torch.float64, requires_grad=True)
    if op == "aaren_attention":
        q = torch.randn(H, D, dtype=torch.float64, requires_grad=True)
        k = (torch.randn(B, T, H, D, dtype=torch.float64) * torch.tensor([1.0, 300.0]).repeat_interleave(
            torch.tensor([T - T // 3, T // 3]))[None, :, None, None]).requires_grad_()
        got = prefix_softmax_loop(D ** -0.5 * torch.einsum("hd,bthd->bth", q, k).unsqueeze(-1), None, v)
        want = ref.aaren_attention(q, k, v)
    else:
        q = torch.randn(B, T, H, L, dtype=torch.float64, requires_grad=True)
        k = (torch.randn(B, T, H, L, dtype=torch.float64) * 1e3).requires_grad_()
        got = prefix_softmax_loop(k, torch.softmax(q, dim=-1), v)
        want = ref.latte_attention(q, k, v, causal=True)
    assert torch.isfinite(want).all()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    cot = torch.randn_like(want)
    g = torch.autograd.grad((got * cot).sum(), (q, k, v))
    g_ref = torch.autograd.grad((want * cot).sum(), (q, k, v))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def test_guard_rejects_wrong_output_and_oom_skips_larger_T():
    cfg = Config.make("linear_attention", 1, 2, 8, 8, (16, 32, 64), causal=True, feature_map="elu", normalize=True)
    runner = Runner("cpu", modes=("fwd", "fwdbwd"), dtypes=("float32",), budget_s=0.0, min_reps=1, max_reps=1,
                    progress=False, log=lambda m: None)
    rows = runner.run([cfg], [registry.FlashtsImpl("torch"), _Wrong(), _OOM()])
    by = {(r["impl"], r["mode"], r["T"]): r for r in rows}
    for T in (16, 32, 64):
        for mode in ("fwd", "fwdbwd"):
            good, wrong = by[("flashts-torch", mode, T)], by[("wrong", mode, T)]
            assert good["ms"] is not None and good["max_rel_err"] < 1e-5 and "error" not in good
            assert wrong["ms"] is None and wrong["error"].startswith("wrong output")
            assert wrong["max_rel_err"] > 0.05
    # the OOM impl: fine at T=16, OOM at 32 (caught), skipped at 64
    assert by[("oom", "fwd", 16)]["ms"] is not None
    assert by[("oom", "fwd", 32)]["error"] == "OOM" and by[("oom", "fwd", 32)]["ms"] is None
    assert by[("oom", "fwd", 64)]["error"].startswith("skipped: OOM at T=32")


def test_window_pairs_and_counts():
    for T in (1, 5, 17):
        for left, right in ((-1, 0), (3, 0), (2, 4), (-1, -1), (0, 0), (30, 30)):
            i = torch.arange(T).unsqueeze(1)
            j = torch.arange(T).unsqueeze(0)
            allowed = torch.ones(T, T, dtype=torch.bool)
            if left >= 0:
                allowed &= j >= i - left
            if right >= 0:
                allowed &= j <= i + right
            assert registry.window_pairs(T, left, right) == int(allowed.sum()), (T, left, right)
    for cfg in registry.gpu_configs() + registry.cpu_configs():
        case = registry.Case(cfg, cfg.Ts[-1], "bfloat16")
        c = registry.flops_bytes(case)
        assert 0 < c["fwd"][0] < c["fwdbwd"][0] and 0 < c["fwd"][1] < c["fwdbwd"][1]
    # full causal window = dense causal attention count
    cfg = Config.make("sliding_window_attention", 2, 3, 16, 16, (64,), window=(-1, 0))
    case = registry.Case(cfg, 64, "float16")
    assert registry.flops_bytes(case) == registry.dense_attention_flops_bytes(case, True, 16, 16)


def test_report_speedup_vs_best_baseline():
    base = {"op": "sliding_window_attention", "dtype": "bfloat16", "B": 1, "H": 1, "D": 8, "Dv": 8,
            "params": {"window": [3, 0]}, "T": 1024, "peak_mb": 1.0}
    rows = [dict(base, impl="flashts-triton", mode="fwd", ms=1.0),
            dict(base, impl="flashts-torch", mode="fwd", ms=3.0),
            dict(base, impl="sdpa", mode="fwd", ms=4.0),
            dict(base, impl="flex", mode="fwd", ms=None, error="OOM")]
    table, notes = report.markdown_table(rows)
    assert "3.00× vs flashts-torch" in table   # the triton kernel is compared with the torch backend too
    assert "1.33× vs sdpa" in table            # the torch backend only with the peers
    assert "OOM" in table and any("OOM" in n for n in notes)


def test_decode_step_bench_cpu(tmp_path):
    """python -m bench.decode: every streaming op, the torch backend and Triton's decode kernels (interpreter here),
    checked against the float64 torch step before timing; JSON + markdown written."""
    from bench import decode

    backends = ["torch"] + (["triton"] if _backend_available("triton") else [])
    rc = decode.main(["--device", "cpu", "--B", "3", "--H", "2", "--D", "12", "--L", "5", "--iters", "2",
                      "--backends", *backends, "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    files = sorted(os.listdir(tmp_path))
    assert [f.rsplit(".", 1)[1] for f in files] == ["json", "md"] and files[0].startswith("decode_")
    with open(tmp_path / files[0]) as f:
        data = json.load(f)
    assert {(r["op"], r["backend"]) for r in data["rows"]} == {(op, b) for op in decode.OPS for b in backends}
    for r in data["rows"]:
        assert r["error"] is None, r
        assert r["rel_err"] < 1e-4 and r["eager_us"] > 0 and r["bytes"] > 0 and r["graph_us"] is None
    assert "| latte_attention | torch |" in (tmp_path / files[1]).read_text()


def test_decode_step_bytes():
    from bench.decode import step_bytes
    # linear: state S [D, Dv] + z [D] in float32, read and written; q, k (D) and v, o (Dv) in bf16
    assert step_bytes("linear_attention", 2, 3, 4, 5, 7, 2) == 2 * 2 * 3 * (20 + 4) * 4 + 2 * 3 * (8 + 10) * 2
    assert step_bytes("latte_attention", 1, 1, 4, 5, 7, 4) == 2 * 7 * 7 * 4 + (14 + 10) * 4
    # Macchiato: Latte's state + q, k, v, o, mix (L+1), latent_k (L) + the 63-row window cache read and written
    assert step_bytes("latte_macchiato_attention", 1, 1, 4, 5, 7, 2) == (
        2 * 7 * 7 * 4 + (8 + 10 + 15) * 2 + 2 * 63 * 9 * 2)


def _backend_available(b):
    from flashts import _backend
    return _backend.available(b, torch.device("cpu"))


@pytest.mark.skipif(not _backend_available("triton"), reason="needs triton (interpreter on CPU)")
def test_tune_sweeps_knobs_checks_and_restores(tmp_path):
    """python -m bench.tune: every variant checked against the torch backend, then timed; the module's knobs are
    restored afterwards; a variant that cannot run is reported with its error, not a time."""
    from bench import tune
    import flashts.kernels.linear_attention as kl

    before = (kl.CHUNK_SIZE, kl.BV_MAX)
    rc = tune.main(["--op", "linear", "--device", "cpu", "--dtype", "float32", "--B", "1", "--H", "1", "--T", "21",
                    "--D", "8", "--grid", "CHUNK_SIZE=16,x", "BV_MAX=16", "--out", str(tmp_path), "--quiet"])
    assert rc == 0 and (kl.CHUNK_SIZE, kl.BV_MAX) == before
    data = json.loads(next(tmp_path.glob("tune_linear_*.json")).read_text())
    rows = data["rows"]
    # the default (64, 64) is added to the grid: 2 x 1 + 1 variants; a chunk of "x" cannot launch
    assert len(rows) == 3 and sum(r["default"] for r in rows) == 1
    good = [r for r in rows if r["error"] is None]
    bad = [r for r in rows if r["error"] is not None]
    assert {r["settings"]["CHUNK_SIZE"] for r in good} == {16, 64} and [r["settings"]["CHUNK_SIZE"] for r in bad] == ["x"]
    assert all(r["fwd_ms"] > 0 and r["fwdbwd_ms"] > 0 and r["max_rel_err"] < 1e-4 for r in good)
    assert all(r["fwdbwd_ms"] is None for r in bad)
    assert "**(default)**" in next(tmp_path.glob("tune_linear_*.md")).read_text()


def test_tune_grid_parsing():
    from bench.tune import parse_grid
    assert parse_grid(["CHUNK=16,32", "fwd=128:64:8:3", "PREC=tf32"]) == {
        "CHUNK": [16, 32], "fwd": [(128, 64, 8, 3)], "PREC": ["tf32"]}
    with pytest.raises(ValueError):
        parse_grid(["fwd=128:64"])
