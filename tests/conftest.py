"""Test configuration.

* No GPU: ``TRITON_INTERPRET=1`` (set before anything imports triton), so Triton kernels run on CPU
  tensors under the interpreter — that is how every Triton kernel is tested on CI.
* ``FLASHTS_POISON=1``: every output buffer the kernels allocate starts as NaN, so an element a kernel
  forgets to write fails the comparison.
* Markers: ``gpu`` (needs a CUDA device) and ``cuda_ext`` (needs the compiled ``flashts._C``) skip
  cleanly, with the reason, where those are missing: "no GPU" on a machine without one.
* ``FLASHTS_EMULATE_CUDA_EXT=1`` (opt-in, not on CI: hours on 2 cores): the ``cuda_ext`` tests run WITHOUT a GPU,
  on CPU tensors, against the emulated ``flashts._C`` of ``tests/emulation/ext_build.py`` (the real binding files
  and kernels, the kernels run by the CUDA emulation harness). Tests that need torch.cuda itself (CUDA graphs)
  are also marked ``gpu`` and skip. CI runs the compact subset ``tests/test_cuda_ext_emulation.py``.
* Skips are summarised as one line per reason ("SKIPPED 74 tests: no GPU"), not one line per test: the
  ``-r`` report in pyproject.toml leaves ``s`` out and :func:`pytest_terminal_summary` prints the groups.
"""
import os

try:
    import torch as _torch
    _HAS_GPU = _torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_GPU = False
if not _HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ["FLASHTS_POISON"] = "1"
os.environ.pop("FLASHTS_BACKEND", None)
_EMULATED_EXT = os.environ.get("FLASHTS_EMULATE_CUDA_EXT") == "1" and not _HAS_GPU

import pytest  # noqa: E402


_EMULATED_EXT_CTX: list = []


def pytest_configure(config):
    if _EMULATED_EXT:  # every process (xdist workers too) installs the emulated extension for the whole session
        import sys
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "emulation"))
        import ext_build
        _EMULATED_EXT_CTX.append(ext_build.installed(ext_build.load()))  # kept: collecting it would uninstall
        _EMULATED_EXT_CTX[-1].__enter__()
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU")
    config.addinivalue_line("markers", "cuda_ext: needs the compiled CUDA extension flashts._C")
    config.addinivalue_line("markers", "slow: long-running (memory acceptance, big T)")


def pytest_collection_modifyitems(config, items):
    import torch

    from flashts import _backend

    # float64 exists only on the torch backend (GPU backends raise TypeError for it, which test_api checks):
    # cases pairing a GPU backend with float64 are not meaningful and are deselected (counted as deselected).
    dropped, kept = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("backend") in ("triton", "cuda") and any(v is torch.float64 for v in params.values()):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept

    skip_gpu = pytest.mark.skip(reason="no GPU")
    skip_ext = skip_gpu if not _HAS_GPU else pytest.mark.skip(
        reason="flashts._C not built (FLASHTS_BUILD_CUDA=1 pip install -e . --no-build-isolation)")
    for item in items:
        if "gpu" in item.keywords and not _HAS_GPU:
            item.add_marker(skip_gpu)
        if "cuda_ext" in item.keywords and not (_HAS_GPU and _backend.cuda_ext_available()) and not _EMULATED_EXT:
            item.add_marker(skip_ext)


# tests that run silently for minutes: announced with what they do and a time estimate when they start, a
# heartbeat line every _HEARTBEAT_S seconds while they run, their time when they end
_LONG_TESTS = {
    "test_triton_compile.py::test_every_kernel_variant_compiles_for_sm90":
        "compiling every Triton kernel variant (~590: every autotune config) for sm_90 in a subprocess: minutes (over 20 on a 2-core machine "
        "loaded by other jobs)",
}
_LONG_STARTED: dict = {}
_HEARTBEAT_S = 60.0


def _long_test(nodeid: str):
    return next((msg for key, msg in _LONG_TESTS.items() if nodeid.endswith(key)), None)


def pytest_runtest_logstart(nodeid, location):
    import threading
    import time
    msg = _long_test(nodeid)
    if msg:
        name = nodeid.split("::")[-1]
        stop = threading.Event()
        t0 = time.time()

        def heartbeat():
            while not stop.wait(_HEARTBEAT_S):
                _write_line(f"[{name}] still running, {time.time() - t0:.0f} s ...")

        threading.Thread(target=heartbeat, daemon=True).start()
        _LONG_STARTED[nodeid] = (t0, stop)
        _write_line(f"[{name}] {msg} ...")


def pytest_runtest_logfinish(nodeid, location):
    import time
    if nodeid in _LONG_STARTED:
        t0, stop = _LONG_STARTED.pop(nodeid)
        stop.set()
        _write_line(f"[{nodeid.split('::')[-1]}] finished in {time.time() - t0:.0f} s")


_REPORTER: list = []


def _write_line(msg: str) -> None:
    """A line on the terminal, also while a test runs (output capture is suspended for it, as live logging does)."""
    if not _REPORTER:
        return
    rep, capman = _REPORTER
    import contextlib
    with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
        rep.write("\n")
        rep.write_line(msg)


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session):
    rep = session.config.pluginmanager.get_plugin("terminalreporter")
    if rep is not None:
        _REPORTER[:] = [rep, session.config.pluginmanager.get_plugin("capturemanager")]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line per skip reason, with the number of tests and of files it covers."""
    groups: dict = {}
    for rep in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(rep, "longrepr", None)
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        reason = reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason
        files = groups.setdefault(reason, [0, set()])
        files[0] += 1
        files[1].add(rep.nodeid.split("::")[0])
    if not groups:
        return
    terminalreporter.section("skipped, by reason", sep="-")
    for reason, (n, files) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
        where = next(iter(files)) if len(files) == 1 else f"{len(files)} files"
        terminalreporter.write_line(f"SKIPPED {n} test{'s' if n > 1 else ''} ({where}): {reason}")


@pytest.fixture(autouse=True)
def _seed(request):
    """Fresh random inputs per test, reproducible from the test id (printed on failure)."""
    import zlib

    import torch

    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield
