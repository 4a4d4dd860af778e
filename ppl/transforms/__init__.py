"""Program transformations: tracing/density (``tracing``), ADEV (``adev``), strategy rewriting."""
