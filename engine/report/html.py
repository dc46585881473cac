"""One run of the journal -> one self-contained static HTML report.

The report reads only the journal. It has no external references: CSS and SVG charts are
inline, and the only script (optional) sorts the trades table. All text from the journal goes
through jinja2's autoescaping, except the trades table's rows: those are built in Python
(`trades_rows`, thousands of rows) with markupsafe's escaping, the same as jinja's; the SVG
fragments are built by `engine.report.svg`, which escapes its own text.

Times are shown in the strategy's timezone (the run's `settings.timezone`, journaled with the
run; UTC for a run that has none), each in a `<time>` element whose `datetime` carries its UTC
offset. Trades are numbered 1..N in the run's order (entry time, then journal id), not by
their journal ids.

Option trades: the trades table's `legs` column is JSON, either a list of legs or an object
``{"legs": [...], "credit": x}``. A leg is an object with any of ``name, action (buy|sell),
right (put|call|P|C), strike, expiry, ratio (or quantity), price``. The report shows the legs
and the credit: the object's `credit` when present, else ``sum(+price for sold legs, -price for
bought legs) * ratio`` over the legs that carry a price (per unit, not multiplied).
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import threading
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup, escape

from engine.runtime.collector import without_cyclic_gc
from engine.runtime.journal import Journal, JournalError, connect_readonly
from engine.report import metrics, svg

TEMPLATES = Path(__file__).resolve().parent / "templates"
TRADES_TABLE_MAX = 2000     # rows shown in the trades table (all trades still count in metrics)
ERRORS_SHOWN = 20

# Figures taken from the run's stored summary when it has them: the writer computed them from the
# full-resolution equity curve (the journal's may be thinned) and knows positions still open.
FROM_RUN_SUMMARY = ("start_equity", "end_equity", "total_return", "cagr", "volatility", "sharpe", "sortino",
                    "calmar", "max_drawdown", "max_drawdown_days", "max_drawdown_start", "max_drawdown_end",
                    "max_drawdown_recovered", "average_drawdown", "average_drawdown_days", "drawdowns",
                    "periods_per_year", "annualisation", "returns_basis", "return_periods", "exposure")
# figures of the daily-returns convention: a summary stored before it (no "returns_basis") had
# them from the bars' own returns, so they are computed again from the journal's curve
DAILY_RETURN_KEYS = ("volatility", "sharpe", "sortino", "annualisation", "returns_basis", "return_periods")
RISK_FREE_KEYS = ("sharpe", "sortino", "alpha")     # depend on the rate: recomputed for another one


# ---- reading the journal -----------------------------------------------------------------------

TRADE_COLUMNS = ("id", "symbol", "side", "quantity", "entry_ts", "entry_price", "exit_ts", "exit_price",
                 "bars_held", "pnl", "return_pct", "mae", "mfe", "commission", "entry_rule", "exit_rule",
                 "exit_reason", "legs")   # what the trades table shows (the first TRADES_TABLE_MAX rows)
_CONTRACT_SYMBOL = ("CASE WHEN local_symbol IS NULL OR local_symbol = '' OR local_symbol = symbol THEN symbol "
                    "ELSE symbol || ' ' || local_symbol END")
MARK_COLUMNS = ("id", "side", "quantity", "symbol", "entry_ts", "entry_price", "exit_ts", "exit_price", "pnl",
                "entry_rule", "exit_rule", "exit_reason", "legs")   # what a chart mark's tooltip shows


@dataclass
class Trades:
    """All of a run's trades as columns, in the journal's order (entry time, then id): what the
    metrics, the per-symbol table and the chart marks need, read without a dict per trade.
    `pnl` is also kept as Python floats, so that its sums add in the order of the rows."""
    id: list[int]
    symbol: list[str]
    pnl: list[float]
    entry_ns: np.ndarray        # UTC nanoseconds
    exit_ns: np.ndarray
    combo: np.ndarray           # bool: an option combo (has legs); marked at the underlying's price
    ret: np.ndarray = field(default_factory=lambda: np.empty(0))   # return_pct / 100 (fraction of entry value)
    commission: dict[str, float] = field(default_factory=dict)   # per symbol (SQLite's total())
    commission_total: float = 0.0

    def __len__(self) -> int:
        return len(self.id)

    def columns(self, idx: np.ndarray | None = None) -> metrics.TradeColumns:
        """pnl, entry/exit times and returns for the metrics (of the rows `idx`, default all)."""
        pnl = np.array(self.pnl, dtype=float)
        ret = self.ret if len(self.ret) == len(pnl) else None
        if idx is None:
            return metrics.TradeColumns(pnl, self.entry_ns, self.exit_ns, ret)
        return metrics.TradeColumns(pnl[idx], self.entry_ns[idx], self.exit_ns[idx],
                                    None if ret is None else ret[idx])


@dataclass
class RunData:
    """What a report needs from one run, read from the journal."""
    path: Path
    run: dict
    equity: pd.Series
    trades: Trades
    symbol: str | None
    bars: pd.DataFrame
    # per symbol: (start price, last close) over the run's span (`_span_prices`)
    closes_by_symbol: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)
    shown: list[tuple] = field(default_factory=list)  # the trades table's rows (TRADE_COLUMNS)
    legs: list[dict | None] = field(default_factory=list)   # option_legs of each shown row
    marks: list[dict] = field(default_factory=list)   # the chart marks' rows (MARK_COLUMNS + entry, exit, number)
    tz: str = "UTC"                                    # the strategy's timezone (`run_timezone`)
    bench_symbol: str | None = None                    # buy and hold's symbol
    bench_bars: pd.DataFrame | None = None             # its bars (the journal's, with warm-up bars)
    exit_reasons: list[dict] = field(default_factory=list)   # P&L by exit reason (`_exit_reasons`)
    by_agent: list[dict] = field(default_factory=list)       # P&L by owner (`_by_agent`), when agents traded
    by_state: list[dict] = field(default_factory=list)       # P&L by each classification's state at entry
    states: dict = field(default_factory=dict)               # the chart symbol's classifications over time


def open_journal(journal_path: str | Path) -> Journal:
    """Open an existing journal for reading only (a read-only file is fine, nothing is written);
    JournalError when it is missing or not a journal."""
    path = Path(journal_path)
    if not path.exists():
        raise JournalError(f"{path}: no such journal file")
    if not path.is_file():
        raise JournalError(f"{path} is a folder, not a file: give the journal's file")
    return Journal(path, readonly=True)


class UnknownSymbol(JournalError):
    """The report was asked for a symbol the run has nothing of."""


class ReportPathError(JournalError):
    """The report cannot be written where asked without destroying something."""


def report_path_problem(out_path: str | Path, journal_path: str | Path | None = None) -> str | None:
    """Why the HTML report must not be written to `out_path`, or None: it is the journal itself
    (or one of its -wal/-shm files), a folder, in a folder that does not exist, or an existing
    file that is not a qtrade report (only a report is ever overwritten)."""
    out = Path(out_path)
    if journal_path is not None:
        journal = Path(journal_path)
        targets = {journal.resolve(), Path(str(journal.resolve()) + "-wal"), Path(str(journal.resolve()) + "-shm")}
        same = out.resolve() in targets
        if not same and out.exists() and journal.exists():
            try:
                same = os.path.samefile(out, journal)
            except OSError:
                same = False
        if same:
            return f"{out} is the journal {journal}: writing the report there would destroy every run in it"
    if out.is_dir():
        return f"{out} is a folder; give a file name, e.g. {out / 'report.html'}"
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        return f"{out}: the folder {parent} does not exist; create it or give another path"
    if out.exists() and out.stat().st_size > 0 and not _is_report(out):
        return f"{out} exists and is not a qtrade report: refusing to overwrite it; give another path or delete it"
    return None


def _is_report(path: Path) -> bool:
    """A file this module wrote: HTML whose head names qtrade as its generator."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return False
    return head.lstrip().lower().startswith("<!doctype html") and '<meta name="generator" content="qtrade">' in head


MMAP_BYTES = 1 << 28       # the journal read through memory mapping (SQLite's mmap_size), up to 256 MiB


def run_timezone(run: Mapping[str, Any]) -> str:
    """The strategy's timezone, as the run journaled it (`settings.timezone`, the schedule's
    zone); "UTC" when the run has none or names a zone this machine does not know."""
    tz = (run.get("settings") or {}).get("timezone") or (run.get("summary") or {}).get("timezone")
    if not isinstance(tz, str) or not tz:
        return "UTC"
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return "UTC"
    return tz


def _iso_z(t: pd.Timestamp) -> str:
    """A UTC time in the journal's own form, "2024-05-01T14:30:00Z" (for comparing with its
    timestamps in SQL: the same form sorts as the times do)."""
    return pd.Timestamp(t).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def load_run(journal_path: str | Path, run_id: str | None = None, symbol: str | None = None) -> RunData:
    """Read one run (the newest when `run_id` is None) and the bars of `symbol` (default: the
    symbol with the most trades, else the run's first symbol), and of buy and hold's symbol
    (the run's stored `buy_and_hold_symbol`, else the chart's).

    What SQLite adds up by itself (aggregates, no Python object per row: trades per symbol,
    commission sums, P&L by exit reason, the run log's counts) runs on connections of its own in
    threads while this one reads rows, so with a second core it takes no time."""
    journal = open_journal(journal_path)
    try:
        try:
            run = journal.run(run_id)
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{journal.path}: not a readable journal ({exc})") from None
        rid = run["run_id"]
        db = journal.db
        db.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
        by_symbol_read = _in_background(journal.path, lambda con: _by_symbol(con, rid))
        sums = _in_background(journal.path, lambda con: _sums(con, rid))
        ts, values = _series(db, "SELECT ts, equity FROM equity WHERE run_id=?", (rid,))
        equity = metrics.equity_series(ts, values)
        try:
            by_symbol = by_symbol_read()
        except Exception:            # a second connection failed: the same query on this one
            by_symbol = _by_symbol(db, rid)
        trades = _trades(db, rid, by_symbol)
        owned = _has_owner(db)
        extra = ", owner, entry_states" if owned else ", '', NULL"
        # a futures trade's symbol cell names its contract too (ES ESZ3): a roll reads as ESZ3's trade
        # closed by 'roll' and ESH4's opened by it
        named = ", ".join(_CONTRACT_SYMBOL if c == "symbol" else c for c in TRADE_COLUMNS)
        shown = db.execute(f"SELECT {named}{extra} FROM trades WHERE run_id=? ORDER BY entry_ts, id"
                           " LIMIT ?", (rid, TRADES_TABLE_MAX)).fetchall()
        legs = [option_legs(t[len(TRADE_COLUMNS) - 1]) for t in shown]
        price_symbols = [r[0] for r in db.execute(
            "SELECT DISTINCT symbol FROM prices WHERE run_id=?", (rid,))]
        if symbol is not None:
            known = set(by_symbol) | set(run.get("symbols") or []) | set(price_symbols)
            if symbol not in known and symbol.upper() in known:
                symbol = symbol.upper()
            if symbol not in known:
                raise UnknownSymbol(f"--symbol {symbol}: run {rid} has no bars or trades of it; it has "
                                    + (", ".join(sorted(known)) or "none"))
        symbol = symbol or default_symbol({s: g[0] for s, g in by_symbol.items()}, run.get("symbols") or [],
                                          price_symbols)
        journaled = bars = _bars(db, rid, symbol) if symbol else _no_bars()
        if len(equity) and len(bars) and (bars.index >= equity.index[0]).any():
            # the price chart spans the run, not the warm-up bars the journal keeps before it
            bars = bars[bars.index >= equity.index[0]]
        marks = _mark_rows(db, trades, symbol, bars) if symbol else []
        traded = sorted(set(by_symbol) | set(run.get("symbols") or []) | set(price_symbols))
        span = (_iso_z(equity.index[0]), _iso_z(equity.index[-1])) if len(equity) else None
        closes = {s: _span_prices(db, rid, s, span) for s in traded}
        stored_symbol = (run.get("summary") or {}).get("buy_and_hold_symbol")
        bench_symbol = stored_symbol if stored_symbol in price_symbols else (symbol if symbol in price_symbols
                                                                              else None)
        bench_bars = (journaled if bench_symbol == symbol else _bars(db, rid, bench_symbol)) if bench_symbol else None
        try:
            agg = sums()
        except Exception:            # a second connection failed: the same queries on this one
            agg = _sums(db, rid)
        trades.commission, trades.commission_total = agg["commission"], agg["commission_total"]
        return RunData(Path(journal_path), run, equity, trades, symbol, bars, closes, agg["counts"], agg["errors"],
                       shown, legs, marks, run_timezone(run), bench_symbol, bench_bars, agg["exit_reasons"],
                       agg["by_agent"], agg["by_state"], _states(db, rid, symbol) if symbol else {})
    finally:
        journal.close()


def _in_background(path: Path, read: Callable[[sqlite3.Connection], Any]) -> Callable[[], Any]:
    """Start `read(connection)` on a connection of its own in a thread; returns a function that
    waits for it and gives its result (or raises its exception)."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            con = connect_readonly(path)
            try:
                con.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
                box["value"] = read(con)
            finally:
                con.close()
        except BaseException as exc:     # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=work, name="qtrade-report-read", daemon=True)
    thread.start()

    def result() -> Any:
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["value"]
    return result


def _by_symbol(db: sqlite3.Connection, run_id: str) -> dict[str, tuple[int, int]]:
    """Trades and option combos per traded symbol."""
    return {s: (n, combos) for s, n, combos in db.execute(
        "SELECT symbol, COUNT(*), SUM(legs IS NOT NULL AND legs != '') FROM trades WHERE run_id=? GROUP BY symbol",
        (run_id,))}


def _sums(db: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    """What SQLite adds up by itself: the commission per symbol and in all (total(): a NULL is
    0), the run log's counts, and the last errors."""
    return {
        "commission": dict(db.execute("SELECT symbol, TOTAL(commission) FROM trades WHERE run_id=? GROUP BY symbol",
                                      (run_id,)).fetchall()),
        "commission_total": db.execute("SELECT TOTAL(commission) FROM trades WHERE run_id=?", (run_id,)).fetchone()[0],
        "counts": {
            "orders": dict(db.execute("SELECT status, COUNT(*) FROM orders WHERE run_id=? GROUP BY status",
                                      (run_id,)).fetchall()),
            "fills": db.execute("SELECT COUNT(*) FROM fills WHERE run_id=?", (run_id,)).fetchone()[0],
            "decisions": dict(db.execute("SELECT outcome, COUNT(*) FROM decisions WHERE run_id=? GROUP BY outcome",
                                         (run_id,)).fetchall()),
            "errors": db.execute("SELECT COUNT(*) FROM errors WHERE run_id=?", (run_id,)).fetchone()[0],
        },
        "errors": [dict(zip(("ts", "source", "message"), r)) for r in db.execute(
            "SELECT ts, source, message FROM errors WHERE run_id=? ORDER BY id DESC LIMIT ?", (run_id, ERRORS_SHOWN))],
        "exit_reasons": _exit_reasons(db, run_id),
        **_by_owner_and_state(db, run_id),
    }


def _has_owner(db: sqlite3.Connection) -> bool:
    """Whether the journal's trades carry their owner and states (schema 4; reports read older
    journals as they are)."""
    return "owner" in {r[1] for r in db.execute("PRAGMA table_info(trades)")}


def _pnl_rows(rows) -> list[dict]:
    out = [{"key": key, "trades": n, "wins": wins or 0, "pnl": total, "average": total / n if n else None,
            "win_rate": (wins or 0) / n if n else None} for key, n, wins, total in rows]
    out.sort(key=lambda r: (-r["pnl"], r["key"]))
    return out


def _by_owner_and_state(db: sqlite3.Connection, run_id: str) -> dict[str, list[dict]]:
    """P&L by agent (the trades' owners: shown when agents traded) and by each classification's
    state at the trade's entry (SQLite's json_each over the trades' entry_states)."""
    if not _has_owner(db):
        return {"by_agent": [], "by_state": []}
    agents = _pnl_rows(db.execute("SELECT owner, COUNT(*), SUM(pnl > 0), TOTAL(pnl) FROM trades WHERE run_id=?"
                                  " GROUP BY owner", (run_id,)).fetchall())
    strategy = (db.execute("SELECT strategy FROM runs WHERE run_id=?", (run_id,)).fetchone() or ("",))[0]
    if all(r["key"] in ("", strategy) for r in agents):
        agents = []
    try:
        states = db.execute("SELECT j.key, j.value, COUNT(*), SUM(t.pnl > 0), TOTAL(t.pnl) FROM trades t, "
                            "json_each(t.entry_states) j WHERE t.run_id=? AND t.entry_states IS NOT NULL "
                            "GROUP BY j.key, j.value", (run_id,)).fetchall()
    except sqlite3.OperationalError:        # an SQLite without JSON functions
        states = []
    by_state = _pnl_rows(((name, label), n, wins, total) for name, label, n, wins, total in states)
    by_state.sort(key=lambda r: (r["key"][0], -r["pnl"], r["key"][1]))
    for r in by_state:
        r["name"], r["label"] = r.pop("key")
    return {"by_agent": agents, "by_state": by_state}


def _states(db: sqlite3.Connection, run_id: str, symbol: str) -> dict[str, list[tuple[float, str]]]:
    """The symbol's classifications over time: name -> (UTC seconds, label) where each changes."""
    try:
        rows = db.execute("SELECT name, ts, label FROM states WHERE run_id=? AND symbol=? ORDER BY name, ts, rowid",
                          (run_id, symbol)).fetchall()
    except sqlite3.OperationalError:        # a journal from before the states table
        return {}
    out: dict[str, list[tuple[float, str]]] = {}
    if not rows:
        return out
    seconds = metrics.to_timestamps([r[1] for r in rows]).as_unit("ns").asi8 / 1e9
    for (name, _, label), t in zip(rows, seconds.tolist()):
        out.setdefault(name, []).append((t, label))
    return out


def _exit_reasons(db: sqlite3.Connection, run_id: str) -> list[dict]:
    """The trades grouped by why they were closed, as the trades table's Exit column names it
    (the exit reason, else the exit rule): trades, winners (pnl > 0), P&L in all (SQLite's
    total()) and per trade; the most trades first."""
    rows = db.execute(
        "SELECT CASE WHEN exit_reason IS NOT NULL AND exit_reason != '' THEN exit_reason ELSE exit_rule END AS why,"
        " COUNT(*), SUM(pnl > 0), TOTAL(pnl) FROM trades WHERE run_id=? GROUP BY why", (run_id,)).fetchall()
    out = [{"reason": why or "", "trades": n, "wins": wins or 0, "pnl": total, "average": total / n if n else None,
            "win_rate": (wins or 0) / n if n else None} for why, n, wins, total in rows]
    out.sort(key=lambda r: (-r["trades"], -r["pnl"], r["reason"]))
    return out


def _trades(db: sqlite3.Connection, run_id: str, by_symbol: dict[str, tuple[int, int]]) -> Trades:
    """Every trade of the run as columns: one tuple per row of only the columns needed (the
    symbol and whether it is a combo only when the run has more than one symbol or a combo;
    `by_symbol`, trades and combos per symbol, tells)."""
    one = len(by_symbol) == 1 and not next(iter(by_symbol.values()))[1]
    columns = "id, pnl, entry_ts, exit_ts, return_pct" + ("" if one else ", symbol, legs IS NOT NULL AND legs != ''")
    rows = db.execute(f"SELECT {columns} FROM trades WHERE run_id=? ORDER BY entry_ts, id", (run_id,)).fetchall()
    if not rows:
        return Trades([], [], [], np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, dtype=bool))
    if one:
        ids, pnl, entry_ts, exit_ts, ret = zip(*rows)
        symbols, combo = [next(iter(by_symbol))] * len(ids), np.zeros(len(ids), dtype=bool)
    else:
        ids, pnl, entry_ts, exit_ts, ret, symbols, combo = zip(*rows)
        symbols, combo = list(symbols), np.array(combo, dtype=bool)
    return Trades(list(ids), symbols, list(pnl), metrics.to_timestamps(entry_ts).as_unit("ns").asi8,
                  metrics.to_timestamps(exit_ts).as_unit("ns").asi8, combo,
                  np.array([np.nan if r is None else r for r in ret], dtype=float) / 100.0)


def _mark_rows(db: sqlite3.Connection, trades: Trades, symbol: str, bars: pd.DataFrame,
               most: int | None = None) -> list[dict]:
    """The trades drawn on `symbol`'s price chart, each with `entry` and `exit` (whether that
    end gets a mark), its `number` in the run (1..N) and the prices its marks stand at
    (`entry_at`, `exit_at`): every one when there are at most `most` marks, else the first of
    each kind per slice of the time axis (what can be seen apart). An option combo is priced per
    combo, not on the underlying's scale: its marks stand at the underlying's price when it was
    opened and closed (the legs' `underlying_entry` and `underlying_exit`, else the bars' last
    close at that time)."""
    most = MARKS_PER_CHART if most is None else most
    on_chart = np.flatnonzero(np.array([s == symbol for s in trades.symbol], dtype=bool))
    if on_chart.size == 0:
        return []
    entry_ns, exit_ns = trades.entry_ns[on_chart], trades.exit_ns[on_chart]
    keep_entry = keep_exit = np.ones(on_chart.size, dtype=bool)
    if 2 * on_chart.size > most:
        times = bars.index.as_unit("ns").asi8 if len(bars) else np.empty(0, np.int64)
        lo = int(min(entry_ns.min(), exit_ns.min(), times.min() if len(times) else entry_ns.min()))
        hi = int(max(entry_ns.max(), exit_ns.max(), times.max() if len(times) else exit_ns.max()))
        keep_entry = np.zeros(on_chart.size, dtype=bool)
        keep_entry[_visible(entry_ns, lo, hi, most // 2)] = True
        keep_exit = np.zeros(on_chart.size, dtype=bool)
        keep_exit[_visible(exit_ns, lo, hi, most // 2)] = True
    marked = np.flatnonzero(keep_entry | keep_exit)
    ids = [trades.id[on_chart[i]] for i in marked.tolist()]
    by_id: dict[int, dict] = {}
    for start in range(0, len(ids), 500):          # well under SQLite's limit of bound parameters
        chunk = ids[start:start + 500]
        for row in db.execute(f"SELECT {', '.join(MARK_COLUMNS)} FROM trades WHERE id IN"
                              f" ({','.join('?' * len(chunk))})", chunk):
            by_id[row[0]] = dict(zip(MARK_COLUMNS, row))
    rows = []
    for i, tid in zip(marked.tolist(), ids):
        row = by_id[tid]
        row.update(entry=bool(keep_entry[i]), exit=bool(keep_exit[i]), entry_ns=int(entry_ns[i]),
                   exit_ns=int(exit_ns[i]), number=int(on_chart[i]) + 1, combo=bool(trades.combo[on_chart[i]]))
        if row["combo"]:
            info = _combo_info(row["legs"])
            row["entry_at"] = _underlying_at(info.get("underlying_entry"), bars, row["entry_ns"])
            row["exit_at"] = _underlying_at(info.get("underlying_exit"), bars, row["exit_ns"])
            row["credit"] = info.get("credit")
        else:
            row["entry_at"], row["exit_at"] = row["entry_price"], row["exit_price"]
        rows.append(row)
    return rows


def _combo_info(raw: str | None) -> dict:
    """The legs JSON's object (credit, underlying_entry, ...), or {}."""
    try:
        data = json.loads(raw) if raw else None
    except (TypeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _underlying_at(price: Any, bars: pd.DataFrame, ns: int) -> float | None:
    """`price` when it is a number, else the last close of `bars` at or before `ns` (the first
    close when `ns` is before them); None without bars."""
    if _is_number(price):
        return float(price)
    if not len(bars):
        return None
    closes = bars["close"].to_numpy(dtype=float)
    at = int(np.searchsorted(bars.index.as_unit("ns").asi8, ns, side="right")) - 1
    value = closes[max(at, 0)]
    return float(value) if math.isfinite(value) else None


def default_symbol(trade_counts: Mapping[str, int], run_symbols: list[str], price_symbols: list[str]) -> str | None:
    """The most traded symbol (`trade_counts`: trades per symbol; ties: the first in the run's
    symbol list, then by name); without trades, the run's first symbol with prices, else its
    first symbol, else any with prices."""
    count = {s: n for s, n in trade_counts.items() if n}
    if count:
        order = {s: i for i, s in enumerate(run_symbols)}
        return min(count, key=lambda s: (-count[s], order.get(s, len(order)), s))
    for s in run_symbols:
        if s in price_symbols:
            return s
    if run_symbols:
        return run_symbols[0]
    return sorted(price_symbols)[0] if price_symbols else None


def _frame(values: np.ndarray, columns: list[str], index: pd.DatetimeIndex) -> pd.DataFrame:
    """A float frame with plain (object) column labels: a str-typed label index would make
    pandas load its Arrow string support on first use (about 5 ms) for four labels."""
    return pd.DataFrame(values, index=index, columns=pd.Index(columns, dtype=object), dtype=float)


def _no_bars() -> pd.DataFrame:
    return _frame(np.empty((0, 4)), ["open", "high", "low", "close"], pd.DatetimeIndex([], tz="UTC"))


def _series(db: sqlite3.Connection, sql: str, args: tuple) -> tuple[list[str], np.ndarray]:
    """(timestamps, values) from a query of `ts, value` rows; a NULL value is NaN.

    Plain rows: faster than `group_concat` of the columns (SQLite's printing of a REAL is slow)
    on a thinned curve of 10k points, as fast on a million, and exact to the bit."""
    rows = db.execute(sql, args).fetchall()
    if not rows:
        return [], np.array([], dtype=float)
    ts, values = zip(*rows)
    try:
        return list(ts), np.array(values, dtype=float)
    except (TypeError, ValueError):
        raise JournalError(f"a non-numeric value in the journal ({sql.split('FROM')[1].split()[0]})") from None


def _bars(db: sqlite3.Connection, run_id: str, symbol: str) -> pd.DataFrame:
    """The symbol's bars: all of OHLC when there are few (the chart draws OHLC bars), else the
    closes alone (the chart draws a thinned close line)."""
    n = db.execute("SELECT COUNT(*) FROM prices WHERE run_id=? AND symbol=?", (run_id, symbol)).fetchone()[0]
    if n == 0:
        return _no_bars()
    if n > svg.OHLC_MAX_BARS:
        ts, close = _series(db, "SELECT ts, close FROM prices WHERE run_id=? AND symbol=?", (run_id, symbol))
        frame = _frame(close.reshape(-1, 1), ["close"], metrics.to_timestamps(ts))
        return frame.sort_index(kind="stable") if not frame.index.is_monotonic_increasing else frame
    rows = db.execute("SELECT ts, open, high, low, close FROM prices WHERE run_id=? AND symbol=? ORDER BY ts",
                      (run_id, symbol)).fetchall()
    return _frame(np.array([r[1:] for r in rows], dtype=float).reshape(-1, 4), ["open", "high", "low", "close"],
                  metrics.to_timestamps([r[0] for r in rows]))


def _span_prices(db: sqlite3.Connection, run_id: str, symbol: str,
                 span: tuple[str, str] | None) -> tuple[float | None, float | None]:
    """(start price, last close) of `symbol` over the run's span (its equity curve's first and
    last times): buy and hold's prices, the open of the first bar at or after the start (its
    close when it has no open: `metrics.buy_and_hold_start`) and the last close at or before
    the end. The journal's prices begin with the warm-up bars before the run, which are left
    out. Without a span, the first and last closes."""
    if span is None:
        q = "SELECT close FROM prices WHERE run_id=? AND symbol=? AND close IS NOT NULL ORDER BY ts {} LIMIT 1"
        first = db.execute(q.format("ASC"), (run_id, symbol)).fetchone()
        last = db.execute(q.format("DESC"), (run_id, symbol)).fetchone()
        return (first[0] if first else None, last[0] if last else None)
    first = db.execute("SELECT open, close FROM prices WHERE run_id=? AND symbol=? AND ts >= ? AND close IS NOT NULL"
                       " ORDER BY ts LIMIT 1", (run_id, symbol, span[0])).fetchone()
    last = db.execute("SELECT close FROM prices WHERE run_id=? AND symbol=? AND ts <= ? AND close IS NOT NULL"
                      " ORDER BY ts DESC LIMIT 1", (run_id, symbol, span[1])).fetchone()
    start = metrics.buy_and_hold_start([first[0]] if first[0] is not None else [], [first[1]]) if first else None
    return (start, last[0] if last else None)


# ---- option legs -------------------------------------------------------------------------------

def option_legs(raw: str | None) -> dict | None:
    """The legs JSON of a trade -> {"legs": [text per leg], "credit": float | None}, or None for
    a single-instrument trade (see the module docstring for the shape read)."""
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except (TypeError, ValueError):
        return {"legs": [str(raw)], "credit": None}
    credit = None
    if isinstance(data, dict):
        credit = data.get("credit")
        legs = data.get("legs") or []
        if isinstance(legs, dict):    # legs by name
            legs = [dict(v, name=k) if isinstance(v, dict) else {"name": k, "text": v} for k, v in legs.items()]
    elif isinstance(data, list):
        legs = data
    else:
        return {"legs": [str(data)], "credit": None}
    texts, total, priced = [], 0.0, False
    for leg in legs:
        if not isinstance(leg, dict):
            texts.append(str(leg))
            continue
        action = str(leg.get("action", "")).lower()
        ratio = leg.get("ratio", leg.get("quantity", 1)) or 1
        right = str(leg.get("right", "")).upper()
        right = {"P": "PUT", "C": "CALL"}.get(right, right)
        price = leg.get("price", leg.get("fill_price"))
        parts = [str(leg["name"]) + ":" if leg.get("name") else "", action.upper(),
                 _fmt_qty(ratio), right, _fmt_qty(leg.get("strike")) if leg.get("strike") is not None else "",
                 str(leg.get("expiry", "") or ""), f"@ {float(price):.2f}" if _is_number(price) else ""]
        texts.append(" ".join(p for p in parts if p))
        if _is_number(price) and action in ("buy", "sell"):
            total += (1 if action == "sell" else -1) * float(price) * float(ratio)
            priced = True
    if credit is None and priced:
        credit = total
    return {"legs": texts, "credit": float(credit) if _is_number(credit) else None}


def _is_number(v: Any) -> bool:
    try:
        return v is not None and not isinstance(v, bool) and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _fmt_qty(v: Any) -> str:
    if not _is_number(v):
        return str(v)
    f = float(v)
    return str(int(f)) if f.is_integer() else f"{f:g}"


# ---- formatting --------------------------------------------------------------------------------

def fmt_pct(v: Any, digits: int = 2) -> str:
    # (a loss that rounds to nothing is 0.0%, not -0.0%)
    return "—" if not _is_number(v) else _unsigned_zero(f"{float(v) * 100:,.{digits}f}") + "%"


def fmt_num(v: Any, digits: int = 2) -> str:
    return "—" if not _is_number(v) else _unsigned_zero(f"{float(v):,.{digits}f}")


def _unsigned_zero(text: str) -> str:
    """A number's text without the sign of a negative that rounded to zero ("-0.00" -> "0.00")."""
    return text[1:] if text.startswith("-") and not text.strip("-0.,") else text


def local_time(v: Any, tz: str = "UTC") -> pd.Timestamp | None:
    """A journal time (ISO-8601 text, "Z" or an offset; naive is UTC) or a Timestamp, in `tz`;
    None for anything that is not a time."""
    if v is None or v == "" or isinstance(v, bool):
        return None
    try:
        t = pd.Timestamp(v)
    except (ValueError, TypeError, OverflowError):
        return None
    if t is pd.NaT or pd.isna(t):
        return None
    t = t.tz_localize("UTC") if t.tz is None else t
    return t.tz_convert(tz)


def _clock(text: str, date_only: bool) -> str:
    """"YYYY-MM-DD HH:MM:SS" shortened: the date alone for a date-only column or midnight, no
    seconds when they are :00."""
    if date_only or text.endswith(" 00:00:00"):
        return text[:10]
    return text[:16] if text.endswith(":00") else text


def _clock_html(text: str) -> str:
    """`_clock`'s text as the `<time>` element's content: the date in a span that does not break
    at its hyphens (a narrow column wraps between the date and the time only)."""
    return f'<span class="d">{text[:10]}</span>{text[10:]}' if len(text) > 10 else f'<span class="d">{text}</span>'


def _offset(z: str) -> str:
    """strftime's "%z" ("-0500") as ISO-8601 writes it ("-05:00")."""
    return z[:3] + ":" + z[3:] if len(z) == 5 else z


def fmt_ts(v: Any, date_only: bool = False, tz: str | None = None) -> str:
    """A journal time -> "2024-05-01 10:30" in `tz` (the strategy's timezone; UTC when None), or
    the date alone; text that is not a time is shown as it is (without a "T" or a UTC suffix)."""
    if v is None or v == "":
        return "—"
    t = local_time(v, tz or "UTC")
    if t is None:
        text = str(v).replace("T", " ").removesuffix("Z").removesuffix("+00:00")
        if date_only:
            return text[:10]
        return text[:16] if len(text) >= 16 and text[16:19] in (":00", "") else text[:19]
    return _clock(t.strftime("%Y-%m-%d %H:%M:%S"), date_only)


def ts_html(v: Any, date_only: bool = False, tz: str | None = None) -> str:
    """`fmt_ts` as HTML: a time in a `<time>` element whose `datetime` is the instant with its
    UTC offset in `tz` ("2024-05-01T10:30:00-04:00"); other text escaped."""
    t = local_time(v, tz or "UTC")
    if t is None:
        return _esc(fmt_ts(v, date_only, tz))
    return (f'<time datetime="{t.strftime("%Y-%m-%dT%H:%M:%S")}{_offset(t.strftime("%z"))}">'
            f'{_clock_html(_clock(t.strftime("%Y-%m-%d %H:%M:%S"), date_only))}</time>')


@jinja2.pass_context
def _ts_filter(context: Any, v: Any, date_only: bool = False) -> Markup:
    """The template's `ts` filter: `ts_html` in the report's timezone (its context's `tz`)."""
    return Markup(ts_html(v, date_only, context.get("tz") or "UTC"))


_JOURNAL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z").match


def ts_cells(values: Sequence[Any], date_only: bool, tz: str) -> list[str]:
    """`ts_html` of each value, the journal's "YYYY-MM-DDTHH:MM:SSZ" times converted and
    formatted together (the trades table's 2,000 rows), anything else one by one."""
    out: list[str | None] = [None] * len(values)
    fast = [k for k, v in enumerate(values) if type(v) is str and _JOURNAL_TIME(v)]
    if fast:
        try:
            utc = pd.DatetimeIndex(np.array([values[k][:19] for k in fast], dtype="datetime64[s]")).tz_localize("UTC")
        except (ValueError, OverflowError):
            fast = []
        else:
            local = utc.tz_convert(tz)
            clock = local.strftime("%Y-%m-%d %H:%M:%S")
            stamp = local.strftime("%Y-%m-%dT%H:%M:%S%z")
            for k, c, s in zip(fast, clock, stamp):
                out[k] = f'<time datetime="{s[:-2]}:{s[-2:]}">{_clock_html(_clock(c, date_only))}</time>'
    return [o if o is not None else ts_html(v, date_only, tz) for o, v in zip(out, values)]


def fmt_duration(days: Any) -> str:
    """A length of time given in days: "57.0 d", "2 h 14 min", "12 min" (`metrics.duration_text`);
    "—" when unknown."""
    return metrics.duration_text(float(days)) if _is_number(days) else "—"


def month_colour(v: Any) -> str:
    """Background for a monthly return: green up, red down, stronger up to +-10 %."""
    if not _is_number(v) or abs(float(v)) < 0.0005:    # shows as 0.0 %: no colour
        return ""
    a = min(1.0, abs(float(v)) / 0.10)
    alpha = 0.12 + 0.68 * a
    return f"background: rgba(22,163,74,{alpha:.2f})" if v >= 0 else f"background: rgba(220,38,38,{alpha:.2f})"


def _json_text(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v, default=str, ensure_ascii=False)


_ENVIRONMENT: jinja2.Environment | None = None


class _BytecodeCache(jinja2.FileSystemBytecodeCache):
    """Jinja's cache of compiled templates in its default place (a folder of the user's own in
    the temp directory): a new process loads the compiled report template instead of compiling
    it again (tens of milliseconds). The cache checks the template's source, so an edited
    template is compiled afresh; a cache that cannot be read or written is simply not used."""

    def load_bytecode(self, bucket: Any) -> None:
        try:
            super().load_bytecode(bucket)
        except Exception:            # unreadable or damaged: compile as without a cache
            bucket.reset()

    def dump_bytecode(self, bucket: Any) -> None:
        try:
            super().dump_bytecode(bucket)
        except OSError:
            pass


def _bytecode_cache() -> jinja2.BytecodeCache | None:
    try:
        return _BytecodeCache()
    except (OSError, RuntimeError):  # no private temp folder to be had
        return None


def _environment() -> jinja2.Environment:
    """The report's jinja environment, made once per process (it keeps the compiled template)."""
    global _ENVIRONMENT
    if _ENVIRONMENT is None:
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                                 undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                                 bytecode_cache=_bytecode_cache())
        env.filters.update(qty=_fmt_qty, pct=fmt_pct, num=fmt_num, ts=_ts_filter, month_colour=month_colour,
                           json_text=_json_text, duration=fmt_duration)
        _ENVIRONMENT = env
    return _ENVIRONMENT


# ---- the trades table --------------------------------------------------------------------------

_SPECIAL = re.compile(r"[&<>\"']").search     # what markupsafe.escape replaces


def _esc(text: str) -> str:
    """`markupsafe.escape` of a string, as text; the string itself when it has nothing to escape."""
    return text if _SPECIAL(text) is None else str(escape(text))


def _text(v: Any) -> str:
    """What the template's `{{ v }}` prints: a number as Python prints it, anything else escaped."""
    if type(v) is float or type(v) is int:
        return repr(v)
    return _esc(v) if type(v) is str else str(escape(v))


def _num(v: Any) -> str:
    """`fmt_num(v)`, with a short way for a finite float."""
    return f"{v:,.2f}" if type(v) is float and v - v == 0.0 and not -0.005 < v < 0.0 else fmt_num(v)


class _EscapedOnce(dict):
    """str -> its escaped text, each distinct string escaped once (symbols, sides and rule
    names repeat on every row); look-ups of known strings stay in C."""

    def __missing__(self, key: str) -> str:
        text = self[key] = _esc(key)
        return text


def _entry_states_html(raw: str | None) -> str:
    """A trade's classifications at entry, as the trades table shows them ('regime trend, bias long')."""
    if not raw:
        return ""
    try:
        states = json.loads(raw)
    except ValueError:
        return _esc(str(raw))
    return _esc(", ".join(f"{k} {v}" for k, v in states.items()))


def trades_rows(rows: list[tuple], legs: list[dict | None], daily: bool, tz: str = "UTC",
                agents: bool = False) -> Markup:
    """The trades table's body: one `<tr>` per row (`rows`: tuples in TRADE_COLUMNS order, the
    run's first trades in its order; `legs`: `option_legs` of each, the Legs and Credit cells
    when any is a combo), as a loop in the template would write them. Trades are numbered 1..N
    (not by journal id); times are in `tz` (`ts_cells`). With the owner and entry states after the
    table's columns (a journal of schema 4), the Agent cell (`agents`: agents traded) and the
    states at entry follow the Exit cell. Built column by column (a backtest
    shows 2,000 rows of 16 cells): text from the journal is escaped as jinja escapes it, each
    distinct string once; numbers are formatted by the template's filter functions. Returns
    Markup: the text is finished, escaped HTML."""
    if not rows:
        return Markup("")
    (_ids, symbols, sides, quantity, entry_ts, entry_price, exit_ts, exit_price, bars_held, pnl, return_pct,
     mae, mfe, commission, entry_rule, exit_rule, exit_reason, _legs, *owned) = zip(*rows)
    ids = tuple(range(1, len(rows) + 1))
    once = _EscapedOnce()

    def text(col: tuple) -> list[str]:      # `{{ v }}`
        return [once[v] if type(v) is str else (repr(v) if type(v) is float or type(v) is int else _text(v))
                for v in col]

    def attr(col: tuple) -> list[str]:      # `{{ v if v is not none else '' }}`
        return [repr(v) if type(v) is float else ("" if v is None else _text(v)) for v in col]

    def num(col: tuple) -> list[str]:       # `{{ v | num }}`
        return [f"{v:,.2f}" if type(v) is float and v - v == 0.0 and not -0.005 < v < 0.0 else fmt_num(v)
                for v in col]

    def signed(col: tuple, shown: list[str]) -> list[str]:   # the template's `signed` macro
        return [f'<span class="{"pos" if v is not None and v > 0 else ("neg" if v is not None and v < 0 else "")}">'
                f'{t}</span>' for v, t in zip(col, shown)]

    exits = [r or e for r, e in zip(exit_reason, exit_rule)]
    columns = (text(ids), text(symbols), text(sides), text(quantity), [once[_fmt_qty(q)] for q in quantity],
               ts_cells(entry_ts, daily, tz), text(entry_price), num(entry_price),
               ts_cells(exit_ts, daily, tz), text(exit_price), num(exit_price),
               text(bars_held), text(pnl), signed(pnl, num(pnl)),
               text(return_pct), signed(return_pct, [fmt_pct(v / 100) for v in return_pct]),
               attr(mae), num(mae), attr(mfe), num(mfe), text(commission), num(commission),
               text(entry_rule), text(exits))
    out = [f'      <tr><td data-v="{i}">{i}</td><td class="l">{sy}</td><td class="l">{sd}</td>'
           f'<td data-v="{qv}">{qt}</td>\n'
           f'        <td class="l t">{et}</td><td data-v="{epv}">{ept}</td>\n'
           f'        <td class="l t">{xt}</td><td data-v="{xpv}">{xpt}</td>\n'
           f'        <td data-v="{b}">{b}</td><td data-v="{pv}">{pt}</td>\n'
           f'        <td data-v="{rv}">{rt}</td>\n'
           f'        <td data-v="{aev}">{aet}</td><td data-v="{fev}">{fet}</td>\n'
           f'        <td data-v="{cv}">{ct}</td>\n'
           f'        <td class="l rule">{er}</td><td class="l rule">{xr}</td>\n'
           for (i, sy, sd, qv, qt, et, epv, ept, xt, xpv, xpt, b, pv, pt, rv, rt, aev, aet, fev, fet, cv, ct, er, xr)
           in zip(*columns)]
    with_states = bool(owned) and any(owned[1])
    if owned and (agents or with_states):
        owners, states = owned
        for k, (owner, raw) in enumerate(zip(owners, states)):
            out[k] += (f'<td class="l rule">{once[owner or ""]}</td>' if agents else "") + \
                (f'<td class="l rule">{_entry_states_html(raw)}</td>' if with_states else "")
    if any(legs):
        for k, lv in enumerate(legs):
            cells = "<br>".join(_text(leg) for leg in lv["legs"]) if lv else ""
            credit = lv["credit"] if lv else None
            out[k] += (f'<td class="legs">{cells}</td>\n'
                       f'        <td data-v="{_text(credit) if credit is not None else ""}">'
                       f'{_num(credit) if lv else ""}</td>')
    return Markup("</tr>\n".join(out) + "</tr>")


# ---- the report --------------------------------------------------------------------------------

MARKS_PER_CHART = 500      # trade markers drawn on the price chart at most (every one when fewer)


def _stored_buy_and_hold(data: RunData, symbol: str | None) -> dict:
    """The run's stored summary when its buy and hold is of `symbol` (the writer's figures, from
    every bar of the run), else {}."""
    stored = data.run.get("summary") or {}
    return stored if symbol is not None and stored.get("buy_and_hold_symbol") == symbol else {}


def _symbol_breakdown(data: RunData) -> list[dict]:
    trades = data.trades
    symbols = set(trades.symbol)
    if len(symbols) == 1:        # one symbol (most backtests): every trade
        by = {next(iter(symbols)): list(range(len(trades)))}
    else:
        by = {}
        for i, s in enumerate(trades.symbol):
            by.setdefault(s, []).append(i)
    pnl_all = np.array(trades.pnl, dtype=float)
    rows = []
    for s in sorted(set(by) | set(data.closes_by_symbol)):
        idx = by.get(s, [])
        cols = metrics.TradeColumns(pnl_all[idx], np.empty(0, np.int64), np.empty(0, np.int64))
        pnl = trades.pnl if len(idx) == len(trades) else [trades.pnl[i] for i in idx]
        start, last = data.closes_by_symbol.get(s, (None, None))
        stored = _stored_buy_and_hold(data, s)
        hold = (stored["buy_and_hold"] if "buy_and_hold" in stored
                else metrics.buy_and_hold_return([last], start) if start is not None and last is not None else None)
        rows.append({
            "symbol": s, "trades": len(idx), "win_rate": metrics.win_rate(cols),
            "pnl": float(sum(pnl)) if idx else 0.0,
            "expectancy": metrics.expectancy(cols), "profit_factor": metrics.profit_factor(cols),
            "commission": trades.commission.get(s, 0.0), "buy_and_hold": hold,
        })
    rows.sort(key=lambda r: (-r["trades"], r["symbol"]))
    return rows


def _visible(ns: np.ndarray, lo: int, hi: int, buckets: int) -> np.ndarray:
    """Indices (in time order) of the first mark in each of `buckets` equal slices of [lo, hi]:
    marks closer than a slice would be drawn on top of each other."""
    order = np.argsort(ns, kind="stable")
    slot = ((ns[order] - lo) / max(hi - lo, 1) * buckets).astype(np.int64)
    first = np.concatenate(([True], slot[1:] != slot[:-1])) if len(slot) else np.zeros(0, dtype=bool)
    return order[first]


def _trade_marks(data: RunData) -> list[svg.TradeMark]:
    """The chart's entry and exit markers, from the rows `load_run` picked (`_mark_rows`): each
    names the trade by its number in the run; an option combo's stand at the underlying's
    price and name the combo's credit."""
    marks = []
    tz = data.tz
    for t in data.marks:
        head = f"#{t['number']} {t['side']} {_fmt_qty(t['quantity'])} {t['symbol']}"
        if t["combo"]:
            head += " option combo" + (f", credit {t['credit']:.2f}" if _is_number(t.get("credit")) else "")
            entry_text = f"entry {fmt_ts(t['entry_ts'], tz=tz)}, underlying at {_num(t['entry_at'])}"
            exit_text = f"exit {fmt_ts(t['exit_ts'], tz=tz)}, underlying at {_num(t['exit_at'])}"
        else:
            entry_text = f"entry {fmt_ts(t['entry_ts'], tz=tz)} @ {t['entry_price']:.2f}"
            exit_text = f"exit {fmt_ts(t['exit_ts'], tz=tz)} @ {t['exit_price']:.2f}"
        if t["entry"] and _is_number(t["entry_at"]):
            marks.append(svg.TradeMark(pd.Timestamp(t["entry_ns"], tz="UTC"), float(t["entry_at"]), "entry",
                                       f"{head} {entry_text}" + (f" ({t['entry_rule']})" if t["entry_rule"] else "")))
        if t["exit"] and _is_number(t["exit_at"]):
            marks.append(svg.TradeMark(pd.Timestamp(t["exit_ns"], tz="UTC"), float(t["exit_at"]), "exit",
                                       f"{head} {exit_text}, pnl {t['pnl']:,.2f}"
                                       + (f" ({t['exit_reason'] or t['exit_rule']})"
                                          if t["exit_reason"] or t["exit_rule"] else "")))
    return marks


def _bar_ns(data: RunData) -> int:
    """One bar of the run in nanoseconds (its `bar`, else the curve's first step)."""
    from engine.market.bars import bar_seconds

    try:
        return int(bar_seconds(data.run.get("bar") or "") * 1e9)
    except ValueError:
        index = data.equity.index
        return int(index[1].value - index[0].value) if len(index) >= 2 else 0


def _curve(data: RunData) -> pd.Series:
    """The journal's equity curve from the starting cash (`metrics.from_starting_cash`: a point
    of the run's initial cash at the bar before the first), as the writer measured its
    figures; the journal's own points when the run has no initial cash."""
    equity = metrics._clean(data.equity)
    initial = data.run.get("initial_cash")
    if not _is_number(initial) or not len(equity):
        return equity
    return metrics.from_starting_cash(equity, float(initial), _bar_ns(data))


def _benchmark(data: RunData, curve: pd.Series) -> pd.Series | None:
    """Buy and hold of `data.bench_symbol` with the same starting capital over the curve's span
    (`metrics.buy_and_hold_curve`), bought at the writer's start price when the run stored one,
    else at the journal's first bar of the run (`_span_prices`). The journal's prices may be
    thinned on a long run: the curve's last point is still the last close."""
    bars = data.bench_bars
    if data.bench_symbol is None or bars is None or not len(bars) or not len(curve):
        return None
    start = _stored_buy_and_hold(data, data.bench_symbol).get("buy_and_hold_start_price")
    if not _is_number(start):
        start = data.closes_by_symbol.get(data.bench_symbol, (None, None))[0]
    return metrics.buy_and_hold_curve(curve, bars.index, bars["close"].to_numpy(dtype=float),
                                      float(start) if _is_number(start) else None)


def _summary(data: RunData, curve: pd.Series, bench: pd.Series | None,
             risk_free: float) -> tuple[dict[str, Any], bool]:
    """`metrics.summarize` of the curve from the starting cash (`_curve`) and the trades, with
    the equity figures the run's stored summary has taken from there (see FROM_RUN_SUMMARY;
    the daily-return figures only from a summary of that convention, those that depend on the
    risk-free rate only for a rate of 0); the curve's own figures are only computed when one of
    them is missing. Buy and hold, alpha and beta: the stored ones when they are of the same
    symbol, else from `bench`. Returns (summary, whether any was stored)."""
    stored = data.run.get("summary") or {}
    tz = data.tz
    usable = [k for k in FROM_RUN_SUMMARY if k in stored
              and ("returns_basis" in stored or k not in DAILY_RETURN_KEYS)
              and (risk_free == 0 or k not in RISK_FREE_KEYS)]
    equity = metrics._clean(data.equity)
    if all(k in usable for k in FROM_RUN_SUMMARY if k != "exposure"):
        summary = dict.fromkeys(metrics.EQUITY_KEYS)
    else:
        summary = metrics.equity_summary(curve, risk_free=risk_free, tz=tz)
    if len(equity):
        summary.update(start=equity.index[0], end=equity.index[-1])   # the run's first bar, not the cash before it
    trades = data.trades.columns()
    summary.update(metrics.trade_summary(trades))
    summary["exposure"] = (None if "exposure" in usable or len(equity) < 2
                           else metrics.exposure(trades, summary["start"], summary["end"]))
    for key in usable:
        summary[key] = stored[key]
    held = _stored_buy_and_hold(data, data.bench_symbol)
    summary["buy_and_hold"] = (held["buy_and_hold"] if "buy_and_hold" in held
                               else metrics.total_return(bench) if bench is not None else None)
    if "beta" in held and risk_free == 0:
        summary["alpha"], summary["beta"] = held.get("alpha"), held["beta"]
    else:
        summary["alpha"], summary["beta"] = (metrics.alpha_beta(curve, bench, risk_free=risk_free, tz=tz)
                                             if bench is not None else (None, None))
    since = metrics.benchmark_from(bench) if bench is not None else None
    summary["buy_and_hold_from"] = f"{since:%Y-%m-%d}" if since is not None else None
    summary["open_positions"] = stored.get("open_positions")
    summary["commission"] = data.trades.commission_total
    summary["net_pnl"] = float(sum(data.trades.pnl)) if len(data.trades) else None
    return summary, bool(usable)


SHORT_RUN_DAYS = 91   # annualised figures of a shorter run carry a caveat (as the CLI's summary does)


def _short_run_days(summary: dict) -> float | None:
    """The run's length in days when it is too short for annualised figures to mean much."""
    start, end = summary.get("start"), summary.get("end")
    if start is None or end is None:
        return None
    days = (pd.Timestamp(end) - pd.Timestamp(start)).total_seconds() / 86400.0
    return days if days < SHORT_RUN_DAYS else None


def _exit_reason_rows(data: RunData) -> tuple[list[dict], dict | None]:
    """The P&L-by-exit-reason table's rows and its total row (None without trades)."""
    rows = data.exit_reasons
    if not rows:
        return [], None
    n = sum(r["trades"] for r in rows)
    wins = sum(r["wins"] for r in rows)
    total = math.fsum(r["pnl"] for r in rows)
    for r in rows:
        r["share"] = r["trades"] / n if n else None
    return rows, {"trades": n, "wins": wins, "win_rate": wins / n if n else None, "pnl": total,
                  "average": total / n if n else None, "share": 1.0 if n else None}


def _zone_label(tz: str, start: Any, end: Any) -> str:
    """The timezone as the report names it: "America/New_York (UTC-05:00 / -04:00)", the UTC
    offsets it has over the run's span (its start, its end and the first of each month of its
    first year: daylight saving shows within a year)."""
    a, b = local_time(start, tz), local_time(end, tz)
    if a is None or b is None:
        return tz
    times = [a, b, *pd.date_range(a, min(b, a + pd.Timedelta(days=366)), freq="MS")]
    offsets = sorted({_offset(t.strftime("%z")) for t in times},
                     key=lambda z: (1 if z[0] == "+" else -1) * (int(z[1:3]) * 60 + int(z[4:6])))
    return f"{tz} (UTC{' / '.join(offsets)})"


def build_context(data: RunData, risk_free: float = 0.0) -> dict[str, Any]:
    """Everything the template shows, as plain values (escaping is the template's), and the
    trades table's rows as finished, escaped HTML (`trades_rows`)."""
    run = data.run
    tz = data.tz
    curve = _curve(data)
    bench = _benchmark(data, curve)
    summary, from_summary = _summary(data, curve, bench, risk_free)
    monthly = metrics.monthly_returns(curve, tz)
    dd = metrics.drawdown_series(curve)
    currency = run.get("currency") or ""
    equity_title = f"Equity ({currency})" if currency else "Equity"
    names = ("Strategy", f"Buy & hold {data.bench_symbol}")
    equity_svg = svg.equity_chart(curve, bench, title=equity_title, names=names, tz=tz)
    can_log = len(curve) > 0 and svg.positive(curve, bench)
    equity_log_svg = (svg.equity_chart(curve, bench, title=equity_title, names=names, log=True, tz=tz)
                      if can_log else "")
    drawdown_svg = svg.area_chart(dd, title="Drawdown", tz=tz)
    marks = _trade_marks(data)
    price_svg = (svg.price_chart(data.bars, marks, title=f"{data.symbol}: price, entries ▲ and exits ▼",
                                 tz=tz) if data.symbol else "")
    span = svg.price_span(data.bars, marks) if data.symbol and data.states else None
    states_svg = (svg.state_timeline(data.states, span, title=f"{data.symbol}: {', '.join(data.states)} over time",
                                     tz=tz) if span else "")
    pnl = data.trades.pnl
    histogram_svg = svg.histogram(pnl, title=f"Trade P&L ({currency})" if currency else "Trade P&L")
    shown = data.shown
    has_legs = any(data.legs)
    daily = summary["periods_per_year"] is not None and summary["periods_per_year"] <= 252
    months = [{"year": int(y), "cells": [None if pd.isna(row[m]) else float(row[m]) for m in range(1, 13)],
               "total": None if pd.isna(row["Year"]) else float(row["Year"])}
              for y, row in monthly.iterrows()]
    reasons, reasons_total = _exit_reason_rows(data)
    return {
        "run": run,
        "symbols": run.get("symbols") or sorted(set(data.trades.symbol)),
        "symbol": data.symbol,
        "bench_symbol": data.bench_symbol,
        "journal_name": data.path.name,
        "m": summary,
        "short_run_days": _short_run_days(summary),
        "currency": currency,
        "risk_free": risk_free,
        "from_summary": from_summary,
        "daily": daily,
        "tz": tz,
        "zone": _zone_label(tz, summary.get("start"), summary.get("end")),
        "equity_points": len(data.equity),
        "charts": {"equity": Markup(equity_svg), "equity_log": Markup(equity_log_svg),
                   "drawdown": Markup(drawdown_svg), "price": Markup(price_svg), "histogram": Markup(histogram_svg),
                   "states": Markup(states_svg)},
        "can_log": can_log,
        "months": months,
        "trades_shown": len(shown),
        "trades_rows": trades_rows(shown, data.legs, daily, tz, agents=bool(data.by_agent)),
        "has_agents": bool(data.by_agent),
        "has_states": any(r[len(TRADE_COLUMNS) + 1] for r in shown) if shown and len(shown[0]) > len(TRADE_COLUMNS)
        else False,
        "by_agent": data.by_agent,
        "by_state": data.by_state,
        "trades_total": len(data.trades),
        "has_legs": has_legs,
        "option_marks": sum(1 for t in data.marks if t["combo"]),
        "breakdown": _symbol_breakdown(data),
        "exit_reasons": reasons,
        "exit_total": reasons_total,
        "params": run.get("params") or {},
        "param_notes": _param_descriptions(run.get("strategy_text")),
        # (the process that ran it, host and pid, is the journal's to mark dead runs by: not a setting)
        "settings": {k: v for k, v in (run.get("settings") or {}).items() if k != "process"},
        "return_basis": ("of the margin held" if has_legs and all(data.legs) else
                         "of entry value (a combo's: of its margin)" if has_legs else "of entry value"),
        "counts": data.counts,
        "errors": data.errors,
    }


def _param_descriptions(text: str | None) -> dict[str, str]:
    """Each param's `description:` in the strategy as it was run (journaled with the run)."""
    import yaml

    try:
        data = yaml.safe_load(text or "")     # validated before the run: no alias bombs
    except yaml.YAMLError:
        return {}
    params = data.get("params") if isinstance(data, dict) else None
    return {str(k): str(v["description"]) for k, v in (params or {}).items()
            if isinstance(v, dict) and v.get("description")} if isinstance(params, dict) else {}


def render_report(journal_path: str | Path, run_id: str | None = None, symbol: str | None = None,
                  *, risk_free: float = 0.0) -> str:
    """The HTML report of one run (the newest when `run_id` is None) as a string.

    `symbol` picks the price chart's symbol (default: the most traded). `risk_free` is the annual
    rate for Sharpe and Sortino. Raises JournalError for a missing file, a file that is not a
    journal, or an unknown run."""
    with without_cyclic_gc():   # many rows, no cycles
        data = load_run(journal_path, run_id, symbol)
        template = _environment().get_template("report.html.j2")
        return template.render(**build_context(data, risk_free))


def write_report(journal_path: str | Path, out_path: str | Path, run_id: str | None = None,
                 symbol: str | None = None, *, risk_free: float = 0.0) -> Path:
    """Render the report and write it to `out_path` (UTF-8); returns the path written."""
    problem = report_path_problem(out_path, journal_path)
    if problem:
        raise ReportPathError(problem)
    text = render_report(journal_path, run_id, symbol, risk_free=risk_free)
    out = Path(out_path)
    out.write_text(text, encoding="utf-8")
    return out
