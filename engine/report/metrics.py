"""Performance metrics of one run: pure functions over an equity series and a list of trades.

The equity series is a `pandas.Series` of account equity indexed by a tz-aware (UTC) or naive
`DatetimeIndex` in time order; `equity_series` builds one from the journal's ISO-8601 strings.
Trades are mappings (journal rows) or objects with at least `pnl`, and `entry_ts`/`exit_ts`
for exposure and durations, `return_pct` for the trades' returns.

Conventions, the same in every function:

* Returns and drawdowns are fractions (0.05 is 5 %), never percent.
* A value that is undefined for the input (too few points, no trades, no losses, a zero
  denominator, a non-positive starting equity) is `None`, never NaN or infinity.
* Period returns are simple (arithmetic) returns between consecutive points:
  ``r_i = E_i / E_{i-1} - 1``.
* The curve's first point is the starting cash, before the run's first bar (`from_starting_cash`
  puts it there), so every figure is measured from the money the run started with.

Volatility, Sharpe, Sortino, alpha and beta use **daily** returns annualised with 252 trading
days (``sqrt(252)`` for volatility, Sharpe and Sortino, ``252`` for alpha), the empyrical /
QuantStats convention, whatever the bar:

* bars of up to four days apart (intraday and daily bars): the curve is resampled to daily
  closes first, the last point of each calendar day in the strategy's timezone (`tz`; UTC when
  None), and the returns are those between consecutive daily closes; the first day's return is
  measured from the curve's first point (the starting cash). Daily bars have one point a day,
  so for them this is the bars' own returns.
* coarser bars (weekly, monthly) cannot be made daily: their own returns are annualised with
  ``365.25 days / Δ`` periods a year (Δ the median spacing; weekly: 52.2, monthly: about 12).

`periods_per_year` is the bars' own rate (Δ < 20 h: ``252 * 6.5 h / Δ``, 1-minute bars 98,280;
up to 4 days: 252; coarser: ``365.25 days / Δ``), which tells how fine the bars are; the rate
the ratios are annualised with is `annualisation` in the summaries (252 unless the bars are
coarser than daily).

CAGR does not use either: it uses the real time span between the first and last point.
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
_DAY_NS = 86_400_000_000_000
DAILY_MAX_SPACING = pd.Timedelta(days=4)   # bars up to this far apart give daily returns


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


def from_starting_cash(equity: pd.Series, initial: float | None, bar_ns: int) -> pd.Series:
    """The curve with the starting cash put before its first point, at the bar before the first
    (`bar_ns` earlier), so returns, growth and drawdowns are measured from the money the run
    started with: the first point already includes what happened in the first bar (a fill's
    commission, the first close's mark). The point is put there even when the first bar left
    the equity unchanged, so that the first bar's return (zero) counts as every later bar's does
    and the curve always spans the whole run. Unchanged without points or a finite `initial`."""
    if not len(equity) or initial is None or not math.isfinite(initial):
        return equity
    before = pd.DatetimeIndex([equity.index[0] - pd.Timedelta(int(bar_ns), "ns")])
    if equity.index.tz is not None and before.tz is None:
        before = before.tz_localize(equity.index.tz)
    return pd.concat([pd.Series([float(initial)], index=before.as_unit(equity.index.unit)), equity])


@dataclass(frozen=True)
class TradeColumns:
    """Trades as arrays, for a backtest's thousands of trades without a Python object each:
    `pnl`, the entry and exit times as UTC nanoseconds and, when known, each trade's return
    `ret` as a fraction of its entry value (the journal's ``return_pct / 100``). Every function
    taking trades accepts it in place of a sequence of rows."""
    pnl: np.ndarray
    entry_ns: np.ndarray
    exit_ns: np.ndarray
    ret: np.ndarray | None = None

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


def _trade_returns(trades: Sequence[Any]) -> np.ndarray | None:
    """Each trade's return as a fraction of its entry value (``return_pct / 100`` of a journal
    row), the finite ones; None when the trades do not carry it."""
    if isinstance(trades, TradeColumns):
        if trades.ret is None:
            return None
        values = np.asarray(trades.ret, dtype=float)
    else:
        raw = [_field(t, "return_pct") for t in trades]
        if not raw or any(v is None for v in raw):
            return None
        values = np.array(raw, dtype=float) / 100.0
    return values[np.isfinite(values)]


def _trade_days(trades: Sequence[Any]) -> np.ndarray | None:
    """Each trade's duration in days (exit time - entry time); None when the trades do not carry
    their times."""
    if isinstance(trades, TradeColumns):
        entries, exits = np.asarray(trades.entry_ns, dtype=np.int64), np.asarray(trades.exit_ns, dtype=np.int64)
    else:
        a, b = [_field(t, "entry_ts") for t in trades], [_field(t, "exit_ts") for t in trades]
        if not a or any(v is None for v in a) or any(v is None for v in b):
            return None
        entries, exits = to_timestamps(a).as_unit("ns").asi8, to_timestamps(b).as_unit("ns").asi8
    if entries.size != len(trades) or exits.size != len(trades):
        return None
    return (exits - entries) / _DAY_NS


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


# ---- daily returns -----------------------------------------------------------------------------

def local_days(index: pd.DatetimeIndex, tz: str | None = None) -> np.ndarray:
    """The calendar day of each timestamp in `tz` (UTC when None; a naive index is taken as
    UTC), as days since 1970-01-01."""
    utc = to_timestamps(index)
    local = utc if tz in (None, "UTC") else utc.tz_convert(tz)
    ticks, ns_per_tick = _ticks(local.tz_localize(None))
    return ticks // (_DAY_NS // ns_per_tick)


def _daily_close_positions(values: np.ndarray, days: np.ndarray) -> np.ndarray:
    """Positions of the points whose values the daily returns are taken between: the last point
    of each day, preceded by the first point when the first day has more points than that one
    (the first point, the starting cash, opens the first day)."""
    last = np.flatnonzero(np.append(days[1:] != days[:-1], True))
    if last[0] > 0:
        last = np.concatenate(([0], last))
    return last


def daily_returns(equity: pd.Series, tz: str | None = None) -> pd.Series:
    """Simple returns between daily closes: the last point of each calendar day in `tz` (the
    strategy's timezone; UTC when None). The first day's return is measured from the curve's
    first point (the starting cash); a first day holding only that point gives no return of its
    own. Steps from a non-positive close are dropped. Indexed by the time of each day's last
    point."""
    equity = _clean(equity)
    if len(equity) < 2:
        return pd.Series([], dtype=float)
    values = equity.to_numpy(dtype=float)
    pos = _daily_close_positions(values, local_days(equity.index, tz))
    closes = values[pos]
    prev, cur = closes[:-1], closes[1:]
    ok = prev > 0
    return pd.Series(cur[ok] / prev[ok] - 1.0, index=equity.index[pos[1:]][ok])


def ratio_returns(equity: pd.Series, tz: str | None = None) -> tuple[pd.Series, float | None, str | None]:
    """The returns volatility, Sharpe, Sortino, alpha and beta are computed from, the periods a
    year they are annualised with, and their basis: ``(daily_returns(equity, tz), 252,
    "daily")`` for bars up to four days apart (intraday and daily), ``(period_returns(equity),
    365.25 days / Δ, "bar")`` for coarser bars; ``(empty, None, None)`` with fewer than two
    distinct timestamps."""
    equity = _clean(equity)
    ppy = periods_per_year(equity.index) if len(equity) >= 2 else None
    if ppy is None:
        return pd.Series([], dtype=float), None, None
    if ppy >= TRADING_DAYS_PER_YEAR:
        return daily_returns(equity, tz), float(TRADING_DAYS_PER_YEAR), "daily"
    return period_returns(equity), ppy, "bar"


def annual_volatility(equity: pd.Series, tz: str | None = None) -> float | None:
    """Annualised volatility: ``std(r, ddof=1) * sqrt(252)`` of the daily returns (`ratio_returns`);
    None with fewer than two returns."""
    r, ppy, _ = ratio_returns(equity, tz)
    return _volatility(r, ppy)


def _volatility(r: pd.Series, ppy: float | None) -> float | None:
    if len(r) < 2 or ppy is None:
        return None
    return _finite(r.std(ddof=1) * math.sqrt(ppy))


def _per_period_rate(annual_rate: float, ppy: float) -> float:
    """An annual rate compounded down to one period: ``(1 + rf) ** (1 / ppy) - 1``."""
    return (1.0 + annual_rate) ** (1.0 / ppy) - 1.0


def sharpe_ratio(equity: pd.Series, risk_free: float = 0.0, tz: str | None = None) -> float | None:
    """Annualised Sharpe ratio of the daily returns (`ratio_returns`):
    ``mean(r - rf_d) / std(r - rf_d, ddof=1) * sqrt(252)`` where `risk_free` is an annual rate
    and ``rf_d = (1 + risk_free) ** (1 / 252) - 1``.

    None with fewer than two returns or zero volatility (a flat curve)."""
    r, ppy, _ = ratio_returns(equity, tz)
    return _sharpe(r, ppy, risk_free)


def _sharpe(r: pd.Series, ppy: float | None, risk_free: float) -> float | None:
    if len(r) < 2 or ppy is None:
        return None
    excess = np.asarray(r, dtype=float) - _per_period_rate(risk_free, ppy)
    sd = excess.std(ddof=1)
    if not sd > 1e-15:
        return None
    return _finite(excess.mean() / sd * math.sqrt(ppy))


def sortino_ratio(equity: pd.Series, risk_free: float = 0.0, tz: str | None = None) -> float | None:
    """Annualised Sortino ratio of the daily returns: ``mean(r - rf_d) / DD * sqrt(252)`` with the
    downside deviation ``DD = sqrt(mean(min(r - rf_d, 0) ** 2))`` taken over all days (target =
    rf_d).

    None with fewer than two returns or no day below the target."""
    r, ppy, _ = ratio_returns(equity, tz)
    return _sortino(r, ppy, risk_free)


def _sortino(r: pd.Series, ppy: float | None, risk_free: float) -> float | None:
    if len(r) < 2 or ppy is None:
        return None
    excess = np.asarray(r, dtype=float) - _per_period_rate(risk_free, ppy)
    downside = math.sqrt(float(np.mean(np.minimum(excess, 0.0) ** 2)))
    if not downside > 1e-15:
        return None
    return _finite(excess.mean() / downside * math.sqrt(ppy))


def alpha_beta(equity: pd.Series, benchmark: pd.Series, *, risk_free: float = 0.0,
               tz: str | None = None) -> tuple[float | None, float | None]:
    """Alpha and beta of the curve against a benchmark curve (buy and hold, `buy_and_hold_curve`)
    from the daily returns of both (`ratio_returns`, the same days), as QuantStats computes
    them: ``beta = cov(r, b) / var(b)`` (both with ddof=1) and the annualised alpha
    ``252 * (mean(r - rf_d) - beta * mean(b - rf_d))`` (arithmetic: empyrical compounds it
    instead, ``(1 + mean(...)) ** 252 - 1``). (None, None) with fewer than two common days or a
    benchmark that never moves."""
    r, ppy, basis = ratio_returns(equity, tz)
    b, ppy_b, basis_b = ratio_returns(benchmark, tz)
    if ppy is None or ppy_b is None or basis != basis_b or len(r) < 2 or len(b) < 2:
        return None, None
    if basis == "daily":
        rk, bk = local_days(r.index, tz), local_days(b.index, tz)
    else:
        rk, bk = r.index.as_unit("ns").asi8, b.index.as_unit("ns").asi8
    common, ri, bi = np.intersect1d(rk, bk, assume_unique=True, return_indices=True)
    if common.size < 2:
        return None, None
    rf = _per_period_rate(risk_free, ppy)
    x = r.to_numpy(dtype=float)[ri] - rf
    y = b.to_numpy(dtype=float)[bi] - rf
    var = float(np.var(y, ddof=1))
    if not var > 1e-30:
        return None, None
    beta = float(np.cov(x, y, ddof=1)[0, 1]) / var
    return _finite(ppy * (float(x.mean()) - beta * float(y.mean()))), _finite(beta)


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


def drawdown_periods(equity: pd.Series) -> list[DrawdownPeriod]:
    """Every stretch under water (see `DrawdownPeriod`), in time order: from the peak the curve
    fell from to the first point back at or above it (the last point when it never got back),
    with its length in calendar days between those two timestamps and its depth, the deepest
    fall below that peak."""
    equity = _clean(equity)
    if len(equity) < 2:
        return []
    values = equity.to_numpy(dtype=float)
    found = _under_water(values, np.maximum.accumulate(values), *_ticks(equity.index))
    if found is None:
        return []
    peaks, last, recovered, days, depth = found
    index = equity.index
    return [DrawdownPeriod(index[p], index[e], float(d), bool(r), float(x))
            for p, e, r, d, x in zip(peaks.tolist(), last.tolist(), recovered.tolist(), days.tolist(),
                                     depth.tolist())]


def average_drawdown(equity: pd.Series) -> tuple[float | None, float | None]:
    """(mean depth, mean length in days) over every stretch under water (`drawdown_periods`),
    an unrecovered last stretch included up to the last point; (None, None) when the curve never
    falls below a previous high."""
    periods = drawdown_periods(equity)
    if not periods:
        return None, None
    return (float(np.mean([p.depth for p in periods])), float(np.mean([p.days for p in periods])))


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


def sqn(trades: Sequence[Any]) -> float | None:
    """Van Tharp's System Quality Number from the trades' P&L in the account currency (net of
    commissions): ``sqrt(N) * mean(pnl) / std(pnl, ddof=1)`` over all N trades (not capped at
    100, as some versions are). None with fewer than two trades or all P&L equal."""
    pnl = _pnls(trades)
    if pnl.size < 2:
        return None
    sd = float(pnl.std(ddof=1))
    if not sd > 1e-12 * max(1.0, float(np.abs(pnl).max())):
        return None
    return _finite(math.sqrt(pnl.size) * float(pnl.mean()) / sd)


def kelly(trades: Sequence[Any]) -> float | None:
    """The Kelly fraction ``W - (1 - W) / R`` with W the win rate (`win_rate`: ``pnl > 0``) and
    R the payoff ratio ``average_win / |average_loss|``. Negative when the trades lose on
    balance. None without a winner or without a loser (R undefined)."""
    pnl = _pnls(trades)
    wins, losses = pnl[pnl > 0], pnl[pnl < 0]
    if not wins.size or not losses.size:
        return None
    w = wins.size / pnl.size
    payoff = float(wins.mean()) / abs(float(losses.mean()))
    return _finite(w - (1.0 - w) / payoff)


def trade_return_stats(trades: Sequence[Any]) -> tuple[float | None, float | None, float | None]:
    """(best, worst, mean) of the trades' returns, each P&L (net of commissions) as a fraction of
    the trade's entry value: ``|entry price * quantity * multiplier|`` for a stock or future,
    the margin (the most it can lose) for an option combo, as the journal's `return_pct` holds
    it. (None, None, None) without trades or without their returns."""
    ret = _trade_returns(trades)
    if ret is None or not ret.size:
        return None, None, None
    return float(ret.max()), float(ret.min()), float(ret.mean())


def trade_duration_stats(trades: Sequence[Any]) -> tuple[float | None, float | None]:
    """(mean, longest) time a trade was held, entry to exit, in days (fractions of a day for
    intraday trades); (None, None) without trades or without their times."""
    days = _trade_days(trades)
    if days is None or not days.size:
        return None, None
    return float(days.mean()), float(days.max())


def duration_text(days: float | None, day: str = "d") -> str:
    """A length of time given in days, as a trader reads it: "617 d" for whole days, "57.4 d"
    (`day` names the unit), "2 h 14 min", "12 min"; "—" when unknown."""
    if days is None or not math.isfinite(days):
        return "—"
    if days >= 1:
        return f"{days:,.0f} {day}" if abs(days - round(days)) < 0.05 else f"{days:,.1f} {day}"
    minutes = round(days * 1440)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


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


def buy_and_hold_return(closes: Sequence[float] | np.ndarray, start_price: float | None = None) -> float | None:
    """``last close / start price - 1`` over the finite closes, the start price being
    `start_price` when given (the run's first bar's open: see `buy_and_hold_start`), else the
    first close; None with fewer than two closes (one with a start price) or a non-positive
    start price."""
    values = np.asarray(closes, dtype=float)
    finite = np.isfinite(values)
    if not finite.all():
        values = values[finite]
    if start_price is not None and math.isfinite(start_price):
        if values.size < 1 or not start_price > 0:
            return None
        return _finite(values[-1] / start_price - 1.0)
    if values.size < 2 or values[0] <= 0:
        return None
    return _finite(values[-1] / values[0] - 1.0)


def buy_and_hold_start(opens: Sequence[float] | np.ndarray, closes: Sequence[float] | np.ndarray) -> float | None:
    """The price buy and hold buys at when the run starts: the open of the run's first bar (the
    price when the strategy's curve starts with its cash), or its close when the bar has no
    usable open; `opens` and `closes` are the bars from the run's first on. None without a
    positive price."""
    for price in (opens[0] if len(opens) else None, closes[0] if len(closes) else None):
        if price is not None and math.isfinite(float(price)) and float(price) > 0:
            return float(price)
    return None


def buy_and_hold_curve(equity: pd.Series, price_times: pd.DatetimeIndex | np.ndarray,
                       closes: Sequence[float] | np.ndarray, start_price: float | None) -> pd.Series | None:
    """Buy and hold of one symbol with the same starting capital over the same span as the
    curve: `equity`'s first point is the starting cash (`from_starting_cash`), its value at the
    first point; at every later point the cash times ``close / start_price``, with the last
    close at or before that point's time (`price_times` are the bars' labels, as the curve's;
    fractional shares, no commission). The symbol is bought at the curve's last point before its
    first bar (the cash then); a curve that starts earlier than the symbol's bars has no
    benchmark before that point (NaN: not a flat line of cash that alpha, beta and the chart
    would read as the symbol's). None without a start price or prices."""
    equity = _clean(equity)
    if not len(equity) or start_price is None or not start_price > 0:
        return None
    values = np.asarray(closes, dtype=float)
    times = (price_times.as_unit("ns").asi8 if isinstance(price_times, pd.DatetimeIndex)
             else np.asarray(price_times, dtype=np.int64))
    ok = np.isfinite(values)
    if not ok.all():
        values, times = values[ok], times[ok]
    if not values.size:
        return None
    cash = float(equity.iloc[0])
    at = np.searchsorted(times, to_timestamps(equity.index).as_unit("ns").asi8, side="right") - 1
    curve = np.where(at >= 0, cash * values[np.maximum(at, 0)] / start_price, cash)
    bought = max(int(np.count_nonzero(at < 0)) - 1, 0)       # the last point before its first bar
    curve[bought] = cash
    curve[:bought] = np.nan
    return pd.Series(curve, index=equity.index, name="buy_and_hold")


def benchmark_from(benchmark: pd.Series):
    """The first bar of a buy-and-hold curve whose symbol's bars start after the curve's (its
    return, alpha and beta are measured from there); None when it spans the whole curve."""
    held = np.flatnonzero(np.isfinite(benchmark.to_numpy(dtype=float)))
    if not len(held) or held[0] == 0:
        return None
    return benchmark.index[min(held[0] + 1, len(benchmark) - 1)]


# ---- calendar table ----------------------------------------------------------------------------

def monthly_returns(equity: pd.Series, tz: str | None = None) -> pd.DataFrame:
    """Monthly returns compounded from the equity series: rows are years, columns 1..12 and
    "Year".

    A month's return is ``E(last point of the month) / E(last point of the previous month) - 1``;
    the first month is measured from the first point of the series (the starting cash); a first
    month holding only that point is not a month of the table (the point is the next month's
    base). "Year" is the same ratio between year ends (the product of the year's ``1 + monthly``
    values). A month without any point is NaN in the table (there is nothing to show); an empty
    or one-point series gives an empty table. Months are calendar months in `tz` (the strategy's
    timezone; UTC when None, and a naive index is taken as UTC).
    """
    equity = _clean(equity)
    columns = list(range(1, 13)) + ["Year"]
    if len(equity) < 2:
        return pd.DataFrame(columns=columns, dtype=float)
    if not equity.index.is_monotonic_increasing:
        equity = equity.sort_index(kind="stable")
    values = equity.to_numpy(dtype=float)
    local = equity.index
    if tz not in (None, "UTC"):
        local = to_timestamps(local).tz_convert(tz).tz_localize(None)
    t, unit = local.asi8, local.unit                    # wall-clock time in the index's unit
    # the last point of each month, found from the month starts (a few hundred) by binary search
    first_month, last_month = (np.array([t[0], t[-1]]).astype(f"datetime64[{unit}]")
                               .astype("datetime64[M]").astype(np.int64))
    months = np.arange(first_month, last_month + 1)                    # months since 1970-01
    starts = months.astype("datetime64[M]").astype(f"datetime64[{unit}]").astype(np.int64)
    begin = np.searchsorted(t, starts, side="left")
    end = np.append(begin[1:], len(t)) - 1                             # last point of each month
    has = end >= begin
    months, end = months[has], end[has]
    if end[0] == 0 and end.size > 1:                                   # only the first point: a base
        months, end = months[1:], end[1:]
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
               "max_drawdown_end", "max_drawdown_recovered", "average_drawdown", "average_drawdown_days",
               "drawdowns", "periods_per_year", "annualisation", "returns_basis", "return_periods")
TRADE_KEYS = ("trades", "win_rate", "profit_factor", "expectancy", "average_win", "average_loss", "sqn", "kelly",
              "best_trade", "worst_trade", "average_trade", "average_trade_days", "longest_trade_days")
BENCHMARK_KEYS = ("buy_and_hold", "alpha", "beta")


def equity_summary(equity: pd.Series, *, risk_free: float = 0.0, tz: str | None = None) -> dict[str, Any]:
    """The equity curve's figures of `summarize` (`EQUITY_KEYS`), each computed as its own
    function does, in one pass over the arrays: the running peak, the drawdowns and the daily
    returns are computed once (a 1M-point curve in tens of milliseconds). `tz`: the strategy's
    timezone, whose calendar days the daily returns are taken over (`ratio_returns`).

    `annualisation` is the periods a year the ratios are annualised with (252 but for bars
    coarser than daily), `returns_basis` "daily" (daily closes) or "bar" (the bars' own returns),
    `return_periods` how many returns there were; `drawdowns` counts the stretches under
    water."""
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
    # drawdown: one running peak for the deepest fall and the stretches under water
    peak = np.maximum.accumulate(values)
    if peak[0] > 0:                                  # the peak never falls: positive throughout
        trough = float((values / peak).min()) - 1.0
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            trough = float(np.where(peak > 0, values / peak - 1.0, 0.0).min())
    mdd = _finite(max(0.0, -trough))
    out["max_drawdown"] = mdd
    found = _under_water(values, peak, t, ns_per_tick)
    out["drawdowns"] = 0 if found is None else int(found[0].size)
    if found is not None:
        peaks, last_i, recovered, days, depth = found
        k = int(np.argmax(days))                     # the first of the longest
        out.update(max_drawdown_days=float(days[k]), max_drawdown_start=equity.index[peaks[k]],
                   max_drawdown_end=equity.index[last_i[k]], max_drawdown_recovered=bool(recovered[k]),
                   average_drawdown=float(depth.mean()), average_drawdown_days=float(days.mean()))
    if out["cagr"] is not None and mdd:
        out["calmar"] = _finite(out["cagr"] / mdd)
    # the returns, once for volatility, Sharpe and Sortino: daily closes up to daily bars
    ppy = _ppy_from_ticks(t, ns_per_tick)
    out["periods_per_year"] = ppy
    if ppy is None:
        return out
    if ppy >= TRADING_DAYS_PER_YEAR:
        closes = values[_daily_close_positions(values, local_days(equity.index, tz))]
        ann, basis = float(TRADING_DAYS_PER_YEAR), "daily"
    else:
        closes, ann, basis = values, ppy, "bar"
    prev, cur = closes[:-1], closes[1:]
    if prev.size and prev.min() > 0:
        r = cur / prev
        r -= 1.0
    else:
        ok = prev > 0
        r = cur[ok] / prev[ok] - 1.0
    out.update(annualisation=ann, returns_basis=basis, return_periods=int(r.size))
    if r.size < 2:
        return out
    sd = float(r.std(ddof=1))
    out["volatility"] = _finite(sd * math.sqrt(ann))
    rf = _per_period_rate(risk_free, ann)
    if rf != 0.0:
        r -= rf                                      # the excess returns from here on
        sd = float(r.std(ddof=1))
    mean = float(r.mean())
    if sd > 1e-15:
        out["sharpe"] = _finite(mean / sd * math.sqrt(ann))
    below = np.minimum(r, 0.0, out=r)                # r is not needed after this
    downside = math.sqrt(float(np.dot(below, below)) / r.size)
    if downside > 1e-15:
        out["sortino"] = _finite(mean / downside * math.sqrt(ann))
    return out


def _under_water(values: np.ndarray, peak: np.ndarray, t: np.ndarray, ns_per_tick: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Every stretch under water of a curve (`values` finite, at least two; `peak` its running
    peak; `t` the index's int64 values, `ns_per_tick` nanoseconds each), as arrays: the peak's
    position, the position it ends at (the recovery, or the last point), whether it recovered,
    its length in days and its depth (positive fraction). None when the curve never falls below
    a previous high."""
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
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(peak > 0, values / peak, 1.0)
    depth = 1.0 - np.minimum.reduceat(ratio, starts)    # each stretch to the next one's start
    return peaks, last, recovered, days, depth


def _longest_under_water(values: np.ndarray, peak: np.ndarray, t: np.ndarray, ns_per_tick: int,
                         index: pd.DatetimeIndex) -> DrawdownPeriod | None:
    """`longest_drawdown` from the curve's running peak (see `_under_water`)."""
    found = _under_water(values, peak, t, ns_per_tick)
    if found is None:
        return None
    peaks, last, recovered, days, depth = found
    k = int(np.argmax(days))                            # the first of the longest
    return DrawdownPeriod(index[peaks[k]], index[last[k]], float(days[k]), bool(recovered[k]), float(depth[k]))


def trade_summary(trades: Sequence[Any]) -> dict[str, Any]:
    """The trade figures of `summarize` (`TRADE_KEYS`), from the pnl column read once; the
    returns and durations from the trades' `ret` (`return_pct`) and times when they have them."""
    pnl = _pnls(trades)
    wins, losses = pnl[pnl > 0], pnl[pnl < 0]
    loss = -losses.sum()
    best, worst, mean_ret = trade_return_stats(trades)
    mean_days, longest_days = trade_duration_stats(trades)
    return {
        "trades": trade_count(trades),
        "win_rate": float(wins.size / pnl.size) if pnl.size else None,
        "profit_factor": _finite(wins.sum() / loss) if loss > 0 else None,
        "expectancy": float(pnl.mean()) if pnl.size else None,
        "average_win": float(wins.mean()) if wins.size else None,
        "average_loss": float(losses.mean()) if losses.size else None,
        "sqn": sqn(trades), "kelly": kelly(trades),
        "best_trade": best, "worst_trade": worst, "average_trade": mean_ret,
        "average_trade_days": mean_days, "longest_trade_days": longest_days,
    }


def summarize(equity: pd.Series, trades: Sequence[Any], *, risk_free: float = 0.0,
              closes: Sequence[float] | None = None, benchmark: pd.Series | None = None,
              tz: str | None = None) -> dict[str, Any]:
    """Every scalar metric in one dict (None where undefined), for the report and the runs'
    summary column. `benchmark` (`buy_and_hold_curve` over the same span) gives the buy-and-hold
    return (its last point over its first) and alpha and beta against it; without it, `closes`
    (a symbol's closes over the run) gives the buy-and-hold return from the first close. `tz`:
    the strategy's timezone (the calendar days of the daily returns)."""
    equity = _clean(equity)
    out = equity_summary(equity, risk_free=risk_free, tz=tz)
    out.update(trade_summary(trades))
    out["exposure"] = exposure(trades, out["start"], out["end"]) if len(equity) >= 2 else None
    out["buy_and_hold"] = out["alpha"] = out["beta"] = None
    out["buy_and_hold_from"] = None
    if benchmark is not None and len(benchmark) >= 2:
        out["buy_and_hold"] = total_return(benchmark)
        out["alpha"], out["beta"] = alpha_beta(equity, benchmark, risk_free=risk_free, tz=tz)
        out["buy_and_hold_from"] = benchmark_from(benchmark)
    elif closes is not None:
        out["buy_and_hold"] = buy_and_hold_return(closes)
    return out
