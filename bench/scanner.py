"""Benchmark: the composite scanner at universe scale, against pandas doing the same scan.

5,000 symbols x 500 daily bars (seeded random walks: not market data, this measures speed
only), the five factors, prefilter, weights, min_score and top N of
strategies/scanners/composite.yaml, and:

(a) one full scan: every factor over the whole history of every symbol, then the
    cross-section at the last bar (qtrade: run_scan on bars already in memory);
(b) an incremental rescan: one new bar for every symbol, then the cross-section (qtrade:
    ScanState.update; pandas has no indicator state, so it recomputes (a) with the new bar).

The pandas side is written here on its own, from the scanner's definitions: a long frame
(symbol, bar) with groupby('symbol') rolling means and SMA-seeded ewm recursions for the
indicators, groupby(time) percentile ranks and min-max scaling, the weighted composite,
min_score and the top N. Both rankings are asserted equal at every scan time measured: the
same picks in the same order, the scores to 1e-9 (a mismatch raises, whatever the size).
Times are the best of --repeat runs; the load average is printed with them (the machine is
shared). Not a test (tests/test_scanner_bench.py runs it small for the equality).

Run: python bench/scanner.py [--symbols 5000] [--bars 500] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a source checkout
sys.path.insert(0, str(ROOT / "bench"))

from engine.check import validate  # noqa: E402
from engine.runtime.scanning import scanner_of, symbol_inputs  # noqa: E402
from engine.scanner import ScanState, compile_scanner, run_scan  # noqa: E402
from scan import best  # noqa: E402  (bench/scan.py: the best of `repeat` timings)

COMPOSITE = ROOT / "strategies" / "scanners" / "composite.yaml"
NY = "America/New_York"
FIELDS = ("open", "high", "low", "close", "volume")


def random_walks(symbols: int, bars: int, seed: int = 12) -> dict[str, np.ndarray]:
    """bars x symbols arrays of each field: seeded random walks, prices about 20-200."""
    rng = np.random.default_rng(seed)
    base = 20 + 180 * rng.random(symbols)
    close = base * np.exp(np.cumsum(rng.normal(0, 0.015, (bars, symbols)), axis=0))
    open_ = close * np.exp(rng.normal(0, 0.004, (bars, symbols)))
    high = np.maximum(open_, close) * (1 + rng.random((bars, symbols)) * 0.01)
    low = np.minimum(open_, close) * (1 - rng.random((bars, symbols)) * 0.01)
    volume = rng.lognormal(14.5, 0.8, (bars, symbols))
    return {"open": open_, "high": high, "low": low, "close": close, "volume": volume}


def scanner(names: tuple[str, ...]):
    report = validate([str(COMPOSITE)])
    ws = report.workspace
    spec = scanner_of(ws.load(COMPOSITE), ws)
    spec = type(spec)(**{**spec.__dict__, "universe": names})
    return compile_scanner(spec), ws


# ---- pandas, on its own ------------------------------------------------------------------

def _seeded_ewm(g, x: pd.Series, own: pd.Series, n: int, alpha: float, first: int) -> pd.Series:
    """TA-Lib's SMA-seeded recursion: the mean of n values ending at own bar `first`, then
    y = (1 - alpha) y[t-1] + alpha x (ewm, adjust=False, from the seed)."""
    seed = x.groupby(g).rolling(n).mean().reset_index(level=0, drop=True)
    start = x.where(own > first).mask(own == first, seed).where(own >= first)
    return start.groupby(g).ewm(alpha=alpha, adjust=False).mean().reset_index(level=0, drop=True)


def pandas_factors(df: pd.DataFrame) -> pd.DataFrame:
    """The composite's five factors and the prefilter at every bar of every symbol."""
    g = df["symbol"]
    by = df.groupby("symbol", sort=False)
    own = by.cumcount()
    close, volume, high, low = df["close"], df["volume"], df["high"], df["low"]
    sma_v = by["volume"].rolling(20).mean().reset_index(level=0, drop=True)
    prev = by["close"].shift(1)
    roc5 = (close / by["close"].shift(5) - 1.0) * 100.0
    tr = pd.concat([high - low, (high - prev).abs(), (low - prev).abs()], axis=1).max(axis=1, skipna=False)
    atr = _seeded_ewm(g, tr.where(own >= 1), own, 14, 1 / 14, 14)
    d = close - prev
    gain = _seeded_ewm(g, d.clip(lower=0).where(own >= 1), own, 14, 1 / 14, 14)
    loss = _seeded_ewm(g, (-d).clip(lower=0).where(own >= 1), own, 14, 1 / 14, 14)
    total = gain + loss
    rsi = (100.0 * gain / total).where(total != 0, 0.0).where(total.notna())
    ema8 = _seeded_ewm(g, close, own, 8, 2 / 9, 7)
    ema21 = _seeded_ewm(g, close, own, 21, 2 / 22, 20)
    out = pd.DataFrame({"symbol": g, "time": df["time"]})
    out["energy"] = roc5.abs() * np.sqrt(volume / sma_v)
    out["liquidity"] = np.log(close * sma_v)
    out["volatility"] = atr / close
    out["conviction"] = (rsi - 50) / 50 * np.sign(ema8 - ema21)
    out["options_liquidity"] = np.log(sma_v) + (close > 50).astype(float)
    out["passed"] = close.between(10, 1000) & (volume >= 1e6)
    return out


WEIGHTS = {"energy": 0.30, "liquidity": 0.25, "volatility": 0.20, "conviction": 0.15, "options_liquidity": 0.10}
MINMAX = {"conviction"}


def pandas_scan(df: pd.DataFrame, at, min_score: float = 30.0, top: int = 25) -> pd.DataFrame:
    """The ranking at time `at`: the symbols picked, best first, with their scores."""
    f = pandas_factors(df)
    x = f[(f["time"] == at) & f["passed"]].dropna(subset=list(WEIGHTS))
    by = x.groupby("time")
    score = 0.0
    for name, w in WEIGHTS.items():
        if name in MINMAX:
            lo, hi = by[name].transform("min"), by[name].transform("max")
            s = ((x[name] - lo) / (hi - lo)).where(hi > lo, 0.5)
        else:
            n = by[name].transform("count")
            s = ((by[name].rank(method="average") - 1) / (n - 1)).where(n > 1, 0.5)
        score = score + w * s
    x = x.assign(score=100.0 * score)
    x = x[x["score"] >= min_score]
    return x.sort_values("score", ascending=False, kind="stable").head(top)[["symbol", "score"]]


# ---- the two sides, compared -----------------------------------------------------------

def frames_of(data: dict[str, np.ndarray], names, index: pd.DatetimeIndex) -> dict[str, pd.DataFrame]:
    return {s: pd.DataFrame({f: data[f][:, j] for f in FIELDS}, index=index) for j, s in enumerate(names)}


def long_frame(data: dict[str, np.ndarray], names, bars: int) -> pd.DataFrame:
    symbols = len(names)
    df = pd.DataFrame({"symbol": np.repeat(np.array(names), bars), "time": np.tile(np.arange(bars), symbols)})
    for f in FIELDS:
        df[f] = data[f][:bars].T.ravel()
    return df


def picks(result, e: int = 0) -> list[tuple[str, float]]:
    cols = np.flatnonzero(result.picked[e])
    cols = cols[np.argsort(result.rank[e, cols])]
    return [(result.symbols[c], float(result.score[e, c])) for c in cols]


def same(qtrade: list[tuple[str, float]], pandas: pd.DataFrame, what: str) -> None:
    theirs = list(zip(pandas["symbol"], pandas["score"]))
    if [s for s, _ in qtrade] != [s for s, _ in theirs]:
        raise AssertionError(f"{what}: picks differ: qtrade {[s for s, _ in qtrade][:10]}..., "
                             f"pandas {[s for s, _ in theirs][:10]}...")
    worst = max((abs(a - b) for (_, a), (_, b) in zip(qtrade, theirs)), default=0.0)
    if worst > 1e-9:
        raise AssertionError(f"{what}: scores differ by {worst:g}")


def run(symbols: int = 5000, bars: int = 500, repeat: int = 3, quiet: bool = False) -> dict[str, float]:
    """Both scans at both sizes, asserted equal; the times (seconds)."""
    names = tuple(f"S{i:04d}" for i in range(symbols))
    data = random_walks(symbols, bars + repeat)
    index = pd.bdate_range("2015-01-02", periods=bars + repeat, tz=NY)
    sp, ws = scanner(names)
    frames = frames_of({f: a[:bars] for f, a in data.items()}, names, index[:bars])
    inputs = symbol_inputs(sp, frames, bar="1d", timezone=NY, ws=ws)
    last = inputs[names[0]].ends[-1:]
    load0 = os.getloadavg()[0]

    t_full, full = best(lambda: run_scan(sp, inputs, bar_seconds=86400.0, times=last, universe=names), repeat)
    df = long_frame(data, names, bars)
    t_pandas, theirs = best(lambda: pandas_scan(df, bars - 1), repeat)
    same(picks(full), theirs, "full scan")

    t_state, state = best(lambda: ScanState(sp, inputs, bar_seconds=86400.0, universe=names), 1)
    same(picks(state.scan()), theirs, "the state's first scan")
    step = int(last[0] - inputs[names[0]].ends[-2])
    t_inc = []
    for k in range(repeat):
        row = bars + k
        t = time.perf_counter()
        result = state.update(int(last[0]) + (k + 1) * step, {f: data[f][row] for f in FIELDS})
        t_inc.append(time.perf_counter() - t)
    df_next = long_frame(data, names, bars + repeat)
    t_pandas_inc, theirs_next = best(lambda: pandas_scan(df_next, bars + repeat - 1), 1)
    same(picks(result), theirs_next, "incremental rescan")
    load1 = os.getloadavg()[0]
    out = {"full": t_full, "pandas": t_pandas, "state": t_state, "incremental": min(t_inc),
           "pandas_incremental": t_pandas_inc, "picks": len(picks(full)), "load": max(load0, load1)}
    if not quiet:
        print(f"composite scanner, {symbols:,} symbols x {bars} daily bars, 5 factors "
              f"(load average {load0:.2f} -> {load1:.2f} on {os.cpu_count()} cores; best of {repeat})")
        print(f"  (a) full scan        qtrade {t_full:7.3f} s   pandas {t_pandas:7.3f} s   "
              f"pandas/qtrade {t_pandas / t_full:5.1f}x   ({out['picks']} picks, same ranking)")
        print(f"  (b) one new bar      qtrade {min(t_inc):7.4f} s   pandas {t_pandas_inc:7.3f} s   "
              f"pandas/qtrade {t_pandas_inc / min(t_inc):5.0f}x   (pandas recomputes; same ranking)")
        print(f"      building the incremental state from the history: {t_state:.3f} s (once)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=5000)
    ap.add_argument("--bars", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    run(args.symbols, args.bars, args.repeat)


if __name__ == "__main__":
    main()
