"""One run of the journal -> one self-contained static HTML report.

The report reads only the journal. It has no external references: CSS and SVG charts are
inline, and the only script (optional) sorts the trades table. All text from the journal goes
through jinja2's autoescaping, except the trades table's rows: those are built in Python
(`trades_rows`, thousands of rows) with markupsafe's escaping, the same as jinja's; the SVG
fragments are built by `engine.report.svg`, which escapes its own text.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

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
                    "max_drawdown_recovered", "periods_per_year", "exposure")


# ---- reading the journal -----------------------------------------------------------------------

TRADE_COLUMNS = ("id", "symbol", "side", "quantity", "entry_ts", "entry_price", "exit_ts", "exit_price",
                 "bars_held", "pnl", "return_pct", "mae", "mfe", "commission", "entry_rule", "exit_rule",
                 "exit_reason", "legs")   # what the trades table shows (the first TRADES_TABLE_MAX rows)
MARK_COLUMNS = ("id", "side", "quantity", "symbol", "entry_ts", "entry_price", "exit_ts", "exit_price", "pnl",
                "entry_rule", "exit_rule", "exit_reason")   # what a chart mark's tooltip shows


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
    combo: np.ndarray           # bool: an option combo (has legs); not drawn on the underlying's chart
    commission: dict[str, float] = field(default_factory=dict)   # per symbol (SQLite's total())
    commission_total: float = 0.0

    def __len__(self) -> int:
        return len(self.id)

    def columns(self, idx: np.ndarray | None = None) -> metrics.TradeColumns:
        """pnl and entry/exit times for the metrics (of the rows `idx`, default all)."""
        pnl = np.array(self.pnl, dtype=float)
        if idx is None:
            return metrics.TradeColumns(pnl, self.entry_ns, self.exit_ns)
        return metrics.TradeColumns(pnl[idx], self.entry_ns[idx], self.exit_ns[idx])


@dataclass
class RunData:
    """What a report needs from one run, read from the journal."""
    path: Path
    run: dict
    equity: pd.Series
    trades: Trades
    symbol: str | None
    bars: pd.DataFrame
    closes_by_symbol: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)
    shown: list[tuple] = field(default_factory=list)  # the trades table's rows (TRADE_COLUMNS)
    legs: list[dict | None] = field(default_factory=list)   # option_legs of each shown row
    marks: list[dict] = field(default_factory=list)   # the chart marks' rows (MARK_COLUMNS + entry, exit)


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


def load_run(journal_path: str | Path, run_id: str | None = None, symbol: str | None = None) -> RunData:
    """Read one run (the newest when `run_id` is None) and the bars of `symbol` (default: the
    symbol with the most trades, else the run's first symbol).

    What SQLite adds up by itself (aggregates, no Python object per row: trades per symbol,
    commission sums, the run log's counts) runs on connections of its own in threads while this
    one reads rows, so with a second core it takes no time."""
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
        shown = db.execute(f"SELECT {', '.join(TRADE_COLUMNS)} FROM trades WHERE run_id=? ORDER BY entry_ts, id"
                           " LIMIT ?", (rid, TRADES_TABLE_MAX)).fetchall()
        legs = [option_legs(t[-1]) for t in shown]
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
        bars = _bars(db, rid, symbol) if symbol else _no_bars()
        marks = _mark_rows(db, trades, symbol, bars) if symbol else []
        traded = sorted(set(by_symbol) | set(run.get("symbols") or []) | set(price_symbols))
        closes = {s: _first_last_close(db, rid, s) for s in traded}
        try:
            agg = sums()
        except Exception:            # a second connection failed: the same queries on this one
            agg = _sums(db, rid)
        trades.commission, trades.commission_total = agg["commission"], agg["commission_total"]
        return RunData(Path(journal_path), run, equity, trades, symbol, bars, closes, agg["counts"], agg["errors"],
                       shown, legs, marks)
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
    }


def _trades(db: sqlite3.Connection, run_id: str, by_symbol: dict[str, tuple[int, int]]) -> Trades:
    """Every trade of the run as columns: one tuple per row of only the columns needed (the
    symbol and whether it is a combo only when the run has more than one symbol or a combo;
    `by_symbol`, trades and combos per symbol, tells)."""
    one = len(by_symbol) == 1 and not next(iter(by_symbol.values()))[1]
    columns = "id, pnl, entry_ts, exit_ts" + ("" if one else ", symbol, legs IS NOT NULL AND legs != ''")
    rows = db.execute(f"SELECT {columns} FROM trades WHERE run_id=? ORDER BY entry_ts, id", (run_id,)).fetchall()
    if not rows:
        return Trades([], [], [], np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, dtype=bool))
    if one:
        ids, pnl, entry_ts, exit_ts = zip(*rows)
        symbols, combo = [next(iter(by_symbol))] * len(ids), np.zeros(len(ids), dtype=bool)
    else:
        ids, pnl, entry_ts, exit_ts, symbols, combo = zip(*rows)
        symbols, combo = list(symbols), np.array(combo, dtype=bool)
    return Trades(list(ids), symbols, list(pnl), metrics.to_timestamps(entry_ts).as_unit("ns").asi8,
                  metrics.to_timestamps(exit_ts).as_unit("ns").asi8, combo)


def _mark_rows(db: sqlite3.Connection, trades: Trades, symbol: str, bars: pd.DataFrame,
               most: int | None = None) -> list[dict]:
    """The trades drawn on `symbol`'s price chart, each with `entry` and `exit` (whether that
    end gets a mark): every one when there are at most `most` marks, else the first of each
    kind per slice of the time axis (what can be seen apart). Option combos are priced per
    combo, not on the underlying's scale, and are left out."""
    most = MARKS_PER_CHART if most is None else most
    on_chart = np.flatnonzero(np.array([s == symbol for s in trades.symbol], dtype=bool) & ~trades.combo)
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
                   exit_ns=int(exit_ns[i]))
        rows.append(row)
    return rows


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


def _first_last_close(db: sqlite3.Connection, run_id: str, symbol: str) -> tuple[float | None, float | None]:
    q = "SELECT close FROM prices WHERE run_id=? AND symbol=? AND close IS NOT NULL ORDER BY ts {} LIMIT 1"
    first = db.execute(q.format("ASC"), (run_id, symbol)).fetchone()
    last = db.execute(q.format("DESC"), (run_id, symbol)).fetchone()
    return (first[0] if first else None, last[0] if last else None)


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
    return "—" if not _is_number(v) else f"{float(v) * 100:,.{digits}f}%"


def fmt_num(v: Any, digits: int = 2) -> str:
    return "—" if not _is_number(v) else f"{float(v):,.{digits}f}"


def fmt_ts(v: Any, date_only: bool = False) -> str:
    """ISO-8601 from the journal -> "2024-05-01 14:30" (UTC), or the date alone."""
    if v is None or v == "":
        return "—"
    if isinstance(v, pd.Timestamp):
        v = v.isoformat()
    text = str(v).replace("T", " ").removesuffix("Z").removesuffix("+00:00")
    if date_only:
        return text[:10]
    if text.endswith(" 00:00:00"):
        return text[:10]
    return text[:16] if len(text) >= 16 and text[16:19] in (":00", "") else text[:19]


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
        env.filters.update(qty=_fmt_qty, pct=fmt_pct, num=fmt_num, ts=fmt_ts, month_colour=month_colour,
                           json_text=_json_text)
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
    return f"{v:,.2f}" if type(v) is float and v - v == 0.0 else fmt_num(v)


def _ts_cell(v: Any, daily: bool) -> str:
    """`fmt_ts(v, daily)`, escaped, with a short way for the journal's "YYYY-MM-DDTHH:MM:SSZ"."""
    if type(v) is str and len(v) == 20 and v[10] == "T" and v[19] == "Z" and v[13] == ":" and v[16] == ":":
        if daily or v[11:19] == "00:00:00":
            text = v[:10]
        elif v[16:19] == ":00":
            text = v[:10] + " " + v[11:16]
        else:
            text = v[:10] + " " + v[11:19]
        return _esc(text)
    return _esc(fmt_ts(v, daily))


class _EscapedOnce(dict):
    """str -> its escaped text, each distinct string escaped once (symbols, sides and rule
    names repeat on every row); look-ups of known strings stay in C."""

    def __missing__(self, key: str) -> str:
        text = self[key] = _esc(key)
        return text


def trades_rows(rows: list[tuple], legs: list[dict | None], daily: bool) -> Markup:
    """The trades table's body: one `<tr>` per row (`rows`: tuples in TRADE_COLUMNS order;
    `legs`: `option_legs` of each, the Legs and Credit cells when any is a combo), as a loop in
    the template would write them. Built column by column (a backtest shows 2,000 rows of 16
    cells): text from the journal is escaped as jinja escapes it, each distinct string once;
    numbers are formatted by the template's filter functions. Returns Markup: the text is
    finished, escaped HTML."""
    if not rows:
        return Markup("")
    (ids, symbols, sides, quantity, entry_ts, entry_price, exit_ts, exit_price, bars_held, pnl, return_pct,
     mae, mfe, commission, entry_rule, exit_rule, exit_reason, _legs) = zip(*rows)
    once = _EscapedOnce()

    def text(col: tuple) -> list[str]:      # `{{ v }}`
        return [once[v] if type(v) is str else (repr(v) if type(v) is float or type(v) is int else _text(v))
                for v in col]

    def attr(col: tuple) -> list[str]:      # `{{ v if v is not none else '' }}`
        return [repr(v) if type(v) is float else ("" if v is None else _text(v)) for v in col]

    def num(col: tuple) -> list[str]:       # `{{ v | num }}`
        return [f"{v:,.2f}" if type(v) is float and v - v == 0.0 else fmt_num(v) for v in col]

    def signed(col: tuple, shown: list[str]) -> list[str]:   # the template's `signed` macro
        return [f'<span class="{"pos" if v is not None and v > 0 else ("neg" if v is not None and v < 0 else "")}">'
                f'{t}</span>' for v, t in zip(col, shown)]

    exits = [r or e for r, e in zip(exit_reason, exit_rule)]
    columns = (text(ids), text(symbols), text(sides), text(quantity), [once[_fmt_qty(q)] for q in quantity],
               [_ts_cell(v, daily) for v in entry_ts], text(entry_price), num(entry_price),
               [_ts_cell(v, daily) for v in exit_ts], text(exit_price), num(exit_price),
               text(bars_held), text(pnl), signed(pnl, num(pnl)),
               text(return_pct), signed(return_pct, [fmt_pct(v / 100) for v in return_pct]),
               attr(mae), num(mae), attr(mfe), num(mfe), text(commission), num(commission),
               text(entry_rule), text(exits))
    out = [f'      <tr><td data-v="{i}">{i}</td><td class="l">{sy}</td><td class="l">{sd}</td>'
           f'<td data-v="{qv}">{qt}</td>\n'
           f'        <td class="l">{et}</td><td data-v="{epv}">{ept}</td>\n'
           f'        <td class="l">{xt}</td><td data-v="{xpv}">{xpt}</td>\n'
           f'        <td data-v="{b}">{b}</td><td data-v="{pv}">{pt}</td>\n'
           f'        <td data-v="{rv}">{rt}</td>\n'
           f'        <td data-v="{aev}">{aet}</td><td data-v="{fev}">{fet}</td>\n'
           f'        <td data-v="{cv}">{ct}</td>\n'
           f'        <td class="l">{er}</td><td class="l">{xr}</td>\n'
           for (i, sy, sd, qv, qt, et, epv, ept, xt, xpv, xpt, b, pv, pt, rv, rt, aev, aet, fev, fet, cv, ct, er, xr)
           in zip(*columns)]
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


def _buy_and_hold(data: RunData, symbol: str | None, closes) -> float | None:
    """Buy and hold of `symbol` over the run: the writer's own figure (from every bar since the
    start date) when the run's stored summary has it for that symbol, else from the journal's
    prices, which may be thinned and may begin before the start date."""
    stored = data.run.get("summary") or {}
    if symbol is not None and stored.get("buy_and_hold_symbol") == symbol and "buy_and_hold" in stored:
        return stored["buy_and_hold"]
    return metrics.buy_and_hold_return(closes) if closes is not None else None


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
        first, last = data.closes_by_symbol.get(s, (None, None))
        rows.append({
            "symbol": s, "trades": len(idx), "win_rate": metrics.win_rate(cols),
            "pnl": float(sum(pnl)) if idx else 0.0,
            "expectancy": metrics.expectancy(cols), "profit_factor": metrics.profit_factor(cols),
            "commission": trades.commission.get(s, 0.0),
            "buy_and_hold": _buy_and_hold(data, s, [first, last] if first is not None and last is not None else None),
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
    """The chart's entry and exit markers, from the rows `load_run` picked (`_mark_rows`)."""
    marks = []
    for t in data.marks:
        head = f"#{t['id']} {t['side']} {_fmt_qty(t['quantity'])} {t['symbol']}"
        if t["entry"]:
            marks.append(svg.TradeMark(pd.Timestamp(t["entry_ns"], tz="UTC"), float(t["entry_price"]), "entry",
                                       f"{head} entry {fmt_ts(t['entry_ts'])} @ {t['entry_price']:.2f}"
                                       + (f" ({t['entry_rule']})" if t["entry_rule"] else "")))
        if t["exit"]:
            marks.append(svg.TradeMark(pd.Timestamp(t["exit_ns"], tz="UTC"), float(t["exit_price"]), "exit",
                                       f"{head} exit {fmt_ts(t['exit_ts'])} @ {t['exit_price']:.2f}, pnl {t['pnl']:,.2f}"
                                       + (f" ({t['exit_reason'] or t['exit_rule']})"
                                          if t["exit_reason"] or t["exit_rule"] else "")))
    return marks


def _summary(data: RunData, closes: np.ndarray | None, risk_free: float) -> tuple[dict[str, Any], bool]:
    """`metrics.summarize` of the journal's curve and trades, with the equity figures the run's
    stored summary has taken from there (see FROM_RUN_SUMMARY); the curve's own figures are
    only computed when one of them is missing. Returns (summary, whether any was stored)."""
    stored = data.run.get("summary") or {}
    from_summary = [k for k in FROM_RUN_SUMMARY if k in stored and (risk_free == 0 or k not in ("sharpe", "sortino"))]
    equity = metrics._clean(data.equity)
    if all(k in from_summary for k in FROM_RUN_SUMMARY if k != "exposure"):
        summary = dict.fromkeys(metrics.EQUITY_KEYS)
        if len(equity):
            summary.update(start=equity.index[0], end=equity.index[-1])
    else:
        summary = metrics.equity_summary(equity, risk_free=risk_free)
    trades = data.trades.columns()
    summary.update(metrics.trade_summary(trades))
    summary["exposure"] = (None if "exposure" in from_summary or len(equity) < 2
                           else metrics.exposure(trades, summary["start"], summary["end"]))
    summary["buy_and_hold"] = _buy_and_hold(data, data.symbol, closes)
    for key in from_summary:
        summary[key] = stored[key]
    summary["open_positions"] = stored.get("open_positions")
    summary["commission"] = data.trades.commission_total
    summary["net_pnl"] = float(sum(data.trades.pnl)) if len(data.trades) else None
    return summary, bool(from_summary)


SHORT_RUN_DAYS = 91   # annualised figures of a shorter run carry a caveat (as the CLI's summary does)


def _short_run_days(summary: dict) -> float | None:
    """The run's length in days when it is too short for annualised figures to mean much."""
    start, end = summary.get("start"), summary.get("end")
    if start is None or end is None:
        return None
    days = (pd.Timestamp(end) - pd.Timestamp(start)).total_seconds() / 86400.0
    return days if days < SHORT_RUN_DAYS else None


def build_context(data: RunData, risk_free: float = 0.0) -> dict[str, Any]:
    """Everything the template shows, as plain values (escaping is the template's), and the
    trades table's rows as finished, escaped HTML (`trades_rows`)."""
    run = data.run
    equity = data.equity
    closes = data.bars["close"].to_numpy(dtype=float) if len(data.bars) else None
    summary, from_summary = _summary(data, closes, risk_free)
    monthly = metrics.monthly_returns(equity)
    dd = metrics.drawdown_series(equity)
    currency = run.get("currency") or ""
    equity_svg = svg.line_chart(equity, title=f"Equity ({currency})" if currency else "Equity")
    drawdown_svg = svg.area_chart(dd, title="Drawdown")
    price_svg = (svg.price_chart(data.bars, _trade_marks(data), title=f"{data.symbol}: price, entries ▲ and exits ▼")
                 if data.symbol else "")
    shown = data.shown
    has_legs = any(data.legs)
    daily = summary["periods_per_year"] is not None and summary["periods_per_year"] <= 252
    months = [{"year": int(y), "cells": [None if pd.isna(row[m]) else float(row[m]) for m in range(1, 13)],
               "total": None if pd.isna(row["Year"]) else float(row["Year"])}
              for y, row in monthly.iterrows()]
    return {
        "run": run,
        "symbols": run.get("symbols") or sorted(set(data.trades.symbol)),
        "symbol": data.symbol,
        "journal_name": data.path.name,
        "m": summary,
        "short_run_days": _short_run_days(summary),
        "currency": currency,
        "risk_free": risk_free,
        "from_summary": from_summary,
        "daily": daily,
        "equity_points": len(equity),
        "charts": {"equity": Markup(equity_svg), "drawdown": Markup(drawdown_svg), "price": Markup(price_svg)},
        "months": months,
        "trades_shown": len(shown),
        "trades_rows": trades_rows(shown, data.legs, daily),
        "trades_total": len(data.trades),
        "has_legs": has_legs,
        "breakdown": _symbol_breakdown(data),
        "params": run.get("params") or {},
        "param_notes": _param_descriptions(run.get("strategy_text")),
        "settings": run.get("settings") or {},
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
