"""Run a script of the checkout (an example or a benchmark) as a subprocess, on the CPU, and return its stdout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(path: str, *args: str, timeout: float = 600.0, ci: bool = True) -> str:
    """``python ROOT/path *args`` with ``JAX_PLATFORMS=cpu`` (and ``CI=true``); fails the test, with the script's
    output, when it exits non-zero."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **({"CI": "true"} if ci else {})}
    proc = subprocess.run(
        [sys.executable, str(ROOT / path), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{path} {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout
