"""Packaging and first contact: backend_info's reasons, the build warning without torch, py.typed + mypy --strict
on a user script, `pip install .` (non-editable) into a fresh venv then `import flashts` from another folder.

The fresh venv gets the current interpreter's site-packages through a .pth file (so torch is not downloaded)
and builds without isolation and without the index (`--no-build-isolation --no-index`): nothing is fetched.
"""
from __future__ import annotations

import os
import pathlib
import runpy
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap

import pytest

import flashts
from flashts import _backend

ROOT = pathlib.Path(__file__).resolve().parents[1]
USER_SCRIPT = ROOT / "tests" / "typing_user_script.py"


def test_backend_info_marks_unavailable_backends_with_reasons():
    info = flashts.backend_info()
    for op, backends in info["ops"].items():
        assert backends.get("torch") == "available", (op, backends)
        for b, status in backends.items():
            ok = _backend.available(b, _default_device())
            assert status == "available" if ok else status.startswith("unavailable: ") and len(status) > 15
    if not _backend.cuda_ext_available():
        assert "flashts._C" in info["cuda_ext_reason"] and "--no-build-isolation" in info["cuda_ext_reason"]
        assert info["ops"]["linear_attention"]["cuda"] == "unavailable: flashts._C was not built"
    elif not _backend.available("cuda", _default_device()):
        assert "no CUDA device" in info["cuda_ext_reason"]
    else:
        assert info["cuda_ext_reason"] is None


def _default_device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_setup_warns_loudly_without_torch():
    """An isolated build (`pip install .`) has no torch: setup.py must say the extension is skipped and how to
    get it. Simulated by hiding torch from the interpreter that runs setup.py (`--name` only prints metadata)."""
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None          # `import torch` raises ImportError, as in an isolated build
        sys.argv = ["setup.py", "--name"]
        exec(compile(open("setup.py").read(), "setup.py", "exec"), {"__file__": "setup.py", "__name__": "__main__"})
    """)
    env = dict(os.environ, FLASHTS_BUILD_CUDA="auto")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "WITHOUT its CUDA extension" in p.stderr and "--no-build-isolation" in p.stderr, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == "flashts"


def test_py_typed_and_mypy_strict_on_a_user_script(tmp_path):
    """The user script runs, and `mypy --strict` passes on it (the public API is annotated); a control script
    calling an unannotated internal function must fail, so the check can fail.

    torch/triton/numpy are not followed (their stubs are Any here): following torch costs ~25 s of CPU, while
    what is checked is flashts's annotations (errors inside flashts are silenced, as for any installed package).
    """
    script = USER_SCRIPT.read_text()
    public = [n for n in flashts.__all__ if callable(getattr(flashts, n)) and not isinstance(getattr(flashts, n), type)]
    missing = [n for n in public if f"flashts.{n}(" not in script]
    assert not missing, f"tests/typing_user_script.py does not call {missing}: add them"
    pytest.importorskip("mypy", reason="mypy is not installed (pip install mypy; .ci/setup.sh installs it)")
    assert (pathlib.Path(flashts.__file__).parent / "py.typed").is_file()
    runpy.run_path(str(USER_SCRIPT), run_name="__main__")
    cfg = tmp_path / "mypy.ini"
    cfg.write_text("[mypy]\nstrict = True\nfollow_imports = silent\n"
                   + "".join(f"[mypy-{m}.*]\nfollow_imports = skip\n" for m in ("torch", "triton", "numpy")))
    control = tmp_path / "control.py"
    control.write_text("import torch\nfrom flashts.ops import _common\n\n\n"
                       "def f(x: torch.Tensor) -> None:\n    _common.cast_for_autocast(x)\n")
    env = dict(os.environ)
    where = pathlib.Path(flashts.__file__).parents[1]
    if where.name not in ("site-packages", "dist-packages"):  # a checkout (editable install): point mypy at it
        env["MYPYPATH"] = str(where)

    def mypy(path):
        return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(cfg), "--cache-dir",
                               str(tmp_path / "cache"), str(path)], capture_output=True, text=True, timeout=300,
                              env=env, cwd=tmp_path)
    ok = mypy(USER_SCRIPT)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = mypy(control)
    assert bad.returncode == 1 and "no-untyped-call" in bad.stdout, bad.stdout + bad.stderr


def _site_dirs() -> list[str]:
    dirs = [p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]
    return list(dict.fromkeys(dirs + [d for d in site.getsitepackages() if os.path.isdir(d)]))


def test_pip_install_non_editable_in_fresh_venv(tmp_path):
    """`pip install .` (a wheel, not editable) into a fresh venv, then `import flashts` from another folder: the
    installed copy is used (also from the parent folder of a clone named `flashts`, where a regular install wins
    over the clone root seen as a namespace package), its Triton kernels, py.typed and metadata are there."""
    src = tmp_path / "src"
    for name in ("flashts", "kernels", "csrc"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # the current interpreter's packages (torch, pip, setuptools), after the venv's own site-packages
    (pathlib.Path(purelib) / "outer_site.pth").write_text("\n".join(_site_dirs()) + "\n")
    env = dict(os.environ, FLASHTS_BUILD_CUDA="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)
    p = subprocess.run([str(py), "-m", "pip", "install", "--no-build-isolation", "--no-index", "--no-deps",
                        str(src)], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    # another folder: the parent of a "clone" named flashts (a symlink to the copied source tree)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(src, elsewhere / "flashts")
    check = textwrap.dedent(f"""
        import importlib.metadata as md, os, torch, flashts, flashts.kernels, flashts.nn
        assert flashts.__file__ and flashts.__file__.startswith({purelib!r}), flashts.__file__
        assert os.path.isfile(os.path.join(os.path.dirname(flashts.__file__), "py.typed"))
        q = torch.randn(1, 5, 2, 4)
        assert flashts.linear_attention(q, q, q, backend="torch").shape == (1, 5, 2, 4)
        dist = [d for d in md.distributions(path=[{purelib!r}]) if d.metadata["Name"] == "flashts"][0]
        meta = dist.metadata
        assert meta["Version"] == flashts.__version__ and meta["License-Expression"] == "MIT", dict(meta)
        assert {{"triton", "bench", "e2e", "dev"}} <= set(meta.get_all("Provides-Extra")), meta.get_all("Provides-Extra")
        assert any(r.startswith("torch>=2.4") for r in meta.get_all("Requires-Dist"))
        print("ok", flashts.backend_info()["cuda_ext_reason"] is not None or torch.cuda.is_available())
    """)
    p = subprocess.run([str(py), "-c", check], capture_output=True, text=True, timeout=300, env=env, cwd=elsewhere)
    assert p.returncode == 0 and p.stdout.startswith("ok True"), p.stdout[-3000:] + p.stderr[-3000:]
