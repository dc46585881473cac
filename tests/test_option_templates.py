"""The common multi-leg structures, written as YAML order templates and built from a chain."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest

from engine.check.model import order_templates
from engine.check import validate
from engine.market.chains import synthesize
from engine.plan.build import build_plan, load_strategy
from engine.plan.evaluate import Bars, evaluate
from engine.runtime.chainsource import ChainAdapter
from engine.runtime.options import OptionSetup, OptionsDesk

TEMPLATES = """kind: strategy
name: templates
underlying: SPY
universe: [SPY]
data: {bar: 1d}
params: {width: 5, wing: 5}
orders:
  put_vertical:
    expiry: {dte: [20, 40]}
    legs:
      short_put: {right: put, action: sell, strike: {delta: 0.30}}
      long_put:  {right: put, action: buy,  strike: short_put.strike - width}
  iron_condor:
    expiry: {dte: [20, 40]}
    legs:
      short_put:  {right: put,  action: sell, strike: {delta: 0.16}}
      long_put:   {right: put,  action: buy,  strike: short_put.strike - wing}
      short_call: {right: call, action: sell, strike: {delta: 0.16}}
      long_call:  {right: call, action: buy,  strike: short_call.strike + wing}
  straddle:
    expiry: {dte: [20, 40]}
    legs:
      call: {right: call, action: sell, strike: {delta: 0.50}}
      put:  {right: put,  action: sell, strike: call.strike}
  strangle:
    expiry: {dte: [20, 40]}
    legs:
      put:  {right: put,  action: sell, strike: {delta: 0.20}}
      call: {right: call, action: sell, strike: {delta: 0.20}}
  butterfly:
    expiry: {dte: [20, 40]}
    legs:
      body:  {right: call, action: sell, ratio: 2, strike: {delta: 0.50}}
      lower: {right: call, action: buy, strike: body.strike - wing}
      upper: {right: call, action: buy, strike: body.strike + wing}
  calendar:
    expiry: {dte: [5, 12]}
    legs:
      front: {right: call, action: sell, strike: {delta: 0.50}}
      back:  {right: call, action: buy, strike: front.strike, expiry: {dte: [30, 45]}}
entry:
  - {name: a, when: credit > 0, order: put_vertical}
  - {name: b, when: credit > 0, order: iron_condor}
  - {name: c, when: credit > 0, order: straddle}
  - {name: d, when: credit > 0, order: strangle}
  - {name: e, when: credit < 0, order: butterfly}
  - {name: f, when: credit < 0, order: calendar}
"""

NOW = dt.datetime(2024, 3, 4, 15, 0)
EXPIRIES = ["2024-03-08", "2024-03-15", "2024-03-28", "2024-04-05", "2024-04-12", "2024-04-19"]


@pytest.fixture(scope="module")
def desk_and_chain(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "templates.yaml"
    path.write_text(TEMPLATES)
    report = validate([str(path)])
    assert not report.errors, [d.format() for d in report.errors]
    doc, ws = load_strategy(path)
    plan = build_plan(doc, ws)
    values = evaluate(plan, Bars({f: np.array([500.0]) for f in ("open", "high", "low", "close", "volume")}))
    desk = OptionsDesk(plan, order_templates(doc.get(("orders",))), {"SPY": OptionSetup(calendar="NYSE", cycle="daily", listed=True)},
                       "America/New_York")
    chain = ChainAdapter(synthesize(500.0, pd.Timestamp(NOW, tz="America/New_York"), EXPIRIES, 1.0,
                                    iv_source=0.18, r=0.04, underlying="SPY", tick=0.01))
    return desk, values, chain


def build(desk_and_chain, order):
    desk, values, chain = desk_and_chain
    quote = desk.build(order, "SPY", 0, NOW, values, chain)
    assert not isinstance(quote, str), quote
    assert quote.missing is None
    return {leg.name: leg for leg in quote.legs}, quote


def test_vertical(desk_and_chain):
    legs, q = build(desk_and_chain, "put_vertical")
    assert legs["short_put"].strike - legs["long_put"].strike == 5
    assert abs(legs["short_put"].delta + 0.30) < 0.03
    assert q.credit > 0 and q.max_loss == pytest.approx((5 - q.credit) * 100)


def test_iron_condor(desk_and_chain):
    legs, q = build(desk_and_chain, "iron_condor")
    assert legs["short_put"].strike < 500 < legs["short_call"].strike
    assert q.max_loss == pytest.approx((5 - q.credit) * 100) and q.margin == q.max_loss


def test_straddle_and_strangle_are_naked(desk_and_chain):
    legs, q = build(desk_and_chain, "straddle")
    assert legs["call"].strike == legs["put"].strike and abs(legs["call"].strike - 500) <= 3  # at the forward
    assert math.isinf(q.max_loss) and q.margin > 0            # Reg-T for the naked legs
    legs, q = build(desk_and_chain, "strangle")
    assert legs["put"].strike < 500 < legs["call"].strike and math.isinf(q.max_loss)


def test_butterfly_is_a_debit_with_loss_limited_to_it(desk_and_chain):
    legs, q = build(desk_and_chain, "butterfly")
    assert legs["body"].ratio == 2
    assert legs["upper"].strike - legs["body"].strike == legs["body"].strike - legs["lower"].strike == 5
    assert q.credit < 0 and q.max_loss == pytest.approx(-q.credit * 100)
    assert q.max_profit == pytest.approx((5 + q.credit) * 100)


def test_calendar_has_two_expiries_at_one_strike(desk_and_chain):
    legs, q = build(desk_and_chain, "calendar")
    assert legs["front"].strike == legs["back"].strike
    assert (legs["front"].expiry, legs["back"].expiry) == ("2024-03-15", "2024-04-05")
    assert q.credit < 0                                          # the back month costs more
