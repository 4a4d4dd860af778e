"""Errors of the surface language: each names ``file:line:column``, shows the source line and a caret.

:class:`LangSyntaxError` (the parser: what it found and what it expected) and :class:`LangCompileError` (unknown
distribution or function, undefined variable, duplicate address, wrong number of arguments, strategy on an unknown
address, ...) are both :class:`LangError`, itself a :class:`ppl.PPLError`.

>>> import ppl.lang
>>> try:
...     ppl.lang.compile("model m() {\\n  x ~ Nromal(0.0, 1.0)\\n}")
... except ppl.lang.LangError as e:
...     print(e)
<string>:2:7: error: unknown distribution 'Nromal' (did you mean 'Normal'?)
      x ~ Nromal(0.0, 1.0)
          ^^^^^^
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from ..core.interpreter import PPLError
from .ast import Pos


class LangError(PPLError):
    """An error in a ``ppl.lang`` program, located in its source.

    Attributes: ``message`` (one line), ``pos`` (:class:`~ppl.lang.ast.Pos` or ``None``), ``filename``, ``line``,
    ``column`` and ``hint`` (extra lines, or ``""``).
    """

    kind = "error"

    def __init__(
        self,
        message: str,
        pos: Pos | None = None,
        source: str | None = None,
        filename: str = "<string>",
        hint: str = "",
    ):
        self.message, self.pos, self.source, self.filename, self.hint = message, pos, source, filename, hint
        super().__init__(self._format())

    @property
    def line(self) -> int | None:
        return self.pos.line if self.pos else None

    @property
    def column(self) -> int | None:
        return self.pos.column if self.pos else None

    def located(self, source: str, filename: str) -> LangError:
        """The same error with the program's source attached (for the excerpt), if it has none yet."""
        if self.source is None:
            self.source, self.filename = source, filename
            self.args = (self._format(),)
        return self

    def _format(self) -> str:
        if self.pos is None or not self.pos.line:
            head = f"{self.filename}: {self.kind}: {self.message}"
            return head + (f"\n{self.hint}" if self.hint else "")
        head = f"{self.filename}:{self.pos.line}:{self.pos.column}: {self.kind}: {self.message}"
        lines = [head]
        if self.source is not None:
            lines += excerpt(self.source, self.pos)
        if self.hint:
            lines.append(self.hint)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.args[0] if self.args else self._format()


class LangSyntaxError(LangError):
    """The program does not parse: the message says what was found, the hint what was expected."""

    kind = "syntax error"


class LangCompileError(LangError):
    """The program parses but is not valid: the position is that of the offending name."""


def excerpt(source: str, pos: Pos) -> list[str]:
    """The source line of ``pos`` and a caret line under the span (``^`` for one character, ``^^^`` for a name)."""
    src_lines = source.splitlines()
    if not 1 <= pos.line <= len(src_lines):
        return []
    text = src_lines[pos.line - 1].expandtabs(1)
    start = max(pos.column - 1, 0)
    end = pos.end_column - 1 if pos.end_line == pos.line and pos.end_column > pos.column else start + 1
    end = max(min(end, len(text)), start + 1)
    return ["    " + text, "    " + " " * start + "^" * (end - start)]


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest candidate, or ``""``."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
