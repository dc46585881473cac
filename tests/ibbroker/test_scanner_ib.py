"""The IB broker's market scanner (issue 12 item 4, a scanner's candidates from IB): one request
per call through ib_async's reqScannerSubscription with the filters as TagValue filter options,
held until IB's first list, cancelled (IB's 162 on the cancel is not a failure), paced, the rows
resolved through the instrument map, the ones nobody can trade or resolve dropped with a reason.
The real ib_async client over a socket against the gateway simulator."""

from __future__ import annotations

import copy

import pytest

from engine.brokers.ib.broker import IBBroker
from engine.brokers.ib.contracts import load_instruments
from engine.brokers.ib.scanner import ScanError, non_tradable, subscription_of
from engine.check.scan_model import IBScannerSource
from engine.runtime.trading import Connect

CANCELLED = "API scanner subscription cancelled"


def broker(sim, instruments=None, **kw) -> IBBroker:
    b = IBBroker(Connect(port=sim.port, client_id=kw.pop("client_id", 7), connect_timeout=5),
                 instruments=instruments or load_instruments(), say=lambda m: None, **kw)
    b.connect()
    b.ready()
    return b


@pytest.fixture
def odd_names(make_sim, tmp_path):
    """The bundled sample plus two names IB lists and nobody trades: a bankrupt-style ABCDQ and a
    warrant XYZ.WS (copies of INTC's bars, written under tmp_path)."""
    from gatewaysim.data import SAMPLE

    for f in SAMPLE.glob("*.csv"):
        (tmp_path / f.name).symlink_to(f)
    (tmp_path / "ABCDQ.csv").symlink_to(SAMPLE / "INTC.csv")
    (tmp_path / "XYZ.WS.csv").symlink_to(SAMPLE / "INTC.csv")
    return make_sim(tmp_path)


def test_the_scan_lists_ibs_rows_in_ibs_order_and_the_cancel_is_not_a_failure(sim, expect_errors):
    expect_errors(CANCELLED)
    sim.set_quote("AAPL", last=200.0)
    sim.set_quote("INTC", last=30.0)
    b = broker(sim)
    try:
        got = b.scan(IBScannerSource("TOP_PERC_GAIN", rows=10))
        changes = {s: (sim.quote(s).last - sim.quote(s).close) / sim.quote(s).close for s in ("AAPL", "INTC")}
        assert got.symbols == tuple(sorted(changes, key=lambda s: -changes[s]))
        assert [c.rank for c in got.candidates] == [0, 1]
        assert got.dropped == () and got.rows == 2
        assert 0 < got.seconds < 2
        # IB's rows are each a contract the instrument map resolves to the same conId
        assert [c.con_id for c in got.candidates] == [b.resolved(s).con_id for s in got.symbols]
        # the subscription was cancelled: the simulator holds none, and answered the cancel with a 162
        b.pump(0.3)
        assert not any(sess.scanners for sess in sim.sessions)
        assert any(e["kind"] == "error" and e["code"] == 162 and CANCELLED in e["text"] for e in sim.events)
        # a second request right away waits out the pacing interval
        b.scanner.min_interval = 0.5
        again = b.scan(IBScannerSource("TOP_PERC_GAIN", rows=1))
        assert again.symbols == got.symbols[:1]
        assert b.figures()["ib_scanner_requests"] == 2
    finally:
        b.close()


def test_filters_go_to_ib_as_tag_values_and_ib_leaves_out_the_names_that_fail_them(sim, expect_errors):
    expect_errors(CANCELLED)
    sim.set_quote("AAPL", last=200.0)
    sim.set_quote("INTC", last=30.0)
    source = IBScannerSource("TOP_PERC_GAIN", filters=(("priceAbove", 100.0),))
    sub, tags = subscription_of(source)
    assert (sub.scanCode, sub.instrument, sub.locationCode, sub.numberOfRows) == ("TOP_PERC_GAIN", "STK",
                                                                                 "STK.US.MAJOR", 50)
    assert [(t.tag, t.value) for t in tags] == [("priceAbove", "100")]
    b = broker(sim)
    try:
        assert b.scan(source).symbols == ("AAPL",)
        assert b.scan(IBScannerSource("TOP_PERC_GAIN", filters=(("priceBelow", 100.0),))).symbols == ("INTC",)
        most = b.scan(IBScannerSource("MOST_ACTIVE", filters=(("volumeAbove", sim.quote("SPY").volume - 1),)))
        assert "SPY" in most.symbols and all(sim.quote(s).volume > sim.quote("SPY").volume - 1 for s in most.symbols)
    finally:
        b.close()


def test_names_nobody_can_trade_or_the_map_cannot_resolve_are_dropped_with_their_reason(odd_names, expect_errors):
    sim = odd_names
    expect_errors(CANCELLED, 200)
    for name, last in (("ABCDQ", 40.0), ("XYZ.WS", 41.0), ("AAPL", 200.0), ("INTC", 30.0)):
        sim.set_quote(name, last=last)
    instruments = copy.deepcopy(load_instruments())
    instruments.setdefault("roots", {})["INTC"] = {"sec_type": "STK", "exchange": "SMART", "currency": "EUR"}
    b = broker(sim, instruments)
    try:
        got = b.scan(IBScannerSource("TOP_PERC_GAIN"))
        assert got.symbols == ("AAPL",)
        why = dict(got.dropped)
        assert set(why) == {"ABCDQ", "XYZ.WS", "INTC"}
        assert "ending in Q" in why["ABCDQ"] and ".WS" in why["XYZ.WS"]
        assert why["INTC"].startswith("not resolved")
        assert got.rows == 4
    finally:
        b.close()


def test_a_scan_code_ib_refuses_is_the_requests_failure_in_ibs_words(sim, expect_errors):
    expect_errors(162)
    b = broker(sim)
    try:
        with pytest.raises(ScanError, match="IB 162: .*HIGH_OPT_IMP_VOLAT"):
            b.scan(IBScannerSource("HIGH_OPT_IMP_VOLAT"))
    finally:
        b.close()


def test_non_tradable_suffixes():
    assert non_tradable("QQQ", "STK") is None and non_tradable("AAPL", "STK") is None
    assert non_tradable("GOOGQ", "STK") and non_tradable("ABC.CVR", "STK") and non_tradable("ABC.W", "STK")
    assert non_tradable("ABC.OLD", "STK") and non_tradable("ABC.WS", "STK")
    assert non_tradable("NQZ5Q", "FUT") is None        # a trailing Q means OTC/bankrupt on a stock only
