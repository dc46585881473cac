"""One pass over the universe: each symbol's bars through the scanner's Plan (vectorised over its
history, shared terms once), the values the cross-section needs gathered into time x symbol
arrays at the scan times, then the cross-section (scanner/rank.py) for every scan at once.

A scan at time t reads each symbol's latest bar that had closed by t, never a later one. A
symbol with no bar yet, or whose latest bar closed a bar or more before t (it did not trade in
the bar that just closed), takes no part in that scan, with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..plan import nodes as N
from ..plan.batched import evaluate_panel
from ..plan.evaluate import Bars, evaluate_window
from . import rank as R
from .compile import ScanPlan
from .result import BELOW, BEYOND, NO_DATA, NO_VALUE, NOT_YET, PICKED, PREFILTER, STALE, ScanResult


@dataclass(frozen=True)
class SymbolInput:
    """One symbol's bars for the scan: their close times (ns UTC) and the arrays its Plan reads."""

    symbol: str
    ends: np.ndarray
    bars: Bars


def scan_times(inputs: dict[str, SymbolInput], rescan: float | None) -> np.ndarray:
    """The scan times on the bar clock: every bar close of any symbol when `rescan` is None,
    else the first close and then each close at least `rescan` seconds after the last scan."""
    ends = [inp.ends for inp in inputs.values() if len(inp.ends)]
    if not ends:
        return np.zeros(0, dtype=np.int64)
    clock = np.unique(np.concatenate(ends)).astype(np.int64)
    if rescan is None or len(clock) < 2:
        return clock
    step = int(round(rescan * 1e9))
    keep = []
    last = None
    for i, t in enumerate(clock.tolist()):
        if last is None or t - last >= step:
            keep.append(i)
            last = t
    return clock[keep]


def run_scan(sp: ScanPlan, inputs: dict[str, SymbolInput], *, bar_seconds: float, times: np.ndarray | None = None,
             universe: tuple[str, ...] | None = None, source: str = "", timezone: str = "America/New_York") -> ScanResult:
    """The scanner over `universe` (default: the symbols given) at `times` (default: its rescan
    times on the bar clock). Symbols of the universe without an input have no data."""
    spec = sp.spec
    symbols = tuple(universe if universe is not None else inputs)
    if times is None:
        times = scan_times({s: inputs[s] for s in symbols if s in inputs}, spec.rescan)
    times = np.asarray(times, dtype=np.int64)
    e, s_n = len(times), len(symbols)
    index = np.full((e, s_n), -1, dtype=np.int64)
    age = np.zeros((e, s_n), dtype=np.int64)
    present = np.zeros(s_n, dtype=bool)
    cols = [c for c, symbol in enumerate(symbols) if symbol in inputs and len(inputs[symbol].ends)]
    present[cols] = True
    for col in cols:
        ends = inputs[symbols[col]].ends
        j = np.searchsorted(ends, times, side="right") - 1
        index[:, col] = j
        have = j >= 0
        age[have, col] = times[have] - ends[j[have]]
    at = index[:, cols]
    p, values = evaluate_panel(sp.plan, [inputs[symbols[c]].bars for c in cols], sp.market, at=at)
    gathered = _gather(sp, values, at, cols, (e, s_n))
    ends = {s: inputs[s].ends for s in symbols if s in inputs}
    return cross_section(sp, symbols, times, gathered, index, age, present, ends, bar_seconds=bar_seconds,
                         source=source, timezone=timezone)


def _blank(kind: str, shape) -> np.ndarray:
    return np.zeros(shape, dtype=bool) if kind == "boolean" else \
        np.full(shape, "", dtype=object) if kind == "string" else np.full(shape, np.nan)


def _gather(sp: ScanPlan, values: dict, index: np.ndarray, cols: list[int], shape) -> dict[int, np.ndarray]:
    """Each market node's value at each scan (rows) for each symbol (columns): at the symbol's
    latest bar closed by the scan (`index`, -1: none yet, no value)."""
    nodes = sp.plan.nodes
    have = index >= 0
    out = {}
    for node_id in sp.market:
        g = _blank(nodes[node_id].kind, shape)
        if len(cols):
            v = values[node_id]
            got = np.broadcast_to(v, index.shape) if not np.ndim(v) else v
            if len(cols) == shape[1]:            # every symbol has bars: no column to skip
                np.copyto(g, got, where=have, casting="unsafe")
            else:
                sub = g[:, cols]
                sub[have] = got[have]
                g[:, cols] = sub
        out[node_id] = g
    return out


def cross_section(sp: ScanPlan, symbols: tuple[str, ...], times: np.ndarray, gathered: dict[int, np.ndarray],
                  index: np.ndarray, age: np.ndarray, present: np.ndarray, ends, *, bar_seconds: float,
                  source: str = "", timezone: str = "America/New_York") -> ScanResult:
    """The scans (rows of the gathered time x symbol workspace) at once: fresh data, the
    prefilter, normalisation, the composite, min score, ranks, the top N, grades and classes."""
    spec = sp.spec
    nodes = sp.plan.nodes
    e, s_n = index.shape
    status = np.full((e, s_n), NO_DATA, dtype=np.int8)
    status[:, present] = NOT_YET
    has_bar = index >= 0
    status[has_bar] = STALE
    fresh = has_bar & (age < int(bar_seconds * 1e9))
    passed = fresh.copy()
    for c in sp.prefilter:
        passed &= gathered[c.node] if nodes[c.node].op != N.CONST else bool(nodes[c.node].attrs[0])
    status[fresh & ~passed] = PREFILTER
    raw = {name: gathered[node_id] if nodes[node_id].op != N.CONST
           else np.full((e, s_n), float(nodes[node_id].attrs[0])) for name, node_id in sp.factors}
    scored = passed.copy()
    for name in raw:
        scored &= np.isfinite(raw[name])
    status[passed & ~scored] = NO_VALUE
    norm = {f.name: R.normalise(raw[f.name], scored, f.normalise, f.invert, f.clip) for f in spec.factors}
    total = spec.weight_sum
    contribution = {f.name: 100.0 * f.weight * norm[f.name] / total for f in spec.factors}
    score = R.composite([norm[f.name] for f in spec.factors], [f.weight for f in spec.factors], total)
    score = np.where(scored, score, np.nan)
    rank = R.ranks(score, scored)
    with np.errstate(invalid="ignore"):
        enough = scored & (score >= spec.min_score)
    picked = enough & (rank <= spec.top) if spec.top is not None else enough
    status[scored & ~enough] = BELOW
    status[enough & ~picked] = BEYOND
    status[picked] = PICKED
    grade = R.grades(score, scored, spec.grades)
    klass = R.classes(_class_conditions(sp, gathered, norm, score, e), [label for label, _ in sp.classes], scored)
    return ScanResult(sp, symbols, times, status, score, rank, picked, grade, klass, raw, norm, contribution,
                      index, age, ends, gathered, source, timezone, bar_seconds)


def _class_conditions(sp: ScanPlan, gathered: dict, norm: dict, score: np.ndarray, e: int) -> list[np.ndarray]:
    """Each class condition over the whole workspace: its bar-data parts from the gathered
    arrays, the factor names and `score` from the cross-section."""
    if not sp.classes:
        return []
    shape = score.shape
    values: list = [node.attrs[0] if node.op == N.CONST else None for node in sp.plan.nodes]
    for node_id, arr in gathered.items():
        values[node_id] = arr.ravel()           # the language's functions work on 1-D arrays
    context = {name: arr.ravel() for name, arr in norm.items()}
    context["score"] = score.ravel()
    ids = [node_id for _, node_id in sp.classes]
    got = evaluate_window(sp.plan, ids, values, 0, score.size, context)
    return [np.asarray(got[i]).reshape(shape) if np.ndim(got[i]) else got[i] for i in ids]
