"""Statements and expressions of a function body, compiled to Python closures over an environment.

One :class:`FnCompiler` per ``model`` / ``guide`` / ``objective``. It checks the body (names, arities, addresses,
loop targets) while it builds the code: a statement becomes ``run(env) -> None`` (``env`` maps names to values and is
updated in place), an expression becomes ``code(env) -> value``. The code binds ``ppl`` primitives and plain JAX:

* ``x ~ D(args) [by s]`` binds ``ppl.sample("x", D(args), s)``; ``y ~ m(args)`` calls model ``m`` under
  ``ppl.scope("y")``;
* ``for i in range(n) { ... }`` is one ``lax.scan`` of length ``n`` (a static Python int). Inside, names defined
  before the loop are readable; assigning one of them makes it a *carry* (its value after the loop is the last
  iteration's); names first assigned in the body are loop-local; ``x[i] = ...`` / ``x[i] ~ ...`` are *stacked*
  outputs: after the loop ``x`` is the array of all iterations. ``a[i]`` for an array ``a`` defined before the loop
  is a scanned slice (``a[start:stop]`` is passed to ``lax.scan`` as ``xs``);
* ``if c { ... } else { ... }`` is one ``lax.cond``. Names assigned in both branches (or assigned in one and defined
  before) are defined after it; a name assigned in one branch only and new is branch-local.

>>> import ppl.lang, jax
>>> prog = ppl.lang.compile("model m(n) {\\n for i in range(n) { x[i] ~ Normal(0.0, 1.0) }\\n return sum(x)\\n}")
>>> prog["m"].simulate(jax.random.key(0), 5).choices["x"].shape
(5,)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._jax_internals import is_tracer
from ..core.plates import plate
from ..core.primitives import sample
from ..core.primitives import scope as addr_scope
from . import ast as A
from .builtins import DISTRIBUTIONS
from .exprs import Code, Env, ExprCompiler
from .scope import Loop, Scope, Var, assigned_names

Run = Callable[[Env], None]


def _static_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, jax.Array) and not is_tracer(v) and v.shape == () and jnp.issubdtype(v.dtype, jnp.integer):
        return int(v)
    return None


def _head(pos: A.Pos, keyword: str) -> A.Pos:
    """The position of a statement's keyword (errors about a whole loop / if point there)."""
    return A.Pos(pos.line, pos.column, pos.line, pos.column + len(keyword))


def _carry(new: Any, init: Any, name: str, pos: A.Pos, fc: FnCompiler) -> Any:
    new = jnp.asarray(new)
    if new.shape != init.shape:
        raise fc.error(
            f"loop variable {name!r} changes shape from {init.shape} to {new.shape} in the loop body; "
            "a carried name keeps its shape",
            pos,
        )
    if new.dtype != init.dtype:
        same_kind = jnp.issubdtype(new.dtype, jnp.floating) == jnp.issubdtype(init.dtype, jnp.floating)
        if not same_kind:
            raise fc.error(
                f"loop variable {name!r} starts as {init.dtype} but the loop assigns {new.dtype}; "
                f"initialise it with a value of that type (e.g. 0.0 rather than 0)",
                pos,
            )
        new = new.astype(init.dtype)
    return new


# ---------------------------------------------------------------------------------------------- statements


class FnCompiler(ExprCompiler):
    """Compiles the body of one function (see the module docstring)."""

    # ------------------------------------------------------------------------------------------ bodies

    def body(self, stmts: tuple[A.Stmt, ...], scope: Scope, needs_return: bool) -> tuple[Run, Code | None]:
        for st in stmts[:-1]:
            if isinstance(st, A.Return):
                raise self.error("return must be the last statement of the body", st.pos)
        ret = None
        if stmts and isinstance(stmts[-1], A.Return):
            stmts, last = stmts[:-1], stmts[-1]
            run = self.block(stmts, scope)
            ret = self.expr(last.value, scope)
        else:
            run = self.block(stmts, scope)
            if needs_return:
                pos = stmts[-1].pos if stmts else A.NOWHERE
                raise self.error(f"objective {self.name!r} must end with 'return <value>'", pos)
        return run, ret

    def block(self, stmts: tuple[A.Stmt, ...], scope: Scope) -> Run:
        runs = [self.stmt(st, scope) for st in stmts]

        def run(env: Env) -> None:
            for r in runs:
                r(env)

        return run

    def stmt(self, st: A.Stmt, scope: Scope) -> Run:
        if isinstance(st, A.Return):
            raise self.error("return must be the last statement of the function body", st.pos)
        method = {
            A.Sample: self.sample,
            A.Assign: self.assign,
            A.ExprStmt: self.expr_stmt,
            A.For: self.for_,
            A.Plate: self.plate_,
            A.If: self.if_,
        }[type(st)]
        return method(st, scope)

    # ------------------------------------------------------------------------------------------ targets

    def check_target(self, t: A.Target, scope: Scope, random: bool) -> None:
        found = scope.find(t.id)
        if t.id in self.ctx.fns:
            raise self.error(f"cannot assign to {t.id!r}: it names a {self.ctx.fns[t.id].kind}", t.pos)
        if found and found[0].kind in ("loop", "data"):
            what = "the loop variable" if found[0].kind == "loop" else "the observed data"
            raise self.error(f"cannot assign to {t.id!r}: it is {what}", t.pos)
        loops = [lp.var for lp in scope.loops()]
        if t.indices:
            if not loops:
                raise self.error(
                    f"{t.id}[...] outside a for loop: an indexed target is indexed by loop variables", t.indices[0].pos
                )
            ids = tuple(i.id for i in t.indices)
            want = tuple(loops) if random else tuple(loops[-len(ids) :])
            if ids != want:
                bad = next((i for i, w in zip(t.indices, want, strict=False) if i.id != w), t.indices[-1])
                raise self.error(
                    f"{t.id}[{', '.join(ids)}]: index by the enclosing loop variables, innermost last "
                    f"(here {t.id}[{', '.join(want)}])",
                    bad.pos,
                )
        elif random and loops:
            raise self.error(
                f"a random choice inside a for loop records one value per iteration: write "
                f"{t.id}[{', '.join(loops)}] ~ ...",
                t.pos,
            )
        elif found and found[0].kind == "stacked":
            raise self.error(
                f"{t.id!r} is being built by the loop as {t.id}[{', '.join(found[0].pending)}]; "
                "assign that, or use another name",
                t.pos,
            )

    @staticmethod
    def bind(t: A.Target, scope: Scope) -> None:
        scope.vars[t.id] = Var("stacked", t.pos, tuple(i.id for i in t.indices)) if t.indices else Var("var", t.pos)

    # ------------------------------------------------------------------------------------------ statements

    def sample(self, st: A.Sample, scope: Scope) -> Run:
        if len(st.targets) != 1:
            raise self.error("one name on the left of '~'", st.targets[1].pos)
        (t,) = st.targets
        call = st.dist
        if not (isinstance(call, A.Call) and isinstance(call.func, A.Name)):
            raise self.error("the right of '~' is a distribution, like Normal(0.0, 1.0), or a model call", call.pos)
        fname = call.func.id
        self.check_target(t, scope, random=True)
        info = self.ctx.fns.get(fname)
        if info is not None and info.kind in ("model", "guide"):
            if st.strategy is not None:
                raise self.error(
                    "'by' sets the strategy of a distribution; for a model call use a strategies block", st.strategy.pos
                )
            for a in info.addresses:
                self.add_address(f"{t.id}/{a}", t.pos, via=f" (from {fname} under {t.id!r})")
            code = self.genfn_call(call, scope, info, add=False)
            name = t.id

            def run_call(env: Env) -> None:
                with addr_scope(name):
                    env[name] = code(env)

            self.bind(t, scope)
            return run_call
        if fname not in DISTRIBUTIONS:
            raise self.unknown(call.func, "distribution", DISTRIBUTIONS)
        dist = self.dist_call(call, scope)
        strat = self.strategy(st.strategy, scope) if st.strategy is not None else None
        self.add_address(t.id, t.pos)
        addr, pos = t.id, call.pos

        def run(env: Env) -> None:
            d = dist(env)
            s = strat(env) if strat is not None else None
            env[addr] = self.guard(pos, f"{addr} ~ {fname}(...)", lambda: sample(addr, d, s))

        self.bind(t, scope)
        return run

    def assign(self, st: A.Assign, scope: Scope) -> Run:
        value = self.expr(st.value, scope)
        for t in st.targets:
            self.check_target(t, scope, random=False)
        names = [t.id for t in st.targets]
        for t in st.targets:
            self.bind(t, scope)
        if len(names) == 1:
            (name,) = names

            def run1(env: Env) -> None:
                env[name] = value(env)

            return run1

        def run(env: Env) -> None:
            v = value(env)
            if isinstance(v, jax.Array | np.ndarray) and v.ndim and v.shape[0] == len(names):
                v = list(v)
            if not isinstance(v, tuple | list) or len(v) != len(names):
                n = len(v) if isinstance(v, tuple | list) else type(v).__name__
                raise self.error(f"cannot unpack {n} into {len(names)} names", st.pos)
            env.update(zip(names, v, strict=True))

        return run

    def expr_stmt(self, st: A.ExprStmt, scope: Scope) -> Run:
        code = self.expr(st.expr, scope)

        def run(env: Env) -> None:
            code(env)

        return run

    def for_(self, st: A.For, scope: Scope) -> Run:
        var = st.var.id
        if var in self.ctx.fns or (scope.find(var) and scope.find(var)[0].kind in ("loop", "data")):
            raise self.error(
                f"cannot use {var!r} as a loop variable: it is already a "
                f"{'name of the program' if var in self.ctx.fns else scope.find(var)[0].kind}",
                st.var.pos,
            )
        start = self.expr(st.start, scope) if st.start is not None else None
        stop = self.expr(st.stop, scope)
        loop = Loop(var, frozenset(assigned_names(st.body)), scope)
        carries = sorted(n for n in loop.assigned if (f := scope.find(n)) and f[0].kind in ("var", "param"))
        inner = Scope(scope, loop)
        inner.vars[var] = Var("loop", st.var.pos)
        body = self.block(st.body, inner)
        outputs = {n: v.pending[:-1] for n, v in inner.vars.items() if v.kind == "stacked" and v.pending[-1:] == (var,)}
        for n, rest in outputs.items():
            scope.vars[n] = Var("stacked", inner.vars[n].pos, rest) if rest else Var("var", inner.vars[n].pos)
        for n in carries:  # re-assigned in this block (an enclosing if / loop sees the change)
            scope.vars.setdefault(n, Var("var", st.pos))
        scanned = dict(loop.scanned)
        bound_pos = (st.start or st.stop).pos
        carry_pos = {c: inner.vars[c].pos if c in inner.vars else st.pos for c in carries}
        head = _head(st.pos, "for")

        def run(env: Env) -> None:
            lo = _static_int(start(env)) if start is not None else 0
            hi = _static_int(stop(env))
            if lo is None or hi is None:
                raise self.error(
                    "a loop bound must be a static integer (a Python int argument, a literal, or "
                    "len(x)); a traced value cannot size a loop",
                    bound_pos,
                )
            n = max(hi - lo, 0)
            init = {c: self.guard(head, f"loop variable {c!r}", lambda c=c: jnp.asarray(env[c])) for c in carries}
            xs = {}
            for name, pos in scanned.items():
                v = env[name]
                if isinstance(v, jax.Array | np.ndarray) and v.ndim >= 1:
                    if v.shape[0] < hi:
                        raise self.error(
                            f"{name} has length {v.shape[0]} but the loop reads {name}[{var}] up to {var} = {hi - 1}",
                            pos,
                        )
                    xs[name] = v[lo:hi]

            def step(carry, x):
                i, slices = x
                e = dict(env)
                e.update(carry)
                e[var] = i
                for name, v in slices.items():
                    e[f"{name}[{var}]"] = v
                body(e)
                new = {c: _carry(e[c], init[c], c, carry_pos[c], self) for c in carries}
                return new, {o: e[o] for o in outputs}

            carry, ys = self.guard(head, "for loop", lambda: lax.scan(step, init, (jnp.arange(lo, hi), xs), length=n))
            env.update(carry)
            env.update(ys)

        return run

    def plate_(self, st: A.Plate, scope: Scope) -> Run:
        """``with ppl.plate(name, size, subsample_size) as idx:`` around the body (same scope: names it binds are
        seen after it; its choices are vectorized along the plate, NumPyro style)."""
        size = self.expr(st.size, scope)
        sub = self.expr(st.subsample, scope) if st.subsample is not None else None
        if st.var is not None:
            scope.vars[st.var.id] = Var("var", st.var.pos)
        if st.subsample is not None:  # the indices are a random choice at the plate's name
            self.add_address(st.name.id, st.name.pos)
        body = self.block(st.body, scope)
        name, var, head = st.name.id, st.var.id if st.var is not None else None, _head(st.pos, "plate")

        def run(env: Env) -> None:
            n = _static_int(size(env))
            b = _static_int(sub(env)) if sub is not None else None
            if n is None or (sub is not None and b is None):
                raise self.error(
                    "a plate size must be a static integer (a Python int argument, a literal, or len(x))", st.size.pos
                )
            ctx = self.guard(head, f"plate {name}", lambda: plate(name, n, b))
            with ctx as idx:
                if var is not None:
                    env[var] = idx
                body(env)

        return run

    def if_(self, st: A.If, scope: Scope) -> Run:
        cond = self.expr(st.cond, scope)
        before = dict(self.path)
        then_scope, else_scope = Scope(scope), Scope(scope)
        then = self.block(st.then, then_scope)
        after_then, self.path = self.path, dict(before)
        orelse = self.block(st.orelse, else_scope)
        self.path = {**after_then, **self.path}
        outs: list[str] = []
        for name in sorted(set(then_scope.vars) | set(else_scope.vars)):
            tv, ev = then_scope.vars.get(name), else_scope.vars.get(name)
            outer = scope.find(name)
            v = tv or ev
            if tv and ev:
                if (tv.kind, tv.pending) != (ev.kind, ev.pending):
                    raise self.error(f"{name!r} is assigned differently in the two branches of this if", ev.pos)
            elif v.kind == "stacked":
                if not (outer and (outer[0].kind, outer[0].pending) == ("stacked", v.pending)):
                    raise self.error(
                        f"{name}[{', '.join(v.pending)}] is assigned in only one branch of this if; "
                        "assign it in both branches (or before the if)",
                        v.pos,
                    )
            elif not (outer and outer[0].kind in ("var", "param")):
                scope.branch_local[name] = v.pos
                continue
            outs.append(name)
            scope.vars[name] = Var(v.kind, v.pos, v.pending)

        def branch(code: Run) -> Callable[[], tuple[Any, ...]]:
            def f(env: Env) -> tuple[Any, ...]:
                e = dict(env)
                code(e)
                return tuple(e[n] for n in outs)

            return f

        head = _head(st.pos, "if")

        def run(env: Env) -> None:
            c = cond(env)
            if jnp.shape(c) != ():
                raise self.error(
                    f"the condition of an if must be a scalar, got shape {jnp.shape(c)} (for an "
                    "elementwise choice use where(c, a, b))",
                    st.cond.pos,
                )
            fs = [branch(then), branch(orelse)]
            try:
                res = lax.cond(c, lambda: fs[0](env), lambda: fs[1](env))
            except TypeError:  # the branches disagree: promote dtypes of same-shaped values, or say which name
                casts = self.unify_branches(fs, env, outs, head)
                fs = [lambda e, f=f: tuple(jnp.asarray(v, t) for v, t in zip(f(e), casts, strict=True)) for f in fs]
                res = self.guard(head, "if/else", lambda: lax.cond(c, lambda: fs[0](env), lambda: fs[1](env)))
            env.update(zip(outs, res, strict=True))

        return run

    def unify_branches(self, fs: list[Callable], env: Env, outs: list[str], head: A.Pos) -> list[Any]:
        """The common dtype of each output of an if's branches, or an error naming the first that differs."""
        a, b = (jax.eval_shape(lambda f=f: f(env)) for f in fs)
        dtypes = []
        for name, x, y in zip(outs, a, b, strict=True):
            sx, sy = jax.tree_util.tree_structure(x), jax.tree_util.tree_structure(y)
            shapes = (
                [jnp.shape(v) for v in jax.tree_util.tree_leaves(x)],
                [jnp.shape(v) for v in jax.tree_util.tree_leaves(y)],
            )
            if sx != sy or shapes[0] != shapes[1] or sx.num_leaves != 1:
                what = (
                    f"shape {shapes[0][0]} / {shapes[1][0]}"
                    if sx == sy and sx.num_leaves == 1
                    else f"structure {sx} / {sy}"
                )
                raise self.error(
                    f"{name!r} differs between the branches of this if ({what}); both branches must "
                    "give it the same shape",
                    head,
                )
            dtypes.append(jnp.result_type(x.dtype, y.dtype))
        return dtypes
