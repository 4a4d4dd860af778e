"""Parse ``ppl.lang`` source into the syntax tree of :mod:`ppl.lang.ast` (lark, LALR(1), ``grammar.lark``).

A post-lexer makes newlines statement terminators except where a statement obviously continues: inside ``( )`` and
``[ ]``, after ``,`` or ``{``, and before ``else``; ``;`` is a newline. A syntax error is a
:class:`~ppl.lang.errors.LangSyntaxError` with ``line:column``, the source line, a caret, and what was expected.

>>> from ppl.lang.parser import parse
>>> prog = parse("model coin(n) {\\n  p ~ Beta(2.0, 2.0)\\n}")
>>> prog.decls[0].name.id, [p.name for p in prog.decls[0].params]
('coin', ['n'])
>>> try:
...     parse("model coin(n) {\\n  p ~ Beta(2.0 2.0)\\n}")
... except Exception as e:
...     print(e)
<string>:2:16: syntax error: unexpected number 2.0
      p ~ Beta(2.0 2.0)
                   ^^^
expected one of: an operator, '(', ')', ',', '['
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from importlib import resources

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError

from . import ast as A
from .errors import LangCompileError, LangError, LangSyntaxError

# ---------------------------------------------------------------------------------------------- post-lexer

_OPEN, _CLOSE = {"LPAR", "LSQB"}, {"RPAR", "RSQB"}
_NO_NL_AFTER = {"_NL", "LBRACE", "COMMA"}


class _Newlines:
    """Drop the newlines that do not end a statement; end the statement before ``}`` and at the end of file."""

    always_accept = ("_NL",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        depth, prev, pending = 0, None, None
        for tok in stream:
            if tok.type == "_NL":
                if depth == 0 and prev is not None and prev not in _NO_NL_AFTER and pending is None:
                    pending = tok
                continue
            if pending is not None:
                if tok.type != "ELSE":
                    yield pending
                    prev = "_NL"
                pending = None
            if tok.type in _OPEN:
                depth += 1
            elif tok.type in _CLOSE:
                depth = max(depth - 1, 0)
            elif tok.type == "RBRACE" and depth == 0 and prev not in _NO_NL_AFTER:
                yield Token.new_borrow_pos("_NL", "", tok)
            yield tok
            prev = tok.type
        if pending is not None:
            yield pending
        elif prev is not None and prev != "_NL":
            yield Token("_NL", "", 0, 0, 0, 0, 0, 0)


@functools.cache
def _lark() -> Lark:
    grammar = resources.files("ppl.lang").joinpath("grammar.lark").read_text()
    return Lark(
        grammar, parser="lalr", lexer="basic", postlex=_Newlines(), propagate_positions=True, maybe_placeholders=True
    )


# ---------------------------------------------------------------------------------------------- tree -> AST


def _pos(meta) -> A.Pos:
    if getattr(meta, "empty", True):
        return A.NOWHERE
    return A.Pos(meta.line, meta.column, meta.end_line, meta.end_column)


def _tpos(tok: Token) -> A.Pos:
    return A.Pos(tok.line, tok.column, tok.end_line, tok.end_column)


def _span(a: A.Pos, b: A.Pos) -> A.Pos:
    return A.Pos(a.line, a.column, b.end_line, b.end_column)


def _binop(op: str):
    def rule(self, meta, children):
        left, right = children
        return A.BinOp(op, left, right, _pos(meta))

    return rule


@v_args(meta=True)
class _ToAST(Transformer):
    # ---- declarations
    def start(self, meta, children):
        return list(children)

    def genfn(self, meta, children):
        kind, name, params, body = children
        return A.GenFnDef(str(kind), name, tuple(params or ()), body, _pos(meta))

    def guide_auto(self, meta, children):
        _kw, name, call = children
        return A.GuideAuto(name, call, _pos(meta))

    def objective_def(self, meta, children):
        name, params, body = children
        return A.ObjectiveDef(name, tuple(params or ()), body, _pos(meta))

    def objective_lib(self, meta, children):
        name, call = children
        return A.ObjectiveLib(name, call, _pos(meta))

    def strategies_def(self, meta, children):
        name, *entries = children
        return A.StrategiesDef(name, tuple(entries), _pos(meta))

    def strategy_entry(self, meta, children):
        tok, strategy = children
        pattern = tok[1:-1] if tok.type == "STRING" else str(tok)
        return A.StrategyEntry(pattern, strategy, _tpos(tok))

    def params(self, meta, children):
        return [c for c in children if c is not None]

    def param(self, meta, children):
        tok, default = children
        return A.Param(str(tok), default, _tpos(tok))

    def block(self, meta, children):
        return tuple(children)

    # ---- statements
    def sample(self, meta, children):
        targets, dist, _by, strategy = children
        return A.Sample(targets, dist, strategy, _pos(meta))

    def assign(self, meta, children):
        targets, value = children
        return A.Assign(targets, value, _pos(meta))

    def expr_stmt(self, meta, children):
        return A.ExprStmt(children[0], _pos(meta))

    def targets(self, meta, children):
        return tuple(_target(c) for c in children)

    def for_stmt(self, meta, children):
        var, it, body = children
        if not (
            isinstance(it, A.Call)
            and isinstance(it.func, A.Name)
            and it.func.id == "range"
            and 1 <= len(it.args) <= 2
            and not it.keywords
            and not any(isinstance(a, A.Starred) for a in it.args)
        ):
            raise LangCompileError("a for loop iterates over range(n) or range(start, stop)", it.pos)
        start, stop = (None, it.args[0]) if len(it.args) == 1 else it.args
        return A.For(var, start, stop, body, _pos(meta))

    def plate_stmt(self, meta, children):
        _kw, name, (args, kws), _as, var, body = children
        if (
            len(args) != 1
            or any(isinstance(a, A.Starred) for a in args)
            or any(k.name != "subsample_size" for k in kws)
        ):
            raise LangCompileError(
                "a plate is written plate name(size) or plate name(size, subsample_size=b), optionally 'as idx'",
                name.pos,
            )
        sub = kws[0].value if kws else None
        return A.Plate(name, args[0], sub, var, body, _pos(meta))

    def if_stmt(self, meta, children):
        cond, then, _else, orelse = children
        if orelse is None:
            orelse = ()
        elif isinstance(orelse, A.If):
            orelse = (orelse,)
        return A.If(cond, then, orelse, _pos(meta))

    def return_stmt(self, meta, children):
        items = [c for c in children if c is not None]
        if len(items) == 1 and len(children) == 1:
            return A.Return(items[0], _pos(meta))
        return A.Return(A.TupleExpr(tuple(items), _span(items[0].pos, items[-1].pos)), _pos(meta))

    # ---- expressions
    or_op = lambda self, meta, c: A.BoolOp("or", c[0], c[1], _pos(meta))  # noqa: E731
    and_op = lambda self, meta, c: A.BoolOp("and", c[0], c[1], _pos(meta))  # noqa: E731
    not_op = lambda self, meta, c: A.UnaryOp("not", c[0], _pos(meta))  # noqa: E731
    neg = lambda self, meta, c: A.UnaryOp("-", c[0], _pos(meta))  # noqa: E731
    pos = lambda self, meta, c: A.UnaryOp("+", c[0], _pos(meta))  # noqa: E731
    add, sub, mul, div = _binop("+"), _binop("-"), _binop("*"), _binop("/")
    floordiv, mod, matmul, pow, merge_op = _binop("//"), _binop("%"), _binop("@"), _binop("**"), _binop("|")

    def compare(self, meta, children):
        left, op, right = children
        return A.BinOp(str(op), left, right, _pos(meta))

    def call(self, meta, children):
        func, args = children
        args = args or ([], [])
        return A.Call(func, tuple(args[0]), tuple(args[1]), _pos(meta))

    def arguments(self, meta, children):
        pos_args, kw = [], []
        for c in children:
            if c is None:
                continue
            if isinstance(c, A.Keyword):
                kw.append(c)
            elif kw:
                raise LangSyntaxError("positional argument after a keyword argument", c.pos)
            else:
                pos_args.append(c)
        return pos_args, kw

    def starred(self, meta, children):
        return A.Starred(children[0], _pos(meta))

    def keyword(self, meta, children):
        tok, value = children
        return A.Keyword(str(tok), value, _span(_tpos(tok), value.pos))

    def index(self, meta, children):
        value, subs = children
        return A.Index(value, tuple(subs), _pos(meta))

    def subscripts(self, meta, children):
        return [c for c in children if c is not None]

    def slice(self, meta, children):
        start, stop = children
        return A.Slice(start, stop, _pos(meta))

    def number(self, meta, children):
        (tok,) = children
        s = str(tok)
        value = int(s) if s.isdigit() else float(s)
        return A.Num(value, _tpos(tok))

    def string(self, meta, children):
        (tok,) = children
        return A.Str(tok[1:-1], _tpos(tok))

    def boolean(self, meta, children):
        (tok,) = children
        return A.Bool(tok.lower() == "true", _tpos(tok))

    def name(self, meta, children):
        (tok,) = children
        return A.Name(str(tok), _tpos(tok))

    def tuple(self, meta, children):
        return A.TupleExpr(tuple(c for c in children if c is not None), _pos(meta))

    def list(self, meta, children):
        return A.ListExpr(tuple(c for c in children if c is not None), _pos(meta))


def _target(e) -> A.Target:
    if isinstance(e, A.Name):
        return A.Target(e.id, (), e.pos)
    if isinstance(e, A.Index) and isinstance(e.value, A.Name):
        bad = [i for i in e.indices if not isinstance(i, A.Name)]
        if bad:
            raise LangCompileError(
                "an indexed target must be indexed by loop variables only (write x[i] ~ ... inside "
                "'for i in range(n)')",
                bad[0].pos,
            )
        return A.Target(e.value.id, tuple(e.indices), e.pos)
    raise LangCompileError(
        "cannot assign to this expression: the left of '=' or '~' is a name, x[i] "
        "(i a loop variable), or a list of those",
        e.pos,
    )


# ---------------------------------------------------------------------------------------------- errors

_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "_NL": "end of line",
    "$END": "end of file",
    "COMPARE": "a comparison",
}
_EXPR_START = {
    "NAME",
    "NUMBER",
    "STRING",
    "LPAR",
    "LSQB",
    "MINUS",
    "PLUS",
    "NOT",
    "TRUE",
    "FALSE",
    "PY_TRUE",
    "PY_FALSE",
}
_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "PERCENT", "AT", "VBAR", "COMPARE", "AND", "OR"}


def _describe_terminal(name: str) -> str:
    if name in _WORDS:
        return _WORDS[name]
    try:
        pat = _lark().get_terminal(name).pattern
    except KeyError:
        return name.lower()
    return repr(pat.value) if pat.type == "str" else name.lower()


def _describe_token(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    if tok.type == "_NL":
        return "end of line" if tok.value != ";" else "';'"
    if tok.type == "NAME":
        return f"name {tok.value!r}"
    if tok.type in ("NUMBER", "STRING"):
        return f"{tok.type.lower()} {tok.value}"
    return repr(tok.value)


def _expected(names: set[str]) -> str:
    """A short description of the terminals the parser could accept (expression starters and operators grouped)."""
    names = set(names)
    words: list[str] = []
    if {"NAME", "NUMBER", "LPAR"} <= names:
        words.append("an expression")
        names -= _EXPR_START
    ops = {n for n in names if n in _OPERATORS or _describe_terminal(n) in ("'**'", "'//'")}
    if len(ops) >= 4:
        words.append("an operator")
        names -= ops
    words += sorted(_describe_terminal(n) for n in names)
    if not words:
        return ""
    return f"expected {words[0]}" if len(words) == 1 else "expected one of: " + ", ".join(words)


def _accepted(source: str) -> set[str]:
    """The terminals the parser accepts where the lexer failed (found by replaying the parse)."""
    ip = _lark().parse_interactive(source)
    try:
        for _ in ip.iter_parse():
            pass
    except UnexpectedInput:
        pass
    try:
        return set(ip.accepts())
    except Exception:  # pragma: no cover - best effort only
        return set()


def _syntax_error(e: UnexpectedInput, source: str, filename: str) -> LangSyntaxError:
    if isinstance(e, UnexpectedToken):
        tok = e.token
        if tok.type == "$END" or not tok.line:
            lines = source.splitlines() or [""]
            line = len(lines)
            pos = A.Pos(line, len(lines[-1]) + 1, line, len(lines[-1]) + 2)
        else:
            pos = A.Pos(
                tok.line, tok.column, tok.end_line or tok.line, tok.end_column or tok.column + max(len(tok.value), 1)
            )
            if tok.type == "_NL" and tok.value != ";":
                pos = A.Pos(tok.line, tok.column, tok.line, tok.column + 1)
        message = f"unexpected {_describe_token(tok)}"
        ip = getattr(e, "interactive_parser", None)
        hint = _expected(set(ip.accepts()) if ip is not None else set(e.expected))
    elif isinstance(e, UnexpectedCharacters):
        pos = A.Pos(e.line, e.column, e.line, e.column + 1)
        message = f"unexpected character {e.char!r}"
        hint = _expected(_accepted(source))
    else:  # pragma: no cover - other lark errors (UnexpectedEOF is not raised by LALR)
        pos = A.Pos(getattr(e, "line", 0) or 0, getattr(e, "column", 0) or 0, 0, 0)
        message, hint = str(e).splitlines()[0], ""
    return LangSyntaxError(message, pos, source, filename, hint)


def parse(source: str, filename: str = "<string>") -> A.Program:
    """Parse ``source`` into an :class:`~ppl.lang.ast.Program` (or raise :class:`LangSyntaxError`)."""
    try:
        tree = _lark().parse(source)
        decls = _ToAST().transform(tree)
    except UnexpectedInput as e:
        raise _syntax_error(e, source, filename) from None
    except VisitError as e:
        if isinstance(e.orig_exc, LangError):
            raise e.orig_exc.located(source, filename) from None
        raise
    except RecursionError:
        raise LangSyntaxError("the program is nested too deeply", None, source, filename) from None
    if isinstance(decls, Tree):  # pragma: no cover
        raise LangSyntaxError("could not parse the program", None, source, filename)
    lines = source.splitlines() or [""]
    return A.Program(tuple(decls), source, filename, A.Pos(1, 1, len(lines), len(lines[-1]) + 1))
