"""Every Triton kernel variant that the ops launch on a GPU compiles for sm_90 (see ``tests/triton_compile.py``).

The interpreter tests never lower the kernels; this one does, without a GPU: the launches of a set of
scenarios are recorded under the interpreter with the GPU tile choices, then compiled in a subprocess with
``triton.compile`` for an H100 target. Every config of every autotune set is compiled: the defaults in every
scenario, each other config in one representative scenario per (kernel, input dtype, padded head dims)
(``triton_compile.representatives``). A compile failure fails the test, and so does a variant whose register
spills (stack bytes per thread) exceed ``triton_compile.SPILL_ALLOWANCE`` — the table the README states
("Spill allowance", checked here too).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import triton_compile  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the GPU tests compile and run every kernel")
def test_every_kernel_variant_compiles_for_sm90(tmp_path):
    pytest.importorskip("triton")
    specs = triton_compile.representatives(triton_compile.capture(all_configs=True))
    kernels = {s["kernel"] for s in specs}
    # the scenarios reach every kernel of every op (a new kernel that no scenario launches is not checked)
    assert {"_fwd_causal_kernel", "_grads_kernel", "_decode_kernel", "_fwd_kernel", "_bwd_dkdv_kernel",
            "_bwd_dq_kernel", "_aggregate_kernel", "_scan_fwd_kernel", "_scan_bwd_kernel", "_chunk_grads_kernel",
            "_bidir_bwd_kernel", "_causal_out_kernel", "_ps_fwd_kernel", "_ps_bwd_dkdv_kernel",
            "_chunk_cot_kernel", "_cross_spectrum_kernel"} <= kernels, sorted(kernels)
    assert {s["module"] for s in specs if s["kernel"] == "_fwd_kernel"} >= {
        "flashts.kernels.macchiato", "flashts.kernels.sliding_window_attention"}
    # non-default configs of every tuned module are among them
    tuned = {s["module"].rsplit(".", 1)[-1] for s in specs if s.get("tune")}
    assert {"prefix_scan", "prob_sparse", "macchiato", "auto_correlation", "sliding_window_attention"} <= tuned, tuned
    path = tmp_path / "specs.json"
    path.write_text(json.dumps(specs))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "triton_compile.py"), str(path), "--arch", "90",
                           "--jobs", str(min(4, os.cpu_count() or 1))], capture_output=True, text=True, env=env,
                          timeout=1500)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(specs), proc.stderr[-3000:]
    failed = [r for r in results if "error" in r]
    assert not failed, "\n".join(f"{r['kernel']} {r['constexprs']}: {r['error'][-800:]}" for r in failed[:5])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(r.get("registers") for r in results)  # the resource usage was read for every variant
    assert all(r.get("metadata_shared", 0) <= 227 * 1024 for r in results)  # sm_90: 227 KB per block
    excess = triton_compile.spill_excess(results)
    assert not excess, "register spills beyond SPILL_ALLOWANCE (and the README):\n" + "\n".join(excess[:20])
    spills: dict = {}
    for r in results:
        if r.get("stack"):
            name = f"{r['module'].rsplit('.', 1)[-1]}.{r['kernel']}"
            spills[name] = max(spills.get(name, 0), r["stack"])
    if spills:
        warnings.warn("Triton kernels that spill registers on sm_90 (max stack bytes per thread, within the "
                      "allowance): " + ", ".join(f"{k} {v}" for k, v in sorted(spills.items())))


def test_readme_states_the_spill_allowance():
    """The README's "Spill allowance" table lists exactly SPILL_ALLOWANCE (kernel → max stack bytes)."""
    text = open(os.path.join(HERE, "..", "README.md"), encoding="utf-8").read()
    section = text.split("**Spill allowance**", 1)[1].split("\n\n", 2)
    rows = re.findall(r"^\| `([\w.]+)` \| (\d+) \|", "\n\n".join(section[:2]), flags=re.M)
    assert {k: int(v) for k, v in rows} == triton_compile.SPILL_ALLOWANCE


def test_representatives_keep_defaults_and_one_scenario_per_config():
    """Defaults are all kept; a non-default config is kept once per (kernel, dtype, config, head dims)."""
    def spec(tune, d, flag, cfg="c1"):
        return {"module": "m", "kernel": "k", "signature": {"x": "*bf16", "BD": "constexpr"}, "options": {},
                "constexprs": {"BD": d, "HAS_STATE": flag}, "tune": tune, "tune_config": cfg}
    specs = [spec(0, 64, False, "c0"), spec(0, 64, True, "c0"), spec(1, 64, False), spec(1, 64, True), spec(1, 128, True),
             spec(2, 64, True, "c2")]
    out = triton_compile.representatives(specs)
    assert out[:2] == specs[:2] and out[2:] == [specs[2], specs[4], specs[5]]


def test_capture_all_configs_records_every_autotune_config(monkeypatch):
    """With FLASHTS_COMPILE_ALL_CONFIGS=1 the capture launches every config of a tuned launch's set (so the
    compile step compiles all of them); without it, the default only. No compile here (fast)."""
    pytest.importorskip("triton")
    from flashts.kernels import sliding_window_attention as sw
    only = r"^swa \(127, 0\) bfloat16 D=64$"
    monkeypatch.delenv("FLASHTS_COMPILE_ALL_CONFIGS", raising=False)
    default = triton_compile.capture(only=only)
    monkeypatch.setenv("FLASHTS_COMPILE_ALL_CONFIGS", "1")
    full = triton_compile.capture(only=only)

    def tiles(specs, kernel, a, b):
        return {(s["constexprs"][a], s["constexprs"][b], s["options"]["num_warps"], s["options"]["num_stages"])
                for s in specs if s["kernel"] == kernel}
    for kind, kernel, a, b in (("fwd", "_fwd_kernel", "BLOCK_M", "BLOCK_N"),
                               ("dkdv", "_bwd_dkdv_kernel", "BLOCK_N", "BLOCK_M"),
                               ("dq", "_bwd_dq_kernel", "BLOCK_M", "BLOCK_N")):
        want = {(t.a, t.b, t.num_warps, t.num_stages) for t in sw._tune_set(kind, 64, 64, torch.bfloat16, 128)}
        assert len(want) >= 3 and tiles(full, kernel, a, b) == want, kind
        d = sw._gpu_config(kind, 64, 64, torch.bfloat16, 128)
        assert tiles(default, kernel, a, b) == {(d.a, d.b, d.num_warps, d.num_stages)}
