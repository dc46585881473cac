"""Expiry rules and exchange calendars against real dates (2018-2026) with holidays and early
closes, a real SPXW chain, and properties over random days."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pandas_market_calendars as mcal
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.market.calendars import Calendar, get_calendar
from engine.market.expiry import (ExpiryRule, NoExpiry, cycle_expiries, monthly_expiry, parse_rule,
                                  preview, resolve, weekly_expiry)

D = dt.date.fromisoformat
ET = ZoneInfo("America/New_York")
CBOE = get_calendar("CBOE_Index_Options")
NYSE = get_calendar("NYSE")
CALENDARS = [CBOE, NYSE]
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CHAIN = DATA / "optopsy_v1" / "test_options_data_full.csv"


# ---- calendars against pandas-market-calendars ----------------------------------------------------

@pytest.mark.parametrize("name", ["NYSE", "CBOE_Index_Options", "CME_Equity", "CMEGlobex_Crude",
                                  "CMEGlobex_Gold", "CBOT_Equity", "CBOT_Bond", "NASDAQ"])
def test_calendar_matches_pandas_market_calendars(name):
    cal = Calendar(name)
    ref = mcal.get_calendar(name)
    schedule = ref.schedule(start_date="2018-01-01", end_date="2026-12-31")
    days = [ts.date() for ts in schedule.index]
    assert cal.trading_days("2018-01-01", "2026-12-31") == days
    assert cal.early_closes("2018-01-01", "2026-12-31") == [ts.date() for ts in ref.early_closes(schedule).index]
    for ts in schedule.index[::97]:
        assert cal.session_open(ts.date()) == schedule.loc[ts, "market_open"]
        assert cal.session_close(ts.date()) == schedule.loc[ts, "market_close"]
    assert str(cal.session_close(days[0]).tz) == str(ref.tz)


NYSE_EARLY_CLOSES = ["2018-07-03", "2018-11-23", "2018-12-24", "2019-07-03", "2019-11-29", "2019-12-24",
                     "2020-11-27", "2020-12-24", "2021-11-26", "2022-11-25", "2023-07-03", "2023-11-24",
                     "2024-07-03", "2024-11-29", "2024-12-24", "2025-07-03", "2025-11-28", "2025-12-24",
                     "2026-11-27", "2026-12-24"]


def test_nyse_early_closes_at_13_et():
    assert NYSE.early_closes("2018-01-01", "2026-12-31") == [D(d) for d in NYSE_EARLY_CLOSES]
    for day in NYSE_EARLY_CLOSES:
        close = NYSE.session_close(day).tz_convert(ET)
        assert (close.hour, close.minute) == (13, 0), day
        assert NYSE.early_close(day)
        assert NYSE.session_open(day).tz_convert(ET).time() == dt.time(9, 30)
    regular = NYSE.session_close("2024-11-27").tz_convert(ET)
    assert (regular.hour, regular.minute) == (16, 0) and not NYSE.early_close("2024-11-27")


@pytest.mark.parametrize("day", ["2018-11-23", "2019-07-03", "2023-07-03", "2024-07-03", "2024-11-29",
                                 "2025-07-03", "2025-11-28", "2026-11-27"])
def test_cboe_index_options_early_closes(day):
    # SPX options close at 12:15 CT (13:15 ET) on early-close days, 15:15 CT on regular ones
    close = CBOE.session_close(day)
    assert str(close.tz) == "America/Chicago" and close.time() == dt.time(12, 15)
    assert close.tz_convert(ET).time() == dt.time(13, 15)
    assert CBOE.early_close(day)


def test_cboe_regular_close_and_christmas_eve_as_pandas_market_calendars_has_it():
    assert CBOE.session_close("2024-11-27").time() == dt.time(15, 15)
    # pandas-market-calendars 5.x lists no Christmas Eve early close for CBOE index options;
    # we follow the library rather than a hand list, and say so here
    ref = mcal.get_calendar("CBOE_Index_Options").schedule("2024-12-24", "2024-12-24")
    assert CBOE.session_close("2024-12-24") == ref["market_close"].iloc[0]
    assert CBOE.is_trading_day("2024-12-24")


HOLIDAYS = ["2018-01-01", "2018-03-30", "2018-12-05", "2018-12-25", "2019-04-19", "2020-07-03",
            "2021-04-02", "2021-12-24", "2022-06-20", "2023-06-19", "2024-01-01", "2024-03-29",
            "2024-06-19", "2024-09-02", "2024-11-28", "2024-12-25", "2025-01-01", "2025-01-09",
            "2025-04-18", "2025-06-19", "2026-04-03", "2026-06-19", "2026-07-03", "2026-12-25"]


@pytest.mark.parametrize("cal", CALENDARS, ids=lambda c: c.name)
@pytest.mark.parametrize("day", HOLIDAYS)
def test_holidays(cal, day):
    assert not cal.is_trading_day(day)
    assert not cal.early_close(day)
    assert D(day) in cal.holidays(D(day) - dt.timedelta(days=3), D(day) + dt.timedelta(days=3))
    with pytest.raises(ValueError, match="not a trading day"):
        cal.session_open(day)


@pytest.mark.parametrize("cal", CALENDARS, ids=lambda c: c.name)
def test_trading_days_and_neighbours(cal):
    # not a holiday in 2021 (Juneteenth closes the market from 2022), but one in 2024
    assert cal.is_trading_day("2021-06-18") and not cal.is_trading_day("2024-06-19")
    assert cal.trading_days("2024-12-23", "2025-01-03") == [
        D("2024-12-23"), D("2024-12-24"), D("2024-12-26"), D("2024-12-27"), D("2024-12-30"),
        D("2024-12-31"), D("2025-01-02"), D("2025-01-03")]
    assert cal.next_trading_day("2024-12-31") == D("2025-01-02")        # across a year
    assert cal.previous_trading_day("2025-01-02") == D("2024-12-31")
    assert cal.next_trading_day("2024-08-30") == D("2024-09-03")        # Labor Day weekend
    assert cal.next_trading_day("2024-08-30", inclusive=True) == D("2024-08-30")
    assert cal.previous_trading_day("2024-11-29") == D("2024-11-27")    # over Thanksgiving
    assert cal.previous_trading_day("2024-11-29", inclusive=True) == D("2024-11-29")
    assert cal.next_trading_day(dt.datetime(2024, 11, 27, 15, 0)) == D("2024-11-29")


def test_globex_session_opens_the_evening_before():
    cme = get_calendar("CME_Equity")
    assert cme.session_open("2024-12-02") == pd.Timestamp("2024-12-01 17:00", tz="America/Chicago")
    assert cme.session_close("2024-11-29").tz_convert(ET).time() == dt.time(13, 0)   # 12:00 CT
    # Globex trades a shortened Thanksgiving session, unlike NYSE
    assert cme.early_close("2024-11-29") and cme.is_trading_day("2024-11-28") and cme.early_close("2024-11-28")


def test_unknown_calendar_names_the_name_and_suggests():
    with pytest.raises(ValueError, match=r"unknown calendar 'NYSEX' \(did you mean 'NYSE'"):
        Calendar("NYSEX")
    with pytest.raises(ValueError, match="CBOE_Index_Options"):
        get_calendar("cboe_index_option")
    with pytest.raises(ValueError, match="unknown calendar 'zzzz'"):
        Calendar("zzzz")


def test_schedules_are_cached_and_calendars_shared():
    from engine.market import calendars

    assert get_calendar("NYSE") is get_calendar("NYSE")
    assert Calendar("NYSE") == NYSE and hash(Calendar("NYSE")) == hash(NYSE)
    NYSE.trading_days("2019-01-01", "2019-12-31")
    before = calendars._year.cache_info()
    Calendar("NYSE").trading_days("2019-01-01", "2019-12-31")
    after = calendars._year.cache_info()
    assert after.misses == before.misses and after.hits > before.hits


# ---- expiry rules on real dates -------------------------------------------------------------------

CASES = [
    # (rule, today, cycle, expected, why)
    ("0dte", "2024-11-25", "daily", "2024-11-25", "Monday: that Monday, not a Friday"),
    ("0dte", "2018-01-08", "daily", "2018-01-08", "Monday"),
    ("0dte", "2026-03-16", "daily", "2026-03-16", "Monday"),
    ("0dte", "2024-08-31", "daily", "2024-09-03", "Saturday before Labor Day -> Tuesday"),
    ("0dte", "2024-09-02", "daily", "2024-09-03", "Labor Day itself"),
    ("0dte", "2024-11-23", "daily", "2024-11-25", "Saturday -> Monday"),
    ("0dte", "2024-11-28", "daily", "2024-11-29", "Thanksgiving -> the early-close Friday"),
    ("0dte", "2024-11-29", "daily", "2024-11-29", "early close still has an expiry"),
    ("0dte", "2024-12-24", "daily", "2024-12-24", "Christmas Eve early close"),
    ("0dte", "2024-12-25", "daily", "2024-12-26", "Christmas"),
    ("0dte", "2025-01-01", "daily", "2025-01-02", "New Year's Day"),
    ("0dte", "2025-01-09", "daily", "2025-01-10", "national day of mourning (Carter)"),
    ("0dte", "2018-12-05", "daily", "2018-12-06", "national day of mourning (Bush)"),
    ("0dte", "2024-06-19", "daily", "2024-06-20", "Juneteenth (Wednesday)"),
    ("0dte", "2025-04-18", "daily", "2025-04-21", "Good Friday"),
    ("0dte", "2024-11-25", "weekly", "2024-11-29", "weekly-only chain: 0dte is the next listed one"),
    ("next_trading_day", "2024-11-27", "daily", "2024-11-29", "over Thanksgiving"),
    ("next_trading_day", "2024-12-24", "daily", "2024-12-26", "over Christmas"),
    ("next_trading_day", "2024-11-25", "daily", "2024-11-26", "Monday -> Tuesday"),
    ("next_trading_day", "2024-12-31", "daily", "2025-01-02", "over New Year"),
    ("next_friday", "2024-11-25", "daily", "2024-11-29", "early-close Friday"),
    ("next_friday", "2024-11-29", "daily", "2024-12-06", "on a Friday: the next one"),
    ("next_friday", "2024-11-30", "daily", "2024-12-06", "Saturday"),
    ("next_friday", "2024-03-25", "daily", "2024-03-28", "Good Friday 2024 -> Thursday"),
    ("next_friday", "2025-04-14", "weekly", "2025-04-17", "Good Friday 2025 -> Thursday"),
    ("next_friday", "2025-04-17", "daily", "2025-04-17", "the Thursday before Good Friday is that week's expiry"),
    ("next_friday", "2020-06-29", "weekly", "2020-07-02", "July 3 2020 holiday -> Thursday"),
    ("next_friday", "2026-06-29", "weekly", "2026-07-02", "July 3 2026 (observed) -> Thursday"),
    ("next_friday", "2021-12-20", "weekly", "2021-12-23", "Christmas observed Friday 2021-12-24"),
    ("next_friday", "2021-12-27", "weekly", "2021-12-31", "New Year's Eve 2021 is a trading Friday"),
    ("next_friday", "2020-12-21", "weekly", "2020-12-24", "Christmas 2020 Friday -> Christmas Eve"),
    ("next_friday", "2026-06-15", "weekly", "2026-06-18", "Juneteenth 2026 Friday"),
    ("next_friday", "2024-11-25", "monthly", "2024-12-20", "monthly-only: the next Friday with an expiry"),
    ({"weekly": 0}, "2024-11-25", "weekly", "2024-11-29", "this week's"),
    ({"weekly": 0}, "2024-11-29", "weekly", "2024-11-29", "on the Friday itself"),
    ({"weekly": 0}, "2024-11-30", "weekly", "2024-12-06", "Saturday: this week's has passed"),
    ({"weekly": 1}, "2024-11-25", "weekly", "2024-12-06", "next week's"),
    ({"weekly": 2}, "2024-11-25", "daily", "2024-12-13", ""),
    ({"weekly": 0}, "2025-04-14", "weekly", "2025-04-17", "Good Friday week"),
    ({"weekly": 1}, "2025-04-07", "weekly", "2025-04-17", "Good Friday week, one ahead"),
    ({"weekly": 1}, "2020-12-21", "weekly", "2020-12-31", "New Year's Day 2021 Friday -> Thursday"),
    ({"weekly": 0}, "2026-06-19", "weekly", "2026-06-26", "Juneteenth Friday: its expiry was Thursday"),
    ("monthly", "2024-03-01", "monthly", "2024-03-15", "March 2024: Good Friday is the fifth Friday"),
    ("monthly", "2024-03-16", "monthly", "2024-04-19", "March's has passed"),
    ("monthly", "2024-03-15", "monthly", "2024-03-15", "on the day"),
    ("monthly", "2025-04-01", "daily", "2025-04-17", "Good Friday 2025 is the third Friday"),
    ("monthly", "2025-04-17", "weekly", "2025-04-17", ""),
    ("monthly", "2025-04-18", "weekly", "2025-05-16", ""),
    ("monthly", "2026-06-01", "weekly", "2026-06-18", "Juneteenth 2026 is the third Friday"),
    ("monthly", "2019-04-01", "monthly", "2019-04-18", "Good Friday 2019-04-19 is the third Friday"),
    ("monthly", "2024-12-21", "monthly", "2025-01-17", "over the year"),
    ("monthly", "2024-11-01", "quarterly", "2024-12-20", "quarterly cycle: December's"),
    ({"dte": [0, 10], "prefer": "nearest"}, "2024-12-02", "weekly", "2024-12-06", ""),
    ({"dte": [0, 10], "prefer": "farthest"}, "2024-12-02", "weekly", "2024-12-06", "12-13 is 11 days out"),
    ({"dte": [0, 11], "prefer": "farthest"}, "2024-12-02", "weekly", "2024-12-13", ""),
    ({"dte": [0, 0]}, "2024-12-02", "daily", "2024-12-02", "dte 0 is 0dte on a trading day"),
    ({"dte": [1, 3]}, "2024-12-24", "daily", "2024-12-26", "skips Christmas"),
    ({"dte": [25, 45], "prefer": "farthest"}, "2025-03-10", "monthly", "2025-04-17", ""),
    ({"dte": [25, 45], "prefer": "nearest"}, "2025-03-10", "weekly", "2025-04-04", ""),
]


@pytest.mark.parametrize("cal", CALENDARS, ids=lambda c: c.name)
@pytest.mark.parametrize("rule,today,cycle,expected,why", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_resolve_real_dates(cal, rule, today, cycle, expected, why):
    assert resolve(rule, D(today), cal, cycle=cycle) == D(expected), why


def test_monday_0dte_with_a_datetime_is_that_monday():
    # the classic bug: a "next Friday" helper turned 0DTE into a four-day swing trade
    monday = dt.datetime(2024, 11, 25, 10, 5, tzinfo=ET)
    assert resolve("0dte", monday, CBOE) == D("2024-11-25")
    assert resolve("0dte", monday.replace(tzinfo=None), "CBOE_Index_Options") == D("2024-11-25")
    assert resolve("next_friday", monday, CBOE) == D("2024-11-29")
    # 00:30 UTC on Tuesday is still Monday evening in Chicago, where CBOE keeps its calendar
    assert resolve("0dte", dt.datetime(2024, 11, 26, 0, 30, tzinfo=dt.timezone.utc), CBOE) == D("2024-11-25")
    assert resolve("0dte", pd.Timestamp("2024-11-25 15:00", tz="America/New_York"), NYSE) == D("2024-11-25")


def test_no_expiry_names_the_window():
    with pytest.raises(NoExpiry, match=r"no expiry between 2024-12-21 and 2024-12-22 \(1 to 2 calendar days"):
        resolve({"dte": [1, 2]}, D("2024-12-20"), CBOE, cycle="monthly")
    with pytest.raises(NoExpiry) as err:
        resolve({"weekly": 0}, D("2024-12-02"), CBOE, cycle="monthly")
    assert err.value.today == D("2024-12-02") and err.value.rule == ExpiryRule("weekly", weeks=0)
    assert "2024-12-06" in str(err.value)
    with pytest.raises(NoExpiry, match="no listed expiry on or after 2024-12-03"):
        resolve("0dte", D("2024-12-03"), CBOE, listed=[D("2024-12-02")])
    with pytest.raises(NoExpiry, match="listed expiries 2024-12-04"):
        resolve("monthly", D("2024-12-03"), CBOE, listed=["2024-12-04"])


def test_listed_expiries_restrict_choices():
    listed = ["2024-11-25", "2024-11-27", "2024-11-29", "2024-12-06", "2024-12-20"]  # M/W/F-ish chain
    assert resolve("0dte", D("2024-11-26"), CBOE, listed=listed) == D("2024-11-27")
    assert resolve("next_trading_day", D("2024-11-27"), CBOE, listed=listed) == D("2024-11-29")
    assert resolve({"weekly": 1}, D("2024-11-26"), CBOE, listed=listed) == D("2024-12-06")
    with pytest.raises(NoExpiry, match="2024-12-13"):
        resolve({"weekly": 2}, D("2024-11-26"), CBOE, listed=listed)
    assert resolve("monthly", D("2024-11-26"), CBOE, listed=listed) == D("2024-12-20")
    assert resolve({"dte": [3, 30], "prefer": "farthest"}, D("2024-11-26"), CBOE, listed=listed) == D("2024-12-20")
    # the Thursday that replaces Good Friday, when the chain lists it
    assert resolve("next_friday", D("2025-04-14"), CBOE, listed=[D("2025-04-17"), D("2025-04-25")]) == D("2025-04-17")
    assert resolve("next_friday", D("2025-04-14"), CBOE, listed=[D("2025-04-16"), D("2025-04-25")]) == D("2025-04-25")


@pytest.fixture(scope="module")
def spxw_chain():
    if not CHAIN.exists():
        pytest.skip(f"chain data not found: {CHAIN}")
    frame = pd.read_csv(CHAIN, usecols=lambda c: c.strip().lstrip("\ufeff") in ("expiration", "quotedate"))
    frame.columns = [c.strip().lstrip("\ufeff") for c in frame.columns]
    frame = frame.drop_duplicates()
    quote = pd.to_datetime(frame["quotedate"], format="%m/%d/%Y").dt.date
    expiry = pd.to_datetime(frame["expiration"], format="%m/%d/%Y").dt.date
    by_quote: dict[dt.date, list[dt.date]] = {}
    for q, e in zip(quote, expiry):
        by_quote.setdefault(q, []).append(e)
    # the file quotes each day's nearest end-of-month SPXW only; the chain's expiries are all of them
    return {"expiries": sorted(set(expiry)), "by_quote": {q: sorted(set(v)) for q, v in by_quote.items()}}


def test_spxw_chain_dte_windows(spxw_chain):
    jan2 = spxw_chain["expiries"]
    assert jan2 == [D("2018-01-31"), D("2018-02-28")]
    assert resolve({"dte": [25, 35]}, D("2018-01-02"), CBOE, listed=jan2) == D("2018-01-31")
    assert resolve({"dte": [50, 60]}, D("2018-01-02"), CBOE, listed=jan2) == D("2018-02-28")
    assert resolve({"dte": [0, 60], "prefer": "farthest"}, D("2018-01-02"), CBOE, listed=jan2) == D("2018-02-28")
    assert resolve({"dte": [0, 60], "prefer": "nearest"}, D("2018-01-02"), CBOE, listed=jan2) == D("2018-01-31")
    with pytest.raises(NoExpiry, match=r"between 2018-01-12 and 2018-01-22.*listed expiries 2018-01-31, 2018-02-28"):
        resolve({"dte": [10, 20]}, D("2018-01-02"), CBOE, listed=jan2)
    # end-of-month SPXW expiries are not the standard monthly
    with pytest.raises(NoExpiry, match="third Friday"):
        resolve("monthly", D("2018-01-02"), CBOE, listed=jan2)


def test_spxw_chain_every_quote_date(spxw_chain):
    listed = spxw_chain["expiries"]
    assert len(spxw_chain["by_quote"]) == 40
    for quote, quoted in spxw_chain["by_quote"].items():
        assert CBOE.is_trading_day(quote), quote
        got = resolve("0dte", quote, CBOE, listed=listed)
        assert [got] == quoted                    # the expiry the file quotes that day
        assert resolve("0dte", quote, CBOE, listed=quoted) == got
        dte = (got - quote).days
        assert resolve({"dte": [dte, dte + 3]}, quote, CBOE, listed=listed) == got
    assert resolve("0dte", D("2018-01-31"), CBOE, listed=listed) == D("2018-01-31")
    assert resolve("next_trading_day", D("2018-01-31"), CBOE, listed=listed) == D("2018-02-28")
    with pytest.raises(NoExpiry, match="no expiry on or after 2018-03-01: no listed expiry on or after "
                                       r"2018-03-01 \(last 2018-02-28\)"):
        resolve("next_trading_day", D("2018-02-28"), CBOE, listed=listed)


# ---- preview, cycles, parse_rule --------------------------------------------------------------------

def test_preview_over_thanksgiving():
    rows = preview("0dte", D("2024-11-27"), 6, CBOE, "daily")
    assert rows == [(D("2024-11-27"), D("2024-11-27")), (D("2024-11-28"), D("2024-11-29")),
                    (D("2024-11-29"), D("2024-11-29")), (D("2024-11-30"), D("2024-12-02")),
                    (D("2024-12-01"), D("2024-12-02")), (D("2024-12-02"), D("2024-12-02"))]
    rows = preview({"dte": [1, 1]}, "2024-11-27", 3, "CBOE_Index_Options", "daily")
    assert rows[0] == (D("2024-11-27"), "expiry {dte: [1, 1], prefer: nearest} on 2024-11-27 (Wed): no expiry "
                       "between 2024-11-28 and 2024-11-28 (1 to 1 calendar days to expiry) among daily "
                       "expiries on CBOE_Index_Options")
    assert rows[1] == (D("2024-11-28"), D("2024-11-29"))
    assert preview("monthly", D("2024-01-01"), 0, CBOE, "monthly") == []


def test_cycle_expiries():
    assert cycle_expiries("weekly", CBOE, "2025-04-01", "2025-04-30") == [
        D("2025-04-04"), D("2025-04-11"), D("2025-04-17"), D("2025-04-25")]
    assert cycle_expiries("monthly", CBOE, "2026-01-01", "2026-12-31") == [
        D(x) for x in ["2026-01-16", "2026-02-20", "2026-03-20", "2026-04-17", "2026-05-15", "2026-06-18",
                       "2026-07-17", "2026-08-21", "2026-09-18", "2026-10-16", "2026-11-20", "2026-12-18"]]
    assert cycle_expiries("quarterly", CBOE, "2026-01-01", "2026-12-31") == [
        D("2026-03-20"), D("2026-06-18"), D("2026-09-18"), D("2026-12-18")]
    assert cycle_expiries("daily", CBOE, "2024-11-27", "2024-12-02") == [D("2024-11-27"), D("2024-11-29"), D("2024-12-02")]
    assert weekly_expiry("2021-12-22", CBOE) == D("2021-12-23")
    assert monthly_expiry(2025, 4, "NYSE") == D("2025-04-17")
    with pytest.raises(ValueError, match="unknown expiry cycle 'weakly' \\(did you mean 'weekly'"):
        resolve("0dte", D("2024-11-25"), CBOE, cycle="weakly")


@pytest.mark.parametrize("value,expected", [
    ("0dte", ExpiryRule("0dte")), ("0DTE", ExpiryRule("0dte")), ("next_trading_day", ExpiryRule("next_trading_day")),
    ("next_friday", ExpiryRule("next_friday")), ("monthly", ExpiryRule("monthly")),
    ({"weekly": 0}, ExpiryRule("weekly", weeks=0)), ({"weekly": 3}, ExpiryRule("weekly", weeks=3)),
    ({"dte": [25, 35]}, ExpiryRule("dte", dte_min=25, dte_max=35, prefer="nearest")),
    ({"dte": [0, 7], "prefer": "farthest"}, ExpiryRule("dte", dte_min=0, dte_max=7, prefer="farthest")),
])
def test_parse_rule_accepts(value, expected):
    assert parse_rule(value) == expected
    assert parse_rule(parse_rule(value)) == expected


@pytest.mark.parametrize("value,message", [
    ("0-dte", "did you mean '0dte'"), ("next_firday", "did you mean 'next_friday'"),
    ("weekly", r"\{weekly: 0\}"), ("tomorrow", "unknown expiry rule 'tomorrow'"),
    ({"weekly": -1}, "N >= 0"), ({"weekly": 1.5}, "whole number"), ({"weekly": True}, "whole number"),
    ({"weekly": 1, "dte": [1, 2]}, "no other keys"),
    ({"dte": [35, 25]}, "min <= max"), ({"dte": [-1, 5]}, "min <= max"), ({"dte": 7.5}, r"\[min, max\]"), ({"dte": -1}, "N >= 0"),
    ({"dte": [1, 2, 3]}, r"\[min, max\]"), ({"dte": [1, 2], "prefer": "closest"}, "nearest or farthest"),
    ({"dte": [1, 2], "pick": "nearest"}, "unknown keys"), ({"days": 3}, "weekly: N"), (7, "name or a mapping"),
    (None, "name or a mapping"),
])
def test_parse_rule_rejects(value, message):
    with pytest.raises(ValueError, match=message):
        parse_rule(value)


# ---- properties -------------------------------------------------------------------------------

days = st.dates(min_value=dt.date(2018, 1, 1), max_value=dt.date(2026, 11, 30))
calendars = st.sampled_from(CALENDARS)
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(days, calendars, st.sampled_from(["daily", "weekly"]))
def test_prop_0dte_never_before_today_and_a_trading_day(today, cal, cycle):
    got = resolve("0dte", today, cal, cycle=cycle)
    assert got >= today and cal.is_trading_day(got)
    if cycle == "daily":
        assert got == cal.next_trading_day(today, inclusive=True)
        assert (got == today) == cal.is_trading_day(today)
    # nothing in between was an expiry
    assert cycle_expiries(cycle, cal, today, got) == [got]
    nxt = resolve("next_trading_day", today, cal, cycle=cycle)
    assert nxt > today and nxt >= got and cal.is_trading_day(nxt)


@PROPS
@given(days, calendars, st.sampled_from(["daily", "weekly"]))
def test_prop_next_friday_within_a_week(today, cal, cycle):
    got = resolve("next_friday", today, cal, cycle=cycle)
    assert 0 <= (got - today).days <= 7
    assert cal.is_trading_day(got)
    friday = got + dt.timedelta(days=(4 - got.weekday()) % 7)
    assert got.weekday() == 4 or (got.weekday() == 3 and not cal.is_trading_day(friday)), got
    assert friday > today


@PROPS
@given(days, calendars, st.sampled_from(["daily", "weekly", "monthly"]))
def test_prop_monthly_in_the_third_week(today, cal, cycle):
    got = resolve("monthly", today, cal, cycle=cycle)
    assert got >= today and cal.is_trading_day(got)
    first = got.replace(day=1)
    third_friday = first + dt.timedelta(days=(4 - first.weekday()) % 7 + 14)
    assert 15 <= third_friday.day <= 21
    assert got == third_friday or (got.weekday() == 3 and got == third_friday - dt.timedelta(days=1)
                                   and not cal.is_trading_day(third_friday))
    # it is this month's unless this month's has passed
    this_month = monthly_expiry(today.year, today.month, cal)
    assert got == this_month if this_month >= today else got.month != today.month


@PROPS
@given(days, calendars, st.integers(min_value=0, max_value=4))
def test_prop_weekly_steps_one_week(today, cal, n):
    a = resolve({"weekly": n}, today, cal, cycle="weekly")
    b = resolve({"weekly": n + 1}, today, cal, cycle="weekly")
    assert a >= today and 6 <= (b - a).days <= 8
    assert max(0, 7 * n - 1) <= (a - today).days <= 7 * n + 7
    assert a == weekly_expiry(a, cal)


@PROPS
@given(days, calendars, st.integers(min_value=0, max_value=40), st.integers(min_value=0, max_value=20),
       st.sampled_from(["nearest", "farthest"]), st.sampled_from(["daily", "weekly", "monthly"]))
def test_prop_dte_window(today, cal, lo, width, prefer, cycle):
    rule = {"dte": [lo, lo + width], "prefer": prefer}
    inside = [e for e in cycle_expiries(cycle, cal, today, today + dt.timedelta(days=lo + width))
              if lo <= (e - today).days <= lo + width]
    if not inside:
        with pytest.raises(NoExpiry, match="no expiry between"):
            resolve(rule, today, cal, cycle=cycle)
    else:
        assert resolve(rule, today, cal, cycle=cycle) == (inside[0] if prefer == "nearest" else inside[-1])
