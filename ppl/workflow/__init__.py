"""The VI workflow: ``fit`` an objective with optax, ``compare_estimators`` to pick gradient strategies, and after a
fit ``predictive`` / ``summary`` / ``to_arviz`` (posterior and posterior predictive draws) and
``FitResult.save`` / ``FitResult.load`` (``ppl.workflow.results``)."""

from . import results  # noqa: F401  (the module of FitResult.save / FitResult.load, read_metadata)
from .compare import Comparison, compare_estimators
from .fit import FitResult, fit
from .predictive import Summary, predictive, summary, to_arviz

__all__ = ["fit", "FitResult", "compare_estimators", "Comparison", "predictive", "summary", "Summary", "to_arviz"]
