"""The IB account: positions with IB's multiplier rules, account values in the base currency,
the account id and whether it is a paper account.

Positions. IB's avgCost of a future or an option includes the multiplier (NQ bought at
25,066.3625 shows avgCost 501,327.25 with multiplier 20); a position's per-unit average price is
avgCost / multiplier, and its P&L is (last - average) x quantity x multiplier (`unrealized_pnl`).
Positions are keyed by local symbol (NQZ5, not NQ), and by conId in `positions_by_con_id`.

"Positions not known" is never "flat": until one reqPositions of this connection has ended with
its positionEnd inside the timeout, `positions()` raises PositionsUnknown (and emits a BrokerError
saying so) instead of answering; it retries `attempts` times first. Once known, IB pushes every
change and ib_async keeps the list current; a disconnect makes them unknown again.

Account values come from ib_async's account updates (started at connect), else from one
account-summary subscription, in the base currency (a `BASE` row where IB sends one).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable

from ib_async import IB

from .. import events as E
from .orders import LOCAL, real

PAPER_PREFIXES = ("DU", "DF")        # IB's paper trading accounts (individual, and an advisor's)
_NEEDED = ("NetLiquidation", "TotalCashValue", "AvailableFunds", "InitMarginReq")


class PositionsUnknown(Exception):
    """IB did not finish sending the positions in time: they are not known yet (never 'flat')."""


class AccountUnknown(Exception):
    """IB has not said which account, or not sent the account values asked for."""


@dataclass(frozen=True)
class Holding:
    """One IB position with everything IB said about its contract."""

    account: str
    con_id: int
    local_symbol: str
    symbol: str
    sec_type: str
    quantity: float                  # signed
    avg_cost: float                  # IB's: per unit x multiplier
    multiplier: float

    @property
    def avg_price(self) -> float:
        return self.avg_cost / self.multiplier

    def position(self) -> E.BrokerPosition:
        return E.BrokerPosition(self.local_symbol, self.quantity, self.avg_price, self.multiplier)


def unrealized_pnl(position: E.BrokerPosition, last: float) -> float:
    """(last - average price) x quantity x multiplier."""
    return (last - position.avg_price) * position.quantity * position.multiplier


def holding(p) -> Holding:
    """An ib_async Position as a Holding (a blank multiplier is 1: stocks)."""
    c = p.contract
    mult = real(c.multiplier) or 1.0
    return Holding(p.account, c.conId, c.localSymbol or c.symbol, c.symbol, c.secType, float(p.position),
                   float(p.avgCost), mult)


def base_values(rows) -> dict[str, float]:
    """Numeric account values in the base currency: a tag's BASE row if IB sent one, else its row
    in the currency NetLiquidation comes in (IB sends NetLiquidation in the base currency only)."""
    base = next((r.currency for r in rows if r.tag == "NetLiquidation" and r.currency not in ("", "BASE")), "")
    out: dict[str, float] = {}
    for r in rows:
        x = real(r.value)
        if x is not None and r.currency == base:
            out[r.tag] = x
    for r in rows:
        x = real(r.value)
        if x is not None and r.currency == "BASE":
            out[r.tag] = x
    return out


class Account:
    def __init__(self, ib: IB, on_event: Callable[[object], None], clock: Callable[[], int] = time.time_ns,
                 timeout: float = 5.0, account: str = ""):
        self._ib = ib
        self._emit = on_event
        self._clock = clock
        self.timeout = timeout
        self._account = account
        self._known = False          # a reqPositions of this connection ended in time
        self._summary = False        # the account-summary subscription is running
        self.positions_seconds: float | None = None   # how long the last complete positions request took
        self._handlers = ((ib.disconnectedEvent, self._on_disconnected),)
        for event, handler in self._handlers:
            event += handler

    def close(self) -> None:
        for event, handler in self._handlers:
            event -= handler

    # ---- who ---------------------------------------------------------------------------------
    @property
    def account_id(self) -> str:
        """The account traded: the one given, else IB's only managed account."""
        if self._account:
            return self._account
        accounts = self._ib.managedAccounts() if self._ib.isConnected() else []
        if len(accounts) != 1:
            raise AccountUnknown("IB manages no account" if not accounts else
                                 f"IB manages {len(accounts)} accounts ({', '.join(accounts)}): say which one")
        return accounts[0]

    @property
    def is_paper(self) -> bool:
        """A paper trading account (DU..., DF...): the live guard refuses --live on one."""
        return self.account_id.startswith(PAPER_PREFIXES)

    # ---- positions ---------------------------------------------------------------------------
    def refresh_positions(self, timeout: float | None = None) -> bool:
        """Ask IB for every position; True once the answer ended with positionEnd in time."""
        wait = self.timeout if timeout is None else timeout
        started = time.perf_counter()
        try:
            self._ib.run(asyncio.wait_for(self._ib.reqPositionsAsync(), wait))
        except (asyncio.TimeoutError, ConnectionError):
            return False
        self.positions_seconds = time.perf_counter() - started
        self._known = True
        return True

    def holdings(self, timeout: float | None = None, attempts: int = 1, backoff: float = 0.5) -> list[Holding]:
        """Every non-zero position of the account; raises PositionsUnknown when IB has not sent
        them completely after `attempts` requests (each within `timeout`, `backoff` s apart)."""
        for attempt in range(max(attempts, 1)):
            if self._known or self.refresh_positions(timeout):
                break
            if attempt + 1 < attempts:
                self._ib.sleep(backoff)
        else:
            wait = self.timeout if timeout is None else timeout
            why = (f"positions not known yet: IB did not finish sending them within {wait:g} s "
                   f"({attempts} attempt{'s' if attempts != 1 else ''})")
            self._emit(E.BrokerError(None, LOCAL, why, self._clock()))
            raise PositionsUnknown(why)
        account = self.account_id
        return [h for h in (holding(p) for p in self._ib.positions(account)) if h.quantity]

    def positions(self, timeout: float | None = None, attempts: int = 1,
                  backoff: float = 0.5) -> dict[str, E.BrokerPosition]:
        """Non-zero positions keyed by local symbol (BrokerPosition.symbol is the local symbol too);
        avg_price per unit. Raises PositionsUnknown (see holdings)."""
        return {h.local_symbol: h.position() for h in self.holdings(timeout, attempts, backoff)}

    def positions_by_con_id(self, timeout: float | None = None, attempts: int = 1,
                            backoff: float = 0.5) -> dict[int, E.BrokerPosition]:
        return {h.con_id: h.position() for h in self.holdings(timeout, attempts, backoff)}

    # ---- values ------------------------------------------------------------------------------
    def summary(self, timeout: float | None = None) -> dict[str, float]:
        """Every numeric account value in the base currency, by IB's tag."""
        account = self.account_id
        values = base_values(self._ib.accountValues(account))
        if all(tag in values for tag in _NEEDED):
            return values
        if not self._summary:
            wait = self.timeout if timeout is None else timeout
            try:
                self._ib.run(asyncio.wait_for(self._ib.reqAccountSummaryAsync(), wait))
            except (asyncio.TimeoutError, ConnectionError):
                pass
            else:
                self._summary = True
        values.update(base_values([v for v in self._ib.wrapper.acctSummary.values() if v.account == account]))
        return values

    def account_values(self, timeout: float | None = None) -> E.AccountValues:
        """Cash (TotalCashValue), equity (NetLiquidation), available funds and the initial margin
        in use (InitMarginReq), in the base currency; raises AccountUnknown if IB did not send them."""
        values = self.summary(timeout)
        missing = [tag for tag in _NEEDED if tag not in values]
        if missing:
            why = f"account values not known yet: IB has not sent {', '.join(missing)}"
            self._emit(E.BrokerError(None, LOCAL, why, self._clock()))
            raise AccountUnknown(why)
        return E.AccountValues(values["TotalCashValue"], values["NetLiquidation"], values["AvailableFunds"],
                               values["InitMarginReq"])

    def _on_disconnected(self) -> None:
        self._known = False          # ib_async cleared them; the next connection asks again
        self._summary = False
