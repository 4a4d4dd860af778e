"""``ppl.from_numpyro``: an existing NumPyro model or guide as a ``ppl`` generative function.

The NumPyro function is run, when ``ppl`` stages it, under one NumPyro effect handler (a ``Messenger`` at the
bottom of NumPyro's handler stack, so it sees every site *after* ``plate``, ``scale``, ``mask`` and ``reparam`` did
their work) that turns NumPyro's primitives into ``ppl``'s:

====================================  =================================================================================
NumPyro                               ``ppl``
====================================  =================================================================================
``sample(name, d)`` (latent)          ``ppl.sample(name, d, strategy=infer.get("strategy"))`` — a random choice;
                                      ``infer={"enumerate": "parallel"}`` is ``strategy=ppl.enum``
``sample(name, d, obs=y)``            ``ppl.factor(scale · log d(y))`` — observations are *not* choices
``plate(name, N)`` around a site      ``ppl.plate(name, N)``: the site's lanes are conditionally independent
latent site under a scale / mask      the choice, plus ``ppl.factor(scale · masked log d(x) − log d(x))``
``plate(name, N, subsample_size=B)``  a choice at address ``name``: the ``B`` indices, drawn without replacement,
                                      with log density 0 (so a model reads a guide's minibatch, as NumPyro's ``replay``)
``param(name, init, constraint=c)``   ``biject_to(c)(params[name])``: lifted to the ``params`` argument
``deterministic(name, v)``            not a choice; ``gf.deterministics(...)`` or ``return_deterministic=True``
``factor(name, w)``                   ``ppl.factor(scale · w)`` (NumPyro's ``factor`` is an observed ``Unit`` site)
====================================  =================================================================================

The converted function takes the parameter dictionary as its **first** argument: ``gf(params, *args)``,
``gf.simulate(key, params, *args)``, ``gf.assess(choices, params, *args)``. Parameters are held *unconstrained*
(``init_params`` returns them so, ready for ``optax``); ``constrain_params`` maps them to the values the program
sees. A function without ``numpyro.param`` sites takes ``{}`` (or convert it with ``params=False``).

>>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
>>> from numpyro.distributions import constraints
>>> def model(y):
...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
...     with numpyro.plate("data", y.shape[0]):
...         numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
>>> def guide(y):
...     loc = numpyro.param("loc", 0.0)
...     scale = numpyro.param("scale", 1.0, constraint=constraints.positive)
...     numpyro.sample("mu", dist.Normal(loc, scale))
>>> p, q = ppl.from_numpyro(model), ppl.from_numpyro(guide)
>>> y = jnp.array([0.5, 1.5])
>>> params = q.init_params(jax.random.key(0), y)
>>> sorted(params), float(params["scale"])             # scale is stored as log(1.0)
(['loc', 'scale'], 0.0)
>>> @ppl.expectation
... def elbo(params):
...     z, log_q = ppl.sim(q, params, y)
...     return ppl.density(p, z, {}, y) - log_q
>>> g = elbo.grad_estimate(jax.random.key(1), params)  # d ELBO / d (unconstrained params)
>>> sorted(g)
['loc', 'scale']

Sharp edges:
    * Observations are factors, not choices: the model's choices are its latent sites only. (A NumPyro site run
      with ``obs=None`` *is* a choice, so ``ppl.elbo(p, q, {"y": y})`` also works for such models.)
    * A latent site inside a subsampled plate is scaled as a ``ppl.plate`` site; under ``handlers.scale``/``mask`` it
      is sampled from its own distribution and its log density is corrected by a factor, so its score function
      (reinforce, enum) is the true one while ``assess`` equals NumPyro's ``log_density``. A masked-out latent
      element is still sampled.
    * Subsample indices are a random choice at the plate's name. In an objective the guide should own the
      subsampled plate (as NumPyro's autoguides do) so the model reads its indices; otherwise pass the indices as
      data. ``assess`` of a model with a subsampled plate needs the indices among the choices.
    * ``numpyro.param`` values missing from ``params`` are an error naming the site; extra entries are ignored (so
      one dict can serve a model and a guide). A callable ``init_value`` is only called by ``init_params``.
    * ``return_deterministic=True`` makes the return value ``(retval, {name: value})``; deterministic sites inside
      a ``jax.lax.scan`` body cannot be returned this way.
    * Keyword arguments are not passed through: bind them with ``functools.partial`` before converting.
    * Loops: a ``jax.lax.scan`` whose body calls ``numpyro.sample`` works (the choice gets the loop axis in front);
      ``numpyro.contrib.control_flow.scan``/``cond`` do not.
    * Not supported (a ``PPLError`` naming the site): ``numpyro.contrib.control_flow.scan``/``cond``, mutable state
      (``numpyro.mutable``, ``flax_module``/``haiku_module`` with mutable collections), ``numpyro.prng_key()``,
      and any other message type. ``numpyro.module``/``flax_module`` without mutable state work (their parameters
      are lifted). ``infer={"enumerate": "parallel"}`` is the ``enum`` *gradient strategy* at a site the guide
      samples (exact per lane in a plate), not NumPyro's marginalization of a model site the guide does not
      sample: give the guide that site.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as nd
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from numpyro.primitives import Messenger

from ..core import distributions as _dists
from ..core.distributions import Subsample
from ..core.interpreter import PPLError
from ..core.params import unwrap
from ..core.primitives import PlateSpec, _prefix, bind_sample, bind_weight, factor_p
from ..core.primitives import factor as ppl_factor
from ..core.primitives import sample as ppl_sample
from ..gradients.strategies import enum
from ..transforms.tracing import GenFn

__all__ = ["from_numpyro", "NumPyroGenFn", "Subsample", "numpyro_estimator"]


# ---------------------------------------------------------------------------------------------- subsample indices


# ---------------------------------------------------------------------------------------------- the handler


def _is_one(scale: Any) -> bool:
    return scale is None or (isinstance(scale, int | float) and scale == 1)


def _strip_masks(d: nd.Distribution) -> tuple[nd.Distribution, bool]:
    """The distribution a site is really sampled from: ``d`` without ``MaskedDistribution`` wrappers."""
    if isinstance(d, nd.MaskedDistribution):
        return _strip_masks(d.base_dist)[0], True
    if isinstance(d, nd.ExpandedDistribution):
        base, stripped = _strip_masks(d.base_dist)
        return (base.expand(d.batch_shape) if stripped else d), stripped
    if isinstance(d, nd.Independent):
        base, stripped = _strip_masks(d.base_dist)
        return (base.to_event(d.reinterpreted_batch_ndims) if stripped else d), stripped
    return d, False


_UNSUPPORTED = {
    "control_flow": "numpyro.contrib.control_flow.scan / cond is not supported by ppl.from_numpyro: write the loop "
    "with jax.lax.scan (a site in its body records the loop axis in front) or a Python loop, and the branch with "
    "jax.lax.cond",
    "mutable": "mutable state (numpyro.mutable, or flax_module / haiku_module with mutable collections such as batch "
    "statistics) is not supported by ppl.from_numpyro: ppl programs are pure functions of their arguments",
    "prng_key": "numpyro.prng_key() has no key under ppl.from_numpyro: randomness must come from sample sites (a "
    "callable numpyro.param init_value is only called by init_params)",
}


class _ToPPL(Messenger):
    """Turn NumPyro messages into ``ppl`` primitives while the converted function is staged."""

    def __init__(self, owner: _Converted, params: Mapping[str, Any] | None):
        self.owner, self.params = owner, params
        self.deterministic: dict[str, Any] = {}
        self.plate_sizes: dict[str, tuple[int, int]] = {}
        super().__init__()

    def process_message(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "sample":
            self._sample(msg)
        elif kind == "param":
            self._param(msg)
        elif kind == "plate":
            self._plate(msg)
        elif kind == "deterministic":
            self.deterministic[msg["name"]] = msg["value"]
        elif kind in ("subsample", "inspect"):
            return
        else:
            what = f" {msg['name']!r}" if msg.get("name") else ""
            reason = _UNSUPPORTED.get(kind, "this NumPyro primitive is not supported by ppl.from_numpyro")
            raise PPLError(f"{self.owner.__name__}: NumPyro site{what} of type {kind!r}: {reason}")
        msg["stop"] = True

    def _sample(self, msg: dict[str, Any]) -> None:
        name, fn, scale = msg["name"], msg["fn"], msg["scale"]
        infer = msg.get("infer") or {}
        strategy = infer.get("strategy")
        if "enumerate" in infer and strategy is None:
            if infer["enumerate"] not in ("parallel", "sequential"):
                raise PPLError(
                    f"{self.owner.__name__}: site {name!r} has infer={{'enumerate': {infer['enumerate']!r}}}; ppl "
                    "reads 'parallel' and 'sequential' as the enum strategy (or set infer={'strategy': ...})"
                )
            strategy = enum
        sample_shape = tuple(msg["kwargs"].get("sample_shape") or ())
        if sample_shape:
            fn = msg["fn"] = fn.expand(sample_shape + tuple(fn.batch_shape))
            msg["kwargs"]["sample_shape"] = ()
        plates = self._plates(msg)
        if msg["value"] is not None:  # observed (obs=, handlers.condition) or substituted: a factor (per lane)
            lp = _dists.log_prob(fn, msg["value"])
            bind_weight(factor_p, lp if _is_one(scale) else scale * lp, plates)
            return
        sampler, masked = _strip_masks(fn)
        x = bind_sample(_prefix() + name, sampler, strategy, plates)
        own = math.prod(p.scale for p in plates)  # the site scores itself scaled by its plates' subsampling
        given = 1.0 if scale is None else scale  # NumPyro's scale (plates' subsampling and handlers.scale)
        if masked or not (isinstance(given, int | float) and math.isclose(given, own)):
            target = _dists.log_prob(fn, x)
            target = target if _is_one(scale) else scale * target
            ppl_factor(jnp.sum(target) - own * jnp.sum(_dists.log_prob(sampler, x)))
        msg["value"] = x

    def _plates(self, msg: dict[str, Any]) -> tuple[PlateSpec, ...]:
        """The NumPyro plates around a site as ``ppl`` plates (outermost first)."""
        out = []
        for f in msg.get("cond_indep_stack") or ():
            size, lanes = self.plate_sizes.get(f.name, (f.size, f.size))
            out.append(PlateSpec(f.name, int(size), int(lanes), int(f.dim)))
        return tuple(sorted(out, key=lambda p: -p.dim))

    def _param(self, msg: dict[str, Any]) -> None:
        name = msg["name"]
        constraint = msg["kwargs"].get("constraint", constraints.real)
        self.owner.constraints[name] = constraint
        if self.params is None:
            raise PPLError(
                f"{self.owner.__name__}: numpyro.param({name!r}) in a function converted with params=False; convert "
                "it with ppl.from_numpyro(fn) (the default), which takes the params dict as its first argument"
            )
        if name not in self.params:
            raise PPLError(
                f"{self.owner.__name__}: numpyro.param({name!r}) has no value in the params dict (it has "
                f"{sorted(self.params)}); start from gf.init_params(key, *args)"
            )
        msg["value"] = jax.tree_util.tree_map(biject_to(constraint), self.params[name])

    def _plate(self, msg: dict[str, Any]) -> None:
        size, subsample_size = msg["args"][:2]
        self.plate_sizes[msg["name"]] = (size, subsample_size or size)
        if msg["value"] is not None:  # no subsampling: the indices are arange(size)
            return
        msg["value"] = ppl_sample(msg["name"], Subsample(size, subsample_size))


# ---------------------------------------------------------------------------------------------- the conversion


class _Converted:
    """``fn(*args)`` under :class:`_ToPPL`, as a ``ppl`` program ``(params, *args) -> retval``."""

    def __init__(self, fn: Callable[..., Any], lift_params: bool, return_deterministic: bool):
        self.fn, self.lift_params, self.return_deterministic = fn, lift_params, return_deterministic
        self.__name__ = getattr(fn, "__name__", "numpyro_fn")
        self.constraints: dict[str, Any] = {}

    def __call__(self, *args: Any) -> Any:
        params = None
        if self.lift_params:
            if not args or not isinstance(args[0], Mapping):
                got = type(args[0]).__name__ if args else "nothing"
                raise TypeError(
                    f"{self.__name__} (from ppl.from_numpyro): the first argument is the params dict (numpyro.param "
                    f"name -> unconstrained value), got {got}. Pass {{}} if the function has no numpyro.param "
                    "sites, or convert it with ppl.from_numpyro(fn, params=False)"
                )
            params, args = args[0], args[1:]
        handler = _ToPPL(self, params)
        with handler:
            out = self.fn(*args)
        return (out, dict(handler.deterministic)) if self.return_deterministic else out


class NumPyroGenFn(GenFn):
    """A ``GenFn`` converted from a NumPyro function (see :func:`from_numpyro`); called as ``gf(params, *args)``."""

    def __init__(self, fn: _Converted):
        super().__init__(fn)
        self.source = fn  # kept by program transformations (``map_programs`` copies): init_params still works
        self._with_det: GenFn | None = None

    def __repr__(self) -> str:
        return f"NumPyroGenFn({self.__name__})"

    def init_params(self, key: Any, *args: Any) -> dict[str, Any]:
        """Initial *unconstrained* values of the ``numpyro.param`` sites (``init_value``, mapped by the inverse of
        ``biject_to(constraint)``), running the function once under NumPyro's ``seed``."""
        src = self.source
        with numpyro.handlers.trace() as tr, numpyro.handlers.seed(rng_seed=key):
            src.fn(*args)
        out: dict[str, Any] = {}
        for name, site in tr.items():
            if site["type"] == "param" and site["value"] is not None:
                c = site["kwargs"].get("constraint", constraints.real)
                src.constraints[name] = c
                out[name] = jax.tree_util.tree_map(lambda v, c=c: biject_to(c).inv(jnp.asarray(v)), site["value"])
        return out

    def _constraints(self, who: str, names: Any, args: tuple[Any, ...]) -> dict[str, Any]:
        src = self.source
        if any(n not in src.constraints for n in names):
            try:
                self.init_params(jax.random.key(0), *args)
            except TypeError:  # the function needs arguments that were not passed: say so below
                pass
        unknown = [n for n in names if n not in src.constraints]
        if unknown:
            raise PPLError(
                f"{who}: no numpyro.param site {unknown} seen yet in {self.__name__}; pass the function's "
                f"arguments: gf.{who}(params, *args)"
            )
        return src.constraints

    def constrain_params(self, params: Mapping[str, Any], *args: Any) -> dict[str, Any]:
        """The values the program sees (``biject_to(constraint)(params[name])``), like NumPyro's
        ``SVI.get_params``. Constraints are known once the function has been staged or ``init_params`` has run;
        otherwise pass the function's arguments to find them."""
        cs = self._constraints("constrain_params", params, args)
        return {n: jax.tree_util.tree_map(biject_to(cs[n]), v) for n, v in params.items()}

    def unconstrain_params(self, constrained: Mapping[str, Any], *args: Any) -> dict[str, Any]:
        """The inverse of :meth:`constrain_params` (e.g. to start from the parameters of a NumPyro ``SVI`` run)."""
        cs = self._constraints("unconstrain_params", constrained, args)
        return {
            n: jax.tree_util.tree_map(lambda x, c=cs[n]: biject_to(c).inv(jnp.asarray(x)), v)
            for n, v in constrained.items()
        }

    def deterministics(self, choices: Mapping[str, Any], *args: Any) -> dict[str, Any]:
        """``{name: value}`` of the ``numpyro.deterministic`` sites for the given choices (args as for ``assess``,
        params first)."""
        src = self.source
        if self._with_det is None:
            self._with_det = GenFn(_Converted(src.fn, src.lift_params, return_deterministic=True))
        return self._with_det.assess(choices, *args)[1][1]


def from_numpyro(fn: Callable[..., Any], *, params: bool = True, return_deterministic: bool = False) -> NumPyroGenFn:
    """An existing NumPyro model or guide as a ``ppl`` generative function.

    ``fn(*args)`` may use ``numpyro.sample`` (with ``obs=``, ``sample_shape``, ``infer={"strategy": s}`` for a
    ``ppl`` gradient strategy), ``numpyro.plate`` (nested, with ``subsample_size``), ``numpyro.param``,
    ``numpyro.deterministic``, ``numpyro.factor``, ``numpyro.subsample`` and the handlers ``scale``, ``mask``,
    ``condition``, ``substitute``, ``reparam``. The result is called ``gf(params, *args)`` (``params=False``:
    ``gf(*args)``, for a function without ``numpyro.param``); ``return_deterministic=True`` makes it return
    ``(retval, {deterministic name: value})``. See the module docstring for the mapping and its sharp edges.
    """
    if isinstance(fn, GenFn):
        raise TypeError(f"ppl.from_numpyro: {fn!r} is already a ppl generative function")
    if not callable(fn):
        raise TypeError(f"ppl.from_numpyro: expected a NumPyro model or guide (a callable), got {type(fn).__name__}")
    return NumPyroGenFn(_Converted(fn, bool(params), bool(return_deterministic)))


def numpyro_estimator(model: Callable[..., Any], guide: Callable[..., Any], loss: Any) -> Callable[..., Any]:
    """NumPyro's own gradient estimator as a row of ``ppl.compare_estimators(..., hand_coded={name: ...})``.

    ``loss`` is a NumPyro ELBO (``Trace_ELBO()``, ``TraceGraph_ELBO()``, ...). The result is
    ``estimator(key, model_args, guide_args) -> (ELBO estimate, gradients)`` for the argument layout of
    ``ppl.elbo(from_numpyro(model), from_numpyro(guide), {})``: ``model_args = (model_params, *args)`` and
    ``guide_args = (guide_params, *args)`` (the same ``args`` for both, as NumPyro passes them; wrap data in
    ``ppl.fixed``), parameters unconstrained. The gradients are what ``numpyro.infer.SVI`` computes — ``-jax.grad``
    of ``loss.loss`` with respect to the parameters, through their constraints — in the structure
    ``value_and_grad_estimate`` returns.

    >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
    >>> from numpyro.infer import Trace_ELBO
    >>> from ppl.interop import numpyro_estimator
    >>> def model():
    ...     numpyro.sample("z", dist.Normal(0.0, 1.0))
    >>> def guide():
    ...     numpyro.sample("z", dist.Normal(numpyro.param("m", 0.5), 1.0))
    >>> value, grads = numpyro_estimator(model, guide, Trace_ELBO())(jax.random.key(0), ({},), ({"m": 0.5},))
    >>> sorted(grads[1][0])
    ['m']
    """
    p, q = from_numpyro(model), from_numpyro(guide)

    def estimator(key: Any, model_args: tuple[Any, ...], guide_args: tuple[Any, ...]) -> tuple[Any, Any]:
        (pm, *margs), (pg, *gargs) = model_args, guide_args
        args = [unwrap(a) for a in gargs]

        def elbo(pm, pg):
            constrained = {**p.constrain_params(pm, *args), **q.constrain_params(pg, *args)}
            return -loss.loss(key, constrained, model, guide, *args)

        value, (gm, gg) = jax.value_and_grad(elbo, argnums=(0, 1))(pm, pg)
        rest = lambda a: jax.tree_util.tree_map(lambda _: None, a, is_leaf=lambda x: x is None)  # noqa: E731
        return value, ((gm, *map(rest, margs)), (gg, *map(rest, gargs)))

    return estimator
