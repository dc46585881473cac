"""Reconciliation with IB after a connect: the complete fetch, and the pure comparison with the
journal (IB_BEHAVIOUR.md, "Reconciliation algorithm proposed for qtrade"). Nothing is re-sent.

`fetch(ib, all_clients=..., since=..., timeout=...)` asks for positions, open orders
(reqAllOpenOrders when the client id changed, else reqOpenOrders), completed orders and the
executions since `since` with their commissions, all at once. Each answer must end with its end
marker within `timeout`; a timeout, a disconnect or an error on the executions request raises
Incomplete, because an incomplete answer is not an empty one. The Snapshot is plain data.

`reconcile(snapshot, journal, prefix)` is pure. It takes the journal's non-terminal orders, the
execution ids it holds and its open positions (a JournalView), and says:
  adopt       orders working at IB with our prefix: bind them (Orders.adopt) and journal the
              adoption (`journal` is None when the journal has no row for the order at all);
  fills       IB executions of our orders the journal lacks, once per execution (the highest
              correction of each; `replaces` names a journaled older version), commissions
              attached by exec id; a combo's fill is its BAG execution with its legs attached
              and their commissions summed;
  commissions journaled fills whose commission IB now reports differently (update in place);
  finished    journal orders done at IB (completed, or filled by executions alone), with the
              terminal status and filled quantity;
  never_sent  journal `created`, absent everywhere at IB;
  lost        journal `submitted` / `partially_filled`, absent everywhere: check once more
              (a second fetch; `confirmed_lost`), then mark them;
  phantom     positions the journal holds open and IB does not: close them externally in the
              journal, send no exit (a contract several owners hold in the journal is compared
              by the sum of their positions: IB nets them; one flag for the sum);
  unknown     positions IB holds in contracts the journal never traded: flag, never touch;
  mismatch    both hold it, in different quantities (or the journal traded it and holds none):
              flag, and block new entries on it (`blocked`);
  foreign     working orders without our prefix: listed, left alone;
  unmatched_legs  combo leg executions whose BAG execution IB did not report: not journaled.
Expected positions are the journal's plus the fills about to be inserted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Mapping

from ib_async import IB, ExecutionFilter

from .account import Holding, holding
from .orders import EPS, group_legs, real, split_exec_id, to_ns

PREFIX = "qtrade:"
_TERMINAL = {"Filled": "filled", "Cancelled": "cancelled", "ApiCancelled": "cancelled", "Inactive": "rejected"}
_SIDES = {"BOT": "buy", "SLD": "sell", "BUY": "buy", "SELL": "sell"}


class Incomplete(Exception):
    """The fetch did not complete: nothing may be concluded from it (retry with backoff)."""


# ---- what IB said (positions are account.Holding) ----------------------------------------------
@dataclass(frozen=True)
class IBOrder:
    order_ref: str
    perm_id: int
    order_id: int
    client_id: int
    con_id: int
    local_symbol: str
    symbol: str
    sec_type: str                    # BAG for a combo
    action: str                      # buy | sell
    quantity: float
    filled: float
    status: str                      # IB's: Submitted, PreSubmitted, Filled, Cancelled, ApiCancelled, Inactive
    order_type: str = ""             # IB's: MKT, LMT, STP, STP LMT
    limit: float | None = None
    stop: float | None = None
    legs: tuple[tuple[int, int, str], ...] = ()   # a BAG's (conId, ratio, action)
    oca_group: str = ""              # its one-cancels-all group ('' for none)


@dataclass(frozen=True)
class IBExecution:
    exec_id: str
    order_ref: str
    perm_id: int
    order_id: int
    client_id: int
    con_id: int
    local_symbol: str
    symbol: str
    sec_type: str                    # BAG for a combo's own execution
    action: str                      # buy | sell
    quantity: float
    price: float                     # per unit (a combo's: net per combo)
    time: int                        # ns UTC
    multiplier: float = 1.0
    commission: float | None = None  # None: IB has not reported a real one


@dataclass(frozen=True)
class Snapshot:
    positions: tuple[Holding, ...]
    open_orders: tuple[IBOrder, ...]
    completed_orders: tuple[IBOrder, ...]
    executions: tuple[IBExecution, ...]
    all_clients: bool = False
    since: dt.datetime | None = None
    seconds: float = 0.0             # how long the fetch took


# ---- what the journal holds ------------------------------------------------------------------
@dataclass(frozen=True)
class JournalOrder:
    tag: str                         # the order_ref
    symbol: str                      # qtrade's symbol (a combo's key)
    action: str                      # buy | sell
    quantity: float
    status: str                      # created | submitted | partially_filled
    local_symbol: str = ""
    con_id: int = 0                  # 0 for a combo
    broker_order_id: int = 0
    perm_id: int = 0
    combo: bool = False              # it has legs (the journal's legs JSON), conIds known or not
    legs: tuple[tuple[int, int], ...] = ()   # a combo's (conId, ratio), where known


@dataclass(frozen=True)
class JournalPosition:
    con_id: int
    local_symbol: str
    symbol: str
    quantity: float                  # signed; a combo's positions are given per leg
    avg_price: float                 # per unit
    multiplier: float = 1.0


@dataclass(frozen=True)
class JournalView:
    orders: tuple[JournalOrder, ...] = ()        # the non-terminal ones
    exec_ids: frozenset[str] = frozenset()       # every exec id journaled
    positions: tuple[JournalPosition, ...] = ()  # the open ones
    commissions: Mapping[str, float] = field(default_factory=dict)   # journaled commission per exec id
    traded: frozenset[int] = frozenset()         # every conId the journal ever traded


# ---- what to do --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Adopt:
    tag: str
    order: IBOrder
    journal: JournalOrder | None     # None: the journal has no row for it yet


@dataclass(frozen=True)
class FillToInsert:
    exec_id: str
    tag: str
    symbol: str                      # the journal order's symbol when known, else IB's
    local_symbol: str
    con_id: int
    action: str
    quantity: float
    price: float
    time: int
    multiplier: float
    commission: float | None         # None: not reported yet (update the row when it comes)
    broker_order_id: int
    perm_id: int
    replaces: str = ""               # a journaled older version of this execution ('' if none)
    legs: tuple[IBExecution, ...] = ()   # a combo fill's leg executions


@dataclass(frozen=True)
class Finished:
    tag: str
    status: str                      # filled | cancelled | rejected
    filled: float
    order: IBOrder | None            # None: known from its executions only


@dataclass(frozen=True)
class PositionFlag:
    con_id: int
    local_symbol: str
    symbol: str
    journal_quantity: float          # the journal's plus the fills to insert
    ib_quantity: float
    journal_avg_price: float | None
    ib_avg_price: float | None
    multiplier: float


@dataclass(frozen=True)
class Report:
    adopt: tuple[Adopt, ...] = ()
    fills: tuple[FillToInsert, ...] = ()
    commissions: tuple[tuple[str, float], ...] = ()
    finished: tuple[Finished, ...] = ()
    never_sent: tuple[str, ...] = ()
    lost: tuple[str, ...] = ()
    phantom: tuple[PositionFlag, ...] = ()
    unknown: tuple[PositionFlag, ...] = ()
    mismatch: tuple[PositionFlag, ...] = ()
    foreign: tuple[IBOrder, ...] = ()
    unmatched_legs: tuple[IBExecution, ...] = ()

    @property
    def blocked(self) -> frozenset[str]:
        """Local symbols new entries must not touch: quantity mismatches and unknown holdings."""
        return frozenset(f.local_symbol for f in self.mismatch + self.unknown)

    @property
    def clean(self) -> bool:
        """Journal and IB agree (orders to adopt and fills to insert are not disagreements)."""
        return not (self.never_sent or self.lost or self.phantom or self.unknown or self.mismatch or
                    self.unmatched_legs)

    def lines(self) -> list[str]:
        """The report in plain words, one line per finding."""
        out = [f"adopt {a.tag}: {a.order.action} {a.order.quantity:g} {a.order.local_symbol or a.order.symbol} "
               f"{a.order.order_type} working at IB (permId {a.order.perm_id})"
               + ("" if a.journal else "; not in the journal") for a in self.adopt]
        out += [f"fill {f.exec_id} of {f.tag}: {f.action} {f.quantity:g} {f.local_symbol or f.symbol} at "
                f"{price_text(f.price)}" + (f", replacing {f.replaces}" if f.replaces else "") for f in self.fills]
        out += [f"commission of {e}: {c:g}" for e, c in self.commissions]
        out += [f"{x.tag} {x.status} at IB with {x.filled:g} filled" for x in self.finished]
        out += [f"{t} never sent: IB knows no such order" for t in self.never_sent]
        out += [f"{t} lost: sent, but IB knows no such order (check once more)" for t in self.lost]
        out += [f"phantom {p.local_symbol}: the journal holds {p.journal_quantity:g}, IB none (closed externally)"
                for p in self.phantom]
        out += [f"unknown {p.local_symbol}: IB holds {p.ib_quantity:g}, the journal never traded it (left alone)"
                for p in self.unknown]
        out += [f"mismatch {p.local_symbol}: the journal holds {p.journal_quantity:g}, IB {p.ib_quantity:g} "
                "(new entries blocked)" for p in self.mismatch]
        out += [f"foreign order {o.order_ref or '(no ref)'} permId {o.perm_id}: {o.action} {o.quantity:g} "
                f"{o.local_symbol or o.symbol} (left alone)" for o in self.foreign]
        out += [f"leg execution {x.exec_id} of {x.order_ref} without its combo's BAG execution (not journaled)"
                for x in self.unmatched_legs]
        return out


def price_text(price: float) -> str:
    """A fill's price as IB reported it, to the hundredth of a cent at most (15842.75, not :g's
    15842.8)."""
    text = f"{price:.4f}".rstrip("0").rstrip(".")
    return text if text not in ("-0", "") else "0"


def combo_flags(report: Report, legs_of: dict[int, set]) -> tuple[set, dict[str, list[PositionFlag]]]:
    """IB holds an option combo as its legs. Of the journal's open combos (`legs_of`: a leg's
    conId -> the combos holding it): those IB holds none of the legs of (closed outside qtrade),
    and those some of whose legs disagree (with the flags), which are not traded on."""
    legs: dict[str, set] = {}
    for con, keys in legs_of.items():
        for key in keys:
            legs.setdefault(key, set()).add(con)
    phantom = {f.con_id: f for f in report.phantom}
    off = {**phantom, **{f.con_id: f for f in report.mismatch}}
    closed, broken = set(), {}
    for key, cons in legs.items():
        if cons <= set(phantom):
            closed.add(key)
        elif cons & set(off):
            broken[key] = [off[c] for c in sorted(cons & set(off))]
    return closed, broken


def confirmed_lost(first: Report, second: Report) -> tuple[str, ...]:
    """The orders lost in both of two reconciliations: mark them (rejected / expired)."""
    again = set(second.lost)
    return tuple(t for t in first.lost if t in again)


# ---- the fetch ---------------------------------------------------------------------------------
def fetch(ib: IB, *, all_clients: bool, since: dt.datetime | None, timeout: float) -> Snapshot:
    """Everything reconcile needs from IB, complete or not at all (raises Incomplete)."""
    if not ib.isConnected():
        raise Incomplete("not connected to IB")
    started = time.perf_counter()
    failed: list[str] = []
    try:
        exec_req = ib.client.getReqId()

        def on_error(req_id, code, text, contract=None):
            if req_id == exec_req and not (2100 <= code < 2200):
                failed.append(f"executions: IB error {code} {text}")

        ib.errorEvent += on_error
        try:
            exec_future = ib.wrapper.startReq(exec_req)
            ib.client.reqExecutions(exec_req, ExecutionFilter(time=_ib_time(since)))
            parts = {"positions": ib.reqPositionsAsync(),
                     "open orders": ib.reqAllOpenOrdersAsync() if all_clients else ib.reqOpenOrdersAsync(),
                     "completed orders": ib.reqCompletedOrdersAsync(False), "executions": exec_future}
            answers = ib.run(asyncio.gather(*(asyncio.wait_for(p, timeout) for p in parts.values()),
                                            return_exceptions=True))
        finally:
            ib.errorEvent -= on_error
    except ConnectionError as exc:
        raise Incomplete(f"disconnected during the fetch ({exc})") from None
    for name, answer in zip(parts, answers):
        if isinstance(answer, asyncio.TimeoutError):
            failed.append(f"{name}: no end marker within {timeout:g} s")
        elif isinstance(answer, BaseException):
            failed.append(f"{name}: {type(answer).__name__} {answer}")
    if not ib.isConnected():
        failed.append("disconnected during the fetch")
    if failed:
        raise Incomplete("; ".join(failed))
    positions, opened, completed, fills = answers
    reports = {f.execution.execId: f.commissionReport for f in ib.fills()}
    return Snapshot(tuple(holding(p) for p in positions), tuple(_order(t, done=False) for t in opened),
                    tuple(_order(t, done=True) for t in completed),
                    tuple(_execution(f, reports.get(f.execution.execId)) for f in fills),
                    all_clients, since, time.perf_counter() - started)


def _ib_time(since: dt.datetime | None) -> str:
    if since is None:
        return ""
    if since.tzinfo is None:
        since = since.replace(tzinfo=dt.timezone.utc)
    return since.astimezone(dt.timezone.utc).strftime("%Y%m%d-%H:%M:%S")


def _order(trade, done: bool) -> IBOrder:
    o, c, st = trade.order, trade.contract, trade.orderStatus
    filled = real(o.filledQuantity) if done else None
    if filled is None:
        filled = real(st.filled) or 0.0
    legs = tuple((leg.conId, int(leg.ratio), leg.action.lower()) for leg in c.comboLegs or ()) \
        if c.secType == "BAG" else ()
    return IBOrder(o.orderRef, o.permId or st.permId, o.orderId, o.clientId, c.conId, c.localSymbol, c.symbol,
                   c.secType, _SIDES.get(o.action, o.action.lower()), float(o.totalQuantity), filled, st.status,
                   o.orderType, real(o.lmtPrice) or None, real(o.auxPrice) or None, legs, o.ocaGroup or "")


def _execution(fill, report) -> IBExecution:
    ex, c = fill.execution, fill.contract
    qty, price = real(ex.shares), real(ex.price)
    if not qty or qty <= 0 or price is None or (price <= 0 and c.secType != "BAG"):
        raise Incomplete(f"execution {ex.execId} came with quantity {ex.shares!r} at price {ex.price!r}: "
                         "not a fill that can be journaled")
    commission = real(report.commission) if report is not None and report.execId == ex.execId else None
    return IBExecution(ex.execId, ex.orderRef, ex.permId, ex.orderId, ex.clientId, c.conId, c.localSymbol or c.symbol,
                       c.symbol, c.secType, _SIDES.get(ex.side, ex.side.lower()), qty, price, to_ns(ex.time),
                       real(c.multiplier) or 1.0, commission)


# ---- the comparison (pure) ---------------------------------------------------------------------
def effective(executions) -> dict[str, IBExecution]:
    """Each execution's newest version (a `.02` replaces its `.01`), by exec id."""
    newest: dict[str, IBExecution] = {}
    for x in executions:
        base, n = split_exec_id(x.exec_id)
        kept = newest.get(base)
        if kept is None or n > split_exec_id(kept.exec_id)[1]:
            newest[base] = x
    return {x.exec_id: x for x in newest.values()}


def reconcile(snapshot: Snapshot, journal: JournalView, prefix: str = PREFIX) -> Report:
    """What the journal lacks, what IB lacks, and what to flag; see the module's docstring."""
    journal_orders = {j.tag: j for j in journal.orders}
    ib_orders = snapshot.open_orders + snapshot.completed_orders
    executions = effective(snapshot.executions)
    mine = [x for x in executions.values() if x.order_ref.startswith(prefix)]

    fills, commissions, unmatched, executed = _fills(mine, ib_orders, journal, journal_orders)
    adopt, finished, never_sent, lost = [], [], [], []
    for j in journal.orders:
        working = _match(snapshot.open_orders, j)
        if working is not None:
            adopt.append(Adopt(j.tag, working, j))
            continue
        done = _match(snapshot.completed_orders, j)
        filled = executed.get(j.tag, 0.0)
        if done is not None:
            status = "filled" if done.filled >= j.quantity - EPS else _TERMINAL.get(done.status, "cancelled")
            finished.append(Finished(j.tag, status, max(done.filled, filled), done))
        elif filled >= j.quantity - EPS:
            finished.append(Finished(j.tag, "filled", filled, None))
        elif j.status == "created" and filled <= EPS:
            never_sent.append(j.tag)
        else:
            lost.append(j.tag)
    for o in snapshot.open_orders:
        if o.order_ref.startswith(prefix) and o.order_ref not in journal_orders:
            adopt.append(Adopt(o.order_ref, o, None))
    foreign = tuple(o for o in snapshot.open_orders if not o.order_ref.startswith(prefix))
    phantom, unknown, mismatch = _positions(snapshot, journal, fills, unmatched)
    return Report(tuple(adopt), tuple(fills), tuple(commissions), tuple(finished), tuple(never_sent), tuple(lost),
                  phantom, unknown, mismatch, foreign, tuple(unmatched))


def _match(orders: tuple[IBOrder, ...], j: JournalOrder) -> IBOrder | None:
    if j.perm_id:
        found = next((o for o in orders if o.perm_id == j.perm_id), None)
        if found is not None:
            return found
    return next((o for o in orders if o.order_ref == j.tag), None)


def _fills(mine: list[IBExecution], ib_orders, journal: JournalView,
           journal_orders: dict[str, JournalOrder]):
    """The fills to insert, the commission updates, the unmatched combo legs and the executed
    quantity per tag (BAG level for combos)."""
    by_order: dict[object, list[IBExecution]] = {}
    for x in mine:
        by_order.setdefault(x.perm_id or ("ref", x.order_ref), []).append(x)
    journaled: dict[str, str] = {}     # base -> the newest version the journal holds
    for exec_id in journal.exec_ids:
        base, n = split_exec_id(exec_id)
        if base not in journaled or n > split_exec_id(journaled[base])[1]:
            journaled[base] = exec_id
    fills, commissions, unmatched = [], [], []
    executed: dict[str, float] = {}
    for execs in by_order.values():
        execs = sorted(execs, key=lambda x: (x.time, x.exec_id))
        tag = execs[0].order_ref
        j = journal_orders.get(tag)
        bags = [x for x in execs if x.sec_type == "BAG"]
        perm = execs[0].perm_id
        order = next((o for o in ib_orders if (o.perm_id and o.perm_id == perm) or o.order_ref == tag), None)
        combo = bool(bags) or (order is not None and order.sec_type == "BAG") or (j is not None and (j.combo or
                                                                                                   bool(j.legs)))
        legs = [x for x in execs if x.sec_type != "BAG"] if combo else []
        if combo and not bags:
            unmatched.extend(legs)
            continue
        main = bags if combo else execs
        groups = group_legs([(x.exec_id, x.quantity) for x in main], [(x.con_id, x.exec_id, x.quantity) for x in legs],
                            _ratios(order, j, main, legs)) if combo else {}
        by_id = {x.exec_id: x for x in legs}
        executed[tag] = executed.get(tag, 0.0) + sum(x.quantity for x in main)
        for x in main:
            members = tuple(by_id[e] for e in groups.get(x.exec_id) or ()) if combo else ()
            commission = _combo_commission(x, members, groups.get(x.exec_id)) if combo else x.commission
            base, n = split_exec_id(x.exec_id)
            latest = journaled.get(base)
            if latest is not None and split_exec_id(latest)[1] >= n:
                if commission is not None and latest == x.exec_id and journal.commissions.get(x.exec_id) != commission:
                    commissions.append((x.exec_id, commission))
                continue             # journaled already (or a newer version of it is)
            replaces = latest or ""
            symbol = j.symbol if j is not None else (order.symbol if combo and order is not None else x.symbol)
            fills.append(FillToInsert(x.exec_id, tag, symbol, x.local_symbol, x.con_id, x.action, x.quantity, x.price,
                                      x.time, x.multiplier, commission, x.order_id, x.perm_id, replaces, members))
    return fills, commissions, unmatched, executed


def _ratios(order: IBOrder | None, j: JournalOrder | None, bags, legs) -> dict[int, float]:
    """A combo's leg ratios: IB's order, else the journal's, else the legs' quantities per combo."""
    if order is not None and order.legs:
        return {con: float(r) for con, r, _ in order.legs}
    if j is not None and j.legs:
        return {con: float(r) for con, r in j.legs}
    combos = sum(x.quantity for x in bags)
    per: dict[int, float] = {}
    for x in legs:
        per[x.con_id] = per.get(x.con_id, 0.0) + x.quantity
    return {con: q / combos for con, q in per.items()} if combos else {}


def _combo_commission(bag: IBExecution, members: tuple[IBExecution, ...], group) -> float | None:
    if group is None or any(m.commission is None for m in members):
        return None
    return round(sum(m.commission for m in members) + (bag.commission or 0.0), 10)


def _positions(snapshot: Snapshot, journal: JournalView, fills: list[FillToInsert], unmatched: list[IBExecution]):
    # IB nets one contract's positions in an account: the journal's positions in a contract (each
    # owner's, with positions_per_symbol) are compared by their sum, and one flag says so
    held: dict[int, JournalPosition] = {}
    for p in journal.positions:
        same = held.get(p.con_id)
        if same is None:
            held[p.con_id] = p
            continue
        total = same.quantity + p.quantity
        size = abs(same.quantity) + abs(p.quantity)
        avg = (same.avg_price * abs(same.quantity) + p.avg_price * abs(p.quantity)) / size if size else same.avg_price
        held[p.con_id] = JournalPosition(p.con_id, same.local_symbol or p.local_symbol, same.symbol, total, avg,
                                         same.multiplier)
    expected = {con: p.quantity for con, p in held.items()}
    touched = set(journal.traded) | set(held) | {x.con_id for x in unmatched}   # our orders traded them
    every = {x.exec_id: x for x in snapshot.executions}
    names: dict[int, tuple[str, str, float]] = {}

    def add(x, sign: float = 1.0) -> None:
        expected[x.con_id] = expected.get(x.con_id, 0.0) + sign * (x.quantity if x.action == "buy" else -x.quantity)
        touched.add(x.con_id)
        names.setdefault(x.con_id, (x.local_symbol, x.symbol, x.multiplier))

    for f in fills:
        parts = f.legs if f.legs else (f,)
        for x in parts:
            add(x)
        if f.replaces:       # the journal holds the older version: only the difference is new
            old = every.get(f.replaces)
            for x in ((old,) if old is not None and not f.legs else parts):
                add(x, -1.0)
    at_ib = {p.con_id: p for p in snapshot.positions if abs(p.quantity) > EPS}
    phantom, unknown, mismatch = [], [], []
    for con in sorted(set(expected) | set(at_ib)):
        jq = expected.get(con, 0.0)
        ib = at_ib.get(con)
        iq = ib.quantity if ib is not None else 0.0
        if abs(jq - iq) <= EPS:
            continue
        mine = held.get(con)
        local, symbol, mult = (ib.local_symbol, ib.symbol, ib.multiplier) if ib else \
            (mine.local_symbol, mine.symbol, mine.multiplier) if mine else names[con]
        flag = PositionFlag(con, local, symbol, jq, iq, mine.avg_price if mine else None,
                            ib.avg_price if ib else None, mult)
        if ib is None:
            phantom.append(flag)
        elif abs(jq) <= EPS and con not in touched:
            unknown.append(flag)
        else:
            mismatch.append(flag)
    return tuple(phantom), tuple(unknown), tuple(mismatch)
