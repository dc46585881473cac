"""Market data lines: a budget of IB's concurrent lines, and quotes that are never NaN as a price.

LineBudget (pure). IB allows a fixed number of concurrent market-data lines (100 by default);
one more is error 101 and that line is dead. The budget hands out lines by class: POSITION (never
evicted), WATCHLIST, TOP_PICK, PICK, each with its number (data.subscriptions.priorities, by
default 100 > 90 > 50 > 25), and OTHER below them all; a request that needs room evicts the weakest line
that is of lower priority or idle for longer than the TTL (ties: the longest idle, then the
symbol), and one that cannot be granted is refused with a reason. `reserved_for_positions` lines
are kept for open positions only. The budget's answer lists the evictions, which MarketData
cancels before it subscribes, so the line count never goes above the budget, not even for a
moment.

MarketData. `subscribe(symbol, priority)` asks the budget and requests the line;
`quote(symbol)` is an events.Quote or None, and None exactly when `unavailable(symbol)` gives the
reason no entry may be priced from it now. Rules for a usable quote: IB's UNSET, -1 and NaN are
never a price; a stock, future or option needs a two-sided market (a bid and an ask with size > 0,
not crossed): `last` is the last trade, or the midpoint when IB sent none; an index has no
bid/ask at IB, so its value (IB's last) is all three fields. A quote is usable only once a tick
has arrived since the line's latest request (ib_async keeps a re-requested ticker's old values).

`check()` is called often by the loop; it reviews the lines at every call, or every
`review_every` seconds (data.subscriptions.check_every):
  * TTL eviction of idle lines (a line is used when quote() reads it or subscribe() asks again);
  * silent staleness: connected, no outage, but no tick on a line for `stale_after` seconds ->
    stale (no quote) and the line is requested again, every `retry_every` seconds until ticks come
    back (an IB line that went quiet while the socket stayed up comes back this way). A quiet
    market answers the new request with its current quote and is usable again; a line still
    silent after a re-request is alerted (once, and once more when it recovers);
  * lines IB stopped with 10197 (a competing live session) are requested again every
    `retry_every` seconds, so they recover without a restart once the other session ends.
`resubscribe_all()` requests every budgeted line again (register it with
Connection.on_data_lost: 1101, 2104 after 2103, a new session).

IB's codes on a line: 354 (no live subscription) -> delayed data (reqMarketDataType 3, said in
an alert) where `allow_delayed`, else the symbol is unavailable with the reason; 10167 marks the
line delayed; 10168/10186 and 200 make the symbol unavailable; 10089/10090/10091 are advisories
(an alert once, quotes still used); 101 frees the budget's line and says the budget is larger
than IB's. 1100/2110 make every quote unavailable until 1101/1102; 2103 until 2104.

Every line request is paced (`pacing` requests a second; a re-request is a cancel and a request,
so the default 20 keeps under ib_async's 45 messages a second); IB's 100 slows it further.

Events (on_event): events.BrokerError with ref None and a plain one-line message "SYMBOL: what
happened; what qtrade does": code 10197 (once per episode), 354 (once per symbol, delayed or
refused), 10167 (delayed without a 354 before it), 10168/10186, 10089-10091 (once per symbol and
code), 101, 200, 100; code 0 for qtrade's own findings (a line went stale, a line or the 10197
episode recovered).
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable

from .. import events
from . import codes
from .types import Resolved

log = logging.getLogger("qtrade.ib.marketdata")
UNSET = 1.7976931348623157e308


# ============================================================================ the budget (pure)
class Priority(enum.IntEnum):
    OTHER = 0
    PICK = 1
    TOP_PICK = 2
    WATCHLIST = 3
    POSITION = 4


_NAMES = {Priority.OTHER: ("other", "others"), Priority.PICK: ("pick", "picks"),
          Priority.TOP_PICK: ("top pick", "top picks"), Priority.WATCHLIST: ("watched name", "watched names"),
          Priority.POSITION: ("position", "positions")}

# data.subscriptions.priorities: each class's number (the field notes' 100/90/50/25); a name in
# none of them (not held, not watched, not ranked by a scan) is below every class
CLASSES = {"positions": Priority.POSITION, "watchlist": Priority.WATCHLIST, "top_signals": Priority.TOP_PICK,
           "scanner": Priority.PICK}
DEFAULT_RANKS = {Priority.POSITION: 100, Priority.WATCHLIST: 90, Priority.TOP_PICK: 50, Priority.PICK: 25,
                 Priority.OTHER: -1}


def ranks_from(priorities: dict | None) -> dict[Priority, int]:
    """The budget's numbers from data.subscriptions.priorities (classes not given keep theirs)."""
    out = dict(DEFAULT_RANKS)
    for name, value in (priorities or {}).items():
        out[CLASSES[name]] = int(value)
    return out


@dataclass(frozen=True)
class Grant:
    granted: bool
    evict: tuple[str, ...] = ()   # lines to cancel first (for a refusal: the symbol's own line, if it lost it)
    reason: str = ""


@dataclass
class _Held:
    priority: Priority
    used: float


class LineBudget:
    def __init__(self, max_lines: int, reserved_for_positions: int = 0, ttl_seconds: float = 300.0,
                 ranks: dict | None = None):
        if max_lines < 1:
            raise ValueError(f"max_lines must be at least 1, not {max_lines}")
        if not 0 <= reserved_for_positions <= max_lines:
            raise ValueError(f"reserved_for_positions must be between 0 and max_lines ({max_lines}), "
                             f"not {reserved_for_positions}")
        if ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive, not {ttl_seconds}")
        self.max_lines = int(max_lines)
        self.reserved = int(reserved_for_positions)
        self.ttl = float(ttl_seconds)
        self.ranks = dict(DEFAULT_RANKS if ranks is None else {**DEFAULT_RANKS, **ranks})
        if any(self.ranks[Priority.POSITION] <= v for p, v in self.ranks.items() if p != Priority.POSITION):
            raise ValueError("open positions must have the highest line priority")
        self._held: dict[str, _Held] = {}

    def rank(self, priority: Priority) -> int:
        """A class's number: who keeps a line when lines run short (higher is kept)."""
        return self.ranks[Priority(priority)]

    # ---------------------------------------------------------------- reads
    def __contains__(self, symbol: str) -> bool:
        return symbol in self._held

    def __len__(self) -> int:
        return len(self._held)

    def held(self) -> dict[str, Priority]:
        return {s: h.priority for s, h in sorted(self._held.items())}

    def priority(self, symbol: str) -> Priority | None:
        h = self._held.get(symbol)
        return h.priority if h else None

    # ---------------------------------------------------------------- changes
    def request(self, symbol: str, priority: Priority, now: float) -> Grant:
        """A line for `symbol` at `priority` (asking again for a held line updates its priority and
        marks it used). Commits at once; the caller cancels `evict` before it subscribes."""
        p = Priority(priority)
        trial = {s: _Held(h.priority, h.used) for s, h in self._held.items()}
        new = symbol not in trial
        if new:
            trial[symbol] = _Held(p, now)
        else:
            trial[symbol].priority = p
            trial[symbol].used = max(trial[symbol].used, now)
        evict: list[str] = []
        while self._over(trial):
            victims = [s for s, h in trial.items()
                       if s != symbol and h.priority != Priority.POSITION
                       and (self.rank(h.priority) < self.rank(p) or now - h.used >= self.ttl)]
            if not victims:
                reason = self._why_full(trial, symbol)
                if new:
                    return Grant(False, (), reason)
                del self._held[symbol]  # a held line demoted past the room left: it gives its line up
                return Grant(False, (symbol,), reason)
            victim = min(victims, key=lambda s: (self.rank(trial[s].priority), trial[s].used, s))
            del trial[victim]
            evict.append(victim)
        self._held = trial
        return Grant(True, tuple(evict))

    def touch(self, symbol: str, now: float) -> None:
        h = self._held.get(symbol)
        if h is not None and now > h.used:
            h.used = now

    def release(self, symbol: str) -> bool:
        return self._held.pop(symbol, None) is not None

    def expire(self, now: float) -> list[str]:
        """Frees every line idle for the TTL or longer (never a position's); returns them."""
        gone = sorted(s for s, h in self._held.items()
                      if h.priority != Priority.POSITION and now - h.used >= self.ttl)
        for s in gone:
            del self._held[s]
        return gone

    # ---------------------------------------------------------------- the pre-run check
    def fits(self, positions: int, others: int) -> bool:
        return positions <= self.max_lines and positions + others <= self.max_lines and \
            others <= self.max_lines - self.reserved

    def report(self, needed: int, positions: int = 0) -> str:
        """One line for a pre-run check: 'needs 12 lines, budget 50 (5 reserved for positions)'."""
        head = f"needs {needed} line{'s' if needed != 1 else ''}, budget {self.max_lines}"
        if self.reserved:
            head += f" ({self.reserved} reserved for positions)"
        if positions > self.max_lines:
            return f"{head}: {positions} open positions need more lines than the budget has; raise max_lines"
        room = self.max_lines - self.reserved if positions <= self.reserved else self.max_lines - positions
        others = needed - positions
        if others > room:
            return (f"{head}: {others - room} more than fit at once; they take turns, an idle line is freed after "
                    f"{self.ttl:g} s")
        return head

    # ---------------------------------------------------------------- helpers
    def _over(self, held: dict[str, _Held]) -> bool:
        others = sum(1 for h in held.values() if h.priority != Priority.POSITION)
        return len(held) > self.max_lines or others > self.max_lines - self.reserved

    def _why_full(self, trial: dict[str, _Held], symbol: str) -> str:
        rest = {s: h for s, h in trial.items() if s != symbol}
        counts = Counter(h.priority for h in rest.values())
        summary = ", ".join(f"{n} {_NAMES[p][0] if n == 1 else _NAMES[p][1]}"
                            for p, n in sorted(counts.items(), key=lambda c: -self.rank(c[0])))
        if counts and set(counts) == {Priority.POSITION} and len(rest) >= self.max_lines:
            return f"all {self.max_lines} lines hold open positions"
        others = sum(n for p, n in counts.items() if p != Priority.POSITION)
        if len(rest) < self.max_lines and others >= self.max_lines - self.reserved:
            return (f"the {self.max_lines - self.reserved} lines not reserved for positions are held by lines of "
                    f"equal or higher priority ({summary}); an idle line is freed after {self.ttl:g} s")
        return (f"all {self.max_lines} lines are held by lines of equal or higher priority ({summary}); an idle "
                f"line is freed after {self.ttl:g} s")


# ============================================================================ quotes from a ticker (pure)
def _price(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and 0 < v < UNSET else None


def _size(x) -> bool:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return False
    return math.isfinite(v) and 0 < v < UNSET


def quote_from(symbol: str, sec_type: str, bid, bid_size, ask, ask_size, last, time_ns: int):
    """(events.Quote, "") for a usable quote, else (None, why not)."""
    last_p = _price(last)
    if sec_type == "IND":
        if last_p is None:
            return None, "no index value yet (IB sent none)"
        return events.Quote(symbol, last_p, last_p, last_p, time_ns), ""
    bid_p = _price(bid) if _size(bid_size) else None
    ask_p = _price(ask) if _size(ask_size) else None
    if bid_p is None and ask_p is None:
        return None, ("no market: IB sent no bid and no ask (price -1 or NaN, size 0)"
                      + ("" if last_p is not None else " and no last trade"))
    if bid_p is None or ask_p is None:
        side = "bid" if bid_p is None else "ask"
        return None, f"one-sided market: no {side} (IB sent price -1 or NaN, or size 0)"
    if bid_p > ask_p:
        return None, f"crossed market: bid {bid_p:g} above ask {ask_p:g}"
    return events.Quote(symbol, bid_p, ask_p, last_p if last_p is not None else (bid_p + ask_p) / 2, time_ns), ""


def _secs(x: float) -> str:
    return f"{x:.1f}" if x < 10 else f"{x:.0f}"


# ============================================================================ market data
@dataclass(frozen=True)
class LineInfo:
    symbol: str
    priority: Priority
    req_id: int
    con_id: int
    delayed: bool
    status: str          # "live", "delayed", or why no entry may be priced from it


class _Line:
    __slots__ = ("symbol", "resolved", "priority", "ticker", "req_id", "requested_at", "quiet_since", "last_tick",
                 "blocked", "at_ib", "silence_retry", "stale_noted", "delayed", "advised")

    def __init__(self, symbol: str, resolved: Resolved, priority: Priority, now: float):
        self.symbol = symbol
        self.resolved = resolved
        self.priority = priority
        self.ticker = None
        self.req_id = 0
        self.requested_at = now      # the latest (re)request
        self.quiet_since = now       # silence is counted from here: the first request, a tick, a resubscription
        self.last_tick = -math.inf
        self.blocked: tuple[int, str, float] | None = None   # (code, reason, since): IB stopped the line
        self.at_ib = False           # IB holds a line for req_id (not after 354/101/200 ...)
        self.silence_retry: float | None = None  # when it was requested again for being silent
        self.stale_noted: float | None = None    # when the stale alert was given
        self.delayed = False
        self.advised: set[int] = set()

    @property
    def fresh(self) -> bool:
        return self.last_tick >= self.requested_at


_LINE_CODES = frozenset({354, 10167, 10168, 10186, 10197, 10089, 10090, 10091, 101, 200, 300})
_SESSION_CODES = frozenset({1100, 1101, 1102, 2110, 2103, 2104, 100})


class MarketData:
    def __init__(self, ib, resolve: Callable[[str], Resolved], budget: LineBudget, on_event: Callable[[object], None],
                 clock: Callable[[], float] = time.monotonic, stale_after: float = 10.0, allow_delayed: bool = False,
                 pacing: float = 20.0, *, retry_every: float | None = None, generic_ticks: str = "",
                 wall: Callable[[], int] = time.time_ns, review_every: float | None = None):
        if stale_after <= 0 or pacing <= 0:
            raise ValueError("stale_after and pacing must be positive")
        if review_every is not None and review_every <= 0:
            raise ValueError("review_every must be positive")
        self.review_every = review_every      # data.subscriptions.check_every: None reviews at every check()
        self._reviewed = -math.inf
        self.ib = ib
        self.resolve = resolve
        self.budget = budget
        self.on_event = on_event
        self.clock = clock
        self.stale_after = float(stale_after)
        self.retry_every = float(retry_every if retry_every is not None else stale_after)
        self.allow_delayed = allow_delayed
        self.pacing = float(pacing)
        self.generic_ticks = generic_ticks
        self.wall = wall
        self._lines: dict[str, _Line] = {}
        self._refused: dict[str, tuple[int, str, bool]] = {}  # symbol -> (code, reason, sticky for the session)
        self._by_req: dict[int, str] = {}
        self._by_ticker: dict[int, _Line] = {}
        self._inbox: list[tuple[int, int, str]] = []
        self._sent: deque = deque()
        self._outage: tuple[int, str] | None = None   # 1100/2110
        self._farm: tuple[int, str] | None = None     # 2103
        self._disconnected = False
        self._delayed_mode = False
        self._said_delayed: set[str] = set()
        self._competing_since: float | None = None
        self._competing_recovered = False
        self._throttled_until = -math.inf
        self._throttle_said = -math.inf
        ib.pendingTickersEvent += self._on_tickers
        ib.errorEvent += self._on_error
        ib.disconnectedEvent += self._on_disconnected

    # ------------------------------------------------------------------ callbacks: record only
    def _on_tickers(self, tickers) -> None:
        now = self.clock()
        for t in tickers:
            line = self._by_ticker.get(id(t))
            if line is not None and line.ticker is t:
                line.last_tick = now
                line.quiet_since = now

    def _on_error(self, req_id, code, text, contract) -> None:
        if code in _LINE_CODES and req_id in self._by_req or code in _SESSION_CODES:
            self._inbox.append((int(req_id), int(code), str(text)))

    def _on_disconnected(self) -> None:
        self._disconnected = True

    # ------------------------------------------------------------------ the strategy's side
    def subscribe(self, symbol: str, priority: Priority = Priority.PICK) -> str | None:
        """None when the symbol has a line (now or already); else why not, in one line."""
        from .contracts import ContractError

        self._drain()
        refused = self._refused.get(symbol)
        if refused is not None:
            if refused[2]:
                return f"{symbol}: {refused[1]}"
            del self._refused[symbol]
        now = self.clock()
        line = self._lines.get(symbol)
        if line is None:
            try:
                resolved = self.resolve(symbol)
            except ContractError as exc:
                reason = str(exc).removeprefix(f"{symbol}: ")
                if not exc.transient:
                    self._refused[symbol] = (200, reason, True)
                    self._say(200, f"{symbol}: {reason}")
                return f"{symbol}: {reason}"
        grant = self.budget.request(symbol, priority, now)
        for gone in grant.evict:
            self._drop(gone)
        if not grant.granted:
            return f"{symbol}: no market data line: {grant.reason}"
        if line is not None:
            line.priority = Priority(priority)
            return None
        line = _Line(symbol, resolved, Priority(priority), now)
        self._lines[symbol] = line
        self._request(line)
        return None

    def unsubscribe(self, symbol: str) -> None:
        self.budget.release(symbol)
        self._drop(symbol)
        self._refused.pop(symbol, None)

    def quote(self, symbol: str) -> events.Quote | None:
        """The newest usable quote, None when there is none (see unavailable())."""
        self._drain()
        if symbol in self._lines:
            self.budget.touch(symbol, self.clock())
        q, _ = self._assess(symbol)
        return q

    def unavailable(self, symbol: str) -> str | None:
        """Why no entry may be priced from `symbol`'s quote now, None when it may."""
        self._drain()
        _, why = self._assess(symbol)
        return why

    def is_delayed(self, symbol: str) -> bool:
        line = self._lines.get(symbol)
        if line is None:
            return False
        return line.delayed or getattr(line.ticker, "marketDataType", 1) in (3, 4)

    def lines(self) -> list[LineInfo]:
        self._drain()
        out = []
        for s, line in sorted(self._lines.items()):
            why = self._assess(s)[1]
            status = why or ("delayed" if self.is_delayed(s) else "live")
            out.append(LineInfo(s, line.priority, line.req_id, line.resolved.con_id, self.is_delayed(s), status))
        return out

    def budget_report(self, needed, positions: int = 0) -> str:
        """The pre-run check: `needed` is a count or the symbols a run will quote."""
        n = needed if isinstance(needed, int) else len(set(needed))
        return self.budget.report(n, positions)

    def status(self) -> str:
        self._drain()
        held = len(self._lines)
        parts = [f"{held} of {self.budget.max_lines} market data lines"]
        delayed = [s for s in sorted(self._lines) if self.is_delayed(s)]
        if delayed:
            parts.append("delayed: " + ", ".join(delayed))
        bad = [(s, self._assess(s)[1]) for s in sorted(self._lines)]
        bad = [(s, why) for s, why in bad if why]
        if bad:
            parts.append("unavailable: " + "; ".join(f"{s} ({why})" for s, why in bad))
        return "; ".join(parts)

    # ------------------------------------------------------------------ the loop's side
    def check(self) -> None:
        self._drain()
        if not self.ib.isConnected():
            return
        now = self.clock()
        if self.review_every is not None and now - self._reviewed < self.review_every:
            return      # the budget is reviewed every check_every (IB's codes are still handled above)
        self._reviewed = now
        for gone in self.budget.expire(now):
            log.info("%s: market data line freed after %.0f s idle", gone, self.budget.ttl)
            self._drop(gone)
        if self._outage is not None or self._farm is not None:
            return  # IB cannot serve lines now; 1101 / 2104 bring the resubscription
        for line in sorted(self._lines.values(), key=lambda x: (-self.budget.rank(x.priority), x.symbol)):
            if line.blocked is not None:
                if now - line.requested_at >= self.retry_every:
                    self._request(line)
                continue
            silent = now - line.quiet_since
            if silent >= self.stale_after and now - line.requested_at >= self.retry_every:
                # a quiet market answers a new request with its current quote; a dead line does not:
                # the alert is for a line that stays silent even after it was requested again
                if line.silence_retry is not None and line.stale_noted is None:
                    line.stale_noted = now
                    self._say(0, f"{line.symbol}: stale: no ticks for {_secs(silent)} s while connected, not even after "
                                 f"the line was requested again; it is requested every {self.retry_every:g} s and no "
                                 f"entry is priced from it until ticks resume")
                self._request(line)
                line.silence_retry = line.requested_at

    def resubscribe_all(self) -> None:
        """Every budgeted line requested again, cancel before request (1101, 2104 after 2103, a
        new session). Never more lines than the budget: only budgeted lines are held."""
        self._drain()
        if not self.ib.isConnected():
            return
        self._outage = None
        self._farm = None
        if self._delayed_mode:
            self.ib.reqMarketDataType(3)
        now = self.clock()
        for line in sorted(self._lines.values(), key=lambda x: (-self.budget.rank(x.priority), x.symbol)):
            line.quiet_since = now
            self._request(line)

    # ------------------------------------------------------------------ requests
    def _request(self, line: _Line) -> bool:
        ib = self.ib
        if not ib.isConnected():
            return False
        self._cancel_at_ib(line)
        self._pace()
        if not ib.isConnected():
            return False
        try:
            ticker = ib.reqMktData(line.resolved.contract, self.generic_ticks, False, False)
        except ConnectionError:
            return False
        self._forget(line)
        line.ticker = ticker
        line.req_id = ib.wrapper.ticker2ReqId["mktData"].get(ticker, 0)
        line.requested_at = self.clock()
        line.at_ib = True
        line.delayed = False  # 10167 says so again if it still is
        self._by_req[line.req_id] = line.symbol
        self._by_ticker[id(ticker)] = line
        return True

    def _drop(self, symbol: str) -> None:
        line = self._lines.pop(symbol, None)
        if line is not None:
            self._cancel_at_ib(line)
            self._forget(line)

    def _forget(self, line: _Line) -> None:
        self._by_ticker.pop(id(line.ticker), None)
        if self._by_req.get(line.req_id) == line.symbol:
            del self._by_req[line.req_id]

    def _cancel_at_ib(self, line: _Line) -> None:
        """Cancel the line's request if IB holds it in this session. ib_async keeps one Ticker per
        contract: if another part of the broker asked for the same contract since, its request is
        the one ib_async's cancelMktData(contract) would cancel, so ours is cancelled by its id."""
        ib = self.ib
        if not (line.at_ib and line.ticker is not None and ib.isConnected()):
            return
        if ib.wrapper.reqId2Ticker.get(line.req_id) is not line.ticker:
            return  # a request of an earlier session: gone with it
        if ib.wrapper.ticker2ReqId["mktData"].get(line.ticker) == line.req_id:
            ib.cancelMktData(line.resolved.contract)
        else:
            ib.client.cancelMktData(line.req_id)
        line.at_ib = False

    def _pace(self) -> None:
        """At most `pacing` line requests in any second (a quarter of that for 5 s after IB's 100)."""
        rate = max(1, int(self.pacing / 4 if self.clock() < self._throttled_until else self.pacing))
        while True:
            now = self.clock()
            while self._sent and now - self._sent[0] >= 1.0:
                self._sent.popleft()
            if len(self._sent) < rate:
                break
            try:
                self.ib.sleep(self._sent[0] + 1.0 - now)
            except ConnectionError:
                break
        self._sent.append(self.clock())

    # ------------------------------------------------------------------ what the callbacks recorded
    def _drain(self) -> None:
        if self._disconnected and self.ib.isConnected():
            self._disconnected = False   # a new session: the integrator's resubscribe_all brings the lines back
            self._outage = self._farm = None
        inbox, self._inbox = self._inbox, []
        for req_id, code, text in inbox:
            self._handle(req_id, code, text)
        now = self.clock()
        for line in self._lines.values():
            if line.blocked is not None and line.last_tick > line.blocked[2]:
                code, _, since = line.blocked
                line.blocked = None
                self._competing_recovered |= code == 10197
                log.info("%s: market data back after %.0f s (IB %s)", line.symbol, now - since, code)
            if line.silence_retry is not None and line.last_tick > line.silence_retry:
                line.silence_retry = None
            if line.stale_noted is not None and line.last_tick > line.stale_noted:
                line.stale_noted = None
                self._say(0, f"{line.symbol}: ticks resumed; its quotes are used again")
        if self._competing_since is not None and not any(
                line.blocked and line.blocked[0] == 10197 for line in self._lines.values()):
            if self._competing_recovered:  # not when the lines it held were only given up
                self._say(0, f"market data is back after {now - self._competing_since:.0f} s (it was held by a "
                             f"competing live session, IB 10197)")
            self._competing_since = None
            self._competing_recovered = False

    def _handle(self, req_id: int, code: int, text: str) -> None:
        now = self.clock()
        info = codes.classify(code, text)
        if code in (1100, 2110):
            self._outage = (code, info.message.split(":")[0])
            return
        if code in (1101, 1102):
            self._outage = None
            return
        if code == 2103:
            self._farm = (code, codes.describe(code, text).split(":")[0])
            return
        if code == 2104:
            self._farm = None
            return
        if code == 100:
            self._throttled_until = now + 5.0
            if now - self._throttle_said >= 10.0:
                self._throttle_said = now
                self._say(100, f"{info.message}; market data requests slowed to {self.pacing / 4:g} a second for 5 s")
            return
        symbol = self._by_req.get(req_id)
        line = self._lines.get(symbol) if symbol else None
        if line is None or line.req_id != req_id:
            return  # a line since dropped or requested again
        if code == 10197:
            line.blocked = (code, info.message, now)
            if self._competing_since is None:
                self._competing_since = now
                self._say(code, f"{info.message}, first on {symbol}: no entry is priced from the lines it stops "
                                f"until it ends; they are requested again every {self.retry_every:g} s")
        elif code == 354:
            line.at_ib = False
            if self.allow_delayed:
                if not self._delayed_mode:
                    self._delayed_mode = True
                    self.ib.reqMarketDataType(3)
                if symbol not in self._said_delayed:
                    self._said_delayed.add(symbol)
                    self._say(code, f"{symbol}: {info.message}; using delayed quotes (15-20 min late) as the config "
                                    f"allows")
                self._request(line)
            else:
                self._refuse(line, code, f"{info.message.replace(' for this contract', '')}; delayed data not "
                                         f"allowed by the config", sticky=True)
        elif code == 10167:
            line.delayed = True
            if symbol not in self._said_delayed:
                self._said_delayed.add(symbol)
                if self.allow_delayed:
                    self._say(code, f"{symbol}: {info.message}; they are used as the config allows")
                else:
                    self._say(code, f"{symbol}: {info.message}; delayed data is not allowed by the config, so no "
                                    f"entry is priced from them")
        elif code in (10168, 10186, 200):
            line.at_ib = False
            self._refuse(line, code, codes.describe(code, text), sticky=True)
        elif code == 101:
            line.at_ib = False
            self._refuse(line, code, f"{info.message}: the budget ({self.budget.max_lines} lines) is larger than "
                                     f"this account's allowance; lower max_lines", sticky=False)
        elif info.kind == codes.Kind.ADVISORY:
            if code not in line.advised:
                line.advised.add(code)
                self._say(code, f"{symbol}: {info.message}; the quotes are still used")

    def _refuse(self, line: _Line, code: int, reason: str, sticky: bool) -> None:
        self._refused[line.symbol] = (code, reason, sticky)
        self.budget.release(line.symbol)
        self._drop(line.symbol)
        self._say(code, f"{line.symbol}: {reason}")

    def _say(self, code: int, message: str) -> None:
        self.on_event(events.BrokerError(None, code, message, self.wall()))

    # ------------------------------------------------------------------ assessment
    def _assess(self, symbol: str):
        """(quote, None) or (None, why not)."""
        line = self._lines.get(symbol)
        if line is None:
            refused = self._refused.get(symbol)
            return None, (refused[1] if refused else "not subscribed: no market data line")
        if self._disconnected or not self.ib.isConnected():
            return None, "not connected to IB: quotes resume after the reconnect"
        if self._outage is not None:
            return None, f"{self._outage[1]}: quotes are stale until it is restored"
        if self._farm is not None:
            return None, f"{self._farm[1]}: quotes are suspect until it is back (IB 2104)"
        if line.blocked is not None:
            return None, line.blocked[1]
        now = self.clock()
        silent = now - line.quiet_since
        if silent >= self.stale_after:
            return None, f"stale: no ticks for {_secs(silent)} s"
        if not line.fresh:
            return None, f"waiting for the first quote since the line was requested {now - line.requested_at:.1f} s ago"
        if self.is_delayed(symbol) and not self.allow_delayed:
            return None, "delayed quotes (IB 10167), and delayed data is not allowed by the config"
        t = line.ticker
        stamp = int(t.time.timestamp() * 1_000_000_000) if t.time is not None else self.wall()
        q, why = quote_from(symbol, line.resolved.sec_type, t.bid, t.bidSize, t.ask, t.askSize, t.last, stamp)
        return q, (why or None)
