"""Issue 12 item 4: the breakout scanner's cadence as data. Held names are decided every
`schedule.every`, names not held every `schedule.scan_every` (both whole numbers of bars: a
decision needs a closed bar), at most `max_new_entries_per_scan` new names at one scan; in a
backtest, a `run --broker sim` replay and a dry run alike. On real SPY minute bars (QuantConnect
LEAN's, ../shared/data)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import cli
from engine.check import validate
from engine.runtime import backtest as bt
from engine.runtime import session

SPY_MINUTES = (Path(__file__).resolve().parents[2] / "shared" / "data" / "quantconnect_lean" / "decoded" /
               "spy_minute_trade_2013-10-07_to_2013-10-11.csv")
needs_shared = pytest.mark.skipif(not SPY_MINUTES.is_file(), reason="../shared/data (LEAN's SPY minutes) is not present")

BREAKOUT = """\
kind: strategy
name: cadence
universe: [{symbols}]
data: {{bar: 1m, session: extended, source: {source}}}
schedule:
  timezone: America/New_York
{schedule}
  entry_window: ["09:45", "15:30"]
  flat_by: "15:55"
indicators:
  trend_up: ema(close, 8) > ema(close, 21)
  atr_now: atr(14)
entry:
  - name: breakout long
    when: trend_up and close > highest(high, 20)[1] and high - low > 1.0 * atr_now[1]
    order: buy
exit:
  - {{name: stop, stop: position.entry_price - 2 * at_entry(atr_now), reason: initial ATR stop}}
  - {{name: target, target: position.entry_price + 3 * at_entry(atr_now), reason: ATR target}}
  - {{name: trend break, when: "crosses_below(ema(close, 8), ema(close, 21))", reason: trend over}}
orders:
  buy: {{action: buy, type: market, quantity: 10}}
backtest: {{cash: 100000}}
"""


def strategy(tmp_path: Path, schedule: str = "", symbols: str = "SPY", source: str | None = None) -> Path:
    path = tmp_path / "cadence.yaml"
    lines = "\n".join(f"  {x.strip()}" for x in schedule.split(";") if x.strip())
    path.write_text(BREAKOUT.format(symbols=symbols, source=source or SPY_MINUTES, schedule=lines))
    return path


def _local_minutes(ns: int) -> int:
    t = pd.Timestamp(ns, tz="UTC").tz_convert("America/New_York")
    return t.hour * 60 + t.minute


# ---------------------------------------------------------------------------------- validate
@pytest.mark.parametrize("schedule, bar, message, hint", [
    ("every: 10s", "1m", "schedule.every: 10s is finer than the 1m bars", "set every: 1m"),
    ("scan_every: 30s", "1m", "schedule.scan_every: 30s is finer than the 1m bars", "use 30s bars"),
    ("every: 90s", "1m", "schedule.every: 90s is not a whole number of 1m bars", "use a multiple of 1m (2m, say)"),
    ("scan_every: 2d", "1d", "schedule.scan_every: a cadence of 2d on 1d bars is not supported", "weekly bars"),
])
def test_a_cadence_a_bar_cannot_give_is_refused_at_its_line(tmp_path, schedule, bar, message, hint):
    path = tmp_path / "s.yaml"
    path.write_text(f"""kind: strategy
name: s
universe: [SPY]
data: {{bar: {bar}}}
schedule:
  timezone: America/New_York
  {schedule}
entry:
  - {{name: go, when: close > 0, order: buy}}
orders:
  buy: {{action: buy, type: market, quantity: 1}}
""")
    report = validate([str(path)])
    (d,) = [d for d in report.errors if "schedule." in d.message]
    assert (d.line, d.col) == (7, 3)
    assert d.message.startswith(message) and hint in d.hint


def test_cadences_in_whole_bars_validate(tmp_path):
    report = validate([str(strategy(tmp_path, "every: 5m; scan_every: 15m; max_new_entries_per_scan: 2"))])
    assert not report.errors, [d.message for d in report.errors]


# ---------------------------------------------------------------------------------- behaviour
@needs_shared
def test_new_names_are_decided_on_the_scan_cadence_and_held_names_on_theirs(tmp_path):
    plain = bt.run(bt.prepare(strategy(tmp_path)))
    paced = bt.run(bt.prepare(strategy(tmp_path, "every: 5m; scan_every: 15m")))
    entries = [d for d in paced.runner.decisions if d.kind == "entry" and d.outcome == "fired"]
    plain_entries = [d for d in plain.runner.decisions if d.kind == "entry" and d.outcome == "fired"]
    assert len(plain_entries) > len(entries) >= 2
    # every entry decided at a close on the 15-minute grid; without the cadence, some are not
    assert all(_local_minutes(d.time) % 15 == 0 for d in entries)
    assert any(_local_minutes(d.time) % 15 for d in plain_entries)
    # the trend-break exit (a condition) is decided on the 5-minute grid only; the stop and the
    # target rest as orders and fill inside any bar
    trades = paced.ledger.trades
    by_rule = {t.exit_rule for t in trades}
    assert "trend break" in by_rule or "stop" in by_rule
    exits = [d for d in paced.runner.decisions if d.kind == "exit" and d.outcome == "fired"]
    conditions = [d for d in exits if d.rule == "trend break"]
    assert all(_local_minutes(d.time) % 5 == 0 for d in conditions)
    plain_conditions = [d for d in plain.runner.decisions if d.kind == "exit" and d.rule == "trend break"]
    assert any(_local_minutes(d.time) % 5 for d in plain_conditions)
    protective = [t for t in trades if t.exit_rule in ("stop", "target")]
    assert protective and any(_local_minutes(int(pd.Timestamp(t.exit_time).value)) % 5 for t in protective)


@needs_shared
def test_a_new_position_is_protected_from_its_first_close_off_the_held_cadence(tmp_path):
    """A held cadence of 30 minutes: the stop of a position entered between two decisions still
    works from the first close after the fill, as a resting order does."""
    res = bt.run(bt.prepare(strategy(tmp_path, "every: 30m; scan_every: 1m")))
    trades = res.ledger.trades
    assert trades
    for t in trades:
        if t.exit_rule in ("stop", "target"):
            held = pd.Timestamp(t.exit_time) - pd.Timestamp(t.entry_time)
            if held < pd.Timedelta(minutes=30):
                break
    else:
        pytest.fail("no stop or target filled within the first 30 minutes of a position")


@needs_shared
@pytest.mark.parametrize("mode", ["sim", "dry"])
def test_a_replay_and_a_dry_run_follow_the_cadence_as_the_backtest_does(tmp_path, mode):
    path = strategy(tmp_path, "every: 5m; scan_every: 15m")
    backtest = CliRunner().invoke(cli.main, ["backtest", str(path), "--journal", str(tmp_path / "b.sqlite"),
                                             "--format", "json"])
    assert backtest.exit_code == 0, backtest.output
    args = ["run", str(path), "--broker", "sim", "--journal", str(tmp_path / "r.sqlite"), "--format", "json"]
    if mode == "dry":
        args.insert(2, "--dry-run")
    replay = CliRunner().invoke(cli.main, args)
    assert replay.exit_code == 0, replay.output
    a = json.loads(backtest.output[backtest.output.index("{"):])["summary"]
    b = json.loads(replay.output[replay.output.index("{"):])["summary"]
    assert a["trades"] == b["trades"] > 0
    assert round(a["end_equity"], 2) == round(b["end_equity"], 2)


def _two_names(tmp_path: Path) -> Path:
    """SPY's real minute bars under two names (SPY, and a copy as IVV) so both fire at every
    close: what the cap decides between is then only the order of the names."""
    folder = tmp_path / "bars"
    folder.mkdir()
    shutil.copy(SPY_MINUTES, folder / "SPY.csv")
    shutil.copy(SPY_MINUTES, folder / "IVV.csv")
    return folder


@needs_shared
@pytest.mark.parametrize("cap", [1, 2])
def test_at_most_n_new_names_are_entered_at_one_scan(tmp_path, cap):
    folder = _two_names(tmp_path)
    path = strategy(tmp_path, f"scan_every: 5m; max_new_entries_per_scan: {cap}", symbols="SPY, IVV",
                    source=f"{folder}/")
    res = bt.run(bt.prepare(path))
    fired = [d for d in res.runner.decisions if d.kind == "entry" and d.outcome == "fired"]
    capped = [d for d in res.runner.decisions if d.kind == "entry" and "max_new_entries_per_scan" in d.reason]
    times = {d.time for d in fired}
    assert times
    per_scan = {t: [d.symbol for d in fired if d.time == t] for t in times}
    if cap == 1:
        # one new name a scan; when both are flat, the first of the universe's order (SPY, then
        # IVV) takes the place; IVV enters alone only at a scan where SPY is held
        assert all(len(names) == 1 for names in per_scan.values())
        assert capped and all(d.symbol == "IVV" for d in capped)
        assert capped[0].reason == "max_new_entries_per_scan: 1 new name already entered at this scan (SPY)"
        assert all(per_scan.get(d.time) == ["SPY"] for d in capped)
        assert any(t.symbol == "IVV" for t in res.ledger.trades)
        assert len(res.ledger.trades) < 2 * len([t for t in res.ledger.trades if t.symbol == "SPY"])
    else:
        assert all(sorted(names) == ["IVV", "SPY"] for names in per_scan.values())
        assert not capped


@needs_shared
def test_the_cap_picks_the_same_names_in_a_replay_as_in_the_backtest(tmp_path):
    """The replay steps the names in the universe's order, as the backtest does (it stepped them
    sorted, which gave the one place at a scan to IVV instead of SPY)."""
    folder = _two_names(tmp_path)
    path = strategy(tmp_path, "scan_every: 5m; max_new_entries_per_scan: 1", symbols="SPY, IVV",
                    source=f"{folder}/")
    prep = bt.prepare(path)
    backtest = bt.run(prep).ledger.trades
    replay = session.simulate(bt.prepare(path), streaming=True, run_id="r").ledger.trades
    assert backtest and [(t.symbol, t.entry_time, t.exit_time, t.exit_rule) for t in replay] == \
        [(t.symbol, t.entry_time, t.exit_time, t.exit_rule) for t in backtest]
    assert backtest[0].symbol == "SPY"          # both fired at that close: the first listed went
    assert np.isclose(sum(t.pnl for t in replay), sum(t.pnl for t in backtest))


XSP_CROSS = """\
kind: strategy
name: xsp-cross
universe: [XSP]
data: {{bar: 1m, source: {data}/}}
schedule: {{timezone: America/New_York, flat_by: "12:00"}}
indicators:
  fast_ma: sma(close, 5)
  slow_ma: sma(close, 20)
entry:
  - {{name: cross up, when: "crosses_above(fast_ma, slow_ma)", order: buy}}
exit:
  - {{name: cross down, when: "crosses_below(fast_ma, slow_ma)"}}
orders:
  buy: {{action: buy, type: market, quantity: 10}}
"""


def test_no_entry_from_the_flat_by_time_on(tmp_path):
    """flat_by with no entry window: an entry decided at or after the flat-by time would be closed
    at the next close; none is decided (it was: a position opened at 12:01, closed at 12:02)."""
    path = tmp_path / "x.yaml"
    path.write_text(XSP_CROSS.format(data=Path(__file__).resolve().parents[1] / "strategies" / "data"))
    res = bt.run(bt.prepare(path))
    fired = [d for d in res.runner.decisions if d.kind == "entry" and d.outcome == "fired"]
    assert len(fired) >= 8
    assert all(_local_minutes(d.time) < 12 * 60 for d in fired)
    assert all(t.exit_rule in ("cross down", "flat_by") for t in res.ledger.trades)
    # every session's crosses after noon are left alone: no trade opens after 12:00
    opens = [pd.Timestamp(t.entry_time, tz="UTC").tz_convert("America/New_York") for t in res.ledger.trades]
    assert opens and all(t.hour * 60 + t.minute <= 12 * 60 for t in opens)
