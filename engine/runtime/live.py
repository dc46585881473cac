"""A live run: the kernel fed by a broker's bars as they complete, on the broker's clock.

The same Kernel as a backtest and `run --broker sim`; what differs is where bars and time come
from. A LiveSource (the IB broker, or a replay in tests) lets the venue's messages in when it is
pumped, says what time it is at the venue (`now`, which follows an accelerated simulator), and
hands over each symbol's bars as they complete. For each completed bar the run:

1. appends it to the symbol's history and rebuilds the arrays the kernel reads (times, prices,
   clock values, other symbols aligned as of each bar, the schedule's masks), and grows the
   streaming plan's value arrays by one;
2. lets a simulated wallet (a dry run's) trade that bar: orders sent after the previous close
   fill at its open, resting ones against its range, as in a backtest;
3. streams the plan's values for the bar and runs the kernel's close: exits of the open
   positions (each owner's own), protective orders, flat-by, entries;
4. sends what was decided at once: in a live run the next bar's open is now, and the entry is
   sized on the quote now. An entry is refused with its reason when the gate says the symbol
   cannot be priced or traded (a stale or unavailable quote, the kill switch, reconciliation
   not finished, a position that disagrees with the broker's), and when the bar it was decided
   on closed more than a bar and a minute before the venue's time now: a bar the run is
   catching up on (a slow warm-up, IB's pacing, a gap in the stream), whose signal the market
   has moved on from. Exits still go on such bars: they only take risk off.

Between bars the run pumps the broker, hands its events (fills, statuses, commissions, errors,
connection lost and restored) to the kernel's order tracker, and runs the kernel's timers (a
combo's chase steps) when their time comes at the venue.
"""

from __future__ import annotations

import heapq
import math
import time as _time
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

import numpy as np
import pandas as pd

from ..market.bars import bar_seconds
from .prepare import Prepared, _schedule_masks, _symbol_bars, agent_flat_masks, cadence_masks


@dataclass(frozen=True)
class Bar:
    """One completed bar from a broker: its start (ns UTC) and prices."""

    start: int
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0

    def sane(self) -> str | None:
        """Why this bar cannot be traded on (None: it can)."""
        values = (self.open, self.high, self.low, self.close)
        if not all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in values):
            return f"a price is missing, zero or not finite ({self.open}, {self.high}, {self.low}, {self.close})"
        if self.high < self.low:
            return f"its high {self.high} is below its low {self.low}"
        return None


def bar_done(prep: Prepared) -> Callable[[str, int, int], int]:
    """(symbol, start ns, end ns) -> when that bar is complete in a live run: a daily bar at its
    session's close on the symbol's calendar (16:00 New York for NYSE), any other at its end. A
    cash index's value is computed while its stocks trade: its day ends at NYSE's close (16:00),
    whatever the calendar its options keep (CBOE's, to 16:15)."""
    from ..market.calendars import bar_done_ns

    def done(symbol: str, start: int, end: int) -> int:
        inst = prep.instruments.get(symbol)
        calendar = "NYSE" if inst is None or (inst.sec_type == "IND" and inst.calendar and
                                                inst.calendar.startswith("CBOE")) else inst.calendar
        return bar_done_ns(int(start), int(end), calendar, prep.timezone)

    return done


class LiveSource(Protocol):
    def pump(self, seconds: float) -> None:
        """Let the venue's messages in for up to `seconds` of wall time."""

    def now(self) -> int:
        """The venue's time now (ns UTC)."""

    def completed(self, symbol: str) -> list[Bar]:
        """The symbol's bars completed since the last call, oldest first."""


class Timers:
    """The kernel's timers in a live run: each runs once the venue's time reaches it."""

    def __init__(self):
        self._heap: list = []
        self._order = 0
        self.now = 0

    def at(self, time: int, action: Callable[[], None]) -> None:
        self._order += 1
        heapq.heappush(self._heap, (int(time), self._order, action))

    def next_time(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def run_due(self, now: int, on_time: Callable[[int], None] | None = None) -> int:
        """Run every timer due by `now`, in time order (`on_time` told each one's time first);
        returns how many ran."""
        ran = 0
        while self._heap and self._heap[0][0] <= now:
            t, _, action = heapq.heappop(self._heap)
            self.now = max(self.now, t)
            if on_time is not None:
                on_time(self.now)
            action()
            ran += 1
        self.now = max(self.now, now)
        return ran


def append_bar(frame: pd.DataFrame, bar: Bar, timezone: str, daily: bool) -> pd.DataFrame:
    """The symbol's frame with one more bar, indexed as the loader indexes bars of that size
    (intraday: the bar's start; daily: the session's date at midnight in the strategy's zone)."""
    t = pd.Timestamp(bar.start, tz="UTC").tz_convert(timezone)
    if daily:
        t = t.normalize()
    if frame.index.tz is not None and str(frame.index.tz) != timezone:
        t = t.tz_convert(frame.index.tz)
    if len(frame) and t <= frame.index[-1]:
        return frame        # already held (a repeated update of the last bar)
    row = {"open": bar.open, "high": bar.high, "low": bar.low, "close": bar.close, "volume": bar.volume}
    for column in frame.columns:
        row.setdefault(column, np.nan)
    add = pd.DataFrame([row], index=pd.DatetimeIndex([t], name=frame.index.name))[list(frame.columns)]
    return pd.concat([frame, add]) if len(frame) else add


class LiveFeed:
    """Grows a kernel's symbols bar by bar and steps the kernel for each completed bar."""

    def __init__(self, kernel, prep: Prepared, *, gate: Callable[[str], str | None] | None = None):
        self.kernel = kernel
        self.prep = prep
        self.daily = bar_seconds(prep.bar) >= 86400
        self.gate = gate
        kernel.live = True          # fills are placed in bars by their time (a live venue knows no bar index)
        self.bars_seen: dict[str, int] = {s: 0 for s in kernel.syms}
        self.refused_bars: list[tuple[str, int, str]] = []
        self.scan = None                # a scanner's LiveScan (runtime/livescan.py), set by the run
        self.scan_only: list[str] = []  # the names it scans that the run neither trades nor reads
        self.held: list = []            # bars waiting for the scan of their close
        self.now: int | None = None     # the source's time at the poll (None: not live, no bar is late)
        # an entry decided at a bar's close goes only while that close is this recent: older, the
        # bar is one the run is catching up on (after a slow warm-up, a gap in the stream)
        self.late_ns = int((bar_seconds(prep.bar) + 60) * 1e9)

    def warm_up(self) -> None:
        """The streaming plan over the history already held: values for every bar, no decisions;
        the first bar a rule may act on is the next one to complete."""
        k = self.kernel
        for st in k.syms.values():
            for i in range(len(st.bars)):
                k._stream(st, i)
            for lane in st.lanes or [st]:       # positions_per_symbol: its lanes share the values
                lane.start = len(st.bars)

    def admit(self, symbol: str) -> None:
        """Trade `symbol` from now on, from its history in prep.frames (a scanner's new candidate
        in an IB run, or one IB lists again after its stream was released): its arrays built and
        the streaming plan warmed up over that history as at the start, so the first bar a rule
        may act on is the next one to complete. A symbol holding a position is never re-admitted
        (its stream and line are kept)."""
        from ..plan.evaluate import Stream
        from ..portfolio.marks import LastClose
        from .kernel import _Symbol

        k, prep = self.kernel, self.prep
        if symbol in k.ledger.positions:
            return
        sbars, bars = _symbol_bars(prep, symbol)
        entry_mask, flat_mask = _schedule_masks(prep, bars)
        values = [np.empty(len(sbars), dtype=object) if node.market else None for node in k.plan.nodes]
        st = _Symbol(symbol, sbars, values, len(sbars), entry_mask, flat_mask, None, Stream(k.plan), bars,
                     flat_masks=agent_flat_masks(prep, bars))
        st.held_mask, st.add_mask = cadence_masks(prep, bars)
        k.add_symbol(symbol, st)
        k.bars[symbol] = sbars
        # what RunState and a run's reader see of it: its bars and plan values (the kernel's own kind)
        k.signals[symbol] = type(next(iter(k.signals.values())))(st)
        k._prices = LastClose(k.bars)       # marks know the new symbol's timeline
        for holder in (k.venue, getattr(k.venue, "wallet", None)):     # a dry run's wallet trades its bars
            if hasattr(holder, "add_symbol"):
                holder.add_symbol(symbol, sbars)
        for i in range(len(st.bars)):
            k._stream(st, i)
        st.start = len(st.bars)
        self.bars_seen[symbol] = 0

    def add(self, symbol: str, bar: Bar) -> int | None:
        """Append a completed bar and rebuild the symbol's arrays; its index, or None when it was
        refused (already held, or not a bar one can trade on)."""
        from ..portfolio.marks import LastClose

        k = self.kernel
        st = k.syms.get(symbol)
        frame = self.prep.frames[symbol]
        why = bar.sane()
        if why is not None:
            # said and journaled; the run goes on without it (the loader refuses the same in a file)
            self.refused_bars.append((symbol, bar.start, why))
            message = f"{symbol}: the broker's bar starting {pd.Timestamp(bar.start, tz='UTC'):%Y-%m-%d %H:%M} UTC " \
                      f"was refused: {why}"
            k.errors.append((k._now, message))
            if k.recorder is not None:
                k.recorder.error(k._now, message)
            return None
        grown = append_bar(frame, bar, self.prep.timezone, self.daily)
        if grown is frame:
            return None
        self.prep.frames[symbol] = grown
        if st is None:      # another symbol the rules read: aligned into the traded ones' arrays
            return len(grown) - 1
        sbars, bars = _symbol_bars(self.prep, symbol)
        n = len(sbars)
        entry_mask, flat_mask = _schedule_masks(self.prep, bars)
        flat_masks = agent_flat_masks(self.prep, bars)
        held_mask, add_mask = cadence_masks(self.prep, bars)
        for lane in st.lanes or [st]:      # positions_per_symbol: every lane of the symbol reads its bars
            lane.bars, lane.inputs = sbars, bars
            lane.entry_mask, lane.flat_mask = entry_mask, flat_mask
            lane.flat_masks = flat_masks
            lane.held_mask, lane.add_mask = held_mask, add_mask
        for i, arr in enumerate(st.values):
            if arr is not None and len(arr) < n:
                grown_values = np.empty(n, dtype=object)
                grown_values[:len(arr)] = arr
                st.values[i] = grown_values
        k.bars[symbol] = sbars
        k.signals[symbol].bars = sbars
        # the marks know the new bar: the kernel's (the status line's P&L, the equity a dry run sizes
        # by) and a simulated venue's or wallet's account (it marked the positions at the closes of
        # the bars it was built with: a live run's held futures at the price the run started at)
        k._prices = LastClose(k.bars)
        k._marks_key = None
        venue = k.venue
        for holder in (venue, getattr(venue, "inner", None), getattr(venue, "wallet", None)):
            bars_of = getattr(holder, "bars", None)
            if isinstance(bars_of, dict) and symbol in bars_of:
                if hasattr(holder, "add_symbol"):
                    holder.add_symbol(symbol, sbars)
                else:
                    bars_of[symbol] = sbars
        self.bars_seen[symbol] += 1
        return n - 1

    def step(self, symbol: str, k_bar: int) -> None:
        """The kernel at bar k_bar's close: the wallet trades the bar, the plan streams, the rules
        decide, and what they decided is sent now."""
        k = self.kernel
        st = k.syms[symbol]
        k._tick(max(k._now, self.closed_at(symbol, k_bar)))
        venue = k.venue
        lanes = st.lanes or [st]        # positions_per_symbol: each owner's lane decides in turn
        for lane in lanes:
            lane.at = (k_bar, 1)
        venue.open_bar(symbol, k_bar)
        k._drain()
        venue.close_bar(symbol, k_bar)
        k._drain()
        for lane in lanes:
            lane.at = (k_bar, 0)
        for lane in lanes:
            k._on_close(lane, k_bar)
        for lane in lanes:
            self.send_pending(lane)

    def use_bar_done(self, done: Callable[[str, int, int], int]) -> None:
        """Bars complete when `done` says (the source's rule, bar_done for IB): the feed steps the
        kernel then, and the kernel places fills after that moment in the next bar."""
        self.kernel.bar_done = done

    def closed_at(self, symbol: str, k_bar: int) -> int:
        """When the symbol's bar k_bar was complete: the run's time at its close (a daily bar's
        session close, not the midnight it ends at)."""
        b = self.kernel.syms[symbol].bars
        return self.kernel.bar_done(symbol, int(b.start[k_bar]), int(b.end[k_bar]))

    def send_pending(self, st) -> None:
        k = self.kernel
        pending, st.pending = st.pending, []
        for ref in pending:
            tr = k.orders_by_ref[ref]
            why = None
            if tr.role == "entry":
                why = self.gate(st.symbol) if self.gate is not None else None
                if not why and k.venue.quote(st.symbol) is None:
                    why = f"no quote for {st.symbol} yet: an entry is sized on the quote now"
                if not why:
                    why = self._late(st, tr.decided_bar)
            if why:
                k._status(tr, "rejected", k._now, why)
                k._decide(st.symbol, tr.intent.rule, "entry", "blocked", why)
                st.working_entry = None
                continue
            k._send(tr, len(st.bars))
        k._drain()

    def _late(self, st, k_bar: int) -> str | None:
        """Why an entry decided at bar k_bar's close does not go: that close is minutes old, a bar
        the run is catching up on, whose signal the market has moved on from (exits still go: they
        only take risk off)."""
        if self.now is None or k_bar < 0:
            return None
        closed = self.closed_at(st.symbol, k_bar)
        age = self.now - closed
        if age <= self.late_ns:
            return None
        close = pd.Timestamp(closed, tz="UTC").tz_convert(self.prep.timezone)
        return (f"decided at the close of {close:%Y-%m-%d %H:%M}, {age / 60e9:.0f} min before the broker's time now: "
                "a bar the run is catching up on (a slow warm-up, a gap in the bars); no entry on a signal that old")

    def poll(self, source: LiveSource, symbols: Iterable[str], before: Callable[[int], None] | None = None) -> int:
        """Take every bar completed at the source and step the kernel for each, in time order
        (`before(end)` runs first: the timers due by that bar's close, as on a simulated clock);
        returns how many bars were stepped."""
        arrived = []
        self.now = source.now()
        for order, symbol in enumerate(symbols):
            for bar in source.completed(symbol):
                arrived.append((bar.start, order, symbol, bar))
        scan = self.scan
        now = 0
        if scan is not None:        # a scanner (runtime/livescan.py): its names' bars, then the scans due
            for symbol in self.scan_only:
                for bar in source.completed(symbol):
                    scan.observe(symbol, bar)
            for _, _, symbol, bar in arrived:
                scan.observe(symbol, bar)
            now = source.now()
            scan.advance(now)
            arrived, self.held = self.held + arrived, []
        arrived.sort(key=lambda a: (a[0], a[1]))
        stepped = 0
        for i, (_, _, symbol, bar) in enumerate(arrived):
            if scan is not None and symbol in self.kernel.syms and scan.holds(scan.end_of(bar), now):
                self.held = arrived[i:]        # until the scan of their close has run
                break
            idx = self.add(symbol, bar)
            if idx is None or symbol not in self.kernel.syms:
                continue
            if before is not None:
                before(self.closed_at(symbol, idx))
            self.step(symbol, idx)
            stepped += 1
        return stepped


class LiveRun:
    """The live loop: pump the source, hand its events to the kernel, step each completed bar,
    run the timers that are due, say how things stand every `status_every` wall seconds, until
    `stop()` gives a reason."""

    def __init__(self, kernel, feed: LiveFeed, source: LiveSource, timers: Timers, *,
                 stop: Callable[[], str | None], status: Callable[[], str] | None = None,
                 say: Callable[[str], None] | None = None, status_every: float = 60.0, tick: float = 0.05,
                 monotonic: Callable[[], float] = _time.monotonic, notices: Callable[[], list[str]] | None = None):
        self.kernel, self.feed, self.source, self.timers = kernel, feed, source, timers
        self.stop, self.status, self.say = stop, status, say
        self.notices = notices      # lines to say at once (a lost connection, an IB alert), each loop
        self._told = (0, 0)         # the kernel's errors and notices said so far
        self.status_every, self.tick, self.monotonic = status_every, tick, monotonic
        # other symbols first: a traded symbol's bar reads them as of its close
        self._symbols: tuple[int, list[str]] = (-1, [])
        self.stepped = 0
        self.first_decision_wall: float | None = None
        self.latencies: list[float] = []       # wall seconds from a bar's arrival to its orders' placing
        self._urgent: list = []     # lanes with an order queued by a broker event, to send at once
        kernel.on_urgent = self._urgent.append

    @property
    def symbols(self) -> list[str]:
        """The symbols polled for bars: the others the rules read, then the traded ones (a
        scanner's candidates from IB join the kernel's symbols as IB lists them)."""
        n = len(self.kernel.syms)
        if self._symbols[0] != n:
            self._symbols = (n, prep_others(self.feed.prep) + list(self.kernel.syms))    # the universe's order
        return self._symbols[1]

    def _on_time(self, t: int) -> None:
        self.kernel._tick(max(self.kernel._now, t))

    def run(self) -> str:
        k = self.kernel
        last_status = self.monotonic()
        while True:
            why = self.stop()
            if why:
                return why
            self.source.pump(self.tick)
            now = self.source.now()
            k._drain()
            arrived = self.monotonic()
            placed = len(getattr(k.venue, "placed", ()))
            decisions = len(k.decisions)
            n = self.feed.poll(self.source, self.symbols,
                               before=lambda end: self.timers.run_due(end, self._on_time))
            if n:
                self.stepped += n
                if len(k.decisions) > decisions and self.first_decision_wall is None:
                    self.first_decision_wall = self.monotonic()
                if len(getattr(k.venue, "placed", ())) > placed:
                    self.latencies.append(self.monotonic() - arrived)
            self.timers.run_due(max(now, k._now), self._on_time)
            if now > k._now:       # time moves on only after what was due before it has run
                self._on_time(now)
            k._drain()
            while self._urgent:
                self._send_urgent()
            if self.say is not None:
                self._tell()
            if self.status is not None and self.say is not None and \
                    self.monotonic() - last_status >= self.status_every:
                last_status = self.monotonic()
                self.say(self.status())

    def _tell(self) -> None:
        """Say what went wrong or changed since the last loop, as it happens: the kernel's errors
        (a lost connection, a refused order or move) and notices (a reconnect), and the source's
        own lines (IB's alerts)."""
        k = self.kernel
        errors, notices = self._told
        for t, message in k.errors[errors:] + k.notices[notices:]:
            self.say(f"{k._local(t):%Y-%m-%d %H:%M:%S}  {message}" if t else message)
        self._told = (len(k.errors), len(k.notices))
        if self.notices is not None:
            for line in self.notices():
                self.say(line)

    def _send_urgent(self) -> None:
        """Send what a broker event queued since the last bar (the market close of a position
        whose stop the broker refused): now, not when the symbol's next bar completes."""
        lanes = self._urgent[:]
        self._urgent.clear()            # (the kernel's hook appends to this list)
        for st in lanes:
            if st.pending:
                self.feed.send_pending(st)

    def working(self) -> list[str]:
        """Refs of the orders sent and not done."""
        return [ref for ref, tr in self.kernel.orders_by_ref.items() if tr.sent and not tr.done]

    def shutdown(self, timeout: float = 5.0) -> list[str]:
        """Cancel every working order and wait (up to `timeout` wall seconds) for the venue to
        confirm; returns the refs still unconfirmed."""
        k = self.kernel
        self.source.pump(self.tick)      # what the venue already said first: a fill in flight is not cancelled
        k._drain()
        k.stopping = True                # no chase step, no close at the natural price, after this
        for ref in self.working():
            k._cancel_why[ref] = "the run stopped"
            k.venue.cancel(ref)
        deadline = self.monotonic() + timeout
        while self.working() and self.monotonic() < deadline:
            self.source.pump(self.tick)
            k._drain()
        k._drain()
        return self.working()


def prep_others(prep: Prepared) -> list[str]:
    """The symbols the rules read besides the traded ones (symbol("VIX")), whose bars also come
    from the source."""
    return [s for s in prep.plan.inputs.symbols if s not in prep.symbols]


def live_kernel(prep: Prepared, venue, *, run_id: str, recorder=None, tags: tuple[str, int] | None = None,
                on_order=None, cash: float | None = None, gate: Callable[[str], str | None] | None = None,
                chain_fetch: Callable | None = None):
    """The kernel for a live run over the history `prep` holds now (its warm-up), streaming the
    plan bar by bar; returns (kernel, feed, timers) with the plan warmed up on that history.
    A strategy traded with option combos needs `chain_fetch(symbol, spot, expiries, when)`: the
    broker's chain of those expiries (runtime/chainsource.broker_desk)."""
    from dataclasses import replace

    from ..plan.evaluate import Stream
    from .kernel import Kernel, _Symbol
    from .session import run_settings

    plan = prep.plan
    symbols = {}
    for symbol in prep.symbols:
        if symbol not in prep.frames:       # a scanned name without bars: not traded (the scan says no data)
            continue
        sbars, bars = _symbol_bars(prep, symbol)
        entry_mask, flat_mask = _schedule_masks(prep, bars)
        values = [np.empty(len(sbars), dtype=object) if node.market else None for node in plan.nodes]
        symbols[symbol] = _Symbol(symbol, sbars, values, len(sbars), entry_mask, flat_mask, None, Stream(plan), bars,
                                  flat_masks=agent_flat_masks(prep, bars))
        symbols[symbol].held_mask, symbols[symbol].add_mask = cadence_masks(prep, bars)
    settings, fills = run_settings(prep, run_id)
    if cash is not None:
        settings = replace(settings, cash=float(cash))
    entries = [r for r in plan.rules if r.kind == "entry"]
    combo_rules = [r for r in entries if r.order in prep.orders and prep.orders[r.order].combo]
    combos = bool(entries) and len(combo_rules) == len(entries)
    desk = chains = None
    signals: dict = {}
    if combo_rules:
        if chain_fetch is None:
            raise ValueError("a strategy traded with option combos needs the broker's chains (chain_fetch)")
        from .chainsource import broker_desk

        desk, chains = broker_desk(prep, signals, chain_fetch)
        for st in symbols.values():
            st.combo, st.mixed = combos, not combos     # mixed: stock entries and combos, one position at a time
    kernel = Kernel(plan, symbols, venue, fills, settings, on_order=on_order, recorder=recorder, tags=tags,
                    desk=desk, chains=chains)
    signals.update(kernel.signals)
    if chains is not None:
        chains.runner_ref["runner"] = kernel
        for holder in (venue, getattr(venue, "wallet", None)):
            if holder is not None and hasattr(holder, "combo_quote"):
                holder.combo_quote = kernel.combo_quote
    timers = Timers()
    kernel.clock = timers
    feed = LiveFeed(kernel, prep, gate=gate)
    feed.warm_up()
    return kernel, feed, timers
