"""IBBroker, the IB parts composed: what only the composition decides. A futures position is
closed in the contract it was opened in, even after the roll moved the front month; no entry
opens a second contract of the root while the first is held; the lines of open positions are
held at position priority and entries on symbols without a line take turns within the budget.
The real ib_async client over a socket against the gateway simulator."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from engine.brokers import events as E
from engine.brokers.ib.broker import IBBroker
from engine.brokers.ib.contracts import load_instruments
from engine.brokers.ib.marketdata import Priority
from engine.runtime.trading import Connect


def broker(sim, **kw) -> IBBroker:
    b = IBBroker(Connect(port=sim.port, client_id=kw.pop("client_id", 7), connect_timeout=5),
                 instruments=load_instruments(), say=lambda m: None, **kw)
    b.connect()
    b.ready()
    return b


def pump_until(b: IBBroker, cond, timeout: float = 5.0) -> list:
    """Pump until cond(events so far) holds; the events taken."""
    seen: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b.pump(0.05)
        seen.extend(b.events())
        if cond(seen):
            return seen
    raise AssertionError(f"timed out; events: {seen}")


def filled(ref):
    return lambda evs: any(isinstance(e, E.OrderStatus) and e.ref == ref and e.status == "filled" for e in evs)


def venue_orders(sim) -> dict:
    return {o["orderRef"]: o for o in sim.record()["orders"]}


def venue_positions(sim) -> dict:
    return {p["conId"]: p["qty"] for p in sim.record()["positions"] if p["qty"]}


@pytest.fixture
def nq_venue(make_sim, nq_data):
    return make_sim(nq_data, speed=60)


def test_a_futures_position_is_closed_in_its_own_contract_after_the_roll(nq_venue):
    b = broker(nq_venue)
    try:
        z3 = b.contracts.resolve("NQ")                         # the simulator's day is 2023-12-04
        assert z3.local_symbol == "NQZ3"
        b.place(E.Order("qtrade:t:1", "NQ", "buy", 1, intent="open"))
        pump_until(b, filled("qtrade:t:1"))
        assert b.held_contract("NQ").con_id == z3.con_id
        b.held_symbols = lambda: ["NQ"]
        # the roll: NQZ3's last trade date is Dec 15; less the map's 5 sessions the front month
        # is NQH4 from Dec 11
        b.contracts.today = lambda: dt.date(2023, 12, 11)
        h4 = b.contracts.resolve("NQ")
        assert h4.local_symbol == "NQH4"
        why = b.gate("NQ")
        assert why is not None and "held in NQZ3" in why and "front month is now NQH4" in why
        assert b.contract_for("NQ", "qtrade:t:9", "open") == (h4.con_id, "NQH4")    # what an entry would go to
        assert b.contract_for("NQ", "qtrade:t:9", "close") == (z3.con_id, "NQZ3")   # and an exit
        b.place(E.Order("qtrade:t:2", "NQ", "sell", 1, intent="close"))
        pump_until(b, filled("qtrade:t:2"))
        book = venue_orders(nq_venue)
        assert book["qtrade:t:2"]["conId"] == z3.con_id                            # closed where it was held
        assert b.contract_for("NQ", "qtrade:t:2") == (z3.con_id, "NQZ3")           # and journaled so
        assert venue_positions(nq_venue).get(z3.con_id, 0) == 0 and h4.con_id not in venue_positions(nq_venue)
        # flat: the next entry goes to the new front month, and its fills pin the position there
        b.held_symbols = lambda: []
        assert b.gate("NQ") is None
        b.place(E.Order("qtrade:t:3", "NQ", "buy", 1, intent="open"))
        pump_until(b, filled("qtrade:t:3"))
        assert venue_orders(nq_venue)["qtrade:t:3"]["conId"] == h4.con_id
        assert b.held_contract("NQ").con_id == h4.con_id
        assert venue_positions(nq_venue) == {h4.con_id: 1}
    finally:
        b.close()


def test_roll_to_names_the_held_and_the_front_contract_once_the_roll_rule_moves_past_it(nq_venue):
    """What the kernel asks at each close of an IB run: nothing before NQZ3's roll date, (NQZ3,
    NQH4) after it while NQZ3 is held, nothing once the position is held in NQH4."""
    b = broker(nq_venue)
    try:
        b.place(E.Order("qtrade:t:1", "NQ", "buy", 1, intent="open"))
        pump_until(b, filled("qtrade:t:1"))
        b.held_symbols = lambda: ["NQ"]
        assert b.roll_to("NQ") is None                               # Dec 4: NQZ3 is the front month
        b.contracts.today = lambda: dt.date(2023, 12, 11)           # past NQZ3's roll (Dec 8)
        assert b.roll_to("NQ") == ("NQZ3", "NQH4")
        b.held_symbols = lambda: []
        assert b.roll_to("NQ") is None                               # flat: nothing to roll
        b.held_symbols = lambda: ["NQ"]
        b.place(E.Order("qtrade:t:2", "NQ", "sell", 1, intent="close"))
        pump_until(b, filled("qtrade:t:2"))
        b.place(E.Order("qtrade:t:3", "NQ", "buy", 1, intent="open"))
        pump_until(b, filled("qtrade:t:3"))
        assert b.held_contract("NQ").local_symbol == "NQH4" and b.roll_to("NQ") is None
        assert venue_positions(nq_venue) == {b.held_contract("NQ").con_id: 1}
    finally:
        b.close()


def test_a_futures_stream_follows_the_front_month_when_the_roll_rule_moves_it(nq_venue):
    b = broker(nq_venue)
    try:
        b.stream("NQ", "1m", "extended")
        z3 = b.contracts.resolve("NQ")
        deadline = time.monotonic() + 10
        got = []
        while not got and time.monotonic() < deadline:
            b.pump(0.1)
            got = b.completed("NQ")
        assert got and b._stream_of["NQ"][0].con_id == z3.con_id
        last = got[-1].start
        b.contracts.today = lambda: dt.date(2023, 12, 11)           # the roll moved the front month to NQH4
        b.completed("NQ")
        h4 = b.contracts.resolve("NQ")
        assert h4.local_symbol == "NQH4" and b._stream_of["NQ"][0].con_id == h4.con_id
        asked = [m for m in nq_venue.record()["received"] if "istorical" in m["name"]]
        assert [m["name"] for m in asked if str(h4.con_id) in m["fields"]]      # NQH4's bars asked over the wire
        said = b.take_alerts()
        assert any("the front month is now NQH4 (it was NQZ3)" in a.message for a in said)
        later = []
        deadline = time.monotonic() + 10
        while not later and time.monotonic() < deadline:
            b.pump(0.1)
            later = b.completed("NQ")
        assert later and all(bar.start > last for bar in later)      # no bar handed out twice
    finally:
        b.close()


def test_a_restored_position_is_held_in_the_journals_contract(nq_venue):
    """After a restart the journal's conId, not today's front month, is where the exits go."""
    b = broker(nq_venue)
    try:
        listed = b.contracts.resolve("NQ")
        b.contracts.today = lambda: dt.date(2023, 12, 11)          # past NQZ3's roll
        assert b.hold_contract("NQ", listed.con_id) == "NQZ3"
        b.place(E.Order("qtrade:t:5", "NQ", "sell", 1, intent="close"))
        pump_until(b, filled("qtrade:t:5"))
        assert venue_orders(nq_venue)["qtrade:t:5"]["conId"] == listed.con_id
    finally:
        b.close()


def test_open_positions_hold_their_lines_and_entries_take_turns(sim, error_guard):
    """A budget of 2 lines (none reserved), a TTL of 0.5 s: a held position's line is raised to
    position priority and never evicted; an entry on a symbol without a line asks for one when a
    line has been idle for the TTL, and waits for its first quote; the simulator, enforcing 2
    lines, never answers 101."""
    sim.set_max_lines(2)
    b = broker(sim, subscriptions={"max_lines": 2, "reserve_for_positions": 0, "ttl": "0.5s"})
    try:
        assert b.subscribe("SPY") is None and b.subscribe("AAPL") is None
        assert "no market data line" in b.subscribe("INTC")
        b.held_symbols = lambda: ["SPY"]
        b.pump(0.1)
        assert b.budget.held() == {"AAPL": Priority.PICK, "SPY": Priority.POSITION}
        # within the TTL AAPL's line is not idle yet: INTC waits
        why = b.gate("INTC")
        assert why is not None and "no market data line" in why
        time.sleep(0.6)
        assert b.gate("INTC") is None                       # AAPL's idle line gave way
        assert b.quote("INTC") is not None
        assert b.budget.held() == {"INTC": Priority.PICK, "SPY": Priority.POSITION}
        time.sleep(0.6)
        b.pump(0.1)                                          # TTL: idle picks go, the position's line stays
        assert b.budget.held() == {"SPY": Priority.POSITION}
        b.held_symbols = lambda: []                          # the position closed: its line is a pick again
        b.pump(0.1)
        assert b.budget.held() == {"SPY": Priority.PICK}
        assert 101 not in error_guard.codes()               # (any ERROR ib_async logs fails the test too)
    finally:
        b.close()


def test_a_line_with_an_order_working_is_in_use_and_not_freed_by_the_ttl(sim, expect_errors):
    """An entry working at IB for a symbol keeps its line: the fill would make a position before
    the run books it, so an idle-line review between them must not free the line (seen under load:
    a position's line cancelled while it was held). Once the order is done the TTL applies again."""
    expect_errors(202)          # IB confirms the cancel with 202, which ib_async logs as an error
    b = broker(sim, subscriptions={"max_lines": 2, "reserve_for_positions": 0, "ttl": "0.5s"})
    try:
        assert b.subscribe("AAPL") is None and b.subscribe("SPY") is None
        quote = b.quote("AAPL")
        assert quote is not None
        b.place(E.Order("qtrade:t:9", "AAPL", "buy", 1, "limit", limit=round(quote.bid * 0.5, 2), intent="open"))
        pump_until(b, lambda evs: any(isinstance(e, E.OrderStatus) and e.ref == "qtrade:t:9" for e in evs))
        time.sleep(0.7)
        b.pump(0.1)
        assert "AAPL" in b.budget.held() and "SPY" not in b.budget.held()      # SPY was idle: freed
        b.cancel("qtrade:t:9")
        pump_until(b, lambda evs: any(isinstance(e, E.OrderStatus) and e.ref == "qtrade:t:9" and
                                      e.status == "cancelled" for e in evs))
        time.sleep(0.7)
        b.pump(0.1)
        assert "AAPL" not in b.budget.held()
    finally:
        b.close()


def test_a_gateway_restart_that_rolls_order_ids_back_never_reuses_one(sim, expect_errors):
    """The nightly restart rolls nextValidId back to 1 and qtrade starts again (a new client, whose
    ids would begin at 1; ib_async moves past the ids of the open orders it is sent, not past
    those of orders already done, and IB's completed orders carry no order id): after
    reconciliation the next order takes an id past every id this client used (its executions at
    IB, the journal's broker order ids), so IB does not refuse it as a duplicate (103, 104) and
    no resting order is touched."""
    from engine.runtime.ibrun import JournalState

    expect_errors("Peer closed connection", 202)      # the cancels are confirmed with 202
    b = broker(sim)
    try:
        for i in range(1, 13):           # a day's orders: ids well past what a new session's requests take
            b.place(E.Order(f"qtrade:t:{i}", "SPY", "buy", 1, "limit", limit=float(i), tif="gtc"))
        pump_until(b, lambda evs: any(isinstance(e, E.OrderStatus) and e.ref == "qtrade:t:12" for e in evs))
        for i in range(2, 13):           # done by the restart; t:1, the lowest id, still rests
            b.cancel(f"qtrade:t:{i}")
        pump_until(b, lambda evs: len([e for e in evs if isinstance(e, E.OrderStatus) and e.status == E.CANCELLED])
                   == 11)
    finally:
        b.close()
    before = venue_orders(sim)
    sim.restart(next_valid_id=1)
    again = broker(sim)
    try:
        journaled = JournalState(max_order_id=max(o["orderId"] for o in before.values()))   # what the journal holds
        again.reconcile(journaled, "qtrade:t:")
        again.place(E.Order("qtrade:t:13", "SPY", "buy", 1, "limit", limit=13.0, tif="gtc"))
        pump_until(again, lambda evs: any(isinstance(e, E.OrderStatus) and e.ref == "qtrade:t:13" for e in evs))
        book = venue_orders(sim)
        assert book["qtrade:t:13"]["orderId"] > max(o["orderId"] for o in before.values())
        assert {ref: (o["orderId"], o["status"], o["lmtPrice"]) for ref, o in book.items() if ref != "qtrade:t:13"} \
            == {ref: (o["orderId"], o["status"], o["lmtPrice"]) for ref, o in before.items()}      # none touched
        assert not {103, 104} & {e.get("code") for e in sim.events if e["kind"] == "error"}
    finally:
        again.close()
