"""Issue 12 item 4, the last part: a scanner strategy whose candidates come from IB's market
scanner, end to end: the real ib_async client over a real socket against the gateway simulator,
which ranks its replayed stocks by their % change (so its list changes as the bars move). IB is
asked at the start and at every rescan; the names it lists inside the universe are the
candidates (a new one gets its history and a bar stream, and is traded from its next bar), the
rest of the universe is scored no data for that scan, a name out of the list past the TTL with no
position loses its bar stream and line, the picks are traded, and every request is journaled."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gateway.conftest import connect, error_guard, expect_errors, make_sim, run_ib_on, shared_data  # noqa: F401

NAMES = ["SCANA", "SCANB", "SCANC", "SCAND", "SCANE"]
UNIVERSE = ["SCANA", "SCANC", "SCAND", "SCANE"]        # SCANB, which IB always lists, is outside

STRATEGY = """\
kind: strategy
name: ib-sourced
description: Trades the top name among IB's two biggest losers that the universe holds, rescanned every 3 minutes.
universe: [{symbols}]
scanner:
  source:
    ib_scanner: {{scan_code: TOP_PERC_LOSE, location: STK.US.MAJOR, rows: 2, filters: {{price_above: 1}}}}
  factors:
    momentum: {{expr: "roc(close, 5)", weight: 0.7}}
    activity: {{expr: "sma(volume, 5)", weight: 0.3}}
  top: 1
  rescan: 3m
data:
  bar: 1m
  history: 40 bars
  session: extended
  subscriptions: {{max_lines: 10, reserve_for_positions: 1, ttl: 2m}}
indicators:
  rising: close > sma(close, 3)
entry:
  - name: rising pick
    when: rising
    order: one
exit:
  - name: dropped
    when: not scan.picked
orders:
  one: {{action: buy, type: market, quantity: 1, tif: day}}
schedule: {{timezone: America/New_York}}
risk: {{max_open_positions: 2, margin_check: off, kill_switch_file: null}}
"""


def _data(tmp_path: Path) -> Path:
    """Five minute series for the simulator: the real NQ bars, each name's rows moved on by 97
    minutes more than the one before and its volume scaled, so that the names' % changes cross
    as the day goes on (written under tmp_path, never into the repository)."""
    src = pd.read_csv(shared_data("firstratedata_nq_sample", "NQ_1min_sample.csv"))
    folder = tmp_path / "data"
    folder.mkdir()
    for i, name in enumerate(NAMES):
        shifted = src[["open", "high", "low", "close", "volume"]].shift(-97 * i)
        shifted["volume"] = shifted["volume"] * (1 + 0.25 * i)
        pd.concat([src[["timestamp"]], shifted], axis=1).dropna().to_csv(folder / f"{name}.csv", index=False)
    return folder


_run_ib = run_ib_on


@pytest.fixture
def sourced(make_sim, tmp_path, expect_errors):
    expect_errors("API scanner subscription cancelled")       # IB's answer to each cancel: not a failure
    sim = make_sim(_data(tmp_path), speed=120)
    strategy = tmp_path / "s.yaml"
    strategy.write_text(STRATEGY.format(symbols=", ".join(UNIVERSE)))
    return sim, strategy


def test_candidates_come_from_ibs_scanner_at_every_rescan_and_are_traded(sourced, tmp_path):
    from engine.brokers.ib.marketdata import Priority
    from engine.scanner.result import NO_DATA

    sim, strategy = sourced
    journal = tmp_path / "j.sqlite"
    outcome, said = _run_ib(sim, strategy, journal, seconds=16)
    figures = outcome.figures
    counts = figures["ib_candidates_per_scan"]
    # IB asked at the start and before each live scan (the stop may come between a request and
    # its scan, which waits for its names' bars); SCANB (always listed) is outside the universe
    assert figures["scans"] + 1 <= len(counts) <= figures["scans"] + 2, (figures, said)
    assert figures["scans"] >= 4
    assert all(n == 1 for n in counts), counts
    assert figures["ib_candidate_changes"] >= 2, figures
    assert figures["ib_scanner_requests"] == len(counts)
    assert 0 < figures["ib_scanner_ms_median"] < 500
    con = sqlite3.connect(journal)
    notes = con.execute("SELECT kind, subject, message FROM notes WHERE kind IN "
                        "('ib_scanner', 'candidate', 'released', 'scan') ORDER BY id").fetchall()
    held_at_end = {s for s, in con.execute("SELECT symbol FROM trades WHERE exit_ts IS NULL")}
    orders = con.execute("SELECT ts, symbol, rule, status FROM orders ORDER BY id").fetchall()
    con.close()
    requests = [m for k, _, m in notes if k == "ib_scanner"]
    assert len(requests) == len(counts)
    assert all(m.startswith("IB's TOP_PERC_LOSE scanner (STK STK.US.MAJOR, 2 rows, priceAbove 1): 2 rows, "
                            "1 candidates: ") and "SCANB (not in the universe of scanner ib-sourced)" in m
               and " ms" in m for m in requests), requests
    assert any("; new: " in m for m in requests) and any("; out of the list: " in m for m in requests)
    # a new candidate got its history and a bar stream mid-run; one out of the list lost them
    admitted = [s for k, s, _ in notes if k == "candidate"]
    released = [s for k, s, _ in notes if k == "released"]
    assert admitted and released, notes
    assert figures["ib_candidates_admitted"] == len(admitted)
    broker = outcome.result.broker
    streams_at_sim = {h["inst"].symbol for sess in sim.sessions for h in sess.hist_live.values()}
    for symbol in set(released):
        last_release = max(i for i, (k, s, _) in enumerate(notes) if k == "released" and s == symbol)
        back = any(k == "candidate" and s == symbol for k, s, _ in notes[last_release:])
        if not back:
            assert symbol not in broker.streaming() and symbol not in broker.budget.held()
            assert symbol not in streams_at_sim or not sim.sessions
    # the scans: the candidate of each request is the one scanned; the rest of the universe is
    # scored no data with the reason
    scan = outcome.result.prepared.scan.result
    live_rows = range(len(scan.times) - figures["scans"], len(scan.times))
    scanned_names = []
    for e in live_rows:
        scored = [sym for s, sym in enumerate(scan.symbols) if scan.status[e, s] != NO_DATA]
        assert len(scored) <= 1, (e, scored)
        scanned_names.append(tuple(scored))
        for s, sym in enumerate(scan.symbols):
            if sym not in scored:
                assert scan.reason(e, s).startswith("not among the candidates of IB's TOP_PERC_LOSE scanner") or \
                    scan.reason(e, s).startswith("no data"), scan.reason(e, s)
    assert len(set(scanned_names)) >= 2, scanned_names        # the candidates changed between rescans
    # the picks were traded: entries on a pick of the scan their bar read, exits when it left
    entries = [o for o in orders if o[2] == "rising pick"]
    assert entries, (orders, said)
    for ts, symbol, _, _ in entries:
        e = scan.at(int(pd.Timestamp(ts).value))
        assert e >= 0 and scan.picked[e, scan.symbols.index(symbol)], (ts, symbol)
    assert {o[1] for o in entries} & set(admitted) or len({o[1] for o in entries}) >= 2
    # a position's symbol stays managed: held names keep their line at the positions' priority
    lines = broker.budget.held()
    for symbol in held_at_end:
        assert lines.get(symbol) == Priority.POSITION and symbol in broker.streaming()
    assert np.all(np.diff(scan.times[list(live_rows)]) >= 3 * 60 * 10**9)


def test_a_dry_run_on_ib_asks_ibs_scanner_too_and_transmits_nothing(sourced, tmp_path):
    """--dry-run --broker ib: the read-only connection asks IB's scanner as a paper run does
    (the scanner is market data), the candidates come and go the same way, and no order reaches
    the simulator."""
    sim, strategy = sourced
    journal = tmp_path / "j.sqlite"
    outcome, said = _run_ib(sim, strategy, journal, seconds=10, dry_run=True)
    figures = outcome.figures
    assert figures["ib_scanner_requests"] >= 3 and figures["ib_candidate_changes"] >= 1, (figures, said)
    con = sqlite3.connect(journal)
    kinds = {k for k, in con.execute("SELECT kind FROM notes")}
    entries = con.execute("SELECT symbol FROM orders WHERE rule = 'rising pick'").fetchall()
    con.close()
    assert {"ib_scanner", "candidate"} <= kinds
    assert entries, said          # the picks' would-be orders, journaled, filled in the wallet
    assert not [m for m in sim.record().get("orders", []) if not m.get("whatIf")]
