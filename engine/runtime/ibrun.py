"""`qtrade run STRATEGY --broker ib`: the strategy on Interactive Brokers, paper by default.

The order of a run, each step journaled:

1. connect (a duplicate client id fails fast; nothing listening is one line saying what to
   start), read the account, apply the live guard;
2. reconcile before anything is sent: a complete fetch of positions, open and completed orders
   and executions, compared with this journal's orders of the strategy (on this account): its
   open orders adopted, fills missed while it was away journaled once, orders never sent or lost
   marked, phantom and unknown positions flagged and left alone (an incomplete fetch is retried,
   never read as "flat"); nothing is ever re-sent;
3. the warm-up: each symbol's history from IB (data.history, at least the plan's warm-up), the
   plan streamed over it, the open positions of the strategy restored from the journal so their
   exits manage them;
4. the live loop (runtime/live.py) on IB's bars as they complete and IB's clock, with a gate on
   every entry: a stale or unavailable quote, reconciliation not finished or failed after a
   reconnect, a position that disagrees with IB's, the kill switch;
5. the stop (--for, Ctrl-C, SIGTERM): working orders cancelled and the cancels confirmed, the
   journal finished (trades, equity, positions), exit 0.

With --dry-run the connection is read-only: orders go to a simulated wallet over IB's bars
(brokers/dryrun.py), printed and journaled, never transmitted.
"""

from __future__ import annotations

import math
import signal
import time as _time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from ..brokers import events as E
from ..market.bars import bar_seconds
from ..portfolio.ledger import Fill


def ib_bar_size(bar: str) -> str:
    """qtrade's bar size (1m, 5m, 1h, 1d) as IB's barSizeSetting ('1 min', '5 mins', '1 hour', '1 day')."""
    seconds = int(bar_seconds(bar))
    if seconds % 86400 == 0:
        n, unit = seconds // 86400, "day"
    elif seconds % 3600 == 0:
        n, unit = seconds // 3600, "hour"
    elif seconds % 60 == 0:
        n, unit = seconds // 60, "min"
    else:
        n, unit = seconds, "sec"
    if unit == "day" and n != 1:
        return f"{n // 7} week" if n % 7 == 0 else "1 day"
    return f"{n} {unit}{'s' if n != 1 else ''}"


def ib_duration(bar: str, bars: int) -> str:
    """An IB durationStr that covers `bars` bars of this size (with room for non-trading days)."""
    seconds = bar_seconds(bar)
    if seconds >= 86400:
        days = int(math.ceil(bars * seconds / 86400 * 7 / 5)) + 7
        return f"{days} D" if days <= 365 else f"{int(math.ceil(days / 365))} Y"
    total = bars * seconds
    if total <= 86400:
        return f"{int(total)} S"
    # a US equity session is 6.5 hours: count trading days, then calendar days around weekends
    days = int(math.ceil(total / (6.5 * 3600) * 7 / 5)) + 2
    return f"{days} D"


def history_bars(plan, history, bar: str) -> int:
    """How many bars the warm-up asks for: data.history ("300 bars", or a calendar span "2d",
    "3w", "6mo", "1y": 252 trading days a year of 6.5 hours), never fewer than the plan's longest
    warm-up plus one."""
    need = max((node.warmup for node in plan.nodes if node.market), default=0) + 1
    if history is None:
        return need
    text = str(history).strip()
    if text.endswith("bars"):
        return max(need, int(text[:-4].strip()))
    for unit, calendar_days in (("mo", 30.0), ("d", 1.0), ("w", 7.0), ("y", 365.0)):
        if text.endswith(unit):
            span = float(text[:-len(unit)]) * calendar_days
            break
    else:
        raise ValueError(f"data.history {history!r}: expected a count of bars or a span (2d, 3w, 6mo, 1y)")
    days = span if span < 7 else span * 252 / 365
    seconds = bar_seconds(bar)
    per_day = 1.0 if seconds >= 86400 else 6.5 * 3600 / seconds
    return max(need, int(math.ceil(days * per_day)))


# ---- what the journal knows of the strategy on this account --------------------------------

@dataclass
class JournalPosition:
    symbol: str
    quantity: float                 # signed
    avg_price: float
    multiplier: float
    entry_time: int                 # ns: the fill that opened it
    entry_ref: str
    rule: str
    con_id: int | None = None


@dataclass
class JournalState:
    orders: list[dict] = field(default_factory=list)      # not terminal
    exec_ids: set = field(default_factory=set)
    positions: dict[str, JournalPosition] = field(default_factory=dict)


_TERMINAL = ("filled", "cancelled", "rejected", "expired", "never_sent", "lost")


def journal_state(journal, prefix: str, account: str, modes=("paper", "live")) -> JournalState:
    """This strategy's orders not yet terminal, the execution ids held, and its open positions,
    from the runs on `account` in the given modes (a dry run's wallet is not an account)."""
    runs = [r["run_id"] for r in journal._rows("SELECT run_id, mode, settings FROM runs")
            if r["mode"] in modes and _account_of(r["settings"]) == account]
    state = JournalState()
    if not runs:
        return state
    marks = ",".join("?" * len(runs))
    like = prefix + "%"
    state.orders = journal._rows(
        f"SELECT * FROM orders WHERE run_id IN ({marks}) AND order_ref LIKE ? AND status NOT IN "
        f"({','.join('?' * len(_TERMINAL))}) ORDER BY id", (*runs, like, *_TERMINAL))
    fills = journal._rows(f"SELECT f.*, o.rule AS rule FROM fills f LEFT JOIN orders o ON o.order_ref = f.order_ref "
                          f"WHERE f.run_id IN ({marks}) AND f.order_ref LIKE ? ORDER BY f.ts, f.id", (*runs, like))
    for f in fills:
        if f["exec_id"]:
            state.exec_ids.add(f["exec_id"])
        sign = 1.0 if f["action"] == "buy" else -1.0
        pos = state.positions.get(f["symbol"])
        t = int(pd.Timestamp(f["ts"]).value)
        if pos is None or abs(pos.quantity) < 1e-12:
            state.positions[f["symbol"]] = JournalPosition(f["symbol"], sign * f["quantity"], f["price"],
                                                           f["multiplier"], t, f["order_ref"], f["rule"] or "",
                                                           f.get("con_id"))
            continue
        q = pos.quantity + sign * f["quantity"]
        if pos.quantity * sign > 0:        # adding to it: the average moves
            pos.avg_price = (pos.avg_price * abs(pos.quantity) + f["price"] * f["quantity"]) / abs(q)
        pos.quantity = q
    state.positions = {s: p for s, p in state.positions.items() if abs(p.quantity) > 1e-9}
    return state


def _account_of(settings: str | None) -> str | None:
    import json

    try:
        return (json.loads(settings) if settings else {}).get("account")
    except ValueError:
        return None


def restore_positions(kernel, positions: dict[str, JournalPosition]) -> list[str]:
    """Open the journal's positions in a fresh kernel, so its exits manage them; the symbols
    restored (a position in a symbol the strategy no longer trades is left to the user)."""
    restored = []
    for symbol, pos in positions.items():
        st = kernel.syms.get(symbol)
        if st is None:
            continue
        b = st.bars
        entry_bar = max(int(np.searchsorted(b.start, pos.entry_time, side="right")) - 1, 0)
        fill = Fill(symbol, "buy" if pos.quantity > 0 else "sell", abs(pos.quantity), pos.avg_price, 0.0,
                    pos.entry_time, entry_bar, pos.entry_ref, pos.multiplier, pos.rule)
        kernel.ledger.open(fill, margined=b.margined, margin_per_unit=b.margin if b.margined else 0.0)
        st.owner, st.key = kernel.settings.strategy, symbol
        restored.append(symbol)
    return restored


# ---- the stop -----------------------------------------------------------------------------

class Stop:
    """Why the loop should stop: --for ran out, or a signal came (Ctrl-C, SIGTERM)."""

    def __init__(self, seconds: float | None, monotonic: Callable[[], float] = _time.monotonic):
        self.deadline = monotonic() + seconds if seconds else None
        self.monotonic = monotonic
        self.signal: str | None = None

    def __call__(self) -> str | None:
        if self.signal:
            return self.signal
        if self.deadline is not None and self.monotonic() >= self.deadline:
            return "the --for time ran out"
        return None

    @contextmanager
    def on_signals(self):
        def handler(signum, frame):
            self.signal = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}.get(signum, f"signal {signum}")

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def status_line(kernel, broker, now: int, timezone: str) -> str:
    """One line every minute: connection, lines used / budget, positions, working orders, today's P&L."""
    t = pd.Timestamp(now, tz="UTC").tz_convert(timezone)
    positions = ", ".join(f"{s} {p.quantity:g}" for s, p in kernel.ledger.positions.items()) or "flat"
    working = sum(1 for tr in kernel.orders_by_ref.values() if tr.sent and not tr.done)
    day = t.normalize().tz_convert("UTC").value
    pnl = sum(tr.pnl for tr in kernel.ledger.trades if tr.exit_time >= day)
    marks = kernel.marks(now)
    pnl += sum((marks.get(s, p.avg_price) - p.avg_price) * p.quantity * p.multiplier
               for s, p in kernel.ledger.positions.items())
    lines = broker.lines_status() if hasattr(broker, "lines_status") else ""
    state = broker.state if hasattr(broker, "state") else "simulated"
    return (f"{t:%Y-%m-%d %H:%M} {state} | {lines} | positions: {positions} | working orders: {working} | "
            f"today's P&L {pnl:+,.2f}")
