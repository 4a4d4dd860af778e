"""Cache keys for compiled programs: ``fingerprint(x)`` is equal for two objects that trace to the same program
(``optax.adam(0.1)`` built twice), ``Id(x)`` equal only to ``x`` itself; ``cached`` keeps programs by such keys.

>>> import optax
>>> from ppl.workflow.fingerprint import fingerprint
>>> a, b = fingerprint(optax.adam(0.1)), fingerprint(optax.adam(0.1))
>>> a == b, a == fingerprint(optax.adam(0.2))
(True, False)
"""

from __future__ import annotations

import functools
import types
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np


class Id:
    """A cache-key part equal only to itself: the object, compared by identity (kept alive while the key lives)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Id) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


def fingerprint(x: Any) -> Any:
    """A hashable stand-in for ``x`` that is equal for two objects which trace to the same program: scalars, strings
    and dtypes by value and type, tuples (optax's named-tuple states and transformations) element by element,
    functions by code, closure, defaults and globals (so ``optax.adam(0.1)`` built twice matches), anything else by
    identity. Lists, dicts and arrays go by identity: a program may bake them in. Past 2,000 parts (or a cycle),
    ``x`` goes by identity too."""
    budget = [2000]

    def fp(x: Any, path: frozenset[int]) -> Any:
        budget[0] -= 1
        if budget[0] < 0 or id(x) in path:
            raise TooBig
        t = type(x)
        if x is None or t in (bool, int, str, bytes):
            return (t, x)
        if t in (float, complex):
            return (t, repr(x))  # -0.0 and 0.0 differ, nan equals nan
        if isinstance(x, np.dtype):
            return (t, str(x))
        path = path | {id(x)}
        if isinstance(x, tuple):
            return (t, tuple(fp(e, path) for e in x))
        if isinstance(x, types.FunctionType):
            try:
                cells = tuple(fp(c.cell_contents, path) for c in x.__closure__ or ())
            except ValueError:  # an empty cell
                return Id(x)
            kwdefaults = tuple(sorted((k, fp(v, path)) for k, v in (x.__kwdefaults__ or {}).items()))
            return (t, x.__code__, Id(x.__globals__), cells, fp(x.__defaults__, path), kwdefaults)
        if isinstance(x, functools.partial):
            kw = tuple(sorted((k, fp(v, path)) for k, v in x.keywords.items()))
            return (t, fp(x.func, path), fp(x.args, path), kw)
        return Id(x)

    try:
        return fp(x, frozenset())
    except TooBig:
        return Id(x)


class TooBig(Exception):
    pass


def cached(cache: OrderedDict[Any, Any], key: Any, make: Callable[[], Any], size: int) -> Any:
    """``cache[key]``, made by ``make()`` on a miss (the least recently used dropped beyond ``size`` entries);
    ``make()`` uncached when the key cannot be hashed or compared (array aux data in a pytree)."""
    try:
        hit = cache.get(key)
    except (TypeError, ValueError):
        return make()
    if hit is None:
        hit = cache[key] = make()
        while len(cache) > size:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return hit
