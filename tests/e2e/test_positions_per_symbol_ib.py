"""`arbitration: {positions_per_symbol: 2}` on IB end to end: the real ib_async client over a
real socket against the gateway simulator. Two agents hold NQ at once, each its own position
(IB nets them into one contract's position); each is closed by its own exit with an order for
its own quantity; each position's protective stop goes to IB in its own OCA group. A restart on
the same journal restores both owners' positions into their own lanes (reconciled by their sum
against IB's) and sends nothing twice. A sum IB disagrees with is flagged once and left alone.
Each test fails on any unexpected ERROR ib_async logs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gateway.conftest import connect, error_guard, expect_errors, make_sim, nq_data  # noqa: E402,F401
from ibbroker.test_run_e2e import (_con_id, assert_journal_is_the_venues, placed, qrun, rows,  # noqa: E402
                                   run_until_sigterm)

PREFIX = "qtrade:nq-lanes:"

LANES = """\
kind: strategy
name: nq-lanes
description: Two agents on NQ one-minute bars, each holding its own position at once.
universe: [NQ]
data: {{bar: 1m, history: 30 bars, session: extended}}
indicators:
  fast_ma: sma(close, 2)
classify:
  tilt:
    - {{name: up, when: close > fast_ma}}
    - {{name: flat, when: true}}
agents:
  quick:
    score: 2
    entry: [{{name: quick in, when: {entry}, order: one}}]
    exit:
      - {{name: quick out, when: position.bars_held >= {quick}}}
      - {{name: quick stop, stop: position.entry_price - 400}}
  steady:
    score: 1
    entry: [{{name: steady in, when: {entry}, order: two}}]
    exit:
      - {{name: steady out, when: position.bars_held >= {steady}}}
      - {{name: steady stop, stop: position.entry_price - 600}}
arbitration: {{positions_per_symbol: 2}}
orders:
  one: {{action: buy, type: market, quantity: 1, tif: day}}
  two: {{action: buy, type: market, quantity: 2, tif: day}}
schedule: {{timezone: America/New_York, every: 1m}}
risk: {{max_open_positions: 2, margin_check: "off", kill_switch_file: null}}
"""

QTY = {"quick": 1, "steady": 2}
EXIT = {"quick": "quick out", "steady": "steady out"}


def strategy(tmp_path: Path, entry: str = "close > 0", quick: int = 2, steady: int = 4) -> Path:
    path = tmp_path / "nq_lanes.yaml"
    path.write_text(LANES.format(entry=entry, quick=quick, steady=steady))
    return path


@pytest.fixture
def nq_sim(make_sim, nq_data):
    return make_sim(nq_data, speed=60)


def venue_path(sim) -> list[float]:
    """IB's NQ position after each of our executions, in order."""
    held, out = 0.0, []
    for e in sim.record()["executions"]:
        if str(e.get("orderRef", "")).startswith(PREFIX):
            held += float(e["shares"]) * (1 if e["side"] in ("BOT", "BUY") else -1)
            out.append(held)
    return out


def overlapping(trades) -> list[tuple[dict, dict]]:
    return [(a, b) for i, a in enumerate(trades) for b in trades[i + 1:]
            if a["entry_ts"] < b["exit_ts"] and b["entry_ts"] < a["exit_ts"]]


def check_own_closes(journal, run_id: str | None = None) -> list[dict]:
    """Every closed trade is its owner's: entered by its agent, closed by its agent's exit, for
    its agent's quantity; every closing order sent for that quantity only."""
    where = "WHERE run_id = ?" if run_id else ""
    trades = rows(journal, f"SELECT * FROM trades {where} ORDER BY entry_ts", *([run_id] if run_id else []))
    for t in trades:
        assert t["owner"] in QTY, t
        assert t["exit_rule"] == EXIT[t["owner"]], t
        assert t["quantity"] == QTY[t["owner"]], t
        assert t["pnl"] == pytest.approx((t["exit_price"] - t["entry_price"]) * 20 * t["quantity"] - t["commission"])
    closes = rows(journal, f"SELECT * FROM orders WHERE intent = 'close' AND order_type = 'market'"
                           f"{' AND run_id = ?' if run_id else ''}", *([run_id] if run_id else []))
    for o in closes:
        assert o["quantity"] == QTY[o["owner"]] and o["rule"] == EXIT[o["owner"]], o
    return trades


def test_two_agents_hold_nq_at_once_each_closed_by_its_own_exit(nq_sim, tmp_path, expect_errors):
    """Both agents hold NQ together (IB holds 3: quick's 1 and steady's 2); each position is closed
    by its own exit with a sell of its own quantity; each position's stop is sent in its own OCA
    group; the journal is the venue's."""
    expect_errors(202)       # a position's stop is cancelled when its exit fills: IB confirms with 202
    journal = tmp_path / "j.sqlite"
    out = qrun(nq_sim, strategy(tmp_path), journal, seconds=16)
    assert out.exit_code == 0, out.output
    assert_journal_is_the_venues(nq_sim, journal, PREFIX)
    path = venue_path(nq_sim)
    assert 3 in path and max(path) == 3 and min(path) >= 0, path      # both at once, never more
    trades = check_own_closes(journal)
    assert {t["owner"] for t in trades} == {"quick", "steady"}, out.output
    together = overlapping(trades)
    assert together and all(a["owner"] != b["owner"] for a, b in together)
    # the venue's market sells are the exits: 1 lot (quick's) or 2 lots (steady's), never their sum
    sells = [o for o in placed(nq_sim) if o.get("action") == "SELL" and o.get("orderType") == "MKT"]
    assert sells and {float(o["totalQuantity"]) for o in sells} <= {1.0, 2.0}
    # protective stops: one OCA group per position, named by its entry's order, never shared
    stops = [o for o in placed(nq_sim) if o.get("orderType") == "STP"]
    groups: dict[str, set] = {}
    for o in stops:
        groups.setdefault(o["ocaGroup"], set()).add(float(o["totalQuantity"]))
    entries = {o["order_ref"]: o for o in rows(journal, "SELECT * FROM orders WHERE intent = 'open'")}
    assert len(groups) >= 2
    for group, quantities in groups.items():
        entry = entries[group.removesuffix(":protect")]
        assert quantities == {float(QTY[entry["owner"]])}      # the stop covers its own position only
    stop_owners = {o["owner"] for o in rows(journal, "SELECT owner FROM orders WHERE order_type = 'stop'")}
    assert stop_owners == {"quick", "steady"}
    entries_with_states = rows(journal, "SELECT entry_states FROM trades")
    assert all(json.loads(t["entry_states"])["tilt"] in ("up", "flat") for t in entries_with_states)


def test_a_restart_restores_both_owners_positions_and_sends_nothing_twice(nq_sim, tmp_path, expect_errors):
    """A run is stopped (SIGTERM) while both agents hold NQ; the second run on the same journal
    reconciles their sum (3) with IB's, restores each owner's position into its own lane with its
    entry states, and each is then closed by its own exit; no ref is sent twice, no flag is raised."""
    # stops cancelled at the SIGTERM and when their positions close (202, or 10148 when the cancel
    # met a finished order); the second run's warm-up asks the same history within IB's 15 s (162,
    # which the history backs off from)
    expect_errors(202, 10148, 162)
    journal = tmp_path / "j.sqlite"
    # long holds: the stop comes while both are held; the second run closes them
    path = strategy(tmp_path, quick=8, steady=12)
    both = lambda: venue_path(nq_sim)[-1:] == [3.0]                      # noqa: E731
    code, output = run_until_sigterm(nq_sim, path, journal, both, "the two agents never held NQ together", wait=40)
    assert code == 0, output
    at_ib = {p["conId"]: p["qty"] for p in nq_sim.record()["positions"] if p["qty"]}
    assert list(at_ib.values()) == [3], (at_ib, output)
    first_refs = [o["orderRef"] for o in placed(nq_sim)]
    sent_before = len(placed(nq_sim))
    # the second run: with the exits shortened, so that both close within it
    path.write_text(path.read_text().replace("bars_held >= 8", "bars_held >= 10").replace("bars_held >= 12",
                                                                                          "bars_held >= 14"))
    out = qrun(nq_sim, path, journal, seconds=16)
    assert out.exit_code == 0, out.output
    runs = [r["run_id"] for r in rows(journal, "SELECT run_id FROM runs ORDER BY started_at")]
    second = runs[-1]
    notes = rows(journal, "SELECT * FROM notes WHERE run_id = ?", second)
    assert not [n for n in notes if n["kind"] in ("phantom", "unknown", "mismatch")], notes
    restored = {n["subject"]: n["message"] for n in notes if n["kind"] == "restored"}
    assert set(restored) == {"NQ@quick", "NQ@steady"}, notes
    assert restored["NQ@quick"].startswith("NQ 1 of quick @") and restored["NQ@steady"].startswith("NQ 2 of steady @")
    sent_again = [o["orderRef"] for o in placed(nq_sim)[sent_before:]]
    assert sent_again and not set(first_refs) & set(sent_again)         # nothing sent twice
    assert len(sent_again) == len(set(sent_again))
    assert_journal_is_the_venues(nq_sim, journal, PREFIX)
    # the first orders of the second run close the restored positions, each its owner's quantity
    orders = rows(journal, "SELECT * FROM orders WHERE run_id = ? AND order_type = 'market' ORDER BY id", second)
    first_closes = []
    for o in orders:
        if o["intent"] != "close":
            break
        first_closes.append(o)
    assert {(o["owner"], o["quantity"], o["rule"]) for o in first_closes} == \
        {("quick", 1, "quick out"), ("steady", 2, "steady out")}, orders
    trades = check_own_closes(journal, second)
    restored_trades = [t for t in trades if t["entry_ts"] < min(o["ts"] for o in orders)]
    assert {t["owner"] for t in restored_trades} == {"quick", "steady"}
    first_run = rows(journal, "SELECT * FROM fills WHERE run_id = ? AND action = 'buy' ORDER BY id", runs[0])
    for t in restored_trades:       # entered in the first run, at its fill's price, with its entry states
        assert any(f["price"] == pytest.approx(t["entry_price"]) for f in first_run)
        assert json.loads(t["entry_states"])["tilt"] in ("up", "flat")
    assert venue_path(nq_sim)[-1] >= 0 and max(venue_path(nq_sim)) == 3


def _earlier(journal_path, con_id: int, held: dict[str, tuple[float, float]]):
    """A journal with an earlier paper run of nq-lanes in which each owner opened NQ: owner ->
    (quantity, price)."""
    from engine.runtime.journal import Journal

    with Journal(journal_path) as j:
        j.start_run("paper", "nq-lanes", settings={"account": "DU1234567"}, run_id="earlier")
        for seq, (owner, (qty, price)) in enumerate(held.items(), start=1):
            ref, t = f"{PREFIX}{seq}", f"2023-12-04T14:0{seq}:00+00:00"
            j.order("earlier", ref, t, "NQ", "buy", qty, "market", rule=f"{owner} in", owner=owner)
            j.order_status(ref, "filled", t)
            j.order_ids(ref, con_id=con_id, local_symbol="NQZ3")
            j.fill("earlier", ref, t, "NQ", "buy", qty, price, 20.0, 2.25, exec_id=f"earlier.{ref}", con_id=con_id,
                   local_symbol="NQZ3")
        j.finish_run("earlier", "interrupted", {})


def test_a_sum_ib_disagrees_with_is_flagged_once_and_left_alone(nq_sim, connect, tmp_path):
    """The journal's owners hold 1 + 2 NQ and IB holds 1: one mismatch for the sum (naming each
    owner's part), none per owner; neither position is restored (whose part is off cannot be
    told), no order is sent for NQ and the entries on it are blocked, saying why."""
    con_id = _con_id(nq_sim, connect, "NQ")
    journal = tmp_path / "j.sqlite"
    _earlier(journal, con_id, {"quick": (1, 15800.0), "steady": (2, 15810.0)})
    nq_sim.set_position(con_id, 1, 15800.0)
    out = qrun(nq_sim, strategy(tmp_path), journal, seconds=5)
    assert out.exit_code == 0, out.output
    notes = rows(journal, "SELECT * FROM notes")
    flags = [n for n in notes if n["kind"] in ("phantom", "unknown", "mismatch")]
    assert [(n["kind"], n["subject"]) for n in flags] == [("mismatch", "NQZ3")], flags
    assert flags[0]["message"] == ("the journal holds 3 NQZ3 (quick 1, steady 2), IB 1: new entries on it blocked; "
                                   "whose part is off cannot be told, so none of them is restored: left as they are")
    assert not [n for n in notes if n["kind"] == "restored"]
    assert placed(nq_sim) == []                                   # left alone: nothing sent
    blocked = [d["reason"] for d in rows(journal, "SELECT reason FROM decisions WHERE outcome = 'blocked' AND "
                                                  "kind = 'entry'")]
    gated = [r for r in blocked if r == "NQZ3: the journal holds 3, IB 1: entries blocked until they agree"]
    assert gated, blocked                     # the entry arbitration took is blocked at the gate
    assert all(r in gated or r.startswith("refused by highest_confidence") for r in blocked), blocked
    assert "NQ@quick: not restored" in out.output and "NQ@steady: not restored" in out.output


def test_ib_flat_under_two_owners_is_one_phantom_and_each_position_is_closed_in_the_journal(nq_sim, connect,
                                                                                            tmp_path):
    """The journal's owners hold 1 + 2 NQ and IB holds none: one phantom for the sum; each owner's
    position is closed externally in the journal (no exit sent), so the next journal state holds
    neither; the run then trades afresh."""
    from engine.runtime.ibrun import journal_state
    from engine.runtime.journal import Journal

    con_id = _con_id(nq_sim, connect, "NQ")
    journal = tmp_path / "j.sqlite"
    _earlier(journal, con_id, {"quick": (1, 15800.0), "steady": (2, 15810.0)})
    with Journal(journal) as j:
        assert set(journal_state(j, PREFIX, "DU1234567").positions) == {"NQ@quick", "NQ@steady"}
    out = qrun(nq_sim, strategy(tmp_path, entry="close < 0"), journal, seconds=4)
    assert out.exit_code == 0, out.output
    flags = [n for n in rows(journal, "SELECT * FROM notes") if n["kind"] in ("phantom", "unknown", "mismatch")]
    assert [(n["kind"], n["subject"]) for n in flags] == [("phantom", "NQ")], flags
    assert "the journal held 3 NQZ3 (quick 1, steady 2), IB holds none" in flags[0]["message"]
    external = rows(journal, "SELECT * FROM fills WHERE order_ref = ? ORDER BY id", PREFIX + "external")
    assert sorted((f["quantity"], f["exec_id"].rpartition("@")[2]) for f in external) == [(1, "quick"), (2, "steady")]
    assert placed(nq_sim) == []
    with Journal(journal) as j:
        assert journal_state(j, PREFIX, "DU1234567").positions == {}


def test_orders_working_at_ib_are_adopted_into_their_owners_lanes(nq_sim, connect, tmp_path, expect_errors):
    """IB holds the two owners' NQ (3) and each one's protective stop from an earlier run, each
    in its own OCA group. The restart adopts each stop into its owner's lane (the journal's owner
    column for its ref), sends neither again, puts steady's new target in the group of steady's
    adopted stop; when steady's exit fires it cancels steady's stop only (quick's keeps working)
    and sells steady's 2."""
    import pandas as pd

    from engine.runtime.journal import Journal

    expect_errors(202)       # the stops cancelled (steady's at its exit, quick's at the stop of the run)
    con_id = _con_id(nq_sim, connect, "NQ")
    journal = tmp_path / "j.sqlite"
    now = pd.Timestamp(nq_sim.now())
    now = now.tz_localize("UTC") if now.tzinfo is None else now.tz_convert("UTC")
    with Journal(journal) as j:
        j.start_run("paper", "nq-lanes", settings={"account": "DU1234567"}, run_id="earlier")
        opened = {"quick": (1, 1, 15800.0, 4), "steady": (2, 2, 15810.0, 3)}      # ref seq, qty, price, age (min)
        for owner, (seq, qty, price, age) in opened.items():
            ref, t = f"{PREFIX}{seq}", (now - pd.Timedelta(minutes=age)).isoformat()
            j.order("earlier", ref, t, "NQ", "buy", qty, "market", rule=f"{owner} in", owner=owner)
            j.order_status(ref, "filled", t)
            j.order_ids(ref, con_id=con_id, local_symbol="NQZ3")
            j.fill("earlier", ref, t, "NQ", "buy", qty, price, 20.0, 2.25, exec_id=f"earlier.{ref}", con_id=con_id,
                   local_symbol="NQZ3")
        stops = {"steady": (f"{PREFIX}3", 2, 15210.0), "quick": (f"{PREFIX}4", 1, 15400.0)}
        for owner, (ref, qty, level) in stops.items():
            j.order("earlier", ref, now.isoformat(), "NQ", "sell", qty, "stop", stop_price=level,
                    rule=f"{owner} stop", intent="close", status="submitted", owner=owner)
        j.finish_run("earlier", "interrupted", {})
    nq_sim.set_position(con_id, 3, (15800.0 + 2 * 15810.0) / 3)
    ids = {owner: nq_sim.seed_order(con_id, "SELL", qty, "STP", aux_price=level, order_ref=ref, clientId=1,
                                    oca_group=f"earlier-{owner}")
           for owner, (ref, qty, level) in stops.items()}
    path = strategy(tmp_path, quick=400, steady=8)
    path.write_text(path.read_text().replace(
        "      - {name: steady stop, stop: position.entry_price - 600}",
        "      - {name: steady stop, stop: position.entry_price - 600}\n"
        "      - {name: steady target, target: position.entry_price + 3000}"))
    out = qrun(nq_sim, path, journal, seconds=12)
    assert out.exit_code == 0, out.output
    notes = rows(journal, "SELECT * FROM notes")
    assert not [n for n in notes if n["kind"] in ("phantom", "unknown", "mismatch")], notes
    kinds = {(n["kind"], n["subject"]) for n in notes}
    assert {("adopted", f"{PREFIX}3"), ("adopted", f"{PREFIX}4"), ("restored", "NQ@quick"),
            ("restored", "NQ@steady")} <= kinds, notes
    sent = placed(nq_sim)
    assert not {f"{PREFIX}3", f"{PREFIX}4"} & {o["orderRef"] for o in sent}      # adopted, never sent again
    targets = [o for o in sent if o["orderType"] == "LMT"]
    assert targets and all(float(o["totalQuantity"]) == 2 for o in targets), targets
    # the restored position's target joins its adopted stop's group; a later position's has its own
    assert targets[0]["ocaGroup"] == "earlier-steady", targets
    assert all(o["ocaGroup"].endswith(":protect") and o["ocaGroup"] != "earlier-steady" for o in targets[1:]), targets
    received = nq_sim.record()["received"]
    exit_at = next(i for i, m in enumerate(received) if m.get("name") == "placeOrder" and "order" in m
                   and m["order"]["action"] == "SELL" and m["order"]["orderType"] == "MKT")
    assert float(received[exit_at]["order"]["totalQuantity"]) == 2                # steady's exit: its own 2
    cancelled_before = {int(m["fields"][2]) for m in received[:exit_at] if m.get("name") == "cancelOrder"}
    assert ids["steady"] in cancelled_before and ids["quick"] not in cancelled_before
    trades = check_own_closes(journal)
    assert [(t["owner"], t["exit_rule"]) for t in trades][:1] == [("steady", "steady out")]
    assert_journal_is_the_venues(nq_sim, journal, PREFIX)


def test_a_dry_run_on_ib_holds_both_owners_positions_in_its_wallet_and_sends_nothing(nq_sim, tmp_path):
    """--dry-run --broker ib: the read-only connection, the simulated wallet over IB's bars; both
    agents hold NQ at once in the wallet, each closed by its own exit for its own quantity; the
    simulator receives no order (what-ifs apart: margin_check is off, so none either)."""
    journal = tmp_path / "j.sqlite"
    out = qrun(nq_sim, strategy(tmp_path), journal, "--dry-run", seconds=12)
    assert out.exit_code == 0, out.output
    assert "would have been sent (nothing was transmitted)" in out.output
    assert placed(nq_sim) == [] and placed(nq_sim, what_if=True) == []
    assert rows(journal, "SELECT mode FROM runs")[0]["mode"] == "dry-run"
    trades = check_own_closes(journal)
    together = overlapping(trades)
    assert together and all(a["owner"] != b["owner"] for a, b in together), trades
