"""Option chains from IB's quotes, in the form the options desk reads (market.chains.OptionChain).

For an underlying, its price now and the expiries the strategy's rules need: IB's sec-def
parameters give the listed expiries and strikes; the strikes within `strike_range` of the price
are qualified to exact contracts (conIds, kept for the combo's legs) and quoted on streaming
lines that stay open from one bar to the next (a 0DTE chain is read every minute), nearest the
money first and never more than the lines the budget leaves free; strikes the window leaves are
cancelled before new ones are asked for, and requests are paced under IB's 50 messages a second.
A new line waits (bounded) for a market and IB's model greeks; a side IB does not quote stays NaN
(never -1 or 0 as a price), and an option with no delta is left out of the delta search rather
than guessed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time as _time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from ...market.chains import OptionChain

UNSET = 1.7976931348623157e308


def price(value) -> float:
    """An IB price field as a price: NaN for IB's -1, 0 sizes' placeholders, UNSET and None."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) and 0 < v < UNSET else math.nan


@dataclass(frozen=True)
class Listing:
    trading_class: str
    exchange: str
    multiplier: float
    expirations: tuple[str, ...]     # YYYYMMDD
    strikes: tuple[float, ...]


class IBChains:
    def __init__(self, ib, *, free_lines: Callable[[], int], timeout: float = 8.0, strike_range: float = 0.03,
                 monotonic: Callable[[], float] = _time.monotonic, burst: int = 20, pause: float = 1.0):
        self.ib = ib
        self.free_lines = free_lines
        self.timeout = timeout
        self.strike_range = strike_range
        self.monotonic = monotonic
        self._listings: dict[tuple, Listing] = {}
        self._contracts: dict[tuple, object] = {}     # (underlying, expiry, strike, right) -> qualified Option
        self._lines: dict[int, tuple] = {}            # conId -> (contract, ticker): lines kept open
        self.burst, self.pause = burst, pause
        self.requests = 0
        self.last_seconds = 0.0

    def listing(self, underlying, trading_class: str | None = None) -> Listing | None:
        """IB's expiries and strikes for an underlying contract (a qualified ib_async contract)."""
        key = (underlying.conId, trading_class)
        if key not in self._listings:
            params = self.ib.run(asyncio.wait_for(self.ib.reqSecDefOptParamsAsync(
                underlying.symbol, "", underlying.secType, underlying.conId), self.timeout))
            chosen = [p for p in params or [] if trading_class is None or p.tradingClass == trading_class]
            smart = [p for p in chosen if p.exchange == "SMART"] or chosen
            if not smart:
                return None
            p = smart[0]
            self._listings[key] = Listing(p.tradingClass, p.exchange, float(p.multiplier or 100),
                                          tuple(sorted(p.expirations)), tuple(sorted(float(s) for s in p.strikes)))
        return self._listings[key]

    def chain(self, underlying, spot: float, expiries: list[dt.date], when: pd.Timestamp,
              trading_class: str | None = None) -> OptionChain | None:
        """The chain of `expiries` around `spot`, quoted now; None when IB lists none of them."""
        from ib_async import Option

        t0 = self.monotonic()
        listing = self.listing(underlying, trading_class)
        if listing is None or not math.isfinite(spot) or spot <= 0:
            return None
        wanted = [d.strftime("%Y%m%d") for d in expiries]
        listed = [e for e in wanted if e in listing.expirations]
        strikes = [k for k in listing.strikes if abs(k / spot - 1.0) <= self.strike_range]
        if not listed or not strikes:
            return None
        todo = []
        for expiry in listed:
            for strike in strikes:
                for right in ("C", "P"):
                    key = (underlying.symbol, expiry, strike, right)
                    if key not in self._contracts:
                        todo.append((key, Option(underlying.symbol, expiry, strike, right, listing.exchange,
                                                 multiplier=str(int(listing.multiplier)),
                                                 tradingClass=listing.trading_class, currency=underlying.currency)))
        if todo:
            qualified = self.ib.run(asyncio.wait_for(self.ib.qualifyContractsAsync(*[c for _, c in todo]),
                                                     self.timeout))
            for (key, _), c in zip(todo, qualified):
                if c is not None and getattr(c, "conId", 0):
                    self._contracts[key] = c
        keys = [(underlying.symbol, e, k, r) for e in listed for k in sorted(strikes, key=lambda x: abs(x - spot))
                for r in ("C", "P") if (underlying.symbol, e, k, r) in self._contracts]
        quotes = self._quote([self._contracts[k] for k in keys])
        self.last_seconds = self.monotonic() - t0
        if not keys:
            return None
        rows = [(k, q) for k, q in zip(keys, quotes)]
        expiry = [dt.datetime.strptime(k[1], "%Y%m%d").date() for k, _ in rows]
        return OptionChain(underlying=underlying.symbol, quote_time=when, underlying_price=spot,
                           expiry=np.array(expiry, dtype="datetime64[D]"), strike=[k[2] for k, _ in rows],
                           right=[k[3] for k, _ in rows], bid=[q[0] for _, q in rows], ask=[q[1] for _, q in rows],
                           iv=[q[2] for _, q in rows], delta=[q[3] for _, q in rows], gamma=[q[4] for _, q in rows],
                           theta=[q[5] for _, q in rows], vega=[q[6] for _, q in rows],
                           trading_class=[listing.trading_class] * len(rows), multiplier=listing.multiplier)

    def contract(self, underlying: str, expiry: dt.date | str, strike: float, right: str):
        """The qualified option of a chain already quoted (a combo leg's exact contract)."""
        e = expiry if isinstance(expiry, str) else expiry.strftime("%Y%m%d")
        return self._contracts.get((underlying, e.replace("-", ""), float(strike), right[0].upper()))

    def _quote(self, contracts: list) -> list[tuple]:
        """bid, ask, iv, delta, gamma, theta, vega for each, from lines kept open: the ones no
        longer wanted are cancelled first, new ones asked for nearest first within the free lines."""
        wanted = {c.conId: c for c in contracts}
        for n, con_id in enumerate([k for k in self._lines if k not in wanted]):
            if n and n % self.burst == 0:
                self.ib.sleep(self.pause)        # a cancel is a message too
            contract, _ = self._lines.pop(con_id)
            self.ib.cancelMktData(contract)
        room = max(self.free_lines(), 0)
        new = [c for c in contracts if c.conId not in self._lines][:room]
        for i in range(0, len(new), self.burst):
            if i:
                self.ib.sleep(self.pause)        # paced: IB allows 50 messages a second, counted as they arrive
            for c in new[i:i + self.burst]:
                self._lines[c.conId] = (c, self.ib.reqMktData(c, "", False, False))
                self.requests += 1
        fresh = [self._lines[c.conId][1] for c in new]
        deadline = self.monotonic() + self.timeout
        while fresh and self.monotonic() < deadline and not all(_complete(t) for t in fresh):
            self.ib.sleep(0.05)
        out = []
        for c in contracts:
            line = self._lines.get(c.conId)
            t = line[1] if line is not None else None
            g = t.modelGreeks if t is not None else None
            out.append((price(t.bid) if t is not None else math.nan, price(t.ask) if t is not None else math.nan,
                        _num(g.impliedVol) if g else math.nan, _num(g.delta) if g else math.nan,
                        _num(g.gamma) if g else math.nan, _num(g.theta) if g else math.nan,
                        _num(g.vega) if g else math.nan))
        return out

    def lines(self) -> int:
        """Market-data lines the chain holds now."""
        return len(self._lines)

    def release(self, keep: int = 0) -> None:
        """Cancel the chain's lines, those farthest from the money first, down to `keep`."""
        for con_id in list(self._lines)[::-1][:max(len(self._lines) - keep, 0)]:
            contract, _ = self._lines.pop(con_id)
            self.ib.cancelMktData(contract)


def _num(value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) and abs(v) < UNSET else math.nan


def _complete(ticker) -> bool:
    """A quote is complete with IB's model delta and at least one side quoted (the other may be
    IB's -1: no bid for a far out-of-the-money option)."""
    g = ticker.modelGreeks
    return g is not None and math.isfinite(_num(g.delta)) and \
        (math.isfinite(price(ticker.bid)) or math.isfinite(price(ticker.ask)))
