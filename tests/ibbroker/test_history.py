"""History: IB's pacing rules, 162 told apart by its text, bars kept up to date as they
complete. Against the simulator replaying XSP's real minute bars of 2019-11-08 (scenario 16 of
IB_BEHAVIOUR.md), plus the pacing rules as pure waits."""

from __future__ import annotations

import datetime as dt
import math
import re
import time

import pytest
from ib_async import IB, Index, Stock

from engine.brokers import events
from engine.brokers.ib.connection import Connection, IBConfig
from engine.brokers.ib.history import (Bar, History, HistoryError, Pacer, bar_size_seconds, duration_covering,
                                       to_bars)

NS = 1_000_000_000


def ny(text: str) -> int:
    from zoneinfo import ZoneInfo
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("America/New_York")).timestamp()) * NS


class Sink(list):
    def __call__(self, event):
        self.append(event)

    def errors(self, code):
        return [e.message for e in self if isinstance(e, events.BrokerError) and e.code == code]


@pytest.fixture
def fast(make_sim):
    """A simulator at 600x (a minute bar completes every 0.1 s) some minutes into the session."""
    sim = make_sim(speed=600)
    sim.advance(600)
    return sim


def xsp(ib):
    return ib.qualifyContracts(Index("XSP", "CBOE"))[0]


def duration(message) -> str:
    """The durationStr of a reqHistoricalData the simulator received."""
    return next(f for f in message["fields"] if re.fullmatch(r"\d+ [SDWMY]", f))


def history(ib, sim, sink, **kw):
    kw.setdefault("identical_window", 0.3)
    kw.setdefault("pacing_backoff", 0.1)
    return History(ib, sink, now_ns=sim.clock.now_ns, **kw)


# ---------------------------------------------------------------------------- pure pieces
def test_the_pacing_rules_as_waits_with_ibs_15_seconds():
    p = Pacer()
    key, series = ("XSP", "", "1800 S", "1 min", "TRADES", True), ("XSP", "TRADES")
    assert p.wait(key, series, False, 0.0) == 0
    p.sent(key, series, False, 0.0)
    assert p.wait(key, series, False, 10.0) == pytest.approx(5.5)   # no identical request within 15 s
    assert p.wait(key, series, False, 15.0) == pytest.approx(0.5)   # (and half a second for the way to IB)
    assert p.wait(key, series, False, 15.5) == 0
    other = ("XSP", "", "3600 S", "1 min", "TRADES", True)
    assert p.wait(other, series, False, 1.0) == 0                   # a different request may go at once
    small = Pacer()
    for k in range(5):  # 5-second bars: at most 5 for one contract and type within 2 s
        small.sent(("XSP", k), series, True, k * 0.1)
    assert small.wait(("XSP", 9), series, True, 0.5) == pytest.approx(1.5)
    assert small.wait(("XSP", 9), ("SPY", "TRADES"), True, 0.5) == 0
    many = Pacer()
    for k in range(60):  # at most 60 small-bar requests within 10 minutes
        many.sent(("S", k), (k, "TRADES"), True, k * 3.0)
    assert many.wait(("S", 99), (99, "TRADES"), True, 180.0) == pytest.approx(420.0)
    assert many.wait(("S", 99), (99, "TRADES"), False, 180.0) == 0  # bars over 30 s are not counted


def test_bar_sizes_durations_and_bar_conversion():
    assert bar_size_seconds("5 secs") == 5 and bar_size_seconds("1 min") == 60 and bar_size_seconds("1 day") == 86400
    assert bar_size_seconds("4 hours") == 4 * 3600 and bar_size_seconds("1 week") == 7 * 86400
    for wrong in ("7 minutes", "7 mins", "1 mins", "1min"):
        with pytest.raises(HistoryError, match=f"bar size '{wrong}' is not one of IB's"):
            bar_size_seconds(wrong)
    assert duration_covering(125.2, 60) == "126 S" and duration_covering(3 * 86400, 60) == "3 D"
    from ib_async import BarData
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("America/New_York")
    day = BarData(date=dt.date(2019, 11, 8), open=1.0, high=2.0, low=0.5, close=1.5, volume=-1)
    bad = BarData(date=dt.date(2019, 11, 11), open=-1.0, high=2.0, low=0.5, close=math.nan, volume=10)
    (bar,) = to_bars([day, bad], 86400, tz)
    assert bar.start == ny("2019-11-08T00:00:00") and bar.end == bar.start + 86400 * NS
    assert math.isnan(bar.volume)  # IB's -1: no volume, not a number of shares


# ---------------------------------------------------------------------------- against the simulator
def test_bars_are_the_venues_bars_in_ns_utc_and_an_identical_request_is_not_sent_twice(fast, connect):
    ib = connect(fast)
    h = history(ib, fast, Sink(), identical_window=15.0)
    bars = h.bars(xsp(ib), "1800 S", "1 min")
    assert len(bars) >= 9
    first = bars[0]
    # XSP.csv, 2019-11-08 09:30: 308.125, 308.193, 308.107, 308.147, 1009601
    assert first == Bar(ny("2019-11-08T09:30:00"), ny("2019-11-08T09:31:00"), 308.125, 308.193, 308.107, 308.147,
                        1009601.0)
    assert all(b.end - b.start == 60 * NS for b in bars)
    assert [b.start for b in bars] == sorted({b.start for b in bars})
    assert h.bars(xsp(ib), "1800 S", "1 min") == bars  # within 15 s: the first answer, not a second request
    assert len(fast.messages("reqHistoricalData")) == 1
    h.bars(xsp(ib), "3600 S", "1 min")
    assert len(fast.messages("reqHistoricalData")) == 2


def test_a_pacing_violation_burst_is_retried_until_the_bars_come(fast, connect, expect_errors):
    """Scenario 16: the simulator answers the next two requests with 162 "pacing violation". The
    request is made again after a backoff until the bars come, never identical within the
    window (0.3 s here, IB's 15 s in production), and the violation is said once."""
    expect_errors(162)
    ib = connect(fast)
    sink = Sink()
    h = history(ib, fast, sink, identical_window=0.3, pacing_backoff=0.1)
    contract = xsp(ib)
    fast.pacing_violation(count=2)
    bars = h.bars(contract, "1800 S", "1 min")
    assert len(bars) >= 9 and bars[0].open == 308.125
    sent = fast.messages("reqHistoricalData")
    assert len(sent) == 3
    # the simulator's receive times: 0.3 s apart less a scheduling allowance on a loaded machine
    # (a client that ignored the window would resend after the 0.1 s backoff)
    assert all(b["wall"] - a["wall"] >= 0.2 for a, b in zip(sent, sent[1:]))
    assert len([e for e in fast.events if e["kind"] == "pacing_violation"]) == 2
    assert len(sink.errors(162)) == 1 and "pacing violation (IB 162)" in sink.errors(162)[0]


def test_a_wait_the_pacing_rules_impose_is_said_before_it_is_waited(fast, connect):
    """IB's rules allow a request only later (here a stand-in pacer says 1.2 s): the wait is said
    (no code of IB's: the run's own), then waited, then the bars come."""
    ib = connect(fast)
    sink = Sink()
    h = history(ib, fast, sink)

    class Pacer:
        waits = [1.2]

        def wait(self, *args):
            return self.waits.pop() if self.waits else 0.0

        def sent(self, *args):
            pass
    h.pacer = Pacer()
    t0 = time.monotonic()
    bars = h.bars(xsp(ib), "1800 S", "1 min")
    assert bars and time.monotonic() - t0 >= 1.2
    said = sink.errors(0)
    assert len(said) == 1 and said[0].startswith("XSP 1 min bars (1800 S): IB's historical-data pacing rules allow "
                                                 "this request in 1 s: waiting"), said


def test_pacing_violations_past_the_deadline_are_a_history_error(fast, connect, expect_errors):
    expect_errors(162)
    ib = connect(fast)
    h = history(ib, fast, Sink(), identical_window=0.1, pacing_backoff=0.1, pacing_deadline=0.6)
    fast.pacing_violation(count=100)
    t0 = time.monotonic()
    with pytest.raises(HistoryError, match=r"kept answering with pacing violations \(IB 162\) for 0.6 s") as err:
        h.bars(xsp(ib), "1800 S", "1 min")
    assert err.value.transient and time.monotonic() - t0 < 1.5


def test_no_data_is_final_and_other_errors_are_plain(fast, connect, expect_errors):
    expect_errors(162, 200)
    ib = connect(fast)
    h = history(ib, fast, Sink())
    spy = ib.qualifyContracts(Stock("SPY", "SMART", "USD"))[0]
    assert h.bars(spy, "1800 S", "1 min") == []  # daily bars only: "HMDS query returned no data"
    assert len(fast.messages("reqHistoricalData")) == 1  # not asked again
    with pytest.raises(HistoryError) as err:
        h.bars(Stock("ZZZZ", "SMART", "USD"), "1 D", "1 day")
    assert str(err.value).startswith("ZZZZ 1 day bars (1 D): IB has no security definition for this contract (IB 200)")
    with pytest.raises(HistoryError, match="bar size '7 mins' is not one of IB's"):
        h.bars(spy, "1 D", "7 mins")


def test_a_stream_hands_out_each_completed_bar_once_in_order(fast, connect):
    ib = connect(fast)
    h = history(ib, fast, Sink())
    stream = h.stream(xsp(ib), "1 min", "600 S")
    got = h.completed(stream)
    assert got and got[0].start >= ny("2019-11-08T09:30:00")
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        ib.sleep(0.05)
        got += h.completed(stream)
    starts = [b.start for b in got]
    assert len(starts) >= 15 and all(b - a == 60 * NS for a, b in zip(starts, starts[1:]))
    # a bar is handed out once it has ended at the venue (the simulator pushes completed bars only;
    # IB's last bar is still forming until the venue's time passes its end)
    assert all(b.end <= fast.clock.now_ns() for b in got)
    assert starts[-1] >= stream.bars[-1].date.timestamp() * NS - 60 * NS
    h.cancel(stream)
    assert h.completed(stream) == []


def test_a_stream_is_requested_again_after_1101_without_a_gap_or_a_repeat(fast, expect_errors):
    """After 1100 -> 1101 (data lost: the simulator stops the keepUpToDate bars) the
    connection's data-lost listener requests the stream again for the gap; the bars handed out
    stay one minute apart, none missing, none twice."""
    expect_errors(1100, 1101)
    conn = Connection(IB(), IBConfig(port=fast.port, heartbeat_idle=0), Sink())
    conn.connect()
    conn.mark_ready()
    try:
        ib = conn.ib
        h = history(ib, fast, Sink())
        conn.on_data_lost(h.resubscribe)
        stream = h.stream(xsp(ib), "1 min", "600 S")
        got = h.completed(stream)

        def run(seconds):
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                conn.check()
                h.check()
                got.extend(h.completed(stream))
                conn.sleep(0.05)
        run(0.3)
        fast.connectivity(1100)
        run(0.3)
        fast.connectivity(1101)
        run(0.8)
        starts = [b.start for b in got]
        assert all(b - a == 60 * NS for a, b in zip(starts, starts[1:]))
        assert (starts[-1] - starts[0]) / (60 * NS) >= 15
        asked = [duration(m) for m in fast.messages("reqHistoricalData")]
        assert asked[0] == "600 S" and len(asked) == 2
        assert int(asked[1].split()[0]) < 600  # the stream again for just the gap since the last bar
    finally:
        conn.close()


def test_a_stream_ib_stopped_with_10182_is_requested_again(fast, connect, expect_errors):
    expect_errors(10182)
    ib = connect(fast)
    h = history(ib, fast, Sink())
    stream = h.stream(xsp(ib), "1 min", "600 S")
    got = h.completed(stream)
    fast.inject_error(stream.bars.reqId, 10182, "Failed to request live updates (disconnected).")
    end = time.monotonic() + 0.8
    while time.monotonic() < end:
        ib.sleep(0.05)
        h.check()
        got += h.completed(stream)
    assert len(fast.messages("reqHistoricalData")) == 2
    starts = [b.start for b in got]
    assert all(b - a == 60 * NS for a, b in zip(starts, starts[1:])) and len(starts) >= 12
