"""A corpus of broken documents, each with the diagnostics `qtrade validate` must give for it.

Every case is a few small YAML files written to a temporary folder and the diagnostics expected
for them as (line, col, severity, words of the message or its hint), optionally in another file of the case.
Lines and columns were counted by hand from the text (1-based, as editors show them), never
copied from the tool's output: a mismatch is a bug in the engine, not in the table.

Unless a case says `more_errors=True`, the expected errors are the only errors reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.check import validate
from engine.diagnostics import Severity

E, W = Severity.ERROR, Severity.WARNING


@dataclass
class Case:
    id: str
    files: dict[str, str | bytes]          # the first file is the one validated
    expect: list[tuple]                    # (line, col, severity, *substrings) or (file, line, ...)
    overrides: dict[str, str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    more_errors: bool = False
    absent: list[str] = field(default_factory=list)  # words no diagnostic may contain


# A minimal valid strategy. Lines 1-6; cases append from line 7.
HEAD = """\
kind: strategy
name: t
universe: [SPY]
data: {bar: 1m, history: 2d}
orders:
  buy: {action: buy, type: market}
"""
ENTRY = "entry:\n  - {when: close > 1, order: buy}\n"


def rule(expr: str) -> str:
    """HEAD and one entry rule whose expression starts at line 9, column 11."""
    return HEAD + "entry:\n  - order: buy\n    when: " + expr + "\n"


def condor(sp_strike="{delta: 0.1}", lp_strike="sp.strike - w", when1="credit > 0.2", order2="stock",
           when2="close > 1", expiry="0dte") -> str:
    return f"""\
kind: strategy
name: ic
underlying: XSP
universe: [XSP]
data: {{bar: 1m, history: 2d}}
params: {{w: 2.0}}
orders:
  condor:
    expiry: {expiry}
    legs:
      sp: {{right: put, action: sell, strike: {sp_strike}}}
      lp: {{right: put, action: buy, strike: {lp_strike}}}
  stock: {{action: buy, type: market}}
entry:
  - order: condor
    when: {when1}
  - order: {order2}
    when: {when2}
"""


PARAMS = """\
kind: strategy
name: p
universe: [SPY]
data: {bar: 5m, history: 2d}
orders:
  buy: {action: buy, type: market}
params:
  fast: {value: 10, min: 2, max: 50}
  slow: 30
entry:
  - order: buy
    when: sma(close, fast) > sma(close, slow)
"""

SCANNER = """\
kind: scanner
name: s
universe: [SPY, QQQ]
data: {bar: 1d, history: 60 bars}
factors:
  a: {expr: "roc(close, 5)", weight: 0.5, normalise: rank}
  b: {expr: atr(14) / close, weight: 0.3, normalise: rank}
top: 5
"""

CASES = [
    # ---- YAML itself ------------------------------------------------------------------------
    Case("tab-indentation", {"s.yaml": "kind: strategy\nname: t\ndata:\n\tbar: 1m\n"},
         [(4, 1, E, "tab")]),
    Case("unclosed-flow-list", {"s.yaml": "kind: strategy\nname: t\nuniverse: [SPY, QQQ\ndata: {bar: 1m, history: 2d}\n"},
         [(3, 11, E, "'['", "never closed")]),
    Case("unclosed-flow-mapping", {"s.yaml": "kind: strategy\nname: t\ndata: {bar: 1m, history: 2d\nuniverse: [SPY]\n"},
         [(3, 7, E, "'{'", "never closed")]),
    Case("wrong-closer-same-line", {"s.yaml": "kind: strategy\nname: t\nuniverse: {file: [SPY, QQQ}\n"},
         [(3, 27, E, "expected ',' or ']'")]),
    Case("unterminated-quote", {"s.yaml": 'kind: strategy\nname: "t\nuniverse: [SPY]\n'},
         [(2, 7, E, "'\"'", "never closed")]),
    Case("duplicate-top-key", {"s.yaml": HEAD + ENTRY + "name: u\n"},
         [(9, 1, E, "duplicate key 'name'", "line 9", "line 2")]),
    Case("duplicate-nested-key", {"s.yaml": HEAD.replace("type: market}", "type: market, action: sell}") + ENTRY},
         [(6, 36, E, "duplicate key 'action'", "line 6")]),
    Case("python-object-tag", {"s.yaml": "kind: strategy\nname: !!python/object:os.system t\n"},
         [(2, 7, E, "'!!python/object:os.system'", "not allowed")]),
    Case("python-apply-tag-nested", {"s.yaml": HEAD + "params: !!python/object/apply:os.system [ls]\n" + ENTRY},
         [(7, 9, E, "!!python/object/apply", "not allowed")]),
    Case("merge-key-of-a-scalar", {"s.yaml": HEAD + "params:\n  <<: 5\n" + ENTRY},
         [(8, 7, E, "merge key (<<) needs a mapping")]),
    Case("non-utf8", {"s.yaml": b"kind: strategy\nname: caf\xe9\n"},
         [(2, 10, E, "not UTF-8")]),
    Case("control-character", {"s.yaml": "kind: risk\nname: a\x07b\n"}, [(2, 8, E, "control character 0x07")]),
    Case("empty-file", {"s.yaml": ""}, [(1, 1, E, "empty")]),
    Case("top-level-list", {"s.yaml": "- kind: strategy\n- name: t\n"}, [(1, 1, E, "expected a mapping", "kind")]),
    Case("no-kind", {"s.yaml": "# a comment\nname: t\nuniverse: [SPY]\n"}, [(1, 1, E, "missing `kind:`")]),
    Case("unknown-kind", {"s.yaml": "kind: stratgy\nname: t\n"},
         [(1, 7, E, "unknown kind 'stratgy'", "did you mean 'strategy'")]),

    # ---- schema: keys, types, ranges, enums ---------------------------------------------------
    Case("misspelt-top-key", {"s.yaml": HEAD.replace("universe:", "univers:") + ENTRY},
         [(3, 1, E, "unknown key 'univers'", "did you mean 'universe'")], more_errors=True),
    Case("misspelt-nested-key", {"s.yaml": HEAD.replace("type: market", "tpye: market") + ENTRY},
         [(6, 22, E, "unknown key 'tpye'", "did you mean 'type'")], more_errors=True),
    Case("misspelt-rule-key", {"s.yaml": HEAD + "entry:\n  - order: buy\n    whn: close > 1\n"},
         [(9, 5, E, "unknown key 'whn'", "did you mean 'when'"), (8, 5, E, "missing required key 'when'")]),
    Case("wrong-type-integer", {"s.yaml": HEAD + "risk: {max_open_positions: lots}\n" + ENTRY},
         [(7, 28, E, "max_open_positions", "expected a whole number", "'lots'")]),
    Case("wrong-type-mapping", {"s.yaml": HEAD.replace("data: {bar: 1m, history: 2d}", "data: [1m, 2d]") + ENTRY},
         [(4, 7, E, "data: expected a mapping", "got array")]),
    Case("out-of-range-integer", {"s.yaml": "kind: risk\nname: r\nmax_open_positions: 0\n"},
         [(3, 21, E, "max_open_positions must be >= 1", "got 0")]),
    Case("out-of-range-fraction", {"s.yaml": "kind: risk\nname: r\nper_trade_risk: 1.5\n"},
         [(3, 17, E, "per_trade_risk must be <= 1", "1.5")]),
    Case("param-outside-its-own-range", {"s.yaml": PARAMS.replace("value: 10", "value: 300")},
         [(8, 17, E, "param 'fast'", "300 is above the maximum 50")]),
    Case("param-range-of-a-word", {"s.yaml": PARAMS.replace("value: 10", "value: ten")},
         [(8, 17, E, "param 'fast': value 'ten' is not a number, but min/max are given", "write a number, e.g. value: 2"),
          (12, 22, E, "'fast' is not available here", "param 'fast' has an error; fix it first")],
         absent=["min/max apply only", "must be a number"]),
    Case("bad-bar-size", {"s.yaml": HEAD.replace("bar: 1m", "bar: 7m") + ENTRY},
         [(4, 13, E, "data.bar", "'7m' is not allowed")]),
    Case("bad-expiry-rule", {"s.yaml": condor(expiry="1dte")},
         [(9, 13, E, "expiry", "'1dte' is not allowed", "did you mean '0dte'")]),
    Case("missing-required-top", {"s.yaml": HEAD.replace("data: {bar: 1m, history: 2d}\n", "") + ENTRY},
         [(1, 1, E, "missing required key 'data'")]),
    Case("missing-required-nested", {"s.yaml": HEAD.replace("action: buy, ", "") + ENTRY},
         [(6, 3, E, "missing required key 'action'", "orders.buy")]),
    Case("unknown-timezone", {"s.yaml": HEAD + "schedule: {timezone: America/New_Yrok}\n" + ENTRY},
         [(7, 22, E, "unknown timezone 'America/New_Yrok'", "did you mean 'America/New_York'")]),
    Case("empty-entry-window", {"s.yaml": HEAD + 'schedule: {timezone: America/New_York, entry_window: ["11:00", "09:30"]}\n'
                                + ENTRY},
         [(7, 54, E, "entry window 11:00-09:30 is empty")]),
    Case("limit-order-without-price", {"s.yaml": HEAD.replace("type: market", "type: limit") + ENTRY},
         [(6, 3, E, "missing required key 'limit'", "orders.buy")]),
    Case("no-entry-rules", {"s.yaml": HEAD},
         [(1, 1, E, "no entry rules"), (6, 3, W, "order 'buy' is never used")]),

    # ---- expressions: syntax --------------------------------------------------------------------
    Case("unclosed-paren", {"s.yaml": rule("ema(close, 8")}, [(9, 14, E, "'(' is never closed")]),
    Case("unmatched-paren", {"s.yaml": rule("close))")}, [(9, 16, E, "unmatched ')'")]),
    Case("unmatched-bracket", {"s.yaml": rule("close] > 1")}, [(9, 16, E, "unmatched ']'")]),
    Case("chained-comparison", {"s.yaml": rule("1 < close < 2")}, [(9, 21, E, "comparisons do not chain")]),
    Case("ampersand", {"s.yaml": rule("close > 1 & open > 1")}, [(9, 21, E, "'&' is not an operator")]),
    Case("single-equals", {"s.yaml": rule("close = 1")}, [(9, 17, E, "'=' is not a comparison")]),
    Case("missing-operator", {"s.yaml": rule("close open")}, [(9, 17, E, "unexpected 'open'", "operator is missing")]),
    Case("ends-too-early", {"s.yaml": rule("close > 1 and")}, [(9, 24, E, "ends too early")]),
    Case("cyrillic-lookalike", {"s.yaml": rule("clos\u0435 > 1")},
         [(9, 15, E, "unexpected character '\u0435' (U+0435 CYRILLIC SMALL LETTER IE)",
           "looks like the ASCII letter 'e': retype it")]),
    Case("number-too-large", {"s.yaml": rule("sma(close, 1e999) > 1")}, [(9, 22, E, "'1e999' is too large")]),
    Case("comma-cuts-flow-value", {"s.yaml": HEAD + "entry:\n  - {when: sma(close, 5) > close, order: buy}\n"},
         [(8, 15, E, "'(' is never closed", "','", "line 8, column 21"),
          (8, 23, E, "unknown key '5) > close'")]),

    # ---- expressions: names, functions, types -------------------------------------------------
    Case("unknown-function", {"s.yaml": rule("ema2(close, 8) > 1")},
         [(9, 11, E, "unknown function 'ema2'", "did you mean 'ema'")]),
    Case("too-few-arguments", {"s.yaml": rule("ema(close) > 1")}, [(9, 11, E, "ema() needs 2 arguments", "length")]),
    Case("too-many-arguments", {"s.yaml": rule("ema(close, 8, 9) > 1")}, [(9, 25, E, "at most 2 arguments", "got 3")]),
    Case("unknown-keyword", {"s.yaml": rule("ema(close, len=8) > 1")},
         [(9, 22, E, "no argument 'len'", "did you mean 'length'")]),
    Case("keyword-to-variadic", {"s.yaml": rule("max(close, 1, x=3) > 1")}, [(9, 25, E, "max()", "named arguments")]),
    Case("and-of-a-number", {"s.yaml": rule("close and 3")}, [(9, 11, E, "`and` needs true/false", "`close`")]),
    Case("not-of-a-number", {"s.yaml": rule("not close")}, [(9, 15, E, "`not` needs a true/false", "`close`")]),
    Case("series-as-length", {"s.yaml": rule("sma(close, close) > 1")},
         [(9, 22, E, "`length` of sma()", "must be a constant", "number series")]),
    Case("zero-length", {"s.yaml": rule("sma(close, 0) > 1")}, [(9, 22, E, "whole number of bars >= 1", "got 0")]),
    Case("fractional-length", {"s.yaml": rule("sma(close, 2.5) > 1")}, [(9, 22, E, "whole number of bars", "2.5")]),
    Case("negative-lag", {"s.yaml": rule("close[-1] > 1")}, [(9, 17, E, "negative lag", "future")]),
    Case("unknown-name", {"s.yaml": rule("clse > 1")}, [(9, 11, E, "unknown name 'clse'", "did you mean 'close'")]),
    Case("unquoted-symbol", {"s.yaml": rule("symbol(VIX).close > 20")}, [(9, 18, E, "quoted string")]),
    Case("position-in-entry", {"s.yaml": rule("position.pnl > 0")},
         [(9, 11, E, "'position' is not available here")]),
    Case("exit-only-function-in-entry", {"s.yaml": rule("at_entry(close) > 1")},
         [(9, 11, E, "at_entry() is only available in exit rules")]),
    Case("when-is-a-number", {"s.yaml": rule("close + 1")}, [(9, 11, E, "must be true or false", "number series")]),
    Case("empty-in-list", {"s.yaml": rule("close in []")}, [(9, 20, E, "empty list")]),
    Case("string-ordering", {"s.yaml": HEAD + "entry:\n  - order: buy\n    when: '\"a\" < \"b\"'\n"},
         [(9, 16, E, "cannot compare a string with a string", "`<`")]),

    # ---- expressions inside multi-line YAML scalars ---------------------------------------------
    Case("folded-block-third-line", {"s.yaml": HEAD + "entry:\n  - order: buy\n    when: >-\n      close > 1\n"
                                     "      and volume > 100\n      and ema2(close, 8) > open\n"},
         [(12, 11, E, "unknown function 'ema2'")]),
    Case("literal-block-third-line-mid", {"s.yaml": HEAD + "entry:\n  - order: buy\n    when: |\n      close > 1\n"
                                          "      and volume > 100\n      and open > 1 and not close\n"},
         [(12, 28, E, "`not` needs a true/false")]),
    Case("folded-block-repeated-token", {"s.yaml": HEAD + "entry:\n  - order: buy\n    when: >-\n      close > 1\n"
                                         "      and close > open\n      and close and 3\n"},
         [(12, 11, E, "`and` needs true/false", "`close`")]),
    Case("double-quoted-third-line", {"s.yaml": HEAD + "entry:\n  - order: buy\n    when: \"close > 1\n"
                                      "      and volume > 100\n      and ema2(close, 8) > open\"\n"},
         [(11, 11, E, "unknown function 'ema2'")]),
    Case("plain-multiline-second-line", {"s.yaml": HEAD + "entry:\n  - order: buy\n    when: close > 1\n"
                                         "      and ema2(close, 8) > open\n"},
         [(10, 11, E, "unknown function 'ema2'")]),
    Case("single-quoted-escapes", {"s.yaml": HEAD + "entry:\n  - order: buy\n"
                                   "    when: 'symbol(''VIX'').close > 1 and clse > 2'\n"},
         [(9, 42, E, "unknown name 'clse'")]),
    Case("folded-unclosed-third-line", {"s.yaml": HEAD + "entry:\n  - order: buy\n    when: >-\n      close > 1\n"
                                        "      and volume > 100\n      and ema(close, 8 > open\n"},
         [(12, 14, E, "'(' is never closed")]),

    # ---- references between parts of a strategy ------------------------------------------------
    Case("leg-in-rule-without-legs", {"s.yaml": condor(when2="sp.strike > close")},
         [(18, 11, E, "'sp' is not available here", "only in scope in rules whose order has it")]),
    Case("unknown-leg-field", {"s.yaml": condor(when1="credit > 0.2 and sp.strik > 1")},
         [(16, 31, E, "leg has no field 'strik'", "did you mean 'strike'")]),
    Case("unknown-order", {"s.yaml": condor(order2="stok")},
         [(17, 12, E, "unknown order 'stok'", "did you mean 'stock'"), (13, 3, W, "order 'stock' is never used")]),
    Case("combo-name-in-stock-rule", {"s.yaml": condor(when2="credit > 1")},
         [(18, 11, E, "'credit' is not available here")]),
    Case("leg-strike-cycle", {"s.yaml": condor(sp_strike="lp.strike + w")},
         [(11, 46, E, "leg 'sp'", "circle of legs"), (12, 45, E, "leg 'lp'", "circle of legs")]),
    Case("leg-refers-to-itself", {"s.yaml": condor(lp_strike="lp.strike - w")},
         [(12, 45, E, "'lp' is not available here", "own strike")]),
    Case("cyclic-indicators", {"s.yaml": HEAD + "indicators:\n  a: b + 1\n  b: a * 2\n"
                               "entry:\n  - order: buy\n    when: close > 1\n"},
         [(8, 6, E, "indicator 'a' depends on itself", "a -> b -> a")], absent=["never used"]),
    Case("unknown-regime-value", {"s.yaml": HEAD + "indicators:\n  d: sma(close, 5)\nclassify:\n  regime:\n"
                                  "    - {name: trend, when: d > close}\n    - {name: chop, when: true}\n"
                                  "entry:\n  - order: buy\n    when: regime == \"trnd\"\n"},
         [(15, 21, E, "'trnd' is not one of the possible values", "did you mean 'trend'")]),
    Case("scanner-weights", {"s.yaml": SCANNER + "normalise_weights: false\n"},
         [(5, 1, E, "factor weights sum to 0.8, not 1")]),
    Case("scanner-weights-scaled", {"s.yaml": SCANNER}, [], absent=["weights sum"]),
    Case("unused-param", {"s.yaml": PARAMS.replace("  slow: 30\n", "  slow: 30\n  spare: 3\n")},
         [(10, 3, W, "param 'spare' is declared but never used")]),
    Case("param-used-in-broken-expression-is-used", {"s.yaml": PARAMS.replace("sma(close, slow)", "sma(close, slow")},
         [(12, 33, E, "'(' is never closed")], absent=["never used"]),

    # ---- references between files ---------------------------------------------------------------
    Case("missing-file", {"s.yaml": HEAD.replace("[SPY]", "megacap.yaml") + ENTRY,
                          "megacaps.yaml": "kind: universe\nname: m\nsymbols: [SPY]\n"},
         [(3, 11, E, "file not found: megacap.yaml")]),
    Case("reference-cycle", {"s.yaml": HEAD + "risk: a.yaml\n" + ENTRY,
                             "a.yaml": "kind: risk\nname: a\nextends: b.yaml\n",
                             "b.yaml": "kind: risk\nname: b\nextends: a.yaml\n"},
         [("b.yaml", 3, 10, E, "reference cycle", "a.yaml -> b.yaml -> a.yaml")]),
    Case("reference-of-wrong-kind", {"s.yaml": HEAD.replace("[SPY]", "r.yaml") + ENTRY,
                                     "r.yaml": "kind: risk\nname: r\n"},
         [(3, 11, E, "r.yaml is a risk document, expected a universe")]),
    Case("reference-to-broken-file", {"s.yaml": HEAD + "risk: bad.yaml\n" + ENTRY,
                                      "bad.yaml": "kind: risk\nname: [r\n"},
         [(7, 7, E, "bad.yaml cannot be used"), ("bad.yaml", 2, 7, E, "'['", "never closed")]),
    Case("unknown-universe-group", {"s.yaml": HEAD.replace("[SPY]", "{file: u.yaml, groups: [tech, enrgy]}") + ENTRY,
                                    "u.yaml": "kind: universe\nname: u\ngroups:\n  tech: [AAPL]\n  energy: [XOM]\n"},
         [(3, 41, E, "no group 'enrgy'", "did you mean 'energy'")]),
    Case("underlying-not-in-instruments", {"s.yaml": HEAD.replace("universe:", "underlying: XSPP\nuniverse:") + ENTRY},
         [(3, 13, E, "'XSPP' is not in the instruments map", "did you mean 'XSP'"),
          (3, 1, E, "underlying: options on XSPP while the rules trade SPY is not supported")]),
    Case("future-without-months-multiplier",
         {"i.yaml": "kind: instruments\nname: i\nroots:\n  CL: {sec_type: FUT, exchange: NYMEX, currency: USD, "
                    "trading_class: CL}\n"},
         [(4, 3, E, "missing required key 'months'"), (4, 3, E, "missing required key 'multiplier'")]),

    # ---- environment variables ----------------------------------------------------------------
    Case("unset-env-var", {"s.yaml": HEAD + "description: hello ${NOPE} world\n" + ENTRY},
         [(7, 20, E, "environment variable 'NOPE' is not set")]),
    Case("unset-env-var-in-quotes", {"s.yaml": HEAD + 'description: "a \\t ${NOPE}"\n' + ENTRY},
         [(7, 20, E, "'NOPE' is not set")]),
    Case("env-default-is-fine", {"s.yaml": HEAD + "description: hello ${NOPE:-there}\nname: again\n" + ENTRY},
         [(8, 1, E, "duplicate key 'name'")]),
    Case("malformed-env-ref", {"s.yaml": HEAD + "description: hello ${1X} world\n" + ENTRY},
         [(7, 20, E, "malformed environment reference '${1X}'")]),
    Case("unclosed-env-ref", {"s.yaml": HEAD + "description: hi ${NOPE world\n" + ENTRY},
         [(7, 17, E, "malformed environment reference")]),

    # ---- --set overrides ---------------------------------------------------------------------
    Case("set-wrong-type", {"s.yaml": PARAMS}, [(8, 3, E, "--set fast=abc", "expected a number", "string")],
         overrides={"fast": "abc"}),
    Case("set-out-of-range", {"s.yaml": PARAMS}, [(8, 3, E, "--set fast=100", "above the maximum 50")],
         overrides={"fast": "100"}),
    Case("set-unknown-param", {"s.yaml": PARAMS}, [("--set", 0, 0, E, "'fsat'", "did you mean 'fast'")],
         overrides={"fsat": "10"}),
    Case("set-fractional-length", {"s.yaml": PARAMS}, [(12, 41, E, "`length` of sma()", "2.5")],
         overrides={"slow": "2.5"}),
]


def _write(tmp_path: Path, case: Case) -> Path:
    for name, content in case.files.items():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
    return tmp_path / next(iter(case.files))


def _split(expected: tuple, main: str) -> tuple[str, int, int, Severity, tuple[str, ...]]:
    if isinstance(expected[0], str):
        return expected[0], expected[1], expected[2], expected[3], expected[4:]
    return main, expected[0], expected[1], expected[2], expected[3:]


def test_corpus_is_big_enough():
    assert len(CASES) >= 50
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_broken_document(tmp_path, monkeypatch, case: Case):
    monkeypatch.chdir(tmp_path)
    main = _write(tmp_path, case)
    report = validate([str(main)], case.overrides, env=case.env)
    got = [(Path(d.path).name if d.path != "--set" else d.path, d.line, d.col, d.severity, f"{d.message}\n{d.hint}")
           for d in report.diagnostics]
    shown = "\n".join(d.format() for d in report.diagnostics)
    matched = set()
    for expected in case.expect:
        file, line, col, severity, words = _split(expected, main.name)
        hits = [i for i, g in enumerate(got) if g[:4] == (file, line, col, severity)
                and all(w in g[4] for w in words)]
        assert hits, f"expected {file}:{line}:{col}: {severity.value}: {' ... '.join(words)}\ngot:\n{shown}"
        matched.update(hits)
    if not case.more_errors:
        extra = [got[i] for i in range(len(got)) if i not in matched and got[i][3] is E]
        assert not extra, f"unexpected errors:\n{shown}"
    for words in case.absent:
        assert not any(words in g[4] for g in got), f"no diagnostic should say {words!r}:\n{shown}"
    if any(_split(e, main.name)[3] is E for e in case.expect):
        assert report.errors
