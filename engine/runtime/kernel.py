"""The trading kernel: an event-driven Runner over the Broker protocol.

One loop for a simulated run, a dry run and (with the IB broker) paper and live. A feed steps
each symbol's bars in global time order and the kernel reacts:

- a bar opens: the venue fills what works at the open; the orders decided at the previous close
  are sized from the account and the quote now, risk-capped, and sent (so what is printed or
  journaled is exactly what is sent);
- the bar trades: the venue matches resting orders (protective stops and targets, limits);
- a bar closes: the plan's values for that bar (streamed bar by bar, or read from a vectorised
  evaluation of the same plan), then the exits of each open position (only its owner's exits:
  the strategy's, or the agent's that opened it), the protective orders' new levels (a stop
  level set at a close works during the next bar, as a real stop order), flat-by, and the
  entries, checked against the risk limits before anything is sized;
- broker events: the order tracker maps each order ref to its intent and record, takes
  executions by execution id (a repeated id is ignored), applies partial fills and commissions,
  and books the ledger when an order is done. An event it cannot place (an unknown ref, more
  filled than ordered) is journaled as an error and stops new entries.

The feed skips, per symbol, the bars where nothing can fire and nothing is open or working,
which keeps a run over long history fast. Option combos are not in the kernel yet: `supports`
says so, and those strategies still run on runtime.runner.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..brokers import events as E
from ..brokers.costs import fraction
from ..brokers.matching import FillModel
from ..market.series import SymbolBars
from ..orders.intent import OrderIntent, Sizing
from ..plan import nodes as N
from ..plan.evaluate import Stream, explain, value_at
from ..portfolio.ledger import Fill, Ledger
from ..risk.limits import AccountState, cap_quantity, check_entry
from .runner import Decision, OrderRecord, RunSettings, RunState, _context_nodes, _with_excursions

# phases at one instant: decisions at a close, then fills at an open, then fills inside a bar
CLOSE, OPEN, INTRABAR = 0, 1, 2


def supports(plan: N.Plan, orders: dict) -> str | None:
    """None when the kernel runs this strategy, else why not (yet)."""
    for name, spec in orders.items():
        if "legs" in (spec or {}):
            return f"order '{name}' is an options combo (combos run on the backtest Runner for now)"
    return None


@dataclass
class _Tracked:
    """One order the kernel sent (or decided to send), and what the venue said of it."""

    intent: OrderIntent
    record: OrderRecord
    symbol: str
    owner: str
    role: str                       # entry | exit | stop | target
    rule: N.Rule
    decided_bar: int
    exit_kind: str = ""             # when | flat_by | stop | target (exits)
    filled: float = 0.0
    value: float = 0.0
    commission: float = 0.0
    exec_ids: set = field(default_factory=set)
    last_bar: int = -1
    last_time: int = 0
    why: str = ""                   # what the rule compared when it fired (for printed orders)
    sent: bool = False
    done: bool = False


@dataclass
class _Symbol:
    symbol: str
    bars: SymbolBars
    values: list
    start: int
    entry_mask: np.ndarray | None
    flat_mask: np.ndarray | None
    candidates: np.ndarray | None   # bars where an entry can fire (None: every bar)
    stream: Stream | None = None
    inputs: object = None           # evaluate.Bars for streaming
    owner: str | None = None        # who holds the open position
    pending: list = field(default_factory=list)    # refs decided, to send at the next open
    working_entry: str | None = None
    closing: str | None = None
    protect: dict = field(default_factory=dict)    # (rule name, stop|target) -> ref
    stats: dict = field(default_factory=dict)      # running position fields


class Kernel(RunState):
    """Runs a Plan against a Broker, bar by bar."""

    def __init__(self, plan: N.Plan, symbols: dict[str, _Symbol], broker, fills: FillModel,
                 settings: RunSettings, *, on_order: Callable[[dict], None] | None = None,
                 before_send: Callable[[OrderRecord], None] | None = None,
                 progress: Callable[[int], None] | None = None):
        class _Sig:      # RunState reads .bars of each symbol's signals
            def __init__(self, bars):
                self.bars = bars

        super().__init__(plan, {s: _Sig(st.bars) for s, st in symbols.items()}, fills, settings)
        self.syms = symbols
        self.venue = broker
        self.on_order = on_order
        self.before_send = before_send
        self.progress = progress
        self.orders_by_ref: dict[str, _Tracked] = {}
        self.errors: list[tuple[int, str]] = []
        self.halted = ""                 # why new entries stopped ('' while they may go on)
        self._seq = 0
        self._peak = settings.cash
        self._day = None
        self._day_start = settings.cash
        self._losses = 0
        self._paused_until = -math.inf
        self._entries = [r for r in plan.rules if r.kind == "entry"]
        self._exits = [r for r in plan.rules if r.kind == "exit"]
        self._flat_rule = N.Rule("exit", "flat_by", reason="flat by the schedule's time")
        agents = {r.agent for r in self._entries if r.agent}
        self._active = {a: plan.outputs.get(f"agents.{a}.active") for a in agents}
        self._score = {a: plan.outputs.get(f"agents.{a}.score") for a in agents}
        self._context_entries = {r.name for r in self._entries if not plan.nodes[r.when].market or
                                 (r.agent and self._active.get(r.agent) is not None and
                                  not plan.nodes[self._active[r.agent]].market)}

    # ---- the feed ----------------------------------------------------------------------------
    def run(self) -> Ledger:
        for symbol, st in sorted(self.syms.items()):
            for rule in self._entries:
                if rule.name in self._context_entries:
                    needs = sorted({n.attrs[0] for n in _context_nodes(self.plan, rule)})
                    self._decide(symbol, rule.name, "entry", "blocked",
                                 f"needs {', '.join(needs) or 'run context'}, which this run does not provide yet "
                                 "(scanner results come with the scanner engine)")
        heap = []
        for order, symbol in enumerate(sorted(self.syms)):
            proc = self._symbol(symbol)
            first = next(proc, None)
            if first is not None:
                heap.append((first[0], first[1], order, proc))
        heapq.heapify(heap)
        done = 0
        while heap:
            time, phase, order, proc = heapq.heappop(heap)
            self._now = time
            nxt = next(proc, None)
            if nxt is not None:
                heapq.heappush(heap, (nxt[0], nxt[1], order, proc))
            done += 1
            if self.progress is not None and done % 1024 == 0:
                self.progress(time)
        self._end_of_data()
        return self.ledger

    def _symbol(self, symbol: str):
        st = self.syms[symbol]
        b = st.bars
        n = len(b)
        start, end = b.start, b.end
        if st.stream is not None:
            for k in range(st.start):
                self._stream(st, k)
        k = st.start
        while k < n:
            if st.stream is None and self._idle(st):
                if st.candidates is not None:
                    j = int(np.searchsorted(st.candidates, k))
                    if j >= len(st.candidates):
                        return
                    k = int(st.candidates[j])
                yield int(end[k]), CLOSE
                self.venue.open_bar(symbol, k)
                self.venue.close_bar(symbol, k)
                self._on_close(st, k)
                k += 1
                continue
            yield int(start[k]), OPEN
            self._on_open(st, k)
            yield int(start[k]), INTRABAR
            self.venue.close_bar(symbol, k)
            self._drain()
            yield int(end[k]), CLOSE
            self._drain()
            self._on_close(st, k)
            k += 1

    def _idle(self, st: _Symbol) -> bool:
        return st.symbol not in self.ledger.positions and not st.pending and st.working_entry is None \
            and st.closing is None

    def _stream(self, st: _Symbol, k: int) -> None:
        inputs = st.inputs
        fields = {f: inputs.fields[f][k] for f in inputs.fields}
        clock = {c: inputs.clock[c][k] for c in inputs.clock}
        others = {s: {f: v[k] for f, v in fs.items()} for s, fs in inputs.others.items()}
        out = st.stream.update(fields, clock, others)
        for i, arr in enumerate(st.values):
            if arr is not None:
                arr[k] = out[i]

    # ---- a bar opens -------------------------------------------------------------------------
    def _on_open(self, st: _Symbol, k: int) -> None:
        self.venue.open_bar(st.symbol, k)
        self._drain()
        pending, st.pending = st.pending, []
        for ref in pending:
            self._send(self.orders_by_ref[ref], k)
        self._drain()

    def _send(self, tr: _Tracked, k: int) -> None:
        """Size (entries), risk-check and place an order decided at the previous close."""
        st = self.syms[tr.symbol]
        b = st.bars
        it = tr.intent
        if tr.role == "entry":
            qty = self._entry_quantity(tr, b, k)
            if qty is None:
                st.working_entry = None
                return
            it = tr.intent = OrderIntent(**{**it.__dict__, "quantity": qty})
            tr.record.intent = it
        elif tr.role == "exit":
            pos = self.ledger.positions.get(tr.symbol)
            if pos is None:       # closed meanwhile (a protective order filled first)
                self._status(tr, "cancelled", self._now, "the position was already closed")
                st.closing = None
                return
        order = E.Order(it.tag, it.symbol, it.action, float(it.quantity), it.order_type, it.limit, it.stop, it.tif,
                        owner=tr.owner, intent=it.intent, rule=it.rule,
                        oca=f"{it.symbol}:protect" if tr.role in ("stop", "target") else "")
        if self.before_send is not None:
            self.before_send(tr.record)       # journaled before it leaves
        tr.sent = True
        if self.on_order is not None and tr.role in ("entry", "exit"):
            self.on_order({"time": self._now, "symbol": tr.symbol, "rule": it.rule, "order": tr.rule.order,
                           "intent": it, "why": tr.why, "quote": None, "role": tr.role})
        self.venue.place(order)

    def _entry_quantity(self, tr: _Tracked, b: SymbolBars, k: int) -> float | None:
        """The entry's quantity at the price it will fill near, after the risk caps and the funds
        check (None: refused, with the reason journaled)."""
        it = tr.intent
        quote = self.venue.quote(tr.symbol)
        price = float(quote.last) if quote is not None else float(b.open[k])
        if it.order_type == "market":
            price = self.broker.market_price(b, it.action, price)
        elif it.order_type == "limit" and it.limit is not None:
            price = min(price, it.limit) if it.action == "buy" else max(price, it.limit)
        quantity = it.quantity
        limits = self.settings.limits
        sized = quantity is None or limits.max_position is not None or limits.per_trade_risk is not None
        equity = self.ledger.equity(self.marks(self._now)) if sized else math.nan
        if quantity is None:   # a share of equity, at the price it will fill near
            sizing = it.sizing
            per_unit = price * b.multiplier if not b.margined else max(b.margin, 1e-12)
            quantity = sizing.value * equity / per_unit
            quantity = float(math.floor(quantity + 1e-9)) if sizing.whole else quantity
            while quantity > 0 and self.settings.account == "cash" and not b.margined and \
                    quantity * price * b.multiplier + self.broker.fee(b, quantity, price) > self.ledger.cash + 1e-9:
                quantity -= 1 if sizing.whole else quantity * 1e-6
        stop_distance = it.sizing.stop_distance if it.sizing else None
        quantity, why = cap_quantity(limits, quantity, equity=equity, unit_value=price * b.multiplier,
                                     stop_distance=stop_distance, multiplier=b.multiplier,
                                     whole=it.sizing.whole if it.sizing else True)
        reason = None
        if quantity <= 0:
            reason = why or "quantity rounds to 0 at the price it would fill near"
        else:
            fee = self.broker.fee(b, quantity, price)
            need = self.margin_required(b, quantity, price, it.action == "sell")
            funds = self.available_funds()
            if need + fee > funds + 1e-6:
                what = "cash" if self.settings.account == "cash" else "available funds"
                reason = f"insufficient {what}: needs {need + fee:,.2f}, has {funds:,.2f}"
            elif limits.max_margin_per_trade is not None and b.margined and need > limits.max_margin_per_trade:
                reason = f"margin {need:,.2f} above max_margin_per_trade {limits.max_margin_per_trade:,.2f}"
        if reason is not None:
            self._status(tr, "rejected", self._now, reason)
            self._decide(tr.symbol, it.rule, "entry", "blocked", reason)
            return None
        if why:   # the entry fired but was resized: say so on its decision
            for d in reversed(self.decisions):
                if d.symbol == tr.symbol and d.rule == it.rule and d.kind == "entry":
                    d.reason = f"{d.reason}; {why}" if d.reason else why
                    break
        return quantity

    # ---- broker events -----------------------------------------------------------------------
    def _drain(self) -> None:
        for ev in self.venue.events():
            if isinstance(ev, E.Execution):
                self._on_execution(ev)
            elif isinstance(ev, E.CommissionReport):
                tr = self._by_exec.get(ev.exec_id) if hasattr(self, "_by_exec") else None
                if tr is None:
                    self._error(f"commission report for an unknown execution {ev.exec_id}")
                else:
                    tr.commission += ev.commission
            elif isinstance(ev, E.OrderStatus):
                self._on_status(ev)
            elif isinstance(ev, E.BrokerError):
                self._error(f"broker error {ev.code} on {ev.ref or 'the connection'}: {ev.message}")
            elif isinstance(ev, E.ConnectionLost):
                self._error(f"connection lost: {ev.reason}")
                self.halted = self.halted or "the connection to the broker was lost"
            elif isinstance(ev, E.ConnectionRestored):
                if self.halted == "the connection to the broker was lost":
                    self.halted = ""

    def _on_execution(self, ev: E.Execution) -> None:
        tr = self.orders_by_ref.get(ev.ref)
        if tr is None:
            self._error(f"execution {ev.exec_id} for an order this run did not send ({ev.ref})")
            return
        if ev.exec_id in tr.exec_ids:
            return          # the same execution reported twice
        if tr.filled + ev.quantity > float(tr.intent.quantity) + 1e-9:
            self._error(f"execution {ev.exec_id} fills {tr.filled + ev.quantity:g} of an order for "
                        f"{tr.intent.quantity:g} ({ev.ref})")
            return
        if not hasattr(self, "_by_exec"):
            self._by_exec = {}
        self._by_exec[ev.exec_id] = tr
        tr.exec_ids.add(ev.exec_id)
        tr.filled += ev.quantity
        tr.value += ev.quantity * ev.price
        tr.last_bar, tr.last_time = ev.bar, ev.time

    def _on_status(self, ev: E.OrderStatus) -> None:
        tr = self.orders_by_ref.get(ev.ref)
        if tr is None:
            self._error(f"status '{ev.status}' for an order this run did not send ({ev.ref})")
            return
        if ev.status not in E.DONE or tr.done:
            return
        tr.done = True
        st = self.syms[tr.symbol]
        if tr.filled > 0:
            self._book(tr, st)
        else:
            status = {"expired": "expired", "rejected": "rejected", "cancelled": "cancelled"}[ev.status]
            self._status(tr, status, ev.time, ev.reason)
            if status == "rejected" and tr.role == "entry":
                self._decide(tr.symbol, tr.intent.rule, "entry", "blocked", f"rejected by the broker: {ev.reason}")
        if tr.role == "entry":
            st.working_entry = None
        elif tr.role == "exit":
            st.closing = None
        else:
            st.protect = {key: ref for key, ref in st.protect.items() if ref != tr.intent.tag}

    def _book(self, tr: _Tracked, st: _Symbol) -> None:
        """An order is done with fills: the ledger opens or closes the position at their average."""
        b = st.bars
        price = tr.value / tr.filled
        it = tr.intent
        fill = Fill(tr.symbol, it.action, tr.filled, price, tr.commission, tr.last_time, tr.last_bar, it.tag,
                    b.multiplier, tr.rule.name)
        self._status(tr, "filled", tr.last_time, "", tr.filled if it.quantity is None else None)
        if tr.role == "entry":
            self.ledger.open(fill, margined=b.margined, margin_per_unit=b.margin if b.margined else 0.0)
            st.owner = tr.owner
            st.stats = {}
            return
        if tr.role in ("stop", "target"):
            self._decide(tr.symbol, tr.rule.name, "exit", "fired", tr.rule.reason)
            for ref in list(st.protect.values()):
                if ref != it.tag:
                    other = self.orders_by_ref[ref]
                    if not other.done:
                        other.done = True
                        self._status(other, "cancelled", tr.last_time, f"one-cancels-all: {it.tag} filled")
            st.protect = {}
        pos = self.ledger.positions.get(tr.symbol)
        if pos is None or abs(pos.quantity + fill.signed) > 1e-9:
            self._error(f"{it.tag} filled {tr.filled:g} {it.action}, which does not close the position "
                        f"({pos.quantity if pos else 0:g} held)")
            return
        trade = self.ledger.close(fill, tr.rule.reason)
        self.ledger.trades[-1] = _with_excursions(trade, b)
        st.owner = None
        if trade.pnl < 0:
            self._losses += 1
        else:
            self._losses = 0
        limits = self.settings.limits
        if limits.circuit_breaker is not None and self._losses >= limits.circuit_breaker[0]:
            self._paused_until = self._now / 1e9 + limits.circuit_breaker[1]
            self._losses = 0

    # ---- a bar closes ------------------------------------------------------------------------
    def _on_close(self, st: _Symbol, k: int) -> None:
        if st.stream is not None:
            self._stream(st, k)
        symbol = st.symbol
        if symbol in self.ledger.positions and st.closing is None:
            self._manage(st, k)
        if self._idle(st):
            self._enter(st, k)

    def _position_context(self, st: _Symbol, k: int) -> dict:
        pos = self.ledger.positions[st.symbol]
        b = st.bars
        c = float(b.close[k])
        pnl = (c - pos.avg_price) * pos.quantity * pos.multiplier
        s = st.stats
        e = pos.entry_bar
        if not s:
            s.update(highest=-math.inf, lowest=math.inf, max_pnl=-math.inf, min_pnl=math.inf, upto=e - 1)
        for j in range(s["upto"] + 1, k + 1):   # the running fields through bar k
            s["highest"] = max(s["highest"], float(b.high[j]))
            s["lowest"] = min(s["lowest"], float(b.low[j]))
            pj = (float(b.close[j]) - pos.avg_price) * pos.quantity * pos.multiplier
            s["max_pnl"], s["min_pnl"] = max(s["max_pnl"], pj), min(s["min_pnl"], pj)
        s["upto"] = k
        return {"position.side": float(pos.side), "position.size": abs(pos.quantity),
                "position.entry_price": pos.avg_price, "position.bars_held": float(k - e),
                "position.time_held": (int(b.end[k]) - pos.entry_time) / 1e9, "position.pnl": pnl,
                "position.pnl_pct": (c / pos.avg_price - 1.0) * 100.0 * pos.side,
                "position.max_pnl": s["max_pnl"], "position.min_pnl": s["min_pnl"],
                "position.highest": s["highest"], "position.lowest": s["lowest"],
                "position.entry_credit": float(pos.entry_values.get("credit", np.nan)), "position.entry_bar": e}

    def _owned(self, rule: N.Rule, owner: str | None) -> bool:
        return rule.agent is None or rule.agent == owner

    def _manage(self, st: _Symbol, k: int) -> None:
        """The open position's exits at bar k's close, in file order; else its protective orders."""
        ctx = None
        fired, kind = None, "when"
        for rule in self._exits:
            if rule.when is None or not self._owned(rule, st.owner):
                continue
            node = self.plan.nodes[rule.when]
            if node.market:
                v = st.values[rule.when]
                hit = bool(v[k]) if np.ndim(v) else bool(v)
            else:
                ctx = ctx if ctx is not None else self._position_context(st, k)
                hit = bool(value_at(self.plan, rule.when, k, st.values, ctx))
            if hit:
                fired = rule
                break
        if fired is None and st.flat_mask is not None and st.flat_mask[k]:
            fired, kind = self._flat_rule, "flat_by"
        if fired is not None:
            for ref in list(st.protect.values()):
                self.venue.cancel(ref)
            self._drain()
            if st.symbol not in self.ledger.positions:
                return
            self._exit_order(st, fired, k, kind)
            return
        self._protect(st, k, ctx)

    def _protect(self, st: _Symbol, k: int, ctx: dict | None) -> None:
        """Place or move the protective stop and target orders: levels set at this close work
        during the next bar."""
        pos = self.ledger.positions[st.symbol]
        for rule in self._exits:
            if not self._owned(rule, st.owner):
                continue
            for key in ("stop", "target"):
                node = getattr(rule, key)
                if node is None:
                    continue
                if ctx is None:
                    ctx = self._position_context(st, k)
                level = value_at(self.plan, node, k, st.values, ctx)
                ref = st.protect.get((rule.name, key))
                ok = isinstance(level, float) and math.isfinite(level) and level > 0
                if ref is not None:
                    tr = self.orders_by_ref[ref]
                    if not ok:
                        self.venue.cancel(ref)
                    else:
                        field_ = "stop" if key == "stop" else "limit"
                        if getattr(tr.intent, field_) != level:
                            tr.intent = OrderIntent(**{**tr.intent.__dict__, field_: level})
                            tr.record.intent = tr.intent
                            self.venue.modify(ref, **{field_: level})
                    continue
                if not ok:
                    continue
                action = "sell" if pos.quantity > 0 else "buy"
                intent = OrderIntent(st.symbol, action, "stop" if key == "stop" else "limit", abs(pos.quantity),
                                     None, level if key == "target" else None, level if key == "stop" else None,
                                     "gtc", "close", rule.name, self._tag(), rule.reason)
                tr = self._track(intent, st, key, rule, k)
                st.protect[(rule.name, key)] = intent.tag
                self._send(tr, k)
        self._drain()

    def _exit_order(self, st: _Symbol, rule: N.Rule, k: int, kind: str) -> None:
        pos = self.ledger.positions[st.symbol]
        template = (self.settings.orders.get(rule.order) or {}) if rule.order else {}
        order_type = template.get("type", "market") if template else "market"
        limit = self._value(st, f"orders.{rule.order}.limit", k) if rule.order else None
        stop = self._value(st, f"orders.{rule.order}.stop", k) if rule.order else None
        intent = OrderIntent(st.symbol, "sell" if pos.quantity > 0 else "buy", order_type, abs(pos.quantity), None,
                             limit, stop, template.get("tif", "day") if template else "day", "close", rule.name,
                             self._tag(), rule.reason)
        self._decide(st.symbol, rule.name, "exit", "fired", rule.reason)
        tr = self._track(intent, st, "exit", rule, k, kind)
        st.closing = intent.tag
        self._queue(st, tr, k)

    def _enter(self, st: _Symbol, k: int) -> None:
        if k < st.start or (st.candidates is not None and not self._fires_somewhere(st, k)):
            return
        fired = self._fired_entries(st, k)
        if not fired:
            return
        rule = fired[0]
        for other in fired[1:]:
            self._decide(st.symbol, other.name, "entry", "blocked", f"'{rule.name}' fired on the same bar and won")
        if self.halted:
            self._decide(st.symbol, rule.name, "entry", "blocked", f"entries stopped: {self.halted}")
            return
        reason = check_entry(self.settings.limits, self.account_state())
        if reason:
            self._decide(st.symbol, rule.name, "entry", "blocked", reason)
            return
        template = self.settings.orders.get(rule.order) or {}
        intent = self._intent(st, rule, template, k)
        if intent is None:
            return
        why = "; ".join(explain(self.plan, rule.when, k, st.values, {}))
        self._decide(st.symbol, rule.name, "entry", "fired", rule.reason)
        tr = self._track(intent, st, "entry", rule, k)
        tr.why = why
        st.working_entry = intent.tag
        self._queue(st, tr, k)

    def _fires_somewhere(self, st: _Symbol, k: int) -> bool:
        j = int(np.searchsorted(st.candidates, k))
        return j < len(st.candidates) and int(st.candidates[j]) == k

    def _fired_entries(self, st: _Symbol, k: int) -> list[N.Rule]:
        """Entry rules that fire at bar k, best first: agents by score, then file order."""
        out = []
        for order, rule in enumerate(self._entries):
            if rule.name in self._context_entries:
                continue
            if st.entry_mask is not None and not st.entry_mask[k]:
                continue
            if not _truth(st.values[rule.when], k):
                continue
            gate = self._active.get(rule.agent) if rule.agent else None
            if gate is not None and not _truth(st.values[gate], k):
                continue
            s = self._score.get(rule.agent) if rule.agent else None
            score = float("-inf")
            if s is not None and self.plan.nodes[s].market:
                v = st.values[s]
                score = float(v[k] if np.ndim(v) else v)
                score = score if score == score else float("-inf")
            out.append((-score, order, rule))
        out.sort(key=lambda t: (t[0], t[1]))
        return [rule for _, _, rule in out]

    def _queue(self, st: _Symbol, tr: _Tracked, k: int) -> None:
        """Send now when the venue fills at this close (`fill: close`), else at the next open."""
        if self.broker.fill_model == "close" and tr.intent.order_type == "market":
            self._send(tr, k)
            self._drain()
        else:
            st.pending.append(tr.intent.tag)

    # ---- intents -----------------------------------------------------------------------------
    def _track(self, intent: OrderIntent, st: _Symbol, role: str, rule: N.Rule, k: int,
               exit_kind: str = "") -> _Tracked:
        record = OrderRecord(intent, self._now)
        self.orders.append(record)
        tr = _Tracked(intent, record, st.symbol, st.owner or rule.agent or self.settings.strategy, role, rule, k,
                      exit_kind)
        if role == "entry":
            tr.owner = rule.agent or self.settings.strategy
        self.orders_by_ref[intent.tag] = tr
        return tr

    def _intent(self, st: _Symbol, rule: N.Rule, template: dict, k: int) -> OrderIntent | None:
        action = template.get("action", "buy")
        if action == "sell" and self.settings.account == "cash":
            self._decide(st.symbol, rule.name, "entry", "blocked", "short selling needs a margin account")
            return None
        limit = self._value(st, f"orders.{rule.order}.limit", k)
        stop = self._value(st, f"orders.{rule.order}.stop", k)
        for name, price in (("limit", limit), ("stop", stop)):
            if price is not None and not (isinstance(price, float) and math.isfinite(price) and price > 0):
                self._decide(st.symbol, rule.name, "entry", "blocked", f"the {name} price is not a number yet ({price})")
                return None
        quantity, sizing = self._size(st, rule, template, k)
        if quantity is not None and quantity <= 0:
            self._decide(st.symbol, rule.name, "entry", "blocked", f"quantity is {quantity:g}")
            return None
        return OrderIntent(st.symbol, action, template.get("type", "market"), quantity, sizing, limit, stop,
                           template.get("tif", "day"), "open", rule.name, self._tag())

    def _size(self, st: _Symbol, rule: N.Rule, template: dict, k: int) -> tuple[float | None, Sizing | None]:
        spec = template.get("quantity", 1)
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            return float(spec), None
        if isinstance(spec, str):
            value = self._value(st, f"orders.{rule.order}.quantity", k)
            return (float(math.floor(value)) if value == value else 0.0), None
        whole = spec.get("round", "whole") == "whole"
        if "fixed" in spec and spec["fixed"] is not None:
            return float(spec["fixed"]), None
        if spec.get("percent_of_equity") is not None:
            return None, Sizing("percent_of_equity", fraction(spec["percent_of_equity"]), whole=whole)
        distance = self._value(st, f"orders.{rule.order}.stop_distance", k)
        frac = fraction(spec["risk_percent"])
        if distance is None or not (distance == distance) or distance <= 0:
            return 0.0, None
        qty = frac * self.equity() / (distance * st.bars.multiplier)
        qty = float(math.floor(qty + 1e-9)) if whole else qty
        return qty, Sizing("risk_percent", frac, distance, whole)

    def _value(self, st: _Symbol, output: str, k: int):
        node = self.plan.outputs.get(output)
        if node is None:
            return None
        return value_at(self.plan, node, k, st.values, {})

    # ---- records -----------------------------------------------------------------------------
    def account_state(self) -> AccountState:
        limits = self.settings.limits
        working = sum(1 for s in self.syms.values() if s.working_entry is not None and s.symbol not in
                      self.ledger.positions)
        if limits.max_daily_loss is None and limits.max_drawdown is None:
            return AccountState(math.nan, math.nan, math.nan, len(self.ledger.positions) + working,
                                self._losses, self._paused_until, self._now / 1e9)
        equity = self.equity()
        self._peak = max(self._peak, equity)
        day = self._now // 86_400_000_000_000
        if day != self._day:
            self._day, self._day_start = day, equity
        return AccountState(equity, self._peak, self._day_start, len(self.ledger.positions) + working,
                            self._losses, self._paused_until, self._now / 1e9)

    def _decide(self, symbol: str, rule: str, kind: str, outcome: str, reason: str = "") -> None:
        self.decisions.append(Decision(self._now, symbol, rule, kind, outcome, reason))

    def _tag(self) -> str:
        self._seq += 1
        return f"qtrade:{self.settings.run_id}:{self._seq}"

    def _status(self, tr: _Tracked, status: str, time: int, reason: str, quantity: float | None = None) -> None:
        rec = tr.record
        rec.status, rec.status_time = status, time
        if reason:
            rec.reason = reason

    def _error(self, message: str) -> None:
        self.errors.append((self._now, message))
        self.halted = self.halted or message

    def _end_of_data(self) -> None:
        """Orders still pending or working when the data ends expire, saying so."""
        for st in self.syms.values():
            last = int(st.bars.end[-1]) if len(st.bars) else 0
            for ref in st.pending:
                tr = self.orders_by_ref[ref]
                self._status(tr, "expired", last, "the data ended" if tr.role == "entry"
                             else "the data ended before it filled")
            st.pending = []
        for tr in self.orders_by_ref.values():
            if tr.sent and not tr.done and tr.record.status == "created":
                tr.record.status, tr.record.status_time = "working", int(self.syms[tr.symbol].bars.end[-1])
                tr.record.reason = "still working when the data ended"


def _truth(v, k: int) -> bool:
    return bool(v[k]) if np.ndim(v) else bool(v)
