"""Every function of the expression language: signature, argument kinds, defaults, result type,
warm-up rule and a one-line doc. The type checker reads signatures from here; the compiler reads
warm-up rules; `qtrade functions` (and the README) print the docs. Kernels live in
engine.indicators and are looked up by the same names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

# Argument kinds. A SERIES argument accepts a number series or a scalar (broadcast); a LENGTH
# is a whole number >= 1 known before the run (a literal or a param), so warm-up is known.
SERIES = "series"          # number series (a scalar is broadcast)
BOOL_SERIES = "bool"       # boolean series or scalar
NUMBER = "number"          # number, series or scalar: the result follows the arguments
LENGTH = "length"          # constant whole number >= 1 (bars)
CONSTANT = "constant"      # constant number (e.g. a band multiplier)
ANY = "any"                # any value type (if(): the branches)
STRING = "string"          # a string literal
LEG = "leg"                # the name of an option leg of the rule's order

# Result rules.
R_SERIES = "number series"
R_BOOL_SERIES = "boolean series"
R_FOLLOW = "follows arguments"     # number; series if any argument is a series
R_BOOL_FOLLOW = "boolean (a series if its argument is)"
R_IF = "type of the branches"
R_SYMBOL = "symbol bars"
R_SCALAR = "number"


@dataclass(frozen=True)
class Param:
    name: str
    kind: str
    default: float | None = None
    required: bool = True
    minimum: float | None = None      # LENGTH / CONSTANT: the smallest value the kernel takes
    positive: bool = False            # CONSTANT: must be above 0

    def show(self) -> str:
        if not self.required:
            value = self.default
            shown = int(value) if isinstance(value, float) and value.is_integer() else value
            return f"{self.name}={shown}"
        return self.name


Warmup = Callable[[Mapping[str, float]], int]


@dataclass(frozen=True)
class Function:
    """One function: its parameters, what it returns, its warm-up and what it means."""

    name: str
    params: tuple[Param, ...]
    returns: str
    doc: str
    warmup: Warmup = field(default=lambda a: 0, compare=False)
    inputs: tuple[str, ...] = ()      # implicit bar fields read (atr reads high, low, close)
    variadic: bool = False            # min/max take two or more arguments
    contexts: frozenset[str] = frozenset()  # where it is allowed when not everywhere
    source: str = "numpy"
    # constant arguments that only make sense together (sar: accel <= max): given the values of
    # the LENGTH and CONSTANT arguments by name, a message saying what is wrong, or None
    relation: Callable[[Mapping[str, float]], str | None] | None = field(default=None, compare=False)

    @property
    def signature(self) -> str:
        inner = ", ".join(p.show() for p in self.params)
        if self.variadic:
            inner += ", ..."
        return f"{self.name}({inner})"

    @property
    def min_args(self) -> int:
        return sum(1 for p in self.params if p.required)


def _p(name: str, kind: str, default: float | None = None, minimum: float | None = None,
       positive: bool = False) -> Param:
    return Param(name, kind, default, default is None, minimum, positive)


def _len(default: float | None = None, minimum: int = 1, name: str = "length") -> Param:
    """A LENGTH parameter; `minimum` is the smallest window its kernel accepts."""
    return _p(name, LENGTH, default, minimum)


def _n(name: str) -> Warmup:
    return lambda a: int(a[name]) - 1


FUNCTIONS: dict[str, Function] = {}
ALIASES: dict[str, str] = {"crossover": "crosses_above", "crossunder": "crosses_below"}


def _def(fn: Function) -> None:
    FUNCTIONS[fn.name] = fn


X, LEN = _p("x", SERIES), _len(minimum=2)

# ---- moving averages and dispersion -------------------------------------------------------
_def(Function("sma", (X, LEN), R_SERIES, "Simple moving average: mean of the last `length` values.",
              _n("length"), source="ta-lib:SMA"))
_def(Function("ema", (X, LEN), R_SERIES,
              "Exponential moving average, alpha = 2/(length+1), seeded with the SMA of the first `length` values.",
              _n("length"), source="ta-lib:EMA"))
_def(Function("wma", (X, LEN), R_SERIES, "Linearly weighted moving average: weights 1..length, newest heaviest.",
              _n("length"), source="ta-lib:WMA"))
_def(Function("rma", (X, LEN), R_SERIES,
              "Wilder's moving average (alpha = 1/length), as used inside RSI and ATR.", _n("length")))
_def(Function("stdev", (X, LEN), R_SERIES, "Population standard deviation of the last `length` values.",
              _n("length"), source="ta-lib:STDDEV"))
_def(Function("highest", (X, LEN), R_SERIES, "Highest value of the last `length` bars, this bar included.",
              _n("length"), source="ta-lib:MAX"))
_def(Function("lowest", (X, LEN), R_SERIES, "Lowest value of the last `length` bars, this bar included.",
              _n("length"), source="ta-lib:MIN"))
_def(Function("change", (X, _len(1.0)), R_SERIES, "x - x[length]: the change over `length` bars.",
              lambda a: int(a["length"])))
_def(Function("roc", (X, _len(1.0)), R_SERIES,
              "Rate of change in percent: 100 * (x / x[length] - 1).", lambda a: int(a["length"]),
              source="ta-lib:ROC"))
_def(Function("zscore", (X, LEN), R_SERIES,
              "(x - sma(x, length)) / stdev(x, length): distance from the mean in standard deviations.",
              _n("length")))
_def(Function("percentrank", (X, _len()), R_SERIES,
              "Fraction (0-1) of the previous `length` values that are <= the current value.",
              lambda a: int(a["length"])))
_def(Function("hurst", (X, _len(100.0, 22)), R_SERIES,
              "Rolling Hurst exponent of the last `length` bars (>0.5 trends, <0.5 mean-reverts).",
              _n("length")))

# ---- oscillators and volatility ----------------------------------------------------------
_def(Function("rsi", (X, _len(14.0, 2)), R_SERIES, "Wilder's Relative Strength Index, 0-100.",
              lambda a: int(a["length"]), source="ta-lib:RSI"))
_def(Function("tr", (), R_SERIES, "True range: max(high, close[1]) - min(low, close[1]).",
              lambda a: 1, inputs=("high", "low", "close"), source="ta-lib:TRANGE"))
_def(Function("atr", (_len(14.0),), R_SERIES, "Average true range, Wilder-smoothed.",
              lambda a: int(a["length"]), inputs=("high", "low", "close"), source="ta-lib:ATR"))
_def(Function("adx", (_len(14.0, 2),), R_SERIES, "Average directional index (trend strength, 0-100).",
              lambda a: 2 * int(a["length"]) - 1, inputs=("high", "low", "close"), source="ta-lib:ADX"))
_def(Function("mfi", (_len(14.0, 2),), R_SERIES, "Money Flow Index, 0-100 (volume-weighted RSI).",
              lambda a: int(a["length"]), inputs=("high", "low", "close", "volume"), source="ta-lib:MFI"))
_def(Function("vwap", (), R_SERIES,
              "Volume-weighted average of the typical price (h+l+c)/3, anchored at each session's open.",
              lambda a: 0, inputs=("high", "low", "close", "volume")))
_BB = (X, _len(20.0, 2), _p("mult", CONSTANT, 2.0))
_def(Function("bb_upper", _BB, R_SERIES, "Upper Bollinger band: sma + mult * population stdev.",
              _n("length"), source="ta-lib:BBANDS"))
_def(Function("bb_lower", _BB, R_SERIES, "Lower Bollinger band: sma - mult * population stdev.",
              _n("length"), source="ta-lib:BBANDS"))
_def(Function("bb_width", _BB, R_SERIES, "Bollinger band width: (upper - lower) / middle.", _n("length")))
_MACD = (X, _len(12.0, 2, "fast"), _len(26.0, 2, "slow"), _len(9.0, 1, "signal"))
_def(Function("macd", _MACD, R_SERIES, "MACD line: ema(x, fast) - ema(x, slow), both started at bar slow-1.",
              lambda a: int(max(a["fast"], a["slow"])) - 1, source="ta-lib:MACD"))
_def(Function("macd_signal", _MACD, R_SERIES, "MACD signal line: ema(macd, signal).",
              lambda a: int(max(a["fast"], a["slow"])) + int(a["signal"]) - 2, source="ta-lib:MACD"))
_def(Function("macd_hist", _MACD, R_SERIES, "MACD histogram: macd - macd_signal.",
              lambda a: int(max(a["fast"], a["slow"])) + int(a["signal"]) - 2, source="ta-lib:MACD"))

_HLC = ("high", "low", "close")
_SK = _len(3.0, 1, "smooth_k")
_def(Function("stoch_k", (_len(14.0), _SK), R_SERIES,
              "Stochastic %K, 0-100: sma(100 * (close - lowest(low, length)) / (highest(high, length) - "
              "lowest(low, length)), smooth_k); 0 on a flat window; smooth_k=1 is the fast %K.",
              lambda a: int(a["length"]) + int(a["smooth_k"]) - 2, inputs=_HLC, source="ta-lib:STOCH"))
_def(Function("stoch_d", (_len(14.0), _SK, _len(3.0, 1, "smooth_d")), R_SERIES,
              "Stochastic %D: sma(stoch_k(length, smooth_k), smooth_d), the signal line of %K.",
              lambda a: int(a["length"]) + int(a["smooth_k"]) + int(a["smooth_d"]) - 3, inputs=_HLC,
              source="ta-lib:STOCH"))
_def(Function("willr", (_len(14.0, 2),), R_SERIES,
              "Williams %R, -100-0: -100 * (highest(high, length) - close) / (highest(high, length) - "
              "lowest(low, length)); 0 on a flat window.", _n("length"), inputs=_HLC, source="ta-lib:WILLR"))
_def(Function("cci", (_len(20.0, 2),), R_SERIES,
              "Commodity Channel Index: (tp - sma(tp, length)) / (0.015 * mean absolute deviation of tp), "
              "tp = (high + low + close) / 3.", _n("length"), inputs=_HLC, source="ta-lib:CCI"))
_def(Function("obv", (), R_SERIES,
              "On-balance volume: the first bar's volume, then plus the volume on an up close, minus it on a "
              "down close.", lambda a: 0, inputs=("close", "volume"), source="ta-lib:OBV"))


def _sar_factors(a: Mapping[str, float]) -> str | None:
    if a["accel"] > a["max"]:
        return f"accel {a['accel']:g} is above max {a['max']:g}: the factor starts at accel and grows to max"
    return None


_def(Function("sar", (_p("accel", CONSTANT, 0.02, positive=True), _p("max", CONSTANT, 0.2, positive=True)),
              R_SERIES, "Parabolic SAR (Wilder): the trailing stop-and-reverse level; its factor starts at accel, "
              "grows by accel at each new extreme up to max.", lambda a: 1, inputs=("high", "low"),
              source="ta-lib:SAR", relation=_sar_factors))
_KC = (_len(20.0, 2), _p("mult", CONSTANT, 2.0), _len(10.0, 1, "atr_length"))
_def(Function("keltner_upper", _KC, R_SERIES, "Upper Keltner channel: ema(close, length) + mult * atr(atr_length).",
              lambda a: max(int(a["length"]) - 1, int(a["atr_length"])), inputs=_HLC, source="ta-lib:EMA+ATR"))
_def(Function("keltner_middle", _KC, R_SERIES, "Middle Keltner line: ema(close, length).",
              _n("length"), inputs=_HLC, source="ta-lib:EMA"))
_def(Function("keltner_lower", _KC, R_SERIES, "Lower Keltner channel: ema(close, length) - mult * atr(atr_length).",
              lambda a: max(int(a["length"]) - 1, int(a["atr_length"])), inputs=_HLC, source="ta-lib:EMA+ATR"))

# ---- events ----------------------------------------------------------------------------
_AB = (_p("a", SERIES), _p("b", SERIES))
_def(Function("crosses_above", _AB, R_BOOL_SERIES,
              "True on the bar where a moves above b (a > b now, a <= b on the previous bar). Alias: crossover.",
              lambda a: 1))
_def(Function("crosses_below", _AB, R_BOOL_SERIES,
              "True on the bar where a moves below b (a < b now, a >= b on the previous bar). Alias: crossunder.",
              lambda a: 1))

# ---- arithmetic --------------------------------------------------------------------------
_V = _p("x", NUMBER)
_def(Function("abs", (_V,), R_FOLLOW, "Absolute value."))
_def(Function("sign", (_V,), R_FOLLOW, "-1, 0 or 1 by the sign of x."))
_def(Function("log", (_V,), R_FOLLOW, "Natural logarithm (NaN for x <= 0)."))
_def(Function("sqrt", (_V,), R_FOLLOW, "Square root (NaN for x < 0)."))
_def(Function("round", (_V, _p("digits", CONSTANT, 0.0)), R_FOLLOW, "x rounded to `digits` decimals."))
_def(Function("min", (_p("a", NUMBER), _p("b", NUMBER)), R_FOLLOW, "Smallest of its arguments, bar by bar.",
              variadic=True))
_def(Function("max", (_p("a", NUMBER), _p("b", NUMBER)), R_FOLLOW, "Largest of its arguments, bar by bar.",
              variadic=True))
_def(Function("clamp", (_V, _p("low", NUMBER), _p("high", NUMBER)), R_FOLLOW, "x limited to [low, high]."))
_def(Function("nz", (_V, _p("default", NUMBER, 0.0)), R_FOLLOW,
              "x, or `default` where x is not a number yet (warm-up, gaps)."))
_def(Function("na", (_V,), R_BOOL_FOLLOW,
              "true where x has no value: during its warm-up, at a bar it skips (a gap), where it is undefined "
              "(a division by 0, another symbol with no bar yet)."))
_def(Function("defined", (_V,), R_BOOL_FOLLOW,
              "not na(x): true where x has a value, e.g. defined(sma(close, 200)) and close > sma(close, 200)."))
_def(Function("if", (_p("condition", BOOL_SERIES), _p("then", ANY), _p("else", ANY)), R_IF,
              "`then` where condition holds, else `else`, bar by bar."))

# ---- data, positions and options -------------------------------------------------------
_def(Function("symbol", (_p("ticker", STRING),), R_SYMBOL,
              "Another symbol's bars, aligned by timestamp without look-ahead: symbol(\"VIX\").close."))
_def(Function("at_entry", (_p("x", SERIES),), R_SERIES,
              "The value x had on the bar the open position was entered, the bar its entry filled in "
              "(with fills at the next open, the bar after the one the entry rule fired on: that bar's "
              "high[2] is at_entry(high[3])). Exit rules only.",
              contexts=frozenset({"exit"})))
_def(Function("delta", (_p("leg", LEG),), R_SCALAR, "The leg's option delta (signed: puts are negative).",
              contexts=frozenset({"options"})))
_def(Function("iv", (_p("leg", LEG),), R_SCALAR, "The leg's implied volatility, as a fraction.",
              contexts=frozenset({"options"})))
_def(Function("iv_rank", (X, _len(252.0, 2)), R_SERIES,
              "Where x sits in its `length`-bar range, 0-1: (x - lowest) / (highest - lowest).", _n("length")))


def lookup(name: str) -> Function | None:
    """The function called `name` (aliases included), or None."""
    return FUNCTIONS.get(ALIASES.get(name, name))


def all_names() -> list[str]:
    return sorted(set(FUNCTIONS) | set(ALIASES))
