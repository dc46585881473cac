"""Futures rolls on IB (issue 15 item 5): `qtrade run --broker ib` over a real socket to the
gateway simulator. A position held in NQZ3 when the instrument map's roll rule has moved the
front month to NQH4 is rolled: the close goes to NQZ3's conId, then the open of the same
quantity to NQH4's, both journaled with rule 'roll'; a restart after the roll, or in the middle
of it (the close filled, the open never sent), sends neither leg twice."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import yaml

from ibbroker.test_run_e2e import (NQ, _earlier_run, assert_journal_is_the_venues, book, nq_sim,  # noqa: F401 - nq_sim:
                                   placed, qrun, rows)                                        # the fixture

PREFIX = "qtrade:nq-roll:"


def _contracts(sim, connect):
    """NQ's listed contracts at the simulator, by local symbol (conId, last trade date)."""
    from ib_async import Contract

    ib = connect(sim, clientId=79)
    details = ib.reqContractDetails(Contract(secType="FUT", symbol="NQ", exchange="CME"))
    ib.disconnect()
    return {d.contract.localSymbol: (d.contract.conId, dt.datetime.strptime(d.contract.lastTradeDateOrContractMonth,
                                                                             "%Y%m%d").date()) for d in details}


def _strategy(tmp: Path, sim, z_last: dt.date) -> Path:
    """nq_cross without signals of its own (it neither enters nor exits: only the roll trades),
    on an instrument map whose NQ roll_days puts NQZ3's roll date before the simulator's today."""
    from engine.market.calendars import get_calendar
    from engine.market.futures import roll_date

    today = sim.now().date()
    calendar = get_calendar("CME_Equity")
    days = next(n for n in range(1, 40) if roll_date(z_last, n, calendar) < today)
    inst = yaml.safe_load((Path(__file__).resolve().parents[2] / "universes" / "instruments.yaml").read_text())
    inst["roots"]["NQ"]["roll_days"] = days
    (tmp / "instruments.yaml").write_text(yaml.safe_dump(inst))
    doc = yaml.safe_load(NQ.read_text())
    doc["name"] = "nq-roll"
    doc["instruments"] = "instruments.yaml"
    doc["entry"][0]["when"] = "false"
    doc["exit"][0]["when"] = "false"
    doc["risk"]["margin_check"] = "off"
    path = tmp / "nq_roll.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _earlier(journal: Path, z: int, *, rolled_close: bool = False) -> None:
    _earlier_run(journal, "DU1234567", [(PREFIX + "1", "NQ", "buy", 1, 15800.0, z, "NQZ3")])
    if rolled_close:    # the earlier run closed NQZ3 to roll it, and stopped before the open left
        from engine.runtime.journal import Journal

        with Journal(journal) as j:
            t = "2023-12-04T14:30:00+00:00"
            j.order("earlier", PREFIX + "2", t, "NQ", "sell", 1, "market", rule="roll", intent="close",
                    reason="roll NQZ3 -> NQH4")
            j.order_status(PREFIX + "2", "filled", t)
            j.order_ids(PREFIX + "2", con_id=z, local_symbol="NQZ3")
            j.fill("earlier", PREFIX + "2", t, "NQ", "sell", 1, 15850.0, 20.0, 2.25, exec_id="earlier.roll",
                   con_id=z, local_symbol="NQZ3")


def test_a_position_past_its_roll_is_closed_in_its_contract_then_opened_in_the_front_month(nq_sim, connect,
                                                                                          tmp_path, expect_errors):
    expect_errors(162)      # the restart asks the history the first run asked seconds before: paced, waited out
    listed = _contracts(nq_sim, connect)
    (z, z_last), (h, _) = listed["NQZ3"], listed["NQH4"]
    strategy = _strategy(tmp_path, nq_sim, z_last)
    journal = tmp_path / "j.sqlite"
    _earlier(journal, z)
    nq_sim.set_position(z, 1, 15800.0)
    out = qrun(nq_sim, strategy, journal, seconds=8)
    assert out.exit_code == 0, out.output
    sent = [o for o in placed(nq_sim) if str(o.get("orderRef", "")).startswith(PREFIX)]
    venue = book(nq_sim)
    assert [(o["action"], o["orderType"], venue[o["orderRef"]]["conId"]) for o in sent] == [
        ("SELL", "MKT", z), ("BUY", "MKT", h)], out.output          # the close in NQZ3 first, then NQH4
    orders = rows(journal, "SELECT * FROM orders WHERE run_id != 'earlier' ORDER BY id")
    assert [(o["rule"], o["intent"], o["action"], o["local_symbol"], o["status"]) for o in orders] == [
        ("roll", "close", "sell", "NQZ3", "filled"), ("roll", "open", "buy", "NQH4", "filled")]
    assert all(o["reason"] == "roll NQZ3 -> NQH4" for o in orders)
    fills = rows(journal, "SELECT f.*, o.rule FROM fills f JOIN orders o ON o.order_ref = f.order_ref "
                          "WHERE f.run_id != 'earlier' ORDER BY f.id")
    assert [(f["rule"], f["action"], f["con_id"]) for f in fills] == [("roll", "sell", z), ("roll", "buy", h)]
    trades = rows(journal, "SELECT * FROM trades WHERE run_id != 'earlier' ORDER BY id")
    assert [(t["exit_rule"], t["local_symbol"]) for t in trades] == [("roll", "NQZ3")]   # NQH4's is still open
    positions = {p["conId"]: p["qty"] for p in nq_sim.record()["positions"]}
    assert (positions.get(z), positions.get(h)) == (0, 1)
    assert_journal_is_the_venues(nq_sim, journal, PREFIX)
    # a restart after the roll restores NQ in NQH4 and rolls nothing again
    before = len(placed(nq_sim))
    out = qrun(nq_sim, strategy, journal, seconds=5)
    assert out.exit_code == 0, out.output
    assert len(placed(nq_sim)) == before
    notes = {(n["kind"], n["subject"]) for n in rows(journal, "SELECT * FROM notes")}
    assert ("restored", "NQ") in notes


def test_a_restart_in_the_middle_of_a_roll_sends_its_open_once_and_never_its_close_again(nq_sim, connect, tmp_path,
                                                                                        expect_errors):
    expect_errors(162)      # the second restart's history request is paced (waited out)
    listed = _contracts(nq_sim, connect)
    (z, z_last), (h, _) = listed["NQZ3"], listed["NQH4"]
    strategy = _strategy(tmp_path, nq_sim, z_last)
    journal = tmp_path / "j.sqlite"
    _earlier(journal, z, rolled_close=True)      # IB is flat: the close filled there too
    out = qrun(nq_sim, strategy, journal, seconds=6)
    assert out.exit_code == 0, out.output
    sent = [o for o in placed(nq_sim) if str(o.get("orderRef", "")).startswith(PREFIX)]
    venue = book(nq_sim)
    assert [(o["action"], venue[o["orderRef"]]["conId"]) for o in sent] == [("BUY", h)], out.output
    assert ("roll", "NQ") in {(n["kind"], n["subject"]) for n in rows(journal, "SELECT * FROM notes")}
    opened = rows(journal, "SELECT * FROM orders WHERE run_id != 'earlier'")
    assert [(o["rule"], o["intent"], o["local_symbol"], o["status"]) for o in opened] == [
        ("roll", "open", "NQH4", "filled")]
    assert {p["conId"]: p["qty"] for p in nq_sim.record()["positions"]}.get(h) == 1
    # and again: the open is journaled, so the next restart sends nothing
    out = qrun(nq_sim, strategy, journal, seconds=4)
    assert out.exit_code == 0, out.output
    assert len([o for o in placed(nq_sim) if str(o.get("orderRef", "")).startswith(PREFIX)]) == 1
    assert {p["conId"]: p["qty"] for p in nq_sim.record()["positions"]}.get(h) == 1


def _roll_close_at_ib(sim, journal: Path, z: int, limit: float) -> None:
    """The earlier run sent the roll's close (journaled as submitted) and stopped; at IB it rests
    as a limit (a market order's short life, made visible)."""
    from engine.runtime.journal import Journal

    sim.set_position(z, 1, 15800.0)
    sim.seed_order(z, "SELL", 1, "LMT", lmt_price=limit, order_ref=PREFIX + "2", clientId=1)
    with Journal(journal) as j:
        j.order("earlier", PREFIX + "2", "2023-12-04T14:30:00+00:00", "NQ", "sell", 1, "limit", limit_price=limit,
                rule="roll", intent="close", status="submitted", reason="roll NQZ3 -> NQH4")
        j.order_ids(PREFIX + "2", con_id=z, local_symbol="NQZ3")


def _all_venue_fills_journaled_once(sim, journal: Path) -> None:
    venue = {e["execId"] for e in sim.record()["executions"] if str(e.get("orderRef", "")).startswith(PREFIX)}
    fills = [f["exec_id"] for f in rows(journal, "SELECT exec_id FROM fills WHERE exec_id NOT LIKE 'earlier.%'")]
    assert sorted(fills) == sorted(venue)


def test_a_roll_close_filled_at_ib_while_qtrade_was_away_is_journaled_and_its_open_sent_once(nq_sim, connect,
                                                                                           tmp_path, expect_errors):
    expect_errors(162)
    listed = _contracts(nq_sim, connect)
    (z, z_last), (h, _) = listed["NQZ3"], listed["NQH4"]
    strategy = _strategy(tmp_path, nq_sim, z_last)
    journal = tmp_path / "j.sqlite"
    _earlier(journal, z)
    _roll_close_at_ib(nq_sim, journal, z, 1000.0)        # marketable: IB fills it before the run is back
    out = qrun(nq_sim, strategy, journal, seconds=8)
    assert out.exit_code == 0, out.output
    notes = {(n["kind"], n["subject"]): n["message"] for n in rows(journal, "SELECT * FROM notes")}
    assert ("missed_fill", PREFIX + "2") in notes
    assert "closed the position in NQZ3 to roll it" in notes[("roll", "NQ")]
    sent = [o for o in placed(nq_sim) if str(o.get("orderRef", "")).startswith(PREFIX)]
    venue = book(nq_sim)
    assert [(o["action"], venue[o["orderRef"]]["conId"]) for o in sent] == [("BUY", h)], out.output
    positions = {p["conId"]: p["qty"] for p in nq_sim.record()["positions"]}
    assert (positions.get(z), positions.get(h)) == (0, 1)
    opened = rows(journal, "SELECT * FROM orders WHERE run_id != 'earlier' AND intent = 'open'")
    assert [(o["rule"], o["local_symbol"], o["status"], o["reason"]) for o in opened] == [
        ("roll", "NQH4", "filled", "roll NQZ3 -> NQH4")]
    _all_venue_fills_journaled_once(nq_sim, journal)


def test_a_roll_close_still_working_at_ib_is_adopted_and_no_leg_is_sent_while_it_works(nq_sim, connect, tmp_path,
                                                                                      expect_errors):
    expect_errors(162, 202)     # 202: the adopted close is cancelled when the run stops (--for)
    listed = _contracts(nq_sim, connect)
    (z, z_last), _ = listed["NQZ3"], listed["NQH4"]
    strategy = _strategy(tmp_path, nq_sim, z_last)
    journal = tmp_path / "j.sqlite"
    _earlier(journal, z)
    _roll_close_at_ib(nq_sim, journal, z, 99999.0)       # never fills
    out = qrun(nq_sim, strategy, journal, seconds=6)
    assert out.exit_code == 0, out.output
    assert ("adopted", PREFIX + "2") in {(n["kind"], n["subject"]) for n in rows(journal, "SELECT * FROM notes")}
    sent = [o for o in placed(nq_sim) if str(o.get("orderRef", "")).startswith(PREFIX)]
    assert sent == [], out.output        # neither the close again nor the open while the close works
    assert {p["conId"]: p["qty"] for p in nq_sim.record()["positions"]}.get(z) == 1


def test_a_dry_run_prints_the_rolls_two_orders_and_sends_neither(nq_sim, connect, tmp_path):
    listed = _contracts(nq_sim, connect)
    (z, z_last), _ = listed["NQZ3"], listed["NQH4"]
    strategy = _strategy(tmp_path, nq_sim, z_last)
    journal = tmp_path / "j.sqlite"
    _earlier(journal, z)
    nq_sim.set_position(z, 1, 15800.0)
    out = qrun(nq_sim, strategy, journal, "--dry-run", seconds=6)
    assert out.exit_code == 0, out.output
    assert not [o for o in placed(nq_sim) if str(o.get("orderRef", "")).startswith(PREFIX)]    # nothing sent
    printed = [line for line in out.output.splitlines() if "[roll]" in line]
    assert len(printed) == 2 and "SELL 1 NQ (NQZ3) MKT" in printed[0] and "BUY 1 NQ (NQH4) MKT" in printed[1], \
        out.output
    orders = rows(journal, "SELECT * FROM orders WHERE run_id != 'earlier' ORDER BY id")
    assert [(o["rule"], o["intent"], o["action"], o["status"]) for o in orders] == [
        ("roll", "close", "sell", "filled"), ("roll", "open", "buy", "filled")]     # in the dry run's wallet
    assert {p["conId"]: p["qty"] for p in nq_sim.record()["positions"]}.get(z) == 1   # IB still holds NQZ3
