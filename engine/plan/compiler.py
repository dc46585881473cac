"""Compile checked expressions into the Plan's DAG.

Normalisation makes structurally equal subexpressions one node: keyword arguments are bound to
their positions and defaults filled (`ema(close, length=8)` is `ema(close, 8)`), params become
their values, named indicators are inlined by reference, `between` becomes two comparisons,
and constant subexpressions are folded. Warm-up propagates through the graph: a function's
lookback is added to the longest warm-up of its inputs, a lag adds its bars.

There is no forward indexing in the language (a lag is a constant >= 0), so a node can only
see the current bar and earlier ones: look-ahead is impossible by construction.
"""

from __future__ import annotations

import math
import operator
from typing import Any

from ..dsl import ast, registry
from . import nodes as N

_BAR_FIELDS = {"open", "high", "low", "close", "volume"}
_CLOCK = {"time": "time", "dayofweek": "number", "minutes_to_close": "number",
          "minutes_since_open": "number", "bar_index": "number"}
_ARITH = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_CMP = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
        "==": operator.eq, "!=": operator.ne}


class CompileError(Exception):
    """An expression that type-checked but cannot be compiled (a bug, or an unchecked input)."""


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        return repr(value)
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


PERCENT_UNITS = {"position.pnl_pct"}   # run context values given in percent units (see _attr)


class Compiler:
    """Builds one Plan's node table. Use `expr(node)` for each expression, then `nodes`."""

    def __init__(self, params: dict[str, Any] | None = None, named: dict[str, ast.Node] | None = None,
                 classes: dict[str, list[tuple[str, ast.Node]]] | None = None,
                 context_names: set[str] | None = None):
        self.params = dict(params or {})
        self.named = dict(named or {})
        self.classes = dict(classes or {})
        self.context_names = set(context_names or ())  # plain names that come from the run (credit, legs)
        self.nodes: list[N.Node] = []
        self._by_key: dict[tuple, int] = {}
        self._named_ids: dict[str, int] = {}
        self._compiling: set[str] = set()
        self.inputs = N.Inputs()

    # ---- node table ------------------------------------------------------------------------
    def _add(self, op: str, attrs: tuple, args: tuple[int, ...], kind: str, series: bool, warmup: int,
             label: str, market: bool | None = None) -> int:
        key = (op, attrs, args, kind)    # kind: the constant true is not the number 1 (True == 1.0)
        found = self._by_key.get(key)
        if found is not None:
            return found
        if market is None:
            market = all(self.nodes[a].market for a in args)
        node = N.Node(len(self.nodes), op, attrs, args, kind, series, warmup, market, label)
        self.nodes.append(node)
        self._by_key[key] = node.id
        return node.id

    def const(self, value: Any) -> int:
        if isinstance(value, bool):
            kind = "boolean"
        elif isinstance(value, str):
            kind = "string"
        else:
            value = float(value)
            kind = "number"
        return self._add(N.CONST, (value,), (), kind, False, 0, _fmt(value), market=True)

    def _is_const(self, node_id: int) -> bool:
        return self.nodes[node_id].op == N.CONST

    def _value(self, node_id: int) -> Any:
        return self.nodes[node_id].attrs[0]

    def _w(self, *ids: int) -> int:
        return max((self.nodes[i].warmup for i in ids), default=0)

    def _s(self, *ids: int) -> bool:
        return any(self.nodes[i].series for i in ids)

    def _l(self, node_id: int, parent_prec: int = 0) -> str:
        node = self.nodes[node_id]
        prec = {N.LOGIC: 1 if node.attrs[:1] == ("or",) else 2, N.NOT: 3, N.COMPARE: 4, N.IN: 4,
                N.BINARY: 5 if node.attrs[:1] in (("+",), ("-",)) else 6}.get(node.op, 9)
        return f"({node.label})" if prec < parent_prec else node.label

    def field(self, name: str, symbol: str | None = None) -> int:
        self.inputs.fields.setdefault(symbol, set()).add(name)
        label = name if symbol is None else f'symbol("{symbol}").{name}'
        return self._add(N.FIELD, (symbol, name), (), "number", True, 0, label, market=True)

    # ---- expressions -----------------------------------------------------------------------
    def expr(self, node: ast.Node) -> int:
        method = getattr(self, "_" + type(node).__name__.lower(), None)
        if method is None:  # pragma: no cover - every AST class has a method
            raise CompileError(f"cannot compile {type(node).__name__}")
        return method(node)

    def _number(self, node: ast.Number) -> int:
        return self.const(node.value)

    def _bool(self, node: ast.Bool) -> int:
        return self.const(node.value)

    def _string(self, node: ast.String) -> int:
        return self.const(node.value)

    def _timeofday(self, node: ast.TimeOfDay) -> int:
        return self._add(N.CONST, (float(node.minutes), "time"), (), "time", False, 0,
                         f"{node.minutes // 60:02d}:{node.minutes % 60:02d}", market=True)

    def _duration(self, node: ast.Duration) -> int:
        return self._add(N.CONST, (float(node.seconds), "duration"), (), "duration", False, 0,
                         f"{node.seconds:g}s", market=True)

    def _name(self, node: ast.Name) -> int:
        name = node.id
        if name in _BAR_FIELDS:
            return self.field(name)
        if name in self.params:
            return self.const(self.params[name])
        if name in self.named:
            if name in self._named_ids:
                return self._named_ids[name]
            if name in self._compiling:
                raise CompileError(f"indicator '{name}' depends on itself")
            self._compiling.add(name)
            try:
                node_id = self.expr(self.named[name])
            finally:
                self._compiling.discard(name)
            self._named_ids[name] = node_id
            return node_id
        if name in self.classes:
            return self._classify(name)
        if name in _CLOCK:
            self.inputs.clock.add(name)
            return self._add(N.CLOCK, (name,), (), _CLOCK[name], True, 0, name, market=True)
        if name in self.context_names:
            self.inputs.context.add(name)
            return self._add(N.CONTEXT, (name,), (), "number", True, 0, name, market=False)
        raise CompileError(f"unknown name '{name}'")

    def _classify(self, name: str) -> int:
        if name in self._named_ids:
            return self._named_ids[name]
        cases = self.classes[name]
        args = tuple(self.expr(cond) for _, cond in cases)
        labels = tuple(label for label, _ in cases)
        node_id = self._add(N.CLASSIFY, labels, args, "string", True, self._w(*args), name)
        self._named_ids[name] = node_id
        return node_id

    def _attr(self, node: ast.Attr) -> int:
        if isinstance(node.obj, ast.Call) and node.obj.func == "symbol":
            ticker = node.obj.args[0].value if node.obj.args else node.obj.kwargs[0].value.value
            return self.field(node.name, ticker)
        if isinstance(node.obj, ast.Name) and node.obj.id == "scan":
            return self.scan(node.name)
        if isinstance(node.obj, ast.Name):
            name = f"{node.obj.id}.{node.name}"
            self.inputs.context.add(name)
            kind = "duration" if name == "position.time_held" else (
                "string" if node.name in ("grade", "class", "right") else "number")
            context = self._add(N.CONTEXT, (name,), (), kind, True, 0, name, market=False)
            if name in PERCENT_UNITS:
                # The run states these in percent units (3.0 for 3%), the language writes 3% as
                # 0.03: the expression reads the fraction, so `position.pnl_pct <= -3%` means it.
                return self._add(N.BINARY, ("/",), (context, self.const(100.0)), kind, True, 0, name,
                                 market=False)
            return context
        raise CompileError("unsupported field access")

    def scan(self, name: str) -> int:
        """This symbol's scan result `scan.<name>`: market data (the scanner computes it from the
        universe's bars before the rules read it)."""
        self.inputs.scan.add(name)
        kind = "string" if name in ("grade", "class") else "boolean" if name == "picked" else "number"
        return self._add(N.SCAN, (name,), (), kind, True, 0, f"scan.{name}", market=True)

    def _lag(self, node: ast.Lag) -> int:
        x = self.expr(node.obj)
        bars = self.expr(node.bars)
        n = int(self._value(bars))
        if n < 0:  # the checker rejects this; kept as a hard stop against look-ahead
            raise CompileError("negative lag would look into the future")
        if n == 0 or not self.nodes[x].series:
            return x
        inner = self.nodes[x]
        if inner.op == N.LAG:  # x[1][2] is x[3]
            x, n = inner.args[0], n + inner.attrs[0]
        return self._add(N.LAG, (n,), (x,), self.nodes[x].kind, True, self._w(x) + n,
                         f"{self._l(x, 9)}[{n}]")

    def _unary(self, node: ast.Unary) -> int:
        x = self.expr(node.operand)
        if node.op == "+":
            return x
        if node.op == "-":
            if self._is_const(x):
                return self.const(-self._value(x))
            return self._add(N.NEG, (), (x,), self.nodes[x].kind, self._s(x), self._w(x), f"-{self._l(x, 7)}")
        return self._negate(x)

    def _negate(self, x: int) -> int:
        if self._is_const(x):
            return self.const(not self._value(x))
        inner = self.nodes[x]
        if inner.op == N.NOT:
            return inner.args[0]
        return self._add(N.NOT, (), (x,), "boolean", self._s(x), self._w(x), f"not {self._l(x, 3)}")

    def _binary(self, node: ast.Binary) -> int:
        a, b = self.expr(node.left), self.expr(node.right)
        if node.op in ("and", "or"):
            return self._logic(node.op, a, b)
        if self._is_const(a) and self._is_const(b) and self.nodes[a].kind == self.nodes[b].kind == "number":
            right = self._value(b)
            if not (node.op == "/" and right == 0):
                return self.const(_ARITH[node.op](self._value(a), right))
        kind = "duration" if "duration" in (self.nodes[a].kind, self.nodes[b].kind) else "number"
        prec = 5 if node.op in "+-" else 6
        label = f"{self._l(a, prec)} {node.op} {self._l(b, prec + 1)}"
        return self._add(N.BINARY, (node.op,), (a, b), kind, self._s(a, b), self._w(a, b), label)

    def _logic(self, op: str, a: int, b: int) -> int:
        for x, y in ((a, b), (b, a)):
            if self._is_const(x):
                value = bool(self._value(x))
                if op == "and":
                    return y if value else self.const(False)
                return self.const(True) if value else y
        prec = 1 if op == "or" else 2
        label = f"{self._l(a, prec)} {op} {self._l(b, prec + 1)}"
        return self._add(N.LOGIC, (op,), (a, b), "boolean", self._s(a, b), self._w(a, b), label)

    def _comparison(self, op: str, a: int, b: int) -> int:
        if self._is_const(a) and self._is_const(b):
            return self.const(bool(_CMP[op](self._value(a), self._value(b))))
        label = f"{self._l(a, 5)} {op} {self._l(b, 5)}"
        return self._add(N.COMPARE, (op,), (a, b), "boolean", self._s(a, b), self._w(a, b), label)

    def _compare(self, node: ast.Compare) -> int:
        return self._comparison(node.op, self.expr(node.left), self.expr(node.right))

    def _between(self, node: ast.Between) -> int:
        x = self.expr(node.value)
        return self._logic("and", self._comparison(">=", x, self.expr(node.low)),
                           self._comparison("<=", x, self.expr(node.high)))

    def _in(self, node: ast.In) -> int:
        x = self.expr(node.value)
        values = tuple(sorted({self._value(self.expr(item)) for item in node.options.items}, key=str))
        if self._is_const(x):
            result = self.const(self._value(x) in values)
        else:
            result = self._add(N.IN, (values,), (x,), "boolean", self._s(x), self._w(x),
                               f"{self._l(x, 5)} in {_fmt(values)}")
        return self._negate(result) if node.negated else result

    def _call(self, node: ast.Call) -> int:
        fn = registry.lookup(node.func)
        if fn is None:
            raise CompileError(f"unknown function '{node.func}'")
        if fn.name == "symbol":
            raise CompileError('symbol("X") must be followed by a field, e.g. symbol("VIX").close')
        bound = self._bind(fn, node)
        if fn.name == "at_entry":
            x = bound[0][1]
            self.inputs.context.add("position.entry_bar")
            return self._add(N.AT_ENTRY, (), (x,), self.nodes[x].kind, True, self._w(x),
                             f"at_entry({self.nodes[x].label})", market=False)
        if fn.name in ("delta", "iv"):
            leg = node.args[0].id if node.args else node.kwargs[0].value.id
            name = f"{leg}.{fn.name}"
            self.inputs.context.add(name)
            return self._add(N.CONTEXT, (name,), (), "number", False, 0, name, market=False)
        series_args: list[int] = []
        constants: list[Any] = []
        shown: list[str] = []
        for param, value in bound:
            if param.kind in (registry.LENGTH, registry.CONSTANT):
                v = float(self._value(value))
                constants.append(int(v) if param.kind == registry.LENGTH else v)
                shown.append(_fmt(v))
            else:
                series_args.append(value)
                shown.append(self.nodes[value].label)
        implicit = tuple(self.field(f) for f in fn.inputs)
        if fn.name == "vwap":
            self.inputs.clock.add("session")
            implicit = implicit + (self._add(N.CLOCK, ("session",), (), "number", True, 0, "session",
                                             market=True),)
        args = implicit + tuple(series_args)
        label = f"{fn.name}({', '.join(shown)})"
        if fn.returns in (registry.R_SERIES, registry.R_BOOL_SERIES) or fn.inputs:
            kind = "boolean" if fn.returns == registry.R_BOOL_SERIES else "number"
            params = {p.name: c for p, c in zip([p for p, _ in bound if p.kind in (registry.LENGTH, registry.CONSTANT)],
                                                constants)}
            warmup = self._w(*args) + int(fn.warmup(params))
            return self._add(N.CALL, (fn.name,) + tuple(constants), args, kind, True, warmup, label)
        # elementwise: abs sign log sqrt round min max clamp nz na defined if
        if all(self._is_const(a) for a in args) and fn.name != "if":
            folded = _fold_elementwise(fn.name, [self._value(a) for a in args], constants)
            if folded is not None:
                return self.const(folded)
        if fn.name == "if" and self._is_const(args[0]):
            return args[1] if self._value(args[0]) else args[2]
        kind = self.nodes[args[1]].kind if fn.name == "if" else \
            "boolean" if fn.returns == registry.R_BOOL_FOLLOW else "number"
        return self._add(N.CALL, (fn.name,) + tuple(constants), args, kind, self._s(*args), self._w(*args), label)

    def _bind(self, fn: registry.Function, node: ast.Call) -> list[tuple[registry.Param, int]]:
        """Arguments in signature order with defaults filled, each compiled to a node id."""
        if fn.variadic:
            return [(fn.params[0], self.expr(a)) for a in node.args]
        given: dict[str, ast.Node] = {p.name: a for p, a in zip(fn.params, node.args)}
        given.update({k.name: k.value for k in node.kwargs})
        out = []
        for p in fn.params:
            if p.kind in (registry.LEG, registry.STRING):
                continue
            if p.name in given:
                out.append((p, self.expr(given[p.name])))
            elif not p.required:
                out.append((p, self.const(p.default)))
            else:
                raise CompileError(f"{fn.name}() is missing '{p.name}'")
        return out


def _fold_elementwise(name: str, values: list, constants: list) -> Any:
    try:
        if name == "abs":
            return abs(values[0])
        if name == "sign":
            return float((values[0] > 0) - (values[0] < 0))
        if name == "log":
            return math.log(values[0]) if values[0] > 0 else None
        if name == "sqrt":
            return math.sqrt(values[0]) if values[0] >= 0 else None
        if name == "round":
            return round(values[0], int(constants[0]) if constants else 0)
        if name == "min":
            return min(values)
        if name == "max":
            return max(values)
        if name == "clamp":
            return min(max(values[0], values[1]), values[2])
        if name == "nz":
            return values[0] if values[0] == values[0] else values[1]
        if name in ("na", "defined"):
            return (values[0] == values[0]) == (name == "defined")
    except (TypeError, ValueError):
        return None
    return None
