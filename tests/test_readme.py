"""Every ```python block of README.md runs as written, in order, in one namespace (a block may use the names of the
blocks before it, as a reader going down the page would).

A block may be marked by an HTML comment on the line before its opening fence:
``<!-- example: raises SomeError -->`` (it must raise that exception), ``<!-- example: needs CUDA -->`` (run only
where a CUDA device is present), ``<!-- example: not run (why) -->`` (a fragment, e.g. one line of a model file:
only compiled, to catch syntax errors). Unmarked blocks must run without error on CPU; keep their shapes small.
"""
from __future__ import annotations

import builtins
import pathlib
import re

import pytest
import torch

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
MARKER = re.compile(r"<!--\s*example:\s*(.*?)\s*-->")


def python_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line number, marker or '', code) of every ```python block."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i + 1
            j = start
            while lines[j].strip() != "```":
                j += 1
            prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            m = MARKER.search(prev)
            blocks.append((start + 1, m.group(1) if m else "", "\n".join(lines[start:j])))
            i = j
        i += 1
    return blocks


def test_readme_python_blocks_run():
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 8
    ns: dict = {"__name__": "__readme__"}
    ran = 0
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for line, marker, code in blocks:
            compiled = compile(code, f"README.md:{line}", "exec")
            where = f"README.md line {line} ({marker or 'unmarked'})"
            if marker.startswith("not run"):
                continue
            if marker == "needs CUDA":
                if torch.cuda.is_available():
                    exec(compiled, ns)
                    ran += 1
                continue
            if marker.startswith("raises "):
                exc = getattr(builtins, marker.split()[1])
                with pytest.raises(exc):
                    exec(compiled, ns)
                ran += 1
                continue
            assert not marker, f"{where}: unknown marker"
            try:
                exec(compiled, ns)
            except Exception as e:  # noqa: BLE001 - name the block
                raise AssertionError(f"{where} failed: {type(e).__name__}: {e}") from e
            ran += 1
    finally:
        torch.set_num_threads(n)
    assert ran >= 8


def test_markers_are_read():
    text = "x\n<!-- example: raises ValueError -->\n```python\nraise ValueError\n```\n\n```python\ny = 1\n```\n"
    assert [(m, c) for _, m, c in python_blocks(text)] == [("raises ValueError", "raise ValueError"), ("", "y = 1")]
