"""`qtrade backtest`: a strategy, its bars and the simulated venue through the trading kernel.

prepare()        (runtime/prepare.py) loads and checks the strategy, resolves its symbols and
                 instruments, loads and resamples the bars, compiles the Plan;
run()            evaluates the Plan over each symbol's whole history (vectorised) and runs the kernel
                 (runtime/kernel.py, the loop every run uses) or, for a simple run, its fast path;
                 the Result builds its equity curve (runtime/equity.py) when first read;
write_journal()  (runtime/journaling.py) writes the run to the SQLite journal that reports share.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from ..brokers.matching import FillModel
from ..market.series import SymbolBars
from ..market.bars import bar_seconds
from ..plan.evaluate import evaluate
from ..portfolio.ledger import Ledger
from .journal import new_run_id
from .collector import without_cyclic_gc
from .records import RunSettings, RunState
from .signals import SymbolSignals
from .equity import equity_curve
from .journaling import start_run, write_journal
from .prepare import (Instrument, Prepared, _schedule_masks, _symbol_bars, _truncate, last_days, prepare,
                      run_window)

# the backtest's API, in one place for its callers (the CLI, benchmarks, tests)
__all__ = ["Instrument", "Prepared", "Result", "last_days", "prepare", "run", "start_run", "write_journal"]


class Result:
    """A finished backtest. The equity curve (times, labels, equity, cash, marks) is computed
    when first read (timings["equity"]), from the ledger's records."""

    def __init__(self, prepared: Prepared, run_id: str, ledger: Ledger, runner: RunState, bars: dict[str, SymbolBars],
                 timings: dict[str, float], curve: Callable[[], tuple]):
        self.prepared = prepared
        self.run_id = run_id
        self.ledger = ledger
        self.runner = runner
        self.bars = bars
        self.timings = timings
        self._curve = curve
        self._values: tuple | None = None

    def _curve_values(self) -> tuple:
        if self._values is None:
            t = time.perf_counter()
            times, equity, cash, marks = self._curve()
            labels = times - int(bar_seconds(self.prepared.bar) * 1e9)
            self._values = times, labels, equity, cash, marks
            self.timings["equity"] = time.perf_counter() - t
        return self._values

    @property
    def times(self) -> np.ndarray:
        """ns UTC, the closes of the union of all symbols' bars (from the start date)."""
        return self._curve_values()[0]

    @property
    def labels(self) -> np.ndarray:
        """ns UTC, the same bars' start times: how bars are named (IB stamps bars by start)."""
        return self._curve_values()[1]

    @property
    def equity(self) -> np.ndarray:
        return self._curve_values()[2]

    @property
    def cash(self) -> np.ndarray:
        return self._curve_values()[3]

    @property
    def marks(self) -> dict[str, float]:
        """Last prices of open positions."""
        return self._curve_values()[4]

    @property
    def final_equity(self) -> float:
        return float(self.equity[-1]) if len(self.equity) else self.ledger.cash

    @property
    def available_funds(self) -> float:
        """Equity at the end less the initial margin of the positions still open."""
        end = int(self.times[-1]) if len(self.times) else 0
        return self.runner.available_funds(end)


def run(prep: Prepared, progress: Callable[[float], None] | None = None, run_id: str | None = None, *,
        fast: bool | None = None) -> Result:
    """The backtest. `fast`: None resolves simple runs on the fast path (engine.runtime.fastpath,
    the kernel's outcome exactly) and the rest through the kernel; False always uses the kernel;
    True requires the fast path (ValueError saying why a run is not simple).

    The cyclic garbage collector is off for the run: it makes no reference cycles, and a full
    collection walks every object of the process (about 40 ms with pandas loaded), which it
    otherwise triggers now and then in the middle of a run."""
    with without_cyclic_gc():
        return _run(prep, progress, run_id, fast)


def _run(prep: Prepared, progress, run_id, fast) -> Result:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    signals: dict[str, SymbolSignals] = {}
    symbol_bars: dict[str, SymbolBars] = {}
    for symbol in prep.symbols:
        if symbol not in prep.frames:
            continue
        sbars, bars = _symbol_bars(prep, symbol)
        values = evaluate(prep.plan, bars)
        entry_mask, flat_mask = _schedule_masks(prep, bars)
        first, last = run_window(prep, sbars)
        if last < len(sbars):
            sbars, bars, values = _truncate(sbars, bars, values, last)
        signals[symbol] = SymbolSignals(prep.plan, values, sbars, entry_mask=entry_mask[:last] if entry_mask is not None
                                        else None, flat_mask=flat_mask[:last] if flat_mask is not None else None,
                                        start=first)
        symbol_bars[symbol] = sbars
    timings["evaluate"] = time.perf_counter() - t0
    from .session import run_settings, simulate

    run_id = run_id or new_run_id()
    settings, broker = run_settings(prep, run_id)
    t1 = time.perf_counter()
    if fast is not False:
        result = _run_fast(prep, signals, symbol_bars, broker, settings, run_id, timings, t1, progress,
                           required=bool(fast))
        if result is not None:
            return result
    result = simulate(prep, streaming=False, run_id=run_id, progress=progress, evaluated=signals)
    result.timings["evaluate"] += timings["evaluate"]
    return result


def _run_fast(prep: Prepared, signals: dict[str, SymbolSignals], symbol_bars: dict[str, SymbolBars],
              broker: FillModel, settings: RunSettings, run_id: str, timings: dict, t1: float, progress,
              required: bool) -> Result | None:
    """The run on the fast path, or None when it is not simple (see fastpath.unsupported)."""
    from . import fastpath

    combos = any(t.combo for t in settings.orders.values())
    why = fastpath.unsupported(prep.plan, signals, broker, settings, desk=True if combos else None)
    if why is None and prep.schedule.held_grid(bar_seconds(prep.bar)) is not None:
        why = "held names decided on a cadence of their own (schedule.every)"
    if why is not None:
        if required:
            raise ValueError(f"not a simple run: {why}")
        return None
    runner = fastpath.FastRun(prep.plan, signals, broker, settings)
    ledger = runner.run()
    if fastpath.margin_call_possible(ledger, next(iter(signals.values())).bars, settings.cash):
        if required:
            raise ValueError("not a simple run: a margin call may fire (equity near the maintenance margin)")
        return None
    if progress is not None:
        progress(1.0)
    timings["run"] = time.perf_counter() - t1
    timings["fast_path"] = 1.0
    return Result(prep, run_id, ledger, runner, symbol_bars, timings,
                  lambda: equity_curve(ledger, symbol_bars, settings.cash, prep.start))
