"""A combo's close is priced apart from its opening: a chase's `floor` bounds the opening order
only (the smallest credit a condor is sold for is not the largest debit its stop loss may pay),
and a template's `close_price` (mid, market, {limit}, {chase}, its floor optional and in the
closing order's terms) prices the close instead. The bundled XSP iron condor, on its minute
bars and synthesised chains."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cli import main
from engine.runtime import backtest as bt

ROOT = Path(__file__).resolve().parents[1]
CONDOR = ROOT / "strategies" / "iron_condor.yaml"


def condor(tmp_path: Path, close_price=None, **orders) -> Path:
    doc = yaml.safe_load(CONDOR.read_text())
    doc["data"]["source"] = str(ROOT / "strategies" / "data") + "/"
    if close_price is not None:
        doc["orders"]["condor"]["close_price"] = close_price
    doc["orders"]["condor"].update(orders)
    path = tmp_path / "condor.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run(path: Path, **overrides):
    return bt.run(bt.prepare(path, overrides={k: str(v) for k, v in overrides.items()} or None), fast=False)


def test_the_close_chases_from_mid_past_the_opening_floor(tmp_path):
    """min_credit 0.10: the condor is sold for at least 0.10, and bought back from mid a cent at a
    time for the chase's four prices, past 0.10 (the floor bounded the close before, and a close
    whose mid was near 0.10 went to the natural price after one or two prices)."""
    result = run(CONDOR, min_credit=0.10)
    trades = result.ledger.trades
    assert len(trades) == 4
    said = [t.legs["close"] for t in trades]
    assert all("after 1 price" not in s and "after 2 prices" not in s and "after 3 prices" not in s for s in said), said
    # a close filled at a limit above the opening floor
    assert any(s.startswith("filled at") and float(s.split()[2]) > 0.10 for s in said), said
    assert all(s.startswith("filled at") and s.endswith("of 4") or "after 4 prices" in s for s in said), said
    for trade in trades:        # each opening sale took at least the floor
        assert trade.entry_price >= 0.10 - 1e-9


def test_a_close_price_floor_is_the_largest_debit_the_close_pays(tmp_path):
    """`close_price: {chase: {..., floor: credit + 0.01}}`: the close pays at most a cent over
    the condor's mid then (credit, read at the exit); its chase stops there and the condor is
    closed at the natural price."""
    base = run(CONDOR)
    floored = run(condor(tmp_path, {"chase": {"start": "mid", "step": 0.01, "steps": 4, "every": "15s",
                                              "floor": "credit + 0.01"}}))
    assert len(floored.ledger.trades) == len(base.ledger.trades) == 4
    said = [t.legs["close"] for t in floored.ledger.trades]
    for s in said:
        assert s.startswith("chase timed out after 1 price (") or s.startswith("chase timed out after 2 prices") \
            or s.startswith("filled at") and (s.endswith("step 1 of 1") or s.endswith("step 1 of 2")
                                              or s.endswith("step 2 of 2")), s
    assert any("closed at the natural price" in s for s in said)
    # the base chases to the fourth price; the floor cut every chase short
    assert all(s.startswith("filled at") and s.endswith("of 4") or "after 4 prices" in s
               for s in (t.legs["close"] for t in base.ledger.trades))


def test_close_price_market_closes_at_the_natural_price_at_once(tmp_path):
    base = run(CONDOR)
    market = run(condor(tmp_path, "market"))
    assert len(market.ledger.trades) == len(base.ledger.trades)
    for chased, crossed in zip(base.ledger.trades, market.ledger.trades):
        assert crossed.entry_time == chased.entry_time and crossed.entry_price == chased.entry_price
        assert crossed.legs["close"] == "closed at the natural price (close_price: market)", crossed.legs["close"]
        assert crossed.exit_reason.endswith("; closed at the natural price"), crossed.exit_reason
        # the natural price: never less than a chase from mid pays
        assert crossed.exit_price >= chased.exit_price - 1e-9
    assert sum(t.pnl for t in market.ledger.trades) < sum(t.pnl for t in base.ledger.trades)


def test_close_price_is_validated_at_its_line(tmp_path):
    ok = condor(tmp_path, {"chase": {"start": "mid", "step": 0.01, "steps": 4, "every": "15s"}})
    result = CliRunner().invoke(main, ["validate", str(ok)])
    assert result.exit_code == 0, result.output
    bad = condor(tmp_path, {"chase": {"start": "mid", "steps": 4, "floor": "credit + slipage"}})
    result = CliRunner().invoke(main, ["validate", str(bad)])
    line = next(i for i, text in enumerate(bad.read_text().splitlines(), 1) if "slipage" in text)
    assert result.exit_code != 0 and f"condor.yaml:{line}:" in result.output and "slipage" in result.output, \
        result.output
    assert "Traceback" not in result.output
    # an opening chase still needs its floor (the worst credit the condor is sold for)
    doc = yaml.safe_load(ok.read_text())
    del doc["orders"]["condor"]["price"]["chase"]["floor"]
    ok.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = CliRunner().invoke(main, ["validate", str(ok)])
    assert result.exit_code != 0 and "missing required key 'floor' in orders.condor.price.chase" in result.output, \
        result.output


def test_close_price_on_a_stock_order_is_refused(tmp_path):
    doc = yaml.safe_load((ROOT / "strategies" / "sma_crossover.yaml").read_text())
    name = next(iter(doc["orders"]))
    doc["orders"][name]["close_price"] = "market"
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = CliRunner().invoke(main, ["validate", str(path)])
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "close_price" in text)
    assert result.exit_code != 0 and f"s.yaml:{line}:" in result.output and "close_price" in result.output, \
        result.output


@pytest.mark.parametrize("mode", [["--dry-run"], []])
def test_the_close_price_holds_in_a_simulated_run_and_its_dry_run(tmp_path, mode):
    """The live path (bar by bar, timers for the chase) prices the close as the backtest does."""
    import json

    path = condor(tmp_path, "market")
    days = ["--from", "2019-11-04", "--to", "2019-11-08"]
    back = CliRunner().invoke(main, ["backtest", str(path), *days, "--format", "json", "--journal",
                                     str(tmp_path / "b.sqlite"), "--no-progress"])
    assert back.exit_code == 0, back.output
    live = CliRunner().invoke(main, ["run", str(path), "--broker", "sim", *days, "--format", "json", "--journal",
                                     str(tmp_path / "r.sqlite"), *mode])
    assert live.exit_code == 0, live.output
    summary = json.loads(back.output)["summary"]
    assert summary["trades"] >= 3 and json.loads(live.output)["summary"] == summary


def test_a_close_price_floor_binds_the_exit_waits_and_flat_by_still_closes(tmp_path):
    """A floor the close's chase cannot fill within (at most a cent over mid, where this venue
    fills a combo limit only halfway to the natural price) holds the exit back: cancelled,
    confirmed, journaled as blocked and decided again at the next close, never sent at the
    natural price; at flat_by's time the close goes whatever its bound, at the natural price if
    need be, and says why. The summary counts the exits held back apart from blocked entries."""
    path = condor(tmp_path, {"chase": {"start": "mid", "step": 0.01, "steps": 4, "every": "15s",
                                       "floor": "credit + 0.01"}})
    result = run(path)
    trades = result.ledger.trades
    assert trades
    held = [d for d in result.runner.decisions if d.kind == "exit" and d.outcome == "blocked"]
    assert held and all("the exit is decided again at the next close" in d.reason for d in held)
    assert any("not filled within close_price's floor" in d.reason for d in held)
    rules = {t.exit_rule for t in trades}
    # no close paid the natural price before flat_by's time (15:50 New York)
    for t in trades:
        close = t.legs["close"]
        if "natural price" in close:
            local = __import__("pandas").Timestamp(t.exit_time, tz="UTC").tz_convert("America/New_York")
            assert (local.hour, local.minute) >= (15, 50), (close, local)
    assert rules <= {"take profit", "stop loss", "flat_by"}
    out = CliRunner().invoke(main, ["backtest", str(path), "--journal", str(tmp_path / "j.sqlite"), "--no-progress"])
    assert out.exit_code == 0, out.output
    line = next(line for line in out.output.splitlines() if line.strip().startswith("Exits held back"))
    assert f"{len(held):,}" in line and "each decided again at the next close" in line, line
    entries = [line for line in out.output.splitlines() if line.strip().startswith("Entries blocked")]
    assert all("not filled within" not in line for line in entries), entries


def test_a_close_price_limit_that_is_no_price_is_refused_and_one_that_evaluates_to_none_closes_at_natural(tmp_path):
    bad = condor(tmp_path, {"limit": -0.05})
    out = CliRunner().invoke(main, ["validate", str(bad)])
    line = next(i for i, text in enumerate(bad.read_text().splitlines(), 1) if "-0.05" in text)
    assert out.exit_code != 0 and f"condor.yaml:{line}:" in out.output and "is not a price" in out.output, out.output
    # an expression that comes out at no price at the exit (credit - 1: below zero) does not hold
    # the exit back (a stop loss must go): the close goes at the natural price and says why
    result = run(condor(tmp_path, {"limit": "credit - 1"}))
    assert result.ledger.trades
    for t in result.ledger.trades:
        assert t.legs["close"].startswith("cannot price the close by its limit (the order's limit is -0."), \
            t.legs["close"]
        assert t.legs["close"].endswith("closed at the natural price")


@pytest.mark.parametrize("close_price", [{}, {"chse": {"start": "mid"}}])
def test_a_close_price_with_neither_form_asks_for_one_of_them(tmp_path, close_price):
    path = condor(tmp_path, close_price)
    out = CliRunner().invoke(main, ["validate", str(path)])
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "close_price" in text)
    assert out.exit_code != 0, out.output
    assert f"condor.yaml:{line}:" in out.output and "orders.condor.close_price needs one of limit, chase" in out.output
    assert 'e.g. {"limit": ' in out.output and "missing required key 'limit'" not in out.output, out.output


def test_the_close_price_reads_the_open_position(tmp_path):
    """close_price's expressions read the position (an opening price cannot: there is none):
    `floor: position.entry_price - 0.05` buys the condor back only for at least 5 cents under the
    credit it was sold for, so each close that went before flat_by kept that much."""
    path = condor(tmp_path, {"chase": {"start": "mid", "step": 0.01, "steps": 4, "every": "15s",
                                       "floor": "position.entry_price - 0.05"}})
    out = CliRunner().invoke(main, ["validate", str(path)])
    assert out.exit_code == 0, out.output
    result = run(path)
    assert result.ledger.trades
    for t in result.ledger.trades:
        if "natural" not in t.legs["close"]:        # (flat_by's close goes whatever its bound)
            assert t.exit_price <= t.entry_price - 0.05 + 1e-9, (t.entry_price, t.exit_price, t.legs["close"])
    doc = yaml.safe_load(path.read_text())
    doc["orders"]["condor"]["price"] = {"limit": "position.entry_price"}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = CliRunner().invoke(main, ["validate", str(path)])
    assert out.exit_code != 0 and "position fields are not there when the combo is opened" in out.output, out.output
