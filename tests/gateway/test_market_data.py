"""Market data: snapshot and streaming ticks, option greeks, market data types 1-4 with delayed
ticks, 354/10167, historical bars, keepUpToDate, pacing (162)."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from ib_async import Index, Option, Stock


def test_snapshot_has_bid_ask_last_sizes_from_the_replayed_bars(ib, sim):
    spy = ib.qualifyContracts(Stock("SPY", "SMART", "USD"))[0]
    t = ib.reqTickers(spy)[0]
    assert 0 < t.bid < t.last < t.ask and t.ask - t.bid <= 0.10
    assert t.bidSize > 0 and t.askSize > 0 and t.volume > 0
    assert t.close == pytest.approx(267.87)  # SPY's close on 2017-12-28, the day before its last bar
    last_bar = sim.series["SPY"].c[-1]
    assert abs(t.last - last_bar) < 0.05  # the sample ends in 2017; the clock is in 2019: last close


def test_streaming_ticks_follow_the_clock(make_sim, connect):
    sim = make_sim(speed=600)
    ib = connect(sim)
    xsp = ib.qualifyContracts(Index("XSP", "CBOE"))[0]
    ticker = ib.reqMktData(xsp)
    ib.sleep(0.3)
    seen = set()
    for _ in range(20):
        ib.sleep(0.1)
        seen.add(ticker.last)
    assert len(seen) > 3, "an index replayed at 600x should move every tick"
    assert math.isnan(ticker.bid)  # indices have no bid/ask at IB
    ib.cancelMktData(xsp)
    ib.sleep(0.1)
    assert len(sim.messages("cancelMktData")) == 1
    assert all(not s.lines for s in sim.sessions)


def test_option_ticks_carry_greeks(ib):
    spy = ib.qualifyContracts(Stock("SPY", "SMART", "USD"))[0]
    chain = ib.reqSecDefOptParams("SPY", "", "STK", spy.conId)[0]
    expiry = chain.expirations[3]
    call, put = ib.qualifyContracts(Option("SPY", expiry, 267, "C", "SMART"), Option("SPY", expiry, 267, "P", "SMART"))
    tc, tp = ib.reqTickers(call, put)
    for t in (tc, tp):
        g = t.modelGreeks
        assert g is not None and 0.05 < g.impliedVol < 1.5 and g.undPrice == pytest.approx(266.86, abs=0.5)
        assert 0 < t.bid < t.ask
        assert g.gamma > 0 and g.vega > 0 and g.theta < 0
    assert 0.3 < tc.modelGreeks.delta < 0.7 and -0.7 < tp.modelGreeks.delta < -0.3


def test_not_entitled_live_is_354_and_delayed_is_10167_with_delayed_ticks(ib, sim, expect_errors, error_guard):
    expect_errors(354)
    sim.set_entitlement("AAPL", live=False)
    aapl = ib.qualifyContracts(Stock("AAPL", "SMART", "USD"))[0]
    t = ib.reqTickers(aapl)[0]
    assert math.isnan(t.bid) and math.isnan(t.last)
    assert 354 in error_guard.codes()
    ib.reqMarketDataType(3)
    t = ib.reqMktData(aapl)
    ib.sleep(0.3)
    assert t.marketDataType == 3 and t.last > 0 and t.bid > 0
    assert any(tick.tickType in (66, 67, 68) for tick in t.ticks) or t.bid > 0
    assert any(e["code"] == 10167 for e in sim.events if e["kind"] == "error")
    ib.reqMarketDataType(4)
    spy = ib.qualifyContracts(Stock("SPY", "SMART", "USD"))[0]
    frozen = ib.reqTickers(spy)[0]
    assert frozen.last > 0  # entitled: live data, the market is open at 09:30


def test_historical_bars_are_the_replayed_minutes_up_to_now(make_sim, connect):
    sim = make_sim(start="2019-11-07 12:00")
    ib = connect(sim)
    xsp = ib.qualifyContracts(Index("XSP", "CBOE"))[0]
    bars = ib.reqHistoricalData(xsp, "", "3600 S", "1 min", "TRADES", True)
    assert 55 <= len(bars) <= 61
    src = sim.series["XSP"].frame
    first = bars[0]
    row = src.loc[src.index == first.date]
    assert len(row) == 1 and row["open"].iloc[0] == pytest.approx(first.open)
    assert bars[-1].date <= sim.now()
    five = ib.reqHistoricalData(xsp, "20191106 16:00:00 US/Eastern", "1 D", "5 mins", "TRADES", True)
    assert len(five) == 78
    spy = ib.qualifyContracts(Stock("SPY", "SMART", "USD"))[0]
    daily = ib.reqHistoricalData(spy, "", "2 Y", "1 day", "TRADES", True)
    assert len(daily) >= 20 and all(b.volume > 0 for b in daily)
    assert str(daily[-1].date) == "2017-12-29"  # the sample's SPY ends there; nothing is invented after it


def test_keep_up_to_date_pushes_the_current_bar(make_sim, connect):
    sim = make_sim(speed=300, start="2019-11-08 10:30")
    ib = connect(sim)
    xsp = ib.qualifyContracts(Index("XSP", "CBOE"))[0]
    bars = ib.reqHistoricalData(xsp, "", "1800 S", "1 min", "TRADES", True, keepUpToDate=True)
    n0 = len(bars)
    updates = []
    bars.updateEvent += lambda b, has_new: updates.append(has_new)
    ib.sleep(1.5)
    assert updates and len(bars) > n0  # 1.5 s at 300x is 7.5 minutes
    ib.cancelHistoricalData(bars)


def test_historical_pacing_violation_is_162(make_sim, connect, expect_errors, error_guard):
    expect_errors(162)
    sim = make_sim(start="2019-11-08 12:00")
    ib = connect(sim)
    xsp = ib.qualifyContracts(Index("XSP", "CBOE"))[0]
    first = ib.reqHistoricalData(xsp, "", "1800 S", "1 min", "TRADES", True)
    assert first
    again = ib.reqHistoricalData(xsp, "", "1800 S", "1 min", "TRADES", True)  # identical within 15 s
    assert len(again) == 0
    assert error_guard.codes() == [162]
    sim.pacing_violation(1)
    assert len(ib.reqHistoricalData(xsp, "", "3600 S", "1 min", "TRADES", True)) == 0
    texts = [e["text"] for e in sim.events if e["kind"] == "error"]
    assert all("pacing violation" in t for t in texts if "Historical" in t)
    assert ib.reqHistoricalData(xsp, "", "7200 S", "1 min", "TRADES", True)


def test_frozen_data_after_the_close_and_delayed_prices_are_15_minutes_old(make_sim, connect):
    sim = make_sim(start="2019-11-07 17:30")
    ib = connect(sim)
    spy = ib.qualifyContracts(Stock("SPY", "SMART", "USD"))[0]
    ib.reqMarketDataType(2)
    t = ib.reqTickers(spy)[0]
    assert t.marketDataType == 2 and t.last > 0  # the market is closed: frozen at the last values
    sim2 = make_sim(start="2019-11-08 11:00")
    ib2 = connect(sim2, clientId=2)
    sim2.set_entitlement("SPX", live=False)
    ib2.reqMarketDataType(3)
    spx = ib2.qualifyContracts(Index("SPX", "CBOE"))[0]
    t = ib2.reqMktData(spx)
    types = set()
    t.updateEvent += lambda ticker: types.update(tick.tickType for tick in ticker.ticks)
    ib2.sleep(0.3)
    assert t.marketDataType == 3
    assert {68, 75} <= types and not types & {4, 9}
    inst = sim2.catalog.get(spx.conId)
    then = sim2.call(lambda: sim2.market.quote(inst, sim2.clock.now_ns() - 900 * 10 ** 9))
    assert t.last == pytest.approx(then.last, abs=0.5)
    assert abs(t.last - sim2.quote("SPX").last) > 0.01  # not today's live price


def test_futures_quote_from_their_bars_with_carry_and_the_micro_follows(make_sim, connect, nq_data):
    sim = make_sim(nq_data)
    ib = connect(sim)
    from ib_async import Future

    nq = sorted(ib.reqContractDetails(Future("NQ", exchange="CME")), key=lambda d: d.contract.lastTradeDateOrContractMonth)
    mnq = sorted(ib.reqContractDetails(Future("MNQ", exchange="CME")), key=lambda d: d.contract.lastTradeDateOrContractMonth)
    front, second = ib.reqTickers(nq[0].contract, nq[1].contract)
    micro = ib.reqTickers(mnq[0].contract)[0]
    series = sim.series["NQ"]
    price = series.price(sim.clock.now_ns())[0]
    assert front.last == pytest.approx(price, abs=0.25)
    assert front.ask - front.bid == pytest.approx(0.25) and front.bid <= front.last <= front.ask  # one tick
    assert second.last > front.last  # carry for the later month
    assert micro.last == pytest.approx(front.last, abs=0.25)


def test_six_small_bar_requests_in_two_seconds_is_a_pacing_violation(make_sim, connect, expect_errors):
    expect_errors(162)
    sim = make_sim(start="2019-11-08 12:00")
    ib = connect(sim)
    xsp = ib.qualifyContracts(Index("XSP", "CBOE"))[0]
    for i in range(6):
        ib.reqHistoricalData(xsp, "", f"{300 + i * 30} S", "30 secs", "TRADES", True)
    texts = [e["text"] for e in sim.events if e["kind"] == "error" and e["code"] == 162]
    assert len(texts) == 6
    assert all("HMDS query returned no data" in t for t in texts[:5])  # the sample has no 30 s bars
    assert "pacing violation" in texts[5]


def test_realtime_5_second_bars_follow_the_replayed_path(make_sim, connect):
    sim = make_sim(speed=120, start="2019-11-08 10:00")
    ib = connect(sim)
    xsp = ib.qualifyContracts(Index("XSP", "CBOE"))[0]
    bars = ib.reqRealTimeBars(xsp, 5, "TRADES", True)
    assert _wait_for(ib, lambda: len(bars) >= 6)
    times = [b.time for b in bars]
    assert all((b - a).total_seconds() == 5 for a, b in zip(times, times[1:]))
    for b in bars:
        assert b.low <= min(b.open_, b.close) and b.high >= max(b.open_, b.close)
        assert b.volume > 0
    src = sim.series["XSP"]
    t = int(times[0].timestamp() * 10 ** 9)
    assert bars[0].open_ == pytest.approx(src.price(t)[0], abs=0.011)
    ib.cancelRealTimeBars(bars)


def _wait_for(ib, cond, timeout=3.0):
    waited = 0.0
    while not cond() and waited < timeout:
        ib.sleep(0.05)
        waited += 0.05
    return cond()


def test_futures_bars_carry_like_their_quotes(make_sim, connect, nq_data):
    from ib_async import Future

    sim = make_sim(nq_data, start="2023-11-20 12:00")
    ib = connect(sim)
    nq = sorted(ib.reqContractDetails(Future("NQ", exchange="CME")), key=lambda d: d.contract.lastTradeDateOrContractMonth)
    front = ib.reqHistoricalData(nq[0].contract, "", "3600 S", "1 min", "TRADES", False)
    later = ib.reqHistoricalData(nq[1].contract, "", "3600 S", "1 min", "TRADES", False)
    assert len(front) == len(later) == 60
    src = sim.series["NQ"].frame
    assert front[-1].close == pytest.approx(src.loc[src.index == front[-1].date, "close"].iloc[0])
    days = (dt.datetime.strptime(nq[1].contract.lastTradeDateOrContractMonth, "%Y%m%d")
            - dt.datetime.strptime(nq[0].contract.lastTradeDateOrContractMonth, "%Y%m%d")).days
    assert later[-1].close == pytest.approx(front[-1].close * (1 + 0.05 * days / 365), abs=0.01)


def test_batched_option_quotes_equal_one_at_a_time(sim):
    opts = [i for i in sim.catalog.by_conid.values() if i.secType == "OPT"][:400]
    t = sim.clock.now_ns()
    assert sim.market.quotes(opts, t) == [sim.market.quote(o, t) for o in opts]


def test_options_quote_from_a_vendor_chain_file(make_sim, connect):
    from .conftest import shared_data

    path = shared_data("optionsuite", "aapl_sample_ivolatility.csv")
    sim = make_sim(chains=path, start="2014-08-08 10:00")
    ib = connect(sim)
    aapl = ib.qualifyContracts(Stock("AAPL", "SMART", "USD"))[0]
    chain = ib.reqSecDefOptParams("AAPL", "", "STK", aapl.conId)[0]
    assert chain.expirations[:2] == ["20140808", "20140816"]
    opt = ib.qualifyContracts(Option("AAPL", "20140816", 95, "C", "SMART"))[0]
    t = ib.reqTickers(opt)[0]
    from engine.market.chains import load_chains

    snap = load_chains(path, underlying="AAPL")
    snap = snap[min(snap)]  # 2014-08-07, the snapshot in force on the 8th at 10:00
    i = [k for k in range(len(snap)) if str(snap.expiry[k]) == "2014-08-16" and snap.strike[k] == 95
         and snap.right[k] == "C"][0]
    assert (t.bid, t.ask) == (snap.bid[i], snap.ask[i])
    assert t.modelGreeks.impliedVol == pytest.approx(snap.iv[i]) and t.modelGreeks.delta == pytest.approx(snap.delta[i])
    assert t.modelGreeks.undPrice == pytest.approx(94.48)  # the file's close of the 7th


def test_a_bad_chain_file_is_a_clear_error(tmp_path):
    from gatewaysim import DataError, GatewaySim

    with pytest.raises(DataError, match="--chains .*no such file"):
        GatewaySim(chains=tmp_path / "none.csv")
    bad = tmp_path / "chains.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not a usable option chain file"):
        GatewaySim(chains=bad)


def test_a_chain_file_from_another_year_is_refused_with_a_start_to_use():
    from gatewaysim import DataError, GatewaySim

    from .conftest import shared_data

    path = shared_data("optionsuite", "spx_sample_ivolatility.csv")
    with pytest.raises(DataError, match=r"every SPX option in it expired by 20131220.*--start '2011-01-03 10:00'"):
        GatewaySim(chains=path)  # the bundled sample's clock is in 2019
