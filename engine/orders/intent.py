"""OrderIntent: what a rule wants sent, before risk checks and before any broker sees it.

An intent names the instrument, action, quantity (or how to size it at the fill), order type and
prices, time in force, and a tag (strategy, rule, run) that becomes IB's orderRef, so a restart
recognises its own orders. Dry runs print intents; brokers turn them into orders. An intent is a
value, changed only by making a new one (dataclasses.replace); it is slotted rather than frozen,
which makes it four times cheaper to create (a run makes several per trade).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sizing:
    """How many units: a fixed count, a share of equity, or the risk between entry and stop."""

    mode: str                      # fixed | percent_of_equity | risk_percent
    value: float                   # units, or a fraction of equity
    stop_distance: float | None = None  # price distance per unit (risk_percent)
    whole: bool = True             # round down to whole units


@dataclass(frozen=True)
class Leg:
    """One leg of a combo: an option contract and how many per combo."""

    right: str        # put | call
    strike: float
    expiry: str       # YYYYMMDD
    action: str       # buy | sell
    ratio: int = 1


@dataclass(slots=True)
class OrderIntent:
    symbol: str
    action: str                    # buy | sell
    order_type: str = "market"     # market | limit | stop | stop_limit | moc | loc
    quantity: float | None = None  # None: sized when it fills (see sizing)
    sizing: Sizing | None = None
    limit: float | None = None
    stop: float | None = None
    tif: str = "day"
    intent: str = "open"           # open | close
    rule: str = ""
    tag: str = ""                  # qtrade:<run>:<seq>; IB orderRef
    reason: str = ""
    legs: tuple[Leg, ...] = field(default_factory=tuple)

    def sized(self, quantity: float) -> "OrderIntent":
        """This intent with its quantity decided (at the price it fills near, after the risk caps)."""
        return OrderIntent(self.symbol, self.action, self.order_type, quantity, self.sizing, self.limit, self.stop,
                           self.tif, self.intent, self.rule, self.tag, self.reason, self.legs)

    def repriced(self, limit: float | None, stop: float | None) -> "OrderIntent":
        """This intent at other prices (a protective level moved, a chase's next step)."""
        return OrderIntent(self.symbol, self.action, self.order_type, self.quantity, self.sizing, limit, stop,
                           self.tif, self.intent, self.rule, self.tag, self.reason, self.legs)

    def describe(self) -> str:
        """One readable line: `BUY 100 SPY LMT 412.50 DAY [golden cross] qtrade:...`."""
        qty = f"{self.quantity:g}" if self.quantity is not None else _sizing_text(self.sizing)
        price = ""
        if self.order_type in ("limit", "loc", "stop_limit") and self.limit is not None:
            price += f" LMT {self.limit:.2f}"
        if self.order_type in ("stop", "stop_limit") and self.stop is not None:
            price += f" STP {self.stop:.2f}"
        kind = {"market": "MKT", "limit": "", "stop": "", "stop_limit": "", "moc": "MOC", "loc": ""}[self.order_type]
        legs = ""
        if self.legs:
            legs = " (" + ", ".join(f"{leg.action} {leg.ratio} {leg.expiry} {leg.strike:g} {leg.right}"
                                    for leg in self.legs) + ")"
        text = f"{self.action.upper()} {qty} {self.symbol}{legs} {kind}{price} {self.tif.upper()}".replace("  ", " ")
        return f"{text} [{self.rule}] {self.tag}".strip()


def _sizing_text(sizing: Sizing | None) -> str:
    if sizing is None:
        return "?"
    if sizing.mode == "percent_of_equity":
        return f"{sizing.value * 100:g}%-of-equity"
    if sizing.mode == "risk_percent":
        return f"risk-{sizing.value * 100:g}%"
    return f"{sizing.value:g}"


def on_tick(price: float, tick: float, action: str) -> float:
    """A limit or stop price a rule computed, put on the instrument's tick grid as IB requires (an
    order off it is rejected: 110, the price does not conform to the minimum price variation).
    A sell's price rounds up and a buy's down: a limit is never a worse price than the rule named
    (a buy pays no more, a sell takes no less), and a stop is never triggered later than the
    level the rule named (a sell stop below the market moves towards it, as a buy stop above it
    does). A price on the grid, within float noise of it, stays where it is; the result is rounded
    to 1e-10, so that it prints as the tick does."""
    if not tick > 0:
        return price
    return grid_price(price, tick, up=action == "sell")


def grid_price(price: float, tick: float, up: bool) -> float:
    """`price` on the `tick` grid, rounded up or down; a price on the grid within float noise
    (1e-6 of a tick) stays where it is, and the result is rounded to 1e-10 so that it prints as the
    tick does. on_tick rounds a rule's limits and stops; orders.combos.round_limit a combo's."""
    units = price / tick
    steps = math.ceil(units - 1e-6) if up else math.floor(units + 1e-6)
    return round(steps * tick, 10)
