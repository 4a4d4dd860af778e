"""``fit`` compiles its chunk once: a shorter last chunk, a second call continuing from a result, an optimizer built
again with the same settings all reuse the compiled program. Compiles are counted from JAX's own compile events
(``jax.monitoring``), not timed."""

from __future__ import annotations

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest

import ppl
from ppl.workflow import fit

fit_module = importlib.import_module("ppl.workflow.fit")  # the attribute ppl.workflow.fit is the function

TRACE = "/jax/core/compile/jaxpr_trace_duration"
COMPILE = "/jax/core/compile/backend_compile_duration"


class Compiles:
    """Counts the traces and XLA compilations of ``fit``'s chunk (the jitted function named ``fit_chunk``)."""

    def __enter__(self):
        self.traces = self.compiles = self.guarded = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def _listen(self, event, duration, fun_name=None, **kwargs):
        if fun_name in ("fit_chunk", "jit(fit_chunk)"):
            self.traces += event == TRACE
            self.compiles += event == COMPILE
        if fun_name in ("fit_chunk_guarded", "jit(fit_chunk_guarded)"):
            self.guarded += event == COMPILE

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listen)


def quadratic(theta, n, scale):
    """E[-(x - 3)^2 n], x ~ N(theta["m"], 1); ``n`` (an int) is static, ``scale`` a trained Python float."""
    x = ppl.sample("x", dist.Normal(theta["m"], 1.0))
    return -jnp.sum((x - 3.0 * scale) ** 2) * n


objective = ppl.expectation(quadratic)


def args(m=0.0):
    return ({"m": jnp.asarray(m)}, 2, 1.0)


@pytest.fixture(autouse=True)
def empty_cache():
    fit_module.clear_cache()
    yield
    fit_module.clear_cache()


def test_one_program_for_chunks_of_any_length_and_for_continuing():
    with Compiles() as first:  # chunks of 10, 10 and 5 steps
        res = fit(objective, args(), optimizer=optax.adam(0.05), num_steps=25, key=0, chunk_size=10, progress=False)
    assert (first.traces, first.compiles) == (1, 1)
    assert not isinstance(res.args[2], float) and res.args[2].dtype == jnp.float32  # the trained Python float
    with Compiles() as again:  # continuing from the result, the optimizer built again, another key and length
        more = fit(objective, res.args, optimizer=optax.adam(0.05), num_steps=13, key=1, chunk_size=10, progress=False)
    assert (again.traces, again.compiles) == (0, 0)
    assert more.values.shape == (13,) and np.all(np.isfinite(more.values)) and more.num_skipped == 0
    assert int(more.opt_state[0].count) == 13
    with Compiles() as resumed:  # a fresh start with the first arguments: the same program as the first call
        fit(objective, args(), optimizer=optax.adam(0.05), num_steps=3, key=0, chunk_size=10, progress=False)
    assert (resumed.traces, resumed.compiles) == (0, 0)


def test_the_guarded_program_compiles_only_for_a_chunk_with_a_nonfinite_number():
    """Finite chunks run the fast program only; the first chunk with a NaN estimate compiles the guarded program,
    which later chunks reuse, and the step is skipped."""
    nan_at_5 = ppl.expectation(lambda theta, step: jnp.where(step == 5, jnp.nan, 1.0) * quadratic(theta, 1, 1.0))
    # the step number comes in as a frozen int argument: one fit call per chunk of one step each
    kw = dict(optimizer=optax.adam(0.05), num_steps=1, key=0, chunk_size=1, progress=False)
    with Compiles() as c:
        res = [fit(nan_at_5, ({"m": jnp.asarray(0.0)}, jnp.int32(i)), **kw) for i in range(8)]
    assert (c.compiles, c.guarded) == (1, 1)
    assert [r.num_skipped for r in res] == [0, 0, 0, 0, 0, 1, 0, 0]
    assert np.isnan(res[5].values[0]) and res[5].args[0]["m"] == 0.0 and int(res[5].opt_state[0].count) == 0


def test_the_reused_program_gives_the_same_numbers():
    """A second call with the same arguments (the cached program) returns the first call's result bit for bit, and
    another chunking (another program) the same values."""
    a = fit(objective, args(), optimizer=optax.adam(0.05), num_steps=20, key=3, chunk_size=8, progress=False)
    b = fit(objective, args(), optimizer=optax.adam(0.05), num_steps=20, key=3, chunk_size=8, progress=False)
    assert np.array_equal(a.values, b.values)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.args), jax.tree.leaves(b.args), strict=True))
    c = fit(objective, args(), optimizer=optax.adam(0.05), num_steps=20, key=3, chunk_size=20, progress=False)
    np.testing.assert_array_equal(a.values, c.values)  # chunking does not change the numbers


@pytest.mark.parametrize(
    "change",
    ["learning rate", "optimizer", "static argument", "shape", "chunk size", "objective"],
)
def test_what_determines_the_program(change):
    kw = dict(optimizer=optax.adam(0.05), num_steps=4, key=0, chunk_size=4, progress=False)
    fit(objective, args(), **kw)
    new_args, new_objective = args(), objective
    if change == "learning rate":
        kw["optimizer"] = optax.adam(0.06)
    elif change == "optimizer":
        kw["optimizer"] = optax.sgd(0.05)
    elif change == "static argument":
        new_args = ({"m": jnp.asarray(0.0)}, 3, 1.0)
    elif change == "shape":
        new_args = ({"m": jnp.zeros(2)}, 2, 1.0)
    elif change == "chunk size":
        kw["chunk_size"] = 5
    else:
        new_objective = ppl.expectation(quadratic)  # another object: compared by identity
    with Compiles() as c:
        fit(new_objective, new_args, **kw)
    assert c.compiles == 1


def test_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(fit_module, "PROGRAM_CACHE_SIZE", 2)
    kw = dict(num_steps=2, key=0, chunk_size=2, progress=False)
    for lr in (0.1, 0.2, 0.3):
        fit(objective, args(), optimizer=optax.sgd(lr), **kw)
    assert len(fit_module._PROGRAMS) == 2
    with Compiles() as c:  # the least recently used (0.1) was dropped; 0.3 is kept
        fit(objective, args(), optimizer=optax.sgd(0.3), **kw)
        fit(objective, args(), optimizer=optax.sgd(0.1), **kw)
    assert c.compiles == 1


def test_optimizer_fingerprints():
    fp = fit_module._fingerprint
    assert fp(optax.adam(0.1)) == fp(optax.adam(0.1))
    assert hash(fp(optax.adam(0.1))) == hash(fp(optax.adam(0.1)))
    assert fp(optax.adam(0.1)) != fp(optax.adam(0.2))
    assert fp(optax.adam(0.1)) != fp(optax.adamw(0.1))
    assert fp(optax.adam(0.1, b1=0.8)) != fp(optax.adam(0.1))
    sched = optax.cosine_decay_schedule(0.1, 100)
    assert fp(optax.chain(optax.clip(1.0), optax.adam(sched))) == fp(
        optax.chain(optax.clip(1.0), optax.adam(optax.cosine_decay_schedule(0.1, 100)))
    )
    assert fp(optax.adam(optax.cosine_decay_schedule(0.1, 100))) != fp(optax.adam(optax.cosine_decay_schedule(0.1, 99)))
    assert fp(0.0) != fp(-0.0) and fp(1) != fp(1.0) and fp(1) != fp(True)
    assert fp(functools.partial(max, 1)) == fp(functools.partial(max, 1))

    def const(v):
        return lambda: v

    assert fp(const(1.0)) == fp(const(1.0)) and fp(const(1.0)) != fp(const(2.0))
    assert fp(const([1.0])) != fp(const([1.0]))  # lists, dicts, arrays: by identity
    x = jnp.ones(3)
    assert fp(x) == fp(x) and fp(x) != fp(jnp.ones(3))
