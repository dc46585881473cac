"""Historical bars within IB's pacing rules, and bars kept up to date as they complete.

`bars(...)` answers one historical request:
  * no identical request within `identical_window` (IB: 15 s): an identical request in that time
    is answered from the first one's answer;
  * IB's other pacing rules are kept before a request is sent (bars of 30 s and less: at most 5
    requests for one contract and type within 2 s, at most 60 within 10 minutes), by waiting;
  * 162 "pacing violation" backs off (doubling from `pacing_backoff`) and asks again until
    `pacing_deadline`; the identical-request rule holds for the retries too. The first violation
    is said in an events.BrokerError (code 162);
  * 162 "HMDS query returned no data" is final: [] (ib_async ends both that and a violation
    with [], so they are told apart by IB's text);
  * anything else raises HistoryError with a plain message (200, a bad bar size, a timeout, a
    connection lost during the request).

`stream(...)` is a keepUpToDate request; `completed(stream)` hands out, once each and in order,
the bars completed since the last call (a bar is complete once the next bar has started:
ib_async's last bar is the forming one). After a data loss (register `resubscribe` with
Connection.on_data_lost), a new session, or IB's 10182 the stream is requested again for just the
gap since the last bar handed out (sized with `now_ns`, the venue's time), so no bar is lost or
handed out twice; a request that IB's pacing does not allow yet waits for check().

Bars are `Bar(start, end, open, high, low, close, volume)`: times in ns UTC (a daily bar starts at
midnight in `tz`), prices as float; a bar with a NaN, -1 or UNSET price is dropped; volume is NaN
where IB has none (e.g. MIDPOINT bars).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable
from zoneinfo import ZoneInfo

from .. import events
from . import codes
from .types import Resolved

log = logging.getLogger("qtrade.ib.history")
UNSET = 1.7976931348623157e308
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
# IB's bar sizes, one for one with the engine's (engine.market.bars.BARS: 1s ... 1M)
IB_BAR_SIZES = ("1 secs", "5 secs", "10 secs", "15 secs", "30 secs", "1 min", "2 mins", "3 mins", "5 mins",
                "10 mins", "15 mins", "20 mins", "30 mins", "1 hour", "2 hours", "3 hours", "4 hours", "8 hours",
                "1 day", "1 week", "1 month")
_HISTORY_CODES = frozenset({162, 165, 200, 321, 322, 354, 420, 10182, 10197, 10168, 10186})


class HistoryError(Exception):
    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True, slots=True)
class Bar:
    start: int      # ns UTC
    end: int        # ns UTC: when its close is known
    open: float
    high: float
    low: float
    close: float
    volume: float   # NaN where IB sends none


def bar_size_seconds(bar_size: str) -> float:
    """IB's bar size ('1 min', '5 secs', '1 day') in seconds."""
    from engine.market.bars import BARS, bar_seconds

    if bar_size not in IB_BAR_SIZES:
        raise HistoryError(f"bar size {bar_size!r} is not one of IB's ({', '.join(IB_BAR_SIZES)})")
    return bar_seconds(BARS[IB_BAR_SIZES.index(bar_size)])


def duration_covering(seconds: float, bar_seconds: float) -> str:
    """The shortest IB duration string that covers `seconds` back (for a catch-up request)."""
    if bar_seconds < 86400 and seconds <= 86400:
        return f"{max(int(math.ceil(seconds)), 60)} S"
    return f"{max(int(math.ceil(seconds / 86400)), 1)} D"


def to_bars(items, bar_seconds: float, tz: ZoneInfo) -> list[Bar]:
    """ib_async BarData -> Bar, dropping bars without a real price."""
    length = int(round(bar_seconds * 1e9))
    out = []
    for b in items:
        prices = [_price(b.open), _price(b.high), _price(b.low), _price(b.close)]
        if None in prices:
            continue
        start = _ns(b.date, tz)
        vol = _number(b.volume)
        out.append(Bar(start, start + length, *prices, vol if vol is not None and vol >= 0 else math.nan))
    return out


def _ns(when, tz: ZoneInfo) -> int:
    if isinstance(when, dt.datetime):
        aware = when if when.tzinfo is not None else when.replace(tzinfo=tz)
    else:
        aware = dt.datetime(when.year, when.month, when.day, tzinfo=tz)
    return (aware - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def _number(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and abs(v) < UNSET else None


def _price(x) -> float | None:
    v = _number(x)
    return v if v is not None and v > 0 else None


# ============================================================================ IB's pacing rules (pure)
class Pacer:
    """IB's historical-data pacing rules as waits: `wait()` says how long until a request may
    be sent, `sent()` records one that was."""

    def __init__(self, identical_window: float = 15.0, burst_window: float = 2.0, burst_limit: int = 5,
                 window: float = 600.0, limit: int = 60, margin: float | None = None):
        self.identical_window = identical_window
        # IB counts the 15 s from when a request reaches it, a little after it was sent here: an
        # identical one sent exactly 15 s later can arrive less than 15 s after the first (IB 162)
        self.margin = identical_window / 30 if margin is None else margin     # 0.5 s of IB's 15
        self.burst_window = burst_window
        self.burst_limit = burst_limit
        self.window = window
        self.limit = limit
        self._last: dict[tuple, float] = {}
        self._small: deque = deque()    # (time, series) of requests for bars of 30 s and less

    def wait(self, key: tuple, series: tuple, small: bool, now: float) -> float:
        waits = [0.0]
        last = self._last.get(key)
        if last is not None:
            waits.append(last + self.identical_window + self.margin - now)
        if small:
            recent = [t for t, _ in self._small if now - t < self.window]
            if len(recent) >= self.limit:
                waits.append(recent[-self.limit] + self.window - now)
            burst = [t for t, s in self._small if s == series and now - t < self.burst_window]
            if len(burst) >= self.burst_limit:
                waits.append(burst[-self.burst_limit] + self.burst_window - now)
        return max(waits)

    def sent(self, key: tuple, series: tuple, small: bool, now: float) -> None:
        self._last[key] = now
        for k in [k for k, t in self._last.items() if now - t >= self.identical_window + self.margin]:
            del self._last[k]
        if small:
            self._small.append((now, series))
            while self._small and now - self._small[0][0] >= self.window:
                self._small.popleft()


# ============================================================================ streams
def _at_end(start: int, end: int) -> int:
    return end


@dataclass(eq=False)
class Stream:
    """A keepUpToDate subscription; hand it to completed()."""

    contract: object
    bar_size: str
    duration: str
    what_to_show: str
    use_rth: bool
    seconds: float
    name: str
    bars: object = None                 # the ib_async BarDataList of the current request
    delivered_through: int = -1         # start (ns) of the newest bar handed out
    pending: bool = False               # to be requested again
    due: float = 0.0
    failures: int = 0
    said: set = field(default_factory=set)
    # when a bar is complete, from its (start, end) ns: at its end unless told (a daily bar at its
    # session's close: engine.market.calendars.bar_done_ns)
    done_at: Callable[[int, int], int] = _at_end


class History:
    def __init__(self, ib, on_event: Callable[[object], None], clock: Callable[[], float] = time.monotonic,
                 identical_window: float = 15.0, *, timeout: float = 30.0, pacing_deadline: float = 120.0,
                 pacing_backoff: float = 2.0, pacing_backoff_max: float = 30.0, tz: str = "America/New_York",
                 now_ns: Callable[[], int] = time.time_ns):
        self.ib = ib
        self.on_event = on_event
        self.clock = clock
        self.identical_window = float(identical_window)
        self.timeout = float(timeout)
        self.pacing_deadline = float(pacing_deadline)
        self.pacing_backoff = float(pacing_backoff)
        self.pacing_backoff_max = float(pacing_backoff_max)
        self.tz = ZoneInfo(tz)
        self.now_ns = now_ns
        self.pacer = Pacer(identical_window)
        self._cache: dict[tuple, tuple[float, list[Bar]]] = {}
        self._errors: OrderedDict[int, tuple[int, str]] = OrderedDict()
        self._streams: list[Stream] = []
        self._lost: set[int] = set()    # reqIds of streams IB said it stopped (10182)
        ib.errorEvent += self._on_error

    # ------------------------------------------------------------------ callbacks: record only
    def _on_error(self, req_id, code, text, contract) -> None:
        if code not in _HISTORY_CODES or req_id < 0:
            return
        self._errors[int(req_id)] = (int(code), str(text))
        while len(self._errors) > 1000:
            self._errors.popitem(last=False)
        if code == 10182:
            self._lost.add(int(req_id))

    # ------------------------------------------------------------------ one request
    def bars(self, contract, duration: str, bar_size: str, what_to_show: str = "TRADES", use_rth: bool = True,
             end="") -> list[Bar]:
        """The bars IB has for the request (may be [] for "no data"); raises HistoryError."""
        c = contract.contract if isinstance(contract, Resolved) else contract
        seconds = bar_size_seconds(bar_size)
        key = self._key(c, end, duration, bar_size, what_to_show, use_rth)
        hit = self._cache.get(key)
        if hit is not None and self.clock() - hit[0] < self.identical_window:
            return list(hit[1])
        name = _name(c, bar_size, duration, end)
        answer, _ = self._fetch(c, key, name, duration, bar_size, what_to_show, use_rth, end, seconds, keep=False)
        return answer

    def _fetch(self, c, key, name, duration, bar_size, what, rth, end, seconds, keep):
        deadline = self.clock() + self.pacing_deadline
        violations = 0
        series = (key[0], what)
        small = seconds <= 30
        while True:
            wait = self.pacer.wait(key, series, small, self.clock())
            if wait > 0:
                if self.clock() + wait > deadline:
                    raise HistoryError(f"{name}: IB's pacing rules allow this request only in {wait:.0f} s, later than "
                                       f"its {self.pacing_deadline:g} s deadline", transient=True)
                if wait >= 1.0:     # a wait a reader would notice: said, not silent
                    self._say(0, f"{name}: IB's historical-data pacing rules allow this request in {wait:.0f} s: "
                                 "waiting")
                self._sleep(wait)
            self.pacer.sent(key, series, small, self.clock())
            items, err = self._request(c, name, duration, bar_size, what, rth, end, keep)
            if err is None:
                answer = to_bars(items, seconds, self.tz)
                if not keep:
                    self._cache[key] = (self.clock(), answer)
                    self._prune()
                return answer, items
            info = codes.classify(*err)
            if info.kind == codes.Kind.PACING:
                violations += 1
                delay = min(self.pacing_backoff_max, self.pacing_backoff * 2 ** (violations - 1))
                if self.clock() + delay > deadline:
                    raise HistoryError(f"{name}: IB kept answering with pacing violations (IB 162) for "
                                       f"{self.pacing_deadline:g} s; asked {violations} times", transient=True)
                if violations == 1:
                    self._say(162, f"{name}: {info.message}; asking again for up to {self.pacing_deadline:g} s")
                self._sleep(delay)
                continue
            if info.kind == codes.Kind.NO_DATA:
                if keep:
                    raise HistoryError(f"{name}: {info.message}, so there are no bars to keep up to date")
                self._cache[key] = (self.clock(), [])
                return [], items
            raise HistoryError(f"{name}: {codes.describe(*err)}")

    def _request(self, c, name, duration, bar_size, what, rth, end, keep):
        """(BarDataList, None) or (BarDataList, (code, text)) for IB's error; raises HistoryError
        for a timeout or a lost connection."""
        started = self.clock()
        try:
            items = self.ib.run(asyncio.wait_for(
                self.ib.reqHistoricalDataAsync(c, end, duration, bar_size, what, rth, 2, keep, [], self.timeout),
                self.timeout + 5.0))
        except (asyncio.TimeoutError, TimeoutError):
            raise HistoryError(f"{name}: IB did not answer within {self.timeout:g} s", transient=True) from None
        except ConnectionError:
            raise HistoryError(f"{name}: not connected to IB (or the connection dropped during the request); ask "
                               f"again after the reconnect", transient=True) from None
        err = self._errors.pop(items.reqId, None)
        if err is not None and codes.classify(*err).kind in (codes.Kind.INFO, codes.Kind.HARMLESS):
            err = None
        if err is None and not items and self.clock() - started >= self.timeout - 0.05:
            raise HistoryError(f"{name}: IB did not answer within {self.timeout:g} s", transient=True)
        return items, err

    # ------------------------------------------------------------------ streams
    def stream(self, contract, bar_size: str, duration: str = "1 D", what_to_show: str = "TRADES",
               use_rth: bool = True) -> Stream:
        """A keepUpToDate subscription (its first answer within the pacing rules, as bars());
        raises HistoryError."""
        c = contract.contract if isinstance(contract, Resolved) else contract
        seconds = bar_size_seconds(bar_size)
        s = Stream(c, bar_size, duration, what_to_show, use_rth, seconds, _name(c, bar_size, "live", ""))
        key = self._key(c, "", duration, bar_size, what_to_show, use_rth)
        _, items = self._fetch(c, key, s.name, duration, bar_size, what_to_show, use_rth, "", seconds, keep=True)
        s.bars = items
        self._streams.append(s)
        return s

    def completed(self, stream: Stream) -> list[Bar]:
        """The bars completed since the last call, oldest first, each once."""
        self._note_lost()
        if stream.pending and self.clock() >= stream.due:
            self._resubscribe(stream)
        items = list(stream.bars or [])
        if items:       # the last bar is still forming, unless the venue's time is past its end
            last = to_bars([items[-1]], stream.seconds, self.tz)
            if not (last and stream.done_at(last[0].start, last[0].end) <= self.now_ns()):
                items = items[:-1]
        fresh: list = []
        for b in reversed(items):
            bar = to_bars([b], stream.seconds, self.tz)
            if not bar:
                continue
            if bar[0].start <= stream.delivered_through:
                break
            fresh.append(bar[0])
        fresh.reverse()
        if fresh:
            stream.delivered_through = fresh[-1].start
        return fresh

    def cancel(self, stream: Stream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)
        if stream.bars is not None and self._live(stream) and self.ib.isConnected():
            self.ib.cancelHistoricalData(stream.bars)
        stream.bars = None

    def resubscribe(self) -> None:
        """Every stream requested again (1101, 2104 after 2103, a new session): register with
        Connection.on_data_lost."""
        for s in self._streams:
            s.pending = True
            s.due = 0.0
            s.failures = 0
        self.check()

    def check(self) -> None:
        """For the loop: streams IB stopped (10182) or lost with the session are requested again
        when IB's pacing allows."""
        self._note_lost()
        now = self.clock()
        for s in self._streams:
            if s.pending and now >= s.due:
                self._resubscribe(s)

    def _note_lost(self) -> None:
        lost, self._lost = self._lost, set()
        for s in self._streams:
            if s.bars is not None and (s.bars.reqId in lost or (self.ib.isConnected() and not self._live(s))):
                s.pending = True

    def _live(self, s: Stream) -> bool:
        return any(b is s.bars for b in self.ib.realtimeBars())

    def _resubscribe(self, s: Stream) -> None:
        if not self.ib.isConnected():
            return
        if s.delivered_through >= 0:
            gap = (self.now_ns() - s.delivered_through) / 1e9 + 2 * s.seconds
            duration = duration_covering(gap, s.seconds)
        else:
            duration = s.duration
        key = self._key(s.contract, "", duration, s.bar_size, s.what_to_show, s.use_rth)
        series = (key[0], s.what_to_show)
        small = s.seconds <= 30
        wait = self.pacer.wait(key, series, small, self.clock())
        if wait > 0:
            s.due = self.clock() + wait
            return
        if s.bars is not None and self._live(s):
            self.ib.cancelHistoricalData(s.bars)
        self.pacer.sent(key, series, small, self.clock())
        try:
            items, err = self._request(s.contract, s.name, duration, s.bar_size, s.what_to_show, s.use_rth, "", True)
        except HistoryError as exc:
            self._retry_later(s, 0, str(exc))
            return
        if err is not None:
            self._retry_later(s, err[0], f"{s.name}: {codes.describe(*err)}")
            return
        s.bars = items
        s.pending = False
        s.failures = 0
        log.info("%s: requested again (%s back)", s.name, duration)

    def _retry_later(self, s: Stream, code: int, message: str) -> None:
        s.failures += 1
        delay = min(self.pacing_backoff_max, self.pacing_backoff * 2 ** (s.failures - 1))
        s.due = self.clock() + delay
        if code not in s.said:
            s.said.add(code)
            self._say(code, f"{message}; the bar stream is requested again in {delay:g} s")

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _key(c, end, duration, bar_size, what, rth) -> tuple:
        ident = c.conId or (c.symbol, c.secType, c.lastTradeDateOrContractMonth, c.strike, c.right, c.exchange,
                            c.currency, c.localSymbol, c.tradingClass)
        return ident, str(end), duration, bar_size, what, bool(rth)

    def _prune(self) -> None:
        now = self.clock()
        for k in [k for k, (t, _) in self._cache.items() if now - t >= self.identical_window]:
            del self._cache[k]

    def _sleep(self, seconds: float) -> None:
        try:
            self.ib.sleep(seconds)
        except ConnectionError:
            raise HistoryError("the connection to IB dropped while waiting to ask for bars; ask again after the "
                               "reconnect", transient=True) from None

    def _say(self, code: int, message: str) -> None:
        self.on_event(events.BrokerError(None, code, message, self.now_ns()))


def _name(c, bar_size: str, duration: str, end) -> str:
    what = c.localSymbol or c.symbol or f"conId {c.conId}"
    return f"{what} {bar_size} bars ({duration}{' to ' + str(end) if end else ''})"
