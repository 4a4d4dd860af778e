"""The examples run end to end (``--quick``) and say what they claim: parse their printed tables."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from tests.scripts import run_script

ROOT = Path(__file__).resolve().parents[1]
NUM = r"[+-]?\d+\.\d+"


def run_example(name: str, timeout: float = 600.0) -> str:
    return run_script(f"examples/{name}", "--quick", timeout=timeout)


@pytest.fixture(scope="module")
def discrete_output() -> str:
    return run_example("discrete_latent.py")


def gradient_rows(out: str) -> list[tuple[str, float, float, float, float]]:
    """(estimator, phi, exact, variance, z) for each row of the gradient table."""
    row = re.compile(
        rf"^((?:ppl|numpyro) \S+)\s+\d+\s+({NUM})\s+({NUM})\s+({NUM})\s+({NUM})\s+(\S+)\s+({NUM})$", re.MULTILINE
    )
    return [(m[1], float(m[2]), float(m[3]), float(m[6]), float(m[7])) for m in row.finditer(out)]


def test_discrete_latent_table(discrete_output: str) -> None:
    rows = gradient_rows(discrete_output)
    names = {r[0] for r in rows}
    assert {"ppl reinforce", "ppl mvd", "ppl enum", "ppl leave_one_out(4)", "numpyro Trace_ELBO",
            "numpyro TraceGraph_ELBO"} <= names, names
    assert any(n.startswith("ppl baseline") for n in names), names
    assert len(rows) == 3 * len(names), "one row per estimator and phi"
    for name, phi, exact, var, z in rows:
        if name.startswith("ppl") or name == "numpyro TraceGraph_ELBO":
            assert abs(z) < 4.0, f"{name} at phi={phi}: z = {z} (should be unbiased)"
        if name == "ppl enum":
            assert var == 0.0 and abs(z) < 1.0, f"enum should be exact: var={var}, z={z}"
        if name == "numpyro Trace_ELBO" and abs(exact) > 0.1:
            assert abs(z) > 4.0, f"Trace_ELBO at phi={phi}: z = {z}; its bias should show where the gradient is large"


def test_discrete_latent_iwae_particles(discrete_output: str) -> None:
    """enum / mvd / leave_one_out on the particles of ppl.iwae: unbiased against the exact IWAE gradient, and far
    below reinforce's variance."""
    rows = re.findall(rf"^ppl iwae (\S+)\s+mean ({NUM}) ± ({NUM})\s+variance (\S+)\s+z = ({NUM})$", discrete_output,
                      re.MULTILINE)
    got = {name: (float(var), float(z)) for name, _, _, var, z in rows}
    assert set(got) == {"reinforce", "mvd", "enum", "leave_one_out(4)"}, discrete_output
    for name, (var, z) in got.items():
        assert abs(z) < 4.0, f"iwae {name}: z = {z}"
        if name != "reinforce":
            assert var < 0.2 * got["reinforce"][0], f"iwae {name}: variance {var} vs reinforce {got['reinforce'][0]}"


def test_discrete_latent_training(discrete_output: str) -> None:
    m = re.search(rf"^ppl enum\s+phi = ({NUM})\s+\|phi - phi\*\| = ({NUM})", discrete_output, re.MULTILINE)
    assert m, discrete_output
    assert float(m[2]) < 0.01
    m = re.search(rf"^numpyro Trace_ELBO\s+phi = ({NUM})\s+\|phi - phi\*\| = ({NUM})", discrete_output, re.MULTILINE)
    assert m and float(m[2]) > 0.5, "Trace_ELBO's zero-mean gradient should leave phi far from phi*"


def test_cone_quick() -> None:
    out = run_example("cone.py")
    m = re.search(rf"log p\(z = 5\) = ({NUM})", out)
    assert m and abs(float(m[1]) + 5.3232) < 1e-3, out
    rows = re.findall(rf"^(ELBO|IWAE\(5\)|HVI|IWHVI\(5\)|DIWHVI\(5,5\))\s+(\S+)\s+\S+\s+({NUM})", out, re.MULTILINE)
    assert [r[0] for r in rows] == ["ELBO", "IWAE(5)", "HVI", "IWHVI(5)", "DIWHVI(5,5)"], out
    for name, family, value in rows:
        v = float(value)
        assert math.isfinite(v) and v < -5.0, f"{name} ({family}) = {v}: a lower bound on log p(z) = -5.32"


def test_coming_from_numpyro_quick() -> None:
    """NumPyro SVI and ppl side by side: same ELBO and posterior on eight schools (from_numpyro bit-identical to the
    native model), held-out accuracy and log-likelihood, a saved fit that reloads exactly and drives the CLI."""
    out = run_example("coming_from_numpyro.py")
    rows = re.findall(rf"^(numpyro AutoNormal|ppl auto_normal|ppl from_numpyro)\s+({NUM}) ± {NUM}\s+({NUM})\s+({NUM})"
                      rf"\s+({NUM})\s+({NUM})\s+{NUM} s", out, re.M)
    schools = {r[0]: [float(v) for v in r[1:]] for r in rows}
    assert set(schools) == {"numpyro AutoNormal", "ppl auto_normal", "ppl from_numpyro"}, out
    assert schools["ppl from_numpyro"] == schools["ppl auto_normal"], schools
    assert "trained bit-identical parameters: True" in out
    for name, (elbo, mu, mu_sd, tau, tau_sd) in schools.items():
        assert abs(elbo - schools["numpyro AutoNormal"][0]) < 0.3 and -32.5 < elbo < -31.0, (name, elbo)
        assert 3.0 < mu < 6.0 and 2.5 < mu_sd < 4.0 and 1.5 < tau < 4.5 and 1.0 < tau_sd < 4.0, (name, mu, tau)
    rows = re.findall(rf"^(numpyro AutoNormal|ppl auto_normal)\s+{NUM} ± {NUM}\s+({NUM})\s+({NUM})\s+{NUM} s", out,
                      re.M)
    assert len(rows) == 2, out  # logistic regression: accuracy, held-out log predictive density per point
    for name, acc, lpd in rows:
        assert float(acc) > 0.9 and float(lpd) > -0.2, (name, acc, lpd)
    truth = float(re.search(rf"^true mixture\s+({NUM})$", out, re.M)[1])
    rows = re.findall(rf"^(numpyro TraceEnum_ELBO|ppl auto_normal)\s+(?:z summed out|q\(z_i\) per point, enum)\s+"
                      rf"{NUM} ± {NUM}\s+({NUM})\s", out, re.M)
    assert [r[0] for r in rows] == ["numpyro TraceEnum_ELBO", "ppl auto_normal"], out
    for name, ll in rows:
        assert abs(float(ll) - truth) < 0.02, (name, ll, truth)
    assert "'z': {'logits': (1000, 3)}" in out  # auto_normal's discrete latent: per-point logits
    assert "ppl.predictive draws bit-identical: True" in out
    assert re.search(r"^mu\s+[-\d.]+\s+[-\d.]+", out, re.M), "arviz.summary table"
    ys = re.findall(rf"^y\[(\d)\]\s+{NUM}\s+{NUM}\s+\S+\s+\S+\s+\S+\s+(\S+)$", out, re.M)
    assert [int(j) for j, _ in ys] == list(range(8)) and ys[0][1] == "28", out  # CLI predict, observed column
