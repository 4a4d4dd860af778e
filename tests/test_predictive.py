"""After a fit: ``ppl.predictive`` (posterior and posterior predictive draws), ``ppl.summary``, ``ppl.to_arviz``,
``FitResult.save`` / ``FitResult.load``, and the command line's ``fit --out/--plot``, ``sample`` and ``predict``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest

import ppl
from ppl.__main__ import main
from tests.stats import assert_unbiased

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples", "lang")

# Conjugate Normal-Normal: mu ~ N(0, s0), x_i ~ N(mu, s), n points. The posterior is N(m_n, s_n).
S0, S, XS = 2.0, 1.0, np.array([0.3, 1.4, 0.9, 2.1, 1.1])
PREC = 1 / S0**2 + len(XS) / S**2
M_N, S_N = (XS.sum() / S**2) / PREC, PREC**-0.5


@ppl.gen
def normal_model(n):
    mu = ppl.sample("mu", dist.Normal(0.0, S0))
    with ppl.plate("data", n):
        ppl.sample("x", dist.Normal(mu, S))


@ppl.gen
def normal_guide(m, log_s):
    ppl.sample("mu", dist.Normal(m, jnp.exp(log_s)))


EXACT_GUIDE_ARGS = (jnp.asarray(M_N, jnp.float32), jnp.asarray(np.log(S_N), jnp.float32))


def test_predictive_matches_the_conjugate_closed_form():
    n_draws = 20_000
    pred = ppl.predictive(
        normal_model, normal_guide, EXACT_GUIDE_ARGS, model_args=(3,), num_samples=n_draws, key=jax.random.key(0)
    )
    mu, x = pred["posterior"]["mu"], pred["posterior_predictive"]["x"]
    assert set(pred) == {"posterior", "posterior_predictive"}
    assert mu.shape == (n_draws,) and x.shape == (n_draws, 3) and isinstance(x, np.ndarray)
    # A new observation: x_new ~ N(m_n, s_n^2 + s^2).
    var = S_N**2 + S**2
    assert_unbiased(mu, M_N, max_stderr=0.01)
    assert_unbiased(x, M_N, max_stderr=0.02)
    # The sample variance is unbiased for var, with variance 2 var^2 / (n - 1) for normal draws.
    sq = (x - M_N) ** 2 * n_draws / (n_draws - 1)  # centred at the exact mean: E[sq] = var (up to 1/n)
    assert_unbiased(sq, var, max_stderr=0.03)
    # summary agrees with the draws
    table = ppl.summary(pred["posterior_predictive"])
    assert list(table.to_dict()) == ["x[0]", "x[1]", "x[2]"]
    row = table["x[1]"]
    assert row["mean"] == pytest.approx(float(x[:, 1].mean()), rel=1e-6)
    assert row["sd"] == pytest.approx(float(x[:, 1].std(ddof=1)), rel=1e-6)
    assert row["5%"] < row["50%"] < row["95%"]
    assert row["95%"] - row["5%"] == pytest.approx(2 * 1.6449 * var**0.5, rel=0.05)
    assert "x[2]" in str(table) and "95%" in str(table)


def test_keys_and_groups():
    args = dict(model_args=(3,), num_samples=50, key=jax.random.key(3))
    full = ppl.predictive(normal_model, normal_guide, EXACT_GUIDE_ARGS, **args)
    # model=None: the posterior only, the same draws for the same key
    post = ppl.predictive(None, normal_guide, EXACT_GUIDE_ARGS, **{**args, "model_args": ()})
    np.testing.assert_array_equal(post["posterior"]["mu"], full["posterior"]["mu"])
    assert post["posterior_predictive"] == {}
    # given posterior samples (e.g. from MCMC) instead of a guide
    given = ppl.predictive(normal_model, posterior_samples={"mu": jnp.zeros(40)}, model_args=(3,), key=1)
    assert given["posterior_predictive"]["x"].shape == (40, 3)
    assert ppl.summary(given)["mu"]["sd"] == 0.0  # a predictive result: summary reads its posterior
    only_x = ppl.predictive(normal_model, normal_guide, EXACT_GUIDE_ARGS, return_sites=["x"], **args)
    assert only_x["posterior"] == {} and set(only_x["posterior_predictive"]) == {"x"}
    with pytest.raises(ValueError, match="exactly one of guide and posterior_samples"):
        ppl.predictive(normal_model, key=0, num_samples=3)
    with pytest.raises(ValueError, match="num_samples"):
        ppl.predictive(normal_model, normal_guide, EXACT_GUIDE_ARGS, model_args=(3,), num_samples=0, key=0)


def test_auxiliary_guide_choices_are_left_out():
    @ppl.gen
    def hier_guide(m):
        u = ppl.sample("u", dist.Normal(0.0, 1.0))
        ppl.sample("mu", dist.Normal(m + 0.1 * u, 0.5))

    with pytest.raises(ppl.PPLError, match="not used by the program"):
        ppl.predictive(normal_model, hier_guide, (0.0,), model_args=(2,), num_samples=5, key=0)
    hier_guide.auxiliary = frozenset({"u"})
    pred = ppl.predictive(normal_model, hier_guide, (0.0,), model_args=(2,), num_samples=5, key=0)
    assert set(pred["posterior"]) == {"mu"}
    fam = ppl.marginal(hier_guide, ["mu"])  # a marginal family: its unselected choices are auxiliary
    pred2 = ppl.predictive(normal_model, fam, (0.0,), model_args=(2,), num_samples=5, key=0)
    np.testing.assert_array_equal(pred2["posterior"]["mu"], pred["posterior"]["mu"])


def test_posterior_samples_in_the_support():
    @ppl.gen
    def mix_model(n):
        sigma = ppl.sample("sigma", dist.HalfNormal(1.0))
        w = ppl.sample("w", dist.Dirichlet(jnp.ones(3)))
        with ppl.plate("data", n):
            c = ppl.sample("c", dist.Categorical(probs=w))
            ppl.sample("y", dist.Normal(c.astype(jnp.float32), sigma))

    @ppl.gen
    def mix_guide(loc, conc):
        ppl.sample("sigma", dist.LogNormal(loc, 2.0))
        ppl.sample("w", dist.Dirichlet(jax.nn.softplus(conc)))

    guide_args = (jnp.asarray(-1.0), jnp.array([-3.0, 0.0, 2.0]))
    pred = ppl.predictive(mix_model, mix_guide, guide_args, model_args=(4,), num_samples=2000, key=7)
    sigma, w = pred["posterior"]["sigma"], pred["posterior"]["w"]
    assert sigma.shape == (2000,) and np.all(sigma > 0)
    assert w.shape == (2000, 3) and np.all(w >= 0) and np.allclose(w.sum(-1), 1.0, atol=1e-5)
    c = pred["posterior_predictive"]["c"]
    assert c.shape == (2000, 4) and set(np.unique(c)) <= {0, 1, 2}
    table = ppl.summary(pred["posterior"])
    assert list(table.to_dict()) == ["sigma", "w[0]", "w[1]", "w[2]"]
    assert all(0.0 <= table[f"w[{i}]"]["5%"] <= table[f"w[{i}]"]["95%"] <= 1.0 for i in range(3))


def _fit_normal(steps=200):
    obj = ppl.elbo(normal_model, normal_guide, {"x": jnp.asarray(XS, jnp.float32)})
    args = ((5,), (jnp.asarray(0.0), jnp.asarray(0.0)))
    return ppl.fit(obj, args, optimizer=optax.adam(0.05), num_steps=steps, key=jax.random.key(0), progress=False)


def test_save_load_gives_bit_identical_predictive_draws(tmp_path):
    res = _fit_normal()
    assert res.args[1][0] == pytest.approx(M_N, abs=0.3)
    path = tmp_path / "fit.npz"
    res.save(path, metadata={"run": "conjugate"})
    back = ppl.FitResult.load(path)
    assert back.steps == res.steps and back.num_skipped == res.num_skipped and back.trained == res.trained
    np.testing.assert_array_equal(back.values, res.values)
    np.testing.assert_array_equal(back.skipped, res.skipped)
    assert back.args[0] == (5,)  # an int model argument stays a Python int (static)
    assert jax.tree_util.tree_structure(back.args) == jax.tree_util.tree_structure(res.args)
    assert jax.tree_util.tree_structure(back.opt_state) == jax.tree_util.tree_structure(res.opt_state)
    for a, b in zip(jax.tree_util.tree_leaves(res.opt_state), jax.tree_util.tree_leaves(back.opt_state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    draws = [
        ppl.predictive(normal_model, normal_guide, r.args[1], model_args=r.args[0], num_samples=100, key=5)
        for r in (res, back)
    ]
    for group in ("posterior", "posterior_predictive"):
        for addr, v in draws[0][group].items():
            assert v.dtype == draws[1][group][addr].dtype
            np.testing.assert_array_equal(v, draws[1][group][addr])  # bit-identical
    meta = ppl.workflow.results.read_metadata(path)
    assert meta["metadata"] == {"run": "conjugate"}
    assert {"ppl", "jax", "numpyro"} <= set(meta["versions"])


def test_save_load_structures(tmp_path):
    key = jax.random.key(4)
    args = (
        {"m": jnp.asarray(0.0), "none": None, "ints": [np.int64(3), np.arange(3)], "bf": jnp.ones(2, jnp.bfloat16)},
        ppl.fixed(0.7),
        key,
        "label",
    )

    @ppl.expectation
    def objective(p, scale, k, label):
        x = ppl.sample("x", dist.Normal(p["m"], scale))
        return -((x - 1.0) ** 2) + 0.0 * jax.random.normal(k)

    res = ppl.fit(
        objective, args, optimizer=optax.chain(optax.clip(1.0), optax.adam(0.1)), num_steps=5, key=0, progress=False
    )
    path = tmp_path / "f.npz"
    res.save(path)
    back = ppl.FitResult.load(path)
    assert isinstance(back.args[1], ppl.core.params.Fixed) and back.args[1].value == 0.7 and back.args[3] == "label"
    assert back.args[0]["none"] is None and isinstance(back.args[0]["ints"][1], np.ndarray)
    assert back.args[0]["bf"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(jax.random.key_data(back.args[2]), jax.random.key_data(key))
    assert jax.tree_util.tree_structure(back.opt_state) == jax.tree_util.tree_structure(res.opt_state)
    assert type(back.opt_state[1][0]).__name__ == "ScaleByAdamState"  # optax's named tuples, rebuilt by name

    # A function argument cannot be described in the file: like= gives the structure.
    fn_res = ppl.fit(
        ppl.expectation(lambda t, f: -((f(t) - 0.5) ** 2)),
        (jnp.asarray(0.0), jnp.sin),
        optimizer=optax.adam(0.1),
        num_steps=3,
        key=0,
        progress=False,
    )
    fn_res.save(path)
    with pytest.raises(ValueError, match="pass like="):
        ppl.FitResult.load(path)
    assert ppl.FitResult.load(path, like=(jnp.asarray(9.0), jnp.sin)).args[0] == fn_res.args[0]
    with pytest.raises(ValueError, match="structure"):
        ppl.FitResult.load(path, like=(jnp.asarray(9.0),))
    (tmp_path / "junk.npz").write_text("junk")
    with pytest.raises(ValueError, match="not an .npz"):
        ppl.FitResult.load(tmp_path / "junk.npz")


def test_arviz_export_matches_summary(monkeypatch):
    import arviz as az

    pred = ppl.predictive(normal_model, normal_guide, EXACT_GUIDE_ARGS, model_args=(5,), num_samples=500, key=2)
    idata = ppl.to_arviz(pred, observed_data={"x": XS})
    # iterating gives the group names in ArviZ 0.x and 1.x (where .groups is a property, not a method)
    assert {"posterior", "posterior_predictive", "observed_data"} <= set(idata)
    assert idata.posterior["mu"].shape == (1, 500)
    assert idata.posterior_predictive["x"].shape == (1, 500, 5) and idata.observed_data["x"].shape == (5,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one chain: no r_hat
        table = az.summary(idata, kind="stats", round_to="none")
    assert table.loc["mu", "mean"] == pytest.approx(ppl.summary(pred)["mu"]["mean"], rel=1e-5)
    pp = az.summary(idata, group="posterior_predictive", kind="stats", round_to="none")
    ours = ppl.summary(pred["posterior_predictive"]).to_dict()
    for name in ours:
        assert pp.loc[name, "mean"] == pytest.approx(ours[name]["mean"], rel=1e-5, abs=1e-6)
    monkeypatch.setitem(sys.modules, "arviz", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'ppl\[arviz\]'"):
        ppl.to_arviz(pred)


def _cli(*args, cwd):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CI": "true"}
    return subprocess.run(
        [sys.executable, "-m", "ppl", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_fit_out_sample_predict(tmp_path, capsys):
    coin, data = os.path.join(EXAMPLES, "coin.ppl"), os.path.join(EXAMPLES, "coin.json")
    fit = _cli(
        "fit",
        coin,
        "--data",
        data,
        "--objective",
        "loss",
        "--steps",
        "300",
        "--out",
        "fit.npz",
        "--plot",
        "loss.png",
        cwd=tmp_path,
    )
    assert fit.returncode == 0, fit.stderr
    assert (tmp_path / "fit.npz").exists() and (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    sample = _cli("sample", coin, "--fit", "fit.npz", "--samples", "500", cwd=tmp_path)
    assert sample.returncode == 0, sample.stderr
    lines = sample.stdout.splitlines()
    assert "500 draws of guide 'coin_q'" in lines[0] and lines[1].split() == ["name", "mean", "sd", "5%", "50%", "95%"]
    p_mean = float(next(ln for ln in lines if ln.startswith("p ")).split()[1])
    assert 0.55 < p_mean < 0.85  # Beta(2 + 8, 2 + 2) posterior mean 0.71
    pred = _cli("predict", coin, "--fit", "fit.npz", "--data", data, "--samples", "500", cwd=tmp_path)
    assert pred.returncode == 0, pred.stderr
    assert "posterior predictive of model 'coin'" in pred.stdout and "observed" in pred.stdout
    assert sum(ln.startswith("flip[") for ln in pred.stdout.splitlines()) == 10
    capsys.readouterr()
    assert main(["sample", coin, "--fit", str(tmp_path / "fit.npz"), "--samples", "7", "--json"]) == 0  # in-process
    out = json.loads(capsys.readouterr().out)
    assert out["guide"] == "coin_q" and len(out["posterior"]["p"]) == 7 and set(out["summary"]["p"]) >= {"mean", "sd"}
    # in-process: the same draws as ppl.predictive on the saved fit (sample --seed 0)
    back = ppl.FitResult.load(tmp_path / "fit.npz")
    prog = ppl.lang.load(coin)
    direct = ppl.predictive(None, prog["coin_q"], back.args[1], num_samples=7, key=jax.random.key(0))
    np.testing.assert_allclose(out["posterior"]["p"], direct["posterior"]["p"], rtol=1e-7)
    # an error: one line, no traceback
    bad = _cli("predict", coin, "--fit", "missing.npz", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()] and bad.stderr.startswith("error: ")


def test_cli_errors(tmp_path, capsys):
    coin, data = os.path.join(EXAMPLES, "coin.ppl"), os.path.join(EXAMPLES, "coin.json")
    other = ppl.FitResult(((), (jnp.zeros(3),)), np.zeros(1), np.zeros(1, bool), 0, (), 1)  # another program's
    other.save(tmp_path / "other.npz")
    assert main(["sample", coin, "--fit", str(tmp_path / "other.npz"), "--objective", "loss"]) == 2
    assert "does not match the parameters" in capsys.readouterr().err
    (tmp_path / "junk.npz").write_text("junk")
    assert main(["sample", coin, "--fit", str(tmp_path / "junk.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read the fit") and err.count("\n") == 1
    assert main(["fit", coin, "--objective", "loss", "--steps", "1", "--out", str(tmp_path / "no" / "f.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert (
        main(["fit", coin, "--data", data, "--objective", "my_elbo", "--steps", "2", "--out", str(tmp_path / "f.npz")])
        == 0
    )
    capsys.readouterr()
    # a hand-written objective with guide_args / model_args parameters: the only guide and model of the file
    assert main(["predict", coin, "--fit", str(tmp_path / "f.npz"), "--samples", "5"]) == 0
    assert "model 'coin' given 5 draws of guide 'coin_q'" in capsys.readouterr().out
    assert (
        main(["predict", coin, "--fit", str(tmp_path / "f.npz"), "--data", os.path.join(EXAMPLES, "regression.json")])
        == 2
    )
    assert "not sampled by model 'coin'" in capsys.readouterr().err
    assert main(["sample", coin, "--fit", str(tmp_path / "f.npz"), "--guide", "nope"]) == 2
    assert "has no guide 'nope'" in capsys.readouterr().err
