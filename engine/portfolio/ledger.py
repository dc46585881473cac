"""Positions, cash and round-trip trades: the account as the engine keeps it.

Cash follows IB's accounting: buying stock spends its value; a futures position moves no
notional, only commissions and realised P&L (its margin is a requirement against equity, not a
payment). Equity is cash plus the stock positions' market value plus the futures positions'
unrealised P&L. P&L is (price - average price) x quantity x multiplier, per unit prices never
include the multiplier (IB's avgCost does: divide it out before it gets here).

Fills and trades are values, never changed once made (dataclasses.replace makes a changed copy);
they are slotted rather than frozen because a run makes them by the thousand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(slots=True)
class Fill:
    symbol: str
    action: str          # buy | sell
    quantity: float      # > 0
    price: float         # per unit
    commission: float
    time: int            # ns since the epoch, UTC
    bar: int             # index of the bar it filled in (the symbol's own bars)
    order_ref: str = ""
    multiplier: float = 1.0
    rule: str = ""
    reason: str = ""
    contract: str = ""   # the futures contract (local symbol, ESZ3) when the bars are per contract

    @property
    def signed(self) -> float:
        return self.quantity if self.action == "buy" else -self.quantity


@dataclass(slots=True)
class Position:
    symbol: str
    quantity: float      # signed: > 0 long, < 0 short
    avg_price: float
    multiplier: float
    margined: bool       # futures-like: no notional changes hands
    entry_time: int
    entry_bar: int
    entry_commission: float
    entry_rule: str
    margin_per_unit: float = 0.0
    entry_values: dict = field(default_factory=dict)  # extra facts at entry (credit, greeks, ...)
    contract: str = ""   # the futures contract it is held in (its fills' contract), '' when not per contract
    owner: str = ""      # the agent that opened it, or the strategy (its own rules)
    states: tuple = ()   # the classifications when its entry was decided: ((name, label), ...)
    # a futures position rolled into this contract from an earlier one (runtime.kernel's roll):
    # the bar and time of the entry that began it, and the price move per unit it already made in
    # the contracts it was rolled out of (the back-adjustment its rules read: entry price less it)
    origin_bar: int = -1
    origin_time: int = 0
    carried: float = 0.0

    @property
    def side(self) -> int:
        return 1 if self.quantity > 0 else -1

    def unrealised(self, price: float) -> float:
        return (price - self.avg_price) * self.quantity * self.multiplier

    def market_value(self, price: float) -> float:
        """What the position adds to equity at `price`."""
        if self.margined:
            return self.unrealised(price)
        return price * self.quantity * self.multiplier


@dataclass(slots=True)
class Trade:
    symbol: str
    side: str
    quantity: float
    multiplier: float
    entry_time: int
    entry_price: float
    exit_time: int
    exit_price: float
    pnl: float           # net of both commissions
    return_pct: float
    entry_bar: int
    exit_bar: int
    commission: float
    entry_rule: str
    exit_rule: str
    exit_reason: str
    mae: float | None = None
    mfe: float | None = None
    legs: tuple = ()
    contract: str = ""   # the futures contract the round trip was in
    owner: str = ""          # the agent that opened it, or the strategy (its own rules)
    entry_states: tuple = ()  # the classifications when its entry was decided: ((name, label), ...)

    @property
    def bars_held(self) -> int:
        return self.exit_bar - self.entry_bar


class LedgerError(Exception):
    """A fill that the ledger cannot apply (a bug in the caller, not a user error)."""


class Ledger:
    def __init__(self, cash: float):
        self.initial_cash = float(cash)
        self.cash = float(cash)
        self.positions: dict[str, Position] = {}
        self.trades: list[Trade] = []
        self.fills: list[Fill] = []

    def equity(self, marks: dict[str, float]) -> float:
        """Cash plus every position at its mark (the last known price): the positions' exactly
        rounded sum (math.fsum, the same in any order, as a simulated venue's account sums them)."""
        positions = self.positions
        if not positions:
            return self.cash
        return self.cash + math.fsum([(marks[s] - p.avg_price) * p.quantity * p.multiplier if p.margined else
                                      marks[s] * p.quantity * p.multiplier for s, p in positions.items()])

    def margin_in_use(self) -> float:
        return sum(abs(p.quantity) * p.margin_per_unit for p in self.positions.values())

    def open(self, fill: Fill, *, margined: bool = False, margin_per_unit: float = 0.0,
             entry_values: dict | None = None, owner: str = "", states: tuple = (), key: str | None = None) -> Position:
        """Open a position with `fill`, kept under `key` (default: the fill's symbol; another key
        keeps a second owner's position in the same symbol apart)."""
        key = fill.symbol if key is None else key
        if key in self.positions:
            raise LedgerError(f"{key} already has an open position")
        self.fills.append(fill)
        self.cash -= fill.commission
        signed = fill.quantity if fill.action == "buy" else -fill.quantity
        if not margined:
            self.cash -= signed * fill.price * fill.multiplier
        pos = Position(fill.symbol, signed, fill.price, fill.multiplier, margined, fill.time, fill.bar,
                       fill.commission, fill.rule, margin_per_unit, dict(entry_values) if entry_values else {},
                       fill.contract, owner, states)
        self.positions[key] = pos
        return pos

    def add(self, fill: Fill, key: str | None = None) -> Position:
        """Add to the open position the same way (pyramiding): the quantity grows, the average
        price is the quantity-weighted mean of the entries, the commission joins the entry's."""
        pos = self.positions.get(fill.symbol if key is None else key)
        signed = fill.quantity if fill.action == "buy" else -fill.quantity
        if pos is None or signed * pos.quantity <= 0:
            raise LedgerError(f"fill {fill.action} {fill.quantity} does not add to {fill.symbol}")
        self.fills.append(fill)
        self.cash -= fill.commission
        if not pos.margined:
            self.cash -= signed * fill.price * fill.multiplier
        total = pos.quantity + signed
        pos.avg_price = (pos.avg_price * pos.quantity + fill.price * signed) / total
        pos.quantity = total
        pos.entry_commission += fill.commission
        return pos

    def late_commission(self, order_ref: str, delta: float, trade_index: int | None = None,
                        key: str | None = None) -> None:
        """A commission the venue reported after the fill was booked (IB's commission report
        comes after the execution, sometimes as zero first): cash, the fill, the open position's
        entry commission or the closed trade's P&L take the difference."""
        from dataclasses import replace

        self.cash -= delta
        for i in range(len(self.fills) - 1, -1, -1):
            f = self.fills[i]
            if f.order_ref == order_ref:
                self.fills[i] = replace(f, commission=f.commission + delta)
                symbol = f.symbol if key is None else key
                break
        else:
            raise LedgerError(f"no fill of {order_ref} to take a commission")
        if trade_index is not None:
            t = self.trades[trade_index]
            pnl = t.pnl - delta
            # the trade's own basis for its return (a combo's is its margin, not its price)
            basis = 100.0 * t.pnl / t.return_pct if t.return_pct and t.pnl else abs(t.entry_price * t.quantity
                                                                                      * t.multiplier)
            self.trades[trade_index] = replace(t, pnl=pnl, commission=t.commission + delta,
                                               return_pct=100.0 * pnl / basis if basis else 0.0)
        elif symbol in self.positions:
            self.positions[symbol].entry_commission += delta

    def close(self, fill: Fill, exit_reason: str = "", mae: float | None = None, mfe: float | None = None,
              key: str | None = None) -> Trade:
        """Close the position kept under `key` (default: the fill's symbol) with `fill`: the round
        trip, with its excursions when the caller measured them over the bars it was open."""
        key = fill.symbol if key is None else key
        pos = self.positions.get(key)
        if pos is None or abs(fill.signed + pos.quantity) > 1e-9:
            raise LedgerError(f"fill {fill.action} {fill.quantity} does not close {fill.symbol}")
        self.fills.append(fill)
        gross = pos.unrealised(fill.price)
        self.cash -= fill.commission
        if pos.margined:
            self.cash += gross
        else:
            self.cash += -fill.signed * fill.price * fill.multiplier
        commission = pos.entry_commission + fill.commission
        pnl = gross - commission
        basis = abs(pos.avg_price * pos.quantity * pos.multiplier)
        trade = Trade(fill.symbol, "long" if pos.quantity > 0 else "short", abs(pos.quantity), pos.multiplier,
                      pos.entry_time, pos.avg_price, fill.time, fill.price, pnl,
                      100.0 * pnl / basis if basis else 0.0, pos.entry_bar, fill.bar, commission,
                      pos.entry_rule, fill.rule, exit_reason, mae, mfe, (), pos.contract, pos.owner, pos.states)
        del self.positions[key]
        self.trades.append(trade)
        return trade
