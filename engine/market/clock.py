"""Clock values of bars: what `time`, `dayofweek`, `bar_index`, `session`, `minutes_since_open`
and `minutes_to_close` mean for each bar of a history.

Times are taken in the strategy's timezone. A session is a trading day of the instrument's
calendar (pandas-market-calendars); without a calendar it is the local calendar date.
"""

from __future__ import annotations

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
    import pandas_market_calendars as mcal

    cal = mcal.get_calendar(calendar)
    first, last = local[0].date(), local[-1].date()
    schedule = cal.schedule(start_date=first - pd.Timedelta(days=1), end_date=last + pd.Timedelta(days=1))
    opens = schedule["market_open"].dt.tz_convert(timezone)
    closes = schedule["market_close"].dt.tz_convert(timezone)
    keys = opens.dt.normalize().dt.tz_localize(None).to_numpy()
    bar_days = dates.tz_localize(None).to_numpy()
    pos = np.searchsorted(keys, bar_days)
    found = (pos < len(keys)) & (keys[np.minimum(pos, len(keys) - 1)] == bar_days)
    close_ns, open_ns = _ns(closes), _ns(opens)
    start_ns = _ns(local)
    end_ns = start_ns + int(bar_seconds * 1e9)
    idx = np.minimum(pos, len(keys) - 1)
    since = (end_ns - open_ns[idx]) / 60e9
    to_close = (close_ns[idx] - end_ns) / 60e9
    out["minutes_since_open"] = np.where(found, since, np.nan)
    out["minutes_to_close"] = np.where(found, to_close, np.nan)
    return out


def _ns(values) -> np.ndarray:
    """UTC nanoseconds since the epoch of tz-aware times, whatever pandas' storage unit."""
    utc = pd.DatetimeIndex(values).tz_convert("UTC").tz_localize(None)
    return utc.to_numpy().astype("datetime64[ns]").astype(np.int64)
