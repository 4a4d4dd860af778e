"""Automatic variational families in ``ppl.lang``: ``guide q = auto_normal(model)``.

The declaration builds the library's family (:mod:`ppl.objectives.auto`, :mod:`ppl.objectives.flows`) from the model
when the program is compiled, at the model's default arguments, with the addresses of the program's data (and those
named by ``observed=``) as the observed sites. The family's parameter dict ``{address: {name: array}}`` is flattened
into positional parameters of the guide named ``address_name`` (``mu_loc``, ``mu_raw_scale``, ``_auto_latent_loc``
...), in the order of the dict (program order), whose defaults are the family's initial parameters — so a library
objective trains them, and ``--set`` / ``--freeze`` / ``fit --out`` / ``sample`` / ``predict`` treat them, exactly as
the parameters of a guide written by hand.

>>> import jax, ppl.lang
>>> prog = ppl.lang.compile('''
... model m() {
...   mu ~ Normal(0.0, 1.0)
...   x ~ Normal(mu, 1.0)
... }
... guide q = auto_normal(m, init_scale=0.2)
... objective loss = elbo(m, q)
... ''', data={"x": 0.5})
>>> prog.param_names("loss")
((), ('q.mu_loc', 'q.mu_raw_scale'))
>>> sorted(prog["q"].simulate(jax.random.key(0)).choices)
['mu']
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from ..core.interpreter import PPLError
from ..objectives import auto, flows
from ..transforms.tracing import GenFn
from . import ast as A
from .builtins import LIBRARY_OBJECTIVES
from .errors import LangError, did_you_mean

_COMMON = ("observed", "discrete_strategy", "seed")

# family -> its keywords in the language (besides the model, the one positional argument)
FAMILIES: dict[str, tuple[str, ...]] = {
    "auto_normal": ("init_scale", *_COMMON),
    "auto_multivariate_normal": ("init_scale", *_COMMON),
    "auto_low_rank_normal": ("rank", "init_scale", *_COMMON),
    "auto_delta": _COMMON,
    "auto_flow": ("flow", *_COMMON, "..."),  # "...": the flowjax constructor's own keywords (flow_layers=, ...)
}
FLOWS = ("masked_autoregressive_flow", "coupling_flow", "block_neural_autoregressive_flow", "triangular_spline_flow")
_FLOW_RESERVED = {"key", "base_dist", "cond_dim", "transformer"}


def usage(family: str) -> str:
    kws = ", ".join(f"{k}=..." for k in FAMILIES[family] if k != "...")
    extra = ", and the flowjax flow's keywords (flow_layers=, nn_width=, ...)" if family == "auto_flow" else ""
    return f"guide name = {family}(model, {kws}){extra}"


@dataclass
class Family:
    """A compiled ``guide name = auto_*(model, ...)``: the guide (positional parameters), their names and initial
    values, the addresses it samples and the observed addresses it was built for."""

    family: str
    model: Any  # the model's FnInfo
    guide: GenFn
    names: tuple[str, ...]
    init: tuple[Any, ...]
    addresses: tuple[str, ...]
    observed: frozenset[str]


def _flatten(family: str, params: Mapping[str, Any]) -> tuple[list[str], list[tuple[str, str]], list[Any]]:
    names, keys, values = [], [], []
    for addr, leaves in params.items():
        for k, v in leaves.items():
            names.append(f"{addr}_{k}")
            keys.append((addr, k))
            values.append(v)
    if len(set(names)) != len(names):  # (a guard: no two (address, name) pairs of the library join alike)
        raise PPLError(f"{family}: the parameter names {names} are not unique")
    return names, keys, values


def _positional(guide: GenFn, name: str, keys: list[tuple[str, str]], init: list[Any]) -> GenFn:
    """``guide(params)`` as a generative function of the flattened parameters (missing ones: their initial value);
    of the same class, so a joint family keeps its ``auxiliary`` addresses."""
    inner = guide.fn

    def fn(*args: Any) -> Any:
        if len(args) > len(keys):
            raise TypeError(f"guide {name} takes at most {len(keys)} arguments, got {len(args)}")
        params: dict[str, dict[str, Any]] = {}
        for (addr, k), v in zip(keys, list(args) + init[len(args) :], strict=True):
            params.setdefault(addr, {})[k] = v
        return inner(params)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = guide.__doc__
    return type(guide)(fn)


class _Builder:
    """Checks the declaration's arguments (errors located at the offending name) and builds the family."""

    def __init__(self, ctx: Any, d: A.GuideAuto):
        self.ctx, self.d = ctx, d

    def error(self, message: str, pos: A.Pos | None, hint: str = "") -> LangError:
        return self.ctx.error(message, pos, hint)

    def constant(self, e: A.Expr, what: str) -> Any:
        from .codegen import FnCompiler
        from .scope import Scope

        code = FnCompiler(self.ctx, "constant", what).expr(e, Scope())
        with jax.ensure_compile_time_eval():
            return code({})

    def strategy(self, e: A.Expr) -> Any:
        from .codegen import FnCompiler
        from .scope import Scope

        return FnCompiler(self.ctx, "constant", "strategy").strategy(e, Scope())({})

    def observed(self, e: A.Expr) -> tuple[str, ...]:
        items = e.items if isinstance(e, A.TupleExpr | A.ListExpr) else (e,)
        for i in items:
            if not isinstance(i, A.Str):
                raise self.error('observed= is an address or a tuple of addresses: observed="y" or ("x", "y")', i.pos)
        return tuple(i.value for i in items)

    def number(self, e: A.Expr, name: str, kind: type) -> Any:
        v = self.constant(e, name)
        if isinstance(v, jax.Array | np.ndarray) and v.shape == ():
            v = v.item()
        if kind is int:
            ok = isinstance(v, int) and not isinstance(v, bool) and v >= (0 if name == "seed" else 1)
            want = "a non-negative integer" if name == "seed" else "a positive integer"
        else:
            ok = isinstance(v, int | float) and not isinstance(v, bool) and v > 0
            want = "a positive number"
        if not ok:
            raise self.error(f"{name}= is {want}, got {v!r}", e.pos)
        return v

    def flow_keywords(self, family: str, flow: str, given: dict[str, A.Keyword]) -> dict[str, Any]:
        try:
            import flowjax.flows as fjf
        except ImportError as e:
            raise self.error(
                f"{family} needs flowjax ({e}): pip install 'ppl[flows]' (or pip install flowjax)", self.d.call.func.pos
            ) from None
        sig = inspect.signature(getattr(fjf, flow))
        known = [p for p in sig.parameters if p not in _FLOW_RESERVED]
        out = {}
        for k, kw in given.items():
            if k not in known:
                raise self.error(
                    f"{family}: {flow} has no keyword {k!r}{did_you_mean(k, known)}",
                    kw.pos,
                    hint=f"its keywords: {', '.join(known)}",
                )
            v = self.constant(kw.value, k)
            if not isinstance(v, bool | int | float):
                raise self.error(f"{family}: {k}= is a number or true/false here, got {type(v).__name__}", kw.pos)
            out[k] = v
        return out

    def model(self, e: A.Expr, family: str) -> Any:
        if not isinstance(e, A.Name):
            raise self.error(f"the first argument of {family} is the name of a model defined above", e.pos)
        info = self.ctx.fns.get(e.id)
        if info is None:
            models = [n for n, i in self.ctx.fns.items() if i.kind == "model"]
            raise self.error(f"unknown model {e.id!r}{did_you_mean(e.id, models)}", e.pos)
        if info.kind != "model":
            article = "an" if info.kind[0] in "aeiou" else "a"
            raise self.error(f"{family} builds a family for a model; {e.id!r} is {article} {info.kind}", e.pos)
        return info

    def build(self, example_args: Callable[[Any, A.Pos], tuple[Any, ...]]) -> Family:
        d, call = self.d, self.d.call
        if not (isinstance(call, A.Call) and isinstance(call.func, A.Name)):
            raise self.error("an automatic family is declared 'guide name = auto_normal(model)'", call.pos)
        family = call.func.id
        if family not in FAMILIES:
            hint = "automatic families: " + ", ".join(FAMILIES)
            if family in LIBRARY_OBJECTIVES:
                raise self.error(
                    f"{family} is a library objective: write 'objective {d.name.id} = {family}(model, guide)'",
                    call.func.pos,
                )
            raise self.error(
                f"unknown automatic family {family!r}{did_you_mean(family, FAMILIES)}", call.func.pos, hint=hint
            )
        if len(call.args) != 1 or any(isinstance(a, A.Starred) for a in call.args):
            where = call.args[1].pos if len(call.args) > 1 else call.func.pos
            what = "the model is missing" if not call.args else "it takes the model, then keywords only"
            raise self.error(f"wrong arguments for {family}: {what}", where, hint=usage(family))
        model = self.model(call.args[0], family)
        kws: dict[str, A.Keyword] = {}
        for kw in call.keywords:
            if kw.name in kws:
                raise self.error(f"keyword {kw.name!r} given twice", kw.pos)
            allowed = FAMILIES[family]
            if kw.name not in allowed and "..." not in allowed:
                raise self.error(
                    f"wrong arguments for {family}: no keyword {kw.name!r}{did_you_mean(kw.name, allowed)}",
                    kw.pos,
                    hint=usage(family),
                )
            kws[kw.name] = kw
        explicit = self.observed(kws.pop("observed").value) if "observed" in kws else ()
        options: dict[str, Any] = {}
        if "discrete_strategy" in kws:
            options["discrete_strategy"] = self.strategy(kws.pop("discrete_strategy").value)
        if "seed" in kws:
            options["key"] = jax.random.key(self.number(kws.pop("seed").value, "seed", int))
        for name, kind in (("init_scale", float), ("rank", int)):
            if name in kws:
                options[name] = self.number(kws.pop(name).value, name, kind)
        if family == "auto_flow":
            flow = "masked_autoregressive_flow"
            if "flow" in kws:
                e = kws.pop("flow").value
                if not (isinstance(e, A.Str) and e.value in FLOWS):
                    raise self.error(f"flow= is one of {', '.join(repr(f) for f in FLOWS)}", e.pos)
                flow = e.value
            options.update(self.flow_keywords(family, flow, kws))
            import flowjax.flows as fjf

            options["flow"] = getattr(fjf, flow)
        unknown_obs = [a for a in explicit if a not in model.addresses]
        if unknown_obs:
            raise self.error(
                f"observed address(es) {unknown_obs} are not sampled by model {model.name!r} "
                f"(its addresses are {sorted(model.addresses)})",
                call.pos,
            )
        observed = frozenset(a for a in self.ctx.observed if a in model.addresses) | frozenset(explicit)
        args = example_args(model, call.args[0].pos)
        fn = flows.auto_flow if family == "auto_flow" else getattr(auto, family)
        try:
            guide, params = fn(model.value, *args, observed=sorted(observed), **options)
            names, keys, init = _flatten(family, params)
            value = _positional(guide, d.name.id, keys, init)
            addresses = tuple(jax.eval_shape(lambda k: value.simulate(k).choices, jax.random.key(0)))
        except LangError:
            raise
        except (PPLError, TypeError, ValueError, ImportError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            hint = ""
            if not observed:
                hint = (
                    f"no data was given, so every site of {model.name!r} is latent: compile with data= "
                    f'(--data), or name the observed sites with observed="..."'
                )
            raise self.error(f"{family}({model.name}): {msg}", call.pos, hint=hint) from None
        return Family(family, model, value, tuple(names), tuple(init), addresses, observed)


def compile_family(ctx: Any, d: A.GuideAuto, example_args: Callable[[Any, A.Pos], tuple[Any, ...]]) -> Family:
    """Build the family of ``guide name = auto_*(model, ...)``. ``ctx`` has ``fns``, ``observed`` and ``error``;
    ``example_args(model_info, pos)`` gives the model's default arguments."""
    return _Builder(ctx, d).build(example_args)
