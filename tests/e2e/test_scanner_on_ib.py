"""Issue 12 item 3 (paper part) and item 4 (IB part): a scanner strategy on IB, end to end: the
real ib_async client over a real socket against the gateway simulator. The universe's names get
history and bar streams, the scan runs live at each rescan time once every name's bar of that
period has come, its rows extend what `scan.*` reads, and the run gives the same scan ranks,
picks and orders as `run --broker sim` over the same bars; picks take the line priorities."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gateway.conftest import connect, error_guard, expect_errors, make_sim, run_ib_on, shared_data  # noqa: F401

NAMES = ["SCANA", "SCANB", "SCANC", "SCAND", "SCANE"]

STRATEGY = """\
kind: strategy
name: live-scan
description: Trades the top two of five names by a two-factor scan rescanned every 3 minutes.
universe: [{symbols}]
scanner:
  factors:
    momentum: {{expr: "roc(close, 5)", weight: 0.7}}
    activity: {{expr: "sma(volume, 5)", weight: 0.3}}
  top: 2
  rescan: 3m
  grades: {{A: 60, B: 30}}
data:
  bar: 1m
  history: 40 bars
  session: extended
  subscriptions: {{max_lines: {lines}, reserve_for_positions: 1, ttl: 1h}}
indicators:
  rising: close > sma(close, 3)
entry:
  - name: rising pick
    when: rising
    order: one
exit:
  - name: dropped
    when: not scan.picked
  - name: falling
    when: close < sma(close, 3)
orders:
  one: {{action: buy, type: market, quantity: 1, tif: day}}
schedule: {{timezone: America/New_York}}
risk: {{max_open_positions: 2, margin_check: off, kill_switch_file: null}}
"""


def _data(tmp_path: Path) -> Path:
    """Five minute series for the simulator: the real NQ bars, each name's rows moved on by its
    own number of minutes and its volume scaled, so that the scan ranks them differently over
    time (written under tmp_path, never into the repository)."""
    src = pd.read_csv(shared_data("firstratedata_nq_sample", "NQ_1min_sample.csv"))
    folder = tmp_path / "data"
    folder.mkdir()
    for i, name in enumerate(NAMES):
        shifted = src[["open", "high", "low", "close", "volume"]].shift(-7 * i)
        shifted["volume"] = shifted["volume"] * (1 + 0.25 * i)
        out = pd.concat([src[["timestamp"]], shifted], axis=1).dropna()
        out.to_csv(folder / f"{name}.csv", index=False)
    return folder


_run_ib = run_ib_on


def _same(a, b) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and bool(np.all((np.isnan(a) & np.isnan(b)) | np.isclose(a, b, rtol=1e-9, atol=1e-9)))


@pytest.fixture
def scan_setup(make_sim, tmp_path):
    folder = _data(tmp_path)
    sim = make_sim(folder, speed=120)
    strategy = tmp_path / "scan.yaml"
    strategy.write_text(STRATEGY.format(symbols=", ".join(NAMES), lines=10))
    return sim, strategy, folder


def test_a_scanner_strategy_on_ib_scans_live_and_agrees_with_the_simulator_over_the_same_bars(scan_setup, tmp_path):
    from engine.runtime import backtest as bt
    from engine.runtime import session

    sim, strategy, folder = scan_setup
    journal = tmp_path / "j.sqlite"
    outcome, said = _run_ib(sim, strategy, journal, seconds=14)
    scan = outcome.result.prepared.scan.result
    figures = outcome.figures
    assert figures["scans"] >= 4, (figures, said)              # live scans at the 3-minute rescans
    assert figures["scan_late_names"] == 0
    live_times = scan.times[-figures["scans"]:]
    assert np.all(np.diff(live_times) >= 3 * 60 * 10**9)
    # the journal says each scan: its picks, counts and time
    con = sqlite3.connect(journal)
    notes = con.execute("SELECT ts, message FROM notes WHERE kind = 'scan' ORDER BY id").fetchall()
    con.close()
    assert len(notes) == figures["scans"]
    assert all("picks: " in m and "scanned in " in m for _, m in notes), notes
    # the same bars for the simulator: each name's file cut to what the IB run saw (its warm-up
    # history and the bars that completed while it ran)
    first = min(int(e[0]) for e in scan.ends.values()) - 60 * 10**9
    last = max(int(e[-1]) for e in scan.ends.values())
    cut = tmp_path / "cut"
    cut.mkdir()
    for name in NAMES:
        frame = pd.read_csv(folder / f"{name}.csv")
        ts = pd.to_datetime(frame["timestamp"]).dt.tz_localize("America/New_York")
        keep = (ts.map(lambda t: t.value) >= first) & (ts.map(lambda t: t.value) + 60 * 10**9 <= last)
        frame[keep].to_csv(cut / f"{name}.csv", index=False)
    prep = bt.prepare(strategy, data=cut)
    warm_end = int(outcome.result.prepared.start.value)     # the first bar the IB run traded
    prep.start = pd.Timestamp(warm_end, tz="UTC").tz_convert(prep.timezone)
    simulated = session.simulate(prep, streaming=True, run_id="sim")
    sim_scan = prep.scan.result
    # the same scan times, ranks, scores and picks at every live scan
    for t in live_times:
        e_ib, e_sim = scan.at(int(t)), sim_scan.at(int(t))
        assert int(sim_scan.times[e_sim]) == int(t)
        assert _same(scan.rank[e_ib], sim_scan.rank[e_sim]) and _same(scan.score[e_ib], sim_scan.score[e_sim])
        assert (scan.picked[e_ib] == sim_scan.picked[e_sim]).all()
        assert list(scan.klass[e_ib]) == list(sim_scan.klass[e_sim])
        assert list(scan.grade[e_ib]) == list(sim_scan.grade[e_sim])
    # the same orders: symbol, side, quantity, the rule and the bar they were decided at
    end = int(live_times[-1])

    def orders(kernel):
        """Each order with the close of the bar it was decided at (live, the venue's clock has
        moved on a little by the time the kernel sends it)."""
        out = []
        for o in kernel.orders:
            ends = kernel.syms[o.intent.symbol].bars.end
            close = int(ends[np.searchsorted(ends, o.time, side="right") - 1])
            if close <= end:
                out.append((o.intent.symbol, o.intent.action, o.intent.quantity, o.intent.rule, close))
        return out

    ib_orders = orders(outcome.kernel)
    sim_orders = orders(simulated.runner)
    assert ib_orders, said
    assert ib_orders == sim_orders
    assert {o[3] for o in ib_orders} >= {"rising pick", "dropped"}     # a pick left the top 2: its exit closed it
    # the picks of the last scan hold their lines as top signals (or as positions); no other
    # name holds a top signal's line
    from engine.brokers.ib.marketdata import Priority

    lines = outcome.result.broker.budget.held()
    e = len(scan.times) - 1
    for s, symbol in enumerate(scan.symbols):
        if scan.picked[e, s]:
            assert lines.get(symbol) in (Priority.TOP_PICK, Priority.POSITION), (symbol, lines)
        else:
            assert lines.get(symbol) != Priority.TOP_PICK, (symbol, lines)
    assert figures["scan_lines_max"] <= 10
    # an entry went for picks only
    for symbol, action, _, rule, t in ib_orders:
        if rule == "rising pick":
            e = scan.at(t)
            assert scan.picked[e, scan.symbols.index(symbol)]
