"""The simulated clock and the market model: prices replayed from bars, quotes from a spread
model, option quotes and greeks from Black-Scholes on a volatility smile.

Clock: simulated time = start + (wall time since start) x speed, plus whatever `advance()` added.
Price path inside a bar: open -> low -> high -> close when the bar closed up, open -> high -> low
-> close when it closed down, linear in time over the bar; a daily bar spans 09:30-16:00 New York (to 13:00 on NYSE's early closes).
Before a symbol's first bar it sits at that bar's open, after its last bar at the last close.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import time
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from engine.market import options as bsm
from engine.market.chains import Skew, Spread

from .catalog import CARRY, Instrument
from .hours import Hours, early_close

NY = ZoneInfo("America/New_York")
NS = 1_000_000_000
DAY_NS = 86400 * NS
OPEN_NS = (9 * 3600 + 1800) * NS
CLOSE_NS = 16 * 3600 * NS


class Clock:
    def __init__(self, start: dt.datetime, speed: float = 1.0):
        if start.tzinfo is None:
            raise ValueError("the clock's start must be timezone-aware")
        self.start_ns = int(start.timestamp() * NS)
        self.speed = float(speed)
        self.wall0 = time.monotonic()
        self.offset_ns = 0

    def now_ns(self) -> int:
        return self.start_ns + int((time.monotonic() - self.wall0) * self.speed * NS) + self.offset_ns

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.now_ns() / NS, tz=dt.timezone.utc)

    def advance(self, seconds: float) -> None:
        self.offset_ns += int(seconds * NS)

    def set_speed(self, speed: float) -> None:
        now = self.now_ns()
        self.speed = float(speed)
        self.wall0 = time.monotonic()
        self.start_ns, self.offset_ns = now, 0


@dataclass
class Quote:
    bid: float
    ask: float
    last: float
    bidSize: float
    askSize: float
    lastSize: float
    volume: float
    close: float  # previous session's close
    open: float
    high: float
    low: float
    greeks: tuple | None = None  # (iv, delta, optPrice, gamma, vega/pt, theta/day, undPrice)
    nan: bool = False


class Series:
    """One symbol's bars as arrays, with per-day running open/high/low/volume and prior close."""

    def __init__(self, frame: pd.DataFrame):
        idx = frame.index
        self.t = idx.tz_convert("UTC").as_unit("ns").asi8.astype(np.int64)
        self.o = frame["open"].to_numpy(float)
        self.h = frame["high"].to_numpy(float)
        self.l = frame["low"].to_numpy(float)
        self.c = frame["close"].to_numpy(float)
        v = frame["volume"].to_numpy(float)
        self.v = np.where(np.isfinite(v), v, 0.0)
        self.frame = frame
        gaps = np.diff(self.t)
        self.bar_ns = int(np.median(gaps)) if gaps.size else DAY_NS
        self.daily = self.bar_ns >= 20 * 3600 * NS
        local = idx.tz_convert(NY).as_unit("ns")
        days = np.asarray(local.normalize().as_unit("ns").asi8)
        self.day = days
        self._day_end: dict[int, int] = {}  # bar -> a daily bar's end, found when the bar is first priced
        starts = np.r_[0, np.flatnonzero(days[1:] != days[:-1]) + 1]
        self.day_start = np.repeat(starts, np.diff(np.r_[starts, len(days)]))
        # running values within the day, through bar i inclusive
        self.run_high = np.empty_like(self.h)
        self.run_low = np.empty_like(self.l)
        self.run_vol = np.empty_like(self.v)
        for s, e in zip(starts, np.r_[starts[1:], len(days)]):
            self.run_high[s:e] = np.maximum.accumulate(self.h[s:e])
            self.run_low[s:e] = np.minimum.accumulate(self.l[s:e])
            self.run_vol[s:e] = np.cumsum(self.v[s:e])
        prev_close = np.full(len(days), np.nan)
        for k, s in enumerate(starts):
            prev_close[s:(starts[k + 1] if k + 1 < len(starts) else len(days))] = self.c[s - 1] if s > 0 else self.o[0]
        self.prev_close = prev_close
        closes = pd.Series(self.c, index=days).groupby(level=0).last().to_numpy()
        rets = np.diff(np.log(closes[closes > 0]))
        if rets.size >= 5:
            vol = float(np.std(rets[-60:]) * math.sqrt(252))
        else:
            r = np.diff(np.log(self.c[self.c > 0]))
            per_year = 252 * 6.5 * 3600 * NS / max(self.bar_ns, 1)
            vol = float(np.std(r) * math.sqrt(per_year)) if r.size > 2 else 0.2
        self.vol = min(max(vol if math.isfinite(vol) else 0.2, 0.08), 1.5)

    def span(self, i: int) -> tuple[int, int]:
        if self.daily:
            end = self._day_end.get(i)
            if end is None:     # the close, or an early close's (the calendar read for the years replayed only)
                day = int(self.day[i])
                end = self._day_end[i] = early_close(dt.datetime.fromtimestamp(day / NS, tz=NY).date()) \
                    or day + CLOSE_NS
            return int(self.day[i]) + OPEN_NS, end
        return int(self.t[i]), int(self.t[i]) + self.bar_ns

    def index(self, t_ns: int) -> int:
        return int(np.searchsorted(self.t, t_ns, side="right")) - 1

    def price(self, t_ns: int) -> tuple[float, int]:
        """(price, bar index) at t; index -1 before the first bar."""
        i = self.index(t_ns)
        if i < 0:
            return float(self.o[0]), -1
        start, end = self.span(i)
        if t_ns < start:        # (at the open itself: the open)
            return (float(self.c[i - 1]) if i > 0 else float(self.o[i])), i
        if t_ns >= end:
            return float(self.c[i]), i
        f = (t_ns - start) / (end - start)
        o, h, l, c = self.o[i], self.h[i], self.l[i], self.c[i]
        path = (o, l, h, c) if c >= o else (o, h, l, c)
        seg = min(int(f * 3), 2)
        g = f * 3 - seg
        return float(path[seg] + (path[seg + 1] - path[seg]) * g), i


@functools.lru_cache(maxsize=4096)
def _expiry_ns(ymd: str) -> int:
    """An option's expiry moment: 16:00 New York on its last trading day, in epoch ns."""
    expiry = dt.datetime.strptime(ymd, "%Y%m%d").replace(hour=16, tzinfo=NY)
    return int(expiry.timestamp()) * NS


def round_tick(price: float, tick: float, up: bool | None = None) -> float:
    units = price / tick
    units = math.ceil(units - 1e-9) if up else math.floor(units + 1e-9) if up is False else round(units)
    return round(units * tick, 10)


class Market:
    """Quotes for any catalog instrument at any simulated time."""

    def __init__(self, series: dict[str, Series], clock: Clock):
        self.series = series
        self.clock = clock
        self.pinned: dict[int, dict] = {}  # conId -> fixed values set from the API
        self.nan: set[str] = set()  # symbols answering NaN/empty quotes
        self.skew = Skew()
        self.spread = Spread()
        self.vendor: dict = {}  # underlying -> VendorChains: options listed in a chain file quote from it
        self.hours = Hours()

    def underlying_price(self, inst: Instrument, t_ns: int | None = None) -> tuple[float, Series, int]:
        t = self.clock.now_ns() if t_ns is None else t_ns
        s = self.series[inst.price_source]
        p, i = s.price(t)
        p *= inst.price_factor
        if inst.secType == "FUT" and inst.carry_days:
            p *= 1.0 + CARRY * inst.carry_days / 365.0
        return p, s, i

    def quote(self, inst: Instrument, t_ns: int | None = None) -> Quote:
        return self.quotes([inst], t_ns)[0]

    def quotes(self, insts: list[Instrument], t_ns: int | None = None) -> list[Quote]:
        """Quotes for many contracts at one time; the options among them are priced in one
        vectorised Black-Scholes call."""
        t = self.clock.now_ns() if t_ns is None else t_ns
        out: list[Quote | None] = [None] * len(insts)
        for k, inst in enumerate(insts):
            if inst.secType == "OPT" and "vendor" in inst.extra and inst.symbol in self.vendor:
                out[k] = self._vendor(inst, t)
        options = [k for k, inst in enumerate(insts) if inst.secType == "OPT" and out[k] is None]
        if options:
            for k, q in zip(options, self._options([insts[k] for k in options], t)):
                out[k] = q
        for k, inst in enumerate(insts):
            if out[k] is None:
                out[k] = self._plain(inst, t)
        return [self._finish(inst, q) for inst, q in zip(insts, out)]

    def _plain(self, inst: Instrument, t: int) -> Quote:
        p, s, i = self.underlying_price(inst, t)
        f = inst.price_factor * ((1.0 + CARRY * inst.carry_days / 365.0) if inst.secType == "FUT" else 1.0)
        last = round_tick(p, inst.minTick)
        if inst.secType == "IND":
            bid = ask = -1.0
            bsz = asz = 0.0
        elif inst.secType == "FUT":  # a one-tick market, the last trade on one side of it
            bid = round_tick(p, inst.minTick, up=False)
            ask = round(bid + inst.minTick, 10)
            last = bid if p - bid < ask - p else ask
            bsz = float(1 + (i * 37 + 11) % 30)
            asz = float(1 + (i * 53 + 7) % 30)
        else:
            half = max(inst.minTick, round_tick(p * 0.0001, inst.minTick))
            bid, ask = round_tick(last - half, inst.minTick, up=False), round_tick(last + half, inst.minTick, up=True)
            if bid >= last:
                bid = round(last - inst.minTick, 10)
            if ask <= last:
                ask = round(last + inst.minTick, 10)
            bsz = float(1 + (i * 37 + 11) % 30) * (100 if inst.secType == "STK" else 1)
            asz = float(1 + (i * 53 + 7) % 30) * (100 if inst.secType == "STK" else 1)
        if i >= 0:
            vol = float(s.run_vol[i])
            prev, opn = float(s.prev_close[i]) * f, float(s.o[s.day_start[i]]) * f
            hi, lo = max(float(s.run_high[i]) * f, last), min(float(s.run_low[i]) * f, last)
        else:
            vol, prev, opn, hi, lo = 0.0, last, last, last, last
        q = Quote(bid=bid, ask=ask, last=last, bidSize=bsz, askSize=asz, lastSize=float(max(1, (i * 7) % 5)) * (100 if inst.secType == "STK" else 1),
                  volume=vol, close=round_tick(prev, inst.minTick), open=round_tick(opn, inst.minTick),
                  high=round_tick(hi, inst.minTick), low=round_tick(lo, inst.minTick))
        return q

    def _finish(self, inst: Instrument, q: Quote) -> Quote:
        pin = self.pinned.get(inst.conId)
        if pin:
            for k, v in pin.items():
                setattr(q, k, v)
        if inst.symbol in self.nan or inst.underSymbol in self.nan:
            q.bid = q.ask = -1.0
            q.bidSize = q.askSize = 0.0
            q.last = float("nan")
            q.nan = True
        return q

    def _vendor(self, inst: Instrument, t: int) -> Quote:
        chain, i = self.vendor[inst.symbol].at(inst.extra["vendor"], t)
        if i is None:  # the snapshot in force does not list it: no market
            return Quote(bid=-1.0, ask=-1.0, last=float("nan"), bidSize=0.0, askSize=0.0, lastSize=0.0, volume=0.0,
                         close=float("nan"), open=float("nan"), high=float("nan"), low=float("nan"), nan=True)
        bid, ask, mid = float(chain.bid[i]), float(chain.ask[i]), float(chain.mid[i])
        has_bid = math.isfinite(bid) and bid > 0
        has_ask = math.isfinite(ask) and ask > 0
        size = float(10 + inst.conId % 40)
        last = mid if math.isfinite(mid) else float("nan")
        iv, delta, gamma, vega, theta = (float(getattr(chain, n)[i]) for n in ("iv", "delta", "gamma", "vega", "theta"))
        greeks = None
        if all(math.isfinite(v) for v in (iv, delta, gamma, vega, theta, mid)):
            greeks = (iv, delta, mid, gamma, vega / 100.0, theta / 365.0, float(chain.underlying_price))
        vol = float(chain.volume[i]) if math.isfinite(chain.volume[i]) else 0.0
        return Quote(bid=bid if has_bid else -1.0, ask=ask if has_ask else -1.0, last=last,
                     bidSize=size if has_bid else 0.0, askSize=size if has_ask else 0.0, lastSize=1.0, volume=vol,
                     close=last, open=last, high=ask if has_ask else last, low=bid if has_bid else last,
                     greeks=greeks, nan=not (has_bid and has_ask))

    def _options(self, insts: list[Instrument], t: int) -> list[Quote]:
        n = len(insts)
        S = np.empty(n)
        K = np.array([i.strike for i in insts], dtype=float)
        T = np.empty(n)
        atm = np.empty(n)
        bar = np.empty(n, dtype=np.int64)
        for k, inst in enumerate(insts):
            S[k], series, bar[k] = self.underlying_price(inst, t)
            atm[k] = series.vol
            expiry = _expiry_ns(inst.lastTradeDate)
            T[k] = max((expiry - t) / (365.0 * DAY_NS), 0.0)
        root_t = np.sqrt(T)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(T > 0, np.log(K / S) / (atm * root_t), 0.0)
        sigma = atm * self.skew(z)
        rights = np.array(["call" if i.right == "C" else "put" for i in insts])
        g = bsm.greeks(S, K, T, 0.0, 0.0, sigma, rights)
        mid = np.asarray(g.price, dtype=float)
        width = self.spread.width(mid, z)
        out = []
        for k, inst in enumerate(insts):
            m = float(mid[k])
            tick = 0.01 if m < 3.0 else 0.05
            bid = max(0.0, round_tick(m - float(width[k]) / 2, tick, up=False))
            ask = max(round_tick(m + float(width[k]) / 2, tick, up=True), tick)
            last = round_tick(m, 0.01)
            size = float(10 + (inst.conId + max(int(bar[k]), 0)) % 40)
            greeks = (float(sigma[k]), float(g.delta[k]), m, float(g.gamma[k]), float(g.vega[k]) / 100.0,
                      float(g.theta[k]) / 365.0, float(S[k]))
            out.append(Quote(bid=bid, ask=ask, last=last, bidSize=size if bid > 0 else 0.0, askSize=size,
                             lastSize=1.0, volume=float(100 + (inst.conId % 900)), close=last, open=last, high=ask,
                             low=bid, greeks=greeks))
        return out

    def order_hours(self, inst: Instrument, outside_rth: bool, t_ns: int | None = None) -> bool:
        """Whether an order on inst works at t (IB's default): a future in its session; a stock or
        option in regular hours, a stock order marked outsideRth also in extended hours (hours.py)."""
        return self.hours.works(inst, outside_rth, self.clock.now_ns() if t_ns is None else t_ns)

    def session_end(self, inst: Instrument, t_ns: int) -> int:
        """The end (ns) of the regular session a DAY order placed at t is for: the one under way,
        else the next; an early close ends it early."""
        return self.hours.session_end(inst, t_ns)

    def next_open(self, inst: Instrument, outside_rth: bool, t_ns: int) -> dt.datetime:
        """The moment an order held outside its hours starts to work (IB's 399 names it)."""
        return dt.datetime.fromtimestamp(self.hours.next_open(inst, outside_rth, t_ns) / NS, tz=NY)

    def session_open(self, inst: Instrument, t_ns: int | None = None) -> bool:
        """Whether inst's regular session is open: NYSE's for stocks and options, CME equity
        futures' for futures, holidays and early closes from their calendars (hours.py)."""
        return self.hours.regular(inst, self.clock.now_ns() if t_ns is None else t_ns)
