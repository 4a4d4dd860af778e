"""The VI workflow: ``fit`` an objective with optax, ``compare_estimators`` to pick gradient strategies."""

from .compare import Comparison, compare_estimators
from .fit import FitResult, fit

__all__ = ["fit", "FitResult", "compare_estimators", "Comparison"]
