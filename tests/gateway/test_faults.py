"""Every fault of issue 10, produced from the Python API, seen through the real ib_async client."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from ib_async import IB, Index, LimitOrder, MarketOrder, Stock, StopOrder

from .test_orders import _spy, _wait


def test_drop_connection_now_and_reconnect(sim, connect, expect_errors):
    expect_errors("Peer closed connection")
    ib = connect(sim)
    lost = []
    ib.disconnectedEvent += lambda: lost.append(True)
    sim.drop_connection()
    assert _wait(ib, lambda: bool(lost))
    assert not ib.isConnected()
    ib2 = connect(sim)
    assert ib2.reqCurrentTime()


@pytest.mark.parametrize("when", ["before_ack", "after_ack"])
def test_drop_around_an_order_ack_and_recover_it_on_reconnect(sim, connect, expect_errors, when):
    expect_errors("Peer closed connection")
    ib = connect(sim)
    spy = _spy(ib)
    sim.drop_connection(when=when)
    trade = ib.placeOrder(spy, LimitOrder("BUY", 10, 1.00, orderRef=f"qtrade:{when}"))
    assert _wait(ib, lambda: not ib.isConnected())
    assert trade.orderStatus.status == ("PendingSubmit" if when == "before_ack" else "Submitted")
    ib2 = connect(sim)
    open_trades = ib2.openTrades()
    assert [t.order.orderRef for t in open_trades] == [f"qtrade:{when}"]
    assert open_trades[0].order.permId == sim.record()["orders"][0]["permId"]


def test_restart_rolls_next_valid_id_back_and_a_reused_id_is_103(sim, connect, expect_errors, error_guard):
    expect_errors("Peer closed connection", 103)
    ib = connect(sim)
    spy = _spy(ib)
    first = ib.placeOrder(spy, MarketOrder("BUY", 1))
    assert _wait(ib, lambda: first.orderStatus.status == "Filled")
    used = first.order.orderId
    sim.restart(next_valid_id=1)
    assert _wait(ib, lambda: not ib.isConnected())
    ib2 = connect(sim)
    assert ib2.client.getReqId() <= used  # rolled back below an id already used
    ib2.client._reqIdSeq = used  # what a client that trusts nextValidId ends up doing
    again = ib2.placeOrder(spy, MarketOrder("BUY", 1))
    assert again.order.orderId == used
    assert _wait(ib2, lambda: again.orderStatus.status == "Cancelled")
    assert 103 in error_guard.codes()


def test_stop_ticks_for_one_symbol_while_the_socket_stays_up(make_sim, connect):
    sim = make_sim(speed=600)
    ib = connect(sim)
    xsp = ib.qualifyContracts(Index("XSP", "CBOE"))[0]
    spx = ib.qualifyContracts(Index("SPX", "CBOE"))[0]
    t_xsp, t_spx = ib.reqMktData(xsp), ib.reqMktData(spx)
    ib.sleep(0.3)
    sim.stop_ticks("XSP")
    ib.sleep(0.1)
    frozen, moving = t_xsp.time, t_spx.time
    ib.sleep(0.6)
    assert t_xsp.time == frozen and t_spx.time > moving and ib.isConnected()
    sim.resume_ticks("XSP")
    assert _wait(ib, lambda: t_xsp.time > frozen)


def test_connectivity_1100_1101_1102(make_sim, connect, expect_errors, error_guard):
    expect_errors(1100, 1101, 1102)
    sim = make_sim(speed=600)
    ib = connect(sim)
    xsp = ib.qualifyContracts(Index("XSP", "CBOE"))[0]
    ticker = ib.reqMktData(xsp)
    ib.sleep(0.2)
    sim.connectivity(1100)
    ib.sleep(0.1)
    t0 = ticker.time
    ib.sleep(0.4)
    assert ticker.time == t0  # nothing flows while IB is unreachable
    spy = _spy(ib)
    trade = ib.placeOrder(spy, MarketOrder("BUY", 1))
    ib.sleep(0.3)
    assert trade.orderStatus.status == "Submitted"  # accepted, not filled while lost
    sim.connectivity(1101)  # data lost: lines must be re-requested
    ib.sleep(0.4)
    assert ticker.time == t0
    assert _wait(ib, lambda: trade.orderStatus.status == "Filled")
    ib.cancelMktData(xsp)
    ticker = ib.reqMktData(xsp)
    assert _wait(ib, lambda: ticker.time is not None and ticker.time > t0)
    sim.connectivity(1100)
    sim.connectivity(1102)  # data maintained: the same line keeps going
    t1 = ticker.time
    assert _wait(ib, lambda: ticker.time > t1)
    assert [c for c in error_guard.codes() if c >= 1100] == [1100, 1101, 1100, 1102]


def test_farm_2103_then_2104(make_sim, connect, caplog):
    sim = make_sim(speed=600)
    ib = connect(sim)
    errors = []
    ib.errorEvent += lambda reqId, code, msg, contract: errors.append(code)
    xsp = ib.qualifyContracts(Index("XSP", "CBOE"))[0]
    ticker = ib.reqMktData(xsp)
    ib.sleep(0.2)
    sim.farm(ok=False)
    ib.sleep(0.1)
    t0 = ticker.time
    ib.sleep(0.4)
    assert ticker.time == t0
    sim.farm(ok=True)
    assert _wait(ib, lambda: ticker.time > t0)
    assert errors[-2:] == [2103, 2104]


def test_competing_session_10197(make_sim, connect, expect_errors, error_guard):
    expect_errors(10197)
    sim = make_sim(speed=600)
    ib = connect(sim)
    xsp = ib.qualifyContracts(Index("XSP", "CBOE"))[0]
    ticker = ib.reqMktData(xsp)
    ib.sleep(0.2)
    sim.competing_session(True)
    ib.sleep(0.1)
    t0 = ticker.time
    ib.sleep(0.3)
    assert ticker.time == t0 and 10197 in error_guard.codes()
    spy = _spy(ib)
    snap = ib.reqTickers(spy)[0]
    assert math.isnan(snap.last)
    sim.competing_session(False)
    ib.sleep(0.3)
    assert ticker.time == t0  # stays silent until re-requested
    ib.cancelMktData(xsp)
    ticker = ib.reqMktData(xsp)
    assert _wait(ib, lambda: ticker.time is not None and ticker.time > t0)


def test_duplicate_client_id_326(sim, connect, expect_errors):
    expect_errors(326, "already in use", "API connection failed")
    connect(sim, clientId=5)
    other = IB()
    codes = []
    t0 = time.perf_counter()
    other.errorEvent += lambda reqId, code, msg, contract: codes.append((code, time.perf_counter() - t0))
    with pytest.raises((TimeoutError, asyncio.TimeoutError, ConnectionError)):
        other.connect("127.0.0.1", sim.port, clientId=5, timeout=1)
    assert [c for c, _ in codes] == [326]
    assert codes[0][1] < 0.5  # at once; ib_async itself only gives up when its timeout runs out
    assert any(e["kind"] == "duplicate_client_id" for e in sim.events)
    sim.hold_client_id(9)
    with pytest.raises((TimeoutError, asyncio.TimeoutError, ConnectionError)):
        IB().connect("127.0.0.1", sim.port, clientId=9, timeout=1)


def test_reject_201_with_a_reason(ib, sim, expect_errors, error_guard):
    expect_errors(201)
    spy = _spy(ib)
    sim.reject_next_order("Insufficient margin")
    trade = ib.placeOrder(spy, MarketOrder("BUY", 100000))
    assert _wait(ib, lambda: trade.orderStatus.status == "Cancelled")
    assert "Insufficient margin" in trade.advancedError
    assert any(e.errorCode == 201 and "Order rejected - reason:Insufficient margin" in e.message for e in trade.log)
    assert sim.record()["orders"] == []


def test_reject_only_the_next_order_of_one_type(ib, sim, expect_errors):
    """reject_next_order with an order type: the market order before it goes through; the first
    stop is refused (201), the stop after it rests."""
    expect_errors(201)
    spy = _spy(ib)
    sim.reject_next_order("stop orders are not allowed", order_type="STP")
    bought = ib.placeOrder(spy, MarketOrder("BUY", 10))
    assert _wait(ib, lambda: bought.orderStatus.status == "Filled")
    refused = ib.placeOrder(spy, StopOrder("SELL", 10, 1.0))
    assert _wait(ib, lambda: refused.orderStatus.status == "Cancelled")
    assert any(e.errorCode == 201 and "stop orders are not allowed" in e.message for e in refused.log)
    rests = ib.placeOrder(spy, StopOrder("SELL", 10, 1.0))
    assert _wait(ib, lambda: rests.orderStatus.status in ("PreSubmitted", "Submitted"))
    assert [o["orderType"] for o in sim.record()["orders"]] == ["MKT", "STP"]
    with pytest.raises(ValueError, match="not one the simulator takes"):
        sim.reject_next_order("x", order_type="TRAIL")


def test_refused_modifies_leave_the_order_as_it_was_and_a_new_order_still_goes(ib, sim, expect_errors):
    """refuse_modifies: a modify of a working order is answered 105 (ib_async: a warning, the
    trade ValidationError, still live) and the order rests at its old price; new orders go; off
    again, a modify is taken."""
    expect_errors(105)
    spy = _spy(ib)
    resting = ib.placeOrder(spy, StopOrder("SELL", 10, 1.0))
    assert _wait(ib, lambda: resting.orderStatus.status in ("PreSubmitted", "Submitted"))
    sim.refuse_modifies()
    resting.order.auxPrice = 2.0
    ib.placeOrder(spy, resting.order)
    assert _wait(ib, lambda: any(e.errorCode == 105 for e in resting.log))
    assert "does not match original order" in [e.message for e in resting.log if e.errorCode == 105][0]
    assert not resting.isDone()
    [venue] = sim.record()["orders"]
    assert (venue["auxPrice"], venue["history"]) == (1.0, [])
    other = ib.placeOrder(spy, StopOrder("SELL", 5, 1.5))
    assert _wait(ib, lambda: other.orderStatus.status in ("PreSubmitted", "Submitted"))
    sim.refuse_modifies(False)
    resting.order.auxPrice = 2.5
    ib.placeOrder(spy, resting.order)
    assert _wait(ib, lambda: sim.record()["orders"][0]["auxPrice"] == 2.5)


def test_partial_fill_then_cancel_202(ib, sim, expect_errors):
    expect_errors(202)
    spy = _spy(ib)
    sim.partial_fill_then_cancel(40)
    trade = ib.placeOrder(spy, MarketOrder("BUY", 100))
    assert _wait(ib, lambda: trade.orderStatus.status == "Cancelled")
    assert trade.filled() == 40 and len(trade.fills) == 1
    assert _wait(ib, lambda: {p.contract.symbol: p.position for p in ib.positions()}.get("SPY") == 40)


def test_nan_quotes_fill_nothing(ib, sim):
    spy = _spy(ib)
    sim.nan_quotes("SPY")
    t = ib.reqTickers(spy)[0]
    assert t.bid == -1 and t.ask == -1 and t.bidSize == 0  # IB's "no quote": size 0, price -1
    assert math.isnan(t.last)
    trade = ib.placeOrder(spy, MarketOrder("BUY", 1))
    ib.sleep(0.3)
    assert trade.orderStatus.status == "Submitted" and not trade.fills
    sim.nan_quotes("SPY", on=False)
    assert _wait(ib, lambda: trade.orderStatus.status == "Filled")


def test_what_if_with_unset_margin_never_resolves(ib, sim):
    spy = _spy(ib)
    sim.whatif_unset_margin()
    with pytest.raises((asyncio.TimeoutError, TimeoutError)):
        ib.run(asyncio.wait_for(ib.whatIfOrderAsync(spy, MarketOrder("BUY", 10)), 0.5))
    assert sim.messages("placeOrder")  # it did reach the venue
    assert any(e["kind"] == "what_if" and e["unset"] for e in sim.events)


def test_positions_delivered_late(sim, connect, expect_errors):
    expect_errors("positions request timed out")
    sim.set_position("AAPL", 50, 170.0)
    sim.delay_positions(1.0)
    t0 = time.perf_counter()
    ib = connect(sim, timeout=0.4)
    assert time.perf_counter() - t0 < 1.0
    assert ib.positions() == []
    assert _wait(ib, lambda: len(ib.positions()) == 1, timeout=2.0)
    assert ib.positions()[0].position == 50 and ib.positions()[0].avgCost == 170.0


def test_market_data_line_limit_101(ib, sim, expect_errors, error_guard):
    expect_errors(101)
    sim.set_max_lines(2)
    spy, aapl, intc = ib.qualifyContracts(Stock("SPY", "SMART", "USD"), Stock("AAPL", "SMART", "USD"),
                                          Stock("INTC", "SMART", "USD"))
    ib.reqMktData(spy)
    ib.reqMktData(aapl)
    third = ib.reqMktData(intc)
    assert _wait(ib, lambda: 101 in error_guard.codes())
    ib.sleep(0.2)
    assert math.isnan(third.last)
    ib.cancelMktData(aapl)
    ib.sleep(0.1)
    ib.cancelMktData(intc)  # the dead line: TWS has nothing to cancel (300)
    expect_errors(300)
    ib.sleep(0.1)
    fourth = ib.reqMktData(intc)
    assert _wait(ib, lambda: fourth.last > 0)


def test_message_rate_limit_100(ib, sim, expect_errors, error_guard):
    expect_errors(100)
    sim.set_max_rate(5)
    for _ in range(10):
        ib.client.reqCurrentTime()
    assert _wait(ib, lambda: 100 in error_guard.codes())
    assert any("Max rate of messages per second has been exceeded" in e["text"] for e in sim.events if e["kind"] == "error")


def test_execution_correction_02_replaces_01(ib, sim):
    spy = _spy(ib)
    trade = ib.placeOrder(spy, MarketOrder("BUY", 10))
    assert _wait(ib, lambda: trade.orderStatus.status == "Filled")
    exec_id = trade.fills[0].execution.execId
    assert exec_id.endswith(".01")
    new_id = sim.correct_execution(exec_id, price=250.0)
    assert new_id == exec_id[:-3] + ".02"
    assert _wait(ib, lambda: len(ib.fills()) == 2)  # ib_async adds it as a second fill; a client must replace
    assert ib.fills()[-1].execution.price == 250.0
    rec = sim.record()
    assert [e["replaced_by"] for e in rec["executions"]] == [new_id, ""]
    assert rec["positions"][0]["qty"] == 10 and rec["positions"][0]["avg_price"] == 250.0


@pytest.mark.parametrize("mode", ["late", "zero_first"])
def test_commission_reports_late_or_zero_first(ib, sim, mode):
    spy = _spy(ib)
    sim.commissions(mode, delay=0.4)
    seen = []
    ib.commissionReportEvent += lambda trade, fill, report: seen.append(report.commission)
    trade = ib.placeOrder(spy, MarketOrder("BUY", 300))
    assert _wait(ib, lambda: trade.orderStatus.status == "Filled")
    ib.sleep(0.1)
    assert seen == ([] if mode == "late" else [0.0])
    assert _wait(ib, lambda: seen and seen[-1] == 1.5)
    assert trade.fills[0].commissionReport.commission == 1.5


def test_restart_refuses_connections_while_down(sim, connect, expect_errors):
    expect_errors("Peer closed connection", "API connection failed", "Make sure API port")
    ib = connect(sim)
    sim.restart(down_for=0.6)
    assert _wait(ib, lambda: not ib.isConnected())
    with pytest.raises(ConnectionRefusedError):
        IB().connect("127.0.0.1", sim.port, clientId=2, timeout=1)
    time.sleep(0.7)
    assert connect(sim, clientId=2).reqCurrentTime()
    assert [e["kind"] for e in sim.events if e["kind"] in ("restarted",)] == ["restarted"]


def test_a_fill_while_disconnected_comes_back_through_req_executions(sim, connect, expect_errors):
    expect_errors("Peer closed connection")
    ib = connect(sim)
    spy = _spy(ib)
    sim.drop_connection(when="before_ack")
    ib.placeOrder(spy, MarketOrder("BUY", 40, orderRef="qtrade:offline"))
    assert _wait(ib, lambda: not ib.isConnected())
    assert sim.record()["executions"][0]["orderRef"] == "qtrade:offline"
    ib2 = connect(sim)
    events = []
    ib2.execDetailsEvent += lambda trade, fill: events.append(fill)
    fills = ib2.fills()
    assert [(f.execution.orderRef, f.execution.shares) for f in fills] == [("qtrade:offline", 40.0)]
    assert events == []  # IB_BEHAVIOUR: no execDetailsEvent for fills replayed at connect
    assert [(p.contract.symbol, p.position) for p in ib2.positions()] == [("SPY", 40.0)]
