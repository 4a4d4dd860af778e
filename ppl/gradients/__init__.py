"""Gradient strategies: ``from ppl.gradients import reparam, reinforce, enum, mvd, baseline, ...``."""

from ..core.strategy import Strategy, StrategyError
from .strategies import (
    MVD,
    Detach,
    Enum,
    ImplicitReparam,
    LeaveOneOut,
    Reinforce,
    Reparam,
    baseline,
    default_strategy,
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
