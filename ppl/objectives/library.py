"""The objective library, written with ``sim`` and ``density`` exactly as a user would write their own.

Each constructor returns an :class:`~ppl.Expectation` taking ``(model_args, guide_args)`` (tuples of positional
arguments; a non-tuple is one argument) and, optionally, ``data`` (overriding the observations given at
construction, e.g. a minibatch). Each returns the quantity to **maximize**. ``strategies={glob: strategy}`` sets
gradient strategies by address for every random choice of the objective (the guide's, and the model's if it samples).
``guide_inputs=f`` makes the guide *amortized*: it is called as ``guide(*guide_args, *f(observations))`` with the
observations of the call (the minibatch ``obs`` when given, so ``ppl.fit(..., data=, batch_size=)`` reaches the
encoder), e.g. ``ppl.elbo(model, encoder, {"x": x}, guide_inputs=lambda d: d["x"])``.

>>> import jax, numpyro.distributions as dist, ppl
>>> model = ppl.gen(lambda: ppl.sample("x", dist.Normal(ppl.sample("z", dist.Normal(0.0, 1.0)), 1.0)))
>>> guide = ppl.gen(lambda mu: ppl.sample("z", dist.Normal(mu, 0.7071)))
>>> obj = ppl.elbo(model, guide, {"x": 1.0})
>>> float(obj.estimate(jax.random.key(0), (), (0.5,))) < 0.0     # log p(x) = -1.5724 at the exact posterior
True

Sharp edges:
    * ``p_wake``/``q_wake`` follow reweighted wake-sleep: their gradients are the self-normalized wake-phase
      updates (consistent, biased for finite ``N``), with the guide's samples held fixed (``detach``); their value
      is the IWAE estimate of ``log p(x)`` (``p_wake``) or of ``E_p[log q]`` (``q_wake``).
    * ``vimco`` forces ``reinforce`` on the guide's sites (its control variates assume score-function terms) and
      rejects other strategies; ``dreg_iwae`` rejects guide sites that are not reparameterized (both name the site).
    * Data must not name an address the guide samples (an error): the observation would replace the guide's draw.
    * Plates (``ppl.plate``): ``elbo`` is a sum over the plate, so it gives every site's log density as a per-lane
      term and a plated site's score multiplies only its lane's terms (``enum``/``mvd`` at it: ``|values|`` runs for
      all lanes). ``iwae``, ``vimco``, ``renyi``, ``dreg_iwae`` and the wake objectives are not: their particles are
      whole-dataset, so a plated one-call site's score multiplies the whole particle (unbiased, as without the
      plate) and a multi-call strategy at a plated site is an error naming the site.
    * A model's subsampled plate (``ppl.plate(..., subsample_size=b)``) whose indices neither the guide nor the data
      provide draws them inside the objective (uniformly, no derivative): an unbiased estimate of the full-data
      objective for ``elbo``; inside the log-mean-exp of ``iwae`` and friends it is a different bound, as in NumPyro.
    * A guide may declare ``auxiliary`` addresses (``guide.auxiliary``, as the joint ``ppl.auto_*`` families do): they
      are part of ``log q`` and left out of the choices the model is scored at.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from ..core.distributions import Subsample
from ..core.interpreter import PPLError
from ..core.lanes import vmap
from ..core.primitives import bind_sample
from ..core.strategy import Strategy, StrategyError, default_strategy, sg, zero_valued
from ..gradients.strategies import ImplicitReparam, Reinforce, Reparam, detach, reinforce
from ..transforms.adev import Expectation, expectation
from ..transforms.strategy_rewrite import first_match, with_strategies
from ..transforms.tracing import GenFn, as_family, density, sim, sites

GuideInputs = Callable[[Mapping[str, Any]], Any]
"""``guide_inputs(observations)``: extra positional arguments for an amortized guide (a value or a tuple)."""


def _tuple(a: Any) -> tuple[Any, ...]:
    return a if isinstance(a, tuple) else (a,)


def _resolve(data, obs, model_args, guide_args, guide_inputs):
    """``(observations, model args, guide args)`` of one call: ``obs`` (a minibatch) overrides ``data``; an amortized
    guide gets ``guide_inputs(observations)`` appended to its arguments."""
    d = data if obs is None else obs
    gargs = _tuple(guide_args)
    if guide_inputs is not None:
        gargs = gargs + _tuple(guide_inputs(d))
    return d, _tuple(model_args), gargs


def _joint(z: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """The model's choices: the guide's draws and the observations, which must not overlap."""
    clash = sorted(set(z) & set(data))
    if clash:
        raise PPLError(
            f"data names {clash}, which the guide samples: the observation would silently replace the guide's draw "
            "in the model. Observed and latent addresses must be disjoint: drop them from the data (or from the guide)"
        )
    return {**z, **data}


def _latents(guide: Any, z: Mapping[str, Any]) -> Mapping[str, Any]:
    """The guide's choices the model scores: all but the guide's declared ``auxiliary`` addresses (the joint draw of
    ``ppl.auto_multivariate_normal``: its density is part of ``log q``, the model has no such choice)."""
    aux = getattr(guide, "auxiliary", ())  # a plain function (made a family by sim) has none
    return {a: v for a, v in z.items() if a not in aux} if aux else z


def _subsamples(model: Any, z: Mapping[str, Any], data: Mapping[str, Any], args: tuple[Any, ...]) -> dict[str, Any]:
    """``z`` plus the indices of the model's subsampled plates that neither the guide nor the data provide, drawn
    here (uniform, no parameters: an unbiased estimate of the full-data objective)."""
    if not isinstance(model, GenFn):
        return dict(z)
    extra = {a: d for a, d, _ in sites(model, *args) if isinstance(d, Subsample) and a not in z and a not in data}
    return {**z, **{a: bind_sample(a, d, None, ()) for a, d in extra.items()}}


def _score(model: Any, z: Mapping[str, Any], data: Mapping[str, Any], *args: Any, cost: float = 0.0) -> Any:
    """``log p(z, data)``: ``density`` with an error that says which choices the guide and the data provide."""
    try:
        return density(model, _joint(z, data), *args, cost=cost)
    except PPLError as e:
        if "missing choice(s)" not in str(e) and "not used by the program" not in str(e):
            raise
        raise PPLError(
            f"{e}. The guide samples {sorted(z)} and the data observes {sorted(data)}: the model's latent choices "
            "and the guide's must be the same addresses (and observed ones given as data)"
        ) from None


def _check_reparameterized(who: str, guide: Any, args: tuple[Any, ...], strategies: Mapping[str, Strategy] | None):
    """Every guide site must be reparameterized (DReG's guide gradient assumes it)."""
    if not isinstance(guide, GenFn):
        return
    for addr, d, s in sites(guide, *args):
        hit = first_match(strategies or {}, addr)
        chosen = hit[1] if hit is not None else s
        chosen = default_strategy(d) if chosen is None else chosen
        if not isinstance(chosen, Reparam | ImplicitReparam) or not d.has_rsample:
            raise StrategyError(
                f"{who}: guide site {addr!r} ({type(d).__name__}) uses {chosen!r}; the doubly reparameterized "
                "estimator is only unbiased for reparameterized guide sites (reparam, implicit_reparam). Use "
                "ppl.iwae (any strategy) for this guide"
            )


def _stop(tree: Any) -> Any:
    """``stop_gradient`` on the array leaves of ``tree`` (functions and other static leaves pass through)."""
    return jax.tree_util.tree_map(lambda x: sg(x) if isinstance(x, jax.Array) or hasattr(x, "aval") else x, tree)


def _count(who: str, name: str, n: Any, least: int = 1) -> int:
    """A particle count: a Python int ``>= least`` (static: it sizes the particles' map)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < least:
        raise ValueError(f"ppl.{who}: {name} must be a Python int >= {least} (the number of particles), got {n!r}")
    return n


def _declare(obj: Expectation, strategies: Mapping[str, Strategy] | None) -> Expectation:
    return with_strategies(obj, strategies) if strategies else obj


def _log_weights(model, guide, data, model_args, guide_args, K):
    """``K`` independent ``log p(x, z_k) − log q(z_k)`` (the particles are a ``ppl.vmap``)."""

    def particle():
        z, log_q = sim(guide, *guide_args)
        z = _latents(guide, z)
        return _score(model, _subsamples(model, z, data, model_args), data, *model_args) - log_q

    return vmap(particle, axis_size=K)()


def elbo(
    model: Any,
    guide: Any,
    data: Mapping[str, Any],
    *,
    strategies: Mapping[str, Strategy] | None = None,
    guide_inputs: GuideInputs | None = None,
) -> Expectation:
    """``E_q[log p(x, z) − log q(z)]``. With an estimated-density guide (``ppl.marginal``) this is HVI/IWHVI."""
    estimated = as_family(guide, "elbo").estimated_density

    @expectation
    def elbo(model_args, guide_args, obs=None):
        d, margs, gargs = _resolve(data, obs, model_args, guide_args, guide_inputs)
        if estimated:  # an estimated density: one term
            z, log_q = sim(guide, *gargs)
            return _score(model, _latents(guide, z), d, *margs) - log_q
        z, _ = sim(guide, *gargs, cost=-1.0)  # every site's log density is a term (per lane in a plate)
        z = _latents(guide, z)
        _score(model, _subsamples(model, z, d, margs), d, *margs, cost=1.0)
        return jnp.zeros(())

    return _declare(elbo, strategies)


def iwae(
    model: Any, guide: Any, data: Mapping[str, Any], K: int, *, strategies=None, guide_inputs: GuideInputs | None = None
) -> Expectation:
    """``E[log (1/K) Σ_k p(x, z_k)/q(z_k)]`` (Burda et al. 2016); with ``ppl.marginal`` guides, DIWHVI."""

    K = _count("iwae", "K", K, 1)

    @expectation
    def iwae(model_args, guide_args, obs=None):
        w = _log_weights(model, guide, *_resolve(data, obs, model_args, guide_args, guide_inputs), K)
        return logsumexp(w) - jnp.log(K)

    return _declare(iwae, strategies)


def renyi(
    model: Any,
    guide: Any,
    data: Mapping[str, Any],
    K: int,
    alpha: float,
    *,
    strategies=None,
    guide_inputs: GuideInputs | None = None,
) -> Expectation:
    """Rényi's α variational bound (Li & Turner 2016): ``1/(1−α) · log (1/K) Σ_k w_k^{1−α}``, α ≠ 1."""
    if alpha == 1.0:
        raise ValueError("renyi: alpha = 1 is the ELBO; use ppl.elbo")

    K = _count("renyi", "K", K, 1)

    @expectation
    def renyi(model_args, guide_args, obs=None):
        w = _log_weights(model, guide, *_resolve(data, obs, model_args, guide_args, guide_inputs), K)
        return (logsumexp((1.0 - alpha) * w) - jnp.log(K)) / (1.0 - alpha)

    return _declare(renyi, strategies)


def vimco(
    model: Any, guide: Any, data: Mapping[str, Any], K: int, *, strategies=None, guide_inputs: GuideInputs | None = None
) -> Expectation:
    """IWAE with VIMCO's per-particle leave-one-out control variates (Mnih & Rezende 2016), for discrete guides.

    Each particle's score term is multiplied by ``L − L_{−k}`` instead of ``L``, where ``L_{−k}`` replaces
    particle ``k``'s weight by the geometric mean of the others (it does not depend on particle ``k``).
    """
    K = _count("vimco", "K", K, 2)
    for pat, st in (strategies or {}).items():
        if not isinstance(st, Reinforce):
            raise StrategyError(
                f"vimco: strategy {st!r} for {pat!r}: VIMCO is a score-function estimator with its own leave-one-out "
                "control variates, so its guide sites use reinforce. Use ppl.iwae(..., strategies=...) for other "
                "strategies"
            )
    guide = with_strategies(guide, {"*": reinforce})

    @expectation
    def vimco(model_args, guide_args, obs=None):
        d, margs, gargs = _resolve(data, obs, model_args, guide_args, guide_inputs)

        def particle():
            z, log_q = sim(guide, *gargs)
            return _score(model, _latents(guide, z), d, *margs) - log_q, log_q

        w, log_q = vmap(particle, axis_size=K)()
        L = logsumexp(w) - jnp.log(K)
        ws = sg(w)
        others_mean = (jnp.sum(ws) - ws) / (K - 1)
        replaced = jnp.where(jnp.eye(K, dtype=bool), others_mean[:, None], ws[None, :])
        L_minus = logsumexp(replaced, axis=1) - jnp.log(K)
        return L - jnp.sum(L_minus * zero_valued(log_q))

    return _declare(vimco, strategies)


def dreg_iwae(
    model: Any, guide: Any, data: Mapping[str, Any], K: int, *, strategies=None, guide_inputs: GuideInputs | None = None
) -> Expectation:
    """IWAE with doubly reparameterized gradients for the guide (Tucker et al. 2019); ``K = 1`` is STL.

    Same value and same expected gradient as ``iwae``; usually lower variance for the guide's parameters (near
    the posterior or with larger ``K``; far from it, measure with ``compare_estimators``).
    """

    K = _count("dreg_iwae", "K", K, 1)

    @expectation
    def dreg_iwae(model_args, guide_args, obs=None):
        d, margs, gargs = _resolve(data, obs, model_args, guide_args, guide_inputs)
        _check_reparameterized("dreg_iwae", guide, gargs, strategies)
        fixed_guide = _stop(gargs)
        fixed_model = _stop(margs)

        def particle():
            z_all, _ = sim(guide, *gargs)
            z = _latents(guide, z_all)
            path = _score(model, z, d, *fixed_model) - density(guide, z_all, *fixed_guide)
            zs = _stop(z)
            model_term = _score(model, zs, d, *margs)
            return path, model_term

        path, model_term = vmap(particle, axis_size=K)()
        w = sg(path)
        L = logsumexp(w) - jnp.log(K)
        wn = jax.nn.softmax(w)
        return L + jnp.sum(wn**2 * zero_valued(path)) + jnp.sum(wn * zero_valued(model_term))

    return _declare(dreg_iwae, strategies)


def p_wake(
    model: Any, guide: Any, data: Mapping[str, Any], N: int, *, strategies=None, guide_inputs: GuideInputs | None = None
) -> Expectation:
    """Reweighted wake-sleep, wake phase for the model: ``Σ_n w̄_n ∇θ log p(x, z_n)`` with ``z_n ~ q`` held fixed."""
    guide = with_strategies(guide, {"*": detach})

    N = _count("p_wake", "N", N, 1)

    @expectation
    def p_wake(model_args, guide_args, obs=None):
        d, margs, gargs = _resolve(data, obs, model_args, guide_args, guide_inputs)

        def particle():
            z, log_q = sim(guide, *_stop(gargs))
            return _score(model, _latents(guide, z), d, *margs), log_q

        log_p, log_q = vmap(particle, axis_size=N)()
        w = sg(log_p - log_q)
        return logsumexp(w) - jnp.log(N) + jnp.sum(jax.nn.softmax(w) * zero_valued(log_p))

    return _declare(p_wake, strategies)


def q_wake(
    model: Any, guide: Any, data: Mapping[str, Any], N: int, *, strategies=None, guide_inputs: GuideInputs | None = None
) -> Expectation:
    """Reweighted wake-sleep, wake phase for the guide: ``Σ_n w̄_n ∇φ log q(z_n)`` with ``z_n ~ q`` held fixed
    (a self-normalized estimate of ``−∇φ KL(p(z|x) ‖ q)``)."""
    guide = with_strategies(guide, {"*": detach})

    N = _count("q_wake", "N", N, 1)

    @expectation
    def q_wake(model_args, guide_args, obs=None):
        d, margs, gargs = _resolve(data, obs, model_args, guide_args, guide_inputs)

        def particle():
            z, log_q = sim(guide, *gargs)
            return _score(model, _latents(guide, z), d, *_stop(margs)), log_q

        log_p, log_q = vmap(particle, axis_size=N)()
        wn = jax.nn.softmax(sg(log_p - log_q))
        return jnp.sum(wn * log_q)

    return _declare(q_wake, strategies)
