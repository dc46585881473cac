"""Rescans as bars arrive: a scanner's state over its universe, one new bar per symbol at a time.

    state = ScanState(sp, inputs, bar_seconds=86400)     # the history, evaluated once
    first = state.scan()                                 # the scan at the last bar of it
    result = state.update(end, {"open": o, "high": h, "low": l, "close": c, "volume": v})
    result = state.update_bars(end, {"AAPL": {"open": ..., "close": ...}, ...})

`update` takes the bar that closed at `end` (ns UTC) for every symbol, as arrays in
`state.symbols` order (`has_bar[j]` False, or a symbol missing from `update_bars`' mapping: that
symbol has no new bar; its indicators keep their state and it becomes stale data for this
scan). Each indicator keeps its state per symbol (engine/plan/batched.py's PanelStream, numpy
across symbols), so the new row of every factor costs one step of width S, then one
cross-section (scanner/workspace.py's, the one `run_scan` uses). The result is a ScanResult
with one scan (times == [end]), equal to `run_scan` over each symbol's bars extended by the new
ones: the same statuses, picks and order, the factor values to 1e-12 relative (recursive
indicators: see engine/plan/batched.py; tests/test_scan_incremental.py).

The universe is fixed at construction: a symbol without bars then stays "no data".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..plan.batched import PanelStream
from .compile import ScanPlan
from .result import ScanResult
from .workspace import SymbolInput, _gather, cross_section


class _Ends(Mapping):
    """Each symbol's bar closes: the history's, then the ones `update` added."""

    def __init__(self, base: dict[str, np.ndarray], symbols: tuple[str, ...]):
        self.base = base
        self.col = {s: j for j, s in enumerate(symbols)}
        self.added: list[tuple[int, np.ndarray]] = []

    def __getitem__(self, symbol):
        base = self.base[symbol]
        j = self.col[symbol]
        extra = [t for t, has in self.added if has[j]]
        return np.concatenate([base, np.asarray(extra, dtype=np.int64)]) if extra else base

    def __iter__(self):
        return iter(self.base)

    def __len__(self):
        return len(self.base)


class ScanState:
    """A scanner kept current bar by bar over a fixed universe (see the module's docstring).

    `symbols` is the universe's order (the order of every array `update` takes); `inputs` the
    history as `run_scan` takes it (scanning.symbol_inputs); `fields` the bar fields `update`
    needs (open/high/low/close/volume the Plan reads), `clock` the clock values it needs."""

    def __init__(self, sp: ScanPlan, inputs: dict[str, SymbolInput], *, bar_seconds: float,
                 universe: tuple[str, ...] | None = None, source: str = "", timezone: str = "America/New_York"):
        self.sp = sp
        self.symbols = tuple(universe if universe is not None else inputs)
        self.bar_seconds = bar_seconds
        self.source, self.timezone = source, timezone
        n = len(self.symbols)
        self.cols = [c for c, s in enumerate(self.symbols) if s in inputs and len(inputs[s].ends)]
        self.present = np.zeros(n, dtype=bool)
        self.present[self.cols] = True
        self.count = np.zeros(n, dtype=np.int64)
        self.last_end = np.zeros(n, dtype=np.int64)
        for c in self.cols:
            ends = inputs[self.symbols[c]].ends
            self.count[c] = len(ends)
            self.last_end[c] = ends[-1]
        self.stream = PanelStream(sp.plan, sp.market)
        at = (self.count[self.cols] - 1)[None, :]
        _, values = self.stream.start([inputs[self.symbols[c]].bars for c in self.cols], at=at)
        self.gathered = _gather(sp, values, at, self.cols, (1, n))
        self.ends = _Ends({s: inputs[s].ends for s in self.symbols if s in inputs}, self.symbols)
        self.time = int(self.last_end[self.cols].max()) if self.cols else 0
        keys = self.stream.inputs
        self.fields = [k[2] for k in keys if k[0] == "field" and k[1] is None]
        self.clock = [k[1] for k in keys if k[0] == "clock"]

    def scan(self) -> ScanResult:
        """The scan at the latest bar close seen (the history's last, or the last update's)."""
        index = np.where(self.present, self.count - 1, -1)[None, :]
        age = np.where(self.present, self.time - self.last_end, 0)[None, :]
        return cross_section(self.sp, self.symbols, np.array([self.time], dtype=np.int64), self.gathered, index,
                             age, self.present, self.ends, bar_seconds=self.bar_seconds, source=self.source,
                             timezone=self.timezone)

    def update(self, end: int, fields: Mapping[str, Any], clock: Mapping[str, Any] | None = None,
               others: Mapping[str, Mapping[str, Any]] | None = None, has_bar=None) -> ScanResult:
        """The bar closing at `end` for every symbol (arrays in `symbols` order), then the scan."""
        end = int(end)
        if end <= self.time:
            raise ValueError(f"a new bar must close after the last one ({self.time}), got {end}")
        n = len(self.symbols)
        has = np.ones(n, dtype=bool) if has_bar is None else np.asarray(has_bar, dtype=bool).copy()
        has &= self.present
        cols = self.cols
        missing = [f for f in self.fields if f not in fields]
        if missing:
            raise KeyError(f"the scan reads {', '.join(missing)}: give it for every symbol")
        rows = {f: np.asarray(fields[f], dtype=np.float64)[cols] for f in self.fields}
        clocks = {c: np.broadcast_to(np.asarray(clock[c], dtype=np.float64), (n,))[cols]
                  for c in self.clock} if clock is not None else None
        values = self.stream.update(rows, clocks, others, has_bar=has[cols])
        sub = has[cols]
        for node_id, g in self.gathered.items():
            v = values[node_id]
            row = g[0, cols]
            new = np.broadcast_to(v, row.shape) if not np.ndim(v) else v
            row[sub] = new[sub]
            g[0, cols] = row
        self.count[has] += 1
        self.last_end[has] = end
        self.ends.added.append((end, has))
        self.time = end
        return self.scan()

    def update_bars(self, end: int, bars: Mapping[str, Mapping[str, float]], clock=None, others=None) -> ScanResult:
        """`update` from {symbol: {field: value}}: the symbols given have a bar closing at `end`."""
        n = len(self.symbols)
        has = np.array([s in bars for s in self.symbols], dtype=bool)
        fields = {}
        for f in self.fields:
            arr = np.full(n, np.nan)
            for j, s in enumerate(self.symbols):
                bar = bars.get(s)
                if bar is not None:
                    arr[j] = bar[f]
            fields[f] = arr
        return self.update(end, fields, clock, others, has_bar=has)


__all__ = ["ScanState"]
