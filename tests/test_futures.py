"""Issue 15 item 5: futures in backtests, on real per-contract history (../shared/data: LEAN's ES
minute bars per contract for 2013-10-07..11, and its ES daily bars per contract over the December
2013 roll and expiry).

The rules read the raw front month, stitched by the IB broker's roll rule; a position is filled
and marked in the contract it is held in, and rolled when the rule moves the front month on: closed
in the old contract and opened in the new one (tests/test_futures_roll.py has the roll on the
real December 2013 roll); a contract still held when its last trade date is over (roll_days 0)
is settled at its last price. Journal rows carry the contract's local symbol."""

from __future__ import annotations

import sqlite3
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.diagnostics import DiagnosticError
from engine.runtime import backtest as bt
from engine.runtime.journal import Journal
from engine.runtime.session import simulate

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
LEAN = SHARED / "quantconnect_lean"
ES_MINUTE = LEAN / "decoded" / "es_minute_trade_by_contract_2013-10-07_to_2013-10-11.csv"
ES_DAILY = LEAN / "future" / "cme" / "daily" / "es_trade.zip"
NY = "America/New_York"

needs_minute = pytest.mark.skipif(not ES_MINUTE.exists(), reason=f"{ES_MINUTE} (../shared/data) is not present")
needs_daily = pytest.mark.skipif(not ES_DAILY.exists(), reason=f"{ES_DAILY} (../shared/data) is not present")

ES_ROOT = ("{sec_type: FUT, exchange: CME, currency: USD, multiplier: 50, trading_class: ES, months: HMUZ, "
           "roll_days: %d, tick_size: 0.25, calendar: CME_Equity%s}")


def write(tmp: Path, *, source: Path, bar: str, entry: str, exit_: str, roll_days: int, exits: str = "",
          margins: str = "", quantity: str = "1", cash: int = 100_000, name: str = "s.yaml",
          risk: str = "{max_open_positions: 1, margin_check: \"off\"}", backtest: str = "",
          action: str = "buy") -> Path:
    (tmp / "i.yaml").write_text(f"kind: instruments\nname: i\nroots:\n  ES: {ES_ROOT % (roll_days, margins)}\n")
    path = tmp / name
    path.write_text(f"""kind: strategy
name: es
universe: [ES]
instruments: i.yaml
data: {{bar: {bar}, session: extended, source: {source}}}
schedule: {{timezone: {NY}}}
entry:
  - name: in
    when: "{entry}"
    order: buy
exit:
  - name: out
    when: "{exit_}"
{exits}
orders:
  buy: {{action: {action}, type: market, quantity: {quantity}}}
backtest: {{cash: {cash}, commission: {{per_contract: 2.25}}{backtest}}}
risk: {risk}
""")
    return path


def minute_bar(prep, when: str) -> int:
    return int(np.searchsorted(prep.frames["ES"].index, pd.Timestamp(when, tz=NY)))


def journal_rows(result, tmp: Path) -> dict:
    path = tmp / "j.sqlite"
    with Journal(path) as journal:
        bt.write_journal(result, journal)
    db = sqlite3.connect(path)
    out = {t: db.execute(f"SELECT {c} FROM {t} ORDER BY rowid").fetchall() for t, c in (
        ("orders", "rule, action, status, local_symbol"), ("fills", "action, price, local_symbol"),
        ("trades", "entry_price, exit_price, round(pnl, 2), exit_rule, local_symbol"))}
    db.close()
    return out


@needs_minute
def test_a_position_held_at_the_roll_is_closed_in_its_contract_and_reopened_in_the_next(tmp_path):
    # roll_days 52: ESZ3 (last trade 2013-12-20) is the front month to Wednesday 2013-10-09, ESH4 from Thursday
    path = write(tmp_path, source=ES_MINUTE, bar="1m", entry="bar_index == 0", exit_="bar_index == 0", roll_days=52)
    prep = bt.prepare(path)
    e, x, again = (minute_bar(prep, t) for t in ("2013-10-09 20:00", "2013-10-10 02:07", "2013-10-10 03:00"))
    b = bt._symbol_bars(prep, "ES")[0]
    assert (b.contract_at(e), b.contract_at(x), b.contract_at(x + 1)) == ("ESZ3", "ESH4", "ESH4")
    path = write(tmp_path, source=ES_MINUTE, bar="1m", entry=f"bar_index == {e} or bar_index == {again}",
                 exit_=f"bar_index == {x}", roll_days=52)
    prep = bt.prepare(path)
    result = bt.run(prep, run_id="t")
    assert "fast_path" not in result.timings          # each position on its own contract's bars: the kernel
    fills = list(result.ledger.fills)
    z, h = prep.fronts["ES"].bars["ESZ3"], prep.fronts["ES"].bars["ESH4"]
    rolled = pd.Timestamp("2013-10-10 00:02", tz=NY)     # the series' first ESH4 bar
    assert (z.loc[rolled, "open"], h.loc[rolled, "open"]) == (1655.25, 1648.75)
    assert [(f.action, f.price, f.contract, f.rule) for f in fills] == [
        ("buy", 1651.75, "ESZ3", "in"),     # the open of 20:01 (ESZ3 is the front month)
        ("sell", 1655.25, "ESZ3", "roll"),  # the last ESZ3 bar's close decides the roll: ESZ3's open of 00:02
        ("buy", 1648.75, "ESH4", "roll"),   # ... and ESH4's open of the same bar, the same quantity and side
        ("sell", 1650.25, "ESH4", "out"),   # the exit decided at 02:07 closes ESH4 at the 03:00 open
        ("buy", 1648.0, "ESH4", "in"),      # the entry decided at 03:00 opens the front month at 03:08
    ]
    assert fills[1].time == fills[2].time == rolled.value
    assert [f.commission for f in fills] == [2.25] * 5          # each leg pays the fill model's commission
    first, second = result.ledger.trades
    assert (first.contract, first.exit_rule, first.exit_reason) == ("ESZ3", "roll", "roll ESZ3 -> ESH4")
    assert first.pnl == (1655.25 - 1651.75) * 50 - 4.5
    assert (second.contract, second.entry_rule, second.exit_rule) == ("ESH4", "roll", "out")
    assert second.pnl == (1650.25 - 1648.75) * 50 - 4.5
    assert (second.owner, second.entry_states) == (first.owner, first.entry_states)
    # the position left open at the end is ESH4, marked at ESH4's last close
    assert result.ledger.positions["ES"].contract == "ESH4"
    assert result.marks["ES"] == h["close"].iloc[-1]
    rows = journal_rows(result, tmp_path)
    assert [r[0] for r in rows["orders"]] == ["in", "roll", "roll", "out", "in"]
    assert [r[3] for r in rows["orders"]] == ["ESZ3", "ESZ3", "ESH4", "ESH4", "ESH4"]
    assert [(r[0], r[1], r[2]) for r in rows["fills"]] == [(f.action, f.price, f.contract) for f in fills]
    assert rows["trades"] == [(1651.75, 1655.25, 170.5, "roll", "ESZ3"), (1648.75, 1650.25, 70.5, "out", "ESH4")]
    # `qtrade run --broker sim` (the plan streamed bar by bar) and its dry run do exactly the same
    for dry_run in (False, True):
        run = simulate(prep, run_id="t", dry_run=dry_run)
        assert list(run.ledger.fills) == fills and list(run.ledger.trades) == list(result.ledger.trades)
        assert np.array_equal(run.equity, result.equity)


@needs_minute
def test_the_roll_is_decided_at_the_first_close_past_the_roll_date_as_a_live_run_can_decide_it(tmp_path):
    """ESZ3's last two bars before midnight left out of the file: its last bar in the series then
    closes at 23:58, still Wednesday, the day it is front. A live run at that close cannot know
    that no bar comes before midnight, and IB's front month then is ESZ3: the roll is decided at
    the first close on Thursday (the 00:02 bar's, at 00:03) and fills at the next open (00:17), the same
    in the backtest, `run --broker sim` and its dry run. At every close the contract a roll goes
    into is the one IB's broker resolves by the date at that close (futures.front_month)."""
    import datetime as dt

    from engine.market.calendars import get_calendar
    from engine.market.futures import front_month

    raw = pd.read_csv(ES_MINUTE)
    gap = raw["datetime_utc"].isin(["2013-10-10 03:58:00", "2013-10-10 03:59:00"]) & (raw["contract_month"] == 201312)
    assert int(gap.sum()) == 2
    source = tmp_path / "es_gap.csv"
    raw[~gap].to_csv(source, index=False)
    probe = bt.prepare(write(tmp_path, source=source, bar="1m", entry="false", exit_="false", roll_days=52))
    e, x = minute_bar(probe, "2013-10-09 20:00"), minute_bar(probe, "2013-10-10 02:07")
    path = write(tmp_path, source=source, bar="1m", entry=f"bar_index == {e}", exit_=f"bar_index == {x}",
                 roll_days=52, name="g.yaml")
    prep = bt.prepare(path)
    b = bt._symbol_bars(prep, "ES")[0]
    last_z = minute_bar(prep, "2013-10-09 23:57")
    assert (b.contract_at(last_z), b.contract_at(last_z + 1)) == ("ESZ3", "ESH4")
    assert pd.Timestamp(int(b.start[last_z + 1]), tz="UTC").tz_convert(NY) == pd.Timestamp("2013-10-10 00:02", tz=NY)
    assert b.roll_bar["ESZ3"] == last_z + 1                     # not last_z: its close is on Wednesday
    result = bt.run(prep, run_id="t")
    fills = list(result.ledger.fills)
    k = last_z + 2                  # the series' next bar after 00:02 (ESH4 trades next at 00:17)
    at = int(b.start[k])
    assert pd.Timestamp(at, tz="UTC").tz_convert(NY) == pd.Timestamp("2013-10-10 00:17", tz=NY)
    assert [(f.rule, f.action, f.contract, f.price, f.time) for f in fills[1:3]] == [
        ("roll", "sell", "ESZ3", b.of("ESZ3").open[k], at), ("roll", "buy", "ESH4", b.of("ESH4").open[k], at)]
    for dry_run in (False, True):
        run = simulate(prep, run_id="t", dry_run=dry_run)
        assert list(run.ledger.fills) == fills and list(run.ledger.trades) == list(result.ledger.trades)
    # the contract a roll at each close goes into: IB's front month on the date at that close
    calendar = get_calendar("CME_Equity")
    contracts = {c.local_symbol: c.last_trade for c in prep.fronts["ES"].contracts}
    listed = sorted(contracts, key=contracts.get)
    closes = pd.DatetimeIndex(b.end, tz="UTC").tz_convert(NY)
    for k in range(0, len(b), 97):
        today = dt.date(closes[k].year, closes[k].month, closes[k].day)
        assert b.roll_to[k] == listed[front_month([contracts[c] for c in listed], today, 52, calendar)], k


@needs_minute
def test_a_run_cut_short_by_to_still_rolls_its_position(tmp_path):
    """`--to` cuts the bars after its day: the cut run keeps the roll bars, so a position whose
    exit reads only the market (the kernel jumps over the bars between) is rolled at the same
    close as in the whole run. It was not rolled: it was held in ESZ3 past its roll and sold
    there at 03:00."""
    probe = bt.prepare(write(tmp_path, source=ES_MINUTE, bar="1m", entry="false", exit_="false", roll_days=52))
    e, x = minute_bar(probe, "2013-10-09 20:00"), minute_bar(probe, "2013-10-10 02:07")
    path = write(tmp_path, source=ES_MINUTE, bar="1m", entry=f"bar_index == {e}", exit_=f"bar_index == {x}",
                 roll_days=52, name="cut.yaml")
    whole = bt.run(bt.prepare(path), run_id="t")
    cut = bt.run(bt.prepare(path, end="2013-10-10"), run_id="t")
    fills = [(f.rule, f.action, f.contract, f.price, f.time) for f in cut.ledger.fills]
    assert [f[:3] for f in fills] == [("in", "buy", "ESZ3"), ("roll", "sell", "ESZ3"), ("roll", "buy", "ESH4"),
                                      ("out", "sell", "ESH4")]
    assert fills == [(f.rule, f.action, f.contract, f.price, f.time) for f in whole.ledger.fills][:4]


@needs_minute
def test_the_roll_on_the_es_file_what_the_raw_front_series_and_the_held_contract_say(tmp_path):
    """Held from Wednesday 20:01 to Thursday 03:00 across the roll: the series jumps down by the
    calendar spread (ESZ3 1655.25 -> ESH4 1648.75 at 00:02, 6.5 points, 325 USD a contract), the
    position does not: its P&L is ESZ3's move (+5 points), where the series' own move is -1.5."""
    path = write(tmp_path, source=ES_MINUTE, bar="1m", entry="bar_index == 0", exit_="bar_index == 0", roll_days=52)
    prep = bt.prepare(path)
    front, series = prep.fronts["ES"], prep.frames["ES"]
    rolled = pd.Timestamp("2013-10-10 00:02", tz=NY)
    spread = front.bars["ESZ3"].loc[rolled, "open"] - series.loc[rolled, "open"]
    assert spread == 6.5 and spread * 50 == 325.0
    entry, exit_ = pd.Timestamp("2013-10-09 20:01", tz=NY), pd.Timestamp("2013-10-10 03:00", tz=NY)
    assert series.loc[exit_, "open"] - series.loc[entry, "open"] == -1.5      # what a fill on the series would book
    assert front.bars["ESZ3"].loc[exit_, "open"] - front.bars["ESZ3"].loc[entry, "open"] == 5.0


@needs_minute
def test_protective_orders_move_to_the_new_contract_shifted_by_the_roll_gap(tmp_path):
    path = write(tmp_path, source=ES_MINUTE, bar="1m", entry="bar_index == 0", exit_="bar_index == 0", roll_days=52)
    prep = bt.prepare(path)
    e = minute_bar(prep, "2013-10-09 20:00")
    path = write(tmp_path, source=ES_MINUTE, bar="1m", entry=f"bar_index == {e}", exit_="false", roll_days=52,
                 exits="  - {name: take, target: position.entry_price + 4.5}")
    prep = bt.prepare(path)
    result = bt.run(prep, run_id="t")
    buy, out, into, sell = result.ledger.fills
    gap = into.price - out.price                       # ESH4 1648.75 - ESZ3 1655.25
    assert (out.rule, into.rule, gap) == ("roll", "roll", -6.5)
    targets = [o for o in result.runner.orders if o.intent.rule == "take"]
    assert [(o.intent.limit, o.contract, o.status) for o in targets] == [
        (1651.75 + 4.5, "ESZ3", "cancelled"),          # set at the entry in ESZ3, cancelled by the roll
        (1651.75 + 4.5 + gap, "ESH4", "filled")]       # placed again in ESH4, 6.5 lower
    assert (sell.contract, sell.rule) == ("ESH4", "take")
    h = prep.fronts["ES"].bars["ESH4"]
    touched = h[(h.index > pd.Timestamp("2013-10-10 00:02", tz=NY)) & (h["high"] >= 1649.75)].index[0]
    assert sell.time == touched.value and sell.price == max(1649.75, h.loc[touched, "open"])
    run = simulate(prep, run_id="t")
    assert list(run.ledger.fills) == list(result.ledger.fills)


def daily_file(tmp: Path) -> Path:
    """LEAN's ES daily bars per contract (2013-10-06..2013-12-26) as one CSV with a contract column."""
    rows = ["date,contract_month,open,high,low,close,volume"]
    with zipfile.ZipFile(ES_DAILY) as z:
        for name in sorted(z.namelist()):
            month = name.rsplit("_", 1)[-1][:6]
            if month.startswith("2013") or month.startswith("2014"):
                rows += [f"{line.split(',', 1)[0]},{month},{line.split(',', 1)[1]}"
                         for line in z.read(name).decode().splitlines()]
    path = tmp / "es_daily.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@needs_daily
def test_a_contract_held_past_its_last_trade_date_is_settled_and_the_next_entry_opens_the_front(tmp_path):
    # roll_days 0: ESZ3 is the front month to its last trade date (2013-12-20), so nothing rolls
    # it before it expires: the exchange settles it at its last price
    path = write(tmp_path, source=daily_file(tmp_path), bar="1d", entry="close > 0", exit_="close < 0", roll_days=0)
    prep = bt.prepare(path)
    b = bt._symbol_bars(prep, "ES")[0]
    days = list(prep.frames["ES"].index.strftime("%Y-%m-%d"))
    assert b.contract_at(days.index("2013-12-20")) == "ESZ3" and b.contract_at(days.index("2013-12-20") + 1) == "ESH4"
    assert b.expiry_bar["ESZ3"] == b.roll_bar["ESZ3"] == days.index("2013-12-20")
    result = bt.run(prep, run_id="t")
    settled = result.ledger.trades[0]
    assert (settled.contract, settled.entry_price, settled.exit_price) == ("ESZ3", 1669.0, 1810.25)
    assert settled.exit_rule == "expiry settlement" and "ESZ3 expired (last trade date 2013-12-20)" in settled.exit_reason
    assert pd.Timestamp(settled.exit_time, tz="UTC").tz_convert(NY).date().isoformat() == "2013-12-21"   # Dec 20's close
    assert settled.pnl == (1810.25 - 1669.0) * 50 - 2.25         # the settlement has no commission
    assert not [f for f in result.ledger.fills if f.rule == "roll"]
    # the entry decided at that close opens the front month, ESH4, at the next bar's open
    again = result.ledger.positions["ES"]
    after = int(np.searchsorted(b.start, settled.exit_time))
    assert (again.contract, again.avg_price, again.entry_rule) == ("ESH4", prep.frames["ES"]["open"].iloc[after], "in")
    rows = journal_rows(result, tmp_path)
    assert [r[3] for r in rows["orders"]] == ["ESZ3", "ESZ3", "ESH4"]
    assert rows["orders"][1][:3] == ("expiry settlement", "sell", "filled")
    run = simulate(prep, run_id="t")
    assert list(run.ledger.trades) == list(result.ledger.trades)


def test_a_contract_column_for_a_symbol_that_is_not_a_futures_root_is_refused_at_the_column(tmp_path):
    data = tmp_path / "SPY.csv"
    data.write_text("date,contract,open,high,low,close,volume\n2020-01-02,202003,1,1,1,1,1\n")
    path = tmp_path / "s.yaml"
    path.write_text(f"""kind: strategy
name: spy
universe: [SPY]
data: {{bar: 1d, source: {data}}}
entry: [{{name: in, when: close > 0, order: buy}}]
orders: {{buy: {{action: buy, type: market, quantity: 1}}}}
""")
    with pytest.raises(DiagnosticError) as excinfo:
        bt.prepare(path)
    d = excinfo.value.diagnostics[0]
    assert (d.path, d.line, d.col) == (str(data), 1, len("date,") + 1)
    assert "SPY is not a futures root of the instrument map" in d.message


# ---- margins: initial and maintenance margin per root (universes/instruments.yaml) -------------

NQ_MINUTE = SHARED / "firstratedata_nq_sample" / "NQ_1min_sample.csv"
needs_nq = pytest.mark.skipif(not NQ_MINUTE.exists(), reason=f"{NQ_MINUTE} (../shared/data) is not present")


def nq_strategy(tmp: Path, *, quantity: str, risk: str = "{max_open_positions: 1, margin_check: \"off\"}",
                entry: str = "crosses_above(sma(close, 10), sma(close, 30))",
                exit_: str = "crosses_below(sma(close, 10), sma(close, 30))", instruments: str | None = None) -> Path:
    """A 10/30 crossover on the FirstRate NQ minute sample, on the bundled instrument map (NQ: margin
    19,800, maintenance 18,000, multiplier 20) unless `instruments` gives another root."""
    if instruments is not None:
        (tmp / "i.yaml").write_text(f"kind: instruments\nname: i\nroots:\n  NQ: {instruments}\n")
    path = tmp / "nq.yaml"
    path.write_text(f"""kind: strategy
name: nq
universe: [NQ]
instruments: {tmp / 'i.yaml' if instruments is not None else ROOT / 'universes' / 'instruments.yaml'}
data: {{bar: 1m, session: extended, source: {NQ_MINUTE}}}
schedule: {{timezone: {NY}}}
entry:
  - name: in
    when: "{entry}"
    order: buy
exit:
  - name: out
    when: "{exit_}"
orders:
  buy: {{action: buy, type: market, quantity: {quantity}}}
backtest: {{cash: 100000, commission: {{per_contract: 2.25}}}}
risk: {risk}
""")
    return path


@needs_nq
def test_a_futures_share_of_equity_and_max_position_are_measured_on_initial_margin(tmp_path):
    result = bt.run(bt.prepare(nq_strategy(tmp_path, quantity="{percent_of_equity: 40%}")), run_id="t")
    first = result.ledger.fills[0]
    assert first.quantity == 2 == (40_000 // 19_800)     # 40% of 100,000 in margin: 2 NQ (about 640,000 notional)
    capped = bt.run(bt.prepare(nq_strategy(tmp_path, quantity=3, risk="{max_position: 20%, margin_check: \"off\"}")),
                    run_id="t")
    assert {f.quantity for f in capped.ledger.fills} == {1.0}             # 20% of about 100,000: one NQ's 19,800
    assert any(d.reason.endswith("capped by max_position 20.0% of equity (a future's initial margin)")
               for d in capped.runner.decisions)
    blocked = bt.run(bt.prepare(nq_strategy(tmp_path, quantity=3, risk="{max_position: 2%, margin_check: \"off\"}")),
                     run_id="t")
    assert not blocked.ledger.fills and {d.reason for d in blocked.runner.decisions if d.outcome == "blocked"} == \
        {"capped by max_position 2.0% of equity (a future's initial margin): quantity rounds to 0"}


@needs_nq
def test_an_entry_needs_its_initial_margin_in_available_funds(tmp_path):
    result = bt.run(bt.prepare(nq_strategy(tmp_path, quantity=6)), run_id="t")
    assert not result.ledger.fills            # 6 x 19,800 = 118,800 of margin on 100,000
    assert {d.reason for d in result.runner.decisions if d.outcome == "blocked"} == \
        {"insufficient available funds: needs 118,813.50, has 100,000.00"}
    five = bt.run(bt.prepare(nq_strategy(tmp_path, quantity=5)), run_id="t")
    assert five.ledger.fills and five.ledger.fills[0].quantity == 5      # 99,000 fits


@needs_nq
def test_a_future_without_an_initial_margin_is_not_sized_by_a_share_of_equity(tmp_path):
    root = ("{sec_type: FUT, exchange: CME, currency: USD, multiplier: 20, trading_class: NQ, months: HMUZ, "
            "tick_size: 0.25, calendar: CME_Equity}")
    result = bt.run(bt.prepare(nq_strategy(tmp_path, quantity="{percent_of_equity: 40%}", instruments=root)),
                    run_id="t")
    assert not result.ledger.fills
    assert {d.reason for d in result.runner.decisions if d.outcome == "blocked"} == {
        "NQ has no initial margin in the instrument map: a future's share of equity (percent_of_equity) is "
        "measured on its margin"}


@needs_nq
def test_equity_below_the_maintenance_margin_is_a_margin_call_that_liquidates(tmp_path):
    """5 NQ bought at the 2023-11-29 09:57 open and held: 99,000 of initial margin fits 100,000;
    the maintenance margin is 5 x 18,000 = 90,000, so a fall of about 100 points is a margin call:
    the position is closed at the next open, with the figures in its decision and trade."""
    path = nq_strategy(tmp_path, quantity=5, entry="bar_index == 10150", exit_="false")
    prep = bt.prepare(path)
    result = bt.run(prep, run_id="t")
    assert "fast_path" not in result.timings                 # the fast path has no margin calls: the kernel
    (trade,) = result.ledger.trades
    assert trade.exit_rule == "margin call" and trade.quantity == 5
    (call,) = [d for d in result.runner.decisions if d.rule == "margin call"]
    equity = float(call.reason.split("equity ")[1].split(" ")[0].replace(",", ""))
    assert equity < 90_000 and "below the maintenance margin 90,000.00 of the futures held" in call.reason
    # the first close under it, and none before: equity at each close is cash + (close - entry) x 5 x 20
    closes = prep.frames["NQ"]["close"].to_numpy()
    entry_bar = next(f.bar for f in result.ledger.fills)
    equity_at = 100_000 - 11.25 + (closes[entry_bar:] - trade.entry_price) * 100
    first = entry_bar + int(np.flatnonzero(equity_at < 90_000)[0])
    assert result.ledger.fills[1].bar == first + 1 and result.ledger.fills[1].price == prep.frames["NQ"]["open"].iloc[first + 1]
    assert equity == round(equity_at[first - entry_bar], 2)
    # the backtest's kernel jumps over the bars a waiting position sits through: not over a margin call
    run = simulate(prep, run_id="t")
    assert list(run.ledger.fills) == list(result.ledger.fills) and np.array_equal(run.equity, result.equity)
    # without a maintenance margin that can bind the same run takes the fast path, and holds on
    root = ("{sec_type: FUT, exchange: CME, currency: USD, multiplier: 20, trading_class: NQ, months: HMUZ, "
            "tick_size: 0.25, calendar: CME_Equity, margin: 19800, maintenance_margin: 1000}")
    held = bt.run(bt.prepare(nq_strategy(tmp_path, quantity=5, entry="bar_index == 10150", exit_="false",
                                         instruments=root)), run_id="t")
    assert held.timings.get("fast_path") == 1.0 and not held.ledger.trades and held.ledger.positions


@needs_nq
def test_an_ib_run_leaves_margin_calls_to_ib(tmp_path, monkeypatch):
    """Paper and live runs: IB liquidates an account under its maintenance margin itself, so the
    kernel of an IB run that transmits (not a dry run) has margin_calls off; with it off the run
    above holds its 5 NQ through the fall."""
    import inspect

    from engine.runtime import ibrun, session

    assert "kernel.margin_calls = dry_run" in inspect.getsource(ibrun._trade)

    class IBLike(session.Kernel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.margin_calls = False

    monkeypatch.setattr(session, "Kernel", IBLike)
    run = session.simulate(bt.prepare(nq_strategy(tmp_path, quantity=5, entry="bar_index == 10150", exit_="false")),
                           run_id="t")
    assert not run.ledger.trades and run.ledger.positions["NQ"].quantity == 5
