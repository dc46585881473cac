"""MarketData against the simulator, one test per IB_BEHAVIOUR.md scenario it covers (4, 5, 6,
7, 12, 15) plus the 354 -> delayed fallback, the 10089-10091 advisories, 101 and a reconnect.

The simulator replays XSP's real one-minute bars; twelve stocks are made of them here (the
bundled daily stocks hold still on the simulated day, and a line whose price does not move gets
no ticks, as at IB)."""

from __future__ import annotations

import time

import pytest
from ib_async import IB

from engine.brokers import events
from engine.brokers.ib.connection import Connection, IBConfig, State
from engine.brokers.ib.contracts import Contracts, load_instruments
from engine.brokers.ib.marketdata import LineBudget, MarketData, Priority

STOCKS = ["ALFA", "BRVO", "CHRL", "DLTA", "ECHO", "FOXT", "GOLF", "HOTL", "INDA", "JULT", "KILO", "LIMA"]


@pytest.fixture(scope="module")
def moving(tmp_path_factory):
    """XSP's minute bars as XSP and as twelve stocks."""
    from gatewaysim.data import SAMPLE

    folder = tmp_path_factory.mktemp("moving")
    (folder / "XSP.csv").symlink_to(SAMPLE / "XSP.csv")
    for name in STOCKS:
        (folder / f"{name}.csv").symlink_to(SAMPLE / "XSP.csv")
    return folder


class Sink(list):
    def __call__(self, event):
        self.append(event)

    def codes(self):
        return [e.code for e in self if isinstance(e, events.BrokerError)]

    def messages(self, code):
        return [e.message for e in self if isinstance(e, events.BrokerError) and e.code == code]


@pytest.fixture
def setup(make_sim, connect, moving):
    def make(max_lines=10, reserved=0, ttl=300.0, sim_lines=None, conn=False, **md):
        sim = make_sim(moving, speed=600)
        if sim_lines is not None:
            sim.set_max_lines(sim_lines)
        sink = Sink()
        if conn:
            c = Connection(IB(), IBConfig(port=sim.port, backoff_base=0.05, heartbeat_idle=0), sink)
            c.connect()
            c.mark_ready()
            ib = c.ib
        else:
            c, ib = None, connect(sim)
        contracts = Contracts(ib, load_instruments())
        md.setdefault("stale_after", 1.0)
        m = MarketData(ib, contracts.resolve, LineBudget(max_lines, reserved, ttl), sink, **md)
        if c is not None:
            c.on_data_lost(m.resubscribe_all)
            made.append(c)
        return sim, ib, m, sink, c
    made: list[Connection] = []
    yield make
    for c in made:
        c.close()


def pump(ib, md, until, timeout=3.0, conn=None, every=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if conn is not None:
            conn.check()
        md.check()
        if every is not None:
            every()
        if until():
            return True
        if conn is not None:
            conn.sleep(0.02)
        else:
            ib.sleep(0.02)
    return bool(until())


def requests_for(sim, con_id):
    return [m for m in sim.messages("reqMktData") if m["fields"][3] == str(con_id)]


def most_lines_at_once(sim) -> int:
    """The most market data lines the client held at the simulator at any moment, from its record."""
    held, most = set(), 0
    for m in sim.messages():
        if m["name"] == "reqMktData":
            held.add((m["clientId"], m["fields"][2]))
        elif m["name"] == "cancelMktData":
            held.discard((m["clientId"], m["fields"][2]))
        most = max(most, len(held))
    return most


def sim_errors(sim, code):
    return [e for e in sim.events if e["kind"] == "error" and e["code"] == code]


def all_quoted(md, symbols):
    return lambda: all(md.quote(s) is not None for s in symbols)


# ---------------------------------------------------------------------------- scenario 4
def test_silent_staleness_blocks_the_symbol_and_requests_its_line_again(setup):
    """Scenario 4: the simulator stops ALFA's ticks with the connection alive; within
    stale_after ALFA is stale (no quote, a reason), its line is requested again, an alert says it
    stayed silent; BRVO is untouched; when ticks resume ALFA is quoted again. No quote was handed
    out for ALFA while it was stale."""
    sim, ib, md, sink, _ = setup(stale_after=0.5, retry_every=0.3)
    for s in ("ALFA", "BRVO"):
        assert md.subscribe(s) is None
    assert pump(ib, md, all_quoted(md, ["ALFA", "BRVO"]))
    alfa = md.lines()[0]
    before = len(requests_for(sim, alfa.con_id))
    sim.stop_ticks("ALFA")
    t0 = time.monotonic()
    assert pump(ib, md, lambda: (md.unavailable("ALFA") or "").startswith("stale: no ticks for"))
    latency = time.monotonic() - t0
    assert latency < 0.5 + 0.5  # stale_after, plus a tick interval and the loop's step (a loaded machine)
    seen = []
    assert pump(ib, md, lambda: bool(sink.messages(0)), every=lambda: seen.append(md.quote("ALFA")))
    assert "ALFA: stale: no ticks for" in sink.messages(0)[0] and "not even after the line was requested again" \
        in sink.messages(0)[0]
    assert seen and all(q is None for q in seen)
    assert md.quote("BRVO") is not None and md.unavailable("BRVO") is None
    assert pump(ib, md, lambda: len(requests_for(sim, alfa.con_id)) >= before + 2)  # requested again, twice
    sim.resume_ticks("ALFA")
    assert pump(ib, md, lambda: md.quote("ALFA") is not None)
    assert md.unavailable("ALFA") is None
    assert sink.messages(0)[-1] == "ALFA: ticks resumed; its quotes are used again"


# ---------------------------------------------------------------------------- scenario 5
def test_1100_then_1101_requests_every_line_again_within_the_budget(setup, expect_errors):
    """Scenario 5: 1100 makes every quote unavailable; after 1101 (data lost) every budgeted line
    is requested again (cancel first) and receives ticks, and the line count never exceeds the
    budget, which equals the simulator's limit (no 101)."""
    expect_errors(1100, 1101)
    symbols = ["ALFA", "BRVO", "CHRL"]
    sim, ib, md, sink, conn = setup(max_lines=3, sim_lines=3, conn=True, stale_after=1.0)
    for s in symbols:
        assert md.subscribe(s, Priority.TOP_PICK) is None
    assert pump(ib, md, all_quoted(md, symbols), conn=conn)
    ids = {i.symbol: i.req_id for i in md.lines()}
    sim.connectivity(1100)
    assert pump(ib, md, lambda: conn.state == State.DEGRADED, conn=conn)
    for s in symbols:
        assert md.quote(s) is None
        assert md.unavailable(s) == "TWS lost its connection to IB's servers (IB 1100): quotes are stale until it " \
                                    "is restored"
    sim.connectivity(1101)
    assert pump(ib, md, lambda: conn.state == State.READY and all_quoted(md, symbols)(), conn=conn)
    again = {i.symbol: i.req_id for i in md.lines()}
    assert all(again[s] != ids[s] for s in symbols)
    assert len(sim.messages("cancelMktData")) == 3
    assert most_lines_at_once(sim) == 3 and not sim_errors(sim, 101)


# ---------------------------------------------------------------------------- scenario 6
def test_a_farm_blip_2103_2104_resubscribes_and_quotes_keep_updating(setup):
    """Scenario 6: 2103 makes quotes suspect (unavailable); 2104 brings the resubscription of the
    live lines through the connection's data-lost listener, and quotes keep updating."""
    sim, ib, md, sink, conn = setup(conn=True)
    for s in ("ALFA", "XSP"):
        md.subscribe(s)
    assert pump(ib, md, all_quoted(md, ["ALFA", "XSP"]), conn=conn)
    ids = {i.symbol: i.req_id for i in md.lines()}
    sim.farm(ok=False)
    assert pump(ib, md, lambda: md.unavailable("ALFA") is not None, conn=conn)
    assert md.unavailable("ALFA").startswith("a market data farm connection is broken (IB 2103, usfarm)")
    assert md.quote("XSP") is None
    sim.farm(ok=True)
    assert pump(ib, md, lambda: all_quoted(md, ["ALFA", "XSP"])() and
                all(i.req_id != ids[i.symbol] for i in md.lines()), conn=conn)
    t1 = md.quote("XSP").time
    assert pump(ib, md, lambda: md.quote("XSP") is not None and md.quote("XSP").time > t1, conn=conn)
    assert conn.state == State.READY


# ---------------------------------------------------------------------------- scenario 7
def test_a_competing_session_10197_is_one_alert_and_the_lines_recover_without_a_restart(setup, expect_errors):
    """Scenario 7: the simulator answers every line with 10197 (one per line). Quotes are
    unavailable with the reason, one alert is given for the burst, the lines are requested again
    periodically, and once the other session ends they recover on the same connection."""
    expect_errors(10197)
    symbols = ["ALFA", "BRVO", "XSP"]
    sim, ib, md, sink, _ = setup(retry_every=0.3)
    for s in symbols:
        md.subscribe(s)
    assert pump(ib, md, all_quoted(md, symbols))
    sim.competing_session(True)
    assert pump(ib, md, lambda: all(md.unavailable(s) for s in symbols))
    for s in symbols:
        assert md.quote(s) is None
        assert md.unavailable(s) == ("no market data: a competing live session (a TWS or mobile login with the "
                                     "same user) holds it (IB 10197)")
    ib.sleep(0.8)
    md.check()
    asked = len(sim.messages("reqMktData"))
    assert pump(ib, md, lambda: len(sim.messages("reqMktData")) >= asked + 3)  # requested again while it lasts
    assert len(sim_errors(sim, 10197)) > 3
    assert sink.codes().count(10197) == 1
    assert sink.messages(10197)[0].endswith("holds it (IB 10197), first on ALFA: no entry is priced from the lines it "
                                            "stops until it ends; they are requested again every 0.3 s")
    sim.competing_session(False)
    assert pump(ib, md, all_quoted(md, symbols))
    assert any(m.startswith("market data is back after") for m in sink.messages(0))
    assert len([e for e in sim.events if e["kind"] == "connected"]) == 1  # no restart, no reconnect


# ---------------------------------------------------------------------------- scenario 12
def test_nan_and_one_sided_quotes_are_no_quote_with_a_reason(setup):
    """Scenario 12: bid/ask with size 0 (-1) and no last are no quote, with the reason; a
    one-sided market is no quote either; both are quoted again once the market is back."""
    sim, ib, md, sink, _ = setup(stale_after=3.0)
    sim.nan_quotes("ALFA")
    sim.set_quote("BRVO", ask=-1.0, askSize=0.0)
    md.subscribe("ALFA")
    md.subscribe("BRVO")
    assert pump(ib, md, lambda: all(not (md.unavailable(s) or "").startswith("waiting") for s in ("ALFA", "BRVO")))
    assert md.quote("ALFA") is None
    assert md.unavailable("ALFA") == ("no market: IB sent no bid and no ask (price -1 or NaN, size 0) and no last "
                                      "trade")
    assert md.quote("BRVO") is None
    assert md.unavailable("BRVO") == "one-sided market: no ask (IB sent price -1 or NaN, or size 0)"
    sim.nan_quotes("ALFA", on=False)
    sim.set_quote("BRVO")
    assert pump(ib, md, all_quoted(md, ["ALFA", "BRVO"]))
    q = md.quote("ALFA")
    assert 0 < q.bid <= q.ask and q.last == q.last


# ---------------------------------------------------------------------------- scenario 15
def test_line_budget_rotation_with_five_lines_and_twelve_symbols(setup):
    """Scenario 15: the simulator allows 5 lines (a 6th would be 101); the budget is 5 with 2
    reserved for the two open positions; ten more symbols rotate as picks, three at a time. No
    101 ever occurs, the simulator never holds more than 5 lines, the positions' lines are never
    cancelled, and the TTL frees idle lines so that every symbol gets quoted in its turn."""
    sim, ib, md, sink, _ = setup(max_lines=5, reserved=2, ttl=0.4, sim_lines=5, stale_after=3.0)
    positions, others = STOCKS[:2], STOCKS[2:]
    for s in positions:
        assert md.subscribe(s, Priority.POSITION) is None
    position_ids = set()
    quoted, refusals = set(), []

    def loop_step(picks):
        for s in picks:
            why = md.subscribe(s, Priority.PICK)
            if why is not None:
                refusals.append(why)
            elif md.quote(s) is not None:
                quoted.add(s)
        for s in positions:
            if md.quote(s) is not None:
                quoted.add(s)
        position_ids.update(i.req_id for i in md.lines() if i.priority == Priority.POSITION)

    for turn in range(4):
        picks = [others[(3 * turn + k) % len(others)] for k in range(3)]
        assert pump(ib, md, lambda: all(s in quoted for s in picks), timeout=3.0, every=lambda: loop_step(picks))
    assert quoted == set(STOCKS)
    assert refusals and all(r.endswith(": no market data line: all 5 lines are held by lines of equal or higher "
                                       "priority (2 positions, 3 picks); an idle line is freed after 0.4 s")
                            for r in refusals)
    assert not sim_errors(sim, 101) and 101 not in sink.codes()
    assert most_lines_at_once(sim) <= 5
    cancelled = {m["fields"][2] for m in sim.messages("cancelMktData")}
    assert len(position_ids) == 2 and not {str(i) for i in position_ids} & cancelled
    assert len(cancelled) >= 9  # the picks of the first three turns gave their lines up
    assert {i.symbol for i in md.lines() if i.priority == Priority.POSITION} == set(positions)


# ---------------------------------------------------------------------------- 354, 10167, advisories, 101
def test_no_live_entitlement_354_falls_back_to_delayed_data_where_allowed(setup, expect_errors):
    expect_errors(354)
    sim, ib, md, sink, _ = setup(allow_delayed=True)
    sim.set_entitlement("ALFA", live=False)
    md.subscribe("ALFA")
    md.subscribe("BRVO")
    assert pump(ib, md, all_quoted(md, ["ALFA", "BRVO"]))
    assert md.is_delayed("ALFA") and not md.is_delayed("BRVO")
    assert {i.symbol: i.status for i in md.lines()} == {"ALFA": "delayed", "BRVO": "live"}
    assert sink.messages(354) == ["ALFA: not subscribed to live market data for this contract (IB 354); using "
                                  "delayed quotes (15-20 min late) as the config allows"]
    assert [m["fields"][-1] for m in sim.messages("reqMarketDataType")] == ["3"]
    assert "delayed: ALFA" in md.status()


def test_no_live_entitlement_without_delayed_data_is_a_plain_reason_and_not_asked_again(setup, expect_errors):
    expect_errors(354)
    sim, ib, md, sink, _ = setup(allow_delayed=False)
    sim.set_entitlement("ALFA", live=False)
    md.subscribe("ALFA")
    reason = "not subscribed to live market data (IB 354); delayed data not allowed by the config"
    assert pump(ib, md, lambda: md.unavailable("ALFA") == reason)
    assert md.quote("ALFA") is None and sink.messages(354) == [f"ALFA: {reason}"]
    asked = len(sim.messages("reqMktData"))
    assert md.subscribe("ALFA") == f"ALFA: {reason}"
    ib.sleep(0.1)
    assert len(sim.messages("reqMktData")) == asked and "ALFA" not in md.budget
    assert sim.messages("reqMarketDataType") == []


def test_advisories_10089_to_10091_are_said_once_and_the_quotes_are_still_used(setup, expect_errors):
    expect_errors(10090, 10091)
    sim, ib, md, sink, _ = setup()
    md.subscribe("ALFA")
    assert pump(ib, md, all_quoted(md, ["ALFA"]))
    req_id = md.lines()[0].req_id
    for _ in range(2):
        sim.inject_error(req_id, 10090, "Part of requested market data is not subscribed. Subscription-independent "
                                        "ticks are still active.")
    sim.inject_error(req_id, 10091, "Part of requested market data requires additional subscription for API.")
    assert pump(ib, md, lambda: 10091 in sink.codes())
    assert sink.codes() == [10090, 10091]
    assert sink.messages(10090)[0].endswith("(IB 10090); the rest keeps coming; the quotes are still used")
    assert md.unavailable("ALFA") is None and md.quote("ALFA") is not None


def test_a_101_frees_the_line_and_says_the_budget_is_too_large(setup, expect_errors):
    expect_errors(101)
    sim, ib, md, sink, _ = setup(max_lines=3, sim_lines=2)
    for s in ("ALFA", "BRVO", "CHRL"):
        assert md.subscribe(s) is None
    assert pump(ib, md, lambda: 101 in sink.codes())
    assert md.unavailable("CHRL") == ("IB refused the line: the maximum number of market data lines is reached "
                                      "(IB 101): the budget (3 lines) is larger than this account's allowance; "
                                      "lower max_lines")
    assert set(md.budget.held()) == {"ALFA", "BRVO"}
    assert pump(ib, md, all_quoted(md, ["ALFA", "BRVO"]))
    md.unsubscribe("BRVO")
    assert md.subscribe("CHRL") is None  # not sticky: a line came free
    assert pump(ib, md, all_quoted(md, ["ALFA", "CHRL"]))


def test_a_new_session_after_a_drop_gets_every_line_again(setup, expect_errors):
    expect_errors("Peer closed connection")
    sim, ib, md, sink, conn = setup(conn=True)
    for s in ("ALFA", "XSP"):
        md.subscribe(s)
    assert pump(ib, md, all_quoted(md, ["ALFA", "XSP"]), conn=conn)
    sim.drop_connection()
    assert pump(ib, md, lambda: md.unavailable("ALFA") is not None, conn=conn)
    assert pump(ib, md, lambda: conn.reconnects == 1 and all_quoted(md, ["ALFA", "XSP"])(), conn=conn)
    assert md.unavailable("XSP") is None
    assert len([e for e in sim.events if e["kind"] == "connected"]) == 2


def test_an_unknown_symbol_and_the_budget_report(setup, expect_errors):
    expect_errors(200)
    sim, ib, md, sink, _ = setup(max_lines=50, reserved=5)
    why = md.subscribe("ZZZZ")
    assert why.startswith("ZZZZ: IB has no stock ZZZZ on SMART in USD (IB 200)")
    assert f"ZZZZ: {md.unavailable('ZZZZ')}" == why and sink.codes() == [200]
    assert md.subscribe("ZZZZ") == why and len(sim.messages("reqContractDetails")) == 1
    assert md.unavailable("ALFA") == "not subscribed: no market data line"
    assert md.budget_report(STOCKS) == "needs 12 lines, budget 50 (5 reserved for positions)"


def test_a_contract_another_part_also_quotes_keeps_its_line_when_ours_is_cancelled(setup):
    """ib_async keeps one Ticker per contract: when another part of the broker asks for the same
    contract, unsubscribing ours cancels our request by its id and leaves theirs streaming."""
    from ib_async import Stock

    sim, ib, md, sink, _ = setup()
    md.subscribe("ALFA")
    assert pump(ib, md, all_quoted(md, ["ALFA"]))
    ours = md.lines()[0].req_id
    contract = ib.qualifyContracts(Stock("ALFA", "SMART", "USD"))[0]
    theirs = ib.reqMktData(contract)  # e.g. the options desk pricing the same underlying
    md.unsubscribe("ALFA")
    ib.sleep(0.2)
    assert [m["fields"][2] for m in sim.messages("cancelMktData")] == [str(ours)]
    t0 = theirs.time
    ib.sleep(0.3)
    assert theirs.time > t0
    ib.cancelMktData(contract)  # theirs, by ib_async's own bookkeeping: no 300
    ib.sleep(0.1)
    assert len(sim.messages("cancelMktData")) == 2 and not sim_errors(sim, 300)


def test_ibs_message_rate_warning_100_slows_the_requests_and_is_said_once(setup, expect_errors):
    expect_errors(100)
    sim, ib, md, sink, _ = setup(max_lines=12)
    sim.set_max_rate(5)
    for s in STOCKS[:8]:
        assert md.subscribe(s) is None
    assert pump(ib, md, lambda: 100 in sink.codes())
    assert sink.codes().count(100) == 1 and "slowed to 5 a second" in sink.messages(100)[0]
    sim.set_max_rate(50)
    assert pump(ib, md, all_quoted(md, STOCKS[:8]))


def test_check_every_reviews_the_lines_at_its_cadence_not_at_every_pass(setup):
    """data.subscriptions.check_every: an idle line (TTL 0.2 s) is freed at the first review
    after its TTL; with check_every 1.5 s the review comes up to 1.5 s later, and it happens
    then (passes in between leave it)."""
    sim, ib, md, sink, _ = setup(max_lines=5, ttl=0.2, review_every=1.5, stale_after=5.0)
    assert md.subscribe(STOCKS[0], Priority.PICK) is None
    md.check()                                   # the first review, at once
    t0 = time.monotonic()
    assert pump(ib, md, lambda: STOCKS[0] not in md.budget, timeout=4.0)
    waited = time.monotonic() - t0
    assert 1.3 <= waited <= 2.5, waited
    every = setup(max_lines=5, ttl=0.2, stale_after=5.0)[2]
    assert every.subscribe(STOCKS[0], Priority.PICK) is None
    t0 = time.monotonic()
    assert pump(every.ib, every, lambda: STOCKS[0] not in every.budget, timeout=4.0)
    assert time.monotonic() - t0 < 0.6           # without it: the pass after the TTL
