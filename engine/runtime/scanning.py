"""A scanner in a run, and on its own (`qtrade scan`): its bars loaded and brought to its bar
size, run through engine.scanner, and for a strategy its results as of each bar of every
traded symbol: what `scan.rank`, `scan.picked`, ... read there.

The scanner's bars are the scanner's own `data:` (its source relative to the scanner's file,
its bar size) where it says so, else the strategy's; `--data` replaces every source of the run.
Symbols of the scanner's universe without bars take part in no scan, counted as "no data".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..check.model import instrument
from ..check.scan_model import ScannerExprs, ScannerSpec, scanner_spec
from ..config.documents import Document, Workspace
from ..diagnostics import DiagnosticError
from ..market.bars import bar_seconds, load_bars, resample
from ..market.clock import clock_arrays
from ..plan.evaluate import Bars, align_asof
from ..scanner import ScanResult, SymbolInput, compile_scanner, run_scan

_CALENDAR_CLOCK = {"minutes_to_close", "minutes_since_open"}
_FIGURES = re.compile(r"[-+]?\d[\d.]*(?:e[-+]?\d+)?")      # 8e5, 1.25e6, 31, 2004-04-08's parts


def scanner_of(doc: Document, ws: Workspace) -> ScannerSpec | None:
    """The checked scanner a strategy names (a file) or holds (inline), or a scanner document's own."""
    if doc.kind == "scanner":
        exprs = ws.checked.get(doc.abspath)
        return scanner_spec(doc, exprs) if isinstance(exprs, ScannerExprs) else None
    spec = doc.get(("scanner",))
    if isinstance(spec, str):
        ref = doc.refs.get(("scanner",))
        return scanner_of(ref, ws) if ref is not None else None
    if isinstance(spec, dict):
        model = ws.checked.get(doc.abspath)
        exprs = getattr(model, "scanner", None)
        return scanner_spec(doc, exprs) if isinstance(exprs, ScannerExprs) else None
    return None


def _source_path(spec: ScannerSpec, data, fallback: Path | None) -> tuple[Path, str]:
    """Where the scanner's bars come from: --data, its own data.source, else the strategy's."""
    from ..config.documents import _display

    if data is not None:
        return Path(data), str(data)
    own = spec.data.source if spec.data is not None else None
    if own:
        path = (spec.doc.abspath.parent / own).resolve()
        if not path.exists():
            where = spec.where("data", "source")
            raise DiagnosticError([spec.doc.diag(where, f"data source not found: {own} (looked for {path})",
                                                 f"paths are relative to {spec.doc.path}'s folder: fix data.source, "
                                                 "or pass --data FOLDER")])
        return path, _display(path)
    if fallback is not None:
        return fallback, _display(Path(fallback).resolve())
    raise DiagnosticError([spec.doc.diag(spec.where("data") if spec.data is not None else (spec.prefix or ("kind",)),
                                         "no bar data for the scan",
                                         "set data.source in the scanner (a folder of SYMBOL.csv files) or pass --data",
                                         key=spec.data is None)])


def load_frames(spec: ScannerSpec, ws: Workspace, symbols: list[str], *, bar: str, timezone: str, data=None,
                fallback: Path | None = None, frames: dict | None = None) -> tuple[dict[str, pd.DataFrame], str]:
    """The scanner's bars at its bar size, by symbol (the ones found), and where they came from.
    `frames` are bars already loaded for the run at that size from that source (not read again)."""
    path, shown = _source_path(spec, data, fallback)
    wanted = list(dict.fromkeys(symbols))
    have = {s: f for s, f in (frames or {}).items() if s in wanted}
    need = [s for s in wanted if s not in have]
    adjusted = bool(spec.data.adjusted) if spec.data is not None else False
    on_bad = spec.data.on_bad_bar if spec.data is not None else "refuse"
    if need:
        loaded = load_bars(path, symbols=need, timezone=timezone, adjusted=adjusted, on_bad_bar=on_bad, missing="omit")
        if not path.is_dir() and len(loaded) == 1 and len(need) == 1:
            loaded = {need[0]: next(iter(loaded.values()))}
        have.update(loaded)
    seconds = bar_seconds(bar)
    session = spec.data.session if spec.data is not None else "regular"
    out = {}
    for symbol, frame in have.items():
        if frames is not None and symbol in frames and frames[symbol] is frame:
            out[symbol] = frame          # the run's own, already at this size
            continue
        spacing = _spacing(frame.index)
        if spacing is not None and spacing < seconds * 0.999 and seconds < 86400 * 28:
            calendar = instrument(ws, spec.doc, symbol).calendar if session == "regular" else None
            frame = resample(frame, bar, timezone=timezone, calendar=calendar)
        elif spacing is not None and spacing > seconds * 1.5 and seconds < 86400:
            raise DiagnosticError([spec.doc.diag(spec.where("data", "bar") if spec.data is not None else spec.prefix or
                                                 ("kind",), f"{symbol}'s data has bars of about {spacing / 60:g} "
                                                 f"minutes, longer than the scan's {bar} bars",
                                                 "use finer data or a longer bar size")])
        out[symbol] = frame
    return {s: out[s] for s in wanted if s in out}, shown


def _spacing(index: pd.DatetimeIndex) -> float | None:
    if len(index) < 3:
        return None
    return float(np.median(np.diff(index.as_unit("ns").asi8))) / 1e9


def symbol_inputs(sp, frames: dict[str, pd.DataFrame], *, bar: str, timezone: str, ws: Workspace,
                  universe=None) -> dict:
    """Each scanned symbol's bars (of `universe`, default the scanner's; else every frame) as
    the scanner's Plan reads them: its clock values, the other symbols it names aligned as of
    each bar's close."""
    scanned = set(universe if universe is not None else sp.spec.universe if sp.spec.universe is not None else frames)
    plan = sp.plan
    seconds = bar_seconds(bar)
    others = plan.inputs.symbols
    missing = [o for o in others if o not in frames]
    if missing:
        raise DiagnosticError([sp.spec.doc.diag(sp.spec.where("factors"), f"the scan reads {', '.join(missing)}, "
                                                f"which has no bars here", "put its bars beside the universe's",
                                                key=True)])
    ends_of = {o: _ns(frames[o].index) + int(max(_spacing(frames[o].index) or seconds, seconds) * 1e9)
               for o in others}
    out = {}
    for symbol, frame in frames.items():
        if symbol not in scanned:
            continue
        start = _ns(frame.index)
        end = start + int(seconds * 1e9)
        calendar = instrument(ws, sp.spec.doc, symbol).calendar if plan.inputs.clock & _CALENDAR_CLOCK else None
        clock = clock_arrays(frame.index, timezone, seconds, calendar, set(plan.inputs.clock))
        fields = {c: frame[c].to_numpy(dtype=np.float64) for c in ("open", "high", "low", "close", "volume")}
        aligned = {o: {f: align_asof(end, ends_of[o], frames[o][f].to_numpy(dtype=np.float64))
                       for f in plan.inputs.fields.get(o, ())} for o in others}
        out[symbol] = SymbolInput(symbol, end, Bars(fields, clock, aligned))
    return out


def _ns(index: pd.DatetimeIndex) -> np.ndarray:
    return index.as_unit("ns").asi8.copy()


@dataclass
class StrategyScan:
    """A strategy's scanner results and how its rules read them at each bar of a traded symbol."""

    result: ScanResult
    missing: list[str]              # universe symbols without bars
    frames: dict = field(default_factory=dict, repr=False)   # the bars scanned, by symbol (a live run grows them)

    def arrays(self, symbol: str, ends: np.ndarray, fields) -> dict[str, np.ndarray]:
        """`scan.<field>` at each of the symbol's bars (closing at `ends`): the latest scan at or
        before the close; before the first scan, or for a symbol the scanner does not rank,
        no value (NaN, '', false)."""
        r = self.result
        n = len(ends)
        e = np.searchsorted(r.times, ends, side="right") - 1
        col = r.symbols.index(symbol) if symbol in r.symbols else None
        ok = e >= 0 if col is not None else np.zeros(n, dtype=bool)
        out = {}
        for name in fields:
            if name in ("class", "grade"):
                src = r.klass if name == "class" else r.grade
                arr = np.full(n, "", dtype=src.dtype if col is not None else "<U1")
            elif name == "picked":
                src, arr = r.picked, np.zeros(n, dtype=bool)
            else:
                src = r.rank if name == "rank" else r.score if name == "score" else r.norm.get(name)
                if src is None:
                    raise KeyError(name)
                arr = np.full(n, np.nan)
            if col is not None:
                arr[ok] = src[e[ok], col]
            out[name] = arr
        return out

    def reason(self, symbol: str, time: int) -> tuple[str, tuple]:
        """Why `symbol` is not a pick at `time` (ns UTC, a bar's close), in words, and what
        makes two such reasons the same: the words without their figures ("volume # < #") and
        the scan that last picked the symbol (a stretch out of the picks is told from the next)."""
        r = self.result
        if symbol not in r.symbols:
            text, last = f"not in the universe of scanner {r.spec.name}", -1
        elif (e := r.at(time)) < 0:
            text, last = "no scan yet: " + (r.reason_no_scan(symbol) if symbol not in r.ends
                                            else f"the first scan is at {r.when(int(r.times[0]))}" if len(r.times)
                                            else "no symbol of the universe has bars"), -1
        else:
            s = r.symbols.index(symbol)
            picks = self._picks(s)
            last = int(picks[np.searchsorted(picks, e, side="right") - 1]) if len(picks) and picks[0] <= e else -1
            text = r.reason(e, s)
        return text, (_FIGURES.sub("#", text), last)

    def _picks(self, s: int) -> np.ndarray:
        cache = self.__dict__.setdefault("_pick_rows", {})
        if s not in cache:
            cache[s] = np.flatnonzero(self.result.picked[:, s])
        return cache[s]


def strategy_scan(prep, data=None, fetch=None) -> StrategyScan:
    """The scanner of a prepared strategy over its whole history (every rescan time).
    `fetch(symbols, bar, timezone) -> {symbol: frame}`: the scanned names' bars come from a
    broker's history (a live run's warm-up; a name it has none of is left out: no data)."""
    spec = scanner_of(prep.doc, prep.ws)
    if spec.source is not None and fetch is None:
        raise DiagnosticError([refuse_ib_source(spec, "a backtest or `run --broker sim` (a dry run on it too)")])
    sp = compile_scanner(spec)
    bar = spec.data.bar if spec.data is not None and spec.data.bar else prep.bar
    universe = list(spec.universe) if spec.universe is not None else list(prep.symbols)
    # the run's own bars serve when the scan would read the same ones: its source, its bar
    # size, the strategy's adjusted, on_bad_bar and session
    from ..check.model import DataSpec

    own, run = spec.data, DataSpec.from_spec(prep.doc.get(("data",)))
    same = bar == prep.bar and (own is None or ((data is not None or not own.source) and
                                                (own.adjusted, own.on_bad_bar, own.session) ==
                                                (run.adjusted, run.on_bad_bar, run.session)))
    if fetch is not None:
        wanted = list(dict.fromkeys(universe + sp.plan.inputs.symbols))
        frames = {s: prep.frames[s] for s in wanted if s in prep.frames} if bar == prep.bar else {}
        frames.update(fetch([s for s in wanted if s not in frames], bar, prep.timezone))
        frames, shown = {s: frames[s] for s in wanted if s in frames}, "the broker's history"
    else:
        frames, shown = load_frames(spec, prep.ws, universe + sp.plan.inputs.symbols, bar=bar,
                                    timezone=prep.timezone, data=data, fallback=prep.data_path,
                                    frames=prep.frames if same else None)
    inputs = symbol_inputs(sp, frames, bar=bar, timezone=prep.timezone, ws=prep.ws, universe=universe)
    result = run_scan(sp, inputs, bar_seconds=bar_seconds(bar), universe=tuple(universe), source=shown,
                      timezone=prep.timezone)
    return StrategyScan(result, [s for s in universe if s not in frames], frames)


def refuse_ib_source(spec: ScannerSpec, mode: str):
    """The located refusal of IB's scanner as a source where nothing can ask it: it ranks the
    market now and keeps no history, so no simulated run or scan of files can know what it listed."""
    return spec.doc.diag(spec.source.where, f"source.ib_scanner: {mode} cannot ask IB's market scanner, which "
                         "ranks the market now and keeps no history of what it listed",
                         "runs on IB (paper, live, --dry-run --broker ib) ask it; to backtest, scan the universe "
                         "itself: remove source: (a copy of the scanner without it), or `qtrade scan --data DIR` "
                         "ranks the universe's files")


@dataclass
class Scanned:
    """`qtrade scan`: the result and the scan shown (its index in result.times; -1: none yet)."""

    result: ScanResult
    at: int
    bar: str
    note: str = ""                  # what the scan did instead of what the scanner says (said on stderr)


def scan_document(path, overrides: dict | None = None, data=None, at: str | None = None) -> Scanned:
    """The scan of a scanner document (or of a strategy's scanner) at `at` (a date or a date and
    time in the timezone; default: the last bar close of the data): its newest bar close at or
    before then."""
    from ..check import validate
    from ..check.support import is_unsupported
    from ..check.model import Schedule
    from ..diagnostics import error

    report = validate([str(path)], overrides)
    ws = report.workspace
    doc = ws.load(path)
    # a strategy's keys that runs do not read yet do not stop its scanner; the scanner's do
    scanner_file = doc.refs.get(("scanner",)) if doc is not None and doc.kind == "strategy" else doc
    errors = [d for d in report.errors if not is_unsupported(d) or d.message.startswith("scanner.")
              or (scanner_file is not None and d.path == scanner_file.path)]
    if errors:
        raise DiagnosticError(errors)
    if doc is None or doc.kind not in ("scanner", "strategy"):
        kind = doc.kind if doc is not None else "unknown"
        raise DiagnosticError([error(str(path), 1, 1, f"expected a scanner (or a strategy with a scanner), this is "
                                     f"kind: {kind}", "give a file with `kind: scanner`")])
    spec = scanner_of(doc, ws)
    if spec is None:
        raise DiagnosticError([doc.diag(("kind",), "this strategy has no scanner",
                                        "add `scanner: path/to/scanner.yaml`, or scan the scanner file itself")])
    note = ""
    if spec.source is not None:
        if data is None:
            raise DiagnosticError([refuse_ib_source(spec, "`qtrade scan` without --data")])
        if spec.universe is None and doc.kind == "scanner":
            raise DiagnosticError([spec.doc.diag(spec.source.where, "source.ib_scanner: `qtrade scan --data` ranks "
                                                 "a universe's files, and this scanner has none",
                                                 "add the universe that bounds IB's candidates (`universe: [...]`), "
                                                 "or scan the strategy that uses this scanner")])
        note = (f"{spec.source.describe()} is not asked: the universe's names in --data are ranked, every one a "
                "candidate (on IB only the ones IB lists are)")
    timezone = Schedule.from_spec(doc.get(("schedule",))).timezone if doc.kind == "strategy" else "America/New_York"
    fallback = None
    bar = spec.data.bar if spec.data is not None else None
    universe = list(spec.universe) if spec.universe is not None else []
    if doc.kind == "strategy":
        from ..check.model import DataSpec, universe_symbols

        own = DataSpec.from_spec(doc.get(("data",)))
        bar = bar or own.bar
        if own.source:
            fallback = (doc.abspath.parent / own.source).resolve()
        if spec.universe is None:
            universe = universe_symbols(doc)
    bar = bar or "1d"
    sp = compile_scanner(spec)
    frames, shown = load_frames(spec, ws, universe + sp.plan.inputs.symbols, bar=bar, timezone=timezone, data=data,
                                fallback=fallback)
    inputs = symbol_inputs(sp, frames, bar=bar, timezone=timezone, ws=ws, universe=universe)
    closes = np.unique(np.concatenate([inp.ends for s, inp in inputs.items() if s in universe and len(inp.ends)]
                                      or [np.zeros(0, dtype=np.int64)]))
    if at is None:
        times = closes[-1:]
    else:
        when = _at_time(at, timezone, bar_seconds(bar))
        times = closes[closes <= when][-1:]
        if len(closes) and when > closes[-1] + int(bar_seconds(bar) * 1e9):
            last = pd.Timestamp(int(closes[-1]), tz="UTC").tz_convert(timezone)
            last_text = f"{last - pd.Timedelta(1):%Y-%m-%d}" if bar_seconds(bar) >= 86400 else \
                f"{last:%Y-%m-%d %H:%M} {timezone}"       # a daily bar is its day's, though it ends at midnight
            after = (f"--at {at} is after the data's last close ({last_text}): scanned as of that close, and a "
                     "name whose bars end sooner is stale")
            note = f"{note}; {after}" if note else after
    result = run_scan(sp, inputs, bar_seconds=bar_seconds(bar), times=times, universe=tuple(universe), source=shown,
                      timezone=timezone)
    return Scanned(result, len(times) - 1, bar, note)


def _at_time(text: str, timezone: str, seconds: float) -> int:
    """--at: a date means that day's close (bars closed by the end of the day); a date and time
    is that moment, in the timezone."""
    t = pd.Timestamp(text)
    t = t.tz_localize(timezone) if t.tzinfo is None else t.tz_convert(timezone)
    if len(text.strip()) <= 10:
        t = t + pd.Timedelta(days=1)
    return int(t.value)


def unpicked_bars(plan, values: list, n: int, first: int, entry_mask) -> np.ndarray:
    """Bars from `first` where an entry's condition holds apart from the scan on a symbol the
    scanner did not pick: where the kernel journals why it did not enter."""
    picked = values[plan.outputs["scan.picked"]]
    out = np.zeros(n, dtype=bool)
    for label, node_id in plan.outputs.items():
        if label.endswith(".unscanned"):
            v = values[node_id]
            out |= np.asarray(v, dtype=bool) if np.ndim(v) else bool(v)
    out &= ~np.broadcast_to(np.asarray(picked, dtype=bool), (n,))
    if entry_mask is not None:
        out &= entry_mask
    out[:first] = False
    return np.flatnonzero(out)


__all__ = ["Scanned", "StrategyScan", "scan_document", "scanner_of", "strategy_scan", "unpicked_bars"]
