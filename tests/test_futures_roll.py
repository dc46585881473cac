"""Issue 15 item 5: a futures position held when the roll rule moves the front month on is rolled,
on real per-contract history across a real roll: LEAN's ES daily bars per contract (../shared/data,
2013-10-06..2013-12-26), where with the bundled roll_days (5) ESZ3 (last trade 2013-12-20) is the
front month to Friday 2013-12-13 and ESH4 from Monday 2013-12-16.

The roll closes the position in ESZ3 and opens it in ESH4 at the next bar's open (each at its own
contract's price, with the fill model's commission and slippage), journaled as two orders with
rule 'roll'; the trade list has ESZ3's trade closed by 'roll' and ESH4's opened by 'roll'. Across
the roll the position's P&L is that of the same trade on a held-through back-adjusted series (the
front series with the bars before the roll shifted by the roll gap) less the roll legs' costs,
and its stops move by the roll gap. `run --broker sim` and its dry run equal the backtest."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from engine.runtime import backtest as bt
from engine.runtime.journal import Journal
from engine.runtime.session import simulate
from test_futures import NY, daily_file, needs_daily, write

pytestmark = needs_daily

COMMISSION = 2.25


def _day(prep, day: str) -> int:
    return list(prep.frames["ES"].index.strftime("%Y-%m-%d")).index(day)


def _exit_on(tmp: Path, source: Path, day: str, **kw) -> Path:
    """Enter at the first close, exit at `day`'s close (its bar index, found on the same bars)."""
    probe = bt.prepare(write(tmp, source=source, bar="1d", entry="close > 0", exit_="false", roll_days=5,
                             name="probe.yaml"))
    return write(tmp, source=source, bar="1d", entry="bar_index == 0", exit_=f"bar_index == {_day(probe, day)}",
                 roll_days=5, **kw)


def _back_adjusted(tmp: Path, prep) -> tuple[Path, float]:
    """The front series held through: bars before the roll shifted by the gap at the roll bar's
    open (ESH4's less ESZ3's; the Panama back-adjustment), as a continuous file (no contract column)."""
    series = prep.frames["ES"]
    k = _day(prep, "2013-12-16")
    bars = prep.fronts["ES"].bars
    at = series.index[k]
    gap = float(bars["ESH4"].loc[at, "open"] - bars["ESZ3"].loc[at, "open"])
    out = series[["open", "high", "low", "close", "volume"]].copy()
    out.iloc[:k, :4] += gap
    out.index = out.index.strftime("%Y-%m-%d")
    out.index.name = "date"
    path = tmp / "es_back_adjusted.csv"
    out.to_csv(path)
    return path, gap


def _journal(result, tmp: Path) -> sqlite3.Connection:
    path = tmp / "j.sqlite"
    with Journal(path) as journal:
        bt.write_journal(result, journal)
    return sqlite3.connect(path)


def test_the_december_2013_roll_is_a_close_in_esz3_and_an_open_in_esh4_journaled_with_rule_roll(tmp_path):
    source = daily_file(tmp_path)
    prep = bt.prepare(_exit_on(tmp_path, source, "2013-12-20"))
    k = _day(prep, "2013-12-13")
    b = bt._symbol_bars(prep, "ES")[0]
    assert (b.contract_at(k), b.contract_at(k + 1), b.roll_bar["ESZ3"]) == ("ESZ3", "ESH4", k)
    result = bt.run(prep, run_id="t")
    z, h = prep.fronts["ES"].bars["ESZ3"], prep.fronts["ES"].bars["ESH4"]
    at = prep.frames["ES"].index[k + 1]                     # Monday 2013-12-16, the series' first ESH4 bar
    entry, out, into, exit_ = result.ledger.fills
    assert (out.action, out.contract, out.rule, out.price) == ("sell", "ESZ3", "roll", z.loc[at, "open"])
    assert (into.action, into.contract, into.rule, into.price) == ("buy", "ESH4", "roll", h.loc[at, "open"])
    assert (out.price, into.price) == (1783.5, 1777.5)
    assert out.time == into.time == b.start[k + 1] and out.quantity == into.quantity == entry.quantity
    assert (exit_.contract, exit_.rule) == ("ESH4", "out")
    first, second = result.ledger.trades
    assert (first.contract, first.entry_rule, first.exit_rule, first.exit_reason) == ("ESZ3", "in", "roll",
                                                                                     "roll ESZ3 -> ESH4")
    assert (second.contract, second.entry_rule, second.exit_rule) == ("ESH4", "roll", "out")
    assert (second.side, second.owner, second.entry_states) == (first.side, first.owner, first.entry_states)
    assert first.pnl == (1783.5 - entry.price) * 50 - 2 * COMMISSION
    assert second.pnl == (exit_.price - 1777.5) * 50 - 2 * COMMISSION
    # equity across the roll: ESZ3 marked at its close to the roll, then ESZ3's realised P&L plus ESH4's
    equity = dict(zip(result.times.tolist(), result.equity.tolist()))
    before = z.loc[prep.frames["ES"].index[k], "close"]
    assert equity[int(b.end[k])] == 100_000 - COMMISSION + (before - entry.price) * 50
    assert equity[int(b.end[k + 1])] == 100_000 + first.pnl - COMMISSION + (h.loc[at, "close"] - 1777.5) * 50
    db = _journal(result, tmp_path)
    orders = db.execute("SELECT rule, intent, action, status, local_symbol, reason FROM orders ORDER BY rowid"
                        ).fetchall()
    assert orders[1:3] == [("roll", "close", "sell", "filled", "ESZ3", "roll ESZ3 -> ESH4"),
                           ("roll", "open", "buy", "filled", "ESH4", "roll ESZ3 -> ESH4")]
    fills = db.execute("SELECT o.rule, f.action, f.price, f.local_symbol, f.commission FROM fills f JOIN orders o "
                       "ON o.order_ref = f.order_ref ORDER BY f.rowid").fetchall()
    assert fills[1:3] == [("roll", "sell", 1783.5, "ESZ3", COMMISSION), ("roll", "buy", 1777.5, "ESH4", COMMISSION)]
    trades = db.execute("SELECT entry_rule, exit_rule, local_symbol FROM trades ORDER BY rowid").fetchall()
    assert trades == [("in", "roll", "ESZ3"), ("roll", "out", "ESH4")]
    decided = db.execute("SELECT rule, kind, outcome, reason FROM decisions WHERE rule = 'roll'").fetchall()
    assert decided == [("roll", "exit", "fired", "roll ESZ3 -> ESH4")]
    # run --broker sim (the plan streamed bar by bar) and its dry run: the same fills, trades and equity
    for dry_run in (False, True):
        run = simulate(prep, run_id="t", dry_run=dry_run)
        assert list(run.ledger.fills) == list(result.ledger.fills)
        assert list(run.ledger.trades) == list(result.ledger.trades)
        assert np.array_equal(run.equity, result.equity)


@pytest.mark.parametrize("extra, legs", [("", 2 * COMMISSION),
                                         (", slippage: {ticks: 1}", 2 * COMMISSION + 2 * 0.25 * 50)])
def test_the_pnl_across_the_roll_is_the_back_adjusted_series_held_through_less_the_roll_legs_costs(tmp_path, extra,
                                                                                                  legs):
    """The same trade, 2013-10-07 to 2013-12-20, rolled on the per-contract file and held through
    on its back-adjusted series: the rolled P&L (two trades) is the held one less the roll legs'
    commissions (and slippage, one tick a leg)."""
    source = daily_file(tmp_path)
    rolled = bt.prepare(_exit_on(tmp_path, source, "2013-12-20", backtest=extra))
    adjusted_file, gap = _back_adjusted(tmp_path, rolled)
    assert gap == -6.0                                          # ESH4 1777.50 less ESZ3 1783.50 at the roll
    held = bt.prepare(_exit_on(tmp_path, adjusted_file, "2013-12-20", backtest=extra))
    assert "ES" not in held.fronts                              # a continuous series: nothing to roll
    r, a = bt.run(rolled, run_id="r"), bt.run(held, run_id="a")
    assert [t.exit_rule for t in r.ledger.trades] == ["roll", "out"] and len(a.ledger.trades) == 1
    whole = a.ledger.trades[0]
    assert r.ledger.trades[0].entry_price + gap == whole.entry_price        # the entry, back-adjusted
    assert r.ledger.trades[-1].exit_price == whole.exit_price               # the same ESH4 price at the exit
    assert sum(t.pnl for t in r.ledger.trades) == pytest.approx(whole.pnl - legs, abs=1e-9)
    assert r.ledger.cash == pytest.approx(a.ledger.cash - legs, abs=1e-9)


def test_a_stop_set_at_entry_moves_by_the_roll_gap_and_the_rules_read_the_entry_back_adjusted(tmp_path):
    """A stop 60 points under the entry price: 1609 in ESZ3, cancelled by the roll and placed again
    in ESH4 at 1603 (the gap is -6); an exit on position.pnl and one on position.bars_held fire
    on the same bars as on the back-adjusted series held through."""
    source = daily_file(tmp_path)
    stop = "  - {name: stop, stop: position.entry_price - 60, reason: initial stop}\n"
    prep = bt.prepare(write(tmp_path, source=source, bar="1d", entry="bar_index == 0", exit_="false", roll_days=5,
                            exits=stop))
    result = bt.run(prep, run_id="t")
    stops = [(o.intent.stop, o.contract, o.status) for o in result.runner.orders if o.intent.rule == "stop"]
    assert stops == [(1669.0 - 60, "ESZ3", "cancelled"), (1669.0 - 60 - 6.0, "ESH4", "working")]
    pos = result.ledger.positions["ES"]
    assert (pos.contract, pos.avg_price, pos.avg_price - pos.carried) == ("ESH4", 1777.5, 1669.0 - 6.0)
    run = simulate(prep, run_id="t")
    assert list(run.ledger.fills) == list(result.ledger.fills) and np.array_equal(run.equity, result.equity)
    adjusted_file, _ = _back_adjusted(tmp_path, prep)
    for exit_ in ("position.pnl > 7500", "position.bars_held >= 57"):
        r = bt.run(bt.prepare(write(tmp_path, source=source, bar="1d", entry="bar_index == 0", exit_=exit_,
                                    roll_days=5)), run_id="r")
        a = bt.run(bt.prepare(write(tmp_path, source=adjusted_file, bar="1d", entry="bar_index == 0", exit_=exit_,
                                    roll_days=5)), run_id="a")
        assert [t.exit_rule for t in r.ledger.trades][:2] == ["roll", "out"], exit_
        assert r.ledger.trades[1].exit_time == a.ledger.trades[0].exit_time, exit_
        assert r.ledger.trades[1].exit_price == a.ledger.trades[0].exit_price, exit_


def test_a_short_position_is_rolled_short(tmp_path):
    source = daily_file(tmp_path)
    prep = bt.prepare(write(tmp_path, source=source, bar="1d", entry="bar_index == 0", exit_="false", roll_days=5,
                            action="sell"))
    result = bt.run(prep, run_id="t")
    assert [(f.action, f.contract, f.rule) for f in result.ledger.fills] == [
        ("sell", "ESZ3", "in"), ("buy", "ESZ3", "roll"), ("sell", "ESH4", "roll")]
    (trade,) = result.ledger.trades
    assert (trade.side, trade.pnl) == ("short", (1669.0 - 1783.5) * 50 - 2 * COMMISSION)
    assert result.ledger.positions["ES"].quantity == -1
    assert list(simulate(prep, run_id="t").ledger.fills) == list(result.ledger.fills)


def test_with_fill_close_the_roll_fills_at_the_old_fronts_last_close_in_both_contracts(tmp_path):
    source = daily_file(tmp_path)
    prep = bt.prepare(write(tmp_path, source=source, bar="1d", entry="bar_index == 0", exit_="false", roll_days=5,
                            backtest=", fill: close"))
    result = bt.run(prep, run_id="t")
    k = _day(prep, "2013-12-13")
    at = prep.frames["ES"].index[k]
    bars = prep.fronts["ES"].bars
    _, out, into = result.ledger.fills
    assert (out.contract, out.price) == ("ESZ3", bars["ESZ3"].loc[at, "close"])
    assert (into.contract, into.price) == ("ESH4", bars["ESH4"].loc[at, "close"])
    assert out.time == into.time == bt._symbol_bars(prep, "ES")[0].end[k]
    assert list(simulate(prep, run_id="t").ledger.fills) == list(result.ledger.fills)


def test_the_reports_trade_list_shows_esz3s_trade_closed_by_the_roll_and_esh4s_opened_by_it(tmp_path):
    from html import unescape

    from engine.report.html import render_report

    source = daily_file(tmp_path)
    result = bt.run(bt.prepare(_exit_on(tmp_path, source, "2013-12-20")), run_id="t")
    _journal(result, tmp_path).close()
    html = render_report(tmp_path / "j.sqlite", "t")
    body = html[html.index("<tbody", html.index('id="trades"')):]
    rows = re.findall(r"<tr>(.*?)</tr>", body, re.S)[:2]
    cells = [[unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)]
             for r in rows]
    assert cells[0][1] == "ES ESZ3" and cells[1][1] == "ES ESH4"
    assert cells[0][-1] == "roll ESZ3 -> ESH4" and cells[1][-2] == "roll"


def test_the_rolled_position_keeps_its_agent_and_the_states_at_its_first_entry(tmp_path):
    source = daily_file(tmp_path)
    write(tmp_path, source=source, bar="1d", entry="false", exit_="false", roll_days=5)      # its i.yaml
    path = tmp_path / "agents.yaml"
    path.write_text(f"""kind: strategy
name: es-agents
universe: [ES]
instruments: i.yaml
data: {{bar: 1d, session: extended, source: {source}}}
schedule: {{timezone: {NY}}}
classify:
  tape:
    - {{name: up, when: "close > close[1]"}}
    - {{name: down, when: true}}
agents:
  swing:
    entry:
      - {{name: swing in, when: bar_index == 1, order: buy}}
    exit:
      - {{name: swing stop, stop: position.entry_price - 100}}
orders:
  buy: {{action: buy, type: market, quantity: 1}}
backtest: {{cash: 100000, commission: {{per_contract: 2.25}}}}
risk: {{max_open_positions: 1, margin_check: "off"}}
""")
    prep = bt.prepare(path)
    result = bt.run(prep, run_id="t")
    first, = result.ledger.trades
    held = result.ledger.positions["ES"]
    assert (first.owner, first.exit_rule, held.owner, held.entry_rule, held.contract) == (
        "swing", "roll", "swing", "roll", "ESH4")
    up = prep.frames["ES"]["close"].iloc[1] > prep.frames["ES"]["close"].iloc[0]
    assert first.entry_states == held.states == (("tape", "up" if up else "down"),)
    # the state at the roll bar is another: the states are the first entry's, not re-read at the roll
    k = _day(prep, "2013-12-13")
    at_roll = "up" if prep.frames["ES"]["close"].iloc[k] > prep.frames["ES"]["close"].iloc[k - 1] else "down"
    assert at_roll != held.states[0][1]
    stops = [(o.intent.stop, o.contract, o.owner) for o in result.runner.orders if o.intent.rule == "swing stop"]
    assert stops[-1] == (first.entry_price - 100 - 6.0, "ESH4", "swing")
    assert list(simulate(prep, run_id="t").ledger.trades) == list(result.ledger.trades)
