"""Clock values of bars: what `time`, `dayofweek`, `bar_index`, `session`, `minutes_since_open`
and `minutes_to_close` mean for each bar of a history.

Times are taken in the strategy's timezone. A session is a trading day of the instrument's
calendar (pandas-market-calendars); without a calendar it is the local calendar date.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd


def clock_arrays(times: pd.DatetimeIndex, timezone: str, bar_seconds: float,
                 calendar: str | None = None) -> dict[str, np.ndarray]:
    """Clock arrays for bars starting at `times` (tz-aware) and lasting `bar_seconds` each."""
    if times.tz is None:
        raise ValueError("bar times must be timezone-aware")
    local = times.tz_convert(timezone)
    minutes = (local.hour * 60 + local.minute + local.second / 60.0).to_numpy(dtype=np.float64)
    dates = local.normalize()
    out: dict[str, np.ndarray] = {
        "time": minutes,
        "dayofweek": (local.day_of_week + 1).to_numpy(dtype=np.float64),
        "bar_index": np.arange(len(times), dtype=np.float64),
    }
    day_codes = _ns(dates)
    out["session"] = np.concatenate(([0], np.cumsum(day_codes[1:] != day_codes[:-1]))).astype(np.float64) \
        if len(times) else np.empty(0)
    if calendar is None or len(times) == 0:
        return out
    open_ns, close_ns = sessions(calendar, local[0].date() - pd.Timedelta(days=3),
                                 local[-1].date() + pd.Timedelta(days=3))
    start_ns = _ns(local)
    end_ns = start_ns + int(bar_seconds * 1e9)
    # the session a bar belongs to: the last one opened at or before the bar's start, if still open
    idx = np.searchsorted(open_ns, start_ns, side="right") - 1
    safe = np.maximum(idx, 0)
    found = (idx >= 0) & (start_ns < close_ns[safe])
    out["minutes_since_open"] = np.where(found, (end_ns - open_ns[safe]) / 60e9, np.nan)
    out["minutes_to_close"] = np.where(found, (close_ns[safe] - end_ns) / 60e9, np.nan)
    # a calendar session (an overnight Globex session included) is one session; bars outside
    # every session (extended hours, breaks) keep their local date as their session
    out["session"] = np.where(found, safe.astype(np.float64), 1e6 + out["session"])
    return out


@functools.lru_cache(maxsize=32)
def sessions(calendar: str, first, last) -> tuple[np.ndarray, np.ndarray]:
    """Open and close times (UTC ns) of every session of `calendar` between two dates: holidays
    and early closes from pandas-market-calendars (computing them is slow, so they are cached)."""
    import pandas_market_calendars as mcal

    schedule = mcal.get_calendar(calendar).schedule(start_date=first, end_date=last)
    return _ns(schedule["market_open"]), _ns(schedule["market_close"])


def _ns(values) -> np.ndarray:
    """UTC nanoseconds since the epoch of tz-aware times, whatever pandas' storage unit."""
    utc = pd.DatetimeIndex(values).tz_convert("UTC").tz_localize(None)
    return utc.to_numpy().astype("datetime64[ns]").astype(np.int64)
