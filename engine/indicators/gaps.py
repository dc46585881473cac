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

import contextlib
from contextvars import ContextVar
from typing import Callable, Sequence

import numpy as np

# facts about input arrays (finite or not, leading NaN run) while evaluating a plan, whose node
# values are never written to once made: an array read by several kernels is checked once
_FACTS: ContextVar[dict | None] = ContextVar("gap_facts", default=None)


@contextlib.contextmanager
def remembering():
    """Within the block, run_gapped remembers what it found out about each input array (keyed
    by its memory, length and stride; the array is kept alive with the fact, so the key cannot
    be reused by another array). For inputs that are not written to inside the block."""
    token = _FACTS.set({})
    try:
        yield
    finally:
        _FACTS.reset(token)


def _fact(kind: str, a: np.ndarray, find: Callable[[np.ndarray], object]):
    memo = _FACTS.get()
    if memo is None:
        return find(a)
    key = (kind, a.__array_interface__["data"][0], a.shape[0], a.strides[0])
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = (find(a), a)
    return hit[0]


def as_series(x, name: str = "x") -> np.ndarray:
    """Return `x` as a contiguous 1-D float64 array (no copy when it already is one)."""
    a = np.ascontiguousarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    return a


def all_finite(a: np.ndarray) -> bool:
    """True when `a` holds no NaN and no infinity (one vectorised reduction: the sum of
    squares of a NaN-free, inf-free array is finite unless it overflows, past 1e154 in
    magnitude, and a false "no" only sends the caller down its exact path). The sum of
    squares is a dot product, which BLAS does 2-3x faster than a plain sum."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(np.dot(a, a) if a.dtype == np.float64 else np.add.reduce(a)))


def divide_nan_at_zero(num: np.ndarray, den: np.ndarray, first: int = 0) -> np.ndarray:
    """num / den into num, NaN wherever den is 0 (0/0 and x/0 alike: no scale, no value). The
    zeros are looked for only when something from `first` on is not finite, which a zero
    denominator always makes it."""
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(num, den, out=num)
    if not all_finite(num[first:]):
        num[den == 0] = np.nan
    return num


def missing_mask(arrays: Sequence[np.ndarray]) -> np.ndarray | None:
    """Boolean mask of bars where any input is NaN, or None when there are none.

    A cheap check first: the sum of a NaN-free, inf-free array is finite, so the
    common gap-free case costs one vectorised reduction per input.
    """
    if all(all_finite(a) for a in arrays):
        return None
    bad = np.isnan(arrays[0])
    for a in arrays[1:]:
        bad |= np.isnan(a)
    return bad if bad.any() else None


def nan_prefix(a: np.ndarray) -> int:
    """Number of leading NaNs of `a`, looking only at a geometrically growing head."""
    m = 64
    while True:
        head = np.isnan(a[:m])
        if not head.all():
            return int(head.argmin())
        if m >= len(a):
            return len(a)
        m *= 8


def run_gapped(
    raw: Callable[..., np.ndarray],
    arrays: Sequence[np.ndarray],
    params: Sequence = (),
    boolean: bool = False,
    lead: Callable[..., np.ndarray] | None = None,
) -> np.ndarray:
    """Apply `raw(*arrays, *params)` under the gap rule.

    `raw` must accept NaN-free arrays of equal length and return an array of that
    length. The arrays are assumed already converted by `as_series`.

    Three paths, all giving the result of the general rule:
    * no NaN anywhere (one reduction per input): `raw` on the inputs as they are;
    * the missing bars are exactly a leading run of k bars (an indicator of an
      indicator: the inner one's warm-up): `lead(k, *arrays, *params)` when given,
      which must return the full-length result itself (TA-Lib's Python wrapper
      skips a leading NaN run and writes into one full-length output, see
      `talib_backed`); otherwise `raw` on the contiguous tail views, written after
      a NaN (False) prefix. No compress/scatter copies either way;
    * otherwise compress the valid bars, run `raw`, scatter back.
    """
    n = len(arrays[0])
    for a in arrays[1:]:
        if len(a) != n:
            raise ValueError("all inputs must have the same length")
    dtype = np.bool_ if boolean else np.float64
    if n == 0:
        return np.empty(0, dtype=dtype)
    if all(_fact("finite", a, all_finite) for a in arrays):
        return raw(*arrays, *params)
    # bars before k have a NaN in the input with the longest NaN prefix
    k = max(_fact("nan_prefix", a, nan_prefix) for a in arrays)
    if k == n:
        return np.zeros(n, dtype=np.bool_) if boolean else np.full(n, np.nan)
    if k > 0 and all(_fact("finite", a[k:], all_finite) for a in arrays):
        if lead is not None:
            return lead(k, *arrays, *params)
        out = np.empty(n, dtype=dtype)
        out[:k] = False if boolean else np.nan
        out[k:] = raw(*(a[k:] for a in arrays), *params)
        return out
    bad = np.isnan(arrays[0])
    for a in arrays[1:]:
        bad |= np.isnan(a)
    if not bad.any():  # only infinities: not missing
        return raw(*arrays, *params)
    good = ~bad
    out = np.zeros(n, dtype=np.bool_) if boolean else np.full(n, np.nan)
    if good.any():
        out[good] = raw(*(np.ascontiguousarray(a[good]) for a in arrays), *params)
    return out
