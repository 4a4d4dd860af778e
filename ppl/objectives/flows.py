"""A normalizing-flow automatic family: ``ppl.auto_flow``, a `flowjax <https://github.com/danielward27/flowjax>`_
flow over all continuous latents of a model (NumPyro's ``AutoBNAFNormal`` / ``AutoIAFNormal``, with flowjax's flows).

``auto_flow(model, *model_args, observed=data)`` is :func:`ppl.auto_multivariate_normal` with the joint Normal
replaced by a flow: it draws one vector ``u`` (all continuous latents in their unconstrained spaces, flattened and
concatenated in program order, ``D`` numbers) at the auxiliary address ``"_auto_latent"`` from

    ``u = loc + x``,  ``x ~ flow``  (a flowjax distribution of shape ``(D,)``; by default
    ``flowjax.flows.masked_autoregressive_flow`` over ``StandardNormal((D,))``, ``invert=False``)

with log density ``flow.log_prob(u − loc)``, and then each model address as ``Delta(T(u_site), −log|det J_T|)``
(``T = biject_to(support)``), so ``log q`` is the density of the values the model sees, Jacobians included. The draw
is reparameterized (flowjax's ``sample`` is differentiable), so ``ppl.elbo``'s default strategy is the pathwise one.
``params = {"_auto_latent": {"loc": (D,), "flow": <the flowjax flow, an equinox module>}}`` (plus ``{addr:
{"logits"}}`` for discrete latents, as in every automatic family); ``loc`` starts at the prior medians (as in
:mod:`ppl.objectives.auto`) and ``ppl.fit`` trains ``loc`` and every float array of the flow.

>>> import jax, jax.numpy as jnp, optax, numpyro.distributions as dist, ppl
>>> @ppl.gen
... def model():
...     mu = ppl.sample("mu", dist.Normal(0.0, 2.0))
...     sigma = ppl.sample("sigma", dist.HalfNormal(1.0))
...     with ppl.plate("data", 3):
...         ppl.sample("x", dist.Normal(mu, sigma))
>>> data = {"x": jnp.array([0.9, 1.3, 1.1])}
>>> guide, params = ppl.auto_flow(model, observed=data, flow_layers=2, nn_width=8)
>>> sorted(params["_auto_latent"]), params["_auto_latent"]["flow"].shape, guide.auxiliary
(['flow', 'loc'], (2,), frozenset({'_auto_latent'}))
>>> res = ppl.fit(ppl.elbo(model, guide, data), ((), (params,)), optimizer=optax.adam(0.01), num_steps=100,
...               key=jax.random.key(0), progress=False)
>>> bool(guide.simulate(jax.random.key(1), res.args[1][0]).choices["sigma"] > 0)   # sampled inside the support
True

**The parameter rule and flowjax.** ``ppl``'s rule trains float arrays *and Python floats*; equinox (and flowjax's
own training loops) train float arrays only, and leave out what ``paramax.NonTrainable`` wraps. ``auto_flow``
reconciles the two by marking, in the flow it returns, every Python float leaf (a flowjax hyperparameter such as
``LeakyTanh.min_grad`` in the block neural autoregressive flow) and every ``NonTrainable`` node with
``ppl.fixed(...)``: ``ppl.fit`` then trains exactly ``eqx.filter(flow, eqx.is_inexact_array)`` minus the
``NonTrainable`` parts, as flowjax does. Programs see the flow unwrapped; outside ``ppl``, ``guide.flow(params)``
gives the fitted flowjax distribution of ``u`` (``loc`` included, ``ppl.fixed`` markers removed). Integer and
boolean arrays (permutations, masks) and functions are constants under both rules.

Choosing the flow: ``flow=`` is a flowjax flow constructor (``flowjax.flows.block_neural_autoregressive_flow``,
``coupling_flow``, ``triangular_spline_flow``, a ``functools.partial`` of one...), called as
``flow(key, base_dist=StandardNormal((D,)), **flow_kwargs)``, or a ready flowjax distribution of shape ``(D,)``
(then no ``flow_kwargs``). ``flow_kwargs`` go to the constructor (``flow_layers=``, ``nn_width=``, ``invert=``...).

Sharp edges:
    * Every evaluation of the guide's density at its own draw runs the flow in *both* directions: flowjax's
      ``sample`` (the forward map) and ``log_prob`` (the inverse). For a masked autoregressive flow one of the two is
      a loop over the ``D`` coordinates (``invert=`` chooses which); for a block neural autoregressive flow one is a
      numerical (bisection) inverse, whose accuracy bounds that of ``log q``. Coupling flows are fast both ways.
    * ``invert`` defaults to ``False`` (sampling is the analytic direction). A block neural autoregressive flow with
      ``invert=True`` samples through its bisection and diverges within a few steps of VI — in flowjax alone too:
      lineax's check then raises an ``EquinoxRuntimeError`` out of ``fit`` (``EQX_ON_ERROR=nan`` turns such checks
      into NaNs, which ``fit`` skips as non-finite steps).
    * A flow is far more flexible than a Normal and needs more steps and a smaller learning rate (``optax.adam``
      around ``1e-3``–``1e-2``); ``num_particles`` > 1 helps.
    * As for the other joint families: a subsampled plate around latent sites is an error (one joint vector over all
      data points), discrete latents get the factorized ``Bernoulli``/``Categorical`` family of
      :func:`ppl.auto_normal` (strategy ``discrete_strategy``), and an objective of your own must drop
      ``guide.auxiliary`` from the guide's choices before scoring the model.
    * flowjax is an optional dependency: ``pip install 'ppl[flows]'``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpyro.distributions as nd
from numpyro.distributions import constraints

from ..core.interpreter import PPLError
from ..core.params import Fixed, fixed, unwrap
from ..core.strategy import Strategy
from ..gradients.strategies import enum
from .auto import AUX, JointAutoGuide, _joint

__all__ = ["auto_flow", "FlowGuide", "FlowDistribution"]


def _flowjax():
    """``(equinox, paramax, flowjax.distributions, flowjax.flows, flowjax.bijections)``, imported on first use."""
    try:
        import equinox as eqx
        import flowjax.bijections as fjb
        import flowjax.distributions as fjd
        import flowjax.flows as fjf
        import paramax
    except ImportError as e:
        raise ImportError(
            f"ppl.auto_flow needs flowjax ({e}); install it with: pip install 'ppl[flows]' (or pip install flowjax)"
        ) from e
    return eqx, paramax, fjd, fjf, fjb


class FlowDistribution(nd.Distribution):
    """``loc + x``, ``x`` from a flowjax distribution of shape ``(D,)``, seen through NumPyro's interface.

    A pytree whose leaves are ``loc`` and the flow's arrays; the flow's other leaves (functions, ints, floats) are
    static (``eqx.partition(flow, eqx.is_array)``), so a site of it binds arrays only."""

    pytree_data_fields = ("loc", "arrays")
    pytree_aux_fields = ("static",)
    support = constraints.real_vector

    def __init__(self, flow: Any, loc: Any):
        eqx = _flowjax()[0]
        if len(flow.shape) != 1 or flow.cond_shape is not None:
            raise ValueError(f"FlowDistribution: an unconditional flow of shape (D,) is needed, got {flow.shape}")
        self.arrays, self.static = eqx.partition(flow, eqx.is_array)
        self.loc = loc
        super().__init__(batch_shape=(), event_shape=tuple(flow.shape))

    @property
    def flow(self) -> Any:
        return _flowjax()[0].combine(self.arrays, self.static)

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        return True

    def sample(self, key, sample_shape=()):
        return self.loc + self.flow.sample(key, tuple(sample_shape))

    def rsample(self, key, sample_shape=()):
        return self.sample(key, sample_shape)

    def log_prob(self, value):
        return self.flow.log_prob(value - self.loc)

    def __repr__(self) -> str:
        return f"FlowJAX:{type(self.static).__name__}"


class FlowGuide(JointAutoGuide):
    """The family built by :func:`auto_flow`: ``guide(params)``, the joint draw at ``"_auto_latent"``."""

    def flow(self, params: Mapping[str, Any]) -> Any:
        """The flowjax distribution of ``u`` (the unconstrained joint vector) under ``params``: the flow shifted by
        ``loc``, ``ppl.fixed`` markers removed — for ``sample``/``log_prob`` outside ``ppl``."""
        _, _, fjd, _, fjb = _flowjax()
        q = unwrap(params[AUX])
        return fjd.Transformed(q["flow"], fjb.Affine(loc=q["loc"]))


def _mark_constants(flow: Any) -> Any:
    """``flow`` with each Python float leaf and each ``paramax.NonTrainable`` node wrapped in ``ppl.fixed``."""
    paramax = _flowjax()[1]

    def is_leaf(x):
        return isinstance(x, paramax.NonTrainable | Fixed)

    def mark(x):
        if isinstance(x, paramax.NonTrainable) or (isinstance(x, float) and not isinstance(x, bool)):
            return fixed(x)
        return x

    return jax.tree_util.tree_map(mark, flow, is_leaf=is_leaf)


def _takes(fn: Callable[..., Any], name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def auto_flow(
    model: Any,
    *model_args: Any,
    observed: Mapping[str, Any] | Iterable[str] = (),
    flow: Callable[..., Any] | Any = None,
    key: Any = None,
    discrete_strategy: Strategy = enum,
    **flow_kwargs: Any,
) -> tuple[FlowGuide, dict[str, Any]]:
    """A normalizing flow over all continuous latents, unconstrained and concatenated: ``(guide, init_params)``.

    ``model_args``, ``observed``, ``discrete_strategy``: as :func:`ppl.auto_normal`. ``flow``: ``None`` (flowjax's
    ``masked_autoregressive_flow`` with ``invert=False``), a flowjax flow constructor called as ``flow(key,
    base_dist=StandardNormal((D,)), **flow_kwargs)``, or a flowjax distribution of shape ``(D,)``. ``key``: for the
    prior draws (default key 0) and, folded with 1, the flow's initialization. ``params["_auto_latent"] = {"loc":
    (D,), "flow": flow}``; the joint draw is ``u = loc + x``, ``x ~ flow``. See the module docstring.
    """
    _, _, fjd, fjf, _ = _flowjax()
    k = jax.random.key(0) if key is None else key

    def make(q):
        q = unwrap(q)  # ppl.fixed markers, when the guide is called inline rather than staged
        return FlowDistribution(q["flow"], q["loc"])

    def init(d):
        if flow is None or (callable(flow) and not isinstance(flow, fjd.AbstractDistribution)):
            ctor = fjf.masked_autoregressive_flow if flow is None else flow
            kwargs = dict(flow_kwargs)
            if "invert" not in kwargs and _takes(ctor, "invert"):
                kwargs["invert"] = False  # fast sampling, differentiated through: flowjax's advice for fitting by VI
            built = ctor(jax.random.fold_in(k, 1), base_dist=fjd.StandardNormal((d,)), **kwargs)
        else:
            built = flow
            if flow_kwargs:
                raise TypeError(f"ppl.auto_flow: flow is a ready distribution; {sorted(flow_kwargs)} are not used")
        if not isinstance(built, fjd.AbstractDistribution):
            raise TypeError(
                f"ppl.auto_flow: flow= must be a flowjax flow constructor or distribution, got {type(built).__name__}"
            )
        if tuple(built.shape) != (d,) or built.cond_shape is not None:
            raise PPLError(
                f"ppl.auto_flow: the flow has shape {tuple(built.shape)} (condition {built.cond_shape}); the model's "
                f"continuous latents are {d} unconstrained numbers: an unconditional flow of shape ({d},) is needed"
            )
        return {"flow": _mark_constants(built)}

    guide, params = _joint("ppl.auto_flow", make, init, model, model_args, observed, key, discrete_strategy)
    return FlowGuide(guide.fn), params
