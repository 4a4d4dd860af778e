"""``bench/genjax_compare.py`` runs end to end in its smallest mode (``main(["--tiny"])`` in this process): the ``ppl``
rows always; the GenJAX rows (and the demonstration of GenJAX's scan bug, in a worker subprocess with the GenJAX
venv's python) when the GenJAX venv ``.venv-genjax`` exists; without it, the install command.

Timings are not asserted: a shared CI machine cannot say anything about them.
"""

from __future__ import annotations

import re

import pytest

from tests.test_bench_quick import ROOT, check_regions, run_bench, table_rows

GENJAX_PYTHON = ROOT / ".venv-genjax" / "bin" / "python"
WORKLOADS = ("VAE, batch 64", "mixture K=3 (categorical), N=100", "mixture K=2 (Bernoulli), N=100")
TIME = re.compile(r"^[\d.]+ (s|ms|µs)$")


def run_compare(*extra: str) -> str:
    out = run_bench("genjax_compare.py", *extra)
    check_regions("genjax", out)
    return out


def step_rows(out: str) -> dict[tuple[str, str], list[str]]:
    """The rows of the side-by-side table, by (workload, strategy)."""
    rows = {}
    for w in WORKLOADS:
        for r in table_rows(out, w):
            if len(r) == 9:  # workload, strategy, primitive, ppl median, ppl min, GenJAX median, min, ratio, ratio min
                rows[(w, r[1])] = r
    return rows


def check_ppl_rows(out: str) -> dict[tuple[str, str], list[str]]:
    rows = step_rows(out)
    for key in [(WORKLOADS[0], "reparam"), (WORKLOADS[1], "reinforce"), (WORKLOADS[1], "enum"),
                (WORKLOADS[2], "reinforce"), (WORKLOADS[2], "enum"), (WORKLOADS[2], "mvd")]:
        assert key in rows, f"no row {key}:\n{out}"
        assert TIME.match(rows[key][3]), f"ppl median of {key} is not a time: {rows[key]}"
    assert "VAE ELBO, batch 64" in out, out
    assert scan_bug_distinct(out).get("ppl") == "4 of 4", f"ppl draws a fresh value per key in a scan:\n{out}"
    return rows


def scan_bug_distinct(out: str) -> dict[str, str]:
    """Side → how many distinct estimates over the keys, for the first program of the scan-bug table."""
    lines = [line for line in out.splitlines() if line.startswith("|") and "jax.lax.scan` (θ" in line]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return {r[1]: r[3] for r in cells}


def test_genjax_compare_tiny() -> None:
    out = run_compare()
    rows = check_ppl_rows(out)
    if not GENJAX_PYTHON.exists():
        assert "GenJAX side not run" in out and "pip install genjax==1.0.14" in out, out
        return
    assert "GenJAX side: python: 3.1" in out and "genjax: 1.0.14" in out, out
    for key in [(WORKLOADS[0], "reparam"), (WORKLOADS[1], "reinforce"), (WORKLOADS[2], "enum"),
                (WORKLOADS[2], "mvd")]:
        r = rows[key]
        assert TIME.match(r[5]), f"GenJAX median of {key} is not a time: {r}"
        assert re.match(r"^[\d.]+× (met|missed)", r[7]), f"no ratio for {key}: {r}"
    assert "the same ELBO" in out, out
    # the scan bug: GenJAX returns one value for every key (ppl a different one per key: checked above)
    assert scan_bug_distinct(out).get("GenJAX") == "1 of 4", out


@pytest.mark.skipif(not GENJAX_PYTHON.exists(), reason="without .venv-genjax the test above covers this path")
def test_genjax_compare_without_venv() -> None:
    out = run_compare("--genjax-python", str(ROOT / "no-such-venv" / "bin" / "python"))
    check_ppl_rows(out)
    assert "GenJAX side not run" in out and "pip install genjax==1.0.14" in out, out
