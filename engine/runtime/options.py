"""Options in the Runner: build a combo from a chain at a bar, decide on it, chase it, manage it.

An options strategy is evaluated bar by bar inside its entry window (its rules read `credit`,
`margin`, the legs' deltas: facts of the chain at that moment). The desk resolves the expiry
rule on the underlying's exchange calendar, picks each leg's strike (by delta, premium or an
offset from another leg), prices the combo from the legs' quotes, and the Runner then applies
the rule, the risk limits and the chase. Open combos are marked at mid every bar; exit rules see
`position.pnl`, `position.entry_credit`, `position.dte`; index options are cash-settled at
expiry from the underlying's settlement price.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

import numpy as np

from ..check.model import OrderTemplate
from ..market.expiry import NoExpiry, parse_rule, resolve
from ..orders.combos import Chase, ComboQuote, LegQuote, NoStrike, Side, leg_quote, order_price, pick_by_delta, \
    pick_by_premium, pick_strike
from ..plan import nodes as N
from ..plan.evaluate import MissingInput, value_at


class ChainView(Protocol):
    """One underlying's option quotes at one moment."""

    underlying: float

    def expiries(self) -> list[dt.date]: ...

    def side(self, expiry: dt.date, right: str) -> Side: ...


@dataclass(frozen=True)
class OptionSetup:
    """An underlying's option facts from the instruments map."""

    multiplier: float = 100.0
    tick: float = 0.01
    settlement: str = "cash"         # cash | physical
    settlement_time: str = "pm"      # am | pm
    cycle: str = "daily"
    calendar: str = "CBOE_Index_Options"
    listed: bool = False             # expiries must come from the chain (real snapshots)


@dataclass
class ComboPosition:
    key: str
    order: str
    rule: str
    legs: tuple[LegQuote, ...]
    quantity: int
    entry_credit: float               # per unit, price terms
    entry_bar: int
    entry_time: int
    expiry: dt.date
    underlying_entry: float
    multiplier: float
    action: str                       # the opening order's: sell (a credit combo) | buy (a debit combo)
    marks: dict[int, float] = field(default_factory=dict)   # bar -> value of the position (account currency)
    last_credit: float | None = None  # last mid credit of opening it (what closing at mid costs: a debit)

    def expiries(self) -> set[dt.date]:
        return {dt.date.fromisoformat(leg.expiry) for leg in self.legs}

    @property
    def mark_price(self) -> float:
        """Its last mid in the terms it was opened in (the opening order's limit at mid: the credit
        of a sold combo, the debit of a bought one), as a venue marks a holding."""
        credit = self.entry_credit if self.last_credit is None else self.last_credit
        return order_price(-credit, self.action)

    @property
    def entry_credit_total(self) -> float:
        return self.entry_credit * self.multiplier * self.quantity

    def pnl(self, credit_now: float) -> float:
        """Open P&L at a mid credit `credit_now` (before commissions)."""
        return (self.entry_credit - credit_now) * self.multiplier * self.quantity


class OptionsDesk:
    """Builds and re-prices combos for one strategy."""

    def __init__(self, plan: N.Plan, orders: Mapping[str, OrderTemplate], setups: dict[str, OptionSetup],
                 timezone: str):
        self.plan = plan
        self.orders = orders
        self.setups = setups
        self.timezone = timezone
        # each expiry rule parsed once: the order's, and a leg's own (the far month of a calendar)
        self._rules = {(name, leg.name if leg is not None else None): parse_rule(rule)
                       for name, t in orders.items() if t.combo
                       for leg, rule in [(None, t.expiry)] + [(leg, leg.expiry) for leg in t.legs
                                                             if leg.expiry is not None]}

    def output(self, name: str) -> int | None:
        return self.plan.outputs.get(name)

    def _value(self, name: str, bar: int, values: list, ctx: dict) -> float | None:
        node = self.output(name)
        if node is None:
            return None
        value = value_at(self.plan, node, bar, values, ctx)
        return float(value) if value is not None else None

    def expiry(self, order: str, symbol: str, now: dt.datetime, chain: ChainView, leg: str | None = None) -> dt.date:
        """The order's expiry, or a leg's own (the far month of a calendar spread)."""
        setup = self.setups[symbol]
        rule = self._rules.get((order, leg)) or self._rules[(order, None)]
        listed = chain.expiries() if setup.listed else None
        # the trading day in the strategy's timezone: a daily bar stamped at local midnight must
        # not become the previous day on an exchange calendar an hour behind (CBOE is Chicago)
        return resolve(rule, now.date(), setup.calendar, listed=listed, cycle=setup.cycle)

    def expiries_needed(self, order: str, symbol: str, now: dt.datetime) -> set[dt.date]:
        """Every expiry an order's legs resolve to at `now` (for synthesising just those)."""
        setup = self.setups[symbol]
        out = set()
        for (name, _), rule in self._rules.items():
            if name != order:
                continue
            try:
                out.add(resolve(rule, now.date(), setup.calendar, cycle=setup.cycle))
            except NoExpiry:
                continue
        return out

    def build(self, order: str, symbol: str, bar: int, now: dt.datetime, values: list,
              chain: ChainView) -> ComboQuote | str:
        """The combo the order template means at this bar, or the reason it cannot be built."""
        template = self.orders[order]
        setup = self.setups[symbol]
        listed = set(chain.expiries())
        legs: dict[str, LegQuote] = {}
        ctx: dict[str, Any] = {}
        for leg in template.leg_order():
            name = leg.name
            try:
                expiry = self.expiry(order, symbol, now, chain, name)
            except NoExpiry as exc:
                return f"leg {name}: {exc}" if leg.expiry is not None else str(exc)
            if expiry not in listed:
                return f"expiry {expiry} is not in the chain at {now:%Y-%m-%d %H:%M}"
            side = chain.side(expiry, leg.right)
            base = f"orders.{order}.legs.{name}"
            try:
                if leg.strike == "delta":
                    target = self._value(f"{base}.delta", bar, values, ctx)
                    lo = self._value(f"{base}.min", bar, values, ctx)
                    hi = self._value(f"{base}.max", bar, values, ctx)
                    index = pick_by_delta(side, target, lo, hi)
                elif leg.strike == "premium":
                    index = pick_by_premium(side, self._value(f"{base}.premium", bar, values, ctx))
                else:
                    price = self._value(f"{base}.strike", bar, values, ctx)
                    if price is None or not math.isfinite(price):
                        return f"leg {name}: the strike expression has no value"
                    index = pick_strike(side, price)
            except NoStrike as exc:
                return f"leg {name}: {exc}"
            except MissingInput as exc:
                return f"leg {name}: {exc}"
            quote = leg_quote(name, side, index, leg.action, leg.ratio, expiry.isoformat())
            legs[name] = quote
            for key in ("strike", "bid", "ask", "delta", "iv", "gamma", "theta", "vega"):
                ctx[f"{name}.{key}"] = getattr(quote, key)
            ctx[f"{name}.mid"] = quote.mid
            ctx[f"{name}.dte"] = float((expiry - now.date()).days)
            ctx[f"{name}.right"] = quote.right
        order_legs = tuple(legs[leg.name] for leg in template.legs)
        return ComboQuote(order_legs, setup.multiplier, chain.underlying)

    def requote(self, legs: tuple[LegQuote, ...], chain: ChainView, multiplier: float) -> ComboQuote | str:
        """The same contracts' quotes in a later chain."""
        out = []
        for leg in legs:
            expiry = dt.date.fromisoformat(leg.expiry)
            if expiry not in set(chain.expiries()):
                return f"{leg.expiry} is no longer in the chain"
            side = chain.side(expiry, leg.right)
            hits = np.flatnonzero(np.isclose(side.strike, leg.strike, rtol=0, atol=1e-9))
            if not len(hits):
                return f"strike {leg.strike:g} {leg.right} is no longer quoted"
            out.append(leg_quote(leg.name, side, int(hits[0]), leg.action, leg.ratio, leg.expiry))
        return ComboQuote(tuple(out), multiplier, chain.underlying)

    @staticmethod
    def context(quote: ComboQuote, now: dt.datetime) -> dict[str, Any]:
        """What an entry rule may read about the combo: credit, margin, legs' quotes and greeks."""
        ctx: dict[str, Any] = {
            "credit": quote.credit, "debit": -quote.credit, "max_loss": quote.max_loss,
            "max_profit": quote.max_profit, "margin": quote.margin, "underlying_price": quote.underlying,
        }
        for leg in quote.legs:
            for key in ("strike", "bid", "ask", "delta", "iv", "gamma", "theta", "vega"):
                ctx[f"{leg.name}.{key}"] = getattr(leg, key)
            ctx[f"{leg.name}.mid"] = leg.mid
            ctx[f"{leg.name}.right"] = leg.right
            ctx[f"{leg.name}.dte"] = float((dt.date.fromisoformat(leg.expiry) - now.date()).days)
        return ctx

    def chase(self, order: str, bar: int, values: list, ctx: dict, closing: bool = False) -> Chase:
        """The order's prices as a chase (mid and market are one price; a limit is its value).
        `ctx` is the combo's facts (`context`): at an entry the combo about to be opened, at an
        exit the open combo as it is then, so a limit or floor that reads `credit` reads the
        combo's credit at that moment; the value is the order's limit in its direction (what the
        closing order pays, for a credit combo; what it receives, for a debit one). `closing`:
        the closing order's prices, by the template's close_price when it has one, else by its
        price without the chase's floor (a floor bounds the opening order: `floor: min_credit`
        is the smallest credit a condor is sold for, not the largest debit its stop-loss pays)."""
        template = self.orders[order]
        price, label, floored = template.price, f"orders.{order}", not closing
        if closing and template.close_price is not None:
            price, label, floored = template.close_price, f"orders.{order}.close", True
        # close_price's one price (mid, a limit) rests a while before the close goes on without it
        single = _CLOSE_REST if closing and template.close_price is not None else 0.0
        if price.kind == "chase":
            c = price.chase
            floor = self._value(f"{label}.floor", bar, values, ctx) if c.floor and floored else None
            return Chase(start=c.start, step=c.step, steps=c.steps, every=c.every, floor=floor,
                         binding=closing and floored and c.floor)
        if price.kind == "market":
            return Chase(start="natural", step=0.0, steps=1, every=0.0)
        if price.kind == "limit":
            limit = self._value(f"{label}.limit", bar, values, ctx)
            return Chase(start=limit, step=0.0, steps=1, every=single, binding=single > 0)
        return Chase(start="mid", step=0.0, steps=1, every=single)


_CLOSE_REST = 30.0      # seconds close_price's single price (mid, a limit) rests


def settlement_value(position: ComboPosition, price: float, quote: ComboQuote | None = None) -> float:
    """What the combo costs to close at its front expiry, as a debit per unit: the expiring legs
    at their intrinsic value, later legs (a calendar's back month) at mid from `quote`."""
    debit = 0.0
    later = {leg.name: leg for leg in quote.legs} if quote is not None else {}
    for leg in position.legs:
        if dt.date.fromisoformat(leg.expiry) <= position.expiry:
            value = max(price - leg.strike, 0.0) if leg.right == "call" else max(leg.strike - price, 0.0)
        else:
            now = later.get(leg.name)
            value = now.mid if now is not None and now.quoted_for(False) else leg.mid
        debit += leg.sign * leg.ratio * value
    return debit
