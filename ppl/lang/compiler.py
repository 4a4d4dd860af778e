"""Compile a parsed ``ppl.lang`` program into ``GenFn``s and ``Expectation``s.

Declarations are compiled in order (a function is used after it is defined); ``strategies`` blocks may appear
anywhere and apply to their target as soon as it is defined (``ppl.with_strategies``), so every later use sees them.
Observed data are not part of the program: they are given by address when the program is compiled
(``compile(source, data=...)``) or later (``Program.with_data``), and objectives see them as ``data``.

>>> import jax, ppl.lang
>>> prog = ppl.lang.compile('''
... model coin(n = 3) {
...   p ~ Beta(2.0, 2.0)
...   for i in range(n) { flip[i] ~ Bernoulli(p) }
... }
... guide coin_q(a = 0.0, b = 0.0) {
...   p ~ Beta(exp(a), exp(b))
... }
... objective my_elbo(q_args = (0.0, 0.0)) {
...   z, log_q = sim(coin_q, *q_args)
...   return density(coin, z | data) - log_q
... }
... ''', data={"flip": [1, 1, 0]})
>>> sorted(prog)
['coin', 'coin_q', 'my_elbo']
>>> prog["coin"].simulate(jax.random.key(0)).choices["flip"].shape
(3,)
>>> g = prog["my_elbo"].grad_estimate(jax.random.key(0), prog.init_args("my_elbo")[0])
>>> len(g)
2
"""

from __future__ import annotations

import fnmatch
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..core.interpreter import PPLError
from ..transforms.adev import Expectation
from ..transforms.strategy_rewrite import with_strategies
from ..transforms.tracing import GenFn
from . import ast as A
from .builtins import LIBRARY_FUNCTIONS, LIBRARY_OBJECTIVES, library_signature
from .codegen import FnCompiler
from .errors import LangCompileError, LangError, did_you_mean
from .families import FAMILIES, Family, compile_family
from .parser import parse
from .scope import Scope, Var

# ---------------------------------------------------------------------------------------------- compiled functions


@dataclass
class FnInfo:
    """What the compiler knows about one declaration."""

    name: str
    kind: str  # "model" | "guide" | "objective"
    decl: A.Decl
    params: tuple[A.Param, ...] = ()
    defaults: dict[str, Callable[[], Any]] = field(default_factory=dict)
    addresses: dict[str, A.Pos] = field(default_factory=dict)
    value: Any = None  # the GenFn (models and guides)
    build: Callable[[Mapping[str, Any]], Expectation] | None = None  # objectives: data -> Expectation
    lib: tuple[str, FnInfo, FnInfo] | None = None  # library objectives: (name, model, guide)
    auto: Family | None = None  # automatic families (guide name = auto_normal(model))

    @property
    def signature(self) -> inspect.Signature:
        P = inspect.Parameter
        return inspect.Signature(
            [P(p.name, P.POSITIONAL_OR_KEYWORD, default=(P.empty if p.default is None else None)) for p in self.params]
        )


class _Ctx:
    def __init__(self, prog: A.Program, observed: frozenset[str] = frozenset()):
        self.source, self.filename = prog.source, prog.filename
        self.fns: dict[str, FnInfo] = {}
        self.observed = observed  # the addresses automatic families treat as observed

    def error(self, message: str, pos: A.Pos | None, hint: str = "") -> LangError:
        return LangCompileError(message, pos, self.source, self.filename, hint)


def _constant(ctx: _Ctx, e: A.Expr, what: str) -> Callable[[], Any]:
    """A default value / strategy argument: an expression of constants, evaluated once when first needed."""
    code = FnCompiler(ctx, "constant", what).expr(e, Scope())
    cache: list[Any] = []

    def get() -> Any:
        if not cache:
            with jax.ensure_compile_time_eval():  # a concrete value even when first needed inside a trace
                cache.append(code({}))
        return cache[0]

    return get


def _params(ctx: _Ctx, params: tuple[A.Param, ...], owner: str) -> dict[str, Callable[[], Any]]:
    seen: set[str] = set()
    defaults = {}
    for p in params:
        if p.name in seen:
            raise ctx.error(f"duplicate parameter {p.name!r} of {owner}", p.pos)
        if p.name in ctx.fns or p.name == "data":
            raise ctx.error(
                f"parameter {p.name!r} of {owner} shadows "
                f"{'the observed data' if p.name == 'data' else 'a ' + ctx.fns[p.name].kind}",
                p.pos,
            )
        seen.add(p.name)
        if p.default is not None:
            defaults[p.name] = _constant(ctx, p.default, f"default of {p.name}")
        elif defaults:
            raise ctx.error(f"parameter {p.name!r} of {owner} needs a default: it follows a parameter with one", p.pos)
    return defaults


def _bind_args(info: FnInfo, args: tuple[Any, ...]) -> dict[str, Any]:
    names = [p.name for p in info.params]
    required = sum(1 for p in info.params if p.default is None)
    if not required <= len(args) <= len(names):
        want = f"{required}" if required == len(names) else f"{required} to {len(names)}"
        raise TypeError(f"{info.kind} {info.name}({', '.join(names)}) takes {want} argument(s), got {len(args)}")
    env = dict(zip(names, args, strict=False))
    for n in names[len(args) :]:
        env[n] = info.defaults[n]()
    return env


def _compile_genfn(ctx: _Ctx, d: A.GenFnDef) -> FnInfo:
    info = FnInfo(d.name.id, d.kind, d, d.params)
    info.defaults = _params(ctx, d.params, f"{d.kind} {d.name.id}")
    fc = FnCompiler(ctx, d.kind, d.name.id)
    scope = Scope()
    for p in d.params:
        scope.vars[p.name] = Var("param", p.pos)
    run, ret = fc.body(d.body, scope, needs_return=False)
    info.addresses = fc.addresses

    def fn(*args: Any) -> Any:
        env = _bind_args(info, args)
        run(env)
        return ret(env) if ret is not None else None

    fn.__name__ = fn.__qualname__ = d.name.id
    info.value = GenFn(fn)
    return info


def _compile_objective(ctx: _Ctx, d: A.ObjectiveDef) -> FnInfo:
    info = FnInfo(d.name.id, "objective", d, d.params)
    info.defaults = _params(ctx, d.params, f"objective {d.name.id}")
    fc = FnCompiler(ctx, "objective", d.name.id)
    scope = Scope()
    scope.vars["data"] = Var("data", d.pos)
    for p in d.params:
        scope.vars[p.name] = Var("param", p.pos)
    run, ret = fc.body(d.body, scope, needs_return=True)
    info.addresses = fc.addresses

    def build(data: Mapping[str, Any]) -> Expectation:
        def fn(*args: Any) -> Any:
            env = _bind_args(info, args)
            env["data"] = data
            run(env)
            return ret(env)

        fn.__name__ = fn.__qualname__ = d.name.id
        return Expectation(fn)

    info.build = build
    return info


def _compile_family(ctx: _Ctx, d: A.GuideAuto) -> FnInfo:
    """``guide name = auto_normal(model, ...)``: the family's flattened parameters are the guide's parameters, their
    defaults its initial values (see :mod:`ppl.lang.families`)."""

    def example_args(model: FnInfo, pos: A.Pos) -> tuple[Any, ...]:
        out = []
        for p in model.params:
            if p.name not in model.defaults:
                raise ctx.error(
                    f"the family is built at the model's default arguments: parameter {p.name!r} of model "
                    f"{model.name!r} needs a default",
                    pos,
                )
            out.append(jax.tree_util.tree_map(_trainable, model.defaults[p.name]()))
        return tuple(out)

    fam = compile_family(ctx, d, example_args)
    params = tuple(A.Param(n, d.call, d.call.pos) for n in fam.names)
    info = FnInfo(d.name.id, "guide", d, params, value=fam.guide, auto=fam)
    info.defaults = {n: (lambda v=v: v) for n, v in zip(fam.names, fam.init, strict=True)}
    info.addresses = {a: d.call.pos for a in fam.addresses}
    return info


def _compile_library(ctx: _Ctx, d: A.ObjectiveLib) -> FnInfo:
    call = d.call
    if not (isinstance(call, A.Call) and isinstance(call.func, A.Name)):
        raise ctx.error(
            "an objective is 'objective name = elbo(model, guide)' (a library objective) or "
            "'objective name(params) { ... }'",
            call.pos,
        )
    lib = call.func.id
    if lib in FAMILIES:
        raise ctx.error(f"{lib} builds a guide, not an objective: write 'guide name = {lib}(model)'", call.func.pos)
    if lib not in LIBRARY_OBJECTIVES:
        raise ctx.error(
            f"unknown library objective {lib!r}{did_you_mean(lib, LIBRARY_OBJECTIVES)}",
            call.func.pos,
            hint="library objectives: " + ", ".join(sorted(LIBRARY_OBJECTIVES)),
        )
    fc = FnCompiler(ctx, "objective", d.name.id)
    sig = library_signature(lib)
    fc.check_arity(call, sig, lib)
    if any(isinstance(a, A.Starred) for a in call.args):
        raise ctx.error("*args is not allowed here", call.pos)
    bound = sig.bind(*call.args, **{k.name: k.value for k in call.keywords}).arguments
    fns = []
    for role in ("model", "guide"):
        e = bound[role]
        info = ctx.fns.get(e.id) if isinstance(e, A.Name) else None
        if info is None or info.kind == "objective":
            raise ctx.error(f"the {role} of {lib} is the name of a model or guide defined above", e.pos)
        fns.append(info)
    extras = [_constant(ctx, bound[n], f"{lib} {n}") for n in LIBRARY_OBJECTIVES[lib]]
    model, guide = fns
    info = FnInfo(d.name.id, "objective", d, lib=(lib, model, guide))
    info.addresses = {**model.addresses, **guide.addresses}

    def build(data: Mapping[str, Any]) -> Expectation:
        obj = LIBRARY_FUNCTIONS[lib](model.value, guide.value, data, *[x() for x in extras])
        inner = obj.fn

        def located(*args: Any) -> Any:  # errors while staging (e.g. data of the wrong shape) point here
            try:
                return inner(*args)
            except LangError:
                raise
            except PPLError as e:
                raise ctx.error(f"{lib}: {str(e).splitlines()[0]}", call.pos) from None

        located.__name__ = located.__qualname__ = d.name.id
        return Expectation(located)

    info.build = build
    return info


def _strategies(ctx: _Ctx, info: FnInfo, blocks: list[A.StrategiesDef]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    seen: dict[str, A.Pos] = {}
    for block in blocks:
        for entry in block.entries:
            if entry.pattern in seen:
                raise ctx.error(
                    f"strategy for {entry.pattern!r} given twice (first at {seen[entry.pattern]})", entry.pos
                )
            seen[entry.pattern] = entry.pos
            if not any(fnmatch.fnmatchcase(a, entry.pattern) for a in info.addresses):
                addrs = sorted(info.addresses)
                raise ctx.error(
                    f"strategy for unknown address {entry.pattern!r}{did_you_mean(entry.pattern, addrs)}: "
                    f"{info.kind} {info.name!r} samples {addrs}",
                    entry.pos,
                )
            code = FnCompiler(ctx, "constant", "strategy").strategy(entry.strategy, Scope())
            table[entry.pattern] = code({})
    return table


# ---------------------------------------------------------------------------------------------- programs


def _as_data(data: Mapping[str, Any] | None) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise TypeError(f"data must be a mapping from address to value, got {type(data).__name__}")
    return {k: jnp.asarray(v) if not isinstance(v, jax.Array) else v for k, v in data.items()}


def _trainable(v: Any) -> Any:
    """Float leaves become arrays (dynamic, differentiable); ints and bools stay Python values (static)."""
    if isinstance(v, float) or (isinstance(v, np.ndarray | jax.Array) and jnp.issubdtype(v.dtype, jnp.floating)):
        return jnp.asarray(v, jnp.result_type(float))
    return v


class Program(dict):
    """A compiled program: a ``dict`` from name to ``GenFn`` (models, guides) and ``Expectation`` (objectives).

    ``with_data(data)`` gives the same program with objectives bound to other observed data; ``init_args(name)``
    the default arguments of an objective (from the parameters' defaults), ready for ``grad_estimate``/``ppl.fit``.
    """

    def __init__(
        self,
        infos: dict[str, FnInfo],
        data: Mapping[str, Any] | None,
        source: str,
        filename: str,
        *,
        syntax: A.Program | None = None,
        observed: frozenset[str] = frozenset(),
    ):
        super().__init__()
        self.infos, self.source, self.filename = infos, source, filename
        self.syntax, self.observed = syntax, observed  # to rebuild automatic families for other data
        self.data = _as_data(data)
        for name, info in infos.items():
            if info.lib is not None:
                self._check_data(info)
            self[name] = info.value if info.kind != "objective" else info.build(self.data)

    def _check_data(self, info: FnInfo) -> None:
        model = info.lib[1]
        unknown = sorted(set(self.data) - set(model.addresses))
        if unknown:
            raise LangCompileError(
                f"observed address(es) {unknown} of the data are not sampled by {model.kind} "
                f"{model.name!r} (its addresses are {sorted(model.addresses)})",
                info.decl.call.pos,
                self.source,
                self.filename,
            )

    def with_data(self, data: Mapping[str, Any] | None) -> Program:
        """The same program with objectives bound to ``data``; automatic families are rebuilt if the observed
        addresses change."""
        if self.syntax is not None and self.families and set(_as_data(data)) != set(self.data):
            return compile_program(self.syntax, data, observed=self.observed)
        return Program(self.infos, data, self.source, self.filename, syntax=self.syntax, observed=self.observed)

    def with_observed(self, observed: Any) -> Program:
        """The program recompiled with automatic families that also treat the addresses ``observed`` as observed
        (for drawing from a fit without its data: ``python -m ppl sample``)."""
        if self.syntax is None or not self.families:
            return self
        return compile_program(self.syntax, self.data, observed=frozenset(observed) | self.observed)

    @property
    def families(self) -> list[str]:
        """The names of the automatic families (``guide name = auto_normal(model)``)."""
        return [n for n, i in self.infos.items() if i.auto is not None]

    @property
    def objectives(self) -> list[str]:
        return [n for n, i in self.infos.items() if i.kind == "objective"]

    def _defaults(self, info: FnInfo, overrides: Mapping[str, Any]) -> tuple[Any, ...]:
        out = []
        for p in info.params:
            key = f"{info.name}.{p.name}"
            if key in overrides:
                v = overrides[key]
                if isinstance(v, list):  # a JSON list (--set q.m=[1.0, 2.0]) is an array, as [1.0, 2.0] in a program
                    v = np.asarray(v)
            elif p.name in info.defaults:
                v = info.defaults[p.name]()
            else:
                raise LangCompileError(
                    f"parameter {p.name!r} of {info.name} has no default: give one in the program "
                    f"({p.name} = ...) or a value for {key!r}",
                    p.pos,
                    self.source,
                    self.filename,
                )
            out.append(jax.tree_util.tree_map(_trainable, v))
        return tuple(out)

    def init_args(self, name: str, overrides: Mapping[str, Any] | None = None) -> tuple[Any, ...]:
        """Initial arguments of objective ``name``: ``(model_args, guide_args)`` for a library objective, the
        parameters for a user objective. Float defaults become arrays (trainable); ints stay static.
        ``overrides`` maps ``"fn.param"`` to a value."""
        overrides = dict(overrides or {})
        info = self.infos[name]
        if info.lib is not None:
            _, model, guide = info.lib
            known = {f"{i.name}.{p.name}" for i in (model, guide) for p in i.params}
            args: tuple[Any, ...] = (self._defaults(model, overrides), self._defaults(guide, overrides))
        else:
            known = {f"{info.name}.{p.name}" for p in info.params}
            args = self._defaults(info, overrides)
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise LangCompileError(
                f"unknown parameter(s) {unknown} for objective {name!r}; its parameters are {sorted(known)}",
                None,
                self.source,
                self.filename,
            )
        return args

    def param_names(self, name: str) -> Any:
        """The ``"fn.param"`` names, in the same structure as :meth:`init_args`."""
        info = self.infos[name]
        if info.lib is not None:
            return tuple(tuple(f"{i.name}.{p.name}" for p in i.params) for i in info.lib[1:])
        return tuple(f"{info.name}.{p.name}" for p in info.params)


def compile_program(prog: A.Program, data: Mapping[str, Any] | None = None, *, observed: Any = ()) -> Program:
    """Compile a parsed program (see :func:`ppl.lang.compile`)."""
    if isinstance(observed, str):
        observed = (observed,)
    observed = frozenset(observed)
    ctx = _Ctx(prog, frozenset(_as_data(data)) | observed)
    blocks: dict[str, list[A.StrategiesDef]] = {}
    defined = {d.name.id: d for d in prog.decls if not isinstance(d, A.StrategiesDef)}
    for d in prog.decls:
        if isinstance(d, A.StrategiesDef):
            if d.target.id not in defined:
                raise ctx.error(
                    f"strategies for unknown function {d.target.id!r}{did_you_mean(d.target.id, defined)}", d.target.pos
                )
            blocks.setdefault(d.target.id, []).append(d)
    try:
        for d in prog.decls:
            if isinstance(d, A.StrategiesDef):
                continue
            if d.name.id in ctx.fns:
                first = ctx.fns[d.name.id].decl.name.pos
                raise ctx.error(f"{d.name.id!r} is defined twice (first at {first})", d.name.pos)
            if isinstance(d, A.GenFnDef):
                info = _compile_genfn(ctx, d)
            elif isinstance(d, A.GuideAuto):
                info = _compile_family(ctx, d)
            elif isinstance(d, A.ObjectiveDef):
                info = _compile_objective(ctx, d)
            else:
                info = _compile_library(ctx, d)
            if d.name.id in blocks:
                table = _strategies(ctx, info, blocks[d.name.id])
                if info.value is not None:
                    info.value = with_strategies(info.value, table)
                else:
                    info.build = (lambda b, t: lambda data: with_strategies(b(data), t))(info.build, table)
            ctx.fns[d.name.id] = info
    except RecursionError:
        raise ctx.error("the program is nested too deeply", None) from None
    return Program(dict(ctx.fns), data, prog.source, prog.filename, syntax=prog, observed=observed)


def compile(
    source: str, data: Mapping[str, Any] | None = None, *, filename: str = "<string>", observed: Any = ()
) -> Program:
    """Parse and compile ``source``; a :class:`Program` (``dict[str, GenFn | Expectation]``). ``observed``: addresses
    that automatic families treat as observed besides those of ``data`` (a name or a tuple of names)."""
    if not isinstance(source, str):
        hint = " (a path: use ppl.lang.load(path))" if isinstance(source, os.PathLike) else ""
        raise TypeError(f"ppl.lang.compile takes the program's source text, got {type(source).__name__}{hint}")
    return compile_program(parse(source, filename), data, observed=observed)


def load(path: str | os.PathLike[str], data: Mapping[str, Any] | None = None, *, observed: Any = ()) -> Program:
    """:func:`compile` the program in file ``path`` (errors name the file)."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    return compile(source, data, filename=os.fspath(path), observed=observed)
