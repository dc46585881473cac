"""Clock values of bars: what `time`, `dayofweek`, `bar_index`, `session`, `minutes_since_open`
and `minutes_to_close` mean for each bar of a history.

Times are taken in the strategy's timezone. A session is a trading day of the instrument's
calendar (pandas-market-calendars); without a calendar it is the local calendar date.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd


CLOCK_NAMES = ("time", "dayofweek", "bar_index", "session", "minutes_since_open", "minutes_to_close")
_DAY_NS = 86_400 * 10**9
_GRID_NS = 900 * 10**9   # tz offsets are looked up on a 15-minute UTC grid (transitions fall on it)


def local_ns(utc_ns: np.ndarray, timezone: str) -> np.ndarray:
    """Local wall-clock nanoseconds of UTC nanoseconds: the zone's offset is looked up once per
    15-minute step of the span (a few thousand per year) instead of once per bar; steps where the
    offset changes (DST transitions) are converted bar by bar."""
    utc_ns = np.asarray(utc_ns, dtype=np.int64)
    n = len(utc_ns)
    if n == 0:
        return utc_ns.copy()
    lo, hi = int(utc_ns.min()), int(utc_ns.max())
    g0 = lo - lo % _GRID_NS
    steps = (hi - g0) // _GRID_NS + 2
    if steps > 4 * n:   # sparse bars over a long span: per bar is cheaper
        return _wall(utc_ns, timezone)
    grid = g0 + np.arange(steps, dtype=np.int64) * _GRID_NS
    offsets = _wall(grid, timezone) - grid
    changes = np.flatnonzero(offsets[1:] != offsets[:-1])   # the offset changes inside grid step c
    if n > 1 and not (utc_ns[1:] >= utc_ns[:-1]).all():
        cell = (utc_ns - g0) // _GRID_NS
        out = utc_ns + offsets[cell]
        flagged = np.zeros(len(offsets), dtype=bool)
        flagged[changes] = True
        odd = flagged[cell]
        if odd.any():
            out[odd] = _wall(utc_ns[odd], timezone)
        return out
    # sorted times: one offset per stretch between transitions, the transitions' steps exactly
    lo_i = np.searchsorted(utc_ns, grid[changes], side="left")
    hi_i = np.searchsorted(utc_ns, grid[changes + 1], side="left")
    edges = np.concatenate(([0], np.column_stack((lo_i, hi_i)).ravel(), [n]))
    seg_offsets = np.concatenate((offsets[[0]], np.column_stack((offsets[changes], offsets[changes + 1])).ravel()))
    out = utc_ns + np.repeat(seg_offsets, np.diff(edges))
    for a, b in zip(lo_i.tolist(), hi_i.tolist()):
        if b > a:
            out[a:b] = _wall(utc_ns[a:b], timezone)
    return out


def _wall(utc_ns: np.ndarray, timezone: str) -> np.ndarray:
    idx = pd.DatetimeIndex(utc_ns.astype("datetime64[ns]")).tz_localize("UTC").tz_convert(timezone)
    return idx.tz_localize(None).asi8.astype(np.int64, copy=False)


def clock_arrays(times: pd.DatetimeIndex, timezone: str, bar_seconds: float,
                 calendar: str | None = None, want: set[str] | frozenset[str] | None = None) -> dict[str, np.ndarray]:
    """Clock arrays for bars starting at `times` (tz-aware) and lasting `bar_seconds` each.

    `want` names the arrays to compute (default: all of them); the calendar's `minutes_since_open`
    and `minutes_to_close` come only with a `calendar`."""
    if times.tz is None:
        raise ValueError("bar times must be timezone-aware")
    want = set(CLOCK_NAMES) if want is None else set(want)
    n = len(times)
    out: dict[str, np.ndarray] = {}
    if "bar_index" in want:
        out["bar_index"] = np.arange(n, dtype=np.float64)
    use_calendar = calendar is not None and n > 0 and bool(want & {"session", "minutes_since_open",
                                                                    "minutes_to_close"})
    if not want & {"time", "dayofweek", "session"} and not use_calendar:
        return out
    start_ns = _ns(times)
    wall = local_ns(start_ns, timezone)
    day = wall // _DAY_NS
    if "time" in want:
        seconds = (wall - day * _DAY_NS) // 10**9   # whole seconds, as pandas' hour/minute/second
        out["time"] = (seconds // 60).astype(np.float64) + (seconds % 60) / 60.0
    if "dayofweek" in want:
        out["dayofweek"] = ((day + 3) % 7 + 1).astype(np.float64)   # 1970-01-01 was a Thursday; Monday = 1
    if "session" in want or use_calendar:
        out["session"] = np.concatenate(([0], np.cumsum(day[1:] != day[:-1]))).astype(np.float64) \
            if n else np.empty(0)
    if not use_calendar:
        return out
    first = pd.Timestamp(int(day[0]) * _DAY_NS).date()
    last = pd.Timestamp(int(day[-1]) * _DAY_NS).date()
    open_ns, close_ns = sessions(calendar, first - pd.Timedelta(days=3), last + pd.Timedelta(days=3))
    end_ns = start_ns + int(bar_seconds * 1e9)
    # the session a bar belongs to: the last one opened at or before the bar's start, if still open
    idx = np.searchsorted(open_ns, start_ns, side="right") - 1
    safe = np.maximum(idx, 0)
    found = (idx >= 0) & (start_ns < close_ns[safe])
    if "minutes_since_open" in want:
        out["minutes_since_open"] = np.where(found, (end_ns - open_ns[safe]) / 60e9, np.nan)
    if "minutes_to_close" in want:
        out["minutes_to_close"] = np.where(found, (close_ns[safe] - end_ns) / 60e9, np.nan)
    # a calendar session (an overnight Globex session included) is one session; bars outside
    # every session (extended hours, breaks) keep their local date as their session
    if "session" in want:
        out["session"] = np.where(found, safe.astype(np.float64), 1e6 + out["session"])
    else:
        del out["session"]
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
