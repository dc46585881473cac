"""Every kernel vs an independent plain-Python loop (reference_loops.py) on real bars,
to 1e-9 relative (plus a 1e-10 absolute floor for values that cross zero)."""

from __future__ import annotations

import numpy as np
import pytest

import reference_loops as ref
from engine.indicators import KERNELS

# name -> (positional params, slice length); small slices keep the loops fast
CASES = {
    "sma": ((20,), 800), "ema": ((20,), 800), "wma": ((9,), 800), "rma": ((14,), 800),
    "stdev": ((20,), 800), "highest": ((20,), 800), "lowest": ((20,), 800),
    "change": ((3,), 800), "roc": ((12,), 800), "rsi": ((14,), 800),
    "atr": ((14,), 800), "tr": ((), 800), "adx": ((14,), 800), "mfi": ((14,), 800),
    "vwap": ((), 800), "bb_upper": ((20, 2.0), 800), "bb_lower": ((20, 2.5), 800),
    "bb_width": ((20, 2.0), 800), "macd": ((12, 26, 9), 800),
    "macd_signal": ((12, 26, 9), 800), "macd_hist": ((5, 35, 5), 800),
    "zscore": ((20,), 800), "percentrank": ((50,), 800), "hurst": ((60,), 300),
    "iv_rank": ((100,), 800), "crosses_above": ((), 800), "crosses_below": ((), 800),
    "stoch_k": ((14, 3), 800), "stoch_d": ((10, 1, 4), 800), "willr": ((14,), 800),
    "cci": ((20,), 800), "obv": ((), 800), "sar": ((0.02, 0.2), 800),
    "keltner_upper": ((20, 2.0, 10), 800), "keltner_middle": ((20, 2.0, 10), 800),
    "keltner_lower": ((15, 1.5, 20), 800),
}


def inputs_for(kernel, bars, start, size):
    sl = slice(start, start + size)
    c = bars["close"][sl]
    pool = dict(x=c, high=bars["high"][sl], low=bars["low"][sl], close=c,
                volume=bars["volume"][sl], session=bars["session"][sl],
                a=c, b=KERNELS["sma"].func(bars["close"], 10)[sl])
    return [pool[i] for i in kernel.inputs]


@pytest.mark.parametrize("dataset", ["spy", "orcl", "nq"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference_loop(name, dataset, request):
    bars = request.getfixturevalue(dataset)
    params, size = CASES[name]
    k = KERNELS[name]
    args = inputs_for(k, bars, 300, size)
    got = k.func(*args, *params)
    want = getattr(ref, name)(*[a.tolist() for a in args], *params)
    if k.boolean:
        assert got.tolist() == want
        return
    want = np.asarray(want, dtype=float)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10, equal_nan=True)


def test_all_kernels_have_a_reference():
    assert set(CASES) == set(KERNELS)
