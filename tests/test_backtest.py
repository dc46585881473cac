"""Backtests end to end: fills, costs, the ledger, exits, risk limits, the journal and the CLI."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from click.testing import CliRunner

import cli
from engine.brokers.costs import Commission, Slippage
from engine.brokers.matching import FillModel
from engine.market.series import SymbolBars
from engine.orders.intent import OrderIntent
from engine.portfolio.ledger import Fill, Ledger
from engine.runtime import backtest as bt
from engine.runtime.journal import Journal

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SAMPLE = ROOT / "strategies" / "data"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def strategy(tmp_path: Path, body: str, name: str = "s.yaml") -> Path:
    return write(tmp_path, name, "kind: strategy\nname: test\n" + body)


# ---- the simulated broker ------------------------------------------------------------------

def bars(opens, highs, lows, closes, sessions=None) -> SymbolBars:
    n = len(opens)
    start = np.arange(n, dtype=np.int64) * 86_400 * 10**9
    return SymbolBars("X", start, start + 86_400 * 10**9, np.array(opens, float), np.array(highs, float),
                      np.array(lows, float), np.array(closes, float),
                      np.array(sessions if sessions is not None else range(n), dtype=float))


B = bars([10, 10, 9, 12, 11], [11, 10.5, 10, 13, 12], [9.5, 9.8, 8.5, 11.5, 10.5], [10, 10, 9.5, 12, 11])


def test_market_orders_fill_at_the_next_open_with_adverse_slippage():
    broker = FillModel(Commission(), Slippage(fixed=0.05))
    fill = broker.execute(B, OrderIntent("X", "buy"), 0)
    assert (fill.bar, fill.price) == (1, 10.05)
    fill = broker.execute(B, OrderIntent("X", "sell"), 1)
    assert (fill.bar, fill.price) == (2, 8.95)
    assert broker.execute(B, OrderIntent("X", "buy"), 4) is None  # no bar after the last one


def test_fill_at_close_model():
    fill = FillModel(Commission(), Slippage(), "close").execute(B, OrderIntent("X", "buy"), 2)
    assert (fill.bar, fill.price) == (2, 9.5)


def test_limit_orders_fill_when_touched_at_the_limit_or_the_better_open():
    broker = FillModel(Commission(), Slippage(fixed=1.0))  # slippage never applies to limits
    gtc = OrderIntent("X", "buy", "limit", 1, limit=9.0, tif="gtc")
    fill = broker.execute(B, gtc, 0)
    assert (fill.bar, fill.price) == (2, 9.0)           # bar 2 traded down to 8.5: filled at 9.0
    gap = OrderIntent("X", "sell", "limit", 1, limit=11.5, tif="gtc")
    fill = broker.execute(B, gap, 2)
    assert (fill.bar, fill.price) == (3, 12.0)          # opened above the limit: the better open
    day = OrderIntent("X", "buy", "limit", 1, limit=9.0, tif="day")
    assert broker.execute(B, day, 0) is None            # only bar 1's session: never touched


def test_stop_orders_fill_at_the_stop_or_the_gap_open_with_slippage():
    broker = FillModel(Commission(), Slippage(fixed=0.01))
    stop = OrderIntent("X", "buy", "stop", 1, stop=12.5, tif="gtc")
    fill = broker.execute(B, stop, 0)
    assert (fill.bar, fill.price) == (3, 12.51)          # high 13 touched 12.5
    gap = OrderIntent("X", "sell", "stop", 1, stop=9.9, tif="gtc")
    fill = broker.execute(B, gap, 1)
    assert (fill.bar, fill.price) == (2, 8.99)           # opened at 9 below the stop: the open
    stop_limit = OrderIntent("X", "buy", "stop_limit", 1, stop=12.5, limit=12.4, tif="gtc")
    fill = broker.execute(B, stop_limit, 0)
    assert (fill.bar, fill.price) == (4, 11.0)           # triggered in bar 3 at 12.5, above the limit; rests as a limit and fills at bar 4's lower open


def test_ib_style_commissions():
    ib = Commission.from_spec({"per_share": 0.005, "minimum": 1.0, "maximum": "1%"})
    assert ib(100, 25.0) == 1.0                 # 0.50 -> minimum 1.00
    assert ib(1000, 50.0) == 5.0
    assert ib(10_000, 0.10) == pytest.approx(10.0)  # 50.00 capped at 1% of 1,000
    futures = Commission.from_spec({"per_contract": 2.25})
    assert futures(3, 4000.0, 50, contracts=True) == pytest.approx(6.75)
    pct = Commission.from_spec({"percent": "0.1%"})
    assert pct(10, 100.0) == pytest.approx(1.0)


def test_ledger_stock_and_futures_cash():
    ledger = Ledger(10_000)
    ledger.open(Fill("S", "buy", 10, 100.0, 1.0, 0, 0))
    assert ledger.cash == pytest.approx(10_000 - 1000 - 1)
    assert ledger.equity({"S": 110.0}) == pytest.approx(8_999 + 1100)
    trade = ledger.close(Fill("S", "sell", 10, 110.0, 1.0, 1, 5))
    assert trade.pnl == pytest.approx(100 - 2) and trade.bars_held == 5
    assert ledger.cash == pytest.approx(10_098)
    fut = Ledger(10_000)
    fut.open(Fill("NQ", "sell", 2, 15_000.0, 4.5, 0, 0, multiplier=20), margined=True, margin_per_unit=18_000)
    assert fut.cash == pytest.approx(10_000 - 4.5)      # no notional moves for a future
    assert fut.equity({"NQ": 14_900.0}) == pytest.approx(9_995.5 + 4_000)  # short 2 x 100 pts x 20
    assert fut.margin_in_use() == 36_000


# ---- exits, sizing and risk on the bundled sample -------------------------------------------

def test_atr_stop_exit_fills_at_the_level_or_the_gap_open(tmp_path):
    path = strategy(tmp_path, f"""
universe: [SPY]
data: {{bar: 1d, source: {SAMPLE}}}
indicators:
  range: atr(14)
entry:
  - name: breakout
    when: close > highest(high, 20)[1]
    order: buy
exit:
  - name: atr stop
    stop: position.entry_price - 2 * at_entry(range)
  - name: time stop
    when: position.bars_held >= 30
orders:
  buy: {{action: buy, type: market, quantity: 100}}
backtest: {{cash: 100000, account: cash}}
""")
    result = bt.run(bt.prepare(path))
    trades = result.ledger.trades
    b = result.bars["SPY"]
    plan = result.prepared.plan
    atr = result.runner.signals["SPY"].values[plan.outputs["indicator.range"]]
    stops = [t for t in trades if t.exit_rule == "atr stop"]
    timed = [t for t in trades if t.exit_rule == "time stop"]
    assert stops and timed
    for t in stops:
        # the level on the cent grid, a sell stop's rounded up (towards the market), as it is sent
        level = round(math.ceil((t.entry_price - 2 * atr[t.entry_bar]) / 0.01 - 1e-6) * 0.01, 10)
        assert b.low[t.exit_bar] <= level
        assert (b.low[t.entry_bar + 1:t.exit_bar] > level).all()     # not touched earlier
        assert t.exit_price == pytest.approx(min(b.open[t.exit_bar], level))
    for t in timed:
        assert t.exit_bar == t.entry_bar + 30 + 1      # decided at the close of bar +30, filled at the next open
        assert t.exit_price == b.open[t.exit_bar]
    # positions never overlap and every exit follows its entry
    for a, c in zip(trades, trades[1:]):
        assert a.exit_bar <= c.entry_bar and a.entry_bar < a.exit_bar


def test_equity_curve_agrees_with_the_ledger(tmp_path):
    result = bt.run(bt.prepare(ROOT / "strategies" / "sma_crossover.yaml"))
    b = result.bars["SPY"]
    open_value = sum(p.quantity * b.close[-1] for p in result.ledger.positions.values())
    assert result.final_equity == pytest.approx(result.ledger.cash + open_value)
    # equity only moves with the price while a position is open
    pnl = sum(t.pnl for t in result.ledger.trades)
    unrealised = sum((b.close[-1] - p.avg_price) * p.quantity for p in result.ledger.positions.values())
    assert result.final_equity == pytest.approx(100_000 + pnl + unrealised - sum(
        p.entry_commission for p in result.ledger.positions.values()))
    assert (result.cash >= -1e-6).all()
    # all in at the next open: whole shares, never more than the cash allows
    for f in result.ledger.fills[::2]:
        assert f.quantity == int(f.quantity)


def test_cash_account_refuses_shorts_and_unaffordable_orders(tmp_path):
    path = strategy(tmp_path, f"""
universe: [SPY]
data: {{bar: 1d, source: {SAMPLE}}}
entry:
  - name: fade
    when: close > sma(close, 5)
    order: short
  - name: big
    when: close < sma(close, 5)
    order: huge
orders:
  short: {{action: sell, type: market, quantity: 10}}
  huge: {{action: buy, type: market, quantity: 100000}}
exit:
  - name: next day
    when: position.bars_held >= 1
backtest: {{cash: 10000, account: cash}}
""")
    result = bt.run(bt.prepare(path))
    reasons = {d.reason for d in result.runner.decisions if d.outcome == "blocked"}
    assert "short selling needs a margin account" in reasons
    assert any(r.startswith("insufficient cash") for r in reasons)
    assert not result.ledger.trades


def test_max_open_positions_across_symbols(tmp_path):
    path = strategy(tmp_path, f"""
universe: [SPY, AAPL, INTC]
data: {{bar: 1d, source: {SAMPLE}}}
entry:
  - name: up day
    when: close > open
    order: buy
exit:
  - name: after three bars
    when: position.bars_held >= 3
orders:
  buy: {{action: buy, type: market, quantity: 10}}
risk: {{max_open_positions: 1}}
""")
    result = bt.run(bt.prepare(path))
    spans = sorted((t.entry_time, t.exit_time) for t in result.ledger.trades)
    assert len({t.symbol for t in result.ledger.trades}) == 3
    for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
        assert a1 <= b0, "two positions were open at once"
    assert any("max_open_positions" in d.reason for d in result.runner.decisions if d.outcome == "blocked")


def test_percent_of_equity_and_risk_sizing(tmp_path):
    path = strategy(tmp_path, f"""
universe: [SPY]
data: {{bar: 1d, source: {SAMPLE}}}
indicators:
  distance: 2 * atr(14)
entry:
  - name: up
    when: crosses_above(close, sma(close, 20))
    order: buy
exit:
  - name: down
    when: crosses_below(close, sma(close, 20))
orders:
  buy: {{action: buy, type: market, quantity: {{risk_percent: 1%, stop_distance: distance}}}}
backtest: {{cash: 50000}}
""")
    result = bt.run(bt.prepare(path))
    values = result.runner.signals["SPY"].values
    distance = values[result.prepared.plan.outputs["indicator.distance"]]
    first = result.ledger.trades[0]
    decided = first.entry_bar - 1
    assert first.quantity == int(0.01 * 50_000 / distance[decided])


def test_date_range_and_warmup_before_it(tmp_path):
    prep = bt.prepare(ROOT / "strategies" / "sma_crossover.yaml", start="2012-01-01", end="2013-12-31")
    result = bt.run(prep)
    assert str(np.datetime64(int(result.labels[0]), "ns"))[:10] == "2012-01-03"
    assert str(np.datetime64(int(result.labels[-1]), "ns"))[:4] == "2013"
    assert all(t.entry_time >= int(prep.start.value) for t in result.ledger.trades)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not present")
def test_intraday_resampling_entry_window_and_flat_by(tmp_path):
    path = strategy(tmp_path, f"""
universe: [NQ]
instruments: {ROOT / "universes" / "instruments.yaml"}
data: {{bar: 5m, source: {SHARED / "firstratedata_nq_sample" / "NQ_1min_sample.csv"}}}
schedule: {{timezone: America/New_York, entry_window: ["09:45", "11:00"], flat_by: "15:30"}}
entry:
  - name: momentum
    when: close > ema(close, 12)
    order: buy
exit:
  - name: a day later
    when: position.bars_held >= 288
orders:
  buy: {{action: buy, type: market, quantity: 1}}
backtest: {{cash: 100000, commission: {{per_contract: 2.25}}}}
""")
    result = bt.run(bt.prepare(path))
    assert result.bars["NQ"].multiplier == 20 and result.bars["NQ"].margined
    import pandas as pd

    assert result.ledger.trades
    for t in result.ledger.trades:
        entry = pd.Timestamp(t.entry_time, tz="UTC").tz_convert("America/New_York")
        minutes = entry.hour * 60 + entry.minute
        assert 9 * 60 + 45 <= minutes <= 11 * 60 + 5, entry   # decided in the window, filled at the next open
        assert t.commission == pytest.approx(4.5)
        assert t.pnl == pytest.approx((t.exit_price - t.entry_price) * 20 - 4.5)
    early = 0
    for t in result.ledger.trades:   # every position entered in the morning is flat by 15:30
        entry = pd.Timestamp(t.entry_time, tz="UTC").tz_convert("America/New_York")
        assert t.exit_rule == "flat_by", t
        exit_ = pd.Timestamp(t.exit_time, tz="UTC").tz_convert("America/New_York")
        assert exit_.date() == entry.date()
        if entry.date() in (pd.Timestamp("2023-11-23").date(), pd.Timestamp("2023-11-24").date()):
            # on Thanksgiving and the day after, CME equity closes at 13:00 ET: flat at the last bar's open
            assert (exit_.hour, exit_.minute) == (12, 55)
            early += 1
        else:
            assert (exit_.hour, exit_.minute) == (15, 30)
    assert early == 1


# ---- journal and CLI -------------------------------------------------------------------------

def test_backtest_cli_writes_journal_report_and_json(tmp_path):
    journal = tmp_path / "j.sqlite"
    report = tmp_path / "r.html"
    result = CliRunner().invoke(cli.main, ["backtest", str(ROOT / "strategies" / "sma_crossover.yaml"),
                                           "--journal", str(journal), "--report", str(report),
                                           "--format", "json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    summary = out["summary"]
    assert summary["trades"] > 10 and summary["end_equity"] > 0
    db = sqlite3.connect(journal)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    run_id = out["run_id"]
    counts = {t: db.execute(f"SELECT count(*) FROM {t} WHERE run_id=?", (run_id,)).fetchone()[0]
              for t in ("orders", "fills", "trades", "equity", "decisions", "prices")}
    assert counts["trades"] == summary["trades"]
    assert counts["fills"] == 2 * counts["trades"] + summary["open_positions"]
    assert all(v > 0 for v in counts.values()), counts
    # every fill's order was journaled (with its tag) no later than the fill
    rows = db.execute("SELECT o.ts, f.ts FROM fills f JOIN orders o ON o.order_ref = f.order_ref "
                      "WHERE f.run_id=?", (run_id,)).fetchall()
    assert len(rows) == counts["fills"] and all(o <= f for o, f in rows)
    refs = [r[0] for r in db.execute("SELECT order_ref FROM orders WHERE run_id=?", (run_id,))]
    assert len(refs) == len(set(refs)) and all(r.startswith(f"qtrade:{run_id}:") for r in refs)
    stored = json.loads(db.execute("SELECT summary FROM runs WHERE run_id=?", (run_id,)).fetchone()[0])
    assert stored["trades"] == summary["trades"]
    html = report.read_text()
    assert "sma-crossover" in html and "<svg" in html
    # the report command renders the same run from the journal alone
    again = CliRunner().invoke(cli.main, ["report", str(journal), "--out", str(tmp_path / "again.html")])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again.html").read_text().count("<svg") == html.count("<svg")


def test_backtest_text_summary(tmp_path):
    result = CliRunner().invoke(cli.main, ["backtest", str(ROOT / "strategies" / "sma_crossover.yaml"),
                                           "--journal", str(tmp_path / "j.sqlite")])
    assert result.exit_code == 0, result.output
    for word in ("Total return", "buy & hold SPY", "Max drawdown", "Trades", "journal:"):
        assert word in result.output


def test_text_summary_labels_stand_apart_from_values_and_counts_of_one_are_singular():
    from types import SimpleNamespace

    prep = SimpleNamespace(plan=SimpleNamespace(name="s"), symbols=["SPY"], frames={"SPY": None}, missing=[],
                           bar="1d")
    summary = {"start": "2024-01-02", "end": "2024-12-31", "bars": 1, "warmup_bars": 1, "return_periods": 1,
               "returns_basis": "daily", "sharpe": 8.666, "sortino": 18.77, "calmar": 47.13,
               "max_drawdown": -0.01, "max_drawdown_days": 1.0, "max_drawdown_start": "2024-03-01",
               "average_drawdown": -0.01, "average_drawdown_days": 1.0, "drawdowns": 1, "trades": 0}
    text = cli._summary_text(SimpleNamespace(prepared=prep, run_id=1), summary, None, None)
    ratios, drawdown = (next(line for line in text.splitlines() if line.startswith(f"  {label} "))
                        for label in ("Sharpe / Sortino / Calmar", "Max drawdown"))
    assert ratios == "  Sharpe / Sortino / Calmar  8.67 / 18.77 / 47.13   from 1 daily return"
    # the values stay in one right-aligned column
    assert drawdown.index("-1.00%") + len("-1.00%") == ratios.index("47.13") + len("47.13")
    assert "(1 bar, after 1 warm-up bar)" in text
    assert "longest under water 1 day, from 2024-03-01" in text
    assert "1 drawdown, 1 day on average" in text
    assert "1 days" not in text and "1 drawdowns" not in text


def test_backtest_cli_reports_problems_without_traceback(tmp_path):
    bad = strategy(tmp_path, """
universe: [SPY]
data: {bar: 1d}
entry:
  - {name: x, when: close > 1, order: buy}
orders:
  buy: {action: buy}
""")
    result = CliRunner().invoke(cli.main, ["backtest", str(bad), "--journal", str(tmp_path / "j.sqlite")])
    assert result.exit_code == 1
    assert "s.yaml:5:7: error: no bar data: data.source is not set and no --data was given" in result.output
    assert "--chains" not in result.output          # a stock strategy: no word of option chains
    assert "Traceback" not in result.output
    missing = strategy(tmp_path, """
universe: [SPY]
data: {bar: 1d, source: nowhere/}
entry:
  - {name: x, when: close > 1, order: buy}
orders:
  buy: {action: buy}
""", "m.yaml")
    result = CliRunner().invoke(cli.main, ["backtest", str(missing), "--journal", str(tmp_path / "j.sqlite")])
    assert result.exit_code == 1 and "data source not found: nowhere/ (looked for " in result.output
    assert "pass --data FILE_OR_FOLDER" in result.output


def test_journal_keeps_runs_apart(tmp_path):
    path = tmp_path / "j.sqlite"
    for _ in range(2):
        res = bt.run(bt.prepare(ROOT / "strategies" / "sma_crossover.yaml"))
        with Journal(path) as j:
            bt.write_journal(res, j)
            j.finish_run(res.run_id, "finished", {})
    with Journal(path) as j:
        runs = j.runs()
        assert len(runs) == 2
        a, b = (len(j.table("trades", r["run_id"])) for r in runs)
        assert a == b > 0


def test_a_run_that_fails_while_being_written_leaves_the_journal_as_it_was(tmp_path):
    path = tmp_path / "j.sqlite"
    first = bt.run(bt.prepare(ROOT / "strategies" / "sma_crossover.yaml"))
    with Journal(path) as j:
        bt.write_journal(first, j)
        j.finish_run(first.run_id, "finished", {})
    second = bt.run(bt.prepare(ROOT / "strategies" / "sma_crossover.yaml"))
    second.runner.decisions.columns["kind"] = None        # a broken record: NOT NULL fails mid-write
    with Journal(path) as j, pytest.raises(sqlite3.IntegrityError):
        bt.write_journal(second, j)
    with Journal(path) as j:
        assert [r["run_id"] for r in j.runs()] == [first.run_id]    # nothing of the second run
        assert len(j.table("fills", first.run_id)) == len(first.ledger.fills)
        assert not j.db.execute("SELECT COUNT(*) FROM orders WHERE run_id=?", (second.run_id,)).fetchone()[0]
        j.many("errors", ("run_id", "ts", "source", "message"), [(first.run_id, "t", "test", "written")])
    with Journal(path) as j:    # outside bulk() a write commits on its own
        assert j.db.execute("SELECT COUNT(*) FROM errors").fetchone()[0] == 1


def test_a_daily_symbol_is_seen_intraday_only_after_its_close():
    """symbol("VIX").close on minute bars is the last *finished* day's close: at 09:31 on
    2019-11-05 that is 2019-11-04's 12.83, not the 13.10 that day will close at."""
    import pandas as pd

    result = bt.run(bt.prepare(ROOT / "strategies" / "iron_condor.yaml"))
    plan = result.prepared.plan
    node = next(n.id for n in plan.nodes if n.label == 'symbol("VIX").close')
    vix = result.runner.signals["XSP"].values[node]
    b = result.bars["XSP"]
    days = pd.to_datetime(b.start).tz_localize("UTC").tz_convert("America/New_York").date
    expected = {pd.Timestamp("2019-11-05").date(): 12.83, pd.Timestamp("2019-11-06").date(): 13.10,
                pd.Timestamp("2019-11-07").date(): 12.62, pd.Timestamp("2019-11-08").date(): 12.73}
    for day, close in expected.items():
        assert set(np.round(vix[days == day], 2)) == {close}, day


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=60), st.lists(st.integers(-5, 60), min_size=1, max_size=40),
       st.lists(st.sampled_from("XYZ"), min_size=1, max_size=40))
def test_marks_find_the_last_closed_bar_from_wherever_they_looked_last(gaps, times, symbols):
    """X and Y share one timeline (one look-up serves both), Z has its own; times go forwards,
    backwards and repeat, and each look finds the last bar closed by then."""
    from engine.market.series import SymbolBars
    from engine.portfolio.marks import LastClose

    end = np.cumsum(np.array(gaps, dtype=np.int64) + 1)      # increasing bar close times
    other = end * 2

    def bars(symbol, ends):
        n = len(ends)
        close = np.arange(n, dtype=float) + (100 if symbol == "Z" else 10)
        return SymbolBars(symbol, ends - 1, ends, close - 0.5, close + 1, close - 1, close, np.zeros(n))

    series = {"X": bars("X", end), "Y": bars("Y", end.copy()), "Z": bars("Z", other)}
    marks = LastClose(series)
    assert marks._line["X"] == marks._line["Y"] != marks._line["Z"]
    for at, symbol in zip(times, symbols * len(times)):
        b = series[symbol]
        expected = int(np.searchsorted(b.end, at, side="right")) - 1
        assert marks.bar(symbol, at) == expected
        assert marks.price(symbol, at) == (b.close[expected] if expected >= 0 else b.open[0])


def test_a_backtest_pauses_the_garbage_collector_and_gives_it_back_as_it_found_it():
    import gc

    prep = bt.prepare(ROOT / "strategies" / "sma_crossover.yaml")
    assert gc.isenabled()
    bt.run(prep)
    assert gc.isenabled()
    gc.disable()
    try:
        bt.run(prep)
        assert not gc.isenabled()     # off before, off after
    finally:
        gc.enable()
    prep.settings["fill"] = "next_close"      # no fast path for it: refused inside the run
    with pytest.raises(ValueError, match="fill model"):
        bt.run(prep, fast=True)
    assert gc.isenabled()                     # the collector is back on


def test_fills_in_the_bar_still_forming_count_at_the_last_close(tmp_path):
    """A live run stopped before the forming bar closed has fills in it (bar index len(bars)):
    the curve's last point is the account at the stop (an exit's cash in, its position out; an
    entry's position in at the last close), on one symbol and on several."""
    from engine.portfolio.ledger import Fill, Ledger
    from engine.runtime.equity import equity_curve

    result = bt.run(bt.prepare(ROOT / "strategies" / "sma_crossover.yaml"))
    b = result.bars["SPY"]
    n = len(b)
    t = int(b.end[-1]) + 1
    closed = Ledger(100_000.0)
    closed.open(Fill("SPY", "buy", 10, float(b.close[n - 3]), 1.0, int(b.end[n - 3]), n - 2))
    closed.close(Fill("SPY", "sell", 10, 200.0, 1.0, t, n), "stop")          # in the forming bar
    entered = Ledger(100_000.0)
    entered.open(Fill("SPY", "buy", 10, 150.0, 1.0, t, n))                   # in the forming bar
    for bars in ({"SPY": b}, {"SPY": b, "XSP": result.bars["SPY"]}):          # one symbol, and the general way
        times, equity, cash, _ = equity_curve(closed, bars, 100_000.0, None)
        assert equity[-1] == pytest.approx(closed.cash) and cash[-1] == pytest.approx(closed.cash)
        times, equity, cash, _ = equity_curve(entered, bars, 100_000.0, None)
        assert cash[-1] == pytest.approx(entered.cash)
        assert equity[-1] == pytest.approx(entered.cash + 10 * float(b.close[-1]))


OSCILLATORS = """\
universe: [SPY]
data: {bar: 1d, source: DATA}
indicators:
  k: stoch_k(14, 3)
  d: stoch_d(14, 3, 3)
entry:
  - name: oversold turn
    when: crosses_above(k, d) and k < 40 and willr(14) < -50 and cci(20) < 50 and obv() > sma(obv(), 50)
    order: buy
exit:
  - name: sar stop
    when: close < sar(0.02, 0.2)
  - name: channel
    when: close > keltner_upper(20, 2, 10) or close < keltner_lower(20, 2, 10)
orders:
  buy: {action: buy, type: market, quantity: {percent_of_equity: 100%}}
risk: {max_open_positions: 1, margin_check: "off"}
"""


def test_the_oscillators_and_channels_trade_alike_in_every_mode(tmp_path):
    """Stochastics, Williams %R, CCI, OBV, the parabolic SAR and Keltner channels in one
    strategy: the backtest (vectorised, TA-Lib) and `run --broker sim` / `--dry-run` (the plan
    streamed bar by bar) give the same summary to the cent."""
    path = strategy(tmp_path, OSCILLATORS.replace("DATA", str(SAMPLE) + "/"))
    runner = CliRunner()
    summaries = []
    for i, args in enumerate((["backtest", str(path), "--no-progress"], ["run", str(path), "--broker", "sim"],
                              ["run", str(path), "--broker", "sim", "--dry-run"])):
        out = runner.invoke(cli.main, [*args, "--from", "2008-01-02", "--format", "json",
                                       "--journal", str(tmp_path / f"j{i}.sqlite")])
        assert out.exit_code == 0, out.output
        summaries.append(json.loads(out.output)["summary"])
    assert summaries[0]["trades"] >= 20
    assert summaries[1] == summaries[0] and summaries[2] == summaries[0]


def _exit_under_the_200_day(tmp_path, when: str, name: str):
    body = f"""\
universe: [SPY]
data: {{bar: 1d, source: {SAMPLE}/}}
entry:
  - name: golden cross
    when: crosses_above(sma(close, 10), sma(close, 30))
    order: buy
exit:
  - name: under the 200-day average
    when: {when}
orders:
  buy: {{action: buy, type: market, quantity: {{percent_of_equity: 100%}}}}
risk: {{max_open_positions: 1, margin_check: "off"}}
"""
    return bt.run(bt.prepare(strategy(tmp_path, body, name))).ledger.trades


def test_defined_gates_an_exit_on_a_longer_indicator_than_the_entry(tmp_path):
    """Entries wait for their own warm-up (30 bars here); exits are evaluated whenever a
    position is open. `not (close > sma(close, 200))` is true while the 200-bar average has no
    value (a comparison with no value is false), so the first trades of 2008 are sold the bar
    after they are bought; `defined(sma(close, 200)) and ...` holds them until the average
    exists (bar 199) and says so."""
    plain = _exit_under_the_200_day(tmp_path, "not (close > sma(close, 200))", "plain.yaml")
    gated = _exit_under_the_200_day(tmp_path, "defined(sma(close, 200)) and not (close > sma(close, 200))",
                                    "gated.yaml")
    early = [t for t in plain if t.exit_bar - 1 < 199]
    assert len(early) >= 3 and all(t.bars_held == 1 for t in early)
    assert all(t.exit_bar - 1 >= 199 for t in gated)          # decided at bar 199 or later
    assert gated[0].entry_bar == plain[0].entry_bar and gated[0].bars_held > 100


def test_adjusted_prices_rounded_to_cents_fill_at_cents(tmp_path):
    """data.adjusted: {round: 2}: the crossover fills at SPY's adjusted opens rounded to cents
    (no slippage in the base), where adjusted: true fills at the unrounded ones."""
    text = (ROOT / "strategies" / "sma_crossover.yaml").read_text().replace("source: data/", f"source: {SAMPLE}/")
    fills = {}
    for name, value in (("exact", "true"), ("cents", "{round: 2}")):
        path = write(tmp_path, f"{name}.yaml", text.replace("session: regular,", f"session: regular, adjusted: {value},"))
        prep = bt.prepare(path)
        fills[name] = [t.entry_price for t in bt.run(prep).ledger.trades]
        assert prep.frames["SPY"]["open"].iloc[0] == (119.35 if name == "cents" else pytest.approx(119.346825, abs=1e-6))
    assert len(fills["cents"]) == len(fills["exact"]) == 39
    assert all(abs(p * 100 - round(p * 100)) < 1e-6 for p in fills["cents"])
    assert not any(abs(p * 100 - round(p * 100)) < 1e-6 for p in fills["exact"][:5])
    assert fills["cents"][0] == round(fills["exact"][0], 2) != fills["exact"][0]


TREND = """\
universe: [SPY]
data: {{bar: 1d, source: {source}}}
indicators:
  trend: sma(close, 50)
entry:
  - name: above the trend
    when: close > trend
    order: buy
exit:
  - name: under the trend
    when: close < trend * 0.97
orders:
  buy: {{action: buy, type: market, quantity: {{percent_of_equity: 100%}}}}
risk: {{max_open_positions: 1, margin_check: "off"}}
{backtest}
"""


def _journal_tables(path: Path) -> dict:
    db = sqlite3.connect(path)
    out = {t: db.execute(f"SELECT {cols} FROM {t} ORDER BY rowid").fetchall() for t, cols in (
        ("fills", "ts, symbol, action, quantity, price"), ("trades", "entry_ts, entry_price, exit_ts, exit_price, pnl"),
        ("equity", "ts, round(equity, 6)"))}
    db.close()
    return out


def _modes(tmp_path, path: Path, extra=(), modes=("backtest", "run", "dry-run")) -> dict:
    runner = CliRunner()
    out = {}
    for mode, args in (("backtest", ["backtest", str(path), "--no-progress"]),
                       ("run", ["run", str(path), "--broker", "sim"]),
                       ("dry-run", ["run", str(path), "--broker", "sim", "--dry-run"])):
        if mode not in modes:
            continue
        journal = tmp_path / f"{path.stem}-{mode}.sqlite"
        result = runner.invoke(cli.main, [*args, *extra, "--format", "json", "--journal", str(journal)])
        assert result.exit_code == 0, result.output
        out[mode] = (json.loads(result.output)["summary"], _journal_tables(journal))
    return out


def test_warmup_from_start_trades_later_and_is_a_file_that_starts_there(tmp_path):
    """backtest.warmup: before_start (the default) warms the 50-day average on the bars before
    --from, so the rule can enter on the window's first bar; from_start gives it only the bars
    from 2012-01-01 on, so the first entry waits 50 bars, and the run is the run on a copy of
    SPY.csv cut at 2012-01-01, in backtest, run --broker sim and its dry-run alike (and in a
    backtest with backtest.start in the strategy instead of --from)."""
    cut = tmp_path / "cut"
    cut.mkdir()
    lines = (SAMPLE / "SPY.csv").read_text().splitlines()
    (cut / "SPY.csv").write_text("\n".join([lines[0]] + [x for x in lines[1:] if x >= "2012-01-01"]) + "\n")
    docs = {"before": TREND.format(source=f"{SAMPLE}/", backtest=""),
            "from": TREND.format(source=f"{SAMPLE}/", backtest="backtest: {warmup: from_start}"),
            "cut": TREND.format(source=f"{cut}/", backtest=""),
            "in_file": TREND.format(source=f"{SAMPLE}/", backtest="backtest: {start: 2012-01-01, warmup: from_start}")}
    runs = {name: _modes(tmp_path, strategy(tmp_path, text, f"{name}.yaml"),
                         *(((), ("backtest",)) if name == "in_file" else (("--from", "2012-01-01"),)))
            for name, text in docs.items()}
    for mode in ("backtest", "run", "dry-run"):
        before, start, cut_run = (runs[n][mode] for n in ("before", "from", "cut"))
        same = [cut_run] + ([runs["in_file"][mode]] if mode == "backtest" else [])
        assert before[1]["fills"][0][0].startswith("2012-01-04T05:00")     # decided on 2012-01-03's close
        assert start[1]["fills"][0][0] >= "2012-03-15"              # the 50th bar of 2012 is 2012-03-14
        assert start[1]["fills"][0] != before[1]["fills"][0] and start[1]["trades"] != before[1]["trades"]
        for other in same:
            assert start[1] == other[1]
            for key in ("end_equity", "trades", "cagr", "max_drawdown", "exposure", "buy_and_hold"):
                assert start[0][key] == other[0][key], key
    # the same fills in every mode (the backtest's journal writes UTC times as Z, the runs' as +00:00)
    fills = [[(ts.replace("+00:00", "Z"), *rest) for ts, *rest in runs["from"][m][1]["fills"]]
             for m in ("backtest", "run", "dry-run")]
    assert fills[0] == fills[1] == fills[2]


def test_warmup_from_start_does_not_cut_a_brokers_history(tmp_path):
    """IB runs read IB's history as their warm-up (frames_from) and have no start: the key
    does not apply there, even with a backtest.start in the strategy."""
    from engine.market.bars import load_bars

    path = strategy(tmp_path, TREND.format(source=f"{SAMPLE}/", backtest="backtest: {start: 2012-01-01, warmup: from_start}"))
    spy = load_bars(SAMPLE / "SPY.csv")["SPY"]
    prep = bt.prepare(path, frames_from=lambda symbols, bar, timezone: {"SPY": spy})
    assert len(prep.frames["SPY"]) == len(spy)
    assert len(bt.prepare(path).frames["SPY"]) == len(spy[spy.index >= "2012-01-01"]) == 1509


def test_a_look_back_longer_than_the_window_under_from_start_says_to_start_earlier(tmp_path):
    """Under from_start the data before the start is not the problem: the hint says to start
    earlier or warm up before the start, not to load more history."""
    text = TREND.format(source=f"{SAMPLE}/", backtest="backtest: {warmup: from_start}").replace(
        "sma(close, 50)", "sma(close, 300)")
    path = strategy(tmp_path, text, "long.yaml")
    result = CliRunner().invoke(cli.main, ["backtest", str(path), "--from", "2017-06-01", "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "from the run's start (backtest.warmup: from_start)" in result.output
    assert "start earlier (--from)" in result.output and "load more history" not in result.output
    plain = CliRunner().invoke(cli.main, ["backtest", str(strategy(tmp_path, text.replace(
        "backtest: {warmup: from_start}", ""), "plain.yaml")), "--from", "2017-06-01", "--no-progress"])
    assert plain.exit_code == 0, plain.output          # warmed up on the bars before the start


def test_each_round_trip_has_the_excursions_of_the_bars_it_was_open(tmp_path):
    """The kernel measures MAE and MFE when the run ends, all trades of a symbol at once
    (Kernel.measure_trades): each trade's are still those of its own bars and exit price, for
    exits at the next open (a death cross) and inside a bar (a stop, a target)."""
    text = (ROOT / "strategies" / "sma_crossover.yaml").read_text()
    text = text.replace("source: data/", f"source: {SAMPLE}").replace(
        "exit:\n", "exit:\n  - {name: stop, stop: position.entry_price * 0.97}\n"
                   "  - {name: target, target: position.entry_price * 1.05}\n")
    path = write(tmp_path, "excursions.yaml", text)
    result = bt.run(bt.prepare(path), fast=False)
    trades = result.ledger.trades
    assert {t.exit_rule for t in trades} >= {"stop", "target", "death cross"}
    b = result.bars["SPY"]
    for t in trades:
        lo, hi = t.entry_bar, t.exit_bar
        worst = min([float(x) for x in b.low[lo:hi]] + [t.exit_price])
        best = max([float(x) for x in b.high[lo:hi]] + [t.exit_price])
        units = t.quantity * t.multiplier
        assert (t.mae, t.mfe) == (min((worst - t.entry_price) * units, 0.0), max((best - t.entry_price) * units, 0.0))


@pytest.mark.parametrize("command", [["backtest"], ["run", "--broker", "sim"]])
def test_from_on_daily_bars_starts_at_that_day_not_the_one_before(command, tmp_path):
    """A daily bar ends at the midnight the next day starts: `--from 2015-01-06` is that day's bar
    onwards (the summary's start, its bar count, buy & hold bought at that day's open), not the
    Monday before, whose bar ends at that midnight."""
    root = Path(__file__).resolve().parents[1]
    out = CliRunner().invoke(cli.main, [*command, str(root / "strategies" / "sma_crossover.yaml"), "--from",
                                        "2015-01-06", "--to", "2015-01-09", "--format", "json", "--journal",
                                        str(tmp_path / "a.sqlite")])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output[out.output.index("{"):])["summary"]
    assert summary["start"].startswith("2015-01-06T05:00")                 # midnight in New York
    assert summary["bars"] == 4                                            # Tuesday to Friday
    assert summary["buy_and_hold_start_price"] == pytest.approx(202.089996)   # 2015-01-06's open in SPY.csv
    one = CliRunner().invoke(cli.main, [*command, str(root / "strategies" / "sma_crossover.yaml"), "--from",
                                        "2017-12-29", "--to", "2017-12-29", "--format", "json", "--journal",
                                        str(tmp_path / "b.sqlite")])
    assert one.exit_code == 0, one.output
    assert json.loads(one.output[one.output.index("{"):])["summary"]["bars"] == 1


ES_WEEK = Path(__file__).resolve().parents[2] / "shared" / "data" / "quantconnect_lean" / "decoded" / \
    "es_minute_trade_by_contract_2013-10-07_to_2013-10-11.csv"


@pytest.mark.skipif(not ES_WEEK.is_file(), reason="../shared/data is not present")
def test_the_summarys_dates_are_the_strategys_timezones_as_the_report_and_the_flags_read_them(tmp_path):
    """ES trades from Sunday 18:00 in New York, which is Monday in UTC: the summary's first line
    gives Sunday's date (the one --from takes to mean the same run), not UTC's."""
    root = Path(__file__).resolve().parents[1]
    out = CliRunner().invoke(cli.main, ["backtest", str(root / "strategies" / "futures_breakout_es.yaml"),
                                        "--journal", str(tmp_path / "j.sqlite"), "--no-progress"])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[0].startswith("futures-breakout-es: ES on 1m bars, 2013-10-06 to 2013-10-11 ("), \
        out.output
    assert cli._local_day("2013-10-07T00:00:00+00:00", "America/New_York") == "2013-10-06"
    assert cli._local_day("2015-01-06T05:00:00+00:00", "America/New_York") == "2015-01-06"


def test_the_summarys_trade_statistics_say_when_they_rest_on_a_handful_of_trades(tmp_path):
    """SQN and Kelly of the condor's 4 trades (Kelly 52.7%) say they are too few to size by; the
    SMA crossover's 39 stand as they are."""
    said = {}
    for name in ("iron_condor", "sma_crossover"):
        out = CliRunner().invoke(cli.main, ["backtest", str(ROOT / "strategies" / f"{name}.yaml"), "--journal",
                                            str(tmp_path / f"{name}.sqlite"), "--no-progress"])
        assert out.exit_code == 0, out.output
        said[name] = next(line for line in out.output.splitlines() if line.strip().startswith("SQN / Kelly"))
    assert said["iron_condor"].endswith("from 4 trades: too few to size by"), said
    assert "too few" not in said["sma_crossover"]
