"""`qtrade backtest`: a strategy, its bars and the simulated venue through the trading kernel.

prepare()  loads and checks the strategy, resolves its symbols and instruments, loads and
           resamples the bars, compiles the Plan;
run()      evaluates the Plan over each symbol's whole history (vectorised), runs the kernel
           (runtime/kernel.py, the loop every run uses) or, for a simple run, its fast path,
           and builds the equity curve;
journal()  writes the run to the SQLite journal that reports (and later live runs) share.
"""

from __future__ import annotations

import fnmatch
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..brokers.costs import Commission, Slippage
from ..brokers.matching import FillModel
from ..market.series import SymbolBars
from ..config.documents import Document, Workspace
from ..diagnostics import DiagnosticError
from ..market.bars import bar_seconds, load_bars, resample
from ..market.clock import clock_arrays
from ..plan import nodes as N
from ..plan.build import build_plan, load_strategy
from ..plan.evaluate import Bars, align_asof, evaluate
from ..portfolio.ledger import Ledger
from ..risk.limits import RiskLimits, merge_risk
from .journal import Journal, new_run_id
from .collector import without_cyclic_gc
from .records import RunSettings, RunState
from .signals import SymbolSignals

_CLOCK_NEEDS_CALENDAR = {"minutes_to_close", "minutes_since_open"}


@dataclass
class Instrument:
    symbol: str
    sec_type: str = "STK"
    multiplier: float = 1.0
    tick_size: float = 0.01
    margin: float = 0.0
    calendar: str | None = "NYSE"


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
    arrays: dict = field(default_factory=dict, repr=False)  # _symbol_bars' arrays per symbol


class Result:
    """A finished backtest. The equity curve (times, labels, equity, cash, marks) is computed
    when first read (timings["equity"]), from the ledger's records."""

    def __init__(self, prepared: Prepared, run_id: str, ledger: Ledger, runner: RunState, bars: dict[str, SymbolBars],
                 timings: dict[str, float], curve: Callable[[], tuple]):
        self.prepared = prepared
        self.run_id = run_id
        self.ledger = ledger
        self.runner = runner
        self.bars = bars
        self.timings = timings
        self._curve = curve
        self._values: tuple | None = None

    def _curve_values(self) -> tuple:
        if self._values is None:
            t = time.perf_counter()
            times, equity, cash, marks = self._curve()
            labels = times - int(bar_seconds(self.prepared.bar) * 1e9)
            self._values = times, labels, equity, cash, marks
            self.timings["equity"] = time.perf_counter() - t
        return self._values

    @property
    def times(self) -> np.ndarray:
        """ns UTC, the closes of the union of all symbols' bars (from the start date)."""
        return self._curve_values()[0]

    @property
    def labels(self) -> np.ndarray:
        """ns UTC, the same bars' start times: how bars are named (IB stamps bars by start)."""
        return self._curve_values()[1]

    @property
    def equity(self) -> np.ndarray:
        return self._curve_values()[2]

    @property
    def cash(self) -> np.ndarray:
        return self._curve_values()[3]

    @property
    def marks(self) -> dict[str, float]:
        """Last prices of open positions."""
        return self._curve_values()[4]

    @property
    def final_equity(self) -> float:
        return float(self.equity[-1]) if len(self.equity) else self.ledger.cash

    @property
    def available_funds(self) -> float:
        """Equity at the end less the initial margin of the positions still open."""
        end = int(self.times[-1]) if len(self.times) else 0
        return self.runner.available_funds(end)


def _fail(doc: Document, where: tuple, message: str, hint: str = "") -> DiagnosticError:
    return DiagnosticError([doc.diag(where, message, hint)])


def _symbols(doc: Document) -> list[str]:
    """The traded symbols: the inline list, or the universe file's symbols (groups filtered),
    without names matched by its exclusion patterns."""
    universe = doc.get(("universe",))
    if isinstance(universe, list):
        return [str(s) for s in universe]
    ref = doc.refs.get(("universe",)) or doc.refs.get(("universe", "file"))
    if ref is None:
        underlying = doc.get(("underlying",))
        return [underlying] if underlying else []
    groups = ref.get(("groups",)) or {}
    wanted = universe.get("groups") if isinstance(universe, dict) else None
    names = list(ref.get(("symbols",)) or [])
    for group, members in groups.items():
        if wanted is None or group in wanted:
            names.extend(members)
    default_type = (ref.get(("defaults",)) or {}).get("sec_type", "STK")
    out = []
    for name in names:
        if name in out:
            continue
        if any(rule.get("sec_type", default_type) == default_type and fnmatch.fnmatchcase(name, rule.get("pattern", ""))
               for rule in ref.get(("exclude",)) or []):
            continue
        out.append(name)
    return out


def _instrument(ws: Workspace, doc: Document, symbol: str) -> Instrument:
    inst = ws.instruments_for(doc)
    roots = (inst.get(("roots",)) or {}) if inst else {}
    entry = roots.get(symbol)
    if entry is None:
        entry = ((inst.get(("defaults",)) or {}).get("STK") or {}) if inst else {}
        sec_type = "STK"
    else:
        sec_type = entry.get("sec_type", "STK")
    return Instrument(symbol, sec_type, float(entry.get("multiplier") or 1.0) if sec_type == "FUT" else 1.0,
                      float(entry.get("tick_size") or 0.01), float(entry.get("margin") or 0.0),
                      entry.get("calendar", "NYSE"))


def _risk(doc: Document) -> RiskLimits:
    """The strategy's limits: its risk file, or inline limits over the file they extend."""
    chain: list[dict] = []

    def add(ref: Document | None) -> None:
        if ref is None:
            return
        add(ref.refs.get(("extends",)))
        chain.append(ref.data)

    spec = doc.get(("risk",))
    if isinstance(spec, str):
        add(doc.refs.get(("risk",)))
    elif isinstance(spec, dict):
        add(doc.refs.get(("risk", "extends")))
        chain.append(spec)
    return RiskLimits.from_spec(merge_risk(chain))


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
            chains: str | Path | None = None) -> Prepared:
    doc, ws = load_strategy(path, overrides)
    plan = build_plan(doc, ws, overrides)
    settings = dict(doc.get(("backtest",)) or {})
    if cash is not None:
        settings["cash"] = cash
    if start:
        settings["start"] = start
    if end:
        settings["end"] = end
    timezone = (doc.get(("schedule",)) or {}).get("timezone", "America/New_York")
    bar = doc.get(("data", "bar"))
    symbols = _symbols(doc)
    if not symbols:
        raise _fail(doc, ("universe",), "no symbols to backtest", "list them under universe:")
    chains_source = chains if chains is not None else doc.get(("data", "chains"))
    chains = None
    if chains_source:
        from ..market.chains import load_chains
        from .chainsource import underlying_from_chains

        chains_path = Path(chains_source).resolve() if chains_source is not None and \
            chains_source is not doc.get(("data", "chains")) else (doc.abspath.parent / chains_source).resolve()
        if not chains_path.exists():
            raise _fail(doc, ("data", "chains") if doc.get(("data", "chains")) else ("data",),
                        f"option chains not found: {chains_source}",
                        f"data.chains is relative to {doc.path}'s folder; --chains to the current directory")
        try:
            chains = load_chains(chains_path)          # a file of one underlying (SPXW for SPX)
        except DiagnosticError:
            chains = load_chains(chains_path, underlying=symbols[0])
    wanted = list(dict.fromkeys(symbols + plan.inputs.symbols))
    combos = any("legs" in (spec or {}) for spec in (doc.get(("orders",)) or {}).values())
    if combos and chains is None and (settings.get("options") or {}).get("iv", "vix") == "vix" and "VIX" not in wanted:
        wanted.append("VIX")  # synthesised chains take their volatility from VIX
    if data is None and chains is not None and not doc.get(("data", "source")):
        # the underlying's daily prices come with the chain snapshots
        frames = {symbols[0]: underlying_from_chains(chains, timezone)}
        data_path = chains_path
        if len(wanted) > 1:
            raise _fail(doc, ("data",), f"only {symbols[0]}'s prices come with the chains; "
                        f"{', '.join(wanted[1:])} need data.source")
    else:
        if data is None:
            source = doc.get(("data", "source"))
            if not source:
                raise _fail(doc, ("data",), "no bar data for the backtest",
                            "set data.source in the strategy (a file or a folder of SYMBOL.csv files) or pass --data "
                            "(for options, --chains with end-of-day chain snapshots is enough)")
            data_path = (doc.abspath.parent / source).resolve()
            if not data_path.exists():
                raise _fail(doc, ("data", "source"), f"data source not found: {source}",
                            f"paths are relative to {doc.path}'s folder")
        else:
            data_path = Path(data)
        frames = load_bars(data_path, symbols=wanted if data_path.is_dir() or len(wanted) > 1 else wanted,
                           timezone=timezone, adjusted=bool(doc.get(("data", "adjusted"), False)), on_bad_bar=doc.get(("data", "on_bad_bar"), "refuse"))
        if not data_path.is_dir() and len(frames) == 1 and len(wanted) == 1:
            frames = {wanted[0]: next(iter(frames.values()))}
    instruments = {s: _instrument(ws, doc, s) for s in wanted}
    want_seconds = bar_seconds(bar)
    for symbol, frame in list(frames.items()):
        have = _spacing(frame.index)
        if have is not None and have < want_seconds * 0.999 and want_seconds < 86400 * 28:
            frames[symbol] = resample(frame, bar, timezone=timezone, calendar=instruments[symbol].calendar)
        elif have is not None and have > want_seconds * 1.5 and want_seconds < 86400 and symbol in symbols:
            # (another symbol read through symbol("X") may be coarser: it is aligned as of each bar)
            raise _fail(doc, ("data", "bar"), f"{symbol}'s data has bars of about {have / 60:g} minutes, "
                        f"longer than the strategy's {bar} bars", "use finer data or a longer bar size")
    def to_ts(day: str) -> pd.Timestamp:
        return pd.Timestamp(day).tz_localize(timezone)

    prepared = Prepared(doc, ws, plan, Path(path), symbols, instruments, frames, settings, timezone, bar, data_path,
                        to_ts(settings["start"]) if settings.get("start") else None,
                        to_ts(settings["end"]) + pd.Timedelta(days=1) if settings.get("end") else None,
                        dict(overrides or {}))
    prepared.chains = chains
    for symbol in symbols:
        if symbol in frames:
            _symbol_bars(prepared, symbol)
    return prepared


def last_days(prep: Prepared, days: int) -> Prepared:
    """The same run limited to the last `days` trading days of the data (earlier bars stay
    loaded as warm-up)."""
    dates = sorted({d for frame in (prep.frames[s] for s in prep.symbols if s in prep.frames)
                    for d in frame.index.tz_convert(prep.timezone).normalize()})
    if not dates:
        return prep
    first = dates[-min(days, len(dates))]
    prep.start = first
    return prep


def _ns(index: pd.DatetimeIndex) -> np.ndarray:
    return index.as_unit("ns").asi8.copy()   # UTC epoch ns of the aware index (one copy, not three)


def _symbol_bars(prep: Prepared, symbol: str) -> tuple[SymbolBars, Bars]:
    """A symbol's bars as the arrays the run reads (times, prices, clock, other symbols aligned),
    made once per Prepared and reused by every run of it (kept with the frame and plan they were
    made from, so a changed frame or plan is made again)."""
    frame = prep.frames[symbol]
    made_from = (frame, prep.plan, prep.doc, prep.instruments.get(symbol),
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
    sched = prep.doc.get(("schedule",)) or {}
    intraday_schedule = seconds < 86400 and bool(sched.get("entry_window") or sched.get("flat_by"))
    needs_calendar = bool(prep.plan.inputs.clock & _CLOCK_NEEDS_CALENDAR) or \
        (bool(sched.get("flat_by")) and seconds < 86400)
    want = set(prep.plan.inputs.clock)
    if intraday_schedule:
        want.add("time")
        if sched.get("flat_by"):
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
    bars = SymbolBars(symbol, start, end, fields["open"], fields["high"], fields["low"], fields["close"],
                      session, inst.multiplier, inst.tick_size, inst.sec_type == "FUT", inst.margin,
                      inst.sec_type in ("FUT", "OPT"))
    return bars, Bars(fields, clock, others)


def _needs_session(prep: Prepared) -> bool:
    """Does anything read the bars' session ids: a session indicator (vwap), an order that lives
    until the end of the day (limit, stop, stop-limit, loc), or an options combo?"""
    if "session" in prep.plan.inputs.clock:
        return True
    for spec in (prep.doc.get(("orders",)) or {}).values():
        spec = spec or {}
        if "legs" in spec or spec.get("type", "market") not in ("market", "moc"):
            return True
    return False


def _schedule_masks(prep: Prepared, bars: Bars) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Entries allowed only inside the entry window; a forced exit from the flat-by time."""
    sched = prep.doc.get(("schedule",)) or {}
    if bar_seconds(prep.bar) >= 86400 or not (sched.get("entry_window") or sched.get("flat_by")):
        return None, None
    minutes = bars.clock["time"] + bar_seconds(prep.bar) / 60.0  # decisions happen at the bar's close
    entry = flat = None
    window = sched.get("entry_window")
    if window:
        lo, hi = (int(t[:2]) * 60 + int(t[3:]) for t in window)
        entry = (minutes >= lo) & (minutes <= hi)
    if sched.get("flat_by"):
        t = sched["flat_by"]
        flat = minutes >= int(t[:2]) * 60 + int(t[3:])
        left = bars.clock.get("minutes_to_close")
        if left is not None:
            # an early close (the day after Thanksgiving, Christmas Eve) comes before flat_by: be
            # flat when one bar is left, so the closing order fills at that last bar's open
            with np.errstate(invalid="ignore"):
                flat = flat | (left <= bar_seconds(prep.bar) / 60.0 + 1e-9)
    return entry, flat


def run(prep: Prepared, progress: Callable[[float], None] | None = None, run_id: str | None = None, *,
        fast: bool | None = None) -> Result:
    """The backtest. `fast`: None resolves simple runs on the fast path (engine.runtime.fastpath,
    the kernel's outcome exactly) and the rest through the kernel; False always uses the kernel;
    True requires the fast path (ValueError saying why a run is not simple).

    The cyclic garbage collector is off for the run: it makes no reference cycles, and a full
    collection walks every object of the process (about 40 ms with pandas loaded), which it
    otherwise triggers now and then in the middle of a run."""
    with without_cyclic_gc():
        return _run(prep, progress, run_id, fast)


def _run(prep: Prepared, progress, run_id, fast) -> Result:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    signals: dict[str, SymbolSignals] = {}
    symbol_bars: dict[str, SymbolBars] = {}
    entry_nodes = [r.when for r in prep.plan.rules if r.kind == "entry" and r.when is not None]
    warmup = max((prep.plan.nodes[i].warmup for i in entry_nodes), default=0)
    for symbol in prep.symbols:
        if symbol not in prep.frames:
            continue
        sbars, bars = _symbol_bars(prep, symbol)
        values = evaluate(prep.plan, bars)
        entry_mask, flat_mask = _schedule_masks(prep, bars)
        first = warmup
        if prep.start is not None:
            first = max(first, int(np.searchsorted(sbars.start, int(prep.start.value), side="left")))
        last = len(sbars) if prep.end is None else int(np.searchsorted(sbars.start, int(prep.end.value), side="left"))
        if last < len(sbars):
            sbars, bars, values = _truncate(sbars, bars, values, last)
        signals[symbol] = SymbolSignals(prep.plan, values, sbars, entry_mask=entry_mask[:last] if entry_mask is not None
                                        else None, flat_mask=flat_mask[:last] if flat_mask is not None else None,
                                        start=first)
        symbol_bars[symbol] = sbars
    timings["evaluate"] = time.perf_counter() - t0
    s = prep.settings
    run_id = run_id or new_run_id()
    option_sim = s.get("options") or {}
    settings = RunSettings(cash=float(s.get("cash", 100_000)), account=s.get("account", "margin"),
                           orders=prep.doc.get(("orders",)) or {}, limits=_risk(prep.doc), run_id=run_id,
                           strategy=prep.plan.name, timezone=prep.timezone,
                           fill_fraction=float(option_sim.get("fill_fraction", 0.5)))
    broker = FillModel(Commission.from_spec(s.get("commission")), Slippage.from_spec(s.get("slippage")),
                       s.get("fill", "next_open"))
    t1 = time.perf_counter()
    if fast is not False:
        result = _run_fast(prep, signals, symbol_bars, broker, settings, run_id, timings, t1, progress,
                           required=bool(fast))
        if result is not None:
            return result
    from .session import simulate

    result = simulate(prep, streaming=False, run_id=run_id, progress=progress, evaluated=signals)
    result.timings["evaluate"] += timings["evaluate"]
    return result


def _run_fast(prep: Prepared, signals: dict[str, SymbolSignals], symbol_bars: dict[str, SymbolBars],
              broker: FillModel, settings: RunSettings, run_id: str, timings: dict, t1: float, progress,
              required: bool) -> Result | None:
    """The run on the fast path, or None when it is not simple (see fastpath.unsupported)."""
    from . import fastpath

    combos = any("legs" in (spec or {}) for spec in settings.orders.values())
    why = fastpath.unsupported(prep.plan, signals, broker, settings, desk=True if combos else None)
    if why is not None:
        if required:
            raise ValueError(f"not a simple run: {why}")
        return None
    runner = fastpath.FastRun(prep.plan, signals, broker, settings)
    ledger = runner.run()
    if progress is not None:
        progress(1.0)
    timings["run"] = time.perf_counter() - t1
    timings["fast_path"] = 1.0
    return Result(prep, run_id, ledger, runner, symbol_bars, timings,
                  lambda: equity_curve(ledger, symbol_bars, settings.cash, prep.start))


def _span(bars: dict[str, SymbolBars]) -> tuple[int, int] | None:
    if not bars:
        return None
    return min(int(b.end[0]) for b in bars.values() if len(b)), max(int(b.end[-1]) for b in bars.values() if len(b))


def _truncate(sbars: SymbolBars, bars: Bars, values: list, last: int):
    cut = lambda a: a[:last] if np.ndim(a) else a  # noqa: E731
    sb = SymbolBars(sbars.symbol, cut(sbars.start), cut(sbars.end), cut(sbars.open), cut(sbars.high), cut(sbars.low),
                    cut(sbars.close), cut(sbars.session), sbars.multiplier, sbars.tick_size, sbars.margined,
                    sbars.margin, sbars.contracts)
    return sb, bars, [cut(v) if v is not None else None for v in values]


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique for int64 without its hash path (slow on large arrays with numpy 2.x): sort,
    then keep each value that differs from its predecessor."""
    values = np.sort(values, kind="stable")
    if len(values) < 2:
        return values
    keep = np.empty(len(values), dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


@dataclass
class LedgerColumns:
    """A ledger's fills and trades as arrays, what the equity curve needs (a fast path builds
    them directly; `ledger_columns` extracts them from any ledger)."""

    fill_symbol: list            # per fill: its symbol (a combo's ledger key for combo fills)
    fill_bar: np.ndarray
    fill_cash: np.ndarray        # how each fill moved cash
    trade_symbol: list
    trade_entry_bar: np.ndarray
    trade_exit_bar: np.ndarray
    trade_units: np.ndarray      # signed quantity
    trade_entry_price: np.ndarray


def ledger_columns(ledger: Ledger, bars: dict[str, SymbolBars]) -> LedgerColumns:
    cols = getattr(ledger, "columns", None)
    if callable(cols):      # the fast path builds its records when they are first read
        cols = cols()
    if cols is not None:
        return cols
    fills = ledger.fills
    trades = [t for t in ledger.trades if not t.legs]   # option combos are valued from their own marks
    return LedgerColumns([f.symbol for f in fills], np.array([f.bar for f in fills], dtype=np.int64),
                         np.array(_cash_deltas(ledger, bars), dtype=np.float64),
                         [t.symbol for t in trades], np.array([t.entry_bar for t in trades], dtype=np.int64),
                         np.array([t.exit_bar for t in trades], dtype=np.int64),
                         np.array([(1 if t.side == "long" else -1) * t.quantity for t in trades], dtype=np.float64),
                         np.array([t.entry_price for t in trades], dtype=np.float64))


def equity_curve(ledger: Ledger, bars: dict[str, SymbolBars], initial: float,
                 start: pd.Timestamp | None = None, combos: list | None = None,
                 combo_symbol: dict[str, str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Cash and equity at every bar close of every symbol (the union timeline), vectorised.

    A position counts from its entry fill to its exit fill: held at the closes of bars
    [entry bar, exit bar). Stock positions count at market value, futures at unrealised P&L.
    """
    if not bars:
        return np.empty(0, np.int64), np.empty(0), np.empty(0), {}
    if len(bars) == 1:
        times = next(iter(bars.values())).end   # one symbol: already sorted and unique
    else:
        times = sorted_unique(np.concatenate([b.end for b in bars.values()]))
    if start is not None:
        times = times[int(np.searchsorted(times, int(start.value), side="left")):]
    cols = ledger_columns(ledger, bars)
    if len(bars) == 1 and not combos and not combo_symbol:
        curve = _one_symbol_curve(cols, next(iter(bars.values())), times, initial, ledger.positions)
        if curve is not None:
            marks = {s: float(bars[s].close[-1]) for s in ledger.positions if s in bars}
            return (*curve, marks)
    # cash: each fill's change lands on the first close at or after it
    cash_delta = np.zeros(len(times) + 1)
    # a fill's cash lands at the close of the bar it filled in (an open fill is before that close)
    owner = combo_symbol or {}
    if len(cols.fill_bar):
        if len(bars) == 1 and not owner:
            fill_times = next(iter(bars.values())).end[cols.fill_bar]
        else:
            fill_times = np.array([bars[owner.get(s, s)].end[k] for s, k in zip(cols.fill_symbol, cols.fill_bar.tolist())],
                                  dtype=np.int64)
        np.add.at(cash_delta, np.searchsorted(times, fill_times, side="left"), cols.fill_cash)
    cash = initial + np.cumsum(cash_delta)[: len(times)]
    value = np.zeros(len(times))
    marks = {}
    open_spans: dict[str, tuple[int, float, float]] = {}
    for symbol, pos in ledger.positions.items():
        if symbol in bars:
            open_spans[symbol] = (pos.entry_bar, pos.quantity, pos.avg_price)
            marks[symbol] = float(bars[symbol].close[-1])
    for combo in combos or []:
        # an option combo is worth its marks (minus the cost to close at mid), held from its entry
        # bar's close to its exit bar (exclusive: closed at that bar's close, its cash is in)
        b = bars[owner[combo.key]]
        keys = sorted(combo.marks)
        if not keys:
            continue
        per_bar = np.zeros(len(b))
        last = keys[-1] if combo.key not in ledger.positions else len(b) - 1
        idx = np.arange(keys[0], last + 1)
        known = np.array(keys)
        pos = np.searchsorted(known, idx, side="right") - 1
        per_bar[keys[0]:last + 1] = np.array([combo.marks[k] for k in keys])[pos]
        if combo.key not in ledger.positions:
            per_bar[keys[-1]] = 0.0
        else:
            marks[combo.key] = combo.last_credit
        k = np.searchsorted(b.end, times, side="right") - 1
        value += np.where(k >= 0, per_bar[np.maximum(k, 0)], 0.0)
    tsym = np.array(cols.trade_symbol, dtype=object)
    for symbol, b in bars.items():
        sel = tsym == symbol
        lo, hi, qty, entry = cols.trade_entry_bar, cols.trade_exit_bar, cols.trade_units, cols.trade_entry_price
        if not sel.all():
            lo, hi, qty, entry = lo[sel], hi[sel], qty[sel], entry[sel]
        if symbol in open_spans:
            e, q, p = open_spans[symbol]
            lo, hi = np.append(lo, e), np.append(hi, len(b))
            qty, entry = np.append(qty, q), np.append(entry, p)
        if not len(lo):
            continue
        # spans in order, each entry before its exit (the order a loop over the spans adds them in)
        where = np.column_stack((lo, hi)).ravel()
        u = qty * b.multiplier
        units = np.zeros(len(b) + 1)
        np.add.at(units, where, np.column_stack((u, -u)).ravel())
        units = np.cumsum(units)[:-1]
        if b.margined:
            offset = np.zeros(len(b) + 1)
            ue = u * entry
            np.add.at(offset, where, np.column_stack((ue, -ue)).ravel())
            per_bar = units * b.close - np.cumsum(offset)[:-1]
        else:
            per_bar = units * b.close
        if len(bars) == 1:   # the timeline is this symbol's closes from the start date
            value += per_bar[len(b) - len(times):]
        else:
            k = np.searchsorted(b.end, times, side="right") - 1
            value += np.where(k >= 0, per_bar[np.maximum(k, 0)], 0.0)
    return times, cash + value, cash, marks


def _one_symbol_curve(cols: LedgerColumns, b: SymbolBars, times: np.ndarray, initial: float,
                      positions: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """equity_curve for one symbol without option combos, from piecewise-constant runs instead
    of a cumulative sum over every bar: the same floats (a bar's fills are summed first, then
    added to the running cash; a position's units and entry value are exact between its fills).
    None when the fills or the positions' spans are not in time order (the general way then)."""
    n, m = len(b), len(times)
    off = n - m                      # the timeline is this symbol's closes from the start date
    # cash: constant between the bars where fills land
    if len(cols.fill_bar):
        at = cols.fill_bar - off
        if at[0] < 0 or (at[1:] < at[:-1]).any():
            return None
        first = np.flatnonzero(np.concatenate(([True], at[1:] != at[:-1])))
        levels = initial + np.cumsum(np.add.reduceat(cols.fill_cash, first))
        cuts = at[first]
        cash = np.repeat(np.concatenate(([initial], levels)), np.diff(np.concatenate(([0], cuts, [m]))))
    else:
        cash = np.full(m, float(initial))
    # positions: held at the closes of bars [entry bar, exit bar), one at a time
    lo, hi, qty, entry = cols.trade_entry_bar, cols.trade_exit_bar, cols.trade_units, cols.trade_entry_price
    pos = positions.get(b.symbol)
    if pos is not None:
        lo, hi = np.append(lo, pos.entry_bar), np.append(hi, n)
        qty, entry = np.append(qty, pos.quantity), np.append(entry, pos.avg_price)
    if not len(lo):
        return times, cash.copy(), cash
    u = qty * b.multiplier
    bounds = np.column_stack((lo, hi)).ravel()
    if (bounds[1:] < bounds[:-1]).any():
        return None
    lengths = np.diff(np.concatenate(([0], bounds, [n])))
    per_bar = _runs(u, lengths)
    np.multiply(per_bar, b.close, out=per_bar)      # the units held at each close, valued there
    if b.margined:
        np.subtract(per_bar, _runs(u * entry, lengths), out=per_bar)
    return times, np.add(cash, per_bar[off:]), cash


def _runs(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """0 over each gap, values[i] over span i: gap, span 0, gap, span 1, ..., gap."""
    seq = np.zeros(2 * len(values) + 1)
    seq[1::2] = values
    return np.repeat(seq, lengths)


def _cash_deltas(ledger: Ledger, bars: dict[str, SymbolBars]) -> list[float]:
    """How each fill moved cash, replaying opens and closes per symbol."""
    out = []
    open_price: dict[str, tuple[float, float]] = {}
    for f in ledger.fills:
        b = bars.get(f.symbol)
        signed = f.signed
        if b is None:  # an option combo: premium moves cash like a stock trade
            out.append(-f.commission - signed * f.price * f.multiplier)
            continue
        if f.symbol not in open_price:
            open_price[f.symbol] = (signed, f.price)
            out.append(-f.commission - (0.0 if b.margined else signed * f.price * f.multiplier))
        else:
            qty, entry = open_price.pop(f.symbol)
            if b.margined:
                out.append(-f.commission + (f.price - entry) * qty * f.multiplier)
            else:
                out.append(-f.commission - signed * f.price * f.multiplier)
    return out


def write_journal(result: Result, journal: Journal, mode: str = "backtest", *, incremental: bool = False) -> None:
    """Everything about the run, in the shared journal (timestamps formatted in bulk, rows
    inserted with executemany, without fsyncs: see Journal.bulk). `incremental`: the run was
    started in the journal and its orders, fills and decisions journaled as they happened (a
    Recorder); this adds the rest (trades, equity, prices, positions)."""
    with journal.bulk():
        _write_journal(result, journal, mode, incremental)


def start_run(prep: Prepared, journal: Journal, mode: str, run_id: str, cash: float) -> None:
    journal.start_run(mode, prep.plan.name, strategy_path=str(prep.path),
                      strategy_text=prep.doc.text, params=prep.plan.params,
                      settings={**prep.settings, "data": str(prep.data_path), "timezone": prep.timezone,
                                "overrides": prep.overrides},
                      symbols=prep.symbols, bar=prep.bar, currency=prep.settings.get("currency", "USD"),
                      initial_cash=cash, run_id=run_id)


def _write_journal(result: Result, journal: Journal, mode: str, incremental: bool) -> None:
    prep = result.prepared
    run_id = result.run_id
    runner = result.runner
    if not incremental:
        start_run(prep, journal, mode, run_id, result.ledger.initial_cash)
        fast_rows = getattr(runner, "journal_rows", None)
        if fast_rows is not None:   # the fast path's records, as rows
            for table, (columns, rows) in fast_rows(run_id, iso_many).items():
                journal.many(table, columns, rows)
        else:
            _journal_tables(journal, *_record_rows(result))
    else:
        journal.many("trades", _TRADE_COLUMNS, _record_rows(result)[3])
    idx = _thin_indices(result.equity, 10_000)
    journal.many("equity", ("run_id", "ts", "cash", "equity"),
                 zip([run_id] * len(idx), iso_many(result.labels[idx]), result.cash[idx].tolist(),
                     result.equity[idx].tolist()))
    for symbol, b in result.bars.items():
        start, o, h, lo, c = _thin_bars(b, 4_000)
        journal.many("prices", ("run_id", "symbol", "ts", "open", "high", "low", "close"),
                     zip([run_id] * len(start), [symbol] * len(start), iso_many(start), o.tolist(), h.tolist(),
                         lo.tolist(), c.tolist()))
    end_ts = _iso(int(result.labels[-1])) if len(result.labels) else _iso(0)
    journal.many("positions", ("run_id", "ts", "symbol", "quantity", "avg_price", "market_price"),
                 ((run_id, end_ts, s, p.quantity, p.avg_price, result.marks.get(s))
                  for s, p in result.ledger.positions.items()))


_ORDER_COLUMNS = ("run_id", "order_ref", "ts", "symbol", "action", "quantity", "order_type", "limit_price",
                  "stop_price", "tif", "rule", "intent", "legs", "status", "status_ts", "reason")
_DECISION_COLUMNS = ("run_id", "ts", "symbol", "rule", "kind", "outcome", "reason", "detail")
_FILL_COLUMNS = ("run_id", "order_ref", "ts", "symbol", "action", "quantity", "price", "multiplier", "commission")
_TRADE_COLUMNS = ("run_id", "symbol", "side", "quantity", "multiplier", "entry_ts", "entry_price", "exit_ts",
                  "exit_price", "pnl", "return_pct", "bars_held", "mae", "mfe", "commission", "entry_rule", "exit_rule",
                  "exit_reason", "legs")


def _journal_tables(journal: Journal, orders: list, decisions: list, fills: list, trades: list) -> None:
    journal.many("orders", _ORDER_COLUMNS, orders)
    journal.many("decisions", _DECISION_COLUMNS, decisions)
    journal.many("fills", _FILL_COLUMNS, fills)
    journal.many("trades", _TRADE_COLUMNS, trades)


def _record_rows(result: Result) -> tuple[list, list, list, list]:
    """The run's orders, decisions, fills and trades as journal rows."""
    run_id = result.run_id
    runner = result.runner
    orders = runner.orders
    ts = iso_many([rec.time for rec in orders])
    status_ts = iso_many([rec.status_time for rec in orders])
    order_rows = []
    for rec, t, st in zip(orders, ts, status_ts):
        it = rec.intent
        # the row as journal.order() then journal.order_status() would leave it
        order_rows.append((run_id, it.tag, t, it.symbol, it.action, it.quantity or 0.0, it.order_type, it.limit,
                           it.stop, it.tif, it.rule, it.intent, json.dumps(rec.legs) if rec.legs is not None else None,
                           rec.status, st if rec.status_time else t, rec.reason or it.reason))
    decisions = runner.decisions
    decision_rows = [(run_id, t, d.symbol, d.rule, d.kind, d.outcome, d.reason, d.detail)
                     for d, t in zip(decisions, iso_many([d.time for d in decisions]))]
    fills = result.ledger.fills
    fill_rows = [(run_id, f.order_ref, t, f.symbol, f.action, f.quantity, f.price, f.multiplier, f.commission)
                 for f, t in zip(fills, iso_many([f.time for f in fills]))]
    trades = result.ledger.trades
    entry_ts = iso_many([t.entry_time for t in trades])
    exit_ts = iso_many([t.exit_time for t in trades])
    trade_rows = [(run_id, t.symbol, t.side, t.quantity, t.multiplier, a, t.entry_price, b, t.exit_price, t.pnl,
                   t.return_pct, t.exit_bar - t.entry_bar, t.mae, t.mfe, t.commission, t.entry_rule, t.exit_rule,
                   t.exit_reason, json.dumps(t.legs, default=str) if t.legs else None)
                  for t, a, b in zip(trades, entry_ts, exit_ts)]
    return order_rows, decision_rows, fill_rows, trade_rows


def _iso(ns: int) -> str:
    return pd.Timestamp(ns, tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_many(ns) -> list[str]:
    """`_iso` of many UTC nanosecond times at once ("2024-05-01T14:30:00Z", seconds truncated)."""
    values = np.asarray(ns, dtype=np.int64)
    if not len(values):
        return []
    text = np.datetime_as_string(values.astype("datetime64[ns]").astype("datetime64[s]"), unit="s")
    return [t + "Z" for t in text.tolist()]


def _thin_indices(values: np.ndarray, target: int) -> np.ndarray:
    """Indices keeping each bucket's first, lowest, highest and last point (the shape survives)."""
    n = len(values)
    if n <= target:
        return np.arange(n)
    buckets = max(1, target // 4)
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)
    keep = [edges[:-1], edges[1:] - 1]
    starts = edges[:-1]
    keep.append(starts + _argreduce(values, edges, np.argmin))
    keep.append(starts + _argreduce(values, edges, np.argmax))
    return sorted_unique(np.concatenate(keep))


def _argreduce(values: np.ndarray, edges: np.ndarray, fn) -> np.ndarray:
    return np.array([fn(values[a:b]) for a, b in zip(edges[:-1], edges[1:])], dtype=np.int64)


def _thin_bars(b: SymbolBars, target: int):
    """OHLC bars merged into at most `target` buckets (first open, max high, min low, last close)."""
    n = len(b)
    if n <= target:
        return b.start, b.open, b.high, b.low, b.close
    edges = np.linspace(0, n, target + 1).astype(np.int64)[:-1]
    return (b.start[edges], b.open[edges], np.maximum.reduceat(b.high, edges), np.minimum.reduceat(b.low, edges),
            b.close[np.append(edges[1:] - 1, n - 1)])
