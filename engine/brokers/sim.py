"""SimBroker: a simulated venue, fed bars by the clock, speaking the Broker protocol.

The clock calls `open_bar(symbol, k)` when bar k of a symbol opens and `close_bar(symbol, k)`
when it closes. In between, the venue holds working orders and fills them by the matching rules
(brokers.matching): market orders at the open, limits and stops when the bar's range touches
them (stops before limits in one bar: the cautious order), market- and limit-on-close at the
close. It emits what an IB broker would: OrderStatus (submitted, partially filled, filled,
cancelled, rejected, expired), Execution with a unique execution id, CommissionReport.
It keeps the account the way IB does (see portfolio.ledger): stock purchases spend cash, futures
move only commissions and realised P&L. `partial` fills at most that share of an order's
quantity in one bar, to rehearse partial fills.

A futures root whose bars are per contract (SymbolBars.held: a stitched front month) fills each
order on the bars of the contract it names (Order.contract): a position held in ESZ3 is marked
and closed at ESZ3's prices (the kernel's roll closes it there and opens ESH4 at ESH4's), and an
order does not fill in a bar in which its contract did not trade. `settle_future` books an expiring contract's
position at its last price.

Combos (an Order with legs, IB's BAG) are priced by `combo_quote(order)`, the legs' quotes in
the newest chain known; a combo limit fills when it is placed or modified if the spread model
says it is marketable (matching.combo_marketable, `fill_fraction`), a combo market order at the
natural price (prices as orders.combos states them: an action and a limit in its direction).
A combo's execution is dated by the quotes it was priced on (ComboQuote.age).
Cash settlement at expiry is `settle`.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, replace

import numpy as np

from ..market.series import SymbolBars
from . import events as E
from ..portfolio.marks import LastClose
from ..orders.combos import debit_of, held_margin, order_price
from .matching import FillModel, combo_fill_price, match_bar

OPEN, CLOSE = "open", "close"


class _Working:
    """A working order at the venue (slotted, compared by identity)."""

    __slots__ = ("order", "broker_id", "active_from", "session", "filled", "value", "triggered", "live", "age")

    def __init__(self, order: E.Order, broker_id: int, active_from: int):
        self.order = order
        self.broker_id = broker_id
        self.active_from = active_from    # the first bar it may fill in
        self.session = None               # a day order's session (set at its first bar)
        self.filled = 0.0
        self.value = 0.0                  # sum of price x quantity of its executions
        self.triggered = False            # a stop-limit whose stop was touched
        self.live = True                  # still working (False once filled, cancelled or expired)
        # a combo priced on an end-of-day chain: how long before the venue's time its quotes are
        # (ComboQuote.age), by which all it says of the order is dated, as its fills are
        self.age = 0


def _stops_first(w: _Working) -> bool:
    return w.order.order_type not in ("stop", "stop_limit")


@dataclass
class _Holding:
    quantity: float = 0.0
    avg_price: float = 0.0
    contract: str = ""      # the futures contract it is held in, where the bars are per contract


class SimBroker:
    """A venue over known bars (a backtest's history, or bars replayed one at a time)."""

    def __init__(self, bars: dict[str, SymbolBars], fills: FillModel, cash: float, account: str = "margin",
                 partial: float | None = None, combo_quote=None, fill_fraction: float = 0.5, session: str = ""):
        self.combo_quote = combo_quote
        self.fill_fraction = fill_fraction
        self._combos: dict[str, float] = {}    # combo key -> multiplier, for the account's marks
        self._combo_marks: dict[str, float] = {}
        self._combo_margin: dict[str, float] = {}   # combo key -> initial margin per unit held
        self._last_close = marks = LastClose(bars)
        self._value: dict[str, float] = {}          # per holding: its value in equity at the instant _worth_at
        self._used: dict[str, float] = {}           # per holding: the margin it holds then
        self._special: set[str] = set()             # holdings that are not stock (futures, combos)
        self._worth_at: int | None = None
        self._changed: set[str] = set()             # holdings changed since the account was read at _worth_at
        # stock (the symbols that are not futures) is valued by timeline once the run has a clock:
        # each timeline's quantities held, by slot (0 where none is held), brought up to date when
        # the account is read, and at an instant its holdings' values and margins in one pass over
        # its row of closes
        self._stock_at = {s: (marks.line(s), marks.slot(s)) for s, b in bars.items() if not b.margined}
        self._stock_qty = [np.zeros(len(m)) for m in marks.members()]
        self._stock_mult = [np.array([float(bars[s].multiplier) for s in m]) for m in marks.members()]
        self._stock_held = [0] * len(self._stock_qty)     # per timeline: how many of its symbols are held
        self._stock_in: set[str] = set()                  # the stock held
        self._stock_changed: set[str] = set()             # stock whose holding changed since the account was read
        self._line_terms: dict[int, tuple[dict, dict]] = {}   # per timeline, at _worth_at: slot -> value, margin
        self.bars = bars
        self.fills = fills
        self.cash = float(cash)
        self.account_type = account
        self.partial = partial
        self._k: dict[str, int] = {s: -1 for s in bars}      # the bar each symbol is in (or last closed)
        self._phase: dict[str, str] = {s: CLOSE for s in bars}
        self._working: dict[str, _Working] = {}
        self._by_symbol: dict[str, list[_Working]] = {s: [] for s in bars}   # in the order placed
        self._holdings: dict[str, _Holding] = {}
        self._executions: list[E.Execution] = []
        self._events: list[E.Event] = []
        self._next_id = 1
        self._exec_seq = 0
        self.placed: list[E.Order] = []      # every order this venue was sent, in order
        self.clock: int | None = None        # the run's time (ns), set by its clock; else the bars' times
        # execution ids are unique across sessions, as IB's are: a journal keeps every run's fills
        self.session = session or uuid.uuid4().hex[:8]
        self._exec_prefix = f"sim.{self.session}."      # execution ids: sim.<session>.<order id>.<seq>.01

    def add_symbol(self, symbol: str, bars: SymbolBars) -> None:
        """A symbol to trade from now on (a live run's new scanner candidate): its bars, and the
        timelines the account is valued on built again with it (the holdings' quantities kept)."""
        self.bars[symbol] = bars
        self._k.setdefault(symbol, -1)
        self._phase.setdefault(symbol, CLOSE)
        self._by_symbol.setdefault(symbol, [])
        marks = self._last_close = LastClose(self.bars)
        self._stock_at = {s: (marks.line(s), marks.slot(s)) for s, b in self.bars.items() if not b.margined}
        self._stock_qty = [np.zeros(len(m)) for m in marks.members()]
        self._stock_mult = [np.array([float(self.bars[s].multiplier) for s in m]) for m in marks.members()]
        self._stock_held = [0] * len(self._stock_qty)
        self._stock_in = set()
        self._stock_changed = {s for s in self._holdings if s in self._stock_at}
        self._line_terms = {}
        self._worth_at = None

    # ---- the clock ---------------------------------------------------------------------------
    def open_bar(self, symbol: str, k: int) -> None:
        self._k[symbol] = k
        self._phase[symbol] = OPEN
        working = self._by_symbol[symbol]
        if working:
            for w in list(working):
                o = w.order
                if w.live and o.order_type == "market" and w.active_from <= k and not o.legs:
                    self._match(w, k)

    def fills_at_open(self, symbol: str, k: int) -> bool:
        """Does a working order of this symbol fill at bar k's open (a market order)?"""
        for w in self._by_symbol[symbol]:
            if w.order.order_type == "market" and not w.order.legs and w.active_from <= k:
                return True
        return False

    def works(self, symbol: str) -> bool:
        """Has this symbol orders working (that a bar's trading may fill or expire)?"""
        return bool(self._by_symbol[symbol])

    def close_bar(self, symbol: str, k: int) -> None:
        """Resting orders against bar k's range (stops first), on-close orders at its close, then
        day orders whose session ends with this bar expire."""
        working = self._by_symbol[symbol]
        if not working:
            self._phase[symbol] = CLOSE
            return
        b = self.bars[symbol]
        due = [w for w in working if w.active_from <= k and not w.order.legs]
        if len(due) > 1:
            due.sort(key=_stops_first)
        for w in due:
            if w.live:
                self._match(w, k)
        self._phase[symbol] = CLOSE
        if not working:
            return
        last = k + 1 >= len(b)
        for w in list(working):
            if w.active_from > k or w.order.legs:
                continue
            tif = w.order.tif
            if tif in ("ioc", "fok", "opg") or (tif == "day" and not last and b.session[k + 1] != w.session):
                self._finish(w, E.EXPIRED, int(b.end[k]), "not filled before it expired")

    # ---- protocol: reads ---------------------------------------------------------------------
    def instrument(self, symbol: str) -> SymbolBars | None:
        return self.bars.get(symbol)

    def subscribe(self, symbol: str) -> None:
        if symbol not in self.bars:
            self._events.append(E.BrokerError(None, 200, f"No security definition has been found for {symbol}"))

    def quote(self, symbol: str) -> E.Quote | None:
        k = self._k.get(symbol, -1)
        if k < 0:
            return None
        b = self.bars[symbol]
        price, t = (b.open.item(k), b.start.item(k)) if self._phase[symbol] == OPEN else \
            (b.close.item(k), b.end.item(k))
        return E.Quote(symbol, price, price, price, t)

    def history(self, symbol: str, bars: int) -> SymbolBars | None:
        b = self.bars.get(symbol)
        if b is None:
            return None
        k = self._k[symbol] + (1 if self._phase[symbol] == CLOSE else 0)
        lo = max(0, k - bars)
        return SymbolBars(symbol, b.start[lo:k], b.end[lo:k], b.open[lo:k], b.high[lo:k], b.low[lo:k],
                          b.close[lo:k], b.session[lo:k], b.multiplier, b.tick_size, b.margined, b.margin,
                          b.contracts)

    def option_chain(self, underlying: str, at: int):
        return None   # combos are priced by the options desk from chain snapshots or synthesised chains

    def what_if(self, order: E.Order) -> E.Margin | None:
        b = self.bars.get(order.symbol)
        q = self.quote(order.symbol)
        if b is None or q is None:
            return None
        return E.Margin(self._margin(b, order.quantity, q.last), self.fills.fee(b, order.quantity, q.last))

    def positions(self) -> dict[str, E.BrokerPosition]:
        return {s: E.BrokerPosition(s, h.quantity, h.avg_price,
                                    self._combos[s] if s in self._combos else self.bars[s].multiplier)
                for s, h in self._holdings.items() if h.quantity}

    def open_orders(self) -> list[E.Order]:
        return [w.order for w in self._working.values()]

    def executions(self) -> list[E.Execution]:
        return list(self._executions)

    def mark(self, symbol: str) -> float:
        """A symbol's price in the account: its last close by the run's time (a bar's price is
        known when it closes, so marks hold still within an instant and do not wait for the venue
        to be told of bars a waiting position skips); without a clock, the bar it is at."""
        h = self._holdings.get(symbol)
        held = h.contract if h is not None else ""
        if self.clock is not None:
            if not held:
                return self._last_close.price(symbol, self.clock)
            k = self._last_close.bar(symbol, self.clock)       # the held contract's bars share the series' times
            b = self.bars[symbol].of(held)
            return float(b.close[k]) if k >= 0 else float(b.open[0])
        k = self._k[symbol]
        b = self.bars[symbol].of(held)
        if k < 0:
            return float(b.open[0])
        if self._phase[symbol] == OPEN and b.open[k] == b.open[k]:
            return float(b.open[k])
        return float(b.close[k] if self._phase[symbol] == CLOSE or k == 0 else b.close[k - 1])

    def account(self) -> E.AccountValues:
        """Cash, equity (net liquidation), available funds and the margin in use, with every
        holding at its mark: stock at its value, futures at their unrealised P&L, a combo at its
        last mark (the kernel's mid, else its fill price) with the margin it was opened with.

        Equity is cash plus the exactly rounded sum of the holdings' values (math.fsum: the same
        whatever their order or grouping, as the ledger's). Marks hold still within an instant, so
        the values found at one are kept and only what changes is valued again: a holding that is
        not stock by itself, stock with the rest of its timeline."""
        if not self._holdings:
            return E.AccountValues(self.cash, self.cash, self.cash, 0.0)
        if self._stock_changed:
            self._stock_quantities()
        at = self.clock
        if at is None or at != self._worth_at:
            self._revalue(at)
        elif self._changed:
            self._appraise(self._changed)
            self._changed.clear()
        values, used = list(self._value.values()), list(self._used.values())
        if at is not None and self._stock_in:
            terms = self._line_terms
            for line, held in enumerate(self._stock_held):
                if held:
                    v, u = terms.get(line) or self._value_line(line, at)
                    values += v.values()
                    used += u.values()
        value = math.fsum(values)
        margin = math.fsum(used)
        equity = self.cash + value
        whole = self.account_type == "cash" and not self._special   # stock only in a cash account: the cash
        return E.AccountValues(self.cash, equity, self.cash if whole else equity - margin, margin)

    def _revalue(self, at: int | None) -> None:
        """Every holding's value and margin at a new instant; with a clock, stock is left to its
        timelines (_value_line)."""
        self._value, self._used, self._special, self._worth_at = {}, {}, set(), at
        self._changed.clear()
        self._line_terms.clear()
        holdings = self._holdings
        if at is None:
            self._appraise(holdings)
        elif len(self._stock_in) < len(holdings):
            self._appraise([s for s in holdings if s not in self._stock_at])

    def _value_line(self, line: int, at: int) -> tuple[dict[int, float], dict[int, float]]:
        """The values in equity and the margins of the stock held on one timeline at `at`, with
        _appraise's float operations (price x quantity x multiplier; |quantity| x price x
        multiplier, half of it in a margin account), by slot: one element per holding."""
        quantity = self._stock_qty[line]
        held = quantity != 0.0
        price = self._last_close.closes_at(line, at)[held]
        quantity, mult = quantity[held], self._stock_mult[line][held]
        used = np.abs(quantity) * price * mult
        slots = np.flatnonzero(held).tolist()
        terms = self._line_terms[line] = (dict(zip(slots, (price * quantity * mult).tolist())),
                                          dict(zip(slots, (used if self.account_type == "cash" else
                                                           0.5 * used).tolist())))
        return terms

    def _restate(self, line: int, slot: int, quantity: float) -> None:
        """One holding of a timeline changed at the instant its terms were found: its own terms
        again (the same float operations as _value_line's), the others' as they are."""
        values, used = self._line_terms[line]
        if quantity == 0.0:
            values.pop(slot, None)
            used.pop(slot, None)
            return
        price = self._last_close.closes_at(line, self._worth_at).item(slot)
        mult = self._stock_mult[line].item(slot)
        values[slot] = price * quantity * mult
        u = abs(quantity) * price * mult
        used[slot] = u if self.account_type == "cash" else 0.5 * u

    def _appraise(self, symbols) -> None:
        """Holdings' values in equity and the margins they hold, at their marks at this instant, a
        combo at its last mark; a holding gone is dropped."""
        value, used, special, holdings, combos, bars = \
            self._value, self._used, self._special, self._holdings, self._combos, self.bars
        for s in symbols:
            h = holdings.get(s)
            if h is None:
                value.pop(s, None)
                used.pop(s, None)
                special.discard(s)
            elif s in combos:
                mark = self._combo_marks.get(s, h.avg_price)
                value[s] = mark * h.quantity * combos[s]
                used[s] = abs(h.quantity) * self._combo_margin.get(s, 0.0)
                special.add(s)
            else:
                b = bars[s]
                price = self.mark(s)
                if b.margined:
                    value[s] = (price - h.avg_price) * h.quantity * b.multiplier
                    special.add(s)
                else:
                    value[s] = price * h.quantity * b.multiplier
                used[s] = self._margin(b, h.quantity, price)

    def _holding_changed(self, symbol: str) -> None:
        """A holding opened, changed or closed: valued again when the account is next read at this
        instant (the others' values still hold), or with all of them at the next instant; stock
        with its timeline, once its quantities are brought up to date."""
        same_instant = self._worth_at is not None and self._worth_at == self.clock
        if symbol in self._stock_at:
            self._stock_changed.add(symbol)
        elif same_instant:
            self._changed.add(symbol)
        if not same_instant:
            self._worth_at = None

    def _stock_quantities(self) -> None:
        """The timelines' quantities of the stock whose holdings changed; their values at this
        instant are found again."""
        holdings, stock_in = self._holdings, self._stock_in
        for symbol in self._stock_changed:
            line, slot = self._stock_at[symbol]
            h = holdings.get(symbol)
            self._stock_qty[line][slot] = h.quantity if h is not None else 0.0
            if h is not None and symbol not in stock_in:
                stock_in.add(symbol)
                self._stock_held[line] += 1
            elif h is None and symbol in stock_in:
                stock_in.discard(symbol)
                self._stock_held[line] -= 1
            if line in self._line_terms and self._worth_at is not None and self._worth_at == self.clock:
                self._restate(line, slot, self._stock_qty[line].item(slot))
            else:
                self._line_terms.pop(line, None)
        self._stock_changed.clear()

    def events(self) -> list[E.Event]:
        out, self._events = self._events, []
        return out

    # ---- protocol: writes --------------------------------------------------------------------
    def place(self, order: E.Order) -> str:
        self.placed.append(order)
        if order.legs:
            return self._place_combo(order)
        symbol, ref, quantity = order.symbol, order.ref, order.quantity
        now = self.clock if self.clock is not None else self._now(symbol)
        if symbol not in self.bars or not (0 < quantity < math.inf) or ref in self._working:
            if symbol not in self.bars:
                why = (200, f"No security definition has been found for the request ({symbol})")
            elif not 0 < quantity < math.inf:
                why = (201, f"Order rejected - reason: the quantity {quantity:g} is not positive")
            else:
                why = (103, f"Duplicate order id: {ref} is working")
            self._events.append(E.BrokerError(ref, why[0], why[1], now))
            self._events.append(E.OrderStatus(ref, E.REJECTED, 0.0, quantity, 0.0, now, why[1]))
            return ref
        k = self._k[symbol]
        phase = self._phase[symbol]
        w = _Working(order, self._next_id, k if phase == OPEN else k + 1)
        self._next_id += 1
        self._working[ref] = w
        self._by_symbol[symbol].append(w)
        self._events.append(E.OrderStatus(ref, E.SUBMITTED, 0.0, quantity, 0.0, now, "", w.broker_id))
        if order.order_type == "market" and k >= 0 and (phase == OPEN or self.fills.fill_model == "close"):
            if phase == CLOSE:   # `fill: close`: a market order decided at a close fills at that close
                w.active_from = k
            self._match(w, k, at_close=phase == CLOSE)
        return order.ref

    def modify(self, ref: str, *, quantity: float | None = None, limit: float | None = None,
               stop: float | None = None) -> None:
        w = self._working.get(ref)
        if w is None:
            self._events.append(E.BrokerError(ref, 104, f"Cannot modify a filled order: {ref} is not working"))
            return
        changes = {k: v for k, v in (("quantity", quantity), ("limit", limit), ("stop", stop)) if v is not None}
        w.order = replace(w.order, **changes)
        now = self._now(self._key(w.order)) - w.age
        self._events.append(E.OrderStatus(ref, E.SUBMITTED if not w.filled else E.PARTIAL, w.filled,
                                          w.order.quantity - w.filled, self._avg(w), now, "modified", w.broker_id))
        if w.order.legs:
            self._match_combo(w)

    def cancel(self, ref: str) -> None:
        w = self._working.get(ref)
        if w is None:
            self._events.append(E.BrokerError(ref, 161, f"Cancel attempted when order is not in a cancellable "
                                                        f"state: {ref}"))
            return
        self._finish(w, E.CANCELLED, self._now(self._key(w.order)) - w.age, "cancelled, cancel confirmed")

    # ---- matching ----------------------------------------------------------------------------
    def _match(self, w: _Working, k: int, at_close: bool = False) -> None:
        o = w.order
        b = self.bars[o.symbol]
        if o.contract:
            b = b.of(o.contract)
            if not b.open[k] == b.open[k]:
                return      # its contract did not trade in this bar
        if w.session is None and o.tif == "day":
            w.session = b.session[k]
        if at_close:   # a market order at this bar's close
            price, when = self.fills.market_price(b, o.action, float(b.close[k])), int(b.end[k])
        else:
            m = match_bar(o.order_type, o.action == "buy", o.limit, o.stop, b.open.item(k), b.high.item(k),
                          b.low.item(k), b.close.item(k), self.fills.slippage, b.tick_size, w.triggered)
            price = m.price
            if price is None:
                if m.triggered:
                    # touched the stop but beyond the limit: a limit from the next bar
                    w.triggered, w.active_from = True, k + 1
                return
            when = b.end.item(k) if m.at_close else b.start.item(k)     # int(b.end[k]), without the numpy scalar
        qty = o.quantity - w.filled
        partial = self.partial
        if partial is not None and partial < 1.0:
            qty = min(qty, max(1.0, math.floor(o.quantity * partial)))
        self._execute(w, k, qty, price, when)

    # ---- combos ------------------------------------------------------------------------------
    def _place_combo(self, order: E.Order) -> str:
        under = order.underlying
        now = self._now(under)
        if under not in self.bars or self.combo_quote is None:
            why = f"No security definition has been found for the combo on {under}"
            self._events.append(E.BrokerError(order.ref, 200, why, now))
            self._events.append(E.OrderStatus(order.ref, E.REJECTED, 0.0, order.quantity, 0.0, now, why))
            return order.ref
        w = _Working(order, self._next_id, self._k[under])
        self._next_id += 1
        self._working[order.ref] = w
        self._by_symbol[under].append(w)
        quote = self.combo_quote(order)
        w.age = getattr(quote, "age", 0) or 0
        self._events.append(E.OrderStatus(order.ref, E.SUBMITTED, 0.0, order.quantity, 0.0, now - w.age, "",
                                          w.broker_id))
        self._match_combo(w, quote)
        return order.ref

    def _match_combo(self, w: _Working, quote=None) -> None:
        o = w.order
        quote = self.combo_quote(o) if quote is None else quote
        if isinstance(quote, str) or quote is None:
            return
        opening = o.intent == "open"
        if o.order_type == "market":
            price = order_price(quote.natural_debit(opening), o.action)
        else:
            price = combo_fill_price(o.limit, quote, self.fill_fraction, opening, o.action)
            if price is None:
                return
        under = o.underlying
        k = self._k[under]
        # dated by the quotes it was priced on (an end-of-day chain: that day's close, not the
        # midnight its daily bar ends at)
        self._execute(w, k, o.quantity - w.filled, price, self._now(under) - quote.age)

    def settle(self, key: str, debit: float, when: int) -> None:
        """Cash settlement of an expiring combo held under `key`: it closes at `debit` per unit,
        the net debit of closing it (positive: the holder pays, as a short condor in the money
        does; negative: the holder is paid, as a long one is)."""
        h = self._holdings.get(key)
        if h is None or not h.quantity:
            return
        mult = self._combos.get(key, 1.0)
        self.cash -= abs(h.quantity) * debit * mult
        del self._holdings[key]
        self._holding_changed(key)

    def settle_future(self, symbol: str, price: float, when: int) -> None:
        """An expiring futures contract's position booked at `price` (its last price): the P&L
        realised, no commission (the exchange's settlement, not a trade)."""
        h = self._holdings.get(symbol)
        if h is None or not h.quantity:
            return
        self.cash += (price - h.avg_price) * h.quantity * self.bars[symbol].multiplier
        del self._holdings[symbol]
        self._holding_changed(symbol)

    def _key(self, order: E.Order) -> str:
        return order.underlying if order.legs else order.symbol

    def _execute(self, w: _Working, k: int, qty: float, price: float, when: int) -> None:
        o = w.order
        if o.legs:
            self._execute_combo(w, k, qty, price, when)
            return
        symbol = o.symbol
        b = self.bars[symbol]
        mult = b.multiplier
        fee = self.fills.commission(qty, price, mult, b.contracts)
        seq = self._exec_seq = self._exec_seq + 1
        exec_id = f"{self._exec_prefix}{w.broker_id}.{seq}.01"
        signed = qty if o.action == "buy" else -qty
        holdings = self._holdings
        h = holdings.get(symbol)
        if h is None:
            h = holdings[symbol] = _Holding()
        held = h.quantity
        if not held:
            h.contract = o.contract
        if b.margined:
            self.cash -= fee
            if held and (held > 0) != (signed > 0):   # closing: realise P&L
                closed = min(abs(signed), abs(held))
                self.cash += (price - h.avg_price) * closed * (1 if held > 0 else -1) * mult
        else:
            self.cash = self.cash - fee - signed * price * mult
        new = held + signed
        if held == 0:
            h.avg_price = price       # opened: its price, to the bit (as the ledger books it)
        elif (held > 0) == (signed > 0):
            h.avg_price = (h.avg_price * abs(held) + price * qty) / abs(new)
        elif (new > 0) != (held > 0) and new:
            h.avg_price = price       # reversed through zero
        if abs(new) < 1e-12:          # flat: the holding goes (a new one is last in the account's order)
            del holdings[symbol]
        else:
            h.quantity = new
        self._holding_changed(symbol)
        self._report(w, k, qty, price, when, exec_id, fee)

    def _execute_combo(self, w: _Working, k: int, qty: float, price: float, when: int) -> None:
        o = w.order
        contracts = qty * sum(leg.ratio for leg in o.legs)
        fee = self.fills.commission(contracts, abs(price), o.multiplier, True)
        self._exec_seq += 1
        exec_id = f"{self._exec_prefix}{w.broker_id}.{self._exec_seq}.01"
        signed = qty if o.action == "buy" else -qty
        self.cash -= fee + signed * price * o.multiplier
        self._combos[o.symbol] = o.multiplier
        h = self._holdings.setdefault(o.symbol, _Holding())
        if not h.quantity:      # opened: the margin at the price it filled at, not at the mid it was priced at
            self._combo_margin[o.symbol] = held_margin(o.legs, o.multiplier, o.margin, -debit_of(price, o.action))
        new = h.quantity + signed
        h.avg_price = price if not h.quantity else h.avg_price
        if abs(new) < 1e-12:
            del self._holdings[o.symbol]
        else:
            h.quantity = new
        self._holding_changed(o.symbol)
        self._report(w, k, qty, price, when, exec_id, fee)

    def _report(self, w: _Working, k: int, qty: float, price: float, when: int, exec_id: str, fee: float) -> None:
        o = w.order
        ref = o.ref
        filled = w.filled = w.filled + qty
        value = w.value = w.value + qty * price
        ex = E.Execution(ref, exec_id, o.symbol, o.action, qty, price, when, w.broker_id, k, "", o.contract)
        self._executions.append(ex)
        events = self._events
        events.append(ex)
        events.append(E.CommissionReport(exec_id, fee))
        if o.quantity - filled > 1e-9:
            events.append(E.OrderStatus(ref, E.PARTIAL, filled, o.quantity - filled, value / filled, when, "",
                                        w.broker_id))
            return
        self._finish(w, E.FILLED, when, "")
        if o.oca:
            for other in list(self._by_symbol[self._key(o)]):
                if other.live and other.order.oca == o.oca:
                    self._finish(other, E.CANCELLED, when, f"one-cancels-all: {ref} filled")

    def _finish(self, w: _Working, status: str, when: int, reason: str) -> None:
        o = w.order
        w.live = False
        del self._working[o.ref]
        self._by_symbol[o.underlying if o.legs else o.symbol].remove(w)
        filled = w.filled
        self._events.append(E.OrderStatus(o.ref, status, filled, o.quantity - filled if status != E.FILLED else 0.0,
                                          w.value / filled if filled else 0.0, when, reason, w.broker_id))

    # ---- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _avg(w: _Working) -> float:
        return w.value / w.filled if w.filled else 0.0

    def at(self, time: int) -> None:
        """The clock's time: what the venue stamps on what happens between bars (a chase step)."""
        self.clock = time

    def hold(self, symbol: str, quantity: float, avg_price: float) -> None:
        """Start holding a position opened before this venue existed (a dry run's wallet starts
        with the account's positions, so their exits can be rehearsed)."""
        self._holdings[symbol] = _Holding(float(quantity), float(avg_price))
        self._holding_changed(symbol)

    def mark_combo(self, key: str, price: float) -> None:
        """A held combo's mid now, per unit, in the terms it was opened in (what its opening
        order's limit would be at mid: the debit of a bought combo, the credit of a sold one), so
        that it is worth price x signed quantity x multiplier, as stock is."""
        self._combo_marks[key] = price
        if key in self._holdings:
            self._holding_changed(key)

    def _now(self, symbol: str) -> int:
        if self.clock is not None:
            return self.clock
        b = self.bars.get(symbol)
        k = self._k.get(symbol, -1)
        if b is None or k < 0:
            return 0
        return int(b.start[k] if self._phase[symbol] == OPEN else b.end[k])

    def _margin(self, b: SymbolBars, quantity: float, price: float) -> float:
        if b.margined:
            return abs(quantity) * b.margin
        value = abs(quantity) * price * b.multiplier
        return value if self.account_type == "cash" else 0.5 * value
