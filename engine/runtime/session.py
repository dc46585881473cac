"""A run on the trading kernel: a prepared strategy, its bars fed one at a time, a venue.

`simulate(prep)` is `qtrade run --broker sim` (paper on the simulator) and, with dry_run, the
dry run: the same kernel and the same orders, sent to a DryRunBroker that transmits nothing.
`streaming=True` evaluates the plan bar by bar as a live run does (the streaming evaluator);
False reads the same values from the vectorised evaluation (the backtest's).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from ..brokers.dryrun import DryRunBroker
from ..brokers.matching import FillModel
from ..brokers.sim import SimBroker
from ..check.model import Arbitration
from ..plan.evaluate import Stream, evaluate
from . import backtest as bt
from .equity import equity_curve
from .prepare import _schedule_masks, _span, _symbol_bars, _truncate, agent_flat_masks, cadence_masks, run_window
from .clock import SimClock, WallClock
from .collector import without_cyclic_gc
from .journal import new_run_id
from .kernel import Kernel, _Symbol
from .records import RunSettings, market_prefilter
from .signals import SymbolSignals


def simulate(prep: bt.Prepared, *, dry_run: bool = False, streaming: bool = True, run_id: str | None = None,
             on_order: Callable[[dict], None] | None = None, partial: float | None = None,
             progress: Callable[[float], None] | None = None, recorder=None,
             tags: tuple[str, int] | None = None, speed: float | None = None,
             evaluated: dict[str, SymbolSignals] | None = None) -> bt.Result:
    """`recorder` journals the run as it happens; `tags` = (prefix, last seq) for stable order refs;
    `speed`: replay on a WallClock at that many times real time (None: as fast as it goes);
    `evaluated`: the vectorised plan's values per symbol when the caller has them already."""
    with without_cyclic_gc():
        return _simulate(prep, dry_run, streaming, run_id, on_order, partial, progress, recorder, tags, speed,
                         evaluated or {})


def _simulate(prep, dry_run, streaming, run_id, on_order, partial, progress, recorder, tags, speed,
              evaluated) -> bt.Result:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    plan = prep.plan
    symbols: dict[str, _Symbol] = {}
    symbol_bars = {}
    entries = [r for r in plan.rules if r.kind == "entry"]
    combo_rules = [r for r in entries if r.order in prep.orders and prep.orders[r.order].combo]
    combos = bool(entries) and len(combo_rules) == len(entries)
    mixed = bool(combo_rules) and not combos       # stock entries and combos: one position at a time
    for symbol in prep.symbols:
        if symbol not in prep.frames:
            continue
        sbars, bars = _symbol_bars(prep, symbol)
        first, last = run_window(prep, sbars)
        entry_mask, flat_mask = _schedule_masks(prep, bars)
        if streaming:
            values = [np.empty(len(sbars), dtype=object) if node.market else None for node in plan.nodes]
            if last < len(sbars):
                sbars, bars, _ = _truncate(sbars, bars, [], last)
                values = [v[:last] if v is not None else None for v in values]
            st = _Symbol(symbol, sbars, values, first, _cut(entry_mask, last), _cut(flat_mask, last), None,
                         Stream(plan), bars)
        else:
            if symbol in evaluated:      # the backtest's own evaluation, already cut at --to
                sbars, values = evaluated[symbol].bars, evaluated[symbol].values
            else:
                values = evaluate(plan, bars)
                if last < len(sbars):
                    sbars, bars, values = _truncate(sbars, bars, values, last)
            if combos or mixed:
                # bars where an entry can fire: a combo's from the conditions on the market in its
                # `when` and its agent's `active`, a stock entry's where it fires
                n = len(sbars)
                possible = np.zeros(n, dtype=bool)
                for rule in (combo_rules if mixed else entries):
                    may = market_prefilter(plan, rule.when, values, n)
                    gate = plan.outputs.get(f"agents.{rule.agent}.active") if rule.agent else None
                    if mixed and gate is not None:
                        may &= market_prefilter(plan, gate, values, n)
                    possible |= may
                if mixed:
                    sig = evaluated.get(symbol) or SymbolSignals(plan, values, sbars,
                                                                entry_mask=_cut(entry_mask, last), start=first)
                    if any(r not in combo_rules for r in sig.context_entries):
                        possible[:] = True      # a stock entry reading run context: every bar
                    possible[sig.entry_idx] = True
                if entry_mask is not None:
                    possible &= entry_mask[:last]
                possible[:first] = False
                candidates = np.flatnonzero(possible)
            else:
                sig = evaluated.get(symbol) or SymbolSignals(plan, values, sbars, entry_mask=_cut(entry_mask, last),
                                                            start=first)
                candidates = None if sig.context_entries else sig.entry_idx
                if candidates is not None and "scan.picked" in plan.outputs:
                    from .scanning import unpicked_bars

                    candidates = np.union1d(candidates, unpicked_bars(plan, values, len(sbars), first,
                                                                      _cut(entry_mask, last)))
            st = _Symbol(symbol, sbars, values, first, _cut(entry_mask, last), _cut(flat_mask, last), candidates)
        st.combo, st.mixed = combos, mixed
        st.flat_masks = agent_flat_masks(prep, bars, last)
        st.held_mask, st.add_mask = cadence_masks(prep, bars, last)
        symbols[symbol] = st
        symbol_bars[symbol] = sbars
    timings["evaluate"] = time.perf_counter() - t0
    run_id = run_id or new_run_id()
    settings, fills = run_settings(prep, run_id)
    fraction = settings.fill_fraction
    venue = SimBroker(symbol_bars, fills, settings.cash, settings.account, partial, fill_fraction=fraction,
                      session=f"{run_id}.venue")
    wallet = SimBroker(symbol_bars, fills, settings.cash, settings.account, partial, fill_fraction=fraction,
                       session=f"{run_id}.wallet")
    broker = DryRunBroker(venue, wallet) if dry_run else venue
    span = _span(symbol_bars)
    report = (lambda t: progress((t - span[0]) / max(span[1] - span[0], 1))) if progress and span else None
    desk = chains = None
    if combo_rules:
        from .chainsource import option_desk

        class _Bars:
            def __init__(self, bars):
                self.bars = bars

        desk, chains = option_desk(prep, {sym: _Bars(b) for sym, b in symbol_bars.items()})
    kernel = Kernel(plan, symbols, broker, fills, settings, on_order=on_order, desk=desk,
                    chains=chains, recorder=recorder, tags=tags)
    if prep.scan is not None:
        kernel.scan_reason = prep.scan.reason
    if chains is not None and hasattr(chains, "runner_ref"):
        chains.runner_ref["runner"] = kernel
    venue.combo_quote = wallet.combo_quote = kernel.combo_quote
    t1 = time.perf_counter()
    ledger = kernel.run(WallClock(speed, report) if speed else SimClock(report))
    timings["run"] = time.perf_counter() - t1
    result = bt.Result(prep, run_id, ledger, kernel, symbol_bars, timings,
                       lambda: equity_curve(ledger, symbol_bars, settings.cash, prep.start,
                                               kernel.closed_combos + list(kernel.combos.values()),
                                               kernel.combo_symbol))
    result.broker = broker
    return result


def run_settings(prep: bt.Prepared, run_id: str) -> tuple[RunSettings, FillModel]:
    """A run's settings and the simulator's fill model, from the prepared strategy's typed model."""
    sim = prep.sim
    settings = RunSettings(cash=sim.cash, account=sim.account, orders=prep.orders, limits=prep.limits,
                           run_id=run_id, strategy=prep.plan.name, timezone=prep.timezone,
                           fill_fraction=sim.options.fill_fraction,
                           arbitration=Arbitration.from_spec(prep.doc.get(("arbitration",))),
                           agents=prep.agents, max_new_entries=prep.schedule.max_new_entries_per_scan)
    return settings, FillModel(sim.commission, sim.slippage, sim.fill)


def _cut(mask, last: int):
    return None if mask is None else mask[:last]
