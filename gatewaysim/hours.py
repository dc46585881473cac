"""The simulated exchanges' hours, from exchange calendars (engine.market.calendars, which reads
pandas-market-calendars): holidays and early closes as the exchange keeps them, never a hand list.

- Stocks, options and indices keep NYSE's sessions: 09:30-16:00 New York on its trading days,
  13:00 on an early close (July 3, the day after Thanksgiving, Christmas Eve), none on a holiday;
  options on an index (SPX, XSP) keep CBOE's, to 16:15 (13:15 on an early close), but stop at
  16:00 on their last trading day.
  A stock order marked outsideRth also works in the extended hours of a trading day: from 04:00
  to four hours after the close (20:00, 17:00 on an early close).
- Futures keep CME equity futures' sessions (CME_Equity): from 18:00 New York the evening before
  the session's date to 17:00 on it, shortened on CME's holidays (July 4: to 13:00).

A window is (start, end) in epoch ns, start included, end not. Windows are computed once a day
and calendar and cached; the answer last found is tried first (an order's hours are asked at every tick).
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from engine.market.calendars import get_calendar

from .catalog import Instrument

NY = ZoneInfo("America/New_York")
NS = 1_000_000_000
_EXTENDED_BEFORE_NS = (5 * 3600 + 1800) * NS     # 04:00 on a 09:30 open
_EXTENDED_AFTER_NS = 4 * 3600 * NS               # 20:00 on a 16:00 close
_SEARCH_DAYS = 14                                # the longest an exchange is shut, with room to spare

STOCKS, FUTURES, INDEX_OPTIONS = "NYSE", "CME_Equity", "CBOE_Index_Options"


def calendar_of(inst: Instrument) -> str:
    """NYSE's sessions, but CME's for futures and CBOE's for options on an index (SPX, XSP: they
    trade to 16:15, a quarter hour after the index's last value, 13:15 on an early close)."""
    if inst.secType in ("FUT", "CONTFUT"):
        return FUTURES
    if inst.secType in ("OPT", "FOP") and inst.underSecType == "IND":
        return INDEX_OPTIONS
    return STOCKS


def early_close(day: dt.date) -> int | None:
    """NYSE's close on `day` (ns) when it is an early close, else None."""
    cal = get_calendar(STOCKS)
    return int(cal.session_close(day).value) if cal.early_close(day) else None


def calendar_on(inst: Instrument, day: dt.date) -> str:
    """The calendar inst keeps on `day`: calendar_of's, but NYSE's on an index option's last
    trading day (a PM-settled expiry is settled on the 16:00 value: it stops then, not at 16:15)."""
    calendar = calendar_of(inst)
    if calendar == INDEX_OPTIONS and inst.lastTradeDate == f"{day:%Y%m%d}":
        return STOCKS
    return calendar


class Hours:
    def __init__(self):
        self._sessions: dict[tuple[str, dt.date], tuple[int, int] | None] = {}
        # (calendar, outsideRth, an index option's expiry) -> (t, w): the window w is the first that ends after any moment
        # from t to its end (the one they fall in, or the next)
        self._last: dict[tuple[str, bool, str], tuple[int, tuple[int, int]]] = {}

    def session(self, calendar: str, day: dt.date) -> tuple[int, int] | None:
        """The regular session dated `day` as (open, close) ns, or None on a day without one."""
        key = (calendar, day)
        if key not in self._sessions:
            cal = get_calendar(calendar)
            span = None
            if cal.is_trading_day(day):
                span = (int(cal.session_open(day).value), int(cal.session_close(day).value))
            self._sessions[key] = span
        return self._sessions[key]

    def _window(self, calendar: str, extended: bool, day: dt.date) -> tuple[int, int] | None:
        span = self.session(calendar, day)
        if span is None or not extended:
            return span
        return span[0] - _EXTENDED_BEFORE_NS, span[1] + _EXTENDED_AFTER_NS

    def _windows(self, inst: Instrument, outside_rth: bool, t_ns: int):
        """The windows that end after t, in time order (the one t falls in first, if any), each
        day's from the calendar inst keeps that day (calendar_on)."""
        extended = outside_rth and inst.secType == "STK"
        day = dt.datetime.fromtimestamp(t_ns / NS, tz=NY).date()
        for i in range(_SEARCH_DAYS + 2):   # (a futures session dated tomorrow opens this evening)
            d = day + dt.timedelta(days=i)
            w = self._window(calendar_on(inst, d), extended, d)
            if w is not None and w[1] > t_ns:
                yield w

    def _next(self, inst: Instrument, outside_rth: bool, t_ns: int) -> tuple[int, int]:
        calendar = calendar_of(inst)
        key = (calendar, outside_rth and inst.secType == "STK", inst.lastTradeDate if calendar == INDEX_OPTIONS else "")
        last = self._last.get(key)
        if last is not None and last[0] <= t_ns < last[1][1]:
            return last[1]
        for w in self._windows(inst, outside_rth, t_ns):
            self._last[key] = (t_ns, w)
            return w
        raise LookupError(f"no session of {calendar} within {_SEARCH_DAYS} days after {t_ns}")

    def works(self, inst: Instrument, outside_rth: bool, t_ns: int) -> bool:
        """Whether an order on inst works at t (IB's default: regular hours; outsideRth: a stock's
        extended hours too)."""
        start, end = self._next(inst, outside_rth, t_ns)
        return start <= t_ns < end

    def regular(self, inst: Instrument, t_ns: int) -> bool:
        """Whether inst's regular session is open at t (a quote is live, not frozen)."""
        return self.works(inst, False, t_ns)

    def session_end(self, inst: Instrument, t_ns: int) -> int:
        """The end of the regular session a DAY order placed at t is for: the one under way, else
        the next (an early close ends it early)."""
        return self._next(inst, False, t_ns)[1]

    def next_open(self, inst: Instrument, outside_rth: bool, t_ns: int) -> int:
        """When an order placed at t outside its hours starts to work (t itself when it works)."""
        return max(self._next(inst, outside_rth, t_ns)[0], t_ns)

    def trading_hours(self, inst: Instrument, day: dt.date) -> tuple[str, str]:
        """TWS's tradingHours and liquidHours strings for `day` and the next day: each
        `START-END` in New York time, `YYYYMMDD:CLOSED` for a day without a session."""
        extended = inst.secType == "STK"

        def part(d: dt.date, w: tuple[int, int] | None) -> str:
            if w is None:
                return f"{d:%Y%m%d}:CLOSED"
            a, b = (dt.datetime.fromtimestamp(x / NS, tz=NY) for x in w)
            return f"{a:%Y%m%d:%H%M}-{b:%Y%m%d:%H%M}"

        days = (day, day + dt.timedelta(days=1))
        trading = ";".join(part(d, self._window(calendar_on(inst, d), extended, d)) for d in days)
        liquid = ";".join(part(d, self.session(calendar_on(inst, d), d)) for d in days)
        return trading, liquid
