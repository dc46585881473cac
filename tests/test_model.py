"""The typed model (check/model.py): each example's order templates and simulator settings
parsed once into frozen dataclasses, with the values a run reads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engine.check.model import OrderTemplate, PricePolicy, Quantity, SimSettings, order_templates
from engine.runtime import backtest as bt

ROOT = Path(__file__).resolve().parents[1]


def test_the_iron_condors_order_template():
    prep = bt.prepare("strategies/iron_condor.yaml")
    condor = prep.orders["condor"]
    assert condor.combo and condor.quantity == Quantity("fixed", 1.0)
    assert [(leg.name, leg.right, leg.action, leg.strike) for leg in condor.legs] == [
        ("short_put", "put", "sell", "delta"), ("long_put", "put", "buy", "expression"),
        ("short_call", "call", "sell", "delta"), ("long_call", "call", "buy", "expression")]
    assert [leg.name for leg in condor.leg_order()] == ["short_put", "short_call", "long_put", "long_call"]
    chase = condor.price.chase
    assert condor.price.kind == "chase" and (chase.step, chase.steps, chase.every, chase.floor) == (0.01, 4, 15.0, True)
    assert condor.expiry == "0dte"
    with pytest.raises(dataclasses.FrozenInstanceError):
        condor.tif = "gtc"
    with pytest.raises(TypeError):
        prep.orders["other"] = condor           # the mapping is read-only too


def test_quantities_prices_and_settings_are_parsed_once():
    orders = order_templates({
        "a": {"action": "sell", "type": "limit", "tif": "gtc", "quantity": {"percent_of_equity": "25%", "round": "fractional"}},
        "b": {"quantity": {"risk_percent": "1%", "stop_distance": "atr(14)"}},
        "c": {"quantity": "floor(10 / close)"},
        "d": {"legs": {"x": {"right": "call", "action": "buy", "strike": {"premium": 1.0}}}, "price": "market"},
    })
    assert orders["a"] == OrderTemplate("a", "sell", "limit", "gtc", Quantity("percent_of_equity", 0.25, False))
    assert orders["b"].quantity == Quantity("risk_percent", 0.01)
    assert orders["c"].quantity.mode == "expression"
    assert orders["d"].price == PricePolicy("market") and orders["d"].legs[0].strike == "premium"
    sim = SimSettings.from_spec({"cash": 5000, "account": "cash", "commission": {"per_share": 0.005, "minimum": 1},
                                 "slippage": {"ticks": 1}, "fill": "close",
                                 "options": {"fill_fraction": 0.25, "spread": {"percent": "3%"}}})
    assert (sim.cash, sim.account, sim.fill) == (5000.0, "cash", "close")
    assert sim.commission(100, 10.0) == 1.0 and sim.slippage.apply(10.0, "buy", 0.01) == pytest.approx(10.01)
    assert (sim.options.fill_fraction, sim.options.spread_pct) == (0.25, 0.03)


def test_cash_from_the_command_line_reaches_the_simulator_settings():
    prep = bt.prepare("strategies/sma_crossover.yaml", cash=25_000)
    assert prep.sim.cash == 25_000.0 and prep.sim.account == "margin"     # the default account
    assert bt.run(prep).ledger.initial_cash == 25_000.0


def test_the_schedule_is_parsed_once_into_minutes():
    from engine.check.model import Schedule

    prep = bt.prepare("strategies/iron_condor.yaml")
    assert prep.schedule == Schedule("America/New_York", (9 * 60 + 30, 11 * 60), 15 * 60 + 50, 60.0, 60.0)
    assert Schedule.from_spec(None) == Schedule() and Schedule().entry_window is None


def test_universe_instruments_data_risk_and_options_listing_come_from_the_model(tmp_path):
    from engine.check.model import DataSpec, Instrument, OptionsListing, options_listing

    prep = bt.prepare("strategies/iron_condor.yaml")
    assert prep.symbols == ["XSP"]
    assert prep.instruments["XSP"] == Instrument("XSP", "IND", 1.0, 0.01, 0.0, prep.instruments["XSP"].calendar)
    assert prep.limits.max_open_positions == 1 and prep.limits.max_daily_loss == 500
    listing = options_listing(prep.ws, prep.doc, "XSP")
    assert isinstance(listing, OptionsListing) and listing.multiplier == 100 and listing.settlement == "cash"
    assert DataSpec.from_spec({"bar": "5m", "source": "x.csv", "on_bad_bar": "skip"}) == \
        DataSpec("5m", "x.csv", None, False, "skip")
    mega = bt.prepare("strategies/sma_crossover.yaml")
    assert mega.symbols == ["SPY"] and mega.instruments["SPY"].sec_type == "STK"


def test_the_checker_hands_over_rules_agents_and_classifications_parsed_once(monkeypatch):
    """Validation leaves the strategy's expressions as model types (rules, agents with their
    gates and scores, classifications with their cases, order values), each with the tree the
    checker parsed; the Plan is compiled from them without parsing anything again."""
    from engine.check.model import AgentSpec, Classification, StrategyExprs
    from engine.dsl import parser
    from engine.plan import build

    doc, ws = build.load_strategy(ROOT / "strategies" / "regime_agents.yaml", unsupported_ok=True)
    exprs = ws.checked[doc.abspath]
    assert isinstance(exprs, StrategyExprs)
    regime = next(c for c in exprs.classify if c.name == "regime")
    assert isinstance(regime, Classification)
    assert [c.label for c in regime.cases] == ["expansion", "trend", "compression", "mean_reversion", "neutral"]
    assert regime.cases[0].when.text == "atr_ratio > 1.5" and regime.cases[0].when.node == parser.parse("atr_ratio > 1.5")
    trend = next(a for a in exprs.agents if a.name == "trend")
    assert isinstance(trend, AgentSpec)
    assert trend.score.text == "clamp(trend_strength / 50, 0, 1)" and trend.active.where == ("agents", "trend", "active")
    assert [r.name for r in trend.entry][:2] == ["trend long", "trend short"] and trend.entry[0].order == "long"
    assert ("orders.long.stop_distance", "2 * atr14") in [(label, e.text) for label, e in exprs.orders]
    want = build.summary(build.build_plan(doc, ws))

    def refuse(text):
        raise AssertionError(f"parsed again: {text}")

    monkeypatch.setattr(parser, "parse", refuse)
    plan = build.build_plan(doc, ws)
    assert build.summary(plan) == want
    rules = {(r.agent, r.kind, r.name) for r in plan.rules}
    assert ("trend", "entry", "trend long") in rules and ("volatility", "exit", "squeeze target") in rules
    assert "agents.trend.score" in plan.outputs and "classify.regime" in plan.outputs
