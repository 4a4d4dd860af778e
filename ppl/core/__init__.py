"""Primitives, the generic interpreter, and staging."""
