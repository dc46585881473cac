"""Evaluate a Plan: vectorised over a whole history, or bar by bar as bars arrive.

Both evaluators share one set of value rules, so a live run sees the numbers a backtest saw:
- a comparison with a missing value (NaN) is false (`between` and `in` too), except `!=`, which
  is true (IEEE's rule), and `not` of a false comparison is true (so `not (x < 1)`, `x != 1` and
  `x not in [1]` hold where x has no value); `na(x)` / `defined(x)` say whether x has one;
- division by zero gives NaN ("no value"), never infinity;
- a lag reaches back over earlier bars, NaN (false for conditions) before the first;
- functions follow engine.indicators' gap rule: a bar with a missing input is skipped;
- another symbol's fields are aligned by the time each bar closes: this bar sees the other
  symbol's latest bar that had closed by then, never a later one.

The vectorised evaluator computes market nodes (bar data only) for every bar at once. Context
nodes (position, legs, scan results) are evaluated by `value_at` at the bars where the run has
that context. `Stream` evaluates every node on the newest bar in O(1) or O(lookback) per bar.
"""

from __future__ import annotations

import math
import operator
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ..indicators import ELEMENTWISE, KERNELS
from ..indicators.gaps import remembering
from . import nodes as N
from .nodes import Plan

_NAN = float("nan")


@dataclass
class Bars:
    """One symbol's bars as arrays, plus clock values and other symbols aligned to them.

    `fields` holds open/high/low/close/volume; `clock` holds time (minutes after midnight in the
    strategy's timezone), dayofweek, bar_index, session (an id per trading session) and, when
    a calendar is known, minutes_to_close / minutes_since_open; `others[symbol][field]` are
    another symbol's values already aligned with `align_asof`; `scan[field]` this symbol's
    scan results as of each bar's close (engine.scanner: rank, score, class, ...).
    """

    fields: dict[str, np.ndarray]
    clock: dict[str, np.ndarray] = field(default_factory=dict)
    others: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    scan: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.fields.values())))


def align_asof(closes_at: np.ndarray, other_closes_at: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each of this symbol's bars, the other symbol's value from its latest bar that had
    closed by the time this bar closed (NaN before its first). Times are sortable numbers
    (e.g. int64 nanoseconds); both arrays ascending."""
    index = np.searchsorted(other_closes_at, closes_at, side="right") - 1
    out = np.full(len(closes_at), np.nan)
    ok = index >= 0
    out[ok] = np.asarray(values, dtype=np.float64)[index[ok]]
    return out


class MissingInput(KeyError):
    """The data given to an evaluator lacks something the plan needs."""

    def __str__(self) -> str:
        return str(self.args[0])


# ---- value rules shared by both evaluators -----------------------------------------------

def _arith_vec(op: str, a, b):
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if op == "+":
            return np.add(a, b)
        if op == "-":
            return np.subtract(a, b)
        if op == "*":
            return np.multiply(a, b)
        return np.where(np.equal(b, 0), np.nan, np.true_divide(a, b))


def _arith_scalar(op: str, a: float, b: float) -> float:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return _NAN if b == 0 else a / b


_CMP = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
        "==": np.equal, "!=": np.not_equal}


def _compare_scalar(op: str, a, b) -> bool:
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    return a >= b


def _lagged(values, n: int, boolean: bool):
    out = np.zeros(len(values), dtype=bool) if boolean else np.full(len(values), np.nan)
    if n < len(values):
        out[n:] = values[: len(values) - n]
    return out


def _elementwise_vec(name: str, args: list, consts: tuple):
    if name == "if":
        cond, a, b = args
        return np.where(cond, a, b)
    if name == "nz":
        x, default = args
        return np.where(np.isnan(x), default, x)
    if name == "na":
        return np.isnan(args[0])
    if name == "defined":
        return ~np.isnan(args[0])
    if name in ("min", "max"):
        fn = np.minimum if name == "min" else np.maximum
        out = np.asarray(args[0], dtype=np.float64)
        for a in args[1:]:
            out = fn(out, a)
        return out
    if name == "clamp":
        x, lo, hi = args
        with np.errstate(invalid="ignore"):
            return np.minimum(np.maximum(x, lo), hi)
    fn = ELEMENTWISE[name]
    return fn(args[0], *consts)


def _elementwise_scalar(name: str, args: list, consts: tuple):
    if name == "if":
        return args[1] if args[0] else args[2]
    if name == "nz":
        return args[1] if args[0] != args[0] else args[0]
    if name == "na":
        return args[0] != args[0]
    if name == "defined":
        return args[0] == args[0]
    if name in ("min", "max", "clamp", "sign", "abs", "log", "sqrt", "round"):
        vec = _elementwise_vec(name, [np.array([float(a)]) for a in args], consts)
        return float(vec[0])
    raise KeyError(name)  # pragma: no cover


# ---- vectorised ----------------------------------------------------------------------------

def _broadcast(value, n: int, kind: str):
    if np.ndim(value):
        return value
    if kind == "boolean":
        return np.full(n, bool(value))
    return np.full(n, float(value))


def evaluate(plan: Plan, bars: Bars, upto: set[int] | None = None) -> list[Any]:
    """Every market node's values over all bars (arrays; constants stay scalars).

    `upto` limits the work to the nodes needed for those node ids. Context nodes are None.
    """
    n = len(bars)
    needed = _closure(plan, upto) if upto is not None else None
    values: list[Any] = [None] * len(plan.nodes)
    with remembering():     # an input read by several kernels is checked for gaps once
        for node in plan.nodes:
            if not node.market or (needed is not None and node.id not in needed):
                continue
            values[node.id] = _eval_vec(node, values, bars, n)
    return values


def _closure(plan: Plan, ids) -> set[int]:
    seen: set[int] = set()
    stack = list(ids)
    while stack:
        i = stack.pop()
        if i not in seen:
            seen.add(i)
            stack.extend(plan.nodes[i].args)
    return seen


def _eval_vec(node: N.Node, values: list, bars: Bars, n: int):
    op = node.op
    args = [values[a] for a in node.args]
    if op == N.CONST:
        return node.attrs[0]
    if op == N.FIELD:
        symbol, name = node.attrs
        source = bars.fields if symbol is None else bars.others.get(symbol)
        if source is None or name not in source:
            raise MissingInput(f"no data for {node.label}" if symbol is None else
                               f"no data for symbol {symbol!r} ({name}): load its bars too")
        return np.asarray(source[name], dtype=np.float64)
    if op == N.CLOCK:
        name = node.attrs[0]
        if name not in bars.clock:
            raise MissingInput(f"clock value {name!r} is not available for these bars")
        return bars.clock[name]
    if op == N.SCAN:
        name = node.attrs[0]
        if name not in bars.scan:
            raise MissingInput(f"scan.{name} is not available: the run has no scanner results")
        return bars.scan[name]
    return _op_vec(node, args, n)


def _op_vec(node: N.Node, args: list, n: int):
    """One computing node over whole arrays, given its arguments' values."""
    op = node.op
    if op == N.CALL:
        name, consts = node.attrs[0], node.attrs[1:]
        kernel = KERNELS.get(name)
        if kernel is not None:
            arrays = [_broadcast(a, n, "number") for a in args]
            return kernel.func(*arrays, *consts)
        return _elementwise_vec(name, args, consts)
    if op == N.BINARY:
        return _arith_vec(node.attrs[0], args[0], args[1])
    if op == N.COMPARE:
        a, b = args
        with np.errstate(invalid="ignore"):
            return _CMP[node.attrs[0]](a, b)
    if op == N.LOGIC:
        return np.logical_and(*args) if node.attrs[0] == "and" else np.logical_or(*args)
    if op == N.NOT:
        return np.logical_not(args[0])
    if op == N.NEG:
        return np.negative(args[0])
    if op == N.LAG:
        return _lagged(args[0], node.attrs[0], node.kind == "boolean")
    if op == N.IN:
        return np.isin(args[0], list(node.attrs[0]))
    if op == N.CLASSIFY:
        labels = node.attrs
        conds = [_broadcast(a, n, "boolean") for a in args]
        width = max((len(label) for label in labels), default=1)
        return np.select(conds, [np.array(label, dtype=f"<U{width}") for label in labels], default="")
    raise AssertionError(f"unexpected node {op}")  # pragma: no cover


def evaluate_window(plan: Plan, ids, values: list, lo: int, hi: int, context: Mapping[str, Any]) -> dict[int, Any]:
    """Nodes `ids` over bars [lo, hi), context nodes included, vectorised.

    `values` are the precomputed market values (from `evaluate`); `context` maps run-state names
    (position.pnl, position.bars_held, ...) to arrays of length hi - lo or to scalars, and
    `position.entry_bar` to the bar at_entry() reads.
    """
    n = hi - lo
    local: dict[int, Any] = {}
    for node_id in sorted(_closure(plan, ids)):
        node = plan.nodes[node_id]
        if node.market:
            v = values[node_id]
            local[node_id] = v[lo:hi] if np.ndim(v) else v
        elif node.op == N.CONTEXT:
            name = node.attrs[0]
            if name not in context:
                raise MissingInput(f"{name} is not known at this point of the run")
            local[node_id] = context[name]
        elif node.op == N.AT_ENTRY:
            entry = int(context["position.entry_bar"])
            child = plan.nodes[node.args[0]]
            if child.market:
                v = values[child.id]
                local[node_id] = v[entry].item() if np.ndim(v) else v
            else:
                local[node_id] = evaluate_window(plan, [child.id], values, entry, entry + 1,
                                                 {k: (v[entry - lo] if np.ndim(v) and 0 <= entry - lo < n else v)
                                                  for k, v in context.items()})[child.id]
        else:
            local[node_id] = _op_vec(node, [local[a] for a in node.args], n)
    return {i: local[i] for i in ids}


def value_at(plan: Plan, node_id: int, i: int, values: list, context: Mapping[str, Any],
             _memo: dict | None = None):
    """One node's value at bar `i`, using precomputed market values and the run's context
    (position.*, legs, credit, scan.*; `position.entry_bar` for at_entry)."""
    memo = {} if _memo is None else _memo
    if node_id in memo:
        return memo[node_id]
    node = plan.nodes[node_id]
    if node.market:
        v = values[node_id]
        if isinstance(v, np.ndarray) and v.ndim:
            v = v[i]
        result = v.item() if isinstance(v, (np.generic, np.ndarray)) else v
    elif node.op == N.CONTEXT:
        name = node.attrs[0]
        if name not in context:
            raise MissingInput(f"{name} is not known at this point of the run")
        result = context[name]
    elif node.op == N.AT_ENTRY:
        entry = context.get("position.entry_bar")
        if entry is None:
            raise MissingInput("at_entry() needs an open position")
        child = plan.nodes[node.args[0]]
        if child.market:
            v = values[child.id]
            result = (v[int(entry)] if np.ndim(v) else v)
            result = result.item() if hasattr(result, "item") else result
        else:
            result = value_at(plan, child.id, int(entry), values, context, {})
    else:
        args = [value_at(plan, a, i, values, context, memo) for a in node.args]
        result = _eval_scalar(node, args)
    memo[node_id] = result
    return result


def scalar_at(plan: Plan, node_id: int, cache: dict | None = None) -> Callable[[int, list, Mapping[str, Any]], Any]:
    """value_at for one node as a function of (bar, values, context), built once from the plan:
    the same values (the same float operations), without walking the plan at every call. A
    subexpression that appears twice is evaluated twice, which changes nothing (they are pure).
    `cache` keeps the functions built, by node."""
    cache = {} if cache is None else cache
    fn = cache.get(node_id)
    if fn is None:
        fn = cache[node_id] = _build_at(plan, node_id, cache)
    return fn


def _scalar_of(v):
    return v.item() if isinstance(v, (np.generic, np.ndarray)) else v


def _build_at(plan: Plan, node_id: int, cache: dict):
    node = plan.nodes[node_id]
    if node.market:
        def market(i, values, context):
            v = values[node_id]
            if isinstance(v, np.ndarray) and v.ndim:
                v = v[i]
            return v.item() if isinstance(v, (np.generic, np.ndarray)) else v
        return market
    op = node.op
    if op == N.CONTEXT:
        name = node.attrs[0]

        def field(i, values, context):
            try:
                return context[name]
            except KeyError:
                raise MissingInput(f"{name} is not known at this point of the run") from None
        return field
    if op == N.AT_ENTRY:
        child = plan.nodes[node.args[0]]
        inner = scalar_at(plan, child.id, cache)

        def at_entry(i, values, context):
            entry = context.get("position.entry_bar")
            if entry is None:
                raise MissingInput("at_entry() needs an open position")
            return inner(int(entry), values, context)
        return at_entry
    args = [scalar_at(plan, a, cache) for a in node.args]
    if op == N.BINARY:
        a, b = args
        kind = node.attrs[0]
        if kind == "+":
            return lambda i, values, context: float(a(i, values, context)) + float(b(i, values, context))
        if kind == "-":
            return lambda i, values, context: float(a(i, values, context)) - float(b(i, values, context))
        if kind == "*":
            return lambda i, values, context: float(a(i, values, context)) * float(b(i, values, context))
        return lambda i, values, context: _arith_scalar("/", float(a(i, values, context)),
                                                        float(b(i, values, context)))
    if op == N.COMPARE:
        a, b = args
        kind = node.attrs[0]
        return lambda i, values, context: bool(_compare_scalar(kind, a(i, values, context), b(i, values, context)))

    def general(i, values, context):
        return _eval_scalar(node, [f(i, values, context) for f in args])
    return general


def explain(plan: Plan, node_id: int, i: int, values: list, context: Mapping[str, Any]) -> list[str]:
    """Each comparison inside a condition at bar i, with the values it compared and whether it
    held: ["vix 12.83 < 25: yes", "credit 0.14 >= 0.2: no"]. For dry runs and journals. Of an
    `or` that held, only the sides that held are said: the others are no part of why it fired."""
    out: list[str] = []
    stack = [node_id]
    seen = set()        # a condition read twice (a scanner's entry and its own `and scan.picked`) is said once
    while stack:
        nid = stack.pop()
        if nid in seen:
            continue
        seen.add(nid)
        node = plan.nodes[nid]
        if node.op == N.LOGIC or node.op == N.NOT:
            args = node.args
            if node.op == N.LOGIC and node.attrs[:1] == ("or",) and _held(plan, nid, i, values, context):
                args = tuple(a for a in args if _held(plan, a, i, values, context))
            stack.extend(reversed(args))
            continue
        if node.op != N.COMPARE:
            held = value_at(plan, node.id, i, values, context)
            out.append(f"{node.label}: {'yes' if held else 'no'}{_cross_values(plan, node, i, values, context)}")
            continue
        left, right = (value_at(plan, a, i, values, context) for a in node.args)
        held = value_at(plan, node.id, i, values, context)
        a, b = (plan.nodes[x] for x in node.args)
        shown_left, shown_right = _show_pair(left, right)
        shown_left = shown_left if a.op != N.CONST else a.label
        shown_right = shown_right if b.op != N.CONST else b.label
        name = a.label if a.op != N.CONST else b.label
        out.append(f"{name} = {shown_left if a.op != N.CONST else shown_right}: "
                   f"{shown_left} {node.attrs[0]} {shown_right} {'yes' if held else 'no'}")
    return out


def _held(plan: Plan, node_id: int, i: int, values: list, context: Mapping[str, Any]) -> bool:
    try:
        return bool(value_at(plan, node_id, i, values, context))
    except MissingInput:
        return True         # not known here: said, as before, rather than left out


def _cross_values(plan: Plan, node: N.Node, i: int, values: list, context: Mapping[str, Any]) -> str:
    """A crossing's values, the bar before and this one: ' (101.3 vs 101.1; the bar before
    100.9 vs 101)', each pair as the crossing compared them ('' for anything else)."""
    if node.op != N.CALL or node.attrs[:1] not in (("crosses_above",), ("crosses_below",)) or i < 1 \
            or len(node.args) != 2:
        return ""
    try:
        now = [value_at(plan, a, i, values, context) for a in node.args]
        before = [value_at(plan, a, i - 1, values, context) for a in node.args]
    except MissingInput:
        return ""
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in now + before):
        return ""
    (a, b), (c, d) = _show_pair(*now), _show_pair(*before)
    return f" ({a} vs {b}; the bar before {c} vs {d})"


def _show(value: Any, digits: int = 7) -> str:
    """A value as a trader reads it: a number to `digits` significant digits, in plain notation
    from 1e-5 to 1e15 (15761.25, not 1.576e+04), trailing zeros dropped."""
    if isinstance(value, (float, int)) and not isinstance(value, bool):
        value = float(value)
        if value != value:
            return "nan"
        if value == 0 or math.isinf(value):
            return f"{value:g}"
        magnitude = math.floor(math.log10(abs(value)))
        if not -5 <= magnitude < 15:
            return f"{value:.{digits}g}"
        text = f"{value:.{max(digits - 1 - magnitude, 0)}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return str(value)


def _show_pair(left: Any, right: Any) -> tuple[str, str]:
    """The two sides of a comparison, with digits enough to tell them apart when they differ
    (a close of 169.61 above a level of 169.6 never reads "169.6 > 169.6 yes")."""
    digits = 7
    a, b = _show(left, digits), _show(right, digits)
    while a == b and left != right and digits < 17 and isinstance(left, float) and isinstance(right, float):
        digits += 1
        a, b = _show(left, digits), _show(right, digits)
    return a, b


def _eval_scalar(node: N.Node, args: list):
    op = node.op
    if op == N.BINARY:
        return _arith_scalar(node.attrs[0], float(args[0]), float(args[1]))
    if op == N.COMPARE:
        return bool(_compare_scalar(node.attrs[0], args[0], args[1]))
    if op == N.LOGIC:
        return bool(args[0] and args[1]) if node.attrs[0] == "and" else bool(args[0] or args[1])
    if op == N.NOT:
        return not args[0]
    if op == N.NEG:
        return -args[0]
    if op == N.IN:
        return args[0] in node.attrs[0]
    if op == N.CALL:
        return _elementwise_scalar(node.attrs[0], args, node.attrs[1:])
    if op == N.CLASSIFY:
        for label, cond in zip(node.attrs, args):
            if cond:
                return label
        return ""
    raise AssertionError(f"cannot evaluate {op} at one bar")  # pragma: no cover


# ---- streaming ---------------------------------------------------------------------------

def _scalar_step(node: N.Node):
    """A function computing one node's value for the newest bar from its arguments' values."""
    op = node.op
    if op == N.BINARY:
        kind = node.attrs[0]
        if kind == "+":
            return lambda a, b: a + b
        if kind == "-":
            return lambda a, b: a - b
        if kind == "*":
            return lambda a, b: a * b
        return lambda a, b: _NAN if b == 0 else a / b
    if op == N.COMPARE:
        return {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
                "==": operator.eq, "!=": operator.ne}[node.attrs[0]]
    if op == N.LOGIC:
        return (lambda a, b: bool(a and b)) if node.attrs[0] == "and" else (lambda a, b: bool(a or b))
    if op == N.NOT:
        return operator.not_
    if op == N.NEG:
        return operator.neg
    return lambda *args: _eval_scalar(node, list(args))


class Stream:
    """Evaluates every market node of a Plan on the newest bar, one bar at a time.

    `update(fields, clock, others, scan)` takes this bar's fields (open/high/low/close/volume),
    its clock values, the other symbols' latest closed values and this symbol's scan result; it
    returns the list of node values for this bar (index by node id). Kernels keep running state, lags keep a ring of
    their last n+1 values, so a bar costs O(1) or O(lookback) whatever the history length.
    """

    def __init__(self, plan: Plan):
        self.plan = plan
        self.values: list[Any] = [None] * len(plan.nodes)
        self._inputs: list[tuple[int, str, str | None, str]] = []   # (id, where, symbol, name)
        self._steps: list[tuple[int, Any, tuple[int, ...]]] = []    # (id, function, argument ids)
        for node in plan.nodes:
            if not node.market:
                continue
            if node.op == N.CONST:
                self.values[node.id] = node.attrs[0]
            elif node.op == N.FIELD:
                self._inputs.append((node.id, "field", node.attrs[0], node.attrs[1]))
            elif node.op == N.CLOCK:
                self._inputs.append((node.id, "clock", None, node.attrs[0]))
            elif node.op == N.SCAN:
                self._inputs.append((node.id, "scan", None, node.attrs[0]))
            elif node.op == N.CALL and node.attrs[0] in KERNELS:
                stream = KERNELS[node.attrs[0]].stream(*node.attrs[1:])
                self._steps.append((node.id, stream.update, node.args))
            elif node.op == N.LAG:
                self._steps.append((node.id, _lag_step(node), node.args))
            else:
                self._steps.append((node.id, _scalar_step(node), node.args))

    def update(self, fields: Mapping[str, float], clock: Mapping[str, float] | None = None,
               others: Mapping[str, Mapping[str, float]] | None = None,
               scan: Mapping[str, Any] | None = None) -> list[Any]:
        values = self.values
        for node_id, where, symbol, name in self._inputs:
            if where == "clock":
                values[node_id] = clock[name]
            elif where == "scan":
                if scan is None or name not in scan:
                    raise MissingInput(f"scan.{name} is not available: the run has no scanner results")
                values[node_id] = scan[name]
            elif symbol is None:
                values[node_id] = float(fields[name])
            else:
                values[node_id] = float((others or {}).get(symbol, {}).get(name, _NAN))
        for node_id, step, args in self._steps:
            values[node_id] = step(*[values[a] for a in args])
        return values


def _lag_step(node: N.Node):
    ring: deque = deque(maxlen=node.attrs[0] + 1)
    empty = False if node.kind == "boolean" else _NAN

    def step(x):
        ring.append(x)
        return ring[0] if len(ring) == ring.maxlen else empty

    return step
