"""DryRunBroker: every read from the inner broker, nothing transmitted.

Orders go to a simulated wallet instead: a SimBroker over the same bars, so they fill by the
same matching rules against the inner broker's market, positions open and close, exits fire,
and risk caps and `max_open_positions` hold exactly as in the run that would transmit them
(freqtrade's dry-run convention: a simulated wallet on real quotes). `would_send` lists every
order that the real run would have transmitted, in order.
"""

from __future__ import annotations

from . import events as E
from .sim import SimBroker


class DryRunBroker:
    def __init__(self, inner, wallet: SimBroker):
        self.inner = inner
        self.wallet = wallet
        self.would_send: list[E.Order] = []

    # the clock drives both: the inner venue's market moves on, the wallet matches on it
    def open_bar(self, symbol: str, k: int) -> None:
        self.inner.open_bar(symbol, k)
        self.wallet.open_bar(symbol, k)

    def fills_at_open(self, symbol: str, k: int) -> bool:
        return self.wallet.fills_at_open(symbol, k)

    def works(self, symbol: str) -> bool:
        return self.wallet.works(symbol)

    def close_bar(self, symbol: str, k: int) -> None:
        self.inner.close_bar(symbol, k)
        self.wallet.close_bar(symbol, k)

    def at(self, time: int) -> None:
        self.inner.at(time)
        self.wallet.at(time)

    def mark_combo(self, key: str, price: float) -> None:
        self.wallet.mark_combo(key, price)

    def settle(self, key: str, debit: float, when: int) -> None:
        self.wallet.settle(key, debit, when)

    def settle_future(self, symbol: str, price: float, when: int) -> None:
        self.wallet.settle_future(symbol, price, when)

    # reads of the market: the inner broker's
    def instrument(self, symbol: str):
        return self.inner.instrument(symbol)

    def subscribe(self, symbol: str) -> None:
        self.inner.subscribe(symbol)

    def quote(self, symbol: str):
        return self.inner.quote(symbol)

    def history(self, symbol: str, bars: int):
        return self.inner.history(symbol, bars)

    def option_chain(self, underlying: str, at: int):
        return self.inner.option_chain(underlying, at)

    def what_if(self, order: E.Order):
        return self.inner.what_if(order)

    # the account and its orders: the wallet's
    def positions(self):
        return self.wallet.positions()

    def open_orders(self):
        return self.wallet.open_orders()

    def executions(self):
        return self.wallet.executions()

    def account(self):
        return self.wallet.account()

    def events(self):
        # the connection's news and the errors not about an order (the wallet's orders are its own)
        inner = [ev for ev in self.inner.events() if isinstance(ev, (E.ConnectionLost, E.ConnectionRestored))
                 or (isinstance(ev, E.BrokerError) and ev.ref is None)]
        return inner + self.wallet.events()

    # writes: recorded, filled in the wallet, never transmitted
    def place(self, order: E.Order) -> str:
        self.would_send.append(order)
        pin = getattr(self.inner, "pin_front", None)
        if pin is not None and order.intent == "open" and not order.legs:
            pin(order.symbol)   # the contract the real run's order would open: where a futures roll starts from
        return self.wallet.place(order)

    def modify(self, ref: str, **changes) -> None:
        self.wallet.modify(ref, **changes)

    def cancel(self, ref: str) -> None:
        self.wallet.cancel(ref)
