"""The metrics of a finished backtest, from its full-resolution equity curve (before thinning)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..runtime.backtest import Result, _iso
from . import metrics


def equity_series(result: Result) -> pd.Series:
    return pd.Series(result.equity, index=pd.to_datetime(result.labels, utc=True))


def summarize_result(result: Result, risk_free: float = 0.0) -> dict[str, Any]:
    """Every metric of the run; positions still open count towards exposure up to the end."""
    equity = equity_series(result)
    trades = [{"pnl": t.pnl, "entry_ts": _iso(t.entry_time), "exit_ts": _iso(t.exit_time)}
              for t in result.ledger.trades]
    end = _iso(int(result.labels[-1])) if len(result.labels) else None
    open_spans = [{"entry_ts": _iso(p.entry_time), "exit_ts": end} for p in result.ledger.positions.values()]
    symbol = result.prepared.symbols[0] if result.prepared.symbols else None
    closes = None
    if symbol in result.bars and len(result.times):
        b = result.bars[symbol]
        closes = b.close[np.searchsorted(b.end, result.times[0], side="left"):]
    out = metrics.summarize(equity, trades, risk_free=risk_free, closes=closes)
    if open_spans and len(equity) >= 2:
        out["exposure"] = metrics.exposure(trades + open_spans, equity.index[0], equity.index[-1])
    out["open_positions"] = len(result.ledger.positions)
    out["final_cash"] = result.ledger.cash
    out["available_funds"] = result.available_funds
    out["commission"] = float(sum(f.commission for f in result.ledger.fills))
    out["buy_and_hold_symbol"] = symbol
    out["bars"] = int(sum(len(b) for b in result.bars.values()))
    out["blocked"] = sum(1 for d in result.runner.decisions if d.outcome == "blocked")
    return {k: (v.isoformat() if isinstance(v, pd.Timestamp) else v) for k, v in out.items()}
