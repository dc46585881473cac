"""Parse expression text into the syntax tree of `engine.dsl.ast`.

The grammar lives in grammar.lark and is compiled once per process (LALR, cached on disk by
lark). Every failure is an `ExprError` with a character span inside the text and a hint, so
the caller can point at the exact line and column of the YAML file it came from.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from dataclasses import dataclass
from importlib import resources

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from . import ast


@dataclass
class ExprError(Exception):
    """A problem inside one expression: message, [start, end) offsets in the text, and a hint."""

    message: str
    start: int
    end: int
    hint: str = ""

    def __str__(self) -> str:
        return self.message


@functools.lru_cache(maxsize=1)
def _lark() -> Lark:
    grammar = resources.files(__package__).joinpath("grammar.lark").read_text(encoding="utf-8")
    return Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True, cache=True)


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$")


def _span(meta_or_token) -> ast.Span:
    if isinstance(meta_or_token, Token):
        return ast.Span(meta_or_token.start_pos, meta_or_token.end_pos)
    if getattr(meta_or_token, "empty", False):
        return ast.Span(0, 0)
    return ast.Span(meta_or_token.start_pos, meta_or_token.end_pos)


@v_args(meta=True)
class _ToAst(Transformer):
    def number(self, meta, children):
        (tok,) = children
        value = float(tok.replace("_", ""))
        if math.isinf(value):
            raise ExprError(f"number {str(tok)!r} is too large", tok.start_pos, tok.end_pos,
                            "numbers must be below about 1.8e308")
        return ast.Number(value, _span(tok))

    def percent(self, meta, children):
        (tok,) = children
        return ast.Number(float(tok[:-1].replace("_", "")) / 100.0, _span(tok))

    def time(self, meta, children):
        (tok,) = children
        hours, minutes = tok.split(":")
        return ast.TimeOfDay(int(hours) * 60 + int(minutes), _span(tok))

    def duration(self, meta, children):
        (tok,) = children
        value, unit = _DURATION_RE.match(str(tok)).groups()
        return ast.Duration(float(value) * _DURATION_UNITS[unit], _span(tok))

    def string(self, meta, children):
        (tok,) = children
        return ast.String(str(tok)[1:-1], _span(tok))

    def true(self, meta, children):
        return ast.Bool(True, _span(meta))

    def false(self, meta, children):
        return ast.Bool(False, _span(meta))

    def name(self, meta, children):
        (tok,) = children
        return ast.Name(str(tok), _span(tok))

    def call(self, meta, children):
        name_tok, arguments = children
        args, kwargs = [], []
        for item in (arguments.children if arguments is not None else []):
            if item is None:
                continue
            if isinstance(item, ast.Keyword):
                if any(k.name == item.name for k in kwargs):
                    raise ExprError(f"argument {item.name!r} given twice", item.span.start, item.span.end,
                                    "give each argument once")
                kwargs.append(item)
            else:
                if kwargs:
                    raise ExprError("a positional argument cannot follow a named one",
                                    item.span.start, item.span.end,
                                    "put positional arguments first, e.g. ema(close, length=8)")
                args.append(item)
        return ast.Call(str(name_tok), tuple(args), tuple(kwargs), _span(meta), _span(name_tok))

    def keyword(self, meta, children):
        name_tok, value = children
        return ast.Keyword(str(name_tok), value, _span(meta))

    def list(self, meta, children):
        return ast.ListOf(tuple(c for c in children if c is not None), _span(meta))

    def lag(self, meta, children):
        obj, bars = children
        return ast.Lag(obj, bars, _span(meta))

    def attr(self, meta, children):
        obj, name_tok = children
        return ast.Attr(obj, str(name_tok), _span(meta), _span(name_tok))

    def neg(self, meta, children):
        (operand,) = children
        if isinstance(operand, ast.Number):
            return ast.Number(-operand.value, _span(meta))
        return ast.Unary("-", operand, _span(meta))

    def pos(self, meta, children):
        (operand,) = children
        return ast.Unary("+", operand, _span(meta))

    def not_(self, meta, children):
        (operand,) = children
        return ast.Unary("not", operand, _span(meta))

    def and_(self, meta, children):
        left, right = children
        return ast.Binary("and", left, right, _span(meta))

    def or_(self, meta, children):
        left, right = children
        return ast.Binary("or", left, right, _span(meta))

    def binary(self, meta, children):
        left, op, right = children
        return ast.Binary(str(op), left, right, _span(meta), _span(op))

    def compare(self, meta, children):
        left, op, right = children
        return ast.Compare(str(op), left, right, _span(meta), _span(op))

    def between(self, meta, children):
        value, low, high = children
        return ast.Between(value, low, high, _span(meta))

    def in_(self, meta, children):
        value, options = children
        return ast.In(value, options, False, _span(meta))

    def not_in(self, meta, children):
        value, options = children
        return ast.In(value, options, True, _span(meta))


_TOKEN_WORDS = {
    "RPAR": "')'", "LPAR": "'('", "RSQB": "']'", "LSQB": "'['", "COMMA": "','", "DOT": "'.'",
    "COMP_OP": "a comparison", "ADD_OP": "'+' or '-'", "MUL_OP": "'*' or '/'", "MINUS": "'-'",
    "PLUS": "'+'", "NAME": "a name", "NUMBER": "a number", "PERCENT": "a percentage",
    "TIME": "a time", "DURATION": "a duration", "STRING": "a string", "EQUAL": "'='",
    "AND": "'and'", "OR": "'or'", "NOT": "'not'", "IN": "'in'", "BETWEEN": "'between'",
    "TRUE": "'true'", "FALSE": "'false'", "$END": "the end of the expression",
}

# Tokens that can only start a value: seeing one where an operator belongs means one is missing.
_OPERANDS = {"NAME", "NUMBER", "PERCENT", "TIME", "DURATION", "STRING", "TRUE", "FALSE"}


def _describe(token: Token) -> str:
    if token.type == "$END":
        return "end of expression"
    return repr(str(token))


def _expected(expected: set[str]) -> str:
    if expected & _OPERANDS:
        return "a value (a number, a name, a call or a parenthesis)"
    words = sorted({_TOKEN_WORDS.get(t, t.lower()) for t in expected})
    return ", ".join(words[:6])


def _unclosed(text: str) -> tuple[str, int] | None:
    """The innermost bracket still open at the end of the text, if any."""
    stack: list[tuple[str, int]] = []
    pairs = {")": "(", "]": "["}
    quote = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "([":
            stack.append((ch, i))
        elif ch in ")]" and stack and stack[-1][0] == pairs[ch]:
            stack.pop()
    return stack[-1] if stack else None


# Letters of other scripts drawn like ASCII ones (the common Cyrillic and Greek entries of
# Unicode's confusables.txt); accented, fullwidth and mathematical letters are found by NFKD.
_LOOKALIKES = dict(zip(
    "асеһіјорԛѕԝхуԁ"
    "АВСЕНІЈКМОРЅТХУԜԚ"
    "αινορ"
    "ΑΒΕΖΗΙΚΜΝΟΡΤΥΧ",
    "acehijopqswxyd"
    "ABCEHIJKMOPSTXYWQ"
    "aivop"
    "ABEZHIKMNOPTYX"))


def _lookalike(ch: str) -> str:
    """The ASCII letter a non-ASCII letter looks like, or ''."""
    if ch in _LOOKALIKES:
        return _LOOKALIKES[ch]
    base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
    return base if len(base) == 1 and base.isascii() and base.isalpha() else ""


def _syntax_error(text: str, exc: UnexpectedInput) -> ExprError:
    if isinstance(exc, UnexpectedCharacters):
        pos = exc.pos_in_stream
        ch = text[pos]
        hints = {
            "&": ("'&' is not an operator", "use `and`"),
            "|": ("'|' is not an operator", "use `or`"),
            "!": ("'!' is not an operator", "use `not`, or `!=` for not-equal"),
            "=": ("'=' is not a comparison", "use `==` to compare"),
            "%": ("'%' must follow a number", "write a percentage as 2%; there is no modulo operator"),
            "^": ("'^' is not an operator", "there is no power operator: use sqrt() or multiply"),
            '"': ("unterminated string", "close the string with a matching quote"),
            "'": ("unterminated string", "close the string with a matching quote"),
            "{": ("'{' is not allowed in an expression", "quote the whole expression in YAML, and use (...)"),
            "}": ("'}' is not allowed in an expression", "use (...) to group"),
            "#": ("'#' starts a YAML comment", "quote the expression or remove the '#'"),
        }
        if ch in hints:
            message, hint = hints[ch]
            if ch == "*" and text[pos:pos + 2] == "**":
                message, hint = "'**' is not an operator", "there is no power operator"
            return ExprError(message, pos, pos + 1, hint)
        if ch == ":" :
            return ExprError("unexpected ':'", pos, pos + 1, "a time of day is written hh:mm, e.g. 09:45")
        hint = "expressions use names, numbers, operators + - * / < > == and, or, not"
        if ch.isascii() and ch.isprintable():
            return ExprError(f"unexpected character {ch!r}", pos, pos + 1, hint)
        name = unicodedata.name(ch, "")
        code = f"U+{ord(ch):04X}" + (f" {name}" if name else "")
        ascii_letter = _lookalike(ch)
        if ascii_letter:
            hint = f"looks like the ASCII letter {ascii_letter!r}: retype it"
        elif ch.isalpha():
            hint = "names are written in ASCII letters, digits and _"
        return ExprError(f"unexpected character {ch!r} ({code})", pos, pos + 1, hint)
    if isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
        end = len(text.rstrip())
        open_ = _unclosed(text)
        if open_ is not None:
            closer = ")" if open_[0] == "(" else "]"
            return ExprError(f"{open_[0]!r} is never closed", open_[1], open_[1] + 1,
                             f"add the missing {closer!r}")
        if not text.strip():
            return ExprError("empty expression", 0, 0, "write an expression, e.g. close > sma(close, 20)")
        expected = getattr(exc, "expected", set()) or set()
        return ExprError("expression ends too early", end, end,
                         f"expected {_expected(set(expected))} after this")
    assert isinstance(exc, UnexpectedToken)
    token = exc.token
    start, end = token.start_pos, token.end_pos
    if start is None:  # pragma: no cover - lark always sets positions for real tokens
        start, end = len(text), len(text)
    expected = set(exc.expected)
    if token.type == "RPAR" and "RPAR" not in expected:
        return ExprError("unmatched ')'", start, end, "remove it, or add the '(' it closes")
    if token.type == "RSQB" and "RSQB" not in expected:
        return ExprError("unmatched ']'", start, end, "remove it, or add the '[' it closes")
    if token.type == "COMP_OP" and "COMP_OP" not in expected:
        return ExprError("comparisons do not chain", start, end,
                         "write `a < b and b < c` instead of `a < b < c`")
    if token.type == "LPAR" and text[:start].rstrip().endswith(tuple(")]")) is False and \
            re.search(r"[A-Za-z0-9_]\.[A-Za-z_][A-Za-z0-9_]*\s*$", text[:start]):
        return ExprError("methods cannot be called", start, end,
                         "call a function with the value as its argument, e.g. sma(close, 20)")
    if token.type in _OPERANDS and not (expected & _OPERANDS):
        return ExprError(f"unexpected {_describe(token)}: an operator is missing before it", start, end,
                         "join values with an operator such as +, -, *, /, <, >, and, or")
    if token.type == "EQUAL":
        return ExprError("'=' is not a comparison", start, end,
                         "use `==` to compare; `name=value` is only for function arguments")
    return ExprError(f"unexpected {_describe(token)}", start, end, f"expected {_expected(expected)}")


MAX_LENGTH = 10_000  # characters in one expression (the longest example has under 200)
MAX_DEPTH = 100      # nesting of operators, calls, lags and lists (every later pass recurses on it)
_SPLIT_HINT = "split it into named indicators (the indicators: section) and combine those by name"


def _refuse_deep(tree) -> None:
    """Refuse a tree nested deeper than MAX_DEPTH, at the first node past it (walked with a stack:
    the point is not to recurse). A call's argument list is not a level of its own."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            span = _span(node.meta)
            raise ExprError(f"expression is nested more than {MAX_DEPTH} levels deep", span.start, span.end,
                            _SPLIT_HINT)
        for child in node.children:
            if isinstance(child, Tree):
                stack.append((child, depth if child.data == "arguments" else depth + 1))


@functools.lru_cache(maxsize=4096)
def parse(text: str) -> ast.Node:
    """Parse one expression. Raises ExprError with a span inside `text` on any problem."""
    if not isinstance(text, str):
        raise TypeError("expression text must be a string")
    if len(text) > MAX_LENGTH:
        raise ExprError(f"expression is {len(text):,} characters long, more than the {MAX_LENGTH:,} allowed",
                        MAX_LENGTH, len(text), _SPLIT_HINT)
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(text, exc) from None
    _refuse_deep(tree)
    try:
        node = _ToAst().transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, ExprError):
            raise exc.orig_exc from None
        raise
    return node
