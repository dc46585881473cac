"""A Plan's market nodes for many symbols at once: a symbols x bars panel per node.

The per-symbol evaluator (evaluate.py) runs the Plan once per symbol; a scanner runs the same
Plan over thousands of symbols, and the per-symbol Python overhead (a call per node per symbol)
is most of its cost. Here every node is one numpy operation over a panel: row j is symbol j's
own bars, right-aligned (a symbol with fewer bars has its first columns empty, and nothing
there reaches its values: kernels and lags start at the symbol's first bar).

Two ways to evaluate, with the values evaluate.py gives:

- `evaluate_panel(plan, bars, keep)`: the whole history once. Elementwise nodes are numpy over
  the panel (the same ufuncs as the 1-D path, so the same numbers to the bit); an indicator
  runs its 1-D kernel on each symbol's row (TA-Lib on a contiguous view, the gap rule and all:
  the same numbers to the bit); lags shift along the bar axis.
- `PanelStream(plan, keep).start(bars)` then `update(...)`: the history evaluated with the
  batched kernels of engine/indicators/batched.py (one bar of every symbol per step, numpy
  across symbols), which keep each symbol's indicator state, so that `update` computes the
  newest bar of every symbol in one step of width S. The batched kernels do TA-Lib's
  operations in TA-Lib's order, but TA-Lib's build fuses some multiply-adds, so a recursive
  indicator (EMA, Wilder's RMA/RSI/ATR) may differ from it in the last bits (tests/
  test_batched.py bounds this at 1e-12 relative; SMA, ROC, change, TR, highest and lowest
  agree to the bit). Kernels without a batched form keep one scalar stream per symbol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..indicators import KERNELS
from ..indicators.batched import BATCHED, _Ring
from ..indicators.gaps import remembering
from . import nodes as N
from .evaluate import Bars, MissingInput, _closure, _op_vec
from .nodes import Plan

_NAN = np.nan


@dataclass
class Panel:
    """Symbols' inputs side by side: `length[j]` bars of symbol j in the last columns of each
    (S, T) array; `start[j] = T - length[j]` is its first bar's column."""

    length: np.ndarray
    width: int            # T, the longest history
    arrays: dict[tuple, np.ndarray]

    @property
    def start(self) -> np.ndarray:
        return self.width - self.length

    @property
    def exists(self) -> np.ndarray:
        return np.arange(self.width)[None, :] >= self.start[:, None]


def _input_key(node: N.Node) -> tuple:
    if node.op == N.FIELD:
        return ("field",) + tuple(node.attrs)
    if node.op == N.CLOCK:
        return ("clock", node.attrs[0])
    raise MissingInput(f"{node.label} is not available when scanning many symbols")


def _source(bars: Bars, key: tuple, label: str) -> np.ndarray:
    if key[0] == "clock":
        if key[1] not in bars.clock:
            raise MissingInput(f"clock value {key[1]!r} is not available for these bars")
        return bars.clock[key[1]]
    _, symbol, name = key
    source = bars.fields if symbol is None else bars.others.get(symbol)
    if source is None or name not in source:
        raise MissingInput(f"no data for {label}" if symbol is None else
                           f"no data for symbol {symbol!r} ({name}): load its bars too")
    return source[name]


def panel(plan: Plan, bars: Sequence[Bars], ids) -> Panel:
    """The inputs the nodes `ids` read, for every symbol of `bars`, right-aligned."""
    length = np.array([len(b) for b in bars], dtype=np.int64)
    width = int(length.max()) if len(length) else 0
    arrays: dict[tuple, np.ndarray] = {}
    for i in ids:
        node = plan.nodes[i]
        if node.op not in (N.FIELD, N.CLOCK, N.SCAN):
            continue
        key = _input_key(node)
        if key in arrays:
            continue
        if (length == width).all():
            out = np.array([np.asarray(_source(b, key, node.label), dtype=np.float64) for b in bars]) \
                if bars else np.zeros((0, 0))
        else:
            out = np.full((len(bars), width), _NAN)
            for j, b in enumerate(bars):
                if length[j]:
                    out[j, width - length[j]:] = _source(b, key, node.label)
        arrays[key] = out.reshape(len(bars), width)
    return Panel(length, width, arrays)


def _last_uses(plan: Plan, ids: list[int]) -> dict[int, int]:
    last: dict[int, int] = {}
    for i in ids:
        for a in plan.nodes[i].args:
            last[a] = i
    return last


def _empty(node: N.Node, shape) -> np.ndarray:
    return np.zeros(shape, dtype=bool) if node.kind == "boolean" else np.full(shape, _NAN)


def _lag_panel(node: N.Node, x, p: Panel):
    n = node.attrs[0]
    shape = (len(p.length), p.width)
    out = _empty(node, shape)
    if not np.ndim(x):
        x = np.full(shape, x, dtype=out.dtype)
    if n < p.width:
        out[:, n:] = x[:, :p.width - n]
    out[np.arange(p.width)[None, :] < (p.start + n)[:, None]] = False if node.kind == "boolean" else _NAN
    return out


def _full(value, shape, kind="number"):
    if np.ndim(value):
        return value
    return np.full(shape, bool(value) if kind == "boolean" else float(value))


def _kernel_rows(node: N.Node, args: list, p: Panel) -> np.ndarray:
    """An indicator on each symbol's own bars by its 1-D kernel (the per-symbol path's numbers)."""
    kernel = KERNELS[node.attrs[0]]
    consts = node.attrs[1:]
    shape = (len(p.length), p.width)
    arrays = [_full(a, shape) for a in args]
    out = _empty(node, shape)
    start = p.start
    for j in range(shape[0]):
        s = int(start[j])
        if s < p.width:
            out[j, s:] = kernel.func(*(a[j, s:] for a in arrays), *consts)
    return out


def _classify(node: N.Node, args: list, shape) -> np.ndarray:
    conds = [np.broadcast_to(np.asarray(a, dtype=bool), shape) for a in args]
    width = max((len(label) for label in node.attrs), default=1)
    return np.select(conds, [np.array(label, dtype=f"<U{width}") for label in node.attrs], default="")


def _op(node: N.Node, args: list, shape):
    if node.op == N.CLASSIFY:
        return _classify(node, args, shape)
    return _op_vec(node, args, shape[-1] if shape else 1)


def history_nodes(plan: Plan, ids) -> set[int]:
    """The nodes needed at every bar: indicators and lags, and what they read (transitively).
    Any other node is elementwise over what it reads, so its value at a bar needs only that
    bar's values, and is computed only where it is asked for."""
    out: set[int] = set()
    for i in ids:
        node = plan.nodes[i]
        if node.op == N.LAG or (node.op == N.CALL and node.attrs[0] in KERNELS):
            out.add(i)
            out |= _closure(plan, node.args)
    return out


def _run(plan: Plan, ids: list[int], keep: set[int], p: Panel, at: np.ndarray | None, kernel, lag) -> dict[int, Any]:
    """The nodes `ids` (market nodes, in order): those of history_nodes over the whole panel,
    the others on the cells `at` ((E, S) bar indices of each symbol's own bars; None: every
    bar). Values no later node reads are dropped as soon as they are used."""
    shape = (len(p.length), p.width)
    # many cells (a scan at every bar): every node over the panel, then the cells taken once
    sparse = at is not None and at.size * 4 < shape[0] * shape[1]
    full = history_nodes(plan, ids) if sparse else set(ids)
    if at is not None:
        cells = (np.arange(len(p.length))[None, :], p.start[None, :] + np.maximum(at, 0))
        point_shape = at.shape
    last = _last_uses(plan, ids)
    values: dict[int, Any] = {}
    cut: dict[int, Any] = {}        # a whole-history value taken at the cells `at`

    def arg(a: int, whole: bool):
        v = values[a]
        if whole or a not in full or not np.ndim(v):
            return v
        if a not in cut:
            cut[a] = v[cells]
        return cut[a]

    with np.errstate(all="ignore"):
        for i in ids:
            node = plan.nodes[i]
            if not node.market:
                raise MissingInput(f"{node.label} is not market data")
            whole = i in full
            args = [arg(a, whole) for a in node.args]
            op = node.op
            if op == N.CONST:
                values[i] = node.attrs[0]
            elif op in (N.FIELD, N.CLOCK, N.SCAN):
                values[i] = p.arrays[_input_key(node)]
                if not whole:
                    values[i] = values[i][cells]
            elif op == N.CALL and node.attrs[0] in KERNELS:
                values[i] = kernel(i, node, args)
            elif op == N.LAG:
                values[i] = lag(i, node, args[0])
            else:
                values[i] = _op(node, args, shape if whole else point_shape)
            for a in node.args:
                if last.get(a) == i and a not in keep:
                    values.pop(a, None)
                    cut.pop(a, None)
    return {i: arg(i, at is None) for i in keep}


def evaluate_panel(plan: Plan, bars: Sequence[Bars], keep, at: np.ndarray | None = None,
                   p: Panel | None = None) -> tuple[Panel, dict[int, Any]]:
    """The nodes `keep` (market nodes) for every symbol of `bars`: at every bar ((S, T)
    panels, right-aligned) or, given `at` ((E, S) indices into each symbol's own bars, -1 for
    none: the value there is meaningless), at those bars ((E, S) arrays). Constants stay
    scalars. Indicators run their 1-D kernel on each symbol's bars: the per-symbol numbers."""
    keep = set(keep)
    ids = sorted(_closure(plan, keep))
    p = p if p is not None else panel(plan, bars, ids)
    with remembering():     # an input read by several kernels is checked for gaps once per symbol
        return p, _run(plan, ids, keep, p, at, lambda i, node, args: _kernel_rows(node, args, p),
                       lambda i, node, x: _lag_panel(node, x, p))


class _LagState:
    def __init__(self, node: N.Node, width: int):
        self.n = node.attrs[0]
        self.boolean = node.kind == "boolean"
        self.ring = _Ring(self.n + 1, width)
        if self.boolean:
            self.ring.buf = self.ring.buf.astype(bool)

    def seed(self, x: np.ndarray, p: Panel) -> None:
        """The last n+1 of each symbol's own values of the lagged series."""
        size = self.ring.size
        cols = np.arange(len(p.length))
        for k in range(size):
            i = p.length - size + k                     # own bar index
            ok = i >= 0
            self.ring.buf[i[ok] % size, cols[ok]] = x[cols[ok], (p.start + i)[ok]]
        self.ring.count = p.length.copy()

    def update(self, x, has_bar: np.ndarray):
        width = len(has_bar)
        x = np.broadcast_to(np.asarray(x, dtype=self.ring.buf.dtype), (width,))
        self.ring.push(x, None if has_bar.all() else has_bar)
        back = self.ring.back(self.n)
        return np.where(self.ring.count > self.n, back, False if self.boolean else _NAN)


class _ScalarStreams:
    """A kernel without a batched form: one scalar stream per symbol, fed its own bars."""

    def __init__(self, node: N.Node, width: int):
        kernel = KERNELS[node.attrs[0]]
        self.boolean = kernel.boolean
        self.streams = [kernel.stream(*node.attrs[1:]) for _ in range(width)]

    def seed(self, arrays: list, p: Panel) -> None:
        for j, stream in enumerate(self.streams):
            s = int(p.start[j])
            for bar in zip(*(a[j, s:].tolist() for a in arrays)):
                stream.update(*bar)

    def update(self, rows: list, has_bar: np.ndarray):
        out = np.zeros(len(self.streams), dtype=bool) if self.boolean else np.full(len(self.streams), _NAN)
        for j in np.flatnonzero(has_bar).tolist():
            out[j] = self.streams[j].update(*(r[j] for r in rows))
        return out


class PanelStream:
    """The market nodes `keep` of a Plan for S symbols, bar by bar, all symbols in one step.

    `start(bars)` evaluates every symbol's history (one Bars each, in a fixed symbol order) and
    keeps each indicator's state per symbol; it returns the (S, T) history of the kept nodes,
    right-aligned as a `Panel`. `update(fields, clock=None, others=None, has_bar=None)` takes
    the next bar of every symbol, as width-S arrays in that order: `fields['close'][j]` is
    symbol j's close (every field the Plan reads: `inputs`), `clock[name]` the clock values
    the Plan reads, `others[symbol][field]` another symbol's latest closed value (a scalar or a
    row); `has_bar[j]` False when symbol j has no new bar (its state stays as it was; its row
    of results is then meaningless). It returns the kept nodes' values for this bar (width-S
    arrays, constants as scalars), which equal evaluate.py's on each symbol's bars extended by
    the new one (to 1e-12 relative, see the module's docstring).
    """

    def __init__(self, plan: Plan, keep):
        self.plan = plan
        self.keep = set(keep)
        self.ids = sorted(_closure(plan, self.keep))
        self.width = 0
        self._state: dict[int, Any] = {}

    @property
    def inputs(self) -> list[tuple]:
        """What `update` reads: ('field', None, name), ('field', symbol, name), ('clock', name)."""
        return list(dict.fromkeys(_input_key(self.plan.nodes[i]) for i in self.ids
                                  if self.plan.nodes[i].op in (N.FIELD, N.CLOCK, N.SCAN)))

    def start(self, bars: Sequence[Bars], at: np.ndarray | None = None) -> tuple[Panel, dict[int, Any]]:
        """Every symbol's history (its Bars, in the order later rows follow); the kept nodes'
        values as evaluate_panel returns them (at every bar, or at the cells `at`)."""
        p = panel(self.plan, bars, self.ids)
        self.width = width = len(p.length)
        shape = (width, p.width)
        exists = p.exists
        self._state = {}

        def kernel(i, node, args):
            if node.attrs[0] in BATCHED:
                k = BATCHED[node.attrs[0]](width, *node.attrs[1:])
                arrays = [np.ascontiguousarray(_full(a, shape).T) for a in args]
                self._state[i] = k
                return np.ascontiguousarray(k.run(*arrays, valid=np.ascontiguousarray(exists.T)).T)
            k = self._state[i] = _ScalarStreams(node, width)
            k.seed([_full(a, shape) for a in args], p)
            return _kernel_rows(node, args, p)

        def lag(i, node, x):
            k = self._state[i] = _LagState(node, width)
            k.seed(_full(x, shape, node.kind), p)
            return _lag_panel(node, x, p)

        return p, _run(self.plan, self.ids, self.keep, p, at, kernel, lag)

    def update(self, fields: Mapping[str, np.ndarray], clock: Mapping[str, np.ndarray] | None = None,
               others: Mapping[str, Mapping[str, Any]] | None = None,
               has_bar: np.ndarray | None = None) -> dict[int, Any]:
        width = self.width
        has = np.ones(width, dtype=bool) if has_bar is None else np.asarray(has_bar, dtype=bool)
        values: dict[int, Any] = {}
        shape = (width,)
        with np.errstate(all="ignore"):
            for i in self.ids:
                node = self.plan.nodes[i]
                args = [values[a] for a in node.args]
                op = node.op
                if op == N.CONST:
                    values[i] = node.attrs[0]
                elif op == N.FIELD:
                    symbol, name = node.attrs
                    if symbol is None:
                        if name not in fields:
                            raise MissingInput(f"no data for {node.label}")
                        v = fields[name]
                    else:
                        v = (others or {}).get(symbol, {}).get(name)
                        if v is None:
                            raise MissingInput(f"no data for symbol {symbol!r} ({name})")
                    values[i] = np.broadcast_to(np.asarray(v, dtype=np.float64), shape)
                elif op == N.CLOCK:
                    if clock is None or node.attrs[0] not in clock:
                        raise MissingInput(f"clock value {node.attrs[0]!r} is not given")
                    values[i] = np.broadcast_to(np.asarray(clock[node.attrs[0]], dtype=np.float64), shape)
                elif op == N.SCAN:
                    raise MissingInput(f"{node.label} is not available when scanning many symbols")
                elif op == N.CALL and node.attrs[0] in KERNELS:
                    k = self._state[i]
                    rows = [np.ascontiguousarray(_full(a, shape)) for a in args]
                    values[i] = k.update(*rows, has_bar=has) if isinstance(k, BATCHED_TYPES) else k.update(rows, has)
                elif op == N.LAG:
                    values[i] = self._state[i].update(args[0], has)
                else:
                    values[i] = _op(node, args, shape)
        return {i: values[i] for i in self.keep}


BATCHED_TYPES = tuple(BATCHED.values())
