"""Interoperability with other probabilistic programming libraries (``ppl.from_numpyro``)."""

from .numpyro import NumPyroGenFn, Subsample, from_numpyro

__all__ = ["from_numpyro", "NumPyroGenFn", "Subsample"]
