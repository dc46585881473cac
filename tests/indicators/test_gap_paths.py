"""The gap rule's fast paths give exactly the general rule's result.

* run_gapped's leading-NaN path (an indicator of an indicator): every kernel, NaN
  prefixes of different lengths on different inputs, compared bit for bit with the
  kernel run on the valid tail (which is what compress/scatter computes).
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.indicators import KERNELS
from engine.indicators.gaps import run_gapped
from indicator_data import load_ohlcv

PARAMS = {"change": (3,), "roc": (3,), "percentrank": (20,), "hurst": (30,), "atr": (14,),
          "adx": (14,), "mfi": (14,), "rsi": (14,), "bb_upper": (20, 2.0),
          "bb_lower": (20, 2.0), "bb_width": (20, 2.0), "macd": (12, 26, 9),
          "macd_signal": (12, 26, 9), "macd_hist": (12, 26, 9), "iv_rank": (50,),
          "tr": (), "vwap": (), "crosses_above": (), "crosses_below": ()}


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
