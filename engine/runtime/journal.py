"""The journal: one SQLite file (WAL) per run history, written the same way by backtests, dry
runs, paper and live runs, and read by reports.

Every order is journaled (with its tag) before it is sent; fills, round-trip trades, decisions
(a rule that fired, or was blocked and why), equity and errors follow. Timestamps are ISO-8601
UTC strings. Money is stored as REAL in the account currency.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

SCHEMA_VERSION = 4

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    mode TEXT NOT NULL,                -- backtest | dry-run | paper | live
    strategy TEXT NOT NULL,            -- the strategy's name
    strategy_path TEXT,
    strategy_text TEXT,                -- the YAML as it was run
    params TEXT NOT NULL DEFAULT '{}', -- JSON: param values in force (after --set)
    settings TEXT NOT NULL DEFAULT '{}', -- JSON: cash, commission, slippage, fill model, data files
    symbols TEXT NOT NULL DEFAULT '[]',
    bar TEXT,
    currency TEXT NOT NULL DEFAULT 'USD',
    initial_cash REAL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL DEFAULT 'running',  -- running | finished | failed | interrupted
    summary TEXT                       -- JSON: the metrics at the end
);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    ts TEXT NOT NULL,
    symbol TEXT NOT NULL,
    rule TEXT NOT NULL,
    kind TEXT NOT NULL,                -- entry | exit
    outcome TEXT NOT NULL,             -- fired | blocked
    reason TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '',   -- the values the rule compared ("vix = 12.83: 12.83 < 25 yes; ...")
    agent TEXT NOT NULL DEFAULT '',    -- the agent whose rule it is ('' for the strategy's own rules)
    confidence REAL                    -- that agent's score when arbitration weighed its proposal
);
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    order_ref TEXT NOT NULL UNIQUE,    -- qtrade:<strategy>:<seq> (runs), qtrade:<run>:<seq> (backtests); IB's orderRef
    ts TEXT NOT NULL,
    symbol TEXT NOT NULL,
    action TEXT NOT NULL,              -- buy | sell
    quantity REAL NOT NULL,
    order_type TEXT NOT NULL,          -- market | limit | stop | stop_limit | moc | loc
    limit_price REAL,
    stop_price REAL,
    tif TEXT NOT NULL DEFAULT 'day',
    rule TEXT NOT NULL DEFAULT '',
    intent TEXT NOT NULL DEFAULT 'open',  -- open | close
    legs TEXT,                         -- JSON for combos
    status TEXT NOT NULL DEFAULT 'created', -- created | submitted | filled | cancelled | rejected | expired
    status_ts TEXT,
    reason TEXT NOT NULL DEFAULT '',
    broker_order_id INTEGER,           -- the venue's order id (IB's orderId, per client session)
    perm_id INTEGER,                   -- IB's permId: the order's id across sessions
    con_id INTEGER,                    -- the exact contract (IB's conId); NULL for simulated venues
    local_symbol TEXT,                 -- IB's localSymbol (NQZ5); a simulated venue's per-contract futures too
    owner TEXT NOT NULL DEFAULT ''     -- the agent (or the strategy) whose position it opens, closes or protects
);
CREATE TABLE IF NOT EXISTS fills (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    order_ref TEXT NOT NULL,
    ts TEXT NOT NULL,
    symbol TEXT NOT NULL,
    action TEXT NOT NULL,
    quantity REAL NOT NULL,
    price REAL NOT NULL,               -- per unit (not multiplied)
    multiplier REAL NOT NULL DEFAULT 1,
    commission REAL NOT NULL DEFAULT 0,
    exec_id TEXT UNIQUE,               -- the venue's execution id: a fill reported twice is kept once
    broker_order_id INTEGER,           -- the venue's order id (IB's orderId)
    con_id INTEGER,                    -- the exact contract (IB's conId)
    local_symbol TEXT
);
CREATE TABLE IF NOT EXISTS notes (             -- what a live run noticed: adoptions, phantoms, alerts
    id INTEGER PRIMARY KEY,
    run_id TEXT REFERENCES runs(run_id),
    ts TEXT NOT NULL,
    kind TEXT NOT NULL,                -- adopted | phantom | unknown | mismatch | never_sent | lost | missed_fill | overfill | alert | connection | kill_switch | status
    subject TEXT NOT NULL DEFAULT '',  -- the order ref or symbol it is about
    message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trades (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    symbol TEXT NOT NULL,
    side TEXT NOT NULL,                -- long | short
    quantity REAL NOT NULL,
    multiplier REAL NOT NULL DEFAULT 1,
    entry_ts TEXT NOT NULL,
    entry_price REAL NOT NULL,
    exit_ts TEXT NOT NULL,
    exit_price REAL NOT NULL,
    pnl REAL NOT NULL,                 -- net of commissions
    return_pct REAL NOT NULL,          -- pnl / entry value, in percent
    bars_held INTEGER NOT NULL,
    mae REAL,                          -- maximum adverse excursion, account currency (<= 0)
    mfe REAL,                          -- maximum favourable excursion, account currency (>= 0)
    commission REAL NOT NULL DEFAULT 0,
    entry_rule TEXT NOT NULL DEFAULT '',
    exit_rule TEXT NOT NULL DEFAULT '',
    exit_reason TEXT NOT NULL DEFAULT '',
    legs TEXT,                         -- JSON for option combos
    local_symbol TEXT,                 -- the futures contract the round trip was in (ESZ3) as IB names it
    owner TEXT NOT NULL DEFAULT '',    -- the agent that opened it or the strategy (its own rules)
    entry_states TEXT                  -- JSON: the classifications when its entry was decided {"regime": "trend"}
);
CREATE TABLE IF NOT EXISTS equity (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    ts TEXT NOT NULL,
    cash REAL NOT NULL,
    equity REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS prices (             -- bars for the report's price chart (may be thinned)
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    symbol TEXT NOT NULL,
    ts TEXT NOT NULL,
    open REAL, high REAL, low REAL, close REAL
);
CREATE TABLE IF NOT EXISTS states (             -- each classification's label per symbol, from the bar it changed
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    symbol TEXT NOT NULL,
    name TEXT NOT NULL,                -- the classification (classify: regime, volatility, ...)
    ts TEXT NOT NULL,                  -- the start of the first bar with this label
    label TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS positions (          -- snapshots (reconciliation, end of run)
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    ts TEXT NOT NULL,
    symbol TEXT NOT NULL,
    quantity REAL NOT NULL,
    avg_price REAL NOT NULL,
    market_price REAL,
    owner TEXT NOT NULL DEFAULT ''                 -- the strategy's, or the agent's that opened it
);
CREATE TABLE IF NOT EXISTS errors (
    id INTEGER PRIMARY KEY,
    run_id TEXT REFERENCES runs(run_id),
    ts TEXT NOT NULL,
    source TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_run ON decisions(run_id, ts);
CREATE INDEX IF NOT EXISTS orders_run ON orders(run_id, ts);
CREATE INDEX IF NOT EXISTS fills_run ON fills(run_id, ts);
CREATE INDEX IF NOT EXISTS trades_run ON trades(run_id, entry_ts);
CREATE INDEX IF NOT EXISTS equity_run ON equity(run_id, ts);
CREATE INDEX IF NOT EXISTS prices_run ON prices(run_id, symbol, ts);
CREATE INDEX IF NOT EXISTS notes_run ON notes(run_id, ts);
CREATE INDEX IF NOT EXISTS states_run ON states(run_id, symbol, name, ts);
"""


def _alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one that is not ours counts: the safe side)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def shown_time(iso: str) -> str:
    """A journal timestamp (ISO-8601 UTC, 'Z' or '+00:00') as a reader sees it: '2026-12-06 14:22:07 UTC'."""
    return f"{iso[:19].replace('T', ' ')} UTC"


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


class JournalError(Exception):
    """The journal file cannot be opened or is not a qtrade journal."""


SQLITE_MAGIC = b"SQLite format 3\x00"


def preflight(path: str | Path, *, readonly: bool = False) -> None:
    """Refuse a path no journal can be opened at, before anything is written to it (or, for a
    run, before the run): a folder, a missing parent folder, a file that is not SQLite, an
    SQLite file of something else (looked at through a read-only connection, so it is not
    switched to WAL or given tables first). A missing file is fine for writing (it is created)."""
    path = Path(path)
    if path.is_dir():
        raise JournalError(f"{path} is a folder, not a journal file"
                           + ("" if readonly else f"; give a file name, e.g. {path / 'qtrade-journal.sqlite'}"))
    if not path.exists():
        if readonly:
            raise JournalError(f"{path}: no such journal file")
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise JournalError(f"{path}: the folder {parent} does not exist; create it or give another journal path")
        return
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise JournalError(f"{path}: cannot read it ({exc.strerror})") from None
    if not head:
        if readonly:
            raise JournalError(f"{path}: not a journal (the file is empty)")
        return   # an empty file: SQLite makes it a database
    if head != SQLITE_MAGIC:
        raise JournalError(f"{path}: not a journal (not an SQLite file)"
                           + ("" if readonly else "; refusing to write to it, give another journal path"))
    tables = _tables(path)
    if tables and "runs" not in tables:
        shown = ", ".join(sorted(tables)[:6]) + (" ..." if len(tables) > 6 else "")
        raise JournalError(f"{path} is an SQLite file but not a qtrade journal (its tables: {shown})"
                           + ("" if readonly else "; refusing to write to it, give another journal path"))


def connect_readonly(path: Path, timeout: float = 5.0) -> sqlite3.Connection:
    """A connection that cannot write. Where the file can be written it is a read-write one made
    query_only (mode=rw never creates the file): on a WAL journal SQLite removes the -wal and
    -shm files a reader makes when the last connection closes, but only if that connection can
    write, so a mode=ro reader would leave them behind. Else mode=ro; a file SQLite may not even
    make its -shm next to (a read-only folder or disk) is opened as immutable."""
    uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode="
    for mode in ("rw", "ro"):
        con = None
        try:
            con = sqlite3.connect(uri + mode, uri=True, timeout=timeout, isolation_level=None)
            con.execute("PRAGMA query_only=ON")
            con.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
            return con
        except sqlite3.OperationalError as exc:
            if con is not None:
                con.close()
            if "locked" in str(exc) or "busy" in str(exc):
                raise
    return sqlite3.connect(uri + "ro&immutable=1", uri=True, timeout=timeout, isolation_level=None)


def _tables(path: Path) -> set[str]:
    try:
        con = connect_readonly(path)
        try:
            return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise failure(path, exc) from None


def failure(path: str | Path, exc: sqlite3.Error) -> JournalError:
    """What an SQLite error on the journal means for the user: locked (and by which process),
    read-only, full, damaged."""
    path = Path(path)
    text = str(exc)
    if "locked" in text or "busy" in text:
        holders = _holders(path)
        by = f" by {holders}" if holders else " by another connection"
        return JournalError(f"{path} is locked{by}; wait for it to finish or give another journal path")
    if "readonly" in text or "read-only" in text:
        return JournalError(f"{path} is read-only: the journal cannot be written to here; give another journal path")
    if "disk is full" in text or "database or disk is full" in text:
        return JournalError(f"{path}: the disk is full; nothing more could be written to the journal")
    if "unable to open" in text:
        return JournalError(f"{path}: cannot open the journal ({text})")
    return JournalError(f"{path}: not a journal ({text})")


def _holders(path: Path) -> str:
    """The other processes that have the journal (or its -wal file) open, from /proc (Linux);
    '' where that cannot be read."""
    try:
        targets = {str(path.resolve()), str(path.resolve()) + "-wal"}
        me = os.getpid()
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                fds = os.scandir(f"/proc/{entry.name}/fd")
                hit = any(os.readlink(fd.path) in targets for fd in fds)
            except OSError:
                continue
            if hit:
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                        cmd = " ".join(fh.read().replace(b"\0", b" ").decode(errors="replace").split())
                except OSError:
                    cmd = ""
                found.append(f"process {entry.name}" + (f" ({cmd[:80]})" if cmd else ""))
        return ", ".join(found[:3])
    except OSError:
        return ""


class Journal:
    """Append-only writer and reader of one journal file. `readonly` opens an existing journal
    for reading only (reports): nothing is written to it, not even its journal mode."""

    def __init__(self, path: str | Path, *, readonly: bool = False, timeout: float = 5.0):
        self.path = Path(path)
        self.readonly = readonly
        preflight(self.path, readonly=readonly)
        try:
            if readonly:
                self.db = connect_readonly(self.path, timeout)
                existing = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                if "runs" not in existing:
                    raise JournalError(f"{self.path} is an SQLite file but not a qtrade journal")
                return
            self.db = sqlite3.connect(str(self.path), isolation_level=None, timeout=timeout)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            existing = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if existing and "runs" not in existing:
                raise JournalError(f"{self.path} is an SQLite file but not a qtrade journal")
            if existing:
                _migrate(self.db)
            self.db.executescript(SCHEMA)
            self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                            (str(SCHEMA_VERSION),))
        except BaseException as exc:
            db = getattr(self, "db", None)
            if db is not None:
                db.close()          # a journal that cannot be opened leaves no connection behind
            if isinstance(exc, sqlite3.Error):
                raise failure(self.path, exc) from None
            raise

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- writing ---------------------------------------------------------------------------
    def start_run(self, mode: str, strategy: str, *, strategy_path: str = "", strategy_text: str = "",
                  params: dict | None = None, settings: dict | None = None, symbols: Sequence[str] = (),
                  bar: str = "", currency: str = "USD", initial_cash: float | None = None,
                  run_id: str | None = None) -> str:
        run_id = run_id or new_run_id()
        # the process that runs it: a run left 'running' by a process that is gone is marked by the next
        settings = {**(settings or {}), "process": {"host": socket.gethostname(), "pid": os.getpid()}}
        self.db.execute(
            "INSERT INTO runs(run_id, mode, strategy, strategy_path, strategy_text, params, settings, symbols, bar,"
            " currency, initial_cash, started_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (run_id, mode, strategy, strategy_path, strategy_text, json.dumps(params or {}, default=str),
             json.dumps(settings or {}, default=str), json.dumps(list(symbols)), bar, currency, initial_cash,
             utc_now()))
        return run_id

    def last_journaled(self, run_id: str, since: str) -> str | None:
        """The time of the last order, fill, decision, error or note the run journaled, when it is
        on or after `since` (the run's start); None when nothing is, as when the times are a
        simulated venue's, years before. (Times are UTC: compared to the second.)"""
        last = self.db.execute(
            "SELECT max(ts) FROM (SELECT max(ts) AS ts FROM orders WHERE run_id = :r UNION ALL"
            " SELECT max(ts) FROM fills WHERE run_id = :r UNION ALL SELECT max(ts) FROM decisions WHERE run_id = :r"
            " UNION ALL SELECT max(ts) FROM errors WHERE run_id = :r UNION ALL"
            " SELECT max(ts) FROM notes WHERE run_id = :r)", {"r": run_id}).fetchone()[0]
        return last if last and last[:19] >= since[:19] else None

    def dead_runs(self) -> list[dict]:
        """Runs the journal has as running whose process, on this machine, is gone (killed with -9,
        or crashed past its handlers): each is marked interrupted, its end the last thing it
        journaled (its start if nothing: last_journaled), and returned (run_id, mode, strategy, started_at, pid) for the caller to say.
        Runs of other machines, and of processes alive, are left as they are (POSIX only: there is
        no signal 0 to ask a process with on Windows)."""
        if os.name != "posix":
            return []
        host = socket.gethostname()
        dead = []
        for run in self._rows("SELECT run_id, mode, strategy, started_at, json_extract(settings, '$.process.host')"
                              " AS host, json_extract(settings, '$.process.pid') AS pid FROM runs"
                              " WHERE status = 'running' ORDER BY started_at"):
            if run["host"] != host or not isinstance(run["pid"], int) or _alive(run["pid"]):
                continue
            end = self.last_journaled(run["run_id"], since=run["started_at"]) or run["started_at"]
            self.db.execute("UPDATE runs SET status = 'interrupted', finished_at = ?, summary = json_object('ended',"
                            " 'unseen: its process was gone (killed or crashed); marked by the next run')"
                            " WHERE run_id = ? AND status = 'running'", (end, run["run_id"]))
            dead.append(run)
        return dead

    def finish_run(self, run_id: str, status: str, summary: dict | None = None) -> None:
        self.db.execute("UPDATE runs SET finished_at=?, status=?, summary=? WHERE run_id=?",
                        (utc_now(), status, json.dumps(summary or {}, default=_json_default), run_id))

    def order(self, run_id: str, order_ref: str, ts: str, symbol: str, action: str, quantity: float,
              order_type: str, *, limit_price: float | None = None, stop_price: float | None = None,
              tif: str = "day", rule: str = "", intent: str = "open", legs: Any = None,
              status: str = "created", reason: str = "", owner: str = "") -> None:
        """Journal an order before it is sent (a restart recognises it by order_ref, and its
        position's owner by `owner`)."""
        self.db.execute(
            "INSERT INTO orders(run_id, order_ref, ts, symbol, action, quantity, order_type, limit_price,"
            " stop_price, tif, rule, intent, legs, status, status_ts, reason, owner)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (run_id, order_ref, ts, symbol, action, quantity, order_type, limit_price, stop_price, tif, rule,
             intent, json.dumps(legs) if legs is not None else None, status, ts, reason, owner))

    def order_status(self, order_ref: str, status: str, ts: str, reason: str = "") -> None:
        self.db.execute("UPDATE orders SET status=?, status_ts=?, reason=CASE WHEN ?='' THEN reason ELSE ? END"
                        " WHERE order_ref=?", (status, ts, reason, reason, order_ref))

    def order_ids(self, order_ref: str, *, broker_order_id: int | None = None, perm_id: int | None = None,
                  con_id: int | None = None, local_symbol: str | None = None) -> None:
        """The venue's ids for a journaled order, as they become known (IB's orderId at placing,
        its permId at the first status) and the exact contract it went out on."""
        self.db.execute("UPDATE orders SET broker_order_id=COALESCE(?, broker_order_id), perm_id=COALESCE(?, perm_id),"
                        " con_id=COALESCE(?, con_id), local_symbol=COALESCE(?, local_symbol) WHERE order_ref=?",
                        (broker_order_id, perm_id, con_id, local_symbol, order_ref))

    def note(self, run_id: str | None, ts: str, kind: str, subject: str, message: str) -> None:
        self.db.execute("INSERT INTO notes(run_id, ts, kind, subject, message) VALUES (?,?,?,?,?)",
                        (run_id, ts, kind, subject, message))

    def fill(self, run_id: str, order_ref: str, ts: str, symbol: str, action: str, quantity: float,
             price: float, multiplier: float = 1.0, commission: float = 0.0, exec_id: str | None = None,
             broker_order_id: int | None = None, con_id: int | None = None, local_symbol: str | None = None) -> bool:
        """Journal one execution; False when its execution id is journaled already (a venue that
        reports it again, or a restart that reads it back), which changes nothing."""
        cur = self.db.execute("INSERT OR IGNORE INTO fills(run_id, order_ref, ts, symbol, action, quantity, price,"
                              " multiplier, commission, exec_id, broker_order_id, con_id, local_symbol)"
                              " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                              (run_id, order_ref, ts, symbol, action, quantity, price, multiplier, commission,
                               exec_id, broker_order_id, con_id, local_symbol))
        return cur.rowcount == 1

    def correct_fill(self, old_exec_id: str, new_exec_id: str, quantity: float, price: float, ts: str) -> bool:
        """A venue's correction of an execution (IB's `.02` for `.01`): the row is replaced in
        place, keeping its order and commission; False when the old one is not journaled."""
        cur = self.db.execute("UPDATE fills SET exec_id=?, quantity=?, price=?, ts=? WHERE exec_id=?",
                              (new_exec_id, quantity, price, ts, old_exec_id))
        return cur.rowcount == 1

    def commission(self, exec_id: str, commission: float) -> None:
        """A commission report for a journaled execution (it may arrive after the fill)."""
        self.db.execute("UPDATE fills SET commission=? WHERE exec_id=?", (commission, exec_id))

    def last_order_seq(self, prefix: str) -> int:
        """The highest <seq> of the order refs `<prefix><seq>` in the journal (0: none), so the
        orders of a restarted run continue the sequence instead of repeating a ref."""
        rows = self.db.execute("SELECT order_ref FROM orders WHERE substr(order_ref, 1, ?) = ?",
                               (len(prefix), prefix)).fetchall()
        seqs = [int(r[0][len(prefix):]) for r in rows if r[0][len(prefix):].isdigit()]
        return max(seqs, default=0)

    def decision(self, run_id: str, ts: str, symbol: str, rule: str, kind: str, outcome: str,
                 reason: str = "", detail: str = "", agent: str = "", confidence: float | None = None) -> None:
        self.db.execute("INSERT INTO decisions(run_id, ts, symbol, rule, kind, outcome, reason, detail, agent,"
                        " confidence) VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (run_id, ts, symbol, rule, kind, outcome, reason, detail, agent, confidence))

    def error(self, run_id: str | None, ts: str, source: str, message: str) -> None:
        self.db.execute("INSERT INTO errors(run_id, ts, source, message) VALUES (?,?,?,?)",
                        (run_id, ts, source, message))

    def many(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Bulk insert (equity curves, prices, trades) in one transaction."""
        marks = ",".join("?" * len(columns))
        with self.transaction():
            self.db.executemany(f"INSERT INTO {table}({','.join(columns)}) VALUES ({marks})", rows)

    def transaction(self):
        """`with journal.transaction(): ...` groups many writes into one commit."""
        return _Transaction(self.db)

    @contextlib.contextmanager
    def bulk(self):
        """Writing a finished run at once (a backtest or a replay): one transaction, no fsyncs and
        a larger page cache for its duration. A crash during the write leaves the journal as it
        was before (the transaction rolls back); the run can simply be repeated. Live runs never
        use this: they commit every order before it is sent."""
        cache = self.db.execute("PRAGMA cache_size").fetchone()[0]
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("PRAGMA cache_size=-65536")
        try:
            with self.transaction():
                yield self
        finally:
            self.db.execute(f"PRAGMA cache_size={int(cache)}")
            self.db.execute("PRAGMA synchronous=NORMAL")

    # ---- reading ---------------------------------------------------------------------------
    def runs(self) -> list[dict]:
        return self._rows("SELECT * FROM runs ORDER BY started_at")

    def run(self, run_id: str | None = None) -> dict:
        """One run (the newest when run_id is None), with JSON columns decoded."""
        rows = self._rows("SELECT * FROM runs WHERE run_id=?", (run_id,)) if run_id else \
            self._rows("SELECT * FROM runs ORDER BY started_at DESC, rowid DESC LIMIT 1")
        if not rows:
            raise JournalError(f"{self.path}: no run {run_id!r}" if run_id else f"{self.path}: no runs yet")
        run = rows[0]
        for key in ("params", "settings", "symbols", "summary"):
            run[key] = json.loads(run[key]) if run.get(key) else ({} if key != "symbols" else [])
        return run

    def table(self, name: str, run_id: str, order: str = "rowid") -> list[dict]:
        return self._rows(f"SELECT * FROM {name} WHERE run_id=? ORDER BY {order}", (run_id,))

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[dict]:
        cur = self.db.execute(sql, args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


@dataclass
class _Transaction:
    """BEGIN ... COMMIT (ROLLBACK on an exception); inside another transaction, part of it."""

    db: sqlite3.Connection
    outer: bool = False

    def __enter__(self):
        self.outer = not self.db.in_transaction
        if self.outer:
            self.db.execute("BEGIN")
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.outer:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a journal of an older schema up to this one, in place, keeping every row."""
    columns = {table: {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
               for table in ("fills", "decisions", "orders", "trades", "positions")}
    with _Transaction(db):
        if columns["fills"] and "exec_id" not in columns["fills"]:
            db.execute("ALTER TABLE fills ADD COLUMN exec_id TEXT")
            db.execute("ALTER TABLE fills ADD COLUMN broker_order_id INTEGER")
            db.execute("CREATE UNIQUE INDEX IF NOT EXISTS fills_exec ON fills(exec_id)")
        if columns["decisions"] and "detail" not in columns["decisions"]:
            db.execute("ALTER TABLE decisions ADD COLUMN detail TEXT NOT NULL DEFAULT ''")
        fills = {r[1] for r in db.execute("PRAGMA table_info(fills)")}
        decisions = {r[1] for r in db.execute("PRAGMA table_info(decisions)")}
        for table, wanted in (("orders", ("broker_order_id INTEGER", "perm_id INTEGER", "con_id INTEGER",
                                          "local_symbol TEXT", "owner TEXT NOT NULL DEFAULT ''")),
                              ("fills", ("con_id INTEGER", "local_symbol TEXT")),
                              ("trades", ("local_symbol TEXT", "owner TEXT NOT NULL DEFAULT ''", "entry_states TEXT")),
                              ("decisions", ("agent TEXT NOT NULL DEFAULT ''", "confidence REAL")),
                              ("positions", ("owner TEXT NOT NULL DEFAULT ''",))):
            have = {"fills": fills, "decisions": decisions}.get(table, columns[table])
            if not have:
                continue
            for column in wanted:
                if column.split()[0] not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")


def _json_default(value: Any):
    if hasattr(value, "item"):
        return value.item()
    return str(value)
