"""The compiled chunk of :func:`ppl.workflow.fit`: ``chunk_size`` optimizer steps in one jitted loop, and the guarded
program that reruns a chunk that met a non-finite number (:func:`make_chunk`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ..core.params import fixed
from .sharding import Layout, minibatch


def _value_and_grads(objective: Any, key: Any, *args: Any) -> tuple[Any, tuple[Any, ...]]:
    """Gradients in the structure of ``args`` (an ``Expectation``'s own form; else ``value_and_grad_estimate``'s)."""
    if hasattr(objective, "value_and_grads"):
        return objective.value_and_grads(key, *args)
    value, grads = objective.value_and_grad_estimate(key, *args)
    return value, ((grads,) if len(args) == 1 else grads)


def _finite_sum(tree: Any) -> jax.Array:
    """Whether every element of every leaf of ``tree`` is finite, as one scalar: the sum of the leaves' sums (at
    least float32) is finite — a NaN or an infinity propagates through a sum. One plain sum per leaf, the cheapest
    reduction on CPU (``jnp.all(jnp.isfinite(x))`` is several times slower). A sum of finite entries overflows only
    past 3.4e38, i.e. for entries around 1e32 and up, which then count as non-finite."""
    sums = [jnp.sum(x, dtype=jnp.promote_types(x.dtype, jnp.float32)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.isfinite(sum(sums, jnp.float32(0.0)))


def _finite(params: Any, opt_state: Any) -> jax.Array:
    """Whether every entry of the parameters and of the optimizer state's float leaves is finite, as one scalar."""
    state = [x for x in jax.tree_util.tree_leaves(opt_state) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return _finite_sum((params, state))


class Chunk(NamedTuple):
    """The jitted programs of a chunk (:func:`_make_chunk`): ``fast`` runs every chunk; ``guarded`` reruns one that
    ``fast`` reports non-finite."""

    fast: Callable
    guarded: Callable


def make_chunk(
    objective: Any,
    part: Any,
    optimizer: Any,
    num_particles: int,
    layout: Layout | None,
    with_data: bool,
    batch_size: int | None,
    size: int,
) -> Chunk:
    """The chunk's two jitted programs, both ``(params, opt_state, frozen, key, start, num, data)`` → steps ``start ..
    start + num - 1`` (``num <= size`` is a dynamic argument: one program for every chunk length); ``values`` (and
    ``skipped``) have length ``size``, entries from ``num`` on unused.

    ``fast`` (the jitted ``fit_chunk``) is the hand-written loop — estimate, optimizer update — with nothing more per
    step than the estimate's finiteness as the loop's condition (a scalar: a non-finite estimate ends the loop). It
    returns ``((params, opt_state), (values, ok))``; ``ok``: every estimate was finite and, at the end, every entry of
    the parameters and the optimizer state is (one pass over them per chunk). A non-finite gradient or an update that
    overflows cannot hide from that end check: it reaches the parameters or the state, and later updates keep it
    there (NaN and infinity propagate through arithmetic) — unless the optimizer itself discards it
    (``optax.zero_nans``), and then the step is a finite step.

    ``guarded`` (``fit_chunk_guarded``, compiled the first time it runs) reruns a chunk that was not ``ok`` from the
    same state and keys, and checks each step: the step is *skipped* — parameters and optimizer state kept — when its
    estimate, or an entry of the parameters or the state it would produce, is non-finite. The same rule as the fast
    program's end check, step by step. Returns ``((params, opt_state), (values, skipped))``.

    Why two programs: the per-step check reads the new parameters and state once more each step and the selection
    keeps old and new alive; on the VAE of ``bench/fit.py`` at batch 64 a guard of that kind (checking the gradient,
    ``lax.cond`` around the update) took 1.18× the time of the hand-written loop (``jnp.where`` selection, as
    ``optax.apply_if_finite`` does: 1.22×); the fast program takes 1.00–1.02×."""
    extra = isinstance(optimizer, optax.GradientTransformationExtraArgs)
    pin = (lambda x: x) if layout is None else (lambda x: layout.constrain(x, layout.particles))  # noqa: E731
    value_dtype = jnp.result_type(float)  # float32, or float64 under jax_enable_x64

    def estimate(k, params, frozen, batch):
        args = part.merge(params, frozen)
        if with_data:  # the minibatch is the objective's extra argument, fixed (never differentiated)
            value, grads = _value_and_grads(objective, k, *args, fixed(batch))
            grads = grads[:-1]
        else:
            value, grads = _value_and_grads(objective, k, *args)
        pairs = zip(part.train_leaves(grads), part.train_leaves(params), strict=True)
        g = [jnp.zeros_like(p) if x is None else x for x, p in pairs]
        return value, part.tree(g)

    def draw(params, step, key, frozen, data):
        """The estimate and gradient of step ``step`` (averaged over particles)."""
        k = jax.random.fold_in(key, step)
        batch = minibatch(k, data, batch_size, layout) if with_data else None
        if num_particles == 1:
            return estimate(k, params, frozen, batch)
        keys = pin(jax.random.split(k, num_particles))
        vs, gs = pin(jax.vmap(estimate, (0, None, None, None))(keys, params, frozen, batch))
        return jnp.mean(vs, 0), jax.tree_util.tree_map(lambda g: jnp.mean(g, 0), gs)

    def update(params, opt_state, grads, value):  # negated here: XLA fuses it into the update
        neg = jax.tree_util.tree_map(jnp.negative, grads)
        updates, new_state = optimizer.update(neg, opt_state, params, **({"value": -value} if extra else {}))
        return optax.apply_updates(params, updates), new_state

    def fit_chunk(params, opt_state, frozen, key, start, num, data):
        def body(carry):
            i, params, opt_state, values, _ = carry
            value, grads = draw(params, start + i, key, frozen, data)
            params, opt_state = update(params, opt_state, grads, value)
            return i + 1, params, opt_state, values.at[i].set(value.astype(value_dtype)), jnp.isfinite(value)

        init = (jnp.int32(0), params, opt_state, jnp.full(size, jnp.nan, value_dtype), jnp.array(True))
        _, params, opt_state, values, last = jax.lax.while_loop(lambda c: (c[0] < num) & c[-1], body, init)
        return (params, opt_state), (values, last & _finite(params, opt_state))

    def fit_chunk_guarded(params, opt_state, frozen, key, start, num, data):
        def body(i, carry):
            params, opt_state, values, skipped = carry
            value, grads = draw(params, start + i, key, frozen, data)
            new_params, new_state = update(params, opt_state, grads, value)
            ok = jnp.isfinite(value) & _finite(new_params, new_state)
            params, opt_state = jax.tree_util.tree_map(
                lambda new, old: jnp.where(ok, new, old), (new_params, new_state), (params, opt_state)
            )
            return params, opt_state, values.at[i].set(value.astype(value_dtype)), skipped.at[i].set(~ok)

        init = (params, opt_state, jnp.full(size, jnp.nan, value_dtype), jnp.zeros(size, bool))
        params, opt_state, values, skipped = jax.lax.fori_loop(0, num, body, init)
        return (params, opt_state), (values, skipped)

    if layout is None:
        return Chunk(jax.jit(fit_chunk), jax.jit(fit_chunk_guarded))
    rep = layout.replicated
    data_sharding = layout.data if batch_size is None else rep  # minibatches gather from a replicated data set
    kw = dict(in_shardings=(rep,) * 6 + (data_sharding,), out_shardings=rep)
    return Chunk(jax.jit(fit_chunk, **kw), jax.jit(fit_chunk_guarded, **kw))
