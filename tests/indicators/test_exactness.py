"""Bit-identity of the vectorised and streaming forms where it is cheap to have it.

Boolean rules built on near-ties (crosses_below(close, vwap())) flip between the two
evaluators if the two forms differ by one ulp, so for these kernels the vectorised
code performs the very same float operations, in the same order, as the streaming
code, and the tests compare with ==, not allclose.
"""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from engine.indicators import KERNELS
from engine.indicators import numpy_kernels as nk
from indicator_data import data_path, load_ohlcv


def streamed(name, params, arrays):
    s = KERNELS[name].stream(*params)
    return np.array([s.update(*bar) for bar in zip(*(a.tolist() for a in arrays))])


def assert_identical(vec, stream):
    vec = np.asarray(vec)
    stream = np.asarray(stream, dtype=vec.dtype)
    assert vec.shape == stream.shape
    if vec.dtype == np.bool_:
        assert np.array_equal(vec, stream)
        return
    np.testing.assert_array_equal(np.isnan(vec), np.isnan(stream))
    ok = ~np.isnan(vec)
    diff = np.flatnonzero(vec[ok] != stream[ok])
    assert diff.size == 0, f"{diff.size} bars differ, first at {diff[:5]}"


def nq_local_date():
    df = pd.read_csv(data_path("firstratedata_nq_sample", "NQ_1min_sample.csv"))
    ts = pd.to_datetime(df["timestamp"])
    sess = ts.dt.normalize().astype("int64") // 86_400_000_000_000
    return [df["high"].to_numpy(float), df["low"].to_numpy(float),
            df["close"].to_numpy(float), df["volume"].to_numpy(float),
            np.asarray(sess, dtype=float)]


# --- vwap -----------------------------------------------------------------------


def test_vwap_bit_identical_nq_1min_local_date():
    arrs = nq_local_date()
    assert_identical(KERNELS["vwap"].func(*arrs), streamed("vwap", (), arrs))


@pytest.mark.parametrize("ds", ["spy", "orcl", "nq"])
def test_vwap_bit_identical_real(ds):
    b = load_ohlcv(ds)
    arrs = [b[k] for k in ("high", "low", "close", "volume", "session")]
    assert_identical(KERNELS["vwap"].func(*arrs), streamed("vwap", (), arrs))


def test_vwap_bit_identical_spy_daily_sessions():
    b = load_ohlcv("spy")
    arrs = [b[k] for k in ("high", "low", "close", "volume")] + [np.arange(len(b["close"]), dtype=float)]
    assert_identical(KERNELS["vwap"].func(*arrs), streamed("vwap", (), arrs))


def _synthetic(n, sessions, seed=5):
    r = np.random.default_rng(seed)
    c = 15000 * np.exp(np.cumsum(r.normal(0, 3e-4, n)))
    sp = np.abs(r.normal(0, 2e-4, n)) * c
    v = r.integers(0, 5000, n).astype(float)
    return [c + sp, c - sp, c, v, sessions.astype(float)]


@pytest.mark.parametrize("layout", ["runs", "matrix", "loop"])
def test_vwap_bit_identical_every_layout(layout):
    """The three segmented-cumsum layouts (see numpy_kernels.segmented_cumsum)."""
    n = 60_000
    r = np.random.default_rng(11)
    if layout == "runs":          # regular 390-bar sessions, a partial last one
        s = np.arange(n) // 390
    elif layout == "matrix":      # many varied short sessions
        s = np.repeat(np.arange(n), r.integers(20, 41, n))[:n]
    else:                         # one huge session, then many short ones
        s = np.cumsum(r.random(n) < 1 / 40)
        s[:30_000] = -1
    first, lengths = nk._session_starts(s.astype(float))
    assert nk._cumsum_layout(first, lengths, n)[0] == layout
    arrs = _synthetic(n, s)
    arrs[3][::97] = 0.0           # zero volumes, including whole zero-volume starts
    assert_identical(KERNELS["vwap"].func(*arrs), streamed("vwap", (), arrs))


def test_vwap_gaps_bit_identical():
    b = load_ohlcv("nq")
    arrs = [b[k].copy() for k in ("high", "low", "close", "volume", "session")]
    r = np.random.default_rng(2)
    for a in arrs:
        a[r.integers(0, len(a), 40)] = np.nan
    assert_identical(KERNELS["vwap"].func(*arrs), streamed("vwap", (), arrs))


def test_vwap_precision_long_minute_history():
    """1M 1-minute bars: every value within 1e-13 relative of an extended-precision
    per-session reference (a cumsum over the whole history would drift ~1e-9)."""
    n = 1_000_000
    r = np.random.default_rng(8)
    lengths = r.integers(300, 1381, n // 300)
    s = np.repeat(np.arange(len(lengths)), lengths)[:n]
    h, l, c, v, sess = _synthetic(n, s)
    got = nk.vwap(h, l, c, v, sess)
    ld = np.longdouble
    assert np.finfo(ld).eps < 1e-18, "needs an extended long double"
    pv = (h.astype(ld) + l + c) / 3 * v
    first, lens = nk._session_starts(sess)
    worst = 0.0
    for f, L in zip(first.tolist(), lens.tolist()):
        num = np.cumsum(pv[f:f + L])
        den = np.cumsum(v[f:f + L].astype(ld))
        with np.errstate(divide="ignore", invalid="ignore"):
            ref = num / den
        ok = den != 0
        g = got[f:f + L]
        assert np.isnan(g[~ok]).all()
        err = np.abs((g[ok] - ref[ok]) / ref[ok])
        worst = max(worst, float(err.max()))
    assert worst < 1e-13, worst


# --- hurst (not bit-identical: the stream is numpy's two-pass var per window) -------


@pytest.mark.parametrize("n", [30, 100])
def test_hurst_full_nq_matches_stream(n):
    x = load_ohlcv("nq")["close"]
    vec = KERNELS["hurst"].func(x, n)
    st = streamed("hurst", (n,), [x])
    np.testing.assert_array_equal(np.isnan(vec), np.isnan(st))
    np.testing.assert_allclose(vec, st, rtol=1e-10, atol=0, equal_nan=True)


def test_hurst_chunking_does_not_change_values(monkeypatch):
    x = load_ohlcv("nq")["close"]
    whole = nk.hurst(x, 40)
    monkeypatch.setattr(nk, "HURST_CHUNK", 1000)
    np.testing.assert_allclose(nk.hurst(x, 40), whole, rtol=1e-12, atol=1e-14, equal_nan=True)


# --- kernels whose vectorised and streaming forms do the same float operations -------

EXACT = {"change": (3,), "roc": (3,), "sma": (20,), "ema": (20,), "tr": (), "highest": (20,),
         "lowest": (20,), "percentrank": (20,), "iv_rank": (50,), "crosses_above": (),
         "crosses_below": (), "macd": (12, 26, 9), "mfi": (14,), "adx": (14,), "stoch_k": (14, 3),
         "stoch_d": (14, 3, 3), "willr": (14,), "cci": (20,), "obv": (), "sar": (0.02, 0.2)}


@pytest.mark.parametrize("ds", ["spy", "nq"])
@pytest.mark.parametrize("name", sorted(EXACT))
def test_bit_identical(name, ds):
    b = load_ohlcv(ds)
    c = b["close"]
    pool = dict(x=c, high=b["high"], low=b["low"], close=c, volume=b["volume"], a=c,
                b=KERNELS["ema"].func(c, 8))
    arrs = [pool[i] for i in KERNELS[name].inputs]
    assert_identical(KERNELS[name].func(*arrs, *EXACT[name]), streamed(name, EXACT[name], arrs))
