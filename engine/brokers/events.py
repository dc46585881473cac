"""What a broker is told (Order) and what it says back (events), as plain dataclasses.

An Order is what leaves qtrade: its `ref` is the stable tag (IB's orderRef,
`qtrade:<strategy>:<seq>`) that a restart recognises. Events come back on one stream in the
order they happened: OrderStatus (with filled and remaining quantity), Execution (with the
venue's execution id), CommissionReport (for one execution id), BrokerError, ModifyRefused (a
change to a working order the venue did not take), ConnectionLost / ConnectionRestored. The
broker is the source of truth for fills and the account.

Orders and events are values: nobody changes one after it is made (a modified order is a new
Order, made with dataclasses.replace). The ones a busy run makes by the thousand (Order, Quote,
OrderStatus, Execution, CommissionReport, AccountValues) are slotted rather than frozen, which makes them four
to ten times cheaper to create.
"""

from __future__ import annotations

from dataclasses import dataclass

# order statuses, IB's lifecycle in plain words
SUBMITTED = "submitted"           # accepted by the venue, working
PARTIAL = "partially_filled"
FILLED = "filled"
CANCELLED = "cancelled"           # cancelled and the cancel confirmed
REJECTED = "rejected"
EXPIRED = "expired"               # its time in force ran out
DONE = frozenset({FILLED, CANCELLED, REJECTED, EXPIRED})


@dataclass(slots=True)
class Order:
    ref: str                         # the stable tag; IB's orderRef
    symbol: str
    action: str                      # buy | sell
    quantity: float
    order_type: str = "market"       # market | limit | stop | stop_limit | moc | loc
    limit: float | None = None
    stop: float | None = None
    tif: str = "day"                 # day | gtc | ioc | fok | opg
    oca: str = ""                    # one-cancels-all group: a fill cancels the group's other orders
    owner: str = ""                  # the strategy or agent whose position this is
    intent: str = "open"             # open | close
    rule: str = ""
    legs: tuple = ()                 # a combo (IB's BAG): its legs (orders.combos.LegQuote)
    underlying: str = ""             # a combo's underlying (its `symbol` is the combo's own key)
    multiplier: float = 1.0          # a combo's contract multiplier
    margin: float = 0.0              # a combo's initial margin per unit as priced when decided (a simulated
                                     # venue holds it against the account; IB computes its own)
    contract: str = ""               # a futures contract's local symbol (ESZ3) where the venue keeps each
                                     # contract's bars: a simulated venue fills on that contract's own bars
                                     # (IB sends to the contract it resolves or the position is held in)

    def describe(self) -> str:
        price = ""
        if self.order_type in ("limit", "loc", "stop_limit") and self.limit is not None:
            price += f" LMT {self.limit:.2f}"
        if self.order_type in ("stop", "stop_limit") and self.stop is not None:
            price += f" STP {self.stop:.2f}"
        kind = {"market": " MKT", "moc": " MOC"}.get(self.order_type, "")
        return f"{self.action.upper()} {self.quantity:g} {self.symbol}{kind}{price} {self.tif.upper()} {self.ref}"


@dataclass(slots=True)
class OrderStatus:
    ref: str
    status: str
    filled: float
    remaining: float
    avg_price: float
    time: int                        # ns UTC
    reason: str = ""
    broker_id: int = 0               # the venue's order id (IB's orderId)


@dataclass(slots=True)
class Execution:
    ref: str
    exec_id: str                     # unique per execution at the venue
    symbol: str
    action: str
    quantity: float
    price: float
    time: int
    broker_id: int = 0
    bar: int = -1                    # the bar it happened in (simulated venues)
    corrects: str = ""               # the exec id this one replaces (IB's `.01` -> `.02` correction), '' if none
    contract: str = ""               # the futures contract it filled in (a simulated venue's Order.contract)


@dataclass(slots=True)
class CommissionReport:
    exec_id: str
    commission: float


@dataclass(frozen=True)
class BrokerError:
    ref: str | None                  # the order it is about, if any
    code: int
    message: str
    time: int = 0
    held: bool = False               # a notice, not an error: the venue holds the order, which stays live
                                     # (IB's 399: not placed at the exchange until the session opens)


@dataclass(frozen=True)
class ModifyRefused:
    """A modify the venue did not take (IB: 105, 110, 321, 329 or 434 in answer to it, or not sent
    at all): the order works on as the venue holds it, with this quantity, limit and stop.
    `final`: the venue refused the change, and the same change would be refused again; otherwise
    it never reached the venue (not connected) and may be tried again."""
    ref: str
    reason: str
    quantity: float
    limit: float | None
    stop: float | None
    time: int = 0
    final: bool = True


@dataclass(frozen=True)
class ConnectionLost:
    time: int
    reason: str = ""


@dataclass(frozen=True)
class ConnectionRestored:
    time: int
    data_lost: bool = False          # IB's 1101: subscriptions must be made again


Event = (OrderStatus | Execution | CommissionReport | BrokerError | ModifyRefused | ConnectionLost
         | ConnectionRestored)


@dataclass(slots=True)
class Quote:
    symbol: str
    bid: float
    ask: float
    last: float
    time: int


@dataclass(frozen=True)
class BrokerPosition:
    symbol: str
    quantity: float                  # signed
    avg_price: float                 # per unit (IB's avgCost divided by the multiplier)
    multiplier: float = 1.0


@dataclass(slots=True)
class AccountValues:
    cash: float
    equity: float                    # net liquidation
    available_funds: float
    margin_used: float


@dataclass(frozen=True)
class Margin:
    """What-if: the initial margin an order would add, and its commission estimate."""

    initial: float
    commission: float
