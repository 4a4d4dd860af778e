"""Expressions, calls and strategies of ``ppl.lang``, compiled to closures ``code(env) -> value``.

:class:`ExprCompiler` is the half of :class:`ppl.lang.codegen.FnCompiler` that handles expressions: names (checked
against the scope), arithmetic and comparisons (Python operators on JAX values), ``and``/``or``/``not`` (elementwise),
indexing (``a[i]`` of an array defined before a loop over ``i`` is a scanned slice), calls of the allowlisted
functions, of models (inlined), of ``sim`` / ``density`` / ``factor`` / ``cost``, and strategies (``by ...``).
Arities are checked against the callee's signature when the program is compiled; errors from JAX or NumPyro while
the program is staged are re-raised as located :class:`~ppl.lang.errors.LangError` exceptions.

>>> import jax, ppl.lang
>>> prog = ppl.lang.compile("model m(x) {\\n  return where(x > 0.0 and x < 2.0, softplus(x) ** 2, -1.0)\\n}")
>>> round(float(prog["m"].simulate(jax.random.key(0), jax.numpy.asarray(1.0)).retval), 4)
1.7247
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..core.interpreter import PPLError
from ..core.primitives import add_cost, factor
from ..transforms.tracing import density, sim
from . import ast as A
from .builtins import (
    CONSTANTS,
    DISTRIBUTIONS,
    FUNCTIONS,
    LIBRARY_OBJECTIVES,
    SPECIAL_FORMS,
    STRATEGY_FACTORIES,
    STRATEGY_NAMES,
    STRATEGY_VALUES,
    signature,
)
from .errors import LangError, did_you_mean
from .families import FAMILIES
from .scope import Scope

Env = dict[str, Any]
Code = Callable[[Env], Any]

# ---------------------------------------------------------------------------------------------- run-time helpers

_BINOPS = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
    "**": operator.pow,
    "@": operator.matmul,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _merge(a: Any, b: Any) -> dict[str, Any]:
    if not (isinstance(a, Mapping) and isinstance(b, Mapping)):
        raise TypeError(
            "'|' merges choice maps (address -> value, as returned by sim or given as data); got "
            f"{type(a).__name__} | {type(b).__name__}"
        )
    return {**a, **b}


class ExprCompiler:
    """Compiles expressions within one function (see the module docstring); the statements are in the subclass."""

    def __init__(self, ctx: Any, kind: str, name: str):
        self.ctx, self.kind, self.name = ctx, kind, name
        self.path: dict[str, A.Pos] = {}  # addresses sampled on the current execution path
        self.addresses: dict[str, A.Pos] = {}  # all addresses (for strategy patterns)

    def error(self, message: str, pos: A.Pos, hint: str = "") -> LangError:
        return self.ctx.error(message, pos, hint)

    def guard(self, pos: A.Pos, what: str, thunk: Callable[[], Any]) -> Any:
        """Run ``thunk``; turn an error from JAX / NumPyro on user input into a located :class:`LangError`."""
        try:
            return thunk()
        except LangError:
            raise
        except (PPLError, TypeError, ValueError, IndexError, KeyError, ZeroDivisionError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if isinstance(e, KeyError):
                msg = f"no entry {e.args[0]!r}"
            raise self.error(f"{what}: {msg}", pos) from None

    def add_address(self, addr: str, pos: A.Pos, via: str = "") -> None:
        if addr in self.path:
            first = self.path[addr]
            where = f"first sampled at {first}" if first.line else "already sampled"
            raise self.error(
                f"duplicate address {addr!r}{via} ({where}); every random choice of one execution "
                "needs its own address",
                pos,
            )
        self.path[addr] = pos
        self.addresses.setdefault(addr, pos)

    # ------------------------------------------------------------------------------------------ strategies

    def strategy(self, e: A.Expr, scope: Scope) -> Code:
        if isinstance(e, A.Name):
            if e.id in STRATEGY_VALUES:
                s = STRATEGY_VALUES[e.id]
                return lambda env: s
            if e.id in STRATEGY_FACTORIES:
                raise self.error(f"{e.id} needs an argument, e.g. {e.id}(...)", e.pos)
        elif isinstance(e, A.Call) and isinstance(e.func, A.Name) and e.func.id in STRATEGY_FACTORIES:
            f = STRATEGY_FACTORIES[e.func.id]
            self.check_arity(e, signature(f), f"strategy {e.func.id}")
            args, kw = self.arguments(e, scope)
            return lambda env: self.guard(e.pos, e.func.id, lambda: f(*args(env), **kw(env)))
        name = e.func if isinstance(e, A.Call) and isinstance(e.func, A.Name) else e
        if isinstance(name, A.Name):
            raise self.error(
                f"unknown strategy {name.id!r}{did_you_mean(name.id, STRATEGY_NAMES)}",
                name.pos,
                hint="strategies: " + ", ".join(STRATEGY_NAMES),
            )
        raise self.error("a strategy is a name (reinforce, enum, ...) or baseline(b) / leave_one_out(n)", e.pos)

    # ------------------------------------------------------------------------------------------ calls

    def check_arity(self, call: A.Call, sig: inspect.Signature | None, what: str) -> None:
        if sig is None or any(isinstance(a, A.Starred) for a in call.args):
            return
        try:
            sig.bind(*[None] * len(call.args), **{k.name: None for k in call.keywords})
        except TypeError as err:
            params = ", ".join(p for p in sig.parameters if p not in ("validate_args", "self"))
            raise self.error(f"wrong arguments for {what}({params}): {err}", call.func.pos) from None

    def arguments(self, call: A.Call, scope: Scope) -> tuple[Callable[[Env], list[Any]], Callable[[Env], dict]]:
        parts = [
            (isinstance(a, A.Starred), self.expr(a.value if isinstance(a, A.Starred) else a, scope), a.pos)
            for a in call.args
        ]
        kws = [(k.name, self.expr(k.value, scope)) for k in call.keywords]

        def args(env: Env) -> list[Any]:
            out: list[Any] = []
            for starred, code, pos in parts:
                v = code(env)
                if starred:
                    if not isinstance(v, tuple | list | jax.Array | np.ndarray):
                        raise self.error(f"*{type(v).__name__}: only a tuple or an array can be spread", pos)
                    out.extend(v)
                else:
                    out.append(v)
            return out

        return args, (lambda env: {k: c(env) for k, c in kws})

    def dist_call(self, call: A.Call, scope: Scope) -> Code:
        name = call.func.id
        cls = DISTRIBUTIONS[name]
        self.check_arity(call, signature(cls), name)
        args, kw = self.arguments(call, scope)
        return lambda env: self.guard(call.pos, name, lambda: cls(*args(env), **kw(env)))

    def genfn_call(self, call: A.Call, scope: Scope, info: Any, add: bool = True) -> Code:
        if call.keywords:
            raise self.error(f"the arguments of {info.kind} {info.name!r} are positional", call.keywords[0].pos)
        self.check_arity(call, info.signature, info.name)
        if add:
            for a in info.addresses:
                self.add_address(a, call.func.pos, via=f" (sampled by {info.name!r}, called here)")
        args, _ = self.arguments(call, scope)
        fn = info.value
        return lambda env: self.guard(call.pos, f"{info.name}(...)", lambda: fn(*args(env)))

    def call(self, e: A.Call, scope: Scope) -> Code:
        if not isinstance(e.func, A.Name):
            raise self.error("only named functions can be called", e.func.pos)
        f = e.func.id
        if self.kind == "constant" and (f in SPECIAL_FORMS or f in self.ctx.fns):
            raise self.error(f"{f} cannot be used in a constant (a default value or a strategy argument)", e.func.pos)
        if f in SPECIAL_FORMS:
            return self.special(e, scope)
        info = self.ctx.fns.get(f)
        if info is not None:
            if info.kind == "objective":
                raise self.error(f"{f!r} is an objective: it cannot be called inside a program", e.func.pos)
            return self.genfn_call(e, scope, info)
        if f in FUNCTIONS:
            fn = FUNCTIONS[f]
            self.check_arity(e, signature(fn), f)
            args, kw = self.arguments(e, scope)
            return lambda env: self.guard(e.pos, f"{f}(...)", lambda: fn(*args(env), **kw(env)))
        if f in DISTRIBUTIONS:
            raise self.error(f"{f} is a distribution: sample from it with 'x ~ {f}(...)'", e.func.pos)
        if f in STRATEGY_NAMES:
            raise self.error(f"{f} is a gradient strategy: use it after 'by' or in a strategies block", e.func.pos)
        if f in LIBRARY_OBJECTIVES:
            raise self.error(
                f"{f}(...) builds an objective: write 'objective name = {f}(model, guide, ...)' at the top level",
                e.func.pos,
            )
        if f in FAMILIES:
            raise self.error(
                f"{f}(...) builds a variational family: write 'guide name = {f}(model)' at the top level", e.func.pos
            )
        if scope.find(f):
            raise self.error(f"{f!r} is a variable, not a function", e.func.pos)
        raise self.unknown(e.func, "function", {**FUNCTIONS, **self.ctx.fns})

    def special(self, e: A.Call, scope: Scope) -> Code:
        f = e.func.id
        lo, hi, usage = SPECIAL_FORMS[f]
        in_objective = self.kind == "objective"
        objective_only = f in ("sim", "density", "cost", "add_cost")
        if f == "range" or (objective_only and not in_objective) or (f == "factor" and in_objective):
            raise self.error(f"{f} is not available here: {usage}", e.func.pos)
        if e.keywords:
            raise self.error(f"{f} takes positional arguments: {usage}", e.keywords[0].pos)
        n = len(e.args)
        if not any(isinstance(a, A.Starred) for a in e.args) and (n < lo or (hi is not None and n > hi)):
            raise self.error(f"wrong number of arguments for {f}: {usage}", e.func.pos)
        if f in ("factor", "cost", "add_cost"):
            x = self.expr(e.args[0], scope)
            prim = factor if f == "factor" else add_cost
            return lambda env: self.guard(e.pos, f, lambda: prim(x(env)))
        target = e.args[0]
        info = self.ctx.fns.get(target.id) if isinstance(target, A.Name) else None
        if info is None or info.kind == "objective":
            raise self.error(f"the first argument of {f} is the name of a model or guide", target.pos)
        rest = e.args[1:] if f == "sim" else e.args[2:]
        if f == "density" and isinstance(e.args[1], A.Starred):
            raise self.error("the second argument of density is the choice map", e.args[1].pos)
        self.check_arity(A.Call(target, rest, (), e.pos), info.signature, info.name)
        args, _ = self.arguments(A.Call(e.func, e.args[1:], (), e.pos), scope)
        gen = info.value
        if f == "sim":
            for a in info.addresses:
                self.add_address(a, target.pos, via=f" (sampled by sim({info.name}, ...) here)")
            return lambda env: self.guard(e.pos, "sim", lambda: tuple(sim(gen, *args(env))))

        def dens(env: Env) -> Any:
            choices, *a = args(env)
            return self.guard(e.pos, "density", lambda: density(gen, choices, *a))

        return dens

    # ------------------------------------------------------------------------------------------ expressions

    def unknown(self, name: A.Name, what: str, candidates: Mapping[str, Any]) -> LangError:
        return self.error(f"unknown {what} {name.id!r}{did_you_mean(name.id, candidates)}", name.pos)

    def expr(self, e: A.Expr, scope: Scope) -> Code:
        if isinstance(e, A.Num | A.Str | A.Bool):
            v = e.value
            return lambda env: v
        if isinstance(e, A.Name):
            return self.name_ref(e, scope)
        if isinstance(e, A.BinOp):
            left, right = self.expr(e.left, scope), self.expr(e.right, scope)
            op = _merge if e.op == "|" else _BINOPS[e.op]
            return lambda env: self.guard(e.pos, f"'{e.op}'", lambda: op(left(env), right(env)))
        if isinstance(e, A.BoolOp):
            left, right = self.expr(e.left, scope), self.expr(e.right, scope)
            op = jnp.logical_and if e.op == "and" else jnp.logical_or
            return lambda env: self.guard(e.pos, f"'{e.op}'", lambda: op(left(env), right(env)))
        if isinstance(e, A.UnaryOp):
            x = self.expr(e.operand, scope)
            op = {"-": operator.neg, "+": operator.pos, "not": jnp.logical_not}[e.op]
            return lambda env: self.guard(e.pos, f"'{e.op}'", lambda: op(x(env)))
        if isinstance(e, A.Call):
            return self.call(e, scope)
        if isinstance(e, A.Index):
            return self.index(e, scope)
        if isinstance(e, A.TupleExpr | A.ListExpr):
            items = [self.expr(i, scope) for i in e.items]
            if isinstance(e, A.TupleExpr):
                return lambda env: tuple(i(env) for i in items)
            return lambda env: self.guard(e.pos, "[...]", lambda: jnp.asarray([i(env) for i in items]))
        if isinstance(e, A.Starred):
            raise self.error("*x spreads a tuple into the arguments of a call; it cannot stand alone", e.pos)
        if isinstance(e, A.Slice):
            raise self.error("a slice a:b is only allowed inside [...]", e.pos)
        raise self.error(f"unsupported expression {type(e).__name__}", e.pos)  # pragma: no cover

    def name_ref(self, e: A.Name, scope: Scope) -> Code:
        found = scope.find(e.id)
        if found is not None:
            var = found[0]
            if var.kind == "stacked":
                raise self.error(
                    f"{e.id!r} is being built by the loop: read this iteration's value as "
                    f"{e.id}[{', '.join(var.pending)}]",
                    e.pos,
                )
            name = e.id
            return lambda env: env[name]
        if e.id in CONSTANTS:
            v = CONSTANTS[e.id]
            return lambda env: v
        if e.id in self.ctx.fns:
            raise self.error(
                f"{e.id!r} is a {self.ctx.fns[e.id].kind}: call it, or pass it to sim / density / a library objective",
                e.pos,
            )
        if e.id in FUNCTIONS:
            raise self.error(f"{e.id!r} is a function: call it", e.pos)
        if e.id in DISTRIBUTIONS:
            raise self.error(f"{e.id!r} is a distribution: sample from it with 'x ~ {e.id}(...)'", e.pos)
        hint = ""
        if (pos := scope.local_hint(e.id)) is not None:
            hint = (
                f"note: {e.id!r} is assigned at {pos} in only one branch of an if; assign it in both branches "
                "(or before the if) to use it after"
            )
        elif e.id == "data":
            hint = (
                "note: observed data are given by address when the model is used (assess / generate "
                "constraints, or the data of an objective); 'data' is a name only inside objectives"
            )
        raise self.error(f"undefined variable {e.id!r}{did_you_mean(e.id, scope.visible())}", e.pos, hint)

    def index(self, e: A.Index, scope: Scope) -> Code:
        base, idx = e.value, list(e.indices)
        if isinstance(base, A.Name) and (found := scope.find(base.id)) is not None:
            var, where = found
            names = [i.id if isinstance(i, A.Name) else None for i in idx]
            if var.kind == "stacked":
                k = len(var.pending)
                if tuple(names[:k]) != var.pending:
                    raise self.error(
                        f"{base.id!r} is being built by the loop: read this iteration's value as "
                        f"{base.id}[{', '.join(var.pending)}]",
                        e.pos,
                    )
                return self.apply_index(lambda env, n=base.id: env[n], idx[k:], e, scope)
            loop = next((lp for lp in scope.loops() if lp.var == names[0]), None) if names[0] else None
            if (
                loop is not None
                and var.kind in ("var", "param")
                and base.id not in loop.assigned
                and where in loop.outer.chain()
            ):
                loop.scanned.setdefault(base.id, e.pos)
                slot, name, i = f"{base.id}[{loop.var}]", base.id, loop.var

                def sliced(env: Env) -> Any:
                    if slot in env:
                        return env[slot]
                    return self.guard(e.pos, "indexing", lambda: env[name][env[i]])

                return self.apply_index(sliced, idx[1:], e, scope)
        return self.apply_index(self.expr(base, scope), idx, e, scope)

    def apply_index(self, base: Code, idx: list[Any], e: A.Index, scope: Scope) -> Code:
        if not idx:
            return base
        parts = []
        for i in idx:
            if isinstance(i, A.Slice):
                lo = self.expr(i.start, scope) if i.start is not None else None
                hi = self.expr(i.stop, scope) if i.stop is not None else None
                parts.append((True, lo, hi))
            else:
                parts.append((False, self.expr(i, scope), None))

        def key(env: Env) -> Any:
            ks = tuple(
                slice(lo(env) if lo else None, hi(env) if hi else None) if is_slice else lo(env)
                for is_slice, lo, hi in parts
            )
            return ks[0] if len(ks) == 1 else ks

        return lambda env: self.guard(e.pos, "indexing", lambda: base(env)[key(env)])
