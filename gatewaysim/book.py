"""The simulated account: orders, executions, positions and cash, shared by every session."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field

from .catalog import Instrument

WORKING = ("PreSubmitted", "Submitted", "PendingSubmit")
DONE = ("Filled", "Cancelled", "Inactive", "ApiCancelled")
ORDER_TYPES = ("MKT", "LMT", "STP", "STP LMT")     # the order types the simulator matches


@dataclass
class Order:
    orderId: int
    clientId: int
    permId: int
    inst: Instrument | None  # None for BAG
    action: str
    totalQuantity: float
    orderType: str
    lmtPrice: float | None
    auxPrice: float | None
    tif: str = "DAY"
    account: str = ""
    orderRef: str = ""
    ocaGroup: str = ""
    parentId: int = 0
    transmit: bool = True
    outsideRth: bool = False
    whatIf: bool = False
    exchange: str = ""
    symbol: str = ""
    currency: str = "USD"
    legs: list = field(default_factory=list)  # BAG: [{conId, ratio, action, exchange, inst}]
    combo_params: list = field(default_factory=list)
    status: str = "PendingSubmit"
    filled: float = 0.0
    avgFillPrice: float = 0.0
    lastFillPrice: float = 0.0
    triggered: bool = False
    done_time: str = ""
    created: str = ""
    session: int = 0  # serial of the connection that placed it (a modify after a restart is a new id)
    history: list = field(default_factory=list)
    day_end: int = 0  # a DAY order: the end (ns) of the session it is for, when it expires unfilled

    @property
    def remaining(self) -> float:
        return max(self.totalQuantity - self.filled, 0.0)

    @property
    def is_working(self) -> bool:
        return self.status in WORKING

    @property
    def is_bag(self) -> bool:
        return bool(self.legs)

    def to_json(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("inst", "legs")}
        d["contract"] = self.inst.describe() if self.inst else "BAG"
        d["conId"] = self.inst.conId if self.inst else 0
        d["legs"] = [{k: v for k, v in leg.items() if k != "inst"} for leg in self.legs]
        return d


@dataclass
class Execution:
    execId: str
    orderId: int
    clientId: int
    permId: int
    contract: list  # the 11 contract fields for execDetails
    conId: int
    symbol: str
    secType: str
    time: str
    ts: float  # epoch seconds, simulated
    account: str
    exchange: str
    side: str  # BOT / SLD
    shares: float
    price: float
    cumQty: float
    avgPrice: float
    orderRef: str
    commission: float = 0.0
    realized: float | None = None
    replaced_by: str = ""

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Position:
    inst: Instrument
    qty: float = 0.0
    avg_price: float = 0.0  # per unit (not x multiplier)
    realized: float = 0.0


class Book:
    def __init__(self, account: str, cash: float = 1_000_000.0):
        self.account = account
        self.cash = cash
        self.start_cash = cash
        self.orders: dict[tuple[int, int], Order] = {}
        self.executions: list[Execution] = []
        self.positions: dict[int, Position] = {}
        self.realized = 0.0
        self.next_perm = 1_000_000_001
        self.exec_seq = 0
        self.next_valid_id = 1

    def new_perm(self) -> int:
        self.next_perm += 1
        return self.next_perm - 1

    def new_exec_id(self, leg: int = 1) -> str:
        self.exec_seq += 1
        return f"0000e1a7.{self.exec_seq:08x}.{leg:02d}.01"

    def apply_fill(self, inst: Instrument, signed_qty: float, price: float) -> float | None:
        """Update position and cash; returns the realized P&L of a closing fill (None if opening)."""
        pos = self.positions.get(inst.conId) or Position(inst)
        mult = inst.multiplier
        self.cash -= signed_qty * price * mult
        realized = None
        if pos.qty == 0 or (pos.qty > 0) == (signed_qty > 0):
            total = pos.qty + signed_qty
            pos.avg_price = (pos.avg_price * pos.qty + price * signed_qty) / total
            pos.qty = total
        else:
            closing = min(abs(signed_qty), abs(pos.qty))
            direction = 1.0 if pos.qty > 0 else -1.0
            realized = (price - pos.avg_price) * closing * direction * mult
            pos.realized += realized
            self.realized += realized
            pos.qty += signed_qty
            if abs(pos.qty) < 1e-12:
                pos.qty = 0.0
            elif (pos.qty > 0) != (direction > 0):  # flipped
                pos.avg_price = price
        self.positions[inst.conId] = pos
        return realized

    def to_json(self) -> dict:
        return {"account": self.account, "cash": self.cash, "realized": self.realized,
                "next_valid_id": self.next_valid_id,
                "orders": [o.to_json() for o in self.orders.values()],
                "executions": [e.to_json() for e in self.executions],
                "positions": [{"conId": p.inst.conId, "contract": p.inst.describe(), "qty": p.qty,
                               "avg_price": p.avg_price, "realized": p.realized} for p in self.positions.values()]}


def commission_for(inst: Instrument, qty: float, price: float) -> float:
    if inst.secType == "STK":
        return round(min(max(1.0, 0.005 * qty), 0.01 * qty * price), 2)
    if inst.secType == "OPT":
        return round(0.65 * qty, 2)
    if inst.secType == "FUT":
        return round((0.62 if inst.multiplier <= 5 else 2.25) * qty, 2)
    return 0.0


def ib_time(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc).strftime("%Y%m%d %H:%M:%S UTC")
