"""What a run keeps and how it sees the account: decisions, order records, run settings, the
ledger with its marks, equity, margin and available funds (RunState), shared by the trading
kernel (runtime/kernel.py) and the backtest's fast path (runtime/fastpath.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

import numpy as np

from ..brokers.matching import FillModel
from ..check.model import AgentSettings, Arbitration, OrderTemplate
from ..market.series import SymbolBars
from ..orders.intent import OrderIntent
from ..plan import nodes as N
from ..portfolio.ledger import Ledger, Trade
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


def with_excursions(trade: Trade, bars: SymbolBars) -> Trade:
    """The trade with its MAE and MFE over the bars it was open, in account currency."""
    mae, mfe = excursions(bars, trade.entry_bar, trade.exit_bar, trade.entry_price, trade.exit_price,
                          trade.side == "long", trade.quantity * trade.multiplier)
    return replace(trade, mae=mae, mfe=mfe)


_lowest, _highest = np.minimum.reduce, np.maximum.reduce     # ndarray.min/max, without their wrappers


def excursions(bars: SymbolBars, lo: int, hi: int, entry_price: float, exit_price: float, long: bool,
               units: float) -> tuple[float, float]:
    """MAE and MFE of a round trip held over bars [lo, hi) and closed at `exit_price`: the worst
    and best the bars' range reached against the entry, in account currency."""
    worst = min(float(_lowest(bars.low[lo:hi])) if hi > lo else exit_price, exit_price)
    best = max(float(_highest(bars.high[lo:hi])) if hi > lo else exit_price, exit_price)
    if long:
        mae, mfe = (worst - entry_price) * units, (best - entry_price) * units
    else:
        mae, mfe = (entry_price - best) * units, (entry_price - worst) * units
    return min(mae, 0.0), max(mfe, 0.0)
