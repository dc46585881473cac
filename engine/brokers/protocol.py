"""The Broker protocol: what the Runner needs of a venue, the simulator's or IB's.

One style, synchronous: the Runner calls the broker and drains its events with `events()` after
each step of its clock; an IB broker runs ib_async's loop inside those calls. Reads (instrument,
quote, history, positions, open orders, executions, account) answer from the venue; writes
(place, modify, cancel) return at once and report their outcome as events.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..market.series import SymbolBars
from .events import AccountValues, BrokerPosition, Event, Execution, Margin, Order, Quote


@runtime_checkable
class Broker(Protocol):
    def instrument(self, symbol: str) -> SymbolBars | None:
        """The resolved instrument (multiplier, tick size, margin, accounting), None if unknown."""

    def subscribe(self, symbol: str) -> None:
        """Start quotes for a symbol (a market-data line at IB)."""

    def quote(self, symbol: str) -> Quote | None:
        """The newest quote, None before the first one."""

    def history(self, symbol: str, bars: int) -> SymbolBars | None:
        """The last `bars` closed bars."""

    def option_chain(self, underlying: str, at: int):
        """The option chain of an underlying as of `at` (ns), None where there is none."""

    def what_if(self, order: Order) -> Margin | None:
        """The margin and commission an order would cost, None when the venue cannot say."""

    def place(self, order: Order) -> str:
        """Send an order; returns its ref. Acceptance, fills and rejection come as events."""

    def modify(self, ref: str, *, quantity: float | None = None, limit: float | None = None,
               stop: float | None = None) -> None:
        """Change a working order in place (the same order id at IB). A change the venue does not
        take comes back as ModifyRefused, with the order as the venue still holds it."""

    def cancel(self, ref: str) -> None:
        """Ask to cancel; the confirmation comes as an OrderStatus event."""

    def positions(self) -> dict[str, BrokerPosition]: ...

    def open_orders(self) -> list[Order]: ...

    def executions(self) -> list[Execution]: ...

    def account(self) -> AccountValues: ...

    def events(self) -> list[Event]:
        """Every event since the last call, in the order they happened."""
