"""Issue 12 item 3 (simulated modes): strategies that name a scanner. The rules read scan.rank,
scan.score, scan.class, scan.grade, scan.picked and the factors' scores as of each bar's close
(the latest rescan, no look-ahead); an entry goes for a pick only, and where one would go on a
symbol that is not a pick the scan's reason is journaled; a position whose symbol stops being a
pick is still managed by its exits; the class can choose the order template; the backtest,
`run --broker sim` and the dry run agree to the order; an IB run refuses a scan on other bars than the strategy's at
its line (tests/e2e/test_scanner_on_ib.py runs scanners on IB)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from cli import main

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "strategies" / "data"
EXAMPLE = ROOT / "strategies" / "composite_scanner.yaml"
NY = "America/New_York"


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def strategy(**changes) -> dict:
    doc = {"kind": "strategy", "name": "scanned", "universe": ["SPY", "AAPL"],
           "scanner": {"factors": {"energy": {"expr": "abs(roc(close, 5))", "weight": 0.6},
                                   "liquidity": {"expr": "log(close * sma(volume, 20))", "weight": 0.4}},
                       "top": 1, "grades": {"A": 70, "B": 30},
                       "classes": [{"class": "hot", "when": "energy > 0.5"}, {"class": "cold", "when": True}]},
           "data": {"bar": "1d", "source": str(DATA) + "/"},
           "indicators": {"up": "ema(close, 8) > ema(close, 21)"},
           "entry": [{"name": "up", "when": "up", "order": "buy"}],
           "exit": [{"name": "held ten bars", "when": "position.bars_held >= 10"}],
           "orders": {"buy": {"action": "buy", "type": "market", "quantity": 10}},
           "risk": {"max_open_positions": 2, "margin_check": "off"},
           "backtest": {"start": "2009-01-02", "end": "2012-12-31"}}
    doc.update(changes)
    return doc


def write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def backtest(path):
    from engine.runtime import backtest as bt

    prep = bt.prepare(path)
    return prep, bt.run(prep, run_id="t")


def record(result) -> dict:
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "golden"))
    import cases

    return cases.record(result)


def scan_at(prep, symbol: str, time: int) -> dict:
    """What the scan said of `symbol` at a bar closing at `time`."""
    r = prep.scan.result
    e = r.at(time)
    s = r.symbols.index(symbol)
    return {"picked": bool(r.picked[e, s]), "rank": r.rank[e, s], "class": str(r.klass[e, s]),
            "reason": r.reason(e, s)}


def test_the_example_backtest_run_and_dry_run_agree_to_the_order():
    from engine.runtime import backtest as bt
    from engine.runtime import session

    prep = bt.prepare(EXAMPLE)
    assert prep.symbols[:3] == ["SPY", "QQQ", "IWM"] and len(prep.symbols) == 67
    assert sorted(prep.frames) == ["AAPL", "INTC", "SPY"] and len(prep.missing) == 64
    vectorised = record(bt.run(prep, run_id="parity"))
    streamed = record(session.simulate(prep, streaming=True, run_id="parity"))
    dry = record(session.simulate(prep, dry_run=True, streaming=True, run_id="parity"))
    assert vectorised["trades"] and len(vectorised["trades"]) > 400
    assert vectorised == streamed == dry


def test_entries_go_for_picks_only_and_the_others_are_blocked_with_the_scans_reason(tmp_path):
    prep, result = backtest(write(tmp_path, strategy()))
    runner = result.runner
    entries = [d for d in runner.decisions if d.kind == "entry"]
    fired = [d for d in entries if d.outcome == "fired"]
    blocked = [d for d in entries if d.outcome == "blocked"]
    assert len(fired) > 20 and len(blocked) > 1
    for d in fired:
        assert scan_at(prep, d.symbol, d.time)["picked"], d
    for d in blocked:
        seen = scan_at(prep, d.symbol, d.time)
        assert not seen["picked"] and d.reason == seen["reason"], d
    assert {d.reason for d in blocked if d.reason.startswith("not in the top 1 (rank 2)")}
    # said once while it stays the same (apart from its figures): again only after a pick
    import re

    r = prep.scan.result
    last: dict = {}
    for d in blocked:
        before = last.get((d.symbol, d.rule))
        if before is not None and re.sub(r"\d", "", before.reason) == re.sub(r"\d", "", d.reason):
            s = r.symbols.index(d.symbol)
            between = (r.times > before.time) & (r.times <= d.time)
            assert r.picked[between, s].any(), (before, d)
        last[(d.symbol, d.rule)] = d
    # and the journal says why, grouped
    journal = tmp_path / "j.sqlite"
    out = cli("backtest", tmp_path / "s.yaml", "--journal", journal)
    assert out.exit_code == 0, out.output
    why = cli("why", journal).output
    assert "not in the top 1 (rank 2)" in why


def test_a_position_whose_symbol_stops_being_a_pick_is_managed_by_its_exits(tmp_path):
    prep, result = backtest(write(tmp_path, strategy()))
    b = result.bars
    dropped = 0
    for t in result.ledger.trades:
        bars = b[t.symbol]
        k0 = int(np.searchsorted(bars.end, t.entry_time, side="left"))
        k1 = int(np.searchsorted(bars.end, t.exit_time, side="left"))
        picks = [scan_at(prep, t.symbol, int(bars.end[k]))["picked"] for k in range(k0, min(k1, len(bars)))]
        assert t.exit_rule == "held ten bars"
        if not all(picks):
            dropped += 1
    assert dropped > 5     # held through scans that did not pick them, closed by their own exit


def test_a_pick_dropped_by_the_scan_is_closed_by_an_exit_that_reads_it(tmp_path):
    doc = strategy(exit=[{"name": "dropped", "when": "not scan.picked", "reason": "no longer a pick"}])
    prep, result = backtest(write(tmp_path, doc))
    exits = [d for d in result.runner.decisions if d.kind == "exit" and d.outcome == "fired"]
    assert len(exits) > 5 and {t.exit_rule for t in result.ledger.trades} == {"dropped"}
    for d in exits:       # decided at a bar's close
        assert not scan_at(prep, d.symbol, d.time)["picked"], d


def test_the_rules_read_every_scan_field(tmp_path):
    """scan.rank, score, grade, class, picked and a factor's score are the scan's, bar by bar."""
    doc = strategy(entry=[{"name": "all of it", "order": "buy",
                           "when": 'scan.rank == 1 and scan.score >= 60 and scan.grade == "B" and '
                                   'scan.class == "hot" and scan.energy > 0.5 and scan.picked'}])
    prep, result = backtest(write(tmp_path, doc))
    fired = [d for d in result.runner.decisions if d.kind == "entry" and d.outcome == "fired"]
    assert fired
    r = prep.scan.result
    for d in fired:
        e, s = r.at(d.time), r.symbols.index(d.symbol)
        assert r.rank[e, s] == 1 and 60 <= r.score[e, s] < 70 and r.grade[e, s] == "B" and r.klass[e, s] == "hot"
        assert r.norm["energy"][e, s] > 0.5


def test_the_class_chooses_the_order_template(tmp_path):
    """Stock orders by class: hot names bought, cold names sold short."""
    doc = strategy(entry=[{"name": "hot long", "when": 'scan.class == "hot"', "order": "buy"},
                          {"name": "cold short", "when": 'scan.class == "cold"', "order": "sell"}],
                   orders={"buy": {"action": "buy", "type": "market", "quantity": 10},
                           "sell": {"action": "sell", "type": "market", "quantity": 10}})
    doc["scanner"]["top"] = 2
    prep, result = backtest(write(tmp_path, doc))
    sides = {"hot long": "long", "cold short": "short"}
    assert {t.entry_rule for t in result.ledger.trades} == set(sides)
    for t in result.ledger.trades:
        assert t.side == sides[t.entry_rule]
    for d in result.runner.decisions:
        if d.kind == "entry" and d.outcome == "fired":
            assert scan_at(prep, d.symbol, d.time)["class"] == ("hot" if d.rule == "hot long" else "cold"), d


def test_the_class_chooses_the_option_combo(tmp_path):
    """As the composite system did: range-bound names an iron condor, volatility names a long
    straddle (a strategy whose entries are all combos; chains synthesised from VIX)."""
    legs = {"short_put": {"right": "put", "action": "sell", "strike": {"delta": 0.2}},
            "long_put": {"right": "put", "action": "buy", "strike": "short_put.strike - 2"},
            "short_call": {"right": "call", "action": "sell", "strike": {"delta": 0.2}},
            "long_call": {"right": "call", "action": "buy", "strike": "short_call.strike + 2"}}
    doc = strategy(
        scanner={"factors": {"energy": {"expr": "abs(roc(close, 5))", "weight": 0.5},
                             "volatility": {"expr": "atr(14) / close", "weight": 0.5}}, "top": 2,
                 "classes": [{"class": "range_bound", "when": "energy < 0.5"},
                             {"class": "volatility", "when": "volatility > 0.5"}]},
        orders={"condor": {"expiry": {"dte": [20, 40]}, "legs": legs, "price": "market"},
                "straddle": {"expiry": {"dte": [20, 40]}, "price": "market",
                             "legs": {"call": {"right": "call", "action": "buy", "strike": {"delta": 0.5}},
                                      "put": {"right": "put", "action": "buy", "strike": {"delta": 0.5}}}}},
        entry=[{"name": "range-bound condor", "when": 'scan.class == "range_bound"', "order": "condor"},
               {"name": "volatility straddle", "when": 'scan.class == "volatility"', "order": "straddle"}],
        backtest={"start": "2012-01-01", "end": "2012-12-31", "options": {"american_as_european": True}})
    del doc["indicators"]
    prep, result = backtest(write(tmp_path, doc))
    assert {t.entry_rule for t in result.ledger.trades} == {"range-bound condor", "volatility straddle"}
    classes = {"range-bound condor": "range_bound", "volatility straddle": "volatility"}
    for d in result.runner.decisions:
        if d.kind == "entry" and d.outcome == "fired":
            assert scan_at(prep, d.symbol, d.time)["class"] == classes[d.rule], d
    opened = [o for o in result.runner.orders if o.intent.intent == "open" and o.status == "filled"]
    assert opened
    for o in opened:
        names = {leg["name"] for leg in o.legs}
        assert names == ({"call", "put"} if o.intent.rule == "volatility straddle" else set(legs)), o


def test_a_scanner_on_coarser_bars_is_read_as_of_each_bar(tmp_path):
    """A weekly scan read by a daily strategy: each day sees the latest week closed by then."""
    doc = strategy()
    doc["scanner"]["data"] = {"bar": "1w"}
    prep, result = backtest(write(tmp_path, doc))
    r = prep.scan.result
    assert r.bar_seconds == 7 * 86400
    from engine.runtime.prepare import _symbol_bars

    sbars, bars = _symbol_bars(prep, "SPY")
    e = np.searchsorted(r.times, sbars.end, side="right") - 1
    s = r.symbols.index("SPY")
    ok = e >= 0
    assert (r.times[e[ok]] <= sbars.end[ok]).all()
    np.testing.assert_array_equal(bars.scan["picked"][ok], r.picked[e[ok], s])
    weeks = len(np.unique(e[ok]))
    assert 150 < weeks < len(sbars) / 4


def test_no_universe_trades_the_scanners(tmp_path):
    doc = strategy(scanner="c.yaml")
    del doc["universe"]
    scanner = {"kind": "scanner", "name": "c", "universe": ["AAPL"], **strategy()["scanner"]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(scanner, sort_keys=False))
    prep, result = backtest(write(tmp_path, doc))
    assert prep.symbols == ["AAPL"] and {t.symbol for t in result.ledger.trades} == {"AAPL"}


def test_the_fast_path_leaves_a_scanner_to_the_kernel(tmp_path):
    from engine.runtime import backtest as bt

    doc = strategy(universe=["SPY"], exit=[{"name": "down", "when": "not up"}])
    prep = bt.prepare(write(tmp_path, doc))
    with pytest.raises(ValueError, match="a scanner"):
        bt.run(prep, fast=True)


def test_the_example_dry_run_prints_its_orders_with_the_scan(tmp_path):
    result = cli("run", EXAMPLE, "--dry-run", "--journal", tmp_path / "j.sqlite")
    assert result.exit_code == 0, result.output
    assert "scan.picked: yes" in result.output and "scan.class = directional" in result.output
    # the entry's pick gate and a rule's own `and scan.picked` are one condition, said once
    copy = EXAMPLE.with_name(".picked-twice.yaml")      # beside the example: its paths resolve
    copy.write_text(EXAMPLE.read_text().replace('when: scan.class == "directional" and up',
                                                'when: scan.class == "directional" and up and scan.picked'))
    try:
        twice = cli("run", copy, "--dry-run", "--journal", tmp_path / "t.sqlite")
    finally:
        copy.unlink()
    whys = [line for line in twice.output.splitlines() if "why: rule 'directional long'" in line]
    assert whys and all(line.count("scan.picked: yes") == 1 for line in whys), twice.output
    assert "64 of the universe's 67 symbols have no bars in strategies/data" in result.output
    assert "SPY, AAPL, INTC (3 of the universe's 67 with bars)" in result.output


def test_an_ib_run_refuses_a_scan_on_other_bars_at_its_line_before_connecting(tmp_path):
    """An IB run streams one bar size per name: a scanner on weekly bars under a daily strategy
    is refused at its data.bar (nothing listens on port 1: the refusal comes first)."""
    doc = strategy()
    doc["scanner"]["data"] = {"bar": "1w"}
    path = write(tmp_path, doc)
    result = cli("run", path, "--broker", "ib", "--port", "1", "--journal", tmp_path / "j.sqlite")
    assert result.exit_code == 1, result.output
    line = next(i for i, t in enumerate(path.read_text().splitlines(), start=1) if t.strip().startswith("bar: 1w"))
    assert f"s.yaml:{line}:" in result.output
    assert "a scan on 1w bars under a strategy on 1d bars is not supported in runs on IB" in result.output
    assert "connect" not in result.output.lower().split("error:")[0]


def test_explain_shows_the_scan_inputs_and_the_pick_gate():
    result = cli("explain", EXAMPLE, "--format", "json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["inputs"]["scan"] == ["class", "picked"]
    whens = [plan["nodes"][r["when"]]["expr"] for r in plan["rules"] if r["kind"] == "entry"]
    assert all(w.endswith("and scan.picked") for w in whens), whens


def test_validate_warns_of_traded_symbols_the_scanner_does_not_rank(tmp_path):
    doc = strategy(universe=["SPY", "AAPL", "QQQ"])
    doc["scanner"]["universe"] = ["SPY"]
    result = cli("validate", write(tmp_path, doc))
    assert result.exit_code == 0
    assert "s.yaml:3:1: warning: the scanner does not rank AAPL, QQQ: their entries never go" in result.output
    doc["scanner"]["universe"] = ["SPY", "AAPL", "QQQ", "IWM"]
    assert "does not rank" not in cli("validate", write(tmp_path, doc)).output
