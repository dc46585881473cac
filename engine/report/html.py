"""One run of the journal -> one self-contained static HTML report.

The report reads only the journal. It has no external references: CSS and SVG charts are
inline, and the only script (optional) sorts the trades table. All text from the journal goes
through jinja2's autoescaping; the SVG fragments are built by `engine.report.svg`, which
escapes its own text.

Option trades: the trades table's `legs` column is JSON, either a list of legs or an object
``{"legs": [...], "credit": x}``. A leg is an object with any of ``name, action (buy|sell),
right (put|call|P|C), strike, expiry, ratio (or quantity), price``. The report shows the legs
and the credit: the object's `credit` when present, else ``sum(+price for sold legs, -price for
bought legs) * ratio`` over the legs that carry a price (per unit, not multiplied).
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from engine.runtime.journal import Journal, JournalError
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

@dataclass
class RunData:
    """What a report needs from one run, read from the journal."""
    path: Path
    run: dict
    equity: pd.Series
    trades: list[dict]
    symbol: str | None
    bars: pd.DataFrame
    closes_by_symbol: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)


def open_journal(journal_path: str | Path) -> Journal:
    """Open an existing journal for reading; JournalError when it is missing or not a journal."""
    path = Path(journal_path)
    if not path.exists():
        raise JournalError(f"{path}: no such journal file")
    if not path.is_file():
        raise JournalError(f"{path}: not a file")
    return Journal(path)


def load_run(journal_path: str | Path, run_id: str | None = None, symbol: str | None = None) -> RunData:
    """Read one run (the newest when `run_id` is None) and the bars of `symbol` (default: the
    symbol with the most trades, else the run's first symbol)."""
    journal = open_journal(journal_path)
    try:
        try:
            run = journal.run(run_id)
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{journal.path}: not a readable journal ({exc})") from None
        rid = run["run_id"]
        db = journal.db
        ts, values = _series(db, "SELECT group_concat(ts, ','), group_concat(quote(equity), ',')"
                                 " FROM equity WHERE run_id=?", (rid,))
        equity = metrics.equity_series(ts, values)
        trades = journal.table("trades", rid, order="entry_ts, id")
        for t in trades:
            t["legs_view"] = option_legs(t.get("legs"))
        price_symbols = [r[0] for r in db.execute(
            "SELECT DISTINCT symbol FROM prices WHERE run_id=?", (rid,))]
        symbol = symbol or default_symbol(trades, run.get("symbols") or [], price_symbols)
        bars = _bars(db, rid, symbol) if symbol else _no_bars()
        traded = sorted({t["symbol"] for t in trades} | set(run.get("symbols") or []) | set(price_symbols))
        closes = {s: _first_last_close(db, rid, s) for s in traded}
        counts = {
            "orders": dict(db.execute("SELECT status, COUNT(*) FROM orders WHERE run_id=? GROUP BY status",
                                      (rid,)).fetchall()),
            "fills": db.execute("SELECT COUNT(*) FROM fills WHERE run_id=?", (rid,)).fetchone()[0],
            "decisions": dict(db.execute("SELECT outcome, COUNT(*) FROM decisions WHERE run_id=? GROUP BY outcome",
                                         (rid,)).fetchall()),
            "errors": db.execute("SELECT COUNT(*) FROM errors WHERE run_id=?", (rid,)).fetchone()[0],
        }
        errors = [dict(zip(("ts", "source", "message"), r)) for r in db.execute(
            "SELECT ts, source, message FROM errors WHERE run_id=? ORDER BY id DESC LIMIT ?", (rid, ERRORS_SHOWN))]
        return RunData(Path(journal_path), run, equity, trades, symbol, bars, closes, counts, errors)
    finally:
        journal.close()


def default_symbol(trades: list[dict], run_symbols: list[str], price_symbols: list[str]) -> str | None:
    """The most traded symbol (ties: the first in the run's symbol list, then by name); without
    trades, the run's first symbol with prices, else its first symbol, else any with prices."""
    if trades:
        count = Counter(t["symbol"] for t in trades)
        order = {s: i for i, s in enumerate(run_symbols)}
        return min(count, key=lambda s: (-count[s], order.get(s, len(order)), s))
    for s in run_symbols:
        if s in price_symbols:
            return s
    if run_symbols:
        return run_symbols[0]
    return sorted(price_symbols)[0] if price_symbols else None


def _no_bars() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=float) for c in ("open", "high", "low", "close")},
                        index=pd.DatetimeIndex([], tz="UTC"))


def _series(db: sqlite3.Connection, sql: str, args: tuple) -> tuple[list[str], np.ndarray]:
    """(timestamps, values) from a query of `group_concat(ts), group_concat(quote(value))`.

    One string per column keeps a million-row read to a fraction of the time of a million
    Python tuples; `quote` prints a REAL with 20 significant digits, so values come back to
    the last bit or one unit off it. Both columns come from the same rows in the same order."""
    ts_text, value_text = db.execute(sql, args).fetchone()
    if not ts_text:
        return [], np.array([], dtype=float)
    ts = ts_text.split(",")
    try:
        values = np.array([v if v != "NULL" else "nan" for v in value_text.split(",")], dtype=float) \
            if "NULL" in value_text else np.array(value_text.split(","), dtype=float)
    except ValueError:
        raise JournalError(f"a non-numeric value in the journal ({sql.split('FROM')[1].split()[0]})") from None
    if len(ts) != len(values):
        raise JournalError("timestamps with commas in the journal")
    return ts, values


def _bars(db: sqlite3.Connection, run_id: str, symbol: str) -> pd.DataFrame:
    """The symbol's bars: all of OHLC when there are few (the chart draws OHLC bars), else the
    closes alone (the chart draws a thinned close line)."""
    n = db.execute("SELECT COUNT(*) FROM prices WHERE run_id=? AND symbol=?", (run_id, symbol)).fetchone()[0]
    if n == 0:
        return _no_bars()
    if n > svg.OHLC_MAX_BARS:
        ts, close = _series(db, "SELECT group_concat(ts, ','), group_concat(quote(close), ',')"
                                " FROM prices WHERE run_id=? AND symbol=?", (run_id, symbol))
        frame = pd.DataFrame({"close": close}, index=metrics.to_timestamps(ts))
        return frame.sort_index(kind="stable") if not frame.index.is_monotonic_increasing else frame
    rows = db.execute("SELECT ts, open, high, low, close FROM prices WHERE run_id=? AND symbol=? ORDER BY ts",
                      (run_id, symbol)).fetchall()
    frame = pd.DataFrame([r[1:] for r in rows], columns=["open", "high", "low", "close"], dtype=float)
    frame.index = metrics.to_timestamps([r[0] for r in rows])
    return frame


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


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(qty=_fmt_qty, pct=fmt_pct, num=fmt_num, ts=fmt_ts, month_colour=month_colour, json_text=_json_text)
    return env


# ---- the report --------------------------------------------------------------------------------

MARKS_PER_CHART = 500      # trade markers drawn on the price chart at most (every one when fewer)


def trade_columns(trades: list[dict]) -> metrics.TradeColumns:
    """The journal's trade rows as arrays (pnl, entry and exit ns) for the metrics."""
    if not trades:
        return metrics.TradeColumns(np.empty(0), np.empty(0, np.int64), np.empty(0, np.int64))
    pnl = np.array([t["pnl"] for t in trades], dtype=float)
    entry = metrics.to_timestamps([t["entry_ts"] for t in trades]).as_unit("ns").asi8
    exit_ = metrics.to_timestamps([t["exit_ts"] for t in trades]).as_unit("ns").asi8
    return metrics.TradeColumns(pnl, entry, exit_)


def _symbol_breakdown(data: RunData) -> list[dict]:
    by: dict[str, list[int]] = {}
    for i, t in enumerate(data.trades):
        by.setdefault(t["symbol"], []).append(i)
    pnl_all = np.array([t["pnl"] for t in data.trades], dtype=float)
    rows = []
    for s in sorted(set(by) | set(data.closes_by_symbol)):
        idx = by.get(s, [])
        cols = metrics.TradeColumns(pnl_all[idx], np.empty(0, np.int64), np.empty(0, np.int64))
        first, last = data.closes_by_symbol.get(s, (None, None))
        rows.append({
            "symbol": s, "trades": len(idx), "win_rate": metrics.win_rate(cols),
            "pnl": float(sum(data.trades[i]["pnl"] for i in idx)) if idx else 0.0,
            "expectancy": metrics.expectancy(cols), "profit_factor": metrics.profit_factor(cols),
            "commission": float(sum(data.trades[i].get("commission") or 0 for i in idx)),
            "buy_and_hold": metrics.buy_and_hold_return([first, last]) if first is not None and last is not None else None,
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


def _trade_marks(data: RunData, most: int = MARKS_PER_CHART) -> list[svg.TradeMark]:
    """Entry and exit markers of the chart's symbol: every one when there are at most `most`,
    else the first of each kind per slice of the time axis (what can be seen apart)."""
    rows = [t for t in data.trades if t["symbol"] == data.symbol and not t.get("legs_view")]
    # option combos are priced per combo, not on the underlying's scale
    if not rows:
        return []
    entry_ns = metrics.to_timestamps([t["entry_ts"] for t in rows]).as_unit("ns").asi8
    exit_ns = metrics.to_timestamps([t["exit_ts"] for t in rows]).as_unit("ns").asi8
    keep_entry = keep_exit = None
    if 2 * len(rows) > most:
        times = data.bars.index.as_unit("ns").asi8 if len(data.bars) else np.empty(0, np.int64)
        lo = int(min(entry_ns.min(), exit_ns.min(), times.min() if len(times) else entry_ns.min()))
        hi = int(max(entry_ns.max(), exit_ns.max(), times.max() if len(times) else exit_ns.max()))
        keep_entry = set(_visible(entry_ns, lo, hi, most // 2).tolist())
        keep_exit = set(_visible(exit_ns, lo, hi, most // 2).tolist())
    marks = []
    for i, t in enumerate(rows):
        head = None
        if keep_entry is None or i in keep_entry:
            head = f"#{t['id']} {t['side']} {_fmt_qty(t['quantity'])} {t['symbol']}"
            marks.append(svg.TradeMark(pd.Timestamp(int(entry_ns[i]), tz="UTC"), float(t["entry_price"]), "entry",
                                       f"{head} entry {fmt_ts(t['entry_ts'])} @ {t['entry_price']:.2f}"
                                       + (f" ({t['entry_rule']})" if t.get("entry_rule") else "")))
        if keep_exit is None or i in keep_exit:
            head = head or f"#{t['id']} {t['side']} {_fmt_qty(t['quantity'])} {t['symbol']}"
            marks.append(svg.TradeMark(pd.Timestamp(int(exit_ns[i]), tz="UTC"), float(t["exit_price"]), "exit",
                                       f"{head} exit {fmt_ts(t['exit_ts'])} @ {t['exit_price']:.2f}, pnl {t['pnl']:,.2f}"
                                       + (f" ({t['exit_reason'] or t['exit_rule']})"
                                          if t.get("exit_reason") or t.get("exit_rule") else "")))
    return marks


def build_context(data: RunData, risk_free: float = 0.0) -> dict[str, Any]:
    """Everything the template shows, as plain values (escaping is the template's)."""
    run = data.run
    equity = data.equity
    closes = data.bars["close"].to_numpy(dtype=float) if len(data.bars) else None
    summary = metrics.summarize(equity, trade_columns(data.trades), risk_free=risk_free, closes=closes)
    stored = run.get("summary") or {}
    from_summary = [k for k in FROM_RUN_SUMMARY if k in stored and (risk_free == 0 or k not in ("sharpe", "sortino"))]
    for key in from_summary:
        summary[key] = stored[key]
    summary["open_positions"] = stored.get("open_positions")
    summary["commission"] = float(sum(t.get("commission") or 0 for t in data.trades))
    summary["net_pnl"] = float(sum(t["pnl"] for t in data.trades)) if data.trades else None
    monthly = metrics.monthly_returns(equity)
    dd = metrics.drawdown_series(equity)
    currency = run.get("currency") or ""
    equity_svg = svg.line_chart(equity, title=f"Equity ({currency})" if currency else "Equity")
    drawdown_svg = svg.area_chart(dd, title="Drawdown")
    price_svg = (svg.price_chart(data.bars, _trade_marks(data), title=f"{data.symbol}: price, entries ▲ and exits ▼")
                 if data.symbol else "")
    shown = data.trades[:TRADES_TABLE_MAX]
    has_legs = any(t.get("legs_view") for t in shown)
    months = [{"year": int(y), "cells": [None if pd.isna(row[m]) else float(row[m]) for m in range(1, 13)],
               "total": None if pd.isna(row["Year"]) else float(row["Year"])}
              for y, row in monthly.iterrows()]
    return {
        "run": run,
        "symbols": run.get("symbols") or sorted({t["symbol"] for t in data.trades}),
        "symbol": data.symbol,
        "journal_name": data.path.name,
        "m": summary,
        "currency": currency,
        "risk_free": risk_free,
        "from_summary": bool(from_summary),
        "daily": summary["periods_per_year"] is not None and summary["periods_per_year"] <= 252,
        "equity_points": len(equity),
        "charts": {"equity": Markup(equity_svg), "drawdown": Markup(drawdown_svg), "price": Markup(price_svg)},
        "months": months,
        "trades": shown,
        "trades_total": len(data.trades),
        "has_legs": has_legs,
        "breakdown": _symbol_breakdown(data),
        "params": run.get("params") or {},
        "settings": run.get("settings") or {},
        "counts": data.counts,
        "errors": data.errors,
    }


def render_report(journal_path: str | Path, run_id: str | None = None, symbol: str | None = None,
                  *, risk_free: float = 0.0) -> str:
    """The HTML report of one run (the newest when `run_id` is None) as a string.

    `symbol` picks the price chart's symbol (default: the most traded). `risk_free` is the annual
    rate for Sharpe and Sortino. Raises JournalError for a missing file, a file that is not a
    journal, or an unknown run."""
    data = load_run(journal_path, run_id, symbol)
    template = _environment().get_template("report.html.j2")
    return template.render(**build_context(data, risk_free))


def write_report(journal_path: str | Path, out_path: str | Path, run_id: str | None = None,
                 symbol: str | None = None, *, risk_free: float = 0.0) -> Path:
    """Render the report and write it to `out_path` (UTF-8); returns the path written."""
    text = render_report(journal_path, run_id, symbol, risk_free=risk_free)
    out = Path(out_path)
    out.write_text(text, encoding="utf-8")
    return out
