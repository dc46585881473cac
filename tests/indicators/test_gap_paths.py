"""The gap rule's fast paths give exactly the general rule's result.

* run_gapped's leading-NaN path (an indicator of an indicator): every kernel, NaN
  prefixes of different lengths on different inputs, compared bit for bit with the
  kernel run on the valid tail (which is what compress/scatter computes).
* atr/tr fold the NaN check into TA-Lib's output: a NaN (or an infinity) at every
  position of every input of small arrays, compared with the general rule.
"""

from __future__ import annotations

import numpy as np
import pytest
import talib

from engine.indicators import KERNELS
from engine.indicators.gaps import run_gapped
from indicator_data import load_ohlcv

PARAMS = {"change": (3,), "roc": (3,), "percentrank": (20,), "hurst": (30,), "atr": (14,),
          "adx": (14,), "mfi": (14,), "rsi": (14,), "bb_upper": (20, 2.0),
          "bb_lower": (20, 2.0), "bb_width": (20, 2.0), "macd": (12, 26, 9),
          "macd_signal": (12, 26, 9), "macd_hist": (12, 26, 9), "iv_rank": (50,),
          "tr": (), "vwap": (), "crosses_above": (), "crosses_below": (), "stoch_k": (14, 3),
          "stoch_d": (14, 3, 3), "willr": (14,), "cci": (20,), "obv": (), "sar": (0.02, 0.2),
          "keltner_upper": (20, 2.0, 10), "keltner_middle": (20, 2.0, 10),
          "keltner_lower": (10, 1.5, 25)}


def pool(size=1500, start=200):
    b = load_ohlcv("nq")
    sl = slice(start, start + size)
    c = b["close"][sl]
    return dict(x=c, high=b["high"][sl], low=b["low"][sl], close=c, volume=b["volume"][sl],
                session=b["session"][sl], a=c, b=KERNELS["ema"].func(b["close"], 8)[sl])


def identical(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    if got.dtype == np.bool_:
        assert np.array_equal(got, want)
    else:
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        ok = ~np.isnan(want)
        assert (got[ok] == want[ok]).all()


def general(k, arrays, params):
    """The gap rule written out: compress the valid bars, run, scatter."""
    bad = np.zeros(len(arrays[0]), dtype=bool)
    for a in arrays:
        bad |= np.isnan(a)
    boolean = k.boolean
    out = np.zeros(len(bad), dtype=bool) if boolean else np.full(len(bad), np.nan)
    if (~bad).any():
        out[~bad] = k.func(*[np.ascontiguousarray(a[~bad]) for a in arrays], *params)
    return out


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("prefixes", [(1,), (7,), (33,), (7, 40), (40, 7), (250,), (1499,),
                                      (1500,), (0, 5)])
def test_leading_nan_path_matches_general(name, prefixes):
    k = KERNELS[name]
    params = PARAMS.get(name, (20,))
    p = pool()
    arrays = [p[i].copy() for i in k.inputs]
    for j, a in enumerate(arrays):
        a[:prefixes[j % len(prefixes)]] = np.nan
    identical(k.func(*arrays, *params), general(k, arrays, params))


def test_leading_nan_path_is_taken(monkeypatch):
    """The fast path really runs (no compress): the general branch would call `raw`
    on a compressed copy, the lead path on the full-length inputs."""
    x = np.arange(100.0)
    x[:10] = np.nan
    seen = []

    def raw(a):
        seen.append(len(a))
        return a * 2

    out = run_gapped(raw, [x])
    assert seen == [90] and np.isnan(out[:10]).all() and (out[10:] == x[10:] * 2).all()
    out = run_gapped(raw, [x], lead=lambda k, a: np.full(len(a), float(k)))
    assert seen == [90] and (out == 10).all()


def hlc(n, seed):
    r = np.random.default_rng(seed)
    c = 100 + np.cumsum(r.normal(0, 1, n))
    s = np.abs(r.normal(0, 0.7, n))
    # closes outside [low, high] now and then, so every TR branch is taken
    return [c + s, c - s, c + r.normal(0, 0.8, n)]


def hlc_reference(name, arrays, length):
    bad = np.isnan(arrays[0]) | np.isnan(arrays[1]) | np.isnan(arrays[2])
    out = np.full(len(bad), np.nan)
    comp = [np.ascontiguousarray(a[~bad]) for a in arrays]
    if len(comp[0]):
        out[~bad] = talib.TRANGE(*comp) if name == "tr" else talib.ATR(*comp, length)
    return out


@pytest.mark.parametrize("name,length", [("tr", None), ("atr", 1), ("atr", 2), ("atr", 5),
                                         ("atr", 14)])
@pytest.mark.parametrize("n", [2, 3, 6, 15, 16, 17, 40])
def test_hlc_nan_at_every_position(name, length, n):
    params = () if length is None else (length,)
    base = hlc(n, n)
    for j in range(3):
        for i in range(n):
            arrays = [a.copy() for a in base]
            arrays[j][i] = np.nan
            identical(KERNELS[name].func(*arrays, *params), hlc_reference(name, arrays, length))


@pytest.mark.parametrize("name,length", [("tr", None), ("atr", 1), ("atr", 14)])
def test_hlc_nan_large_positions(name, length):
    params = () if length is None else (length,)
    base = hlc(200_000, 3)
    for j in range(3):
        for i in (0, 1, 13, 14, 15, 99_999, 199_998, 199_999):
            arrays = [a.copy() for a in base]
            arrays[j][i] = np.nan
            identical(KERNELS[name].func(*arrays, *params), hlc_reference(name, arrays, length))


@pytest.mark.parametrize("name,length", [("tr", None), ("atr", 1), ("atr", 14)])
@pytest.mark.parametrize("val", [np.inf, -np.inf])
def test_hlc_infinity_is_not_missing(name, length, val):
    params = () if length is None else (length,)
    base = hlc(30, 9)
    with np.errstate(invalid="ignore", over="ignore"):
        for j in range(3):
            for i in range(30):
                arrays = [a.copy() for a in base]
                arrays[j][i] = val
                want = talib.TRANGE(*arrays) if name == "tr" else talib.ATR(*arrays, length)
                identical(KERNELS[name].func(*arrays, *params), want)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e200])
def test_all_finite_says_no_to_any_nan_or_infinity_and_to_overflow(bad):
    from engine.indicators.gaps import all_finite, remembering

    a = np.linspace(-500.0, 500.0, 10_001)
    assert all_finite(a) and all_finite(a[:0])
    for i in (0, 5_000, 10_000):
        b = a.copy()
        b[i] = bad     # 1e200 is finite, but its square is not: a "no" that only costs the exact path
        assert not all_finite(b)
        # and the kernels give the general rule's answer either way
        with remembering():
            got = KERNELS["sma"].func(b, 5)
        good = ~np.isnan(b)
        want = np.full(len(b), np.nan)
        want[good] = talib.SMA(np.ascontiguousarray(b[good]), 5)
        np.testing.assert_array_equal(got, want)
    assert all_finite(np.arange(10, dtype=np.int64)) and not all_finite(np.array([1.0, np.nan], dtype=np.float32))
