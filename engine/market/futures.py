"""Futures contracts as plain values: month codes and local symbols, last trade dates, the
front-month rule, and the series a strategy's rules read from a root's per-contract history.

The front-month rule is the one the IB broker resolves a root by (brokers/ib/contracts.py uses
it from here): the front month on a day is the first listed contract whose last trade date, less
`roll_days` trading days of the root's calendar, is that day or later. "A day" is the date in
the strategy's timezone, as an IB run's `today` is.

A backtest of a root with per-contract history (a file with a contract-month column) reads the
raw front contract: each bar of the rules' series is the bar of the contract that is the front
month on that bar's date, so the series jumps by the calendar spread at a roll (no
back-adjustment: the prices a rule compares are prices a fill could have had).

Last trade dates come from the root's rule. qtrade knows one, that of US equity index futures
(ES, NQ, RTY, YM and their micros: the third Friday of the contract month, or the trading day
before it when that Friday is a holiday), for roots on the CME_Equity and CBOT_Equity calendars;
a per-contract history of another root (CL, GC, ZB: their last trade dates follow other rules)
is refused rather than rolled on a guess. A contract is written YYYYMM, or as its last trade date
YYYYMMDD (IB's lastTradeDateOrContractMonth), which must then be the rule's.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

MONTH_CODES = "FGHJKMNQUVXZ"

# calendars whose roots expire on the third Friday of the contract month (US equity index futures)
THIRD_FRIDAY_CALENDARS = frozenset({"CME_Equity", "CBOT_Equity"})


def local_symbol(root: str, year: int, month: int) -> str:
    """IB's local symbol of a futures contract: root, month code, last digit of the year (ESZ3)."""
    return f"{root}{MONTH_CODES[month - 1]}{year % 10}"


def roll_date(last_trade: dt.date, roll_days: int, calendar=None) -> dt.date:
    """The last day a futures contract is the front month: its last trade date less `roll_days`
    trading days of `calendar` (an engine Calendar; weekdays when None)."""
    day = last_trade
    for _ in range(roll_days):
        if calendar is not None:
            day = calendar.previous_trading_day(day)
        else:
            day -= dt.timedelta(days=1)
            while day.weekday() >= 5:
                day -= dt.timedelta(days=1)
    return day


def front_month(last_trades: Sequence[dt.date], today: dt.date, roll_days: int, calendar=None) -> int | None:
    """The index of the front month on `today` among contracts sorted by last trade date: the
    first whose roll date is today or later (None: every one is past its roll date)."""
    for i, last in enumerate(last_trades):
        if today <= roll_date(last, roll_days, calendar):
            return i
    return None


def third_friday_last_trade(year: int, month: int, calendar) -> dt.date:
    """The last trade date of a US equity index future: the third Friday of its month, or the
    trading day before it when that Friday is a holiday."""
    from .expiry import monthly_expiry

    day = monthly_expiry(year, month, calendar)
    if day is None:
        raise ValueError(f"no trading day in the week of the third Friday of {year}-{month:02d}")
    return day


def parse_contract(text: str) -> tuple[int, int, int | None] | None:
    """A contract-month value as (year, month, day or None): YYYYMM or YYYYMMDD (a float's '.0'
    tail is ignored); None when it is neither."""
    text = str(text).strip()
    if text.endswith(".0"):
        text = text[:-2]
    if not text.isdigit() or len(text) not in (6, 8):
        return None
    year, month = int(text[:4]), int(text[4:6])
    if not 1 <= month <= 12 or year < 1900:
        return None
    if len(text) == 6:
        return year, month, None
    try:
        dt.date(year, month, int(text[6:]))
    except ValueError:
        return None
    return year, month, int(text[6:])


@dataclass
class ContractHistory:
    """A futures root's bars per contract, as a file gave them: each contract's bars (the
    loader's standard frame), keyed by the contract value as written (201312, 20131220), with
    where it came from for messages."""

    symbol: str
    contracts: dict[str, pd.DataFrame]
    path: str
    column: int                     # 1-based character column of the contract field on the header line
    column_name: str
    first_line: dict[str, int] = field(default_factory=dict)   # contract -> the first line it is on
    skipped: dict | None = None     # data.on_bad_bar: skip: what was left out (as a frame's attrs["bad_bars"])


@dataclass(frozen=True)
class Contract:
    """One listed contract of a root: its local symbol (ESZ3), contract month and last trade date."""

    local_symbol: str
    year: int
    month: int
    last_trade: dt.date


@dataclass
class FrontSeries:
    """What the stitch made of a root's per-contract history: the rules' series (the raw front
    contract at each bar), which contract each bar is from, and every contract's own bars."""

    frame: pd.DataFrame                       # the series the rules read (a standard frame)
    front: np.ndarray                         # per bar of `frame`: its contract's index in `contracts`
    contracts: tuple[Contract, ...]           # the contracts the file has, by last trade date
    bars: dict[str, pd.DataFrame]             # local symbol -> that contract's own bars
    cycle: tuple[str, ...] = ()               # the root's listed contracts over the span (local symbols),
    rolls: np.ndarray | None = None           # by last trade date, and each one's roll date (datetime64[D])

    def front_on(self, days: np.ndarray) -> np.ndarray:
        """The front month on each of `days` (datetime64[D]) by the roll rule, as its index in
        `cycle` (len(cycle) past the cycle's last contract)."""
        return np.searchsorted(self.rolls, days, side="left")


class StitchError(ValueError):
    """The per-contract history cannot make a front series; `line` is the file's line it is about
    (1: the header)."""

    def __init__(self, message: str, hint: str = "", line: int = 1, contract: str = ""):
        super().__init__(message)
        self.hint, self.line, self.contract = hint, line, contract


def stitch(history: ContractHistory, *, root: str, months: str | None, roll_days: int, calendar_name: str | None,
           timezone: str) -> FrontSeries:
    """The raw front series of `history` by the front-month rule (see the module's docstring).

    The front month is found among the root's whole listed cycle (`months`), so a day whose
    front month the file has no bars for is an error rather than a silent jump to a later
    contract."""
    from .calendars import get_calendar

    if calendar_name not in THIRD_FRIDAY_CALENDARS:
        raise StitchError(f"{root}: qtrade knows the last trade date rule only of US equity index futures (the "
                          f"third Friday of the contract month, calendars {', '.join(sorted(THIRD_FRIDAY_CALENDARS))}); "
                          f"{root}'s calendar is {calendar_name}, so its contracts cannot be rolled here",
                          "backtest a continuous series of the root (a file without the contract column)")
    calendar = get_calendar(calendar_name)
    months = months or "HMUZ"
    listed: dict[str, Contract] = {}
    by_local: dict[str, pd.DataFrame] = {}
    for value, frame in history.contracts.items():
        year, month, day = parse_contract(value)
        line = history.first_line.get(value, 1)
        if MONTH_CODES[month - 1] not in months:
            raise StitchError(f"{root}: contract {value} is not in the root's listed months {months}",
                              "fix the contract column, or the root's months: in the instrument map", line, value)
        last = third_friday_last_trade(year, month, calendar)
        if day is not None and dt.date(year, month, day) != last:
            raise StitchError(f"{root}: contract {value}'s last trade date is {last:%Y%m%d} (the third Friday of "
                              f"its month, or the trading day before it), not {value}",
                              "write the contract month as YYYYMM", line, value)
        local = local_symbol(root, year, month)
        if local in by_local:
            raise StitchError(f"{root}: contract {value} is {local}, which the file also writes another way",
                              "write each contract one way (YYYYMM or YYYYMMDD)", line, value)
        listed[local] = Contract(local, year, month, last)
        by_local[local] = frame
    ordered = sorted(listed.values(), key=lambda c: c.last_trade)
    indexes = [f.index for f in by_local.values() if len(f)]
    if not indexes:
        raise StitchError(f"{root}: no bars in any contract")
    first_day = min(i[0] for i in indexes).tz_convert(timezone).date()
    last_day = max(i[-1] for i in indexes).tz_convert(timezone).date()
    # the root's whole listed cycle over the data's span: the front month on each day is one of these
    cycle = list(ordered)
    year, month = first_day.year, first_day.month
    while (year, month) <= (last_day.year + 1, last_day.month):
        if MONTH_CODES[month - 1] in months and local_symbol(root, year, month) not in listed:
            cycle.append(Contract(local_symbol(root, year, month), year, month,
                                  third_friday_last_trade(year, month, calendar)))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    cycle.sort(key=lambda c: c.last_trade)
    rolls = np.array([np.datetime64(roll_date(c.last_trade, roll_days, calendar), "D") for c in cycle])
    index_of = {c.local_symbol: i for i, c in enumerate(ordered)}
    pieces, fronts, days_of = [], [], {}
    for i, c in enumerate(cycle):
        frame = by_local.get(c.local_symbol)
        if frame is None or not len(frame):
            continue
        days = days_of[c.local_symbol] = local_dates(frame.index, timezone)
        mine = np.searchsorted(rolls, days, side="left") == i   # its days: it is the first not past its roll date
        if mine.any():
            pieces.append(frame[mine])
            fronts.append(np.full(int(mine.sum()), index_of[c.local_symbol], dtype=np.int64))
    # a day whose front month the file has no bars for, while another contract has some
    span = np.datetime64(first_day, "D"), np.datetime64(last_day, "D")
    for i, c in enumerate(cycle):
        if c.local_symbol in days_of:
            continue
        lo = max(rolls[i - 1] + np.timedelta64(1, "D") if i else span[0], span[0])
        hi = min(rolls[i], span[1])
        if lo <= hi and any(((d >= lo) & (d <= hi)).any() for d in days_of.values()):
            raise StitchError(f"{root}: {c.local_symbol} ({c.year}{c.month:02d}) is the front month from {lo} to {hi} "
                              f"(roll {roll_days} trading days before its last trade date {c.last_trade}), but the "
                              f"file has no bars for it (it has {', '.join(sorted(history.contracts))})",
                              "add that contract's bars, or start the data after its roll date")
    if not pieces:
        raise StitchError(f"{root}: no contract in the file is the front month on any of its days "
                          f"({first_day} to {last_day}, roll {roll_days} trading days before the last trade date)",
                          "check the contract column and the root's roll_days")
    frame = pd.concat(pieces)
    front = np.concatenate(fronts)
    order = np.argsort(frame.index.asi8, kind="stable")
    frame, front = frame.iloc[order], front[order]
    return FrontSeries(frame, front, tuple(ordered), by_local, tuple(c.local_symbol for c in cycle), rolls)


def local_dates(index: pd.DatetimeIndex, timezone: str) -> np.ndarray:
    """Each bar's date in `timezone` (the day the front-month rule is asked about)."""
    return index.tz_convert(timezone).tz_localize(None).normalize().to_numpy().astype("datetime64[D]")


def aligned(series_start: np.ndarray, series_end: np.ndarray, bars: pd.DataFrame) -> tuple[np.ndarray, ...]:
    """A contract's bars at the series' bar times: (open, high, low, close) per series bar. A
    bar of the contract that starts when the series' bar does is taken as it is; where it has
    none, open is NaN (it did not trade then: nothing fills) and high, low and close are its last
    close by the series bar's end (its mark; NaN before its first bar)."""
    start = bars.index.as_unit("ns").asi8
    n = len(series_start)
    opens = np.full(n, np.nan)
    pos = np.searchsorted(start, series_start)
    safe = np.minimum(pos, max(len(start) - 1, 0))
    exact = (pos < len(start)) & (start[safe] == series_start) if len(start) else np.zeros(n, dtype=bool)
    o, h, l, c = (bars[f].to_numpy(dtype=np.float64) for f in ("open", "high", "low", "close"))
    last = np.searchsorted(start, series_end, side="left") - 1   # bars started before the series bar ended
    carried = np.where(last >= 0, c[np.maximum(last, 0)], np.nan) if len(start) else np.full(n, np.nan)
    opens[exact] = o[safe[exact]]
    high = carried.copy()
    low = carried.copy()
    close = carried.copy()
    high[exact], low[exact], close[exact] = h[safe[exact]], l[safe[exact]], c[safe[exact]]
    return opens, high, low, close
