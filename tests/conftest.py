"""Test configuration.

* No GPU: ``TRITON_INTERPRET=1`` (set before anything imports triton), so Triton kernels run on CPU
  tensors under the interpreter — that is how every Triton kernel is tested on CI.
* ``FLASHTS_POISON=1``: every output buffer the kernels allocate starts as NaN, so an element a kernel
  forgets to write fails the comparison.
* Markers: ``gpu`` (needs a CUDA device) and ``cuda_ext`` (needs the compiled ``flashts._C``) skip
  cleanly, with the reason, where those are missing: "no GPU" on a machine without one.
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

import pytest  # noqa: E402


def pytest_configure(config):
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
        if "cuda_ext" in item.keywords and not (_HAS_GPU and _backend.cuda_ext_available()):
            item.add_marker(skip_ext)


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
