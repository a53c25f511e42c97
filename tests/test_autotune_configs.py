"""Every non-default config of every autotune set computes the right values (kernels/autotune.py).

The interpreter normally runs each tuned launch with one pinned config, and tests/test_triton_compile.py only
compiles the others; here ``autotune.FORCE_INDEX = i`` makes every tuned launch run the i-th config of its GPU
set (its block sizes; warps and stages do not change what the interpreter computes) on a tiny shape, compared
with ``flashts.reference`` in float64 (outputs and every gradient; outputs only where the tuned launches are
forward-only). Configs that differ only in warps/stages compute the same under the interpreter and are not
repeated: FORCE_INDEX counts the configs with distinct block sizes. For each case the index goes up until no
launch has that many, and every run must have forced some launch, so each distinct-block config of each set
the case reaches runs once, and every tuned launch of the op must have been forced at least once. The sliding-window sets pin their tiles through
``BLOCKS`` under the interpreter: each distinct (program block, loop block) of its bf16 sets runs once.
"""
from __future__ import annotations

import pytest
import torch

from flashts import _backend
from flashts._validate import prob_sparse_sizes
from tests.helpers import check_against_reference, device_for

pytestmark = pytest.mark.skipif(
    device_for("triton").type != "cpu" or not _backend.available("triton", device_for("triton")),
    reason="interpreter only (on a GPU the autotuner itself runs every config)")

autotune = pytest.importorskip("flashts.kernels.autotune", reason="triton is not installed")
F32, BF16 = torch.float32, torch.bfloat16


def _r(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def _cases():
    """(id, op, args, kwargs, dtype, SCAN_MODE, grad, kinds that must have been forced)."""
    B, H = 1, 2
    # Aaren / Latte: only the forward one pass has configs with other blocks (C = 2·CHUNK); the rest of their
    # sets differ in warps/stages (compile-checked only). T = 40: two 32-step chunks, the second ragged.
    yield ("aaren", "aaren_attention", (_r(H, 24), _r(B, 40, H, 24), _r(B, 40, H, 20)), {}, F32, "one_pass",
           False, {"prefix_scan.fwd"})
    yield ("latte", "latte_attention", (_r(B, 40, H, 5), _r(B, 40, H, 5), _r(B, 40, H, 20)),
           dict(initial_state=(_r(B, H, 5), torch.rand(B, H, 5, dtype=torch.float64) + 0.5, _r(B, H, 5, 20)),
                output_final_state=True), F32, "one_pass", False, {"prefix_scan.fwd"})
    U, _ = prob_sparse_sizes(90, 90, 5)
    for dt in (F32, BF16):   # (float32 and half have different sets)
        yield (f"prob_sparse-{str(dt)[6:]}", "prob_sparse_attention",
               (_r(B, 90, H, 24), _r(B, 90, H, 24), _r(B, 90, H, 20)),
               dict(causal=True, sample_index=torch.randint(90, (90, U))), dt, "auto", True,
               {"prob_sparse.sample", "prob_sparse.fwd", "prob_sparse.bwd_rows", "prob_sparse.bwd_dkdv"})
    # the fused forward is Macchiato's only tuned launch (its backward is the window and Latte kernels')
    yield ("macchiato", "latte_macchiato_attention",
           (_r(B, 70, H, 12), _r(B, 70, H, 12), _r(B, 70, H, 10), _r(B, 70, H, 5), _r(B, 70, H, 4)),
           dict(window=(69, 0)), F32, "auto", False, {"macchiato.fwd"})
    yield ("auto_correlation", "auto_correlation", (_r(2, 80, H, 12), _r(2, 80, H, 12), _r(2, 80, H, 10)),
           dict(mode="infer"), F32, "auto", True,
           {"auto_correlation.cross_spectrum", "auto_correlation.aggregate", "auto_correlation.delay_dots"})


CASES = list(_cases())


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_every_config_of_a_set_matches_the_reference(case, monkeypatch):
    name, op, args, kwargs, dtype, scan_mode, grad, kinds = case
    from flashts.kernels import prefix_scan
    monkeypatch.setattr(prefix_scan, "SCAN_MODE", scan_mode)
    monkeypatch.setattr(prefix_scan, "CHUNK", 16)
    monkeypatch.setattr(autotune, "FORCE_SEEN", 0)
    forced = set()
    index = 1
    while index == 1 or index < autotune.FORCE_SEEN:
        monkeypatch.setattr(autotune, "FORCE_INDEX", index)
        monkeypatch.setattr(autotune, "FORCED", [])
        torch.manual_seed(index)
        check_against_reference(op, "triton", args, kwargs, dtype=dtype, grad=grad)
        assert autotune.FORCED and all(i == index for _, i, _ in autotune.FORCED), (index, autotune.FORCED)
        forced |= {n for n, _, _ in autotune.FORCED}
        index += 1
    # every tuned launch of the op has alternatives with other blocks (a set shrunk to its default fails)
    assert kinds <= forced, (sorted(kinds), sorted(forced))


def test_sliding_window_tiles_of_the_tune_sets_match_the_reference(monkeypatch):
    from flashts.kernels import sliding_window_attention as sw
    tiles = set()
    for kind in ("fwd", "dkdv", "dq"):
        for bd in (64, 128):
            for span in (None, 100):
                tiles |= {(t.a, t.b) for t in sw._tune_set(kind, bd, bd, BF16, span)}
    assert len(tiles) >= 4, tiles
    B, T, H = 1, 140, 1
    for a, b in sorted(tiles):
        monkeypatch.setattr(sw, "BLOCKS", (a, b))
        torch.manual_seed(a * 1000 + b)
        args = (_r(B, T, H, 24), _r(B, T, H, 24), _r(B, T, H, 20))
        check_against_reference("sliding_window_attention", "triton", args, dict(window=(70, 0)), dtype=F32)
