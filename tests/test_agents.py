"""Issue 13: agents that behave as written. Each agent owns the positions it opened (its exits,
stops and targets see only those; the ledger and the journal carry the owner), one position per
symbol across agents, arbitration by the documented policy with every proposal journaled, and
the regime-aware risk limits, each block journaled with its reason."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from engine.runtime import backtest as bt
from engine.runtime import session

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "strategies" / "data"

AGENTS = """\
kind: strategy
name: agents
universe: [SPY, AAPL]
data: {{bar: 1d, source: {data}/}}
indicators:
  fast: sma(close, 10)
  slow: sma(close, 30)
  r: rsi(close, 14)
classify:
  trend:
    - {{name: up, when: fast > slow}}
    - {{name: down, when: true}}
agents:
  follower:
    active: trend == "up"
    score: 1
    entry: [{{name: dip, when: r < 45, order: buy}}]
    exit: [{{name: rebound, when: r > 60}}]
  contrarian:
    active: "true"
    score: 0.5
    entry: [{{name: deep dip, when: r < 45, order: buy}}]
    exit: [{{name: bounce, when: r > 50}}]
{extra}
orders:
  buy: {{action: buy, type: market, quantity: {{percent_of_equity: 40%}}}}
risk: {{max_open_positions: 2, margin_check: "off"{risk}}}
"""


def write(tmp_path: Path, extra: str = "", risk: str = "", text: str | None = None, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text if text is not None else AGENTS.format(data=DATA, extra=extra, risk=risk))
    return path


def backtest_journal(tmp_path: Path, path: Path, *args: str) -> sqlite3.Connection:
    journal = tmp_path / "j.sqlite"
    result = CliRunner().invoke(main, ["backtest", str(path), "--journal", str(journal), *args])
    assert result.exit_code == 0, result.output
    db = sqlite3.connect(journal)
    db.row_factory = sqlite3.Row
    return db


# ---- item 1: agents own their positions -------------------------------------------------------

def test_each_trade_and_order_carries_its_owner_in_the_ledger_and_the_journal(tmp_path):
    path = write(tmp_path)
    prep = bt.prepare(path)
    result = bt.run(prep, run_id="t")
    agent_of = {r.name: r.agent for r in prep.plan.rules}
    trades = result.ledger.trades
    assert {t.owner for t in trades} == {"follower", "contrarian"}
    for t in trades:
        assert t.owner == agent_of[t.entry_rule]
        assert agent_of[t.exit_rule] == t.owner          # its own exits closed it, never the other's
        assert dict(t.entry_states)["trend"] in ("up", "down")
        if t.owner == "follower":
            assert dict(t.entry_states)["trend"] == "up"     # active only in an up trend
    db = backtest_journal(tmp_path, path)
    rows = db.execute("SELECT owner, entry_rule, exit_rule, entry_states FROM trades").fetchall()
    assert len(rows) == len(trades)
    for row in rows:
        assert row["owner"] == agent_of[row["entry_rule"]] == agent_of[row["exit_rule"]]
        assert set(json.loads(row["entry_states"])) == {"trend"}
    for row in db.execute("SELECT o.owner, o.rule, o.intent FROM orders o"):
        assert row["owner"] == agent_of[row["rule"]], dict(row)
    # the states journaled for the report's timeline: where each symbol's trend changes
    states = db.execute("SELECT symbol, name, label FROM states").fetchall()
    assert {(s["symbol"], s["name"]) for s in states} == {("SPY", "trend"), ("AAPL", "trend")}
    assert {s["label"] for s in states} == {"up", "down"}


def test_one_position_per_symbol_across_agents(tmp_path):
    """Both agents fire on the same dips: a symbol another agent holds is not entered again."""
    result = bt.run(bt.prepare(write(tmp_path)), run_id="t")
    for symbol in ("SPY", "AAPL"):
        spans = sorted((t.entry_time, t.exit_time) for t in result.ledger.trades if t.symbol == symbol)
        assert len(spans) > 10
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), symbol


def test_a_restart_gives_a_position_back_to_the_agent_that_opened_it():
    from engine.plan import nodes as N
    from engine.runtime.ibrun import JournalPosition, restored_owner

    class Kernel:
        plan = N.Plan([], {}, [N.Rule("entry", "dip", agent="follower"), N.Rule("entry", "plain")], N.Inputs())
        settings = type("S", (), {"strategy": "agents"})()

    pos = JournalPosition("SPY", 10, 100.0, 1.0, 0, "qtrade:agents:1", "dip")
    assert restored_owner(Kernel, pos) == "follower"            # an older journal: the rule's agent
    pos.owner = "contrarian"
    assert restored_owner(Kernel, pos) == "contrarian"          # as journaled with its entry order
    assert restored_owner(Kernel, JournalPosition("SPY", 10, 100.0, 1.0, 0, "r", "plain")) == "agents"


def test_a_journal_of_the_previous_schema_gets_the_owner_columns(tmp_path):
    from engine.runtime.journal import Journal

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, mode TEXT NOT NULL, strategy TEXT NOT NULL, started_at TEXT);
        CREATE TABLE orders (id INTEGER PRIMARY KEY, run_id TEXT, order_ref TEXT, ts TEXT, symbol TEXT, action TEXT,
                             quantity REAL, order_type TEXT, rule TEXT, status TEXT);
        CREATE TABLE trades (id INTEGER PRIMARY KEY, run_id TEXT, symbol TEXT, side TEXT, quantity REAL,
                             entry_ts TEXT, entry_price REAL, exit_ts TEXT, exit_price REAL, pnl REAL,
                             return_pct REAL, bars_held INTEGER);
        CREATE TABLE decisions (id INTEGER PRIMARY KEY, run_id TEXT, ts TEXT, symbol TEXT, rule TEXT, kind TEXT,
                                outcome TEXT, reason TEXT, detail TEXT NOT NULL DEFAULT '');
        CREATE TABLE fills (id INTEGER PRIMARY KEY, run_id TEXT, order_ref TEXT, ts TEXT, symbol TEXT, action TEXT,
                            quantity REAL, price REAL, exec_id TEXT, broker_order_id INTEGER);
        INSERT INTO orders (run_id, order_ref, ts, symbol, action, quantity, order_type, rule, status)
            VALUES ('r', 'qtrade:x:1', 't', 'SPY', 'buy', 1, 'market', 'dip', 'filled');
    """)
    db.close()
    Journal(path).close()
    db = sqlite3.connect(path)
    cols = {t: {r[1] for r in db.execute(f"PRAGMA table_info({t})")} for t in ("orders", "trades", "decisions")}
    assert "owner" in cols["orders"] and {"owner", "entry_states"} <= cols["trades"]
    assert {"agent", "confidence"} <= cols["decisions"]
    assert db.execute("SELECT owner FROM orders").fetchone() == ("",)
