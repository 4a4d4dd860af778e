"""Automatic variational families: a guide built from a model's sites, as a ``ppl`` program (NumPyro's autoguides).

Each constructor runs the model once on example arguments, reads its sites (address, distribution, support, plates,
shape) and returns ``(guide, init_params)``: ``guide`` is a :class:`ppl.GenFn` called as ``guide(params)`` with
``params`` a dict of float arrays, all unconstrained (so ``ppl.fit`` trains them with any optax optimizer), and
``init_params`` its initial value. Every latent site of the model (every site except the ``observed`` addresses and
subsample indices) gets a site at the **same address** in the guide, inside the **same plates**, so ``ppl.elbo`` and
the per-lane estimators apply unchanged:

==================================  ================================================================================
``auto_normal``                     ``TransformedDistribution(Normal(loc, softplus(raw_scale)).to_event(k),
                                    biject_to(support))``: mean-field Normal in the unconstrained space, log density
                                    with the Jacobian. ``params[addr] = {"loc", "raw_scale"}``
``auto_multivariate_normal``        one ``MultivariateNormal(loc, L)`` over all continuous latents, unconstrained,
                                    flattened and concatenated; ``L = tril(raw, -1) + diag(softplus(diag(raw)))``.
                                    ``params["_auto_latent"] = {"loc", "raw_scale_tril"}``
``auto_low_rank_normal``            the same with ``LowRankMultivariateNormal(loc, W, softplus(raw_scale)²)``:
                                    ``params["_auto_latent"] = {"loc", "cov_factor", "raw_scale"}``
``auto_delta``                      ``Delta(biject_to(support)(loc))``: a point mass. ``params[addr] = {"loc"}``
discrete latents (every family)     ``Bernoulli(logits)`` / ``Categorical(logits)`` (any site whose support is
                                    ``{0, 1}`` or ``{0, ..., K-1}``), with strategy ``discrete_strategy`` (default
                                    ``ppl.enum``: exact per lane in a plate). ``params[addr] = {"logits"}`` (zeros)
==================================  ================================================================================

The joint families draw the vector ``u`` at the auxiliary address ``"_auto_latent"`` and then each model address as
``Delta(T(u_site), log_density=-log|det J_T(u_site)|)``: the guide's log density is then ``log q(u) − Σ log|J|``, the
density of the model-address values. The returned guide declares ``guide.auxiliary == {"_auto_latent"}``, and the
library objectives (``elbo``, ``iwae``, ``renyi``, ``vimco``, ``dreg_iwae``, the wake phases) score the model at the
guide's choices without it.

Initial values: ``loc`` is, per element, the median in the unconstrained space of 15 draws from the model's prior
(for a one-dimensional support it is NumPyro's ``init_to_median``; on a simplex it stays a valid point), each site
drawn given the medians of the sites before it; the scales start at ``init_scale``; logits at zero (uniform).

>>> import jax, jax.numpy as jnp, optax, numpyro.distributions as dist, ppl
>>> @ppl.gen
... def model():
...     mu = ppl.sample("mu", dist.Normal(0.0, 2.0))
...     sigma = ppl.sample("sigma", dist.HalfNormal(1.0))
...     with ppl.plate("data", 3):
...         ppl.sample("x", dist.Normal(mu, sigma))
>>> data = {"x": jnp.array([0.9, 1.3, 1.1])}
>>> guide, params = ppl.auto_normal(model, observed=data)
>>> sorted(params), sorted(params["sigma"])
(['mu', 'sigma'], ['loc', 'raw_scale'])
>>> res = ppl.fit(ppl.elbo(model, guide, data), ((), (params,)), optimizer=optax.adam(0.05), num_steps=300,
...               key=jax.random.key(0), progress=False)
>>> bool(guide.simulate(jax.random.key(1), res.args[1][0]).choices["sigma"] > 0)   # sampled inside the support
True

Sharp edges:
    * The guide's structure is fixed when it is built: shapes, plates, supports and the number of categories come from
      the example arguments. A support that depends on another latent (``Uniform(0, z)``) is taken at its prior-median
      value; one that depends on values inside a loop, branch or map is an error naming the site.
    * ``observed`` must name sites of the model; a NumPyro model's ``obs=`` sites are factors, not sites, so leave
      them out. Latent sites without a support ``ppl`` can map (a TFP distribution) or a discrete one that is not
      ``{0, 1}``/``{0, ..., K-1}`` (``Poisson``) are errors naming the site.
    * ``enum`` at a discrete site needs every element of it in a plate (one lane per element); otherwise it is an
      error at construction: pass ``discrete_strategy=ppl.reinforce`` (or declare the plate in the model).
    * A subsampled plate (``subsample_size=``) around latent sites is owned by the mean-field guides (``auto_normal``,
      ``auto_delta``): they draw the indices at the plate's address and index their full-size parameters, as NumPyro
      does. The joint families reject it (one joint vector over all data points).
    * A user-written objective must drop ``guide.auxiliary`` from the guide's choices before ``ppl.density(model, ...)``
      (the library objectives do); ``ppl.with_strategies`` keeps the guide's type, so its ``auxiliary`` too.
    * ``auto_delta``'s ELBO is the log joint ``log p(x, z)`` (a point mass has no entropy): maximizing it is MAP in the
      constrained space (no Jacobian), and its value is not a bound on ``log p(x)``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as nd
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from numpyro.distributions.util import sum_rightmost

from .._jax_internals import is_tracer
from ..core.distributions import Subsample
from ..core.interpreter import Interpretation, PPLError, RuleTable, State, control_flow_rules, run
from ..core.primitives import PlateSpec, Site, _push_plate, cost_p, factor_p, sample_p
from ..core.primitives import sample as ppl_sample
from ..core.strategy import Strategy
from ..gradients.strategies import enum
from ..transforms.tracing import GenFn, gen

__all__ = ["auto_normal", "auto_multivariate_normal", "auto_low_rank_normal", "auto_delta", "AutoGuide", "AUX"]

AUX = "_auto_latent"
_PRIOR_DRAWS = 15


class AutoGuide(GenFn):
    """A family built by ``ppl.auto_*``: a generative function called as ``guide(params)``.

    ``auxiliary``: addresses of the guide that the model does not have (the objectives leave them out when they score
    the model); empty for the mean-field families."""

    auxiliary: frozenset[str] = frozenset()


class JointAutoGuide(AutoGuide):
    """``auto_multivariate_normal`` / ``auto_low_rank_normal``: the joint draw is at the auxiliary address."""

    auxiliary = frozenset({AUX})


@dataclass(frozen=True)
class _Latent:
    addr: str
    shape: tuple[int, ...]  # of the choice in the model (loop / lane axes in front, plate dims at their lanes)
    event_ndim: int
    plates: tuple[PlateSpec, ...]
    transform: Any  # biject_to(support); None for a discrete site
    categories: int  # 0: continuous, 2 with kind "bernoulli", K for "categorical"
    kind: str
    init: Any = None  # continuous: the unconstrained initial value

    @property
    def batch_ndim(self) -> int:
        return len(self.shape) - self.event_ndim

    @property
    def full_shape(self) -> tuple[int, ...]:
        """The shape with each subsampled plate at its full size (the parameters' batch dims)."""
        s = list(self.shape)
        for p in self.plates:
            s[self.batch_ndim + p.dim] = p.size
        return tuple(s)

    @property
    def ushape(self) -> tuple[int, ...]:
        return tuple(self.transform.inverse_shape(self.full_shape))


# ---------------------------------------------------------------------------------------------- reading the model


def _proto_sample(interp: _Prototype, state: State, eqn: Any, invals: list[Any]) -> tuple[list[Any], State]:
    site = Site.of(invals, **eqn.params)
    state = state.visit(site.addr)
    key, state = state.next_key()
    d = site.dist()
    interp.seen.append(site.addr)
    if isinstance(d, Subsample):
        interp.subsample.setdefault(site.addr, (d.size, d.subsample_size))
        x = d.sample(key)
    elif site.addr in interp.observed:
        x = d.sample(key)
    else:
        info = interp.found.setdefault(site.addr, _classify(interp.who, site.addr, d, site.plates))
        if info[2] is None:
            x = d.sample(key)
        else:  # the element-wise median of prior draws, in the unconstrained space
            t = info[2]
            x = t(jnp.median(t.inv(d.sample(key, (_PRIOR_DRAWS,))), axis=0))
    x = jnp.asarray(x).astype(eqn.outvars[0].aval.dtype)
    return [x], state.record(site.addr, x)


def _ignore(interp, state, eqn, invals):
    return [], state


class _Prototype(Interpretation):
    """One run of the model drawing prior medians; records every latent site's static description."""

    name = "ppl.auto"
    records = True
    rules = RuleTable({sample_p: _proto_sample, factor_p: _ignore, cost_p: _ignore, **control_flow_rules()})

    def __init__(self, who: str, observed: frozenset[str]):
        self.who, self.observed = who, observed
        self.found: dict[str, tuple[Any, ...]] = {}
        self.subsample: dict[str, tuple[int, int]] = {}
        self.seen: list[str] = []


def _classify(who: str, addr: str, d: Any, plates: tuple[PlateSpec, ...]) -> tuple[Any, ...]:
    """``(event_ndim, plates, transform, categories, kind)`` of a latent site."""
    support = getattr(d, "support", None)
    if support is None:
        raise PPLError(
            f"{who}: site {addr!r} ({type(d).__name__}) has no NumPyro support to map: use a NumPyro "
            "distribution, or write this site of the guide by hand"
        )
    base = support
    while isinstance(base, constraints.independent):
        base = base.base_constraint
    if support.is_discrete:
        k = None
        if isinstance(base, type(constraints.boolean)):
            k, kind = 2, "bernoulli"
        elif isinstance(base, constraints.integer_interval):
            try:
                k = int(base.upper_bound) + 1 if int(base.lower_bound) == 0 else None
            except Exception:  # traced or non-scalar bounds
                k = None
            kind = "categorical"
        if k is None:
            raise PPLError(
                f"{who}: discrete site {addr!r} ({type(d).__name__}, support {support}) is not "
                "{0, 1} or {0, ..., K-1} with a fixed K: write this site of the guide by hand"
            )
        return len(d.event_shape), plates, None, k, kind
    t = biject_to(support)
    if any(map(is_tracer, jax.tree_util.tree_leaves(t))):
        raise PPLError(
            f"{who}: site {addr!r}: its support {support} depends on values inside a loop, branch or map; "
            "write this site of the guide by hand"
        )
    return len(d.event_shape), plates, t, 0, "real"


def _read(who: str, model: Any, model_args: tuple[Any, ...], observed: Any, key: Any, strategy: Strategy):
    """``(model, its latent sites in program order, its subsampled plates that hold latents)``."""
    if not isinstance(strategy, Strategy):
        raise TypeError(f"{who}: discrete_strategy={strategy!r} is not a gradient strategy (ppl.enum, ppl.reinforce)")
    model = gen(model)
    if isinstance(observed, str):
        observed = (observed,)
    obs = frozenset(observed.keys() if isinstance(observed, Mapping) else observed)
    jaxpr, _, dyn = model.staged.stage(model_args)
    interp = _Prototype(who, obs)
    key = jax.random.key(0) if key is None else key
    _, st = run(interp, jaxpr, dyn, State(key=key))
    unknown = sorted(obs - set(interp.seen))
    if unknown:
        raise PPLError(
            f"{who}: observed address(es) {unknown} are not sites of the model; its sites are "
            f"{sorted(set(interp.seen))} (a NumPyro model's obs= sites are factors: leave them out)"
        )
    latents = []
    for addr, (event_ndim, plates, t, k, kind) in interp.found.items():
        x, init = st.choices[addr], None
        if t is not None:  # (a site in a branch not taken was recorded as zeros)
            init = jnp.where(jnp.isfinite(t.inv(x)), t.inv(x), 0.0)
        lat = _Latent(addr, tuple(jnp.shape(x)), event_ndim, plates, t, k, kind, init)
        outside = math.prod(lat.shape) // math.prod(p.lanes for p in lat.plates)
        if t is None and outside > 1 and getattr(strategy, "calls", 1) != 1:
            raise PPLError(
                f"{who}: discrete site {addr!r} has shape {lat.shape}, of which {outside} elements are outside "
                f"any plate: {strategy!r} would enumerate them jointly. Pass discrete_strategy=ppl.reinforce, or "
                "declare the elements independent with ppl.plate in the model"
            )
        latents.append(lat)
    plates = {}  # subsampled plate name -> (address of its indices, size, lanes)
    for lat in latents:
        for p in lat.plates:
            if p.lanes == p.size or p.name in plates:
                continue
            hits = [
                a
                for a, s in interp.subsample.items()
                if (a == p.name or a.endswith("/" + p.name)) and s == (p.size, p.lanes)
            ]
            if len(hits) != 1:
                raise PPLError(
                    f"{who}: cannot find the indices of {p!r} around site {lat.addr!r} among the model's "
                    f"sites {sorted(interp.subsample)}"
                )
            plates[p.name] = (hits[0], p.size, p.lanes)
    return model, latents, plates


# ---------------------------------------------------------------------------------------------- building blocks


def _softplus_inv(y: float) -> float:
    return float(y + math.log(-math.expm1(-y)))


def _full_init(lat: _Latent) -> Any:
    """The unconstrained initial value at the parameters' shape (subsampled plates tiled to their full size)."""
    u = lat.init
    for p in lat.plates:
        if p.lanes != p.size:
            u = jnp.take(u, jnp.arange(p.size) % p.lanes, axis=lat.batch_ndim + p.dim)
    return u


def _discrete_params(lat: _Latent) -> dict[str, Any]:
    extra = (lat.categories,) if lat.kind == "categorical" else ()
    return {"logits": jnp.zeros(lat.full_shape + extra)}


@contextlib.contextmanager
def _plates(plates: tuple[PlateSpec, ...]):
    with contextlib.ExitStack() as stack:
        for p in plates:
            stack.enter_context(_push_plate(p))
        yield


def _local(lat: _Latent, params: Mapping[str, Any], idx: Mapping[str, Any]) -> dict[str, Any]:
    """The site's parameters at this execution's lanes (a subsampled plate's indices picked along its dim)."""
    out = dict(params)
    for p in lat.plates:
        if p.name in idx:
            out = {n: jnp.take(v, idx[p.name], axis=lat.batch_ndim + p.dim) for n, v in out.items()}
    return out


def _sample_discrete(lat: _Latent, p: Mapping[str, Any], strategy: Strategy) -> None:
    d = nd.Bernoulli(logits=p["logits"]) if lat.kind == "bernoulli" else nd.Categorical(logits=p["logits"])
    ppl_sample(lat.addr, d.to_event(lat.event_ndim), strategy)


def _guide(cls: type[AutoGuide], fn: Callable[[Any], None], who: str, model: GenFn) -> AutoGuide:
    name = who.removeprefix("ppl.")
    fn.__name__, fn.__doc__ = f"{name}({model.__name__})", f"``{name}`` family of {model.__name__}: ``guide(params)``."
    return cls(fn)


def _mean_field(who, model, model_args, observed, key, discrete_strategy, init, site_dist):
    """A family of one site per latent: ``site_dist(latent, its params)`` for the continuous ones."""
    model, latents, subsampled = _read(who, model, model_args, observed, key, discrete_strategy)
    params = {lat.addr: _discrete_params(lat) if lat.transform is None else init(lat) for lat in latents}

    def guide(params):
        idx = {n: ppl_sample(a, Subsample(size, lanes)) for n, (a, size, lanes) in subsampled.items()}
        for lat in latents:
            p = _local(lat, params[lat.addr], idx)
            with _plates(lat.plates):
                if lat.transform is None:
                    _sample_discrete(lat, p, discrete_strategy)
                else:
                    ppl_sample(lat.addr, site_dist(lat, p))

    return _guide(AutoGuide, guide, who, model), params


# ---------------------------------------------------------------------------------------------- the families


def auto_normal(
    model: Any,
    *model_args: Any,
    observed: Mapping[str, Any] | Iterable[str] = (),
    init_scale: float = 0.1,
    discrete_strategy: Strategy = enum,
    key: Any = None,
) -> tuple[AutoGuide, dict[str, Any]]:
    """Mean-field Normal in each latent's unconstrained space: ``(guide, init_params)``.

    ``model_args``: example arguments of the model (a ``ppl.from_numpyro`` model takes its params dict first, ``{}``);
    ``observed``: the data mapping of the objective (or its addresses); ``init_scale``: the initial standard deviation;
    ``discrete_strategy``: the gradient strategy of discrete latents; ``key``: for the prior draws (default key 0).
    Site ``addr``'s parameters are ``params[addr] = {"loc", "raw_scale"}`` (``sd = softplus(raw_scale)``), of the
    unconstrained shape (``biject_to(support).inverse_shape``). See the module docstring.
    """
    raw = _softplus_inv(init_scale)

    def init(lat):
        return {"loc": _full_init(lat), "raw_scale": jnp.full(lat.ushape, raw)}

    def site_dist(lat, p):
        base = nd.Normal(p["loc"], jax.nn.softplus(p["raw_scale"]))
        return nd.TransformedDistribution(base.to_event(jnp.ndim(p["loc"]) - lat.batch_ndim), lat.transform)

    return _mean_field("ppl.auto_normal", model, model_args, observed, key, discrete_strategy, init, site_dist)


def auto_delta(
    model: Any,
    *model_args: Any,
    observed: Mapping[str, Any] | Iterable[str] = (),
    discrete_strategy: Strategy = enum,
    key: Any = None,
) -> tuple[AutoGuide, dict[str, Any]]:
    """A point mass at each continuous latent (MAP): ``(guide, init_params)``, ``params[addr] = {"loc"}``.

    The site is ``Delta(biject_to(support)(loc))`` with log density 0, so ``ppl.elbo`` with this guide is the log
    joint ``log p(x, z)`` at ``z`` and ``ppl.fit`` finds the MAP estimate in the constrained space (the maximum of
    ``p(x, z)``, with no Jacobian; ``loc`` is unconstrained only so that every step stays in the support). Discrete
    latents get the factorized family of :func:`auto_normal` (not a point mass: their ELBO is then a bound).
    """

    def init(lat):
        return {"loc": _full_init(lat)}

    def site_dist(lat, p):
        return nd.Delta(lat.transform(p["loc"]), event_dim=lat.event_ndim)

    return _mean_field("ppl.auto_delta", model, model_args, observed, key, discrete_strategy, init, site_dist)


def _joint(who, make_dist, joint_params, model, model_args, observed, key, discrete_strategy):
    """A joint Normal-like family over all continuous latents, unconstrained and concatenated (see module doc)."""
    model, latents, subsampled = _read(who, model, model_args, observed, key, discrete_strategy)
    if subsampled:
        raise PPLError(
            f"{who}: the model subsamples plate(s) {sorted(subsampled)} around latent sites; a joint "
            "family has one vector over all data points. Use ppl.auto_normal, or subsample outside"
        )
    cont = [lat for lat in latents if lat.transform is not None]
    sizes = [math.prod(lat.ushape) for lat in cont]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    where = {lat.addr: (o, n) for lat, o, n in zip(cont, offsets, sizes, strict=True)}
    params = {lat.addr: _discrete_params(lat) for lat in latents if lat.transform is None}
    if cont:
        loc = jnp.concatenate([jnp.reshape(lat.init, (-1,)) for lat in cont])
        params[AUX] = {"loc": loc, **joint_params(loc.shape[0])}

    def guide(params):
        u = ppl_sample(AUX, make_dist(params[AUX])) if cont else None
        for lat in latents:
            with _plates(lat.plates):
                if lat.transform is None:
                    _sample_discrete(lat, params[lat.addr], discrete_strategy)
                    continue
                o, n = where[lat.addr]
                us = jnp.reshape(u[o : o + n], lat.ushape)
                z = lat.transform(us)
                ladj = lat.transform.log_abs_det_jacobian(us, z)
                ladj = sum_rightmost(ladj, jnp.ndim(ladj) - lat.batch_ndim)
                ppl_sample(lat.addr, nd.Delta(z, -ladj, event_dim=lat.event_ndim))  # log q(z) = log q(u) - log|J|

    return _guide(JointAutoGuide, guide, who, model), params


def auto_multivariate_normal(
    model: Any,
    *model_args: Any,
    observed: Mapping[str, Any] | Iterable[str] = (),
    init_scale: float = 0.1,
    discrete_strategy: Strategy = enum,
    key: Any = None,
) -> tuple[JointAutoGuide, dict[str, Any]]:
    """A full-rank Normal over all continuous latents, unconstrained and concatenated (in program order):
    ``(guide, init_params)`` with ``params["_auto_latent"] = {"loc": (D,), "raw_scale_tril": (D, D)}`` (the Cholesky
    factor is ``tril(raw, -1) + diag(softplus(diag(raw)))``, starting at ``init_scale · I``). The joint draw is at the
    auxiliary address ``"_auto_latent"`` (``guide.auxiliary``); each model address is a ``Delta`` of its constrained
    value with log density ``−log|det J|``. Discrete latents: as :func:`auto_normal`. Arguments as
    :func:`auto_normal`.
    """

    def make(q):
        raw = q["raw_scale_tril"]
        scale_tril = jnp.tril(raw, -1) + jnp.diag(jax.nn.softplus(jnp.diag(raw)))
        return nd.MultivariateNormal(q["loc"], scale_tril=scale_tril)

    def init(d):
        return {"raw_scale_tril": jnp.eye(d) * _softplus_inv(init_scale)}

    return _joint("ppl.auto_multivariate_normal", make, init, model, model_args, observed, key, discrete_strategy)


def auto_low_rank_normal(
    model: Any,
    *model_args: Any,
    observed: Mapping[str, Any] | Iterable[str] = (),
    rank: int | None = None,
    init_scale: float = 0.1,
    discrete_strategy: Strategy = enum,
    key: Any = None,
) -> tuple[JointAutoGuide, dict[str, Any]]:
    """:func:`auto_multivariate_normal` with covariance ``W Wᵀ + diag(softplus(raw_scale)²)``, ``W`` of shape
    ``(D, rank)`` (default ``rank``: ``round(√D)``, at least 1, as NumPyro): ``params["_auto_latent"] = {"loc",
    "cov_factor", "raw_scale"}``. ``W`` starts small and random (``0.01 · init_scale · N(0, 1)``, from ``key``)
    rather than at zero, where its expected gradient vanishes."""
    k = jax.random.key(0) if key is None else key

    def make(q):
        return nd.LowRankMultivariateNormal(q["loc"], q["cov_factor"], jax.nn.softplus(q["raw_scale"]) ** 2)

    def init(d):
        r = max(1, round(math.sqrt(d))) if rank is None else int(rank)
        w = 0.01 * init_scale * jax.random.normal(jax.random.fold_in(k, 1), (d, r))
        return {"cov_factor": w, "raw_scale": jnp.full((d,), _softplus_inv(init_scale))}

    return _joint("ppl.auto_low_rank_normal", make, init, model, model_args, observed, key, discrete_strategy)
