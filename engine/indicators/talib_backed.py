"""Kernels that delegate to TA-Lib's C code (the canonical definitions, at C speed).

Every function here converts its inputs, applies the gap rule (`gaps.run_gapped`)
so TA-Lib only ever sees NaN-free series, and returns a float64 array of the input
length with NaN during warm-up. The docstring of each function is its formula; the
exact TA-Lib seeding is spelled out because the streaming forms reproduce it.
"""

from __future__ import annotations

import numpy as np
import talib

from . import params as P
from .gaps import all_finite, as_series, divide_nan_at_zero, run_gapped


def _skip_lead(raw):
    """`run_gapped`'s `lead` for a TA-Lib call: TA-Lib's Python wrapper starts at the
    first bar where no input is NaN (check_begidx) and fills the bars before it plus
    the lookback with NaN in one full-length output, which is the gap rule exactly
    when the missing bars are a leading run (tests/indicators: prefix vs general)."""
    return lambda k, *arrays: raw(*arrays)


def run_ta(raw, arrays):
    """`run_gapped` for a kernel whose NaN-free result is TA-Lib's on the same bars."""
    return run_gapped(raw, arrays, lead=_skip_lead(raw))


def sma(x, length):
    """Simple moving average: mean(x[t-n+1..t]). TA-Lib SMA. Warm-up n-1."""
    n = P.window(length, minimum=2)
    return run_ta(lambda a: talib.SMA(a, n), [as_series(x)])


def ema(x, length):
    """Exponential moving average, alpha = 2/(n+1), seeded with the SMA of the first
    n values: e[n-1] = mean(x[0..n-1]); e[t] = e[t-1] + alpha*(x[t]-e[t-1]).
    TA-Lib EMA (default compatibility). Warm-up n-1."""
    n = P.window(length, minimum=2)
    return run_ta(lambda a: talib.EMA(a, n), [as_series(x)])


def wma(x, length):
    """Linearly weighted moving average: sum(k*x[t-n+k], k=1..n) / (n(n+1)/2).
    TA-Lib WMA. Warm-up n-1."""
    n = P.window(length, minimum=2)
    return run_ta(lambda a: talib.WMA(a, n), [as_series(x)])


def rma(x, length):
    """Wilder's smoothing (RMA/SMMA), alpha = 1/n, seeded with the SMA of the first n
    values: r[n-1] = mean(x[0..n-1]); r[t] = r[t-1] + (x[t]-r[t-1])/n.
    TA-Lib RMA (checked to match this seeding). Warm-up n-1."""
    n = P.window(length, minimum=2)
    return run_ta(lambda a: talib.RMA(a, n), [as_series(x)])


def stdev(x, length):
    """Population standard deviation over the trailing n bars:
    sqrt(mean(x^2) - mean(x)^2) (TA-Lib STDDEV, nbdev=1, running sums; a
    non-positive variance gives 0). Warm-up n-1."""
    n = P.window(length, minimum=2)
    return run_ta(lambda a: talib.STDDEV(a, n, 1.0), [as_series(x)])


def highest(x, length):
    """Rolling maximum of x[t-n+1..t]. TA-Lib MAX. Warm-up n-1."""
    n = P.window(length, minimum=2)
    return run_ta(lambda a: talib.MAX(a, n), [as_series(x)])


def lowest(x, length):
    """Rolling minimum of x[t-n+1..t]. TA-Lib MIN. Warm-up n-1."""
    n = P.window(length, minimum=2)
    return run_ta(lambda a: talib.MIN(a, n), [as_series(x)])


def roc(x, length=1):
    """Rate of change in percent: 100*(x[t]/x[t-n] - 1); TA-Lib returns 0 (not inf)
    when x[t-n] == 0. TA-Lib ROC. Warm-up n."""
    n = P.window(length, minimum=1)
    return run_ta(lambda a: talib.ROC(a, n), [as_series(x)])


def rsi(x, length=14):
    """Wilder's RSI: gains/losses of x[t]-x[t-1]; avg gain/loss seeded with the plain
    mean of the first n changes (bars 1..n), then Wilder-smoothed
    (avg = (avg*(n-1) + new)/n); RSI = 100*avg_gain/(avg_gain+avg_loss), and 0 when
    both averages are 0 (TA-Lib's convention for a flat window). TA-Lib RSI.
    Warm-up n."""
    n = P.window(length, minimum=2)
    return run_ta(lambda a: talib.RSI(a, n), [as_series(x)])


def _hlc_unchecked(fn, arrs, length):
    """TA-Lib TRANGE/ATR on (high, low, close) with the NaN check folded into the
    output instead of one pass per input, or None when that cannot prove the inputs
    NaN-free (the caller then applies the general rule).

    In TA-Lib's true range bar t >= 1 is h-l, |c[t-1]-h|, |c[t-1]-l| kept by `>`, so a
    NaN high or low at t makes TR[t] NaN, but a NaN close is silently dropped by the
    comparisons; bar 0 (no TR) and the last close are never read. So: h[0], l[0],
    c[-1] are checked as scalars, c[:-1] and TR[1:] together by one sum of products
    (NaN in either is a NaN sum); for ATR with n >= 2 a NaN TR anywhere reaches the
    Wilder average's last value, so that value replaces the TR pass and the close
    gets one reduction of its own. Infinities only ever make a check fail, and a
    failed check just means the general path.
    """
    h, l, c = arrs
    N = len(h)
    if len(l) != N or len(c) != N or N <= length + 1:
        return None
    if not (np.isfinite(h[0]) and np.isfinite(l[0]) and np.isfinite(c[-1])):
        return None
    if length >= 2:
        if not all_finite(c):
            return None
        out = fn(h, l, c)
        return out if np.isfinite(out[-1]) else None
    out = fn(h, l, c)
    return out if np.isfinite(np.einsum("i,i->", out[1:], c[:-1])) else None


def tr(high, low, close):
    """True range: max(h-l, |h-c[t-1]|, |l-c[t-1]|). TA-Lib TRANGE (bar 0 has no
    previous close, so it is NaN). Warm-up 1."""
    arrs = [as_series(high, "high"), as_series(low, "low"), as_series(close, "close")]
    out = _hlc_unchecked(talib.TRANGE, arrs, 1)
    return out if out is not None else run_ta(talib.TRANGE, arrs)


def atr(high, low, close, length=14):
    """Average true range: Wilder smoothing of TR, seeded with the mean of TR over
    bars 1..n (bar 0 has no TR): atr[n] = mean(tr[1..n]);
    atr[t] = (atr[t-1]*(n-1) + tr[t]) / n. TA-Lib ATR. Warm-up n."""
    n = P.window(length, minimum=1)
    arrs = [as_series(high, "high"), as_series(low, "low"), as_series(close, "close")]
    fn = lambda h, l, c: talib.ATR(h, l, c, n)  # noqa: E731
    out = _hlc_unchecked(fn, arrs, n)
    return out if out is not None else run_ta(fn, arrs)


def adx(high, low, close, length=14):
    """Wilder's ADX (TA-Lib ADX). +DM = h-h[t-1] if it exceeds l[t-1]-l and is > 0,
    -DM symmetric; TR as in `tr`. TA-Lib seeds the Wilder sums with the sum of the
    first n-1 bars' DM/TR (bars 1..n-1) and from bar n on updates
    S = S - S/n + new; DI = 100*DM_S/TR_S; DX = 100*|+DI - -DI|/(+DI + -DI);
    ADX[2n-1] = mean(DX[n..2n-1]); then ADX = (ADX*(n-1) + DX)/n. Warm-up 2n-1."""
    n = P.window(length, minimum=2)
    arrs = [as_series(high, "high"), as_series(low, "low"), as_series(close, "close")]
    return run_ta(lambda h, l, c: talib.ADX(h, l, c, n), arrs)


def mfi(high, low, close, volume, length=14):
    """Money flow index. typical = (h+l+c)/3; raw flow = typical*volume, positive
    when typical rose vs the previous bar, negative when it fell, neither when equal
    (TA-Lib counts typical prices within ~1e-14 relative of each other as equal);
    MFI = 100*sum(pos, n)/(sum(pos, n)+sum(neg, n)) over bars t-n+1..t, 0 when both
    sums are 0. TA-Lib MFI. Warm-up n."""
    n = P.window(length, minimum=2)
    arrs = [as_series(high, "high"), as_series(low, "low"), as_series(close, "close"),
            as_series(volume, "volume")]
    return run_ta(lambda h, l, c, v: talib.MFI(h, l, c, v, n), arrs)


def _bands(x, length, mult, which):
    n = P.window(length, minimum=2)
    m = P.real(mult, "mult")
    return run_ta(lambda a: talib.BBANDS(a, n, m, m, 0)[which], [as_series(x)])


def bb_upper(x, length=20, mult=2.0):
    """Upper Bollinger band: sma(x,n) + mult*stdev(x,n) (population stdev).
    TA-Lib BBANDS (SMA). Warm-up n-1."""
    return _bands(x, length, mult, 0)


def bb_middle(x, length=20, mult=2.0):
    """Middle Bollinger band: sma(x,n) (TA-Lib BBANDS). Warm-up n-1."""
    return _bands(x, length, mult, 1)


def bb_lower(x, length=20, mult=2.0):
    """Lower Bollinger band: sma(x,n) - mult*stdev(x,n) (population stdev).
    TA-Lib BBANDS (SMA). Warm-up n-1."""
    return _bands(x, length, mult, 2)


def bb_width(x, length=20, mult=2.0):
    """Bollinger band width: (upper - lower) / middle, from TA-Lib BBANDS; NaN where
    the middle band is 0. Warm-up n-1."""
    n = P.window(length, minimum=2)
    m = P.real(mult, "mult")

    def raw(a, k=0):
        up, mid, lo = talib.BBANDS(a, n, m, m, 0)
        with np.errstate(invalid="ignore"):
            np.subtract(up, lo, out=up)
        return divide_nan_at_zero(up, mid, k + n - 1)   # a zero middle band

    # k leading missing bars: TA-Lib's wrapper skips them (see _skip_lead)
    return run_gapped(raw, [as_series(x)], lead=lambda k, a: raw(a, k))


def macd(x, fast=12, slow=26, signal=9):
    """MACD line: ema(x, fast) - ema(x, slow), with TA-Lib MACD's seeding: BOTH EMAs
    start at bar slow-1, the slow one seeded with mean(x[0..slow-1]) and the fast one
    with mean(x[slow-fast..slow-1]) (so it differs from a standalone ema(x, fast)
    early on). Does not depend on `signal`. Warm-up slow-1."""
    f, s, _ = P.macd_periods(fast, slow, signal)
    return run_ta(lambda a: talib.MACD(a, f, s, 1)[0], [as_series(x)])


def macd_signal(x, fast=12, slow=26, signal=9):
    """MACD signal line: EMA(signal) of the MACD line, seeded with the mean of its
    first `signal` values. TA-Lib MACD. Warm-up slow+signal-2."""
    f, s, g = P.macd_periods(fast, slow, signal)
    return run_ta(lambda a: talib.MACD(a, f, s, g)[1], [as_series(x)])


def macd_hist(x, fast=12, slow=26, signal=9):
    """MACD histogram: macd - macd_signal. TA-Lib MACD. Warm-up slow+signal-2."""
    f, s, g = P.macd_periods(fast, slow, signal)
    return run_ta(lambda a: talib.MACD(a, f, s, g)[2], [as_series(x)])


# --- oscillators on high, low and close --------------------------------------------------


def _hlc(high, low, close):
    return [as_series(high, "high"), as_series(low, "low"), as_series(close, "close")]


def _stoch_periods(length, smooth_k, smooth_d=1):
    return (P.window(length, "length", 1), P.window(smooth_k, "smooth_k", 1),
            P.window(smooth_d, "smooth_d", 1))


def stoch_k(high, low, close, length=14, smooth_k=3):
    """Stochastic oscillator %K (TA-Lib STOCH, SMA smoothing), 0-100. The fast %K is
    fk[t] = (c[t] - LL) / (HH - LL) * 100 with HH = max(h[t-n+1..t]), LL = min(l[t-n+1..t]),
    and 0 where HH == LL (a flat window); %K = sma(fk, smooth_k) (TA-Lib's running total;
    smooth_k = 1 is the fast %K itself). Warm-up (n-1) + (smooth_k-1)."""
    n, sk, _ = _stoch_periods(length, smooth_k)
    # slowd_period 1: TA-Lib then starts %K at its own lookback (not %D's), with the same values
    return run_ta(lambda h, l, c: talib.STOCH(h, l, c, n, sk, 0, 1, 0)[0], _hlc(high, low, close))


def stoch_d(high, low, close, length=14, smooth_k=3, smooth_d=3):
    """Stochastic %D: sma(stoch_k(length, smooth_k), smooth_d) (TA-Lib STOCH's slowd, SMA).
    With smooth_k = 1 it is the fast stochastic's %D (StockCharts' %D). Warm-up
    (n-1) + (smooth_k-1) + (smooth_d-1)."""
    n, sk, sd = _stoch_periods(length, smooth_k, smooth_d)
    return run_ta(lambda h, l, c: talib.STOCH(h, l, c, n, sk, 0, sd, 0)[1], _hlc(high, low, close))


def willr(high, low, close, length=14):
    """Williams %R, -100..0: (HH - c[t]) / (HH - LL) * -100 with HH, LL the highest high and
    lowest low of bars t-n+1..t; 0 where HH == LL. TA-Lib WILLR. Warm-up n-1."""
    n = P.window(length, minimum=2)
    return run_ta(lambda h, l, c: talib.WILLR(h, l, c, n), _hlc(high, low, close))


def cci(high, low, close, length=20):
    """Commodity Channel Index: tp = (h + l + c) / 3; CCI = (tp[t] - m) / (0.015 * md) with
    m = mean(tp[t-n+1..t]) and md = mean(|tp[i] - m|) over the same bars (Lambert's constant
    0.015); 0 where |tp[t] - m| or the summed deviation is below 1e-8 (TA-Lib's TA_IS_ZERO: a
    flat window, or tp[t] equal to the mean up to rounding). TA-Lib CCI: the window's sums run
    over its ring buffer in slot order (slot = bar number mod n), which the streaming form
    repeats. Warm-up n-1."""
    n = P.window(length, minimum=2)
    return run_ta(lambda h, l, c: talib.CCI(h, l, c, n), _hlc(high, low, close))


def obv(close, volume):
    """On-balance volume: obv[0] = volume[0]; then obv[t] = obv[t-1] + volume[t] when
    c[t] > c[t-1], - volume[t] when c[t] < c[t-1], unchanged when equal (t-1 the previous
    valid bar). TA-Lib OBV: it starts at the first bar's volume, not 0, so levels differ
    from a zero-based count by that constant. Warm-up 0."""
    return run_ta(talib.OBV, [as_series(close, "close"), as_series(volume, "volume")])


def sar_params(accel, maximum):
    """Validate Parabolic SAR factors: both finite and above 0, accel <= max (TA-Lib would
    silently lower accel to max)."""
    a = P.real(accel, "accel")
    m = P.real(maximum, "max")
    if not a > 0 or not m > 0:
        raise ValueError(f"sar: accel and max must be above 0, got {a:g} and {m:g}")
    if a > m:
        raise ValueError(f"sar: accel {a:g} is above max {m:g}")
    return a, m


def sar(high, low, accel=0.02, maximum=0.2):
    """Parabolic SAR (Wilder; TA-Lib SAR). Bar 1 starts the trend: short when bar 1's -DM is
    positive (l[0]-l[1] > 0 and > h[1]-h[0]), else long; a long starts with sar = l[0] and
    ep = h[1], a short with sar = h[0] and ep = l[1]; af = accel. At each bar t >= 1, with
    p = t-1 its previous bar (bar 1 counts as its own previous bar):
    * long and l[t] <= sar: a reversal. The output is r = max(ep, h[p], h[t]); the trend turns
      short with af = accel, ep = l[t], and the next sar is max(r + af*(ep - r), h[p], h[t]);
    * long otherwise: the output is sar; a new high h[t] > ep becomes ep and raises af by
      accel (up to max); the next sar is min(sar + af*(ep - sar), l[p], l[t]);
    * short: the mirror image (h[t] >= sar reverses at min(ep, l[p], l[t]); a new low lowers
      ep; the next sar is kept at or above h[p] and h[t]).
    TA-Lib's C library (in the ta-lib wheel) computes sar + af*(ep - sar) with one rounding (a
    fused multiply-add), and the streaming form does too. accel and max must be above 0 and
    accel <= max. Warm-up 1."""
    a, m = sar_params(accel, maximum)
    return run_ta(lambda h, l: talib.SAR(h, l, a, m), [as_series(high, "high"), as_series(low, "low")])


# --- Keltner channels (StockCharts' definition, from TA-Lib EMA and ATR) ----------------------


def _keltner(high, low, close, length, mult, atr_length, which):
    n = P.window(length, minimum=2)
    m = P.real(mult, "mult")
    an = P.window(atr_length, "atr_length", 1)

    def raw(h, l, c):
        mid = talib.EMA(c, n)
        if which == 0:
            return mid
        band = talib.ATR(h, l, c, an)
        np.multiply(band, m, out=band)
        with np.errstate(invalid="ignore"):
            return np.add(mid, band, out=band) if which > 0 else np.subtract(mid, band, out=band)

    # no `lead`: TA-Lib's EMA would only skip a NaN run of close, and the rule drops the bars
    # where high or low is missing too; the tail views are what compress/scatter computes
    return run_gapped(raw, _hlc(high, low, close))


def keltner_upper(high, low, close, length=20, mult=2.0, atr_length=10):
    """Upper Keltner channel (StockCharts' current definition; TA-Lib has no Keltner):
    ema(close, length) + mult * atr(atr_length), from TA-Lib EMA (SMA-seeded) and ATR (Wilder,
    seeded with the mean TR of bars 1..atr_length). A bar missing any of high, low, close is
    missing for the channel. Warm-up max(length-1, atr_length)."""
    return _keltner(high, low, close, length, mult, atr_length, 1)


def keltner_middle(high, low, close, length=20, mult=2.0, atr_length=10):
    """Middle Keltner line: ema(close, length) (TA-Lib EMA) over the bars where high, low and
    close are all present (so it is the centre of the upper and lower lines at every bar).
    Does not depend on mult or atr_length. Warm-up length-1."""
    return _keltner(high, low, close, length, mult, atr_length, 0)


def keltner_lower(high, low, close, length=20, mult=2.0, atr_length=10):
    """Lower Keltner channel: ema(close, length) - mult * atr(atr_length). Warm-up
    max(length-1, atr_length)."""
    return _keltner(high, low, close, length, mult, atr_length, -1)
