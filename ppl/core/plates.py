"""Plates: conditional independence declared in a program, and what estimators may conclude from it.

``with ppl.plate("data", N):`` declares that the random choices sampled inside are ``N`` conditionally independent
*lanes* along one batch dimension (NumPyro's ``plate``): each site's distribution is broadcast to have ``N`` along the
plate's dimension (``-1`` for the outermost plate, ``-2`` for the next, ... or ``dim=``), and its choice is one array
with that dimension. Nothing about sampling or scoring changes — ``simulate``, ``assess`` and ``generate`` give the
same values as without the plate — except with ``subsample_size=B``: the block runs on ``B`` indices drawn without
replacement (a random choice at the plate's address, returned by ``with``), and every log density in it is scaled by
``N / B``, an unbiased estimate of the full sum.

What a plate buys is in the estimators (:mod:`ppl.transforms.adev`): a plated site's score multiplies only its own
lane's terms (per-point Rao-Blackwellization, as NumPyro's ``TraceGraph_ELBO``), and ``enum``/``mvd``/
``leave_one_out`` at a plated site cost ``N·|support|`` (the rest of the program is run once per value with every
lane set to it, and each lane keeps its own terms: parallel enumeration, as ``TraceEnum_ELBO``). ``ppl.elbo`` gives
each site's log density to the estimator as a per-lane term; an objective of your own does the same with
``ppl.add_cost`` inside a plate (see :func:`plate`).

>>> import jax, jax.numpy as jnp, numpyro.distributions as dist, ppl
>>> @ppl.gen
... def model(x):
...     mu = ppl.sample("mu", dist.Normal(0.0, 10.0))
...     with ppl.plate("data", x.shape[0]):
...         ppl.sample("x", dist.Normal(mu, 1.0))
>>> model.simulate(jax.random.key(0), jnp.zeros(5)).choices["x"].shape
(5,)

Sharp edges:
    * The independence is the user's declaration, as in NumPyro: code that mixes lanes (``jnp.roll`` of a plated
      choice, a lane's term reading another lane's choice) inside the plate is not detected. What *is* checked:
      a plated choice that reaches something outside its plate (a site or cost outside it, the objective's
      returned value) loses the per-lane conditioning (its score then weights everything, still unbiased), and a
      multi-call strategy there is an error naming the site and where its value goes.
    * The per-lane estimators apply to plated sites at the top level of an expectation (as ``ppl.elbo`` stages
      them); inside a ``lax.scan`` body, a ``cond`` branch or a map lane a plated site is an ordinary batched site.
"""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp

from .._jax_internals import Jaxpr, Literal, subjaxprs
from .distributions import Subsample
from .primitives import (
    PlateSpec,
    PPLError,
    _prefix,
    _push_plate,
    active_plates,
    bind_sample,
    contains_ppl,
    cost_p,
    factor_p,
    sample_p,
)

__all__ = ["plate", "PlateSpec", "site_plate", "site_plates", "plated_sites", "check_plate_sizes"]


class plate:  # noqa: N801  (a context manager named like NumPyro's)
    """``with ppl.plate(name, size, subsample_size=None, dim=None) as idx:`` — conditionally independent lanes.

    ``idx`` is ``arange(size)``, or with ``subsample_size=B`` the ``B`` indices drawn for this execution (a random
    choice at address ``name``: a guide that has the same plate provides them to the model, as NumPyro's
    autoguides do; a model-only subsampled plate draws its own in ``ppl.elbo``). Index your data with it.

    In an objective of your own, ``ppl.add_cost(c)`` inside the plate with ``c`` of one value per lane adds
    per-lane terms (conditioned per lane); ``ppl.elbo`` does this for every site.

    >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, ppl
    >>> @ppl.gen
    ... def m(x):
    ...     with ppl.plate("data", 6, subsample_size=2) as idx:
    ...         ppl.sample("x", dist.Normal(0.0, 1.0))      # batch (2,), log density scaled by 6/2
    >>> tr = m.simulate(jax.random.key(0), jnp.zeros(6))
    >>> tr.choices["data"].shape, tr.choices["x"].shape
    ((2,), (2,))
    """

    def __init__(self, name: str, size: int, subsample_size: int | None = None, dim: int | None = None):
        if not isinstance(name, str) or not name:
            raise ValueError(f"ppl.plate: the name must be a non-empty string, got {name!r}")
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"ppl.plate({name!r}): size must be a positive Python int (static), got {size!r}")
        if subsample_size is not None and (not isinstance(subsample_size, int) or not 1 <= subsample_size <= size):
            raise ValueError(
                f"ppl.plate({name!r}): subsample_size must be a Python int in 1..{size}, got {subsample_size!r}"
            )
        if dim is not None and (not isinstance(dim, int) or dim >= 0):
            raise ValueError(f"ppl.plate({name!r}): dim must be a negative int (counted from the right), got {dim!r}")
        self.name, self.size, self.subsample_size, self.dim = name, size, subsample_size, dim
        self._ctx: Any = None

    def __enter__(self) -> Any:
        outer = active_plates()
        for p in outer:
            if p.name == self.name:
                raise PPLError(f"ppl.plate({self.name!r}) inside {p!r}: nested plates need distinct names")
        dim = self.dim if self.dim is not None else min((p.dim for p in outer), default=0) - 1
        if any(p.dim == dim for p in outer):
            raise PPLError(f"ppl.plate({self.name!r}, dim={dim}): an enclosing plate already uses dim {dim}")
        lanes = self.size if self.subsample_size is None else self.subsample_size
        if lanes == self.size:
            idx = jnp.arange(self.size)
        else:  # the indices: one shared random choice, outside the plate
            idx = bind_sample(_prefix() + self.name, Subsample(self.size, lanes), None, ())
        self._ctx = _push_plate(PlateSpec(self.name, self.size, lanes, dim))
        self._ctx.__enter__()
        return idx

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


# ---------------------------------------------------------------------------------------------- static analysis


def site_plate(eqn: Any) -> PlateSpec | None:
    """The plate a ``sample_p`` / ``cost_p`` / ``factor_p`` equation conditions on (a site: its outermost)."""
    if eqn.primitive is sample_p:
        plates = eqn.params.get("plates", ())
        return plates[0] if plates else None
    return eqn.params.get("plate")


@functools.lru_cache(maxsize=4096)
def plated_sites(jaxpr: Jaxpr) -> dict[Any, str | None]:
    """For each plated ``sample_p`` at the top level of ``jaxpr``: ``None`` if everything its value reaches stays
    inside its plate (sites and costs of the same plate), else where it leaves (for messages).

    Also checks that every plate name has one size throughout the program (nested jaxprs included).
    """
    check_plate_sizes(jaxpr)
    out: dict[Any, str | None] = {}
    for j, e in enumerate(jaxpr.eqns):
        if e.primitive is sample_p and (p := site_plate(e)) is not None:
            out[e] = _escape(jaxpr, j, p)
    return out


def _escape(jaxpr: Jaxpr, j: int, p: PlateSpec) -> str | None:
    tainted = {jaxpr.eqns[j].outvars[0]}
    for e in jaxpr.eqns[j + 1 :]:
        if not any(not isinstance(v, Literal) and v in tainted for v in e.invars):
            continue
        if e.primitive in (sample_p, cost_p, factor_p):
            q = site_plate(e)
            if q is None or q.name != p.name:
                what = f"site {e.params['addr']!r}" if e.primitive is sample_p else f"a {e.primitive.name}"
                return f"{what} outside the plate"
            tainted.update(e.outvars)
        elif any(map(contains_ppl, subjaxprs(e))):
            return f"a {e.primitive.name} block with random choices"
        else:
            tainted.update(e.outvars)
    if any(not isinstance(v, Literal) and v in tainted for v in jaxpr.outvars):
        return "the returned value"
    return None


@functools.lru_cache(maxsize=4096)
def site_plates(jaxpr: Jaxpr) -> dict[str, tuple[PlateSpec, ...]]:
    """Address -> the plates of every plated site in ``jaxpr`` (nested jaxprs included), for messages."""
    out: dict[str, tuple[PlateSpec, ...]] = {}
    for e in jaxpr.eqns:
        if e.primitive is sample_p and e.params.get("plates"):
            out[e.params["addr"]] = e.params["plates"]
        for sub in subjaxprs(e):
            out.update(site_plates(sub))
    return out


@functools.lru_cache(maxsize=4096)
def check_plate_sizes(jaxpr: Jaxpr) -> None:
    """Every plate name has one size throughout the program (nested jaxprs included); else an error naming both
    uses."""
    seen: dict[str, tuple[PlateSpec, str]] = {}

    def walk(j: Jaxpr) -> None:
        for e in j.eqns:
            if e.primitive in (sample_p, cost_p, factor_p):
                specs = e.params.get("plates", ()) if e.primitive is sample_p else (e.params.get("plate"),)
                where = f"site {e.params['addr']!r}" if e.primitive is sample_p else f"a {e.primitive.name}"
                for s in specs:
                    if s is None:
                        continue
                    old, at = seen.setdefault(s.name, (s, where))
                    if (old.size, old.lanes) != (s.size, s.lanes):
                        raise PPLError(
                            f"plate name {s.name!r} is used with two sizes: {old!r} at {at} and {s!r} at {where}; "
                            "one name is one plate — rename one of them"
                        )
            for sub in subjaxprs(e):
                walk(sub)

    walk(jaxpr)
