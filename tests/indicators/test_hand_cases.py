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
            "tr": (), "vwap": (), "crosses_above": (), "crosses_below": (), "stoch_k": (9, 3),
            "stoch_d": (9, 2, 4), "obv": (), "sar": (0.02, 0.2), "keltner_upper": (9, 2.0, 12),
            "keltner_middle": (15, 2.0, 5), "keltner_lower": (12, 1.0, 4)}.get(name, (9,))


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
             "hurst iv_rank stoch_k stoch_d willr cci obv sar keltner_upper keltner_middle "
             "keltner_lower crosses_above crosses_below").split()
    assert list(K) == names
    for k in K.values():
        assert k.doc and k.source and callable(k.stream)


def test_stochastics_by_hand():
    h, l, c = [3, 4, 5, 6, 6], [1, 2, 3, 4, 5], [2, 4, 3, 6, 5]
    fast = [nan, nan, 100 * (3 - 1) / (5 - 1), 100 * (6 - 2) / (6 - 2), 100 * (5 - 3) / (6 - 3)]
    eq(K["stoch_k"].func(h, l, c, 3, 1), fast)
    eq(K["stoch_k"].func(h, l, c, 3, 2), [nan, nan, nan, (50 + 100) / 2, (100 + 200 / 3) / 2])
    eq(K["stoch_d"].func(h, l, c, 3, 1, 3), [nan] * 4 + [(50 + 100 + 200 / 3) / 3])
    flat = [2.0] * 4
    eq(K["stoch_k"].func(flat, flat, flat, 2, 1), [nan, 0, 0, 0])      # a flat window is 0


def test_williams_r_by_hand():
    h, l, c = [3, 4, 5, 6], [1, 2, 3, 4], [2, 4, 3, 6]
    eq(K["willr"].func(h, l, c, 3), [nan, nan, -100 * (5 - 3) / (5 - 1), -100 * (6 - 6) / (6 - 2)])
    flat = [2.0] * 3
    eq(K["willr"].func(flat, flat, flat, 2), [nan, 0, 0])


def test_cci_by_hand():
    # typical prices 1, 2, 3: mean 2, mean deviation 2/3, so (3 - 2) / (0.015 * 2/3) = 100
    eq(K["cci"].func([1, 2, 3, 3], [1, 2, 3, 3], [1, 2, 3, 3], 3), [nan, nan, 100, (3 - 8 / 3) / (0.015 * 4 / 9)])
    eq(K["cci"].func([5.0] * 3, [5.0] * 3, [5.0] * 3, 2), [nan, 0, 0])


def test_obv_by_hand_and_across_a_gap():
    eq(K["obv"].func([10, 11, 11, 9, 12], [5, 6, 7, 8, 9]), [5, 11, 11, 3, 12])
    # the missing bar is skipped: bar 3 compares with bar 1
    eq(K["obv"].func([10, 11, nan, 9, 12], [5, 6, 7, 8, 9]), [5, 11, nan, 3, 12])


def test_sar_by_hand():
    # bar 1: +DM 1, -DM 0, so long from low[0] = 9 with ep = high[1] = 11; bar 2 makes a new
    # high (af 0.04); bar 3's low 9 pierces 9.1584: short at the extreme 12, the next stop
    # 12 - 0.02*3 = 11.94 is lifted to bar 2's high 12; bar 4 makes a new low 8 (af 0.04)
    h, l = [10, 11, 12, 11, 9], [9, 10, 11, 9, 8]
    eq(K["sar"].func(h, l, 0.02, 0.2), [nan, 9, 9.04, 12, 12])
    s = K["sar"].stream(0.02, 0.2)
    eq([s.update(a, b) for a, b in zip(h + [9], l + [7])], [nan, 9, 9.04, 12, 12, 11.84])


@pytest.mark.parametrize("accel, maximum", [(0.3, 0.2), (0.0, 0.2), (-0.02, 0.2), (0.02, 0.0),
                                            (float("nan"), 0.2)])
def test_sar_refuses_factors_that_would_change_its_meaning(accel, maximum):
    with pytest.raises(ValueError):
        K["sar"].func([2.0, 3.0], [1.0, 2.0], accel, maximum)
    with pytest.raises(ValueError):
        K["sar"].stream(accel, maximum)


def test_keltner_is_ema_plus_minus_mult_atr():
    b = load_ohlcv("spy")
    h, l, c = b["high"][:300], b["low"][:300], b["close"][:300]
    mid = K["keltner_middle"].func(h, l, c, 20, 1.5, 10)
    np.testing.assert_array_equal(mid, K["ema"].func(c, 20))
    band = 1.5 * K["atr"].func(h, l, c, 10)
    eq(K["keltner_upper"].func(h, l, c, 20, 1.5, 10), mid + band)
    eq(K["keltner_lower"].func(h, l, c, 20, 1.5, 10), mid - band)
    # a bar missing its high is missing for all three lines (not only the ATR)
    h = h.copy()
    h[100] = nan
    for which in ("upper", "middle", "lower"):
        out = K[f"keltner_{which}"].func(h, l, c, 20, 1.5, 10)
        assert np.isnan(out[100]) and not np.isnan(out[101])
