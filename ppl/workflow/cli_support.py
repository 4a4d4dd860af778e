"""Helpers of the command line (``python -m ppl``): saving a fit of a ``.ppl`` program with what the ``sample`` and
``predict`` commands need to find its model and guide again, the loss-curve plot, and the result tables.

A fit saved by ``python -m ppl fit FILE.ppl --out FIT`` is a ``FitResult.save`` file whose metadata holds
``{"cli": {"program", "sha256", "objective", "param_names", "data", "observed", "seed", "lr", "particles"}}``.
``sample`` and ``predict`` recompile the program (its automatic families, ``guide q = auto_normal(model)``, with the
saved ``observed`` addresses: those of the fit's data), check that the saved arguments have the structure and shapes
of the objective's (a changed program text is only a warning), and take:

* for a library objective (``objective loss = elbo(model, guide)``) its model and guide, with
  ``(model_args, guide_args)`` from the fit;
* for a hand-written objective, its parameters named ``model_args`` and ``guide_args`` (as in
  ``examples/lang/coin.ppl``), with the model and guide given by ``--model`` / ``--guide`` or the only ones of the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np


class CliError(Exception):
    """A usage error of the command line (printed as ``error: ...``, exit status 2)."""


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def cli_metadata(file: str, objective: str, names: Any, data: str | None, **settings: Any) -> dict[str, Any]:
    """The ``metadata`` of a fit saved by ``python -m ppl fit --out``."""
    return {
        "cli": {
            "program": os.path.abspath(file),
            "sha256": sha256(file),
            "objective": objective,
            "param_names": names,
            "data": None if data is None else os.path.abspath(data),
            **settings,
        }
    }


def check_writable(path: str | None, flag: str) -> None:
    """Fail before training when the output file of ``flag`` cannot be written (its folder is missing)."""
    if path is not None and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise CliError(f"{flag} {path}: the folder {os.path.dirname(os.path.abspath(path))} does not exist")


def plot_values(values: np.ndarray, skipped: np.ndarray, path: str, title: str) -> None:
    """The objective estimate at each step and its running mean, written as an image (Agg; no pyplot state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise CliError("--plot needs matplotlib: pip install matplotlib (or pip install 'ppl[examples]')") from None
    v = np.where(np.asarray(skipped, bool) | ~np.isfinite(values), np.nan, np.asarray(values, np.float64))
    steps = np.arange(1, len(v) + 1)
    fig = Figure(figsize=(7, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(steps, v, lw=0.6, color="C0", alpha=0.4, label="estimate")
    w = max(1, len(v) // 50)
    if len(v) >= w:
        finite = np.isfinite(v)
        num = np.convolve(np.where(finite, v, 0.0), np.ones(w), "valid")
        den = np.convolve(finite.astype(float), np.ones(w), "valid")
        with np.errstate(invalid="ignore", divide="ignore"):
            ax.plot(steps[w - 1 :], num / den, lw=1.5, color="C1", label=f"running mean ({w} steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("objective (maximized)")
    ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="small")
    try:
        fig.savefig(os.fspath(path), dpi=110)
    except (OSError, ValueError) as e:
        raise CliError(f"--plot {path}: cannot write the image: {e}") from None


# ---------------------------------------------------------------------------------------------- loading a fit


@dataclass
class Fitted:
    """A saved fit matched to its program: what ``sample`` and ``predict`` run."""

    objective: str
    model_name: str
    guide_name: str
    model: Any
    guide: Any
    model_args: tuple[Any, ...]
    guide_args: tuple[Any, ...]
    steps: int


def _read_meta(path: str) -> dict[str, Any]:
    from .results import read_metadata

    if not os.path.exists(path):
        raise CliError(f"cannot read the fit {path}: no such file (write one with: python -m ppl fit ... --out FIT)")
    try:
        return read_metadata(path)
    except Exception as e:  # not an .npz, not a fit, a newer format...: one line, no traceback
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CliError(f"cannot read the fit {path}: {msg}") from None


def fit_observed(path: str) -> list[str] | None:
    """The observed addresses a fit saved by ``python -m ppl fit --out`` was trained with (``None``: not saved, or
    not a readable fit — :func:`load_fitted` reports that)."""
    try:
        observed = ((_read_meta(path).get("metadata") or {}).get("cli") or {}).get("observed")
    except CliError:
        return None
    return list(observed) if isinstance(observed, list) else None


def _pick(prog: Any, kind: str, given: str | None, file: str) -> str:
    names = [n for n, i in prog.infos.items() if i.kind == kind]
    if given is not None:
        if given not in names:
            raise CliError(f"{file} has no {kind} {given!r}; its {kind}s are {names}")
        return given
    if len(names) != 1:
        raise CliError(f"{file} defines {len(names)} {kind}s {names}: choose one with --{kind} NAME")
    return names[0]


def load_fitted(
    prog: Any, file: str, fit_path: str, objective: str | None, model: str | None, guide: str | None, warn: Any
) -> Fitted:
    """The saved fit ``fit_path`` of the program ``prog`` (compiled from ``file``), its model, guide and arguments."""
    import jax

    from .results import load

    meta = _read_meta(fit_path)
    cli = (meta.get("metadata") or {}).get("cli") or {}
    if cli.get("sha256") and cli["sha256"] != sha256(file):
        if cli.get("program") == os.path.abspath(file):
            warn(f"warning: {file} has changed since {fit_path} was saved")
        else:
            warn(f"warning: {fit_path} was saved from another program, {cli.get('program')}")
    name = objective or cli.get("objective")
    objectives = prog.objectives
    if name is None:
        if len(objectives) != 1:
            raise CliError(f"{fit_path} does not name its objective: choose one of {objectives} with --objective NAME")
        name = objectives[0]
    if name not in objectives:
        raise CliError(f"{fit_path} was saved for objective {name!r}, which {file} does not define ({objectives})")
    template = prog.init_args(name)
    try:  # arguments JSON cannot describe (the flow of an auto_flow family) are rebuilt on the program's own
        with warnings.catch_warnings():  # (its optimizer state cannot be rebuilt: not needed to draw)
            warnings.simplefilter("ignore", UserWarning)
            res = load(fit_path, like=template if (meta.get("args") or {}).get("layout") is None else None)
    except ValueError:  # not the structure of the program's arguments
        res = None
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CliError(f"cannot read the fit {fit_path}: {msg}") from None
    same = (
        res is not None
        and jax.tree_util.tree_structure(template) == jax.tree_util.tree_structure(res.args)
        and all(
            np.shape(a) == np.shape(b)
            for a, b in zip(jax.tree_util.tree_leaves(template), jax.tree_util.tree_leaves(res.args), strict=True)
        )
    )
    if not same:
        why = "saved for another program or another version of it?"
        if getattr(prog, "families", None) and "observed" not in cli:
            why += (
                f"; its automatic families {prog.families} were built with observed addresses {sorted(prog.observed)}"
                ": the fit does not record its own (python -m ppl fit --out does), predict --data gives them"
            )
        raise CliError(
            f"{fit_path} does not match the parameters {prog.param_names(name)} of objective {name!r} in {file} ({why})"
        )
    info = prog.infos[name]
    if info.lib is not None:
        m_name, g_name = info.lib[1].name, info.lib[2].name
        if (model or m_name) != m_name or (guide or g_name) != g_name:
            raise CliError(f"objective {name!r} is {info.lib[0]}({m_name}, {g_name}): --model / --guide differ")
        model_args, guide_args = res.args
    else:
        params = [p.name for p in info.params]
        if "guide_args" not in params:
            raise CliError(
                f"objective {name!r} is written by hand with parameters {params}: sample / predict need a library "
                "objective (objective NAME = elbo(model, guide)) or parameters named guide_args (and model_args)"
            )
        m_name, g_name = _pick(prog, "model", model, file), _pick(prog, "guide", guide, file)
        guide_args = res.args[params.index("guide_args")]
        model_args = res.args[params.index("model_args")] if "model_args" in params else ()
    as_tuple = lambda a: a if isinstance(a, tuple) else (a,)  # noqa: E731
    return Fitted(
        name, m_name, g_name, prog[m_name], prog[g_name], as_tuple(model_args), as_tuple(guide_args), res.steps
    )


def check_observed(data: Any, prog: Any, model_name: str, data_path: str) -> dict[str, np.ndarray]:
    if not isinstance(data, dict):
        raise CliError(f"{data_path}: the data is a JSON object mapping each observed address to its value")
    addrs = prog.infos[model_name].addresses
    unknown = sorted(set(data) - set(addrs))
    if unknown:
        raise CliError(f"{data_path}: address(es) {unknown} are not sampled by model {model_name!r} ({sorted(addrs)})")
    return {a: np.asarray(v) for a, v in data.items()}


def with_observed(table: Any, draws: dict[str, np.ndarray], observed: dict[str, np.ndarray]) -> Any:
    """``table`` (a ``Summary`` of ``draws``) with an ``observed`` column from the data, where shapes agree."""
    from .predictive import Summary, _component

    obs = {}
    for a, v in observed.items():
        if a in draws and v.shape == draws[a].shape[1:]:
            for idx in np.ndindex(*v.shape):
                x = v[idx].item()
                obs[_component(a, idx)] = float(x) if isinstance(x, float) else x
    rows = [{**r, "observed": obs.get(r["name"])} for r in table.rows]
    return Summary(rows, table.quantiles, table.max_rows, extra=("observed",))


def jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=lambda a: np.asarray(a).tolist()))
