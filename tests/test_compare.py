"""``ppl.workflow.compare_estimators``: the statistics are right, the table is readable, the plot is written."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import ppl
from ppl.gradients.strategies import detach
from ppl.workflow import Comparison, compare_estimators

XS = jnp.array([0.5, 1.2, -0.3])


@ppl.gen
def model():
    z = ppl.sample("z", dist.Normal(0.0, 1.0))
    ppl.sample("x", dist.Normal(z, 1.0).expand((3,)))


@ppl.gen
def guide(params):
    ppl.sample("z", dist.Normal(params["mu"], jax.nn.softplus(params["rho"])))


@ppl.expectation
def elbo(model_args, guide_args):
    z, log_q = ppl.sim(guide, *guide_args)
    return ppl.density(model, {**z, "x": XS}, *model_args) - log_q


@ppl.expectation
def coin(logit):
    z = ppl.sample("z", dist.Bernoulli(logits=logit))
    return (z - 0.3) ** 2


ARGS = ((), ({"mu": jnp.array(0.2), "rho": jnp.array(-0.5)},))


@pytest.fixture(scope="module")
def elbo_cmp(tmp_path_factory):
    path = tmp_path_factory.mktemp("plots") / "elbo.png"
    cmp = compare_estimators(
        elbo,
        ARGS,
        key=jax.random.key(0),
        num_samples=4000,
        strategies={"reparam": {"z": ppl.reparam}, "reinforce": {"z": ppl.reinforce}, "detach": {"z": detach}},
        plot=path,
    )
    return cmp, path


def test_statistics_match_the_samples(elbo_cmp):
    """mean / stderr / variance per component are those of the same vmapped draws, recomputed here."""
    cmp, _ = elbo_cmp
    keys = jax.random.split(jax.random.key(0), 4000)
    obj = ppl.with_strategies(elbo, {"z": ppl.reinforce})
    g = jax.jit(jax.vmap(obj.grad_estimate, (0, None, None)))(keys, *ARGS)[1][0]
    st = cmp.stats["reinforce"]
    assert cmp.components == ("guide_args[0]['mu']", "guide_args[0]['rho']")
    for j, name in enumerate(["mu", "rho"]):
        s = np.asarray(g[name], np.float64)
        np.testing.assert_allclose(st["mean"][j], s.mean(), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(st["variance"][j], s.var(ddof=1), rtol=1e-6)
        np.testing.assert_allclose(st["stderr"][j], s.std(ddof=1) / np.sqrt(4000), rtol=1e-6)
    row = cmp["reinforce"]
    assert row["total_variance"] == pytest.approx(float(st["variance"].sum()))
    assert row["time_per_estimate"] > 0 and row["compile_time"] > 0 and row["num_nonfinite"] == 0
    assert row["variance_x_time"] == pytest.approx(row["total_variance"] * row["time_per_estimate"])


def test_exact_gradient_within_errors_and_reparam_wins(elbo_cmp):
    """Both unbiased strategies agree with the closed-form ELBO gradient; reparam has far lower variance."""
    cmp, _ = elbo_cmp

    def exact(p):  # ELBO of N(mu, s) against z ~ N(0,1), x_i ~ N(z,1), in closed form
        mu, s = p["mu"], jax.nn.softplus(p["rho"])
        e_logp = -0.5 * (mu**2 + s**2) - 0.5 * jnp.sum((XS - mu) ** 2 + s**2)
        return e_logp + jnp.log(s)

    g = jax.grad(exact)(ARGS[1][0])
    g = np.array([g["mu"], g["rho"]])
    for name in ("reparam", "reinforce"):
        st = cmp.stats[name]
        assert np.all(np.abs(st["mean"] - g) < 4 * st["stderr"]), (name, st["mean"], g)
    assert cmp.reference == "reparam"
    assert cmp["reinforce"]["total_variance"] > 5 * cmp["reparam"]["total_variance"]
    assert cmp["reinforce"]["max_abs_z"] < 4


def test_bias_is_flagged(elbo_cmp):
    """``detach`` drops the pathwise derivative: its mean disagrees with the reference, and the table says so."""
    cmp, _ = elbo_cmp
    assert cmp["detach"]["max_abs_z"] > 10
    line = next(ln for ln in str(cmp).splitlines() if ln.startswith("detach"))
    assert line.rstrip().endswith("!")


def test_table_and_exports(elbo_cmp):
    cmp, _ = elbo_cmp
    text = str(cmp)
    for word in (
        "reparam",
        "reinforce",
        "total var",
        "time/est",
        "var×time",
        "compile",
        "max |z|",
        "z=reparam[1]",
        "guide_args[0]['mu']",
        "±",
        "4000 estimates",
    ):
        assert word in text, word
    assert isinstance(cmp, Comparison) and cmp.names == ("reparam", "reinforce", "detach")
    assert "best=" in repr(cmp)
    d = cmp.to_dict()
    assert set(d) == {"reparam", "reinforce", "detach"}
    assert set(d["reparam"]["components"]["guide_args[0]['rho']"]) == {"mean", "stderr", "variance"}
    assert all(isinstance(r["total_variance"], float) for r in cmp.rows)
    assert d["reparam"]["calls"] == {"z": "1"} and d["reparam"]["strategies"] == {"z": "reparam"}
    with pytest.raises(KeyError, match="have"):
        cmp["nope"]


def test_plot_is_a_png(elbo_cmp, tmp_path):
    _, path = elbo_cmp
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    cmp, _ = elbo_cmp
    fig = cmp.plot(tmp_path / "again.png")
    assert len(fig.axes) == 3 and (tmp_path / "again.png").exists()


def test_enumeration_is_exact_and_best():
    cmp = compare_estimators(
        coin,
        jnp.array(0.5),  # a bare argument
        key=0,
        num_samples=2000,
        strategies={"reinforce": {"z": ppl.reinforce}, "enum": {"z": ppl.enum}, "mvd": ppl.mvd, "as written": None},
    )
    p = jax.nn.sigmoid(0.5)
    exact = p * (1 - p) * ((1 - 0.3) ** 2 - 0.3**2)
    assert cmp["enum"]["total_variance"] == 0.0 and cmp.reference == "enum" and cmp.best == "enum"
    np.testing.assert_allclose(cmp.stats["enum"]["mean"], exact, rtol=1e-5)
    assert cmp["reinforce"]["max_abs_z"] < 4 and cmp["mvd"]["max_abs_z"] == 0.0
    assert cmp.components == ("logit",)
    assert cmp["enum"]["calls"] == {"z": "|support|"} and cmp["mvd"]["strategies"] == {"*": "mvd"}
    assert cmp["as written"]["strategies"] == {} and "as written" in str(cmp)


def test_errors_name_the_assignment():
    with pytest.raises(ppl.PPLError, match="match no address") as e:
        compare_estimators(
            coin, (jnp.array(0.5),), key=0, num_samples=10, strategies={"ok": {"z": ppl.enum}, "typo": {"zz": ppl.enum}}
        )
    assert any("'typo'" in note for note in e.value.__notes__)
    with pytest.raises(ValueError, match="non-empty"):
        compare_estimators(coin, (jnp.array(0.5),), key=0, num_samples=10, strategies={})
    with pytest.raises(TypeError, match="address globs"):
        compare_estimators(coin, (jnp.array(0.5),), key=0, num_samples=10, strategies={"x": "enum"})
    with pytest.raises(ValueError, match="num_samples"):
        compare_estimators(coin, (jnp.array(0.5),), key=0, num_samples=1, strategies={"x": ppl.enum})


def test_a_biased_assignment_is_never_the_reference_or_best():
    # was: detach (zero variance, biased) became the reference and best, flagging the unbiased rows (max |z| 179)
    @ppl.expectation
    def f(logit):
        z = ppl.sample("z", dist.Bernoulli(logits=logit))
        return (z - 0.3) ** 2 + logit**2

    strategies = {"reinforce": {"z": ppl.reinforce}, "detach": {"z": ppl.detach}, "enum": {"z": ppl.enum}}
    cmp = compare_estimators(f, (jnp.array(0.5),), key=jax.random.key(0), num_samples=2000, strategies=strategies,
                             repeats=1)
    assert cmp.reference == "enum" and cmp.best == "enum"
    assert cmp["detach"]["biased"] and cmp["detach"]["biased_sites"] == ["z"]
    assert not cmp["reinforce"]["biased"] and cmp["reinforce"]["max_abs_z"] < 4.0
    assert cmp["detach"]["max_abs_z"] > 4.0 and "detach (biased)" in str(cmp)
    forced = compare_estimators(f, (jnp.array(0.5),), key=jax.random.key(0), num_samples=200, strategies=strategies,
                                repeats=1, reference="reinforce")
    assert forced.reference == "reinforce"
    with pytest.raises(ValueError, match=r"reference='nope' is not a row"):
        compare_estimators(f, (jnp.array(0.5),), key=jax.random.key(0), strategies=strategies, reference="nope")


# ---------------------------------------------------------------------------------------------- hand-coded rows


def _coin():
    import numpyro

    x = jnp.array(1.3)

    def model(x):
        z = numpyro.sample("z", dist.Bernoulli(0.4))
        numpyro.sample("x", dist.Normal(2.0 * z, 1.0), obs=x)

    def guide(x):
        numpyro.sample("z", dist.Bernoulli(logits=numpyro.param("phi", -0.5)))

    data = ppl.fixed(x)
    return model, guide, (({}, data), ({"phi": jnp.asarray(-0.5)}, data))


def test_hand_coded_rows_are_bias_checked_like_any_row():
    from numpyro.infer import Trace_ELBO, TraceGraph_ELBO

    from ppl.interop import numpyro_estimator

    model, guide, args = _coin()
    obj = ppl.elbo(ppl.from_numpyro(model), ppl.from_numpyro(guide), {})

    def exact(key, model_args, guide_args):  # the enumerated ELBO by hand: a plain JAX row
        def f(phi):
            q1 = jax.nn.sigmoid(phi)
            lp = lambda z: jnp.log(jnp.where(z, 0.4, 0.6)) + dist.Normal(2.0 * z, 1.0).log_prob(1.3)  # noqa: E731
            return q1 * (lp(1.0) - jnp.log(q1)) + (1 - q1) * (lp(0.0) - jnp.log1p(-q1))

        v, g = jax.value_and_grad(f)(guide_args[0]["phi"])
        return v, (({}, None), ({"phi": g}, None))

    cmp = ppl.compare_estimators(
        obj,
        args,
        strategies={"reinforce": {"z": ppl.reinforce}},
        hand_coded={
            "by hand, exact": exact,
            "numpyro Trace_ELBO": numpyro_estimator(model, guide, Trace_ELBO()),
            "numpyro TraceGraph_ELBO": numpyro_estimator(model, guide, TraceGraph_ELBO()),
        },
        reference="by hand, exact",
        key=0,
        num_samples=4000,
    )
    assert cmp.reference == "by hand, exact" and cmp["by hand, exact"]["total_variance"] == 0.0
    assert cmp["reinforce"]["max_abs_z"] < 4 and cmp["numpyro TraceGraph_ELBO"]["max_abs_z"] < 4
    # NumPyro's Trace_ELBO drops the score term of the discrete site: flagged, never best
    assert cmp["numpyro Trace_ELBO"]["max_abs_z"] > 10 and cmp["numpyro Trace_ELBO"]["biased"]
    assert "(flagged)" in str(cmp) and "hand-coded" in str(cmp)
    assert cmp.best != "numpyro Trace_ELBO"
    # without reference=, a hand-coded row is never the reference
    cmp2 = ppl.compare_estimators(
        obj, args, strategies={"reinforce": {"z": ppl.reinforce}}, hand_coded={"exact": exact}, key=0, num_samples=100
    )
    assert cmp2.reference == "reinforce"


def test_a_hand_coded_row_with_other_components_is_an_error():
    model, guide, args = _coin()
    obj = ppl.elbo(ppl.from_numpyro(model), ppl.from_numpyro(guide), {})

    def wrong(key, model_args, guide_args):
        return 0.0, (({}, None), ({"phi": 0.0, "other": 0.0}, None))

    with pytest.raises(ValueError, match="hand-coded row 'wrong'.*components"):
        ppl.compare_estimators(obj, args, strategies={"r": ppl.reinforce}, hand_coded={"wrong": wrong}, key=0)
