"""The syntax tree of the ``ppl`` surface language: frozen dataclasses, each with its source position.

:func:`ppl.lang.parser.parse` builds it; :mod:`ppl.lang.compiler` walks it. Every node has ``pos``, a :class:`Pos`
(1-based line and column of its first character, and of the character after its last one), so each compile error
can point at the offending name.

>>> from ppl.lang.parser import parse
>>> prog = parse("model m() {\\n  x ~ Normal(0.0, 1.0)\\n}")
>>> sample = prog.decls[0].body[0]
>>> type(sample).__name__, sample.targets[0].id, sample.pos.line, sample.pos.column
('Sample', 'x', 2, 3)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# ---------------------------------------------------------------------------------------------- positions


@dataclass(frozen=True)
class Pos:
    """A source span: 1-based ``line``/``column`` of the first character, ``end_line``/``end_column`` past the last."""

    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.line}:{self.column}"


NOWHERE = Pos(0, 0, 0, 0)


class Node:
    """Base of all syntax-tree nodes (each dataclass below has a ``pos`` field)."""

    pos: Pos


# ---------------------------------------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Num(Node):
    value: int | float
    pos: Pos


@dataclass(frozen=True)
class Str(Node):
    value: str
    pos: Pos


@dataclass(frozen=True)
class Bool(Node):
    value: bool
    pos: Pos


@dataclass(frozen=True)
class Name(Node):
    id: str
    pos: Pos


@dataclass(frozen=True)
class BinOp(Node):
    """``left op right`` for ``op`` in ``+ - * / // % ** @ |`` and the comparisons ``== != < <= > >=``."""

    op: str
    left: Expr
    right: Expr
    pos: Pos


@dataclass(frozen=True)
class BoolOp(Node):
    """``left and right`` / ``left or right`` (elementwise: ``jnp.logical_and`` / ``jnp.logical_or``)."""

    op: str
    left: Expr
    right: Expr
    pos: Pos


@dataclass(frozen=True)
class UnaryOp(Node):
    """``-x``, ``+x``, ``not x``."""

    op: str
    operand: Expr
    pos: Pos


@dataclass(frozen=True)
class Starred(Node):
    """``*args`` in a call's argument list."""

    value: Expr
    pos: Pos


@dataclass(frozen=True)
class Keyword(Node):
    """``name=value`` in a call's argument list."""

    name: str
    value: Expr
    pos: Pos


@dataclass(frozen=True)
class Call(Node):
    func: Expr
    args: tuple[Expr, ...]  # may contain Starred
    keywords: tuple[Keyword, ...]
    pos: Pos


@dataclass(frozen=True)
class Slice(Node):
    start: Expr | None
    stop: Expr | None
    pos: Pos


@dataclass(frozen=True)
class Index(Node):
    value: Expr
    indices: tuple[Expr, ...]  # may contain Slice
    pos: Pos


@dataclass(frozen=True)
class TupleExpr(Node):
    items: tuple[Expr, ...]
    pos: Pos


@dataclass(frozen=True)
class ListExpr(Node):
    items: tuple[Expr, ...]
    pos: Pos


Expr = Any  # any expression node above

# ---------------------------------------------------------------------------------------------- statements


@dataclass(frozen=True)
class Target(Node):
    """The left of ``~`` or ``=``: a name, or ``name[i, j]`` indexed by enclosing loop variables."""

    id: str
    indices: tuple[Name, ...]
    pos: Pos


@dataclass(frozen=True)
class Sample(Node):
    """``target ~ Dist(args) [by strategy]``: a random choice at address ``target.id``; or ``name ~ model(args)``,
    a call of another model with its addresses under ``name/``."""

    targets: tuple[Target, ...]
    dist: Expr
    strategy: Expr | None
    pos: Pos


@dataclass(frozen=True)
class Assign(Node):
    targets: tuple[Target, ...]
    value: Expr
    pos: Pos


@dataclass(frozen=True)
class ExprStmt(Node):
    expr: Expr
    pos: Pos


@dataclass(frozen=True)
class Plate(Node):
    """``plate name(size[, subsample_size=b]) [as idx] { body }``: ``with ppl.plate("name", size, ...) as idx`` —
    the body's choices are vectorized along the plate (NumPyro's semantics), its lanes conditionally independent."""

    name: Name
    size: Expr
    subsample: Expr | None
    var: Name | None
    body: tuple[Stmt, ...]
    pos: Pos


@dataclass(frozen=True)
class For(Node):
    """``for var in range([start,] stop) { body }`` (compiled to one ``lax.scan``)."""

    var: Name
    start: Expr | None
    stop: Expr
    body: tuple[Stmt, ...]
    pos: Pos


@dataclass(frozen=True)
class If(Node):
    """``if cond { then } else { orelse }`` (compiled to ``lax.cond``)."""

    cond: Expr
    then: tuple[Stmt, ...]
    orelse: tuple[Stmt, ...]
    pos: Pos


@dataclass(frozen=True)
class Return(Node):
    value: Expr
    pos: Pos


Stmt = Sample | Assign | ExprStmt | For | Plate | If | Return

# ---------------------------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Param(Node):
    name: str
    default: Expr | None
    pos: Pos


@dataclass(frozen=True)
class GenFnDef(Node):
    """``model name(params) { body }`` or ``guide name(params) { body }``."""

    kind: str  # "model" | "guide"
    name: Name
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    pos: Pos


@dataclass(frozen=True)
class ObjectiveDef(Node):
    """``objective name(params) { body }``: a user objective written with ``sim`` / ``density``."""

    name: Name
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    pos: Pos


@dataclass(frozen=True)
class ObjectiveLib(Node):
    """``objective name = elbo(model, guide, ...)``: an objective of the library."""

    name: Name
    call: Expr
    pos: Pos


@dataclass(frozen=True)
class GuideAuto(Node):
    """``guide name = auto_normal(model, ...)``: an automatic family of the library (:mod:`ppl.lang.families`)."""

    name: Name
    call: Expr
    pos: Pos


@dataclass(frozen=True)
class StrategyEntry(Node):
    pattern: str  # an address glob
    strategy: Expr
    pos: Pos  # of the pattern


@dataclass(frozen=True)
class StrategiesDef(Node):
    """``strategies name { "glob": strategy, ... }``: ``ppl.with_strategies`` applied to ``name``."""

    target: Name
    entries: tuple[StrategyEntry, ...]
    pos: Pos


Decl = GenFnDef | GuideAuto | ObjectiveDef | ObjectiveLib | StrategiesDef


@dataclass(frozen=True)
class Program(Node):
    decls: tuple[Decl, ...]
    source: str
    filename: str
    pos: Pos
