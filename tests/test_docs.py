"""Every ``python`` code block of README.md and of each ``docs/*.md`` file runs.

The ```` ```python ```` blocks of one file run in order, in one namespace (later blocks use what earlier ones define),
one test per file. Each block is compiled with the file name ``README.md[block i]`` / ``docs/workflow.md[block i]``
(``i`` counts the file's python blocks from 0), so a traceback points at the block and the line inside it.

Blocks run with ``JAX_PLATFORMS=cpu`` and ``CI=true`` (no progress bars), in a fresh temporary working directory in
which ``examples`` links to the checkout's ``examples/``: paths such as ``examples/lang/coin.ppl`` resolve, and
files a block writes (checkpoints, plots) land in the temporary directory.

Code that is not Python, or not runnable (pseudo-code, shell commands, output listings, multi-host launch scripts),
gets another fence: ```` ```text ````, ```` ```bash ````, ```` ```console ````.

**Subprocess blocks.** A block that must run in a fresh Python process — typically one that sets
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before jax is imported, which cannot happen in this process
(jax is already imported) — is tagged by the line

    <!-- docs-test: subprocess -->

directly before its fence (an HTML comment: invisible when the Markdown is rendered). All tagged blocks of a file run
in *one* fresh process per file, in order, in one namespace of their own: they do not see the untagged blocks'
definitions, and the untagged blocks do not see theirs. Each such process pays the jax import (~5 s), so tag as few
blocks as possible and let the first tagged block of a file be the one that sets the environment.
"""

from __future__ import annotations

import json
import linecache
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

SUBPROCESS = "subprocess"
BLOCK_RE = re.compile(
    r"^(?:<!-- docs-test: (?P<tag>[\w-]+) -->\n)?```python[ \t]*\n(?P<code>.*?)^```[ \t]*$", flags=re.M | re.S
)
RUNNER = """\
import json, linecache, sys, traceback
ns = {"__name__": "__main__"}
for name, code in json.load(open(sys.argv[1])):
    linecache.cache[name] = (len(code), None, code.splitlines(keepends=True), name)
    try:
        exec(compile(code, name, "exec"), ns)
    except BaseException:
        traceback.print_exc()  # the Python printer reads linecache: the block's source lines appear
        sys.exit(1)
"""


def python_blocks(path: pathlib.Path) -> list[tuple[str, str, str | None]]:
    """``(name, code, tag)`` of every ```` ```python ```` block of ``path``, in order."""
    rel = path.relative_to(ROOT).as_posix()
    blocks = []
    for i, m in enumerate(BLOCK_RE.finditer(path.read_text())):
        tag = m["tag"]
        assert tag in (None, SUBPROCESS), f"{rel}[block {i}]: unknown tag <!-- docs-test: {tag} -->"
        blocks.append((f"{rel}[block {i}]", m["code"], tag))
    return blocks


def run_blocks(path: pathlib.Path, workdir: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Run the blocks of ``path`` (the tagged ones in one subprocess) in ``workdir``; the in-process namespace."""
    blocks = python_blocks(path)
    assert blocks, f"no python blocks in {path}"
    (workdir / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    ns: dict = {"__name__": "__main__"}
    for name, code, tag in blocks:
        if tag is None:
            linecache.cache[name] = (len(code), None, code.splitlines(keepends=True), name)  # source in tracebacks
            exec(compile(code, name, "exec"), ns)  # noqa: S102
    tagged = [(name, code) for name, code, tag in blocks if tag == SUBPROCESS]
    if tagged:
        script = workdir / "_docs_blocks.json"
        script.write_text(json.dumps(tagged))
        proc = subprocess.run([sys.executable, "-c", RUNNER, str(script)], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (
            f"subprocess blocks {[name for name, _ in tagged]} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return ns


def test_readme_code_blocks_run(tmp_path, monkeypatch):
    assert len(python_blocks(ROOT / "README.md")) >= 3
    ns = run_blocks(ROOT / "README.md", tmp_path, monkeypatch)
    assert abs(float(ns["mu"]) - 2.0) < 0.5 and float(ns["w"]) > 0.0


DOCS = sorted(p for p in (ROOT / "docs").glob("*.md") if python_blocks(p))


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_docs_code_blocks_run(path, tmp_path, monkeypatch):
    run_blocks(path, tmp_path, monkeypatch)
