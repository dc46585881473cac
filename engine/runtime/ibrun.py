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


# ---- the run ------------------------------------------------------------------------------

class RunRefused(Exception):
    """The run cannot start (or go on): one plain line for the user, and the exit code."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


@dataclass
class Outcome:
    run_id: str
    stopped: str                     # why the loop ended
    kernel: object
    result: object
    figures: dict
    unconfirmed: list


def run_ib(strategy: str, *, connect, overrides: dict, journal, dry_run: bool, live: bool, yes: bool,
           tty: bool, confirm: Callable[[str], bool], seconds: float | None, on_order=None,
           say: Callable[[str], None] = print, broker_factory=None, status_every: float = 60.0) -> Outcome:
    """One run of a strategy on IB, from connect to a clean stop (see the module's docstring).
    `broker_factory(connect, instruments, read_only, limits, say)` makes the IB broker (tests may
    wrap it); the journal is open and stays the caller's."""
    from ..brokers.dryrun import DryRunBroker
    from ..brokers.sim import SimBroker
    from ..check.model import DataSpec
    from ..plan.build import build_plan, load_strategy
    from . import backtest as bt
    from .backtest import Result
    from .equity import equity_curve
    from .journal import new_run_id
    from .live import LiveRun, live_kernel
    from .prepare import _symbol_bars
    from .recorder import Recorder
    from .session import run_settings
    from .trading import KillSwitch, live_guard, margin_gate

    t0 = _time.monotonic()
    figures: dict = {}
    doc, ws = load_strategy(strategy, overrides)
    plan = build_plan(doc, ws, overrides)
    _refuse_what_ib_runs_do_not_do_yet(doc, plan)
    spec = DataSpec.from_spec(doc.get(("data",)))
    from ..check.model import risk_limits

    limits = risk_limits(doc)
    if broker_factory is None:
        from ..brokers.ib.broker import IBBroker as broker_factory
    from ..brokers.ib.contracts import instruments_for

    instruments = instruments_for(ws, doc)
    ib = broker_factory(connect, instruments=instruments, read_only=dry_run, limits=limits, say=say,
                        subscriptions=doc.get(("data", "subscriptions")))
    ib.connect()
    figures["connect_seconds"] = round(_time.monotonic() - t0, 3)
    try:
        account = ib.account_id
        why = live_guard(live=live, account=account, paper=ib.is_paper, yes=yes, tty=tty, confirm=confirm)
        if why:
            raise RunRefused(why, 2)
        mode = "dry-run" if dry_run else ("live" if live else "paper")
        prefix = f"qtrade:{plan.name}:"
        run_id = new_run_id()
        # 2. reconcile before anything is sent
        t_rec = _time.monotonic()
        state = journal_state(journal, prefix, account)
        report = ib.reconcile(state, prefix)
        figures["reconcile_seconds"] = round(_time.monotonic() - t_rec, 3)
        # 3. the warm-up from IB's history
        wanted_bars = history_bars(plan, spec.history, spec.bar)

        def frames_from(symbols, bar, timezone):
            return {s: ib.history_frame(s, bar, wanted_bars, timezone, spec.session) for s in symbols}

        prep = bt.prepare(strategy, overrides, frames_from=frames_from)
        cash_now = ib.account().equity
        bt.start_run(prep, journal, mode, run_id, cash_now)
        journal.db.execute("UPDATE runs SET settings = json_set(settings, '$.account', ?, '$.broker', 'ib',"
                           " '$.client_id', ?) WHERE run_id = ?", (account, ib.client_id, run_id))
        apply_report(journal, run_id, report, say)
        state = journal_state(journal, prefix, account)     # with the fills reconciliation brought in
        symbol_bars = {s: _symbol_bars(prep, s)[0] for s in prep.symbols}
        venue = ib
        held = sum(p.quantity * p.avg_price * p.multiplier for p in state.positions.values())
        if dry_run:       # the wallet starts as the account is: its cash, and the strategy's positions
            settings, fills = run_settings(prep, run_id)
            wallet = SimBroker(dict(symbol_bars), fills, cash_now - held, settings.account,
                               session=f"{run_id}.wallet")
            venue = DryRunBroker(ib, wallet)
        kill = KillSwitch(limits.kill_switch_file)
        blocked_symbols = {m.symbol: m.message for m in report.mismatches}

        def gate(symbol: str) -> str | None:
            return kill.engaged() or ib.gate(symbol) or blocked_symbols.get(symbol)

        recorder = Recorder(journal, run_id)
        kernel, feed, timers = live_kernel(prep, venue, run_id=run_id, recorder=recorder,
                                           tags=(prefix, journal.last_order_seq(prefix)), on_order=on_order,
                                           cash=cash_now, gate=gate)
        restored = restore_positions(kernel, state.positions)
        if dry_run:
            for symbol in restored:
                p = state.positions[symbol]
                wallet.hold(symbol, p.quantity, p.avg_price)
        for symbol in restored:
            journal.note(run_id, _iso(ib.now()), "restored", symbol,
                         f"{symbol} {state.positions[symbol].quantity:g} @ {state.positions[symbol].avg_price:.4f} "
                         "restored from the journal: its exits manage it")
        adopted = adopt_orders(kernel, report, state)
        for ref in adopted:
            journal.note(run_id, _iso(ib.now()), "adopted", ref, f"{ref} is working at IB: adopted, not re-sent")
        ib.on_reconnected(lambda: _after_reconnect(ib, journal, kernel, prefix, account, run_id, say))
        for symbol in prep.symbols:
            ib.subscribe(symbol, "position" if symbol in restored else "pick")
            ib.stream(symbol, spec.bar)
        for symbol in prep.plan.inputs.symbols:
            if symbol not in prep.symbols:
                ib.stream(symbol, spec.bar)
        say(ib.budget_report(len(set(prep.symbols))))
        figures["first_decision_ready_seconds"] = round(_time.monotonic() - t0, 3)
        stop = Stop(seconds)
        loop = LiveRun(kernel, feed, ib, timers, stop=stop,
                       status=lambda: status_line(kernel, ib, ib.now(), prep.timezone), say=say,
                       status_every=status_every)
        with stop.on_signals():
            stopped = loop.run()
            unconfirmed = loop.shutdown()
        if loop.first_decision_wall is not None:
            figures["connect_to_first_decision_seconds"] = round(loop.first_decision_wall - t0, 3)
        if loop.latencies:
            figures["decision_to_place_ms"] = round(1000 * float(np.median(loop.latencies)), 3)
        figures.update(ib.figures())
        kernel._end_of_data()
        bars = {s: kernel.syms[s].bars for s in kernel.syms}
        start_ns = min((int(b.start[st.start]) for s, b in bars.items()
                        if len(b) > (st := kernel.syms[s]).start), default=None)
        prep.start = pd.Timestamp(start_ns, tz="UTC").tz_convert(prep.timezone) if start_ns is not None else None
        result = Result(prep, run_id, kernel.ledger, kernel, bars, {},
                        lambda: equity_curve(kernel.ledger, bars, kernel.settings.cash, prep.start, [], {}))
        result.broker = venue
        return Outcome(run_id, stopped, kernel, result, figures, unconfirmed)
    finally:
        ib.close()


def _iso(ns: int) -> str:
    return pd.Timestamp(int(ns), tz="UTC").isoformat()


def _refuse_what_ib_runs_do_not_do_yet(doc, plan) -> None:
    from ..check.model import order_templates

    combos = sorted(name for name, t in order_templates(doc.get(("orders",))).items() if t.combo)
    if combos:
        raise RunRefused(f"{doc.path}: {', '.join(combos)} {'is an option combo' if len(combos) == 1 else 'are option combos'}"
                         ", which `run --broker ib` does not trade in this version (a combo's chain would come from "
                         "IB's option quotes); rehearse it on the simulator: qtrade run STRATEGY --broker sim", 2)
