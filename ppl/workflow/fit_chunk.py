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


def _finite(params: Any, opt_state: Any) -> jax.Array:
    """Whether every entry of the parameters and of the optimizer state's float leaves is finite, as one scalar
    (exact: ``isfinite`` per entry; it runs once per chunk in the fast program, so its cost does not matter)."""
    state = [x for x in jax.tree_util.tree_leaves(opt_state) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves((params, state))]))


class Chunk(NamedTuple):
    """The jitted programs of a chunk (:func:`make_chunk`): ``fast`` runs every chunk; ``guarded`` reruns one that
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
    step. It returns ``((params, opt_state), (values, ok))``; ``ok``: at the end, every estimate and every entry of
    the parameters and the optimizer state is finite (one pass over them per chunk). A non-finite gradient or an
    update that overflows cannot hide from that check: it reaches the parameters or the state, and later updates keep
    it there (NaN and infinity propagate through arithmetic) — unless the optimizer itself discards it
    (``optax.zero_nans``), and then the step is a finite step. A chunk that meets a NaN runs to its end all the same
    (stopping at a non-finite estimate — a data-dependent loop condition — cost ~65 µs per step at batch 256).

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
        def body(i, carry):
            params, opt_state, values = carry
            value, grads = draw(params, start + i, key, frozen, data)
            params, opt_state = update(params, opt_state, grads, value)
            return params, opt_state, values.at[i].set(value.astype(value_dtype))

        init = (params, opt_state, jnp.zeros(size, value_dtype))
        params, opt_state, values = jax.lax.fori_loop(0, num, body, init)
        finite_values = jnp.all(jnp.isfinite(values) | (jnp.arange(size) >= num))
        return (params, opt_state), (values, finite_values & _finite(params, opt_state))

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
