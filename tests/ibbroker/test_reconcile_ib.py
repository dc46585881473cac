"""engine/brokers/ib/reconcile.py against the gateway simulator: the fetch over the real ib_async
client, then the pure comparison with a journal's view."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from ib_async import IB

from engine.brokers import events as E
from engine.brokers.ib.orders import Orders
from engine.brokers.ib.reconcile import (Incomplete, JournalOrder, JournalPosition, JournalView, fetch, reconcile)

from .test_orders import Tape, pump, resolvers

SINCE = dt.timedelta(hours=6)


def _session(sim, connect, client_id=1):
    ib = connect(sim, clientId=client_id)
    resolve, resolve_option = resolvers(ib)
    tape = Tape()
    return ib, Orders(ib, resolve, resolve_option, tape.append), tape, resolve


def _since(sim) -> dt.datetime:
    return sim.now() - SINCE


def _earlier_run(sim, connect):
    """A first session: SPY bought (filled) and a resting take-profit tagged qtrade:, then gone."""
    ib, orders, tape, resolve = _session(sim, connect)
    orders.place(E.Order("qtrade:s:1", "SPY", "buy", 100))
    tp = round(sim.quote("SPY").ask + 5, 2)
    orders.place(E.Order("qtrade:s:2", "SPY", "sell", 100, "limit", tp))
    assert pump(ib, lambda: tape.of(E.CommissionReport) and tape.last_status("qtrade:s:2") is not None)
    [fill] = orders.executions()
    spy = resolve("SPY")
    view = JournalView(orders=(JournalOrder("qtrade:s:2", "SPY", "sell", 100, "submitted", "SPY", spy.con_id,
                                            *orders.broker_ids("qtrade:s:2")),),
                       exec_ids=frozenset({fill.exec_id}),
                       positions=(JournalPosition(spy.con_id, "SPY", "SPY", 100, fill.price, 1.0),),
                       commissions={fill.exec_id: 1.0}, traded=frozenset({spy.con_id}))
    orders.close()
    ib.disconnect()
    return view, tp


def test_scenario_1_a_restart_adopts_the_working_order_and_proposes_nothing_to_send(sim, connect, expect_errors):
    expect_errors(202)
    view, tp = _earlier_run(sim, connect)
    sent = len(sim.messages("placeOrder"))
    started = time.perf_counter()
    ib = IB()
    ib.connect("127.0.0.1", sim.port, clientId=1, timeout=3)
    connected = time.perf_counter() - started
    try:
        snapshot = fetch(ib, all_clients=False, since=_since(sim), timeout=2.0)
        report = reconcile(snapshot, view, "qtrade:")
        print(f"figure: connect {connected * 1000:.0f} ms, fetch {snapshot.seconds * 1000:.1f} ms")
        assert connected < 1.0
        [adopt] = report.adopt
        assert (adopt.tag, adopt.journal, adopt.order.action, adopt.order.limit, adopt.order.perm_id) == \
            ("qtrade:s:2", view.orders[0], "sell", tp, view.orders[0].perm_id)
        assert report.clean and report.fills == () and report.finished == () and report.foreign == ()
        assert len(sim.messages("placeOrder")) == sent               # nothing re-sent
        # the adoption binds it: the new session can cancel what the old one placed
        resolve, resolve_option = resolvers(ib)
        tape = Tape()
        orders = Orders(ib, resolve, resolve_option, tape.append)
        assert orders.adopt(E.Order("qtrade:s:2", "SPY", "sell", 100, "limit", tp), perm_id=adopt.order.perm_id)
        orders.refuse_refs(o.order_ref for o in snapshot.completed_orders)
        with pytest.raises(ValueError):
            orders.place(E.Order("qtrade:s:1", "SPY", "buy", 100))   # IB knows that ref: never again
        orders.cancel("qtrade:s:2")
        assert pump(ib, lambda: tape.last_status("qtrade:s:2").status == E.CANCELLED)
        assert [o["status"] for o in sim.record()["orders"] if o["orderRef"] == "qtrade:s:2"] == ["Cancelled"]
        orders.close()
    finally:
        ib.disconnect()


def test_scenario_3_another_client_id_sees_the_old_orders_only_through_all_open_orders(sim, connect):
    view, _ = _earlier_run(sim, connect)
    ib = connect(sim, clientId=7)
    mine_only = reconcile(fetch(ib, all_clients=False, since=_since(sim), timeout=2.0), view)
    assert mine_only.adopt == () and mine_only.lost == ("qtrade:s:2",)      # why the fallback id needs reqAllOpenOrders
    every = reconcile(fetch(ib, all_clients=True, since=_since(sim), timeout=2.0), view)
    assert [a.tag for a in every.adopt] == ["qtrade:s:2"] and every.lost == () and every.clean
    assert len(sim.messages("reqAllOpenOrders")) == 1


def test_scenario_13_late_positions_make_the_fetch_incomplete_then_a_retry_succeeds(sim, connect):
    ib = connect(sim)
    spy = resolvers(ib)[0]("SPY")
    sim.set_position(spy.con_id, 100, 260.0)
    sim.delay_positions(1.0)
    started = time.monotonic()
    with pytest.raises(Incomplete, match="positions: no end marker within 0.4 s"):
        fetch(ib, all_clients=False, since=None, timeout=0.4)
    assert time.monotonic() - started < 0.8
    snapshot, wait = None, 0.4
    for _ in range(4):                                   # retry, each time waiting longer, as the connection does
        ib.sleep(0.1)
        wait *= 2
        try:
            snapshot = fetch(ib, all_clients=False, since=None, timeout=wait)
            break
        except Incomplete:
            continue
    assert snapshot is not None
    assert [(p.local_symbol, p.quantity, p.avg_price) for p in snapshot.positions] == [("SPY", 100, 260.0)]
    view = JournalView(positions=(JournalPosition(spy.con_id, "SPY", "SPY", 100, 260.0),))
    assert reconcile(snapshot, view).clean


@pytest.fixture
def msft_data(tmp_path):
    """The bundled sample plus an MSFT (AAPL's bars under MSFT's name: the simulator lists what it has bars for)."""
    from gatewaysim.data import SAMPLE

    for f in SAMPLE.glob("*.csv"):
        (tmp_path / f.name).symlink_to(f)
    (tmp_path / "MSFT.csv").symlink_to(SAMPLE / "AAPL.csv")
    return tmp_path


def test_scenario_14_phantom_and_unknown_positions_at_the_venue(make_sim, connect, msft_data):
    sim = make_sim(msft_data)
    ib = connect(sim)
    resolve = resolvers(ib)[0]
    aapl, msft = resolve("AAPL"), resolve("MSFT")
    sim.set_position(msft.con_id, 50, 300.0)
    view = JournalView(positions=(JournalPosition(aapl.con_id, "AAPL", "AAPL", 100, 180.0),),
                       traded=frozenset({aapl.con_id}))
    report = reconcile(fetch(ib, all_clients=False, since=_since(sim), timeout=2.0), view)
    assert [(p.local_symbol, p.journal_quantity, p.ib_quantity) for p in report.phantom] == [("AAPL", 100, 0)]
    assert [(p.local_symbol, p.ib_quantity, p.ib_avg_price) for p in report.unknown] == [("MSFT", 50, 300.0)]
    assert report.mismatch == () and report.blocked == frozenset({"MSFT"})
    assert sim.messages("placeOrder") == [] and sim.messages("cancelOrder") == []   # no exit sent, MSFT untouched


def test_a_fill_while_disconnected_is_found_by_the_next_fetch(sim, connect, expect_errors):
    ib, orders, tape, resolve = _session(sim, connect)
    sim.set_fill_mode("manual")
    bid = sim.quote("SPY").bid
    orders.place(E.Order("qtrade:s:5", "SPY", "buy", 100, "limit", bid))
    assert pump(ib, lambda: tape.of(E.OrderStatus))
    order_id, perm_id = orders.broker_ids("qtrade:s:5")
    spy = resolve("SPY")
    view = JournalView(orders=(JournalOrder("qtrade:s:5", "SPY", "buy", 100, "submitted", "SPY", spy.con_id,
                                            order_id, perm_id),))
    orders.close()
    ib.disconnect()
    sim.fill_order(order_id, 100, bid, clientId=1)        # nobody is connected
    again = IB()
    live = []
    again.execDetailsEvent += lambda trade, fill: live.append(fill)
    again.connect("127.0.0.1", sim.port, clientId=1, timeout=3)
    try:
        assert live == []                                 # ib_async fires nothing for it
        report = reconcile(fetch(again, all_clients=False, since=_since(sim), timeout=2.0), view)
        [fill] = report.fills
        [venue] = sim.record()["executions"]
        assert (fill.exec_id, fill.tag, fill.quantity, fill.price, fill.commission, fill.perm_id) == \
            (venue["execId"], "qtrade:s:5", 100, bid, venue["commission"], perm_id)
        assert [(f.tag, f.status, f.filled) for f in report.finished] == [("qtrade:s:5", "filled", 100)]
        assert report.clean                                # the position is the fill's
    finally:
        again.disconnect()


def test_the_time_filter_keeps_earlier_executions_out(sim, connect):
    ib, orders, tape, _ = _session(sim, connect)
    orders.place(E.Order("qtrade:s:6", "SPY", "buy", 10))
    assert pump(ib, lambda: tape.of(E.CommissionReport))
    sim.advance(3600)
    cut = sim.now() - dt.timedelta(minutes=1)
    orders.place(E.Order("qtrade:s:7", "SPY", "buy", 10))
    assert pump(ib, lambda: len(tape.of(E.CommissionReport)) == 2)
    assert [x.order_ref for x in fetch(ib, all_clients=False, since=cut, timeout=2.0).executions] == ["qtrade:s:7"]
    assert len(fetch(ib, all_clients=False, since=None, timeout=2.0).executions) == 2
    orders.close()


def test_a_disconnect_during_the_fetch_is_incomplete_never_empty(sim, connect, expect_errors):
    expect_errors("Peer closed connection")
    ib = connect(sim)
    sim.delay_positions(1.0)
    timer = threading.Timer(0.2, sim.drop_connection)   # the venue goes while the client waits
    timer.start()
    try:
        with pytest.raises(Incomplete, match="disconnect"):
            fetch(ib, all_clients=False, since=None, timeout=2.0)
    finally:
        timer.join()
    with pytest.raises(Incomplete, match="not connected"):
        fetch(ib, all_clients=False, since=None, timeout=2.0)


def test_reconciliation_time_with_100_journaled_orders(sim, connect):
    sim.set_fill_mode("manual")
    ids = [sim.seed_order("SPY", "BUY", 10, "LMT", 250.0, order_ref=f"qtrade:b:{i}", clientId=1) for i in range(100)]
    for order_id in ids[1::2]:
        sim.fill_order(order_id, 10, 250.0, clientId=1)
    perms = {o["orderRef"]: o["permId"] for o in sim.record()["orders"]}
    ib = connect(sim)
    spy = resolvers(ib)[0]("SPY")
    view = JournalView(orders=tuple(JournalOrder(f"qtrade:b:{i}", "SPY", "buy", 10, "submitted", "SPY", spy.con_id,
                                                 ids[i], perms[f"qtrade:b:{i}"]) for i in range(100)),
                       traded=frozenset({spy.con_id}))
    started = time.perf_counter()
    snapshot = fetch(ib, all_clients=False, since=_since(sim), timeout=5.0)
    fetched = time.perf_counter()
    report = reconcile(snapshot, view)
    done = time.perf_counter()
    print(f"figure: reconciliation with 100 journaled orders: fetch {(fetched - started) * 1000:.0f} ms "
          f"(positions, 50 open, 50 completed, 50 executions), compare {(done - fetched) * 1000:.2f} ms")
    assert len(report.adopt) == 50 and len(report.finished) == 50 and len(report.fills) == 50
    assert {f.status for f in report.finished} == {"filled"} and report.clean
    assert sum(f.commission for f in report.fills) == pytest.approx(50 * 1.0)
    assert done - started < 3.0
