"""The smaller request families: reqIds, reqAllOpenOrders across clients, reqGlobalCancel,
modify of a filled order (104), head timestamp, combo market data, account pushes, PnL."""

from __future__ import annotations

import pytest
from ib_async import Index, LimitOrder, MarketOrder

from .test_orders import _condor_legs, _spy, _wait


def test_req_ids_answers_the_next_valid_id(ib, sim):
    spy = _spy(ib)
    t = ib.placeOrder(spy, LimitOrder("BUY", 1, 1.0))
    assert _wait(ib, lambda: t.orderStatus.status == "Submitted")
    got = []
    ib.client.reqIds(1)
    ib.wrapper.nextValidId = lambda orderId: got.append(orderId)
    assert _wait(ib, lambda: bool(got))
    assert got == [t.order.orderId + 1]


def test_all_open_orders_sees_other_clients_and_global_cancel_cancels_them(sim, connect, expect_errors):
    expect_errors(202)
    a = connect(sim, clientId=1)
    b = connect(sim, clientId=2)
    spy = _spy(a)
    ta = a.placeOrder(spy, LimitOrder("BUY", 1, 1.0, orderRef="a"))
    tb = b.placeOrder(_spy(b), LimitOrder("BUY", 2, 1.0, orderRef="b"))
    assert _wait(a, lambda: ta.orderStatus.status == "Submitted") and _wait(b, lambda: tb.orderStatus.status == "Submitted")
    assert [t.order.orderRef for t in a.reqOpenOrders()] == ["a"]
    assert sorted(t.order.orderRef for t in a.reqAllOpenOrders()) == ["a", "b"]
    a.reqGlobalCancel()
    assert _wait(a, lambda: ta.orderStatus.status == "Cancelled")
    assert _wait(b, lambda: tb.orderStatus.status == "Cancelled")
    assert [o["status"] for o in sim.record()["orders"]] == ["Cancelled", "Cancelled"]


def test_modifying_a_filled_order_is_104(ib, sim, expect_errors, error_guard):
    expect_errors(104)
    spy = _spy(ib)
    t = ib.placeOrder(spy, MarketOrder("BUY", 1))
    assert _wait(ib, lambda: t.orderStatus.status == "Filled")
    t.order.totalQuantity = 2
    ib.client.placeOrder(t.order.orderId, spy, t.order)
    assert _wait(ib, lambda: 104 in error_guard.codes())
    assert sim.record()["orders"][0]["totalQuantity"] == 1


def test_head_timestamp_is_the_first_bar(ib, sim):
    xsp = ib.qualifyContracts(Index("XSP", "CBOE"))[0]
    head = ib.reqHeadTimeStamp(xsp, "TRADES", True)
    first = sim.series["XSP"].frame.index[0]
    assert head == first.tz_convert("UTC").tz_localize(None).to_pydatetime()  # ib_async gives naive UTC


def test_combo_market_data_is_priced_from_the_legs(ib, sim):
    spy = _spy(ib)
    opts, bag = _condor_legs(ib, spy)
    t = ib.reqMktData(bag)
    assert _wait(ib, lambda: t.bid == t.bid and t.ask == t.ask and t.bid != -1)
    legs = [sim.quote(o.conId) for o in opts]
    natural = legs[0].ask - legs[1].bid - legs[2].bid + legs[3].ask
    assert t.ask == pytest.approx(natural, abs=0.011) and t.bid < t.ask


def test_account_updates_multi_follow_fills(ib, sim):
    spy = _spy(ib)
    seen = []
    ib.accountValueEvent += lambda v: seen.append(v) if v.tag == "TotalCashValue" else None
    t = ib.placeOrder(spy, MarketOrder("BUY", 10))
    assert _wait(ib, lambda: t.orderStatus.status == "Filled")
    assert _wait(ib, lambda: any(float(v.value) < 1_000_000 for v in seen))
    assert any(m["name"] == "reqAccountUpdatesMulti" for m in sim.messages())


def test_a_bag_without_legs_is_refused_not_crashed(ib, sim, expect_errors, error_guard):
    from ib_async import Contract

    empty = Contract(secType="BAG", symbol="SPY", exchange="SMART", currency="USD")
    trade = ib.placeOrder(empty, LimitOrder("BUY", 1, 1.0))
    ib.sleep(0.2)
    assert trade.orderStatus.status == "ValidationError"  # 321 is a warning in ib_async
    assert any(e["code"] == 321 and "needs its combo legs" in e["text"] for e in sim.events if e["kind"] == "error")


def test_pnl_and_pnl_single_follow_the_position(ib, sim):
    spy = _spy(ib)
    account = ib.managedAccounts()[0]
    pnl = ib.reqPnL(account)
    single = ib.reqPnLSingle(account, "", spy.conId)
    ib.sleep(0.2)
    assert pnl.unrealizedPnL == 0 and single.position == 0
    t = ib.placeOrder(spy, MarketOrder("BUY", 100))
    assert _wait(ib, lambda: t.orderStatus.status == "Filled")
    q = sim.quote("SPY")
    sim.set_quote("SPY", bid=q.bid + 1, ask=q.ask + 1, last=q.last + 1)
    mid = (q.bid + q.ask) / 2 + 1
    expected = (mid - t.orderStatus.avgFillPrice) * 100
    assert _wait(ib, lambda: single.position == 100 and abs(single.unrealizedPnL - expected) < 0.01)
    assert _wait(ib, lambda: abs(pnl.unrealizedPnL - expected) < 0.01)
    assert single.value == pytest.approx(mid * 100, abs=0.01)
    ib.cancelPnL(account)
    ib.cancelPnLSingle(account, "", spy.conId)
