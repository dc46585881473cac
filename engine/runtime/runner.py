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

import datetime as dt
import heapq
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from ..brokers.sim import SimBroker, SimFill, SymbolBars
from ..orders.intent import OrderIntent, Sizing
from ..plan import nodes as N
from ..plan.evaluate import explain, value_at
from ..portfolio.ledger import Fill, Ledger, Position, Trade
from ..risk.limits import AccountState, RiskLimits, cap_quantity, check_entry
from .options import ChainView, ComboPosition, OptionsDesk, settlement_value
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
    legs: list | None = None


@dataclass
class RunSettings:
    cash: float = 100_000.0
    account: str = "margin"        # cash | margin
    orders: dict = field(default_factory=dict)      # order templates from the strategy
    limits: RiskLimits = field(default_factory=RiskLimits)
    run_id: str = "run"
    strategy: str = ""
    timezone: str = "America/New_York"
    dry_run: bool = False          # record intents instead of sending them: nothing fills
    fill_fraction: float = 0.5     # combo limits: how far from natural towards mid the market meets them


class RunState:
    """What a run keeps (the ledger, its decisions and order records, its option combos) and
    the account seen through it: marks, equity, margin and available funds. The Runner and the
    fast path both leave one behind for the Result and the journal."""

    def __init__(self, plan: N.Plan, signals: dict[str, SymbolSignals], broker: SimBroker,
                 settings: RunSettings):
        self.plan = plan
        self.signals = signals
        self.bars: dict[str, SymbolBars] = {s: sig.bars for s, sig in signals.items()}
        self.broker = broker
        self.settings = settings
        self.ledger = Ledger(settings.cash)
        self.decisions: list[Decision] = []
        self.orders: list[OrderRecord] = []
        self.combos: dict[str, ComboPosition] = {}   # open combos by ledger key
        self.closed_combos: list[ComboPosition] = []
        self.combo_symbol: dict[str, str] = {}       # ledger key -> underlying symbol
        self.desk: OptionsDesk | None = None
        self.chains: Callable[[str, int], ChainView | None] | None = None
        self._now = 0
        self._marks_key: tuple | None = None  # marks are cached per (time, number of fills)
        self._marks: dict[str, float] = {}
        self._cursor: dict[str, tuple[int, int]] = {}   # per symbol: (last bar closed by t, t)
        self._margined = any(b.margined for b in self.bars.values())   # futures among the symbols

    def marks(self, at: int) -> dict[str, float]:
        """The last known price of every open position at time `at` (ns); combos at their last mid."""
        key = (at, len(self.ledger.fills))
        if self._marks_key == key:
            return self._marks
        out = self._marks = {}
        self._marks_key = key
        for symbol in self.ledger.positions:
            if symbol in self.combos:
                combo = self.combos[symbol]
                out[symbol] = combo.last_credit if combo.last_credit is not None else combo.entry_credit
                self._marks_key = None   # a combo's mark moves without a fill: never cache it
                continue
            b = self.bars[symbol]
            k = self._last_bar(symbol, b.end, at)
            out[symbol] = float(b.close[k]) if k >= 0 else float(b.open[0])
        return out

    def _last_bar(self, symbol: str, end: np.ndarray, at: int) -> int:
        """The last bar of `symbol` closed by `at` (-1: none yet). Times mostly move forward by a
        bar or so between two looks, so the last answer is the place to start from."""
        seen = self._cursor.get(symbol)
        if seen is not None and seen[1] <= at:
            k = seen[0]
            n = len(end)
            if k + 1 >= n or end[k + 1] > at:
                pass
            elif k + 2 >= n or end[k + 2] > at:
                k += 1
            else:
                k = int(end.searchsorted(at, "right")) - 1
        else:
            k = int(end.searchsorted(at, "right")) - 1
        self._cursor[symbol] = (k, at)
        return k

    def equity(self, at: int | None = None) -> float:
        return self.ledger.equity(self.marks(self._now if at is None else at))

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
        if self.settings.account == "cash" and not self.combos and \
                not (self._margined and any(p.margined for p in self.ledger.positions.values())):
            return self.ledger.cash     # stock only: its whole value is held, what is left is the cash
        marks = self.marks(self._now if at is None else at)
        used = 0.0
        for symbol, pos in self.ledger.positions.items():
            if symbol in self.combos:
                used += abs(pos.quantity) * pos.margin_per_unit
                continue
            used += self.margin_required(self.bars[symbol], pos.quantity, marks[symbol], pos.quantity < 0)
        return self.ledger.equity(marks) - used


class Runner(RunState):
    """Runs a plan over the symbols' bars with a broker, keeping the ledger and the records."""

    def __init__(self, plan: N.Plan, signals: dict[str, SymbolSignals], broker: SimBroker, settings: RunSettings,
                 progress: Callable[[int], None] | None = None, *, desk: OptionsDesk | None = None,
                 chains: Callable[[str, int], ChainView | None] | None = None,
                 on_intent: Callable[[dict], None] | None = None):
        super().__init__(plan, signals, broker, settings)
        self.progress = progress
        self._seq = 0
        self._peak = settings.cash
        self._day = None
        self._day_start = settings.cash
        self._losses = 0
        self._paused_until = -math.inf
        self._pending: set[str] = set()   # symbols with an entry order working
        self.desk = desk
        self.chains = chains
        self.on_intent = on_intent
        self._options_rules = {r.name: r for r in plan.rules
                               if r.kind == "entry" and "legs" in (settings.orders.get(r.order) or {})}

    # ---- scheduling ----------------------------------------------------------------------------
    def run(self) -> Ledger:
        """The run (backtest.run keeps the cyclic garbage collector off around it)."""
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
                if self._options_symbol_ok(symbol) and rule.name in self._options_rules:
                    continue
                needs = sorted({n.attrs[0] for n in _context_nodes(self.plan, rule)})
                self._decide(symbol, rule.name, "entry", "blocked",
                             f"needs {', '.join(needs) or 'run context'}, which this backtest does not simulate "
                             "(option chains and scanner results come with the options and scanner engines)")

    def _options_symbol_ok(self, symbol: str) -> bool:
        """Does this symbol trade options combos through the desk (every entry rule a combo)?"""
        if self.desk is None or self.chains is None:
            return False
        entries = [r for r in self.plan.rules if r.kind == "entry"]
        return bool(entries) and all(r.name in self._options_rules for r in entries)

    def _symbol(self, symbol: str):
        if self._options_symbol_ok(symbol):
            yield from self._options_symbol(symbol)
            return
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
    def account_state(self, symbol: str) -> AccountState:
        limits = self.settings.limits
        if limits.max_daily_loss is None and limits.max_drawdown is None:
            # no check reads equity (or its peak and day start): not worth walking every position
            return AccountState(math.nan, math.nan, math.nan, len(self.ledger.positions) + len(self._pending),
                                self._losses, self._paused_until, self._now / 1e9)
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
        if self.on_intent is not None:
            self.on_intent({"time": self._local(self._now), "bar": self._local(int(sig.bars.start[bar])),
                            "symbol": symbol, "rule": rule.name, "order": rule.order, "intent": intent,
                            "quote": None, "why": explain(self.plan, rule.when, bar, sig.values, {})})
        if self.settings.dry_run:
            self._status(intent, "dry-run", self._now, "not sent: dry run")
            return None
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
        limits = self.settings.limits
        sized = quantity is None or limits.max_position is not None or limits.per_trade_risk is not None
        equity = self.ledger.equity(self.marks(fill.time)) if sized else math.nan
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


    # ---- options ------------------------------------------------------------------------------
    def _local(self, ns: int):
        import pandas as pd

        return pd.Timestamp(ns, tz="UTC").tz_convert(self.settings.timezone).to_pydatetime()

    def _trading_time(self, bars: SymbolBars, k: int):
        """The moment a decision at bar k's close belongs to: the close for intraday bars; for daily
        bars (whose end is the next midnight) the trading day itself, so days to expiry and
        expiry rules count from that day."""
        if int(bars.end[k]) - int(bars.start[k]) >= 86_400 * 10**9:
            return self._local(int(bars.start[k]))
        return self._local(int(bars.end[k]))

    def _options_symbol(self, symbol: str):
        """One underlying traded with option combos: entries evaluated on the chain bar by bar
        (where their bar-only conditions allow), then the open combo managed bar by bar."""
        from ..orders.combos import run_chase

        sig = self.signals[symbol]
        bars = sig.bars
        n = len(bars)
        rules = [r for r in self.plan.rules if r.kind == "entry"]
        possible = np.zeros(n, dtype=bool)
        for rule in rules:
            possible |= market_prefilter(self.plan, rule.when, sig.values, n)
        if sig.entry_mask is not None:
            possible &= sig.entry_mask
        possible[: sig.start] = False
        candidates = np.flatnonzero(possible).tolist()
        k_cand = 0
        i = sig.start
        while True:
            while k_cand < len(candidates) and candidates[k_cand] < i:
                k_cand += 1
            if k_cand >= len(candidates):
                return
            b = candidates[k_cand]
            yield int(bars.end[b]), CLOSE
            now = self._trading_time(bars, b)
            chain = self.chains(symbol, b)
            fired = None
            for rule in rules:
                if chain is None:
                    self._decide(symbol, rule.name, "entry", "blocked", f"no option chain at {now:%Y-%m-%d %H:%M}")
                    break
                quote = self.desk.build(rule.order, symbol, b, now, sig.values, chain)
                if isinstance(quote, str):
                    self._decide(symbol, rule.name, "entry", "blocked", quote)
                    continue
                if quote.missing:
                    self._decide(symbol, rule.name, "entry", "blocked", quote.missing)
                    continue
                ctx = self.desk.context(quote, now)
                if value_at(self.plan, rule.when, b, sig.values, ctx):
                    fired = (rule, quote, ctx)
                    break
                self._decide(symbol, rule.name, "entry", "blocked", "; ".join(p for p in explain(self.plan, rule.when, b, sig.values, ctx) if p.endswith(" no")))  # noqa: E501 - the real cause (credit below the minimum, ...)
            i = b + 1
            if fired is None:
                continue
            rule, quote, ctx = fired
            position = self._open_combo(symbol, rule, quote, ctx, b, now, run_chase)
            if position is None:
                continue
            i = yield from self._manage_combo(symbol, position, sig, run_chase)

    def _open_combo(self, symbol, rule, quote, ctx, b, now, run_chase):
        bars = self.bars[symbol]
        template = self.settings.orders[rule.order]
        qty = template.get("quantity", 1)
        qty = int(qty) if isinstance(qty, (int, float)) and not isinstance(qty, bool) else 1
        reason = check_entry(self.settings.limits, self.account_state(symbol))
        limits = self.settings.limits
        if reason is None and limits.max_margin_per_trade is not None and quote.margin * qty > limits.max_margin_per_trade:
            reason = (f"margin {quote.margin * qty:,.2f} above max_margin_per_trade "
                      f"{limits.max_margin_per_trade:,.2f}")
        contracts = qty * sum(leg.ratio for leg in quote.legs)
        fee = self.broker.commission(contracts, abs(quote.credit), quote.multiplier, True)
        if reason is None and quote.margin * qty + fee > self.available_funds() + 1e-6:
            reason = f"insufficient available funds for margin {quote.margin * qty:,.2f}"
        if reason:
            self._decide(symbol, rule.name, "entry", "blocked", reason)
            return None
        chase = self.desk.chase(rule.order, b, self.signals[symbol].values, ctx)
        tick = self.desk.setups[symbol].tick
        prices = chase.prices(quote, tick)
        opening_credit = quote.credit >= 0
        intent = OrderIntent(symbol, "sell" if opening_credit else "buy", "limit", float(qty), None,
                             prices[0] if prices else None, None, template.get("tif", "day"), "open", rule.name,
                             self._tag(), rule.reason, legs=())
        self._decide(symbol, rule.name, "entry", "fired", rule.reason)
        record = OrderRecord(intent, self._now)
        record.legs = [leg.to_json() for leg in quote.legs]
        self.orders.append(record)
        info = {"time": now, "bar": self._local(int(bars.start[b])), "symbol": symbol, "rule": rule.name,
                "order": rule.order, "intent": intent,
                "why": explain(self.plan, rule.when, b, self.signals[symbol].values, ctx),
                "quote": quote, "chase": chase, "prices": prices, "quantity": qty}
        if self.on_intent is not None:
            self.on_intent(info)
        if self.settings.dry_run:
            self._status(intent, "dry-run", self._now, "not sent: dry run")
            return None
        result = run_chase(chase, quote, self.settings.fill_fraction, tick)
        if not result.filled:
            self._status(intent, "cancelled", self._now + int(result.seconds * 1e9), result.reason)
            self._decide(symbol, rule.name, "entry", "blocked", result.reason)
            return None
        self._status(intent, "filled", self._now + int(result.seconds * 1e9), result.reason, float(qty))
        key = f"{symbol} {rule.order}"
        credit = result.price if opening_credit else -result.price
        fill = Fill(key, intent.action, float(qty), result.price if opening_credit else result.price, fee,
                    self._now + int(result.seconds * 1e9), b, intent.tag, quote.multiplier, rule.name,
                    result.reason)
        pos = self.ledger.open(fill, margin_per_unit=quote.margin)
        pos.entry_values.update({"credit": credit * quote.multiplier * qty})
        expiry = min(dt.date.fromisoformat(leg.expiry) for leg in quote.legs)   # the front month
        combo = ComboPosition(key, rule.order, rule.name, quote.legs, qty, credit, b, fill.time, expiry,
                              quote.underlying, quote.multiplier)
        combo.marks[b] = -quote.credit * quote.multiplier * qty
        combo.last_credit = quote.credit if opening_credit else -quote.credit
        self.combos[key] = combo
        self.combo_symbol[key] = symbol
        return combo

    def _manage_combo(self, symbol: str, combo: ComboPosition, sig: SymbolSignals, run_chase):
        bars = sig.bars
        n = len(bars)
        exits = [r for r in self.plan.rules if r.kind == "exit"]
        setup = self.desk.setups[symbol]
        k = combo.entry_bar + 1
        while k < n:
            yield int(bars.end[k]), CLOSE
            now = self._trading_time(bars, k)
            chain = self.chains(symbol, k)
            quote = self.desk.requote(combo.legs, chain, combo.multiplier) if chain is not None else "no chain"
            if not isinstance(quote, str) and not quote.missing_for(False):
                combo.last_credit = quote.credit
                combo.marks[k] = -quote.credit * combo.multiplier * combo.quantity
            elif combo.last_credit is not None:
                combo.marks[k] = -combo.last_credit * combo.multiplier * combo.quantity
            # cash settlement at the expiry's close (PM-settled) or from the day's open (AM-settled)
            last_of_day = k + 1 >= n or int(bars.session[k + 1]) != int(bars.session[k])
            if now.date() >= combo.expiry and (last_of_day or now.date() > combo.expiry):
                price = float(bars.open[k] if setup.settlement_time == "am" else bars.close[k])
                debit = settlement_value(combo, price, None if isinstance(quote, str) else quote)
                self._close_combo(symbol, combo, k, debit, "expiry settlement",
                                  f"cash-settled at {price:.2f} on {combo.expiry}", quote, now, fee=False)
                return k + 1
            credit_now = combo.last_credit if combo.last_credit is not None else combo.entry_credit
            ctx = {"position.pnl": combo.pnl(credit_now), "position.entry_credit": combo.entry_credit_total,
                   "position.pnl_pct": 100.0 * combo.pnl(credit_now) / abs(combo.entry_credit_total)
                   if combo.entry_credit_total else 0.0,
                   "position.bars_held": float(k - combo.entry_bar), "position.side": -1.0 if combo.entry_credit > 0
                   else 1.0, "position.size": float(combo.quantity), "position.entry_price": combo.entry_credit,
                   "position.dte": float((combo.expiry - now.date()).days),
                   "position.time_held": (int(bars.end[k]) - combo.entry_time) / 1e9,
                   "position.entry_bar": combo.entry_bar, "position.max_pnl": math.nan, "position.min_pnl": math.nan,
                   "position.highest": math.nan, "position.lowest": math.nan}
            fired = None
            for rule in exits:
                if rule.when is not None and value_at(self.plan, rule.when, k, sig.values, ctx):
                    fired = rule
                    break
            if fired is None and sig.flat_mask is not None and sig.flat_mask[k]:
                fired = sig.flat_rule
            if fired is not None:
                if isinstance(quote, str) or quote.missing_for(False):
                    why = quote if isinstance(quote, str) else quote.missing_for(False)
                    self._decide(symbol, fired.name, "exit", "blocked", f"cannot price the close: {why}")
                else:
                    self._decide(symbol, fired.name, "exit", "fired", fired.reason)
                    chase = self.desk.chase(combo.order, k, sig.values, {})
                    result = run_chase(chase, quote, self.settings.fill_fraction, setup.tick, opening=False)
                    debit = result.price if result.filled else quote.closing_natural
                    how = result.reason if result.filled else result.reason + "; closed at the natural price"
                    self._close_combo(symbol, combo, k, debit, fired.name, how, quote, now)
                    return k + 1
            k += 1
        return n

    def _close_combo(self, symbol, combo, k, debit, rule_name, how, quote, now, fee=True):
        bars = self.bars[symbol]
        action = "buy" if combo.entry_credit > 0 else "sell"
        contracts = combo.quantity * sum(leg.ratio for leg in combo.legs)
        commission = self.broker.commission(contracts, abs(debit), combo.multiplier, True) if fee else 0.0
        intent = OrderIntent(symbol, action, "limit", float(combo.quantity), None, abs(debit), None, "day", "close",
                             rule_name, self._tag(), how)
        self.orders.append(OrderRecord(intent, self._now))
        self._status(intent, "filled", self._now, how, float(combo.quantity))
        price = debit if combo.entry_credit > 0 else -debit
        fill = Fill(combo.key, action, float(combo.quantity), price, commission, int(bars.end[k]), k, intent.tag,
                    combo.multiplier, rule_name, how)
        margin = self.ledger.positions[combo.key].margin_per_unit * combo.quantity
        trade = self.ledger.close(fill, how)
        exit_legs = [leg.to_json() for leg in quote.legs] if not isinstance(quote, str) else []
        legs = {"legs": [leg.to_json() for leg in combo.legs], "credit": combo.entry_credit, "debit": debit,
                "expiry": combo.expiry.isoformat(), "underlying_entry": combo.underlying_entry,
                "underlying_exit": float(bars.close[k]), "exit_legs": exit_legs, "order": combo.order,
                "margin": margin, "close": how}
        import dataclasses

        rule = next((r for r in self.plan.rules if r.name == rule_name), None)
        # a combo's return is on the capital it tied up (its margin: the max loss of a defined-risk
        # combo), not on its premium
        trade = dataclasses.replace(trade, symbol=symbol, legs=legs, mae=None, mfe=None,
                                    return_pct=100.0 * trade.pnl / margin if margin > 0 else trade.return_pct,
                                    exit_reason=(rule.reason or rule.name) if rule is not None else how)
        self.ledger.trades[-1] = trade
        combo.marks[k] = 0.0
        del self.combos[combo.key]
        self.closed_combos.append(combo)
        if trade.pnl < 0:
            self._losses += 1
        else:
            self._losses = 0


def market_prefilter(plan: N.Plan, node_id: int, values: list, n: int) -> np.ndarray:
    """Bars where a condition can possibly hold, from its market-only conjuncts: for
    `vix < 25 and credit >= 0.2` only the bars where vix < 25. Everything else stays possible."""
    node = plan.nodes[node_id]
    if node.market:
        v = values[node_id]
        return np.asarray(v, dtype=bool).copy() if np.ndim(v) else np.full(n, bool(v))
    if node.op == N.LOGIC and node.attrs[0] == "and":
        return market_prefilter(plan, node.args[0], values, n) & market_prefilter(plan, node.args[1], values, n)
    return np.ones(n, dtype=bool)


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
