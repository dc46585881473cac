"""The journal of a paper or live run, written as it happens: each order journaled before the
venue sees it, fills by execution id (a fill reported twice is kept once), commissions as they
arrive, stable order refs that a restart continues, decisions with the values they compared,
and an older journal brought up to the schema in place."""

from __future__ import annotations

import sqlite3

import pytest
from click.testing import CliRunner

import cli
from engine.brokers import events as E
from engine.brokers.sim import SimBroker
from engine.runtime import backtest as bt
from engine.runtime import session
from engine.runtime.journal import Journal
from engine.runtime.recorder import Recorder
from venues import venue

SMA = "strategies/sma_crossover.yaml"


def _run(journal_path, venue_class=SimBroker, days=300):
    prep = bt.last_days(bt.prepare(SMA), days)
    with venue(venue_class), Journal(journal_path) as journal:
        bt.start_run(prep, journal, "paper", "r1", 100_000.0)
        prefix = f"qtrade:{prep.plan.name}:"
        result = session.simulate(prep, run_id="r1", recorder=Recorder(journal, "r1"),
                                  tags=(prefix, journal.last_order_seq(prefix)))
        bt.write_journal(result, journal, "paper", incremental=True)
    return result


def test_every_order_is_journaled_before_the_venue_sees_it(tmp_path):
    path = tmp_path / "j.sqlite"
    seen = []

    class Watching(SimBroker):
        def place(self, order):
            row = sqlite3.connect(path).execute("SELECT status, quantity FROM orders WHERE order_ref = ?",
                                                (order.ref,)).fetchone()
            seen.append((order.ref, row))
            return super().place(order)

    result = _run(path, Watching)
    assert len(seen) == len(result.broker.placed) >= 4
    for ref, row in seen:
        assert row is not None, f"{ref} reached the venue before the journal"
        assert row[0] == "created" and row[1] > 0
    con = sqlite3.connect(path)
    fills = con.execute("SELECT order_ref, exec_id, broker_order_id FROM fills").fetchall()
    assert len(fills) == len(result.ledger.fills) and all(e and b for _, e, b in fills)
    statuses = dict(con.execute("SELECT order_ref, status FROM orders"))
    assert set(statuses.values()) == {"filled"}
    trades = con.execute("SELECT count(*) FROM trades").fetchone()[0]
    assert trades == len(result.ledger.trades)
    detail = con.execute("SELECT detail FROM decisions WHERE kind = 'entry' AND outcome = 'fired'").fetchone()[0]
    # the crossing's values: above now, not above the bar before
    import re

    m = re.fullmatch(r"crosses_above\(sma\(close, 10\), sma\(close, 30\)\): yes \(([\d.]+) vs ([\d.]+); "
                     r"the bar before ([\d.]+) vs ([\d.]+)\)", detail)
    assert m, detail
    fast, slow, fast_before, slow_before = map(float, m.groups())
    assert fast > slow and fast_before <= slow_before


def test_a_restart_continues_the_order_refs_and_never_repeats_one(tmp_path):
    path = tmp_path / "j.sqlite"
    runner = CliRunner()
    for _ in range(2):
        out = runner.invoke(cli.main, ["run", SMA, "--broker", "sim", "--days", "300", "--journal", str(path)])
        assert out.exit_code == 0, out.output
    refs = [r[0] for r in sqlite3.connect(path).execute("SELECT order_ref FROM orders ORDER BY id")]
    seqs = [int(r.rsplit(":", 1)[1]) for r in refs]
    assert all(r.startswith("qtrade:sma-crossover:") for r in refs)
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) % 2 == 0


class _Twice(SimBroker):
    """A venue that reports every execution (and its commission) twice, as a reconnect can."""

    def events(self):
        out = []
        for ev in super().events():
            out.append(ev)
            if isinstance(ev, (E.Execution, E.CommissionReport)):
                out.append(ev)
        return out


def test_a_fill_reported_twice_is_journaled_and_booked_once(tmp_path):
    path = tmp_path / "j.sqlite"
    once = _run(tmp_path / "once.sqlite")
    twice = _run(path, _Twice)
    assert [f.quantity for f in twice.ledger.fills] == [f.quantity for f in once.ledger.fills]
    assert twice.ledger.cash == pytest.approx(once.ledger.cash)
    rows = sqlite3.connect(path).execute("SELECT count(*), count(DISTINCT exec_id) FROM fills").fetchone()
    assert rows[0] == rows[1] == len(once.ledger.fills)


def test_a_journal_of_the_first_schema_is_brought_up_to_date_in_place(tmp_path):
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, mode TEXT NOT NULL, strategy TEXT NOT NULL,
            strategy_path TEXT, strategy_text TEXT, params TEXT NOT NULL DEFAULT '{}',
            settings TEXT NOT NULL DEFAULT '{}', symbols TEXT NOT NULL DEFAULT '[]', bar TEXT,
            currency TEXT NOT NULL DEFAULT 'USD', initial_cash REAL, started_at TEXT NOT NULL,
            finished_at TEXT, status TEXT NOT NULL DEFAULT 'running', summary TEXT);
        CREATE TABLE decisions (id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, ts TEXT NOT NULL,
            symbol TEXT NOT NULL, rule TEXT NOT NULL, kind TEXT NOT NULL, outcome TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '');
        CREATE TABLE fills (id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, order_ref TEXT NOT NULL,
            ts TEXT NOT NULL, symbol TEXT NOT NULL, action TEXT NOT NULL, quantity REAL NOT NULL,
            price REAL NOT NULL, multiplier REAL NOT NULL DEFAULT 1, commission REAL NOT NULL DEFAULT 0);
        INSERT INTO runs(run_id, mode, strategy, started_at) VALUES ('old', 'paper', 's', '2020-01-01');
        INSERT INTO fills(run_id, order_ref, ts, symbol, action, quantity, price) VALUES
            ('old', 'qtrade:s:1', '2020-01-01', 'SPY', 'buy', 1, 100);
    """)
    con.commit()
    con.close()
    with Journal(path) as journal:
        assert journal.fill("old", "qtrade:s:2", "2020-01-02", "SPY", "sell", 1, 101, exec_id="e.1")
        assert not journal.fill("old", "qtrade:s:2", "2020-01-02", "SPY", "sell", 1, 101, exec_id="e.1")
        journal.decision("old", "2020-01-02", "SPY", "x", "exit", "fired", "", "a = 1: 1 > 0 yes")
    con = sqlite3.connect(path)
    assert con.execute("SELECT count(*) FROM fills").fetchone()[0] == 2          # the old row is kept
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "4"
    assert con.execute("SELECT detail FROM decisions").fetchone()[0] == "a = 1: 1 > 0 yes"


def test_a_journal_of_the_second_schema_gains_the_venues_ids_and_the_exact_contract(tmp_path):
    path = tmp_path / "v2.sqlite"
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '2');
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, mode TEXT NOT NULL, strategy TEXT NOT NULL,
            strategy_path TEXT, strategy_text TEXT, params TEXT NOT NULL DEFAULT '{}',
            settings TEXT NOT NULL DEFAULT '{}', symbols TEXT NOT NULL DEFAULT '[]', bar TEXT,
            currency TEXT NOT NULL DEFAULT 'USD', initial_cash REAL, started_at TEXT NOT NULL,
            finished_at TEXT, status TEXT NOT NULL DEFAULT 'running', summary TEXT);
        CREATE TABLE orders (id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, order_ref TEXT NOT NULL UNIQUE,
            ts TEXT NOT NULL, symbol TEXT NOT NULL, action TEXT NOT NULL, quantity REAL NOT NULL,
            order_type TEXT NOT NULL, limit_price REAL, stop_price REAL, tif TEXT NOT NULL DEFAULT 'day',
            rule TEXT NOT NULL DEFAULT '', intent TEXT NOT NULL DEFAULT 'open', legs TEXT,
            status TEXT NOT NULL DEFAULT 'created', status_ts TEXT, reason TEXT NOT NULL DEFAULT '');
        CREATE TABLE fills (id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, order_ref TEXT NOT NULL,
            ts TEXT NOT NULL, symbol TEXT NOT NULL, action TEXT NOT NULL, quantity REAL NOT NULL,
            price REAL NOT NULL, multiplier REAL NOT NULL DEFAULT 1, commission REAL NOT NULL DEFAULT 0,
            exec_id TEXT UNIQUE, broker_order_id INTEGER);
        CREATE TABLE positions (run_id TEXT NOT NULL, ts TEXT NOT NULL, symbol TEXT NOT NULL,
            quantity REAL NOT NULL, avg_price REAL NOT NULL, market_price REAL);
        INSERT INTO runs(run_id, mode, strategy, started_at) VALUES ('old', 'paper', 's', '2020-01-01');
        INSERT INTO positions VALUES ('old', '2020-01-01', 'NQ', 1, 25066.25, 25070.0);
        INSERT INTO orders(run_id, order_ref, ts, symbol, action, quantity, order_type) VALUES
            ('old', 'qtrade:s:1', '2020-01-01', 'NQ', 'buy', 1, 'market');
        INSERT INTO fills(run_id, order_ref, ts, symbol, action, quantity, price, exec_id) VALUES
            ('old', 'qtrade:s:1', '2020-01-01', 'NQ', 'buy', 1, 25066.25, '0001.01');
    """)
    con.commit()
    con.close()
    with Journal(path) as journal:
        journal.order_ids("qtrade:s:1", broker_order_id=7, con_id=620730920, local_symbol="NQZ5")
        journal.order_ids("qtrade:s:1", perm_id=1234)           # learnt later: the others are kept
        assert journal.correct_fill("0001.01", "0001.02", 1, 25066.5, "2020-01-01T00:00:01")
        assert not journal.correct_fill("nope.01", "nope.02", 1, 1.0, "2020-01-01")
        journal.note("old", "2020-01-02", "adopted", "qtrade:s:1", "open at IB: adopted")
        order = journal._rows("SELECT * FROM orders")[0]
        fills = journal._rows("SELECT * FROM fills")
        notes = journal._rows("SELECT * FROM notes")
        positions = journal._rows("SELECT * FROM positions")
    assert [(p["symbol"], p["quantity"], p["owner"]) for p in positions] == [("NQ", 1, "")]    # kept, owner ''
    assert (order["broker_order_id"], order["perm_id"], order["con_id"], order["local_symbol"]) == \
        (7, 1234, 620730920, "NQZ5")
    assert [(f["exec_id"], f["price"]) for f in fills] == [("0001.02", 25066.5)]
    assert [(n["kind"], n["subject"]) for n in notes] == [("adopted", "qtrade:s:1")]


def test_every_runs_fills_are_kept_in_one_journal(tmp_path):
    """Execution ids are unique across runs (as IB's are), so a journal that holds many runs keeps
    each one's fills; a dry run and a paper run of the same days journal the same fills."""
    path = tmp_path / "j.sqlite"
    runner = CliRunner()
    for extra in ([], ["--dry-run"], []):
        out = runner.invoke(cli.main, ["run", SMA, "--broker", "sim", "--days", "400", "--journal", str(path), *extra])
        assert out.exit_code == 0, out.output
    con = sqlite3.connect(path)
    per_run = con.execute("SELECT r.run_id, r.mode, (SELECT count(*) FROM orders o WHERE o.run_id = r.run_id AND "
                          "o.status = 'filled'), (SELECT count(*) FROM fills f WHERE f.run_id = r.run_id) "
                          "FROM runs r ORDER BY r.started_at").fetchall()
    assert [mode for _, mode, _, _ in per_run] == ["paper", "dry-run", "paper"]
    assert len({(filled, fills) for _, _, filled, fills in per_run}) == 1
    assert all(filled == fills > 4 for _, _, filled, fills in per_run)


def test_run_refuses_bad_dates_and_cash_as_backtest_does(tmp_path):
    runner = CliRunner()
    journal = ["--journal", str(tmp_path / "j.sqlite")]
    cases = [(["--from", "2017-13-45"], "is not a date"), (["--from", "2017-06-01", "--to", "2017-01-01"], "is after --to"),
             (["--from", "1990-01-01", "--to", "1995-01-01"], "before the start of the data"),
             (["--from", "2030-01-01"], "after the end of the data"), (["--cash", "-5"], "--cash"),
             (["--from", "2017-01-01", "--days", "10"], "give one of them")]
    for args, message in cases:
        out = runner.invoke(cli.main, ["run", SMA, "--broker", "sim", *args, *journal])
        assert out.exit_code == 2, (args, out.output)
        assert message in out.output and "Traceback" not in out.output and "internal error" not in out.output


def test_a_run_that_stops_part_way_is_marked_so_in_the_journal(tmp_path, monkeypatch):
    """Ctrl-C (or a closed pipe) in the middle of a run: what was journaled stays, and the run is
    marked interrupted, not left 'running'."""
    path = tmp_path / "j.sqlite"
    calls = {"n": 0}
    real = session.Kernel._on_close

    def stop_after_a_while(self, st, k):
        calls["n"] += 1
        if calls["n"] == 200:
            raise KeyboardInterrupt
        return real(self, st, k)

    monkeypatch.setattr(session.Kernel, "_on_close", stop_after_a_while)
    CliRunner().invoke(cli.main, ["run", SMA, "--broker", "sim", "--days", "400", "--journal", str(path)])
    con = sqlite3.connect(path)
    assert con.execute("SELECT status FROM runs").fetchone()[0] == "interrupted"
    assert con.execute("SELECT count(*) FROM orders").fetchone()[0] >= 1     # kept: journaled as they happened
