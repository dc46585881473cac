"""Kernels TA-Lib lacks (or defines differently), written as whole-array numpy.

No per-bar Python loop: lags, cumulative sums and a short loop over lags (percent
rank, Hurst) do the work. Each public function applies the gap rule.
"""

from __future__ import annotations

import numpy as np
import talib

from . import params as P
from .gaps import as_series, run_gapped


def _change(a, n):
    out = np.full(len(a), np.nan)
    if len(a) > n:
        np.subtract(a[n:], a[:-n], out=out[n:])
    return out


def change(x, length=1):
    """Difference over n bars: x[t] - x[t-n]. Warm-up n."""
    n = P.window(length, minimum=1)
    return run_gapped(lambda a: _change(a, n), [as_series(x)])


def zscore(x, length):
    """Standard score: (x - sma(x,n)) / stdev(x,n), population stdev (TA-Lib SMA and
    STDDEV); NaN where the stdev is 0 (a flat window has no scale). Warm-up n-1."""
    n = P.window(length, minimum=2)

    def raw(a):
        sd = talib.STDDEV(a, n, 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (a - talib.SMA(a, n)) / sd
        z[sd == 0] = np.nan
        return z

    return run_gapped(raw, [as_series(x)])


def _percentrank(a, n):
    N = len(a)
    out = np.full(N, np.nan)
    if N <= n:
        return out
    cur = a[n:]
    cnt = np.zeros(N - n, dtype=np.int32)
    for k in range(1, n + 1):  # one vectorised pass per lag, contiguous memory
        cnt += a[n - k:N - k] <= cur
    np.divide(cnt, n, out=out[n:])
    return out


def percentrank(x, length):
    """Percent rank in [0, 1]: the fraction of the previous n values x[t-n..t-1] that
    are <= x[t] (the current bar is not part of its own reference set). Warm-up n."""
    n = P.window(length, minimum=1)
    return run_gapped(lambda a: _percentrank(a, n), [as_series(x)])


_LAGS = np.arange(2, P.HURST_MAX_LAG + 1)
_LOGL = np.log(_LAGS.astype(float))
# Least-squares slope of y on log(L) is sum(w_L * y_L) with these weights.
_HURST_W = (_LOGL - _LOGL.mean()) / ((_LOGL - _LOGL.mean()) ** 2).sum()
# A lag whose variance is below this fraction of its mean square is treated as flat
# (undefined Hurst): it guards against cancellation noise in sum(d^2) - sum(d)^2/m.
HURST_FLAT_RTOL = 1e-10


def _hurst(a, n):
    N = len(a)
    out = np.full(N, np.nan)
    if N < n:
        return out
    K = N - n + 1  # outputs for t = n-1 .. N-1
    acc = np.zeros(K)
    flat = np.zeros(K, dtype=bool)
    for L, w in zip(_LAGS, _HURST_W):
        d = a[L:] - a[:-L]           # d[j] = x[j+L] - x[j]
        d -= d.mean()                # centring keeps the running sums small
        m = n - L                    # differences inside an n-bar window
        c1 = np.concatenate(([0.0], np.cumsum(d)))
        c2 = np.concatenate(([0.0], np.cumsum(d * d)))
        s1 = c1[m:m + K] - c1[:K]
        s2 = c2[m:m + K] - c2[:K]
        var = s2 / m - (s1 / m) ** 2
        flat |= var <= HURST_FLAT_RTOL * (s2 / m)
        acc += w * 0.5 * np.log(np.where(var > 0, var, 1.0))
    acc[flat] = np.nan
    out[n - 1:] = acc
    return out


def hurst(x, length=100):
    """Rolling Hurst exponent: over the trailing n-bar window, for each lag
    L = 2..20 take the population std of the in-window differences x[s]-x[s-L]
    (both ends inside the window, n-L of them), and return the least-squares slope
    of log(std_L) on log(L). NaN where some std_L is 0 (flat window). n >= 22.
    Warm-up n-1."""
    n = P.window(length, minimum=P.HURST_MIN_LENGTH)
    return run_gapped(lambda a: _hurst(a, n), [as_series(x)])


def _vwap(h, l, c, v, session):
    N = len(h)
    pv = h + l
    pv += c
    pv /= 3.0
    pv *= v
    start = np.empty(N, dtype=bool)
    start[0] = True
    np.not_equal(session[1:], session[:-1], out=start[1:])
    first = np.flatnonzero(start)
    lengths = np.diff(np.append(first, N))
    num = np.cumsum(pv)
    den = np.cumsum(v)
    # subtract each session's starting offset (np.repeat beats a fancy-index gather)
    num -= np.repeat(num[first] - pv[first], lengths)
    den -= np.repeat(den[first] - v[first], lengths)
    with np.errstate(divide="ignore", invalid="ignore"):
        num /= den
    num[den == 0] = np.nan
    return num


def vwap(high, low, close, volume, session):
    """Session-anchored VWAP: cumsum(typical*volume)/cumsum(volume) since the start of
    the current session, typical = (h+l+c)/3; a session starts at bar 0 and wherever
    the integer session id differs from the previous (valid) bar's. NaN while the
    session's cumulative volume is 0. Warm-up 0."""
    arrs = [as_series(high, "high"), as_series(low, "low"), as_series(close, "close"),
            as_series(volume, "volume"), as_series(session, "session")]
    return run_gapped(_vwap, arrs)


def _crosses(a, b, above):
    # inputs are NaN-free here, so "a <= b" is exactly "not (a > b)"
    side = np.greater(a, b) if above else np.less(a, b)
    out = np.zeros(len(a), dtype=bool)
    np.greater(side[1:], side[:-1], out=out[1:])  # True now, False on the previous bar
    return out


def crosses_above(a, b):
    """a[t] > b[t] and a[t-1] <= b[t-1] (t-1 = previous valid bar). Boolean; False at
    bar 0 and wherever a or b is NaN. Warm-up 1 (bar 0 is False)."""
    return run_gapped(lambda p, q: _crosses(p, q, True), [as_series(a, "a"), as_series(b, "b")],
                      boolean=True)


def crosses_below(a, b):
    """a[t] < b[t] and a[t-1] >= b[t-1] (t-1 = previous valid bar). Boolean; False at
    bar 0 and wherever a or b is NaN. Warm-up 1 (bar 0 is False)."""
    return run_gapped(lambda p, q: _crosses(p, q, False), [as_series(a, "a"), as_series(b, "b")],
                      boolean=True)


def _iv_rank(a, n):
    hi = talib.MAX(a, n)
    lo = talib.MIN(a, n)
    rng = hi - lo
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (a - lo) / rng
    out[rng == 0] = np.nan
    return out


def iv_rank(x, length=252):
    """Rank within the trailing range: (x - lowest(x,n)) / (highest(x,n) - lowest(x,n)),
    in [0, 1]; NaN where the window is flat. Warm-up n-1."""
    n = P.window(length, minimum=2)
    return run_gapped(lambda a: _iv_rank(a, n), [as_series(x)])
