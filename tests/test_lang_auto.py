"""``ppl.lang``'s automatic families (``guide q = auto_normal(model)``, :mod:`ppl.lang.families`).

* the declared family *is* the Python API's: ``ppl.auto_*(model, observed=data)`` has the same initial parameters
  (flattened into the guide's parameters ``address_name``, in program order) and the objective the same estimate and
  gradient on the same key, for every family (discrete latents included);
* it fits: a conjugate Normal–Normal posterior (``auto_normal``) and a correlated Gaussian posterior
  (``auto_multivariate_normal``, a 2-parameter regression) are recovered — mean, sd / covariance from the closed
  form — within 5 standard errors of the mean of 16 independent fits (the fits' own spread: unbiased stochastic
  gradients on a concave objective, the learning rate decayed to 1/1000 of its start);
* under ``jax.jit`` (and ``vmap``) it gives what it gives eagerly;
* the observed addresses come from the data (``with_data`` rebuilds), ``compile(observed=...)`` or ``observed=``;
* errors are located and named: unknown family, a name that is not a model, wrong arguments / keywords / values;
* the command line: ``fit --out`` (subprocess) → ``predict`` (subprocess) → ``sample`` on ``eight_schools.ppl``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ppl
import ppl.lang
from ppl.__main__ import main
from ppl.lang import LangError
from ppl.workflow.results import read_metadata

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
EXAMPLES = os.path.join(ROOT, "examples", "lang")
ES_FILE, ES_DATA = os.path.join(EXAMPLES, "eight_schools.ppl"), os.path.join(EXAMPLES, "eight_schools.json")


def es_source(decl: str = "auto_normal(eight_schools)") -> str:
    with open(ES_FILE) as f:
        src = f.read()
    assert "guide eight_schools_q = auto_normal(eight_schools)" in src
    return src.replace("auto_normal(eight_schools)", decl)


def es_data() -> dict:
    with open(ES_DATA) as f:
        return json.load(f)


MIXTURE = """
model mixture(n = 12) {
  mu ~ Normal(zeros(3), 10.0)
  plate data(n) {
    z ~ Categorical(logits=zeros(3))
    x ~ Normal(mu[z], 1.0)
  }
}
guide q = FAMILY
objective loss = elbo(mixture, q)
"""
MIXTURE_DATA = {"x": np.linspace(-4.0, 4.0, 12)}


def flat(params: dict) -> tuple[list[str], list]:
    names = [f"{a}_{k}" for a, leaves in params.items() for k in leaves]
    return names, [v for leaves in params.values() for v in leaves.values()]


# ---------------------------------------------------------------------------------------------- = the Python API

CASES = [  # (family, example, its keywords in the language, the same in Python)
    ("auto_normal", "eight_schools", "", {}),
    ("auto_multivariate_normal", "eight_schools", "", {}),
    ("auto_low_rank_normal", "eight_schools", ", rank=2", {"rank": 2}),
    ("auto_delta", "eight_schools", "", {}),
    ("auto_normal", "mixture", ", init_scale=0.3, seed=3", {"init_scale": 0.3, "key": jax.random.key(3)}),
    ("auto_multivariate_normal", "mixture", ", discrete_strategy=reinforce", {"discrete_strategy": ppl.reinforce}),
]


@pytest.mark.parametrize("family, example, extra, kw", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_declared_family_equals_python_api(family, example, extra, kw):
    if example == "eight_schools":
        prog = ppl.lang.compile(es_source(f"{family}(eight_schools{extra})"), es_data())
        model, obj, guide_name = prog["eight_schools"], prog["elbo_loss"], "eight_schools_q"
    else:
        prog = ppl.lang.compile(MIXTURE.replace("FAMILY", f"{family}(mixture{extra})"), MIXTURE_DATA)
        model, obj, guide_name = prog["mixture"], prog["loss"], "q"
    guide_py, init = getattr(ppl, family)(model, observed=prog.data, **kw)
    names, values = flat(init)
    margs, gargs = prog.init_args(prog.objectives[0])
    assert prog.param_names(prog.objectives[0])[1] == tuple(f"{guide_name}.{n}" for n in names)
    assert len(gargs) == len(values)
    for a, b in zip(gargs, values, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert getattr(prog[guide_name], "auxiliary", None) == guide_py.auxiliary
    keys = jax.random.split(jax.random.key(0), 3)
    v, (_, g) = jax.vmap(obj.value_and_grad_estimate, (0, None, None))(keys, margs, gargs)
    obj_py = ppl.elbo(model, guide_py, prog.data)
    v_py, (_, (g_py,)) = jax.vmap(obj_py.value_and_grad_estimate, (0, None, None))(keys, margs, (init,))
    np.testing.assert_allclose(v, v_py, rtol=1e-6)
    for a, (addr, k) in zip(g, [(a, k) for a, leaves in init.items() for k in leaves], strict=True):
        np.testing.assert_allclose(a, g_py[addr][k], rtol=1e-5, atol=1e-6)


def test_flow_family_equals_python_api():
    pytest.importorskip("flowjax")
    import flowjax.flows as fjf

    prog = ppl.lang.compile(
        es_source('auto_flow(eight_schools, flow="coupling_flow", flow_layers=2, nn_width=8)'), es_data()
    )
    guide_py, init = ppl.auto_flow(
        prog["eight_schools"], observed=prog.data, flow=fjf.coupling_flow, flow_layers=2, nn_width=8
    )
    margs, gargs = prog.init_args("elbo_loss")
    assert prog.param_names("elbo_loss")[1] == ("eight_schools_q._auto_latent_loc", "eight_schools_q._auto_latent_flow")
    arrays = lambda t: [x for x in jax.tree_util.tree_leaves(t) if hasattr(x, "shape")]  # noqa: E731
    assert jax.tree_util.tree_structure(gargs) == jax.tree_util.tree_structure(tuple(init["_auto_latent"].values()))
    for a, b in zip(arrays(gargs), arrays(tuple(init["_auto_latent"].values())), strict=True):
        np.testing.assert_array_equal(a, b)
    key = jax.random.key(0)
    v = prog["elbo_loss"].estimate(key, margs, gargs)
    np.testing.assert_allclose(
        v, ppl.elbo(prog["eight_schools"], guide_py, prog.data).estimate(key, margs, (init,)), rtol=1e-6
    )


# ---------------------------------------------------------------------------------------------- it fits


def fit_many(obj, margs, gargs, steps: int, num_fits: int = 16, lr: float = 0.05):
    """``num_fits`` independent fits (Adam, cosine decay to lr/1000), jitted and vmapped over their keys."""
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=1e-3))

    def one(key):
        def step(carry, k):
            g, state = carry
            _, (_, grad) = obj.value_and_grad_estimate(k, margs, g)
            updates, state = opt.update(jax.tree_util.tree_map(jnp.negative, grad), state, g)
            return (optax.apply_updates(g, updates), state), None

        (g, _), _ = jax.lax.scan(step, (gargs, opt.init(gargs)), jax.random.split(key, steps))
        return g

    return jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), num_fits))


def assert_within_stderr(fits, exact, what: str, k: float = 5.0):
    """The mean of independent fits is within ``k`` standard errors (their spread / sqrt(R)) of ``exact``."""
    fits = np.asarray(fits, np.float64)
    se = fits.std(ddof=1) / np.sqrt(len(fits))
    assert abs(fits.mean() - exact) <= k * se + 1e-6 * abs(exact), (what, fits.mean(), exact, se)
    return fits.mean() - exact, se


NORMAL_NORMAL = """
model nn(n = 20) {
  mu ~ Normal(1.0, 3.0)
  plate data(n) { x ~ Normal(mu, 2.0) }
}
guide q = auto_normal(nn)
objective loss = elbo(nn, q)
"""


def test_auto_normal_fits_conjugate_normal_normal():
    x = np.asarray(2.5 + 2.0 * jax.random.normal(jax.random.key(42), (20,)), np.float64)
    precision = 1 / 3.0**2 + len(x) / 2.0**2  # the closed form: Normal(mean, sd) posterior of mu
    mean, sd = (1.0 / 3.0**2 + x.sum() / 2.0**2) / precision, precision**-0.5
    prog = ppl.lang.compile(NORMAL_NORMAL, {"x": x})
    assert prog.param_names("loss")[1] == ("q.mu_loc", "q.mu_raw_scale")
    loc, raw = fit_many(prog["loss"], *prog.init_args("loss"), steps=2000)
    err_m, se_m = assert_within_stderr(loc, mean, "mean")
    err_s, se_s = assert_within_stderr(jax.nn.softplus(raw), sd, "sd")
    assert se_m < 0.02 * sd and se_s < 0.02 * sd  # (the fits are tight: the check has power)


REGRESSION = """
model reg(n = 10) {
  xs = linspace(0.0, 1.0, n)
  a ~ Normal(0.0, 3.0)
  b ~ Normal(0.0, 3.0)
  plate data(n) { y ~ Normal(a + b * xs, 1.0) }
}
guide q = auto_multivariate_normal(reg)
objective loss = elbo(reg, q)
"""


def test_auto_multivariate_normal_fits_correlated_gaussian_posterior():
    xs = np.linspace(0.0, 1.0, 10)
    y = 1.0 + 2.0 * xs + np.asarray(jax.random.normal(jax.random.key(7), (10,)), np.float64)
    X = np.stack([np.ones(10), xs], 1)
    cov = np.linalg.inv(X.T @ X + np.eye(2) / 3.0**2)  # Bayesian linear regression, noise sd 1, prior sd 3
    mean = cov @ X.T @ y
    assert cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1]) < -0.8  # strongly correlated: mean-field could not fit it
    prog = ppl.lang.compile(REGRESSION, {"y": y})
    loc, raw = fit_many(prog["loss"], *prog.init_args("loss"), steps=2000)
    L = jnp.tril(raw, -1) + jax.vmap(jnp.diag)(jax.nn.softplus(jax.vmap(jnp.diag)(raw)))
    C = L @ jnp.swapaxes(L, -1, -2)
    for i in range(2):
        assert_within_stderr(loc[:, i], mean[i], f"mean[{i}]")
        for j in range(i, 2):
            assert_within_stderr(C[:, i, j], cov[i, j], f"cov[{i},{j}]")


# ---------------------------------------------------------------------------------------------- jit, data


def test_family_under_jit():
    prog = ppl.lang.compile(es_source("auto_low_rank_normal(eight_schools, rank=1)"), es_data())
    args, key = prog.init_args("elbo_loss"), jax.random.key(5)
    eager = prog["elbo_loss"].value_and_grad_estimate(key, *args)
    jitted = jax.jit(prog["elbo_loss"].value_and_grad_estimate)(key, *args)
    for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    sim = jax.jit(lambda k, *g: prog["eight_schools_q"].simulate(k, *g).choices)
    choices = sim(key, *args[1])
    assert sorted(choices) == ["_auto_latent", "mu", "tau", "theta_tilde"] and float(choices["tau"]) > 0
    for a, b in zip(
        jax.tree_util.tree_leaves(choices),
        jax.tree_util.tree_leaves(prog["eight_schools_q"].simulate(key, *args[1]).choices),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_observed_addresses_come_from_the_data():
    names = lambda prog: prog.param_names("elbo_loss")[1]  # noqa: E731
    bare = ppl.lang.compile(es_source())  # no data: every site is latent, y too
    assert "eight_schools_q.y_loc" in names(bare) and bare.families == ["eight_schools_q"]
    given = bare.with_data(es_data())  # rebuilt for the data's addresses
    assert "eight_schools_q.y_loc" not in names(given) and len(names(given)) == 6
    assert names(ppl.lang.compile(es_source(), observed="y")) == names(given)
    assert names(bare.with_observed(["y"])) == names(given)
    assert names(ppl.lang.compile(es_source('auto_normal(eight_schools, observed="y")'))) == names(given)
    assert given.with_data({"y": np.zeros(8)}).infos["eight_schools_q"] is given.infos["eight_schools_q"]


def test_strategies_block_and_overrides():
    src = MIXTURE.replace("FAMILY", "auto_multivariate_normal(mixture)") + 'strategies q { "z": reinforce }\n'
    prog = ppl.lang.compile(src, MIXTURE_DATA)
    assert prog["q"].auxiliary == frozenset({"_auto_latent"})  # the family's class survives with_strategies
    names = prog.param_names("loss")[1]
    assert names == ("q.z_logits", "q._auto_latent_loc", "q._auto_latent_raw_scale_tril")  # program order
    args = prog.init_args("loss", {"q._auto_latent_loc": [1.0, 2.0, 3.0]})
    np.testing.assert_array_equal(args[1][1], [1.0, 2.0, 3.0])
    assert args[1][0].shape == (12, 3)  # a Categorical's logits per point
    assert np.isfinite(prog["loss"].estimate(jax.random.key(0), *args))


# ---------------------------------------------------------------------------------------------- errors

ERRORS = [
    ("guide q = auto_nromal(eight_schools)", 11, "unknown automatic family 'auto_nromal' (did you mean 'auto_norm"),
    ("guide q = auto_normal(eight_schoosl)", 23, "unknown model 'eight_schoosl' (did you mean 'eight_schools'?)"),
    ("guide q = auto_normal(eight_schools_q)", 23, "'eight_schools_q' is a guide"),
    ("guide q = auto_normal(elbo_loss)", 23, "'elbo_loss' is an objective"),
    ("guide q = auto_normal(eight_schools, 2)", 38, "wrong arguments for auto_normal: it takes the model, then"),
    ("guide q = auto_normal()", 11, "wrong arguments for auto_normal: the model is missing"),
    ("guide q = auto_normal(eight_schools, rank=2)", 38, "no keyword 'rank'"),
    ("guide q = auto_low_rank_normal(eight_schools, rank=0)", 52, "rank= is a positive integer, got 0"),
    ("guide q = auto_low_rank_normal(eight_schools, rank=2.5)", 52, "rank= is a positive integer"),
    ("guide q = auto_normal(eight_schools, init_scale=-0.1)", 49, "init_scale= is a positive number"),
    ("guide q = auto_normal(eight_schools, observed=2)", 47, "observed= is an address or a tuple of addresses"),
    ('guide q = auto_normal(eight_schools, observed="w")', 11, "observed address(es) ['w'] are not sampled"),
    ("guide q = auto_delta(eight_schools, discrete_strategy=enm)", 55, "unknown strategy 'enm'"),
    ("guide q = elbo(eight_schools, eight_schools_q)", 11, "elbo is a library objective"),
    ("objective o = auto_normal(eight_schools)", 15, "auto_normal builds a guide, not an objective"),
    ("guide q = eight_schools", 11, "an automatic family is declared 'guide name = auto_normal(model)'"),
    ("model m2() {\n  z = auto_normal(eight_schools)\n}", 7, "builds a variational family: write 'guide name ="),
]


@pytest.mark.parametrize("decl, column, message", ERRORS, ids=[e[0][:40] for e in ERRORS])
def test_errors_are_located_and_named(decl, column, message):
    src = es_source() + "\n" + decl + "\n"
    with pytest.raises(LangError) as info:
        ppl.lang.compile(src, es_data(), filename="es.ppl")
    e = info.value
    line = len(es_source().splitlines()) + 2 + decl.startswith("model")  # (its error is on the body's line)
    assert (e.line, e.column) == (line, column), str(e)
    assert message in str(e) and "Traceback" not in str(e), str(e)


def test_model_argument_without_default_and_unlatent_site():
    src = "model m(s) {\n  x ~ Normal(0.0, s)\n}\nguide q = auto_normal(m)\n"
    with pytest.raises(LangError, match="parameter 's' of model 'm' needs a default") as info:
        ppl.lang.compile(src)
    assert (info.value.line, info.value.column) == (4, 23)
    src = "model m() {\n  n ~ Poisson(3.0)\n}\nguide q = auto_normal(m)\n"  # n observed: no data given here
    with pytest.raises(LangError, match=r"discrete site 'n'.*\n.*\n.*\nno data was given, so every site"):
        ppl.lang.compile(src)
    assert ppl.lang.compile(src, {"n": 2}).param_names  # observed: nothing latent, an empty family


def test_flow_without_flowjax_is_a_named_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "flowjax.flows", None)  # import flowjax.flows -> ImportError
    with pytest.raises(LangError, match=r"auto_flow needs flowjax .*pip install 'ppl\[flows\]'"):
        ppl.lang.compile(es_source("auto_flow(eight_schools)"), es_data())


# ---------------------------------------------------------------------------------------------- command line


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "ppl", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300
    )


def test_cli_fit_predict_sample(tmp_path, capsys):
    fit_path = str(tmp_path / "es_fit.npz")
    fit = cli(
        "fit",
        ES_FILE,
        "--data",
        ES_DATA,
        "--steps",
        "30",
        "--lr",
        "0.01",
        "--out",
        fit_path,
        "--freeze",
        "eight_schools_q.tau_raw_scale",
    )
    assert fit.returncode == 0, fit.stderr
    assert "eight_schools_q.theta_tilde_raw_scale" in fit.stdout and "y_loc" not in fit.stdout
    assert "eight_schools_q.tau_raw_scale         = -2.25217  (fixed)" in fit.stdout, fit.stdout
    assert read_metadata(fit_path)["metadata"]["cli"]["observed"] == ["y"]
    pred = cli("predict", ES_FILE, "--fit", fit_path, "--data", ES_DATA, "--samples", "200")
    assert pred.returncode == 0, pred.stderr
    assert "posterior predictive of model 'eight_schools' given 200 draws of guide 'eight_schools_q'" in pred.stdout
    assert [ln.split()[0] for ln in pred.stdout.splitlines()[3:]] == [f"y[{i}]" for i in range(8)]
    assert main(["sample", ES_FILE, "--fit", fit_path, "--samples", "200", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(out["posterior"]) == ["mu", "tau", "theta_tilde"] and min(out["posterior"]["tau"]) > 0
    assert main(["check", ES_FILE]) == 0
    assert "guide eight_schools_q = auto_normal(eight_schools)" in capsys.readouterr().out


def test_cli_predict_a_python_fit(tmp_path, capsys):
    """A fit saved from Python (no command-line metadata) in the guide's argument order, as
    examples/coming_from_numpyro.py saves it: predict takes the observed addresses from --data."""
    prog = ppl.lang.load(ES_FILE, es_data())
    res = ppl.fit(
        prog["elbo_loss"],
        prog.init_args("elbo_loss"),
        optimizer=optax.adam(0.01),
        num_steps=5,
        key=jax.random.key(0),
        progress=False,
    )
    path = str(tmp_path / "py_fit.npz")
    res.save(path, metadata={"from": "python"})
    assert main(["predict", ES_FILE, "--fit", path, "--data", ES_DATA, "--samples", "50"]) == 0
    assert "y[7]" in capsys.readouterr().out
    assert main(["sample", ES_FILE, "--fit", path]) == 2  # no data, no metadata: y would be latent
    assert "predict --data" in capsys.readouterr().err
