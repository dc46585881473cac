"""Benchmark: every qtrade indicator kernel on 1,000,000 bars vs TA-Lib called
directly, a pandas equivalent and a naive numpy version; plus the streaming
update cost per bar. Best of 5, milliseconds. Not a test: run it by hand.

    /work/venv/bin/python bench/kernels.py [--bars 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import talib
from numpy.lib.stride_tricks import sliding_window_view as swv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.indicators import KERNELS  # noqa: E402


def best(fn, repeat):
    t = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        t = min(t, time.perf_counter() - t0)
    return t * 1000


def make_bars(n, seed=7):
    """A seeded random walk with OHLCV-shaped noise (1-minute-like, 390-bar sessions)."""
    r = np.random.default_rng(seed)
    c = 100 * np.exp(np.cumsum(r.normal(0, 1e-3, n)))
    spread = np.abs(r.normal(0, 5e-4, n)) * c
    h, l = c + spread, c - spread
    v = r.integers(100, 10_000, n).astype(float)
    s = (np.arange(n) // 390).astype(float)
    return dict(x=c, high=h, low=l, close=c, volume=v, session=s, a=c,
                b=np.where(np.isnan(e := talib.EMA(c, 20)), c, e))  # gap-free


def pandas_impls(b):
    x, h, l, c, v, s = (pd.Series(b[k]) for k in ("x", "high", "low", "close", "volume", "session"))
    tr = pd.concat([h - l, (h - c.shift()).abs(), (l - c.shift()).abs()], axis=1).max(axis=1)

    def rsi():
        d = x.diff()
        g = d.clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean()
        lo = (-d).clip(lower=0).ewm(alpha=1 / 14, adjust=False).mean()
        return 100 * g / (g + lo)

    def macd():
        return x.ewm(span=12, adjust=False).mean() - x.ewm(span=26, adjust=False).mean()

    def mfi():
        tp = (h + l + c) / 3
        d = tp.diff()
        pos = (tp * v).where(d > 0, 0.0).rolling(14).sum()
        neg = (tp * v).where(d < 0, 0.0).rolling(14).sum()
        return 100 * pos / (pos + neg)

    def vwap():
        tp = (h + l + c) / 3
        return (tp * v).groupby(s).cumsum() / v.groupby(s).cumsum()

    def hurst():
        lags = np.arange(2, 21)
        lx = np.log(lags)
        w = (lx - lx.mean()) / ((lx - lx.mean()) ** 2).sum()
        acc = 0
        for L, wl in zip(lags, w):
            acc = acc + wl * np.log(x.diff(L).rolling(100 - L).std(ddof=0))
        return acc

    def bb():
        return x.rolling(20).mean() + 2 * x.rolling(20).std(ddof=0)

    return {
        "sma": lambda: x.rolling(20).mean(),
        "ema": lambda: x.ewm(span=20, adjust=False).mean(),
        "wma": None,
        "rma": lambda: x.ewm(alpha=1 / 20, adjust=False).mean(),
        "stdev": lambda: x.rolling(20).std(ddof=0),
        "highest": lambda: x.rolling(20).max(),
        "lowest": lambda: x.rolling(20).min(),
        "change": lambda: x.diff(1),
        "roc": lambda: x.pct_change(1) * 100,
        "rsi": rsi,
        "atr": lambda: tr.ewm(alpha=1 / 14, adjust=False).mean(),
        "tr": lambda: pd.concat([h - l, (h - c.shift()).abs(), (l - c.shift()).abs()],
                                axis=1).max(axis=1),
        "adx": None,
        "mfi": mfi,
        "vwap": vwap,
        "bb_upper": bb, "bb_lower": bb,
        "bb_width": lambda: 4 * x.rolling(20).std(ddof=0) / x.rolling(20).mean(),
        "macd": macd,
        "macd_signal": lambda: macd().ewm(span=9, adjust=False).mean(),
        "macd_hist": lambda: macd() - macd().ewm(span=9, adjust=False).mean(),
        "zscore": lambda: (x - x.rolling(20).mean()) / x.rolling(20).std(ddof=0),
        "percentrank": lambda: (x.rolling(21).rank(method="max") - 1) / 20,
        "hurst": hurst,
        "iv_rank": lambda: (x - x.rolling(252).min()) / (x.rolling(252).max() - x.rolling(252).min()),
        "crosses_above": lambda: (pd.Series(b["a"]) > pd.Series(b["b"]))
        & (pd.Series(b["a"]).shift() <= pd.Series(b["b"]).shift()),
        "crosses_below": lambda: (pd.Series(b["a"]) < pd.Series(b["b"]))
        & (pd.Series(b["a"]).shift() >= pd.Series(b["b"]).shift()),
    }


def naive_impls(b):
    x = b["x"]
    w20 = lambda: swv(x, 20)  # noqa: E731
    wts = np.arange(1, 21, dtype=float)
    return {
        "sma": lambda: w20().mean(axis=1),
        "wma": lambda: w20() @ wts / wts.sum(),
        "stdev": lambda: w20().std(axis=1),
        "highest": lambda: w20().max(axis=1),
        "lowest": lambda: w20().min(axis=1),
        "change": lambda: x[1:] - x[:-1],
        "roc": lambda: (x[1:] / x[:-1] - 1) * 100,
        "tr": lambda: np.maximum(b["high"][1:], b["close"][:-1]) - np.minimum(b["low"][1:], b["close"][:-1]),
        "bb_upper": lambda: w20().mean(axis=1) + 2 * w20().std(axis=1),
        "bb_lower": lambda: w20().mean(axis=1) - 2 * w20().std(axis=1),
        "bb_width": lambda: 4 * w20().std(axis=1) / w20().mean(axis=1),
        "zscore": lambda: (x[19:] - w20().mean(axis=1)) / w20().std(axis=1),
        "percentrank": lambda: (swv(x, 21)[:, :20] <= x[20:, None]).mean(axis=1),
        "iv_rank": lambda: (x[251:] - swv(x, 252).min(axis=1)) / np.ptp(swv(x, 252), axis=1),
    }


def talib_impls(b):
    x, h, l, c, v = (b[k] for k in ("x", "high", "low", "close", "volume"))
    return {
        "sma": lambda: talib.SMA(x, 20), "ema": lambda: talib.EMA(x, 20),
        "wma": lambda: talib.WMA(x, 20), "rma": lambda: talib.RMA(x, 20),
        "stdev": lambda: talib.STDDEV(x, 20, 1.0), "highest": lambda: talib.MAX(x, 20),
        "lowest": lambda: talib.MIN(x, 20), "roc": lambda: talib.ROC(x, 1),
        "rsi": lambda: talib.RSI(x, 14), "atr": lambda: talib.ATR(h, l, c, 14),
        "tr": lambda: talib.TRANGE(h, l, c), "adx": lambda: talib.ADX(h, l, c, 14),
        "mfi": lambda: talib.MFI(h, l, c, v, 14),
        "bb_upper": lambda: talib.BBANDS(x, 20, 2.0, 2.0, 0),
        "bb_lower": lambda: talib.BBANDS(x, 20, 2.0, 2.0, 0),
        "bb_width": lambda: talib.BBANDS(x, 20, 2.0, 2.0, 0),
        "macd": lambda: talib.MACD(x, 12, 26, 9), "macd_signal": lambda: talib.MACD(x, 12, 26, 9),
        "macd_hist": lambda: talib.MACD(x, 12, 26, 9),
        "iv_rank": lambda: (talib.MAX(x, 252), talib.MIN(x, 252)),
        "zscore": lambda: (talib.SMA(x, 20), talib.STDDEV(x, 20, 1.0)),
    }


PARAMS = {"sma": (20,), "ema": (20,), "wma": (20,), "rma": (20,), "stdev": (20,),
          "highest": (20,), "lowest": (20,), "change": (1,), "roc": (1,), "rsi": (14,),
          "atr": (14,), "tr": (), "adx": (14,), "mfi": (14,), "vwap": (),
          "bb_upper": (20, 2.0), "bb_lower": (20, 2.0), "bb_width": (20, 2.0),
          "macd": (12, 26, 9), "macd_signal": (12, 26, 9), "macd_hist": (12, 26, 9),
          "zscore": (20,), "percentrank": (20,), "hurst": (100,), "iv_rank": (252,),
          "crosses_above": (), "crosses_below": ()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bars", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--stream-bars", type=int, default=20_000)
    a = ap.parse_args()
    b = make_bars(a.bars)
    tl, pdi, nv = talib_impls(b), pandas_impls(b), naive_impls(b)
    fmt = "{:<14}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}{:>11}"
    print(f"{a.bars:,} bars, best of {a.repeat}, ms (ratios = ours / other; <1 means ours is faster)")
    print(fmt.format("kernel", "ours", "talib", "x talib", "pandas", "x pandas", "naive", "x naive",
                     "stream us"))
    for name, k in KERNELS.items():
        args = [b[i] for i in k.inputs]
        ours = best(lambda: k.func(*args, *PARAMS[name]), a.repeat)
        cols = [f"{ours:.1f}"]
        for impl in (tl.get(name), pdi.get(name), nv.get(name)):
            if impl is None:
                cols += ["-", "-"]
            else:
                t = best(impl, a.repeat)
                cols += [f"{t:.1f}", f"{ours / t:.2f}"]
        m = a.stream_bars if name != "hurst" else a.stream_bars // 10
        s = k.stream(*PARAMS[name])
        rows = list(zip(*[arr[:m].tolist() for arr in args]))
        t0 = time.perf_counter()
        for r in rows:
            s.update(*r)
        us = (time.perf_counter() - t0) / m * 1e6
        print(fmt.format(name, *cols, f"{us:.2f}"))


if __name__ == "__main__":
    main()
