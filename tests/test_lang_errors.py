"""``ppl.lang`` errors: every bad program gets a located message (``file:line:column``, the source line, a caret) and
never a Python traceback from inside the compiler.

* syntax errors say what was found and what was expected;
* semantic errors (unknown distribution / function / strategy, undefined variable, duplicate address, wrong number
  of arguments, strategy on an unknown address, ...) point at the offending name;
* errors found while a program is staged (a traced loop bound, shapes that do not broadcast, a carry that changes
  shape, data too short for a loop, a missing observation) are located too;
* random edits of a valid program raise nothing but :class:`ppl.lang.LangError`.
"""

from __future__ import annotations

import random

import jax
import jax.numpy as jnp
import pytest

import ppl
import ppl.lang
from ppl.__main__ import main
from ppl.lang import LangCompileError, LangError, LangSyntaxError


def error_of(source: str, data=None, run=None) -> LangError:
    with pytest.raises(LangError) as info:
        prog = ppl.lang.compile(source, data)
        if run is not None:
            run(prog)
    return info.value


def check(e: LangError, source: str, line: int, column: int, *fragments: str, width: int | None = None) -> None:
    """``e`` is located at ``line:column``, shows that source line with a caret under it, and says ``fragments``."""
    text = str(e)
    assert (e.line, e.column) == (line, column), text
    head, src_line, caret, *rest = text.splitlines()
    assert head.startswith(f"<string>:{line}:{column}: "), text
    assert src_line == "    " + source.splitlines()[line - 1], text
    assert caret.index("^") == 4 + column - 1, text
    if width is not None:
        assert caret.count("^") == width, text
    for f in fragments:
        assert f in text, (f, text)
    assert "Traceback" not in text


# ---------------------------------------------------------------------------------------------- syntax

SYNTAX = [
    ("model m() {\n  p ~ Beta(2.0 2.0)\n}", 2, 16, "unexpected number 2.0", "expected one of: an operator, '(', ')'"),
    ("model m() {\n  x = \n}", 2, 7, "unexpected end of line", "expected an expression"),
    ("model m() {\n  p ~ Beta(2.0, 2.0) q ~ Normal(0.0, 1.0)\n}", 2, 22, "unexpected name 'q'", "'by', end of line"),
    ("model m() {\n  p ~ Beta(2.0, 2.0)\n", 2, 21, "unexpected end of file", "'}'"),
    ("model m() {\n  p ~ Beta(2.0, 2.0) $\n}", 2, 22, "unexpected character '$'", "expected one of"),
    ("model model() {\n}", 1, 7, "unexpected 'model'", "expected a name"),
    ("p ~ Normal(0.0, 1.0)", 1, 1, "unexpected name 'p'", "'guide', 'model', 'objective', 'strategies'"),
    ("model m() {\n  for i in range(3) x[i] ~ Normal(0.0, 1.0)\n}", 2, 21, "unexpected name 'x'", "'{'"),
    ("guide q() {\n  z ~ Normal(0.0, 1.0) by\n}", 2, 26, "unexpected end of line", "expected an expression"),
    ("model m() {\n  x ~ Normal(loc=0.0, 1.0)\n}", 2, 23, "positional argument after a keyword argument"),
]


@pytest.mark.parametrize("case", SYNTAX, ids=[s[3] for s in SYNTAX])
def test_syntax_errors(case):
    source, line, column, *fragments = case
    e = error_of(source)
    assert isinstance(e, LangSyntaxError | LangCompileError)
    check(e, source, line, column, *fragments)


def test_syntax_error_format_in_full():
    e = error_of("model coin(n) {\n  p ~ Beta(2.0, 2.0))\n}")
    assert str(e) == (
        "<string>:2:21: syntax error: unexpected ')'\n"
        "      p ~ Beta(2.0, 2.0))\n"
        "                        ^\n"
        "expected one of: 'by', end of line"
    )
    assert isinstance(e, LangSyntaxError) and isinstance(e, ppl.PPLError)


# ---------------------------------------------------------------------------------------------- semantic

MODEL_A = "model a(n) {\n  z ~ Normal(0.0, 1.0)\n}\n"

SEMANTIC = [
    # unknown names
    ("model m() {\n  x ~ Nromal(0.0, 1.0)\n}", 2, 7, 6, "unknown distribution 'Nromal' (did you mean 'Normal'?)"),
    ("model m() {\n  x ~ Normal(sofplus(1.0), 1.0)\n}", 2, 14, 7, "unknown function 'sofplus' (did you mean"),
    ("model m(mu) {\n  x ~ Normal(mux, 1.0)\n}", 2, 14, 3, "undefined variable 'mux' (did you mean 'mu'?)"),
    ("model m() {\n  y = x + 1.0\n  x ~ Normal(0.0, 1.0)\n}", 2, 7, 1, "undefined variable 'x'"),
    ("guide q() {\n  p ~ Beta(1.0, 1.0) by reinforc\n}", 2, 25, 8, "unknown strategy 'reinforc' (did you mean"),
    (
        "model m() {\n  x ~ Normal(0.0, 1.0)\n}\nobjective o = elbo2(m, m)",
        4,
        15,
        5,
        "unknown library objective 'elbo2'",
    ),
    (
        "model m() {\n  x ~ Normal(0.0, 1.0)\n}\nstrategies mm { x: reinforce }",
        4,
        12,
        2,
        "strategies for unknown function 'mm'",
    ),
    # duplicate addresses
    (
        "model m() {\n  x ~ Normal(0.0, 1.0)\n  x ~ Normal(x, 1.0)\n}",
        3,
        3,
        1,
        "duplicate address 'x' (first sampled at 2:3)",
    ),
    (
        "model m(n) {\n  for i in range(n) { x[i] ~ Normal(0.0, 1.0) }\n"
        "  for i in range(n) { x[i] ~ Normal(0.0, 1.0) }\n}",
        3,
        23,
        4,
        "duplicate address 'x'",
    ),
    (
        MODEL_A + "model m() {\n  z ~ Normal(0.0, 1.0)\n  w = a(1)\n}",
        6,
        7,
        1,
        "duplicate address 'z' (sampled by 'a', called here)",
    ),
    (
        MODEL_A + "guide q() {\n  z ~ Normal(0.0, 1.0)\n}\nobjective o() {\n  z1, l1 = sim(q)\n  z2, l2 = sim(q)\n"
        "  return l1 + l2\n}",
        9,
        16,
        1,
        "duplicate address 'z' (sampled by sim(q, ...) here)",
    ),
    # wrong number of arguments
    ("model m() {\n  x ~ Normal(0.0, 1.0, 2.0)\n}", 2, 7, 6, "wrong arguments for Normal(loc, scale)"),
    ("model m() {\n  x ~ Beta(1.0)\n}", 2, 7, 4, "missing a required argument: 'concentration0'"),
    ("model m() {\n  x ~ Normal(scale=1.0, mean=0.0)\n}", 2, 7, 6, "unexpected keyword argument 'mean'"),
    ("model m() {\n  x ~ Normal(exp(1.0, 2.0), 1.0)\n}", 2, 14, 3, "wrong arguments for exp(x)"),
    (MODEL_A + "model m() {\n  y ~ a(1, 2)\n}", 5, 7, 1, "wrong arguments for a(n)"),
    (MODEL_A + "model m() {\n  y = a()\n}", 5, 7, 1, "wrong arguments for a(n)"),
    (
        MODEL_A + "guide q(s) {\n  z ~ Normal(0.0, s)\n}\nobjective o() {\n  z, l = sim(q)\n  return l\n}",
        8,
        14,
        1,
        "wrong arguments for q(s)",
    ),
    (MODEL_A + "objective o = iwae(a, a)", 4, 15, 4, "wrong arguments for iwae(model, guide, K)"),
    ("guide q() {\n  z ~ Normal(0.0, 1.0) by baseline()\n}", 2, 27, 8, "wrong arguments for strategy baseline"),
    ("model m() {\n  factor(1.0, 2.0)\n}", 2, 3, 6, "wrong number of arguments for factor"),
    # strategies on unknown addresses
    (
        'guide q() {\n  p ~ Beta(1.0, 1.0)\n}\nstrategies q { "pp": reinforce }',
        4,
        16,
        4,
        "strategy for unknown address 'pp' (did you mean 'p'?): guide 'q' samples ['p']",
    ),
    (
        'guide q() {\n  p ~ Beta(1.0, 1.0)\n}\nstrategies q {\n  p: reinforce\n  "z*": enum\n}',
        6,
        3,
        4,
        "strategy for unknown address 'z*'",
    ),
    (
        "guide q() {\n  p ~ Beta(1.0, 1.0)\n}\nstrategies q { p: reinforce }\nstrategies q { p: enum }",
        5,
        16,
        1,
        "strategy for 'p' given twice",
    ),
    # loops
    ("model m(n) {\n  for i in range(n) { x ~ Normal(0.0, 1.0) }\n}", 2, 23, 1, "write x[i] ~ ..."),
    (
        "model m(n) {\n  for i in range(n) { x[j] ~ Normal(0.0, 1.0) }\n}",
        2,
        25,
        1,
        "index by the enclosing loop variables",
    ),
    ("model m() {\n  x[0] ~ Normal(0.0, 1.0)\n}", 2, 5, 1, "indexed by loop variables only"),
    ("model m(n) {\n  x[n] ~ Normal(0.0, 1.0)\n}", 2, 5, 1, "outside a for loop"),
    (
        "model m(n) {\n  for i in range(n) {\n    y[i] = 1.0\n    z = y + 1.0\n  }\n}",
        4,
        9,
        1,
        "being built by the loop: read this iteration's value as y[i]",
    ),
    ("model m(n) {\n  for i in range(n) { i = 2 }\n}", 2, 23, 1, "cannot assign to 'i': it is the loop variable"),
    ("model m(n) {\n  for i in n { x = 1 }\n}", 2, 12, 1, "a for loop iterates over range(n)"),
    ("model m() {\n  r = range(3)\n}", 2, 7, 5, "range is not available here"),
    # if / else
    (
        "model m() {\n  if true { a = 1.0 } else { b = 2.0 }\n  x ~ Normal(a, 1.0)\n}",
        3,
        14,
        1,
        "undefined variable 'a'",
        "note: 'a' is assigned at 2:13 in only one branch of an if",
    ),
    # misuse of names
    (
        "model m() {\n  x ~ Normal(data, 1.0)\n}",
        2,
        14,
        4,
        "undefined variable 'data'",
        "observed data are given by address",
    ),
    (
        "model m() {\n  x = Normal(0.0, 1.0)\n}",
        2,
        7,
        6,
        "Normal is a distribution: sample from it with 'x ~ Normal(...)'",
    ),
    (MODEL_A + "model m() {\n  a = 1.0\n}", 5, 3, 1, "cannot assign to 'a': it names a model"),
    (MODEL_A + "model m() {\n  x = a\n}", 5, 7, 1, "'a' is a model: call it"),
    ("model m() {\n  z, l = sim(m)\n}", 2, 10, 3, "sim is not available here", "only in an objective"),
    (
        "model m() {\n  x ~ Normal(0.0, 1.0)\n}\nobjective o() {\n  factor(1.0)\n  return 0.0\n}",
        5,
        3,
        6,
        "factor is not available here",
    ),
    (
        "objective o() {\n  return density(1.0, data)\n}",
        2,
        18,
        3,
        "the first argument of density is the name of a model",
    ),
    ("objective o() {\n  x = 1.0\n}", 2, 3, 7, "objective 'o' must end with 'return <value>'"),
    ("model m() {\n  return 1.0\n  x ~ Normal(0.0, 1.0)\n}", 2, 3, 10, "return must be the last statement"),
    (
        "model m() {\n  x ~ Normal(0.0, 1.0)\n}\nmodel m() {\n  y ~ Normal(0.0, 1.0)\n}",
        4,
        7,
        1,
        "'m' is defined twice (first at 1:7)",
    ),
    ("model m(a, a) {\n}", 1, 12, 1, "duplicate parameter 'a'"),
    ("model m(a = 1.0, b) {\n}", 1, 18, 1, "needs a default"),
    ("model m(a = x) {\n}", 1, 13, 1, "undefined variable 'x'"),
    ("guide q() {\n  z ~ Normal(0.0, 1.0) by enum(2)\n}", 2, 27, 4, "unknown strategy 'enum'"),
    ("guide q() {\n  z ~ Normal(0.0, 1.0) by baseline\n}", 2, 27, 8, "baseline needs an argument"),
    ("model m() {\n  x = f(1.0)\n}", 2, 7, 1, "unknown function 'f'"),
    ("model m() {\n  x = exp(1.0)(2.0)\n}", 2, 7, 8, "only named functions can be called"),
    ("model m() {\n  x = (1.0)(2.0)\n}", 2, 8, 3, "only named functions can be called"),
    ("model m() {\n  1.0 = 2.0\n}", 2, 3, 3, "cannot assign to this expression"),
]


@pytest.mark.parametrize("case", SEMANTIC, ids=[s[4][:40] for s in SEMANTIC])
def test_semantic_errors_point_at_the_offending_name(case):
    source, line, column, width, *fragments = case
    e = error_of(source)
    assert isinstance(e, LangCompileError), str(e)
    check(e, source, line, column, *fragments, width=width)


# ---------------------------------------------------------------------------------------------- staging-time errors


def simulate(*args):
    return lambda prog: prog["m"].simulate(jax.random.key(0), *args)


STAGING = [
    (
        "model m(n) {\n  for i in range(n) { x[i] ~ Normal(0.0, 1.0) }\n}",
        simulate(jnp.asarray(3)),
        2,
        18,
        "a loop bound must be a static integer",
    ),
    ("model m() {\n  x ~ Normal(zeros(3) + zeros(2), 1.0)\n}", simulate(), 2, 14, "'+': add got incompatible shapes"),
    (
        "model m() {\n  h = 0.0\n  for i in range(3) { h = zeros(2) + h }\n}",
        simulate(),
        3,
        23,
        "loop variable 'h' changes shape from () to (2,)",
    ),
    (
        "model m() {\n  h = 0\n  for i in range(3) { h = h + 0.5 }\n}",
        simulate(),
        3,
        23,
        "starts as int32 but the loop assigns float32",
    ),
    (
        "model m(xs) {\n  for i in range(5) { y[i] ~ Normal(xs[i], 1.0) }\n}",
        simulate(jnp.zeros(3)),
        2,
        37,
        "xs has length 3 but the loop reads xs[i] up to i = 4",
    ),
    (
        "model m(c) {\n  if c > 0.0 { y = zeros(3) } else { y = 1.0 }\n}",
        simulate(jnp.asarray(1.0)),
        2,
        3,
        "'y' differs between the branches of this if (shape (3,) / ())",
    ),
    (
        "model m(xs) {\n  if xs > 0.0 { y = 1.0 }\n}",
        simulate(jnp.zeros(3)),
        2,
        6,
        "the condition of an if must be a scalar",
    ),
    ("model m() {\n  a = 1.0 | 2.0\n}", simulate(), 2, 7, "'|' merges choice maps"),
    ("model m() {\n  a, b = (1.0, 2.0, 3.0)\n}", simulate(), 2, 3, "cannot unpack 3 into 2 names"),
    (
        "model m() {\n  x ~ Normal(0.0, 1.0)\n  y ~ Normal(x, 1.0)\n}\nguide q() {\n  x ~ Normal(0.0, 1.0)\n}\n"
        "objective o() {\n  z, lq = sim(q)\n  return density(m, z) - lq\n}",
        lambda p: p["o"].estimate(jax.random.key(0)),
        10,
        10,
        "density: m.assess: missing choice(s) ['y']",
    ),
    (
        'model m() {\n  y ~ Normal(0.0, 1.0)\n}\nobjective o() {\n  return data["nope"]\n}',
        lambda p: p["o"].estimate(jax.random.key(0)),
        5,
        10,
        "no entry 'nope'",
    ),
]


@pytest.mark.parametrize("source, run, line, column, fragment", STAGING, ids=[s[4][:40] for s in STAGING])
def test_staging_errors_are_located(source, run, line, column, fragment):
    e = error_of(source, run=run)
    check(e, source, line, column, fragment)


def test_wrong_number_of_arguments_from_python():
    prog = ppl.lang.compile("model m(a, b = 1.0) {\n  x ~ Normal(a, b)\n}")
    with pytest.raises(TypeError, match=r"model m\(a, b\) takes 1 to 2 argument\(s\), got 3"):
        prog["m"].simulate(jax.random.key(0), 0.0, 1.0, 2.0)


def test_missing_default_for_init_args():
    prog = ppl.lang.compile(
        "model m() {\n  x ~ Normal(0.0, 1.0)\n}\nguide q(loc) {\n  x ~ Normal(loc, 1.0)\n}\nobjective o = elbo(m, q)"
    )
    with pytest.raises(LangError, match="parameter 'loc' of q has no default") as info:
        prog.init_args("o")
    assert (info.value.line, info.value.column) == (4, 9)


def test_load_names_the_file(tmp_path):
    path = tmp_path / "bad.ppl"
    path.write_text("model m() {\n  x ~ Nromal(0.0, 1.0)\n}\n")
    with pytest.raises(LangError) as info:
        ppl.lang.load(path)
    assert str(info.value).startswith(f"{path}:2:7: error: unknown distribution 'Nromal'")


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    path = tmp_path / "bad.ppl"
    path.write_text("model m() {\n  x ~ Normal(0.0, 1.0\n}\n")
    assert main(["fit", str(path), "--steps", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:3:1: syntax error: unexpected '}}'") and "Traceback" not in err
    assert "    ^" in err and "expected one of" in err


# ---------------------------------------------------------------------------------------------- robustness

VALID = """model coin(n = 3) {
  p ~ Beta(2.0, 2.0)
  for i in range(n) { flip[i] ~ Bernoulli(p) }
  if p > 0.5 { a = 1.0 } else { a = -1.0 }
  return a * p
}
guide coin_q(a = 0.0, b = 0.0) {
  p ~ Beta(softplus(a), softplus(b)) by implicit_reparam
}
objective loss = elbo(coin, coin_q)
objective mine(q_args = (0.0, 0.0)) {
  z, lq = sim(coin_q, *q_args)
  return density(coin, z | data) - lq
}
strategies coin_q { "p": reinforce }
"""


def test_random_edits_raise_only_lang_errors():
    rng = random.Random(0)
    alphabet = list("(){}[],~=+-*/<>|:;\"'#\n .0123456789abcxyzpi_") + ["for", "if", "else", "by", "model", "return"]
    outcomes = {"ok": 0, "error": 0}
    for _ in range(300):
        s = list(VALID)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(s))
            op = rng.random()
            if op < 0.4:
                del s[i]
            elif op < 0.8:
                s.insert(i, rng.choice(alphabet))
            else:
                s[i] = rng.choice(alphabet)
        source = "".join(s)
        try:
            prog = ppl.lang.compile(source, data={"flip": jnp.ones(3, jnp.int32)})
            outcomes["ok"] += 1
            del prog
        except LangError as e:
            outcomes["error"] += 1
            assert e.message and "Traceback" not in str(e)
    assert outcomes["error"] > 100 and outcomes["ok"] > 10, outcomes


def test_library_objective_data_errors_are_located(tmp_path):
    source = (
        "model m(n = 3) {\n  for i in range(n) { y[i] ~ Normal(0.0, 1.0) }\n}\nguide q() {\n}\n"
        "objective loss = elbo(m, q)"
    )
    e = error_of(source, data={"yy": jnp.zeros(3)})
    check(e, source, 6, 18, "observed address(es) ['yy'] of the data are not sampled by model 'm'")
    e = error_of(source, data={"y": jnp.zeros(4)}, run=lambda p: p["loss"].estimate(jax.random.key(0), (), ()))
    check(e, source, 6, 18, "elbo: m.density: choice 'y' has shape (4,) but the program's site expects (3,)")


def test_cli_locates_errors_raised_after_compilation(tmp_path, capsys):
    # was: a StrategyError raised by fit escaped as a Python traceback
    path = tmp_path / "strat.ppl"
    path.write_text(
        "model m() {\n  z ~ Normal(0.0, 1.0)\n}\n"
        "guide q(loc = 0.0) {\n  z ~ Normal(loc, 1.0) by enum\n}\n"
        "objective loss = elbo(m, q)\n"
    )
    assert main(["fit", str(path), "--steps", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:2:3: error: StrategyError: enum at 'z'") and "Traceback" not in err


def test_cli_rejects_unknown_freeze_names(tmp_path, capsys):
    # was: --freeze walk.rhoo (a typo) was ignored
    path = tmp_path / "f.ppl"
    path.write_text("model m() {\n  z ~ Normal(0.0, 1.0)\n}\n"
                    "guide q(loc = 0.0, scale = 1.0) {\n  z ~ Normal(loc, scale)\n}\nobjective loss = elbo(m, q)\n")
    assert main(["fit", str(path), "--steps", "2", "--freeze", "q.lco"]) == 2
    err = capsys.readouterr().err
    assert "--freeze 'q.lco'" in err and "did you mean 'q.loc'" in err
    assert main(["fit", str(path), "--steps", "2", "--freeze", "q.loc"]) == 0


def test_cli_reports_and_limits_skipped_steps(tmp_path, capsys):
    # was: a run where 51 of 200 steps were skipped printed a normal-looking result
    path = tmp_path / "nan.ppl"
    path.write_text("model m() {\n  z ~ HalfNormal(1.0)\n}\nguide q(loc = 0.0) {\n  z ~ Normal(loc, 1.0)\n}\n"
                    "objective loss = elbo(m, q)\n")
    assert main(["fit", str(path), "--steps", "20"]) == 1  # a negative z has log density -inf: about half skipped
    out = capsys.readouterr()
    assert "skipped" in out.out and "steps as non-finite" in out.out
    assert "were skipped as non-finite (more than --max-skipped 0.1)" in out.err
    assert main(["fit", str(path), "--steps", "20", "--max-skipped", "1.0"]) == 0
