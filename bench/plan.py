"""Benchmark: compile a 10-rule strategy (6 distinct indicators, repeated across rules) and
evaluate it on 1,000,000 bars; then the streaming cost per bar for the same Plan.

Prints a table; not a test. Targets: compile + evaluate on 1M bars under 0.1 s; streaming under
50 microseconds per bar per symbol. Run: python bench/plan.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from engine.plan.build import build_plan, load_strategy
from engine.plan.evaluate import Bars, Stream, evaluate

HERE = Path(__file__).resolve().parent
N = 1_000_000


def bars(n: int) -> Bars:
    rng = np.random.default_rng(42)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.0005, n)))
    spread = np.abs(rng.normal(0, 0.0008, n)) * close
    high, low = close + spread, close - spread
    open_ = np.concatenate(([close[0]], close[:-1]))
    volume = rng.integers(1_000, 50_000, n).astype(np.float64)
    return Bars({"open": open_, "high": high, "low": low, "close": close, "volume": volume})


def best(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    data = bars(N)
    t = time.perf_counter()
    doc, ws = load_strategy(HERE / "ten_rules.yaml")
    t_load = time.perf_counter() - t
    t_compile = best(lambda: build_plan(doc, ws))
    plan = build_plan(doc, ws)
    distinct = sorted({n.label for n in plan.nodes if n.op == "call"})
    t_eval = best(lambda: evaluate(plan, data))
    values = evaluate(plan, data)
    fired = {r.name: int(np.count_nonzero(values[r.when])) for r in plan.rules}

    stream = Stream(plan)
    fields = list(data.fields)
    rows = [{k: float(data.fields[k][i]) for k in fields} for i in range(200_000)]
    t = time.perf_counter()
    for row in rows:
        stream.update(row)
    t_stream = (time.perf_counter() - t) / len(rows)

    print(f"plan: {len(plan.rules)} rules, {len(plan.nodes)} nodes, {len(distinct)} distinct function calls:"
          f" {', '.join(distinct)}")
    print(f"{'step':<44}{'time':>12}{'target':>12}{'ratio':>8}")
    rows_out = [
        ("load + validate YAML (once)", t_load, None),
        ("compile document -> Plan", t_compile, None),
        (f"evaluate Plan on {N:,} bars (vectorised)", t_eval, None),
        ("compile + evaluate", t_compile + t_eval, 0.1),
        ("streaming, per bar per symbol", t_stream, 50e-6),
    ]
    for name, secs, target in rows_out:
        shown = f"{secs * 1e6:.1f} us" if secs < 1e-3 else f"{secs * 1e3:.1f} ms"
        tshown = "" if target is None else (f"{target * 1e6:.0f} us" if target < 1e-3 else f"{target * 1e3:.0f} ms")
        ratio = "" if target is None else f"{secs / target:.2f}"
        print(f"{name:<44}{shown:>12}{tshown:>12}{ratio:>8}")
    print("signals per rule on the synthetic series:", fired)


if __name__ == "__main__":
    main()
