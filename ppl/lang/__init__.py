"""``ppl.lang``: a small text language for models, families, objectives and strategies, compiled to ``ppl``.

A program is a list of declarations. Models and guides compile to ``GenFn``s, objectives to ``Expectation``s, so every
transformation, strategy and objective of ``ppl`` applies to them unchanged; ``guide q = auto_normal(model)`` declares
the library's automatic family of a model (:mod:`ppl.lang.families`). ``docs/lang.md`` is the reference.

>>> import jax, ppl.lang
>>> prog = ppl.lang.compile('''
... model coin(n = 10) {
...   p ~ Beta(2.0, 2.0)
...   for i in range(n) { flip[i] ~ Bernoulli(p) }   # one lax.scan
... }
... guide coin_q(a = 0.0, b = 0.0) {
...   p ~ Beta(softplus(a), softplus(b)) by implicit_reparam
... }
... objective my_elbo(q_args = (0.0, 0.0)) {
...   z, log_q = sim(coin_q, *q_args)
...   return density(coin, z | data) - log_q
... }
... ''', data={"flip": [1, 1, 0, 1, 1, 1, 0, 1, 1, 1]})
>>> tr = prog["coin"].simulate(jax.random.key(0))
>>> tr.choices["flip"].shape
(10,)
>>> value, grads = prog["my_elbo"].value_and_grad_estimate(jax.random.key(1), *prog.init_args("my_elbo"))
>>> len(grads)
2

Entry points: :func:`compile` (source text), :func:`load` (a ``.ppl`` file), :func:`parse` (the syntax tree only);
the command line ``python -m ppl fit FILE.ppl --data DATA.json --steps N`` trains an objective with ``ppl.fit``.

Sharp edges:
    * Loop bounds are static: ``range(n)`` needs ``n`` a Python int (a literal, an int argument, or ``len(x)``).
    * A random choice inside a loop is written ``x[i] ~ ...``: its address is ``"x"`` and its value has the loop
      axis in front. Names assigned in a loop body are loop-local unless defined before the loop (then they are
      carried from one iteration to the next).
    * Python float arguments are static for ``ppl`` (each value stages anew); :meth:`Program.init_args` returns
      arrays for float defaults.
"""

from .ast import Program as SyntaxTree
from .compiler import Program, compile, compile_program, load
from .errors import LangCompileError, LangError, LangSyntaxError
from .parser import parse

__all__ = [
    "compile",
    "load",
    "parse",
    "compile_program",
    "Program",
    "SyntaxTree",
    "LangError",
    "LangSyntaxError",
    "LangCompileError",
]
