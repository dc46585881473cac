"""The trading kernel (runtime/kernel.py, the event-driven Runner over the Broker protocol)
against the backtest: the same orders, fills, trades and final account, to the cent, whether the
plan is streamed bar by bar (as a live run evaluates it) or read from the vectorised
evaluation, and the same again as a dry run (a simulated wallet that transmits nothing)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from engine.runtime import backtest as bt
from engine.runtime import session

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
import cases  # noqa: E402

from test_backtrader_parity import ATR_STOP, CROSS, PCT_STOP, DATA  # noqa: E402


def _need_shared():
    if not cases.SHARED.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{cases.SHARED} is missing under CI")
        pytest.skip("needs ../shared/data")


def _same(a: dict, b: dict, what: str) -> None:
    for key in a:
        assert a[key] == b[key], f"{what}: {key} differs"


def _kernel_runs(prep):
    """The kernel streamed, the kernel on vectorised values, and the streamed dry run."""
    streamed = session.simulate(prep, streaming=True, run_id="golden")
    vectorised = session.simulate(prep, streaming=False, run_id="golden")
    dry = session.simulate(prep, streaming=True, dry_run=True, run_id="golden")
    return streamed, vectorised, dry


@pytest.mark.parametrize("case", ["sma_crossover", "breakout_nq", "iron_condor", "spxw_condor",
                                  "futures_breakout_es"])
def test_the_kernel_trades_as_the_backtest_on_the_examples(case, tmp_path):
    """Including the iron condor with its chase: real timed modifies of one BAG order on the
    venue, cancelled and confirmed when the chase runs out; and ES per contract."""
    if case in cases.NEEDS_SHARED:
        _need_shared()
    want = json.loads((cases.HERE / f"{case}.json").read_text())
    path = cases.strategy_path(case, tmp_path)
    try:
        prep = bt.prepare(path, **cases.CASES[case][2])
        streamed, vectorised, dry = _kernel_runs(prep)
    finally:
        if path.name.startswith(".golden-"):
            path.unlink()
    for name, result in (("streamed", streamed), ("vectorised", vectorised), ("dry run", dry)):
        _same(want, cases.record(result), f"{case} {name}")
        assert not result.runner.errors
    # the broker is the source of truth: the kernel's ledger agrees with the venue's account
    assert streamed.broker.account().cash == pytest.approx(streamed.ledger.cash, abs=1e-6)
    # the dry run transmitted nothing to the venue it read from, and would have sent what paper sent
    assert dry.broker.inner.placed == []
    assert [o.ref for o in dry.broker.would_send] == [o.ref for o in streamed.broker.placed]
    assert [(o.action, o.quantity, o.order_type) for o in dry.broker.would_send] == \
        [(o.action, o.quantity, o.order_type) for o in streamed.broker.placed]


@pytest.mark.parametrize("stop", [ATR_STOP, PCT_STOP])
@pytest.mark.parametrize("quantity", ["{percent_of_equity: 100%}", "1000"])
def test_the_kernel_trades_as_the_backtest_with_protective_stops(tmp_path, stop, quantity):
    """Stops are real working orders in the kernel (placed at a close, moved each bar, cancelled
    when the death cross closes the position); the fills and trades are the backtest's."""
    _need_shared()
    path = tmp_path / "parity.yaml"
    path.write_text(CROSS.format(symbol="ORCL", data=DATA / "backtrader/orcl-1995-2014.txt", stop=stop,
                                 quantity=quantity, commission="{percent: 0.1%}"))
    prep = bt.prepare(path)
    want = cases.record(bt.run(prep, run_id="golden"))
    assert len(want["trades"]) > 20
    for name, result in zip(("streamed", "vectorised", "dry run"), _kernel_runs(prep)):
        got = cases.record(result)
        for key in ("fills", "trades", "final_equity", "final_cash"):
            strip = (lambda rows: [r[:6] + r[7:] for r in rows]) if key == "fills" else (lambda x: x)
            assert strip(got[key]) == strip(want[key]), f"{name}: {key} differs"
        stops = [o for o in result.runner.orders if o.intent.order_type == "stop"]
        assert stops and {o.status for o in stops} <= {"filled", "cancelled", "working"}
        assert sum(o.status == "filled" for o in stops) == sum(t[-1] == "stop loss" for t in got["trades"])


def test_an_agents_exits_see_only_its_own_positions(tmp_path):
    """regime_agents: a position is closed only by its owner's exits (or the strategy's own)."""
    case = "regime_agents_daily"
    path = cases.strategy_path(case, tmp_path)
    try:
        prep = bt.prepare(path, **cases.CASES[case][2])
        result = session.simulate(prep, streaming=True, run_id="golden")
    finally:
        if path.name.startswith(".golden-"):
            path.unlink()
    agent_of = {r.name: r.agent for r in prep.plan.rules}
    trades = result.ledger.trades
    assert len(trades) > 100
    for t in trades:
        exit_agent = agent_of.get(t.exit_rule)
        assert exit_agent is None or exit_agent == agent_of[t.entry_rule], (t.entry_rule, t.exit_rule)
    # the vectorised kernel agrees with the streamed one
    _same(cases.record(result), cases.record(session.simulate(prep, streaming=False, run_id="golden")), case)


def _pooled(tmp_path, account: str) -> Path:
    """Twelve symbols on one daily calendar sharing one cash pool, 12% of equity per entry: many
    positions open at once, entries at one open sized one after another."""
    import numpy as np
    import pandas as pd

    days = pd.bdate_range("2015-01-01", periods=400, tz="America/New_York")
    folder = tmp_path / "pooled"
    folder.mkdir(exist_ok=True)
    symbols = [f"P{i:02d}" for i in range(12)]
    for i, sym in enumerate(symbols):
        rng = np.random.default_rng(50 + i)
        close = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.015, len(days))))
        open_ = np.concatenate(([50.0], close[:-1] * np.exp(rng.normal(0.0, 0.004, len(days) - 1))))
        high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0.0, 0.006, len(days))))
        low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0.0, 0.006, len(days))))
        pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "open": open_, "high": high, "low": low, "close": close,
                      "volume": 1000.0}).to_csv(folder / f"{sym}.csv", index=False)
    # the SMA crossover example on these symbols: 5/15 bars, 12% of equity each, a 3% stop, no cap
    # on open positions, one cash pool
    text = (cases.ROOT / "strategies" / "sma_crossover.yaml").read_text()
    for pattern, repl in ((r"(?m)^universe: .*$", f"universe: [{', '.join(symbols)}]"),
                          (r"source: data/", f"source: {folder}"),
                          (r"value: 10,", "value: 5,"), (r"value: 30,", "value: 15,"),
                          (r"percent_of_equity: 100%", "percent_of_equity: 12%"),
                          (r"(?m)^exit:\n", "exit:\n  - {name: stop, stop: position.entry_price * (1 - 3%)}\n"),
                          (r"(?m)^risk: .*$", f"backtest: {{cash: 1000000, account: {account}, "
                                              "commission: {per_share: 0.005, minimum: 1}}")):
        text, n = re.subn(pattern, repl, text)
        assert n == 1, pattern
    path = tmp_path / f"pooled-{account}.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", [*cases.CASES, "pooled cash", "pooled margin"])
def test_sizing_reads_the_venues_account_which_is_the_ledgers_view_at_that_instant(case, tmp_path, monkeypatch):
    """The kernel sizes entries and checks funds and risk limits against the venue's account
    (`broker.account()`): on the simulator that account is the kernel's own ledger at its marks,
    to the bit, at every instant the kernel reads it (stock, futures, option combos, a shared
    pool of many positions), so reading it changes no simulated result."""
    from engine.runtime.kernel import Kernel

    seen = []
    read = Kernel.account_view

    def compared(self):
        acct = self.venue.account()
        seen.append(((acct.equity, acct.available_funds, acct.cash),
                     (self.equity(), self.available_funds(), self.ledger.cash), len(self.ledger.positions)))
        return read(self)

    monkeypatch.setattr(Kernel, "account_view", compared)
    if case.startswith("pooled"):
        path = _pooled(tmp_path, case.split()[1])
        prep = bt.prepare(path)
    else:
        if case in cases.NEEDS_SHARED:
            _need_shared()
        path = cases.strategy_path(case, tmp_path)
        try:
            prep = bt.prepare(path, **cases.CASES[case][2])
        finally:
            if path.name.startswith(".golden-"):
                path.unlink()
    for dry_run in (False, True):
        seen.clear()
        result = session.simulate(prep, streaming=False, dry_run=dry_run, run_id="golden")
        assert seen, "no entry was sized"
        differ = [(venue, ledger) for venue, ledger, _ in seen if venue != ledger]
        assert not differ, f"{len(differ)} of {len(seen)} differ, first {differ[0]}"
        assert not result.runner.errors
        if not case.startswith("pooled"):
            want = json.loads((cases.HERE / f"{case}.json").read_text())
            _same(want, cases.record(result), f"{case} dry run {dry_run}")
    if case.startswith("pooled"):
        # entries sized while several positions were open, and several entries at one open
        assert max(n for _, _, n in seen) >= 5
        assert len(result.ledger.trades) > 50
