"""What a run keeps and how it sees the account: decisions, order records, run settings, the
ledger with its marks, equity, margin and available funds (RunState), shared by the trading
kernel (runtime/kernel.py) and the backtest's fast path (runtime/fastpath.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from ..brokers.matching import FillModel
from ..check.model import AgentSettings, Arbitration, OrderTemplate
from ..market.series import SymbolBars
from ..orders.intent import OrderIntent
from ..plan import nodes as N
from ..portfolio.ledger import Ledger
from ..portfolio.marks import LastClose
from ..risk.limits import RiskLimits
from .options import ChainView, ComboPosition, OptionsDesk
from .signals import SymbolSignals


@dataclass(slots=True)
class Decision:
    time: int
    symbol: str
    rule: str
    kind: str         # entry | exit
    outcome: str      # fired | blocked
    reason: str = ""
    detail: str = ""  # the values the rule compared, as `explain` shows them
    agent: str = ""   # the agent whose rule it is ('' for the strategy's own rules)
    confidence: float | None = None   # the agent's score, where arbitration weighed the proposal


@dataclass(slots=True)
class OrderRecord:
    intent: OrderIntent
    time: int
    status: str = "created"
    status_time: int = 0
    reason: str = ""
    legs: list | None = None
    contract: str = ""         # the futures contract it was sent in (local symbol), '' when not per contract
    owner: str = ""   # the agent (or the strategy) whose position it opens, closes or protects


@dataclass
class RunSettings:
    cash: float = 100_000.0
    account: str = "margin"        # cash | margin
    orders: Mapping[str, OrderTemplate] = field(default_factory=dict)   # the strategy's order templates, typed
    limits: RiskLimits = field(default_factory=RiskLimits)
    run_id: str = "run"
    strategy: str = ""
    timezone: str = "America/New_York"
    fill_fraction: float = 0.5     # combo limits: how far from natural towards mid the market meets them
    arbitration: Arbitration = field(default_factory=Arbitration)   # between agents (runtime/arbitration.py)
    agents: tuple[AgentSettings, ...] = ()   # in the order they are listed
    max_new_entries: int | None = None       # schedule.max_new_entries_per_scan: new names entered at one close


class RunState:
    """What a run keeps (the ledger, its decisions and order records, its option combos) and
    the account seen through it: marks, equity, margin and available funds. The Runner and the
    fast path both leave one behind for the Result and the journal."""

    def __init__(self, plan: N.Plan, signals: dict[str, SymbolSignals], broker: FillModel,
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
        self._marks_key: int | None = None  # marks are kept per instant (bars do not move within one)
        self._marks: dict[str, float] = {}
        self._prices = LastClose(self.bars)
        self._margined = any(b.margined for b in self.bars.values())   # futures among the symbols

    def marks(self, at: int) -> dict[str, float]:
        """The last known price of every open position at time `at` (ns); combos at their last mid.
        At one instant a bar's price does not move, so the marks found then are kept and only the
        positions opened since are looked up (many entries at one open cost one walk, not one each)."""
        if self._marks_key != at:
            self._marks, self._marks_key = {}, at
        out = self._marks
        combos = self.combos
        for symbol, pos in self.ledger.positions.items():
            if symbol in combos:    # a combo's mark moves without a fill: read it every time
                # in the terms it was opened in, as its position's price: a sold combo's credit, a
                # bought one's debit (the venue marks it so)
                out[symbol] = combos[symbol].mark_price
            elif symbol not in out:
                held = pos.symbol       # the key may be a second owner's in the symbol (positions_per_symbol)
                if pos.contract:    # a futures contract's own last price (its bars share the series' times)
                    k = self._prices.bar(held, at)
                    b = self.bars[held].of(pos.contract)
                    out[symbol] = float(b.close[k]) if k >= 0 else float(b.open[0])
                else:
                    out[symbol] = self._prices.price(held, at)
        return out

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
        used = math.fsum([abs(pos.quantity) * pos.margin_per_unit if symbol in self.combos else
                          self.margin_required(self.bars[pos.symbol], pos.quantity, marks[symbol], pos.quantity < 0)
                          for symbol, pos in self.ledger.positions.items()])
        return self.ledger.equity(marks) - used


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


def context_nodes(plan: N.Plan, rule: N.Rule) -> list[N.Node]:
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


def excursions_of(bars: SymbolBars, lo: np.ndarray, hi: np.ndarray, entry: np.ndarray, exit_: np.ndarray,
                  units: np.ndarray, long: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MAE and MFE of round trips on one symbol's bars, in account currency: trade i held over
    bars [lo[i], hi[i]) (they may overlap) and closed at exit_[i], the worst and best its bars'
    range reached against its entry (the exit price counted too). All at once: one pass of the
    bars for every trade rather than two array reductions each (the kernel's measure_trades, the
    fast path's columns)."""
    if not len(lo):
        return np.empty(0), np.empty(0)
    low, high = bars.low, bars.high
    if len(low) and int(hi.max()) >= len(low):       # a round trip held to the last bar: [lo, len) is one segment
        low, high = np.append(low, low[-1]), np.append(high, high[-1])
    idx = np.column_stack((lo, hi)).ravel()
    held = hi > lo
    safe = np.minimum(idx, len(low) - 1)
    low = np.minimum.reduceat(low, safe)[::2]
    high = np.maximum.reduceat(high, safe)[::2]
    low = np.where(held, low, exit_)
    high = np.where(held, high, exit_)
    # Python's min(a, b) / max(a, b): b only when strictly beyond a
    worst = np.where(exit_ < low, exit_, low)
    best = np.where(exit_ > high, exit_, high)
    mae = np.where(long, (worst - entry) * units, (entry - best) * units)
    mfe = np.where(long, (best - entry) * units, (entry - worst) * units)
    mae = np.where(0.0 < mae, 0.0, mae)
    mfe = np.where(0.0 > mfe, 0.0, mfe)
    return mae, mfe
