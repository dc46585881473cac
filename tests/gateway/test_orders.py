"""Orders: MKT, LMT (resting and marketable), STP, STP LMT, modify, cancel, partial fills,
BAG combos, what-if, completed orders, reqExecutions with a filter, positions/portfolio/account."""

from __future__ import annotations

import pytest
from ib_async import (ComboLeg, Contract, ExecutionFilter, LimitOrder, MarketOrder, Option, Stock,
                      StopLimitOrder, StopOrder, TagValue)
from gatewaysim.market import NY


def _spy(ib):
    return ib.qualifyContracts(Stock("SPY", "SMART", "USD"))[0]


def _wait(ib, cond, timeout=2.0):
    """Run the client's loop until cond() holds (a dropped socket ends ib.sleep with ConnectionError)."""
    waited = 0.0
    while not cond() and waited < timeout:
        try:
            ib.sleep(0.05)
        except ConnectionError:
            pass
        waited += 0.05
    return cond()


def test_market_order_fills_at_the_ask_with_all_messages(ib, sim):
    spy = _spy(ib)
    ask = sim.quote("SPY").ask
    trade = ib.placeOrder(spy, MarketOrder("BUY", 100, orderRef="qtrade:t1"))
    assert _wait(ib, lambda: trade.orderStatus.status == "Filled" and trade.fills and trade.fills[0].commissionReport.commission > 0)
    assert trade.orderStatus.avgFillPrice == pytest.approx(ask)
    fill = trade.fills[0]
    assert fill.execution.side == "BOT" and fill.execution.shares == 100 and fill.execution.orderRef == "qtrade:t1"
    assert fill.commissionReport.commission == 1.0
    assert _wait(ib, lambda: any(p.position == 100 for p in ib.positions()))
    pos = [p for p in ib.positions() if p.contract.conId == spy.conId][0]
    assert pos.avgCost == pytest.approx(ask)
    assert _wait(ib, lambda: any(p.position == 100 for p in ib.portfolio()))
    book = sim.record()
    assert book["executions"][0]["price"] == pytest.approx(ask)
    assert book["positions"][0]["qty"] == 100


def test_limit_rests_until_marketable_and_modify_keeps_the_perm_id(ib, sim):
    spy = _spy(ib)
    q = sim.quote("SPY")
    trade = ib.placeOrder(spy, LimitOrder("BUY", 10, round(q.bid - 1.0, 2)))
    assert _wait(ib, lambda: trade.orderStatus.status == "Submitted")
    perm = trade.order.permId
    ib.sleep(0.2)
    assert trade.orderStatus.status == "Submitted" and not trade.fills
    trade.order.lmtPrice = round(q.ask + 0.05, 2)  # now marketable: fills at the ask, not the limit
    ib.placeOrder(spy, trade.order)
    assert _wait(ib, lambda: trade.orderStatus.status == "Filled")
    assert trade.order.permId == perm and trade.orderStatus.permId == perm
    assert trade.fills[0].execution.price == pytest.approx(q.ask)
    assert [m["name"] for m in sim.messages("placeOrder")] == ["placeOrder", "placeOrder"]


def test_sell_limit_fills_at_the_bid(ib, sim):
    spy = _spy(ib)
    q = sim.quote("SPY")
    trade = ib.placeOrder(spy, LimitOrder("SELL", 5, round(q.bid - 0.50, 2)))
    assert _wait(ib, lambda: trade.orderStatus.status == "Filled")
    assert trade.fills[0].execution.price == pytest.approx(q.bid) and trade.fills[0].execution.side == "SLD"


def test_stops_trigger_on_the_touch(ib, sim):
    spy = _spy(ib)
    q = sim.quote("SPY")
    stop = ib.placeOrder(spy, StopOrder("SELL", 10, round(q.last - 1.0, 2)))
    stop_lmt = ib.placeOrder(spy, StopLimitOrder("SELL", 10, round(q.last - 2.5, 2), round(q.last - 2.0, 2)))
    ib.sleep(0.3)
    assert stop.orderStatus.status == "PreSubmitted" and stop_lmt.orderStatus.status == "PreSubmitted"
    sim.set_quote("SPY", last=round(q.last - 1.0, 2), bid=round(q.last - 1.01, 2), ask=round(q.last - 0.99, 2))
    assert _wait(ib, lambda: stop.orderStatus.status == "Filled")
    assert stop.fills[0].execution.price == pytest.approx(q.last - 1.01)
    assert stop_lmt.orderStatus.status == "PreSubmitted"  # its stop, last - 2.0, is not touched yet
    sim.set_quote("SPY", last=round(q.last - 3.0, 2), bid=round(q.last - 3.01, 2), ask=round(q.last - 2.99, 2))
    ib.sleep(0.3)
    assert stop_lmt.orderStatus.status != "Filled"  # triggered, but the bid is below its limit
    assert any(e["kind"] == "stop_triggered" and e["orderId"] == stop_lmt.order.orderId for e in sim.events)
    sim.set_quote("SPY", last=round(q.last - 2.4, 2), bid=round(q.last - 2.41, 2), ask=round(q.last - 2.39, 2))
    assert _wait(ib, lambda: stop_lmt.orderStatus.status == "Filled")
    assert stop_lmt.fills[0].execution.price == pytest.approx(q.last - 2.41)


def test_a_price_off_the_tick_grid_is_refused_with_110_as_at_ib(ib, sim, expect_errors, error_guard):
    """IB answers 110 ("does not conform to the minimum price variation") to a limit or stop off
    the contract's minTick, before any orderStatus: a new order is not placed (ib_async cancels
    its PendingSubmit trade) and a modify to such a price leaves the order at its own."""
    expect_errors(110)
    spy = _spy(ib)
    q = sim.quote("SPY")
    off = ib.placeOrder(spy, LimitOrder("BUY", 10, round(q.bid - 1.0, 2) + 0.005))
    stop = ib.placeOrder(spy, StopOrder("SELL", 10, round(q.last - 1.0, 2) - 0.003))
    assert _wait(ib, lambda: off.orderStatus.status == "Cancelled" and stop.orderStatus.status == "Cancelled")
    assert not [o for o in sim.record()["orders"] if o["orderId"] in (off.order.orderId, stop.order.orderId)]
    # on the grid (within float noise of it): placed
    resting = ib.placeOrder(spy, LimitOrder("BUY", 10, round(q.bid - 1.0, 2) + 1e-9))
    assert _wait(ib, lambda: resting.orderStatus.status == "Submitted")
    before = resting.order.lmtPrice
    resting.order.lmtPrice = round(q.bid - 0.5, 2) + 0.004
    ib.placeOrder(spy, resting.order)
    assert _wait(ib, lambda: any(e.errorCode == 110 for e in resting.log))     # a warning for a live order
    ib.sleep(0.2)
    assert error_guard.codes().count(110) == 2
    assert [o["lmtPrice"] for o in sim.record()["orders"] if o["orderId"] == resting.order.orderId] == \
        [pytest.approx(before)]


def test_cancel_sends_cancelled_and_202(ib, sim, expect_errors, error_guard):
    expect_errors(202, 10147)
    spy = _spy(ib)
    trade = ib.placeOrder(spy, LimitOrder("BUY", 10, 1.00))
    assert _wait(ib, lambda: trade.orderStatus.status == "Submitted")
    ib.cancelOrder(trade.order)
    assert _wait(ib, lambda: trade.orderStatus.status == "Cancelled")
    assert _wait(ib, lambda: 202 in error_guard.codes())
    ib.client.cancelOrder(99999, "")
    assert _wait(ib, lambda: 10147 in error_guard.codes())


def test_partial_fills_by_hand(ib, sim):
    sim.set_fill_mode("manual")
    spy = _spy(ib)
    trade = ib.placeOrder(spy, MarketOrder("BUY", 100))
    assert _wait(ib, lambda: trade.orderStatus.status == "Submitted")
    sim.fill_order(trade.order.orderId, 30, 266.00)
    assert _wait(ib, lambda: trade.orderStatus.filled == 30)
    assert trade.orderStatus.status == "Submitted" and trade.orderStatus.remaining == 70
    sim.fill_order(trade.order.orderId, 70, 266.10)
    assert _wait(ib, lambda: trade.orderStatus.status == "Filled")
    assert trade.orderStatus.avgFillPrice == pytest.approx((30 * 266.00 + 70 * 266.10) / 100)
    assert [f.execution.cumQty for f in trade.fills] == [30, 100]


def _condor_legs(ib, spy):
    chain = ib.reqSecDefOptParams("SPY", "", "STK", spy.conId)[0]
    expiry = chain.expirations[-1]
    opts = ib.qualifyContracts(Option("SPY", expiry, 258, "P", "SMART"), Option("SPY", expiry, 262, "P", "SMART"),
                               Option("SPY", expiry, 270, "C", "SMART"), Option("SPY", expiry, 274, "C", "SMART"))
    actions = ("BUY", "SELL", "SELL", "BUY")
    bag = Contract(secType="BAG", symbol="SPY", exchange="SMART", currency="USD",
                   comboLegs=[ComboLeg(conId=o.conId, ratio=1, action=a, exchange="SMART") for o, a in zip(opts, actions)])
    return opts, bag


def test_bag_combo_fills_with_leg_execs_and_wide_limits_do_not(ib, sim):
    spy = _spy(ib)
    opts, bag = _condor_legs(ib, spy)
    combo = sim.call(sim.combo_quote, [{"inst": sim.catalog.get(o.conId), "ratio": 1, "action": a}
                                        for o, a in zip(opts, ("BUY", "SELL", "SELL", "BUY"))])
    assert combo.ask < 0  # a credit: selling the inner strikes
    what = ib.whatIfOrder(bag, LimitOrder("BUY", 1, combo.ask))
    assert float(what.initMarginChange) == pytest.approx(400.0)  # the 4-point wing x 100
    params = [TagValue("NonGuaranteed", "1")]
    wide = ib.placeOrder(bag, LimitOrder("BUY", 1, round(combo.ask - 0.30, 2), smartComboRoutingParams=params))
    ib.sleep(0.3)
    assert wide.orderStatus.status == "Submitted" and not wide.fills
    wide.order.lmtPrice = combo.ask
    ib.placeOrder(bag, wide.order)
    assert _wait(ib, lambda: wide.orderStatus.status == "Filled" and len(wide.fills) == 5)
    assert wide.filled() == 1
    assert sorted(f.contract.secType for f in wide.fills) == ["BAG", "OPT", "OPT", "OPT", "OPT"]
    assert _wait(ib, lambda: len([p for p in ib.positions() if p.position]) == 4)
    qty = {p.contract.conId: p.position for p in ib.positions()}
    assert [qty[o.conId] for o in opts] == [1, -1, -1, 1]


def test_what_if_margin_is_not_an_order(ib, sim):
    spy = _spy(ib)
    state = ib.whatIfOrder(spy, MarketOrder("BUY", 100))
    price = sim.quote("SPY").ask
    assert float(state.initMarginChange) == pytest.approx(100 * price * 0.25, rel=1e-3)
    assert state.commissionCurrency == "USD"
    assert sim.record()["orders"] == [] and not ib.openTrades()


def test_completed_orders_and_executions_with_a_filter_after_reconnect(sim, connect):
    ib = connect(sim)
    spy = _spy(ib)
    aapl = ib.qualifyContracts(Stock("AAPL", "SMART", "USD"))[0]
    for c, action in ((spy, "BUY"), (aapl, "BUY"), (spy, "SELL")):
        t = ib.placeOrder(c, MarketOrder(action, 10))
        assert _wait(ib, lambda: t.orderStatus.status == "Filled")
    ib.disconnect()
    ib = connect(sim)
    completed = ib.reqCompletedOrders(apiOnly=True)
    assert len(completed) == 3 and {t.orderStatus.status for t in completed} == {"Filled"}
    assert len(ib.fills()) == 3  # the startup reqExecutions replays them
    spy_fills = ib.reqExecutions(ExecutionFilter(symbol="SPY"))
    assert len(spy_fills) == 2
    sells = ib.reqExecutions(ExecutionFilter(side="SELL"))
    assert [f.execution.side for f in sells] == ["SLD"]
    pos = {p.contract.symbol: p.position for p in ib.positions()}
    assert pos == {"SPY": 0.0, "AAPL": 10.0} or pos == {"AAPL": 10.0}


def test_account_summary_and_values_move_with_fills(ib, sim):
    spy = _spy(ib)
    before = {v.tag: float(v.value) for v in ib.accountSummary() if v.tag in ("NetLiquidation", "TotalCashValue")}
    t = ib.placeOrder(spy, MarketOrder("BUY", 100))
    assert _wait(ib, lambda: t.orderStatus.status == "Filled")
    ib.sleep(0.1)
    vals = {v.tag: float(v.value) for v in ib.accountValues() if v.tag in ("TotalCashValue", "GrossPositionValue") and v.currency == "USD"}
    cost = t.orderStatus.avgFillPrice * 100 + 1.0
    assert vals["TotalCashValue"] == pytest.approx(before["TotalCashValue"] - cost, abs=0.01)
    assert vals["GrossPositionValue"] > 0


def test_futures_fill_with_the_multiplier_in_avg_cost_and_pnl(make_sim, connect, nq_data):
    from ib_async import Future

    sim = make_sim(nq_data)
    ib = connect(sim)
    nq = sorted(ib.reqContractDetails(Future("NQ", exchange="CME")),
                key=lambda d: d.contract.lastTradeDateOrContractMonth)[0].contract
    ask = sim.quote(nq.conId).ask
    trade = ib.placeOrder(nq, MarketOrder("BUY", 2))
    assert _wait(ib, lambda: trade.orderStatus.status == "Filled" and trade.fills[0].commissionReport.commission)
    assert trade.fills[0].commissionReport.commission == 4.5  # 2.25 a contract
    assert _wait(ib, lambda: any(p.position == 2 for p in ib.positions()))
    pos = [p for p in ib.positions() if p.contract.conId == nq.conId][0]
    assert pos.avgCost == pytest.approx(ask * 20) and pos.contract.multiplier == "20"
    sim.set_quote(nq.conId, bid=ask + 10, ask=ask + 10.25, last=ask + 10)
    close = ib.placeOrder(nq, MarketOrder("SELL", 2))
    assert _wait(ib, lambda: close.orderStatus.status == "Filled" and close.fills[0].commissionReport.commission)
    assert close.fills[0].commissionReport.realizedPNL == pytest.approx(10 * 20 * 2)  # before commissions


def test_bracket_children_wait_for_the_parent_and_oca_cancels_the_sibling(ib, sim, expect_errors):
    expect_errors(202)
    spy = _spy(ib)
    q = sim.quote("SPY")
    bracket = ib.bracketOrder("BUY", 10, limitPrice=round(q.bid - 0.5, 2), takeProfitPrice=round(q.ask + 1.0, 2),
                              stopLossPrice=round(q.bid - 2.0, 2))
    trades = [ib.placeOrder(spy, o) for o in bracket]
    ib.sleep(0.3)
    assert [t.orderStatus.status for t in trades] == ["Submitted", "PreSubmitted", "PreSubmitted"]
    assert not any(t.fills for t in trades)
    parent, profit, stop = trades
    parent.order.lmtPrice = q.ask
    parent.order.transmit = True
    ib.placeOrder(spy, parent.order)
    assert _wait(ib, lambda: parent.orderStatus.status == "Filled")
    assert _wait(ib, lambda: profit.orderStatus.status == "Submitted")  # released by the parent's fill
    assert profit.orderStatus.status == "Submitted" and not profit.fills  # its limit is above the ask
    sim.set_quote("SPY", bid=round(q.ask + 1.0, 2), ask=round(q.ask + 1.02, 2), last=round(q.ask + 1.01, 2))
    assert _wait(ib, lambda: profit.orderStatus.status == "Filled")
    assert _wait(ib, lambda: stop.orderStatus.status == "Cancelled")  # the OCA sibling
    assert _wait(ib, lambda: "SPY" not in {p.contract.symbol for p in ib.positions()})  # flat: ib_async drops it
    assert sim.record()["positions"][0]["qty"] == 0


def test_a_condor_chased_by_modify_then_closed_with_a_sell_combo(ib, sim):
    spy = _spy(ib)
    opts, bag = _condor_legs(ib, spy)
    legs = [{"inst": sim.catalog.get(o.conId), "ratio": 1, "action": a}
            for o, a in zip(opts, ("BUY", "SELL", "SELL", "BUY"))]
    combo = sim.call(sim.combo_quote, legs)
    trade = ib.placeOrder(bag, LimitOrder("BUY", 2, round(combo.ask - 0.20, 2), orderRef="qtrade:condor"))
    assert _wait(ib, lambda: trade.orderStatus.status == "Submitted")
    perm = trade.order.permId
    for price in (round(combo.ask - 0.10, 2), combo.ask):  # the chase: same orderId, new limit
        trade.order.lmtPrice = price
        ib.placeOrder(bag, trade.order)
        ib.sleep(0.2)
    assert _wait(ib, lambda: trade.orderStatus.status == "Filled")
    assert trade.order.permId == perm and trade.orderStatus.avgFillPrice == pytest.approx(combo.ask)
    legs_filled = [f for f in trade.fills if f.contract.secType == "OPT"]
    assert sum((1 if f.execution.side == "SLD" else -1) * f.execution.price for f in legs_filled) == \
        pytest.approx(-combo.ask)  # the legs' prices add up to the combo's credit
    close_q = sim.call(sim.combo_quote, legs)
    close = ib.placeOrder(bag, LimitOrder("SELL", 2, close_q.bid, orderRef="qtrade:condor-exit"))
    assert _wait(ib, lambda: close.orderStatus.status == "Filled")
    assert _wait(ib, lambda: not [p for p in ib.positions() if p.position])
    rec = sim.record()
    bag_execs = [e for e in rec["executions"] if e["secType"] == "BAG"]
    assert [(e["side"], e["shares"], e["orderRef"]) for e in bag_execs] == [
        ("BOT", 2.0, "qtrade:condor"), ("SLD", 2.0, "qtrade:condor-exit")]


def test_a_stock_order_outside_regular_hours_waits_for_the_open_with_ibs_399(make_sim, connect, expect_errors):
    """IB holds a stock order without outsideRth until 09:30 New York (warning 399, PreSubmitted):
    a market order sent after the close fills at the next open's quote, not at the last close."""
    expect_errors(399)
    sim = make_sim(start="2017-12-27 17:30")
    ib = connect(sim)
    spy = _spy(ib)
    closed_ask = sim.quote("SPY").ask
    trade = ib.placeOrder(spy, MarketOrder("BUY", 10, orderRef="qtrade:after-close"))
    assert _wait(ib, lambda: any("will not be placed at the exchange until 20171228 09:30:00" in e.message
                                 for e in trade.log))
    ib.sleep(0.3)
    assert trade.orderStatus.status in ("PreSubmitted", "ValidationError") and not trade.fills
    sim.advance(16 * 3600 - 60)         # 09:29 the next morning: still held
    ib.sleep(0.3)
    assert not trade.fills
    sim.advance(60)                     # 09:30: the session opens and the order fills
    assert _wait(ib, lambda: trade.orderStatus.status == "Filled")
    fill = trade.fills[0].execution
    open_ask = sim.quote("SPY").ask
    assert fill.price == pytest.approx(open_ask) and open_ask != pytest.approx(closed_ask)
    assert fill.time.astimezone(NY).strftime("%Y-%m-%d %H:%M") == "2017-12-28 09:30"


def test_a_day_order_expires_at_the_close_and_a_gtc_order_works_on(make_sim, connect):
    sim = make_sim(start="2017-12-27 15:50")
    ib = connect(sim)
    spy = _spy(ib)
    low = round(sim.quote("SPY").bid - 20.0, 2)
    day = ib.placeOrder(spy, LimitOrder("BUY", 10, low))
    gtc = ib.placeOrder(spy, LimitOrder("BUY", 10, low, tif="GTC"))
    assert _wait(ib, lambda: day.orderStatus.status == "Submitted" and gtc.orderStatus.status == "Submitted")
    sim.advance(9 * 60)                 # 15:59: both work
    ib.sleep(0.2)
    assert day.orderStatus.status == "Submitted"
    sim.advance(60)                     # 16:00: the day order's session is over
    assert _wait(ib, lambda: day.orderStatus.status == "Cancelled")
    ib.sleep(0.2)
    assert gtc.orderStatus.status == "Submitted" and not day.fills
    assert [e["orderId"] for e in sim.record()["events"] if e["kind"] == "expired"] == [day.order.orderId]


def test_a_holiday_and_an_early_close_come_from_the_exchange_calendar(make_sim, connect, expect_errors):
    """NYSE closed at 13:00 on 2017-07-03 and not at all on July 4 (the calendar's, not a hand
    list): a DAY order working that morning expires at 13:00; a market order sent at 13:30 is held
    (399) past the holiday and fills at the open on July 5; contract details say the same hours."""
    expect_errors(399)
    sim = make_sim(start="2017-07-03 12:50")
    ib = connect(sim)
    spy = _spy(ib)
    details = ib.reqContractDetails(spy)[0]
    assert details.liquidHours == "20170703:0930-20170703:1300;20170704:CLOSED"
    assert details.tradingHours == "20170703:0400-20170703:1700;20170704:CLOSED"
    low = round(sim.quote("SPY").bid - 20.0, 2)
    day = ib.placeOrder(spy, LimitOrder("BUY", 10, low))
    assert _wait(ib, lambda: day.orderStatus.status == "Submitted")
    sim.advance(9 * 60)                 # 12:59: it works
    ib.sleep(0.2)
    assert day.orderStatus.status == "Submitted"
    sim.advance(60)                     # 13:00: the early close ends its session
    assert _wait(ib, lambda: day.orderStatus.status == "Cancelled")
    sim.advance(30 * 60)                # 13:30: after the close
    trade = ib.placeOrder(spy, MarketOrder("BUY", 10, orderRef="qtrade:after-early-close"))
    assert _wait(ib, lambda: any("will not be placed at the exchange until 20170705 09:30:00" in e.message
                                 for e in trade.log))
    sim.advance(22 * 3600)              # 11:30 on July 4: the holiday, still held
    ib.sleep(0.3)
    assert not trade.fills and trade.orderStatus.status in ("PreSubmitted", "ValidationError")  # (ib_async's, on 399)
    sim.advance(22 * 3600)              # 09:30 on July 5: it fills at the open
    assert _wait(ib, lambda: trade.orderStatus.status == "Filled")
    fill = trade.fills[0].execution
    assert fill.time.astimezone(NY).strftime("%Y-%m-%d %H:%M") == "2017-07-05 09:30"
    assert fill.price == pytest.approx(sim.quote("SPY").ask)


def test_the_simulators_hours_follow_the_calendars():
    """gatewaysim.hours against the calendars: NYSE's holiday and early close, a stock's extended
    hours, CME equity futures' evening session and its shortened July 4."""
    import datetime as dt

    from gatewaysim.catalog import Instrument
    from gatewaysim.hours import Hours

    def ns(text):
        return int(dt.datetime.fromisoformat(text).replace(tzinfo=NY).timestamp()) * 1_000_000_000

    h = Hours()
    stk = Instrument(1, "SPY", "STK", "ARCA")
    fut = Instrument(2, "ES", "FUT", "CME")
    assert h.works(stk, False, ns("2017-07-03 12:59")) and not h.works(stk, False, ns("2017-07-03 13:00"))
    assert not h.works(stk, False, ns("2017-07-04 11:00")) and not h.works(stk, True, ns("2017-07-04 11:00"))
    assert h.works(stk, True, ns("2017-07-03 16:59")) and not h.works(stk, True, ns("2017-07-03 17:00"))
    assert h.works(stk, True, ns("2017-07-05 04:00")) and not h.works(stk, True, ns("2017-07-05 03:59"))
    assert h.session_end(stk, ns("2017-07-03 14:00")) == ns("2017-07-05 16:00")
    assert h.next_open(stk, False, ns("2017-07-03 14:00")) == ns("2017-07-05 09:30")
    assert h.next_open(stk, False, ns("2017-07-05 10:00")) == ns("2017-07-05 10:00")
    assert h.works(fut, False, ns("2017-07-02 18:00")) and not h.works(fut, False, ns("2017-07-02 17:59"))
    assert h.works(fut, False, ns("2017-07-04 12:59")) and not h.works(fut, False, ns("2017-07-04 13:00"))
    assert h.session_end(fut, ns("2017-07-04 13:30")) == ns("2017-07-05 17:00")
    assert h.next_open(fut, False, ns("2017-07-04 13:30")) == ns("2017-07-04 18:00")
    assert not h.works(stk, False, ns("2017-12-25 10:00")) and h.works(stk, False, ns("2017-12-26 09:30"))
    # options on an index (XSP, SPX) trade to 16:15 (13:15 on an early close), equity options to 16:00
    xsp_opt = Instrument(3, "XSP", "OPT", "CBOE", underSecType="IND")
    spy_opt = Instrument(4, "SPY", "OPT", "CBOE", underSecType="STK")
    assert h.works(xsp_opt, False, ns("2019-11-05 16:14")) and not h.works(xsp_opt, False, ns("2019-11-05 16:15"))
    assert not h.works(spy_opt, False, ns("2019-11-05 16:00")) and h.works(spy_opt, False, ns("2019-11-05 15:59"))
    assert h.works(xsp_opt, False, ns("2019-11-29 13:14")) and not h.works(xsp_opt, False, ns("2019-11-29 13:15"))
    assert h.works(stk, False, ns("2019-11-05 15:59")) and not h.works(stk, False, ns("2019-11-05 16:05"))
    assert h.session_end(xsp_opt, ns("2019-11-05 16:05")) == ns("2019-11-05 16:15")
    # on its last trading day an index option stops at 16:00 (PM-settled on the 16:00 value)
    expiring = Instrument(5, "XSP", "OPT", "CBOE", underSecType="IND", lastTradeDate="20191105")
    assert h.works(expiring, False, ns("2019-11-05 15:59")) and not h.works(expiring, False, ns("2019-11-05 16:00"))
    assert h.works(xsp_opt, False, ns("2019-11-05 16:05"))       # the other series still trade
    assert h.trading_hours(expiring, dt.date(2019, 11, 5))[1] == "20191105:0930-20191105:1600;20191106:0930-20191106:1615"
