"""The scanner at universe scale: the Plan over a symbols x bars panel, batched indicator kernels,
and rescans as bars arrive (ScanState), each checked against the per-symbol path on random and
on real bars."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.check import validate
from engine.indicators import KERNELS
from engine.indicators.batched import BATCHED
from engine.market.bars import load_bars
from engine.plan.batched import PanelStream, evaluate_panel
from engine.plan.evaluate import evaluate
from engine.runtime.scanning import scanner_of, symbol_inputs
from engine.scanner import ScanState, compile_scanner, run_scan

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "strategies" / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "quantconnect_lean" / "decoded"
COMPOSITE = ROOT / "strategies" / "scanners" / "composite.yaml"
NY = "America/New_York"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared/data is not present")

# a scanner whose factors need a lag (of a number and of a condition), and kernels without a
# batched form (stdev, mfi: per-symbol kernels and scalar streams)
MIXED = """kind: scanner
name: mixed
universe: [{symbols}]
data: {{bar: 1d, source: {data}}}
factors:
  lagged:
    expr: close / close[3] + if(close[2] > close, 1, 0) + nz(close, 1)[2] / close
    weight: 0.4
    normalise: zscore
  spread:
    expr: stdev(close, 10) / close
    weight: 0.3
    normalise: rank
  flow:
    expr: mfi(14) - highest(high, 10)[1] / close + if((close > open)[2], 1, 0)
    weight: 0.3
    normalise: minmax
  early:
    expr: nz(if(close > 50, 1, 0)[2], -1)
    weight: 0.1
    normalise: none
min_score: 0
top: 2
"""


def scan_plan(path: Path, universe=None):
    report = validate([str(path)])
    assert not report.errors, report.errors
    ws = report.workspace
    spec = scanner_of(ws.load(path), ws)
    if universe is not None:
        spec = type(spec)(**{**spec.__dict__, "universe": tuple(universe)})
    return compile_scanner(spec), ws


def random_frames(symbols: int, bars: int, seed: int = 3, ragged: bool = True) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    index = pd.bdate_range("2012-01-03", periods=bars, tz=NY)
    out = {}
    for j in range(symbols):
        close = 20 + 150 * rng.random() * np.exp(np.cumsum(rng.normal(0, 0.02, bars)))
        open_ = close * np.exp(rng.normal(0, 0.004, bars))
        f = pd.DataFrame({"open": open_, "high": np.maximum(open_, close) * (1 + rng.random(bars) * 0.01),
                          "low": np.minimum(open_, close) * (1 - rng.random(bars) * 0.01), "close": close,
                          "volume": rng.lognormal(14.5, 0.8, bars)}, index=index)
        if ragged and j % 3 == 1:
            f = f.iloc[(7 * j) % 90:]               # later starts
        if ragged and j % 5 == 2:
            f.iloc[bars // 2, f.columns.get_loc("volume")] = 0.0     # volume / sma(volume) stays finite
            f.iloc[bars // 3:bars // 3 + 2, f.columns.get_loc("close")] = np.nan   # a hole: the gap rule
        out[f"R{j:03d}"] = f
    return out


def real_frames() -> dict[str, pd.DataFrame]:
    frames = {s: f for s, f in load_bars(BUNDLED, symbols=["SPY", "AAPL", "INTC"], timezone=NY).items()}
    if SHARED.is_dir():
        for name in ("spy", "qqq", "iwm", "aapl"):
            got = load_bars(SHARED / f"{name}_daily_raw_unadjusted.csv", timezone=NY)
            frames[f"QC_{name.upper()}"] = next(iter(got.values()))
    return frames


def same_values(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "f":
        return np.array_equal(a, b, equal_nan=True)
    return np.array_equal(a, b)


def close_values(a, b, rtol=1e-12) -> bool:
    """Equal NaN patterns, numbers within rtol of max(|x|, 1)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return False
    ok = ~np.isnan(a)
    return bool(np.all(np.abs(a[ok] - b[ok]) <= rtol * np.maximum(np.abs(b[ok]), 1.0)))


# ---- batched kernels -------------------------------------------------------------------

PARAMS = {"sma": (20,), "ema": (8,), "rma": (14,), "change": (3,), "roc": (5,), "rsi": (14,), "tr": (),
          "atr": (14,), "highest": (10,), "lowest": (10,)}
BIT_EXACT = {"sma", "change", "roc", "tr", "highest", "lowest"}


@pytest.mark.parametrize("name", sorted(BATCHED))
def test_a_batched_kernel_gives_each_symbol_its_1d_kernel_values(name):
    """Every column of a batched kernel over a ragged history with holes, zeros and flat runs is
    KERNELS[name].func on that symbol's own bars: to the bit, or (recursions TA-Lib's build
    fuses into multiply-adds) to 1e-12 relative; and bar-by-bar updates continue it."""
    rng = np.random.default_rng(7)
    T, S = 260, 60
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, (T, S)), axis=0))
    high, low = close * (1 + rng.random((T, S)) * 0.01), close * (1 - rng.random((T, S)) * 0.01)
    start = np.where(np.arange(S) % 2 == 0, 0, rng.integers(1, 60, S))
    valid = np.arange(T)[:, None] >= start[None, :]
    holes = (rng.random((T, S)) < 0.02) & (np.arange(S) % 3 == 0)[None, :]
    for a in (close, high, low):
        a[holes] = np.nan
    close[5:9, 0] = 0.0                  # ROC's zero base (symbol 0 starts at bar 0)
    close[100:140, 2] = 42.0
    ins = (high, low, close) if BATCHED[name].inputs == 3 else (close,)
    cut = T - 20
    k = BATCHED[name](S, *PARAMS[name])
    out = np.full((T, S), np.nan)
    out[:cut] = k.run(*(a[:cut] for a in ins), valid=valid[:cut])
    for r in range(cut, T):
        out[r] = k.update(*(a[r] for a in ins), has_bar=valid[r])
    for j in range(S):
        s = start[j]
        ref = KERNELS[name].func(*(np.ascontiguousarray(a[s:, j]) for a in ins), *PARAMS[name])
        assert np.isnan(out[:s, j]).all()
        if name in BIT_EXACT:
            assert same_values(out[s:, j], ref), (name, j)
        else:
            assert close_values(out[s:, j], ref), (name, j)


# ---- the panel: the per-symbol values ---------------------------------------------------

def plans(tmp_path):
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(MIXED.format(symbols="R000", data=BUNDLED))
    return [scan_plan(COMPOSITE, ()), scan_plan(mixed, ())]


def check_panel(sp, ws, frames):
    names = tuple(frames)
    inputs = symbol_inputs(sp, frames, bar="1d", timezone=NY, ws=ws, universe=names)
    bars = [inputs[s].bars for s in names]
    p, whole = evaluate_panel(sp.plan, bars, sp.market)
    lengths = np.array([len(b) for b in bars])
    at = np.stack([lengths - 1, lengths // 2, np.minimum(lengths - 1, 30), np.full(len(names), -1)])
    _, cells = evaluate_panel(sp.plan, bars, sp.market, at=at)
    stream = PanelStream(sp.plan, sp.market)
    _, streamed = stream.start(bars)
    for j, s in enumerate(names):
        ref = evaluate(sp.plan, bars[j], upto=set(sp.market))
        first = p.start[j]
        for i in sp.market:
            if not np.ndim(whole[i]):
                assert whole[i] == ref[i]
                continue
            assert same_values(whole[i][j, first:], ref[i]), (s, sp.plan.nodes[i].label)
            for e in range(3):
                assert same_values(cells[i][e, j], ref[i][at[e, j]]), (s, sp.plan.nodes[i].label)
            if np.asarray(ref[i]).dtype.kind == "f":
                assert close_values(streamed[i][j, first:], ref[i]), (s, sp.plan.nodes[i].label)
            else:
                assert same_values(streamed[i][j, first:], ref[i]), (s, sp.plan.nodes[i].label)


def test_the_panel_gives_every_symbol_its_own_values_on_random_bars(tmp_path):
    """Ragged starts, a hole, a zero volume: each node of the composite's and of a scanner with
    lags and per-symbol kernels equals the per-symbol evaluation to the bit (the whole history
    and the cells a scan reads), and the streamed history to 1e-12."""
    frames = random_frames(24, 220)
    for sp, ws in plans(tmp_path):
        check_panel(sp, ws, frames)


def test_the_panel_gives_every_symbol_its_own_values_on_real_bars(tmp_path):
    frames = real_frames()
    for sp, ws in plans(tmp_path):
        check_panel(sp, ws, frames)


@needs_shared
def test_the_shared_daily_bars_are_in_the_real_data_checks():
    assert {"QC_SPY", "QC_QQQ", "QC_IWM", "QC_AAPL"} <= set(real_frames())


# ---- run_scan on the panel equals the per-symbol scan -----------------------------------

def per_symbol_gathered(sp, inputs, result):
    """What the per-symbol path gathered: each symbol's Plan values at its latest bar by each scan."""
    out = {}
    for col, s in enumerate(result.symbols):
        if s not in inputs:
            continue
        values = evaluate(sp.plan, inputs[s].bars, upto=set(sp.market))
        j = result.index[:, col]
        for i in sp.market:
            v = values[i]
            arr = np.asarray(v if np.ndim(v) else np.full(len(inputs[s].ends), v))
            out[(i, col)] = arr[j[j >= 0]]
    return out


def test_a_scan_over_real_bars_reads_the_per_symbol_values():
    sp, ws = scan_plan(COMPOSITE)
    frames = real_frames()
    names = tuple(frames)
    inputs = symbol_inputs(sp, frames, bar="1d", timezone=NY, ws=ws, universe=names)
    result = run_scan(sp, inputs, bar_seconds=86400, universe=names + ("NOPE",))
    assert result.picked.any()
    ref = per_symbol_gathered(sp, inputs, result)
    for (i, col), want in ref.items():
        have = result.index[:, col] >= 0
        assert same_values(result.gathered[i][have, col], want), (sp.plan.nodes[i].label, names[col])
    assert (result.status[:, -1] == 7).all()        # NOPE: no data


# ---- incremental rescans ---------------------------------------------------------------

def same_scan(a, b, e_a=0, e_b=0):
    assert a.symbols == b.symbols
    assert (a.status[e_a] == b.status[e_b]).all()
    assert a.rows(e_a)[0]["symbol"] == b.rows(e_b)[0]["symbol"]
    order = lambda r, e: [r.symbols[c] for c in np.argsort(np.where(r.picked[e], r.rank[e], np.inf))
                          if r.picked[e, c]]
    assert order(a, e_a) == order(b, e_b)
    for name in a.raw:
        assert close_values(a.raw[name][e_a], b.raw[name][e_b]), name
        assert close_values(a.norm[name][e_a], b.norm[name][e_b], 1e-10), name
    assert close_values(a.score[e_a], b.score[e_b], 1e-10)
    assert (a.klass[e_a] == b.klass[e_b]).all() and (a.grade[e_a] == b.grade[e_b]).all()
    assert [r["reason"] for r in a.rows(e_a)] == [r["reason"] for r in b.rows(e_b)]


def incremental_against_full(sp, ws, frames, days: int, universe=None):
    names = tuple(universe or frames)
    clock = np.unique(np.concatenate([f.index.as_unit("ns").asi8 for f in frames.values()]))
    cut_at = clock[-days - 1]
    history = {s: f[f.index.as_unit("ns").asi8 <= cut_at] for s, f in frames.items()}
    history = {s: f for s, f in history.items() if len(f)}
    state = ScanState(sp, symbol_inputs(sp, history, bar="1d", timezone=NY, ws=ws, universe=names),
                      bar_seconds=86400, universe=names)
    full_inputs = symbol_inputs(sp, frames, bar="1d", timezone=NY, ws=ws, universe=names)
    for t in clock[-days:]:
        bars = {s: f.loc[f.index.as_unit("ns").asi8 == t].iloc[0].to_dict()
                for s, f in frames.items() if s in history and (f.index.as_unit("ns").asi8 == t).any()}
        end = int(t + 86400 * 10**9)
        got = state.update_bars(end, bars)
        want = run_scan(sp, full_inputs, bar_seconds=86400, times=np.array([end]), universe=names)
        same_scan(got, want)
    return state


def test_rescans_bar_by_bar_equal_full_scans_on_random_bars(tmp_path):
    """A ScanState built on a history, then fed one bar per symbol at a time (a symbol without
    a bar one day, a NaN close another), scans as run_scan over the extended bars does."""
    frames = random_frames(30, 200)
    frames["R005"] = frames["R005"].drop(frames["R005"].index[-3])       # no bar that day: stale
    frames["R007"].iloc[-2, frames["R007"].columns.get_loc("close")] = np.nan
    for sp, ws in plans(tmp_path):
        incremental_against_full(sp, ws, frames, 6)


def test_rescans_bar_by_bar_equal_full_scans_on_real_bars(tmp_path):
    frames = real_frames()
    last = {s: f.index[-1] for s, f in frames.items()}
    assert len(set(last.values())) > 1           # ragged ends: some symbols go stale
    for sp, ws in plans(tmp_path):
        incremental_against_full(sp, ws, frames, 12, universe=tuple(frames) + ("NOPE",))


def test_an_update_needs_every_field_and_a_later_close():
    sp, ws = scan_plan(COMPOSITE, ())
    frames = random_frames(4, 80, ragged=False)
    state = ScanState(sp, symbol_inputs(sp, frames, bar="1d", timezone=NY, ws=ws, universe=tuple(frames)),
                      bar_seconds=86400, universe=tuple(frames))
    assert set(state.fields) == {"close", "volume", "high", "low"}
    with pytest.raises(ValueError, match="must close after"):
        state.update(state.time, {f: np.ones(4) for f in state.fields})
    with pytest.raises(KeyError, match="volume"):
        state.update(state.time + 86400 * 10**9, {"close": np.ones(4), "high": np.ones(4), "low": np.ones(4)})


# ---- the benchmark's equality, small ------------------------------------------------------

def test_the_benchmark_ranks_as_pandas_does():
    sys.path.insert(0, str(ROOT))
    from bench import scanner as bench

    got = bench.run(symbols=80, bars=120, repeat=2, quiet=True)
    assert got["picks"] == 25
    # a scan that differs is caught
    names = tuple(f"S{i:04d}" for i in range(3))
    theirs = pd.DataFrame({"symbol": ["S0001", "S0000"], "score": [50.0, 40.0]})
    with pytest.raises(AssertionError, match="picks differ"):
        bench.same([("S0000", 50.0), ("S0001", 40.0)], theirs, "x")
    with pytest.raises(AssertionError, match="scores differ"):
        bench.same([("S0001", 50.0), ("S0000", 40.0 + 1e-6)], theirs, "x")
    assert names
