"""Compile-time scopes of ``ppl.lang``: which names a statement can see, and what kind of value each is.

>>> from ppl.lang.scope import Scope, Var
>>> from ppl.lang.ast import NOWHERE
>>> outer = Scope()
>>> outer.vars["x"] = Var("param", NOWHERE)
>>> inner = Scope(outer)
>>> inner.find("x")[0].kind, inner.find("y")
('param', None)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import ast as A


@dataclass
class Var:
    kind: str  # "param" | "var" | "loop" | "data" | "stacked" (x[i] being built by enclosing loops)
    pos: A.Pos
    pending: tuple[str, ...] = ()  # for "stacked": the loop variables still to stack over


@dataclass
class Loop:
    var: str
    assigned: frozenset[str]  # plain names assigned anywhere in the body
    outer: Scope
    scanned: dict[str, A.Pos] = field(default_factory=dict)


class Scope:
    def __init__(self, parent: Scope | None = None, loop: Loop | None = None):
        self.parent, self.loop = parent, loop
        self.vars: dict[str, Var] = {}
        self.branch_local: dict[str, A.Pos] = {}

    def find(self, name: str) -> tuple[Var, Scope] | None:
        s: Scope | None = self
        while s is not None:
            if name in s.vars:
                return s.vars[name], s
            s = s.parent
        return None

    def chain(self) -> list[Scope]:
        out, s = [], self
        while s is not None:
            out.append(s)
            s = s.parent
        return out

    def loops(self) -> list[Loop]:
        """Enclosing loops, outermost first."""
        return [s.loop for s in reversed(self.chain()) if s.loop is not None]

    def visible(self) -> set[str]:
        return {n for s in self.chain() for n in s.vars}

    def local_hint(self, name: str) -> A.Pos | None:
        for s in self.chain():
            if name in s.branch_local:
                return s.branch_local[name]
        return None


def assigned_names(stmts: tuple[A.Stmt, ...]) -> set[str]:
    """Plain (un-indexed) names assigned anywhere in ``stmts``, nested blocks included."""
    out: set[str] = set()
    for st in stmts:
        if isinstance(st, A.Sample | A.Assign):
            out |= {t.id for t in st.targets if not t.indices}
        elif isinstance(st, A.For | A.Plate):
            out |= assigned_names(st.body)
        elif isinstance(st, A.If):
            out |= assigned_names(st.then) | assigned_names(st.orelse)
    return out
