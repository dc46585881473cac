"""Report metrics (hand-computed and independent pandas figures), SVG charts, and the HTML report
rendered from journals built through the Journal API."""

from __future__ import annotations

import html
import json
import math
import re
import sqlite3
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.report import metrics as M
from engine.report import svg
from engine.report.html import fmt_pct, fmt_num, option_legs, render_report, write_report
from engine.runtime.journal import Journal, JournalError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SPY_CSV = DATA / "mplfinance" / "yahoofinance-SPY-20080101-20180101.csv"

EVIL = "<script>alert(1)</script> \"double\" 'single' & more"


def series(days: list[str], values: list[float]) -> pd.Series:
    return M.equity_series(days, values)


# ---- metrics: hand-computed ------------------------------------------------------------------

TINY = series(["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-06"], [100, 110, 99, 121])


def test_total_return_and_drawdown_by_hand():
    assert M.total_return(TINY) == pytest.approx(0.21)
    assert M.max_drawdown(TINY) == pytest.approx(0.10)          # 110 -> 99
    dd = M.longest_drawdown(TINY)
    assert dd.start == pd.Timestamp("2020-01-02", tz="UTC")
    assert dd.end == pd.Timestamp("2020-01-06", tz="UTC")       # back above 110 on the 6th
    assert dd.days == 4.0 and dd.recovered and dd.depth == pytest.approx(0.10)
    assert list(M.drawdown_series(TINY)) == pytest.approx([0, 0, -0.1, 0])


def test_longest_drawdown_picks_the_longest_and_reports_unrecovered():
    e = series(["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-04", "2020-01-10", "2020-01-20"],
               [100, 90, 101, 95, 100, 99])
    dd = M.longest_drawdown(e)
    # first stretch: 01-01 -> 01-03 (2 days); second from the 101 peak on 01-03, never recovered
    assert dd.start == pd.Timestamp("2020-01-03", tz="UTC") and dd.end == pd.Timestamp("2020-01-20", tz="UTC")
    assert dd.days == 17.0 and not dd.recovered
    assert dd.depth == pytest.approx(1 - 95 / 101)
    assert M.max_drawdown(e) == pytest.approx(0.10)


def test_sharpe_sortino_volatility_by_hand():
    r = [110 / 100 - 1, 99 / 110 - 1, 121 / 99 - 1]               # 0.1, -0.1, 0.2222
    mean, sd = statistics.mean(r), statistics.stdev(r)
    assert M.annual_volatility(TINY) == pytest.approx(sd * math.sqrt(252))
    assert M.sharpe_ratio(TINY) == pytest.approx(mean / sd * math.sqrt(252))
    downside = math.sqrt((0.1 ** 2) / 3)                         # only -0.1 is below 0, over 3 periods
    assert M.sortino_ratio(TINY) == pytest.approx(mean / downside * math.sqrt(252))
    # risk-free 5 % a year, compounded down to a day
    rf = 1.05 ** (1 / 252) - 1
    ex = [x - rf for x in r]
    assert M.sharpe_ratio(TINY, 0.05) == pytest.approx(statistics.mean(ex) / statistics.stdev(ex) * math.sqrt(252))


def test_cagr_uses_the_real_time_span():
    e = series(["2020-01-01", "2020-06-01", "2022-01-01"], [100, 80, 121])
    years = 731 / 365.25
    assert M.cagr(e) == pytest.approx(1.21 ** (1 / years) - 1)
    assert M.cagr(e) == pytest.approx(0.09993, abs=1e-5)
    assert M.calmar_ratio(e) == pytest.approx(M.cagr(e) / 0.2)
    assert M.cagr(series(["2020-01-01", "2021-01-01"], [100, 0])) == -1.0


def test_periods_per_year_rule():
    def idx(freq, n=50):
        return pd.date_range("2024-01-02 14:30", periods=n, freq=freq, tz="UTC")
    assert M.periods_per_year(idx("1min")) == pytest.approx(252 * 390)
    assert M.periods_per_year(idx("5min")) == pytest.approx(252 * 78)
    assert M.periods_per_year(idx("1h")) == pytest.approx(252 * 6.5)
    assert M.periods_per_year(idx("B")) == 252                     # weekends do not move the median
    assert M.periods_per_year(idx("D")) == 252
    assert M.periods_per_year(idx("W")) == pytest.approx(365.25 / 7)
    assert M.periods_per_year(idx("10h")) == 252                   # longer than a session: daily
    assert M.periods_per_year(idx("D", 1)) is None


def test_trade_statistics_by_hand():
    trades = [{"pnl": 30.0}, {"pnl": -10.0}, {"pnl": 50.0}, {"pnl": -20.0}, {"pnl": 0.0}]
    assert M.trade_count(trades) == 5
    assert M.win_rate(trades) == pytest.approx(2 / 5)
    assert M.profit_factor(trades) == pytest.approx(80 / 30)
    assert M.expectancy(trades) == pytest.approx(10.0)
    assert M.average_win(trades) == pytest.approx(40.0)
    assert M.average_loss(trades) == pytest.approx(-15.0)


def test_exposure_merges_overlaps_and_clips_to_the_span():
    start, end = pd.Timestamp("2020-01-01", tz="UTC"), pd.Timestamp("2020-01-11", tz="UTC")
    trades = [
        {"pnl": 1, "entry_ts": "2019-12-30T00:00:00Z", "exit_ts": "2020-01-02T00:00:00Z"},  # 1 day inside
        {"pnl": 1, "entry_ts": "2020-01-04T00:00:00Z", "exit_ts": "2020-01-06T00:00:00Z"},
        {"pnl": 1, "entry_ts": "2020-01-05T00:00:00Z", "exit_ts": "2020-01-07T00:00:00Z"},  # overlaps: 4th-7th = 3
        {"pnl": 1, "entry_ts": "2020-01-10T12:00:00Z", "exit_ts": "2020-01-15T00:00:00Z"},  # half a day inside
    ]
    assert M.exposure(trades, start, end) == pytest.approx(4.5 / 10)
    assert M.exposure([], start, end) == 0.0
    assert M.exposure(trades, start, start) is None


def test_monthly_returns_by_hand():
    e = series(["2021-01-04", "2021-01-29", "2021-02-15", "2021-02-26", "2021-04-30", "2022-01-31"],
               [100, 110, 99, 104.5, 114.95, 103.455])
    table = M.monthly_returns(e)
    assert table.loc[2021, 1] == pytest.approx(0.10)
    assert table.loc[2021, 2] == pytest.approx(104.5 / 110 - 1)
    assert math.isnan(table.loc[2021, 3])                           # no point in March
    assert table.loc[2021, 4] == pytest.approx(0.10)
    assert table.loc[2021, "Year"] == pytest.approx(0.1495)
    assert table.loc[2022, 1] == pytest.approx(-0.10)
    assert table.loc[2022, "Year"] == pytest.approx(-0.10)
    assert list(table.columns) == list(range(1, 13)) + ["Year"]


def test_buy_and_hold():
    assert M.buy_and_hold_return([50.0, np.nan, 55.0, 60.0]) == pytest.approx(0.2)
    assert M.buy_and_hold_return([50.0]) is None
    assert M.buy_and_hold_return([0.0, 3.0]) is None


def test_daily_returns_resample_intraday_equity_in_the_strategys_timezone():
    """Intraday equity is resampled to daily closes (the last point of each New York day) before
    volatility, Sharpe and Sortino; the first day is measured from the starting cash."""
    ny = "America/New_York"
    stamps = ["2024-03-04 09:29", "2024-03-04 09:30", "2024-03-04 12:00", "2024-03-04 16:00",  # 09:29: the cash
              "2024-03-05 09:30", "2024-03-05 15:59", "2024-03-05 20:30",                      # 20:30 NY is 01:30 UTC on the 6th
              "2024-03-06 09:30", "2024-03-06 16:00",
              "2024-03-07 10:00", "2024-03-07 16:00"]
    values = [1000.0, 1001.0, 990.0, 1010.0, 1020.0, 1005.0, 1008.0, 1030.0, 1015.0, 1012.0, 1040.0]
    index = pd.DatetimeIndex(stamps).tz_localize(ny).tz_convert("UTC")
    e = pd.Series(values, index=index)
    closes = np.array([1000.0, 1010.0, 1008.0, 1015.0, 1040.0])       # the cash, then each NY day's last point
    r = closes[1:] / closes[:-1] - 1
    got = M.daily_returns(e, ny)
    np.testing.assert_allclose(got.to_numpy(), r, rtol=1e-12)
    assert [t.tz_convert(ny).day for t in got.index] == [4, 5, 6, 7]
    # UTC days put the 20:30 point on the 6th: a different curve of closes, so the zone matters
    assert not np.allclose(M.daily_returns(e).to_numpy()[:3], r[:3])
    sd = np.std(r, ddof=1)
    assert M.annual_volatility(e, ny) == pytest.approx(sd * np.sqrt(252))
    assert M.sharpe_ratio(e, tz=ny) == pytest.approx(np.mean(r) / sd * np.sqrt(252))
    downside = np.sqrt(np.mean(np.minimum(r, 0) ** 2))
    assert M.sortino_ratio(e, tz=ny) == pytest.approx(np.mean(r) / downside * np.sqrt(252))
    s = M.equity_summary(e, tz=ny)
    assert s["returns_basis"] == "daily" and s["annualisation"] == 252 and s["return_periods"] == 4
    assert s["sharpe"] == pytest.approx(M.sharpe_ratio(e, tz=ny)) and s["sortino"] == pytest.approx(M.sortino_ratio(e, tz=ny))
    assert s["volatility"] == pytest.approx(M.annual_volatility(e, ny))
    assert s["periods_per_year"] > 252                               # the bars themselves are intraday
    # weekly bars cannot be made daily: their own returns, 52.18 a year
    weekly = series(["2020-01-03", "2020-01-10", "2020-01-17", "2020-01-24", "2020-01-31"], [100, 102, 101, 105, 104])
    rw = np.diff(weekly.to_numpy()) / weekly.to_numpy()[:-1]
    sw = M.equity_summary(weekly)
    assert sw["returns_basis"] == "bar" and sw["annualisation"] == pytest.approx(365.25 / 7)
    assert sw["sharpe"] == pytest.approx(rw.mean() / rw.std(ddof=1) * np.sqrt(365.25 / 7))


def test_a_first_day_or_month_holding_only_the_starting_cash_is_its_base():
    e = M.from_starting_cash(series(["2020-02-03", "2020-02-04", "2020-02-05"], [100.0, 110.0, 99.0]),
                             100.0, 86_400 * 10**9)
    assert len(e) == 4 and e.index[0] == pd.Timestamp("2020-02-02", tz="UTC") and e.iloc[0] == 100.0
    # the point is put there even though the first bar left the equity at the starting cash
    np.testing.assert_allclose(M.daily_returns(e).to_numpy(), [0.0, 0.1, -0.1])
    e = M.from_starting_cash(series(["2020-03-02", "2020-03-31", "2020-04-30"], [100.0, 110.0, 121.0]),
                             95.0, 86_400 * 10**9)                     # starting cash on 02-29
    table = M.monthly_returns(e)
    assert math.isnan(table.loc[2020, 2])                               # February is only the base
    assert table.loc[2020, 3] == pytest.approx(110 / 95 - 1) and table.loc[2020, 4] == pytest.approx(0.1)
    assert len(M.from_starting_cash(e.iloc[:0], 100.0, 1)) == 0 and M.from_starting_cash(e, None, 1) is e
    assert [M.duration_text(d) for d in (57.0, 57.4, 0.09305, 12 / 1440, None)] == ["57 d", "57.4 d", "2 h 14 min", "12 min", "—"]


def test_average_drawdown_by_hand():
    e = series(["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-05", "2020-01-06", "2020-01-10", "2020-01-20"],
               [100, 90, 101, 95, 98, 102, 100])
    periods = M.drawdown_periods(e)
    # 100 -> 90 -> 101 (peak 01-01, back on 01-03), 101 -> 95 -> 98 -> 102 (01-03 to 01-10),
    # 102 -> 100 to the end (01-10 to 01-20, not recovered)
    assert [(p.start.day, p.end.day, p.days, p.recovered) for p in periods] == \
        [(1, 3, 2.0, True), (3, 10, 7.0, True), (10, 20, 10.0, False)]
    depths = [0.10, 1 - 95 / 101, 1 - 100 / 102]
    assert [p.depth for p in periods] == pytest.approx(depths)
    avg, days = M.average_drawdown(e)
    assert avg == pytest.approx(np.mean(depths)) and days == pytest.approx(19 / 3)
    s = M.equity_summary(e)
    assert s["average_drawdown"] == pytest.approx(avg) and s["average_drawdown_days"] == pytest.approx(days)
    assert s["drawdowns"] == 3 and s["max_drawdown_days"] == 10.0
    assert M.average_drawdown(series(["2020-01-01", "2020-01-02"], [1, 2])) == (None, None)


TRADES = [{"pnl": 30.0, "return_pct": 3.0, "entry_ts": "2020-01-01T14:30:00Z", "exit_ts": "2020-01-03T14:30:00Z"},
          {"pnl": -10.0, "return_pct": -1.25, "entry_ts": "2020-01-06T14:30:00Z", "exit_ts": "2020-01-06T20:30:00Z"},
          {"pnl": 50.0, "return_pct": 6.0, "entry_ts": "2020-01-07T14:30:00Z", "exit_ts": "2020-01-17T14:30:00Z"},
          {"pnl": -20.0, "return_pct": -2.5, "entry_ts": "2020-01-20T14:30:00Z", "exit_ts": "2020-01-21T02:30:00Z"},
          {"pnl": 0.0, "return_pct": 0.0, "entry_ts": "2020-01-22T14:30:00Z", "exit_ts": "2020-01-22T14:30:00Z"}]


def test_sqn_kelly_and_trade_returns_by_hand():
    pnl = np.array([30.0, -10.0, 50.0, -20.0, 0.0])
    assert M.sqn(TRADES) == pytest.approx(np.sqrt(5) * pnl.mean() / pnl.std(ddof=1))
    assert M.sqn(TRADES) == pytest.approx(np.sqrt(5) * 10 / statistics.stdev([30, -10, 50, -20, 0]))
    w, payoff = 2 / 5, 40 / 15                                           # a zero trade is not a win
    assert M.kelly(TRADES) == pytest.approx(w - (1 - w) / payoff) == pytest.approx(0.175)
    assert M.trade_return_stats(TRADES) == pytest.approx((0.06, -0.025, 0.0105))
    days = [2.0, 0.25, 10.0, 0.5, 0.0]
    assert M.trade_duration_stats(TRADES) == pytest.approx((np.mean(days), 10.0))
    s = M.trade_summary(TRADES)
    assert (s["sqn"], s["kelly"], s["best_trade"], s["worst_trade"], s["average_trade"],
            s["average_trade_days"], s["longest_trade_days"]) == pytest.approx(
        (M.sqn(TRADES), 0.175, 0.06, -0.025, 0.0105, np.mean(days), 10.0))
    cols = M.TradeColumns(pnl, M.to_timestamps([t["entry_ts"] for t in TRADES]).as_unit("ns").asi8,
                          M.to_timestamps([t["exit_ts"] for t in TRADES]).as_unit("ns").asi8,
                          np.array([t["return_pct"] for t in TRADES]) / 100)
    assert M.trade_summary(cols) == pytest.approx(s)
    # undefined cases
    assert M.sqn([{"pnl": 5.0}]) is None and M.sqn([{"pnl": 5.0}, {"pnl": 5.0}]) is None
    assert M.kelly([{"pnl": 5.0}, {"pnl": 1.0}]) is None and M.kelly([{"pnl": -5.0}]) is None
    assert M.kelly([{"pnl": 10.0}, {"pnl": -10.0}, {"pnl": -10.0}]) == pytest.approx(1 / 3 - (2 / 3) / 1)
    assert M.trade_return_stats([{"pnl": 1.0}]) == (None, None, None)
    assert M.trade_duration_stats([{"pnl": 1.0}]) == (None, None)


def test_buy_and_hold_curve_spans_the_run_and_alpha_beta_by_hand():
    rng = np.random.default_rng(11)
    days = pd.bdate_range("2021-01-04", periods=120, tz="UTC")
    opens = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, days.size)))
    closes = opens * np.exp(rng.normal(0.0005, 0.01, days.size))
    strat = 10_000 * np.cumprod(1 + 0.4 * (closes / np.concatenate(([opens[0]], closes[:-1])) - 1)
                                + rng.normal(0.0003, 0.004, days.size))
    equity = M.from_starting_cash(pd.Series(strat, index=days), 10_000.0, 86_400 * 10**9)
    start = M.buy_and_hold_start(opens, closes)
    assert start == opens[0]                                             # the first bar's open
    bench = M.buy_and_hold_curve(equity, days, closes, start)
    assert bench.iloc[0] == 10_000.0 and bench.index.equals(equity.index)
    np.testing.assert_allclose(bench.to_numpy()[1:], 10_000 * closes / opens[0])
    assert M.total_return(bench) == pytest.approx(closes[-1] / opens[0] - 1)
    assert M.buy_and_hold_return(closes, start) == pytest.approx(closes[-1] / opens[0] - 1)
    # alpha and beta: least squares of the strategy's daily returns on buy and hold's
    r = np.diff(equity.to_numpy()) / equity.to_numpy()[:-1]
    b = np.diff(bench.to_numpy()) / bench.to_numpy()[:-1]
    slope, intercept = np.polyfit(b, r, 1)
    alpha, beta = M.alpha_beta(equity, bench)
    assert beta == pytest.approx(slope, rel=1e-9)
    assert alpha == pytest.approx(252 * intercept, rel=1e-9)           # the intercept, annualised
    assert 0.2 < beta < 0.6
    s = M.summarize(equity, [], benchmark=bench)
    assert (s["alpha"], s["beta"], s["buy_and_hold"]) == pytest.approx((alpha, beta, closes[-1] / opens[0] - 1))
    # a symbol whose bars start after the run's: bought with the cash at the point before its
    # first bar, no benchmark before that (not a flat line of cash that alpha and beta would read);
    # its return, alpha and beta are measured from there, and the summary says from when
    late = M.buy_and_hold_curve(equity, days[5:], closes[5:], 40.0)
    assert np.isnan(late.to_numpy()[:5]).all() and late.iloc[5] == 10_000.0
    assert late.iloc[6] == pytest.approx(10_000 * closes[5] / 40)
    s = M.summarize(equity, [], benchmark=late)
    assert s["buy_and_hold"] == pytest.approx(closes[-1] / 40 - 1) and s["buy_and_hold_from"] == days[5]
    assert s["beta"] == pytest.approx(M.alpha_beta(equity[5:], late[5:])[1], rel=1e-12)
    assert M.summarize(equity, [], benchmark=bench)["buy_and_hold_from"] is None
    assert M.buy_and_hold_start([np.nan, 3.0], [2.0, 3.0]) == 2.0 and M.buy_and_hold_start([], []) is None
    assert M.alpha_beta(equity, pd.Series(10_000.0, index=equity.index)) == (None, None)   # flat benchmark


# ---- metrics: edge cases ---------------------------------------------------------------------

def _no_nan_or_inf(summary: dict) -> None:
    for k, v in summary.items():
        if isinstance(v, float):
            assert math.isfinite(v), k


def test_one_point_gives_none():
    s = M.summarize(series(["2020-01-01"], [100.0]), [])
    _no_nan_or_inf(s)
    for key in ("total_return", "cagr", "volatility", "sharpe", "sortino", "calmar", "max_drawdown",
                "max_drawdown_days", "win_rate", "profit_factor", "expectancy", "average_win",
                "average_loss", "exposure", "periods_per_year"):
        assert s[key] is None, key
    assert s["trades"] == 0
    assert M.monthly_returns(series(["2020-01-01"], [100.0])).empty


def test_empty_series_gives_none():
    empty = pd.Series([], dtype=float, index=pd.DatetimeIndex([], tz="UTC"))
    s = M.summarize(empty, [])
    _no_nan_or_inf(s)
    assert s["total_return"] is None and s["start"] is None and s["exposure"] is None


def test_flat_equity():
    flat = series([f"2020-01-{d:02d}" for d in range(1, 11)], [1000.0] * 10)
    s = M.summarize(flat, [])
    _no_nan_or_inf(s)
    assert s["total_return"] == 0.0 and s["cagr"] == 0.0 and s["volatility"] == 0.0
    assert s["max_drawdown"] == 0.0
    assert s["sharpe"] is None and s["sortino"] is None and s["calmar"] is None
    assert s["max_drawdown_days"] is None
    assert s["exposure"] == 0.0 and s["win_rate"] is None and s["profit_factor"] is None


def test_only_winners_or_only_losers():
    assert M.profit_factor([{"pnl": 5.0}, {"pnl": 1.0}]) is None
    assert M.average_loss([{"pnl": 5.0}]) is None
    assert M.profit_factor([{"pnl": -5.0}]) == 0.0
    assert M.average_win([{"pnl": -5.0}]) is None
    assert M.win_rate([{"pnl": -5.0}]) == 0.0


def test_rising_curve_without_losses_has_no_sortino():
    e = series(["2020-01-01", "2020-01-02", "2020-01-03"], [100, 101, 103])
    assert M.sortino_ratio(e) is None and M.calmar_ratio(e) is None and M.max_drawdown(e) == 0.0


def test_nan_points_are_ignored():
    e = series(["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-06"], [100, float("nan"), 99, 121])
    assert M.total_return(e) == pytest.approx(0.21)
    _no_nan_or_inf(M.summarize(e, []))


# ---- metrics against pandas on real SPY closes -------------------------------------------------

@pytest.fixture(scope="module")
def spy() -> pd.DataFrame:
    if not SPY_CSV.exists():
        pytest.skip(f"shared data not present: {SPY_CSV}")
    frame = pd.read_csv(SPY_CSV, parse_dates=["Date"]).set_index("Date")
    frame.index = frame.index.tz_localize("UTC")
    return frame


def test_metrics_match_an_independent_pandas_calculation(spy):
    close = spy["Close"].astype(float)
    equity = M.equity_series(close.index, close.to_numpy() * 10)   # "all in SPY" from 10 shares
    r = close.pct_change().dropna()
    assert M.periods_per_year(equity.index) == 252
    assert M.total_return(equity) == pytest.approx(close.iloc[-1] / close.iloc[0] - 1)
    assert M.buy_and_hold_return(close.to_numpy()) == pytest.approx(M.total_return(equity))
    assert M.annual_volatility(equity) == pytest.approx(r.std() * np.sqrt(252))
    assert M.sharpe_ratio(equity) == pytest.approx(r.mean() / r.std() * np.sqrt(252))
    downside = np.sqrt((r.clip(upper=0) ** 2).mean())
    assert M.sortino_ratio(equity) == pytest.approx(r.mean() / downside * np.sqrt(252))
    mdd = -(close / close.cummax() - 1).min()
    assert M.max_drawdown(equity) == pytest.approx(mdd)
    assert 0.5 < mdd < 0.6                                          # 2008-09: SPY fell about 55 %
    years = (close.index[-1] - close.index[0]).days / 365.25
    cagr = (close.iloc[-1] / close.iloc[0]) ** (1 / years) - 1
    assert M.cagr(equity) == pytest.approx(cagr)
    assert M.calmar_ratio(equity) == pytest.approx(cagr / mdd)

    # monthly returns: month-end closes, first month from the first close; the file's first
    # month (2007-12) holds only its first close, the base of January 2008, not a month of its own
    assert (close.index[0].year, close.index[0].month) == (2007, 12) and close.index[1].year == 2008
    month_end = close.resample("ME").last().iloc[1:]
    expected = month_end.pct_change()
    expected.iloc[0] = month_end.iloc[0] / close.iloc[0] - 1
    table = M.monthly_returns(equity)
    assert 2007 not in table.index
    got = pd.Series([table.loc[d.year, d.month] for d in expected.index], index=expected.index)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-10)
    year_end = close.resample("YE").last().iloc[1:]
    yearly = year_end.pct_change()
    yearly.iloc[0] = year_end.iloc[0] / close.iloc[0] - 1
    np.testing.assert_allclose(table["Year"].to_numpy(), yearly.to_numpy(), rtol=1e-10)
    # compounding the months of a year gives the year
    for y in table.index:
        months = table.loc[y, list(range(1, 13))].dropna()
        assert np.prod(1 + months.to_numpy()) - 1 == pytest.approx(table.loc[y, "Year"])

    # the longest drawdown by a plain loop
    peak_t, peak_v, best = close.index[0], close.iloc[0], 0.0
    for t, v in close.items():
        if v >= peak_v:
            best = max(best, (t - peak_t).days)
            peak_t, peak_v = t, v
    best = max(best, (close.index[-1] - peak_t).days if close.iloc[-1] < peak_v else 0)
    assert M.longest_drawdown(equity).days == best


# ---- SVG -------------------------------------------------------------------------------------

def test_thin_keeps_extremes_order_and_size():
    rng = np.random.default_rng(7)
    y = np.cumsum(rng.normal(size=100_000))
    y[31_337] = 1e6
    y[77_777] = -1e6
    x = np.arange(y.size, dtype=float)
    tx, ty = svg.thin(x, y, 2000)
    assert len(ty) <= 2000
    assert np.all(np.diff(tx) > 0)
    assert ty.max() == 1e6 and ty.min() == -1e6
    assert tx[0] == 0 and tx[-1] == y.size - 1
    # every bucket's min and max survive
    assert set(ty) >= {y[:101].min(), y[:101].max()}        # bucket 0 is 0..100 (999 buckets)
    short_x, short_y = svg.thin(x[:100], y[:100], 2000)
    assert len(short_y) == 100


def test_nice_and_time_ticks():
    assert svg.nice_ticks(0, 100, 5) == [0, 25, 50, 75, 100]
    assert svg.nice_ticks(0.013, 0.072, 5) == pytest.approx([0.02, 0.03, 0.04, 0.05, 0.06, 0.07])
    ticks = svg.time_ticks(pd.Timestamp("2008-01-02", tz="UTC"), pd.Timestamp("2017-12-29", tz="UTC"))
    assert [label for _, label in ticks] == ["2010", "2012", "2014", "2016"] or 2 <= len(ticks) <= 9
    intraday = svg.time_ticks(pd.Timestamp("2024-01-02 14:30", tz="UTC"), pd.Timestamp("2024-01-02 21:00", tz="UTC"))
    assert 2 <= len(intraday) <= 9 and all(":" in label for _, label in intraday)


def test_charts_escape_text_and_have_paths():
    e = series(["2020-01-01", "2020-01-02", "2020-01-03"], [100, 90, 120])
    chart = svg.line_chart(e, title=EVIL)
    assert "<script>" not in chart and "&lt;script&gt;" in chart and "&quot;double&quot;" in chart
    assert re.search(r'<path class="line" d="M[^"]+"', chart)
    bars = pd.DataFrame({"open": [1, 2], "high": [2, 3], "low": [0.5, 1.5], "close": [1.5, 2.5]},
                        index=pd.DatetimeIndex(["2020-01-01", "2020-01-02"], tz="UTC"))
    marks = [svg.TradeMark(pd.Timestamp("2020-01-01", tz="UTC"), 1.5, "entry", EVIL)]
    price = svg.price_chart(bars, marks, title="p")
    assert "<script>" not in price and 'class="mark entry"' in price and 'class="ohlc' in price


def test_one_price_a_bar_is_drawn_as_a_line_not_as_flat_ohlc_ticks():
    """An underlying taken from end-of-day chains has open = high = low = close: a line."""
    flat = pd.DataFrame({c: [2700.0, 2710.0, 2695.0] for c in ("open", "high", "low", "close")},
                        index=pd.DatetimeIndex(["2018-01-02", "2018-01-03", "2018-01-04"], tz="UTC"))
    price = svg.price_chart(flat, [], title="SPX")
    assert 'class="ohlc' not in price and re.search(r'<path class="line" d="M[^"]+"', price)


def test_an_intraday_price_line_is_not_drawn_across_the_night_or_the_weekend():
    """Minute bars of three sessions (Friday, Monday, Tuesday) drawn as a close line: one
    sub-path per session, none joining the last bar of a day to the first of the next; daily
    bars stay one line across their weekends and holidays."""
    days = ["2024-01-05", "2024-01-08", "2024-01-09"]
    index = pd.DatetimeIndex([t for d in days for t in pd.date_range(f"{d} 14:30", periods=390, freq="1min",
                                                                     tz="UTC")])
    close = 100 + np.sin(np.arange(len(index)) / 50.0)
    bars = pd.DataFrame({"open": close, "high": close + 0.1, "low": close - 0.1, "close": close}, index=index)
    price = svg.price_chart(bars, [], title="SPY")
    d = re.search(r'<path class="line" d="([^"]+)"', price).group(1)
    assert d.count("M") == 3
    daily = pd.DataFrame({c: np.linspace(100, 120, 300) for c in ("open", "high", "low", "close")},
                         index=pd.bdate_range("2023-01-02", periods=300, tz="UTC"))
    d = re.search(r'<path class="line" d="([^"]+)"', svg.price_chart(daily, [], title="SPY")).group(1)
    assert d.count("M") == 1
    x, y = svg.break_gaps(np.array([0.0, 60, 120, 180, 63_000, 63_060]), np.arange(6.0))
    assert np.isnan(x[4]) and np.isnan(y[4]) and len(x) == 7


def test_equity_and_drawdown_hold_their_value_across_the_night_rather_than_slope_through_it():
    """Intraday equity over three sessions: at each night the line runs flat from the last close
    to the next session's first bar and moves there (a point at that time with the last value),
    not a slope across the hours with no bars; the first session's day has a label of its own."""
    x, y = svg.hold_gaps(np.array([0.0, 60, 120, 180, 63_000, 63_060]), np.arange(6.0))
    assert x.tolist() == [0, 60, 120, 180, 63_000, 63_000, 63_060] and y.tolist() == [0, 1, 2, 3, 3, 4, 5]
    days = ["2024-01-05", "2024-01-08", "2024-01-09"]
    index = pd.DatetimeIndex([t for d in days for t in pd.date_range(f"{d} 14:30", periods=390, freq="1min",
                                                                     tz="UTC")])
    equity = pd.Series(100_000 + np.arange(len(index), dtype=float), index=index)
    for chart in (svg.line_chart(equity, title="e"), svg.area_chart(equity - equity.cummax() - 1.0, title="d")):
        d = re.search(r'<path class="line" d="([^"]+)"', chart).group(1)
        pts = [tuple(map(float, re.findall(r"[-\d.]+", p))) for p in re.split(r"(?=[ML])", d) if p.strip()]
        flats = [i for i in range(1, len(pts)) if pts[i][0] - pts[i - 1][0] > 50 and pts[i][1] == pts[i - 1][1]]
        assert len(flats) == 2, d[:300]           # the two nights (wider than a minute on the chart), held flat
    ticks = svg.time_ticks(pd.Timestamp("2019-11-04 09:30", tz="America/New_York"),
                           pd.Timestamp("2019-11-15 16:00", tz="America/New_York"))
    assert ticks[0] == (pd.Timestamp("2019-11-04 09:30", tz="America/New_York"), "11-04")
    assert [label for _, label in ticks][1] == "11-06"


# ---- journals for the report -------------------------------------------------------------------

STRATEGY_TEXT = """# yaml-language-server: $schema=../schemas/strategy.schema.json
kind: strategy
name: spy-sma-cross
# docs: https://example.invalid/qtrade and http://example.invalid/old
params: {fast: 20, slow: 50}
entry:
  - when: sma(close, fast) crosses_above sma(close, slow)
exit:
  - {when: sma(close, fast) crosses_below sma(close, slow), reason: "cross <down> & out"}
"""


def _iso(index: pd.DatetimeIndex) -> list[str]:
    return list(np.datetime_as_string(index.tz_convert(None).to_numpy().astype("datetime64[s]"), unit="s") + "Z")


def sma_cross_backtest(bars: pd.DataFrame, cash: float = 100_000.0, fast: int = 20, slow: int = 50,
                       commission: float = 1.0):
    """Long SPY while sma(fast) > sma(slow), all in at the close, whole shares. Returns
    (equity array, trades list of journal rows)."""
    close = bars["Close"].to_numpy(dtype=float)
    high, low = bars["High"].to_numpy(dtype=float), bars["Low"].to_numpy(dtype=float)
    kernel = lambda n: np.convolve(close, np.ones(n) / n, "full")[: close.size]
    f, s = kernel(fast), kernel(slow)
    want = np.zeros(close.size, dtype=bool)
    want[slow - 1:] = f[slow - 1:] > s[slow - 1:]
    ts = _iso(bars.index)
    equity = np.empty(close.size)
    trades, qty, entry_i = [], 0, None
    for i in range(close.size):
        if qty == 0 and want[i]:
            qty = int((cash - commission) // close[i])
            cash -= qty * close[i] + commission
            entry_i = i
        elif qty and (not want[i] or i == close.size - 1):
            cash += qty * close[i] - commission
            p0 = close[entry_i]
            pnl = qty * (close[i] - p0) - 2 * commission
            trades.append(dict(symbol="SPY", side="long", quantity=qty, entry_ts=ts[entry_i], entry_price=p0,
                               exit_ts=ts[i], exit_price=close[i], pnl=pnl, return_pct=pnl / (qty * p0) * 100,
                               bars_held=i - entry_i, mae=qty * (low[entry_i:i + 1].min() - p0),
                               mfe=qty * (high[entry_i:i + 1].max() - p0), commission=2 * commission,
                               entry_rule="entry[0]", exit_rule="exit[0]", exit_reason="cross <down> & out"))
            qty = 0
        equity[i] = cash + qty * close[i]
    return equity, trades


TRADE_COLUMNS = ["run_id", "symbol", "side", "quantity", "multiplier", "entry_ts", "entry_price", "exit_ts", "exit_price",
                 "pnl", "return_pct", "bars_held", "mae", "mfe", "commission", "entry_rule", "exit_rule",
                 "exit_reason", "legs"]


TRADE_DEFAULTS = {"multiplier": 1.0, "commission": 0.0, "entry_rule": "", "exit_rule": "", "exit_reason": ""}


def add_trades(journal: Journal, run_id: str, trades: list[dict]) -> None:
    journal.many("trades", TRADE_COLUMNS,
                 [[run_id] + [t.get(c, TRADE_DEFAULTS.get(c)) for c in TRADE_COLUMNS[1:]] for t in trades])


def add_prices(journal: Journal, run_id: str, symbol: str, bars: pd.DataFrame) -> None:
    journal.many("prices", ["run_id", "symbol", "ts", "open", "high", "low", "close"],
                 zip([run_id] * len(bars), [symbol] * len(bars), _iso(bars.index), bars["Open"], bars["High"],
                     bars["Low"], bars["Close"]))


@pytest.fixture()
def spy_journal(tmp_path, spy):
    """A finished SMA-crossover backtest on SPY (real prices), plus a few QQQ trades."""
    path = tmp_path / "runs.sqlite"
    equity, trades = sma_cross_backtest(spy)
    with Journal(path) as j:
        rid = j.start_run("backtest", "spy-sma-cross", strategy_path="strategies/sma_crossover.yaml",
                          strategy_text=STRATEGY_TEXT, params={"fast": 20, "slow": 50},
                          settings={"cash": 100_000, "commission": 1.0}, symbols=["SPY", "QQQ"], bar="1d",
                          initial_cash=100_000.0, run_id="run-spy")
        add_prices(j, rid, "SPY", spy)
        j.many("equity", ["run_id", "ts", "cash", "equity"],
               zip([rid] * len(equity), _iso(spy.index), equity, equity))
        add_trades(j, rid, trades)
        add_trades(j, rid, [dict(trades[0], symbol="QQQ", pnl=-5.0), dict(trades[1], symbol="QQQ", pnl=7.5)])
        j.order(rid, "qtrade:run-spy:1", _iso(spy.index[:1])[0], "SPY", "buy", 10, "market", status="filled")
        j.decision(rid, _iso(spy.index[:1])[0], "SPY", "entry[0]", "entry", "blocked", "max open positions")
        j.error(rid, _iso(spy.index[:1])[0], "broker", "quote <stale> & late")
        j.finish_run(rid, "finished")
    all_trades = trades + [dict(trades[0], symbol="QQQ", pnl=-5.0), dict(trades[1], symbol="QQQ", pnl=7.5)]
    return path, M.equity_series(_iso(spy.index), equity), all_trades, spy


def _paths(html: str) -> list[str]:
    return re.findall(r'<path class="([^"]+)" d="([^"]*)"', html)


def spy_summary(equity: pd.Series, trades: list[dict], spy: pd.DataFrame) -> dict:
    """What the report should show for `spy_journal`: the curve from the initial cash (a point a
    day before the first bar), buy and hold of SPY from the first bar's open, UTC days (the
    journal names no timezone), exposure over the journal's own span."""
    curve = M.from_starting_cash(equity, 100_000.0, 86_400 * 10**9)
    bench = M.buy_and_hold_curve(curve, spy.index, spy["Close"].to_numpy(), float(spy["Open"].iloc[0]))
    summary = M.summarize(curve, trades, benchmark=bench)
    summary["exposure"] = M.exposure(trades, equity.index[0], equity.index[-1])
    return summary


def test_report_shows_the_metrics_and_charts(spy_journal):
    path, equity, trades, spy = spy_journal
    html = render_report(path)
    summary = spy_summary(equity, trades, spy)
    assert len(trades) > 20
    for key in ("total_return", "cagr", "buy_and_hold", "volatility", "alpha", "best_trade", "worst_trade",
                "average_trade"):
        assert f'data-metric="{key}"' in html
        assert fmt_pct(summary[key]) in html, key
    for key in ("sharpe", "sortino", "calmar", "profit_factor", "expectancy", "average_win", "average_loss", "beta",
                "sqn"):
        assert fmt_num(summary[key]) in html, key
    assert fmt_pct(summary["max_drawdown"]) in html and fmt_pct(summary["average_drawdown"]) in html
    assert fmt_pct(summary["win_rate"], 1) in html and fmt_pct(summary["exposure"], 1) in html
    assert fmt_pct(summary["kelly"], 1) in html
    assert f">{len(trades)}<" in html
    assert summary["buy_and_hold"] == pytest.approx(spy["Close"].iloc[-1] / spy["Open"].iloc[0] - 1)
    assert "from 2,519 daily returns" in html and "annualised with 252 trading days" in html
    # charts: equity line (linear and log) with buy and hold beside it, drawdown area, SPY close
    # line (2,518 bars) with entry and exit marks
    kinds = {}
    for cls, d in _paths(html):
        kinds.setdefault(cls, []).append(d)
    assert all(d.strip() for ds in kinds.values() for d in ds)
    assert {"line", "line benchmark", "area", "mark entry", "mark exit"} <= set(kinds)
    assert len(kinds["mark entry"]) == len(kinds["mark exit"]) == len(trades) - 2   # SPY only
    assert len(kinds["line"]) == 4 and len(kinds["line benchmark"]) == 2
    assert "Price: SPY" in html                                   # the most traded symbol by default
    # monthly table: 2008-01 cell coloured, year rows 2007..2017 (the run's first bar is 2007-12-31)
    assert html.count('<td class="l year">') == 11
    assert "rgba(22,163,74" in html and "rgba(220,38,38" in html
    # per-symbol breakdown and the strategy text
    assert re.search(r"<td class=\"l\">QQQ</td><td>2</td><td>50.0%</td>", html)
    assert "spy-sma-cross" in html and "sma(close, fast) crosses_above" in html
    assert "cross &lt;down&gt; &amp; out" in html and "quote &lt;stale&gt; &amp; late" in html
    assert "blocked 1" in html and "filled 1" in html
    assert not re.findall(r"\b(nan|NaN|inf|Infinity|None|null)\b", visible_text(html))


def test_report_is_self_contained(spy_journal):
    path, *_ = spy_journal
    html = render_report(path)
    strategy = re.search(r'<pre class="strategy-text">(.*?)</pre>', html, re.S)
    assert "https://example.invalid/qtrade" in strategy.group(1)
    rest = html[:strategy.start()] + html[strategy.end():]
    assert "http://" not in rest and "https://" not in rest
    for needle in ("src=", "href=", "<link", "@import", "url(", "xlink", "<iframe", "<img"):
        assert needle not in rest.lower(), needle
    assert html.count("<script") == 1 and "<svg" in html


def test_everything_from_the_user_is_escaped(tmp_path):
    path = tmp_path / "evil.sqlite"
    with Journal(path) as j:
        rid = j.start_run("backtest", EVIL, strategy_path=EVIL, strategy_text=f"name: {EVIL}\n",
                          params={EVIL: EVIL, "n": 3}, settings={"note": EVIL}, symbols=[EVIL], bar=EVIL)
        j.many("equity", ["run_id", "ts", "cash", "equity"],
               [(rid, "2024-01-02T00:00:00Z", 100, 100), (rid, "2024-01-03T00:00:00Z", 100, 101)])
        j.many("prices", ["run_id", "symbol", "ts", "open", "high", "low", "close"],
               [(rid, EVIL, "2024-01-02T00:00:00Z", 1, 2, 0.5, 1.5), (rid, EVIL, "2024-01-03T00:00:00Z", 1.5, 2, 1, 1.8)])
        add_trades(j, rid, [dict(symbol=EVIL, side="long", quantity=1, entry_ts="2024-01-02T00:00:00Z",
                                 entry_price=1.5, exit_ts="2024-01-03T00:00:00Z", exit_price=1.8, pnl=0.3,
                                 return_pct=20.0, bars_held=1, commission=0.0, entry_rule=EVIL, exit_rule=EVIL,
                                 exit_reason=EVIL, legs=json.dumps([{"name": EVIL, "action": "sell", "price": 1}]))])
        j.error(rid, "2024-01-02T00:00:00Z", EVIL, EVIL)
        j.finish_run(rid, "finished")
    html = render_report(path)
    assert "<script>alert(1)</script>" not in html
    assert "alert(1)</script>" not in html
    assert html.count("<script") == 1                       # only the table sorter
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert '"double"' not in html and "'single'" not in html
    assert "&#34;double&#34;" in html and "&#39;single&#39;" in html
    # inside attributes too (svg titles / aria-label)
    for attr in re.findall(r'aria-label="([^"]*)"', html):
        assert "<" not in attr and '"' not in attr


def test_option_trades_show_legs_and_credit(tmp_path):
    path = tmp_path / "ic.sqlite"
    legs = [
        {"name": "short_put", "action": "sell", "right": "P", "strike": 440, "expiry": "2024-06-21", "ratio": 1, "price": 1.20},
        {"name": "long_put", "action": "buy", "right": "P", "strike": 438, "expiry": "2024-06-21", "ratio": 1, "price": 0.70},
        {"name": "short_call", "action": "sell", "right": "C", "strike": 460, "expiry": "2024-06-21", "ratio": 1, "price": 1.00},
        {"name": "long_call", "action": "buy", "right": "C", "strike": 462, "expiry": "2024-06-21", "ratio": 1, "price": 0.55},
    ]
    with Journal(path) as j:
        rid = j.start_run("backtest", "xsp-ic", symbols=["XSP"], bar="1m", initial_cash=10_000)
        ts = pd.date_range("2024-06-21 13:30", periods=391, freq="1min", tz="UTC")
        j.many("equity", ["run_id", "ts", "cash", "equity"],
               [(rid, t, 10_000, 10_000 + i * 0.2) for i, t in enumerate(_iso(ts))])
        add_trades(j, rid, [
            dict(symbol="XSP", side="short", quantity=1, multiplier=100, entry_ts="2024-06-21T14:00:00Z",
                 entry_price=0.95, exit_ts="2024-06-21T19:50:00Z", exit_price=0.10, pnl=81.4, return_pct=40.7,
                 bars_held=350, commission=3.6, entry_rule="entry[0]", exit_rule="exit[0]",
                 exit_reason="take profit", legs=json.dumps(legs)),
            dict(symbol="XSP", side="short", quantity=1, multiplier=100, entry_ts="2024-06-21T15:00:00Z",
                 entry_price=1.00, exit_ts="2024-06-21T16:00:00Z", exit_price=2.0, pnl=-100, return_pct=-50,
                 bars_held=60, commission=3.6, legs=json.dumps({"legs": legs[:2], "credit": 1.00})),
        ])
    html = render_report(path)
    assert "short_put: SELL 1 PUT 440 2024-06-21 @ 1.20" in html
    assert "long_call: BUY 1 CALL 462 2024-06-21 @ 0.55" in html
    assert ">0.95<" in html                                   # 1.20 - 0.70 + 1.00 - 0.55
    assert ">1.00<" in html
    assert "Legs" in html and "Credit" in html
    assert "No price data" not in html and "no price data for this symbol" in html  # no prices table rows
    assert option_legs(None) is None
    assert option_legs("not json")["legs"] == ["not json"]
    assert option_legs(json.dumps({"legs": {"a": {"action": "buy", "price": 2}}}))["credit"] == -2


def test_run_and_symbol_selection(spy_journal):
    path, _, _, spy = spy_journal
    with Journal(path) as j:
        rid = j.start_run("dry-run", "second-run", symbols=["SPY"], run_id="run-second")
        add_prices(j, rid, "SPY", spy.iloc[:100])
    newest = render_report(path)
    assert "second-run" in newest and "No trades in this run." in newest
    assert 'class="ohlc' in newest                            # 100 bars: OHLC bars, not a line
    first = render_report(path, run_id="run-spy", symbol="QQQ")
    assert "spy-sma-cross" in first and "Price: QQQ" in first
    assert "no price data for this symbol" not in first      # QQQ has trade marks to draw
    assert len(re.findall(r'class="mark entry"', first)) == 2


def test_write_report(spy_journal, tmp_path):
    path, *_ = spy_journal
    out = write_report(path, tmp_path / "report.html", run_id="run-spy")
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_errors_are_journal_errors(tmp_path):
    with pytest.raises(JournalError, match="no such journal file"):
        render_report(tmp_path / "missing.sqlite")
    with pytest.raises(JournalError, match="not a file"):
        render_report(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a database\n" * 100)
    with pytest.raises(JournalError, match="not a journal"):
        render_report(text)
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE things (x)")
    con.commit()
    con.close()
    with pytest.raises(JournalError, match="not a qtrade journal"):
        render_report(other)
    empty = tmp_path / "empty.sqlite"
    Journal(empty).close()
    with pytest.raises(JournalError, match="no runs yet"):
        render_report(empty)
    with Journal(empty) as j:
        j.start_run("backtest", "x", run_id="r1")
    with pytest.raises(JournalError, match="no run 'nope'"):
        render_report(empty, run_id="nope")


def test_empty_run_renders(tmp_path):
    path = tmp_path / "bare.sqlite"
    with Journal(path) as j:
        j.start_run("live", "bare")
    html = render_report(path)
    assert "No trades in this run." in html and "no data" in html and "Not enough equity points" in html
    assert not re.findall(r"\b(nan|NaN|inf|Infinity|None|null)\b", visible_text(html))
    assert "Live trading report" in html and "Backtest report" not in html      # named for the run's mode


@pytest.mark.parametrize("mode, title", [("backtest", "Backtest report"), ("paper", "Paper trading report"),
                                         ("dry-run", "Dry run report")])
def test_the_report_is_named_for_the_runs_mode(tmp_path, mode, title):
    path = tmp_path / "j.sqlite"
    with Journal(path) as j:
        j.start_run(mode, "bare")
    assert f'<p class="sub">{title} · run' in render_report(path)


def visible_text(html: str) -> str:
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"<[^>]+>", " ", html)


def test_large_equity_stays_light(tmp_path, spy):
    n = 300_000  # large enough that thinning must happen; the 1M-point timing is in bench/
    rng = np.random.default_rng(1)
    ts = pd.date_range("2015-01-02 14:30", periods=n, freq="1min", tz="UTC")
    equity = 100_000 * np.exp(np.cumsum(rng.normal(0.0000005, 0.0004, n)))
    path = tmp_path / "big.sqlite"
    iso = _iso(ts)
    with Journal(path) as j:
        rid = j.start_run("backtest", "big", symbols=["SPY"], bar="1m", initial_cash=100_000)
        j.many("equity", ["run_id", "ts", "cash", "equity"], zip([rid] * n, iso, equity, equity))
        j.many("prices", ["run_id", "symbol", "ts", "open", "high", "low", "close"],
               zip([rid] * n, ["SPY"] * n, iso, equity / 500, equity / 499, equity / 501, equity / 500))
        step = 2000
        add_trades(j, rid, [dict(symbol="SPY", side="long", quantity=10, entry_ts=iso[i], entry_price=equity[i] / 500,
                                 exit_ts=iso[i + 500], exit_price=equity[i + 500] / 500,
                                 pnl=10 * (equity[i + 500] - equity[i]) / 500, return_pct=0.0, bars_held=500,
                                 commission=1.0) for i in range(0, n - 600, step)])
    t0 = time.perf_counter()
    html = render_report(path)
    elapsed = time.perf_counter() - t0
    size = len(html.encode("utf-8"))
    print(f"\n{n:,}-point equity + {n:,} bars + {n // step} trades: "
          f"render {elapsed:.2f} s, HTML {size / 1e6:.2f} MB")
    assert size < 1.5e6
    for cls, d in _paths(html):
        if cls in ("line", "area"):
            assert 0 < d.count("L") <= svg.MAX_POINTS + 2
    days = len(set(ts.date))
    assert f"from {days:,} daily returns (the intraday curve resampled to daily closes in UTC)" in html


def test_unordered_rows_and_missing_closes(tmp_path):
    """Rows written out of time order are sorted; a bar without a close is skipped, not drawn as 0."""
    path = tmp_path / "gaps.sqlite"
    ts = pd.date_range("2024-03-01 14:30", periods=400, freq="5min", tz="UTC")
    iso = _iso(ts)
    close = 50 + np.sin(np.arange(400) / 20)
    with Journal(path) as j:
        rid = j.start_run("paper", "gaps", symbols=["ES"], bar="5m")
        order = [int(i) for i in np.random.default_rng(5).permutation(400)]
        j.many("equity", ["run_id", "ts", "cash", "equity"], [(rid, iso[i], 0, 1000 + i) for i in order])
        j.many("prices", ["run_id", "symbol", "ts", "open", "high", "low", "close"],
               [(rid, "ES", iso[i], None, None, None, None if i % 50 == 7 else close[i]) for i in order])
    html = render_report(path)
    assert fmt_pct(399 / 1000) in html                      # first to last by time, not by row
    assert "from 2 daily returns (the intraday curve resampled to daily closes in UTC)" in html   # 5-minute bars
    d = dict((cls, d) for cls, d in _paths(html))["line"]
    assert d.count("M") == 1                                # one unbroken, ordered line
    ys = [float(p.split()[1]) for p in re.findall(r"[ML]([\d.]+ [\d.]+)", d)]
    assert max(ys) < 320 and min(ys) > 0                    # nothing drawn at a zero close
    assert re.search(r'class="xlabel"[^>]*>[-\d ]*\d\d:\d\d<', html)   # intraday ticks show times


def test_the_runs_own_summary_wins_for_equity_figures(tmp_path):
    """A thinned journal curve cannot give the full curve's Sharpe; the writer's summary can."""
    path = tmp_path / "summary.sqlite"
    with Journal(path) as j:
        rid = j.start_run("backtest", "s", symbols=["SPY"], bar="1d")
        j.many("equity", ["run_id", "ts", "cash", "equity"],
               [(rid, "2024-01-02T05:00:00Z", 0, 100), (rid, "2024-01-03T05:00:00Z", 0, 90),
                (rid, "2024-01-04T05:00:00Z", 0, 120)])
        j.finish_run(rid, "finished", {"sharpe": 9.87, "exposure": 0.4321, "open_positions": 2,
                                       "max_drawdown_start": "2024-01-02T05:00:00+00:00", "returns_basis": "daily"})
    html = render_report(path)
    assert ">9.87<" in html and ">43.2%<" in html and "Open at the end" in html
    assert "the run's own figures" in html
    assert "2024-01-02 05:00" not in html                   # daily bars: dates only
    assert fmt_num(M.sortino_ratio(series(["2024-01-02", "2024-01-03", "2024-01-04"], [100, 90, 120]))) in html
    assert ">9.87<" not in render_report(path, risk_free=0.02)   # a different rate: recomputed
    # a summary stored before the daily-returns convention: its Sharpe is not shown, but recomputed
    with Journal(path) as j:
        j.db.execute("UPDATE runs SET summary=? WHERE run_id=?", (json.dumps({"sharpe": 9.87, "exposure": 0.4321}), rid))
    html = render_report(path)
    assert ">9.87<" not in html and ">43.2%<" in html
    assert fmt_num(M.sharpe_ratio(series(["2024-01-02", "2024-01-03", "2024-01-04"], [100, 90, 120]))) in html


# ---- the trades table, built in Python -------------------------------------------------------

# The loop the report template had for the trades table (before the rows were built in Python):
# the reference `trades_rows` must write byte for byte, escaping included.
REFERENCE_ROWS = """{% macro signed(v, text) %}<span class="{{ 'pos' if v is not none and v > 0 else ('neg' if v is not none and v < 0 else '') }}">{{ text }}</span>{% endmacro %}
    {% for t in trades %}
      <tr><td data-v="{{ loop.index }}">{{ loop.index }}</td><td class="l">{{ t.symbol }}</td><td class="l">{{ t.side }}</td><td data-v="{{ t.quantity }}">{{ t.quantity | qty }}</td>
        <td class="l t">{{ t.entry_ts | ts(daily) }}</td><td data-v="{{ t.entry_price }}">{{ t.entry_price | num }}</td>
        <td class="l t">{{ t.exit_ts | ts(daily) }}</td><td data-v="{{ t.exit_price }}">{{ t.exit_price | num }}</td>
        <td data-v="{{ t.bars_held }}">{{ t.bars_held }}</td><td data-v="{{ t.pnl }}">{{ signed(t.pnl, t.pnl | num) }}</td>
        <td data-v="{{ t.return_pct }}">{{ signed(t.return_pct, (t.return_pct / 100) | pct) }}</td>
        <td data-v="{{ t.mae if t.mae is not none else '' }}">{{ t.mae | num }}</td><td data-v="{{ t.mfe if t.mfe is not none else '' }}">{{ t.mfe | num }}</td>
        <td data-v="{{ t.commission }}">{{ t.commission | num }}</td>
        <td class="l rule">{{ t.entry_rule }}</td><td class="l rule">{{ t.exit_reason or t.exit_rule }}</td>
        {% if has_legs %}{% set lv = t.legs_view %}<td class="legs">{% if lv %}{% for leg in lv.legs %}{{ leg }}{% if not loop.last %}<br>{% endif %}{% endfor %}{% endif %}</td>
        <td data-v="{{ lv.credit if lv and lv.credit is not none else '' }}">{{ lv.credit | num if lv else "" }}</td>{% endif %}</tr>
    {% endfor %}
"""


def _reference_rows(rows: list[tuple], daily: bool, tz: str = "UTC") -> str:
    import jinja2
    from engine.report import html as H
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(qty=H._fmt_qty, pct=H.fmt_pct, num=H.fmt_num, ts=H._ts_filter)   # ts: one time at a time
    trades = [dict(zip(H.TRADE_COLUMNS, r), legs_view=H.option_legs(r[-1])) for r in rows]
    out = env.from_string(REFERENCE_ROWS).render(trades=trades, daily=daily, tz=tz,
                                                 has_legs=any(t["legs_view"] for t in trades))
    return out.rstrip("\n")


def _row(**kw) -> tuple:
    from engine.report.html import TRADE_COLUMNS
    base = dict(id=1, symbol="SPY", side="long", quantity=100.0, entry_ts="2024-01-02T14:30:00Z", entry_price=470.5,
                exit_ts="2024-01-05T21:00:00Z", exit_price=468.25, bars_held=3, pnl=-226.0, return_pct=-0.48,
                mae=-310.0, mfe=55.5, commission=1.0, entry_rule="entry[0]", exit_rule="exit[0]", exit_reason="",
                legs=None)
    base.update(kw)
    return tuple(base[c] for c in TRADE_COLUMNS)


def test_trades_rows_write_what_the_template_loop_wrote():
    from engine.report.html import option_legs, trades_rows
    legs = json.dumps([{"name": EVIL, "action": "sell", "right": "P", "strike": 440, "price": 1.2},
                       {"name": "long", "action": "buy", "right": "C", "strike": 460.5, "ratio": 2, "price": 0.55}])
    rows = [
        _row(),
        _row(id=2, symbol=EVIL, side=EVIL, quantity=1234567.0, entry_price=12345.678, exit_price=0.004, pnl=1e6 / 3,
             return_pct=12.5, mae=None, mfe=None, commission=0.0, entry_rule=EVIL, exit_reason=EVIL,
             entry_ts="2024-01-02T00:00:00Z", exit_ts="2024-01-02T14:30:05Z"),
        _row(id=3, pnl=0.0, return_pct=0.0, exit_reason="", exit_rule="", entry_rule="",
             entry_ts="2024-01-02 14:30:00+00:00", exit_ts=f"<b>{EVIL}</b>"),        # not the journal's usual form
        _row(id=4, quantity="7 <lots>", pnl=float("nan"), mae=float("inf"), bars_held=None, legs=legs),
        _row(id=5, legs="not json & <b>"),
        _row(id=6, legs=json.dumps({"legs": [], "credit": 2.5}), pnl=-0.004, return_pct=-1e-9),
    ]
    rows.append(_row(id=7, entry_ts="2024-07-01T13:30:00Z", exit_ts="2024-12-31T23:59:59Z"))   # summer, a new year
    for chosen in (rows, rows[:3]):                       # with and without the Legs and Credit cells
        for daily in (False, True):
            for tz in ("UTC", "America/New_York", "Asia/Tokyo"):
                built = trades_rows(chosen, [option_legs(r[-1]) for r in chosen], daily, tz)
                assert str(built) == _reference_rows(chosen, daily, tz)
    ny = str(trades_rows(rows, [option_legs(r[-1]) for r in rows], False, "America/New_York"))
    assert '<time datetime="2024-01-02T09:30:00-05:00"><span class="d">2024-01-02</span> 09:30</time>' in ny
    assert '<time datetime="2024-07-01T09:30:00-04:00"><span class="d">2024-07-01</span> 09:30</time>' in ny
    assert '<span class="d">2024-12-31</span> 18:59:59</time>' in ny
    assert '<td data-v="7">7</td>' in ny and '<td data-v="1">1</td>' in ny       # numbered 1..N
    built = str(trades_rows(rows, [option_legs(r[-1]) for r in rows], False))
    assert "<script>" not in built and "<b>" not in built and "<lots>" not in built
    assert built.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 5       # symbol, side, both rules, a leg
    assert "&lt;b&gt;&lt;script&gt;" in built and "7 &lt;lots&gt;" in built  # a time, a quantity
    assert "&#34;double&#34;" in built and "&#39;single&#39;" in built
    assert '<td data-v="">—</td>' in built                                  # no MAE: empty sort key, a dash
    assert '>1234567<' in built and '>12,345.68<' in built and '<span class="pos">333,333.33</span>' in built
    assert str(trades_rows([], [], False)) == ""


def test_report_with_several_symbols_sums_commission_per_symbol(spy_journal):
    path, _, trades, _ = spy_journal
    html = render_report(path)
    spy = [t for t in trades if t["symbol"] == "SPY"]
    assert re.search(rf'<td class="l">SPY</td><td>{len(spy)}</td>.*?<td>{fmt_num(2.0 * len(spy))}</td>', html)
    assert re.search(r'<td class="l">QQQ</td><td>2</td>.*?<td>4.00</td>', html)
    total = re.search(r'data-metric="commission"><div class="k">Commissions</div><div class="v">([^<]*)<', html)
    assert total.group(1) == fmt_num(2.0 * len(trades))
    assert html.count('<tr><td data-v=') == len(trades)                   # every trade in the table


def test_report_without_a_second_connection(spy_journal, monkeypatch):
    """The aggregates read in threads fall back to the report's own connection."""
    from engine.report import html as H
    path, *_ = spy_journal
    expected = render_report(path)

    def failing(path, read):
        def result():
            raise sqlite3.OperationalError("unable to open database file")
        return result
    monkeypatch.setattr(H, "_in_background", failing)
    assert render_report(path) == expected
    import gc
    assert gc.isenabled()                                 # the collector is back on after a report


def test_compiled_template_cache_survives_damage(tmp_path):
    import jinja2
    from engine.report.html import _BytecodeCache
    (tmp_path / "t.j2").write_text("{{ x }} & {{ y | upper }}")
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()

    def render() -> str:
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(tmp_path)), autoescape=True,
                                 bytecode_cache=_BytecodeCache(str(cache_dir)))
        return env.get_template("t.j2").render(x="<a>", y="b")
    assert render() == "&lt;a&gt; & B"
    (cached,) = cache_dir.iterdir()                       # compiled once, kept
    assert render() == "&lt;a&gt; & B"                    # loaded from the cache
    cached.write_bytes(b"not a jinja cache at all")
    assert render() == "&lt;a&gt; & B"                    # damaged: compiled again
    cached.write_bytes(cached.read_bytes()[:3])
    assert render() == "&lt;a&gt; & B"


def test_a_full_stored_summary_is_not_computed_again(spy_journal, tmp_path, monkeypatch):
    """A backtest stores every equity figure from its full curve: the report shows those and does
    not compute the journal curve's own only to replace them."""
    from engine.report import html as H
    path, equity, trades, spy = spy_journal
    stored = M.summarize(equity, trades, closes=spy["Close"].to_numpy())
    stored = {k: (v.isoformat() if isinstance(v, pd.Timestamp) else v) for k, v in stored.items()}
    stored["sharpe"], stored["open_positions"] = 1.2345, 0
    with Journal(path) as j:
        j.db.execute("UPDATE runs SET summary=? WHERE run_id='run-spy'", (json.dumps(stored),))
    expected = render_report(path)
    assert ">1.23<" in expected and "the run's own figures" in expected

    def not_needed(*args, **kwargs):
        raise AssertionError("equity figures computed although the run stored them")
    monkeypatch.setattr(H.metrics, "equity_summary", not_needed)
    assert render_report(path) == expected
    with pytest.raises(AssertionError, match="although the run stored"):
        render_report(path, risk_free=0.02)                 # another rate: Sharpe and Sortino recomputed


@pytest.mark.parametrize("start", [None, "2013-01-01"])
def test_buy_and_hold_is_the_backtests_own_figure(tmp_path, start):
    # the journal's prices start with the warm-up bars before --from (and are thinned on long
    # runs); the report's buy and hold is the one the terminal summary showed, from the start date
    from engine.report.run_summary import summarize_result
    from engine.runtime import backtest as bt

    root = Path(__file__).resolve().parents[1]
    result = bt.run(bt.prepare(root / "strategies" / "sma_crossover.yaml", start=start))
    summary = summarize_result(result)
    path = tmp_path / "j.sqlite"
    with Journal(path) as j:
        bt.write_journal(result, j)
        j.finish_run(result.run_id, "finished", summary)
    html = render_report(path)
    card = re.search(r'data-metric="buy_and_hold"><div class="k">Buy &amp; hold SPY</div><div class="v">'
                     r'(?:<span[^>]*>)?([^<]*)<', html)
    assert card and card.group(1).strip() == fmt_pct(summary["buy_and_hold"])
    row = re.search(r'<td class="l">SPY</td>(?:<td>[^<]*</td>|<td><span[^>]*>[^<]*</span></td>){6}<td>([^<]*)</td>', html)
    assert row and row.group(1) == fmt_pct(summary["buy_and_hold"], 1)


@pytest.mark.parametrize("start", [None, "2013-01-02"])
def test_backtest_buy_and_hold_spans_the_run_and_alpha_beta_match_numpy(start):
    """The backtest's buy and hold buys SPY at the open of the run's first bar (after the warm-up
    bars before --from) and holds to the last close; alpha and beta are the least-squares line of
    the run's daily returns on buy and hold's, from the file's own prices."""
    from engine.report.run_summary import summarize_result
    from engine.runtime import backtest as bt

    root = Path(__file__).resolve().parents[1]
    result = bt.run(bt.prepare(root / "strategies" / "sma_crossover.yaml", start=start))
    summary = summarize_result(result)
    spy = pd.read_csv(root / "strategies" / "data" / "SPY.csv", parse_dates=["Date"]).set_index("Date")
    run = spy.loc[start or spy.index[0]:]
    assert summary["start"].startswith(str(run.index[0].date()))
    assert summary["warmup_bars"] == (len(spy) - len(run))
    assert summary["buy_and_hold_start_price"] == run["Open"].iloc[0]
    assert summary["buy_and_hold"] == pytest.approx(run["Close"].iloc[-1] / run["Open"].iloc[0] - 1, rel=1e-12)
    cash = result.runner.settings.cash
    equity = np.concatenate(([cash], result.equity))             # from the starting cash
    hold = np.concatenate(([cash], cash * run["Close"].to_numpy() / run["Open"].iloc[0]))
    r, b = np.diff(equity) / equity[:-1], np.diff(hold) / hold[:-1]
    slope, intercept = np.polyfit(b, r, 1)
    assert summary["beta"] == pytest.approx(slope, rel=1e-9)
    assert summary["alpha"] == pytest.approx(252 * intercept, rel=1e-9)
    assert summary["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * np.sqrt(252), rel=1e-12)
    assert summary["return_periods"] == len(run) and summary["timezone"] == "America/New_York"


# ---- the report's new parts, read back from the HTML ---------------------------------------------

class Page:
    """The parts of a report the tests read back, parsed with the standard library's HTML parser:
    every table's rows of cell texts (by the table's class), every element's attributes by tag,
    the `<time>` elements (datetime, text) and the SVG paths by class."""

    def __init__(self, html: str):
        from html.parser import HTMLParser

        page = self
        self.tables: dict[str, list[list[str]]] = {}
        self.elements: dict[str, list[dict]] = {}
        self.times: list[tuple[str, str]] = []

        class Parser(HTMLParser):
            def __init__(self):
                super().__init__(convert_charrefs=True)
                self.table = None
                self.row = None
                self.cell = None
                self.time = None

            def handle_starttag(self, tag, attrs):
                a = dict(attrs)
                page.elements.setdefault(tag, []).append(a)
                if tag == "table":
                    self.table = page.tables.setdefault(a.get("class", ""), [])
                elif tag == "tr" and self.table is not None:
                    self.row = []
                    self.table.append(self.row)
                elif tag in ("td", "th") and self.row is not None:
                    self.cell = []
                elif tag == "time":
                    self.time = [a.get("datetime"), []]

            def handle_endtag(self, tag):
                if tag == "table":
                    self.table = None
                elif tag in ("td", "th") and self.cell is not None and self.row is not None:
                    self.row.append("".join(self.cell).strip())
                    self.cell = None
                elif tag == "time" and self.time is not None:
                    page.times.append((self.time[0], "".join(self.time[1])))
                    self.time = None

            def handle_data(self, data):
                if self.cell is not None:
                    self.cell.append(data)
                if self.time is not None:
                    self.time[1].append(data)

        Parser().feed(html)

    def rows(self, table_class: str) -> list[list[str]]:
        """The table's body rows (the header row left out)."""
        return self.tables[table_class][1:]


def _number(text: str) -> float:
    return float(text.replace(",", "").replace("%", ""))


def two_runs_journal(path: Path, tz: str = "America/New_York") -> tuple[str, list[dict]]:
    """A journal with two runs, so the second run's trades have journal ids 6.. (not 1..): five
    minute-bar days of a stock in winter and summer, trades with three exit reasons."""
    days = ["2024-01-02", "2024-01-03", "2024-07-01", "2024-07-02", "2024-07-03"]
    stamps = []
    for d in days:                                             # 09:30-16:00 New York, as UTC
        stamps += list(pd.date_range(f"{d} 09:30", f"{d} 15:59", freq="1min", tz=tz).tz_convert("UTC"))
    index = pd.DatetimeIndex(stamps)
    close = 100 + np.cumsum(np.random.default_rng(4).normal(0, 0.05, index.size))
    bars = pd.DataFrame({"Open": close, "High": close + 0.05, "Low": close - 0.05, "Close": close}, index=index)
    iso = _iso(index)
    spec = [(12, 100, "target"), (400, 480, "stop"), (800, 830, "target"), (1200, 1500, "end of day"),
            (1600, 1700, "stop"), (1800, 1900, "target")]
    trades = []
    for a, b, why in spec:
        pnl = 10 * (close[b] - close[a]) - 2.0
        trades.append(dict(symbol="ABC", side="long", quantity=10, entry_ts=iso[a], entry_price=close[a], exit_ts=iso[b],
                           exit_price=close[b], pnl=pnl, return_pct=pnl / (10 * close[a]) * 100, bars_held=b - a,
                           commission=2.0, entry_rule="entry[0]", exit_rule="exit[0]", exit_reason=why))
    equity = 10_000 + np.cumsum(np.random.default_rng(5).normal(0.1, 1.0, index.size))
    with Journal(path) as j:
        first = j.start_run("backtest", "first", symbols=["ABC"], bar="1m", initial_cash=10_000.0, run_id="first")
        add_trades(j, first, trades[:5])
        rid = j.start_run("backtest", "second", symbols=["ABC"], bar="1m", initial_cash=10_000.0, run_id="second",
                          settings={"timezone": tz})
        add_prices(j, rid, "ABC", bars)
        j.many("equity", ["run_id", "ts", "cash", "equity"], zip([rid] * len(iso), iso, equity, equity))
        add_trades(j, rid, trades)
        j.finish_run(rid, "finished")
    return rid, trades


def test_trades_are_numbered_in_the_run_not_by_journal_id(tmp_path):
    path = tmp_path / "two.sqlite"
    _, trades = two_runs_journal(path)
    with sqlite3.connect(path) as con:
        ids = [r[0] for r in con.execute("SELECT id FROM trades WHERE run_id='second' ORDER BY entry_ts, id")]
    assert ids == [6, 7, 8, 9, 10, 11]
    html = render_report(path)
    rows = Page(html).rows("trades")
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    # the chart's marks name the trades by the same numbers
    titles = re.findall(r'<path class="mark (?:entry|exit)"[^>]*><title>#(\d+) ', html)
    assert sorted(set(int(t) for t in titles)) == [1, 2, 3, 4, 5, 6]


def test_times_are_in_the_strategys_timezone_with_their_offsets(tmp_path):
    path = tmp_path / "two.sqlite"
    _, trades = two_runs_journal(path)
    page = Page(render_report(path))
    rows = page.rows("trades")
    for row, t in zip(rows, trades):
        local = pd.Timestamp(t["entry_ts"]).tz_convert("America/New_York")
        assert row[4] == local.strftime("%Y-%m-%d %H:%M")                # the cell shows the New York clock
    stamps = dict(page.times)
    winter = pd.Timestamp(trades[0]["entry_ts"]).tz_convert("America/New_York")
    summer = pd.Timestamp(trades[3]["entry_ts"]).tz_convert("America/New_York")
    assert f"{winter:%Y-%m-%dT%H:%M:%S}-05:00" in stamps and f"{summer:%Y-%m-%dT%H:%M:%S}-04:00" in stamps
    for stamp, text in page.times:                                       # each datetime is the text's instant
        t = pd.Timestamp(stamp)
        assert t.utcoffset() in (pd.Timedelta(hours=-5), pd.Timedelta(hours=-4))
        assert text.replace("\xa0", " ")[:10] == stamp[:10]
    html = render_report(path)
    assert "America/New_York (UTC-05:00 / -04:00)" in html
    # the charts' time axes too: the first day's ticks are New York hours, not UTC's
    labels = re.findall(r'class="xlabel"[^>]*>([^<]*)<', html)
    assert labels and not any(label.endswith(("14:30", "20:00")) for label in labels)


def test_histogram_bars_add_up_to_the_trades(spy_journal):
    path, equity, trades, spy = spy_journal
    page = Page(render_report(path))
    bins = [a for a in page.elements["rect"] if a.get("class", "").startswith("bin ")]
    counts = [int(b["data-count"]) for b in bins]
    assert sum(counts) == len(trades) and len(bins) >= 3
    pnl = np.array([t["pnl"] for t in trades])
    for b in bins:                                                      # each bar counts its own range
        lo, hi = float(b["data-lo"]), float(b["data-hi"])
        inside = np.count_nonzero((pnl >= lo) & ((pnl < hi) | ((pnl == hi) & (hi == max(float(x["data-hi"]) for x in bins)))))
        assert inside == int(b["data-count"])
        assert b["class"] == ("bin loss" if hi <= 0 else "bin win")
    edges = sorted({float(b["data-lo"]) for b in bins} | {float(b["data-hi"]) for b in bins})
    assert 0.0 in edges                                                  # zero is a bin edge
    assert svg.histogram_edges(np.array([-1290.2])).tolist() == [-1500.0, -1000.0, -500.0, 0.0]
    one = svg.histogram([5.0], title="t")
    assert one.count('class="bin win"') == 1 and 'data-count="1"' in one


def test_exit_reason_table_adds_up_to_the_net_pnl(tmp_path):
    path = tmp_path / "two.sqlite"
    _, trades = two_runs_journal(path)
    html = render_report(path)
    rows = Page(html).rows("exit-reasons")
    body, total = rows[:-1], rows[-1]
    assert total[0] == "All trades" and int(total[1]) == len(trades)
    by = {}
    for t in trades:
        by.setdefault(t["exit_reason"], []).append(t["pnl"])
    assert {r[0]: int(r[1]) for r in body} == {k: len(v) for k, v in by.items()}
    for r in body:
        assert _number(r[4]) == pytest.approx(round(sum(by[r[0]]), 2), abs=0.006)
        assert _number(r[5]) == pytest.approx(round(sum(by[r[0]]) / len(by[r[0]]), 2), abs=0.006)
    assert sum(_number(r[4]) for r in body) == pytest.approx(_number(total[4]), abs=0.01 * len(body))
    net = re.search(r'data-metric="net_pnl">.*?<span[^>]*>([^<]*)<', html).group(1)
    assert _number(total[4]) == _number(net) == pytest.approx(sum(t["pnl"] for t in trades), abs=0.006)
    assert [r[0] for r in body][0] == "target"                          # the most trades first


def test_equity_chart_has_buy_and_hold_from_the_same_cash_and_a_log_switch(spy_journal):
    from engine.report import html as H
    path, equity, trades, spy = spy_journal
    data = H.load_run(path)
    curve = H._curve(data)
    bench = H._benchmark(data, curve)
    assert curve.iloc[0] == bench.iloc[0] == 100_000.0                 # both start at the starting cash
    assert curve.index[0] == equity.index[0] - pd.Timedelta(days=1)
    assert bench.iloc[-1] == pytest.approx(100_000 * spy["Close"].iloc[-1] / spy["Open"].iloc[0])
    html = render_report(path)
    # both lines start at the same point of the chart (the same cash at the same time)
    for chart in re.findall(r'<svg class="chart equity".*?</svg>', html, re.S):
        strategy = re.search(r'<path class="line" d="M([\d.]+) ([\d.]+)', chart).groups()
        held = re.search(r'<path class="line benchmark" d="M([\d.]+) ([\d.]+)', chart).groups()
        assert strategy == held
        assert "Buy &amp; hold SPY" in chart and "Strategy" in chart
    linear, log = re.findall(r'<svg class="chart equity".*?</svg>', html, re.S)
    assert "(log scale)" in log and "(log scale)" not in linear
    # the log chart's tick labels sit at log10 of their values: equal ratios, equal distances
    ticks = [(float(y), label) for y, label in re.findall(r'class="ylabel" x="[\d.]+" y="([\d.]+)"[^>]*>([^<]+)<', log)]
    values = [float(label.rstrip("k")) * (1000 if label.endswith("k") else 1) for _, label in ticks]
    ys = [y for y, _ in ticks]
    slope = (ys[-1] - ys[0]) / (np.log10(values[-1]) - np.log10(values[0]))
    for y, v in zip(ys, values):
        assert y == pytest.approx(ys[0] + slope * (np.log10(v) - np.log10(values[0])), abs=0.15)
    # the switch: a checkbox whose :checked state swaps the two charts, no script needed
    assert '<input type="checkbox" id="equity-log">' in html and '<label class="switch" for="equity-log">' in html
    assert "input#equity-log:checked ~ div.linear { display: none; }" in html
    assert "input#equity-log:checked ~ div.log { display: block; }" in html
    assert html.count("<script") == 1                                   # still only the table sorter


def test_log_switch_is_off_for_equity_that_is_not_positive(tmp_path):
    path = tmp_path / "neg.sqlite"
    with Journal(path) as j:
        rid = j.start_run("backtest", "ruin", symbols=["X"], bar="1d", initial_cash=100.0)
        j.many("equity", ["run_id", "ts", "cash", "equity"],
               [(rid, "2024-01-02T00:00:00Z", 0, 50), (rid, "2024-01-03T00:00:00Z", 0, -20)])
    html = render_report(path)
    assert '<input type="checkbox" id="equity-log" disabled>' in html and "(needs positive equity)" in html
    assert "(log scale)" not in html


def test_option_trades_are_marked_on_the_underlyings_chart(tmp_path):
    path = tmp_path / "ic.sqlite"
    ts = pd.date_range("2024-06-21 13:30", periods=391, freq="1min", tz="UTC")
    close = 540 + np.sin(np.arange(391) / 40)
    legs = {"legs": [{"name": "short_put", "action": "sell", "right": "P", "strike": 530, "price": 1.2}],
            "credit": 0.95, "underlying_entry": 541.25, "underlying_exit": 539.5}
    with Journal(path) as j:
        rid = j.start_run("backtest", "spy-ic", symbols=["SPY"], bar="1m", initial_cash=10_000,
                          settings={"timezone": "America/New_York"})
        j.many("equity", ["run_id", "ts", "cash", "equity"],
               [(rid, t, 10_000, 10_000 + i * 0.2) for i, t in enumerate(_iso(ts))])
        j.many("prices", ["run_id", "symbol", "ts", "open", "high", "low", "close"],
               [(rid, "SPY", t, c, c, c, c) for t, c in zip(_iso(ts), close)])
        add_trades(j, rid, [
            dict(symbol="SPY", side="short", quantity=1, multiplier=100, entry_ts="2024-06-21T14:00:00Z",
                 entry_price=0.95, exit_ts="2024-06-21T19:50:00Z", exit_price=0.10, pnl=81.4, return_pct=40.7,
                 bars_held=350, commission=3.6, exit_reason="take profit", legs=json.dumps(legs)),
            dict(symbol="SPY", side="short", quantity=1, multiplier=100, entry_ts="2024-06-21T15:00:00Z",
                 entry_price=1.00, exit_ts="2024-06-21T16:00:00Z", exit_price=2.0, pnl=-100, return_pct=-50,
                 bars_held=60, commission=3.6, legs=json.dumps({"legs": legs["legs"], "credit": 1.0}))])
    html = render_report(path)
    price = re.search(r'<svg class="chart price".*?</svg>', html, re.S).group(0)
    entries = re.findall(r'<path class="mark entry" d="M([\d.]+) ([\d.]+)[^"]*"><title>([^<]*)</title>', price)
    exits = re.findall(r'<path class="mark exit" d="M([\d.]+) ([\d.]+)[^"]*"><title>([^<]*)</title>', price)
    assert len(entries) == len(exits) == 2
    assert "#1 short 1 SPY option combo, credit 0.95 entry 2024-06-21 10:00, underlying at 541.25" in entries[0][2]
    # the second combo's legs name no underlying price: the bar's close at 15:00 UTC
    assert f"underlying at {close[90]:,.2f}" in entries[1][2]
    # each mark stands at its underlying price on the chart's scale (the axis labels give it)
    ticks = [(float(y), float(v)) for y, v in re.findall(r'class="ylabel" x="[\d.]+" y="([\d.]+)"[^>]*>([\d.]+)<', price)]
    (y0, v0), (y1, v1) = ticks[0], ticks[-1]
    to_y = lambda v: y0 + (v - v0) * (y1 - y0) / (v1 - v0) - 4                # labels sit 4 px below their line
    assert float(entries[0][1]) == pytest.approx(to_y(541.25), abs=0.2)
    assert float(exits[0][1]) == pytest.approx(to_y(539.5), abs=0.2)
    assert "Option trades are marked at SPY's price" in html


def test_definitions_are_stated_in_the_report(spy_journal):
    path, *_ = spy_journal
    html = render_report(path)
    defs = re.search(r'<section id="definitions">(.*?)</section>', html, re.S).group(1)
    terms = re.findall(r"<dt>([^<]*)</dt>", defs)
    for term in ("Daily returns", "Volatility", "Sharpe", "Sortino", "Buy &amp; hold", "Alpha, beta", "SQN", "Kelly",
                 "Best, worst, average trade", "Trade duration", "Drawdown length"):
        assert term in terms, term
    assert "× √252" in defs and "empyrical / QuantStats" in defs and "ddof 1" in defs
    assert "entry value" in defs and "open of the run's first bar" in defs


def test_metric_cards_show_the_new_figures(tmp_path):
    path = tmp_path / "two.sqlite"
    _, trades = two_runs_journal(path)
    html = render_report(path)
    card = lambda key: re.search(rf'data-metric="{key}"><div class="k">[^<]*</div><div class="v[^"]*">(?:<span[^>]*>)?([^<]*)<',
                                 html).group(1)
    pnl = np.array([t["pnl"] for t in trades])
    assert card("sqn") == fmt_num(np.sqrt(pnl.size) * pnl.mean() / pnl.std(ddof=1))
    ret = np.array([t["return_pct"] for t in trades]) / 100
    assert card("best_trade") == fmt_pct(ret.max()) and card("worst_trade") == fmt_pct(ret.min())
    assert card("average_trade") == fmt_pct(ret.mean())
    held = [(pd.Timestamp(t["exit_ts"]) - pd.Timestamp(t["entry_ts"])).total_seconds() / 60 for t in trades]
    longest = round(max(held))
    assert card("longest_trade_days") == f"{longest // 60} h {longest % 60:02d} min"
    wins, losses = pnl[pnl > 0], pnl[pnl < 0]
    w = wins.size / pnl.size
    assert card("kelly") == fmt_pct(w - (1 - w) / (wins.mean() / -losses.mean()), 1)
    for key in ("alpha", "beta", "average_drawdown", "average_drawdown_days"):
        assert card(key) not in ("", "—"), key


def test_buy_and_hold_from_the_journal_leaves_the_warm_up_bars_out(tmp_path, spy):
    """Without a stored summary the report's buy and hold starts at the open of the first bar of
    the equity curve's span: the journal's prices begin with warm-up bars before it."""
    path = tmp_path / "warm.sqlite"
    run = spy.iloc[300:800]
    with Journal(path) as j:
        rid = j.start_run("backtest", "warm", symbols=["SPY"], bar="1d", initial_cash=50_000.0)
        add_prices(j, rid, "SPY", spy.iloc[:800])                       # 300 warm-up bars first
        j.many("equity", ["run_id", "ts", "cash", "equity"],
               zip([rid] * len(run), _iso(run.index), [50_000.0] * len(run), 50_000 * run["Close"] / run["Close"].iloc[0]))
    html = render_report(path)
    expected = run["Close"].iloc[-1] / run["Open"].iloc[0] - 1
    card = re.search(r'data-metric="buy_and_hold"><div class="k">Buy &amp; hold SPY</div><div class="v">'
                     r'(?:<span[^>]*>)?([^<]*)<', html).group(1)
    assert card == fmt_pct(expected) != fmt_pct(spy["Close"].iloc[799] / spy["Close"].iloc[0] - 1)
    row = Page(html).rows("breakdown")[0]
    assert row[0] == "SPY" and row[-1] == fmt_pct(expected, 1)


def test_percent_axis_labels_keep_a_tiny_range_apart():
    """A run whose drawdown never passes 0.01%: its axis ticks read -0.002%, -0.004%, ... (they all
    read 0% at two decimals)."""
    from engine.report.svg import nice_ticks, percent_label

    ticks = nice_ticks(-0.0001, 0.0)
    labels = [percent_label(t) for t in ticks]
    assert len(set(labels)) == len(labels) > 2
    assert labels[-1] == "0%" and "-0.01%" in labels
    assert [percent_label(x) for x in (-0.05, 0.025, 0.1234, 1.0)] == ["-5%", "2.5%", "12.34%", "100%"]


def test_the_price_chart_spans_the_run_not_the_warm_up_bars_the_journal_keeps(tmp_path):
    """A run from 2015 warms its 50-day average up on the bars before it, which the journal keeps
    (buy and hold and the indicators read them); the price chart starts with the run's equity,
    not with the warm-up."""
    from click.testing import CliRunner

    import cli
    from engine.report import html as H

    journal = tmp_path / "j.sqlite"
    root = Path(__file__).resolve().parents[1]
    out = CliRunner().invoke(cli.main, ["backtest", str(root / "strategies" / "sma_crossover.yaml"), "--from",
                                        "2015-01-02", "--journal", str(journal), "--no-progress"])
    assert out.exit_code == 0, out.output
    with sqlite3.connect(journal) as db:
        first_price = db.execute("SELECT MIN(ts) FROM prices WHERE symbol = 'SPY'").fetchone()[0]
    data = H.load_run(journal)
    assert pd.Timestamp(first_price) < data.equity.index[0]          # the journal has warm-up bars
    assert data.bars.index[0] >= data.equity.index[0] and data.bars.index[0].year == 2015


def test_a_state_colour_means_one_label_across_the_rows():
    """Three classifications with labels of their own: no colour stands for two labels (the
    regime strips once drew 'short', 'mean_reversion' and 'low' all in green); a label two rows
    share has one colour."""
    states = {"bias": [(0.0, "long"), (50.0, "short")], "regime": [(0.0, "trend"), (40.0, "mean_reversion")],
              "volatility": [(0.0, "low"), (60.0, "high"), (80.0, "short")]}
    chart = svg.state_timeline(states, (0.0, 100.0), title="states")
    keys = re.findall(r'<rect class="key"[^>]*fill="([^"]+)"/><text class="legend"[^>]*>([^<]+)</text>', chart)
    by_colour: dict[str, set] = {}
    for fill, label in keys:
        by_colour.setdefault(fill, set()).add(label)
    assert len(keys) == 7 and all(len(labels) == 1 for labels in by_colour.values()), keys
    assert len(by_colour) == 6                        # six labels, 'short' in two rows with one colour


def test_a_negative_that_rounds_to_zero_is_printed_without_its_sign():
    """A month that lost 0.004% shows 0.0% in the monthly table, not -0.0%; real losses keep it."""
    assert fmt_pct(-0.00004, 1) == "0.0%" and fmt_pct(-0.02, 1) == "-2.0%" and fmt_pct(0.0, 1) == "0.0%"
    assert fmt_num(-0.001) == "0.00" and fmt_num(-1234.5) == "-1,234.50" and fmt_num(-0.0) == "0.00"


def test_the_reports_settings_say_what_the_fills_cost_even_when_nothing(tmp_path):
    from click.testing import CliRunner

    import cli

    journal, report = tmp_path / "j.sqlite", tmp_path / "r.html"
    root = Path(__file__).resolve().parents[1]
    out = CliRunner().invoke(cli.main, ["backtest", str(root / "strategies" / "sma_crossover.yaml"), "--journal",
                                        str(journal), "--no-progress", "--report", str(report)])
    assert out.exit_code == 0, out.output
    page = html.unescape(re.sub(r"<[^>]+>", " ", report.read_text()))
    settings = " ".join(page[page.index("Settings"):page.index("Run log")].split())
    assert "commission none (backtest.commission not set: trades cost nothing)" in settings, settings
    assert "slippage none (backtest.slippage not set" in settings, settings
    from engine.brokers.costs import Commission, Slippage
    assert Commission(per_unit=0.005, minimum=1.0, maximum=0.01).describe() == \
        "0.005 per share, at least 1, at most 1% of value"
    assert Slippage(ticks=1).describe() == "1 tick against each market and stop fill"


def test_a_trades_return_names_what_it_is_a_share_of_and_the_settings_leave_out_the_process(tmp_path):
    """A stock trade's return is a share of its entry value, an option combo's of its margin (the
    most it can lose), as the journal's return_pct holds them: the summary and the report say
    which. The journal's process (host, pid: how a dead run is found) is not shown as a setting."""
    from click.testing import CliRunner

    import cli

    root = Path(__file__).resolve().parents[1]
    said = {}
    for name in ("sma_crossover", "iron_condor"):
        report = tmp_path / f"{name}.html"
        out = CliRunner().invoke(cli.main, ["backtest", str(root / "strategies" / f"{name}.yaml"), "--journal",
                                            str(tmp_path / "j.sqlite"), "--no-progress", "--report", str(report)])
        assert out.exit_code == 0, out.output
        line = next(t for t in out.output.splitlines() if t.strip().startswith("Best / worst trade"))
        page = html.unescape(re.sub(r"<[^>]+>", " ", report.read_text()))
        average = " ".join(page[page.index("Average trade"):].split()[:8])
        settings = " ".join(page[page.index("Settings"):page.index("Run log")].split())
        assert "process" not in settings and "pid" not in settings, settings
        said[name] = line, average
    assert "of entry value;" in said["sma_crossover"][0] and "of entry value" in said["sma_crossover"][1]
    assert "of the margin held (a combo's most loss);" in said["iron_condor"][0], said
    assert "of the margin held" in said["iron_condor"][1] and "entry value" not in said["iron_condor"][1], said
    assert cli._return_basis([]) == "of entry value"
