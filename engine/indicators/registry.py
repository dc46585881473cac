"""The KERNELS table: one entry per indicator name the DSL can call.

Each entry ties together the vectorised function, the streaming factory, the exact
warm-up rule (number of leading NaN bars on a gap-free series, as a function of the
parameters), where the numbers come from, and the formula (the function docstring).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from . import numpy_kernels as nk
from . import params as P
from . import streaming as st
from . import talib_backed as tb


@dataclass(frozen=True)
class Kernel:
    """One indicator: `func(*inputs, *params)` over arrays, `stream(*params)` for bars."""

    name: str
    func: Callable
    stream: Callable
    warmup: Callable[..., int]
    source: str
    inputs: tuple[str, ...]
    params: tuple[tuple[str, object], ...]  # (name, default or REQUIRED)
    boolean: bool = False
    doc: str = field(default="")

    def warmup_for(self, *args, **kwargs) -> int:
        """Warm-up for the given parameters, filling defaults like `func` does."""
        vals = dict(self.params)
        names = [p for p, _ in self.params]
        vals.update(zip(names, args))
        vals.update(kwargs)
        missing = [p for p in names if vals[p] is REQUIRED]
        if missing:
            raise TypeError(f"{self.name}: missing parameter(s) {missing}")
        return self.warmup(*(vals[p] for p in names))


REQUIRED = object()


def _len_minus_1(length, *_):
    return P.window(length) - 1


def _len(length, *_):
    return P.window(length)


def _macd_line(fast, slow, signal):
    f, s, g = P.macd_periods(fast, slow, signal)
    return s - 1


def _macd_sig(fast, slow, signal):
    f, s, g = P.macd_periods(fast, slow, signal)
    return s + g - 2


def _stoch_k(length, smooth_k):
    return P.window(length) + P.window(smooth_k) - 2


def _stoch_d(length, smooth_k, smooth_d):
    return P.window(length) + P.window(smooth_k) + P.window(smooth_d) - 3


def _keltner_band(length, mult, atr_length):
    return max(P.window(length) - 1, P.window(atr_length))


def _keltner_mid(length, mult, atr_length):
    return P.window(length) - 1


X = ("x",)
HLC = ("high", "low", "close")
LEN = (("length", REQUIRED),)
BB = (("length", 20), ("mult", 2.0))
MACD = (("fast", 12), ("slow", 26), ("signal", 9))
STOCH = (("length", 14), ("smooth_k", 3), ("smooth_d", 3))
KC = (("length", 20), ("mult", 2.0), ("atr_length", 10))

_ROWS = [
    # name, func, stream, warmup, source, inputs, params
    ("sma", tb.sma, st.SMA, _len_minus_1, "ta-lib:SMA", X, LEN),
    ("ema", tb.ema, st.EMA, _len_minus_1, "ta-lib:EMA", X, LEN),
    ("wma", tb.wma, st.WMA, _len_minus_1, "ta-lib:WMA", X, LEN),
    ("rma", tb.rma, st.RMA, _len_minus_1, "ta-lib:RMA", X, LEN),
    ("stdev", tb.stdev, st.Stdev, _len_minus_1, "ta-lib:STDDEV", X, LEN),
    ("highest", tb.highest, st.Highest, _len_minus_1, "ta-lib:MAX", X, LEN),
    ("lowest", tb.lowest, st.Lowest, _len_minus_1, "ta-lib:MIN", X, LEN),
    ("change", nk.change, st.Change, _len, "numpy", X, (("length", 1),)),
    ("roc", tb.roc, st.ROC, _len, "ta-lib:ROC", X, (("length", 1),)),
    ("rsi", tb.rsi, st.RSI, _len, "ta-lib:RSI", X, (("length", 14),)),
    ("atr", tb.atr, st.ATR, _len, "ta-lib:ATR", HLC, (("length", 14),)),
    ("tr", tb.tr, st.TR, lambda: 1, "ta-lib:TRANGE", HLC, ()),
    ("adx", tb.adx, st.ADX, lambda length: 2 * P.window(length) - 1, "ta-lib:ADX", HLC,
     (("length", 14),)),
    ("mfi", tb.mfi, st.MFI, _len, "ta-lib:MFI", HLC + ("volume",), (("length", 14),)),
    ("vwap", nk.vwap, st.VWAP, lambda: 0, "numpy", HLC + ("volume", "session"), ()),
    ("bb_upper", tb.bb_upper, st.bb_stream("upper"), _len_minus_1, "ta-lib:BBANDS", X, BB),
    ("bb_lower", tb.bb_lower, st.bb_stream("lower"), _len_minus_1, "ta-lib:BBANDS", X, BB),
    ("bb_width", tb.bb_width, st.bb_stream("width"), _len_minus_1, "ta-lib:BBANDS", X, BB),
    ("macd", tb.macd, st.macd_stream("macd"), _macd_line, "ta-lib:MACD", X, MACD),
    ("macd_signal", tb.macd_signal, st.macd_stream("signal"), _macd_sig, "ta-lib:MACD", X, MACD),
    ("macd_hist", tb.macd_hist, st.macd_stream("hist"), _macd_sig, "ta-lib:MACD", X, MACD),
    ("zscore", nk.zscore, st.ZScore, _len_minus_1, "ta-lib:SMA+STDDEV", X, LEN),
    ("percentrank", nk.percentrank, st.PercentRank, _len, "numpy", X, LEN),
    ("hurst", nk.hurst, st.Hurst, _len_minus_1, "numpy", X, (("length", 100),)),
    ("iv_rank", nk.iv_rank, st.IVRank, _len_minus_1, "ta-lib:MAX+MIN", X, (("length", 252),)),
    ("stoch_k", tb.stoch_k, st.stoch_k_stream, _stoch_k, "ta-lib:STOCH", HLC, STOCH[:2]),
    ("stoch_d", tb.stoch_d, st.stoch_d_stream, _stoch_d, "ta-lib:STOCH", HLC, STOCH),
    ("willr", tb.willr, st.WillR, _len_minus_1, "ta-lib:WILLR", HLC, (("length", 14),)),
    ("cci", tb.cci, st.CCI, _len_minus_1, "ta-lib:CCI", HLC, (("length", 20),)),
    ("obv", tb.obv, st.OBV, lambda: 0, "ta-lib:OBV", ("close", "volume"), ()),
    ("sar", tb.sar, st.SAR, lambda accel, maximum: 1, "ta-lib:SAR", ("high", "low"),
     (("accel", 0.02), ("maximum", 0.2))),
    ("keltner_upper", tb.keltner_upper, st.keltner_stream("upper"), _keltner_band, "ta-lib:EMA+ATR", HLC, KC),
    ("keltner_middle", tb.keltner_middle, st.keltner_stream("middle"), _keltner_mid, "ta-lib:EMA", HLC, KC),
    ("keltner_lower", tb.keltner_lower, st.keltner_stream("lower"), _keltner_band, "ta-lib:EMA+ATR", HLC, KC),
    ("crosses_above", nk.crosses_above, st.crosses_above_stream, lambda: 1, "numpy",
     ("a", "b"), ()),
    ("crosses_below", nk.crosses_below, st.crosses_below_stream, lambda: 1, "numpy",
     ("a", "b"), ()),
]

KERNELS: dict[str, Kernel] = {
    name: Kernel(name=name, func=func, stream=stream, warmup=warm, source=src,
                 inputs=inputs, params=prm, boolean=name.startswith("crosses_"),
                 doc=(func.__doc__ or "").strip())
    for name, func, stream, warm, src, inputs, prm in _ROWS
}
