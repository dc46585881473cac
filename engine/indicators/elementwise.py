"""Elementwise helpers, on arrays of any shape, with the package's NaN convention: a NaN input
gives NaN at that bar (nothing else is affected), and out-of-domain inputs (log of a negative,
sqrt of a negative) give NaN silently instead of a RuntimeWarning.
"""

from __future__ import annotations

import numpy as np


def as_series(x, name: str = "x") -> np.ndarray:
    """`x` as a float64 array of any shape (one symbol's series, or symbols x bars: these
    functions are elementwise, so the value at a cell does not depend on the shape)."""
    return np.asarray(x, dtype=np.float64)


def _quiet(fn):
    def wrapped(*args):
        with np.errstate(invalid="ignore", divide="ignore"):
            return fn(*args)
    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


@_quiet
def sign(x):
    """-1, 0 or +1 by the sign of x; NaN stays NaN."""
    return np.sign(as_series(x))


@_quiet
def clamp(x, lo, hi):
    """min(max(x, lo), hi); NaN stays NaN."""
    return np.clip(as_series(x), lo, hi)


@_quiet
def minimum(a, b):
    """Elementwise min; NaN if either side is NaN."""
    return np.minimum(as_series(a), as_series(b))


@_quiet
def maximum(a, b):
    """Elementwise max; NaN if either side is NaN."""
    return np.maximum(as_series(a), as_series(b))


@_quiet
def absolute(x):
    """|x|; NaN stays NaN."""
    return np.abs(as_series(x))


@_quiet
def log(x):
    """Natural log; NaN for x < 0 and NaN inputs, -inf for 0."""
    return np.log(as_series(x))


@_quiet
def sqrt(x):
    """Square root; NaN for x < 0 and NaN inputs."""
    return np.sqrt(as_series(x))


@_quiet
def round_(x, digits=0):
    """Round half to even to `digits` decimals (numpy's rule); NaN stays NaN."""
    return np.round(as_series(x), int(digits))


ELEMENTWISE = {
    "sign": sign, "clamp": clamp, "min": minimum, "max": maximum, "abs": absolute,
    "log": log, "sqrt": sqrt, "round": round_,
}
