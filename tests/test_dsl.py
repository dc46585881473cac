"""The expression language's front end: parser (precedence, literals, spans) and type checker,
plus property tests that no text whatsoever makes either of them raise anything but ExprError."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.check.semantic import ParamInfo, base_scope
from engine.config.yamlsource import load_yaml
from engine.dsl import ast, checker, registry
from engine.dsl import types as T
from engine.dsl.parser import ExprError, parse

ROOT = Path(__file__).resolve().parent.parent


def n(value):
    return ast.Number(float(value))


def name(x):
    return ast.Name(x)


def scope(**params):
    infos = {k: ParamInfo(k, T.SCALAR if not isinstance(v, str) else T.STRING_SCALAR, v, ("params", k))
             for k, v in params.items()}
    return base_scope(infos)


def typeof(text: str, sc=None):
    t, errors = checker.check(parse(text), sc or scope(), text)
    return t, errors


# ---- parser: precedence and associativity -----------------------------------------------------

@pytest.mark.parametrize("text, tree", [
    ("a + b * c", ast.Binary("+", name("a"), ast.Binary("*", name("b"), name("c")))),
    ("a * b + c", ast.Binary("+", ast.Binary("*", name("a"), name("b")), name("c"))),
    ("a - b - c", ast.Binary("-", ast.Binary("-", name("a"), name("b")), name("c"))),
    ("a / b * c", ast.Binary("*", ast.Binary("/", name("a"), name("b")), name("c"))),
    ("(a + b) * c", ast.Binary("*", ast.Binary("+", name("a"), name("b")), name("c"))),
    ("a or b and c", ast.Binary("or", name("a"), ast.Binary("and", name("b"), name("c")))),
    ("a and b or c", ast.Binary("or", ast.Binary("and", name("a"), name("b")), name("c"))),
    ("not a and b", ast.Binary("and", ast.Unary("not", name("a")), name("b"))),
    ("not a < b", ast.Unary("not", ast.Compare("<", name("a"), name("b")))),
    ("a < b + 1", ast.Compare("<", name("a"), ast.Binary("+", name("b"), n(1)))),
    ("a + 1 >= b * 2", ast.Compare(">=", ast.Binary("+", name("a"), n(1)), ast.Binary("*", name("b"), n(2)))),
    ("a > 1 and b < 2", ast.Binary("and", ast.Compare(">", name("a"), n(1)), ast.Compare("<", name("b"), n(2)))),
    ("-a * b", ast.Binary("*", ast.Unary("-", name("a")), name("b"))),
    ("-a[1]", ast.Unary("-", ast.Lag(name("a"), n(1)))),
    ("-3", n(-3)),
    ("--3", n(3)),
    ("a[1][2]", ast.Lag(ast.Lag(name("a"), n(1)), n(2))),
    ("p.pnl[1]", ast.Lag(ast.Attr(name("p"), "pnl"), n(1))),
    ('symbol("VIX").close', ast.Attr(ast.Call("symbol", (ast.String("VIX"),)), "close")),
    ("x between 1 and 2", ast.Between(name("x"), n(1), n(2))),
    ("x between 1 and 2 and y", ast.Binary("and", ast.Between(name("x"), n(1), n(2)), name("y"))),
    ("x between a + 1 and b * 2", ast.Between(name("x"), ast.Binary("+", name("a"), n(1)),
                                              ast.Binary("*", name("b"), n(2)))),
    ("not x between 1 and 2", ast.Unary("not", ast.Between(name("x"), n(1), n(2)))),
    ('x in ["a", "b"]', ast.In(name("x"), ast.ListOf((ast.String("a"), ast.String("b"))))),
    ("x in [1, 2,]", ast.In(name("x"), ast.ListOf((n(1), n(2))))),
    ('x not in ["a"]', ast.In(name("x"), ast.ListOf((ast.String("a"),)), True)),
    ("x in [1] or y", ast.Binary("or", ast.In(name("x"), ast.ListOf((n(1),))), name("y"))),
    ("f()", ast.Call("f", ())),
    ("f(a, b=2)", ast.Call("f", (name("a"),), (ast.Keyword("b", n(2)),))),
    ("f(a,)", ast.Call("f", (name("a"),))),
    ("true and false", ast.Binary("and", ast.Bool(True), ast.Bool(False))),
    ("'single' == \"double\"", ast.Compare("==", ast.String("single"), ast.String("double"))),
])
def test_parse_tree(text, tree):
    assert parse(text) == tree


# ---- parser: literals ------------------------------------------------------------------------

@pytest.mark.parametrize("text, node", [
    ("1_000_000", n(1_000_000)),
    ("0.5", n(0.5)),
    (".5", n(0.5)),
    ("1e3", n(1000)),
    ("2%", n(0.02)),
    ("0.5%", n(0.005)),
    ("100%", n(1.0)),
    ("09:45", ast.TimeOfDay(9 * 60 + 45)),
    ("9:45", ast.TimeOfDay(9 * 60 + 45)),
    ("23:59", ast.TimeOfDay(23 * 60 + 59)),
    ("00:00", ast.TimeOfDay(0)),
    ("30s", ast.Duration(30)),
    ("5m", ast.Duration(300)),
    ("1.5h", ast.Duration(5400)),
    ("2d", ast.Duration(172800)),
    ("1w", ast.Duration(604800)),
    ("250ms", ast.Duration(0.25)),
])
def test_literals(text, node):
    assert parse(text) == node


def test_literal_in_context():
    assert parse("time >= 09:45") == ast.Compare(">=", name("time"), ast.TimeOfDay(585))
    assert parse("position.time_held > 5m") == ast.Compare(
        ">", ast.Attr(name("position"), "time_held"), ast.Duration(300))
    assert parse("x > 2% * y") == ast.Compare(">", name("x"), ast.Binary("*", n(0.02), name("y")))


@pytest.mark.parametrize("text", ["24:00", "12:60", "5min", "5mm", "1__0", "09:45:00", "2%%", "1e999"])
def test_bad_literals(text):
    with pytest.raises(ExprError) as info:
        parse(text)
    assert 0 <= info.value.start <= info.value.end <= len(text)


# ---- parser: spans ---------------------------------------------------------------------------

def test_spans_point_into_the_text():
    text = "ema(close, 8) > sma(close, length=21)[1]"
    node = parse(text)
    assert isinstance(node, ast.Compare)
    assert (node.span.start, node.span.end) == (0, len(text))
    assert text[node.op_span.start:node.op_span.end] == ">"
    left = node.left
    assert text[left.span.start:left.span.end] == "ema(close, 8)"
    assert text[left.func_span.start:left.func_span.end] == "ema"
    assert text[left.args[1].span.start:left.args[1].span.end] == "8"
    lag = node.right
    assert isinstance(lag, ast.Lag)
    assert text[lag.span.start:lag.span.end] == "sma(close, length=21)[1]"
    kw = lag.obj.kwargs[0]
    assert text[kw.span.start:kw.span.end] == "length=21"
    assert text[kw.value.span.start:kw.value.span.end] == "21"


def test_spans_skip_leading_whitespace_and_newlines():
    text = "  close > 1\n  and position.pnl < 0"
    node = parse(text)
    assert (node.left.span.start, node.left.span.end) == (2, 11)
    attr = node.right.left
    assert text[attr.span.start:attr.span.end] == "position.pnl"
    assert text[attr.name_span.start:attr.name_span.end] == "pnl"


def test_spans_do_not_take_part_in_equality():
    assert parse("ema(close, 8)") == parse("  ema( close,8 )")
    assert hash(parse("close[1] + 1")) == hash(parse("close[1]+1"))


# ---- parser: errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, start, words", [
    ("ema(close, 8", 3, "'(' is never closed"),
    ("close))", 5, "unmatched ')'"),
    ("close]", 5, "unmatched ']'"),
    ("a < b < c", 6, "comparisons do not chain"),
    ("a == b != c", 7, "comparisons do not chain"),
    ("a & b", 2, "'&' is not an operator"),
    ("a | b", 2, "'|' is not an operator"),
    ("a = b", 2, "'=' is not a comparison"),
    ("!a", 0, "'!' is not an operator"),
    ("a ^ 2", 2, "'^' is not an operator"),
    ("a % 2", 2, "'%' must follow a number"),
    ('"abc', 0, "unterminated string"),
    ("a b", 2, "operator is missing"),
    ("", 0, "empty expression"),
    ("   ", 0, "empty expression"),
    ("a +", 3, "ends too early"),
    ("f(a=1, 2)", 7, "positional argument cannot follow"),
    ("f(a=1, a=2)", 7, "given twice"),
    ("close.sma(20)", 9, "methods cannot be called"),
])
def test_syntax_errors(text, start, words):
    with pytest.raises(ExprError) as info:
        parse(text)
    assert words in info.value.message
    assert info.value.start == start


@pytest.mark.parametrize("text, message, hint", [
    ("fast_m\u0430 > 1", "unexpected character '\u0430' (U+0430 CYRILLIC SMALL LETTER A)",
     "looks like the ASCII letter 'a': retype it"),
    ("\u0421lose > 1", "(U+0421 CYRILLIC CAPITAL LETTER ES)", "looks like the ASCII letter 'C'"),
    ("\uff46ast > 1", "(U+FF46 FULLWIDTH LATIN SMALL LETTER F)", "looks like the ASCII letter 'f'"),
    ("stra\u00dfe > 1", "(U+00DF LATIN SMALL LETTER SHARP S)", "ASCII letters, digits and _"),
    ("a \u2013 b", "(U+2013 EN DASH)", "operators + - * /"),
])
def test_non_ascii_characters_are_named(text, message, hint):
    with pytest.raises(ExprError) as info:
        parse(text)
    assert message in info.value.message
    assert hint in info.value.hint
    assert not text[info.value.start].isascii()  # the span is the character itself


def test_parse_rejects_non_strings():
    with pytest.raises(TypeError):
        parse(3)  # type: ignore[arg-type]


# ---- checker ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("close", T.NUMBER_SERIES),
    ("1 + 2", T.SCALAR),
    ("close > 1", T.BOOL_SERIES),
    ("1 > 2", T.BOOLEAN),
    ("true and 1 < 2", T.BOOLEAN),
    ("close between low and high", T.BOOL_SERIES),
    ("1 between 0 and 2", T.BOOLEAN),
    ("dayofweek in [1, 2, 3]", T.BOOL_SERIES),
    ("time >= 09:45", T.BOOL_SERIES),
    ("5m * 2", T.DURATION_SCALAR),
    ("2 * 5m + 30s", T.DURATION_SCALAR),
    ("ema(close, 8)", T.NUMBER_SERIES),
    ("ema(close, fast)", T.NUMBER_SERIES),
    ("ema(x=close, length=8)", T.NUMBER_SERIES),
    ("crossover(close, sma(close, 5))", T.BOOL_SERIES),
    ("abs(-1)", T.SCALAR),
    ("abs(close)", T.NUMBER_SERIES),
    ("max(1, 2, 3)", T.SCALAR),
    ("max(1, close)", T.NUMBER_SERIES),
    ("if(close > open, 1, 0)", T.NUMBER_SERIES),
    ('symbol("VIX").close', T.NUMBER_SERIES),
    ("atr()", T.NUMBER_SERIES),
    ("rsi(close) < 30", T.BOOL_SERIES),
    ("bb_upper(close, mult=2.5)", T.NUMBER_SERIES),
    ("close[fast]", T.NUMBER_SERIES),
    ("sma(close, fast * 2)", T.NUMBER_SERIES),
    ("stoch_k()", T.NUMBER_SERIES),
    ("stoch_d(14, 1, smooth_d=5)", T.NUMBER_SERIES),
    ("crosses_above(stoch_k(), stoch_d()) and willr(10) < -80", T.BOOL_SERIES),
    ("cci(20) > 100", T.BOOL_SERIES),
    ("obv() > sma(obv(), 20)", T.BOOL_SERIES),
    ("close < sar(accel=0.01, max=0.1)", T.BOOL_SERIES),
    ("close > keltner_upper(mult=1.5)", T.BOOL_SERIES),
    ("keltner_lower(20, 2, fast) < keltner_middle()", T.BOOL_SERIES),
    ("na(close)", T.BOOL_SERIES),
    ("defined(sma(close, 50)) and close > sma(close, 50)", T.BOOL_SERIES),
    ("not na(symbol(\"VIX\").close)", T.BOOL_SERIES),
    ("na(fast)", T.BOOLEAN),
    ("if(defined(rsi(close)), rsi(close), 50)", T.NUMBER_SERIES),
])
def test_types(text, expected):
    t, errors = typeof(text, scope(fast=8))
    assert errors == []
    assert t == expected


@pytest.mark.parametrize("text, start, words", [
    ("ema2(close, 8)", 0, "unknown function 'ema2' (did you mean 'ema'?)"),
    ("clse", 0, "did you mean 'close'"),
    ("fsat + 1", 0, "did you mean 'fast'"),
    ("ema", 0, "is a function: call it"),
    ("ema(close)", 0, "needs 2 arguments"),
    ("ema(close, 8, 9)", 14, "at most 2 arguments"),
    ("ema(close, len=8)", 11, "no argument 'len' (did you mean 'length'?)"),
    ("ema(close, 8, length=9)", 14, "given twice"),
    ("sma(close, close)", 11, "must be a constant"),
    ("sma(close, 0)", 11, "whole number of bars >= 1"),
    ("sma(close, 2.5)", 11, "whole number of bars"),
    ("sma(close, fast / 3)", 11, "whole number of bars"),
    ("sma(close, 1)", 11, "`length` of sma() must be 2 bars or more, got 1"),
    ("hurst(close, 10)", 13, "must be 22 bars or more, got 10"),
    ("macd(close, fast=1)", 17, "`fast` of macd() must be 2 bars or more"),
    ("sar(0.3, 0.2)", 0, "sar(): accel 0.3 is above max 0.2"),
    ("sar(max=0.01)", 0, "accel 0.02 is above max 0.01"),
    ("sar(0)", 4, "`accel` of sar() must be above 0, got 0"),
    ("sar(0.02, -1)", 10, "`max` of sar() must be above 0"),
    ("sar(close)", 4, "must be a constant"),
    ("cci(1)", 4, "`length` of cci() must be 2 bars or more"),
    ("willr(1)", 6, "2 bars or more"),
    ("stoch_k(0)", 8, "whole number of bars >= 1"),
    ("stoch_d(14, 3, 2.5)", 15, "whole number of bars"),
    ("obv(close)", 4, "at most 0 arguments"),
    ("keltner_upper(close)", 14, "must be a constant"),
    ("na(close > open)", 3, "`x` of na() must be a number, but `close > open` is a boolean series"),
    ("defined()", 0, "defined() needs 1 argument, missing x"),
    ("na(close, 1)", 10, "at most 1 argument"),
    ("na(close) + 1", 0, "`+` needs numbers"),
    ('na("a")', 3, "must be a number"),
    ("close[-1]", 6, "negative lag"),
    ("close[close]", 6, "constant number of bars"),
    ("close[1.5]", 6, "whole number"),
    ("close and 3", 0, "`and` needs true/false"),
    ("close > 1 and 3", 14, "`and` needs true/false"),
    ("not close", 4, "`not` needs a true/false"),
    ("-(close > 1)", 2, "`-` needs a number"),
    ("09:45 + 1", 0, "`+` needs numbers"),
    ("time > 5", 5, "cannot compare"),
    ('"a" < "b"', 4, "cannot compare a string with a string using `<`"),
    ("close.foo", 6, "has no fields"),
    ("position.pnl", 0, "not available here"),
    ('symbol("VIX").clsoe', 14, "did you mean 'close'"),
    ("symbol(VIX)", 7, "quoted string"),
    ("at_entry(close)", 0, "only available in exit rules"),
    ("delta(sp)", 0, "only available in rules whose order is an options combo"),
    ("if(close, 1, 0)", 3, "must be true/false"),
    ('if(close > 1, 1, "a")', 0, "branches must be of one kind"),
    ("min(1)", 0, "two or more"),
    ("[1, 2]", 0, "a list can only follow `in`"),
    ("close in []", 9, "empty list"),
    ("close in [close]", 10, "must be constants"),
    ('close in ["a"]', 10, "is a string"),
    ("close between 1 and 09:45", 20, "`between` needs values of one kind"),
])
def test_check_errors(text, start, words):
    _, errors = typeof(text, scope(fast=8))
    assert errors, f"{text!r} should not type-check"
    assert any(words in e.message for e in errors), [e.message for e in errors]
    assert errors[0].start == start
    assert all(0 <= e.start <= e.end <= len(text) for e in errors)


def test_choice_strings_catch_misspellings():
    sc = scope()
    sc.names["regime"] = checker.Binding(T.strings({"trend", "chop"}))
    _, errors = typeof('regime == "trnd"', sc)
    assert [(e.start, e.end) for e in errors] == [(10, 16)]
    assert "did you mean 'trend'" in errors[0].message
    _, errors = typeof('regime in ["trend", "chopp"]', sc)
    assert "did you mean 'chop'" in errors[0].message and errors[0].start == 20
    assert typeof('"chop" != regime', sc)[1] == []


def test_keyword_arguments_bind_in_signature_order():
    fn = registry.lookup("bb_upper")
    forms = ["bb_upper(close, 20, 2)", "bb_upper(close, length=20, mult=2)",
             "bb_upper(close, mult=2, length=20)", "bb_upper(x=close, mult=2, length=20)"]
    bound = []
    for text in forms:
        node = parse(text)
        c = checker.Checker(scope(), text)
        pairs = c._bind(fn, node)
        assert c.errors == []
        bound.append([(p.name, arg) for p, arg in pairs])
    assert all(b == bound[0] for b in bound)
    assert [p for p, _ in bound[0]] == ["x", "length", "mult"]
    assert bound[0][1][1] == n(20)


def test_aliases_resolve():
    assert registry.lookup("crossover") is registry.lookup("crosses_above")
    assert "crossover" in registry.all_names()


def test_constants_fold_params():
    text = "fast * 2 + 1"
    c = checker.Checker(scope(fast=8), text)
    assert c.constant(parse(text)) == 17
    assert c.constant(parse("close + 1")) is None
    assert c.constant(parse("1 / 0")) is None


# ---- property tests ---------------------------------------------------------------------------

EXPR_ALPHABET = "abcdeghilmnoprstuvwxyz_0123456789 ()[],.<>=!+-*/%:\"'\t\n#&|^{}andornotinbetween"
SCOPE = scope(fast=8, slow=21)


def _assert_parse_contract(text: str):
    try:
        node = parse(text)
    except ExprError as exc:
        assert 0 <= exc.start <= len(text), (text, exc.start)
        assert 0 <= exc.end <= len(text), (text, exc.end)
        assert exc.start <= exc.end
        assert exc.message
        return None
    return node


def _assert_check_contract(text: str, node: ast.Node):
    t, errors = checker.check(node, SCOPE.child(), text)
    assert isinstance(t, T.Type)
    for e in errors:
        assert isinstance(e, ExprError)
        assert 0 <= e.start <= e.end <= len(text), (text, e.start, e.end, e.message)
    for sub in ast.walk(node):
        span = getattr(sub, "span", None)
        if span is not None and span.end:
            assert 0 <= span.start <= span.end <= len(text)


PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(st.text(alphabet=EXPR_ALPHABET, max_size=40))
def test_random_expressionish_text_raises_only_expr_error(text):
    node = _assert_parse_contract(text)
    if node is not None:
        _assert_check_contract(text, node)


@PROPS
@given(st.text(max_size=30))
def test_random_unicode_raises_only_expr_error(text):
    node = _assert_parse_contract(text)
    if node is not None:
        _assert_check_contract(text, node)


TOKENS = ["close", "open", "fast", "ema", "sma(", "(", ")", "[", "]", ",", "1", "2.5", "2%", "09:45", "5m", '"a"',
          "and", "or", "not", "in", "between", "<", "==", "+", "-", "*", "/", ".", "position", "pnl", "x=", "if(",
          "true", "symbol(\"VIX\")"]


@PROPS
@given(st.lists(st.sampled_from(TOKENS), max_size=14))
def test_token_soup_parses_or_fails_cleanly(tokens):
    text = " ".join(tokens)
    node = _assert_parse_contract(text)
    if node is not None:
        _assert_check_contract(text, node)


def _example_expressions() -> list[str]:
    """Every expression written in the example strategies and scanners."""
    keys = {"when", "expr", "prefilter", "active", "score", "stop", "target", "limit", "floor", "stop_distance",
            "strike", "delta", "min", "max"}
    found: set[str] = set()

    def walk(value, key=None, parent=None):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, k, key)
        elif isinstance(value, list):
            for v in value:
                walk(v, key, parent)
        elif isinstance(value, str) and (key in keys or parent == "indicators") and len(value) > 2:
            found.add(value)

    for path in sorted(p for p in (ROOT / "strategies").rglob("*.yaml") if not p.name.startswith(".")):
        walk(load_yaml(str(path), env={}).data)
    return sorted(found)


EXAMPLES = _example_expressions()


def test_examples_were_found_and_parse():
    assert len(EXAMPLES) >= 30
    for text in EXAMPLES:
        parse(text)


def _swap_tokens(text: str, i: int, j: int) -> str:
    tokens = re.findall(r"\w+|\S", text)
    if len(tokens) < 2:
        return text
    i, j = i % len(tokens), j % len(tokens)
    tokens[i], tokens[j] = tokens[j], tokens[i]
    return " ".join(tokens)


@st.composite
def mutated_examples(draw):
    text = draw(st.sampled_from(EXAMPLES))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["delete", "insert", "replace", "swap"]))
        pos = draw(st.integers(0, max(len(text) - 1, 0)))
        char = draw(st.sampled_from(list("()[],.<>=!+-*/%:\"' x0_#") + ["and", "not", "in"]))
        if op == "delete" and text:
            text = text[:pos] + text[pos + 1:]
        elif op == "insert":
            text = text[:pos] + char + text[pos:]
        elif op == "replace" and text:
            text = text[:pos] + char + text[pos + 1:]
        else:
            text = _swap_tokens(text, draw(st.integers(0, 50)), draw(st.integers(0, 50)))
    return text


@PROPS
@given(mutated_examples())
def test_mutated_examples_parse_or_fail_inside_the_text(text):
    node = _assert_parse_contract(text)
    if node is not None:
        _assert_check_contract(text, node)


@PROPS
@given(st.sampled_from(EXAMPLES))
def test_examples_check_without_raising(text):
    _assert_check_contract(text, parse(text))
