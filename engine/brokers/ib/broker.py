"""IBBroker: the IB broker's parts composed behind the kernel's Broker protocol, and the live
loop's source of bars and time (runtime/live.LiveSource).

One ib_async IB, one event list. The kernel reads orders' events (statuses, executions,
commissions, order errors) and the connection's (lost, restored); advisories that are not about
an order (a stale line, delayed data, a farm blip, the fallback client id) are alerts the run
journals and prints, never reasons for the kernel to stop trading. Entries are gated: nothing is
sent unless the connection is READY (reconciled), the symbol's quote is usable now (not stale,
not unavailable), and reconciliation found no disagreement on its contract.

Lines take turns within the budget: an entry on a symbol without a line asks for one when it is
about to be sent (a line idle for the TTL, or of lower priority, gives way) and waits briefly for
its first quote; the lines of the run's open positions are held at position priority, never
evicted, and go back to pick priority when the position closes.

A position is closed in the contract it is held in, and a futures position is rolled when the
roll rule moves the front month past its contract (roll_to, asked by the kernel at each bar
close): the kernel sends the close in the old contract (NQZ3) and, once it is filled, the open
in the new front month (NQH4), two orders rather than a calendar spread (BAG), so each leg is
filled, journaled and reconciled as any other order. No entry opens a second contract of the
same root while the old one is held. A bar stream follows the front month: when the roll rule
moves it, the stream is cancelled and asked for again in the new contract, whose bars continue
the run's series (raw, not back-adjusted, as a backtest's stitched series).

Time is the venue's: IB's current time (reqCurrentTime), followed between answers at the rate
it has been seen to move (1 at IB; an accelerated simulator's speed), and never behind the
newest completed bar.
"""

from __future__ import annotations

import functools
import time as _time
from typing import Callable

import pandas as pd

from .. import events as E
from . import reconcile as R
from .account import Account, AccountUnknown, PositionsUnknown
from .chains import IBChains
from .connection import Connection, ConnectError, IBConfig, State
from .contracts import ContractError, Contracts
from .history import History
from .marketdata import LineBudget, MarketData, Priority, ranks_from
from .orders import Orders

_PRIORITY = {"position": Priority.POSITION, "watchlist": Priority.WATCHLIST, "top_pick": Priority.TOP_PICK,
             "pick": Priority.PICK, "other": Priority.OTHER}


class VenueClock:
    """The venue's time (ns): its last reqCurrentTime answer moved on by wall time times the rate
    seen between answers (IB: 1; a simulator at --speed 60: 60)."""

    def __init__(self, ask: Callable[[], int], monotonic: Callable[[], float] = _time.monotonic,
                 resync_every: float = 1.0):
        self.ask = ask
        self.monotonic = monotonic
        self.resync_every = resync_every
        self._first: tuple[float, int] | None = None
        self._last: tuple[float, int] | None = None
        self.rate = 1.0
        self.floor = 0

    def sync(self) -> None:
        wall, venue = self.monotonic(), int(self.ask())
        if self._first is None:
            self._first = (wall, venue)
        elif wall - self._first[0] >= 0.5 and venue > self._first[1]:
            # seconds resolution: the longer the span, the better the rate
            self.rate = max((venue - self._first[1]) / 1e9 / (wall - self._first[0]), 1e-6)
        self._last = (wall, venue)

    def due(self) -> bool:
        return self._last is None or self.monotonic() - self._last[0] >= self.resync_every

    def now(self) -> int:
        if self._last is None:
            return self.floor
        wall, venue = self._last
        return max(int(venue + (self.monotonic() - wall) * self.rate * 1e9), self.floor)


class IBBroker:
    def __init__(self, connect, *, instruments: dict, read_only: bool = False, limits=None,
                 say: Callable[[str], None] = print, subscriptions: dict | None = None,
                 timezone: str = "America/New_York", roll_days: int = 0, stale_after: float | None = None,
                 allow_delayed: bool | None = None, monotonic: Callable[[], float] = _time.monotonic):
        from ib_async import IB

        self.settings = connect
        # (symbol, start ns, end ns) -> when that bar of the symbol is complete; None: at its end
        # (the run sets it: a daily bar at its calendar's session close)
        self.bar_done: Callable[[str, int, int], int] | None = None
        self.read_only = read_only
        self.say = say
        self.monotonic = monotonic
        self.timezone = timezone
        self._events: list = []
        self.alerts: list[E.BrokerError] = []
        self.on_alert: Callable[[E.BrokerError], None] | None = None     # else alerts wait in self.alerts
        self.ib = IB()
        # every message goes through ib_async's throttle: IB allows 50 a second, counted as they
        # arrive, so a burst sent at ib_async's default (45) that arrives bunched with the next
        # second's is over it (IB 100); 40 leaves that room
        self.ib.client.MaxRequests = 40
        config = IBConfig(host=connect.host, port=connect.port, client_id=connect.client_id,
                          account=connect.account or "", connect_timeout=connect.connect_timeout,
                          read_only=read_only, live=connect.live)
        self.conn = Connection(self.ib, config, self._sink, clock=monotonic)
        self.clock = VenueClock(self._server_ns, monotonic)
        self.contracts = Contracts(self.ib, instruments, roll_days=roll_days,
                                   today=lambda: pd.Timestamp(self.now(), tz="UTC").tz_convert(timezone).date())
        subs = subscriptions or {}
        from ...risk.limits import _seconds

        # data.subscriptions, with the schema's defaults (100 lines, 5 kept for positions, 10 minutes)
        self.budget = LineBudget(int(subs.get("max_lines", 100)), int(subs.get("reserve_for_positions", 5)),
                                 float(_seconds(subs.get("ttl")) if subs.get("ttl") else 600.0),
                                 ranks_from(subs.get("priorities")))
        review = float(_seconds(subs["check_every"])) if subs.get("check_every") else None
        stale = stale_after if stale_after is not None else (limits.stale_quote_age if limits is not None and
                                                             limits.stale_quote_age else 10.0)
        delayed = allow_delayed if allow_delayed is not None else connect.market_data != "live"
        self.md = MarketData(self.ib, self._resolve, self.budget, self._sink, clock=monotonic,
                             stale_after=max(float(stale), 0.5), allow_delayed=delayed, review_every=review)
        self.history_ = History(self.ib, self._sink, clock=monotonic, tz=timezone, now_ns=self.now)
        self.orders = Orders(self.ib, self._resolve, self._resolve_option, self._sink, clock=self.now,
                             read_only=read_only)
        self.account_ = Account(self.ib, self._sink, clock=self.now, account=connect.account or "")
        self.chains = IBChains(self.ib, free_lines=lambda: max(self.budget.max_lines - len(self.budget.held())
                                                                  - self.chains.lines(), 0))
        from .scanner import MarketScanner

        self.scanner = MarketScanner(self.ib, self.contracts.resolve, self.conn.sleep, monotonic=monotonic)
        self._streams: dict[str, object] = {}
        self._stream_of: dict[str, tuple] = {}      # symbol -> (the contract streamed, bar, session)
        self.held_symbols: Callable[[], object] = tuple   # the run's open positions' symbols (the run sets it)
        # a symbol's line class when it holds no position (the run sets it: its watchlist, or its scanner's say)
        self.priority_of: Callable[[str], str] = lambda symbol: "pick"
        self.first_quote_wait = 2.0                 # wall seconds an entry waits for a new line's first quote
        self._held_in: dict[str, object] = {}       # symbol -> the contract (Resolved) its open position is in
        self._opening: dict[str, object] = {}       # ref of an opening order -> the contract it was sent in
        self._line_said: set[str] = set()
        self.placed: list[E.Order] = []              # every order sent, in order
        self._blocked: dict[str, str] = {}         # local symbol -> why reconciliation blocks entries
        self._reconciled: R.Report | None = None
        self.fetch_seconds: list[float] = []
        self.conn.on_data_lost(self.md.resubscribe_all)
        self.conn.on_data_lost(self.history_.resubscribe)
        self.conn.on_reconnected(self.orders.rebind)

    # ---- connection -------------------------------------------------------------------------
    def connect(self) -> None:
        """Connect (ConnectError: one line for the user), learn the venue's time."""
        self.conn.connect()
        self.clock.sync()

    def close(self) -> None:
        if self.ib.isConnected():
            self.chains.release()
        for stream in list(self._streams.values()):
            try:
                self.history_.cancel(stream)
            except Exception:       # closing: a request IB has already dropped is nothing to report
                pass
        self.conn.close()

    def on_reconnected(self, fn: Callable[[], None]) -> None:
        self.conn.on_reconnected(fn)

    @property
    def state(self) -> str:
        return self.conn.state.value

    @property
    def client_id(self) -> int:
        return int(self.conn.client_id or 0)

    @property
    def account_id(self) -> str:
        return self.account_.account_id

    @property
    def is_paper(self) -> bool:
        return self.account_.is_paper

    def _server_ns(self) -> int:
        t = self.ib.reqCurrentTime()
        return int(pd.Timestamp(t).tz_convert("UTC").value) if t is not None else self.clock.floor

    def now(self) -> int:
        return self.clock.now()

    def pump(self, seconds: float) -> None:
        """IB's messages for up to `seconds`, then the parts' checks (the connection, stale lines,
        streams, orders whose state ib_async may have falsified), and the venue's time kept."""
        self.conn.sleep(seconds)
        self.conn.check()
        if self.conn.state in (State.READY, State.RECONCILING):
            self._hold_lines()      # before the review: a line in use is never taken for an idle one
            self.md.check()
            self.history_.check()
            if self.conn.state == State.READY:
                self.orders.settle()
            if self.clock.due():
                try:
                    self.clock.sync()
                except (ConnectionError, OSError):
                    pass      # the connection's own check says what happened

    # ---- the event stream -------------------------------------------------------------------
    def _sink(self, ev) -> None:
        if isinstance(ev, E.BrokerError) and ev.ref is None:
            if self.on_alert is not None:       # said as it comes (the warm-up, before the loop takes alerts)
                self.on_alert(ev)
            else:
                self.alerts.append(ev)
            return
        if isinstance(ev, E.Execution) and ev.ref in self._opening:
            self._held_in[ev.symbol] = self._opening[ev.ref]      # before the kernel places its exits
        self._events.append(ev)

    def events(self) -> list:
        out, self._events = self._events, []
        return out

    def take_alerts(self) -> list[E.BrokerError]:
        out, self.alerts = self.alerts, []
        return out

    # ---- contracts ----------------------------------------------------------------------------
    def _resolve(self, symbol: str):
        return self.contracts.resolve(symbol)

    def _resolve_option(self, underlying: str, expiry: str, strike: float, right: str):
        c = self.chains.contract(underlying, expiry, strike, right)
        if c is not None:
            from .types import Resolved

            return Resolved(c.localSymbol or underlying, int(c.conId), c.localSymbol, "OPT", c.exchange, c.currency,
                            float(c.multiplier or 100), c.tradingClass, 0.01, None, c)
        return self.contracts.option(underlying, expiry, strike, right[0].upper())

    def leg_contract(self, underlying: str, leg: dict) -> tuple[int, str, float]:
        """A journaled combo leg's contract at IB: (conId, local symbol, multiplier)."""
        r = self._resolve_option(underlying, str(leg["expiry"]), float(leg["strike"]), str(leg["right"]))
        return int(r.con_id), r.local_symbol, float(r.multiplier)

    def resolved(self, symbol: str):
        return self.contracts.resolve(symbol)

    # ---- market data --------------------------------------------------------------------------
    def subscribe(self, symbol: str, priority: str = "pick") -> str | None:
        return self.md.subscribe(symbol, _PRIORITY[priority])

    def quote(self, symbol: str) -> E.Quote | None:
        return self.md.quote(symbol)

    def gate(self, symbol: str) -> str | None:
        """Why an entry on `symbol` may not be sent now (None: it may). A symbol without a line
        asks for one now and waits up to first_quote_wait seconds for its first quote."""
        if self.conn.state != State.READY:
            return f"the IB connection is {self.conn.state.value}: no new entries until it is ready and reconciled"
        if symbol not in self.budget:
            why = self.md.subscribe(symbol, _PRIORITY[self.priority_of(symbol)])
            if why:
                return why
            deadline = self.monotonic() + self.first_quote_wait
            while (self.md.unavailable(symbol) or "").startswith("waiting for the first quote") and \
                    self.monotonic() < deadline:
                self.conn.sleep(0.05)
        # what holds until something changes (the contract, the roll) is said before what a next
        # quote may clear (a crossed or stale market)
        try:
            front = self.contracts.resolve(symbol)
        except ContractError as exc:
            return str(exc)
        held = self._held_in.get(symbol)
        if held is not None and held.con_id != front.con_id and symbol in set(self.held_symbols()):
            return (f"{symbol}: the position is held in {held.local_symbol}, and the front month is now "
                    f"{front.local_symbol}: no entry opens a second contract; the position's exits close it in "
                    f"{held.local_symbol}")
        blocked = self._blocked.get(front.local_symbol) or self._blocked.get(symbol)
        if blocked:
            return blocked
        why = self.md.unavailable(symbol)
        return f"{symbol}: {why}" if why else None

    def hold_contract(self, symbol: str, con_id: int) -> str:
        """A position restored from the journal is held in contract `con_id`: its exits go there.
        Returns its local symbol."""
        held = self.contracts.by_con_id(symbol, con_id)
        self._held_in[symbol] = held
        return held.local_symbol

    def contract_for(self, symbol: str, ref: str | None = None, intent: str | None = None) -> tuple[int, str]:
        """(conId, local symbol) of the contract order `ref` was sent in; for an order not sent
        yet, the one it will go to: a close to its position's contract, an opening order to the
        symbol's contract now."""
        sent = self.orders.contract_of(ref) if ref else None
        if sent is not None and sent.conId:
            return int(sent.conId), sent.localSymbol
        held = self._held_in.get(symbol) if intent == "close" or intent is None else None
        r = held if held is not None else self.contracts.resolve(symbol)
        return int(r.con_id), r.local_symbol

    def roll_to(self, symbol: str) -> tuple[str, str] | None:
        """(the contract held, the contract it is rolled into now) by local symbol, for `symbol`'s
        futures position: the front month, when the roll rule has moved it past the contract held;
        None when no roll is due (not a future, flat, or held in the front month or a later one)."""
        held = self._held_in.get(symbol)
        if held is None or held.sec_type != "FUT" or held.last_trade_date is None \
                or symbol not in set(self.held_symbols()):
            return None
        try:
            front = self.contracts.resolve(symbol)
        except ContractError:
            return None         # IB cannot say now: asked again at the next close
        if front.con_id == held.con_id or front.last_trade_date is None \
                or front.last_trade_date <= held.last_trade_date:
            return None
        return held.local_symbol, front.local_symbol

    def pin_front(self, symbol: str) -> None:
        """A dry run's opening order of `symbol` (filled in its wallet, never sent): the position is
        taken as held in the front month now, as the real run's fills would pin it, so the roll rule
        is asked about it as in a paper run."""
        try:
            resolved = self.contracts.resolve(symbol)
        except ContractError:
            return
        if resolved.sec_type == "FUT":
            self._held_in[symbol] = resolved

    def held_contract(self, symbol: str):
        """The contract (Resolved) `symbol`'s open position was opened in, None if none is known."""
        return self._held_in.get(symbol)

    def _hold_lines(self) -> None:
        """Open positions' lines at position priority (never evicted; one is asked for if the
        symbol has none); a line whose position closed goes back to pick priority. A line with an
        order working for its symbol is in use (its fill makes a position before the run has
        booked it), so the TTL does not free it."""
        held = set(self.held_symbols())
        lines = self.budget.held()
        now = self.md.clock()
        for order in self.orders.open_orders():
            if order.symbol in lines:
                self.budget.touch(order.symbol, now)
        for symbol, priority in lines.items():
            if priority == Priority.POSITION and symbol not in held:
                self.md.subscribe(symbol, _PRIORITY[self.priority_of(symbol)])
        for symbol in sorted(held):
            if lines.get(symbol) == Priority.POSITION:
                continue
            why = self.md.subscribe(symbol, Priority.POSITION)
            if why and symbol not in self._line_said:
                self._line_said.add(symbol)
                self.alerts.append(E.BrokerError(None, 0, f"market data for the open position: {why}", self.now()))
            elif not why:
                self._line_said.discard(symbol)

    def budget_report(self, needed: int) -> str:
        return self.md.budget_report(needed)

    def lines_status(self) -> str:
        return f"lines {len(self.budget.held())}/{self.budget.max_lines}"

    def free_lines(self) -> int:
        return max(self.budget.max_lines - len(self.budget.held()), 0)

    # ---- bars ---------------------------------------------------------------------------------
    def history_frame(self, symbol: str, bar: str, bars: int, timezone: str, session: str = "regular") -> pd.DataFrame:
        """The last `bars` completed bars of `symbol` as a frame indexed as the loader indexes a
        file of that bar size."""
        from ...runtime.ibrun import ib_bar_size, ib_duration

        resolved = self.contracts.resolve(symbol)
        got = self.history_.bars(resolved, ib_duration(bar, bars), ib_bar_size(bar), "TRADES",
                                 use_rth=session == "regular")
        now = self.now()
        got = [b for b in got if b.end <= now][-bars:]
        daily = got and got[0].end - got[0].start >= 86_400 * 10**9
        index = pd.DatetimeIndex([pd.Timestamp(b.start, tz="UTC").tz_convert(timezone) for b in got], name="time")
        if daily:
            index = index.normalize()
        if len(got):
            self.clock.floor = max(self.clock.floor, got[-1].end)
        return pd.DataFrame({"open": [b.open for b in got], "high": [b.high for b in got],
                             "low": [b.low for b in got], "close": [b.close for b in got],
                             "volume": [b.volume for b in got]}, index=index, dtype=float)

    def stream(self, symbol: str, bar: str, session: str = "regular", since: int | None = None) -> None:
        """`symbol`'s completed bars as they come. `since` (ns): the stream's first answer reaches
        back to then (a stream started again after a gap), else a day."""
        from ...runtime.ibrun import ib_bar_size

        if symbol in self._streams:
            return
        from ...market.bars import bar_seconds
        from .history import duration_covering

        # a short window (the warm-up came from history, always 3 days or more): never the warm-up's
        # own request, which IB's pacing would make wait out its 15 s rule
        # (daily bars: a week, which holds the last session however long the weekend or holiday
        # before it: "2 D" on a Monday morning held only the weekend, and IB answered with no bars)
        duration = "1 D" if bar_seconds(bar) < 86400 else "1 W"
        if since is not None and bar_seconds(bar) < 86400:
            duration = duration_covering((self.now() - since) / 1e9 + 2 * bar_seconds(bar), bar_seconds(bar))
        resolved = self.contracts.resolve(symbol)
        stream = self._streams[symbol] = self.history_.stream(resolved, ib_bar_size(bar), duration,
                                                              use_rth=session == "regular")
        if self.bar_done is not None:
            stream.done_at = functools.partial(self.bar_done, symbol)
        self._stream_of[symbol] = (resolved, bar, session)

    def _follow_front(self, symbol: str) -> None:
        """A futures stream moves to the front month when the roll rule moves it (the contract
        resolved today is not the one streamed): the old request is cancelled, the new one asked."""
        streamed = self._stream_of.get(symbol)
        if streamed is None or streamed[0].sec_type != "FUT":
            return
        try:
            front = self.contracts.resolve(symbol)
        except ContractError:
            return
        if front.con_id == streamed[0].con_id:
            return
        old = self._streams.pop(symbol)
        self.history_.cancel(old)
        self.alerts.append(E.BrokerError(None, 0, f"{symbol}: the front month is now {front.local_symbol} (it was "
                                                  f"{streamed[0].local_symbol}): its bars come from "
                                                  f"{front.local_symbol} from here", self.now()))
        self.stream(symbol, streamed[1], streamed[2])
        self._streams[symbol].delivered_through = old.delivered_through    # bars after the last one handed out

    def unstream(self, symbol: str) -> bool:
        """Stop `symbol`'s bar stream (a scanner candidate IB no longer lists); False: none ran."""
        stream = self._streams.pop(symbol, None)
        if stream is None:
            return False
        self.history_.cancel(stream)
        return True

    def streaming(self) -> list[str]:
        return sorted(self._streams)

    def release(self, symbol: str) -> None:
        """Give up `symbol`'s market-data line now (not waiting for the TTL)."""
        self.md.unsubscribe(symbol)

    # ---- IB's market scanner ------------------------------------------------------------------
    def scan(self, source):
        """IB's scanner list now for a scanner's source (brokers/ib/scanner.py): the candidates
        resolved through the instrument map, the rows dropped with their reasons."""
        return self.scanner.scan(source)

    def completed(self, symbol: str) -> list:
        from ...runtime.live import Bar

        stream = self._streams.get(symbol)
        if stream is None:
            return []
        out = []
        for b in self.history_.completed(stream):
            out.append(Bar(int(b.start), float(b.open), float(b.high), float(b.low), float(b.close),
                           float(b.volume) if b.volume == b.volume else 0.0))
            # the venue's time is at least the moment the bar was complete (a daily bar's session
            # close, not the midnight it ends at)
            self.clock.floor = max(self.clock.floor, stream.done_at(int(b.start), int(b.end)))
        self._follow_front(symbol)
        return out

    def chain_fetch(self, symbol: str, spot: float, expiries: list, when: pd.Timestamp):
        resolved = self.contracts.resolve(symbol)
        return self.chains.chain(resolved.contract, spot, expiries, when)

    # ---- reconciliation -----------------------------------------------------------------------
    def reconcile(self, state, prefix: str, *, attempts: int = 5, timeout: float = 3.0) -> R.Report:
        """A complete fetch (retried with a longer timeout each time: an incomplete answer is never
        read as flat), the comparison with the journal, and the orders bound again."""
        last: Exception | None = None
        for attempt in range(attempts):
            try:
                snapshot = R.fetch(self.ib, all_clients=self.conn.client_id_changed, since=None,
                                   timeout=timeout * (attempt + 1))
                break
            except R.Incomplete as exc:
                last = exc
                self.say(f"reconcile: the fetch was incomplete ({exc}); trying again")
                self.conn.sleep(0.5 * (attempt + 1))
        else:
            raise ReconcileFailed(f"reconciliation could not complete a fetch of IB's state after {attempts} "
                                  f"tries ({last}): nothing is sent until it can")
        self.fetch_seconds.append(snapshot.seconds)
        self.orders.rebind()
        # order ids already used by this client: its open orders and executions at IB, and the
        # journal's (IB's completed orders carry no order id)
        mine = [x.order_id for x in snapshot.open_orders + snapshot.executions if x.client_id == self.client_id]
        self.orders.keep_ids_ahead(mine + [getattr(state, "max_order_id", 0)])
        report = R.reconcile(snapshot, state.view(self.leg_contract), prefix)
        self._blocked = {f.local_symbol: f"{f.local_symbol}: the journal holds {f.journal_quantity:g}, IB "
                         f"{f.ib_quantity:g}: entries blocked until they agree" for f in report.mismatch}
        _, broken = R.combo_flags(report, state.legs_of)
        for key, flags in broken.items():
            underlying = key.split(" ", 1)[0]
            self._blocked[underlying] = (f"{key}: IB's legs disagree with the journal's ("
                                         + ", ".join(f"{f.local_symbol} {f.journal_quantity:g} against IB's "
                                                     f"{f.ib_quantity:g}" for f in flags)
                                         + f"): no new entries on {underlying} until they agree")
        self._blocked.update({f.local_symbol: f"{f.local_symbol}: IB holds {f.ib_quantity:g} this strategy never "
                              "traded: left alone, no entries on it" for f in report.unknown})
        self.orders.refuse_refs([a.tag for a in report.adopt] + [x.tag for x in report.finished]
                                + [x.order_ref for x in snapshot.open_orders + snapshot.completed_orders
                                   + snapshot.executions])      # every ref IB holds: none is sent again
        self._reconciled = report
        return report

    def highest_seq(self, prefix: str) -> int:
        """The highest <seq> of the refs `<prefix><seq>` IB holds (its open and completed orders
        and executions, as reconcile fetched them; 0: none): a run on another journal continues
        after them rather than repeat one."""
        return self.orders.highest_seq(prefix)

    def ready(self) -> None:
        self.conn.mark_ready()

    def broker_ids(self, ref: str) -> tuple[int, int]:
        """IB's (orderId, permId) of an order (KeyError: not one of this session's)."""
        return self.orders.broker_ids(ref)

    def adopt(self, order: E.Order, perm_id: int = 0) -> bool:
        return self.orders.adopt(order, perm_id)

    def figures(self) -> dict:
        out = {"reconnects": self.conn.reconnects}
        if self.conn.last_reconnect_seconds is not None:
            out["last_reconnect_seconds"] = round(self.conn.last_reconnect_seconds, 4)
        if self.fetch_seconds:
            out["reconcile_fetch_seconds"] = round(self.fetch_seconds[0], 4)
        out["venue_rate"] = round(self.clock.rate, 2)
        if self.scanner.seconds:
            import numpy as np

            out["ib_scanner_requests"] = self.scanner.requests
            out["ib_scanner_ms_median"] = round(1000 * float(np.median(self.scanner.seconds)), 3)
            out["ib_scanner_ms_max"] = round(1000 * float(np.max(self.scanner.seconds)), 3)
        return out

    # ---- the Broker protocol ------------------------------------------------------------------
    def place(self, order: E.Order) -> str:
        """Send `order`. A close goes to the contract its position is held in; an opening order
        to the symbol's contract now (the front month for a futures root), remembered so that
        its fills pin the position to it."""
        self.placed.append(order)
        resolved = None
        if not order.legs:
            if order.intent == "close":
                resolved = self._held_in.get(order.symbol)
            else:
                try:
                    resolved = self.contracts.resolve(order.symbol)
                except ContractError:
                    resolved = None          # Orders rejects it, saying why
                if resolved is not None:
                    self._opening[order.ref] = resolved
        return self.orders.place(order, resolved)

    def modify(self, ref: str, *, quantity=None, limit=None, stop=None) -> None:
        self.orders.modify(ref, quantity=quantity, limit=limit, stop=stop)

    def cancel(self, ref: str) -> None:
        self.orders.cancel(ref)

    def what_if(self, order: E.Order) -> E.Margin | None:
        return self.orders.what_if(order)

    def positions(self) -> dict[str, E.BrokerPosition]:
        return self.account_.positions()

    def open_orders(self) -> list[E.Order]:
        return self.orders.open_orders()

    def executions(self) -> list[E.Execution]:
        return self.orders.executions()

    def account(self) -> E.AccountValues | None:
        """IB's account values; None when IB does not answer in time (the kernel then sizes from
        its own ledger, which started from IB's net liquidation)."""
        try:
            return self.account_.account_values()
        except AccountUnknown:
            return None

    def instrument(self, symbol: str):
        return None

    def history(self, symbol: str, bars: int):
        return None

    def option_chain(self, underlying: str, at: int):
        return None

    # the simulated venue's clock calls: IB's market moves by itself
    def open_bar(self, symbol: str, k: int) -> None:
        pass

    def close_bar(self, symbol: str, k: int) -> None:
        pass

    def fills_at_open(self, symbol: str, k: int) -> bool:
        return False

    def at(self, time: int) -> None:
        pass

    def mark_combo(self, key: str, price: float) -> None:
        pass

    def settle(self, key: str, debit: float, when: int) -> None:
        pass      # IB settles an expiring combo itself; the kernel books it


class ReconcileFailed(Exception):
    """Reconciliation could not get a complete picture of IB's state: nothing may be sent."""


__all__ = ["IBBroker", "VenueClock", "ReconcileFailed", "ConnectError", "AccountUnknown", "PositionsUnknown"]
