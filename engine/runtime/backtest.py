"""`qtrade backtest`: a strategy, its bars and the SimBroker through the Runner.

prepare()  loads and checks the strategy, resolves its symbols and instruments, loads and
           resamples the bars, compiles the Plan;
run()      evaluates the Plan over each symbol's whole history (vectorised), runs the Runner,
           and builds the equity curve;
journal()  writes the run to the SQLite journal that reports (and later live runs) share.
"""

from __future__ import annotations

import fnmatch
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..brokers.costs import Commission, Slippage
from ..brokers.sim import SimBroker, SymbolBars
from ..config.documents import Document, Workspace
from ..diagnostics import DiagnosticError, error
from ..market.bars import bar_seconds, load_bars, resample
from ..market.clock import clock_arrays
from ..plan import nodes as N
from ..plan.build import build_plan, load_strategy
from ..plan.evaluate import Bars, align_asof, evaluate
from ..portfolio.ledger import Ledger
from ..risk.limits import RiskLimits, merge_risk
from .journal import Journal, new_run_id
from .runner import Runner, RunSettings
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


@dataclass
class Result:
    prepared: Prepared
    run_id: str
    ledger: Ledger
    runner: Runner
    times: np.ndarray          # ns UTC, the closes of the union of all symbols' bars (from the start date)
    labels: np.ndarray         # ns UTC, the same bars' start times: how bars are named (IB stamps bars by start)
    equity: np.ndarray
    cash: np.ndarray
    bars: dict[str, SymbolBars]
    marks: dict[str, float]    # last prices of open positions
    timings: dict[str, float]

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
    ns = index.tz_convert("UTC").tz_localize(None).to_numpy().astype("datetime64[ns]").astype(np.int64)
    return float(np.median(np.diff(ns))) / 1e9


def prepare(path: str | Path, overrides: dict[str, str] | None = None, data: str | Path | None = None,
            start: str | None = None, end: str | None = None, cash: float | None = None) -> Prepared:
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
    if data is None:
        source = doc.get(("data", "source"))
        if not source:
            raise _fail(doc, ("data",), "no bar data for the backtest",
                        "set data.source in the strategy (a file or a folder of SYMBOL.csv files) or pass --data")
        data_path = (doc.abspath.parent / source).resolve()
        if not data_path.exists():
            raise _fail(doc, ("data", "source"), f"data source not found: {source}",
                        f"paths are relative to {doc.path}'s folder")
    else:
        data_path = Path(data)
    wanted = list(dict.fromkeys(symbols + plan.inputs.symbols))
    frames = load_bars(data_path, symbols=wanted if data_path.is_dir() or len(wanted) > 1 else wanted,
                       timezone=timezone, adjusted=bool(doc.get(("data", "adjusted"), False)))
    if not data_path.is_dir() and len(frames) == 1 and len(wanted) == 1:
        frames = {wanted[0]: next(iter(frames.values()))}
    instruments = {s: _instrument(ws, doc, s) for s in wanted}
    want_seconds = bar_seconds(bar)
    for symbol, frame in list(frames.items()):
        have = _spacing(frame.index)
        if have is not None and have < want_seconds * 0.999 and want_seconds < 86400 * 28:
            frames[symbol] = resample(frame, bar, timezone=timezone, calendar=instruments[symbol].calendar)
        elif have is not None and have > want_seconds * 1.5 and want_seconds < 86400:
            raise _fail(doc, ("data", "bar"), f"{symbol}'s data has bars of about {have / 60:g} minutes, "
                        f"longer than the strategy's {bar} bars", "use finer data or a longer bar size")
    def to_ts(day: str) -> pd.Timestamp:
        return pd.Timestamp(day).tz_localize(timezone)

    return Prepared(doc, ws, plan, Path(path), symbols, instruments, frames, settings, timezone, bar, data_path,
                    to_ts(settings["start"]) if settings.get("start") else None,
                    to_ts(settings["end"]) + pd.Timedelta(days=1) if settings.get("end") else None,
                    dict(overrides or {}))


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
    return index.tz_convert("UTC").tz_localize(None).to_numpy().astype("datetime64[ns]").astype(np.int64)


def _symbol_bars(prep: Prepared, symbol: str) -> tuple[SymbolBars, Bars]:
    frame = prep.frames[symbol]
    inst = prep.instruments[symbol]
    seconds = bar_seconds(prep.bar)
    start = _ns(frame.index)
    end = start + int(seconds * 1e9)
    needs_calendar = bool(prep.plan.inputs.clock & _CLOCK_NEEDS_CALENDAR) or \
        (bool((prep.doc.get(("schedule",)) or {}).get("flat_by")) and seconds < 86400)
    clock = clock_arrays(frame.index, prep.timezone, seconds, inst.calendar if needs_calendar else None)
    fields = {c: frame[c].to_numpy(dtype=np.float64) for c in ("open", "high", "low", "close", "volume")}
    others = {}
    for other in prep.plan.inputs.symbols:
        of = prep.frames[other]
        o_end = _ns(of.index) + int(seconds * 1e9)
        others[other] = {f: align_asof(end, o_end, of[f].to_numpy(dtype=np.float64))
                         for f in prep.plan.inputs.fields.get(other, ())}
    bars = SymbolBars(symbol, start, end, fields["open"], fields["high"], fields["low"], fields["close"],
                      clock["session"], inst.multiplier, inst.tick_size, inst.sec_type == "FUT", inst.margin,
                      inst.sec_type in ("FUT", "OPT"))
    return bars, Bars(fields, clock, others)


def _schedule_masks(prep: Prepared, bars: Bars) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Entries allowed only inside the entry window; a forced exit from the flat-by time."""
    sched = prep.doc.get(("schedule",)) or {}
    minutes = bars.clock["time"] + bar_seconds(prep.bar) / 60.0  # decisions happen at the bar's close
    if bar_seconds(prep.bar) >= 86400:
        return None, None
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
        dry_run: bool = False, on_intent: Callable[[dict], None] | None = None) -> Result:
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
                           strategy=prep.plan.name, timezone=prep.timezone, dry_run=dry_run,
                           fill_fraction=float(option_sim.get("fill_fraction", 0.5)))
    broker = SimBroker(Commission.from_spec(s.get("commission")), Slippage.from_spec(s.get("slippage")),
                       s.get("fill", "next_open"))
    t1 = time.perf_counter()
    span = _span(symbol_bars)
    report = (lambda t: progress((t - span[0]) / max(span[1] - span[0], 1))) if progress and span else None
    desk = chains = None
    if any("legs" in (spec or {}) for spec in settings.orders.values()):
        from .chainsource import option_desk

        desk, chains = option_desk(prep, signals)
    runner = Runner(prep.plan, signals, broker, settings, report, desk=desk, chains=chains, on_intent=on_intent)
    ledger = runner.run()
    timings["run"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    times, equity, cash, marks = equity_curve(ledger, symbol_bars, settings.cash, prep.start,
                                              runner.closed_combos + list(runner.combos.values()), runner.combo_symbol)
    timings["equity"] = time.perf_counter() - t2
    labels = times - int(bar_seconds(prep.bar) * 1e9)
    return Result(prep, run_id, ledger, runner, times, labels, equity, cash, symbol_bars, marks, timings)


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


def equity_curve(ledger: Ledger, bars: dict[str, SymbolBars], initial: float,
                 start: pd.Timestamp | None = None, combos: list | None = None,
                 combo_symbol: dict[str, str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
    """Cash and equity at every bar close of every symbol (the union timeline), vectorised.

    A position counts from its entry fill to its exit fill: held at the closes of bars
    [entry bar, exit bar). Stock positions count at market value, futures at unrealised P&L.
    """
    if not bars:
        return np.empty(0, np.int64), np.empty(0), np.empty(0), {}
    times = np.unique(np.concatenate([b.end for b in bars.values()]))
    if start is not None:
        times = times[times >= int(start.value)]
    # cash: each fill's change lands on the first close at or after it
    cash_delta = np.zeros(len(times) + 1)
    # a fill's cash lands at the close of the bar it filled in (an open fill is before that close)
    owner = combo_symbol or {}
    fill_times = np.array([bars[owner.get(f.symbol, f.symbol)].end[f.bar] for f in ledger.fills], dtype=np.int64)
    if len(fill_times):
        np.add.at(cash_delta, np.searchsorted(times, fill_times, side="left"),
                  np.array(_cash_deltas(ledger, bars), dtype=np.float64))
    cash = initial + np.cumsum(cash_delta)[: len(times)]
    value = np.zeros(len(times))
    held: dict[str, list[tuple[int, int, float, float]]] = {s: [] for s in bars}
    for t in ledger.trades:
        if t.symbol in bars:
            held[t.symbol].append((t.entry_bar, t.exit_bar, (1 if t.side == "long" else -1) * t.quantity,
                                   t.entry_price))
    marks = {}
    for symbol, pos in ledger.positions.items():
        if symbol in bars:
            held[symbol].append((pos.entry_bar, len(bars[symbol]), pos.quantity, pos.avg_price))
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
    for symbol, spans in held.items():
        if not spans:
            continue
        b = bars[symbol]
        units = np.zeros(len(b) + 1)
        offset = np.zeros(len(b) + 1)
        for lo, hi, qty, entry in spans:
            u = qty * b.multiplier
            units[lo] += u
            units[hi] -= u
            if b.margined:
                offset[lo] += u * entry
                offset[hi] -= u * entry
        units = np.cumsum(units)[:-1]
        per_bar = units * b.close - (np.cumsum(offset)[:-1] if b.margined else 0.0)
        k = np.searchsorted(b.end, times, side="right") - 1
        value += np.where(k >= 0, per_bar[np.maximum(k, 0)], 0.0)
    return times, cash + value, cash, marks


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


def write_journal(result: Result, journal: Journal, mode: str = "backtest") -> None:
    """Everything about the run, in the shared journal."""
    prep = result.prepared
    run_id = result.run_id
    iso = _iso
    journal.start_run(mode, prep.plan.name, strategy_path=str(prep.path),
                      strategy_text=prep.doc.text, params=prep.plan.params,
                      settings={**prep.settings, "data": str(prep.data_path), "timezone": prep.timezone,
                                "overrides": prep.overrides},
                      symbols=prep.symbols, bar=prep.bar, currency=prep.settings.get("currency", "USD"),
                      initial_cash=result.ledger.initial_cash, run_id=run_id)
    runner = result.runner
    with journal.transaction():
        for rec in runner.orders:
            it = rec.intent
            journal.order(run_id, it.tag, iso(rec.time), it.symbol, it.action, it.quantity or 0.0, it.order_type,
                          limit_price=it.limit, stop_price=it.stop, tif=it.tif, rule=it.rule, intent=it.intent,
                          legs=rec.legs, status=rec.status, reason=rec.reason or it.reason)
            if rec.status_time:
                journal.order_status(it.tag, rec.status, iso(rec.status_time), rec.reason)
    journal.many("decisions", ("run_id", "ts", "symbol", "rule", "kind", "outcome", "reason"),
                 ((run_id, iso(d.time), d.symbol, d.rule, d.kind, d.outcome, d.reason) for d in runner.decisions))
    journal.many("fills", ("run_id", "order_ref", "ts", "symbol", "action", "quantity", "price", "multiplier",
                           "commission"),
                 ((run_id, f.order_ref, iso(f.time), f.symbol, f.action, f.quantity, f.price, f.multiplier,
                   f.commission) for f in result.ledger.fills))
    journal.many("trades", ("run_id", "symbol", "side", "quantity", "multiplier", "entry_ts", "entry_price",
                            "exit_ts", "exit_price", "pnl", "return_pct", "bars_held", "mae", "mfe", "commission",
                            "entry_rule", "exit_rule", "exit_reason", "legs"),
                 ((run_id, t.symbol, t.side, t.quantity, t.multiplier, iso(t.entry_time), t.entry_price,
                   iso(t.exit_time), t.exit_price, t.pnl, t.return_pct, t.bars_held, t.mae, t.mfe, t.commission,
                   t.entry_rule, t.exit_rule, t.exit_reason, json.dumps(t.legs, default=str) if t.legs else None)
                  for t in result.ledger.trades))
    idx = _thin_indices(result.equity, 10_000)
    journal.many("equity", ("run_id", "ts", "cash", "equity"),
                 ((run_id, iso(int(result.labels[i])), float(result.cash[i]), float(result.equity[i])) for i in idx))
    for symbol, b in result.bars.items():
        rows = _thin_bars(b, 4_000)
        journal.many("prices", ("run_id", "symbol", "ts", "open", "high", "low", "close"),
                     ((run_id, symbol, iso(int(t)), o, h, lo, c) for t, o, h, lo, c in rows))
    end_ts = iso(int(result.labels[-1])) if len(result.labels) else iso(0)
    journal.many("positions", ("run_id", "ts", "symbol", "quantity", "avg_price", "market_price"),
                 ((run_id, end_ts, s, p.quantity, p.avg_price, result.marks.get(s))
                  for s, p in result.ledger.positions.items()))


def _iso(ns: int) -> str:
    return pd.Timestamp(ns, tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


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
    return np.unique(np.concatenate(keep))


def _argreduce(values: np.ndarray, edges: np.ndarray, fn) -> np.ndarray:
    return np.array([fn(values[a:b]) for a, b in zip(edges[:-1], edges[1:])], dtype=np.int64)


def _thin_bars(b: SymbolBars, target: int):
    """OHLC bars merged into at most `target` buckets (first open, max high, min low, last close)."""
    n = len(b)
    if n <= target:
        return zip(b.start, b.open, b.high, b.low, b.close)
    edges = np.linspace(0, n, target + 1).astype(np.int64)[:-1]
    return zip(b.start[edges], b.open[edges], np.maximum.reduceat(b.high, edges), np.minimum.reduceat(b.low, edges),
               b.close[np.append(edges[1:] - 1, n - 1)])
