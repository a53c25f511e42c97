"""Offline evidence for the CUDA kernels (``csrc/*.cu``) on sm_90, without a GPU.

For every ``.cu`` file this compiles a cubin for sm_90 with the extension's own nvcc flags (those of
``setup.py``: ``-O3 --use_fast_math --expt-relaxed-constexpr``) and ``-Xptxas -v``, then reads

* from ptxas: registers per thread, spill stores/loads (bytes), stack frame and static shared memory per kernel;
* from the SASS (``cuobjdump -sass``): tensor-core instructions (``HMMA``/``HGMMA``), 128-bit global loads
  (``LDG.E.128``) and ``cp.async`` (``LDGSTS``) per kernel.

``EXPECTED`` lists, per kernel (name as printed, one row per template instance), what it has TODAY. It is not a
wish list: the kernels without tensor cores or 128-bit loads are listed as such, so the table documents the gap
of issue 15. ``tests/test_cuda_resources.py`` fails when a kernel spills, when a kernel LOSES an instruction
class it is listed with, or when a kernel is missing from / new to the list.

``GRIDS`` gives the blocks each kernel launches at the goal shapes of issue 14 (H200: 132 SMs), computed by a
port of the launchers' rules (for the sliding window, the tile choice of ``carve`` against 227 KB).

Command line (writes the markdown table used in the README and ``bench/results``)::

    python tests/cuda_resources.py [--md OUT.md] [--jobs N]

Tools: ``nvcc`` (PATH or ``/usr/local/cuda/bin``), ``cuobjdump`` + ``nvdisasm`` (PATH, the CUDA toolkit, or
the PyPI wheels ``nvidia-cuda-cuobjdump`` / ``nvidia-cuda-nvdisasm``, which ``.ci/setup.sh`` installs),
``c++filt`` (binutils).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import glob
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")
ARCH = "sm_90"
SMS = 132  # H200 / H100 SXM
MAX_SMEM_OPTIN = 232448  # bytes of dynamic shared memory per block on sm_90 (227 KB)
NVCC_FLAGS = ["-std=c++17", "-O3", "--use_fast_math", "--expt-relaxed-constexpr"]


# ------------------------------------------------------------------------------------------------ tools

def _pip_cuda_bin() -> list[str]:
    dirs = []
    for p in sys.path:
        for sub in ("nvidia/cu13/bin", "nvidia/cuda_cuobjdump/bin", "nvidia/cuda_nvdisasm/bin",
                    "triton/backends/nvidia/bin"):  # Triton's wheel bundles cuobjdump + nvdisasm too
            d = os.path.join(p, sub)
            if os.path.isdir(d):
                dirs.append(d)
    return dirs


def find_tool(name: str) -> str | None:
    """Path of a CUDA tool: PATH, the toolkit, or a PyPI nvidia wheel in this interpreter's site-packages."""
    hit = shutil.which(name)
    if hit:
        return hit
    for d in ["/usr/local/cuda/bin"] + _pip_cuda_bin():
        cand = os.path.join(d, name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def sources() -> list[str]:
    return sorted(glob.glob(os.path.join(CSRC, "*.cu")))


# ------------------------------------------------------------------------------------------------ parsing

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(text: str) -> dict[str, dict]:
    """ptxas -v output -> {mangled kernel: {regs, stack, spill_stores, spill_loads, smem}}."""
    out: dict[str, dict] = {}
    cur = None
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            cur = out.setdefault(m.group(1), dict(regs=0, stack=0, spill_stores=0, spill_loads=0, smem=0))
            continue
        if cur is None:
            continue
        m = _PROPS.search(line)
        if m:
            cur["stack"], cur["spill_stores"], cur["spill_loads"] = (int(g) for g in m.groups())
        m = _USED.search(line)
        if m:
            cur["regs"] = int(m.group(1))
            s = _SMEM.search(line)
            cur["smem"] = int(s.group(1)) if s else 0
    return out


_FUNC = re.compile(r"^\s*Function : (\S+)")
_HMMA = re.compile(r"\b(HMMA|HGMMA)\.")
_LDG128 = re.compile(r"\bLDG\.E(\.[A-Z0-9_]+)*\.128\b")
_LDGSTS = re.compile(r"\bLDGSTS\b")


def parse_sass(text: str) -> dict[str, dict]:
    """cuobjdump -sass output -> {mangled kernel: {hmma, ldg128, ldgsts} instruction counts}."""
    out: dict[str, dict] = {}
    cur = None
    for line in text.splitlines():
        m = _FUNC.match(line)
        if m:
            cur = out.setdefault(m.group(1), dict(hmma=0, ldg128=0, ldgsts=0))
            continue
        if cur is None or "/*" not in line:
            continue
        cur["hmma"] += bool(_HMMA.search(line))
        cur["ldg128"] += bool(_LDG128.search(line))
        cur["ldgsts"] += bool(_LDGSTS.search(line))
    return out


def demangle(names: list[str]) -> dict[str, str]:
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    res = subprocess.run([tool], input="\n".join(names) + "\n", capture_output=True, text=True, check=True)
    return dict(zip(names, res.stdout.splitlines()))


_TYPES = [("__nv_bfloat16", "bf16"), ("__half", "f16"), ("float", "f32")]


def short_name(demangled: str) -> str:
    """'void flashts::linear::(anonymous namespace)::fwd_kernel<__half>(...)' -> 'linear::fwd_kernel<f16>'."""
    s = demangled
    if s.startswith("void "):
        s = s[5:]
    depth = 0
    for i, ch in enumerate(s):  # cut the parameter list: the first '(' at template depth 0 that is not a namespace
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0 and not s.startswith("(anonymous", i):
            s = s[:i]
            break
    s = s.replace("(anonymous namespace)::", "").replace("flashts::", "")
    s = re.sub(r"\((?:\w+::)*Kind\)0", "Aaren", s)
    s = re.sub(r"\((?:\w+::)*Kind\)1", "Latte", s)
    for long, short in _TYPES:
        s = re.sub(rf"\b{re.escape(long)}\b", short, s)
    return s.replace(", ", ",")


# ------------------------------------------------------------------------------------------------ compile

@dataclasses.dataclass
class Kernel:
    file: str
    name: str
    regs: int
    stack: int
    spill_stores: int
    spill_loads: int
    smem: int
    hmma: int
    ldg128: int
    ldgsts: int

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads


def compile_one(src: str, outdir: str) -> tuple[str, str]:
    """nvcc -cubin -Xptxas -v for ARCH; returns (ptxas report, SASS text)."""
    nvcc, cuobjdump = find_tool("nvcc"), find_tool("cuobjdump")
    if nvcc is None:
        raise RuntimeError("nvcc not found")
    if cuobjdump is None:
        raise RuntimeError("cuobjdump not found: pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm")
    cubin = os.path.join(outdir, os.path.basename(src) + ".cubin")
    cmd = [nvcc, *NVCC_FLAGS, f"-I{CSRC}", "-cubin", f"-arch={ARCH}", "-Xptxas", "-v", src, "-o", cubin]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"nvcc failed on {src}:\n{res.stderr[-4000:]}")
    env = dict(os.environ)
    nvdisasm = find_tool("nvdisasm")
    if nvdisasm:
        env["PATH"] = os.path.dirname(nvdisasm) + os.pathsep + env.get("PATH", "")
    sass = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True, env=env)
    if sass.returncode != 0:
        raise RuntimeError(f"cuobjdump failed on {cubin}:\n{sass.stderr[-2000:]}")
    return res.stdout + res.stderr, sass.stdout


def collect(jobs: int | None = None, files: list[str] | None = None) -> list[Kernel]:
    """Compiles every csrc/*.cu (in parallel) and returns one Kernel row per compiled kernel instance."""
    files = files or sources()
    jobs = jobs or max(1, min(len(files), os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp, cf.ThreadPoolExecutor(jobs) as pool:
        results = list(pool.map(lambda f: compile_one(f, tmp), files))
    rows: list[Kernel] = []
    for src, (ptx, sass) in zip(files, results):
        res, ins = parse_ptxas(ptx), parse_sass(sass)
        names = demangle(sorted(res))
        for mangled in sorted(res, key=lambda n: short_name(names[n])):
            r, i = res[mangled], ins.get(mangled, dict(hmma=0, ldg128=0, ldgsts=0))
            rows.append(Kernel(os.path.basename(src), short_name(names[mangled]), **r, **i))
    return rows


# ------------------------------------------------------------------------------------------------ expectations

# What each kernel has TODAY (hmma: tensor-core instructions; ldg128: 128-bit global loads). A kernel listed
# True must keep it; False means "not there yet" (the gap), not "must not have". Every compiled kernel must be
# listed. Types: f32 / f16 / bf16 instances of one template share a line via {T}.
_ALL = ("f32", "f16", "bf16")
_16 = ("f16", "bf16")


def _expand(template: str, hmma_types=(), ldg_types=()) -> dict[str, tuple[bool, bool]]:
    return {template.format(T=t): (t in hmma_types, t in ldg_types) for t in _ALL}


EXPECTED: dict[str, tuple[bool, bool]] = {}
# linear attention: mma.sync TF32 tensor cores for every input type (one product for 16-bit inputs, 3xTF32 for
# float32); 16-byte loads of contiguous rows (scalar fallback for strided ones); the chunk-parallel forward
# (chunk_state / state_scan / chunk_out).
for _k in ("fwd_kernel", "bwd_dq_kernel", "bwd_dkv_kernel", "chunk_state_kernel", "chunk_out_kernel"):
    EXPECTED.update(_expand("linear::%s<{T}>" % _k, hmma_types=_ALL, ldg_types=_ALL))
EXPECTED.update(_expand("linear::state_scan_kernel<{T}>", ldg_types=_ALL))
# sliding window: wmma f16/bf16 tensor cores in the tile kernels, FMA for float32; delta is a row reduction.
for _k in ("fwd_kernel", "dq_kernel", "dkdv_kernel"):
    EXPECTED.update(_expand("swa::%s<{T}>" % _k, hmma_types=_16))
EXPECTED.update(_expand("swa::delta_kernel<{T}>"))
# sliding window FA2 kernels (16-bit inputs, head dims padded to 64 / 128 / 256): mma.sync m16n8k16 + cp.async tiles.
for _t in _16:
    EXPECTED[f"swa::fa2_fwd_kernel<{_t},64,2>"] = (True, False)  # <T, padded head dim, m-tiles per warp>
    EXPECTED[f"swa::fa2_fwd_kernel<{_t},64,1>"] = (True, False)  # FLASHTS_SWA_FWD_ROWS=64
    EXPECTED[f"swa::fa2_fwd_kernel<{_t},128,1>"] = (True, False)
    EXPECTED[f"swa::fa2_fwd_kernel<{_t},256,1>"] = (True, False)
    for _k in ("fa2_dq_kernel", "fa2_dkdv_kernel"):
        for _dp in (64, 128, 256):
            EXPECTED[f"swa::{_k}<{_t},{_dp}>"] = (True, False)
for _t in _16:  # δ = rowsum(dO·O) with 16-byte loads
    for _pl in (8, 16, 32):
        EXPECTED[f"swa::fa_delta_kernel<{_t},{_pl}>"] = (False, True)
# kernels that must keep their cp.async (LDGSTS) tile loads
EXPECTED_CP_ASYNC = {k for k in EXPECTED if k.startswith("swa::fa2_")}  # (+ the scan one pass, added below)
# prefix scan (Aaren / Latte), chunk-parallel (csrc/scan_chunk.cuh; <kAaren, T[, phase]>): chunk products on
# mma.sync TF32 for 16-bit inputs (exact FMA for float32, as Triton's "ieee"), 16-byte row loads where aligned.
for _a in ("false", "true"):
    for _k in ("chunk_sum_kernel", "chunk_out_kernel", "onepass_kernel"):
        EXPECTED.update(_expand("scan::%s<%s,{T}>" % (_k, _a), hmma_types=_16, ldg_types=_ALL))
    for _ph in (1, 2):  # 1: per-chunk cotangent maps, 2: per-chunk gradients
        EXPECTED.update(_expand("scan::chunk_bwd_kernel<%s,{T},%d>" % (_a, _ph), hmma_types=_16, ldg_types=_ALL))
for _k in ("bidir_out_kernel", "bidir_dq_kernel", "bidir_dkv_kernel"):
    EXPECTED.update(_expand("scan::%s<{T}>" % _k, hmma_types=_16, ldg_types=_ALL))
# the scans of chunk states / cotangents; the group_* kernels are the two-level scan's passes 2 and 3 (used when
# the per-(sequence, head, latent, column) chains cannot fill the SMs, e.g. Aaren at its goal shape)
for _k in ("state_scan_kernel", "group_scan_kernel", "group_apply_kernel"):
    EXPECTED.update(_expand("scan::%s<{T}>" % _k, ldg_types=_ALL))
for _k in ("cot_scan_kernel", "cot_group_scan_kernel", "cot_group_apply_kernel", "dq_sum_kernel"):
    EXPECTED.update(_expand("scan::%s<{T}>" % _k))
# the scan one pass double-buffers its k/v(/q) rows with cp.async
EXPECTED_CP_ASYNC |= {k for k in EXPECTED if k.startswith("scan::onepass_kernel")}
# ... and so do linear attention's sequential kernels (one-pass forward / backward sweeps)
EXPECTED_CP_ASYNC |= {k for k in EXPECTED if k.split("<")[0] in ("linear::fwd_kernel", "linear::bwd_dq_kernel",
                                                                    "linear::bwd_dkv_kernel")}
# the old sequential-in-time FMA scans: fallbacks only (state too wide for the chunk tiles; bidirectional one pass).
for _kind in ("Aaren", "Latte"):
    for _k in ("forward_kernel", "recompute_kernel", "reverse_kernel"):
        EXPECTED.update(_expand("scan::%s<%s,{T}>" % (_k, _kind)))
EXPECTED.update(_expand("scan::bidir_bwd_kernel<{T}>"))
# auto-correlation: elementwise / reduction kernels around cuFFT (no matrix products); <T, VEC>: VEC > 1 = the
# 16-byte path (contiguous (h, d) rows), VEC = 1 the strided gather; <true> = the 16-byte spectrum path.
for _k in ("aggregate_kernel", "delay_dots_partial_kernel"):
    for _t, _v in (("f32", 4), ("f16", 8), ("bf16", 8)):
        EXPECTED[f"autocorr::{_k}<{_t},1>"] = (False, False)
        EXPECTED[f"autocorr::{_k}<{_t},{_v}>"] = (False, True)
for _k in ("cross_spectrum_kernel", "spectrum_grad_kernel"):
    EXPECTED[f"autocorr::{_k}<false>"] = (False, False)
    EXPECTED[f"autocorr::{_k}<true>"] = (False, True)
for _k in ("delay_dots_final_kernel", "delay_grad_kernel"):
    EXPECTED["autocorr::" + _k] = (False, False)

# decode steps (csrc/decode_step.cu): the VEC > 1 instances read the float32 state (or the ring's k/v rows) with
# 128-bit loads; VEC = 1 is the scalar fallback for odd sizes / unaligned pointers. No matrix products.
for _t in _ALL:
    for _k in ("linear", "aaren", "latte", "macchiato"):
        EXPECTED[f"decode::{_k}_step_kernel<{_t},1>"] = (False, False)
        EXPECTED[f"decode::{_k}_step_kernel<{_t},4>"] = (False, True)
    EXPECTED[f"decode::swa_ring_step_kernel<{_t},1>"] = (False, False)
    EXPECTED[f"decode::swa_ring_step_kernel<{_t},{16 // (4 if _t == 'f32' else 2)}>"] = (False, True)

# Matrix kernels: those whose math is a tile product (should use tensor cores; issue 15). The rest are scans,
# elementwise or reductions.
MATRIX_KERNELS = re.compile(r"^(linear::(fwd|bwd_dq|bwd_dkv|chunk_state|chunk_out)|swa::(fa2_)?(fwd|dq|dkdv))_kernel")


# ------------------------------------------------------------------------------------------------ grids

def _swa_bt(kind: str, D: int, Dv: int, elem: int = 2) -> int:
    """Port of csrc/sliding_window.cu carve(): the largest tile BT in {64, 32, 16} whose smem fits."""
    r128 = lambda n: (n + 127) // 128 * 128  # noqa: E731
    pt = 8 if elem == 2 else 4
    Dp, Dvp = -(-D // 16) * 16, -(-Dv // 16) * 16
    for BT in (64, 32, 16):
        ldDt, ldVt, ldBt, ldDf, ldVf, ldBf = Dp + pt, Dvp + pt, BT + pt, Dp + 4, Dvp + 4, BT + 4
        b = r128(BT * ldDt * elem) * 2 + r128(BT * ldVt * elem)
        if kind != "fwd":
            b += r128(BT * ldVt * elem) + r128(BT * ldBf * 4)  # dO, dP
        b += r128(BT * ldBf * 4)  # S
        if kind != "dq":
            b += r128(BT * ldBt * elem)  # P
        if kind != "fwd":
            b += r128(BT * ldBt * elem)  # dS
        b += {"fwd": r128(BT * ldVf * 4), "dq": r128(BT * ldDf * 4), "dkdv": r128(BT * ldDf * 4) + r128(BT * ldVf * 4)}[kind]
        b += 2 * r128(BT * 4)
        if b <= MAX_SMEM_OPTIN:
            return BT
    return 0


def _autocorr_K(L: int) -> int:
    return min(L, max(1, int(math.floor(math.log(L)))))


def goal_grids() -> dict[str, str]:
    """Kernel family -> 'blocks at the goal shapes' (bf16), from the launchers' rules."""
    g: dict[str, str] = {}
    lin = 4 * 16
    for k in ("fwd", "bwd_dq", "bwd_dkv"):
        g[f"linear::{k}_kernel"] = f"B·H = {lin} (D=64 and 128)"
    # chunk-parallel forward (the plan at the goal shapes: C = 64, BV = 64; tests/test_linear_chunk_port.py)
    g["linear::fwd_kernel"] += " (one-pass mode; not picked at the goal shapes)"
    for k in ("bwd_dq", "bwd_dkv"):  # chunk-parallel backward at the goal shapes: C = 64 (D=64), 32 (D=128)
        g[f"linear::{k}_kernel"] = "chunk-parallel B·⌈T/C⌉·H: D=64: 8192; D=128: 16384 (one-pass mode: B·H = 64)"
    g["linear::chunk_state_kernel"] = "B·⌈T/C⌉·H·⌈Dv/BV⌉: D=64: 8192; D=128: 16384"
    g["linear::chunk_out_kernel"] = "B·⌈T/C⌉·H·⌈Dv/BV⌉: D=64: 8192; D=128: 16384"
    g["linear::state_scan_kernel"] = "B·H·⌈Dp(Dvp+1)/1024⌉: D=64: 320; D=128: 1088"
    T = 8192
    for k in ("fwd", "dq", "dkdv"):
        parts = []
        for D in (64, 128):
            bt = _swa_bt(k, D, D)
            parts.append(f"D={D}: BT={bt}, {4 * 16 * -(-T // bt)}")
        g[f"swa::{k}_kernel"] = "B·H·⌈T/BT⌉: " + "; ".join(parts)
    g["swa::delta_kernel"] = f"⌈B·T·H/4⌉ = {-(-4 * T * 16 // 4)}"
    g["swa::fa_delta_kernel"] = (f"⌈B·T·H/(4·32/P)⌉: Dv=64: {-(-4 * T * 16 // 16)}, Dv=128: {-(-4 * T * 16 // 8)}, "
                                 f"Dv=256: {-(-4 * T * 16 // 4)}")
    for k in ("fwd", "dq", "dkdv"):  # FA2 kernels: 64-row blocks (B·Hk·⌈T/64⌉ for dk/dv; Hk = H at the goal shapes)
        g[f"swa::fa2_{k}_kernel"] = f"B·H·⌈T/64⌉ = {4 * 16 * -(-T // 64)} (D=64, 128, 256)"
    g["swa::fa2_dkdv_kernel"] = (f"2^[D=256]·B·Hk·⌈T/64⌉: D=64/128: {4 * 16 * -(-T // 64)}, "
                                 f"D=256 (two column halves): {2 * 4 * 16 * -(-T // 64)}")
    g["swa::fa2_fwd_kernel"] = f"B·H·⌈T/(64·MT)⌉: D=64 (MT=2): {4 * 16 * -(-T // 128)}, D=128/256: {4 * 16 * -(-T // 64)}"
    for k in ("forward_kernel", "recompute_kernel", "reverse_kernel", "bidir_bwd_kernel"):
        g[f"scan::{k}"] = "B·H = 64 (fallback only: very wide L·Dv states)"
    # prefix scan, goal shapes Latte L64 / Aaren D64, B8 H8 T8192 Dv64, chunk C = 16 (ports of scan_fwd_plan and
    # the backward launchers: chunked mode, BV = 64; state scans one thread per (sequence, head, l, 4 columns))
    NSC = -(-8192 // 16)
    g["scan::chunk_sum_kernel"] = f"B·⌈T/16⌉·H·⌈Dv/BV⌉ = {8 * NSC * 8} (Latte and Aaren)"
    g["scan::chunk_out_kernel"] = g["scan::chunk_sum_kernel"]
    g["scan::chunk_bwd_kernel"] = f"B·⌈T/16⌉·H = {8 * NSC * 8} (Latte and Aaren; 128 threads)"
    g["scan::state_scan_kernel"] = (f"⌈N·H·L·⌈Dv/4⌉/128⌉·G: Latte {-(-8 * 8 * 64 * 16 // 128)} (G = 1), "
                                    "Aaren 136 (two-level: G = 17 groups of 31 chunks)")
    g["scan::group_scan_kernel"] = "Aaren: 8 × 128 threads (17 group steps); not launched for Latte"
    g["scan::group_apply_kernel"] = "Aaren: 136 × 128 threads; not launched for Latte"
    g["scan::cot_scan_kernel"] = ("one thread per (sequence, head, l, d) per group: Latte 1024 × 256 threads (G = 1), "
                                  "Aaren 160 × 128 (G = 5 groups of 103 chunks)")
    g["scan::cot_group_scan_kernel"] = "Aaren: 128 × 32 threads (5 group steps); not launched for Latte"
    g["scan::cot_group_apply_kernel"] = "Aaren: 160 × 128 threads; not launched for Latte"
    g["scan::dq_sum_kernel"] = "Aaren: 128 × 32 threads"
    g["scan::onepass_kernel"] = "N·H·⌈Dv/BV⌉ (picked when ≥ 2·SMs, e.g. B512 H8 T96 D16: 4096; not at the goal shapes)"
    for k in ("bidir_out_kernel", "bidir_dq_kernel", "bidir_dkv_kernel"):
        g[f"scan::{k}"] = f"B·⌈T/16⌉·H = {8 * NSC * 8} (Latte bidirectional, not a goal shape)"
    B, H, E = 32, 8, 64
    N = H * E
    parts = {k: [] for k in ("spec", "agg", "dpart", "dgrad")}
    for L in (720, 8192):  # ports of the launchers' rules (csrc/auto_correlation.cu); bf16 (VEC 8), float32 (VEC 4)
        F, K = L // 2 + 1, _autocorr_K(L)
        blocks = -(-N // max(1, min(N, (1 << 24) // (B * L))))  # FFT channel blocks of the glue
        tiles = -(-L // 32)
        chunks = min(K, max(1, -(-4 * SMS // (B * tiles))))
        kpb = min(8, -(-K // chunks))
        parts["spec"].append(f"L={L}: {-(-B * F // 8)} × {blocks} launch(es)")
        parts["agg"].append(f"L={L}: bf16 {B * tiles * -(-N // 128)}, f32 {B * tiles * -(-N // 64)}")
        parts["dpart"].append(f"L={L}: {B * tiles * -(-K // kpb)} ({kpb} delays each)")
        parts["dgrad"].append(f"L={L}: {B}")
    g["autocorr::cross_spectrum_kernel"] = "⌈B·F/8⌉ per channel block: " + ", ".join(parts["spec"])
    g["autocorr::spectrum_grad_kernel"] = g["autocorr::cross_spectrum_kernel"]
    g["autocorr::aggregate_kernel"] = "B·⌈T/32⌉·⌈H·D/(16·VEC)⌉: " + ", ".join(parts["agg"])
    g["autocorr::delay_dots_partial_kernel"] = "B·⌈L/32⌉·delay chunks: " + ", ".join(parts["dpart"])
    g["autocorr::delay_grad_kernel"] = "B: " + ", ".join(parts["dgrad"])
    g["autocorr::delay_dots_final_kernel"] = "⌈B·K/4⌉ (launcher tests only; the backward uses delay_grad)"
    g.update(DECODE_GRIDS)
    return g


# Decode-step kernels (csrc/decode_step.cu) at the decode goal shape B=64 H=8 D=Dv=64 (L=64 latents).
DECODE_GRIDS: dict[str, str] = {
    f"decode::{k}_step_kernel": "B·H = 512 (128 threads each)" for k in ("linear", "aaren", "latte", "swa_ring", "macchiato")}


def grid_of(name: str) -> str:
    base = re.sub(r"<.*", "", name)
    return goal_grids().get(base, "—")


# ------------------------------------------------------------------------------------------------ report

def markdown(rows: list[Kernel]) -> str:
    grids = goal_grids()
    lines = [
        f"Per-kernel resources for {ARCH} (`nvcc {' '.join(NVCC_FLAGS)} -cubin -arch={ARCH} -Xptxas -v`, SASS by "
        "`cuobjdump -sass`; produced by `python tests/cuda_resources.py`). regs: registers per thread; spill: "
        "spill store+load bytes; smem: static shared memory (the tiles are dynamic shared memory, sized at launch); "
        "HMMA / LDG.128 / LDGSTS: instruction counts in the SASS (tensor cores, 128-bit global loads, cp.async). "
        f"Grid: blocks launched at the goal shapes (bf16) against {SMS} SMs (H200).",
        "",
        "| file | kernel | regs | spill B | smem B | HMMA | LDG.128 | LDGSTS | matrix kernel | grid at goal shapes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = re.sub(r"<.*", "", r.name)
        lines.append(
            f"| {r.file} | `{r.name}` | {r.regs} | {r.spills} | {r.smem} | {r.hmma or 'no'} | {r.ldg128 or 'no'} | "
            f"{r.ldgsts or 'no'} | {'yes' if MATRIX_KERNELS.match(r.name) else 'no'} | {grids.get(base, '—')} |")
    return "\n".join(lines) + "\n"


def markdown_compact(rows: list[Kernel]) -> str:
    """One row per kernel template (f32 / f16 / bf16 instances side by side): the README's table."""
    groups: dict[tuple[str, str], dict[str, Kernel]] = {}
    for r in rows:
        m = re.search(r"\b(f32|f16|bf16)\b", r.name)
        key = (r.file, re.sub(r"\b(f32|f16|bf16)\b", "T", r.name) if m else r.name)
        groups.setdefault(key, {})[m.group(1) if m else "-"] = r
    grids = goal_grids()
    order = ("f32", "f16", "bf16", "-")
    lines = [
        "| kernel | regs f32/f16/bf16 | spill B | HMMA | LDG.E.128 | grid at goal shapes (132 SMs) |",
        "|---|---|---|---|---|---|",
    ]

    def which(g, attr):
        have = [t for t in order if t in g and getattr(g[t], attr)]
        if not have:
            return "no"
        return "yes" if len(have) == len(g) else " ".join(have)

    for (file, name), g in groups.items():
        regs = "/".join(str(g[t].regs) for t in order if t in g)
        spill = max(k.spills for k in g.values())
        base = re.sub(r"<.*", "", name)
        lines.append(f"| `{name}` | {regs} | {spill} | {which(g, 'hmma')} | {which(g, 'ldg128')} | "
                     f"{grids.get(base, '—')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--md", help="write the markdown table here")
    ap.add_argument("--compact", help="also write the one-row-per-template table here")
    ap.add_argument("--jobs", type=int, default=None)
    args = ap.parse_args(argv)
    rows = collect(args.jobs)
    text = markdown(rows)
    if args.compact:
        with open(args.compact, "w", encoding="utf-8") as f:
            f.write(markdown_compact(rows))
    if args.md:
        with open(args.md, "w", encoding="utf-8") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
