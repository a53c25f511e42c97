"""Interleaved CPU A/B timing of the flashts torch backend against its CPU peers (issue 19), for a SHARED machine.

``python -m bench`` times each implementation in its own series of wall-clock runs; on a 2-core machine shared
with other jobs (load average 10-16) its medians swing by 2-10x between neighbouring rows. This script instead
alternates the implementations round by round inside one process and reports, per implementation and mode, the
MINIMUM single-thread CPU time (``time.thread_time``) over the rounds, and the ratio peer / flashts-torch (> 1:
flashts faster). Shapes are the ``python -m bench --device cpu`` ones (B1 H4 D64; Latte L16 Dv64 ``latte`` and
B4 H4 L64 Dv64 ``latte64``; sliding windows (127, 0) ``swa127`` and (64, 64) ``swa64``).

Usage (from the worktree root)::

    OMP_NUM_THREADS=1 python bench/cpu_interleaved.py linear,aaren 1024,4096,16384,32768
    FLEX=1 OMP_NUM_THREADS=1 python bench/cpu_interleaved.py swa127,swa64 1024,4096 fwd   # + compiled FlexAttention
    BUDGET=0.5 OMP_NUM_THREADS=1 python bench/cpu_interleaved.py latte,latte64 1024,32768

Each line: ``op T impl/mode=ms ... | peer/mode:ratio ... rounds=N``.
"""
import os, sys, time, statistics
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch
torch.set_num_threads(1)
sys.path.insert(0, os.getcwd())
import flashts  # noqa: E402
from bench.baselines import fla_chunk_linear_torch, aaren_textbook

def fb(f, leaves):
    def run():
        for l in leaves: l.grad = None
        o = f()
        o = o[0] if isinstance(o, tuple) else o
        o.backward(go(o))
    return run
_g = {}
def go(o):
    k = tuple(o.shape)
    if k not in _g: _g[k] = torch.randn_like(o)
    return _g[k]

ops = sys.argv[1].split(",")
Ts = [int(x) for x in sys.argv[2].split(",")]
modes = sys.argv[3].split(",") if len(sys.argv) > 3 else ["fwd", "fwdbwd"]
torch.manual_seed(0)
for op in ops:
    for T in Ts:
        res = {}
        if op == "linear":
            B, H, D = 1, 4, 64
            q, k, v = (torch.randn(B, T, H, D, requires_grad=True) for _ in range(3))
            impls = {"torch": lambda: flashts.linear_attention(q, k, v, backend="torch"),
                     "fla": lambda: fla_chunk_linear_torch(q, k, v)}
            leaves = [q, k, v]
        elif op == "aaren":
            B, H, D = 1, 4, 64
            q = torch.randn(H, D, requires_grad=True)
            k, v = (torch.randn(B, T, H, D, requires_grad=True) for _ in range(2))
            impls = {"torch": lambda: flashts.aaren_attention(q, k, v, backend="torch"),
                     "textbook": lambda: aaren_textbook(q, k, v)}
            leaves = [q, k, v]
        elif op.startswith("latte"):
            B, H, L, Dv = (4, 4, 64, 64) if op == "latte64" else (1, 4, 16, 64)
            q, k = (torch.randn(B, T, H, L, requires_grad=True) for _ in range(2))
            v = torch.randn(B, T, H, Dv, requires_grad=True)
            impls = {"torch": lambda: flashts.latte_attention(q, k, v, causal=True, backend="torch")}
            leaves = [q, k, v]
        elif op.startswith("swa"):
            win = (127, 0) if op == "swa127" else (64, 64)
            B, H, D = 1, 4, 64
            q, k, v = (torch.randn(B, T, H, D, requires_grad=True) for _ in range(3))
            impls = {"torch": lambda: flashts.sliding_window_attention(q, k, v, window=win, backend="torch")}
            leaves = [q, k, v]
            if os.environ.get("FLEX"):
                from bench.baselines import _compiled_flex
                from torch.nn.attention.flex_attention import create_block_mask
                left, right = win
                def mask_mod(b, h, qi, ki):
                    return (qi - ki <= left) & (ki - qi <= right)
                bm = create_block_mask(mask_mod, None, None, T, T, device="cpu", _compile=True)
                fx = _compiled_flex()
                qh, kh, vh = (x.detach().transpose(1, 2).contiguous() for x in (q, k, v))
                impls["flex"] = lambda: fx(qh, kh, vh, block_mask=bm)
        runs = {}
        for name, f in impls.items():
            for m in modes:
                if m == "fwd":
                    def r(f=f):
                        with torch.no_grad():
                            f()
                else:
                    r = fb(f, leaves)
                r(); runs[(name, m)] = r
        ts = {key: [] for key in runs}
        budget = float(os.environ.get("BUDGET", "2"))
        t_end = time.perf_counter() + budget * len(runs)
        rounds = 0
        while rounds < 3 or (time.perf_counter() < t_end and rounds < 25):
            for key, r in runs.items():
                t0 = time.thread_time(); r(); ts[key].append(time.thread_time() - t0)
            rounds += 1
        res = {key: min(v) * 1e3 for key, v in ts.items()}
        line = "  ".join(f"{n}/{m}={t:.2f}" for (n, m), t in res.items())
        others = [n for n in impls if n != "torch"]
        ratios = "  ".join(f"{o}/{m}:{res[(o, m)] / res[('torch', m)]:.2f}" for o in others for m in modes)
        print(op, T, line, "|", ratios, f"rounds={rounds}", flush=True)
