"""SimBroker: fills orders against historical bars, honestly.

- market orders fill at the next bar's open (or, if the strategy says `fill: close`, at the
  decision bar's close), with adverse slippage;
- a limit order fills on the first bar whose range touches its price: at the open if the bar
  opened through the limit (a gap in our favour), else at the limit; never with slippage;
- a stop order triggers on the first bar whose range touches its price: at the open if the bar
  gapped through the stop, else at the stop, with slippage;
- a stop-limit triggers like a stop and then fills like a limit at its limit price;
- day orders live until the end of the session of the bar after the decision, gtc until filled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..orders.intent import OrderIntent
from .costs import Commission, Slippage


@dataclass
class SymbolBars:
    """One symbol's bars and its contract facts, as arrays (times are UTC nanoseconds)."""

    symbol: str
    start: np.ndarray     # bar start times
    end: np.ndarray       # bar end times (when the bar's close is known)
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    session: np.ndarray   # session id per bar
    multiplier: float = 1.0
    tick_size: float = 0.01
    margined: bool = False      # futures-like accounting
    margin: float = 0.0         # initial margin per contract (futures)
    contracts: bool = False     # commission per contract

    def __len__(self) -> int:
        return len(self.close)


@dataclass(frozen=True)
class SimFill:
    bar: int
    price: float
    time: int       # when it happened (ns): the bar's start for open fills, its end for close fills


class SimBroker:
    """Decides when and at what price an order fills on history."""

    def __init__(self, commission: Commission, slippage: Slippage, fill: str = "next_open"):
        self.commission = commission
        self.slippage = slippage
        self.fill_model = fill

    def fee(self, bars: SymbolBars, quantity: float, price: float) -> float:
        return self.commission(quantity, price, bars.multiplier, bars.contracts)

    def market_price(self, bars: SymbolBars, action: str, price: float) -> float:
        return self.slippage.apply(price, action, bars.tick_size)

    def execute(self, bars: SymbolBars, intent: OrderIntent, decided: int) -> SimFill | None:
        """The fill of an order decided at the close of bar `decided`, or None if it expires."""
        n = len(bars)
        buy = intent.action == "buy"
        kind = intent.order_type
        if kind == "market":
            if self.fill_model == "close":
                return SimFill(decided, self.market_price(bars, intent.action, float(bars.close[decided])),
                               int(bars.end[decided]))
            j = decided + 1
            if j >= n:
                return None
            return SimFill(j, self.market_price(bars, intent.action, float(bars.open[j])), int(bars.start[j]))
        if kind == "moc":
            j = decided + 1
            if j >= n:
                return None
            return SimFill(j, self.market_price(bars, intent.action, float(bars.close[j])), int(bars.end[j]))
        lo, hi = decided + 1, self._expiry(bars, intent, decided)
        if lo >= hi:
            return None
        if kind == "limit":
            return self._limit(bars, buy, float(intent.limit), lo, hi)
        if kind == "loc":
            closes = bars.close[lo:hi]
            ok = closes <= intent.limit if buy else closes >= intent.limit
            j = first_true(ok)
            return None if j is None else SimFill(lo + j, float(bars.close[lo + j]), int(bars.end[lo + j]))
        if kind in ("stop", "stop_limit"):
            hit = first_touch(bars, lo, hi, float(intent.stop), rising=buy)
            if hit is None:
                return None
            j, trigger = hit
            if kind == "stop":
                return SimFill(j, self.market_price(bars, intent.action, trigger), int(bars.start[j]))
            limit = float(intent.limit)
            if (buy and trigger <= limit) or (not buy and trigger >= limit):
                return SimFill(j, trigger, int(bars.start[j]))
            return self._limit(bars, buy, limit, j + 1, hi)
        raise ValueError(f"unknown order type {kind!r}")

    def _limit(self, bars: SymbolBars, buy: bool, limit: float, lo: int, hi: int) -> SimFill | None:
        hit = first_touch(bars, lo, hi, limit, rising=not buy)
        return None if hit is None else SimFill(hit[0], hit[1], int(bars.start[hit[0]]))

    @staticmethod
    def _expiry(bars: SymbolBars, intent: OrderIntent, decided: int) -> int:
        """One past the last bar an order placed at the close of `decided` may fill in."""
        n = len(bars)
        first = decided + 1
        if first >= n:
            return n
        if intent.tif in ("gtc",):
            return n
        if intent.tif in ("ioc", "fok", "opg"):
            return first + 1
        session = bars.session[first]
        return first + int(np.searchsorted(bars.session[first:], session, side="right"))


def first_touch(bars: SymbolBars, lo: int, hi: int, level, rising: bool) -> tuple[int, float] | None:
    """The first bar in [lo, hi) whose range reaches `level` (a price, or one per bar), and the
    price it was reached at: from below (rising: the high gets there) or from above (the low).
    A bar that opens beyond the level gapped through it and is reached at its open. Limits,
    stops and targets all trigger this way."""
    levels = np.asarray(level, dtype=np.float64)
    touched = bars.high[lo:hi] >= levels if rising else bars.low[lo:hi] <= levels
    j = first_true(touched)
    if j is None:
        return None
    lvl = float(levels[j]) if levels.ndim else float(levels)
    opened = float(bars.open[lo + j])
    return lo + j, (max(opened, lvl) if rising else min(opened, lvl))


def first_true(mask: np.ndarray) -> int | None:
    if not len(mask):
        return None
    j = int(np.argmax(mask))
    return j if mask[j] else None
