"""Name resolution and type checking of expressions against a Scope.

The Scope says what names mean where the expression is written: bar fields, params (with
their values, so lengths are known before the run), named indicators, legs of the rule's
order, position fields in exit rules, scan results, classifications, clock values. The checker
returns the expression's type and every error it found, each with a span inside the text.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any

from . import ast, registry
from . import types as T
from .parser import ExprError


@dataclass(frozen=True)
class Binding:
    """What a name means in a scope: its type and, for params, its value before the run."""

    type: T.Type
    value: Any = None
    doc: str = ""
    set_by: str = ""        # a param's value given on the command line ("--set fast=2.5")


@dataclass
class Scope:
    """The names an expression may use where it is written."""

    names: dict[str, Binding] = field(default_factory=dict)
    records: dict[str, dict[str, T.Type]] = field(default_factory=dict)
    contexts: frozenset[str] = frozenset()
    unavailable: dict[str, str] = field(default_factory=dict)  # name -> why not here
    legs: frozenset[str] = frozenset()
    misplaced: dict[str, str] = field(default_factory=dict)   # name -> where it is written instead (a misspelt section)

    def child(self, **changes) -> "Scope":
        data = dict(names=dict(self.names), records=dict(self.records), contexts=self.contexts,
                    unavailable=dict(self.unavailable), legs=self.legs, misplaced=dict(self.misplaced))
        data.update(changes)
        return Scope(**data)


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _err(node: ast.Node, message: str, hint: str = "", span: ast.Span | None = None) -> ExprError:
    span = span or node.span
    return ExprError(message, span.start, span.end, hint)


def _text(source: str, node: ast.Node) -> str:
    return source[node.span.start:node.span.end] if source else ""


MAX_LENGTH_BARS = 100_000  # TA-Lib refuses longer periods (TA_BAD_PARAM)


class Checker:
    """Type-checks one expression. Use `check(node, scope, source)`."""

    def __init__(self, scope: Scope, source: str = ""):
        self.scope = scope
        self.source = source
        self.errors: list[ExprError] = []

    def fail(self, node: ast.Node, message: str, hint: str = "", span: ast.Span | None = None) -> T.Type:
        self.errors.append(_err(node, message, hint, span))
        return T.INVALID

    def show(self, node: ast.Node) -> str:
        text = _text(self.source, node)
        return f"`{text}`" if text else "this"

    # ---- constants -------------------------------------------------------------------------
    def constant(self, node: ast.Node) -> Any:
        """The value of a node known before the run (literals, params, arithmetic on them)."""
        if isinstance(node, (ast.Number, ast.Bool, ast.String)):
            return node.value
        if isinstance(node, ast.Name):
            binding = self.scope.names.get(node.id)
            return None if binding is None else binding.value
        if isinstance(node, ast.Unary) and node.op == "-":
            value = self.constant(node.operand)
            return -value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if isinstance(node, ast.Binary) and node.op in "+-*/":
            left, right = self.constant(node.left), self.constant(node.right)
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right)):
                return None
            if node.op == "/" and right == 0:
                return None
            return {"+": left + right, "-": left - right, "*": left * right,
                    "/": left / right if right else None}[node.op]
        return None

    # ---- dispatch --------------------------------------------------------------------------
    def check(self, node: ast.Node) -> T.Type:
        method = getattr(self, "_" + type(node).__name__.lower())
        return method(node)

    def _number(self, node: ast.Number) -> T.Type:
        return T.SCALAR

    def _bool(self, node: ast.Bool) -> T.Type:
        return T.BOOLEAN

    def _string(self, node: ast.String) -> T.Type:
        return T.STRING_SCALAR

    def _timeofday(self, node: ast.TimeOfDay) -> T.Type:
        return T.TIME_OF_DAY

    def _duration(self, node: ast.Duration) -> T.Type:
        return T.DURATION_SCALAR

    def _name(self, node: ast.Name) -> T.Type:
        binding = self.scope.names.get(node.id)
        if binding is not None:
            return binding.type
        if node.id in self.scope.unavailable:
            return self.fail(node, f"'{node.id}' is not available here", self.scope.unavailable[node.id])
        if registry.lookup(node.id) is not None:
            fn = registry.lookup(node.id)
            return self.fail(node, f"'{node.id}' is a function: call it", f"write {fn.signature}")
        if node.id in self.scope.misplaced:
            return self.fail(node, f"unknown name '{node.id}': {self.scope.misplaced[node.id]}",
                             "fix the section's name and this name is known")
        options = list(self.scope.names) + list(self.scope.unavailable)
        return self.fail(node, f"unknown name '{node.id}'{_suggest(node.id, options)}",
                         "names are bar fields (open high low close volume), params, indicators, "
                         "legs, position fields and clock values (time, dayofweek, ...)")

    def _attr(self, node: ast.Attr) -> T.Type:
        base = self.check(node.obj)
        if base.is_error:
            return base
        if base.base != T.RECORD:
            return self.fail(node, f"{self.show(node.obj)} is {T.describe(base)} and has no fields",
                             "only records such as position, a leg, scan or symbol(...) have fields",
                             span=node.name_span)
        fields = self.scope.records.get(base.record, {})
        if node.name in fields:
            return fields[node.name]
        return self.fail(node, f"{base.record} has no field '{node.name}'{_suggest(node.name, fields)}",
                         f"fields of {base.record}: {', '.join(sorted(fields))}", span=node.name_span)

    def _lag(self, node: ast.Lag) -> T.Type:
        base = self.check(node.obj)
        bars_type = self.check(node.bars)
        if bars_type.is_error or base.is_error:
            return T.INVALID
        bars = self.constant(node.bars)
        if bars is not None and not math.isfinite(bars):
            return self.fail(node.bars, f"the lag in x[n] must be a finite number of bars, got {bars:g}")
        if bars_type.series or bars_type.base != T.NUMBER or bars is None:
            return self.fail(node.bars, "the lag in x[n] must be a constant number of bars",
                             "use a literal or a param, e.g. close[1]")
        if bars < 0:
            return self.fail(node.bars, "negative lag would look into the future",
                             "x[n] is the value n bars ago; n must be 0 or more")
        if float(bars) != int(bars):
            return self.fail(node.bars, f"lag must be a whole number of bars, got {bars:g}")
        if base.base == T.RECORD:
            return self.fail(node.obj, f"{self.show(node.obj)} is {T.describe(base)}; lag one of its fields")
        return base

    def _unary(self, node: ast.Unary) -> T.Type:
        operand = self.check(node.operand)
        if operand.is_error:
            return operand
        if node.op == "not":
            if operand.base != T.BOOL:
                return self.fail(node.operand, f"`not` needs a true/false value, but {self.show(node.operand)} "
                                 f"is {T.describe(operand)}", "compare it first, e.g. not (close > open)")
            return operand
        if operand.base not in (T.NUMBER, T.DURATION):
            return self.fail(node.operand, f"`{node.op}` needs a number, but {self.show(node.operand)} is "
                             f"{T.describe(operand)}")
        return operand

    def _binary(self, node: ast.Binary) -> T.Type:
        left, right = self.check(node.left), self.check(node.right)
        if left.is_error or right.is_error:
            return T.INVALID
        series = left.series or right.series
        if node.op in ("and", "or"):
            for side, t in ((node.left, left), (node.right, right)):
                if t.base != T.BOOL:
                    return self.fail(side, f"`{node.op}` needs true/false values, but {self.show(side)} is "
                                     f"{T.describe(t)}",
                                     f"compare it to something first, e.g. {_text(self.source, side) or 'x'} > 0")
            return T.Type(T.BOOL, series)
        # arithmetic
        if left.base == T.NUMBER and right.base == T.NUMBER:
            return T.Type(T.NUMBER, series)
        if left.base == T.DURATION and right.base == T.DURATION and node.op in "+-":
            return T.Type(T.DURATION, series)
        if node.op in "*/" and left.base == T.DURATION and right.base == T.NUMBER:
            return T.Type(T.DURATION, series)
        if node.op == "*" and left.base == T.NUMBER and right.base == T.DURATION:
            return T.Type(T.DURATION, series)
        bad_side, bad = (node.left, left) if left.base != T.NUMBER else (node.right, right)
        return self.fail(bad_side, f"`{node.op}` needs numbers, but {self.show(bad_side)} is {T.describe(bad)}",
                         "arithmetic works on numbers (and durations); compare times and strings instead")

    def _comparable(self, a: T.Type, b: T.Type, op: str) -> bool:
        if op in ("==", "!="):
            return a.base == b.base and a.base != T.RECORD
        return a.base == b.base and a.base in (T.NUMBER, T.TIME, T.DURATION)

    def _check_choice(self, value_type: T.Type, other: ast.Node) -> None:
        """`regime == "trnd"`: a string compared with one of a known set of values."""
        if value_type.choices and isinstance(other, ast.String) and other.value not in value_type.choices:
            self.fail(other, f"'{other.value}' is not one of the possible values"
                      f"{_suggest(other.value, value_type.choices)}",
                      f"possible values: {', '.join(sorted(value_type.choices))}")

    def _compare(self, node: ast.Compare) -> T.Type:
        left, right = self.check(node.left), self.check(node.right)
        if left.is_error or right.is_error:
            return T.INVALID
        if not self._comparable(left, right, node.op):
            hint = "compare numbers with numbers, times (09:45) with `time`, strings with == or !="
            if node.op not in ("==", "!=") and left.base == right.base == T.STRING:
                hint = "strings can only be compared with == and !="
            return self.fail(node, f"cannot compare {T.describe(left)} with {T.describe(right)} using "
                             f"`{node.op}`", hint, span=node.op_span if node.op_span.end else None)
        self._check_choice(left, node.right)
        self._check_choice(right, node.left)
        return T.Type(T.BOOL, left.series or right.series)

    def _between(self, node: ast.Between) -> T.Type:
        types = [self.check(n) for n in (node.value, node.low, node.high)]
        if any(t.is_error for t in types):
            return T.INVALID
        value = types[0]
        for side, t in zip((node.low, node.high), types[1:]):
            if not self._comparable(value, t, "<"):
                return self.fail(side, f"`between` needs values of one kind, but {self.show(node.value)} is "
                                 f"{T.describe(value)} and {self.show(side)} is {T.describe(t)}")
        return T.Type(T.BOOL, any(t.series for t in types))

    def _in(self, node: ast.In) -> T.Type:
        value = self.check(node.value)
        if value.is_error:
            return value
        if not node.options.items:
            return self.fail(node.options, "empty list", "list the values to match, e.g. in [\"A\", \"B\"]")
        for item in node.options.items:
            t = self.check(item)
            if t.is_error:
                return t
            if t.series:
                return self.fail(item, "the values after `in` must be constants")
            if t.base != value.base:
                return self.fail(item, f"{self.show(item)} is {T.describe(t)} but {self.show(node.value)} is "
                                 f"{T.describe(value)}")
            self._check_choice(value, item)
        return T.Type(T.BOOL, value.series)

    def _listof(self, node: ast.ListOf) -> T.Type:
        return self.fail(node, "a list can only follow `in`", "write x in [a, b]")

    def _keyword(self, node: ast.Keyword) -> T.Type:  # pragma: no cover - handled by _call
        return self.check(node.value)

    # ---- calls -----------------------------------------------------------------------------
    def _call(self, node: ast.Call) -> T.Type:
        fn = registry.lookup(node.func)
        if fn is None:
            return self.fail(node, f"unknown function '{node.func}'{_suggest(node.func, registry.all_names())}",
                             "see `qtrade functions` for the list", span=node.func_span)
        if fn.contexts and not (fn.contexts & self.scope.contexts):
            where = {"exit": "exit rules (it needs an open position)",
                     "options": "rules whose order is an options combo"}
            allowed = " or ".join(where.get(c, c) for c in sorted(fn.contexts))
            return self.fail(node, f"{fn.name}() is only available in {allowed}", span=node.func_span)
        bound = self._bind(fn, node)
        if bound is None:
            return T.INVALID
        arg_types: dict[str, T.Type] = {}
        for param, arg in bound:
            t = self._arg(fn, param, arg)
            if t.is_error:
                return T.INVALID
            arg_types[param.name + str(id(arg))] = t
        if fn.relation is not None:
            given = {p.name: self.constant(a) for p, a in bound if p.kind in (registry.LENGTH, registry.CONSTANT)}
            values = {p.name: given.get(p.name, p.default) for p in fn.params
                      if p.kind in (registry.LENGTH, registry.CONSTANT)}
            problem = fn.relation(values)
            if problem:
                return self.fail(node, f"{fn.name}(): {problem}", f"signature: {fn.signature}")
        return self._result(fn, node, bound, list(arg_types.values()))

    def _bind(self, fn: registry.Function, node: ast.Call) -> list[tuple[registry.Param, ast.Node]] | None:
        params = list(fn.params)
        args = list(node.args)
        if fn.variadic:
            if node.kwargs:
                kw = node.kwargs[0]
                self.fail(kw, f"{fn.name}() takes no named arguments, got '{kw.name}'",
                          f"write {fn.signature}")
                return None
            if len(args) < 2:
                self.fail(node, f"{fn.name}() takes two or more values, got {len(args)}",
                          f"write {fn.signature}")
                return None
            return [(params[min(i, len(params) - 1)], a) for i, a in enumerate(args)]
        if len(args) > len(params):
            extra = args[len(params)]
            self.fail(extra, f"{fn.name}() takes at most {len(params)} argument{'s' * (len(params) != 1)}, "
                      f"got {len(args)}", f"signature: {fn.signature}",
                      span=ast.Span(extra.span.start, args[-1].span.end))
            return None
        bound = list(zip(params, args))
        given = {p.name for p, _ in bound}
        names = {p.name for p in params}
        for kw in node.kwargs:
            if kw.name not in names:
                self.fail(kw, f"{fn.name}() has no argument '{kw.name}'{_suggest(kw.name, names)}",
                          f"signature: {fn.signature}")
                return None
            if kw.name in given:
                self.fail(kw, f"argument '{kw.name}' of {fn.name}() is given twice", f"signature: {fn.signature}")
                return None
            given.add(kw.name)
            bound.append((next(p for p in params if p.name == kw.name), kw.value))
        missing = [p.name for p in params if p.required and p.name not in given]
        if missing:
            n = fn.min_args
            self.fail(node, f"{fn.name}() needs {n} argument{'s' * (n != 1)}, missing {', '.join(missing)}",
                      f"signature: {fn.signature}")
            return None
        order = {p.name: i for i, p in enumerate(params)}
        bound.sort(key=lambda pair: order[pair[0].name])
        return bound

    def _arg(self, fn: registry.Function, param: registry.Param, arg: ast.Node) -> T.Type:
        what = f"`{param.name}` of {fn.name}()"
        if param.kind == registry.LEG:
            if isinstance(arg, ast.Name) and arg.id in self.scope.legs:
                return T.record("leg")
            return self.fail(arg, f"{what} must be the name of a leg{_suggest(_text(self.source, arg), self.scope.legs)}",
                             f"legs here: {', '.join(sorted(self.scope.legs)) or 'none'}")
        if param.kind == registry.STRING:
            if isinstance(arg, ast.String):
                return T.STRING_SCALAR
            return self.fail(arg, f"{what} must be a quoted string", f"e.g. {fn.name}(\"VIX\")")
        t = self.check(arg)
        if t.is_error:
            return t
        if param.kind == registry.ANY:
            if t.base == T.RECORD:
                return self.fail(arg, f"{what} cannot be {T.describe(t)}")
            return t
        if param.kind == registry.BOOL_SERIES:
            if t.base != T.BOOL:
                return self.fail(arg, f"{what} must be true/false, but {self.show(arg)} is {T.describe(t)}",
                                 "write a comparison, e.g. close > open")
            return t
        if t.base != T.NUMBER:
            return self.fail(arg, f"{what} must be a number, but {self.show(arg)} is {T.describe(t)}")
        if param.kind in (registry.LENGTH, registry.CONSTANT):
            value = self.constant(arg)
            if t.series or value is None:
                return self.fail(arg, f"{what} must be a constant (a number or a param), but {self.show(arg)} "
                                 f"is {T.describe(t)}", "lengths are fixed before the run so warm-up is known")
            if not math.isfinite(value):
                return self.fail(arg, f"{what} must be a finite number, got {value:g}")
            if param.kind == registry.LENGTH and (float(value) != int(value) or value < 1):
                flag = self.scope.names[arg.id].set_by if isinstance(arg, ast.Name) and arg.id in self.scope.names \
                    else ""
                return self.fail(arg, f"{what} must be a whole number of bars >= 1, got {value:g}"
                                 + (f" (from {flag})" if flag else ""),
                                 f"give {arg.id} a whole number, e.g. --set {arg.id}={max(1, round(value))}"
                                 if flag else "")
            if param.kind == registry.LENGTH and value > MAX_LENGTH_BARS:
                return self.fail(arg, f"{what} is {value:,.0f} bars, more than the {MAX_LENGTH_BARS:,} an "
                                 "indicator can look back", "use a larger bar size for long look-backs "
                                 "(a 200-day average is sma(close, 200) on 1d bars)")
            if param.minimum is not None and value < param.minimum:
                unit = " bars" if param.kind == registry.LENGTH else ""
                return self.fail(arg, f"{what} must be {param.minimum:g}{unit} or more, got {value:g}",
                                 f"signature: {fn.signature}")
            if param.positive and not value > 0:
                return self.fail(arg, f"{what} must be above 0, got {value:g}", f"signature: {fn.signature}")
        return t

    def _result(self, fn: registry.Function, node: ast.Call, bound, arg_types: list[T.Type]) -> T.Type:
        if fn.returns == registry.R_SERIES:
            return T.NUMBER_SERIES
        if fn.returns == registry.R_BOOL_SERIES:
            return T.BOOL_SERIES
        if fn.returns == registry.R_SCALAR:
            return T.SCALAR
        if fn.returns == registry.R_FOLLOW:
            return T.Type(T.NUMBER, any(t.series for t in arg_types))
        if fn.returns == registry.R_BOOL_FOLLOW:
            return T.Type(T.BOOL, any(t.series for t in arg_types))
        if fn.returns == registry.R_SYMBOL:
            return T.record("symbol")
        if fn.returns == registry.R_IF:
            cond, then, other = arg_types
            if then.base != other.base:
                return self.fail(node, f"if() branches must be of one kind: {T.describe(then)} vs "
                                 f"{T.describe(other)}")
            choices = then.choices | other.choices if then.choices and other.choices else None
            return T.Type(then.base, cond.series or then.series or other.series, None, choices)
        raise AssertionError(f"unknown result rule {fn.returns}")  # pragma: no cover


def check(node: ast.Node, scope: Scope, source: str = "") -> tuple[T.Type, list[ExprError]]:
    """The type of `node` in `scope`, and every error found (empty when it is well typed)."""
    checker = Checker(scope, source)
    result = checker.check(node)
    return result, checker.errors
