"""How an option's listing decides what a run may do with it (universes/instruments.yaml's
`style` and `settlement`): American-style options are refused in simulated runs unless the
strategy says to simulate them as European (backtest.options.american_as_european); a
physically settled combo that would deliver shares is closed at the natural price before its
expiry's close, in every mode; a cash-settled one is settled at intrinsic value."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

import cli
from engine.diagnostics import DiagnosticError
from engine.runtime import backtest as bt

ROOT = Path(__file__).resolve().parents[1]
SPXW = ROOT.parent / "shared" / "data" / "optopsy_v1" / "test_options_data_full.csv"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_key_effects import _write, condor_held_near, condor_instruments  # noqa: E402


def _files(tmp_path: Path, files: dict, name: str = "run") -> Path:
    return _write(tmp_path / name, copy.deepcopy(files))


def _near(settlement: str) -> dict:
    files = condor_held_near()
    files["i.yaml"]["roots"]["XSP"]["options"]["settlement"] = settlement
    return files


def _in_the_money(trade) -> bool:
    spot = trade.legs["underlying_exit"]
    return any((spot > leg["strike"]) if leg["right"] == "call" else (spot < leg["strike"])
               for leg in trade.legs["legs"])


def test_a_physically_settled_combo_that_would_deliver_is_closed_at_natural_before_the_close(tmp_path):
    cash = bt.run(bt.prepare(_files(tmp_path, _near("cash"), "cash")))
    physical = bt.run(bt.prepare(_files(tmp_path, _near("physical"), "physical")))
    assert len(cash.ledger.trades) == len(physical.ledger.trades) == 3
    delivered = [(c, p) for c, p in zip(cash.ledger.trades, physical.ledger.trades) if p.exit_rule != c.exit_rule]
    assert len(delivered) == 1                      # 2019-11-08: XSP closed through the short call
    cash_trade, closed = delivered[0]
    assert cash_trade.exit_rule == "expiry settlement" and _in_the_money(cash_trade)
    assert closed.exit_rule == "physical settlement"
    assert "an in-the-money leg would deliver shares" in closed.exit_reason
    # closed on the expiry day's last bar (15:59 New York), not settled at 16:00
    assert str(pd.Timestamp(closed.exit_time, tz="UTC"))[:16] == "2019-11-08 21:00"
    # at the natural price: each leg crossed, the debit is the buy legs' asks less the sell legs' bids
    exit_legs = closed.legs["exit_legs"]
    natural = sum(leg["ask"] if leg["action"] == "sell" else -leg["bid"] for leg in exit_legs)
    assert closed.legs["debit"] == pytest.approx(natural)
    assert closed.legs["debit"] > cash_trade.legs["debit"]      # crossing the spreads costs more than intrinsic
    assert closed.pnl == pytest.approx((closed.legs["credit"] - natural) * 100 - 8 * 0.65)
    # the others expired with every leg out of the money: nothing to deliver, settled as before
    for c, p in zip(cash.ledger.trades, physical.ledger.trades):
        if p.exit_rule == "expiry settlement":
            assert not _in_the_money(p) and p.pnl == pytest.approx(c.pnl)


def test_the_decision_to_close_before_delivery_is_journaled_with_its_reason(tmp_path):
    path = _files(tmp_path, _near("physical"))
    result = CliRunner().invoke(cli.main, ["backtest", str(path), "--journal", str(tmp_path / "j.sqlite"),
                                           "--no-progress"])
    assert result.exit_code == 0, result.output
    import sqlite3

    db = sqlite3.connect(tmp_path / "j.sqlite")
    rows = db.execute("SELECT ts, outcome, reason, detail FROM decisions WHERE rule = 'physical settlement'").fetchall()
    orders = db.execute("SELECT status, reason FROM orders WHERE rule = 'physical settlement'").fetchall()
    assert len(rows) == 1 and rows[0][1] == "fired"
    assert "settle physically (shares delivered)" in rows[0][3]
    assert orders == [("filled", "closed at the natural price before its expiry's close: an in-the-money leg "
                                 "would deliver shares")]


def test_american_options_are_refused_in_simulated_runs_at_the_maps_line(tmp_path):
    files = condor_instruments()
    files["i.yaml"]["roots"]["XSP"]["options"]["style"] = "american"
    path = _files(tmp_path, files)
    for args in (["backtest", str(path)], ["run", str(path), "--broker", "sim"],
                 ["run", str(path), "--dry-run", "--broker", "sim"]):
        result = CliRunner().invoke(cli.main, [*args, "--journal", str(tmp_path / "j.sqlite")])
        assert result.exit_code == 1, result.output
        text = result.output
        lines = (path.parent / "i.yaml").read_text().splitlines()
        xsp = lines.index("  XSP:")
        line = next(n for n, t in enumerate(lines, 1) if n > xsp and "style: american" in t)
        assert "XSP options are American-style (" in text and f"i.yaml:{line}:" in text, text
        assert "american_as_european: true" in text
        assert "nothing was run" in text and not (tmp_path / "j.sqlite").exists()
    # with the trader's consent the same file runs, as European
    files["s.yaml"]["backtest"] = {**files["s.yaml"].get("backtest", {}), "options": {"american_as_european": True}}
    european = bt.run(bt.prepare(_files(tmp_path, condor_instruments(), "european")))
    consented = bt.run(bt.prepare(_files(tmp_path, files, "consented")))
    assert [t.pnl for t in consented.ledger.trades] == [t.pnl for t in european.ledger.trades]
    assert consented.ledger.trades


def test_an_ib_run_is_not_refused_for_american_options(tmp_path):
    """IB trades its own contracts: the prepare of a run on a broker (bars from the broker's
    history) does not refuse American options."""
    files = condor_instruments()
    files["i.yaml"]["roots"]["XSP"]["options"]["style"] = "american"
    path = _files(tmp_path, files)
    with pytest.raises(DiagnosticError):
        bt.prepare(path)
    frames = bt.prepare(_files(tmp_path, condor_instruments(), "frames")).frames
    prep = bt.prepare(path, frames_from=lambda symbols, bar, tz: {s: frames[s] for s in symbols if s in frames})
    assert prep.symbols == ["XSP"]


def test_an_unlisted_stock_takes_the_stock_defaults_style_and_settlement():
    from engine.check.model import OptionsListing

    # the schema's defaults (american, physical), not cash: what an unlisted stock's options are
    assert OptionsListing().style == "american" and OptionsListing().settlement == "physical"
    bundled = yaml.safe_load((ROOT / "universes" / "instruments.yaml").read_text())
    assert bundled["defaults"]["STK"]["options"]["style"] == "american"


@pytest.mark.skipif(not SPXW.is_file(), reason="../shared/data (the SPXW chains) is not present")
def test_on_daily_bars_the_close_comes_a_session_before_expiry(tmp_path):
    """A daily bar is decided after its close, when expiring options no longer trade: a
    physically settled combo that would deliver is closed on the last bar before its expiry day.
    SPX condors on the real 2018 chains held to expiry: January's ends with its short call in the
    money (SPX 2823.89 on the 31st), February's with every leg out of it."""
    from engine.config.yamlsource import load_yaml
    from test_options_backtest import condor

    bundled = load_yaml(str(ROOT / "universes" / "instruments.yaml")).data
    runs = {}
    for settlement in ("cash", "physical"):
        folder = tmp_path / settlement
        folder.mkdir()
        path = condor(folder, exits="  - name: never\n    when: position.dte < -1000\n")
        path.write_text(path.read_text() + "instruments: i.yaml\n")
        spx = copy.deepcopy(bundled["roots"]["SPX"])
        spx["options"]["settlement"] = settlement
        (folder / "i.yaml").write_text(yaml.safe_dump({"kind": "instruments", "name": "i",
                                                       "defaults": bundled["defaults"], "roots": {"SPX": spx}}))
        runs[settlement] = bt.run(bt.prepare(path)).ledger.trades
    cash, physical = runs["cash"], runs["physical"]
    assert [t.exit_rule for t in cash] == ["expiry settlement", "expiry settlement"]
    assert [t.exit_rule for t in physical] == ["physical settlement", "expiry settlement"]
    assert _in_the_money(cash[0]) and not _in_the_money(cash[1])
    day = 86_400 * 10**9
    assert physical[0].exit_time == cash[0].exit_time - day          # Jan 30's bar, not Jan 31's
    assert physical[0].legs["underlying_exit"] == pytest.approx(2822.46)
    natural = sum(leg["ask"] if leg["action"] == "sell" else -leg["bid"] for leg in physical[0].legs["exit_legs"])
    assert physical[0].pnl == pytest.approx((physical[0].legs["credit"] - natural) * 100 - 8 * 0.65)
    assert physical[1].pnl == pytest.approx(cash[1].pnl)
