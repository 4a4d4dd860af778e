"""ppl — programmable variational inference on JAX.

Models and families are programs with addressed random choices (``ppl.gen``); objectives are programs that ``sim``
families and take the ``density`` of models (``ppl.expectation``); gradient strategies are chosen per random choice;
ADEV compiles an objective into one plain JAX function that estimates its value and gradient without bias.
"""

from . import lang
from .core.family import Family, Program
from .core.interpreter import PPLError
from .core.lanes import vmap
from .core.params import fixed
from .core.plates import plate
from .core.primitives import add_cost, factor, sample, scope
from .core.strategy import STRATEGIES, registry_getattr
from .gradients import (
    Strategy,
    StrategyError,
    baseline,
    detach,
    enum,
    implicit_reparam,
    leave_one_out,
    mvd,
    reinforce,
    reparam,
)
from .interop import from_numpyro
from .objectives import SIR, Marginal, dreg_iwae, elbo, iwae, marginal, p_wake, q_wake, renyi, sir, vimco
from .objectives.auto import AutoGuide, auto_delta, auto_low_rank_normal, auto_multivariate_normal, auto_normal
from .objectives.flows import auto_flow
from .transforms.adev import Expectation, SumOver, expectation, sum_over
from .transforms.strategy_rewrite import with_strategies
from .transforms.tracing import GenFn, Trace, density, gen, seed, sim
from .workflow import Comparison, FitResult, compare_estimators, fit
from .workflow.predictive import Summary, predictive, summary, to_arviz

__version__ = "0.1.0"

__all__ = [
    "PPLError",
    "StrategyError",
    "sample",
    "factor",
    "add_cost",
    "scope",
    "plate",
    "fixed",
    "gen",
    "GenFn",
    "Family",
    "Program",
    "Trace",
    "seed",
    "sim",
    "density",
    "expectation",
    "sum_over",
    "SumOver",
    "Expectation",
    "with_strategies",
    "Strategy",
    "reparam",
    "implicit_reparam",
    "reinforce",
    "baseline",
    "enum",
    "mvd",
    "leave_one_out",
    "detach",
    "vmap",
    "elbo",
    "iwae",
    "renyi",
    "vimco",
    "dreg_iwae",
    "p_wake",
    "q_wake",
    "marginal",
    "sir",
    "Marginal",
    "SIR",
    "auto_normal",
    "auto_multivariate_normal",
    "auto_low_rank_normal",
    "auto_delta",
    "auto_flow",
    "AutoGuide",
    "from_numpyro",
    "fit",
    "FitResult",
    "compare_estimators",
    "Comparison",
    "predictive",
    "summary",
    "Summary",
    "to_arviz",
    "lang",
]
# The strategies are spelled out above (the public contract); one registered since is public all the same:
# ``ppl.<name>`` through the registry (PEP 562), and in ``__all__``. Adding a strategy touches only its own file.
__all__ += [n for n in STRATEGIES if n not in __all__]
__getattr__ = registry_getattr(__name__)
