"""Indicator kernels for qtrade: vectorised arrays-in/arrays-out functions, a
streaming bar-by-bar form of each, and the KERNELS table that the DSL compiles to.

Conventions
-----------
* Inputs are 1-D float64 arrays of equal length; outputs have the same length,
  float64 (boolean for crosses_above/crosses_below), NaN during warm-up.
* Warm-up: `KERNELS[name].warmup_for(*params)` is the exact number of leading NaN
  bars on a gap-free series (boolean kernels: leading bars that are always False).
* Sources: where TA-Lib has the indicator it is the definition (`source` is
  "ta-lib:NAME"), including its seeding (EMA/RSI/ATR/ADX/MACD seeds are spelled out
  in each docstring); the rest are whole-array numpy ("numpy").

NaN / gap rule
--------------
A bar where any input is NaN is *missing*: its output is NaN (False for boolean
kernels), and every other bar's output is computed as if the missing bars did not
exist: the valid bars are compressed, the kernel runs on them, and the results are
scattered back. Leading NaNs are just missing bars under the same rule, so the
warm-up counts valid bars. Multi-input kernels (atr, adx, mfi, vwap, stoch_k, cci,
obv, sar, keltner_*, crosses...) treat a bar as missing when any of its inputs is
NaN (keltner_middle too, though it reads only the close). TA-Lib therefore never sees a
NaN. The streaming form follows the same rule: `update()` with a NaN input returns
NaN and leaves the state untouched. (Infinities are not treated as missing.)

Data-dependent NaNs (not gaps): zscore where the stdev is 0, iv_rank where the
window is flat, hurst where a lag's differences are all equal, bb_width where the
middle band is 0, vwap while the session's cumulative volume is 0. TA-Lib's own
convention is 0 instead: rsi, mfi, stoch_k/stoch_d, willr and cci on a flat window.
"""

from .elementwise import ELEMENTWISE
from .registry import KERNELS, REQUIRED, Kernel

__all__ = ["KERNELS", "ELEMENTWISE", "Kernel", "REQUIRED"]
