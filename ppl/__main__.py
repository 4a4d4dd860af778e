"""The ``ppl`` command line: train an objective of a ``ppl.lang`` program.

    python -m ppl fit FILE.ppl --data DATA.json --steps N [--objective NAME] [--lr 0.05] [--seed 0]
                               [--particles K] [--set fn.param=VALUE ...] [--freeze NAME ...] [--max-skipped F]
                               [--json] [--out FIT.npz] [--plot LOSS.png]
    python -m ppl sample FILE.ppl --fit FIT.npz [--samples 1000] [--seed 0] [--json]
    python -m ppl predict FILE.ppl --fit FIT.npz [--data DATA.json] [--samples 1000] [--seed 0] [--json]
    python -m ppl check FILE.ppl

``fit`` compiles ``FILE.ppl`` with the observed data of ``DATA.json`` (a JSON object: address -> value), takes the
objective named by ``--objective`` (or the only one), starts from the defaults of the parameters (``guide q(a = 0.0)``;
``--set q.a=0.5`` overrides, the value is JSON), trains it with ``ppl.fit`` (Adam) and prints the objective's value
and the trained parameters. ``--freeze q`` or ``--freeze q.a`` keeps parameters fixed; ``--out`` saves the fit
(``FitResult.save``), ``--plot`` draws the objective per step. ``sample`` draws the fitted guide (the posterior) and
``predict`` the model given those draws (the posterior predictive, next to ``--data``), each printing a table of
mean, sd and 5 / 50 / 95 % quantiles (``ppl.predictive``, ``ppl.summary``). ``check`` parses and compiles
the file and lists what it defines. Errors in the program are reported as ``file:line:column`` with the source
line, never as a traceback; the exit status is 1 for an error in the program or data, 2 for bad usage.

>>> import os, tempfile
>>> d = tempfile.mkdtemp()
>>> path = os.path.join(d, "m.ppl")
>>> _ = open(path, "w").write("model m() {\\n  x ~ Normal(0.0, 1.0)\\n}\\n")
>>> main(["check", path])
m.ppl: model m()
0
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from ppl.workflow import cli_support


def train(
    objective: Any,
    args: tuple[Any, ...],
    *,
    steps: int,
    key: Any,
    lr: float = 0.05,
    num_particles: int = 1,
    progress: bool = False,
    trainable: Any = None,
) -> Any:
    """Maximize ``objective`` from ``args`` with Adam (``ppl.fit``): the :class:`~ppl.FitResult`."""
    import optax

    from ppl.workflow import fit

    return fit(
        objective,
        args,
        optimizer=optax.adam(lr),
        num_steps=steps,
        key=key,
        num_particles=num_particles,
        progress=progress,
        trainable=trainable,
    )


def _located(e: Exception, prog: Any) -> Exception:
    """An error raised after compilation (a strategy that does not apply, nothing to train...) as a ``LangError``
    located at the first sampling of the address it names (or at the file, if it names none found)."""
    from ppl.lang.ast import Pos
    from ppl.lang.errors import LangCompileError

    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    pos = None
    for name in re.findall(r"'([A-Za-z_][\w/]*)'", message):
        base = name.split("/")[-1]
        for i, line in enumerate(prog.source.splitlines(), 1):
            m = re.search(rf"\b{re.escape(base)}\s*(\[[^\]]*\])?\s*~", line)
            if m:
                pos = Pos(i, m.start() + 1, i, m.start() + 1 + len(base))
                break
        if pos is not None:
            break
    return LangCompileError(f"{type(e).__name__}: {message}", pos, prog.source, prog.filename)


# ---------------------------------------------------------------------------------------------- commands


class UsageError(Exception):
    pass


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}:{e.lineno}:{e.colno}: {what} is not valid JSON: {e.msg}") from None


def _overrides(items: Sequence[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or "." not in name:
            raise UsageError(f"--set {item!r}: write --set function.parameter=VALUE (VALUE in JSON)")
        try:
            out[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            raise UsageError(f"--set {item!r}: {value!r} is not a JSON value") from None
    return out


def _opaque(x: Any) -> str | None:
    """A one-line description of a parameter that is not an array (the flow of an ``auto_flow`` family), or ``None``."""
    if isinstance(x, int | float | bool | np.ndarray | np.generic | list | tuple | dict) or hasattr(x, "__array__"):
        return None
    import jax

    arrays = [v for v in jax.tree_util.tree_leaves(x) if hasattr(v, "shape") and hasattr(v, "dtype")]
    size = sum(int(np.prod(np.shape(v), dtype=np.int64)) for v in arrays)
    return f"<{type(x).__name__}: {len(arrays)} arrays, {size} numbers>"


def _format(x: Any) -> str:
    if _opaque(x) is not None:
        return _opaque(x)
    a = np.asarray(x)
    if a.ndim == 0:
        return f"{a.item():.6g}" if a.dtype.kind in "fc" else str(a.item())
    return np.array2string(a, precision=4, separator=", ", threshold=20)


def _is_float_array(x: Any) -> bool:
    return hasattr(x, "dtype") and np.dtype(x.dtype).kind in "fc"


def _jsonable(x: Any) -> Any:
    if _opaque(x) is not None:
        return _opaque(x)
    a = np.asarray(x)
    return a.item() if a.ndim == 0 else a.tolist()


def cmd_fit(ns: argparse.Namespace) -> int:
    import jax

    import ppl.lang
    from ppl.lang.errors import LangError, did_you_mean

    data = _read_json(ns.data, "the data") if ns.data else {}
    if not isinstance(data, dict):
        raise UsageError(f"{ns.data}: the data is a JSON object mapping each observed address to its value")
    prog = ppl.lang.load(ns.file, data)
    objectives = prog.objectives
    if ns.objective is None:
        if len(objectives) != 1:
            raise UsageError(
                f"{ns.file} defines {len(objectives)} objectives {objectives}: choose one with --objective NAME"
            )
        name = objectives[0]
    elif ns.objective not in objectives:
        raise UsageError(f"{ns.file} has no objective {ns.objective!r}; its objectives are {objectives}")
    else:
        name = ns.objective
    cli_support.check_writable(ns.out, "--out")
    cli_support.check_writable(ns.plot, "--plot")
    args = prog.init_args(name, _overrides(ns.set))
    names = prog.param_names(name)
    trainable = None
    if ns.freeze:
        frozen = set(ns.freeze)
        known = set(jax.tree_util.tree_leaves(names))
        known |= {n.split(".")[0] for n in known}
        for f in sorted(frozen - known):
            raise UsageError(
                f"--freeze {f!r}: objective {name!r} has no parameter or function {f!r}"
                f"{did_you_mean(f, known)}; its parameters are {sorted(n for n in known if '.' in n)}"
            )
        trainable = jax.tree_util.tree_map(lambda n: not (n in frozen or n.split(".")[0] in frozen), names)
    try:
        res = train(
            prog[name],
            args,
            steps=ns.steps,
            key=jax.random.key(ns.seed),
            lr=ns.lr,
            num_particles=ns.particles,
            progress=ns.progress,
            trainable=trainable,
        )
    except (ValueError, TypeError) as e:  # StrategyError, PPLError, fit's own checks: located, no traceback
        if isinstance(e, LangError):
            raise
        raise _located(e, prog) from None
    trained, values, skipped = res.args, np.asarray(res.values), int(res.num_skipped)
    flat_names = jax.tree_util.tree_leaves(names)
    flat_values = jax.tree_util.tree_structure(names).flatten_up_to(trained)
    flat_train = jax.tree_util.tree_structure(names).flatten_up_to(
        trainable if trainable is not None else jax.tree_util.tree_map(lambda _: True, names)
    )
    fixed = [
        not (t and any(_is_float_array(x) for x in jax.tree_util.tree_leaves(v)))
        for v, t in zip(jax.tree_util.tree_structure(names).flatten_up_to(args), flat_train, strict=True)
    ]
    window = max(1, min(len(values) // 10, 100))
    first = float(np.nanmean(values[:window])) if len(values) else float("nan")
    last = float(np.nanmean(values[-window:])) if len(values) else float("nan")
    too_many = ns.steps > 0 and skipped > ns.max_skipped * ns.steps
    if ns.json:
        print(
            json.dumps(
                {
                    "objective": name,
                    "steps": ns.steps,
                    "value_first": first,
                    "value_last": last,
                    "skipped": skipped,
                    "params": {n: _jsonable(v) for n, v in zip(flat_names, flat_values, strict=True)},
                    "fixed": [n for n, f in zip(flat_names, fixed, strict=True) if f],
                }
            )
        )
    else:
        print(
            f"{os.path.basename(ns.file)}: objective {name!r}, {ns.steps} steps of Adam (lr {ns.lr:g}), "
            f"{ns.particles} particle(s), data {sorted(data)}"
        )
        print(f"objective (mean of {window} steps): first {first:.6g}, last {last:.6g}")
        print(f"skipped {skipped} of {ns.steps} steps as non-finite")
        print("parameters:")
        width = max((len(n) for n in flat_names), default=0)
        for n, v, f in zip(flat_names, flat_values, fixed, strict=True):
            print(f"  {n:<{width}} = {_format(v)}{'  (fixed)' if f else ''}")
    if ns.plot:
        cli_support.plot_values(values, np.asarray(res.skipped), ns.plot, f"{os.path.basename(ns.file)}: {name}")
    if ns.out:
        meta = cli_support.cli_metadata(
            ns.file, name, names, ns.data, observed=sorted(data), seed=ns.seed, lr=ns.lr, particles=ns.particles
        )
        try:
            res.save(ns.out, metadata=meta)
        except OSError as e:
            raise UsageError(f"--out {ns.out}: cannot write the fit: {e.strerror}") from None
        if not ns.json:
            print(f"saved the fit to {ns.out}")
    if too_many:
        print(
            f"{ns.file}: error: {skipped} of {ns.steps} steps ({skipped / ns.steps:.0%}) were skipped as "
            f"non-finite (more than --max-skipped {ns.max_skipped:g}): the result is not trustworthy; lower --lr or "
            "check the program",
            file=sys.stderr,
        )
        return 1
    return 0


def _draw(ns: argparse.Namespace, predict: bool) -> int:
    """``sample`` (the fitted guide's draws) and ``predict`` (the model's draws given them)."""
    import jax

    import ppl.lang
    from ppl.lang.errors import LangError
    from ppl.workflow.predictive import predictive, summary

    if ns.samples < 1:
        raise UsageError(f"--samples must be at least 1, got {ns.samples}")
    data = _read_json(ns.data, "the data") if predict and ns.data else None
    # automatic families are built with the fit's observed addresses (saved by fit --out), else --data's
    fit_obs = cli_support.fit_observed(ns.fit)
    if fit_obs is None:
        fit_obs = sorted(data) if isinstance(data, dict) else []
    prog = ppl.lang.load(ns.file, observed=fit_obs)
    warn = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    ft = cli_support.load_fitted(prog, ns.file, ns.fit, ns.objective, ns.model, ns.guide, warn)
    observed = {}
    if data is not None:
        observed = cli_support.check_observed(data, prog, ft.model_name, ns.data)
    try:
        pred = predictive(
            ft.model if predict else None,
            ft.guide,
            ft.guide_args,
            model_args=ft.model_args,
            num_samples=ns.samples,
            key=jax.random.key(ns.seed),
        )
    except (ValueError, TypeError) as e:  # PPLError: located by main; others located here
        if isinstance(e, LangError):
            raise
        raise _located(e, prog) from None
    group = "posterior_predictive" if predict else "posterior"
    table = summary(pred[group])
    if observed:
        table = cli_support.with_observed(table, pred[group], observed)
    head = {"objective": ft.objective, "model": ft.model_name, "guide": ft.guide_name, "samples": ns.samples}
    if ns.json:
        out = {**head, "seed": ns.seed, "summary": table.to_dict()}
        if not predict:
            out["posterior"] = pred["posterior"]
        print(json.dumps(cli_support.jsonable(out)))
        return 0
    base = os.path.basename(ns.file)
    draws = (
        f"{ns.samples} draws of guide {ft.guide_name!r} (fit {ns.fit}: objective {ft.objective!r}, {ft.steps} steps)"
    )
    if predict:
        print(f"{base}: posterior predictive of model {ft.model_name!r} given {draws}")
    else:
        print(f"{base}: posterior, {draws}")
    print(table)
    return 0


def cmd_sample(ns: argparse.Namespace) -> int:
    return _draw(ns, predict=False)


def cmd_predict(ns: argparse.Namespace) -> int:
    return _draw(ns, predict=True)


def cmd_check(ns: argparse.Namespace) -> int:
    import ppl.lang

    prog = ppl.lang.load(ns.file)
    for name, info in prog.infos.items():
        params = ", ".join(p.name for p in info.params)
        what = f"{info.kind} {name}({params})" if info.lib is None else f"objective {name} = {info.lib[0]}(...)"
        if getattr(info, "auto", None) is not None:  # an automatic family: its parameters depend on the data
            what = f"guide {name} = {info.auto.family}({info.auto.model.name})"
        print(f"{os.path.basename(ns.file)}: {what}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ppl", description="Programmable variational inference on JAX.")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="train an objective of a .ppl program")
    f.add_argument("file", help="the program (.ppl)")
    f.add_argument("--data", help="observed data: a JSON object, address -> value")
    f.add_argument("--steps", type=int, default=1000, help="optimization steps (default 1000)")
    f.add_argument("--objective", help="which objective to train (default: the only one)")
    f.add_argument("--lr", type=float, default=0.05, help="Adam learning rate (default 0.05)")
    f.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    f.add_argument("--particles", type=int, default=1, help="gradient estimates averaged per step (default 1)")
    f.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FN.PARAM=VALUE",
        help="initial value of a parameter (JSON); repeatable",
    )
    f.add_argument(
        "--freeze",
        action="append",
        default=[],
        metavar="NAME",
        help="keep a function's parameters (or one FN.PARAM) fixed; repeatable",
    )
    f.add_argument(
        "--max-skipped",
        type=float,
        default=0.1,
        metavar="FRACTION",
        help="fail (exit 1) when more than this fraction of steps is skipped as non-finite (default 0.1)",
    )
    f.add_argument("--json", action="store_true", help="print the result as one JSON object")
    f.add_argument("--progress", action="store_true", help="show a progress bar")
    f.add_argument("--out", metavar="FIT.npz", help="save the fit (FitResult.save) for sample / predict")
    f.add_argument("--plot", metavar="FILE.png", help="plot the objective estimate per step (matplotlib)")
    f.set_defaults(run=cmd_fit)
    for cmd, run, what in (
        ("sample", cmd_sample, "draw the fitted guide (the posterior) and summarize the draws"),
        ("predict", cmd_predict, "draw the model given the fitted guide's draws (the posterior predictive)"),
    ):
        d = sub.add_parser(cmd, help=what)
        d.add_argument("file", help="the program (.ppl)")
        d.add_argument("--fit", required=True, metavar="FIT.npz", help="a fit saved by: python -m ppl fit --out")
        if cmd == "predict":
            d.add_argument("--data", help="observed data (JSON object), shown next to the predictive summary")
        d.add_argument("--samples", type=int, default=1000, help="number of draws (default 1000)")
        d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        d.add_argument("--objective", help="the objective of the fit (default: the one saved with it)")
        d.add_argument("--model", help="the model (default: the objective's, or the only one)")
        d.add_argument("--guide", help="the guide (default: the objective's, or the only one)")
        d.add_argument("--json", action="store_true", help="print the result as one JSON object")
        d.set_defaults(run=run)
    c = sub.add_parser("check", help="parse and compile a .ppl program, list its definitions")
    c.add_argument("file")
    c.set_defaults(run=cmd_check)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    from ppl.core.interpreter import PPLError

    ns = _parser().parse_args(argv)
    try:
        return ns.run(ns)
    except (UsageError, cli_support.CliError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    except PPLError as e:  # LangError included: located in the program, no traceback
        print(str(e), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
