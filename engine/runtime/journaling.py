"""A finished run as journal rows: orders, decisions, fills, trades, the (thinned) equity curve and
prices, the positions left open; timestamps formatted in bulk, rows written with executemany."""

from __future__ import annotations

from typing import TYPE_CHECKING

import json

import numpy as np
import pandas as pd

from ..market.series import SymbolBars
from .journal import Journal

from .equity import sorted_unique

if TYPE_CHECKING:
    from .backtest import Result
    from .prepare import Prepared


def write_journal(result: Result, journal: Journal, mode: str = "backtest", *, incremental: bool = False) -> None:
    """Everything about the run, in the shared journal (timestamps formatted in bulk, rows
    inserted with executemany, without fsyncs: see Journal.bulk). `incremental`: the run was
    started in the journal and its orders, fills and decisions journaled as they happened (a
    Recorder); this adds the rest (trades, equity, prices, positions)."""
    with journal.bulk():
        _write_journal(result, journal, mode, incremental)


def start_run(prep: Prepared, journal: Journal, mode: str, run_id: str, cash: float) -> None:
    journal.start_run(mode, prep.plan.name, strategy_path=str(prep.path),
                      strategy_text=prep.doc.text, params=prep.plan.params,
                      settings={**prep.settings, "data": str(prep.data_path), "timezone": prep.timezone,
                                "overrides": prep.overrides,
                                # what the run's fills cost, said even when nothing ("none")
                                "commission": prep.sim.commission.describe(),
                                "slippage": prep.sim.slippage.describe()},
                      # a scanner's universe may name symbols without bars: the run trades the others
                      symbols=[s for s in prep.symbols if s not in prep.missing], bar=prep.bar,
                      currency=prep.settings.get("currency", "USD"),
                      initial_cash=cash, run_id=run_id)


def _write_journal(result: Result, journal: Journal, mode: str, incremental: bool) -> None:
    prep = result.prepared
    run_id = result.run_id
    runner = result.runner
    if not incremental:
        start_run(prep, journal, mode, run_id, result.ledger.initial_cash)
        fast_rows = getattr(runner, "journal_rows", None)
        if fast_rows is not None:   # the fast path's records, as rows
            for table, (columns, rows) in fast_rows(run_id, iso_many).items():
                journal.many(table, columns, rows)
        else:
            _journal_tables(journal, *_record_rows(result))
    else:
        journal.many("trades", _TRADE_COLUMNS, _record_rows(result)[3])
    idx = _thin_indices(result.equity, 10_000)
    journal.many("equity", ("run_id", "ts", "cash", "equity"),
                 zip([run_id] * len(idx), iso_many(result.labels[idx]), result.cash[idx].tolist(),
                     result.equity[idx].tolist()))
    for symbol, b in result.bars.items():
        start, o, h, lo, c = _thin_bars(b, 4_000)
        journal.many("prices", ("run_id", "symbol", "ts", "open", "high", "low", "close"),
                     zip([run_id] * len(start), [symbol] * len(start), iso_many(start), o.tolist(), h.tolist(),
                         lo.tolist(), c.tolist()))
    journal.many("states", ("run_id", "symbol", "name", "ts", "label"), _state_rows(result))
    end_ts = _iso(int(result.labels[-1])) if len(result.labels) else _iso(0)
    journal.many("positions", ("run_id", "ts", "symbol", "quantity", "avg_price", "market_price", "owner"),
                 ((run_id, end_ts, p.symbol, p.quantity, p.avg_price, result.marks.get(s), p.owner or "")
                  for s, p in result.ledger.positions.items()))


_ORDER_COLUMNS = ("run_id", "order_ref", "ts", "symbol", "action", "quantity", "order_type", "limit_price",
                  "stop_price", "tif", "rule", "intent", "legs", "status", "status_ts", "reason", "local_symbol",
                  "owner")
_DECISION_COLUMNS = ("run_id", "ts", "symbol", "rule", "kind", "outcome", "reason", "detail", "agent", "confidence")
_FILL_COLUMNS = ("run_id", "order_ref", "ts", "symbol", "action", "quantity", "price", "multiplier", "commission",
                 "local_symbol")
_TRADE_COLUMNS = ("run_id", "symbol", "side", "quantity", "multiplier", "entry_ts", "entry_price", "exit_ts",
                  "exit_price", "pnl", "return_pct", "bars_held", "mae", "mfe", "commission", "entry_rule", "exit_rule",
                  "exit_reason", "legs", "local_symbol", "owner", "entry_states")


def _journal_tables(journal: Journal, orders: list, decisions: list, fills: list, trades: list) -> None:
    journal.many("orders", _ORDER_COLUMNS, orders)
    journal.many("decisions", _DECISION_COLUMNS, decisions)
    journal.many("fills", _FILL_COLUMNS, fills)
    journal.many("trades", _TRADE_COLUMNS, trades)


def _record_rows(result: Result) -> tuple[list, list, list, list]:
    """The run's orders, decisions, fills and trades as journal rows."""
    run_id = result.run_id
    runner = result.runner
    orders = runner.orders
    ts = iso_many([rec.time for rec in orders])
    status_ts = iso_many([rec.status_time for rec in orders])
    order_rows = []
    for rec, t, st in zip(orders, ts, status_ts):
        it = rec.intent
        # the row as journal.order() then journal.order_status() would leave it
        order_rows.append((run_id, it.tag, t, it.symbol, it.action, it.quantity or 0.0, it.order_type, it.limit,
                           it.stop, it.tif, it.rule, it.intent, json.dumps(rec.legs) if rec.legs is not None else None,
                           rec.status, st if rec.status_time else t, rec.reason or it.reason, rec.contract or None,
                           rec.owner))
    decisions = runner.decisions
    decision_rows = [(run_id, t, d.symbol, d.rule, d.kind, d.outcome, d.reason, d.detail, d.agent, d.confidence)
                     for d, t in zip(decisions, iso_many([d.time for d in decisions]))]
    fills = result.ledger.fills
    fill_rows = [(run_id, f.order_ref, t, f.symbol, f.action, f.quantity, f.price, f.multiplier, f.commission,
                  f.contract or None) for f, t in zip(fills, iso_many([f.time for f in fills]))]
    trades = result.ledger.trades
    entry_ts = iso_many([t.entry_time for t in trades])
    exit_ts = iso_many([t.exit_time for t in trades])
    trade_rows = [(run_id, t.symbol, t.side, t.quantity, t.multiplier, a, t.entry_price, b, t.exit_price, t.pnl,
                   t.return_pct, t.exit_bar - t.entry_bar, t.mae, t.mfe, t.commission, t.entry_rule, t.exit_rule,
                   t.exit_reason, json.dumps(t.legs, default=str) if t.legs else None, t.contract or None, t.owner,
                   json.dumps(dict(t.entry_states)) if t.entry_states else None)
                  for t, a, b in zip(trades, entry_ts, exit_ts)]
    return order_rows, decision_rows, fill_rows, trade_rows


def _state_rows(result: Result) -> list[tuple]:
    """Each classification's label per symbol at the bars where it changes ('' where no case
    holds: a stretch with no label)."""
    plan = result.prepared.plan
    classes = [(key.split(".", 1)[1], node) for key, node in plan.outputs.items() if key.startswith("classify.")]
    signals = getattr(result.runner, "signals", {}) or {}
    rows = []
    for symbol, b in result.bars.items():
        sig = signals.get(symbol)
        if sig is None or not classes or not len(b):
            continue
        for name, node in classes:
            v = sig.values[node]
            labels = np.asarray(v, dtype=object)[:len(b)] if np.ndim(v) else np.full(len(b), v, dtype=object)
            labels = np.array(["" if x is None else str(x) for x in labels.tolist()], dtype=object)
            change = np.flatnonzero(np.concatenate(([True], labels[1:] != labels[:-1])))
            rows.extend(zip([result.run_id] * len(change), [symbol] * len(change), [name] * len(change),
                            iso_many(b.start[change]), labels[change].tolist()))
    return rows


def _iso(ns: int) -> str:
    return pd.Timestamp(ns, tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_many(ns) -> list[str]:
    """`_iso` of many UTC nanosecond times at once ("2024-05-01T14:30:00Z", seconds truncated)."""
    values = np.asarray(ns, dtype=np.int64)
    if not len(values):
        return []
    text = np.datetime_as_string(values.astype("datetime64[ns]").astype("datetime64[s]"), unit="s")
    return [t + "Z" for t in text.tolist()]


def _thin_indices(values: np.ndarray, target: int) -> np.ndarray:
    """Indices keeping each bucket's first, lowest, highest and last point (the shape survives)."""
    n = len(values)
    if n <= target:
        return np.arange(n)
    buckets = max(1, target // 4)
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)
    keep = [edges[:-1], edges[1:] - 1]
    starts = edges[:-1]
    keep.append(starts + _argreduce(values, edges, np.argmin))
    keep.append(starts + _argreduce(values, edges, np.argmax))
    return sorted_unique(np.concatenate(keep))


def _argreduce(values: np.ndarray, edges: np.ndarray, fn) -> np.ndarray:
    return np.array([fn(values[a:b]) for a, b in zip(edges[:-1], edges[1:])], dtype=np.int64)


def _thin_bars(b: SymbolBars, target: int):
    """OHLC bars merged into at most `target` buckets (first open, max high, min low, last close)."""
    n = len(b)
    if n <= target:
        return b.start, b.open, b.high, b.low, b.close
    edges = np.linspace(0, n, target + 1).astype(np.int64)[:-1]
    return (b.start[edges], b.open[edges], np.maximum.reduceat(b.high, edges), np.minimum.reduceat(b.low, edges),
            b.close[np.append(edges[1:] - 1, n - 1)])
