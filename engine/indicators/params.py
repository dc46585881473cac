"""Parameter checks shared by the vectorised and streaming forms.

Why: the DSL may hand us 14.0 for 14; we accept integral floats but refuse
anything that would silently change the meaning of a window (0, negatives, 2.5).
"""

from __future__ import annotations

import math


def window(value, name: str = "length", minimum: int = 1) -> int:
    """Return `value` as an int >= `minimum`, or raise ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    n = int(f)
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {n}")
    return n


def real(value, name: str) -> float:
    """Return `value` as a finite float, or raise ValueError."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(f):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return f


def macd_periods(fast, slow, signal) -> tuple[int, int, int]:
    """Validate MACD periods. Like TA-Lib, a fast period above the slow one is swapped."""
    f = window(fast, "fast", 2)
    s = window(slow, "slow", 2)
    g = window(signal, "signal", 1)
    if s < f:
        f, s = s, f
    return f, s, g


HURST_MAX_LAG = 20
HURST_MIN_LENGTH = HURST_MAX_LAG + 2  # at least two lag-20 differences per window
