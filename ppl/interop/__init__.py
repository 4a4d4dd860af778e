"""Interoperability with other probabilistic programming libraries (``ppl.from_numpyro``)."""

from .numpyro import NumPyroGenFn, Subsample, from_numpyro, numpyro_estimator

__all__ = ["from_numpyro", "NumPyroGenFn", "Subsample", "numpyro_estimator"]
