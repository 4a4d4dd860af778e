"""Gradient strategies: ``from ppl.gradients import reparam, reinforce, enum, mvd, baseline, ...``.

Importing this package registers them (:data:`ppl.core.strategy.STRATEGIES`). The names below are the public
contract, spelled out for readers and tools; a strategy added since is served from the registry all the same
(``__getattr__``, ``__all__``), so adding one touches only its own file.
"""

from ..core.strategy import STRATEGIES, Strategy, StrategyError, default_strategy, registry_getattr
from .strategies import (
    MVD,
    Detach,
    Enum,
    ImplicitReparam,
    LeaveOneOut,
    Reinforce,
    Reparam,
    baseline,
    detach,
    enum,
    implicit_reparam,
    leave_one_out,
    mvd,
    reinforce,
    reparam,
)

__all__ = [
    "Strategy",
    "StrategyError",
    "Reparam",
    "ImplicitReparam",
    "Reinforce",
    "Enum",
    "MVD",
    "LeaveOneOut",
    "reparam",
    "implicit_reparam",
    "reinforce",
    "baseline",
    "enum",
    "mvd",
    "leave_one_out",
    "default_strategy",
    "Detach",
    "detach",
]
__all__ += [n for n in STRATEGIES if n not in __all__]
__getattr__ = registry_getattr(__name__)
