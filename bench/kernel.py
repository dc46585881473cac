"""Benchmark: the trading kernel (runtime/kernel.py, the loop every qtrade run uses) against a
numba loop (the floor) and vectorbt, on the two cases of the kernel issue:

(a) SMA 10/30 crossover, long, all in at the next open, with a 0.2% stop and a 0.4% target from
    the entry price, on 1,000,000 one-minute bars (most exits happen inside a bar, at the level or
    at the open when the bar gaps through it; a stop before a target in one bar);
(b) the same crossover on 100 symbols x 2,519 daily bars with one shared cash pool, each entry
    sized at 1% of equity (qtrade: equity marked at the last closes; vectorbt: its closest
    model, Percent of the cash, grouped with cash sharing).

qtrade is timed as `backtest.run(prepared, fast=False)`: the plan evaluated over the bars and the
kernel's run (the venue, the order tracker, the ledger) on bars already loaded. The numba loop of
(a) follows qtrade's rules exactly, and the check compares its trades and final equity with the
kernel's; vectorbt's stops follow its own rules (its trade count is printed, not compared).

`--bytecodes` also counts the Python bytecodes the kernel's run executes per trade (traced, so
slow: use it with a smaller --bars for case a). Unlike the seconds it does not move with the
machine's load, which makes it the figure to compare two versions of the kernel by on a busy
machine; it leaves out the time spent in C (numpy, the interpreter's own calls).

Not a test: `pip install numba vectorbt` into the venv. Data under /tmp, never in the repository.
Run: python bench/kernel.py [--repeat 3] [--bars 1000000] [--case a|b|both] [--bytecodes]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from backtest import TMP, minute_starts, random_walk, write_parquet  # noqa: E402
from engine.runtime import backtest as qb  # noqa: E402

STOP, TARGET = 0.002, 0.004

STOPS = """\
kind: strategy
name: bench-sma-stops
universe: [X]
data: {{bar: 1m, session: regular, source: {source}}}
indicators:
  fast_ma: sma(close, 10)
  slow_ma: sma(close, 30)
entry:
  - name: golden cross
    when: crosses_above(fast_ma, slow_ma)
    order: buy
exit:
  - name: stop
    stop: position.entry_price * (1 - {stop})
  - name: target
    target: position.entry_price * (1 + {target})
  - name: death cross
    when: crosses_below(fast_ma, slow_ma)
orders:
  buy: {{action: buy, type: market, quantity: {{percent_of_equity: 100%}}}}
schedule: {{timezone: America/New_York, every: 1m}}
backtest: {{cash: 100000, account: cash}}
"""

POOLED = """\
kind: strategy
name: bench-pooled
universe: [{symbols}]
data: {{bar: 1d, source: {source}}}
indicators:
  fast_ma: sma(close, 10)
  slow_ma: sma(close, 30)
entry:
  - name: golden cross
    when: crosses_above(fast_ma, slow_ma)
    order: buy
exit:
  - name: death cross
    when: crosses_below(fast_ma, slow_ma)
orders:
  buy: {{action: buy, type: market, quantity: {{percent_of_equity: 1%}}}}
backtest: {{cash: 1000000, account: cash}}
"""


def best(fn, repeat: int):
    times, value = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t)
    return min(times), value


def bytecodes(run) -> tuple[int, object]:
    """The Python bytecodes executed by run() (every frame traced opcode by opcode), and its result."""
    count = 0

    def on_opcode(frame, event, arg):
        nonlocal count
        if event == "opcode":
            count += 1
        return on_opcode

    def on_call(frame, event, arg):
        frame.f_trace_opcodes, frame.f_trace_lines = True, False
        return on_opcode

    sys.settrace(on_call)
    try:
        result = run()
    finally:
        sys.settrace(None)
    return count, result


def count_kernel(prep, args) -> None:
    if args.bytecodes:
        n, result = bytecodes(lambda: qb.run(prep, fast=False))
        trades = max(len(result.ledger.trades), 1)
        print(f"  kernel: {n:,} bytecodes, {n / trades:,.0f} per trade")


def numba_stops():
    from numba import njit

    @njit(cache=True)
    def sma(x, n):
        out = np.full(len(x), np.nan)
        s = 0.0
        for i in range(len(x)):
            s += x[i]
            if i >= n - 1:
                out[i] = s / n
                s -= x[i - n + 1]
        return out

    @njit(cache=True)
    def run(o, h, l, c, cash, stop, target):
        n = len(c)
        f, s = sma(c, 10), sma(c, 30)
        trades = 0
        qty = 0.0
        entry = 0.0
        want_in = want_out = False
        for i in range(n):
            if want_in:                 # decided at the previous close: fill at this open
                q = math.floor(cash / o[i] + 1e-9)
                while q > 0 and q * o[i] > cash + 1e-9:
                    q -= 1
                if q > 0:
                    cash -= q * o[i]
                    qty, entry = q, o[i]
                want_in = False
            elif want_out:
                cash += qty * o[i]
                qty, trades, want_out = 0.0, trades + 1, False
            elif qty > 0 and i > 0:     # protective orders work from the bar after the entry's
                # the levels on the cent grid, as qtrade sends them (a sell's rounded up: on_tick)
                lvl_s = round(math.ceil(entry * (1 - stop) / 0.01 - 1e-6) * 0.01, 10)
                lvl_t = round(math.ceil(entry * (1 + target) / 0.01 - 1e-6) * 0.01, 10)
                if l[i] <= lvl_s:
                    cash += qty * min(o[i], lvl_s)
                    qty, trades = 0.0, trades + 1
                elif h[i] >= lvl_t:
                    cash += qty * max(o[i], lvl_t)
                    qty, trades = 0.0, trades + 1
            if i >= 30:
                up = f[i] > s[i] and not (f[i - 1] > s[i - 1])
                down = f[i] < s[i] and not (f[i - 1] < s[i - 1])
                if qty == 0.0 and up and i + 1 < n:
                    want_in = True
                elif qty > 0.0 and down and i + 1 < n:
                    want_out = True
        return trades, cash + qty * c[n - 1]

    return run


def vectorbt_stops(b):
    import vectorbt as vbt

    close = pd.Series(b["close"])
    fast, slow = vbt.MA.run(close, 10), vbt.MA.run(close, 30)
    entries = fast.ma_crossed_above(slow).to_numpy()
    exits = fast.ma_crossed_below(slow).to_numpy()
    entries = np.concatenate([[False], entries[:-1]])
    exits = np.concatenate([[False], exits[:-1]])
    pf = vbt.Portfolio.from_signals(close, entries, exits, price=pd.Series(b["open"]), open=pd.Series(b["open"]),
                                    high=pd.Series(b["high"]), low=pd.Series(b["low"]), sl_stop=STOP, tp_stop=TARGET,
                                    size=np.inf, size_granularity=1, init_cash=100_000.0, direction="longonly")
    return pf.trades.count(), float(pf.final_value())


def numba_pooled():
    from numba import njit

    @njit(cache=True)
    def run(o, c, cash, frac):
        t, m = c.shape
        pos = np.zeros(m)
        trades = 0
        f = np.full((t, m), np.nan)
        s = np.full((t, m), np.nan)
        for j in range(m):
            a = 0.0
            b = 0.0
            for i in range(t):
                a += c[i, j]
                b += c[i, j]
                if i >= 9:
                    f[i, j] = a / 10
                    a -= c[i - 9, j]
                if i >= 29:
                    s[i, j] = b / 30
                    b -= c[i - 29, j]
        want = np.zeros(m, np.int8)
        for i in range(t):
            equity = cash
            for j in range(m):
                if pos[j] != 0.0:
                    equity += pos[j] * c[i - 1, j]
            for j in range(m):
                if want[j] == 1:
                    q = math.floor(frac * equity / o[i, j] + 1e-9)
                    if q > 0 and q * o[i, j] <= cash:
                        cash -= q * o[i, j]
                        pos[j] = q
                elif want[j] == -1:
                    cash += pos[j] * o[i, j]
                    pos[j] = 0.0
                    trades += 1
                want[j] = 0
            if i >= 30:
                for j in range(m):
                    if pos[j] == 0.0 and f[i, j] > s[i, j] and not (f[i - 1, j] > s[i - 1, j]):
                        want[j] = 1
                    elif pos[j] > 0.0 and f[i, j] < s[i, j] and not (f[i - 1, j] < s[i - 1, j]):
                        want[j] = -1
        equity = cash
        for j in range(m):
            equity += pos[j] * c[t - 1, j]
        return trades, equity

    return run


def vectorbt_pooled(o, c):
    import vectorbt as vbt

    close = pd.DataFrame(c)
    fast, slow = vbt.MA.run(close, 10), vbt.MA.run(close, 30)
    entries = fast.ma_crossed_above(slow).to_numpy()
    exits = fast.ma_crossed_below(slow).to_numpy()
    entries = np.vstack([np.zeros((1, c.shape[1]), bool), entries[:-1]])
    exits = np.vstack([np.zeros((1, c.shape[1]), bool), exits[:-1]])
    pf = vbt.Portfolio.from_signals(close, entries, exits, price=pd.DataFrame(o), size=0.01, size_type="percent",
                                    size_granularity=1, init_cash=1_000_000.0, cash_sharing=True, group_by=True,
                                    direction="longonly")
    return int(pf.trades.count().sum()), float(pf.final_value())


def case_a(args) -> None:
    n = args.bars
    TMP.mkdir(parents=True, exist_ok=True)
    data = TMP / f"kernel_stops_{n}.parquet"
    b = random_walk(n, seed=7)
    if not data.exists():
        write_parquet(data, minute_starts(n), b)
    path = TMP / "kernel_stops.yaml"
    path.write_text(STOPS.format(source=data, stop=f"{STOP * 100:g}%", target=f"{TARGET * 100:g}%"))
    prep = qb.prepare(path)
    t_q, result = best(lambda: qb.run(prep, fast=False), args.repeat)
    trades = result.ledger.trades
    inside = sum(t.exit_rule in ("stop", "target") for t in trades)
    nb = numba_stops()
    nb(b["open"], b["high"], b["low"], b["close"], 100_000.0, STOP, TARGET)   # compile
    t_nb, (nb_trades, nb_equity) = best(lambda: nb(b["open"], b["high"], b["low"], b["close"], 100_000.0, STOP,
                                                   TARGET), args.repeat)
    rows = [("numba loop (qtrade's rules)", t_nb, f"{nb_trades} trades, equity {nb_equity:,.2f}"),
            ("qtrade kernel: backtest.run(fast=False)", t_q,
             f"{len(trades)} trades ({inside} inside a bar), equity {result.final_equity:,.2f}; "
             f"{'agrees with numba' if nb_trades == len(trades) and abs(nb_equity - result.final_equity) < 0.01 else 'DIFFERS from numba'}")]
    try:
        vectorbt_stops(b)
        t_vb, (vb_trades, vb_equity) = best(lambda: vectorbt_stops(b), args.repeat)
        rows.insert(1, ("vectorbt from_signals (sl_stop, tp_stop)", t_vb,
                        f"{vb_trades} trades, equity {vb_equity:,.2f} (its own stop rules)"))
    except ImportError:
        t_vb = float("nan")
    show(f"(a) {n:,} minute bars, SMA 10/30 with a {STOP:.1%} stop and a {TARGET:.1%} target", rows, t_nb, t_vb)
    print(f"  kernel: {1e6 * t_q / max(len(trades), 1):.1f} us per trade")
    count_kernel(prep, args)


def case_b(args) -> None:
    TMP.mkdir(parents=True, exist_ok=True)
    folder = TMP / "kernel_pooled"
    folder.mkdir(exist_ok=True)
    days = pd.bdate_range("2008-01-01", periods=2519, tz="America/New_York")
    symbols = [f"S{i:03d}" for i in range(100)]
    opens, closes = [], []
    for i, sym in enumerate(symbols):
        walk = random_walk(2519, seed=100 + i)
        opens.append(walk["open"])
        closes.append(walk["close"])
        f = folder / f"{sym}.csv"
        if not f.exists():
            pd.DataFrame({"date": days.strftime("%Y-%m-%d"), **walk}).to_csv(f, index=False)
    o, c = np.column_stack(opens), np.column_stack(closes)
    path = TMP / "kernel_pooled.yaml"
    path.write_text(POOLED.format(symbols=", ".join(symbols), source=folder))
    prep = qb.prepare(path)
    t_q, result = best(lambda: qb.run(prep, fast=False), args.repeat)
    nb = numba_pooled()
    nb(o, c, 1_000_000.0, 0.01)
    t_nb, (nb_trades, nb_equity) = best(lambda: nb(o, c, 1_000_000.0, 0.01), args.repeat)
    rows = [("numba loop", t_nb, f"{nb_trades} round trips, equity {nb_equity:,.2f}"),
            ("qtrade kernel: backtest.run(fast=False)", t_q,
             f"{len(result.ledger.trades)} round trips, equity {result.final_equity:,.2f}")]
    try:
        vectorbt_pooled(o, c)
        t_vb, (vb_trades, vb_equity) = best(lambda: vectorbt_pooled(o, c), args.repeat)
        rows.insert(1, ("vectorbt from_signals (cash sharing)", t_vb,
                        f"{vb_trades} trades, equity {vb_equity:,.2f} (1% of cash, not of equity)"))
    except ImportError:
        t_vb = float("nan")
    show("(b) 100 symbols x 2,519 daily bars, one cash pool, 1% of equity per entry", rows, t_nb, t_vb)
    count_kernel(prep, args)


def show(title: str, rows, floor: float, vectorbt: float) -> None:
    print(f"\n{title}")
    print(f"  {'implementation':<42} {'seconds':>8} {'x numba':>8} {'x vectorbt':>10}  outcome")
    for name, seconds, what in rows:
        print(f"  {name:<42} {seconds:>8.3f} {seconds / floor:>8.1f} {seconds / vectorbt:>10.2f}  {what}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bars", type=int, default=1_000_000)
    ap.add_argument("--case", choices=["a", "b", "both"], default="both")
    ap.add_argument("--bytecodes", action="store_true", help="also count the kernel's Python bytecodes per trade")
    args = ap.parse_args()
    if args.case in ("a", "both"):
        case_a(args)
    if args.case in ("b", "both"):
        case_b(args)


if __name__ == "__main__":
    main()
