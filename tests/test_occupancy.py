"""The occupancy rule of the Triton kernels (kernels/occupancy.py): no goal shape and no short-sequence,
large-batch shape under-fills a 132-SM GPU, and the launchers' "auto" modes give the reference's results in
both modes the rule can pick (under the interpreter, whose assumed SM count the tests vary).

The programs are counted from the launchers' own configuration classes on ``meta`` tensors (nothing runs), so
the counts are those of a GPU launch (the interpreter assumes INTERPRETER_SMS = 132 SMs).
"""
from __future__ import annotations

import pytest
import torch
import triton

from helpers import check_against_reference, device_for

occ = pytest.importorskip("flashts.kernels.occupancy", reason="triton is not installed")
from flashts.kernels import linear_attention as la  # noqa: E402
from flashts.kernels import prefix_scan as ps  # noqa: E402

SMS = occ.INTERPRETER_SMS
# goal table shapes (B, H, T, D) and the short-sequence, large-batch shapes of PatchTST-like models
GOALS = {"linear_attention": [(4, 16, 8192, 64), (4, 16, 8192, 128)],
         "latte_attention": [(8, 8, 8192, 64)], "aaren_attention": [(8, 8, 8192, 64)]}
SHORT = [(B, H, T, D) for T in (96, 192, 336, 512, 720) for (B, H) in ((1, 1), (2, 4), (4, 8), (16, 8), (32, 16),
                                                                      (64, 16), (128, 16), (512, 8), (4096, 1))
         for D in (16, 64)]


def meta(*shape):
    return torch.empty(shape, device="meta", dtype=torch.bfloat16)


def test_interpreter_assumes_an_h100_sm_count():
    assert occ.sm_count(torch.device("cpu")) == 132 and occ.sm_count(torch.device("meta")) == 132


@pytest.mark.parametrize("B,H,T,D", GOALS["linear_attention"] + SHORT)
def test_linear_fills_the_gpu(B, H, T, D):
    cfg = la._Config(meta(B, T, H, D), meta(B, T, H, D), meta(B, T, H, D), None, "elu")
    chunk_grid = cfg.NS * B * H                   # _causal_out / _norm / _grads kernels
    seq_grid = B * H * cfg.NV                     # one pass, chunk states, state cotangents
    main = seq_grid if cfg.fwd_mode == "one_pass" else chunk_grid
    best = max(chunk_grid, B * H * triton.cdiv(D, 16))
    if best >= SMS:
        assert main >= SMS, (cfg.fwd_mode, main)
        assert chunk_grid >= SMS or seq_grid >= SMS
    else:  # the whole call is less work than one program per SM: the mode with the most programs
        assert main == max(chunk_grid, seq_grid) and cfg.BV_seq == 16
    # the sequential passes: split Dv until they fill, or down to 16-column tiles (each at its default config)
    assert seq_grid >= SMS or cfg.BV_seq == 16
    for kind in ("fwd_causal", "chunk_state", "dstate"):
        bv = cfg.bv(cfg.tune_set(kind)[0], True)
        assert B * H * triton.cdiv(D, bv) >= SMS or bv == 16, (kind, bv)
    if cfg.fwd_mode == "one_pass":  # ≥ 2 programs per SM, or the chunk-parallel grid is not larger
        assert seq_grid >= occ.ONE_PASS_PROGRAMS_PER_SM * SMS or best < SMS or chunk_grid <= seq_grid


@pytest.mark.parametrize("op", ["latte_attention", "aaren_attention"])
@pytest.mark.parametrize("B,H,T,D", GOALS["latte_attention"] + SHORT)
def test_prefix_scan_fills_the_gpu(op, B, H, T, D):
    aaren = op == "aaren_attention"
    L = 1 if aaren else D
    cfg = ps._Config(meta(B, T, H, D), meta(B, T, H, D), L, D, None, aaren=aaren)
    seq, par = B * H * cfg.NV, B * H * cfg.NS * cfg.NV
    main = par if cfg.chunked else seq
    best = B * H * cfg.NS * triton.cdiv(D, 16)
    if best >= SMS:
        assert main >= SMS, (cfg.chunked, main, cfg.BV)
    else:
        assert cfg.BV == 16 and main == max(seq, par)
    if not cfg.chunked:
        assert seq >= occ.ONE_PASS_PROGRAMS_PER_SM * SMS or cfg.NS == 1
    bidir = ps._Config(meta(B, T, H, D), meta(B, T, H, D), L, D, None, aaren=aaren, causal=False)
    assert B * H * bidir.NV >= SMS or bidir.BV == 16


def test_goal_shapes_pick_the_parallel_modes():
    """The shapes measured on the H100 (2026-11-23) in their one-pass modes (64–128 programs on 132 SMs)."""
    lin = la._Config(meta(4, 8192, 16, 64), meta(4, 8192, 16, 64), meta(4, 8192, 16, 64), None, "elu")
    assert lin.fwd_mode == "two_pass" and lin.NS * 4 * 16 == 8192 and lin.BV_seq == 16
    latte = ps._Config(meta(8, 8192, 8, 64), meta(8, 8192, 8, 64), 64, 64, None, aaren=False)
    assert latte.chunked and latte.BV == 32
    # many short series (PatchTST: B·H = 4096, T = 96): the one passes
    many = la._Config(meta(512, 96, 8, 16), meta(512, 96, 8, 16), meta(512, 96, 8, 16), None, "elu")
    assert many.fwd_mode == "one_pass"
    assert not ps._Config(meta(512, 96, 8, 16), meta(512, 96, 8, 16), 16, 16, None, aaren=False).chunked


def test_rule_edges():
    assert occ.choose(1, 1, 64, 64, 132) == occ.Launch("one_pass", 16, 4, 4, 4)     # one chunk: split Dv
    assert occ.choose(264, 264 * 8, 64, 64, 132).mode == "one_pass"
    assert occ.choose(263, 263 * 8, 64, 64, 132).mode == "chunked"
    assert occ.choose(10, 100, 64, 64, 132, mode="one_pass").BV == 16
    assert occ.choose(10, 1000, 64, 64, 132, mode="chunked", chunk_dv_tiles=False).BV == 64
    assert occ.split_dv(200, 64, 64, 132) == 64 and occ.split_dv(100, 64, 64, 132) == 32
    with pytest.raises(ValueError):
        occ.choose(1, 1, 16, 16, 132, mode="two_pass")


@pytest.mark.parametrize("sms", [1, 10**6])
def test_auto_modes_match_the_reference(sms, monkeypatch):
    """"auto" under the interpreter with 1 SM (→ the one passes, wide Dv tiles) and a huge GPU (→ the chunked
    modes, Dv split to 16): outputs, all gradients and final states against the reference."""
    monkeypatch.setattr(occ, "INTERPRETER_SMS", sms)
    monkeypatch.setattr(ps, "CHUNK", 16)
    monkeypatch.setattr(ps, "SCAN_MODE", "auto")
    monkeypatch.setattr(la, "CHUNK_SIZE", 16)
    monkeypatch.setattr(la, "FWD_MODE", "auto")
    B, T, H = 1, 33, 2
    g = torch.Generator().manual_seed(sms)
    x = [torch.randn(B, T, H, n, generator=g, dtype=torch.float64) for n in (6, 6, 20)]
    cfg = la._Config(*x, None, "elu")
    one_pass_bv = min(32, la._tune_set("fwd_causal", cfg.BK, torch.float64)[0].BV)  # Dv = 20: a 32 tile at most
    assert cfg.fwd_mode == ("one_pass" if sms == 1 else "two_pass") and cfg.BV_seq == (one_pass_bv if sms == 1 else 16)
    check_against_reference("linear_attention", "triton", tuple(x), dict(output_final_state=True))
    lat = [torch.randn(B, T, H, n, generator=g, dtype=torch.float64) for n in (5, 5, 20)]
    pcfg = ps._Config(lat[1], lat[2], 5, 5, None, aaren=False)
    assert pcfg.chunked == (sms != 1) and pcfg.BV == (32 if sms == 1 else 16)
    check_against_reference("latte_attention", "triton", tuple(lat), dict(output_final_state=True),
                            skip_grad_outputs=("[1][0]",))


@pytest.mark.parametrize("causal", [True, False])
def test_linear_split_gradient_launches(causal, monkeypatch):
    """The backward's dq / dk / dv launches of ``_grads_kernel`` (a config with ``split``: wide heads, float32)
    forced at a small head dim, with GQA (the group sums of dk and dv) and several Dv tiles: all gradients
    against the reference."""
    monkeypatch.setattr(la, "TILES", {"grads": la._Tiles(16, 8, 1, split=True)})
    monkeypatch.setattr(la, "CHUNK_SIZE", 16)
    monkeypatch.setattr(la, "BV_MAX", 16)
    g = torch.Generator().manual_seed(7)
    q = torch.randn(1, 21, 4, 5, generator=g, dtype=torch.float64)
    k = torch.randn(1, 21, 2, 5, generator=g, dtype=torch.float64)
    v = torch.randn(1, 21, 2, 20, generator=g, dtype=torch.float64)
    check_against_reference("linear_attention", "triton", (q, k, v), dict(causal=causal))


def test_warmup_runs_every_op_and_autotune_is_off_without_a_gpu(monkeypatch):
    import flashts
    from flashts.kernels import autotune
    assert not autotune.enabled(torch.device("cpu"))
    monkeypatch.setenv("FLASHTS_AUTOTUNE", "0")
    assert not autotune.enabled(torch.device("cuda", 0))
    ran = []
    monkeypatch.setattr(autotune, "CACHE", {})
    assert autotune.launch("k", [1, 2], ran.append, torch.device("cpu")) == 1 and ran == [1]
    assert flashts.warmup(["sliding_window_attention", "aaren_attention", "latte_attention"], B=1, H=1, T=[17],
                          D=8, L=4, device=device_for("triton")) == {}
    assert autotune.bucket(96) == 128 and autotune.bucket(128) == 128
