"""Small hand-computed cases: values, warm-up lengths, NaN gaps, parameter errors."""

from __future__ import annotations

import numpy as np
import pytest

from engine.indicators import KERNELS as K
from indicator_data import load_ohlcv

nan = np.nan


def eq(a, b):
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-12,
                               atol=1e-12, equal_nan=True)


def test_sma_with_gap_skips_the_missing_bar():
    eq(K["sma"].func([1, 2, nan, 3, 4], 2), [nan, 1.5, nan, 2.5, 3.5])


def test_leading_nans_are_gaps():
    eq(K["sma"].func([nan, nan, 1, 2, 3], 3), [nan, nan, nan, nan, 2])


def test_ema_seed_and_step():
    # seed mean(1,2,3)=2, alpha=0.5: 2+0.5*(6-2)=4
    eq(K["ema"].func([1, 2, 3, 6], 3), [nan, nan, 2, 4])


def test_rma_seed_and_step():
    eq(K["rma"].func([1, 2, 3, 6], 3), [nan, nan, 2, 2 + (6 - 2) / 3])


def test_wma():
    eq(K["wma"].func([1, 2, 3, 4], 3), [nan, nan, (1 + 4 + 9) / 6, (2 + 6 + 12) / 6])


def test_stdev_population():
    eq(K["stdev"].func([2, 4, 4, 4, 5, 5, 7, 9], 8), [nan] * 7 + [2.0])


def test_change_roc_percentrank():
    x = [10, 11, 9, 12]
    eq(K["change"].func(x, 2), [nan, nan, -1, 1])
    eq(K["roc"].func(x, 1), [nan, 10, -100 * 2 / 11, 100 / 3])
    eq(K["percentrank"].func(x, 2), [nan, nan, 0, 1])
    eq(K["percentrank"].func([1, 1, 1], 2), [nan, nan, 1])


def test_zscore_and_iv_rank_flat_window_is_nan():
    eq(K["zscore"].func([1, 3, 2, 2, 2], 2), [nan, 1, -1, nan, nan])
    eq(K["iv_rank"].func([1, 3, 2, 2], 2), [nan, 1, 0, nan])


def test_tr_atr():
    h, l, c = [10, 11, 12, 11], [9, 10, 10, 8], [9.5, 10.5, 11, 9]
    eq(K["tr"].func(h, l, c), [nan, 1.5, 2, 3])
    eq(K["atr"].func(h, l, c, 2), [nan, nan, 1.75, (1.75 + 3) / 2])


def test_vwap_resets_on_session_change_and_skips_gaps():
    h = [3, 6, 9, 3, 3]
    l = [3, 6, 9, 3, 3]
    c = [3, 6, 9, 3, 3]
    v = [1, 1, nan, 2, 2]
    s = [1, 1, 1, 2, 2]
    eq(K["vwap"].func(h, l, c, v, s), [3, 4.5, nan, 3, 3])


def test_crosses_across_a_gap():
    a = [0, 2, nan, 0, 3]
    b = [1, 1, 1, 1, 1]
    assert K["crosses_above"].func(a, b).tolist() == [False, True, False, False, True]
    assert K["crosses_below"].func(a, b).tolist() == [False, False, False, True, False]


def test_macd_line_does_not_depend_on_signal():
    x = load_ohlcv("spy")["close"][:200]
    eq(K["macd"].func(x, 12, 26, 9), K["macd"].func(x, 12, 26, 3))


def test_stream_ignores_nan_bars():
    s = K["sma"].stream(2)
    assert [s.update(v) for v in (1, 2, nan, 3)][1:] == [1.5, pytest.approx(nan, nan_ok=True), 2.5]


@pytest.mark.parametrize("bad", [0, -1, 2.5, "x", None])
def test_bad_length_raises(bad):
    with pytest.raises(ValueError):
        K["sma"].func([1.0, 2.0, 3.0], bad)


def _params(name):
    return {"change": (3,), "roc": (3,), "percentrank": (7,), "hurst": (30,),
            "bb_upper": (15, 2.0), "bb_lower": (15, 2.0), "bb_width": (15, 2.0),
            "macd": (5, 13, 4), "macd_signal": (5, 13, 4), "macd_hist": (13, 5, 4),
            "tr": (), "vwap": (), "crosses_above": (), "crosses_below": ()}.get(name, (9,))


@pytest.mark.parametrize("name", sorted(K))
def test_warmup_is_exact(name):
    b = load_ohlcv("spy")
    k = K[name]
    pool = dict(x=b["close"], high=b["high"], low=b["low"], close=b["close"],
                volume=b["volume"], session=b["session"], a=b["close"],
                b=K["ema"].func(b["close"], 5))
    out = k.func(*[pool[i][:400] for i in k.inputs], *_params(name))
    w = k.warmup_for(*_params(name))
    if k.boolean:
        assert not out[:w].any()
        return
    assert np.isnan(out[:w]).all()
    assert not np.isnan(out[w:]).any()


def test_table_is_complete():
    names = ("sma ema wma rma stdev highest lowest change roc rsi atr tr adx mfi vwap "
             "bb_upper bb_lower bb_width macd macd_signal macd_hist zscore percentrank "
             "hurst iv_rank crosses_above crosses_below").split()
    assert list(K) == names
    for k in K.values():
        assert k.doc and k.source and callable(k.stream)
