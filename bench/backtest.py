"""Benchmark: an SMA 10/30 crossover backtest in qtrade against backtrader, vectorbt, plain numpy
and a numba loop (the floor), on (a) 1,000,000 one-minute bars and (b) 100 symbols x 10,000 bars.

The rule everywhere: long only; when SMA(close, 10) crosses above SMA(close, 30) at a bar's close,
buy at the next bar's open with all the cash, whole shares (cash account, no commission); when it
crosses back below, sell everything at the next open. A signal on the last bar is never filled;
a position still open at the end is marked at the last close. Every implementation computes its
own indicators from the bars; the check compares their trades (entry and exit bar, price and
quantity) and final equity.

qtrade is timed as its backtest core: `backtest.run(prepared)` = signals (the Plan over the
bars) + the run to every trade, the cash and the final equity (the fast path for a simple
strategy like this one, engine/runtime/fastpath.py; the Runner is timed too, forced with
fast=False), on bars already loaded by `backtest.prepare` (loading is timed on its own, and so
are the journal and the HTML report). What a run builds only when first read (the equity curve,
the record columns) is timed separately and added for a second ratio: the numba loop and
vectorbt's from_signals are timed without an equity curve too.
The end-to-end `qtrade backtest` CLI on a 1M-bar Parquet file with --journal and --report is
timed as a subprocess (Python start-up and imports included).

(b): each symbol gets its own 100,000 of cash in every implementation (qtrade: one run per
symbol on the already-loaded universe; vectorbt: one call, 100 columns without cash sharing;
backtrader: a few symbols, one Cerebro each, scaled up to 100 and marked so). The figure for one
qtrade run over the whole universe is printed too: one cash pool, a fixed 100 shares per trade
so that no symbol waits for cash; its trades must be the per-symbol runs' trades.

Not a test. backtrader, vectorbt and numba are not qtrade dependencies: `pip install backtrader
vectorbt numba` into the venv. Data files are written under /tmp, never into the repository.
Run: python bench/backtest.py [--no-backtrader] [--bt-symbols 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a source checkout

from engine.runtime import backtest as qb  # noqa: E402
from engine.runtime.journal import Journal  # noqa: E402

TMP = Path(os.environ.get("QTRADE_BENCH_DIR", "/tmp/qtrade_bench"))
FAST, SLOW = 10, 30
CASH = 100_000.0
N_BIG = 1_000_000
N_SYMBOLS, N_EACH = 100, 10_000

STRATEGY = """\
kind: strategy
name: bench-sma-crossover
universe: [{symbols}]
data: {{bar: 1m, session: regular, source: {source}}}
params: {{fast: {fast}, slow: {slow}}}
indicators:
  fast_ma: sma(close, fast)
  slow_ma: sma(close, slow)
entry:
  - name: golden cross
    when: crosses_above(fast_ma, slow_ma)
    order: buy
exit:
  - name: death cross
    when: crosses_below(fast_ma, slow_ma)
orders:
  buy: {{action: buy, type: market, quantity: {quantity}}}
schedule: {{timezone: America/New_York, every: 1m}}
backtest: {{cash: {cash}, account: cash}}
"""

ALL_IN = "{percent_of_equity: 100%}"


# ---- data ------------------------------------------------------------------------------------

def minute_starts(n: int, first_day: str = "2005-01-03") -> pd.DatetimeIndex:
    """The start times of n regular-session NYSE minutes (early closes included), UTC."""
    import pandas_market_calendars as mcal

    days = int(n / 380) + 30
    sched = mcal.get_calendar("NYSE").schedule(first_day, pd.Timestamp(first_day) + pd.Timedelta(days=days * 7 // 5 + 30))
    opens = sched["market_open"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[ns]").astype(np.int64)
    closes = sched["market_close"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[ns]").astype(np.int64)
    minutes = ((closes - opens) // 60_000_000_000).astype(np.int64)
    ends = np.cumsum(minutes)
    k = int(np.searchsorted(ends, n)) + 1
    opens, minutes = opens[:k], minutes[:k]
    within = np.arange(int(minutes.sum())) - np.repeat(np.cumsum(minutes) - minutes, minutes)
    ns = np.repeat(opens, minutes) + within * 60_000_000_000
    return pd.DatetimeIndex(ns[:n].astype("datetime64[ns]")).tz_localize("UTC")


def random_walk(n: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded OHLCV minutes: a log random walk, opens a little away from the previous close."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.0008, n)))
    open_ = np.empty(n)
    open_[0] = 100.0
    open_[1:] = close[:-1] * np.exp(rng.normal(0.0, 0.0002, n - 1))
    wick = np.abs(rng.normal(0.0, 0.0004, (2, n)))
    high = np.maximum(open_, close) * (1 + wick[0])
    low = np.minimum(open_, close) * (1 - wick[1])
    volume = rng.integers(100, 10_000, n).astype(np.float64)
    # Not rounded to cents: with cent prices SMA(10) == SMA(30) happens exactly now and then, and
    # whether such a tie counts as a cross is decided by each implementation's float rounding
    # (a running sum, a convolution, ...), not by the backtest semantics compared here.
    return {"open": open_, "high": high, "low": low, "close": close, "volume": volume}


def write_parquet(path: Path, index: pd.DatetimeIndex, bars: dict[str, np.ndarray]) -> None:
    frame = pd.DataFrame({"timestamp": index, **bars})
    frame.to_parquet(path, index=False)


def strategy_file(path: Path, symbols: list[str], source: Path, quantity: str = ALL_IN, cash: float = CASH) -> Path:
    path.write_text(STRATEGY.format(symbols=", ".join(symbols), source=source, fast=FAST, slow=SLOW,
                                    quantity=quantity, cash=cash))
    return path


# ---- a backtest's outcome, for the agreement check -------------------------------------------

@dataclasses.dataclass
class Outcome:
    trades: np.ndarray     # rows: entry bar, entry price, exit bar (-1: open), exit price, quantity
    equity: float

    def same_as(self, other: "Outcome") -> tuple[bool, str]:
        a, b = self.trades, other.trades
        if a.shape != b.shape:
            return False, f"{len(a)} vs {len(b)} trades"
        bad = np.flatnonzero(~np.all(np.isclose(a, b, rtol=0, atol=1e-9, equal_nan=True), axis=1))
        if len(bad):
            return False, f"trade {bad[0]}: {a[bad[0]].tolist()} vs {b[bad[0]].tolist()}"
        if round(self.equity, 2) != round(other.equity, 2):
            return False, f"final equity {self.equity:.2f} vs {other.equity:.2f}"
        return True, "same"


def trades_array(rows) -> np.ndarray:
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


# ---- qtrade ----------------------------------------------------------------------------------

def qtrade_outcome(result: qb.Result, symbol: str) -> Outcome:
    rows = [(t.entry_bar, t.entry_price, t.exit_bar, t.exit_price, t.quantity)
            for t in result.ledger.trades if t.symbol == symbol]
    pos = result.ledger.positions.get(symbol)
    if pos is not None:
        rows.append((pos.entry_bar, pos.avg_price, -1, np.nan, pos.quantity))
    return Outcome(trades_array(rows), result.final_equity)


def materialise(result: qb.Result) -> float:
    """Seconds to build what a run leaves to be built when first read: the equity curve and
    the record columns (fills, round trips with MAE/MFE, decisions, orders)."""
    t = time.perf_counter()
    result.equity
    for records in (result.ledger.fills, result.ledger.trades, result.runner.decisions, result.runner.orders):
        getattr(records, "columns", None)
    return time.perf_counter() - t


# ---- numba: the floor ------------------------------------------------------------------------

def numba_kernel():
    from numba import njit

    @njit(cache=True)
    def run(open_, close, fast, slow, cash):
        n = len(close)
        out = np.empty((n // 2 + 1, 5))
        k = 0
        sum_f = 0.0
        sum_s = 0.0
        prev_up = False
        prev_down = False
        prev_valid = False
        want_entry = False
        want_exit = False
        qty = 0.0
        for i in range(n):
            # orders decided at the previous close fill at this open
            if want_entry:
                price = open_[i]
                q = math.floor(cash / price + 1e-9)
                while q > 0 and q * price > cash + 1e-9:
                    q -= 1
                if q > 0:
                    cash -= q * price
                    qty = q
                    out[k, 0] = i
                    out[k, 1] = price
                want_entry = False
            elif want_exit:
                price = open_[i]
                cash += qty * price
                out[k, 2] = i
                out[k, 3] = price
                out[k, 4] = qty
                k += 1
                qty = 0.0
                want_exit = False
            # SMAs at this close, as TA-Lib computes them (add the new value, read, drop the oldest)
            c = close[i]
            sum_f += c
            sum_s += c
            if i >= slow - 1:
                f = sum_f / fast
                s = sum_s / slow
                up = f > s
                down = f < s
                if prev_valid:
                    if qty == 0.0 and up and not prev_up:
                        want_entry = i + 1 < n
                    elif qty > 0.0 and down and not prev_down:
                        want_exit = i + 1 < n
                prev_up, prev_down, prev_valid = up, down, True
            if i >= fast - 1:
                sum_f -= close[i - fast + 1]
            if i >= slow - 1:
                sum_s -= close[i - slow + 1]
        equity = cash
        if qty > 0.0:
            out[k, 2] = -1
            out[k, 3] = np.nan
            out[k, 4] = qty
            k += 1
            equity += qty * close[n - 1]
        return out[:k], equity

    return run


def _numba_outcome(kernel, bars) -> Outcome:
    trades, equity = kernel(bars["open"], bars["close"], FAST, SLOW, CASH)
    return Outcome(trades, equity)


# ---- plain numpy -----------------------------------------------------------------------------

def numpy_backtest(bars) -> Outcome:
    """Signals vectorised; the trades chained and compounded in a loop over trades (not bars)."""
    open_, close = bars["open"], bars["close"]
    n = len(close)

    def sma(x, length):
        out = np.full(n, np.nan)
        out[length - 1:] = np.convolve(x, np.ones(length), "valid") / length
        return out

    fast, slow = sma(close, FAST), sma(close, SLOW)
    valid = ~np.isnan(slow)
    above, below = (fast > slow) & valid, (fast < slow) & valid
    both = valid[1:] & valid[:-1]
    ups = (np.flatnonzero(above[1:] & ~above[:-1] & both) + 1)
    downs = (np.flatnonzero(below[1:] & ~below[:-1] & both) + 1)
    ups, downs = ups[ups + 1 < n], downs[downs + 1 < n]  # a signal on the last bar never fills
    # for each entry signal the first exit signal at or after its fill bar, and vice versa
    exit_after = np.searchsorted(downs, ups + 1).tolist()
    entry_after = np.searchsorted(ups, downs + 1).tolist()
    ups_l, downs_l, opens = ups.tolist(), downs.tolist(), open_.tolist()
    rows = []
    cash = CASH
    j = 0
    while j < len(ups_l):
        e = ups_l[j] + 1
        price = opens[e]
        q = math.floor(cash / price + 1e-9)
        while q > 0 and q * price > cash + 1e-9:
            q -= 1
        x = exit_after[j]
        if x == len(downs_l):
            rows.append((e, price, -1, np.nan, q))
            cash -= q * price
            return Outcome(trades_array(rows), cash + q * close[-1])
        xb = downs_l[x] + 1
        rows.append((e, price, xb, opens[xb], q))
        cash += q * (opens[xb] - price)
        j = entry_after[x]
    return Outcome(trades_array(rows), cash)


# ---- vectorbt --------------------------------------------------------------------------------

def vectorbt_backtest(open_: np.ndarray, close: np.ndarray):
    """Portfolio.from_signals: signals shifted one bar and filled at that bar's open, as much as
    the cash buys in whole shares (size=inf, size_granularity=1); columns are independent."""
    import vectorbt as vbt

    close_df = pd.DataFrame(close)
    fast = vbt.MA.run(close_df, FAST)
    slow = vbt.MA.run(close_df, SLOW)
    entries = fast.ma_crossed_above(slow).to_numpy()
    exits = fast.ma_crossed_below(slow).to_numpy()
    entries = np.vstack([np.zeros((1, entries.shape[1]), bool), entries[:-1]])
    exits = np.vstack([np.zeros((1, exits.shape[1]), bool), exits[:-1]])
    return vbt.Portfolio.from_signals(close_df, entries, exits, price=pd.DataFrame(open_), size=np.inf,
                                      size_granularity=1, init_cash=CASH, fees=0.0, direction="longonly",
                                      accumulate=False)


def vectorbt_outcomes(pf, columns: int) -> list[Outcome]:
    rec = pf.orders.values
    value = pf.final_value().to_numpy()
    out = []
    for col in range(columns):
        r = rec[rec["col"] == col]
        buys, sells = r[r["side"] == 0], r[r["side"] == 1]
        rows = [(b["idx"], b["price"], s["idx"], s["price"], b["size"]) for b, s in zip(buys, sells)]
        if len(buys) > len(sells):
            b = buys[-1]
            rows.append((b["idx"], b["price"], -1, np.nan, b["size"]))
        out.append(Outcome(trades_array(rows), float(value[col])))
    return out


# ---- backtrader ------------------------------------------------------------------------------

def backtrader_backtest(open_, high, low, close, index) -> Outcome:
    """One Cerebro over one symbol. The entry is sized in next_open (cheat-on-open) from the
    open it fills at, like qtrade's all-in sizing; the exit is a market close()."""
    import backtrader as bt

    class Cross(bt.Strategy):
        def __init__(self):
            self.cross = bt.ind.CrossOver(bt.ind.SMA(self.data.close, period=FAST),
                                          bt.ind.SMA(self.data.close, period=SLOW))
            self.want = False
            self.rows = []

        def notify_order(self, order):
            if order.status == order.Completed:
                bar = len(self.data) - 1
                if order.isbuy():
                    self.rows.append([bar, order.executed.price, -1, np.nan, order.executed.size])
                else:
                    self.rows[-1][2:4] = [bar, order.executed.price]

        def next_open(self):
            if self.want and not self.position:
                price, cash = self.data.open[0], self.broker.getcash()
                q = math.floor(cash / price + 1e-9)
                while q > 0 and q * price > cash + 1e-9:
                    q -= 1
                if q > 0:
                    self.buy(size=q)
            self.want = False

        def next(self):
            if not self.position:
                self.want = self.cross[0] > 0
            elif self.cross[0] < 0:
                self.close()

    frame = pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": 0.0},
                         index=index.tz_localize(None))
    cerebro = bt.Cerebro(stdstats=False, cheat_on_open=True)
    cerebro.adddata(bt.feeds.PandasData(dataname=frame, openinterest=None))
    cerebro.broker.setcash(CASH)
    cerebro.broker.set_checksubmit(False)
    cerebro.addstrategy(Cross)
    strat = cerebro.run()[0]
    return Outcome(trades_array(strat.rows), cerebro.broker.getvalue())


# ---- timing and printing ---------------------------------------------------------------------

def best(fn, repeat: int):
    times, value = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t)
    return min(times), value


def table(title: str, rows: list[tuple[str, float, str]], floor: float) -> None:
    print(f"\n{title}")
    print(f"  {'implementation':<44} {'seconds':>9} {'x numba':>9}  agrees")
    for name, seconds, check in rows:
        ratio = seconds / floor if floor else float("nan")
        print(f"  {name:<44} {seconds:>9.3f} {ratio:>9.1f}  {check}")


def check(reference: list[Outcome], other: list[Outcome]) -> str:
    for i, (a, b) in enumerate(zip(reference, other)):
        ok, why = b.same_as(a)
        if not ok:
            return f"NO ({'symbol ' + str(i) + ': ' if len(reference) > 1 else ''}{why})"
    n = sum(len(o.trades) for o in other)
    return f"yes ({n} trades, equity {sum(o.equity for o in other):,.2f})"


# ---- (a) one symbol, 1M bars -----------------------------------------------------------------

def bench_one(args, kernel) -> None:
    TMP.mkdir(parents=True, exist_ok=True)
    index = minute_starts(N_BIG)
    bars = random_walk(N_BIG, seed=7)
    data = TMP / "RW.parquet"
    write_parquet(data, index, bars)
    path = strategy_file(TMP / "sma_1m.yaml", ["RW"], data)

    t = time.perf_counter()
    prep = qb.prepare(path)
    t_load = time.perf_counter() - t
    frame = prep.frames["RW"]
    assert len(frame) == N_BIG
    assert np.array_equal(frame["open"].to_numpy(), bars["open"])  # everyone reads the same floats
    t_core, result = best(lambda: qb.run(prep), args.repeat)
    t_built = min(materialise(qb.run(prep)) for _ in range(args.repeat))
    q = qtrade_outcome(result, "RW")
    timings = result.timings
    assert timings.get("fast_path") == 1.0, "the benchmark strategy should take the fast path"
    t_runner, result_runner = best(lambda: qb.run(prep, fast=False), 1)
    q_runner = qtrade_outcome(result_runner, "RW")
    runner_timings = result_runner.timings

    journal_path = TMP / "journal_1m.sqlite"
    for p in (journal_path, TMP / "journal_1m.sqlite-wal", TMP / "journal_1m.sqlite-shm"):
        p.unlink(missing_ok=True)
    from engine.report.run_summary import summarize_result
    t = time.perf_counter()
    summary = summarize_result(result)
    t_summary = time.perf_counter() - t
    t = time.perf_counter()
    with Journal(str(journal_path)) as journal:
        qb.write_journal(result, journal)
        journal.finish_run(result.run_id, "finished", summary)
    t_journal = time.perf_counter() - t
    from engine.report.html import write_report
    t = time.perf_counter()
    write_report(str(journal_path), str(TMP / "report_1m.html"), run_id=result.run_id)
    t_report = time.perf_counter() - t

    _numba_outcome(kernel, bars)  # compile outside the timing
    t_numba, nb = best(lambda: _numba_outcome(kernel, bars), args.repeat)
    t_numpy, npo = best(lambda: numpy_backtest(bars), args.repeat)
    vectorbt_backtest(bars["open"][:1000, None], bars["close"][:1000, None])  # warm vectorbt's numba
    t_vbt, pf = best(lambda: vectorbt_backtest(bars["open"][:, None], bars["close"][:, None]), args.repeat)
    vb = vectorbt_outcomes(pf, 1)[0]

    rows = [("numba loop (indicators + loop)", t_numba, check([q], [nb])),
            ("numpy (vectorised signals, loop over trades)", t_numpy, check([q], [npo])),
            ("vectorbt (MA.run + Portfolio.from_signals)", t_vbt, check([q], [vb])),
            ("qtrade core: backtest.run (fast path)", t_core, check([nb], [q])),
            ("qtrade core: backtest.run(fast=False), Runner", t_runner, check([nb], [q_runner]))]
    if not args.no_backtrader:
        t = time.perf_counter()
        bto = backtrader_backtest(bars["open"], bars["high"], bars["low"], bars["close"], frame.index)
        rows.append(("backtrader (one run)", time.perf_counter() - t, check([q], [bto])))

    # the CLI as a user runs it: an installed package has its bytecode compiled (pip does it), so
    # the source tree's is written here too and the first run, which writes it, is not counted
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cli_times, cli_ok = [], "ran"
    for _ in range(args.repeat + 1):
        cli_journal = TMP / "journal_cli.sqlite"
        for p in (cli_journal, TMP / "journal_cli.sqlite-wal", TMP / "journal_cli.sqlite-shm"):
            p.unlink(missing_ok=True)
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "backtest", str(path), "--data", str(data),
                               "--journal", str(cli_journal), "--report", str(TMP / "report_cli.html"),
                               "--no-progress"], capture_output=True, text=True, cwd=ROOT, env=env)
        cli_times.append(time.perf_counter() - t)
        if proc.returncode != 0:
            cli_ok = f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"
    t_cli = min(cli_times[1:])

    table(f"(a) SMA {FAST}/{SLOW} crossover, 1 symbol x {N_BIG:,} one-minute bars (seeded random walk), "
          f"best of {args.repeat}", rows, t_numba)
    print(f"  qtrade core = signals {timings['evaluate']:.3f} + run {timings['run']:.3f} s (the fast path, to every "
          f"trade, the cash and the final equity); target: <= 2x the numba loop, faster than vectorbt")
    print(f"  + records and equity curve, built when first read (by the summary, journal, report): {t_built:.3f} s; "
          f"core with them {t_core + t_built:.3f} s = {(t_core + t_built) / t_numba:.1f}x numba")
    print(f"  Runner forced: signals {runner_timings['evaluate']:.3f} + runner {runner_timings['run']:.3f} s")
    print("  qtrade, outside the core:")
    print(f"    {'load the Parquet file (backtest.prepare)':<42} {t_load:>9.3f}")
    print(f"    {'the run summary (metrics)':<42} {t_summary:>9.3f}")
    print(f"    {'write the journal (SQLite)':<42} {t_journal:>9.3f}")
    print(f"    {'write the HTML report':<42} {t_report:>9.3f}")
    verdict = "met" if t_cli < 3.0 else "MISSED"
    print(f"    {'qtrade backtest CLI end to end (subprocess)':<42} {t_cli:>9.3f}   (target: < 3 s: {verdict}; {cli_ok}; "
          f"best of {args.repeat} after a first run at {cli_times[0]:.3f})")
    print(f"  trades: {len(q.trades)}, final equity {q.equity:,.2f}")


# ---- (b) 100 symbols x 10,000 bars -----------------------------------------------------------

def bench_many(args, kernel) -> None:
    folder = TMP / "universe"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()
    index = minute_starts(N_EACH)
    symbols = [f"S{i:03d}" for i in range(N_SYMBOLS)]
    all_bars = {}
    for i, s in enumerate(symbols):
        all_bars[s] = random_walk(N_EACH, seed=1000 + i)
        write_parquet(folder / f"{s}.parquet", index, all_bars[s])
    path = strategy_file(TMP / "sma_universe.yaml", symbols, folder)
    t = time.perf_counter()
    prep = qb.prepare(path)
    t_load = time.perf_counter() - t

    ones = [dataclasses.replace(prep, symbols=[s], frames={s: prep.frames[s]}) for s in symbols]
    t_each, results = best(lambda: [qb.run(one) for one in ones], args.repeat)
    t_built = min(sum(materialise(qb.run(one)) for one in ones) for _ in range(args.repeat))
    q_each = [qtrade_outcome(r, s) for r, s in zip(results, symbols)]

    pooled = strategy_file(TMP / "sma_universe_pooled.yaml", symbols, folder, quantity="100",
                           cash=CASH * N_SYMBOLS)
    prep_pooled = qb.prepare(pooled)
    t_pool, res_pool = best(lambda: qb.run(prep_pooled), args.repeat)
    pool_check = _pooled_check(res_pool, symbols, q_each)

    opens = np.column_stack([all_bars[s]["open"] for s in symbols])
    closes = np.column_stack([all_bars[s]["close"] for s in symbols])
    _numba_outcome(kernel, all_bars[symbols[0]])
    t_numba, nb = best(lambda: [_numba_outcome(kernel, all_bars[s]) for s in symbols], args.repeat)
    t_numpy, npo = best(lambda: [numpy_backtest(all_bars[s]) for s in symbols], args.repeat)
    vectorbt_backtest(opens[:1000, :2], closes[:1000, :2])  # warm vectorbt's numba for 2-D input
    t_vbt, pf = best(lambda: vectorbt_backtest(opens, closes), args.repeat)
    vb = vectorbt_outcomes(pf, N_SYMBOLS)

    rows = [("numba loop, per symbol", t_numba, check(q_each, nb)),
            ("numpy, per symbol", t_numpy, check(q_each, npo)),
            ("vectorbt, one call, 100 columns", t_vbt, check(q_each, vb)),
            ("qtrade core, one backtest.run per symbol", t_each, check(nb, q_each)),
            ("qtrade core, one run, shared cash, 100 shares", t_pool, pool_check)]
    if not args.no_backtrader:
        k = min(args.bt_symbols, N_SYMBOLS)
        t = time.perf_counter()
        bto = [backtrader_backtest(all_bars[s]["open"], all_bars[s]["high"], all_bars[s]["low"],
                                   all_bars[s]["close"], index) for s in symbols[:k]]
        t_bt = (time.perf_counter() - t) * N_SYMBOLS / k
        rows.append((f"backtrader, {k} symbols run, time x {N_SYMBOLS // k}", t_bt, check(q_each[:k], bto)))
    table(f"(b) SMA {FAST}/{SLOW} crossover, {N_SYMBOLS} symbols x {N_EACH:,} one-minute bars, "
          f"each symbol with its own {CASH:,.0f} cash, best of {args.repeat}", rows, t_numba)
    print(f"  + records and equity curves, built when first read: {t_built:.3f} s for the {N_SYMBOLS} runs")
    print(f"  qtrade, outside the core: load {N_SYMBOLS} Parquet files (backtest.prepare) {t_load:.3f} s")


def _pooled_check(result: qb.Result, symbols: list[str], each: list[Outcome]) -> str:
    """The pooled run trades on the same bars at the same prices as the per-symbol runs (its size
    is a fixed 100 shares), and ends at the pool's cash plus every trade's 100-share P&L."""
    expected = CASH * len(symbols)
    for s, ref in zip(symbols, each):
        got = qtrade_outcome(result, s).trades
        if got.shape != ref.trades.shape or not np.allclose(got[:, :4], ref.trades[:, :4], atol=1e-9, equal_nan=True):
            return f"NO ({s}: trades differ from its own run)"
        if not (got[:, 4] == 100).all():
            return f"NO ({s}: a quantity is not 100)"
        closed = got[got[:, 2] >= 0]
        expected += 100 * float(np.sum(closed[:, 3] - closed[:, 1]))
        for row in got[got[:, 2] < 0]:
            expected += 100 * (float(result.bars[s].close[-1]) - row[1])
    if round(expected, 2) != round(result.final_equity, 2):
        return f"NO (equity {result.final_equity:,.2f}, trades imply {expected:,.2f})"
    return f"same trades ({sum(len(o.trades) for o in each)}), equity {result.final_equity:,.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-backtrader", action="store_true", help="skip backtrader (about 2 minutes on 1M bars)")
    parser.add_argument("--bt-symbols", type=int, default=5, help="symbols backtrader runs in (b)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing (the best is shown)")
    parser.add_argument("--only", choices=["a", "b"], help="run one part")
    args = parser.parse_args()
    kernel = numba_kernel()
    if args.only in (None, "a"):
        bench_one(args, kernel)
    if args.only in (None, "b"):
        bench_many(args, kernel)


if __name__ == "__main__":
    main()
