"""Bar loading and resampling against the real files in shared/data (row counts and values from
its README), the sample shipped in strategies/data, and broken files with exact positions."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.diagnostics import DiagnosticError
from engine.market.bars import bar_seconds, load_bars, resample

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE = ROOT / "strategies" / "data"
NY = "America/New_York"

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared/data is not present")


def one(path, **kwargs) -> pd.DataFrame:
    frames = load_bars(path, **kwargs)
    assert len(frames) == 1
    return next(iter(frames.values()))


def diagnostic(excinfo):
    assert len(excinfo.value.diagnostics) == 1
    return excinfo.value.diagnostics[0]


def check_shape(df: pd.DataFrame) -> None:
    assert list(df.columns) == ["open", "high", "low", "close", "volume"]
    assert all(dtype == np.float64 for dtype in df.dtypes)
    assert isinstance(df.index, pd.DatetimeIndex) and df.index.tz is not None
    assert df.index.is_monotonic_increasing and df.index.is_unique


# file, rows, first bar start (local), last bar start, first row open/high/low/close/volume
LAYOUTS = [
    ("backtrader/orcl-1995-2014.txt", 5036, "1995-01-03", "2014-12-31",
     (2.179012, 2.191358, 2.117284, 2.117284, 36301200)),
    ("backtrader/orcl-1995-2014.v2015-065f8ac9.txt", 5036, "1995-01-03", "2014-12-31",
     (44.12, 44.38, 42.87, 42.87, 36301200)),
    ("backtrader/yhoo-1996-2014.txt", 4713, "1996-04-12", "2014-12-31",
     (1.052083, 1.791667, 1.020833, 1.375, 408720000)),
    ("backtrader/nvda-1999-2014.txt", 4012, "1999-01-22", "2014-12-31",
     (1.75, 1.953125, 1.552083, 1.640625, 67867200)),
    ("backtrader/2006-day-001.txt", 255, "2006-01-02", "2006-12-29",
     (3578.73, 3605.95, 3578.73, 3604.33, 0)),
    ("backtrader/2006-week-001.txt", 52, "2006-01-06", "2006-12-29",
     (3578.73, 3666.99, 3578.73, 3666.99, 0)),
    ("backtrader/2006-01-02-volume-min-001.txt", 30889, "2006-01-02 09:01", "2006-02-27 22:00",
     (3602.0, 3603.0, 3597.0, 3599.0, 5699)),
    ("backtrader/2006-min-005.txt", 2142, "2006-01-02 09:05", "2006-01-30 17:30",
     (3578.73, 3587.88, 3578.73, 3582.99, 0)),
    ("backtesting_py/GOOG.csv", 2148, "2004-08-19", "2013-03-01",
     (100.0, 104.06, 95.96, 100.34, 22351900)),
    ("backtesting_py/EURUSD.csv", 5000, "2017-04-19 09:00", "2018-02-07 15:00",
     (1.0716, 1.0722, 1.07083, 1.07219, 1413)),
    ("mplfinance/yahoofinance-SPY-20080101-20180101.csv", 2519, "2007-12-31", "2017-12-29",
     (147.100006, 147.610001, 146.059998, 146.210007, 108126800)),
    ("mplfinance/yahoofinance-AAPL-20040819-20180120.csv", 3379, "2004-08-19", "2018-01-19",
     (2.250714, 2.275714, 2.168571, 2.193571, 97230000)),
    ("mplfinance/yahoofinance-INTC-19950101-20040412.csv", 2335, "1995-01-03", "2004-04-08",
     (3.976563, 4.000975, 3.9375, 3.984375, 41721600)),
    # Date,Open,Close,High,Low,Volume: mapped by name, so close is 3080.49 and high 3081.47.
    ("mplfinance/SP500_NOV2019_IDayRVol.csv", 1563, "2019-11-05 09:30", "2019-11-08 15:59",
     (3080.8, 3081.47, 3080.3, 3080.49, 2209795)),
    ("mplfinance/SP500_NOV2019_Hist.csv", 20, "2019-11-01", "2019-11-29",
     (3050.72, 3066.95, 3050.72, 3066.91, 510301237)),
    ("finance_vix/vix-daily.csv", 9235, "1990-01-02", "2026-07-23",
     (17.24, 17.24, 17.24, 17.24, math.nan)),
    ("firstratedata_nq_sample/NQ_1min_sample.csv", 14714, "2023-11-19 18:00", "2023-12-04 16:59",
     (15895.0, 15903.75, 15888.0, 15893.25, 571)),
    ("firstratedata_nq_sample/NQ_5min_sample.csv", 2943, "2023-11-19 18:00", "2023-12-04 16:55",
     (15895.0, 15903.75, 15873.0, 15880.75, 2115)),
    ("firstratedata_nq_sample/NQ_1day_sample.csv", 10, "2023-11-20", "2023-12-04",
     (15895.0, 16116.75, 15837.25, 16086.5, 559493)),
    ("quantconnect_lean/decoded/spy_daily_raw_unadjusted.csv", 5849, "1998-01-02", "2021-03-31",
     (97.31, 97.53, 96.53, 97.36, 2150000)),
    ("quantconnect_lean/decoded/qqq_daily_raw_unadjusted.csv", 3964, "1999-03-10", "2021-03-31",
     (102.25, 102.31, 100.56, 101.94, 2632800)),
    ("quantconnect_lean/decoded/spy_minute_trade_2013-10-07_to_2013-10-11.csv", 4128,
     "2013-10-07 04:00", "2013-10-11 19:59", (167.41, 167.41, 167.25, 167.27, 3197)),
]


@needs_data
@pytest.mark.parametrize("name,rows,first,last,values", LAYOUTS, ids=[x[0].split("/")[-1] for x in LAYOUTS])
def test_layouts_load_with_readme_counts_and_values(name, rows, first, last, values):
    df = one(DATA / name)
    check_shape(df)
    assert len(df) == rows
    assert df.index[0] == pd.Timestamp(first, tz=NY)
    assert df.index[-1] == pd.Timestamp(last, tz=NY)
    np.testing.assert_array_equal(df.iloc[0].to_numpy(), np.array(values, dtype=float))


@needs_data
def test_symbol_from_file_name_with_and_without_hint():
    path = DATA / "mplfinance" / "yahoofinance-SPY-20080101-20180101.csv"
    assert list(load_bars(path, symbols=["spy"])) == ["SPY"]
    assert list(load_bars(path)) == ["YAHOOFINANCE-SPY-20080101-20180101"]
    assert list(load_bars(DATA / "backtesting_py" / "GOOG.csv")) == ["GOOG"]


@needs_data
def test_long_table_and_symbol_filter(tmp_path):
    parts = []
    for symbol in ("SPY", "AAPL"):
        raw = pd.read_csv(DATA / "mplfinance" / f"yahoofinance-{symbol}-{'20080101-20180101' if symbol == 'SPY' else '20040819-20180120'}.csv")
        raw.insert(0, "Symbol", symbol)
        parts.append(raw)
    table = tmp_path / "prices.csv"
    pd.concat(parts).to_csv(table, index=False)
    frames = load_bars(table)
    assert sorted(frames) == ["AAPL", "SPY"]
    assert len(frames["SPY"]) == 2519 and len(frames["AAPL"]) == 3379
    single = one(DATA / "mplfinance" / "yahoofinance-AAPL-20040819-20180120.csv")
    pd.testing.assert_frame_equal(frames["AAPL"], single)
    assert list(load_bars(table, symbols=["AAPL"])) == ["AAPL"]
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(table, symbols=["SPY", "QQQ"])
    assert "no bars for QQQ (found: SPY)" in diagnostic(excinfo).message


def test_directory_sample_found_by_symbol():
    frames = load_bars(SAMPLE)
    assert sorted(frames) == ["AAPL", "INTC", "SPY", "VIX", "XSP"]
    counts = {s: len(df) for s, df in frames.items()}
    assert counts == {"SPY": 2519, "AAPL": 3379, "INTC": 2335, "VIX": 3272, "XSP": 1563}
    assert frames["VIX"].index[0] == pd.Timestamp("2007-01-03", tz=NY)
    assert frames["VIX"].index[-1] == pd.Timestamp("2019-12-31", tz=NY)
    assert frames["XSP"].index[0] == pd.Timestamp("2019-11-05 09:30", tz=NY)
    assert frames["XSP"]["close"].iloc[0] == 308.049       # the S&P 500's 3080.49 / 10
    assert frames["VIX"]["volume"].isna().all()
    assert frames["SPY"]["close"].iloc[-1] == 266.859985
    subset = load_bars(SAMPLE, symbols=["VIX", "SPY"])
    assert list(subset) == ["VIX", "SPY"]
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(SAMPLE, symbols=["QQQ"])
    assert "no bars for QQQ" in diagnostic(excinfo).message


def test_directory_refuses_two_files_for_one_symbol(tmp_path):
    text = "Date,Open,High,Low,Close\n2020-01-02,1,2,0.5,1.5\n"
    (tmp_path / "SPY.csv").write_text(text)
    (tmp_path / "spy.txt").write_text(text)
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(tmp_path)
    assert "symbol SPY is also in" in diagnostic(excinfo).message


@needs_data
def test_parquet_round_trip(tmp_path):
    df = one(DATA / "backtesting_py" / "GOOG.csv")
    target = tmp_path / "GOOG.parquet"
    df.to_parquet(target)  # the DatetimeIndex is stored and comes back as a column
    pd.testing.assert_frame_equal(one(target), df)
    flat = tmp_path / "flat.parquet"
    df.tz_convert("UTC").rename_axis("timestamp").reset_index().assign(symbol="GOOG").to_parquet(flat, index=False)
    back = load_bars(flat)
    assert list(back) == ["GOOG"]
    pd.testing.assert_frame_equal(back["GOOG"], df)


@needs_data
def test_adjusted_prices_scale_by_adj_close():
    path = DATA / "mplfinance" / "yahoofinance-SPY-20080101-20180101.csv"
    raw = pd.read_csv(path)
    adjusted = one(path, adjusted=True)
    np.testing.assert_allclose(adjusted["close"].to_numpy(), raw["Adj Close"].to_numpy(), rtol=1e-12)
    factor = raw["Adj Close"] / raw["Close"]
    np.testing.assert_allclose(adjusted["open"].to_numpy(), (raw["Open"] * factor).to_numpy(), rtol=1e-12)
    np.testing.assert_array_equal(adjusted["volume"].to_numpy(), raw["Volume"].to_numpy(dtype=float))
    old = one(DATA / "backtrader" / "orcl-1995-2014.v2015-065f8ac9.txt", adjusted=True)
    assert old["close"].iloc[0] == pytest.approx(2.00)


@needs_data
def test_adjusted_without_adj_close_is_an_error():
    path = DATA / "backtrader" / "2006-day-001.txt"
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(path, adjusted=True)
    d = diagnostic(excinfo)
    assert (d.path, d.line, d.col) == (str(path), 1, 1)
    assert "no adjusted close column" in d.message
    assert "Date,Open,High,Low,Close,Volume,OpenInterest" in d.message


def test_adjusted_prices_rounded_to_cents_on_the_bundled_spy():
    """data.adjusted: {round: 2}: the adjusted prices (SPY.csv's first close 146.210007 adjusts
    to its Adj Close 118.624741) rounded to 2 decimals, half to even; volumes as they were."""
    raw = pd.read_csv(SAMPLE / "SPY.csv")
    exact = one(SAMPLE / "SPY.csv", adjusted=True)
    cents = one(SAMPLE / "SPY.csv", adjusted=True, round_adjusted=2)
    for field in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(cents[field].to_numpy(), np.round(exact[field].to_numpy(), 2))
        assert np.abs(cents[field].to_numpy() * 100 - np.rint(cents[field].to_numpy() * 100)).max() < 1e-6
        assert (cents[field] != exact[field]).mean() > 0.99
    assert exact["close"].iloc[0] == pytest.approx(118.624741, abs=1e-9)
    assert cents["close"].iloc[0] == 118.62 and cents["open"].iloc[0] == round(147.100006 * 118.624741 / 146.210007, 2)
    np.testing.assert_array_equal(cents["volume"].to_numpy(), raw["Volume"].to_numpy(dtype=float))
    whole = one(SAMPLE / "SPY.csv", adjusted=True, round_adjusted=0)
    assert whole["close"].iloc[0] == 119.0 and (whole["close"] % 1 == 0).all()
    assert (cents.index == exact.index).all()


@pytest.mark.parametrize("kwargs", [{"round_adjusted": 2}, {"adjusted": True, "round_adjusted": -1},
                                    {"adjusted": True, "round_adjusted": 2.5},
                                    {"adjusted": True, "round_adjusted": True}])
def test_rounding_needs_adjusted_prices_and_a_whole_number_of_decimals(kwargs):
    with pytest.raises(ValueError):
        load_bars(SAMPLE / "SPY.csv", **kwargs)


def test_an_adjusted_price_that_rounds_to_zero_is_refused_at_its_line(tmp_path):
    path = tmp_path / "X.csv"
    path.write_text("Date,Open,High,Low,Close,Adj Close,Volume\n"
                    "2020-01-02,10.0,10.5,9.5,10.0,1.0,100\n"
                    "2020-01-03,10.0,10.5,9.5,10.0,0.004,100\n")
    assert one(path, adjusted=True)["close"].iloc[1] == pytest.approx(0.004)
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(path, adjusted=True, round_adjusted=2)
    d = diagnostic(excinfo)
    assert (d.line, d.col) == (3, 12) and "adjusted open price is 0" in d.message


def test_start_end_inclusive():
    spy = one(SAMPLE / "SPY.csv", start="2010-01-04", end="2010-01-08")
    assert len(spy) == 5
    assert spy.index[0] == pd.Timestamp("2010-01-04", tz=NY)
    assert spy.index[-1] == pd.Timestamp("2010-01-08", tz=NY)


def test_naive_daily_dates_are_local_midnight_across_dst():
    spy = one(SAMPLE / "SPY.csv")
    assert spy.index[0] == pd.Timestamp("2007-12-31 00:00", tz=NY)
    assert spy.loc["2008-03-07":"2008-03-07"].index[0].utcoffset() == pd.Timedelta(hours=-5)
    assert spy.loc["2008-03-10":"2008-03-10"].index[0].utcoffset() == pd.Timedelta(hours=-4)
    london = one(SAMPLE / "SPY.csv", timezone="Europe/London")
    assert london.index[0] == pd.Timestamp("2007-12-31 00:00", tz="Europe/London")


def test_aware_times_keep_their_instants(tmp_path):
    path = tmp_path / "X.csv"
    path.write_text("timestamp,open,high,low,close,volume\n"
                    "2013-10-07T09:30:00-04:00,1,2,0.5,1.5,10\n"
                    "2013-10-07T13:31:00Z,1,2,0.5,1.5,10\n"
                    "2013-12-02T09:30:00-05:00,1,2,0.5,1.5,10\n")
    df = one(path, timezone="Europe/London")
    expected = pd.DatetimeIndex(["2013-10-07 13:30", "2013-10-07 13:31", "2013-12-02 14:30"], tz="UTC")
    assert (df.index == expected).all()
    assert str(df.index.tz) == "Europe/London"


def test_utc_column_and_dst_spring_forward(tmp_path):
    path = tmp_path / "ES.csv"
    path.write_text("datetime_utc,open,high,low,close,volume\n2023-03-12 06:59:00,1,1,1,1,1\n"
                    "2023-03-12 07:00:00,1,1,1,1,1\n")
    df = one(path)
    assert [str(t) for t in df.index] == ["2023-03-12 01:59:00-05:00", "2023-03-12 03:00:00-04:00"]
    local = tmp_path / "NQ.csv"
    local.write_text("timestamp,open,high,low,close,volume\n2023-03-12 01:59:00,1,1,1,1,1\n"
                     "2023-03-12 03:00:00,1,1,1,1,1\n")
    assert (one(local).index == df.index).all()
    gap = tmp_path / "GAP.csv"
    gap.write_text("timestamp,open,high,low,close,volume\n2023-03-12 01:59:00,1,1,1,1,1\n"
                   "2023-03-12 02:30:00,1,1,1,1,1\n")
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(gap)
    d = diagnostic(excinfo)
    assert (d.line, d.col) == (3, 1)
    assert "does not exist or is ambiguous in America/New_York" in d.message


# ------------------------------------------------------------------------------ resampling

@needs_data
def test_nq_one_minute_to_five_matches_vendor_five_minute_file():
    """Every one of the vendor's 2943 5-minute bars (same bin starts, :00/:05/..., since the
    vendor's bins are clock-aligned and the Globex session opens on the hour) equals ours in all
    five fields."""
    minute = one(DATA / "firstratedata_nq_sample" / "NQ_1min_sample.csv")
    vendor = one(DATA / "firstratedata_nq_sample" / "NQ_5min_sample.csv")
    ours = resample(minute, "5m", timezone=NY)
    assert ours.index.equals(vendor.index)
    pd.testing.assert_frame_equal(ours, vendor)


@needs_data
def test_spy_minute_to_hourly_anchored_at_the_open():
    minute = one(DATA / "quantconnect_lean" / "decoded" / "spy_minute_trade_2013-10-07_to_2013-10-11.csv")
    hourly = resample(minute, "1h", timezone=NY, calendar="NYSE")
    check_shape(hourly)
    assert len(hourly) == 35  # 5 days x 09:30, 10:30, ..., 15:30
    assert [t.strftime("%H:%M") for t in hourly.loc["2013-10-07"].index] == \
        ["09:30", "10:30", "11:30", "12:30", "13:30", "14:30", "15:30"]
    first = minute.loc["2013-10-07 09:30":"2013-10-07 10:29"]
    assert hourly.iloc[0].tolist() == [first["open"].iloc[0], first["high"].max(), first["low"].min(),
                                       first["close"].iloc[-1], first["volume"].sum()]
    last = minute.loc["2013-10-07 15:30":"2013-10-07 15:59"]  # the half-hour bin before the close
    assert hourly.loc["2013-10-07 15:30", "close"] == last["close"].iloc[-1]
    no_calendar = resample(minute, "1h", timezone=NY)
    assert no_calendar.index[0] == pd.Timestamp("2013-10-07 04:00", tz=NY)  # pre-market kept
    assert len(no_calendar) == 80


@needs_data
def test_spy_minute_to_daily_per_session():
    minute = one(DATA / "quantconnect_lean" / "decoded" / "spy_minute_trade_2013-10-07_to_2013-10-11.csv")
    daily = resample(minute, "1d", timezone=NY, calendar="NYSE")
    assert list(daily.index) == list(pd.date_range("2013-10-07", "2013-10-11", tz=NY))
    regular = minute.loc["2013-10-07 09:30":"2013-10-07 15:59"]
    assert daily.iloc[0].tolist() == [regular["open"].iloc[0], regular["high"].max(), regular["low"].min(),
                                      regular["close"].iloc[-1], regular["volume"].sum()]
    assert daily.iloc[0].tolist() == [167.43, 168.45, 167.25, 167.42, 81489219.0]
    extended = resample(minute, "1d", timezone=NY)  # local dates: pre- and post-market included
    assert extended.iloc[0]["open"] == 167.41 and extended.iloc[0]["volume"] == minute.loc["2013-10-07", "volume"].sum()


def test_weekly_bars_from_daily_and_refusing_smaller_bars():
    spy = one(SAMPLE / "SPY.csv", start="2010-01-04", end="2010-01-15")
    weekly = resample(spy, "1w", timezone=NY)
    assert list(weekly.index) == [pd.Timestamp("2010-01-04", tz=NY), pd.Timestamp("2010-01-11", tz=NY)]
    assert weekly["volume"].iloc[0] == spy["volume"].iloc[:5].sum()
    with pytest.raises(ValueError, match="resampling only makes bars larger"):
        resample(spy, "1h", timezone=NY)
    minutes = pd.DataFrame({f: [1.0, 2.0, 3.0] for f in ("open", "high", "low", "close", "volume")},
                           index=pd.date_range("2024-01-02 09:30", periods=3, freq="2min", tz=NY))
    with pytest.raises(ValueError, match="not a whole number of source bars"):
        resample(minutes, "5m", timezone=NY)


def test_vix_daily_volume_stays_nan_when_resampled():
    vix = one(SAMPLE / "VIX.csv", start="2018-01-01")
    assert resample(vix, "1w", timezone=NY)["volume"].isna().all()


def test_bar_seconds():
    assert bar_seconds("1s") == 1 and bar_seconds("5m") == 300 and bar_seconds("4h") == 14400
    assert bar_seconds("1d") == 86400 and bar_seconds("1w") == 604800
    with pytest.raises(ValueError, match="unknown bar size"):
        bar_seconds("5x")


# ------------------------------------------------------------------------------- bad input

def write(tmp_path, text, name="BAD.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


@needs_data
def test_unknown_layout_names_line_one_and_columns():
    path = DATA / "pysystemtrade" / "adjusted_prices_csv" / "SP500.csv"
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(path)
    d = diagnostic(excinfo)
    assert (d.path, d.line, d.col) == (str(path), 1, 1)
    assert "unknown bar layout" in d.message and "columns found: DATETIME,price" in d.message
    assert "Yahoo" in d.hint and "backtrader" in d.hint


def test_bad_number_on_its_line_and_column(tmp_path):
    path = write(tmp_path, "Date,Open,High,Low,Close,Volume\n2020-01-02,1,2,0.5,1.5,100\n"
                           "2020-01-03,1,2,abc,1.5,100\n")
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(path)
    d = diagnostic(excinfo)
    assert (d.path, d.line, d.col) == (str(path), 3, 16)
    assert d.message == "'abc' is not a number (column 'Low')"


def test_bad_date_on_its_line(tmp_path):
    path = write(tmp_path, "Date,Open,High,Low,Close\n2020-01-02,1,2,0.5,1.5\n2020-01-03,1,2,0.5,1.5\n"
                           "2020-13-45,1,2,0.5,1.5\n")
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(path)
    d = diagnostic(excinfo)
    assert (d.line, d.col) == (4, 1)
    assert d.message.startswith("'2020-13-45' is not a date or time (column 'Date'")


def test_duplicate_time_names_both_lines(tmp_path):
    path = write(tmp_path, "Date,Open,High,Low,Close\n2020-01-02,1,2,0.5,1.5\n2020-01-03,1,2,0.5,1.5\n"
                           "2020-01-06,1,2,0.5,1.5\n2020-01-03,1,2,0.5,1.5\n")
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(path)
    d = diagnostic(excinfo)
    assert (d.line, d.col) == (5, 1)
    assert "duplicate bar time 2020-01-03" in d.message and "(also on line 3)" in d.message


def test_ragged_row_and_missing_file(tmp_path):
    path = write(tmp_path, "Date,Open,High,Low,Close\n2020-01-02,1,2,0.5,1.5\n2020-01-03,1,2,0.5,1.5,9\n")
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(path)
    d = diagnostic(excinfo)
    assert d.line == 3 and "line has 6 fields but the header on line 1 names 5" in d.message
    missing = tmp_path / "nope.csv"
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(missing)
    d = diagnostic(excinfo)
    assert (d.path, d.line, d.message) == (str(missing), 0, "no such file or directory")


def test_empty_file_and_header_only(tmp_path):
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(write(tmp_path, ""))
    assert (diagnostic(excinfo).line, diagnostic(excinfo).message) == (1, "the file is empty")
    for name, text in (("HDR.csv", "Date,Open,High,Low,Close\n"), ("GAPS.csv", "Date,Open,High,Low,Close\n"
                                                                            "2020-01-02,null,null,null,null\n\n")):
        path = write(tmp_path, text, name=name)
        with pytest.raises(DiagnosticError) as excinfo:
            load_bars(path)
        d = diagnostic(excinfo)
        assert (d.path, d.line, d.col) == (str(path), 1, 1)
        assert d.message == "no bars: the file has a header but no rows with prices"


HEADER = "Date,Open,High,Low,Close,Volume\n2020-01-02,10,11,9,10.5,100\n"


@pytest.mark.parametrize("row, col, message", [
    ("2020-01-03,10,11,9,inf,100", 20, "close price is inf (column 'Close')"),
    ("2020-01-03,10,-inf,9,10,100", 15, "high price is -inf (column 'High')"),
    ("2020-01-03,10,11,9,nan,100", 20, "missing close price in a bar that has other prices (column 'Close')"),
    ("2020-01-03,10,11,9,,100", 20, "missing close price in a bar that has other prices (column 'Close')"),
    ("2020-01-03,0,11,9,10,100", 12, "open price is 0: prices must be above zero (column 'Open')"),
    ("2020-01-03,10,11,-9,10,100", 18, "low price is -9: prices must be above zero (column 'Low')"),
    ("2020-01-03,10,9,11,10,100", 15, "high 9 is below the low 11 (column 'High')"),
    ("2020-01-03,10,11,9,10,-5", 23, "volume is -5: volumes must be finite and not negative (column 'Volume')"),
    ("2020-01-03,10,11,9,10,inf", 23, "volume is inf: volumes must be finite and not negative (column 'Volume')"),
])
def test_bad_prices_refused_at_their_line_and_column(tmp_path, row, col, message):
    path = write(tmp_path, HEADER + row + "\n2020-01-06,10,11,9,10.5,100\n")
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(path)
    d = diagnostic(excinfo)
    assert (d.path, d.line, d.col) == (str(path), 3, col)
    assert d.message == message


def test_bad_prices_in_a_long_table_and_parquet_name_their_row(tmp_path):
    path = write(tmp_path, "Date,Symbol,Open,High,Low,Close\n2020-01-02,SPY,10,11,9,10\n"
                           "2020-01-02,QQQ,10,11,9,0\n")
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(path, symbols=["SPY"])
    d = diagnostic(excinfo)
    assert (d.line, d.col, d.message) == (3, 24, "close price is 0: prices must be above zero (column 'Close')")
    frame = pd.DataFrame({"timestamp": pd.date_range("2020-01-02", periods=3, tz="UTC"),
                          "open": [1.0, 2.0, 3.0], "high": [1.0, 2.0, 3.0], "low": [1.0, 2.5, 3.0],
                          "close": [1.0, 2.0, 3.0]})
    frame.to_parquet(tmp_path / "P.parquet")
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(tmp_path / "P.parquet")
    d = diagnostic(excinfo)
    assert (d.line, d.col, d.message) == (2, 3, "high 2 is below the low 2.5 (column 'high')")


def test_adjusted_prices_checked_after_adjusting(tmp_path):
    path = write(tmp_path, "Date,Open,High,Low,Close,Adj Close\n2020-01-02,10,11,9,10,5\n"
                           "2020-01-03,10,11,9,10,0\n")
    assert len(one(path)) == 2
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(path, adjusted=True)
    d = diagnostic(excinfo)
    assert d.line == 3 and d.message.startswith("adjusted open price is 0: prices must be above zero")


def test_a_file_without_line_breaks_is_not_read_whole(tmp_path):
    sparse = tmp_path / "SPARSE.csv"
    with open(sparse, "wb") as fh:
        fh.truncate(2 * 1024 ** 3)        # 2 GB of zero bytes, no newline, nothing on disk
    one_line = write(tmp_path, "Date,Open,High,Low,Close" + ",x" * 40000, name="WIDE.csv")
    blank_then_long = tmp_path / "LATE.csv"
    blank_then_long.write_bytes(b"Date,Open,High,Low,Close\n\n\n" + b"1" * 100_000)
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for path, line in ((sparse, 1), (one_line, 1), (blank_then_long, 4)):
        with pytest.raises(DiagnosticError) as excinfo:
            load_bars(path)
        d = diagnostic(excinfo)
        assert (d.path, d.line, d.col) == (str(path), line, 1)
        assert d.message == f"line {line} is longer than 64 KiB: this is not a CSV file of bars (no line break found)"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024   # KiB: < 200 MB more


def test_blank_lines_do_not_shift_line_numbers(tmp_path):
    path = write(tmp_path, "Date,Open,High,Low,Close\n2020-01-02,1,2,0.5,1.5\n\n2020-01-03,1,2,x,1.5\n\n")
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(path)
    assert (diagnostic(excinfo).line, diagnostic(excinfo).col) == (4, 16)


def _parquet_variants(tmp_path) -> dict[str, Path]:
    """Parquet files the direct pyarrow reader takes (and a few it leaves to pandas)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(7)
    n = 400
    utc = pd.date_range("2023-11-03 13:30", periods=n, freq="1min", tz="UTC")
    prices = {c: rng.random(n) + 10 for c in ("open", "high", "low", "close")}
    drawn = np.vstack(list(prices.values()))
    prices["high"], prices["low"] = drawn.max(axis=0), drawn.min(axis=0)   # bars a loader accepts
    base = pd.DataFrame({"timestamp": utc, **prices, "volume": rng.integers(0, 1000, n)})
    out = {}

    def put(name, frame, **kwargs):
        out[name] = tmp_path / f"{name}.parquet"
        frame.to_parquet(out[name], **kwargs)

    put("aware", base, index=False)
    put("index_stored", base.set_index("timestamp"))
    put("naive_local", base.assign(timestamp=utc.tz_convert(NY).tz_localize(None)), index=False)
    put("reversed_gaps", base.iloc[::-1].drop(index=[5, 6]), index=False)
    gaps = base.copy()
    gaps.loc[3, list(prices)] = np.nan
    gaps.loc[4, "volume"] = np.nan
    put("nan_rows", gaps, index=False)
    put("adj", base.assign(**{"Adj Close": base["close"] * 0.5}), index=False)
    put("no_volume_us", base.drop(columns="volume").assign(timestamp=utc.as_unit("us").tz_convert("Asia/Tokyo")),
        index=False)
    put("ordered", base[["volume", "close", "timestamp", "low", "open", "high"]].astype({"close": "float32"}),
        index=False)
    table = pa.table({"Date": pa.array(utc.tz_localize(None).as_unit("ms").to_numpy(), type=pa.timestamp("ms")),
                      "Open": prices["open"], "High": prices["high"], "Low": prices["low"], "Close": prices["close"],
                      "Vol": pa.array([None if i % 9 == 0 else i for i in range(n)], type=pa.int64())})
    out["no_pandas_metadata_row_groups"] = tmp_path / "no_pandas_metadata_row_groups.parquet"
    pq.write_table(table, out["no_pandas_metadata_row_groups"], row_group_size=64)
    out["utc_named"] = tmp_path / "utc_named.parquet"
    pq.write_table(table.rename_columns(["timestamp_utc", "o", "h", "l", "c", "v"]), out["utc_named"])
    return out


@pytest.mark.parametrize("kwargs", [{}, {"timezone": "UTC", "start": "2023-11-03", "end": "2023-11-03 15:00"}])
def test_parquet_direct_reader_matches_pandas_reader(tmp_path, monkeypatch, kwargs):
    from engine.market import bars

    files = _parquet_variants(tmp_path)
    direct = {}
    for name, path in files.items():
        adjusted = name == "adj"
        direct[name] = one(path, adjusted=adjusted, **kwargs)
        check_shape(direct[name])
    assert bars._read_parquet_plain(files["aware"]) is not None
    assert bars._read_parquet_plain(files["index_stored"]) is None  # pandas restores the index
    monkeypatch.setattr(bars, "_read_parquet_plain", lambda path: None)
    for name, path in files.items():
        general = one(path, adjusted=name == "adj", **kwargs)
        pd.testing.assert_frame_equal(direct[name], general, check_exact=True, check_freq=True)
        assert str(direct[name].index.tz) == str(general.index.tz) and direct[name].index.unit == general.index.unit


def test_parquet_errors_keep_their_positions(tmp_path):
    n = 5
    frame = pd.DataFrame({"timestamp": pd.date_range("2024-01-02 14:30", periods=n, freq="1min", tz="UTC"),
                          "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5})
    dup = frame.copy()
    dup.loc[3, "timestamp"] = dup.loc[1, "timestamp"]
    dup.to_parquet(tmp_path / "dup.parquet", index=False)
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(tmp_path / "dup.parquet")
    d = diagnostic(excinfo)
    assert (d.line, d.col) == (4, 1) and "(also on line 2)" in d.message
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(tmp_path / "bad.parquet")
    assert diagnostic(excinfo).message.startswith("cannot read as Parquet")


@needs_data
def test_loaded_bars_are_ordinary_writable_frames(tmp_path):
    csv = one(DATA / "backtesting_py" / "GOOG.csv")
    target = tmp_path / "flat.parquet"
    csv.tz_convert("UTC").rename_axis("timestamp").reset_index().to_parquet(target, index=False)
    for df in (one(DATA / "backtesting_py" / "GOOG.csv"), one(target)):
        pd.testing.assert_frame_equal(df, csv)
        before = df.copy()
        view = df[["open", "close"]]
        df.iloc[0, 0] = -1.0
        df.loc[df.index[-1], "close"] = -2.0
        assert df.iloc[0, 0] == -1.0 and df["close"].iloc[-1] == -2.0
        assert view.iloc[0, 0] == before.iloc[0, 0]   # copy-on-write: a view taken before is not changed
        pd.testing.assert_frame_equal(df.iloc[1:-1], before.iloc[1:-1])


def test_outside_regular_hours(tmp_path):
    from engine.market.bars import outside_regular_hours

    xsp = one(SAMPLE / "XSP.csv")
    nyse = outside_regular_hours(xsp, "NYSE")
    assert nyse.sum() == 3 and all(t.strftime("%H:%M") == "16:00" for t in xsp.index[nyse])   # NYSE closes at 16:00
    assert not outside_regular_hours(xsp, "CBOE_Index_Options").any()                          # CBOE at 16:15
    regular = xsp[~nyse]
    assert not outside_regular_hours(regular, "NYSE").any()            # the quick path: 09:30-16:00 weekdays
    early = pd.concat([regular, regular.iloc[:1].set_axis(
        pd.DatetimeIndex([pd.Timestamp("2019-11-09 10:00", tz=NY)]))])   # a Saturday bar
    flagged = outside_regular_hours(early, "NYSE")
    assert flagged.sum() == 1 and flagged[-1]


# ---- futures: a root's history per contract (issue 15 item 5) --------------------------------

ES_BY_CONTRACT = DATA / "quantconnect_lean" / "decoded" / "es_minute_trade_by_contract_2013-10-07_to_2013-10-11.csv"
needs_es = pytest.mark.skipif(not ES_BY_CONTRACT.exists(), reason=f"{ES_BY_CONTRACT} (../shared/data) is not present")


def _es_front(roll_days: int, **kw):
    from engine.market.futures import stitch

    history = load_bars(ES_BY_CONTRACT, symbols=["ES"])["ES"]
    return stitch(history, root="ES", months="HMUZ", roll_days=roll_days, calendar_name="CME_Equity", timezone=NY, **kw)


@needs_es
def test_a_contract_month_column_keeps_each_contracts_series(tmp_path):
    from engine.market.futures import ContractHistory

    # without the column the file is one series with two bars at some times: refused, as before
    plain = tmp_path / "es.csv"
    plain.write_text("".join(",".join(f for i, f in enumerate(line.split(",")) if i != 1) + "\n"
                             for line in ES_BY_CONTRACT.read_text().splitlines()))
    with pytest.raises(DiagnosticError, match="duplicate bar time"):
        load_bars(plain)
    history = load_bars(ES_BY_CONTRACT, symbols=["ES"])["ES"]
    assert isinstance(history, ContractHistory) and history.column_name == "contract_month"
    assert {c: len(f) for c, f in history.contracts.items()} == {"201312": 6708, "201403": 1679, "201406": 24,
                                                                "201409": 1, "201412": 1}   # shared/data/README.md
    for frame in history.contracts.values():
        check_shape(frame)
    assert history.column == len("datetime_utc,") + 1 and history.first_line["201312"] == 2
    z = history.contracts["201312"]
    assert z.index[0] == pd.Timestamp("2013-10-07 00:00", tz="UTC") and z.iloc[0]["open"] == 1676.5


def test_no_contract_column_the_duplicate_says_what_would_make_it_a_futures_file(tmp_path):
    path = tmp_path / "es.csv"
    path.write_text("datetime_utc,open,high,low,close,volume\n2013-10-07 00:03:00,1676.25,1676.5,1676.25,1676.5,31\n"
                    "2013-10-07 00:03:00,1669.75,1669.75,1669.75,1669.75,2\n")
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(path)
    d = diagnostic(excinfo)
    assert (d.line, d.col) == (3, 1) and "duplicate bar time" in d.message and "contract_month column" in d.hint


def test_a_futures_file_refuses_two_contract_columns_and_bad_months_where_they_are(tmp_path):
    path = tmp_path / "es.csv"
    path.write_text("datetime_utc,contract,open,high,low,close,volume,expiry\n"
                    "2013-10-07 00:03:00,201312,1676.25,1676.5,1676.25,1676.5,31,20131220\n")
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(path)
    d = diagnostic(excinfo)
    assert (d.line, d.col) == (1, len("datetime_utc,contract,open,high,low,close,volume,") + 1)
    assert "two contract columns: 'contract' and 'expiry'" in d.message
    path.write_text("datetime_utc,contract_month,open,high,low,close,volume\n"
                    "2013-10-07 00:03:00,201312,1676.25,1676.5,1676.25,1676.5,31\n"
                    "2013-10-07 00:03:00,ESZ3,1669.75,1669.75,1669.75,1669.75,2\n")
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(path)
    d = diagnostic(excinfo)
    assert (d.line, d.col) == (3, len("2013-10-07 00:03:00,") + 1) and "'ESZ3' is not a contract month" in d.message
    path.write_text("datetime_utc,contract_month,open,high,low,close,volume\n"
                    "2013-10-07 00:03:00,201312,1676.25,1676.5,1676.25,1676.5,31\n"
                    "2013-10-07 00:04:00,201403,1669.75,1669.75,1669.75,1669.75,2\n"
                    "2013-10-07 00:03:00,201312,1676.25,1676.5,1676.25,1676.5,31\n")
    with pytest.raises(DiagnosticError) as excinfo:    # within one contract a time is still once
        load_bars(path)
    d = diagnostic(excinfo)
    assert d.line == 4 and "in contract 201312 (also on line 2)" in d.message


def test_a_futures_file_skips_bad_bars_as_any_file_does_and_says_how_many(tmp_path):
    path = tmp_path / "es.csv"
    path.write_text("datetime_utc,contract_month,open,high,low,close,volume\n"
                    "2013-10-07 14:00:00,201312,1676.25,1676.5,1676.25,1676.5,31\n"
                    "2013-10-07 14:01:00,201312,1676.5,1676.5,1676.75,1676.5,12\n"     # high under the low
                    "2013-10-07 14:01:00,201403,1669.75,1669.75,1669.75,1669.75,2\n")
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(path)
    assert diagnostic(excinfo).line == 3
    history = load_bars(path, on_bad_bar="skip")["ES"]
    assert {c: len(f) for c, f in history.contracts.items()} == {"201312": 1, "201403": 1}
    assert (history.skipped["count"], history.skipped["line"]) == (1, 3)


@needs_es
def test_the_front_month_by_the_roll_rule_of_the_ib_broker():
    import datetime as dt

    from engine.market.futures import roll_date
    from engine.market.calendars import get_calendar

    front = _es_front(5)          # the bundled offset: ESZ3 (last trade 2013-12-20) is the front all week
    assert set(front.front.tolist()) == {0} and len(front.frame) == 6708
    assert [c.local_symbol for c in front.contracts] == ["ESZ3", "ESH4", "ESM4", "ESU4", "ESZ4"]
    assert front.contracts[0].last_trade == dt.date(2013, 12, 20)      # the third Friday of December
    # 52 trading days before 2013-12-20 is Wednesday 2013-10-09: ESH4 from Thursday (New York's date)
    assert roll_date(dt.date(2013, 12, 20), 52, get_calendar("CME_Equity")) == dt.date(2013, 10, 9)
    front = _es_front(52)
    rolled = int(np.flatnonzero(np.diff(front.front))[0]) + 1
    assert front.frame.index[rolled - 1] == pd.Timestamp("2013-10-09 23:59", tz=NY)
    assert front.frame.index[rolled] == pd.Timestamp("2013-10-10 00:02", tz=NY)    # ESH4's first bar that day
    assert (front.front == 0).sum() == 4318 and (front.front == 1).sum() == 642
    # the raw front: the series jumps by the calendar spread, each bar is its contract's own
    assert front.frame.iloc[rolled]["open"] == 1648.75 and front.bars["ESZ3"].loc[front.frame.index[rolled], "open"] \
        == 1655.25
    pd.testing.assert_frame_equal(front.frame.iloc[rolled:], front.bars["ESH4"][front.bars["ESH4"].index >=
                                                                                front.frame.index[rolled]])


def test_the_stitch_refuses_what_it_cannot_know(tmp_path):
    from engine.market.futures import StitchError, stitch

    path = tmp_path / "es.csv"
    path.write_text("datetime_utc,contract_month,open,high,low,close,volume\n"
                    "2013-10-07 14:00:00,201403,1669.75,1669.75,1669.75,1669.75,2\n"
                    "2013-10-07 14:00:00,201311,1676.25,1676.5,1676.25,1676.5,31\n")
    history = load_bars(path, symbols=["ES"])["ES"]
    with pytest.raises(StitchError, match="contract 201311 is not in the root's listed months HMUZ") as excinfo:
        stitch(history, root="ES", months="HMUZ", roll_days=5, calendar_name="CME_Equity", timezone=NY)
    assert excinfo.value.line == 3
    del history.contracts["201311"]
    # ESZ3 is the front month that day, and the file has only ESH4: not a silent jump to March
    with pytest.raises(StitchError, match=r"ESZ3 \(201312\) is the front month from 2013-10-07 to 2013-10-07"):
        stitch(history, root="ES", months="HMUZ", roll_days=5, calendar_name="CME_Equity", timezone=NY)
    with pytest.raises(StitchError, match="knows the last trade date rule only of US equity index futures"):
        stitch(history, root="CL", months="FGHJKMNQUVXZ", roll_days=5, calendar_name="CMEGlobex_Crude", timezone=NY)
    path.write_text("datetime_utc,contract_month,open,high,low,close,volume\n"
                    "2013-10-07 14:00:00,20131220,1676.25,1676.5,1676.25,1676.5,31\n"
                    "2013-10-07 14:00:00,20140321,1669.75,1669.75,1669.75,1669.75,2\n")
    front = stitch(load_bars(path, symbols=["ES"])["ES"], root="ES", months="HMUZ", roll_days=5,
                   calendar_name="CME_Equity", timezone=NY)        # last trade dates, as IB writes them
    assert [c.local_symbol for c in front.contracts] == ["ESZ3", "ESH4"] and front.frame["close"].tolist() == [1676.5]
    path.write_text("datetime_utc,contract_month,open,high,low,close,volume\n"
                    "2013-10-07 14:00:00,20131213,1676.25,1676.5,1676.25,1676.5,31\n")
    with pytest.raises(StitchError, match="contract 20131213's last trade date is 20131220"):
        stitch(load_bars(path, symbols=["ES"])["ES"], root="ES", months="HMUZ", roll_days=5,
               calendar_name="CME_Equity", timezone=NY)


def test_a_symbol_with_no_file_in_a_folder_is_named_with_the_symbols_the_folder_has(tmp_path):
    """A misspelt symbol (SPYX): the folder's other files are not read, but their symbols are
    named, so the message does not say 'none' of a folder full of bars."""
    for symbol in ("SPY", "AAPL"):
        (tmp_path / f"{symbol}.csv").write_text("date,open,high,low,close,volume\n2024-01-02,1,2,0.5,1.5,10\n")
    with pytest.raises(DiagnosticError) as excinfo:
        load_bars(tmp_path, symbols=["SPYX"])
    d = diagnostic(excinfo)
    assert "no bars for SPYX (the folder has: AAPL, SPY)" in d.message
    assert "spelling" in d.hint
