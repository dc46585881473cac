"""Preparing a run: the strategy loaded and checked, its symbols and instruments resolved, its bars
loaded, resampled and turned into the arrays a run reads, its schedule as masks."""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..market.series import SymbolBars
from ..check.model import (AgentSettings, DataSpec, Instrument, OrderTemplate, Schedule, SimSettings, agent_settings,
                           instrument, order_templates, risk_limits, universe_symbols)
from ..config.documents import Document, Workspace
from ..diagnostics import DiagnosticError
from ..market.bars import bar_seconds, load_bars, resample
from ..market.futures import ContractHistory
from ..market.clock import clock_arrays
from ..plan import nodes as N
from ..plan.build import build_plan, load_strategy
from ..plan.evaluate import Bars, align_asof
from ..risk.limits import RiskLimits

_CLOCK_NEEDS_CALENDAR = {"minutes_to_close", "minutes_since_open"}


@dataclass
class Prepared:
    doc: Document
    ws: Workspace
    plan: N.Plan
    path: Path
    symbols: list[str]
    instruments: dict[str, Instrument]
    frames: dict[str, pd.DataFrame]      # traded symbols and the other symbols the rules read
    settings: dict
    timezone: str
    bar: str
    data_path: Path
    start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None
    overrides: dict = field(default_factory=dict)
    chains: dict | None = None     # option chain snapshots by quote date (data.chains)
    fronts: dict = field(default_factory=dict)  # futures roots with per-contract history: market.futures.FrontSeries
    arrays: dict = field(default_factory=dict, repr=False)  # _symbol_bars' arrays per symbol
    scan: object = None            # the scanner's results (runtime.scanning.StrategyScan), when it has one
    missing: list = field(default_factory=list)   # traded symbols without bars (a scanner's universe)
    left_out: dict = field(default_factory=dict)  # symbol -> (bars left out, bars in the file, the first's time):
                                                  # outside regular hours (data.session: regular)
    days_held: int | None = None   # last_days: the trading days the data has (fewer than asked: all replayed)

    @functools.cached_property
    def orders(self) -> Mapping[str, OrderTemplate]:
        """The strategy's order templates, typed (check.model)."""
        return order_templates(self.doc.get(("orders",)))

    @functools.cached_property
    def schedule(self) -> Schedule:
        """The strategy's schedule, typed (check.model)."""
        return Schedule.from_spec(self.doc.get(("schedule",)))

    @functools.cached_property
    def agents(self) -> tuple[AgentSettings, ...]:
        """The strategy's agents' settings (weights, own flat-by), in the order they are listed."""
        return agent_settings(self.doc)

    @functools.cached_property
    def limits(self) -> RiskLimits:
        """The risk limits: the strategy's risk file, or inline limits over the file they extend."""
        return risk_limits(self.doc)

    @property
    def sim(self) -> SimSettings:
        """The simulator's settings (`backtest:` with --cash, --from and --to applied), typed."""
        return SimSettings.from_spec(self.settings)


def _fail(doc: Document, where: tuple, message: str, hint: str = "") -> DiagnosticError:
    return DiagnosticError([doc.diag(where, message, hint)])


def _spacing(index: pd.DatetimeIndex) -> float | None:
    if len(index) < 3:
        return None
    gaps = np.diff(index.as_unit("ns").asi8)   # UTC epoch ns of the aware index: no converted copies
    return float(_median(gaps)) / 1e9


def _median(values: np.ndarray) -> float:
    """np.median, without its copy and partition when the middle element is the median (regular
    bars: most gaps are equal)."""
    n = len(values)
    k = n // 2
    c = values[k]
    below = int(np.count_nonzero(values < c))
    upto = below + int(np.count_nonzero(values == c))
    first = k if n % 2 else k - 1      # the middle element(s): sorted positions first..k
    if below <= first and k < upto:
        return float(c)
    return float(np.median(values))


def prepare(path: str | Path, overrides: dict[str, str] | None = None, data: str | Path | None = None,
            start: str | None = None, end: str | None = None, cash: float | None = None,
            chains: str | Path | None = None, frames_from=None, scan_frames_from=None) -> Prepared:
    """`frames_from(symbols, bar, timezone) -> {symbol: frame}`: the bars come from a broker's
    history (a live run's warm-up) instead of data.source; `scan_frames_from` likewise for the
    names a scanner ranks that the run does not trade (a name without history is left out)."""
    doc, ws = load_strategy(path, overrides)
    if frames_from is None and doc.get(("scanner",)) is not None:
        from .scanning import refuse_ib_source, scanner_of

        spec = scanner_of(doc, ws)
        if spec is not None and spec.source is not None:      # before any data is looked for
            raise DiagnosticError([refuse_ib_source(spec, "a backtest or `run --broker sim` (a dry run on it too)")])
    plan = build_plan(doc, ws, overrides)
    settings = dict(doc.get(("backtest",)) or {})
    if cash is not None:
        settings["cash"] = cash
    if start:
        settings["start"] = start
    if end:
        settings["end"] = end
    timezone = Schedule.from_spec(doc.get(("schedule",))).timezone
    spec = DataSpec.from_spec(doc.get(("data",)))
    bar = spec.bar
    symbols = universe_symbols(doc)
    if not symbols and doc.get(("universe",)) is None and doc.get(("scanner",)) is not None:
        from .scanning import scanner_of

        scanner = scanner_of(doc, ws)      # no universe: the scanner's
        symbols = list(scanner.universe or ()) if scanner is not None else []
    if not symbols:
        raise _fail(doc, ("universe",), "no symbols to backtest", "list them under universe:")
    from_flag = chains is not None           # --chains: relative to the current folder
    chains_source = chains if from_flag else spec.chains
    chains = None
    if chains_source:
        from ..market.chains import load_chains
        from .chainsource import underlying_from_chains

        chains_path = Path(chains_source).resolve() if from_flag else (doc.abspath.parent / chains_source).resolve()
        if not chains_path.exists() and from_flag:
            from ..diagnostics import error

            raise DiagnosticError([error("--chains", 0, 0, f"option chains not found: {chains_source} (looked for "
                                         f"{chains_path})", "--chains is relative to the current folder: give a "
                                         "chains file that exists")])
        if not chains_path.exists():
            raise _fail(doc, ("data", "chains"), f"option chains not found: {chains_source} (looked for {chains_path})",
                        f"data.chains is relative to {doc.path}'s folder: fix it, or pass --chains FILE (relative "
                        "to the current folder) to run on other chains")
        try:
            chains = load_chains(chains_path)          # a file of one underlying (SPXW for SPX)
        except DiagnosticError:
            chains = load_chains(chains_path, underlying=symbols[0])
    wanted = list(dict.fromkeys(symbols + plan.inputs.symbols))
    combos = any(t.combo for t in order_templates(doc.get(("orders",))).values())
    if combos and chains is None and SimSettings.from_spec(settings).options.iv == "vix" and "VIX" not in wanted:
        wanted.append("VIX")  # synthesised chains take their volatility from VIX
    if frames_from is not None:
        frames = frames_from(wanted, bar, timezone)
        data_path = Path("broker")
    elif data is None and chains is not None and not spec.source:
        # the underlying's daily prices come with the chain snapshots
        frames = {symbols[0]: underlying_from_chains(chains, timezone)}
        data_path = chains_path
        if len(wanted) > 1:
            raise _fail(doc, ("data",), f"only {symbols[0]}'s prices come with the chains; "
                        f"{', '.join(wanted[1:])} need data.source")
    else:
        if data is None:
            source = spec.source
            if not source:
                options = any(isinstance(o, dict) and o.get("legs") for o in (doc.get(("orders",)) or {}).values())
                raise _fail(doc, ("data",), "no bar data: data.source is not set and no --data was given",
                            "set data.source in the strategy (a file, or a folder of SYMBOL.csv files), or pass "
                            "--data FILE_OR_FOLDER" + (" (for options, --chains with end-of-day chain snapshots is "
                                                       "enough)" if options else ""))
            data_path = (doc.abspath.parent / source).resolve()
            if not data_path.exists():
                raise _fail(doc, ("data", "source"), f"data source not found: {source} (looked for {data_path})",
                            f"paths are relative to {doc.path}'s folder: fix data.source, or pass --data "
                            "FILE_OR_FOLDER to run on other bars")
        else:
            data_path = Path(data)
            if not data_path.exists():
                from ..diagnostics import error

                raise DiagnosticError([error("--data", 0, 0, f"bar data not found: {data} (looked for "
                                             f"{data_path.resolve()})", "--data is relative to the current folder: "
                                             "give a CSV or Parquet file, or a folder of SYMBOL files")])
        adjusted = doc.get(("data", "adjusted"))      # true, or {round: N}: adjusted, rounded to N decimals
        # with a scanner, a symbol of the universe without bars is not traded: the scan counts
        # it as having no data (another symbol the rules read must be there)
        scanned = doc.get(("scanner",)) is not None
        frames = load_bars(data_path, symbols=wanted if data_path.is_dir() or len(wanted) > 1 else wanted,
                           timezone=timezone, adjusted=spec.adjusted, on_bad_bar=spec.on_bad_bar,
                           round_adjusted=adjusted.get("round") if isinstance(adjusted, dict) else None,
                           missing="omit" if scanned else "error")
        if not data_path.is_dir() and len(frames) == 1 and len(wanted) == 1:
            frames = {wanted[0]: next(iter(frames.values()))}
        if scanned:
            absent = [s for s in plan.inputs.symbols if s not in frames and s not in symbols]
            if absent or not any(s in frames for s in symbols):
                found = ", ".join(sorted(frames)) or "none"
                raise _fail(doc, ("data",), f"no bars for {', '.join(absent or symbols)} in {data_path} (found: "
                            f"{found})", "name files after their symbols (SPY.csv) or add a symbol column")
    instruments = {s: instrument(ws, doc, s) for s in wanted}
    histories = {s: f for s, f in frames.items() if isinstance(f, ContractHistory)}
    for symbol, history in histories.items():
        history.symbol = symbol
    roots = dict(instruments)        # the instrument map's own facts (its calendar rolls a root)
    calendar = (doc.get(("schedule",)) or {}).get("calendar")
    if calendar:       # schedule.calendar: the traded symbols' sessions and holidays, over their instruments'
        instruments.update({s: dataclasses.replace(instruments[s], calendar=calendar) for s in symbols})
    want_seconds = bar_seconds(bar)
    left_out: dict = {}
    for symbol, frame in list(frames.items()):
        history = histories.get(symbol)
        index = frame.index if history is None else \
            pd.DatetimeIndex(np.unique(np.concatenate([f.index.as_unit("ns").asi8 for f in history.contracts.values()])),
                             tz="UTC")
        have = _spacing(index)
        if have is not None and have < want_seconds * 0.999 and want_seconds < 86400 * 28:
            # data.session: extended keeps the bars outside the calendar's regular hours (bins on the clock)
            to_bar = functools.partial(resample, bar=bar, timezone=timezone, calendar=instruments[symbol].calendar
                                       if spec.session == "regular" else None)
            if history is None:
                frames[symbol] = to_bar(frame)
            else:       # each contract on its own: a bin never mixes two contracts' trades
                history.contracts = {c: to_bar(f) for c, f in history.contracts.items()}
        elif have is not None and have <= want_seconds * 1.5 and spec.session == "regular" and want_seconds < 86400 \
                and frames_from is None and history is None and instruments.get(symbol) is not None and instruments[symbol].calendar and len(frame) > 1:
            # a file already at the bar size: its bars outside regular hours are left out, as a
            # resample leaves them out of finer bars (said on stderr by the CLI)
            from ..market.bars import outside_regular_hours

            outside = outside_regular_hours(frame, instruments[symbol].calendar, timezone)
            if outside.any():
                left_out[symbol] = (int(outside.sum()), len(frame), frame.index[int(np.flatnonzero(outside)[0])])
                frames[symbol] = frame[~outside]
        if have is not None and have > want_seconds * 1.5 and want_seconds < 86400 and symbol in symbols:
            # (another symbol read through symbol("X") may be coarser: it is aligned as of each bar)
            raise _fail(doc, ("data", "bar"), f"{symbol}'s data has bars of about {have / 60:g} minutes, "
                        f"longer than the strategy's {bar} bars", "use finer data or a longer bar size")
    fronts = {s: _front_series(doc, ws, h, roots[s], timezone) for s, h in histories.items()}
    frames.update({s: f.frame for s, f in fronts.items()})

    def to_ts(day: str) -> pd.Timestamp:
        return pd.Timestamp(day).tz_localize(timezone)

    if settings.get("start") and frames_from is None:
        frames = _warm_from(settings, frames, symbols, to_ts(settings["start"]))

    prepared = Prepared(doc, ws, plan, Path(path), symbols, instruments, frames, settings, timezone, bar, data_path,
                        to_ts(settings["start"]) if settings.get("start") else None,
                        to_ts(settings["end"]) + pd.Timedelta(days=1) if settings.get("end") else None,
                        dict(overrides or {}))
    prepared.chains = chains
    prepared.fronts = fronts
    prepared.missing = [s for s in symbols if s not in frames]
    prepared.left_out = left_out
    if plan.inputs.scan:
        from .scanning import strategy_scan

        prepared.scan = strategy_scan(prepared, data if frames_from is None else None,
                                      fetch=scan_frames_from)
    if any(t.combo for t in prepared.orders.values()):
        from .chainsource import option_problems

        problems = option_problems(prepared, simulated=frames_from is None)
        if problems:
            raise DiagnosticError(problems)
    for symbol in symbols:
        if symbol in frames:
            _symbol_bars(prepared, symbol)
    return prepared


def _warm_from(settings: dict, frames: dict[str, pd.DataFrame], traded: list[str],
               start: pd.Timestamp) -> dict[str, pd.DataFrame]:
    """backtest.warmup: from_start: when the run's start is given (backtest.start, --from), the
    bars before it are left out, so indicators start at the start, as on files that begin there
    (every symbol's, those read through symbol("X") too). before_start (the default) keeps them
    as warm-up. A traded symbol with no bar from the start on keeps its bars: it has nothing to
    do in the window either way, and the window's checks still say what range the data has."""
    if settings.get("warmup", "before_start") != "from_start":
        return frames
    out = {}
    for symbol, frame in frames.items():
        cut = frame[frame.index >= start]
        if len(cut) < len(frame) and not (symbol in traded and len(cut) == 0):
            cut.attrs.update(frame.attrs)     # what loading noted (bars skipped) stays with the bars
            frame = cut
        out[symbol] = frame
    return out


def _front_series(doc: Document, ws: Workspace, history: ContractHistory, inst: Instrument, timezone: str):
    """A futures root's per-contract history stitched into its front month (market.futures)."""
    from ..diagnostics import error
    from ..market.futures import StitchError, stitch

    if inst.sec_type != "FUT":
        where = ws.instruments_for(doc)
        raise DiagnosticError([error(history.path, 1, history.column,
                                     f"a contract column ({history.column_name!r}) says this is a futures history, "
                                     f"but {history.symbol} is not a futures root of the instrument map"
                                     f"{' (' + str(where.path) + ')' if where is not None else ''}",
                                     f"give {history.symbol} a root with sec_type: FUT, months and roll_days, or "
                                     "use a file without the contract column")])
    try:
        front = stitch(history, root=history.symbol, months=inst.months, roll_days=inst.roll_days,
                       calendar_name=inst.calendar, timezone=timezone)
    except StitchError as exc:
        raise DiagnosticError([error(history.path, exc.line, history.column, str(exc), exc.hint)]) from None
    if history.skipped:
        front.frame.attrs["bad_bars"] = history.skipped
    return front


def last_days(prep: Prepared, days: int) -> Prepared:
    """The same run limited to the last `days` trading days of the data (earlier bars stay
    loaded as warm-up, whatever backtest.warmup says: a rehearsal of a live run, which warms up
    on its history)."""
    dates = sorted({d for frame in (prep.frames[s] for s in prep.symbols if s in prep.frames)
                    for d in frame.index.tz_convert(prep.timezone).normalize()
                    if prep.end is None or d < prep.end})      # the last days before --to / backtest.end
    if not dates:
        return prep
    first = dates[-min(days, len(dates))]
    prep.start = first
    prep.days_held = len(dates)
    return prep


def _ns(index: pd.DatetimeIndex) -> np.ndarray:
    return index.as_unit("ns").asi8.copy()   # UTC epoch ns of the aware index (one copy, not three)


def _symbol_bars(prep: Prepared, symbol: str) -> tuple[SymbolBars, Bars]:
    """A symbol's bars as the arrays the run reads (times, prices, clock, other symbols aligned),
    made once per Prepared and reused by every run of it (kept with the frame and plan they were
    made from, so a changed frame or plan is made again)."""
    frame = prep.frames[symbol]
    made_from = (frame, prep.plan, prep.doc, prep.instruments.get(symbol), prep.scan,
                 *(prep.frames.get(o) for o in prep.plan.inputs.symbols))
    made = prep.arrays.get(symbol)
    if made is not None and made[2] == (prep.bar, prep.timezone) and len(made[0]) == len(made_from) \
            and all(a is b for a, b in zip(made[0], made_from)):
        return made[1]
    out = _make_symbol_bars(prep, symbol, frame)
    prep.arrays[symbol] = (made_from, out, (prep.bar, prep.timezone))
    return out


def _make_symbol_bars(prep: Prepared, symbol: str, frame: pd.DataFrame) -> tuple[SymbolBars, Bars]:
    inst = prep.instruments[symbol]
    seconds = bar_seconds(prep.bar)
    start = _ns(frame.index)
    end = start + int(seconds * 1e9)
    sched = prep.schedule
    flat_by = sched.flat_by is not None or any(a.flat_by is not None for a in prep.agents if a.own_flat_by)
    intraday_schedule = seconds < 86400 and (sched.entry_window is not None or flat_by or
                                             sched.held_grid(seconds) is not None or
                                             sched.scan_grid(seconds) is not None)
    needs_calendar = bool(prep.plan.inputs.clock & _CLOCK_NEEDS_CALENDAR) or (flat_by and seconds < 86400)
    want = set(prep.plan.inputs.clock)
    if intraday_schedule:
        want.add("time")
        if flat_by:
            want.add("minutes_to_close")
    if _needs_session(prep):
        want.add("session")
    clock = clock_arrays(frame.index, prep.timezone, seconds, inst.calendar if needs_calendar else None, want)
    session = clock.get("session")
    if session is None:  # nothing reads it: no day order, no combo, no session indicator
        session = np.zeros(len(frame))
    fields = {c: frame[c].to_numpy(dtype=np.float64) for c in ("open", "high", "low", "close", "volume")}
    others = {}
    for other in prep.plan.inputs.symbols:
        of = prep.frames[other]
        # another symbol's bar is known when *its* bar ends: a daily VIX close only after its
        # day, never at 09:31 of that day (its own spacing, not this strategy's bar size)
        own = _spacing(of.index) or seconds
        own = 86_400.0 if own >= 20 * 3600 else own
        o_end = _ns(of.index) + int(max(own, seconds) * 1e9)
        others[other] = {f: align_asof(end, o_end, of[f].to_numpy(dtype=np.float64))
                         for f in prep.plan.inputs.fields.get(other, ())}
    futures = inst.sec_type == "FUT"
    bars = SymbolBars(symbol, start, end, fields["open"], fields["high"], fields["low"], fields["close"],
                      session, inst.multiplier, inst.tick_size, futures, inst.margin,
                      inst.sec_type in ("FUT", "OPT"), inst.maintenance if futures else 0.0)
    stitched = prep.fronts.get(symbol)
    if stitched is not None:
        from ..market.futures import aligned, local_dates

        names = [c.local_symbol for c in stitched.contracts]
        bars.front = tuple(names[i] for i in stitched.front.tolist())
        bars.last_trade = {c.local_symbol: c.last_trade for c in stitched.contracts}
        bars.held = {c: SymbolBars(symbol, start, end, *aligned(start, end, stitched.bars[c]), session, bars.multiplier,
                                   bars.tick_size, True, bars.margin, True, bars.maintenance) for c in names}
        days = frame.index.tz_convert(prep.timezone).tz_localize(None).normalize().to_numpy().astype("datetime64[D]")
        after = {c.local_symbol: int(np.searchsorted(days, np.datetime64(c.last_trade, "D"), side="right"))
                 for c in stitched.contracts}
        bars.expiry_bar = {c: j - 1 for c, j in after.items() if 0 < j < len(days)}
        # the front month at each bar's close, the moment a roll is decided (the date then, as a live
        # run's broker reads it from its clock): a position held in an earlier contract is rolled
        # at the first close on a day past its roll date, into the front month of that day
        cycle = stitched.cycle
        decided = stitched.front_on(local_dates(pd.DatetimeIndex(end, tz="UTC"), prep.timezone))
        bars.roll_to = tuple(cycle[i] if i < len(cycle) and cycle[i] in bars.held else None for i in decided.tolist())
        bars.roll_bar = {}
        for c in names:
            j = int(np.searchsorted(decided, cycle.index(c), side="right"))     # the first close past its roll date
            if j < len(decided) and bars.roll_to[j] is not None:
                bars.roll_bar[c] = j
    scan = prep.scan.arrays(symbol, end, prep.plan.inputs.scan) if prep.scan is not None else {}
    return bars, Bars(fields, clock, others, scan)


def _needs_session(prep: Prepared) -> bool:
    """Does anything read the bars' session ids: a session indicator (vwap), an order that lives
    until the end of the day (limit, stop, stop-limit, loc), an options combo, or volatility
    scaling (its bars a day)?"""
    if "session" in prep.plan.inputs.clock or prep.limits.volatility_target is not None:
        return True
    for template in prep.orders.values():
        if template.combo or template.type not in ("market", "moc"):
            return True
    return False


def _schedule_masks(prep: Prepared, bars: Bars) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Entries allowed only inside the entry window, and for names not held only at the closes
    on the scan cadence's grid (`schedule.scan_every`, else `every`); a forced exit from the
    flat-by time."""
    sched = prep.schedule
    seconds = bar_seconds(prep.bar)
    scan = sched.scan_grid(seconds)
    if seconds >= 86400 or (sched.entry_window is None and sched.flat_by is None and scan is None):
        return None, None
    minutes = bars.clock["time"] + seconds / 60.0  # decisions happen at the bar's close
    entry = flat = None
    if sched.entry_window is not None:
        lo, hi = sched.entry_window
        entry = (minutes >= lo) & (minutes <= hi)
    if scan is not None:
        on = _on_grid(minutes, scan)
        entry = on if entry is None else entry & on
    if sched.flat_by is not None:
        flat = _flat_mask(prep, bars, sched.flat_by)
        # no new entry from the flat-by time on: it would be closed at once (the next close)
        entry = ~flat if entry is None else entry & ~flat
    return entry, flat


def cadence_masks(prep: Prepared, bars: Bars, last: int | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(held, adds): the closes at which held names are decided (`schedule.every` coarser than
    the bar: the closes on its grid; None: every close), and at which an entry may add to or
    reverse a held name (the entry window on the held cadence; None: as the entry mask, when
    names held and not held are decided alike)."""
    seconds = bar_seconds(prep.bar)
    sched = prep.schedule
    every, scan = sched.held_grid(seconds), sched.scan_grid(seconds)
    if seconds >= 86400 or (every is None and scan is None):
        return None, None
    minutes = bars.clock["time"] + seconds / 60.0
    held = _on_grid(minutes, every) if every is not None else None
    adds = held.copy() if held is not None else np.ones(len(minutes), dtype=bool)
    if sched.entry_window is not None:
        lo, hi = sched.entry_window
        adds &= (minutes >= lo) & (minutes <= hi)
    if last is not None:
        held, adds = (held[:last] if held is not None else None), adds[:last]
    return held, adds


def _on_grid(close_minutes: np.ndarray, every: float) -> np.ndarray:
    """Bar closes (minutes after local midnight) that fall on a cadence's grid: whole multiples
    of `every` seconds after midnight (60s: every minute; 5m: 9:35, 9:40, ...; 1h: 10:00, ...)."""
    secs = np.rint(np.asarray(close_minutes, dtype=np.float64) * 60.0)
    return np.mod(secs, float(every)) < 0.5


def _flat_mask(prep: Prepared, bars: Bars, flat_by: int) -> np.ndarray:
    """The bars at whose close a position is closed for a flat-by time (minutes after midnight)."""
    minutes = bars.clock["time"] + bar_seconds(prep.bar) / 60.0  # decisions happen at the bar's close
    flat = minutes >= flat_by
    left = bars.clock.get("minutes_to_close")
    if left is not None:
        # an early close (the day after Thanksgiving, Christmas Eve) comes before flat_by: be
        # flat when one bar is left, so the closing order fills at that last bar's open
        with np.errstate(invalid="ignore"):
            flat = flat | (left <= bar_seconds(prep.bar) / 60.0 + 1e-9)
    return flat


def agent_flat_masks(prep: Prepared, bars: Bars, last: int | None = None) -> dict[str, np.ndarray | None]:
    """The agents with a flat-by of their own (`agents.<name>.flat_by`): their masks on intraday
    bars (None: their positions are held overnight). Daily bars have no flat-by."""
    if bar_seconds(prep.bar) >= 86400:
        return {}
    out: dict[str, np.ndarray | None] = {}
    for agent in prep.agents:
        if agent.own_flat_by:
            mask = _flat_mask(prep, bars, agent.flat_by) if agent.flat_by is not None else None
            out[agent.name] = mask[:last] if mask is not None and last is not None else mask
    return out


def run_window(prep: Prepared, sbars: SymbolBars) -> tuple[int, int]:
    """The bars a run acts on: the first it may enter at (after the entry rules' warm-up and
    --from) and one past the last (--to)."""
    plan = prep.plan
    first = max((plan.nodes[r.when].warmup for r in plan.rules if r.kind == "entry" and r.when is not None),
                default=0)
    if prep.start is not None:
        first = max(first, int(np.searchsorted(sbars.start, int(prep.start.value), side="left")))
    last = len(sbars) if prep.end is None else int(np.searchsorted(sbars.start, int(prep.end.value), side="left"))
    return first, last


def _span(bars: dict[str, SymbolBars]) -> tuple[int, int] | None:
    if not bars:
        return None
    return min(int(b.end[0]) for b in bars.values() if len(b)), max(int(b.end[-1]) for b in bars.values() if len(b))


def _truncate(sbars: SymbolBars, bars: Bars, values: list, last: int):
    cut = lambda a: a[:last] if np.ndim(a) else a  # noqa: E731
    sb = SymbolBars(sbars.symbol, cut(sbars.start), cut(sbars.end), cut(sbars.open), cut(sbars.high), cut(sbars.low),
                    cut(sbars.close), cut(sbars.session), sbars.multiplier, sbars.tick_size, sbars.margined,
                    sbars.margin, sbars.contracts, sbars.maintenance)
    if sbars.front is not None:
        sb.front, sb.last_trade = sbars.front[:last], sbars.last_trade
        sb.roll_to = sbars.roll_to[:last]
        sb.roll_bar = {c: k for c, k in sbars.roll_bar.items() if k + 1 < last}
        sb.expiry_bar = {c: k for c, k in sbars.expiry_bar.items() if k + 1 < last}
        sb.held = {c: _truncate(h, bars, [], last)[0] for c, h in sbars.held.items()}
    return sb, bars, [cut(v) if v is not None else None for v in values]
