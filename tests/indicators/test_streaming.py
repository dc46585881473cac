"""Streaming form == vectorised form, bar by bar, for every kernel (hypothesis over
random slices of real data and random parameters), with and without NaN gaps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.indicators import KERNELS
from indicator_data import load_ohlcv

DATASETS = ("spy", "orcl", "nq")


def param_strategy(name):
    L = st.integers(2, 40)
    return {
        "change": st.tuples(st.integers(1, 30)), "roc": st.tuples(st.integers(1, 30)),
        "percentrank": st.tuples(st.integers(1, 40)), "hurst": st.tuples(st.integers(22, 60)),
        "atr": st.tuples(st.integers(1, 40)),
        "bb_upper": st.tuples(L, st.floats(0.5, 3.0)), "bb_lower": st.tuples(L, st.floats(0.5, 3.0)),
        "bb_width": st.tuples(L, st.floats(0.5, 3.0)),
        "macd": st.tuples(st.integers(2, 15), st.integers(16, 40), st.integers(1, 12)),
        "macd_signal": st.tuples(st.integers(2, 15), st.integers(16, 40), st.integers(1, 12)),
        "macd_hist": st.tuples(st.integers(2, 40), st.integers(2, 40), st.integers(1, 12)),
        "tr": st.just(()), "vwap": st.just(()), "crosses_above": st.just(()),
        "crosses_below": st.just(()), "obv": st.just(()),
        "stoch_k": st.tuples(st.integers(1, 30), st.integers(1, 6)),
        "stoch_d": st.tuples(st.integers(1, 30), st.integers(1, 6), st.integers(1, 6)),
        "sar": st.floats(0.005, 0.1).flatmap(lambda a: st.tuples(st.just(a), st.floats(a, 0.5))),
        "keltner_upper": st.tuples(L, st.floats(0.5, 3.0), st.integers(1, 30)),
        "keltner_middle": st.tuples(L, st.floats(0.5, 3.0), st.integers(1, 30)),
        "keltner_lower": st.tuples(L, st.floats(0.5, 3.0), st.integers(1, 30)),
    }.get(name, st.tuples(L))


_CACHE = {}


def bars(ds):
    if ds not in _CACHE:
        _CACHE[ds] = load_ohlcv(ds)
    return _CACHE[ds]


def inputs(kernel, b, start, size):
    sl = slice(start, start + size)
    c = b["close"][sl]
    pool = dict(x=c, high=b["high"][sl], low=b["low"][sl], close=c, volume=b["volume"][sl],
                session=b["session"][sl], a=c, b=KERNELS["ema"].func(b["close"], 8)[sl])
    return [np.array(pool[i], dtype=float) for i in kernel.inputs]


def streamed(kernel, params, arrays):
    s = kernel.stream(*params)
    return [s.update(*bar) for bar in zip(*arrays)]


def assert_same(kernel, vec, stream, arrays):
    """1e-9 relative, plus an absolute floor of 1e-12 x the input scale: outputs like
    the MACD family are differences of price-scale quantities, so near zero their
    rounding error is ~eps*price, not ~eps*value."""
    if kernel.boolean:
        assert list(vec) == list(stream)
        return
    stream = np.asarray(stream, dtype=float)
    np.testing.assert_array_equal(np.isnan(vec), np.isnan(stream))
    scale = max(1.0, max(float(np.nanmax(np.abs(a))) for a in arrays if not np.isnan(a).all()))
    np.testing.assert_allclose(stream, vec, rtol=1e-9, atol=1e-12 * scale, equal_nan=True)


def case(name):
    return st.tuples(st.sampled_from(DATASETS), st.integers(0, 2000), st.integers(30, 250),
                     param_strategy(name))


SETTINGS = settings(deadline=None, max_examples=12, derandomize=True,
                    suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("name", sorted(KERNELS))
@SETTINGS
@given(data=st.data())
def test_stream_equals_vectorised(name, data):
    ds, start, size, params = data.draw(case(name))
    k = KERNELS[name]
    arrays = inputs(k, bars(ds), start, size)
    assert_same(k, k.func(*arrays, *params), streamed(k, params, arrays), arrays)


@pytest.mark.parametrize("name", sorted(KERNELS))
@SETTINGS
@given(data=st.data())
def test_stream_equals_vectorised_with_gaps(name, data):
    ds, start, size, params = data.draw(case(name))
    k = KERNELS[name]
    arrays = inputs(k, bars(ds), start, size)
    holes = data.draw(st.lists(st.tuples(st.integers(0, size - 1),
                                         st.integers(0, len(arrays) - 1)), max_size=12))
    lead = data.draw(st.integers(0, 5))
    for i, j in holes:
        arrays[j][i] = np.nan
    for a in arrays:
        a[:lead] = np.nan
    vec = k.func(*arrays, *params)
    assert_same(k, vec, streamed(k, params, arrays), arrays)
    # the gap rule: NaN (False) exactly at missing bars, and the rest equals the
    # kernel run on the compressed series
    bad = np.zeros(size, dtype=bool)
    for a in arrays:
        bad |= np.isnan(a)
    if k.boolean:
        assert not vec[bad].any()
    else:
        assert np.isnan(vec[bad]).all()
    comp = k.func(*[a[~bad] for a in arrays], *params)
    if k.boolean:
        assert list(vec[~bad]) == list(comp)
    else:
        np.testing.assert_array_equal(vec[~bad], comp)
