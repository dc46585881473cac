"""Every limit and stop price qtrade sends is on the instrument's tick grid (IB rejects an order
off it: 110, "the price does not conform to the minimum price variation"): a sell's price rounds
up and a buy's down (orders/intent.on_tick), in every mode, since every mode runs the kernel."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.orders.intent import on_tick
from engine.runtime import backtest as bt

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
import cases  # noqa: E402


def on_grid(price: float, tick: float) -> bool:
    units = price / tick
    return abs(units - round(units)) < 1e-6


def test_a_sell_rounds_up_and_a_buy_down_and_a_price_on_the_grid_stays():
    assert on_tick(16013.715216058645, 0.25, "sell") == 16013.75
    assert on_tick(16013.715216058645, 0.25, "buy") == 16013.5
    assert on_tick(133.20494618266838, 0.01, "sell") == 133.21
    assert on_tick(133.20494618266838, 0.01, "buy") == 133.2
    # on the grid within float noise: unchanged either way (0.1 + 0.2 is 0.30000000000000004)
    assert on_tick(0.1 + 0.2, 0.01, "buy") == 0.3 and on_tick(0.1 + 0.2, 0.01, "sell") == 0.3
    assert on_tick(1671.25, 0.25, "sell") == 1671.25 and on_tick(1671.25, 0.25, "buy") == 1671.25
    assert on_tick(112.09375 + 1e-9, 0.03125, "buy") == 112.09375        # a bond's 1/32
    assert on_tick(12.345, 0.0, "buy") == 12.345                         # no grid known: as it is


@pytest.mark.parametrize("case", ["futures_breakout", "futures_breakout_es", "composite_scanner"])
def test_the_examples_send_every_limit_and_stop_on_their_tick(case, tmp_path):
    """The bundled examples whose stops, targets and limits are expressions (2 x ATR from the
    entry, the high plus a little): every price on the grid, and the stops and targets filled at
    a price on it (no slippage in them: the level, or the open through a gap, both on the grid)."""
    path = cases.strategy_path(case, tmp_path)
    try:
        prep = bt.prepare(path, **cases.CASES[case][2])
        result = bt.run(prep, run_id="tick")
    finally:
        if path.name.startswith(".golden-"):
            path.unlink()
    priced = 0
    for o in result.runner.orders:
        tick = result.runner.signals[o.intent.symbol].bars.tick_size
        for price in (o.intent.limit, o.intent.stop):
            if price is not None:
                priced += 1
                assert on_grid(price, tick), f"{case}: {o.intent.tag} at {price!r}, off the {tick} grid"
    assert priced >= 20, f"{case}: only {priced} priced orders: the case no longer exercises the grid"
    priced_refs = {o.intent.tag for o in result.runner.orders if o.intent.order_type in ("stop", "limit")}
    filled = [f for f in result.ledger.fills if f.order_ref in priced_refs]
    assert filled
    at_level = 0
    for f in filled:
        b = result.runner.signals[f.symbol].bars
        if f.price == float(b.of(f.contract).open[f.bar]):
            continue        # through a gap, at the open: the market's price (adjusted data is off the grid)
        at_level += 1
        assert on_grid(f.price, b.tick_size), (case, f)
    assert at_level

STRATEGY = """\
kind: strategy
name: tick-grid
universe: [X]
data: {{bar: 1d, source: {source}}}
entry:
  - name: dip
    when: close > 0
    order: buy_dip
exit:
  - name: stop
    stop: position.entry_price - 0.013
  - name: target
    target: position.entry_price + 0.013
orders:
  buy_dip: {{action: buy, type: limit, limit: close - 0.013, quantity: 10}}
backtest: {{cash: 100000}}
"""


def test_a_buy_limit_rounds_down_and_a_long_positions_stop_and_target_round_up(tmp_path):
    """Levels 1.3 cents from the price: the buy limit goes to the cent below its level (never
    paying more than the rule said), the sell stop to the cent above its level (never triggered
    later), the sell target to the cent above its level (never selling for less)."""
    days = pd.bdate_range("2024-01-02", periods=12)
    close = np.array([100.0, 100.5, 100.2, 100.9, 101.3, 100.8, 101.1, 101.6, 101.0, 101.4, 101.9, 102.2])
    frame = pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "open": close - 0.05, "high": close + 0.4,
                          "low": close - 0.4, "close": close, "volume": 1000.0})
    (tmp_path / "X.csv").write_text(frame.to_csv(index=False))
    path = tmp_path / "s.yaml"
    path.write_text(STRATEGY.format(source=tmp_path))
    result = bt.run(bt.prepare(path), run_id="tick")
    orders = result.runner.orders
    entries = [o.intent for o in orders if o.intent.intent == "open"]
    stops = [o.intent for o in orders if o.intent.order_type == "stop"]
    targets = [o.intent for o in orders if o.intent.order_type == "limit" and o.intent.intent == "close"]
    assert entries and stops and targets
    for it in entries:      # close - 0.013 -> the cent below: close - 0.02 (the closes are whole tenths)
        assert any(math.isclose(it.limit, c - 0.02, abs_tol=1e-9) for c in close), it.limit
    for it in stops + targets:
        entry = next(f.price for f in result.ledger.fills if f.order_ref == _entry_of(result, it.tag))
        want = round(entry - 0.01, 10) if it.order_type == "stop" else round(entry + 0.02, 10)
        assert (it.stop if it.order_type == "stop" else it.limit) == pytest.approx(want, abs=1e-9), (it, entry)


def _entry_of(result, tag: str) -> str:
    """The ref of the entry whose position a protective order (by its tag) covered: the last
    entry filled before it was placed."""
    tags = [o.intent.tag for o in result.runner.orders]
    i = tags.index(tag)
    return next(o.intent.tag for o in reversed(result.runner.orders[:i]) if o.intent.intent == "open"
                and o.status == "filled")
