"""``bench/gpu_check.sh`` rehearsed on CPU (GPU_CHECK_DRY_RUN=1): every step's command runs with tiny CPU shapes,
``--collect-only`` or ``--list``, so a typo in the script or a changed flag fails here, not in the one device
call. The decode step (bench.decode, tested by tests/test_bench.py) is left out to keep this short."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
def test_gpu_check_rehearsal(tmp_path):
    env = dict(os.environ, GPU_CHECK_DRY_RUN="1", PYTHON=sys.executable,
               STEPS="build aaren goals tsweep tests memcheck")
    proc = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_check.sh"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = {s["step"]: s for s in summary["steps"]}
    assert summary["dry_run"] and list(steps) == ["build", "aaren", "goals", "tsweep", "tests", "memcheck"], \
        proc.stdout[-2000:]
    failed = {k: (tmp_path / f"{k}.log").read_text()[-1500:] for k, s in steps.items() if s["rc"] != 0}
    assert not failed, failed
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "collected" in (tmp_path / "aaren.log").read_text()
    assert any(p.name.endswith("_goals.md") for p in tmp_path.iterdir())
    assert "| tests | 0 |" in (tmp_path / "gpu_check.md").read_text()
