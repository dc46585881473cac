"""The Runner: rules -> order intents -> risk -> broker -> fills -> ledger -> journal.

Each symbol is a small process (a generator) that waits for its next event: the close of a bar
where an entry rule fired, the fill of its order, the bar where an exit fires. A scheduler runs
the processes in global time order, so cash, margin and risk limits see every account change in
the order it happened, whatever the symbol. At equal times a decision at a bar's close comes
before a fill at the next bar's open, and an open fill before a stop touched during the bar.

The backtest's clock jumps between the bars where something can happen (SymbolSignals); the
decision code below is the same whatever the clock.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from ..brokers.sim import SimBroker, SimFill, SymbolBars
from ..orders.intent import OrderIntent, Sizing
from ..plan import nodes as N
from ..plan.evaluate import value_at
from ..portfolio.ledger import Fill, Ledger, Position, Trade
from ..risk.limits import AccountState, RiskLimits, cap_quantity, check_entry
from .signals import ExitEvent, SymbolSignals

# event phases at one instant: decisions at a close, then fills at an open, then intra-bar stops
CLOSE, OPEN, INTRABAR = 0, 1, 2


@dataclass
class Decision:
    time: int
    symbol: str
    rule: str
    kind: str         # entry | exit
    outcome: str      # fired | blocked
    reason: str = ""


@dataclass
class OrderRecord:
    intent: OrderIntent
    time: int
    status: str = "created"
    status_time: int = 0
    reason: str = ""


@dataclass
class RunSettings:
    cash: float = 100_000.0
    account: str = "margin"        # cash | margin
    orders: dict = field(default_factory=dict)      # order templates from the strategy
    limits: RiskLimits = field(default_factory=RiskLimits)
    run_id: str = "run"
    strategy: str = ""


class Runner:
    """Runs a plan over the symbols' bars with a broker, keeping the ledger and the records."""

    def __init__(self, plan: N.Plan, signals: dict[str, SymbolSignals], broker: SimBroker, settings: RunSettings,
                 progress: Callable[[int], None] | None = None):
        self.plan = plan
        self.signals = signals
        self.bars: dict[str, SymbolBars] = {s: sig.bars for s, sig in signals.items()}
        self.broker = broker
        self.settings = settings
        self.ledger = Ledger(settings.cash)
        self.decisions: list[Decision] = []
        self.orders: list[OrderRecord] = []
        self.progress = progress
        self._seq = 0
        self._now = 0
        self._peak = settings.cash
        self._day = None
        self._day_start = settings.cash
        self._losses = 0
        self._paused_until = -math.inf
        self._pending: set[str] = set()   # symbols with an entry order working

    # ---- scheduling ----------------------------------------------------------------------------
    def run(self) -> Ledger:
        self._unsupported()
        heap: list[tuple[int, int, int, Iterator]] = []
        for order, symbol in enumerate(sorted(self.signals)):
            proc = self._symbol(symbol)
            first = next(proc, None)
            if first is not None:
                heapq.heappush(heap, (first[0], first[1], order, proc))
        done = 0
        while heap:
            time, phase, order, proc = heapq.heappop(heap)
            self._now = time
            nxt = next(proc, None)
            if nxt is not None:
                heapq.heappush(heap, (nxt[0], nxt[1], order, proc))
            done += 1
            if self.progress is not None and done % 512 == 0:
                self.progress(time)
        return self.ledger

    def _unsupported(self) -> None:
        """Entry rules that read what a bar backtest cannot know are journaled as blocked, once."""
        for symbol, sig in sorted(self.signals.items()):
            for rule in sig.context_entries:
                needs = sorted({n.attrs[0] for n in _context_nodes(self.plan, rule)})
                self._decide(symbol, rule.name, "entry", "blocked",
                             f"needs {', '.join(needs) or 'run context'}, which this backtest does not simulate "
                             "(option chains and scanner results come with the options and scanner engines)")

    def _symbol(self, symbol: str):
        sig = self.signals[symbol]
        bars = sig.bars
        i = sig.start
        while True:
            b = sig.next_entry(i)
            if b is None:
                return
            yield int(bars.end[b]), CLOSE
            intent = self._entry(symbol, b)
            if intent is None:
                i = b + 1
                continue
            fill = self.broker.execute(bars, intent, b)
            self._pending.add(symbol)
            if fill is None:
                self._pending.discard(symbol)
                self._status(intent, "expired", int(bars.end[min(b + 1, len(bars) - 1)]),
                             "not filled before it expired" if b + 1 < len(bars) else "the data ended")
                i = b + 1
                continue
            yield fill.time, OPEN if fill.time == int(bars.start[fill.bar]) else CLOSE
            self._pending.discard(symbol)
            position = self._open(symbol, intent, fill, b)
            if position is None:
                i = fill.bar if fill.bar > b else b + 1
                continue
            exit_ = sig.next_exit(position)
            if exit_.kind in ("stop", "target"):
                yield int(bars.start[exit_.bar]), INTRABAR
                self._close_at(symbol, exit_, SimFill(exit_.bar, self.broker.market_price(
                    bars, "sell" if position.quantity > 0 else "buy", exit_.price)
                    if exit_.kind == "stop" else exit_.price, int(bars.start[exit_.bar])))
                i = exit_.bar
                continue
            if exit_.kind == "end":
                return  # the position stays open: the equity curve marks it to the last close
            yield int(bars.end[exit_.bar]), CLOSE
            intent = self._exit_intent(symbol, position, exit_)
            fill = self.broker.execute(bars, intent, exit_.bar)
            if fill is None:
                self._status(intent, "expired", int(bars.end[-1]), "the data ended before it filled")
                return
            yield fill.time, OPEN if fill.time == int(bars.start[fill.bar]) else CLOSE
            self._close_at(symbol, exit_, fill, intent)
            i = fill.bar if fill.bar > exit_.bar else exit_.bar + 1

    # ---- account -------------------------------------------------------------------------------
    def marks(self, at: int) -> dict[str, float]:
        """The last known price of every open position at time `at` (ns)."""
        out = {}
        for symbol in self.ledger.positions:
            b = self.bars[symbol]
            k = int(np.searchsorted(b.end, at, side="right")) - 1
            out[symbol] = float(b.close[k]) if k >= 0 else float(b.open[0])
        return out

    def equity(self, at: int | None = None) -> float:
        return self.ledger.equity(self.marks(self._now if at is None else at))

    def account_state(self, symbol: str) -> AccountState:
        equity = self.equity()
        self._peak = max(self._peak, equity)
        day = self._session_key(symbol)
        if day != self._day:
            self._day, self._day_start = day, equity
        # working entry orders count as positions: they are about to be
        return AccountState(equity, self._peak, self._day_start, len(self.ledger.positions) + len(self._pending),
                            self._losses, self._paused_until, self._now / 1e9)

    def _session_key(self, symbol: str) -> int:
        # the trading day in UTC days of the decision time: close enough for daily-loss limits
        return self._now // 86_400_000_000_000

    def margin_required(self, bars: SymbolBars, quantity: float, price: float, short: bool) -> float:
        if bars.margined:
            return abs(quantity) * bars.margin
        value = abs(quantity) * price * bars.multiplier
        if self.settings.account == "cash":
            return value
        return 0.5 * value  # Reg-T initial margin, long or short

    def available_funds(self, at: int | None = None) -> float:
        """Equity less the initial margin of the open positions: stock at 100% of its value in a
        cash account (so this is the cash) and 50% in a margin account (Reg-T), futures at their
        margin per contract."""
        marks = self.marks(self._now if at is None else at)
        used = 0.0
        for symbol, pos in self.ledger.positions.items():
            used += self.margin_required(self.bars[symbol], pos.quantity, marks[symbol], pos.quantity < 0)
        return self.ledger.equity(marks) - used

    # ---- decisions -----------------------------------------------------------------------------
    def _decide(self, symbol: str, rule: str, kind: str, outcome: str, reason: str = "") -> None:
        self.decisions.append(Decision(self._now, symbol, rule, kind, outcome, reason))

    def _tag(self) -> str:
        self._seq += 1
        return f"qtrade:{self.settings.run_id}:{self._seq}"

    def _entry(self, symbol: str, bar: int) -> OrderIntent | None:
        sig = self.signals[symbol]
        rules = sig.entries_at(bar)
        if not rules:
            return None
        rule = rules[0]
        for other in rules[1:]:
            self._decide(symbol, other.name, "entry", "blocked", f"'{rule.name}' fired on the same bar and won")
        template = self.settings.orders.get(rule.order) or {}
        if "legs" in template:
            self._decide(symbol, rule.name, "entry", "blocked",
                         f"order '{rule.order}' is an options combo: this backtest has no option chains")
            return None
        reason = check_entry(self.settings.limits, self.account_state(symbol))
        if reason:
            self._decide(symbol, rule.name, "entry", "blocked", reason)
            return None
        intent = self._intent(symbol, rule, template, bar)
        if intent is None:
            return None
        self._decide(symbol, rule.name, "entry", "fired", rule.reason)
        self.orders.append(OrderRecord(intent, self._now))
        return intent

    def _value(self, symbol: str, output: str, bar: int):
        node = self.plan.outputs.get(output)
        if node is None:
            return None
        return value_at(self.plan, node, bar, self.signals[symbol].values, {})

    def _intent(self, symbol: str, rule: N.Rule, template: dict, bar: int) -> OrderIntent | None:
        action = template.get("action", "buy")
        if action == "sell" and self.settings.account == "cash":
            self._decide(symbol, rule.name, "entry", "blocked", "short selling needs a margin account")
            return None
        order_type = template.get("type", "market")
        limit = self._value(symbol, f"orders.{rule.order}.limit", bar)
        stop = self._value(symbol, f"orders.{rule.order}.stop", bar)
        for name, price in (("limit", limit), ("stop", stop)):
            if price is not None and not (isinstance(price, float) and math.isfinite(price) and price > 0):
                self._decide(symbol, rule.name, "entry", "blocked", f"the {name} price is not a number yet ({price})")
                return None
        quantity, sizing = self._size(symbol, rule, template, bar)
        if quantity is not None and quantity <= 0:
            self._decide(symbol, rule.name, "entry", "blocked", f"quantity is {quantity:g}")
            return None
        return OrderIntent(symbol, action, order_type, quantity, sizing, limit, stop, template.get("tif", "day"),
                           "open", rule.name, self._tag())

    def _size(self, symbol: str, rule: N.Rule, template: dict, bar: int) -> tuple[float | None, Sizing | None]:
        from ..brokers.costs import fraction

        spec = template.get("quantity", 1)
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            return float(spec), None
        if isinstance(spec, str):
            value = self._value(symbol, f"orders.{rule.order}.quantity", bar)
            return (float(math.floor(value)) if value == value else 0.0), None
        whole = spec.get("round", "whole") == "whole"
        if "fixed" in spec and spec["fixed"] is not None:
            return float(spec["fixed"]), None
        if spec.get("percent_of_equity") is not None:
            return None, Sizing("percent_of_equity", fraction(spec["percent_of_equity"]), whole=whole)
        distance = self._value(symbol, f"orders.{rule.order}.stop_distance", bar)
        frac = fraction(spec["risk_percent"])
        bars = self.bars[symbol]
        if distance is None or not (distance == distance) or distance <= 0:
            return 0.0, None
        qty = frac * self.equity() / (distance * bars.multiplier)
        qty = float(math.floor(qty + 1e-9)) if whole else qty
        return qty, Sizing("risk_percent", frac, distance, whole)

    # ---- positions -------------------------------------------------------------------------------
    def _open(self, symbol: str, intent: OrderIntent, fill: SimFill, decided: int) -> Position | None:
        bars = self.bars[symbol]
        price = fill.price
        quantity = intent.quantity
        marks = self.marks(fill.time)
        equity = self.ledger.equity(marks)
        if quantity is None:  # a share of equity, sized at the fill price
            sizing = intent.sizing
            per_unit = price * bars.multiplier if not bars.margined else max(bars.margin, 1e-12)
            quantity = sizing.value * equity / per_unit
            quantity = float(math.floor(quantity + 1e-9)) if sizing.whole else quantity
            # all in means all in: leave room for the commission
            while quantity > 0 and self.settings.account == "cash" and not bars.margined and \
                    quantity * price * bars.multiplier + self.broker.fee(bars, quantity, price) > self.ledger.cash + 1e-9:
                quantity -= 1 if sizing.whole else quantity * 1e-6
        stop_distance = intent.sizing.stop_distance if intent.sizing else None
        quantity, why = cap_quantity(self.settings.limits, quantity, equity=equity,
                                     unit_value=price * bars.multiplier, stop_distance=stop_distance,
                                     multiplier=bars.multiplier, whole=intent.sizing.whole if intent.sizing else True)
        if quantity <= 0:
            self._status(intent, "rejected", fill.time, why or "quantity rounds to 0")
            self._decide(symbol, intent.rule, "entry", "blocked", why or "quantity rounds to 0 at the fill price")
            return None
        fee = self.broker.fee(bars, quantity, price)
        need = self.margin_required(bars, quantity, price, intent.action == "sell")
        funds = self.available_funds()
        if need + fee > funds + 1e-6:
            what = "cash" if self.settings.account == "cash" else "available funds"
            reason = f"insufficient {what}: needs {need + fee:,.2f}, has {funds:,.2f}"
            self._status(intent, "rejected", fill.time, reason)
            self._decide(symbol, intent.rule, "entry", "blocked", reason)
            return None
        limits = self.settings.limits
        if limits.max_margin_per_trade is not None and bars.margined and need > limits.max_margin_per_trade:
            reason = f"margin {need:,.2f} above max_margin_per_trade {limits.max_margin_per_trade:,.2f}"
            self._status(intent, "rejected", fill.time, reason)
            self._decide(symbol, intent.rule, "entry", "blocked", reason)
            return None
        if why:  # the entry fired but was resized: say so on its decision
            for d in reversed(self.decisions):
                if d.symbol == symbol and d.rule == intent.rule and d.kind == "entry":
                    d.reason = f"{d.reason}; {why}" if d.reason else why
                    break
        self._status(intent, "filled", fill.time, "", quantity)
        f = Fill(symbol, intent.action, quantity, price, fee, fill.time, fill.bar, intent.tag, bars.multiplier,
                 intent.rule)
        return self.ledger.open(f, margined=bars.margined, margin_per_unit=bars.margin if bars.margined else 0.0)

    def _exit_intent(self, symbol: str, position: Position, exit_: ExitEvent) -> OrderIntent:
        rule = exit_.rule
        template = self.settings.orders.get(rule.order) or {} if rule.order else {}
        action = "sell" if position.quantity > 0 else "buy"
        order_type = template.get("type", "market") if template and "legs" not in template else "market"
        limit = self._value(symbol, f"orders.{rule.order}.limit", exit_.bar) if rule.order else None
        stop = self._value(symbol, f"orders.{rule.order}.stop", exit_.bar) if rule.order else None
        intent = OrderIntent(symbol, action, order_type, abs(position.quantity), None, limit, stop,
                             template.get("tif", "day") if template else "day", "close", rule.name, self._tag(),
                             rule.reason)
        self._decide(symbol, rule.name, "exit", "fired", rule.reason)
        self.orders.append(OrderRecord(intent, self._now))
        return intent

    def _close_at(self, symbol: str, exit_: ExitEvent, fill: SimFill, intent: OrderIntent | None = None) -> Trade:
        bars = self.bars[symbol]
        position = self.ledger.positions[symbol]
        action = "sell" if position.quantity > 0 else "buy"
        if intent is None:  # a resting stop or target that triggered inside the bar
            intent = OrderIntent(symbol, action, "stop" if exit_.kind == "stop" else "limit", abs(position.quantity),
                                 None, exit_.price if exit_.kind == "target" else None,
                                 exit_.price if exit_.kind == "stop" else None, "gtc", "close", exit_.rule.name,
                                 self._tag(), exit_.rule.reason)
            self._decide(symbol, exit_.rule.name, "exit", "fired", exit_.rule.reason)
            self.orders.append(OrderRecord(intent, self._now))
        fee = self.broker.fee(bars, abs(position.quantity), fill.price)
        f = Fill(symbol, action, abs(position.quantity), fill.price, fee, fill.time, fill.bar, intent.tag,
                 bars.multiplier, exit_.rule.name)
        self._status(intent, "filled", fill.time, "", abs(position.quantity))
        trade = self.ledger.close(f, exit_.rule.reason or exit_.kind)
        trade = _with_excursions(trade, bars)
        self.ledger.trades[-1] = trade
        if trade.pnl < 0:
            self._losses += 1
            breaker = self.settings.limits.circuit_breaker
            if breaker is not None and self._losses >= breaker[0]:
                self._paused_until = fill.time / 1e9 + breaker[1]
                self._losses = 0
        else:
            self._losses = 0
        return trade

    def _status(self, intent: OrderIntent, status: str, time: int, reason: str = "",
                quantity: float | None = None) -> None:
        for record in reversed(self.orders):
            if record.intent.tag == intent.tag:
                record.status, record.status_time, record.reason = status, time, reason
                if quantity is not None and record.intent.quantity is None:
                    record.intent = OrderIntent(**{**record.intent.__dict__, "quantity": quantity})
                return


def _context_nodes(plan: N.Plan, rule: N.Rule) -> list[N.Node]:
    seen, stack, out = set(), [i for i in (rule.when, rule.stop, rule.target) if i is not None], []
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        node = plan.nodes[i]
        if node.op == N.CONTEXT:
            out.append(node)
        stack.extend(node.args)
    return out


def _with_excursions(trade: Trade, bars: SymbolBars) -> Trade:
    """MAE and MFE over the bars the trade was open, in account currency."""
    lo, hi = trade.entry_bar, trade.exit_bar
    worst = min(float(bars.low[lo:hi].min()) if hi > lo else trade.exit_price, trade.exit_price)
    best = max(float(bars.high[lo:hi].max()) if hi > lo else trade.exit_price, trade.exit_price)
    units = trade.quantity * trade.multiplier
    if trade.side == "long":
        mae, mfe = (worst - trade.entry_price) * units, (best - trade.entry_price) * units
    else:
        mae, mfe = (trade.entry_price - best) * units, (trade.entry_price - worst) * units
    return Trade(**{**trade.__dict__, "mae": min(mae, 0.0), "mfe": max(mfe, 0.0)})
