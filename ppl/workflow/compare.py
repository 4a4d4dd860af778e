"""``compare_estimators``: pick a gradient strategy by measuring, on your objective and your parameters.

For each named strategy assignment (``{"name": {"address glob": strategy}}``, applied with
:func:`ppl.with_strategies`), draw ``num_samples`` independent gradient estimates — one jitted, vmapped call over the
same keys for every assignment — and report per gradient component the mean, its standard error and the variance,
and per assignment the total variance (sum over components), the time per estimate (steady state, median of a few
timed runs, compile time reported apart), the *work-normalized variance* ``total variance × time`` (lower is better:
it is the variance you get for a fixed compute budget) and a bias check against a reference assignment: the one named
by ``reference=``, else the lowest-variance assignment among those whose strategies are all unbiased (an exact one,
such as ``enum``, when given). An assignment that uses a biased strategy (``detach``, as the wake phases do) is
labelled ``biased`` and is never the reference or the best.

>>> import jax, jax.numpy as jnp, numpyro.distributions as dist, ppl
>>> from ppl.workflow import compare_estimators
>>> @ppl.expectation
... def objective(logit):
...     z = ppl.sample("z", dist.Bernoulli(logits=logit))
...     return (z - 0.3) ** 2
>>> cmp = compare_estimators(objective, (jnp.array(0.5),), key=jax.random.key(0), num_samples=2000,
...                          strategies={"reinforce": {"z": ppl.reinforce}, "enum": {"z": ppl.enum}})
>>> cmp.best, cmp["enum"]["total_variance"] == 0.0           # enumeration is exact: zero variance
('enum', True)
>>> print(cmp)                                                  # doctest: +SKIP

The result (:class:`Comparison`) prints as a table, has ``.rows`` (one flat dict per assignment, ready for
``pandas.DataFrame``), ``.to_dict()`` (with the per-component arrays), ``cmp[name]`` and ``.plot(path)``;
``plot="file.png"`` writes the figure directly (means ± 2 standard errors per component, variances on a log scale,
time per estimate).

Sharp edges:
    * The time per estimate is amortized over a vmapped batch of ``num_samples`` on the current device: the right
      measure for ``fit(..., num_particles=K)``, not the latency of one unbatched call. On a loaded machine it is
      noisy; ``repeats=`` takes the median of more runs.
    * ``max |z|`` compares each assignment's mean gradient with the reference in standard errors; above 4 it is
      flagged ``!`` — a biased estimator or too few samples for a heavy-tailed one. Equal means do not prove
      unbiasedness; a reference is only as good as its strategies (pass ``reference=`` an exact assignment).
    * All ``num_samples`` estimates are held in memory at once (``num_samples × number of parameters`` floats).
    * An assignment whose pattern matches no address is an error naming the assignment (as in ``with_strategies``).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from .._jax_internals import subjaxprs
from ..core.params import argument_names
from ..core.primitives import sample_p
from ..core.strategy import Strategy
from ..transforms.strategy_rewrite import with_strategies
from .fit import as_args, as_key

Z_FLAG = 4.0
MIN_TIMING_S = 0.2  # fast estimators get more timed runs (up to MAX_REPEATS) for a stable median
MAX_REPEATS = 200


def _finite_or_inf(x: float) -> float:
    return x if math.isfinite(x) else math.inf


# ---------------------------------------------------------------------------------------------- result


@dataclass(frozen=True)
class Comparison:
    """The result of :func:`compare_estimators` (see the module docstring)."""

    objective: str
    num_samples: int
    components: tuple[str, ...]
    rows: tuple[dict[str, Any], ...]
    stats: dict[str, dict[str, np.ndarray]]  # name -> {"mean", "stderr", "variance"} over components

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r["name"] for r in self.rows)

    @property
    def best(self) -> str:
        """The unbiased assignment with the lowest work-normalized variance (total variance × time per estimate)."""
        return min(
            _unbiased_rows(self.rows),
            key=lambda r: (_finite_or_inf(r["variance_x_time"]), _finite_or_inf(r["total_variance"])),
        )["name"]

    @property
    def reference(self) -> str:
        """The reference of the bias check (``reference=``, else the lowest-variance unbiased assignment)."""
        return next(r["name"] for r in self.rows if r["is_reference"])

    def __getitem__(self, name: str) -> dict[str, Any]:
        for r in self.rows:
            if r["name"] == name:
                return r
        raise KeyError(f"no strategy assignment named {name!r}; have {list(self.names)}")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{name: {summary..., "components": {component: {"mean", "stderr", "variance"}}}}`` (plain Python)."""
        out = {}
        for r in self.rows:
            st = self.stats[r["name"]]
            comps = {
                c: {k: float(st[k][j]) for k in ("mean", "stderr", "variance")} for j, c in enumerate(self.components)
            }
            out[r["name"]] = {**r, "components": comps}
        return out

    def __str__(self) -> str:
        return _table(self)

    def __repr__(self) -> str:
        return f"Comparison({self.objective}, {list(self.names)}, best={self.best!r})"

    def plot(self, path: str | os.PathLike[str] | None = None, max_components: int = 40) -> Any:
        """A matplotlib ``Figure`` (Agg, no global pyplot state); written as PNG to ``path`` if given."""
        return _plot(self, path, max_components)


# ---------------------------------------------------------------------------------------------- measuring


def _assignments(strategies: Mapping[str, Any]) -> dict[str, dict[str, Strategy]]:
    if not isinstance(strategies, Mapping) or not strategies:
        raise ValueError(
            "compare_estimators: strategies must be a non-empty mapping {name: {address glob: strategy}}, got "
            f"{strategies!r}"
        )
    out = {}
    for name, m in strategies.items():
        if m is None:
            m = {}
        elif isinstance(m, Strategy):
            m = {"*": m}
        if not isinstance(m, Mapping):
            raise TypeError(
                f"compare_estimators: strategies[{name!r}] must map address globs to strategies (or be one "
                f"strategy, for every address, or None for the program's own), got {m!r}"
            )
        out[str(name)] = dict(m)
    return out


def _unbiased_rows(rows):
    unbiased = [r for r in rows if not r["biased"]]
    return unbiased or list(rows)


def _biased_sites(obj: Any, args: tuple[Any, ...]) -> list[str]:
    """Addresses of the objective's sites (after the assignment) whose strategy is biased (``detach``)."""
    jaxpr, _, _ = obj.staged.stage(args)
    out = []

    def walk(j):
        for e in j.eqns:
            if e.primitive is sample_p:
                spec = e.params["strategy"]
                s = spec.unflatten([0.0] * spec.treedef.num_leaves)
                if s is not None and not s.unbiased:
                    out.append(e.params["addr"])
            for sub in subjaxprs(e):
                walk(sub)

    walk(jaxpr.jaxpr)
    return sorted(set(out))


def _calls(s: Strategy) -> str:
    return str(getattr(s, "calls", "?"))


def _describe(mapping: Mapping[str, Strategy]) -> str:
    if not mapping:
        return "as written"
    return ", ".join(f"{pat}={s!r}[{_calls(s)}]" for pat, s in mapping.items())


def _component_names(grads: tuple[Any, ...], arg_names: list[str]) -> tuple[list[str], list[np.ndarray]]:
    names, cols = [], []
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        base = arg_names[path[0].idx] + jax.tree_util.keystr(path[1:])
        g = np.asarray(g, dtype=np.float64)
        shape = g.shape[1:]
        flat = g.reshape(g.shape[0], -1)
        for j in range(flat.shape[1]):
            idx = np.unravel_index(j, shape) if shape else ()
            names.append(base + (f"[{','.join(map(str, idx))}]" if idx else ""))
            cols.append(flat[:, j])
    return names, cols


def _measure(estimator: Any, keys: jax.Array, dyn: list[Any], merge: Any, repeats: int):
    def one(k, d):
        return estimator(k, *merge(d))

    t0 = time.perf_counter()
    compiled = jax.jit(jax.vmap(one, (0, None))).lower(keys, dyn).compile()
    compile_time = time.perf_counter() - t0
    out = jax.block_until_ready(compiled(keys, dyn))  # warm-up; also the samples
    times: list[float] = []
    while len(times) < repeats or (sum(times) < MIN_TIMING_S and len(times) < MAX_REPEATS):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(keys, dyn))
        times.append(time.perf_counter() - t0)
    return out, compile_time, statistics.median(times)


def compare_estimators(
    objective: Any,
    args: Any,
    *,
    strategies: Mapping[str, Any],
    key: Any,
    num_samples: int = 1000,
    plot: str | os.PathLike[str] | None = None,
    repeats: int = 5,
    reference: str | None = None,
    hand_coded: Mapping[str, Callable[..., Any]] | None = None,
) -> Comparison:
    """Measure the gradient estimators of ``objective`` at ``args`` under several strategy assignments.

    Args:
        objective: an :class:`~ppl.Expectation`.
        args: the tuple of its positional arguments (a non-tuple is its one argument).
        strategies: ``{name: {address glob: strategy}}``; a bare strategy means ``{"*": strategy}`` and ``None`` or
            ``{}`` the strategies as written in the program.
        key: a JAX key (or an int seed); every assignment uses the same ``num_samples`` keys.
        num_samples: independent estimates per assignment (at least 2).
        plot: a path: also write the figure there (PNG).
        repeats: at least this many timed runs per assignment (more, for 0.2 s, when they are fast); the median
            is reported.
        reference: the name of the assignment the others' means are compared with (default: the lowest-variance
            assignment whose strategies are all unbiased).
        hand_coded: ``{name: estimator}``, rows beside the assignments for estimators written by hand — a plain JAX
            function ``estimator(key, *args) -> (value, grads)`` with ``grads`` shaped as ``value_and_grad_estimate``
            returns them (``None`` where no parameter is) — e.g. hand-coded VI or
            ``ppl.interop.numpyro_estimator(model, guide, TraceGraph_ELBO())``. Same keys, same table and plot,
            bias-checked against the reference like any row; never the default reference, and "best" only if
            not flagged.

    Returns:
        a :class:`Comparison`: ``print`` it for the table.
    """
    if not (isinstance(num_samples, int) and num_samples >= 2):
        raise ValueError(f"compare_estimators: num_samples must be an int >= 2, got {num_samples!r}")
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ValueError(f"compare_estimators: repeats must be a positive int, got {repeats!r}")
    assignments = _assignments(strategies)
    hand = dict(hand_coded or {})
    for name, f in hand.items():
        if name in assignments or not callable(f):
            raise ValueError(
                f"compare_estimators: hand_coded[{name!r}] must be a callable (key, *args) -> (value, grads) with a "
                "name no strategy assignment has"
            )
    if reference is not None and reference not in assignments and reference not in hand:
        raise ValueError(
            f"compare_estimators: reference={reference!r} is not a row; have {list(assignments) + list(hand)}"
        )
    args_t, bare = as_args(args)
    leaves, treedef = jax.tree_util.tree_flatten(args_t)
    dyn_idx = [i for i, x in enumerate(leaves) if isinstance(x, jax.Array | np.ndarray | np.generic)]

    def merge(dyn):
        new = list(leaves)
        for i, x in zip(dyn_idx, dyn, strict=True):
            new[i] = x
        return jax.tree_util.tree_unflatten(treedef, new)

    dyn = [leaves[i] for i in dyn_idx]
    keys = jax.random.split(as_key(key), num_samples)
    rows, stats, components = [], {}, None
    rows_to_run = [(n, m, None) for n, m in assignments.items()] + [(n, {}, f) for n, f in hand.items()]
    for name, mapping, estimator in rows_to_run:
        obj = with_strategies(objective, mapping) if mapping else objective
        try:
            est = obj.value_and_grad_estimate if estimator is None else estimator
            (values, grads), compile_time, batch_time = _measure(est, keys, dyn, merge, repeats)
        except Exception as e:
            what = f"strategy assignment {name!r}: {_describe(mapping)}" if estimator is None else f"row {name!r}"
            e.add_note(f"(in compare_estimators, {what})")
            raise
        grads = (grads,) if len(args_t) == 1 else grads
        names, cols = _component_names(grads, argument_names(objective, len(args_t)))
        if not cols:
            raise ValueError("compare_estimators: the objective has no floating-point argument to differentiate")
        if components is not None and tuple(names) != components:
            raise ValueError(
                f"compare_estimators: hand-coded row {name!r} gives gradient components {names}, the objective "
                f"{list(components)}: return grads in the structure value_and_grad_estimate returns"
            )
        components = components or tuple(names)
        g = np.stack(cols, axis=1)
        var = g.var(axis=0, ddof=1)
        v = np.asarray(values, dtype=np.float64)
        per = batch_time / num_samples
        stats[name] = {"mean": g.mean(axis=0), "stderr": np.sqrt(var / num_samples), "variance": var}
        biased_at = _biased_sites(obj, tuple(args_t)) if estimator is None else []
        rows.append(
            {
                "name": name,
                "hand_coded": estimator is not None,
                "biased": bool(biased_at),
                "biased_sites": biased_at,
                "strategies": {p: repr(s) for p, s in mapping.items()},
                "calls": {p: _calls(s) for p, s in mapping.items()},
                "total_variance": float(var.sum()),
                "time_per_estimate": per,
                "compile_time": compile_time,
                "variance_x_time": float(var.sum()) * per,
                "value_mean": float(v.mean()),
                "value_stderr": float(v.std(ddof=1) / math.sqrt(num_samples)),
                "num_nonfinite": int(np.sum(~np.isfinite(g).all(axis=1) | ~np.isfinite(v))),
                "num_samples": num_samples,
            }
        )
    candidates = [r for r in _unbiased_rows(rows) if not r["hand_coded"]] or _unbiased_rows(rows)
    ref = reference or min(candidates, key=lambda r: _finite_or_inf(r["total_variance"]))["name"]
    for r in rows:
        r["is_reference"] = r["name"] == ref
        r["max_abs_z"] = _max_z(stats[r["name"]], stats[ref]) if r["name"] != ref else 0.0
        if r["hand_coded"] and r["max_abs_z"] > Z_FLAG:  # a flagged hand-coded row is not a candidate for best
            r["biased"] = True
    out = Comparison(getattr(objective, "__name__", "objective"), num_samples, components, tuple(rows), stats)
    if plot is not None:
        out.plot(plot)
    return out


def _max_z(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    diff = np.abs(a["mean"] - b["mean"])
    se = np.sqrt(a["stderr"] ** 2 + b["stderr"] ** 2)
    tiny = 1e-6 * (1.0 + np.abs(b["mean"]))  # float32 rounding between two zero-variance estimators
    z = np.where(se > 0, diff / np.where(se > 0, se, 1.0), np.where(diff <= tiny, 0.0, np.inf))
    return float(np.nanmax(z)) if z.size else 0.0


# ---------------------------------------------------------------------------------------------- printing


def _fmt_time(t: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if t >= scale or unit == "ns":
            return f"{t / scale:.3g} {unit}"
    return f"{t:.3g} s"


def _grid(header: list[str], body: list[list[str]], left: int = 1) -> list[str]:
    widths = [max(len(h), *(len(r[j]) for r in body)) for j, h in enumerate(header)]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if j < left else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    return [line(header), "  ".join("-" * w for w in widths), *map(line, body)]


def _table(c: Comparison, max_components: int = 12) -> str:
    best, ref = c.best, c.reference
    head = [
        f"Gradient estimators of {c.objective}: {c.num_samples} estimates per assignment "
        f"(same keys; time amortized over the vmapped batch)",
        "",
    ]
    body = []
    for r in c.rows:
        z = "ref" if r["name"] == ref else f"{r['max_abs_z']:.2g}" + (" !" if r["max_abs_z"] > Z_FLAG else "")
        desc = ", ".join(f"{p}={s}[{r['calls'][p]}]" for p, s in r["strategies"].items()) or "as written"
        desc = "hand-coded" if r["hand_coded"] else desc
        label = " (biased)" if r["biased"] and not r["hand_coded"] else " (flagged)" if r["biased"] else ""
        body.append(
            [
                r["name"] + (" *" if r["name"] == best else "") + label,
                desc,
                f"{r['total_variance']:.4g}",
                _fmt_time(r["time_per_estimate"]),
                f"{r['variance_x_time']:.3g}",
                f"{r['compile_time']:.2f} s",
                z,
            ]
        )
    cols = ["assignment", "strategies [calls]", "total var", "time/est", "var×time", "compile", "max |z|"]
    lines = head + _grid(cols, body, left=2)
    lines.append(
        f"* best: lowest variance × time among unbiased assignments.  max |z|: mean vs {ref!r} in standard errors "
        f"(! above {Z_FLAG:g}).  (biased): uses a biased strategy (detach).  (flagged): a hand-coded row whose mean "
        "disagrees with the reference."
    )
    bad = [r["name"] for r in c.rows if r["num_nonfinite"]]
    if bad:
        lines.append(f"non-finite estimates in: {bad} (their statistics are NaN)")
    comps = c.components[:max_components]
    lines += ["", "Per component: mean ± stderr (variance)", ""]
    body = [
        [comp]
        + [
            f"{c.stats[n]['mean'][j]:.4g} ± {c.stats[n]['stderr'][j]:.2g} ({c.stats[n]['variance'][j]:.3g})"
            for n in c.names
        ]
        for j, comp in enumerate(comps)
    ]
    lines += _grid(["component", *c.names], body)
    if len(c.components) > len(comps):
        lines.append(f"... {len(c.components) - len(comps)} more components (see .to_dict() or .plot())")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- plotting


def _plot(c: Comparison, path: Any, max_components: int) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    comps = c.components[:max_components]
    m, n = len(comps), len(c.names)
    x = np.arange(m)
    width = 0.8 / n
    group = m * (0.6 + 0.25 * n) + 1.0
    fig = Figure(figsize=(min(2 * group + 0.6 * n + 2.5, 30), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_m, ax_v, ax_t = fig.subplots(1, 3, width_ratios=[group, group, 0.6 * n + 1.0])
    for i, name in enumerate(c.names):
        st = c.stats[name]
        off = x + (i - (n - 1) / 2) * width
        ax_m.errorbar(off, st["mean"][:m], yerr=2 * st["stderr"][:m], fmt="o", capsize=3, color=f"C{i}", label=name)
        var = st["variance"][:m]
        ax_v.bar(off, np.where(var > 0, var, np.nan), width=width, color=f"C{i}", label=name)
        for xi, vi in zip(off, var, strict=True):
            if vi == 0:
                ax_v.annotate("0", (xi, 0.01), xycoords=("data", "axes fraction"), ha="center", color=f"C{i}")
    for ax, title in ((ax_m, "mean gradient ± 2 stderr"), (ax_v, "variance (log scale; 0 = exact)")):
        ax.set_xticks(x, comps, rotation=45 if m > 3 else 0, ha="right" if m > 3 else "center")
        ax.set_xlim(-0.5, m - 0.5)
        ax.set_title(title, fontsize="medium")
    ax_m.axhline(0.0, color="0.8", lw=0.8, zorder=0)
    if np.any(np.nan_to_num(np.concatenate([c.stats[nm]["variance"][:m] for nm in c.names])) > 0):
        ax_v.set_yscale("log")
    ax_m.legend(fontsize="small")
    times = np.array([r["time_per_estimate"] for r in c.rows])
    unit, scale = next(((u, f) for u, f in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)) if times.max() >= f), ("ns", 1e-9))
    ax_t.bar(range(n), times / scale, color=[f"C{i}" for i in range(n)])
    ax_t.set_xticks(range(n), c.names, rotation=45 if n > 2 else 0, ha="right" if n > 2 else "center")
    ax_t.set_title(f"time / estimate ({unit})", fontsize="medium")
    if len(c.components) > m:
        fig.text(0.01, 0.01, f"first {m} of {len(c.components)} components", fontsize="small")
    fig.suptitle(f"{c.objective}: {c.num_samples} gradient estimates per strategy assignment")
    if path is not None:
        fig.savefig(os.fspath(path), dpi=110)
    return fig
