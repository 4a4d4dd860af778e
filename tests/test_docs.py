"""Every ``python`` code block of README.md runs, in order, in one namespace (the quick start included)."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def python_blocks(path: pathlib.Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_code_blocks_run():
    blocks = python_blocks(ROOT / "README.md")
    assert len(blocks) >= 3
    ns: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md[block {i}]", "exec"), ns)  # noqa: S102
    assert abs(float(ns["mu"]) - 2.0) < 0.5 and float(ns["w"]) > 0.0
