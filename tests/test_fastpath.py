"""The backtest's fast path gives exactly the Runner's outcome: same fills (order_ref tags
included), trades with MAE/MFE, decisions, order records, cash, positions and equity curve, on
real bars and many random strategies; runs that are not simple go to the Runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from engine.runtime import backtest as bt
from engine.runtime import fastpath

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SAMPLE = ROOT / "strategies" / "data"

DATA = {
    "SPY": SAMPLE / "SPY.csv",
    "AAPL": SAMPLE / "AAPL.csv",
    "ORCL": SHARED / "backtrader" / "orcl-1995-2014.txt",
    "NQ": SHARED / "firstratedata_nq_sample" / "NQ_1min_sample.csv",
}


def _orders(result) -> list[tuple]:
    return [(o.intent, o.time, o.status, o.status_time, o.reason, o.legs) for o in result.runner.orders]


def assert_same(a, b) -> None:
    """a: the Runner's result, b: the fast path's."""
    assert b.timings.get("fast_path") == 1.0 and "fast_path" not in a.timings
    assert list(b.ledger.fills) == list(a.ledger.fills)
    assert list(b.ledger.trades) == list(a.ledger.trades)
    assert list(b.runner.decisions) == list(a.runner.decisions)
    assert _orders(b) == _orders(a)
    assert b.ledger.cash == a.ledger.cash
    assert b.ledger.positions == a.ledger.positions
    assert np.array_equal(b.times, a.times) and np.array_equal(b.labels, a.labels)
    assert np.array_equal(b.equity, a.equity) and np.array_equal(b.cash, a.cash)
    assert b.marks == a.marks
    assert b.available_funds == a.available_funds
    assert b.final_equity == a.final_equity


def both(path: Path, **kw):
    prep = bt.prepare(path, **kw)
    return bt.run(prep, run_id="t", fast=False), bt.run(prep, run_id="t", fast=True)


def write_strategy(tmp_path: Path, *, symbol: str = "SPY", entry: str, exit_: str, quantity: str = "100",
                   action: str = "buy", backtest: str = "{cash: 100000}", extra_entry: str = "",
                   extra_exit: str = "", schedule: str = "", bar: str = "1d", risk: str = "",
                   instruments: bool = False, name: str = "s.yaml") -> Path:
    text = f"""kind: strategy
name: fast
universe: [{symbol}]
data: {{bar: {bar}, source: {DATA[symbol]}}}
{f"instruments: {ROOT / 'universes' / 'instruments.yaml'}" if instruments else ""}
{schedule}
entry:
  - name: go
    when: {entry}
    order: open
{extra_entry}
exit:
  - name: leave
    when: {exit_}
{extra_exit}
orders:
  open: {{action: {action}, type: market, quantity: {quantity}}}
  other: {{action: buy, type: market, quantity: 7}}
backtest: {backtest}
{risk}
"""
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- fixed cases -----------------------------------------------------------------------------

def test_the_bundled_sma_crossover_takes_the_fast_path_with_the_runners_outcome():
    a, b = both(ROOT / "strategies" / "sma_crossover.yaml")
    assert len(a.ledger.trades) > 10
    assert_same(a, b)
    default = bt.run(bt.prepare(ROOT / "strategies" / "sma_crossover.yaml"))
    assert default.timings.get("fast_path") == 1.0
    assert b.runner.resolved_by == default.runner.resolved_by == "chain"   # nothing refused: vectorised


@pytest.mark.parametrize("fill", ["next_open", "close"])
@pytest.mark.parametrize("account", ["cash", "margin"])
@pytest.mark.parametrize("costs", ["commission: {per_share: 0.005, minimum: 1.0, maximum: 1%}, slippage: {ticks: 1}",
                                   "slippage: {ticks: 1}", ""])
@pytest.mark.parametrize("percent,action", [("100%", "buy"), ("60%", "buy"), ("100%", "sell")])
def test_all_in_percent_of_equity(tmp_path, fill, account, costs, percent, action):
    # without commissions the money is compounded by fastpath._compound (all in, long, in a cash
    # account by its shortest loop); with them by FastRun._money; shorts in a cash account are refused
    path = write_strategy(tmp_path, entry="crosses_above(sma(close, 10), sma(close, 30))",
                          exit_="crosses_below(sma(close, 10), sma(close, 30))",
                          quantity=f"{{percent_of_equity: {percent}}}", action=action,
                          backtest=f"{{cash: 100000, account: {account}, fill: {fill}, {costs}}}".replace(", }", "}"))
    a, b = both(path)
    assert len(a.ledger.trades) > 20 or (action == "sell" and account == "cash")
    assert_same(a, b)


def test_entry_and_exit_on_the_same_bar_and_insufficient_cash(tmp_path):
    # enter when above the SMA, leave when below the close 2 bars ago: many bars fire both; a
    # fixed size that the cash often cannot pay is rejected and the next entry searched from its fill
    for fill in ("next_open", "close"):
        path = write_strategy(tmp_path, entry="close > sma(close, 5)", exit_="close < close[2]",
                              quantity="400", backtest=f"{{cash: 60000, account: cash, fill: {fill}}}")
        a, b = both(path)
        reasons = {d.reason for d in a.runner.decisions if d.outcome == "blocked"}
        assert any(r.startswith("insufficient cash") for r in reasons)
        assert b.runner.resolved_by == "sequential"    # refusals: one candidate at a time
        assert_same(a, b)


def test_shorts_in_a_margin_account_and_refused_in_a_cash_account(tmp_path):
    for account in ("margin", "cash"):
        path = write_strategy(tmp_path, entry="crosses_below(close, sma(close, 20))",
                              exit_="crosses_above(close, sma(close, 20))", action="sell",
                              quantity="{percent_of_equity: 50%}",
                              backtest=f"{{cash: 50000, account: {account}, slippage: {{percent: 0.1%}}}}")
        a, b = both(path)
        if account == "cash":
            assert not a.ledger.fills
            assert {d.reason for d in a.runner.decisions} == {"short selling needs a margin account"}
            assert b.runner.resolved_by == "sequential"
        else:
            assert all(t.side == "short" for t in a.ledger.trades) and a.ledger.trades
            assert b.runner.resolved_by == "chain"
        assert_same(a, b)


def test_two_entry_rules_the_first_wins(tmp_path):
    path = write_strategy(tmp_path, entry="close > open", exit_="close < open",
                          extra_entry="  - name: also\n    when: close > close[1]\n    order: other",
                          extra_exit="  - name: also leave\n    when: rsi(close, 14) > 70")
    a, b = both(path)
    assert any("fired on the same bar and won" in d.reason for d in a.runner.decisions)
    assert_same(a, b)


def test_dates_warmup_and_a_position_open_at_the_end(tmp_path):
    path = write_strategy(tmp_path, symbol="AAPL", entry="rsi(close, 14) < 35", exit_="rsi(close, 14) > 65",
                          quantity="{percent_of_equity: 30%, round: none}",
                          backtest="{cash: 20000, commission: {percent: 0.1%}}")
    a, b = both(path, start="2010-03-01", end="2014-06-30")
    assert_same(a, b)
    never = write_strategy(tmp_path, symbol="AAPL", entry="close > 0", exit_="close < 0", name="never.yaml")
    a, b = both(never)
    assert len(a.ledger.positions) == 1 and not a.ledger.trades
    assert_same(a, b)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not present")
@pytest.mark.parametrize("fill", ["next_open", "close"])
def test_nq_five_minute_bars_with_entry_window_and_flat_by(tmp_path, fill):
    path = write_strategy(tmp_path, symbol="NQ", bar="5m", instruments=True,
                          entry="close > ema(close, 12)", exit_="close < ema(close, 30)", quantity="2",
                          schedule='schedule: {timezone: America/New_York, entry_window: ["09:45", "11:00"], '
                                   'flat_by: "15:30"}',
                          backtest=f"{{cash: 100000, fill: {fill}, commission: {{per_contract: 2.25}}, "
                                   "slippage: {ticks: 1}}")
    a, b = both(path)
    assert a.bars["NQ"].margined
    assert any(t.exit_rule == "flat_by" for t in a.ledger.trades)
    assert_same(a, b)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not present")
def test_nq_shorts_fixed_and_percent_of_equity(tmp_path):
    # percent_of_equity sizes a future by its initial margin (the bundled NQ's 19,800 a contract:
    # 60% of 100,000 is 3 contracts); both paths size, fill and book them the same way
    for quantity in ("3", "{percent_of_equity: 60%}"):
        path = write_strategy(tmp_path, symbol="NQ", bar="5m", instruments=True, action="sell",
                              entry="crosses_below(close, sma(close, 20))",
                              exit_="crosses_above(close, sma(close, 20))", quantity=quantity,
                              schedule='schedule: {timezone: America/New_York, flat_by: "15:30"}',
                              backtest="{cash: 100000, commission: {per_contract: 2.25}}")
        a, b = both(path)
        assert a.ledger.trades if quantity == "3" else a.runner.decisions
        assert_same(a, b)


# ---- random strategies -----------------------------------------------------------------------

SYMBOLS = ["SPY", "AAPL"] + (["ORCL"] if DATA["ORCL"].exists() else [])


@st.composite
def cases(draw):
    kind = draw(st.sampled_from(["sma", "rsi", "mixed"]))
    fast = draw(st.integers(2, 30))
    slow = fast + draw(st.integers(1, 60))
    lo = draw(st.integers(10, 45))
    hi = draw(st.integers(55, 90))
    if kind == "sma":
        entry, exit_ = f"crosses_above(sma(close, {fast}), sma(close, {slow}))", \
            f"crosses_below(sma(close, {fast}), sma(close, {slow}))"
    elif kind == "rsi":
        entry, exit_ = f"rsi(close, {fast}) < {lo}", f"rsi(close, {fast}) > {hi}"
    else:
        entry, exit_ = f"close > sma(close, {slow})", f"rsi(close, {fast}) > {hi} or close < sma(close, {fast})"
    sizing = draw(st.sampled_from(["fixed", "number", "percent", "percent_frac"]))
    quantity = {"fixed": f"{{fixed: {draw(st.integers(1, 800))}}}", "number": str(draw(st.integers(1, 800))),
                "percent": f"{{percent_of_equity: {draw(st.integers(5, 100))}%}}",
                "percent_frac": f"{{percent_of_equity: {draw(st.integers(5, 100))}%, round: none}}"}[sizing]
    account = draw(st.sampled_from(["cash", "margin"]))
    commission = draw(st.sampled_from(["", "commission: {per_share: 0.005, minimum: 1.0, maximum: 1%}, ",
                                       "commission: {percent: 0.1%}, ", "commission: {per_order: 2.5}, "]))
    slippage = draw(st.sampled_from(["", "slippage: {ticks: 2}, ", "slippage: {percent: 0.05%}, ",
                                     "slippage: {fixed: 0.03}, "]))
    fill = draw(st.sampled_from(["next_open", "close"]))
    cash = draw(st.sampled_from([2_000, 25_000, 100_000]))
    action = draw(st.sampled_from(["buy", "buy", "sell"]))
    symbol = draw(st.sampled_from(SYMBOLS))
    years = {"SPY": (2008, 2017), "AAPL": (2008, 2017), "ORCL": (1996, 2013)}[symbol]
    start = draw(st.one_of(st.none(), st.integers(*years)))
    end = draw(st.one_of(st.none(), st.integers(*years)))
    return dict(symbol=symbol, entry=entry, exit_=exit_, quantity=quantity, action=action,
                backtest=f"{{cash: {cash}, account: {account}, fill: {fill}, {commission}{slippage}}}".replace(
                    ", }", "}"),
                start=f"{start}-01-01" if start else None, end=f"{end}-12-31" if end else None)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases())
def test_random_strategies_match_the_runner(tmp_path, case):
    start, end = case.pop("start"), case.pop("end")
    if start and end and end < start:
        start, end = end, start
    path = write_strategy(tmp_path, **case)
    prep = bt.prepare(path, start=start, end=end)
    a = bt.run(prep, run_id="r", fast=False)
    b = bt.run(prep, run_id="r", fast=True)
    assert_same(a, b)


# ---- what is not simple ----------------------------------------------------------------------

@pytest.mark.parametrize("change,why", [
    (dict(exit_="position.bars_held >= 3"), "position or run context"),
    (dict(extra_exit="  - name: stop\n    stop: position.entry_price * 0.95"), "run context|not a market-only"),
    (dict(quantity="{risk_percent: 1%, stop_distance: 2 * atr(14)}"), "expression quantity|sizing"),
    (dict(risk="risk: {max_daily_loss: 500}"), "max_daily_loss"),
    (dict(risk="risk: {circuit_breaker: {consecutive_losses: 3, pause: 1d}}"), "circuit_breaker"),
    (dict(risk="risk: {max_drawdown: 20%}"), "max_drawdown"),
    (dict(risk="risk: {max_position: 50%}"), "max_position"),
])
def test_runs_that_are_not_simple_go_to_the_runner(tmp_path, change, why):
    kw = dict(entry="close > sma(close, 10)", exit_="close < sma(close, 10)")
    kw.update(change)
    prep = bt.prepare(write_strategy(tmp_path, **kw))
    result = bt.run(prep)
    assert "fast_path" not in result.timings
    with pytest.raises(ValueError, match=why):
        bt.run(prep, fast=True)


def test_limit_entries_and_several_symbols_go_to_the_runner(tmp_path):
    path = tmp_path / "limit.yaml"
    path.write_text(f"""kind: strategy
name: lim
universe: [SPY, AAPL]
data: {{bar: 1d, source: {SAMPLE}}}
entry:
  - name: dip
    when: close < sma(close, 10)
    order: buy
exit:
  - name: up
    when: close > sma(close, 10)
orders:
  buy: {{action: buy, type: limit, limit: close * 0.99, quantity: 10}}
""")
    prep = bt.prepare(path)
    assert "fast_path" not in bt.run(prep).timings
    with pytest.raises(ValueError, match="traded symbols"):
        bt.run(prep, fast=True)
    one = bt.prepare(path)
    one.symbols = ["SPY"]
    one.frames = {"SPY": one.frames["SPY"]}
    with pytest.raises(ValueError, match="limit order"):
        bt.run(one, fast=True)


def test_runs_on_the_simulator_and_dry_runs_always_go_through_the_kernel():
    from engine.runtime import session

    prep = bt.prepare(ROOT / "strategies" / "sma_crossover.yaml")
    seen = []
    for dry_run in (False, True):
        result = session.simulate(prep, dry_run=dry_run, on_order=seen.append)
        assert "fast_path" not in result.timings
    assert seen and len(seen) % 2 == 0       # the same orders, once per run
    assert fastpath.unsupported(prep.plan, {}, None, None) is not None


def _journal_tables(result, path: Path) -> dict[str, list]:
    import sqlite3

    from engine.runtime.journal import Journal

    with Journal(path) as journal:
        bt.write_journal(result, journal)
    db = sqlite3.connect(path)
    try:
        return {t: db.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall()
                for t in ("orders", "decisions", "fills", "trades", "equity", "prices", "positions")}
    finally:
        db.close()


@pytest.mark.parametrize("quantity,action,account", [("{percent_of_equity: 100%}", "buy", "cash"),
                                                     ("700", "buy", "cash"), ("50", "sell", "margin"),
                                                     ("50", "sell", "cash")])
def test_the_journal_gets_the_same_rows(tmp_path, quantity, action, account):
    path = write_strategy(tmp_path, entry="close > sma(close, 5)", exit_="close < close[2]", quantity=quantity,
                          action=action, backtest=f"{{cash: 60000, account: {account}, commission: {{per_order: 1}}}}")
    a, b = both(path)
    ta, tb = _journal_tables(a, tmp_path / "a.sqlite"), _journal_tables(b, tmp_path / "b.sqlite")
    assert ta["decisions"] and ta == tb


# ---- the one-symbol equity curve -------------------------------------------------------------

def _reference_curve(result) -> tuple[np.ndarray, np.ndarray]:
    """Cash and equity at every close the plain way: every fill's cash change added to its bar,
    a running sum over all bars; every position's units added at its entry bar and taken off at
    its exit bar, a running sum, times the close (futures: less the entry value)."""
    (symbol, b), = result.bars.items()
    times = result.times
    from engine.runtime.equity import ledger_columns

    cols = ledger_columns(result.ledger, result.bars)
    delta = np.zeros(len(times) + 1)
    np.add.at(delta, np.searchsorted(times, b.end[cols.fill_bar], side="left"), cols.fill_cash)
    cash = result.ledger.initial_cash + np.cumsum(delta)[:len(times)]
    lo, hi, qty, entry = cols.trade_entry_bar, cols.trade_exit_bar, cols.trade_units, cols.trade_entry_price
    pos = result.ledger.positions.get(symbol)
    if pos is not None:
        lo, hi = np.append(lo, pos.entry_bar), np.append(hi, len(b))
        qty, entry = np.append(qty, pos.quantity), np.append(entry, pos.avg_price)
    where = np.column_stack((lo, hi)).ravel()
    u = qty * b.multiplier
    units = np.zeros(len(b) + 1)
    np.add.at(units, where, np.column_stack((u, -u)).ravel())
    per_bar = np.cumsum(units)[:-1] * b.close
    if b.margined:
        offset = np.zeros(len(b) + 1)
        np.add.at(offset, where, np.column_stack((u * entry, -u * entry)).ravel())
        per_bar = per_bar - np.cumsum(offset)[:-1]
    return cash, cash + (np.zeros(len(times)) + per_bar[len(b) - len(times):])


@pytest.mark.parametrize("case", ["all_in_close", "open_at_end", "runner_stops", "nq_futures"])
def test_the_one_symbol_equity_curve_is_the_running_sum_over_every_bar(tmp_path, case):
    kw = dict(entry="crosses_above(sma(close, 5), sma(close, 20))", exit_="crosses_below(sma(close, 5), sma(close, 20))")
    start = None
    if case == "all_in_close":     # entry and exit fills on the same bar's close
        kw.update(entry="close > sma(close, 5)", exit_="close > 0", quantity="{percent_of_equity: 100%}",
                  backtest="{cash: 50000, fill: close, commission: {per_order: 1}}")
    elif case == "open_at_end":
        kw.update(exit_="close < 0", backtest="{cash: 50000, commission: {percent: 0.1%}}")
        start = "2012-01-01"
    elif case == "runner_stops":   # a stop exit and a re-entry at the same bar: adjacent spans
        kw.update(entry="close > 0", exit_="close < 0",
                  extra_exit="  - name: stop\n    stop: position.entry_price * 0.98",
                  backtest="{cash: 50000, fill: close}")
    else:
        if not SHARED.is_dir():
            pytest.skip("../shared/data is not present")
        kw.update(symbol="NQ", bar="5m", instruments=True, quantity="2",
                  backtest="{cash: 100000, commission: {per_contract: 2.25}}")
    result = bt.run(bt.prepare(write_strategy(tmp_path, **kw), start=start))
    assert len(result.ledger.fills) >= (1 if case == "open_at_end" else 3)
    assert result.ledger.positions or case != "open_at_end"
    cash, equity = _reference_curve(result)
    assert np.array_equal(result.cash, cash) and np.array_equal(result.equity, equity)


def test_a_fast_run_leaves_no_reference_cycles():
    # backtest.run keeps the cyclic collector off while it runs; what a run leaves behind must be
    # freed by reference counts alone, or every run would keep its arrays until a collection
    import gc
    import weakref

    prep = bt.prepare(ROOT / "strategies" / "sma_crossover.yaml")
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        result = bt.run(prep)
        assert result.timings.get("fast_path") == 1.0
        len(result.ledger.trades), result.equity      # the lazily built parts too
        plan = result.prepared.plan
        values = next(result.runner.signals["SPY"].values[n.id] for n in plan.nodes if n.op == "call")  # an indicator
        probes = [weakref.ref(values), weakref.ref(result.equity), weakref.ref(result.runner)]
        del result, values
        alive = [name for name, p in zip(("a plan value", "the equity curve", "the run"), probes) if p() is not None]
        assert not alive
        gc.set_debug(gc.DEBUG_SAVEALL)      # anything of the engine's that only a collection would free
        gc.collect()
        cyclic = {type(o).__qualname__ for o in gc.garbage if type(o).__module__.startswith("engine.")}
        assert not cyclic
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()
