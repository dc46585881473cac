"""The metrics of a finished backtest, from its full-resolution equity curve (before thinning)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..runtime.backtest import Result
from . import metrics
from .why import decision_rows, top_reasons


def equity_series(result: Result) -> pd.Series:
    index = pd.DatetimeIndex(np.asarray(result.labels, dtype=np.int64).astype("datetime64[ns]")).tz_localize("UTC")
    return pd.Series(result.equity, index=index)


def _seconds(ns: np.ndarray) -> np.ndarray:
    """Times truncated to whole seconds, as the journal's timestamps are."""
    return ns - ns % 1_000_000_000


def trade_columns(result: Result) -> metrics.TradeColumns:
    trades = result.ledger.trades
    cols = getattr(trades, "columns", None)
    if cols is not None:   # the fast path keeps its trades as arrays
        pnl, entry, exit_ = cols["pnl"], cols["entry_time"], cols["exit_time"]
        ret = np.asarray(cols["return_pct"], dtype=float) / 100.0
    else:
        pnl = np.array([t.pnl for t in trades], dtype=float)
        entry = np.array([t.entry_time for t in trades], dtype=np.int64)
        exit_ = np.array([t.exit_time for t in trades], dtype=np.int64)
        ret = np.array([t.return_pct for t in trades], dtype=float) / 100.0
    return metrics.TradeColumns(np.asarray(pnl, dtype=float), _seconds(np.asarray(entry, dtype=np.int64)),
                                _seconds(np.asarray(exit_, dtype=np.int64)), ret)


from_starting_cash = metrics.from_starting_cash


def buy_and_hold(result: Result, symbol: str | None, equity: pd.Series) -> tuple[float | None, pd.Series | None]:
    """Buy and hold of `symbol` over the run's span (`metrics.buy_and_hold_curve`): bought with the
    starting cash at the open of the run's first bar (its close when it has no open), valued at
    each bar's close up to the run's last bar. Returns (start price, curve on `equity`'s
    index); (None, None) without bars of the symbol in the run."""
    if symbol not in result.bars or not len(result.times):
        return None, None
    b = result.bars[symbol]
    ends = np.asarray(b.end)
    lo = int(np.searchsorted(ends, result.times[0], side="left"))
    hi = int(np.searchsorted(ends, result.times[-1], side="right"))
    if hi <= lo:
        return None, None
    start_price = metrics.buy_and_hold_start(b.open[lo:hi], b.close[lo:hi])
    curve = metrics.buy_and_hold_curve(equity, np.asarray(b.start[lo:hi], dtype=np.int64), b.close[lo:hi],
                                       start_price)
    return start_price, curve


def summarize_result(result: Result, risk_free: float = 0.0) -> dict[str, Any]:
    """Every metric of the run, measured from the starting cash; positions still open count
    towards exposure up to the end. `bars` counts the bars of the run (from its start date),
    not the warm-up bars loaded before it. Buy and hold (and alpha and beta against it) is the
    run's first symbol over the same span as the equity curve (`buy_and_hold`); the daily
    returns are taken over calendar days in the strategy's timezone."""
    curve = equity_series(result)
    bar_ns = int(result.times[0] - result.labels[0]) if len(result.times) else 0
    equity = from_starting_cash(curve, float(result.runner.settings.cash), bar_ns)
    trades = trade_columns(result)
    end = int(_seconds(np.asarray(result.labels[-1:], dtype=np.int64))[0]) if len(result.labels) else None
    positions = list(result.ledger.positions.values())
    symbol = result.prepared.symbols[0] if result.prepared.symbols else None
    start_price, bench = buy_and_hold(result, symbol, equity)
    tz = result.prepared.timezone
    out = metrics.summarize(equity, trades, risk_free=risk_free, benchmark=bench, tz=tz)
    if len(curve):
        out["start"] = curve.index[0]                   # the run's first bar, not the point put before it
        if len(equity) > len(curve):
            if out.get("max_drawdown_start") == equity.index[0]:
                out["max_drawdown_start"] = curve.index[0]  # under water from the start: from the first bar
            out["exposure"] = metrics.exposure(trades, curve.index[0], curve.index[-1]) if len(curve) >= 2 else None
    if positions and end is not None and len(equity) >= 2:
        entries = _seconds(np.array([p.entry_time for p in positions], dtype=np.int64))
        spans = metrics.TradeColumns(np.concatenate((trades.pnl, np.zeros(len(positions)))),
                                     np.concatenate((trades.entry_ns, entries)),
                                     np.concatenate((trades.exit_ns, np.full(len(positions), end, dtype=np.int64))))
        out["exposure"] = metrics.exposure(spans, curve.index[0], curve.index[-1])
    out["open_positions"] = len(result.ledger.positions)
    out["final_cash"] = result.ledger.cash
    out["available_funds"] = result.available_funds
    fills = result.ledger.fills
    fcols = getattr(fills, "columns", None)
    out["commission"] = float(sum(fcols["commission"].tolist()) if fcols is not None
                              else sum(f.commission for f in fills))
    out["buy_and_hold_symbol"] = symbol
    out["buy_and_hold_start_price"] = start_price
    out["timezone"] = tz
    out["bars"] = _run_bars(result)
    out["warmup_bars"] = int(sum(len(b.end) for b in result.bars.values())) - out["bars"]
    skipped = [f.attrs["bad_bars"] for f in result.prepared.frames.values() if f.attrs.get("bad_bars")]
    out["bad_bars_skipped"] = int(sum(b["count"] for b in skipped))   # data.on_bad_bar: skip
    out["blocked"] = _blocked(result.runner.decisions)
    out["exits_blocked"] = _blocked(result.runner.decisions, "exit") if out["blocked"] else 0   # of them
    out["blocked_reasons"] = top_reasons(result.runner.decisions, kind="entry") \
        if out["blocked"] > out["exits_blocked"] else []
    out["exits_blocked_reasons"] = top_reasons(result.runner.decisions, kind="exit") if out["exits_blocked"] else []
    return {k: (v.isoformat() if isinstance(v, pd.Timestamp) else v) for k, v in out.items()}


def _run_bars(result: Result) -> int:
    """Bars of every traded symbol that close within the run (from its start date to its end)."""
    if not len(result.times):
        return 0
    first, last = int(result.times[0]), int(result.times[-1])
    total = 0
    for b in result.bars.values():
        ends = np.asarray(b.end)
        total += int(np.searchsorted(ends, last, side="right") - np.searchsorted(ends, first, side="left"))
    return total


def _blocked(decisions, kind: str | None = None) -> int:
    """How many entries or exits (or, with `kind`, only those of that kind) were blocked (from
    the columns when the records are kept so)."""
    return sum(1 for o, k, _ in decision_rows(decisions) if o == "blocked" and (kind is None or k == kind))
