"""Exchange trading calendars: trading days, sessions, holidays and early closes.

A `Calendar` wraps one pandas-market-calendars calendar by name (`NYSE`, `CBOE_Index_Options`,
`CME_Equity`, `CMEGlobex_Crude`, ...): the names written as `calendar:` in
universes/instruments.yaml. Holidays and early closes come from that library, never from a
hand-written list.

Schedules are slow to compute (tenths of a second a year), so they are computed a calendar year
at a time and cached per (calendar name, year); every `Calendar` of the same name shares them.

A trading day is a session date of the calendar. For an overnight Globex calendar the session
dated D opens the evening before D; `session_open(D)` says so.
"""

from __future__ import annotations

import bisect
import datetime as dt
import difflib
import functools
from typing import NamedTuple

import numpy as np
import pandas as pd

__all__ = ["Calendar", "get_calendar", "calendar_names", "as_date"]

# How far next/previous trading-day searches go before giving up (a calendar with no session
# for this many years is a data problem, not a long holiday).
_SEARCH_YEARS = 5


def as_date(value) -> dt.date:
    """A plain date from a date, a datetime (its own calendar date), a pandas Timestamp or an
    ISO string 'YYYY-MM-DD'."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip()[:10])
        except ValueError:
            raise ValueError(f"not a date: {value!r} (expected YYYY-MM-DD)") from None
    if isinstance(value, np.datetime64):
        return pd.Timestamp(value).date()
    raise TypeError(f"not a date: {value!r} ({type(value).__name__})")


@functools.lru_cache(maxsize=1)
def calendar_names() -> tuple[str, ...]:
    """Every calendar name pandas-market-calendars knows."""
    import pandas_market_calendars as mcal

    return tuple(sorted(set(mcal.get_calendar_names()), key=str.lower))


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"calendar name must be a non-empty string, not {name!r}")
    names = calendar_names()
    if name in names:
        return name
    lowered = {n.lower(): n for n in names}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=4, cutoff=0.6)
    hint = [lowered[c] for c in close]
    if name.lower() in lowered and lowered[name.lower()] not in hint:
        hint.insert(0, lowered[name.lower()])
    suggestion = f" (did you mean {', '.join(repr(h) for h in hint)}?)" if hint else \
        " (see pandas_market_calendars.get_calendar_names())"
    raise ValueError(f"unknown calendar {name!r}{suggestion}")


@functools.lru_cache(maxsize=16)
def _mcal(name: str):
    import pandas_market_calendars as mcal

    return mcal.get_calendar(name)


class _Year(NamedTuple):
    days: list[dt.date]          # session dates, ascending
    opens: list[pd.Timestamp]    # tz-aware, exchange timezone
    closes: list[pd.Timestamp]
    early: frozenset[dt.date]    # sessions that close before the regular close


@functools.lru_cache(maxsize=256)
def _year(name: str, year: int) -> _Year:
    cal = _mcal(name)
    schedule = cal.schedule(start_date=f"{year}-01-01", end_date=f"{year}-12-31")
    tz = cal.tz
    days = [ts.date() for ts in schedule.index]
    opens = [ts.tz_convert(tz) for ts in schedule["market_open"]]
    closes = [ts.tz_convert(tz) for ts in schedule["market_close"]]
    early = frozenset(ts.date() for ts in cal.early_closes(schedule).index) if len(schedule) else frozenset()
    return _Year(days, opens, closes, early)


class Calendar:
    """One exchange calendar by its pandas-market-calendars name.

    Dates may be given as `datetime.date`, `datetime.datetime` (its date), pandas Timestamps or
    'YYYY-MM-DD' strings; dates come back as `datetime.date`, times as tz-aware Timestamps in the
    exchange's timezone (`self.tz`).
    """

    def __init__(self, name: str):
        self.name = _check_name(name)
        self.tz = str(_mcal(self.name).tz)

    def __repr__(self) -> str:
        return f"Calendar({self.name!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Calendar) and other.name == self.name

    def __hash__(self) -> int:
        return hash(("Calendar", self.name))

    # ---- trading days -------------------------------------------------------------------------

    def _year(self, year: int) -> _Year:
        return _year(self.name, year)

    def _index(self, day: dt.date) -> int | None:
        y = self._year(day.year)
        i = bisect.bisect_left(y.days, day)
        return i if i < len(y.days) and y.days[i] == day else None

    def is_trading_day(self, day) -> bool:
        """True when the calendar has a session dated `day`."""
        return self._index(as_date(day)) is not None

    def trading_days(self, start, end) -> list[dt.date]:
        """Session dates from `start` to `end`, both included."""
        start, end = as_date(start), as_date(end)
        out: list[dt.date] = []
        for year in range(start.year, end.year + 1):
            days = self._year(year).days
            out.extend(days[bisect.bisect_left(days, start):bisect.bisect_right(days, end)])
        return out

    def holidays(self, start, end) -> list[dt.date]:
        """Weekdays from `start` to `end` (included) without a session."""
        start, end = as_date(start), as_date(end)
        sessions = set(self.trading_days(start, end))
        return [d for d in _date_range(start, end) if d.weekday() < 5 and d not in sessions]

    def next_trading_day(self, day, *, inclusive: bool = False) -> dt.date:
        """The first session date after `day` (on or after it when `inclusive`)."""
        day = as_date(day)
        for year in range(day.year, day.year + _SEARCH_YEARS + 1):
            days = self._year(year).days
            i = (bisect.bisect_left if inclusive else bisect.bisect_right)(days, day)
            if i < len(days):
                return days[i]
        raise LookupError(f"{self.name}: no trading day within {_SEARCH_YEARS} years after {day}")

    def previous_trading_day(self, day, *, inclusive: bool = False) -> dt.date:
        """The last session date before `day` (on or before it when `inclusive`)."""
        day = as_date(day)
        for year in range(day.year, day.year - _SEARCH_YEARS - 1, -1):
            days = self._year(year).days
            i = (bisect.bisect_right if inclusive else bisect.bisect_left)(days, day)
            if i > 0:
                return days[i - 1]
        raise LookupError(f"{self.name}: no trading day within {_SEARCH_YEARS} years before {day}")

    # ---- sessions ---------------------------------------------------------------------------

    def _session(self, day) -> tuple[_Year, int]:
        day = as_date(day)
        i = self._index(day)
        if i is None:
            raise ValueError(f"{day} ({day:%A}) is not a trading day on {self.name}")
        return self._year(day.year), i

    def session_open(self, day) -> pd.Timestamp:
        """When the session dated `day` opens (tz-aware, exchange timezone). ValueError when
        `day` is not a trading day."""
        y, i = self._session(day)
        return y.opens[i]

    def session_close(self, day) -> pd.Timestamp:
        """When the session dated `day` closes, early closes included (tz-aware, exchange
        timezone). ValueError when `day` is not a trading day."""
        y, i = self._session(day)
        return y.closes[i]

    def early_close(self, day) -> bool:
        """True when `day` is a trading day whose session closes before the regular close (the
        day after Thanksgiving, Christmas Eve, July 3 on NYSE). False on non-trading days."""
        day = as_date(day)
        return day in self._year(day.year).early

    def early_closes(self, start, end) -> list[dt.date]:
        """Early-close session dates from `start` to `end`, both included."""
        start, end = as_date(start), as_date(end)
        out: list[dt.date] = []
        for year in range(start.year, end.year + 1):
            out.extend(sorted(d for d in self._year(year).early if start <= d <= end))
        return out

    def local_date(self, when) -> dt.date:
        """The exchange-local calendar date of `when`: a tz-aware datetime is converted to the
        exchange's timezone first; a naive datetime or a date is taken as it is."""
        if isinstance(when, dt.datetime) and when.tzinfo is not None:
            return pd.Timestamp(when).tz_convert(self.tz).date()
        return as_date(when)


@functools.lru_cache(maxsize=64)
def get_calendar(name: str) -> Calendar:
    """A shared `Calendar` for `name` (ValueError naming it, with close names, when unknown)."""
    return Calendar(name)


def _date_range(start: dt.date, end: dt.date):
    day = start
    while day <= end:
        yield day
        day += dt.timedelta(days=1)


_DAY_NS = 86_400 * 10**9


@functools.lru_cache(maxsize=4096)
def bar_done_ns(start_ns: int, end_ns: int, calendar: str | None, timezone: str) -> int:
    """When a bar is complete: at its end, but a daily bar (which starts at midnight in the
    strategy's `timezone` and ends at the next) at its session's close on `calendar`, 16:00 New
    York on NYSE, 13:00 on an early close: its close is known then, and what is decided on it (a
    combo's chase, an order IB holds to the next open) goes while the market is still there."""
    if end_ns - start_ns < _DAY_NS or not calendar:
        return end_ns
    day = pd.Timestamp(start_ns, tz="UTC").tz_convert(timezone).date()
    cal = get_calendar(calendar)
    if not cal.is_trading_day(day):
        return end_ns
    return min(end_ns, max(start_ns, int(cal.session_close(day).value)))
