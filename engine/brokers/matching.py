"""The one set of matching rules: when, and at what price, an order fills against bars.

Every simulated fill in qtrade is decided here: the FillModel venue (bar by bar), the
DryRunBroker (on its inner broker's quotes), the history search the backtest uses to jump over
bars where nothing can fill, the combo spread model. The rules:

- a market order fills at the open of the first bar it works in (or, with `fill: close`, at the
  close of the bar it was decided on), with adverse slippage;
- a limit order fills in the first bar whose range touches its price: at the open if the bar
  opened through it (a gap in our favour), else at the limit; never with slippage;
- a stop triggers in the first bar whose range touches its price: at the open if the bar gapped
  through it, else at the stop, with slippage;
- a stop-limit triggers like a stop; if the trigger price is within its limit it fills there,
  else it works as a limit from the next bar;
- market-on-close fills at the close of its bar; limit-on-close at that close if within limit;
- a combo limit fills once it is at least `fill_fraction` of the way from the natural price
  (crossing every spread) towards mid: a limit at mid of a wide market does not fill. It fills
  at its limit, or at the natural price when the limit is beyond it; a combo market order fills
  at the natural price. Combo prices follow orders.combos' one sign convention.

`match_bar` is the rule for one bar (the venue's); `first_touch` and `fill_on_history` are the
same rule searched over many bars at once (the backtest's), and a property test holds the two
equal on random bars.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..market.series import SymbolBars
from ..orders.combos import debit_of, flip, order_price
from .costs import Commission, Slippage

ORDER_TYPES = ("market", "limit", "stop", "stop_limit", "moc", "loc")


class BarMatch(NamedTuple):
    """The outcome of one bar for one working order (a tuple: the venue makes one per order per
    bar it works in)."""

    price: float | None = None     # the fill price, or None: no fill in this bar
    at_close: bool = False         # filled at the bar's close (moc, loc) rather than inside it
    triggered: bool = False        # a stop-limit's stop was touched: it works as a limit from now on


NO_MATCH = BarMatch()


def match_bar(order_type: str, buy: bool, limit: float | None, stop: float | None,
              o: float, h: float, low: float, c: float, slippage: Slippage, tick: float,
              triggered: bool = False) -> BarMatch:
    """Does a working order fill in the bar (o, h, low, c), and at what price?
    `triggered`: a stop-limit whose stop was touched in an earlier bar (it is a limit now)."""
    if order_type == "market":
        return BarMatch(slippage.apply(o, "buy" if buy else "sell", tick))
    if order_type == "moc":
        return BarMatch(slippage.apply(c, "buy" if buy else "sell", tick), at_close=True)
    if order_type == "loc":
        ok = c <= limit if buy else c >= limit
        return BarMatch(c, at_close=True) if ok else NO_MATCH
    if order_type == "limit" or (order_type == "stop_limit" and triggered):
        return _limit_bar(buy, limit, o, h, low)
    if order_type in ("stop", "stop_limit"):
        if buy and h >= stop:
            trigger = max(o, stop)
        elif not buy and low <= stop:
            trigger = min(o, stop)
        else:
            return NO_MATCH
        if order_type == "stop":
            return BarMatch(slippage.apply(trigger, "buy" if buy else "sell", tick))
        if (buy and trigger <= limit) or (not buy and trigger >= limit):
            return BarMatch(trigger)
        return BarMatch(None, triggered=True)
    raise ValueError(f"unknown order type {order_type!r}")


def _limit_bar(buy: bool, limit: float, o: float, h: float, low: float) -> BarMatch:
    if buy:
        return BarMatch(min(o, limit)) if low <= limit else NO_MATCH
    return BarMatch(max(o, limit)) if h >= limit else NO_MATCH


def first_touch(bars: SymbolBars, lo: int, hi: int, level, rising: bool) -> tuple[int, float] | None:
    """The first bar in [lo, hi) whose range reaches `level` (a price, or one per bar), and the
    price it was reached at: from below (rising: the high gets there) or from above (the low).
    A bar that opens beyond the level gapped through it and is reached at its open. Limits,
    stops and targets all trigger this way (match_bar's rule, over many bars at once)."""
    levels = np.asarray(level, dtype=np.float64)
    touched = bars.high[lo:hi] >= levels if rising else bars.low[lo:hi] <= levels
    j = first_true(touched)
    if j is None:
        return None
    lvl = float(levels[j]) if levels.ndim else float(levels)
    opened = float(bars.open[lo + j])
    return lo + j, (max(opened, lvl) if rising else min(opened, lvl))


_SCAN = 16    # bars searched one by one before the arrays are (numpy's cost per call is the work of many bars)


def first_touch_any(bars: SymbolBars, lo: int, hi: int, levels: list[tuple[float, bool]]) -> int | None:
    """The first bar in [lo, hi) whose range reaches any of `levels` ((price, rising) pairs, as
    first_touch reads them): a protective stop and target searched in one pass. A bar reaches a
    rising level when its high is at or above it, so of several rising levels the lowest decides
    (and of falling ones the highest): two comparisons a bar. Most protective orders are touched
    within a few bars of their placing, so the first bars are compared one by one (the same
    comparisons), the rest as arrays."""
    if not levels:
        return None
    up, down = math.inf, -math.inf
    for level, rising in levels:
        if rising:
            if level < up:
                up = level
        elif level > down:
            down = level
    head = min(hi, lo + _SCAN)
    if head > lo:
        j = lo
        for h, low in zip(bars.high[lo:head].tolist(), bars.low[lo:head].tolist()):
            if h >= up or low <= down:
                return j
            j += 1
        lo = head
    if lo >= hi:
        return None
    if down == -math.inf:
        mask = bars.high[lo:hi] >= up
    elif up == math.inf:
        mask = bars.low[lo:hi] <= down
    else:
        mask = np.logical_or(bars.high[lo:hi] >= up, bars.low[lo:hi] <= down)
    j = first_true(mask)
    return None if j is None else lo + j


def first_true(mask: np.ndarray) -> int | None:
    if not len(mask):
        return None
    j = int(mask.argmax())        # the method: np.argmax's dispatch costs more than the search on short masks
    return j if mask[j] else None


def slipped(slippage: Slippage, price: np.ndarray, action: str, tick: float) -> np.ndarray:
    """Slippage.apply over an array, with the same float operations."""
    s = slippage
    if not (s.ticks or s.percent or s.fixed):
        return price
    slip = s.ticks * tick + price * s.percent + s.fixed
    out = price + slip if action == "buy" else price - slip
    return np.where(slip == 0.0, price, out)


@dataclass(frozen=True)
class SimFill:
    bar: int
    price: float
    time: int       # when it happened (ns): the bar's start for open fills, its end for close fills


class FillModel:
    """The simulator's costs and fill timing (commission, slippage, next open or close), with
    the history search: when an order decided at a bar's close fills on the bars after it."""

    def __init__(self, commission: Commission, slippage: Slippage, fill: str = "next_open"):
        self.commission = commission
        self.slippage = slippage
        self.fill_model = fill

    def fee(self, bars: SymbolBars, quantity: float, price: float) -> float:
        return self.commission(quantity, price, bars.multiplier, bars.contracts)

    def market_price(self, bars: SymbolBars, action: str, price: float) -> float:
        return self.slippage.apply(price, action, bars.tick_size)

    def execute(self, bars: SymbolBars, intent, decided: int) -> SimFill | None:
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
        lo, hi = decided + 1, expiry_bar(bars, intent.tif, decided)
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


def expiry_bar(bars: SymbolBars, tif: str, decided: int) -> int:
    """One past the last bar an order placed at the close of `decided` may fill in: day orders
    live until the end of the session of the bar after the decision, gtc until filled, ioc/fok/
    opg for one bar."""
    n = len(bars)
    first = decided + 1
    if first >= n:
        return n
    if tif == "gtc":
        return n
    if tif in ("ioc", "fok", "opg"):
        return first + 1
    session = bars.session[first]
    return first + int(np.searchsorted(bars.session[first:], session, side="right"))


# ---- combos ------------------------------------------------------------------------------------

def combo_marketable(limit_debit: float, mid_debit: float, natural_debit: float, fill_fraction: float) -> bool:
    """Does a combo limit fill against the spread model? Every price is a net debit of the trade
    (orders.combos: positive to pay, negative for a credit): `limit_debit` the most the order
    pays, `mid_debit` the trade at mid, `natural_debit` the trade crossing every spread (at least
    mid_debit).

    The market gives up `fill_fraction` of the way from the natural price towards mid: a limit
    fills when it pays at least natural - f x (natural - mid). The one rule covers buying and
    selling, opening and closing: a credit combo sold at a credit limit c pays -c, and fills when
    c <= natural credit + f x (mid credit - natural credit)."""
    return limit_debit >= natural_debit - fill_fraction * (natural_debit - mid_debit) - 1e-9


def marketable(limit: float, quote, fill_fraction: float, opening: bool = True, action: str | None = None) -> bool:
    """combo_marketable for an order's limit (what a buy pays, what a sell receives) on a
    ComboQuote (orders.combos); `action` is the order's, by default the one that opens the
    combo (or, closing, the other one)."""
    if action is None:
        action = quote.opening_action if opening else flip(quote.opening_action)
    return combo_marketable(debit_of(limit, action), quote.mid_debit(opening), quote.natural_debit(opening),
                            fill_fraction)


def combo_fill_price(limit: float, quote, fill_fraction: float, opening: bool, action: str) -> float | None:
    """The price a combo limit fills at (in the order's terms), or None: at its limit, or at the
    natural price when the limit is beyond it (nobody pays more than every leg's ask or sells for
    less than every leg's bid: the market's own price, as a single leg's limit fills at an open
    that gapped through it)."""
    if not marketable(limit, quote, fill_fraction, opening, action):
        return None
    natural = quote.natural_debit(opening)
    if debit_of(limit, action) > natural:
        return order_price(natural, action)
    return limit


@dataclass(frozen=True)
class ChaseResult:
    filled: bool
    price: float | None
    step: int | None          # 0-based step that filled
    tried: tuple[float, ...]
    seconds: float            # time the chase took (until the fill, or the timeout)
    cancelled: bool = False   # timed out: the order was cancelled and the cancel confirmed

    @property
    def reason(self) -> str:
        if self.filled:
            return f"filled at {self.price:.2f} on step {self.step + 1} of {len(self.tried)}"
        if not self.tried:
            return "the chase had no price within its floor"
        return (f"chase timed out after {prices_tried(self.tried)}: "
                "cancelled, cancel confirmed")


def run_chase(chase, quote, fill_fraction: float, tick: float = 0.01, opening: bool = True,
              quotes=None) -> ChaseResult:
    """Step a combo's limit price (orders.combos.Chase) until the spread model fills it or the
    chase runs out. `quotes`, when given, are the combo's quotes at each step's time (a moving
    market); else the same quote is used throughout (an end-of-day snapshot)."""
    action = quote.opening_action if opening else flip(quote.opening_action)
    prices = chase.prices(quote, tick, opening, action)
    for k, price in enumerate(prices):
        q = quotes[min(k, len(quotes) - 1)] if quotes else quote
        fill = combo_fill_price(price, q, fill_fraction, opening, action)
        if fill is not None:
            return ChaseResult(True, fill, k, tuple(prices[: k + 1]), k * chase.every)
    return ChaseResult(False, None, None, tuple(prices), len(prices) * chase.every, cancelled=bool(prices))


def prices_tried(prices) -> str:
    """A chase's prices as said: '2 prices (0.09, 0.10)', '1 price (0.09)'."""
    return f"{len(prices)} price{'' if len(prices) == 1 else 's'} ({', '.join(f'{p:.2f}' for p in prices)})"
