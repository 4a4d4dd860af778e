"""After a fit: posterior and posterior predictive draws (``predictive``), a summary table (``summary``) and an ArviZ
export (``to_arviz``).

``predictive(model, guide, guide_args, model_args=..., num_samples=S, key=k)`` is NumPyro's
``Predictive(model, guide=guide, params=..., num_samples=S)(k, ...)`` for a fitted family: it draws ``S`` samples of
the guide (``guide.simulate``), runs the model on each with those latents constrained (``model.generate``: the
model's other sites — observations, latents the guide does not have — are drawn), all in one jitted, vmapped call, and
returns constrained values (ppl's choices are always in the support; there is no unconstrained space):

``{"posterior": {address: (S, ...)}, "posterior_predictive": {address: (S, ...)}}``.

>>> import jax, jax.numpy as jnp, numpyro.distributions as dist, ppl
>>> @ppl.gen
... def model():
...     mu = ppl.sample("mu", dist.Normal(0.0, 1.0))
...     ppl.sample("x", dist.Normal(mu, 1.0).expand((3,)))
>>> @ppl.gen
... def guide(m):
...     ppl.sample("mu", dist.Normal(m, 0.5))
>>> pred = ppl.predictive(model, guide, (jnp.asarray(1.0),), num_samples=1000, key=jax.random.key(0))
>>> pred["posterior"]["mu"].shape, pred["posterior_predictive"]["x"].shape
((1000,), (1000, 3))
>>> s = ppl.summary(pred["posterior"])    # print(s): a table of mean, sd, 5 / 50 / 95 % quantiles
>>> sorted(s["mu"]), bool(abs(s["mu"]["mean"] - 1.0) < 0.1)
(['5%', '50%', '95%', 'mean', 'sd'], True)

Keys: sample ``i`` uses ``jax.random.split(key, S)[i]``, split in two (guide, model): the same key gives the same
draws, whether or not the model is run (``model=None`` returns the posterior only), in this process or after
``FitResult.load``.

Sharp edges:
    * A guide address the model does not sample is an error, except the guide's auxiliary choices: those of
      ``guide.auxiliary`` (addresses or globs) and the unselected choices of a ``ppl.marginal`` family, which are
      left out of the posterior.
    * Everything is held in memory at once: ``S`` times the size of one model trace.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from .fit import as_args, as_key

__all__ = ["predictive", "summary", "Summary", "to_arviz"]

GROUPS = ("posterior", "posterior_predictive", "observed_data")


# ---------------------------------------------------------------------------------------------- predictive


def _is_dynamic(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic)


def _matches(addr: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(addr, p) for p in patterns)


def _guide_sampler(guide: Any) -> tuple[Any, Any]:
    """``(simulate(key, *args) -> choices, keep(address) -> bool)`` of a family."""
    aux = tuple(getattr(guide, "auxiliary", None) or ())
    if hasattr(guide, "simulate"):
        return (lambda k, *a: guide.simulate(k, *a).choices), (lambda addr: not _matches(addr, aux))
    select = getattr(guide, "select", None)
    inner = getattr(guide, "q", None)
    if select is not None and hasattr(inner, "simulate"):  # ppl.marginal: the selected choices
        return (lambda k, *a: inner.simulate(k, *a).choices), (
            lambda addr: _matches(addr, select) and not _matches(addr, aux)
        )
    raise TypeError(f"ppl.predictive: the guide {guide!r} has no simulate (a @ppl.gen function or ppl.marginal)")


def predictive(
    model: Any,
    guide: Any = None,
    guide_args: Any = (),
    *,
    model_args: Any = (),
    num_samples: int | None = None,
    key: Any,
    posterior_samples: Mapping[str, Any] | None = None,
    return_sites: Sequence[str] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Posterior draws of a fitted family and the model's posterior predictive draws given them.

    Args:
        model: a ``@ppl.gen`` model (``None``: the posterior only, no model run).
        guide: the fitted family (a ``@ppl.gen`` function or ``ppl.marginal``); ``None`` with ``posterior_samples``.
        guide_args: the guide's arguments, a tuple (a non-tuple is its one argument) — e.g. ``res.args[1]`` after
            ``ppl.fit(ppl.elbo(model, guide, ...), (model_args, guide_args), ...)``.
        model_args: the model's arguments (tuple; a non-tuple is its one argument), e.g. ``res.args[0]``.
        num_samples: ``S``; with ``posterior_samples`` it is their leading size (and may be omitted).
        key: a JAX key or an int seed.
        posterior_samples: instead of a guide, given latents ``{address: (S, ...)}`` (e.g. from MCMC).
        return_sites: optional address globs; only those addresses are returned (in both groups).

    Returns:
        ``{"posterior": {addr: (S, ...)}, "posterior_predictive": {addr: (S, ...)}}`` of NumPy arrays: the guide's
        choices (auxiliary ones left out) and the model's other choices. ``to_arviz`` and ``summary`` read it.
    """
    if (guide is None) == (posterior_samples is None):
        raise ValueError("ppl.predictive: give exactly one of guide and posterior_samples")
    key = as_key(key)
    if posterior_samples is not None:
        post = {a: np.asarray(v) for a, v in posterior_samples.items()}
        sizes = {a: v.shape[0] if v.ndim else None for a, v in post.items()}
        if not post or len(set(sizes.values())) != 1 or None in sizes.values():
            raise ValueError(f"ppl.predictive: posterior_samples need one common leading (sample) size, got {sizes}")
        n = next(iter(sizes.values()))
        if num_samples is not None and num_samples != n:
            raise ValueError(f"ppl.predictive: num_samples={num_samples} but posterior_samples hold {n} draws")
        num_samples = n
    if not (isinstance(num_samples, int) and num_samples >= 1):
        raise ValueError(f"ppl.predictive: num_samples must be a positive int, got {num_samples!r}")
    m_args, g_args = as_args(model_args)[0], as_args(guide_args)[0]
    draw, keep = _guide_sampler(guide) if guide is not None else (None, None)

    # Array leaves of the arguments are inputs of the jitted call; other leaves (ints, functions) are static.
    leaves, treedef = jax.tree_util.tree_flatten((m_args, g_args))
    dyn = [i for i, x in enumerate(leaves) if _is_dynamic(x)]

    def run(keys, dyn_leaves, given):
        full = list(leaves)
        for i, x in zip(dyn, dyn_leaves, strict=True):
            full[i] = x
        ma, ga = jax.tree_util.tree_unflatten(treedef, full)

        def one(k, z):
            k_guide, k_model = jax.random.split(k)
            if z is None:
                z = {a: v for a, v in draw(k_guide, *ga).items() if keep(a)}
            if model is None:
                return z, {}
            tr, _ = model.generate(k_model, z, *ma)
            return z, {a: v for a, v in tr.choices.items() if a not in z}

        return jax.vmap(one)(keys, given)

    keys = jax.random.split(key, num_samples)
    z, x = jax.jit(run)(keys, [leaves[i] for i in dyn], posterior_samples and post)
    out = {"posterior": z, "posterior_predictive": x}
    sel = (lambda a: True) if return_sites is None else (lambda a: _matches(a, list(return_sites)))  # noqa: E731
    return {g: {a: np.asarray(v) for a, v in d.items() if sel(a)} for g, d in out.items()}


# ---------------------------------------------------------------------------------------------- summary


def _samples_of(samples: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if samples and set(samples) <= set(GROUPS) and all(isinstance(v, Mapping) for v in samples.values()):
        samples = samples.get("posterior", {})  # a predictive result: its posterior
    return {a: np.asarray(v) for a, v in samples.items()}


def _component(addr: str, idx: tuple[int, ...]) -> str:
    return addr if not idx else f"{addr}[{', '.join(map(str, idx))}]"  # ArviZ's names: x[0, 1]


class Summary:
    """Per-component statistics of draws (``ppl.summary``): ``rows`` (dicts with ``name``, ``mean``, ``sd``,
    ``5%``, ``50%``, ``95%``), ``to_dict()`` (``{name: {stat: value}}``), and ``str()`` a table. ``extra``: more
    columns the rows hold (the command line adds ``observed``)."""

    def __init__(
        self, rows: list[dict[str, Any]], quantiles: tuple[float, ...], max_rows: int = 40, extra: tuple[str, ...] = ()
    ):
        self.rows, self.quantiles, self.max_rows, self.extra = rows, quantiles, max_rows, tuple(extra)

    @property
    def stats(self) -> list[str]:
        return ["mean", "sd", *(f"{100 * q:g}%" for q in self.quantiles), *self.extra]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {r["name"]: {s: r.get(s) for s in self.stats} for r in self.rows}

    def __getitem__(self, name: str) -> dict[str, float]:
        return self.to_dict()[name]

    def __str__(self) -> str:
        rows = self.rows[: self.max_rows]
        table = [["name", *self.stats]] + [[r["name"], *(_cell(r.get(s)) for s in self.stats)] for r in rows]
        widths = [max(len(row[j]) for row in table) for j in range(len(table[0]))]

        def line(cells):
            pairs = enumerate(zip(cells, widths, strict=True))
            return "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in pairs)

        out = [line(table[0]), line(["-" * w for w in widths])] + [line(r) for r in table[1:]]
        if len(self.rows) > len(rows):
            out.append(f"... {len(self.rows) - len(rows)} more components (all of them in .to_dict())")
        return "\n".join(s.rstrip() for s in out)

    def __repr__(self) -> str:
        return f"Summary({len(self.rows)} components)"


def _cell(x: Any) -> str:
    return "" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


def summary(
    samples: Mapping[str, Any], *, quantiles: Sequence[float] = (0.05, 0.5, 0.95), max_rows: int = 40
) -> Summary:
    """Mean, standard deviation (``ddof=1``) and quantiles of each component of ``{address: (S, ...)}`` draws
    (the leading axis is the sample axis). A ``predictive`` result summarizes its ``"posterior"`` group; pass
    ``pred["posterior_predictive"]`` for the other one. ``max_rows`` bounds the printed table only."""
    qs = tuple(float(q) for q in quantiles)
    rows = []
    for addr, v in _samples_of(samples).items():
        if v.ndim == 0:
            raise ValueError(f"ppl.summary: {addr!r} has no sample axis (shape ())")
        flat = v.reshape(v.shape[0], -1).astype(np.float64)
        mean, sd = flat.mean(0), flat.std(0, ddof=1) if v.shape[0] > 1 else np.full(flat.shape[1], np.nan)
        qv = np.quantile(flat, qs, axis=0)
        for j, idx in enumerate(np.ndindex(*v.shape[1:])):
            row = {"name": _component(addr, idx), "mean": float(mean[j]), "sd": float(sd[j])}
            row.update({f"{100 * q:g}%": float(qv[i, j]) for i, q in enumerate(qs)})
            rows.append(row)
    return Summary(rows, qs, max_rows)


# ---------------------------------------------------------------------------------------------- ArviZ


def _arviz() -> Any:
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # ArviZ 0.2x announces its refactor on import
            import arviz
    except ImportError as e:
        raise ImportError(
            "ppl.to_arviz needs ArviZ, which is not installed: pip install 'ppl[arviz]' (or pip install arviz)"
        ) from e
    return arviz


def to_arviz(pred: Mapping[str, Any], observed_data: Mapping[str, Any] | None = None) -> Any:
    """An ``arviz.InferenceData`` of a ``predictive`` result: groups ``posterior`` and ``posterior_predictive``
    (one chain: dims ``(chain=1, draw=S, ...)``) and ``observed_data`` (given here, or a group of ``pred``). A plain
    ``{address: (S, ...)}`` mapping is taken as the posterior. Needs ArviZ (``pip install 'ppl[arviz]'``)."""
    az = _arviz()
    if pred and set(pred) <= set(GROUPS) and all(isinstance(v, Mapping) for v in pred.values()):
        groups = {g: dict(v) for g, v in pred.items()}
    else:
        groups = {"posterior": dict(pred)}
    if observed_data is not None:
        groups["observed_data"] = dict(observed_data)
    data = {}
    for g, d in groups.items():
        if not d:
            continue
        data[g] = {a: np.asarray(v) if g == "observed_data" else np.asarray(v)[None] for a, v in d.items()}
    if int(az.__version__.split(".")[0]) >= 1:  # ArviZ 1.x: one mapping of groups, a DataTree
        return az.from_dict(data)
    return az.from_dict(**data)
