"""Bad input to the core gets a clear error that names the address or primitive (messages asserted)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from jax import lax

import ppl

KEY = jax.random.key(0)


@ppl.gen
def model(T):
    mu = ppl.sample("mu", dist.Normal(0.0, 1.0))

    def step(c, _):
        return c, ppl.sample("x", dist.Normal(mu, 1.0))

    return lax.scan(step, 0.0, None, length=T)[1]


def choices(T=3):
    return {"mu": jnp.asarray(0.1), "x": jnp.zeros(T)}


def test_valid_choices_are_accepted():
    # the baseline the error tests below perturb: no error, finite density
    logp, _ = model.assess(choices(), 3)
    assert jnp.isfinite(logp)


# ---------------------------------------------------------------------------------------------- assess / generate


def test_assess_missing_address_is_named():
    with pytest.raises(ppl.PPLError, match=r"missing choice\(s\) \['x'\]"):
        model.assess({"mu": jnp.asarray(0.1)}, 3)


def test_assess_missing_address_in_branch_not_taken():
    @ppl.gen
    def m():
        b = ppl.sample("b", dist.Bernoulli(probs=0.5))
        return lax.cond(b > 0, lambda: ppl.sample("a", dist.Normal(0.0, 1.0)), lambda: 0.0)

    with pytest.raises(ppl.PPLError, match=r"missing choice\(s\) \['a'\]"):
        m.assess({"b": jnp.asarray(0)})


def test_assess_unused_choice_is_named():
    with pytest.raises(ppl.PPLError, match=r"\['typo'\] are not used by the program.*\['mu', 'x'\]"):
        model.assess({**choices(), "typo": jnp.asarray(1.0)}, 3)


def test_generate_unused_choice_is_named():
    with pytest.raises(ppl.PPLError, match=r"generate: choice\(s\) \['nope'\] are not used"):
        model.generate(KEY, {"nope": jnp.asarray(1.0)}, 3)


def test_wrong_shape_is_named():
    with pytest.raises(ppl.PPLError, match=r"choice 'mu' has shape \(2,\) but the program's site expects \(\)"):
        model.assess({"mu": jnp.zeros(2), "x": jnp.zeros(3)}, 3)
    with pytest.raises(ppl.PPLError, match=r"choice 'x' has shape \(4,\) but .* expects \(3,\)"):
        model.generate(KEY, {"x": jnp.zeros(4)}, 3)


def test_scan_site_without_leading_axis_is_a_shape_error():
    with pytest.raises(ppl.PPLError, match=r"choice 'x' has shape \(\) but .* expects \(3,\).*loop / batch axis"):
        model.assess({"mu": jnp.asarray(0.1), "x": jnp.asarray(0.0)}, 3)
    with pytest.raises(ppl.PPLError, match=r"choice 'x' has shape \(\) but .* expects \(3,\)"):
        model.generate(KEY, {"x": jnp.asarray(0.0)}, 3)


# ---------------------------------------------------------------------------------------------- duplicates


def test_duplicate_address_straight_line():
    @ppl.gen
    def m():
        ppl.sample("z", dist.Normal(0.0, 1.0))
        return ppl.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ppl.PPLError, match=r"duplicate address 'z'"):
        m.simulate(KEY)
    with pytest.raises(ppl.PPLError, match=r"duplicate address 'z'"):
        m.assess({"z": jnp.asarray(0.0)})


def test_duplicate_address_from_two_calls_of_one_gen_fn_without_scope():
    @ppl.gen
    def inner():
        return ppl.sample("z", dist.Normal(0.0, 1.0))

    @ppl.gen
    def m():
        return inner() + inner()

    with pytest.raises(ppl.PPLError, match=r"duplicate address 'z'.*ppl.scope"):
        m.simulate(KEY)


@pytest.mark.parametrize("outside_first", [True, False])
def test_duplicate_address_scan_body_and_outside(outside_first):
    @ppl.gen
    def m(T):
        if outside_first:
            ppl.sample("x", dist.Normal(0.0, 1.0))
        lax.scan(lambda c, _: (c, ppl.sample("x", dist.Normal(0.0, 1.0))), 0.0, None, length=T)
        if not outside_first:
            ppl.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(ppl.PPLError, match=r"duplicate address 'x'"):
        m.simulate(KEY, 3)


def test_duplicate_address_in_two_scans():
    @ppl.gen
    def m(T):
        for _ in range(2):
            lax.scan(lambda c, _: (c, ppl.sample("x", dist.Normal(0.0, 1.0))), 0.0, None, length=T)

    with pytest.raises(ppl.PPLError, match=r"duplicate address 'x'"):
        m.simulate(KEY, 3)


# ---------------------------------------------------------------------------------------------- outside / unsupported


def test_sample_outside_any_interpretation():
    with pytest.raises(RuntimeError, match=r"ppl.sample\('mu', \.\.\.\) was run directly"):
        model.fn(3)  # the undecorated function, eagerly
    with pytest.raises(RuntimeError, match=r"ppl.sample\('mu', \.\.\.\) was run directly"):
        model(3)  # calling a GenFn directly runs the plain function


def test_factor_outside_any_interpretation():
    with pytest.raises(RuntimeError, match=r"ppl.factor\(\.\.\.\) was run directly"):
        ppl.factor(1.0)


def test_sample_inside_while_loop_is_an_error_naming_it():
    @ppl.gen
    def m():
        return lax.while_loop(lambda c: c < 3.0, lambda c: c + ppl.sample("w", dist.Exponential(1.0)), 0.0)

    with pytest.raises(ppl.PPLError, match=r"\['w'\] inside lax.while_loop"):
        m.simulate(KEY)
    with pytest.raises(ppl.PPLError, match=r"\['w'\] inside lax.while_loop"):
        ppl.seed(m)(KEY)


def test_while_loop_without_samples_is_fine():
    @ppl.gen
    def m():
        x = ppl.sample("x", dist.Normal(0.0, 1.0))
        return lax.while_loop(lambda c: c < 3.0, lambda c: c + 1.0, x)

    tr = m.simulate(KEY)
    assert tr.retval >= 3.0


# ---------------------------------------------------------------------------------------------- bad arguments


def test_non_distribution_is_named():
    @ppl.gen
    def m():
        return ppl.sample("z", 3.0)

    with pytest.raises(TypeError, match=r"ppl.sample\('z', \.\.\.\): float is not a distribution"):
        m.simulate(KEY)


def test_non_string_address():
    @ppl.gen
    def m():
        return ppl.sample(7, dist.Normal(0.0, 1.0))

    with pytest.raises(TypeError, match=r"address must be a non-empty string, got 7"):
        m.simulate(KEY)
    with pytest.raises(TypeError, match=r"address must be a non-empty string, got ''"):
        ppl.seed(lambda: ppl.sample("", dist.Normal(0.0, 1.0)))(KEY)


def test_non_strategy_is_named():
    @ppl.gen
    def m():
        return ppl.sample("z", dist.Normal(0.0, 1.0), strategy="reparam")

    with pytest.raises(TypeError, match=r"ppl.sample\('z', \.\.\.\): strategy='reparam' is not a gradient strategy"):
        m.simulate(KEY)


def test_bad_scope_name():
    with pytest.raises(ValueError, match=r"scope name must be a non-empty string without '/'"):
        with ppl.scope("a/b"):
            pass


def test_factor_inside_an_expectation_is_an_error():
    # was: silently dropped (an expectation with factor(100.) estimated 1.004)
    @ppl.expectation
    def f(t):
        ppl.factor(100.0)
        return ppl.sample("x", dist.Normal(t, 1.0))

    with pytest.raises(ppl.PPLError, match=r"ppl\.factor in an expectation.*add_cost.*ppl\.density"):
        f.estimate(KEY, 0.0)

    @ppl.expectation
    def g(t):  # a factor inside a model scored with density is the model's
        model = ppl.gen(lambda: ppl.factor(2.0 * t))
        return ppl.density(model, {})

    np.testing.assert_allclose(g.grad_estimate(KEY, 1.0), 2.0)
