"""Benchmark: the composite scanner (strategies/scanners/composite.yaml: five factors, the
prefilter, grades and classes) over N symbols x M bars, at every rescan of the history, and
the composite strategy's backtest over that universe (the scan and the kernel).

Times, on bars already in memory (loading is not timed): the scanner's one Plan evaluated for
the whole universe at once (engine/plan/batched.py) then the cross-section at every scan time
at once (normalising, the composite, ranks, picks, grades, classes); one scan at the last bar
(`qtrade scan`'s work after loading); and, for comparison, the Plan evaluated symbol by symbol
(engine/plan/evaluate.py, what the scan did before the panel). bench/scanner.py has the scanner
at 5,000 symbols against pandas, and the incremental rescan.

Bars are seeded random walks (not market data: this measures speed only), daily bars for
(a) and (b), one-minute bars rescanned every 5 minutes for (c).
Not a test. Run: python bench/scan.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a source checkout

from engine.check import validate  # noqa: E402
from engine.runtime.scanning import scanner_of, symbol_inputs  # noqa: E402
from engine.scanner import compile_scanner, run_scan  # noqa: E402
from engine.scanner.workspace import scan_times  # noqa: E402

COMPOSITE = ROOT / "strategies" / "scanners" / "composite.yaml"
NY = "America/New_York"


def random_walk(n: int, seed: int, index: pd.DatetimeIndex) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 20 + 180 * rng.random() * np.exp(np.cumsum(rng.normal(0, 0.015, n)))
    open_ = close * np.exp(rng.normal(0, 0.004, n))
    high = np.maximum(open_, close) * (1 + rng.random(n) * 0.01)
    low = np.minimum(open_, close) * (1 - rng.random(n) * 0.01)
    volume = rng.lognormal(14.5, 0.8, n)
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=index)


def universe(symbols: int, bars: int, bar: str) -> dict[str, pd.DataFrame]:
    if bar == "1d":
        index = pd.bdate_range("2010-01-04", periods=bars, tz=NY)
    else:
        days = pd.bdate_range("2020-01-06", periods=bars // 390 + 1, tz=NY)
        index = pd.DatetimeIndex(np.concatenate([d + pd.Timedelta(hours=9, minutes=30) +
                                                 pd.to_timedelta(np.arange(390), unit="min") for d in days]))[:bars]
    return {f"S{i:03d}": random_walk(bars, 100 + i, index) for i in range(symbols)}


def best(fn, repeat: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def case(label: str, symbols: int, bars: int, bar: str, rescan: float | None, repeat: int) -> None:
    report = validate([str(COMPOSITE)])
    ws = report.workspace
    spec = scanner_of(ws.load(COMPOSITE), ws)
    frames = universe(symbols, bars, bar)
    names = tuple(frames)
    spec = type(spec)(**{**spec.__dict__, "universe": names, "rescan": rescan})
    t_compile, sp = best(lambda: compile_scanner(spec), repeat)
    inputs = symbol_inputs(sp, frames, bar=bar, timezone=NY, ws=ws)
    seconds = 86400.0 if bar == "1d" else 60.0
    times = scan_times(inputs, rescan)
    t_all, result = best(lambda: run_scan(sp, inputs, bar_seconds=seconds, times=times, universe=names), repeat)
    t_one, _ = best(lambda: run_scan(sp, inputs, bar_seconds=seconds, times=times[-1:], universe=names), repeat)
    from engine.plan.evaluate import evaluate

    t_eval, _ = best(lambda: [evaluate(sp.plan, inp.bars, upto=set(sp.market)) for inp in inputs.values()], repeat)
    picks = int(result.picked.sum())
    print(f"{label}: {symbols} symbols x {bars:,} {bar} bars, {len(times):,} scans "
          f"({len(sp.plan.nodes)} plan nodes, {len(sp.market)} gathered per symbol)")
    print(f"  compile {t_compile * 1e3:8.1f} ms")
    print(f"  every scan of the history {t_all:8.3f} s  ({t_all / max(len(times), 1) * 1e6:.1f} us a scan); "
          f"{picks:,} picks; the Plan symbol by symbol instead: {t_eval:.3f} s "
          f"({t_eval / symbols * 1e3:.2f} ms a symbol)")
    print(f"  one scan at the last bar {t_one:8.3f} s")


def strategy_case(symbols: int, bars: int, repeat: int) -> None:
    """The composite strategy (daily) over a random-walk universe: prepare (with the scan) and run."""
    import tempfile

    from engine.runtime import backtest as bt

    frames = universe(symbols, bars, "1d")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        for s, f in frames.items():
            f.index = f.index.tz_localize(None)
            f.rename(columns=str.title).to_csv(data / f"{s}.csv", index_label="Date")
        (Path(tmp) / "u.yaml").write_text("kind: universe\nname: u\nsymbols: [" + ", ".join(frames) + "]\n")
        text = (ROOT / "strategies" / "composite_scanner.yaml").read_text()
        text = text.replace("../universes/megacaps.yaml", str(Path(tmp) / "u.yaml")).replace(
            "scanners/composite.yaml", str(Path(tmp) / "c.yaml")).replace("source: data/", f"source: {data}/")
        text = text.replace("backtest: {start: 2008-01-02, end: 2017-12-29}", "")
        text = text.replace("risk:\n  extends: risk/small_account.yaml", f"risk:\n  extends: {ROOT}/strategies/risk/"
                            "small_account.yaml")
        (Path(tmp) / "s.yaml").write_text(text)
        scanner = COMPOSITE.read_text().replace("../../universes/megacaps.yaml", str(Path(tmp) / "u.yaml")).replace(
            "source: ../data/", f"source: {data}/")
        (Path(tmp) / "c.yaml").write_text(scanner)
        t_prep, prep = best(lambda: bt.prepare(Path(tmp) / "s.yaml"), repeat)
        t_run, result = best(lambda: bt.run(prep, run_id="bench"), repeat)
        print(f"(d) the composite strategy, {symbols} symbols x {bars:,} daily bars: prepare (load, resample, scan) "
              f"{t_prep:.2f} s, run (the kernel) {t_run:.2f} s; {len(result.ledger.trades):,} trades")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    case("(a)", 67, 2_520, "1d", 86400.0, args.repeat)
    case("(b)", 500, 2_520, "1d", 86400.0, args.repeat)
    case("(c)", 67, 19_500, "1m", 300.0, args.repeat)
    strategy_case(67, 2_520, 1)


if __name__ == "__main__":
    main()
