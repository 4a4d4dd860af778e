"""The benchmark protocol shared by every script in ``bench/``.

* Every timed function is jitted; its **compile cost** (trace + lower, then XLA compile, via
  ``jax.jit(f).lower(*args).compile()``) is measured separately from its **steady state**, which is timed on the
  compiled executable with ``jax.block_until_ready`` around each call.
* Warm-up calls are excluded. Runs of the compared systems are **interleaved** (round-robin, rotating the order every
  round) so that load on the machine hits all of them alike; we report the median and the minimum over ``reps``
  repetitions (``≥ 100`` by default; fewer with ``--quick`` / ``--tiny``).
* Ratios are against the hand-coded baseline measured *in the same run*.
* The header prints the versions (python, jax, jaxlib, numpyro) and the machine (CPU model, cores, load average).

Every script takes ``--quick`` (≤ a few minutes) and ``--tiny`` (a smoke test of seconds: fewest reps, smallest
sizes, XLA at optimization level 0 — its timings mean nothing) and prints markdown tables: one ``## heading`` per
table, which ``bench/regenerate.py`` copies into ``docs/benchmarks.md``. Progress goes to stderr. Every script's
entry point is ``main(argv)``, so the tests run ``--tiny`` in-process.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as `python bench/x.py` from a checkout

import jax  # noqa: E402
from mdtable import table  # noqa: E402, F401 - common.table, as every script calls it

from ppl._jax_internals import ClosedJaxpr, subjaxprs  # noqa: E402

# ---------------------------------------------------------------------------------------------- command line


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="fewer repetitions and sizes (about a minute)")
    p.add_argument("--tiny", action="store_true", help="smoke test: fewest repetitions, smallest size (CI)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per system (default 100; 30 quick)")
    return p


def reps_for(args: argparse.Namespace, full: int = 100, quick: int = 30, tiny: int = 3) -> int:
    if args.reps is not None:
        return args.reps
    return tiny if args.tiny else quick if args.quick else full


def mode(args: argparse.Namespace) -> str:
    return "tiny" if args.tiny else "quick" if args.quick else "full"


# XLA options for every program compiled through this module: ``--tiny`` compiles at backend optimization level 0
# (2–3× faster compiles on CPU; the program's values are the same). Set by :func:`print_header` for each run (per
# compile, not through ``XLA_FLAGS``: a script run in-process by the tests finds the backend already initialized).
COMPILER_OPTIONS: dict[str, Any] = {}
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def progress(*parts: Any) -> None:
    """A progress line, on stderr (stdout carries the results)."""
    print(*parts, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- environment


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return m[1].strip() if m else platform.machine()


def environment() -> dict[str, str]:
    import jaxlib
    import numpyro

    cores = os.cpu_count()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = cores
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpyro": numpyro.__version__,
        "backend": f"{jax.default_backend()} ({jax.devices()[0].device_kind})",
        "cpu": cpu_model(),
        "cores": f"{usable} usable of {cores}",
        "load average (1, 5, 15 min)": load,
    }


def print_header(title: str, args: argparse.Namespace, reps: int) -> None:
    COMPILER_OPTIONS.clear()
    if args.tiny:
        COMPILER_OPTIONS.update(FAST_COMPILE)
    print(f"# {title}\n")
    env = environment()
    print(" | ".join(f"{k}: {v}" for k, v in env.items()))
    print(f"mode: {mode(args)}, {reps} timed repetitions per system (interleaved), warm-up excluded\n", flush=True)


def print_load() -> None:
    try:
        print("load average at the end: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------- timing


@dataclass
class Compiled:
    """A jitted function's executable, its jaxpr, and what building it cost."""

    name: str
    executable: Any
    args: tuple[Any, ...]
    trace_s: float
    lower_s: float
    compile_s: float
    jaxpr: Any
    lowered: Any

    @property
    def trace_lower_s(self) -> float:
        return self.trace_s + self.lower_s

    @property
    def total_compile_s(self) -> float:
        return self.trace_s + self.lower_s + self.compile_s

    def __call__(self) -> Any:
        return self.executable(*self.args)


def compile_timed(name: str, fn: Callable[..., Any], *args: Any, static_argnums: Sequence[int] = ()) -> Compiled:
    """``jax.jit(fn).trace(*args).lower().compile()`` with trace, lower and XLA compile timed separately.

    Pass a *fresh* function object to time tracing from scratch (JAX and ``ppl`` cache per function object).
    """
    t0 = time.perf_counter()
    traced = jax.jit(fn, static_argnums=tuple(static_argnums)).trace(*args)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    exe = lowered.compile(dict(COMPILER_OPTIONS) or None)
    t3 = time.perf_counter()
    dyn = tuple(a for i, a in enumerate(args) if i not in static_argnums)
    return Compiled(name, exe, dyn, t1 - t0, t2 - t1, t3 - t2, traced.jaxpr, lowered)


def jit(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Like ``jax.jit(fn)`` for one signature, compiled on the first call with :data:`COMPILER_OPTIONS`."""
    exe: list[Any] = []

    def call(*args: Any) -> Any:
        if not exe:
            exe.append(jax.jit(fn).lower(*args).compile(dict(COMPILER_OPTIONS) or None))
        return exe[0](*args)

    return call


def run_once(fn: Callable[..., Any], *args: Any) -> Any:
    """``jax.jit(fn)(*args)``, compiled with :data:`COMPILER_OPTIONS` (for the checks around the timed programs)."""
    return jax.jit(fn).lower(*args).compile(dict(COMPILER_OPTIONS) or None)(*args)


@dataclass
class Timing:
    name: str
    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)


def interleaved(systems: Sequence[Compiled], reps: int, warmup: int = 3) -> dict[str, Timing]:
    """Steady-state time per call of each compiled system, measured round-robin (order rotated every round)."""
    for s in systems:
        for _ in range(warmup):
            jax.block_until_ready(s())
    out = {s.name: Timing(s.name, []) for s in systems}
    n = len(systems)
    for r in range(reps):
        for j in range(n):
            s = systems[(r + j) % n]
            t0 = time.perf_counter()
            jax.block_until_ready(s())
            out[s.name].times.append(time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------------------------------------- program size


def count_eqns(jaxpr: Any) -> int:
    """Equations of a jaxpr, counting those of nested jaxprs (scan/cond bodies, pjit, custom_jvp...) recursively."""
    j = jaxpr.jaxpr if isinstance(jaxpr, ClosedJaxpr) else jaxpr
    return sum(1 + sum(count_eqns(s) for s in subjaxprs(e)) for e in j.eqns)


_HLO_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*\S+\s+([\w\-]+)\(", re.MULTILINE)


def hlo_stats(compiled: Compiled) -> dict[str, int]:
    """Op counts of the program: StableHLO ops before optimization, and XLA HLO instructions / fusions after."""
    pre = compiled.lowered.as_text()
    stablehlo_ops = len(re.findall(r"^\s*(?:%[\w#:]+(?:, %[\w#:]+)*\s*=\s*)?\"?(?:stablehlo|chlo)\.", pre, re.M))
    post = compiled.executable.as_text() or ""
    ops = _HLO_INSTR.findall(post)
    entry = _entry_computation(post)
    entry_ops = [op for op in _HLO_INSTR.findall(entry) if op not in ("parameter", "get-tuple-element", "tuple")]
    return {
        "stablehlo_ops": stablehlo_ops,
        "hlo_instructions": len(ops),
        "fusions": sum(op == "fusion" for op in ops),
        "entry_kernels": len(entry_ops),
    }


def _entry_computation(hlo: str) -> str:
    m = re.search(r"^ENTRY .*?^}", hlo, re.MULTILINE | re.DOTALL)
    return m[0] if m else ""


# ---------------------------------------------------------------------------------------------- tables


def fmt_time(s: float) -> str:
    if s >= 1.0:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def ratio(x: float, base: float) -> str:
    return f"{x / base:.3f}×"


# ---------------------------------------------------------------------------------------------- goals


@dataclass
class Goal:
    """A ratio goal and what this run measured: ``values`` maps a label (``"batch 64"``) to a ratio; the goal is met
    when every value is at most ``target`` (or at least, with ``at_least``)."""

    what: str
    target: float
    values: dict[str, float]
    at_least: bool = False

    def met(self, v: float) -> bool:
        return v >= self.target if self.at_least else v <= self.target

    def row(self) -> list[str]:
        vals = list(self.values.items())
        if not vals:
            return [self.what, ("≥ " if self.at_least else "≤ ") + f"{self.target:g}×", "not measured", "—"]
        fmt = lambda v: "exact" if v == float("inf") else f"{v:.3f}×"  # noqa: E731 - inf: zero variance
        if len(vals) <= 4:
            measured = " / ".join(fmt(v) for _, v in vals) + f" ({' / '.join(k for k, _ in vals)})"
        else:
            lo, hi = min(v for _, v in vals), max(v for _, v in vals)
            measured = f"{fmt(lo)}–{fmt(hi)} ({len(vals)} rows: {vals[0][0]} … {vals[-1][0]})"
        misses = [f"{k} ({fmt(v)})" for k, v in vals if not self.met(v)]
        verdict = "**met**" if not misses else "**missed** at " + ", ".join(misses)
        return [self.what, ("≥ " if self.at_least else "≤ ") + f"{self.target:g}×", measured, verdict]


def print_goals(goals: Sequence[Goal], note: str = "") -> None:
    """The ``## Goals`` section: each goal, the ratios this run measured and the verdict, computed — the summary
    table at the top of docs/benchmarks.md is assembled from these sections (``bench/regenerate.py``)."""
    print("\n## Goals\n")
    print(table(["goal", "target", "measured (this run)", "verdict"], [g.row() for g in goals]))
    if note:
        print(f"\n{note}")
