"""The gap rule: a bar with a NaN in any input is dropped, the kernel runs on the
remaining bars, and the result is scattered back with NaN (False for boolean
kernels) at the dropped bars.

Why: market data has holes (halts, missing prints, misaligned symbols). Letting a
NaN into a recursive filter (EMA, Wilder) would poison every later value, and
TA-Lib's C code does not skip NaNs at all. Compressing keeps every other bar's
value identical to what it would be if the missing bars had never existed, which
is also exactly what the streaming form does when it ignores a NaN bar.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def as_series(x, name: str = "x") -> np.ndarray:
    """Return `x` as a contiguous 1-D float64 array (no copy when it already is one)."""
    a = np.ascontiguousarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    return a


def missing_mask(arrays: Sequence[np.ndarray]) -> np.ndarray | None:
    """Boolean mask of bars where any input is NaN, or None when there are none.

    A cheap check first: the sum of a NaN-free, inf-free array is finite, so the
    common gap-free case costs one vectorised reduction per input.
    """
    if all(np.isfinite(np.add.reduce(a)) for a in arrays):
        return None
    bad = np.isnan(arrays[0])
    for a in arrays[1:]:
        bad |= np.isnan(a)
    return bad if bad.any() else None


def run_gapped(
    raw: Callable[..., np.ndarray],
    arrays: Sequence[np.ndarray],
    params: Sequence = (),
    boolean: bool = False,
) -> np.ndarray:
    """Apply `raw(*arrays, *params)` under the gap rule.

    `raw` must accept NaN-free arrays of equal length and return an array of that
    length. The arrays are assumed already converted by `as_series`.
    """
    n = len(arrays[0])
    for a in arrays[1:]:
        if len(a) != n:
            raise ValueError("all inputs must have the same length")
    dtype = np.bool_ if boolean else np.float64
    if n == 0:
        return np.empty(0, dtype=dtype)
    bad = missing_mask(arrays)
    if bad is None:
        return raw(*arrays, *params)
    good = ~bad
    out = np.zeros(n, dtype=np.bool_) if boolean else np.full(n, np.nan)
    if good.any():
        out[good] = raw(*(np.ascontiguousarray(a[good]) for a in arrays), *params)
    return out
