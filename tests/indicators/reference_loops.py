"""Plain-Python, bar-by-bar implementations written from the textbook definitions
(and, where TA-Lib seeds a recursion its own way, from the seeding documented in
engine.indicators). Deliberately naive: no numpy, no shared code with the package.
Each returns a list with NaN where the indicator is undefined.
"""

from __future__ import annotations

import math

NAN = float("nan")


def sma(x, n):
    return [sum(x[t - n + 1:t + 1]) / n if t >= n - 1 else NAN for t in range(len(x))]


def _seeded_recursion(x, n, alpha):
    out = [NAN] * len(x)
    if len(x) < n:
        return out
    prev = sum(x[:n]) / n
    out[n - 1] = prev
    for t in range(n, len(x)):
        prev = prev + alpha * (x[t] - prev)
        out[t] = prev
    return out


def ema(x, n):
    return _seeded_recursion(x, n, 2.0 / (n + 1))


def rma(x, n):
    return _seeded_recursion(x, n, 1.0 / n)


def wma(x, n):
    den = n * (n + 1) / 2
    return [sum((k + 1) * x[t - n + 1 + k] for k in range(n)) / den if t >= n - 1 else NAN
            for t in range(len(x))]


def _pstdev(w):
    m = sum(w) / len(w)
    return math.sqrt(sum((v - m) ** 2 for v in w) / len(w))


def stdev(x, n):
    return [_pstdev(x[t - n + 1:t + 1]) if t >= n - 1 else NAN for t in range(len(x))]


def highest(x, n):
    return [max(x[t - n + 1:t + 1]) if t >= n - 1 else NAN for t in range(len(x))]


def lowest(x, n):
    return [min(x[t - n + 1:t + 1]) if t >= n - 1 else NAN for t in range(len(x))]


def change(x, n=1):
    return [x[t] - x[t - n] if t >= n else NAN for t in range(len(x))]


def roc(x, n=1):
    return [(100.0 * (x[t] / x[t - n] - 1) if x[t - n] != 0 else 0.0) if t >= n else NAN
            for t in range(len(x))]


def rsi(x, n=14):
    out = [NAN] * len(x)
    gains = [max(x[t] - x[t - 1], 0.0) for t in range(1, len(x))]
    losses = [max(x[t - 1] - x[t], 0.0) for t in range(1, len(x))]
    ag, al = rma(gains, n), rma(losses, n)
    for t in range(n, len(x)):
        g, l = ag[t - 1], al[t - 1]
        out[t] = 100.0 * g / (g + l) if g + l != 0 else 0.0
    return out


def tr(h, l, c):
    return [NAN] + [max(h[t] - l[t], abs(h[t] - c[t - 1]), abs(l[t] - c[t - 1]))
                    for t in range(1, len(c))]


def atr(h, l, c, n=14):
    return [NAN] + rma(tr(h, l, c)[1:], n)


def adx(h, l, c, n=14):
    """Wilder's ADX with TA-Lib's seeding: sums of DM/TR over bars 1..n-1, then
    S <- S - S/n + new from bar n; ADX seeded with the mean of DX over bars n..2n-1."""
    N = len(c)
    out = [NAN] * N
    pdm = mdm = trs = 0.0
    dxs = []
    adx_v = NAN
    for t in range(1, N):
        up, dn = h[t] - h[t - 1], l[t - 1] - l[t]
        p = up if (up > 0 and up > dn) else 0.0
        m = dn if (dn > 0 and dn > up) else 0.0
        r = max(h[t] - l[t], abs(h[t] - c[t - 1]), abs(l[t] - c[t - 1]))
        if t < n:
            pdm, mdm, trs = pdm + p, mdm + m, trs + r
            continue
        pdm, mdm, trs = pdm - pdm / n + p, mdm - mdm / n + m, trs - trs / n + r
        pdi, mdi = 100 * pdm / trs, 100 * mdm / trs
        dx = 100 * abs(pdi - mdi) / (pdi + mdi)
        if t < 2 * n - 1:
            dxs.append(dx)
            continue
        if t == 2 * n - 1:
            dxs.append(dx)
            adx_v = sum(dxs) / n
        else:
            adx_v = (adx_v * (n - 1) + dx) / n
        out[t] = adx_v
    return out


def mfi(h, l, c, v, n=14):
    tp = [(h[t] + l[t] + c[t]) / 3 for t in range(len(c))]
    pos = [0.0] + [tp[t] * v[t] if tp[t] > tp[t - 1] else 0.0 for t in range(1, len(c))]
    neg = [0.0] + [tp[t] * v[t] if tp[t] < tp[t - 1] else 0.0 for t in range(1, len(c))]
    out = [NAN] * len(c)
    for t in range(n, len(c)):
        p, q = sum(pos[t - n + 1:t + 1]), sum(neg[t - n + 1:t + 1])
        out[t] = 100 * p / (p + q) if p + q != 0 else 0.0
    return out


def vwap(h, l, c, v, s):
    out, pv, vv = [], 0.0, 0.0
    for t in range(len(c)):
        if t == 0 or s[t] != s[t - 1]:
            pv = vv = 0.0
        pv += (h[t] + l[t] + c[t]) / 3 * v[t]
        vv += v[t]
        out.append(pv / vv if vv else NAN)
    return out


def bb_upper(x, n=20, k=2.0):
    return [m + k * s for m, s in zip(sma(x, n), stdev(x, n))]


def bb_lower(x, n=20, k=2.0):
    return [m - k * s for m, s in zip(sma(x, n), stdev(x, n))]


def bb_width(x, n=20, k=2.0):
    return [(u - lo) / m for u, lo, m in zip(bb_upper(x, n, k), bb_lower(x, n, k), sma(x, n))]


def _macd_parts(x, f=12, s=26, g=9):
    """TA-Lib seeding: both EMAs start at bar s-1; the fast one from mean(x[s-f..s-1])."""
    N = len(x)
    line = [NAN] * N
    if N >= s:
        fe, se = sum(x[s - f:s]) / f, sum(x[:s]) / s
        line[s - 1] = fe - se
        for t in range(s, N):
            fe += 2 / (f + 1) * (x[t] - fe)
            se += 2 / (s + 1) * (x[t] - se)
            line[t] = fe - se
    sig = [NAN] * (s - 1) + ema(line[s - 1:], g) if N >= s else [NAN] * N
    return line, sig


def macd(x, f=12, s=26, g=9):
    return _macd_parts(x, f, s, g)[0]


def macd_signal(x, f=12, s=26, g=9):
    return _macd_parts(x, f, s, g)[1]


def macd_hist(x, f=12, s=26, g=9):
    line, sig = _macd_parts(x, f, s, g)
    return [a - b for a, b in zip(line, sig)]


def zscore(x, n):
    return [(x[t] - m) / s if s != 0 else NAN for t, (m, s) in enumerate(zip(sma(x, n), stdev(x, n)))]


def percentrank(x, n):
    return [sum(1 for v in x[t - n:t] if v <= x[t]) / n if t >= n else NAN for t in range(len(x))]


def hurst(x, n=100):
    out = [NAN] * len(x)
    lags = list(range(2, 21))
    lx = [math.log(L) for L in lags]
    mx = sum(lx) / len(lx)
    for t in range(n - 1, len(x)):
        w = x[t - n + 1:t + 1]
        ly = [math.log(_pstdev([w[i] - w[i - L] for i in range(L, n)])) for L in lags]
        my = sum(ly) / len(ly)
        out[t] = (sum((a - mx) * (b - my) for a, b in zip(lx, ly))
                  / sum((a - mx) ** 2 for a in lx))
    return out


def iv_rank(x, n=252):
    return [(x[t] - lo) / (hi - lo) if hi != lo else NAN
            for t, (hi, lo) in enumerate(zip(highest(x, n), lowest(x, n)))]


def crosses_above(a, b):
    return [False] + [a[t] > b[t] and a[t - 1] <= b[t - 1] for t in range(1, len(a))]


def crosses_below(a, b):
    return [False] + [a[t] < b[t] and a[t - 1] >= b[t - 1] for t in range(1, len(a))]


def _fast_k(h, l, c, n):
    """100 * (close - lowest low) / (highest high - lowest low) over the last n bars; 0 flat."""
    out = [NAN] * len(c)
    for t in range(n - 1, len(c)):
        hh, ll = max(h[t - n + 1:t + 1]), min(l[t - n + 1:t + 1])
        out[t] = 100.0 * (c[t] - ll) / (hh - ll) if hh != ll else 0.0
    return out


def _mean_of_defined(x, n):
    """A simple moving average that starts where x starts being defined (n = 1: x itself)."""
    out = [NAN] * len(x)
    first = next((t for t, v in enumerate(x) if v == v), len(x))
    for t in range(first + n - 1, len(x)):
        out[t] = sum(x[t - n + 1:t + 1]) / n
    return out


def stoch_k(h, l, c, n=14, smooth_k=3):
    return _mean_of_defined(_fast_k(h, l, c, n), smooth_k)


def stoch_d(h, l, c, n=14, smooth_k=3, smooth_d=3):
    return _mean_of_defined(stoch_k(h, l, c, n, smooth_k), smooth_d)


def willr(h, l, c, n=14):
    out = [NAN] * len(c)
    for t in range(n - 1, len(c)):
        hh, ll = max(h[t - n + 1:t + 1]), min(l[t - n + 1:t + 1])
        out[t] = -100.0 * (hh - c[t]) / (hh - ll) if hh != ll else 0.0
    return out


def cci(h, l, c, n=20):
    """Lambert: (tp - mean(tp)) / (0.015 * mean |tp - mean(tp)|); 0 when either is ~0 (TA-Lib
    treats |x| < 1e-8 as zero)."""
    tp = [(h[t] + l[t] + c[t]) / 3 for t in range(len(c))]
    out = [NAN] * len(c)
    for t in range(n - 1, len(c)):
        w = tp[t - n + 1:t + 1]
        m = sum(w) / n
        md = sum(abs(v - m) for v in w) / n
        d = tp[t] - m
        out[t] = 0.0 if abs(d) < 1e-8 or md * n < 1e-8 else d / (0.015 * md)
    return out


def obv(c, v):
    out, total = [], 0.0
    for t in range(len(c)):
        if t == 0:
            total = v[0]
        elif c[t] > c[t - 1]:
            total += v[t]
        elif c[t] < c[t - 1]:
            total -= v[t]
        out.append(total)
    return out


def sar(h, l, accel=0.02, maximum=0.2):
    """Wilder's parabolic SAR, with TA-Lib's start: the trend of bar 1 is short when its -DM
    is positive (else long); a long starts at bar 0's low with bar 1's high as the extreme, a
    short at bar 0's high with bar 1's low; bar 1 is its own previous bar."""
    N = len(h)
    out = [NAN] * N
    if N < 2:
        return out
    up, down = h[1] - h[0], l[0] - l[1]
    trend = -1 if (down > 0 and down > up) else 1
    level = l[0] if trend == 1 else h[0]
    extreme = h[1] if trend == 1 else l[1]
    factor = accel
    for t in range(1, N):
        p = t - 1 if t > 1 else 1
        if trend == 1 and l[t] <= level:          # the low touches the stop: now short
            level = max(extreme, h[p], h[t])
            out[t] = level
            trend, factor, extreme = -1, accel, l[t]
            level = max(level + factor * (extreme - level), h[p], h[t])
        elif trend == -1 and h[t] >= level:       # the high touches the stop: now long
            level = min(extreme, l[p], l[t])
            out[t] = level
            trend, factor, extreme = 1, accel, h[t]
            level = min(level + factor * (extreme - level), l[p], l[t])
        elif trend == 1:
            out[t] = level
            if h[t] > extreme:
                extreme, factor = h[t], min(factor + accel, maximum)
            level = min(level + factor * (extreme - level), l[p], l[t])
        else:
            out[t] = level
            if l[t] < extreme:
                extreme, factor = l[t], min(factor + accel, maximum)
            level = max(level + factor * (extreme - level), h[p], h[t])
    return out


def _keltner(h, l, c, n, k, atr_n, sign):
    mid, band = ema(c, n), atr(h, l, c, atr_n)
    return [m + sign * k * b for m, b in zip(mid, band)]


def keltner_upper(h, l, c, n=20, k=2.0, atr_n=10):
    return _keltner(h, l, c, n, k, atr_n, 1)


def keltner_middle(h, l, c, n=20, k=2.0, atr_n=10):
    return ema(c, n)


def keltner_lower(h, l, c, n=20, k=2.0, atr_n=10):
    return _keltner(h, l, c, n, k, atr_n, -1)
