"""Kernels TA-Lib lacks (or defines differently), written as whole-array numpy.

No per-bar Python loop: lags, cumulative sums and a short loop over lags (percent
rank, Hurst; Hurst also over cache-sized chunks of bars) do the work. Each public function applies the gap rule.
"""

from __future__ import annotations

import numpy as np
import talib

from . import params as P
from .gaps import as_series, divide_nan_at_zero, run_gapped


def _change(a, n):
    out = np.empty(len(a))
    out[:n] = np.nan
    if len(a) > n:
        np.subtract(a[n:], a[:-n], out=out[n:])  # x[t] - x[t-n], as the stream does
    return out


def change(x, length=1):
    """Difference over n bars: x[t] - x[t-n]. Warm-up n."""
    n = P.window(length, minimum=1)
    # a leading NaN run needs no special case: x[t] - x[t-n] is NaN until n valid bars
    return run_gapped(lambda a: _change(a, n), [as_series(x)],
                      lead=lambda k, a: _change(a, n))


def zscore(x, length):
    """Standard score: (x - sma(x,n)) / stdev(x,n), population stdev (TA-Lib SMA and
    STDDEV); NaN where the stdev is 0 (a flat window has no scale). Warm-up n-1."""
    n = P.window(length, minimum=2)

    def raw(a, k=0):
        # k leading missing bars: TA-Lib's wrapper skips them (see talib_backed)
        sd = talib.STDDEV(a, n, 1.0)
        z = talib.SMA(a, n)
        with np.errstate(invalid="ignore"):
            np.subtract(a, z, out=z)
        return divide_nan_at_zero(z, sd, k + n - 1)    # a flat window has no scale

    return run_gapped(raw, [as_series(x)], lead=lambda k, a: raw(a, k))


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
    def lead(k, a):  # NaN comparisons count nothing; blank every window touching them
        out = _percentrank(a, n)
        out[:k + n] = np.nan
        return out

    return run_gapped(lambda a: _percentrank(a, n), [as_series(x)], lead=lead)


_LAGS = np.arange(2, P.HURST_MAX_LAG + 1)
_LOGL = np.log(_LAGS.astype(float))
# Least-squares slope of y on log(L) is sum(w_L * y_L) with these weights.
_HURST_W = (_LOGL - _LOGL.mean()) / ((_LOGL - _LOGL.mean()) ** 2).sum()
# A lag whose variance is below this fraction of its mean square is treated as flat
# (undefined Hurst): it guards against cancellation noise in sum(d^2) - sum(d)^2/m.
HURST_FLAT_RTOL = 1e-10


HURST_CHUNK = 1 << 14  # outputs per chunk: the work buffers stay in L2 and are reused


def _window_sums(X, m, out):
    """Sums of m consecutive values from block-local running sums.

    X is (nb+1, m+1): row b holds 0 then the b-th block of m values, the last row is
    all 0. After an in-place cumsum along rows, X[b, r] is the sum of the first r
    values of block b, so the window starting at r in block b sums to
    (X[b, m] - X[b, r]) + X[b+1, r]: a suffix of one block plus a prefix of the
    next, never a difference of long running totals.
    """
    np.cumsum(X, axis=1, out=X)
    np.subtract(X[:-1, :m], X[:-1, m:], out=out)
    np.subtract(X[1:, :m], out, out=out)


def _hurst(a, n):
    N = len(a)
    out = np.full(N, np.nan)
    if N < n:
        return out
    K = N - n + 1  # outputs for t = n-1 .. N-1
    C = min(K, HURST_CHUNK)
    # pad with the last value so every block reshape stays in bounds (the padded
    # differences only reach windows past the end, which are discarded)
    ap = np.concatenate((a, np.full(2 * n + 2, a[-1])))
    size = (C // 2 + 2) * (n + 1)         # >= (nb+1)*(m+1) for every lag
    yb = np.empty(size)
    s1b, s2b = np.empty(C + 2 * n), np.empty(C + 2 * n)
    sb = np.empty(C)
    nl = len(_LAGS)
    logs = np.empty((nl, C))                  # 0.5*log(var_L), one row per lag
    flats = np.empty((nl, C), dtype=bool)
    half_w = _HURST_W * 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        for t0 in range(0, K, C):
            k = min(C, K - t0)
            seg = ap[t0:]
            # S = sum of the window's m differences x[s]-x[s-L]; for L = 1 it is
            # x[t] - x[t-n+1], and going from L-1 to L it gains x[t-L+1] - x[t-m]
            # (telescoping), each increment one difference of nearby values
            S = sb[:k]
            np.subtract(seg[n - 1:n - 1 + k], seg[:k], out=S)
            for i, L in enumerate(_LAGS.tolist()):
                m = n - L                      # differences inside an n-bar window
                nb = -(-(k + m - 1) // m)
                Y = yb[:(nb + 1) * (m + 1)].reshape(nb + 1, m + 1)
                Y[:, 0] = 0.0
                Y[nb] = 0.0
                d = Y[:nb, 1:]                 # d[j] = x[j+L] - x[j], in blocks of m
                np.subtract(seg[L:L + nb * m].reshape(nb, m), seg[:nb * m].reshape(nb, m),
                            out=d)
                np.multiply(d, d, out=d)
                _window_sums(Y, m, s2b[:nb * m].reshape(nb, m))
                s1, s2 = s1b[:k], s2b[:k]
                np.subtract(seg[m:m + k], seg[L - 1:L - 1 + k], out=s1)
                S += s1
                np.divide(S, m, out=s1)        # mean
                s1 *= s1
                s2 /= m                        # mean square
                np.subtract(s2, s1, out=s1)    # population variance
                s2 *= HURST_FLAT_RTOL
                np.less_equal(s1, s2, out=flats[i, :k])
                np.log(s1, out=logs[i, :k])    # flat lags are NaN-ed below anyway
            acc = out[n - 1 + t0:n - 1 + t0 + k]
            np.dot(half_w, logs[:, :k], out=acc)  # least-squares slope
            acc[flats[:, :k].any(axis=0)] = np.nan
    return out


def hurst(x, length=100):
    """Rolling Hurst exponent: over the trailing n-bar window, for each lag
    L = 2..20 take the population std of the in-window differences x[s]-x[s-L]
    (both ends inside the window, n-L of them), and return the least-squares slope
    of log(std_L) on log(L). NaN where some std_L is 0 (flat window). n >= 22.
    Warm-up n-1."""
    n = P.window(length, minimum=P.HURST_MIN_LENGTH)
    return run_gapped(lambda a: _hurst(a, n), [as_series(x)])


def _session_starts(session):
    """Index of the first bar of each session, and each session's length."""
    N = len(session)
    start = np.empty(N, dtype=bool)
    start[0] = True
    np.not_equal(session[1:], session[:-1], out=start[1:])
    first = np.flatnonzero(start)
    return first, np.diff(first, append=N)


def _cumsum_layout(first, lengths, N):
    """Which layout `segmented_cumsum` uses: "runs", "matrix" or "loop"."""
    run_start = np.flatnonzero(lengths[1:] != lengths[:-1]) + 1
    if len(run_start) < 16 + (N >> 10):
        return "runs", run_start
    if len(first) * int(lengths.max()) <= 4 * N:
        return "matrix", run_start
    return "loop", run_start


def segmented_cumsum(arrays, first, lengths):
    """Running totals of each array that restart at 0 at every segment start.

    Every output is the same chain of float additions as a scalar running total
    (`t = 0.0; t += x` per bar), because np.cumsum / add.accumulate along a row is
    strictly sequential, so the results are bit-identical to the streaming form.
    Never a per-bar loop; three layouts by cost:

    * few runs of consecutive equal-length segments (regular sessions): each run is
      a contiguous (k, L) block, np.cumsum(axis=1) in place, one call per run;
    * otherwise, when sessions x max_length <= 4N: scatter into a (S, W) matrix,
      np.cumsum(axis=1), gather back (the cells past a row's end never feed the
      row's own values);
    * else (one huge session among many short ones) a loop over segments.
    """
    N = len(arrays[0])
    outs = [np.empty(N) for _ in arrays]
    S = len(first)
    layout, run_start = _cumsum_layout(first, lengths, N)
    if layout == "runs":
        seg = [0] + run_start.tolist() + [S]
        fl = first.tolist()
        ln = lengths.tolist()
        for r0, r1 in zip(seg[:-1], seg[1:]):
            k, L, f = r1 - r0, ln[r0], fl[r0]
            e = f + k * L
            for x, o in zip(arrays, outs):
                np.cumsum(x[f:e].reshape(k, L), axis=1, out=o[f:e].reshape(k, L))
        return outs
    if layout == "matrix":
        W = int(lengths.max())
        idx = np.repeat(np.arange(0, S * W, W) - first, lengths)
        idx += np.arange(N)
        flat = np.zeros(S * W)
        M = flat.reshape(S, W)
        for x, o in zip(arrays, outs):
            flat[idx] = x
            np.cumsum(M, axis=1, out=M)
            np.take(flat, idx, out=o)
        return outs
    for f, L in zip(first.tolist(), lengths.tolist()):
        for x, o in zip(arrays, outs):
            np.cumsum(x[f:f + L], out=o[f:f + L])
    return outs


def _vwap(h, l, c, v, session):
    # typical*volume in the streaming order: ((h + l) + c) / 3.0 * v
    pv = h + l
    pv += c
    pv /= 3.0
    pv *= v
    first, lengths = _session_starts(session)
    num, den = segmented_cumsum((pv, v), first, lengths)
    # a zero cumulative volume (0/0, or x/0 with negative volumes) is NaN
    return divide_nan_at_zero(num, den)


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


def _crosses_lead(above):
    # NaN comparisons are False, so the bars before k are False; bar k (the first
    # valid bar) has no previous valid bar
    def lead(k, a, b):
        out = _crosses(a, b, above)
        out[k] = False
        return out
    return lead


def crosses_above(a, b):
    """a[t] > b[t] and a[t-1] <= b[t-1] (t-1 = previous valid bar). Boolean; False at
    bar 0 and wherever a or b is NaN. Warm-up 1 (bar 0 is False)."""
    return run_gapped(lambda p, q: _crosses(p, q, True), [as_series(a, "a"), as_series(b, "b")],
                      boolean=True, lead=_crosses_lead(True))


def crosses_below(a, b):
    """a[t] < b[t] and a[t-1] >= b[t-1] (t-1 = previous valid bar). Boolean; False at
    bar 0 and wherever a or b is NaN. Warm-up 1 (bar 0 is False)."""
    return run_gapped(lambda p, q: _crosses(p, q, False), [as_series(a, "a"), as_series(b, "b")],
                      boolean=True, lead=_crosses_lead(False))


def _iv_rank(a, n):
    hi = talib.MAX(a, n)
    lo = talib.MIN(a, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.subtract(hi, lo, out=hi)
        np.subtract(a, lo, out=lo)
        # a flat window has x == lo == hi, so it is 0/0 = NaN without a mask
        np.divide(lo, hi, out=lo)
    return lo


def iv_rank(x, length=252):
    """Rank within the trailing range: (x - lowest(x,n)) / (highest(x,n) - lowest(x,n)),
    in [0, 1]; NaN where the window is flat. Warm-up n-1."""
    n = P.window(length, minimum=2)
    # TA-Lib skips a leading NaN run and x - lo keeps it NaN
    return run_gapped(lambda a: _iv_rank(a, n), [as_series(x)], lead=lambda k, a: _iv_rank(a, n))
