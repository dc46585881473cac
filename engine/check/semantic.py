"""Semantic checks of schema-valid documents: every expression parses and type-checks where it is
written, every reference resolves (orders named by rules, legs named by other legs, universe
groups, instrument roots), params are used and declared, scanner weights add up, and `--set`
overrides fit the params they replace.

Each document kind has a checker; all of them report through `Diagnostic`s placed at the line
and column of the offending text (inside the expression for language errors).
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

from ..brokers.costs import fraction
from ..config.documents import Document, Workspace
from ..diagnostics import Diagnostic, Severity
from ..dsl import ast, checker, parser
from ..dsl import types as T
from ..dsl.checker import Binding, Scope
from ..dsl.parser import ExprError
from .model import strategy_exprs

BAR_FIELDS = ("open", "high", "low", "close", "volume")
CLOCK = {
    "time": (T.TIME_SERIES, "the bar's time of day in the strategy's timezone, e.g. time >= 09:45"),
    "dayofweek": (T.NUMBER_SERIES, "1 = Monday ... 5 = Friday"),
    "minutes_to_close": (T.NUMBER_SERIES, "minutes left in the trading session"),
    "minutes_since_open": (T.NUMBER_SERIES, "minutes since the session opened"),
    "bar_index": (T.NUMBER_SERIES, "0 for the first bar of the data, counting up"),
}
POSITION_FIELDS = {
    "side": T.NUMBER_SERIES, "size": T.NUMBER_SERIES, "entry_price": T.NUMBER_SERIES,
    "bars_held": T.NUMBER_SERIES, "time_held": T.DURATION_SERIES, "pnl": T.NUMBER_SERIES,
    "pnl_pct": T.NUMBER_SERIES, "entry_credit": T.NUMBER_SERIES, "max_pnl": T.NUMBER_SERIES,
    "min_pnl": T.NUMBER_SERIES, "highest": T.NUMBER_SERIES, "lowest": T.NUMBER_SERIES,
    "dte": T.NUMBER_SERIES,  # calendar days to the expiry of an options position
    "next_dte": T.NUMBER_SERIES,  # the same, from the next trading day (the next quote date)
}
LEG_FIELDS = {
    "strike": T.SCALAR, "bid": T.SCALAR, "ask": T.SCALAR, "mid": T.SCALAR, "delta": T.SCALAR,
    "gamma": T.SCALAR, "theta": T.SCALAR, "vega": T.SCALAR, "iv": T.SCALAR, "dte": T.SCALAR,
    "right": T.strings(("put", "call"), series=False),
}
COMBO_NAMES = {
    "credit": "net credit of the combo per unit (price terms; negative for a debit)",
    "debit": "net debit of the combo per unit (price terms; negative for a credit)",
    "max_loss": "largest possible loss of one combo, USD",
    "max_profit": "largest possible profit of one combo, USD",
    "margin": "margin one combo needs, USD (Reg-T in simulation, what-if from IB live)",
    "underlying_price": "the underlying's last price",
}
SYMBOL_FIELDS = {f: T.NUMBER_SERIES for f in BAR_FIELDS}
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclass
class ParamInfo:
    name: str
    type: T.Type
    value: Any
    where: tuple
    minimum: float | None = None
    maximum: float | None = None
    choices: list | None = None
    error: bool = False  # the declaration is wrong (already reported): expressions may not use it
    set_by: str = ""     # the flag that set its value ("--set fast=2.5"), if one did


def literal_value(text: Any) -> tuple[T.Type, Any]:
    """The type and value of a param written in YAML: numbers, booleans, and strings that are
    language literals (2%, 09:45, 30s) or plain words."""
    if isinstance(text, bool):
        return T.BOOLEAN, text
    if isinstance(text, (int, float)):
        return T.SCALAR, text
    if isinstance(text, str):
        try:
            node = parser.parse(text)
        except ExprError:
            return T.STRING_SCALAR, text
        if isinstance(node, ast.Number):
            return T.SCALAR, node.value
        if isinstance(node, ast.TimeOfDay):
            return T.TIME_OF_DAY, node.minutes
        if isinstance(node, ast.Duration):
            return T.DURATION_SCALAR, node.seconds
        if isinstance(node, ast.Bool):
            return T.BOOLEAN, node.value
    return T.STRING_SCALAR, text


class DocumentCheck:
    """Shared machinery: expressions at YAML paths, with errors placed inside the text."""

    def __init__(self, ws: Workspace, doc: Document, tolerant: bool = False):
        self.ws = ws
        self.doc = doc
        self.out: list[Diagnostic] = []
        self.used: set[str] = set()
        self.tolerant = tolerant  # the document has schema errors: skip sections that are malformed
        self.parsed: dict[tuple, tuple[ast.Node, str]] = {}   # every expression that parsed: where -> (tree, text)

    def guard(self, step):
        """Run one section's check; on a document with schema errors, a malformed section that
        trips the checker is skipped (the schema already said what is wrong with it)."""
        try:
            return step()
        except (KeyError, TypeError, AttributeError, ValueError, IndexError):
            if not self.tolerant:
                raise  # a schema-valid document must never crash the checker: that is a bug
            return None

    def err(self, where, message: str, hint: str = "", key: bool = False) -> None:
        self.out.append(self.doc.diag(where, message, hint, key=key))

    def warn(self, where, message: str, hint: str = "", key: bool = False) -> None:
        self.out.append(self.doc.diag(where, message, hint, Severity.WARNING, key=key))

    def source(self, where) -> str | None:
        value = self.doc.get(where)
        if value is None:
            return None
        if isinstance(value, (dict, list)):
            return None
        mark = self.doc.marks.values.get(tuple(where))
        if isinstance(value, str):
            return value
        if mark is not None and mark.text is not None:
            return mark.text
        return str(value).lower() if isinstance(value, bool) else str(value)

    def parse(self, where) -> tuple[ast.Node, str] | None:
        text = self.source(where)
        if text is None:
            return None
        try:
            node = parser.parse(text)
        except ExprError as exc:
            # The names in a broken expression are still meant: do not also call them unused.
            self.used.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
            message, hint = exc.message, exc.hint
            cut = self._cut_by_flow_comma(where)
            if cut is not None:
                message += f" (YAML ended this value at the ',' on line {cut[0]}, column {cut[1]})"
                hint = ("inside {...} or [...] a ',' ends a plain value: quote the whole expression, "
                        "e.g. {when: \"ema(close, 8) > ema(close, 21)\", order: buy}")
            self.out.append(self.doc.diag_in_value(where, exc.start, message, hint))
            return None
        self.parsed[tuple(where)] = (node, text)
        return node, text

    def _cut_by_flow_comma(self, where) -> tuple[int, int] | None:
        """Where a ',' cut an unquoted expression short inside a YAML flow mapping or list."""
        mark = self.doc.marks.values.get(tuple(where))
        if mark is None or mark.style not in (None, "") or mark.end_line != mark.line:
            return None
        lines = self.doc.text.splitlines()
        rest = lines[mark.end_line - 1][mark.end_col - 1:] if 0 < mark.end_line <= len(lines) else ""
        stripped = rest.lstrip()
        if not stripped.startswith(","):
            return None
        return mark.end_line, mark.end_col + len(rest) - len(stripped)

    def _backtest_dates(self) -> None:
        """backtest.start and backtest.end are real calendar dates, the start not after the end
        (the schema only checks their shape: 2020-13-45 passes it)."""
        import datetime as dt

        days = {}
        for key in ("start", "end"):
            value = self.doc.get(("backtest", key))
            if not isinstance(value, str):
                continue
            try:
                days[key] = dt.date.fromisoformat(value.strip())
            except ValueError as exc:
                self.err(("backtest", key), f"backtest.{key}: {value!r} is not a date ({exc})",
                         "write YYYY-MM-DD, e.g. 2020-01-31")
        if len(days) == 2 and days["start"] > days["end"]:
            self.err(("backtest", "start"), f"backtest.start {days['start']} is after backtest.end {days['end']}")

    def _zero_divisors(self, where, node: ast.Node, scope: Scope, text: str) -> None:
        """Warn at every divisor whose value is known before the run to be 0 (a literal 0, a
        param set to 0, arithmetic on them): the quotient is NaN on every bar, so nothing that
        reads it ever fires."""
        constant = checker.Checker(scope, text).constant
        for n in ast.walk(node):
            if isinstance(n, ast.Binary) and n.op == "/" and constant(n.right) == 0:
                shown = text[n.right.span.start:n.right.span.end].strip() or "0"
                self.out.append(self.doc.diag_in_value(
                    where, n.right.span.start, f"division by zero: `{shown}` is 0, so "
                    f"`{text[n.span.start:n.span.end].strip()}` has no value on any bar",
                    "divide by something that is not 0 (a division by 0 gives no value, and a rule "
                    "reading it never fires)", Severity.WARNING))

    def _percent_units(self, where, node: ast.Node, scope: Scope, text: str) -> None:
        """Warn where position.pnl_pct (a fraction: 3% is 0.03) is compared with a plain number
        of 1 or more, as if it were in percent units (-3 would mean -300%)."""
        constant = checker.Checker(scope, text).constant

        def is_pnl_pct(n: ast.Node) -> bool:
            return isinstance(n, ast.Attr) and isinstance(n.obj, ast.Name) and n.obj.id == "position" \
                and n.name == "pnl_pct"

        for n in ast.walk(node):
            pairs = []
            if isinstance(n, ast.Compare):
                pairs = [(n.left, n.right), (n.right, n.left)]
            elif isinstance(n, ast.Between):
                pairs = [(n.value, n.low), (n.value, n.high)]
            for field, other in pairs:
                value = constant(other) if is_pnl_pct(field) else None
                if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) >= 1 \
                        and "%" not in text[other.span.start:other.span.end]:
                    shown = text[other.span.start:other.span.end].strip()
                    self.out.append(self.doc.diag_in_value(
                        where, other.span.start, f"position.pnl_pct is a fraction of the entry value (3% is 0.03), "
                        f"so `{shown}` means {value * 100:g}%", f"write it as a percentage, e.g. {value:g}%",
                        Severity.WARNING))

    def expr(self, where, scope: Scope, want: str | None, what: str) -> tuple[ast.Node, T.Type] | None:
        """Parse and type-check the expression at `where`; `want` is 'boolean', 'number' or None."""
        parsed = self.parse(where)
        if parsed is None:
            return None
        node, text = parsed
        for n in ast.walk(node):
            if isinstance(n, ast.Name):
                self.used.add(n.id)
        typ, errors = checker.check(node, scope, text)
        for exc in errors:
            self.out.append(self.doc.diag_in_value(where, exc.start, exc.message, exc.hint))
        if errors or typ.is_error:
            return None
        self._zero_divisors(where, node, scope, text)
        self._percent_units(where, node, scope, text)
        if want == T.BOOL and typ.base != T.BOOL:
            hint = "write a condition, e.g. close > sma(close, 20)"
            self.out.append(self.doc.diag_in_value(
                where, 0, f"{what} must be true or false, but `{text.strip()}` is {T.describe(typ)}", hint))
            return None
        if want == T.NUMBER and typ.base != T.NUMBER:
            self.out.append(self.doc.diag_in_value(
                where, 0, f"{what} must be a number, but `{text.strip()}` is {T.describe(typ)}"))
            return None
        return node, typ

    # ---- params ------------------------------------------------------------------------------
    def params(self, overrides: dict[str, str] | None = None, section: tuple = ("params",)) -> dict[str, ParamInfo]:
        declared: dict[str, ParamInfo] = {}
        for name, spec in (self.doc.get(section) or {}).items():
            where = section + (name,)
            if isinstance(spec, dict):
                raw = spec.get("value")
                value_where = where + ("value",)
            else:
                raw, value_where = spec, where
            typ, value = literal_value(raw)
            info = ParamInfo(name, typ, value, where)
            if isinstance(spec, dict):
                info.minimum, info.maximum, info.choices = spec.get("min"), spec.get("max"), spec.get("choices")
                bounds = [b for b in (info.minimum, info.maximum) if isinstance(b, (int, float))]
                if bounds and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                    info.error = True
                    self.err(value_where, f"param '{name}': value {self.source(value_where)!r} is not a number, "
                             f"but min/max are given", f"write a number, e.g. value: {bounds[0]:g}")
                    declared[name] = info
                    continue
                problem = self._param_range(info, value)
                if problem:
                    self.err(value_where, f"param '{name}': {problem}", self._range_hint(info))
            if typ.base == T.STRING and info.choices:
                info.type = T.strings(info.choices, series=False)
            declared[name] = info
        for name, text in (overrides or {}).items():
            if name not in declared or declared[name].error:
                continue  # an unknown name is reported by the caller, a wrong declaration above
            info = declared[name]
            typ, value = literal_value(_yamlish(text))
            if typ.base != info.type.base:
                declared_as = self.doc.get(info.where)
                if isinstance(declared_as, dict):
                    declared_as = declared_as.get("value")
                bounds = "".join(f", {k} {v:g}" for k, v in (("min", info.minimum), ("max", info.maximum))
                                 if isinstance(v, (int, float)))
                self.err(info.where, f"--set {name}={text}: expected {T.describe(info.type)}, got {T.describe(typ)}",
                         f"{name} is {T.describe(info.type)} (the file sets {declared_as!r}{bounds}): "
                         f"e.g. --set {name}={declared_as}", key=True)
                continue
            problem = self._param_range(info, value)
            if problem:
                self.err(info.where, f"--set {name}={text}: {problem}", self._range_hint(info), key=True)
                continue
            info.value = value
            info.set_by = f"--set {name}={text}"
        return declared

    @staticmethod
    def _range_hint(info: ParamInfo) -> str:
        if info.choices is not None:
            return f"one of {', '.join(map(str, info.choices))}, or add it to the param's choices"
        lo, hi = (f"{b:g}" if isinstance(b, (int, float)) else None for b in (info.minimum, info.maximum))
        span = f"from {lo} to {hi}" if lo and hi else f"{lo} or more" if lo else f"{hi} or less" if hi else ""
        return f"a value {span}, or widen the param's min/max if that is what you meant" if span else ""

    @staticmethod
    def _param_range(info: ParamInfo, value: Any) -> str:
        if info.choices is not None and value not in info.choices:
            return f"{value!r} is not one of {', '.join(map(str, info.choices))}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if info.minimum is not None and value < info.minimum:
                return f"{value:g} is below the minimum {info.minimum:g}"
            if info.maximum is not None and value > info.maximum:
                return f"{value:g} is above the maximum {info.maximum:g}"
        elif info.minimum is not None or info.maximum is not None:
            return "min/max apply only to numbers"
        return ""

    def warn_unused(self, section: tuple, names: Iterable[str], what: str) -> None:
        for name in names:
            if name not in self.used:
                self.warn(section + (name,), f"{what} '{name}' is declared but never used",
                          "remove it, or use it in an expression", key=True)

    # ---- indicators ------------------------------------------------------------------------
    def indicators(self, scope: Scope, section: tuple = ("indicators",)) -> None:
        """Check named indicators in dependency order (they may use each other, not in a cycle)."""
        specs: dict = self.doc.get(section) or {}
        deps: dict[str, set[str]] = {}
        parsed: dict[str, ast.Node] = {}
        for name in specs:
            result = self.parse(section + (name,))
            if result is None:
                continue
            parsed[name] = result[0]
            deps[name] = {n.id for n in ast.walk(result[0]) if isinstance(n, ast.Name) and n.id in specs}
            self.used.update(deps[name] - {name})  # used by another indicator, even one in a cycle
        order: list[str] = []
        state: dict[str, int] = {}
        cyclic: set[str] = set()

        def visit(name: str, chain: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = chain[chain.index(name):] + [name]
                if name not in cyclic:
                    cyclic.update(cycle)
                    self.err(section + (cycle[0],), f"indicator '{cycle[0]}' depends on itself: {' -> '.join(cycle)}",
                             "an indicator can use others but not in a circle; use a lag such as x[1] "
                             "of a bar field instead")
                return
            state[name] = 1
            for dep in sorted(deps.get(name, ())):
                if dep in parsed:
                    visit(dep, chain + [name])
            state[name] = 2
            order.append(name)

        for name in parsed:
            visit(name, [])
        for name in specs:
            if name not in parsed or name in cyclic:
                scope.unavailable.setdefault(name, f"indicator '{name}' has an error; fix it first")
        for name in order:
            if name in cyclic:
                continue
            result = self.expr(section + (name,), scope, None, f"indicator '{name}'")
            if result is None:
                scope.unavailable[name] = f"indicator '{name}' has an error; fix it first"
                continue
            node, typ = result
            if typ.base not in (T.NUMBER, T.BOOL, T.STRING):
                self.err(section + (name,), f"indicator '{name}' must be a number or a condition, "
                                          f"not {T.describe(typ)}")
                continue
            scope.names[name] = Binding(typ.as_series(True))


def _yamlish(text: str) -> Any:
    """A --set value read as YAML would read it: numbers, true/false, else the string."""
    from ..config.yamlsource import load_yaml

    try:
        return load_yaml("--set", f"v: {text}\n", env={}).data["v"]
    except Exception:  # noqa: BLE001 - anything unparsable is just a string
        return text


def base_scope(params: dict[str, ParamInfo]) -> Scope:
    scope = Scope()
    for name in BAR_FIELDS:
        scope.names[name] = Binding(T.NUMBER_SERIES, doc=f"the bar's {name}")
    for name, (typ, doc) in CLOCK.items():
        scope.names[name] = Binding(typ, doc=doc)
    for name, info in params.items():
        if info.error:
            scope.unavailable[name] = f"param '{name}' has an error; fix it first"
            continue
        scope.names[name] = Binding(info.type, info.value, doc=f"param {name}", set_by=info.set_by)
    scope.records["symbol"] = SYMBOL_FIELDS
    scope.records["position"] = POSITION_FIELDS
    scope.records["leg"] = LEG_FIELDS
    scope.unavailable["position"] = ("position fields are only available in exit rules "
                                     "(an entry rule runs when there is no position)")
    for name, doc in COMBO_NAMES.items():
        scope.unavailable[name] = f"'{name}' ({doc}) is only available in rules whose order is an options combo"
    return scope


class StrategyCheck(DocumentCheck):
    """A strategy: params, indicators, classifications, orders, rules, agents, schedule, universe."""

    _NAMING = ("indicators", "classify", "params")      # the sections that define names rules read

    def _misspellings(self, sections: tuple[str, ...]) -> list[tuple[str, object, str]]:
        """Top-level keys the schema does not know that are close to one of `sections`: (key,
        its value, the section). The schema reports each key, with its "did you mean"."""
        import difflib

        from ..config.schema import load_schema

        known = load_schema("strategy").get("properties", {})
        data = self.doc.data if isinstance(self.doc.data, dict) else {}
        out = []
        for key, value in data.items():
            if not isinstance(key, str) or key in known:
                continue
            close = difflib.get_close_matches(key, sections, n=1, cutoff=0.6)
            if close:
                out.append((key, value, close[0]))
        return out

    def _misspelt_sections(self) -> list[tuple[str, str]]:
        """Top-level keys that are a misspelling of a section defining names (`indicatros:`):
        (key, the section). The rules' unknown names then say where they are written instead of
        suggesting another name."""
        data = self.doc.data if isinstance(self.doc.data, dict) else {}
        return [(key, section) for key, value, section in self._misspellings(self._NAMING)
                if isinstance(value, dict) and section not in data]

    def _misspelt_entry(self) -> bool:
        """Is a top-level key a misspelling of a section of rules (`entyr:`, `exits:`, `agent:`)?"""
        return bool(self._misspellings(("entry", "exit", "agents")))

    def run(self, overrides: dict[str, str] | None = None) -> list[Diagnostic]:
        self.overrides = overrides
        params = self.guard(lambda: self.params(overrides)) or {}
        self.param_info = params
        scope = base_scope(params)
        misspelt = self._misspelt_sections()
        for key, section in misspelt:
            mark = self.doc.marks.key((key,))
            line = mark.line if mark else 1
            for name in self.doc.get((key,)):
                if name not in scope.names:
                    scope.misplaced[str(name)] = (f"it is defined under '{key}' (line {line}), which is not a "
                                                  f"section qtrade reads: rename it '{section}'")
        self.scope = scope
        self.templates: dict[str, dict] = self.doc.get(("orders",)) or {}
        if not isinstance(self.templates, dict):
            self.templates = {}
        self.used_orders: set[str] = set()
        self.combo_legs: dict[str, set[str]] = {}
        # Each section is checked on its own, so a malformed section (already reported by the
        # schema) does not hide the expression errors of the others.
        for step in (lambda: self._scanner(scope), lambda: self.indicators(scope), lambda: self._classify(scope),
                     lambda: self._orders(scope), lambda: self._rules(("entry",), "entry", scope),
                     lambda: self._rules(("exit",), "exit", scope), lambda: self._agents(scope),
                     self._arbitration, self._by_state, self._schedule, self._universe, self._backtest_dates, self._subscriptions):
            self.guard(step)
        lost = self._misspelt_entry()       # a misspelt `entyr:`: the schema's error, with its "did you mean"
        if not self.doc.get(("entry",)) and not self.doc.get(("agents",)) and not lost:
            self.err((), "the strategy has no entry rules",
                     "add `entry:` rules (or `agents:` with their own entry rules) so it can trade")
        if not misspelt:        # (a misspelt section's expressions were not read: their uses unknown)
            self.warn_unused(("params",), params, "param")
            indicators = self.doc.get(("indicators",))
            self.warn_unused(("indicators",), indicators if isinstance(indicators, dict) else {}, "indicator")
        for name in self.templates:
            if name not in self.used_orders and not lost:     # (the misspelt section's rules use them)
                self.warn(("orders", name), f"order '{name}' is never used by a rule", key=True)
        return self.out

    # ---- scanner and classifications ---------------------------------------------------------
    def _scanner(self, scope: Scope) -> None:
        spec = self.doc.get(("scanner",))
        if spec is None:
            scope.unavailable["scan"] = "`scan` needs a scanner: add `scanner: path/to/scanner.yaml`"
            return
        body = self.doc.refs.get(("scanner",)).data if isinstance(spec, str) and ("scanner",) in self.doc.refs \
            else spec if isinstance(spec, dict) else None
        if body is None:
            scope.unavailable["scan"] = "the scanner file has errors"
            return
        fields: dict[str, T.Type] = {"score": T.NUMBER_SERIES, "rank": T.NUMBER_SERIES, "picked": T.BOOL_SERIES,
                                     "grade": T.strings((body.get("grades") or {}).keys()),
                                     "class": T.strings(c.get("class") for c in body.get("classes") or []
                                                        if isinstance(c, dict) and c.get("class"))}
        for factor in body.get("factors") or {}:
            fields[factor] = T.NUMBER_SERIES
        if not (body.get("grades")):
            fields["grade"] = T.Type(T.STRING, True)
        if not body.get("classes"):
            fields["class"] = T.Type(T.STRING, True)
        for factor in body.get("factors") or {}:
            if factor in ("score", "rank", "picked", "grade", "class"):
                where = ("scanner", "factors", factor) if isinstance(spec, dict) else ("scanner",)
                self.err(where, f"the scanner's factor '{factor}' has the name of a scan field (scan.{factor})",
                         "give the factor another name", key=isinstance(spec, dict))
        scope.records["scan"] = fields
        scope.names["scan"] = Binding(T.record("scan"), doc="this symbol's scan result")
        self.scanner_check = None
        if isinstance(spec, dict):
            self.scanner_check = ScannerCheck(self.ws, self.doc, ("scanner",), self.tolerant)
            self.out.extend(self.scanner_check.run(self.overrides))
        self._unranked(spec)
        bar = self.doc.get(("data", "bar"))
        scanner_data = body.get("data")
        if isinstance(bar, str) and not (isinstance(scanner_data, dict) and scanner_data.get("bar")):
            # the scan reads the strategy's bars
            if isinstance(spec, dict):
                self.scanner_check.rescan_within(bar, self)
            elif ("scanner",) in self.doc.refs:
                ScannerCheck(self.ws, self.doc.refs[("scanner",)]).rescan_within(bar, self)

    def _unranked(self, spec) -> None:
        """Symbols the strategy trades that its scanner does not rank: their entries never go
        (a strategy with a scanner enters its picks only)."""
        from .model import universe_symbols
        from .scan_model import _inline_universe

        if self.doc.get(("universe",)) is None:
            return          # it trades the scanner's universe
        traded = universe_symbols(self.doc)
        if isinstance(spec, str):
            ref = self.doc.refs.get(("scanner",))
            ranked = universe_symbols(ref) if ref is not None and ref.get(("universe",)) is not None else None
        else:
            ranked = _inline_universe(self.doc, ("scanner",))
        if ranked is None:
            return
        left = [s for s in traded if s not in ranked]
        if left:
            self.warn(("universe",), f"the scanner does not rank {', '.join(left)}: "
                      f"{'its' if len(left) == 1 else 'their'} entries never go",
                      "a strategy with a scanner enters the scan's picks only; add them to the scanner's universe, "
                      "or trade the scanner's universe (leave universe: out)", key=True)

    def _classify(self, scope: Scope) -> None:
        for name, cases in (self.doc.get(("classify",)) or {}).items():
            if name in scope.names:
                self.err(("classify", name), f"classification '{name}' hides an existing name", key=True)
                continue
            seen: set[str] = set()
            for i, case in enumerate(cases or []):
                label = case.get("name")
                if label in seen:
                    self.err(("classify", name, i, "name"), f"case '{label}' of '{name}' is listed twice")
                seen.add(label)
                self.expr(("classify", name, i, "when"), scope, T.BOOL, f"case '{label}' of '{name}'")
            if cases and self.doc.get(("classify", name, len(cases) - 1, "when")) is not True:
                self.warn(("classify", name, len(cases) - 1), f"'{name}' has no catch-all last case",
                          "end with `{name: other, when: true}` so every bar gets a value")
            scope.names[name] = Binding(T.strings(seen), doc=f"classification {name}")

    # ---- orders ------------------------------------------------------------------------------
    def _orders(self, scope: Scope) -> None:
        for name, spec in self.templates.items():
            where = ("orders", name)
            if not isinstance(spec, dict):
                continue
            if "legs" in spec:
                self._combo(where, spec, scope)
            else:
                for key in ("limit", "stop"):
                    if key in spec:
                        self.expr(where + (key,), scope, T.NUMBER, f"the {key} price of order '{name}'")
                # a limit/stop order without its price is reported by the schema (if/then required)
                self._quantity(where, spec, scope)

    def _quantity(self, where: tuple, spec: dict, scope: Scope) -> None:
        qty = spec.get("quantity")
        if isinstance(qty, dict):
            for mode in ("percent_of_equity", "risk_percent"):
                share = qty.get(mode)
                try:
                    zero = share is not None and not isinstance(share, bool) and fraction(share) == 0
                except (TypeError, ValueError):
                    zero = False        # not a share: the schema says so
                if zero:
                    self.err(where + ("quantity", mode), f"quantity {mode}: {share} sizes every entry at 0 "
                             "units, so none is ever sent", f"a share above 0, e.g. {mode}: 10%")
        if isinstance(qty, str):
            self.expr(where + ("quantity",), scope, T.NUMBER, "quantity")
        elif isinstance(qty, dict) and "stop_distance" in qty:
            self.expr(where + ("quantity", "stop_distance"), scope, T.NUMBER, "stop_distance")

    def _combo(self, where: tuple, spec: dict, scope: Scope) -> None:
        legs: dict = spec.get("legs") or {}
        self.combo_legs[where[-1]] = set(legs)
        underlying = spec.get("underlying") or self.doc.get(("underlying",))
        self._options_underlying(where, underlying)
        refs: dict[str, set[str]] = {}
        for leg, leg_spec in legs.items():
            if not isinstance(leg_spec, dict):
                continue
            strike = leg_spec.get("strike")
            lw = where + ("legs", leg, "strike")
            leg_scope = scope.child(legs=frozenset(legs) - {leg})
            for other in legs:
                if other != leg:
                    leg_scope.names[other] = Binding(T.record("leg"), doc=f"leg {other}")
            leg_scope.unavailable[leg] = f"leg '{leg}' cannot refer to its own strike"
            if isinstance(strike, dict):
                for key in ("delta", "premium", "min", "max"):
                    if key in strike:
                        self.expr(lw + (key,), leg_scope, T.NUMBER, f"strike {key} of leg '{leg}'")
                if "delta" in strike:
                    value = self._constant(lw + ("delta",), scope)
                    if value is not None and not 0 < abs(value) < 1:
                        self.err(lw + ("delta",), f"delta {value:g} is out of range",
                                 "delta is given as a magnitude between 0 and 1, e.g. 0.10")
            elif strike is not None:
                result = self.expr(lw, leg_scope, T.NUMBER, f"strike of leg '{leg}'")
                if result is not None:
                    refs[leg] = {n.id for n in ast.walk(result[0]) if isinstance(n, ast.Name) and n.id in legs}
        # legs defined by offsets must bottom out in a leg chosen by delta or premium
        for leg in refs:
            seen, stack = set(), [leg]
            while stack:
                cur = stack.pop()
                for dep in refs.get(cur, ()):
                    if dep == leg:
                        self.err(where + ("legs", leg, "strike"),
                                 f"leg '{leg}' is defined through a circle of legs",
                                 "at least one leg must pick its strike by delta or premium")
                        stack.clear()
                        break
                    if dep not in seen:
                        seen.add(dep)
                        stack.append(dep)
        combo_scope = self._combo_scope(scope, where[-1])
        # the close's prices read the open position too (floor: 2 * position.entry_price)
        close_scope = self._combo_scope(scope, where[-1])
        close_scope.names["position"] = Binding(T.record("position"), doc="the open position")
        close_scope.unavailable.pop("position", None)
        combo_scope.unavailable["position"] = ("position fields are not there when the combo is opened; the "
                                               "close's prices (close_price) may read them")
        for key, what, price_scope in (("price", "the combo's", combo_scope),
                                       ("close_price", "the combo's closing", close_scope)):
            price = spec.get(key)
            if isinstance(price, dict):
                if "limit" in price:
                    if self.expr(where + (key, "limit"), price_scope, T.NUMBER, f"{what} limit price") is not None:
                        value = self._constant(where + (key, "limit"), price_scope)
                        if value is not None and not value > 0:
                            self.err(where + (key, "limit"), f"{what} limit {value:g} is not a price",
                                     "a limit is what the order pays when it buys and receives when it sells, per "
                                     "combo: a positive number (for a close, e.g. credit + 0.05 pays at most 5 "
                                     "cents over the combo's mid then)")
                chase = price.get("chase")
                if isinstance(chase, dict) and chase.get("floor") is not None:
                    self.expr(where + (key, "chase", "floor"), price_scope, T.NUMBER, f"{what} chase floor")
        self._quantity(where, spec, scope)

    def _constant(self, where: tuple, scope: Scope):
        parsed = self.parse(where)
        if parsed is None:
            return None
        value = checker.Checker(scope, parsed[1]).constant(parsed[0])
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def _combo_scope(self, scope: Scope, order: str) -> Scope:
        legs = self.combo_legs.get(order, set())
        combo = scope.child(legs=frozenset(legs), contexts=scope.contexts | {"options"})
        for leg in legs:
            combo.names[leg] = Binding(T.record("leg"), doc=f"leg {leg} of order {order}")
        for name, doc in COMBO_NAMES.items():
            combo.names[name] = Binding(T.SCALAR, doc=doc)
            combo.unavailable.pop(name, None)
        return combo

    def _options_underlying(self, where: tuple, underlying) -> None:
        """The combo's underlying (the order's, the strategy's, else each symbol traded) must
        have an options setup in the instruments map."""
        universe = self.doc.get(("universe",))
        if underlying is not None:
            symbols = [underlying]
        elif isinstance(universe, list):
            symbols = [s for s in universe if isinstance(s, str)]
        else:
            return  # a universe file: each symbol is checked when it is resolved at run time
        inst = self.ws.instruments_for(self.doc)
        if inst is None:
            return
        roots = inst.get(("roots",)) or {}
        stock_options = ((inst.get(("defaults",)) or {}).get("STK") or {}).get("options")
        for symbol in symbols:
            entry = roots.get(symbol)
            if entry is None and stock_options:
                continue  # a stock with the default options setup
            if entry is None or not entry.get("options"):
                self.err(where, f"options order '{where[-1]}' trades options on '{symbol}', which has no "
                         f"`options:` section in {inst.path}",
                         "add trading_class, exchange, multiplier, strike_step, style and settlement there",
                         key=True)

    # ---- rules -------------------------------------------------------------------------------
    def _leg_owners(self) -> dict[str, tuple[str, set[str]]]:
        """Each combo leg's order and the agents whose entries send it ('' for the strategy's own)."""
        senders: dict[str, set[str]] = {}
        for section, agent in [(("entry",), "")] + [(("agents", a, "entry"), a)
                                                     for a in (self.doc.get(("agents",)) or {})]:
            for rule in self.doc.get(section) or []:
                if isinstance(rule, dict) and rule.get("order") in self.combo_legs:
                    senders.setdefault(rule["order"], set()).add(agent)
        return {leg: (order, senders.get(order, set())) for order, legs in self.combo_legs.items() for leg in legs}

    def _rule_scope(self, kind: str, order: str | None, scope: Scope, agent: str | None = None) -> Scope:
        rule_scope = self._combo_scope(scope, order) if order in self.combo_legs else scope.child()
        if kind == "exit":
            rule_scope.names["position"] = Binding(T.record("position"), doc="the open position")
            rule_scope.unavailable.pop("position", None)
            rule_scope.contexts = rule_scope.contexts | {"exit"}
            if self.combo_legs:
                for name in ("credit", "debit", "max_loss", "max_profit", "margin", "underlying_price"):
                    rule_scope.unavailable[name] = (f"in exit rules use the position's fields "
                                                    f"(position.pnl, position.entry_credit) instead of '{name}'")
        owners = self._leg_owners() if agent is not None and kind == "exit" else {}
        for orders_legs in self.combo_legs.values():
            for leg in orders_legs:
                if leg not in rule_scope.names:
                    rule_scope.unavailable[leg] = (f"leg '{leg}' is only in scope in rules whose order has it")
                    leg_order, senders = owners.get(leg, (None, set()))
                    others = sorted(a for a in senders if a != agent)
                    if others and agent not in senders:
                        who = ", ".join(f"agent '{a}'" if a else "the strategy's own entries" for a in others)
                        rule_scope.unavailable[leg] = (
                            f"leg '{leg}' is a leg of order '{leg_order}', which {who} "
                            f"{'opens' if len(others) == 1 and others[0] else 'open'}: agent '{agent}''s "
                            "exits see only the positions it opened")
                    elif agent in senders:
                        rule_scope.unavailable[leg] = (
                            f"leg '{leg}' of order '{leg_order}': exits read the open combo through its position "
                            "fields (position.pnl, position.entry_credit, position.dte), not its legs")
        return rule_scope

    def _rules(self, where: tuple, kind: str, scope: Scope, agent: str | None = None) -> None:
        for i, rule in enumerate(self.doc.get(where) or []):
            if not isinstance(rule, dict):
                continue
            rw = where + (i,)
            order = rule.get("order")
            if order is not None:
                if order not in self.templates:
                    self.err(rw + ("order",), f"unknown order '{order}'{_suggest(order, self.templates)}",
                             f"orders defined: {', '.join(self.templates) or 'none'}")
                    order = None
                else:
                    self.used_orders.add(order)
            elif kind == "entry":
                continue  # the schema reports the missing order
            rule_scope = self._rule_scope(kind, order, scope, agent)
            label = f"{kind} rule '{rule.get('name', i + 1)}'"
            if "when" in rule:
                self.expr(rw + ("when",), rule_scope, T.BOOL, f"`when` of {label}")
            for key in ("stop", "target"):
                if key in rule:
                    checked = self.expr(rw + (key,), rule_scope, T.NUMBER, f"`{key}` of {label}")
                    if checked is not None and kind == "exit":
                        self._level_side(rw + (key,), key, checked[0], rule_scope, label, agent)

    _AT = 100.0       # the entry price a level fixed at the entry is tried at

    def _level_side(self, where: tuple, key: str, node: ast.Node, scope: Scope, label: str,
                    agent: str | None) -> None:
        """A stop or target that reads only the entry price and constants (`position.entry_price *
        95` for 95%) is on the wrong side of the entry from the start: a long's stop above its
        entry, or its target below, fills at the first bar the order works in. Refused at its line,
        when every entry the rule can close is of one side (a buy or a sell of a plain order)."""
        side = self._entries_side(agent)
        if side is None:
            return
        text = self.source(where) or ""
        constant = checker.Checker(scope, text).constant

        def at(n: ast.Node):
            if isinstance(n, ast.Attr) and isinstance(n.obj, ast.Name) and n.obj.id == "position":
                return self._AT if n.name == "entry_price" else None
            if isinstance(n, ast.Unary) and n.op == "-":
                v = at(n.operand)
                return None if v is None else -v
            if isinstance(n, ast.Binary) and n.op in "+-*/":
                left, right = at(n.left), at(n.right)
                if left is None or right is None or (n.op == "/" and right == 0):
                    return None
                return {"+": left + right, "-": left - right, "*": left * right, "/": left / (right or 1)}[n.op]
            v = constant(n)
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

        reads_entry = any(isinstance(n, ast.Attr) and isinstance(n.obj, ast.Name) and n.obj.id == "position"
                          and n.name == "entry_price" for n in ast.walk(node))
        level = at(node) if reads_entry else None
        if level is None or not math.isfinite(level):
            return
        long = side == "buy"
        wrong = (level > self._AT) if (key == "stop") == long else (level < self._AT)
        if not wrong:
            return
        where_ = "below" if (key == "stop") == long else "above"
        ratio = level / self._AT
        example = {("stop", True): "position.entry_price * (1 - 5%)", ("stop", False): "position.entry_price * (1 + 5%)",
                   ("target", True): "position.entry_price * (1 + 5%)",
                   ("target", False): "position.entry_price * (1 - 5%)"}[(key, long)]
        self.err(where, f"`{key}` of {label} is at {level:,.4g} for an entry at {self._AT:g} ({ratio:.4g} x the "
                 f"entry price): a {'long' if long else 'short'} position's {key} must be {where_} its entry, or "
                 "it fills at the first bar it works in",
                 f"a 5% {key} of a {'long' if long else 'short'} is `{example}`")

    def _entries_side(self, agent: str | None) -> str | None:
        """buy or sell, when every entry an exit of this agent (None: the strategy's own) can close
        opens that side with a plain (not combo) order; else None."""
        rules = (self.doc.get(("agents", agent, "entry")) if agent is not None else self.doc.get(("entry",))) or []
        sides = set()
        for rule in rules if isinstance(rules, list) else []:
            spec = self.templates.get(rule.get("order")) if isinstance(rule, dict) else None
            if not isinstance(spec, dict) or "legs" in spec or spec.get("action") not in ("buy", "sell"):
                return None
            sides.add(spec["action"])
        return sides.pop() if len(sides) == 1 else None

    def _agents(self, scope: Scope) -> None:
        for name, agent in (self.doc.get(("agents",)) or {}).items():
            where = ("agents", name)
            if not isinstance(agent, dict):
                continue
            if "active" in agent:
                self.expr(where + ("active",), scope, T.BOOL, f"`active` of agent '{name}'")
            if "score" in agent:
                self.expr(where + ("score",), scope, T.NUMBER, f"`score` of agent '{name}'")
            self._rules(where + ("entry",), "entry", scope, name)
            self._rules(where + ("exit",), "exit", scope, name)
            if not agent.get("entry"):
                self.warn(where, f"agent '{name}' has no entry rules", key=True)

    def _arbitration(self) -> None:
        """Keys only one policy reads are refused under another (never accepted and ignored)."""
        spec = self.doc.get(("arbitration",))
        spec = spec if isinstance(spec, dict) else {}
        agents = self.doc.get(("agents",)) or {}
        agents = agents if isinstance(agents, dict) else {}
        policy = spec.get("policy", "highest_confidence")
        if spec and not agents:
            self.warn(("arbitration",), "arbitration: the strategy has no agents, so nothing is arbitrated",
                      "remove it, or give the strategy `agents:`", key=True)
        per_symbol = spec.get("positions_per_symbol", 1)
        if isinstance(per_symbol, int) and not isinstance(per_symbol, bool) and per_symbol > 1 and len(agents) < 2:
            self.err(("arbitration", "positions_per_symbol"), f"arbitration.positions_per_symbol {per_symbol}: "
                     f"more than one position a symbol is one each for different agents, and this strategy has "
                     f"{'one agent' if agents else 'no agents'}",
                     "give the strategy two agents or more, or remove positions_per_symbol (pyramiding adds to "
                     "one position)", key=True)
        if "threshold" in spec and policy != "weighted_vote":
            self.err(("arbitration", "threshold"), f"arbitration.threshold is read by the weighted_vote policy "
                     f"only (this strategy's is {policy})", "remove it, or set policy: weighted_vote", key=True)
        weights = {}
        for name, agent in agents.items():
            if isinstance(agent, dict) and "weight" in agent:
                weights[name] = agent["weight"]
                if policy != "weighted_vote":
                    self.err(("agents", name, "weight"), f"agents.{name}.weight is read by the weighted_vote "
                             f"policy only (this strategy's is {policy})",
                             "remove it, or set arbitration.policy: weighted_vote", key=True)
        if policy == "weighted_vote" and agents and len(weights) == len(agents) and \
                all(isinstance(w, (int, float)) and w == 0 for w in weights.values()):
            self.err(("arbitration", "policy"), "weighted_vote: every agent's weight is 0, so no vote can pass",
                     "give at least one agent a weight above 0")

    def _by_state(self) -> None:
        """risk.by_state names the strategy's classifications and their states: a name that is
        neither is an error where it is written (the strategy's risk:, or the risk file)."""
        classes = {name: {c.get("name") for c in cases if isinstance(c, dict)}
                   for name, cases in (self.doc.get(("classify",)) or {}).items() if isinstance(cases, list)}
        chain: list[tuple] = []     # (document, path of its limits)

        def add(ref, where: tuple) -> None:
            if ref is None:
                return
            add(ref.refs.get(where + ("extends",)), ())
            chain.append((ref, where))

        spec = self.doc.get(("risk",))
        if isinstance(spec, str):
            add(self.doc.refs.get(("risk",)), ())
        elif isinstance(spec, dict):
            add(self.doc.refs.get(("risk", "extends")), ())
            chain.append((self.doc, ("risk",)))
        for doc, where in chain:
            states = doc.get(where + ("by_state",))
            if not isinstance(states, dict):
                continue
            for name, labels in states.items():
                at = where + ("by_state", name)
                if name not in classes:
                    known = ", ".join(classes) or "none"
                    doc_is_file = doc is not self.doc
                    self.out.append(doc.diag(at, f"risk.by_state: '{name}' is not a classification of "
                                             f"{self.doc.path if doc_is_file else 'this strategy'}"
                                             f"{_suggest(name, classes)}",
                                             f"its classify: names {known}", key=True))
                    continue
                for label in labels or {}:
                    if label not in classes[name]:
                        self.out.append(doc.diag(at + (label,), f"risk.by_state.{name}: '{label}' is not a state "
                                                 f"of '{name}'{_suggest(label, classes[name])}",
                                                 f"its states: {', '.join(sorted(x for x in classes[name] if x))}",
                                                 key=True))

    # ---- schedule and universe ---------------------------------------------------------------
    def _schedule(self) -> None:
        sched = self.doc.get(("schedule",)) or {}
        tz = sched.get("timezone")
        if isinstance(tz, str):
            check_timezone(self, ("schedule", "timezone"), tz)
        window = sched.get("entry_window")
        if isinstance(window, list) and len(window) == 2 and all(isinstance(t, str) for t in window):
            start, end = (_minutes(t) for t in window)
            if start is not None and end is not None and start >= end:
                self.err(("schedule", "entry_window"), f"entry window {window[0]}-{window[1]} is empty",
                         "the start must be before the end, e.g. [\"09:30\", \"11:00\"]")
            flat = sched.get("flat_by")
            if isinstance(flat, str) and start is not None and _minutes(flat) is not None and _minutes(flat) <= start:
                self.err(("schedule", "flat_by"), f"flat_by {flat} is before the entry window opens at {window[0]}")

    def _subscriptions(self) -> None:
        """The line budget (IB runs): the lines kept for positions must leave room for the rest."""
        subs = self.doc.get(("data", "subscriptions"))
        if not isinstance(subs, dict):
            return
        lines = subs.get("max_lines", 100)
        reserve = subs.get("reserve_for_positions", 5)
        if isinstance(lines, int) and isinstance(reserve, int) and reserve >= lines:
            given = "reserve_for_positions" in subs
            where = ("data", "subscriptions", "reserve_for_positions") if given else ("data", "subscriptions", "max_lines")
            self.err(where, f"reserve_for_positions {reserve}{'' if given else ' (the default)'} leaves no line of "
                            f"the {lines} for names not held",
                     f"set reserve_for_positions below max_lines (e.g. reserve_for_positions: {max(lines // 5, 0)})",
                     key=True)
        ranks = subs.get("priorities")
        if isinstance(ranks, dict):
            defaults = {"positions": 100, "watchlist": 90, "top_signals": 50, "scanner": 25}
            given = {**defaults, **{k: v for k, v in ranks.items() if k in defaults and isinstance(v, int)}}
            above = [k for k in ("watchlist", "top_signals", "scanner") if given[k] >= given["positions"]]
            if above:
                where = ("data", "subscriptions", "priorities") + (("positions",) if "positions" in ranks else ())
                shown = ", ".join(f"{k} {given[k]}" for k in above)
                self.err(where, f"priorities: positions ({given['positions']}"
                                f"{'' if 'positions' in ranks else ', the default'}) must be above every other class "
                                f"({shown}): an open position's line is never given up",
                         f"give positions the highest number (e.g. positions: {min(max(given.values()) + 1, 100)})"
                         if max(given.values()) < 100 else "lower the other classes below positions", key=True)

    def _universe(self) -> None:
        inst = self.ws.instruments_for(self.doc)
        roots = (inst.get(("roots",)) or {}) if inst else {}
        underlying = self.doc.get(("underlying",))
        if isinstance(underlying, str) and inst is not None and underlying not in roots:
            self.err(("underlying",), f"'{underlying}' is not in the instruments map "
                     f"{inst.path}{_suggest(underlying, roots)}",
                     "add it under roots: with its sec_type, exchange and currency")
        universe = self.doc.get(("universe",))
        if isinstance(universe, dict) and ("universe", "file") in self.doc.refs:
            groups = self.doc.refs[("universe", "file")].get(("groups",)) or {}
            for i, group in enumerate(universe.get("groups") or []):
                if group not in groups:
                    self.err(("universe", "groups", i), f"universe has no group '{group}'{_suggest(group, groups)}",
                             f"groups: {', '.join(groups)}")


def _minutes(text: str) -> int | None:
    m = re.match(r"^(\d{1,2}):(\d{2})$", text)
    return int(m.group(1)) * 60 + int(m.group(2)) if m else None


def check_timezone(check: DocumentCheck, where: tuple, tz: str) -> None:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        names = zoneinfo.available_timezones()
        check.err(where, f"unknown timezone '{tz}'{_suggest(tz, names)}",
                  "use an IANA name such as America/New_York or America/Chicago")


class ScannerCheck(DocumentCheck):
    """A scanner (a document, or inline in a strategy under `prefix`). `exprs` (after run) holds
    its parsed trees and params for the model (check.scan_model)."""

    def __init__(self, ws: Workspace, doc: Document, prefix: tuple = (), tolerant: bool = False):
        super().__init__(ws, doc, tolerant)
        self.prefix = prefix
        self.exprs = None

    def run(self, overrides: dict[str, str] | None = None) -> list[Diagnostic]:
        from .scan_model import ScannerExprs

        p = self.prefix
        body = self.doc.get(p) or {}
        params = self.params(overrides, section=p + ("params",))
        scope = base_scope(params)
        self.indicators(scope, section=p + ("indicators",))
        if "prefilter" in body:
            self.expr(p + ("prefilter",), scope, T.BOOL, "the prefilter")
        factors = body.get("factors") or {}
        total = 0.0
        taken = set(scope.names) | {"score", "scan"}
        for name, factor in factors.items():
            if not isinstance(factor, dict):
                continue
            if name in taken:
                what = "a param" if name in params else "the composite score" if name == "score" else \
                    "the scan record" if name == "scan" else "a bar field or clock value"
                self.err(p + ("factors", name), f"factor '{name}' has the name of {what}",
                         "in class conditions a factor's name is its normalised score: give it another name",
                         key=True)
            self.expr(p + ("factors", name, "expr"), scope, T.NUMBER, f"factor '{name}'")
            weight = factor.get("weight")
            if isinstance(weight, (int, float)) and not isinstance(weight, bool):
                total += weight
            clip = factor.get("clip")
            if isinstance(clip, list) and len(clip) == 2 and all(isinstance(c, (int, float)) for c in clip) \
                    and not clip[0] < clip[1]:
                self.err(p + ("factors", name, "clip"), f"factor '{name}': clip [{clip[0]:g}, {clip[1]:g}] is empty",
                         "write [min, max] with min below max, e.g. [0, 1]")
        if factors and not body.get("normalise_weights", True) and abs(total - 1.0) > 1e-9:
            self.err(p + ("factors",), f"factor weights sum to {total:g}, not 1",
                     "fix the weights so they add up to 1, or set `normalise_weights: true` to scale them",
                     key=True)
        class_scope = scope.child()
        scores = set(factors) | {"score"}
        for name in factors:
            class_scope.names[name] = Binding(T.NUMBER_SERIES, doc=f"factor {name}, normalised 0-1")
        class_scope.names["score"] = Binding(T.NUMBER_SERIES, doc="the composite score, 0-100")
        for i, case in enumerate(body.get("classes") or []):
            if isinstance(case, dict) and "when" in case:
                where = p + ("classes", i, "when")
                if self.expr(where, class_scope, T.BOOL, f"class '{case.get('class')}'") is not None:
                    self._no_lookback(where, scores)
        grades = body.get("grades") or {}
        values = [v for v in grades.values() if isinstance(v, (int, float))]
        if values != sorted(values, reverse=True):
            self.warn(p + ("grades",), "grades are not in descending order of score",
                      "list the best grade first, e.g. {A: 80, B: 65, C: 50}", key=True)
        data = body.get("data")
        if isinstance(data, dict) and isinstance(data.get("bar"), str):
            self.rescan_within(data["bar"])
        if not p and body.get("universe") is None and body.get("source") is None:
            self.err(("kind",), "a scanner file needs a universe: the names it scans, or that bound the candidates "
                     "of its source", "add `universe: [SPY, AAPL]` (or a universe file), or a source such as "
                     "`source: {ib_scanner: {scan_code: TOP_PERC_GAIN}}` (runs on IB only)", key=True)
        self.warn_unused(p + ("params",), params, "param")
        self.warn_unused(p + ("indicators",), body.get("indicators") or {}, "indicator")
        self.exprs = ScannerExprs(p, dict(self.parsed), {n: info.value for n, info in params.items()})
        return self.out

    def rescan_within(self, bar: str, out: "DocumentCheck | None" = None) -> None:
        """A rescan shorter than the bars the scan reads cannot rerun more often than they
        close: say so (the scan reruns at every bar's close)."""
        from .support import _duration

        rescan = self.doc.get(self.prefix + ("rescan",))
        every, size = _duration(rescan) if rescan is not None else None, _duration(bar)
        if every is not None and size is not None and every < size - 1e-9:
            (out or self).out.append(self.doc.diag(
                self.prefix + ("rescan",), f"rescan: {rescan} is shorter than the {bar} bars the scan reads: it "
                f"reruns at every bar's close, as rescan: {bar} would",
                f"scan finer bars (data: {{bar: {rescan}}}) to rescan every {rescan}, or set rescan: {bar}",
                Severity.WARNING))

    def _no_lookback(self, where: tuple, scores: set[str]) -> None:
        """Class conditions read each name's scores at one scan: a lag or a look-back function
        over them would need earlier scans, which the scanner does not keep."""
        from ..dsl import registry

        node, text = self.parsed[tuple(where)]

        def reads(n) -> str | None:
            return next((m.id for m in ast.walk(n) if isinstance(m, ast.Name) and m.id in scores), None)

        for n in ast.walk(node):
            name = None
            if isinstance(n, ast.Lag):
                name = reads(n.obj)
            elif isinstance(n, ast.Call):
                fn = registry.lookup(n.func)
                if fn is not None and (fn.returns in (registry.R_SERIES, registry.R_BOOL_SERIES) or fn.inputs):
                    name = next((r for a in (*n.args, *(k.value for k in n.kwargs)) if (r := reads(a))), None)
            if name is not None:
                shown = text[n.span.start:n.span.end].strip()
                self.out.append(self.doc.diag_in_value(
                    where, n.span.start, f"`{shown}` looks back over '{name}', which a class reads at one scan",
                    f"a class condition compares each name's scores at the scan (e.g. {name} > 0.6); a look-back "
                    "over bars works on bar data (close, volume, an indicator)"))
                return


class UniverseCheck(DocumentCheck):
    def run(self) -> list[Diagnostic]:
        inst = self.ws.instruments_for(self.doc)
        roots = (inst.get(("roots",)) or {}) if inst else {}
        default_type = (self.doc.get(("defaults",)) or {}).get("sec_type", "STK")
        seen: dict[str, tuple] = {}
        listed = [(("symbols", i), s) for i, s in enumerate(self.doc.get(("symbols",)) or [])]
        for group, symbols in (self.doc.get(("groups",)) or {}).items():
            listed += [(("groups", group, i), s) for i, s in enumerate(symbols or [])]
        patterns = self.doc.get(("exclude",)) or []
        for where, symbol in listed:
            if not isinstance(symbol, str):
                continue
            if symbol in seen:
                self.warn(where, f"'{symbol}' is listed twice (first at {'.'.join(map(str, seen[symbol]))})")
                continue
            seen[symbol] = where
            entry = roots.get(symbol) or {}
            sec_type = entry.get("sec_type", default_type)
            if sec_type == "FUT" and symbol not in roots:
                self.err(where, f"future '{symbol}' is not in the instruments map{_suggest(symbol, roots)}",
                         "futures need their exchange, multiplier, trading class and month cycle in instruments.yaml")
            for rule in patterns:
                if isinstance(rule, dict) and rule.get("sec_type", sec_type) == sec_type and \
                        fnmatch.fnmatchcase(symbol, str(rule.get("pattern", ""))):
                    self.warn(where, f"'{symbol}' matches the exclusion pattern '{rule.get('pattern')}' and will "
                                     "never be traded")
        return self.out


class InstrumentsCheck(DocumentCheck):
    def run(self) -> list[Diagnostic]:
        for root, entry in (self.doc.get(("roots",)) or {}).items():
            if not isinstance(entry, dict):
                continue
            if entry.get("sec_type") == "FUT":
                # exchange, multiplier and months are required by the schema, which reports them
                missing = [k for k in ("trading_class",) if k not in entry]
                if missing:
                    self.err(("roots", root), f"future '{root}' needs {', '.join(missing)}",
                             "IB resolves futures from root + exchange + month; give all of them here", key=True)
                if entry.get("exchange") in ("SMART",):
                    self.err(("roots", root, "exchange"), f"future '{root}' cannot use SMART routing",
                             "name the product's exchange: CME, CBOT, NYMEX, COMEX, ...")
        return self.out


class RiskCheck(DocumentCheck):
    def run(self) -> list[Diagnostic]:
        return self.out


def check_document(ws: Workspace, doc: Document, overrides: dict[str, str] | None = None,
                   tolerant: bool = False) -> list[Diagnostic]:
    """The semantic diagnostics of one document. `tolerant`: the document has schema errors, so
    malformed sections are skipped instead of treated as checker bugs."""
    checks = {"strategy": StrategyCheck, "scanner": ScannerCheck, "universe": UniverseCheck,
              "instruments": InstrumentsCheck, "risk": RiskCheck}
    from .support import unsupported

    check = checks[doc.kind](ws, doc, tolerant=tolerant)
    if doc.kind == "strategy":
        diags = check.run(overrides) + unsupported(doc)
        inline = getattr(check, "scanner_check", None)
        exprs = check.guard(lambda: strategy_exprs(doc, check.parsed,     # the model the compiler reads
                                                   inline.exprs if inline is not None else None))
        if exprs is not None:
            ws.checked[doc.abspath] = exprs
        return diags
    if doc.kind == "scanner":
        diags = (check.guard(lambda: check.run(overrides)) or check.out) + unsupported(doc)
        if check.exprs is not None:
            ws.checked[doc.abspath] = check.exprs
        return diags
    return (check.guard(check.run) or check.out) + unsupported(doc)
