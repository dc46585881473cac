"""`qtrade run --broker ib` end to end: the real ib_async client over a real socket against the
gateway simulator, one test per acceptance scenario of ../shared/ib/IB_BEHAVIOUR.md that the
whole run (not one part) answers. Each test fails on any unexpected ERROR that ib_async logs,
and checks the journal against the simulator's own record: nothing lost, nothing duplicated."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import cli

ROOT = Path(__file__).resolve().parents[2]
NQ = ROOT / "tests" / "ibbroker" / "strategies" / "nq_cross.yaml"
CONDOR = ROOT / "tests" / "ibbroker" / "strategies" / "xsp_weekly_condor.yaml"


@pytest.fixture
def nq_sim(make_sim, nq_data):
    return make_sim(nq_data, speed=120)


def qrun(sim, strategy, journal, *args, seconds=6):
    return CliRunner().invoke(cli.main, ["run", str(strategy), "--broker", "ib", "--port", str(sim.port), "--for",
                                         f"{seconds}s", "--journal", str(journal), *args])


def rows(journal, sql, *params):
    con = sqlite3.connect(journal)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql, params)]
    finally:
        con.close()


def placed(sim, *, what_if=False):
    """The placeOrder messages the simulator received (what-ifs apart; a modify is one more)."""
    return [m["order"] for m in sim.record()["received"]
            if m.get("name") == "placeOrder" and "order" in m and bool(m["order"].get("whatIf")) == what_if]


def book(sim) -> dict:
    """The simulator's orders by orderRef (the last one of a ref)."""
    return {o["orderRef"]: o for o in sim.record()["orders"]}


def assert_journal_is_the_venues(sim, journal, prefix):
    """Every execution the simulator made for our orders is in the journal once, with its price
    and quantity, and the journal has no fill the simulator did not make."""
    record = sim.record()
    venue = {e["execId"]: e for e in record["executions"] if str(e.get("orderRef", "")).startswith(prefix)
             and e.get("secType") != "OPT"}
    # (the 'earlier' run is a test's fixture of a run before a restart; the venue was seeded with its result)
    fills = rows(journal, "SELECT * FROM fills WHERE order_ref LIKE ? AND run_id != 'earlier'", prefix + "%")
    assert len({f["exec_id"] for f in fills}) == len(fills)
    assert {f["exec_id"] for f in fills} == set(venue)
    for f in fills:
        e = venue[f["exec_id"]]
        assert f["quantity"] == pytest.approx(float(e["shares"]))
        assert f["price"] == pytest.approx(float(e["price"]))


def test_a_paper_run_trades_nq_by_its_front_month_and_the_journal_is_the_venues(nq_sim, tmp_path):
    """Scenario 17 end to end: NQ resolved by trading class to the front month, orders by conId,
    P&L with multiplier 20; the journal equals the simulator's record."""
    journal = tmp_path / "j.sqlite"
    out = qrun(nq_sim, NQ, journal, seconds=8)
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[0] == f"nq-cross: paper on IB account DU1234567 (a paper account) at " \
        f"127.0.0.1:{nq_sim.port}, client id 1", out.output
    assert "sent to IB" in out.output and "stopped: the --for time ran out" in out.output
    orders = rows(journal, "SELECT * FROM orders")
    assert orders and all(o["local_symbol"] == "NQZ3" and o["con_id"] for o in orders)
    assert all(o["broker_order_id"] and o["perm_id"] for o in orders if o["status"] == "filled")
    assert_journal_is_the_venues(nq_sim, journal, "qtrade:nq-cross:")
    refs = [o["orderRef"] for o in placed(nq_sim)]
    assert len(refs) == len(set(refs))                                      # nothing sent twice
    assert set(refs) == {o["order_ref"] for o in orders}                    # nothing sent unjournaled
    assert {o["conId"] for o in book(nq_sim).values()} == {orders[0]["con_id"]}
    trades = rows(journal, "SELECT * FROM trades")
    assert trades
    for t in trades:
        assert t["multiplier"] == 20
        assert t["pnl"] == pytest.approx((t["exit_price"] - t["entry_price"]) * 20 - t["commission"])
        assert t["commission"] == pytest.approx(2 * 2.25)
    import json

    settings = json.loads(rows(journal, "SELECT settings FROM runs")[0]["settings"])
    assert settings["commission"].startswith("IB's, as IB reports them")     # not the simulator's 'none'
    # the last lines say the run's money as the journal has it
    fees = sum(f["commission"] for f in rows(journal, "SELECT * FROM fills"))
    said = f"{len(trades)} round trip{'s' * (len(trades) != 1)}: P&L {sum(t['pnl'] for t in trades):+,.2f} net of " \
        f"their commission; commission paid {fees:,.2f}"
    assert any(line.strip().startswith(said) for line in out.output.splitlines()), out.output
    position = [p for p in nq_sim.record()["positions"] if p["conId"] == orders[0]["con_id"] and p["qty"]]
    held = rows(journal, "SELECT * FROM positions")
    if position:          # an open position at the stop: the journal's average is the venue's
        assert held and held[0]["avg_price"] == pytest.approx(position[0]["avg_price"])
    run = rows(journal, "SELECT * FROM runs")[0]
    # the run's cash is the account's (the report's settings and initial cash), not backtest.cash
    assert json.loads(run["settings"])["cash"] == run["initial_cash"] and run["initial_cash"] > 100_000
    figures = json.loads(run["summary"])["figures"]
    assert figures["venue_rate"] == pytest.approx(120, rel=0.2)     # the venue's clock followed the simulator's


def test_a_dry_run_prints_and_journals_its_orders_and_sends_none(nq_sim, tmp_path):
    """Scenario 2: read-only; the simulator receives no placeOrder other than what-ifs."""
    journal = tmp_path / "j.sqlite"
    out = qrun(nq_sim, NQ, journal, "--dry-run", seconds=6)
    assert out.exit_code == 0, out.output
    # its first line says what it is, on which account and where, before anything else happens
    assert out.output.splitlines()[0] == f"nq-cross: dry-run on IB account DU1234567 (a paper account) at " \
        f"127.0.0.1:{nq_sim.port}, client id 1; read-only: orders are printed and filled in a simulated wallet, " \
        "nothing is transmitted", out.output
    assert "simulated fill 1 " in out.output and "\n    -> qtrade:nq-cross:1: filled" not in out.output
    assert "would have been sent (nothing was transmitted)" in out.output
    assert "why: rule 'cross up' fired" in out.output
    assert placed(nq_sim) == []
    assert rows(journal, "SELECT mode FROM runs")[0]["mode"] == "dry-run"
    assert rows(journal, "SELECT count(*) AS n FROM orders")[0]["n"] > 0
    import json

    settings = json.loads(rows(journal, "SELECT settings FROM runs")[0]["settings"])
    assert settings["commission"].startswith("simulated: ")          # its wallet's model, said as such
    # (NQ's strategy sets no backtest.commission: the preview says its fills cost nothing where IB's would not)
    assert "note: the dry run's wallet fills by the strategy's backtest costs: commission none" in out.output


def test_a_held_client_id_fails_fast_and_the_run_goes_on_with_the_fallback(nq_sim, tmp_path, expect_errors):
    """Scenario 3: client id 1 is held by another session: each 326 is seen at once (not after a
    connect timeout), the same id is retried with backoff, then the run falls back to another id
    (and asks every client's open orders) and trades. (How fast one 326 is reported is measured in
    test_connection.py.)"""
    expect_errors(326, "already in use", "API connection failed: CancelledError")
    nq_sim.hold_client_id(1)
    journal = tmp_path / "j.sqlite"
    out = qrun(nq_sim, NQ, journal, "--client-id", "1", seconds=5)
    assert out.exit_code == 0, out.output
    run = rows(journal, "SELECT * FROM runs")[0]
    settings = json.loads(run["settings"])
    assert settings["client_id"] != 1
    assert any(m.get("name") == "reqAllOpenOrders" for m in nq_sim.record()["received"])
    assert_journal_is_the_venues(nq_sim, journal, "qtrade:nq-cross:")


def test_a_margin_rejection_is_journaled_and_the_strategy_keeps_trading(nq_sim, tmp_path, expect_errors):
    """Scenario 8: IB rejects the first order (201); it is journaled rejected with IB's reason,
    not retried, and later orders go on. (margin_check: off, so no what-if meets the reject first.)"""
    expect_errors(201)
    nq_sim.reject_next_order("Insufficient margin")
    journal = tmp_path / "j.sqlite"
    out = qrun(nq_sim, _copy(tmp_path, NQ, margin_check="off"), journal, seconds=8)
    assert out.exit_code == 0, out.output
    orders = rows(journal, "SELECT * FROM orders ORDER BY id")
    assert orders[0]["status"] == "rejected" and "Insufficient margin" in orders[0]["reason"]
    assert any(o["status"] == "filled" for o in orders[1:])
    refs = [o["orderRef"] for o in placed(nq_sim)]
    assert len(refs) == len(set(refs))                    # no retry loop: each ref once
    assert_journal_is_the_venues(nq_sim, journal, "qtrade:nq-cross:")


def _nq_with_exit(tmp_path, rule: str) -> Path:
    """The NQ crossover with one more exit rule (a flow-style mapping) first among its exits."""
    strategy = tmp_path / NQ.name
    strategy.write_text(NQ.read_text().replace("exit:\n", f"exit:\n  - {rule}\n"))
    return strategy


def test_a_refused_stop_is_not_sent_again_and_its_position_is_closed_at_market(nq_sim, tmp_path, expect_errors):
    """IB refuses the first protective stop (201): the journal has it rejected with IB's reason;
    it is not sent again (no retry loop); the position it was to protect is closed at market at
    once, the trade saying why; the next position's stop rests at IB."""
    expect_errors(201, 202)       # (202: the later stops cancelled when the crossover closes their positions)
    nq_sim.reject_next_order("stop orders are not allowed for this account", order_type="STP")
    strategy = _nq_with_exit(tmp_path, "{name: stop, stop: position.entry_price - 300, reason: a far stop}")
    journal = tmp_path / "j.sqlite"
    out = qrun(nq_sim, strategy, journal, seconds=10)
    assert out.exit_code == 0, out.output
    stops = rows(journal, "SELECT * FROM orders WHERE order_type = 'stop' ORDER BY id")
    assert stops[0]["status"] == "rejected" and "stop orders are not allowed" in stops[0]["reason"]
    trades = rows(journal, "SELECT * FROM trades ORDER BY id")
    assert trades[0]["exit_rule"] == "stop refused"
    assert "its stop (stop) was refused by the broker" in trades[0]["exit_reason"]
    close = rows(journal, "SELECT * FROM orders WHERE rule = 'stop refused'")
    assert len(close) == 1 and close[0]["order_type"] == "market" and close[0]["status"] == "filled"
    refs = [o["orderRef"] for o in placed(nq_sim)]
    assert len(refs) == len(set(refs))                    # nothing sent twice
    # one stop a position (none where the crossover closed it at its first close), each sent once
    sent_stops = [o for o in placed(nq_sim) if o["orderType"] == "STP"]
    assert 2 <= len(sent_stops) == len(stops) <= len(trades) + len(rows(journal, "SELECT * FROM positions"))
    assert all(s["status"] in ("cancelled", "submitted") for s in stops[1:])    # the later ones rested at IB
    assert_journal_is_the_venues(nq_sim, journal, "qtrade:nq-cross:")


def test_stop_moves_ib_refuses_leave_the_stop_where_ib_holds_it_and_the_run_goes_on(nq_sim, tmp_path,
                                                                                     expect_errors):
    """A stop that trails the close, on an IB that refuses every modify (105, the order working on
    as it was): each refusal is journaled as an error naming the level IB still holds; a refused
    level is not sent again for its order; the strategy goes on trading (no halt); the journal's
    stops are IB's."""
    expect_errors(105, 202)
    nq_sim.refuse_modifies()
    strategy = _nq_with_exit(tmp_path, "{name: trail, stop: close - 300, reason: a trailing stop}")
    journal = tmp_path / "j.sqlite"
    out = qrun(nq_sim, strategy, journal, seconds=10)
    assert out.exit_code == 0, out.output
    stops = [o for o in placed(nq_sim) if o["orderType"] == "STP"]
    ids = {}
    for o in stops:
        ids.setdefault(o["orderId"], []).append(o["auxPrice"])
    moves = {oid: prices[1:] for oid, prices in ids.items() if len(prices) > 1}
    assert moves, out.output                                         # the stop was asked to move
    assert all(len(set(p)) == len(p) for p in moves.values())        # each refused level asked once
    venue = {o["orderId"]: o for o in nq_sim.record()["orders"] if o["orderType"] == "STP"}
    assert all(venue[oid]["auxPrice"] == prices[0] and venue[oid]["history"] == [] for oid, prices in ids.items())
    errors = [e["message"] for e in rows(journal, "SELECT * FROM errors")]
    refused = [m for m in errors if "was not changed to stop" in m]
    assert len(refused) == sum(len(p) for p in moves.values()), errors
    assert all("it stays at" in m and "does not match" in m for m in refused)
    journaled = {o["order_ref"]: o for o in rows(journal, "SELECT * FROM orders WHERE order_type = 'stop'")}
    assert {o["orderRef"]: venue[o["orderId"]]["auxPrice"] for o in stops} == \
        {ref: o["stop_price"] for ref, o in journaled.items()}
    assert "halted" not in out.output.lower() and len(rows(journal, "SELECT * FROM trades")) >= 1, out.output
    assert_journal_is_the_venues(nq_sim, journal, "qtrade:nq-cross:")


def run_until_sigterm(sim, strategy, journal, until, never: str, wait: float = 30.0) -> tuple[int, str]:
    """`qtrade run --broker ib` as its own process, sent SIGTERM once `until()` holds (the test
    fails with `never` if it does not within `wait` s); its exit code and output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", "import cli; cli.entry()", "run", str(strategy), "--broker", "ib",
                             "--port", str(sim.port), "--journal", str(journal)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not until():
            time.sleep(0.05)
        assert until(), never
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, output


def _copy(tmp_path, source, **risk):
    text = source.read_text()
    for key, value in risk.items():
        text = text.replace("risk: {", f"risk: {{{key}: {value}, ", 1)
    text = text.replace("margin_check: allow-missing-in-paper, ", "") if "margin_check" in risk else text
    path = tmp_path / source.name
    path.write_text(text)
    return path


def test_unset_what_if_margins_time_out_and_the_required_policy_blocks_the_entry(nq_sim, tmp_path):
    """Scenario 11: the simulator answers what-ifs with UNSET margins: the broker gives up after
    its timeout ("margin unknown"), margin_check: required blocks the entry, nothing hangs."""
    nq_sim.whatif_unset_margin(True)
    strategy = _copy(tmp_path, NQ, margin_check="required")
    journal = tmp_path / "j.sqlite"
    out = qrun(nq_sim, strategy, journal, seconds=8)
    assert out.exit_code == 0, out.output
    assert placed(nq_sim) == [] and placed(nq_sim, what_if=True)
    blocked = rows(journal, "SELECT reason FROM decisions WHERE outcome = 'blocked'")
    # each what-if waits out its timeout (seconds, minutes of the simulator's time at 120x): the
    # bars that completed meanwhile are late when the loop gets to them, and no entry goes on them
    assert blocked and "what-if margin unknown" in blocked[0]["reason"]
    assert all("what-if margin unknown" in d["reason"] or "a bar the run is catching up on" in d["reason"]
               for d in blocked), blocked


def test_nan_quotes_price_nothing_and_the_entries_say_why(nq_sim, tmp_path):
    """Scenario 12: bid/ask with size 0 and no last: no entry is sized from them; each blocked
    entry is journaled with the reason."""
    nq_sim.nan_quotes("NQ", True)
    journal = tmp_path / "j.sqlite"
    out = qrun(nq_sim, NQ, journal, seconds=6)
    assert out.exit_code == 0, out.output
    assert placed(nq_sim) == []
    blocked = rows(journal, "SELECT reason FROM decisions WHERE outcome = 'blocked'")
    assert blocked and all(d["reason"].startswith("NQ: ") for d in blocked)
    # the printout says so too, as a simulated run's does: how many, the last reasons, where all are
    n = len(blocked)
    assert f"{n} entr{'ies' if n != 1 else 'y'} blocked" in out.output, out.output
    assert f"  blocked 'cross up' on NQ: {blocked[-1]['reason']}" in out.output
    assert f"all the reasons: qtrade why {journal} --run " in out.output


def _earlier_run(journal_path, account, entries):
    """A journal with an earlier paper run of nq-cross on `account`: `entries` are
    (ref, symbol, action, qty, price, con_id, local_symbol) fills."""
    from engine.runtime.journal import Journal

    with Journal(journal_path) as j:
        j.start_run("paper", "nq-cross", settings={"account": account}, run_id="earlier")
        for ref, symbol, action, qty, price, con_id, local in entries:
            t = "2023-12-04T14:00:00+00:00"
            j.order("earlier", ref, t, symbol, action, qty, "market", rule="cross up")
            j.order_status(ref, "filled", t)
            j.order_ids(ref, con_id=con_id, local_symbol=local)
            j.fill("earlier", ref, t, symbol, action, qty, price, 20.0 if symbol == "NQ" else 1.0, 2.25,
                   exec_id=f"earlier.{ref}", con_id=con_id, local_symbol=local)
        j.finish_run("earlier", "interrupted", {})


def _con_id(sim, connect, symbol):
    from engine.brokers.ib.contracts import Contracts, load_instruments

    ib = connect(sim, clientId=77)
    con_id = Contracts(ib, load_instruments(), today=lambda: sim.now().date()).resolve(symbol).con_id
    ib.disconnect()
    return con_id


def test_a_restart_restores_the_position_adopts_its_working_order_and_sends_no_duplicate(nq_sim, connect,
                                                                                         tmp_path, expect_errors):
    """Scenario 1: the simulator holds the NQ position and a resting LMT tagged qtrade: from an
    earlier run; the run adopts the order (journaled), places no duplicate of it, restores the
    position so its exits manage it."""
    expect_errors(202)       # the adopted order is cancelled when the exit rule fires: IB confirms with 202
    con_id = _con_id(nq_sim, connect, "NQ")
    journal = tmp_path / "j.sqlite"
    _earlier_run(journal, "DU1234567", [("qtrade:nq-cross:1", "NQ", "buy", 1, 15800.0, con_id, "NQZ3")])
    nq_sim.set_position(con_id, 1, 15800.0)
    nq_sim.seed_order(con_id, "SELL", 1, "LMT", lmt_price=19999.0, order_ref="qtrade:nq-cross:2", clientId=1)
    from engine.runtime.journal import Journal

    with Journal(journal) as j:
        j.order("earlier", "qtrade:nq-cross:2", "2023-12-04T14:00:01+00:00", "NQ", "sell", 1, "limit",
                limit_price=19999.0, rule="cross down", intent="close", status="submitted")
    out = qrun(nq_sim, NQ, journal, seconds=6)
    assert out.exit_code == 0, out.output
    notes = {(n["kind"], n["subject"]) for n in rows(journal, "SELECT * FROM notes")}
    assert ("adopted", "qtrade:nq-cross:2") in notes and ("restored", "NQ") in notes
    # and said on the screen, before the run's orders
    said = out.output.splitlines()
    assert "restored: NQ 1 @ 15800.0000 restored from the journal: its exits manage it (opened by qtrade:nq-cross:1)" \
        in said, out.output
    assert "adopted: qtrade:nq-cross:2 is working at IB from an earlier run: tracked, not sent again" in said
    refs = [o["orderRef"] for o in placed(nq_sim)]
    assert "qtrade:nq-cross:2" not in refs                   # seeded at the venue, adopted: never sent again
    assert not [n for n in rows(journal, "SELECT * FROM notes") if n["kind"] in ("phantom", "unknown", "mismatch")]
    new = [r for r in refs if r not in ("qtrade:nq-cross:2",)]
    assert all(int(r.rsplit(":", 1)[1]) > 2 for r in new)     # the sequence continues past the journal's
    assert_journal_is_the_venues(nq_sim, journal, "qtrade:nq-cross:")


def test_phantom_and_unknown_positions_are_flagged_and_left_alone(nq_sim, connect, tmp_path):
    """Scenario 14: the journal holds AAPL 100 but IB is flat (phantom: closed externally, no exit
    sent); IB holds INTC the journal never traded (unknown: left alone; MSFT in the issue, INTC is what the bundled data holds)."""
    aapl = _con_id(nq_sim, connect, "AAPL")
    journal = tmp_path / "j.sqlite"
    _earlier_run(journal, "DU1234567", [("qtrade:nq-cross:1", "AAPL", "buy", 100, 150.0, aapl, "AAPL")])
    nq_sim.set_position("INTC", 50, 30.0)
    out = qrun(nq_sim, NQ, journal, seconds=4)
    assert out.exit_code == 0, out.output
    notes = {n["kind"]: n for n in rows(journal, "SELECT * FROM notes")}
    assert "phantom" in notes and "AAPL" in notes["phantom"]["message"]
    assert "unknown" in notes and "INTC" in notes["unknown"]["message"]
    assert not [o for o in placed(nq_sim) if o.get("symbol") in ("AAPL", "INTC")]
    from engine.runtime.ibrun import journal_state
    from engine.runtime.journal import Journal

    with Journal(journal) as j:
        assert "AAPL" not in journal_state(j, "qtrade:nq-cross:", "DU1234567").positions     # closed externally


def test_late_positions_are_waited_for_not_read_as_flat(nq_sim, connect, tmp_path):
    """Scenario 13: positionEnd comes after the fetch's timeout: the run retries, never flags the
    journal's position phantom, and reconciles once the positions arrive."""
    con_id = _con_id(nq_sim, connect, "NQ")
    journal = tmp_path / "j.sqlite"
    _earlier_run(journal, "DU1234567", [("qtrade:nq-cross:1", "NQ", "buy", 1, 15800.0, con_id, "NQZ3")])
    nq_sim.set_position(con_id, 1, 15800.0)
    nq_sim.delay_positions(4.0)
    out = qrun(nq_sim, NQ, journal, seconds=3)
    assert out.exit_code == 0, out.output
    assert "fetch was incomplete" in out.output
    kinds = {n["kind"] for n in rows(journal, "SELECT * FROM notes")}
    assert "phantom" not in kinds and "restored" in kinds
    assert_journal_is_the_venues(nq_sim, journal, "qtrade:nq-cross:")


def test_the_kill_switch_blocks_entries_and_says_so(nq_sim, tmp_path):
    """Scenario 19: while the kill-switch file exists no entry is sent; each is journaled."""
    kill = tmp_path / "KILL"
    kill.write_text("")
    strategy = _copy(tmp_path, NQ)
    strategy.write_text(strategy.read_text().replace("kill_switch_file: null", f"kill_switch_file: {kill}"))
    journal = tmp_path / "j.sqlite"
    out = qrun(nq_sim, strategy, journal, seconds=5)
    assert out.exit_code == 0, out.output
    assert placed(nq_sim) == []
    blocked = rows(journal, "SELECT reason FROM decisions WHERE outcome = 'blocked'")
    assert blocked and all("kill switch" in d["reason"] for d in blocked)


def test_history_pacing_violations_are_waited_out(nq_sim, tmp_path, expect_errors):
    """Scenario 16: the warm-up's requests meet 162 pacing violations; the run backs off and
    gets its bars (no identical request within 15 s), then trades."""
    expect_errors(162)
    nq_sim.pacing_violation(2)
    journal = tmp_path / "j.sqlite"
    out = qrun(nq_sim, NQ, journal, seconds=6)
    assert out.exit_code == 0, out.output
    assert rows(journal, "SELECT count(*) AS n FROM decisions")[0]["n"] > 0
    assert_journal_is_the_venues(nq_sim, journal, "qtrade:nq-cross:")
    # said as it happened, during the warm-up (before the line budget the loop starts with), and
    # journaled once
    said, ready = out.output.find("IB 162: "), out.output.find("needs 1 line, budget ")
    assert 0 <= said < ready and "pacing violation" in out.output[said:].splitlines()[0], out.output
    notes = rows(journal, "SELECT subject, message FROM notes WHERE kind = 'alert' AND subject = '162'")
    assert len(notes) == 1 and "pacing violation" in notes[0]["message"], notes
    # the warm-up's waits (about 24 s, 48 min of the simulator's time at 120x) leave bars to catch
    # up on: the rules decide on them, but no entry goes on a signal that old; the entries sent
    # fill within a few minutes of the close they were decided at (the gate lets one go up to a bar
    # and a minute after its close; the order's trip adds a minute or so of simulated time at 120x),
    # not the 9 to 46 minutes of the bars caught up on
    late = rows(journal, "SELECT reason FROM decisions WHERE outcome = 'blocked' AND reason LIKE "
                         "'%a bar the run is catching up on%'")
    assert late, out.output
    sent = rows(journal, "SELECT o.ts AS decided, f.ts AS filled FROM orders o JOIN fills f USING (order_ref) "
                         "WHERE o.intent = 'open'")
    assert sent and all(pd.Timestamp(f["filled"]) - pd.Timestamp(f["decided"]) < pd.Timedelta(minutes=4)
                        for f in sent), sent


@pytest.mark.parametrize("code", [1101, 1102])
def test_a_connectivity_loss_degrades_and_the_run_recovers(nq_sim, tmp_path, expect_errors, code):
    """Scenarios 5 and 6: 1100 then 1101 (data lost: every line and stream requested again) or
    1102; entries wait while degraded; the run trades again afterwards. The loss comes once the run
    has traded; an order already on its way when IB said 1100 (the client cannot have read it
    within 0.2 s) is not one sent while degraded. (After 1101 the bar stream is asked again for its
    gap; the simulator may call that a pacing violation, 162, which the history backs off from.)"""
    expect_errors(1100, code, 162)
    journal = tmp_path / "j.sqlite"
    lost = When(lambda: placed(nq_sim), lambda: nq_sim.connectivity(1100))
    back = When(lambda: lost.at is not None and time.time() - lost.at > 1.5, lambda: nq_sim.connectivity(code))
    out = qrun_with((lost, back), nq_sim, NQ, journal, seconds=12)
    assert out.exit_code == 0, out.output
    assert lost.at and back.at, "the faults were not injected"
    # said as it happened, before the run's end: the loss and the reconnect
    lines = out.output[:out.output.index("stopped:")]
    assert "connection lost" in lines and "connection restored" in lines, out.output
    sends = [m["wall"] for m in nq_sim.record()["received"] if m.get("name") == "placeOrder"
             and not m.get("order", {}).get("whatIf")]
    assert not [t for t in sends if lost.at + 0.2 < t < back.at]     # nothing sent while degraded
    assert [t for t in sends if t > back.at]                          # and trading again after
    assert_journal_is_the_venues(nq_sim, journal, "qtrade:nq-cross:")


def test_a_run_on_a_new_journal_continues_after_the_refs_ib_holds_and_sends_none_twice(nq_sim, tmp_path,
                                                                                           expect_errors):
    """A second journal on the same account (another folder, a fresh file): IB holds orders of the
    strategy that it did not send. Another run may be trading them, so without --take-over it is
    refused before anything is sent, saying why and what to do. With --take-over its order refs
    (which would start at 1 again, which IB holds from the first journal's run) continue after
    IB's highest, and it trades; no ref reaches IB twice. (It once ended with an internal error
    at its first order.)"""
    expect_errors(162, 202)     # (the second run's warm-up repeats the first's history request: pacing)
    first = tmp_path / "a.sqlite"
    out = qrun(nq_sim, NQ, first, seconds=6)
    assert out.exit_code == 0, out.output
    sent = {o["orderRef"] for o in placed(nq_sim)}
    assert sent, out.output
    highest = max(int(r.rsplit(":", 1)[1]) for r in sent)
    n_placed = len(placed(nq_sim))
    out = qrun(nq_sim, NQ, tmp_path / "b.sqlite", seconds=12)
    assert out.exit_code == 2, out.output
    assert f"IB holds orders of qtrade:nq-cross up to qtrade:nq-cross:{highest} on account" in out.output
    assert "Two runs of one strategy on one account would trade one position twice, so this run sends nothing" \
        in out.output and "run again with --take-over" in out.output, out.output
    assert len(placed(nq_sim)) == n_placed                           # refused before anything was sent
    # (its warm-up waits out IB's pacing, about 13 s, 26 min at 120x: no entry on the bars it
    # catches up on, so it runs long enough to trade on new ones)
    out = qrun(nq_sim, NQ, tmp_path / "b.sqlite", "--take-over", seconds=12)
    assert out.exit_code == 0, out.output
    assert "internal error" not in out.output
    assert f"this run's orders continue from qtrade:nq-cross:{highest + 1}" in out.output
    # (and it says what the reconciliation did with the other journal's fills: they are this run's)
    assert "their fills are journaled here (reconcile above) and the position they leave is this run's to manage" \
        in out.output, out.output
    refs = [o["orderRef"] for o in placed(nq_sim)]
    assert len(refs) == len(set(refs))                               # nothing sent twice
    second = [r for r in refs if r not in sent]
    assert second and min(int(r.rsplit(":", 1)[1]) for r in second) > highest, out.output


def test_a_daily_strategy_starts_on_a_monday_morning(make_sim, tmp_path, expect_errors):
    """The bar stream of a daily strategy asked IB for two days of bars: on a Monday before the
    close that is the weekend, IB answered with none, and the run ended ("IB will not stream the
    bars the run needs"). It asks for a week, which holds Friday's bar."""
    expect_errors(162)      # (pacing: the stream's request follows the warm-up's)
    sim = make_sim(None, speed=60, start="2017-07-17 09:30")        # a Monday
    out = qrun(sim, ROOT / "strategies" / "sma_crossover.yaml", tmp_path / "j.sqlite", seconds=5)
    assert out.exit_code == 0, out.output
    assert "will not stream" not in out.output
    assert "stopped:" in out.output, out.output


def test_a_second_run_of_the_strategy_on_the_account_is_refused_while_the_first_runs(nq_sim, tmp_path,
                                                                                      expect_errors):
    """Two runs of one strategy on one account (a second terminal, the same command, whatever
    journal or client id) would both trade one position: each sends its exit, and a long-only
    strategy ends short. The run holds a session lock while it lives (another process holding it
    here); a second is refused before it sends anything, naming the holder. A dry run may watch
    beside it. The lock goes with its process, however it ends (killed: no stale lock)."""
    expect_errors(162)      # (the runs after the first repeat its history request: pacing)
    root = Path(__file__).resolve().parents[2]
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
         "from engine.runtime.ibrun import session_lock; f = session_lock('DU1234567', 'nq-cross', 'other.sqlite'); "
         "print('held', flush=True); time.sleep(60)", str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        out = qrun(nq_sim, NQ, tmp_path / "j.sqlite", "--client-id", "7", seconds=4)
        assert out.exit_code == 2, out.output
        assert "another qtrade run trades nq-cross on account DU1234567 from this machine (process " \
            f"{holder.pid}, journal other.sqlite, since" in out.output, out.output
        assert "Stop it first; --dry-run only watches and may run beside it" in out.output
        assert not placed(nq_sim)
        dry = qrun(nq_sim, NQ, tmp_path / "d.sqlite", "--dry-run", seconds=3)
        assert dry.exit_code == 0, dry.output
    finally:
        holder.kill()           # as kill -9: the OS releases its lock
        holder.wait()
    out = qrun(nq_sim, NQ, tmp_path / "j.sqlite", seconds=4)
    assert out.exit_code == 0, out.output


def test_a_dry_run_rides_out_a_connectivity_loss_and_goes_on_deciding(nq_sim, tmp_path, expect_errors):
    """A dry run reads IB's quotes and bars: IB's 1100 reaches it as a connection lost (journaled,
    entries wait), 1102 as restored, and it goes on deciding on its simulated wallet; nothing is
    sent to IB before, during or after. (A connection event has no order ref: the dry run's
    filter of IB's events once raised on it.)"""
    expect_errors(1100, 1102, 162)
    journal = tmp_path / "j.sqlite"
    started = time.time()
    lost = When(lambda: time.time() - started > 3.0 and _rows_if(journal, "SELECT * FROM decisions"),
                lambda: nq_sim.connectivity(1100))
    decided_by = {}

    def restore():
        nq_sim.connectivity(1102)
        decided_by["back"] = len(_rows_if(journal, "SELECT * FROM decisions"))

    back = When(lambda: lost.at is not None and time.time() - lost.at > 1.5, restore)
    out = qrun_with((lost, back), nq_sim, NQ, journal, "--dry-run", seconds=12)
    assert out.exit_code == 0, out.output
    assert "Traceback" not in out.output and "internal error" not in out.output, out.output
    assert lost.at and back.at, "the faults were not injected"
    assert placed(nq_sim) == []
    errors = [e["message"] for e in rows(journal, "SELECT * FROM errors")]
    assert [m for m in errors if m.startswith("connection lost")], (errors, out.output)
    decided = len(rows(journal, "SELECT * FROM decisions"))
    assert decided > decided_by["back"], "no decision after the connection came back"


def test_live_is_refused_on_a_paper_account_and_nothing_reaches_the_simulator(nq_sim, tmp_path):
    """Scenario 20, part one: --live against a DU... account."""
    out = qrun(nq_sim, NQ, tmp_path / "j.sqlite", "--live", seconds=3)
    assert out.exit_code == 2
    assert "is a paper account" in out.output
    assert placed(nq_sim) == [] and placed(nq_sim, what_if=True) == []


def test_live_without_yes_and_no_terminal_is_refused(make_sim, nq_data, tmp_path):
    """Scenario 20, part two: a live account, --live, no --yes and no terminal to confirm on."""
    sim = make_sim(nq_data, speed=120, account="U7654321")
    out = qrun(sim, NQ, tmp_path / "j.sqlite", "--live", seconds=3)
    assert out.exit_code == 2 and "no terminal" in out.output
    out = qrun(sim, NQ, tmp_path / "j.sqlite", seconds=3)
    assert out.exit_code == 2 and "needs --live" in out.output
    assert placed(sim) == []


def test_sigterm_cancels_working_orders_flushes_the_journal_and_a_restart_resends_nothing(nq_sim, tmp_path,
                                                                                          expect_errors):
    """Scenario 18: with orders working (the simulator fills nothing), SIGTERM: they are cancelled
    at IB and confirmed, the journal is finished, exit 0; the next run re-sends none of them.
    (The restart's cancels at its own stop are confirmed with 202; its warm-up asks the history
    the first run asked seconds before, which IB's pacing answers with 162 and the run waits out.)"""
    expect_errors(202, 162)
    nq_sim.set_fill_mode("never")
    journal = tmp_path / "j.sqlite"
    code, output = run_until_sigterm(nq_sim, NQ, journal, lambda: placed(nq_sim), "no order was placed")
    assert code == 0, output
    assert "stopped: SIGTERM" in output
    venue = book(nq_sim)
    assert venue and all(o["status"] in ("Cancelled", "ApiCancelled") for o in venue.values())
    orders = rows(journal, "SELECT * FROM orders")
    assert {o["order_ref"] for o in orders} == set(venue)
    assert all(o["status"] == "cancelled" for o in orders)
    assert rows(journal, "SELECT status FROM runs")[0]["status"] == "finished"
    out = qrun(nq_sim, NQ, journal, seconds=3)
    assert out.exit_code == 0, out.output
    again = [o["orderRef"] for o in placed(nq_sim)]
    assert all(again.count(ref) == 1 for ref in venue)        # none of them was sent again


def test_the_iron_condor_in_paper_whatif_bag_chase_fill_close(make_sim, tmp_path, expect_errors):
    """Scenario 10: what-if margin, a 4-leg BAG LMT with orderRef, chased by modify (the same
    orderId and permId, new prices), filled (the BAG and its 4 legs), later closed; the journal's
    credit and fills equal the simulator's executions, and the account ends flat."""
    # a chase that times out is cancelled (IB confirms with 202, or says 10148 when the fill won
    # the race); a chase's modify that meets the order just filled is refused with 104 (the
    # order is reconciled, not chased: engine/brokers/ib/codes.py), seen on a loaded machine;
    # VIX, which the rules read, has no minute bars at the simulator (162 no data) and is taken daily
    expect_errors(202, 10148, 104, "HMDS query returned no data: VIX")
    sim = make_sim(None, speed=60)
    journal = tmp_path / "j.sqlite"
    out = qrun(sim, CONDOR, journal, seconds=25)
    assert out.exit_code == 0, out.output
    assert placed(sim, what_if=True)
    bags = [o for o in placed(sim) if o.get("secType") == "BAG"]
    assert bags and all(o["orderRef"].startswith("qtrade:xsp-weekly-condor:") for o in bags)
    received = sim.record()["received"]
    sends: dict = {}
    for m in received:
        if m.get("name") == "placeOrder" and m.get("order", {}).get("secType") == "BAG" \
                and not m["order"].get("whatIf"):
            sends.setdefault(m["order"]["orderId"], []).append(m["order"]["lmtPrice"])
    chased = [prices for prices in sends.values() if len(set(prices)) > 1]
    assert chased                                           # the chase: the same orderId, new prices
    trades = rows(journal, "SELECT * FROM trades")
    assert trades, out.output
    legs = json.loads(trades[0]["legs"])
    fills = rows(journal, "SELECT * FROM fills ORDER BY id")
    executions = {e["execId"]: e for e in sim.record()["executions"]}
    for f in fills:
        assert f["exec_id"] in executions and executions[f["exec_id"]].get("secType") == "BAG"
        assert f["price"] == pytest.approx(float(executions[f["exec_id"]]["price"]))
    assert legs["credit"] == pytest.approx(fills[0]["price"])
    leg_execs = [e for e in executions.values() if e.get("secType") == "OPT"
                 and e.get("orderRef") == fills[0]["order_ref"]]
    assert len(leg_execs) == 4
    # the first condor was closed; the run may have stopped with a later one open: IB then holds
    # its four legs, as many as the journal's open combos say
    held_legs = [p for p in sim.record()["positions"] if p["qty"]]
    open_combos = json.loads(rows(journal, "SELECT summary FROM runs")[0]["summary"])["open_positions"]
    assert len(held_legs) == 4 * open_combos


# ---- faults injected while the run trades ------------------------------------------------------

class When(threading.Thread):
    """Runs `action` once `cond()` holds (polled every 50 ms for up to `timeout` s): faults are
    injected when the run has reached a point, not at a guessed wall time. `.at` is when it acted."""

    def __init__(self, cond, action, timeout: float = 30.0):
        super().__init__(daemon=True)
        self.cond, self.action, self.timeout = cond, action, timeout
        self.at: float | None = None
        self.halt = threading.Event()

    def run(self):
        deadline = time.monotonic() + self.timeout
        while not self.halt.is_set() and time.monotonic() < deadline:
            if self.cond():
                self.at = time.time()
                self.action()
                return
            time.sleep(0.05)


def qrun_with(faults, sim, strategy, journal, *args, seconds):
    """qrun while the `faults` (When threads) watch the run and inject theirs."""
    for t in faults:
        t.start()
    try:
        return qrun(sim, strategy, journal, *args, seconds=seconds)
    finally:
        for t in faults:
            t.halt.set()


def entries(sim) -> list[dict]:
    """The buy orders the simulator received (the strategies here are long only), with wall times."""
    return [{**m["order"], "wall": m["wall"], "t": m["t"]} for m in sim.record()["received"]
            if m.get("name") == "placeOrder" and "order" in m and not m["order"].get("whatIf")
            and m["order"]["action"] == "BUY"]


def line_events(sim, action=None, symbol=None) -> list[dict]:
    return [e for e in sim.record()["events"] if e["kind"] == "line" and (action is None or e["action"] == action)
            and (symbol is None or e.get("symbol") == symbol)]


def test_a_silent_line_goes_stale_blocks_entries_is_asked_again_and_trades_when_ticks_resume(nq_sim, tmp_path):
    """Scenario 4: once the run has traded, the simulator stops NQ's ticks while the connection
    stays up. Within the staleness age (1 s here) NQ is stale: its entries are blocked with the
    reason, an alert is journaled, the line is requested again; no entry is sent while it is
    silent. When ticks resume the run trades again."""
    strategy = _copy(tmp_path, NQ, stale_quote_age="1s")
    journal = tmp_path / "j.sqlite"
    stop = When(lambda: entries(nq_sim), lambda: nq_sim.stop_ticks("NQ"))
    resume = When(lambda: stop.at is not None and time.time() - stop.at > 5.0, lambda: nq_sim.resume_ticks("NQ"))
    out = qrun_with((stop, resume), nq_sim, strategy, journal, seconds=16)
    assert out.exit_code == 0, out.output
    assert stop.at and resume.at, "the faults were not injected"
    silent = [e for e in entries(nq_sim) if stop.at + 1.0 < e["wall"] < resume.at]
    assert silent == []                                            # nothing priced from a silent line
    stale = [d for d in rows(journal, "SELECT * FROM decisions WHERE outcome = 'blocked'") if "stale" in d["reason"]]
    assert stale and all(d["reason"].startswith("NQ: stale: no ticks for") for d in stale)
    alerts = [n for n in rows(journal, "SELECT * FROM notes WHERE kind = 'alert'") if "stale" in n["message"]]
    assert alerts
    asked = [m for m in nq_sim.record()["received"] if m.get("name") == "reqMktData" and stop.at < m["wall"] < resume.at]
    assert asked                                                   # the line was requested again
    assert [e for e in entries(nq_sim) if e["wall"] > resume.at]   # and it trades again
    assert_journal_is_the_venues(nq_sim, journal, "qtrade:nq-cross:")


def test_a_farm_blip_resubscribes_lines_and_streams_and_bars_keep_coming(nq_sim, tmp_path, expect_errors):
    """Scenario 6: 2103 (market data farm broken) then 2104 (OK) while the run trades: quotes are
    suspect in between, then every line and bar stream is requested again, and bars, decisions
    and orders go on afterwards."""
    expect_errors(2103, 2104, 162)
    journal = tmp_path / "j.sqlite"
    broken = When(lambda: entries(nq_sim), lambda: nq_sim.farm(False))
    ok = When(lambda: broken.at is not None and time.time() - broken.at > 1.5, lambda: nq_sim.farm(True))
    out = qrun_with((broken, ok), nq_sim, NQ, journal, seconds=14)
    assert out.exit_code == 0, out.output
    assert broken.at and ok.at, "the faults were not injected"
    after = [m for m in nq_sim.record()["received"] if m["wall"] > ok.at]
    assert [m for m in after if m.get("name") == "reqMktData"]           # the line, again
    assert [m for m in after if m.get("name") == "reqHistoricalData"]    # the bar stream, again
    back = [e for e in nq_sim.record()["events"] if e.get("name") == "farm" and e.get("ok")][0]["t"]
    later = rows(journal, "SELECT * FROM decisions WHERE ts > ?", back)
    assert later, "no decision after the farm came back"
    assert [e for e in entries(nq_sim) if e["wall"] > ok.at]
    assert not [e for e in entries(nq_sim) if broken.at + 0.3 < e["wall"] < ok.at]
    assert_journal_is_the_venues(nq_sim, journal, "qtrade:nq-cross:")


def test_a_competing_session_blocks_quotes_and_entries_then_the_lines_recover(nq_sim, tmp_path, expect_errors):
    """Scenario 7: another session takes the live data (10197): no quote, no entry, an alert
    journaled; when it ends the lines are requested again and recover without a restart."""
    expect_errors(10197)
    nq_sim.competing_session(True)
    journal = tmp_path / "j.sqlite"
    blocked_seen = lambda: any("10197" in d["reason"] or "competing" in d["reason"]       # noqa: E731
                               for d in _rows_if(journal, "SELECT reason FROM decisions WHERE outcome = 'blocked'"))
    ends = When(blocked_seen, lambda: nq_sim.competing_session(False))
    out = qrun_with((ends,), nq_sim, NQ, journal, seconds=14)
    assert out.exit_code == 0, out.output
    assert ends.at, "no entry was blocked by the competing session"
    assert not [e for e in entries(nq_sim) if e["wall"] < ends.at]          # nothing while it lasted
    alerts = [n for n in rows(journal, "SELECT * FROM notes WHERE kind = 'alert'") if n["subject"] == "10197"]
    assert alerts
    assert [e for e in entries(nq_sim) if e["wall"] > ends.at]             # recovered, same run
    assert_journal_is_the_venues(nq_sim, journal, "qtrade:nq-cross:")


def _rows_if(journal, sql):
    """Rows of a journal another thread is writing (none before it exists)."""
    if not Path(journal).exists():
        return []
    try:
        return rows(journal, sql)
    except sqlite3.OperationalError:      # not created yet
        return []


def test_a_partial_fill_then_ibs_cancel_leaves_a_40_lot_position_closed_as_40(nq_sim, tmp_path, expect_errors):
    """Scenario 9: the first entry, 100 contracts, fills 40 and IB cancels the rest (202): the
    journal holds one 40-lot fill and the order cancelled with 40 filled; the position is 40, its
    exit sells 40, and the trade's P&L is for 40 at the multiplier."""
    expect_errors(202)
    strategy = _copy(tmp_path, NQ, margin_check="off")
    # 100 NQ at the map's 19,800 initial margin would not fit the account: a map whose NQ needs 1,000
    instruments = (ROOT / "universes" / "instruments.yaml").read_text()
    assert "margin: 19800, maintenance_margin: 18000" in instruments
    (tmp_path / "instruments.yaml").write_text(instruments.replace("margin: 19800, maintenance_margin: 18000",
                                                                   "margin: 1000, maintenance_margin: 900", 1))
    strategy.write_text(strategy.read_text().replace("quantity: 1,", "quantity: 100,")
                        + "instruments: instruments.yaml\n")
    nq_sim.partial_fill_then_cancel(40)
    journal = tmp_path / "j.sqlite"
    out = qrun(nq_sim, strategy, journal, seconds=12)
    assert out.exit_code == 0, out.output
    orders = rows(journal, "SELECT * FROM orders ORDER BY id")
    first = orders[0]
    assert first["quantity"] == 100 and first["status"] == "cancelled"
    fills = rows(journal, "SELECT * FROM fills WHERE order_ref = ?", first["order_ref"])
    assert [f["quantity"] for f in fills] == [40]
    exits = [o for o in orders if o["intent"] == "close"]
    assert exits and exits[0]["quantity"] == 40
    trades = rows(journal, "SELECT * FROM trades ORDER BY id")
    assert trades and trades[0]["quantity"] == 40
    t = trades[0]
    assert t["pnl"] == pytest.approx((t["exit_price"] - t["entry_price"]) * 40 * 20 - t["commission"])
    assert_journal_is_the_venues(nq_sim, journal, "qtrade:nq-cross:")
    net = sum((1 if f["action"] == "buy" else -1) * f["quantity"] for f in rows(journal, "SELECT * FROM fills"))
    venue = sum(p["qty"] for p in nq_sim.record()["positions"] if p["conId"] == first["con_id"])
    assert net == venue


def test_an_exit_goes_to_the_contract_held_not_the_front_month(nq_sim, connect, tmp_path):
    """Futures positions are keyed by their contract: the journal and IB hold NQ in NQH4 (not
    the front month, NQZ3). The restored position's exit goes to NQH4's conId; no entry opens
    NQZ3 while NQH4 is held."""
    from engine.brokers.ib.contracts import Contracts, load_instruments

    ib = connect(nq_sim, clientId=78)
    from ib_async import Contract

    h4 = [d.contract for d in ib.reqContractDetails(Contract(secType="FUT", symbol="NQ", exchange="CME"))
          if d.contract.localSymbol == "NQH4"][0]
    front = Contracts(ib, load_instruments(), today=lambda: nq_sim.now().date()).resolve("NQ")
    ib.disconnect()
    assert front.local_symbol == "NQZ3"
    journal = tmp_path / "j.sqlite"
    _earlier_run(journal, "DU1234567", [("qtrade:nq-cross:1", "NQ", "buy", 1, 15900.0, h4.conId, "NQH4")])
    nq_sim.set_position(h4.conId, 1, 15900.0)
    out = qrun(nq_sim, NQ, journal, seconds=10)
    assert out.exit_code == 0, out.output
    venue = book(nq_sim)
    closes = [o for o in rows(journal, "SELECT * FROM orders WHERE intent = 'close' AND run_id != 'earlier'")]
    assert closes, out.output
    first = closes[0]
    assert venue[first["order_ref"]]["conId"] == h4.conId and first["local_symbol"] == "NQH4"
    opened_before_close = [o for o in rows(journal, "SELECT * FROM orders WHERE intent = 'open' AND "
                                                     "run_id != 'earlier' AND id < ?", first["id"])]
    assert opened_before_close == []                       # no second contract while NQH4 was held
    closing = rows(journal, "SELECT * FROM fills WHERE order_ref = ?", first["order_ref"])
    assert closing and all(f["con_id"] == h4.conId and f["local_symbol"] == "NQH4" for f in closing)
    later_opens = rows(journal, "SELECT * FROM orders WHERE intent = 'open' AND run_id != 'earlier'")
    assert all(o["local_symbol"] == "NQZ3" and venue[o["order_ref"]]["conId"] == front.con_id
               for o in later_opens)                     # once flat, entries go to the front month
    assert_journal_is_the_venues(nq_sim, journal, "qtrade:nq-cross:")
    assert {p["conId"]: p["qty"] for p in nq_sim.record()["positions"]}.get(h4.conId) == 0


ROTATING = """\
kind: strategy
name: rotation
description: SMA 2/4 crossover on twelve symbols within a budget of five market-data lines.
universe: [{symbols}]
data:
  bar: 1m
  history: 30 bars
  session: extended
  subscriptions: {{max_lines: 5, reserve_for_positions: 2, ttl: 2s}}
indicators:
  fast_ma: sma(close, 2)
  slow_ma: sma(close, 4)
entry:
  - name: cross up
    when: crosses_above(fast_ma, slow_ma)
    order: one
exit:
  - name: cross down
    when: crosses_below(fast_ma, slow_ma)
orders:
  one: {{action: buy, type: market, quantity: 1, tif: day}}
schedule: {{timezone: America/New_York, every: 1m}}
risk: {{max_open_positions: 2, margin_check: off, kill_switch_file: null}}
"""


def _twelve(tmp_path) -> tuple[Path, list[str]]:
    """Twelve minute series for the simulator: the real NQ bars, each symbol's rows moved on by
    its own number of minutes so that their crossovers come at different times (written under
    tmp_path, never into the repository)."""
    import pandas as pd

    from gateway.conftest import shared_data

    src = pd.read_csv(shared_data("firstratedata_nq_sample", "NQ_1min_sample.csv"))
    folder = tmp_path / "data"
    folder.mkdir()
    names = [f"LINE{chr(ord('A') + i)}" for i in range(12)]
    for i, name in enumerate(names):
        shifted = src[["open", "high", "low", "close", "volume"]].shift(-3 * i)
        out = pd.concat([src[["timestamp"]], shifted], axis=1).dropna()
        out.to_csv(folder / f"{name}.csv", index=False)
    return folder, names


def test_twelve_symbols_take_turns_on_five_lines_and_positions_keep_theirs(make_sim, tmp_path):
    """Scenario 15: max_lines 5 (2 kept for positions), 12 symbols, the simulator refusing a 6th
    line with 101: no 101 is ever answered (any ERROR ib_async logs fails the test), the
    simulator never holds more than 5 lines, more than 5 symbols get a line over the run (TTL
    eviction rotates them), and no open position's line is cancelled while it is held."""
    folder, names = _twelve(tmp_path)
    sim = make_sim(folder, speed=120)
    sim.set_max_lines(5)
    strategy = tmp_path / "rotation.yaml"
    strategy.write_text(ROTATING.format(symbols=", ".join(names)))
    journal = tmp_path / "j.sqlite"
    out = qrun(sim, strategy, journal, seconds=16)
    assert out.exit_code == 0, out.output
    assert "needs 12 lines, budget 5 (2 reserved for positions): 9 more than fit at once" in out.output
    lines = line_events(sim)
    assert not [e for e in lines if e["action"] == "refused"]
    assert max(e["lines"] for e in lines if e["action"] == "open") <= 5
    assert len({e["symbol"] for e in lines if e["action"] == "open"}) > 5          # they took turns
    assert [e for e in lines if e["action"] == "cancel"]                           # TTL freed idle lines
    fills = rows(journal, "SELECT * FROM fills ORDER BY id")
    assert fills, out.output
    held: dict[str, str] = {}                     # symbol -> when its position opened (venue time)
    spans = []
    for f in fills:
        if f["action"] == "buy":
            held[f["symbol"]] = f["ts"]
        else:
            spans.append((f["symbol"], held.pop(f["symbol"]), f["ts"]))
    spans += [(s, t, "9999") for s, t in held.items()]
    for symbol, opened, closed in spans:
        cancels = [e for e in lines if e["action"] == "cancel" and e["symbol"] == symbol
                   and _utc(opened) < _utc(e["t"]) < _utc(closed)]
        assert cancels == [], (symbol, opened, closed)
    blocked = [d["reason"] for d in rows(journal, "SELECT reason FROM decisions WHERE outcome = 'blocked'")]
    # (and the bars a line's wait left behind: entries decided on them are late, not sent)
    assert all("no market data line" in r or "max_open_positions" in r or "open positions" in r
               or "a bar the run is catching up on" in r for r in blocked), set(blocked)
    assert_journal_is_the_venues(sim, journal, "qtrade:rotation:")


def _utc(text: str):
    """A journal or simulator timestamp as a comparable UTC time ('9999': never)."""
    import pandas as pd

    if text == "9999":
        return pd.Timestamp.max.tz_localize("UTC")
    t = pd.Timestamp(text)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def test_a_restart_with_an_open_condor_reconciles_its_legs_and_manages_it(make_sim, tmp_path, expect_errors):
    """IB holds a combo as its four legs. A run stopped (SIGTERM) with a condor open; the restart
    compares the journal's condor leg by leg with IB's positions (no phantom, no unknown), restores
    it, and its exit rule closes it with one BAG order; nothing is sent twice."""
    # (104: a chase's modify meets the order just filled on a loaded machine, as in the paper condor test)
    expect_errors(202, 10148, 104, 162, "HMDS query returned no data: VIX")
    sim = make_sim(None, speed=60)
    journal = tmp_path / "j.sqlite"
    # held eight bars (8 s at 60x), so the stop reaches the first run with the condor still open
    # (a stop is acted on once the bar in hand is done, and a bar's chain can take a second or two)
    condor = tmp_path / CONDOR.name
    condor.write_text(CONDOR.read_text().replace("name: held three bars, when: position.bars_held >= 3",
                                                 "name: held eight bars, when: position.bars_held >= 8"))
    assert "bars_held >= 8" in condor.read_text()
    bag_filled = lambda: [e for e in sim.record()["executions"] if e.get("secType") == "BAG"]   # noqa: E731
    code, output = run_until_sigterm(sim, condor, journal, bag_filled, "no condor was filled", wait=40)
    assert code == 0, output
    legs_at_ib = {p["conId"]: p["qty"] for p in sim.record()["positions"] if p["qty"]}
    assert len(legs_at_ib) == 4 and sorted(legs_at_ib.values()) == [-1, -1, 1, 1], output
    first_refs = {o["orderRef"] for o in placed(sim)}
    sent_before = len(placed(sim))
    out = qrun(sim, condor, journal, seconds=20)
    assert out.exit_code == 0, out.output
    notes = rows(journal, "SELECT * FROM notes")
    assert not [n for n in notes if n["kind"] in ("phantom", "unknown", "mismatch")], notes
    key = "XSP condor"
    assert ("restored", key) in {(n["kind"], n["subject"]) for n in notes}
    runs = [r["run_id"] for r in rows(journal, "SELECT run_id FROM runs ORDER BY started_at")]
    orders = rows(journal, "SELECT * FROM orders WHERE run_id = ? ORDER BY id", runs[-1])
    # its exit first: a close at the natural price may miss if the quotes move within its 15 s, and is
    # then cancelled (confirmed) and decided again at the next close, until one fills
    assert orders and orders[0]["intent"] == "close", out.output
    filled = [o for o in orders if o["status"] == "filled"]
    assert filled and filled[0]["intent"] == "close", out.output
    closes_before = orders[:orders.index(filled[0])]
    assert all(o["intent"] == "close" and o["status"] == "cancelled" for o in closes_before), out.output
    close_refs = {o["order_ref"] for o in closes_before + [filled[0]]}
    assert {o["secType"] for o in placed(sim)[sent_before:] if o["orderRef"] in close_refs} == {"BAG"}
    assert not first_refs & {o["orderRef"] for o in placed(sim)[sent_before:]}     # nothing sent again
    held_legs = [p for p in sim.record()["positions"] if p["qty"]]
    open_combos = json.loads(rows(journal, "SELECT summary FROM runs WHERE run_id = ?", runs[-1])[0]["summary"])[
        "open_positions"]
    assert len(held_legs) == 4 * open_combos


def _nq_variant(tmp_path, name, replace) -> Path:
    text = NQ.read_text().replace("name: nq-cross", f"name: {name}")
    for old, new in replace:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def _venue_path(sim, prefix) -> list[float]:
    """The position at IB after each of our executions, in order."""
    held, out = 0.0, []
    for e in sim.record()["executions"]:
        if str(e.get("orderRef", "")).startswith(prefix):
            held += float(e["shares"]) * (1 if e["side"] in ("BOT", "BUY") else -1)
            out.append(held)
    return out


def test_stop_and_reverse_in_paper_the_entry_follows_its_exit_and_ib_never_holds_two(nq_sim, tmp_path):
    """Issue 15 item 3 on IB: an always-in crossover. Each exit's fill is booked before the entry
    that reverses the position is sent (a venue that answers later: the entry waits), so IB goes
    +1, 0, -1, 0, +1 ... and never holds two; the journal is the venue's."""
    strategy = _nq_variant(tmp_path, "nq-reverse", [
        ("""  - name: cross up
    when: crosses_above(fast_ma, slow_ma)
    order: one_contract
""", """  - name: cross up
    when: crosses_above(fast_ma, slow_ma)
    order: one_contract
  - name: cross down short
    when: crosses_below(fast_ma, slow_ma)
    order: short_one
"""),
        ("""  - name: cross down
    when: crosses_below(fast_ma, slow_ma)
""", """  - name: cross down
    when: position.side > 0 and crosses_below(fast_ma, slow_ma)
  - name: cross up cover
    when: position.side < 0 and crosses_above(fast_ma, slow_ma)
"""),
        ("  one_contract: {action: buy, type: market, quantity: 1, tif: day}",
         "  one_contract: {action: buy, type: market, quantity: 1, tif: day}\n"
         "  short_one: {action: sell, type: market, quantity: 1, tif: day}"),
        ("max_open_positions: 1", "max_open_positions: 1, margin_check: off"),
        (", margin_check: allow-missing-in-paper", "")])
    journal = tmp_path / "j.sqlite"
    out = qrun(nq_sim, strategy, journal, seconds=10)
    assert out.exit_code == 0, out.output
    assert_journal_is_the_venues(nq_sim, journal, "qtrade:nq-reverse:")
    path = _venue_path(nq_sim, "qtrade:nq-reverse:")
    assert max(abs(q) for q in path) == 1
    trades = rows(journal, "SELECT * FROM trades ORDER BY id")
    sides = [t["side"] for t in trades]
    assert "long" in sides and "short" in sides
    reversed_ = [(a, b) for a, b in zip(trades, trades[1:]) if a["side"] != b["side"]
                 and abs(pd_ns(b["entry_ts"]) - pd_ns(a["exit_ts"])) < 60e9]
    assert reversed_, trades        # an exit and the entry the other way in the same minute
    orders = rows(journal, "SELECT order_ref, rule, status FROM orders ORDER BY id")
    assert all(o["status"] in ("filled", "cancelled", "submitted", "working") for o in orders)


def test_pyramiding_in_paper_adds_a_second_contract_and_the_exit_closes_both(nq_sim, tmp_path):
    strategy = _nq_variant(tmp_path, "nq-pyramid", [
        ("when: crosses_above(fast_ma, slow_ma)", "when: fast_ma > slow_ma"),
        ("max_open_positions: 1", "max_open_positions: 1, pyramiding: 2, margin_check: off"),
        (", margin_check: allow-missing-in-paper", "")])
    journal = tmp_path / "j.sqlite"
    out = qrun(nq_sim, strategy, journal, seconds=10)
    assert out.exit_code == 0, out.output
    assert_journal_is_the_venues(nq_sim, journal, "qtrade:nq-pyramid:")
    path = _venue_path(nq_sim, "qtrade:nq-pyramid:")
    assert max(path) == 2 and min(path) >= 0
    trades = rows(journal, "SELECT * FROM trades")
    assert any(t["quantity"] == 2 for t in trades), trades
    for t in trades:
        assert t["pnl"] == pytest.approx((t["exit_price"] - t["entry_price"]) * 20 * t["quantity"]
                                         - t["commission"])


def pd_ns(text: str) -> int:
    import pandas as pd

    return int(pd.Timestamp(text).value)


MIXED_AGENTS = """\
kind: strategy
name: mixed-paper
universe: [QQQ]
data: {bar: 1m, history: 30 bars, session: regular}
schedule: {timezone: America/New_York, entry_window: ["09:30", "11:00"], flat_by: "15:50"}
indicators:
  fast: ema(close, 3)
agents:
  theta:
    active: time < 09:36
    score: 2
    flat_by: null
    entry: [{name: sell spread, when: credit >= 0.05, order: put_spread}]
    exit: [{name: held three bars, when: position.bars_held >= 3}]
  stock:
    score: 1
    entry: [{name: up, when: close > fast or close <= fast, order: buy}]
    exit: [{name: two bars, when: position.bars_held >= 2}]
orders:
  buy: {action: buy, type: market, quantity: 5}
  put_spread:
    expiry: next_friday
    legs:
      short_put: {right: put, action: sell, strike: {delta: 0.25, min: 0.1, max: 0.5}}
      long_put: {right: put, action: buy, strike: short_put.strike - 1}
    quantity: 1
    price: {chase: {start: mid, step: 0.03, steps: 6, every: 10s, floor: 0.01}}
    tif: day
risk: {max_open_positions: 1, margin_check: allow-missing-in-paper}
"""


def test_options_and_stock_agents_in_paper_one_position_at_a_time_each_its_owners(make_sim, tmp_path, expect_errors):
    """Issue 13 item 3 on IB: the paper path builds the options desk for a strategy whose agents
    trade both shares and combos. The options agent (active the first minutes) sells a put
    spread as one BAG order, its own exit closes it; then the stock agent trades shares; never
    both at once on the symbol; every order and trade journaled with its owner, the shares'
    fills the venue's."""
    from gatewaysim.data import SAMPLE

    # (as in the condor's test: a chase's cancel is confirmed with 202, or 10148 when the fill won
    # the race; the options desk asks VIX's history, which the simulator has as daily bars only)
    expect_errors(202, 10148, "HMDS query returned no data: VIX")
    data = tmp_path / "data"
    data.mkdir()
    for f in SAMPLE.glob("*.csv"):
        (data / f.name).symlink_to(f)
    (data / "QQQ.csv").symlink_to(SAMPLE / "XSP.csv")       # a stock with minute bars (and options)
    sim = make_sim(data, speed=60)
    strategy = tmp_path / "mixed.yaml"
    strategy.write_text(MIXED_AGENTS)
    journal = tmp_path / "j.sqlite"
    out = qrun(sim, strategy, journal, seconds=25)
    assert out.exit_code == 0, out.output
    bags = [o for o in placed(sim) if o.get("secType") == "BAG"]
    assert bags and all(o["orderRef"].startswith("qtrade:mixed-paper:") for o in bags)
    trades = rows(journal, "SELECT * FROM trades ORDER BY entry_ts")
    owners = [t["owner"] for t in trades]
    assert "theta" in owners and "stock" in owners, (owners, out.output)
    for t in trades:
        assert bool(t["legs"]) == (t["owner"] == "theta")
        assert t["exit_rule"] == ("held three bars" if t["owner"] == "theta" else "two bars")
    assert all(a["exit_ts"] <= b["entry_ts"] for a, b in zip(trades, trades[1:]))      # one at a time
    orders = rows(journal, "SELECT * FROM orders")
    assert {o["owner"] for o in orders} == {"theta", "stock"}
    assert all(o["owner"] == "theta" for o in orders if o["legs"])
    assert_journal_is_the_venues(sim, journal, "qtrade:mixed-paper:")
    entries = rows(journal, "SELECT agent, confidence, reason FROM decisions WHERE kind = 'entry' AND outcome = 'fired'")
    assert {e["agent"] for e in entries} == {"theta", "stock"}
    assert all(e["reason"].startswith("taken by highest_confidence") for e in entries)


def test_stop_prices_go_on_ibs_minimum_price_variation_where_the_map_differs(nq_sim, tmp_path):
    """IB refuses a stop off its contract's minTick (110): the run takes the grid from IB's
    contract details, not the instrument map, where they differ. The simulator lists NQ with a
    0.5 tick (the map says 0.25); a stop 3.3 under the entry goes out on IB's grid (3.0 under, a
    sell stop rounded up), the run says why, and no order is refused."""
    for inst in nq_sim.catalog.by_conid.values():
        if inst.symbol == "NQ" and inst.secType == "FUT":
            inst.minTick = 0.5
    path = tmp_path / "nq_stop.yaml"
    path.write_text(NQ.read_text().replace("    reason: trend over\n",
                                           "    reason: trend over\n  - name: stop\n"
                                           "    stop: position.entry_price - 3.3\n"))
    journal = tmp_path / "j.sqlite"
    out = qrun(nq_sim, path, journal, seconds=8)
    assert out.exit_code == 0, out.output
    assert "NQ: IB's minimum price variation is 0.5, the instrument map's tick_size 0.25" in out.output
    stops = [o for o in placed(nq_sim) if o["orderType"] == "STP"]
    assert stops, out.output
    assert all(o["auxPrice"] / 0.5 == round(o["auxPrice"] / 0.5) for o in stops)
    entries = {f["price"] for f in rows(journal, "SELECT price FROM fills f JOIN orders o ON o.order_ref = f.order_ref "
                                                 "WHERE o.intent = 'open'")}
    assert any(o["auxPrice"] + 3.0 in entries for o in stops)
    assert not [e for e in nq_sim.events if e["kind"] == "rejected"]


def test_a_daily_entry_decided_at_the_close_fills_at_the_next_open_as_in_the_backtest(make_sim, tmp_path,
                                                                                     expect_errors):
    """sma_crossover's golden cross of 2017-07-18 is decided at that day's close and sent then.
    IB holds a stock market order sent after the close until the open (399): it fills at
    2017-07-19's open, as the backtest's does (at 246.02), not at the close it was decided at
    (the simulator filled it there before)."""
    expect_errors(162, 399)
    sim = make_sim(None, speed=7200, start="2017-07-18 15:45")        # a Tuesday
    journal = tmp_path / "j.sqlite"
    out = qrun(sim, ROOT / "strategies" / "sma_crossover.yaml", journal, seconds=14)
    assert out.exit_code == 0, out.output
    buys = [o for o in placed(sim) if o["action"] == "BUY"]
    assert len(buys) == 1 and buys[0]["orderType"] == "MKT", (placed(sim), out.output)
    # sent on the evening of the close it was decided on (IB's daily bar is complete at the
    # session's close: as soon as the run is up, hours into the evening at 7,200 times real time),
    # not after the midnight the bar ends at
    [sent] = [pd.Timestamp(m["t"]).tz_convert("America/New_York") for m in sim.record()["received"]
              if m.get("name") == "placeOrder" and not m["order"].get("whatIf") and m["order"]["action"] == "BUY"]
    assert "2017-07-18 16:00" <= sent.strftime("%Y-%m-%d %H:%M") < "2017-07-19 00:00", sent
    fills = rows(journal, "SELECT * FROM fills")
    assert len(fills) == 1, out.output
    ex = sim.record()["executions"][0]
    local = pd.Timestamp(ex["ts"], unit="s", tz="UTC").tz_convert("America/New_York")
    # at the open itself, although at 7,200 times real time the simulator's ticks are minutes apart
    assert local.strftime("%Y-%m-%d %H:%M:%S") == "2017-07-19 09:30:00", ex
    spy = sim.market.series["SPY"]
    day = int(np.flatnonzero(spy.day == pd.Timestamp("2017-07-19", tz="America/New_York").value)[0])
    assert round(spy.o[day], 2) == 246.02   # the bar's open, which the backtest fills at
    open_ask = sim.market.quote(sim.catalog.symbol("SPY"), int(round(ex["ts"] * 1e9))).ask
    assert fills[0]["price"] == open_ask and abs(open_ask - 246.02) <= 0.02, (fills, open_ask)
    # IB's 399 is a notice (the order is live, held), journaled as a note, not an error; the fill
    # is dated at its own time, not as seconds after the close it was decided at
    held = rows(journal, "SELECT * FROM notes WHERE kind = 'held'")
    assert len(held) == 1 and held[0]["subject"] == "qtrade:sma-crossover:1", held
    assert "will not be placed at the exchange until 20170719 09:30:00 US/Eastern" in held[0]["message"], held
    assert not rows(journal, "SELECT * FROM errors"), out.output
    assert "qtrade:sma-crossover:1 (SPY) is held by the broker: IB" not in out.output
    assert "qtrade:sma-crossover:1 (SPY) is held by the broker: Order Message: BUY 4070 SPY SMART Warning: your " \
           "order will not be placed at the exchange until 20170719 09:30:00 US/Eastern" in out.output, out.output
    assert re.search(r"filled 4070 at 246\.\d\d \(2017-07-19 09:3\d", out.output), out.output
    assert "error" not in out.output and "close +" not in out.output, out.output


def test_a_run_that_did_not_close_is_marked_interrupted_and_said_by_the_next(nq_sim, tmp_path, expect_errors):
    """A run killed with -9 (or whose machine stopped) stays 'running' in its journal. The next
    paper run of the strategy on the account holds the session lock, so that run is dead: it is
    marked interrupted, ended at the last thing it journaled, and the new run says so. Runs on
    another account, dry runs and finished runs are left as they are."""
    expect_errors(162)      # (the second run repeats the first's history request: pacing)
    from engine.runtime.journal import Journal

    journal = tmp_path / "j.sqlite"
    with Journal(journal) as j:
        j.start_run("paper", "nq-cross", settings={"account": "DU1234567"}, run_id="killed")
        j.order("killed", "qtrade:nq-cross:1", "2999-01-01T00:00:00Z", "NQ", "buy", 1, "market", status="cancelled")
        j.start_run("paper", "nq-cross", settings={"account": "DU7654321"}, run_id="other-account")
        j.start_run("dry-run", "nq-cross", settings={"account": "DU1234567"}, run_id="a-dry-run")
        j.start_run("paper", "nq-cross", settings={"account": "DU1234567"}, run_id="closed")
        j.finish_run("closed", "finished", {})
    out = qrun(nq_sim, NQ, journal, seconds=3)
    assert out.exit_code == 0, out.output
    status = {r["run_id"]: r for r in rows(journal, "SELECT * FROM runs")}
    assert status["killed"]["status"] == "interrupted"
    assert status["killed"]["finished_at"] == "2999-01-01T00:00:00Z"
    assert "did not close" in json.loads(status["killed"]["summary"])["ended"]
    assert [status[r]["status"] for r in ("other-account", "a-dry-run", "closed")] == ["running", "running", "finished"]
    assert "the paper run killed (started " in out.output and ", last journaled 2999-01-01 00:00:00 UTC) did not " \
        "close: it was killed or its machine stopped. It is marked interrupted" in out.output, out.output
    again = qrun(nq_sim, NQ, journal, seconds=2)
    assert again.exit_code == 0 and "did not close" not in again.output, again.output


def test_a_daily_combo_is_chased_at_the_close_while_its_options_trade(make_sim, tmp_path, expect_errors):
    """The XSP condor on daily bars: the 2019-11-06 bar is complete at the 16:00 close, the entry
    is decided then and its BAG chased at once, while XSP's options trade (to 16:15): it fills
    before 16:15, as the backtest fills it on that close's chain. (Were the bar complete only at
    the midnight it ends at, the chase would run against a shut market and time out unfilled.)"""
    expect_errors(202, 10148, 104, 162, 399)
    sim = make_sim(None, speed=20, start="2019-11-06 15:59")
    journal = tmp_path / "j.sqlite"
    out = qrun(sim, ROOT / "tests" / "ibbroker" / "strategies" / "xsp_daily_condor.yaml", journal, seconds=16)
    assert out.exit_code == 0, out.output
    bags = [m for m in sim.record()["received"] if m.get("name") == "placeOrder"
            and m["order"].get("secType") == "BAG" and not m["order"].get("whatIf")]
    assert bags, out.output
    first = pd.Timestamp(bags[0]["t"]).tz_convert("America/New_York")
    assert "2019-11-06 16:00" <= first.strftime("%Y-%m-%d %H:%M") < "2019-11-06 16:15", first
    executions = [e for e in sim.record()["executions"] if e.get("secType") == "BAG"]
    assert len(executions) == 1, (out.output, sim.record()["orders"])
    filled = pd.Timestamp(executions[0]["ts"], unit="s", tz="UTC").tz_convert("America/New_York")
    assert "2019-11-06 16:00" <= filled.strftime("%Y-%m-%d %H:%M") < "2019-11-06 16:15", filled
    fills = rows(journal, "SELECT * FROM fills")
    assert [f["exec_id"] for f in fills] == [executions[0]["execId"]], (fills, executions)
    trades = rows(journal, "SELECT * FROM orders WHERE status = 'filled'")
    assert len(trades) == 1 and trades[0]["order_ref"].startswith("qtrade:xsp-daily-condor:"), trades
