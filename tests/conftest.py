"""Process-wide settings for the suite, set before JAX is imported.

Environment variables rather than ``jax.config.update``: the subprocesses the suite starts (examples, bench smoke
runs, the multi-device workers) inherit them, so they share the cache too. A variable already set wins.

* ``JAX_PLATFORMS=cpu``: the suite's numbers (tolerances, stderr bounds) are for the CPU.
* JAX's persistent compilation cache in ``.jax_cache/`` at the repository root (ignored by git): a program
  compiled once — by an earlier run, another xdist worker or a subprocess — is loaded instead of compiled again.
  Only programs that took at least 0.1 s to compile are written: below that, loading costs about what compiling
  does, and the many tiny op-by-op programs of eager code would flood the directory. Entries never expire (there is
  no size limit: JAX's eviction needs the ``filelock`` package); ``rm -rf .jax_cache`` clears it.
  xdist workers write to it at once: JAX writes each entry under its own file name and skips one that exists; a
  worker that reads an entry another is still writing gets a warning and compiles (see ``filterwarnings`` in
  ``pyproject.toml``).
* ``XLA_FLAGS=--xla_backend_optimization_level=0``: LLVM compiles the suite's CPU programs without its optimization
  passes (XLA's own graph passes still run). The suite compiles far more than it runs: a cold run takes ~40 % less
  compile time (measured: test_differential's expectation test 34 s → 22 s wall). Values can differ from an optimized
  build in the last float bits (contractions), never beyond the suite's tolerances; benchmarks do not set it.
"""

import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
