"""engine/brokers/ib/orders.py against the gateway simulator: the real ib_async client over TCP.

Each test checks the events Orders emitted against the simulator's own record of orders and
executions (`assert_matches_record`): every execution once, none invented, commissions and final
statuses as the venue has them."""

from __future__ import annotations

import datetime as dt
import math
import time

import pytest
from ib_async import Future, Index, Option, Stock

from engine.brokers import events as E
from engine.brokers.ib.orders import LOCAL, Orders, bag_leg_action, group_legs, plain_reason, real, split_exec_id
from engine.brokers.ib.types import Resolved
from engine.orders.combos import LegQuote

FUTURES = {"NQ": "CME", "MNQ": "CME", "ES": "CME"}


# ---- helpers shared with test_reconcile_ib.py ------------------------------------------------
def resolved(c, symbol: str) -> Resolved:
    return Resolved(symbol=symbol, con_id=c.conId, local_symbol=c.localSymbol, sec_type=c.secType,
                    exchange=c.exchange, currency=c.currency, multiplier=float(c.multiplier or 1),
                    trading_class=c.tradingClass, contract=c)


def resolvers(ib):
    """resolve(symbol) and resolve_option(underlying, 'YYYY-MM-DD', strike, 'C'|'P') over ib.qualifyContracts."""
    def resolve(symbol: str) -> Resolved:
        if symbol in FUTURES:
            details = ib.reqContractDetails(Future(symbol, exchange=FUTURES[symbol]))
            return resolved(min(details, key=lambda d: d.contract.lastTradeDateOrContractMonth).contract, symbol)
        [c] = ib.qualifyContracts(Stock(symbol, "SMART", "USD"))
        if c is None:
            raise LookupError(f"no contract for {symbol}")
        return resolved(c, symbol)

    def resolve_option(underlying: str, expiry: str, strike: float, right: str) -> Resolved:
        [c] = ib.qualifyContracts(Option(underlying, expiry.replace("-", ""), strike, right, "SMART"))
        return resolved(c, underlying)
    return resolve, resolve_option


def pump(ib, cond, timeout: float = 3.0) -> bool:
    """Run the client's loop until cond() holds or the timeout passes."""
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        try:
            ib.sleep(0.02)
        except ConnectionError:
            pass
    return cond()


class Tape(list):
    """The events Orders emitted, with a few views."""

    def of(self, kind, ref=None) -> list:
        return [e for e in self if isinstance(e, kind) and (ref is None or getattr(e, "ref", None) == ref)]

    def statuses(self, ref) -> list[tuple]:
        return [(e.status, e.filled, e.remaining) for e in self.of(E.OrderStatus, ref)]

    def last_status(self, ref):
        found = self.of(E.OrderStatus, ref)
        return found[-1] if found else None

    def commissions(self) -> dict[str, float]:
        return {e.exec_id: e.commission for e in self.of(E.CommissionReport)}


SIM_STATUS = {"Filled": E.FILLED, "Cancelled": E.CANCELLED, "Submitted": E.SUBMITTED, "PreSubmitted": E.SUBMITTED}


def assert_matches_record(tape: Tape, orders: Orders, sim, refs) -> None:
    """Nothing lost, nothing duplicated: the emitted executions, leg executions, commissions and
    final statuses of `refs` are exactly the simulator's."""
    rec = sim.record()
    commissions = tape.commissions()
    for ref in refs:
        placed = [o for o in rec["orders"] if o["orderRef"] == ref]
        assert len(placed) == 1, f"{ref} reached the venue {len(placed)} times"
        execs = [e for e in rec["executions"] if e["orderRef"] == ref and not e["replaced_by"]]
        combo = any(e["secType"] == "BAG" for e in execs)
        main = [e for e in execs if e["secType"] == "BAG"] if combo else execs
        mine = [e for e in orders.executions() if e.ref == ref]
        assert [(e.exec_id, e.quantity, e.action) for e in mine] == \
            [(x["execId"], x["shares"], "buy" if x["side"] == "BOT" else "sell") for x in main]
        assert [e.price for e in mine] == pytest.approx([x["price"] for x in main])
        emitted = [e.exec_id for e in tape.of(E.Execution, ref)]
        assert len(emitted) == len(set(emitted)), "an execution was emitted twice"
        legs = [e for e in execs if e["secType"] != "BAG"] if combo else []
        assert [(x.exec_id, x.con_id, x.quantity, x.action) for x in orders.leg_executions(ref)] == \
            [(x["execId"], x["conId"], x["shares"], "buy" if x["side"] == "BOT" else "sell") for x in legs]
        for x in main:
            expected = sum(leg["commission"] for leg in legs) if combo else x["commission"]
            assert commissions.get(x["execId"]) == pytest.approx(expected), f"commission of {x['execId']}"
        last = tape.last_status(ref)
        o = placed[0]
        want = SIM_STATUS[o["status"]]
        if want == E.SUBMITTED and o["filled"] > 0:
            want = E.PARTIAL
        assert (last.status, last.filled) == (want, o["filled"]), f"{ref}: {last} vs the venue's {o['status']}"
        assert last.broker_id == o["orderId"]


@pytest.fixture
def tape():
    return Tape()


@pytest.fixture
def orders(sim, connect, tape):
    ib = connect(sim)
    resolve, resolve_option = resolvers(ib)
    o = Orders(ib, resolve, resolve_option, tape.append, what_if_timeout=1.0, query_timeout=2.0)
    yield o
    o.close()


def _ib(orders: Orders):
    return orders._ib


# ---- stocks ----------------------------------------------------------------------------------
def test_a_market_order_fills_with_its_execution_commission_and_statuses(orders, tape, sim):
    ib = _ib(orders)
    ask = sim.quote("SPY").ask
    assert orders.place(E.Order("qtrade:t:1", "SPY", "buy", 100)) == "qtrade:t:1"
    assert pump(ib, lambda: tape.of(E.CommissionReport))
    assert [type(e).__name__ for e in tape] == ["OrderStatus", "Execution", "OrderStatus", "CommissionReport"]
    assert tape.statuses("qtrade:t:1") == [(E.SUBMITTED, 0, 100), (E.FILLED, 100, 0)]
    [ex] = tape.of(E.Execution)
    assert (ex.symbol, ex.action, ex.quantity, ex.price) == ("SPY", "buy", 100, pytest.approx(ask))
    assert ex.time == int(sim.record()["executions"][0]["ts"]) * 10**9   # IB's execution time, ns UTC
    assert tape.of(E.CommissionReport) == [E.CommissionReport(ex.exec_id, 1.0)]
    assert tape.last_status("qtrade:t:1").avg_price == pytest.approx(ask)
    assert sim.messages("placeOrder")[0]["order"]["orderRef"] == "qtrade:t:1"
    assert not orders.open_orders()
    assert_matches_record(tape, orders, sim, ["qtrade:t:1"])


def test_a_limit_rests_then_is_chased_by_modify_with_the_same_ids(orders, tape, sim):
    ib = _ib(orders)
    q = sim.quote("SPY")
    started = time.time_ns()
    orders.place(E.Order("qtrade:t:2", "SPY", "buy", 10, "limit", round(q.bid - 1.0, 2)))
    assert pump(ib, lambda: tape.of(E.OrderStatus))
    ack = (tape.of(E.OrderStatus)[0].time - started) / 1e9     # stamped by the clock when IB's ack arrived
    print(f"figure: place-to-ack latency {ack * 1000:.1f} ms")
    assert ack < 0.5
    order_id, perm_id = orders.broker_ids("qtrade:t:2")
    assert order_id > 0 and perm_id > 0
    ib.sleep(0.2)
    assert tape.statuses("qtrade:t:2") == [(E.SUBMITTED, 0, 10)]
    assert [o.ref for o in orders.open_orders()] == ["qtrade:t:2"]
    orders.modify("qtrade:t:2", limit=round(q.bid - 0.5, 2))
    ib.sleep(0.2)
    assert not tape.of(E.Execution)
    orders.modify("qtrade:t:2", limit=round(q.ask + 0.05, 2))   # marketable: fills at the ask
    assert pump(ib, lambda: tape.last_status("qtrade:t:2").status == E.FILLED)
    assert orders.broker_ids("qtrade:t:2") == (order_id, perm_id)
    sent = [m["order"] for m in sim.messages("placeOrder")]
    assert [(m["orderId"], m["lmtPrice"]) for m in sent] == [(order_id, round(q.bid - 1.0, 2)),
                                                             (order_id, round(q.bid - 0.5, 2)),
                                                             (order_id, round(q.ask + 0.05, 2))]
    [venue] = sim.record()["orders"]
    assert venue["permId"] == perm_id and len(venue["history"]) == 2
    assert orders.open_orders() == []
    assert_matches_record(tape, orders, sim, ["qtrade:t:2"])


def test_cancel_is_confirmed_by_ibs_status_and_a_done_order_is_not_changed(orders, tape, sim, expect_errors):
    expect_errors(202)
    ib = _ib(orders)
    orders.place(E.Order("qtrade:t:3", "SPY", "sell", 5, "limit", round(sim.quote("SPY").ask + 5, 2)))
    assert pump(ib, lambda: tape.of(E.OrderStatus))
    orders.cancel("qtrade:t:3")
    assert pump(ib, lambda: tape.last_status("qtrade:t:3").status == E.CANCELLED)
    ib.sleep(0.1)
    assert tape.statuses("qtrade:t:3") == [(E.SUBMITTED, 0, 5), (E.CANCELLED, 0, 5)]
    assert not tape.of(E.BrokerError)          # the 202 that follows our own cancel is no error
    n = len(sim.messages())
    orders.modify("qtrade:t:3", limit=1.0)
    orders.cancel("qtrade:t:3")
    ib.sleep(0.1)
    assert len(sim.messages()) == n            # nothing sent for a done order
    assert_matches_record(tape, orders, sim, ["qtrade:t:3"])


def test_scenario_8_a_margin_reject_is_rejected_with_the_reason_and_not_retried(orders, tape, sim, expect_errors):
    expect_errors(201)
    ib = _ib(orders)
    sim.reject_next_order("Insufficient margin")
    orders.place(E.Order("qtrade:t:4", "SPY", "buy", 1000))
    assert pump(ib, lambda: tape.of(E.OrderStatus))
    ib.sleep(0.3)
    [err] = tape.of(E.BrokerError)
    assert (err.ref, err.code) == ("qtrade:t:4", 201) and "Insufficient margin" in err.message
    [st] = tape.of(E.OrderStatus)
    assert (st.status, st.reason, st.filled, st.remaining) == (E.REJECTED, "Insufficient margin", 0, 1000)
    assert len(sim.messages("placeOrder")) == 1           # no retry
    assert sim.record()["orders"] == [] and orders.open_orders() == []


def test_scenario_9_a_partial_fill_then_ibs_cancel_keeps_the_40_filled(orders, tape, sim, expect_errors):
    expect_errors(202)
    ib = _ib(orders)
    sim.partial_fill_then_cancel(40)
    orders.place(E.Order("qtrade:t:5", "SPY", "buy", 100))
    assert pump(ib, lambda: tape.of(E.BrokerError))
    assert [e.quantity for e in tape.of(E.Execution)] == [40]
    assert tape.statuses("qtrade:t:5") == [(E.SUBMITTED, 0, 100), (E.PARTIAL, 40, 60), (E.CANCELLED, 40, 60)]
    [err] = tape.of(E.BrokerError)
    assert err.code == 202                      # IB's own cancel is reported: nobody asked for it
    assert_matches_record(tape, orders, sim, ["qtrade:t:5"])


def test_orders_that_cannot_be_sent_are_rejected_locally_and_nothing_leaves(orders, tape, sim, expect_errors):
    expect_errors(200)                           # the resolver's lookup of NOSUCH
    bad = [E.Order("qtrade:t:6", "SPY", "buy", math.nan),
           E.Order("qtrade:t:7", "SPY", "buy", 0),
           E.Order("qtrade:t:8", "SPY", "buy", 10, "limit", -1.0),
           E.Order("qtrade:t:9", "SPY", "sell", 10, "stop", None, math.inf),
           E.Order("qtrade:t:10", "SPY", "buy", 10, "limit", None),
           E.Order("qtrade:t:11", "NOSUCH", "buy", 10)]
    for order in bad:
        orders.place(order)
    assert [e.status for e in tape] == [E.REJECTED] * len(bad)
    assert all(e.reason.startswith("not sent: ") for e in tape)
    assert "quantity nan" in tape[0].reason and "positive limit" in tape[2].reason
    assert "contract not resolved" in tape[5].reason
    assert sim.messages("placeOrder") == []


def test_a_ref_is_never_placed_twice(orders, tape, sim):
    ib = _ib(orders)
    orders.place(E.Order("qtrade:t:12", "SPY", "buy", 1))
    with pytest.raises(ValueError, match="never sent twice"):
        orders.place(E.Order("qtrade:t:12", "SPY", "buy", 1))
    assert pump(ib, lambda: tape.of(E.CommissionReport))
    assert len(sim.messages("placeOrder")) == 1
    with pytest.raises(KeyError):
        orders.cancel("qtrade:t:unknown")


# ---- executions: corrections and late commissions --------------------------------------------
def test_an_execution_correction_replaces_the_first_one(orders, tape, sim):
    ib = _ib(orders)
    orders.place(E.Order("qtrade:t:13", "SPY", "buy", 100))
    assert pump(ib, lambda: tape.of(E.CommissionReport))
    [first] = orders.executions()
    new_id = sim.correct_execution(first.exec_id, price=first.price - 0.10)
    assert pump(ib, lambda: len(tape.of(E.Execution)) == 2 and len(tape.of(E.CommissionReport)) == 2)
    second = tape.of(E.Execution)[-1]
    assert (second.exec_id, second.corrects) == (new_id, first.exec_id)
    assert split_exec_id(new_id)[0] == split_exec_id(first.exec_id)[0]
    assert second.price == pytest.approx(first.price - 0.10) and second.quantity == 100
    assert orders.executions() == [second]
    assert tape.of(E.CommissionReport)[-1].exec_id == new_id
    assert tape.statuses("qtrade:t:13") == [(E.SUBMITTED, 0, 100), (E.FILLED, 100, 0)]   # the status is unchanged
    assert_matches_record(tape, orders, sim, ["qtrade:t:13"])


def test_late_commissions_and_zero_then_real_ones_update_per_exec_id(orders, tape, sim):
    ib = _ib(orders)
    sim.commissions("late", 0.3)
    orders.place(E.Order("qtrade:t:14", "SPY", "buy", 100))
    assert pump(ib, lambda: tape.last_status("qtrade:t:14") and tape.last_status("qtrade:t:14").status == E.FILLED)
    assert not tape.of(E.CommissionReport)       # the fill is reported before its commission
    assert pump(ib, lambda: tape.of(E.CommissionReport))
    assert [c.commission for c in tape.of(E.CommissionReport)] == [1.0]
    sim.commissions("zero_first", 0.3)
    orders.place(E.Order("qtrade:t:15", "SPY", "sell", 100))
    assert pump(ib, lambda: len(tape.of(E.CommissionReport)) == 3)
    ib.sleep(0.2)
    ex = tape.of(E.Execution, "qtrade:t:15")[0]
    assert [(c.exec_id, c.commission) for c in tape.of(E.CommissionReport)[1:]] == \
        [(ex.exec_id, 0.0), (ex.exec_id, 1.0)]
    assert_matches_record(tape, orders, sim, ["qtrade:t:14", "qtrade:t:15"])


# ---- what-if ---------------------------------------------------------------------------------
def test_what_if_prices_margin_and_commission_and_is_not_an_order(orders, sim):
    price = sim.quote("SPY").ask
    margin = orders.what_if(E.Order("qtrade:t:16", "SPY", "buy", 100))
    assert margin.initial == pytest.approx(100 * price * 0.25, rel=1e-3) and margin.commission == 1.0
    assert sim.record()["orders"] == [] and all(m["order"]["whatIf"] for m in sim.messages("placeOrder"))
    assert orders.what_if(E.Order("qtrade:t:17", "SPY", "buy", math.nan)) is None


def test_scenario_11_what_if_without_margin_data_gives_up_after_its_timeout(orders, sim):
    sim.whatif_unset_margin(True)
    started = time.monotonic()
    assert orders.what_if(E.Order("qtrade:t:18", "SPY", "buy", 100), timeout=0.3) is None
    assert 0.3 <= time.monotonic() - started < 1.0        # margin unknown, nothing hangs
    sim.whatif_unset_margin(False)
    assert orders.what_if(E.Order("qtrade:t:19", "SPY", "buy", 100)) is not None


# ---- scenario 10: an XSP iron condor ---------------------------------------------------------
def _condor(ib, sim, resolve_option):
    xsp = ib.qualifyContracts(Index("XSP", "CBOE", "USD"))[0]
    chain = ib.reqSecDefOptParams("XSP", "", "IND", xsp.conId)[0]
    expiry = dt.datetime.strptime(chain.expirations[-1], "%Y%m%d").date().isoformat()
    k = round(sim.quote("XSP").last)
    legs = []
    for name, right, action, strike in (("long_put", "put", "buy", k - 6), ("short_put", "put", "sell", k - 3),
                                        ("short_call", "call", "sell", k + 3), ("long_call", "call", "buy", k + 6)):
        con = resolve_option("XSP", expiry, strike, right[0].upper()).con_id
        q = sim.quote(con)
        legs.append(LegQuote(name, right, action, 1, float(strike), expiry, q.bid, q.ask, math.nan, math.nan))
    return tuple(legs)


def _natural(sim, orders_, legs, opening: bool) -> float:
    """The combo's price crossing every spread from the simulator's quotes: the credit of opening
    (sell the short legs at the bid, buy the wings at the ask) or the debit of closing."""
    total = 0.0
    for leg in legs:
        con = orders_._resolve_option("XSP", leg.expiry, leg.strike, leg.right[0].upper()).con_id
        q = sim.quote(con)
        sells = (leg.action == "sell") == opening
        total += q.bid if sells else -q.ask
    return round(total if opening else -total, 2)


def test_scenario_10_an_iron_condor_bag_chased_filled_with_its_legs_then_closed(orders, tape, sim):
    ib = _ib(orders)
    legs = _condor(ib, sim, orders._resolve_option)
    key = "XSP iron_condor"

    def condor(ref, action, intent, limit):
        return E.Order(ref, key, action, 2, "limit", limit, intent=intent, legs=legs, underlying="XSP", multiplier=100)

    margin = orders.what_if(condor("qtrade:ic:1", "sell", "open", 1.0))
    assert margin.initial == pytest.approx(3 * 100 * 2) and margin.commission == pytest.approx(0.65 * 2 * 4)
    sim.set_fill_mode("never")
    credit = _natural(sim, orders, legs, opening=True)
    assert credit > 0
    orders.place(condor("qtrade:ic:1", "sell", "open", credit + 0.30))
    assert pump(ib, lambda: tape.of(E.OrderStatus))
    ids = orders.broker_ids("qtrade:ic:1")
    placed = sim.messages("placeOrder")[-1]["order"]
    assert (placed["secType"], placed["action"], placed["lmtPrice"], placed["orderRef"]) == \
        ("BAG", "SELL", credit + 0.30, "qtrade:ic:1")
    [venue] = [o for o in sim.record()["orders"] if o["orderRef"] == "qtrade:ic:1"]
    # the BAG reads what each leg does when it is bought: selling it sells the inner strikes
    assert [leg["action"] for leg in venue["legs"]] == ["SELL", "BUY", "BUY", "SELL"]
    assert venue["combo_params"] == []                     # an option combo goes guaranteed: no leg risk
    for price in (credit + 0.20, credit + 0.10):           # the chase: same order, a new price each step
        orders.modify("qtrade:ic:1", limit=price)
        ib.sleep(0.1)
    assert orders.broker_ids("qtrade:ic:1") == ids and not tape.of(E.Execution)
    orders.modify("qtrade:ic:1", limit=round(credit - 0.05, 2))
    ib.sleep(0.1)
    sim.set_fill_mode("auto")
    assert pump(ib, lambda: tape.last_status("qtrade:ic:1").status == E.FILLED and tape.of(E.CommissionReport))
    assert orders.broker_ids("qtrade:ic:1") == ids
    [venue] = [o for o in sim.record()["orders"] if o["orderRef"] == "qtrade:ic:1"]
    assert venue["permId"] == ids[1] and len(venue["history"]) == 3
    [bag] = tape.of(E.Execution)
    assert (bag.symbol, bag.action, bag.quantity) == (key, "sell", 2) and bag.price > 0   # the credit per unit
    leg_execs = orders.leg_executions("qtrade:ic:1")
    assert len(leg_execs) == 4
    assert sum((1 if x.action == "sell" else -1) * x.price for x in leg_execs) == pytest.approx(bag.price)
    assert [x.action for x in leg_execs] == ["buy", "sell", "sell", "buy"]
    assert tape.of(E.CommissionReport) == [E.CommissionReport(bag.exec_id, pytest.approx(0.65 * 2 * 4))]
    assert_matches_record(tape, orders, sim, ["qtrade:ic:1"])
    held = {p["conId"]: p["qty"] for p in sim.record()["positions"]}
    assert [held[x.con_id] for x in leg_execs] == [2, -2, -2, 2]

    debit = _natural(sim, orders, legs, opening=False)
    orders.place(condor("qtrade:ic:2", "buy", "close", round(debit + 0.05, 2)))
    assert pump(ib, lambda: tape.last_status("qtrade:ic:2") is not None and
                tape.last_status("qtrade:ic:2").status == E.FILLED and len(tape.of(E.CommissionReport)) == 2)
    [close] = tape.of(E.Execution, "qtrade:ic:2")
    assert close.action == "buy" and close.price > 0                # the debit paid per unit
    assert [x.action for x in orders.leg_executions("qtrade:ic:2")] == ["sell", "buy", "buy", "sell"]
    assert all(p["qty"] == 0 for p in sim.record()["positions"])
    assert_matches_record(tape, orders, sim, ["qtrade:ic:1", "qtrade:ic:2"])


def test_a_combo_with_a_leg_that_is_not_an_option_goes_non_guaranteed(sim, connect, tape):
    ib = connect(sim)
    resolve, _ = resolvers(ib)
    stock_of = {1.0: "SPY", 2.0: "AAPL"}      # a stock pair: each 'leg' resolves to a stock
    orders = Orders(ib, resolve, lambda und, expiry, strike, right: resolve(stock_of[strike]), tape.append)
    legs = (LegQuote("spy", "call", "buy", 1, 1.0, "2019-11-29", math.nan, math.nan, math.nan, math.nan),
            LegQuote("aapl", "call", "sell", 1, 2.0, "2019-11-29", math.nan, math.nan, math.nan, math.nan))
    orders.place(E.Order("qtrade:pair:1", "SPY-AAPL", "buy", 10, "limit", 1.0, legs=legs, underlying="SPY"))
    assert pump(_ib(orders), lambda: tape.of(E.OrderStatus))
    [venue] = sim.record()["orders"]
    assert [tuple(p) for p in venue["combo_params"]] == [("NonGuaranteed", "1")]
    assert [(leg["conId"], leg["action"]) for leg in venue["legs"]] == [(resolve("SPY").con_id, "BUY"),
                                                                       (resolve("AAPL").con_id, "SELL")]
    orders.close()


# ---- scenario 17's order half: NQ ------------------------------------------------------------
def test_an_nq_future_fills_per_unit_with_the_venue_holding_price_times_20(make_sim, connect, nq_data):
    sim = make_sim(nq_data)
    ib = connect(sim)
    resolve, resolve_option = resolvers(ib)
    tape = Tape()
    orders = Orders(ib, resolve, resolve_option, tape.append)
    nq = resolve("NQ")
    assert nq.multiplier == 20 and nq.local_symbol.startswith("NQ")
    ask = sim.quote(nq.con_id).ask
    orders.place(E.Order("qtrade:nq:1", "NQ", "buy", 2))
    assert pump(ib, lambda: tape.of(E.CommissionReport))
    [ex] = tape.of(E.Execution)
    # per unit, not x 20: at the ask, or a tick or two from it when the simulator's clock moved
    # its quote between the read and the fill (a loaded machine)
    assert abs(ex.price - ask) <= 1.0 and ex.price * 4 == int(ex.price * 4) and ex.quantity == 2
    assert tape.last_status("qtrade:nq:1").avg_price == pytest.approx(ex.price)
    assert tape.of(E.CommissionReport)[0].commission == 4.5
    [pos] = sim.record()["positions"]
    assert pos["qty"] == 2 and pos["avg_price"] == pytest.approx(ex.price)      # the venue's, per unit
    assert sim.messages("placeOrder")[0]["order"]["symbol"] == "NQ"
    assert_matches_record(tape, orders, sim, ["qtrade:nq:1"])
    orders.close()


# ---- reconnects ------------------------------------------------------------------------------
def test_after_a_drop_rebind_reports_the_fill_made_meanwhile_and_modify_cancel_still_work(orders, tape, sim,
                                                                                          expect_errors):
    expect_errors(202, "Peer closed connection")
    ib = _ib(orders)
    q = sim.quote("SPY")
    sim.set_fill_mode("manual")
    orders.place(E.Order("qtrade:r:1", "SPY", "buy", 100, "limit", round(q.bid - 1, 2)))
    assert pump(ib, lambda: tape.of(E.OrderStatus))
    order_id, perm_id = orders.broker_ids("qtrade:r:1")
    sim.drop_connection()
    assert pump(ib, lambda: not ib.isConnected())
    sim.fill_order(order_id, 30, round(q.bid - 1, 2))        # while nobody listens
    ib.connect("127.0.0.1", sim.port, clientId=1, timeout=3)
    assert not tape.of(E.Execution)                          # ib_async fires no execDetailsEvent for it
    assert orders.rebind() == []
    assert [(e.quantity, e.price) for e in tape.of(E.Execution)] == [(30, pytest.approx(round(q.bid - 1, 2)))]
    assert tape.statuses("qtrade:r:1")[-1] == (E.PARTIAL, 30, 70)
    # IB's status came before the replayed execution: it waited for it, and carries its price
    assert tape.last_status("qtrade:r:1").avg_price == pytest.approx(round(q.bid - 1, 2))
    assert tape.index(tape.last_status("qtrade:r:1")) > tape.index(tape.of(E.Execution)[0])
    assert tape.of(E.CommissionReport)[-1].commission == 1.0
    n = len(tape)
    assert orders.rebind() == [] and len(tape) == n          # twice changes nothing
    orders.modify("qtrade:r:1", limit=round(q.bid - 0.5, 2))
    ib.sleep(0.2)
    [venue] = sim.record()["orders"]
    assert (venue["orderId"], venue["permId"], venue["lmtPrice"]) == (order_id, perm_id, round(q.bid - 0.5, 2))
    orders.cancel("qtrade:r:1")
    assert pump(ib, lambda: tape.last_status("qtrade:r:1").status == E.CANCELLED)
    assert tape.last_status("qtrade:r:1").filled == 30
    assert orders.broker_ids("qtrade:r:1") == (order_id, perm_id)
    assert_matches_record(tape, orders, sim, ["qtrade:r:1"])
    with pytest.raises(ValueError):
        orders.place(E.Order("qtrade:r:1", "SPY", "buy", 1))


def test_modify_while_disconnected_sends_nothing_and_says_so(orders, tape, sim, expect_errors):
    expect_errors("Peer closed connection")
    ib = _ib(orders)
    orders.place(E.Order("qtrade:r:2", "SPY", "buy", 1, "limit", 1.0))
    assert pump(ib, lambda: tape.of(E.OrderStatus))
    sim.drop_connection()
    assert pump(ib, lambda: not ib.isConnected())
    orders.modify("qtrade:r:2", limit=2.0)
    [err] = tape.of(E.BrokerError)
    assert err.code == LOCAL and "not connected" in err.message
    [refused] = tape.of(E.ModifyRefused)              # as IB holds it; it may be asked again
    assert refused == E.ModifyRefused("qtrade:r:2", "not sent: not connected to IB", 1.0, 1.0, None, refused.time,
                                      final=False)
    assert [m["order"]["lmtPrice"] for m in sim.messages("placeOrder")] == [1.0]


def test_a_modify_ib_refuses_says_so_with_the_order_as_ib_holds_it_and_a_later_one_goes(orders, tape, sim,
                                                                                         expect_errors):
    """A stop moved off the tick grid: IB answers 110 and keeps the order at its old price (a
    warning: the order is still live). Orders reports a ModifyRefused with the stop IB holds and
    puts ib_async's Trade back, so the next modify sends the old quantity and a new stop, which
    IB takes."""
    expect_errors(110, 202)
    ib = _ib(orders)
    q = sim.quote("SPY")
    stop = round(q.bid - 5.0, 2)
    orders.place(E.Order("qtrade:m:1", "SPY", "sell", 10, "stop", stop=stop, tif="gtc"))
    assert pump(ib, lambda: tape.of(E.OrderStatus))
    orders.modify("qtrade:m:1", stop=stop + 0.005)
    assert pump(ib, lambda: tape.of(E.ModifyRefused))
    [err] = tape.of(E.BrokerError)
    [refused] = tape.of(E.ModifyRefused)
    assert err.code == 110
    assert (refused.ref, refused.quantity, refused.limit, refused.stop, refused.final) == \
        ("qtrade:m:1", 10.0, None, stop, True)
    assert "minimum price variation" in refused.reason
    [venue] = sim.record()["orders"]
    assert (venue["auxPrice"], venue["status"]) == (stop, "PreSubmitted")     # at IB: as it was, working
    assert [o.stop for o in orders.open_orders()] == [stop]
    orders.modify("qtrade:m:1", stop=round(stop + 0.5, 2))
    assert pump(ib, lambda: sim.record()["orders"][0]["auxPrice"] == round(stop + 0.5, 2))
    ib.sleep(0.2)
    assert len(tape.of(E.ModifyRefused)) == 1
    assert sim.messages("placeOrder")[-1]["order"]["totalQuantity"] == 10
    assert [o.stop for o in orders.open_orders()] == [round(stop + 0.5, 2)]
    orders.cancel("qtrade:m:1")
    assert pump(ib, lambda: tape.last_status("qtrade:m:1").status == E.CANCELLED)


def test_a_cancel_race_error_is_not_believed_until_ib_is_asked(orders, tape, sim, expect_errors):
    expect_errors(161, 202)
    ib = _ib(orders)
    sim.set_fill_mode("manual")
    orders.place(E.Order("qtrade:c:1", "SPY", "buy", 10, "limit", 1.0))
    orders.place(E.Order("qtrade:c:2", "SPY", "buy", 10, "limit", 1.0))
    assert pump(ib, lambda: len(tape.of(E.OrderStatus)) == 2)
    one, _ = orders.broker_ids("qtrade:c:1")
    two, _ = orders.broker_ids("qtrade:c:2")
    text = "Cancel attempted when order is not in a cancellable state."
    sim.inject_error(one, 161, text)
    sim.inject_error(two, 161, text)
    assert pump(ib, lambda: len(tape.of(E.BrokerError)) == 2)
    assert {e.code for e in tape.of(E.BrokerError)} == {161}
    assert set(orders.pending_checks()) == {"qtrade:c:1", "qtrade:c:2"}
    assert tape.statuses("qtrade:c:1") == [(E.SUBMITTED, 0, 10)]     # ib_async's local 'Cancelled' is not reported
    sim.fill_order(two, 10, 1.0)                                    # the race: it filled after all
    assert pump(ib, lambda: tape.last_status("qtrade:c:2").status == E.FILLED)
    orders.settle()
    assert orders.pending_checks() == {}
    assert tape.statuses("qtrade:c:1") == [(E.SUBMITTED, 0, 10)]     # IB says it still works
    orders.modify("qtrade:c:1", limit=1.5)                          # and it can be changed again
    ib.sleep(0.2)
    assert [o["lmtPrice"] for o in sim.record()["orders"] if o["orderRef"] == "qtrade:c:1"] == [1.5]
    orders.cancel("qtrade:c:1")
    assert pump(ib, lambda: tape.last_status("qtrade:c:1").status == E.CANCELLED)
    assert_matches_record(tape, orders, sim, ["qtrade:c:1", "qtrade:c:2"])


def test_read_only_refuses_orders_locally_and_lets_what_if_go(sim, connect, tape):
    ib = connect(sim)
    resolve, resolve_option = resolvers(ib)
    seeded = sim.seed_order("SPY", "BUY", 10, "LMT", 1.0, order_ref="qtrade:ro:0", clientId=1)
    orders = Orders(ib, resolve, resolve_option, tape.append, read_only=True)
    orders.place(E.Order("qtrade:ro:1", "SPY", "buy", 10))
    [st] = tape.of(E.OrderStatus)
    assert st.status == E.REJECTED and "read-only" in st.reason
    assert orders.what_if(E.Order("qtrade:ro:2", "SPY", "buy", 10)) is not None
    ib.reqOpenOrders()
    assert orders.adopt(E.Order("qtrade:ro:0", "SPY", "buy", 10, "limit", 1.0))
    orders.modify("qtrade:ro:0", limit=2.0)
    orders.cancel("qtrade:ro:0")
    assert [e.code for e in tape.of(E.BrokerError)] == [LOCAL, LOCAL]
    assert all("read-only" in e.message for e in tape.of(E.BrokerError))
    ib.sleep(0.1)
    assert [m["order"]["whatIf"] for m in sim.messages("placeOrder")] == [True]
    assert sim.messages("cancelOrder") == []
    [venue] = sim.record()["orders"]
    assert (venue["orderId"], venue["lmtPrice"], venue["status"]) == (seeded, 1.0, "Submitted")
    orders.close()


# ---- pure helpers ----------------------------------------------------------------------------
def test_unset_nan_and_infinities_are_never_numbers():
    assert [real(x) for x in (None, "", "abc", math.nan, math.inf, -math.inf, 1.7976931348623157e308,
                              "1.7976931348623157E308")] == [None] * 8
    assert [real(x) for x in ("1.5", 0, -1.25)] == [1.5, 0.0, -1.25]


def test_the_bag_leg_actions_keep_ibs_action_equal_to_the_kernels():
    # a credit condor opened by SELL: the BAG reads what each leg does when it is bought
    assert [bag_leg_action(a, "sell", "open") for a in ("buy", "sell")] == ["SELL", "BUY"]
    # closing it by BUY: the same BAG
    assert [bag_leg_action(a, "buy", "close") for a in ("buy", "sell")] == ["SELL", "BUY"]
    # a debit spread opened by BUY and closed by SELL: its legs as written
    assert [bag_leg_action(a, "buy", "open") for a in ("buy", "sell")] == ["BUY", "SELL"]
    assert [bag_leg_action(a, "sell", "close") for a in ("buy", "sell")] == ["BUY", "SELL"]


def test_leg_executions_group_under_their_bag_execution_by_quantity():
    ratios = {1: 1.0, 2: 2.0}
    legs = [(1, "a1", 1.0), (2, "b1", 2.0), (1, "a2", 2.0), (2, "b2", 3.0)]
    assert group_legs([("bag1", 1.0), ("bag2", 2.0)], legs, ratios) == {"bag1": ["a1", "b1"], "bag2": None}
    assert group_legs([("bag1", 1.0), ("bag2", 2.0)], legs + [(2, "b3", 1.0)], ratios) == \
        {"bag1": ["a1", "b1"], "bag2": ["a2", "b2", "b3"]}
    assert group_legs([], legs, ratios) == {}


def test_plain_reasons_and_exec_id_versions():
    assert plain_reason(201, "Order rejected - reason:Insufficient margin") == "Insufficient margin"
    assert plain_reason(202, "Order Canceled - reason:") == "cancelled by IB"
    assert plain_reason(200, "No security definition has been found for the request") == \
        "No security definition has been found for the request"
    assert split_exec_id("0000e1a7.00000001.01.02") == ("0000e1a7.00000001.01", 2)
    assert split_exec_id("weird") == ("weird", 0)
