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
   exits manage them (each owner's into its own lane, with arbitration.positions_per_symbol:
   reconciliation compares their sum in a contract with IB's netted position);
4. the live loop (runtime/live.py) on IB's bars as they complete and IB's clock, with a gate on
   every entry: a stale or unavailable quote, reconciliation not finished or failed after a
   reconnect, a position that disagrees with IB's, the kill switch;
5. the stop (--for, Ctrl-C, SIGTERM): working orders cancelled and the cancels confirmed, the
   journal finished (trades, equity, positions), exit 0.

With --dry-run the connection is read-only: orders go to a simulated wallet over IB's bars
(brokers/dryrun.py), printed and journaled, never transmitted.
"""

from __future__ import annotations

import json
import math
import signal
import time as _time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
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
    # a US equity session is 6.5 hours: count trading days, then calendar days around weekends and
    # a spare one (at the open, the last 30 minutes are yesterday's)
    total = bars * seconds
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
    if text.endswith("bars") or text.endswith("bar"):      # ("1 bar")
        return max(need, int(text.rstrip("s")[:-3].strip()))
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
    local_symbol: str = ""
    legs: tuple = ()                # an option combo's legs, as its opening order journaled them
    entries: int = 1                # the orders that opened it or added to it (pyramiding)
    owner: str = ""                 # the agent (or the strategy) whose entry opened it, as journaled
    # a futures position opened by a roll: the price move per unit it made in the contracts it was
    # rolled out of, and when the entry that began it filled (the kernel's back-adjustment)
    carried: float = 0.0
    origin_time: int = 0
    _refs: set = field(default_factory=set)

    @property
    def underlying(self) -> str:
        """A combo's underlying (its key is 'UNDERLYING ORDER'); a single contract's own symbol."""
        return self.symbol.split(" ", 1)[0] if self.legs else self.symbol


@dataclass
class JournalState:
    orders: list[dict] = field(default_factory=list)      # not terminal
    exec_ids: set = field(default_factory=set)
    positions: dict[str, JournalPosition] = field(default_factory=dict)
    commissions: dict[str, float] = field(default_factory=dict)
    traded: set = field(default_factory=set)              # every conId the strategy traded here
    runs: list[str] = field(default_factory=list)
    legs_of: dict = field(default_factory=dict)           # a combo leg's conId -> the combos holding it (view())
    max_order_id: int = 0                                 # the highest IB order id any of these runs used

    def view(self, leg_contract: Callable | None = None):
        """The state as reconciliation reads it (brokers/ib/reconcile.JournalView). IB holds an
        option combo as its legs: each open combo is compared leg by leg, the legs' contracts
        from `leg_contract(underlying, leg) -> (conId, local symbol, multiplier)` (legs_of maps
        each leg's conId back to its combo). A combo whose legs cannot be resolved is left out
        (its legs at IB are then reported, not closed)."""
        from ..brokers.ib.reconcile import JournalOrder, JournalPosition as RPosition, JournalView

        orders = tuple(JournalOrder(o["order_ref"], o["symbol"], o["action"], float(o["quantity"]), o["status"],
                                    o.get("local_symbol") or "", int(o.get("con_id") or 0),
                                    int(o.get("broker_order_id") or 0), int(o.get("perm_id") or 0),
                                    combo=bool(o.get("legs"))) for o in self.orders)
        # each owner's position in a contract: reconcile compares their sum with IB's (IB nets them)
        single = [RPosition(int(p.con_id or 0), p.local_symbol, p.symbol, p.quantity, p.avg_price, p.multiplier)
                  for p in self.positions.values() if not p.legs]
        legs: dict[int, list] = {}        # conId -> [local symbol, quantity, multiplier]
        self.legs_of = {}
        for key, p in self.positions.items():
            if not p.legs or leg_contract is None:
                continue
            try:
                resolved = [(leg, leg_contract(p.underlying, leg)) for leg in p.legs]
            except Exception:      # noqa: BLE001 - IB cannot say which contracts: compared without them
                continue
            for leg, (con_id, local, mult) in resolved:
                units = abs(p.quantity) * int(leg.get("ratio") or 1) * (1 if leg["action"] == "buy" else -1)
                held = legs.setdefault(int(con_id), [local, 0.0, mult])
                held[1] += units
                self.legs_of.setdefault(int(con_id), set()).add(key)
        combo_legs = [RPosition(con, local, local, qty, 0.0, mult) for con, (local, qty, mult) in legs.items()]
        return JournalView(orders, frozenset(self.exec_ids), tuple(single + combo_legs), dict(self.commissions),
                           frozenset(self.traded) | frozenset(legs))


_TERMINAL = ("filled", "cancelled", "rejected", "expired", "never_sent", "lost")


def apply_report(journal, run_id: str, report, state: JournalState, prefix: str, now: int,
                 say: Callable[[str], None]) -> list[str]:
    """What reconciliation found, into the journal before anything is sent: the fills missed
    while qtrade was away (each once, by execution id; corrections replace), commissions, the
    orders IB finished or never knew, phantom positions closed externally (no exit is sent),
    unknown holdings and mismatches noted. Returns the lines said."""
    from ..brokers.ib.reconcile import combo_flags, price_text

    ts = _iso(now)
    runs = {o["order_ref"]: o["run_id"] for o in state.orders}
    lines = report.lines()
    over = overfills(journal, report)
    for f in report.fills:
        if f.exec_id in over:
            # not this journal's order's fill: booked to none (the position at IB is then compared
            # with the journal's, and a difference blocks entries on it), and an error
            journal.error(run_id, ts, "reconcile", over[f.exec_id])
            journal.note(run_id, ts, "overfill", f.tag, over[f.exec_id])
            continue
        if f.replaces:
            journal.correct_fill(f.replaces, f.exec_id, f.quantity, f.price, _iso(f.time))
        else:
            journal.fill(runs.get(f.tag, run_id), f.tag, _iso(f.time), f.symbol, f.action, f.quantity, f.price,
                         f.multiplier, f.commission or 0.0, exec_id=f.exec_id, broker_order_id=f.broker_order_id,
                         con_id=f.con_id or None, local_symbol=f.local_symbol or None)
        journal.note(run_id, ts, "missed_fill", f.tag, f"{f.action} {f.quantity:g} {f.local_symbol or f.symbol} @ "
                     f"{price_text(f.price)} ({f.exec_id}) happened while qtrade was away: journaled")
    for exec_id, commission in report.commissions:
        journal.commission(exec_id, commission)
    for x in report.finished:
        journal.order_status(x.tag, x.status, ts, f"{x.status} at IB while qtrade was away ({x.filled:g} filled)")
    for tag in report.never_sent:
        journal.order_status(tag, "never_sent", ts, "journaled but never sent: IB knows no such order")
    for tag in report.lost:
        journal.note(run_id, ts, "lost", tag, "sent, but IB knows no such order: checked again before it is marked")
    closed, broken = combo_flags(report, state.legs_of)
    for key in sorted(closed):
        # a combo closed outside qtrade: closed at its entry price, as a single contract is
        pos = state.positions[key]
        journal.fill(run_id, f"{prefix}external", ts, pos.symbol, "buy" if pos.quantity < 0 else "sell",
                     abs(pos.quantity), pos.avg_price, pos.multiplier, 0.0,
                     exec_id=f"external:{run_id}:{key}" + (f"@{pos.owner}" if pos.owner else ""))
        journal.note(run_id, ts, "phantom", key, f"the journal held {pos.quantity:g} {key}, IB holds none of its "
                     "legs: closed externally, no exit sent")
    for key, flags in sorted(broken.items()):
        journal.note(run_id, ts, "mismatch", key, f"{key}: IB's legs disagree with the journal's (" +
                     ", ".join(f"{f.local_symbol} {f.journal_quantity:g} against IB's {f.ib_quantity:g}"
                               for f in flags) + "): not restored, no new entries on it until they agree")
    phantom = [flag for flag in report.phantom if flag.con_id not in state.legs_of]   # a combo's: above
    if phantom and report.fills:
        # the fills missed while away are journaled now: each owner's position with them
        state = _state_of_runs(journal, prefix, list(dict.fromkeys(state.runs + [run_id])))
    for flag in phantom:
        # closed outside qtrade: the journal closes each owner's position in the contract at its
        # average (the P&L is the broker's); one flag, for the sum IB nets
        name = flag.local_symbol or flag.symbol
        held = owners_of(state, flag.con_id, flag.symbol)
        if not held or abs(sum(p.quantity for _, p in held) - flag.journal_quantity) > 1e-9:
            held = [(flag.symbol, JournalPosition(flag.symbol, flag.journal_quantity, flag.journal_avg_price or 0.0,
                                                  flag.multiplier, 0, "", ""))]
        for _, pos in held:
            journal.fill(run_id, f"{prefix}external", ts, flag.symbol, "sell" if pos.quantity > 0 else "buy",
                         abs(pos.quantity), pos.avg_price or 0.0, flag.multiplier, 0.0,
                         exec_id=f"external:{run_id}:{flag.con_id or flag.symbol}" +
                         (f"@{pos.owner}" if pos.owner else ""),
                         con_id=flag.con_id or None, local_symbol=flag.local_symbol or None)
        journal.note(run_id, ts, "phantom", flag.symbol, f"the journal held {flag.journal_quantity:g} {name}"
                     f"{_by_owner(held)}, IB holds none: closed externally, no exit sent")
    for flag in report.unknown:
        journal.note(run_id, ts, "unknown", flag.local_symbol or flag.symbol,
                     f"IB holds {flag.ib_quantity:g} {flag.local_symbol or flag.symbol} that this strategy never "
                     "traded: left alone, no entries on it")
    for flag in report.mismatch:
        if flag.con_id in state.legs_of:
            continue
        owners = owners_of(state, flag.con_id, flag.symbol)
        journal.note(run_id, ts, "mismatch", flag.local_symbol or flag.symbol,
                     f"the journal holds {flag.journal_quantity:g} {flag.local_symbol or flag.symbol}"
                     f"{_by_owner(owners)}, IB {flag.ib_quantity:g}: new entries on it blocked" +
                     ("; whose part is off cannot be told, so none of them is restored: left as they are"
                      if len(owners) > 1 else ""))
    for o in report.foreign:
        journal.note(run_id, ts, "foreign", o.order_ref or str(o.perm_id),
                     f"{o.action} {o.quantity:g} {o.local_symbol or o.symbol} working at IB, not qtrade's: left alone")
    # a day of another journal's fills is many lines: the first and last few are said, the rest
    # counted (the journal has each, as a missed_fill note)
    fills = [line for line in lines if line.startswith("fill ")]
    shown = fills if len(fills) <= 8 else fills[:3] + [f"... {len(fills) - 6} more fills, each journaled (notes: "
                                                        "missed_fill)"] + fills[-3:]
    said = []
    for line in lines:
        if not line.startswith("fill "):
            said.append(line)
        elif line is fills[0]:
            said += shown
    for line in said:
        say(f"reconcile: {line}")
    return lines


def overfills(journal, report) -> dict[str, str]:
    """The fills missed while away that would fill an order (not a combo's) past its quantity,
    with why: by execution id. An execution carrying one of this journal's refs beyond what its
    order asked is not that order's (another run sent an order with the same ref): never booked
    to it silently."""
    out: dict[str, str] = {}
    extra: dict[str, float] = {}
    for f in report.fills:
        if f.replaces or not f.tag:
            continue
        row = journal.db.execute("SELECT quantity, legs FROM orders WHERE order_ref = ?", (f.tag,)).fetchone()
        if row is None or row[1]:
            continue
        done = journal.db.execute("SELECT COALESCE(SUM(quantity), 0) FROM fills WHERE order_ref = ?",
                                  (f.tag,)).fetchone()[0] + extra.get(f.tag, 0.0)
        if done + f.quantity > float(row[0]) + 1e-9:
            out[f.exec_id] = (f"execution {f.exec_id} ({f.action} {f.quantity:g} {f.local_symbol or f.symbol}) carries "
                              f"the ref {f.tag}, whose order for {float(row[0]):g} has {done:g} filled already: it is "
                              "another run's order with the same ref, not booked to this one. Two runs traded this "
                              "strategy on this account: look at IB's position before trading it again")
        else:
            extra[f.tag] = extra.get(f.tag, 0.0) + f.quantity
    return out


def _by_owner(held: list) -> str:
    """' (follower 10, contrarian 5)' when more than one owner holds the contract, else ''."""
    if len(held) < 2:
        return ""
    return " (" + ", ".join(f"{p.owner or '?'} {p.quantity:g}" for _, p in held) + ")"


def confirm_lost(journal, run_id: str, first, second, now: int) -> tuple[str, ...]:
    """Orders lost in two reconciliations in a row: marked lost (nothing is re-sent)."""
    from ..brokers.ib.reconcile import confirmed_lost

    lost = confirmed_lost(first, second)
    for tag in lost:
        journal.order_status(tag, "lost", _iso(now), "sent, but IB knew no such order in two reconciliations")
    return lost


def adopt_orders(kernel, report, state: JournalState, broker) -> list[str]:
    """Orders of this strategy working at IB from an earlier run, taken over by the kernel's order
    tracker (so their fills book the positions they belong to) and by the broker (so their
    statuses and executions come as events). Nothing is re-sent."""
    from ..orders.intent import OrderIntent
    from ..plan import nodes as N
    from .records import OrderRecord

    rows = {o["order_ref"]: o for o in state.orders}
    adopted = []
    for a in report.adopt:
        row = rows.get(a.tag)
        symbol = row["symbol"] if row else a.order.symbol
        first = kernel.syms.get(symbol)
        if first is None:
            continue
        # the lane of the order's owner (the journal's owner column for its ref): the one holding
        # that owner's position, or (an entry) the first idle one; an order the journal has no
        # row for goes to the symbol's position if one lane holds it
        lanes = first.lanes or [first]
        holding = [lane for lane in lanes if lane.key is not None]
        owner = (row.get("owner") if row else "") or (holding[0].owner if len(holding) == 1 else "") or \
            kernel.settings.strategy
        st = next((lane for lane in holding if lane.owner == owner), None)
        kind = {"LMT": "limit", "STP": "stop", "STP LMT": "stop_limit", "MKT": "market"}.get(a.order.order_type,
                                                                                           "market")
        intent_kind = row["intent"] if row else ("close" if st is not None else "open")
        if st is None:
            st = next((lane for lane in lanes if kernel._idle(lane)), first) if intent_kind == "open" else first
        rule_name = row["rule"] if row else "adopted"
        if rule_name == "roll" and intent_kind == "open":
            # a futures roll's open, sent by an earlier session and working at IB: its fill reopens
            # the position (the roll's close was booked then)
            if kernel.recorder is not None:
                kernel.recorder.known(a.tag)
            kernel.resume_roll(symbol, a.order.action, float(a.order.quantity),
                               (row.get("owner") if row else "") or kernel.settings.strategy, None,
                               (row.get("reason") if row else "") or "roll", tag=a.tag)
            broker.adopt(E.Order(a.tag, symbol, a.order.action, float(a.order.quantity), kind, a.order.limit,
                                 a.order.stop, row["tif"] if row else "day", intent="open", rule="roll"),
                         a.order.perm_id)
            adopted.append(a.tag)
            continue
        intent = OrderIntent(symbol, a.order.action, kind, float(a.order.quantity), None, a.order.limit,
                             a.order.stop, row["tif"] if row else "day", intent_kind, rule_name, a.tag, "")
        if intent_kind == "open":
            role = "entry"
        elif rule_name == "roll":
            role = "exit"           # a roll's close, whatever its order type
        elif kind == "stop":
            role = "stop"
        elif kind == "limit" and row and row["order_type"] == "limit" and st.key is not None:
            role = "target"
        else:
            role = "exit"
        rule = next((r for r in kernel.plan.rules if r.name == rule_name), N.Rule("exit" if role != "entry"
                                                                                  else "entry", rule_name))
        record = OrderRecord(intent, kernel._now)
        record.status = "working"
        kernel.orders.append(record)
        from .kernel import _Tracked

        record.owner = owner
        tr = _Tracked(intent, record, symbol, owner, role, rule, len(st.bars))
        tr.lane = st
        tr.sent = True
        if kernel.recorder is not None and row is not None:
            kernel.recorder.known(a.tag)
        kernel.orders_by_ref[a.tag] = tr
        if role == "entry":
            st.working_entry = a.tag
        elif role in ("stop", "target"):
            st.protect[(rule_name, role)] = a.tag
            entry = kernel._entry_ref.get(st.slot)
            if a.order.oca_group and entry is not None:    # the position's other protective orders join it
                kernel.oca_groups[entry] = a.order.oca_group
        else:
            st.closing = a.tag
            if rule_name == "roll" and symbol in kernel.ledger.positions:
                # a roll's close still working at IB: its open follows it once it is filled
                tr.exit_kind = "roll"
                pos = kernel.ledger.positions[symbol]
                kernel.resume_roll(symbol, "buy" if pos.quantity > 0 else "sell", abs(pos.quantity),
                                   pos.owner or kernel.settings.strategy, None,
                                   (row.get("reason") if row else "") or "roll", after=a.tag)
        broker.adopt(E.Order(a.tag, symbol, a.order.action, float(a.order.quantity), kind, a.order.limit,
                             a.order.stop, intent.tif, owner=owner, intent=intent_kind, rule=rule_name),
                     a.order.perm_id)
        adopted.append(a.tag)
    return adopted


def unfinished_rolls(journal, state: JournalState, prefix: str) -> list[dict]:
    """Futures rolls an earlier session began and did not finish: the roll's close filled (the
    journal is flat in the symbol, no fill after it) and no roll open journaled after it. Each as
    {symbol, action, quantity, owner, closed_in, price} (the open to send; the contract closed and
    the close's price). An
    open journaled (sent, whatever became of it) is never sent again: a restart duplicates no leg."""
    if not state.runs:
        return []
    marks = ",".join("?" * len(state.runs))
    cols = {r["name"] for r in journal._rows("PRAGMA table_info(orders)")}
    owner = ", owner" if "owner" in cols else ""
    orders = journal._rows(f"SELECT id, order_ref, symbol, action, quantity, intent, status, local_symbol{owner} FROM "
                           f"orders WHERE run_id IN ({marks}) AND order_ref LIKE ? AND rule = 'roll' ORDER BY id",
                           (*state.runs, prefix + "%"))
    last: dict[str, dict] = {}
    for o in orders:
        if o["intent"] == "close":
            last[o["symbol"]] = dict(o)
        elif o["symbol"] in last:
            last[o["symbol"]]["opened"] = True
    due = []
    for symbol, o in last.items():
        if o.get("opened") or symbol in state.positions:
            continue
        fills = journal._rows(f"SELECT order_ref, quantity, price, local_symbol FROM fills WHERE run_id IN "
                              f"({marks}) AND symbol = ? ORDER BY ts, id", (*state.runs, symbol))
        mine = [f for f in fills if f["order_ref"] == o["order_ref"]]
        if not mine or fills[-1]["order_ref"] != o["order_ref"]:
            continue        # not filled (still held, or adopted as working), or traded again since
        quantity = sum(float(f["quantity"]) for f in mine)
        price = sum(float(f["quantity"]) * float(f["price"]) for f in mine) / quantity
        due.append({"symbol": symbol, "action": "buy" if o["action"] == "sell" else "sell", "quantity": quantity,
                    "owner": o.get("owner") or "", "closed_in": o["local_symbol"] or mine[-1]["local_symbol"] or symbol,
                    "price": price})
    return due


def unclosed_runs(journal, strategy: str, account: str) -> list[dict]:
    """Earlier paper or live runs of the strategy on the account that the journal still has as
    running. Called with the session lock held, so none of them is alive: each was killed (-9),
    crashed past its handlers, or its machine stopped. Each is marked interrupted, its end the
    last thing it journaled (its start if nothing), and returned for the run to say."""
    found = journal._rows(
        "SELECT run_id, mode, started_at FROM runs WHERE status = 'running' AND mode IN ('paper', 'live')"
        " AND strategy = ? AND json_extract(settings, '$.account') = ? ORDER BY started_at", (strategy, account))
    for run in found:
        run["last"] = journal.last_journaled(run["run_id"], since=run["started_at"])
        journal.db.execute("UPDATE runs SET status = 'interrupted', finished_at = ?,"
                           " summary = json_object('ended', 'unseen: the run did not close (killed, or its"
                           " machine stopped); marked by the next run') WHERE run_id = ?",
                           (run["last"] or run["started_at"], run["run_id"]))
    return found


def journal_state(journal, prefix: str, account: str, modes=("paper", "live")) -> JournalState:
    """This strategy's orders not yet terminal, the execution ids held, and its open positions,
    from the runs on `account` in the given modes (a dry run's wallet is not an account).

    A position is one owner's (the agent whose entry opened it, as its orders journaled it): with
    arbitration.positions_per_symbol several owners hold one symbol at once, each its own
    position, keyed `SYMBOL@owner` (a symbol one owner holds is keyed by the symbol alone)."""
    runs = [r["run_id"] for r in journal._rows("SELECT run_id, mode, settings FROM runs")
            if r["mode"] in modes and _account_of(r["settings"]) == account]
    return _state_of_runs(journal, prefix, runs)


def _base_symbol(symbol: str) -> str:
    """A journaled fill's symbol without a lane's suffix: a second owner's combo is journaled as
    'SPY put_spread#2' (its key in that run's kernel), the same position as 'SPY put_spread'."""
    head, sep, tail = symbol.rpartition("#")
    return head if sep and tail.isdigit() else symbol


def _external_owner(exec_id: str | None) -> str:
    """The owner an external close (a phantom closed in the journal) was journaled for: its
    execution id ends in '@owner' ('' for one journaled before owners were split)."""
    if not exec_id or not exec_id.startswith("external:") or "@" not in exec_id:
        return ""
    return exec_id.rpartition("@")[2]


def _state_of_runs(journal, prefix: str, runs: list[str]) -> JournalState:
    state = JournalState()
    state.runs = list(runs)
    if not runs:
        return state
    marks = ",".join("?" * len(runs))
    like = prefix + "%"
    state.orders = journal._rows(
        f"SELECT * FROM orders WHERE run_id IN ({marks}) AND order_ref LIKE ? AND status NOT IN "
        f"({','.join('?' * len(_TERMINAL))}) ORDER BY id", (*runs, like, *_TERMINAL))
    highest = journal._rows(f"SELECT max(broker_order_id) AS n FROM orders WHERE run_id IN ({marks})", tuple(runs))
    state.max_order_id = int(highest[0]["n"] or 0) if highest else 0
    owner = ", o.owner AS owner" if "owner" in {r["name"] for r in journal._rows("PRAGMA table_info(orders)")} \
        else ""
    fills = journal._rows(f"SELECT f.*, o.rule AS rule, o.legs AS legs, o.order_ref AS ordered{owner} FROM fills f "
                          f"LEFT JOIN orders o ON o.order_ref = f.order_ref "
                          f"WHERE f.run_id IN ({marks}) AND f.order_ref LIKE ? ORDER BY f.ts, f.id", (*runs, like))
    # the strategy's own name (prefix qtrade:<strategy>:): the owner of a fill whose order this
    # journal never held (another journal's run of the strategy, reconciled in)
    strategy = prefix[len("qtrade:"):-1] if prefix.startswith("qtrade:") and prefix.endswith(":") else ""
    held: dict[tuple[str, str], JournalPosition] = {}        # (symbol, owner) -> its position
    rolled: dict[tuple[str, str], tuple[float, int]] = {}    # (symbol, owner) -> (carried, origin time) of a
                                                             # position a roll closed
    for f in fills:
        if f["exec_id"]:
            state.exec_ids.add(f["exec_id"])
            state.commissions[f["exec_id"]] = float(f["commission"] or 0.0)
        if f.get("con_id"):
            state.traded.add(int(f["con_id"]))
        sign = 1.0 if f["action"] == "buy" else -1.0
        symbol = _base_symbol(f["symbol"])
        who = f.get("owner") or _external_owner(f["exec_id"])
        if not who:
            # a fill without an owner (a journal from before owners, or an external close before
            # they were split): the symbol's one open position, if it has exactly one
            open_ = [k for k, p in held.items() if k[0] == symbol and abs(p.quantity) > 1e-12]
            # (a reconciled fill of an order this journal never held opens the strategy's own
            # position, the one its own orders' fills go on: else the two split one IB position)
            who = open_[0][1] if len(open_) == 1 else \
                strategy if f.get("ordered") is None and not f["exec_id"].startswith("external:") else ""
        key = (symbol, who)
        pos = held.get(key)
        t = int(pd.Timestamp(f["ts"]).value)
        if pos is None or abs(pos.quantity) < 1e-12:
            carried, origin = rolled.pop(key, (0.0, 0)) if f["rule"] == "roll" else (0.0, 0)
            rolled.pop(key, None)
            held[key] = JournalPosition(symbol, sign * f["quantity"], f["price"], f["multiplier"], t, f["order_ref"],
                                        f["rule"] or "", f.get("con_id"), f.get("local_symbol") or "",
                                        tuple(json.loads(f["legs"])) if f.get("legs") else (),
                                        owner=f.get("owner") or who, carried=carried, origin_time=origin)
            continue
        if f.get("con_id"):
            pos.con_id, pos.local_symbol = f["con_id"], f.get("local_symbol") or pos.local_symbol
        q = pos.quantity + sign * f["quantity"]
        if pos.quantity * sign > 0:        # adding to it (a partial fill, or pyramiding): the average moves
            pos.avg_price = (pos.avg_price * abs(pos.quantity) + f["price"] * f["quantity"]) / abs(q)
            if f["order_ref"] != pos.entry_ref and f["order_ref"] not in pos._refs:
                pos._refs.add(f["order_ref"])
                pos.entries += 1
        if abs(q) < 1e-9 and f["rule"] == "roll":     # closed by a roll: what its next position carries
            rolled[key] = (pos.carried + (f["price"] - pos.avg_price), pos.origin_time or pos.entry_time)
        pos.quantity = q
    open_ = [(k, p) for k, p in held.items() if abs(p.quantity) > 1e-9]
    holders: dict[str, int] = {}
    for (symbol, _), _p in open_:
        holders[symbol] = holders.get(symbol, 0) + 1
    state.positions = {(symbol if holders[symbol] == 1 else f"{symbol}@{who}"): p for (symbol, who), p in open_}
    return state


def owners_of(state: JournalState, con_id: int, symbol: str) -> list[tuple[str, JournalPosition]]:
    """The journal's open positions in one contract (by conId; by symbol where none is known),
    each owner's: (key, position). IB holds their sum."""
    return [(key, p) for key, p in state.positions.items() if not p.legs and
            ((int(p.con_id or 0) == con_id) if con_id and p.con_id else p.symbol == symbol)]


def _account_of(settings: str | None) -> str | None:
    try:
        return (json.loads(settings) if settings else {}).get("account")
    except ValueError:
        return None


def restored_owner(kernel, pos: JournalPosition) -> str:
    """Who holds a position read back from the journal: the owner its entry order journaled, or
    (a journal older than that column) the agent whose rule the entry was; else the strategy. An
    owner the strategy no longer has (an agent renamed or removed) is kept: only the strategy's
    own exits and flat-by then manage the position."""
    if pos.owner:
        return pos.owner
    agent = next((r.agent for r in kernel.plan.rules if r.kind == "entry" and r.name == pos.rule), None)
    return agent or kernel.settings.strategy


def restore_lane(kernel, symbol: str, owner: str):
    """The lane of `symbol` a position of `owner` read back from the journal goes to: the one
    that holds the owner's position already, else the first idle one (positions_per_symbol: each
    owner its own; one lane without it); None when every lane is taken."""
    st = kernel.syms.get(symbol)
    if st is None:
        return None
    lanes = st.lanes or [st]
    mine = next((lane for lane in lanes if lane.key is not None and lane.owner == owner), None)
    return mine or next((lane for lane in lanes if kernel._idle(lane)), None)


def _decided_bar(b, entry_time: int) -> int:
    """The bar whose close decided an entry filled at `entry_time` (the last one closed by then);
    -1 when the bars held start after it."""
    return int(np.searchsorted(b.end, entry_time, side="right")) - 1


def _free_lanes(kernel, positions: dict[str, JournalPosition], *, combos: bool, skip, say):
    """The journal's positions (option combos, or the rest) to restore, each with its owner and
    the free lane of its symbol it goes into: (key, position, owner, lane). A position in a symbol
    the strategy no longer trades is passed over; one whose symbol's lanes are all held is said."""
    for key, pos in positions.items():
        if bool(pos.legs) != combos or key in skip:
            continue
        symbol = pos.underlying if combos else pos.symbol
        if symbol not in kernel.syms:
            continue
        owner = restored_owner(kernel, pos)
        lane = restore_lane(kernel, symbol, owner)
        if lane is None or lane.key is not None:
            if say is not None:
                what = "the combo" if combos else f"{pos.quantity:g} {symbol}"
                say(f"{key}: {what} of {owner} not restored: {symbol}'s positions_per_symbol lanes are all held "
                    f"(or {owner} holds another position in it); its exits do not manage it")
            continue
        yield key, pos, owner, lane


def restore_positions(kernel, positions: dict[str, JournalPosition],
                      say: Callable[[str], None] | None = None, skip=frozenset()) -> dict[str, str]:
    """Open the journal's positions in a fresh kernel, each owner's in its own lane of the symbol
    (positions_per_symbol), with its entry states, so its owner's exits manage it; returns the
    journal's keys restored -> their ledger keys (a position in a symbol the strategy no longer
    trades, or beyond the symbol's lanes, is left to the user, said)."""
    restored = {}
    for key, pos, owner, lane in _free_lanes(kernel, positions, combos=False, skip=skip, say=say):
        symbol = pos.symbol
        b = lane.bars
        entry_bar = max(int(np.searchsorted(b.start, pos.entry_time, side="right")) - 1, 0)
        fill = Fill(symbol, "buy" if pos.quantity > 0 else "sell", abs(pos.quantity), pos.avg_price, 0.0,
                    pos.entry_time, entry_bar, pos.entry_ref, pos.multiplier, pos.rule)
        decided = _decided_bar(b, pos.entry_time)
        states = kernel.states_at(lane, decided) if decided >= 0 else ()
        held = kernel.ledger.open(fill, margined=b.margined, margin_per_unit=b.margin if b.margined else 0.0,
                                  owner=owner, states=states, key=lane.slot)
        if pos.origin_time:     # opened by a roll: its rules read the entry back-adjusted, from where it began
            held.carried = pos.carried
            held.origin_time = pos.origin_time
            held.origin_bar = max(int(np.searchsorted(b.start, pos.origin_time, side="right")) - 1, 0)
        lane.owner, lane.key = owner, lane.slot
        lane.entries = pos.entries        # pyramiding: what may still be added
        kernel._entry_ref[lane.slot] = pos.entry_ref
        restored[key] = lane.slot
    return restored


def restore_combos(kernel, positions: dict[str, JournalPosition], skip=frozenset(),
                   say: Callable[[str], None] | None = None) -> dict[str, str]:
    """Open the journal's option combos in a fresh kernel (legs, quantity, entry credit, entry
    bar, entry states), each owner's in its own lane of the underlying, so its combo exits manage
    it and the chain IB quotes includes their expiries; returns the journal's keys restored ->
    their keys in the kernel. Combos in `skip` (IB's legs disagree, or closed outside) are not."""
    import datetime as dt

    from ..orders.combos import LegQuote
    from .options import ComboPosition

    restored = {}
    for key, pos, owner, st in _free_lanes(kernel, positions, combos=True, skip=skip, say=say):
        underlying = pos.underlying
        b = st.bars
        entry_bar = max(int(np.searchsorted(b.start, pos.entry_time, side="right")) - 1, 0)
        legs = tuple(LegQuote(str(leg.get("name") or ""), str(leg["right"]), str(leg["action"]), int(leg.get("ratio") or 1),
                              float(leg["strike"]), str(leg["expiry"]), math.nan, math.nan, math.nan, math.nan)
                     for leg in pos.legs)
        qty = abs(pos.quantity)
        action = "sell" if pos.quantity < 0 else "buy"
        credit = pos.avg_price if action == "sell" else -pos.avg_price
        # the combo's key in this kernel: its lane's, as a new entry in that lane would make it
        combo_key = pos.symbol + st.slot[len(underlying):]
        fill = Fill(combo_key, action, qty, pos.avg_price, 0.0, pos.entry_time, entry_bar, pos.entry_ref,
                    pos.multiplier, pos.rule)
        decided = _decided_bar(b, pos.entry_time)
        states = kernel.states_at(st, decided) if decided >= 0 else ()
        # IB's account holds the margin
        held = kernel.ledger.open(fill, margin_per_unit=0.0, owner=owner, states=states)
        held.entry_values.update({"credit": credit * pos.multiplier * qty})
        combo = ComboPosition(combo_key, pos.symbol.split(" ", 1)[1], pos.rule, legs, int(qty), credit, entry_bar,
                              pos.entry_time, min(dt.date.fromisoformat(leg.expiry) for leg in legs),
                              float(b.close[min(entry_bar, len(b) - 1)]) if len(b) else math.nan, pos.multiplier,
                              action)
        combo.last_credit = credit
        kernel.combos[combo_key] = combo
        kernel.combo_symbol[combo_key] = underlying
        kernel._entry_ref[combo_key] = pos.entry_ref
        kernel.venue.mark_combo(combo_key, combo.mark_price)
        st.key, st.owner = combo_key, owner
        restored[key] = combo_key
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


def status_line(kernel, broker, now: int, timezone: str, schedule=None) -> str:
    """One line every minute: connection, lines used / budget, positions, working orders, today's
    P&L, and why no entry can go now (outside the schedule's entry window, or entries stopped)."""
    t = pd.Timestamp(now, tz="UTC").tz_convert(timezone)
    held = getattr(broker, "held_contract", lambda symbol: None)

    def name(symbol: str) -> str:       # a position by its contract's local symbol (NQZ3), as IB shows it
        contract = held(symbol)
        return contract.local_symbol if contract is not None and contract.local_symbol else symbol

    # a second owner's position in a symbol (keyed SYMBOL#2) is shown by its symbol and owner
    positions = ", ".join(f"{name(p.symbol)} {p.quantity:g}" + (f" ({p.owner})" if s != p.symbol else "")
                          for s, p in kernel.ledger.positions.items()) or "flat"
    working = sum(1 for tr in kernel.orders_by_ref.values() if tr.sent and not tr.done)
    day = t.normalize().tz_convert("UTC").value
    pnl = sum(tr.pnl for tr in kernel.ledger.trades if tr.exit_time >= day) + open_pnl(kernel, now)
    lines = broker.lines_status() if hasattr(broker, "lines_status") else ""
    state = broker.state if hasattr(broker, "state") else "simulated"
    entries = ""
    refused = kernel.entries_refused_now() if hasattr(kernel, "entries_refused_now") else None
    if refused:
        entries = f" | {refused}" if refused.startswith("entries stopped") else f" | entries refused: {refused}"
    elif schedule is not None and schedule.entry_window is not None:
        lo, hi = schedule.entry_window
        minute = t.hour * 60 + t.minute
        if not lo <= minute <= hi:
            entries = f" | entries: outside the entry window {lo // 60:02d}:{lo % 60:02d}-{hi // 60:02d}:{hi % 60:02d}"
    return (f"{t:%Y-%m-%d %H:%M} {state} | {lines} | positions: {positions} | working orders: {working} | "
            f"today's P&L {pnl:+,.2f}{entries}")


def open_pnl(kernel, now: int) -> float:
    """The open positions' P&L at the kernel's marks at `now` (their last closes)."""
    marks = kernel.marks(now)
    return math.fsum((marks.get(s, p.avg_price) - p.avg_price) * p.quantity * p.multiplier
                     for s, p in kernel.ledger.positions.items())


def run_totals(kernel, now: int) -> str:
    """The run's money at its end, as its last line says it: the round trips' P&L (net of their
    commissions), the commission paid (as far as the broker has reported it), and the open
    positions' P&L at the last prices (the status line's marks)."""
    trades = kernel.ledger.trades
    realised = math.fsum(t.pnl for t in trades)
    commission = math.fsum(f.commission for f in kernel.ledger.fills)
    positions = kernel.ledger.positions
    unrealised = open_pnl(kernel, now)
    pending = kernel.commission_pending()
    line = (f"{len(trades)} round trip{'s' * (len(trades) != 1)}: P&L {realised:+,.2f} net of their commission"
            if trades else "no round trip")
    line += f"; commission paid {commission:,.2f}" + (" so far (IB has more to report)" if pending else "")
    if positions:
        line += f"; open position{'s' * (len(positions) != 1)} {unrealised:+,.2f} at the last prices"
    return line


# ---- the run ------------------------------------------------------------------------------

def session_lock(account: str, strategy: str, journal_path: str = ""):
    """One run at a time trades a strategy on an account from this machine: an exclusive lock on
    a file named for the two (in QTRADE_LOCK_DIR, else the temp folder's qtrade-locks), held
    while the run lives and released by the OS when its process ends, however it ends. Returns
    the open lock file; RunRefused (2) when another run holds it, with what that run wrote in it."""
    import fcntl
    import os
    import re
    import tempfile

    folder = Path(os.environ.get("QTRADE_LOCK_DIR") or Path(tempfile.gettempdir()) / "qtrade-locks")
    folder.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{account}--{strategy}") + ".lock"
    f = open(folder / name, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "a run whose process id is not written yet"
        f.close()
        raise RunRefused(f"another qtrade run trades {strategy} on account {account} from this machine ({holder}): "
                         "two runs of one strategy on one account would trade one position twice. Stop it first; "
                         "--dry-run only watches and may run beside it", 2) from None
    f.seek(0)
    f.truncate()
    f.write(f"process {os.getpid()}, journal {journal_path or '?'}, since {_time.strftime('%Y-%m-%d %H:%M:%S')}")
    f.flush()
    return f


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
    totals: str = ""                 # run_totals at the stop


@dataclass
class _Run:
    """What one IB run carries from the connect to the stop: the settings it was started with,
    then what reconciliation and the warm-up found."""

    ib: object
    journal: object
    plan: object
    spec: object                     # check.model.DataSpec
    limits: object                   # the risk limits
    dry_run: bool
    live: bool
    seconds: float | None            # --for
    on_order: Callable | None
    say: Callable[[str], None]
    status_every: float
    t0: float                        # monotonic time of the start
    figures: dict
    # after reconciliation
    run_id: str = ""
    mode: str = ""
    prefix: str = ""
    account: str = ""
    report: object = None
    first_lost: object = None
    # after the warm-up
    prep: object = None
    candidates: object = None        # a scanner's candidates from IB's market scanner (livescan.IBCandidates)
    history_wanted: int = 0
    cash_now: float = 0.0
    bar_of: dict = field(default_factory=dict)   # symbol -> the bar size its history came in
    take_over: bool = False          # --take-over: manage what IB holds of the strategy from another journal
    lock: object = None              # the session lock held while the run trades (session_lock)


def run_ib(strategy: str, *, connect, overrides: dict, journal, dry_run: bool, live: bool, yes: bool,
           tty: bool, confirm: Callable[[str], bool], seconds: float | None, on_order=None,
           say: Callable[[str], None] = print, broker_factory=None, status_every: float = 60.0,
           take_over: bool = False) -> Outcome:
    """One run of a strategy on IB, from connect to a clean stop (see the module's docstring).
    `broker_factory(connect, **options)` makes the IB broker (default: brokers.ib.broker.IBBroker);
    the journal is open and stays the caller's. Raises RunRefused, ConnectError, DiagnosticError."""
    from ..check.model import DataSpec, Schedule, risk_limits
    from ..plan.build import build_plan, load_strategy

    t0 = _time.monotonic()
    doc, ws = load_strategy(strategy, overrides)
    if doc.get(("scanner",)) is not None:
        from .livescan import refuse_unsupported

        refuse_unsupported(doc, ws)
    plan = build_plan(doc, ws, overrides)
    spec = DataSpec.from_spec(doc.get(("data",)))
    limits = risk_limits(doc)
    timezone = Schedule.from_spec(doc.get(("schedule",))).timezone
    if broker_factory is None:
        from ..brokers.ib.broker import IBBroker as broker_factory
    from ..brokers.ib.contracts import load_instruments

    inst_doc = ws.instruments_for(doc)
    instruments = inst_doc.data if inst_doc is not None else load_instruments()
    ib = broker_factory(connect, instruments=instruments, read_only=dry_run, limits=limits, say=say,
                        subscriptions=doc.get(("data", "subscriptions")), timezone=timezone)
    ib.connect()
    figures: dict = {"connect_seconds": round(_time.monotonic() - t0, 4)}
    run = _Run(ib, journal, plan, spec, limits, dry_run, live, seconds, on_order, say, status_every, t0, figures)
    run.take_over = take_over
    try:
        return _run_connected(run, strategy, overrides, yes=yes, tty=tty, confirm=confirm)
    finally:
        ib.close()
        if run.lock is not None:
            run.lock.close()        # (the OS releases it too when the process dies: no stale lock)


def _run_connected(run: _Run, strategy, overrides, *, yes: bool, tty: bool, confirm) -> Outcome:
    """The live guard, reconciliation before anything is sent, the warm-up from IB's history and
    the run's journal entry; then the trading."""
    from . import backtest as bt
    from .journal import new_run_id, shown_time
    from .trading import live_guard

    ib, journal, plan, live, figures = run.ib, run.journal, run.plan, run.live, run.figures
    say = run.say

    account = ib.account_id
    why = live_guard(live=live, account=account, paper=ib.is_paper, yes=yes, tty=tty, confirm=confirm)
    if why:
        raise RunRefused(why, 2)
    mode = "dry-run" if run.dry_run else ("live" if live else "paper")
    prefix = f"qtrade:{plan.name}:"
    unclosed = []
    if not run.dry_run:         # (a dry run sends nothing: it may watch beside the run that trades)
        run.lock = session_lock(account, plan.name, journal_path=str(getattr(journal, "path", "") or ""))
        unclosed = unclosed_runs(journal, plan.name, account)
    run_id = new_run_id()
    settings = getattr(ib, "settings", None)
    where = f" at {settings.host}:{settings.port}" if settings is not None else ""
    say(f"{plan.name}: {'LIVE' if mode == 'live' else mode} on IB account {account}"
        f"{' (a paper account)' if ib.is_paper else ''}{where}, client id {ib.client_id}"
        + ("; read-only: orders are printed and filled in a simulated wallet, nothing is transmitted"
           if run.dry_run else ""))
    for dead in unclosed:
        last = f", last journaled {shown_time(dead['last'])}" if dead["last"] else ""
        say(f"the {dead['mode']} run {dead['run_id']} (started {shown_time(dead['started_at'])}{last}) did not close: "
            "it was killed or its machine stopped. It is marked interrupted; what IB did since is reconciled now")
    # reconcile before anything is sent
    t_rec = _time.monotonic()
    state = journal_state(journal, prefix, account)
    report = ib.reconcile(state, prefix)
    first_lost = report
    if report.lost:        # sent but unknown at IB: asked once more before they are marked lost
        ib.pump(0.5)
        report = ib.reconcile(state, prefix)
    figures["reconcile_seconds"] = round(_time.monotonic() - t_rec, 4)
    # the warm-up from IB's history: IB's alerts meanwhile (a pacing wait, a farm) are said as they
    # come, and journaled once the run has its entry
    warm_alerts: list = []

    def warm_alert(alert) -> None:
        warm_alerts.append(alert)
        say(alert_line(alert))
    ib.on_alert = warm_alert
    try:
        prep, wanted_bars = _warm_up(run, strategy, overrides, state)
    finally:
        ib.on_alert = None
    for s in prep.symbols:
        if s in prep.frames:
            use_ib_tick(prep, ib, s, say)
    values = ib.account()
    if values is None:
        raise RunRefused(f"IB did not give account {account}'s values in time: nothing is sized without them", 1)
    cash_now = values.equity
    bt.start_run(prep, journal, mode, run_id, cash_now)
    for alert in warm_alerts:
        journal_alert(journal, run_id, alert, ib)
    # the account's net liquidation is the run's cash, not the strategy's backtest.cash
    # what its fills cost: the account's own (IB's commissions, IB's fills), or a dry run's wallet's model
    costs = ("IB's, as IB reports them for each execution (backtest.commission models backtests)",
             "none modelled: the fills are IB's own") if mode != "dry-run" else \
        (f"simulated: {prep.sim.commission.describe()}", f"simulated: {prep.sim.slippage.describe()}")
    journal.db.execute("UPDATE runs SET settings = json_set(settings, '$.account', ?, '$.broker', 'ib',"
                       " '$.client_id', ?, '$.data', 'IB history', '$.cash', ?, '$.commission', ?, '$.slippage', ?)"
                       " WHERE run_id = ?", (account, ib.client_id, cash_now, *costs, run_id))
    run.run_id, run.mode, run.prefix, run.account = run_id, mode, prefix, account
    run.history_wanted = wanted_bars
    run.report, run.first_lost, run.prep, run.cash_now = report, first_lost, prep, cash_now
    try:
        return _trade(run)
    except BaseException:
        import contextlib
        import sqlite3

        with contextlib.suppress(sqlite3.Error):
            journal.finish_run(run_id, "failed", {})
        raise


def journal_alert(journal, run_id: str, alert, ib) -> None:
    """One of IB's alerts as a journal note (at its time, else IB's now)."""
    journal.note(run_id, _iso(alert.time or ib.now()), "alert", str(alert.code), alert.message)


def alert_line(alert) -> str:
    """One of IB's alerts as said: its code (none for the run's own, such as a pacing wait)."""
    return f"IB {alert.code}: {alert.message}" if alert.code else f"IB: {alert.message}"


def _warm_up(run: _Run, strategy, overrides, state):
    """Each symbol's history from IB (a scanner's candidates of now), prepared as a backtest's
    bars are: (the prepared run, the bars asked for)."""
    from . import backtest as bt

    ib, plan, spec, say = run.ib, run.plan, run.spec, run.say
    wanted_bars = history_bars(plan, spec.history, spec.bar)

    bar_of = run.bar_of

    from .livescan import scan_warmup, scanned_names

    scanned = scanned_names(strategy, overrides)       # a scanner's universe (empty without one)
    if scanned:
        wanted_bars = max(wanted_bars, scan_warmup(strategy, overrides) + 1)
    no_history: dict[str, str] = {}
    listed: set[str] | None = None      # with IB's scanner as the source: its candidates now
    if scanned:
        from .livescan import IBCandidates, _spec

        sspec = _spec(strategy, overrides)[0]
        if sspec is not None and sspec.source is not None:
            bound = sspec.universe if sspec.universe is not None else universe_of(strategy, overrides)
            run.candidates = IBCandidates(sspec.source, bound, ib, name=sspec.name, ttl_ns=int(ib.budget.ttl * 1e9))
            run.candidates.refresh()
            if not run.candidates.counts:
                raise RunRefused(f"IB's market scanner did not answer: {run.candidates.notes[-1][3]}", 1)
            held = {p.underlying for p in state.positions.values()}
            listed = set(run.candidates.current) | (held & scanned)
            say(f"IB's scanner: {len(run.candidates.current)} candidates now"
                + (f" ({', '.join(run.candidates.current)})" if run.candidates.current else "")
                + f" of the {len(scanned)} names of the universe that bounds them")

    def frames_from(symbols, bar, timezone):
        from ..brokers.ib.contracts import ContractError
        from ..brokers.ib.history import HistoryError

        frames = {}
        for s in symbols:
            if listed is not None and s in scanned and s not in listed and s not in read_by_rules:
                continue               # not a candidate now: history and a stream when IB lists it
            sizes = [bar] if s in plan_symbols or s in scanned else [bar, "1d"]   # a symbol the rules read may be coarser
            for size in sizes:
                try:
                    frame = ib.history_frame(s, size, wanted_bars if size == bar else 30, timezone, spec.session)
                except (HistoryError, ContractError) as exc:
                    frame, why = None, str(exc)
                if frame is not None and len(frame):
                    frames[s], bar_of[s] = frame, size
                    break
                why = why if frame is None else f"IB has no {size} bars of {s}"
            else:
                if s in scanned and s not in read_by_rules:
                    # as in a simulated run: a scanned name without bars is not traded, the scan counts it as no data
                    no_history[s] = why
                    continue
                raise RunRefused(f"{s}: no history for the warm-up: {why}", 1)
        return frames

    plan_symbols = set(universe_of(strategy, overrides))
    read_by_rules = set(plan.inputs.symbols)
    prep = bt.prepare(strategy, overrides, frames_from=frames_from, scan_frames_from=frames_from if scanned else None)
    from .live import bar_done
    ib.bar_done = bar_done(prep)        # a daily bar is complete at its session's close, not at midnight
    for d in prep.ws.warnings:          # validate's warnings, as a simulated run shows them
        say(d.format())
    if scanned and not any(s in prep.frames for s in scanned):
        if listed is not None and not no_history:
            raise RunRefused("IB's market scanner lists none of the universe's names now and no position of the "
                             "strategy is held: nothing to start on (start when it does, or widen the universe)", 1)
        raise RunRefused("the scanner's universe has no history at IB: " +
                         "; ".join(f"{s}: {why}" for s, why in list(no_history.items())[:5]), 1)
    for s, why in no_history.items():
        say(f"{s}: no history at IB ({why}): not traded, the scan counts it as no data")
    return prep, wanted_bars


def _trade(run: _Run) -> Outcome:
    """Journal what reconciliation found, restore and adopt, then the live loop to the stop."""
    from ..brokers.dryrun import DryRunBroker
    from ..brokers.sim import SimBroker
    from .backtest import Result
    from .equity import equity_curve
    from .live import LiveRun, live_kernel
    from .prepare import _symbol_bars
    from .recorder import Recorder
    from .session import run_settings
    from .trading import KillSwitch, margin_gate

    ib, prep, journal, run_id, prefix, account = run.ib, run.prep, run.journal, run.run_id, run.prefix, run.account
    report, first_lost, limits, dry_run, live = run.report, run.first_lost, run.limits, run.dry_run, run.live
    say, figures, cash_now, spec, bar_of = run.say, run.figures, run.cash_now, run.spec, run.bar_of
    on_order, t0, seconds, status_every = run.on_order, run.t0, run.seconds, run.status_every
    from ..brokers.ib.reconcile import combo_flags

    state = journal_state(journal, prefix, account)
    state.view(ib.leg_contract)            # which conIds are the legs of which open combos
    closed_outside, broken = combo_flags(report, state.legs_of)
    over = overfills(journal, report)
    apply_report(journal, run_id, report, state, prefix, ib.now(), say)
    if over:
        raise RunRefused(next(iter(over.values())) + (f" ({len(over)} such executions, each journaled as an error)"
                                                       if len(over) > 1 else "") + "; nothing was sent", 1)
    confirm_lost(journal, run_id, first_lost, report, ib.now())
    state = journal_state(journal, prefix, account)     # with what reconciliation brought in
    symbol_bars = {s: _symbol_bars(prep, s)[0] for s in prep.symbols if s in prep.frames}
    # a contract several owners hold whose sum IB's position disagrees with: whose share is off
    # cannot be told, so none of them is restored (no exit sends a quantity IB may not hold);
    # entries on it are blocked until they agree (one owner's position is restored, as before)
    unsure: set[str] = set()
    for flag in report.mismatch:
        owners = owners_of(state, flag.con_id, flag.symbol)
        if len(owners) > 1:
            unsure.update(key for key, _ in owners)
    for key in sorted(unsure):
        say(f"{key}: not restored: IB's position in {state.positions[key].symbol} disagrees with the sum of its "
            "owners' positions; left as it is, no new entries on it until they agree")
    held = sum(p.quantity * p.avg_price * p.multiplier for key, p in state.positions.items() if key not in unsure)
    venue = ib
    wallet = None
    if dry_run:       # the wallet starts as the account is: its cash, and the strategy's positions
        settings, fills = run_settings(prep, run_id)
        wallet = SimBroker(dict(symbol_bars), fills, cash_now - held, settings.account, session=f"{run_id}.wallet",
                           fill_fraction=settings.fill_fraction)
        venue = DryRunBroker(ib, wallet)
        model = prep.sim.commission.describe()
        if model.startswith("none"):        # a preview that costs nothing where IB would charge
            say(f"note: the dry run's wallet fills by the strategy's backtest costs: commission {model}; "
                "IB's commission will be charged on a paper or live run (set backtest.commission to preview it)")
    kill = KillSwitch(limits.kill_switch_file)

    source_gate: list = []      # with IB's scanner as the source: no entry on a name whose stream was released

    def gate(symbol: str) -> str | None:
        return kill.engaged() or (source_gate[0](symbol) if source_gate else None) or ib.gate(symbol)

    def contract_of(symbol: str, ref: str | None = None, intent: str | None = None):
        if symbol not in prep.symbols:       # a combo's key: its legs carry their contracts
            return None
        try:
            return ib.contract_for(symbol, ref, intent)
        except Exception:        # a symbol IB cannot resolve: journaled without one
            return None

    recorder = Recorder(journal, run_id, contract=contract_of, ids=ib.broker_ids)
    seq = journal.last_order_seq(prefix)
    at_ib = ib.highest_seq(prefix)
    if at_ib > seq and not dry_run and not run.take_over:
        raise RunRefused(
            f"IB holds orders of {prefix[:-1]} up to {prefix}{at_ib} on account {account} that this journal did not "
            "send: another run of the strategy on another journal (here or on another machine), or this journal's "
            "own history lost. Two runs of one strategy on one account would trade one position twice, so this run "
            "sends nothing. Stop the other run and use its journal (--journal); or, if no other run trades it, run "
            "again with --take-over to manage its position from this journal", 2)
    if at_ib > seq:
        # (their fills were journaled here by the reconciliation: the strategy's position at IB is
        # the one this run manages, whoever's journal sent them)
        say(f"IB holds orders of this strategy up to {prefix}{at_ib} that this journal did not send (another "
            f"journal's run of it, or a journal lost): their fills are journaled here (reconcile above) and the "
            f"position they leave is this run's to manage; this run's orders continue from {prefix}{at_ib + 1}. "
            "Two runs of one strategy on one account would trade one position: stop the other if it runs")
        seq = at_ib
    kernel, feed, timers = live_kernel(prep, venue, run_id=run_id, recorder=recorder,
                                       tags=(prefix, seq), on_order=on_order,
                                       cash=cash_now, gate=gate, chain_fetch=ib.chain_fetch)
    feed.use_bar_done(ib.bar_done)      # IB's daily bar is complete at its session's close
    kernel.margin_calls = dry_run       # IB liquidates a real account under its maintenance margin itself
    kernel.roll_target = ib.roll_to     # a futures position is rolled when IB's front month moves past it
    if not dry_run:
        kernel.check_order = margin_gate(limits.margin_check, paper=ib.is_paper, live=live, what_if=ib.what_if,
                                         funds=lambda: kernel.account_view()[1])
    restored = restore_positions(kernel, state.positions, say, skip=unsure)
    restored.update(restore_combos(kernel, state.positions, skip=set(closed_outside) | set(broken), say=say))
    traded = {s for s in prep.symbols if s in prep.frames}
    live_scan = None
    if prep.scan is not None:
        from .livescan import scanner_live

        live_scan = scanner_live(prep, kernel, feed, ib, journal, run_id, say, traded)
    source_run = None
    if run.candidates is not None:
        from .livescan import IBSourceRun

        streamed = set(traded) | set(feed.scan_only) | {s for s in prep.plan.inputs.symbols if s not in prep.symbols}
        source_run = IBSourceRun(run.candidates, live_scan, feed, prep, bars=run.history_wanted,
                                 session=spec.session, streamed=streamed)
        source_run.journal()          # the start's request
        source_gate.append(source_run.gate)
    # a position's symbol (a second owner's position in a symbol is keyed SYMBOL#2 in the ledger)
    ib.held_symbols = lambda: list(dict.fromkeys(p.symbol for p in kernel.ledger.positions.values()
                                                 if p.symbol in traded))
    now = _iso(ib.now())
    in_wallet: dict[str, list[float]] = {}        # what the dry run's wallet holds: IB's net of the owners'
    held_in: dict[str, int] = {}
    for key, ledger_key in restored.items():
        pos = state.positions[key]
        symbol = pos.symbol
        if pos.con_id and symbol in traded and held_in.get(symbol) != int(pos.con_id):
            held_in[symbol] = int(pos.con_id)
            try:        # its exits go to the contract it is held in, even past the front month's roll
                ib.hold_contract(symbol, int(pos.con_id))
            except Exception as exc:     # noqa: BLE001 - IB cannot say: the exits go to today's contract
                say(f"{symbol}: the contract the position is held in (conId {pos.con_id}) was not found at IB "
                    f"({exc}); its exits go to {symbol}'s contract today")
        net = in_wallet.setdefault(symbol if not pos.legs else ledger_key, [0.0, 0.0])
        net[0] += pos.quantity
        net[1] += pos.quantity * pos.avg_price
        whose = f" of {kernel.ledger.positions[ledger_key].owner}" if key != symbol and not pos.legs else ""
        text = f"{symbol} {pos.quantity:g}{whose} @ {pos.avg_price:.4f} restored from the journal: its exits manage it"
        journal.note(run_id, now, "restored", key, text)
        say(f"restored: {text} (opened by {pos.entry_ref})")      # said, as the reconciliation's lines are
    if wallet is not None:
        for held_key, (quantity, value) in in_wallet.items():
            wallet.hold(held_key, quantity, value / quantity if quantity else 0.0)
    for ref in adopt_orders(kernel, report, state, ib):
        journal.note(run_id, now, "adopted", ref, f"{ref} is working at IB from an earlier run: adopted, not re-sent")
        say(f"adopted: {ref} is working at IB from an earlier run: tracked, not sent again")
    for roll in unfinished_rolls(journal, state, prefix):
        if roll["symbol"] not in kernel.syms or kernel.syms[roll["symbol"]].working_entry is not None:
            continue
        try:
            front = ib.contracts.resolve(roll["symbol"]).local_symbol
        except Exception:       # noqa: BLE001 - IB cannot say now: the open goes to the front month when sent
            front = "the front month"
        reason = f"roll {roll['closed_in']} -> {front}"
        kernel.resume_roll(roll["symbol"], roll["action"], roll["quantity"], roll["owner"] or kernel.settings.strategy,
                           roll["price"], reason)
        journal.note(run_id, now, "roll", roll["symbol"],
                     f"{roll['symbol']}: an earlier run closed the position in {roll['closed_in']} to roll it and did "
                     f"not open the new contract: its open ({roll['action']} {roll['quantity']:g} {front}) is sent "
                     "once, now")
    last = {"report": report}

    def after_reconnect() -> None:
        fresh = journal_state(journal, prefix, account)
        again = ib.reconcile(fresh, prefix)
        over = overfills(journal, again)
        apply_report(journal, run_id, again, fresh, prefix, ib.now(), say)
        for message in over.values():       # journaled above; said, and new entries stop (the kernel's _error)
            kernel.errors.append((kernel._now, message))
            kernel.halted = kernel.halted or message
        confirm_lost(journal, run_id, last["report"], again, ib.now())
        last["report"] = again

    ib.on_reconnected(after_reconnect)
    from ..brokers.ib.history import HistoryError

    held_symbols = {state.positions[key].underlying for key in restored}
    priority_of = live_scan.priority if live_scan is not None else (lambda symbol: "watchlist")
    ib.priority_of = priority_of
    # lines by priority: open positions, then (with a scanner) its top picks, other picks, the rest
    from ..brokers.ib.broker import _PRIORITY

    lined = sorted((s for s in prep.symbols if s in traded),
                   key=lambda s: (-ib.budget.rank(_PRIORITY["position" if s in held_symbols else priority_of(s)]), s))
    try:
        for symbol in lined:
            why = ib.subscribe(symbol, "position" if symbol in held_symbols else priority_of(symbol))
            if why and "no market data line" not in why:      # beyond the budget: they take turns (said below)
                say(f"market data: {why}")
            ib.stream(symbol, spec.bar, spec.session)
        for symbol in prep.plan.inputs.symbols:
            if symbol not in prep.symbols:
                ib.stream(symbol, bar_of.get(symbol, spec.bar), spec.session)
        if live_scan is not None:
            for symbol in feed.scan_only:
                ib.stream(symbol, spec.bar, spec.session)
    except HistoryError as exc:
        raise RunRefused(f"IB will not stream the bars the run needs: {exc}", 1) from None
    say(ib.budget_report(len(lined)))
    ib.ready()
    figures["ready_seconds"] = round(_time.monotonic() - t0, 4)
    stop = Stop(seconds)

    def alerts() -> list[str]:
        """IB's alerts (errors about no order: 1100, 2103, ...), journaled and said as they come."""
        out = []
        for alert in ib.take_alerts():
            journal_alert(journal, run_id, alert, ib)
            out.append(alert_line(alert))
        return out

    def status() -> str:
        alerts()
        return status_line(kernel, ib, ib.now(), prep.timezone, prep.schedule)

    loop = LiveRun(kernel, feed, ib, timers, stop=stop, status=status, say=say, status_every=status_every,
                   notices=alerts)
    with stop.on_signals():
        stopped = loop.run()
        unconfirmed = loop.shutdown()
    status()
    if loop.first_decision_wall is not None:
        figures["connect_to_first_decision_seconds"] = round(loop.first_decision_wall - t0, 4)
    if loop.latencies:
        figures["decision_to_place_ms"] = round(1000 * float(np.median(loop.latencies)), 3)
    figures.update(ib.figures())
    if live_scan is not None:
        figures.update(live_scan.figures())
    if source_run is not None:
        figures.update(source_run.figures())
    kernel._end_of_data()
    bars = {s: kernel.syms[s].bars for s in kernel.syms}
    firsts = [int(b.start[kernel.syms[s].start]) for s, b in bars.items() if len(b) > kernel.syms[s].start]
    prep.start = pd.Timestamp(min(firsts), tz="UTC").tz_convert(prep.timezone) if firsts else None
    result = Result(prep, run_id, kernel.ledger, kernel, bars, {},
                    lambda: equity_curve(kernel.ledger, bars, kernel.settings.cash, prep.start,
                                         kernel.closed_combos + list(kernel.combos.values()), kernel.combo_symbol))
    result.broker = venue
    return Outcome(run_id, stopped, kernel, result, figures, unconfirmed, run_totals(kernel, ib.now()))


def use_ib_tick(prep, ib, symbol: str, say: Callable[[str], None]) -> None:
    """The tick grid a traded stock's or future's order prices go on is IB's minimum price
    variation for its contract (the contract details' minTick) where the instrument map's
    tick_size is not on it: IB refuses a limit or a stop off its grid (110), and a protective stop
    refused leaves the position unprotected. A finer grid at IB that the map's lies on (a stock
    under $1 in 0.0001) keeps the map's: its prices are valid at IB whatever the stock's price
    does. Said once; the symbol's bars are made with it."""
    from ..brokers.ib.contracts import ContractError

    inst = prep.instruments.get(symbol)
    if inst is None or inst.sec_type not in ("STK", "FUT"):
        return
    try:
        tick = float(ib.resolved(symbol).min_tick)
    except ContractError:
        return          # IB cannot say now: the map's tick, and IB's answer to the order says the rest
    if not tick > 0 or abs(tick - inst.tick_size) <= 1e-12:
        return
    steps = inst.tick_size / tick
    if tick < inst.tick_size and abs(steps - round(steps)) < 1e-9:
        return          # IB's grid is finer and the map's lies on it: the map's prices are IB's too
    import dataclasses

    prep.instruments[symbol] = dataclasses.replace(inst, tick_size=tick)
    say(f"{symbol}: IB's minimum price variation is {tick:g}, the instrument map's tick_size "
        f"{inst.tick_size:g}: limit and stop prices go on IB's grid")


def universe_of(strategy: str, overrides: dict) -> list[str]:
    from ..check.model import universe_symbols
    from ..plan.build import load_strategy

    doc, _ = load_strategy(strategy, overrides)
    return universe_symbols(doc)


def _iso(ns: int) -> str:
    return pd.Timestamp(int(ns), tz="UTC").isoformat()
