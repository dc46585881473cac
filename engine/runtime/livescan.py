"""A strategy's scanner in a live run (IB paper, live, or a dry run on IB's bars).

A simulated run scans the universe's whole history before the rules read `scan.*`
(runtime/scanning.strategy_scan). Live, the scan at a bar close needs every scanned name's bar
of that period, and they arrive from the broker one symbol at a time. LiveScan keeps each
scanned name's bars (the warm-up's history, then the bars as they complete) and:

- takes the scan times by the simulated rule, on the same bar clock: every close of a scanned
  name when the scanner has no `rescan`, else the first close at least `rescan` after the last
  scan (the warm-up's last scan is the first "last");
- runs the scan at time t once every scanned name with bars has a bar closing at t or later
  (it traded in that bar, or its next bar shows it did not), or once `wait` seconds of the
  venue's time have passed since t: a name still without news then is counted as "no data"
  for that scan, with the reason (late, or it did not trade);
- holds back a traded symbol's bar closing at t until the scan at t has run, so the rules read
  the scan of their own bar's close, as in a simulated run;
- evaluates with the scanner's own vectorised Plan over each name's bars (scanner/workspace.py),
  so the values at a bar are the ones a simulated run computes over the same bars, and appends
  the scan's row to the run's StrategyScan, which `scan.*` reads.
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from ..market.bars import bar_seconds
from ..scanner.result import NO_DATA
from ..scanner.workspace import run_scan
from .live import Bar, append_bar


@dataclass(frozen=True)
class LiveScanRun:
    """One live scan: its time (a bar close, ns UTC), the wall seconds it took, the names that
    were late (counted as no data) and the scan's row in the run's result."""

    time: int
    seconds: float
    late: tuple[str, ...]
    row: int


class LiveScan:
    def __init__(self, scan, sp, frames: dict[str, pd.DataFrame], *, bar: str, timezone: str, ws, universe,
                 wait: float | None = None, on_scan: Callable[[LiveScanRun], None] | None = None,
                 wall: Callable[[], float] = _time.perf_counter):
        from .scanning import symbol_inputs

        self.scan = scan                      # runtime.scanning.StrategyScan: extended in place
        self.sp = sp
        self.frames = dict(frames)            # scanned names and the symbols the scanner reads
        self.bar = bar
        self.seconds = bar_seconds(bar)
        self.timezone = timezone
        self.ws = ws
        self.universe = tuple(universe)
        self.daily = self.seconds >= 86400
        self._inputs_of = symbol_inputs
        rescan = sp.spec.rescan
        self.step = int(round(rescan * 1e9)) if rescan is not None else None
        # the bounded wait: half a bar, at least 10 s and at most 60 s of the venue's time
        self.wait = int((wait if wait is not None else min(max(self.seconds / 2, 10.0), 60.0)) * 1e9)
        self.on_scan = on_scan
        self.wall = wall
        times = scan.result.times
        self.last: int | None = int(times[-1]) if len(times) else None
        self.latest: dict[str, int] = {}
        for s in self.universe:
            f = self.frames.get(s)
            if f is not None and len(f):
                self.latest[s] = self._end_of(f.index[-1])
        self._closes: set[int] = set()
        self._cache: dict[str, tuple[object, object]] = {}
        self.runs: list[LiveScanRun] = []
        # a source's candidates (IB's market scanner): the names scanned at the next scan, the
        # rest of the universe scored no data with `not_candidate` as the reason. None: every name.
        self.candidates: set[str] | None = None
        self.not_candidate = "not a candidate"
        self.before_scan: Callable[[int], None] | None = None   # once per scan time, before it waits
        self.on_poll: Callable[[int], None] | None = None        # at every poll, with the venue's time
        self._asked: int | None = None

    # ---- bars ------------------------------------------------------------------------------
    def _end_of(self, t: pd.Timestamp) -> int:
        return int(pd.Timestamp(t).value) + int(self.seconds * 1e9)

    def end_of(self, bar: Bar) -> int:
        """A broker's bar's close as the run's frames index it (a daily bar: its session's date)."""
        t = pd.Timestamp(bar.start, tz="UTC").tz_convert(self.timezone)
        return self._end_of(t.normalize() if self.daily else t)

    def expected(self) -> list[str]:
        """The scanned names a scan waits for: the ones with bars (a name without any is no data),
        among the candidates when a source names them."""
        return [s for s in self.universe if s in self.latest and (self.candidates is None or s in self.candidates)]

    def admit(self, symbol: str, frame: pd.DataFrame) -> None:
        """A name's bars from now on (a source's new candidate, its history just fetched)."""
        self.frames[symbol] = frame
        self._cache.pop(symbol, None)
        if len(frame):
            self.latest[symbol] = self._end_of(frame.index[-1])

    def observe(self, symbol: str, bar: Bar) -> None:
        """A completed bar of a scanned name (or of a symbol the scanner reads)."""
        frame = self.frames.get(symbol)
        if frame is None or bar.sane() is not None:
            return
        grown = append_bar(frame, bar, self.timezone, self.daily)
        if grown is frame:
            return
        self.frames[symbol] = grown
        end = self._end_of(grown.index[-1])
        if symbol in self.universe:
            self.latest[symbol] = max(self.latest.get(symbol, 0), end)
            if self.last is None or end > self.last:
                self._closes.add(end)

    # ---- when -------------------------------------------------------------------------------
    def ready(self, t: int, now: int) -> bool:
        """May the scan at (or a traded bar closing at) t go ahead: every scanned name known
        through t, or the wait after t over."""
        return now >= t + self.wait or all(self.latest.get(s, 0) >= t for s in self.expected())

    def _next(self) -> int | None:
        for c in sorted(self._closes):
            if self.last is None or self.step is None or c - self.last >= self.step:
                return c
            self._closes.discard(c)        # too soon after the last scan: not a scan time
        return None

    def advance(self, now: int) -> int:
        """Run every scan that is due and ready by the venue's time `now`; returns how many ran."""
        ran = 0
        if self.on_poll is not None:
            self.on_poll(now)
        while (t := self._next()) is not None:
            if self.before_scan is not None and self._asked != t:
                self._asked = t        # the source asked once per scan time, before the scan waits on its names
                self.before_scan(t)
            if not self.ready(t, now):
                break
            self._run(t)
            self._closes = {c for c in self._closes if c > t}
            ran += 1
        return ran

    def holds(self, end: int, now: int) -> bool:
        """Must a traded bar closing at `end` wait (its close's scan has not run yet)?"""
        t = self._next()
        return (t is not None and t <= end) or not self.ready(end, now)

    # ---- the scan ---------------------------------------------------------------------------
    def _inputs(self) -> dict:
        out = {}
        names = [s for s in self.universe if s in self.frames and (self.candidates is None or s in self.candidates)]
        others = self.sp.plan.inputs.symbols
        for s in names:
            frame = self.frames[s]
            key = (frame, *(self.frames.get(o) for o in others))
            cached = self._cache.get(s)
            if cached is not None and len(cached[0]) == len(key) and all(a is b for a, b in zip(cached[0], key)):
                out[s] = cached[1]
                continue
            got = self._inputs_of(self.sp, {s: frame, **{o: self.frames[o] for o in others if o in self.frames}},
                                  bar=self.bar, timezone=self.timezone, ws=self.ws, universe=[s])
            self._cache[s] = (key, got[s])
            out[s] = got[s]
        return out

    def _run(self, t: int) -> None:
        t0 = self.wall()
        r = self.scan.result
        row = run_scan(self.sp, self._inputs(), bar_seconds=self.seconds, times=np.array([t], dtype=np.int64),
                       universe=r.symbols, source=r.source, timezone=self.timezone)
        late = tuple(s for s in self.expected() if self.latest.get(s, 0) < t)
        when = pd.Timestamp(t, tz="UTC").tz_convert(self.timezone)
        shown = f"{when:%Y-%m-%d}" if self.daily else f"{when:%H:%M}"
        for s in late:
            col = r.symbols.index(s)
            row.status[0, col] = NO_DATA
            row.picked[0, col] = False
            row.late[(t, s)] = (f"no data: its bar closing at {shown} had not come from the broker "
                                f"{self.wait / 1e9:g} s after the close (late, or it did not trade)")
        if self.candidates is not None:
            for col, s in enumerate(r.symbols):
                if s not in self.candidates:
                    row.status[0, col] = NO_DATA
                    row.picked[0, col] = False
                    row.late[(t, s)] = self.not_candidate
        r.extend(row)
        self.scan.__dict__.pop("_pick_rows", None)
        self.last = t
        done = LiveScanRun(t, self.wall() - t0, late, len(r.times) - 1)
        self.runs.append(done)
        if self.on_scan is not None:
            self.on_scan(done)


__all__ = ["LiveScan", "LiveScanRun"]


# ---- on IB: what the run needs from a scanner, and the lines its picks take ----------------

def _spec(strategy, overrides):
    from ..plan.build import load_strategy
    from .scanning import scanner_of

    doc, ws = load_strategy(strategy, overrides)
    return scanner_of(doc, ws) if doc.get(("scanner",)) is not None else None, doc, ws


def refuse_unsupported(doc, ws) -> None:
    """What a scanner says that an IB run cannot do yet, refused at its line before connecting:
    a scan on other bars than the strategy's (live, the run streams one bar size per name)."""
    from ..check.model import DataSpec
    from ..diagnostics import DiagnosticError
    from .scanning import scanner_of

    spec = scanner_of(doc, ws)
    if spec is None:
        return
    own = DataSpec.from_spec(doc.get(("data",)))
    if spec.data is not None and spec.data.bar and bar_seconds(spec.data.bar) != bar_seconds(own.bar):
        raise DiagnosticError([spec.doc.diag(spec.where("data", "bar"), f"data.bar: a scan on {spec.data.bar} bars "
                                             f"under a strategy on {own.bar} bars is not supported in runs on IB "
                                             "(paper, live or --dry-run --broker ib) yet",
                                             "scan on the strategy's bar size in an IB run (backtest and "
                                             "`run --broker sim` scan on other bars)")])


def scanned_names(strategy, overrides) -> set[str]:
    """The names a strategy's scanner ranks (empty without a scanner)."""
    from ..check.model import universe_symbols

    spec, doc, _ = _spec(strategy, overrides)
    if spec is None:
        return set()
    return set(spec.universe) if spec.universe is not None else set(universe_symbols(doc))


def scan_warmup(strategy, overrides) -> int:
    """Bars a scanned name needs before every factor has a value."""
    from ..scanner.compile import compile_scanner

    spec, _, _ = _spec(strategy, overrides)
    return compile_scanner(spec).warmup if spec is not None else 0


class ScanOnIB:
    """A live scan in an IB run: the scans journaled, the picks' market-data line classes
    (data.subscriptions.priorities: a pick of the latest scan is a top signal, a name it scored
    and did not pick a scanner name, a name it ranked and could not score (no data, dropped by
    the prefilter) is below every class, and a traded name it does not rank is on the
    watchlist), and the figures."""

    def __init__(self, live: LiveScan, ib, traded: set[str], journal, run_id: str, say):
        self.live, self.ib, self.traded = live, ib, traded     # the run's set: a source's new candidates join it
        self.journal, self.run_id, self.say = journal, run_id, say
        self.lines_max = 0
        live.on_scan = self._scanned

    def priority(self, symbol: str) -> str:
        from ..scanner.result import BELOW, BEYOND, PICKED

        r = self.live.scan.result
        if symbol not in r.symbols:
            return "watchlist"       # traded, and not ranked by the scanner: always watched
        if not len(r.times):
            return "other"
        code = int(r.status[-1, r.symbols.index(symbol)])
        return "top_pick" if code == PICKED else "pick" if code in (BEYOND, BELOW) else "other"

    def _scanned(self, done: LiveScanRun) -> None:
        r = self.live.scan.result
        e = done.row
        picks = [(int(r.rank[e, s]), sym, float(r.score[e, s])) for s, sym in enumerate(r.symbols) if r.picked[e, s]]
        text = r.explanation(e)
        if picks:
            text += "; picks: " + ", ".join(f"{sym} (rank {rank}, score {score:.1f})" for rank, sym, score in
                                            sorted(picks))
        if done.late:
            text += f"; {len(done.late)} late, counted as no data: {', '.join(done.late)}"
        text += f"; scanned in {done.seconds * 1000:.1f} ms"
        ts = pd.Timestamp(done.time, tz="UTC").isoformat()
        self.journal.note(self.run_id, ts, "scan", r.spec.name, text)
        self._lines()

    def _lines(self) -> None:
        """Each traded name's line at the new scan's priority (an open position's stays a
        position's): a new top pick asks for a line, one that left the picks keeps its line at a
        lower priority, which a higher one may take (or the TTL frees)."""
        held = set(self.ib.held_symbols())
        lines = {s: p.name.lower() for s, p in self.ib.budget.held().items()}
        from ..brokers.ib.broker import _PRIORITY

        rank = self.ib.budget.rank
        for symbol in sorted(self.traded, key=lambda s: (-rank(_PRIORITY[self.priority(s)]), s)):
            if symbol in held:
                continue
            want = self.priority(symbol)
            have = lines.get(symbol)
            if have == want or (have is None and want != "top_pick"):
                continue
            why = self.ib.subscribe(symbol, want)
            if why and want == "top_pick" and "no market data line" not in why:
                self.say(f"market data: {why}")
        self.lines_max = max(self.lines_max, len(self.ib.budget.held()))

    def figures(self) -> dict:
        runs = self.live.runs
        out = {"scans": len(runs), "scan_lines_max": self.lines_max}
        if runs:
            ms = [1000 * r.seconds for r in runs]
            out["scan_ms_median"] = round(float(np.median(ms)), 3)
            out["scan_ms_max"] = round(float(np.max(ms)), 3)
            out["scan_late_names"] = sum(len(r.late) for r in runs)
        return out


def scanner_live(prep, kernel, feed, ib, journal, run_id: str, say, traded: set[str]) -> ScanOnIB:
    """The live scan of an IB run wired in: the kernel reads its reasons, the feed holds a
    traded bar until its close's scan has run and polls the names only the scan reads."""
    from ..scanner.compile import compile_scanner
    from .scanning import scanner_of

    spec = scanner_of(prep.doc, prep.ws)
    sp = compile_scanner(spec)
    scan = prep.scan
    universe = scan.result.symbols
    live = LiveScan(scan, sp, scan.frames, bar=prep.bar, timezone=prep.timezone, ws=prep.ws, universe=universe)
    kernel.scan_reason = scan.reason
    feed.scan = live
    reads = set(prep.plan.inputs.symbols)
    feed.scan_only = sorted(s for s in list(universe) + list(sp.plan.inputs.symbols)
                            if s in scan.frames and s not in traded and s not in reads)
    return ScanOnIB(live, ib, traded, journal, run_id, say)


# ---- candidates from IB's market scanner ----------------------------------------------------

class IBCandidates:
    """A scanner's candidates from IB's market scanner in an IB run: IB asked at the start and at
    every scan time (brokers/ib/scanner.py), its rows kept when they are in the bound (the
    scanner's universe, else the strategy's), each request journaled with its candidates, the
    new ones, the rows dropped and why, and the names out of IB's list. A name out of the list
    since `ttl_ns` of the venue's time (data.subscriptions.ttl) that holds no position is
    `expired`: the run releases its stream and line."""

    def __init__(self, source, bound, ib, *, name: str, ttl_ns: int):
        self.source, self.bound, self.ib, self.name = source, tuple(bound), ib, name
        self.ttl_ns = int(ttl_ns)
        self.current: tuple[str, ...] = ()
        self.out_since: dict[str, int] = {}
        self.counts: list[int] = []           # candidates per request
        self.notes: list[tuple[int, str, str, str]] = []    # (venue time, kind, subject, text) not yet journaled
        self.changed = 0                      # requests whose candidates differed from the one before

    def refresh(self) -> tuple[list[str], list[str]]:
        """Ask IB now; (the names that became candidates, the names that left the list). When IB
        does not answer, the candidates stay as they were and the failure is noted."""
        from ..brokers.ib.scanner import ScanError

        now = self.ib.now()
        try:
            got = self.ib.scan(self.source)
        except ScanError as exc:
            self.notes.append((now, "ib_scanner", self.name, f"{exc}: the candidates stay "
                                                             f"{', '.join(self.current) or 'none'}"))
            return [], []
        inside = [c.symbol for c in got.candidates if c.symbol in self.bound]
        dropped = list(got.dropped) + [(c.symbol, f"not in the universe of scanner {self.name}")
                                       for c in got.candidates if c.symbol not in self.bound]
        new = [s for s in inside if s not in self.current]
        gone = [s for s in self.current if s not in inside]
        if self.counts and (new or gone):
            self.changed += 1
        self.current = tuple(inside)
        for s in inside:
            self.out_since.pop(s, None)
        for s in gone:
            self.out_since.setdefault(s, now)
        self.counts.append(len(inside))
        text = f"{self.source.describe()}: {got.rows} rows, {len(inside)} candidates"
        text += (": " + ", ".join(inside)) if inside else ""
        if new and len(self.counts) > 1:
            text += f"; new: {', '.join(new)}"
        if gone:
            text += f"; out of the list: {', '.join(gone)}"
        if dropped:
            text += "; dropped: " + ", ".join(f"{s} ({why})" for s, why in dropped)
        text += f"; asked in {got.seconds * 1000:.1f} ms"
        self.notes.append((now, "ib_scanner", self.name, text))
        return new, gone

    def expired(self, held) -> list[str]:
        """Names out of IB's list for the TTL that are not in `held`."""
        now = self.ib.now()
        return [s for s, since in self.out_since.items() if now - since >= self.ttl_ns and s not in held]

    def take_notes(self) -> list[tuple[int, str, str, str]]:
        out, self.notes = self.notes, []
        return out


class IBSourceRun:
    """The run's side of IBCandidates: before each scan IB is asked again; a new candidate gets
    its history (the warm-up's bars), joins the live scan and, when the strategy trades it, the
    kernel, and gets a bar stream and a market-data line below the picks' (the scan then gives
    the picks theirs); a name out of IB's list past the TTL with no position loses its stream and
    line (its position's symbol, if it holds one, stays managed: stream, line and exits)."""

    def __init__(self, cands: IBCandidates, on_ib: "ScanOnIB", feed, prep, *, bars: int, session: str,
                 streamed: set[str]):
        self.cands, self.on_ib, self.feed, self.prep = cands, on_ib, feed, prep
        self.bars, self.session = bars, session
        self.streamed = streamed             # names whose bars stream now
        self.admitted: list[str] = []
        self.released: list[str] = []
        live = on_ib.live
        live.candidates = set(cands.current)
        live.not_candidate = f"not among the candidates of {cands.source.describe()} at this scan"
        live.before_scan = self.before_scan
        live.on_poll = self.on_poll

    def journal(self) -> None:
        for t, kind, subject, text in self.cands.take_notes():
            self.on_ib.journal.note(self.on_ib.run_id, pd.Timestamp(t, tz="UTC").isoformat(), kind, subject, text)

    def busy(self, symbol: str) -> bool:
        """Does the run need `symbol`'s bars whatever IB lists: a position, or an order decided,
        working or closing on it (an entry sent before its name left the list may fill after)."""
        k = self.feed.kernel
        if symbol in k.ledger.positions:
            return True
        st = k.syms.get(symbol)
        if st is not None and (st.pending or st.working_entry or st.closing):
            return True
        return any(tr.symbol == symbol and not tr.done for tr in k.orders_by_ref.values())

    def gate(self, symbol: str) -> str | None:
        """Why an entry on `symbol` may not go (None: it may): its bar stream was released (a bar
        decided late, after its name left IB's list), so no position would have bars to exit on."""
        if symbol in self.streamed or symbol not in self.on_ib.live.universe:
            return None
        return (f"{symbol}: out of IB's scanner list and its bar stream released: no entry on a name "
                "whose exits would have no bars")

    def before_scan(self, t: int) -> None:
        new, _ = self.cands.refresh()
        for s in new:
            if s not in self.streamed:
                self._admit(s)
        self.on_ib.live.candidates = {s for s in self.cands.current if s in self.on_ib.live.frames}
        self.on_poll(self.on_ib.ib.now())

    def on_poll(self, now: int) -> None:
        """The TTL between scans: a name out of IB's list past it, with no position or order, is
        released; a position's symbol without a stream gets one again."""
        ib = self.on_ib.ib
        for s in self.cands.expired(()):
            if not self.busy(s):
                self._release(s)
        for s in sorted(set(ib.held_symbols()) - self.streamed):
            # a position's symbol stays managed: its stream again (the day's bars fill the gap)
            ib.stream(s, self.on_ib.live.bar, self.session)
            self.streamed.add(s)
            self.cands.notes.append((ib.now(), "candidate", s, f"{s}: holds a position: its bar stream started "
                                                               "again, whatever IB's scanner lists"))
        if self.cands.notes:
            self.journal()

    def _admit(self, symbol: str) -> None:
        from ..brokers.ib.contracts import ContractError
        from ..brokers.ib.history import HistoryError

        ib, live, prep = self.on_ib.ib, self.on_ib.live, self.prep
        if symbol in self.released and symbol in live.frames and symbol in prep.frames:
            # listed again after its stream was released: the stream's first answer brings the bars
            # it missed (an entry never goes on them: the scans had it out of the candidates)
            held = live.frames[symbol]
            live.admit(symbol, held)
            if symbol in self.feed.kernel.syms:
                self.feed.admit(symbol)
                self.on_ib.traded.add(symbol)
                ib.subscribe(symbol, "other")
            elif symbol not in self.feed.scan_only:
                self.feed.scan_only.append(symbol)
            since = live._end_of(held.index[-1]) - int(live.seconds * 1e9) if len(held) else None
            ib.stream(symbol, live.bar, self.session, since=since)
            self.streamed.add(symbol)
            self.admitted.append(symbol)
            self.cands.notes.append((ib.now(), "candidate", symbol, f"{symbol}: a candidate of IB's scanner again: "
                                                                    "its bar stream started again from its last bar"))
            return
        try:
            frame = ib.history_frame(symbol, live.bar, self.bars, prep.timezone, self.session)
        except (HistoryError, ContractError) as exc:
            self.cands.notes.append((ib.now(), "candidate", symbol, f"{symbol}: a new candidate without history "
                                                                    f"at IB ({exc}): scored no data"))
            return
        if not len(frame):
            self.cands.notes.append((ib.now(), "candidate", symbol, f"{symbol}: IB has no {live.bar} bars of it: "
                                                                    "scored no data"))
            return
        live.admit(symbol, frame)
        traded = symbol in prep.symbols
        if traded:
            from .ibrun import use_ib_tick

            prep.frames[symbol] = frame.copy()
            use_ib_tick(prep, ib, symbol, self.on_ib.say)
            self.feed.admit(symbol)
            self.on_ib.traded.add(symbol)
            why = ib.subscribe(symbol, "other")       # below the picks': the scan gives picks theirs
            if why and "no market data line" not in why:
                self.on_ib.say(f"market data: {why}")
        elif symbol not in self.feed.scan_only:
            self.feed.scan_only.append(symbol)
        ib.stream(symbol, live.bar, self.session)
        self.streamed.add(symbol)
        self.admitted.append(symbol)
        self.cands.notes.append((ib.now(), "candidate", symbol, f"{symbol}: a new candidate of IB's scanner: "
                                                        f"{len(frame)} bars of history, its bar stream started"
                                                        + (", traded from its next bar" if traded else "")))

    def _release(self, symbol: str) -> None:
        ib = self.on_ib.ib
        ib.unstream(symbol)
        ib.release(symbol)
        self.streamed.discard(symbol)
        self.feed.held = [h for h in self.feed.held if h[2] != symbol]    # its bars waiting for a scan: not decided
        self.cands.out_since.pop(symbol, None)
        if symbol in self.feed.scan_only:
            self.feed.scan_only.remove(symbol)
        self.released.append(symbol)
        self.cands.notes.append((ib.now(), "released", symbol, f"{symbol}: out of IB's scanner list for "
                                                       f"{self.cands.ttl_ns / 60e9:g} min, no position or order: its "
                                                       "bar stream and market-data line released"))

    def figures(self) -> dict:
        counts = self.cands.counts
        return {"ib_candidates_per_scan": list(counts), "ib_candidate_changes": self.cands.changed,
                "ib_candidates_admitted": len(self.admitted), "ib_candidates_released": len(self.released)}
