"""Orders at IB: the kernel's Order sent as an ib_async Contract and Order, changed in place,
cancelled, priced by what-if, and everything IB says about it turned into engine events.

Sending. `place` resolves the contract (a symbol through `resolve`, a combo's legs through
`resolve_option`), checks the order locally (a NaN, infinite or non-positive quantity or price is
refused with an OrderStatus `rejected` and its reason, nothing is sent), and places it with
orderId 0 so that ib_async takes the next id of IB's sequence; orderRef is the kernel's tag. A
ref is placed once: placing a ref this object already sent, or one IB reported (`rebind`,
`adopt`), raises ValueError. `modify` sends the same Trade's order again with its fields
changed (same orderId, same permId); `cancel` asks IB to cancel, and the confirmation is the
OrderStatus `cancelled` IB sends. With `read_only=True` place, modify and cancel transmit
nothing (place reports `rejected`, modify and cancel a BrokerError with code 0); what-if still goes.

Combos (IB's BAG). The kernel's combo Order has an action (buy | sell), a positive limit per
unit, its intent (open | close) and its legs as the structure is opened (a credit iron condor:
sell the inner strikes, buy the wings). IB executes a BAG's ComboLegs as written when the BAG is
bought and reversed when it is sold. This module sends the BAG with IB's action equal to the
kernel's and the limit unchanged, so a credit condor is SELL at a positive limit (the credit
received per unit) and closing it is BUY at a positive limit (the debit paid); each ComboLeg's
action is what that leg does when the BAG is bought. For the opening SELL of a credit condor the
BAG therefore reads BUY inner, SELL wings, and selling it sells the inner strikes. Option combos
go guaranteed (no NonGuaranteed tag: all legs fill or none); the tag is set only when a leg is
not an option. A BAG is never qualified.

Events, through `on_event`, as they happen:
  OrderStatus   submitted (IB acknowledged it, nothing filled), partially_filled, filled,
                cancelled (filled quantity kept), rejected (IB's reason, or the local one),
                with filled / remaining, the average price of its executions and IB's orderId in
                broker_id. A status is emitted only once the executions that make up its filled
                quantity have been emitted (IB may send the status first); repeats are not
                emitted. `expired` is never emitted: IB reports an expired order as Cancelled.
  Execution     one per execution id, with the order's ref, price, quantity and IB's execution
                time (ns UTC). For a combo only the BAG-level execution (the one the kernel
                books); its legs' executions are kept in `leg_executions(ref)`. A correction
                (an exec id differing only after its last dot, `.01` -> `.02`) is emitted with
                `corrects` naming the execution it replaces; an older version reported after
                a newer one is dropped.
  CommissionReport  per execution id: the commission IB reports for it (for a combo's BAG
                execution, the sum over its legs once every leg has reported), emitted again
                only when the value changes (zero first, the real one later). UNSET, NaN and
                infinite commissions are never emitted.
  BrokerError   IB's errors about one of our orders (code and IB's text), and local refusals
                of modify/cancel (code 0).
  ModifyRefused a modify IB did not take (105, 110, 321, 329, 434 in answer to it on an order
                IB had acknowledged) or that was not sent (not connected, read-only, a
                non-positive value): the order as IB still holds it, the local Trade put back.

ib_async's quirks handled: a non-warning error marks the local Trade Cancelled even when IB keeps
the order working; a warning marks it ValidationError (still live). Neither local inference is
reported: 201/203 (and any error on an order IB never acknowledged) reject it with IB's reason,
202 is IB's cancel (the filled quantity kept), warnings leave it live, and any other error (161
a cancel racing a fill, 104, 103, 135, ...) marks the order for `settle()`, which re-queries IB's
open and completed orders and executions before anything is reported. After a disconnect every
Trade object is dead: `rebind()` binds the orders again from ib_async's trades by permId and
orderRef and emits the executions and statuses that happened meanwhile.

The IB error codes used here are a private table until codes.py provides them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable

from ib_async import IB, ComboLeg, Contract, ExecutionFilter, OrderState, TagValue, Trade
from ib_async import Order as IBOrder

from .. import events as E
from .types import Resolved

UNSET = 1.7976931348623157e308       # IB's 'no value' for a double (sys.float_info.max)
EPS = 1e-9
LOCAL = 0                            # BrokerError code of a refusal made here: nothing was sent

# IB's order-related codes as this module treats them (codes.py will own them)
_HELD = frozenset({399, 404})    # the order is live, held at IB (outside regular hours; while shares are located)
_WARNINGS = frozenset({105, 110, 165, 321, 329, 399, 404, 434, 492, 10167})   # ib_async: ValidationError
_REFUSES_NEW = frozenset({110, 321})   # warnings that, before IB acknowledged an order, mean it was not taken
_REJECTED = frozenset({201, 203})
# warnings that, in answer to a modify of an acknowledged order, mean IB did not take the change
# (105 mismatch, 110 off the tick, 321 validation, 329 order type, 434 zero size): the order works
# on as it was
_MODIFY_REFUSALS = frozenset({105, 110, 321, 329, 434})
_CANCELLED = 202
_HARMLESS_WHEN_DONE = frozenset({161, 202, 10147, 10148})

_TYPES = {"market": "MKT", "limit": "LMT", "stop": "STP", "stop_limit": "STP LMT", "moc": "MOC", "loc": "LOC"}
_NEEDS_LIMIT = frozenset({"limit", "stop_limit", "loc"})
_NEEDS_STOP = frozenset({"stop", "stop_limit"})
_TIF = {"day": "DAY", "gtc": "GTC", "ioc": "IOC", "fok": "FOK", "opg": "OPG"}
_RIGHTS = {"call": "C", "put": "P", "c": "C", "p": "P"}
_GUARANTEED = frozenset({"OPT", "FOP"})   # option combos SMART routes guaranteed: all legs or none
_SIDES = {"BOT": "buy", "SLD": "sell", "BUY": "buy", "SELL": "sell"}
_WORKING = frozenset({"PreSubmitted", "Submitted"})
_CANCELLED_AT_IB = frozenset({"Cancelled", "ApiCancelled"})


def real(value) -> float | None:
    """A number IB really sent, as float: None for None, '', NaN, infinities and UNSET."""
    if value is None or value == "":
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(x) or abs(x) >= UNSET / 1e8:   # UNSET, however IB rounded it
        return None
    return x


def to_ns(t: dt.datetime) -> int:
    """An aware datetime (naive ones are UTC) as integer nanoseconds since the epoch."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    delta = t - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def split_exec_id(exec_id: str) -> tuple[str, int]:
    """An execution id's base and its correction number: `0000e1a7.5f.01.02` -> (`0000e1a7.5f.01`, 2).
    Two ids with the same base are versions of one execution; the higher number replaces."""
    head, _, tail = exec_id.rpartition(".")
    if head and tail.isdigit():
        return head, int(tail)
    return exec_id, 0


def group_legs(bag_execs: list[tuple[str, float]], legs: Iterable[tuple[int, str, float]],
               ratios: dict[int, float]) -> dict[str, list[str] | None]:
    """Which leg executions make up which BAG execution. The k-th BAG execution of q combos takes
    the next q x ratio of each leg in the order the legs were reported; it maps to its legs' exec
    ids once every leg is complete, else to None. `bag_execs` is [(exec_id, combos)], `legs`
    [(conId, exec_id, quantity)], `ratios` {conId: ratio}."""
    bounds, total = [], 0.0
    for _, qty in bag_execs:
        total += qty
        bounds.append(total)
    taken: dict[int, list[str]] = {j: [] for j in range(len(bag_execs))}
    units: dict[tuple[int, int], float] = {}
    done: dict[int, float] = {}
    for con_id, exec_id, qty in legs:
        ratio = ratios.get(con_id)
        if not ratio:
            continue
        start = done.get(con_id, 0.0)
        done[con_id] = start + qty / ratio
        j = next((j for j, b in enumerate(bounds) if start < b - EPS), None)
        if j is None:
            continue                 # its BAG execution is not reported yet
        taken[j].append(exec_id)
        units[(j, con_id)] = units.get((j, con_id), 0.0) + qty / ratio
    out: dict[str, list[str] | None] = {}
    for j, (bag_id, qty) in enumerate(bag_execs):
        complete = all(abs(units.get((j, con), 0.0) - qty) <= 1e-6 for con in ratios)
        out[bag_id] = taken[j] if complete else None
    return out


def flip(action: str) -> str:
    return "sell" if action == "buy" else "buy"


def bag_leg_action(leg_action: str, order_action: str, intent: str) -> str:
    """The ComboLeg action (what the leg does when the BAG is bought) for a kernel leg (its action
    when the structure is opened) in an order of `order_action` with `intent` open | close."""
    actual = leg_action if intent != "close" else flip(leg_action)
    return (actual if order_action == "buy" else flip(actual)).upper()


def plain_reason(code: int, text: str) -> str:
    """IB's own words for why: the part after 'reason:' when IB gives one, else its message."""
    head, sep, tail = text.partition("reason:")
    reason = tail.strip() if sep else text.strip()
    if not reason:
        reason = {202: "cancelled by IB"}.get(code, head.strip(" -") or f"IB error {code}")
    return reason


def check(order: E.Order) -> str:
    """Why this order cannot be sent ('' when it can): checked before anything leaves."""
    if order.action not in ("buy", "sell"):
        return f"action {order.action!r} is neither buy nor sell"
    qty = real(order.quantity)
    if qty is None or qty <= 0:
        return f"quantity {order.quantity!r} is not a positive number"
    if order.order_type not in _TYPES:
        return f"order type {order.order_type!r} is not one of {', '.join(_TYPES)}"
    if order.tif not in _TIF:
        return f"time in force {order.tif!r} is not one of {', '.join(_TIF)}"
    for name, needed, value in (("limit", order.order_type in _NEEDS_LIMIT, order.limit),
                                ("stop", order.order_type in _NEEDS_STOP, order.stop)):
        if needed and (real(value) is None or value <= 0):
            return f"{order.order_type} order needs a positive {name} price, got {value!r}"
    if order.order_type in ("moc", "loc") and order.tif != "day":
        return f"{order.order_type} is a day order, not {order.tif}"
    if order.legs:
        if order.order_type not in ("market", "limit"):
            return f"a combo goes as a market or limit order, not {order.order_type}"
        if not order.underlying:
            return "a combo needs its underlying"
        for leg in order.legs:
            if leg.action not in ("buy", "sell") or str(leg.right).lower() not in _RIGHTS:
                return f"combo leg {leg.name!r} has action {leg.action!r} and right {leg.right!r}"
            ratio = real(leg.ratio)
            if ratio is None or ratio <= 0 or not ratio.is_integer():
                return f"combo leg {leg.name!r} has ratio {leg.ratio!r}, not a positive whole number"
    return ""


def ib_order(order: E.Order, routing: list | None = None) -> IBOrder:
    """The ib_async Order for a checked kernel Order (orderId 0: IB's sequence gives the id)."""
    o = IBOrder(action=order.action.upper(), totalQuantity=float(order.quantity),
                orderType=_TYPES[order.order_type], tif=_TIF[order.tif], orderRef=order.ref, transmit=True,
                smartComboRoutingParams=list(routing or []))
    if order.order_type in _NEEDS_LIMIT:
        o.lmtPrice = float(order.limit)
    if order.order_type in _NEEDS_STOP:
        o.auxPrice = float(order.stop)
    if order.oca:
        o.ocaGroup = order.oca
        o.ocaType = 1                # cancel the others, with block: no overfill
    return o


@dataclass(frozen=True)
class LegExecution:
    """One leg's execution of a combo fill (the kernel books the BAG-level one)."""

    ref: str
    exec_id: str
    con_id: int
    local_symbol: str
    action: str                      # buy | sell
    quantity: float
    price: float
    time: int                        # ns UTC
    commission: float | None = None  # None until IB reports a real one
    corrects: str = ""


@dataclass
class _Tracked:
    order: E.Order                   # the kernel's order as last sent (modify updates it)
    contract: Contract | None
    ratios: dict[int, float]         # a combo's legs: conId -> ratio ({} for a single contract)
    trade: Trade | None = None
    order_id: int = 0
    perm_id: int = 0
    client_id: int = 0
    acked: bool = False              # IB acknowledged it (a status of its own)
    done: bool = False               # a terminal status was emitted
    cancel_asked: bool = False
    check: str = ""                  # why ib_async's local state of it is not believed: settle() asks IB
    last: tuple | None = None        # (status, filled, remaining) last emitted
    held: E.OrderStatus | None = None  # a status whose executions are not all reported yet
    executed: float = 0.0
    execs: dict[str, E.Execution] = field(default_factory=dict)    # effective executions by exec id
    current: dict[str, str] = field(default_factory=dict)          # base -> effective exec id
    bases: list[str] = field(default_factory=list)                 # bases in the order reported
    stale: set[str] = field(default_factory=set)                   # replaced or superseded exec ids
    legs: list[LegExecution] = field(default_factory=list)
    leg_current: dict[str, int] = field(default_factory=dict)      # a leg's base -> index in legs
    own_commission: dict[str, float] = field(default_factory=dict)  # a BAG execution's own report
    sent_commission: dict[str, float] = field(default_factory=dict)
    # the order as it was before the last modify sent (the kernel's Order, and IB's totalQuantity,
    # lmtPrice and auxPrice): what IB holds if it refuses the change
    before_modify: tuple | None = None

    @property
    def combo(self) -> bool:
        return bool(self.ratios)


class Orders:
    def __init__(self, ib: IB, resolve: Callable[[str], Resolved],
                 resolve_option: Callable[[str, str, float, str], Resolved], on_event: Callable[[object], None],
                 clock: Callable[[], int] = time.time_ns, what_if_timeout: float = 5.0, read_only: bool = False,
                 query_timeout: float = 5.0):
        self._ib = ib
        self._resolve = resolve
        self._resolve_option = resolve_option
        self._emit = on_event
        self._clock = clock
        self.what_if_timeout = what_if_timeout
        self.query_timeout = query_timeout
        self.read_only = read_only
        self._by_ref: dict[str, _Tracked] = {}
        self._by_perm: dict[int, _Tracked] = {}
        self._by_order_id: dict[int, _Tracked] = {}   # this session's order ids only
        self._known_at_ib: set[str] = set()             # refs IB reported that this object did not place
        self._exec_order: list[tuple[_Tracked, str]] = []
        self._handlers = ((ib.orderStatusEvent, self._on_status), (ib.execDetailsEvent, self._on_exec),
                          (ib.commissionReportEvent, self._on_commission), (ib.errorEvent, self._on_error),
                          (ib.disconnectedEvent, self._on_disconnected))
        for event, handler in self._handlers:
            event += handler

    def close(self) -> None:
        """Stop listening to ib_async's events."""
        for event, handler in self._handlers:
            event -= handler

    # ---- sending -----------------------------------------------------------------------------
    def place(self, order: E.Order, resolved=None) -> str:
        """Send a new order; returns its ref. Its outcome comes as events. `resolved` names the
        exact contract when it is not the symbol's resolution today (a close of a futures position
        held in a contract past its roll goes to that contract, not to the new front month)."""
        if order.ref in self._by_ref or order.ref in self._known_at_ib:
            raise ValueError(f"order {order.ref} was placed already; a ref is never sent twice")
        if self.read_only:
            self._reject_locally(order, "read-only connection: orders are refused, nothing was sent")
            return order.ref
        problem = check(order)
        if problem:
            self._reject_locally(order, f"not sent: {problem}")
            return order.ref
        try:
            contract, ratios, routing = self._contract(order, resolved)
        except Exception as exc:  # noqa: BLE001 - resolution failures of any kind reject the order
            self._reject_locally(order, f"not sent: contract not resolved: {exc}")
            return order.ref
        if not self._ib.isConnected():
            self._reject_locally(order, "not connected to IB: the order was not sent")
            return order.ref
        tr = _Tracked(order, contract, ratios)
        try:
            tr.trade = self._ib.placeOrder(contract, ib_order(order, routing))
        except ConnectionError:
            self._reject_locally(order, "not connected to IB: the order was not sent")
            return order.ref
        self._by_ref[order.ref] = tr
        self._note_ids(tr, tr.trade)
        return order.ref

    def modify(self, ref: str, quantity: float | None = None, limit: float | None = None,
               stop: float | None = None) -> None:
        """Change a working order in place: the same Trade's order (same orderId and permId) sent
        again. Nothing is sent for an order already done (its terminal status says why); a change
        not sent, or refused by IB, comes back as ModifyRefused with the order as IB holds it."""
        tr = self._tracked(ref)
        if self._refused(tr, "modify"):
            if not tr.done:
                self._not_modified(tr, "read-only connection: nothing was sent", final=True)
            return
        for name, value in (("quantity", quantity), ("limit", limit), ("stop", stop)):
            if value is not None and (real(value) is None or value <= 0):
                why = f"{name} {value!r} is not a positive number"
                self._emit(E.BrokerError(ref, LOCAL, f"modify not sent: {why}", self._clock()))
                self._not_modified(tr, f"not sent: {why}", final=True)
                return
        trade, why = self._live_trade(tr, "modify")
        if trade is None:
            if not tr.done:
                self._not_modified(tr, f"not sent: {why}", final=False)
            return
        o = trade.order
        before = (o.totalQuantity, o.lmtPrice, o.auxPrice)
        if quantity is not None:
            o.totalQuantity = float(quantity)
        if limit is not None:
            o.lmtPrice = float(limit)
        if stop is not None:
            o.auxPrice = float(stop)
        o.transmit = True
        try:
            self._ib.placeOrder(trade.contract if tr.contract is None else tr.contract, o)
        except ConnectionError:
            o.totalQuantity, o.lmtPrice, o.auxPrice = before
            self._emit(E.BrokerError(ref, LOCAL, "modify not sent: not connected to IB", self._clock()))
            self._not_modified(tr, "not sent: not connected to IB", final=False)
            return
        changes = {k: v for k, v in (("quantity", quantity), ("limit", limit), ("stop", stop)) if v is not None}
        tr.before_modify = (tr.order, before)
        tr.order = replace(tr.order, **changes)

    def _not_modified(self, tr: _Tracked, reason: str, final: bool, fields: tuple | None = None) -> None:
        """A modify IB did not take (or that never left): the order stands as `tr.order`, which
        the event carries, and IB's Trade is put back to `fields` where it was changed locally."""
        if fields is not None and tr.trade is not None:
            o = tr.trade.order
            o.totalQuantity, o.lmtPrice, o.auxPrice = fields
        o = tr.order
        self._emit(E.ModifyRefused(o.ref, reason, float(o.quantity), o.limit, o.stop, self._clock(), final))

    def cancel(self, ref: str) -> None:
        """Ask IB to cancel; IB's OrderStatus `cancelled` confirms it (a fill may win the race)."""
        tr = self._tracked(ref)
        if self._refused(tr, "cancel"):
            return
        trade, _ = self._live_trade(tr, "cancel")
        if trade is None:
            return
        try:
            self._ib.cancelOrder(trade.order)
        except ConnectionError:
            self._emit(E.BrokerError(ref, LOCAL, "cancel not sent: not connected to IB", self._clock()))
            return
        tr.cancel_asked = True

    def what_if(self, order: E.Order, timeout: float | None = None) -> E.Margin | None:
        """The initial margin the order would add and its commission, from IB's what-if; None when
        IB cannot say (UNSET margin, a bogus first reply, an error, a timeout, not connected)."""
        if check(order) or not self._ib.isConnected():
            return None
        try:
            contract, _, routing = self._contract(order)
        except Exception:  # noqa: BLE001 - an order whose contract is unknown has no margin
            return None
        wait = self.what_if_timeout if timeout is None else timeout
        try:
            asked = self._ib.whatIfOrderAsync(contract, ib_order(order, routing))
            state = self._ib.run(asyncio.wait_for(asked, wait))
        except (asyncio.TimeoutError, ConnectionError):
            return None
        if not isinstance(state, OrderState) or not state.commissionCurrency:
            return None              # an error ended the request, or the bogus first reply (ib_insync#380)
        margin = real(state.initMarginChange)
        commission = real(state.commission)
        if commission is None:
            commission = real(state.maxCommission)
        if margin is None or commission is None:
            return None
        return E.Margin(margin, commission)

    # ---- reads -------------------------------------------------------------------------------
    def contract_of(self, ref: str):
        """The contract order `ref` was sent (or adopted) in, None if it is not known here."""
        tr = self._by_ref.get(ref)
        if tr is None:
            return None
        if tr.contract is not None:
            return tr.contract
        return tr.trade.contract if tr.trade is not None else None

    def open_orders(self) -> list[E.Order]:
        """The orders sent or adopted that are not done, as last sent."""
        return [tr.order for tr in self._by_ref.values() if not tr.done]

    def executions(self) -> list[E.Execution]:
        """Every execution emitted (BAG level for combos), corrections applied, in order."""
        return [tr.execs[tr.current[base]] for tr, base in self._exec_order]

    def leg_executions(self, ref: str) -> list[LegExecution]:
        """A combo's leg executions (corrections applied, commissions as reported)."""
        return list(self._tracked(ref).legs)

    def broker_ids(self, ref: str) -> tuple[int, int]:
        """(orderId, permId) of an order at IB; 0 where IB has not said yet."""
        tr = self._tracked(ref)
        return tr.order_id, tr.perm_id

    def pending_checks(self) -> dict[str, str]:
        """Orders whose state ib_async may have falsified, and why: `settle()` asks IB about them."""
        return {ref: tr.check for ref, tr in self._by_ref.items() if tr.check and not tr.done}

    # ---- after a reconnect / restart ---------------------------------------------------------
    def keep_ids_ahead(self, seen=()) -> int:
        """IB's order ids only go forward, and a gateway restart may roll nextValidId back (so
        would a restart of qtrade against a rolled-back gateway): the next id ib_async gives is
        made greater than every id this client is known to have used (placed here, held by
        ib_async's open and completed orders of this client, and `seen`, e.g. the journal's), so
        a new order never reuses an old order's id (IB's 103, or a modify of an order that is not
        its own). Returns the lowest id the next order may take."""
        cid = self._ib.client.clientId
        used = [tr.order_id for tr in self._by_ref.values() if tr.order_id]
        used += [t.order.orderId for t in self._ib.trades() if t.order.clientId == cid and t.order.orderId > 0]
        used += [int(i) for i in seen if i]
        floor = max(used) + 1 if used else 0
        if floor:
            self._ib.client.updateReqId(floor)
        return floor

    def rebind(self) -> list[str]:
        """Bind the orders that are not done to ib_async's Trades again (after a reconnect, from
        ib.trades(): the connection's startup fetch or reconcile.fetch fill it), by permId, else
        by orderRef; then emit the executions ib.fills() holds that were not emitted (fills while
        disconnected fire no execDetailsEvent) and each bound order's status. Returns the refs
        that could not be bound (they need reconcile: absent at IB, or placed by another client)."""
        self.keep_ids_ahead()
        trades = self._ib.trades()
        by_perm = {t.order.permId: t for t in trades if t.order.permId}
        by_ref: dict[str, list[Trade]] = {}
        for t in trades:
            by_ref.setdefault(t.order.orderRef, []).append(t)
        unbound = []
        for ref, tr in self._by_ref.items():
            if tr.done:
                continue
            trade = by_perm.get(tr.perm_id) if tr.perm_id else None
            if trade is None:
                candidates = sorted(by_ref.get(ref, []), key=lambda t: t.isDone())   # a working one first
                trade = candidates[0] if candidates else None
            if trade is None:
                tr.trade = None
                unbound.append(ref)
                continue
            self._bind(tr, trade)
        fills = self._ib.fills()
        self._replay(fills)
        for tr in self._by_ref.values():
            if not tr.done and tr.trade is not None:
                self._emit_status(tr, self._status_of(tr, tr.trade))
        self.refuse_refs([t.order.orderRef for t in trades] + [f.execution.orderRef for f in fills])
        return unbound

    def refuse_refs(self, refs: Iterable[str]) -> None:
        """Refs IB already knows (reconcile's snapshot, rebind): place() refuses them."""
        self._known_at_ib.update(r for r in refs if r and r not in self._by_ref)

    def highest_seq(self, prefix: str) -> int:
        """The highest <seq> among the refs `<prefix><seq>` IB reported or this object placed."""
        seqs = [int(r[len(prefix):]) for r in list(self._known_at_ib) + list(self._by_ref)
                if r.startswith(prefix) and r[len(prefix):].isdigit()]
        return max(seqs, default=0)

    def adopt(self, order: E.Order, perm_id: int = 0) -> bool:
        """Take over an order an earlier session placed (reconcile's `adopt`): find its Trade in
        ib.trades() by permId, else by orderRef, and track it as if placed here. False when ib_async
        has no such Trade (fetch the open orders first). Its executions so far are emitted."""
        trades = [t for t in self._ib.trades() if (perm_id and t.order.permId == perm_id) or
                  (not perm_id and t.order.orderRef == order.ref)]
        if not trades:
            return False
        if order.ref in self._by_ref:
            raise ValueError(f"order {order.ref} is tracked already")
        trade = sorted(trades, key=lambda t: t.isDone())[0]
        ratios = {leg.conId: float(leg.ratio) for leg in trade.contract.comboLegs or []} \
            if trade.contract.secType == "BAG" else {}
        tr = _Tracked(order, None, ratios)
        self._by_ref[order.ref] = tr
        self._known_at_ib.discard(order.ref)
        self._bind(tr, trade)
        self._replay(self._ib.fills())
        self._emit_status(tr, self._status_of(tr, trade))
        return True

    def settle(self, timeout: float | None = None) -> None:
        """Ask IB about the orders whose local state ib_async may have falsified (an error such as
        161 marked them Cancelled): every client's open orders, the completed orders and the
        executions, each within `timeout`; then emit what IB says. An order IB knows nowhere stays
        pending with a BrokerError. Blocks up to three timeouts; a no-op when nothing is pending."""
        todo = [tr for tr in self._by_ref.values() if tr.check and not tr.done]
        if not todo:
            return
        wait = self.query_timeout if timeout is None else timeout
        ib = self._ib
        try:
            opened = ib.run(asyncio.wait_for(ib.reqAllOpenOrdersAsync(), wait))   # adopted ones may be another client's
            completed = ib.run(asyncio.wait_for(ib.reqCompletedOrdersAsync(False), wait))
            fills = ib.run(asyncio.wait_for(ib.reqExecutionsAsync(ExecutionFilter()), wait))
        except (asyncio.TimeoutError, ConnectionError) as exc:
            self._emit(E.BrokerError(None, LOCAL, f"re-query of {len(todo)} orders did not finish "
                                     f"({type(exc).__name__}); asked again at the next settle()", self._clock()))
            return
        self._replay(fills)
        for tr in todo:
            mine = [t for t in opened if self._same(tr, t)]
            if mine:
                tr.check = ""
                self._bind(tr, mine[0])
                self._emit_status(tr, self._status_of(tr, mine[0]))
                continue
            done = [t for t in completed if self._same(tr, t)]
            if done:
                tr.check = ""
                self._emit_status(tr, self._status_of(tr, done[0]))
                continue
            self._emit(E.BrokerError(tr.order.ref, LOCAL, f"not among IB's open or completed orders after "
                                     f"{tr.check}: its state is unknown", self._clock()))

    # ---- ib_async callbacks: record and emit, nothing else -----------------------------------
    def _on_status(self, trade: Trade) -> None:
        tr = self._find(trade.order.orderRef, trade.order.permId)
        if tr is None:
            return
        if trade.log and trade.log[-1].errorCode:
            return                   # ib_async's own inference from an error: _on_error decides
        self._note_ids(tr, trade)
        self._emit_status(tr, self._status_of(tr, trade))

    def _on_exec(self, trade: Trade, fill) -> None:
        self._record_fill(fill)

    def _on_commission(self, trade: Trade, fill, report) -> None:
        tr = self._find(fill.execution.orderRef, fill.execution.permId)
        if tr is not None:
            self._record_commission(tr, report.execId, report.commission)

    def _on_error(self, req_id: int, code: int, text: str, contract=None) -> None:
        tr = self._by_order_id.get(req_id)
        if tr is None:
            return
        now = self._clock()
        if tr.done:
            if code not in _HARMLESS_WHEN_DONE or (code == _CANCELLED and not tr.cancel_asked):
                self._emit(E.BrokerError(tr.order.ref, code, text, now))   # IB's own cancel says why
            return
        reason = plain_reason(code, text)
        if code == _CANCELLED:       # IB's cancel; its orderStatus may come before or after
            if not tr.cancel_asked:
                self._emit(E.BrokerError(tr.order.ref, code, text, now))
            filled = self._filled_at_ib(tr)
            self._emit_status(tr, E.OrderStatus(tr.order.ref, E.CANCELLED, filled, max(tr.order.quantity - filled, 0.0),
                                                self._average(tr), now,
                                                "" if tr.cancel_asked else reason, tr.order_id))
            return
        if code in _HELD:
            self._emit(E.BrokerError(tr.order.ref, code, " ".join(text.split()), now, held=True))
            return
        self._emit(E.BrokerError(tr.order.ref, code, text, now))
        warning = code in _WARNINGS or 2100 <= code < 2200
        if warning and code in _MODIFY_REFUSALS and tr.acked and tr.before_modify is not None:
            (tr.order, fields), tr.before_modify = tr.before_modify, None
            self._not_modified(tr, reason, final=True, fields=fields)
            return
        if code in _REJECTED or (not tr.acked and (not warning or code in _REFUSES_NEW)):
            filled = self._filled_at_ib(tr)
            self._emit_status(tr, E.OrderStatus(tr.order.ref, E.REJECTED, filled, max(tr.order.quantity - filled, 0.0),
                                                self._average(tr), now, reason, tr.order_id))
            return
        if not warning:
            tr.check = f"error {code} ({reason})"

    def _on_disconnected(self) -> None:
        # ib_async drops every Trade on a disconnect: none of them gets another event
        for tr in self._by_ref.values():
            tr.trade = None
        self._by_order_id.clear()

    # ---- internals ---------------------------------------------------------------------------
    def _tracked(self, ref: str) -> _Tracked:
        tr = self._by_ref.get(ref)
        if tr is None:
            raise KeyError(f"no order {ref} was placed or adopted here")
        return tr

    def _find(self, ref: str, perm_id: int) -> _Tracked | None:
        tr = self._by_ref.get(ref)
        if tr is not None and (not perm_id or not tr.perm_id or tr.perm_id == perm_id):
            return tr
        return self._by_perm.get(perm_id) if perm_id else None

    @staticmethod
    def _same(tr: _Tracked, trade: Trade) -> bool:
        if tr.perm_id and trade.order.permId:
            return tr.perm_id == trade.order.permId
        return trade.order.orderRef == tr.order.ref

    def _note_ids(self, tr: _Tracked, trade: Trade) -> None:
        perm = trade.order.permId or trade.orderStatus.permId
        if perm:
            tr.perm_id = perm
            self._by_perm[perm] = tr
        if trade.order.orderId > 0 and trade.order.clientId == self._ib.client.clientId:
            tr.order_id = trade.order.orderId
            tr.client_id = trade.order.clientId
            self._by_order_id[tr.order_id] = tr

    def _bind(self, tr: _Tracked, trade: Trade) -> None:
        tr.trade = trade
        tr.acked = True
        self._note_ids(tr, trade)

    def _refused(self, tr: _Tracked, what: str) -> bool:
        if self.read_only:
            self._emit(E.BrokerError(tr.order.ref, LOCAL, f"read-only connection: {what} refused, nothing was sent",
                                     self._clock()))
            return True
        return tr.done

    def _live_trade(self, tr: _Tracked, what: str) -> tuple[Trade | None, str]:
        """The order's working Trade, re-found after a reconnect and re-queried when ib_async
        marked it done on an error IB did not mean that way; (None, why nothing was sent) with a
        BrokerError if there is none ('' for an order done meanwhile, whose status says why)."""
        if tr.trade is None:
            found = [t for t in self._ib.openTrades() if self._same(tr, t)]
            if found:
                self._bind(tr, found[0])
        if tr.trade is not None and tr.trade.isDone() and tr.check:
            self.settle()
        if tr.done:
            return None, ""
        trade = tr.trade
        mine = trade is not None and trade.order.clientId == self._ib.client.clientId
        if trade is None or trade.isDone() or not mine or not self._ib.isConnected():
            why = "not connected to IB" if not self._ib.isConnected() else \
                "not bound to a working IB order (call rebind() after a reconnect)" if trade is None else \
                f"IB reports it {trade.orderStatus.status}" if trade.isDone() else \
                f"it was placed by clientId {trade.order.clientId}, and IB lets only that client change it"
            self._emit(E.BrokerError(tr.order.ref, LOCAL, f"{what} not sent: {why}", self._clock()))
            return None, why
        return trade, ""

    def _reject_locally(self, order: E.Order, reason: str) -> None:
        self._emit(E.OrderStatus(order.ref, E.REJECTED, 0.0, float(order.quantity) if real(order.quantity) else 0.0,
                                 0.0, self._clock(), reason, 0))

    def _contract(self, order: E.Order, resolved=None) -> tuple[Contract, dict[int, float], list]:
        """The contract to send, a combo's leg ratios by conId, and its SMART routing params: a
        combo with a leg that is not an option routes only non-guaranteed (10043 otherwise)."""
        if not order.legs:
            r = resolved if resolved is not None else self._resolve(order.symbol)
            if r.sec_type == "IND":
                raise ValueError(f"{order.symbol} is an index, which cannot be traded")
            contract = r.contract if r.contract is not None else Contract(
                conId=r.con_id, secType=r.sec_type, exchange=r.exchange, currency=r.currency,
                localSymbol=r.local_symbol, tradingClass=r.trading_class)
            return contract, {}, []
        legs, ratios, kinds, currencies = [], {}, set(), set()
        for leg in order.legs:
            r = self._resolve_option(order.underlying, leg.expiry, float(leg.strike), _RIGHTS[str(leg.right).lower()])
            legs.append(ComboLeg(conId=r.con_id, ratio=int(leg.ratio), exchange="SMART",
                                 action=bag_leg_action(leg.action, order.action, order.intent)))
            ratios[r.con_id] = ratios.get(r.con_id, 0.0) + float(leg.ratio)
            kinds.add(r.sec_type)
            currencies.add(r.currency)
        if len(currencies) != 1:
            raise ValueError(f"the combo's legs trade in {', '.join(sorted(currencies))}, not one currency")
        bag = Contract(secType="BAG", symbol=order.underlying, exchange="SMART", currency=currencies.pop(),
                       comboLegs=legs)
        routing = [] if kinds <= _GUARANTEED else [TagValue("NonGuaranteed", "1")]
        return bag, ratios, routing

    def _filled_at_ib(self, tr: _Tracked) -> float:
        """What IB last said is filled (its genuine statuses, not ib_async's inference)."""
        filled = real(tr.trade.orderStatus.filled) if tr.trade is not None else None
        return max(filled or 0.0, tr.executed if tr.last is None else tr.last[1])

    @staticmethod
    def _average(tr: _Tracked) -> float:
        """The average price of the executions emitted (corrections applied), 0 before any: a
        status waits for its executions, so this is the average of what it reports filled."""
        qty = sum(e.quantity for e in tr.execs.values())
        return sum(e.quantity * e.price for e in tr.execs.values()) / qty if qty else 0.0

    def _status_of(self, tr: _Tracked, trade: Trade) -> E.OrderStatus | None:
        """The engine status of what IB said about a Trade (None for transitional states)."""
        s = trade.orderStatus.status
        total = real(trade.order.totalQuantity) or tr.order.quantity
        filled = real(trade.orderStatus.filled) or 0.0
        if s in _WORKING:
            status = E.PARTIAL if filled > EPS else E.SUBMITTED
        elif s == "Filled":
            status = E.FILLED
        elif s in _CANCELLED_AT_IB:
            status = E.CANCELLED
        elif s == "Inactive":
            status = E.REJECTED
        else:
            return None              # PendingSubmit, PendingCancel, ApiPending, ValidationError
        tr.acked = True              # a status of IB's own: IB has the order
        if status in E.DONE and filled <= EPS:
            filled = real(trade.order.filledQuantity) or 0.0   # a completed order carries it there
        if status == E.FILLED and filled <= EPS:
            filled = total
        remaining = 0.0 if status == E.FILLED else max(total - filled, 0.0)
        reason = f"inactive at IB{': ' + trade.orderStatus.whyHeld if trade.orderStatus.whyHeld else ''}" \
            if s == "Inactive" else ""
        return E.OrderStatus(tr.order.ref, status, filled, remaining, self._average(tr), self._clock(),
                             reason, tr.order_id)

    def _emit_status(self, tr: _Tracked, ev: E.OrderStatus | None) -> None:
        if ev is None or tr.done:
            return
        key = (ev.status, ev.filled, ev.remaining)
        if key == tr.last:
            return
        if ev.filled > tr.executed + EPS:
            tr.held = ev             # its executions first: the kernel books a done order from them
            return
        tr.held = None
        tr.last = key
        if ev.status in E.DONE:
            tr.done = True
            tr.check = ""
        self._emit(ev)

    def _release(self, tr: _Tracked) -> None:
        """Emit the held status once its executions are in, with their average price."""
        if tr.held is not None and tr.held.filled <= tr.executed + EPS:
            held, tr.held = tr.held, None
            self._emit_status(tr, replace(held, avg_price=self._average(tr)))

    def _replay(self, fills) -> None:
        """Executions reported by a request (not live): recorded like live ones, once each."""
        for fill in fills:
            self._record_fill(fill)
            report = fill.commissionReport
            tr = self._find(fill.execution.orderRef, fill.execution.permId)
            if tr is not None and report.execId == fill.execution.execId:
                self._record_commission(tr, report.execId, report.commission)

    def _record_fill(self, fill) -> None:
        ex = fill.execution
        tr = self._find(ex.orderRef, ex.permId)
        if tr is None:
            return
        qty, price = real(ex.shares), real(ex.price)
        bag = fill.contract.secType == "BAG"          # a combo's net price may be zero or a credit
        if not qty or qty <= 0 or price is None or (price <= 0 and not bag):
            self._emit(E.BrokerError(tr.order.ref, LOCAL, f"execution {ex.execId} withheld: IB sent quantity "
                                     f"{ex.shares!r} at price {ex.price!r}", self._clock()))
            return
        side = _SIDES.get(ex.side, ex.side.lower())
        base, number = split_exec_id(ex.execId)
        if tr.combo and fill.contract.secType != "BAG":
            self._record_leg(tr, fill, base, number, side, qty, price)
            return
        if ex.execId in tr.execs or ex.execId in tr.stale:
            return
        previous = tr.current.get(base)
        if previous is not None:
            if number <= split_exec_id(previous)[1]:
                tr.stale.add(ex.execId)   # an older version reported after the newer one
                return
            tr.stale.add(previous)
            tr.executed -= tr.execs.pop(previous).quantity
        event = E.Execution(tr.order.ref, ex.execId, tr.order.symbol, side, qty, price, to_ns(ex.time),
                            tr.order_id or ex.orderId, corrects=previous or "")
        tr.execs[ex.execId] = event
        tr.current[base] = ex.execId
        tr.executed += qty
        if previous is None:
            tr.bases.append(base)
            self._exec_order.append((tr, base))
        self._emit(event)
        if tr.combo:
            self._combo_commissions(tr)
        self._release(tr)

    def _record_leg(self, tr: _Tracked, fill, base: str, number: int, side: str, qty: float, price: float) -> None:
        ex = fill.execution
        if ex.execId in tr.stale or any(leg.exec_id == ex.execId for leg in tr.legs):
            return
        index = tr.leg_current.get(base)
        previous = tr.legs[index].exec_id if index is not None else ""
        if index is not None and number <= split_exec_id(previous)[1]:
            tr.stale.add(ex.execId)
            return
        leg = LegExecution(tr.order.ref, ex.execId, fill.contract.conId, fill.contract.localSymbol, side, qty, price,
                           to_ns(ex.time), corrects=previous)
        if index is None:
            tr.leg_current[base] = len(tr.legs)
            tr.legs.append(leg)
        else:
            tr.stale.add(previous)
            tr.legs[index] = leg
        self._combo_commissions(tr)

    def _record_commission(self, tr: _Tracked, exec_id: str, value) -> None:
        commission = real(value)
        if commission is None:
            return                   # UNSET: the real one comes later
        if not tr.combo:
            if exec_id in tr.execs:
                self._send_commission(tr, exec_id, commission)
            return
        for i, leg in enumerate(tr.legs):
            if leg.exec_id == exec_id:
                tr.legs[i] = replace(leg, commission=commission)
                break
        else:
            if exec_id not in tr.execs:
                return
            tr.own_commission[exec_id] = commission
        self._combo_commissions(tr)

    def _combo_commissions(self, tr: _Tracked) -> None:
        """A BAG execution's commission: its legs' once all of them have reported one."""
        bag = [(tr.current[b], tr.execs[tr.current[b]].quantity) for b in tr.bases]
        legs = {leg.exec_id: leg for leg in tr.legs}
        groups = group_legs(bag, [(leg.con_id, leg.exec_id, leg.quantity) for leg in tr.legs], tr.ratios)
        for bag_id, members in groups.items():
            if members is None or any(legs[m].commission is None for m in members):
                continue
            total = sum(legs[m].commission for m in members) + tr.own_commission.get(bag_id, 0.0)
            self._send_commission(tr, bag_id, round(total, 10))

    def _send_commission(self, tr: _Tracked, exec_id: str, commission: float) -> None:
        if tr.sent_commission.get(exec_id) == commission:
            return
        tr.sent_commission[exec_id] = commission
        self._emit(E.CommissionReport(exec_id, commission))
