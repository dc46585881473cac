"""Streaming (bar-by-bar) forms of every kernel.

Each class is built with the kernel's parameters; `update(*one_bar)` returns the
newest output. Cost per bar is O(1) (running sums, recursive EMA/Wilder state) or
O(length) (ring-buffer scans). A bar with a NaN in any input returns NaN (False for
the boolean crosses) and leaves the state untouched, which is the streaming side of
the gap rule in `gaps.py`.

The TA-Lib-backed streams reproduce TA-Lib's seeding and, where it matters for
rounding, the order of its floating-point operations (SMA running total,
`(prev*(n-1)+x)/n` Wilder steps), so bar-by-bar values match the vectorised ones
to ~1e-11 relative or better. Standard deviations are recomputed two-pass from the
ring buffer because TA-Lib's are accurate and a running sum of squares is not.
"""

from __future__ import annotations

import abc
import math
from collections import deque

import numpy as np

from . import params as P
from .numpy_kernels import HURST_FLAT_RTOL, _HURST_W, _LAGS

NAN = float("nan")


class Stream(abc.ABC):
    """Base: the gap rule, then `_step` with plain floats."""

    missing = NAN

    def update(self, *bar):
        vals = [float(v) for v in bar]
        for v in vals:
            if v != v:
                return self.missing
        return self._step(*vals)

    @abc.abstractmethod
    def _step(self, *bar):
        """The newest output for one bar whose inputs are all numbers."""


class _Window(Stream):
    """The last n values in a ring buffer; NaN until it is full, then `_full(x)` (x the newest)."""

    def __init__(self, length, minimum=2):
        self.n = P.window(length, minimum=minimum)
        self.buf = deque(maxlen=self.n)

    def _step(self, x):
        self.buf.append(x)
        if len(self.buf) < self.n:
            return NAN
        return self._full(x)

    @abc.abstractmethod
    def _full(self, x):
        """The output once the buffer holds n values."""


# --- moving averages -----------------------------------------------------------


class SMA(Stream):
    """TA-Lib SMA: running total, add the new value, divide, drop the trailing one."""

    def __init__(self, length):
        self.n = P.window(length, minimum=2)
        self.buf = deque()
        self.total = 0.0

    def _step(self, x):
        self.buf.append(x)
        self.total += x
        if len(self.buf) < self.n:
            return NAN
        out = self.total / self.n
        self.total -= self.buf.popleft()
        return out


class _Exp(Stream):
    """SMA-seeded exponential recursion (TA-Lib EMA; RMA with alpha = 1/n)."""

    def __init__(self, n, alpha):
        self.n, self.k = n, alpha
        self.count, self.seed, self.prev = 0, 0.0, NAN

    def _step(self, x):
        if self.count < self.n:
            self.count += 1
            self.seed += x
            if self.count < self.n:
                return NAN
            self.prev = self.seed / self.n
        else:
            self.prev = (x - self.prev) * self.k + self.prev
        return self.prev


class EMA(_Exp):
    def __init__(self, length):
        n = P.window(length, minimum=2)
        super().__init__(n, 2.0 / (n + 1))


class RMA(_Exp):
    def __init__(self, length):
        n = P.window(length, minimum=2)
        super().__init__(n, 1.0 / n)


class WMA(_Window):
    def __init__(self, length):
        super().__init__(length)
        self.div = self.n * (self.n + 1) / 2.0

    def _full(self, x):
        return sum(k * v for k, v in enumerate(self.buf, 1)) / self.div


def _pop_std(buf, mean):
    """Two-pass population std of a small buffer around a given mean."""
    ss = 0.0
    for v in buf:
        e = v - mean
        ss += e * e
    return math.sqrt(ss / len(buf))


class Stdev(_Window):
    """Population std of the ring buffer, two-pass (O(n)). TA-Lib 0.6+'s STDDEV is
    accurate to ~1e-11 relative; a naive running sum of x^2 is not (1e-7 on 1-minute
    futures prices), so the stream recomputes from the buffer."""

    def _full(self, x):
        return _pop_std(self.buf, sum(self.buf) / self.n)


class _Extreme(_Window):
    def __init__(self, length, fn):
        super().__init__(length)
        self.fn = fn

    def _full(self, x):
        return self.fn(self.buf)


class Highest(_Extreme):
    def __init__(self, length):
        super().__init__(length, max)


class Lowest(_Extreme):
    def __init__(self, length):
        super().__init__(length, min)


# --- differences ----------------------------------------------------------------


class Change(Stream):
    def __init__(self, length=1):
        self.n = P.window(length, minimum=1)
        self.buf = deque(maxlen=self.n + 1)

    def _step(self, x):
        self.buf.append(x)
        return x - self.buf[0] if len(self.buf) > self.n else NAN


class ROC(Change):
    def _step(self, x):
        self.buf.append(x)
        if len(self.buf) <= self.n:
            return NAN
        prev = self.buf[0]
        return (x / prev - 1.0) * 100.0 if prev != 0.0 else 0.0


# --- oscillators ----------------------------------------------------------------


class RSI(Stream):
    """TA-Lib RSI: plain mean of the first n gains/losses, then Wilder smoothing."""

    def __init__(self, length=14):
        self.n = P.window(length, minimum=2)
        self.prev = None
        self.count = 0
        self.gain = self.loss = 0.0

    def _out(self):
        s = self.gain + self.loss
        return 100.0 * (self.gain / s) if s != 0.0 else 0.0

    def _step(self, x):
        if self.prev is None:
            self.prev = x
            return NAN
        d = x - self.prev
        self.prev = x
        n = self.n
        if self.count < n:
            self.count += 1
            if d < 0:
                self.loss -= d
            else:
                self.gain += d
            if self.count < n:
                return NAN
            self.loss /= n
            self.gain /= n
            return self._out()
        self.loss *= n - 1
        self.gain *= n - 1
        if d < 0:
            self.loss -= d
        else:
            self.gain += d
        self.loss /= n
        self.gain /= n
        return self._out()


def _true_range(h, l, pc):
    out = h - l
    t = abs(h - pc)
    if t > out:
        out = t
    t = abs(l - pc)
    return t if t > out else out


class TR(Stream):
    def __init__(self):
        self.pc = None

    def _step(self, h, l, c):
        pc, self.pc = self.pc, c
        return NAN if pc is None else _true_range(h, l, pc)


class ATR(Stream):
    """TA-Lib ATR: mean of TR over bars 1..n, then (atr*(n-1) + tr)/n."""

    def __init__(self, length=14):
        self.n = P.window(length, minimum=1)
        self.tr = TR()
        self.count, self.total, self.prev = 0, 0.0, NAN

    def _step(self, h, l, c):
        t = self.tr._step(h, l, c)
        if t != t:
            return NAN
        n = self.n
        if n == 1:
            return t
        if self.count < n:
            self.count += 1
            self.total += t
            if self.count < n:
                return NAN
            self.prev = self.total / n
            return self.prev
        self.prev = (self.prev * (n - 1) + t) / n
        return self.prev


class ADX(Stream):
    """TA-Lib ADX state machine (see talib_backed.adx for the seeding)."""

    def __init__(self, length=14):
        self.n = P.window(length, minimum=2)
        self.bars = 0
        self.ph = self.pl = self.pc = 0.0
        self.pdm = self.mdm = self.tr = 0.0
        self.sum_dx = 0.0
        self.adx = NAN

    def _di_dx(self):
        if self.tr == 0.0:
            return None
        mdi = 100.0 * (self.mdm / self.tr)
        pdi = 100.0 * (self.pdm / self.tr)
        s = mdi + pdi
        if s == 0.0:
            return None
        return 100.0 * (abs(mdi - pdi) / s)

    def _step(self, h, l, c):
        n = self.n
        k = self.bars
        self.bars += 1
        if k == 0:
            self.ph, self.pl, self.pc = h, l, c
            return NAN
        diff_p = h - self.ph
        diff_m = self.pl - l
        self.ph, self.pl = h, l
        if k >= n:  # Wilder update of the running sums
            self.mdm -= self.mdm / n
            self.pdm -= self.pdm / n
        if diff_m > 0 and diff_p < diff_m:
            self.mdm += diff_m
        elif diff_p > 0 and diff_p > diff_m:
            self.pdm += diff_p
        t = _true_range(h, l, self.pc)
        self.tr = self.tr + t if k < n else self.tr - self.tr / n + t
        self.pc = c
        if k < n:
            return NAN
        dx = self._di_dx()
        if k < 2 * n - 1:
            if dx is not None:
                self.sum_dx += dx
            return NAN
        if k == 2 * n - 1:
            if dx is not None:
                self.sum_dx += dx
            self.adx = self.sum_dx / n
            return self.adx
        if dx is not None:
            self.adx = (self.adx * (n - 1) + dx) / n
        return self.adx


# Measured on TA-Lib 0.6/0.8: typical prices within ~1e-14*(|a|+|b|) of each other
# count as unchanged (no money flow either way); exact ties in exact arithmetic can
# differ by an ulp after (h+l+c)/3, so this matters on real data.
MFI_TIE_RTOL = 1e-14


class MFI(Stream):
    """TA-Lib MFI: ring buffer of (positive, negative) flows and running sums."""

    def __init__(self, length=14):
        self.n = P.window(length, minimum=2)
        self.prev_tp = None
        self.flows = deque()
        self.pos = self.neg = 0.0

    def _step(self, h, l, c, v):
        tp = (h + l + c) / 3.0
        if self.prev_tp is None:
            self.prev_tp = tp
            return NAN
        if len(self.flows) == self.n:
            op, on = self.flows.popleft()
            self.pos -= op
            self.neg -= on
        d = tp - self.prev_tp
        if abs(d) <= MFI_TIE_RTOL * (abs(tp) + abs(self.prev_tp)):
            d = 0.0  # TA-Lib 0.6+ treats near-equal typical prices as unchanged
        self.prev_tp = tp
        raw = tp * v
        if d < 0:
            flow = (0.0, raw)
            self.neg += raw
        elif d > 0:
            flow = (raw, 0.0)
            self.pos += raw
        else:
            flow = (0.0, 0.0)
        self.flows.append(flow)
        if len(self.flows) < self.n:
            return NAN
        s = self.pos + self.neg
        # TA-Lib: a total flow within 1e-8 of zero (running-sum residue) gives 0
        return 100.0 * (self.pos / s) if abs(s) >= 1e-8 else 0.0


# --- bands ------------------------------------------------------------------------


class BBands(Stream):
    """TA-Lib BBANDS with SMA: middle = SMA (TA-Lib's running total), std = two-pass
    population std of the window; bands = middle +/- mult*std. `which` picks
    upper/middle/lower/width."""

    def __init__(self, length=20, mult=2.0, which="upper"):
        self.m = P.real(mult, "mult")
        self.which = which
        self.sma = SMA(length)
        self.buf = deque(maxlen=self.sma.n)

    def _step(self, x):
        self.buf.append(x)
        mid = self.sma._step(x)
        if mid != mid:
            return NAN
        sd = _pop_std(self.buf, mid)
        dev = sd if self.m == 1.0 else sd * self.m
        up, lo = mid + dev, mid - dev
        if self.which == "upper":
            return up
        if self.which == "lower":
            return lo
        if self.which == "middle":
            return mid
        return (up - lo) / mid if mid != 0.0 else NAN


def bb_stream(which):
    def make(length=20, mult=2.0):
        return BBands(length, mult, which)
    make.__name__ = f"bb_{which}_stream"
    return make


class MACD(Stream):
    """TA-Lib MACD: both EMAs start at bar slow-1 (fast one seeded with the mean of
    the last `fast` of the first `slow` values); the signal EMA is seeded with the
    mean of the first `signal` MACD values. `which` picks macd/signal/hist."""

    def __init__(self, fast=12, slow=26, signal=9, which="macd"):
        self.f, self.s, self.g = P.macd_periods(fast, slow, signal)
        self.which = which
        self.kf, self.ks = 2.0 / (self.f + 1), 2.0 / (self.s + 1)
        self.warm = deque(maxlen=self.s)
        self.fe = self.se = NAN
        self.sig = _Exp(self.g, 2.0 / (self.g + 1))

    def _step(self, x):
        if self.fe != self.fe:
            self.warm.append(x)
            if len(self.warm) < self.s:
                return NAN
            vals = list(self.warm)
            tot = 0.0
            for v in vals:
                tot += v
            self.se = tot / self.s
            tot = 0.0
            for v in vals[self.s - self.f:]:
                tot += v
            self.fe = tot / self.f
            self.warm = None
        else:
            self.fe = (x - self.fe) * self.kf + self.fe
            self.se = (x - self.se) * self.ks + self.se
        line = self.fe - self.se
        if self.which == "macd":
            return line
        sig = self.sig._step(line)
        if self.which == "signal":
            return sig
        return line - sig


def macd_stream(which):
    def make(fast=12, slow=26, signal=9):
        return MACD(fast, slow, signal, which)
    make.__name__ = f"macd_{which}_stream"
    return make


# --- numpy-kernel streams -----------------------------------------------------------


class ZScore(Stream):
    def __init__(self, length):
        self.sma, self.sd = SMA(length), Stdev(length)

    def _step(self, x):
        m, s = self.sma._step(x), self.sd._step(x)
        if m != m:
            return NAN
        return (x - m) / s if s != 0.0 else NAN


class PercentRank(Stream):
    def __init__(self, length):
        self.n = P.window(length, minimum=1)
        self.buf = deque(maxlen=self.n)

    def _step(self, x):
        out = NAN
        if len(self.buf) == self.n:
            out = sum(1 for v in self.buf if v <= x) / self.n
        self.buf.append(x)
        return out


class Hurst(_Window):
    """Recomputes the 19 lagged-difference stds from the ring buffer: O(19*length)."""

    def __init__(self, length=100):
        super().__init__(length, minimum=P.HURST_MIN_LENGTH)

    def _full(self, x):
        w = np.fromiter(self.buf, float, self.n)
        acc = 0.0
        for L, wt in zip(_LAGS, _HURST_W):
            d = w[L:] - w[:-L]
            var = d.var()
            if var <= HURST_FLAT_RTOL * float(np.dot(d, d)) / len(d) or var <= 0:
                return NAN
            acc += wt * 0.5 * math.log(var)
        return acc


class VWAP(Stream):
    def __init__(self):
        self.session = None
        self.pv = self.v = 0.0

    def _step(self, h, l, c, v, session):
        if session != self.session:
            self.session = session
            self.pv = self.v = 0.0
        self.pv += (h + l + c) / 3.0 * v
        self.v += v
        return self.pv / self.v if self.v != 0.0 else NAN


class IVRank(_Window):
    def __init__(self, length=252):
        super().__init__(length)

    def _full(self, x):
        lo, hi = min(self.buf), max(self.buf)
        return (x - lo) / (hi - lo) if hi != lo else NAN


class _Cross(Stream):
    missing = False

    def __init__(self, above):
        self.above = above
        self.prev = None

    def _step(self, a, b):
        p, self.prev = self.prev, (a, b)
        if p is None:
            return False
        if self.above:
            return a > b and p[0] <= p[1]
        return a < b and p[0] >= p[1]


def crosses_above_stream():
    return _Cross(True)


def crosses_below_stream():
    return _Cross(False)


# --- stochastics, Williams %R, CCI, OBV, SAR, Keltner -----------------------------------------


class _Mean(Stream):
    """TA-Lib's SMA inside STOCH: the running total of `SMA`, or the value itself for n = 1."""

    def __init__(self, n):
        self.sma = SMA(n) if n > 1 else None

    def _step(self, x):
        return x if self.sma is None else self.sma._step(x)


class _Range(Stream):
    """The last n highs and lows; `_full(hh, ll, c)` once n bars are in."""

    def __init__(self, length, minimum):
        self.n = P.window(length, minimum=minimum)
        self.highs = deque(maxlen=self.n)
        self.lows = deque(maxlen=self.n)

    def _step(self, h, l, c):
        self.highs.append(h)
        self.lows.append(l)
        if len(self.highs) < self.n:
            return NAN
        return self._full(max(self.highs), min(self.lows), c)


class Stoch(_Range):
    """TA-Lib STOCH with SMA smoothing: fast %K = (c - LL) / (HH - LL) * 100 (0 on a flat
    window), %K its mean over smooth_k, %D the mean of %K over smooth_d. `which` is "k" or
    "d"."""

    def __init__(self, length=14, smooth_k=3, smooth_d=3, which="k"):
        super().__init__(length, 1)
        self.k = _Mean(P.window(smooth_k, "smooth_k", 1))
        self.d = _Mean(P.window(smooth_d, "smooth_d", 1)) if which == "d" else None

    def _full(self, hh, ll, c):
        diff = hh - ll
        fast = (c - ll) / diff * 100.0 if diff != 0.0 else 0.0
        k = self.k._step(fast)
        if self.d is None or k != k:
            return k
        return self.d._step(k)


def stoch_k_stream(length=14, smooth_k=3):
    return Stoch(length, smooth_k, 1, "k")


def stoch_d_stream(length=14, smooth_k=3, smooth_d=3):
    return Stoch(length, smooth_k, smooth_d, "d")


class WillR(_Range):
    """TA-Lib WILLR: (HH - c) / (HH - LL) * -100, 0 on a flat window."""

    def __init__(self, length=14):
        super().__init__(length, 2)

    def _full(self, hh, ll, c):
        diff = hh - ll
        return (hh - c) / diff * -100.0 if diff != 0.0 else 0.0


# TA-Lib's CCI is 0 where the distance from the mean or the summed deviation is within 1e-8
# of 0 (its TA_IS_ZERO): a flat window, and a typical price equal to the mean up to rounding.
CCI_ZERO = 1e-8


class CCI(Stream):
    """TA-Lib CCI: typical prices in a ring of n slots (bar k of the series in slot k mod n),
    the mean and the mean absolute deviation summed over the slots in slot order, as TA-Lib's
    circular buffer does, so the values are TA-Lib's to the bit."""

    def __init__(self, length=20):
        self.n = P.window(length, minimum=2)
        self.ring = [0.0] * self.n
        self.slot = 0
        self.count = 0

    def _step(self, h, l, c):
        tp = (h + l + c) / 3
        ring, n = self.ring, self.n
        ring[self.slot] = tp
        self.slot = (self.slot + 1) % n
        if self.count < n - 1:
            self.count += 1
            return NAN
        mean = 0.0
        for v in ring:
            mean += v
        mean /= n
        dev = 0.0
        for v in ring:
            dev += abs(v - mean)
        diff = tp - mean
        if -CCI_ZERO < diff < CCI_ZERO or -CCI_ZERO < dev < CCI_ZERO:
            return 0.0
        return diff / (0.015 * (dev / n))


class OBV(Stream):
    """TA-Lib OBV: the first bar's volume, then += / -= each bar's volume on an up / down close."""

    def __init__(self):
        self.prev = None
        self.total = 0.0

    def _step(self, c, v):
        if self.prev is None:
            self.total = v
        elif c > self.prev:
            self.total += v
        elif c < self.prev:
            self.total -= v
        self.prev = c
        return self.total


def _fused(a, b, c):
    """a*b + c rounded once (a fused multiply-add): TA-Lib's C library computes its SAR step
    this way (its compiler fuses the multiply and the add), so the stream does too. The exact
    value is a ratio of integers over a power of two, and Python's int / int is correctly
    rounded (about 1 us; infinities and NaN, which have no ratio, take the plain float path)."""
    try:
        an, ad = a.as_integer_ratio()
        bn, bd = b.as_integer_ratio()
        cn, cd = c.as_integer_ratio()
    except (OverflowError, ValueError):
        return a * b + c
    d = ad * bd
    if d >= cd:
        return (an * bn + cn * (d // cd)) / d
    return (an * bn * (cd // d) + cn) / cd


class SAR(Stream):
    """TA-Lib SAR, bar by bar (see talib_backed.sar for the rules and the start)."""

    def __init__(self, accel=0.02, maximum=0.2):
        from .talib_backed import sar_params

        self.accel, self.max = sar_params(accel, maximum)
        self.bars = 0

    def _step(self, h, l):
        if self.bars == 0:
            self.bars = 1
            self.h0, self.l0 = h, l
            return NAN
        if self.bars == 1:
            self.bars = 2
            up, down = h - self.h0, self.l0 - l
            self.long = not (down > 0 and down > up)     # bar 1's -DM decides
            self.af = self.accel
            self.ep, self.sar = (h, self.l0) if self.long else (l, self.h0)
            self.nh, self.nl = h, l                     # bar 1 is its own previous bar
        ph, pl = self.nh, self.nl
        self.nh, self.nl = h, l
        sar, ep = self.sar, self.ep
        if self.long:
            if l <= sar:                                # reversal: short from the old extreme
                self.long = False
                sar = max(ep, ph, h)
                out = sar
                self.af = self.accel
                ep = l
                sar = max(_fused(self.af, ep - sar, sar), ph, h)
            else:
                out = sar
                if h > ep:
                    ep = h
                    self.af = min(self.af + self.accel, self.max)
                sar = min(_fused(self.af, ep - sar, sar), pl, l)
        else:
            if h >= sar:                                # reversal: long from the old extreme
                self.long = True
                sar = min(ep, pl, l)
                out = sar
                self.af = self.accel
                ep = h
                sar = min(_fused(self.af, ep - sar, sar), pl, l)
            else:
                out = sar
                if l < ep:
                    ep = l
                    self.af = min(self.af + self.accel, self.max)
                sar = max(_fused(self.af, ep - sar, sar), ph, h)
        self.sar, self.ep = sar, ep
        return out


class Keltner(Stream):
    """ema(close, length) +/- mult * atr(atr_length) from the EMA and ATR streams (both
    stepped every bar). `which` is "upper", "middle" or "lower"."""

    def __init__(self, length=20, mult=2.0, atr_length=10, which="upper"):
        self.m = P.real(mult, "mult")
        self.ema = EMA(length)
        self.atr = ATR(P.window(atr_length, "atr_length", 1))
        self.which = which

    def _step(self, h, l, c):
        mid = self.ema._step(c)
        band = self.atr._step(h, l, c)
        if self.which == "middle":
            return mid
        if mid != mid or band != band:
            return NAN
        band = band * self.m
        return mid + band if self.which == "upper" else mid - band


def keltner_stream(which):
    def make(length=20, mult=2.0, atr_length=10):
        return Keltner(length, mult, atr_length, which)
    make.__name__ = f"keltner_{which}_stream"
    return make
