"""Performance metrics of one run: pure functions over an equity series and a list of trades.

The equity series is a `pandas.Series` of account equity indexed by a tz-aware (UTC) or naive
`DatetimeIndex` in time order; `equity_series` builds one from the journal's ISO-8601 strings.
Trades are mappings (journal rows) or objects with at least `pnl`, and `entry_ts`/`exit_ts`
for exposure.

Conventions, the same in every function:

* Returns and drawdowns are fractions (0.05 is 5 %), never percent.
* A value that is undefined for the input (too few points, no trades, no losses, a zero
  denominator, a non-positive starting equity) is `None`, never NaN or infinity.
* Period returns are simple returns between consecutive equity points:
  ``r_i = E_i / E_{i-1} - 1``.

Annualisation rule (`periods_per_year`): let Δ be the median spacing of the timestamps.

* Δ < 20 h (intraday bars): a year is 252 sessions of 6.5 h, so
  ``periods_per_year = 252 * 6.5 h / Δ`` (1-minute bars: 98,280; 5-minute: 19,656;
  hourly: 1,638), floored at 252 so a bar longer than a session counts as daily.
* 20 h <= Δ <= 4 days (daily bars; weekends and holidays make gaps longer than a day but not
  the median): 252.
* Δ > 4 days (weekly, monthly bars): ``365.25 days / Δ`` (weekly: 52.2, monthly: about 12).

CAGR does not use this rule: it uses the real time span between the first and last point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

TRADING_DAYS_PER_YEAR = 252
SESSION_HOURS = 6.5
DAYS_PER_YEAR = 365.25

_DAY = pd.Timedelta(days=1)


# ---- inputs ----------------------------------------------------------------------------------

def to_timestamps(ts: Iterable[str] | pd.Index | np.ndarray) -> pd.DatetimeIndex:
    """ISO-8601 strings (the journal's format) or datetimes -> a UTC `DatetimeIndex`
    (naive datetimes are taken as UTC)."""
    if isinstance(ts, pd.DatetimeIndex):
        return ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
    values = ts if isinstance(ts, (pd.Index, np.ndarray)) else list(ts)
    if len(values) and isinstance(values[0], str):
        return pd.DatetimeIndex(pd.to_datetime(values, utc=True, format="ISO8601"))
    return pd.DatetimeIndex(pd.to_datetime(values, utc=True))


def equity_series(ts: Iterable[str] | pd.Index, equity: Iterable[float]) -> pd.Series:
    """An equity `Series` indexed by UTC time, sorted by time, from parallel sequences."""
    series = pd.Series(np.asarray(list(equity) if not isinstance(equity, np.ndarray) else equity,
                                  dtype=float), index=to_timestamps(ts), name="equity")
    if not series.index.is_monotonic_increasing:
        series = series.sort_index(kind="stable")
    return series


def _clean(equity: pd.Series) -> pd.Series:
    finite = np.isfinite(equity.to_numpy(dtype=float))
    return equity if finite.all() else equity[finite]


@dataclass(frozen=True)
class TradeColumns:
    """Trades as arrays, for a backtest's thousands of trades without a Python object each:
    `pnl`, and the entry and exit times as UTC nanoseconds. Every function taking trades
    accepts it in place of a sequence of rows."""
    pnl: np.ndarray
    entry_ns: np.ndarray
    exit_ns: np.ndarray

    def __len__(self) -> int:
        return len(self.pnl)


def _field(trade: Any, name: str, default: Any = None) -> Any:
    if type(trade) is dict or isinstance(trade, Mapping):
        return trade.get(name, default)
    return getattr(trade, name, default)


def _pnls(trades: Sequence[Any]) -> np.ndarray:
    if isinstance(trades, TradeColumns):
        values = np.asarray(trades.pnl, dtype=float)
    else:
        values = np.array([_field(t, "pnl") for t in trades], dtype=float)
    return values[np.isfinite(values)]


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# ---- annualisation -----------------------------------------------------------------------------

def periods_per_year(index: pd.DatetimeIndex) -> float | None:
    """Periods per year from the median spacing of `index` (see the module's rule); None with
    fewer than two distinct timestamps."""
    if len(index) < 2:
        return None
    return _ppy_from_ticks(*_ticks(index))


_NS_PER_TICK = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def _ticks(index: pd.DatetimeIndex) -> tuple[np.ndarray, int]:
    """The index's own int64 values and nanoseconds per unit: no converted copy of a long
    index (pandas keeps seconds, micro- or nanoseconds)."""
    factor = _NS_PER_TICK.get(index.unit)
    if factor is None:
        return index.as_unit("ns").asi8, 1
    return index.asi8, factor


def _ppy_from_ticks(t: np.ndarray, ns_per_tick: int) -> float | None:
    steps = np.diff(t)
    if steps.size and steps.min() <= 0:
        steps = steps[steps > 0]
    if steps.size == 0:
        return None
    median = pd.Timedelta(_median_step(steps) * ns_per_tick, unit="ns")
    if median < pd.Timedelta(hours=20):
        return max(float(TRADING_DAYS_PER_YEAR),
                   TRADING_DAYS_PER_YEAR * pd.Timedelta(hours=SESSION_HOURS) / median)
    if median <= pd.Timedelta(days=4):
        return float(TRADING_DAYS_PER_YEAR)
    return DAYS_PER_YEAR * _DAY / median


def _median_step(steps: np.ndarray) -> int:
    """`int(np.median(steps))`, without the partition when more than half of the steps are the
    shortest one (regular bars with a few gaps): then both middle values are that step."""
    shortest = steps.min()
    if 2 * np.count_nonzero(steps == shortest) > steps.size:
        return int(shortest)
    return int(np.median(steps))


def period_returns(equity: pd.Series) -> pd.Series:
    """Simple returns between consecutive points, ``E_i / E_{i-1} - 1`` (first point dropped;
    steps from a non-positive equity are dropped, as a return from them is undefined)."""
    equity = _clean(equity)
    values = equity.to_numpy(dtype=float)
    if values.size < 2:
        return pd.Series([], dtype=float)
    prev, cur = values[:-1], values[1:]
    ok = prev > 0
    return pd.Series(cur[ok] / prev[ok] - 1.0, index=equity.index[1:][ok])


def years_between(start: pd.Timestamp, end: pd.Timestamp) -> float:
    """Length of [start, end] in years of 365.25 days."""
    return (end - start) / _DAY / DAYS_PER_YEAR


# ---- returns -----------------------------------------------------------------------------------

def total_return(equity: pd.Series) -> float | None:
    """``E_last / E_first - 1``; None with fewer than two points or ``E_first <= 0``."""
    equity = _clean(equity)
    if len(equity) < 2 or equity.iloc[0] <= 0:
        return None
    return _finite(equity.iloc[-1] / equity.iloc[0] - 1.0)


def cagr(equity: pd.Series) -> float | None:
    """Compound annual growth rate over the real time span:
    ``(E_last / E_first) ** (1 / years) - 1`` with ``years = (t_last - t_first) / 365.25 days``.

    -1.0 when the account ends at or below zero; None with fewer than two points, a zero time
    span or ``E_first <= 0``. Over a span much shorter than a year the figure is an
    extrapolation and can be very large; it is reported as computed.
    """
    equity = _clean(equity)
    if len(equity) < 2 or equity.iloc[0] <= 0:
        return None
    years = years_between(equity.index[0], equity.index[-1])
    if years <= 0:
        return None
    growth = equity.iloc[-1] / equity.iloc[0]
    if growth <= 0:
        return -1.0
    try:
        return _finite(growth ** (1.0 / years) - 1.0)
    except OverflowError:
        return None


def annual_volatility(equity: pd.Series) -> float | None:
    """Annualised volatility: ``std(r, ddof=1) * sqrt(periods_per_year)``; None with fewer than
    two returns."""
    return _volatility(period_returns(equity), periods_per_year(_clean(equity).index))


def _volatility(r: pd.Series, ppy: float | None) -> float | None:
    if len(r) < 2 or ppy is None:
        return None
    return _finite(r.std(ddof=1) * math.sqrt(ppy))


def _per_period_rate(annual_rate: float, ppy: float) -> float:
    """An annual rate compounded down to one period: ``(1 + rf) ** (1 / ppy) - 1``."""
    return (1.0 + annual_rate) ** (1.0 / ppy) - 1.0


def sharpe_ratio(equity: pd.Series, risk_free: float = 0.0) -> float | None:
    """Annualised Sharpe ratio: ``mean(r - rf_p) / std(r - rf_p, ddof=1) * sqrt(ppy)`` where
    `risk_free` is an annual rate and ``rf_p = (1 + risk_free) ** (1 / ppy) - 1``.

    None with fewer than two returns or zero volatility (a flat curve)."""
    return _sharpe(period_returns(equity), periods_per_year(_clean(equity).index), risk_free)


def _sharpe(r: pd.Series, ppy: float | None, risk_free: float) -> float | None:
    if len(r) < 2 or ppy is None:
        return None
    excess = r.to_numpy() - _per_period_rate(risk_free, ppy)
    sd = excess.std(ddof=1)
    if not sd > 1e-15:
        return None
    return _finite(excess.mean() / sd * math.sqrt(ppy))


def sortino_ratio(equity: pd.Series, risk_free: float = 0.0) -> float | None:
    """Annualised Sortino ratio: ``mean(r - rf_p) / DD * sqrt(ppy)`` with the downside deviation
    ``DD = sqrt(mean(min(r - rf_p, 0) ** 2))`` taken over all periods (target = rf_p).

    None with fewer than two returns or no period below the target."""
    return _sortino(period_returns(equity), periods_per_year(_clean(equity).index), risk_free)


def _sortino(r: pd.Series, ppy: float | None, risk_free: float) -> float | None:
    if len(r) < 2 or ppy is None:
        return None
    excess = r.to_numpy() - _per_period_rate(risk_free, ppy)
    downside = math.sqrt(float(np.mean(np.minimum(excess, 0.0) ** 2)))
    if not downside > 1e-15:
        return None
    return _finite(excess.mean() / downside * math.sqrt(ppy))


def calmar_ratio(equity: pd.Series) -> float | None:
    """``CAGR / max_drawdown`` (drawdown as a positive fraction); None when either is undefined
    or there was no drawdown."""
    growth, dd = cagr(equity), max_drawdown(equity)
    if growth is None or not dd:
        return None
    return _finite(growth / dd)


# ---- drawdown ----------------------------------------------------------------------------------

def drawdown_series(equity: pd.Series) -> pd.Series:
    """``E_t / max(E_0..E_t) - 1`` at every point: 0 at a new high, negative below it."""
    equity = _clean(equity)
    values = equity.to_numpy(dtype=float)
    peak = np.maximum.accumulate(values) if values.size else values
    with np.errstate(divide="ignore", invalid="ignore"):
        dd = np.where(peak > 0, values / peak - 1.0, 0.0)
    return pd.Series(dd, index=equity.index, name="drawdown")


def max_drawdown(equity: pd.Series) -> float | None:
    """The largest peak-to-trough fall as a positive fraction, ``-min(drawdown_series)``
    (0.25 = the equity fell 25 % below its running high). 0.0 for a curve that never falls;
    None with fewer than two points."""
    equity = _clean(equity)
    if len(equity) < 2:
        return None
    return _finite(max(0.0, -float(drawdown_series(equity).min())))


@dataclass(frozen=True)
class DrawdownPeriod:
    """One stretch under water: from the peak it fell from to the first point back at or above
    that peak (`recovered`), or to the last point when it never recovered."""
    start: pd.Timestamp
    end: pd.Timestamp
    days: float
    recovered: bool
    depth: float  # deepest fall in the stretch, positive fraction


def longest_drawdown(equity: pd.Series) -> DrawdownPeriod | None:
    """The longest peak-to-recovery stretch, measured in calendar days between the peak's and
    the recovery's timestamps (an unrecovered stretch runs to the last point). None with fewer
    than two points or when the equity never falls below a previous high."""
    equity = _clean(equity)
    if len(equity) < 2:
        return None
    values = equity.to_numpy(dtype=float)
    return _longest_under_water(values, np.maximum.accumulate(values), *_ticks(equity.index), equity.index)


# ---- trades ------------------------------------------------------------------------------------

def trade_count(trades: Sequence[Any]) -> int:
    """Number of round trips."""
    return len(trades)


def win_rate(trades: Sequence[Any]) -> float | None:
    """Fraction of trades with ``pnl > 0`` (a zero-pnl trade is not a win); None without trades."""
    pnl = _pnls(trades)
    return float(np.mean(pnl > 0)) if pnl.size else None


def profit_factor(trades: Sequence[Any]) -> float | None:
    """Gross profit / gross loss: ``sum(pnl > 0) / -sum(pnl < 0)``; None without losing trades."""
    pnl = _pnls(trades)
    loss = -pnl[pnl < 0].sum()
    if not loss > 0:
        return None
    return _finite(pnl[pnl > 0].sum() / loss)


def expectancy(trades: Sequence[Any]) -> float | None:
    """Mean pnl per trade in the account currency; None without trades."""
    pnl = _pnls(trades)
    return float(pnl.mean()) if pnl.size else None


def average_win(trades: Sequence[Any]) -> float | None:
    """Mean pnl of the winning trades (``pnl > 0``); None without winners."""
    pnl = _pnls(trades)
    wins = pnl[pnl > 0]
    return float(wins.mean()) if wins.size else None


def average_loss(trades: Sequence[Any]) -> float | None:
    """Mean pnl of the losing trades (``pnl < 0``, so the value is negative); None without
    losers."""
    pnl = _pnls(trades)
    losses = pnl[pnl < 0]
    return float(losses.mean()) if losses.size else None


def exposure(trades: Sequence[Any], start: pd.Timestamp, end: pd.Timestamp) -> float | None:
    """Fraction of the span [start, end] (normally the equity curve's) during which at least one
    position was open: the union of the trades' [entry_ts, exit_ts] intervals, clipped to the
    span, over the span's length. Overlapping trades count once. None for a zero-length span;
    0.0 without trades."""
    if start is None or end is None or not end > start:
        return None
    if not trades:
        return 0.0
    if isinstance(trades, TradeColumns):
        entries = np.asarray(trades.entry_ns, dtype=np.int64)
        exits = np.asarray(trades.exit_ns, dtype=np.int64)
    else:
        entries = to_timestamps([_field(t, "entry_ts") for t in trades]).as_unit("ns").asi8
        exits = to_timestamps([_field(t, "exit_ts") for t in trades]).as_unit("ns").asi8
    lo, hi = pd.Timestamp(start).as_unit("ns").value, pd.Timestamp(end).as_unit("ns").value
    a = np.clip(np.minimum(entries, exits), lo, hi)
    b = np.clip(np.maximum(entries, exits), lo, hi)
    order = np.argsort(a, kind="stable")
    a, b = a[order], b[order]
    # Merge: an interval starts a new block when it begins after every earlier interval ended.
    reach = np.maximum.accumulate(b)
    new_block = np.concatenate(([True], a[1:] > reach[:-1]))
    block_id = np.cumsum(new_block) - 1
    block_start = a[new_block]
    block_end = np.zeros(block_start.size, dtype=np.int64)
    np.maximum.at(block_end, block_id, b)
    covered = float(np.sum(block_end - block_start))
    return covered / float(hi - lo)


def buy_and_hold_return(closes: Sequence[float] | np.ndarray) -> float | None:
    """``last close / first close - 1`` over the finite closes; None with fewer than two or a
    non-positive first close."""
    values = np.asarray(closes, dtype=float)
    finite = np.isfinite(values)
    if not finite.all():
        values = values[finite]
    if values.size < 2 or values[0] <= 0:
        return None
    return _finite(values[-1] / values[0] - 1.0)


# ---- calendar table ----------------------------------------------------------------------------

def monthly_returns(equity: pd.Series) -> pd.DataFrame:
    """Monthly returns compounded from the equity series: rows are years, columns 1..12 and
    "Year".

    A month's return is ``E(last point of the month) / E(last point of the previous month) - 1``;
    the first month is measured from the first point of the series. "Year" is the same ratio
    between year ends (the product of the year's ``1 + monthly`` values). A month without any
    point is NaN in the table (there is nothing to show); an empty or one-point series gives an
    empty table. Months are UTC calendar months (a naive index is taken as UTC).
    """
    equity = _clean(equity)
    columns = list(range(1, 13)) + ["Year"]
    if len(equity) < 2:
        return pd.DataFrame(columns=columns, dtype=float)
    if not equity.index.is_monotonic_increasing:
        equity = equity.sort_index(kind="stable")
    values = equity.to_numpy(dtype=float)
    t, unit = equity.index.asi8, equity.index.unit      # UTC (or naive) time in the index's unit
    # the last point of each month, found from the month starts (a few hundred) by binary search
    first_month, last_month = (np.array([t[0], t[-1]]).astype(f"datetime64[{unit}]")
                               .astype("datetime64[M]").astype(np.int64))
    months = np.arange(first_month, last_month + 1)                    # months since 1970-01
    starts = months.astype("datetime64[M]").astype(f"datetime64[{unit}]").astype(np.int64)
    begin = np.searchsorted(t, starts, side="left")
    end = np.append(begin[1:], len(t)) - 1                             # last point of each month
    has = end >= begin
    months, end = months[has], end[has]
    month_end = values[end]
    base = np.concatenate(([values[0]], month_end[:-1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        month_ret = np.where(base > 0, month_end / base - 1.0, np.nan)
    years = months // 12 + 1970
    row_years = np.unique(years)
    table = np.full((row_years.size, 13), np.nan)
    row = np.searchsorted(row_years, years)
    table[row, months % 12] = month_ret
    year_last = np.append(row[1:] != row[:-1], True)                  # a year's last month with a point
    year_end = month_end[year_last]
    year_base = np.concatenate(([values[0]], year_end[:-1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        table[:, 12] = np.where(year_base > 0, year_end / year_base - 1.0, np.nan)
    return pd.DataFrame(table, index=pd.Index(row_years.tolist(), name="year"), columns=columns)


# ---- all of it ---------------------------------------------------------------------------------

EQUITY_KEYS = ("start", "end", "start_equity", "end_equity", "total_return", "cagr", "volatility", "sharpe",
               "sortino", "calmar", "max_drawdown", "max_drawdown_days", "max_drawdown_start",
               "max_drawdown_end", "max_drawdown_recovered", "periods_per_year")
TRADE_KEYS = ("trades", "win_rate", "profit_factor", "expectancy", "average_win", "average_loss")


def equity_summary(equity: pd.Series, *, risk_free: float = 0.0) -> dict[str, Any]:
    """The equity curve's figures of `summarize` (`EQUITY_KEYS`), each computed as its own
    function does, in one pass over the arrays: the running peak, the drawdown and the period
    returns are computed once (a 1M-point curve in milliseconds)."""
    equity = _clean(equity)
    out: dict[str, Any] = dict.fromkeys(EQUITY_KEYS)
    n = len(equity)
    if n == 0:
        return out
    values = equity.to_numpy(dtype=float)
    out.update(start=equity.index[0], end=equity.index[-1],
               start_equity=float(values[0]), end_equity=float(values[-1]))
    if n < 2:
        return out
    t, ns_per_tick = _ticks(equity.index)
    first, last = values[0], values[-1]
    if first > 0:
        out["total_return"] = _finite(last / first - 1.0)
        years = int(t[-1] - t[0]) * ns_per_tick / _DAY.value / DAYS_PER_YEAR   # years_between
        if years > 0:
            growth = last / first
            if growth <= 0:
                out["cagr"] = -1.0
            else:
                try:
                    out["cagr"] = _finite(growth ** (1.0 / years) - 1.0)
                except OverflowError:
                    pass
    # drawdown: one running peak for the deepest fall and the longest stretch under water
    peak = np.maximum.accumulate(values)
    if peak[0] > 0:                                  # the peak never falls: positive throughout
        trough = float((values / peak).min()) - 1.0
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            trough = float(np.where(peak > 0, values / peak - 1.0, 0.0).min())
    mdd = _finite(max(0.0, -trough))
    out["max_drawdown"] = mdd
    dd = _longest_under_water(values, peak, t, ns_per_tick, equity.index)
    if dd is not None:
        out.update(max_drawdown_days=dd.days, max_drawdown_start=dd.start, max_drawdown_end=dd.end,
                   max_drawdown_recovered=dd.recovered)
    if out["cagr"] is not None and mdd:
        out["calmar"] = _finite(out["cagr"] / mdd)
    # period returns, once for volatility, Sharpe and Sortino
    ppy = _ppy_from_ticks(t, ns_per_tick)
    out["periods_per_year"] = ppy
    prev, cur = values[:-1], values[1:]
    if prev.min() > 0:
        r = cur / prev
        r -= 1.0
    else:
        ok = prev > 0
        r = cur[ok] / prev[ok] - 1.0
    if r.size < 2 or ppy is None:
        return out
    sd = float(r.std(ddof=1))
    out["volatility"] = _finite(sd * math.sqrt(ppy))
    rf = _per_period_rate(risk_free, ppy)
    if rf != 0.0:
        r -= rf                                      # the excess returns from here on
        sd = float(r.std(ddof=1))
    mean = float(r.mean())
    if sd > 1e-15:
        out["sharpe"] = _finite(mean / sd * math.sqrt(ppy))
    below = np.minimum(r, 0.0, out=r)                # r is not needed after this
    downside = math.sqrt(float(np.dot(below, below)) / r.size)
    if downside > 1e-15:
        out["sortino"] = _finite(mean / downside * math.sqrt(ppy))
    return out


def _longest_under_water(values: np.ndarray, peak: np.ndarray, t: np.ndarray, ns_per_tick: int,
                         index: pd.DatetimeIndex) -> DrawdownPeriod | None:
    """`longest_drawdown` from the curve's running peak (`values` finite, at least two; `t` the
    index's int64 values, `ns_per_tick` nanoseconds each)."""
    under = values < peak                               # never the first point
    change = np.flatnonzero(under[1:] != under[:-1]) + 1
    if change.size == 0:
        return None
    starts = change[0::2]                               # first underwater index of each stretch
    ends = change[1::2]                                 # index just after it (none: to the end)
    if ends.size < starts.size:
        ends = np.append(ends, len(values))
    peaks = starts - 1
    recovered = ends < len(values)
    last = np.where(recovered, ends, len(values) - 1)
    days = (t[last] - t[peaks]) * ns_per_tick / 86_400e9
    k = int(np.argmax(days))                            # the first of the longest
    depth = float(1.0 - (values[starts[k]:ends[k]] / peak[starts[k]:ends[k]]).min())
    return DrawdownPeriod(index[peaks[k]], index[last[k]], float(days[k]), bool(recovered[k]), depth)


def trade_summary(trades: Sequence[Any]) -> dict[str, Any]:
    """The trade figures of `summarize` (`TRADE_KEYS`), from the pnl column read once."""
    pnl = _pnls(trades)
    wins, losses = pnl[pnl > 0], pnl[pnl < 0]
    loss = -losses.sum()
    return {
        "trades": trade_count(trades),
        "win_rate": float(wins.size / pnl.size) if pnl.size else None,
        "profit_factor": _finite(wins.sum() / loss) if loss > 0 else None,
        "expectancy": float(pnl.mean()) if pnl.size else None,
        "average_win": float(wins.mean()) if wins.size else None,
        "average_loss": float(losses.mean()) if losses.size else None,
    }


def summarize(equity: pd.Series, trades: Sequence[Any], *, risk_free: float = 0.0,
              closes: Sequence[float] | None = None) -> dict[str, Any]:
    """Every scalar metric in one dict (None where undefined), for the report and the runs'
    summary column. `closes` (a symbol's closes) adds the buy-and-hold return."""
    equity = _clean(equity)
    out = equity_summary(equity, risk_free=risk_free)
    out.update(trade_summary(trades))
    out["exposure"] = exposure(trades, out["start"], out["end"]) if len(equity) >= 2 else None
    out["buy_and_hold"] = buy_and_hold_return(closes) if closes is not None else None
    return out
